//! The engine: opening a directory (recovery), the [`Engine`] handle with its background
//! thread, and [`Core`], the operations, which hand each role its part: the sequencer decides
//! and logs, the publisher serves reads, the checkpoints snapshot and prune.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_wal::fs::durable_create_dir_all;
use keel_wal::{Lsn, OpenMode, Wal, WalStats};

use crate::checkpoint::CheckpointInfo;
use crate::checkpoint::{self, Checkpoints};
use crate::damage::{self, DamagedFile};
use crate::error::{io, Error, Result};
use crate::keyspace::{Changes, Image, ReadView};
use crate::options::{Options, WAL_DIR};
use crate::publish::Publisher;
use crate::record::{self, REQUEST_ID_BYTES_MAX};
use crate::restore::{BackupView, RestoreReport};
use crate::seq::{Requests, Seq};
use crate::sequencer::{check_limits, Prepared, Script, Sequencer};
use crate::snapshot::{self, Manifest};
use crate::types::{Entry, Guard, Outcome, PutIf, Ttl, Write, WriteError, WriteResult};
use crate::util::{lock, now_ms};

/// What opening an engine found and did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The log's own recovery: segments, torn tail, files removed.
    pub wal: keel_wal::RecoveryReport,
    /// LSN of the snapshot loaded (0: none).
    pub snapshot_lsn: Lsn,
    pub snapshot_bytes: u64,
    pub snapshot_load: Duration,
    pub records_replayed: u64,
    pub bytes_replayed: u64,
    /// Live and expired keys held after recovery.
    pub keys: usize,
    /// The last LSN recovered.
    pub lsn: Lsn,
    pub duration: Duration,
    /// The manifest and snapshots that failed their checks and were moved into `DIR/damaged/`;
    /// recovery then used an older snapshot (`snapshot_lsn`) and the log after it (P13).
    pub damaged: Vec<DamagedFile>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.wal)?;
        if self.snapshot_lsn == 0 {
            write!(f, "engine: no snapshot yet")?;
        } else {
            write!(
                f,
                "engine: snapshot at LSN {} ({} bytes, loaded in {:.2?})",
                self.snapshot_lsn, self.snapshot_bytes, self.snapshot_load
            )?;
        }
        write!(
            f,
            ", replayed {} records ({} bytes), {} keys at LSN {}, in {:.2?}",
            self.records_replayed, self.bytes_replayed, self.keys, self.lsn, self.duration
        )?;
        for d in &self.damaged {
            write!(
                f,
                "\nDAMAGED {d}; opened from {} and the log after it instead, losing nothing",
                damage::base_name(self.snapshot_lsn)
            )?;
        }
        Ok(())
    }
}

/// A decided transaction on its way to the disk; see [`Engine::submit`]. It is `'static`, so it
/// can be kept in a queue or moved to another task.
#[must_use = "a transaction is not acknowledged until it is awaited or waited on"]
pub struct Pending {
    core: Arc<Core>,
    state: Option<Prepared>,
    waiting: Option<keel_wal::AckedFuture>,
}

impl Pending {
    /// Blocks until the outcome is durable and visible.
    pub fn wait(mut self) -> Result<Outcome> {
        let p = self.state.take().expect("a Pending is consumed once");
        self.core.sequencer.finish(p)
    }
}

impl Future for Pending {
    type Output = Result<Outcome>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let upto = match this.state.as_mut().expect("polled after completion") {
            Prepared::Wait(ticket, _) => match std::task::ready!(Pin::new(ticket).poll(cx)) {
                Ok(lsns) => *lsns.end(),
                Err(e) => {
                    this.state = None;
                    return Poll::Ready(Err(e.into()));
                }
            },
            Prepared::Done(_, after) => {
                let after = *after;
                if this.core.sequencer.publisher.published() < after {
                    let acked = this
                        .waiting
                        .get_or_insert_with(|| this.core.sequencer.wal.acked(after));
                    if let Err(e) = std::task::ready!(Pin::new(acked).poll(cx)) {
                        this.state = None;
                        return Poll::Ready(Err(e.into()));
                    }
                }
                after
            }
            // Rare, and its original is almost always durable already; otherwise this blocks
            // for at most one sync.
            Prepared::Retry(..) => {
                let p = this.state.take().expect("checked");
                return Poll::Ready(this.core.sequencer.finish(p));
            }
        };
        this.core.sequencer.publish(upto);
        Poll::Ready(Ok(match this.state.take() {
            Some(Prepared::Wait(_, o) | Prepared::Done(o, _)) => o,
            _ => unreachable!("checked"),
        }))
    }
}

