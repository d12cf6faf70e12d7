//! COMMAND through `keel serve`, driven by the `redis` crate: GETKEYS and GETKEYSANDFLAGS, LIST
//! and its filters, and INFO's flags, categories and subcommands, as Redis 7.2 gives them.

mod common;
use common::*;

use redis::Value;

fn val<T: redis::FromRedisValue>(v: &Value) -> T {
    redis::from_redis_value(v.clone()).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn getkeys_finds_keys_fixed_and_movable() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let keys = |c: &mut redis::Connection, args: &[&str]| -> Vec<String> {
        query(c, &[&["COMMAND", "GETKEYS"], args].concat())
    };
    assert_eq!(keys(&mut c, &["GET", "key"]), strings(&["key"]));
    assert_eq!(
        keys(&mut c, &["lcs", "key1", "key2"]),
        strings(&["key1", "key2"])
    );
    assert_eq!(keys(&mut c, &["MEMORY", "USAGE", "key"]), strings(&["key"]));
    assert_eq!(
        keys(&mut c, &["MSET", "a", "1", "b", "2"]),
        strings(&["a", "b"])
    );
    // Keys whose positions the arguments decide.
    assert_eq!(
        keys(
            &mut c,
            &["ZUNIONSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]
        ),
        strings(&["dst", "a", "b"])
    );
    assert_eq!(
        keys(
            &mut c,
            &["BLMPOP", "0", "2", "l1", "l2", "LEFT", "COUNT", "3"]
        ),
        strings(&["l1", "l2"])
    );
    assert_eq!(
        keys(&mut c, &["SINTERCARD", "2", "s1", "s2", "LIMIT", "1"]),
        strings(&["s1", "s2"])
    );
    assert_eq!(
        keys(&mut c, &["SORT", "abc", "STORE", "invalid", "STORE", "def"]),
        strings(&["abc", "def"])
    );
    // A command that may have no keys: none is an answer.
    assert!(keys(&mut c, &["EVAL", "return 1", "0"]).is_empty());
    assert_eq!(
        keys(
            &mut c,
            &["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "$"]
        ),
        strings(&["s1", "s2"])
    );
    let mut many = vec!["ZUNIONSTORE".to_string(), "target".into(), "300".into()];
    many.extend((0..300).map(|i| format!("key{i}")));
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let got = keys(&mut c, &many);
    assert_eq!(got.len(), 301);
    assert_eq!((got[0].as_str(), got[300].as_str()), ("target", "key299"));

    // What each command does to each key.
    let flags: Vec<(String, Vec<String>)> = query(
        &mut c,
        &[
            "COMMAND",
            "GETKEYSANDFLAGS",
            "LMOVE",
            "k1",
            "k2",
            "LEFT",
            "RIGHT",
        ],
    );
    assert_eq!(
        flags,
        vec![
            ("k1".into(), strings(&["RW", "access", "delete"])),
            ("k2".into(), strings(&["RW", "insert"])),
        ]
    );
    let flags: Vec<(String, Vec<String>)> =
        query(&mut c, &["COMMAND", "GETKEYSANDFLAGS", "SET", "k1", "v1"]);
    assert_eq!(flags, vec![("k1".into(), strings(&["OW", "update"]))]);
    let flags: Vec<(String, Vec<String>)> = query(
        &mut c,
        &["COMMAND", "GETKEYSANDFLAGS", "SET", "k1", "v1", "GET"],
    );
    assert_eq!(
        flags,
        vec![("k1".into(), strings(&["RW", "access", "update"]))]
    );

    // Redis's errors.
    for (args, want) in [
        (&["NOSUCH", "x"][..], "Invalid command specified"),
        (&["PING"], "The command has no key arguments"),
        (
            &["GET", "a", "b"],
            "Invalid number of arguments specified for command",
        ),
        (
            &["ZUNIONSTORE", "dst", "5", "a"],
            "Invalid arguments specified for command",
        ),
    ] {
        let e = error(&mut c, &[&["COMMAND", "GETKEYS"], args].concat());
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

#[test]
fn list_filters_and_info_marks_movable_keys() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let list = |c: &mut redis::Connection, args: &[&str]| -> Vec<String> {
        query(c, &[&["COMMAND", "LIST"], args].concat())
    };
    let all = list(&mut c, &[]);
    for name in ["set", "client|setname", "config|get", "command|getkeys"] {
        assert!(all.contains(&name.to_string()), "{name}");
    }
    let count: i64 = query(&mut c, &["COMMAND", "COUNT"]);
    assert_eq!(
        count as usize,
        all.iter().filter(|n| !n.contains('|')).count()
    );
    assert_eq!(
        list(&mut c, &["FILTERBY", "PATTERN", "set"]),
        strings(&["set"])
    );
    let config = list(&mut c, &["FILTERBY", "PATTERN", "config*"]);
    assert!(config.contains(&"config".into()) && config.contains(&"config|get".into()));
    assert_eq!(
        list(&mut c, &["FILTERBY", "PATTERN", "config|*re*"]),
        strings(&["config|resetstat", "config|rewrite"])
    );
    assert!(list(&mut c, &["FILTERBY", "MODULE", "any"]).is_empty());
    assert!(list(&mut c, &["FILTERBY", "ACLCAT", "nosuch"]).is_empty());
    let blocking = list(&mut c, &["FILTERBY", "ACLCAT", "blocking"]);
    assert!(blocking.contains(&"blpop".into()) && !blocking.contains(&"lpop".into()));
    let sorted = list(&mut c, &["FILTERBY", "ACLCAT", "sortedset"]);
    assert!(sorted.contains(&"zadd".into()) && sorted.contains(&"sort".into()));
    for bad in [&["x"][..], &["FILTERBY", "x"], &["FILTERBY", "x", "y"]] {
        let e = error(&mut c, &[&["COMMAND", "LIST"], bad].concat());
        assert!(e.contains("syntax error"), "{bad:?}: {e}");
    }

    // INFO: flags (movablekeys where the arguments place the keys) and categories.
    let info = |c: &mut redis::Connection, name: &str| -> Vec<Value> {
        let mut all: Vec<Vec<Value>> = query(c, &["COMMAND", "INFO", name]);
        all.remove(0)
    };
    let words = |v: &Value| -> Vec<String> { val(v) };
    for name in ["ZUNIONSTORE", "SORT", "SORT_RO", "LMPOP", "ZUNION"] {
        assert!(
            words(&info(&mut c, name)[2]).contains(&"movablekeys".into()),
            "{name}"
        );
    }
    for name in [
        "SET",
        "GET",
        "MSET",
        "BITFIELD",
        "LMOVE",
        "MEMORY",
        "MEMORY|USAGE",
    ] {
        assert!(
            !words(&info(&mut c, name)[2]).contains(&"movablekeys".into()),
            "{name}"
        );
    }
    let get = info(&mut c, "get");
    assert_eq!(words(&get[2]), strings(&["readonly", "fast"]));
    assert_eq!(words(&get[6]), strings(&["@read", "@string", "@fast"]));
    // A command with subcommands lists them, each with its own arity, flags and keys.
    let memory = info(&mut c, "memory");
    let subs: Vec<Vec<Value>> = val(&memory[9]);
    let usage = subs
        .iter()
        .find(|s| val::<String>(&s[0]) == "memory|usage")
        .unwrap();
    let arity: i64 = val(&usage[1]);
    let first: i64 = val(&usage[3]);
    assert_eq!((arity, first), (-3, 2));
    let none: Vec<Option<Vec<Value>>> =
        query(&mut c, &["COMMAND", "INFO", "get|key", "config|get|key"]);
    assert_eq!(none, vec![None, None]);
}
