//! The set value type.
//!
//! Three forms, converting one way as Redis's do (a set never converts back to a smaller form):
//! - an **intset** while every member is the canonical decimal form of an `i64` and there are at
//!   most [`SET_INTSET_ENTRIES_MAX`]: sorted integers of the narrowest width (2, 4 or 8 bytes)
//!   that holds them all; O(log n) SISMEMBER, O(n) SADD/SREM (a memmove of at most 4 KiB);
//! - a **packed** buffer of members (Redis's listpack) while there are at most
//!   [`SET_PACKED_ENTRIES_MAX`] of at most [`SET_PACKED_BYTES_MAX`] bytes; O(n) per operation;
//! - a `hashbrown` table of members past that: O(1) SADD, SREM, SISMEMBER.

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;

use super::cursor::TableState;
use super::packed::{self, canonical_i64, element, Elements};

/// Redis's `set-max-intset-entries`, by default.
pub const SET_INTSET_ENTRIES_MAX: usize = 512;
/// Redis's `set-max-listpack-entries`, by default.
pub const SET_PACKED_ENTRIES_MAX: usize = 128;
/// Redis's `set-max-listpack-value`, by default.
pub const SET_PACKED_BYTES_MAX: usize = 64;

static INTSET_ENTRIES: AtomicUsize = AtomicUsize::new(SET_INTSET_ENTRIES_MAX);
static PACKED_ENTRIES: AtomicUsize = AtomicUsize::new(SET_PACKED_ENTRIES_MAX);
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(SET_PACKED_BYTES_MAX);

/// The thresholds in force: (most members of an intset, most members of a packed set, longest
/// member of a packed set). One setting for the whole process, as Redis's are for its server.
pub fn set_packed_limits() -> (usize, usize, usize) {
    (
        INTSET_ENTRIES.load(Ordering::Relaxed),
        PACKED_ENTRIES.load(Ordering::Relaxed),
        PACKED_BYTES.load(Ordering::Relaxed),
    )
}

/// Sets one of [`set_packed_limits`], by its place there (0, 1 or 2: keel serve's CONFIG SET
/// set-max-intset-entries, set-max-listpack-entries and -value). Sets already converted stay as
/// they are.
pub fn set_set_packed_limit(which: usize, n: usize) {
    [&INTSET_ENTRIES, &PACKED_ENTRIES, &PACKED_BYTES][which].store(n, Ordering::Relaxed);
}

#[derive(Clone, Debug)]
pub struct SetValue(Repr);

#[derive(Clone)]
enum Repr {
    Ints(IntSet),
    Packed {
        buf: Vec<u8>,
        len: usize,
    },
    Table {
        members: HashTable<Box<[u8]>>,
        state: TableState,
    },
}

impl std::fmt::Debug for Repr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repr::Ints(i) => write!(f, "Ints({} members, width {})", i.len(), i.width),
            Repr::Packed { len, .. } => write!(f, "Packed({len} members)"),
            Repr::Table { members, .. } => write!(f, "Table({} members)", members.len()),
        }
    }
}

/// Which form a set is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetEncoding {
    Ints,
    Packed,
    Table,
}

impl Default for SetValue {
    fn default() -> Self {
        Self::new()
    }
}

impl SetValue {
    pub fn new() -> Self {
        SetValue(Repr::Ints(IntSet::default()))
    }

    pub fn encoding(&self) -> SetEncoding {
        match self.0 {
            Repr::Ints(_) => SetEncoding::Ints,
            Repr::Packed { .. } => SetEncoding::Packed,
            Repr::Table { .. } => SetEncoding::Table,
        }
    }

    /// SCARD.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Ints(i) => i.len(),
            Repr::Packed { len, .. } => *len,
            Repr::Table { members, .. } => members.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SISMEMBER.
    pub fn contains(&self, member: &[u8]) -> bool {
        match &self.0 {
            Repr::Ints(i) => canonical_i64(member).is_some_and(|v| i.search(v).is_ok()),
            Repr::Packed { buf, .. } => Elements::new(buf).any(|m| m == member),
            Repr::Table { members, state, .. } => members
                .find(state.hash_one(member), |m| &m[..] == member)
                .is_some(),
        }
    }

