//! Cluster commands: Redis Cluster's, which cluster-aware clients ask before anything else
//! (see `crate::server`'s cluster module for how a keel cluster looks to them). The connection
//! runs them. KEEL.CLUSTER, keel's own, is with the server commands.

use super::*;
use crate::docs::doc;

pub const COMMANDS: &[Command] = &[
    Command::new("cluster", -2, CONN, NO_KEYS)
        .redis("", "")
        .doc(
            "cluster",
            "",
            "Describes a keel cluster as Redis Cluster would: one shard owning every slot, with the raft leader as its master.",
        )
        .subcommands(CLUSTER_SUBCOMMANDS),
    Command::new("readonly", 1, CONN, NO_KEYS)
        .redis("loading stale fast", "@connection")
        .doc(
        "cluster",
        "",
        "Lets this connection read a follower's own state where the node allows it (--stale-reads); the default.",
    ),
    Command::new("readwrite", 1, CONN, NO_KEYS)
        .redis("loading stale fast", "@connection")
        .doc(
        "cluster",
        "",
        "Sends this connection's reads on a follower to the leader (-MOVED), also with --stale-reads.",
    ),
];

const CLUSTER_SUBCOMMANDS: &[Doc] = &[
    doc(
        "info",
        "cluster",
        "",
        "Returns the cluster's state: ok while a leader is known, the slots, the nodes and the raft term as epochs.",
    )
    .redis("loading stale", ""),
    doc(
        "keyslot",
        "cluster",
        "key",
        "Returns the hash slot of a key: CRC16 of the key or its {hash tag}, modulo 16384.",
    )
    .redis("loading stale", ""),
    doc(
        "myid",
        "cluster",
        "",
        "Returns this node's id: its --node-id as 40 hex digits.",
    )
    .redis("loading stale", ""),
    doc(
        "nodes",
        "cluster",
        "",
        "Returns the nodes in Redis's text format: the leader a master owning slots 0-16383, the others its replicas.",
    )
    .redis("loading stale", ""),
    doc(
        "shards",
        "cluster",
        "",
        "Returns the one shard: its slots, and its nodes with their roles.",
    )
    .redis("loading stale", ""),
    doc(
        "slots",
        "cluster",
        "",
        "Returns the slot range 0-16383 with the leader's address and then the followers'.",
    )
    .redis("loading stale", ""),
    doc("help", "cluster", "", "Lists the subcommands.").redis("loading stale", ""),
];
