//! INFO: Redis's sections under Redis's field names where the meaning is the same, and keel's
//! own section. `INFO` and `INFO default` give the default sections, `INFO all` adds
//! commandstats and latencystats, `INFO everything` is all of them.

use super::cluster;
use super::*;

/// Redis 7.2's default sections, in its order, then keel's.
const DEFAULT: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "errorstats",
    "cluster",
    "keyspace",
    "keel",
];
/// What `all` adds to the default sections.
const MORE: &[&str] = &["commandstats", "latencystats"];

/// Memory as the allocator sees it, if the binary can tell (`keel serve` runs under mimalloc).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocatorStats {
    pub name: &'static str,
    /// Bytes the process's allocations hold (as requested, without the allocator's rounding
    /// and free memory).
    pub used: u64,
    /// The highest `used` the allocator has reported (INFO and the server's 100 ms sampler ask).
    pub peak: u64,
}

/// The allocator's figures, if the binary told INFO how to ask (see [`set_allocator_stats`]).
pub(super) fn allocator_stats() -> Option<AllocatorStats> {
    ALLOCATOR.get().map(|f| f())
}

static ALLOCATOR: std::sync::OnceLock<fn() -> AllocatorStats> = std::sync::OnceLock::new();

/// Tells INFO how to ask the process's allocator (called once, by the binary).
pub fn set_allocator_stats(f: fn() -> AllocatorStats) {
    let _ = ALLOCATOR.set(f);
}

static ALLOCATOR_TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Tells the server how to make the allocator give freed memory back to the system (called
/// once, by the binary).
pub fn set_allocator_trim(f: fn()) {
    let _ = ALLOCATOR_TRIM.set(f);
}

/// Gives freed memory back to the system, if the binary said how: after recovery, whose
/// transient buffers (every record replayed) the allocator would otherwise keep committed.
pub(crate) fn trim_allocator() {
    if let Some(f) = ALLOCATOR_TRIM.get() {
        f();
    }
}

/// The process's resident set size in bytes, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// The process's user and system CPU time in seconds, from /proc (in clock ticks).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| {
        rest.split_whitespace()
            .nth(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (field(11) as f64 / hz, field(12) as f64 / hz)
}

/// Bytes as Redis's `_human` fields write them.
fn human(b: u64) -> String {
    let b = b as f64;
    for (unit, size) in [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if b >= size as f64 {
            return format!("{:.2}{unit}", b / size as f64);
        }
    }
    format!("{b}B")
}

/// A 40-hex-character id for this run of the server (Redis's `run_id`).
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "{:016x}{:016x}{:08x}",
            cmd::random(),
            cmd::random(),
            cmd::random() as u32
        )
    })
}

