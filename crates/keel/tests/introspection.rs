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

/// Two numeric fields of one INFO section.
fn two(c: &mut redis::Connection, section: &str, fields: [&str; 2]) -> (u64, u64) {
    let (_, f) = info(c, &[section]);
    let field = |name: &str| f[name].parse().unwrap();
    (field(fields[0]), field(fields[1]))
}

/// `used_memory` follows the data: it grows by about what is stored and comes back down once
/// it is deleted, and the peak keeps the high point. (mimalloc's committed memory, which INFO
/// used to report, said 1 GiB for an empty server and for a loaded one alike.)
#[test]
fn used_memory_follows_what_the_keyspace_holds() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let used = |c: &mut redis::Connection| two(c, "memory", ["used_memory", "used_memory_peak"]);
    let (empty, _) = used(&mut c);
    assert!(empty < 64 << 20, "an empty server uses {empty} bytes");
    // 32 MiB of values, in 64 KiB pieces.
    let value = vec![b'x'; 64 << 10];
    for i in 0..512 {
        query::<()>(
            &mut c,
            &[
                "SET",
                &format!("k{i}"),
                std::str::from_utf8(&value).unwrap(),
            ],
        );
    }
    let (loaded, peak) = used(&mut c);
    assert!(
        loaded >= empty + (32 << 20),
        "{empty} -> {loaded} after storing 32 MiB"
    );
    assert!(
        loaded <= empty + (96 << 20),
        "{empty} -> {loaded} after storing 32 MiB"
    );
    assert!(peak >= loaded);
    query::<()>(&mut c, &["FLUSHALL"]);
    let (flushed, peak) = used(&mut c);
    assert!(
        flushed < loaded - (24 << 20),
        "{loaded} -> {flushed} after FLUSHALL"
    );
    assert!(peak >= loaded, "the peak stays: {peak} < {loaded}");
    // One request of 100,000 arguments, then its set deleted: the buffers it grew (the
    // connection's, the log's) do not keep the megabytes, though the connection stays.
    let mut sadd = vec!["SADD".to_string(), "big".to_string()];
    sadd.extend((0..100_000).map(|i| i.to_string()));
    let sadd: Vec<&str> = sadd.iter().map(String::as_str).collect();
    assert_eq!(query::<u64>(&mut c, &sadd), 100_000);
    let (with_set, _) = used(&mut c);
    assert_eq!(query::<u64>(&mut c, &["UNLINK", "big"]), 1);
    let (unlinked, _) = used(&mut c);
    assert!(
        unlinked < flushed + (1 << 20),
        "{flushed} -> {with_set} with the set -> {unlinked} after UNLINK"
    );
}

