//! Blocking list commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP): a client waits until one
//! of its keys gets an element, then takes it with an ordinary write.
//!
//! - The pop is the same engine write as LPOP's and friends', decided when the client is served
//!   and durable before the reply leaves (P1), so a client that disconnects while it waits takes
//!   nothing: the session drops the wait when its socket closes, and no element was touched.
//! - A write that may give a list an element (a push, a move, a rename) wakes the clients
//!   waiting on its keys once it is durable, **in the order they started waiting**: one at a
//!   time, each tries its pop and then passes the turn to the next, so the longest-waiting
//!   client is served first, as in Redis.
//! - A wake-up that comes while a client is trying is not lost: the client tries once more.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_engine::Write;
use tokio::sync::Notify;

use crate::resp::Reply;

/// The clients waiting, in the order they started, and whose turn it is to try.
#[derive(Default)]
pub struct Waiters {
    state: Mutex<State>,
    /// Clients waiting now: a write checks this before it takes the lock.
    waiting: AtomicUsize,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// Every waiting client, by ticket (the order it started waiting).
    waiters: BTreeMap<u64, Waiter>,
    /// Clients woken and not yet done trying, in ticket order as they were woken; the front one
    /// has the turn.
    turns: VecDeque<u64>,
}

struct Waiter {
    keys: Vec<Bytes>,
    wake: Arc<Notify>,
    /// Woken again while in `turns`: it must try once more after its turn.
    again: bool,
}

/// The keys in `writes` that may get an element: what a push, a move or a rename writes to.
pub fn pushed_keys(writes: &[Write]) -> Vec<Bytes> {
    let mut keys = Vec::new();
    for w in writes {
        match w {
            Write::ListPush { key, .. }
            | Write::ZAdd { key, .. }
            | Write::ZStore { key, .. }
            | Write::ZRangeStore { key, .. } => keys.push(key.clone()),
            Write::ListMove { to, .. } | Write::Rename { to, .. } => keys.push(to.clone()),
            _ => {}
        }
    }
    keys
}

impl State {
    /// Gives the turn to the front of `turns`, if any.
    fn pass_turn(&self) {
        if let Some(w) = self.turns.front().and_then(|t| self.waiters.get(t)) {
            w.wake.notify_one();
        }
    }
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any client waits (one atomic load: the write path's only cost).
    pub fn any(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Clients waiting now (INFO clients' `blocked_clients`).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Wakes the clients waiting on any of `keys`, oldest first, one turn at a time.
    pub fn wake(&self, keys: &[Bytes]) {
        let mut s = self.lock();
        let was_idle = s.turns.is_empty();
        let State { waiters, turns, .. } = &mut *s;
        for (ticket, w) in waiters.iter_mut() {
            if !w.keys.iter().any(|k| keys.contains(k)) {
                continue;
            }
            if turns.contains(ticket) {
                w.again = true;
            } else {
                turns.push_back(*ticket);
            }
        }
        if was_idle {
            s.pass_turn();
        }
    }

    fn register(&self, keys: Vec<Bytes>) -> (u64, Arc<Notify>) {
        let mut s = self.lock();
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        let wake = Arc::new(Notify::new());
        s.waiters.insert(
            ticket,
            Waiter {
                keys,
                wake: wake.clone(),
                again: false,
            },
        );
        self.waiting.fetch_add(1, Ordering::Relaxed);
        (ticket, wake)
    }

    /// Ends `ticket`'s turn after a try that found nothing: the next client's turn comes, and
    /// this one waits again (at the back of the turns if a wake-up came during its try).
    fn end_turn(&self, ticket: u64) {
        let mut s = self.lock();
        if s.turns.front() != Some(&ticket) {
            return;
        }
        s.turns.pop_front();
        if let Some(w) = s.waiters.get_mut(&ticket) {
            if std::mem::take(&mut w.again) {
                s.turns.push_back(ticket);
            }
        }
        s.pass_turn();
    }

    /// Forgets `ticket` (served, timed out or gone), passing its turn on if it had it.
    fn unregister(&self, ticket: u64) {
        let mut s = self.lock();
        s.waiters.remove(&ticket);
        let had_turn = s.turns.front() == Some(&ticket);
        s.turns.retain(|t| *t != ticket);
        if had_turn {
            s.pass_turn();
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client's wait, forgotten however it ends (a reply, a timeout, a dropped future).
struct Registered<'a> {
    waiters: &'a Waiters,
    ticket: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiters.unregister(self.ticket);
    }
}

/// A reply that means "nothing to pop yet".
pub fn is_empty_reply(r: &Reply) -> bool {
    matches!(r, Reply::Nil | Reply::NilArray)
}

/// Tries `attempt` (told whether it is a later try) until it gives a reply that is not empty,
/// waiting for its turn between tries; after `timeout` (`None`: never) gives a nil array, as
/// Redis answers every blocked list command that timed out.
pub async fn wait_for<F>(
    waiters: &Waiters,
    keys: Vec<Bytes>,
    timeout: Option<Duration>,
    mut attempt: impl FnMut(bool) -> F,
) -> Reply
where
    F: Future<Output = Reply>,
{
    let (ticket, wake) = waiters.register(keys);
    let _registered = Registered { waiters, ticket };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut later = false;
    loop {
        let reply = attempt(later).await;
        later = true;
        if !is_empty_reply(&reply) {
            return reply;
        }
        waiters.end_turn(ticket);
        // `notify_one` keeps a permit: a turn given during the try is not lost.
        let turn = wake.notified();
        match deadline {
            None => turn.await,
            Some(d) => {
                if tokio::time::timeout_at(d, turn).await.is_err() {
                    return Reply::NilArray;
                }
            }
        }
    }
}
