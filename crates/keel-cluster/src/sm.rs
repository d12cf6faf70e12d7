//! The state machine on keel-engine.
//!
//! Each applied entry is one engine transaction, decided at the time the leader gave it, that
//! also writes the entry's log id into the engine's system namespace (and, for membership
//! entries, the membership). The applied log id is so made durable atomically with the state it
//! describes, and a restart applies nothing twice. The system namespace is apart from the user
//! keyspace: clients never see these entries, and FLUSHALL leaves them.
//!
//! Before the system namespace (snapshot format v2) they were user keys (`\xffkeel.raft.applied` and `\xffkeel.raft.membership`).
//! An engine written then is read through them until its next applied transaction, which writes
//! the system entries and deletes the old keys in one record. Clients still cannot write keys
//! under that prefix: older nodes of a cluster keep their position there. Because every replica decides the same transactions at
//! the same times from the same state, every replica reaches the same state at the same LSNs,
//! so WATCH and KEEL.CAS versions mean the same thing on every node.
//!
//! Snapshots are engine snapshot files. Installing one builds a new engine directory from the
//! file, publishes the file, switches the `ENGINE` pointer file atomically, and swaps the engine
//! readers use. A published snapshot newer than the engine is an install a crash interrupted;
//! opening the node finishes it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use keel_engine::{Engine, Outcome, Write};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::log::{decode_checked, encode_checked, io_err};
use crate::{Applied, Node, NodeId, Results, TypeConfig};

/// The system entries that hold the replication state inside the engine.
const APPLIED_KEY: &[u8] = b"raft.applied";
const MEMBERSHIP_KEY: &[u8] = b"raft.membership";
/// The prefix of the user keys that held the replication state before the system namespace.
/// Clients cannot write keys under it (older nodes of a cluster may still use them).
pub const LEGACY_PREFIX: &[u8] = b"\xffkeel.raft.";
/// Where engines written before the system namespace keep them, as user keys.
const LEGACY_APPLIED_KEY: &[u8] = b"\xffkeel.raft.applied";
const LEGACY_MEMBERSHIP_KEY: &[u8] = b"\xffkeel.raft.membership";
const ENGINE_POINTER: &str = "ENGINE";
const SNAPSHOTS: &str = "snapshots";

type Membership = StoredMembership<NodeId, Node>;
type Meta = SnapshotMeta<NodeId, Node>;

/// The engine the node serves from, swapped when a snapshot is installed.
pub struct Engines {
    current: ArcSwap<Engine>,
    dir: PathBuf,
    opts: keel_engine::Options,
}

impl Engines {
    pub fn get(&self) -> Arc<Engine> {
        self.current.load_full()
    }

    /// Opens the engine the pointer file names, and removes engine directories left by an
    /// install that a crash interrupted.
    pub fn open(dir: &Path, opts: keel_engine::Options) -> Result<Engines, crate::Error> {
        let name = current_engine_name(dir)?;
        for e in std::fs::read_dir(dir).map_err(crate::Error::io(dir))? {
            let e = e.map_err(crate::Error::io(dir))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("engine-") && n != name {
                tracing::info!(dir = %e.path().display(), "removing an engine directory no longer in use");
                std::fs::remove_dir_all(e.path()).map_err(crate::Error::io(&e.path()))?;
            }
        }
        let (engine, report) = Engine::open(dir.join(&name), opts.clone())?;
        tracing::info!(?report, "engine recovered");
        Ok(Engines {
            current: ArcSwap::from_pointee(engine),
            dir: dir.to_path_buf(),
            opts,
        })
    }
}

