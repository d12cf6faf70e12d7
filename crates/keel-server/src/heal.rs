//! The single-node engine, and how the server recovers from a poisoned log without a restart.
//!
//! After a failed write or sync (a full disk, say) the log is poisoned (P5): it acknowledges
//! nothing more and never retries the failed sync. The [`Local::heal`] task notices, halts the
//! engine (its background thread stops, its log closes and the directory's lock is released)
//! and then opens the directory again with [`Engine::open`]: recovery from disk, exactly as a
//! restart runs it, never a copy of state held in memory. It retries with exponential backoff
//! until the open succeeds, and only then swaps the new engine in.
//!
//! Meanwhile reads answer from the halted engine's last visible state, which holds only durable
//! writes (P10), and every write gets [`Local::refusal`]. A reopen that finds less than readers
//! were already shown (a disk that lost synced data) is refused: keel keeps refusing writes
//! rather than serve a state without acknowledged writes.
//!
//! Before each attempt the healer checks that the data directory has room for a whole new log
//! segment (`segment_bytes_max`): recovery itself needs no space, so without the check a log
//! that failed for want of room would reopen at once and fail again on the next write.

use crate::lock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use keel_engine::Engine;
use keel_wal::OpenMode;
use tokio::sync::{watch, Notify};

use crate::resp::Reply;

/// The wait before the second reopen attempt (the first comes at once); it doubles after each
/// failed attempt up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// A log poisoned again within this long of a reopen continues the backoff where it was, so a
/// disk that fails every write is not reopened (recovery replays the log) ten times a second.
const RETRY_RESET_AFTER: Duration = Duration::from_secs(60);
/// How often the healer looks at the log when nothing woke it: a failure in the background
/// (a checkpoint's prune, active expiry) is noticed within this long.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The file the space check allocates and removes, in the data directory.
pub const SPACE_PROBE: &str = "reopen-space-probe.tmp";

/// The engine of a single-node server, which the healer can replace.
pub struct Local {
    engine: RwLock<Arc<Engine>>,
    dir: PathBuf,
    opts: keel_engine::Options,
    state: Mutex<State>,
    attempts: AtomicU64,
    reopens: AtomicU64,
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// The wait before the next reopen attempt, while the log is poisoned.
    retry: Duration,
    /// Why the last reopen attempt failed (cleared by a successful one).
    last_error: Option<String>,
}

/// The log's health, for INFO and the metrics.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// The first failure of the log in use, on one line; `None` while it is healthy.
    pub poisoned: Option<String>,
    /// Reopen attempts since start, successful or not.
    pub reopen_attempts: u64,
    /// Successful reopens since start.
    pub reopens: u64,
    /// The wait before the next attempt (zero while the log is healthy).
    pub retry: Duration,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// An error on one line, for a RESP error or an INFO field.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().replace(['\r', '\n'], " ")
}

