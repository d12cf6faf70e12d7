//! Sorted sets through `keel serve`, driven by the `redis` crate and redis-cli, and killed with
//! -9 under load. No assertion depends on timing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sorted_set_commands_answer_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<i64>(
            &mut c,
            &["ZADD", "z", "1", "a", "2", "b", "3", "c", "2", "a"]
        ),
        3
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]),
        strings(&["a", "2", "b", "2", "c", "3"])
    );
    // The options: NX, XX, GT, LT, CH and INCR.
    assert_eq!(
        query::<i64>(&mut c, &["ZADD", "z", "NX", "9", "a", "4", "d"]),
        1
    );
    assert_eq!(
        query::<i64>(&mut c, &["ZADD", "z", "XX", "CH", "5", "a", "1", "e"]),
        1
    );
    assert_eq!(
        query::<i64>(&mut c, &["ZADD", "z", "GT", "CH", "1", "a", "9", "b"]),
        1
    );
    assert_eq!(
        query::<Option<String>>(&mut c, &["ZADD", "z", "LT", "INCR", "1", "a"]),
        None
    );
    assert_eq!(
        query::<String>(&mut c, &["ZINCRBY", "z", "0.5", "a"]),
        "5.5"
    );
    assert_eq!(query::<String>(&mut c, &["ZSCORE", "z", "a"]), "5.5");
    assert!(error(&mut c, &["ZADD", "z", "NX", "XX", "1", "a"]).contains("not compatible"));
    assert!(error(&mut c, &["ZADD", "z", "nan", "a"]).contains("not a valid float"));
    assert!(error(&mut c, &["ZADD", "z", "1", "a", "2"]).contains("syntax"));
    query::<String>(&mut c, &["ZINCRBY", "inf", "+inf", "m"]);
    assert!(error(&mut c, &["ZINCRBY", "inf", "-inf", "m"]).contains("NaN"));
    // Ranks, counts and ranges of every kind.
    assert_eq!(query::<i64>(&mut c, &["ZCARD", "z"]), 4);
    assert_eq!(query::<i64>(&mut c, &["ZRANK", "z", "a"]), 2);
    assert_eq!(query::<i64>(&mut c, &["ZREVRANK", "z", "a"]), 1);
    assert_eq!(
        query::<(i64, String)>(&mut c, &["ZRANK", "z", "d", "WITHSCORE"]),
        (1, "4".to_string())
    );
    assert_eq!(query::<Option<i64>>(&mut c, &["ZRANK", "z", "nope"]), None);
    assert_eq!(query::<i64>(&mut c, &["ZCOUNT", "z", "(4", "+inf"]), 2);
    assert_eq!(
        query::<Vec<String>>(
            &mut c,
            &["ZRANGEBYSCORE", "z", "-inf", "(9", "LIMIT", "1", "1"]
        ),
        strings(&["d"])
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGE", "z", "+inf", "5", "BYSCORE", "REV"]),
        strings(&["b", "a"])
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZREVRANGE", "z", "0", "1"]),
        strings(&["b", "a"])
    );
    query::<i64>(
        &mut c,
        &["ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d"],
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGEBYLEX", "lex", "(a", "[c"]),
        strings(&["b", "c"])
    );
    assert_eq!(query::<i64>(&mut c, &["ZLEXCOUNT", "lex", "-", "+"]), 4);
    assert!(error(&mut c, &["ZRANGEBYLEX", "lex", "a", "+"]).contains("not valid string"));
    assert!(error(&mut c, &["ZRANGE", "lex", "0", "-1", "LIMIT", "0", "1"]).contains("syntax"));
    assert_eq!(
        query::<i64>(&mut c, &["ZREMRANGEBYLEX", "lex", "[b", "[c"]),
        2
    );
    assert_eq!(
        query::<i64>(&mut c, &["ZREMRANGEBYRANK", "lex", "0", "0"]),
        1
    );
    assert_eq!(
        query::<i64>(&mut c, &["ZREMRANGEBYSCORE", "lex", "-inf", "+inf"]),
        1
    );
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "lex"]), 0);
    // Combining takes sets too (each member scores 1), with weights and an aggregate.
    query::<i64>(&mut c, &["SADD", "plain", "a", "x"]);
    assert_eq!(
        query::<i64>(
            &mut c,
            &[
                "ZUNIONSTORE",
                "u",
                "2",
                "z",
                "plain",
                "WEIGHTS",
                "2",
                "10",
                "AGGREGATE",
                "MAX"
            ]
        ),
        5
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGE", "u", "0", "-1", "WITHSCORES"]),
        strings(&["c", "6", "d", "8", "x", "10", "a", "11", "b", "18"])
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZINTER", "2", "z", "plain", "WITHSCORES"]),
        strings(&["a", "6.5"])
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZDIFF", "2", "z", "plain"]),
        strings(&["c", "d", "b"])
    );
    assert_eq!(
        query::<i64>(&mut c, &["ZINTERCARD", "2", "z", "u", "LIMIT", "2"]),
        2
    );
    assert!(error(&mut c, &["ZUNION", "0", "z"]).contains("at least 1 input key"));
    assert_eq!(
        query::<i64>(&mut c, &["ZRANGESTORE", "top", "u", "0", "1", "REV"]),
        2
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGE", "top", "0", "-1"]),
        strings(&["a", "b"])
    );
    // Pops: ZPOPMIN, ZPOPMAX with a count, ZMPOP from the first sorted set that exists.
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZPOPMIN", "u"]),
        strings(&["c", "6"])
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZPOPMAX", "u", "2"]),
        strings(&["b", "18", "a", "11"])
    );
    let (key, got): (String, Vec<(String, String)>) =
        query(&mut c, &["ZMPOP", "2", "none", "u", "MIN", "COUNT", "5"]);
    assert_eq!(key, "u");
    assert_eq!(got.len(), 2);
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "u"]), 0);
    assert!(error(&mut c, &["ZPOPMIN", "z", "-1"]).contains("must be positive"));
    // Random members: distinct for a positive count, repeats for a negative one.
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANDMEMBER", "z", "9"]).len(),
        4
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANDMEMBER", "z", "-6", "WITHSCORES"]).len(),
        12
    );
    // WRONGTYPE, and nothing changed.
    query::<()>(&mut c, &["SET", "s", "v"]);
    let wrong = "\"WRONGTYPE\": Operation against a key holding the wrong kind of value";
    assert_eq!(error(&mut c, &["ZADD", "s", "1", "m"]), wrong);
    assert_eq!(error(&mut c, &["ZUNIONSTORE", "z", "2", "z", "s"]), wrong);
    assert_eq!(error(&mut c, &["ZRANGE", "s", "0", "-1"]), wrong);
    assert_eq!(query::<i64>(&mut c, &["ZCARD", "z"]), 4);
    // Encodings follow the thresholds, which CONFIG SET changes.
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "z"]),
        "listpack"
    );
    query::<()>(&mut c, &["CONFIG", "SET", "zset-max-listpack-entries", "2"]);
    assert_eq!(
        query::<i64>(&mut c, &["ZADD", "big", "1", "a", "2", "b", "3", "c"]),
        3
    );
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "big"]),
        "skiplist"
    );
    query::<()>(
        &mut c,
        &["CONFIG", "SET", "zset-max-listpack-entries", "128"],
    );
    assert_eq!(query::<String>(&mut c, &["TYPE", "big"]), "zset");
    // RESP3: a score is a double.
    let mut r3 = redis::Client::open(format!("{}?protocol=resp3", srv.url()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(
        query::<redis::Value>(&mut r3, &["ZSCORE", "z", "a"]),
        redis::Value::Double(5.5)
    );
    assert_eq!(srv.cli(&["ZSCAN", "z", "0", "MATCH", "a"]), "0\na\n5.5\n");
    // A large sorted set, an expiry and a rename, through a restart.
    let members: Vec<String> = (0..2000).map(|i| format!("m{i}")).collect();
    let mut args = vec!["ZADD".to_string(), "large".to_string()];
    for (i, m) in members.iter().enumerate() {
        args.push(format!("{}", i as f64 / 4.0));
        args.push(m.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(query::<i64>(&mut c, &args), 2000);
    query::<i64>(&mut c, &["EXPIRE", "z", "1000"]);
    query::<()>(&mut c, &["RENAME", "big", "renamed"]);
    drop(c);
    srv.kill9();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    assert_eq!(query::<i64>(&mut c, &["ZCARD", "large"]), 2000);
    assert_eq!(
        query::<String>(&mut c, &["ZSCORE", "large", "m1999"]),
        "499.75"
    );
    assert_eq!(query::<i64>(&mut c, &["ZRANK", "large", "m1000"]), 1000);
    assert!(query::<i64>(&mut c, &["TTL", "z"]) > 900);
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGE", "renamed", "0", "-1"]),
        strings(&["a", "b", "c"])
    );
}

/// BZPOPMIN waits for a member, wakes when one is added, times out with a nil array, passes
/// over a key that came to hold another type once it waits, and takes nothing when its client
/// goes away.
#[test]
fn blocking_sorted_set_pops_wait_wake_and_time_out() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let mut raw = srv.raw();
    raw.cmd(&["BZPOPMIN", "q", "0.1"], "*-1\r\n");
    raw.cmd(&["BZMPOP", "0.1", "1", "q", "MIN"], "*-1\r\n");
    let url = srv.url();
    let waiter = thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("BZPOPMAX")
            .arg("x")
            .arg("y")
            .arg(0)
            .query::<(String, String, String)>(&mut c)
            .unwrap()
    });
    wait_until_blocked(&mut c, 1);
    query::<()>(&mut c, &["SET", "x", "a string"]);
    query::<i64>(&mut c, &["ZADD", "y", "1", "low", "7", "high"]);
    assert_eq!(
        waiter.join().unwrap(),
        ("y".to_string(), "high".to_string(), "7".to_string())
    );
    assert_eq!(query::<i64>(&mut c, &["ZCARD", "y"]), 1);
    let mut gone = srv.raw();
    gone.send(&resp(&["BZPOPMIN", "abandoned", "0"]));
    wait_until_blocked(&mut c, 1);
    drop(gone);
    wait_until_blocked(&mut c, 0);
    query::<i64>(&mut c, &["ZADD", "abandoned", "1", "m"]);
    assert_eq!(query::<i64>(&mut c, &["ZCARD", "abandoned"]), 1);
}

