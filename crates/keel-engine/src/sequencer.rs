//! The sequencer: decides each transaction against every earlier one, durable or still in
//! flight, under one lock, and hands its absolute effects to the log in that same order. The
//! log's LSN is then both the commit order and the version of every key the transaction wrote.
//!
//! # Flat combining in front of the sequencer lock
//!
//! A blocking writer (`Core::commit`) does not queue on the sequencer
//! lock. It leaves its transaction in `Sequencer::incoming` and tries the lock once. Whoever
//! holds the lock (the combiner) decides and submits every queued transaction before letting go.
//! The writer then sleeps once, on its own [`Completion`], which the log completes when the
//! record is acknowledged: one wake per put, where waiting for the lock and then for the log cost
//! two or more, each a futex wake and a context switch on a busy machine.
//!
//! Every holder of the lock combines when it lets go ([`SeqGuard`]'s drop) and re-checks the
//! queue after unlocking, so a transaction is never left behind: its writer pushed it before a
//! failed `try_lock`, so before the holder's unlock, so before the holder's re-check.
//! Transactions are decided in the order the combiner takes them from the queue, which is the
//! order their writers pushed them; the LSN order is that decision order, as before.

use std::mem;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use bytes::Bytes;
use keel_wal::{Completion, Lsn, Ticket, Wal};

use crate::decide::{decide, Deciding, Rules};
use crate::error::{Error, Result};
use crate::keyspace::Image;
use crate::options::Options;
use crate::publish::Publisher;
use crate::record::{self, Mutation, Request};
use crate::seq::{Seq, View};
use crate::types::{Guard, KeyEffect, Outcome, Write, WriteResult};
use crate::util::{lock, now_ms};

/// A prepared transaction: decided and queued, not yet acknowledged.
pub(crate) enum Prepared {
    /// Nothing to log. The outcome was decided against every earlier transaction, so it can be
    /// answered only once the last of them (this LSN) is acknowledged: otherwise a crash could
    /// take away a write the answer depended on (a SET NX refused because of it, say).
    Done(Outcome, Lsn),
    Wait(Ticket, Outcome),
    /// A retry of request already logged at this LSN.
    Retry(Lsn, Outcome),
}

/// The sequencer: the decided state under its lock, the log it hands records to, and the
/// publisher that makes them visible.
pub(crate) struct Sequencer {
    pub(crate) opts: Options,
    pub(crate) wal: Wal,
    /// Every decided transaction, durable or not. Held while deciding and submitting, so that LSN
    /// order is decision order. Taken through [`Sequencer::seq`] only.
    pending: Mutex<Seq>,
    /// Transactions of blocking writers, left for whoever holds `pending` to decide.
    incoming: Mutex<Incoming>,
    pub(crate) publisher: Arc<Publisher>,
    /// Bytes logged since the last checkpoint, for the size trigger.
    pub(crate) logged_since_checkpoint: AtomicU64,
    /// Keys active expiry has removed since the engine opened.
    pub(crate) expired_keys: AtomicU64,
    /// While someone wants them (client-side caching's invalidations), the keys active expiry
    /// removed since they were last taken: see [`Sequencer::take_expired`].
    pub(crate) expired_log: Mutex<ExpiredLog>,
    /// Whether outcomes carry the keys each write changed ([`Engine::report_effects`]).
    ///
    /// [`Engine::report_effects`]: crate::Engine::report_effects
    pub(crate) report_effects: AtomicBool,
    /// Active expiry waits while this is set ([`Engine::pause_expiry`]).
    ///
    /// [`Engine::pause_expiry`]: crate::Engine::pause_expiry
    pub(crate) expiry_paused: AtomicBool,
}

/// A script's transaction while it runs: see [`Engine::submit_script`].
///
/// [`Engine::submit_script`]: crate::Engine::submit_script
pub struct Script<'a> {
    deciding: Deciding<View<'a>>,
    opts: &'a Options,
    /// The write fence was set when the script started: it writes no user key.
    fenced: bool,
    /// A dry run's record ([`Engine::try_script`](crate::Engine::try_script)).
    recorded: Option<Recorded>,
}

/// What a dry run of a script did ([`Engine::try_script`](crate::Engine::try_script)): the
/// writes its calls made, in order (reads left out), and for every key a call read or wrote,
/// its version before the script touched it. A transaction of these writes under these
/// guards, decided at the dry run's time, decides every write as the dry run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
}

