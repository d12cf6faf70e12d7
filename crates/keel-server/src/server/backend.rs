//! The seam between the connections and where writes go: the local engine, or the cluster
//! through raft. Everything that differs between a single node and a cluster node is here.

use super::*;

/// Where writes go: the local engine (which the healer replaces after a failure poisons its
/// log, see [`crate::heal`]), or the cluster (through raft).
pub enum Backend {
    Local(Arc<Local>),
    Cluster(Arc<Cluster>),
}

/// A submitted write, as [`Backend::write_at`] leaves it for its future to await.
enum Submitted {
    /// Proposed to the cluster when first polled; the key names the hash slot of a -MOVED.
    Cluster(Arc<Cluster>, Txn, Option<Bytes>),
    /// In the engine's queue.
    Local(Arc<Local>, keel_engine::Pending),
    Failed(Reply),
}

impl Backend {
    /// The engine reads come from (in a cluster, this node's replica).
    pub fn engine(&self) -> Arc<Engine> {
        match self {
            Backend::Local(l) => l.engine(),
            Backend::Cluster(c) => c.engine(),
        }
    }

    /// The single-node engine and its healer.
    pub fn local(&self) -> Option<&Arc<Local>> {
        match self {
            Backend::Local(l) => Some(l),
            Backend::Cluster(_) => None,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match self {
            Backend::Local(_) => None,
            Backend::Cluster(c) => Some(c),
        }
    }

    /// The log's health: poisoned or not, and the healer's reopen attempts. A cluster node does
    /// not reopen its engine (see the README): its counters stay 0.
    pub fn health(&self) -> Health {
        match self {
            Backend::Local(l) => l.health(),
            Backend::Cluster(c) => Health {
                poisoned: c
                    .engine()
                    .poisoned()
                    .map(|e| crate::heal::one_line(e.root())),
                ..Health::default()
            },
        }
    }

    /// The reply to an engine error: a poisoned log's refusal names its cause and the healer's
    /// retry interval.
    pub fn engine_error(&self, e: &keel_engine::Error) -> Reply {
        match self {
            Backend::Local(l) => refusal(l, e),
            Backend::Cluster(_) => cmd::engine_error(e),
        }
    }

    /// Submits a transaction (with `id`, as a KEEL.IDEM request). On a single node it is in the
    /// engine's queue when this returns, so writes keep the order they were submitted in; in a
    /// cluster it is proposed when the future is first polled, and a connection polls its
    /// writes one after another, in order.
    pub(super) fn write(
        &self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<Outcome, Reply>> + Send + 'static {
        // A single node decides the write's time itself: no clock read here for it.
        let at_ms = match self {
            Backend::Cluster(_) => now_ms(),
            Backend::Local(_) => 0,
        };
        self.write_at(id, at_ms, guards, writes)
    }

    /// [`Backend::write`], decided as of `at_ms` in a cluster (a script's dry run's time: its
    /// writes must be decided as the dry run decided them). A single node decides a write when
    /// it takes it. The future is the write's outcome once durable (in a cluster: held durably
    /// by a quorum and applied on this node), or the reply to its failure. It is not boxed:
    /// the caller's own future holds it, one allocation fewer per write.
    pub(super) fn write_at(
        &self,
        id: Option<Bytes>,
        at_ms: u64,
        guards: Vec<Guard>,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<Outcome, Reply>> + Send + 'static {
        let submitted = match self {
            Backend::Cluster(c) => {
                // The first key, which a follower's -MOVED names the hash slot of.
                let key = (writes.iter().flat_map(Write::keys))
                    .chain(guards.iter().map(|g| &g.key))
                    .next()
                    .cloned();
                let txn = Txn {
                    id,
                    at_ms,
                    guards,
                    writes,
                };
                Submitted::Cluster(c.clone(), txn, key)
            }
            Backend::Local(l) => {
                let engine = l.engine();
                let submitted = match id {
                    Some(id) => engine.submit_request(id, guards, writes),
                    None => engine.submit(guards, writes),
                };
                match submitted {
                    Ok(p) => Submitted::Local(l.clone(), p),
                    Err(e) => Submitted::Failed(self.engine_error(&e)),
                }
            }
        };
        async move {
            match submitted {
                Submitted::Cluster(c, txn, key) => {
                    (c.write(txn).await).map_err(|e| cluster_error(&e, key.as_deref()))
                }
                Submitted::Local(l, p) => p.await.map_err(|e| refusal(&l, &e)),
                Submitted::Failed(r) => Err(r),
            }
        }
    }

    /// Waits until the log's queue has room for `bytes` more. While it is full,
    /// `Engine::submit` blocks its thread, and with it every connection on this worker, so a
    /// connection waits here instead. (A cluster's writes go to raft, which bounds its own.)
    pub(super) async fn room(&self, bytes: usize) {
        if let Backend::Local(l) = self {
            l.engine().room(bytes).await;
        }
    }

    /// Makes the next read linearizable. In a cluster this node must be the leader, confirmed by
    /// a quorum, with everything committed applied; with `stale_ok`, a follower reads its own
    /// state instead. A single node's visible state is durable already.
    pub(super) async fn read_barrier(&self, stale_ok: bool) -> Result<(), ClusterError> {
        let Backend::Cluster(c) = self else {
            return Ok(());
        };
        if stale_ok && c.leader().is_none_or(|(id, _)| id != c.id) {
            return Ok(());
        }
        c.read_barrier().await
    }

    /// What Redis's `appendfsync` would be: a cluster node's raft log syncs every write (its
    /// engine's log need not).
    pub(super) fn appendfsync(&self) -> &'static str {
        match self {
            Backend::Cluster(_) => "always",
            Backend::Local(l) => match l.engine().options().wal.sync_policy {
                keel_wal::SyncPolicy::Always => "always",
                keel_wal::SyncPolicy::Interval(_) => "everysec",
                keel_wal::SyncPolicy::Never => "no",
            },
        }
    }
}

fn refusal(l: &Local, e: &keel_engine::Error) -> Reply {
    l.refusal(e).unwrap_or_else(|| cmd::engine_error(e))
}
