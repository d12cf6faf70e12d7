//! Hashes through `keel serve`, driven by the `redis` crate and redis-cli, and killed with -9
//! under load. No assertion depends on timing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn hash_commands_answer_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<i64>(&mut c, &["HSET", "h", "a", "1", "b", "2", "a", "3"]),
        2
    );
    assert_eq!(query::<String>(&mut c, &["HGET", "h", "a"]), "3");
    assert_eq!(query::<Option<String>>(&mut c, &["HGET", "h", "zz"]), None);
    assert_eq!(
        query::<Vec<Option<String>>>(&mut c, &["HMGET", "h", "a", "zz", "b"]),
        vec![Some("3".into()), None, Some("2".into())]
    );
    let all: HashMap<String, String> = query(&mut c, &["HGETALL", "h"]);
    assert_eq!(
        all,
        HashMap::from([("a".into(), "3".into()), ("b".into(), "2".into())])
    );
    assert_eq!(query::<i64>(&mut c, &["HINCRBY", "h", "n", "-5"]), -5);
    assert_eq!(
        query::<String>(&mut c, &["HINCRBYFLOAT", "h", "f", "0.1"]),
        "0.1"
    );
    assert_eq!(
        query::<String>(&mut c, &["HINCRBYFLOAT", "h", "f", "0.2"]),
        "0.3"
    );
    assert!(error(&mut c, &["HINCRBY", "h", "f", "1"]).contains("hash value is not an integer"));
    assert!(error(&mut c, &["HINCRBY", "h", "n", "x"]).contains("not an integer"));
    assert!(error(&mut c, &["HINCRBYFLOAT", "h", "n", "inf"]).contains("NaN or Infinity"));
    assert_eq!(query::<i64>(&mut c, &["HSETNX", "h", "a", "other"]), 0);
    assert_eq!(query::<i64>(&mut c, &["HLEN", "h"]), 4);
    assert_eq!(query::<i64>(&mut c, &["HEXISTS", "h", "b"]), 1);
    assert_eq!(query::<i64>(&mut c, &["HSTRLEN", "h", "f"]), 3);
    let mut keys: Vec<String> = query(&mut c, &["HKEYS", "h"]);
    keys.sort();
    assert_eq!(keys, ["a", "b", "f", "n"]);
    assert_eq!(query::<String>(&mut c, &["TYPE", "h"]), "hash");
    assert_eq!(query::<String>(&mut c, &["HMSET", "h2", "x", "1"]), "OK");
    // WRONGTYPE both ways, with Redis's text, and nothing changed.
    let wrong = "\"WRONGTYPE\": Operation against a key holding the wrong kind of value";
    query::<()>(&mut c, &["SET", "s", "v"]);
    assert_eq!(error(&mut c, &["GET", "h"]), wrong);
    assert_eq!(error(&mut c, &["HGET", "s", "f"]), wrong);
    assert_eq!(error(&mut c, &["GETSET", "h", "v"]), wrong);
    assert_eq!(error(&mut c, &["HSET", "s", "f", "v"]), wrong);
    assert_eq!(query::<i64>(&mut c, &["HLEN", "h"]), 4);
    assert_eq!(query::<String>(&mut c, &["GET", "s"]), "v");
    // MGET reads a key of another type as nil, as Redis does.
    assert_eq!(
        query::<Vec<Option<String>>>(&mut c, &["MGET", "s", "h"]),
        vec![Some("v".into()), None]
    );
    // Encodings follow CONFIG SET's thresholds.
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "h"]),
        "listpack"
    );
    query::<()>(&mut c, &["CONFIG", "SET", "hash-max-listpack-entries", "4"]);
    assert_eq!(
        query::<HashMap<String, String>>(&mut c, &["CONFIG", "GET", "hash-max-listpack-*"]),
        HashMap::from([
            ("hash-max-listpack-entries".into(), "4".into()),
            ("hash-max-listpack-value".into(), "64".into())
        ])
    );
    query::<i64>(&mut c, &["HSET", "h", "e", "5"]);
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "h"]),
        "hashtable"
    );
    query::<()>(
        &mut c,
        &["CONFIG", "SET", "hash-max-listpack-entries", "128"],
    );
    let e = error(&mut c, &["CONFIG", "SET", "appendfsync", "no"]);
    assert!(e.contains("can't set immutable config"), "{e}");
    assert!(query::<i64>(&mut c, &["MEMORY", "USAGE", "h"]) > 0);
    // A transaction of hash writes and reads is one record, and sees its own writes.
    let (added, v, n): (i64, String, i64) = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg("t")
        .arg("f")
        .arg("1")
        .cmd("HGET")
        .arg("t")
        .arg("f")
        .cmd("HDEL")
        .arg("t")
        .arg("f")
        .query(&mut c)
        .unwrap();
    assert_eq!((added, v.as_str(), n), (1, "1", 1));
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "t"]), 0);
    // RESP3: HGETALL is a map, HRANDFIELD WITHVALUES pairs.
    query::<i64>(&mut c, &["HSET", "one", "f", "v"]);
    let mut r3 = redis::Client::open(format!("{}?protocol=resp3", srv.url()))
        .unwrap()
        .get_connection()
        .unwrap();
    let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
    assert_eq!(
        query::<redis::Value>(&mut r3, &["HGETALL", "one"]),
        redis::Value::Map(vec![(bulk("f"), bulk("v"))])
    );
    assert_eq!(
        query::<redis::Value>(&mut r3, &["HRANDFIELD", "one", "1", "WITHVALUES"]),
        redis::Value::Array(vec![redis::Value::Array(vec![bulk("f"), bulk("v")])])
    );
    // RESP2: both flat.
    assert_eq!(
        query::<redis::Value>(&mut c, &["HRANDFIELD", "one", "1", "WITHVALUES"]),
        redis::Value::Array(vec![bulk("f"), bulk("v")])
    );
    // redis-cli, as a user types it.
    assert_eq!(srv.cli(&["HGET", "one", "f"]), "v\n");
    assert_eq!(srv.cli(&["HRANDFIELD", "one", "-3"]), "f\nf\nf\n");
}

