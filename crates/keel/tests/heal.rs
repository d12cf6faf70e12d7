//! A full disk, for real: the data directory is a small ext4 file system on a loop device, and
//! a ballast file takes its last free block. The write that needs a new log segment fails, the
//! log is poisoned (P5), and from then on every write gets an error that says why, while reads
//! go on from the last durable state and INFO and the metrics show the poisoned log. Once the
//! ballast is gone, keel serve reopens the log by itself (recovery, as a restart would run it)
//! and takes writes again, without a restart. Nothing acknowledged is lost, also not to a
//! kill -9 afterwards. SIGTERM while the log is poisoned exits with code 4.
//!
//! Mounting needs root and a loop device. Without them the test says it was skipped.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::loopfs::{fill, run, LoopFs};
use common::{http, metrics_port, Server};
use redis::Commands;

/// Values of the writes that fill the log until it needs a new segment (64 MiB by default).
const BIG: usize = 1 << 20;
/// How long the server may take to heal once there is room again: the reopen backoff tops out
/// at 10 s, and ext4 may hand freed blocks back only at its next journal commit (5 s).
const HEAL_DEADLINE: Duration = Duration::from_secs(30);
/// `keel serve`'s exit code when it shut down with its log poisoned (see the README).
const EXIT_POISONED: i32 = 4;

fn info(c: &mut redis::Connection) -> String {
    redis::cmd("INFO")
        .arg("persistence")
        .query(c)
        .expect("INFO answers while the log is poisoned")
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("INFO lacks {name}:\n{info}"))
        .trim()
        .to_string()
}

fn metric(port: u16, name: &str) -> u64 {
    let text = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after `deadline`.
fn poll(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "{what} within {deadline:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn big_value(i: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; BIG]
}

/// Writes big values under `prefix` until one fails; the acknowledged ones go to `acked`.
/// Returns the error.
fn write_until_full(
    c: &mut redis::Connection,
    prefix: &str,
    acked: &mut Vec<(String, Vec<u8>)>,
) -> redis::RedisError {
    // A 64 MiB segment holds fewer than 64 of these; the next one needs a new segment.
    for i in 0..200 {
        let (k, v) = (format!("{prefix}{i}"), big_value(i));
        match c.set::<_, _, ()>(&k, &v) {
            Ok(()) => acked.push((k, v)),
            Err(e) => return e,
        }
    }
    panic!("200 MiB of writes on a full disk all succeeded");
}

fn check_all(c: &mut redis::Connection, acked: &[(String, Vec<u8>)]) {
    for (k, v) in acked {
        let got: Option<Vec<u8>> = c.get(k).unwrap();
        assert!(got.as_ref() == Some(v), "acknowledged {k} is lost or wrong");
    }
}

#[test]
fn a_full_disk_heals_without_a_restart_and_loses_nothing_acknowledged() {
    let t = tempfile::Builder::new()
        .prefix("keel-heal-")
        .tempdir()
        .unwrap();
    // Room for three 64 MiB segments and the ballast's share, not much more.
    let fs = match LoopFs::mount(t.path(), 320 << 20) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = fs.mnt.join("data");
    let ballast = fs.mnt.join("ballast");
    let srv = Server::start(&dir, &["--metrics-port", "0"]);
    let mport = metrics_port(&srv);
    let mut c = srv.client();
    let mut acked: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("small{i}"), format!("value {i}").into_bytes()))
        .collect();
    for (k, v) in &acked {
        let _: () = c.set(k, v).unwrap();
    }

    // The disk fills up; the write that needs a new segment fails and poisons the log.
    assert!(fill(&ballast) > 0);
    let e = write_until_full(&mut c, "big", &mut acked);
    let text = e.to_string();
    assert_eq!(e.code(), Some("MISCONF"), "{text}");
    for part in ["No space left on device", "refuses writes", "retries every"] {
        assert!(text.contains(part), "the error names {part:?}: {text}");
    }
    // Every later write is refused the same way, with a connection of its own too.
    let mut other = srv.client();
    let e = other.set::<_, _, ()>("refused", "x").unwrap_err();
    assert!(e.to_string().contains("refuses writes"), "{e}");
    // Reads go on.
    check_all(&mut other, &acked);
    let n: usize = redis::cmd("DBSIZE").query(&mut other).unwrap();
    assert_eq!(n, acked.len(), "a refused write is visible");
    // INFO and the metrics say so, and keel keeps trying to reopen the log (and cannot yet).
    let i = info(&mut c);
    assert_eq!(field(&i, "wal_poisoned"), "1", "{i}");
    assert!(
        field(&i, "wal_poison_cause").contains("No space left on device"),
        "{i}"
    );
    poll(HEAL_DEADLINE, "a reopen attempt", || {
        field(&info(&mut c), "wal_reopen_attempts")
            .parse::<u64>()
            .unwrap()
            >= 2
    });
    let i = info(&mut c);
    assert_eq!(field(&i, "wal_poisoned"), "1", "still full: {i}");
    assert_eq!(field(&i, "wal_reopens"), "0", "{i}");
    assert!(
        field(&i, "wal_reopen_last_error").contains("space"),
        "the failed attempt says why: {i}"
    );
    assert_eq!(metric(mport, "keel_wal_poisoned"), 1);
    assert!(metric(mport, "keel_wal_reopen_attempts_total") >= 2);

    // Free the space: writes are taken again without a restart.
    std::fs::remove_file(&ballast).unwrap();
    run("sync", &["-f", fs.mnt.to_str().unwrap()]);
    poll(HEAL_DEADLINE, "writes succeed again", || {
        c.set::<_, _, ()>("healed", "yes").is_ok()
    });
    acked.push(("healed".into(), b"yes".to_vec()));
    let i = info(&mut c);
    assert_eq!(field(&i, "wal_poisoned"), "0", "{i}");
    assert_eq!(field(&i, "wal_poison_cause"), "", "{i}");
    assert!(field(&i, "wal_reopens").parse::<u64>().unwrap() >= 1, "{i}");
    assert_eq!(metric(mport, "keel_wal_poisoned"), 0);
    assert!(metric(mport, "keel_wal_reopens_total") >= 1);
    for i in 0..10 {
        let (k, v) = (format!("after{i}"), big_value(i));
        let _: () = c.set(&k, &v).unwrap();
        acked.push((k, v));
    }
    check_all(&mut other, &acked);

    // Acknowledged means durable: a kill -9 loses nothing.
    drop((c, other));
    srv.kill9();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    check_all(&mut c, &acked);

    // Full again, and SIGTERM while the log is poisoned: exit code 4, nothing lost.
    assert!(fill(&ballast) > 0);
    let e = write_until_full(&mut c, "second", &mut acked);
    assert!(e.to_string().contains("refuses writes"), "{e}");
    drop(c);
    let log = srv.log.clone();
    run("kill", &["-TERM", &srv.child.id().to_string()]);
    let status = srv.wait(); // bounded: a server that does not exit fails the test
    let log = log.lock().unwrap().join("\n");
    assert_eq!(status.code(), Some(EXIT_POISONED), "{status}:\n{log}");
    assert!(
        log.contains("shut down with the log poisoned"),
        "the log says why it exits {EXIT_POISONED}:\n{log}"
    );
    std::fs::remove_file(&ballast).unwrap();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    check_all(&mut c, &acked);
    drop(c);
    srv.kill9();
}
