//! The stores under test, behind one small trait, each opened in its best documented
//! configuration for "every put is durable before the call returns".

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Result};
use bytes::Bytes;

/// Every key is this long.
pub const KEY_BYTES: usize = 16;

/// One store as the benchmark drives it. `w` is the calling writer's index (0..writers), for
/// stores that keep something per writer (a connection, a file).
pub trait Store: Send + Sync {
    /// One put, durable before it returns.
    fn put(&self, w: usize, key: &[u8], value: &[u8]) -> Result<()>;
    /// Several puts as one atomic commit, durable before it returns.
    fn put_batch(&self, w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()>;
    /// Whether `key` is present: a read for the engines, for the plain logs whether it is the key
    /// of the last record that the open replayed.
    fn contains(&self, key: &[u8]) -> Result<bool>;
    /// Makes everything written so far durable (after a non-durable fill).
    fn sync(&self) -> Result<()> {
        Ok(())
    }
    /// Bytes of log the store holds in `dir`: by default the bytes its files use, not counting
    /// space reserved but not written (sparse or `fallocate`d past the end).
    fn log_bytes(&self, dir: &Path) -> Result<u64> {
        used_bytes(dir)
    }
}

/// Why a store is being opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Timed puts and batches with this many writers (also used by the honesty check).
    Bench { writers: usize },
    /// Filling the log for the recovery measurement: nothing checkpointed, flushed or compacted,
    /// and the fill itself need not be durable (a durable marker put ends it).
    Fill,
    /// Reopening after the kill: same configuration as `Fill`, timed by the caller.
    Recover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    KeelEngine,
    KeelWal,
    RocksDb,
    Sqlite,
    SqlitePerWriter,
    Redb,
    Fjall,
    OkayWal,
    Fdatasync,
}

pub const ALL: [Peer; 9] = [
    Peer::KeelEngine,
    Peer::KeelWal,
    Peer::RocksDb,
    Peer::Sqlite,
    Peer::SqlitePerWriter,
    Peer::Redb,
    Peer::Fjall,
    Peer::OkayWal,
    Peer::Fdatasync,
];

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter().copied().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|p| p.name()).collect();
            format!("unknown peer {s:?}; one of {}", names.join(", "))
        })
    }
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::KeelEngine => "keel-engine",
            Peer::KeelWal => "keel-wal",
            Peer::RocksDb => "rocksdb",
            Peer::Sqlite => "sqlite",
            Peer::SqlitePerWriter => "sqlite-per-writer",
            Peer::Redb => "redb",
            Peer::Fjall => "fjall",
            Peer::OkayWal => "okaywal",
            Peer::Fdatasync => "fdatasync",
        }
    }

    /// Whether this is a third-party engine (what the targets compare keel with), rather than
    /// keel itself or the physical baseline.
    pub fn is_external(self) -> bool {
        !matches!(self, Peer::KeelEngine | Peer::KeelWal | Peer::Fdatasync)
    }

    /// The durability setting, as shown in every table header.
    pub fn durability(self) -> &'static str {
        match self {
            Peer::KeelEngine => "SyncPolicy::Always (group commit, fdatasync)",
            Peer::KeelWal => "SyncPolicy::Always (group commit, fdatasync)",
            Peer::RocksDb => "WriteOptions::set_sync(true)",
            Peer::Sqlite => "WAL, synchronous=FULL, one connection",
            Peer::SqlitePerWriter => "WAL, synchronous=FULL, a connection per writer",
            Peer::Redb => "Durability::Immediate",
            Peer::Fjall => "PersistMode::SyncData per write",
            Peer::OkayWal => "commit() (own group commit, fsync)",
            Peer::Fdatasync => "pwrite + fdatasync, a file per writer",
        }
    }

    /// The configuration chosen beyond durability, and why.
    pub fn configuration(self) -> &'static str {
        match self {
            Peer::KeelEngine => "`Options::default()`: `Engine::put`, batches as one `Engine::commit`",
            Peer::KeelWal => "`Options::default()`: `Wal::append` of key+value, batches as one `append_batch`",
            Peer::RocksDb => "no compression (values are incompressible; also shortens the build); `enable_pipelined_write` (RocksDB's documented setting for concurrent writers); otherwise defaults, whose write path already groups concurrent writers into one WAL sync; batches as one `WriteBatch`",
            Peer::Sqlite => "`journal_mode=WAL` + `synchronous=FULL`; a `WITHOUT ROWID` table keyed by the 16-byte key; `INSERT OR REPLACE` through a cached prepared statement; one connection shared behind a mutex (SQLite serialises writers anyway, and a mutex queues them faster than its busy handler); batches in one `BEGIN IMMEDIATE` transaction",
            Peer::SqlitePerWriter => "as sqlite, but each writer has its own connection, `busy_timeout=60000`: the way many applications use it",
            Peer::Redb => "defaults; one write transaction per put with `Durability::Immediate` (the default, set explicitly); batches as one transaction",
            Peer::Fjall => "no compression (built without `lz4`); a write batch with `durability(Some(PersistMode::SyncData))` per put, and per batch",
            Peer::OkayWal => "`Configuration::default_for`; one entry per put (one chunk), one entry of 100 chunks per batch; the checkpointer acknowledges at once (no storage layer behind it)",
            Peer::Fdatasync => "the physical baseline, not a store: each writer overwrites its own pre-written file and calls fdatasync; no group commit",
        }
    }

    /// `None` if the peer has a log whose recovery can be timed; otherwise why not.
    pub fn no_recovery(self) -> Option<&'static str> {
        match self {
            Peer::Redb => Some("n/a (no log): copy-on-write B-tree; a commit writes the tree itself, nothing is replayed"),
            Peer::Fdatasync => Some("n/a (no log): a raw file, nothing to recover"),
            Peer::SqlitePerWriter => Some("same files and recovery as sqlite"),
            _ => None,
        }
    }

    pub fn available(self) -> Result<(), &'static str> {
        let built = match self {
            Peer::RocksDb => cfg!(feature = "peers"),
            p if p.is_external() => cfg!(feature = "peers-quick"),
            _ => true,
        };
        if built {
            Ok(())
        } else {
            Err("not built: keel-bench was built without `--features peers`")
        }
    }
}

