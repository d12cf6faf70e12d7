//! keel-engine: an embedded key-value engine on keel-wal.
//!
//! Every write is one transaction: version guards, then writes evaluated in order. The
//! **sequencer** decides each transaction against all earlier ones, durable or still in flight,
//! under one lock, and hands its absolute effects to the WAL in that same order. The WAL's LSN is
//! then both the commit order and the version of every key the transaction wrote.
//!
//! Two states exist:
//! - the *pending* state, which the sequencer alone uses: every decided transaction, durable or
//!   not;
//! - the *visible* state, which readers use: only transactions whose WAL record is durable,
//!   applied strictly in LSN order (P10). Readers never wait on a sync; a snapshot is an O(1)
//!   clone of a persistent map.
//!
//! [`Engine::checkpoint`] writes a snapshot, commits it through an atomically replaced manifest
//! and only then prunes the log (P6); a background thread does it by log size and by time.
//! Recovery loads the snapshot the manifest names and replays only the log after it (P7).
//! [`Engine::commit_request`] makes retries idempotent (P8). [`restore`] rebuilds the database as
//! of any retained LSN or time into a new directory, and [`Engine::backup`] copies it online (P9).
//!
//! ```no_run
//! use keel_engine::{Engine, Options};
//! let (engine, report) = Engine::open("data", Options::default())?;
//! println!("{report}");
//! engine.put("k", "v")?; // durable and visible when this returns
//! assert_eq!(engine.get(b"k").unwrap().value, "v");
//! # Ok::<(), keel_engine::Error>(())
//! ```
#![forbid(unsafe_code)]

mod checkpoint;
mod combine;
mod damage;
mod key;
pub mod record;
mod restore;
pub mod snapshot;
pub mod table;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::ops::{Bound, Deref, RangeBounds};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use imbl::OrdMap;
use keel_wal::fs::durable_create_dir_all;
use keel_wal::{Completion, Lsn, OpenMode, Ticket, Wal, WalStats};

use snapshot::{FileError, Manifest};

pub use checkpoint::CheckpointInfo;
pub use damage::{inspect, DamagedFile, Health, Inspection, SnapshotCheck, DAMAGED_DIR};
pub use record::{Mutation, RecordError, Request, REQUEST_ID_BYTES_MAX};
pub use restore::{create_from_snapshot, restore, BackupView, RestoreReport, RestoreTarget};

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// LSN of the write that produced it: the key's version for compare-and-set.
    pub version: Lsn,
    /// Absolute expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

impl Entry {
    fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|t| t > now_ms)
    }
}

pub use key::Key;

type Map = OrdMap<Key, Entry>;

/// Every hash map keyed by client bytes: foldhash is several times cheaper than SipHash on
/// short keys and is seeded at random per map, so clients cannot aim collisions at it.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The log's subdirectory of an engine directory.
pub const WAL_DIR: &str = "wal";

/// A consistent, durable view. Cloning it is O(1); it never changes.
#[derive(Clone, Debug)]
pub struct Snapshot {
    map: Map,
    lsn: Lsn,
    now_ms: u64,
}

impl Snapshot {
    /// The LSN up to which this view includes every write.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The Unix time at which expiry is judged in this view.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.live(self.now_ms))
    }

    /// Live entries in `range`, in key order, at most `limit`.
    pub fn scan<R: RangeBounds<Bytes>>(&self, range: R, limit: usize) -> Vec<(Bytes, Entry)> {
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (
            range.start_bound().map(|k| &k[..]),
            range.end_bound().map(|k| &k[..]),
        );
        self.map
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
        self.map
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(self.now_ms))
            .take(limit)
            .map(|(k, e)| (Bytes::clone(k), e.clone()))
            .collect()
    }

    /// Every live entry, in key order, without copying the view.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.map
            .iter()
            .filter(|(_, e)| e.live(self.now_ms))
            .map(|(k, e)| (&**k, e))
    }

    /// Number of live keys. O(n) when some keys carry an expiry.
    pub fn count(&self) -> usize {
        self.map.values().filter(|e| e.live(self.now_ms)).count()
    }
}

/// When a put applies.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PutIf {
    #[default]
    Always,
    /// Only if the key has no live value (SET NX).
    Absent,
    /// Only if the key has a live value (SET XX).
    Present,
}

/// What to do with an existing expiry on put.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The new value never expires.
    #[default]
    None,
    /// Expires at this Unix millisecond.
    At(u64),
    /// Keep the old value's expiry (SET KEEPTTL).
    Keep,
}

/// One operation in a transaction. Each is decided against the state the earlier ones leave.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Result: `Put(applied)`.
    Put {
        key: Bytes,
        value: Bytes,
        ttl: Ttl,
        only: PutIf,
    },
    /// Result: `Existed(had a live value)`.
    Delete { key: Bytes },
    /// Adds `by` to a decimal integer value (absent counts as 0) and keeps the expiry. Logs the
    /// result, not `by`. Result: `Int(new value)`, or `Failed(NotAnInteger | Overflow)`.
    Incr { key: Bytes, by: i64 },
    /// Adds `by` to a decimal float value (absent counts as 0) and keeps the expiry. The result
    /// is written with at most 15 significant digits and no exponent, so 0.1 + 0.2 gives "0.3"
    /// as in Redis. Result: `Value(new value as written)`, or `Failed(NotAFloat | NotFinite)`.
    IncrFloat { key: Bytes, by: f64 },
    /// Appends to the value (absent counts as empty) and keeps the expiry. Result: `Int(new
    /// length)`, or `Failed(ValueTooLarge)`.
    Append { key: Bytes, suffix: Bytes },
    /// Sets (`Some`) or removes (`None`) the expiry of a live key, if `only` holds; a time
    /// already past deletes the key, as in Redis. Result: `Existed(applied)`.
    Expire {
        key: Bytes,
        at_ms: Option<u64>,
        only: ExpireIf,
    },
    /// Moves a value, with its expiry, to another key. With `only_if_absent` the move happens
    /// only if `to` has no live value. Result: `Put(moved)`, or `Failed(NoSuchKey)`.
    Rename {
        from: Bytes,
        to: Bytes,
        only_if_absent: bool,
    },
    /// Reads the value as the transaction sees it at this point; writes nothing. Result: `Value`.
    Get { key: Bytes },
    /// Removes every key. Result: `DeletedAll`.
    DeleteAll,
}

