//! Recovery: read every segment, prove the log consistent, and tell a torn tail from corruption.
//!
//! A torn tail is what a crash leaves: frames at the end of the last segment that were written but
//! never covered by a completed sync. They may be partly present, in any order, torn at sector
//! boundaries. Recovery cuts them off. Everything else fails closed with a [`Corruption`].
//!
//! Telling the two apart: every frame records `durable_lsn`, the highest LSN that was durable when
//! the frame was written. Suppose the first bad position in the last segment is where LSN `n`
//! belongs. If a valid frame anywhere after it says `durable_lsn >= n`, then LSN `n` had been
//! synced, so its damage is not a torn write: corruption. If no such frame exists, nothing from
//! `n` on was ever proven durable and so nothing from `n` on was acknowledged under
//! `SyncPolicy::Always`: a torn tail. A segment that has a successor, or a sealed name, was fully
//! synced before that successor or name existed, so any damage in it is corruption.
//!
//! A mark frame (see [`crate::format`]) is such proof too: it is written right after the last
//! frame, only once a sync covering that frame has returned, and its durable_lsn says so. A mark
//! at the position where the next record belongs, at a batch boundary, ends the records, as
//! zeros do. After a clean close the log ends with a synced mark that covers every frame, so
//! damage anywhere in the log is corruption. The bytes after a mark must be zeros; anything else
//! there is analysed as above, starting after the mark (the mark itself is true and stays). A
//! mark right after the last frame of a segment that must be complete is accepted.
//!
//! One case stays ambiguous by nature: damage inside the last group-commit batch before a crash,
//! when neither its mark nor any later frame recording that it was synced reached the disk
//! (its sync had not returned, or the mark written after it, or the next batch that overwrote
//! that mark, was lost in the crash). It is treated as a torn tail; the cut bytes are kept in a
//! side file and the report counts the valid frames that were cut.

use std::path::{Path, PathBuf};

use crate::crypt::KeyId;
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::format::{
    decode_frame, segment_seed, Decoded, FrameError, SegmentHeader, FRAME_ALIGN,
    FRAME_HEADER_BYTES, LSN_MAX, MARK_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::fs::{self, durable_create_dir_all, write_all_at, Fs, FsFile, OpenMode};
use crate::options::SEGMENT_BYTES_LIMIT;
use crate::Lsn;

/// Subdirectory where cut bytes are kept.
pub const TORN_DIR: &str = "torn";
/// Subdirectory where `repair --force` moves segments it cuts off.
pub const QUARANTINE_DIR: &str = "quarantine";
/// The lock file that keeps two writers out of one directory.
pub const LOCK_FILE: &str = "LOCK";

/// A segment file name: `wal-<first>.open` while active, `wal-<first>-<last>.sealed` once sealed,
/// `wal-<first>.tmp` while being created. LSNs are zero-padded to 20 digits so names sort by LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SegName {
    Open { first: Lsn },
    Sealed { first: Lsn, last: Lsn },
    Tmp,
}

pub(crate) fn open_name(first: Lsn) -> String {
    format!("wal-{first:020}.open")
}
pub(crate) fn sealed_name(first: Lsn, last: Lsn) -> String {
    format!("wal-{first:020}-{last:020}.sealed")
}
pub(crate) fn tmp_name(first: Lsn) -> String {
    format!("wal-{first:020}.tmp")
}
/// A blank segment prepared ahead of rotation; it becomes segment `id`.
pub(crate) fn spare_name(id: u64) -> String {
    format!("wal-spare-{id:020}.tmp")
}

pub(crate) fn parse_name(name: &str) -> Option<SegName> {
    let rest = name.strip_prefix("wal-")?;
    let num = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    if let Some(first) = rest.strip_suffix(".open") {
        return Some(SegName::Open { first: num(first)? });
    }
    if rest.ends_with(".tmp") {
        return Some(SegName::Tmp);
    }
    let (first, last) = rest.strip_suffix(".sealed")?.split_once('-')?;
    Some(SegName::Sealed {
        first: num(first)?,
        last: num(last)?,
    })
}

