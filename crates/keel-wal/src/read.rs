//! Reading the log: replay, replication and `keel wal dump`.

use std::path::Path;
use std::sync::Arc;

use crate::crypt::{KeyError, Keyring};
use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::format::{
    decode_frame, frame_bytes, payload_max, segment_seed, Decoded, Frame, SegmentHeader,
    FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::fs::{read_exact_at, Fs, OpenMode};
use crate::needed::{analyze_from, UnneededDamage};
use crate::options::Options;
use crate::recovery::{EndMark, SegmentInfo, TornTail};
use crate::Lsn;

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub payload: Vec<u8>,
    /// The next record belongs to the same atomic batch.
    pub more_in_batch: bool,
}

/// A read-only view of a log directory. Opening it checks the whole log exactly as recovery does,
/// but changes nothing on disk: a torn tail is reported, not cut.
#[derive(Debug)]
pub struct LogReader {
    fs: Arc<dyn Fs>,
    segments: Vec<SegmentInfo>,
    record_max: u32,
    torn: Option<TornTail>,
    end_mark: Option<EndMark>,
    bytes_scanned: u64,
    unneeded_damage: Vec<UnneededDamage>,
    keyring: Option<Arc<Keyring>>,
}

impl LogReader {
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> Result<Self> {
        Self::open_with_progress(dir, options, &mut |_, _| {})
    }

    pub fn open_with_progress(
        dir: impl AsRef<Path>,
        options: &Options,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        Self::open_from(dir, options, 1, progress)
    }

