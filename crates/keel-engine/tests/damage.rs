//! P13 on the real disk: one damaged file loses nothing while a complete path exists, and
//! `inspect` (keel verify) and `Engine::open` make the same choice.

use std::path::{Path, PathBuf};

use keel_engine::{inspect, Engine, Error, Health, Options};

fn small() -> Options {
    Options {
        background: false,
        ..Options::small_for_tests()
    }
}

fn names(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(r) => r.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    names(&dir.join("wal"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("wal-0")
        })
        .collect()
}

fn snaps(dir: &Path) -> Vec<PathBuf> {
    names(&dir.join("snapshots"))
}

fn flip(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 1;
    std::fs::write(p, &b).unwrap();
}

const ROUNDS: usize = 3;
const KEYS: usize = 150;

/// Three rounds of writes with a checkpoint after the first two: two snapshots, and the log
/// from the older one's LSN + 1 on. Returns the snapshot LSNs.
fn setup(dir: &Path) -> Vec<u64> {
    let (e, _) = Engine::open(dir, small()).unwrap();
    let mut lsns = Vec::new();
    for r in 0..ROUNDS {
        for i in 0..KEYS {
            e.put(format!("r{r}k{i}"), "v".repeat(400)).unwrap();
        }
        if r + 1 < ROUNDS {
            lsns.push(e.checkpoint().unwrap());
        }
    }
    e.close().unwrap();
    lsns
}

fn check_all(dir: &Path) -> keel_engine::RecoveryReport {
    let (e, report) = Engine::open(dir, small()).unwrap();
    for r in 0..ROUNDS {
        for i in 0..KEYS {
            assert!(
                e.get(format!("r{r}k{i}").as_bytes()).is_some(),
                "r{r}k{i} lost; {report}"
            );
        }
    }
    e.close().unwrap();
    report
}

#[test]
fn healthy_database_inspects_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = setup(dir.path());
    assert_eq!(snaps(dir.path()).len(), 2, "the previous snapshot is kept");
    let i = inspect(dir.path(), &small()).unwrap();
    assert_eq!(i.health, Health::Healthy, "{i}");
    assert_eq!(i.exit_code(), 0);
    assert_eq!(i.base, lsns[1]);
    assert!(
        i.log_first <= lsns[0] + 1,
        "the log after the previous snapshot is kept: {i}"
    );
}

#[test]
fn damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = setup(dir.path());
    let newest = snaps(dir.path()).pop().unwrap();
    flip(&newest, 200);
    let i = inspect(dir.path(), &small()).unwrap();
    assert_eq!(i.health, Health::Openable, "{i}");
    assert_eq!(i.exit_code(), 1);
    assert_eq!(i.base, lsns[0], "{i}");
    assert!(i.damaged_files().contains(&newest), "{i}");
    let report = check_all(dir.path());
    assert_eq!(report.snapshot_lsn, lsns[0], "{report}");
    assert_eq!(report.damaged.len(), 1);
    let moved = report.damaged[0].moved_to.clone().unwrap();
    assert!(moved.starts_with(dir.path().join("damaged")), "{moved:?}");
    assert!(
        moved.exists() && !newest.exists(),
        "moved aside, never deleted"
    );
    // The next open is clean, and a checkpoint works again.
    let report = check_all(dir.path());
    assert!(report.damaged.is_empty(), "{report}");
    assert_eq!(
        inspect(dir.path(), &small()).unwrap().health,
        Health::Healthy
    );
}

#[test]
fn damaged_manifest_falls_back_to_the_newest_valid_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = setup(dir.path());
    // The version field: once read as "unsupported version 16711681".
    flip(&dir.path().join("MANIFEST"), 10);
    let i = inspect(dir.path(), &small()).unwrap();
    assert_eq!(i.health, Health::Openable, "{i}");
    assert!(i.manifest.contains("checksum"), "{}", i.manifest);
    assert!(!i.manifest.contains("version"), "{}", i.manifest);
    let report = check_all(dir.path());
    assert_eq!(report.snapshot_lsn, lsns[1], "{report}");
    assert!(report.to_string().contains("MANIFEST"), "{report}");
    assert!(check_all(dir.path()).damaged.is_empty());
}