impl Conn {
    pub(super) fn info(&self, args: &[Bytes]) -> String {
        let asked: Vec<String> = args[1..].iter().map(|a| lower(a)).collect();
        let want = |s: &str| {
            (asked.is_empty() && DEFAULT.contains(&s))
                || asked.iter().any(|a| {
                    a == s
                        || a == "everything"
                        || (a == "all" && (DEFAULT.contains(&s) || MORE.contains(&s)))
                        || (a == "default" && DEFAULT.contains(&s))
                })
        };
        let e = self.engine();
        let st = &self.sh.settings;
        let stats = self.sh.stats();
        let mut o = String::new();
        let line = |o: &mut String, k: &str, v: &dyn std::fmt::Display| {
            o.push_str(&format!("{k}:{v}\r\n"));
        };
        let cluster = self.sh.cluster();
        if want("server") {
            o.push_str("# Server\r\n");
            line(&mut o, "redis_version", &REDIS_COMPAT_VERSION);
            line(&mut o, "redis_git_sha1", &0);
            line(&mut o, "redis_git_dirty", &0);
            line(&mut o, "keel_version", &env!("CARGO_PKG_VERSION"));
            line(&mut o, "redis_mode", &redis_mode(cluster));
            line(&mut o, "os", &std::env::consts::OS);
            line(&mut o, "arch_bits", &(usize::BITS));
            line(&mut o, "multiplexing_api", &"epoll");
            line(&mut o, "process_id", &std::process::id());
            line(&mut o, "run_id", &run_id());
            line(&mut o, "tcp_port", &self.sh.port);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            line(&mut o, "server_time_usec", &now.as_micros());
            let up = self.sh.started.elapsed().as_secs();
            line(&mut o, "uptime_in_seconds", &up);
            line(&mut o, "uptime_in_days", &(up / 86400));
            line(&mut o, "hz", &10);
            let exe = std::env::current_exe().unwrap_or_default();
            line(&mut o, "executable", &exe.display());
            line(&mut o, "data_dir", &st.dir.display());
            line(&mut o, "workers", &st.workers);
            o.push_str("\r\n");
        }
        if want("clients") {
            o.push_str("# Clients\r\n");
            line(
                &mut o,
                "connected_clients",
                &self.sh.clients.load(Ordering::Relaxed),
            );
            line(&mut o, "cluster_connections", &0);
            line(&mut o, "maxclients", &Live::get(&self.sh.live.maxclients));
            let paused = self.sh.paused_clients.load(Ordering::Relaxed);
            line(
                &mut o,
                "blocked_clients",
                &(self.sh.blocked.waiting() + paused),
            );
            let (keys, on_nokey) = self.sh.blocked.blocking_keys();
            line(&mut o, "total_blocking_keys", &keys);
            line(&mut o, "total_blocking_keys_on_nokey", &on_nokey);
            line(&mut o, "tracking_clients", &self.sh.tracking.figures().0);
            line(&mut o, "pubsub_clients", &0);
            o.push_str("\r\n");
        }
        if want("memory") {
            let rss = rss_bytes();
            let a = allocator_stats().unwrap_or(AllocatorStats {
                name: "libc",
                used: rss,
                peak: rss,
            });
            o.push_str("# Memory\r\n");
            line(&mut o, "used_memory", &a.used);
            line(&mut o, "used_memory_human", &human(a.used));
            line(&mut o, "used_memory_rss", &rss);
            line(&mut o, "used_memory_rss_human", &human(rss));
            line(&mut o, "used_memory_peak", &a.peak);
            line(&mut o, "used_memory_peak_human", &human(a.peak));
            let ratio = if a.used == 0 {
                0.0
            } else {
                rss as f64 / a.used as f64
            };
            line(&mut o, "mem_fragmentation_ratio", &format!("{ratio:.2}"));
            line(&mut o, "maxmemory", &0);
            line(&mut o, "maxmemory_human", &"0B");
            line(&mut o, "maxmemory_policy", &"noeviction");
            line(&mut o, "mem_allocator", &a.name);
            // keel frees a deleted value where it publishes the delete, never later on a
            // thread of its own: nothing is ever waiting to be freed.
            line(&mut o, "lazyfree_pending_objects", &0);
            line(
                &mut o,
                "number_of_cached_scripts",
                &self.sh.scripts.cached(),
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
        if want("stats") {
            o.push_str("# Stats\r\n");
            line(
                &mut o,
                "total_connections_received",
                &stats.connections_received,
            );
            line(
                &mut o,
                "total_commands_processed",
                &stats.commands_processed,
            );
            let rates = self.sh.rates();
            line(&mut o, "instantaneous_ops_per_sec", &rates.0);
            line(
                &mut o,
                "total_net_input_bytes",
                &self.sh.net_in.load(Ordering::Relaxed),
            );
            line(
                &mut o,
                "total_net_output_bytes",
                &self.sh.net_out.load(Ordering::Relaxed),
            );
            line(
                &mut o,
                "instantaneous_input_kbps",
                &format!("{:.2}", rates.1),
            );
            line(
                &mut o,
                "instantaneous_output_kbps",
                &format!("{:.2}", rates.2),
            );
            line(&mut o, "rejected_connections", &stats.rejected_connections);
            line(&mut o, "expired_keys", &stats.expired_keys);
            line(&mut o, "evicted_keys", &0);
            line(&mut o, "keyspace_hits", &stats.keyspace_hits);
            line(&mut o, "keyspace_misses", &stats.keyspace_misses);
            line(&mut o, "lazyfreed_objects", &0);
            line(&mut o, "total_forks", &0);
            // keel has no MIGRATE, so it never holds a connection for one.
            line(&mut o, "migrate_cached_sockets", &0);
            let errors: u64 = stats.errors.values().sum();
            line(&mut o, "total_error_replies", &errors);
            let (_, keys, items, prefixes) = self.sh.tracking.figures();
            line(&mut o, "tracking_total_keys", &keys);
            line(&mut o, "tracking_total_items", &items);
            line(&mut o, "tracking_total_prefixes", &prefixes);
            o.push_str("\r\n");
        }
        if want("replication") {
            o.push_str("# Replication\r\n");
            match cluster.map(|c| (c.id, c.status())) {
                None => {
                    line(&mut o, "role", &"master");
                    line(&mut o, "connected_slaves", &0);
                    line(&mut o, "master_replid", &run_id());
                    line(&mut o, "master_repl_offset", &e.durable_lsn());
                }
                // A raft leader is a master, its followers are replicas; offsets are raft
                // log indexes.
                Some((id, s)) => {
                    let leader = s.leader.filter(|l| *l != id);
                    let members = s.members.len();
                    match leader {
                        None => {
                            line(&mut o, "role", &"master");
                            line(&mut o, "connected_slaves", &members.saturating_sub(1));
                        }
                        Some(l) => {
                            line(&mut o, "role", &"slave");
                            let addr = (s.members.get(&l))
                                .map(|(n, _)| n.client.clone())
                                .unwrap_or_default();
                            let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, "0"));
                            line(&mut o, "master_host", &host);
                            line(&mut o, "master_port", &port);
                            line(&mut o, "master_link_status", &"up");
                            line(&mut o, "slave_repl_offset", &s.applied_index.unwrap_or(0));
                            line(&mut o, "slave_read_only", &1);
                            line(&mut o, "connected_slaves", &0);
                        }
                    }
                    line(&mut o, "master_repl_offset", &s.applied_index.unwrap_or(0));
                }
            }
            o.push_str("\r\n");
        }
        if want("cpu") {
            let (user, sys) = cpu_seconds();
            o.push_str("# CPU\r\n");
            line(&mut o, "used_cpu_sys", &format!("{sys:.6}"));
            line(&mut o, "used_cpu_user", &format!("{user:.6}"));
            line(&mut o, "used_cpu_sys_children", &"0.000000");
            line(&mut o, "used_cpu_user_children", &"0.000000");
            o.push_str("\r\n");
        }
        if want("modules") {
            o.push_str("# Modules\r\n\r\n");
        }
        if want("commandstats") {
            o.push_str("# Commandstats\r\n");
            for (c, s) in cmd::COMMANDS.iter().zip(&stats.commands) {
                if s.calls == 0 {
                    continue;
                }
                let per = s.usec as f64 / s.calls as f64;
                o.push_str(&format!(
                    "cmdstat_{}:calls={},usec={},usec_per_call={per:.2},rejected_calls={},failed_calls={}\r\n",
                    c.name, s.calls, s.usec, s.rejected, s.failed
                ));
            }
            o.push_str("\r\n");
        }
        if want("latencystats") {
            o.push_str(&crate::latency::info_section(&self.sh.metrics.histograms));
        }
        if want("errorstats") {
            o.push_str("# Errorstats\r\n");
            for (code, n) in &stats.errors {
                o.push_str(&format!("errorstat_{code}:count={n}\r\n"));
            }
            o.push_str("\r\n");
        }
        if want("cluster") {
            o.push_str(&cluster::info_section(cluster));
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
                let err = crate::lock(&a.last_error).clone();
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
        o
    }
}
