//! The keyspace: every user key's entry, in the typed hash table ([`crate::table`]), and the
//! views and change sets that read and update it.
//!
//! The map's concrete type ([`Map`]) is this module's business. Other modules still name it
//! where a whole image of the keyspace is loaded or written (recovery, checkpoints, backups,
//! restore and the snapshot file), and nowhere else.
//!
//! Beside the user keyspace lies the **system namespace** ([`System`]): a few entries an
//! embedder keeps atomically with the state (the cluster's applied position and membership).
//! User reads, scans, counts and `DeleteAll` never see it.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_wal::Lsn;

use crate::record::Mutation;
use crate::table::{EntryRef, Table, ValueRef, KEYS_PER_SHARD_TARGET};
use crate::types::Entry;
use crate::util::HashMap;

/// Every user key's entry, in the typed table (strings only so far), and how many of them
/// carry an expiry. Not a persistent structure: cloning it copies every entry, which only a
/// legacy backup view and tests do.
#[derive(Clone)]
pub(crate) struct Map {
    table: Table,
    /// Entries that carry an expiry, kept as writes apply, so that counting them is O(1).
    expiring: usize,
}

/// The engine's entry of a stored one. The engine writes strings only (the data types that
/// need collections are not built yet), and a snapshot holding a collection is refused as
/// unloadable before anything reaches the map.
pub(crate) fn entry_of(e: EntryRef<'_>) -> Entry {
    match e.value() {
        ValueRef::String(v) => Entry {
            value: Bytes::copy_from_slice(v),
            version: e.version(),
            expires_at_ms: e.expires_at_ms(),
        },
        other => unreachable!("a {} in a keyspace of strings", other.kind().name()),
    }
}

impl Default for Map {
    fn default() -> Map {
        Map::with_expected_keys(0)
    }
}

impl Map {
    /// A map sized for about `keys` keys, in 64 shards at least (a checkpoint reads whole
    /// shards a part at a time, so even a small keyspace is read in several parts); it splits
    /// its shards as it grows past them.
    pub(crate) fn with_expected_keys(keys: usize) -> Map {
        Map {
            table: Table::with_expected_keys(keys.max(KEYS_PER_SHARD_TARGET << 6)),
            expiring: 0,
        }
    }

    /// Entries held, expired ones included.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The entry of `key`, expired or not.
    pub(crate) fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        self.table.get(key)
    }

    /// The entry of `key`, expired or not, copied out.
    pub(crate) fn entry(&self, key: &[u8]) -> Option<Entry> {
        self.get(key).map(entry_of)
    }

    /// Sets `key`'s entry; true if it replaced one.
    pub(crate) fn insert(&mut self, key: &[u8], e: &Entry) -> bool {
        let old = self
            .table
            .replace_string(key, &e.value, e.expires_at_ms, e.version);
        self.count_expiry(old, e.expires_at_ms.is_some());
        old.is_some()
    }

    /// Removes `key`'s entry; true if there was one.
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        let old = self.table.delete(key);
        self.count_expiry(old, false);
        old.is_some()
    }

    /// Keeps `expiring` as an entry whose old expiry was `old` (`None`: no entry) is replaced
    /// by one that `expires` or not.
    fn count_expiry(&mut self, old: Option<Option<u64>>, expires: bool) {
        let had = matches!(old, Some(Some(_)));
        self.expiring = self.expiring + usize::from(expires) - usize::from(had);
    }

    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.expiring = 0;
    }

    /// Every entry, expired or not, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.table.iter()
    }

    /// See [`Table::scan`].
    fn scan(&self, cursor: u64, count: usize) -> (Vec<EntryRef<'_>>, u64) {
        self.table.scan(cursor, count)
    }
}

/// Two maps are equal when they hold the same entries (tests compare loaded images).
impl PartialEq for Map {
    fn eq(&self, other: &Map) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|e| other.entry(e.key()).is_some_and(|o| o == entry_of(e)))
    }
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for e in self.iter().take(64) {
            m.entry(&Bytes::copy_from_slice(e.key()), &entry_of(e));
        }
        m.finish()
    }
}

