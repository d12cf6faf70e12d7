//! Checkpoints (P6): snapshot, manifest as the single commit point, then pruning; retention of
//! older snapshots for point-in-time restore; and the background thread that triggers them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_wal::fs::{durable_create_dir_all, durable_remove, durable_rename, durable_replace};
use keel_wal::{Fs, Lsn, OpenMode, Wal};

use crate::error::{io, Error, Result};
use crate::keyspace::{Image, System};
use crate::options::WAL_DIR;
use crate::publish::Publisher;
use crate::record::Request;
use crate::restore::{check_target, RestoreReport};
use crate::sequencer::Sequencer;
use crate::snapshot::{
    self, encode_entry, FileError, Manifest, Position, Rest, SnapshotHeader, SnapshotWriter,
    MANIFEST, SNAPSHOT_DIR,
};
use crate::util::{lock, now_ms};

/// What the last checkpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Every write up to this LSN is in the snapshot.
    pub lsn: Lsn,
    pub snapshot_bytes: u64,
    /// The entries the file holds before its tail: the keys as the checkpoint read them, which
    /// the records written meanwhile change (a DeleteAll among them can remove them all).
    pub keys: usize,
    /// Unix ms when it completed.
    pub completed_ms: u64,
    pub duration: Duration,
    pub segments_pruned: u64,
    pub snapshots_removed: usize,
}

/// Held while a checkpoint runs, so checkpoints do not overlap.
struct State {
    manifest: Manifest,
    last_at: Instant,
    failures: u32,
    /// Set by `Engine::halt`: the directory may belong to another engine now, so this
    /// one writes no snapshot or manifest there again.
    halted: bool,
    /// Entries a checkpoint reads under one hold of the visible state's read lock.
    part_keys: usize,
    /// A test's: what to do between parts.
    #[cfg(test)]
    test_between_parts: Option<BetweenParts>,
}

impl State {
    /// Between a snapshot's parts: nothing, or what a test asked for.
    fn between_parts(&mut self, _seq: &Sequencer) {
        #[cfg(test)]
        if let Some(f) = self.test_between_parts.as_mut() {
            f(_seq)
        }
    }
}

/// What a test does between a checkpoint's parts: wait for writes, or make them.
#[cfg(test)]
pub(crate) type BetweenParts = Box<dyn FnMut(&Sequencer) + Send>;

/// Entries a checkpoint reads under one hold of the visible state's read lock, rounded up to
/// whole shards of the table (at most 512 keys each): few enough that publishing, which waits
/// for the lock, hardly notices (each entry is one copy into the part's buffer, so a part is
/// tens of microseconds).
const PART_KEYS: usize = 1024;

impl Checkpoints {
    /// The bookkeeping of an engine whose manifest in force is `manifest`.
    pub(crate) fn new(manifest: Manifest) -> Self {
        Checkpoints {
            state: Mutex::new(State {
                manifest,
                last_at: Instant::now(),
                failures: 0,
                halted: false,
                part_keys: PART_KEYS,
                #[cfg(test)]
                test_between_parts: None,
            }),
            status: Mutex::new(Status::default()),
            halting: AtomicBool::new(false),
        }
    }

    /// Checkpoints read `n` entries at a time and call `between` between parts.
    #[cfg(test)]
    pub(crate) fn set_parts_for_test(&self, n: usize, between: BetweenParts) {
        let mut st = lock(&self.state);
        st.part_keys = n.max(1);
        st.test_between_parts = Some(between);
    }

    /// Stops a checkpoint or backup in progress at its next part and waits for it; none starts
    /// after this (see `Engine::halt`).
    pub(crate) fn halt(&self) {
        self.halting.store(true, Ordering::Relaxed);
        let mut st = lock(&self.state);
        st.halted = true;
    }
}

/// The checkpoint bookkeeping of one engine.
pub(crate) struct Checkpoints {
    /// The manifest in force and checkpoint bookkeeping; held while a checkpoint runs, so
    /// checkpoints do not overlap.
    state: Mutex<State>,
    status: Mutex<Status>,
    /// Set by `Engine::halt` before it waits for `state`: a checkpoint or backup in progress
    /// stops at its next part instead of finishing.
    halting: AtomicBool,
}

/// What the last checkpoint did; readable while the next one runs.
#[derive(Default)]
pub(crate) struct Status {
    last: Option<CheckpointInfo>,
    last_error: Option<String>,
}