/// One segment as recovery found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: u64,
    pub path: PathBuf,
    pub first_lsn: Lsn,
    /// `first_lsn - 1` when the segment holds no frame.
    pub last_lsn: Lsn,
    pub sealed: bool,
    /// Offset just after the last complete frame.
    pub end_offset: u64,
    pub file_bytes: u64,
    /// Format version 2: every data frame's payload is sealed.
    pub encrypted: bool,
    /// In an encrypted segment, the key ids its frames were sealed with, each with the offset of
    /// its first frame, as recovery found them (empty for a segment created since).
    pub key_ids: Vec<(KeyId, u64)>,
}

/// A torn tail that recovery would cut (or did cut).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Where the log ends after the cut.
    pub offset: u64,
    /// End of the non-zero bytes being cut (exclusive).
    pub end: u64,
    /// Why the frame at `offset` ends the log.
    pub reason: TornReason,
    /// Valid frames (written but never proven durable) inside the cut bytes.
    pub valid_frames_cut: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TornReason {
    /// A frame failed its checks.
    Frame(FrameError),
    /// A batch was not complete.
    IncompleteBatch,
    /// A frame with an unexpected LSN (left by unordered writes).
    LsnOutOfOrder { expected: Lsn, found: Lsn },
    /// Zeros, then stray bytes further on.
    StrayBytes,
}

/// The mark frame that ends the log (see [`crate::format`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndMark {
    /// Offset of the mark in the last segment: right after the last frame.
    pub offset: u64,
    /// Every LSN up to this was durable when the mark was written.
    pub durable_lsn: Lsn,
    /// Written by a clean close, after its final sync.
    pub closed: bool,
}

/// What a read-only pass over the directory found.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub segments: Vec<SegmentInfo>,
    pub torn: Option<TornTail>,
    /// The mark after the last frame of the last segment, if there is one (it stays when a torn
    /// tail after it is cut).
    pub end_mark: Option<EndMark>,
    /// Segment files left half-created, or prepared and never used, by a crash.
    pub tmp_files: Vec<PathBuf>,
    pub bytes_scanned: u64,
}

impl Layout {
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.segments.first().map(|s| s.first_lsn)
    }
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.segments.last().map(|s| s.last_lsn)
    }
}

pub(crate) struct Listed {
    pub(crate) path: PathBuf,
    pub(crate) name: SegName,
    pub(crate) first: Lsn,
}

/// Lists the segment files of `dir`, sorted by first LSN.
pub(crate) fn list(fs: &dyn Fs, dir: &Path) -> Result<(Vec<Listed>, Vec<PathBuf>)> {
    let names = fs
        .read_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    let mut segs = Vec::new();
    let mut tmps = Vec::new();
    for n in names {
        match parse_name(&n) {
            Some(SegName::Tmp) => tmps.push(dir.join(&n)),
            Some(name @ (SegName::Open { first } | SegName::Sealed { first, .. })) => {
                segs.push(Listed {
                    path: dir.join(&n),
                    name,
                    first,
                })
            }
            None => {}
        }
    }
    segs.sort_by_key(|s| s.first);
    tmps.sort();
    Ok((segs, tmps))
}

/// How a walk over a segment's frames stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    End,
    Zero,
    Bad(FrameError),
    Lsn {
        expected: Lsn,
        found: Lsn,
    },
    /// A mark where LSN `lsn` belongs (the walk's next LSN).
    Mark {
        lsn: Lsn,
        durable_lsn: Lsn,
        closed: bool,
    },
    /// Reached the LSN it was told to stop after.
    Limit,
}

struct Walk {
    /// Offset after the last frame that closed a batch.
    complete_end: usize,
    /// LSN of that frame, or first_lsn - 1.
    last_complete: Lsn,
    stop_offset: usize,
    stop: Stop,
    /// Each key id the complete frames' payloads begin with, and the offset of its first frame
    /// (meaningful in an encrypted segment only).
    keys: Vec<(KeyId, u64)>,
}