#[test]
fn damage_in_the_log_the_snapshot_covers_does_not_block_opening() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = setup(dir.path());
    // A sealed segment wholly below the newest snapshot.
    let segs = segments(dir.path());
    let covered: Vec<_> = segs
        .iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".sealed") && {
                let last: u64 = n[25..45].parse().unwrap();
                let first: u64 = n[4..24].parse().unwrap();
                first > 1 && last < lsns[1]
            }
        })
        .cloned()
        .collect();
    assert!(!covered.is_empty(), "{segs:?} {lsns:?}");
    flip(&covered[0], 64 + 40);
    let i = inspect(dir.path(), &small()).unwrap();
    assert_eq!(i.health, Health::Openable, "{i}");
    assert_eq!(i.log_unneeded_damage.len(), 1, "{i}");
    let report = check_all(dir.path());
    assert_eq!(report.wal.unneeded_damage.len(), 1, "{report}");
    assert!(
        covered[0].exists(),
        "the damaged segment stays for inspection"
    );
    // Restore needs the log only from its base: the latest point is restorable, and a point
    // that needs the damaged range fails closed, saying why.
    let r = keel_engine::restore(
        dir.path(),
        dir.path().join("restored"),
        keel_engine::RestoreTarget::Latest,
        &small(),
    )
    .unwrap();
    assert_eq!(r.unneeded_log_damage.len(), 1);
    check_all(&dir.path().join("restored"));
    let err = keel_engine::restore(
        dir.path(),
        dir.path().join("old"),
        keel_engine::RestoreTarget::Lsn(2),
        &small(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::NotRestorable(_)), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    // `keel wal repair --force` on the database's log must not cut below what the snapshot
    // needs: it leaves the covered damage alone.
    let r = keel_wal::repair_from(dir.path().join("wal"), small().wal, true, lsns[1] + 1).unwrap();
    assert!(r.forced_cuts.is_empty());
    check_all(dir.path());
    // Needing the log from the previous snapshot on (inside or after the damaged segment), a
    // forced repair still cuts nothing needed: it restarts the damaged segment at the needed
    // LSN (or leaves it alone), and every key stays.
    let r = keel_wal::repair_from(dir.path().join("wal"), small().wal, true, lsns[0] + 1).unwrap();
    assert!(
        r.forced_cuts.iter().all(|c| c.restarted_at.is_some()),
        "{:?}",
        r.forced_cuts
    );
    check_all(dir.path());
}

#[test]
fn no_complete_path_fails_closed_naming_files_range_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = setup(dir.path());
    let all = snaps(dir.path());
    for s in &all {
        flip(s, 200);
    }
    let i = inspect(dir.path(), &small()).unwrap();
    assert_eq!(i.exit_code(), 2, "{i}");
    assert_eq!(
        i.health,
        Health::Unreachable {
            from: 1,
            to: Some(i.log_first - 1)
        },
        "{i}"
    );
    let err = Engine::open(dir.path(), small()).err().unwrap();
    assert!(matches!(err, Error::NoCompletePath { .. }), "{err}");
    let msg = err.to_string();
    for s in &all {
        assert!(msg.contains(&s.display().to_string()), "{msg}");
    }
    assert!(msg.contains("keel verify"), "{msg}");
    assert!(
        msg.contains(&format!("LSNs 1..={}", i.log_first - 1)),
        "{msg}"
    );
    assert!(i.log_first > 1 && i.log_first <= lsns[0] + 1);
    // Refusing changed nothing.
    assert_eq!(snaps(dir.path()), all);
    assert!(!dir.path().join("damaged").exists());
}

#[test]
fn a_lost_manifest_falls_back_to_the_newest_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let lsns = setup(dir.path());
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    let i = inspect(dir.path(), &small()).unwrap();
    assert_eq!(
        (i.health.clone(), i.base),
        (Health::Openable, lsns[1]),
        "{i}"
    );
    let report = check_all(dir.path());
    assert_eq!(report.snapshot_lsn, lsns[1], "{report}");
    assert!(
        dir.path().join("MANIFEST").exists(),
        "a correct MANIFEST is written"
    );
    assert!(check_all(dir.path()).damaged.is_empty());
}