impl Write {
    /// The keys this write touches (none for `DeleteAll`, two for `Rename`).
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let (a, b) = match self {
            Write::Put { key, .. }
            | Write::Delete { key }
            | Write::Incr { key, .. }
            | Write::IncrFloat { key, .. }
            | Write::Append { key, .. }
            | Write::Expire { key, .. }
            | Write::Get { key } => (Some(key), None),
            Write::Rename { from, to, .. } => (Some(from), Some(to)),
            Write::DeleteAll => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// When an expiry change applies (Redis's EXPIRE options). A key without an expiry counts as
/// expiring never, later than any time.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpireIf {
    #[default]
    Always,
    /// The key has no expiry (NX).
    NoExpiry,
    /// The key has an expiry (XX; with `at_ms: None`, PERSIST).
    HasExpiry,
    /// The new time is later than the current one (GT).
    Later,
    /// The new time is sooner than the current one (LT).
    Sooner,
    /// The key has an expiry and the new time is sooner (XX LT).
    SoonerWithExpiry,
}

impl ExpireIf {
    fn holds(self, current: Option<u64>, new: Option<u64>) -> bool {
        let never = u64::MAX;
        let (cur, new) = (current.unwrap_or(never), new.unwrap_or(never));
        match self {
            ExpireIf::Always => true,
            ExpireIf::NoExpiry => current.is_none(),
            ExpireIf::HasExpiry => current.is_some(),
            ExpireIf::Later => new > cur,
            ExpireIf::Sooner => new < cur,
            ExpireIf::SoonerWithExpiry => current.is_some() && new < cur,
        }
    }
}

/// A precondition checked before any write: the key's current version (`None`: no live value).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub key: Bytes,
    pub version: Option<Lsn>,
}

/// Why one write in a transaction did nothing. The transaction's other writes still apply, as in
/// a Redis `EXEC`; use guards for all-or-nothing conditions.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("value is not a valid float")]
    NotAFloat,
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    #[error("no such key")]
    NoSuchKey,
    #[error("the result would exceed value_bytes_max")]
    ValueTooLarge,
}

impl WriteError {
    pub(crate) fn code(self) -> u8 {
        self as u8 + 1
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        use WriteError::*;
        [
            NotAnInteger,
            Overflow,
            NotAFloat,
            NotFinite,
            NoSuchKey,
            ValueTooLarge,
        ]
        .get(usize::from(c).checked_sub(1)?)
        .copied()
    }
}

/// What one write did.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// A put or rename; `false` when its condition did not hold.
    Put(bool),
    /// A delete or an expiry change; whether the key had a live value.
    Existed(bool),
    /// The value an increment produced, or the length an append produced.
    Int(i64),
    /// A read, or the value a float increment produced.
    Value(Option<Bytes>),
    DeletedAll,
    /// The write did nothing, for this reason.
    Failed(WriteError),
}

/// The outcome of a transaction.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every guard held. `lsn` is `None` when nothing needed writing (for example, only skipped
    /// puts); otherwise the writes are durable and visible when this is returned.
    Committed {
        lsn: Option<Lsn>,
        results: Vec<WriteResult>,
    },
    /// The guard at this index did not hold; nothing was written.
    GuardFailed(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wal(#[from] keel_wal::Error),
    #[error("key of {len} bytes exceeds key_bytes_max ({max})")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes exceeds value_bytes_max ({max})")]
    ValueTooLarge { len: usize, max: usize },
    #[error("transaction of {bytes} bytes exceeds the log's record_bytes_max ({max})")]
    TxnTooLarge { bytes: usize, max: usize },
    #[error("request id of {len} bytes exceeds {max}")]
    RequestIdTooLong { len: usize, max: usize },
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("log record at LSN {lsn} is not a valid engine record: {source}")]
    BadRecord {
        lsn: Lsn,
        #[source]
        source: RecordError,
    },
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest or the snapshot it names is damaged or does not match: refusing to guess.
    #[error("{path} is not usable: {source}. The database refuses to open rather than lose or invent data")]
    BadFile {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    /// No complete path from a snapshot (or the empty state) to the end of the log exists:
    /// records are missing or damaged beyond what any retained file can make up for (P13).
    #[error("{}", no_path_message(.dir, .damaged, .detail))]
    NoCompletePath {
        dir: PathBuf,
        /// Every damaged file found on the way, with what is wrong with it.
        damaged: Vec<String>,
        /// Which LSNs cannot be reached, and why.
        detail: String,
    },
    /// A restore cannot reach the point asked for with what the source retains.
    #[error("cannot restore: {0}")]
    NotRestorable(String),
}

fn no_path_message(dir: &Path, damaged: &[String], detail: &str) -> String {
    let mut m = String::from(
        "the database refuses to open: no complete path to the acknowledged state exists. ",
    );
    if !damaged.is_empty() {
        m.push_str("Damaged: ");
        m.push_str(&damaged.join("; "));
        m.push_str(". ");
    }
    m.push_str(detail);
    m.push_str(&format!(
        ". No file was moved or removed. Inspect with `keel verify {}`, and keep a copy of the directory before changing anything",
        dir.display()
    ));
    m
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Engine configuration. `Options::default()` is the durable configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub wal: keel_wal::Options,
    /// Default 64 KiB.
    pub key_bytes_max: usize,
    /// Default 8 MiB. Must fit in one WAL record together with its key.
    pub value_bytes_max: usize,
    /// Request ids remembered for retries (P8): at most this many, the oldest forgotten first.
    /// Default 100,000.
    pub request_retention_count: usize,
    /// ... and none older than this. Default 24 hours. A retry after either limit is a new
    /// request.
    pub request_retention_ms: u64,
    /// Run a background thread for automatic checkpoints and active expiry. Default true. Off,
    /// checkpoints happen only when [`Engine::checkpoint`] is called and expired keys are
    /// removed only when overwritten (they are never visible either way).
    pub background: bool,
    /// With `background`, also delete expired keys in the background (active expiry). Default
    /// true. Replicas turn it off: the deletions would be log records that only this machine
    /// decided.
    pub active_expiry: bool,
    /// Checkpoint once this many bytes were logged since the last one. Default 256 MiB;
    /// 0 = never by size. Bounds the log that recovery replays.
    pub checkpoint_log_bytes: u64,
    /// Checkpoint this long after the last one, if anything was written. Default 10 minutes.
    pub checkpoint_interval: Option<Duration>,
    /// Keep older snapshots and the log after them for this long, so that [`restore`] can reach
    /// any point in the window. Default 0: a checkpoint keeps only the snapshot before its own
    /// and the log after that one (at most about `checkpoint_log_bytes` more than the newest
    /// snapshot needs), so that a damaged snapshot or manifest costs nothing (P13).
    pub retention: Duration,
    /// LZ4-compress snapshot blocks. Default true.
    pub compress_snapshots: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wal: keel_wal::Options::default(),
            key_bytes_max: 64 << 10,
            value_bytes_max: 8 << 20,
            request_retention_count: 100_000,
            request_retention_ms: 24 * 3600 * 1000,
            background: true,
            active_expiry: true,
            checkpoint_log_bytes: 256 << 20,
            checkpoint_interval: Some(Duration::from_secs(600)),
            retention: Duration::ZERO,
            compress_snapshots: true,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        let max_record = self.wal.record_bytes_max as usize;
        if self.key_bytes_max + self.value_bytes_max + 64 > max_record {
            return Err(Error::InvalidOptions(format!(
                "key_bytes_max ({}) + value_bytes_max ({}) must fit in the log's record_bytes_max ({max_record})",
                self.key_bytes_max, self.value_bytes_max
            )));
        }
        if self.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOptions(
                "checkpoint_interval must be positive; use None to turn it off".into(),
            ));
        }
        Ok(self.wal.validate()?)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The entry a mutation leaves under its key at `version` (`None`: deleted), or `None` for a
