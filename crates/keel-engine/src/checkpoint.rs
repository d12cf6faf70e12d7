//! Checkpoints (P6): snapshot, manifest as the single commit point, then pruning; retention of
//! older snapshots for point-in-time restore; and the background thread that triggers them.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_wal::fs::{durable_create_dir_all, durable_remove, durable_rename, durable_replace};
use keel_wal::{Fs, Lsn, OpenMode};

use crate::error::{io, Error, Result};
use crate::keyspace::Image;
use crate::record::Request;
use crate::sequencer::Sequencer;
use crate::snapshot::{self, FileError, Manifest, SnapshotHeader, MANIFEST, SNAPSHOT_DIR};
use crate::util::{lock, now_ms};

/// What the last checkpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Every write up to this LSN is in the snapshot.
    pub lsn: Lsn,
    pub snapshot_bytes: u64,
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
}

impl Checkpoints {
    /// The bookkeeping of an engine whose manifest in force is `manifest`.
    pub(crate) fn new(manifest: Manifest) -> Self {
        Checkpoints {
            state: Mutex::new(State {
                manifest,
                last_at: Instant::now(),
                failures: 0,
                halted: false,
            }),
            status: Mutex::new(Status::default()),
        }
    }

    /// Waits for a checkpoint in progress; none starts after this (see `Engine::halt`).
    pub(crate) fn halt(&self) {
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
        let r = checkpoint_locked(seq, dir, &mut st);
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

    /// The last checkpoint's figures, and the last error if the latest attempt failed.
    pub(crate) fn last(&self) -> (Option<CheckpointInfo>, Option<String>) {
        let st = lock(&self.status);
        (st.last.clone(), st.last_error.clone())
    }

    /// One round of background work: active expiry, then a checkpoint if one is due.
    pub(crate) fn maintain(&self, seq: &Sequencer, dir: &Path, stopping: &dyn Fn() -> bool) {
        for _ in 0..20 {
            if !seq.opts.active_expiry {
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

/// `None` when the current snapshot is already up to date.
fn checkpoint_locked(
    seq: &Sequencer,
    dir: &Path,
    st: &mut State,
) -> Result<Option<CheckpointInfo>> {
    let started = Instant::now();
    if st.halted {
        return Err(Error::Wal(match seq.wal.poisoned() {
            Some(first) => keel_wal::Error::Poisoned(first),
            None => keel_wal::Error::Closed,
        }));
    }
    if seq.publisher.visible().lsn() == st.manifest.snapshot_lsn {
        return Ok(None);
    }
    let logged = seq.logged_since_checkpoint.load(Ordering::Relaxed);
    // Under a weaker sync policy the visible state can be ahead of the durable log. A
    // snapshot of it, then a power cut, would leave a log that ends before the snapshot,
    // which the next open refuses (a gap). Sync first, so the snapshot holds only what the
    // log holds durably.
    if seq.opts.wal.sync_policy != keel_wal::SyncPolicy::Always {
        seq.wal.sync()?;
    }
    let fs = &*seq.opts.wal.fs;
    let (image, lsn, at_ms, requests) = seq.durable_view();
    let next = write_snapshot_file(dir, &image, &requests, lsn, at_ms, &seq.opts)?;
    commit_manifest(fs, dir, &next)?;
    st.manifest = next;
    seq.logged_since_checkpoint
        .fetch_sub(logged, Ordering::Relaxed);
    let (base, snapshots_removed) = retain(seq, dir, lsn)?;
    let segments_pruned = seq.wal.prune_before(base + 1)?;
    let info = CheckpointInfo {
        lsn,
        snapshot_bytes: next.snapshot_bytes,
        keys: image.map.len(),
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
