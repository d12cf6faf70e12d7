//! Flat combining in front of the sequencer lock.
//!
//! A blocking writer ([`Core::commit`]) does not queue on the sequencer lock. It leaves its
//! transaction in `Core::incoming` and tries the lock once. Whoever holds the lock (the
//! combiner) decides and submits every queued transaction before letting go. The writer then
//! sleeps once, on its own [`Completion`], which the log completes when the record is
//! acknowledged: one wake per put, where waiting for the lock and then for the log cost two or
//! more, each a futex wake and a context switch on a busy machine.
//!
//! Every holder of the lock combines when it lets go ([`SeqGuard`]'s drop) and re-checks the
//! queue after unlocking, so a transaction is never left behind: its writer pushed it before a
//! failed `try_lock`, so before the holder's unlock, so before the holder's re-check.
//! Transactions are decided in the order the combiner takes them from the queue, which is the
//! order their writers pushed them; the LSN order is that decision order, as before.

use std::mem;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use bytes::Bytes;
use keel_wal::Completion;

use crate::error::Result;
use crate::types::{Guard, Outcome, Write};
use crate::util::{lock, now_ms};
use crate::{Core, Prepared, Seq};

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
    core: &'a Core,
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
            self.core.combine(seq);
        }
    }
}

impl Core {
    /// Takes the sequencer lock. Every user of the sequencer's state goes through this, so that
    /// every release combines.
    pub(crate) fn seq(&self) -> SeqGuard<'_> {
        SeqGuard {
            core: self,
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
            let jobs = mem::take(&mut *lock(&self.incoming));
            for job in jobs {
                self.decide_job(&mut seq, job);
            }
            drop(seq);
            if lock(&self.incoming).is_empty() {
                return;
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
        lock(&self.incoming).push(Job {
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
