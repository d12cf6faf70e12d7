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
//! and only then prunes the log (P6). Recovery loads the snapshot the manifest names and replays
//! only the log after it (P7). [`Engine::commit_request`] makes retries idempotent (P8).
//! Point-in-time restore, backup and automatic checkpoint triggers are not built yet.
#![forbid(unsafe_code)]

pub mod record;
pub mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use imbl::OrdMap;
use keel_wal::fs::{
    durable_create_dir_all, durable_remove, durable_rename, durable_replace, write_all_at,
};
use keel_wal::{Fs, Lsn, OpenMode, RecoveryReport, Wal};

use snapshot::{FileError, Manifest, MANIFEST, SNAPSHOT_DIR};

pub use record::{Mutation, RecordError, Request, REQUEST_ID_BYTES_MAX};

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

type Map = OrdMap<Bytes, Entry>;

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

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.live(self.now_ms))
    }

    /// Live entries in `range`, in key order, at most `limit`.
    pub fn scan<R: RangeBounds<Bytes>>(&self, range: R, limit: usize) -> Vec<(Bytes, Entry)> {
        self.map
            .range(range)
            .filter(|(_, e)| e.live(self.now_ms))
            .take(limit)
            .map(|(k, e)| (k.clone(), e.clone()))
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
            Some(a) => Bound::Excluded(Bytes::copy_from_slice(a)),
            None => Bound::Included(Bytes::copy_from_slice(prefix)),
        };
        self.map
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(self.now_ms))
            .take(limit)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Number of live keys. O(n) when some keys carry an expiry.
    pub fn count(&self) -> usize {
        self.map.values().filter(|e| e.live(self.now_ms)).count()
    }
}

/// When a put applies.
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

/// One write in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put {
        key: Bytes,
        value: Bytes,
        ttl: Ttl,
        only: PutIf,
    },
    Delete {
        key: Bytes,
    },
    /// Adds `by` to a decimal integer value (absent counts as 0). Logs the result, not `by`.
    Incr {
        key: Bytes,
        by: i64,
    },
    /// Sets (`Some`) or removes (`None`) the expiry of a live key.
    Expire {
        key: Bytes,
        at_ms: Option<u64>,
    },
    DeleteAll,
}

/// A precondition checked before any write: the key's current version (`None`: no live value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub key: Bytes,
    pub version: Option<Lsn>,
}

/// What one write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// A put; `false` when its condition (`PutIf`) did not hold.
    Put(bool),
    /// A delete or an expiry change; whether the key had a live value.
    Existed(bool),
    /// The value an increment produced.
    Int(i64),
    DeletedAll,
}

/// The outcome of a transaction.
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
    /// The log does not continue where the snapshot ends: records are missing.
    #[error("the snapshot covers up to LSN {snapshot_lsn}, but the log {detail}; records are missing and the database refuses to open")]
    Gap { snapshot_lsn: Lsn, detail: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Engine configuration.
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wal: keel_wal::Options::default(),
            key_bytes_max: 64 << 10,
            value_bytes_max: 8 << 20,
            request_retention_count: 100_000,
            request_retention_ms: 24 * 3600 * 1000,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn apply(map: &mut Map, mutations: &[Mutation], lsn: Lsn) {
    for m in mutations {
        match m {
            Mutation::Set {
                key,
                value,
                expires_at_ms,
            } => {
                map.insert(
                    key.clone(),
                    Entry {
                        value: value.clone(),
                        version: lsn,
                        expires_at_ms: *expires_at_ms,
                    },
                );
            }
            Mutation::Delete { key } => {
                map.remove(key);
            }
            Mutation::DeleteAll => map.clear(),
        }
    }
}

fn read_all(fs: &dyn Fs, path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = fs.open(path, OpenMode::Read).map_err(io("open", path))?;
    let len = f.len().map_err(io("stat", path))?;
    if len > max {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            source: FileError::Mismatch {
                field: "file length",
                expected: max,
                found: len,
            },
        });
    }
    let mut b = vec![0u8; len as usize];
    keel_wal::fs::read_exact_at(&*f, &mut b, 0).map_err(io("read", path))?;
    Ok(b)
}