/// Bytes read from a segment at a time. Small enough to stay in cache: streaming a segment
/// through it is several times faster than reading the whole segment into one buffer, which on
/// small machines is bound by memory bandwidth.
const WINDOW_BYTES: usize = 1 << 20;

/// A sliding view of a segment file. It grows only to hold a frame larger than itself.
struct Window<'a> {
    file: &'a dyn FsFile,
    len: usize,
    buf: Vec<u8>,
    base: usize,
    filled: usize,
}

/// What lies at an offset, without borrowing the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Frame {
        lsn: Lsn,
        durable_lsn: Lsn,
        continues: bool,
        total: usize,
        key: Option<KeyId>,
    },
    Mark {
        lsn: Lsn,
        durable_lsn: Lsn,
        closed: bool,
    },
    Zero,
    End,
    Bad(FrameError),
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn FsFile, len: usize) -> Self {
        Window {
            file,
            len,
            buf: Vec::new(),
            base: 0,
            filled: 0,
        }
    }

    /// The bytes from `at` to the end of what is loaded: at least `need` of them, unless the file
    /// ends first.
    fn at(&mut self, at: usize, need: usize) -> std::io::Result<&[u8]> {
        debug_assert!(at <= self.len);
        let want_end = (at + need).min(self.len);
        if at < self.base || want_end > self.base + self.filled {
            let size = need.max(WINDOW_BYTES);
            if self.buf.len() < size {
                self.buf.resize(size, 0);
            }
            let n = (self.len - at).min(self.buf.len());
            fs::read_exact_at(self.file, &mut self.buf[..n], at as u64)?;
            self.base = at;
            self.filled = n;
        }
        Ok(&self.buf[at - self.base..self.filled])
    }

    fn decode(&mut self, at: usize, seed: u32, record_max: u32) -> std::io::Result<Found> {
        let summary = |d: Decoded<'_>| match d {
            Decoded::Frame(f) => Found::Frame {
                lsn: f.lsn,
                durable_lsn: f.durable_lsn,
                continues: f.batch_continues(),
                total: f.total_bytes,
                key: crate::crypt::sealed_key_id(f.payload),
            },
            Decoded::Mark(m) => Found::Mark {
                lsn: m.lsn,
                durable_lsn: m.durable_lsn,
                closed: m.closed,
            },
            Decoded::Zero => Found::Zero,
            Decoded::End => Found::End,
            Decoded::Bad(e) => Found::Bad(e),
        };
        let first = summary(decode_frame(
            self.at(at, FRAME_HEADER_BYTES)?,
            seed,
            record_max,
        ));
        match first {
            // The header is good but the frame runs past the window: load all of it.
            Found::Bad(FrameError::Truncated { needed, .. }) if at + needed <= self.len => Ok(
                summary(decode_frame(self.at(at, needed)?, seed, record_max)),
            ),
            f => Ok(f),
        }
    }

    /// Offset just past the last non-zero byte in `[from, len)`, or `from` if all are zero.
    fn nonzero_end(&mut self, from: usize) -> std::io::Result<usize> {
        let mut end = self.len;
        while end > from {
            let start = end.saturating_sub(WINDOW_BYTES).max(from);
            let chunk = &self.at(start, end - start)?[..end - start];
            let n = nonzero_end(chunk);
            if n > 0 {
                return Ok(start + n);
            }
            end = start;
        }
        Ok(from)
    }

    /// Valid frames and marks in `[from, to)` at 8-aligned offsets.
    fn valid_frames_in(
        &mut self,
        seed: u32,
        record_max: u32,
        from: usize,
        to: usize,
    ) -> std::io::Result<Vec<Valid>> {
        let mut found = Vec::new();
        let mut off = from;
        while off < to {
            match self.decode(off, seed, record_max)? {
                Found::Frame {
                    lsn, durable_lsn, ..
                } => found.push(Valid {
                    offset: off,
                    lsn,
                    durable_lsn,
                    mark: false,
                }),
                Found::Mark {
                    lsn, durable_lsn, ..
                } => found.push(Valid {
                    offset: off,
                    lsn,
                    durable_lsn,
                    mark: true,
                }),
                _ => {}
            }
            off += FRAME_ALIGN;
        }
        Ok(found)
    }

    fn walk(
        &mut self,
        seed: u32,
        first_lsn: Lsn,
        record_max: u32,
        stop_after: Option<Lsn>,
    ) -> std::io::Result<Walk> {
        let mut off = SEGMENT_HEADER_BYTES;
        let mut expected = first_lsn;
        let mut w = Walk {
            complete_end: off,
            last_complete: first_lsn - 1,
            stop_offset: off,
            stop: Stop::End,
            keys: Vec::new(),
        };
        loop {
            w.stop_offset = off;
            if stop_after.is_some_and(|l| w.last_complete >= l && w.complete_end == off) {
                w.stop = Stop::Limit;
                return Ok(w);
            }
            w.stop = match self.decode(off, seed, record_max)? {
                Found::Frame {
                    lsn,
                    continues,
                    total,
                    key,
                    ..
                } if lsn == expected => {
                    if let Some(k) = key.filter(|k| !w.keys.iter().any(|(i, _)| i == k)) {
                        w.keys.push((k, off as u64));
                    }
                    off += total;
                    expected += 1;
                    if !continues {
                        w.complete_end = off;
                        w.last_complete = lsn;
                    }
                    continue;
                }
                Found::Mark {
                    lsn,
                    durable_lsn,
                    closed,
                } if lsn == expected => Stop::Mark {
                    lsn,
                    durable_lsn,
                    closed,
                },
                Found::Frame { lsn, .. } | Found::Mark { lsn, .. } => Stop::Lsn {
                    expected,
                    found: lsn,
                },
                Found::Zero => Stop::Zero,
                Found::End => Stop::End,
                Found::Bad(e) => Stop::Bad(e),
            };
            return Ok(w);
        }
    }
}

