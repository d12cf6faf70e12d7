//! DUMP and RESTORE against real `keel serve` processes: every type comes back as it was, on the
//! same server and on another, and a restored key survives kill -9; a payload that is not
//! keel's (changed, cut short, Redis's) is refused and writes nothing; BUSYKEY, REPLACE and the
//! TTL options behave as in Redis.

mod common;

use common::*;
use redis::Value;

fn dump(c: &mut redis::Connection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("DUMP").arg(key).query(c).unwrap()
}

fn restore(
    c: &mut redis::Connection,
    key: &str,
    payload: &[u8],
    opts: &[&str],
) -> Result<(), String> {
    redis::cmd("RESTORE")
        .arg(key)
        .arg(opts[0])
        .arg(payload)
        .arg(&opts[1..])
        .query::<()>(c)
        .map_err(|e| e.to_string())
}

/// Everything a client can read of a key, whatever its type: its type, then its contents in
/// an order that does not depend on the server's table.
fn contents(c: &mut redis::Connection, key: &str) -> Vec<String> {
    let kind: String = query(c, &["TYPE", key]);
    let mut out = vec![kind.clone()];
    let mut sorted = |mut v: Vec<String>| {
        v.sort();
        out.extend(v);
    };
    match kind.as_str() {
        "string" => sorted(vec![query(c, &["GET", key])]),
        "hash" => {
            let pairs: Vec<(String, String)> = query(c, &["HGETALL", key]);
            sorted(pairs.into_iter().map(|(f, v)| format!("{f}={v}")).collect());
        }
        "set" => sorted(query(c, &["SMEMBERS", key])),
        "list" => out.extend(query::<Vec<String>>(c, &["LRANGE", key, "0", "-1"])),
        "zset" => out.extend(query::<Vec<String>>(
            c,
            &["ZRANGE", key, "0", "-1", "WITHSCORES"],
        )),
        "stream" => {
            for args in [
                &["XINFO", "STREAM", key][..],
                &["XRANGE", key, "-", "+"],
                &["XINFO", "GROUPS", key],
                &["XPENDING", key, "g"],
                &["XINFO", "CONSUMERS", key, "g"],
            ] {
                let v: Value = query(c, args);
                // Idle times move on; everything else must match.
                out.push(format!("{v:?}").split("idle").next().unwrap().to_string());
            }
        }
        other => panic!("no such type {other}"),
    }
    out
}

/// One key of every type and encoding keel has.
fn fill(c: &mut redis::Connection) -> Vec<&'static str> {
    query::<()>(c, &["SET", "str", "a string value"]);
    query::<()>(c, &["HSET", "hash-small", "f1", "v1", "f2", "v2"]);
    for i in 0..600 {
        let (f, v) = (format!("field:{i}"), format!("value:{i}"));
        query::<()>(c, &["HSET", "hash-large", &f, &v]);
        query::<()>(c, &["SADD", "set-large", &f]);
        query::<()>(c, &["RPUSH", "list", &v]);
        query::<()>(
            c,
            &["ZADD", "zset-large", &(i as f64 / 3.0).to_string(), &f],
        );
    }
    query::<()>(c, &["SADD", "set-ints", "1", "2", "-30000", "9000000000"]);
    query::<()>(c, &["SADD", "set-small", "a", "b", "c"]);
    query::<()>(c, &["ZADD", "zset-small", "1.5", "a", "-2", "b"]);
    for i in 0..5 {
        query::<Value>(c, &["XADD", "stream", "*", "n", &i.to_string(), "f", "v"]);
    }
    query::<()>(c, &["XGROUP", "CREATE", "stream", "g", "0"]);
    query::<Value>(
        c,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "alice",
            "COUNT",
            "3",
            "STREAMS",
            "stream",
            ">",
        ],
    );
    query::<Value>(
        c,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "bob",
            "COUNT",
            "1",
            "STREAMS",
            "stream",
            ">",
        ],
    );
    vec![
        "str",
        "hash-small",
        "hash-large",
        "set-ints",
        "set-small",
        "set-large",
        "list",
        "zset-small",
        "zset-large",
        "stream",
    ]
}

#[test]
fn every_type_comes_back_on_another_server_and_survives_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let a = Server::start(&t.path().join("a"), &[]);
    let mut ca = a.client();
    let keys = fill(&mut ca);
    let b = Server::start(&t.path().join("b"), &[]);
    let mut cb = b.client();
    let mut want = Vec::new();
    for k in &keys {
        let payload = dump(&mut ca, k).unwrap();
        // The same server, under another name.
        let copy = format!("{k}:copy");
        restore(&mut ca, &copy, &payload, &["0"]).unwrap();
        assert_eq!(contents(&mut ca, &copy), contents(&mut ca, k), "{k}");
        assert_eq!(query::<i64>(&mut ca, &["PTTL", &copy]), -1, "{k}");
        // Another server.
        restore(&mut cb, k, &payload, &["0"]).unwrap();
        want.push(contents(&mut ca, k));
        assert_eq!(contents(&mut cb, k), want[want.len() - 1], "{k}");
    }
    assert_eq!(dump(&mut ca, "nosuch"), None);
    b.kill9();
    let b = Server::start(&t.path().join("b"), &[]);
    let mut cb = b.client();
    for (k, want) in keys.iter().zip(&want) {
        assert_eq!(&contents(&mut cb, k), want, "{k} after kill -9");
    }
}

