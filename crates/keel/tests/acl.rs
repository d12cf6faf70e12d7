//! ACL against a real `keel serve` with users from a config file: WHOAMI, USERS, LIST, GETUSER,
//! CAT, DRYRUN, GENPASS, HELP, the ACL log after refused commands and failed logins (never a
//! password in it), SETUSER, DELUSER, SAVE and LOAD refused, and MODULE's permissions.

mod common;

use common::*;
use redis::Value;

const DEFAULT_PW: &str = "default-pw-Kq27";
const READER_PW: &str = "reader-pw-Mv38";
const WRITER_PW: &str = "writer-pw-Hx94";
const BOSS_PW: &str = "boss-pw-Tn51";
/// Sent as a user name in a failed AUTH: a password typed in the wrong field.
const TYPED_AS_NAME: &str = "oops-this-is-a-password-Wd63";
const WRONG_PW: &str = "wrong-pw-Fz70";

fn sha(pw: &str) -> String {
    hash_password(&[], pw).trim().to_string()
}

fn start(t: &tempfile::TempDir) -> Server {
    let user = |name: &str, pw: &str, perms: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\npassword_sha256 = \"{}\"\npermissions = [{perms}]\n\n",
            sha(pw)
        )
    };
    let conf = t.path().join("keel.toml");
    let text = [
        format!("requirepass = \"{DEFAULT_PW}\"\n\n"),
        user("reader", READER_PW, "\"read\""),
        user("writer", WRITER_PW, "\"write\""),
        user("boss", BOSS_PW, "\"read\", \"write\", \"admin\""),
    ]
    .concat();
    std::fs::write(&conf, text).unwrap();
    Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    )
}

fn login(srv: &Server, user: &str, pw: &str) -> redis::Connection {
    let url = format!("redis://{user}:{pw}@127.0.0.1:{}/", srv.port);
    let c = redis::Client::open(url).unwrap().get_connection().unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    c
}

fn text(v: &Value) -> String {
    redis::from_redis_value(v.clone()).unwrap()
}

/// A map reply (a flat array in RESP2) as its fields, in order.
fn fields(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .map(|p| (text(&p[0]), p[1].clone()))
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), v.clone())).collect(),
        other => panic!("not a map: {other:?}"),
    }
}

fn field(v: &Value, name: &str) -> Value {
    (fields(v).into_iter())
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {v:?}"))
        .1
}

