//! keel-wal against the real disk: acknowledgement, recovery, corruption, poisoning, trimming.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::*;
use keel_wal::format::FrameError;
use keel_wal::{CorruptionKind, Error, LogReader, Options, SyncPolicy, TornReason, Wal};

fn small() -> Options {
    Options::small_for_tests()
}

#[test]
fn concurrent_writers_every_ack_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    {
        let (wal, report) = Wal::open(dir.path(), small()).unwrap();
        assert_eq!(report.records(), 0);
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let (wal, acked) = (&wal, acked.clone());
                s.spawn(move || {
                    for i in 0..150u64 {
                        let id = t * 1000 + i;
                        let len = ((id * 37) % 700) as usize;
                        if i % 10 == 0 {
                            let batch: Vec<Vec<u8>> =
                                (0..3).map(|k| payload(id * 10 + k, len)).collect();
                            let lsns = wal.append_batch(&batch).unwrap();
                            let mut a = acked.lock().unwrap();
                            for (lsn, p) in lsns.zip(batch) {
                                a.insert(lsn, p);
                            }
                        } else {
                            let p = payload(id, len);
                            let lsn = wal.append(&p).unwrap();
                            assert!(wal.durable_lsn() >= lsn, "acknowledged before durable");
                            acked.lock().unwrap().insert(lsn, p);
                        }
                    }
                });
            }
        });
        // The slowest sync is one of those counted.
        let slowest = wal.take_slowest_sync();
        let stats = wal.stats();
        assert!(stats.syncs > 0 && !slowest.is_zero(), "{stats:?}");
        assert!(
            slowest.as_nanos() <= u128::from(stats.sync_nanos),
            "{slowest:?}"
        );
        assert!(
            stats.segments_created > 0,
            "the workload should rotate: {stats:?}"
        );
        assert!(stats.syncs <= stats.appends);
        wal.close().unwrap();
    }
    let acked = acked.lock().unwrap();
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(report.records() as usize, acked.len());
    assert!(report.torn_tail.is_none());
    let read: BTreeMap<u64, Vec<u8>> = wal
        .read_from(1)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    assert_eq!(
        read, *acked,
        "every acknowledged record, identical bytes, nothing else"
    );
    assert_eq!(*read.keys().next().unwrap(), 1);
    assert_eq!(
        *read.keys().last().unwrap() as usize,
        read.len(),
        "LSNs are dense"
    );
}

/// A durable append is readable at once: once `wait_durable` (or `acked`, or `durable_lsn`)
/// says so, `readable_lsn` covers it and `read_from` finds it. The log once published a sync's
/// durability a moment before it listed the records as readable, and a reader woken by it
/// could find nothing (keel-cluster's raft log test caught it under load).
#[test]
fn a_durable_append_is_readable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let wal = &wal;
            s.spawn(move || {
                for i in 0..400u32 {
                    let record = [&[t][..], &i.to_le_bytes()].concat();
                    let lsn = *wal.submit(record.clone()).unwrap().lsns().start();
                    wal.wait_durable(lsn).unwrap();
                    assert!(
                        wal.readable_lsn() >= lsn,
                        "LSN {lsn} durable, readable only up to {}",
                        wal.readable_lsn()
                    );
                    let first = wal.read_from(lsn).unwrap().next();
                    assert_eq!(first.map(|r| r.unwrap().payload), Some(record));
                }
            });
        }
    });
}

#[test]
fn appends_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let (wal, report) = Wal::open(dir.path(), small()).unwrap();
        assert_eq!(report.last_lsn, round * 10);
        for i in 0..10 {
            assert_eq!(
                wal.append(&payload(round * 10 + i, 50)).unwrap(),
                round * 10 + i + 1
            );
        }
    }
    let all = read_all(dir.path(), &small());
    assert_eq!(all.len(), 30);
    for (i, (lsn, p)) in all.iter().enumerate() {
        assert_eq!((*lsn, p), (i as u64 + 1, &payload(i as u64, 50)));
    }
}

/// Names of the threads [`note_thread`] ran on.
static STARTED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_thread() {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    STARTED.lock().unwrap().push(name);
}

#[test]
fn thread_start_runs_on_every_thread_the_log_starts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        thread_start: Some(note_thread),
        ..small()
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    // 200 KB through 64 KiB segments: the log prepares the next segments on a helper thread.
    for i in 0..200 {
        wal.append(&payload(i, 1000)).unwrap();
    }
    assert!(wal.segments().len() > 2);
    wal.close().unwrap();
    let started = STARTED.lock().unwrap().clone();
    for name in ["keel-wal-io", "keel-wal-ack", "keel-wal-prep"] {
        assert!(
            started.iter().any(|s| s == name),
            "{name} did not run thread_start: {started:?}"
        );
    }
    assert!(
        started.iter().all(|s| s.starts_with("keel-wal-")),
        "thread_start ran on a thread that is not the log's: {started:?}"
    );
}

/// Writes `n` records of `len` bytes in separate appends (separate syncs), closes, and returns
/// the path of the segment holding them and the offset where the last record starts.
fn log_with_records(dir: &std::path::Path, n: u64, len: usize) -> (std::path::PathBuf, u64, u64) {
    let (wal, _) = Wal::open(dir, small()).unwrap();
    let mut last_start = 0;
    for i in 0..n {
        if i == n - 1 {
            last_start = wal.segments().last().unwrap().end_offset;
        }
        wal.append(&payload(i, len)).unwrap();
    }
    let end = wal.segments().last().unwrap().end_offset;
    wal.close().unwrap();
    (segment_files(dir).pop().unwrap(), last_start, end)
}

