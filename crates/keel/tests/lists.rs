//! Lists through `keel serve`, driven by the `redis` crate, and killed with -9 under a queue's
//! load. No assertion depends on timing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn list_commands_answer_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    assert_eq!(query::<i64>(&mut c, &["RPUSH", "l", "a", "b", "c"]), 3);
    assert_eq!(query::<i64>(&mut c, &["LPUSH", "l", "y", "z"]), 5);
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "l", "0", "-1"]),
        ["z", "y", "a", "b", "c"]
    );
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "l", "-2", "100"]),
        ["b", "c"]
    );
    assert_eq!(query::<String>(&mut c, &["LPOP", "l"]), "z");
    assert_eq!(
        query::<Vec<String>>(&mut c, &["RPOP", "l", "2"]),
        ["c", "b"]
    );
    assert_eq!(
        query::<Option<Vec<String>>>(&mut c, &["LPOP", "none", "2"]),
        None
    );
    assert_eq!(query::<i64>(&mut c, &["LPUSHX", "none", "a"]), 0);
    assert_eq!(query::<String>(&mut c, &["LINDEX", "l", "-1"]), "a");
    assert_eq!(query::<()>(&mut c, &["LSET", "l", "0", "Y"]), ());
    assert!(error(&mut c, &["LSET", "l", "5", "x"]).contains("index out of range"));
    assert!(error(&mut c, &["LSET", "none", "0", "x"]).contains("no such key"));
    assert_eq!(
        query::<i64>(&mut c, &["LINSERT", "l", "AFTER", "Y", "m"]),
        3
    );
    assert_eq!(
        query::<i64>(&mut c, &["LINSERT", "l", "AFTER", "nope", "m"]),
        -1
    );
    assert_eq!(query::<i64>(&mut c, &["LPOS", "l", "a"]), 2);
    assert_eq!(
        query::<Vec<i64>>(&mut c, &["LPOS", "l", "m", "COUNT", "0"]),
        [1]
    );
    assert!(error(&mut c, &["LPOS", "l", "a", "RANK", "0"]).contains("RANK can't be zero"));
    assert_eq!(query::<i64>(&mut c, &["LREM", "l", "0", "m"]), 1);
    assert_eq!(
        query::<String>(&mut c, &["LMOVE", "l", "k", "LEFT", "RIGHT"]),
        "Y"
    );
    assert_eq!(query::<String>(&mut c, &["RPOPLPUSH", "l", "k"]), "a");
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "l"]), 0);
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "k", "0", "-1"]),
        ["a", "Y"]
    );
    assert_eq!(query::<()>(&mut c, &["LTRIM", "k", "1", "1"]), ());
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "k", "0", "-1"]),
        ["Y"]
    );
    assert_eq!(query::<String>(&mut c, &["TYPE", "k"]), "list");
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "k"]),
        "listpack"
    );
    query::<()>(&mut c, &["SET", "s", "v"]);
    let wrong = "\"WRONGTYPE\": Operation against a key holding the wrong kind of value";
    assert_eq!(error(&mut c, &["LPUSH", "s", "x"]), wrong);
    assert_eq!(error(&mut c, &["LMOVE", "k", "s", "LEFT", "LEFT"]), wrong);
    assert_eq!(query::<i64>(&mut c, &["LLEN", "k"]), 1);
    // A list of many chunks (8 KiB each), through a restart.
    let big: Vec<String> = (0..5000).map(|i| format!("element-{i:05}")).collect();
    let mut push = redis::cmd("RPUSH");
    push.arg("big").arg(&big);
    let n: i64 = push.query(&mut c).unwrap();
    assert_eq!(n, 5000);
    assert_eq!(
        query::<String>(&mut c, &["OBJECT", "ENCODING", "big"]),
        "quicklist"
    );
    drop(c);
    let status = srv.sigterm();
    assert!(status.success());
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<Vec<String>>(&mut c, &["LRANGE", "big", "0", "-1"]),
        big
    );
}

