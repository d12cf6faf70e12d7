//! Sets through `keel serve`, driven by the `redis` crate and redis-cli, and killed with -9
//! under load. No assertion depends on timing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn set(ms: &[&str]) -> HashSet<String> {
    ms.iter().map(|m| m.to_string()).collect()
}

#[test]
fn set_commands_answer_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    assert_eq!(query::<i64>(&mut c, &["SADD", "a", "1", "2", "3", "x"]), 4);
    assert_eq!(query::<i64>(&mut c, &["SADD", "b", "2", "3", "4"]), 3);
    assert_eq!(
        query::<HashSet<String>>(&mut c, &["SINTER", "a", "b"]),
        set(&["2", "3"])
    );
    assert_eq!(
        query::<HashSet<String>>(&mut c, &["SUNION", "a", "b"]),
        set(&["1", "2", "3", "4", "x"])
    );
    assert_eq!(
        query::<HashSet<String>>(&mut c, &["SDIFF", "a", "b"]),
        set(&["1", "x"])
    );
    assert_eq!(
        query::<i64>(&mut c, &["SINTERCARD", "2", "a", "b", "LIMIT", "1"]),
        1
    );
    assert_eq!(query::<i64>(&mut c, &["SUNIONSTORE", "u", "a", "b"]), 5);
    assert_eq!(query::<i64>(&mut c, &["SCARD", "u"]), 5);
    assert_eq!(
        query::<Vec<i64>>(&mut c, &["SMISMEMBER", "a", "1", "9"]),
        vec![1, 0]
    );
    assert_eq!(query::<i64>(&mut c, &["SMOVE", "a", "b", "x"]), 1);
    assert_eq!(query::<i64>(&mut c, &["SISMEMBER", "b", "x"]), 1);
    assert_eq!(query::<String>(&mut c, &["TYPE", "u"]), "set");
    query::<i64>(&mut c, &["SADD", "n", "5", "-7"]);
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "n"]),
        "intset"
    );
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "b"]),
        "listpack"
    );
    // SPOP takes distinct members; all of them empties and deletes the set.
    let popped: HashSet<String> = query(&mut c, &["SPOP", "u", "3"]);
    assert_eq!(popped.len(), 3);
    let left: HashSet<String> = query(&mut c, &["SMEMBERS", "u"]);
    assert_eq!(left.len(), 2);
    assert!(left.is_disjoint(&popped));
    let rest: HashSet<String> = query(&mut c, &["SPOP", "u", "10"]);
    assert_eq!(rest, left);
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "u"]), 0);
    assert_eq!(query::<Option<String>>(&mut c, &["SPOP", "u"]), None);
    assert!(error(&mut c, &["SPOP", "a", "-1"]).contains("out of range"));
    // SRANDMEMBER: distinct for a positive count, repeats for a negative one.
    assert_eq!(
        query::<Vec<String>>(&mut c, &["SRANDMEMBER", "a", "10"]).len(),
        3
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["SRANDMEMBER", "a", "-10"]).len(),
        10
    );
    assert!(error(&mut c, &["SRANDMEMBER", "a", "-100000000"]).contains("out of range"));
    // WRONGTYPE, and nothing changed.
    query::<()>(&mut c, &["SET", "s", "v"]);
    let wrong = "\"WRONGTYPE\": Operation against a key holding the wrong kind of value";
    assert_eq!(error(&mut c, &["SADD", "s", "m"]), wrong);
    assert_eq!(error(&mut c, &["SINTER", "a", "s"]), wrong);
    assert_eq!(error(&mut c, &["SMOVE", "a", "s", "1"]), wrong);
    assert_eq!(query::<i64>(&mut c, &["SCARD", "a"]), 3);
    assert!(error(&mut c, &["SINTERCARD", "0", "a"]).contains("numkeys"));
    // Thresholds are settable; CONFIG SET save "" is accepted (keel takes no save points).
    query::<()>(
        &mut c,
        &["CONFIG", "SET", "set-max-intset-entries", "2", "save", ""],
    );
    query::<i64>(&mut c, &["SADD", "ints", "1", "2", "3"]);
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "ints"]),
        "listpack"
    );
    query::<()>(&mut c, &["CONFIG", "SET", "set-max-intset-entries", "512"]);
    assert!(error(&mut c, &["CONFIG", "SET", "save", "900 1"]).contains("save points"));
    // RESP3: SMEMBERS is a set.
    let mut r3 = redis::Client::open(format!("{}?protocol=resp3", srv.url()))
        .unwrap()
        .get_connection()
        .unwrap();
    assert!(matches!(
        query::<redis::Value>(&mut r3, &["SMEMBERS", "b"]),
        redis::Value::Set(v) if v.len() == 4
    ));
    assert_eq!(srv.cli(&["SSCAN", "b", "0", "MATCH", "x"]), "0\nx\n");
}

/// Producers add unique members, consumers SPOP them, until `keel serve` is killed with -9.
/// After a restart every acknowledged member is either still in the set or was popped by an
/// acknowledged SPOP, never both; and only the one write in doubt per client may differ.
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
                if role < 3 {
                    let m = format!("p{role}-{i}");
                    match redis::cmd("SADD")
                        .arg("queue")
                        .arg(&m)
                        .query::<i64>(&mut con)
                    {
                        Ok(n) => {
                            assert_eq!(n, 1);
                            added.push(m);
                        }
                        Err(_) => {
                            in_doubt = true;
                            break;
                        }
                    }
                } else {
                    match redis::cmd("SPOP")
                        .arg("queue")
                        .arg(2)
                        .query::<Vec<String>>(&mut con)
                    {
                        Ok(ms) => popped.extend(ms),
                        Err(_) => {
                            in_doubt = true;
                            break;
                        }
                    }
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            (added, popped, in_doubt)
        })
    };
    let clients: Vec<_> = (0..5).map(spawn).collect();
    let mut admin = srv.client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Relaxed) < 4000 && Instant::now() < deadline {
        let _: redis::RedisResult<()> = redis::cmd("BGSAVE").query(&mut admin);
        thread::sleep(Duration::from_millis(20));
    }
    srv.kill9();
    let (mut added, mut popped, mut doubts) = (Vec::new(), Vec::new(), 0);
    for h in clients {
        let (a, p, d) = h.join().unwrap();
        added.extend(a);
        popped.extend(p);
        doubts += d as usize;
    }
    assert!(added.len() > 1000, "only {} adds acknowledged", added.len());
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    let left: HashSet<String> = query(&mut c, &["SMEMBERS", "queue"]);
    let popped_set: HashSet<&String> = popped.iter().collect();
    assert_eq!(popped_set.len(), popped.len(), "a member was popped twice");
    for m in &popped {
        assert!(!left.contains(m), "{m} was popped and is still there");
    }
    let missing: Vec<&String> = added
        .iter()
        .filter(|m| !left.contains(*m) && !popped_set.contains(m))
        .collect();
    // Only an in-doubt SPOP (up to 2 members per consumer) may have taken a member nobody saw.
    assert!(
        missing.len() <= 2 * doubts,
        "lost {} members: {missing:?}",
        missing.len()
    );
}