fn read_manifest(fs: &dyn Fs, dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    if !fs.exists(&path).map_err(io("stat", &path))? {
        return Ok(Manifest::default());
    }
    let b = read_all(fs, &path, snapshot::MANIFEST_BYTES as u64)?;
    Manifest::decode(&b).map_err(|source| Error::BadFile { path, source })
}

fn read_snapshot(fs: &dyn Fs, dir: &Path, m: &Manifest) -> Result<(Map, Vec<(Lsn, Request)>)> {
    let path = snapshot::snapshot_path(dir, m.snapshot_lsn);
    // The manifest's length bounds the allocation; the file must have exactly that length.
    let b = read_all(fs, &path, m.snapshot_bytes)?;
    snapshot::decode_snapshot(&Bytes::from(b), m).map_err(|source| Error::BadFile { path, source })
}

/// Removes what a crash can leave behind: snapshot files the manifest does not name (a newer one
/// never committed, an older one not yet deleted, temporaries) and a temporary manifest.
fn remove_stale_snapshots(fs: &dyn Fs, dir: &Path, current: Lsn) -> Result<()> {
    let sdir = dir.join(SNAPSHOT_DIR);
    if fs.exists(&sdir).map_err(io("stat", &sdir))? {
        let keep = snapshot::snapshot_name(current);
        for name in fs.read_dir(&sdir).map_err(io("list", &sdir))? {
            if name != keep && name.starts_with("snap-") {
                let p = sdir.join(&name);
                durable_remove(fs, &p).map_err(io("remove stale snapshot", &p))?;
            }
        }
    }
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    if fs.exists(&tmp).map_err(io("stat", &tmp))? {
        durable_remove(fs, &tmp).map_err(io("remove", &tmp))?;
    }
    Ok(())
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

    fn insert(&mut self, lsn: Lsn, req: Request, opts: &Options, now: u64) {
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
    map: Map,
    requests: Requests,
}

struct Visible {
    map: Map,
    lsn: Lsn,
}

/// Decides a transaction against `state`: the guards, then every write against the state the
/// earlier writes leave. Returns the outcome (without an LSN) and the absolute effects to log.
fn decide(
    state: &Map,
    now: u64,
    guards: &[Guard],
    writes: Vec<Write>,
) -> Result<(Outcome, Vec<Mutation>)> {
    let live = |m: &Map, k: &[u8]| m.get(k).filter(|e| e.live(now)).cloned();
    for (i, g) in guards.iter().enumerate() {
        if live(state, &g.key).map(|e| e.version) != g.version {
            return Ok((Outcome::GuardFailed(i), Vec::new()));
        }
    }
    let mut work = state.clone();
    let mut mutations = Vec::new();
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        let (result, m) = match w {
            Write::Put {
                key,
                value,
                ttl,
                only,
            } => {
                let old = live(&work, &key);
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
                (
                    WriteResult::Put(go),
                    go.then_some(Mutation::Set {
                        key,
                        value,
                        expires_at_ms,
                    }),
                )
            }
            Write::Delete { key } => {
                let existed = live(&work, &key).is_some();
                (
                    WriteResult::Existed(existed),
                    existed.then_some(Mutation::Delete { key }),
                )
            }
            Write::Incr { key, by } => {
                let old = live(&work, &key);
                let cur = match &old {
                    None => 0,
                    Some(e) => std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or(Error::NotAnInteger)?,
                };
                let new = cur.checked_add(by).ok_or(Error::Overflow)?;
                let m = Mutation::Set {
                    key,
                    value: Bytes::from(new.to_string()),
                    expires_at_ms: old.and_then(|e| e.expires_at_ms),
                };
                (WriteResult::Int(new), Some(m))
            }
            Write::Expire { key, at_ms } => match live(&work, &key) {
                Some(e) => (
                    WriteResult::Existed(true),
                    Some(Mutation::Set {
                        key,
                        value: e.value,
                        expires_at_ms: at_ms,
                    }),
                ),
                None => (WriteResult::Existed(false), None),
            },
            Write::DeleteAll => (WriteResult::DeletedAll, Some(Mutation::DeleteAll)),
        };
        if let Some(m) = m {
            // Versions inside `work` are provisional (0): only `live` and values are read from it.
            apply(&mut work, std::slice::from_ref(&m), 0);
            mutations.push(m);
        }
        results.push(result);
    }
    Ok((Outcome::Committed { lsn: None, results }, mutations))
}