impl Local {
    /// `engine` was opened from `dir` with `opts`; a reopen uses the same.
    pub fn new(engine: Engine, dir: PathBuf, opts: keel_engine::Options) -> Arc<Local> {
        Arc::new(Local {
            engine: RwLock::new(Arc::new(engine)),
            dir,
            opts,
            state: Mutex::new(State::default()),
            attempts: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    /// The engine in use now.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn health(&self) -> Health {
        let st = lock(&self.state);
        let poisoned = self.engine().poisoned().map(|first| one_line(first.root()));
        Health {
            retry: if poisoned.is_some() {
                st.retry
            } else {
                Duration::ZERO
            },
            poisoned,
            reopen_attempts: self.attempts.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
            last_error: st.last_error.clone(),
        }
    }

    /// The reply to a write that failed with `e`, if the log is poisoned (and then the healer is
    /// woken, in case it has not noticed yet). Like Redis after a failed AOF write, `MISCONF`.
    pub fn refusal(&self, e: &keel_engine::Error) -> Option<Reply> {
        let keel_engine::Error::Wal(w @ keel_wal::Error::Poisoned(_)) = e else {
            return None;
        };
        self.wake.notify_one();
        let retry = lock(&self.state).retry.max(RETRY_FIRST);
        Some(Reply::err(format!(
            "MISCONF the write-ahead log failed ({}) and refuses writes until it is reopened; \
             keel retries every {:.1} s",
            one_line(w.root()),
            retry.as_secs_f64()
        )))
    }

    /// The healer: waits for the log to be poisoned, halts the engine, reopens the directory
    /// with backoff and swaps the new engine in; again for every later failure. Returns once
    /// `stop` turns true, after any reopen in progress has finished, so that the engine in use
    /// is then the one to close.
    pub async fn heal(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut retry = RETRY_FIRST;
        let mut last_reopen: Option<Instant> = None;
        loop {
            let first = loop {
                if let Some(first) = self.engine().poisoned() {
                    break first;
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            };
            if last_reopen.is_none_or(|t| t.elapsed() >= RETRY_RESET_AFTER) {
                retry = RETRY_FIRST;
            }
            lock(&self.state).retry = retry;
            tracing::error!(
                "the write-ahead log failed ({}): writes are refused and reads go on from the \
                 last durable state; keel reopens the log (recovery, as at a start) as soon as it \
                 can, retrying with backoff from {retry:?} up to {RETRY_MAX:?}",
                one_line(first.root())
            );
            // The directory's lock must be free before it can be opened again. Connections may
            // still hold the old engine: they read from it, and their writes fail.
            let old = self.engine();
            let halting = old.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || halting.halt()).await {
                tracing::error!("halting the poisoned engine failed: {e}");
            }
            // With its log closed, these are final: everything readers were shown or the log
            // called durable, which recovery must bring back.
            let acked = old.visible_lsn().max(old.durable_lsn());
            // Under `always`, what lies past the last good sync was never acknowledged, and may
            // live only in the page cache: the reopen drops it. Under a weaker policy readers
            // may have seen it, so it stays (see the README).
            let durable = (self.opts.wal.sync_policy == keel_wal::SyncPolicy::Always)
                .then(|| old.durable_lsn());
            drop(old);
            loop {
                let n = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
                let this = self.clone();
                let opened = tokio::task::spawn_blocking(move || this.reopen(acked, durable))
                    .await
                    .unwrap_or_else(|e| Err(format!("the reopen thread failed: {e}")));
                match opened {
                    Ok(engine) => {
                        let lsn = engine.visible_lsn();
                        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(engine);
                        self.reopens.fetch_add(1, Ordering::Relaxed);
                        lock(&self.state).last_error = None;
                        last_reopen = Some(Instant::now());
                        tracing::info!(
                            "reopened the write-ahead log (attempt {n}); recovered to LSN {lsn}, \
                             writes are taken again"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "reopening the log failed (attempt {n}): {e}; next try in {retry:?}"
                        );
                        lock(&self.state).last_error = Some(one_line(&e));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
                lock(&self.state).retry = retry;
            }
        }
    }

    /// One reopen attempt: the space check, then recovery. `acked` is the highest LSN readers
    /// were shown or the old log called durable; a recovered state that ends before it is
    /// refused. With `durable`, the log is cut after that LSN first
    /// ([`Engine::reopen_after_failure`]).
    fn reopen(
        &self,
        acked: keel_wal::Lsn,
        durable: Option<keel_wal::Lsn>,
    ) -> Result<Engine, String> {
        let fs = &*self.opts.wal.fs;
        let probe = self.dir.join(SPACE_PROBE);
        let bytes = self.opts.wal.segment_bytes_max;
        let room = fs
            .open(&probe, OpenMode::CreateTruncate)
            .and_then(|f| f.allocate(0, bytes));
        let _ = fs.remove_file(&probe);
        room.map_err(|e| {
            format!(
                "no space for a new log segment of {bytes} bytes in {}: {e}",
                self.dir.display()
            )
        })?;
        let opts = self.opts.clone();
        let (engine, report) = match durable {
            Some(lsn) => Engine::reopen_after_failure(&self.dir, opts, lsn),
            None => Engine::open(&self.dir, opts),
        }
        .map_err(|e| format!("recovery failed: {e}"))?;
        if engine.visible_lsn() < acked {
            let lsn = engine.visible_lsn();
            let _ = engine.close();
            return Err(format!(
                "recovery ends at LSN {lsn}, but LSN {acked} was already acknowledged: the disk \
                 lost synced data; keel goes on refusing writes. Stop keel, check the disk and \
                 run `keel verify {}`",
                self.dir.display()
            ));
        }
        for line in report.to_string().lines() {
            tracing::info!("recovery: {line}");
        }
        Ok(engine)
    }
}
