//! P13 against a real `keel serve` on a real disk: one damaged snapshot, MANIFEST or covered log
//! segment costs no acknowledged write; with no complete path, keel refuses and names the files,
//! the unreachable LSNs and `keel verify`, whose exit codes say which case it is. After a clean
//! shutdown, damage anywhere in the log is corruption, never a torn tail.

mod common;

use std::path::{Path, PathBuf};
use std::thread;

use common::files::{copy_dir, flip, keel, small_engine, sorted, text};
use common::{Server, DEADLINE};
use keel_engine::Engine;
use keel_wal::format::{decode_frame, segment_seed, Decoded, SegmentHeader};

fn snapshots(db: &Path) -> Vec<PathBuf> {
    sorted(&db.join("snapshots"))
}

/// Keys written, by prefix and count.
const ROUNDS: [(&str, usize); 4] = [("e", 600), ("a", 500), ("b", 500), ("c", 500)];

/// A database with two snapshots and writes around them, most of them through `keel serve`:
/// - round "e" through the engine with 64 KiB segments (so that sealed segments exist), then a
///   checkpoint;
/// - rounds "a", "b", "c" through the server, with SAVE after "a" and "b", then SIGTERM.
///
/// The second SAVE keeps the snapshot of the first and prunes the log below it, so the log no
/// longer starts at LSN 1.
fn populate(db: &Path) {
    {
        let (e, _) = Engine::open(db, small_engine()).unwrap();
        for i in 0..ROUNDS[0].1 {
            e.put(format!("e{i}"), "v".repeat(300)).unwrap();
        }
        e.checkpoint().unwrap();
        e.close().unwrap();
    }
    let srv = Server::start(db, &[]);
    let mut c = srv.client();
    for (n, (prefix, count)) in ROUNDS[1..].iter().enumerate() {
        let mut p = redis::pipe();
        for i in 0..*count {
            p.cmd("SET").arg(format!("{prefix}{i}")).arg(i).ignore();
        }
        let () = p.query(&mut c).unwrap();
        if n < 2 {
            let r: String = redis::cmd("SAVE").query(&mut c).unwrap();
            assert_eq!(r, "OK");
        }
    }
    drop(c);
    assert!(srv.sigterm().success());
    assert_eq!(snapshots(db).len(), 2, "{:?}", snapshots(db));
}

/// Starts the server on `db` and checks that every key of every round is there.
fn every_key_present(db: &Path) -> Server {
    let srv = Server::start(db, &[]);
    let mut c = srv.client();
    for (prefix, count) in ROUNDS {
        let mut p = redis::pipe();
        for i in 0..count {
            p.cmd("EXISTS").arg(format!("{prefix}{i}"));
        }
        let found: Vec<i64> = p.query(&mut c).unwrap();
        let missing: Vec<_> = found
            .iter()
            .enumerate()
            .filter(|(_, &f)| f != 1)
            .map(|(i, _)| format!("{prefix}{i}"))
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged keys lost, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            srv.log_text()
        );
    }
    srv
}

fn info_keel(srv: &Server) -> String {
    let mut c = srv.client();
    redis::cmd("INFO").arg("keel").query(&mut c).unwrap()
}

fn template() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("template");
    populate(&db);
    (tmp, db)
}

