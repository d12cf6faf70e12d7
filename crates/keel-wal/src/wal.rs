//! The writer. One dedicated I/O thread owns the active segment. Appenders put records into a
//! bounded queue and get their LSNs at once; the I/O thread takes everything queued, writes it with
//! one write and one `fdatasync`, and then completes exactly the appends that sync covered.
//! Appends that arrive meanwhile form the next batch (group commit).
//!
//! Invariants the I/O thread keeps:
//! - A completion is signalled only after the sync that covers its record returned success
//!   (under `SyncPolicy::Always`), and after `durable_lsn` was published.
//! - After the first failed write or sync nothing is completed with success, nothing is synced
//!   again, and every queued and later append fails with `Error::Poisoned`.
//! - Every frame records the durable LSN at the time it was written (see `recovery`).
//! - A mark frame (see `format`) is written at the tail only after a sync returned success:
//!   when that sync leaves nothing queued (not synced itself; the next batch overwrites it), and
//!   on close after the final sync (synced). It is never written after a failure.

use std::future::Future;
use std::mem;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::format::{
    encode_frame, encode_mark, frame_bytes, segment_seed, SegmentHeader, FLAG_BATCH_CONTINUES,
    LSN_MAX, MARK_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::fs::{
    durable_create_dir_all, durable_remove, durable_rename, write_all_at, FsFile, OpenMode,
};
use crate::needed::analyze_from;
use crate::options::{Options, SyncPolicy};
use crate::read::{LogReader, WalIter};
use crate::recovery::{
    analyze, open_name, save_side_file, sealed_name, spare_name, tmp_name, zero_range, SegmentInfo,
    LOCK_FILE,
};
use crate::report::{RecoveryReport, TornTailReport};
use crate::Lsn;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug in keel; the data under them stays
    // consistent (plain counters and queues), so carry on rather than cascade.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` once, counted in the field `count` picks out of the guarded state while it
/// waits. A condition variable's notify is a syscall even when nobody waits, so notifiers check
/// the count first; the threads that wait here are few, and most waiting is done by futures.
fn counted_wait<'a, T>(
    cv: &Condvar,
    mut g: MutexGuard<'a, T>,
    count: fn(&mut T) -> &mut usize,
) -> MutexGuard<'a, T> {
    *count(&mut g) += 1;
    let mut g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
    *count(&mut g) -= 1;
    g
}

/// One waiter's result slot, completed exactly once: by the log when the append it was queued
/// with ([`Wal::submit_to`]) is acknowledged or fails, or by its owner. A caller can create it
/// before the append exists, hand the work to another thread, and be woken once, when the
/// append is acknowledged.
#[derive(Default)]
pub struct Completion {
    slot: Mutex<Slot>,
    cv: Condvar,
}

#[derive(Default)]
struct Slot {
    done: bool,
    result: Option<Result<Lsn>>,
    waker: Option<Waker>,
    /// Threads blocked in [`Completion::wait`]. Notifying the condition variable is a syscall
    /// even with nobody waiting, and most completions are awaited, not waited on.
    blocked: usize,
}

impl Completion {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Delivers `r` and wakes the waiter. Later calls are ignored.
    pub fn complete(&self, r: Result<Lsn>) {
        self.deliver(r, true);
    }

    /// Delivers `r` as [`Completion::complete`] does. With `wake_threads` false, a completion
    /// that a thread is blocked on (in [`Completion::wait`]) is left alone and false returned:
    /// waking a task is cheap, but waking a thread is a syscall and a context switch, which the
    /// I/O thread leaves to the ack thread.
    fn deliver(&self, r: Result<Lsn>, wake_threads: bool) -> bool {
        let mut s = lock(&self.slot);
        let blocked = s.blocked > 0;
        if blocked && !wake_threads {
            return false;
        }
        if s.done {
            return true;
        }
        s.done = true;
        s.result = Some(r);
        let waker = s.waker.take();
        drop(s);
        if blocked {
            self.cv.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Blocks until completed and takes the result; the log delivers the highest LSN of the
    /// append. A second call returns [`Error::Closed`].
    pub fn wait(&self) -> Result<Lsn> {
        let mut s = lock(&self.slot);
        loop {
            if let Some(r) = s.result.take() {
                return r;
            }
            if s.done {
                // Already taken by an earlier poll.
                return Err(Error::Closed);
            }
            s = counted_wait(&self.cv, s, |s| &mut s.blocked);
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Lsn>> {
        let mut s = lock(&self.slot);
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None if s.done => Poll::Ready(Err(Error::Closed)),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The records of one append, to be written together: one, the common case, without a vector
/// of its own (an allocation less per write), or a batch.
enum Records {
    One(Vec<u8>),
    Batch(Vec<Vec<u8>>),
}

impl Records {
    fn as_slice(&self) -> &[Vec<u8>] {
        match self {
            Records::One(r) => std::slice::from_ref(r),
            Records::Batch(b) => b,
        }
    }
}

impl Default for Records {
    fn default() -> Records {
        Records::Batch(Vec::new())
    }
}

enum Item {
    Append {
        records: Records,
        first_lsn: Lsn,
        done: Arc<Completion>,
    },
    Sync(Arc<Completion>),
    Prune(Lsn, Arc<Completion>),
    Truncate(Lsn, Arc<Completion>),
}

impl Item {
    fn done(&self) -> &Arc<Completion> {
        match self {
            Item::Append { done, .. }
            | Item::Sync(done)
            | Item::Prune(_, done)
            | Item::Truncate(_, done) => done,
        }
    }
}

struct Queue {
    items: Vec<Item>,
    bytes: usize,
    next_lsn: Lsn,
    poisoned: Option<Arc<Error>>,
    closed: bool,
    /// A truncate is in flight: LSNs after it are not known yet, so appends wait.
    truncating: bool,
    io_idle: bool,
    /// While `io_idle`, pushes wake the I/O thread once this many items are queued.
    wake_at: usize,
    space_wakers: Vec<Waker>,
    /// Threads blocked on `space_cv`. A condition variable's notify is a syscall even when
    /// nobody waits, and the I/O thread would pay it on every batch.
    space_waiters: usize,
}

impl Queue {
    fn check_open(&self) -> Result<()> {
        if let Some(p) = &self.poisoned {
            return Err(Error::Poisoned(p.clone()));
        }
        if self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn admits(&self, bytes: usize, max: usize) -> bool {
        !self.truncating && (self.bytes == 0 || self.bytes + bytes <= max)
    }
}

#[derive(Default)]
struct Progress {
    durable_lsn: Lsn,
    acked_lsn: Lsn,
    poisoned: Option<Arc<Error>>,
    /// Futures waiting for `acked_lsn` to reach an LSN.
    ack_wakers: Vec<(Lsn, Waker)>,
    /// Threads blocked on `progress_cv` (see `Queue::space_waiters`).
    waiters: usize,
}

impl Progress {
    fn wake(&mut self, all: bool) {
        let acked = self.acked_lsn;
        self.ack_wakers.retain(|(l, w)| {
            let done = all || *l <= acked;
            if done {
                w.wake_by_ref();
            }
            !done
        });
    }
}

/// Counters since the log was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended (acknowledged).
    pub records: u64,
    /// Append calls (a batch counts once).
    pub appends: u64,
    /// `write` calls that carried frames.
    pub writes: u64,
    /// Data syncs (`fdatasync`) issued for appends.
    pub syncs: u64,
    /// Total time spent in those syncs.
    pub sync_nanos: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
    /// Mark frames written (see `format`): after a sync that left nothing queued, and on close.
    /// Not counted in `writes` or `bytes_written`.
    pub marks: u64,
    /// Sync latencies: bucket `i` counts syncs that took less than 2^i µs (and at least
    /// 2^(i-1) µs); the last bucket also holds everything slower.
    pub sync_latency_buckets: [u64; SYNC_BUCKETS],
    /// Not a counter: bytes of records queued now, not yet taken by the I/O thread. Near
    /// `queue_bytes_max`, appends wait: the disk is not keeping up, or is stalled. The batch the
    /// I/O thread is writing is not counted, so records held in memory can reach about twice
    /// `queue_bytes_max`.
    pub queued_bytes: u64,
}

/// Number of sync-latency buckets in [`WalStats`]: up to 2^31 µs, about 36 minutes.
pub const SYNC_BUCKETS: usize = 32;

impl WalStats {
    /// Upper bound, in µs, of the sync latency below which a fraction `q` (0..=1) of syncs fell;
    /// exact to a factor of two. `None` before the first sync.
    pub fn sync_latency_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.sync_latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.sync_latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1 << i);
            }
        }
        Some(1 << (SYNC_BUCKETS - 1))
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn sync_buckets_and_quantiles() {
        assert_eq!(sync_bucket(Duration::from_nanos(500)), 0);
        assert_eq!(sync_bucket(Duration::from_micros(1)), 1);
        assert_eq!(sync_bucket(Duration::from_micros(3)), 2);
        assert_eq!(sync_bucket(Duration::from_micros(1000)), 10); // 512..1024
        assert_eq!(sync_bucket(Duration::from_secs(1 << 40)), SYNC_BUCKETS - 1);
        let mut s = WalStats::default();
        assert_eq!(s.sync_latency_quantile_us(0.5), None);
        s.sync_latency_buckets[10] = 99;
        s.sync_latency_buckets[14] = 1;
        assert_eq!(s.sync_latency_quantile_us(0.5), Some(1024));
        assert_eq!(s.sync_latency_quantile_us(0.99), Some(1024));
        assert_eq!(s.sync_latency_quantile_us(0.999), Some(16384));
    }
}

fn sync_bucket(d: Duration) -> usize {
    let us = d.as_micros() as u64;
    ((u64::BITS - us.leading_zeros()) as usize).min(SYNC_BUCKETS - 1)
}

#[derive(Default)]
struct Counters {
    sync_latency_buckets: [AtomicU64; SYNC_BUCKETS],
    records: AtomicU64,
    appends: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    bytes_written: AtomicU64,
    segments_created: AtomicU64,
    marks: AtomicU64,
    /// The slowest sync since [`Wal::take_slowest_sync`] last looked, in ns.
    slowest_sync_nanos: AtomicU64,
}

struct Shared {
    dir: PathBuf,
    opts: Options,
    queue: Mutex<Queue>,
    work_cv: Condvar,
    space_cv: Condvar,
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    segments: RwLock<Vec<SegmentInfo>>,
    counters: Counters,
    /// Runs on the ack thread before it wakes a batch of blocked threads (see [`Wal::on_acks`]).
    on_acks: OnceLock<AckHook>,
}

/// See [`Wal::on_acks`].
type AckHook = Box<dyn Fn(Lsn) + Send + Sync>;

impl Shared {
    fn batch_bytes<T: AsRef<[u8]>>(&self, records: &[T]) -> Result<usize> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let mut bytes = 0usize;
        let over = self.opts.seal_bytes();
        for r in records {
            let len = r.as_ref().len();
            if len > self.opts.record_bytes_max as usize {
                return Err(Error::RecordTooLarge {
                    len,
                    max: self.opts.record_bytes_max,
                });
            }
            bytes += frame_bytes(len + over);
        }
        if bytes > self.opts.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes,
                max: self.opts.batch_bytes_max,
            });
        }
        Ok(bytes)
    }

    fn push(&self, q: &mut Queue, records: Records, bytes: usize, done: Arc<Completion>) -> Ticket {
        let first = q.next_lsn;
        let last = first + records.as_slice().len() as u64 - 1;
        q.next_lsn = last + 1;
        q.bytes += bytes;
        q.items.push(Item::Append {
            records,
            first_lsn: first,
            done: done.clone(),
        });
        if q.io_idle && q.items.len() >= q.wake_at {
            // One wake per idle spell: the appends queued before the I/O thread runs need none.
            q.io_idle = false;
            self.work_cv.notify_one();
        }
        Ticket { first, last, done }
    }

    /// Queues a control item behind every append queued so far and waits for it.
    fn control(&self, make: impl FnOnce(Arc<Completion>) -> Item, truncate: bool) -> Result<Lsn> {
        let done = Arc::new(Completion::default());
        {
            let mut q = lock(&self.queue);
            while q.truncating {
                q = counted_wait(&self.space_cv, q, |q| &mut q.space_waiters);
            }
            q.check_open()?;
            q.truncating |= truncate;
            q.items.push(make(done.clone()));
            self.work_cv.notify_one();
        }
        done.wait()
    }
}