/// The system namespace: key to value, in key order. A handful of entries.
pub(crate) type System = BTreeMap<Bytes, Bytes>;

/// A whole image of the state: the user keyspace and the system namespace.
#[derive(Clone, Debug, Default)]
pub(crate) struct Image {
    pub(crate) map: Map,
    pub(crate) system: System,
}

/// A read of the durable state: what [`Engine::read`](crate::Engine::read) lends its closure.
/// It borrows the visible keyspace under its read lock, so it sees one state, whole
/// transactions only (P10), and lives no longer than the closure.
///
/// Keys are held in a hash table: [`ReadView::scan`] visits them in the order of their hash,
/// [`ReadView::iter`] and [`ReadView::keys`] in no particular order; never in their bytes' order.
#[derive(Clone, Copy)]
pub struct ReadView<'a> {
    keyspace: &'a Keyspace,
    lsn: Lsn,
    now_ms: u64,
}

impl<'a> ReadView<'a> {
    pub(crate) fn new(keyspace: &'a Keyspace, lsn: Lsn, now_ms: u64) -> ReadView<'a> {
        ReadView {
            keyspace,
            lsn,
            now_ms,
        }
    }

    /// The LSN up to which this view includes every write.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The Unix time at which expiry is judged in this view.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn live(&self, key: &[u8]) -> Option<EntryRef<'a>> {
        let now = self.now_ms;
        self.keyspace.map.get(key).filter(|e| e.live(now))
    }

    /// The live entry of `key`, copied out.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.live(key).map(entry_of)
    }

    /// The version of `key`'s live entry, without copying its value (a WATCH check).
    pub fn version(&self, key: &[u8]) -> Option<Lsn> {
        self.live(key).map(|e| e.version())
    }

    /// The value of `key` in the system namespace (see [`Write::System`](crate::Write::System)).
    pub fn system(&self, key: &[u8]) -> Option<&'a Bytes> {
        self.keyspace.system.get(key)
    }

    /// One step of a scan: live entries from `cursor` on (start with 0), about `count` of them
    /// (at least `count` are read, fewer come back when some have expired), and the cursor to
    /// pass next, 0 when the scan is complete.
    /// The cursor is a position in hash order, so it holds no state: a key present for the
    /// whole scan is returned exactly once, whatever is written between the steps (Redis's
    /// guarantee is at least once). A step costs O(keys of the shards it reads).
    pub fn scan(&self, cursor: u64, count: usize) -> (Vec<(Bytes, Entry)>, u64) {
        let (found, next) = self.scan_live(cursor, count);
        let page = found.map(|e| (Bytes::copy_from_slice(e.key()), entry_of(e)));
        (page.collect(), next)
    }

    /// [`ReadView::scan`] without the values: the keys only (Redis's SCAN).
    pub fn scan_keys(&self, cursor: u64, count: usize) -> (Vec<Bytes>, u64) {
        let (found, next) = self.scan_live(cursor, count);
        (
            found.map(|e| Bytes::copy_from_slice(e.key())).collect(),
            next,
        )
    }

    /// One scan step's live entries and the next cursor. A cursor is the table's position (a key
    /// hash) sealed by [`CursorSeal`], so that it tells the client no key's hash.
    fn scan_live(
        &self,
        cursor: u64,
        count: usize,
    ) -> (impl Iterator<Item = EntryRef<'a>> + 'a, u64) {
        let seal = &self.keyspace.seal;
        let (found, next) = self.keyspace.map.scan(seal.open(cursor), count);
        let now = self.now_ms;
        (
            found.into_iter().filter(move |e| e.live(now)),
            seal.seal(next),
        )
    }

    /// Every live key, in no particular order, without copying.
    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let now = self.now_ms;
        (self.keyspace.map.iter())
            .filter(move |e| e.live(now))
            .map(|e| e.key())
    }

    /// Every live entry, in no particular order, each copied out.
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Entry)> + 'a {
        let now = self.now_ms;
        (self.keyspace.map.iter())
            .filter(move |e| e.live(now))
            .map(|e| (Bytes::copy_from_slice(e.key()), entry_of(e)))
    }

    /// Number of live keys. O(n) when some keys carry an expiry.
    pub fn count(&self) -> usize {
        if self.keyspace.map.expiring == 0 {
            return self.keyspace.map.len();
        }
        self.keys().count()
    }

    /// Every entry held, in O(1), including expired ones that active expiry has not removed
    /// yet: what Redis's INFO keyspace counts as `keys`.
    pub fn held(&self) -> usize {
        self.keyspace.map.len()
    }

    /// The entries held that carry an expiry, in O(1): Redis's INFO keyspace `expires`.
    pub fn expiring(&self) -> usize {
        self.keyspace.map.expiring
    }
}

