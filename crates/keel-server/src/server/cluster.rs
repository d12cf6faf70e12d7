//! The cluster's commands: KEEL.CLUSTER.

use super::*;

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
                Err(e) => cluster_error(&e),
            }
        }
        ("add-node", 3) => match c.add_node(&String::from_utf8_lossy(&args[2])).await {
            Ok(id) => Reply::Int(id as i64),
            Err(e) => cluster_error(&e),
        },
        ("remove-node", 3) => match std::str::from_utf8(&args[2])
            .ok()
            .and_then(|s| s.parse().ok())
        {
            None => Reply::err("ERR node id must be a number"),
            Some(id) => match c.remove_node(id).await {
                Ok(()) => Reply::ok(),
                Err(e) => cluster_error(&e),
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