/// keyspace_hits and keyspace_misses count the keys read-only commands look up, by whether
/// they had a live value, as Redis counts them (what a cache's hit ratio is read from).
#[test]
fn keyspace_hits_and_misses_count_the_keys_reads_find() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let counts = |c: &mut redis::Connection| two(c, "stats", ["keyspace_hits", "keyspace_misses"]);
    assert_eq!(counts(&mut c), (0, 0));
    // Writes count nothing.
    query::<()>(&mut c, &["SET", "k", "v"]);
    query::<()>(&mut c, &["HSET", "h", "f", "1"]);
    query::<()>(&mut c, &["SET", "gone", "v", "PX", "1"]);
    assert_eq!(counts(&mut c), (0, 0));
    std::thread::sleep(std::time::Duration::from_millis(5));
    query::<Option<String>>(&mut c, &["GET", "k"]); // hit
    query::<Option<String>>(&mut c, &["GET", "nope"]); // miss
    query::<Option<String>>(&mut c, &["GET", "gone"]); // expired: a miss
    query::<Vec<Option<String>>>(&mut c, &["MGET", "k", "nope", "h"]); // 2 hits, 1 miss
    query::<Option<String>>(&mut c, &["HGET", "h", "nofield"]); // the key is there: a hit
    assert!(error(&mut c, &["GET", "h"]).contains("WRONGTYPE")); // found: a hit
    assert_eq!(counts(&mut c), (5, 3));
    // In a transaction of reads too.
    query::<()>(&mut c, &["MULTI"]);
    query::<()>(&mut c, &["GET", "k"]);
    query::<()>(&mut c, &["GET", "nope"]);
    query::<Vec<Option<String>>>(&mut c, &["EXEC"]);
    assert_eq!(counts(&mut c), (6, 4));
    query::<()>(&mut c, &["CONFIG", "RESETSTAT"]);
    assert_eq!(counts(&mut c), (0, 0));
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
    assert!(f["used_memory"].parse::<u64>().unwrap() > 0);
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

    // Active expiry's removals count in expired_keys.
    query::<()>(&mut c, &["SET", "short", "v", "PX", "1"]);
    let mut tries = 0;
    while info(&mut c, &["stats"]).1["expired_keys"] == "0" {
        tries += 1;
        assert!(tries < 1000, "the expired key was never counted");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

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
    // A name given twice is refused before any value is looked at.
    let e = error(
        &mut c,
        &["CONFIG", "SET", "maxmemory", "1", "maxmemory", "2"],
    );
    assert!(e.contains("duplicate parameter"), "{e}");
    let e = error(&mut c, &["CONFIG", "SET", "daemonize", "yes"]);
    assert!(
        e.contains("can't set immutable config: keel serve runs in the foreground"),
        "{e}"
    );

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
        assert!(
            e.contains("Transaction discarded because of previous errors"),
            "{e}"
        );
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

/// `field=value` pairs of one CLIENT LIST line.
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    line.split(' ')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn client_list_info_setinfo_and_kill() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let mut other = srv.client();
    query::<()>(&mut other, &["CLIENT", "SETNAME", "worker"]);
    query::<()>(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"]);
    query::<()>(&mut c, &["CLIENT", "SETINFO", "lib-ver", "1.2.3"]);
    assert!(
        error(&mut c, &["CLIENT", "SETINFO", "lib-name", "redis py"])
            .contains("cannot contain spaces")
    );
    assert!(
        error(&mut c, &["CLIENT", "SETINFO", "badger", "hamster"]).contains("Unrecognized option")
    );
    let me: i64 = query(&mut c, &["CLIENT", "ID"]);
    let info: String = query(&mut c, &["CLIENT", "INFO"]);
    let f = fields(info.trim_end());
    // Redis 7.2's fields, in its order.
    let names: Vec<&str> = info
        .trim_end()
        .split(' ')
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "id",
            "addr",
            "laddr",
            "fd",
            "name",
            "age",
            "idle",
            "flags",
            "db",
            "sub",
            "psub",
            "ssub",
            "multi",
            "qbuf",
            "qbuf-free",
            "argv-mem",
            "multi-mem",
            "rbs",
            "rbp",
            "obl",
            "oll",
            "omem",
            "tot-mem",
            "events",
            "cmd",
            "user",
            "redir",
            "resp",
            "lib-name",
            "lib-ver"
        ]
    );
    assert_eq!(f["id"], me.to_string());
    assert_eq!(f["laddr"], format!("127.0.0.1:{}", srv.port));
    assert_eq!(f["cmd"], "client|info");
    assert_eq!(f["flags"], "N");
    assert_eq!(f["multi"], "-1");
    assert_eq!(f["user"], "default");
    assert_eq!(
        (f["lib-name"].as_str(), f["lib-ver"].as_str()),
        ("redis-rs", "1.2.3")
    );
    // RESET keeps the library's name and version, as Redis does.
    query::<String>(&mut c, &["RESET"]);
    let info: String = query(&mut c, &["CLIENT", "INFO"]);
    assert_eq!(fields(info.trim_end())["lib-name"], "redis-rs");

    let list: String = query(&mut c, &["CLIENT", "LIST"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    let worker = list
        .lines()
        .map(fields)
        .find(|f| f["name"] == "worker")
        .unwrap();
    assert_eq!(worker["cmd"], "client|setname");
    let only: String = query(&mut c, &["CLIENT", "LIST", "ID", &worker["id"]]);
    assert_eq!(only.lines().count(), 1);
    assert!(error(&mut c, &["CLIENT", "LIST", "ID", "x"]).contains("Invalid client ID"));

    // KILL: bad filters are refused; a filter closes the connections it matches.
    assert!(error(&mut c, &["CLIENT", "KILL", "ID", "0"]).contains("greater than 0"));
    assert!(error(&mut c, &["CLIENT", "KILL", "TYPE", "x"]).contains("Unknown client type"));
    assert!(error(&mut c, &["CLIENT", "KILL", "USER", "nobody"]).contains("No such user"));
    assert!(error(&mut c, &["CLIENT", "KILL", "ID", "1", "x"]).contains("syntax error"));
    assert_eq!(
        query::<i64>(&mut c, &["CLIENT", "KILL", "ID", &worker["id"]]),
        1
    );
    assert!(
        redis::cmd("PING").query::<String>(&mut other).is_err(),
        "killed"
    );
    assert_eq!(
        query::<i64>(&mut c, &["CLIENT", "KILL", "SKIPME", "yes"]),
        0
    );
    // The old form, and killing oneself: the reply comes first, then the connection closes.
    assert!(error(&mut c, &["CLIENT", "KILL", "127.0.0.1:1"]).contains("No such client"));
    assert_eq!(query::<i64>(&mut c, &["CLIENT", "KILL", "SKIPME", "no"]), 1);
    assert!(redis::cmd("PING").query::<String>(&mut c).is_err());
}

/// A request that arrives after CLIENT KILL replied is not answered, however the killed
/// connection's task is scheduled: its wake-up may find both the request and the kill ready.
#[test]
fn a_killed_client_answers_nothing_after_the_kill() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    // Threads that keep the cores busy, so that the killed connection's task often runs only
    // once the request is there too.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let _stop = Stop(stop, spinners);
    for round in 0..100 {
        let mut victim = srv.client();
        let id: i64 = query(&mut victim, &["CLIENT", "ID"]);
        let killed: i64 = query(&mut c, &["CLIENT", "KILL", "ID", &id.to_string()]);
        assert_eq!(killed, 1);
        let answer = redis::cmd("PING").query::<String>(&mut victim);
        assert!(answer.is_err(), "round {round}: {answer:?}");
    }
}

