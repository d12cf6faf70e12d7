//! Scripts (EVAL, EVALSHA, SCRIPT) through a real `keel serve`: Redis's conversions, a script
//! as one durable transaction across kill -9, writes kept by a script that fails, SCRIPT KILL
//! and -BUSY, read-only scripts, and each call checked against the user's permissions.

mod common;
use std::time::{Duration, Instant};

use common::*;
use redis::Value;

fn eval<T: redis::FromRedisValue>(
    c: &mut redis::Connection,
    script: &str,
    keys: &[&str],
    argv: &[&str],
) -> T {
    let n = keys.len().to_string();
    let mut args = vec!["EVAL", script, &n];
    args.extend_from_slice(keys);
    args.extend_from_slice(argv);
    query(c, &args)
}

/// A command's error reply, exactly as sent (the `redis` crate rewrites some).
fn err(r: &mut Raw, args: &[&str]) -> String {
    r.send(&resp(args));
    let reply = String::from_utf8(read_reply(r)).unwrap();
    match reply.strip_prefix('-') {
        Some(e) => e.trim_end().to_string(),
        None => panic!("{args:?} answered {reply:?}, not an error"),
    }
}

fn eval_err(r: &mut Raw, script: &str) -> String {
    err(r, &["EVAL", script, "0"])
}

#[test]
fn eval_runs_commands_and_converts_replies_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let mut r = srv.raw();
    let ok: String = eval(
        &mut c,
        "return redis.call('SET', KEYS[1], ARGV[1])",
        &["k"],
        &["v"],
    );
    assert_eq!(ok, "OK");
    assert_eq!(query::<String>(&mut c, &["GET", "k"]), "v");
    // Each call sees the ones before it.
    let n: i64 = eval(
        &mut c,
        "redis.call('INCR', KEYS[1]); redis.call('INCRBY', KEYS[1], 10); return tonumber(redis.call('GET', KEYS[1]))",
        &["n"],
        &[],
    );
    assert_eq!(n, 11);
    // Numbers become integers (truncated), false and nil become nil, tables arrays up to the
    // first nil, and status and error tables replies of their own.
    let v: Value = eval(&mut c, "return {1, 2.9, 'x', false, nil, 5}", &[], &[]);
    assert_eq!(
        v,
        Value::Array(vec![
            Value::Int(1),
            Value::Int(2),
            Value::BulkString(b"x".to_vec()),
            Value::Nil
        ])
    );
    let v: Value = eval(&mut c, "return redis.status_reply('FINE')", &[], &[]);
    assert_eq!(v, Value::SimpleString("FINE".into()));
    assert_eq!(
        eval_err(&mut r, "return redis.error_reply('MINE went wrong')"),
        "MINE went wrong"
    );
    // Collections and reads of every kind.
    let _: i64 = eval(
        &mut c,
        "return redis.call('RPUSH', 'l', 'a', 'b', 'c')",
        &[],
        &[],
    );
    let l: Vec<String> = eval(&mut c, "return redis.call('LRANGE', 'l', 0, -1)", &[], &[]);
    assert_eq!(l, ["a", "b", "c"]);
    query::<()>(&mut c, &["SET", "e", "1", "EX", "100"]);
    let ttl: i64 = eval(&mut c, "return redis.call('TTL', 'e')", &[], &[]);
    assert!((99..=100).contains(&ttl), "{ttl}");
    // A failed call stops the script with the command's error; pcall catches it.
    let e = eval_err(&mut r, "return redis.call('GET', 'l')");
    assert!(e.starts_with("WRONGTYPE Operation against a key"), "{e}");
    let caught: String = eval(
        &mut c,
        "local r = redis.pcall('GET', 'l'); return r['err']",
        &[],
        &[],
    );
    assert!(caught.starts_with("WRONGTYPE"), "{caught}");
    // The sandbox.
    assert!(eval_err(&mut r, "x = 1").contains("Attempt to modify a readonly table"));
    assert!(eval_err(&mut r, "return undefined_name").contains("nonexistent global variable"));
    assert!(eval_err(&mut r, "return os.time()").contains("'os'"));
    assert!(
        eval_err(&mut r, "return redis.call('SUBSCRIBE', 'x')").contains("not allowed from script")
    );
    assert!(eval_err(&mut r, "return +").starts_with("ERR Error compiling script"));
    // Bad numbers of keys.
    assert_eq!(
        err(&mut r, &["EVAL", "return 1", "2", "a"]),
        "ERR Number of keys can't be greater than number of args"
    );
    assert_eq!(
        err(&mut r, &["EVAL", "return 1", "-1"]),
        "ERR Number of keys can't be negative"
    );
}