/// The embedded engine. Every method takes `&self`; share it by reference or in an `Arc`. The
/// operations live on [`Core`], which an `Engine` dereferences to. Dropping the engine stops its
/// background thread; [`Engine::close`] also syncs and reports the log's final state.
pub struct Engine {
    // Declared first so that it is dropped (stopped and joined) before the core. Taken (and
    // joined) by [`Engine::halt`].
    background: Mutex<Option<checkpoint::Background>>,
    core: Arc<Core>,
}

/// The engine's operations. See [`Engine`].
pub struct Core {
    /// Decides and logs every write, and publishes it; holds the options and the log.
    sequencer: Sequencer,
    dir: PathBuf,
    checkpoints: Checkpoints,
    recovery: RecoveryReport,
}

impl Deref for Engine {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Engine {
    /// Opens (or creates) the engine in `dir`: the manifest, the snapshot it names, then the log
    /// in `dir/wal/` from the snapshot's LSN + 1.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<(Engine, RecoveryReport)> {
        Self::open_with_progress(dir, opts, &mut |_, _| {})
    }

    /// Like [`Engine::open`], calling `progress(bytes_done, bytes_total)` while the log's
    /// recovery scans.
    pub fn open_with_progress(
        dir: impl AsRef<Path>,
        opts: Options,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Engine, RecoveryReport)> {
        Self::open_inner(dir.as_ref(), opts, progress, None)
    }

    /// Opens `dir` again after a failed write or sync poisoned the engine that had it (which
    /// must be halted), dropping every record after `durable_lsn`, that engine's last durable
    /// LSN, before replay. Linux keeps the pages of a failed sync readable but marks them clean
    /// ("fsyncgate"): recovery would read those records from the cache and sync them without
    /// anything reaching the disk, and records acknowledged later would stand behind a hole
    /// after a power cut. Under [`keel_wal::SyncPolicy::Always`] none of them was acknowledged.
    /// The cut is durable before anything new is logged.
    pub fn reopen_after_failure(
        dir: impl AsRef<Path>,
        opts: Options,
        durable_lsn: Lsn,
    ) -> Result<(Engine, RecoveryReport)> {
        Self::open_inner(dir.as_ref(), opts, &mut |_, _| {}, Some(durable_lsn))
    }

