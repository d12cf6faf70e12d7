//! What operators and dashboards read: INFO's sections, CONFIG and SLOWLOG, through a real
//! `keel serve` and the `redis` crate.

mod common;
use common::*;

/// INFO's text as `field -> value`, and the section headers in order.
fn info(
    c: &mut redis::Connection,
    args: &[&str],
) -> (Vec<String>, std::collections::HashMap<String, String>) {
    let mut full = vec!["INFO"];
    full.extend_from_slice(args);
    let text: String = query(c, &full);
    let sections = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(str::to_string)
        .collect();
    let fields = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
        .collect();
    (sections, fields)
}

#[test]
fn info_has_redis_sections_and_field_names() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    query::<()>(&mut c, &["SET", "k", "v"]);
    assert!(error(&mut c, &["HGET", "k", "f"]).contains("WRONGTYPE"));
    let (sections, f) = info(&mut c, &[]);
    // Redis 7.2's default sections in its order, then keel's own.
    assert_eq!(
        sections,
        [
            "Server",
            "Clients",
            "Memory",
            "Persistence",
            "Stats",
            "Replication",
            "CPU",
            "Modules",
            "Errorstats",
            "Cluster",
            "Keyspace",
            "Keel"
        ]
    );
    for field in [
        "redis_version",
        "redis_mode",
        "process_id",
        "run_id",
        "tcp_port",
        "uptime_in_seconds",
        "connected_clients",
        "maxclients",
        "blocked_clients",
        "used_memory",
        "used_memory_rss",
        "used_memory_peak",
        "maxmemory",
        "maxmemory_policy",
        "mem_allocator",
        "loading",
        "aof_enabled",
        "total_connections_received",
        "total_commands_processed",
        "instantaneous_ops_per_sec",
        "total_net_input_bytes",
        "total_net_output_bytes",
        "rejected_connections",
        "total_error_replies",
        "role",
        "connected_slaves",
        "master_repl_offset",
        "used_cpu_sys",
        "used_cpu_user",
        "cluster_enabled",
        "db0",
    ] {
        assert!(f.contains_key(field), "INFO has no {field}");
    }
    assert_eq!(f["role"], "master");
    assert_eq!(f["cluster_enabled"], "0");
    assert_eq!(f["mem_allocator"], "mimalloc");
    assert!(f["used_memory"].parse::<u64>().unwrap() > 1 << 20);
    assert!(f["used_memory_rss"].parse::<u64>().unwrap() > 1 << 20);
    assert_eq!(f["errorstat_WRONGTYPE"], "count=1");
    assert!(
        !f.contains_key("cmdstat_set"),
        "commandstats is not a default section"
    );

    // One section, several, and `all`.
    let (sections, f) = info(&mut c, &["cpu"]);
    assert_eq!(sections, ["CPU"]);
    assert!(f["used_cpu_user"].parse::<f64>().is_ok());
    let (sections, _) = info(&mut c, &["CPU", "memory"]);
    assert_eq!(sections, ["Memory", "CPU"]);
    let (sections, f) = info(&mut c, &["all"]);
    assert!(sections.contains(&"Commandstats".to_string()));
    let set = &f["cmdstat_set"];
    assert!(set.starts_with("calls=1,usec="), "{set}");
    assert!(set.ends_with(",rejected_calls=0,failed_calls=0"), "{set}");
    assert!(f["cmdstat_hget"].ends_with(",rejected_calls=0,failed_calls=1"));
    // A command refused before it runs counts as rejected.
    assert!(error(&mut c, &["GET"]).contains("wrong number of arguments"));
    let (_, f) = info(&mut c, &["commandstats"]);
    assert!(f["cmdstat_get"].ends_with(",rejected_calls=1,failed_calls=0"));

    // CONFIG RESETSTAT starts INFO's counters again.
    query::<()>(&mut c, &["CONFIG", "RESETSTAT"]);
    let (_, f) = info(&mut c, &["everything"]);
    assert!(!f.contains_key("cmdstat_set"));
    assert!(!f.contains_key("errorstat_WRONGTYPE"));
    assert_eq!(f["total_commands_processed"], "1");
}

#[test]
fn config_reports_every_parameter_and_changes_the_live_ones() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let get =
        |c: &mut redis::Connection, p: &str| -> Vec<String> { query(c, &["CONFIG", "GET", p]) };
    assert_eq!(get(&mut c, "maxclients"), ["maxclients", "1000"]);
    assert_eq!(get(&mut c, "sync_policy"), ["sync_policy", "always"]);
    // Globs, several patterns, each parameter once.
    let all = get(&mut c, "*");
    assert!(all.len() > 60, "{all:?}");
    let two: Vec<String> = query(&mut c, &["CONFIG", "GET", "slowlog-*", "slowlog-max-len"]);
    assert_eq!(
        two,
        ["slowlog-log-slower-than", "10000", "slowlog-max-len", "128"]
    );

    query::<()>(
        &mut c,
        &["CONFIG", "SET", "slowlog-max-len", "5", "maxclients", "50"],
    );
    assert_eq!(get(&mut c, "slowlog-max-len"), ["slowlog-max-len", "5"]);
    assert_eq!(get(&mut c, "maxclients"), ["maxclients", "50"]);
    // All or nothing: one bad pair changes nothing.
    let e = error(
        &mut c,
        &["CONFIG", "SET", "slowlog-max-len", "7", "maxclients", "x"],
    );
    assert!(
        e.contains("CONFIG SET failed (possibly related to argument 'maxclients')"),
        "{e}"
    );
    assert_eq!(get(&mut c, "slowlog-max-len"), ["slowlog-max-len", "5"]);
    // A parameter read at start: its own value is accepted, another is refused with why.
    query::<()>(&mut c, &["CONFIG", "SET", "maxmemory", "0"]);
    let e = error(&mut c, &["CONFIG", "SET", "port", "1"]);
    assert!(e.contains("can't set immutable config"), "{e}");
    let e = error(&mut c, &["CONFIG", "SET", "no-such-thing", "1"]);
    assert!(
        e.contains("Unknown option or number of arguments for CONFIG SET - 'no-such-thing'"),
        "{e}"
    );
    assert!(error(&mut c, &["CONFIG", "REWRITE"]).contains("does not rewrite"));

    // maxclients applies to the next connection.
    query::<()>(&mut c, &["CONFIG", "SET", "maxclients", "1"]);
    let mut raw = srv.raw();
    raw.cmd(&["PING"], "-ERR max number of clients reached\r\n");
    query::<()>(&mut c, &["CONFIG", "SET", "maxclients", "100"]);
}

