//! Publishing: decided transactions become visible to readers strictly in LSN order, once their
//! records are acknowledged (P10). Readers never wait on a sync: they read the visible state.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use bytes::Bytes;
use keel_wal::{Lsn, Wal};

use crate::keyspace::{Image, Keyspace, Lent, ReadView, System};
use crate::record::{self, Mutation};
use crate::table::EntryRef;
use crate::util::lock;

thread_local! {
    /// Whether this thread is inside [`Publisher::read`]'s closure.
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// The state readers see: every transaction up to `lsn`, applied in LSN order.
pub(crate) struct Visible {
    keyspace: Keyspace,
    lsn: Lsn,
    /// Decision time of the record at `lsn`.
    at_ms: u64,
}

impl Visible {
    fn new(image: Image, lsn: Lsn, at_ms: u64) -> Visible {
        Visible {
            keyspace: Keyspace::new(image),
            lsn,
            at_ms,
        }
    }

    /// The entry of `key`, expired or not, lent.
    pub(crate) fn lend(&self, key: &[u8]) -> Option<Lent<'_>> {
        self.keyspace.lend(key)
    }

    /// The value of `key` in the system namespace.
    pub(crate) fn system(&self, key: &[u8]) -> Option<&Bytes> {
        self.keyspace.system(key)
    }

    /// The LSN of the last transaction applied.
    pub(crate) fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// A copy of this state (O(n)), its LSN and the decision time at that LSN.
    pub(crate) fn image(&self) -> (Image, Lsn, u64) {
        (self.keyspace.image(), self.lsn, self.at_ms)
    }

    /// The decision time of the record at `lsn`.
    pub(crate) fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// See [`Keyspace::visit_part`].
    pub(crate) fn visit_part(
        &self,
        from: u64,
        limit: usize,
        visit: &mut dyn FnMut(EntryRef<'_>),
    ) -> u64 {
        self.keyspace.visit_part(from, limit, visit)
    }

    /// A copy of the system namespace (a handful of entries).
    pub(crate) fn system_image(&self) -> System {
        self.keyspace.system_image()
    }

    /// A reader's view of this state, judging expiry at `now_ms`.
    pub(crate) fn view(&self, now_ms: u64) -> ReadView<'_> {
        ReadView::new(&self.keyspace, self.lsn, now_ms)
    }

    fn apply(&mut self, mutations: &[Mutation], lsn: Lsn, at_ms: u64) {
        self.keyspace.apply(mutations, lsn);
        self.lsn = lsn;
        self.at_ms = at_ms;
    }
}

/// A decided transaction's effects, waiting for its record to be acknowledged (or, published,
/// kept for a fuzzy snapshot's tail).
pub(crate) struct Unpublished {
    pub(crate) lsn: Lsn,
    pub(crate) at_ms: u64,
    pub(crate) mutations: Vec<Mutation>,
}

/// The visible state, and the decided transactions on their way into it.
pub(crate) struct Publisher {
    /// Decided transactions not yet visible, in LSN order.
    unpublished: Mutex<VecDeque<Unpublished>>,
    visible: RwLock<Visible>,
    /// `visible.lsn`, readable without the lock.
    published: AtomicU64,
    /// While a fuzzy snapshot reads the keyspace: every record published since it began, in LSN
    /// order, for its tail.
    tail: Mutex<Option<Kept>>,
    /// Whether `tail` is being kept, readable without its lock.
    keeping_tail: AtomicBool,
    /// The most a tail may hold, in encoded bytes (P11); past it the snapshot fails.
    tail_bytes_max: AtomicUsize,
}

/// The most a fuzzy snapshot's tail may hold: 256 MiB of records, as encoded in the log.
pub(crate) const TAIL_BYTES_MAX: usize = 256 << 20;

