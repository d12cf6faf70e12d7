//! A stalled disk, for real: the data directory is an ext4 file system on a loop device, and
//! `fsfreeze` makes every write to it wait. While it is frozen, keel serve must acknowledge no
//! write (none has reached the file system), and must keep serving everything that does not
//! need the disk: other clients' reads, PING, INFO, new connections. Writers that fill the log's
//! queue wait without holding a runtime thread. Once it thaws, every write completes, and a
//! kill -9 loses none of them. (That acknowledgements wait for the sync itself is the crash
//! suites' business: a frozen file system stops the write before the sync.)
//!
//! Mounting needs root and a loop device. Without them the test says it was skipped.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::loopfs::LoopFs;
use common::{resp, Server, DEADLINE};
use redis::Commands;

fn info_field(c: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query(c)
        .expect("INFO answers (the server must not stall with its disk)");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("INFO lacks {name}:\n{info}"))
        .trim()
        .parse()
        .unwrap()
}

// A connection has one write of this size in flight (it reads no further until that write's
// reply is out), so it takes this many connections to fill the queue.
const WRITERS: usize = 40;
const PER_WRITER: usize = 2;
const VALUE: usize = 2 << 20;

#[test]
fn a_frozen_disk_stops_acknowledgements_but_not_reads_or_other_clients() {
    let t = tempfile::Builder::new()
        .prefix("keel-stall-")
        .tempdir()
        .unwrap();
    let fs = match LoopFs::mount(t.path(), 1 << 30) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = fs.mnt.join("data");
    // Two runtime threads, whatever the machine: the writers waiting for room outnumber them.
    let srv = Server::start_env(&dir, &[], &[("TOKIO_WORKER_THREADS", "2")]);
    let queue_max = keel_wal::Options::default().queue_bytes_max as u64;
    let mut c = srv.client();
    let _: () = c.set("before", "still readable").unwrap();

    let frozen = fs.freeze();
    // More than the log's queue holds: some writers end up waiting for room, more of them than
    // the server has runtime threads.
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (port, acked) = (srv.port, acked.clone());
            thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
                let mut reader = s.try_clone().unwrap();
                let counter = thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while got.len() < PER_WRITER * 5 {
                        let n = reader.read(&mut buf).expect("a reply within 120 s");
                        assert!(n > 0, "connection closed after {} bytes", got.len());
                        let before = got.len() / 5; // "+OK\r\n" each
                        got.extend_from_slice(&buf[..n]);
                        acked.fetch_add(got.len() / 5 - before, Ordering::SeqCst);
                    }
                    got
                });
                let value = vec![b'a' + (w % 26) as u8; VALUE];
                for i in 0..PER_WRITER {
                    let key = format!("w{w}-{i}");
                    s.write_all(&resp(&["SET", &key, std::str::from_utf8(&value).unwrap()]))
                        .unwrap();
                }
                counter.join().unwrap()
            })
        })
        .collect();

    // Until the queue is nearly full, asking over a connection opened before the freeze...
    let start = Instant::now();
    loop {
        let queued = info_field(&mut c, "wal_queued_bytes");
        if queued + 2 * VALUE as u64 > queue_max {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the queue never filled: {queued} bytes"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // ... and now over new connections: the server still answers everything but writes.
    for _ in 0..3 {
        let mut other = srv.client();
        assert_eq!(
            redis::cmd("PING").query::<String>(&mut other).unwrap(),
            "PONG"
        );
        let v: String = other.get("before").unwrap();
        assert_eq!(v, "still readable");
        let n: i64 = redis::cmd("DBSIZE").query(&mut other).unwrap();
        assert_eq!(n, 1, "an unacknowledged write is visible");
    }
    assert_eq!(
        srv.cli(&["GET", "before"]),
        "still readable\n",
        "redis-cli during the stall"
    );
    let durable = info_field(&mut c, "durable_lsn");
    assert_eq!(
        acked.load(Ordering::SeqCst),
        0,
        "a write was acknowledged while the disk was frozen"
    );

    drop(frozen);
    for w in writers {
        let replies = w.join().unwrap();
        assert_eq!(
            replies,
            b"+OK\r\n".repeat(PER_WRITER),
            "every write succeeds"
        );
    }
    assert!(info_field(&mut c, "durable_lsn") >= durable + (WRITERS * PER_WRITER) as u64);

    // Acknowledged means durable: nothing is lost to a kill -9 after the thaw.
    srv.kill9();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    for w in 0..WRITERS {
        for i in 0..PER_WRITER {
            let v: Vec<u8> = c.get(format!("w{w}-{i}")).unwrap();
            assert_eq!(v.len(), VALUE, "w{w}-{i}");
            assert!(v.iter().all(|&b| b == b'a' + (w % 26) as u8));
        }
    }
    drop(c);
    srv.kill9();
}