#[test]
fn script_load_evalsha_exists_and_flush() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let mut r = srv.raw();
    let sha: String = query(&mut c, &["SCRIPT", "LOAD", "return ARGV[1] .. '!'"]);
    assert_eq!(sha.len(), 40);
    assert_eq!(
        query::<String>(&mut c, &["EVALSHA", &sha, "0", "hi"]),
        "hi!"
    );
    assert_eq!(
        query::<String>(&mut c, &["EVALSHA", &sha.to_uppercase(), "0", "x"]),
        "x!"
    );
    assert_eq!(
        query::<Vec<i64>>(
            &mut c,
            &[
                "SCRIPT",
                "EXISTS",
                &sha,
                "0000000000000000000000000000000000000000"
            ]
        ),
        [1, 0]
    );
    // EVAL caches its script under the same name.
    let _: i64 = eval(&mut c, "return 7", &[], &[]);
    let seven: String = query(&mut c, &["SCRIPT", "LOAD", "return 7"]);
    assert_eq!(query::<i64>(&mut c, &["EVALSHA", &seven, "0"]), 7);
    query::<()>(&mut c, &["SCRIPT", "FLUSH"]);
    assert_eq!(
        err(&mut r, &["EVALSHA", &sha, "0"]),
        "NOSCRIPT No matching script. Please use EVAL."
    );
    assert_eq!(query::<Vec<i64>>(&mut c, &["SCRIPT", "EXISTS", &sha]), [0]);
}

/// Everything a script wrote is one log record: acknowledged, it survives kill -9 whole. A
/// script that fails after writing keeps what it wrote, as in Redis.
#[test]
fn a_script_is_one_durable_transaction() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    let n: i64 = eval(
        &mut c,
        "for i = 1, 100 do redis.call('SET', 'k' .. i, i) end; redis.call('HSET', 'h', 'f', 'v'); return 101",
        &[],
        &[],
    );
    assert_eq!(n, 101);
    let mut r = srv.raw();
    let e = eval_err(&mut r, "redis.call('SET', 'kept', '1'); error('boom')");
    assert!(e.contains("boom"), "{e}");
    srv.kill9();
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    for i in [1, 50, 100] {
        assert_eq!(
            query::<String>(&mut c, &["GET", &format!("k{i}")]),
            i.to_string()
        );
    }
    assert_eq!(query::<String>(&mut c, &["HGET", "h", "f"]), "v");
    assert_eq!(query::<String>(&mut c, &["GET", "kept"]), "1");
}