#[test]
fn a_damaged_newest_snapshot_or_manifest_loses_nothing_and_verify_says_so() {
    let (tmp, template) = template();
    let t = template.to_str().unwrap();
    let o = keel(&["verify", t]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("healthy"), "{}", text(&o));

    // (a) a flipped byte in the newest snapshot.
    let db = tmp.path().join("a");
    copy_dir(&template, &db);
    let newest = snapshots(&db).pop().unwrap();
    flip(&newest, 60);
    let o = keel(&["verify", db.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&newest.display().to_string()),
        "{}",
        text(&o)
    );
    let srv = every_key_present(&db);
    let info = info_keel(&srv);
    assert!(info.contains("recovery_damaged_files:1"), "{info}");
    assert!(info.contains("snap-"), "{info}");
    assert!(
        srv.log_text().contains("WARN") && srv.log_text().contains("damaged"),
        "{}",
        srv.log_text()
    );
    assert!(!newest.exists(), "moved aside");
    let aside = sorted(&db.join("damaged"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::metadata(&aside[0]).unwrap().len(),
        std::fs::metadata(template.join("snapshots").join(newest.file_name().unwrap()))
            .unwrap()
            .len(),
        "kept whole"
    );
    // New writes and a SAVE work; the next start is clean.
    let mut c = srv.client();
    let () = redis::cmd("SET")
        .arg("after")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let r: String = redis::cmd("SAVE").query(&mut c).unwrap();
    assert_eq!(r, "OK");
    drop(c);
    assert!(srv.sigterm().success());
    let srv = every_key_present(&db);
    assert!(info_keel(&srv).contains("recovery_damaged:none"));
    drop(srv);
    let o = keel(&["verify", db.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // (b) a flipped byte in the MANIFEST's version field (it once read as "unsupported
    // version 16711681").
    let db = tmp.path().join("b");
    copy_dir(&template, &db);
    flip(&db.join("MANIFEST"), 10);
    let o = keel(&["verify", db.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("checksum"), "{}", text(&o));
    assert!(!text(&o).contains("unsupported version"), "{}", text(&o));
    let srv = every_key_present(&db);
    let info = info_keel(&srv);
    assert!(info.contains("recovery_damaged_files:1"), "{info}");
    assert!(info.contains("MANIFEST"), "{info}");
    drop(srv);
    let aside = sorted(&db.join("damaged"));
    assert!(
        aside[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("MANIFEST."),
        "{aside:?}"
    );
}

#[test]
fn with_no_complete_path_keel_refuses_naming_files_range_and_command() {
    let (tmp, template) = template();
    // (d) both snapshots damaged, and the log no longer starts at LSN 1.
    let db = tmp.path().join("d");
    copy_dir(&template, &db);
    let snaps = snapshots(&db);
    for s in &snaps {
        flip(s, 60);
    }
    let (status, log) = match Server::try_start(&db, &[]) {
        Ok(_) => panic!("keel serve opened a database with no complete path"),
        Err(e) => e,
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{}", log.join("\n"));
    let log = log.join("\n");
    for s in &snaps {
        assert!(log.contains(&s.display().to_string()), "{log}");
    }
    assert!(log.contains("LSNs 1..="), "{log}");
    let command = format!("keel verify {}", db.display());
    assert!(log.contains(&command), "{log}");
    // Following the advice: it inspects, changes nothing, and exits 2.
    let o = keel(&["verify", db.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("NO complete path"), "{}", text(&o));
    assert_eq!(snapshots(&db), snaps);
    assert!(!db.join("damaged").exists());
}

#[test]
fn damage_in_a_log_segment_the_snapshot_covers_does_not_block_opening() {
    // Sealed segments need small segments: written through the engine, served by `keel serve`.
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let mut snaps = Vec::new();
    {
        let (e, _) = Engine::open(&db, small_engine()).unwrap();
        for (r, (prefix, count)) in ROUNDS.iter().enumerate() {
            for i in 0..*count {
                e.put(format!("{prefix}{i}"), "w".repeat(300)).unwrap();
            }
            if r == 1 || r == 2 {
                snaps.push(e.checkpoint().unwrap());
            }
        }
        e.close().unwrap();
    }
    let newest = snaps[1];
    let covered = sorted(&db.join("wal"))
        .into_iter()
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.ends_with(".sealed") && n[25..45].parse::<u64>().unwrap() < newest
        })
        .expect("a sealed segment the newest snapshot covers");
    // A payload byte of the segment's second frame.
    flip(&covered, 64 + 400);
    let wal = db.join("wal");
    let o = keel(&["wal", "verify", wal.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("does not block opening the database"),
        "{}",
        text(&o)
    );
    let o = keel(&["verify", db.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // The repair that once cut the log here and made the database unopenable now leaves the
    // covered damage alone.
    let o = keel(&["wal", "repair", "--force", wal.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!wal.join("quarantine").exists(), "{}", text(&o));
    let srv = every_key_present(&db);
    let info = info_keel(&srv);
    assert!(info.contains("recovery_damaged_files:1"), "{info}");
    assert!(covered.exists(), "the damaged segment stays for inspection");
    // It keeps serving writes and checkpoints.
    let mut c = srv.client();
    let () = redis::cmd("SET").arg("x").arg("1").query(&mut c).unwrap();
    let r: String = redis::cmd("SAVE").query(&mut c).unwrap();
    assert_eq!(r, "OK");
    drop(c);
    assert!(srv.sigterm().success());
    drop(every_key_present(&db));
}

#[test]
fn wal_verify_says_what_a_folder_is() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    {
        let (e, _) = Engine::open(&db, small_engine()).unwrap();
        e.put("k", "v").unwrap();
        e.close().unwrap();
    }
    let o = keel(&["wal", "verify", db.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("is a keel database, not a log"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("keel verify"), "{}", text(&o));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = keel(&["wal", "verify", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("not a keel log"), "{}", text(&o));
    let o = keel(&["verify", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = keel(&["wal", "verify", db.join("wal").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

const WRITERS: usize = 8;
const PER_WRITER: usize = 500;

/// The newest log segment of a database directory.
fn last_segment(data: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("wal-") && (n.ends_with(".open") || n.ends_with(".sealed"))
        })
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Offset of the first frame of the last group commit in `seg`: every frame one write carries
/// records the same durable LSN (what the sync before it covered), so the last group commit is
/// the run of frames at the end that share the last frame's durable LSN.
fn first_frame_of_last_group_commit(seg: &Path) -> (usize, usize, u64) {
    let bytes = std::fs::read(seg).unwrap();
    let seed = segment_seed(SegmentHeader::decode(&bytes).unwrap().segment_id);
    let mut off = 64;
    let mut frames = Vec::new();
    while let Decoded::Frame(f) = decode_frame(&bytes[off..], seed, 1 << 30) {
        frames.push((off, f.payload.len(), f.lsn, f.durable_lsn));
        off += f.total_bytes;
    }
    let &(_, _, _, last_durable) = frames.last().expect("frames in the last segment");
    let group: Vec<_> = frames
        .iter()
        .filter(|f| f.3 == last_durable)
        .copied()
        .collect();
    // Usually several frames; on a loaded machine the last SET can be synced alone, and damage
    // to that one frame must be refused just the same.
    let (offset, payload_len, lsn, _) = group[0];
    assert!(payload_len > 0);
    (offset, group.len(), lsn)
}

/// Issue #17, item 1: after a clean SIGTERM, a flipped byte in the last group commit was cut as
/// a torn tail and its acknowledged keys silently dropped. The log now ends with a close mark
/// that proves every frame durable, so keel refuses to start instead, and says where and what
/// to run.
#[test]
fn damage_in_the_last_group_commit_after_a_clean_shutdown_refuses_to_start() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = srv.url();
            thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let mut pipe = redis::pipe();
                for i in 0..PER_WRITER {
                    pipe.cmd("SET").arg(format!("k:{w}:{i}")).arg(i);
                }
                let replies: Vec<String> = pipe.query(&mut con).unwrap();
                assert_eq!(replies.len(), PER_WRITER);
                assert!(replies.iter().all(|r| r == "OK"), "{replies:?}");
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let log = srv.log.clone();
    let status = srv.sigterm();
    assert_eq!(status.code(), Some(0), "{:?}", log.lock().unwrap());
    // The log reader thread may still be collecting the last lines: poll for the one we need.
    let deadline = std::time::Instant::now() + DEADLINE;
    while !log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("shut down cleanly"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            log.lock().unwrap()
        );
        thread::sleep(std::time::Duration::from_millis(10));
    }

    let damaged_t = tempfile::tempdir().unwrap();
    let damaged = damaged_t.path().join("data");
    copy_dir(&dir, &damaged);
    let seg = last_segment(&damaged);
    let (offset, frames, lsn) = first_frame_of_last_group_commit(&seg);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset + 32] ^= 0x01; // the first payload byte
    std::fs::write(&seg, &bytes).unwrap();

    let Err((status, log)) = Server::try_start(&damaged, &[]) else {
        panic!(
            "keel started on a log whose last group commit ({frames} frames from LSN {lsn}) \
             is damaged"
        );
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log:?}");
    let text = log.join("\n");
    assert!(text.contains("refuses to start"), "{text}");
    assert!(
        text.contains(&seg.display().to_string()),
        "names the file: {text}"
    );
    assert!(
        text.contains(&format!("offset {offset}")),
        "names the offset {offset}: {text}"
    );
    assert!(
        text.contains("keel wal verify") && text.contains("keel wal repair"),
        "names the commands: {text}"
    );
    assert!(!text.contains("torn tail cut"), "{text}");

    // Undamaged, every acknowledged key is there, and the log says it was closed cleanly.
    let srv = Server::start(&dir, &[]);
    assert!(
        srv.log_text().contains("closed cleanly at LSN"),
        "{}",
        srv.log_text()
    );
    let mut con = srv.client();
    for w in 0..WRITERS {
        let keys: Vec<String> = (0..PER_WRITER).map(|i| format!("k:{w}:{i}")).collect();
        let values: Vec<Option<usize>> = redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, Some(i), "k:{w}:{i} lost");
        }
    }
}
