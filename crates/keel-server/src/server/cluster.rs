//! The cluster's commands (KEEL.CLUSTER), and the hash slots of Redis Cluster.
//!
//! A keel cluster is one Redis Cluster shard: every node holds every key, so the shard owns all
//! 16,384 hash slots, and a follower's `-MOVED SLOT HOST:PORT` names the key's real slot
//! ([`key_slot`]), as a Redis node's does: clients that check the slot against their own map
//! find it where they expect it.

use super::*;

/// Redis Cluster's hash slots: a key's slot is its CRC16 modulo this.
pub const SLOTS: u16 = 16_384;
const _: () = assert!(SLOTS.is_power_of_two());

/// Redis Cluster's CRC16: the XMODEM variant (polynomial 0x1021, initial value 0, no
/// reflection), as the Redis Cluster specification names it.
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

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

/// `KEEL.CLUSTER INIT | ADD-NODE RAFT-ADDR | REMOVE-NODE ID | STATUS`.
pub(super) async fn keel_cluster(sh: Arc<Shared>, args: Vec<Bytes>) -> Reply {
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
}
