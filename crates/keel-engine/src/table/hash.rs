//! The hash value type: field → value.
//!
//! Small hashes are one packed buffer of alternating fields and values (Redis's listpack
//! encoding): O(n) per operation over at most [`HASH_PACKED_ENTRIES_MAX`] pairs, about two bytes
//! of overhead per field and value. Past [`HASH_PACKED_ENTRIES_MAX`] pairs, or when a field or a
//! value is longer than [`HASH_PACKED_BYTES_MAX`], the hash converts, once and for good as in
//! Redis, to a `hashbrown` table of pairs: O(1) HSET, HGET and HDEL.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;

use super::cursor::TableState;
use super::packed::{self, element, get_varint, put_varint, varint_len, Elements};

/// Redis's `hash-max-listpack-entries`, by default.
pub const HASH_PACKED_ENTRIES_MAX: usize = 128;
/// Redis's `hash-max-listpack-value` by default: a longer field or value converts the hash to
/// a table.
pub const HASH_PACKED_BYTES_MAX: usize = 64;

static PACKED_ENTRIES: AtomicUsize = AtomicUsize::new(HASH_PACKED_ENTRIES_MAX);
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(HASH_PACKED_BYTES_MAX);

/// The thresholds in force: (most pairs, longest field or value) a packed hash holds. One
/// setting for the whole process, as Redis's are for its server.
pub fn hash_packed_limits() -> (usize, usize) {
    (
        PACKED_ENTRIES.load(Ordering::Relaxed),
        PACKED_BYTES.load(Ordering::Relaxed),
    )
}

/// Sets the first of [`hash_packed_limits`] (keel serve's CONFIG SET
/// hash-max-listpack-entries). Hashes already converted to a table stay tables; only the
/// encoding changes, never a value.
pub fn set_hash_packed_entries(n: usize) {
    PACKED_ENTRIES.store(n, Ordering::Relaxed);
}

/// Sets the second of [`hash_packed_limits`] (hash-max-listpack-value).
pub fn set_hash_packed_bytes(n: usize) {
    PACKED_BYTES.store(n, Ordering::Relaxed);
}

/// A hash value. Empty hashes exist only transiently: the keyspace deletes a key whose hash
/// becomes empty, as Redis does.
#[derive(Clone, Debug)]
pub struct HashValue(Repr);

#[derive(Clone)]
enum Repr {
    /// field, value, field, value, ... (see `packed`); `len` counts pairs.
    Packed { buf: Vec<u8>, len: usize },
    /// One allocation per pair: varint(field length), field, value.
    Table {
        pairs: HashTable<Box<[u8]>>,
        state: TableState,
    },
}

impl std::fmt::Debug for Repr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repr::Packed { len, .. } => write!(f, "Packed({len} pairs)"),
            Repr::Table { pairs, .. } => write!(f, "Table({} pairs)", pairs.len()),
        }
    }
}

fn pair(field: &[u8], value: &[u8]) -> Box<[u8]> {
    let mut b = Vec::with_capacity(varint_len(field.len()) + field.len() + value.len());
    put_varint(&mut b, field.len());
    b.extend_from_slice(field);
    b.extend_from_slice(value);
    b.into_boxed_slice()
}

fn split_pair(p: &[u8]) -> (&[u8], &[u8]) {
    let (flen, n) = get_varint(p);
    (&p[n..n + flen], &p[n + flen..])
}

/// In a packed hash: (offset of the pair, offset past it, the value) of `field`.
fn find_packed<'a>(buf: &'a [u8], field: &[u8]) -> Option<(usize, usize, &'a [u8])> {
    let mut at = 0;
    while at < buf.len() {
        let (f, v_at) = element(buf, at);
        let (v, next) = element(buf, v_at);
        if f == field {
            return Some((at, next, v));
        }
        at = next;
    }
    None
}

impl Default for HashValue {
    fn default() -> Self {
        Self::new()
    }
}

impl HashValue {
    pub fn new() -> Self {
        HashValue(Repr::Packed {
            buf: Vec::new(),
            len: 0,
        })
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Packed { len, .. } => *len,
            Repr::Table { pairs, .. } => pairs.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the hash is in its small, packed form.
    pub fn is_packed(&self) -> bool {
        matches!(self.0, Repr::Packed { .. })
    }

    /// HGET.
    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        match &self.0 {
            Repr::Packed { buf, .. } => find_packed(buf, field).map(|(_, _, v)| v),
            Repr::Table { pairs, state, .. } => pairs
                .find(state.hash_one(field), |p| split_pair(p).0 == field)
                .map(|p| split_pair(p).1),
        }
    }

