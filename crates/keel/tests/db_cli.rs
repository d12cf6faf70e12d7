//! `keel snapshot`, `keel backup` and `keel restore` on real directories.

use std::path::Path;
use std::process::{Command, Output};

use keel_engine::{Engine, Options};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn opts() -> Options {
    Options {
        background: false,
        ..Options::default()
    }
}

fn keys(dir: &Path) -> usize {
    let (e, _) = Engine::open(dir, opts()).unwrap();
    e.snapshot().count()
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