    fn open_inner(
        dir: &Path,
        opts: Options,
        progress: &mut dyn FnMut(u64, u64),
        discard_after: Option<Lsn>,
    ) -> Result<(Engine, RecoveryReport)> {
        let started = Instant::now();
        opts.validate()?;
        let dir = dir.to_path_buf();
        let fs = opts.wal.fs.clone();
        durable_create_dir_all(&*fs, &dir).map_err(io("create directory", &dir))?;
        let state = damage::read_manifest_state(&*fs, &dir)?;
        let now = now_ms();
        let mut requests = Requests::default();
        let mut report = RecoveryReport::default();
        let t = Instant::now();
        // P13: the manifest's snapshot if it and the manifest pass their checks, else the newest
        // snapshot that does (or the empty state). `inspect` chooses the same way.
        let choice = damage::choose(&*fs, &dir, &state, &mut |path, expect| {
            let f = fs.open(path, OpenMode::Read)?;
            let bytes = f.len()?;
            let loaded = snapshot::read_snapshot(&*f, expect, opts.wal.keyring.as_deref())?;
            // Its trailing CRC, which `read_snapshot` checked, for a manifest that names it.
            let mut crc = [0u8; 4];
            keel_wal::fs::read_exact_at(&*f, &mut crc, bytes - 4)?;
            let m = Manifest {
                snapshot_lsn: loaded.header.lsn,
                snapshot_bytes: bytes,
                snapshot_crc: u32::from_le_bytes(crc),
            };
            Ok((loaded.header.lsn, (loaded, m)))
        })?;
        let snapshot_lsn = choice.base;
        let (mut image, mut at_ms, manifest) = match choice.loaded {
            None => (Image::default(), 0, Manifest::default()),
            Some((loaded, m)) => {
                for (l, r) in loaded.requests {
                    requests.insert(l, r, &opts, now);
                }
                report.snapshot_load = t.elapsed();
                report.snapshot_bytes = m.snapshot_bytes;
                (loaded.image, loaded.header.at_ms, m)
            }
        };
        report.snapshot_lsn = snapshot_lsn;
        let mut damaged = choice.damaged;
        // Only the log after the base is needed: damage wholly below it is left out, not fatal.
        let opened = Wal::open_from(
            dir.join(WAL_DIR),
            opts.wal.clone(),
            snapshot_lsn + 1,
            progress,
        );
        let (wal, wal_report) = match opened {
            Ok(w) => w,
            Err(keel_wal::Error::Corruption(c)) if !damaged.is_empty() => {
                return Err(Error::NoCompletePath {
                    dir: dir.clone(),
                    damaged: damaged.iter().map(|d| d.to_string()).collect(),
                    detail: format!(
                        "LSNs from {} on are unreachable: the newest usable base is {}, and the log after it is damaged too: {c}",
                        c.last_good_lsn.unwrap_or(snapshot_lsn).max(snapshot_lsn) + 1,
                        damage::base_name(snapshot_lsn)
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(keep) = discard_after.filter(|&k| k < wal.last_lsn()) {
            tracing::warn!(
                "dropping LSNs {}..={} from the log: a sync of them failed, so they may exist \
                 only in the page cache, and none was acknowledged",
                keep + 1,
                wal.last_lsn()
            );
            wal.truncate_after(keep)?;
        }
        let (first, last) = (wal.first_lsn(), wal.last_lsn());
        // P4 between snapshot and log: the log must continue exactly where the snapshot ends.
        if let Err((from, to)) = damage::reach(snapshot_lsn, first, last) {
            let base = damage::base_name(snapshot_lsn);
            return Err(Error::NoCompletePath {
                dir: dir.clone(),
                damaged: damaged.iter().map(|d| d.to_string()).collect(),
                detail: format!(
                    "LSNs {from}..={to} are unreachable: the newest usable base is {base}, and the log holds LSNs {first}..={last}"
                ),
            });
        }
        // A complete path exists: set the damaged files aside (never deleted) and commit a
        // manifest that names the base, before anything new is logged.
        if !damaged.is_empty() {
            for d in &mut damaged {
                if fs.exists(&d.path).map_err(io("stat", &d.path))? {
                    d.moved_to = Some(damage::move_aside(&*fs, &dir, &d.path)?);
                }
            }
            checkpoint::commit_manifest(&*fs, &dir, &manifest)?;
            for d in &damaged {
                tracing::warn!(
                    "damaged file set aside: {d}; opened from {} and the log after it, losing nothing",
                    damage::base_name(snapshot_lsn)
                );
            }
        }
        report.damaged = damaged;
        // P7: records the snapshot already holds are skipped.
        let mut applied = snapshot_lsn.max(first - 1);
        let mut replay = Changes::default();
        for rec in wal.read_from(applied + 1)? {
            let rec = rec?;
            report.bytes_replayed += rec.payload.len() as u64;
            let decoded = record::decode(&Bytes::from(rec.payload), rec.lsn).map_err(|source| {
                Error::BadRecord {
                    lsn: rec.lsn,
                    source,
                }
            })?;
            replay.apply(&decoded.mutations, rec.lsn);
            if let Some(r) = decoded.request {
                requests.insert(rec.lsn, r, &opts, now);
            }
            at_ms = decoded.at_ms;
            applied = rec.lsn;
            report.records_replayed += 1;
        }
        replay.merge_into(&mut image);
        checkpoint::remove_uncommitted(&*fs, &dir, snapshot_lsn)?;
        let seq = Seq::recovered(requests, &image.map, at_ms, applied);
        report.wal = wal_report;
        report.keys = image.map.len();
        report.lsn = applied;
        report.duration = started.elapsed();
        let core = Arc::new(Core {
            checkpoints: Checkpoints::new(manifest),
            sequencer: Sequencer::new(
                opts,
                wal,
                seq,
                Publisher::new(image, applied, at_ms),
                report.bytes_replayed,
            ),
            dir,
            recovery: report.clone(),
        });
        let background = core
            .sequencer
            .opts
            .background
            .then(|| checkpoint::Background::start(&core, &core.dir, Core::maintain))
            .transpose()?;
        Ok((
            Engine {
                core,
                background: Mutex::new(background),
            },
            report,
        ))
    }

    /// Decides a transaction now, in the order of this call, and returns without waiting for
    /// durability. Await the [`Pending`] (or [`Pending::wait`]) for the outcome: it resolves
    /// once the record is durable and visible. A connection can so submit a pipeline of writes
    /// that share one sync, and still see them decided in its own order.
    pub fn submit(&self, guards: Vec<Guard>, writes: Vec<Write>) -> Result<Pending> {
        self.pending(None, guards, writes)
    }

    /// [`Engine::submit`] under a client request id (see [`Core::commit_request`]).
    pub fn submit_request(
        &self,
        id: impl Into<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Pending> {
        self.pending(Some(check_id(id.into())?), guards, writes)
    }

    /// [`Engine::submit`] (or, with `id`, [`Engine::submit_request`]) decided as of `now_ms`
    /// rather than this machine's clock: expiry, liveness and request retention all use that
    /// time. Replicas that apply the same transactions with the same times, in the same order,
    /// from the same state, reach the same state and the same LSNs (keel cluster relies on it).
    pub fn submit_at(
        &self,
        id: Option<Bytes>,
        now_ms: u64,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Pending> {
        let id = id.map(check_id).transpose()?;
        self.core.check_writes(&writes)?;
        let seq = &self.core.sequencer;
        let p = seq.prepare_locked(&mut seq.seq(), id, now_ms, &guards, writes, None)?;
        Ok(Pending {
            core: self.core.clone(),
            state: Some(p),
            waiting: None,
        })
    }

    /// A script's transaction, decided as of `now_ms`: `run` gets a [`Script`] and calls
    /// [`Script::call`] once per command, each decided against the state every earlier
    /// transaction and the script's earlier calls leave. Everything it wrote is logged as one
    /// record, which the returned [`Pending`] waits for; a script that wrote nothing waits for
    /// every earlier transaction instead, as a read-only transaction does. Replay applies the
    /// record's effects and never runs the script again.
    ///
    /// `run` holds the sequencer lock: every other writer waits until it returns.
    pub fn submit_script<R>(
        &self,
        now_ms: u64,
        run: impl FnOnce(&mut Script<'_>) -> R,
    ) -> Result<(R, Pending)> {
        let seq = &self.core.sequencer;
        let (r, p) = seq.prepare_script(&mut seq.seq(), now_ms, run)?;
        let pending = Pending {
            core: self.core.clone(),
            state: Some(p),
            waiting: None,
        };
        Ok((r, pending))
    }

    /// Runs `run` as [`Engine::submit_script`] does, but against the visible (durable)
    /// state, without the sequencer lock, and keeps nothing: a dry run. The script's
    /// [`Script::take_recorded`] then gives the writes it made and the versions of the keys it
    /// touched. A cluster's leader runs a script so, then proposes those writes guarded by
    /// those versions at the same time: every replica decides them as the dry run did, or the
    /// guards fail and the leader runs the script again.
    pub fn try_script<R>(&self, now_ms: u64, run: impl FnOnce(&mut Script<'_>) -> R) -> R {
        self.core.sequencer.try_script(now_ms, run)
    }

    fn pending(
        &self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Pending> {
        let p = self.core.prepare(id, &guards, writes)?;
        Ok(Pending {
            core: self.core.clone(),
            state: Some(p),
            waiting: None,
        })
    }

    /// Stops the background thread, then finishes queued appends, syncs and closes the log.
    /// Returns the first failure if the log was poisoned.
    pub fn close(self) -> Result<()> {
        self.halt()
    }

    /// [`Engine::close`] through a shared reference, for an engine that other threads may still
    /// hold (a server's connections in the middle of a command, say). Once it returns, the
    /// background thread has stopped, no checkpoint runs or will run, the log is closed and the
    /// directory is unlocked, so that [`Engine::open`] can open it again in this process, which
    /// is how a server recovers from a poisoned log without a restart. Reads keep answering
    /// from the last visible (durable) state; every later write fails, with the log's first
    /// failure if it was poisoned. Calling it again changes nothing.
    pub fn halt(&self) -> Result<()> {
        let background = lock(&self.background).take();
        drop(background);
        // Waits for a checkpoint in progress; none starts after this.
        self.core.checkpoints.halt();
        Ok(self.core.sequencer.wal.halt()?)
    }
}

impl Core {
    /// The directory the engine lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &Options {
        &self.sequencer.opts
    }

    /// What opening the engine found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log's first failure, if a failed write or sync has poisoned it (P5): the engine then
    /// refuses every write until the directory is opened again (see [`Engine::halt`]).
    pub fn poisoned(&self) -> Option<Arc<keel_wal::Error>> {
        self.sequencer.wal.poisoned()
    }

    /// The log's counters: records, syncs, sync time, bytes.
    pub fn wal_stats(&self) -> WalStats {
        self.sequencer.wal.stats()
    }

    /// The WAL's slowest data sync since the last call (see [`keel_wal::Wal::take_slowest_sync`]).
    pub fn take_slowest_wal_sync(&self) -> Duration {
        self.sequencer.wal.take_slowest_sync()
    }

    /// Reads the durable state now: `f` sees one state, whole transactions only (P10), with
    /// expiry judged as of the call. Several reads in one `f` (a multi-key read, a transaction's
    /// reads, a check of versions) all see the same state.
    ///
    /// `f` runs under the visible state's read lock, so while it runs no write becomes
    /// visible and no commit is acknowledged: keep it short, copy out what you need, and never
    /// hold it across a wait. `f` must not call this engine (a commit inside it would wait
    /// forever for itself); such a call panics instead of deadlocking.
    pub fn read<R>(&self, f: impl FnOnce(&ReadView<'_>) -> R) -> R {
        self.sequencer.publisher.read(now_ms(), f)
    }

    /// The live string entry of `key` in the durable state now; `None` also when the key holds
    /// another type (read those with [`Engine::read`] and [`ReadView::read`]).
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.read(|v| v.get(key))
    }

    /// The value of `key` in the durable state's system namespace (see [`Write::System`]).
    pub fn system(&self, key: &[u8]) -> Option<Bytes> {
        self.sequencer.publisher.visible().system(key).cloned()
    }

    /// The live entries of `keys`, all read from one durable state (one [`Engine::read`]).
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<Option<Entry>> {
        self.read(|v| keys.into_iter().map(|k| v.get(k)).collect())
    }

    pub fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<Lsn> {
        let w = Write::Put {
            key: key.into(),
            value: value.into(),
            ttl: Ttl::None,
            only: PutIf::Always,
        };
        match self.commit(Vec::new(), vec![w])? {
            Outcome::Committed { lsn: Some(l), .. } => Ok(l),
            Outcome::Fenced => Err(Error::Fenced),
            other => unreachable!("an unconditional put always writes: {other:?}"),
        }
    }

    /// Deletes `key`; returns whether it had a live value.
    pub fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        match self.commit(Vec::new(), vec![Write::Delete { key: key.into() }])? {
            Outcome::Committed { results, .. } => Ok(results[0] == WriteResult::Existed(true)),
            Outcome::Fenced => Err(Error::Fenced),
            other => unreachable!("no guards: {other:?}"),
        }
    }

    /// Writes `value` only if the key's version is `expected` (`None`: no live value).
    /// Returns the new version, or `None` if the version differed.
    pub fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Lsn>,
        value: impl Into<Bytes>,
    ) -> Result<Option<Lsn>> {
        let key = key.into();
        let guard = Guard {
            key: key.clone(),
            version: expected,
        };
        let w = Write::Put {
            key,
            value: value.into(),
            ttl: Ttl::None,
            only: PutIf::Always,
        };
        match self.commit(vec![guard], vec![w])? {
            Outcome::Committed { lsn, .. } => Ok(lsn),
            Outcome::GuardFailed(_) => Ok(None),
            Outcome::Fenced => Err(Error::Fenced),
        }
    }

    pub fn incr(&self, key: impl Into<Bytes>, by: i64) -> Result<i64> {
        let w = Write::Incr {
            key: key.into(),
            by,
        };
        match self.commit(Vec::new(), vec![w])? {
            Outcome::Committed { results, .. } => match results[0] {
                WriteResult::Int(v) => Ok(v),
                WriteResult::Failed(WriteError::Overflow) => Err(Error::Overflow),
                WriteResult::Failed(_) => Err(Error::NotAnInteger),
                ref other => unreachable!("incr yields an integer: {other:?}"),
            },
            Outcome::Fenced => Err(Error::Fenced),
            other => unreachable!("no guards: {other:?}"),
        }
    }

    /// Checks `guards`, then applies `writes` in order, atomically: one WAL record, all or
    /// nothing after any crash. Returns once the writes are durable and visible. Blocks the
    /// calling thread; async code uses [`Engine::submit`] and awaits it.
    pub fn commit(&self, guards: Vec<Guard>, writes: Vec<Write>) -> Result<Outcome> {
        self.check_writes(&writes)?;
        self.sequencer.commit_combined(None, guards, writes)
    }

    /// Like [`Core::commit`], under a client request id (P8). The first call with an id is
    /// decided and logged together with its outcome, even when it writes nothing; a retry with
    /// the same id, also after a crash and restart, returns that same outcome and applies
    /// nothing. Ids are remembered within `request_retention_count` and `request_retention_ms`.
    pub fn commit_request(
        &self,
        id: impl Into<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Outcome> {
        let id = check_id(id.into())?;
        self.check_writes(&writes)?;
        self.sequencer.commit_combined(Some(id), guards, writes)
    }

    /// Decides the transaction and queues its record, under the sequencer lock.
    fn prepare(&self, id: Option<Bytes>, guards: &[Guard], writes: Vec<Write>) -> Result<Prepared> {
        self.check_writes(&writes)?;
        let seq = &self.sequencer;
        seq.prepare_locked(&mut seq.seq(), id, now_ms(), guards, writes, None)
    }

    fn check_writes(&self, writes: &[Write]) -> Result<()> {
        writes.iter().try_for_each(|w| self.check_limits(w))
    }

    fn check_limits(&self, w: &Write) -> Result<()> {
        check_limits(&self.sequencer.opts, w)
    }

    /// Waits, without blocking a thread, until the log would queue a transaction of about
    /// `bytes` without waiting for room: [`Engine::submit`] blocks its thread while the log's
    /// queue is full, which in async code stalls every task on that thread. Room is not
    /// reserved; another writer may take it first.
    pub fn room(&self, bytes: usize) -> keel_wal::RoomFuture {
        self.sequencer.wal.room(bytes)
    }

    /// Makes every write decided so far durable, whatever the sync policy, and visible.
    /// Returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        let lsn = self.sequencer.wal.sync()?;
        self.sequencer.publish(lsn);
        Ok(lsn)
    }

    /// The LSN up to which every write is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.sequencer.wal.durable_lsn()
    }

    /// The LSN of the last write readers can see.
    pub fn visible_lsn(&self) -> Lsn {
        self.sequencer.publisher.visible().lsn()
    }

    /// Makes the outcomes of transactions decided from now on carry the keys each write
    /// changed, and whether it created or deleted them ([`Outcome::Committed`]'s `effects`;
    /// [`Script::take_effects`](crate::Script::take_effects)), or stops. Off by default: it
    /// costs a lookup per changed key. Keyspace notifications are made from them.
    pub fn report_effects(&self, on: bool) {
        (self.sequencer.report_effects).store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Holds active expiry back (`true`) or lets it go on (`false`): while held, expired keys
    /// stay invisible but are not removed, so nothing is logged for them (Redis's CLIENT PAUSE
    /// WRITE, which keeps the data set still).
    pub fn pause_expiry(&self, paused: bool) {
        (self.sequencer.expiry_paused).store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether active expiry is held back ([`Engine::pause_expiry`]).
    pub fn expiry_paused(&self) -> bool {
        (self.sequencer.expiry_paused).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keys active expiry has removed since the engine opened (INFO's `expired_keys`: every
    /// expired key is removed within about 100 ms, read or not).
    pub fn expired_keys(&self) -> u64 {
        (self.sequencer.expired_keys).load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The keys active expiry removed since the last call, kept while `wanted` (client-side
    /// caching's invalidations); `None` when more expired than are kept (65,536), so that any
    /// key may have.
    pub fn take_expired(&self, wanted: bool) -> Option<Vec<Bytes>> {
        self.sequencer.take_expired(wanted)
    }

    /// Deletes up to `limit` keys whose expiry has passed, in one log record. Returns how many.
    /// Expired keys are never visible; this only frees their memory (the background thread
    /// calls it).
    pub fn remove_expired(&self, limit: usize) -> Result<usize> {
        self.sequencer.remove_expired(limit)
    }

    #[cfg(test)]
    pub(crate) fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    #[cfg(test)]
    pub(crate) fn set_tail_bytes_max(&self, bytes: usize) {
        self.sequencer.publisher.set_tail_bytes_max(bytes)
    }

    /// Makes checkpoints read the keyspace `n` entries at a time and call `between` between
    /// parts, so that a test sees many parts, with writes between them, over a small keyspace.
    #[cfg(test)]
    pub(crate) fn set_checkpoints_for_test(&self, n: usize, between: checkpoint::BetweenParts) {
        self.checkpoints.set_parts_for_test(n, between)
    }

    /// Writes a snapshot of the durable state and makes it current, then prunes the log and the
    /// snapshots that retention no longer needs. Writers are not blocked: the snapshot is a fuzzy
    /// checkpoint, which reads the visible state a part at a time and adds the records
    /// published meanwhile, so the file is the image at its LSN (docs/FORMAT.md).
    ///
    /// Order (P6): the snapshot holds only durable writes; it is written to a temporary file,
    /// synced, renamed and its directory synced; then the manifest is replaced atomically; only
    /// then are log segments and older snapshots removed. Returns the snapshot's LSN.
    pub fn checkpoint(&self) -> Result<Lsn> {
        self.checkpoints.checkpoint(&self.sequencer, &self.dir)
    }

    /// The last checkpoint's figures, and the last error if the latest attempt failed.
    pub fn last_checkpoint(&self) -> (Option<CheckpointInfo>, Option<String>) {
        self.checkpoints.last()
    }

    /// One round of background work: active expiry, then a checkpoint if one is due.
    fn maintain(&self, stopping: &dyn Fn() -> bool) {
        self.checkpoints
            .maintain(&self.sequencer, &self.dir, stopping)
    }

    /// Writes a consistent copy of the durable state into the new directory `target` while
    /// writes continue: a snapshot written as a checkpoint writes it (the state at one LSN, read
    /// a part at a time, with the records published meanwhile), with an empty log after it.
    /// `target` opens as a normal database. A checkpoint waits for it, and it for a checkpoint.
    pub fn backup(&self, target: impl AsRef<Path>) -> Result<RestoreReport> {
        self.checkpoints.backup(&self.sequencer, target.as_ref())
    }

    /// A copy of the durable state now, to read and then write out with
    /// [`BackupView::write_database`]. It copies the whole keyspace (O(n) memory while it
    /// lives); [`Engine::backup`] writes the same database without a copy.
    pub fn backup_view(&self) -> BackupView {
        BackupView::of(&self.sequencer)
    }
}

fn check_id(id: Bytes) -> Result<Bytes> {
    if id.len() > REQUEST_ID_BYTES_MAX {
        return Err(Error::RequestIdTooLong {
            len: id.len(),
            max: REQUEST_ID_BYTES_MAX,
        });
    }
    Ok(id)
}

#[cfg(test)]
mod report_tests {
    use super::*;

    /// A recovery without a snapshot says so, rather than a snapshot at LSN 0 loaded in 0 ns.
    #[test]
    fn a_report_without_a_snapshot_says_so() {
        let mut r = RecoveryReport {
            records_replayed: 5,
            keys: 4,
            lsn: 5,
            ..RecoveryReport::default()
        };
        let text = r.to_string();
        assert!(
            text.contains("engine: no snapshot yet, replayed 5 records"),
            "{text}"
        );
        r.snapshot_lsn = 3;
        r.snapshot_bytes = 100;
        let text = r.to_string();
        assert!(
            text.contains("engine: snapshot at LSN 3 (100 bytes, loaded in"),
            "{text}"
        );
        assert!(text.contains("), replayed 5 records"), "{text}");
    }
}