/// A valid frame or mark found by the scan after the first bad position.
#[derive(Clone, Copy, Debug)]
struct Valid {
    offset: usize,
    lsn: Lsn,
    durable_lsn: Lsn,
    mark: bool,
}

/// Index just past the last non-zero byte, or 0.
fn nonzero_end(buf: &[u8]) -> usize {
    let mut end = buf.len();
    // Word-at-a-time from the back: preallocated segments are mostly zeros.
    while end >= 8 {
        let w = u64::from_ne_bytes(buf[end - 8..end].try_into().expect("8 bytes"));
        if w != 0 {
            break;
        }
        end -= 8;
    }
    while end > 0 && buf[end - 1] == 0 {
        end -= 1;
    }
    end
}

/// Reads the directory and checks every segment. Changes nothing on disk. `progress` is called
/// with (bytes done, bytes total) after each segment.
pub fn analyze(
    fs: &dyn Fs,
    dir: &Path,
    record_max: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Layout> {
    let (listed, tmp_files) = list(fs, dir)?;
    analyze_listed(fs, &listed, tmp_files, record_max, progress)
}

/// [`analyze`] over segment files already listed (a suffix of the directory's, see
/// `needed::analyze_from`).
pub(crate) fn analyze_listed(
    fs: &dyn Fs,
    listed: &[Listed],
    tmp_files: Vec<PathBuf>,
    record_max: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Layout> {
    let mut layout = Layout {
        tmp_files,
        ..Layout::default()
    };
    for pair in listed.windows(2) {
        if pair[0].first == pair[1].first {
            return Err(Corruption {
                file: pair[1].path.clone(),
                offset: 0,
                last_good_lsn: None,
                kind: CorruptionKind::DuplicateSegment {
                    other: pair[0].path.clone(),
                },
                valid_frame_after: None,
            }
            .into());
        }
    }
    let mut lens = Vec::with_capacity(listed.len());
    for l in listed {
        let f = fs
            .open(&l.path, OpenMode::Read)
            .map_err(|e| Error::io("open segment", &l.path, e))?;
        lens.push(f.len().map_err(|e| Error::io("stat segment", &l.path, e))?);
    }
    let total = lens.iter().sum();
    progress(0, total);

    for (i, l) in listed.iter().enumerate() {
        let prev = layout.segments.last();
        let prev_last = prev.map(|p| p.last_lsn);
        let corrupt = |offset: usize, last_good: Option<Lsn>, kind: CorruptionKind| -> Error {
            Corruption {
                file: l.path.clone(),
                offset: offset as u64,
                last_good_lsn: last_good.filter(|&g| g > 0),
                kind,
                valid_frame_after: None,
            }
            .into()
        };
        let len = lens[i];
        if len > SEGMENT_BYTES_LIMIT {
            return Err(corrupt(
                0,
                prev_last,
                CorruptionKind::FileTooLarge {
                    len,
                    max: SEGMENT_BYTES_LIMIT,
                },
            ));
        }
        let len = len as usize;
        let file = fs
            .open(&l.path, OpenMode::Read)
            .map_err(|e| Error::io("open segment", &l.path, e))?;
        let mut win = Window::new(&*file, len);
        let read_err = |e| Error::io("read segment", &l.path, e);
        layout.bytes_scanned += len as u64;
        let head = win.at(0, SEGMENT_HEADER_BYTES).map_err(read_err)?;
        let header = SegmentHeader::decode(head)
            .map_err(|h| corrupt(0, prev_last, CorruptionKind::SegmentHeader(h)))?;
        if header.first_lsn != l.first {
            return Err(corrupt(
                0,
                prev_last,
                CorruptionKind::NameMismatch {
                    name_first_lsn: l.first,
                    header_first_lsn: header.first_lsn,
                },
            ));
        }
        if let Some(p) = prev {
            if header.segment_id != p.id + 1 {
                return Err(corrupt(
                    0,
                    prev_last,
                    CorruptionKind::SegmentIdGap {
                        expected: p.id + 1,
                        found: header.segment_id,
                    },
                ));
            }
            if header.first_lsn != p.last_lsn + 1 {
                return Err(corrupt(
                    0,
                    prev_last,
                    CorruptionKind::LsnGap {
                        expected: p.last_lsn + 1,
                        found: header.first_lsn,
                    },
                ));
            }
        }
        if let SegName::Sealed { first, last } = l.name {
            if last < first || last > LSN_MAX {
                return Err(corrupt(
                    0,
                    prev_last,
                    CorruptionKind::BadSealedRange { first, last },
                ));
            }
        }
        let seed = segment_seed(header.segment_id);
        let record_max = crate::format::payload_max(record_max, header.encrypted);
        let is_last = i + 1 == listed.len();
        // A segment with a successor or a sealed name was fully synced: it must be complete.
        let expected_last = match l.name {
            SegName::Sealed { last, .. } => Some(last),
            _ if !is_last => Some(listed[i + 1].first - 1),
            _ => None,
        };
        let w = win
            .walk(seed, header.first_lsn, record_max, expected_last)
            .map_err(read_err)?;
        let good = |w: &Walk| {
            Some(w.last_complete)
                .filter(|&g| g >= header.first_lsn)
                .or(prev_last)
        };

        if let Some(expected_last) = expected_last {
            if w.stop == Stop::Limit && w.last_complete != expected_last {
                // A batch ran past the LSN where this segment must end.
                return Err(corrupt(
                    w.stop_offset,
                    good(&w),
                    CorruptionKind::SegmentOverruns {
                        expected_last,
                        found_last: w.last_complete,
                    },
                ));
            }
            if w.stop != Stop::Limit {
                let found_last = Some(w.last_complete).filter(|&g| g >= header.first_lsn);
                let (offset, kind) = match w.stop {
                    Stop::Bad(e) => (w.stop_offset, CorruptionKind::Frame(e)),
                    Stop::Lsn { expected, found } => (
                        w.stop_offset,
                        CorruptionKind::LsnOutOfOrder { expected, found },
                    ),
                    _ => (
                        w.complete_end,
                        CorruptionKind::SegmentEndsEarly {
                            expected_last,
                            found_last,
                        },
                    ),
                };
                return Err(corrupt(offset, good(&w), kind));
            }
            // Rotation shrinks a segment to its last frame, but a mark right after it is true
            // and harmless: accept it.
            let mut data_end = w.complete_end;
            if let Found::Mark { lsn, .. } = win
                .decode(w.complete_end, seed, record_max)
                .map_err(read_err)?
            {
                if lsn == expected_last + 1 {
                    data_end += MARK_BYTES;
                }
            }
            if win.nonzero_end(data_end).map_err(read_err)? != data_end {
                return Err(corrupt(data_end, good(&w), CorruptionKind::DataAfterEnd));
            }
        } else {
            // A mark at a batch boundary ends the records; what follows it must be zeros, and
            // anything else is analysed from just after it.
            let mut cut = w.complete_end;
            let (mut stop, mut stop_offset) = (w.stop, w.stop_offset);
            let mut mark_at = None;
            if let Stop::Mark {
                lsn,
                durable_lsn,
                closed,
            } = w.stop
            {
                if w.stop_offset == w.complete_end {
                    mark_at = Some((w.stop_offset, lsn));
                    layout.end_mark = Some(EndMark {
                        offset: w.stop_offset as u64,
                        durable_lsn,
                        closed,
                    });
                    cut = w.stop_offset + MARK_BYTES;
                    stop_offset = cut;
                    stop = match win.decode(cut, seed, record_max).map_err(read_err)? {
                        Found::Zero => Stop::Zero,
                        Found::End => Stop::End,
                        Found::Bad(e) => Stop::Bad(e),
                        Found::Frame { lsn: found, .. } | Found::Mark { lsn: found, .. } => {
                            Stop::Lsn {
                                expected: lsn,
                                found,
                            }
                        }
                    };
                }
            }
            let tail_end = win.nonzero_end(cut).map_err(read_err)?;
            let clean = cut == stop_offset && tail_end == cut;
            if !clean {
                // Is there proof that something at or after the cut had been durable?
                let found = win
                    .valid_frames_in(seed, record_max, cut, tail_end)
                    .map_err(read_err)?;
                let cut_lsn = w.last_complete + 1;
                let proof = found.iter().find(|v| v.durable_lsn >= cut_lsn);
                if let Some(v) = proof.filter(|_| !crate::mutated("truncate_at_first_bad")) {
                    let (offset, kind) = match (mark_at, stop) {
                        // Durable records follow where the mark stands: the mark is stale.
                        (Some((at, lsn)), _) => (at, CorruptionKind::MisplacedMark { lsn }),
                        (None, Stop::Bad(e)) => (stop_offset, CorruptionKind::Frame(e)),
                        (None, Stop::Lsn { expected, found }) => (
                            stop_offset,
                            CorruptionKind::LsnOutOfOrder { expected, found },
                        ),
                        (None, Stop::Mark { lsn, .. }) => {
                            (stop_offset, CorruptionKind::MisplacedMark { lsn })
                        }
                        (None, _) => (stop_offset, CorruptionKind::Hole),
                    };
                    return Err(Corruption {
                        file: l.path.clone(),
                        offset: offset as u64,
                        last_good_lsn: good(&w).filter(|&g| g > 0),
                        kind,
                        valid_frame_after: Some((v.offset as u64, v.lsn)),
                    }
                    .into());
                }
                let reason = match stop {
                    _ if cut != stop_offset
                        && matches!(stop, Stop::Zero | Stop::End | Stop::Mark { .. }) =>
                    {
                        TornReason::IncompleteBatch
                    }
                    Stop::Bad(e) => TornReason::Frame(e),
                    Stop::Lsn { expected, found } => TornReason::LsnOutOfOrder { expected, found },
                    _ => TornReason::StrayBytes,
                };
                layout.torn = Some(TornTail {
                    file: l.path.clone(),
                    offset: cut as u64,
                    end: (tail_end.div_ceil(FRAME_ALIGN) * FRAME_ALIGN) as u64,
                    reason,
                    // Marks hold no data.
                    valid_frames_cut: found.iter().filter(|v| !v.mark).count() as u64,
                });
            }
        }
        layout.segments.push(SegmentInfo {
            id: header.segment_id,
            path: l.path.clone(),
            first_lsn: header.first_lsn,
            last_lsn: w.last_complete,
            sealed: matches!(l.name, SegName::Sealed { .. }),
            end_offset: w.complete_end as u64,
            file_bytes: len as u64,
            encrypted: header.encrypted,
            key_ids: if header.encrypted { w.keys } else { Vec::new() },
        });
        progress(layout.bytes_scanned, total);
    }
    if let Some(t) = &mut layout.torn {
        let len = layout.segments.last().map_or(0, |s| s.file_bytes);
        t.end = t.end.min(len);
    }
    Ok(layout)
}

/// Copies `[offset, end)` of `file` into `dir/torn/<name>@<offset>`, synced. Returns its path.
pub(crate) fn save_side_file(
    fs: &dyn Fs,
    dir: &Path,
    file: &Path,
    offset: u64,
    end: u64,
) -> std::io::Result<PathBuf> {
    let torn_dir = dir.join(TORN_DIR);
    durable_create_dir_all(fs, &torn_dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let src = fs.open(file, OpenMode::Read)?;
    let mut bytes = vec![0u8; (end - offset) as usize];
    fs::read_exact_at(&*src, &mut bytes, offset)?;
    // Never overwrite an earlier copy: a recovery that crashed while zeroing left a good one,
    // and the bytes now on disk may be half zeroed.
    let mut side = torn_dir.join(format!("{name}@{offset}"));
    let mut n = 0;
    while fs.exists(&side)? {
        n += 1;
        side = torn_dir.join(format!("{name}@{offset}.{n}"));
    }
    let result = (|| {
        let out = fs.open(&side, OpenMode::CreateNew)?;
        write_all_at(&*out, &bytes, 0)?;
        out.sync_all()?;
        fs.sync_dir(&torn_dir)
    })();
    if let Err(e) = result {
        // Best effort: a half-written copy is worse than none.
        let _ = fs.remove_file(&side);
        return Err(e);
    }
    Ok(side)
}

/// Overwrites `[offset, end)` with zeros and syncs. Needs no free space: the blocks exist.
pub(crate) fn zero_range(fs: &dyn Fs, file: &Path, offset: u64, end: u64) -> std::io::Result<()> {
    let f = fs.open(file, OpenMode::ReadWrite)?;
    let zeros = vec![0u8; ((end - offset) as usize).min(1 << 20)];
    let mut at = offset;
    while at < end {
        let n = ((end - at) as usize).min(zeros.len());
        write_all_at(&*f, &zeros[..n], at)?;
        at += n as u64;
    }
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&open_name(5)), Some(SegName::Open { first: 5 }));
        assert_eq!(
            parse_name(&sealed_name(5, 90)),
            Some(SegName::Sealed { first: 5, last: 90 })
        );
        assert_eq!(parse_name(&tmp_name(5)), Some(SegName::Tmp));
        assert_eq!(parse_name(&spare_name(5)), Some(SegName::Tmp));
        assert_eq!(parse_name("wal-12.open"), None);
        assert_eq!(parse_name("LOCK"), None);
        assert!(open_name(9) < open_name(10));
    }

    #[test]
    fn nonzero_end_finds_last_byte() {
        assert_eq!(nonzero_end(&[0; 100]), 0);
        let mut b = vec![0u8; 100];
        b[37] = 1;
        assert_eq!(nonzero_end(&b), 38);
        b[99] = 1;
        assert_eq!(nonzero_end(&b), 100);
    }
}