#[test]
fn read_only_scripts_and_permissions() {
    let t = tempfile::tempdir().unwrap();
    let sha = |pw: &str| hash_password(&[], pw).trim().to_string();
    let conf = t.path().join("keel.toml");
    std::fs::write(
        &conf,
        format!(
            "requirepass = \"pw-default-81\"\n\n[[users]]\nname = \"reader\"\npassword_sha256 = \"{}\"\npermissions = [\"read\"]\n",
            sha("pw-reader-82")
        ),
    )
    .unwrap();
    let srv = Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mut admin = srv.client();
    query::<()>(&mut admin, &["AUTH", "pw-default-81"]);
    let mut ra = srv.raw();
    ra.cmd(&["AUTH", "pw-default-81"], "+OK\r\n");
    query::<()>(&mut admin, &["SET", "k", "v"]);
    let e = err(
        &mut ra,
        &["EVAL_RO", "return redis.call('SET', 'k', 'x')", "0"],
    );
    assert!(
        e.starts_with("ERR Write commands are not allowed from read-only scripts"),
        "{e}"
    );
    let e = eval_err(
        &mut ra,
        "#!lua flags=no-writes\nreturn redis.call('DEL', 'k')",
    );
    assert!(
        e.starts_with("ERR Write commands are not allowed from read-only scripts"),
        "{e}"
    );
    assert_eq!(
        query::<String>(
            &mut admin,
            &["EVAL_RO", "return redis.call('GET', 'k')", "0"]
        ),
        "v"
    );

    let mut reader = srv.client();
    query::<()>(&mut reader, &["AUTH", "reader", "pw-reader-82"]);
    let mut rr = srv.raw();
    rr.cmd(&["AUTH", "reader", "pw-reader-82"], "+OK\r\n");
    assert_eq!(
        query::<String>(&mut reader, &["EVAL", "return redis.call('GET', 'k')", "0"]),
        "v"
    );
    // A script runs with its caller's permissions, call by call.
    let e = eval_err(&mut rr, "return redis.call('SET', 'k', 'mine')");
    assert!(e.starts_with("NOPERM"), "{e}");
    assert_eq!(query::<String>(&mut admin, &["GET", "k"]), "v");
}

/// A script past busy-reply-threshold makes other clients' commands -BUSY; SCRIPT KILL stops
/// one that has not written, and one that has written runs to its end.
/// A long script runs on the worker that read it. With one worker, the other connections are
/// served only because the script hands them to another thread: without that, PING below would
/// never be answered.
#[test]
fn busy_scripts_and_script_kill() {
    for workers in ["1", "2"] {
        busy_scripts_and_script_kill_with(workers);
    }
}

