//! CONFIG GET, SET, RESETSTAT and REWRITE over keel's parameters: under Redis's names where the
//! meaning is the same, and under the config file's own keys for the rest.
//!
//! Some parameters change while the server runs ([`Live`], and the encoding thresholds of the
//! compact collections). As in Redis without CONFIG REWRITE, a change lasts until the process
//! ends: a restart reads the config file again. The rest are read once at start, from the config
//! file, the flags and the environment; CONFIG SET refuses to change them.

use std::sync::atomic::AtomicI64;

use super::*;

/// The settings CONFIG SET changes at run time.
pub struct Live {
    pub maxclients: AtomicI64,
    /// SLOWLOG records commands that ran at least this many µs (negative: none, 0: all).
    pub slowlog_log_slower_than: AtomicI64,
    /// The most entries SLOWLOG keeps.
    pub slowlog_max_len: AtomicI64,
    /// After a script has run this many ms, other clients get -BUSY (0: at once).
    pub busy_reply_threshold: AtomicI64,
}

impl Live {
    pub fn new(settings: &Settings) -> Live {
        Live {
            maxclients: AtomicI64::new(settings.max_clients as i64),
            slowlog_log_slower_than: AtomicI64::new(10_000),
            slowlog_max_len: AtomicI64::new(128),
            busy_reply_threshold: AtomicI64::new(5_000),
        }
    }

    pub fn get(a: &AtomicI64) -> i64 {
        a.load(Ordering::Relaxed)
    }
}

/// How a parameter is read and changed.
enum Value {
    /// Read at start; `why` says where it comes from (CONFIG SET of another value is refused).
    Fixed {
        get: fn(&Shared) -> String,
        why: &'static str,
    },
    /// An integer that changes at run time.
    Int {
        get: fn(&Shared) -> i64,
        valid: fn(i64) -> bool,
        set: fn(&Shared, i64),
    },
    /// Text that changes at run time: `parse` reads it into what `set` takes, or says why not.
    Text {
        get: fn(&Shared) -> String,
        parse: fn(&[u8]) -> Result<u32, &'static str>,
        set: fn(&Shared, u32),
    },
}

struct Param {
    name: &'static str,
    value: Value,
}

const AT_START: &str = "keel reads it at start, from its config file, flags or environment";

const fn fixed(name: &'static str, get: fn(&Shared) -> String) -> Param {
    Param {
        name,
        value: Value::Fixed { get, why: AT_START },
    }
}

/// A parameter keel does not have, reported with the value that describes what keel does.
const fn constant(name: &'static str, get: fn(&Shared) -> String, why: &'static str) -> Param {
    Param {
        name,
        value: Value::Fixed { get, why },
    }
}

const fn int(
    name: &'static str,
    get: fn(&Shared) -> i64,
    valid: fn(i64) -> bool,
    set: fn(&Shared, i64),
) -> Param {
    Param {
        name,
        value: Value::Int { get, valid, set },
    }
}

/// A count: any non-negative value.
fn count(n: i64) -> bool {
    n >= 0
}

