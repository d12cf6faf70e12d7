//! keel-engine: an embedded key-value engine on keel-wal.
//!
//! Every write is one transaction: version guards, then writes evaluated in order. The
//! **sequencer** decides each transaction against all earlier ones, durable or still in flight,
//! under one lock, and hands its absolute effects to the WAL in that same order. The WAL's LSN is
//! then both the commit order and the version of every key the transaction wrote.
//!
//! Two states exist:
//! - the *pending* state, which the sequencer alone uses: every decided transaction, durable or
//!   not;
//! - the *visible* state, which readers use: only transactions whose WAL record is durable,
//!   applied strictly in LSN order (P10). Readers never wait on a sync; they read under the
//!   visible state's read lock ([`Engine::read`]), which publishing takes for writing once per
//!   batch of records.
//!
//! [`Core::checkpoint`] writes a snapshot, commits it through an atomically replaced manifest
//! and only then prunes the log (P6); a background thread does it by log size and by time.
//! Recovery loads the snapshot the manifest names and replays only the log after it (P7).
//! [`Core::commit_request`] makes retries idempotent (P8). [`restore`] rebuilds the database as
//! of any retained LSN or time into a new directory, and [`Core::backup`] copies it online (P9).
//!
//! ```no_run
//! use keel_engine::{Engine, Options};
//! let (engine, report) = Engine::open("data", Options::default())?;
//! println!("{report}");
//! engine.put("k", "v")?; // durable and visible when this returns
//! assert_eq!(engine.get(b"k").unwrap().value, "v");
//! # Ok::<(), keel_engine::Error>(())
//! ```
//!
//! # Layout
//!
//! The modules are layered, each importing only from the layers below it, never from above:
//!
//! 1. the vocabulary: `types` (entries, writes, outcomes) and `util` (clock, locks, hashing);
//! 2. `record`, the log record's format;
//! 3. the keyspace: `table` (the typed hash table) and `keyspace` (the map over it, the system
//!    namespace beside it, [`ReadView`], change sets). Reads and writes of single keys go through it; above it, only
//!    whole images of the state are handled (loaded, merged, cloned and written by recovery,
//!    checkpoints, backup and restore);
//! 4. `snapshot`, the snapshot file's and the manifest's format;
//! 5. `error` and `options` ([`Error`] names the record's and the snapshot file's errors);
//! 6. `decide` (a transaction against a decided state) and `publish` (the visible state);
//! 7. `seq` (the sequencer's state) and `sequencer` (deciding, logging, combining);
//! 8. `checkpoint`, then `damage` and `restore`;
//! 9. `engine`: opening, [`Engine`] and [`Core`].
//!
//! A new piece goes in the lowest layer whose modules it needs. A lower layer that must call a
//! higher one takes what it needs as an argument (as `decide` takes any `Decided` state, and
//! the checkpoints take the sequencer) rather than importing it.
#![forbid(unsafe_code)]

// The layers, from the bottom up (see "Layout" above). Within a layer the order is also
// bottom-up.

// The vocabulary.
mod types;
mod util;

// The log record.
pub mod record;

// The keyspace.
mod bits;
mod keyspace;
mod sort;
mod zsets;

// The snapshot file.
pub mod snapshot;
pub mod table;

// Errors and options.
mod error;
mod options;

// Deciding and publishing.
mod decide;
mod publish;

// The sequencer and its combining.
mod seq;
mod sequencer;

// Checkpoints, damage, restore and backup.
mod checkpoint;
mod damage;
mod restore;

// The engine.
mod engine;

pub use bits::{bitfield_apply, bitfield_len};
pub use checkpoint::CheckpointInfo;
pub use damage::{inspect, DamagedFile, Health, Inspection, SnapshotCheck, DAMAGED_DIR};
pub use engine::{Core, Engine, Pending, RecoveryReport};
pub use error::{Error, Result};
pub use keyspace::ReadView;
pub use options::{Options, WAL_DIR};
pub use record::{Mutation, RecordError, Request, REQUEST_ID_BYTES_MAX};
pub use restore::{
    create_from_snapshot, read_system, rekey, restore, BackupView, RestoreReport, RestoreTarget,
};
pub use sequencer::{Recorded, Script};
pub use sort::parse_double;
pub use types::{
    Aggregate, BitFieldAction, BitFieldOp, BitOp, Claim, ClaimTime, Entry, ExpireIf, Guard,
    KeyEffect, LexBound, Outcome, Overflow, PendingRange, PutIf, Read, Refs, SetOp, SortSpec,
    StreamId, StreamIdSpec, StreamTrim, StreamTrimBy, Ttl, Write, WriteError, WriteResult, ZCmp,
    ZRange,
};
pub use zsets::{format_score, zset_combine};