/// The records kept for a fuzzy snapshot's tail, encoded as the log holds them (without their
/// request sections) as they are published: one allocation a record rather than its
/// mutations' several, and the encoding the snapshot needs anyway.
#[derive(Default)]
struct Kept {
    records: Vec<(Lsn, Bytes)>,
    /// Their size as encoded.
    bytes: usize,
    /// More than the bound arrived: the records were dropped, and the snapshot fails.
    overflowed: bool,
}

impl Kept {
    fn keep(&mut self, u: &Unpublished, max: usize) {
        if self.overflowed {
            return;
        }
        let mut out = Vec::new();
        record::encode(u.at_ms, None, &u.mutations, &mut out);
        self.bytes += out.len();
        if self.bytes > max {
            self.records = Vec::new();
            self.overflowed = true;
        } else {
            self.records.push((u.lsn, Bytes::from(out)));
        }
    }
}

impl Publisher {
    /// Publishes `image`, the state at `lsn` decided at `at_ms`.
    pub(crate) fn new(image: Image, lsn: Lsn, at_ms: u64) -> Publisher {
        Publisher {
            unpublished: Mutex::new(VecDeque::new()),
            visible: RwLock::new(Visible::new(image, lsn, at_ms)),
            published: AtomicU64::new(lsn),
            tail: Mutex::new(None),
            keeping_tail: AtomicBool::new(false),
            tail_bytes_max: AtomicUsize::new(TAIL_BYTES_MAX),
        }
    }