/// DeleteAll. Every structure that follows mutations goes through this.
fn change(m: &Mutation, version: Lsn) -> Option<(&Bytes, Option<Entry>)> {
    match m {
        Mutation::Set {
            key,
            value,
            expires_at_ms,
        } => Some((
            key,
            Some(Entry {
                value: value.clone(),
                version,
                expires_at_ms: *expires_at_ms,
            }),
        )),
        Mutation::Delete { key } => Some((key, None)),
        Mutation::DeleteAll => None,
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
}

impl Changes {
    pub(crate) fn apply(&mut self, mutations: &[Mutation], version: Lsn) {
        for m in mutations {
            match change(m, version) {
                Some((key, e)) => {
                    self.changed.insert(key.clone(), e);
                }
                None => {
                    self.changed.clear();
                    self.cleared = true;
                }
            }
        }
    }

    /// Merges the changes into `map`.
    pub(crate) fn merge_into(self, map: &mut Map) {
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

/// Request ids kept for retries, with the LSN of the record that holds each (P8).
#[derive(Clone, Debug, Default)]
pub(crate) struct Requests {
    by_id: HashMap<Bytes, (Lsn, Request)>,
    /// In LSN order, for eviction.
    order: VecDeque<(Lsn, Bytes)>,
}

impl Requests {
    fn get(&self, id: &[u8]) -> Option<&(Lsn, Request)> {
        self.by_id.get(id)
    }

    pub(crate) fn insert(&mut self, lsn: Lsn, req: Request, opts: &Options, now: u64) {
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
struct Seq {
    /// The newest decided writes not yet known to be visible.
    recent: Recent,
    requests: Requests,
    /// (expiry, key) of every value written with an expiry; entries go stale when the key is
    /// rewritten and are checked against `map` before use.
    expiry: BTreeSet<(u64, Bytes)>,
    /// Decision time of the last record: record times never go backwards.
    last_at_ms: u64,
    /// LSN of the last record submitted.
    last_lsn: Lsn,
}

/// Writes decided but maybe not yet visible, laid over the visible state: the decided state
/// is the visible state with these on top. A key absent here has its newest decided value in
/// the visible state. This replaces a second copy of the whole ordered map, whose every insert
/// cost a descent and a path copy.
#[derive(Default)]
struct Recent {
    /// The newest decided entry of each key written lately, with its LSN; `None` = deleted.
    by_key: HashMap<Bytes, (Lsn, Option<Entry>)>,
    /// (LSN, key) in LSN order, to forget entries once visible.
    order: VecDeque<(Lsn, Bytes)>,
    /// LSN of a DeleteAll that may not be visible yet: keys not in `by_key` are gone.
    cleared: Option<Lsn>,
}

impl Recent {
    /// The decided entry of `key`, expired or not, given `vis`, the visible state now.
    fn get<'a>(&'a self, vis: &'a Visible, key: &[u8]) -> Option<&'a Entry> {
        match self.by_key.get(key) {
            Some((_, e)) => e.as_ref(),
            None if self.cleared.is_some_and(|l| l > vis.lsn) => None,
            None => vis.index.get(key),
        }
    }

    fn record(&mut self, mutations: &[Mutation], lsn: Lsn) {
        for m in mutations {
            match change(m, lsn) {
                Some((key, e)) => {
                    self.by_key.insert(key.clone(), (lsn, e));
                    self.order.push_back((lsn, key.clone()));
                }
                None => {
                    self.by_key.clear();
                    self.order.clear();
                    self.cleared = Some(lsn);
                }
            }
        }
    }

    /// Forgets entries that `visible_lsn` covers: the visible state holds them (or newer).
    fn forget_up_to(&mut self, visible_lsn: Lsn) {
        while let Some((lsn, _)) = self.order.front() {
            if *lsn > visible_lsn {
                break;
            }
            let (lsn, key) = self.order.pop_front().expect("checked");
            if self.by_key.get(&key).is_some_and(|(l, _)| *l == lsn) {
                self.by_key.remove(&key);
            }
        }
        if self.cleared.is_some_and(|l| l <= visible_lsn) {
            self.cleared = None;
        }
    }
}

impl Seq {
    fn track_expiry(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            if let Mutation::Set {
                key,
                expires_at_ms: Some(t),
                ..
            } = m
            {
                self.expiry.insert((*t, key.clone()));
            }
        }
    }
}

struct Visible {
    map: Map,
    /// The same entries as `map`, hashed: a point read is one hash probe instead of a descent
    /// through the ordered map, whose key comparisons were most of a GET's CPU. It costs about
    /// 90 bytes per key; key and value bytes are shared with `map`.
    index: HashMap<Bytes, Entry>,
    lsn: Lsn,
    /// Decision time of the record at `lsn`.
    at_ms: u64,
}

impl Visible {
    fn new(map: Map, lsn: Lsn, at_ms: u64) -> Visible {
        let mut index = HashMap::with_capacity_and_hasher(map.len(), Default::default());
        index.extend(map.iter().map(|(k, e)| (Bytes::clone(k), e.clone())));
        Visible {
            map,
            index,
            lsn,
            at_ms,
        }
    }

    fn apply(&mut self, mutations: &[Mutation], lsn: Lsn, at_ms: u64) {
        for m in mutations {
            match change(m, lsn) {
                Some((key, Some(e))) => {
                    self.map.insert(Key::new(key.clone()), e.clone());
                    self.index.insert(key.clone(), e);
                }
                Some((key, None)) => {
                    self.map.remove(&key[..]);
                    self.index.remove(key);
                }
                None => {
                    self.map.clear();
                    self.index = HashMap::default();
                }
            }
        }
        self.lsn = lsn;
        self.at_ms = at_ms;
    }
}

struct Unpublished {
    lsn: Lsn,
    at_ms: u64,
    mutations: Arc<Vec<Mutation>>,
}

fn parse_int(v: &[u8]) -> Option<i64> {
    // Redis's rules: plain decimal, optional '-', no '+', spaces or leading zeros.
    let s = std::str::from_utf8(v).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || s == "-0" {
        return None;
    }
    s.parse().ok()
}

/// A float as INCRBYFLOAT writes it: rounded to 15 significant digits (all an f64 holds
/// exactly), then the shortest decimal form, never an exponent.
fn format_float(x: f64) -> String {
    let rounded: f64 = format!("{x:.14e}").parse().unwrap_or(x);
    let s = rounded.to_string();
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn parse_float(v: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || s.len() > 5000 || s.starts_with(char::is_whitespace) {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| !f.is_nan())
}

/// The state a transaction sees part-way through: the state before it, plus what its earlier
/// writes changed. Cheaper than cloning the map: the common single-write transaction never
/// touches the tree, and the sequencer's map is then updated in place, once.
struct Overlay<'a> {
    base: View<'a>,
    /// What the transaction wrote so far.
    changes: Changes,
    now: u64,
}

impl Overlay<'_> {
    fn live(&self, k: &[u8]) -> Option<Entry> {
        let e = match self.changes.changed.get(k) {
            Some(e) => e.as_ref(),
            None if self.changes.cleared => None,
            None => self.base.get(k),
        };
        e.filter(|e| e.live(self.now)).cloned()
    }

    fn apply(&mut self, mutations: &[Mutation]) {
        // The version is provisional: only liveness and values are read back.
        self.changes.apply(mutations, 0);
    }
}

/// Decides a transaction against `state`: the guards, then every write against the state the
/// earlier writes leave. Returns the outcome (without an LSN) and the absolute effects to log.
/// The decided state: recent writes over the visible state.
#[derive(Clone, Copy)]
struct View<'a> {
    recent: &'a Recent,
    visible: &'a Visible,
}

impl<'a> View<'a> {
    fn get(&self, key: &[u8]) -> Option<&'a Entry> {
        self.recent.get(self.visible, key)
    }
}

fn decide(
    state: View<'_>,
    now: u64,
    value_max: usize,
    guards: &[Guard],
    writes: Vec<Write>,
) -> (Outcome, Vec<Mutation>) {
    for (i, g) in guards.iter().enumerate() {
        if state.get(&g.key).filter(|e| e.live(now)).map(|e| e.version) != g.version {
            return (Outcome::GuardFailed(i), Vec::new());
        }
    }
    let mut work = Overlay {
        base: state,
        changes: Changes::default(),
        now,
    };
    let mut mutations = Vec::new();
    let n = writes.len();
    // A transaction of plain puts (a bulk load, MSET) reads nothing back, so its writes need
    // not be laid over the state one by one.
    let reads = !writes.iter().all(|w| {
        matches!(
            w,
            Write::Put {
                only: PutIf::Always,
                ttl: Ttl::None | Ttl::At(_),
                ..
            }
        )
    });
    let mut results = Vec::with_capacity(n);
    for (i, w) in writes.into_iter().enumerate() {
        let mut m = Vec::new();
        let result = match w {
            Write::Put {
                key,
                value,
                ttl,
                only,
            } => {
                // A plain put reads nothing: skip the lookup.
                let old = match (&only, &ttl) {
                    (PutIf::Always, Ttl::None | Ttl::At(_)) => None,
                    _ => work.live(&key),
                };
                let go = match only {
                    PutIf::Always => true,
                    PutIf::Absent => old.is_none(),
                    PutIf::Present => old.is_some(),
                };
                let expires_at_ms = match ttl {
                    Ttl::None => None,
                    Ttl::At(t) => Some(t),
                    Ttl::Keep => old.and_then(|e| e.expires_at_ms),
                };
                if go {
                    m.push(Mutation::Set {
                        key,
                        value,
                        expires_at_ms,
                    });
                }
                WriteResult::Put(go)
            }
            Write::Delete { key } => {
                let existed = work.live(&key).is_some();
                if existed {
                    m.push(Mutation::Delete { key });
                }
                WriteResult::Existed(existed)
            }
            Write::Incr { key, by } => {
                let old = work.live(&key);
                match old.as_ref().map_or(Some(0), |e| parse_int(&e.value)) {
                    None => WriteResult::Failed(WriteError::NotAnInteger),
                    Some(cur) => match cur.checked_add(by) {
                        None => WriteResult::Failed(WriteError::Overflow),
                        Some(new) => {
                            m.push(Mutation::Set {
                                key,
                                value: Bytes::from(new.to_string()),
                                expires_at_ms: old.and_then(|e| e.expires_at_ms),
                            });
                            WriteResult::Int(new)
                        }
                    },
                }
            }
            Write::IncrFloat { key, by } => {
                let old = work.live(&key);
                match old.as_ref().map_or(Some(0.0), |e| parse_float(&e.value)) {
                    None => WriteResult::Failed(WriteError::NotAFloat),
                    Some(cur) if !(cur + by).is_finite() || !by.is_finite() => {
                        WriteResult::Failed(WriteError::NotFinite)
                    }
                    Some(cur) => {
                        let value = Bytes::from(format_float(cur + by));
                        m.push(Mutation::Set {
                            key,
                            value: value.clone(),
                            expires_at_ms: old.and_then(|e| e.expires_at_ms),
                        });
                        WriteResult::Value(Some(value))
                    }
                }
            }
            Write::Append { key, suffix } => {
                let old = work.live(&key);
                let len = old.as_ref().map_or(0, |e| e.value.len()) + suffix.len();
                if len > value_max {
                    WriteResult::Failed(WriteError::ValueTooLarge)
                } else {
                    let (value, expires_at_ms) = match old {
                        Some(e) => {
                            let mut v = Vec::with_capacity(len);
                            v.extend_from_slice(&e.value);
                            v.extend_from_slice(&suffix);
                            (Bytes::from(v), e.expires_at_ms)
                        }
                        None => (suffix, None),
                    };
                    m.push(Mutation::Set {
                        key,
                        value,
                        expires_at_ms,
                    });
                    WriteResult::Int(len as i64)
                }
            }
            Write::Expire { key, at_ms, only } => match work.live(&key) {
                Some(e) if only.holds(e.expires_at_ms, at_ms) => {
                    m.push(match at_ms {
                        Some(t) if t <= now => Mutation::Delete { key },
                        _ => Mutation::Set {
                            key,
                            value: e.value,
                            expires_at_ms: at_ms,
                        },
                    });
                    WriteResult::Existed(true)
                }
                _ => WriteResult::Existed(false),
            },
            Write::Rename {
                from,
                to,
                only_if_absent,
            } => match work.live(&from) {
                None => WriteResult::Failed(WriteError::NoSuchKey),
                Some(_) if only_if_absent && work.live(&to).is_some() => WriteResult::Put(false),
                Some(_) if from == to => WriteResult::Put(true),
                Some(e) => {
                    m.push(Mutation::Delete { key: from });
                    m.push(Mutation::Set {
                        key: to,
                        value: e.value,
                        expires_at_ms: e.expires_at_ms,
                    });
                    WriteResult::Put(true)
                }
            },
            Write::Get { key } => WriteResult::Value(work.live(&key).map(|e| e.value)),
            Write::DeleteAll => {
                m.push(Mutation::DeleteAll);
                WriteResult::DeletedAll
            }
        };
        if reads && i + 1 < n {
            work.apply(&m);
        }
        mutations.append(&mut m);
        results.push(result);
    }
    (Outcome::Committed { lsn: None, results }, mutations)
}

/// What opening an engine found and did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The log's own recovery: segments, torn tail, files removed.
    pub wal: keel_wal::RecoveryReport,
    /// LSN of the snapshot loaded (0: none).
    pub snapshot_lsn: Lsn,
    pub snapshot_bytes: u64,
    pub snapshot_load: Duration,
    pub records_replayed: u64,
    pub bytes_replayed: u64,
    /// Live and expired keys held after recovery.
    pub keys: usize,
    /// The last LSN recovered.
    pub lsn: Lsn,
    pub duration: Duration,
    /// The manifest and snapshots that failed their checks and were moved into `DIR/damaged/`;
    /// recovery then used an older snapshot (`snapshot_lsn`) and the log after it (P13).
    pub damaged: Vec<DamagedFile>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.wal)?;
        write!(
            f,
            "engine: snapshot at LSN {} ({} bytes, loaded in {:.2?}), replayed {} records ({} bytes), {} keys at LSN {}, in {:.2?}",
            self.snapshot_lsn,
            self.snapshot_bytes,
            self.snapshot_load,
            self.records_replayed,
            self.bytes_replayed,
            self.keys,
            self.lsn,
            self.duration
        )?;
        for d in &self.damaged {
            write!(
                f,
                "\nDAMAGED {d}; opened from {} and the log after it instead, losing nothing",
                damage::base_name(self.snapshot_lsn)
            )?;
        }
        Ok(())
    }
}