/// An append that has been queued. Its LSNs are known; [`Ticket::wait`] (or `.await`) returns once
/// the policy's acknowledgement point is reached: under `SyncPolicy::Always`, once durable.
#[must_use = "an append is not acknowledged until its ticket is waited on"]
pub struct Ticket {
    first: Lsn,
    last: Lsn,
    done: Arc<Completion>,
}

impl Ticket {
    pub fn lsns(&self) -> RangeInclusive<Lsn> {
        self.first..=self.last
    }

    /// Blocks until acknowledged. Do not call from an async executor thread; `.await` instead.
    pub fn wait(self) -> Result<RangeInclusive<Lsn>> {
        self.done.wait().map(|_| self.first..=self.last)
    }
}

impl Future for Ticket {
    type Output = Result<RangeInclusive<Lsn>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (first, last) = (self.first, self.last);
        self.done.poll(cx).map(|r| r.map(|_| first..=last))
    }
}

impl Shared {
    /// `Some` once waiting for `lsn` to be acknowledged is over, one way or the other.
    fn acked_state(&self, p: &Progress, lsn: Lsn) -> Option<Result<()>> {
        if p.acked_lsn >= lsn {
            return Some(Ok(()));
        }
        if let Some(e) = &p.poisoned {
            return Some(Err(Error::Poisoned(e.clone())));
        }
        if lock(&self.queue).closed {
            return Some(Err(Error::Closed));
        }
        None
    }
}

/// The future returned by [`Wal::acked`].
pub struct AckedFuture {
    shared: Arc<Shared>,
    lsn: Lsn,
}