/// The embedded engine. Share it by reference or `Arc`; every method takes `&self`.
pub struct Engine {
    opts: Options,
    dir: PathBuf,
    wal: Wal,
    /// The manifest in force; held while a checkpoint runs, so checkpoints do not overlap.
    manifest: Mutex<Manifest>,
    /// Every decided transaction, durable or not. Held while deciding and submitting, so that LSN
    /// order is decision order.
    pending: Mutex<Seq>,
    /// Decided transactions not yet visible, in LSN order.
    unpublished: Mutex<VecDeque<(Lsn, Arc<Vec<Mutation>>)>>,
    visible: RwLock<Visible>,
}

impl Engine {
    /// Opens (or creates) the engine in `dir`, replaying the log in `dir/wal/`. (`dir` will also
    /// hold the manifest and snapshots.)
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<(Engine, RecoveryReport)> {
        let max_record = opts.wal.record_bytes_max as usize;
        if opts.key_bytes_max + opts.value_bytes_max + 32 > max_record {
            return Err(Error::InvalidOptions(format!(
                "key_bytes_max ({}) + value_bytes_max ({}) must fit in the log's record_bytes_max ({max_record})",
                opts.key_bytes_max, opts.value_bytes_max
            )));
        }
        let dir = dir.as_ref().to_path_buf();
        let fs = opts.wal.fs.clone();
        durable_create_dir_all(&*fs, &dir).map_err(io("create directory", &dir))?;
        let manifest = read_manifest(&*fs, &dir)?;
        let now = now_ms();
        let mut requests = Requests::default();
        let (mut map, snapshot_lsn) = match manifest.snapshot_lsn {
            0 => (Map::new(), 0),
            lsn => {
                let (map, reqs) = read_snapshot(&*fs, &dir, &manifest)?;
                for (l, r) in reqs {
                    requests.insert(l, r, &opts, now);
                }
                (map, lsn)
            }
        };
        let (wal, report) = Wal::open(dir.join(WAL_DIR), opts.wal.clone())?;
        let (first, last) = (wal.first_lsn(), wal.last_lsn());
        // P4 between snapshot and log: the log must continue exactly where the snapshot ends.
        if first > snapshot_lsn + 1 {
            return Err(Error::Gap {
                snapshot_lsn,
                detail: format!("starts at LSN {first}"),
            });
        }
        if last < snapshot_lsn {
            return Err(Error::Gap {
                snapshot_lsn,
                detail: format!("ends at LSN {last}"),
            });
        }
        // P7: records the snapshot already holds are skipped.
        let mut applied = snapshot_lsn.max(first - 1);
        for rec in wal.read_from(applied + 1)? {
            let rec = rec?;
            let decoded = record::decode(&Bytes::from(rec.payload), rec.lsn).map_err(|source| {
                Error::BadRecord {
                    lsn: rec.lsn,
                    source,
                }
            })?;
            apply(&mut map, &decoded.mutations, rec.lsn);
            if let Some(r) = decoded.request {
                requests.insert(rec.lsn, r, &opts, now);
            }
            applied = rec.lsn;
        }
        remove_stale_snapshots(&*fs, &dir, snapshot_lsn)?;
        Ok((
            Engine {
                opts,
                dir,
                wal,
                manifest: Mutex::new(manifest),
                pending: Mutex::new(Seq {
                    map: map.clone(),
                    requests,
                }),
                unpublished: Mutex::new(VecDeque::new()),
                visible: RwLock::new(Visible { map, lsn: applied }),
            },
            report,
        ))
    }

