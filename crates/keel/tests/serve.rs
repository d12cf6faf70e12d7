//! `keel serve` as a real process on an ephemeral port, driven by the `redis` crate, `redis-cli`
//! and raw RESP bytes. No assertion depends on timing: waits poll until a generous deadline.

use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn data_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("data")
}

/// Expected raw replies, taken from the Redis documentation's examples and error strings.
#[test]
fn command_reply_table() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut c = srv.raw();
    let table: &[(&[&str], &str)] = &[
        (&["PING"], "+PONG\r\n"),
        (&["PING", "hi"], "$2\r\nhi\r\n"),
        (&["ECHO", "hey"], "$3\r\nhey\r\n"),
        (&["SELECT", "0"], "+OK\r\n"),
        (&["SELECT", "1"], "-ERR DB index is out of range\r\n"),
        (&["GET", "nosuch"], "$-1\r\n"),
        (&["SET", "k", "v"], "+OK\r\n"),
        (&["GET", "k"], "$1\r\nv\r\n"),
        // Command names match in any case; errors name the command in lower case, as Redis does.
        (&["sEt", "mixed", "1"], "+OK\r\n"),
        (&["gEt", "mixed"], "$1\r\n1\r\n"),
        (&["GeT"], "-ERR wrong number of arguments for 'get' command\r\n"),
        (&["SET", "k", "w", "NX"], "$-1\r\n"),
        (&["SET", "k", "w", "XX", "GET"], "$1\r\nv\r\n"),
        (&["SET", "new", "1", "XX"], "$-1\r\n"),
        (&["SET", "k", "v", "NX", "XX"], "-ERR syntax error\r\n"),
        (&["SET", "k", "v", "EX", "0"], "-ERR invalid expire time in 'set' command\r\n"),
        (&["SET", "k", "v", "EX", "x"], "-ERR value is not an integer or out of range\r\n"),
        (&["SET", "k"], "-ERR wrong number of arguments for 'set' command\r\n"),
        (&["SETNX", "k", "z"], ":0\r\n"),
        (&["SETNX", "k2", "z"], ":1\r\n"),
        (&["GETSET", "k2", "y"], "$1\r\nz\r\n"),
        (&["GETDEL", "k2"], "$1\r\ny\r\n"),
        (&["GETDEL", "k2"], "$-1\r\n"),
        (&["MSET", "a", "1", "b", "2"], "+OK\r\n"),
        (&["MSET", "a", "1", "b"], "-ERR wrong number of arguments for 'mset' command\r\n"),
        (&["MGET", "a", "nosuch", "b"], "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n"),
        (&["MSETNX", "a", "3", "c", "3"], ":0\r\n"),
        (&["MSETNX", "c", "3", "d", "4"], ":1\r\n"),
        (&["INCR", "a"], ":2\r\n"),
        (&["INCRBY", "a", "10"], ":12\r\n"),
        (&["DECR", "a"], ":11\r\n"),
        (&["DECRBY", "a", "20"], ":-9\r\n"),
        (&["INCR", "k"], "-ERR value is not an integer or out of range\r\n"),
        (&["INCRBY", "a", "1.5"], "-ERR value is not an integer or out of range\r\n"),
        (&["SET", "max", "9223372036854775807"], "+OK\r\n"),
        (&["INCR", "max"], "-ERR increment or decrement would overflow\r\n"),
        (&["SET", "f", "10.50"], "+OK\r\n"),
        (&["INCRBYFLOAT", "f", "0.1"], "$4\r\n10.6\r\n"),
        (&["INCRBYFLOAT", "f", "abc"], "-ERR value is not a valid float\r\n"),
        (&["INCRBYFLOAT", "g", "0.1"], "$3\r\n0.1\r\n"),
        (&["INCRBYFLOAT", "g", "0.2"], "$3\r\n0.3\r\n"),
        (&["INCRBYFLOAT", "k", "1"], "-ERR value is not a valid float\r\n"),
        (&["APPEND", "s", "Hello"], ":5\r\n"),
        (&["APPEND", "s", " World"], ":11\r\n"),
        (&["STRLEN", "s"], ":11\r\n"),
        (&["STRLEN", "nosuch"], ":0\r\n"),
        (&["GETRANGE", "s", "0", "3"], "$4\r\nHell\r\n"),
        (&["GETRANGE", "s", "-3", "-1"], "$3\r\nrld\r\n"),
        (&["GETRANGE", "s", "10", "100"], "$1\r\nd\r\n"),
        (&["EXISTS", "s", "nosuch", "s"], ":2\r\n"),
        (&["TYPE", "s"], "+string\r\n"),
        (&["TYPE", "nosuch"], "+none\r\n"),
        (&["DEL", "s", "nosuch", "c"], ":2\r\n"),
        (&["UNLINK", "d"], ":1\r\n"),
        (&["RENAME", "nosuch", "x"], "-ERR no such key\r\n"),
        (&["RENAME", "a", "a2"], "+OK\r\n"),
        (&["GET", "a2"], "$2\r\n-9\r\n"),
        (&["RENAMENX", "a2", "b"], ":0\r\n"),
        (&["RENAMENX", "a2", "a3"], ":1\r\n"),
        (&["TTL", "a3"], ":-1\r\n"),
        (&["TTL", "nosuch"], ":-2\r\n"),
        (&["PTTL", "nosuch"], ":-2\r\n"),
        (&["EXPIRE", "nosuch", "10"], ":0\r\n"),
        (&["EXPIRE", "a3", "100"], ":1\r\n"),
        (&["TTL", "a3"], ":100\r\n"),
        (&["PERSIST", "a3"], ":1\r\n"),
        (&["PERSIST", "a3"], ":0\r\n"),
        (&["TTL", "a3"], ":-1\r\n"),
        (&["EXPIRE", "a3", "100", "XX"], ":0\r\n"),
        (&["EXPIRE", "a3", "100", "GT"], ":0\r\n"),
        (&["EXPIRE", "a3", "100", "NX"], ":1\r\n"),
        (&["EXPIRE", "a3", "200", "NX"], ":0\r\n"),
        (&["EXPIRE", "a3", "50", "GT"], ":0\r\n"),
        (&["EXPIRE", "a3", "200", "GT"], ":1\r\n"),
        (&["EXPIRE", "a3", "300", "LT"], ":0\r\n"),
        (&["EXPIRE", "a3", "150", "XX", "LT"], ":1\r\n"),
        (&["TTL", "a3"], ":150\r\n"),
        (
            &["EXPIRE", "a3", "1", "NX", "XX"],
            "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
        ),
        (
            &["EXPIRE", "a3", "1", "GT", "LT"],
            "-ERR GT and LT options at the same time are not compatible\r\n",
        ),
        (&["EXPIRE", "a3", "1", "FOO"], "-ERR Unsupported option FOO\r\n"),
        (&["EXPIRE", "a3", "-1", "NX"], ":0\r\n"),
        (&["EXISTS", "a3"], ":1\r\n"),
        (&["PERSIST", "a3"], ":1\r\n"),
        (&["EXPIRE", "a3", "-1"], ":1\r\n"),
        (&["EXISTS", "a3"], ":0\r\n"),
        (&["PEXPIREAT", "b", "1"], ":1\r\n"),
        (&["GET", "b"], "$-1\r\n"),
        (&["SET", "e", "v", "EXAT", "1"], "+OK\r\n"),
        (&["GET", "e"], "$-1\r\n"),
        (&["SETEX", "e", "100", "v"], "+OK\r\n"),
        (&["TTL", "e"], ":100\r\n"),
        (&["SETEX", "e", "-1", "v"], "-ERR invalid expire time in 'setex' command\r\n"),
        (&["SET", "e", "w", "KEEPTTL"], "+OK\r\n"),
        (&["TTL", "e"], ":100\r\n"),
        (&["GETEX", "e", "PERSIST"], "$1\r\nw\r\n"),
        (&["TTL", "e"], ":-1\r\n"),
        (&["GETEX", "e", "EX", "50"], "$1\r\nw\r\n"),
        (&["TTL", "e"], ":50\r\n"),
        (&["GETEX", "e", "FOO"], "-ERR syntax error\r\n"),
        (&["FLUSHALL"], "+OK\r\n"),
        (&["DBSIZE"], ":0\r\n"),
        (&["MSET", "user:1", "a", "user:2", "b", "other", "c"], "+OK\r\n"),
        // Keys come in hash order: these patterns match one key each (see below for more).
        (&["KEYS", "user:2"], "*1\r\n$6\r\nuser:2\r\n"),
        (&["KEYS", "user:3"], "*0\r\n"),
        (&["KEYS", "*th?r"], "*1\r\n$5\r\nother\r\n"),
        (&["KEYS", "nosuch*"], "*0\r\n"),
        (&["DBSIZE"], ":3\r\n"),
        (&["SCAN", "0", "COUNT", "100", "MATCH", "o*"], "*2\r\n$1\r\n0\r\n*1\r\n$5\r\nother\r\n"),
        (&["SCAN", "x"], "-ERR invalid cursor\r\n"),
        (&["KEEL.VERSION", "nosuch"], "$-1\r\n"),
        (&["KEEL.CAS", "nosuch", "5", "v"], ":0\r\n"),
        (&["KEEL.CAS", "cas", "0", "v"], ":1\r\n"),
        (&["KEEL.CAS", "cas", "0", "v"], ":0\r\n"),
        (&["NOSUCHCMD", "x"], "-ERR unknown command 'NOSUCHCMD', with args beginning with: 'x' \r\n"),
        (&["CLIENT", "SETNAME", "bad name"], "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"),
        (&["CLIENT", "SETNAME", "worker"], "+OK\r\n"),
        (&["CLIENT", "GETNAME"], "$6\r\nworker\r\n"),
        (&["CONFIG", "GET", "appendonly"], "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"),
        (&["CONFIG", "GET", "nosuch"], "*0\r\n"),
        (&["AUTH", "pw"], "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"),
        (&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
        (&["MULTI"], "+OK\r\n"),
        (&["MULTI"], "-ERR MULTI calls can not be nested\r\n"),
        (&["DISCARD"], "+OK\r\n"),
        (&["EXEC"], "-ERR EXEC without MULTI\r\n"),
        (&["DISCARD"], "-ERR DISCARD without MULTI\r\n"),
        (&["WAITAOF", "1", "0", "0"], "*2\r\n:1\r\n:0\r\n"),
        (&["WAIT", "0", "0"], ":0\r\n"),
        (&["SHUTDOWN", "ABORT"], "-ERR No shutdown in progress.\r\n"),
    ];
    for (args, expect) in table {
        c.roundtrip(&resp(args), expect.as_bytes());
    }
    // Value-dependent replies, checked by shape.
    c.send(&resp(&["KEEL.VERSION", "cas"]));
    let mut v = Vec::new();
    while !v.ends_with(b"\r\n") {
        v.extend(c.read_exact_len(1));
    }
    let version: u64 = std::str::from_utf8(&v[1..v.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(v[0], b':');
    // The version CAS expects is the one KEEL.VERSION reports.
    c.roundtrip(
        &resp(&["KEEL.CAS", "cas", &version.to_string(), "w"]),
        b":1\r\n",
    );
    c.roundtrip(
        &resp(&["KEEL.CAS", "cas", &version.to_string(), "x"]),
        b":0\r\n",
    );
    c.roundtrip(&resp(&["GET", "cas"]), b"$1\r\nw\r\n");
    // Inline commands, as redis-benchmark's PING_INLINE sends them.
    c.roundtrip(b"PING\r\n", b"+PONG\r\n");
    c.roundtrip(
        b"SET inline \"a b\"\r\nGET inline\r\n",
        b"+OK\r\n$3\r\na b\r\n",
    );
    // RESP3 after HELLO 3: nil and maps change encoding.
    c.send(&resp(&["HELLO", "3"]));
    let hello = c.read_exact_len(4);
    assert_eq!(&hello, b"%7\r\n");
    let mut rest = Vec::new();
    // Drain the rest of the HELLO map with a PING fence.
    c.send(&resp(&["PING"]));
    while !rest.ends_with(b"+PONG\r\n") {
        rest.extend(c.read_exact_len(1));
    }
    c.roundtrip(&resp(&["GET", "nosuch"]), b"_\r\n");
    c.roundtrip(
        &resp(&["CONFIG", "GET", "appendfsync"]),
        b"%1\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n",
    );
}

/// Every "Try X HELP" error leads somewhere: each command with subcommands answers HELP as
/// Redis does, a first line naming the command, then each subcommand (HELP last).
#[test]
fn every_command_with_subcommands_answers_help() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut c = srv.client();
    let e = redis::cmd("CONFIG")
        .arg("NOSUCH")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("Try CONFIG HELP"), "{e}");
    for (cmd, sub) in [
        ("CONFIG", "GET "),
        ("CLIENT", "SETNAME "),
        ("COMMAND", "DOCS "),
        ("KEEL.CLUSTER", "ADD-NODE "),
        ("KEEL.MAINTENANCE", "ON "),
        ("OBJECT", "ENCODING "),
        ("MEMORY", "USAGE "),
    ] {
        let lines: Vec<String> = redis::cmd(cmd).arg("help").query(&mut c).unwrap();
        assert_eq!(
            lines[0],
            format!("{cmd} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:")
        );
        assert!(lines.iter().any(|l| l.starts_with(sub)), "{cmd}: {lines:?}");
        assert_eq!(lines[lines.len() - 2..], ["HELP", "    Print this help."]);
    }
}