impl Script<'_> {
    /// Decides one call's writes (one command's), after every earlier call of the script, and
    /// returns their results. A call that breaks a size limit, or writes a user key while the
    /// write fence is set, is refused whole, and the script may go on.
    pub fn call(&mut self, writes: Vec<Write>) -> std::result::Result<Vec<WriteResult>, Error> {
        for w in &writes {
            check_limits(self.opts, w)?;
        }
        if self.fenced && writes.iter().any(Write::writes_user_keys) {
            return Err(Error::Fenced);
        }
        if let Some(rec) = &mut self.recorded {
            for w in &writes {
                for key in w.keys() {
                    if !rec.guards.iter().any(|g| g.key == *key) {
                        let version = self.deciding.live_version(key);
                        rec.guards.push(Guard {
                            key: key.clone(),
                            version,
                        });
                    }
                }
                if !w.is_read() {
                    rec.writes.push(w.clone());
                }
            }
        }
        Ok(writes.into_iter().map(|w| self.deciding.step(w)).collect())
    }

    /// A dry run's record so far (`None` for a script that runs for real).
    pub fn take_recorded(&mut self) -> Option<Recorded> {
        self.recorded.take()
    }

    /// The keys the calls since the last take changed, when the engine reports effects
    /// ([`Engine::report_effects`]); each [`KeyEffect::write`] counts the script's writes from
    /// its first call.
    ///
    /// [`Engine::report_effects`]: crate::Engine::report_effects
    pub fn take_effects(&mut self) -> Vec<KeyEffect> {
        self.deciding
            .effects
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether every guard holds (the versions WATCH read), checked before the first call: a
    /// MULTI/EXEC that queued a script runs as one, its WATCH checked here.
    pub fn guards_hold(&self, guards: &[Guard]) -> bool {
        self.deciding.guards_hold(guards)
    }

    /// Whether an earlier call wrote anything: a script that has cannot be stopped part-way.
    pub fn wrote(&self) -> bool {
        !self.deciding.mutations.is_empty()
    }
}

/// A write's keys and values against the configured limits.
pub(crate) fn check_limits(opts: &Options, w: &Write) -> Result<()> {
    if let Some(k) = w.keys().find(|k| k.len() > opts.key_bytes_max) {
        return Err(Error::KeyTooLarge {
            len: k.len(),
            max: opts.key_bytes_max,
        });
    }
    if let Some(v) = w.values().find(|v| v.len() > opts.value_bytes_max) {
        return Err(Error::ValueTooLarge {
            len: v.len(),
            max: opts.value_bytes_max,
        });
    }
    Ok(())
}

/// See [`Sequencer::take_expired`].
#[derive(Default)]
pub(crate) struct ExpiredLog {
    pub(crate) wanted: bool,
    pub(crate) keys: Vec<Bytes>,
    /// More keys expired than the log holds: whoever takes them must assume any key did.
    pub(crate) overflowed: bool,
}

/// The most expired keys kept for [`Sequencer::take_expired`].
const EXPIRED_LOG_MAX: usize = 1 << 16;

/// The combiner's queue.
#[derive(Default)]
struct Incoming {
    /// Transactions waiting, in the order their writers pushed them.
    jobs: Vec<Job>,
    /// An empty queue with the capacity of an earlier one. The combiner swaps it in for the
    /// jobs it takes and hands it back once it has decided them, so that the queue does not
    /// start from nothing and grow by reallocation in every round.
    spare: Vec<Job>,
}

/// A transaction left for the combiner.
pub(crate) struct Job {
    id: Option<Bytes>,
    guards: Vec<Guard>,
    writes: Vec<Write>,
    slot: Arc<Slot>,
}

/// Where the combiner leaves a job's decision, and how its writer is woken.
#[derive(Default)]
struct Slot {
    /// Completed by the log when the job's record is acknowledged, or by the combiner when the
    /// job logs nothing or failed.
    done: Arc<Completion>,
    /// Held by the combiner from before the record is submitted until the decision is stored,
    /// so a writer woken early by the log waits here for it.
    decided: Mutex<Option<Result<Prepared>>>,
}

/// The sequencer lock. Dropping it first decides every transaction left in the queue.
pub(crate) struct SeqGuard<'a> {
    sequencer: &'a Sequencer,
    seq: Option<MutexGuard<'a, Seq>>,
}

impl Deref for SeqGuard<'_> {
    type Target = Seq;
    fn deref(&self) -> &Seq {
        self.seq.as_ref().expect("held until dropped")
    }
}

impl DerefMut for SeqGuard<'_> {
    fn deref_mut(&mut self) -> &mut Seq {
        self.seq.as_mut().expect("held until dropped")
    }
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        if let Some(seq) = self.seq.take() {
            self.sequencer.combine(seq);
        }
    }
}

