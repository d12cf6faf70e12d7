//! Pub/Sub: SUBSCRIBE, PSUBSCRIBE and SSUBSCRIBE with their UN- forms, PUBLISH, SPUBLISH and
//! PUBSUB.
//!
//! Messages are not durable, as in Redis: a message reaches the clients subscribed when it is
//! published, and nothing keeps it. A message waits in its subscriber's push queue
//! ([`Client::push`]) until the connection writes it. On a cluster, PUBLISH and SPUBLISH are
//! also forwarded to every other member, best effort ([`keel_cluster::pubsub`]); keyspace
//! notifications are not, since each node publishes those of the writes it takes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::*;

/// What Redis's RESP2 subscribed mode lets a client send.
const ALLOWED_WHILE_SUBSCRIBED: &[&str] = &[
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "unsubscribe",
    "punsubscribe",
    "sunsubscribe",
    "ping",
    "quit",
    "reset",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel,
    Pattern,
    Shard,
}

type Table = HashMap<Bytes, HashMap<u64, Arc<Client>>>;

/// Every subscription of every client.
#[derive(Default)]
pub struct PubSub {
    channels: Mutex<Table>,
    patterns: Mutex<Table>,
    shard: Mutex<Table>,
}

impl PubSub {
    fn table(&self, kind: Kind) -> std::sync::MutexGuard<'_, Table> {
        crate::lock(match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
            Kind::Shard => &self.shard,
        })
    }

    /// Sends a message to every client subscribed to the channel (or, for PUBLISH, to a
    /// pattern it matches); returns how many it reached.
    pub fn publish(&self, shard: bool, channel: &Bytes, message: &Bytes) -> usize {
        let size = channel.len() + message.len() + 64;
        let bulk = |b: &Bytes| Reply::Bulk(b.clone());
        let mut n = 0;
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        let word = if shard { "smessage" } else { "message" };
        if let Some(subs) = self.table(kind).get(channel) {
            let m = Message::new(Reply::Push(vec![
                Reply::bulk(word),
                bulk(channel),
                bulk(message),
            ]));
            for s in subs.values() {
                s.push(Pushed::Message(m.clone()), size);
                n += 1;
            }
        }
        if !shard {
            for (pattern, subs) in self.table(Kind::Pattern).iter() {
                if !glob::matches(pattern, channel) {
                    continue;
                }
                let m = Message::new(Reply::Push(vec![
                    Reply::bulk("pmessage"),
                    bulk(pattern),
                    bulk(channel),
                    bulk(message),
                ]));
                for s in subs.values() {
                    s.push(Pushed::Message(m.clone()), size + pattern.len());
                    n += 1;
                }
            }
        }
        n
    }

    /// How many clients a message published now would reach (see [`PubSub::publish`]).
    pub fn receivers(&self, shard: bool, channel: &Bytes) -> usize {
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        let direct = self.table(kind).get(channel).map_or(0, HashMap::len);
        let patterns = match shard {
            true => 0,
            false => (self.table(Kind::Pattern).iter())
                .filter(|(p, _)| glob::matches(p, channel))
                .map(|(_, subs)| subs.len())
                .sum(),
        };
        direct + patterns
    }

    /// `PUBSUB CHANNELS | NUMSUB | NUMPAT | SHARDCHANNELS | SHARDNUMSUB`.
    pub fn command(&self, args: &[Bytes]) -> Reply {
        let sub = lower(&args[1]);
        let names = |kind: Kind, pattern: Option<&Bytes>| {
            let t = self.table(kind);
            let mut v: Vec<Bytes> = (t.keys())
                .filter(|c| pattern.is_none_or(|p| glob::matches(p, c)))
                .cloned()
                .collect();
            v.sort();
            Reply::Array(v.into_iter().map(Reply::Bulk).collect())
        };
        let counts = |kind: Kind| {
            let t = self.table(kind);
            let pairs = args[2..]
                .iter()
                .map(|c| {
                    let n = t.get(c).map_or(0, |s| s.len());
                    (Reply::Bulk(c.clone()), Reply::Int(n as i64))
                })
                .collect();
            Reply::Map(pairs)
        };
        match (sub.as_str(), args.len()) {
            ("channels", 2 | 3) => names(Kind::Channel, args.get(2)),
            ("shardchannels", 2 | 3) => names(Kind::Shard, args.get(2)),
            ("numsub", _) => counts(Kind::Channel),
            ("shardnumsub", _) => counts(Kind::Shard),
            ("numpat", 2) => Reply::Int(self.table(Kind::Pattern).len() as i64),
            ("channels" | "shardchannels" | "numpat", _) => {
                cmd::wrong_args(&format!("pubsub|{sub}"))
            }
            _ => unknown_subcommand(&args[1], "PUBSUB"),
        }
    }
}