/// A prepared transaction: decided and queued, not yet acknowledged.
enum Prepared {
    /// Nothing to log. The outcome was decided against every earlier transaction, so it can be
    /// answered only once the last of them (this LSN) is acknowledged: otherwise a crash could
    /// take away a write the answer depended on (a SET NX refused because of it, say).
    Done(Outcome, Lsn),
    Wait(Ticket, Outcome),
    /// A retry of request already logged at this LSN.
    Retry(Lsn, Outcome),
}

/// A decided transaction on its way to the disk; see [`Engine::submit`]. It is `'static`, so it
/// can be kept in a queue or moved to another task.
#[must_use = "a transaction is not acknowledged until it is awaited or waited on"]
pub struct Pending {
    core: Arc<Core>,
    state: Option<Prepared>,
    waiting: Option<keel_wal::AckedFuture>,
}

impl Pending {
    /// Blocks until the outcome is durable and visible.
    pub fn wait(mut self) -> Result<Outcome> {
        let p = self.state.take().expect("a Pending is consumed once");
        self.core.finish(p)
    }
}

impl Future for Pending {
    type Output = Result<Outcome>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let upto = match this.state.as_mut().expect("polled after completion") {
            Prepared::Wait(ticket, _) => match std::task::ready!(Pin::new(ticket).poll(cx)) {
                Ok(lsns) => *lsns.end(),
                Err(e) => {
                    this.state = None;
                    return Poll::Ready(Err(e.into()));
                }
            },
            Prepared::Done(_, after) => {
                let after = *after;
                if this.core.published.load(Ordering::Acquire) < after {
                    let acked = this
                        .waiting
                        .get_or_insert_with(|| this.core.wal.acked(after));
                    if let Err(e) = std::task::ready!(Pin::new(acked).poll(cx)) {
                        this.state = None;
                        return Poll::Ready(Err(e.into()));
                    }
                }
                after
            }
            // Rare, and its original is almost always durable already; otherwise this blocks
            // for at most one sync.
            Prepared::Retry(..) => {
                let p = this.state.take().expect("checked");
                return Poll::Ready(this.core.finish(p));
            }
        };
        this.core.publish(upto);
        Poll::Ready(Ok(match this.state.take() {
            Some(Prepared::Wait(_, o) | Prepared::Done(o, _)) => o,
            _ => unreachable!("checked"),
        }))
    }
}

