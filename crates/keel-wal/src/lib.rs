//! keel-wal: a write-ahead log that never acknowledges ahead of the disk.
//!
//! - Records are checksummed, 8-byte-aligned frames in preallocated segments ([`format`]).
//! - Appends share syncs through group commit; under the default [`SyncPolicy::Always`] an
//!   append returns only once its record is durable.
//! - Recovery cuts a torn tail and fails closed on everything else, with a typed [`Corruption`].
//!   A mark frame after the last record, written after an idle sync and (synced) on close, proves
//!   the log durable, so after a clean close no damage is taken for a torn tail.
//! - After a failed write or sync the log is poisoned: nothing more is acknowledged.
//! - All I/O goes through the [`Fs`] seam, so crash tests can run on a simulated file system.
//!
//! ```no_run
//! use keel_wal::{Options, Wal};
//! let (wal, report) = Wal::open("data/wal", Options::default())?;
//! println!("{report}");
//! let lsn = wal.append(b"hello")?; // durable when this returns
//! for rec in wal.read_from(lsn)? {
//!     println!("{} {:?}", rec?.lsn, "...");
//! }
//! # Ok::<(), keel_wal::Error>(())
//! ```
#![forbid(unsafe_code)]

pub mod crypt;
mod error;
pub mod format;
pub mod fs;
mod needed;
mod options;
mod read;
mod recovery;
mod rekey;
mod repair;
mod report;
mod wal;

/// True when the deliberate bug `name` is switched on (feature `mutations` plus
/// `KEEL_MUTATION=name`). Always false, and compiled away, in real builds.
#[cfg(feature = "mutations")]
pub(crate) fn mutated(name: &str) -> bool {
    static ACTIVE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ACTIVE.get_or_init(|| std::env::var("KEEL_MUTATION").unwrap_or_default()) == name
}
#[cfg(not(feature = "mutations"))]
#[inline(always)]
pub(crate) fn mutated(_: &str) -> bool {
    false
}

/// Log sequence number. The first record of a log is LSN 1; LSNs are consecutive.
pub type Lsn = u64;

pub use crypt::{KeyError, KeyId, Keyring};
pub use error::{Corruption, CorruptionKind, Error, Result};
pub use fs::{Fs, FsFile, OpenMode, StdFs};
pub use needed::UnneededDamage;
pub use options::{Options, SyncPolicy, SEGMENT_BYTES_LIMIT};
pub use read::{LogReader, Record, WalIter};
pub use recovery::{
    EndMark, SegmentInfo, TornReason, TornTail, LOCK_FILE, QUARANTINE_DIR, TORN_DIR,
};
pub use rekey::rekey;
pub use repair::{repair, repair_from, ForcedCut, RepairReport};
pub use report::{RecoveryReport, TornTailReport};
pub use wal::{
    AckedFuture, AppendFuture, Completion, RoomFuture, Ticket, Wal, WalStats, SYNC_BUCKETS,
};