impl Future for AckedFuture {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut p = lock(&self.shared.progress);
        match self.shared.acked_state(&p, self.lsn) {
            Some(r) => Poll::Ready(r),
            None => {
                p.ack_wakers.push((self.lsn, cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// The future returned by [`Wal::room`]: resolves once an append of its size would be queued
/// without waiting, or the log is closed or poisoned (the append then says so).
pub struct RoomFuture {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Future for RoomFuture {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut q = lock(&self.shared.queue);
        if q.check_open().is_err() || q.admits(self.bytes, self.shared.opts.queue_bytes_max) {
            return Poll::Ready(());
        }
        q.space_wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

/// The future returned by [`Wal::append_batch_async`]: waits for queue space without blocking a
/// thread, then for the acknowledgement.
pub struct AppendFuture {
    shared: Arc<Shared>,
    state: AppendState,
}

enum AppendState {
    Queue(Records, usize),
    Wait(Ticket),
    Failed(Option<Error>),
}

impl Future for AppendFuture {
    type Output = Result<RangeInclusive<Lsn>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                AppendState::Failed(e) => {
                    return Poll::Ready(Err(e.take().unwrap_or(Error::Closed)))
                }
                AppendState::Wait(t) => return Pin::new(t).poll(cx),
                AppendState::Queue(records, bytes) => {
                    let mut q = lock(&this.shared.queue);
                    if let Err(e) = q.check_open() {
                        this.state = AppendState::Failed(Some(e));
                        continue;
                    }
                    if !q.admits(*bytes, this.shared.opts.queue_bytes_max) {
                        q.space_wakers.push(cx.waker().clone());
                        return Poll::Pending;
                    }
                    let t = this
                        .shared
                        .push(&mut q, mem::take(records), *bytes, Completion::new());
                    drop(q);
                    this.state = AppendState::Wait(t);
                }
            }
        }
    }
}

/// The write-ahead log. Cheap to share between threads (`&Wal` is enough for every operation).
pub struct Wal {
    shared: Arc<Shared>,
    io_thread: Mutex<Option<JoinHandle<()>>>,
    /// The directory's lock, held until the I/O thread has stopped (see [`Wal::halt`]).
    lock_file: Mutex<Option<Box<dyn FsFile>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Active {
    file: Box<dyn FsFile>,
    path: PathBuf,
    id: u64,
    first_lsn: Lsn,
    offset: u64,
    /// Format version 2: payloads are sealed. Appends go only to a segment whose encryption
    /// matches the log's options; otherwise the writer rotates first.
    encrypted: bool,
}

/// The zeros that take a write ending at `end` to the end of its page (but not past the
/// segment). A segment is zero-filled past the page cache ([`FsFile::write_zeros`]), so a write
/// that stopped inside a page the cache does not hold would make the kernel read that page
/// from the disk first; a write that runs to the page's end never does, and the next write
/// starts inside a page the cache now holds. Past the last frame a segment holds zeros, so
/// the padding changes no byte.
fn page_padding(end: u64, segment_bytes_max: u64) -> usize {
    let page = crate::fs::ZERO_FILL_ALIGN;
    (end.next_multiple_of(page).min(segment_bytes_max.max(end)) - end) as usize
}

/// Creates a blank segment file under a temporary name: zeros (or reserved space) up to
/// `segment_bytes_max`, synced. It has no header yet, so it can never be mistaken for a segment.
fn prepare_blank(opts: &Options, tmp: &Path) -> Result<Box<dyn FsFile>> {
    let io = |op, e| Error::io(op, tmp, e);
    let file = opts
        .fs
        .open(tmp, OpenMode::CreateTruncate)
        .map_err(|e| io("create segment", e))?;
    if opts.zero_fill_segments {
        file.write_zeros(0, opts.segment_bytes_max)
            .map_err(|e| io("zero-fill segment", e))?;
    } else {
        file.allocate(0, opts.segment_bytes_max)
            .map_err(|e| io("preallocate segment", e))?;
    }
    file.sync_all().map_err(|e| io("sync new segment", e))?;
    Ok(file)
}

/// Turns a blank file into segment `id`: write and sync its header, then rename it into place and
/// sync the directory (P2). Only a complete, synced segment ever has a segment name.
fn activate(
    opts: &Options,
    dir: &Path,
    file: Box<dyn FsFile>,
    tmp: &Path,
    id: u64,
    first_lsn: Lsn,
) -> Result<Active> {
    let io = |op, e| Error::io(op, tmp, e);
    let header = SegmentHeader {
        segment_id: id,
        first_lsn,
        created_unix_ms: now_unix_ms(),
        encrypted: opts.keyring.is_some(),
    };
    let mut h = header.encode().to_vec();
    h.resize(
        h.len() + page_padding(h.len() as u64, opts.segment_bytes_max),
        0,
    );
    write_all_at(&*file, &h, 0).map_err(|e| io("write segment header", e))?;
    file.sync_data().map_err(|e| io("sync segment header", e))?;
    let path = dir.join(open_name(first_lsn));
    segment_rename(&*opts.fs, tmp, &path).map_err(|e| io("rename new segment", e))?;
    Ok(Active {
        file,
        path,
        id,
        first_lsn,
        offset: SEGMENT_HEADER_BYTES as u64,
        encrypted: header.encrypted,
    })
}

/// Renames a segment file durably: activation and sealing.
#[cfg(not(feature = "fault-skip-dir-sync"))]
fn segment_rename(fs: &dyn crate::fs::Fs, from: &Path, to: &Path) -> std::io::Result<()> {
    durable_rename(fs, from, to)
}

/// Negative control (tests/powercut): the rename without the directory sync after it.
#[cfg(feature = "fault-skip-dir-sync")]
fn segment_rename(fs: &dyn crate::fs::Fs, from: &Path, to: &Path) -> std::io::Result<()> {
    fs.rename(from, to)
}

/// Takes the log directory's lock: one open log (or offline tool that writes) at a time.
pub(crate) fn lock_dir(fs: &dyn crate::fs::Fs, dir: &Path) -> Result<Box<dyn FsFile>> {
    let lock_path = dir.join(LOCK_FILE);
    let lock_file = fs
        .open(&lock_path, OpenMode::CreateTruncate)
        .map_err(|e| Error::io("open lock file", &lock_path, e))?;
    if !lock_file
        .try_lock()
        .map_err(|e| Error::io("lock", &lock_path, e))?
    {
        return Err(Error::Locked {
            path: dir.to_path_buf(),
        });
    }
    Ok(lock_file)
}

fn create_segment(opts: &Options, dir: &Path, id: u64, first_lsn: Lsn) -> Result<Active> {
    let tmp = dir.join(tmp_name(first_lsn));
    let file = prepare_blank(opts, &tmp)?;
    activate(opts, dir, file, &tmp, id, first_lsn)
}

/// A blank segment being prepared in the background for the next rotation.
struct Spare {
    path: PathBuf,
    thread: JoinHandle<Result<Box<dyn FsFile>>>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, running recovery first. See [`RecoveryReport`].
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<(Wal, RecoveryReport)> {
        Self::open_with_progress(dir, options, &mut |_, _| {})
    }

    /// Like [`Wal::open`], calling `progress(bytes_done, bytes_total)` while recovery scans.
    pub fn open_with_progress(
        dir: impl AsRef<Path>,
        opts: Options,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Wal, RecoveryReport)> {
        Self::open_from(dir, opts, 1, progress)
    }

    /// Like [`Wal::open_with_progress`], for a caller that needs only the records from
    /// `needed_from` on (an engine whose snapshot holds everything before it). Damage in segments
    /// that lie wholly below `needed_from` is not fatal: the log starts after it, the files stay
    /// where they are, and [`RecoveryReport::unneeded_damage`] says what was left out. Damage that
    /// touches a needed LSN fails closed as in [`Wal::open`].
    pub fn open_from(
        dir: impl AsRef<Path>,
        opts: Options,
        needed_from: Lsn,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Wal, RecoveryReport)> {
        opts.validate()?;
        let started = Instant::now();
        let dir = dir.as_ref().to_path_buf();
        let fs = opts.fs.clone();
        durable_create_dir_all(&*fs, &dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let lock_file = lock_dir(&*fs, &dir)?;

        let (mut layout, unneeded_damage) =
            analyze_from(&*fs, &dir, opts.record_bytes_max, needed_from, progress)?;
        // A missing or wrong key stops here, before recovery changes anything.
        crate::read::check_keys(&*fs, &layout.segments, opts.keyring.as_deref())?;
        for d in &unneeded_damage {
            tracing::warn!("{d}");
        }
        let mut report = RecoveryReport {
            unneeded_damage,
            segments: layout.segments.len(),
            bytes_scanned: layout.bytes_scanned,
            ..RecoveryReport::default()
        };
        for tmp in &layout.tmp_files {
            durable_remove(&*fs, tmp).map_err(|e| Error::io("remove temporary segment", tmp, e))?;
            report.removed_temp_files.push(tmp.clone());
        }
        if let Some(t) = layout.torn.take() {
            let (side_file, side_file_error) =
                match save_side_file(&*fs, &dir, &t.file, t.offset, t.end) {
                    Ok(p) => (Some(p), None),
                    Err(e) => (None, Some(e.to_string())),
                };
            zero_range(&*fs, &t.file, t.offset, t.end)
                .map_err(|e| Error::io("cut torn tail", &t.file, e))?;
            let r = TornTailReport {
                file: t.file,
                offset: t.offset,
                bytes_cut: t.end - t.offset,
                reason: t.reason,
                valid_frames_cut: t.valid_frames_cut,
                side_file,
                side_file_error,
            };
            tracing::warn!("{r}");
            report.torn_tail = Some(r);
        }
        let (first_lsn, last_lsn) = match (layout.first_lsn(), layout.last_lsn()) {
            (Some(f), Some(l)) => (f, l),
            _ => (1, 0),
        };
        // Encryption was switched on or off since the active segment was written: new records
        // go to a new segment. An empty one is replaced; one with records is sealed below.
        let want_encrypted = opts.keyring.is_some();
        let mut reuse_id = None;
        let mut seal_last = false;
        if let Some(s) = layout
            .segments
            .last()
            .filter(|s| !s.sealed && s.encrypted != want_encrypted)
        {
            if s.last_lsn < s.first_lsn {
                durable_remove(&*fs, &s.path)
                    .map_err(|e| Error::io("replace empty segment", &s.path, e))?;
                reuse_id = Some(s.id);
                layout.segments.pop();
                layout.end_mark = None;
            } else {
                seal_last = true;
            }
        }
        // Finish a rotation a crash interrupted: seal every complete segment but the last.
        let n = layout.segments.len();
        for s in layout
            .segments
            .iter_mut()
            .take(if seal_last { n } else { n.saturating_sub(1) })
            .filter(|s| !s.sealed)
        {
            let sealed = dir.join(sealed_name(s.first_lsn, s.last_lsn));
            let f = fs
                .open(&s.path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open segment", &s.path, e))?;
            f.set_len(s.end_offset)
                .map_err(|e| Error::io("shrink segment", &s.path, e))?;
            f.sync_all()
                .map_err(|e| Error::io("sync segment", &s.path, e))?;
            durable_rename(&*fs, &s.path, &sealed)
                .map_err(|e| Error::io("seal segment", &s.path, e))?;
            report.sealed_on_open.push(sealed.clone());
            s.path = sealed;
            s.sealed = true;
            s.file_bytes = s.end_offset;
        }

        report.end_mark = layout.end_mark;
        let mut tail_mark = None;
        let active = match layout.segments.last() {
            Some(s) if !s.sealed => {
                let file = fs
                    .open(&s.path, OpenMode::ReadWrite)
                    .map_err(|e| Error::io("open segment", &s.path, e))?;
                if let Some(m) = layout
                    .end_mark
                    .filter(|m| m.durable_lsn == s.last_lsn && m.offset == s.end_offset)
                {
                    if m.closed {
                        // The log is open again: from now on, only a clean close may say so.
                        // Synced below with what recovery read.
                        let open =
                            encode_mark(segment_seed(s.id), s.last_lsn + 1, m.durable_lsn, false);
                        write_all_at(&*file, &open, m.offset)
                            .map_err(|e| Error::io("write mark", &s.path, e))?;
                    }
                    tail_mark = Some(TailMark {
                        durable_lsn: m.durable_lsn,
                        closed: false,
                        synced: true,
                    });
                }
                Active {
                    file,
                    path: s.path.clone(),
                    id: s.id,
                    first_lsn: s.first_lsn,
                    offset: s.end_offset,
                    encrypted: s.encrypted,
                }
            }
            last => {
                let id = reuse_id.unwrap_or_else(|| last.map_or(1, |s| s.id + 1));
                let a = create_segment(&opts, &dir, id, last_lsn + 1)?;
                report.created_segment = Some(a.path.clone());
                layout.segments.push(SegmentInfo {
                    id,
                    path: a.path.clone(),
                    first_lsn: last_lsn + 1,
                    last_lsn,
                    sealed: false,
                    end_offset: a.offset,
                    file_bytes: opts.segment_bytes_max,
                    encrypted: a.encrypted,
                    key_ids: Vec::new(),
                });
                a
            }
        };
        // What recovery read may have come from the page cache of a process that died before its
        // sync: make it durable before calling it durable (and before new frames say so).
        if !crate::mutated("trust_page_cache_on_open") {
            active
                .file
                .sync_data()
                .map_err(|e| Error::io("sync recovered segment", &active.path, e))?;
            #[cfg(not(feature = "fault-skip-dir-sync"))]
            fs.sync_dir(&dir)
                .map_err(|e| Error::io("sync directory", &dir, e))?;
        }
        report.first_lsn = first_lsn;
        report.last_lsn = last_lsn;
        report.duration = started.elapsed();

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            opts,
            queue: Mutex::new(Queue {
                items: Vec::new(),
                bytes: 0,
                next_lsn: last_lsn + 1,
                poisoned: None,
                closed: false,
                truncating: false,
                io_idle: false,
                wake_at: 1,
                space_wakers: Vec::new(),
                space_waiters: 0,
            }),
            work_cv: Condvar::new(),
            space_cv: Condvar::new(),
            progress: Mutex::new(Progress {
                durable_lsn: last_lsn,
                acked_lsn: last_lsn,
                poisoned: None,
                ack_wakers: Vec::new(),
                waiters: 0,
            }),
            progress_cv: Condvar::new(),
            segments: RwLock::new(layout.segments),
            counters: Counters::default(),
            on_acks: OnceLock::new(),
        });
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<Acks>();
        let thread_start = shared.opts.thread_start;
        let hooks = shared.clone();
        let acker_thread = std::thread::Builder::new()
            .name("keel-wal-ack".into())
            .spawn(move || {
                thread_start.inspect(|f| f());
                for acks in ack_rx {
                    if let (Some(hook), Some(upto)) =
                        (hooks.on_acks.get(), acks.iter().map(|a| a.1).max())
                    {
                        hook(upto);
                    }
                    for (done, lsn) in acks {
                        done.complete(Ok(lsn));
                    }
                }
            })
            .map_err(|e| Error::io("spawn ack thread", &dir, e))?;
        // Recovery synced the active segment.
        let synced_offset = active.offset;
        let writer = Writer {
            shared: shared.clone(),
            acker: Some(ack_tx),
            acker_thread: Some(acker_thread),
            active,
            next_lsn: last_lsn + 1,
            written_lsn: last_lsn,
            durable_lsn: last_lsn,
            synced_offset,
            buf: Vec::new(),
            sealed: Vec::new(),
            pending: Vec::new(),
            last_sync: Instant::now(),
            spare: None,
            last_sync_time: Duration::ZERO,
            last_batch: 0,
            items_spare: Vec::new(),
            tail_mark,
        };
        let handle = std::thread::Builder::new()
            .name("keel-wal-io".into())
            .spawn(move || {
                thread_start.inspect(|f| f());
                writer.run()
            })
            .map_err(|e| Error::io("spawn I/O thread", &dir, e))?;
        Ok((
            Wal {
                shared,
                io_thread: Mutex::new(Some(handle)),
                lock_file: Mutex::new(Some(lock_file)),
            },
            report,
        ))
    }

    /// Creates an empty log in `dir` whose first record will get `first_lsn`, as a restored
    /// database needs: its log continues where its snapshot ends. `dir` must hold no log yet.
    pub fn create_at(dir: impl AsRef<Path>, first_lsn: Lsn, opts: Options) -> Result<()> {
        opts.validate()?;
        let dir = dir.as_ref();
        if first_lsn == 0 || first_lsn > LSN_MAX {
            return Err(Error::InvalidOptions(format!(
                "a log's first LSN must be in 1..={LSN_MAX}, got {first_lsn}"
            )));
        }
        let fs = &*opts.fs;
        durable_create_dir_all(fs, dir).map_err(|e| Error::io("create directory", dir, e))?;
        let layout = analyze(fs, dir, opts.record_bytes_max, &mut |_, _| {})?;
        if !layout.segments.is_empty() || !layout.tmp_files.is_empty() {
            return Err(Error::InvalidOptions(format!(
                "{} already holds a log",
                dir.display()
            )));
        }
        // Synced, renamed and its directory synced by `activate`.
        create_segment(&opts, dir, 1, first_lsn).map(drop)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// Appends one record; returns its LSN once acknowledged (under the default policy: durable).
    pub fn append(&self, record: &[u8]) -> Result<Lsn> {
        Ok(*self.append_batch(&[record])?.end())
    }

    /// Appends records atomically: after any crash, all of them are present or none is.
    pub fn append_batch<T: AsRef<[u8]>>(&self, records: &[T]) -> Result<RangeInclusive<Lsn>> {
        self.submit_batch(records.iter().map(|r| r.as_ref().to_vec()).collect())?
            .wait()
    }

    /// Queues one record and returns at once with a [`Ticket`]. Blocks only while the queue is
    /// full (backpressure), never on a sync.
    pub fn submit(&self, record: Vec<u8>) -> Result<Ticket> {
        self.submit_records(Records::One(record), Completion::new())
    }

    /// Queues an atomic batch; see [`Wal::submit`].
    pub fn submit_batch(&self, records: Vec<Vec<u8>>) -> Result<Ticket> {
        self.submit_records(Records::Batch(records), Completion::new())
    }

    /// [`Wal::submit`], delivering the acknowledgement to `done`, a fresh [`Completion`] (one
    /// already completed never hears of the append). On an error `done` is left alone.
    pub fn submit_to(&self, record: Vec<u8>, done: Arc<Completion>) -> Result<Ticket> {
        self.submit_records(Records::One(record), done)
    }

    fn submit_records(&self, records: Records, done: Arc<Completion>) -> Result<Ticket> {
        let s = &self.shared;
        let bytes = s.batch_bytes(records.as_slice())?;
        let mut q = lock(&s.queue);
        loop {
            q.check_open()?;
            if q.admits(bytes, s.opts.queue_bytes_max) {
                return Ok(s.push(&mut q, records, bytes, done));
            }
            q = counted_wait(&s.space_cv, q, |q| &mut q.space_waiters);
        }
    }

    /// Waits, without blocking a thread, until `bytes` of records would be queued at once (see
    /// `Options::queue_bytes_max`). For async callers of the blocking appends: room is not
    /// reserved, so another appender may still take it first.
    pub fn room(&self, bytes: usize) -> RoomFuture {
        RoomFuture {
            shared: self.shared.clone(),
            bytes: frame_bytes(bytes),
        }
    }

    /// Appends one record without blocking the calling thread, for async code.
    pub fn append_async(&self, record: Vec<u8>) -> AppendFuture {
        self.append_records_async(Records::One(record))
    }

    /// Appends an atomic batch without blocking the calling thread, for async code.
    pub fn append_batch_async(&self, records: Vec<Vec<u8>>) -> AppendFuture {
        self.append_records_async(Records::Batch(records))
    }

    fn append_records_async(&self, records: Records) -> AppendFuture {
        let state = match self.shared.batch_bytes(records.as_slice()) {
            Ok(bytes) => AppendState::Queue(records, bytes),
            Err(e) => AppendState::Failed(Some(e)),
        };
        AppendFuture {
            shared: self.shared.clone(),
            state,
        }
    }

    /// Highest LSN known durable: on the durable side of a completed sync.
    pub fn durable_lsn(&self) -> Lsn {
        lock(&self.shared.progress).durable_lsn
    }

    /// Sets `hook`, which the ack thread runs with the highest LSN of a batch of acknowledged
    /// appends before it wakes their blocked threads (many threads waiting in
    /// [`Completion::wait`]; tasks and a few threads are woken by the I/O thread without it).
    /// Work that every woken thread would otherwise start with, or wait for, can be done once
    /// there. The hook must not wait for the log. Only the first call sets it; later ones
    /// return false.
    pub fn on_acks(&self, hook: impl Fn(Lsn) + Send + Sync + 'static) -> bool {
        self.shared.on_acks.set(Box::new(hook)).is_ok()
    }

    /// Highest LSN acknowledged to an appender. Equal to `durable_lsn()` under
    /// `SyncPolicy::Always`; may be ahead of it under the weaker policies.
    pub fn last_lsn(&self) -> Lsn {
        lock(&self.shared.progress).acked_lsn
    }

    /// LSN of the oldest record still in the log (after pruning). If the log is empty, this is
    /// `last_lsn() + 1`.
    pub fn first_lsn(&self) -> Lsn {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())[0]
            .first_lsn
    }

    /// Blocks until `lsn` is durable. Under `SyncPolicy::Never` only a segment seal, [`Wal::sync`]
    /// or close makes records durable.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let s = &self.shared;
        let mut p = lock(&s.progress);
        loop {
            if p.durable_lsn >= lsn {
                return Ok(());
            }
            if let Some(e) = &p.poisoned {
                return Err(Error::Poisoned(e.clone()));
            }
            if lock(&s.queue).closed {
                return Err(Error::Closed);
            }
            p = counted_wait(&s.progress_cv, p, |p| &mut p.waiters);
        }
    }

    /// Blocks until `lsn` is acknowledged: durable under `SyncPolicy::Always`, written under the
    /// weaker policies (see [`Wal::last_lsn`]).
    pub fn wait_acked(&self, lsn: Lsn) -> Result<()> {
        let s = &self.shared;
        let mut p = lock(&s.progress);
        loop {
            if let Some(r) = s.acked_state(&p, lsn) {
                return r;
            }
            p = counted_wait(&s.progress_cv, p, |p| &mut p.waiters);
        }
    }

    /// [`Wal::wait_acked`] as a future, for async code: no thread waits.
    pub fn acked(&self, lsn: Lsn) -> AckedFuture {
        AckedFuture {
            shared: self.shared.clone(),
            lsn,
        }
    }

    /// Makes everything appended so far durable, whatever the policy. Returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        self.shared.control(Item::Sync, false)
    }

    /// Removes whole sealed segments whose records all lie below `lsn`. Never removes the active
    /// segment, so records at or above `lsn` always stay. Returns the number of segments removed.
    pub fn prune_before(&self, lsn: Lsn) -> Result<u64> {
        self.shared.control(|d| Item::Prune(lsn, d), false)
    }

    /// Durably drops every record after `lsn`; the next append gets `lsn + 1`. `lsn` must lie in
    /// `first_lsn() - 1 ..= last_lsn()` and must not fall inside an atomic batch. Appends wait
    /// while a truncation runs. A read that started before it may fail (with an error that
    /// names the segment) if the segment it reads is cut meanwhile, even for records the cut
    /// keeps: a caller that reads and truncates at once keeps the two apart (keel-cluster's
    /// raft log does, with a lock).
    pub fn truncate_after(&self, lsn: Lsn) -> Result<()> {
        self.shared
            .control(|d| Item::Truncate(lsn, d), true)
            .map(|_| ())
    }

    /// Reads records from `from` up to `last_lsn()` as of this call.
    pub fn read_from(&self, from: Lsn) -> Result<WalIter> {
        let segments = self.segments();
        let upper = segments.last().map_or(0, |s| s.last_lsn);
        LogReader::from_parts(
            self.shared.opts.fs.clone(),
            segments,
            self.shared.opts.record_bytes_max,
            self.shared.opts.keyring.clone(),
        )
        .iter_range(from, upper)
    }

    /// The last LSN [`Wal::read_from`] can reach now. The segment list is updated only after a
    /// write (and, under `Always`, its sync), so this can trail [`Wal::last_lsn`] for a moment,
    /// and every record up to it is readable. It never trails [`Wal::durable_lsn`]: a sync lists
    /// what it covers before anyone learns it is durable.
    pub fn readable_lsn(&self) -> Lsn {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .map_or(0, |s| s.last_lsn)
    }

    /// The segments as they are now; the last one is active.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WalStats {
            records: l(&c.records),
            appends: l(&c.appends),
            writes: l(&c.writes),
            syncs: l(&c.syncs),
            sync_nanos: l(&c.sync_nanos),
            bytes_written: l(&c.bytes_written),
            segments_created: l(&c.segments_created),
            marks: l(&c.marks),
            sync_latency_buckets: std::array::from_fn(|i| l(&c.sync_latency_buckets[i])),
            queued_bytes: lock(&self.shared.queue).bytes as u64,
        }
    }

    /// The slowest data sync since the last call (zero if none), and starts over: for one
    /// observer that samples it (the server's latency monitor); a second one would see only
    /// what the first left.
    pub fn take_slowest_sync(&self) -> Duration {
        let c = &self.shared.counters;
        Duration::from_nanos(c.slowest_sync_nanos.swap(0, Ordering::Relaxed))
    }

    /// The first failure, if a failed write or sync has poisoned the log. A poisoned log
    /// acknowledges nothing more; [`Wal::halt`] it and open the directory again to recover.
    pub fn poisoned(&self) -> Option<Arc<Error>> {
        lock(&self.shared.progress).poisoned.clone()
    }

    /// Finishes queued appends, syncs, and stops the I/O thread. Returns the poisoning error if
    /// the log was poisoned.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// [`Wal::close`] through a shared reference, for a log other threads still hold: once it
    /// returns, the I/O thread has stopped, the directory's lock is released (so the directory
    /// can be opened again, in this process too), and every later append fails (with
    /// `Error::Poisoned` if the log was poisoned, otherwise `Error::Closed`). Reads of what
    /// was written keep working. Calling it again changes nothing.
    pub fn halt(&self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        {
            let mut q = lock(&self.shared.queue);
            q.closed = true;
            self.shared.work_cv.notify_one();
            self.shared.space_cv.notify_all();
            for w in q.space_wakers.drain(..) {
                w.wake();
            }
        }
        if let Some(h) = lock(&self.io_thread).take() {
            let _ = h.join();
        }
        // Nothing writes to the directory any more (the I/O thread also joined the thread that
        // prepares spare segments): another open may have it now.
        lock(&self.lock_file).take();
        lock(&self.shared.progress).wake(true);
        self.shared.progress_cv.notify_all();
        match &lock(&self.shared.progress).poisoned {
            Some(e) => Err(Error::Poisoned(e.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if lock(&self.io_thread).is_none() {
            return; // closed or halted already, and that said how
        }
        if let Err(e) = self.shutdown() {
            tracing::error!("closing the log at {}: {e}", self.shared.dir.display());
        }
    }
}

/// Threads blocked on their appends are woken by the I/O thread itself when a batch has at most
/// this many of them; more go to the ack thread, so that waking them overlaps with the next write
/// and sync. (Tasks are always woken by the I/O thread: that is cheap.)
const INLINE_ACKS: usize = 4;

/// The most of the write buffer's capacity kept between batches: a pipelined batch of small
/// records fits, and a rare large one is not held in memory afterwards.
const BUF_KEPT_BYTES: usize = 256 << 10;

/// The most items whose room the writer keeps for the next batch (see `Writer::items_spare`):
/// 1 MiB of them.
const ITEMS_SPARE_MAX: usize = (1 << 20) / mem::size_of::<Item>();

/// Batches up to this many items wait briefly for stragglers (see `run`).
const GATHER_BATCH_MAX: usize = 8;

type Acks = Vec<(Arc<Completion>, Lsn)>;

struct Writer {
    shared: Arc<Shared>,
    /// To the ack thread; `None` once the writer is finishing.
    acker: Option<std::sync::mpsc::Sender<Acks>>,
    acker_thread: Option<JoinHandle<()>>,
    active: Active,
    /// LSN the next frame gets.
    next_lsn: Lsn,
    /// Highest LSN handed to the OS.
    written_lsn: Lsn,
    /// Highest LSN covered by a completed sync.
    durable_lsn: Lsn,
    /// How far into the active segment the last completed sync reached.
    synced_offset: u64,
    /// Frames encoded but not yet written; they start at `active.offset`.
    buf: Vec<u8>,
    /// Scratch for one sealed payload.
    sealed: Vec<u8>,
    /// Appends in `buf` (or written, awaiting their sync): completion and last LSN.
    pending: Vec<(Arc<Completion>, Lsn)>,
    last_sync: Instant,
    spare: Option<Spare>,
    /// Duration of the last data sync.
    last_sync_time: Duration,
    /// Items in the previous batch.
    last_batch: usize,
    /// The previous batch's vector, emptied, swapped in for the next batch's queue so that the
    /// queue does not grow from nothing by reallocation in every batch (a batch of a thousand
    /// appends took ten reallocations, the last ones of fresh pages).
    items_spare: Vec<Item>,
    /// The mark at `active.offset`, right after the last frame, if there is one.
    tail_mark: Option<TailMark>,
}

/// A mark frame the writer left after the last frame of the active segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TailMark {
    durable_lsn: Lsn,
    closed: bool,
    synced: bool,
}

impl Writer {
    fn run(mut self) {
        loop {
            let mut items = {
                let s = self.shared.clone();
                let mut q = lock(&s.queue);
                loop {
                    if !q.items.is_empty() {
                        break;
                    }
                    if q.closed || q.poisoned.is_some() {
                        drop(q);
                        self.finish();
                        return;
                    }
                    q.io_idle = true;
                    match self.sync_deadline() {
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                q.io_idle = false;
                                drop(q);
                                if let Err(e) = self.sync(true) {
                                    self.poison(e, Vec::new());
                                }
                                q = lock(&s.queue);
                                continue;
                            }
                            q = s
                                .work_cv
                                .wait_timeout(q, deadline - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        None => q = s.work_cv.wait(q).unwrap_or_else(|p| p.into_inner()),
                    }
                    q.io_idle = false;
                }
                // Adaptive group commit. The writers the previous sync released are on their way
                // back; if fewer than last time have arrived, give the rest a moment to join this
                // batch rather than paying a sync of their own. Bounded by a quarter of the last
                // sync's duration, so a lone writer never waits (its batch size is 1). Large
                // batches fill during the sync itself, and a short timed wait oversleeps (timer
                // slack), so only small ones gather.
                if self.shared.opts.sync_policy == SyncPolicy::Always
                    && q.items.len() < self.last_batch
                    && self.last_batch <= GATHER_BATCH_MAX
                {
                    let deadline =
                        Instant::now() + (self.last_sync_time / 4).min(Duration::from_micros(200));
                    q.wake_at = self.last_batch;
                    while q.items.len() < self.last_batch && !q.closed {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        q.io_idle = true;
                        q = s
                            .work_cv
                            .wait_timeout(q, deadline - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        q.io_idle = false;
                    }
                    q.wake_at = 1;
                }
                self.last_batch = q.items.len();
                q.bytes = 0;
                let items = mem::replace(&mut q.items, mem::take(&mut self.items_spare));
                for w in q.space_wakers.drain(..) {
                    w.wake();
                }
                if q.space_waiters > 0 {
                    s.space_cv.notify_all();
                }
                items
            };
            let mut batch = items.drain(..);
            while let Some(item) = batch.next() {
                let done = item.done().clone();
                if let Err(e) = self.handle(item) {
                    let first = self.poison(e, batch.by_ref().collect());
                    done.complete(Err(Error::Poisoned(first)));
                    break;
                }
            }
            drop(batch);
            if items.capacity() <= ITEMS_SPARE_MAX {
                self.items_spare = items;
            }
            if let Err(e) = self.flush() {
                self.poison(e, Vec::new());
            }
        }
    }

    fn sync_deadline(&self) -> Option<Instant> {
        match self.shared.opts.sync_policy {
            SyncPolicy::Interval(d) if self.durable_lsn < self.written_lsn => {
                Some(self.last_sync + d)
            }
            _ => None,
        }
    }

    fn handle(&mut self, item: Item) -> Result<()> {
        match item {
            Item::Append {
                records,
                first_lsn,
                done,
            } => {
                debug_assert_eq!(first_lsn, self.next_lsn, "queue and writer agree on LSNs");
                let keyring = self.shared.opts.keyring.clone();
                let over = self.shared.opts.seal_bytes();
                let records = records.as_slice();
                let need: u64 = records
                    .iter()
                    .map(|r| frame_bytes(r.len() + over) as u64)
                    .sum();
                // A truncation can leave the writer in a segment of the other kind: rotate away
                // from it, or replace it if the truncation left it empty.
                if self.active.encrypted != keyring.is_some() {
                    self.flush()?;
                    if self.written_lsn >= self.active.first_lsn {
                        self.rotate()?;
                    } else {
                        self.replace_empty_active()?;
                    }
                }
                // Leave room for a mark after the batch (`Options::validate` makes sure a batch
                // of any allowed size and its mark fit in an empty segment).
                if self.active.offset + (self.buf.len() + MARK_BYTES) as u64 + need
                    > self.shared.opts.segment_bytes_max
                {
                    self.flush()?;
                    self.rotate()?;
                }
                let seed = segment_seed(self.active.id);
                let n = records.len();
                for (i, r) in records.iter().enumerate() {
                    let flags = if i + 1 < n { FLAG_BATCH_CONTINUES } else { 0 };
                    let payload = match &keyring {
                        Some(ring) => {
                            self.sealed.clear();
                            ring.seal_into(
                                &crate::read::frame_aad(self.next_lsn, flags),
                                r,
                                &mut self.sealed,
                            );
                            &self.sealed[..]
                        }
                        None => &r[..],
                    };
                    encode_frame(
                        &mut self.buf,
                        seed,
                        self.next_lsn,
                        self.durable_lsn,
                        flags,
                        payload,
                    );
                    self.next_lsn += 1;
                }
                self.pending.push((done, self.next_lsn - 1));
                let c = &self.shared.counters;
                c.records.fetch_add(n as u64, Ordering::Relaxed);
                c.appends.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Item::Sync(done) => {
                self.flush()?;
                if self.durable_lsn < self.written_lsn {
                    self.sync(true)?;
                }
                done.complete(Ok(self.durable_lsn));
                Ok(())
            }
            Item::Prune(before, done) => {
                self.flush()?;
                let removed = self.prune(before)?;
                done.complete(Ok(removed));
                Ok(())
            }
            Item::Truncate(after, done) => {
                self.flush()?;
                let r = self.truncate(after);
                let mut q = lock(&self.shared.queue);
                q.truncating = false;
                q.next_lsn = self.next_lsn;
                self.shared.space_cv.notify_all();
                for w in q.space_wakers.drain(..) {
                    w.wake();
                }
                drop(q);
                match r {
                    Ok(Ok(())) => done.complete(Ok(after)),
                    Ok(Err(refused)) => done.complete(Err(refused)),
                    Err(fatal) => return Err(fatal),
                }
                Ok(())
            }
        }
    }

    /// Writes `buf`, syncs as the policy says, then acknowledges the pending appends.
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let a = &self.active;
            // Overwrites the mark at the tail, if any, with the frames that follow it.
            self.tail_mark = None;
            let len = self.buf.len();
            let pad = page_padding(a.offset + len as u64, self.shared.opts.segment_bytes_max);
            self.buf.resize(len + pad, 0);
            write_all_at(&*a.file, &self.buf, a.offset)
                .map_err(|e| Error::io("write", &a.path, e))?;
            let c = &self.shared.counters;
            c.writes.fetch_add(1, Ordering::Relaxed);
            c.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
            self.active.offset += len as u64;
            self.buf.clear();
            // One large batch (a command of a million arguments) leaves no megabytes behind.
            self.buf.shrink_to(BUF_KEPT_BYTES);
            let opts = &self.shared.opts;
            if opts.prepare_segments_in_background
                && self.spare.is_none()
                && self.active.offset > opts.segment_bytes_max / 2
            {
                self.start_spare();
            }
            self.written_lsn = self.next_lsn - 1;
            if crate::mutated("ack_before_sync") {
                for (done, lsn) in self.pending.drain(..) {
                    done.complete(Ok(lsn));
                }
            }
            // A sync lists and publishes what it covers; without one, the write is listed here.
            match self.shared.opts.sync_policy {
                SyncPolicy::Always => self.sync(true)?,
                SyncPolicy::Interval(d) if self.last_sync.elapsed() >= d => self.sync(true)?,
                _ => {
                    self.list_written();
                    self.publish();
                }
            }
        }
        // Only now, with durable_lsn published, may anyone learn that their append is done.
        // Tasks are woken here; blocked threads, if there are more than a few, by the ack
        // thread, so that their wake-ups overlap with the next write and sync.
        self.pending
            .retain(|(done, lsn)| !done.deliver(Ok(*lsn), false));
        if self.pending.len() > INLINE_ACKS {
            if let Some(acker) = &self.acker {
                if acker.send(mem::take(&mut self.pending)).is_ok() {
                    return Ok(());
                }
            }
        }
        for (done, lsn) in self.pending.drain(..) {
            done.complete(Ok(lsn));
        }
        Ok(())
    }

    /// Starts zero-filling the next segment on a helper thread, so that rotation does not stall
    /// appends for the time it takes to write `segment_bytes_max` bytes.
    fn start_spare(&mut self) {
        let path = self.shared.dir.join(spare_name(self.active.id + 1));
        let shared = self.shared.clone();
        let p = path.clone();
        match std::thread::Builder::new()
            .name("keel-wal-prep".into())
            .spawn(move || {
                shared.opts.thread_start.inspect(|f| f());
                prepare_blank(&shared.opts, &p)
            }) {
            Ok(thread) => self.spare = Some(Spare { path, thread }),
            Err(e) => tracing::warn!("cannot start segment preparation, rotation will do it: {e}"),
        }
    }

    /// `fdatasync` of the active segment.
    fn sync_active(&self) -> Result<()> {
        let a = &self.active;
        #[cfg(not(feature = "fault-skip-data-sync"))]
        let skip = crate::mutated("skip_data_sync");
        // Negative control (tests/powercut): never make appended records durable.
        #[cfg(feature = "fault-skip-data-sync")]
        let skip = true;
        if !skip {
            if let Err(e) = a.file.sync_data() {
                if !(crate::mutated("retry_failed_sync") && a.file.sync_data().is_ok()) {
                    return Err(Error::io("sync", &a.path, e));
                }
            }
        }
        Ok(())
    }

    /// Makes everything written durable and publishes it. With `mark`, and nothing more queued,
    /// then writes a mark saying so (before anyone learns of the sync: the I/O a workload causes
    /// stays in one order, which the simulator's seeds rely on).
    fn sync(&mut self, mark: bool) -> Result<()> {
        let t = Instant::now();
        let upto = self.active.offset;
        self.sync_active()?;
        self.synced_offset = upto;
        self.last_sync_time = t.elapsed();
        let c = &self.shared.counters;
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.sync_nanos
            .fetch_add(self.last_sync_time.as_nanos() as u64, Ordering::Relaxed);
        c.sync_latency_buckets[sync_bucket(self.last_sync_time)].fetch_add(1, Ordering::Relaxed);
        c.slowest_sync_nanos
            .fetch_max(self.last_sync_time.as_nanos() as u64, Ordering::Relaxed);
        self.durable_lsn = self.written_lsn;
        self.last_sync = Instant::now();
        if let Some(m) = &mut self.tail_mark {
            m.synced = true;
        }
        if mark && self.buf.is_empty() && lock(&self.shared.queue).items.is_empty() {
            self.write_mark(false)?;
        }
        // Readable before anyone learns it is durable: a reader woken by this sync finds
        // what it covers (`readable_lsn`, `read_from`).
        self.list_written();
        self.publish();
        Ok(())
    }

    /// Lists every record written as readable: the active segment's last LSN and end.
    fn list_written(&self) {
        let mut segs = (self.shared.segments.write()).unwrap_or_else(|p| p.into_inner());
        let last = segs.last_mut().expect("the active segment is listed");
        last.last_lsn = self.written_lsn;
        last.end_offset = self.active.offset;
    }

    /// Writes a mark after the last frame, saying that everything up to `durable_lsn` is
    /// durable. Only ever called once a sync covering every frame written has returned.
    fn write_mark(&mut self, closed: bool) -> Result<()> {
        debug_assert!(self.buf.is_empty());
        debug_assert_eq!(self.durable_lsn, self.written_lsn);
        debug_assert_eq!(self.next_lsn, self.written_lsn + 1);
        if self.active.offset + MARK_BYTES as u64 > self.shared.opts.segment_bytes_max {
            // A segment an older keel filled to the brim: no room, and nothing is lost by going
            // without (the mark only shrinks what recovery must call ambiguous).
            return Ok(());
        }
        let a = &self.active;
        let mut m =
            encode_mark(segment_seed(a.id), self.next_lsn, self.durable_lsn, closed).to_vec();
        let pad = page_padding(
            a.offset + m.len() as u64,
            self.shared.opts.segment_bytes_max,
        );
        m.resize(m.len() + pad, 0);
        write_all_at(&*a.file, &m, a.offset).map_err(|e| Error::io("write mark", &a.path, e))?;
        self.tail_mark = Some(TailMark {
            durable_lsn: self.durable_lsn,
            closed,
            synced: false,
        });
        self.shared.counters.marks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// On a clean close, after the final sync: a synced mark with CLOSED that covers every frame,
    /// so that recovery knows the whole log was durable.
    fn close_mark(&mut self) -> Result<()> {
        let done = TailMark {
            durable_lsn: self.written_lsn,
            closed: true,
            synced: true,
        };
        if self.tail_mark == Some(done) {
            return Ok(());
        }
        self.write_mark(true)?;
        self.sync_active()?;
        if let Some(m) = &mut self.tail_mark {
            m.synced = true;
        }
        Ok(())
    }

    fn publish(&self) {
        let mut p = lock(&self.shared.progress);
        p.durable_lsn = self.durable_lsn;
        p.acked_lsn = self.written_lsn;
        p.wake(false);
        let waiters = p.waiters > 0;
        drop(p);
        if waiters {
            self.shared.progress_cv.notify_all();
        }
    }

    /// Seals the active segment and starts the next. Everything written must be durable before
    /// the seal: a sealed segment is complete by definition, and recovery relies on it.
    fn rotate(&mut self) -> Result<()> {
        debug_assert!(self.buf.is_empty());
        let shared = self.shared.clone();
        let (dir, opts) = (&shared.dir, &shared.opts);
        if self.durable_lsn < self.written_lsn {
            self.sync(false)?;
        }
        let old_first = self.active.first_lsn;
        let last = self.written_lsn;
        assert!(
            last >= old_first,
            "a segment is sealed only once it holds a frame"
        );
        let a = &self.active;
        a.file
            .set_len(a.offset)
            .map_err(|e| Error::io("shrink sealed segment", &a.path, e))?;
        a.file
            .sync_all()
            .map_err(|e| Error::io("sync sealed segment", &a.path, e))?;
        let (id, first) = (self.active.id + 1, last + 1);
        let new = match self.spare.take() {
            Some(spare) => match spare.thread.join() {
                Ok(Ok(file)) => activate(opts, dir, file, &spare.path, id, first)?,
                // Preparing it failed (a full disk, say): try once more here, where a failure
                // poisons the log with its own error.
                _ => create_segment(opts, dir, id, first)?,
            },
            None => create_segment(opts, dir, id, first)?,
        };
        let sealed = dir.join(sealed_name(old_first, last));
        segment_rename(&*opts.fs, &self.active.path, &sealed)
            .map_err(|e| Error::io("seal segment", &self.active.path, e))?;
        self.shared
            .counters
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        let mut segs = self
            .shared
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let s = segs.last_mut().expect("the active segment is listed");
        s.path = sealed;
        s.sealed = true;
        s.file_bytes = self.active.offset;
        segs.push(SegmentInfo {
            id: new.id,
            path: new.path.clone(),
            first_lsn: new.first_lsn,
            last_lsn: last,
            sealed: false,
            end_offset: new.offset,
            file_bytes: opts.segment_bytes_max,
            encrypted: new.encrypted,
            key_ids: Vec::new(),
        });
        drop(segs);
        self.synced_offset = new.offset;
        self.active = new;
        self.tail_mark = None;
        Ok(())
    }

    /// Replaces the active segment, which holds no record, with a new one of the log's kind
    /// (encrypted or not), under the same id and first LSN. A crash in between leaves the log
    /// without an active segment, and opening creates one.
    fn replace_empty_active(&mut self) -> Result<()> {
        debug_assert!(self.written_lsn < self.active.first_lsn);
        let shared = self.shared.clone();
        let (id, first) = (self.active.id, self.active.first_lsn);
        durable_remove(&*shared.opts.fs, &self.active.path)
            .map_err(|e| Error::io("replace empty segment", &self.active.path, e))?;
        let new = create_segment(&shared.opts, &shared.dir, id, first)?;
        let mut segs = shared.segments.write().unwrap_or_else(|p| p.into_inner());
        let s = segs.last_mut().expect("the active segment is listed");
        s.path = new.path.clone();
        s.encrypted = new.encrypted;
        s.end_offset = new.offset;
        s.file_bytes = shared.opts.segment_bytes_max;
        s.key_ids.clear();
        drop(segs);
        self.synced_offset = new.offset;
        self.active = new;
        self.tail_mark = None;
        Ok(())
    }

    fn prune(&mut self, before: Lsn) -> Result<u64> {
        let victims: Vec<PathBuf> = {
            let segs = self
                .shared
                .segments
                .read()
                .unwrap_or_else(|p| p.into_inner());
            segs.iter()
                .take_while(|s| s.sealed && s.last_lsn < before)
                .map(|s| s.path.clone())
                .collect()
        };
        // Oldest first: a crash part-way leaves a log that starts later, never one with a hole.
        for path in &victims {
            durable_remove(&*self.shared.opts.fs, path)
                .map_err(|e| Error::io("remove segment", path, e))?;
            self.shared
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(0);
        }
        Ok(victims.len() as u64)
    }

    /// `Err` is fatal (the log is poisoned); `Ok(Err)` is a refusal that changed nothing.
    fn truncate(&mut self, after: Lsn) -> Result<Result<()>> {
        let fs = self.shared.opts.fs.clone();
        let segs = self.segments_snapshot();
        let first = segs[0].first_lsn;
        if after >= self.written_lsn {
            return Ok(Ok(()));
        }
        if after + 1 < first {
            return Ok(Err(Error::LsnOutOfRange {
                lsn: after,
                first,
                last: self.written_lsn,
            }));
        }
        let t = segs
            .iter()
            .rposition(|s| s.first_lsn <= after + 1)
            .expect("first segment qualifies");
        let target = &segs[t];
        // Find where LSN after + 1 starts, and refuse to split a batch.
        let reader = LogReader::from_parts(
            fs.clone(),
            vec![target.clone()],
            self.shared.opts.record_bytes_max,
            None,
        );
        let cut = match reader.offset_of(target, after + 1)? {
            Ok(off) => off,
            Err(refused) => return Ok(Err(refused)),
        };
        // Newest first, so a crash part-way leaves a shorter log that is still contiguous.
        for s in segs[t + 1..].iter().rev() {
            durable_remove(&*fs, &s.path).map_err(|e| Error::io("remove segment", &s.path, e))?;
        }
        let path = self.shared.dir.join(open_name(target.first_lsn));
        if target.sealed {
            durable_rename(&*fs, &target.path, &path)
                .map_err(|e| Error::io("reopen segment", &target.path, e))?;
        }
        // Shrinking is one metadata change: a crash shows the old length or the new one. Zeroing
        // in place instead could leave durable frames after a hole, which recovery must refuse.
        let shrink = |file: &dyn FsFile| -> Result<()> {
            file.set_len(cut)
                .map_err(|e| Error::io("truncate segment", &path, e))?;
            file.sync_all()
                .map_err(|e| Error::io("sync truncated segment", &path, e))
        };
        if t + 1 == segs.len() {
            shrink(&*self.active.file)?;
            self.active.offset = cut;
            self.synced_offset = self.synced_offset.min(cut);
        } else {
            let file = fs
                .open(&path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open segment", &path, e))?;
            shrink(&*file)?;
            self.active = Active {
                file,
                path: path.clone(),
                id: target.id,
                first_lsn: target.first_lsn,
                offset: cut,
                encrypted: target.encrypted,
            };
            self.synced_offset = cut;
        }
        // The shrink took any mark with it.
        self.tail_mark = None;
        self.next_lsn = after + 1;
        self.written_lsn = after;
        self.durable_lsn = self.durable_lsn.min(after);
        {
            let mut segs = self
                .shared
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner());
            segs.truncate(t + 1);
            let s = &mut segs[t];
            s.path = path;
            s.sealed = false;
            s.last_lsn = after;
            s.end_offset = cut;
            s.file_bytes = cut;
        }
        self.publish();
        Ok(Ok(()))
    }

    fn segments_snapshot(&self) -> Vec<SegmentInfo> {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the log poisoned and fails every pending, remaining and queued append. Returns the
    /// first error, shared by all of them.
    fn poison(&mut self, e: Error, remaining: Vec<Item>) -> Arc<Error> {
        let first = {
            let mut p = lock(&self.shared.progress);
            let first = p.poisoned.get_or_insert_with(|| Arc::new(e)).clone();
            p.wake(true);
            first
        };
        tracing::error!("write-ahead log poisoned: {first}");
        self.shared.progress_cv.notify_all();
        let queued = {
            let mut q = lock(&self.shared.queue);
            q.poisoned = Some(first.clone());
            q.truncating = false;
            q.bytes = 0;
            for w in q.space_wakers.drain(..) {
                w.wake();
            }
            self.shared.space_cv.notify_all();
            mem::take(&mut q.items)
        };
        self.buf.clear();
        self.forget_unsynced();
        for (done, _) in self.pending.drain(..) {
            done.complete(Err(Error::Poisoned(first.clone())));
        }
        for item in remaining.into_iter().chain(queued) {
            item.done().complete(Err(Error::Poisoned(first.clone())));
        }
        first
    }

    /// After a failure under `Always`: overwrite with zeros the frames written since the last
    /// good sync, none of which was acknowledged. After a failed fdatasync, Linux keeps their
    /// pages readable but marks them clean ("fsyncgate"), so the next open would read them back,
    /// sync them (writing nothing) and call them durable, and records acknowledged after that
    /// would stand behind a hole after a power cut. Zeros are new dirty pages, so that next
    /// open's sync writes them. Best effort: if this write fails too, the next open finds the
    /// frames, as before.
    fn forget_unsynced(&mut self) {
        let a = &self.active;
        if self.shared.opts.sync_policy != SyncPolicy::Always || self.synced_offset >= a.offset {
            return;
        }
        let zeros = vec![0u8; (a.offset - self.synced_offset) as usize];
        match write_all_at(&*a.file, &zeros, self.synced_offset) {
            Ok(()) => tracing::warn!(
                "zeroed {} bytes of unacknowledged frames after the last good sync in {}",
                zeros.len(),
                a.path.display()
            ),
            Err(e) => tracing::error!(
                "could not zero the unacknowledged frames after the last good sync in {}: {e}",
                a.path.display()
            ),
        }
    }

    /// On close: make what was acknowledged under a weaker policy durable. Never after a failure.
    fn finish(&mut self) {
        let poisoned = lock(&self.shared.progress).poisoned.is_some();
        if !poisoned {
            let r = if self.durable_lsn < self.written_lsn {
                self.sync(false)
            } else {
                Ok(())
            };
            if let Err(e) = r.and_then(|()| self.close_mark()) {
                self.poison(e, Vec::new());
            }
        }
        if let Some(spare) = self.spare.take() {
            let _ = spare.thread.join();
            let _ = self.shared.opts.fs.remove_file(&spare.path);
        }
        // Deliver every acknowledgement already handed over before close returns.
        self.acker = None;
        if let Some(h) = self.acker_thread.take() {
            let _ = h.join();
        }
    }
}