/// The snapshot files in `dir/snapshots`, by LSN.
pub(crate) fn list_snapshots(fs: &dyn Fs, dir: &Path) -> Result<Vec<Lsn>> {
    let sdir = dir.join(SNAPSHOT_DIR);
    if !fs.exists(&sdir).map_err(io("stat", &sdir))? {
        return Ok(Vec::new());
    }
    let mut v: Vec<Lsn> = fs
        .read_dir(&sdir)
        .map_err(io("list", &sdir))?
        .iter()
        .filter_map(|n| snapshot::parse_snapshot_name(n))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Removes what a crash can leave behind: snapshots newer than the manifest's (written but never
/// committed), temporaries, and a temporary manifest. Older snapshots are retention's business.
pub(crate) fn remove_uncommitted(fs: &dyn Fs, dir: &Path, current: Lsn) -> Result<()> {
    let sdir = dir.join(SNAPSHOT_DIR);
    if fs.exists(&sdir).map_err(io("stat", &sdir))? {
        for name in fs.read_dir(&sdir).map_err(io("list", &sdir))? {
            let stale = match snapshot::parse_snapshot_name(&name) {
                Some(lsn) => lsn > current,
                None => name.starts_with("snap-"),
            };
            if stale {
                let p = sdir.join(&name);
                durable_remove(fs, &p).map_err(io("remove uncommitted snapshot", &p))?;
            }
        }
    }
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    if fs.exists(&tmp).map_err(io("stat", &tmp))? {
        durable_remove(fs, &tmp).map_err(io("remove", &tmp))?;
    }
    Ok(())
}

/// Writes a snapshot file durably (temporary file, sync, rename, directory sync) and returns the
/// manifest that would commit it. Nothing refers to the file until that manifest is written.
/// Compression and encryption follow `opts`.
pub(crate) fn write_snapshot_file(
    dir: &Path,
    image: &Image,
    requests: &[(Lsn, Request)],
    lsn: Lsn,
    at_ms: u64,
    opts: &crate::Options,
) -> Result<Manifest> {
    let fs = &*opts.wal.fs;
    let (compress, keyring) = (opts.compress_snapshots, opts.wal.keyring.as_deref());
    let sdir = dir.join(SNAPSHOT_DIR);
    durable_create_dir_all(fs, &sdir).map_err(io("create directory", &sdir))?;
    let path = snapshot::snapshot_path(dir, lsn);
    let tmp = path.with_extension("tmp");
    let f = fs
        .open(&tmp, OpenMode::CreateTruncate)
        .map_err(io("create snapshot", &tmp))?;
    let at = snapshot::Position { lsn, at_ms };
    let (bytes, crc) = snapshot::write_snapshot(&*f, image, requests, at, compress, keyring)
        .map_err(io("write snapshot", &tmp))?;
    f.sync_all().map_err(io("sync snapshot", &tmp))?;
    drop(f);
    durable_rename(fs, &tmp, &path).map_err(io("rename snapshot", &tmp))?;
    Ok(Manifest {
        snapshot_lsn: lsn,
        snapshot_bytes: bytes,
        snapshot_crc: crc,
    })
}

pub(crate) fn commit_manifest(fs: &dyn Fs, dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    durable_replace(fs, &path, &m.encode()).map_err(io("replace manifest", &path))
}

impl Checkpoints {
    /// Checkpoints the state `seq` publishes into `dir`; see `Core::checkpoint`.
    pub(crate) fn checkpoint(&self, seq: &Sequencer, dir: &Path) -> Result<Lsn> {
        let mut st = lock(&self.state);
        let r = checkpoint_locked(seq, dir, &mut st, &self.halting);
        st.last_at = Instant::now();
        let mut status = lock(&self.status);
        match &r {
            Ok(Some(info)) => {
                st.failures = 0;
                status.last = Some(info.clone());
                status.last_error = None;
            }
            Ok(None) => st.failures = 0,
            Err(e) => {
                st.failures += 1;
                status.last_error = Some(e.to_string());
            }
        }
        r.map(|info| info.map_or(st.manifest.snapshot_lsn, |i| i.lsn))
    }

    /// Writes a copy of the state `seq` publishes into the new directory `target` as a database
    /// that opens normally: a snapshot written the way a checkpoint writes it (so writes go on
    /// and copy nothing), its manifest, and an empty log that continues after it. It holds the
    /// checkpoint lock: the publisher keeps one snapshot's tail at a time. Background
    /// checkpoints wait meanwhile; `Engine::halt` stops it at its next part.
    pub(crate) fn backup(&self, seq: &Sequencer, target: &Path) -> Result<RestoreReport> {
        let started = Instant::now();
        let fs = &*seq.opts.wal.fs;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if st.halted {
            return Err(halted(seq));
        }
        check_target(fs, target)?;
        durable_create_dir_all(fs, target).map_err(io("create directory", target))?;
        let part_keys = st.part_keys;
        let between = &mut || st.between_parts(seq);
        let w = write_fuzzy_snapshot(seq, target, part_keys, &self.halting, between)?;
        let lsn = w.manifest.snapshot_lsn;
        let mut snapshot_bytes = w.manifest.snapshot_bytes;
        if lsn > 0 {
            commit_manifest(fs, target, &w.manifest)?;
        } else {
            // Nothing was ever written: a database without a snapshot.
            let p = snapshot::snapshot_path(target, 0);
            durable_remove(fs, &p).map_err(io("remove empty snapshot", &p))?;
            snapshot_bytes = 0;
        }
        Wal::create_at(target.join(WAL_DIR), lsn + 1, seq.opts.wal.clone())?;
        Ok(RestoreReport {
            lsn,
            at_ms: w.at_ms,
            base_snapshot: lsn,
            keys: w.keys,
            snapshot_bytes,
            duration: started.elapsed(),
            system: w.system.into_iter().collect(),
            ..RestoreReport::default()
        })
    }

    /// The last checkpoint's figures, and the last error if the latest attempt failed.
    pub(crate) fn last(&self) -> (Option<CheckpointInfo>, Option<String>) {
        let st = lock(&self.status);
        (st.last.clone(), st.last_error.clone())
    }

    /// One round of background work: active expiry, then a checkpoint if one is due.
    pub(crate) fn maintain(&self, seq: &Sequencer, dir: &Path, stopping: &dyn Fn() -> bool) {
        for _ in 0..20 {
            if !seq.opts.active_expiry || seq.expiry_paused.load(Ordering::Relaxed) {
                break;
            }
            match seq.remove_expired(1000) {
                Ok(1000) if !stopping() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "active expiry failed");
                    break;
                }
            }
        }
        let due = {
            // Busy with a checkpoint someone asked for: nothing to decide now.
            let Ok(st) = self.state.try_lock() else {
                return;
            };
            let backoff = Duration::from_secs(1 << st.failures.min(6));
            let since = st.last_at.elapsed();
            let by_size = seq.opts.checkpoint_log_bytes > 0
                && seq.logged_since_checkpoint.load(Ordering::Relaxed)
                    >= seq.opts.checkpoint_log_bytes;
            let by_time = seq.opts.checkpoint_interval.is_some_and(|d| since >= d)
                && seq.publisher.visible().lsn() > st.manifest.snapshot_lsn;
            (by_size || by_time) && (st.failures == 0 || since >= backoff)
        };
        if due {
            if let Err(e) = self.checkpoint(seq, dir) {
                tracing::error!(error = %e, "background checkpoint failed; will retry");
            }
        }
    }
}

