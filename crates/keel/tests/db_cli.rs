//! `keel snapshot`, `keel backup`, `keel restore` and `keel verify` on real directories, and
//! `keel serve` on a directory written by keel's v1 formats.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::files::{keel, text};
use common::Server;
use keel_engine::{Engine, Options};

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn opts() -> Options {
    Options {
        background: false,
        ..Options::default()
    }
}

fn keys(dir: &Path) -> usize {
    let (e, _) = Engine::open(dir, opts()).unwrap();
    e.read(|v| v.count())
}

#[test]
fn snapshot_backup_and_restore_work_and_fail_with_documented_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let dbs = db.to_str().unwrap();
    {
        let (e, _) = Engine::open(&db, opts()).unwrap();
        for i in 0..10 {
            e.put(format!("k{i}"), "v").unwrap();
        }
        e.close().unwrap();
    }

    let o = keel(&["snapshot", "--dir", dbs]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("snapshot at LSN 10: 10 keys"),
        "{}",
        text(&o)
    );

    let o = keel(&["backup", "--dir", dbs, "--target", &p("b")]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(keys(&tmp.path().join("b")), 10);

    let o = keel(&["restore", "--source", dbs, "--target", &p("r"), "--latest"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(keys(&tmp.path().join("r")), 10);

    // The log is one active segment, never pruned: any LSN is still reachable.
    let o = keel(&[
        "restore",
        "--source",
        dbs,
        "--target",
        &p("r3"),
        "--to-lsn",
        "3",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(keys(&tmp.path().join("r3")), 3);

    // Not possible: beyond the log, a target in use, no target point, no database.
    let o = keel(&[
        "restore",
        "--source",
        dbs,
        "--target",
        &p("r4"),
        "--to-lsn",
        "99",
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("cannot restore"), "{}", text(&o));
    let o = keel(&["restore", "--source", dbs, "--target", &p("r"), "--latest"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let o = keel(&["restore", "--source", dbs, "--target", &p("x")]);
    assert_eq!(code(&o), 2, "clap's usage error: {}", text(&o));
    let o = keel(&["snapshot", "--dir", &p("nothing-here")]);
    assert_eq!(code(&o), 1, "{}", text(&o));

    // In use by another process (here: this test holds it open).
    let (e, _) = Engine::open(&db, opts()).unwrap();
    let o = keel(&["snapshot", "--dir", dbs]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(text(&o).contains("in use"), "{}", text(&o));
    // ... while restore, which only reads, still works on the live source.
    let o = keel(&[
        "restore",
        "--source",
        dbs,
        "--target",
        &p("live"),
        "--latest",
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    drop(e);

    // A flipped byte in the manifest costs nothing: the snapshot it named and the log after
    // it are a complete path (P13). The damage is reported and the file moved aside.
    let flip = |p: &Path, at: usize| {
        let mut b = std::fs::read(p).unwrap();
        b[at] ^= 1;
        std::fs::write(p, b).unwrap();
    };
    flip(&db.join("MANIFEST"), 20);
    let o = keel(&["snapshot", "--dir", dbs]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("DAMAGED"), "{}", text(&o));
    assert!(db.join("damaged").read_dir().unwrap().count() == 1);
    assert_eq!(keys(&db), 10);

    // Damaged with no way around it: the log's only segment has a bad header.
    let seg = std::fs::read_dir(db.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("wal-0")
        })
        .unwrap();
    flip(&seg, 20);
    let o = keel(&["snapshot", "--dir", dbs]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("keel wal verify"), "{}", text(&o));
}

/// keel-engine's frozen v1 data directory (see crates/keel-engine/tests/upgrade.rs, which checks
/// its every byte of state through the engine).
fn v1_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../keel-engine/tests/fixtures/v1-database")
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

#[test]
fn a_v1_data_directory_verifies_and_serves_its_values() {
    let fixture = read_tree(&v1_fixture());
    assert_eq!(
        fixture.len(),
        5,
        "{:?}",
        fixture.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    // keel opens (and writes to) a copy, never the committed fixture.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("v1");
    for (rel, bytes) in &fixture {
        std::fs::create_dir_all(db.join(rel).parent().unwrap()).unwrap();
        std::fs::write(db.join(rel), bytes).unwrap();
    }
    let dbs = db.to_str().unwrap();

    let o = keel(&["verify", dbs]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    for snap in [
        "snap-00000000000000000033.keel",
        "snap-00000000000000000038.keel",
    ] {
        assert!(
            text(&o)
                .lines()
                .any(|l| l.contains(snap) && l.contains(": ok")),
            "{snap}: {}",
            text(&o)
        );
    }

    assert!(text(&o).contains("log: LSN 5..=50"), "{}", text(&o));

    let srv = Server::start(&db, &[]);
    let mut c = srv.client();
    let get = |c: &mut redis::Connection, k: &[u8]| -> Option<Vec<u8>> {
        redis::cmd("GET").arg(k).query(c).unwrap()
    };
    let s = |v: &str| Some(v.as_bytes().to_vec());
    // From the snapshot the MANIFEST names...
    assert_eq!(get(&mut c, b"plain"), s("hello"));
    assert_eq!(get(&mut c, b"empty"), s(""));
    assert_eq!(get(&mut c, b"bin\x00\xff\n"), Some((0..=255u8).collect()));
    let big: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    assert_eq!(get(&mut c, b"big"), Some(big));
    assert_eq!(get(&mut c, b"float"), s("0.3"));
    // ... and from the log replayed after it.
    assert_eq!(get(&mut c, b"counter"), s("101"));
    assert_eq!(get(&mut c, b"overwritten"), s("third"));
    assert_eq!(get(&mut c, b"cas"), s("v4"));
    assert_eq!(get(&mut c, b"phase/c"), s("after the last checkpoint"));
    // Expired (one in the snapshot, one in the log) and deleted keys are not served.
    for k in [
        "ttl/past",
        "ttl/past-log",
        "deleted",
        "rename/to",
        "batch/b",
        "doomed/0",
    ] {
        assert_eq!(get(&mut c, k.as_bytes()), None, "{k}");
    }
    // Expiries are absolute Unix milliseconds, kept as written: 2100-01-01T00:00:00Z.
    for k in ["ttl/future", "ttl/future-log", "idem/b"] {
        let at: i64 = redis::cmd("PEXPIRETIME").arg(k).query(&mut c).unwrap();
        assert_eq!(at, 4_102_444_800_000, "{k}");
    }
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("plain")
        .query(&mut c)
        .unwrap();
    assert_eq!(at, -1, "no expiry");
    // DBSIZE counts as Redis does, every key held: the two expired keys until active expiry
    // removes them (within about 100 ms of opening), never fewer than the 20 live ones.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!((20..=22).contains(&n), "{n} keys held");
        if n == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "active expiry left {n} keys"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(c);
    assert!(srv.sigterm().success());

    assert!(
        read_tree(&v1_fixture()) == fixture,
        "the committed fixture was changed"
    );
}