/// Stops and joins the spinning threads, also when the test fails.
struct Stop(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn client_reply_off_skip_on() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut raw = srv.raw();
    // OFF: nothing until ON, whose OK is the first reply; the writes still happen.
    raw.send(&resp(&["CLIENT", "REPLY", "OFF"]));
    raw.send(&resp(&["SET", "a", "1"]));
    raw.send(&resp(&["GET", "nosuch-command-yet"]));
    raw.cmd(&["CLIENT", "REPLY", "ON"], "+OK\r\n");
    raw.cmd(&["GET", "a"], "$1\r\n1\r\n");
    // SKIP: the next command only.
    raw.send(&resp(&["CLIENT", "REPLY", "SKIP"]));
    raw.send(&resp(&["PING", "skipped"]));
    raw.cmd(&["PING", "seen"], "$4\r\nseen\r\n");
}

#[test]
fn client_pause_holds_writes_until_unpause() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    query::<()>(&mut c, &["CLIENT", "PAUSE", "100000", "WRITE"]);
    // Reads go on; a write waits, counted as blocked, and runs after UNPAUSE.
    assert_eq!(query::<Option<String>>(&mut c, &["GET", "k"]), None);
    let mut w = srv.raw();
    w.send(&resp(&["SET", "k", "v"]));
    let blocked = || {
        let info: String = query(&mut srv.client(), &["INFO", "clients"]);
        info.contains("blocked_clients:1")
    };
    let started = std::time::Instant::now();
    while !blocked() {
        let waited = started.elapsed();
        assert!(
            waited.as_secs() < 10,
            "the SET under PAUSE WRITE never blocked"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(query::<Option<String>>(&mut c, &["GET", "k"]), None, "held");
    // A command with bad arguments is answered at once.
    assert!(error(&mut c, &["SET", "k"]).contains("wrong number of arguments"));
    query::<()>(&mut c, &["CLIENT", "UNPAUSE"]);
    w.cmd(&["GET", "k"], "+OK\r\n$1\r\nv\r\n");
    assert!(error(&mut c, &["CLIENT", "PAUSE", "x"]).contains("timeout is not an integer"));

    // Under PAUSE ALL, CLIENT commands wait too (a WRITE pause sent meanwhile cannot weaken
    // it), but UNPAUSE is always served.
    query::<()>(&mut c, &["CLIENT", "PAUSE", "100000", "ALL"]);
    w.send(&resp(&["CLIENT", "PAUSE", "10", "WRITE"]));
    let short = Some(std::time::Duration::from_millis(300));
    w.s.set_read_timeout(short).unwrap();
    assert_eq!(
        w.read_exact_len(1),
        b"",
        "CLIENT PAUSE answered under PAUSE ALL"
    );
    w.s.set_read_timeout(None).unwrap();
    query::<()>(&mut c, &["CLIENT", "UNPAUSE"]);
    w.cmd(&["GET", "k"], "+OK\r\n$1\r\nv\r\n");

    // PAUSE queued in MULTI starts once EXEC's writes are in; while it holds writes, active
    // expiry waits (an expired key reads as gone, but nothing is removed), and UNPAUSE lets it
    // catch up at once.
    let expired = |c: &mut redis::Connection| {
        let info: String = query(c, &["INFO", "stats"]);
        let line = info
            .lines()
            .find(|l| l.starts_with("expired_keys:"))
            .unwrap();
        line["expired_keys:".len()..].trim().parse::<u64>().unwrap()
    };
    let before = expired(&mut c);
    w.cmd(&["MULTI"], "+OK\r\n");
    w.cmd(&["SET", "short", "v", "PX", "10"], "+QUEUED\r\n");
    w.cmd(&["CLIENT", "PAUSE", "50000", "WRITE"], "+QUEUED\r\n");
    w.cmd(&["EXEC"], "*2\r\n+OK\r\n+OK\r\n");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(query::<Option<String>>(&mut c, &["GET", "short"]), None);
    assert_eq!(expired(&mut c), before, "removed during the pause");
    query::<()>(&mut c, &["CLIENT", "UNPAUSE"]);
    assert_eq!(expired(&mut c), before + 1);
    w.cmd(&["MULTI"], "+OK\r\n");
    w.send(&resp(&["CLIENT", "SETNAME", "x"]));
    let e = String::from_utf8(read_reply(&mut w)).unwrap();
    assert!(
        e.contains("CLIENT SETNAME is not supported inside MULTI"),
        "{e}"
    );
    w.cmd(&["DISCARD"], "+OK\r\n");
}

#[test]
fn monitor_streams_commands_with_secrets_redacted() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start_env(
        &t.path().join("data"),
        &[],
        &[("KEEL_REQUIREPASS", "s3cret")],
    );
    let mut m = srv.raw();
    m.cmd(&["AUTH", "s3cret"], "+OK\r\n");
    m.cmd(&["MONITOR"], "+OK\r\n");
    let mut c = srv.client();
    query::<()>(&mut c, &["AUTH", "s3cret"]);
    query::<()>(&mut c, &["SET", "k", "a \"quoted\"\nvalue"]);
    query::<()>(&mut c, &["MULTI"]);
    query::<String>(&mut c, &["INCR", "n"]);
    query::<Vec<i64>>(&mut c, &["EXEC"]);
    // A command refused for its arguments never runs, and is not shown.
    assert!(error(&mut c, &["GET"]).contains("wrong number"));
    query::<Option<String>>(&mut c, &["GET", "k"]);
    let mut lines = Vec::new();
    while lines.len() < 6 {
        let mut line = Vec::new();
        while !line.ends_with(b"\r\n") {
            line.extend(m.read_exact_len(1));
        }
        lines.push(String::from_utf8(line).unwrap());
    }
    let tail: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once("] ").expect("a monitor line").1.trim_end())
        .collect();
    assert_eq!(
        tail,
        [
            r#""AUTH" "(redacted)""#,
            r#""SET" "k" "a \"quoted\"\nvalue""#,
            r#""MULTI""#,
            r#""INCR" "n""#,
            r#""EXEC""#,
            r#""GET" "k""#,
        ]
    );
    assert!(
        lines[0].starts_with('+') && lines[0].contains(" [0 127.0.0.1:"),
        "{}",
        lines[0]
    );
    // Only QUIT and RESET are served; RESET leaves monitor mode.
    m.cmd(
        &["GET", "k"],
        "-ERR this connection is in MONITOR mode: only QUIT and RESET are served\r\n",
    );
    m.cmd(&["RESET"], "+RESET\r\n");
    m.cmd(&["AUTH", "s3cret"], "+OK\r\n");
    m.cmd(&["PING"], "+PONG\r\n");
}

