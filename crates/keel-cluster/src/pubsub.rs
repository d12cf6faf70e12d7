//! Pub/Sub across the cluster: a message published on one node is forwarded to every other
//! member, which publishes it to its own subscribers.
//!
//! Best effort, as Redis Cluster's bus is: nothing is retried or kept. Each peer has one sender
//! task, so one node's messages reach a peer in the order they were published there, and a
//! bounded queue, so a peer that is down or slow costs the publisher neither time nor memory:
//! what does not fit is dropped and counted. Messages travel on their own connection (the
//! raft transport, TLS included), in batches, each acknowledged before the next is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::metrics::RaftServerMetrics;
use openraft::LogId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::net::{self, Transport};
use crate::{Node, NodeId};

/// What may wait for one peer: Redis's `client-output-buffer-limit pubsub` hard limit, past
/// which a subscriber is disconnected, so no larger message could be delivered anyway.
pub const QUEUE_BYTES_MAX: usize = 32 << 20;
/// A batch grows to this many bytes (or one larger message) while the previous one is in flight.
const BATCH_BYTES_MAX: usize = 1 << 20;
/// A batch not acknowledged within this counts as lost, and its connection is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed send, messages for that peer are dropped for this long before it is tried
/// again: a node that is down costs one connection attempt a second, not one per message.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One PUBLISH (`shard: false`) or SPUBLISH.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    pub shard: bool,
    pub channel: Bytes,
    pub message: Bytes,
}

impl Message {
    /// What it counts for against [`QUEUE_BYTES_MAX`].
    fn size(&self) -> usize {
        self.channel.len() + self.message.len() + 64
    }
}

/// What a node does with a message a peer forwarded: publishes it to its own subscribers.
pub type Deliver = Box<dyn Fn(Message) + Send + Sync>;

/// Where the node's listener hands forwarded messages; set once the server is ready (until
/// then there is nobody to deliver to, and they are dropped).
#[derive(Clone, Default)]
pub(crate) struct Inbox(Arc<OnceLock<Deliver>>);

impl Inbox {
    pub(crate) fn deliver(&self, messages: Vec<Message>) {
        if let Some(d) = self.0.get() {
            messages.into_iter().for_each(d);
        }
    }
}

/// Messages forwarded to peers, and those dropped (queue full, peer unreachable or too slow).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub forwarded: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// The queue of one peer, which its sender task drains.
struct Queue {
    addr: String,
    tx: mpsc::UnboundedSender<Message>,
    /// Bytes waiting in `tx`: the bound is kept here, since a channel bounds only a count.
    bytes: Arc<AtomicUsize>,
    /// Set while the peer failed recently (see [`RETRY_AFTER`]).
    down: Arc<AtomicBool>,
}

/// The peers' queues, rebuilt when the membership changes.
#[derive(Default)]
struct Peers {
    membership: Option<LogId<NodeId>>,
    queues: HashMap<NodeId, Queue>,
}

pub(crate) struct Broadcast {
    me: NodeId,
    transport: Transport,
    metrics: watch::Receiver<RaftServerMetrics<NodeId, Node>>,
    runtime: tokio::runtime::Handle,
    peers: Mutex<Peers>,
    counters: Arc<Counters>,
    pub(crate) inbox: Inbox,
}

impl Broadcast {
    pub(crate) fn new(
        me: NodeId,
        transport: Transport,
        metrics: watch::Receiver<RaftServerMetrics<NodeId, Node>>,
    ) -> Broadcast {
        Broadcast {
            me,
            transport,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::default(),
            counters: Arc::default(),
            inbox: Inbox::default(),
        }
    }