/// Zeros the mark after the last frame (at `end`), leaving what a crash leaves when the last
/// sync, or the mark written after it, never reached the disk.
fn drop_end_mark(seg: &std::path::Path, end: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
    f.write_all_at(&[0u8; keel_wal::format::MARK_BYTES], end)
        .unwrap();
}

#[test]
fn cut_inside_final_record_at_every_offset_is_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let (seg, start, end) = log_with_records(base.path(), 5, 100);
    // A crash state: the last record's sync never returned, so no mark follows it.
    drop_end_mark(&seg, end);
    let name = seg.file_name().unwrap().to_owned();
    for cut in start + 1..end {
        for zero_rest in [false, true] {
            if zero_rest && cut >= start + 32 + 100 {
                continue; // zeroing the padding changes nothing: the record is intact
            }
            let dir = tempfile::tempdir().unwrap();
            copy_dir(base.path(), dir.path());
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(&name))
                .unwrap();
            if zero_rest {
                // A preallocated file: the record's tail reads as zeros.
                use std::os::unix::fs::FileExt;
                f.write_all_at(&vec![0u8; (end - cut) as usize], cut)
                    .unwrap();
            } else {
                f.set_len(cut).unwrap();
            }
            drop(f);
            let (wal, report) =
                Wal::open(dir.path(), small()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let torn = report
                .torn_tail
                .as_ref()
                .unwrap_or_else(|| panic!("cut at {cut}: no torn tail reported"));
            assert_eq!(torn.offset, start, "cut at {cut}");
            assert!(
                torn.side_file.as_ref().is_some_and(|p| p.exists()),
                "cut bytes kept"
            );
            assert_eq!(report.last_lsn, 4, "cut at {cut}");
            let got: Vec<_> = wal
                .read_from(1)
                .unwrap()
                .map(|r| r.unwrap().payload)
                .collect();
            assert_eq!(got, (0..4).map(|i| payload(i, 100)).collect::<Vec<_>>());
            // Recovery is idempotent, and appending continues from the cut.
            drop(wal);
            let (wal, again) = Wal::open(dir.path(), small()).unwrap();
            assert!(
                again.torn_tail.is_none(),
                "second recovery changed something at cut {cut}"
            );
            assert_eq!(wal.append(b"next").unwrap(), 5);
        }
    }
}

#[test]
fn flipped_byte_in_early_record_fails_closed_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _, _) = log_with_records(dir.path(), 10, 64);
    // Record 2 starts at 64 + frame(64 bytes) = 64 + 96.
    let offset = 64 + 96 + 40;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[offset] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let before = std::fs::read(&seg).unwrap();

    let err = Wal::open(dir.path(), small()).unwrap_err();
    let c = err
        .corruption()
        .unwrap_or_else(|| panic!("not a corruption: {err}"));
    assert_eq!(c.file, seg);
    assert_eq!(c.offset, 64 + 96);
    assert_eq!(c.last_good_lsn, Some(1));
    assert!(
        matches!(
            c.kind,
            CorruptionKind::Frame(FrameError::PayloadChecksum { .. })
        ),
        "{:?}",
        c.kind
    );
    assert!(c.valid_frame_after.is_some());
    let msg = err.to_string();
    assert!(
        msg.contains("keel wal verify") && msg.contains(&seg.display().to_string()),
        "{msg}"
    );
    // The read-only check says the same, and failing closed touched nothing.
    let same = LogReader::open(dir.path(), &small()).unwrap_err();
    assert_eq!(same.corruption(), Some(c));
    assert_eq!(std::fs::read(&seg).unwrap(), before);
}

#[test]
fn bad_frame_inside_one_synced_batch_followed_by_a_later_sync_is_corruption() {
    // The first batch was synced; a later append records that in its durable_lsn. Damage to
    // the first batch must then be corruption, not a torn tail.
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        wal.append_batch(&[payload(0, 50), payload(1, 50), payload(2, 50)])
            .unwrap();
        wal.append(&payload(3, 50)).unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[64 + 33] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    assert_eq!(
        err.corruption().unwrap().valid_frame_after.map(|v| v.1),
        Some(4)
    );
}

#[test]
fn missing_middle_segment_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for i in 0..400 {
            wal.append(&payload(i, 500)).unwrap();
        }
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    let c = err.corruption().unwrap();
    assert_eq!(c.file, segs[2]);
    assert!(
        matches!(
            c.kind,
            CorruptionKind::SegmentIdGap { .. } | CorruptionKind::LsnGap { .. }
        ),
        "{:?}",
        c.kind
    );
}

#[test]
fn unknown_format_version_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _, _) = log_with_records(dir.path(), 3, 10);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8] = 3;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    let c = err.corruption().unwrap();
    assert_eq!((c.offset, c.file.clone()), (0, seg));
    assert_eq!(
        c.kind,
        CorruptionKind::SegmentHeader(keel_wal::format::HeaderError::UnsupportedVersion {
            found: 3
        })
    );
    assert!(err.to_string().contains("unsupported format version 3"));
}

#[test]
fn eio_on_sync_poisons_and_reopen_recovers_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let opts = ffs.options(small());
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push((wal.append(&payload(i, 80)).unwrap(), payload(i, 80)));
    }
    ffs.faults.fail_nth_sync(1);
    let err = wal.append(b"doomed").unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{err}");
    assert!(
        err.root().to_string().contains("Input/output error"),
        "{err}"
    );
    // Nothing is acknowledged any more, even though the next sync would succeed.
    ffs.faults.fail_nth_sync(0);
    for _ in 0..3 {
        assert!(matches!(
            wal.append(b"after").unwrap_err(),
            Error::Poisoned(_)
        ));
    }
    assert!(matches!(wal.sync().unwrap_err(), Error::Poisoned(_)));
    assert!(matches!(wal.close().unwrap_err(), Error::Poisoned(_)));
    let got = read_all(dir.path(), &small());
    assert!(got.len() >= acked.len());
    assert_eq!(&got[..acked.len()], &acked[..]);
}