/// A map reply as the `redis` crate gives it over RESP2: key, value, key, value, …
fn pairs(v: redis::Value) -> Vec<(redis::Value, redis::Value)> {
    let redis::Value::Array(items) = v else {
        panic!("not an array: {v:?}")
    };
    assert!(items.len().is_multiple_of(2), "{items:?}");
    let mut it = items.into_iter();
    std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not a string: {other:?}"),
    }
}

fn int(v: &redis::Value) -> i64 {
    match v {
        redis::Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// One command in LATENCY HISTOGRAM's reply: name, calls, (µs bound, cumulative count)s.
type CommandHistogram = (String, i64, Vec<(i64, i64)>);

/// LATENCY HISTOGRAM's reply.
fn latency_histogram(c: &mut redis::Connection, names: &[&str]) -> Vec<CommandHistogram> {
    let mut args = vec!["LATENCY", "HISTOGRAM"];
    args.extend_from_slice(names);
    let reply: redis::Value = query(c, &args);
    pairs(reply)
        .into_iter()
        .map(|(name, body)| {
            let body = pairs(body);
            assert_eq!(text(&body[0].0), "calls");
            assert_eq!(text(&body[1].0), "histogram_usec");
            let buckets = pairs(body[1].1.clone())
                .iter()
                .map(|(us, n)| (int(us), int(n)))
                .collect();
            (text(&name), int(&body[0].1), buckets)
        })
        .collect()
}

#[test]
fn latency_monitor_histograms_and_latencystats() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let threshold: Vec<String> = query(&mut c, &["CONFIG", "GET", "latency-monitor-threshold"]);
    assert_eq!(
        threshold,
        ["latency-monitor-threshold", "0"],
        "off by default"
    );
    assert!(query::<Vec<redis::Value>>(&mut c, &["LATENCY", "LATEST"]).is_empty());
    assert!(query::<String>(&mut c, &["LATENCY", "DOCTOR"]).contains("monitoring is off"));

    // A list big enough that sorting it takes a millisecond or more, whatever the machine.
    for chunk in 0..20 {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg("big");
        for i in 0..10_000 {
            cmd.arg((chunk * 7919 + i * 104_729) % 1_000_003);
        }
        let _: i64 = cmd.query(&mut c).unwrap();
    }
    query::<()>(&mut c, &["CONFIG", "SET", "latency-monitor-threshold", "1"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut latest = Vec::new();
    for _ in 0..50 {
        let _: Vec<redis::Value> = query(&mut c, &["SORT", "big", "LIMIT", "0", "1"]);
        latest = query::<Vec<(String, i64, i64, i64)>>(&mut c, &["LATENCY", "LATEST"]);
        if latest.iter().any(|e| e.0 == "command") {
            break;
        }
    }
    let command = latest.iter().find(|e| e.0 == "command");
    let (_, at, ms, max) = command.unwrap_or_else(|| panic!("no command event: {latest:?}"));
    assert!((at - now).abs() < 3600, "{at} vs {now}");
    assert!(*ms >= 1 && max >= ms, "{latest:?}");
    for (name, _, ms, max) in &latest {
        assert!(
            ["command", "fast-command", "wal-fsync", "checkpoint"].contains(&name.as_str()),
            "{name}"
        );
        assert!(*ms >= 1 && max >= ms, "{latest:?}");
    }

    let history: Vec<(i64, i64)> = query(&mut c, &["LATENCY", "HISTORY", "command"]);
    assert!(!history.is_empty());
    assert!(history.iter().all(|&(_, ms)| ms >= 1), "{history:?}");
    assert!(
        history.windows(2).all(|w| w[0].0 < w[1].0),
        "one a second, oldest first"
    );
    assert!(query::<Vec<redis::Value>>(&mut c, &["LATENCY", "HISTORY", "nope"]).is_empty());
    let graph: String = query(&mut c, &["LATENCY", "GRAPH", "command"]);
    assert!(graph.starts_with("command - high "), "{graph}");
    assert!(error(&mut c, &["LATENCY", "GRAPH", "nope"]).contains("No samples"));
    let doctor: String = query(&mut c, &["LATENCY", "DOCTOR"]);
    assert!(doctor.contains("command: "), "{doctor}");
    assert!(error(&mut c, &["LATENCY", "HELP", "x"]).contains("'latency|help'"));
    assert!(error(&mut c, &["LATENCY", "NOPE"]).contains("Try LATENCY HELP"));
    let help: Vec<String> = query(&mut c, &["LATENCY", "HELP"]);
    assert!(help.iter().any(|l| l.starts_with("HISTOGRAM")), "{help:?}");

    // Per-command histograms: calls, and cumulative counts under doubling µs bounds.
    let h = latency_histogram(&mut c, &["sort", "nope", "config|set", "slowlog"]);
    let names: Vec<&str> = h.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        ["sort", "config|set"],
        "unknown and unused names are skipped"
    );
    for (name, calls, buckets) in &h {
        assert!(*calls >= 1, "{name}");
        assert_eq!(
            buckets.last().map(|b| b.1),
            Some(*calls),
            "{name}: {buckets:?}"
        );
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "{name}: {buckets:?}"
        );
        assert!(buckets
            .iter()
            .all(|b| [1, 2, 4, 8, 16, 32, 65, 131, 262, 524].contains(&b.0) || b.0 >= 1048));
    }
    let all = latency_histogram(&mut c, &[]);
    assert!(all.iter().any(|e| e.0 == "rpush" && e.1 == 20), "{all:?}");
    assert!(
        all.iter().any(|e| e.0 == "latency|latest"),
        "subcommands by their full name"
    );

    // INFO latencystats: in `all` and `everything`, not in the default sections.
    let (sections, _) = info(&mut c, &[]);
    assert!(!sections.contains(&"Latencystats".to_string()));
    let (sections, f) = info(&mut c, &["all"]);
    assert!(
        sections.contains(&"Latencystats".to_string()),
        "{sections:?}"
    );
    let sort = &f["latency_percentiles_usec_sort"];
    let p: Vec<(String, f64)> = sort
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let (_, decimals) = v.split_once('.').unwrap();
            assert_eq!(decimals.len(), 3, "{sort}");
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let labels: Vec<&str> = p.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(labels, ["p50", "p99", "p99.9"]);
    assert!(
        p[0].1 > 0.0 && p[0].1 <= p[1].1 && p[1].1 <= p[2].1,
        "{sort}"
    );
    assert!(f.contains_key("latency_percentiles_usec_config|set"));
    let (_, f) = info(&mut c, &["latencystats"]);
    assert!(f.contains_key("latency_percentiles_usec_rpush"));

    // LATENCY RESET forgets events; CONFIG RESETSTAT the histograms.
    assert!(query::<i64>(&mut c, &["LATENCY", "RESET"]) >= 1);
    assert!(query::<Vec<redis::Value>>(&mut c, &["LATENCY", "LATEST"]).is_empty());
    assert_eq!(query::<i64>(&mut c, &["LATENCY", "RESET", "nope"]), 0);
    query::<()>(&mut c, &["CONFIG", "RESETSTAT"]);
    let names: Vec<String> = latency_histogram(&mut c, &[])
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(names, ["config|resetstat"], "as Redis: only what ran since");
    let (_, f) = info(&mut c, &["latencystats"]);
    assert!(!f.contains_key("latency_percentiles_usec_sort"));
    assert!(f.contains_key("latency_percentiles_usec_latency|histogram"));
}
