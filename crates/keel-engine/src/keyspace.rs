//! The keyspace: every key's entry, in an ordered map with a hash index beside it, and the views
//! and change sets that read and update it.
//!
//! The map's concrete type ([`Map`]) is this module's business. Other modules still name it
//! where a whole image of the keyspace is cloned, loaded or written (checkpoints, backups,
//! restore and the snapshot file), and nowhere else.
//!
//! Beside the user keyspace lies the **system namespace** ([`System`]): a few entries an
//! embedder keeps atomically with the state (the cluster's applied position and membership).
//! User reads, scans, counts and `DeleteAll` never see it.

use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use imbl::OrdMap;
use keel_wal::Lsn;

use crate::key::Key;
use crate::record::Mutation;
use crate::types::Entry;
use crate::util::HashMap;

/// Every key's entry, in key order. Cloning it is O(1): a checkpoint or a backup holds an
/// image of it while writes go on.
pub(crate) type Map = OrdMap<Key, Entry>;

/// The system namespace: key to value, in key order. Cloning it is O(1), as for [`Map`].
pub(crate) type System = OrdMap<Bytes, Bytes>;

/// A whole image of the state: the user keyspace and the system namespace. Cloning is O(1).
#[derive(Clone, Debug, Default)]
pub(crate) struct Image {
    pub(crate) map: Map,
    pub(crate) system: System,
}

/// A read of the durable state: what [`Engine::read`](crate::Engine::read) lends its closure.
/// It borrows the visible keyspace under its read lock, so it sees one state, whole
/// transactions only (P10), and lives no longer than the closure.
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

    /// The live entry of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&'a Entry> {
        self.keyspace.get(key).filter(|e| e.live(self.now_ms))
    }

    /// The value of `key` in the system namespace (see [`Write::System`](crate::Write::System)).
    pub fn system(&self, key: &[u8]) -> Option<&'a Bytes> {
        self.keyspace.system(key)
    }

    /// Live entries in `range`, in key order, at most `limit`.
    pub fn scan<R: RangeBounds<Bytes>>(&self, range: R, limit: usize) -> Vec<(Bytes, Entry)> {
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (
            range.start_bound().map(|k| &k[..]),
            range.end_bound().map(|k| &k[..]),
        );
        self.keyspace
            .map
            .range::<_, [u8]>(range)
            .filter(|(_, e)| e.live(self.now_ms))
            .take(limit)
            .map(|(k, e)| (Bytes::clone(k), e.clone()))
            .collect()
    }

    /// Live entries whose key starts with `prefix`, starting after `after` (a cursor: the last
    /// key of the previous page), at most `limit`.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Bytes, Entry)> {
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Included(prefix),
        };
        self.keyspace
            .map
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(self.now_ms))
            .take(limit)
            .map(|(k, e)| (Bytes::clone(k), e.clone()))
            .collect()
    }

    /// Every live entry, in key order, without copying.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Bytes, &'a Entry)> + 'a {
        let now_ms = self.now_ms;
        self.keyspace
            .map
            .iter()
            .filter(move |(_, e)| e.live(now_ms))
            .map(|(k, e)| (&**k, e))
    }

    /// Number of live keys. O(n) when some keys carry an expiry.
    pub fn count(&self) -> usize {
        if self.keyspace.expiring == 0 {
            return self.keyspace.map.len();
        }
        self.iter().count()
    }

    /// Every entry held, in O(1), including expired ones that active expiry has not removed
    /// yet: what Redis's INFO keyspace counts as `keys`.
    pub fn held(&self) -> usize {
        self.keyspace.map.len()
    }

    /// The entries held that carry an expiry, in O(1): Redis's INFO keyspace `expires`.
    pub fn expiring(&self) -> usize {
        self.keyspace.expiring
    }
}

