//! The operator's commands: COMMAND, INFO, CONFIG, SHUTDOWN, checkpoints and backups,
//! maintenance mode and WAIT/WAITAOF. The cluster's are in `cluster`.

use super::*;

impl Conn {
    /// COMMAND, INFO, CONFIG, SHUTDOWN, SAVE, BGSAVE, LASTSAVE, the KEEL.* admin commands, WAITAOF and WAIT.
    pub(super) async fn admin_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match name {
            "command" => command_info(&args),
            "info" => {
                self.settle().await;
                Reply::Verbatim(self.info(&args))
            }
            "config" => self.config(&args),
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

    pub(super) fn config(&self, args: &[Bytes]) -> Reply {
        let sub = lower(&args[1]);
        match sub.as_str() {
            "get" if args.len() >= 3 => {
                let st = &self.sh.settings;
                let table: Vec<(&str, String)> = vec![
                    ("appendonly", "yes".into()),
                    (
                        "appendfsync",
                        // A cluster node's raft log syncs every write (its engine's log
                        // need not).
                        self.sh.backend.appendfsync().into(),
                    ),
                    ("save", String::new()),
                    ("databases", "1".into()),
                    ("maxmemory", "0".into()),
                    ("maxmemory-policy", "noeviction".into()),
                    ("maxclients", st.max_clients.to_string()),
                    ("port", self.sh.port.to_string()),
                    ("bind", st.bind.to_string()),
                    ("dir", st.dir.display().to_string()),
                    (
                        "timeout",
                        st.idle_timeout.map_or(0, |d| d.as_secs()).to_string(),
                    ),
                    ("proto-max-bulk-len", st.limits.bulk_bytes_max.to_string()),
                    (
                        "client-query-buffer-limit",
                        st.max_request_bytes.to_string(),
                    ),
                    (
                        "cluster-enabled",
                        if self.sh.cluster().is_some() {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                    ),
                ];
                let table = table
                    .into_iter()
                    .chain(SETTABLE.iter().map(|s| (s.name, (s.get)().to_string())));
                let pairs = table
                    .into_iter()
                    .filter(|(k, _)| {
                        args[2..]
                            .iter()
                            .any(|p| glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
                    })
                    .map(|(k, v)| (Reply::bulk(k.to_string()), Reply::bulk(v)))
                    .collect();
                Reply::Map(pairs)
            }
            "set" => config_set(&args[2..]),
            "resetstat" => Reply::ok(),
            "get" => cmd::wrong_args("config|get"),
            _ => unknown_subcommand(&args[1], "CONFIG"),
        }
    }

    pub(super) fn info(&self, args: &[Bytes]) -> String {
        let want = |s: &str| {
            args.len() == 1
                || args[1..]
                    .iter()
                    .any(|a| eq(a, s) || eq(a, "all") || eq(a, "everything") || eq(a, "default"))
        };
        let e = self.engine();
        let st = &self.sh.settings;
        let mut o = String::new();
        let line = |o: &mut String, k: &str, v: &dyn std::fmt::Display| {
            o.push_str(&format!("{k}:{v}\r\n"));
        };
        if want("server") {
            o.push_str("# Server\r\n");
            line(&mut o, "redis_version", &REDIS_COMPAT_VERSION);
            line(&mut o, "keel_version", &env!("CARGO_PKG_VERSION"));
            line(&mut o, "redis_mode", &redis_mode(self.sh.cluster()));
            line(&mut o, "os", &std::env::consts::OS);
            line(&mut o, "arch_bits", &64);
            line(&mut o, "process_id", &std::process::id());
            line(&mut o, "tcp_port", &self.sh.port);
            let up = self.sh.started.elapsed().as_secs();
            line(&mut o, "uptime_in_seconds", &up);
            line(&mut o, "uptime_in_days", &(up / 86400));
            line(&mut o, "data_dir", &st.dir.display());
            o.push_str("\r\n");
        }
        if want("clients") {
            o.push_str("# Clients\r\n");
            line(
                &mut o,
                "connected_clients",
                &self.sh.clients.load(Ordering::Relaxed),
            );
            line(&mut o, "maxclients", &st.max_clients);
            line(&mut o, "blocked_clients", &self.sh.blocked.waiting());
            o.push_str("\r\n");
        }
        if want("stats") {
            o.push_str("# Stats\r\n");
            line(
                &mut o,
                "total_connections_received",
                &self.sh.connections_received.load(Ordering::Relaxed),
            );
            line(
                &mut o,
                "total_commands_processed",
                &self.sh.commands_processed.load(Ordering::Relaxed),
            );
            line(
                &mut o,
                "rejected_connections",
                &self.sh.rejected_connections.load(Ordering::Relaxed),
            );
            o.push_str("\r\n");
        }
        let ws = e.wal_stats();
        if want("persistence") {
            o.push_str("# Persistence\r\n");
            line(&mut o, "loading", &0);
            line(&mut o, "aof_enabled", &1);
            line(&mut o, "aof_fsync", &"always");
            line(&mut o, "durable_lsn", &e.durable_lsn());
            line(&mut o, "visible_lsn", &e.visible_lsn());
            line(&mut o, "wal_fsyncs", &ws.syncs);
            let mean_us = ws.sync_nanos.checked_div(ws.syncs).unwrap_or(0) as f64 / 1000.0;
            line(&mut o, "wal_fsync_mean_us", &format!("{mean_us:.1}"));
            for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
                // Upper bounds of log2 buckets: exact to a factor of two.
                let v = ws.sync_latency_quantile_us(q).unwrap_or(0);
                line(&mut o, &format!("wal_fsync_{name}_us_max"), &v);
            }
            line(&mut o, "wal_records", &ws.records);
            let batch = if ws.syncs == 0 {
                0.0
            } else {
                ws.records as f64 / ws.syncs as f64
            };
            line(
                &mut o,
                "wal_group_commit_mean_records",
                &format!("{batch:.2}"),
            );
            line(&mut o, "wal_bytes_written", &ws.bytes_written);
            line(&mut o, "wal_queued_bytes", &ws.queued_bytes);
            let h = self.sh.wal_health();
            line(&mut o, "wal_poisoned", &(h.poisoned.is_some() as u8));
            line(
                &mut o,
                "wal_poison_cause",
                &h.poisoned.as_deref().unwrap_or(""),
            );
            line(&mut o, "wal_reopen_attempts", &h.reopen_attempts);
            line(&mut o, "wal_reopens", &h.reopens);
            line(&mut o, "wal_reopen_retry_ms", &h.retry.as_millis());
            line(
                &mut o,
                "wal_reopen_last_error",
                &h.last_error.as_deref().unwrap_or(""),
            );
            let (cp, cp_err) = e.last_checkpoint();
            match cp {
                Some(c) => {
                    line(&mut o, "last_checkpoint_lsn", &c.lsn);
                    line(&mut o, "last_checkpoint_keys", &c.keys);
                    line(&mut o, "last_checkpoint_bytes", &c.snapshot_bytes);
                    line(&mut o, "last_checkpoint_completed_ms", &c.completed_ms);
                    line(
                        &mut o,
                        "last_checkpoint_duration_ms",
                        &c.duration.as_millis(),
                    );
                }
                None => line(&mut o, "last_checkpoint_lsn", &0),
            }
            line(
                &mut o,
                "last_checkpoint_status",
                &cp_err.map_or("ok".to_string(), |e| format!("err ({e})")),
            );
            o.push_str("\r\n");
        }
        if want("cluster") {
            o.push_str(&cluster::info_section(self.sh.cluster()));
        }
        if want("keel") {
            let r = e.recovery_report();
            o.push_str("# Keel\r\n");
            let a = self.sh.audit.as_ref().map(|a| a.stats());
            line(&mut o, "audit", &(a.is_some() as u8));
            if let Some(a) = a {
                line(&mut o, "audit_seq", &a.seq.load(Ordering::Relaxed));
                line(
                    &mut o,
                    "audit_write_failures",
                    &a.write_failures.load(Ordering::Relaxed),
                );
                line(&mut o, "audit_dropped", &a.dropped.load(Ordering::Relaxed));
                let err = a
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                line(&mut o, "audit_last_error", &err.unwrap_or_default());
            }
            let m = maintenance::current(&e);
            line(&mut o, "maintenance", &(m.is_some() as u8));
            line(
                &mut o,
                "maintenance_reason",
                &m.as_ref().map_or("", |m| m.reason.as_str()),
            );
            line(
                &mut o,
                "maintenance_since_ms",
                &m.as_ref().map_or(0, |m| m.since_ms),
            );
            line(&mut o, "recovery_snapshot_lsn", &r.snapshot_lsn);
            line(&mut o, "recovery_snapshot_bytes", &r.snapshot_bytes);
            line(&mut o, "recovery_records_replayed", &r.records_replayed);
            line(&mut o, "recovery_bytes_replayed", &r.bytes_replayed);
            line(&mut o, "recovery_keys", &r.keys);
            line(&mut o, "recovery_lsn", &r.lsn);
            line(&mut o, "recovery_duration_ms", &r.duration.as_millis());
            let wal = r.wal.to_string().replace(['\r', '\n'], " ");
            line(&mut o, "recovery_wal", &wal.trim());
            // P13: files recovery found damaged and moved aside (or log damage it could open
            // past). "none" when there were none; otherwise each file and what was done.
            let mut damaged: Vec<String> = r.damaged.iter().map(|d| d.to_string()).collect();
            damaged.extend(r.wal.unneeded_damage.iter().map(|d| d.to_string()));
            line(&mut o, "recovery_damaged_files", &damaged.len());
            let text = if damaged.is_empty() {
                "none".to_string()
            } else {
                damaged.join("; ").replace(['\r', '\n'], " ")
            };
            line(&mut o, "recovery_damaged", &text);
            line(&mut o, "wal_appends", &ws.appends);
            line(&mut o, "wal_writes", &ws.writes);
            line(&mut o, "wal_segments_created", &ws.segments_created);
            o.push_str("\r\n");
        }
        if want("keyspace") {
            // Counted as Redis counts them, in O(1): every key held, expired ones that active
            // expiry has not removed yet included.
            let (keys, expires) = e.read(|v| (v.held(), v.expiring()));
            o.push_str("# Keyspace\r\n");
            if keys > 0 {
                line(
                    &mut o,
                    "db0",
                    &format!("keys={keys},expires={expires},avg_ttl=0"),
                );
            }
        }
        o
    }
}

/// A setting CONFIG SET changes at run time, for this process only (as Redis's, until a
/// CONFIG REWRITE that keel does not have): a restart returns to the default.
struct Settable {
    name: &'static str,
    get: fn() -> i64,
    /// Whether a value is in the setting's range.
    valid: fn(i64) -> bool,
    /// Sets a valid value.
    set: fn(i64),
}

/// A count setting: any non-negative value.
fn count(n: i64) -> bool {
    n >= 0
}

/// The compression depth keel reports (it does not compress list chunks: CPU for memory it
/// does not trade).
static LIST_COMPRESS_DEPTH: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The encoding thresholds of keel's compact collections, under Redis's names (and their old
/// `ziplist` aliases): they change how a value is stored, never what it holds.
const SETTABLE: &[Settable] = &[
    Settable {
        name: "hash-max-listpack-entries",
        get: || table::hash_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_hash_packed_entries(n as usize),
    },
    Settable {
        name: "hash-max-listpack-value",
        get: || table::hash_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_hash_packed_bytes(n as usize),
    },
    Settable {
        name: "hash-max-ziplist-entries",
        get: || table::hash_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_hash_packed_entries(n as usize),
    },
    Settable {
        name: "hash-max-ziplist-value",
        get: || table::hash_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_hash_packed_bytes(n as usize),
    },
    Settable {
        name: "set-max-intset-entries",
        get: || table::set_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_set_packed_limit(0, n as usize),
    },
    Settable {
        name: "set-max-listpack-entries",
        get: || table::set_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_set_packed_limit(1, n as usize),
    },
    Settable {
        name: "set-max-listpack-value",
        get: || table::set_packed_limits().2 as i64,
        valid: count,
        set: |n| table::set_set_packed_limit(2, n as usize),
    },
    Settable {
        name: "zset-max-listpack-entries",
        get: || table::zset_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(0, n as usize),
    },
    Settable {
        name: "zset-max-listpack-value",
        get: || table::zset_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(1, n as usize),
    },
    Settable {
        name: "zset-max-ziplist-entries",
        get: || table::zset_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(0, n as usize),
    },
    Settable {
        name: "zset-max-ziplist-value",
        get: || table::zset_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(1, n as usize),
    },
    Settable {
        name: "list-max-listpack-size",
        get: table::list_chunk_limit,
        valid: |n| n >= -5 && n != 0,
        set: |n| {
            table::set_list_chunk_limit(n);
        },
    },
    Settable {
        name: "list-max-ziplist-size",
        get: table::list_chunk_limit,
        valid: |n| n >= -5 && n != 0,
        set: |n| {
            table::set_list_chunk_limit(n);
        },
    },
    Settable {
        name: "list-compress-depth",
        get: || LIST_COMPRESS_DEPTH.load(std::sync::atomic::Ordering::Relaxed),
        valid: count,
        set: |n| LIST_COMPRESS_DEPTH.store(n, std::sync::atomic::Ordering::Relaxed),
    },
];

/// CONFIG SET name value [name value ...]: all or nothing, as in Redis 7.
/// CONFIG SET name value [name value ...]: all or nothing, as in Redis 7.
pub(super) fn config_set(pairs: &[Bytes]) -> Reply {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return cmd::wrong_args("config|set");
    }
    let mut changes = Vec::new();
    for p in pairs.chunks(2) {
        let name = lower(&p[0]);
        // keel takes no RDB save points (it checkpoints by log size and time), which is what
        // `save ""` asks for: accepted, and nothing else.
        if name == "save" {
            if p[1].is_empty() {
                continue;
            }
            return Reply::err(
                "ERR keel takes no RDB save points; it checkpoints by log size and by time \
                 (checkpoint_interval_secs in its config file), so only save \"\" is accepted",
            );
        }
        let Some(s) = SETTABLE.iter().find(|s| s.name == name) else {
            return Reply::err(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{name}' (keel \
                 changes only the encoding thresholds at run time; the rest is in its config \
                 file)"
            ));
        };
        let Some(n) = std::str::from_utf8(&p[1])
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        else {
            return Reply::err(format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}') - argument \
                 couldn't be parsed into an integer"
            ));
        };
        if !(s.valid)(n) {
            return Reply::err(format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}') - argument must \
                 be in the setting's range"
            ));
        }
        changes.push((s, n));
    }
    for (s, n) in changes {
        (s.set)(n);
    }
    Reply::ok()
}

