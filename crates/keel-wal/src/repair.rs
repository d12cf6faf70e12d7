//! `keel wal repair`: make a damaged log openable again without deleting anything.

use std::path::{Path, PathBuf};

use crate::error::{Corruption, Error, Result};
use crate::fs::{durable_create_dir_all, durable_rename, read_exact_at, write_all_at, OpenMode};
use crate::needed::analyze_from;
use crate::options::Options;
use crate::recovery::{open_name, parse_name, SegName, QUARANTINE_DIR};
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
            return Err(Error::CutBelowNeeded {
                corruption: Box::new(c),
                kept_end,
                needed_from,
            });
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
    })
}