    /// SADD of one member; true if it is new.
    pub fn insert(&mut self, member: &[u8]) -> bool {
        let (intset_max, packed_max, bytes_max) = set_packed_limits();
        match &mut self.0 {
            Repr::Ints(ints) => {
                if let Some(v) = canonical_i64(member) {
                    match ints.search(v) {
                        Ok(_) => return false,
                        Err(_) if ints.len() < intset_max => {
                            ints.insert(v);
                            return true;
                        }
                        Err(_) => {}
                    }
                }
                // Not an integer, or one integer too many: as Redis's setTypeAddAux, go to the
                // packed form if everything would fit there, else to the table.
                let fits = ints.len() < packed_max
                    && member.len() <= bytes_max
                    && canonical_i64(member).is_none_or(|v| ints.search(v).is_err());
                if fits {
                    let mut buf = Vec::new();
                    for v in ints.iter() {
                        packed::push_element(&mut buf, itoa::Buffer::new().format(v).as_bytes());
                    }
                    let len = ints.len();
                    self.0 = Repr::Packed { buf, len };
                } else {
                    self.convert_to_table();
                }
                self.insert(member)
            }
            Repr::Packed { buf, len } => {
                if Elements::new(buf).any(|m| m == member) {
                    return false;
                }
                if *len < packed_max && member.len() <= bytes_max {
                    packed::push_element(buf, member);
                    *len += 1;
                    return true;
                }
                self.convert_to_table();
                self.insert(member)
            }
            Repr::Table { members, state } => {
                state.layout.before_insert(members);
                let h = state.hash_one(member);
                match members.entry(h, |m| &m[..] == member, |m| state.hash_one(&m[..])) {
                    hashbrown::hash_table::Entry::Occupied(_) => false,
                    hashbrown::hash_table::Entry::Vacant(v) => {
                        v.insert(member.into());
                        true
                    }
                }
            }
        }
    }

