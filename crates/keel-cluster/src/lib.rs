//! keel cluster: keel-engine replicated through openraft (P12).
//!
//! A write is a transaction in a raft entry, with the leader's decision time; concurrent
//! writes share an entry. It is acknowledged only after a quorum has the entry durably in its
//! raft log (keel-wal, group commit) and the leader has applied it to its engine (whose own log
//! is not synced per write: the raft log is the write-ahead log). Reads are linearizable through
//! openraft's read index: the leader confirms its leadership with a quorum and waits until its
//! engine has applied everything committed before the read. Followers answer reads only when
//! stale reads are enabled.
//!
//! Layout of a node's directory: `raft/` (the raft log and its meta file), `engine-N/` (the
//! engine; `ENGINE` names the current one), `snapshots/` (the latest raft snapshot).

// openraft's traits fix the storage error type (`StorageError`, over 200 bytes); the helpers
// that build it return it as is.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_engine::{Engine, Guard, Outcome, Read, Write};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

mod log;
pub mod net;
pub mod pubsub;
mod sm;

pub use log::LogStore;
pub use sm::{Engines, StateMachine, LEGACY_PREFIX};

pub type NodeId = u64;

/// How peers and clients reach a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The raft RPC address.
    pub raft: String,
    /// The Redis-protocol address clients use; `-MOVED` replies name it.
    pub client: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft {} client {}", self.raft, self.client)
    }
}

/// One replicated transaction: what the engine decides at `at_ms` on every replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Txn {
    /// A client request id (KEEL.IDEM): a retry returns the first outcome (P8).
    pub id: Option<Bytes>,
    pub at_ms: u64,
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
}

/// One raft entry: the transactions of many clients that arrived together. openraft waits for
/// each append to be durable before it appends the next, so one entry per transaction would
/// cost one sync each on the leader; a batch shares it. Each transaction is still decided and
/// logged in the engine on its own, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Batch {
    pub txns: Vec<Txn>,
}

/// What applying one transaction gave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Applied {
    Done(Outcome),
    /// The engine refused the transaction before deciding it (a limit), on every replica alike.
    Rejected(String),
}

/// What applying an entry gave: one result per transaction (none for blank and membership
/// entries).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results(pub Vec<Applied>);

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Batch,
        R = Results,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = tokio::fs::File,
);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] keel_engine::Error),
    #[error(transparent)]
    Wal(#[from] keel_wal::Error),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl Error {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| Error::Io(format!("{}: {e}", path.display()))
    }
}

/// Why a cluster operation did not happen (or may not have).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is not the leader")]
    NotLeader(Option<(NodeId, Node)>),
    #[error("not confirmed by a quorum within {0:?}; a write may still be applied")]
    Timeout(Duration),
    /// The leader could not reach a quorum to confirm a read.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Failed(String),
}

/// Settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub dir: PathBuf,
    /// This node's addresses, as peers and clients should use them.
    pub node: Node,
    /// The state machine's engine. Its log's `sync_policy` is ignored: the raft log is this
    /// node's write-ahead log, so the engine's own log is synced only where raft needs it (before
    /// a snapshot, at a checkpoint and at shutdown); what a power cut takes from it, raft applies
    /// again from the raft log on restart.
    pub engine: keel_engine::Options,
    /// The raft log's options (its `fs` and limits; group commit as in the engine). Its
    /// `sync_policy` is ignored too: it always syncs before an entry counts as held (P12).
    pub log: keel_wal::Options,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot after this many entries; the log before it is then purged.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers that are only a little behind.
    pub keep_behind_snapshot: u64,
    pub write_timeout: Duration,
    /// Make outgoing raft connections from this address (`None`: the system chooses).
    pub source_ip: Option<std::net::IpAddr>,
    /// Mutual TLS on raft traffic (`None`: plain TCP).
    pub tls: Option<net::NodeTls>,
}

impl Config {
    pub fn new(id: NodeId, dir: impl Into<PathBuf>, node: Node) -> Config {
        Config {
            id,
            dir: dir.into(),
            node,
            engine: keel_engine::Options::default(),
            log: keel_wal::Options::default(),
            heartbeat_ms: 100,
            election_timeout_ms: (800, 1600),
            snapshot_every: 100_000,
            keep_behind_snapshot: 10_000,
            write_timeout: Duration::from_secs(5),
            source_ip: None,
            tls: None,
        }
    }
}

