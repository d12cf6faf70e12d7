//! The operator's commands: COMMAND, INFO, CONFIG, SHUTDOWN, checkpoints and backups,
//! maintenance mode, WAIT/WAITAOF and the cluster's.

use super::*;

impl Conn {
    /// COMMAND, INFO, CONFIG, SHUTDOWN, SAVE, BGSAVE, LASTSAVE, the KEEL.* admin commands, WAITAOF and WAIT.
    pub(super) async fn admin_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match name {
            "command" => cmd::introspect::command(&args),
            "info" => {
                self.settle().await;
                Reply::Verbatim(self.info(&args))
            }
            "config" => config(&self.sh, &args),
            "slowlog" => self.sh.slowlog.command(&args),
            "shutdown" => {
                if args.len() > 1 && args[1..].iter().any(|a| eq(a, "abort")) {
                    Reply::err("ERR No shutdown in progress.")
                } else {
                    return Flow::Shutdown;
                }
            }
            "save" | "bgsave" => {
                let engine = self.sh.engine();
                let job = tokio::task::spawn_blocking(move || engine.checkpoint());
                if name == "bgsave" {
                    Reply::Simple("Background saving started".into())
                } else {
                    match job.await {
                        Ok(Ok(_)) => Reply::ok(),
                        Ok(Err(e)) => self.sh.engine_error(&e),
                        Err(_) => Reply::err("ERR the checkpoint thread failed"),
                    }
                }
            }
            "lastsave" => {
                let at = self
                    .engine()
                    .last_checkpoint()
                    .0
                    .map(|i| i.completed_ms / 1000);
                let started = now_ms() / 1000 - self.sh.started.elapsed().as_secs();
                Reply::Int(at.unwrap_or(started) as i64)
            }
            "keel.cluster" => cluster_command(self.sh.clone(), args).await,
            "keel.maintenance" => {
                let sub = lower(&args[1]);
                match (sub.as_str(), args.len()) {
                    ("on", 2 | 3) => match maintenance::on(args.get(2).map(|a| &a[..]), now_ms()) {
                        Ok(m) => {
                            let w = maintenance::write(Some(&m));
                            self.submit(None, vec![], vec![w], Box::new(|_| Reply::ok()));
                            return Flow::Continue;
                        }
                        Err(r) => r,
                    },
                    ("off", 2) => {
                        let w = maintenance::write(None);
                        self.submit(None, vec![], vec![w], Box::new(|_| Reply::ok()));
                        return Flow::Continue;
                    }
                    ("status", 2) => {
                        self.settle().await;
                        maintenance::status(maintenance::current(&self.engine()).as_ref())
                    }
                    ("on" | "off" | "status" | "help", _) => cmd::wrong_args("keel.maintenance"),
                    _ => unknown_subcommand(&args[1], "KEEL.MAINTENANCE"),
                }
            }
            "keel.backup" => {
                let engine = self.sh.engine();
                let target =
                    std::path::PathBuf::from(String::from_utf8_lossy(&args[1]).into_owned());
                match tokio::task::spawn_blocking(move || engine.backup(target)).await {
                    Ok(Ok(r)) => Reply::Int(r.lsn as i64),
                    Ok(Err(e)) => self.sh.engine_error(&e),
                    Err(_) => Reply::err("ERR the backup thread failed"),
                }
            }
            "waitaof" => match (
                parse_i64(&args[1]),
                parse_i64(&args[2]),
                parse_i64(&args[3]),
            ) {
                (Some(l), Some(r), Some(t)) if l >= 0 && r >= 0 => {
                    if t < 0 {
                        Reply::err("ERR timeout is negative")
                    } else {
                        self.settle().await;
                        let engine = self.sh.engine();
                        match tokio::task::spawn_blocking(move || engine.sync()).await {
                            Ok(Ok(_)) => Reply::Array(vec![Reply::Int(1), Reply::Int(0)]),
                            Ok(Err(e)) => self.sh.engine_error(&e),
                            Err(e) => Reply::err(format!("ERR sync task failed: {e}")),
                        }
                    }
                }
                _ => Reply::err(NOT_INT),
            },
            "wait" => match (parse_i64(&args[1]), parse_i64(&args[2])) {
                (Some(_), Some(t)) if t < 0 => Reply::err("ERR timeout is negative"),
                (Some(_), Some(_)) => Reply::Int(0),
                _ => Reply::err(NOT_INT),
            },
            other => Reply::err(format!("ERR internal: no handler for '{other}'")),
        };
        self.reply(reply);
        Flow::Continue
    }
}

/// `KEEL.CLUSTER INIT | ADD-NODE RAFT-ADDR | REMOVE-NODE ID | STATUS`.
pub(super) async fn cluster_command(sh: Arc<Shared>, args: Vec<Bytes>) -> Reply {
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