/// The embedded engine. Every method takes `&self`; share it by reference or in an `Arc`. The
/// operations live on [`Core`], which an `Engine` dereferences to. Dropping the engine stops its
/// background thread; [`Engine::close`] also syncs and reports the log's final state.
pub struct Engine {
    // Declared first so that it is dropped (stopped and joined) before the core. Taken (and
    // joined) by [`Engine::halt`].
    background: Mutex<Option<checkpoint::Background>>,
    core: Arc<Core>,
}

/// The engine's operations. See [`Engine`].
pub struct Core {
    opts: Options,
    dir: PathBuf,
    wal: Wal,
    /// The manifest in force and checkpoint bookkeeping; held while a checkpoint runs, so
    /// checkpoints do not overlap.
    checkpoints: Mutex<checkpoint::State>,
    checkpoint_status: Mutex<checkpoint::Status>,
    /// Every decided transaction, durable or not. Held while deciding and submitting, so that LSN
    /// order is decision order. Taken through [`Core::seq`] only (see the `combine` module).
    pending: Mutex<Seq>,
    /// Transactions of blocking writers, left for whoever holds `pending` to decide.
    incoming: Mutex<Vec<combine::Job>>,
    /// Decided transactions not yet visible, in LSN order.
    unpublished: Mutex<VecDeque<Unpublished>>,
    visible: RwLock<Visible>,
    /// `visible.lsn`, readable without the lock.
    published: AtomicU64,
    /// Bytes logged since the last checkpoint, for the size trigger.
    logged_since_checkpoint: AtomicU64,
    recovery: RecoveryReport,
}

impl Deref for Engine {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Engine {
    /// Opens (or creates) the engine in `dir`: the manifest, the snapshot it names, then the log
    /// in `dir/wal/` from the snapshot's LSN + 1.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<(Engine, RecoveryReport)> {
        Self::open_with_progress(dir, opts, &mut |_, _| {})
    }

