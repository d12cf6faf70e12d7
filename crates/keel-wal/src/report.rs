use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::needed::UnneededDamage;
use crate::recovery::{EndMark, TornReason};
use crate::Lsn;

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    /// First LSN in the log (`last_lsn + 1` when empty).
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub bytes_scanned: u64,
    pub duration: Duration,
    pub torn_tail: Option<TornTailReport>,
    /// The mark after the last record, as found before the log was opened: `closed` after a
    /// clean close. `None` after a crash that lost the last mark, or for a log written by a keel
    /// that did not write marks.
    pub end_mark: Option<EndMark>,
    /// Half-created segment files (a crash during creation) that were removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// Segments whose rotation a crash interrupted, sealed now.
    pub sealed_on_open: Vec<PathBuf>,
    /// A new active segment, when there was none to continue.
    pub created_segment: Option<PathBuf>,
    /// Damage below the LSNs the caller needed ([`crate::Wal::open_from`]): left out of the log,
    /// not fatal. The files stay on disk.
    pub unneeded_damage: Vec<UnneededDamage>,
}

impl RecoveryReport {
    pub fn records(&self) -> u64 {
        (self.last_lsn + 1).saturating_sub(self.first_lsn)
    }
}

/// A torn tail that recovery cut.
#[derive(Clone, Debug)]
pub struct TornTailReport {
    pub file: PathBuf,
    /// The log now ends here.
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: TornReason,
    /// Complete frames inside the cut bytes: written, never proven durable, never acknowledged
    /// under `SyncPolicy::Always`.
    pub valid_frames_cut: u64,
    /// Where the cut bytes were kept.
    pub side_file: Option<PathBuf>,
    /// Why they could not be kept (for example, a full disk: recovery needs no free space, so it
    /// cuts anyway).
    pub side_file_error: Option<String>,
}

impl fmt::Display for TornTailReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "torn tail cut: {} bytes at offset {} of {} ({:?}; {} complete but unsynced frames)",
            self.bytes_cut,
            self.offset,
            self.file.display(),
            self.reason,
            self.valid_frames_cut
        )?;
        match (&self.side_file, &self.side_file_error) {
            (Some(p), _) => write!(f, "; cut bytes kept in {}", p.display()),
            (None, Some(e)) => write!(f, "; cut bytes could NOT be kept: {e}"),
            (None, None) => Ok(()),
        }
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} records (LSN {}..={}) from {} segments, {} bytes scanned in {:.1?}",
            self.records(),
            self.first_lsn,
            self.last_lsn,
            self.segments,
            self.bytes_scanned,
            self.duration
        )?;
        match self.end_mark {
            Some(m) if m.closed && m.durable_lsn == self.last_lsn => {
                write!(f, "; closed cleanly at LSN {}", m.durable_lsn)?
            }
            Some(m) if m.durable_lsn == self.last_lsn => write!(
                f,
                "; not closed cleanly, but a mark proves the log durable through LSN {}",
                m.durable_lsn
            )?,
            Some(m) => write!(
                f,
                "; not closed cleanly (the end mark covers LSN {} only)",
                m.durable_lsn
            )?,
            None if self.records() == 0 => {}
            None => write!(f, "; not closed cleanly (no end mark)")?,
        }
        if let Some(t) = &self.torn_tail {
            write!(f, "; {t}")?;
        }
        if !self.removed_temp_files.is_empty() {
            write!(
                f,
                "; removed {} half-created segment(s)",
                self.removed_temp_files.len()
            )?;
        }
        if !self.sealed_on_open.is_empty() {
            write!(
                f,
                "; sealed {} segment(s) after an interrupted rotation",
                self.sealed_on_open.len()
            )?;
        }
        for d in &self.unneeded_damage {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}
