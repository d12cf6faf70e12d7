//! Keyspace notifications through `keel serve`: `notify-keyspace-events` from CONFIG SET and
//! the config file, the events of single commands, MULTI/EXEC and scripts as Redis names them,
//! `new` and `expired` events, and masking by class.

mod common;
use common::*;

/// A client subscribed to every keyspace and keyevent channel.
fn subscriber(srv: &Server) -> Raw {
    let mut c = srv.raw();
    c.send(&resp(&["PSUBSCRIBE", "__key*@0__:*"]));
    read_reply(&mut c);
    c
}

/// The next notification, as "channel message".
fn next(sub: &mut Raw) -> String {
    let push = String::from_utf8(read_reply(sub)).unwrap();
    // *4 $8 pmessage $n pattern $n channel $n message
    let lines: Vec<&str> = push.split("\r\n").collect();
    assert_eq!(lines.get(2), Some(&"pmessage"), "{push:?}");
    format!("{} {}", lines[6], lines[8])
}

/// The next `n` notifications.
fn take(sub: &mut Raw, n: usize) -> Vec<String> {
    (0..n).map(|_| next(sub)).collect()
}

/// Keyevent notifications only (`E` plus `classes`): one message per event, "event key".
fn events(sub: &mut Raw, n: usize) -> Vec<String> {
    take(sub, n)
        .into_iter()
        .map(|m| m.strip_prefix("__keyevent@0__:").expect(&m).to_string())
        .collect()
}

#[test]
fn writes_publish_their_events_once_durable() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.client();
    let set = |c: &mut redis::Connection, flags: &str| {
        let ok: String = query(c, &["CONFIG", "SET", "notify-keyspace-events", flags]);
        assert_eq!(ok, "OK");
    };
    // Off by default.
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "notify-keyspace-events"]);
    assert_eq!(got, ["notify-keyspace-events", ""]);
    set(&mut c, "KEA");
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "notify-keyspace-events"]);
    assert_eq!(got[1], "AKE");
    let mut sub = subscriber(&srv);

    // Both channels, keyspace first.
    let _: () = query(&mut c, &["SET", "foo", "bar"]);
    assert_eq!(
        take(&mut sub, 2),
        ["__keyspace@0__:foo set", "__keyevent@0__:set foo"]
    );

    set(&mut c, "EA");
    let _: () = query(&mut c, &["SET", "foo", "bar", "EX", "100"]);
    assert_eq!(events(&mut sub, 2), ["set foo", "expire foo"]);
    // A write that changes nothing reports nothing: the next event is the RPUSH's.
    let _: i64 = query(&mut c, &["SETNX", "foo", "x"]);
    let _: i64 = query(&mut c, &["RPUSH", "l", "a"]);
    let _: String = query(&mut c, &["RPOP", "l"]);
    assert_eq!(events(&mut sub, 3), ["rpush l", "rpop l", "del l"]);
    // An expiry in the past deletes: only `del`.
    let _: i64 = query(&mut c, &["EXPIRE", "foo", "-1"]);
    assert_eq!(events(&mut sub, 1), ["del foo"]);
    let _: () = query(&mut c, &["SET", "a", "1"]);
    let _: () = query(&mut c, &["RENAME", "a", "b"]);
    assert_eq!(
        events(&mut sub, 3),
        ["set a", "rename_from a", "rename_to b"]
    );

    // MULTI/EXEC: each command's events, in order, after the one record is durable.
    let (): () = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("n")
        .cmd("GET")
        .arg("n")
        .cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .map(|_: redis::Value| ())
        .unwrap();
    assert_eq!(events(&mut sub, 2), ["incrby n", "hset h"]);

    // A script: each call's events.
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('sadd', KEYS[1], 'x', 'y'); redis.call('srem', KEYS[1], 'x', 'y')")
        .arg(1)
        .arg("s")
        .query(&mut c)
        .unwrap();
    assert_eq!(events(&mut sub, 3), ["sadd s", "srem s", "del s"]);

    // Masking by class: only lists.
    set(&mut c, "El");
    let _: () = query(&mut c, &["SET", "foo", "bar"]);
    let _: i64 = query(&mut c, &["LPUSH", "l", "a", "b"]);
    let _: String = query(&mut c, &["LMOVE", "l", "m", "LEFT", "RIGHT"]);
    assert_eq!(events(&mut sub, 3), ["lpush l", "lpop l", "rpush m"]);

    // New keys: once per key, not on overwrite.
    set(&mut c, "En");
    let _: () = query(&mut c, &["SET", "k1", "x"]);
    let _: () = query(&mut c, &["SET", "k1", "y"]);
    let _: () = query(&mut c, &["SET", "k2", "x"]);
    assert_eq!(events(&mut sub, 2), ["new k1", "new k2"]);

    // Expired keys, from active expiry.
    set(&mut c, "Ex");
    let _: () = query(&mut c, &["PSETEX", "gone", "50", "v"]);
    assert_eq!(events(&mut sub, 1), ["expired gone"]);

    // Off: nothing, then on again for one last event that must come next.
    set(&mut c, "");
    let _: () = query(&mut c, &["SET", "quiet", "x"]);
    set(&mut c, "Eg");
    let _: i64 = query(&mut c, &["DEL", "quiet"]);
    assert_eq!(events(&mut sub, 1), ["del quiet"]);

    let e = error(&mut c, &["CONFIG", "SET", "notify-keyspace-events", "KEq"]);
    assert!(e.contains("Invalid event class character"), "{e}");
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "notify-keyspace-events"]);
    assert_eq!(got[1], "gE", "a refused value changes nothing");
}

#[test]
fn the_config_file_sets_the_events_and_a_bad_value_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let conf = t.path().join("keel.toml");
    std::fs::write(&conf, "notify_keyspace_events = \"Kg$\"\n").unwrap();
    let srv = Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mut c = srv.client();
    let got: Vec<String> = query(&mut c, &["CONFIG", "GET", "notify-keyspace-events"]);
    assert_eq!(got[1], "g$K");
    let mut sub = subscriber(&srv);
    let _: i64 = query(&mut c, &["INCRBY", "n", "5"]);
    assert_eq!(take(&mut sub, 1), ["__keyspace@0__:n incrby"]);
    drop(srv);

    std::fs::write(&conf, "notify_keyspace_events = \"KEX\"\n").unwrap();
    let Err((_, log)) = Server::try_start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    ) else {
        panic!("a bad notify_keyspace_events was accepted");
    };
    let log = log.join("\n");
    assert!(
        log.contains("notify_keyspace_events") && log.contains("Invalid event class"),
        "{log}"
    );
}

/// PUBLISH from a script counts the subscribers and sends once the script is durable.
#[test]
fn a_script_publishes_once_durable() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut sub = srv.raw();
    sub.send(&resp(&["SUBSCRIBE", "chan"]));
    read_reply(&mut sub);
    let mut c = srv.client();
    let n: i64 = redis::cmd("EVAL")
        .arg("redis.call('set', KEYS[1], 'v'); return redis.call('publish', 'chan', 'm')")
        .arg(1)
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let push = String::from_utf8(read_reply(&mut sub)).unwrap();
    assert_eq!(push, "*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$1\r\nm\r\n");
    let e = error(
        &mut c,
        &["EVAL_RO", "return redis.call('publish', 'chan', 'm')", "0"],
    );
    assert!(e.contains("not allowed from read-only scripts"), "{e}");
}