#[test]
fn a_payload_keel_did_not_write_is_refused_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    query::<()>(&mut c, &["HSET", "h", "f", "v", "g", "w"]);
    let payload = dump(&mut c, "h").unwrap();
    const WRONG: &str = "DUMP payload version or checksum are wrong";
    for i in [
        0,
        5,
        payload.len() / 2,
        payload.len() - 7,
        payload.len() - 1,
    ] {
        let mut bad = payload.clone();
        bad[i] ^= 0x01;
        let e = restore(&mut c, "x", &bad, &["0"]).unwrap_err();
        assert!(e.contains(WRONG), "byte {i}: {e}");
    }
    for n in [0, 1, 6, payload.len() - 1] {
        let e = restore(&mut c, "x", &payload[..n], &["0"]).unwrap_err();
        assert!(e.contains(WRONG), "cut at {n}: {e}");
    }
    // Redis 7.0.15's DUMP of the string "hello": its RDB encoding, RDB version 10, CRC64.
    let redis = b"\x00\x05hello\n\x00cr\xdfve4 \n";
    let e = restore(&mut c, "x", redis, &["0"]).unwrap_err();
    assert!(e.contains(WRONG), "{e}");
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "x"]), 0);
    assert_eq!(query::<i64>(&mut c, &["DBSIZE"]), 1);

    // BUSYKEY before the payload is even read, as in Redis; REPLACE overwrites.
    query::<()>(&mut c, &["SET", "s", "old"]);
    // (The redis crate shows BUSYKEY as `"BUSYKEY": Target key …`.)
    let e = restore(&mut c, "s", b"not a payload", &["0"]).unwrap_err();
    assert!(
        e.contains("BUSYKEY") && e.contains("Target key name already exists"),
        "{e}"
    );
    let e = restore(&mut c, "s", &payload, &["0"]).unwrap_err();
    assert!(
        e.contains("BUSYKEY") && e.contains("Target key name already exists"),
        "{e}"
    );
    assert_eq!(query::<String>(&mut c, &["GET", "s"]), "old");
    restore(&mut c, "s", &payload, &["0", "REPLACE"]).unwrap();
    assert_eq!(query::<String>(&mut c, &["TYPE", "s"]), "hash");
}

#[test]
fn restore_takes_a_ttl_absttl_and_redis_s_options() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    query::<()>(&mut c, &["RPUSH", "l", "a", "b"]);
    let p = dump(&mut c, "l").unwrap();
    restore(&mut c, "ttl", &p, &["100000"]).unwrap();
    let pttl: i64 = query(&mut c, &["PTTL", "ttl"]);
    assert!((90_000..=100_000).contains(&pttl), "{pttl}");
    // Past 2^32 ms.
    restore(&mut c, "big", &p, &["5000000000"]).unwrap();
    let pttl: i64 = query(&mut c, &["PTTL", "big"]);
    assert!((4_999_000_000..=5_000_000_000).contains(&pttl), "{pttl}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let at = (now_ms + 200_000).to_string();
    restore(&mut c, "abs", &p, &[&at, "ABSTTL"]).unwrap();
    let pttl: i64 = query(&mut c, &["PTTL", "abs"]);
    assert!((190_000..=200_000).contains(&pttl), "{pttl}");
    // An absolute expiry already past creates nothing, and with REPLACE removes the key.
    restore(&mut c, "gone", &p, &["1000", "ABSTTL"]).unwrap();
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "gone"]), 0);
    restore(&mut c, "abs", &p, &["1000", "ABSTTL", "REPLACE"]).unwrap();
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "abs"]), 0);
    // IDLETIME and FREQ are checked and accepted (keel keeps no access times).
    restore(&mut c, "idle", &p, &["0", "IDLETIME", "1000"]).unwrap();
    restore(&mut c, "freq", &p, &["0", "FREQ", "100"]).unwrap();
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "freq", "0", "-1"]),
        ["a", "b"]
    );
    for (opts, want) in [
        (&["-1"][..], "Invalid TTL value, must be >= 0"),
        (
            &["0", "IDLETIME", "-1"],
            "Invalid IDLETIME value, must be >= 0",
        ),
        (
            &["0", "FREQ", "256"],
            "Invalid FREQ value, must be >= 0 and <= 255",
        ),
        (&["0", "IDLETIME", "1", "FREQ", "1"], "syntax error"),
        (&["0", "NOSUCH"], "syntax error"),
        (&["x"], "not an integer"),
    ] {
        let e = restore(&mut c, "bad", &p, opts).unwrap_err();
        assert!(e.contains(want), "{opts:?}: {e}");
    }
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "bad"]), 0);
}

/// A payload is one argument, bounded as any value (P11): one past `value_bytes_max` (8 MiB) is
/// refused with the limit named, and nothing is written. (`max_bulk_bytes` is raised here so
/// that the request itself is read.)
#[test]
fn a_payload_past_the_value_limit_is_refused_with_the_limit_named() {
    let t = tempfile::tempdir().unwrap();
    let conf = t.path().join("keel.toml");
    std::fs::write(&conf, "max_bulk_bytes = 33554432\n").unwrap();
    let srv = Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mut c = srv.client();
    let element = "e".repeat(100_000);
    for _ in 0..90 {
        query::<()>(&mut c, &["RPUSH", "big", &element]);
    }
    let payload = dump(&mut c, "big").unwrap();
    assert!(payload.len() > 8 << 20, "{}", payload.len());
    let e = restore(&mut c, "copy", &payload, &["0"]).unwrap_err();
    assert!(e.contains("value_bytes_max"), "{e}");
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "copy"]), 0);
    assert_eq!(query::<i64>(&mut c, &["LLEN", "big"]), 90);
}