    /// Like [`LogReader::open_with_progress`], needing only the records from `needed_from` on:
    /// damage wholly below it is left out of the view and listed in
    /// [`LogReader::unneeded_damage`], as [`crate::Wal::open_from`] does.
    pub fn open_from(
        dir: impl AsRef<Path>,
        options: &Options,
        needed_from: Lsn,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self> {
        let dir = dir.as_ref();
        if !options
            .fs
            .exists(dir)
            .map_err(|e| Error::io("open log directory", dir, e))?
        {
            return Err(Error::io(
                "open log directory",
                dir,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let (layout, unneeded_damage) = analyze_from(
            &*options.fs,
            dir,
            options.record_bytes_max,
            needed_from,
            progress,
        )?;
        // Without a keyring the log is still checked (the checksums need no key); only reading
        // an encrypted record needs one.
        if let Some(ring) = &options.keyring {
            check_keys(&*options.fs, &layout.segments, Some(ring))?;
        }
        Ok(LogReader {
            keyring: options.keyring.clone(),
            unneeded_damage,
            fs: options.fs.clone(),
            segments: layout.segments,
            record_max: options.record_bytes_max,
            torn: layout.torn,
            end_mark: layout.end_mark,
            bytes_scanned: layout.bytes_scanned,
        })
    }

    pub(crate) fn from_parts(
        fs: Arc<dyn Fs>,
        segments: Vec<SegmentInfo>,
        record_max: u32,
        keyring: Option<Arc<Keyring>>,
    ) -> Self {
        LogReader {
            keyring,
            fs,
            segments,
            record_max,
            torn: None,
            end_mark: None,
            bytes_scanned: 0,
            unneeded_damage: Vec::new(),
        }
    }

    pub fn segments(&self) -> &[SegmentInfo] {
        &self.segments
    }

    /// The torn tail that opening the log for writing would cut.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// The mark after the last record, if the log ends with one: `closed` when the last writer
    /// closed the log cleanly. Its `durable_lsn` covers every record before it when the whole
    /// log is proven durable.
    pub fn end_mark(&self) -> Option<EndMark> {
        self.end_mark
    }

    /// Damage below the LSNs asked for, left out of this view (see [`LogReader::open_from`]).
    pub fn unneeded_damage(&self) -> &[UnneededDamage] {
        &self.unneeded_damage
    }

    pub fn bytes_scanned(&self) -> u64 {
        self.bytes_scanned
    }

    /// First LSN in the log; `last_lsn() + 1` if the log holds nothing.
    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(1, |s| s.first_lsn)
    }

    pub fn last_lsn(&self) -> Lsn {
        self.segments.last().map_or(0, |s| s.last_lsn)
    }

    /// Every record from `from` to the end of the log.
    pub fn iter_from(&self, from: Lsn) -> Result<WalIter> {
        self.iter_range(from, self.last_lsn())
    }

    pub(crate) fn iter_range(&self, from: Lsn, upper: Lsn) -> Result<WalIter> {
        let (first, last) = (self.first_lsn(), self.last_lsn());
        if from < first || from > last + 1 {
            return Err(Error::LsnOutOfRange {
                lsn: from,
                first,
                last,
            });
        }
        let start = self
            .segments
            .iter()
            .rposition(|s| s.first_lsn <= from)
            .unwrap_or(0);
        Ok(WalIter {
            fs: self.fs.clone(),
            segments: self.segments[start..].to_vec(),
            idx: 0,
            from,
            upper,
            next_lsn: self.segments.get(start).map_or(from, |s| s.first_lsn),
            record_max: self.record_max,
            keyring: self.keyring.clone(),
            encrypted: false,
            buf: Vec::new(),
            off: 0,
            seed: 0,
            loaded: false,
            failed: false,
        })
    }

    /// Byte offset in `seg` where LSN `lsn` starts (its end offset for `last_lsn + 1`).
    /// `Ok(Err)` when `lsn` falls inside an atomic batch.
    pub(crate) fn offset_of(&self, seg: &SegmentInfo, lsn: Lsn) -> Result<Result<u64>> {
        let buf = load(&*self.fs, seg)?;
        let (seed, encrypted) = seed_of(seg, &buf)?;
        let max = payload_max(self.record_max, encrypted);
        let mut off = SEGMENT_HEADER_BYTES;
        let mut expected = seg.first_lsn;
        let mut inside_batch = false;
        while expected < lsn {
            match decode_frame(&buf[off..], seed, max) {
                Decoded::Frame(f) if f.lsn == expected => {
                    off += f.total_bytes;
                    expected += 1;
                    inside_batch = f.batch_continues();
                }
                other => return Err(changed(seg, off, expected, other)),
            }
        }
        if inside_batch {
            return Ok(Err(Error::InsideBatch { lsn: lsn - 1 }));
        }
        Ok(Ok(off as u64))
    }
}

fn load(fs: &dyn Fs, seg: &SegmentInfo) -> Result<Vec<u8>> {
    let file = fs
        .open(&seg.path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", &seg.path, e))?;
    let mut buf = vec![0u8; seg.end_offset as usize];
    read_exact_at(&*file, &mut buf, 0).map_err(|e| Error::io("read segment", &seg.path, e))?;
    Ok(buf)
}

/// The segment's CRC seed, and whether its payloads are sealed.
fn seed_of(seg: &SegmentInfo, buf: &[u8]) -> Result<(u32, bool)> {
    let h = SegmentHeader::decode(buf).map_err(|h| {
        Error::from(Corruption {
            file: seg.path.clone(),
            offset: 0,
            last_good_lsn: None,
            kind: CorruptionKind::SegmentHeader(h),
            valid_frame_after: None,
        })
    })?;
    Ok((segment_seed(h.segment_id), h.encrypted))
}

/// The associated data a data frame's payload is sealed with: its LSN and its flags, so that a
/// sealed payload moved to another LSN or batch position no longer opens.
pub(crate) fn frame_aad(lsn: Lsn, flags: u8) -> [u8; 9] {
    let mut a = [0u8; 9];
    a[..8].copy_from_slice(&lsn.to_le_bytes());
    a[8] = flags;
    a
}

/// Refuses a log the keyring cannot read before anything is changed: an encrypted segment and no
/// keyring, a key id the keyring lacks, or a key that does not open the first frame sealed with
/// it. Damage is not this check's business: recovery has already told it by the checksums.
pub(crate) fn check_keys(
    fs: &dyn Fs,
    segments: &[SegmentInfo],
    keyring: Option<&Keyring>,
) -> Result<()> {
    for s in segments.iter().filter(|s| s.encrypted) {
        let Some(ring) = keyring else {
            return Err(KeyError::Missing {
                what: format!("the log segment {}", s.path.display()),
            }
            .into());
        };
        for &(id, offset) in &s.key_ids {
            let what = format!("the log frame at offset {offset} of {}", s.path.display());
            if !ring.contains(id) {
                return Err(KeyError::Unknown {
                    what,
                    id,
                    have: ring
                        .ids()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into());
            }
            let file = fs
                .open(&s.path, OpenMode::Read)
                .map_err(|e| Error::io("open segment", &s.path, e))?;
            let read_err = |e| Error::io("read segment", &s.path, e);
            let mut head = [0u8; FRAME_HEADER_BYTES];
            read_exact_at(&*file, &mut head, offset).map_err(read_err)?;
            let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
            let room = s.end_offset.saturating_sub(offset) as usize;
            let mut buf = vec![0u8; frame_bytes(len).min(room)];
            read_exact_at(&*file, &mut buf, offset).map_err(read_err)?;
            if let Decoded::Frame(f) = decode_frame(&buf, segment_seed(s.id), u32::MAX) {
                ring.open(&what, &frame_aad(f.lsn, f.flags), f.payload)?;
            }
        }
    }
    Ok(())
}

/// The bytes no longer hold what recovery verified: damage since, or a concurrent truncation.
fn changed(seg: &SegmentInfo, off: usize, expected: Lsn, found: Decoded<'_>) -> Error {
    let kind = match found {
        Decoded::Bad(e) => CorruptionKind::Frame(e),
        Decoded::Frame(f) => CorruptionKind::LsnOutOfOrder {
            expected,
            found: f.lsn,
        },
        Decoded::Mark(_) => CorruptionKind::MisplacedMark { lsn: expected },
        Decoded::Zero | Decoded::End => CorruptionKind::Hole,
    };
    Corruption {
        file: seg.path.clone(),
        offset: off as u64,
        last_good_lsn: Some(expected - 1).filter(|&l| l > 0),
        kind,
        valid_frame_after: None,
    }
    .into()
}

/// Iterator over records, yielding an error (once) if a segment is damaged or vanished.
pub struct WalIter {
    fs: Arc<dyn Fs>,
    segments: Vec<SegmentInfo>,
    idx: usize,
    from: Lsn,
    upper: Lsn,
    next_lsn: Lsn,
    record_max: u32,
    keyring: Option<Arc<Keyring>>,
    /// The loaded segment's payloads are sealed.
    encrypted: bool,
    buf: Vec<u8>,
    off: usize,
    seed: u32,
    loaded: bool,
    failed: bool,
}

impl WalIter {
    fn open_payload(&self, seg: &SegmentInfo, f: &Frame<'_>) -> Result<Vec<u8>> {
        // Formatted only if opening fails: this runs for every record of an encrypted log.
        let what = format_args!("the record at LSN {} in {}", f.lsn, seg.path.display());
        let Some(ring) = &self.keyring else {
            return Err(KeyError::Missing {
                what: what.to_string(),
            }
            .into());
        };
        Ok(ring.open(&what, &frame_aad(f.lsn, f.flags), f.payload)?)
    }
}

impl Iterator for WalIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.next_lsn > self.upper {
                return None;
            }
            let seg = self.segments.get(self.idx)?;
            if !self.loaded {
                let loaded = load(&*self.fs, seg).and_then(|b| Ok((seed_of(seg, &b)?, b)));
                match loaded {
                    Ok(((seed, encrypted), buf)) => {
                        self.seed = seed;
                        self.encrypted = encrypted;
                        self.buf = buf;
                        self.off = SEGMENT_HEADER_BYTES;
                        self.loaded = true;
                    }
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            if self.off >= self.buf.len() {
                self.idx += 1;
                self.loaded = false;
                continue;
            }
            let max = payload_max(self.record_max, self.encrypted);
            match decode_frame(&self.buf[self.off..], self.seed, max) {
                Decoded::Frame(f) if f.lsn == self.next_lsn => {
                    self.off += f.total_bytes;
                    self.next_lsn += 1;
                    if f.lsn >= self.from {
                        let payload = if self.encrypted {
                            match self.open_payload(seg, &f) {
                                Ok(p) => p,
                                Err(e) => {
                                    self.failed = true;
                                    return Some(Err(e));
                                }
                            }
                        } else {
                            f.payload.to_vec()
                        };
                        return Some(Ok(Record {
                            lsn: f.lsn,
                            payload,
                            more_in_batch: f.batch_continues(),
                        }));
                    }
                }
                other => {
                    self.failed = true;
                    return Some(Err(changed(seg, self.off, self.next_lsn, other)));
                }
            }
        }
    }
}
