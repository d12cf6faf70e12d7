//! The typed keyspace's storage: a sharded hash table of entries, each one allocation.
//!
//! The engine's visible keyspace ([`crate::keyspace`]) keeps its user keys in one [`Table`].
//!
//! # Layout
//!
//! A [`Table`] is `2^shard_bits` [`Shard`]s. A key is hashed once with foldhash (seeded at
//! random per table, so clients cannot aim collisions); the hash's top `shard_bits` bits pick
//! the shard, and the shard's `hashbrown::HashTable` probes with the same hash rotated so that
//! its control byte (the top 7 bits) and its bucket index (the low bits) both come from bits the
//! shard choice did not use.
//!
//! Each slot of a shard's table is one `Box<[u8]>`, the entry's **block**: one heap allocation
//! holding the whole entry:
//!
//! ```text
//! block   := flags u8, varint(key length), version u64 LE, [expiry u64 LE], key, value
//! flags   := kind (bits 0-2: 0 string, 1 hash, 2 set, 3 list, 4 sorted set; 5-7 free, for
//!            streams) | 0x80 if an expiry follows
//! version := LSN of the entry's last change
//! expiry  := absolute Unix milliseconds
//! value   := a string's bytes, inline; for a collection, its index (u32 LE) in the shard's slab
//! ```
//!
//! So a string entry costs its block (10 bytes of header plus key and value, one allocation)
//! plus one slot (16 bytes and one control byte, at hashbrown's load factor). A collection
//! lives in its shard's slab; its block holds the index. Expiry is stored only when set.
//!
//! The slot is a `Box<[u8]>`, a 16-byte fat pointer, not a thin 8-byte one: a thin pointer to a
//! length-prefixed block needs `unsafe`, which this crate forbids (DESIGN.md: only where truly
//! needed), and no thin-box crate is a dependency. It costs about 8 bytes per slot, 12–17 per
//! key at hashbrown's load factors, and the table is already below Redis's per-key figure
//! (BENCHMARKS.md). The block's length lives in the fat pointer, which is why the header needs no
//! value length. Collections sit in a slab and not behind a pointer in the block for the same
//! reason: a pointer cannot be stored in a byte block without `unsafe`.
//!
//! # Shards: extendible hashing
//!
//! A shard holds the keys whose hashes fall in one aligned range: those that share its top
//! `depth` bits. A directory indexed by a hash's top bits (as many as the deepest shard uses)
//! finds the shard. A shard that passes [`SHARD_SPLIT_KEYS`] keys splits in two by its next
//! hash bit, doubling the directory first if it was the deepest, so shards stay at a few hundred
//! keys however large the table grows, and growth costs a few hundred keys rehashed at a time,
//! never the whole table at once. Shards never merge: a range only ever divides, so every range
//! boundary handed out stays one. Locking is left to the owner (the engine keeps one `Table`
//! behind one lock, written by its publish step).
//!
//! # SCAN
//!
//! Entries are visited in the order of their 64-bit hash, and the cursor is the next hash to
//! visit: everything with a smaller hash has been returned. Because a shard is a range of
//! hashes, this is shard by shard. A key present for the whole scan keeps its hash, so it is
//! returned exactly once unless its hash collides in all 64 bits with another (then both come
//! in the same call), whatever inserts, removes, table growths and splits happen between calls.
//!
//! The price: a call hashes every key of the shards it reads, O(shard length) per call (a few
//! hundred keys), not O(COUNT) as in Redis (see [`Table::scan`]). Redis's bucket cursor does not carry over:
//! hashbrown is open-addressed, so an entry need not sit in its home bucket, and a resize moves
//! entries to positions that no cursor order predicts.

mod cursor;
mod hash;
mod list;
pub(crate) mod packed;
mod set;
mod stream;
#[cfg(test)]
pub(crate) mod tests;
mod zset;

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

pub use hash::{
    hash_packed_limits, set_hash_packed_bytes, set_hash_packed_entries, HashIter, HashValue,
    HASH_PACKED_BYTES_MAX, HASH_PACKED_ENTRIES_MAX,
};
pub use list::{list_chunk_limit, set_list_chunk_limit, ListValue, LIST_CHUNK_BYTES_MAX};
pub use set::{
    set_packed_limits, set_set_packed_limit, SetEncoding, SetIter, SetValue,
    SET_INTSET_ENTRIES_MAX, SET_PACKED_BYTES_MAX, SET_PACKED_ENTRIES_MAX,
};
pub use stream::{Consumer, Pending, StreamGroup, StreamId, StreamValue};
pub use zset::{
    set_zset_packed_limit, zset_packed_limits, ZSetValue, ZSET_PACKED_BYTES_MAX,
    ZSET_PACKED_ENTRIES_MAX,
};

use packed::{get_varint, put_varint, varint_len};

/// Random picks among a collection's `len` items (SRANDMEMBER, HRANDFIELD, ZRANDMEMBER and
/// SPOP): `count` distinct ones (every item when there are no more), or for a negative count
/// `-count` that may repeat. `pick` draws one item uniformly, O(1) expected or O(log n);
/// `all` lists every item and is called only when the answer is a third of the collection or
/// more, where a partial shuffle costs no more than the answer itself (Redis's SRANDMEMBER
/// switches likewise). `name` is what makes two items the same.
pub(crate) fn sample<T>(
    len: usize,
    count: i64,
    rand: &mut dyn FnMut() -> u64,
    mut pick: impl FnMut(&mut dyn FnMut() -> u64) -> T,
    all: impl FnOnce() -> Vec<T>,
    name: impl Fn(&T) -> &[u8],
) -> Vec<T> {
    if len == 0 || count == 0 {
        return Vec::new();
    }
    if count < 0 {
        return (0..count.unsigned_abs()).map(|_| pick(rand)).collect();
    }
    let want = usize::try_from(count).map_or(len, |c| c.min(len));
    if want == len {
        return all();
    }
    if want > len / 3 {
        let mut items = all();
        for i in 0..want {
            let j = i + (rand() % (len - i) as u64) as usize;
            items.swap(i, j);
        }
        items.truncate(want);
        return items;
    }
    let state = RandomState::default();
    let mut seen: HashTable<usize> = HashTable::with_capacity(want);
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let x = pick(rand);
        let h = state.hash_one(name(&x));
        if seen.find(h, |&i| name(&out[i]) == name(&x)).is_none() {
            seen.insert_unique(h, out.len(), |&i| state.hash_one(name(&out[i])));
            out.push(x);
        }
    }
    out
}