/// Opens `peer` in `dir` (created if needed).
pub fn open(peer: Peer, dir: &Path, purpose: Purpose) -> Result<Box<dyn Store>> {
    if let Err(why) = peer.available() {
        bail!("{peer}: {why}");
    }
    std::fs::create_dir_all(dir)?;
    Ok(match peer {
        Peer::KeelEngine => Box::new(keel::KeelEngine::open(dir, purpose)?),
        Peer::KeelWal => Box::new(keel::KeelWal::open(dir, purpose)?),
        Peer::Fdatasync => Box::new(Fdatasync::open(dir, purpose)?),
        #[cfg(feature = "peers")]
        Peer::RocksDb => Box::new(rocks::Rocks::open(dir, purpose)?),
        #[cfg(feature = "peers-quick")]
        Peer::Sqlite => Box::new(ext::Sqlite::open(dir, purpose, false)?),
        #[cfg(feature = "peers-quick")]
        Peer::SqlitePerWriter => Box::new(ext::Sqlite::open(dir, purpose, true)?),
        #[cfg(feature = "peers-quick")]
        Peer::Redb => Box::new(ext::Redb::open(dir, purpose)?),
        #[cfg(feature = "peers-quick")]
        Peer::Fjall => Box::new(ext::Fjall::open(dir, purpose)?),
        #[cfg(feature = "peers-quick")]
        Peer::OkayWal => Box::new(ext::OkayWal::open(dir, purpose)?),
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked by available()"),
    })
}

/// Fills `store` until its log holds `bytes`, in batches of 1000 puts that need not be durable;
/// returns the number of puts and the log bytes.
pub fn fill(
    store: &dyn Store,
    dir: &Path,
    bytes: u64,
    mut progress: impl FnMut(u64),
) -> Result<(u64, u64)> {
    let mut n = 0u64;
    let mut batch = Vec::with_capacity(FILL_BATCH);
    loop {
        for _ in 0..16 {
            batch.clear();
            for _ in 0..FILL_BATCH {
                batch.push((
                    key(u32::MAX as usize, n).to_vec(),
                    value(u32::MAX as usize, n),
                ));
                n += 1;
            }
            store.put_batch(0, &batch)?;
        }
        let logged = store.log_bytes(dir)?;
        progress(logged);
        if logged >= bytes {
            return Ok((n, logged));
        }
    }
}

