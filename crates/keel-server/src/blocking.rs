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
//! - The write that woke clients is answered only after they have tried, as Redis serves
//!   blocked clients before it replies to the push: a client that pushes and then reads sees
//!   what the blocked clients took. A served client that pushed in turn (BLMOVE) waits the same
//!   way for the clients it woke, so a chain of moves completes before the first push's reply.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// Told whenever a client finishes a try or stops waiting.
    progress: Notify,
}

/// Clients a write woke, each with the number of tries it will have finished once it has
/// seen the write: what the writer's reply waits for ([`Waiters::settled`]).
pub type Woken = Vec<(u64, u64)>;

/// Keys a write may wake clients on: one, nearly always, held without an allocation.
pub type Keys = smallvec::SmallVec<[Bytes; 1]>;

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
    /// It waits on its keys' existence too (XREADGROUP: a deleted stream ends its wait with
    /// NOGROUP), Redis's "blocked on nokey".
    on_nokey: bool,
    wake: Arc<Notify>,
    /// Woken again while in `turns`: it must try once more after its turn.
    again: bool,
    /// Tries it finished without being served.
    tries: u64,
    /// Served, and waiting only for the clients its own write woke: no longer woken.
    served: bool,
}

/// The keys in `writes` that may get an element: what a push, a move or a rename writes to.
pub fn pushed_keys(writes: &[Write]) -> Keys {
    let mut keys = Keys::new();
    for w in writes {
        match w {
            Write::ListPush { key, .. }
            | Write::ZAdd { key, .. }
            | Write::ZStore { key, .. }
            | Write::ZRangeStore { key, .. }
            | Write::StreamAdd { key, .. } => keys.push(key.clone()),
            Write::ListMove { to, .. } | Write::Rename { to, .. } | Write::Copy { to, .. } => {
                keys.push(to.clone())
            }
            Write::Sort {
                store: Some(dest), ..
            } => keys.push(dest.clone()),
            _ => {}
        }
    }
    keys
}

/// The keys whose stream a write may take away, or a consumer group of it (DEL, SET, XGROUP
/// DESTROY): a client blocked in XREADGROUP on one answers NOGROUP or WRONGTYPE once woken (a
/// blocked pop tries, finds nothing and waits on). Worth asking only while a client waits.
pub fn emptied_keys(writes: &[Write]) -> impl Iterator<Item = &Bytes> {
    writes.iter().filter_map(|w| match w {
        Write::Delete { key } | Write::Put { key, .. } | Write::StreamGroupDestroy { key, .. } => {
            Some(key)
        }
        _ => None,
    })
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

    /// Wakes the clients waiting on any of `keys`, oldest first, one turn at a time; returns
    /// them, for [`Waiters::settled`].
    pub fn wake(&self, keys: &[Bytes]) -> Woken {
        self.wake_if(|w| w.keys.iter().any(|k| keys.contains(k)))
    }

    /// Wakes every waiting client (FLUSHALL), as [`Waiters::wake`] does.
    pub fn wake_all(&self) -> Woken {
        self.wake_if(|_| true)
    }

    fn wake_if(&self, waits_on: impl Fn(&Waiter) -> bool) -> Woken {
        let mut s = self.lock();
        let was_idle = s.turns.is_empty();
        let State { waiters, turns, .. } = &mut *s;
        let mut woken = Vec::new();
        for (ticket, w) in waiters.iter_mut() {
            if w.served || !waits_on(w) {
                continue;
            }
            if turns.contains(ticket) {
                // A try under way may have missed the write: the one after it will not.
                w.again = true;
                woken.push((*ticket, w.tries + 2));
            } else {
                turns.push_back(*ticket);
                woken.push((*ticket, w.tries + 1));
            }
        }
        if was_idle {
            s.pass_turn();
        }
        woken
    }

    /// Waits until every client in `woken` has tried after the write that woke it (or stopped
    /// waiting), served clients including the clients they woke in turn.
    pub async fn settled(&self, woken: &Woken) {
        if woken.is_empty() {
            return;
        }
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let done = {
                let s = self.lock();
                woken.iter().all(|(t, tries)| {
                    s.waiters
                        .get(t)
                        .is_none_or(|w| !w.served && w.tries >= *tries)
                })
            };
            if done {
                return;
            }
            progress.await;
        }
    }

    /// INFO clients' `total_blocking_keys` (distinct keys clients wait on) and
    /// `total_blocking_keys_on_nokey` (those of them a client waits on for their existence).
    pub fn blocking_keys(&self) -> (usize, usize) {
        let s = self.lock();
        let mut keys: HashMap<&Bytes, bool> = HashMap::new();
        for w in s.waiters.values() {
            for k in &w.keys {
                *keys.entry(k).or_default() |= w.on_nokey;
            }
        }
        (keys.len(), keys.values().filter(|n| **n).count())
    }

    fn register(&self, keys: Vec<Bytes>, on_nokey: bool) -> (u64, Arc<Notify>) {
        let mut s = self.lock();
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        let wake = Arc::new(Notify::new());
        s.waiters.insert(
            ticket,
            Waiter {
                keys,
                on_nokey,
                wake: wake.clone(),
                again: false,
                tries: 0,
                served: false,
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
            w.tries += 1;
            if std::mem::take(&mut w.again) {
                s.turns.push_back(ticket);
            }
        }
        s.pass_turn();
        drop(s);
        self.progress.notify_waiters();
    }

    /// Ends `ticket`'s turn after a try that served it: the next client's turn comes, and no
    /// write wakes it again.
    fn served(&self, ticket: u64) {
        let mut s = self.lock();
        if let Some(w) = s.waiters.get_mut(&ticket) {
            w.served = true;
        }
        let had_turn = s.turns.front() == Some(&ticket);
        s.turns.retain(|t| *t != ticket);
        if had_turn {
            s.pass_turn();
        }
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
        drop(s);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.progress.notify_waiters();
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
/// Redis answers every blocked list command that timed out. An attempt also gives the clients
/// its write woke: once served, the reply waits for them (a chain of BLMOVEs).
pub async fn wait_for<F>(
    waiters: &Waiters,
    keys: Vec<Bytes>,
    on_nokey: bool,
    timeout: Option<Duration>,
    mut attempt: impl FnMut(bool) -> F,
) -> Reply
where
    F: Future<Output = (Reply, Woken)>,
{
    let (ticket, wake) = waiters.register(keys, on_nokey);
    let _registered = Registered { waiters, ticket };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut later = false;
    loop {
        let (reply, mut woken) = attempt(later).await;
        later = true;
        if !is_empty_reply(&reply) {
            waiters.served(ticket);
            // A move onto its own key woke this very client: it has seen its own write.
            woken.retain(|(t, _)| *t != ticket);
            waiters.settled(&woken).await;
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