fn list_size(n: i64) -> bool {
    n >= -5 && n != 0
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// The compression depth keel reports (it does not compress list chunks: CPU for memory it
/// does not trade).
static LIST_COMPRESS_DEPTH: AtomicI64 = AtomicI64::new(0);

/// Every parameter, in the order CONFIG GET * lists them. Redis's old `ziplist` names are
/// aliases of the `listpack` ones, and listed too, as Redis lists them.
const PARAMS: &[Param] = &[
    // Redis's names.
    fixed("port", |sh| sh.port.to_string()),
    fixed("bind", |sh| sh.settings.bind.to_string()),
    fixed("dir", |sh| sh.settings.dir.display().to_string()),
    fixed("timeout", |sh| {
        (sh.settings.idle_timeout)
            .map_or(0, |d| d.as_secs())
            .to_string()
    }),
    fixed("loglevel", |sh| {
        match sh.settings.log_level {
            tracing::Level::ERROR | tracing::Level::WARN => "warning",
            tracing::Level::INFO => "notice",
            tracing::Level::DEBUG => "verbose",
            tracing::Level::TRACE => "debug",
        }
        .into()
    }),
    fixed("proto-max-bulk-len", |sh| {
        sh.settings.limits.bulk_bytes_max.to_string()
    }),
    fixed("client-query-buffer-limit", |sh| {
        sh.settings.max_request_bytes.to_string()
    }),
    fixed("tls-port", |sh| {
        if sh.settings.tls.is_some() {
            sh.port
        } else {
            0
        }
        .to_string()
    }),
    fixed("cluster-enabled", |sh| yes_no(sh.cluster().is_some())),
    fixed("appendfsync", |sh| sh.backend.appendfsync().into()),
    constant(
        "appendonly",
        |_| "yes".into(),
        "keel always logs every write before it acknowledges it",
    ),
    constant(
        "save",
        |_| String::new(),
        "keel takes no RDB save points; it checkpoints by log size and by time \
         (checkpoint_log_bytes and checkpoint_interval_secs), so only save \"\" is accepted",
    ),
    constant("databases", |_| "1".into(), "keel has one database"),
    constant(
        "daemonize",
        |_| "no".into(),
        "keel serve runs in the foreground; a service manager runs it in the background",
    ),
    constant(
        "replicaof",
        |_| String::new(),
        "keel replicates through its raft cluster (keel serve --node-id), not REPLICAOF",
    ),
    constant(
        "slaveof",
        |_| String::new(),
        "keel replicates through its raft cluster (keel serve --node-id), not REPLICAOF",
    ),
    constant(
        "maxmemory",
        |_| "0".into(),
        "keel evicts nothing: memory is bounded by what clients write",
    ),
    constant(
        "maxmemory-policy",
        |_| "noeviction".into(),
        "keel evicts nothing: memory is bounded by what clients write",
    ),
    constant(
        "maxmemory-samples",
        |_| "5".into(),
        "keel evicts nothing: memory is bounded by what clients write",
    ),
    constant(
        "maxmemory-clients",
        |_| "0".into(),
        "keel evicts no clients by memory; it bounds each client's buffers instead",
    ),
    int(
        "maxclients",
        |sh| Live::get(&sh.live.maxclients),
        |n| n >= 1,
        |sh, n| sh.live.maxclients.store(n, Ordering::Relaxed),
    ),
    int(
        "slowlog-log-slower-than",
        |sh| Live::get(&sh.live.slowlog_log_slower_than),
        |_| true,
        |sh, n| sh.live.slowlog_log_slower_than.store(n, Ordering::Relaxed),
    ),
    // Kept by the latency monitor itself, which the command timer reaches without Shared.
    int(
        "latency-monitor-threshold",
        |sh| sh.metrics.events.threshold_ms(),
        count,
        |sh, n| sh.metrics.events.threshold_ms.store(n, Ordering::Relaxed),
    ),
    constant(
        "latency-tracking",
        |_| "yes".into(),
        "keel always keeps per-command latency histograms (INFO latencystats)",
    ),
    constant(
        "latency-tracking-info-percentiles",
        |_| "50 99 99.9".into(),
        "keel's INFO latencystats reports p50, p99 and p99.9",
    ),
    int(
        "slowlog-max-len",
        |sh| Live::get(&sh.live.slowlog_max_len),
        count,
        |sh, n| sh.live.slowlog_max_len.store(n, Ordering::Relaxed),
    ),
    int(
        "busy-reply-threshold",
        |sh| Live::get(&sh.live.busy_reply_threshold),
        count,
        |sh, n| sh.live.busy_reply_threshold.store(n, Ordering::Relaxed),
    ),
    int(
        "lua-time-limit",
        |sh| Live::get(&sh.live.busy_reply_threshold),
        count,
        |sh, n| sh.live.busy_reply_threshold.store(n, Ordering::Relaxed),
    ),
    Param {
        name: "notify-keyspace-events",
        value: Value::Text {
            get: |sh| notify::render(sh.notify.flags()),
            parse: |v| notify::parse(v).ok_or(notify::INVALID),
            set: |sh, flags| sh.set_notify(flags),
        },
    },
    int(
        "tracking-table-max-keys",
        |sh| sh.tracking.max_keys.load(Ordering::Relaxed),
        count,
        |sh, n| {
            sh.tracking.max_keys.store(n, Ordering::Relaxed);
            sh.tracking.enforce_max(&sh.registry);
        },
    ),
    // The encoding thresholds of keel's compact collections: they change how a value is
    // stored, never what it holds.
    int(
        "hash-max-listpack-entries",
        |_| table::hash_packed_limits().0 as i64,
        count,
        |_, n| table::set_hash_packed_entries(n as usize),
    ),
    int(
        "hash-max-listpack-value",
        |_| table::hash_packed_limits().1 as i64,
        count,
        |_, n| table::set_hash_packed_bytes(n as usize),
    ),
    int(
        "hash-max-ziplist-entries",
        |_| table::hash_packed_limits().0 as i64,
        count,
        |_, n| table::set_hash_packed_entries(n as usize),
    ),
    int(
        "hash-max-ziplist-value",
        |_| table::hash_packed_limits().1 as i64,
        count,
        |_, n| table::set_hash_packed_bytes(n as usize),
    ),
    int(
        "set-max-intset-entries",
        |_| table::set_packed_limits().0 as i64,
        count,
        |_, n| table::set_set_packed_limit(0, n as usize),
    ),
    int(
        "set-max-listpack-entries",
        |_| table::set_packed_limits().1 as i64,
        count,
        |_, n| table::set_set_packed_limit(1, n as usize),
    ),
    int(
        "set-max-listpack-value",
        |_| table::set_packed_limits().2 as i64,
        count,
        |_, n| table::set_set_packed_limit(2, n as usize),
    ),
    int(
        "zset-max-listpack-entries",
        |_| table::zset_packed_limits().0 as i64,
        count,
        |_, n| table::set_zset_packed_limit(0, n as usize),
    ),
    int(
        "zset-max-listpack-value",
        |_| table::zset_packed_limits().1 as i64,
        count,
        |_, n| table::set_zset_packed_limit(1, n as usize),
    ),
    int(
        "zset-max-ziplist-entries",
        |_| table::zset_packed_limits().0 as i64,
        count,
        |_, n| table::set_zset_packed_limit(0, n as usize),
    ),
    int(
        "zset-max-ziplist-value",
        |_| table::zset_packed_limits().1 as i64,
        count,
        |_, n| table::set_zset_packed_limit(1, n as usize),
    ),
    int(
        "list-max-listpack-size",
        |_| table::list_chunk_limit(),
        list_size,
        |_, n| {
            table::set_list_chunk_limit(n);
        },
    ),
    int(
        "list-max-ziplist-size",
        |_| table::list_chunk_limit(),
        list_size,
        |_, n| {
            table::set_list_chunk_limit(n);
        },
    ),
    int(
        "stream-node-max-entries",
        |_| cmd::streams::STREAM_NODE_MAX_ENTRIES.load(Ordering::Relaxed),
        count,
        |_, n| cmd::streams::STREAM_NODE_MAX_ENTRIES.store(n, Ordering::Relaxed),
    ),
    int(
        "list-compress-depth",
        |_| LIST_COMPRESS_DEPTH.load(Ordering::Relaxed),
        count,
        |_, n| LIST_COMPRESS_DEPTH.store(n, Ordering::Relaxed),
    ),
    // keel's own config file keys (see the README), for what Redis has no name for.
    fixed("sync_policy", |sh| {
        match sh.engine().options().wal.sync_policy {
            keel_wal::SyncPolicy::Always => "always",
            keel_wal::SyncPolicy::Interval(_) => "interval",
            keel_wal::SyncPolicy::Never => "never",
        }
        .into()
    }),
    fixed("sync_interval_ms", |sh| {
        match sh.engine().options().wal.sync_policy {
            keel_wal::SyncPolicy::Interval(d) => d.as_millis().to_string(),
            _ => "0".into(),
        }
    }),
    fixed("checkpoint_log_bytes", |sh| {
        sh.engine().options().checkpoint_log_bytes.to_string()
    }),
    fixed("checkpoint_interval_secs", |sh| {
        (sh.engine().options().checkpoint_interval)
            .map_or(0, |d| d.as_secs())
            .to_string()
    }),
    fixed("retention_secs", |sh| {
        sh.engine().options().retention.as_secs().to_string()
    }),
    fixed("max_multibulk_len", |sh| {
        sh.settings.limits.multibulk_len_max.to_string()
    }),
    fixed("max_inline_bytes", |sh| {
        sh.settings.limits.inline_bytes_max.to_string()
    }),
    fixed("metrics_port", |sh| {
        sh.settings.metrics_port.map_or(0, |p| p).to_string()
    }),
    fixed("audit", |sh| yes_no(sh.audit.is_some())),
];

/// `CONFIG GET | SET | RESETSTAT | REWRITE | HELP`.
pub(super) fn config(sh: &Shared, args: &[Bytes]) -> Reply {
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("get", 3..) => get(sh, &args[2..]),
        ("set", _) => set(sh, &args[2..]),
        ("resetstat", 2) => {
            sh.reset_stats();
            Reply::ok()
        }
        ("rewrite", 2) => Reply::err(
            "ERR keel does not rewrite its config file: CONFIG SET lasts until restart; \
             put lasting changes in the config file",
        ),
        ("get" | "resetstat" | "rewrite", _) => cmd::wrong_args(&format!("config|{sub}")),
        _ => unknown_subcommand(&args[1], "CONFIG"),
    }
}

