//! Golden fixtures: committed log directories, good and damaged, under tests/fixtures/.
//!
//! Each fixture is rebuilt here from the format's encoder and compared byte for byte with the
//! committed files, so an accidental format change fails this test. After an intended change
//! (with a new format version), regenerate with `KEEL_REGENERATE_FIXTURES=1 cargo test -p
//! keel-wal --test fixtures -- --test-threads=1` and commit the result.

use std::path::{Path, PathBuf};

use keel_wal::format::{
    encode_frame, encode_mark, segment_seed, FrameError, HeaderError, SegmentHeader,
    FLAG_BATCH_CONTINUES,
};
use keel_wal::{CorruptionKind, LogReader, Options, TornReason, Wal};

struct Seg {
    name: String,
    bytes: Vec<u8>,
}

/// A segment: header, then frames (lsn, durable_lsn, flags, payload), then `zeros` bytes.
fn segment(
    id: u64,
    first: u64,
    frames: &[(u64, u64, u8, &[u8])],
    zeros: usize,
    sealed_last: Option<u64>,
) -> Seg {
    let mut b = SegmentHeader {
        segment_id: id,
        first_lsn: first,
        created_unix_ms: 1_700_000_000_000,
        encrypted: false,
    }
    .encode()
    .to_vec();
    let seed = segment_seed(id);
    for &(lsn, durable, flags, payload) in frames {
        encode_frame(&mut b, seed, lsn, durable, flags, payload);
    }
    b.resize(b.len() + zeros, 0);
    let name = match sealed_last {
        Some(last) => format!("wal-{first:020}-{last:020}.sealed"),
        None => format!("wal-{first:020}.open"),
    };
    Seg { name, bytes: b }
}

const C: u8 = FLAG_BATCH_CONTINUES;

/// `seg` with a mark (next LSN `lsn`, durable through `durable`) after its last frame, then
/// `zeros` bytes.
fn with_mark(mut seg: Seg, lsn: u64, durable: u64, closed: bool, zeros: usize) -> Seg {
    let h = SegmentHeader::decode(&seg.bytes).unwrap();
    seg.bytes.extend_from_slice(&encode_mark(
        segment_seed(h.segment_id),
        lsn,
        durable,
        closed,
    ));
    seg.bytes.resize(seg.bytes.len() + zeros, 0);
    seg
}