/// Lowers this thread's CPU priority to nice 10, never raising it. Linux only (a thread id names
/// one thread to setpriority there); elsewhere the thread keeps its priority. A failure changes
/// nothing that matters.
fn lower_priority() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        if getpriority_process(me).is_ok_and(|now| now < 10) {
            let _ = setpriority_process(me, 10);
        }
    }
}

/// Reads the visible keyspace a part of at least `part_keys` entries (whole shards of the table)
/// at a time, each under the read lock only, encoded as the snapshot file holds them, and sends
/// the parts with their entry counts to `parts`; notes the visible LSN S at the first part and has the
/// publisher keep every record after it. Returns S. Stops early if the receiver is gone (its own
/// error says why) or the engine is halting.
fn read_parts(
    seq: &Sequencer,
    part_keys: usize,
    halting: &AtomicBool,
    between_parts: &mut dyn FnMut(),
    parts: &mpsc::SyncSender<(Vec<u8>, u64)>,
    encoder_cpu: &AtomicU64,
) -> Result<Lsn> {
    // The position in the pass: the start of the next shard's range of hashes (0: the first).
    let mut at = 0;
    let mut start = None;
    let mut pace = Pace::new(seq, encoder_cpu);
    loop {
        if halting.load(Ordering::Relaxed) {
            return Err(halted(seq));
        }
        let (mut part, mut count) = (Vec::new(), 0);
        let held;
        {
            let v = seq.publisher.visible();
            held = Instant::now();
            start.get_or_insert_with(|| seq.publisher.keep_tail(&v));
            at = v.visit_part(at, part_keys, &mut |e| {
                encode_entry(
                    &mut part,
                    e.key(),
                    e.version(),
                    e.expires_at_ms(),
                    e.value(),
                );
                count += 1;
            });
        }
        // As long again off the lock: requests and publishing get at least half of the time
        // a checkpoint reads, on a machine whose cores are busy.
        std::thread::sleep(held.elapsed());
        pace.after_part();
        if parts.send((part, count)).is_err() || at == 0 {
            break;
        }
        between_parts();
    }
    Ok(start.expect("read at least once"))
}

/// The share of a core a checkpoint's reader and encoder may use together while writes are
/// being published: on a server whose cores requests keep busy, every microsecond the
/// checkpoint takes is one they lose, so a checkpoint of 1M keys (about 0.3 s of CPU) is
/// spread over about 2 s instead of taking 40% of the core for 0.7 s. At 20% writes ran at
/// 0.68x their rate without a checkpoint, at 12% at 0.74x, but the records kept for the
/// longer checkpoint's tail took peak RSS to 1.19x (BENCHMARKS.md).
const CHECKPOINT_CPU_PERCENT: u64 = 15;

/// This thread's CPU time so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// Keeps a checkpoint's CPU (the reader's own and the encoder's, which it reports in
/// `encoder_cpu`) to [`CHECKPOINT_CPU_PERCENT`] of the time while writes go on, by sleeping
/// between parts. A stretch without writes starts the account afresh, so a checkpoint of a
/// server that only reads (or idles) owes nothing later; it then only rests as long as it
/// held the lock. Once the records kept for the snapshot's tail fill a quarter of their bound
/// it stops pacing: a longer checkpoint keeps more of them, and past the bound it would fail.
struct Pace<'a> {
    seq: &'a Sequencer,
    encoder_cpu: &'a AtomicU64,
    since: Instant,
    cpu_at: u64,
    encoder_at: u64,
    published: Lsn,
}

impl<'a> Pace<'a> {
    fn new(seq: &'a Sequencer, encoder_cpu: &'a AtomicU64) -> Self {
        Pace {
            seq,
            encoder_cpu,
            since: Instant::now(),
            cpu_at: thread_cpu_ns(),
            encoder_at: encoder_cpu.load(Ordering::Relaxed),
            published: seq.publisher.published(),
        }
    }