/// The type of a key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    String = 0,
    Hash = 1,
    Set = 2,
    List = 3,
    ZSet = 4,
    Stream = 5,
}

impl Kind {
    /// What the type is called in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::List => "list",
            Kind::ZSet => "sorted set",
            Kind::Stream => "stream",
        }
    }

    /// The kind a code stands for (`Kind as u8` the other way), if any.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::String,
            1 => Kind::Hash,
            2 => Kind::Set,
            3 => Kind::List,
            4 => Kind::ZSet,
            5 => Kind::Stream,
            _ => return None,
        })
    }

    fn from_flags(f: u8) -> Kind {
        Kind::from_code(f & KIND_MASK)
            .unwrap_or_else(|| unreachable!("kind {f} in a block the table encoded itself"))
    }
}

const KIND_MASK: u8 = 0x07;
const HAS_EXPIRY: u8 = 0x80;

/// An owned value, to insert.
#[derive(Clone, Debug)]
pub enum Value {
    String(Vec<u8>),
    Hash(HashValue),
    Set(SetValue),
    List(ListValue),
    ZSet(ZSetValue),
    Stream(StreamValue),
}

impl Value {
    /// The value, borrowed as a stored one is.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::String(v) => ValueRef::String(v),
            Value::Hash(h) => ValueRef::Hash(h),
            Value::Set(x) => ValueRef::Set(x),
            Value::List(x) => ValueRef::List(x),
            Value::ZSet(x) => ValueRef::ZSet(x),
            Value::Stream(x) => ValueRef::Stream(x),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Value::String(_) => Kind::String,
            Value::Hash(_) => Kind::Hash,
            Value::Set(_) => Kind::Set,
            Value::List(_) => Kind::List,
            Value::ZSet(_) => Kind::ZSet,
            Value::Stream(_) => Kind::Stream,
        }
    }
}