#[test]
fn acl_describes_the_configured_users() {
    let t = tempfile::tempdir().unwrap();
    let srv = start(&t);
    let mut boss = login(&srv, "boss", BOSS_PW);
    let mut reader = login(&srv, "reader", READER_PW);
    let mut writer = login(&srv, "writer", WRITER_PW);

    // WHOAMI needs no admin.
    assert_eq!(query::<String>(&mut boss, &["ACL", "WHOAMI"]), "boss");
    assert_eq!(query::<String>(&mut reader, &["ACL", "WHOAMI"]), "reader");

    let users: Vec<String> = query(&mut boss, &["ACL", "USERS"]);
    assert_eq!(users, ["boss", "default", "reader", "writer"]);

    let list: Vec<String> = query(&mut boss, &["ACL", "LIST"]);
    assert_eq!(list.len(), 4, "{list:?}");
    assert_eq!(
        list[1],
        format!(
            "user default on sanitize-payload #{} ~* &* +@all",
            sha(DEFAULT_PW)
        )
    );
    assert_eq!(
        list[0],
        format!(
            "user boss on sanitize-payload #{} ~* &* +@all",
            sha(BOSS_PW)
        )
    );
    let reader_line = format!(
        "user reader on sanitize-payload #{} %R~* &* -@all +@read +@connection +@transaction +@pubsub",
        sha(READER_PW)
    );
    assert!(list[2].starts_with(&reader_line), "{}", list[2]);
    assert!(list[3].contains(" %W~* &* -@all +@write "), "{}", list[3]);
    // A write-only user may not run what returns stored data, and the line says so.
    assert!(
        list[3].contains(" -incr ") && list[3].contains(" -getset "),
        "{}",
        list[3]
    );
    for pw in [DEFAULT_PW, READER_PW, WRITER_PW, BOSS_PW] {
        assert!(!list.iter().any(|l| l.contains(pw)), "{pw} in {list:?}");
    }

    let getuser: Value = query(&mut boss, &["ACL", "GETUSER", "reader"]);
    let names: Vec<String> = fields(&getuser).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "flags",
            "passwords",
            "commands",
            "keys",
            "channels",
            "selectors"
        ]
    );
    let flags: Vec<String> = redis::from_redis_value(field(&getuser, "flags")).unwrap();
    assert_eq!(flags, ["on", "sanitize-payload"]);
    let passwords: Vec<String> = redis::from_redis_value(field(&getuser, "passwords")).unwrap();
    assert_eq!(passwords, [sha(READER_PW)]);
    assert!(text(&field(&getuser, "commands")).starts_with("-@all +@read"));
    assert_eq!(text(&field(&getuser, "keys")), "%R~*");
    assert_eq!(text(&field(&getuser, "channels")), "&*");
    assert_eq!(field(&getuser, "selectors"), Value::Array(vec![]));
    assert_eq!(
        query::<Value>(&mut boss, &["ACL", "GETUSER", "nobody"]),
        Value::Nil
    );

    // CAT needs no admin; its lists come from the command table.
    let cats: Vec<String> = query(&mut reader, &["ACL", "CAT"]);
    assert!(cats.contains(&"read".into()) && cats.contains(&"dangerous".into()));
    let read: Vec<String> = query(&mut reader, &["ACL", "CAT", "read"]);
    assert!(read.contains(&"get".into()) && !read.contains(&"set".into()));
    let admin: Vec<String> = query(&mut boss, &["ACL", "CAT", "admin"]);
    assert!(admin.contains(&"acl|list".into()) && admin.contains(&"config|get".into()));
    assert!(error(&mut boss, &["ACL", "CAT", "nosuch"]).contains("Unknown category 'nosuch'"));

    // DRYRUN asks the check the pipeline uses, and runs nothing.
    let dry = |c: &mut redis::Connection, args: &[&str]| -> Value {
        query(c, &[&["ACL", "DRYRUN"], args].concat())
    };
    assert_eq!(dry(&mut boss, &["reader", "GET", "k"]), Value::Okay);
    assert_eq!(
        text(&dry(&mut boss, &["reader", "SET", "k", "v"])),
        "User reader has no permissions to run the 'set' command"
    );
    assert_eq!(dry(&mut boss, &["writer", "SET", "k", "v"]), Value::Okay);
    assert_eq!(
        text(&dry(&mut boss, &["writer", "SET", "k", "v", "GET"])),
        "User writer has no permissions to run the 'set' command"
    );
    assert_eq!(
        text(&dry(&mut boss, &["writer", "CONFIG", "GET", "port"])),
        "User writer has no permissions to run the 'config|get' command"
    );
    assert_eq!(query::<i64>(&mut boss, &["EXISTS", "k"]), 0);
    assert!(error(&mut boss, &["ACL", "DRYRUN", "nobody", "GET", "k"])
        .contains("User 'nobody' not found"));
    assert!(error(&mut boss, &["ACL", "DRYRUN", "reader", "NOSUCH"])
        .contains("Command 'NOSUCH' not found"));

    // What needs admin is refused to others, by name.
    for sub in ["LIST", "USERS", "LOG"] {
        let e = error(&mut reader, &["ACL", sub]);
        assert!(
            e.contains(&format!(
                "User reader has no permissions to run the 'acl|{}' command",
                sub.to_lowercase()
            )),
            "{e}"
        );
    }
    let e = error(&mut writer, &["ACL", "DRYRUN", "boss", "GET", "k"]);
    assert!(e.contains("'acl|dryrun'"), "{e}");

    // GENPASS: 256 random bits as hex, or as many bits as asked for.
    let p: String = query(&mut reader, &["ACL", "GENPASS"]);
    assert_eq!(p.len(), 64);
    assert!(p.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        query::<String>(&mut reader, &["ACL", "GENPASS", "10"]).len(),
        3
    );
    assert!(
        error(&mut reader, &["ACL", "GENPASS", "5000"]).contains("a positive number up to 4096")
    );

    let help: Vec<String> = query(&mut reader, &["ACL", "HELP"]);
    assert!(help[0].starts_with("ACL <subcommand>"), "{help:?}");
    assert!(help
        .iter()
        .any(|l| l.starts_with("DRYRUN username command")));
}