    fn after_part(&mut self) {
        let published = self.seq.publisher.published();
        let (cpu, encoder) = (thread_cpu_ns(), self.encoder_cpu.load(Ordering::Relaxed));
        if published == self.published {
            // Nothing written since the last part.
            *self = Pace {
                since: Instant::now(),
                cpu_at: cpu,
                encoder_at: encoder,
                published,
                ..*self
            };
            return;
        }
        self.published = published;
        let used = (cpu - self.cpu_at) + encoder.saturating_sub(self.encoder_at);
        let filling = self.seq.publisher.tail_filling();
        if let Some(rest) = pause(used, self.since.elapsed(), filling) {
            std::thread::sleep(rest);
        }
    }
}

/// How long a checkpoint that used `cpu_ns` of CPU in `elapsed` while writes went on rests to
/// bring its share back to [`CHECKPOINT_CPU_PERCENT`]; never once its tail is `filling`.
fn pause(cpu_ns: u64, elapsed: Duration, filling: bool) -> Option<Duration> {
    let due = Duration::from_nanos(cpu_ns.saturating_mul(100) / CHECKPOINT_CPU_PERCENT);
    due.checked_sub(elapsed)
        .filter(|rest| !filling && !rest.is_zero())
}

/// The name a checkpoint's snapshot is written under until it knows its LSN. Opening removes it
/// with the other uncommitted files.
const FUZZY_TMP: &str = "snap-next.tmp";

/// Writes a snapshot of the visible state as a **fuzzy checkpoint** (docs/KEYSPACE.md): it notes
/// the visible LSN S, reads the keyspace a part of `part_keys` entries at a time, each part
/// under the read lock only, while writes go on; then it notes the visible LSN E and puts the
/// records S+1..=E, which the publisher kept as it published them, in the file as its tail, with
/// the system namespace and the request ids as of E. Loading applies the tail by version, so the file is the image at E, and P6's
/// protocol is unchanged: the file is synced and renamed into place before the caller commits the
/// manifest. Nothing holds a copy of the keyspace, so writes during the checkpoint copy nothing.
/// `dir` is the engine's directory, or a backup's.
fn write_fuzzy_snapshot(
    seq: &Sequencer,
    dir: &Path,
    part_keys: usize,
    halting: &AtomicBool,
    between_parts: &mut dyn FnMut(),
) -> Result<Written> {
    let opts = &seq.opts;
    let fs = &*opts.wal.fs;
    let sdir = dir.join(SNAPSHOT_DIR);
    durable_create_dir_all(fs, &sdir).map_err(io("create directory", &sdir))?;
    let tmp = sdir.join(FUZZY_TMP);
    let f = fs
        .open(&tmp, OpenMode::CreateTruncate)
        .map_err(io("create snapshot", &tmp))?;
    let keyring = opts.wal.keyring.as_deref();
    let mut w = SnapshotWriter::new(&*f, opts.compress_snapshots, keyring)
        .map_err(io("write snapshot", &tmp))?;
    // However this ends, the publisher stops keeping records for the tail.
    struct StopKeeping<'a>(&'a Publisher);
    impl Drop for StopKeeping<'_> {
        fn drop(&mut self) {
            self.0.stop_keeping_tail()
        }
    }
    let _stop = StopKeeping(&seq.publisher);
    // This thread reads and encodes the parts at its own priority, since it holds the read lock
    // meanwhile: a thread at low priority, preempted there, would stall every writer and reader.
    // Encoding an entry is a copy into the part's buffer. A thread at nice 10 compresses,
    // encrypts and writes the parts, so that on a busy machine that work takes CPU mostly when
    // requests leave it.
    let (send, parts) = mpsc::sync_channel::<(Vec<u8>, u64)>(2);
    let encoder_cpu = AtomicU64::new(0);
    let (start, written) = std::thread::scope(|s| -> Result<_> {
        let w = &mut w;
        let cpu = &encoder_cpu;
        let encoder = std::thread::Builder::new()
            .name("keel-snapshot".into())
            .spawn_scoped(s, move || -> std::io::Result<()> {
                lower_priority();
                let at = thread_cpu_ns();
                for (part, count) in parts {
                    w.encoded_entries(&part, count)?;
                    cpu.store(thread_cpu_ns() - at, Ordering::Relaxed);
                }
                Ok(())
            })
            .map_err(io("start a thread for snapshot", &tmp))?;
        let start = read_parts(seq, part_keys, halting, between_parts, &send, &encoder_cpu);
        drop(send);
        let written = encoder
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        Ok((start, written))
    })?;
    written.map_err(io("write snapshot", &tmp))?;
    let start = start?;
    let (lsn, at_ms, system, taken) = {
        let v = seq.publisher.visible();
        (
            v.lsn(),
            v.at_ms(),
            v.system_image(),
            seq.publisher.take_tail(&v),
        )
    };
    let tail = taken.map_err(|max| {
        let why = format!(
            "more than {max} bytes of records were written while it read the keyspace, more \
             than its tail may hold; a later checkpoint tries again"
        );
        io("write snapshot", &tmp)(std::io::Error::other(why))
    })?;
    if tail.len() as u64 != lsn - start {
        let gap = format!(
            "records {}..={lsn} were published while it was read, but {} were kept for its tail",
            start + 1,
            tail.len()
        );
        return Err(io("write snapshot", &tmp)(std::io::Error::other(gap)));
    }
    // Under a weaker sync policy the visible state can be ahead of the durable log. A
    // snapshot of it, then a power cut, would leave a log that ends before the snapshot,
    // which the next open refuses (a gap). Sync, so the snapshot holds only what the log
    // holds durably.
    if opts.wal.sync_policy != keel_wal::SyncPolicy::Always {
        seq.wal.sync()?;
    }
    let requests = seq.seq().requests.up_to(lsn);
    let rest = Rest {
        at: Position { lsn, at_ms },
        requests: &requests,
        system: &system,
        tail: &tail,
    };
    let keys = w.count() as usize;
    let (bytes, crc) = w.finish(&rest).map_err(io("write snapshot", &tmp))?;
    f.sync_all().map_err(io("sync snapshot", &tmp))?;
    drop(f);
    let path = snapshot::snapshot_path(dir, lsn);
    durable_rename(fs, &tmp, &path).map_err(io("rename snapshot", &tmp))?;
    let manifest = Manifest {
        snapshot_lsn: lsn,
        snapshot_bytes: bytes,
        snapshot_crc: crc,
    };
    Ok(Written {
        manifest,
        at_ms,
        keys,
        system,
    })
}

