//! P13: advice keel prints, followed, never makes things worse. For each kind of damage: start
//! `keel serve` on a damaged copy; if it refuses, run every `keel …` command its message names,
//! in order, then start it again. Every acknowledged write that a complete path could still
//! reach must then be served, and a database that still cannot open must be left as it was.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::{flip, small_engine, sorted};
use common::Server;
use keel_engine::Engine;
use keel_wal::format::{decode_frame, segment_seed, Decoded, SegmentHeader};

const KEYS: u64 = 2400;

/// Key `k{i}` is written by the record at LSN `i + 1` (one put per record, nothing else logged).
/// Checkpoints after 1000 and 2000 keys: two snapshots, 64 KiB segments. Returns the snapshot
/// LSNs.
fn build(db: &Path) -> Vec<u64> {
    let (e, _) = Engine::open(db, small_engine()).unwrap();
    let mut snaps = Vec::new();
    for i in 0..KEYS {
        assert_eq!(e.put(format!("k{i}"), "x".repeat(120)).unwrap(), i + 1);
        if i + 1 == 1000 || i + 1 == 2000 {
            snaps.push(e.checkpoint().unwrap());
        }
    }
    e.close().unwrap();
    snaps
}

/// Segment files with their first and last LSN (`u64::MAX` for the open one).
fn segments(db: &Path) -> Vec<(PathBuf, u64, u64)> {
    sorted(&db.join("wal"))
        .into_iter()
        .filter_map(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            let first = n.get(4..24)?.parse().ok()?;
            if n.ends_with(".sealed") {
                Some((p, first, n[25..45].parse().unwrap()))
            } else if n.ends_with(".open") {
                Some((p, first, u64::MAX))
            } else {
                None
            }
        })
        .collect()
}

/// Every file under `dir` with its bytes, to prove a step changed nothing.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for p in sorted(dir) {
        if p.is_dir() {
            m.extend(contents(&p));
        } else if p.file_name().unwrap() != "LOCK" {
            m.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    m
}

/// The `keel …` commands a message names, in backquotes, in order.
fn commands(msg: &str) -> Vec<Vec<String>> {
    msg.split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("keel "))
        .map(|c| c.split_whitespace().skip(1).map(String::from).collect())
        .collect()
}

/// Which keys `keel serve` returns, as their LSNs.
fn served(db: &Path) -> Vec<u64> {
    let srv = Server::start(db, &[]);
    let mut c = srv.client();
    let mut p = redis::pipe();
    for i in 0..KEYS {
        p.cmd("EXISTS").arg(format!("k{i}"));
    }
    let found: Vec<i64> = p.query(&mut c).unwrap();
    drop(c);
    assert!(srv.sigterm().success());
    (0..KEYS)
        .filter(|&i| found[i as usize] == 1)
        .map(|i| i + 1)
        .collect()
}

