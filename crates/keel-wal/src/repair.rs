//! `keel wal repair`: make a damaged log openable again without deleting anything.

use std::path::{Path, PathBuf};

use crate::error::{Corruption, Error, Result};
use crate::format::{
    decode_frame, segment_seed, Decoded, SegmentHeader, FRAME_ALIGN, SEGMENT_HEADER_BYTES,
};
use crate::fs::{durable_create_dir_all, durable_rename, read_exact_at, write_all_at, OpenMode};
use crate::needed::analyze_from;
use crate::options::Options;
use crate::options::SEGMENT_BYTES_LIMIT;
use crate::recovery::{open_name, parse_name, sealed_name, tmp_name, SegName, QUARANTINE_DIR};
use crate::report::RecoveryReport;
use crate::wal::Wal;
use crate::Lsn;

/// What a forced cut did.
#[derive(Clone, Debug)]
pub struct ForcedCut {
    pub corruption: Corruption,
    /// The bytes of the damaged segment from the damage on, kept here (if any were cut).
    pub side_file: Option<PathBuf>,
    /// Whole segment files moved aside, the damaged one included if the damage was its header.
    pub quarantined: Vec<PathBuf>,
    /// Set when the damage lay below the LSNs needed, in the segment holding the first of them
    /// ([`repair_from`]): nothing was cut; this new segment holds that segment's frames from the
    /// first needed LSN on, and the damaged segment and those before it were moved aside.
    pub restarted_at: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct RepairReport {
    /// Corruption that `force` cut away, in the order found.
    pub forced_cuts: Vec<ForcedCut>,
    /// The recovery that then opened the log (it cuts a torn tail, if any).
    pub recovery: RecoveryReport,
}

/// Repairs the log in `dir`. A torn tail is cut as on every open. Corruption is refused unless
/// `force` is set; then the log is cut just before the damage, and everything after it (the rest
/// of that segment and every later segment) is moved into `dir/quarantine/`, never deleted.
pub fn repair(dir: impl AsRef<Path>, options: Options, force: bool) -> Result<RepairReport> {
    repair_from(dir, options, force, 1)
}

/// [`repair`] for a log of which only LSNs `>= needed_from` are needed (a database's log: the
/// LSN after its snapshot). Damage wholly below `needed_from` is left in place, as
/// [`Wal::open_from`] leaves it, and a cut that would end the log before `needed_from - 1` is
/// refused with [`Error::CutBelowNeeded`]: it would leave the database unopenable.
pub fn repair_from(
    dir: impl AsRef<Path>,
    options: Options,
    force: bool,
    needed_from: Lsn,
) -> Result<RepairReport> {
    let dir = dir.as_ref();
    let fs = options.fs.clone();
    let mut forced_cuts = Vec::new();
    loop {
        let c = match analyze_from(
            &*fs,
            dir,
            options.record_bytes_max,
            needed_from,
            &mut |_, _| {},
        ) {
            Ok(_) => break,
            Err(Error::Corruption(c)) if force => *c,
            Err(e) => return Err(e),
        };
        let kept_end = c.last_good_lsn.unwrap_or(0);
        if kept_end + 1 < needed_from {
            // The damage lies below `needed_from` in the segment that holds it: start that
            // segment at `needed_from` instead, if its frames from there on are intact.
            match split_at(&options, dir, &c, needed_from)? {
                Some(done) => {
                    forced_cuts.push(done);
                    continue;
                }
                None => {
                    return Err(Error::CutBelowNeeded {
                        corruption: Box::new(c),
                        kept_end,
                        needed_from,
                    })
                }
            }
        }
        forced_cuts.push(cut_at(&options, dir, c)?);
    }
    let (wal, recovery) = Wal::open_from(dir, options, needed_from, &mut |_, _| {})?;
    wal.close()?;
    Ok(RepairReport {
        forced_cuts,
        recovery,
    })
}

fn cut_at(options: &Options, dir: &Path, c: Corruption) -> Result<ForcedCut> {
    let fs = &*options.fs;
    let qdir = dir.join(QUARANTINE_DIR);
    durable_create_dir_all(fs, &qdir).map_err(|e| Error::io("create directory", &qdir, e))?;
    let io = |op, p: &Path, e| Error::io(op, p, e);
    let mut later: Vec<PathBuf> = fs
        .read_dir(dir)
        .map_err(|e| io("list directory", dir, e))?
        .into_iter()
        .filter(|n| {
            matches!(
                parse_name(n),
                Some(SegName::Open { .. } | SegName::Sealed { .. })
            )
        })
        .map(|n| dir.join(n))
        .filter(|p| p.as_path() > c.file.as_path())
        .collect();
    later.sort();
    let mut quarantined = Vec::new();
    // Newest first: a crash part-way leaves a shorter log that is still contiguous.
    let whole_file = c.offset == 0;
    if whole_file {
        later.push(c.file.clone());
    }
    for p in later.iter().rev() {
        let to = qdir.join(p.file_name().expect("segment file name"));
        durable_rename(fs, p, &to).map_err(|e| io("quarantine segment", p, e))?;
        quarantined.push(to);
    }
    let mut side_file = None;
    if !whole_file {
        let f = fs
            .open(&c.file, OpenMode::ReadWrite)
            .map_err(|e| io("open segment", &c.file, e))?;
        let len = f.len().map_err(|e| io("stat segment", &c.file, e))?;
        let name = c
            .file
            .file_name()
            .expect("segment file name")
            .to_string_lossy()
            .into_owned();
        let side = qdir.join(format!("{name}@{}", c.offset));
        let mut bytes = vec![0u8; (len - c.offset) as usize];
        read_exact_at(&*f, &mut bytes, c.offset).map_err(|e| io("read segment", &c.file, e))?;
        let out = fs
            .open(&side, OpenMode::CreateTruncate)
            .map_err(|e| io("create side file", &side, e))?;
        write_all_at(&*out, &bytes, 0).map_err(|e| io("write side file", &side, e))?;
        out.sync_all().map_err(|e| io("sync side file", &side, e))?;
        fs.sync_dir(&qdir)
            .map_err(|e| io("sync directory", &qdir, e))?;
        f.set_len(c.offset)
            .map_err(|e| io("cut segment", &c.file, e))?;
        f.sync_all().map_err(|e| io("sync segment", &c.file, e))?;
        side_file = Some(side);
        // It is the last segment now; a sealed name would claim records it no longer holds.
        if let Some(SegName::Sealed { first, .. }) = c
            .file
            .file_name()
            .and_then(|n| parse_name(&n.to_string_lossy()))
        {
            let open = dir.join(open_name(first));
            durable_rename(fs, &c.file, &open).map_err(|e| io("reopen segment", &c.file, e))?;
        }
    }
    Ok(ForcedCut {
        corruption: c,
        side_file,
        quarantined,
        restarted_at: None,
    })
}

/// For damage below `needed_from` inside the segment that holds `needed_from`: writes a new
/// segment with the same id whose first LSN is `needed_from`, holding the damaged segment's bytes
/// from the frame of `needed_from` on (frames are seeded with the segment id, not the first LSN,
/// so they stay valid byte for byte), then moves the damaged segment and every segment before it
/// into `quarantine/`. Nothing needed is cut, and every step leaves a log that this function
/// (run again) or `Wal::open_from(needed_from)` can continue from. `None` when this is not that
/// case or the frame of `needed_from` cannot be found.
fn split_at(
    options: &Options,
    dir: &Path,
    c: &Corruption,
    needed_from: Lsn,
) -> Result<Option<ForcedCut>> {
    let fs = &*options.fs;
    let io = |op, p: &Path, e| Error::io(op, p, e);
    let name = c.file.file_name().map(|n| n.to_string_lossy().into_owned());
    let (first, new_name) = match name.as_deref().and_then(parse_name) {
        Some(SegName::Sealed { first, last }) if first < needed_from && needed_from <= last => {
            (first, sealed_name(needed_from, last))
        }
        Some(SegName::Open { first }) if first < needed_from => (first, open_name(needed_from)),
        _ => return Ok(None),
    };
    let f = fs
        .open(&c.file, OpenMode::Read)
        .map_err(|e| io("open segment", &c.file, e))?;
    let len = f.len().map_err(|e| io("stat segment", &c.file, e))?;
    if len > SEGMENT_BYTES_LIMIT {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(&*f, &mut bytes, 0).map_err(|e| io("read segment", &c.file, e))?;
    drop(f);
    let Ok(header) = SegmentHeader::decode(&bytes) else {
        return Ok(None);
    };
    if header.first_lsn != first {
        return Ok(None);
    }
    let seed = segment_seed(header.segment_id);
    let from = (c.offset as usize)
        .max(SEGMENT_HEADER_BYTES)
        .div_ceil(FRAME_ALIGN)
        * FRAME_ALIGN;
    // The needed part starts at the frame of LSN `needed_from` or, when the log holds nothing
    // after the snapshot (a checkpoint at the last LSN, then a clean close), at the mark that
    // ends the log there: the restarted segment then holds only that mark.
    let start = (from..bytes.len()).step_by(FRAME_ALIGN).find(|&at| {
        let max = crate::format::payload_max(options.record_bytes_max, header.encrypted);
        match decode_frame(&bytes[at..], seed, max) {
            Decoded::Frame(f) => f.lsn == needed_from,
            Decoded::Mark(m) => m.lsn == needed_from,
            _ => false,
        }
    });
    let Some(start) = start else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(
        &SegmentHeader {
            first_lsn: needed_from,
            ..header
        }
        .encode(),
    );
    out.extend_from_slice(&bytes[start..]);
    // The same length as before: an active segment keeps its zero-filled room.
    out.resize(bytes.len(), 0);
    let new_path = dir.join(&new_name);
    let exists = fs.exists(&new_path).map_err(|e| io("stat", &new_path, e))?;
    if exists {
        // A run that a crash interrupted wrote it already; anything else is not ours to touch.
        let g = fs
            .open(&new_path, OpenMode::Read)
            .map_err(|e| io("open segment", &new_path, e))?;
        let mut have = vec![0u8; out.len()];
        let same = g.len().map_err(|e| io("stat segment", &new_path, e))? == out.len() as u64
            && read_exact_at(&*g, &mut have, 0).is_ok()
            && have == out;
        if !same {
            return Ok(None);
        }
    } else {
        let tmp = dir.join(tmp_name(needed_from));
        let t = fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(|e| io("create segment", &tmp, e))?;
        write_all_at(&*t, &out, 0).map_err(|e| io("write segment", &tmp, e))?;
        t.sync_all().map_err(|e| io("sync segment", &tmp, e))?;
        drop(t);
        durable_rename(fs, &tmp, &new_path).map_err(|e| io("rename segment", &tmp, e))?;
    }
    // Now move the damaged segment, then every one before it, aside: whichever of them a crash
    // leaves behind lies wholly below `needed_from` and is left out on open.
    let qdir = dir.join(QUARANTINE_DIR);
    durable_create_dir_all(fs, &qdir).map_err(|e| io("create directory", &qdir, e))?;
    let mut older: Vec<PathBuf> = fs
        .read_dir(dir)
        .map_err(|e| io("list directory", dir, e))?
        .into_iter()
        .filter(|n| match parse_name(n) {
            Some(SegName::Open { first: f } | SegName::Sealed { first: f, .. }) => f < first,
            _ => false,
        })
        .map(|n| dir.join(n))
        .collect();
    older.sort();
    let mut quarantined = Vec::new();
    for p in std::iter::once(&c.file).chain(older.iter().rev()) {
        let to = qdir.join(p.file_name().expect("segment file name"));
        durable_rename(fs, p, &to).map_err(|e| io("quarantine segment", p, e))?;
        quarantined.push(to);
    }
    Ok(Some(ForcedCut {
        corruption: c.clone(),
        side_file: None,
        quarantined,
        restarted_at: Some(new_path),
    }))
}