/// CONFIG GET pattern [pattern ...]: every parameter a glob matches (case-insensitively), once.
fn get(sh: &Shared, patterns: &[Bytes]) -> Reply {
    let patterns: Vec<Vec<u8>> = patterns.iter().map(|p| p.to_ascii_lowercase()).collect();
    let pairs = PARAMS
        .iter()
        .filter(|p| patterns.iter().any(|g| glob::matches(g, p.name.as_bytes())))
        .map(|p| {
            let v = match &p.value {
                Value::Fixed { get, .. } => get(sh),
                Value::Int { get, .. } => get(sh).to_string(),
                Value::Text { get, .. } => get(sh),
            };
            (Reply::bulk(p.name), Reply::bulk(v))
        })
        .collect();
    Reply::Map(pairs)
}

/// CONFIG SET name value [name value ...]: all or nothing, as in Redis 7. Setting a parameter
/// read at start to the value it has is accepted (and changes nothing).
fn set(sh: &Shared, pairs: &[Bytes]) -> Reply {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return cmd::wrong_args("config|set");
    }
    let failed = |name: &str, why: &str| {
        Reply::err(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };
    // Every name first, so that a duplicate or an unknown name is found before any value.
    let mut params: Vec<(&Param, &Bytes)> = Vec::new();
    for p in pairs.chunks(2) {
        let name = lower(&p[0]);
        let Some(param) = PARAMS.iter().find(|x| x.name == name) else {
            return Reply::err(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
            ));
        };
        if params.iter().any(|(q, _)| q.name == param.name) {
            return failed(param.name, "duplicate parameter");
        }
        params.push((param, &p[1]));
    }
    let mut changes = Vec::new();
    let mut texts = Vec::new();
    for (param, value) in params {
        match &param.value {
            Value::Fixed { get, why } => {
                if get(sh).as_bytes() != &value[..] {
                    return failed(param.name, &format!("can't set immutable config: {why}"));
                }
            }
            Value::Int { valid, set, .. } => {
                let Some(n) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                else {
                    return failed(param.name, "argument couldn't be parsed into an integer");
                };
                if !valid(n) {
                    return failed(param.name, "argument must be in the setting's range");
                }
                changes.push((set, n));
            }
            Value::Text { parse, set, .. } => match parse(value) {
                Ok(v) => texts.push((set, v)),
                Err(why) => return failed(param.name, why),
            },
        }
    }
    for (set, n) in changes {
        set(sh, n);
    }
    for (set, v) in texts {
        set(sh, v);
    }
    Reply::ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lower_case() {
        for p in PARAMS {
            assert_eq!(p.name, p.name.to_ascii_lowercase());
            assert_eq!(
                PARAMS.iter().filter(|q| q.name == p.name).count(),
                1,
                "{}",
                p.name
            );
        }
    }
}