    /// The visible state, read-locked.
    ///
    /// # Panics
    /// On a thread inside [`Publisher::read`]'s closure: taking the read lock a second time can
    /// deadlock (a waiting writer may block new readers), and a commit from there would wait
    /// for a publish that needs the write lock.
    pub(crate) fn visible(&self) -> RwLockReadGuard<'_, Visible> {
        assert!(
            !READING.get(),
            "an Engine::read closure called its engine: that can deadlock (see Engine::read)"
        );
        self.visible.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the visible state, read-locked, judging expiry at `now_ms`. The engine's
    /// other calls panic on this thread until `f` returns (see [`Publisher::visible`]).
    pub(crate) fn read<R>(&self, now_ms: u64, f: impl FnOnce(&ReadView<'_>) -> R) -> R {
        let v = self.visible();
        struct Reading;
        impl Drop for Reading {
            fn drop(&mut self) {
                READING.set(false);
            }
        }
        READING.set(true);
        let _reading = Reading;
        f(&v.view(now_ms))
    }

    /// The visible LSN, without the lock.
    pub(crate) fn published(&self) -> Lsn {
        self.published.load(Ordering::Acquire)
    }

    /// Queues the mutations of the record at `lsn`, decided at `at_ms`, to become visible once
    /// it is acknowledged. Records are queued in LSN order.
    pub(crate) fn queue(&self, lsn: Lsn, at_ms: u64, mutations: Vec<Mutation>) {
        lock(&self.unpublished).push_back(Unpublished {
            lsn,
            at_ms,
            mutations,
        });
    }

    /// Makes every acknowledged transaction visible, in LSN order. Under the default
    /// `SyncPolicy::Always` acknowledged means durable (P10); under a weaker policy readers can
    /// see what a power cut may take away, as the user chose.
    /// Returns at once if `upto` is already visible: of the many writers one sync acknowledges,
    /// the first publishes for all, and the others take no lock. (When many threads wait on
    /// one sync, the log's ack thread publishes for them all before it wakes them: see
    /// [`Publisher::acked`].)
    pub(crate) fn publish(&self, wal: &Wal, upto: Lsn) {
        if self.published() < upto {
            self.publish_acked(wal.last_lsn());
        }
    }

    /// Publishes every transaction up to `acked`, which the log has acknowledged: the log's ack
    /// thread does so (see [`Wal::on_acks`]) before it wakes the writers it acknowledges, so
    /// that they find their writes visible rather than all queueing here for the first of them
    /// to publish.
    pub(crate) fn acked(&self, acked: Lsn) {
        if self.published() < acked {
            self.publish_acked(acked);
        }
    }

    /// Applies the queued records up to `durable`, an LSN the log has acknowledged.
    fn publish_acked(&self, durable: Lsn) {
        let mut q = lock(&self.unpublished);
        if q.front().is_none_or(|u| u.lsn > durable) {
            return;
        }
        let mut v = self.visible.write().unwrap_or_else(|p| p.into_inner());
        let mut tail = self
            .keeping_tail
            .load(Ordering::Acquire)
            .then(|| lock(&self.tail));
        let keeping = matches!(tail.as_deref(), Some(Some(_)));
        // The keys the records write are looked up all together first (see Table::warm),
        // unless there is only one.
        let records = q.iter().take_while(|u| u.lsn <= durable);
        let count = records.clone().map(|u| u.mutations.len()).sum::<usize>();
        if count > 1 {
            let keys = records
                .flat_map(|u| &u.mutations)
                .filter_map(Mutation::user_key);
            std::hint::black_box(v.keyspace.warm(keys.map(|k| &k[..]), count));
        }
        let mut kept = Vec::new();
        while q.front().is_some_and(|u| u.lsn <= durable) {
            let u = q.pop_front().expect("front exists");
            v.apply(&u.mutations, u.lsn, u.at_ms);
            if keeping {
                kept.push(u);
            }
        }
        self.published.store(v.lsn, Ordering::Release);
        // Encoded for the tail with the readers' lock and the queue let go; the tail's lock,
        // still held, keeps a snapshot from taking the tail before these records are in it
        // (it takes the tail under the read lock, after this publish), and keeps them in order
        // before any later publish's.
        drop((v, q));
        if let Some(Some(t)) = tail.as_deref_mut() {
            let max = self.tail_bytes_max.load(Ordering::Relaxed);
            for u in &kept {
                t.keep(u, max);
            }
        }
    }

    /// Starts keeping every record published from now on, for a fuzzy snapshot's tail, and
    /// returns the visible LSN it starts after. Called with `visible` read-locked (so between
    /// records), by one snapshot at a time.
    pub(crate) fn keep_tail(&self, visible: &Visible) -> Lsn {
        *lock(&self.tail) = Some(Kept::default());
        self.keeping_tail.store(true, Ordering::Release);
        visible.lsn
    }

    /// Whether the records kept for a fuzzy snapshot's tail fill more than a quarter of their
    /// bound.
    pub(crate) fn tail_filling(&self) -> bool {
        let max = self.tail_bytes_max.load(Ordering::Relaxed);
        lock(&self.tail)
            .as_ref()
            .is_some_and(|k| k.overflowed || k.bytes > max / 4)
    }

    /// Stops keeping records and drops those kept: a snapshot that failed.
    pub(crate) fn stop_keeping_tail(&self) {
        self.keeping_tail.store(false, Ordering::Release);
        *lock(&self.tail) = None;
    }

    /// Stops keeping records and returns those kept: every record after the LSN `keep_tail`
    /// returned, up to `visible`'s LSN. Called with `visible` read-locked. `Err` with the bound
    /// if more than [`TAIL_BYTES_MAX`] bytes of records arrived (they were not kept).
    pub(crate) fn take_tail(&self, visible: &Visible) -> Result<Vec<(Lsn, Bytes)>, usize> {
        self.keeping_tail.store(false, Ordering::Release);
        let kept = lock(&self.tail).take().unwrap_or_default();
        if kept.overflowed {
            return Err(self.tail_bytes_max.load(Ordering::Relaxed));
        }
        debug_assert!(kept
            .records
            .last()
            .is_none_or(|(lsn, _)| *lsn == visible.lsn));
        Ok(kept.records)
    }

    /// Sets the bound of a fuzzy snapshot's tail.
    #[cfg(test)]
    pub(crate) fn set_tail_bytes_max(&self, bytes: usize) {
        self.tail_bytes_max.store(bytes, Ordering::Relaxed);
    }
}