/// Starts the server; if it refuses, follows the advice and starts it again. Returns what it
/// served (empty if it still refuses) and the advice followed.
fn serve_following_advice(db: &Path) -> (Vec<u64>, Vec<String>) {
    let (status, log) = match Server::try_start(db, &[]) {
        Ok(srv) => {
            drop(srv);
            return (served(db), Vec::new());
        }
        Err(e) => e,
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", log.join("\n"));
    let refusal = log
        .iter()
        .find(|l| l.starts_with("error: keel refuses to start"))
        .unwrap_or_else(|| panic!("no refusal line: {}", log.join("\n")))
        .clone();
    let advice = commands(&refusal);
    assert!(!advice.is_empty(), "a refusal names a command: {refusal}");
    let mut followed = Vec::new();
    let mut queue = std::collections::VecDeque::from(advice);
    while let Some(args) = queue.pop_front() {
        let before = contents(db);
        let o = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(&args)
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        followed.push(format!(
            "keel {} -> {:?}: {out}",
            args.join(" "),
            o.status.code()
        ));
        if args[0] == "verify" || args.get(1).is_some_and(|a| a == "verify") {
            assert_eq!(contents(db), before, "verify changes nothing: {out}");
        }
        if !o.status.success() {
            // A refused step must leave everything as it was.
            assert_eq!(contents(db), before, "a refusal changes nothing: {out}");
        }
        // Advice printed by the step itself is followed too, each command once.
        for next in commands(&out) {
            let seen = |f: &String| f.starts_with(&format!("keel {} ->", next.join(" ")));
            if followed.len() < 8 && !followed.iter().any(seen) && !queue.contains(&next) {
                queue.push_back(next);
            }
        }
    }
    eprintln!("followed: {followed:#?}");
    match Server::try_start(db, &[]) {
        Ok(srv) => {
            drop(srv);
            (served(db), followed)
        }
        Err((status, log)) => {
            assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", log.join("\n"));
            (Vec::new(), followed)
        }
    }
}

/// Builds a database, damages it with `damage` (which returns the LSNs a complete path still
/// reaches, `None` if there is no complete path), follows the advice and checks that all of them are served.
fn case(name: &str, damage: impl FnOnce(&Path, &[u64]) -> Option<std::ops::RangeInclusive<u64>>) {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join(name);
    let snaps = build(&db);
    let reachable = damage(&db, &snaps);
    let before = contents(&db);
    let (got, followed) = serve_following_advice(&db);
    let Some(reachable) = reachable else {
        assert!(got.is_empty(), "{name}: {followed:#?}");
        // Nothing reachable is lost, and nothing was changed on the way.
        assert_eq!(contents(&db), before, "{name}: {followed:#?}");
        return;
    };
    let missing: Vec<u64> = reachable.filter(|l| !got.contains(l)).collect();
    assert!(
        missing.is_empty(),
        "{name}: {} reachable acknowledged writes lost (LSNs {:?}…) after following {followed:#?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn newest_snapshot_damaged() {
    case("snapshot", |db, _| {
        let s = sorted(&db.join("snapshots")).pop().unwrap();
        flip(&s, 60);
        Some(1..=KEYS)
    });
}

#[test]
fn manifest_damaged() {
    case("manifest", |db, _| {
        flip(&db.join("MANIFEST"), 10);
        Some(1..=KEYS)
    });
}

#[test]
fn a_segment_the_snapshot_covers_damaged() {
    case("covered", |db, snaps| {
        let (p, _, _) = segments(db)
            .into_iter()
            .find(|(_, first, last)| *first > 1 && *last < snaps[1])
            .expect("a sealed segment below the newest snapshot");
        flip(&p, 64 + 60);
        Some(1..=KEYS)
    });
}

#[test]
fn the_log_after_the_snapshot_damaged() {
    // A record after the newest snapshot, with intact records after it: the advice cuts the log
    // there. Everything before the damaged record is still reachable and must survive.
    case("after", |db, snaps| {
        let (p, first, _) = segments(db)
            .into_iter()
            .find(|(_, first, last)| *first > snaps[1] + 1 && *last != u64::MAX)
            .expect("a sealed segment after the newest snapshot");
        flip(&p, 64 + 60); // the payload of its first frame: LSN `first`
        Some(1..=first - 1)
    });
}

#[test]
fn both_snapshots_damaged_and_the_log_start_pruned() {
    case("nopath", |db, _| {
        for s in sorted(&db.join("snapshots")) {
            flip(&s, 60);
        }
        assert!(segments(db)[0].1 > 1, "the log no longer starts at LSN 1");
        // No complete path: nothing is reachable through keel, and nothing may change.
        None
    });
}

#[test]
fn damage_below_the_snapshot_inside_the_segment_it_needs() {
    // The segment holding the first LSN the snapshot needs is read from its start, so keel
    // refuses; the forced repair it advises restarts that segment at the needed LSN instead of
    // cutting, and nothing is lost.
    case("limit", |db, snaps| {
        let (p, first, _) = segments(db)
            .into_iter()
            .find(|(_, first, last)| *first <= snaps[1] && *last > snaps[1])
            .expect("the segment holding the newest snapshot's LSN + 1");
        assert!(first < snaps[1], "damage below the snapshot's LSN");
        flip(&p, 64 + 60);
        Some(1..=KEYS)
    });
}

#[test]
fn the_last_record_after_a_clean_close_damaged() {
    // Issue #17, item 1: the log was closed cleanly, so its last record was synced. Damage there
    // is not a torn tail to cut: keel refuses, and the advice keeps every record before it.
    case("closed", |db, _| {
        let (p, first, _) = segments(db)
            .into_iter()
            .rev()
            .find(|(_, first, _)| *first <= KEYS)
            .expect("the segment holding the last record");
        let bytes = std::fs::read(&p).unwrap();
        let seed = segment_seed(SegmentHeader::decode(&bytes).unwrap().segment_id);
        let (mut off, mut last) = (64, None);
        loop {
            match decode_frame(&bytes[off..], seed, 1 << 20) {
                Decoded::Frame(f) => {
                    last = Some((off, f.lsn));
                    off += f.total_bytes;
                }
                Decoded::Mark(m) => {
                    assert!(m.closed, "the log ends with a close mark");
                    break;
                }
                other => panic!("{p:?} at {off}: {other:?}"),
            }
        }
        let (at, lsn) = last.expect("a record in the last segment");
        assert!(lsn == KEYS && first <= lsn);
        flip(&p, at + 40); // its payload
        Some(1..=KEYS - 1)
    });
}

#[test]
fn the_active_segment_damaged_after_a_checkpoint_at_the_last_record() {
    // A checkpoint at the last LSN, then a clean close (an idle server's timed checkpoint, then
    // SIGTERM): the snapshot holds every record, so damage in the active segment costs nothing.
    // keel refuses, since the close mark proves the segment durable, and the forced repair it
    // advises restarts the log at the mark instead of refusing to cut below the snapshot.
    case("active", |db, _| {
        let (e, _) = Engine::open(db, small_engine()).unwrap();
        assert_eq!(e.checkpoint().unwrap(), KEYS);
        e.close().unwrap();
        let (p, first, _) = segments(db)
            .into_iter()
            .rev()
            .find(|(_, first, _)| *first <= KEYS)
            .expect("the segment holding the last record");
        assert!(first < KEYS, "the active segment holds records");
        flip(&p, 64 + 60);
        Some(1..=KEYS)
    });
}