/// A value as stored.
#[derive(Clone, Copy, Debug)]
pub enum ValueRef<'a> {
    String(&'a [u8]),
    Hash(&'a HashValue),
    Set(&'a SetValue),
    List(&'a ListValue),
    ZSet(&'a ZSetValue),
    Stream(&'a StreamValue),
}

impl ValueRef<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            ValueRef::String(_) => Kind::String,
            ValueRef::Hash(_) => Kind::Hash,
            ValueRef::Set(_) => Kind::Set,
            ValueRef::List(_) => Kind::List,
            ValueRef::ZSet(_) => Kind::ZSet,
            ValueRef::Stream(_) => Kind::Stream,
        }
    }
}

/// A value to change in place. A string is replaced by inserting anew (its bytes are inline in
/// the block, whose size is fixed).
#[derive(Debug)]
pub enum ValueMut<'a> {
    String(&'a [u8]),
    Hash(&'a mut HashValue),
    Set(&'a mut SetValue),
    List(&'a mut ListValue),
    ZSet(&'a mut ZSetValue),
    Stream(&'a mut StreamValue),
}

/// A collection in a shard's slab.
#[derive(Clone, Debug)]
enum Coll {
    Hash(HashValue),
    Set(SetValue),
    List(ListValue),
    ZSet(ZSetValue),
    /// Boxed: a stream's value is twice the size of the others', and every slab slot is the
    /// size of the largest (a small sorted set's slot went from 96 bytes to 48).
    Stream(Box<StreamValue>),
}

impl Coll {
    fn memory_bytes(&self) -> usize {
        match self {
            Coll::Hash(h) => h.memory_bytes(),
            Coll::Set(s) => s.memory_bytes(),
            Coll::List(l) => l.memory_bytes(),
            Coll::ZSet(z) => z.memory_bytes(),
            Coll::Stream(x) => x.memory_bytes(),
        }
    }
}

/// The parsed header of a block.
struct Header {
    flags: u8,
    version_at: usize,
    expiry: Option<u64>,
    key_at: usize,
    value_at: usize,
}

fn header(b: &[u8]) -> Header {
    let flags = b[0];
    let (key_len, n) = get_varint(&b[1..]);
    let version_at = 1 + n;
    let mut at = version_at + 8;
    let expiry = (flags & HAS_EXPIRY != 0).then(|| {
        at += 8;
        u64_at(b, at - 8)
    });
    Header {
        flags,
        version_at,
        expiry,
        key_at: at,
        value_at: at + key_len,
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn block_key(b: &[u8]) -> &[u8] {
    let h = header(b);
    &b[h.key_at..h.value_at]
}

fn encode_block(
    kind: Kind,
    key: &[u8],
    version: u64,
    expiry: Option<u64>,
    value: &[u8],
) -> Box<[u8]> {
    let len = 1
        + varint_len(key.len())
        + 8
        + if expiry.is_some() { 8 } else { 0 }
        + key.len()
        + value.len();
    let mut b = Vec::with_capacity(len);
    b.push(kind as u8 | if expiry.is_some() { HAS_EXPIRY } else { 0 });
    put_varint(&mut b, key.len());
    b.extend_from_slice(&version.to_le_bytes());
    if let Some(t) = expiry {
        b.extend_from_slice(&t.to_le_bytes());
    }
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    debug_assert_eq!(b.len(), len);
    b.into_boxed_slice()
}

/// The probe hash inside a shard: the key's hash with its low 7 bits moved to the top, so that
/// hashbrown's control byte (top 7 bits) and bucket index (low bits) both avoid the top bits
/// that chose the shard, which are equal for every key of a shard.
fn probe_hash(h: u64) -> u64 {
    h.rotate_right(7)
}

/// A removed entry.
#[derive(Clone, Debug)]
pub struct Removed {
    pub value: Value,
    pub version: u64,
    pub expires_at_ms: Option<u64>,
}

/// One shard: a hash table of blocks and a slab of the collections they point to.
///
/// Shards are made only by a [`Table`]: every shard of a table rehashes its keys with the
/// table's seed, so a shard from elsewhere would lose its keys when it grows.
#[derive(Clone, Debug)]
pub struct Shard {
    slots: HashTable<Box<[u8]>>,
    colls: Vec<Option<Coll>>,
    /// Free indices in `colls`.
    free: Vec<u32>,
    state: RandomState,
    /// How many top bits of a hash all of this shard's keys share: the shard holds the hashes
    /// of one aligned range of `2^(64 - depth)` (its "local depth" in extendible hashing).
    depth: u32,
}

impl Shard {
    fn with_state(state: RandomState, depth: u32) -> Shard {
        Shard {
            slots: HashTable::new(),
            colls: Vec::new(),
            free: Vec::new(),
            state,
            depth,
        }
    }

    /// The range of hashes this shard holds, `[start, end)`, with `end` `None` for 2^64, given
    /// any hash in it.
    fn range(&self, hash: u64) -> (u64, Option<u64>) {
        let size_log = 64 - self.depth;
        let start = if size_log == 64 {
            0
        } else {
            hash >> size_log << size_log
        };
        let end = if size_log == 64 {
            None
        } else {
            start.checked_add(1 << size_log)
        };
        (start, end)
    }

    /// Moves the entries whose hash has the bit below this shard's prefix set into a new shard,
    /// and deepens both by one bit: the split of extendible hashing. Collections move with their
    /// blocks into the new shard's slab. O(entries).
    fn split(&mut self) -> Shard {
        self.depth += 1;
        let bit = 1u64 << (64 - self.depth);
        let state = &self.state;
        let moving: Vec<Box<[u8]>> = self
            .slots
            .extract_if(|b| state.hash_one(block_key(b)) & bit != 0)
            .collect();
        let mut upper = Shard::with_state(self.state.clone(), self.depth);
        upper
            .slots
            .reserve(moving.len(), |b| probe_hash(state.hash_one(block_key(b))));
        for mut block in moving {
            let h = header(&block);
            if let Some(c) = Self::release(&mut self.colls, &mut self.free, &block) {
                let i = upper.alloc(c);
                block[h.value_at..].copy_from_slice(&i.to_le_bytes());
            }
            let hash = upper.hash_key(block_key(&block));
            upper.slots.insert_unique(probe_hash(hash), block, |b| {
                probe_hash(state.hash_one(block_key(b)))
            });
        }
        self.shrink_if_sparse();
        upper
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn hash_key(&self, key: &[u8]) -> u64 {
        self.state.hash_one(key)
    }

    /// The entry of `key`, whose hash is `hash` (from [`Table::hash`]).
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<EntryRef<'_>> {
        self.slots
            .find(probe_hash(hash), |b| block_key(b) == key)
            .map(|b| EntryRef {
                block: b,
                colls: &self.colls,
            })
    }

    pub fn get_mut(&mut self, hash: u64, key: &[u8]) -> Option<EntryMut<'_>> {
        self.slots
            .find_mut(probe_hash(hash), |b| block_key(b) == key)
            .map(|b| EntryMut {
                block: b,
                colls: &mut self.colls,
            })
    }

    fn alloc(&mut self, c: Coll) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.colls[i as usize] = Some(c);
                i
            }
            None => {
                let i = u32::try_from(self.colls.len()).expect("fewer than 2^32 collections");
                self.colls.push(Some(c));
                i
            }
        }
    }

    /// Takes the collection out of a block's slab slot, if it has one, and frees the slot.
    fn release(colls: &mut [Option<Coll>], free: &mut Vec<u32>, block: &[u8]) -> Option<Coll> {
        let h = header(block);
        if Kind::from_flags(h.flags) == Kind::String {
            return None;
        }
        let i = u32::from_le_bytes(block[h.value_at..].try_into().expect("4-byte index"));
        free.push(i);
        Some(
            colls[i as usize]
                .take()
                .expect("a live entry's slab slot is full"),
        )
    }

    fn encode(&mut self, key: &[u8], value: Value, expiry: Option<u64>, version: u64) -> Box<[u8]> {
        let kind = value.kind();
        match value {
            Value::String(s) => encode_block(kind, key, version, expiry, &s),
            Value::Hash(h) => self.encode_coll(kind, key, version, expiry, Coll::Hash(h)),
            Value::Set(s) => self.encode_coll(kind, key, version, expiry, Coll::Set(s)),
            Value::List(l) => self.encode_coll(kind, key, version, expiry, Coll::List(l)),
            Value::ZSet(z) => self.encode_coll(kind, key, version, expiry, Coll::ZSet(z)),
            Value::Stream(x) => {
                self.encode_coll(kind, key, version, expiry, Coll::Stream(Box::new(x)))
            }
        }
    }

    fn encode_coll(
        &mut self,
        kind: Kind,
        key: &[u8],
        version: u64,
        expiry: Option<u64>,
        c: Coll,
    ) -> Box<[u8]> {
        let i = self.alloc(c);
        encode_block(kind, key, version, expiry, &i.to_le_bytes())
    }

    /// Sets `key` to `value`, replacing any entry; true if one was replaced.
    pub fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        value: Value,
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> bool {
        let block = self.encode(key, value, expires_at_ms, version);
        self.put_block(hash, key, block)
    }

    /// Puts `block`, whose key is not yet in the shard, at `hash`; gives it back if the key is
    /// there already. The loader's insert: no entry API, no replacement.
    fn insert_new(&mut self, hash: u64, block: Box<[u8]>) -> Result<(), Box<[u8]>> {
        if self
            .slots
            .find(probe_hash(hash), |b| block_key(b) == block_key(&block))
            .is_some()
        {
            return Err(block);
        }
        let state = &self.state;
        self.slots.insert_unique(probe_hash(hash), block, |b| {
            probe_hash(state.hash_one(block_key(b)))
        });
        Ok(())
    }

    /// Sets `key` to the string `value`, without building a [`Value`].
    pub fn insert_string(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> bool {
        let block = encode_block(Kind::String, key, version, expires_at_ms, value);
        self.put_block(hash, key, block)
    }

    fn put_block(&mut self, hash: u64, key: &[u8], block: Box<[u8]>) -> bool {
        self.replace_block(hash, key, block).is_some()
    }

    /// Puts `block` under `key`; the replaced entry's expiry (`Some(None)`: it had none), or
    /// `None` if there was no entry.
    fn replace_block(&mut self, hash: u64, key: &[u8], block: Box<[u8]>) -> Option<Option<u64>> {
        let state = &self.state;
        match self.slots.entry(
            probe_hash(hash),
            |b| block_key(b) == key,
            |b| probe_hash(state.hash_one(block_key(b))),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                let old = std::mem::replace(o.get_mut(), block);
                Self::release(&mut self.colls, &mut self.free, &old);
                Some(header(&old).expiry)
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(block);
                None
            }
        }
    }

    /// The entry of `key`, first inserting `make()` at `version` if there is none. An entry
    /// already there is returned whatever its kind and expiry: the caller answers WRONGTYPE, and
    /// removes an expired entry first, as judged at its own time.
    pub fn get_or_insert_with(
        &mut self,
        hash: u64,
        key: &[u8],
        make: impl FnOnce() -> Value,
        version: u64,
    ) -> EntryMut<'_> {
        if self.get(hash, key).is_none() {
            let block = self.encode(key, make(), None, version);
            self.put_block(hash, key, block);
        }
        self.get_mut(hash, key).expect("inserted above")
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, hash: u64, key: &[u8]) -> bool {
        self.delete(hash, key).is_some()
    }

    /// Removes `key`; its expiry (`Some(None)`: it had none), or `None` if it was not there.
    pub fn delete(&mut self, hash: u64, key: &[u8]) -> Option<Option<u64>> {
        let o = self
            .slots
            .find_entry(probe_hash(hash), |b| block_key(b) == key)
            .ok()?;
        let (old, _) = o.remove();
        Self::release(&mut self.colls, &mut self.free, &old);
        self.shrink_if_sparse();
        Some(header(&old).expiry)
    }

    fn shrink_if_sparse(&mut self) {
        let state = &self.state;
        packed::shrink_if_sparse(&mut self.slots, |b| {
            probe_hash(state.hash_one(block_key(b)))
        });
    }

    /// Removes `key` and returns its entry (for RENAME, or to log what was deleted).
    pub fn take(&mut self, hash: u64, key: &[u8]) -> Option<Removed> {
        let o = self
            .slots
            .find_entry(probe_hash(hash), |b| block_key(b) == key)
            .ok()?;
        let (old, _) = o.remove();
        self.shrink_if_sparse();
        let h = header(&old);
        let value = match Self::release(&mut self.colls, &mut self.free, &old) {
            None => Value::String(old[h.value_at..].to_vec()),
            Some(Coll::Hash(x)) => Value::Hash(x),
            Some(Coll::Set(x)) => Value::Set(x),
            Some(Coll::List(x)) => Value::List(x),
            Some(Coll::ZSet(x)) => Value::ZSet(x),
            Some(Coll::Stream(x)) => Value::Stream(*x),
        };
        Some(Removed {
            value,
            version: u64_at(&old, h.version_at),
            expires_at_ms: h.expiry,
        })
    }

    /// Sets (`Some`) or clears (`None`) the expiry of `key` and its version; false if absent.
    /// Re-encodes the block, whose size changes.
    pub fn set_expiry(
        &mut self,
        hash: u64,
        key: &[u8],
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> bool {
        let Some(b) = self
            .slots
            .find_mut(probe_hash(hash), |b| block_key(b) == key)
        else {
            return false;
        };
        let h = header(b);
        *b = encode_block(
            Kind::from_flags(h.flags),
            &b[h.key_at..h.value_at],
            version,
            expires_at_ms,
            &b[h.value_at..],
        );
        true
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.slots.iter().map(|b| EntryRef {
            block: b,
            colls: &self.colls,
        })
    }

    /// Removes every entry, keeping nothing allocated.
    pub fn clear(&mut self) {
        self.slots = HashTable::new();
        self.colls = Vec::new();
        self.free = Vec::new();
    }

    /// The entries whose hash is at least `from`, smallest hashes first: the `want` smallest,
    /// plus any others sharing the largest of those hashes. Returns the entries and whether the
    /// shard had more past them. O(shard length).
    pub fn scan_from(&self, from: u64, want: usize) -> (Vec<(u64, EntryRef<'_>)>, bool) {
        let mut c: Vec<(u64, EntryRef<'_>)> = self
            .iter()
            .map(|e| (self.hash_key(e.key()), e))
            .filter(|(h, _)| *h >= from)
            .collect();
        let want = want.max(1);
        if c.len() <= want {
            c.sort_unstable_by_key(|(h, _)| *h);
            return (c, false);
        }
        c.select_nth_unstable_by_key(want - 1, |(h, _)| *h);
        let cut = c[want - 1].0;
        let more = c.iter().any(|(h, _)| *h > cut);
        c.retain(|(h, _)| *h <= cut);
        c.sort_unstable_by_key(|(h, _)| *h);
        (c, more)
    }

    /// Heap bytes held, as requested from the allocator (its rounding is not counted).
    pub fn memory_bytes(&self) -> usize {
        self.slots.allocation_size()
            + self.slots.iter().map(|b| b.len()).sum::<usize>()
            + self.colls.capacity() * std::mem::size_of::<Option<Coll>>()
            + self.free.capacity() * 4
            + self
                .colls
                .iter()
                .flatten()
                .map(Coll::memory_bytes)
                .sum::<usize>()
    }
}

/// A stored entry, read-only.
#[derive(Clone, Copy)]
pub struct EntryRef<'a> {
    block: &'a [u8],
    colls: &'a [Option<Coll>],
}

impl std::fmt::Debug for EntryRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRef")
            .field("key", &self.key())
            .field("version", &self.version())
            .field("expires_at_ms", &self.expires_at_ms())
            .field("value", &self.value())
            .finish()
    }
}

fn value_of<'a>(block: &'a [u8], colls: &'a [Option<Coll>]) -> ValueRef<'a> {
    let h = header(block);
    let v = &block[h.value_at..];
    match Kind::from_flags(h.flags) {
        Kind::String => ValueRef::String(v),
        _ => {
            let i = u32::from_le_bytes(v.try_into().expect("4-byte index"));
            match colls[i as usize]
                .as_ref()
                .expect("a live entry's slab slot is full")
            {
                Coll::Hash(x) => ValueRef::Hash(x),
                Coll::Set(x) => ValueRef::Set(x),
                Coll::List(x) => ValueRef::List(x),
                Coll::ZSet(x) => ValueRef::ZSet(x),
                Coll::Stream(x) => ValueRef::Stream(x),
            }
        }
    }
}

impl<'a> EntryRef<'a> {
    pub fn key(&self) -> &'a [u8] {
        block_key(self.block)
    }

    pub fn kind(&self) -> Kind {
        Kind::from_flags(self.block[0])
    }

    /// LSN of the entry's last change.
    pub fn version(&self) -> u64 {
        u64_at(self.block, header(self.block).version_at)
    }

    /// Absolute expiry, Unix milliseconds.
    pub fn expires_at_ms(&self) -> Option<u64> {
        header(self.block).expiry
    }

    /// Whether the entry has not expired at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_none_or(|t| t > now_ms)
    }

    pub fn value(&self) -> ValueRef<'a> {
        value_of(self.block, self.colls)
    }
}

/// A stored entry, to change in place: its version, or its collection.
pub struct EntryMut<'a> {
    block: &'a mut Box<[u8]>,
    colls: &'a mut Vec<Option<Coll>>,
}