/// What [`write_fuzzy_snapshot`] wrote: the manifest that would commit it, the decision time at
/// its LSN, its number of entries and its system namespace.
struct Written {
    manifest: Manifest,
    at_ms: u64,
    keys: usize,
    system: System,
}

/// The error for work asked of an engine that `Engine::halt` stopped.
fn halted(seq: &Sequencer) -> Error {
    Error::Wal(match seq.wal.poisoned() {
        Some(first) => keel_wal::Error::Poisoned(first),
        None => keel_wal::Error::Closed,
    })
}

/// `None` when the current snapshot is already up to date.
fn checkpoint_locked(
    seq: &Sequencer,
    dir: &Path,
    st: &mut State,
    halting: &AtomicBool,
) -> Result<Option<CheckpointInfo>> {
    let started = Instant::now();
    if st.halted {
        return Err(halted(seq));
    }
    if seq.publisher.visible().lsn() == st.manifest.snapshot_lsn {
        return Ok(None);
    }
    let logged = seq.logged_since_checkpoint.load(Ordering::Relaxed);
    let fs = &*seq.opts.wal.fs;
    let part_keys = st.part_keys;
    let between = &mut || st.between_parts(seq);
    let written = write_fuzzy_snapshot(seq, dir, part_keys, halting, between)?;
    let (next, keys) = (written.manifest, written.keys);
    let lsn = next.snapshot_lsn;
    commit_manifest(fs, dir, &next)?;
    st.manifest = next;
    seq.logged_since_checkpoint
        .fetch_sub(logged, Ordering::Relaxed);
    let (base, snapshots_removed) = retain(seq, dir, lsn)?;
    let segments_pruned = seq.wal.prune_before(base + 1)?;
    let info = CheckpointInfo {
        lsn,
        snapshot_bytes: next.snapshot_bytes,
        keys,
        completed_ms: now_ms(),
        duration: started.elapsed(),
        segments_pruned,
        snapshots_removed,
    };
    tracing::info!(?info, "checkpoint");
    Ok(Some(info))
}

/// Applies the retention rule after a checkpoint at `current`. Keeps every snapshot decided
/// within the retention window, plus the newest one decided before it (the base that makes
/// the window's start restorable), and removes the rest. Returns the LSN the log is needed
/// after, and how many snapshots were removed.
fn retain(seq: &Sequencer, dir: &Path, current: Lsn) -> Result<(Lsn, usize)> {
    let fs = &*seq.opts.wal.fs;
    let all = list_snapshots(fs, dir)?;
    let older = all.iter().copied().filter(|&l| l < current);
    let (keep, base): (Vec<Lsn>, Lsn) = if seq.opts.retention.is_zero() {
        // P13: keep the snapshot before this one and the log after it, so that one damaged
        // snapshot or manifest costs nothing (recovery falls back to it). Before there is
        // one, a log that was never pruned is that fallback: the empty state plus the log.
        match older.clone().max() {
            Some(prev) => (vec![current, prev], prev),
            None if seq.wal.first_lsn() == 1 => (vec![current], 0),
            None => (vec![current], current),
        }
    } else {
        let cutoff = now_ms().saturating_sub(seq.opts.retention.as_millis() as u64);
        let mut within = vec![current];
        let mut before = None;
        for l in older.clone() {
            let path = snapshot::snapshot_path(dir, l);
            let at = fs
                .open(&path, OpenMode::Read)
                .map_err(FileError::from)
                .and_then(|f| SnapshotHeader::read(&*f));
            match at {
                Ok(h) if h.at_ms < cutoff => before = Some(l),
                Ok(_) => within.push(l),
                Err(e) => {
                    // Not primary data: leave it alone and say so.
                    tracing::warn!(path = %path.display(), error = %e, "unreadable old snapshot kept");
                    within.push(l);
                }
            }
        }
        let base = match before {
            Some(b) => b,
            // Nothing older than the window: a log never pruned reaches back to the empty
            // state, which is restorable too.
            None if seq.wal.first_lsn() == 1 => 0,
            None => within.iter().copied().min().unwrap_or(current),
        };
        within.extend(before);
        (within, base)
    };
    let mut removed = 0;
    for l in older.filter(|l| !keep.contains(l)) {
        let p = snapshot::snapshot_path(dir, l);
        durable_remove(fs, &p).map_err(io("remove old snapshot", &p))?;
        removed += 1;
    }
    Ok((base, removed))
}

