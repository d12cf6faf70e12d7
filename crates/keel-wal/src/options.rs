use std::sync::Arc;
use std::time::Duration;

use crate::crypt::Keyring;
use crate::error::{Error, Result};
use crate::format::{frame_bytes, MARK_BYTES, SEGMENT_HEADER_BYTES};
use crate::fs::{Fs, StdFs};

/// When an append is acknowledged, and so what a crash can take away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// The default. An append returns only after an `fdatasync` (`F_FULLFSYNC` on macOS) that
    /// covers its record has completed. Concurrent appends share one sync (group commit).
    /// **A crash of any kind — process, kernel, power — takes away nothing that was acknowledged.**
    #[default]
    Always,
    /// An append returns once its record is written to the operating system; a sync runs at least
    /// every `Duration`. A process crash takes away nothing acknowledged. **A kernel crash or power
    /// cut takes away up to the last `Duration` of acknowledged appends** (plus the time the sync
    /// itself takes). What survives is always a prefix of the log.
    Interval(Duration),
    /// An append returns once its record is written to the operating system; the log syncs only
    /// when a segment is sealed, on `sync()` and on `close()`. A process crash takes away nothing
    /// acknowledged. **A kernel crash or power cut can take away every append since the last of
    /// those syncs.** What survives is always a prefix of the log.
    Never,
}

/// Configuration of a log. `Options::default()` is the durable configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub sync_policy: SyncPolicy,
    /// A segment is sealed and a new one started when the next batch would not fit. Default 64 MiB.
    pub segment_bytes_max: u64,
    /// Largest payload of one record. Recovery refuses frames that declare more. Default 16 MiB.
    pub record_bytes_max: u32,
    /// Largest batch, frames included. A batch lives in one segment. Default 32 MiB.
    pub batch_bytes_max: usize,
    /// Bytes of records queued for the I/O thread before appends wait (backpressure). Default
    /// 64 MiB. A single batch larger than this is still admitted once the queue is empty.
    pub queue_bytes_max: usize,
    /// Write zeros over a new segment before it becomes active, so that appends overwrite
    /// allocated blocks and the following `fdatasync` need not commit a size change. Otherwise
    /// space is only reserved with `fallocate`. Default true.
    pub zero_fill_segments: bool,
    /// Prepare the next segment on a helper thread once the active one is half full, so rotation
    /// does not stall appends. Off in deterministic simulation, where all I/O must come from one
    /// thread in a reproducible order. Default true.
    pub prepare_segments_in_background: bool,
    /// The file system everything goes through. Default: the real one.
    pub fs: Arc<dyn Fs>,
    /// Encryption at rest. With a keyring, new segments are format version 2 and every record is
    /// sealed with the keyring's first key; every key of it opens. Without one (the default),
    /// records are plaintext and a log holding encrypted segments is refused at open.
    pub keyring: Option<Arc<Keyring>>,
    /// Run first on each thread the log starts (its I/O thread, its ack thread, and the thread
    /// that prepares the next segment), on that thread. `keel serve` passes one that makes them
    /// `SCHED_BATCH`: such a thread, woken, does not preempt the running thread but waits for it
    /// to block or for the scheduler's tick, so that on a busy core the thread that queued an
    /// append goes on to queue the appends of the other requests it has in hand, and they share
    /// one sync. Default `None`.
    pub thread_start: Option<fn()>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync_policy: SyncPolicy::Always,
            segment_bytes_max: 64 << 20,
            record_bytes_max: 16 << 20,
            batch_bytes_max: 32 << 20,
            queue_bytes_max: 64 << 20,
            zero_fill_segments: true,
            prepare_segments_in_background: true,
            fs: StdFs::shared(),
            keyring: None,
            thread_start: None,
        }
    }
}

/// Hard ceiling on a segment file: nothing keel writes is larger, so a larger file is refused
/// before it is read.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 30;

impl Options {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOptions(m));
        if self.segment_bytes_max > SEGMENT_BYTES_LIMIT || self.segment_bytes_max < 4096 {
            return bad(format!(
                "segment_bytes_max must be between 4096 and {SEGMENT_BYTES_LIMIT}, got {}",
                self.segment_bytes_max
            ));
        }
        if !self.segment_bytes_max.is_multiple_of(4096) {
            return bad("segment_bytes_max must be a multiple of 4096".into());
        }
        // A batch, and the mark frame written after it, always fit in an empty segment.
        if (SEGMENT_HEADER_BYTES + self.batch_bytes_max + MARK_BYTES) as u64
            > self.segment_bytes_max
        {
            return bad(format!(
                "batch_bytes_max ({}) plus the segment header and a mark frame ({} bytes) must \
                 fit in segment_bytes_max ({})",
                self.batch_bytes_max,
                SEGMENT_HEADER_BYTES + MARK_BYTES,
                self.segment_bytes_max
            ));
        }
        if frame_bytes(self.record_bytes_max as usize + self.seal_bytes()) > self.batch_bytes_max {
            return bad(format!(
                "a record of record_bytes_max ({}) must fit in batch_bytes_max ({})",
                self.record_bytes_max, self.batch_bytes_max
            ));
        }
        if let SyncPolicy::Interval(d) = self.sync_policy {
            if d.is_zero() {
                return bad("SyncPolicy::Interval needs a non-zero duration; use Always".into());
            }
        }
        Ok(())
    }

    /// Bytes sealing adds to each record's payload: 0 without a keyring.
    pub fn seal_bytes(&self) -> usize {
        if self.keyring.is_some() {
            crate::crypt::SEAL_BYTES
        } else {
            0
        }
    }

    /// Options for small logs in tests: 64 KiB segments, 16 KiB batches.
    pub fn small_for_tests() -> Self {
        Options {
            segment_bytes_max: 64 << 10,
            record_bytes_max: 8 << 10,
            batch_bytes_max: 16 << 10,
            queue_bytes_max: 256 << 10,
            ..Options::default()
        }
    }
}