const FILL_BATCH: usize = 1000;

/// Bytes the files under `dir` use: per file the smaller of its length and its allocated blocks,
/// so that neither sparse nor `fallocate(KEEP_SIZE)` preallocation counts.
pub fn used_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for f in files_under(dir)? {
        if let Ok(m) = std::fs::metadata(&f) {
            total += m.len().min(m.blocks() * 512);
        }
    }
    Ok(total)
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// Drops `dir`'s files from the page cache, so that a reopen reads from the disk.
pub fn drop_cache(dir: &Path) -> Result<()> {
    for f in files_under(dir)? {
        if let Ok(file) = File::open(&f) {
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        }
    }
    Ok(())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Writer `w`'s `i`-th key: unique, in pseudo-random order (8 hashed bytes, then the writer and
/// the sequence number).
pub fn key(w: usize, i: u64) -> [u8; KEY_BYTES] {
    let id = ((w as u64) << 40) | i;
    let mut k = [0u8; KEY_BYTES];
    k[..8].copy_from_slice(&splitmix(id).to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Value bytes for every put.
pub const VALUE_BYTES: usize = 100;

/// An incompressible 100-byte value, different for every key.
pub fn value(w: usize, i: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_BYTES + 8);
    let mut s = ((w as u64) << 40) | i;
    while v.len() < VALUE_BYTES {
        s = splitmix(s);
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    v
}

/// The physical baseline: a file per writer, overwritten in place and fdatasync'd per put.
struct Fdatasync {
    files: Vec<File>,
    file_bytes: u64,
    next: Vec<Mutex<u64>>,
    /// On reopen, file 0's contents.
    reopened: Option<Vec<u8>>,
}

/// Bytes pre-written across all of the baseline's files.
const PREWRITE_BYTES: u64 = 64 << 20;

impl Fdatasync {
    fn open(dir: &Path, purpose: Purpose) -> Result<Self> {
        let writers = match purpose {
            Purpose::Bench { writers } => writers,
            Purpose::Fill | Purpose::Recover => 1,
        };
        let file_bytes = (PREWRITE_BYTES / writers as u64).max(1 << 20);
        let mut files = Vec::new();
        let mut reopened = None;
        for t in 0..writers {
            let path = dir.join(format!("raw-{t}"));
            if path.exists() {
                let f = OpenOptions::new().read(true).write(true).open(&path)?;
                if t == 0 {
                    reopened = Some(std::fs::read(&path)?);
                }
                files.push(f);
                continue;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < file_bytes {
                f.write_all_at(&zeros, at)?;
                at += zeros.len() as u64;
            }
            f.sync_all()?;
            files.push(f);
        }
        File::open(dir)?.sync_all()?;
        Ok(Fdatasync {
            next: (0..writers).map(|_| Mutex::new(0)).collect(),
            files,
            file_bytes,
            reopened,
        })
    }

    fn write(&self, w: usize, buf: &[u8]) -> Result<()> {
        let mut next = self.next[w].lock().unwrap_or_else(|p| p.into_inner());
        if *next + buf.len() as u64 > self.file_bytes {
            *next = 0;
        }
        self.files[w].write_all_at(buf, *next)?;
        rustix::fs::fdatasync(&self.files[w])?;
        *next += buf.len() as u64;
        Ok(())
    }
}

impl Store for Fdatasync {
    fn put(&self, w: usize, key: &[u8], value: &[u8]) -> Result<()> {
        let mut buf = Vec::with_capacity(key.len() + value.len());
        buf.extend_from_slice(key);
        buf.extend_from_slice(value);
        self.write(w, &buf)
    }

    fn put_batch(&self, w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let mut buf = Vec::new();
        for (k, v) in kvs {
            buf.extend_from_slice(k);
            buf.extend_from_slice(v);
        }
        self.write(w, &buf)
    }

    fn contains(&self, key: &[u8]) -> Result<bool> {
        let Some(data) = &self.reopened else {
            bail!("fdatasync: contains() only after a reopen");
        };
        Ok(data.windows(key.len()).any(|x| x == key))
    }
}

mod keel {
    use super::*;
    use keel_engine::{Engine, PutIf, Ttl, Write};
    use keel_wal::{SyncPolicy, Wal};

    pub struct KeelEngine {
        engine: Engine,
    }

    fn engine_options(purpose: Purpose) -> keel_engine::Options {
        match purpose {
            Purpose::Bench { .. } => keel_engine::Options::default(),
            // Nothing checkpointed: recovery replays the whole log.
            Purpose::Fill | Purpose::Recover => keel_engine::Options {
                wal: keel_wal::Options {
                    sync_policy: if purpose == Purpose::Fill {
                        SyncPolicy::Never
                    } else {
                        SyncPolicy::Always
                    },
                    ..keel_wal::Options::default()
                },
                background: false,
                checkpoint_log_bytes: 0,
                checkpoint_interval: None,
                ..keel_engine::Options::default()
            },
        }
    }

    impl KeelEngine {
        pub fn open(dir: &Path, purpose: Purpose) -> Result<Self> {
            let (engine, _) = Engine::open(dir, engine_options(purpose))?;
            Ok(KeelEngine { engine })
        }
    }

    fn put(key: &[u8], value: &[u8]) -> Write {
        Write::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ttl: Ttl::None,
            only: PutIf::Always,
        }
    }

    impl Store for KeelEngine {
        fn put(&self, _w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            self.engine
                .put(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value))?;
            Ok(())
        }

        fn put_batch(&self, _w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let writes = kvs.iter().map(|(k, v)| put(k, v)).collect();
            self.engine.commit(Vec::new(), writes)?;
            Ok(())
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            Ok(self.engine.get(key).is_some())
        }

        fn sync(&self) -> Result<()> {
            self.engine.sync()?;
            Ok(())
        }

        /// Bytes appended to the log (its segments are preallocated with `fallocate`).
        fn log_bytes(&self, _dir: &Path) -> Result<u64> {
            Ok(self.engine.wal_stats().bytes_written)
        }
    }

    pub struct KeelWal {
        wal: Wal,
        last: Option<Vec<u8>>,
    }

    impl KeelWal {
        pub fn open(dir: &Path, purpose: Purpose) -> Result<Self> {
            let opts = keel_wal::Options {
                sync_policy: if purpose == Purpose::Fill {
                    SyncPolicy::Never
                } else {
                    SyncPolicy::Always
                },
                ..keel_wal::Options::default()
            };
            let (wal, _) = Wal::open(dir, opts)?;
            // Replay what the log holds, as an application on top of it would.
            let mut last = None;
            if wal.last_lsn() >= wal.first_lsn() {
                for r in wal.read_from(wal.first_lsn())? {
                    let r = r?;
                    last = Some(r.payload[..KEY_BYTES.min(r.payload.len())].to_vec());
                }
            }
            Ok(KeelWal { wal, last })
        }
    }

    impl Store for KeelWal {
        fn put(&self, _w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            let mut rec = Vec::with_capacity(key.len() + value.len());
            rec.extend_from_slice(key);
            rec.extend_from_slice(value);
            self.wal.append(&rec)?;
            Ok(())
        }

        fn put_batch(&self, _w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let recs: Vec<Vec<u8>> = kvs.iter().map(|(k, v)| [&k[..], &v[..]].concat()).collect();
            self.wal.append_batch(&recs)?;
            Ok(())
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            Ok(self.last.as_deref() == Some(key))
        }

        fn sync(&self) -> Result<()> {
            self.wal.sync()?;
            Ok(())
        }

        /// Bytes appended to the log (its segments are preallocated with `fallocate`).
        fn log_bytes(&self, _dir: &Path) -> Result<u64> {
            Ok(self.wal.stats().bytes_written)
        }
    }
}

#[cfg(feature = "peers-quick")]
mod ext {
    use super::*;
    use anyhow::Context;
    use redb::ReadableDatabase as _;
    use std::sync::Arc;

    pub struct Sqlite {
        conns: Vec<Mutex<rusqlite::Connection>>,
    }

    const UPSERT: &str = "INSERT OR REPLACE INTO kv(k, v) VALUES (?1, ?2)";

    impl Sqlite {
        pub fn open(dir: &Path, purpose: Purpose, per_writer: bool) -> Result<Self> {
            let n = match purpose {
                Purpose::Bench { writers } if per_writer => writers,
                _ => 1,
            };
            let path = dir.join("kv.sqlite");
            let mut conns = Vec::new();
            for i in 0..n {
                let c = rusqlite::Connection::open(&path)?;
                c.busy_timeout(std::time::Duration::from_secs(60))?;
                let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
                if mode != "wal" {
                    bail!("sqlite: journal_mode is {mode}, not wal");
                }
                c.execute_batch("PRAGMA synchronous=FULL")?;
                if !matches!(purpose, Purpose::Bench { .. }) {
                    // Keep the whole fill in the WAL.
                    c.execute_batch("PRAGMA wal_autocheckpoint=0")?;
                }
                if purpose == Purpose::Fill {
                    c.execute_batch("PRAGMA synchronous=OFF")?;
                }
                if i == 0 {
                    c.execute_batch(
                        "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
                    )?;
                }
                let s: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                if purpose != Purpose::Fill && s != 2 {
                    bail!("sqlite: synchronous is {s}, not FULL (2)");
                }
                conns.push(Mutex::new(c));
            }
            Ok(Sqlite { conns })
        }

        fn conn(&self, w: usize) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
            self.conns[w % self.conns.len()]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        }
    }

    impl Store for Sqlite {
        fn put(&self, w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            let c = self.conn(w);
            c.prepare_cached(UPSERT)?.execute((key, value))?;
            Ok(())
        }

        fn put_batch(&self, w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let mut c = self.conn(w);
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(UPSERT)?;
                for (k, v) in kvs {
                    st.execute((k, v))?;
                }
            }
            tx.commit()?;
            Ok(())
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            let c = self.conn(0);
            let n: i64 =
                c.query_row("SELECT count(*) FROM kv WHERE k = ?1", [key], |r| r.get(0))?;
            Ok(n > 0)
        }
    }

    const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

    pub struct Redb {
        db: redb::Database,
    }

    impl Redb {
        pub fn open(dir: &Path, _purpose: Purpose) -> Result<Self> {
            let db = redb::Database::create(dir.join("kv.redb"))?;
            Ok(Redb { db })
        }

        fn commit(&self, kvs: &[(&[u8], &[u8])]) -> Result<()> {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(redb::Durability::Immediate)?;
            {
                let mut t = tx.open_table(TABLE)?;
                for (k, v) in kvs {
                    t.insert(*k, *v)?;
                }
            }
            tx.commit()?;
            Ok(())
        }
    }

    impl Store for Redb {
        fn put(&self, _w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            self.commit(&[(key, value)])
        }

        fn put_batch(&self, _w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let kvs: Vec<(&[u8], &[u8])> = kvs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            self.commit(&kvs)
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            let tx = self.db.begin_read()?;
            let t = match tx.open_table(TABLE) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.is_some())
        }
    }

    pub struct Fjall {
        db: fjall::Database,
        ks: fjall::Keyspace,
        mode: Option<fjall::PersistMode>,
    }

    impl Fjall {
        pub fn open(dir: &Path, purpose: Purpose) -> Result<Self> {
            let mut b = fjall::Database::builder(dir);
            let mut ko = fjall::KeyspaceCreateOptions::default();
            if !matches!(purpose, Purpose::Bench { .. }) {
                // Keep the whole fill in the journal: no memtable flush.
                b = b.max_journaling_size(16 << 30);
                ko = ko.max_memtable_size(8 << 30);
            }
            let db = b.open()?;
            let ks = db.keyspace("kv", move || ko)?;
            let mode = match purpose {
                Purpose::Fill => None,
                _ => Some(fjall::PersistMode::SyncData),
            };
            Ok(Fjall { db, ks, mode })
        }
    }

    impl Store for Fjall {
        fn put(&self, _w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            let mut b = self
                .db
                .batch()
                .durability(Some(fjall::PersistMode::SyncData));
            b.insert(&self.ks, key, value);
            b.commit()?;
            Ok(())
        }

        fn put_batch(&self, _w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let mut b = self.db.batch().durability(self.mode);
            for (k, v) in kvs {
                b.insert(&self.ks, &k[..], &v[..]);
            }
            b.commit()?;
            Ok(())
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            Ok(self.ks.get(key)?.is_some())
        }

        fn sync(&self) -> Result<()> {
            self.db.persist(fjall::PersistMode::SyncData)?;
            Ok(())
        }
    }

    /// Replays every entry on recovery, remembering the last chunk's key; checkpoints are
    /// acknowledged at once (there is no storage layer behind this log).
    #[derive(Debug, Default)]
    struct Manager {
        last: Arc<Mutex<Option<Vec<u8>>>>,
    }

    impl okaywal::LogManager for Manager {
        fn recover(&mut self, entry: &mut okaywal::Entry<'_>) -> std::io::Result<()> {
            if let Some(chunks) = entry.read_all_chunks()? {
                if let Some(c) = chunks.last() {
                    *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(c[..KEY_BYTES.min(c.len())].to_vec());
                }
            }
            Ok(())
        }

        fn checkpoint_to(
            &mut self,
            _last_checkpointed_id: okaywal::EntryId,
            _checkpointed_entries: &mut okaywal::SegmentReader,
            _wal: &okaywal::WriteAheadLog,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub struct OkayWal {
        wal: okaywal::WriteAheadLog,
        last: Arc<Mutex<Option<Vec<u8>>>>,
    }

    impl OkayWal {
        pub fn open(dir: &Path, purpose: Purpose) -> Result<Self> {
            let mut cfg = okaywal::Configuration::default_for(dir);
            if !matches!(purpose, Purpose::Bench { .. }) {
                // Nothing checkpointed: recovery replays the whole fill.
                cfg = cfg.checkpoint_after_bytes(16 << 30);
            }
            let m = Manager::default();
            let last = m.last.clone();
            let wal = cfg.open(m).context("okaywal open")?;
            Ok(OkayWal { wal, last })
        }

        fn entry(&self, chunks: &[&[u8]]) -> Result<()> {
            let mut e = self.wal.begin_entry()?;
            for c in chunks {
                e.write_chunk(c)?;
            }
            e.commit()?;
            Ok(())
        }
    }

    impl Store for OkayWal {
        fn put(&self, _w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            self.entry(&[&[key, value].concat()])
        }

        fn put_batch(&self, _w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let recs: Vec<Vec<u8>> = kvs.iter().map(|(k, v)| [&k[..], &v[..]].concat()).collect();
            let refs: Vec<&[u8]> = recs.iter().map(|r| &r[..]).collect();
            self.entry(&refs)
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            Ok(self
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref()
                == Some(key))
        }
    }
}

#[cfg(feature = "peers")]
mod rocks {
    use super::*;

    pub struct Rocks {
        db: rocksdb::DB,
        /// For puts: always sync.
        sync: rocksdb::WriteOptions,
        /// For batches: sync, except in the fill.
        batch: rocksdb::WriteOptions,
    }

    impl Rocks {
        pub fn open(dir: &Path, purpose: Purpose) -> Result<Self> {
            let mut o = rocksdb::Options::default();
            o.create_if_missing(true);
            o.set_compression_type(rocksdb::DBCompressionType::None);
            o.set_enable_pipelined_write(true);
            o.increase_parallelism(2);
            if !matches!(purpose, Purpose::Bench { .. }) {
                // Keep the whole fill in the WAL: no memtable flush, no WAL-size-triggered flush.
                o.set_write_buffer_size(8 << 30);
                o.set_max_total_wal_size(16 << 30);
                o.set_db_write_buffer_size(0);
            }
            let db = rocksdb::DB::open(&o, dir)?;
            let mut sync = rocksdb::WriteOptions::default();
            sync.set_sync(true);
            let mut batch = rocksdb::WriteOptions::default();
            batch.set_sync(purpose != Purpose::Fill);
            Ok(Rocks { db, sync, batch })
        }
    }

    impl Store for Rocks {
        fn put(&self, _w: usize, key: &[u8], value: &[u8]) -> Result<()> {
            self.db.put_opt(key, value, &self.sync)?;
            Ok(())
        }

        fn put_batch(&self, _w: usize, kvs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
            let mut b = rocksdb::WriteBatch::default();
            for (k, v) in kvs {
                b.put(k, v);
            }
            self.db.write_opt(b, &self.batch)?;
            Ok(())
        }

        fn contains(&self, key: &[u8]) -> Result<bool> {
            Ok(self.db.get_pinned(key)?.is_some())
        }
    }
}
