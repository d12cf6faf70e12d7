//! The sequencer's state: every decided transaction, durable or not, as the sequencer sees it
//! under its lock. See the `sequencer` module for how it is used.

use std::cell::{Cell, OnceCell};
use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::mem;

use bytes::Bytes;
use foldhash::fast::RandomState;
use hashbrown::hash_table::{self, HashTable};
use keel_wal::Lsn;

use crate::decide::Decided;
use crate::keyspace::{change, edit_typed, Change, Lent, Map, Shape, Typed};
use crate::options::Options;
use crate::publish::Visible;
use crate::record::{Mutation, Request};
use crate::util::HashMap;

/// Request ids kept for retries, with the LSN of the record that holds each (P8).
#[derive(Clone, Debug, Default)]
pub(crate) struct Requests {
    by_id: HashMap<Bytes, (Lsn, Request)>,
    /// In LSN order, for eviction.
    order: VecDeque<(Lsn, Bytes)>,
}

impl Requests {
    pub(crate) fn get(&self, id: &[u8]) -> Option<&(Lsn, Request)> {
        self.by_id.get(id)
    }

    pub(crate) fn insert(&mut self, lsn: Lsn, mut req: Request, opts: &Options, now: u64) {
        // Kept long after its request: a copy, not a slice that keeps the request's buffer.
        req.id = Bytes::copy_from_slice(&req.id);
        self.order.push_back((lsn, req.id.clone()));
        self.by_id.insert(req.id.clone(), (lsn, req));
        while let Some((l, id)) = self.order.front() {
            let (l, id) = (*l, id.clone());
            let current = self.by_id.get(&id).map(|(el, r)| (*el, r.at_ms));
            let stale = match current {
                // A later record reused the id: this slot is obsolete.
                Some((el, _)) if el != l => true,
                Some((_, at)) => {
                    self.order.len() > opts.request_retention_count
                        || at.saturating_add(opts.request_retention_ms) < now
                }
                None => true,
            };
            if !stale {
                break;
            }
            self.order.pop_front();
            if current.is_some_and(|(el, _)| el == l) {
                self.by_id.remove(&id);
            }
        }
    }

    /// Those recorded at or before `lsn`, in LSN order.
    pub(crate) fn up_to(&self, lsn: Lsn) -> Vec<(Lsn, Request)> {
        self.order
            .iter()
            .filter(|(l, _)| *l <= lsn)
            .filter_map(|(l, id)| self.by_id.get(id).filter(|(el, _)| el == l).cloned())
            .collect()
    }
}

/// The sequencer's state: every decided transaction, durable or not.
pub(crate) struct Seq {
    /// The newest decided writes not yet known to be visible.
    pub(crate) recent: Recent,
    pub(crate) requests: Requests,
    /// (expiry, key) of every value written with an expiry; entries go stale when the key is
    /// rewritten and are checked against `map` before use.
    pub(crate) expiry: BTreeSet<(u64, Bytes)>,
    /// Decision time of the last record: record times never go backwards.
    pub(crate) last_at_ms: u64,
    /// LSN of the last record submitted.
    pub(crate) last_lsn: Lsn,
}

/// Writes decided but maybe not yet visible, laid over the visible state: the decided state
/// is the visible state with these on top. A key absent here has its newest decided value in
/// the visible state. This replaced a second copy of the whole ordered map, whose every insert
/// cost a descent and a path copy.
#[derive(Default)]
pub(crate) struct Recent {
    /// The newest decided entry of each key written lately, with its LSN. A relative write
    /// (LPUSH, XADD) is held as a change to the visible entry until a decision reads the key;
    /// from then on the collection is held here whole, changed in place by each write decided
    /// on it, until the visible state catches up (see [`HeldEntry`]).
    by_key: HashTable<Held>,
    hasher: RandomState,
    /// (LSN, the key's hash) in LSN order, to forget entries once visible. The hash and the LSN
    /// find the entry again without a copy of the key (a reference count taken and let go for
    /// every write) or hashing it a second time.
    order: VecDeque<(Lsn, u64)>,
    /// LSN of a DeleteAll that may not be visible yet: keys not in `by_key` are gone.
    cleared: Option<Lsn>,
    /// The newest decided value of each system entry written lately, with its LSN (the write
    /// fence is one).
    system: HashMap<Bytes, (Lsn, Bytes)>,
    /// Collections still held after the visible state caught up with them: (the LSN that left
    /// them here, their key's hash, their size when kept), oldest first. A hash, set or list
    /// written again and again (a queue) is then copied out of the visible state once, not at
    /// every lull between writes; at most [`KEPT_BYTES_MAX`] of them are held this way.
    kept: VecDeque<(Lsn, u64, usize)>,
    kept_bytes: usize,
}

