//! The cluster's commands: KEEL.CLUSTER, and Redis Cluster's view of a keel cluster for
//! cluster-aware clients (redis-rs's ClusterClient, redis-py's RedisCluster, ioredis's Cluster,
//! go-redis's ClusterClient), which ask for the topology before anything else: CLUSTER SLOTS,
//! SHARDS, NODES, INFO, MYID, KEYSLOT and HELP, READONLY and READWRITE.
//!
//! A keel cluster is one Redis Cluster shard. Every node holds every key, so the shard owns all
//! 16,384 hash slots; the raft leader is its master and every other member (voter or learner)
//! one of its replicas. A client therefore sends everything to the leader, and a follower's
//! `-MOVED SLOT HOST:PORT` names the key's real slot ([`key_slot`]), as a Redis node's does:
//! clients that check the slot against their own map find it where they expect it.
//!
//! Node ids: Redis names a node by 40 hex digits (random there). keel writes its numeric
//! `--node-id` as 40 lowercase hex digits, zero-padded ([`node_name`]: node 1 is
//! `0000000000000000000000000000000000000001`), so every node names every member the same way,
//! across restarts, and the keel id reads back from the last digits.
//!
//! What keel does not track, it does not make up: every member is reported connected and
//! online (raft's heartbeats are not exposed per node), ping and pong times are 0, and a
//! replica's replication offset is the raft log index the leader knows it holds (0 where this
//! node does not know it), not a byte offset.

use super::*;
use keel_cluster::{NodeId, Status};

/// Redis Cluster's hash slots: a key's slot is its CRC16 modulo this.
pub const SLOTS: u16 = 16_384;
const _: () = assert!(SLOTS.is_power_of_two());

/// Redis Cluster's CRC16: the XMODEM variant (polynomial 0x1021, initial value 0, no
/// reflection), as the Redis Cluster specification names it.
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

/// The reply of every cluster command on a single node, Redis's text for a server not in
/// cluster mode.
const DISABLED: &str = "ERR This instance has cluster support disabled";

/// The hash slot of a key, as Redis Cluster computes it: CRC16 of its hash tag, modulo 16,384.
pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) % SLOTS
}

/// The bytes of a key that decide its slot (the Redis Cluster specification's hash tags):
/// those between the first `{` and the first `}` after it, if there is at least one; else the
/// whole key. So `{user1000}.following` and `{user1000}.followers` share a slot.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &rest[..len],
        _ => key,
    }
}

/// A node's Redis Cluster id: its keel id as 40 hex digits, zero-padded.
pub fn node_name(id: NodeId) -> String {
    format!("{id:040x}")
}

/// The first key of `args` run as `spec`, which a follower's `-MOVED` names the slot of: the
/// first key its compiled writes touch for a data command, else the first its key spec names.
pub(super) fn first_key(spec: &cmd::Command, args: &[Bytes]) -> Option<Bytes> {
    if let Some(Ok(p)) = spec.compile(args, now_ms()) {
        return (p.writes.iter().flat_map(Write::keys))
            .chain(p.guards.iter().map(|g| &g.key))
            .next()
            .cloned();
    }
    let first = usize::try_from(spec.keys.0).ok().filter(|&i| i > 0)?;
    args.get(first).cloned()
}

/// Redis's mode, as INFO's `redis_mode` and HELLO's `mode` report it.
pub(super) fn redis_mode(cluster: Option<&Arc<Cluster>>) -> &'static str {
    match cluster {
        None => "standalone",
        Some(_) => "cluster",
    }
}

/// INFO's cluster section: `cluster_enabled` as Redis reports it, and on a cluster node the
/// raft state (KEEL.CLUSTER STATUS's lines) and the Pub/Sub messages forwarded to other members
/// and dropped on the way.
pub(super) fn info_section(cluster: Option<&Arc<Cluster>>) -> String {
    let mut o = String::from("# Cluster\r\n");
    match cluster {
        None => o.push_str("cluster_enabled:0\r\n"),
        Some(c) => {
            o.push_str("cluster_enabled:1\r\n");
            o.push_str(&status_text(&c.status()));
            let p = c.pubsub_counts();
            o.push_str(&format!(
                "pubsub_forwarded:{}\r\npubsub_forward_dropped:{}\r\n",
                p.forwarded, p.dropped
            ));
        }
    }
    o.push_str("\r\n");
    o
}

impl Conn {
    /// CLUSTER, READONLY, READWRITE and KEEL.CLUSTER.
    pub(super) async fn cluster_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match (name, self.sh.cluster().cloned()) {
            ("keel.cluster", _) => keel_cluster(self.sh.clone(), args).await,
            (_, None) => Reply::err(DISABLED),
            // Where the node allows stale reads (--stale-reads), a connection has them until it
            // asks for READWRITE; without it, reads on a follower always go to the leader.
            ("readonly", Some(_)) => {
                self.stale_reads = true;
                Reply::ok()
            }
            ("readwrite", Some(_)) => {
                self.stale_reads = false;
                Reply::ok()
            }
            (_, Some(c)) => cluster(&c, self.sh.settings.tls.is_some(), &args),
        };
        self.reply(reply);
        Flow::Continue
    }
}