/// Segments are zero-filled past the page cache, so the log's writes run to the end of a page:
/// a write that stopped inside a page the cache does not hold would make the kernel read that
/// page from the disk before each later write into it.
#[test]
fn every_write_of_the_log_runs_to_the_end_of_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let opts = ffs.options(small());
    let segment = opts.segment_bytes_max;
    *ffs.faults.writes.lock().unwrap() = Some(Vec::new());
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    let mut acked = Vec::new();
    // Odd sizes, across several segments (64 KiB each), and one record per batch.
    for i in 0..400 {
        let p = payload(i, 37 + (i as usize * 13) % 700);
        acked.push((wal.append(&p).unwrap(), p));
    }
    wal.close().unwrap();
    let writes = ffs.faults.writes.lock().unwrap().take().unwrap();
    assert!(writes.len() > 400, "{} writes", writes.len());
    for (offset, len) in writes {
        let end = offset + len as u64;
        assert!(
            end.is_multiple_of(4096) || end == segment,
            "a write of {len} bytes at {offset} stops inside a page"
        );
    }
    assert_eq!(read_all(dir.path(), &opts), acked);
}

/// Whether every thread of this process named `name` is asleep (state `S` in /proc).
fn all_asleep(name: &str, count: usize) -> bool {
    let mut asleep = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
        // "tid (comm) state ...": the name is between the first '(' and the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] == name {
            if stat[close + 1..].trim_start().starts_with('S') {
                asleep += 1;
            } else {
                return false;
            }
        }
    }
    asleep == count
}

#[test]
fn the_ack_hook_runs_before_a_batch_of_blocked_writers_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let (wal, _) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let h = hooked.clone();
    assert!(wal.on_acks(move |lsn| h.lock().unwrap().push(lsn)));
    assert!(!wal.on_acks(|_| {}), "only the first hook is set");
    wal.append(b"first").unwrap();
    // Hold the next sync, so that the writers below all queue behind it and block.
    ffs.faults.close_gate();
    let held = wal.submit(b"held".to_vec()).unwrap();
    while ffs.faults.syncs_blocked.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    const WRITERS: usize = 16;
    let lsns = std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS as u64)
            .map(|i| {
                let (wal, hooked) = (&wal, &hooked);
                std::thread::Builder::new()
                    .name("hooked-writer".into())
                    .spawn_scoped(s, move || {
                        let lsn = wal.append(&payload(i, 10)).unwrap();
                        // Woken only after the hook ran for its batch.
                        let seen = hooked.lock().unwrap().iter().max().copied();
                        assert!(seen >= Some(lsn), "woken before the hook: {seen:?} < {lsn}");
                        lsn
                    })
                    .unwrap()
            })
            .collect();
        while !all_asleep("hooked-writer", WRITERS) {
            std::thread::yield_now();
        }
        // Every writer is blocked in its append (the queue's lock is free: the I/O thread is
        // in its sync). Let the sync finish.
        ffs.faults.open_gate();
        assert_eq!(held.wait().unwrap(), 2..=2);
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    let hooked = hooked.lock().unwrap();
    assert_eq!(hooked.iter().max(), lsns.iter().max(), "{hooked:?}");
    assert!(
        hooked.iter().all(|l| *l <= wal.durable_lsn()),
        "only acknowledged LSNs: {hooked:?}"
    );
}

#[test]
fn waiters_in_the_failing_batch_all_get_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let (wal, _) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    wal.append(b"first").unwrap();
    // Hold the next sync so that many appends pile up behind it, then fail the one after.
    ffs.faults.close_gate();
    let t1 = wal.submit(b"a".to_vec()).unwrap();
    while ffs.faults.syncs_blocked.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    ffs.faults.fail_nth_sync(2);
    let tickets: Vec<_> = (0..20)
        .map(|i| wal.submit(payload(i, 10)).unwrap())
        .collect();
    ffs.faults.open_gate();
    assert!(t1.wait().is_ok(), "its sync succeeded");
    for t in tickets {
        assert!(matches!(t.wait().unwrap_err(), Error::Poisoned(_)));
    }
}

#[test]
fn full_disk_gives_a_clear_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let (wal, _) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    let mut acked = Vec::new();
    ffs.faults.limit_growth(150_000);
    let err = loop {
        let i = acked.len() as u64;
        match wal.append(&payload(i, 900)) {
            Ok(lsn) => acked.push((lsn, payload(i, 900))),
            Err(e) => break e,
        }
    };
    let root = err.root();
    assert!(matches!(root, Error::Io { .. }), "{err}");
    assert!(
        root.to_string().contains("No space left on device"),
        "{err}"
    );
    assert!(!acked.is_empty());
    drop(wal);
    // Still full: opening needs no free space and reads everything.
    let (wal, report) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    assert_eq!(report.records() as usize, acked.len(), "{report}");
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(
        report.removed_temp_files.len(),
        0,
        "the first reopen already removed it"
    );
    let got: Vec<_> = wal
        .read_from(1)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    assert_eq!(got, acked);
    assert_eq!(wal.append(b"more").unwrap(), acked.len() as u64 + 1);
}

