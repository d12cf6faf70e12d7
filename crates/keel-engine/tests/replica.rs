//! What keel cluster needs of the engine: transactions decided at a given time reach the same
//! state and LSNs on every replica, and a snapshot file carries a replica's state, LSN included,
//! to a new database.

use bytes::Bytes;
use keel_engine::{
    create_from_snapshot, snapshot, Engine, Options, Outcome, PutIf, Ttl, Write, WriteResult,
};

fn opts() -> Options {
    Options {
        background: false,
        ..Options::small_for_tests()
    }
}

fn put(k: &str, v: &str, ttl: Ttl, only: PutIf) -> Write {
    Write::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ttl,
        only,
    }
}

/// The same transactions at the same times, applied at different wall-clock moments: a key
/// that expires at t = 1,000 is live for a decision at 999 and gone for one at 1,000, whatever
/// this machine's clock says.
fn apply(e: &Engine) -> Vec<Outcome> {
    let txns: Vec<(u64, Vec<Write>)> = vec![
        (500, vec![put("k", "a", Ttl::At(1_000), PutIf::Always)]),
        (999, vec![put("k", "b", Ttl::Keep, PutIf::Absent)]),
        (1_000, vec![put("k", "c", Ttl::None, PutIf::Absent)]),
        (
            1_001,
            vec![Write::Incr {
                key: "n".into(),
                by: 5,
            }],
        ),
    ];
    txns.into_iter()
        .map(|(at, w)| e.submit_at(None, at, vec![], w).unwrap().wait().unwrap())
        .collect()
}

#[test]
fn decisions_at_a_given_time_are_the_same_on_every_replica() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ea, _) = Engine::open(a.path(), opts()).unwrap();
    let (eb, _) = Engine::open(b.path(), opts()).unwrap();
    let oa = apply(&ea);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let ob = apply(&eb);
    assert_eq!(oa, ob);
    // The NX at 999 saw the live "a" and did nothing; the NX at 1,000 saw it expired.
    assert!(
        matches!(&oa[1], Outcome::Committed { results, .. } if results == &[WriteResult::Put(false)])
    );
    assert!(
        matches!(&oa[2], Outcome::Committed { results, .. } if results == &[WriteResult::Put(true)])
    );
    assert_eq!(ea.visible_lsn(), eb.visible_lsn());
    assert_eq!(ea.get(b"k").unwrap().value, "c");
}

#[test]
fn a_snapshot_file_becomes_a_database_that_continues_at_its_lsn() {
    let (src, dst, copy) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (e, _) = Engine::open(src.path(), opts()).unwrap();
    for i in 0..50 {
        e.put(format!("key{i}"), format!("value{i}")).unwrap();
    }
    let view = e.backup_view();
    assert_eq!(view.get(b"key7").unwrap().value, "value7");
    let report = view.write_database(dst.path().join("db"), &opts()).unwrap();
    assert_eq!(report.lsn, 50);
    let file = snapshot::snapshot_path(&dst.path().join("db"), report.lsn);

    let target = copy.path().join("db");
    assert_eq!(create_from_snapshot(&file, &target, &opts()).unwrap(), 50);
    let (c, _) = Engine::open(&target, opts()).unwrap();
    assert_eq!(c.visible_lsn(), 50);
    assert_eq!(c.get(b"key49").unwrap().value, "value49");
    assert_eq!(c.put("next", "x").unwrap(), 51);
    drop(c);

    // A damaged file is refused, and nothing is left that would open as a database.
    let bytes = std::fs::read(&file).unwrap();
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let bad_file = copy.path().join("bad.keel");
    std::fs::write(&bad_file, &bad).unwrap();
    let err = create_from_snapshot(&bad_file, copy.path().join("db2"), &opts()).unwrap_err();
    assert!(matches!(err, keel_engine::Error::BadFile { .. }), "{err}");
    assert!(!copy.path().join("db2").exists());
}