/// `CLUSTER subcommand`, on a cluster node.
fn cluster(c: &Cluster, tls: bool, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("help", 2) => {
            let lines = crate::docs::help_lines("cluster").unwrap_or_default();
            Reply::Array(lines.into_iter().map(Reply::simple).collect())
        }
        ("myid", 2) => Reply::bulk(node_name(c.id)),
        ("keyslot", 3) => Reply::Int(key_slot(&args[2]).into()),
        ("info", 2) => Reply::Verbatim(cluster_info(&c.status())),
        ("nodes", 2) => Reply::Verbatim(nodes_text(&Shard::of(&c.status()))),
        ("slots", 2) => slots_reply(&Shard::of(&c.status())),
        ("shards", 2) => shards_reply(&Shard::of(&c.status()), tls),
        ("help" | "myid" | "keyslot" | "info" | "nodes" | "slots" | "shards", _) => {
            cmd::wrong_args(&format!("cluster|{sub}"))
        }
        _ => unknown_subcommand(&args[1], "CLUSTER"),
    }
}

/// One member of the shard, as Redis Cluster's replies describe a node.
struct Member {
    id: NodeId,
    host: String,
    port: u16,
    /// The raft port: Redis's cluster bus port.
    bus_port: u16,
    master: bool,
    myself: bool,
    /// The last raft log index this node knows the member holds.
    offset: u64,
}

/// The one shard: its members, the master (the leader, if this node knows it) first.
struct Shard {
    members: Vec<Member>,
    /// The raft term: Redis's epochs.
    epoch: u64,
}

impl Shard {
    fn of(s: &Status) -> Shard {
        let leader = s.leader.filter(|l| s.members.contains_key(l));
        let mut members: Vec<Member> = (s.members.iter())
            .map(|(&id, (node, _voter))| {
                let (host, port) = split_addr(&node.client);
                let offset = if id == s.id {
                    s.applied_index
                } else {
                    s.replication.get(&id).and_then(|(matched, _)| *matched)
                };
                Member {
                    id,
                    host,
                    port,
                    bus_port: split_addr(&node.raft).1,
                    master: Some(id) == leader,
                    myself: id == s.id,
                    offset: offset.unwrap_or(0),
                }
            })
            .collect();
        members.sort_by_key(|m| (!m.master, m.id));
        Shard {
            members,
            epoch: s.term,
        }
    }

    fn master(&self) -> Option<&Member> {
        self.members.first().filter(|m| m.master)
    }
}