    /// Writes a snapshot of the durable state and makes it current, then prunes the log it
    /// covers. Writers are not blocked: the snapshot is an O(1) clone of the visible state.
    ///
    /// Order (P6): the snapshot holds only durable writes; it is written to a temporary file,
    /// synced, renamed and its directory synced; then the manifest is replaced atomically; only
    /// then are log segments and the previous snapshot removed. Returns the snapshot's LSN.
    pub fn checkpoint(&self) -> Result<Lsn> {
        let mut current = lock(&self.manifest);
        let (map, lsn) = {
            let v = self.visible.read().unwrap_or_else(|p| p.into_inner());
            (v.map.clone(), v.lsn)
        };
        if lsn == current.snapshot_lsn {
            return Ok(lsn);
        }
        let fs = &*self.opts.wal.fs;
        let sdir = self.dir.join(SNAPSHOT_DIR);
        durable_create_dir_all(fs, &sdir).map_err(io("create directory", &sdir))?;
        let requests = lock(&self.pending).requests.up_to(lsn);
        let (bytes, crc) = snapshot::encode_snapshot(&map, &requests, lsn);
        let path = snapshot::snapshot_path(&self.dir, lsn);
        let tmp = path.with_extension("tmp");
        let f = fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(io("create snapshot", &tmp))?;
        write_all_at(&*f, &bytes, 0).map_err(io("write snapshot", &tmp))?;
        f.sync_all().map_err(io("sync snapshot", &tmp))?;
        drop(f);
        durable_rename(fs, &tmp, &path).map_err(io("rename snapshot", &tmp))?;
        let next = Manifest {
            snapshot_lsn: lsn,
            snapshot_bytes: bytes.len() as u64,
            snapshot_crc: crc,
        };
        let mpath = self.dir.join(MANIFEST);
        durable_replace(fs, &mpath, &next.encode()).map_err(io("replace manifest", &mpath))?;
        let previous = std::mem::replace(&mut *current, next);
        self.wal.prune_before(lsn + 1)?;
        if previous.snapshot_lsn > 0 {
            let old = snapshot::snapshot_path(&self.dir, previous.snapshot_lsn);
            durable_remove(fs, &old).map_err(io("remove old snapshot", &old))?;
        }
        Ok(lsn)
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

    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        let v = self.visible.read().unwrap_or_else(|p| p.into_inner());
        v.map.get(key).filter(|e| e.live(now_ms())).cloned()
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
        match self.commit(
            Vec::new(),
            vec![Write::Incr {
                key: key.into(),
                by,
            }],
        )? {
            Outcome::Committed { results, .. } => match results[0] {
                WriteResult::Int(v) => Ok(v),
                ref other => unreachable!("incr yields an integer: {other:?}"),
            },
            other => unreachable!("no guards: {other:?}"),
        }
    }

    /// Checks `guards`, then applies `writes` in order, atomically: one WAL record, all or
    /// nothing after any crash. Returns once the writes are durable and visible.
    pub fn commit(&self, guards: Vec<Guard>, writes: Vec<Write>) -> Result<Outcome> {
        self.commit_inner(None, guards, writes)
    }

