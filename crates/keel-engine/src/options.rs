//! The engine's configuration and its directory layout.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};

/// The log's subdirectory of an engine directory.
pub const WAL_DIR: &str = "wal";

/// Engine configuration. `Options::default()` is the durable configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub wal: keel_wal::Options,
    /// Default 64 KiB.
    pub key_bytes_max: usize,
    /// Default 8 MiB. Must fit in one WAL record together with its key.
    pub value_bytes_max: usize,
    /// Request ids remembered for retries (P8): at most this many, the oldest forgotten first.
    /// Default 100,000.
    pub request_retention_count: usize,
    /// ... and none older than this. Default 24 hours. A retry after either limit is a new
    /// request.
    pub request_retention_ms: u64,
    /// Run a background thread for automatic checkpoints and active expiry. Default true. Off,
    /// checkpoints happen only when [`Core::checkpoint`](crate::Core::checkpoint) is called and expired keys are
    /// removed only when overwritten (they are never visible either way).
    pub background: bool,
    /// With `background`, also delete expired keys in the background (active expiry). Default
    /// true. Replicas turn it off: the deletions would be log records that only this machine
    /// decided.
    pub active_expiry: bool,
    /// Checkpoint once this many bytes were logged since the last one. Default 256 MiB;
    /// 0 = never by size. Bounds the log that recovery replays.
    pub checkpoint_log_bytes: u64,
    /// Checkpoint this long after the last one, if anything was written. Default 10 minutes.
    pub checkpoint_interval: Option<Duration>,
    /// Keep older snapshots and the log after them for this long, so that [`restore`](crate::restore()) can reach
    /// any point in the window. Default 0: a checkpoint keeps only the snapshot before its own
    /// and the log after that one (at most about `checkpoint_log_bytes` more than the newest
    /// snapshot needs), so that a damaged snapshot or manifest costs nothing (P13).
    pub retention: Duration,
    /// LZ4-compress snapshot blocks. Default true.
    pub compress_snapshots: bool,
    /// A system entry that fences user writes: while its value's first byte is nonzero, every
    /// transaction that writes a user key is decided as [`Outcome::Fenced`](crate::Outcome) and
    /// writes nothing. Transactions that write only system entries (the one that lifts the fence
    /// among them) and active expiry go on. Decided under the sequencer like a guard, so no write
    /// decided after the fence is set gets through, even before the fence is visible. Default
    /// `None`. keel serve's maintenance mode uses it.
    pub write_fence: Option<Bytes>,
    /// Every replica decides each transaction itself (a raft cluster's state machines), so
    /// SPOP must pick the same members on each, whatever order its tables keep: it ranks every
    /// member of the set, O(n). Default false: the engine decides alone and picks in O(count)
    /// from its own table; the members picked are logged, and recovery, restore and PITR
    /// apply them without deciding again.
    pub replicas_decide: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wal: keel_wal::Options::default(),
            key_bytes_max: 64 << 10,
            value_bytes_max: 8 << 20,
            request_retention_count: 100_000,
            request_retention_ms: 24 * 3600 * 1000,
            background: true,
            active_expiry: true,
            checkpoint_log_bytes: 256 << 20,
            checkpoint_interval: Some(Duration::from_secs(600)),
            retention: Duration::ZERO,
            compress_snapshots: true,
            write_fence: None,
            replicas_decide: false,
        }
    }
}

impl Options {
    /// Options for small engines in tests: the log's [`keel_wal::Options::small_for_tests`],
    /// keys up to 256 bytes and values up to 4 KiB.
    pub fn small_for_tests() -> Self {
        Options {
            wal: keel_wal::Options::small_for_tests(),
            key_bytes_max: 256,
            value_bytes_max: 4096,
            ..Options::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let max_record = self.wal.record_bytes_max as usize;
        if self.key_bytes_max + self.value_bytes_max + 64 > max_record {
            return Err(Error::InvalidOptions(format!(
                "key_bytes_max ({}) + value_bytes_max ({}) must fit in the log's record_bytes_max ({max_record})",
                self.key_bytes_max, self.value_bytes_max
            )));
        }
        if self.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOptions(
                "checkpoint_interval must be positive; use None to turn it off".into(),
            ));
        }
        Ok(self.wal.validate()?)
    }
}