/// What a mutation decides of its key: a whole entry, or a change to the one before.
enum New<'m> {
    Entry(Option<Typed>),
    Edit(&'m Mutation),
}

/// A key's newest decided entry in [`Recent`], decided at `lsn`.
struct Held {
    key: Bytes,
    lsn: Lsn,
    entry: HeldEntry,
}

/// The decided entry of a [`Held`] key.
enum HeldEntry {
    /// The entry itself (`None`: deleted).
    Whole(Option<Typed>),
    /// The visible entry with these changes (and their LSNs) on top: those the visible state
    /// did not hold when the last of them was recorded, some of which it may hold by now.
    /// Most relative writes (an XADD to one of many streams) are never read back before they
    /// are visible: then the entry is never made, and each change is applied once, to the
    /// visible state, instead of to a copy here as well. A decision that reads the key makes
    /// it, once ([`Recent::lend`]); the next change is applied to it. A push onto a list reads
    /// only its [`Shape`], which does not make it ([`Recent::shape`]).
    Edits(
        VecDeque<(Lsn, Mutation)>,
        OnceCell<Option<Typed>>,
        ShapeCache,
    ),
}

/// The shape of a [`HeldEntry::Edits`] entry once told ([`Recent::shape`]), kept up to date
/// as changes are recorded (publishing does not change a decided entry), so that each push
/// onto a hot list is decided in O(1), not over every change in flight.
type ShapeCache = Cell<Option<Option<Shape>>>;

impl HeldEntry {
    /// The entry, if made.
    fn made(&self) -> Option<&Option<Typed>> {
        match self {
            HeldEntry::Whole(e) => Some(e),
            HeldEntry::Edits(_, made, _) => made.get(),
        }
    }

    /// The entry, made from `vis` (the visible state now) and `key`'s changes if need be.
    fn get(&self, key: &[u8], vis: &Visible) -> &Option<Typed> {
        match self {
            HeldEntry::Whole(e) => e,
            HeldEntry::Edits(edits, made, _) => made.get_or_init(|| {
                let base = vis.lend(key).map(|e| e.working_copy());
                (edits.iter())
                    .skip_while(|(lsn, _)| *lsn <= vis.lsn())
                    .fold(base, |e, (lsn, m)| edit(e, m, *lsn))
            }),
        }
    }
}

/// `base` changed by the relative mutation `m`, decided at `lsn`.
fn edit(base: Option<Typed>, m: &Mutation, lsn: Lsn) -> Option<Typed> {
    let packed = base.as_ref().is_none_or(Typed::is_packed_zset);
    let mut e = edit_typed(base, m, lsn);
    // A sorted set that outgrew the packed form here is the sequencer's own: it goes
    // without order, as a copy from the visible state would.
    if let Some(e) = e.as_mut().filter(|_| packed) {
        e.drop_zset_order();
    }
    e
}

/// The most bytes of collections [`Recent`] keeps after the visible state caught up with them,
/// counting each with [`KEPT_ENTRY_BYTES`] of bookkeeping. Each kept collection is a second copy
/// of one the table holds, so this is memory on top of the keyspace: at 64 MiB, 100k hashes of
/// 20 fields took 2.1× Redis's RSS (every one held twice). The newest kept collection stays
/// whatever its size, so that one hot queue or hash larger than the bound is still copied once,
/// not at every lull between writes (BENCHMARKS.md).
const KEPT_BYTES_MAX: usize = 8 << 20;

/// What keeping one collection costs besides its value's buffers: its key, its entry in
/// `by_key` (the entry's struct and the map's slot), its place in `kept` and the allocator's
/// rounding. Set from RSS, not from the code: counting 192 bytes, 8 MiB of kept sorted sets of
/// 20 members took about 16.5 MiB, about 890 bytes each for a value of about 250 (BENCHMARKS.md).
const KEPT_ENTRY_BYTES: usize = 640;