fn current_engine_name(dir: &Path) -> Result<String, crate::Error> {
    let p = dir.join(ENGINE_POINTER);
    match std::fs::read(&p) {
        Ok(b) => decode_checked::<String>(&b)
            .map_err(|e| crate::Error::Corrupt(format!("{} is damaged: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("engine-0".into()),
        Err(e) => Err(crate::Error::io(&p)(e)),
    }
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    io_err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    io_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
}

#[derive(Clone)]
pub struct StateMachine {
    engines: Arc<Engines>,
    membership: Arc<Mutex<Membership>>,
    /// The file a snapshot is being received into.
    receiving: Arc<Mutex<Option<PathBuf>>>,
    /// How far the engine has applied, as its reserved key says.
    marker: Arc<Mutex<Marker>>,
}

/// The applied position kept in the engine (under `APPLIED_KEY`), written in the same engine
/// transaction as each applied transaction: the last entry applied whole, and how many
/// transactions of the next entry are applied already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Marker {
    full: Option<LogId<NodeId>>,
    partial: Option<(LogId<NodeId>, u32)>,
}

/// A write of the system entry `key`.
fn system(key: &'static [u8], value: Vec<u8>) -> Write {
    Write::System {
        key: Bytes::from_static(key),
        value: value.into(),
    }
}

/// For an engine written before the system namespace: the writes that move its replication
/// state there (the membership `m` into the system namespace, deletes of the legacy user keys),
/// to go into the first transaction of the next applied batch, beside the applied position.
/// Empty otherwise. It is decided on the membership's system entry, which only this and a
/// membership entry write: if that transaction writes nothing (a client's guard failed), the
/// next batch moves the state again. (Clients cannot write the legacy keys.)
fn migration(e: &Engine, m: &Membership) -> Vec<Write> {
    if e.system(MEMBERSHIP_KEY).is_some() {
        return Vec::new();
    }
    let legacy: Vec<Write> = [LEGACY_APPLIED_KEY, LEGACY_MEMBERSHIP_KEY]
        .into_iter()
        .filter(|k| e.get(k).is_some())
        .map(|k| Write::Delete {
            key: Bytes::from_static(k),
        })
        .collect();
    if legacy.is_empty() {
        return legacy;
    }
    tracing::info!("moving the replication state out of the user keyspace (written before the system namespace)");
    let mut w = vec![system(MEMBERSHIP_KEY, encode_checked(m))];
    w.extend(legacy);
    w
}

/// One transaction of an entry being applied.
enum Slot {
    Ready(Applied),
    /// A client's transaction, and how many results are the client's.
    Wait(keel_engine::Pending, usize),
    /// A blank or membership entry's bookkeeping.
    Internal(keel_engine::Pending),
}

impl StateMachine {
    /// Decides one transaction now; `user` is how many of its writes are the client's.
    fn submit(
        &self,
        engine: &Engine,
        id: Option<Bytes>,
        at_ms: u64,
        guards: Vec<keel_engine::Guard>,
        writes: Vec<Write>,
        user: Option<usize>,
    ) -> Result<Slot, StorageError<NodeId>> {
        match (engine.submit_at(id, at_ms, guards, writes), user) {
            (Ok(p), Some(n)) => Ok(Slot::Wait(p, n)),
            (Ok(p), None) => Ok(Slot::Internal(p)),
            (Err(keel_engine::Error::Wal(e)), _) => Err(sm_err(ErrorVerb::Write, e)),
            // Decided the same way on every replica (a limit): the client hears why.
            (Err(e), Some(_)) => Ok(Slot::Ready(Applied::Rejected(e.to_string()))),
            (Err(e), None) => Err(sm_err(ErrorVerb::Write, e)),
        }
    }

    pub fn new(engines: Arc<Engines>) -> Result<StateMachine, crate::Error> {
        let membership = read_membership(&engines.get())
            .map_err(|e| crate::Error::Corrupt(format!("stored membership: {e}")))?;
        let snapshots = engines.dir.join(SNAPSHOTS);
        std::fs::create_dir_all(&snapshots).map_err(crate::Error::io(&engines.dir))?;
        let marker = read_marker(&engines.get())
            .map_err(|e| crate::Error::Corrupt(format!("stored applied position: {e}")))?;
        let sm = StateMachine {
            membership: Arc::new(Mutex::new(membership)),
            receiving: Arc::new(Mutex::new(None)),
            marker: Arc::new(Mutex::new(marker)),
            engines,
        };
        let latest = latest_snapshot(&snapshots).map_err(crate::Error::Corrupt)?;
        if let Some((meta, path)) = latest.filter(|(m, _)| m.last_log_id > marker.full) {
            tracing::info!(snapshot = %meta.snapshot_id, "finishing a snapshot install a crash interrupted");
            sm.build_engine(&path)
                .and_then(|next| sm.switch_engine(next))
                .map_err(|e| {
                    crate::Error::Corrupt(format!("installing {}: {e}", path.display()))
                })?;
        }
        Ok(sm)
    }

    fn snapshots(&self) -> PathBuf {
        self.engines.dir.join(SNAPSHOTS)
    }

    /// Builds a snapshot if the engine has applied past `last_log` (the raft log's last entry)
    /// and past the newest snapshot.
    pub(crate) fn snapshot_if_ahead_of(
        &self,
        last_log: Option<LogId<NodeId>>,
    ) -> Result<(), crate::Error> {
        let applied = self.marker.lock().unwrap_or_else(|p| p.into_inner()).full;
        let snapshot = latest_snapshot(&self.snapshots())
            .map_err(crate::Error::Corrupt)?
            .and_then(|(m, _)| m.last_log_id);
        if applied > last_log && applied > snapshot {
            tracing::info!(
                ?applied,
                ?last_log,
                "the engine applied past the raft log (a power cut took the log's unsynced tail); building a snapshot"
            );
            self.build_blocking()
                .map_err(|e| crate::Error::Corrupt(format!("snapshot of the engine: {e}")))?;
        }
        Ok(())
    }
}

fn read_membership(e: &Engine) -> Result<Membership, String> {
    let legacy = || e.get(LEGACY_MEMBERSHIP_KEY).map(|v| v.value);
    match e.system(MEMBERSHIP_KEY).or_else(legacy) {
        Some(v) => decode_checked(&v),
        None => Ok(Membership::default()),
    }
}

fn read_marker(e: &Engine) -> Result<Marker, String> {
    let legacy = || e.get(LEGACY_APPLIED_KEY).map(|v| v.value);
    match e.system(APPLIED_KEY).or_else(legacy) {
        Some(v) => decode_checked(&v),
        None => Ok(Marker::default()),
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let applied = self.marker.lock().unwrap_or_else(|p| p.into_inner()).full;
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Results>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let engine = self.engines.get();
        let mut marker = *self.marker.lock().unwrap_or_else(|p| p.into_inner());
        let mut legacy = migration(
            &engine,
            &self.membership.lock().unwrap_or_else(|p| p.into_inner()),
        );
        // Submit everything, then wait: the transactions share the engine log's writes.
        let mut pending: Vec<Vec<Slot>> = Vec::new();
        for entry in entries {
            let id = entry.log_id;
            let done = Marker {
                full: Some(id),
                partial: None,
            };
            let mut slots = Vec::new();
            match entry.payload {
                EntryPayload::Blank => {
                    let mut w = std::mem::take(&mut legacy);
                    w.push(system(APPLIED_KEY, encode_checked(&done)));
                    slots.push(self.submit(&engine, None, 0, vec![], w, None)?);
                }
                EntryPayload::Membership(m) => {
                    let stored = Membership::new(Some(id), m);
                    // The new membership is written after the migration's copy of the old.
                    let mut w = std::mem::take(&mut legacy);
                    w.push(system(MEMBERSHIP_KEY, encode_checked(&stored)));
                    w.push(system(APPLIED_KEY, encode_checked(&done)));
                    *self.membership.lock().unwrap_or_else(|p| p.into_inner()) = stored;
                    slots.push(self.submit(&engine, None, 0, vec![], w, None)?);
                }
                EntryPayload::Normal(batch) => {
                    // After a restart inside this entry, its first transactions are already in
                    // the engine: skip them (nobody waits for their replies any more).
                    let skip = match marker.partial {
                        Some((l, n)) if l == id => n as usize,
                        _ => 0,
                    };
                    let n = batch.txns.len();
                    for (i, t) in batch.txns.into_iter().enumerate() {
                        if i < skip {
                            slots.push(Slot::Ready(Applied::Rejected(
                                "applied before a restart".into(),
                            )));
                            continue;
                        }
                        let progress = if i + 1 == n {
                            done
                        } else {
                            Marker {
                                full: marker.full,
                                partial: Some((id, i as u32 + 1)),
                            }
                        };
                        let mut writes = t.writes;
                        let user = writes.len();
                        // The client's results come first; the bookkeeping follows.
                        writes.push(system(APPLIED_KEY, encode_checked(&progress)));
                        writes.append(&mut legacy);
                        slots.push(self.submit(
                            &engine,
                            t.id,
                            t.at_ms,
                            t.guards,
                            writes,
                            Some(user),
                        )?);
                    }
                }
            }
            marker = done;
            pending.push(slots);
        }
        *self.marker.lock().unwrap_or_else(|p| p.into_inner()) = marker;
        let mut out = Vec::with_capacity(pending.len());
        for slots in pending {
            let mut results = Vec::with_capacity(slots.len());
            for slot in slots {
                results.push(match slot {
                    Slot::Ready(a) => a,
                    Slot::Wait(p, user) => {
                        match p.await.map_err(|e| sm_err(ErrorVerb::Write, e))? {
                            Outcome::Committed {
                                lsn,
                                mut results,
                                mut effects,
                            } => {
                                results.truncate(user);
                                effects.retain(|e| (e.write as usize) < user);
                                Applied::Done(Outcome::Committed {
                                    lsn,
                                    results,
                                    effects,
                                })
                            }
                            g => Applied::Done(g),
                        }
                    }
                    Slot::Internal(p) => {
                        p.await.map_err(|e| sm_err(ErrorVerb::Write, e))?;
                        continue;
                    }
                });
            }
            out.push(Results(results));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self.snapshots().join("incoming.snap");
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        *self.receiving.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        snapshot.flush().await.map_err(snap_err)?;
        let incoming = self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| snap_err("install_snapshot without begin_receiving_snapshot"))?;
        // Raft hands back the file begin_receiving_snapshot gave it, written; a caller may also
        // hand over another snapshot's file (openraft's storage suite does): then copy it in.
        let ino = |m: std::fs::Metadata| std::os::unix::fs::MetadataExt::ino(&m);
        let given = ino(snapshot.metadata().await.map_err(snap_err)?);
        if std::fs::metadata(&incoming).map(ino).ok() != Some(given) {
            let mut to = tokio::fs::File::create(&incoming).await.map_err(snap_err)?;
            snapshot
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(snap_err)?;
            tokio::io::copy(&mut *snapshot, &mut to)
                .await
                .map_err(snap_err)?;
            snapshot = Box::new(to);
        }
        snapshot.sync_all().await.map_err(snap_err)?;
        drop(snapshot);
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || this.install_blocking(&meta, &incoming))
            .await
            .map_err(snap_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some((meta, path)) = latest_snapshot(&self.snapshots()).map_err(snap_err)? else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

/// The newest complete snapshot in `dir`: its meta, and the path of its engine snapshot file.
fn latest_snapshot(dir: &Path) -> Result<Option<(Meta, PathBuf)>, String> {
    let mut best: Option<(Meta, PathBuf)> = None;
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "meta") {
            let b = std::fs::read(&p).map_err(|e| e.to_string())?;
            let m: Meta = decode_checked(&b).map_err(|e| format!("{}: {e}", p.display()))?;
            if best
                .as_ref()
                .is_none_or(|(b, _)| m.last_log_id > b.last_log_id)
            {
                best = Some((m, p.with_extension("snap")));
            }
        }
    }
    Ok(best)
}

/// Keeps only the snapshot named `keep` (and any file being received).
fn remove_other_snapshots(dir: &Path, keep: &str) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            // A snapshot being received or built is not in the way.
            if !n.starts_with(keep) && !n.starts_with("incoming") && !n.ends_with(".building") {
                let _ = std::fs::remove_file(e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Publishes a snapshot file and its meta under `id`: the file first, then the meta that makes
/// it visible, both durably.
/// A build and an install may publish at once; the newer snapshot must win. Returns the
/// snapshot that is current afterwards (a newer one already there, if any).
fn publish_snapshot(dir: &Path, meta: &Meta, file: &Path) -> Result<(Meta, PathBuf), String> {
    static PUBLISH: Mutex<()> = Mutex::new(());
    let _one = PUBLISH.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((newer, path)) =
        latest_snapshot(dir)?.filter(|(m, _)| m.last_log_id > meta.last_log_id)
    {
        let _ = std::fs::remove_file(file);
        return Ok((newer, path));
    }
    let fs = keel_wal::StdFs;
    let id = &meta.snapshot_id;
    let snap = dir.join(format!("{id}.snap"));
    keel_wal::fs::durable_rename(&fs, file, &snap).map_err(|e| e.to_string())?;
    keel_wal::fs::durable_replace(&fs, &dir.join(format!("{id}.meta")), &encode_checked(meta))
        .map_err(|e| e.to_string())?;
    remove_other_snapshots(dir, &format!("{id}."));
    Ok((meta.clone(), snap))
}

impl StateMachine {
    /// Builds the next engine from the received snapshot (which checks the file), then
    /// publishes the snapshot, then switches to the engine. A crash before the publish leaves
    /// an engine directory `ENGINE` does not name, which opening removes; a crash after it
    /// leaves a published snapshot newer than the engine, which opening installs (see
    /// [`StateMachine::new`]). A damaged file is refused before it replaces the last good one.
    fn install_blocking(&self, meta: &Meta, incoming: &Path) -> Result<(), StorageError<NodeId>> {
        let next = self.build_engine(incoming)?;
        let (current, _) = publish_snapshot(&self.engines.dir.join(SNAPSHOTS), meta, incoming)
            .map_err(snap_err)?;
        if current.last_log_id != meta.last_log_id {
            // A newer snapshot was published meanwhile: the engine is that far already.
            let path = next.engine.dir().to_path_buf();
            drop(next);
            let _ = std::fs::remove_dir_all(path);
            return Ok(());
        }
        self.switch_engine(next)?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed a snapshot from the leader");
        Ok(())
    }

    /// Builds and opens the next engine directory from a snapshot file.
    fn build_engine(&self, snapshot: &Path) -> Result<NextEngine, StorageError<NodeId>> {
        let dir = &self.engines.dir;
        let name = format!(
            "engine-{}",
            current_engine_name(dir)
                .ok()
                .and_then(|n| n.strip_prefix("engine-")?.parse::<u64>().ok())
                .map_or(1, |n| n + 1)
        );
        let target = dir.join(&name);
        let _ = std::fs::remove_dir_all(&target);
        keel_engine::create_from_snapshot(snapshot, &target, &self.engines.opts)
            .map_err(snap_err)?;
        let (engine, _) = Engine::open(&target, self.engines.opts.clone()).map_err(snap_err)?;
        Ok(NextEngine { name, engine })
    }

    /// Points `ENGINE` at a built engine and serves from it; the old engine is closed and
    /// removed once no reader holds it.
    fn switch_engine(&self, next: NextEngine) -> Result<(), StorageError<NodeId>> {
        let dir = &self.engines.dir;
        let stored = read_membership(&next.engine).map_err(snap_err)?;
        let marker = read_marker(&next.engine).map_err(snap_err)?;
        keel_wal::fs::durable_replace(
            &keel_wal::StdFs,
            &dir.join(ENGINE_POINTER),
            &encode_checked(&next.name),
        )
        .map_err(snap_err)?;
        let old = self.engines.current.swap(Arc::new(next.engine));
        *self.membership.lock().unwrap_or_else(|p| p.into_inner()) = stored;
        *self.marker.lock().unwrap_or_else(|p| p.into_inner()) = marker;
        retire(old, dir);
        Ok(())
    }
}

/// An engine built from a snapshot, not yet the one in use.
struct NextEngine {
    name: String,
    engine: Engine,
}

/// Closes a replaced engine once no reader holds it, then removes its directory.
fn retire(old: Arc<Engine>, dir: &Path) {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut old = old;
        for _ in 0..600 {
            match Arc::try_unwrap(old) {
                Ok(e) => {
                    let path = e.dir().to_path_buf();
                    let _ = e.close();
                    let _ = std::fs::remove_dir_all(&path);
                    return;
                }
                Err(o) => old = o,
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        tracing::warn!(dir = %dir.display(), "a replaced engine is still in use; it is removed at the next start");
    });
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        let (meta, path) = tokio::task::spawn_blocking(move || this.build_blocking())
            .await
            .map_err(snap_err)??;
        let f = tokio::fs::File::open(&path).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}

impl StateMachine {
    fn build_blocking(&self) -> Result<(Meta, PathBuf), StorageError<NodeId>> {
        // One build at a time, so that one name serves: what a crash left there goes first.
        static BUILDING: Mutex<()> = Mutex::new(());
        let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
        let engine = self.engines.get();
        let dir = self.snapshots();
        // Builds a crash interrupted (named by their snapshot id before this release) go too.
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".building") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = dir.join("next.building");
        // Where the replication state is in the system namespace, the engine writes the snapshot
        // as it writes a checkpoint: it holds no copy of the keyspace, and the report gives the
        // system namespace as of the snapshot's LSN. An engine written before the system
        // namespace, not yet migrated, keeps that state in user keys: a view (a copy of the keyspace)
        // reads them as of its LSN.
        let (lsn, applied, membership) = if engine.system(MEMBERSHIP_KEY).is_some() {
            let r = engine.backup(&tmp).map_err(snap_err)?;
            let state = |k: &[u8]| r.system.get(k).cloned();
            (r.lsn, state(APPLIED_KEY), state(MEMBERSHIP_KEY))
        } else {
            let view = engine.backup_view();
            view.write_database(&tmp, &self.engines.opts)
                .map_err(snap_err)?;
            let state = |k: &[u8], legacy: &[u8]| {
                (view.system(k).cloned()).or_else(|| view.get(legacy).map(|e| e.value.clone()))
            };
            let applied = state(APPLIED_KEY, LEGACY_APPLIED_KEY);
            (
                view.lsn(),
                applied,
                state(MEMBERSHIP_KEY, LEGACY_MEMBERSHIP_KEY),
            )
        };
        // Raft purges the log behind this snapshot, and the engine's log is not synced on
        // apply: what the snapshot holds must be durable in the engine too, or a power cut would
        // leave the engine behind the purged log. (Applies go on meanwhile; syncing after
        // the snapshot covers all of it.)
        engine.sync().map_err(snap_err)?;
        let last_log_id = applied
            .map(|v| decode_checked::<Marker>(&v))
            .transpose()
            .map_err(snap_err)?
            .and_then(|m| m.full);
        let membership: Membership = membership
            .map(|v| decode_checked(&v))
            .transpose()
            .map_err(snap_err)?
            .unwrap_or_default();
        let Some(last) = last_log_id else {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(snap_err("nothing applied yet: no snapshot to build"));
        };
        let id = format!("{}-{}-{lsn}", last.leader_id.term, last.index);
        let file = keel_engine::snapshot::snapshot_path(&tmp, lsn);
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: membership,
            snapshot_id: id.clone(),
        };
        let current = publish_snapshot(&dir, &meta, &file).map_err(snap_err)?;
        let _ = std::fs::remove_dir_all(&tmp);
        tracing::info!(snapshot = %id, "built a snapshot");
        Ok(current)
    }
}