/// A `host:port` address's host (IPv6 brackets removed) and port.
fn split_addr(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

/// CLUSTER INFO, with Redis's field names. The state is `ok` while this node knows a leader;
/// the epochs are the raft term.
fn cluster_info(s: &Status) -> String {
    let ok = s.leader.is_some_and(|l| s.members.contains_key(&l));
    let slots_ok = if ok { SLOTS } else { 0 };
    let fields: [(&str, &dyn std::fmt::Display); 9] = [
        ("cluster_state", &if ok { "ok" } else { "fail" }),
        ("cluster_slots_assigned", &SLOTS),
        ("cluster_slots_ok", &slots_ok),
        ("cluster_slots_pfail", &0),
        ("cluster_slots_fail", &(SLOTS - slots_ok)),
        ("cluster_known_nodes", &s.members.len()),
        ("cluster_size", &1),
        ("cluster_current_epoch", &s.term),
        ("cluster_my_epoch", &s.term),
    ];
    fields.iter().map(|(k, v)| format!("{k}:{v}\r\n")).collect()
}

/// CLUSTER NODES: a line per member, in Redis's format: id, `ip:port@bus-port`, flags, its
/// master's id (`-` for the master), ping sent, pong received, config epoch, link state and,
/// for the master, its slots.
fn nodes_text(shard: &Shard) -> String {
    let master = shard.master().map_or("-".to_string(), |m| node_name(m.id));
    let mut o = String::new();
    for m in &shard.members {
        let role = if m.master { "master" } else { "slave" };
        let flags = if m.myself {
            format!("myself,{role}")
        } else {
            role.to_string()
        };
        let (of, slots) = match m.master {
            true => ("-", format!(" 0-{}", SLOTS - 1)),
            false => (master.as_str(), String::new()),
        };
        o.push_str(&format!(
            "{} {}:{}@{} {flags} {of} 0 0 {} connected{slots}\n",
            node_name(m.id),
            m.host,
            m.port,
            m.bus_port,
            shard.epoch
        ));
    }
    o
}

/// CLUSTER SLOTS: one range, 0–16383, served by the master and then its replicas, each as
/// `[host, port, id, {}]` (no metadata: keel announces no separate hostname). Empty while no
/// leader is known, so a client asks again instead of routing to a node that would refuse.
fn slots_reply(shard: &Shard) -> Reply {
    if shard.master().is_none() {
        return Reply::Array(Vec::new());
    }
    let mut range = vec![Reply::Int(0), Reply::Int(i64::from(SLOTS) - 1)];
    range.extend(shard.members.iter().map(|m| {
        Reply::Array(vec![
            Reply::bulk(m.host.clone()),
            Reply::Int(m.port.into()),
            Reply::bulk(node_name(m.id)),
            Reply::Map(Vec::new()),
        ])
    }));
    Reply::Array(vec![Reply::Array(range)])
}

/// CLUSTER SHARDS: the one shard, its slots as start–end pairs and its nodes as maps with
/// Redis's fields. Every member is a replica while no leader is known.
fn shards_reply(shard: &Shard, tls: bool) -> Reply {
    let s = |x: &str| Reply::bulk(x.to_string());
    let nodes = (shard.members.iter())
        .map(|m| {
            Reply::Map(vec![
                (s("id"), Reply::bulk(node_name(m.id))),
                (
                    s(if tls { "tls-port" } else { "port" }),
                    Reply::Int(m.port.into()),
                ),
                (s("ip"), s(&m.host)),
                (s("endpoint"), s(&m.host)),
                (s("role"), s(if m.master { "master" } else { "replica" })),
                (s("replication-offset"), Reply::Int(m.offset as i64)),
                (s("health"), s("online")),
            ])
        })
        .collect();
    Reply::Array(vec![Reply::Map(vec![
        (
            s("slots"),
            Reply::Array(vec![Reply::Int(0), Reply::Int(i64::from(SLOTS) - 1)]),
        ),
        (s("nodes"), Reply::Array(nodes)),
    ])])
}

/// `KEEL.CLUSTER INIT | ADD-NODE RAFT-ADDR | REMOVE-NODE ID | STATUS`.
async fn keel_cluster(sh: Arc<Shared>, args: Vec<Bytes>) -> Reply {
    let Some(c) = sh.cluster() else {
        return Reply::err(
            "ERR This instance has cluster support disabled (start it with --node-id)",
        );
    };
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("init", 2) => {
            let peers: Vec<String> = sh
                .settings
                .cluster
                .as_ref()
                .map(|s| s.peers.iter().map(|(_, a)| a.clone()).collect())
                .unwrap_or_default();
            match c.init(&peers).await {
                Ok(m) => Reply::bulk(format!(
                    "initialized a cluster of {} nodes: {}",
                    m.len(),
                    m.keys()
                        .map(|id| id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(e) => cluster_error(&e, None),
            }
        }
        ("add-node", 3) => match c.add_node(&String::from_utf8_lossy(&args[2])).await {
            Ok(id) => Reply::Int(id as i64),
            Err(e) => cluster_error(&e, None),
        },
        ("remove-node", 3) => match std::str::from_utf8(&args[2])
            .ok()
            .and_then(|s| s.parse().ok())
        {
            None => Reply::err("ERR node id must be a number"),
            Some(id) => match c.remove_node(id).await {
                Ok(()) => Reply::ok(),
                Err(e) => cluster_error(&e, None),
            },
        },
        ("status", 2) => Reply::bulk(status_text(&c.status())),
        ("init" | "add-node" | "remove-node" | "status" | "help", _) => {
            cmd::wrong_args("keel.cluster")
        }
        _ => unknown_subcommand(&args[1], "KEEL.CLUSTER"),
    }
}

/// `KEEL.CLUSTER STATUS` as `key:value` lines, like INFO.
pub fn status_text(s: &keel_cluster::Status) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut o = format!(
        "node_id:{}\r\nstate:{}\r\nterm:{}\r\nleader:{}\r\nlast_log_index:{}\r\napplied_index:{}\r\nsnapshot_index:{}\r\npurged_index:{}\r\n",
        s.id,
        s.state,
        s.term,
        opt(s.leader),
        opt(s.last_log_index),
        opt(s.applied_index),
        opt(s.snapshot_index),
        opt(s.purged_index),
    );
    o.push_str(&format!(
        "raft_log_records:{}\r\nraft_log_fsyncs:{}\r\nraft_log_fsync_mean_us:{}\r\n",
        s.log_records, s.log_syncs, s.log_sync_mean_us
    ));
    for (id, (node, voter)) in &s.members {
        let role = if *voter { "voter" } else { "learner" };
        o.push_str(&format!(
            "member_{id}:{role},raft={},client={}",
            node.raft, node.client
        ));
        if let Some((matched, lag)) = s.replication.get(id) {
            o.push_str(&format!(",match_index={},lag={lag}", opt(*matched)));
        }
        o.push_str("\r\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_cluster::Node;
    use std::collections::BTreeMap;

    #[test]
    fn slots_are_redis_clusters() {
        // The check value of CRC-16/XMODEM, which the Redis Cluster specification also gives.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31c3);
        // redis-cli's `-> Redirected to slot [12182]` for `SET foo bar`, and the CLUSTER
        // KEYSLOT examples of Redis's documentation.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"bar{hash_tag}"), 2515);
        assert_eq!(key_slot(b""), 0);
        // The specification's hash tag cases.
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{unclosed"), b"{unclosed");
        assert_eq!(hash_tag(b"}{a}"), b"a");
        for k in [&b"x"[..], b"\xff\xfe", b"a much longer key name than most"] {
            assert!(key_slot(k) < SLOTS);
        }
    }

    #[test]
    fn node_names_are_40_hex_digits_that_read_back() {
        assert_eq!(node_name(1), "0000000000000000000000000000000000000001");
        assert_eq!(
            node_name(u64::MAX),
            format!("{}{}", "0".repeat(24), "f".repeat(16))
        );
        for id in [0, 7, 255, 1 << 40] {
            let n = node_name(id);
            assert_eq!(n.len(), 40);
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert_eq!(u64::from_str_radix(&n[24..], 16), Ok(id));
        }
    }

    fn status(me: NodeId, leader: Option<NodeId>) -> Status {
        let node = |p: u16| Node {
            raft: format!("127.0.0.1:{}", p + 10_000),
            client: format!("127.0.0.1:{p}"),
        };
        Status {
            id: me,
            state: "follower".into(),
            term: 7,
            leader,
            last_log_index: Some(40),
            applied_index: Some(39),
            snapshot_index: None,
            purged_index: None,
            members: BTreeMap::from([
                (1, (node(7301), true)),
                (2, (node(7302), true)),
                (3, (node(7303), false)),
            ]),
            replication: BTreeMap::new(),
            log_records: 0,
            log_syncs: 0,
            log_sync_mean_us: 0,
        }
    }

    #[test]
    fn the_leader_is_the_master_of_the_one_shard() {
        let s = Shard::of(&status(3, Some(2)));
        let ids: Vec<_> = s
            .members
            .iter()
            .map(|m| (m.id, m.master, m.myself))
            .collect();
        assert_eq!(ids, [(2, true, false), (1, false, false), (3, false, true)]);
        let n2 = node_name(2);
        assert_eq!(
            nodes_text(&s),
            format!(
                "{n2} 127.0.0.1:7302@17302 master - 0 0 7 connected 0-16383\n\
                 {} 127.0.0.1:7301@17301 slave {n2} 0 0 7 connected\n\
                 {} 127.0.0.1:7303@17303 myself,slave {n2} 0 0 7 connected\n",
                node_name(1),
                node_name(3)
            )
        );
        let Reply::Array(ranges) = slots_reply(&s) else {
            panic!()
        };
        let Reply::Array(range) = &ranges[0] else {
            panic!()
        };
        assert_eq!(range[..2], [Reply::Int(0), Reply::Int(16383)]);
        assert_eq!(
            range[2],
            Reply::Array(vec![
                Reply::bulk("127.0.0.1"),
                Reply::Int(7302),
                Reply::bulk(n2),
                Reply::Map(vec![])
            ])
        );
        assert_eq!(range.len(), 5);
        let info = cluster_info(&status(3, Some(2)));
        assert!(info.starts_with("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n"));
        assert!(info.contains("\r\ncluster_known_nodes:3\r\ncluster_size:1\r\n"));
        assert!(info.ends_with("cluster_current_epoch:7\r\ncluster_my_epoch:7\r\n"));
    }

    #[test]
    fn without_a_leader_no_node_serves_the_slots() {
        let st = status(1, None);
        let s = Shard::of(&st);
        assert!(s.master().is_none());
        assert_eq!(slots_reply(&s), Reply::Array(vec![]));
        assert!(!nodes_text(&s).contains("master"));
        let info = cluster_info(&st);
        assert!(info.contains("cluster_state:fail\r\n"));
        assert!(info.contains("cluster_slots_ok:0\r\n"));
        assert!(info.contains("cluster_slots_fail:16384\r\n"));
        // A leader this node has no address for counts as none.
        assert!(Shard::of(&status(1, Some(9))).master().is_none());
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(split_addr("127.0.0.1:7301"), ("127.0.0.1".into(), 7301));
        assert_eq!(split_addr("[::1]:7301"), ("::1".into(), 7301));
        assert_eq!(split_addr("db.example:6379"), ("db.example".into(), 6379));
    }
}