/// Producers LPUSH unique jobs and consumers RPOP or BRPOP them, with checkpoints going on, until
/// `keel serve` is killed with -9. After a restart every acknowledged job was popped exactly
/// once by an acknowledged RPOP or is still in the list, in the order it was pushed; only the
/// one request in doubt per client may differ.
#[test]
fn every_acknowledged_job_is_popped_once_or_still_queued_after_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let progress = Arc::new(AtomicUsize::new(0));
    let spawn = |role: usize| {
        let url = srv.url();
        let progress = progress.clone();
        thread::spawn(move || {
            let (mut pushed, mut popped, mut in_doubt) = (Vec::new(), Vec::new(), false);
            let Ok(mut con) = redis::Client::open(url).unwrap().get_connection() else {
                return (pushed, popped, in_doubt);
            };
            for i in 0..1_000_000 {
                let r = if role < 3 {
                    let job = format!("p{role}-{i:07}");
                    redis::cmd("LPUSH")
                        .arg("jobs")
                        .arg(&job)
                        .query::<i64>(&mut con)
                        .map(|_| pushed.push(job))
                } else if role == 3 {
                    redis::cmd("RPOP")
                        .arg("jobs")
                        .query::<Option<String>>(&mut con)
                        .map(|job| popped.extend(job))
                } else {
                    // A blocking consumer: waits for a job, then takes it durably.
                    redis::cmd("BRPOP")
                        .arg("jobs")
                        .arg(0.2)
                        .query::<Option<(String, String)>>(&mut con)
                        .map(|kv| popped.extend(kv.map(|(_, job)| job)))
                };
                if r.is_err() {
                    in_doubt = true;
                    break;
                }
                progress.fetch_add(1, Ordering::Relaxed);
            }
            (pushed, popped, in_doubt)
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
    let (mut pushed, mut popped, mut doubts) = (Vec::new(), Vec::new(), 0);
    for h in clients {
        let (a, p, d) = h.join().unwrap();
        pushed.extend(a);
        popped.extend(p);
        doubts += d as usize;
    }
    assert!(
        pushed.len() > 1000,
        "only {} pushes acknowledged",
        pushed.len()
    );
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    let left: Vec<String> = query(&mut c, &["LRANGE", "jobs", "0", "-1"]);
    let left_set: HashSet<&String> = left.iter().collect();
    let popped_set: HashSet<&String> = popped.iter().collect();
    assert_eq!(popped_set.len(), popped.len(), "a job was popped twice");
    assert_eq!(left_set.len(), left.len(), "a job is queued twice");
    assert!(
        popped.iter().all(|j| !left_set.contains(j)),
        "popped and still queued"
    );
    let missing: Vec<&String> = pushed
        .iter()
        .filter(|j| !left_set.contains(j) && !popped_set.contains(j))
        .collect();
    // Only an in-doubt RPOP may have taken a job nobody saw.
    assert!(
        missing.len() <= doubts,
        "lost {} jobs: {missing:?}",
        missing.len()
    );
    // Each producer's jobs still queued are in the order it pushed them (newest at the head).
    for p in 0..3 {
        let mine: Vec<&String> = left
            .iter()
            .filter(|j| j.starts_with(&format!("p{p}-")))
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] > w[1]),
            "producer {p}'s jobs out of order"
        );
    }
}

/// BLPOP and friends wait for an element, wake when one is pushed, time out with Redis's nil,
/// do not block inside MULTI, and take nothing when their client goes away while waiting.
#[test]
fn blocking_pops_wait_wake_time_out_and_take_nothing_when_abandoned() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    // Timeouts: a nil array, as Redis answers every blocked list command that timed out.
    let started = Instant::now();
    assert_eq!(
        query::<Option<Vec<String>>>(&mut c, &["BLPOP", "q", "0.2"]),
        None
    );
    assert_eq!(
        query::<Option<String>>(&mut c, &["BLMOVE", "q", "d", "LEFT", "LEFT", "0.2"]),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    let mut raw = srv.raw();
    raw.cmd(&["BRPOPLPUSH", "q", "d", "0.1"], "*-1\r\n");
    raw.cmd(&["BLPOP", "q", "0.1"], "*-1\r\n");
    assert!(error(&mut c, &["BLPOP", "q", "-1"]).contains("timeout is negative"));
    assert!(error(&mut c, &["BLPOP", "q", "x"]).contains("not a float"));
    // A waiting client is woken by a push on any of its keys, and gets key and element.
    let url = srv.url();
    let waiter = thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("BLPOP")
            .arg("a")
            .arg("b")
            .arg(0)
            .query::<(String, String)>(&mut c)
            .unwrap()
    });
    wait_until_blocked(&mut c, 1);
    query::<i64>(&mut c, &["RPUSH", "b", "job"]);
    assert_eq!(waiter.join().unwrap(), ("b".to_string(), "job".to_string()));
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "b"]), 0);
    // Once waiting, a key that came to hold another type is passed over, not an error.
    let url = srv.url();
    let waiter = thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        redis::cmd("BLPOP")
            .arg("x")
            .arg("y")
            .arg(0)
            .query::<(String, String)>(&mut c)
            .unwrap()
    });
    wait_until_blocked(&mut c, 1);
    query::<()>(&mut c, &["SET", "x", "a string"]);
    query::<i64>(&mut c, &["RPUSH", "y", "job"]);
    assert_eq!(waiter.join().unwrap(), ("y".to_string(), "job".to_string()));
    // BLMPOP takes up to COUNT from the first list that has elements.
    query::<i64>(&mut c, &["RPUSH", "m", "1", "2", "3"]);
    let (key, got): (String, Vec<String>) = query(
        &mut c,
        &["BLMPOP", "0", "2", "none", "m", "RIGHT", "COUNT", "2"],
    );
    assert_eq!(
        (key.as_str(), got),
        ("m", vec!["3".to_string(), "2".to_string()])
    );
    // Inside MULTI nothing blocks: an empty list gives nil at once.
    let (v,): (Option<Vec<String>>,) = redis::pipe()
        .atomic()
        .cmd("BLPOP")
        .arg("empty")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, None);
    // A client that goes away while it waits takes nothing.
    let mut gone = srv.raw();
    gone.send(&resp(&["BLPOP", "abandoned", "0"]));
    wait_until_blocked(&mut c, 1);
    drop(gone);
    wait_until_blocked(&mut c, 0);
    query::<i64>(&mut c, &["RPUSH", "abandoned", "job"]);
    assert_eq!(query::<i64>(&mut c, &["LLEN", "abandoned"]), 1);
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
