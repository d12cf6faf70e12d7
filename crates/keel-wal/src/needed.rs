//! Opening a log of which only the records from some LSN on are needed: an engine whose snapshot
//! holds everything before that LSN. Damage in segments that lie wholly below it costs nothing
//! (the snapshot has those records), so it is reported and not fatal. The damaged files, and any
//! segment before them, stay where they are for inspection; the log then starts at the first
//! segment after the damage. Damage that reaches into the needed range still fails closed.
//!
//! A damaged segment that also holds needed records (the one containing `needed_from`, with the
//! damage below `needed_from`) is not skipped: the segment's chain of frames is read from its
//! start, so a bad frame before `needed_from` hides the frames after it. It fails closed;
//! `repair_from` can then restart that segment at `needed_from` (see `repair.rs`).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Corruption, CorruptionKind, Error, Result};
use crate::fs::Fs;
use crate::recovery::{analyze_listed, list, Layout};
use crate::Lsn;

/// Damage that the log was opened past, because it lies wholly below the LSNs that were needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnneededDamage {
    /// What is damaged and where.
    pub corruption: Corruption,
    /// The segment files left out of the log: the damaged one and every one before it. They stay
    /// on disk, untouched.
    pub files_left_out: Vec<PathBuf>,
    /// The LSNs those files were meant to hold, which the log no longer offers: `first..=last`.
    pub lsns: (Lsn, Lsn),
}

impl fmt::Display for UnneededDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "damage below the LSNs needed, left out of the log: LSNs {}..={} in {} file(s), left in place ({})",
            self.lsns.0,
            self.lsns.1,
            self.files_left_out.len(),
            self.corruption.kind
        )?;
        write!(
            f,
            " in {} at byte offset {}",
            self.corruption.file.display(),
            self.corruption.offset
        )
    }
}

/// [`crate::recovery::analyze`] for a log of which only LSNs `>= needed_from` are needed. With
/// `needed_from <= 1` it is `analyze`.
pub(crate) fn analyze_from(
    fs: &dyn Fs,
    dir: &Path,
    record_max: u32,
    needed_from: Lsn,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Layout, Vec<UnneededDamage>)> {
    let (listed, tmp_files) = list(fs, dir)?;
    if needed_from <= 1 {
        // Everything is needed: exactly the log's own recovery.
        return analyze_listed(fs, &listed, tmp_files, record_max, progress)
            .map(|l| (l, Vec::new()));
    }
    let mut skipped = Vec::new();
    let mut start = 0;
    loop {
        let c = match analyze_listed(
            fs,
            &listed[start..],
            tmp_files.clone(),
            record_max,
            progress,
        ) {
            Ok(layout) => return Ok((layout, skipped)),
            Err(Error::Corruption(c)) => c,
            Err(e) => return Err(e),
        };
        let Some(i) = listed[start..]
            .iter()
            .position(|l| l.path == c.file)
            .map(|i| start + i)
        else {
            return Err(Error::Corruption(c));
        };
        // Where the log can start again, if the damage lies wholly below `needed_from`.
        let restart = match c.kind {
            // A missing segment before this one: the log can start at this one if it holds
            // `needed_from` or begins below it.
            CorruptionKind::LsnGap { .. } | CorruptionKind::SegmentIdGap { .. }
                if i > start && listed[i].first <= needed_from =>
            {
                Some(i)
            }
            CorruptionKind::LsnGap { .. } | CorruptionKind::SegmentIdGap { .. } => None,
            // Damage inside this segment: skip it if the next segment starts at or below
            // `needed_from`, so that every needed LSN lies there or after. (Normally that means
            // all this segment holds lies below; after `repair_from` restarted the needed part of
            // a damaged segment as a new one, a crash can leave both, and the new one is used.)
            // Two segments claiming the same first LSN are ambiguous: never guess between them.
            CorruptionKind::DuplicateSegment { .. } => None,
            _ => listed
                .get(i + 1)
                .is_some_and(|n| n.first > listed[i].first && n.first <= needed_from)
                .then_some(i + 1),
        };
        let Some(restart) = restart else {
            return Err(Error::Corruption(c));
        };
        skipped.push(UnneededDamage {
            files_left_out: listed[start..restart]
                .iter()
                .map(|l| l.path.clone())
                .collect(),
            lsns: (listed[start].first, listed[restart].first - 1),
            corruption: *c,
        });
        start = restart;
    }
}
