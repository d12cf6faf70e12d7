//! The engine's error type. It names the record's and the snapshot file's own errors, so it sits
//! above those formats.

use std::path::{Path, PathBuf};

use keel_wal::Lsn;

use crate::record::RecordError;
use crate::snapshot::FileError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wal(#[from] keel_wal::Error),
    #[error("key of {len} bytes exceeds key_bytes_max ({max})")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes exceeds value_bytes_max ({max})")]
    ValueTooLarge { len: usize, max: usize },
    #[error("transaction of {bytes} bytes exceeds the log's record_bytes_max ({max})")]
    TxnTooLarge { bytes: usize, max: usize },
    #[error("request id of {len} bytes exceeds {max}")]
    RequestIdTooLong { len: usize, max: usize },
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    /// The write fence ([`Options::write_fence`](crate::Options::write_fence)) was set when the
    /// write was decided; nothing was written.
    #[error("writes are fenced: the system entry named by Options::write_fence is set")]
    Fenced,
    #[error("log record at LSN {lsn} is not a valid engine record: {source}")]
    BadRecord {
        lsn: Lsn,
        #[source]
        source: RecordError,
    },
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest or the snapshot it names is damaged or does not match: refusing to guess.
    #[error("{path} is not usable: {source}. The database refuses to open rather than lose or invent data")]
    BadFile {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    /// No complete path from a snapshot (or the empty state) to the end of the log exists:
    /// records are missing or damaged beyond what any retained file can make up for (P13).
    #[error("{}", no_path_message(.dir, .damaged, .detail))]
    NoCompletePath {
        dir: PathBuf,
        /// Every damaged file found on the way, with what is wrong with it.
        damaged: Vec<String>,
        /// Which LSNs cannot be reached, and why.
        detail: String,
    },
    /// A restore cannot reach the point asked for with what the source retains.
    #[error("cannot restore: {0}")]
    NotRestorable(String),
}

fn no_path_message(dir: &Path, damaged: &[String], detail: &str) -> String {
    let mut m = String::from(
        "the database refuses to open: no complete path to the acknowledged state exists. ",
    );
    if !damaged.is_empty() {
        m.push_str("Damaged: ");
        m.push_str(&damaged.join("; "));
        m.push_str(". ");
    }
    m.push_str(detail);
    m.push_str(&format!(
        ". No file was moved or removed. Inspect with `keel verify {}`, and keep a copy of the directory before changing anything",
        dir.display()
    ));
    m
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