#[test]
fn short_write_then_error_poisons_and_the_partial_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let (wal, _) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push((wal.append(&payload(i, 300)).unwrap(), payload(i, 300)));
    }
    ffs.faults.limit_writes(100); // the next write is cut short, then fails
    assert!(matches!(
        wal.append(&payload(10, 300)),
        Err(Error::Poisoned(_))
    ));
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    let torn = report.torn_tail.as_ref().expect("the partial frame is cut");
    assert_eq!(torn.bytes_cut, 104);
    let got: Vec<_> = wal
        .read_from(1)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    assert_eq!(got, acked);
}

#[test]
fn rotation_prune_and_truncate_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small;
    let (wal, _) = Wal::open(dir.path(), opts()).unwrap();
    for i in 0..500 {
        wal.append(&payload(i, 400)).unwrap();
    }
    let segs = wal.segments();
    assert!(segs.len() >= 3);
    let keep_from = segs[2].first_lsn;
    let removed = wal.prune_before(keep_from).unwrap();
    assert_eq!(removed, 2);
    assert_eq!(wal.first_lsn(), keep_from);
    let cut = wal.last_lsn() - 50;
    assert!(cut > keep_from);
    wal.truncate_after(cut).unwrap();
    assert_eq!(wal.last_lsn(), cut);
    assert_eq!(wal.append(b"after-truncate").unwrap(), cut + 1);
    // Truncate into an earlier, sealed segment: it becomes the active one again.
    let target = wal.segments()[0].first_lsn + 3;
    wal.truncate_after(target).unwrap();
    assert_eq!(wal.segments().len(), 1);
    assert_eq!(wal.append(b"x").unwrap(), target + 1);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts()).unwrap();
    assert!(report.torn_tail.is_none());
    assert_eq!((report.first_lsn, report.last_lsn), (keep_from, target + 1));
    let got: Vec<_> = wal
        .read_from(keep_from)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got.len() as u64, target + 2 - keep_from);
    for r in &got[..got.len() - 1] {
        assert_eq!(r.payload, payload(r.lsn - 1, 400));
    }
    assert_eq!(got.last().unwrap().payload, b"x");
    assert!(matches!(wal.read_from(1), Err(Error::LsnOutOfRange { .. })));
    assert!(matches!(
        wal.truncate_after(keep_from - 5),
        Err(Error::LsnOutOfRange { .. })
    ));
}

#[test]
fn truncate_refuses_to_split_a_batch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    wal.append_batch(&[b"a", b"b", b"c"]).unwrap();
    assert!(matches!(
        wal.truncate_after(2),
        Err(Error::InsideBatch { lsn: 2 })
    ));
    assert_eq!(wal.append(b"d").unwrap(), 4);
    wal.truncate_after(0).unwrap();
    assert_eq!(wal.append(b"e").unwrap(), 1);
    drop(wal);
    assert_eq!(read_all(dir.path(), &small()), vec![(1, b"e".to_vec())]);
}

#[test]
fn async_appends_and_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let opts = Options {
        queue_bytes_max: 4096,
        ..ffs.options(small())
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(block_on(wal.append_async(b"one".to_vec())).unwrap(), 1..=1);
    ffs.faults.close_gate();
    let held = wal.submit(b"held".to_vec()).unwrap();
    while ffs.faults.syncs_blocked.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    // Fill the queue while the I/O thread is stuck in its sync.
    let queued = wal.submit(vec![1u8; 3000]).unwrap();
    let mut fut = std::pin::pin!(wal.append_async(vec![2u8; 3000]));
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(
        fut.as_mut().poll(&mut cx).is_pending(),
        "a full queue must push back"
    );
    // Async callers of the blocking appends wait for room the same way; a small record fits.
    let mut room = std::pin::pin!(wal.room(3000));
    assert!(room.as_mut().poll(&mut cx).is_pending(), "no room yet");
    assert!(std::pin::pin!(wal.room(10)).poll(&mut cx).is_ready());
    ffs.faults.open_gate();
    block_on(room);
    assert_eq!(held.wait().unwrap(), 2..=2);
    assert_eq!(queued.wait().unwrap(), 3..=3);
    assert_eq!(block_on(fut).unwrap(), 4..=4);
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    let max = small().record_bytes_max as usize;
    assert!(matches!(
        wal.append(&vec![0; max + 1]),
        Err(Error::RecordTooLarge { .. })
    ));
    assert!(matches!(
        wal.append_batch::<&[u8]>(&[]),
        Err(Error::EmptyBatch)
    ));
    let big: Vec<Vec<u8>> = (0..4).map(|_| vec![0; max]).collect();
    assert!(matches!(
        wal.append_batch(&big),
        Err(Error::BatchTooLarge { .. })
    ));
    assert_eq!(wal.append(&vec![7; max]).unwrap(), 1);
    let bad = Options {
        segment_bytes_max: 1000,
        ..small()
    };
    assert!(matches!(
        Wal::open(dir.path().join("x"), bad),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(dir.path(), small()).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn a_poisoned_log_halted_through_a_shared_handle_reopens_in_the_same_process() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let (wal, _) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    let wal = Arc::new(wal);
    let other = wal.clone(); // a handle someone else still holds
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push((wal.append(&payload(i, 100)).unwrap(), payload(i, 100)));
    }
    assert!(wal.poisoned().is_none());
    ffs.faults.fail_nth_sync(1);
    assert!(matches!(
        wal.append(b"doomed").unwrap_err(),
        Error::Poisoned(_)
    ));
    let first = wal.poisoned().expect("the log says it is poisoned");
    assert!(first.to_string().contains("Input/output error"), "{first}");
    // Still locked while the poisoned log is open, even though it writes nothing more.
    assert!(matches!(
        Wal::open(dir.path(), small()),
        Err(Error::Locked { .. })
    ));
    // Halted through a shared handle: the lock is free, appends fail, reads go on.
    assert!(matches!(other.halt().unwrap_err(), Error::Poisoned(_)));
    assert!(
        matches!(other.halt().unwrap_err(), Error::Poisoned(_)),
        "twice"
    );
    assert!(matches!(
        wal.append(b"after").unwrap_err(),
        Error::Poisoned(_)
    ));
    let read: Vec<_> = wal
        .read_from(1)
        .unwrap()
        .take(acked.len())
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    assert_eq!(read, acked);
    let (again, _) = Wal::open(dir.path(), small()).unwrap();
    let got: Vec<_> = again
        .read_from(1)
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect();
    assert!(got.len() >= acked.len(), "the doomed record may be there");
    assert_eq!(&got[..acked.len()], &acked[..]);
    assert_eq!(again.append(b"more").unwrap(), got.len() as u64 + 1);
    drop((wal, other));
}

#[test]
fn a_halted_log_that_was_healthy_says_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    let lsn = wal.append(b"kept").unwrap();
    wal.halt().unwrap();
    assert!(matches!(wal.append(b"late").unwrap_err(), Error::Closed));
    let (again, _) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(again.last_lsn(), lsn);
}