fn busy_scripts_and_script_kill_with(workers: &str) {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &["--workers", workers]);
    let mut c = srv.client();
    let mut r = srv.raw();
    query::<()>(&mut c, &["CONFIG", "SET", "busy-reply-threshold", "50"]);
    assert_eq!(
        err(&mut r, &["SCRIPT", "KILL"]),
        "NOTBUSY No scripts in execution right now."
    );
    let mut looping = srv.raw();
    looping.send(&resp(&["EVAL", "while true do end", "0"]));
    let started = Instant::now();
    let busy = loop {
        let e = match redis::cmd("PING").query::<Value>(&mut c) {
            Err(e) => e.to_string(),
            Ok(_) => {
                assert!(started.elapsed() < Duration::from_secs(30), "never busy");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        break e;
    };
    assert!(busy.contains("BUSY"), "{busy}");
    // FUNCTION STATS is served meanwhile, and names what runs.
    r.send(&resp(&["FUNCTION", "STATS"]));
    let stats = String::from_utf8(read_reply(&mut r)).unwrap();
    assert!(stats.contains("while true do end"), "{stats}");
    query::<()>(&mut c, &["SCRIPT", "KILL"]);
    let killed = String::from_utf8(read_reply(&mut looping)).unwrap();
    assert!(
        killed.starts_with("-ERR Script killed by user with SCRIPT KILL"),
        "{killed}"
    );
    assert_eq!(query::<String>(&mut c, &["PING"]), "PONG");

    // pcall does not catch SCRIPT KILL's error.
    looping.send(&resp(&[
        "EVAL",
        "while true do pcall(function() while true do end end) end",
        "0",
    ]));
    let started = Instant::now();
    loop {
        r.send(&resp(&["SCRIPT", "KILL"]));
        let reply = String::from_utf8(read_reply(&mut r)).unwrap();
        if reply == "+OK\r\n" {
            break;
        }
        assert!(reply.starts_with("-NOTBUSY"), "{reply}");
        assert!(started.elapsed() < Duration::from_secs(30), "never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = String::from_utf8(read_reply(&mut looping)).unwrap();
    assert!(killed.starts_with("-ERR Script killed by user"), "{killed}");

    // After a write, a script cannot be killed. A KILL that lands before the write kills it,
    // and nothing is written: then try again.
    let writes_then_loops = "redis.call('SET', 'w', '1'); local t = redis.call('TIME'); local s = tonumber(t[1]); while tonumber(redis.call('TIME')[1]) < s + 1 do end; return 'done'";
    let started = Instant::now();
    let unkillable = 'attempt: loop {
        looping.send(&resp(&["EVAL", writes_then_loops, "0"]));
        let reply = loop {
            r.send(&resp(&["SCRIPT", "KILL"]));
            let reply = String::from_utf8(read_reply(&mut r)).unwrap();
            if !reply.starts_with("-NOTBUSY") {
                break reply;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never ran");
            std::thread::sleep(Duration::from_millis(5));
        };
        if reply != "+OK\r\n" {
            break 'attempt reply;
        }
        let killed = String::from_utf8(read_reply(&mut looping)).unwrap();
        assert!(killed.starts_with("-ERR Script killed by user"), "{killed}");
        assert_eq!(query::<Option<String>>(&mut c, &["GET", "w"]), None);
    };
    assert!(unkillable.contains("UNKILLABLE"), "{unkillable}");
    assert_eq!(
        String::from_utf8(read_reply(&mut looping)).unwrap(),
        "$4\r\ndone\r\n"
    );
    assert_eq!(query::<String>(&mut c, &["GET", "w"]), "1");
}

const LIBRARY: &str = "#!lua name=mylib
local function set(keys, args) return redis.call('SET', keys[1], args[1]) end
redis.register_function('myset', set)
redis.register_function{function_name='myget', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}";

/// FUNCTION libraries are durable: they survive kill -9 and a checkpoint, DUMP and RESTORE
/// carry them, and FCALL runs them as EVAL runs a script.
#[test]
fn function_libraries_are_durable() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    let mut r = srv.raw();
    assert_eq!(
        query::<String>(&mut c, &["FUNCTION", "LOAD", LIBRARY]),
        "mylib"
    );
    assert_eq!(
        err(&mut r, &["FUNCTION", "LOAD", LIBRARY]),
        "ERR Library 'mylib' already exists"
    );
    assert_eq!(
        query::<String>(&mut c, &["FUNCTION", "LOAD", "REPLACE", LIBRARY]),
        "mylib"
    );
    assert_eq!(
        query::<String>(&mut c, &["FCALL", "myset", "1", "k", "v"]),
        "OK"
    );
    assert_eq!(
        query::<String>(&mut c, &["FCALL_RO", "myget", "1", "k"]),
        "v"
    );
    assert_eq!(
        err(&mut r, &["FCALL_RO", "myset", "1", "k", "x"]),
        "ERR Can not execute a script with write flag using *_ro command."
    );
    assert_eq!(
        err(&mut r, &["FCALL", "nosuch", "0"]),
        "ERR Function not found"
    );
    // A library that registers nothing, or a name taken by another library, changes nothing.
    assert_eq!(
        err(
            &mut r,
            &["FUNCTION", "LOAD", "#!lua name=empty\nlocal x = 1"]
        ),
        "ERR No functions registered"
    );
    let e = err(
        &mut r,
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=other\nredis.register_function('myset', function() return 1 end)",
        ],
    );
    assert_eq!(e, "ERR Function myset already exists");
    assert_eq!(
        err(&mut r, &["FUNCTION", "LOAD", "return 1"]),
        "ERR Missing library metadata"
    );
    let e = err(
        &mut r,
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=bad\nredis.call('SET', 'x', 1)",
        ],
    );
    assert!(e.starts_with("ERR Error registering functions"), "{e}");
    let dump: Vec<u8> = query(&mut c, &["FUNCTION", "DUMP"]);

    srv.kill9();
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    let mut r = srv.raw();
    assert_eq!(
        query::<String>(&mut c, &["FCALL", "myset", "1", "k", "after"]),
        "OK"
    );
    let listed: Value = query(
        &mut c,
        &["FUNCTION", "LIST", "LIBRARYNAME", "my*", "WITHCODE"],
    );
    let text = format!("{listed:?}");
    assert!(
        text.contains("myget") && text.contains("no-writes") && text.contains("register_function"),
        "{text}"
    );
    query::<()>(&mut c, &["FUNCTION", "FLUSH"]);
    assert_eq!(
        err(&mut r, &["FCALL", "myset", "1", "k", "v"]),
        "ERR Function not found"
    );
    let restore = |c: &mut redis::Connection, payload: &[u8], policy: Option<&str>| {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("RESTORE").arg(payload);
        if let Some(p) = policy {
            cmd.arg(p);
        }
        cmd.query::<()>(c).map_err(|e| e.to_string())
    };
    let mut bad = dump.clone();
    bad[10] ^= 1;
    let e = restore(&mut c, &bad, None).unwrap_err();
    assert!(e.contains("payload version or checksum are wrong"), "{e}");
    restore(&mut c, &dump, None).unwrap();
    let e = restore(&mut c, &dump, Some("APPEND")).unwrap_err();
    assert!(e.contains("Library mylib already exists"), "{e}");
    restore(&mut c, &dump, Some("REPLACE")).unwrap();
    // A checkpoint keeps them too.
    query::<()>(&mut c, &["SAVE"]);
    drop(c);
    assert!(srv.sigterm().success());
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<String>(&mut c, &["FCALL_RO", "myget", "1", "k"]),
        "after"
    );
    query::<()>(&mut c, &["FUNCTION", "DELETE", "mylib"]);
    let mut r = srv.raw();
    assert_eq!(
        err(&mut r, &["FUNCTION", "DELETE", "mylib"]),
        "ERR Library not found"
    );
}

