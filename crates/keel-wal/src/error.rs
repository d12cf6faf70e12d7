use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::{FrameError, HeaderError};
use crate::Lsn;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the log can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error, with what keel was doing and on which path.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log on disk is damaged in a way that is not a torn tail. Recovery refuses to guess.
    #[error(transparent)]
    Corruption(Box<Corruption>),
    /// An earlier write or sync failed; this log acknowledges nothing more. Reopen it to recover.
    #[error("the log is poisoned and acknowledges nothing more; reopen it to run recovery. First failure: {0}")]
    Poisoned(Arc<Error>),
    #[error("record of {len} bytes exceeds record_bytes_max ({max})")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("batch of {bytes} bytes on disk exceeds batch_bytes_max ({max})")]
    BatchTooLarge { bytes: usize, max: usize },
    #[error("a batch needs at least one record")]
    EmptyBatch,
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("LSN {lsn} is out of range: the log holds {first}..={last}")]
    LsnOutOfRange { lsn: Lsn, first: Lsn, last: Lsn },
    #[error("LSN {lsn} falls inside an atomic batch; truncate at a batch boundary")]
    InsideBatch { lsn: Lsn },
    /// Another process, or another `Wal` in this process, has the directory open.
    #[error("{path} is locked by another open log")]
    Locked { path: PathBuf },
    #[error("the log is closed")]
    Closed,
    /// The encryption key is missing, unknown or wrong. Nothing was changed because of it.
    #[error(transparent)]
    Key(#[from] crate::crypt::KeyError),
    /// `repair --force` would cut the log below `needed_from`, the first LSN its owner needs
    /// (for a database: the LSN after the snapshot it opens from). Cutting would make things
    /// worse, so nothing was changed.
    #[error("refusing to cut: {corruption}. Cutting there would end the log at LSN {kept_end}, but its owner (a database's snapshot) needs the log from LSN {needed_from} on, so it could no longer open; nothing was changed")]
    CutBelowNeeded {
        corruption: Box<Corruption>,
        kept_end: Lsn,
        needed_from: Lsn,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The corruption finding, if this is one.
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            Error::Corruption(c) => Some(c),
            _ => None,
        }
    }

    /// The first failure behind a poisoned log, or the error itself.
    pub fn root(&self) -> &Error {
        match self {
            Error::Poisoned(first) => first.root(),
            e => e,
        }
    }
}

impl From<Corruption> for Error {
    fn from(c: Corruption) -> Self {
        Error::Corruption(Box::new(c))
    }
}

