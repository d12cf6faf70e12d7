//! Bugs found by review and simulation, each kept as a named test.

use std::path::Path;
use std::sync::Arc;

use keel_sim::SimFs;
use keel_wal::format::{encode_frame, segment_seed, SegmentHeader, FLAG_BATCH_CONTINUES};
use keel_wal::{CorruptionKind, Error, Fs, LogReader, OpenMode, Options, Wal};

const DIR: &str = "/db/wal";

fn opts(fs: &SimFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        prepare_segments_in_background: false,
        ..Options::small_for_tests()
    }
}

fn file_bytes(fs: &SimFs, p: &Path) -> Option<Vec<u8>> {
    let f = fs.open(p, OpenMode::Read).ok()?;
    let mut b = vec![0u8; f.len().ok()? as usize];
    keel_wal::fs::read_exact_at(&*f, &mut b, 0).ok()?;
    Some(b)
}

/// Review finding 1. A process died after writing LSN 4 but before syncing it; the page cache
/// kept it, so the restarted log read it back and called it durable. Frame 5 then recorded
/// "4 is durable", a power cut lost 4 and kept 5, and recovery failed closed on a pure crash
/// state. Opening now syncs what it recovered before calling it durable.
#[test]
fn regression_process_crash_then_power_cut_is_not_corruption() {
    for seed in 0..200u64 {
        let fs = SimFs::new(seed);
        let (wal, _) = Wal::open(DIR, opts(&fs)).unwrap();
        for i in 0..3 {
            wal.append(format!("rec{i}").as_bytes()).unwrap();
        }
        fs.crash_at(fs.counts().total + 1); // the write of LSN 4 happens, its sync does not
        assert!(wal.append(b"rec3-never-acked").is_err());
        drop(wal);
        let restarted = fs.fork(); // a process crash: the page cache survives
        let (wal, report) = Wal::open(DIR, opts(&restarted)).unwrap();
        assert_eq!(report.last_lsn, 4);
        restarted.crash_at(restarted.counts().total + 1); // power cut before LSN 5's sync
        assert!(wal.append(b"rec4").is_err());
        drop(wal);
        let image = restarted.crash(seed);
        match Wal::open(DIR, opts(&image)) {
            Ok((_, r)) => assert!(r.last_lsn >= 4, "seed {seed}: LSN 4 was synced at reopen"),
            Err(e) => panic!("seed {seed}: a crash state was refused: {e}"),
        }
    }
}

/// Review finding 2. A crash while recovery zeroed a torn tail left half-zeroed bytes; the next
/// recovery then replaced the good copy in torn/ with a copy of those. Copies are never
/// overwritten now.
#[test]
fn regression_crash_during_tail_cut_keeps_the_first_copy() {
    let mut checked = 0;
    for seed in 0..40u64 {
        let fs = SimFs::new(seed);
        let (wal, _) = Wal::open(DIR, opts(&fs)).unwrap();
        for i in 0..3 {
            wal.append(format!("rec{i}").as_bytes()).unwrap();
        }
        fs.crash_at(fs.counts().total + 1);
        let _ = wal.append(&[0xAB; 3000]);
        drop(wal);
        let image = fs.crash(seed);
        let reference_fs = image.fork();
        let (w, report) = Wal::open(DIR, opts(&reference_fs)).unwrap();
        drop(w);
        let Some(torn) = report.torn_tail else {
            continue;
        };
        let side = torn.side_file.unwrap();
        let reference = file_bytes(&reference_fs, &side).unwrap();
        for k in 0..80u64 {
            let f = image.fork();
            f.crash_at(k);
            if Wal::open(DIR, opts(&f)).is_ok() {
                break;
            }
            for s in 0..4 {
                let image2 = f.crash(1000 + s);
                let had_copy = file_bytes(&image2, &side).as_ref() == Some(&reference);
                drop(Wal::open(DIR, opts(&image2)).unwrap());
                if had_copy {
                    assert_eq!(
                        file_bytes(&image2, &side).unwrap(),
                        reference,
                        "seed {seed} k {k}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}

fn put_segment(fs: &SimFs, name: &str, first: u64, frames: &[(u64, u64, u8, &[u8])]) {
    let mut b = SegmentHeader {
        segment_id: 1,
        first_lsn: first,
        created_unix_ms: 0,
        encrypted: false,
    }
    .encode()
    .to_vec();
    for &(lsn, durable, flags, p) in frames {
        encode_frame(&mut b, segment_seed(1), lsn, durable, flags, p);
    }
    let _ = fs.create_dir(Path::new("/w"));
    let f = fs
        .open(&Path::new("/w").join(name), OpenMode::CreateNew)
        .unwrap();
    keel_wal::fs::write_all_at(&*f, &b, 0).unwrap();
}

/// Review finding 3. A frame with LSN u64::MAX (valid CRCs) overflowed `lsn + 1`: a panic in
/// debug builds, a wrapped LSN in release. LSNs above LSN_MAX are now invalid.
#[test]
fn regression_lsn_near_u64_max_is_refused_not_overflowed() {
    let fs = SimFs::new(1);
    let first = u64::MAX;
    put_segment(
        &fs,
        &format!("wal-{first:020}.open"),
        first,
        &[(u64::MAX, 0, 0, b"x")],
    );
    let o = Options {
        fs: Arc::new(fs.clone()),
        ..Options::small_for_tests()
    };
    let err = LogReader::open("/w", &o).unwrap_err();
    assert!(
        matches!(
            err.corruption().map(|c| &c.kind),
            Some(CorruptionKind::SegmentHeader(_))
        ),
        "{err}"
    );
}

/// Review finding 4. A last sealed segment holding more LSNs than its name claims was accepted.
#[test]
fn regression_sealed_segment_overrunning_its_name_fails_closed() {
    let fs = SimFs::new(1);
    let c = FLAG_BATCH_CONTINUES;
    put_segment(
        &fs,
        &format!("wal-{:020}-{:020}.sealed", 1, 2),
        1,
        &[(1, 0, c, b"a"), (2, 0, c, b"b"), (3, 0, 0, b"c")],
    );
    let o = Options {
        fs: Arc::new(fs.clone()),
        ..Options::small_for_tests()
    };
    let err = LogReader::open("/w", &o).unwrap_err();
    assert_eq!(
        err.corruption().map(|c| c.kind.clone()),
        Some(CorruptionKind::SegmentOverruns {
            expected_last: 2,
            found_last: 3
        })
    );
}

/// Review finding 5. `Ticket::wait` after the ticket had been polled to Ready waited forever.
#[test]
fn regression_wait_after_poll_returns() {
    use std::future::Future;
    let fs = SimFs::new(1);
    let (wal, _) = Wal::open("/w2", opts(&fs)).unwrap();
    let mut t = wal.submit(b"x".to_vec()).unwrap();
    wal.sync().unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::pin::Pin::new(&mut t).poll(&mut cx).is_ready());
    assert!(matches!(t.wait(), Err(Error::Closed)));
}