/// A table that holds itself, returned or encoded as JSON, is cut off at Redis's depth with an
/// error instead of taking the server down (a stack overflow aborts the process).
#[test]
fn self_referencing_tables_end_in_an_error_not_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut r = srv.raw();
    r.send(&resp(&[
        "EVAL",
        "local a = {}; local b = {a}; a[1] = b; return a",
        "0",
    ]));
    let reply = String::from_utf8(read_reply(&mut r)).unwrap();
    assert!(reply.starts_with("*1\r\n*1\r\n"), "{}", &reply[..40]);
    assert!(
        reply.ends_with("-ERR reached lua stack limit\r\n"),
        "{}",
        &reply[reply.len() - 60..]
    );
    let e = eval_err(&mut r, "local a = {}; a[1] = a; return cjson.encode(a)");
    assert!(e.contains("excessive nesting"), "{e}");
    r.cmd(&["PING"], "+PONG\r\n");
}

/// EVAL and FCALL queued in MULTI run at EXEC with the other commands, in order, as one
/// record; WATCH holds for the whole, and a script's error is its own reply only.
#[test]
fn scripts_inside_multi_run_at_exec_as_one_transaction() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let srv = Server::start(&data, &[]);
    let mut r = srv.raw();
    let exec = |r: &mut Raw, cmds: &[&[&str]]| {
        r.cmd(&["MULTI"], "+OK\r\n");
        for c in cmds {
            r.cmd(c, "+QUEUED\r\n");
        }
        r.send(&resp(&["EXEC"]));
        String::from_utf8(read_reply(r)).unwrap()
    };
    let got = exec(
        &mut r,
        &[
            &["SET", "n", "1"],
            &["EVAL", "return redis.call('INCR', KEYS[1])", "1", "n"],
            &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
            &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "n"],
            &[
                "EVAL",
                "redis.call('SET', 'after', 'x'); error('boom')",
                "0",
            ],
            &["INCR", "n"],
        ],
    );
    let lines: Vec<&str> = got.split("\r\n").collect();
    assert_eq!(
        &lines[..4],
        [
            "*6",
            "+OK",
            ":2",
            "-NOSCRIPT No matching script. Please use EVAL."
        ]
    );
    assert_eq!(&lines[4..6], ["$1", "2"]);
    assert!(
        lines[6].starts_with("-") && lines[6].contains("boom"),
        "{got}"
    );
    assert_eq!(lines[7], ":3", "{got}");
    r.cmd(&["GET", "after"], "$1\r\nx\r\n");

    // WATCH: a key changed since holds the whole EXEC back, scripts included.
    r.cmd(&["WATCH", "n"], "+OK\r\n");
    query::<()>(&mut srv.client(), &["SET", "n", "100"]);
    let got = exec(
        &mut r,
        &[&["EVAL", "return redis.call('SET', 'w', '1')", "0"]],
    );
    assert_eq!(got, "*-1\r\n");
    r.cmd(&["EXISTS", "w"], ":0\r\n");

    // One record: after kill -9, all of it or none.
    let got = exec(
        &mut r,
        &[
            &["EVAL", "return redis.call('SET', 'a', '1')", "0"],
            &["SET", "b", "2"],
        ],
    );
    assert_eq!(got, "*2\r\n+OK\r\n+OK\r\n");
    srv.kill9();
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<Vec<String>>(&mut c, &["MGET", "a", "b", "after"]),
        ["1", "2", "x"]
    );
}