#[test]
fn weaker_policies_acknowledge_before_sync_and_close_syncs() {
    for policy in [
        SyncPolicy::Never,
        SyncPolicy::Interval(std::time::Duration::from_millis(20)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            sync_policy: policy,
            ..small()
        };
        let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        for i in 0..50 {
            wal.append(&payload(i, 30)).unwrap();
        }
        assert_eq!(wal.last_lsn(), 50);
        wal.wait_durable(if policy == SyncPolicy::Never { 0 } else { 50 })
            .unwrap();
        assert!(wal.stats().syncs < 50, "{policy:?}: {:?}", wal.stats());
        assert_eq!(wal.sync().unwrap(), 50);
        assert_eq!(wal.durable_lsn(), 50);
        wal.close().unwrap();
        assert_eq!(read_all(dir.path(), &opts).len(), 50);
    }
}

#[test]
fn unsynced_debris_after_the_tail_is_a_torn_tail_not_corruption() {
    // Frames that a crash kept out of order (a later unsynced frame present, an earlier one
    // missing) carry durable_lsn below the cut, so recovery cuts them.
    let dir = tempfile::tempdir().unwrap();
    let (seg, start, end) = log_with_records(dir.path(), 6, 40);
    drop_end_mark(&seg, end); // a crash, not a clean close
                              // Make record 5 (the second-to-last) vanish: zeros, with record 6 still intact after it.
    let rec5 = start - keel_wal::format::frame_bytes(40) as u64;
    let mut bytes = std::fs::read(&seg).unwrap();
    // Record 6 was written after record 5 was synced, so it proves record 5 durable: corruption.
    let mut b2 = bytes.clone();
    b2[rec5 as usize..start as usize].fill(0);
    std::fs::write(&seg, &b2).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    assert_eq!(err.corruption().unwrap().kind, CorruptionKind::Hole);
    // Now forge the unsynced case: record 6 claims nothing was durable past LSN 4.
    bytes[rec5 as usize..start as usize].fill(0);
    rewrite_durable_lsn(&mut bytes, start as usize, 4);
    std::fs::write(&seg, &bytes).unwrap();
    let (_wal, report) = Wal::open(dir.path(), small()).unwrap();
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.offset, torn.valid_frames_cut), (rec5, 1));
    assert_eq!(torn.reason, TornReason::StrayBytes);
    assert_eq!(report.last_lsn, 4);
}

/// Re-encodes the frame at `off` with a different durable_lsn (test forgery of a crash state).
fn rewrite_durable_lsn(bytes: &mut [u8], off: usize, durable: u64) {
    let header = keel_wal::format::SegmentHeader::decode(bytes).unwrap();
    let seed = keel_wal::format::segment_seed(header.segment_id);
    let f = match keel_wal::format::decode_frame(&bytes[off..], seed, 1 << 20) {
        keel_wal::format::Decoded::Frame(f) => (f.lsn, f.flags, f.payload.to_vec()),
        other => panic!("{other:?}"),
    };
    let mut out = Vec::new();
    keel_wal::format::encode_frame(&mut out, seed, f.0, durable, f.1, &f.2);
    bytes[off..off + out.len()].copy_from_slice(&out);
}

#[test]
fn leftover_temporary_segments_are_removed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for i in 0..300 {
            wal.append(&payload(i, 400)).unwrap(); // several rotations, each with a spare
        }
    }
    let tmps = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count()
    };
    assert_eq!(
        tmps(dir.path()),
        0,
        "a clean close leaves no temporary files"
    );
    // What a crash can leave: a spare being prepared, a segment being created.
    std::fs::write(
        dir.path().join("wal-spare-00000000000000000042.tmp"),
        vec![0u8; 4096],
    )
    .unwrap();
    std::fs::write(
        dir.path().join("wal-00000000000000099999.tmp"),
        b"KEELWAL\0garbage",
    )
    .unwrap();
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(report.removed_temp_files.len(), 2, "{report}");
    assert_eq!(tmps(dir.path()), 0);
    assert_eq!(report.last_lsn, 300);
    assert_eq!(wal.read_from(1).unwrap().count(), 300);
}