impl Shared {
    /// PUBLISH and SPUBLISH: to this node's subscribers and, on a cluster, forwarded to the
    /// other members'. The count is this node's receivers only, as in Redis Cluster: the
    /// publisher never waits for its peers.
    pub(super) fn publish(&self, shard: bool, channel: &Bytes, message: &Bytes) -> usize {
        let n = self.pubsub.publish(shard, channel, message);
        if let Some(c) = self.cluster() {
            c.publish(shard, channel, message);
        }
        n
    }

    /// Publishes what other members forward to this node's subscribers.
    pub(super) fn receive_forwarded(self: &Arc<Self>) {
        let Some(c) = self.cluster() else { return };
        // Weak: the cluster, which the server holds, must not keep the server alive.
        let sh = Arc::downgrade(self);
        c.on_message(Box::new(move |m| {
            if let Some(sh) = sh.upgrade() {
                sh.pubsub.publish(m.shard, &m.channel, &m.message);
            }
        }));
    }
}

/// A connection's subscriptions.
pub(super) struct Subs {
    sh: Arc<Shared>,
    me: Arc<Client>,
    names: [HashSet<Bytes>; 3],
}

impl Subs {
    fn new(sh: Arc<Shared>, me: Arc<Client>) -> Subs {
        Subs {
            sh,
            me,
            names: Default::default(),
        }
    }

    fn names(&mut self, kind: Kind) -> &mut HashSet<Bytes> {
        &mut self.names[kind as usize]
    }

    /// Channels and patterns: what SUBSCRIBE's and PSUBSCRIBE's replies count.
    pub fn count(&self) -> usize {
        self.names[Kind::Channel as usize].len() + self.names[Kind::Pattern as usize].len()
    }

    fn subscribe(&mut self, kind: Kind, name: &Bytes) {
        if self.names(kind).insert(name.clone()) {
            self.me.subscriptions[kind as usize].fetch_add(1, Ordering::Relaxed);
            let (id, me) = (self.me.id, self.me.clone());
            let mut t = self.sh.pubsub.table(kind);
            t.entry(name.clone()).or_default().insert(id, me);
        }
    }

    fn unsubscribe(&mut self, kind: Kind, name: &Bytes) {
        if self.names(kind).remove(name) {
            self.me.subscriptions[kind as usize].fetch_sub(1, Ordering::Relaxed);
            forget(&mut self.sh.pubsub.table(kind), name, self.me.id);
        }
    }
}

/// Removes one client's subscription from a table, and the name once nobody is subscribed.
fn forget(t: &mut Table, name: &Bytes, id: u64) {
    if let Some(subs) = t.get_mut(name) {
        subs.remove(&id);
        if subs.is_empty() {
            t.remove(name);
        }
    }
}

/// A connection that closes, or RESETs, leaves no subscription behind.
impl Drop for Subs {
    fn drop(&mut self) {
        for kind in [Kind::Channel, Kind::Pattern, Kind::Shard] {
            let names = std::mem::take(self.names(kind));
            self.me.subscriptions[kind as usize].store(0, Ordering::Relaxed);
            let mut t = self.sh.pubsub.table(kind);
            for name in &names {
                forget(&mut t, name, self.me.id);
            }
        }
    }
}