#[test]
fn redis_crate_and_redis_cli() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut con = srv.client();
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query(&mut con)
        .unwrap();
    let v: String = redis::cmd("GET").arg("greeting").query(&mut con).unwrap();
    assert_eq!(v, "hello");
    let n: i64 = redis::cmd("INCRBY")
        .arg("n")
        .arg(5)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 5);
    let e = redis::cmd("INCR")
        .arg("greeting")
        .query::<i64>(&mut con)
        .unwrap_err();
    assert!(e.to_string().contains("not an integer"), "{e}");
    // RESP3 through the crate.
    let mut con3 = redis::Client::open(format!("{}?protocol=resp3", srv.url()))
        .unwrap()
        .get_connection()
        .unwrap();
    let v: Option<String> = redis::cmd("GET").arg("nosuch").query(&mut con3).unwrap();
    assert_eq!(v, None);
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query(&mut con3)
        .unwrap();
    assert!(info.contains("durable_lsn:"), "{info}");

    assert_eq!(srv.cli(&["PING"]), "PONG\n");
    assert_eq!(srv.cli(&["SET", "cli", "from cli"]), "OK\n");
    assert_eq!(srv.cli(&["GET", "cli"]), "from cli\n");
    assert_eq!(srv.cli(&["GET", "greeting"]), "hello\n");
    assert_eq!(srv.cli(&["-3", "GET", "nosuch"]), "\n");
    let info = srv.cli(&["INFO"]);
    for field in [
        "redis_version:",
        "connected_clients:",
        "durable_lsn:",
        "wal_fsyncs:",
        "wal_fsync_mean_us:",
        "wal_fsync_p99_us_max:",
        "wal_group_commit_mean_records:",
        "last_checkpoint_lsn:",
        "recovery_records_replayed:",
        "db0:keys=3",
    ] {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    let cmds = srv.cli(&["COMMAND", "COUNT"]);
    assert!(cmds.trim().parse::<i64>().unwrap() > 50);
    // redis-cli builds `help` (and its typing hints) from COMMAND DOCS.
    let help = srv.cli(&["HELP", "SET"]);
    assert!(
        help.contains("key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]")
            && help.contains("group:")
            && help.contains("string"),
        "{help}"
    );
    let help = srv.cli(&["HELP", "CLIENT", "SETNAME"]);
    assert!(
        help.contains("CLIENT SETNAME") && help.contains("connection-name"),
        "{help}"
    );
    // redis-cli's transaction and a pipe of commands.
    let mut child = Command::new("redis-cli")
        .args(["-p", &srv.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"MULTI\nSET t 1\nINCR t\nGET t\nEXEC\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\nQUEUED\nQUEUED\nQUEUED\nOK\n2\n2\n"
    );
}

#[test]
fn pipelining_reads_see_earlier_writes_and_replies_stay_in_order() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut c = srv.raw();
    let mut req = Vec::new();
    let mut expect = Vec::new();
    for i in 0..500 {
        let v = format!("value-{i}");
        req.extend(resp(&["SET", "p", &v]));
        req.extend(resp(&["GET", "p"]));
        req.extend(resp(&["INCR", "count"]));
        expect.extend(b"+OK\r\n");
        expect.extend(format!("${}\r\n{v}\r\n", v.len()).as_bytes());
        expect.extend(format!(":{}\r\n", i + 1).as_bytes());
    }
    c.roundtrip(&req, &expect);

    // The same through the redis crate's pipeline.
    let mut con = srv.client();
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn multi_exec_and_watch() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut a = srv.raw();
    let mut b = srv.client();
    // A transaction is one commit; per-command failures do not abort the others.
    a.roundtrip(&resp(&["SET", "s", "text"]), b"+OK\r\n");
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["SET", "x", "1"]));
    req.extend(resp(&["INCR", "s"]));
    req.extend(resp(&["INCR", "x"]));
    req.extend(resp(&["GET", "x"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(
        &req,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n+OK\r\n-ERR value is not an integer or out of range\r\n:2\r\n$1\r\n2\r\n",
    );
    // A command error while queueing aborts EXEC.
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["SET", "x"]));
    req.extend(resp(&["SET", "x", "9"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(
        &req,
        b"+OK\r\n-ERR wrong number of arguments for 'set' command\r\n+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    a.roundtrip(&resp(&["GET", "x"]), b"$1\r\n2\r\n");
    // WATCH: another client's write aborts the transaction (nil array)...
    a.roundtrip(&resp(&["WATCH", "x"]), b"+OK\r\n");
    let _: () = redis::cmd("SET")
        .arg("x")
        .arg("other")
        .query(&mut b)
        .unwrap();
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["SET", "x", "mine"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(&req, b"+OK\r\n+QUEUED\r\n*-1\r\n");
    a.roundtrip(&resp(&["GET", "x"]), b"$5\r\nother\r\n");
    // ... also for a read-only transaction ...
    a.roundtrip(&resp(&["WATCH", "x"]), b"+OK\r\n");
    let _: () = redis::cmd("DEL").arg("x").query(&mut b).unwrap();
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["GET", "x"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(&req, b"+OK\r\n+QUEUED\r\n*-1\r\n");
    // ... and an untouched watched key lets it commit; watching an absent key works too.
    a.roundtrip(&resp(&["WATCH", "x", "y"]), b"+OK\r\n");
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["SET", "x", "mine"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(&req, b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n");
    // UNWATCH and DISCARD forget the watch.
    a.roundtrip(&resp(&["WATCH", "x"]), b"+OK\r\n");
    a.roundtrip(&resp(&["UNWATCH"]), b"+OK\r\n");
    let _: () = redis::cmd("SET").arg("x").arg("b").query(&mut b).unwrap();
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["GET", "x"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(&req, b"+OK\r\n+QUEUED\r\n*1\r\n$1\r\nb\r\n");
    // Commands keel cannot run inside one atomic commit are refused while queueing.
    let mut req = resp(&["MULTI"]);
    req.extend(resp(&["KEYS", "*"]));
    req.extend(resp(&["EXEC"]));
    a.roundtrip(
        &req,
        b"+OK\r\n-ERR KEYS is not supported inside MULTI by keel\r\n-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    // The redis crate's atomic pipeline.
    let (v, n): (String, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("t")
        .arg("1")
        .ignore()
        .cmd("GET")
        .arg("t")
        .cmd("INCR")
        .arg("t")
        .query(&mut b)
        .unwrap();
    assert_eq!((v.as_str(), n), ("1", 2));
}

#[test]
fn expiry() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut con = srv.client();
    let _: () = redis::cmd("SET")
        .arg("short")
        .arg("v")
        .arg("PX")
        .arg(50)
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("long")
        .arg("v")
        .arg("EX")
        .arg(1000)
        .query(&mut con)
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg("long").query(&mut con).unwrap();
    assert!(pttl > 990_000 && pttl <= 1_000_000, "{pttl}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v: Option<String> = redis::cmd("GET").arg("short").query(&mut con).unwrap();
        if v.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "PX 50 never expired");
        thread::sleep(Duration::from_millis(20));
    }
    let ttl: i64 = redis::cmd("TTL").arg("short").query(&mut con).unwrap();
    assert_eq!(ttl, -2);
    let n: i64 = redis::cmd("EXISTS")
        .arg("short")
        .arg("long")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 1);
    // Expiry survives a restart: it is absolute.
    let at: i64 = redis::cmd("EXPIRETIME")
        .arg("long")
        .query(&mut con)
        .unwrap();
    drop(con);
    assert!(srv.sigterm().success());
    let srv = Server::start(&data_dir(&t), &[]);
    let mut con = srv.client();
    let at2: i64 = redis::cmd("EXPIRETIME")
        .arg("long")
        .query(&mut con)
        .unwrap();
    assert_eq!(at, at2);
    let v: Option<String> = redis::cmd("GET").arg("short").query(&mut con).unwrap();
    assert_eq!(v, None);
}

#[test]
fn scan_returns_every_stable_key_exactly_once() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut con = srv.client();
    let stable: Vec<String> = (0..600).map(|i| format!("stable:{i:04}")).collect();
    let mut pipe = redis::pipe();
    for k in &stable {
        pipe.cmd("SET").arg(k).arg(1).ignore();
    }
    for i in 0..300 {
        pipe.cmd("SET")
            .arg(format!("volatile:{i:04}"))
            .arg(1)
            .ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    // KEYS finds them all, in no promised order.
    let mut all: Vec<String> = redis::cmd("KEYS").arg("stable:*").query(&mut con).unwrap();
    all.sort();
    assert_eq!(all, stable);
    // Any number is a cursor, as in Redis: a made-up one scans on from some position, and
    // the scan still ends at 0.
    let mut cursor: u64 = u64::MAX / 2;
    for step in 0.. {
        let (next, _): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).query(&mut con).unwrap();
        if next == 0 {
            break;
        }
        assert!(step < 2000, "a scan from a made-up cursor does not end");
        cursor = next;
    }
    // Another client deletes the volatile keys and adds new ones while the scan runs.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let mut c2 = srv.client();
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 300 {
                let _: () = redis::cmd("DEL")
                    .arg(format!("volatile:{i:04}"))
                    .query(&mut c2)
                    .unwrap();
                let _: () = redis::cmd("SET")
                    .arg(format!("added:{i:04}"))
                    .arg(1)
                    .query(&mut c2)
                    .unwrap();
                let _: () = redis::cmd("SET")
                    .arg(format!("stable:{i:04}x"))
                    .arg(1)
                    .query(&mut c2)
                    .unwrap();
                i += 1;
            }
        })
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("stable:*")
            .arg("COUNT")
            .arg(7)
            .query(&mut con)
            .unwrap();
        for k in keys {
            *seen.entry(k).or_default() += 1;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for k in &stable {
        assert_eq!(seen.get(k), Some(&1), "{k}");
    }
    assert!(seen.values().all(|&n| n == 1));
}

#[test]
fn requirepass_auth_and_hello() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &["--requirepass", "s3cret"]);
    let mut c = srv.raw();
    c.roundtrip(
        &resp(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    c.roundtrip(&resp(&["PING"]), b"-NOAUTH Authentication required.\r\n");
    c.roundtrip(
        &resp(&["AUTH", "wrong"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.roundtrip(
        &resp(&["AUTH", "someone", "s3cret"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    c.send(&resp(&["HELLO", "3"]));
    let r = c.read_exact_len(6);
    assert_eq!(&r, b"-NOAUTH"[..6].as_ref());
    let mut c = srv.raw();
    c.roundtrip(&resp(&["AUTH", "s3cret"]), b"+OK\r\n");
    c.roundtrip(&resp(&["SET", "k", "v"]), b"+OK\r\n");
    c.roundtrip(&resp(&["RESET"]), b"+RESET\r\n");
    c.roundtrip(
        &resp(&["GET", "k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    c.roundtrip(&resp(&["AUTH", "default", "s3cret"]), b"+OK\r\n");
    c.roundtrip(&resp(&["GET", "k"]), b"$1\r\nv\r\n");
    // HELLO with AUTH authenticates and switches protocol at once.
    let mut c = srv.raw();
    c.send(&resp(&["HELLO", "3", "AUTH", "default", "s3cret"]));
    assert_eq!(c.read_exact_len(4), b"%7\r\n");
    // The redis crate with a password in the URL, and redis-cli -a.
    let mut con = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/", srv.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    assert_eq!(
        srv.cli(&["--no-auth-warning", "-a", "s3cret", "GET", "k"]),
        "v\n"
    );
    assert!(srv.cli(&["GET", "k"]).contains("NOAUTH"));
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &["--max-clients", "64"]);
    let mut bystander = srv.raw();
    bystander.roundtrip(&resp(&["SET", "b", "1"]), b"+OK\r\n");
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n$999999999999\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$9000000\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*99999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*2\r\n*1\r\n$1\r\nx\r\n",
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            b"*1\r\n$1\r\nxyz\r\n",
            "-ERR Protocol error: expected CRLF after bulk string\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"GET \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (bytes, expect) in cases {
        let mut c = srv.raw();
        c.send(bytes);
        assert_eq!(
            String::from_utf8_lossy(&c.read_to_close()),
            *expect,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        bystander.roundtrip(&resp(&["INCR", "b"]), b":2\r\n");
        bystander.roundtrip(&resp(&["DECR", "b"]), b":1\r\n");
    }
    // An inline line longer than 64 KiB without a newline.
    let mut c = srv.raw();
    c.send(&vec![b'a'; 70_000]);
    assert_eq!(
        c.read_to_close(),
        b"-ERR Protocol error: too big inline request\r\n"
    );
    // Pseudo-random garbage on many connections: each gets an error or a reply, never a crash.
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for _ in 0..50 {
        let mut c = srv.raw();
        let mut junk = Vec::new();
        for _ in 0..512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push(b"*$\r\n-:0123456789ab\" \x00\xff"[(x % 20) as usize]);
        }
        let _ = c.s.write_all(&junk);
        let _ = c.s.shutdown(std::net::Shutdown::Write);
        let _ = c.read_to_close();
    }
    // A client that disconnects mid-pipeline, with writes in flight.
    {
        let mut c = srv.raw();
        let mut req = Vec::new();
        for i in 0..200 {
            req.extend(resp(&["SET", &format!("mid{i}"), "v"]));
        }
        req.extend(b"*3\r\n$3\r\nSET\r\n$1\r\n");
        c.send(&req);
    }
    bystander.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
    bystander.roundtrip(&resp(&["GET", "b"]), b"$1\r\n1\r\n");
    // Many idle connections at once are fine.
    let conns: Vec<Raw> = (0..62).map(|_| srv.raw()).collect();
    for mut c in conns.into_iter().take(3) {
        c.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
    }
}

#[test]
fn max_clients_refuses_extra_connections() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &["--max-clients", "2"]);
    let mut a = srv.raw();
    let mut b = srv.raw();
    a.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
    b.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
    let mut c = srv.raw();
    assert_eq!(c.read_to_close(), b"-ERR max number of clients reached\r\n");
    drop(b);
    // The slot frees once the server notices the close; poll until a new client gets in.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut d = srv.raw();
        d.send(&resp(&["PING"]));
        let r = d.read_exact_len(7);
        if r == b"+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
    a.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
}

/// Everything in `acked` is present with its value; each key in `unacked` (a write whose reply
/// never came) is either present with its full value or absent.
fn check_acked(
    con: &mut redis::Connection,
    acked: &HashMap<String, String>,
    unacked: &HashMap<String, String>,
    when: &str,
) {
    let keys: Vec<&String> = acked.keys().chain(unacked.keys()).collect();
    for chunk in keys.chunks(500) {
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(con).unwrap();
        for (k, v) in chunk.iter().zip(vals) {
            match acked.get(*k) {
                Some(want) => assert_eq!(v.as_ref(), Some(want), "{when}: {k} lost"),
                None => assert!(
                    v.is_none() || v.as_ref() == unacked.get(*k),
                    "{when}: {k} torn: {v:?}"
                ),
            }
        }
    }
}

/// 16 clients write unique keys and record each acknowledged write; the server is killed with
/// SIGKILL mid-load, 20 times, at a pseudo-random point; after each restart every acknowledged
/// write is present, and a write whose reply never came is either fully present or absent.
/// `KEEL_TEST_SEED` replays a run's kill points (the seed is printed).
#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    const CYCLES: usize = 20;
    const WRITERS: usize = 16;
    let seed: u64 = std::env::var("KEEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("kill_9_under_load: KEEL_TEST_SEED={seed}");
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let t = tempdir();
    let dir = data_dir(&t);
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut unacked: HashMap<String, String> = HashMap::new();
    for cycle in 0..CYCLES {
        let srv = Server::start(&dir, &[]);
        // Everything acknowledged so far, in every earlier cycle, is still there.
        let mut con = srv.client();
        check_acked(
            &mut con,
            &acked,
            &unacked,
            &format!("seed {seed} cycle {cycle}"),
        );
        unacked.clear();
        let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let url = srv.url();
                let progress = progress.clone();
                thread::spawn(move || {
                    let mut ok = Vec::new();
                    let mut in_doubt = None;
                    let Ok(mut con) = redis::Client::open(url).unwrap().get_connection() else {
                        return (ok, in_doubt);
                    };
                    for i in 0..100_000 {
                        let k = format!("c{cycle}:w{w}:{i}");
                        let v = format!("{k}:{}", "x".repeat(i % 97));
                        match redis::cmd("SET").arg(&k).arg(&v).query::<()>(&mut con) {
                            Ok(()) => {
                                ok.push((k, v));
                                progress.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                in_doubt = Some((k, v));
                                break;
                            }
                        }
                    }
                    (ok, in_doubt)
                })
            })
            .collect();
        // Kill at a pseudo-random point: after some acknowledged writes, plus a little while.
        let target = 100 + rand(1500) as usize;
        let deadline = Instant::now() + DEADLINE;
        while progress.load(Ordering::Relaxed) < target && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        thread::sleep(Duration::from_millis(rand(20)));
        srv.kill9();
        for h in writers {
            let (ok, in_doubt) = h.join().unwrap();
            acked.extend(ok);
            unacked.extend(in_doubt);
        }
    }
    assert!(
        acked.len() > CYCLES * 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let srv = Server::start(&dir, &[]);
    let mut con = srv.client();
    check_acked(&mut con, &acked, &unacked, &format!("seed {seed} final"));
}

#[test]
fn sigterm_drains_and_loses_nothing_acknowledged() {
    let t = tempdir();
    let dir = data_dir(&t);
    let srv = Server::start(&dir, &[]);
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let url = srv.url();
            let progress = progress.clone();
            thread::spawn(move || {
                let mut ok = Vec::new();
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                for i in 0..100_000 {
                    let k = format!("t:w{w}:{i}");
                    // Pipelines of 8, so replies are in flight when the signal lands.
                    let mut pipe = redis::pipe();
                    pipe.cmd("SET").arg(&k).arg(i).ignore();
                    for j in 0..7 {
                        pipe.cmd("SET").arg(format!("{k}.{j}")).arg(j).ignore();
                    }
                    if pipe.query::<()>(&mut con).is_err() {
                        break;
                    }
                    ok.push(k);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                ok
            })
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while progress.load(Ordering::Relaxed) < 500 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let log = srv.log.clone();
    let status = srv.sigterm();
    assert!(status.success(), "{status:?}");
    thread::sleep(Duration::from_millis(100)); // let the log reader catch the last line
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("shut down cleanly")),
        "{:?}",
        log.lock().unwrap()
    );
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(acked.len() >= 500);
    let srv = Server::start(&dir, &[]);
    let mut con = srv.client();
    for k in &acked {
        let n: i64 = redis::cmd("EXISTS")
            .arg(k)
            .arg(format!("{k}.6"))
            .query(&mut con)
            .unwrap();
        assert_eq!(n, 2, "{k} lost");
    }
    // SHUTDOWN from a client also exits cleanly.
    let mut c = srv.raw();
    c.send(&resp(&["SHUTDOWN"]));
    assert_eq!(c.read_to_close(), b"");
    let mut child = srv;
    let status = child.child.wait().unwrap();
    assert!(status.success());
}

/// A connection waiting for its next request, subscribed or not, closes as soon as it is
/// killed (CLIENT KILL) or the server stops: it need not send anything to notice, and the
/// server's drain does not wait its 30 s for it.
#[test]
fn idle_connections_close_at_once_when_killed_or_when_the_server_stops() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    // Within 20 s, less than the drain's 30: true if the server closed the connection.
    let closes = |c: &mut Raw| {
        c.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 256];
        loop {
            match c.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    let mut admin = srv.raw();
    let mut idle = srv.raw();
    idle.send(&resp(&["CLIENT", "ID"]));
    let reply = String::from_utf8(read_reply(&mut idle)).unwrap();
    let id = reply.trim_start_matches(':').trim_end();
    admin.roundtrip(&resp(&["CLIENT", "KILL", "ID", id]), b":1\r\n");
    assert!(closes(&mut idle), "the killed connection stayed open");
    let mut waiting = srv.raw();
    waiting.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
    let mut subscriber = srv.raw();
    subscriber.roundtrip(
        &resp(&["SUBSCRIBE", "ch"]),
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    );
    let log = srv.log.clone();
    let status = srv.sigterm();
    assert!(status.success(), "{status:?}");
    assert!(closes(&mut waiting) && closes(&mut subscriber));
    thread::sleep(Duration::from_millis(100)); // let the log reader catch the last line
    let log = log.lock().unwrap();
    assert!(!log.iter().any(|l| l.contains("still busy")), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("shut down cleanly")),
        "{log:?}"
    );
}

#[test]
fn keel_idem_returns_the_first_reply_even_after_restart() {
    let t = tempdir();
    let dir = data_dir(&t);
    let srv = Server::start(&dir, &[]);
    let mut c = srv.raw();
    c.roundtrip(&resp(&["KEEL.IDEM", "req-1", "INCR", "counter"]), b":1\r\n");
    c.roundtrip(&resp(&["KEEL.IDEM", "req-1", "INCR", "counter"]), b":1\r\n");
    c.roundtrip(&resp(&["KEEL.IDEM", "req-2", "INCR", "counter"]), b":2\r\n");
    c.roundtrip(
        &resp(&["KEEL.IDEM", "req-3", "SET", "k", "v", "NX"]),
        b"+OK\r\n",
    );
    c.roundtrip(
        &resp(&["KEEL.IDEM", "req-4", "SET", "k", "w", "NX"]),
        b"$-1\r\n",
    );
    c.roundtrip(
        &resp(&["KEEL.IDEM", "req-5", "MSETNX", "k", "1"]),
        b":0\r\n",
    );
    c.roundtrip(
        &resp(&["KEEL.IDEM", "req-6", "PING"]),
        b"-ERR KEEL.IDEM wraps a string or key command, not 'ping'\r\n",
    );
    drop(c);
    srv.kill9();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.raw();
    c.roundtrip(&resp(&["KEEL.IDEM", "req-1", "INCR", "counter"]), b":1\r\n");
    c.roundtrip(&resp(&["KEEL.IDEM", "req-2", "INCR", "counter"]), b":2\r\n");
    c.roundtrip(
        &resp(&["KEEL.IDEM", "req-3", "SET", "k", "v", "NX"]),
        b"+OK\r\n",
    );
    c.roundtrip(
        &resp(&["KEEL.IDEM", "req-4", "SET", "k", "w", "NX"]),
        b"$-1\r\n",
    );
    c.roundtrip(&resp(&["GET", "counter"]), b"$1\r\n2\r\n");
    c.roundtrip(&resp(&["GET", "k"]), b"$1\r\nv\r\n");
}

#[test]
fn a_database_that_cannot_open_refuses_to_start() {
    let t = tempdir();
    let dir = data_dir(&t);
    let _first = Server::start(&dir, &[]);
    let Err((status, log)) = Server::try_start(&dir, &[]) else {
        panic!("a second server opened a locked database");
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("refuses to start") && l.contains("locked")),
        "{log:?}"
    );
    // A bad config file is refused too.
    let cfg = t.path().join("keel.toml");
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let Err((status, log)) = Server::try_start(&dir, &["--config", cfg.to_str().unwrap()]) else {
        panic!("bad config accepted");
    };
    assert_ne!(status.and_then(|s| s.code()), Some(0));
    assert!(log.iter().any(|l| l.contains("unknown field")), "{log:?}");
}

fn scrape(port: u16) -> String {
    let answer = common::http(port, b"GET /metrics HTTP/1.1\r\nHost: keel\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of one series (name and labels exactly as rendered) in a scrape.
fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in the scrape:\n{body}"))
        .parse()
        .unwrap()
}

/// Checks that every histogram in a scrape is cumulative and ends with +Inf = _count.
fn check_histograms(body: &str) {
    let mut last: Option<(String, f64)> = None;
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = l.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap();
        if let Some((name, _)) = series.split_once("_bucket{") {
            let group = format!("{name}{}", series.split("le=").next().unwrap());
            if let Some((g, prev)) = &last {
                if *g == group {
                    assert!(value >= *prev, "{series} not cumulative");
                }
            }
            last = Some((group, value));
            if series.contains("le=\"+Inf\"") {
                let labels = series
                    .split_once('{')
                    .unwrap()
                    .1
                    .split("le=")
                    .next()
                    .unwrap()
                    .trim_end_matches(',');
                let count = if labels.is_empty() {
                    format!("{name}_count")
                } else {
                    format!("{name}_count{{{labels}}}")
                };
                assert_eq!(metric(body, &count), value, "{count}");
            }
        }
    }
}

#[test]
fn metrics_endpoint_counts_commands_fsyncs_and_connections() {
    let t = tempdir();
    let srv = Server::start(
        &data_dir(&t),
        &["--metrics-port", "0", "--max-clients", "2"],
    );
    let port = common::metrics_port(&srv);
    let before = scrape(port);
    assert_eq!(metric(&before, "keel_commands_total{cmd=\"set\"}"), 0.0);
    check_histograms(&before);

    let mut c = srv.raw();
    for i in 0..25 {
        c.roundtrip(&resp(&["SET", &format!("k{i}"), "v"]), b"+OK\r\n");
    }
    for _ in 0..7 {
        c.roundtrip(&resp(&["GET", "k1"]), b"$1\r\nv\r\n");
    }
    c.roundtrip(&resp(&["INCR", "n"]), b":1\r\n");
    for name in ["FOO", "bar", "no.such"] {
        c.send(&resp(&[name]));
        let r = c.read_exact_len(6);
        assert_eq!(r, b"-ERR u", "{name}");
        let mut rest = Vec::new();
        while !rest.ends_with(b"\r\n") {
            rest.extend(c.read_exact_len(1));
        }
    }
    // A second client, and a third that max_clients refuses.
    let mut d = srv.raw();
    d.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
    assert_eq!(
        srv.raw().read_to_close(),
        b"-ERR max number of clients reached\r\n"
    );
    c.send(&resp(&["INFO", "persistence"]));
    let mut info = Vec::new();
    while !info.ends_with(b"\r\n\r\n") {
        info.extend(c.read_exact_len(1));
    }
    let info = String::from_utf8_lossy(&info).into_owned();
    let durable_lsn: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("durable_lsn:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let m = scrape(port);
    assert_eq!(metric(&m, "keel_commands_total{cmd=\"set\"}"), 25.0);
    assert_eq!(metric(&m, "keel_commands_total{cmd=\"get\"}"), 7.0);
    assert_eq!(metric(&m, "keel_commands_total{cmd=\"incr\"}"), 1.0);
    assert_eq!(metric(&m, "keel_commands_total{cmd=\"other\"}"), 3.0);
    assert_eq!(metric(&m, "keel_commands_total{cmd=\"info\"}"), 1.0);
    assert!(
        !m.contains("cmd=\"foo\"") && !m.contains("cmd=\"no.such\""),
        "unknown names get no label of their own"
    );
    assert!(metric(&m, "keel_command_duration_seconds_count{family=\"write\"}") >= 26.0);
    assert!(metric(&m, "keel_command_duration_seconds_count{family=\"read\"}") >= 7.0);
    let fsyncs = metric(&m, "keel_wal_fsyncs_total");
    assert!(fsyncs > 0.0, "{m}");
    assert_eq!(metric(&m, "keel_wal_fsync_duration_seconds_count"), fsyncs);
    assert!(metric(&m, "keel_wal_records_total") >= 26.0);
    assert!(metric(&m, "keel_wal_group_commit_records_mean") >= 1.0);
    assert_eq!(metric(&m, "keel_durable_lsn"), durable_lsn);
    assert!(durable_lsn >= 26.0, "{info}");
    assert_eq!(metric(&m, "keel_connections"), 2.0);
    assert_eq!(metric(&m, "keel_connections_total"), 3.0);
    assert_eq!(metric(&m, "keel_rejected_connections_total"), 1.0);
    check_histograms(&m);

    // Only /metrics is served; the endpoint answers and closes, and bad requests are bounded.
    let other = common::http(port, b"GET / HTTP/1.1\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    let other = common::http(port, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 405 "), "{other}");
    let other = common::http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 200 "), "{other}");
    let other = common::http(port, b"garbage\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 400 "), "{other}");
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 64 << 10));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = s.write_all(&huge);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A scraper that connects and says nothing holds up no one.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let m = scrape(port);
    assert_eq!(metric(&m, "keel_commands_total{cmd=\"set\"}"), 25.0);
    d.roundtrip(&resp(&["PING"]), b"+PONG\r\n");
}

/// Slow clients that send their commands a byte at a time hold up nobody and are answered
/// correctly once a command is complete; a client that stays idle past idle_timeout_secs is
/// disconnected.
#[test]
fn slow_clients_do_not_block_others_and_idle_clients_are_closed() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &["--idle-timeout-secs", "2"]);
    let mut slow: Vec<(Raw, Vec<u8>)> = (0..4)
        .map(|i| {
            let req = resp(&["SET", &format!("slow{i}"), &format!("patient{i}")]);
            (srv.raw(), req)
        })
        .collect();
    let mut other = srv.raw();
    let len = slow[0].1.len();
    for at in 0..len {
        for (c, req) in &mut slow {
            c.send(&req[at..at + 1]);
        }
        // Between two bytes of the slow requests, another client is served in full.
        other.roundtrip(&resp(&["INCR", "n"]), format!(":{}\r\n", at + 1).as_bytes());
        // Short enough that each whole request arrives well within the idle timeout.
        thread::sleep(Duration::from_millis(10));
    }
    for (i, (c, _)) in slow.iter_mut().enumerate() {
        assert_eq!(c.read_exact_len(5), b"+OK\r\n");
        let want = format!("$8\r\npatient{i}\r\n");
        c.roundtrip(&resp(&["GET", &format!("slow{i}")]), want.as_bytes());
    }
    // A client that says nothing is closed by the server (the read would otherwise wait for
    // the 60 s DEADLINE and fail).
    let mut idle = srv.raw();
    assert_eq!(idle.read_to_close(), b"");
    // The others were idle just as long, so they are gone too; a new client is served.
    srv.raw().roundtrip(
        &resp(&["GET", "n"]),
        format!("${}\r\n{len}\r\n", len.to_string().len()).as_bytes(),
    );
}

/// A slowloris: one byte every half second keeps a connection busy but never finishes a
/// request. The idle timeout bounds a whole request, not the gap between two bytes, so the
/// server closes it; the dribble alone would take a minute.
#[test]
fn a_request_dribbled_a_byte_at_a_time_is_cut_off_by_the_idle_timeout() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &["--idle-timeout-secs", "2"]);
    let req = resp(&["SET", "loris", &"z".repeat(90)]);
    assert!(
        req.len() >= 120,
        "{} bytes: a minute at two a second",
        req.len()
    );
    let mut c = srv.raw();
    c.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in &req {
        if c.s.write_all(std::slice::from_ref(b)).is_err() {
            closed = true;
            break;
        }
        // Waits half a second for the server to say something or close.
        let mut buf = [0u8; 64];
        match c.s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => panic!("unexpected reply {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(closed, "the dribbling client was never cut off");
    assert!(
        took < Duration::from_secs(10),
        "cut off only after {took:?}"
    );
    // Nothing of the request was applied, and others are served.
    srv.raw().roundtrip(&resp(&["EXISTS", "loris"]), b":0\r\n");
}

/// Resident memory of a process, from /proc/<pid>/status, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Sends `head`, then `chunk` over and over until `total` bytes are sent or the server stops
/// reading; returns the bytes sent and everything the server answered before closing.
fn flood(port: u16, head: &[u8], chunk: &[u8], total: usize) -> (usize, Vec<u8>) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(DEADLINE)).unwrap();
    let (head, chunk) = (head.to_vec(), chunk.to_vec());
    let writer = thread::spawn(move || {
        if w.write_all(&head).is_err() {
            return 0;
        }
        let mut sent = head.len();
        while sent < total {
            if w.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = (&s).read_to_end(&mut answer);
    // The server has closed; shut down our side too, so a writer blocked on a full socket
    // buffer fails at once instead of waiting for its timeout.
    let _ = s.shutdown(std::net::Shutdown::Both);
    (writer.join().unwrap(), answer)
}

/// A huge declared bulk is refused at its header, and requests that grow past
/// max_request_bytes are cut off, several at once: the server answers each with a protocol
/// error and closes it long before it has buffered the flood, its memory stays under a
/// generous bound throughout, and other clients are served. A long pipeline of valid requests,
/// larger in total than max_request_bytes, is simply served.
#[test]
fn floods_are_cut_off_and_memory_stays_bounded() {
    const RSS_BOUND_KIB: u64 = 512 << 10;
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let pid = srv.child.id();
    let port = srv.port;
    let mut bystander = srv.raw();
    bystander.roundtrip(&resp(&["SET", "b", "1"]), b"+OK\r\n");

    let junk = vec![b'x'; 64 << 10];
    let declared = 100_000_000;
    let (sent, answer) = flood(port, b"*1\r\n$100000000\r\n", &junk, declared + 32);
    assert!(
        answer.starts_with(b"-ERR Protocol error: invalid bulk length"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(sent < declared, "the server read all {sent} bytes");

    // Several clients at once, each streaming one request of 1 MiB arguments (each within
    // max_bulk_bytes) that grows past max_request_bytes (32 MiB).
    let mut bulk = b"$1048576\r\n".to_vec();
    bulk.extend(std::iter::repeat_n(b'y', 1 << 20));
    bulk.extend(b"\r\n");
    let total = 256 << 20;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(vm_rss_kib(pid));
                thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let bulk = bulk.clone();
            thread::spawn(move || flood(port, b"*1000\r\n", &bulk, total))
        })
        .collect();
    for f in flooders {
        let (sent, answer) = f.join().unwrap();
        assert!(
            answer.starts_with(b"-ERR Protocol error: request exceeds max_request_bytes"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(sent < total, "the server read all {sent} bytes");
        bystander.roundtrip(&resp(&["INCR", "b"]), b":2\r\n");
        bystander.roundtrip(&resp(&["DECR", "b"]), b":1\r\n");
    }

    // A valid pipeline of 48 MiB in 256 KiB values: more than max_request_bytes in total, but
    // each request is small, so all are served.
    let value = "v".repeat(256 << 10);
    let one = resp(&["SET", "big", &value]);
    let n = (48 << 20) / one.len();
    let mut c = srv.raw();
    let mut w = c.s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        for _ in 0..n {
            w.write_all(&one).unwrap();
        }
    });
    let replies = c.read_exact_len(5 * n);
    writer.join().unwrap();
    assert!(
        replies.chunks(5).all(|r| r == b"+OK\r\n") && replies.len() == 5 * n,
        "{}",
        String::from_utf8_lossy(&replies[..replies.len().min(200)])
    );
    c.roundtrip(
        &resp(&["STRLEN", "big"]),
        format!(":{}\r\n", 256 << 10).as_bytes(),
    );

    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(vm_rss_kib(pid));
    eprintln!("peak VmRSS during the floods: {} MiB", peak >> 10);
    assert!(peak < RSS_BOUND_KIB, "VmRSS reached {} MiB", peak >> 10);
    bystander.roundtrip(&resp(&["GET", "b"]), b"$1\r\n1\r\n");
    srv.raw().roundtrip(&resp(&["PING"]), b"+PONG\r\n");
}

#[test]
fn save_bgsave_lastsave_and_online_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    set_numbered(&mut c, "k", 100);
    let started: i64 = redis::cmd("LASTSAVE").query(&mut c).unwrap();
    let ok: String = redis::cmd("SAVE").query(&mut c).unwrap();
    assert_eq!(ok, "OK");
    assert!(data.join("MANIFEST").exists(), "SAVE wrote a checkpoint");
    let saved: i64 = redis::cmd("LASTSAVE").query(&mut c).unwrap();
    assert!(saved >= started);
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let started: String = redis::cmd("BGSAVE").query(&mut c).unwrap();
    assert_eq!(started, "Background saving started");

    // An online backup: a consistent copy that opens as a database of its own.
    let target = tmp.path().join("backup");
    let lsn: i64 = redis::cmd("KEEL.BACKUP")
        .arg(target.to_str().unwrap())
        .query(&mut c)
        .unwrap();
    assert_eq!(lsn, 101);
    let again: redis::RedisResult<i64> = redis::cmd("KEEL.BACKUP")
        .arg(target.to_str().unwrap())
        .query(&mut c);
    let err = again.unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    drop(c);
    srv.kill9();
    let copy = Server::start(&target, &[]);
    let mut c = copy.client();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 101);
    let v: String = redis::cmd("GET").arg("k42").query(&mut c).unwrap();
    assert_eq!(v, "42");
}

#[test]
fn a_weaker_sync_policy_from_the_config_file_is_reported_and_a_clean_stop_keeps_everything() {
    let tmp = tempdir();
    let conf = tmp.path().join("keel.toml");
    std::fs::write(&conf, "sync_policy = \"never\"\nretention_secs = 60\n").unwrap();
    let args = ["--config", conf.to_str().unwrap()];
    let srv = Server::start(&data_dir(&tmp), &args);
    let mut c = srv.client();
    let fsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query(&mut c)
        .unwrap();
    assert_eq!(fsync, ["appendfsync", "no"]);
    for i in 0..50 {
        let _: () = redis::cmd("SET").arg(i).arg(i).query(&mut c).unwrap();
    }
    drop(c);
    assert!(srv.sigterm().success());
    let srv = Server::start(&data_dir(&tmp), &args);
    let n: i64 = redis::cmd("DBSIZE").query(&mut srv.client()).unwrap();
    assert_eq!(n, 50, "shutdown syncs whatever the policy");
    std::fs::write(&conf, "sync_policy = \"sometimes\"\n").unwrap();
    drop(srv);
    let err = Server::try_start(&data_dir(&tmp), &args)
        .err()
        .expect("refused");
    assert!(err.1.join("\n").contains("sometimes"), "{:?}", err.1);
}

/// The scheduling policy of each of a process's threads, by thread name (Linux's
/// /proc/PID/task/TID/stat, field 41).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        out.push((comm.trim().to_string(), fields[41 - 3].parse().unwrap()));
    }
    out
}