/// Found by the `segment_recovery` fuzz target (input `0a`): a header-only segment with the sealed
/// name `wal-1-0.sealed` passed verification, and the first open then created `wal-1.open` beside
/// it, so that no later open succeeded. A sealed name with an empty range must fail closed.
#[test]
fn regression_fuzz_empty_sealed_segment_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let header = keel_wal::format::SegmentHeader {
        segment_id: 1,
        first_lsn: 1,
        created_unix_ms: 0,
        encrypted: false,
    };
    let name = "wal-00000000000000000001-00000000000000000000.sealed";
    std::fs::write(dir.path().join(name), header.encode()).unwrap();
    let c = LogReader::open(dir.path(), &small())
        .unwrap_err()
        .corruption()
        .cloned()
        .unwrap();
    assert_eq!(c.kind, CorruptionKind::BadSealedRange { first: 1, last: 0 });
    assert!(Wal::open(dir.path(), small()).is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !names.iter().any(|n| n.to_string_lossy().ends_with(".open")),
        "failing closed created nothing: {names:?}"
    );
}

/// Offsets of the frames of the last batch in a segment: walks the frames with the public decoder.
fn frames_of(bytes: &[u8]) -> Vec<(usize, keel_wal::format::Frame<'_>)> {
    use keel_wal::format::{decode_frame, segment_seed, Decoded, SegmentHeader};
    let seed = segment_seed(SegmentHeader::decode(bytes).unwrap().segment_id);
    let mut off = 64;
    let mut out = Vec::new();
    while let Decoded::Frame(f) = decode_frame(&bytes[off..], seed, 1 << 20) {
        out.push((off, f));
        off += f.total_bytes;
    }
    out
}

/// Where the last batch of the last segment starts (the frame after the last frame without
/// BATCH_CONTINUES that is not itself the last one).
fn last_batch_start(seg: &std::path::Path) -> usize {
    let bytes = std::fs::read(seg).unwrap();
    let frames = frames_of(&bytes);
    let n = frames.len();
    assert!(n > 0);
    let mut start = frames[0].0;
    for (i, (_, f)) in frames.iter().enumerate().take(n - 1) {
        if !f.batch_continues() {
            start = frames[i + 1].0;
        }
    }
    start
}

fn flip(seg: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(seg).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(seg, &bytes).unwrap();
}

/// Issue #17, item 1: after a clean close the whole log is durable, so damage in the last batch
/// is corruption, not a torn tail.
#[test]
fn damage_in_the_last_batch_after_a_clean_close_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for i in 0..5 {
            wal.append(&payload(i, 60)).unwrap();
        }
        let batch: Vec<Vec<u8>> = (5..9).map(|i| payload(i, 60)).collect();
        wal.append_batch(&batch).unwrap();
        wal.close().unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let start = last_batch_start(&seg);
    flip(&seg, start + 32 + 3); // a payload byte of the batch's first frame
    let before = std::fs::read(&seg).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    let c = err
        .corruption()
        .unwrap_or_else(|| panic!("not a corruption: {err}"));
    assert_eq!((c.file.clone(), c.offset), (seg.clone(), start as u64));
    assert_eq!(c.last_good_lsn, Some(5));
    assert!(
        matches!(
            c.kind,
            CorruptionKind::Frame(FrameError::PayloadChecksum { .. })
        ),
        "{:?}",
        c.kind
    );
    assert!(err.to_string().contains("keel wal repair"), "{err}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "failing closed changed nothing"
    );
    let same = LogReader::open(dir.path(), &small()).unwrap_err();
    assert_eq!(same.corruption(), Some(c));
}

/// The mark at `off` in `seg`, if one is there.
fn mark_at(seg: &std::path::Path, off: u64) -> Option<keel_wal::format::Mark> {
    use keel_wal::format::{decode_frame, segment_seed, Decoded, SegmentHeader};
    let bytes = std::fs::read(seg).unwrap();
    let seed = segment_seed(SegmentHeader::decode(&bytes).unwrap().segment_id);
    match decode_frame(bytes.get(off as usize..)?, seed, 1 << 20) {
        Decoded::Mark(m) => Some(m),
        _ => None,
    }
}

#[test]
fn without_a_mark_damage_in_the_last_batch_is_still_a_torn_tail() {
    // What a crash leaves when the batch's sync had not returned (or its mark was lost): the
    // documented ambiguity. The valid frames cut are counted and kept in a side file.
    let dir = tempfile::tempdir().unwrap();
    let (seg, _, end) = {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for i in 0..5 {
            wal.append(&payload(i, 60)).unwrap();
        }
        let batch: Vec<Vec<u8>> = (5..9).map(|i| payload(i, 60)).collect();
        wal.append_batch(&batch).unwrap();
        let end = wal.segments().last().unwrap().end_offset;
        wal.close().unwrap();
        (segment_files(dir.path()).pop().unwrap(), 0, end)
    };
    let m = mark_at(&seg, end).expect("a clean close leaves a mark");
    assert!(m.closed && m.lsn == 10 && m.durable_lsn == 9, "{m:?}");
    drop_end_mark(&seg, end);
    let start = last_batch_start(&seg);
    flip(&seg, start + 32 + 3);
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    let torn = report.torn_tail.as_ref().unwrap();
    assert_eq!((torn.offset, torn.valid_frames_cut), (start as u64, 3));
    assert_eq!(report.last_lsn, 5);
    assert!(report.end_mark.is_none());
    assert!(
        report.to_string().contains("not closed cleanly"),
        "{report}"
    );
    assert_eq!(wal.append(b"next").unwrap(), 6);
}