#[test]
fn multi_queues_config_and_refuses_what_redis_refuses() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    // CONFIG runs at EXEC, in its place; its failure is its own reply, not EXEC's.
    let mut raw = srv.raw();
    raw.cmd(&["MULTI"], "+OK\r\n");
    raw.cmd(&["SET", "a", "1"], "+QUEUED\r\n");
    raw.cmd(&["CONFIG", "SET", "slowlog-max-len", "9"], "+QUEUED\r\n");
    raw.cmd(&["CONFIG", "SET", "maxclients", "bad"], "+QUEUED\r\n");
    raw.cmd(&["GET", "a"], "+QUEUED\r\n");
    raw.cmd(
        &["EXEC"],
        "*4\r\n+OK\r\n+OK\r\n-ERR CONFIG SET failed (possibly related to argument \
         'maxclients') - argument couldn't be parsed into an integer\r\n$1\r\n1\r\n",
    );
    // DISCARD: a queued CONFIG SET never runs.
    query::<()>(&mut c, &["MULTI"]);
    query::<String>(&mut c, &["CONFIG", "SET", "slowlog-max-len", "11"]);
    query::<()>(&mut c, &["DISCARD"]);
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "slowlog-max-len"]);
    assert_eq!(got, ["slowlog-max-len", "9"]);
    // SAVE and SHUTDOWN are refused as Redis refuses them, and the transaction aborts.
    for cmd in ["SAVE", "SHUTDOWN"] {
        query::<()>(&mut c, &["MULTI"]);
        query::<String>(&mut c, &["SET", "b", "2"]);
        assert!(error(&mut c, &[cmd]).contains("Command not allowed inside a transaction"));
        let e = error(&mut c, &["EXEC"]);
        assert!(e.contains("Transaction discarded because of previous errors"), "{e}");
        assert_eq!(query::<Option<String>>(&mut c, &["GET", "b"]), None);
    }
}

#[test]
fn slowlog_keeps_slow_commands_without_secrets() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start_env(
        &t.path().join("data"),
        &[],
        &[("KEEL_REQUIREPASS", "s3cret")],
    );
    let mut c = srv.client();
    query::<()>(&mut c, &["AUTH", "s3cret"]);
    query::<()>(&mut c, &["SLOWLOG", "RESET"]);
    assert_eq!(query::<i64>(&mut c, &["SLOWLOG", "LEN"]), 0);
    // Everything is slow at 0 µs; the CONFIG SET that says so is logged too.
    query::<()>(&mut c, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    query::<()>(&mut c, &["CLIENT", "SETNAME", "me"]);
    query::<()>(&mut c, &["AUTH", "s3cret"]);
    query::<()>(&mut c, &["SET", "k", &"x".repeat(200)]);
    query::<()>(&mut c, &["CONFIG", "SET", "slowlog-log-slower-than", "-1"]);
    query::<()>(&mut c, &["GET", "k"]);
    let log: Vec<(i64, i64, i64, Vec<String>, String, String)> =
        query(&mut c, &["SLOWLOG", "GET", "-1"]);
    let cmds: Vec<Vec<String>> = log.iter().map(|e| e.3.clone()).collect();
    // Turning the log off is not logged: the threshold applies when a command ends.
    assert_eq!(cmds[0][0], "SET");
    assert!(cmds[0][2].ends_with("... (72 more bytes)"), "{:?}", cmds[0]);
    assert_eq!(cmds[1], ["AUTH", "(redacted)"]);
    assert_eq!(cmds[2], ["CLIENT", "SETNAME", "me"]);
    assert_eq!(cmds[3], ["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    assert_eq!(log[0].5, "me");
    assert!(log.windows(2).all(|w| w[0].0 > w[1].0), "newest first");
    assert!(!format!("{log:?}").contains("s3cret"));
    assert_eq!(
        query::<Vec<redis::Value>>(&mut c, &["SLOWLOG", "GET", "2"]).len(),
        2
    );
    query::<()>(&mut c, &["CONFIG", "SET", "slowlog-max-len", "1"]);
    query::<()>(&mut c, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    query::<()>(&mut c, &["PING"]);
    assert_eq!(query::<i64>(&mut c, &["SLOWLOG", "LEN"]), 1);
}