/// The keyspace readers see: the ordered map, and the same entries hashed.
pub(crate) struct Keyspace {
    map: Map,
    system: System,
    /// Entries that carry an expiry, kept as writes apply, so that counting them is O(1).
    expiring: usize,
    /// The same entries as `map`, hashed: a point read is one hash probe instead of a descent
    /// through the ordered map, whose key comparisons were most of a GET's CPU. It costs about
    /// 90 bytes per key; key and value bytes are shared with `map`.
    index: HashMap<Bytes, Entry>,
}

impl Keyspace {
    pub(crate) fn new(image: Image) -> Keyspace {
        let Image { map, system } = image;
        let mut index = HashMap::with_capacity_and_hasher(map.len(), Default::default());
        index.extend(map.iter().map(|(k, e)| (Bytes::clone(k), e.clone())));
        let expiring = map.values().filter(|e| e.expires_at_ms.is_some()).count();
        Keyspace {
            map,
            system,
            expiring,
            index,
        }
    }

    /// The entry of `key`, expired or not.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.index.get(key)
    }

    /// The value of `key` in the system namespace.
    pub(crate) fn system(&self, key: &[u8]) -> Option<&Bytes> {
        self.system.get(key)
    }

    /// An O(1) image of the whole state, as checkpoints and backups write it.
    pub(crate) fn image(&self) -> Image {
        Image {
            map: self.map.clone(),
            system: self.system.clone(),
        }
    }

    /// Up to `limit` entries after the key `after` (from the first if `None`), in key order,
    /// appended to `out`: a checkpoint reads the keyspace this way, a part at a time.
    pub(crate) fn part_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        out: &mut Vec<(Key, Entry)>,
    ) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let part = self.map.range::<_, [u8]>((start, Bound::Unbounded));
        out.extend(part.take(limit).map(|(k, e)| (k.clone(), e.clone())));
    }

    /// The system namespace, in O(1).
    pub(crate) fn system_image(&self) -> System {
        self.system.clone()
    }

    /// Keeps `expiring` as a key's entry `old` is replaced by one that `expires` or not.
    fn count_expiry(&mut self, old: Option<&Entry>, expires: bool) {
        let had = old.is_some_and(|e| e.expires_at_ms.is_some());
        self.expiring = self.expiring + usize::from(expires) - usize::from(had);
    }

    /// Applies `mutations`, giving every entry they write the version `version`.
    pub(crate) fn apply(&mut self, mutations: &[Mutation], version: Lsn) {
        for m in mutations {
            match change(m, version) {
                Change::Key(key, Some(e)) => {
                    self.map.insert(Key::new(key.clone()), e.clone());
                    let expires = e.expires_at_ms.is_some();
                    let old = self.index.insert(key.clone(), e);
                    self.count_expiry(old.as_ref(), expires);
                }
                Change::Key(key, None) => {
                    self.map.remove(&key[..]);
                    let old = self.index.remove(key);
                    self.count_expiry(old.as_ref(), false);
                }
                Change::All => {
                    self.map.clear();
                    self.index = HashMap::default();
                    self.expiring = 0;
                }
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
                let older = || map.get(&key[..]).is_none_or(|old| old.version < lsn);
                if !*applies.entry(key.clone()).or_insert_with(older) {
                    continue;
                }
                match e {
                    Some(e) => {
                        map.insert(Key::new(key.clone()), e);
                    }
                    None => {
                        map.remove(&key[..]);
                    }
                }
            }
            Change::All => {
                let gone: Vec<Key> = map
                    .iter()
                    .filter(|(k, e)| e.version < lsn || applies.get(&k[..]) == Some(&true))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    map.remove(&k[..]);
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
/// into it, then merge it into the map in key order: inserting random keys one by one into a
/// large tree misses the cache at every level, while inserts in key order keep the path cached.
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
        let mut changed: Vec<(Key, Option<Entry>)> = self
            .changed
            .into_iter()
            .map(|(k, e)| (Key::new(k), e))
            .collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, e) in changed {
            match e {
                Some(e) => {
                    map.insert(k, e);
                }
                None => {
                    map.remove(&k[..]);
                }
            }
        }
    }
}