impl<'a> EntryMut<'a> {
    pub fn key(&self) -> &[u8] {
        block_key(self.block)
    }

    pub fn kind(&self) -> Kind {
        Kind::from_flags(self.block[0])
    }

    pub fn version(&self) -> u64 {
        u64_at(self.block, header(self.block).version_at)
    }

    /// Records that the entry changed at `lsn`: every write to a collection sets it.
    pub fn set_version(&mut self, lsn: u64) {
        let at = header(self.block).version_at;
        self.block[at..at + 8].copy_from_slice(&lsn.to_le_bytes());
    }

    pub fn expires_at_ms(&self) -> Option<u64> {
        header(self.block).expiry
    }

    pub fn value(&self) -> ValueRef<'_> {
        value_of(self.block, self.colls)
    }

    pub fn value_mut(self) -> ValueMut<'a> {
        let EntryMut { block, colls } = self;
        let block: &'a [u8] = block;
        let h = header(block);
        let v = &block[h.value_at..];
        match Kind::from_flags(h.flags) {
            Kind::String => ValueMut::String(v),
            _ => {
                let i = u32::from_le_bytes(v.try_into().expect("4-byte index"));
                match colls[i as usize]
                    .as_mut()
                    .expect("a live entry's slab slot is full")
                {
                    Coll::Hash(x) => ValueMut::Hash(x),
                    Coll::Set(x) => ValueMut::Set(x),
                    Coll::List(x) => ValueMut::List(x),
                    Coll::ZSet(x) => ValueMut::ZSet(x),
                    Coll::Stream(x) => ValueMut::Stream(x),
                }
            }
        }
    }
}