    /// Like [`Engine::open`], calling `progress(bytes_done, bytes_total)` while the log's
    /// recovery scans.
    pub fn open_with_progress(
        dir: impl AsRef<Path>,
        opts: Options,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(Engine, RecoveryReport)> {
        let started = Instant::now();
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let fs = opts.wal.fs.clone();
        durable_create_dir_all(&*fs, &dir).map_err(io("create directory", &dir))?;
        let state = damage::read_manifest_state(&*fs, &dir)?;
        let now = now_ms();
        let mut requests = Requests::default();
        let mut report = RecoveryReport::default();
        let t = Instant::now();
        // P13: the manifest's snapshot if it and the manifest pass their checks, else the newest
        // snapshot that does (or the empty state). `inspect` chooses the same way.
        let choice = damage::choose(&*fs, &dir, &state, &mut |path, expect| {
            let f = fs.open(path, OpenMode::Read)?;
            let bytes = f.len()?;
            let loaded = snapshot::read_snapshot(&*f, expect)?;
            // Its trailing CRC, which `read_snapshot` checked, for a manifest that names it.
            let mut crc = [0u8; 4];
            keel_wal::fs::read_exact_at(&*f, &mut crc, bytes - 4)?;
            let m = Manifest {
                snapshot_lsn: loaded.header.lsn,
                snapshot_bytes: bytes,
                snapshot_crc: u32::from_le_bytes(crc),
            };
            Ok((loaded.header.lsn, (loaded, m)))
        })?;
        let snapshot_lsn = choice.base;
        let (mut map, mut at_ms, manifest) = match choice.loaded {
            None => (Map::new(), 0, Manifest::default()),
            Some((loaded, m)) => {
                for (l, r) in loaded.requests {
                    requests.insert(l, r, &opts, now);
                }
                report.snapshot_load = t.elapsed();
                report.snapshot_bytes = m.snapshot_bytes;
                (loaded.map, loaded.header.at_ms, m)
            }
        };
        report.snapshot_lsn = snapshot_lsn;
        let mut damaged = choice.damaged;
        // Only the log after the base is needed: damage wholly below it is left out, not fatal.
        let opened = Wal::open_from(
            dir.join(WAL_DIR),
            opts.wal.clone(),
            snapshot_lsn + 1,
            progress,
        );
        let (wal, wal_report) = match opened {
            Ok(w) => w,
            Err(keel_wal::Error::Corruption(c)) if !damaged.is_empty() => {
                return Err(Error::NoCompletePath {
                    dir: dir.clone(),
                    damaged: damaged.iter().map(|d| d.to_string()).collect(),
                    detail: format!(
                        "LSNs from {} on are unreachable: the newest usable base is {}, and the log after it is damaged too: {c}",
                        c.last_good_lsn.unwrap_or(snapshot_lsn).max(snapshot_lsn) + 1,
                        damage::base_name(snapshot_lsn)
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let (first, last) = (wal.first_lsn(), wal.last_lsn());
        // P4 between snapshot and log: the log must continue exactly where the snapshot ends.
        if let Err((from, to)) = damage::reach(snapshot_lsn, first, last) {
            let base = damage::base_name(snapshot_lsn);
            return Err(Error::NoCompletePath {
                dir: dir.clone(),
                damaged: damaged.iter().map(|d| d.to_string()).collect(),
                detail: format!(
                    "LSNs {from}..={to} are unreachable: the newest usable base is {base}, and the log holds LSNs {first}..={last}"
                ),
            });
        }
        // A complete path exists: set the damaged files aside (never deleted) and commit a
        // manifest that names the base, before anything new is logged.
        if !damaged.is_empty() {
            for d in &mut damaged {
                if fs.exists(&d.path).map_err(io("stat", &d.path))? {
                    d.moved_to = Some(damage::move_aside(&*fs, &dir, &d.path)?);
                }
            }
            checkpoint::commit_manifest(&*fs, &dir, &manifest)?;
            for d in &damaged {
                tracing::warn!(
                    "damaged file set aside: {d}; opened from {} and the log after it, losing nothing",
                    damage::base_name(snapshot_lsn)
                );
            }
        }
        report.damaged = damaged;
        // P7: records the snapshot already holds are skipped.
        let mut applied = snapshot_lsn.max(first - 1);
        let mut replay = Changes::default();
        for rec in wal.read_from(applied + 1)? {
            let rec = rec?;
            report.bytes_replayed += rec.payload.len() as u64;
            let decoded = record::decode(&Bytes::from(rec.payload), rec.lsn).map_err(|source| {
                Error::BadRecord {
                    lsn: rec.lsn,
                    source,
                }
            })?;
            replay.apply(&decoded.mutations, rec.lsn);
            if let Some(r) = decoded.request {
                requests.insert(rec.lsn, r, &opts, now);
            }
            at_ms = decoded.at_ms;
            applied = rec.lsn;
            report.records_replayed += 1;
        }
        replay.merge_into(&mut map);
        checkpoint::remove_uncommitted(&*fs, &dir, snapshot_lsn)?;
        let mut seq = Seq {
            recent: Recent::default(),
            requests,
            expiry: BTreeSet::new(),
            last_at_ms: at_ms,
            last_lsn: applied,
        };
        for (k, e) in map.iter() {
            if let Some(t) = e.expires_at_ms {
                seq.expiry.insert((t, Bytes::clone(k)));
            }
        }
        report.wal = wal_report;
        report.keys = map.len();
        report.lsn = applied;
        report.duration = started.elapsed();
        let core = Arc::new(Core {
            checkpoints: Mutex::new(checkpoint::State::new(manifest)),
            checkpoint_status: Mutex::new(checkpoint::Status::default()),
            opts,
            dir,
            wal,
            pending: Mutex::new(seq),
            incoming: Mutex::new(Vec::new()),
            unpublished: Mutex::new(VecDeque::new()),
            visible: RwLock::new(Visible::new(map, applied, at_ms)),
            published: AtomicU64::new(applied),
            logged_since_checkpoint: AtomicU64::new(report.bytes_replayed),
            recovery: report.clone(),
        });
        let background = core
            .opts
            .background
            .then(|| checkpoint::Background::start(&core))
            .transpose()?;
        Ok((
            Engine {
                core,
                background: Mutex::new(background),
            },
            report,
        ))
    }

    /// Decides a transaction now, in the order of this call, and returns without waiting for
    /// durability. Await the [`Pending`] (or [`Pending::wait`]) for the outcome: it resolves
    /// once the record is durable and visible. A connection can so submit a pipeline of writes
    /// that share one sync, and still see them decided in its own order.
    pub fn submit(&self, guards: Vec<Guard>, writes: Vec<Write>) -> Result<Pending> {
        self.pending(None, guards, writes)
    }

    /// [`Engine::submit`] under a client request id (see [`Core::commit_request`]).
    pub fn submit_request(
        &self,
        id: impl Into<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Pending> {
        self.pending(Some(check_id(id.into())?), guards, writes)
    }

    /// [`Engine::submit`] (or, with `id`, [`Engine::submit_request`]) decided as of `now_ms`
    /// rather than this machine's clock: expiry, liveness and request retention all use that
    /// time. Replicas that apply the same transactions with the same times, in the same order,
    /// from the same state, reach the same state and the same LSNs (keel cluster relies on it).
    pub fn submit_at(
        &self,
        id: Option<Bytes>,
        now_ms: u64,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Pending> {
        let id = id.map(check_id).transpose()?;
        self.core.check_writes(&writes)?;
        let p =
            self.core
                .prepare_locked(&mut self.core.seq(), id, now_ms, &guards, writes, None)?;
        Ok(Pending {
            core: self.core.clone(),
            state: Some(p),
            waiting: None,
        })
    }

    fn pending(
        &self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Pending> {
        let p = self.core.prepare(id, &guards, writes)?;
        Ok(Pending {
            core: self.core.clone(),
            state: Some(p),
            waiting: None,
        })
    }

    /// Stops the background thread, then finishes queued appends, syncs and closes the log.
    /// Returns the first failure if the log was poisoned.
    pub fn close(self) -> Result<()> {
        self.halt()
    }

    /// [`Engine::close`] through a shared reference, for an engine that other threads may still
    /// hold (a server's connections in the middle of a command, say). Once it returns, the
    /// background thread has stopped, no checkpoint runs or will run, the log is closed and the
    /// directory is unlocked, so that [`Engine::open`] can open it again in this process, which
    /// is how a server recovers from a poisoned log without a restart. Reads keep answering
    /// from the last visible (durable) state; every later write fails, with the log's first
    /// failure if it was poisoned. Calling it again changes nothing.
    pub fn halt(&self) -> Result<()> {
        let background = lock(&self.background).take();
        drop(background);
        {
            // Waits for a checkpoint in progress; none starts after this.
            let mut st = lock(&self.core.checkpoints);
            st.halted = true;
        }
        Ok(self.core.wal.halt()?)
    }
}

impl Core {
    /// The directory the engine lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// What opening the engine found.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log's first failure, if a failed write or sync has poisoned it (P5): the engine then
    /// refuses every write until the directory is opened again (see [`Engine::halt`]).
    pub fn poisoned(&self) -> Option<Arc<keel_wal::Error>> {
        self.wal.poisoned()
    }

    /// The log's counters: records, syncs, sync time, bytes.
    pub fn wal_stats(&self) -> WalStats {
        self.wal.stats()
    }

    /// The visible state with its LSN and decision time, and the request ids it holds: what a
    /// checkpoint or a backup writes.
    pub(crate) fn durable_view(&self) -> (Map, Lsn, u64, Vec<(Lsn, Request)>) {
        let (map, lsn, at_ms) = {
            let v = self.visible.read().unwrap_or_else(|p| p.into_inner());
            (v.map.clone(), v.lsn, v.at_ms)
        };
        let requests = self.seq().requests.up_to(lsn);
        (map, lsn, at_ms, requests)
    }

    /// The durable state now.
    pub fn snapshot(&self) -> Snapshot {
        let v = self.visible.read().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            map: v.map.clone(),
            lsn: v.lsn,
            now_ms: now_ms(),
        }
    }

    /// The live entry of `key` in the durable state now.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        let v = self.visible.read().unwrap_or_else(|p| p.into_inner());
        v.index.get(key).filter(|e| e.live(now_ms())).cloned()
    }

    /// The live entries of `keys`, all read from one durable state (as one snapshot would,
    /// without taking one).
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Vec<Option<Entry>> {
        let now = now_ms();
        let v = self.visible.read().unwrap_or_else(|p| p.into_inner());
        keys.into_iter()
            .map(|k| v.index.get(k).filter(|e| e.live(now)).cloned())
            .collect()
    }

    pub fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<Lsn> {
        let w = Write::Put {
            key: key.into(),
            value: value.into(),
            ttl: Ttl::None,
            only: PutIf::Always,
        };
        match self.commit(Vec::new(), vec![w])? {
            Outcome::Committed { lsn: Some(l), .. } => Ok(l),
            other => unreachable!("an unconditional put always writes: {other:?}"),
        }
    }

    /// Deletes `key`; returns whether it had a live value.
    pub fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        match self.commit(Vec::new(), vec![Write::Delete { key: key.into() }])? {
            Outcome::Committed { results, .. } => Ok(results[0] == WriteResult::Existed(true)),
            other => unreachable!("no guards: {other:?}"),
        }
    }

    /// Writes `value` only if the key's version is `expected` (`None`: no live value).
    /// Returns the new version, or `None` if the version differed.
    pub fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Lsn>,
        value: impl Into<Bytes>,
    ) -> Result<Option<Lsn>> {
        let key = key.into();
        let guard = Guard {
            key: key.clone(),
            version: expected,
        };
        let w = Write::Put {
            key,
            value: value.into(),
            ttl: Ttl::None,
            only: PutIf::Always,
        };
        Ok(match self.commit(vec![guard], vec![w])? {
            Outcome::Committed { lsn, .. } => lsn,
            Outcome::GuardFailed(_) => None,
        })
    }

    pub fn incr(&self, key: impl Into<Bytes>, by: i64) -> Result<i64> {
        let w = Write::Incr {
            key: key.into(),
            by,
        };
        match self.commit(Vec::new(), vec![w])? {
            Outcome::Committed { results, .. } => match results[0] {
                WriteResult::Int(v) => Ok(v),
                WriteResult::Failed(WriteError::Overflow) => Err(Error::Overflow),
                WriteResult::Failed(_) => Err(Error::NotAnInteger),
                ref other => unreachable!("incr yields an integer: {other:?}"),
            },
            other => unreachable!("no guards: {other:?}"),
        }
    }

    /// Checks `guards`, then applies `writes` in order, atomically: one WAL record, all or
    /// nothing after any crash. Returns once the writes are durable and visible. Blocks the
    /// calling thread; async code uses [`Engine::submit`] and awaits it.
    pub fn commit(&self, guards: Vec<Guard>, writes: Vec<Write>) -> Result<Outcome> {
        self.check_writes(&writes)?;
        self.commit_combined(None, guards, writes)
    }

    /// Like [`Core::commit`], under a client request id (P8). The first call with an id is
    /// decided and logged together with its outcome, even when it writes nothing; a retry with
    /// the same id, also after a crash and restart, returns that same outcome and applies
    /// nothing. Ids are remembered within `request_retention_count` and `request_retention_ms`.
    pub fn commit_request(
        &self,
        id: impl Into<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Outcome> {
        let id = check_id(id.into())?;
        self.check_writes(&writes)?;
        self.commit_combined(Some(id), guards, writes)
    }

    fn finish(&self, p: Prepared) -> Result<Outcome> {
        match p {
            Prepared::Done(o, after) => {
                if self.published.load(Ordering::Acquire) < after {
                    self.wal.wait_acked(after)?;
                    self.publish(after);
                }
                Ok(o)
            }
            Prepared::Wait(ticket, o) => {
                let lsns = ticket.wait()?;
                self.publish(*lsns.end());
                Ok(o)
            }
            Prepared::Retry(lsn, o) => {
                self.wait_for_retry(lsn)?;
                Ok(o)
            }
        }
    }

    /// A retry's original may not be durable yet: answer only once it is (P1).
    fn wait_for_retry(&self, lsn: Lsn) -> Result<()> {
        if self.wal.durable_lsn() < lsn {
            if self.opts.wal.sync_policy != keel_wal::SyncPolicy::Always {
                // Weaker policies sync late or never: force it. The sync is queued behind the
                // original's record, so it covers it.
                self.wal.sync()?;
            }
            self.wal.wait_durable(lsn)?;
        }
        self.publish(lsn);
        Ok(())
    }

    /// Decides the transaction and queues its record, under the sequencer lock.
    fn prepare(&self, id: Option<Bytes>, guards: &[Guard], writes: Vec<Write>) -> Result<Prepared> {
        self.check_writes(&writes)?;
        self.prepare_locked(&mut self.seq(), id, now_ms(), guards, writes, None)
    }

    /// Decides the transaction against `seq` and queues its record, its acknowledgement going to
    /// `done` if given.
    fn prepare_locked(
        &self,
        seq: &mut Seq,
        id: Option<Bytes>,
        now: u64,
        guards: &[Guard],
        writes: Vec<Write>,
        done: Option<&Arc<Completion>>,
    ) -> Result<Prepared> {
        if let Some((lsn, req)) = id.as_ref().and_then(|id| seq.requests.get(id)) {
            return Ok(Prepared::Retry(*lsn, req.outcome.clone()));
        }
        let (outcome, mutations) = {
            let vis = self.visible.read().unwrap_or_else(|p| p.into_inner());
            seq.recent.forget_up_to(vis.lsn);
            let view = View {
                recent: &seq.recent,
                visible: &vis,
            };
            decide(view, now, self.opts.value_bytes_max, guards, writes)
        };
        if mutations.is_empty() && id.is_none() {
            return Ok(Prepared::Done(outcome, seq.last_lsn));
        }
        let at_ms = now.max(seq.last_at_ms);
        let wrote = !mutations.is_empty();
        let request = id.map(|id| Request {
            id,
            at_ms,
            // A committed outcome with writes carries this record's LSN; the format says so.
            outcome: match &outcome {
                Outcome::Committed { results, .. } if wrote => Outcome::Committed {
                    lsn: Some(0),
                    results: results.clone(),
                },
                o => o.clone(),
            },
        });
        let ticket = self.log_locked(seq, at_ms, request.as_ref(), mutations, done)?;
        let lsn = *ticket.lsns().end();
        let outcome = match outcome {
            Outcome::Committed { results, .. } if wrote => Outcome::Committed {
                lsn: Some(lsn),
                results,
            },
            o => o,
        };
        if let Some(mut r) = request {
            r.outcome = outcome.clone();
            seq.requests.insert(lsn, r, &self.opts, now);
        }
        Ok(Prepared::Wait(ticket, outcome))
    }

    /// Makes every acknowledged transaction visible, in LSN order. Under the default
    /// `SyncPolicy::Always` acknowledged means durable (P10); under a weaker policy readers can
    /// see what a power cut may take away, as the user chose.
    /// Returns at once if `upto` is already visible: of the many writers one sync acknowledges,
    /// the first publishes for all, and the others take no lock.
    fn publish(&self, upto: Lsn) {
        if self.published.load(Ordering::Acquire) >= upto {
            return;
        }
        let mut q = lock(&self.unpublished);
        let durable = self.wal.last_lsn();
        if q.front().is_none_or(|u| u.lsn > durable) {
            return;
        }
        let mut v = self.visible.write().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|u| u.lsn <= durable) {
            let u = q.pop_front().expect("front exists");
            v.apply(&u.mutations, u.lsn, u.at_ms);
        }
        self.published.store(v.lsn, Ordering::Release);
    }

    fn check_writes(&self, writes: &[Write]) -> Result<()> {
        writes.iter().try_for_each(|w| self.check_limits(w))
    }

    fn check_limits(&self, w: &Write) -> Result<()> {
        if let Some(k) = w.keys().find(|k| k.len() > self.opts.key_bytes_max) {
            return Err(Error::KeyTooLarge {
                len: k.len(),
                max: self.opts.key_bytes_max,
            });
        }
        let value = match w {
            Write::Put { value, .. } => Some(value),
            Write::Append { suffix, .. } => Some(suffix),
            _ => None,
        };
        if let Some(v) = value.filter(|v| v.len() > self.opts.value_bytes_max) {
            return Err(Error::ValueTooLarge {
                len: v.len(),
                max: self.opts.value_bytes_max,
            });
        }
        Ok(())
    }

    /// Deletes up to `limit` keys whose expiry has passed, in one log record. Returns how many.
    /// Expired keys are never visible; this only frees their memory (the background thread
    /// calls it).
    pub fn remove_expired(&self, limit: usize) -> Result<usize> {
        let now = now_ms();
        let (ticket, n) = {
            let mut seq = self.seq();
            let mut mutations = Vec::new();
            {
                let vis = self.visible.read().unwrap_or_else(|p| p.into_inner());
                let seq = &mut *seq;
                while mutations.len() < limit && seq.expiry.first().is_some_and(|(t, _)| *t <= now)
                {
                    let (t, key) = seq.expiry.pop_first().expect("checked");
                    // Stale if the key was rewritten since.
                    if seq
                        .recent
                        .get(&vis, &key)
                        .is_some_and(|e| e.expires_at_ms == Some(t))
                    {
                        mutations.push(Mutation::Delete { key });
                    }
                }
            }
            if mutations.is_empty() {
                return Ok(0);
            }
            let n = mutations.len();
            let at_ms = now.max(seq.last_at_ms);
            (self.log_locked(&mut seq, at_ms, None, mutations, None)?, n)
        };
        let lsns = ticket.wait()?;
        self.publish(*lsns.end());
        Ok(n)
    }

    /// Logs one record under the held sequencer lock, then applies its mutations to the pending
    /// state and queues them for publication.
    fn log_locked(
        &self,
        seq: &mut Seq,
        at_ms: u64,
        request: Option<&Request>,
        mutations: Vec<Mutation>,
        done: Option<&Arc<Completion>>,
    ) -> Result<Ticket> {
        let mut rec = Vec::new();
        record::encode(at_ms, request, &mutations, &mut rec);
        // One transaction is one log record.
        let max = self.opts.wal.record_bytes_max as usize;
        if rec.len() > max {
            return Err(Error::TxnTooLarge {
                bytes: rec.len(),
                max,
            });
        }
        let bytes = rec.len() as u64;
        let ticket = match done {
            Some(done) => self.wal.submit_to(rec, done.clone())?,
            None => self.wal.submit(rec)?,
        };
        self.logged_since_checkpoint
            .fetch_add(bytes, Ordering::Relaxed);
        let lsn = *ticket.lsns().end();
        seq.last_at_ms = at_ms;
        seq.last_lsn = lsn;
        seq.track_expiry(&mutations);
        let mutations = Arc::new(mutations);
        seq.recent.record(&mutations, lsn);
        // Request-only records are published too, so the visible LSN moves in order.
        lock(&self.unpublished).push_back(Unpublished {
            lsn,
            at_ms,
            mutations,
        });
        Ok(ticket)
    }

    /// Waits, without blocking a thread, until the log would queue a transaction of about
    /// `bytes` without waiting for room: [`Engine::submit`] blocks its thread while the log's
    /// queue is full, which in async code stalls every task on that thread. Room is not
    /// reserved; another writer may take it first.
    pub fn room(&self, bytes: usize) -> keel_wal::RoomFuture {
        self.wal.room(bytes)
    }

    /// Makes every write decided so far durable, whatever the sync policy, and visible.
    /// Returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        let lsn = self.wal.sync()?;
        self.publish(lsn);
        Ok(lsn)
    }

    /// The LSN up to which every write is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.wal.durable_lsn()
    }

    /// The LSN of the last write readers can see.
    pub fn visible_lsn(&self) -> Lsn {
        self.visible.read().unwrap_or_else(|p| p.into_inner()).lsn
    }
}

fn check_id(id: Bytes) -> Result<Bytes> {
    if id.len() > REQUEST_ID_BYTES_MAX {
        return Err(Error::RequestIdTooLong {
            len: id.len(),
            max: REQUEST_ID_BYTES_MAX,
        });
    }
    Ok(id)
}