/// A library whose code never ends is stopped after Redis's 500 ms with its error, and the
/// next FUNCTION LOAD is served.
#[test]
fn an_endless_library_load_times_out() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut r = srv.raw();
    let e = err(
        &mut r,
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=lib\nlocal a = 1\nwhile 1 do a = a + 1 end",
        ],
    );
    assert!(e.contains("FUNCTION LOAD timeout"), "{e}");
    r.cmd(
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=lib\nredis.register_function('f', function() return 1 end)",
        ],
        "$3\r\nlib\r\n",
    );
    r.cmd(&["FCALL", "f", "0"], ":1\r\n");
}

/// Details scripts' users meet: an empty error reply is Redis's generic one, cjson's depth
/// limits, an unknown engine, and the cache size in INFO.
#[test]
fn error_replies_cjson_limits_engines_and_the_cache_size() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut r = srv.raw();
    r.cmd(&["EVAL", "return redis.error_reply('')", "0"], "-ERR\r\n");
    let e = eval_err(
        &mut r,
        "cjson.encode_max_depth(1); return cjson.encode({a = {1}})",
    );
    assert!(e.contains("excessive nesting"), "{e}");
    let e = eval_err(
        &mut r,
        "cjson.decode_max_depth(1); return cjson.decode('{\"a\": [1]}')",
    );
    assert!(e.contains("too many nested data structures"), "{e}");
    // The next script starts from the default limits.
    r.cmd(
        &["EVAL", "return cjson.encode({{1}, 2})", "0"],
        "$7\r\n[[1],2]\r\n",
    );
    // NaN and the infinities: refused, then written as lua-cjson writes them, or as null.
    let e = eval_err(&mut r, "return cjson.encode({0/0})");
    assert!(e.contains("must not be NaN or Inf"), "{e}");
    r.cmd(
        &[
            "EVAL",
            "cjson.encode_invalid_numbers(true) return cjson.encode({1/0, -1/0, 0/0, 1.5})",
            "0",
        ],
        "$18\r\n[inf,-inf,nan,1.5]\r\n",
    );
    r.cmd(
        &[
            "EVAL",
            "cjson.encode_invalid_numbers('null') return cjson.encode({x = 1/0})",
            "0",
        ],
        "$10\r\n{\"x\":null}\r\n",
    );
    let e = eval_err(&mut r, "return cjson.encode({1/0})");
    assert!(e.contains("must not be NaN or Inf"), "{e}");
    let e = eval_err(&mut r, "#!python\nreturn 1");
    assert!(e.contains("Unexpected engine in script shebang"), "{e}");
    let mut c = srv.client();
    let info: String = query(&mut c, &["INFO", "memory"]);
    assert!(info.contains("number_of_cached_scripts:8"), "{info}");
}