/// Shard count when the expected size is unknown.
pub const SHARD_BITS_DEFAULT: u32 = 10;
/// Fewest and most shards a table starts with (as powers of two).
pub const SHARD_BITS_MIN: u32 = 1;
pub const SHARD_BITS_MAX: u32 = 16;
/// Keys per shard [`Table::with_expected_keys`] aims at: small enough that a SCAN call, which
/// hashes a whole shard, stays cheap, large enough that the shards' fixed costs vanish.
pub const KEYS_PER_SHARD_TARGET: usize = 256;
/// A shard that passes this many keys splits in two.
pub const SHARD_SPLIT_KEYS: usize = 2 * KEYS_PER_SHARD_TARGET;
/// The most hash bits the directory uses: 2^24 directory slots (64 MiB), past which shards
/// stop splitting and grow instead (at `SHARD_SPLIT_KEYS` a shard, billions of keys).
const DEPTH_MAX: u32 = 24;

/// The keyspace: shards, each holding the keys of one aligned range of hashes, found through a
/// directory indexed by a hash's top `depth` bits (extendible hashing). A shard that grows past
/// its bound splits in two, so shards stay small however large the table grows, and the cost is
/// paid a shard at a time (a few hundred keys rehashed), never the whole table at once. A
/// split only divides a range: every range boundary stays a boundary, which is what lets SCAN
/// cursors and [`Table::visit_from`] positions stay valid while the table splits.
#[derive(Clone, Debug)]
pub struct Table {
    shards: Vec<Shard>,
    /// For each value of a hash's top `depth` bits, the index of its shard in `shards`.
    dir: Vec<u32>,
    depth: u32,
    state: RandomState,
    len: usize,
    /// A shard splits when it holds more keys than this.
    split_at: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table::with_shard_bits(SHARD_BITS_DEFAULT)
    }
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    /// `2^bits` shards to start with, `bits` clamped to `SHARD_BITS_MIN..=SHARD_BITS_MAX`.
    pub fn with_shard_bits(bits: u32) -> Table {
        Table::with_split_at(bits, SHARD_SPLIT_KEYS)
    }

    /// As [`Table::with_shard_bits`], with shards splitting past `split_at` keys (tests split
    /// small shards often).
    pub(crate) fn with_split_at(bits: u32, split_at: usize) -> Table {
        let bits = bits.clamp(SHARD_BITS_MIN, SHARD_BITS_MAX);
        let state = RandomState::default();
        Table {
            shards: (0..1usize << bits)
                .map(|_| Shard::with_state(state.clone(), bits))
                .collect(),
            dir: (0..1u32 << bits).collect(),
            depth: bits,
            state,
            len: 0,
            split_at: split_at.max(1),
        }
    }

    /// Shards for about [`KEYS_PER_SHARD_TARGET`] keys each at `keys` keys.
    pub fn with_expected_keys(keys: usize) -> Table {
        let shards = (keys / KEYS_PER_SHARD_TARGET).max(1).next_power_of_two();
        Table::with_shard_bits(shards.trailing_zeros())
    }

    /// The key's hash: the same for the table's whole life, and the SCAN order.
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.state.hash_one(key)
    }

    /// The index in `shards` of a hash's shard.
    fn shard_index(&self, hash: u64) -> usize {
        self.dir[(hash >> (64 - self.depth)) as usize] as usize
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Entries stored, expired ones included: the table stores expiry, it does not judge it.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        let h = self.hash(key);
        self.shards[self.shard_index(h)].get(h, key)
    }

    /// Looks up every key of `keys` and returns how many are present: called before a batch of
    /// writes to those keys (publishing a group commit's records), so that the writes find what
    /// they touch cached. Within one key each load waits for the one before (shard, control
    /// bytes, slot, block), but the loads of different keys do not wait on each other, so this
    /// makes them in passes, each over every key, and the processor overlaps the cache misses
    /// of a pass, which the writes, one key after another, would each take alone. The passes
    /// only load: the last one is the plain lookup, from the cache. With 1M keys, the lookups
    /// of a SET's publishing cost about 0.1 µs of CPU instead of 0.7 (BENCHMARKS.md).
    /// `count` is about how many keys there are: the room the passes' vectors start with.
    pub fn warm<'k>(&self, keys: impl Iterator<Item = &'k [u8]>, count: usize) -> usize {
        use std::hint::black_box;
        let mut found: Vec<(&Shard, u64, &[u8])> = Vec::with_capacity(count);
        found.extend(keys.map(|k| {
            let h = self.hash(k);
            (&self.shards[self.shard_index(h)], h, k)
        }));
        let keys = found;
        black_box(keys.iter().map(|(s, _, _)| s.len()).sum::<usize>());
        // The first bucket whose control byte matches: the key's, most likely.
        let buckets: Vec<Option<usize>> = (keys.iter())
            .map(|(s, h, _)| s.slots.iter_hash_buckets(probe_hash(*h)).next())
            .collect();
        let mut blocks: Vec<&[u8]> = Vec::with_capacity(keys.len());
        blocks.extend(
            (keys.iter().zip(&buckets))
                .filter_map(|((s, _, _), b)| s.slots.get_bucket((*b)?))
                .map(|b| &b[..]),
        );
        black_box(blocks.iter().map(|b| usize::from(b[0])).sum::<usize>());
        keys.iter()
            .filter(|(s, h, k)| s.get(*h, k).is_some())
            .count()
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<EntryMut<'_>> {
        let h = self.hash(key);
        let s = self.shard_index(h);
        self.shards[s].get_mut(h, key)
    }

    fn route(&mut self, key: &[u8]) -> (u64, usize) {
        let h = self.hash(key);
        (h, self.shard_index(h))
    }

    /// After an insert into shard `s`: splits it if it passed its bound, and then either half
    /// that is still past it (all of a shard's keys can share the next bit).
    fn split_if_full(&mut self, s: usize) {
        let Some(new) = self.split(s) else {
            return;
        };
        let mut todo = vec![s, new];
        while let Some(s) = todo.pop() {
            if let Some(new) = self.split(s) {
                todo.extend([s, new]);
            }
        }
    }

    /// Splits shard `s` if it is past its bound and can still split; the new shard's index.
    fn split(&mut self, s: usize) -> Option<usize> {
        let local = self.shards[s].depth;
        if self.shards[s].len() <= self.split_at || local >= DEPTH_MAX {
            return None;
        }
        // Any key of the shard gives its prefix.
        let hash = self.hash(self.shards[s].iter().next().expect("a full shard").key());
        if local == self.depth {
            // The directory doubles: each slot becomes two with the same shard.
            self.dir = self.dir.iter().flat_map(|&i| [i, i]).collect();
            self.depth += 1;
        }
        let upper = self.shards[s].split();
        let new = u32::try_from(self.shards.len()).expect("fewer than 2^32 shards");
        // The directory slots of `s` are the run of 2^(depth - local) that start with its
        // prefix; the upper half now belongs to the new shard.
        let run = 1usize << (self.depth - local);
        let first = ((hash >> (64 - local)) as usize) << (self.depth - local);
        for slot in &mut self.dir[first + run / 2..first + run] {
            *slot = new;
        }
        self.shards.push(upper);
        Some(new as usize)
    }

    /// Sets `key` to `value` (replacing any entry, expiry included); true if one was replaced.
    pub fn insert(
        &mut self,
        key: &[u8],
        value: Value,
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> bool {
        let (h, s) = self.route(key);
        let replaced = self.shards[s].insert(h, key, value, expires_at_ms, version);
        self.added(s, !replaced);
        replaced
    }

    /// Counts an entry added to shard `s`, if one was, and splits the shard if it is full.
    fn added(&mut self, s: usize, added: bool) {
        if added {
            self.len += 1;
            self.split_if_full(s);
        }
    }

    pub fn insert_string(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> bool {
        self.replace_string(key, value, expires_at_ms, version)
            .is_some()
    }

    /// Sets `key` to the string `value`, as [`Table::insert_string`]; the replaced entry's
    /// expiry (`Some(None)`: it had none), or `None` if there was no entry.
    pub fn replace_string(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> Option<Option<u64>> {
        let (h, s) = self.route(key);
        let block = encode_block(Kind::String, key, version, expires_at_ms, value);
        let old = self.shards[s].replace_block(h, key, block);
        self.added(s, old.is_none());
        old
    }

    pub fn get_or_insert_with(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> Value,
        version: u64,
    ) -> EntryMut<'_> {
        let (h, mut s) = self.route(key);
        if self.shards[s].get(h, key).is_none() {
            let block = self.shards[s].encode(key, make(), None, version);
            self.shards[s].put_block(h, key, block);
            self.added(s, true);
            s = self.shard_index(h);
        }
        self.shards[s].get_mut(h, key).expect("present")
    }

    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.delete(key).is_some()
    }

    /// Removes `key`; its expiry (`Some(None)`: it had none), or `None` if it was not there.
    pub fn delete(&mut self, key: &[u8]) -> Option<Option<u64>> {
        let (h, s) = self.route(key);
        let old = self.shards[s].delete(h, key);
        self.len -= usize::from(old.is_some());
        old
    }

    pub fn take(&mut self, key: &[u8]) -> Option<Removed> {
        let (h, s) = self.route(key);
        let r = self.shards[s].take(h, key);
        self.len -= usize::from(r.is_some());
        r
    }

    pub fn set_expiry(&mut self, key: &[u8], expires_at_ms: Option<u64>, version: u64) -> bool {
        let (h, s) = self.route(key);
        self.shards[s].set_expiry(h, key, expires_at_ms, version)
    }

    /// Removes every key. The shards stay as they are, so that positions handed out before
    /// (SCAN cursors, [`Table::visit_from`]) keep their meaning.
    pub fn clear(&mut self) {
        for s in self.shards.iter_mut() {
            s.clear();
        }
        self.len = 0;
    }

    /// RANDOMKEY's pick: a uniformly random entry (expired ones included), `rand` giving the
    /// randomness. Rejection sampling: a random shard, a random bucket of it, kept if full and
    /// with probability (the shard's buckets / the most any shard has), so that every entry has
    /// the same chance. O(shards) to find the largest shard, then 2/load tries expected; after
    /// 256 misses, the n-th entry by iteration, O(n).
    pub fn random(&self, rand: &mut dyn FnMut() -> u64) -> Option<EntryRef<'_>> {
        if self.is_empty() {
            return None;
        }
        let most = self
            .shards
            .iter()
            .map(|s| s.slots.num_buckets())
            .max()
            .unwrap_or(0) as u64;
        for _ in 0..256 {
            let s = &self.shards[(rand() % self.shards.len() as u64) as usize];
            let pick = rand() % most;
            // `pick` is uniform below `most`; the bucket exists with probability
            // buckets/most, and then is uniform among the shard's buckets.
            if let Some(b) = s.slots.get_bucket(pick as usize) {
                return Some(EntryRef {
                    block: b,
                    colls: &s.colls,
                });
            }
        }
        self.iter().nth((rand() % self.len as u64) as usize)
    }

    /// Every entry, shard by shard, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.shards.iter().flat_map(Shard::iter)
    }

    /// The shard holding the hash `at`, and the start of the next shard's range (`None`: it is
    /// the last).
    fn shard_at(&self, at: u64) -> (&Shard, Option<u64>) {
        let shard = &self.shards[self.shard_index(at)];
        (shard, shard.range(at).1)
    }

    /// Visits every entry of whole shards, in hash order of the shards, from the position
    /// `from` (0 to start, then what the previous call returned), until at least `limit` were
    /// visited or the shards end; returns the position to go on from, 0 when all are done. A
    /// position is always the start of a shard's range (ranges only ever divide), so a pass
    /// visits each key present for the whole pass exactly once, and no key twice, whatever is
    /// inserted, removed or split between calls. Nothing is hashed or sorted.
    pub fn visit_from(&self, from: u64, limit: usize, visit: &mut dyn FnMut(EntryRef<'_>)) -> u64 {
        let (mut at, mut seen) = (from, 0);
        loop {
            let (shard, next) = self.shard_at(at);
            shard.iter().for_each(&mut *visit);
            seen += shard.len();
            match next {
                None => return 0,
                Some(n) if seen >= limit => return n,
                Some(n) => at = n,
            }
        }
    }

    /// One SCAN step: entries from `cursor` on in hash order, at least `count` of them unless
    /// the table runs out (more when several share a hash), and the next cursor, 0 when the
    /// scan is complete. Start with cursor 0.
    ///
    /// A key present from the first call to the last is returned exactly once (unless its hash
    /// collides in all 64 bits with another's; then both come in one call), whatever is
    /// inserted or removed, and however the shards grow, shrink or split, between calls: the
    /// cursor says "every hash below this one is done", and hashes never change.
    ///
    /// Cost: O(keys of each shard read) — a call hashes every key of the shards it reads (at
    /// most [`SHARD_SPLIT_KEYS`] each, short of the deepest split), where Redis reads O(COUNT)
    /// buckets.
    pub fn scan(&self, cursor: u64, count: usize) -> (Vec<EntryRef<'_>>, u64) {
        let count = count.max(1);
        let mut out = Vec::new();
        let mut from = cursor;
        loop {
            let (shard, next) = self.shard_at(from);
            let (found, more) = shard.scan_from(from, count - out.len());
            let last = found.last().map(|(h, _)| *h);
            out.extend(found.into_iter().map(|(_, e)| e));
            if more {
                // `more` means a larger hash exists in this shard, so `last` < u64::MAX.
                return (out, last.expect("more implies something was returned") + 1);
            }
            let Some(n) = next else {
                return (out, 0);
            };
            from = n;
            if out.len() >= count {
                return (out, from);
            }
        }
    }

    /// Heap bytes held, as requested from the allocator (its rounding is not counted).
    pub fn memory_bytes(&self) -> usize {
        self.shards.capacity() * std::mem::size_of::<Shard>()
            + self.dir.capacity() * 4
            + self.shards.iter().map(Shard::memory_bytes).sum::<usize>()
    }
}