#[test]
fn the_acl_log_records_refusals_and_failed_logins_without_secrets() {
    let t = tempfile::tempdir().unwrap();
    let srv = start(&t);
    let mut boss = login(&srv, "boss", BOSS_PW);
    let mut reader = login(&srv, "reader", READER_PW);
    let mut writer = login(&srv, "writer", WRITER_PW);
    assert_eq!(
        query::<Value>(&mut boss, &["ACL", "LOG", "RESET"]),
        Value::Okay
    );
    assert_eq!(query::<Vec<Value>>(&mut boss, &["ACL", "LOG"]), vec![]);

    // A refused command, twice: one entry, counted twice.
    for _ in 0..2 {
        let e = error(&mut reader, &["SET", "k", "v"]);
        assert!(e.contains("no permissions"), "{e}");
    }
    // A refused command queued in MULTI.
    query::<Value>(&mut writer, &["MULTI"]);
    let e = error(&mut writer, &["GET", "k"]);
    assert!(e.contains("no permissions"), "{e}");
    query::<Value>(&mut writer, &["DISCARD"]);
    // Failed logins: a wrong password, a password typed as the user name, HELLO … AUTH.
    let mut raw = srv.raw();
    let wrongpass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
    raw.cmd(&["AUTH", "reader", WRONG_PW], wrongpass);
    raw.cmd(&["AUTH", TYPED_AS_NAME, WRONG_PW], wrongpass);
    raw.cmd(&["HELLO", "3", "AUTH", "writer", WRONG_PW], wrongpass);
    raw.cmd(&["AUTH", WRONG_PW], wrongpass);

    let log: Vec<Value> = query(&mut boss, &["ACL", "LOG"]);
    assert_eq!(log.len(), 6, "{log:?}");
    let names: Vec<String> = fields(&log[0]).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "count",
            "reason",
            "context",
            "object",
            "username",
            "age-seconds",
            "client-info",
            "entry-id",
            "timestamp-created",
            "timestamp-last-updated"
        ]
    );
    let summary: Vec<(i64, String, String, String, String)> = log
        .iter()
        .map(|e| {
            (
                redis::from_redis_value(field(e, "count")).unwrap(),
                text(&field(e, "reason")),
                text(&field(e, "context")),
                text(&field(e, "object")),
                text(&field(e, "username")),
            )
        })
        .collect();
    let row = |n: i64, r: &str, c: &str, o: &str, u: &str| {
        (
            n,
            r.to_string(),
            c.to_string(),
            o.to_string(),
            u.to_string(),
        )
    };
    assert_eq!(
        summary,
        [
            row(1, "auth", "toplevel", "AUTH", "default"),
            row(1, "auth", "toplevel", "AUTH", "writer"),
            row(1, "auth", "toplevel", "AUTH", "(unknown)"),
            row(1, "auth", "toplevel", "AUTH", "reader"),
            row(1, "command", "multi", "get", "writer"),
            row(2, "command", "toplevel", "set", "reader"),
        ]
    );
    let info = text(&field(&log[4], "client-info"));
    assert!(
        info.contains("cmd=get") && info.contains("user=writer"),
        "{info}"
    );
    let ids: Vec<i64> = (log.iter())
        .map(|e| redis::from_redis_value(field(e, "entry-id")).unwrap())
        .collect();
    assert_eq!(ids, [5, 4, 3, 2, 1, 0]);
    let created: i64 = redis::from_redis_value(field(&log[5], "timestamp-created")).unwrap();
    let updated: i64 = redis::from_redis_value(field(&log[5], "timestamp-last-updated")).unwrap();
    assert!(created > 1_600_000_000_000 && updated >= created);

    // No password and no mistyped name, anywhere in the log.
    let all = format!("{log:?}");
    for secret in [
        WRONG_PW,
        TYPED_AS_NAME,
        READER_PW,
        WRITER_PW,
        BOSS_PW,
        DEFAULT_PW,
    ] {
        assert!(!all.contains(secret), "{secret} in the ACL log: {all}");
    }

    assert_eq!(
        query::<Vec<Value>>(&mut boss, &["ACL", "LOG", "2"]).len(),
        2
    );
    assert_eq!(
        query::<Value>(&mut boss, &["ACL", "LOG", "RESET"]),
        Value::Okay
    );
    assert_eq!(query::<Vec<Value>>(&mut boss, &["ACL", "LOG"]), vec![]);
}