impl Sequencer {
    /// Takes the sequencer lock. Every user of the sequencer's state goes through this, so that
    /// every release combines.
    pub(crate) fn seq(&self) -> SeqGuard<'_> {
        SeqGuard {
            sequencer: self,
            seq: Some(lock(&self.pending)),
        }
    }

    fn try_seq(&self) -> Option<MutexGuard<'_, Seq>> {
        match self.pending.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Decides queued jobs until the queue is empty after an unlock, or another thread holds
    /// the lock (and will do the same).
    fn combine<'a>(&'a self, mut seq: MutexGuard<'a, Seq>) {
        loop {
            let mut jobs = {
                let mut q = lock(&self.incoming);
                let spare = mem::take(&mut q.spare);
                mem::replace(&mut q.jobs, spare)
            };
            for job in jobs.drain(..) {
                self.decide_job(&mut seq, job);
            }
            drop(seq);
            {
                let mut q = lock(&self.incoming);
                q.spare = jobs;
                if q.jobs.is_empty() {
                    return;
                }
            }
            match self.try_seq() {
                Some(g) => seq = g,
                None => return,
            }
        }
    }

    fn decide_job(&self, seq: &mut Seq, job: Job) {
        let Job {
            id,
            guards,
            writes,
            slot,
        } = job;
        let mut decided = lock(&slot.decided);
        let r = self.prepare_locked(seq, id, now_ms(), &guards, writes, Some(&slot.done));
        let logged = matches!(r, Ok(Prepared::Wait(..)));
        *decided = Some(r);
        drop(decided);
        if !logged {
            slot.done.complete(Ok(0));
        }
    }

    /// Decides the transaction through the combiner and blocks until its outcome is durable and
    /// visible. `writes` have passed the limit checks.
    pub(crate) fn commit_combined(
        &self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Outcome> {
        let slot = Arc::new(Slot::default());
        lock(&self.incoming).jobs.push(Job {
            id,
            guards,
            writes,
            slot: slot.clone(),
        });
        if let Some(seq) = self.try_seq() {
            self.combine(seq);
        }
        let acked = slot.done.wait();
        let decided = lock(&slot.decided)
            .take()
            .expect("decided before completed")?;
        match decided {
            Prepared::Wait(ticket, outcome) => {
                acked?;
                self.publish(*ticket.lsns().end());
                Ok(outcome)
            }
            p => self.finish(p),
        }
    }
}

impl Sequencer {
    /// The sequencer over `seq`, the decided state recovery found, logging into `wal`, with
    /// `logged` bytes logged since the snapshot that recovery loaded.
    pub(crate) fn new(
        opts: Options,
        wal: Wal,
        seq: Seq,
        publisher: Publisher,
        logged: u64,
    ) -> Sequencer {
        let publisher = Arc::new(publisher);
        let p = publisher.clone();
        wal.on_acks(move |acked| p.acked(acked));
        Sequencer {
            opts,
            wal,
            pending: Mutex::new(seq),
            incoming: Mutex::new(Incoming::default()),
            publisher,
            logged_since_checkpoint: AtomicU64::new(logged),
            expired_keys: AtomicU64::new(0),
            expired_log: Mutex::default(),
            report_effects: AtomicBool::new(false),
            expiry_paused: AtomicBool::new(false),
        }
    }

    /// The visible state with its LSN and decision time, and the request ids it holds: what a
    /// [`BackupView`](crate::BackupView) holds.
    pub(crate) fn durable_view(&self) -> (Image, Lsn, u64, Vec<(Lsn, Request)>) {
        let (image, lsn, at_ms) = self.publisher.visible().image();
        let requests = self.seq().requests.up_to(lsn);
        (image, lsn, at_ms, requests)
    }

    /// Waits until a prepared transaction is acknowledged and visible, and returns its outcome.
    pub(crate) fn finish(&self, p: Prepared) -> Result<Outcome> {
        match p {
            Prepared::Done(o, after) => {
                if self.publisher.published() < after {
                    self.wal.wait_acked(after)?;
                    self.publish(after);
                }
                Ok(o)
            }
            Prepared::Wait(ticket, o) => {
                let lsns = ticket.wait()?;
                self.publish(*lsns.end());
                Ok(o)
            }
            Prepared::Retry(lsn, o) => {
                self.wait_for_retry(lsn)?;
                Ok(o)
            }
        }
    }

    /// A retry's original may not be durable yet: answer only once it is (P1).
    fn wait_for_retry(&self, lsn: Lsn) -> Result<()> {
        if self.wal.durable_lsn() < lsn {
            if self.opts.wal.sync_policy != keel_wal::SyncPolicy::Always {
                // Weaker policies sync late or never: force it. The sync is queued behind the
                // original's record, so it covers it.
                self.wal.sync()?;
            }
            self.wal.wait_durable(lsn)?;
        }
        self.publish(lsn);
        Ok(())
    }