/// Writers increment their own field of shared hashes and add fields, with checkpoints going
/// on, until `keel serve` is killed with -9. After a restart every acknowledged write is there,
/// and the one in doubt per writer is there at most once.
#[test]
fn acknowledged_hash_writes_survive_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    const WRITERS: usize = 6;
    let progress = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = srv.url();
            let progress = progress.clone();
            thread::spawn(move || {
                let (mut acked, mut added, mut in_doubt) = (0i64, 0usize, false);
                let Ok(mut con) = redis::Client::open(url).unwrap().get_connection() else {
                    return (acked, added, in_doubt);
                };
                for i in 0..1_000_000usize {
                    let hash = format!("h{}", w % 3);
                    let r = if i % 4 == 3 {
                        redis::cmd("HSET")
                            .arg(format!("fields{w}"))
                            .arg(format!("f{i}"))
                            .arg(format!("v{i}"))
                            .query::<i64>(&mut con)
                    } else {
                        redis::cmd("HINCRBY")
                            .arg(&hash)
                            .arg(format!("w{w}"))
                            .arg(1)
                            .query::<i64>(&mut con)
                    };
                    match r {
                        Ok(n) if i % 4 == 3 => {
                            assert_eq!(n, 1);
                            added = i + 1;
                        }
                        Ok(n) => {
                            acked += 1;
                            assert_eq!(n, acked);
                        }
                        Err(_) => {
                            in_doubt = true;
                            break;
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                (acked, added, in_doubt)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut admin = srv.client();
    while progress.load(Ordering::Relaxed) < 3000 && Instant::now() < deadline {
        let _: redis::RedisResult<()> = redis::cmd("BGSAVE").query(&mut admin);
        thread::sleep(Duration::from_millis(20));
    }
    srv.kill9();
    let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        results.iter().map(|r| r.0).sum::<i64>() > 500,
        "{results:?}"
    );
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    for (w, (acked, added, in_doubt)) in results.into_iter().enumerate() {
        let hash = format!("h{}", w % 3);
        let got: i64 =
            query::<Option<i64>>(&mut c, &["HGET", &hash, &format!("w{w}")]).unwrap_or(0);
        assert!(
            got == acked || (in_doubt && got == acked + 1),
            "writer {w}: {got} after {acked} acknowledged increments"
        );
        let fields: HashMap<String, String> = query(&mut c, &["HGETALL", &format!("fields{w}")]);
        for i in (3..added).step_by(4) {
            assert_eq!(
                fields.get(&format!("f{i}")),
                Some(&format!("v{i}")),
                "writer {w}"
            );
        }
    }
}

/// HSCAN, SSCAN and ZSCAN page a large collection by COUNT and, while other clients add and
/// remove elements (growing and shrinking the table between calls), still return every element
/// present throughout, with its value. A small collection comes whole.
#[test]
fn collection_scans_page_by_count_and_miss_nothing_while_writes_run() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let mut w = srv.client();
    let n = 2000;
    let mut hset = vec!["HSET".to_string(), "h".into()];
    let mut sadd = vec!["SADD".to_string(), "s".into()];
    let mut zadd = vec!["ZADD".to_string(), "z".into()];
    for i in 0..n {
        hset.extend([format!("f{i}"), format!("v{i}")]);
        sadd.push(format!("f{i}"));
        zadd.extend([format!("{i}"), format!("f{i}")]);
    }
    for cmd in [&hset, &sadd, &zadd] {
        let args: Vec<&str> = cmd.iter().map(|s| s.as_str()).collect();
        assert_eq!(query::<i64>(&mut c, &args), n as i64);
    }
    for (key, cmd, add, del, group) in [
        ("h", "HSCAN", "HSET", "HDEL", 2),
        ("s", "SSCAN", "SADD", "SREM", 1),
        ("z", "ZSCAN", "ZADD", "ZREM", 2),
    ] {
        let (mut seen, mut cursor, mut calls) = (HashMap::new(), "0".to_string(), 0);
        loop {
            let (next, found): (String, Vec<String>) =
                query(&mut c, &[cmd, key, &cursor, "COUNT", "50"]);
            assert!(
                found.len() <= 2 * 60 * group,
                "{cmd}: a call returns about COUNT"
            );
            for e in found.chunks(group) {
                seen.insert(e[0].clone(), e.get(1).cloned());
            }
            calls += 1;
            // Between calls, another client grows the collection tenfold, then removes what
            // it added, which shrinks the table: elements move both times.
            let extras = (0..20_000).map(|i| format!("x{i}"));
            let args: Vec<String> = match calls {
                2 => (extras.flat_map(|x| match add {
                    "HSET" => vec![x, "v".into()],
                    "ZADD" => vec!["0.5".into(), x],
                    _ => vec![x],
                }))
                .collect(),
                4 => extras.collect(),
                _ => vec![],
            };
            if !args.is_empty() {
                let verb = if calls == 2 { add } else { del };
                let mut all = vec![verb, key];
                all.extend(args.iter().map(|s| s.as_str()));
                assert_eq!(query::<i64>(&mut w, &all), 20_000);
            }
            cursor = next;
            if cursor == "0" {
                break;
            }
            assert!(calls < 10_000, "{cmd}: the scan ends");
        }
        assert!(
            calls > 10,
            "{cmd}: {calls} calls: a large collection is paged"
        );
        for i in 0..n {
            let value = seen.get(&format!("f{i}"));
            let want = match cmd {
                "HSCAN" => Some(format!("v{i}")),
                "ZSCAN" => Some(format!("{i}")),
                _ => None,
            };
            assert_eq!(value, Some(&want), "{cmd}: f{i} missed or wrong");
        }
    }
    // MATCH filters what a call visits; a small collection comes whole with cursor 0.
    let mut cursor = "0".to_string();
    loop {
        let (next, found): (String, Vec<String>) = query(
            &mut c,
            &["HSCAN", "h", &cursor, "MATCH", "f1*", "COUNT", "100"],
        );
        assert!(found.chunks(2).all(|p| p[0].starts_with("f1")));
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    query::<i64>(&mut c, &["HSET", "small", "a", "1", "b", "2"]);
    let (next, found): (String, Vec<String>) =
        query(&mut c, &["HSCAN", "small", "0", "COUNT", "1"]);
    assert_eq!((next.as_str(), found.len()), ("0", 4));
    let (next, found): (String, Vec<String>) = query(&mut c, &["SSCAN", "nokey", "0"]);
    assert_eq!((next.as_str(), found.len()), ("0", 0));
    assert!(error(&mut c, &["HSCAN", "h", "abc"]).contains("invalid cursor"));
    assert!(error(&mut c, &["ZSCAN", "z", "0", "COUNT", "0"]).contains("syntax error"));
    assert!(error(&mut c, &["SSCAN", "h", "0"]).contains("WRONGTYPE"));
}