    /// HSET of one field; true if the field is new.
    pub fn insert(&mut self, field: &[u8], value: &[u8]) -> bool {
        if let Repr::Packed { buf, len } = &mut self.0 {
            let (entries_max, bytes_max) = hash_packed_limits();
            let fits = field.len() <= bytes_max && value.len() <= bytes_max;
            match find_packed(buf, field) {
                Some((start, end, _)) if fits => {
                    packed::splice(buf, start..end, &[field, value]);
                    return false;
                }
                None if fits && *len < entries_max => {
                    packed::push_element(buf, field);
                    packed::push_element(buf, value);
                    *len += 1;
                    return true;
                }
                _ => self.convert_to_table(),
            }
        }
        let Repr::Table { pairs, state } = &mut self.0 else {
            unreachable!("converted above")
        };
        state.layout.before_insert(pairs);
        let h = state.hash_one(field);
        match pairs.entry(
            h,
            |p| split_pair(p).0 == field,
            |p| state.hash_one(split_pair(p).0),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                *o.get_mut() = pair(field, value);
                false
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(pair(field, value));
                true
            }
        }
    }

    /// HDEL of one field; true if it was there.
    pub fn remove(&mut self, field: &[u8]) -> bool {
        match &mut self.0 {
            Repr::Packed { buf, len } => match find_packed(buf, field) {
                Some((start, end, _)) => {
                    packed::splice(buf, start..end, &[]);
                    *len -= 1;
                    true
                }
                None => false,
            },
            Repr::Table { pairs, state } => {
                match pairs.find_entry(state.hash_one(field), |p| split_pair(p).0 == field) {
                    Ok(o) => {
                        o.remove();
                        if packed::shrink_if_sparse(pairs, |p| state.hash_one(split_pair(p).0)) {
                            state.layout.changed();
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// HRANDFIELD's pick: a uniformly random (field, value), `rand` giving the randomness.
    /// O(1) expected for a table, O(n) over at most 128 pairs when packed.
    pub fn random(&self, rand: &mut dyn FnMut() -> u64) -> Option<(&[u8], &[u8])> {
        if self.is_empty() {
            return None;
        }
        match &self.0 {
            Repr::Packed { .. } => self.iter().nth((rand() % self.len() as u64) as usize),
            Repr::Table { pairs, .. } => packed::random_in(pairs, rand).map(|p| split_pair(p)),
        }
    }

    /// HRANDFIELD's picks ([`super::sample`]): `count` distinct (field, value) pairs, or for a
    /// negative count `-count` that may repeat.
    pub fn sample(&self, count: i64, rand: &mut dyn FnMut() -> u64) -> Vec<(&[u8], &[u8])> {
        super::sample(
            self.len(),
            count,
            rand,
            |r| self.random(r).expect("the hash is not empty"),
            || self.iter().collect(),
            |p| p.0,
        )
    }

    /// HGETALL: every (field, value), in no particular order.
    pub fn iter(&self) -> HashIter<'_> {
        HashIter(match &self.0 {
            Repr::Packed { buf, .. } => IterRepr::Packed(Elements::new(buf)),
            Repr::Table { pairs, .. } => IterRepr::Table(pairs.iter()),
        })
    }

    /// Heap bytes this value holds, as requested from the allocator (an estimate: the
    /// allocator's rounding is not counted).
    pub fn memory_bytes(&self) -> usize {
        match &self.0 {
            Repr::Packed { buf, .. } => buf.capacity(),
            Repr::Table { pairs, .. } => {
                pairs.allocation_size() + pairs.iter().map(|p| p.len()).sum::<usize>()
            }
        }
    }

    /// [`memory_bytes`](Self::memory_bytes) in O(1): a table's pairs' bytes are estimated
    /// from 16 of them.
    pub fn memory_estimate(&self) -> usize {
        match &self.0 {
            Repr::Table { pairs, .. } => {
                let lens = pairs.iter().map(|p| p.len());
                pairs.allocation_size() + packed::sampled_total(lens, pairs.len())
            }
            _ => self.memory_bytes(),
        }
    }

    fn convert_to_table(&mut self) {
        let Repr::Packed { buf, len } = &self.0 else {
            return;
        };
        let state = TableState::new();
        let mut pairs = HashTable::with_capacity(len + 1);
        let mut e = Elements::new(buf);
        while let (Some(f), Some(v)) = (e.next(), e.next()) {
            pairs.insert_unique(state.hash_one(f), pair(f, v), |p| {
                state.hash_one(split_pair(p).0)
            });
        }
        self.0 = Repr::Table { pairs, state };
    }

    /// HSCAN: from `cursor`, at least `count` pairs (or the rest) to `found`, and the cursor to
    /// go on from, 0 at the end. A packed hash comes whole, as Redis's listpack does. See
    /// [`super::cursor`] for what a cursor promises.
    pub fn scan(&self, cursor: u64, count: usize, mut found: impl FnMut(&[u8], &[u8])) -> u64 {
        match &self.0 {
            Repr::Table { pairs, state } => state.layout.scan(pairs, cursor, count, |p| {
                let (f, v) = split_pair(p);
                found(f, v)
            }),
            Repr::Packed { .. } => {
                self.iter().for_each(|(f, v)| found(f, v));
                0
            }
        }
    }
}

/// The pairs of a [`HashValue`].
pub struct HashIter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Packed(Elements<'a>),
    Table(hashbrown::hash_table::Iter<'a, Box<[u8]>>),
}

impl<'a> Iterator for HashIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Packed(e) => Some((e.next()?, e.next()?)),
            IterRepr::Table(t) => t.next().map(|p| split_pair(p)),
        }
    }
}