/// A running node.
pub struct Cluster {
    pub raft: Raft<TypeConfig>,
    pub id: NodeId,
    pub node: Node,
    engines: Arc<Engines>,
    log: LogStore,
    write_timeout: Duration,
    listener: tokio::task::JoinHandle<()>,
    queue: tokio::sync::mpsc::Sender<Waiter>,
    /// Transactions handed to the batcher so far.
    arrivals: Arc<AtomicU64>,
    reads: tokio::sync::mpsc::Sender<ReadWaiter>,
    transport: net::Transport,
    broadcast: pubsub::Broadcast,
}

/// Confirms leadership for every read that arrived before the confirmation started.
async fn read_barriers(
    raft: Raft<TypeConfig>,
    mut reads: tokio::sync::mpsc::Receiver<ReadWaiter>,
    timeout: Duration,
) {
    while let Some(first) = reads.recv().await {
        let mut waiting = vec![first];
        while let Ok(w) = reads.try_recv() {
            waiting.push(w);
        }
        let r = match tokio::time::timeout(timeout, raft.ensure_linearizable()).await {
            Err(_) => Err(ClusterError::Timeout(timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader(f.leader_id.zip(f.leader_node)))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => Err(
                ClusterError::NoQuorum(format!("the leader heard only from {:?}", q.got)),
            ),
            Ok(Err(e)) => Err(ClusterError::Failed(e.to_string())),
        };
        for w in waiting {
            let _ = w.send(r.clone());
        }
    }
}

type ReadWaiter = tokio::sync::oneshot::Sender<Result<(), ClusterError>>;

/// A transaction waiting for its batch.
struct Waiter {
    txn: Txn,
    /// [`txn_bytes`] of `txn`.
    bytes: usize,
    reply: tokio::sync::oneshot::Sender<Result<Outcome, ClusterError>>,
}

/// How long a new batch waits for the clients answered by the previous one to send again
/// (tokio's timer rounds it up to its next 1 ms tick, so 1–2 ms). Without the wait, the clients
/// split into two groups that take turns, each in half-size entries; what an entry costs (fsyncs
/// on three nodes, messages, wake-ups) is then paid twice as often.
const GATHER_MAX: Duration = Duration::from_millis(1);
const BATCH_TXNS_MAX: usize = 4096;
const BATCH_BYTES_MAX: usize = 4 << 20;
/// The largest transaction a cluster takes: its raft entry must fit in one raft-log record
/// (16 MiB), and `MAX_PAYLOAD_ENTRIES` such entries in one frame ([`net::FRAME_BYTES_MAX`]).
pub const TXN_BYTES_MAX: usize = 12 << 20;
const MAX_PAYLOAD_ENTRIES: u64 = 32;

fn txn_bytes(t: &Txn) -> usize {
    t.writes.iter().map(write_bytes).sum::<usize>()
        + t.guards.iter().map(|g| g.key.len() + 16).sum::<usize>()
}

/// About how many bytes one write takes in a raft entry.
fn write_bytes(w: &Write) -> usize {
    32 + match w {
        Write::Put { key, value, .. } | Write::System { key, value } => key.len() + value.len(),
        Write::Append { key, suffix } => key.len() + suffix.len(),
        Write::Restore { key, payload, .. } => key.len() + payload.len(),
        Write::Rename { from, to, .. } => from.len() + to.len(),
        Write::Delete { key }
        | Write::Incr { key, .. }
        | Write::IncrFloat { key, .. }
        | Write::Expire { key, .. }
        | Write::Get { key } => key.len(),
        Write::HashSet { key, pairs, .. } => {
            key.len()
                + pairs
                    .iter()
                    .map(|(f, v)| f.len() + v.len() + 8)
                    .sum::<usize>()
        }
        Write::HashDel { key, fields } => {
            key.len() + fields.iter().map(|f| f.len() + 8).sum::<usize>()
        }
        Write::HashIncr { key, field, .. } | Write::HashIncrFloat { key, field, .. } => {
            key.len() + field.len()
        }
        Write::Read { key, op } => {
            key.len()
                + match op {
                    Read::HashGet { fields }
                    | Read::SetMisMember { members: fields }
                    | Read::ZScores { members: fields } => fields.iter().map(|f| f.len() + 8).sum(),
                    Read::HashExists { field }
                    | Read::HashStrlen { field }
                    | Read::SetIsMember { member: field }
                    | Read::ZRank { member: field, .. } => field.len(),
                    _ => 0,
                }
        }
        Write::GetThen { key, then } => key.len() + write_bytes(then),
        Write::StreamAdd { key, fields, .. } => {
            key.len() + fields.iter().map(|f| f.len() + 8).sum::<usize>()
        }
        Write::StreamDel { key, ids } => key.len() + 16 * ids.len(),
        Write::StreamTrimTo { key, .. } | Write::StreamSetId { key, .. } => key.len() + 32,
        Write::StreamGroupCreate { key, group, .. }
        | Write::StreamGroupSetId { key, group, .. }
        | Write::StreamGroupDestroy { key, group } => key.len() + group.len() + 32,
        Write::StreamConsumerCreate {
            key,
            group,
            consumer,
        }
        | Write::StreamConsumerDelete {
            key,
            group,
            consumer,
        } => key.len() + group.len() + consumer.len(),
        Write::StreamReadGroup {
            group,
            consumer,
            streams,
            ..
        } => {
            group.len() + consumer.len() + streams.iter().map(|(k, _)| k.len() + 24).sum::<usize>()
        }
        Write::StreamAck { key, group, ids } => key.len() + group.len() + 16 * ids.len(),
        Write::StreamClaim {
            key,
            group,
            consumer,
            claim,
            ..
        } => {
            key.len()
                + group.len()
                + consumer.len()
                + match claim {
                    keel_engine::Claim::Ids { ids, .. } => 16 * ids.len() + 64,
                    keel_engine::Claim::Scan { .. } => 32,
                }
        }
        Write::SetAdd { key, members } | Write::SetRem { key, members } => {
            key.len() + members.iter().map(|m| m.len() + 8).sum::<usize>()
        }
        Write::SetPop { key, .. } | Write::ListPop { key, .. } | Write::ListTrim { key, .. } => {
            key.len()
        }
        Write::ListPush { key, elements, .. } => {
            key.len() + elements.iter().map(|e| e.len() + 8).sum::<usize>()
        }
        Write::ListSet { key, element, .. } | Write::ListRem { key, element, .. } => {
            key.len() + element.len()
        }
        Write::ListInsert {
            key,
            pivot,
            element,
            ..
        } => key.len() + pivot.len() + element.len(),
        Write::ListMove { from, to, .. } => from.len() + to.len(),
        Write::ListPopFirst { keys, .. } => keys.iter().map(|k| k.len() + 8).sum::<usize>(),
        Write::SetMove { from, to, member } => from.len() + to.len() + member.len(),
        Write::SetStore { key, keys, .. } => {
            key.len() + keys.iter().map(|k| k.len() + 8).sum::<usize>()
        }
        Write::Copy { .. }
        | Write::Sort { .. }
        | Write::SetRange { .. }
        | Write::SetBit { .. }
        | Write::BitOp { .. }
        | Write::BitField { .. }
        | Write::ZAdd { .. }
        | Write::ZRem { .. }
        | Write::ZRemRange { .. }
        | Write::ZPopFirst { .. }
        | Write::ZStore { .. }
        | Write::ZRangeStore { .. } => {
            let members = match w {
                Write::ZRem { members, .. } => members.iter().map(|m| m.len() + 8).sum(),
                _ => 0,
            };
            // What the keys and values leave out: SORT's patterns, BITFIELD's operations.
            let other = match w {
                Write::Sort { spec, .. } => {
                    spec.by.as_ref().map_or(0, |b| b.len())
                        + spec.get.iter().map(|g| g.len() + 8).sum::<usize>()
                }
                Write::BitField { ops, .. } => ops.len() * 24,
                _ => 0,
            };
            w.keys().map(|k| k.len() + 8).sum::<usize>()
                + w.values().map(|v| v.len() + 16).sum::<usize>()
                + members
                + other
        }
        Write::DeleteAll => 0,
    }
}

/// Proposes the waiting transactions as one entry, one entry at a time: those that arrive while
/// an entry replicates and applies make the next. One entry in flight makes entries largest, and
/// what an entry costs is shared by the most transactions (measured on the 2-core machine of
/// BENCHMARKS.md, -c 64: one in flight 27.9k SET/s, two 23.6k, three and four slower).
async fn batcher(
    raft: Raft<TypeConfig>,
    mut queue: tokio::sync::mpsc::Receiver<Waiter>,
    arrivals: Arc<AtomicU64>,
    timeout: Duration,
) {
    // A transaction that would have made a batch too large starts the next one.
    let mut carry: Option<Waiter> = None;
    // When the last batch was answered: the arrival count then, and how many it answered.
    let mut answered = (0u64, 0u64);
    loop {
        let first = match carry.take() {
            Some(w) => w,
            None => match queue.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + GATHER_MAX;
        loop {
            while batch.len() < BATCH_TXNS_MAX && carry.is_none() {
                match queue.try_recv() {
                    Ok(w) if bytes + w.bytes > BATCH_BYTES_MAX => carry = Some(w),
                    Ok(w) => {
                        bytes += w.bytes;
                        batch.push(w);
                    }
                    Err(_) => break,
                }
            }
            // A client that reads next, or stops writing, costs the entry after it the whole
            // wait. Waiting only after large entries was measured and lost: -c 4 SET 5.4k ->
            // 3.3k/s, since small cohorts then take turns too.
            let back = arrivals.load(Ordering::Acquire) >= answered.0 + answered.1;
            if back || carry.is_some() || batch.len() >= BATCH_TXNS_MAX {
                break;
            }
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(w)) if bytes + w.bytes > BATCH_BYTES_MAX => carry = Some(w),
                Ok(Some(w)) => {
                    bytes += w.bytes;
                    batch.push(w);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let (txns, replies): (Vec<Txn>, Vec<_>) =
            batch.into_iter().map(|w| (w.txn, w.reply)).unzip();
        let n = txns.len();
        let r = tokio::time::timeout(timeout, raft.client_write(Batch { txns })).await;
        answered = (arrivals.load(Ordering::Acquire), n as u64);
        let results: Vec<Result<Outcome, ClusterError>> = match r {
            Err(_) => vec![Err(ClusterError::Timeout(timeout)); n],
            Ok(Ok(resp)) if resp.data.0.len() == n => resp
                .data
                .0
                .into_iter()
                .map(|a| match a {
                    Applied::Done(o) => Ok(o),
                    Applied::Rejected(m) => Err(ClusterError::Rejected(m)),
                })
                .collect(),
            Ok(Ok(resp)) => vec![
                Err(ClusterError::Failed(format!(
                    "a batch of {n} transactions gave {} results",
                    resp.data.0.len()
                )));
                n
            ],
            Ok(Err(e)) => vec![Err(write_error(e)); n],
        };
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }
}

/// A node's view of the cluster, for `keel cluster status` and INFO.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub id: NodeId,
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Voters and learners with their addresses.
    pub members: BTreeMap<NodeId, (Node, bool)>,
    /// On the leader: each node's matched index, and how far it lags the leader's log.
    pub replication: BTreeMap<NodeId, (Option<u64>, u64)>,
    /// The raft log's records and syncs since start, and their mean sync time.
    pub log_records: u64,
    pub log_syncs: u64,
    pub log_sync_mean_us: u64,
}

impl Cluster {
    /// Opens the node's log and engine (recovering both) and starts raft and its listener.
    pub async fn start(mut cfg: Config, listener: TcpListener) -> Result<Arc<Cluster>, Error> {
        std::fs::create_dir_all(&cfg.dir).map_err(Error::io(&cfg.dir))?;
        // Active expiry would log deletions only this replica decided.
        cfg.engine.active_expiry = false;
        cfg.engine.replicas_decide = true;
        // The raft log makes each entry durable before raft counts it; the engine's log is a
        // redo of entries raft still holds, so syncing it on every apply would be a second fsync
        // per batch on every node for nothing. The applied position travels inside each engine
        // transaction, so the engine recovers a prefix of what it applied, and raft re-applies
        // the rest (tests/nodes.rs cuts an engine log's tail to show it).
        cfg.engine.wal.sync_policy = keel_wal::SyncPolicy::Never;
        // Zero-filling a segment (64 MiB of writes and a sync per segment) makes per-write
        // fdatasyncs cheap; a log that is not synced per write only pays for it.
        cfg.engine.wal.zero_fill_segments = false;
        cfg.log.sync_policy = keel_wal::SyncPolicy::Always;
        let dir = cfg.dir.clone();
        let (log, engines) = tokio::task::spawn_blocking({
            let cfg = cfg.clone();
            move || -> Result<_, Error> {
                let log = LogStore::open(&dir.join("raft"), cfg.log.clone())?;
                let engines = Engines::open(&dir, cfg.engine.clone())?;
                Ok((log, Arc::new(engines)))
            }
        })
        .await
        .map_err(|e| Error::Raft(e.to_string()))??;
        let sm = StateMachine::new(engines.clone())?;
        // A follower may apply an entry before its own log has synced it, so a power cut can
        // leave the engine ahead of the log. Raft then purges the log up to the engine on start
        // but builds a snapshot only if there is none: make the snapshot cover the engine.
        let last = openraft::storage::RaftLogStorage::get_log_state(&mut log.clone())
            .await
            .map_err(|e| Error::Raft(e.to_string()))?
            .last_log_id;
        let ahead = sm.clone();
        tokio::task::spawn_blocking(move || ahead.snapshot_if_ahead_of(last))
            .await
            .map_err(|e| Error::Raft(e.to_string()))??;
        let rc = openraft::Config {
            cluster_name: "keel".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms.0,
            election_timeout_max: cfg.election_timeout_ms.1,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.keep_behind_snapshot,
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 2_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let transport = net::Transport {
            source: cfg.source_ip,
            tls: cfg.tls.clone(),
        };
        let raft = Raft::new(
            cfg.id,
            Arc::new(rc),
            net::Network {
                transport: transport.clone(),
                pool: net::Pool::default(),
            },
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        let (queue, rx) = tokio::sync::mpsc::channel(BATCH_TXNS_MAX);
        let arrivals = Arc::new(AtomicU64::new(0));
        tokio::spawn(batcher(
            raft.clone(),
            rx,
            arrivals.clone(),
            cfg.write_timeout,
        ));
        let (reads, rx) = tokio::sync::mpsc::channel(BATCH_TXNS_MAX);
        tokio::spawn(read_barriers(raft.clone(), rx, cfg.write_timeout));
        let broadcast = pubsub::Broadcast::new(cfg.id, transport.clone(), raft.server_metrics());
        let listener = tokio::spawn(net::serve(
            listener,
            raft.clone(),
            (cfg.id, cfg.node.clone()),
            cfg.tls.as_ref().map(|t| t.acceptor.clone()),
            broadcast.inbox.clone(),
        ));
        Ok(Arc::new(Cluster {
            listener,
            queue,
            arrivals,
            reads,
            transport,
            broadcast,
            raft,
            id: cfg.id,
            node: cfg.node,
            engines,
            log,
            write_timeout: cfg.write_timeout,
        }))
    }

    /// The engine this node serves reads from (replaced when a snapshot is installed).
    pub fn engine(&self) -> Arc<Engine> {
        self.engines.get()
    }

    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// Replicates a transaction; returns its outcome once a quorum holds it durably and this
    /// node (the leader) has applied it.
    pub async fn write(&self, txn: Txn) -> Result<Outcome, ClusterError> {
        let size = txn_bytes(&txn);
        if size > TXN_BYTES_MAX {
            return Err(ClusterError::Rejected(format!(
                "transaction of {size} bytes exceeds the cluster's limit of {TXN_BYTES_MAX}"
            )));
        }
        let raft_entry =
            |w: &Write| matches!(w, Write::System { key, .. } if key.starts_with(b"raft."));
        if txn.writes.iter().any(raft_entry) {
            return Err(ClusterError::Rejected(
                "the system namespace's raft.* entries hold the replication state; a client transaction cannot write them".into(),
            ));
        }
        let keys = txn
            .guards
            .iter()
            .map(|g| &g.key)
            .chain(txn.writes.iter().flat_map(Write::keys));
        for k in keys {
            if k.starts_with(LEGACY_PREFIX) {
                return Err(ClusterError::Rejected(
                    "keys starting with \\xffkeel.raft. are reserved: nodes from before the system namespace keep their replication state there".into(),
                ));
            }
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.arrivals.fetch_add(1, Ordering::Release);
        self.queue
            .send(Waiter {
                txn,
                bytes: size,
                reply,
            })
            .await
            .map_err(|_| ClusterError::Failed("the node is shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ClusterError::Failed("the node is shutting down".into())))
    }

    /// Returns once a read on this node's engine is linearizable: this node is the leader, a
    /// quorum confirmed it, and everything committed before now is applied. Concurrent reads
    /// share one confirmation: a read waits for the first one that starts after it arrived.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.reads
            .send(reply)
            .await
            .map_err(|_| ClusterError::Failed("the node is shutting down".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(ClusterError::Failed("the node is shutting down".into())))
    }

    /// Forwards a PUBLISH (or, with `shard`, SPUBLISH) to every other member, best effort
    /// (see [`pubsub`]): returns at once, whether or not the peers get it.
    pub fn publish(&self, shard: bool, channel: &[u8], message: &[u8]) {
        self.broadcast.publish(shard, channel, message);
    }

    /// Where messages other members forward go (once; later calls change nothing).
    pub fn on_message(&self, deliver: pubsub::Deliver) {
        self.broadcast.on_message(deliver);
    }

    /// Messages forwarded to peers and dropped since start.
    pub fn pubsub_counts(&self) -> pubsub::Counts {
        self.broadcast.counts()
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    /// Forms a new cluster of this node and the nodes listening on `peers` (raft addresses).
    /// Every node must be up. Run it once, on one node.
    pub async fn init(&self, peers: &[String]) -> Result<BTreeMap<NodeId, Node>, ClusterError> {
        let mut members = BTreeMap::from([(self.id, self.node.clone())]);
        for addr in peers {
            let (id, node) = net::hello(addr, &self.transport)
                .await
                .map_err(|e| ClusterError::Failed(format!("cannot reach {addr}: {e}")))?;
            if let Some(prev) = members.insert(id, node) {
                if prev.raft != *addr && id != self.id {
                    return Err(ClusterError::Failed(format!("node id {id} is used twice")));
                }
            }
        }
        self.raft
            .initialize(members.clone())
            .await
            .map_err(|e| ClusterError::Failed(e.to_string()))?;
        Ok(members)
    }

    /// Adds the node listening on `addr` (raft address): first as a learner that catches up
    /// (by snapshot if the log was purged), then as a voter.
    pub async fn add_node(&self, addr: &str) -> Result<NodeId, ClusterError> {
        let (id, node) = net::hello(addr, &self.transport)
            .await
            .map_err(|e| ClusterError::Failed(format!("cannot reach {addr}: {e}")))?;
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(write_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(id)
    }

    /// Removes a node from the cluster (it stops receiving entries).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        Ok(())
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| (*id, (n.clone(), voters.contains(id))))
            .collect();
        let last = m.last_log_index.unwrap_or(0);
        let ls = self.log.stats();
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| {
                        let matched = l.map(|l| l.index);
                        (*id, (matched, last.saturating_sub(matched.unwrap_or(0))))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            id: self.id,
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
            replication,
            log_records: ls.records,
            log_syncs: ls.syncs,
            log_sync_mean_us: ls.sync_nanos / ls.syncs.max(1) / 1000,
        }
    }

    /// Stops raft (the logs stay as they are: everything acknowledged is already durable).
    pub async fn shutdown(&self) {
        self.listener.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// A write (or membership change) openraft refused: not the leader, or something else.
fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ClusterError::NotLeader(f.leader_id.zip(f.leader_node))
        }
        e => ClusterError::Failed(e.to_string()),
    }
}