#[test]
fn changing_users_is_refused_and_never_logged_in_clear() {
    let t = tempfile::tempdir().unwrap();
    let srv = start(&t);
    let mut boss = login(&srv, "boss", BOSS_PW);
    query::<Value>(
        &mut boss,
        &["CONFIG", "SET", "slowlog-log-slower-than", "0"],
    );
    let e = error(
        &mut boss,
        &["ACL", "SETUSER", "eve", "on", ">eve-secret-Pq12", "+@all"],
    );
    assert!(
        e.contains("ACL SETUSER is not served") && e.contains("config file"),
        "{e}"
    );
    for args in [
        &["ACL", "DELUSER", "reader"][..],
        &["ACL", "SAVE"],
        &["ACL", "LOAD"],
    ] {
        let e = error(&mut boss, args);
        assert!(
            e.contains("is not served") && e.contains("restart keel"),
            "{e}"
        );
    }
    // Nothing changed.
    let users: Vec<String> = query(&mut boss, &["ACL", "USERS"]);
    assert_eq!(users, ["boss", "default", "reader", "writer"]);
    // The slow log holds SETUSER's arguments redacted.
    let slow: Value = query(&mut boss, &["SLOWLOG", "GET", "-1"]);
    let shown = format!("{slow:?}");
    assert!(!shown.contains("eve-secret"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    // Others are refused before the reason is given.
    let mut reader = login(&srv, "reader", READER_PW);
    let e = error(&mut reader, &["ACL", "SETUSER", "eve"]);
    assert!(e.contains("'acl|setuser'"), "{e}");
}

/// MODULE: keel loads no modules. LIST says so (dashboards and client libraries ask it), LOAD
/// and LOADEX are refused with the reason, and only HELP is open to users without admin.
#[test]
fn module_lists_no_module_and_refuses_to_load_one() {
    let t = tempfile::tempdir().unwrap();
    let srv = start(&t);
    let mut boss = login(&srv, "boss", BOSS_PW);
    let loaded: Vec<Value> = query(&mut boss, &["MODULE", "LIST"]);
    assert!(loaded.is_empty(), "{loaded:?}");
    for args in [
        &["MODULE", "LOAD", "/tmp/rejson.so"][..],
        &["MODULE", "LOADEX", "/tmp/rejson.so", "ARGS", "x"],
    ] {
        let e = error(&mut boss, args);
        assert!(e.contains("cannot load Redis modules"), "{e}");
    }
    let e = error(&mut boss, &["MODULE", "UNLOAD", "ReJSON"]);
    assert!(e.contains("no such module"), "{e}");
    let e = error(&mut boss, &["MODULE", "LIST", "extra"]);
    assert!(
        e.contains("wrong number of arguments for 'module|list'"),
        "{e}"
    );
    let e = error(&mut boss, &["MODULE", "NOSUCH"]);
    assert!(e.contains("unknown subcommand"), "{e}");
    let loaded: Vec<Value> = query(&mut boss, &["MODULE", "LIST"]);
    assert!(loaded.is_empty(), "{loaded:?}");

    let mut reader = login(&srv, "reader", READER_PW);
    let help: Vec<String> = query(&mut reader, &["MODULE", "HELP"]);
    assert!(help[0].starts_with("MODULE <subcommand>"), "{help:?}");
    assert!(help.iter().any(|l| l == "LIST"), "{help:?}");
    let e = error(&mut reader, &["MODULE", "LIST"]);
    assert!(
        e.contains("no permissions") && e.contains("'module|list'"),
        "{e}"
    );
}