impl Conn {
    /// Whether RESP2's subscribed mode refuses this command.
    pub(super) fn refused_while_subscribed(&self, name: &str) -> Option<Reply> {
        let subscribed = self.subs.as_ref().is_some_and(|s| s.count() > 0);
        (subscribed && self.proto == 2 && !ALLOWED_WHILE_SUBSCRIBED.contains(&name)).then(|| {
            Reply::err(format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ))
        })
    }

    /// PING in RESP2's subscribed mode answers as Redis's does there.
    pub(super) fn subscribed_ping(&self, args: &[Bytes]) -> Option<Reply> {
        let subscribed = self.subs.as_ref().is_some_and(|s| s.count() > 0);
        (subscribed && self.proto == 2).then(|| {
            let msg = args.get(1).cloned().unwrap_or_default();
            Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(msg)])
        })
    }

    /// Writes a message out of band: after the replies already queued, even with CLIENT
    /// REPLY OFF.
    pub(super) fn push(&mut self, r: Reply) {
        if self.queue.is_empty() {
            r.encode(self.proto, &mut self.out);
        } else {
            self.queue.push_back(Slot::Ready(r));
        }
    }

    /// Writes an out-of-band reply taken from the connection's queue of them.
    pub(super) fn push_out(&mut self, p: Pushed) {
        match p {
            Pushed::Reply(r) => self.push(r),
            Pushed::Message(m) if self.queue.is_empty() => {
                self.out.extend_from_slice(m.encoded(self.proto));
            }
            Pushed::Message(m) => self.queue.push_back(Slot::Ready(m.reply.clone())),
            Pushed::Wake => {}
        }
    }

    /// Writes the messages waiting for this connection while what it holds to send stays
    /// under [`FLUSH_BYTES`]: the rest stay in the queue, where they count against the
    /// connection's bound (P11). Taking them all would move them out of the bound's sight, into
    /// the output buffer or behind a reply still pending, and a subscriber that stops reading
    /// could then hold more than the bound.
    pub(super) fn push_waiting(&mut self) {
        let mut held = self.out.len();
        while let Some((p, size)) = next_waiting(&mut self.pushes, &mut held) {
            self.client.pushed(size);
            self.push_out(p);
        }
    }

    /// Drops every subscription (RESET).
    pub(super) fn unsubscribe_all(&mut self) {
        self.subs = None;
    }

    /// The Pub/Sub commands.
    pub(super) fn pubsub_command(&mut self, name: &str, args: &[Bytes]) {
        let (kind, on) = match name {
            "publish" | "spublish" => {
                let n = self.sh.publish(name == "spublish", &args[1], &args[2]);
                self.reply(Reply::Int(n as i64));
                self.push_waiting();
                return;
            }
            "pubsub" => {
                let r = self.sh.pubsub.command(args);
                self.reply(r);
                return;
            }
            "subscribe" => (Kind::Channel, true),
            "psubscribe" => (Kind::Pattern, true),
            "ssubscribe" => (Kind::Shard, true),
            "unsubscribe" => (Kind::Channel, false),
            "punsubscribe" => (Kind::Pattern, false),
            _ => (Kind::Shard, false),
        };
        let subs = self
            .subs
            .get_or_insert_with(|| Subs::new(self.sh.clone(), self.client.clone()));
        // Each channel gets its own confirmation; UNSUBSCRIBE without names drops them all.
        let names: Vec<Bytes> = if args.len() > 1 {
            args[1..].to_vec()
        } else {
            subs.names(kind).iter().cloned().collect()
        };
        let mut replies = Vec::new();
        let count = |subs: &Subs| {
            if kind == Kind::Shard {
                subs.names[Kind::Shard as usize].len()
            } else {
                subs.count()
            }
        };
        for n in &names {
            if on {
                subs.subscribe(kind, n);
            } else {
                subs.unsubscribe(kind, n);
            }
            replies.push(Reply::Push(vec![
                Reply::bulk(name.to_string()),
                Reply::Bulk(n.clone()),
                Reply::Int(count(subs) as i64),
            ]));
        }
        if names.is_empty() {
            replies.push(Reply::Push(vec![
                Reply::bulk(name.to_string()),
                Reply::Nil,
                Reply::Int(count(subs) as i64),
            ]));
        }
        for r in replies {
            self.push(r);
        }
    }
}

/// The next message waiting on `pushes`, with its size, unless what the connection holds
/// (`held` bytes, to which the message is added) has reached [`FLUSH_BYTES`]: a drain leaves it
/// holding at most that plus one message. A message counts whether it goes to the output
/// buffer or behind a reply not yet ready.
fn next_waiting(
    pushes: &mut tokio::sync::mpsc::UnboundedReceiver<(Pushed, usize)>,
    held: &mut usize,
) -> Option<(Pushed, usize)> {
    if *held >= FLUSH_BYTES {
        return None;
    }
    let (p, size) = pushes.try_recv().ok()?;
    *held += size;
    Some((p, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P11: a drain takes no more than [`FLUSH_BYTES`] and one message, whatever waits, and
    /// what the connection already holds counts.
    #[test]
    fn a_drain_of_waiting_messages_stops_at_the_flush_bound() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let size = 1000;
        let message = || Pushed::Reply(Reply::Bulk(Bytes::from(vec![b'm'; size])));
        for _ in 0..10 * FLUSH_BYTES / size {
            tx.send((message(), size)).unwrap();
        }
        let drain = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<_>, mut held| {
            let mut taken = 0;
            while let Some((_, size)) = next_waiting(rx, &mut held) {
                taken += size;
            }
            taken
        };
        let first = drain(&mut rx, 0);
        assert!(
            (FLUSH_BYTES..FLUSH_BYTES + size).contains(&first),
            "took {first}"
        );
        // Half the bound held already (output, or replies not ready): half as much is taken.
        let second = drain(&mut rx, FLUSH_BYTES / 2);
        assert!(
            (FLUSH_BYTES / 2..FLUSH_BYTES / 2 + size).contains(&second),
            "took {second}"
        );
        assert_eq!(drain(&mut rx, FLUSH_BYTES), 0);
        // Nothing was lost: the rest still waits, in order, for the next turns.
        let mut rest = 0;
        while drain(&mut rx, 0) > 0 {
            rest += 1;
        }
        assert!(rest >= 8, "{rest} more drains");
    }
}