    pub(crate) fn on_message(&self, deliver: Deliver) {
        let _ = self.inbox.0.set(deliver);
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Queues a message for every other member; never waits.
    pub(crate) fn publish(&self, shard: bool, channel: &[u8], message: &[u8]) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        self.follow_membership(&mut peers);
        if peers.queues.is_empty() {
            return;
        }
        // Copied once, and shared by the queues: a client's arguments may be slices of a
        // larger read buffer, which the queue would otherwise keep alive unaccounted.
        let m = Message {
            shard,
            channel: Bytes::copy_from_slice(channel),
            message: Bytes::copy_from_slice(message),
        };
        let size = m.size();
        for q in peers.queues.values() {
            let full = || q.bytes.load(Ordering::Relaxed) + size > QUEUE_BYTES_MAX;
            if q.down.load(Ordering::Relaxed) || full() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            q.bytes.fetch_add(size, Ordering::Relaxed);
            if q.tx.send(m.clone()).is_err() {
                q.bytes.fetch_sub(size, Ordering::Relaxed);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts a sender for each new member (or one whose address changed); a removed member's
    /// sender ends once its queue is dropped.
    fn follow_membership(&self, peers: &mut Peers) {
        let metrics = self.metrics.borrow();
        let membership = &metrics.membership_config;
        if peers.membership == *membership.log_id() {
            return;
        }
        peers.membership = *membership.log_id();
        let mut queues = HashMap::new();
        for (id, node) in membership.nodes().filter(|(id, _)| **id != self.me) {
            let q = match peers.queues.remove(id) {
                Some(q) if q.addr == node.raft => q,
                _ => self.start_sender(*id, node.raft.clone()),
            };
            queues.insert(*id, q);
        }
        peers.queues = queues;
    }

    fn start_sender(&self, id: NodeId, addr: String) -> Queue {
        let (tx, rx) = mpsc::unbounded_channel();
        let q = Queue {
            addr: addr.clone(),
            tx,
            bytes: Arc::default(),
            down: Arc::default(),
        };
        let sender = Sender {
            id,
            addr,
            transport: self.transport.clone(),
            rx,
            bytes: q.bytes.clone(),
            down: q.down.clone(),
            counters: self.counters.clone(),
        };
        self.runtime.spawn(sender.run());
        q
    }
}

/// Sends one peer's queue, a batch at a time, on a connection of its own.
struct Sender {
    id: NodeId,
    addr: String,
    transport: Transport,
    rx: mpsc::UnboundedReceiver<Message>,
    bytes: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Sender {
    async fn run(mut self) {
        let mut conn = None;
        while let Some(first) = self.rx.recv().await {
            let mut size = first.size();
            let mut batch = vec![first];
            while size < BATCH_BYTES_MAX {
                let Ok(m) = self.rx.try_recv() else { break };
                size += m.size();
                batch.push(m);
            }
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            let n = batch.len() as u64;
            let sent = tokio::time::timeout(
                SEND_TIMEOUT,
                net::publish(&mut conn, &self.transport, &self.addr, batch),
            )
            .await;
            match sent {
                Ok(Ok(())) => {
                    self.counters.forwarded.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = self.id, addr = %self.addr, error = %e, "pubsub: forwarding failed")
                }
                Err(_) => {
                    tracing::debug!(peer = self.id, addr = %self.addr, "pubsub: no acknowledgement within {SEND_TIMEOUT:?}")
                }
            }
            // A batch that timed out may still be delivered, late; it counts as dropped.
            conn = None;
            self.down.store(true, Ordering::Relaxed);
            let mut dropped = n + self.drain();
            tokio::time::sleep(RETRY_AFTER).await;
            dropped += self.drain();
            self.down.store(false, Ordering::Relaxed);
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Drops whatever is queued; returns how many messages.
    fn drain(&mut self) -> u64 {
        let mut n = 0;
        while let Ok(m) = self.rx.try_recv() {
            self.bytes.fetch_sub(m.size(), Ordering::Relaxed);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Membership, StoredMembership};

    use super::*;

    /// A peer that accepts and never reads: the publisher never waits for it, and what does
    /// not fit in the peer's queue is dropped and counted. (On this one-thread runtime the
    /// sender cannot run during the loop, so the queue holds exactly what fits.)
    #[tokio::test]
    async fn a_stuck_peer_costs_a_bounded_queue() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _held = tokio::spawn(async move {
            let (_stuck, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        let peer = Node {
            raft: addr,
            client: String::new(),
        };
        let nodes = BTreeMap::from([(1, Node::default()), (2, peer)]);
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 1);
        let metrics = RaftServerMetrics {
            membership_config: Arc::new(StoredMembership::new(Some(log_id), membership)),
            ..Default::default()
        };
        let (_tx, rx) = watch::channel(metrics);
        let b = Broadcast::new(1, Transport::default(), rx);
        let message = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            b.publish(false, b"ch", &message);
        }
        let fits = QUEUE_BYTES_MAX / (message.len() + 2 + 64);
        assert_eq!(b.counts().dropped, 64 - fits as u64);
        assert_eq!(b.counts().forwarded, 0);
    }
}