/// String entries a [`Loader`] holds before it inserts them, grouped by shard: 2^20 of them,
/// 24 MiB (hash and block pointer each; the blocks themselves are the table's own). The
/// crate's unit tests use small batches, so that every load there crosses batch boundaries.
const LOAD_BATCH: usize = if cfg!(test) { 64 } else { 1 << 20 };

/// Fills a new table with many keys, each once (a snapshot's entries), at a fraction of the
/// cost of inserting them one by one.
///
/// Entries arrive in an order unrelated to this table's hashes (its seed is new), so one insert
/// after another lands in a shard whose table is not in the cache, and each shard's table
/// doubles, rehashing its keys, several times on the way to its size: a few cache misses an
/// entry, about 900 ns each at 10M keys. The loader instead holds string entries (block and
/// hash) in a batch of [`LOAD_BATCH`], sorts the batch by hash, which groups it by shard, and
/// inserts it shard by shard, each shard's table sized once for its share of the expected keys.
/// Collections, whose blocks point into their shard's slab, go in at once.
pub struct Loader {
    table: Table,
    pending: Vec<(u64, Box<[u8]>)>,
    /// Keys a shard's table is sized for when it gets its first key (at most
    /// [`KEYS_PER_SHARD_TARGET`], so that a false `expected` costs at most that much for each
    /// shard that gets a key).
    per_shard: usize,
}