/// The log's own threads run SCHED_BATCH (3), so that waking them does not preempt the thread
/// serving requests (BENCHMARKS.md: a third fewer syncs per SET); the request threads stay
/// SCHED_OTHER (0).
#[cfg(target_os = "linux")]
#[test]
fn log_threads_run_sched_batch_and_request_threads_do_not() {
    let t = tempdir();
    let srv = Server::start(&data_dir(&t), &[]);
    let mut c = srv.client();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let policies = thread_policies(srv.child.id());
    // The process starts with the policy of whoever runs the tests; from SCHED_IDLE, say, an
    // unprivileged thread may not move to SCHED_BATCH.
    if let Some((_, p)) = policies.iter().find(|(n, _)| n == "keel") {
        if *p != 0 {
            eprintln!("skipped: the tests run under scheduling policy {p}, not SCHED_OTHER");
            return;
        }
    }
    for name in ["keel-wal-io", "keel-wal-ack"] {
        let p: Vec<_> = policies.iter().filter(|(n, _)| n == name).collect();
        assert!(!p.is_empty(), "no thread {name}: {policies:?}");
        assert!(
            p.iter().all(|(_, p)| *p == 3),
            "{name} is not SCHED_BATCH: {policies:?}"
        );
    }
    let workers: Vec<_> = policies
        .iter()
        .filter(|(n, _)| n == "tokio-rt-worker")
        .collect();
    assert!(!workers.is_empty(), "no tokio worker: {policies:?}");
    assert!(workers.iter().all(|(_, p)| *p == 0), "{policies:?}");
}

