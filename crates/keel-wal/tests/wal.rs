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
        let stats = wal.stats();
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

#[test]
fn cut_inside_final_record_at_every_offset_is_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let (seg, start, end) = log_with_records(base.path(), 5, 100);
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
    bytes[8] = 2;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Wal::open(dir.path(), small()).unwrap_err();
    let c = err.corruption().unwrap();
    assert_eq!((c.offset, c.file.clone()), (0, seg));
    assert_eq!(
        c.kind,
        CorruptionKind::SegmentHeader(keel_wal::format::HeaderError::UnsupportedVersion {
            found: 2
        })
    );
    assert!(err.to_string().contains("unsupported format version 2"));
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
    let (seg, start, _) = log_with_records(dir.path(), 6, 40);
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