/// COMMAND INFO for one command, from its flags in the command table: `write` for anything
/// that can change data (GETEX too, as in Redis), `readonly` for the rest that reads.
pub(super) fn spec_info(s: &cmd::Command) -> Reply {
    let f = s.flags;
    let mut flags = Vec::new();
    let mut categories = Vec::new();
    if f.contains(Flags::WRITE) {
        flags.extend(["write", "denyoom"]);
        categories.push("@write");
    } else if f.contains(Flags::READ) {
        flags.extend(["readonly", "fast"]);
        categories.push("@read");
    }
    if f.contains(Flags::ADMIN) {
        flags.extend(["admin", "noscript"]);
        categories.extend(["@admin", "@dangerous"]);
    }
    if f.is_connection() {
        flags.push("fast");
        categories.push("@connection");
    }
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(s.arity),
        Reply::Array(flags.iter().map(|f| Reply::Simple(f.to_string())).collect()),
        Reply::Int(s.keys.0),
        Reply::Int(s.keys.1),
        Reply::Int(s.keys.2),
        Reply::Array(
            categories
                .iter()
                .map(|c| Reply::Simple(c.to_string()))
                .collect(),
        ),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

pub(super) fn command_info(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|s| lower(s)) else {
        return Reply::Array(cmd::COMMANDS.iter().map(|c| spec_info(c)).collect());
    };
    match sub.as_str() {
        "count" => Reply::Int(cmd::COMMANDS.len() as i64),
        "docs" => crate::docs::reply(&args[2..]),
        "list" => Reply::Array(cmd::COMMANDS.iter().map(|s| Reply::bulk(s.name)).collect()),
        "info" => Reply::Array(
            args[2..]
                .iter()
                .map(|n| cmd::lookup(&lower(n)).map_or(Reply::Nil, spec_info))
                .collect(),
        ),
        _ => unknown_subcommand(&args[1], "COMMAND"),
    }
}