impl Recent {
    /// The decided value of the system entry `key`, given `vis`, the visible state now.
    pub(crate) fn system<'a>(&'a self, vis: &'a Visible, key: &[u8]) -> Option<&'a Bytes> {
        match self.system.get(key) {
            Some((_, v)) => Some(v),
            None => vis.system(key),
        }
    }

    /// The decided entry of `key`, expired or not, given `vis`, the visible state now; lent.
    pub(crate) fn lend<'a>(&'a self, vis: &'a Visible, key: &[u8]) -> Option<Lent<'a>> {
        match self
            .by_key
            .find(self.hasher.hash_one(key), |h| h.key == key)
        {
            Some(h) => h.entry.get(key, vis).as_ref().map(Typed::lend),
            None if self.cleared.is_some_and(|l| l > vis.lsn()) => None,
            None => vis.lend(key),
        }
    }

    /// The shape of `key`'s decided entry, expired or not, given `vis`: told from its held
    /// changes without making the entry when they tell it (see [`Shape`]).
    pub(crate) fn shape(&self, vis: &Visible, key: &[u8]) -> Option<Shape> {
        let held = self
            .by_key
            .find(self.hasher.hash_one(key), |h| h.key == key);
        match held.map(|h| (&h.entry, h.entry.made())) {
            Some((_, Some(e))) => e.as_ref().map(Typed::shape),
            Some((HeldEntry::Edits(edits, _, cache), None)) => match cache.get() {
                Some(s) => s,
                None => {
                    let told = (edits.iter())
                        .skip_while(|(lsn, _)| *lsn <= vis.lsn())
                        .try_fold(vis.lend(key).map(Shape::of), |s, (lsn, m)| {
                            Shape::edit(s, m, *lsn)
                        });
                    cache.set(told);
                    told.unwrap_or_else(|| self.lend(vis, key).map(Shape::of))
                }
            },
            Some((HeldEntry::Whole(_), None)) => unreachable!("a whole entry is made"),
            None if self.cleared.is_some_and(|l| l > vis.lsn()) => None,
            None => vis.lend(key).map(Shape::of),
        }
    }

    /// Records the mutations decided at `lsn`; `vis` is the visible state now, which holds the
    /// newest decided entry of every key not held here. A relative mutation of a key not held
    /// here is kept as it is; the first decision that reads the key copies its visible entry
    /// and applies the changes on it (O(the value), once per key until the visible state
    /// catches up), and later ones change the copy in place. A large sorted set's copy has no
    /// order until a decision needs it (see [`Lent::working_copy`]).
    pub(crate) fn record(&mut self, mutations: &[Mutation], lsn: Lsn, vis: &Visible) {
        for m in mutations {
            let (key, decided) = match change(m, lsn) {
                Change::Key(key, e) => (key, New::Entry(e.map(Typed::from))),
                Change::Edit(key, m) => (key, New::Edit(m)),
                Change::All => {
                    self.by_key.clear();
                    self.order.clear();
                    self.kept.clear();
                    self.kept_bytes = 0;
                    self.cleared = Some(lsn);
                    continue;
                }
                Change::System(key, value) => {
                    self.system.insert(key.clone(), (lsn, value.clone()));
                    continue;
                }
            };
            let hash = self.hasher.hash_one(&key[..]);
            let hasher = &self.hasher;
            let held = self
                .by_key
                .entry(hash, |h| h.key == key, |h| hasher.hash_one(&h.key[..]));
            match held {
                // An entry held already keeps its key: the same bytes, already paid for.
                hash_table::Entry::Occupied(o) => {
                    let h = o.into_mut();
                    let before = mem::replace(&mut h.entry, HeldEntry::Whole(None));
                    h.lsn = lsn;
                    h.entry = match (before, decided) {
                        (_, New::Entry(e)) => HeldEntry::Whole(e),
                        (HeldEntry::Whole(base), New::Edit(m)) => {
                            HeldEntry::Whole(edit(base, m, lsn))
                        }
                        (HeldEntry::Edits(mut edits, made, cache), New::Edit(m)) => {
                            match made.into_inner() {
                                Some(base) => HeldEntry::Whole(edit(base, m, lsn)),
                                None => {
                                    // Those visible already go: a key written again and again
                                    // without being read (the destination of ZUNIONSTORE or
                                    // RENAME) holds only the changes in flight, not one per
                                    // write since the first.
                                    while edits.front().is_some_and(|(l, _)| *l <= vis.lsn()) {
                                        edits.pop_front();
                                    }
                                    edits.push_back((lsn, m.clone()));
                                    let shape = cache.get().and_then(|s| Shape::edit(s, m, lsn));
                                    HeldEntry::Edits(edits, OnceCell::new(), Cell::new(shape))
                                }
                            }
                        }
                    };
                }
                hash_table::Entry::Vacant(v) => {
                    let entry = match decided {
                        New::Entry(e) => HeldEntry::Whole(e),
                        // After a DeleteAll the visible state may not hold yet, the key's
                        // visible entry is not what it changes.
                        New::Edit(m) if self.cleared.is_some_and(|l| l > vis.lsn()) => {
                            HeldEntry::Whole(edit(None, m, lsn))
                        }
                        New::Edit(m) => HeldEntry::Edits(
                            VecDeque::from([(lsn, m.clone())]),
                            OnceCell::new(),
                            Cell::new(None),
                        ),
                    };
                    v.insert(Held {
                        key: key.clone(),
                        lsn,
                        entry,
                    });
                }
            }
            self.order.push_back((lsn, hash));
        }
    }