/// `workers` (flag, environment or config file) sets the threads that serve connections:
/// INFO reports it and the process has that many; 0 is refused with the setting named.
#[cfg(target_os = "linux")]
#[test]
fn workers_set_the_threads_that_serve_connections() {
    let t = tempdir();
    let info_workers = |srv: &Server| {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut srv.client())
            .unwrap();
        let line = info.lines().find(|l| l.starts_with("workers:")).unwrap();
        let threads = thread_policies(srv.child.id())
            .iter()
            .filter(|(n, _)| n == "tokio-rt-worker")
            .count();
        (line.to_string(), threads)
    };
    // By default one per CPU, less one for the log's threads, at least one.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let want = cpus.saturating_sub(1).max(1);
    let srv = Server::start(&data_dir(&t), &[]);
    assert_eq!(info_workers(&srv), (format!("workers:{want}"), want));
    drop(srv);
    let srv = Server::start(&data_dir(&t), &["--workers", "2"]);
    assert_eq!(info_workers(&srv), ("workers:2".to_string(), 2));
    drop(srv);
    let conf = t.path().join("keel.toml");
    std::fs::write(&conf, "workers = 3\n").unwrap();
    let srv = Server::start(&data_dir(&t), &["--config", conf.to_str().unwrap()]);
    assert_eq!(info_workers(&srv), ("workers:3".to_string(), 3));
    drop(srv);
    let err = Server::try_start(&data_dir(&t), &["--workers", "0"])
        .err()
        .expect("refused");
    assert!(
        err.1.join("\n").contains("workers must be from 1 to"),
        "{:?}",
        err.1
    );
}
