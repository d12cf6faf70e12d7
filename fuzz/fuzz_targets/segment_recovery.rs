//! Builds a log directory from the fuzz input and runs recovery on it, read-only
//! (`LogReader::open`) and for writing (`Wal::open`, twice).
//!
//! Input layout: five config bytes, then a stream of ops (missing bytes read as 0).
//! - `flags`: bit 1 first segment gets a sealed name, bit 2 add a stray `.tmp` segment,
//!   bits 3-4 pick record_bytes_max, bit 5 flip a bit of the first segment header, bit 6 name
//!   the last segment with the wrong first LSN, bit 7 give the second segment a sealed name.
//! - first_lsn = 1 + b % 16, segment_id = 1 + b % 4, second-segment skew, header-flip position.
//! - ops (`op % 8`): 0-1 a valid frame, 2 a frame checksummed with another segment's seed,
//!   3 raw bytes, 4 zeros, 5 flip one bit, 6 start the second segment, 7 cut bytes off the end.
//!   A length byte of 255 in ops 0-2 makes the frame a mark (no payload, consumes no LSN).
//!
//! Properties:
//! - `LogReader::open` returns `Ok` or `Err(Corruption)`, never panics.
//! - If `Ok`: iterating from `first_lsn` yields exactly `last - first + 1` records, consecutive,
//!   without error. `Wal::open` then succeeds with the same first/last LSN and torn tail; a second
//!   `Wal::open` finds no torn tail and the same LSNs; and a reader afterwards yields the very same
//!   records (recovery cuts only what was never part of the log).
//! - If `Err(Corruption)`: `Wal::open` fails with the same corruption and leaves every file as it
//!   was (fails closed).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use keel_wal::format::{encode_frame, encode_mark, segment_seed, SegmentHeader};
use keel_wal::{LogReader, Options, Record, Wal};
use libfuzzer_sys::fuzz_target;

/// Segment files stay below this, so they fit in a 64 KiB segment.
const FILE_BYTES_MAX: usize = 60 << 10;
const RECORD_BYTES_MAXES: [u32; 4] = [8 << 10, 1024, 256, 40];

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
}

struct Seg {
    id: u64,
    first_lsn: u64,
    bytes: Vec<u8>,
}

impl Seg {
    fn new(id: u64, first_lsn: u64) -> Seg {
        let header = SegmentHeader {
            segment_id: id,
            first_lsn,
            created_unix_ms: 1_700_000_000_000,
            encrypted: false,
        };
        Seg {
            id,
            first_lsn,
            bytes: header.encode().to_vec(),
        }
    }
}

fn open_name(first: u64) -> String {
    format!("wal-{first:020}.open")
}
fn sealed_name(first: u64, last: u64) -> String {
    format!("wal-{first:020}-{last:020}.sealed")
}

/// A fresh temporary directory for one input, on tmpfs when there is one. Removed when dropped,
/// and by a panic hook when an assertion fails (libFuzzer aborts, so `Drop` never runs then;
/// inputs are deterministic, so the reproducer rebuilds the directory).
fn case_dir() -> tempfile::TempDir {
    static CURRENT: Mutex<Option<PathBuf>> = Mutex::new(None);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(p) = CURRENT.lock().ok().and_then(|c| c.clone()) {
                let _ = std::fs::remove_dir_all(p);
            }
            previous(info);
        }));
    });
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("keel-fuzz-");
    let dir = if shm.is_dir() {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    };
    let dir = dir.expect("create a temporary directory");
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir.path().to_owned());
    dir
}

fn collect(reader: &LogReader) -> Vec<Record> {
    let (first, last) = (reader.first_lsn(), reader.last_lsn());
    assert!(first >= 1 && first <= last + 1, "first {first} last {last}");
    let records: Vec<Record> = reader
        .iter_from(first)
        .expect("iter_from(first_lsn)")
        .map(|r| r.expect("a log that opened reads back without error"))
        .collect();
    assert_eq!(records.len() as u64, last + 1 - first, "record count");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.lsn, first + i as u64, "records are consecutive");
    }
    records
}

fn snapshot(files: &[(PathBuf, Vec<u8>)]) {
    for (path, bytes) in files {
        let now = std::fs::read(path).expect("file still exists after a refused open");
        assert!(
            &now == bytes,
            "{} was modified by a Wal::open that failed",
            path.display()
        );
    }
}