/// cmsgpack packs as Redis's lua_cmsgpack does, byte for byte, and reads back what it packs:
/// BullMQ-style scripts pass their options as MessagePack in ARGV.
#[test]
fn cmsgpack_packs_as_redis_does_and_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.client();
    let hex = "local s = cmsgpack.pack(...); local h = '' \
               for i = 1, #s do h = h .. string.format('%02x', s:byte(i)) end return h";
    let packed = |c: &mut redis::Connection, expr: &str| -> String {
        eval(
            c,
            &format!("return (function(...) {hex} end)({expr})"),
            &[],
            &[],
        )
    };
    assert_eq!(packed(&mut c, "0.1"), "cb3fb999999999999a");
    assert_eq!(packed(&mut c, "1.5"), "ca3fc00000");
    assert_eq!(packed(&mut c, "-1099511627776"), "d3ffffff0000000000");
    assert_eq!(packed(&mut c, "200"), "ccc8");
    assert_eq!(packed(&mut c, "-5, true, nil"), "fbc3c0");
    assert_eq!(packed(&mut c, "{1, 2}"), "920102");
    assert_eq!(packed(&mut c, "{a = 'x'}"), "81a161a178");
    let n: i64 = eval(
        &mut c,
        "local big = {} for i = 1, 70000 do big[i] = i end \
         local s = cmsgpack.pack({s = string.rep('x', 300), a = big, m = {k = {1.25, false}}}) \
         local v = cmsgpack.unpack(s) \
         assert(#v.s == 300 and #v.a == 70000 and v.a[70000] == 70000) \
         assert(v.m.k[1] == 1.25 and v.m.k[2] == false) \
         local two = cmsgpack.pack('a', 'bb') \
         local at, one = cmsgpack.unpack_one(two, 0) \
         assert(one == 'a' and at == 2) \
         local last, b = cmsgpack.unpack_limit(two, 1, at) \
         assert(b == 'bb' and last == -1) \
         local x = {y = 5} x.x = x \
         local r = cmsgpack.unpack(cmsgpack.pack(x)) \
         assert(r.x.x.x.y == 5) \
         return #s",
        &[],
        &[],
    );
    assert!(n > 70000);
    // MessagePack from a client, read by a script.
    let from_client = [0x82u8, 0xa1, b'n', 0x07, 0xa1, b't', 0x91, 0xa2, b'o', b'k'];
    let got: String = redis::cmd("EVAL")
        .arg("local o = cmsgpack.unpack(ARGV[1]) return o.t[1] .. o.n")
        .arg(0)
        .arg(&from_client[..])
        .query(&mut c)
        .unwrap();
    assert_eq!(got, "ok7");
    let mut r = srv.raw();
    let e = eval_err(&mut r, "cmsgpack.foo = 1");
    assert!(e.contains("Attempt to modify a readonly table"), "{e}");
    // 0xc1 is the one marker MessagePack never uses (Lua 5.1 escapes are decimal).
    let e = eval_err(&mut r, "return cmsgpack.unpack('\\193')");
    assert!(e.contains("Bad data format"), "{e}");
}

/// The `struct` library packs and unpacks binary data as Redis's does, and is read-only.
#[test]
fn struct_packs_and_unpacks_binary_data() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.client();
    let got: Vec<i64> = eval(
        &mut c,
        "return {struct.unpack('>I2i', struct.pack('>I2i', 258, -7))}",
        &[],
        &[],
    );
    assert_eq!(got, [258, -7, 7]);
    let size: i64 = eval(&mut c, "return struct.size('!4bi')", &[], &[]);
    assert_eq!(size, 8);
    // Through a key: what a script packs is stored as is.
    let _: () = eval(
        &mut c,
        "redis.call('SET', KEYS[1], struct.pack('<H', 0x4142))",
        &["packed"],
        &[],
    );
    let stored: String = query(&mut c, &["GET", "packed"]);
    assert_eq!(stored, "BA");
    let e = redis::cmd("EVAL")
        .arg("struct.pack = nil")
        .arg(0)
        .query::<redis::Value>(&mut c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("readonly table"), "{e}");
    let e = redis::cmd("EVAL")
        .arg("return struct.pack('q', 1)")
        .arg(0)
        .query::<redis::Value>(&mut c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid format option 'q'"), "{e}");
}