    /// Like [`Engine::commit`], under a client request id (P8). The first call with an id is
    /// decided and logged together with its outcome, even when it writes nothing; a retry with
    /// the same id, also after a crash and restart, returns that same outcome and applies
    /// nothing. Ids are remembered within `request_retention_count` and `request_retention_ms`.
    pub fn commit_request(
        &self,
        id: impl Into<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Outcome> {
        let id = id.into();
        if id.len() > REQUEST_ID_BYTES_MAX {
            return Err(Error::RequestIdTooLong {
                len: id.len(),
                max: REQUEST_ID_BYTES_MAX,
            });
        }
        self.commit_inner(Some(id), guards, writes)
    }

    fn commit_inner(
        &self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> Result<Outcome> {
        for w in &writes {
            self.check_limits(w)?;
        }
        let mut seq = lock(&self.pending);
        if let Some((lsn, req)) = id.as_ref().and_then(|id| seq.requests.get(id)) {
            // A retry. The original may not be durable yet: answer only once it is (P1).
            let (lsn, outcome) = (*lsn, req.outcome.clone());
            drop(seq);
            if self.opts.wal.sync_policy != keel_wal::SyncPolicy::Always {
                // Weaker policies sync late or never: force it. The sync is queued behind the
                // original's record, so it covers it.
                self.wal.sync()?;
            }
            self.wal.wait_durable(lsn)?;
            self.publish();
            return Ok(outcome);
        }
        let now = now_ms();
        let (outcome, mutations) = decide(&seq.map, now, &guards, writes)?;
        if mutations.is_empty() && id.is_none() {
            return Ok(outcome);
        }
        let request = id.map(|id| Request {
            id,
            at_ms: now,
            // A committed outcome with writes carries this record's LSN; the format says so.
            outcome: match &outcome {
                Outcome::Committed { results, .. } if !mutations.is_empty() => Outcome::Committed {
                    lsn: Some(0),
                    results: results.clone(),
                },
                o => o.clone(),
            },
        });
        let mut rec = Vec::new();
        record::encode(request.as_ref(), &mutations, &mut rec);
        // One transaction is one log record.
        let max = self.opts.wal.record_bytes_max as usize;
        if rec.len() > max {
            return Err(Error::TxnTooLarge {
                bytes: rec.len(),
                max,
            });
        }
        let ticket = self.wal.submit(rec)?;
        let lsn = *ticket.lsns().end();
        let outcome = match outcome {
            Outcome::Committed { results, .. } if !mutations.is_empty() => Outcome::Committed {
                lsn: Some(lsn),
                results,
            },
            o => o,
        };
        if let Some(mut r) = request {
            r.outcome = outcome.clone();
            seq.requests.insert(lsn, r, &self.opts, now);
        }
        let mutations = Arc::new(mutations);
        apply(&mut seq.map, &mutations, lsn);
        // Request-only records are published too, so the visible LSN moves in order.
        lock(&self.unpublished).push_back((lsn, mutations));
        drop(seq);

        ticket.wait()?;
        self.publish();
        Ok(outcome)
    }

    /// Makes every acknowledged transaction visible, in LSN order. Under the default
    /// `SyncPolicy::Always` acknowledged means durable (P10); under a weaker policy readers can
    /// see what a power cut may take away, as the user chose.
    fn publish(&self) {
        let mut q = lock(&self.unpublished);
        let durable = self.wal.last_lsn();
        if q.front().is_none_or(|(l, _)| *l > durable) {
            return;
        }
        let mut v = self.visible.write().unwrap_or_else(|p| p.into_inner());
        while let Some((lsn, _)) = q.front() {
            if *lsn > durable {
                break;
            }
            let (lsn, m) = q.pop_front().expect("front exists");
            apply(&mut v.map, &m, lsn);
            v.lsn = lsn;
        }
    }

    fn check_limits(&self, w: &Write) -> Result<()> {
        let (key, value) = match w {
            Write::Put { key, value, .. } => (Some(key), Some(value)),
            Write::Delete { key } | Write::Incr { key, .. } | Write::Expire { key, .. } => {
                (Some(key), None)
            }
            Write::DeleteAll => (None, None),
        };
        if let Some(k) = key.filter(|k| k.len() > self.opts.key_bytes_max) {
            return Err(Error::KeyTooLarge {
                len: k.len(),
                max: self.opts.key_bytes_max,
            });
        }
        if let Some(v) = value.filter(|v| v.len() > self.opts.value_bytes_max) {
            return Err(Error::ValueTooLarge {
                len: v.len(),
                max: self.opts.value_bytes_max,
            });
        }
        Ok(())
    }

    /// The LSN up to which every write is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.wal.durable_lsn()
    }

    pub fn close(self) -> Result<()> {
        Ok(self.wal.close()?)
    }
}