    /// SREM of one member; true if it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        match &mut self.0 {
            Repr::Ints(ints) => match canonical_i64(member).map(|v| ints.search(v)) {
                Some(Ok(i)) => {
                    ints.remove_at(i);
                    true
                }
                _ => false,
            },
            Repr::Packed { buf, len } => {
                let mut at = 0;
                while at < buf.len() {
                    let (m, next) = element(buf, at);
                    if m == member {
                        packed::splice(buf, at..next, &[]);
                        *len -= 1;
                        return true;
                    }
                    at = next;
                }
                false
            }
            Repr::Table { members, state } => {
                match members.find_entry(state.hash_one(member), |m| &m[..] == member) {
                    Ok(o) => {
                        o.remove();
                        if packed::shrink_if_sparse(members, |m| state.hash_one(&m[..])) {
                            state.layout.changed();
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// SRANDMEMBER/SPOP's pick: a uniformly random member, `rand` giving the randomness.
    /// O(1) for an intset, O(n) over at most 128 members when packed, O(1) expected for a table.
    pub fn random(&self, rand: &mut dyn FnMut() -> u64) -> Option<Cow<'_, [u8]>> {
        if self.is_empty() {
            return None;
        }
        let len = self.len() as u64;
        match &self.0 {
            Repr::Ints(i) => Some(Cow::Owned(
                itoa::Buffer::new()
                    .format(i.get((rand() % len) as usize))
                    .as_bytes()
                    .to_vec(),
            )),
            Repr::Packed { buf, .. } => Elements::new(buf)
                .nth((rand() % len) as usize)
                .map(Cow::Borrowed),
            Repr::Table { members, .. } => {
                packed::random_in(members, rand).map(|m| Cow::Borrowed(&m[..]))
            }
        }
    }

    /// SRANDMEMBER's and SPOP's picks ([`super::sample`]): `count` distinct members, or for a
    /// negative count `-count` that may repeat.
    pub fn sample(&self, count: i64, rand: &mut dyn FnMut() -> u64) -> Vec<Cow<'_, [u8]>> {
        super::sample(
            self.len(),
            count,
            rand,
            |r| self.random(r).expect("the set is not empty"),
            || self.iter().collect(),
            |m| &m[..],
        )
    }

    /// SMEMBERS: every member, in no particular order (an intset's in ascending order).
    pub fn iter(&self) -> SetIter<'_> {
        SetIter(match &self.0 {
            Repr::Ints(i) => IterRepr::Ints(i, 0),
            Repr::Packed { buf, .. } => IterRepr::Packed(Elements::new(buf)),
            Repr::Table { members, .. } => IterRepr::Table(members.iter()),
        })
    }

    /// Heap bytes this value holds, as requested from the allocator.
    pub fn memory_bytes(&self) -> usize {
        match &self.0 {
            Repr::Ints(i) => i.data.capacity(),
            Repr::Packed { buf, .. } => buf.capacity(),
            Repr::Table { members, .. } => {
                members.allocation_size() + members.iter().map(|m| m.len()).sum::<usize>()
            }
        }
    }

    /// [`memory_bytes`](Self::memory_bytes) in O(1): a table's members' bytes are estimated
    /// from 16 of them.
    pub fn memory_estimate(&self) -> usize {
        match &self.0 {
            Repr::Table { members, .. } => {
                let lens = members.iter().map(|m| m.len());
                members.allocation_size() + packed::sampled_total(lens, members.len())
            }
            _ => self.memory_bytes(),
        }
    }

    fn convert_to_table(&mut self) {
        let state = TableState::new();
        let mut members = HashTable::with_capacity(self.len() + 1);
        for m in self.iter() {
            let m: Box<[u8]> = m.into_owned().into_boxed_slice();
            members.insert_unique(state.hash_one(&m[..]), m, |m| state.hash_one(&m[..]));
        }
        self.0 = Repr::Table { members, state };
    }

    /// SSCAN: from `cursor`, at least `count` members (or the rest) to `found`, and the cursor
    /// to go on from, 0 at the end. An intset or a packed set comes whole, as in Redis. See
    /// [`super::cursor`] for what a cursor promises.
    pub fn scan(&self, cursor: u64, count: usize, mut found: impl FnMut(&[u8])) -> u64 {
        match &self.0 {
            Repr::Table { members, state } => {
                state.layout.scan(members, cursor, count, |m| found(m))
            }
            _ => {
                self.iter().for_each(|m| found(&m));
                0
            }
        }
    }
}

/// The members of a [`SetValue`]; an intset's are rendered as decimal.
pub struct SetIter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Ints(&'a IntSet, usize),
    Packed(Elements<'a>),
    Table(hashbrown::hash_table::Iter<'a, Box<[u8]>>),
}

impl<'a> Iterator for SetIter<'a> {
    type Item = Cow<'a, [u8]>;
    fn next(&mut self) -> Option<Cow<'a, [u8]>> {
        match &mut self.0 {
            IterRepr::Ints(set, i) => {
                let v = (*i < set.len()).then(|| set.get(*i))?;
                *i += 1;
                Some(Cow::Owned(
                    itoa::Buffer::new().format(v).as_bytes().to_vec(),
                ))
            }
            IterRepr::Packed(e) => e.next().map(Cow::Borrowed),
            IterRepr::Table(t) => t.next().map(|m| Cow::Borrowed(&m[..])),
        }
    }
}

/// Sorted distinct integers, each stored little-endian in `width` bytes: the narrowest of 2, 4
/// and 8 that holds every member (Redis's intset). Widening rewrites the whole set; nothing
/// narrows it again.
#[derive(Clone, Debug)]
pub(crate) struct IntSet {
    width: usize,
    data: Vec<u8>,
}

impl Default for IntSet {
    fn default() -> Self {
        IntSet {
            width: 2,
            data: Vec::new(),
        }
    }
}

fn width_for(v: i64) -> usize {
    if i16::try_from(v).is_ok() {
        2
    } else if i32::try_from(v).is_ok() {
        4
    } else {
        8
    }
}

impl IntSet {
    pub(crate) fn len(&self) -> usize {
        self.data.len() / self.width
    }

    pub(crate) fn get(&self, i: usize) -> i64 {
        let b = &self.data[i * self.width..(i + 1) * self.width];
        match self.width {
            2 => i64::from(i16::from_le_bytes([b[0], b[1]])),
            4 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => i64::from_le_bytes(b.try_into().expect("8 bytes")),
        }
    }

    fn encode(v: i64, width: usize) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..width].copy_from_slice(&v.to_le_bytes()[..width]);
        out
    }

    pub(crate) fn search(&self, v: i64) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).cmp(&v) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// Inserts `v`, which must not be present.
    pub(crate) fn insert(&mut self, v: i64) {
        let w = width_for(v);
        if w > self.width {
            let mut data = Vec::with_capacity((self.len() + 1) * w);
            for i in 0..self.len() {
                data.extend_from_slice(&Self::encode(self.get(i), w)[..w]);
            }
            self.data = data;
            self.width = w;
        }
        let at = self
            .search(v)
            .expect_err("inserting a member already present");
        let bytes = Self::encode(v, self.width);
        self.data.reserve_exact(self.width);
        let off = at * self.width;
        self.data
            .splice(off..off, bytes[..self.width].iter().copied());
    }

    pub(crate) fn remove_at(&mut self, i: usize) {
        self.data.drain(i * self.width..(i + 1) * self.width);
        self.data.shrink_to_fit();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}