    /// Forgets entries that `visible_lsn` covers: the visible state holds them (or newer).
    pub(crate) fn forget_up_to(&mut self, visible_lsn: Lsn) {
        while let Some(&(lsn, hash)) = self.order.front() {
            if lsn > visible_lsn {
                break;
            }
            self.order.pop_front();
            // The entry this write left, unless the key was written again since. Two keys of
            // one record with the same hash are told apart in either order: each is forgotten
            // once, by one of the two.
            let Ok(held) = self.by_key.find_entry(hash, |h| h.lsn == lsn) else {
                continue;
            };
            match held.get().entry.made() {
                // A stream is not kept: a copy shares its nodes, so the next write copies it
                // out of the visible state at little cost, and a kept copy would grow nodes
                // of its own beside the visible state's (twice the memory of a hot stream).
                // Changes never made into an entry have nothing to keep.
                Some(Some(e)) if e.is_costly_to_copy() => {
                    let h = held.into_mut();
                    // Kept whole: its changes (slices of their requests) go.
                    if let HeldEntry::Edits(_, made, _) = &mut h.entry {
                        h.entry = HeldEntry::Whole(made.take().flatten());
                    }
                    let size = kept_size(h);
                    // Kept past its request: the key's own copy, not a slice of the request.
                    h.key = Bytes::copy_from_slice(&h.key);
                    self.kept.push_back((lsn, hash, size));
                    self.kept_bytes += size;
                }
                _ => {
                    held.remove();
                }
            }
        }
        // The newest stays, however large: it is the one most likely written next.
        while self.kept_bytes > KEPT_BYTES_MAX && self.kept.len() > 1 {
            let Some((lsn, hash, size)) = self.kept.pop_front() else {
                break;
            };
            self.kept_bytes -= size;
            // Written again since, it is held for that write now.
            if let Ok(held) = self.by_key.find_entry(hash, |h| h.lsn == lsn) {
                held.remove();
            }
        }
        if self.cleared.is_some_and(|l| l <= visible_lsn) {
            self.cleared = None;
        }
        self.system.retain(|_, (l, _)| *l > visible_lsn);
    }
}

/// What keeping `h` costs: its value, its key and [`KEPT_ENTRY_BYTES`] of bookkeeping.
fn kept_size(h: &Held) -> usize {
    let entry = h.entry.made().and_then(Option::as_ref);
    entry.map_or(0, Typed::memory_bytes) + h.key.len() + KEPT_ENTRY_BYTES
}