    /// Decides the transaction against `seq` and queues its record, its acknowledgement going to
    /// `done` if given.
    pub(crate) fn prepare_locked(
        &self,
        seq: &mut Seq,
        id: Option<Bytes>,
        now: u64,
        guards: &[Guard],
        writes: Vec<Write>,
        done: Option<&Arc<Completion>>,
    ) -> Result<Prepared> {
        if let Some((lsn, req)) = id.as_ref().and_then(|id| seq.requests.get(id)) {
            return Ok(Prepared::Retry(*lsn, req.outcome.clone()));
        }
        let (outcome, mutations) = {
            let vis = self.publisher.visible();
            seq.recent.forget_up_to(vis.lsn());
            let view = View {
                recent: &seq.recent,
                visible: &vis,
            };
            let fenced = || {
                let fence = self.opts.write_fence.as_deref()?;
                let value = seq.recent.system(&vis, fence)?;
                Some(value.first().is_some_and(|b| *b != 0))
            };
            if writes.iter().any(Write::writes_user_keys) && fenced() == Some(true) {
                (Outcome::Fenced, Vec::new())
            } else {
                let effects = self.report_effects.load(Ordering::Relaxed);
                decide(view, now, Rules::of(&self.opts), guards, writes, effects)
            }
        };
        if mutations.is_empty() && id.is_none() {
            return Ok(Prepared::Done(outcome, seq.last_lsn));
        }
        let at_ms = now.max(seq.last_at_ms);
        let wrote = !mutations.is_empty();
        let request = id.map(|id| Request {
            id,
            at_ms,
            // A committed outcome with writes carries this record's LSN; the format says so.
            outcome: match &outcome {
                Outcome::Committed { results, .. } if wrote => Outcome::Committed {
                    lsn: Some(0),
                    results: results.clone(),
                    effects: Vec::new(),
                },
                o => o.clone(),
            },
        });
        let ticket = self.log_locked(seq, at_ms, request.as_ref(), mutations, done)?;
        let lsn = *ticket.lsns().end();
        let outcome = match outcome {
            Outcome::Committed {
                results, effects, ..
            } if wrote => Outcome::Committed {
                lsn: Some(lsn),
                results,
                effects,
            },
            o => o,
        };
        if let Some(mut r) = request {
            r.outcome = outcome.clone();
            seq.requests.insert(lsn, r, &self.opts, now);
        }
        Ok(Prepared::Wait(ticket, outcome))
    }