/// A key a [`Loader`] was given twice.
#[derive(Debug, PartialEq, Eq)]
pub struct DuplicateKey(pub Vec<u8>);

impl Loader {
    /// A loader into `table`, which must be empty, for about `expected` keys.
    pub fn new(table: Table, expected: usize) -> Loader {
        assert!(table.is_empty(), "a loader fills an empty table");
        let per_shard = (expected / table.shard_count()).min(KEYS_PER_SHARD_TARGET);
        Loader {
            pending: Vec::with_capacity(expected.min(LOAD_BATCH)),
            table,
            per_shard,
        }
    }

    /// Adds the string entry `key` = `value`.
    pub fn insert_string(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> Result<(), DuplicateKey> {
        let hash = self.table.hash(key);
        let block = encode_block(Kind::String, key, version, expires_at_ms, value);
        self.pending.push((hash, block));
        if self.pending.len() >= LOAD_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds the entry `key` = `value`, of any type: a collection goes in at once.
    pub fn insert(
        &mut self,
        key: &[u8],
        value: Value,
        expires_at_ms: Option<u64>,
        version: u64,
    ) -> Result<(), DuplicateKey> {
        match value {
            Value::String(s) => self.insert_string(key, &s, expires_at_ms, version),
            value => match self.table.insert(key, value, expires_at_ms, version) {
                true => Err(DuplicateKey(key.to_vec())),
                false => Ok(()),
            },
        }
    }

    /// Inserts the pending entries, shard by shard.
    fn flush(&mut self) -> Result<(), DuplicateKey> {
        // By hash is by shard (a shard is a range of hashes), and within a shard the order
        // does not matter.
        self.pending.sort_unstable_by_key(|(h, _)| *h);
        let t = &mut self.table;
        for (hash, block) in self.pending.drain(..) {
            let s = t.shard_index(hash);
            let shard = &mut t.shards[s];
            if shard.slots.capacity() == 0 {
                let state = &shard.state;
                shard
                    .slots
                    .reserve(self.per_shard, |b| probe_hash(state.hash_one(block_key(b))));
            }
            shard
                .insert_new(hash, block)
                .map_err(|b| DuplicateKey(block_key(&b).to_vec()))?;
            t.added(s, true);
        }
        Ok(())
    }

    /// The table, every entry in it.
    pub fn finish(mut self) -> Result<Table, DuplicateKey> {
        self.flush()?;
        Ok(self.table)
    }
}