fn fixtures() -> Vec<(&'static str, Vec<Seg>)> {
    let good = || {
        vec![
            segment(
                1,
                1,
                &[(1, 0, 0, b"alpha"), (2, 1, 0, b"beta"), (3, 2, 0, b"")],
                0,
                Some(3),
            ),
            segment(
                2,
                4,
                &[
                    (4, 3, C, b"batch-1"),
                    (5, 3, 0, b"batch-2"),
                    (6, 5, 0, b"gamma"),
                ],
                256,
                None,
            ),
        ]
    };
    let mut torn = good();
    torn[1].bytes.truncate(64 + 40 + 40 + 20); // cuts into LSN 6
    let mut incomplete_batch = good();
    {
        let s = &mut incomplete_batch[1];
        s.bytes = segment(2, 4, &[(4, 3, C, b"batch-1")], 256, None).bytes;
    }
    let mut corrupt = good();
    corrupt[1].bytes[64 + 32 + 2] ^= 0x01; // payload of LSN 4; LSN 6 says 5 was durable
    let mut bad_version = good();
    bad_version[0].bytes[8] = 3;
    let mut gap = good();
    gap[1] = segment(2, 5, &[(5, 3, 0, b"x")], 0, None);
    // As keel leaves it after a clean close: the last batch (LSN 6) is followed by a synced mark
    // with CLOSED that covers it.
    let clean_close = || {
        let mut segs = good();
        let frames: &[(u64, u64, u8, &[u8])] = &[
            (4, 3, C, b"batch-1"),
            (5, 3, 0, b"batch-2"),
            (6, 5, 0, b"gamma"),
        ];
        segs[1] = with_mark(segment(2, 4, frames, 0, None), 7, 6, true, 256);
        segs
    };
    let mut damaged_after_close = clean_close();
    damaged_after_close[1].bytes[64 + 40 + 40 + 32 + 1] ^= 0x01; // payload of LSN 6
    vec![
        ("good", good()),
        ("torn-tail", torn),
        ("incomplete-batch", incomplete_batch),
        ("corrupt-mid-log", corrupt),
        ("unknown-version", bad_version),
        ("lsn-gap", gap),
        ("clean-close", clean_close()),
        ("damaged-last-batch-after-close", damaged_after_close),
    ]
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn committed_fixtures_match_the_encoder() {
    let regen = std::env::var_os("KEEL_REGENERATE_FIXTURES").is_some();
    for (name, segs) in fixtures() {
        let dir = root().join(name);
        if regen {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for s in &segs {
                std::fs::write(dir.join(&s.name), &s.bytes).unwrap();
            }
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let expected: Vec<String> = segs.iter().map(|s| s.name.clone()).collect();
        assert_eq!(on_disk, expected, "{name}");
        for s in &segs {
            assert_eq!(
                std::fs::read(dir.join(&s.name)).unwrap(),
                s.bytes,
                "{name}/{}: the format changed",
                s.name
            );
        }
    }
}

fn check(name: &str) -> Result<LogReader, keel_wal::Error> {
    LogReader::open(root().join(name), &Options::default())
}

fn corruption(name: &str) -> keel_wal::Corruption {
    let e = check(name).unwrap_err();
    e.corruption()
        .cloned()
        .unwrap_or_else(|| panic!("{name}: not a corruption: {e:?}"))
}

#[test]
fn good_fixture_reads_back() {
    let r = check("good").unwrap();
    assert!(r.torn_tail().is_none());
    let recs: Vec<_> = r.iter_from(1).unwrap().map(|r| r.unwrap()).collect();
    let payloads: Vec<&[u8]> = recs.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(
        payloads,
        [
            &b"alpha"[..],
            b"beta",
            b"",
            b"batch-1",
            b"batch-2",
            b"gamma"
        ]
    );
    assert!(recs[3].more_in_batch && !recs[4].more_in_batch);
    assert_eq!(
        recs.iter().map(|r| r.lsn).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(r.iter_from(5).unwrap().count(), 2);
}

#[test]
fn torn_fixtures_are_torn_tails() {
    let r = check("torn-tail").unwrap();
    let t = r.torn_tail().unwrap();
    assert_eq!(t.offset, 64 + 40 + 40);
    assert!(matches!(
        t.reason,
        TornReason::Frame(FrameError::Truncated { .. })
    ));
    assert_eq!(r.last_lsn(), 5);

    let r = check("incomplete-batch").unwrap();
    assert_eq!(r.torn_tail().unwrap().reason, TornReason::IncompleteBatch);
    assert_eq!(r.last_lsn(), 3, "half a batch is no batch");
}

#[test]
fn damaged_fixtures_fail_closed() {
    let c = corruption("corrupt-mid-log");
    assert_eq!(c.offset, 64);
    assert!(matches!(
        c.kind,
        CorruptionKind::Frame(FrameError::PayloadChecksum { .. })
    ));
    assert_eq!(c.last_good_lsn, Some(3));
    assert_eq!(c.valid_frame_after.map(|v| v.1), Some(6));

    let c = corruption("unknown-version");
    assert_eq!(
        c.kind,
        CorruptionKind::SegmentHeader(HeaderError::UnsupportedVersion { found: 3 })
    );

    let c = corruption("lsn-gap");
    assert_eq!(
        c.kind,
        CorruptionKind::LsnGap {
            expected: 4,
            found: 5
        }
    );
}

#[test]
fn clean_close_fixture_reads_back_and_says_so() {
    let r = check("clean-close").unwrap();
    assert!(r.torn_tail().is_none());
    assert_eq!((r.first_lsn(), r.last_lsn()), (1, 6));
    assert_eq!(r.iter_from(1).unwrap().count(), 6, "the mark is no record");
    let m = r.end_mark().unwrap();
    assert_eq!(
        (m.offset, m.durable_lsn, m.closed),
        (64 + 40 + 40 + 40, 6, true)
    );
    assert_eq!(
        r.segments()[1].end_offset,
        m.offset,
        "writers start at the mark"
    );

    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("clean-close")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let (wal, report) = Wal::open(dir.path(), Options::default()).unwrap();
    assert!(
        report.to_string().contains("closed cleanly at LSN 6"),
        "{report}"
    );
    assert_eq!(wal.append(b"delta").unwrap(), 7);
}

#[test]
fn damage_in_the_last_batch_of_a_cleanly_closed_log_fails_closed() {
    let c = corruption("damaged-last-batch-after-close");
    assert_eq!(c.offset, 64 + 40 + 40);
    assert!(matches!(
        c.kind,
        CorruptionKind::Frame(FrameError::PayloadChecksum { .. })
    ));
    assert_eq!(c.last_good_lsn, Some(5));
    assert_eq!(
        c.valid_frame_after,
        Some((64 + 40 + 40 + 40, 7)),
        "the mark"
    );
}

#[test]
fn opening_a_copy_of_the_torn_fixture_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("torn-tail")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let (wal, report) = Wal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(report.torn_tail.unwrap().bytes_cut, 20);
    assert_eq!(wal.append(b"delta").unwrap(), 6);
}