    /// Runs a script's transaction under the lock (see [`Engine::submit_script`]): `run`
    /// decides its calls one by one, and their effects are logged as one record.
    ///
    /// [`Engine::submit_script`]: crate::Engine::submit_script
    pub(crate) fn prepare_script<R>(
        &self,
        seq: &mut Seq,
        now: u64,
        run: impl FnOnce(&mut Script<'_>) -> R,
    ) -> Result<(R, Prepared)> {
        let (r, mutations) = {
            let vis = self.publisher.visible();
            seq.recent.forget_up_to(vis.lsn());
            let view = View {
                recent: &seq.recent,
                visible: &vis,
            };
            let mut script = self.script(view, now, None);
            let r = run(&mut script);
            (r, script.deciding.mutations)
        };
        if mutations.is_empty() {
            let outcome = Outcome::Committed {
                lsn: None,
                results: Vec::new(),
                effects: Vec::new(),
            };
            return Ok((r, Prepared::Done(outcome, seq.last_lsn)));
        }
        let at_ms = now.max(seq.last_at_ms);
        let ticket = self.log_locked(seq, at_ms, None, mutations, None)?;
        let outcome = Outcome::Committed {
            lsn: Some(*ticket.lsns().end()),
            results: Vec::new(),
            effects: Vec::new(),
        };
        Ok((r, Prepared::Wait(ticket, outcome)))
    }

    /// Runs a script against the visible state and keeps nothing (see
    /// [`Engine::try_script`](crate::Engine::try_script)); takes no lock.
    pub(crate) fn try_script<R>(&self, now: u64, run: impl FnOnce(&mut Script<'_>) -> R) -> R {
        let vis = self.publisher.visible();
        let recent = crate::seq::Recent::default();
        let view = View {
            recent: &recent,
            visible: &vis,
        };
        run(&mut self.script(view, now, Some(Recorded::default())))
    }

    /// A script transaction over `view` as of `now` (`recorded`: a dry run's record).
    fn script<'a>(&'a self, view: View<'a>, now: u64, recorded: Option<Recorded>) -> Script<'a> {
        let fenced = (self.opts.write_fence.as_deref())
            .and_then(|fence| view.recent.system(view.visible, fence))
            .is_some_and(|v| v.first().is_some_and(|b| *b != 0));
        Script {
            deciding: Deciding::new(
                view,
                now,
                Rules::of(&self.opts),
                self.report_effects.load(Ordering::Relaxed),
            ),
            opts: &self.opts,
            fenced,
            recorded,
        }
    }

    /// Publishes every acknowledged transaction up to `upto` (see [`Publisher::publish`]).
    pub(crate) fn publish(&self, upto: Lsn) {
        self.publisher.publish(&self.wal, upto);
    }

    /// Deletes up to `limit` keys whose expiry has passed, in one log record. Returns how many.
    /// Expired keys are never visible; this only frees their memory (the background thread
    /// calls it).
    pub(crate) fn remove_expired(&self, limit: usize) -> Result<usize> {
        let now = now_ms();
        let (ticket, n, removed) = {
            let mut seq = self.seq();
            let mut mutations = Vec::new();
            {
                let vis = self.publisher.visible();
                let seq = &mut *seq;
                while mutations.len() < limit && seq.expiry.first().is_some_and(|(t, _)| *t <= now)
                {
                    let (t, key) = seq.expiry.pop_first().expect("checked");
                    // Stale if the key was rewritten since. Its shape tells the expiry without
                    // making a list that pushes in flight hold as changes.
                    if seq
                        .recent
                        .shape(&vis, &key)
                        .is_some_and(|s| s.expires_at_ms == Some(t))
                    {
                        mutations.push(Mutation::Delete { key });
                    }
                }
            }
            if mutations.is_empty() {
                return Ok(0);
            }
            let n = mutations.len();
            let removed: Vec<Bytes> = (mutations.iter())
                .filter_map(|m| match m {
                    Mutation::Delete { key } => Some(key.clone()),
                    _ => None,
                })
                .collect();
            let at_ms = now.max(seq.last_at_ms);
            (
                self.log_locked(&mut seq, at_ms, None, mutations, None)?,
                n,
                removed,
            )
        };
        let lsns = ticket.wait()?;
        self.publish(*lsns.end());
        self.expired_keys
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let mut log = self.expired_log.lock().unwrap_or_else(|p| p.into_inner());
        if log.wanted {
            if log.keys.len() + removed.len() > EXPIRED_LOG_MAX {
                log.overflowed = true;
                log.keys.clear();
            } else {
                log.keys.extend(removed);
            }
        }
        Ok(n)
    }

    /// Keeps the keys active expiry removes from now on (`true`) or stops (`false`), and returns
    /// those kept since the last call, or `None` when more expired than were kept (then any key
    /// may have).
    pub(crate) fn take_expired(&self, wanted: bool) -> Option<Vec<Bytes>> {
        let mut log = self.expired_log.lock().unwrap_or_else(|p| p.into_inner());
        log.wanted = wanted;
        let keys = std::mem::take(&mut log.keys);
        (!std::mem::take(&mut log.overflowed)).then_some(keys)
    }

    /// Logs one record under the held sequencer lock, then applies its mutations to the pending
    /// state and queues them for publication.
    fn log_locked(
        &self,
        seq: &mut Seq,
        at_ms: u64,
        request: Option<&Request>,
        mutations: Vec<Mutation>,
        done: Option<&Arc<Completion>>,
    ) -> Result<Ticket> {
        let mut rec = Vec::new();
        record::encode(at_ms, request, &mutations, &mut rec);
        // One transaction is one log record.
        let max = self.opts.wal.record_bytes_max as usize;
        if rec.len() > max {
            return Err(Error::TxnTooLarge {
                bytes: rec.len(),
                max,
            });
        }
        let bytes = rec.len() as u64;
        let ticket = match done {
            Some(done) => self.wal.submit_to(rec, done.clone())?,
            None => self.wal.submit(rec)?,
        };
        self.logged_since_checkpoint
            .fetch_add(bytes, Ordering::Relaxed);
        let lsn = *ticket.lsns().end();
        seq.last_at_ms = at_ms;
        seq.last_lsn = lsn;
        seq.track_expiry(&mutations);
        seq.recent
            .record(&mutations, lsn, &self.publisher.visible());
        // Request-only records are published too, so the visible LSN moves in order.
        self.publisher.queue(lsn, at_ms, mutations);
        Ok(ticket)
    }
}