/// The background thread: expiry and checkpoint triggers, every 100 ms. It holds the engine only
/// weakly, and stops when the engine is dropped.
pub(crate) struct Background {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the thread for `engine`, which lives in `dir`: every 100 ms, while the engine
    /// lives, it calls `maintain` on it.
    pub(crate) fn start<T: Send + Sync + 'static>(
        engine: &Arc<T>,
        dir: &Path,
        maintain: fn(&T, &dyn Fn() -> bool),
    ) -> Result<Self> {
        let weak: Weak<T> = Arc::downgrade(engine);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("keel-engine-bg".into())
            .spawn(move || {
                let stopping = || *lock(&s.0);
                loop {
                    {
                        let g = lock(&s.0);
                        let (g, _) =
                            s.1.wait_timeout(g, Duration::from_millis(100))
                                .unwrap_or_else(|p| p.into_inner());
                        if *g {
                            return;
                        }
                    }
                    let Some(core) = weak.upgrade() else { return };
                    maintain(&core, &stopping);
                }
            })
            .map_err(io("spawn background thread", dir))?;
        Ok(Background {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use keel_wal::LogReader;

    use super::*;
    use crate::keyspace::{change, Change, Map, System};
    use crate::publish::TAIL_BYTES_MAX;
    use crate::table::tests::Rng;
    use crate::{Engine, Entry, Options, Ttl, Write, WAL_DIR};
    use bytes::Bytes;

    /// Under writes a checkpoint rests until its CPU is CHECKPOINT_CPU_PERCENT of the time it
    /// took, not beyond, and not at all once its tail fills.
    #[test]
    fn a_checkpoint_under_writes_rests_to_its_share_of_a_core() {
        let ms = Duration::from_millis;
        assert_eq!(CHECKPOINT_CPU_PERCENT, 15);
        // 15 ms of CPU is due 100 ms of time: after 30 ms it rests 70.
        assert_eq!(pause(15_000_000, ms(30), false), Some(ms(70)));
        assert_eq!(pause(15_000_000, ms(100), false), None);
        assert_eq!(pause(15_000_000, ms(250), false), None);
        assert_eq!(pause(15_000_000, ms(30), true), None);
        assert_eq!(pause(0, ms(0), false), None);
    }

    /// Checkpoints and backups taken while two writers run sets, expiring sets, deletes, DeleteAlls and
    /// system writes, each checkpoint reading the keyspace two entries at a time and waiting
    /// for a write between parts; under the durable policy and under one that never syncs
    /// (whose checkpoints must sync what they include). Every snapshot must load to exactly the state the log gives
    /// at the snapshot's LSN: entries with their versions and expiries, and the system
    /// namespace. Reading the keyspace without the tail, or the tail from the wrong start, fails.
    #[test]
    fn fuzzy_checkpoints_under_writes_are_the_image_at_their_lsn() {
        for policy in [keel_wal::SyncPolicy::Always, keel_wal::SyncPolicy::Never] {
            checkpoints_under_writes(policy);
        }
    }

    fn checkpoints_under_writes(policy: keel_wal::SyncPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options {
            background: false,
            checkpoint_interval: None,
            checkpoint_log_bytes: 0,
            retention: Duration::from_secs(3600),
            ..Options::default()
        };
        opts.wal.sync_policy = policy;
        let (engine, _) = Engine::open(dir.path(), opts.clone()).unwrap();
        // Between parts, wait (at most a second) until some write becomes visible.
        let wait = |seq: &Sequencer| {
            let (seen, since) = (seq.publisher.published(), Instant::now());
            while seq.publisher.published() == seen && since.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_micros(50));
            }
        };
        engine.set_checkpoints_for_test(2, Box::new(wait));
        let keys = 300;
        let batch: Vec<Write> = (0..keys)
            .map(|i| Write::Put {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(format!("v{i}")),
                ttl: Ttl::None,
                only: Default::default(),
            })
            .collect();
        engine.commit(vec![], batch).unwrap();
        let stop = AtomicBool::new(false);
        let backups = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (engine, stop) = (&engine, &stop);
                s.spawn(move || {
                    let mut r = Rng(t + 1);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = Bytes::from(format!("k{}", r.below(keys + keys / 2)));
                        let w = match r.below(100) {
                            _ if r.chance(1) && r.chance(5) => Write::DeleteAll,
                            1..=3 => Write::System {
                                key: Bytes::from(format!("s{}", r.below(3))),
                                value: Bytes::from(format!("{t}.{n}")),
                            },
                            4..=30 => Write::Delete { key },
                            _ => Write::Put {
                                key,
                                value: Bytes::from(format!("{t}.{n}")),
                                ttl: if r.chance(20) {
                                    Ttl::At(4_000_000_000_000 + n)
                                } else {
                                    Ttl::None
                                },
                                only: Default::default(),
                            },
                        };
                        engine.commit(vec![], vec![w]).unwrap();
                    }
                });
            }
            // The writers stop however this ends, a failed checkpoint included.
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let _stop = Stop(&stop);
            for i in 0..12 {
                if i % 3 == 2 {
                    let target = backups.path().join(format!("b{i}"));
                    let r = engine.backup(&target).unwrap();
                    files.push((
                        r.lsn,
                        snapshot::snapshot_path(&target, r.lsn),
                        Some(r.system),
                    ));
                } else {
                    let lsn = engine.checkpoint().unwrap();
                    files.push((lsn, snapshot::snapshot_path(dir.path(), lsn), None));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        drop(engine);
        let fs = &*opts.wal.fs;
        files.sort();
        assert!(files.windows(2).all(|w| w[0].0 < w[1].0), "{files:?}");
        let log = LogReader::open(dir.path().join(WAL_DIR), &opts.wal).unwrap();
        let mut records = log.iter_from(1).unwrap();
        let (mut map, mut system, mut at) = (Map::default(), System::new(), 0);
        let mut tails = 0;
        for (lsn, path, reported) in files {
            while at < lsn {
                let r = records.next().unwrap().unwrap();
                at = r.lsn;
                let decoded = crate::record::decode(&Bytes::from(r.payload), r.lsn).unwrap();
                for m in &decoded.mutations {
                    match change(m, r.lsn) {
                        Change::Key(k, Some(e)) => {
                            map.insert(k, &e);
                        }
                        Change::Key(k, None) => {
                            map.remove(k);
                        }
                        Change::Edit(k, m) => map.edit(k, m, r.lsn),
                        Change::All => map.clear(),
                        Change::System(k, v) => {
                            system.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            let f = fs.open(&path, OpenMode::Read).unwrap();
            let mut entries = 0;
            let raw = snapshot::read_snapshot_into(&*f, None, None, &mut |_, _, _, _, _| {
                entries += 1;
                Ok(())
            })
            .unwrap();
            tails += raw.tail.len();
            let loaded = snapshot::read_snapshot(&*f, None, None).unwrap();
            assert_eq!(loaded.header.lsn, lsn);
            assert_eq!(loaded.header.count, entries);
            assert!(loaded.image.map == map, "the snapshot at {lsn}");
            assert_eq!(loaded.image.system, system, "the snapshot at {lsn}");
            if let Some(reported) = reported {
                let reported: System = reported.into_iter().collect();
                assert_eq!(reported, system, "the backup's report at {lsn}");
            }
        }
        assert!(tails > 100, "{tails} records in tails ({policy:?})");
    }

    /// A writes between a checkpoint's parts, in order: sets, an expiring set, deletes, a
    /// DeleteAll and a system entry.
    fn between_write(i: usize) -> Write {
        let key = Bytes::from(format!("k{}", (i * 7) % 40));
        match i % 4 {
            _ if i == 5 => Write::DeleteAll,
            1 => Write::Delete { key },
            2 => Write::System {
                key: Bytes::from_static(b"s"),
                value: Bytes::from(format!("{i}")),
            },
            n => Write::Put {
                key,
                value: Bytes::from(format!("w{i}")),
                ttl: if n == 3 {
                    Ttl::At(4_000_000_000_000 + i as u64)
                } else {
                    Ttl::None
                },
                only: Default::default(),
            },
        }
    }

    /// Every entry and the system entry, expired or not, with versions.
    fn full_state(e: &Engine) -> (std::collections::BTreeMap<Bytes, Entry>, Option<Bytes>) {
        let entries = e.read(|v| v.iter().collect());
        (entries, e.system(b"s"))
    }

    /// P6 for a fuzzy checkpoint, exhaustively: a power cut at every file-system operation of a
    /// checkpoint that has writes between its parts (so its file has a tail) recovers every write
    /// acknowledged before the cut, and at most the one in flight besides, and the next
    /// checkpoint works.
    #[test]
    fn a_crash_at_every_step_of_a_fuzzy_checkpoint_loses_no_acknowledged_write() {
        use std::sync::atomic::AtomicUsize;

        use keel_sim::SimFs;

        const DIR: &str = "/db";
        let options = |fs: &SimFs| Options {
            wal: keel_wal::Options {
                fs: Arc::new(fs.clone()),
                prepare_segments_in_background: false,
                segment_bytes_max: 4096,
                record_bytes_max: 2048,
                batch_bytes_max: 4000,
                ..keel_wal::Options::default()
            },
            key_bytes_max: 64,
            value_bytes_max: 1024,
            background: false,
            ..Options::default()
        };
        let prepare = |fs: &SimFs| -> (Engine, Arc<AtomicUsize>) {
            let (e, _) = Engine::open(DIR, options(fs)).unwrap();
            for i in 0..30 {
                e.put(format!("k{i}"), format!("v{i}")).unwrap();
            }
            e.checkpoint().unwrap();
            e.put("k0", "after").unwrap();
            let acked = Arc::new(AtomicUsize::new(0));
            let n = acked.clone();
            let write = move |seq: &Sequencer| {
                let i = n.load(Ordering::SeqCst);
                if seq
                    .commit_combined(None, vec![], vec![between_write(i)])
                    .is_ok()
                {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            };
            // Parts of at least 2 keys: the table's hash seed is random, so how its 64 shards
            // divide 31 keys varies, and parts of at least 4 were sometimes only 6 (5 writes,
            // before the DeleteAll this test needs between parts).
            e.set_checkpoints_for_test(2, Box::new(write));
            (e, acked)
        };
        // The state after each number of writes between parts.
        let fs = SimFs::new(3);
        let (reference, _) = Engine::open(DIR, options(&fs)).unwrap();
        for i in 0..30 {
            reference.put(format!("k{i}"), format!("v{i}")).unwrap();
        }
        reference.put("k0", "after").unwrap();
        let mut states = vec![full_state(&reference)];
        for i in 0..20 {
            reference.commit(vec![], vec![between_write(i)]).unwrap();
            states.push(full_state(&reference));
        }
        drop(reference);
        let fs = SimFs::new(3);
        let (e, acked) = prepare(&fs);
        let a = fs.counts().total;
        e.checkpoint().unwrap();
        let b = fs.counts().total;
        let writes = acked.load(Ordering::SeqCst);
        assert!(writes >= 6, "{writes} writes between parts");
        assert_eq!(full_state(&e), states[writes]);
        drop(e);
        for k in a..=b {
            let fs = SimFs::new(3);
            let (e, acked) = prepare(&fs);
            fs.crash_at(k);
            let _ = e.checkpoint();
            let acked = acked.load(Ordering::SeqCst);
            drop(e);
            let image = fs.crash(k);
            let (e, _) = Engine::open(DIR, options(&image)).unwrap_or_else(|err| {
                panic!("crash at op {k} of {a}..{b}: recovery failed: {err}")
            });
            let got = full_state(&e);
            assert!(
                got == states[acked] || got == states[acked + 1],
                "crash at op {k} of {a}..{b}, {acked} writes acknowledged: {got:?}"
            );
            e.checkpoint().unwrap();
            drop(e);
            let (e, _) = Engine::open(DIR, options(&image)).unwrap();
            assert_eq!(full_state(&e), got, "crash at op {k}: reopened");
        }
    }

    /// `Engine::halt` first raises the halting flag, then waits for the checkpoint lock: a
    /// checkpoint in progress stops at its next part, fails, and leaves no snapshot, instead of
    /// reading the rest of the keyspace.
    #[test]
    fn a_halting_engine_stops_a_checkpoint_at_its_next_part() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background: false,
            ..Options::default()
        };
        let (engine, _) = Engine::open(dir.path(), opts).unwrap();
        for i in 0..100 {
            engine.put(format!("k{i}"), "v").unwrap();
        }
        let (parts, seen) = mpsc::channel();
        let (go, wait) = mpsc::channel::<()>();
        let wait = Mutex::new(wait);
        engine.set_checkpoints_for_test(
            1,
            Box::new(move |_: &Sequencer| {
                parts.send(()).unwrap();
                lock(&wait).recv().unwrap();
            }),
        );
        std::thread::scope(|s| {
            let running = s.spawn(|| engine.checkpoint());
            for _ in 0..3 {
                seen.recv().unwrap();
                go.send(()).unwrap();
            }
            seen.recv().unwrap();
            engine.checkpoints().halting.store(true, Ordering::Relaxed);
            go.send(()).unwrap();
            // A part read after this would find no one to let it go on, and fail the test.
            drop(go);
            let r = running.join().unwrap();
            assert!(r.is_err(), "{r:?}");
        });
        assert_eq!(seen.try_iter().count(), 0, "no part read after the flag");
        assert!(list_snapshots(&*engine.options().wal.fs, dir.path())
            .unwrap()
            .is_empty());
    }

    /// P11 for a fuzzy snapshot's tail: the records kept while it reads the keyspace are bounded.
    /// Past the bound the checkpoint fails with a reason, keeps nothing and writes no snapshot;
    /// the next one, with room, succeeds and holds every write.
    #[test]
    fn a_tail_past_its_bound_fails_the_checkpoint_and_a_later_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background: false,
            ..Options::default()
        };
        let (engine, _) = Engine::open(dir.path(), opts.clone()).unwrap();
        for i in 0..20 {
            engine.put(format!("k{i}"), "v").unwrap();
        }
        // Whether the tail filled a quarter of its bound (which ends a checkpoint's pacing),
        // after each write between parts.
        let filling = Arc::new(Mutex::new(Vec::new()));
        let seen = filling.clone();
        let write = move |seq: &Sequencer| {
            let w = Write::Put {
                key: Bytes::from_static(b"big"),
                value: Bytes::from(vec![7u8; 1000]),
                ttl: Ttl::None,
                only: Default::default(),
            };
            seq.commit_combined(None, vec![], vec![w]).unwrap();
            lock(&seen).push(seq.publisher.tail_filling());
        };
        // A key a part (a shard, rounded up): 13 to 20 writes of 1 KB while the keyspace is
        // read in 15 runs. Two keys a part gave 7 to 10, by where the random hash seed put the
        // keys, and 7 KB stayed under the bound: the test failed now and then.
        engine.set_checkpoints_for_test(1, Box::new(write));
        engine.set_tail_bytes_max(8000);
        let e = engine.checkpoint().unwrap_err().to_string();
        assert!(e.contains("more than 8000 bytes"), "{e}");
        // One record of about 1 KB is under a quarter of 8,000 bytes; two are over.
        assert_eq!(lock(&filling)[..2], [false, true]);
        let fs = &*opts.wal.fs;
        assert!(list_snapshots(fs, dir.path()).unwrap().is_empty());
        engine.set_tail_bytes_max(TAIL_BYTES_MAX);
        lock(&filling).clear();
        let lsn = engine.checkpoint().unwrap();
        assert!(lock(&filling).iter().all(|f| !f), "far under 256 MiB");
        let f = fs
            .open(&snapshot::snapshot_path(dir.path(), lsn), OpenMode::Read)
            .unwrap();
        let loaded = snapshot::read_snapshot(&*f, None, None).unwrap();
        assert_eq!(loaded.image.map.len(), 21);
        assert_eq!(loaded.header.lsn, engine.visible_lsn());
    }
}