/// Where the log is damaged and how. Produced by recovery and by `keel wal verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The segment file.
    pub file: PathBuf,
    /// Byte offset in that file where the damage starts.
    pub offset: u64,
    /// The last LSN before the damage that recovery could prove good, if any.
    pub last_good_lsn: Option<Lsn>,
    pub kind: CorruptionKind,
    /// A valid frame found after the damage, which is what makes this corruption and not a torn
    /// tail: (its offset, its LSN).
    pub valid_frame_after: Option<(u64, Lsn)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorruptionKind {
    /// The segment header is damaged.
    SegmentHeader(HeaderError),
    /// A frame is damaged.
    Frame(FrameError),
    /// A frame holds the wrong LSN.
    LsnOutOfOrder { expected: Lsn, found: Lsn },
    /// Zeros where a durable frame should be.
    Hole,
    /// A mark frame (the end of the log when it was written) where durable record `lsn` belongs.
    MisplacedMark { lsn: Lsn },
    /// A segment does not start where the previous one ended: a segment is missing.
    LsnGap { expected: Lsn, found: Lsn },
    /// Segment ids are not consecutive: a segment is missing.
    SegmentIdGap { expected: u64, found: u64 },
    /// A segment that must be complete (it has a successor, or a sealed name) ends early.
    SegmentEndsEarly {
        expected_last: Lsn,
        found_last: Option<Lsn>,
    },
    /// A batch runs past the LSN where a complete segment must end.
    SegmentOverruns { expected_last: Lsn, found_last: Lsn },
    /// A sealed name claims an empty or backwards range; keel seals only segments with frames.
    BadSealedRange { first: Lsn, last: Lsn },
    /// Bytes that are not zeros after the end of a complete segment.
    DataAfterEnd,
    /// The file name and the header disagree about the first LSN.
    NameMismatch {
        name_first_lsn: Lsn,
        header_first_lsn: Lsn,
    },
    /// Two segment files claim the same first LSN.
    DuplicateSegment { other: PathBuf },
    /// A segment file larger than any keel writes.
    FileTooLarge { len: u64, max: u64 },
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::SegmentHeader(h) => match h {
                HeaderError::Short { len } => write!(f, "segment header is short ({len} bytes)"),
                HeaderError::BadMagic => write!(f, "bad magic: not a keel log segment"),
                HeaderError::UnsupportedVersion { found } => write!(
                    f,
                    "unsupported format version {found} (this keel reads versions {} and {})",
                    crate::format::FORMAT_VERSION,
                    crate::format::FORMAT_VERSION_ENCRYPTED
                ),
                HeaderError::Checksum { expected, found } => write!(
                    f,
                    "segment header checksum mismatch (expected {expected:#010x}, found {found:#010x})"
                ),
                HeaderError::BadField => write!(f, "segment header has an invalid field"),
            },
            CorruptionKind::Frame(e) => match e {
                FrameError::Truncated { needed, available } => {
                    write!(f, "truncated frame ({needed} bytes needed, {available} present)")
                }
                FrameError::HeaderChecksum { expected, found } => write!(
                    f,
                    "frame header checksum mismatch (expected {expected:#010x}, found {found:#010x})"
                ),
                FrameError::BadLength { len, max } => {
                    write!(f, "frame length {len} exceeds the limit {max}")
                }
                FrameError::PayloadChecksum { expected, found } => write!(
                    f,
                    "payload checksum mismatch (expected {expected:#010x}, found {found:#010x})"
                ),
                FrameError::BadKind { kind } => write!(f, "unknown frame kind {kind}"),
                FrameError::BadFlags { flags } => write!(f, "unknown frame flags {flags:#04x}"),
                FrameError::BadField => write!(f, "frame has an invalid field"),
            },
            CorruptionKind::LsnOutOfOrder { expected, found } => {
                write!(f, "frame holds LSN {found} where LSN {expected} belongs")
            }
            CorruptionKind::Hole => write!(f, "zeros where a durable frame belongs"),
            CorruptionKind::MisplacedMark { lsn } => {
                write!(f, "an end-of-log mark stands where durable LSN {lsn} belongs")
            }
            CorruptionKind::LsnGap { expected, found } => write!(
                f,
                "LSN gap: segment starts at LSN {found}, the previous segment ends before LSN {expected}"
            ),
            CorruptionKind::SegmentIdGap { expected, found } => {
                write!(f, "segment id {found} follows where id {expected} belongs")
            }
            CorruptionKind::SegmentEndsEarly {
                expected_last,
                found_last,
            } => match found_last {
                Some(l) => write!(f, "segment ends at LSN {l}, expected it to end at LSN {expected_last}"),
                None => write!(f, "segment holds no frame, expected it to end at LSN {expected_last}"),
            },
            CorruptionKind::SegmentOverruns {
                expected_last,
                found_last,
            } => write!(
                f,
                "segment holds LSNs up to {found_last}, but must end at LSN {expected_last}"
            ),
            CorruptionKind::BadSealedRange { first, last } => write!(
                f,
                "sealed name claims LSNs {first}..={last}, but a sealed segment holds at least one record"
            ),
            CorruptionKind::DataAfterEnd => write!(f, "unexpected data after the end of a complete segment"),
            CorruptionKind::NameMismatch {
                name_first_lsn,
                header_first_lsn,
            } => write!(
                f,
                "file name says first LSN {name_first_lsn}, header says {header_first_lsn}"
            ),
            CorruptionKind::DuplicateSegment { other } => {
                write!(f, "same first LSN as {}", other.display())
            }
            CorruptionKind::FileTooLarge { len, max } => {
                write!(f, "segment is {len} bytes, larger than any keel writes ({max})")
            }
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "log corruption in {} at byte offset {}: {}",
            self.file.display(),
            self.offset,
            self.kind
        )?;
        if let Some((offset, lsn)) = self.valid_frame_after {
            write!(
                f,
                "; the frame or mark at offset {offset} (LSN {lsn}) records a sync that covers \
                 this place, so this is not a torn tail"
            )?;
        }
        match self.last_good_lsn {
            Some(l) => write!(f, "; last good LSN {l}")?,
            None => write!(f, "; no good LSN before it")?,
        }
        let dir = self
            .file
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".".into());
        write!(
            f,
            ". Inspect with `keel wal verify {dir}`; `keel wal repair --force {dir}` cuts the log \
             there and moves everything after it aside"
        )
    }
}

impl std::error::Error for Corruption {}