impl Seq {
    /// The state recovery leaves: `map` and the `requests` it holds, the last record at `lsn`
    /// decided at `at_ms`.
    pub(crate) fn recovered(requests: Requests, map: &Map, at_ms: u64, lsn: Lsn) -> Seq {
        let mut seq = Seq {
            recent: Recent::default(),
            requests,
            expiry: BTreeSet::new(),
            last_at_ms: at_ms,
            last_lsn: lsn,
        };
        // Most keyspaces have few keys with an expiry, or none: then there is nothing to find,
        // and no need to read every entry (a cache miss each) to find it.
        let entries = map
            .iter()
            .take(if map.expiring() == 0 { 0 } else { usize::MAX });
        for e in entries {
            if let Some(t) = e.expires_at_ms() {
                seq.expiry.insert((t, Bytes::copy_from_slice(e.key())));
            }
        }
        seq
    }

    pub(crate) fn track_expiry(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            if let Mutation::Set {
                key,
                expires_at_ms: Some(t),
                ..
            }
            | Mutation::Expire {
                key,
                expires_at_ms: Some(t),
            } = m
            {
                // Kept until the key expires or is written again: the key's own copy, not a
                // slice that keeps its request's buffer (the value too) alive.
                self.expiry.insert((*t, Bytes::copy_from_slice(key)));
            }
        }
    }
}

/// The decided state: recent writes over the visible state.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) recent: &'a Recent,
    pub(crate) visible: &'a Visible,
}