#[test]
fn a_mark_after_an_idle_sync_proves_the_batch_durable_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    for i in 0..3 {
        wal.append(&payload(i, 60)).unwrap();
    }
    let batch: Vec<Vec<u8>> = (3..7).map(|i| payload(i, 60)).collect();
    wal.append_batch(&batch).unwrap();
    // The mark is written before the append is acknowledged: it is there now.
    let end = wal.segments().last().unwrap().end_offset;
    let seg = segment_files(dir.path()).pop().unwrap();
    let m = mark_at(&seg, end).expect("an idle sync leaves a mark");
    assert_eq!((m.lsn, m.durable_lsn, m.closed), (8, 7, false));
    assert!(wal.stats().marks >= 4, "{:?}", wal.stats());
    // A crash now: the files as they are, the log never closed.
    copy_dir(dir.path(), crashed.path());
    drop(wal);
    let copy = crashed.path().join(seg.file_name().unwrap());
    let start = last_batch_start(&copy);
    flip(&copy, start + 32 + 3);
    let err = Wal::open(crashed.path(), small()).unwrap_err();
    let c = err.corruption().unwrap_or_else(|| panic!("{err}"));
    assert_eq!((c.offset, c.last_good_lsn), (start as u64, Some(3)));
    assert_eq!(c.valid_frame_after, Some((end, 8)), "the mark is the proof");
    // Undamaged, the crashed copy opens as durable but not cleanly closed.
    flip(&copy, start + 32 + 3);
    let (wal, report) = Wal::open(crashed.path(), small()).unwrap();
    assert!(report.torn_tail.is_none());
    assert_eq!(report.last_lsn, 7);
    let em = report.end_mark.unwrap();
    assert!(!em.closed && em.durable_lsn == 7, "{em:?}");
    assert!(
        report
            .to_string()
            .contains("not closed cleanly, but a mark proves"),
        "{report}"
    );
    assert_eq!(wal.append(b"next").unwrap(), 8);
}

#[test]
fn a_torn_write_over_a_mark_is_cut_after_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, _, end) = log_with_records(dir.path(), 4, 50);
    assert!(mark_at(&seg, end).unwrap().closed);
    // The next batch was being written over the mark when the power failed: its first sector
    // never arrived, later bytes did. They never were acknowledged.
    let mut bytes = std::fs::read(&seg).unwrap();
    let debris = end as usize + keel_wal::format::MARK_BYTES;
    bytes[debris..debris + 100].fill(0x5A);
    std::fs::write(&seg, &bytes).unwrap();
    let r = LogReader::open(dir.path(), &small()).unwrap();
    let t = r.torn_tail().unwrap();
    assert_eq!(t.offset, debris as u64, "the mark stays");
    assert_eq!(r.end_mark().map(|m| m.offset), Some(end));
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(report.torn_tail.as_ref().unwrap().valid_frames_cut, 0);
    assert!(
        report.to_string().contains("closed cleanly at LSN 4"),
        "{report}"
    );
    assert_eq!(wal.append(b"five").unwrap(), 5);
    wal.close().unwrap();
    let (_wal, again) = Wal::open(dir.path(), small()).unwrap();
    assert!(again.torn_tail.is_none());
    assert_eq!(again.last_lsn, 5);
    assert!(again.end_mark.unwrap().closed);
}

#[test]
fn durable_frames_after_a_mark_make_the_mark_corruption() {
    // A mark where a frame belongs, with a later frame that says that frame was durable: a
    // lost or misdirected write, not a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let (seg, _, end) = log_with_records(dir.path(), 4, 50);
    let mut bytes = std::fs::read(&seg).unwrap();
    let header = keel_wal::format::SegmentHeader::decode(&bytes).unwrap();
    let seed = keel_wal::format::segment_seed(header.segment_id);
    let mut later = Vec::new();
    keel_wal::format::encode_frame(&mut later, seed, 6, 5, 0, b"six");
    let at = end as usize + 96;
    bytes[at..at + later.len()].copy_from_slice(&later);
    std::fs::write(&seg, &bytes).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    let c = err.corruption().unwrap();
    assert_eq!(c.kind, CorruptionKind::MisplacedMark { lsn: 5 });
    assert_eq!((c.offset, c.valid_frame_after), (end, Some((at as u64, 6))));
    assert_eq!(c.last_good_lsn, Some(4));
}

#[test]
fn reopen_append_close_cycles_keep_one_true_mark() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4u64 {
        let (wal, report) = Wal::open(dir.path(), small()).unwrap();
        assert_eq!(report.last_lsn, round * 3);
        if round > 0 {
            let m = report.end_mark.unwrap();
            assert!(m.closed && m.durable_lsn == round * 3, "{m:?}");
            assert!(
                report
                    .to_string()
                    .contains(&format!("closed cleanly at LSN {}", round * 3)),
                "{report}"
            );
            // Open again, the log no longer claims a clean close: a crash now must not say so.
            let seg = segment_files(dir.path()).pop().unwrap();
            assert!(!mark_at(&seg, m.offset).unwrap().closed);
        }
        for i in 0..3 {
            wal.append(&payload(round * 3 + i, 70)).unwrap();
        }
        wal.close().unwrap();
    }
    // A close with nothing appended keeps the mark as it is, and writes nothing.
    let seg = segment_files(dir.path()).pop().unwrap();
    let before = std::fs::read(&seg).unwrap();
    let (wal, _) = Wal::open(dir.path(), small()).unwrap();
    wal.close().unwrap();
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(before, after, "open rewrote the mark, close restored it");
    assert_eq!(read_all(dir.path(), &small()).len(), 12);
    let all = read_all(dir.path(), &small());
    for (i, (lsn, p)) in all.iter().enumerate() {
        assert_eq!((*lsn, p), (i as u64 + 1, &payload(i as u64, 70)));
    }
}