/// Producers ZADD unique members, consumers ZPOPMIN or BZPOPMIN them and one client ZINCRBYs a
/// counter, with checkpoints going on, until `keel serve` is killed with -9. After a restart
/// every acknowledged member was popped exactly once or is still there, and the counter holds
/// every acknowledged increment; only the one request in doubt per client may differ.
#[test]
fn every_acknowledged_member_is_popped_once_or_still_there_after_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let progress = Arc::new(AtomicUsize::new(0));
    let spawn = |role: usize| {
        let url = srv.url();
        let progress = progress.clone();
        thread::spawn(move || {
            let (mut added, mut popped, mut in_doubt) = (Vec::new(), Vec::new(), false);
            let Ok(mut con) = redis::Client::open(url).unwrap().get_connection() else {
                return (added, popped, in_doubt);
            };
            for i in 0..1_000_000 {
                let r = match role {
                    0..=2 => {
                        let m = format!("p{role}-{i:07}");
                        redis::cmd("ZADD")
                            .arg("board")
                            .arg(i)
                            .arg(&m)
                            .query::<i64>(&mut con)
                            .map(|n| {
                                assert_eq!(n, 1);
                                added.push(m)
                            })
                    }
                    3 => redis::cmd("ZPOPMIN")
                        .arg("board")
                        .arg(2)
                        .query::<Vec<String>>(&mut con)
                        .map(|v| popped.extend(v.into_iter().step_by(2))),
                    4 => redis::cmd("BZPOPMIN")
                        .arg("board")
                        .arg(0.2)
                        .query::<Option<(String, String, String)>>(&mut con)
                        .map(|v| popped.extend(v.map(|(_, m, _)| m))),
                    _ => redis::cmd("ZINCRBY")
                        .arg("counter")
                        .arg(1)
                        .arg("hits")
                        .query::<String>(&mut con)
                        .map(|_| added.push(String::new())),
                };
                if r.is_err() {
                    in_doubt = true;
                    break;
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            (added, popped, in_doubt)
        })
    };
    let clients: Vec<_> = (0..6).map(spawn).collect();
    let mut admin = srv.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Relaxed) < 4000 && Instant::now() < deadline {
        let _: redis::RedisResult<()> = redis::cmd("BGSAVE").query(&mut admin);
        thread::sleep(Duration::from_millis(20));
    }
    srv.kill9();
    let (mut added, mut popped, mut doubts, mut incrs, mut incr_doubt) =
        (Vec::new(), Vec::new(), 0, 0, 0);
    for (role, h) in clients.into_iter().enumerate() {
        let (a, p, d) = h.join().unwrap();
        if role == 5 {
            (incrs, incr_doubt) = (a.len() as i64, d as i64);
        } else {
            added.extend(a);
            popped.extend(p);
            doubts += d as usize;
        }
    }
    assert!(added.len() > 500, "only {} adds acknowledged", added.len());
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    let left: HashSet<String> = query::<Vec<String>>(&mut c, &["ZRANGE", "board", "0", "-1"])
        .into_iter()
        .collect();
    let popped_set: HashSet<&String> = popped.iter().collect();
    assert_eq!(popped_set.len(), popped.len(), "a member was popped twice");
    assert!(
        popped.iter().all(|m| !left.contains(m)),
        "popped and still there"
    );
    let missing: Vec<&String> = added
        .iter()
        .filter(|m| !left.contains(*m) && !popped_set.contains(m))
        .collect();
    // Only an in-doubt ZPOPMIN (up to 2 members) or BZPOPMIN may have taken a member nobody saw.
    assert!(
        missing.len() <= 2 * doubts,
        "lost {} members: {missing:?}",
        missing.len()
    );
    let hits: f64 = query::<Option<String>>(&mut c, &["ZSCORE", "counter", "hits"])
        .map_or(0.0, |s| s.parse().unwrap());
    assert!(
        hits as i64 >= incrs && hits as i64 <= incrs + incr_doubt,
        "{hits} hits after {incrs} acknowledged increments"
    );
}

/// Polls INFO clients until `n` clients are blocked (a deadline fails the test).
fn wait_until_blocked(c: &mut redis::Connection, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = query(c, &["INFO", "clients"]);
        if info.contains(&format!("blocked_clients:{n}\r\n")) {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} blocked: {info}");
        thread::sleep(Duration::from_millis(10));
    }
}