/// SCAN cursors as clients see them: the table's scan position (a key's 64-bit hash) under a
/// secret permutation of the 64-bit numbers. The raw position is a key's hash, and hashes
/// collected through SCAN would help a client work out the table's hash seed (foldhash is fast,
/// not built to keep its seed from someone who sees its outputs) and then aim keys at one shard
/// or one probe chain. Four Feistel rounds over the 32-bit halves, with SipHash under random
/// keys (std's `RandomState`) as the round function: a pseudo-random permutation
/// (Luby–Rackoff). 0 stays 0 both ways, the start and the end of a scan; the number that 0
/// would have become takes 0's place.
struct CursorSeal(std::hash::RandomState);

impl CursorSeal {
    const ROUNDS: u32 = 4;

    fn round(&self, i: u32, half: u32) -> u32 {
        use std::hash::BuildHasher;
        self.0.hash_one((i, half)) as u32
    }

    fn forward(&self, x: u64) -> u64 {
        let (mut l, mut r) = ((x >> 32) as u32, x as u32);
        for i in 0..Self::ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    fn backward(&self, y: u64) -> u64 {
        let (mut l, mut r) = ((y >> 32) as u32, y as u32);
        for i in (0..Self::ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    /// The cursor a client sees for the scan position `p`.
    fn seal(&self, p: u64) -> u64 {
        match (p, self.forward(p)) {
            (0, _) => 0,
            (_, 0) => self.forward(0),
            (_, c) => c,
        }
    }

    /// The scan position of the cursor `c`: [`CursorSeal::seal`] undone.
    fn open(&self, c: u64) -> u64 {
        match (c, self.backward(c)) {
            (0, _) => 0,
            (_, 0) => self.backward(0),
            (_, p) => p,
        }
    }
}

/// The keyspace readers see: the user keys' table and the system namespace.
pub(crate) struct Keyspace {
    map: Map,
    system: System,
    seal: CursorSeal,
}

impl Keyspace {
    pub(crate) fn new(image: Image) -> Keyspace {
        let Image { map, system } = image;
        Keyspace {
            map,
            system,
            seal: CursorSeal(std::hash::RandomState::new()),
        }
    }

    /// The entry of `key`, expired or not, copied out.
    pub(crate) fn entry(&self, key: &[u8]) -> Option<Entry> {
        self.map.entry(key)
    }

    /// The version and expiry of `key`'s entry, expired or not, without copying it.
    pub(crate) fn stamp(&self, key: &[u8]) -> Option<(Lsn, Option<u64>)> {
        self.map.get(key).map(|e| (e.version(), e.expires_at_ms()))
    }

    /// The value of `key` in the system namespace.
    pub(crate) fn system(&self, key: &[u8]) -> Option<&Bytes> {
        self.system.get(key)
    }

    /// A copy of the whole state: O(n) time and memory. Only a legacy backup view takes one.
    pub(crate) fn image(&self) -> Image {
        Image {
            map: self.map.clone(),
            system: self.system.clone(),
        }
    }

    /// See [`Table::visit_from`]: a part of a checkpoint's pass over the keyspace.
    pub(crate) fn visit_part(
        &self,
        from: u64,
        limit: usize,
        visit: &mut dyn FnMut(EntryRef<'_>),
    ) -> u64 {
        self.map.table.visit_from(from, limit, visit)
    }

    /// A copy of the system namespace (a handful of entries).
    pub(crate) fn system_image(&self) -> System {
        self.system.clone()
    }

    /// Applies `mutations`, giving every entry they write the version `version`.
    pub(crate) fn apply(&mut self, mutations: &[Mutation], version: Lsn) {
        for m in mutations {
            match change(m, version) {
                Change::Key(key, Some(e)) => {
                    self.map.insert(key, &e);
                }
                Change::Key(key, None) => {
                    self.map.remove(key);
                }
                Change::All => self.map.clear(),
                Change::System(key, value) => {
                    self.system.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

/// Applies the mutations of the record at `lsn` to a snapshot's image whose entries may already
/// hold it, or later records: a checkpoint that reads the keyspace shard by shard while writes go
/// on. A key's version is the LSN of its last change, so the rule is, per key: the record applies
/// to a key only if the key's entry before the record is older than it, or absent; a DeleteAll
/// removes the entries older than the record and those the record itself wrote before it. In LSN
/// order, the tail then leaves every key as of the tail's last record, as long as each record's
/// effect on a key depends only on that key's prior state and on the record (docs/FORMAT.md,
/// "Snapshot tail"). System entries are skipped: a snapshot's system namespace is taken as of its
/// LSN. The image must have been read between records, never in the middle of one (publishing
/// applies a record whole under the write lock, so a reader holding the read lock sees whole
/// records): a part read half-way through `[set k1, DeleteAll, set k2]` would hold k1 at the
/// record's version, and the rule would then keep it.
pub(crate) fn apply_by_version(map: &mut Map, mutations: &[Mutation], lsn: Lsn) {
    // Whether the record applies to each key it touches, decided at the key's first mutation in
    // the record, before the record changes the key's version to `lsn`.
    let mut applies: HashMap<Bytes, bool> = HashMap::default();
    for m in mutations {
        match change(m, lsn) {
            Change::Key(key, e) => {
                let older = || map.get(key).is_none_or(|old| old.version() < lsn);
                if !*applies.entry(key.clone()).or_insert_with(older) {
                    continue;
                }
                match e {
                    Some(e) => map.insert(key, &e),
                    None => map.remove(key),
                };
            }
            Change::All => {
                let gone: Vec<Bytes> = map
                    .iter()
                    .filter(|e| e.version() < lsn || applies.get(e.key()) == Some(&true))
                    .map(|e| Bytes::copy_from_slice(e.key()))
                    .collect();
                for k in gone {
                    map.remove(&k);
                }
            }
            Change::System(..) => {}
        }
    }
}

/// What one mutation does.
pub(crate) enum Change<'a> {
    /// The entry it leaves under a user key (`None`: deleted).
    Key(&'a Bytes, Option<Entry>),
    /// Every user key is gone.
    All,
    /// A system entry is set.
    System(&'a Bytes, &'a Bytes),
}

/// What a mutation does at `version`. Every structure that follows mutations goes through this.
pub(crate) fn change(m: &Mutation, version: Lsn) -> Change<'_> {
    match m {
        Mutation::Set {
            key,
            value,
            expires_at_ms,
        } => Change::Key(
            key,
            Some(Entry {
                value: value.clone(),
                version,
                expires_at_ms: *expires_at_ms,
            }),
        ),
        Mutation::Delete { key } => Change::Key(key, None),
        Mutation::DeleteAll => Change::All,
        Mutation::System { key, value } => Change::System(key, value),
    }
}

/// Mutations gathered per key: the newest entry of each key written, and whether a DeleteAll
/// came. A transaction's overlay uses it while deciding, and recovery and restore replay the log
/// into it, then merge it into the map: each key is then written once, however often the log
/// rewrote it.
#[derive(Default)]
pub(crate) struct Changes {
    /// The newest entry of each key: `None` = deleted.
    changed: HashMap<Bytes, Option<Entry>>,
    /// A DeleteAll came: entries not in `changed` are gone.
    cleared: bool,
    /// The newest value of each system entry written.
    system: HashMap<Bytes, Bytes>,
}

impl Changes {
    pub(crate) fn apply(&mut self, mutations: &[Mutation], version: Lsn) {
        for m in mutations {
            match change(m, version) {
                Change::Key(key, e) => {
                    self.changed.insert(key.clone(), e);
                }
                Change::All => {
                    self.changed.clear();
                    self.cleared = true;
                }
                Change::System(key, value) => {
                    self.system.insert(key.clone(), value.clone());
                }
            }
        }
    }

    /// What the changes leave under `key`: `Some(None)` if they deleted it (or everything),
    /// `None` if they leave it as it was.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&Entry>> {
        match self.changed.get(key) {
            Some(e) => Some(e.as_ref()),
            None if self.cleared => Some(None),
            None => None,
        }
    }

    /// Merges the changes into `image`.
    pub(crate) fn merge_into(self, image: &mut Image) {
        image.system.extend(self.system);
        let map = &mut image.map;
        if self.cleared {
            map.clear();
        }
        if map.len() == 0 {
            // Sized for the keys at once (a log replayed without a snapshot): growing to them
            // from empty would split every shard many times over, rehashing each key as often.
            *map = Map::with_expected_keys(self.changed.len());
        }
        // In the order of the table's hashes, so that consecutive writes go to the same shard
        // while its table is in the cache, instead of a cache miss or three at every key.
        let mut changed: Vec<(u64, Bytes, Option<Entry>)> = (self.changed.into_iter())
            .map(|(k, e)| (map.table.hash(&k), k, e))
            .collect();
        changed.sort_unstable_by_key(|c| c.0);
        for (_, k, e) in changed {
            match e {
                Some(e) => map.insert(&k, &e),
                None => map.remove(&k),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_cursors_are_a_permutation_that_keeps_zero_and_hides_positions() {
        let seal = CursorSeal(std::hash::RandomState::new());
        assert_eq!((seal.seal(0), seal.open(0)), (0, 0));
        // The number whose image would be 0 takes 0's old image.
        let z = seal.backward(0);
        assert_eq!(seal.seal(z), seal.forward(0));
        assert_eq!(seal.open(seal.forward(0)), z);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut moved = 0;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = seal.seal(x);
            assert_eq!(seal.open(c), x);
            assert_eq!(seal.seal(seal.open(x)), x);
            assert_ne!(c, 0, "only 0 seals to 0");
            moved += usize::from(c != x);
        }
        assert!(moved > 99_990, "a cursor is not the position itself");
        // Another key, another permutation.
        let other = CursorSeal(std::hash::RandomState::new());
        assert_ne!(other.seal(12345), seal.seal(12345));
    }

    #[test]
    fn a_scan_through_sealed_cursors_returns_every_key_once() {
        let mut image = Image::default();
        for i in 0..5000u32 {
            let e = Entry {
                value: Bytes::from(i.to_string()),
                version: 1,
                expires_at_ms: None,
            };
            image.map.insert(format!("k{i}").as_bytes(), &e);
        }
        let ks = Keyspace::new(image);
        let view = ReadView::new(&ks, 1, 0);
        let (mut seen, mut cursor, mut steps) = (std::collections::HashSet::new(), 0, 0);
        loop {
            let (keys, next) = view.scan_keys(cursor, 100);
            for k in keys {
                assert!(seen.insert(k), "a key came twice");
            }
            steps += 1;
            if next == 0 {
                break;
            }
            // The raw position is never what the client sees.
            assert_ne!(ks.seal.open(next), next);
            cursor = next;
        }
        assert_eq!(seen.len(), 5000);
        assert!(steps > 10, "{steps} steps of about 100 keys");
    }
}