#[test]
fn truncate_after_over_a_mark_and_damage_after_the_next_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for i in 0..8 {
            wal.append(&payload(i, 40)).unwrap();
        }
        wal.close().unwrap();
    }
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        wal.truncate_after(5).unwrap();
        assert_eq!(wal.append(&payload(99, 40)).unwrap(), 6);
        wal.truncate_after(6).unwrap(); // a no-op: keeps the mark that follows LSN 6
        wal.close().unwrap();
    }
    let r = LogReader::open(dir.path(), &small()).unwrap();
    assert!(r.torn_tail().is_none());
    assert_eq!(r.last_lsn(), 6);
    let m = r.end_mark().unwrap();
    assert!(m.closed && m.durable_lsn == 6);
    let seg = segment_files(dir.path()).pop().unwrap();
    assert_eq!(m.offset, r.segments().last().unwrap().end_offset);
    let start = last_batch_start(&seg);
    flip(&seg, start + 40);
    let c = Wal::open(dir.path(), small()).unwrap_err();
    assert_eq!(c.corruption().unwrap().last_good_lsn, Some(5), "{c}");
}

#[test]
fn marks_across_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for i in 0..400 {
            wal.append(&payload(i, 500)).unwrap();
        }
        wal.close().unwrap();
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    // Rotation shrinks a sealed segment to its last frame: no mark stays in it.
    for s in &segs[..segs.len() - 1] {
        let len = std::fs::metadata(s).unwrap().len();
        let frames = frames_of(&std::fs::read(s).unwrap()).len();
        assert!(frames > 0 && mark_at(s, len).is_none());
    }
    // A mark right after the last frame of a sealed segment is true and accepted.
    let sealed = &segs[segs.len() - 2];
    let bytes = std::fs::read(sealed).unwrap();
    let frames = frames_of(&bytes);
    let (off, last) = *frames.last().unwrap();
    let header = keel_wal::format::SegmentHeader::decode(&bytes).unwrap();
    let mark = keel_wal::format::encode_mark(
        keel_wal::format::segment_seed(header.segment_id),
        last.lsn + 1,
        last.lsn,
        false,
    );
    let mut with_mark = bytes.clone();
    with_mark.truncate(off + last.total_bytes);
    with_mark.extend_from_slice(&mark);
    std::fs::write(sealed, &with_mark).unwrap();
    let r = LogReader::open(dir.path(), &small()).unwrap();
    assert_eq!(r.last_lsn(), 400);
    assert!(r.end_mark().unwrap().closed);
    // Anything else after it is still refused.
    with_mark.extend_from_slice(&[1u8; 8]);
    std::fs::write(sealed, &with_mark).unwrap();
    let c = LogReader::open(dir.path(), &small()).unwrap_err();
    assert_eq!(c.corruption().unwrap().kind, CorruptionKind::DataAfterEnd);
    std::fs::write(sealed, &bytes).unwrap();
    // A log whose last segment is sealed gets a fresh one; its close mark is its only frame.
    let last_seg = segs.last().unwrap();
    let n = frames_of(&std::fs::read(last_seg).unwrap())
        .last()
        .unwrap()
        .1
        .lsn;
    let first = frames_of(&std::fs::read(last_seg).unwrap())[0].1.lsn;
    let len = frames_of(&std::fs::read(last_seg).unwrap())
        .last()
        .map(|(o, f)| o + f.total_bytes)
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(last_seg)
        .unwrap();
    f.set_len(len as u64).unwrap();
    drop(f);
    std::fs::rename(
        last_seg,
        dir.path().join(format!("wal-{first:020}-{n:020}.sealed")),
    )
    .unwrap();
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert!(report.created_segment.is_some());
    wal.close().unwrap();
    let fresh = segment_files(dir.path()).pop().unwrap();
    let m = mark_at(&fresh, 64).unwrap();
    assert_eq!((m.lsn, m.durable_lsn, m.closed), (n + 1, n, true));
    let (_wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(report.last_lsn, 400);
    assert!(
        report.to_string().contains("closed cleanly at LSN 400"),
        "{report}"
    );
}

#[test]
fn no_mark_after_a_failed_sync_and_no_close_mark_once_poisoned() {
    let dir = tempfile::tempdir().unwrap();
    let ffs = FaultFs::new();
    let (wal, _) = Wal::open(dir.path(), ffs.options(small())).unwrap();
    for i in 0..3 {
        wal.append(&payload(i, 80)).unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let tail = wal.segments().last().unwrap().end_offset;
    assert!(mark_at(&seg, tail).is_some(), "a mark after the idle sync");
    ffs.faults.fail_nth_sync(1);
    assert!(matches!(
        wal.append(&payload(3, 80)).unwrap_err(),
        Error::Poisoned(_)
    ));
    let marks = wal.stats().marks;
    assert!(matches!(wal.close().unwrap_err(), Error::Poisoned(_)));
    // LSN 4 was written over the old mark, its sync failed, and it was never acknowledged: the
    // poisoned log zeroed it (its pages may live only in the page cache, "fsyncgate"), and no
    // mark vouches for anything after LSN 3.
    let bytes = std::fs::read(&seg).unwrap();
    let frames = frames_of(&bytes);
    let (off, last) = *frames.last().unwrap();
    assert_eq!(last.lsn, 3);
    let after = (off + last.total_bytes) as u64;
    assert!(mark_at(&seg, after).is_none(), "a mark after a failed sync");
    assert!(bytes[after as usize..after as usize + 32]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(marks, 3, "no mark was written after the failure");
    // Reopened: exactly LSNs 1..=3.
    let got = read_all(dir.path(), &small());
    assert_eq!(got.len(), 3);
}