fn run(data: &[u8], dir: &Path) {
    let mut input = Input { data };
    let flags = input.byte();
    let first_lsn = 1 + u64::from(input.byte() % 16);
    let segment_id = 1 + u64::from(input.byte() % 4);
    let skew = input.byte();
    let header_flip = input.byte();
    let record_bytes_max = RECORD_BYTES_MAXES[usize::from(flags >> 3) & 3];

    let mut segs = vec![Seg::new(segment_id, first_lsn)];
    // The LSN the next valid frame gets, and the durable_lsn written in the last one.
    let mut next_lsn = first_lsn;
    let mut durable = first_lsn - 1;
    let mut last_of_first = None;
    while !input.is_empty() {
        let op = input.byte();
        let n_segs = segs.len();
        let seg = segs.last_mut().expect("one segment");
        let buf = &mut seg.bytes;
        match op % 8 {
            0..=2 => {
                let len_b = usize::from(input.byte());
                let len = if len_b < 200 {
                    len_b
                } else {
                    (len_b - 200) * 190
                };
                let fill = input.byte();
                let ctl = input.byte();
                let k = u64::from((ctl >> 2) & 3);
                let lsn = match ctl & 3 {
                    0 | 1 => next_lsn,
                    2 => next_lsn + 1 + k,
                    _ => next_lsn.saturating_sub(1 + k).max(1),
                };
                let d = match ctl >> 5 {
                    0..=2 => lsn - 1,
                    3 | 4 => durable.min(lsn - 1),
                    5 => 0,
                    6 => lsn.saturating_sub(2),
                    _ => lsn.saturating_sub(1 + u64::from(fill % 8)),
                };
                let batch_continues = ctl & 0b1_0000 != 0;
                let payload: Vec<u8> = (0..len)
                    .map(|i| fill.wrapping_add((i as u8).wrapping_mul(31)))
                    .collect();
                let seed = if op % 8 == 2 {
                    segment_seed(seg.id + 1)
                } else {
                    segment_seed(seg.id)
                };
                if len_b == 255 {
                    buf.extend_from_slice(&encode_mark(seed, lsn, d, fill & 1 != 0));
                } else {
                    // Encoded apart, so that a frame can also land at an unaligned offset.
                    let mut frame = Vec::new();
                    encode_frame(
                        &mut frame,
                        seed,
                        lsn,
                        d,
                        u8::from(batch_continues),
                        &payload,
                    );
                    buf.extend_from_slice(&frame);
                    next_lsn = lsn + 1;
                }
                durable = d;
            }
            3 => {
                let n = usize::from(input.byte() % 64) + 1;
                buf.extend_from_slice(input.take(n));
            }
            4 => {
                let n = (usize::from(input.byte()) + 1) * 8;
                buf.resize(buf.len() + n, 0);
            }
            5 => {
                let pos = usize::from(u16::from_le_bytes([input.byte(), input.byte()]));
                let bit = input.byte() & 7;
                let at = pos % buf.len().max(1);
                if let Some(b) = buf.get_mut(at) {
                    *b ^= 1 << bit;
                }
            }
            6 if n_segs == 1 => {
                last_of_first = Some(next_lsn - 1);
                let (mut first, mut id) = (next_lsn, seg.id + 1);
                if skew >= 224 {
                    first = (first + u64::from(skew & 7)).saturating_sub(3).max(1);
                    id = (id + u64::from((skew >> 3) & 1))
                        .saturating_sub(u64::from((skew >> 4) & 1));
                    id = id.max(1);
                }
                segs.push(Seg::new(id, first));
                next_lsn = first;
            }
            6 => {}
            _ => {
                let n = usize::from(input.byte() % 64) + 1;
                buf.truncate(buf.len().saturating_sub(n));
            }
        }
        if segs.iter().any(|s| s.bytes.len() > FILE_BYTES_MAX) {
            for s in &mut segs {
                s.bytes.truncate(FILE_BYTES_MAX);
            }
            break;
        }
    }
    if flags & 0b10_0000 != 0 {
        // The ops may have cut the header short.
        if let Some(b) = segs[0].bytes.get_mut(usize::from(header_flip % 64)) {
            *b ^= 1 << (header_flip >> 6);
        }
    }

    // Name the files.
    let n_segs = segs.len();
    let mut named: Vec<(String, &Seg)> = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let is_last = i + 1 == n_segs;
        let mut first = s.first_lsn;
        if is_last && flags & 0b100_0000 != 0 {
            first += 1;
        }
        let last = if is_last {
            next_lsn - 1
        } else {
            last_of_first.expect("set when the second segment started")
        };
        let sealed = if i == 0 {
            flags & 0b10 != 0
        } else {
            flags & 0b1000_0000 != 0
        };
        let name = if sealed {
            sealed_name(first, last)
        } else {
            open_name(first)
        };
        if named.iter().any(|(n, _)| *n == name) {
            return; // Both segments would be one file.
        }
        named.push((name, s));
    }
    let mut files = Vec::new();
    for (name, s) in &named {
        let path = dir.join(name);
        std::fs::write(&path, &s.bytes).expect("write segment");
        files.push((path, s.bytes.clone()));
    }
    if flags & 0b100 != 0 {
        let path = dir.join(format!("wal-{next_lsn:020}.tmp"));
        let bytes = SegmentHeader {
            segment_id: segs.last().expect("one segment").id + 1,
            first_lsn: next_lsn,
            created_unix_ms: 0,
            encrypted: false,
        }
        .encode()
        .to_vec();
        std::fs::write(&path, &bytes).expect("write tmp segment");
        files.push((path, bytes));
    }

    let longest = files.iter().map(|(_, b)| b.len() as u64).max().unwrap_or(0);
    let opts = Options {
        record_bytes_max,
        zero_fill_segments: false,
        segment_bytes_max: (64u64 << 10).max(longest.div_ceil(4096) * 4096),
        ..Options::small_for_tests()
    };

    match LogReader::open(dir, &opts) {
        Ok(reader) => {
            let records = collect(&reader);
            let (first, last) = (reader.first_lsn(), reader.last_lsn());
            let torn = reader.torn_tail().cloned();
            drop(reader);

            let (wal, report) = Wal::open(dir, opts.clone())
                .unwrap_or_else(|e| panic!("LogReader::open succeeded but Wal::open failed: {e}"));
            assert_eq!((report.first_lsn, report.last_lsn), (first, last));
            assert_eq!((wal.first_lsn(), wal.last_lsn()), (first, last));
            match (&torn, &report.torn_tail) {
                (None, None) => {}
                (Some(t), Some(r)) => {
                    assert_eq!((&t.file, t.offset, t.reason), (&r.file, r.offset, r.reason));
                    assert_eq!(t.valid_frames_cut, r.valid_frames_cut);
                }
                (t, r) => panic!("reader saw torn tail {t:?}, Wal::open cut {r:?}"),
            }
            drop(wal);

            let (wal, report) = Wal::open(dir, opts.clone())
                .unwrap_or_else(|e| panic!("second Wal::open failed: {e}"));
            assert!(
                report.torn_tail.is_none(),
                "recovery is not idempotent: {:?}",
                report.torn_tail
            );
            assert_eq!((report.first_lsn, report.last_lsn), (first, last));
            assert_eq!((wal.first_lsn(), wal.last_lsn()), (first, last));
            drop(wal);

            let reader = LogReader::open(dir, &opts)
                .unwrap_or_else(|e| panic!("LogReader::open after recovery failed: {e}"));
            assert!(reader.torn_tail().is_none());
            assert_eq!((reader.first_lsn(), reader.last_lsn()), (first, last));
            assert!(
                collect(&reader) == records,
                "recovery changed the records of the log"
            );
        }
        Err(e) => {
            let Some(c) = e.corruption() else {
                panic!("LogReader::open failed with something other than corruption: {e}");
            };
            match Wal::open(dir, opts.clone()) {
                Ok(_) => panic!("LogReader::open found corruption ({c:?}) but Wal::open succeeded"),
                Err(e2) => assert_eq!(
                    e2.corruption(),
                    Some(c),
                    "Wal::open failed differently: {e2}"
                ),
            }
            snapshot(&files);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = case_dir();
    run(data, dir.path());
});