impl Decided for View<'_> {
    fn lend(&self, key: &[u8]) -> Option<Lent<'_>> {
        self.recent.lend(self.visible, key)
    }

    fn shape(&self, key: &[u8]) -> Option<Shape> {
        self.recent.shape(self.visible, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::decide;
    use crate::keyspace::Image;
    use crate::publish::Publisher;
    use crate::{Outcome, Write};

    /// The list at `key` as `recent` decides it over `publisher`'s visible state.
    fn decided_list(recent: &Recent, publisher: &Publisher, key: &[u8]) -> Vec<Vec<u8>> {
        let vis = publisher.visible();
        match recent.lend(&vis, key).map(|e| e.value) {
            Some(crate::table::ValueRef::List(l)) => {
                l.range(0, usize::MAX).map(<[u8]>::to_vec).collect()
            }
            _ => panic!("no list at the key"),
        }
    }

    /// A relative write is held as a change, not applied to a copy, until a decision reads its
    /// key. The entry is then made from the visible state and the changes that state does not
    /// hold yet, however far it has moved since they were recorded; the next change is
    /// applied to that entry.
    #[test]
    fn held_changes_are_made_over_the_visible_state_each_once() {
        let publisher = Publisher::new(Image::default(), 0, 0);
        let mut recent = Recent::default();
        let (key, other) = (Bytes::from_static(b"list"), Bytes::from_static(b"other"));
        let push = |key: &Bytes, e: &'static [u8]| Mutation::ListPush {
            key: key.clone(),
            create: false,
            front: true,
            elements: vec![Bytes::from_static(e)],
        };
        let log = |recent: &mut Recent, lsn: Lsn, m: Mutation| {
            recent.record(std::slice::from_ref(&m), lsn, &publisher.visible());
            publisher.queue(lsn, 0, vec![m]);
        };
        let made = |recent: &Recent, key: &Bytes| {
            let held = recent.by_key.iter().find(|h| h.key == key);
            held.map(|h| h.entry.made().is_some())
        };
        log(&mut recent, 1, push(&key, b"a"));
        log(&mut recent, 2, push(&key, b"b"));
        log(&mut recent, 3, push(&key, b"c"));
        assert_eq!(made(&recent, &key), Some(false));
        publisher.acked(2);
        assert_eq!(publisher.visible().lsn(), 2);
        // a and b are visible, c is not: made from [b, a] and c alone.
        assert_eq!(decided_list(&recent, &publisher, &key), [b"c", b"b", b"a"]);
        assert_eq!(made(&recent, &key), Some(true));
        log(&mut recent, 4, push(&key, b"d"));
        publisher.acked(3);
        assert_eq!(
            decided_list(&recent, &publisher, &key),
            [b"d", b"c", b"b", b"a"]
        );
        // Made, a list stays once visible (kept: it is costly to copy).
        publisher.acked(4);
        recent.forget_up_to(4);
        assert_eq!(made(&recent, &key), Some(true));
        // Changes never read are never made, and go once visible.
        log(&mut recent, 5, push(&other, b"x"));
        log(&mut recent, 6, push(&other, b"y"));
        assert_eq!(made(&recent, &other), Some(false));
        publisher.acked(6);
        recent.forget_up_to(6);
        assert_eq!(made(&recent, &other), None);
        assert_eq!(decided_list(&recent, &publisher, &other), [b"y", b"x"]);
        assert_eq!(
            decided_list(&recent, &publisher, &key),
            [b"d", b"c", b"b", b"a"]
        );
    }

    /// A push onto a list held as changes is decided from their shape (the list's length),
    /// without making the list: once the shape is told, each later change keeps it current,
    /// across publishing. A change whose shape is not told (LSET) makes the list.
    #[test]
    fn pushes_onto_a_held_list_are_decided_without_making_it() {
        let publisher = Publisher::new(Image::default(), 0, 0);
        let mut recent = Recent::default();
        let key = Bytes::from_static(b"list");
        let push = |n: usize| Mutation::ListPush {
            key: key.clone(),
            create: false,
            front: true,
            elements: vec![Bytes::from_static(b"e"); n],
        };
        let log = |recent: &mut Recent, lsn: Lsn, m: Mutation| {
            recent.record(std::slice::from_ref(&m), lsn, &publisher.visible());
            publisher.queue(lsn, 0, vec![m]);
        };
        let made = |recent: &Recent| {
            let held = recent.by_key.iter().find(|h| h.key == key);
            held.map(|h| h.entry.made().is_some())
        };
        // The outcome of a transaction decided against `recent` over the visible state.
        let decided = |recent: &Recent, guards: &[crate::Guard], writes| {
            let vis = publisher.visible();
            let view = View {
                recent,
                visible: &vis,
            };
            let rules = crate::decide::Rules::of(&Options::default());
            decide(view, 0, rules, guards, writes, false).0
        };
        // LPUSHX: pushes only onto a list that exists.
        let lpushx = |recent: &Recent| {
            let write = Write::ListPush {
                key: key.clone(),
                front: true,
                elements: vec![Bytes::from_static(b"x")],
                only_existing: true,
            };
            match decided(recent, &[], vec![write]) {
                Outcome::Committed { results, .. } => results[0].clone(),
                other => panic!("{other:?}"),
            }
        };
        // The shape the held entry keeps, once told.
        let cached = |recent: &Recent| {
            let held = recent.by_key.iter().find(|h| h.key == key).expect("held");
            match &held.entry {
                HeldEntry::Edits(_, _, cache) => cache.get().map(|s| s.and_then(|s| s.list_len)),
                HeldEntry::Whole(_) => panic!("made"),
            }
        };
        // Whether a guard (WATCH) on the list at `version` holds.
        let holds = |recent: &Recent, version: Lsn| {
            let guard = crate::Guard {
                key: key.clone(),
                version: Some(version),
            };
            !matches!(
                decided(recent, &[guard], Vec::new()),
                Outcome::GuardFailed(0)
            )
        };
        log(&mut recent, 1, push(2));
        log(&mut recent, 2, push(3));
        assert_eq!(cached(&recent), None);
        assert!(holds(&recent, 2) && !holds(&recent, 1));
        assert_eq!(lpushx(&recent), crate::WriteResult::Int(6));
        assert_eq!(made(&recent), Some(false));
        assert_eq!(cached(&recent), Some(Some(5)));
        log(&mut recent, 3, push(1));
        // Kept current by the change, not told again.
        assert_eq!(cached(&recent), Some(Some(6)));
        assert!(holds(&recent, 3) && !holds(&recent, 2));
        publisher.acked(2);
        assert_eq!(lpushx(&recent), crate::WriteResult::Int(7));
        log(&mut recent, 4, push(1));
        publisher.acked(4);
        assert_eq!(lpushx(&recent), crate::WriteResult::Int(8));
        assert_eq!(made(&recent), Some(false));
        assert_eq!(publisher.visible().lsn(), 4);
        // Forgotten once visible: told from the visible state alone.
        recent.forget_up_to(4);
        assert_eq!(made(&recent), None);
        assert_eq!(lpushx(&recent), crate::WriteResult::Int(8));
        log(
            &mut recent,
            5,
            Mutation::ListSet {
                key: key.clone(),
                index: 0,
                element: Bytes::from_static(b"s"),
            },
        );
        log(&mut recent, 6, push(2));
        assert_eq!(lpushx(&recent), crate::WriteResult::Int(10));
        assert_eq!(made(&recent), Some(true));
    }

    /// A key written again and again without a decision reading it (the destination of
    /// ZUNIONSTORE, say) holds only the changes the visible state lacks, not one per write.
    #[test]
    fn changes_to_a_key_never_read_stay_bounded() {
        let publisher = Publisher::new(Image::default(), 0, 0);
        let mut recent = Recent::default();
        let key = Bytes::from_static(b"dest");
        for lsn in 1..=100 {
            let m = Mutation::SetAdd {
                key: key.clone(),
                create: true,
                members: vec![Bytes::from(lsn.to_string())],
            };
            recent.record(std::slice::from_ref(&m), lsn, &publisher.visible());
            publisher.queue(lsn, 0, vec![m]);
            // The visible state one record behind, as under group commit.
            publisher.acked(lsn - 1);
            recent.forget_up_to(lsn - 1);
            let held = recent.by_key.iter().find(|h| h.key == key).expect("held");
            let HeldEntry::Edits(edits, _, _) = &held.entry else {
                panic!("never read, never made");
            };
            assert!(
                edits.len() <= 2,
                "{} changes held at LSN {lsn}",
                edits.len()
            );
        }
        let vis = publisher.visible();
        match recent.lend(&vis, &key).map(|e| e.value) {
            Some(crate::table::ValueRef::Set(s)) => assert_eq!(s.len(), 1),
            _ => panic!("no set at the key"),
        }
    }

    /// Whether `part` points into `whole`'s buffer.
    fn within(part: &Bytes, whole: &Bytes) -> bool {
        let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
        p >= w && p < w + whole.len()
    }

    /// A request's arguments are slices of one buffer (keel-resp's parser), so whatever keeps
    /// an argument long after its request keeps a copy: a slice would keep the request's other
    /// arguments alive with it (a 100-byte value for every key in the expiry index).
    #[test]
    fn what_outlives_its_request_keeps_no_slice_of_it() {
        let request = Bytes::from(vec![b'x'; 4096]);
        let key = request.slice(0..8);
        let mut seq = Seq {
            recent: Recent::default(),
            requests: Requests::default(),
            expiry: BTreeSet::new(),
            last_at_ms: 0,
            last_lsn: 0,
        };
        seq.track_expiry(&[
            Mutation::Set {
                key: key.clone(),
                value: request.slice(8..),
                expires_at_ms: Some(5),
            },
            Mutation::Expire {
                key: key.clone(),
                expires_at_ms: Some(6),
            },
        ]);
        assert_eq!(seq.expiry.len(), 2);
        assert!(seq
            .expiry
            .iter()
            .all(|(_, k)| *k == key && !within(k, &request)));

        let outcome = Outcome::Committed {
            lsn: None,
            results: Vec::new(),
            effects: Vec::new(),
        };
        let req = Request {
            id: key.clone(),
            at_ms: 0,
            outcome,
        };
        seq.requests.insert(1, req, &Options::default(), 0);
        let (kept, (_, req)) = seq.requests.by_id.get_key_value(&key).expect("kept");
        assert!(!within(kept, &request) && !within(&req.id, &request));
        assert!(seq
            .requests
            .order
            .iter()
            .all(|(_, id)| !within(id, &request)));

        // A hash written at LSN 1 and read before it is visible stays in `Recent` once
        // visible (it is costly to copy).
        let publisher = Publisher::new(Image::default(), 0, 0);
        let set = Mutation::HashSet {
            key: key.clone(),
            create: true,
            pairs: vec![(request.slice(8..9), request.slice(9..10))],
        };
        seq.recent.record(&[set], 1, &publisher.visible());
        assert!(seq.recent.lend(&publisher.visible(), &key).is_some());
        seq.recent.forget_up_to(1);
        assert_eq!(seq.recent.kept.len(), 1);
        assert!(seq
            .recent
            .by_key
            .iter()
            .all(|h| h.key == key && !within(&h.key, &request)));
    }
}
