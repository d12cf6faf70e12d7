//! Streams through a real `keel serve`: XADD's IDs, XRANGE and XREVRANGE, XDEL, XTRIM,
//! XSETID, XREAD with and without BLOCK, and every acknowledged XADD there after kill -9;
//! consumer groups (XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM, XAUTOCLAIM, XINFO) and their
//! pending entries after kill -9.

mod common;
use common::*;

use std::time::{Duration, Instant};

use redis::Value;

fn ids(v: &Value) -> Vec<String> {
    let Value::Array(entries) = v else {
        panic!("{v:?}")
    };
    entries
        .iter()
        .map(|e| match e {
            Value::Array(pair) => match &pair[0] {
                Value::BulkString(id) => String::from_utf8(id.clone()).unwrap(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn xadd_xrange_xdel_xtrim_and_xsetid() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.client();
    let add = |c: &mut redis::Connection, args: &[&str]| -> String {
        let mut all = vec!["XADD", "s"];
        all.extend_from_slice(args);
        query(c, &all)
    };
    assert_eq!(add(&mut c, &["1-1", "f", "v"]), "1-1");
    assert_eq!(add(&mut c, &["1-*", "f", "v"]), "1-2");
    assert_eq!(add(&mut c, &["5", "f", "v", "g", "w"]), "5-0");
    let auto = add(&mut c, &["*", "f", "v"]);
    let ms: u64 = auto.split('-').next().unwrap().parse().unwrap();
    assert!(ms > 1_700_000_000_000, "{auto}");
    assert!(error(&mut c, &["XADD", "s", "5-0", "f", "v"]).contains("equal or smaller"));
    assert!(error(&mut c, &["XADD", "z", "0-0", "f", "v"]).contains("greater than 0-0"));
    assert!(error(&mut c, &["XADD", "s", "*", "f"]).contains("wrong number of arguments"));
    assert!(error(&mut c, &["XADD", "s", "x-y", "f", "v"]).contains("Invalid stream ID"));
    let none: Option<String> = query(&mut c, &["XADD", "n", "NOMKSTREAM", "*", "f", "v"]);
    assert_eq!(none, None);
    assert_eq!(query::<i64>(&mut c, &["XLEN", "s"]), 4);

    let all: Value = query(&mut c, &["XRANGE", "s", "-", "+"]);
    assert_eq!(ids(&all), ["1-1", "1-2", "5-0", &auto]);
    let some: Value = query(&mut c, &["XRANGE", "s", "(1-1", "5", "COUNT", "5"]);
    assert_eq!(ids(&some), ["1-2", "5-0"]);
    let rev: Value = query(&mut c, &["XREVRANGE", "s", "+", "-", "COUNT", "2"]);
    assert_eq!(ids(&rev), [auto.as_str(), "5-0"]);
    let entry: Value = query(&mut c, &["XRANGE", "s", "5", "5"]);
    assert_eq!(
        entry,
        Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"5-0".to_vec()),
            Value::Array(
                ["f", "v", "g", "w"]
                    .map(|x| Value::BulkString(x.into()))
                    .to_vec()
            ),
        ])])
    );

    assert_eq!(query::<i64>(&mut c, &["XDEL", "s", "1-2", "1-2", "9-9"]), 1);
    assert_eq!(query::<i64>(&mut c, &["XTRIM", "s", "MAXLEN", "2"]), 1);
    assert_eq!(query::<i64>(&mut c, &["XLEN", "s"]), 2);
    // MAXLEN on XADD counts the new entry; a stream left empty stays a stream.
    add(&mut c, &["MAXLEN", "=", "1", "*", "f", "v"]);
    assert_eq!(query::<i64>(&mut c, &["XLEN", "s"]), 1);
    // Below the top entry: refused (an empty stream takes any ID, as in Redis).
    let e = error(&mut c, &["XSETID", "s", "5-0"]);
    assert!(e.contains("smaller than the target stream top item"), "{e}");
    // Below the greatest ID XDEL deleted (1-2): refused too.
    let e = error(&mut c, &["XSETID", "s", "1-1"]);
    assert!(e.contains("smaller than the max_deleted_entry_id"), "{e}");
    assert_eq!(
        query::<i64>(&mut c, &["XTRIM", "s", "MINID", "99999999999999"]),
        1
    );
    assert_eq!(query::<String>(&mut c, &["TYPE", "s"]), "stream");
    assert!(error(&mut c, &["XTRIM", "s", "MAXLEN", "1", "LIMIT", "5"])
        .contains("without the special ~"));
    query::<()>(&mut c, &["XSETID", "s", "99999999999999-5"]);
    assert!(
        error(&mut c, &["XADD", "s", "99999999999999-5", "f", "v"]).contains("equal or smaller")
    );
    assert!(error(&mut c, &["XSETID", "missing", "1-1"]).contains("no such key"));
    // XINFO STREAM: the metadata XSETID set, an empty stream's nil entries.
    let info: Vec<Value> = query(&mut c, &["XINFO", "STREAM", "s"]);
    let field = |name: &str| {
        let at = info
            .iter()
            .position(|v| v == &Value::BulkString(name.into()))
            .unwrap();
        info[at + 1].clone()
    };
    assert_eq!(field("length"), Value::Int(0));
    assert_eq!(
        field("last-generated-id"),
        Value::BulkString(b"99999999999999-5".to_vec())
    );
    assert_eq!(field("first-entry"), Value::Nil);
    let groups: Vec<Value> = query(&mut c, &["XINFO", "GROUPS", "s"]);
    assert!(groups.is_empty());
    assert!(error(&mut c, &["XINFO", "STREAM", "missing"]).contains("no such key"));
    assert!(error(
        &mut c,
        &[
            "XRANGE",
            "s",
            "(18446744073709551615-18446744073709551615",
            "+"
        ]
    )
    .contains("invalid start ID"));
    query::<()>(&mut c, &["SET", "str", "v"]);
    assert!(error(&mut c, &["XADD", "str", "*", "f", "v"]).contains("wrong kind of value"));
    assert!(error(&mut c, &["XLEN", "str"]).contains("wrong kind of value"));
}

#[test]
fn xread_returns_what_follows_and_block_waits_for_it() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(t.path(), &[]);
    let mut c = srv.client();
    query::<String>(&mut c, &["XADD", "a", "1-1", "f", "1"]);
    query::<String>(&mut c, &["XADD", "a", "2-1", "f", "2"]);
    query::<String>(&mut c, &["XADD", "b", "3-1", "f", "3"]);
    let mut r = srv.raw();
    r.send(&resp(&[
        "XREAD", "COUNT", "1", "STREAMS", "a", "b", "1-1", "0",
    ]));
    let got = String::from_utf8(read_reply(&mut r)).unwrap();
    assert_eq!(
        got,
        "*2\r\n*2\r\n$1\r\na\r\n*1\r\n*2\r\n$3\r\n2-1\r\n*2\r\n$1\r\nf\r\n$1\r\n2\r\n\
         *2\r\n$1\r\nb\r\n*1\r\n*2\r\n$3\r\n3-1\r\n*2\r\n$1\r\nf\r\n$1\r\n3\r\n"
    );
    r.cmd(&["XREAD", "STREAMS", "a", "$"], "*-1\r\n");
    r.cmd(&["XREAD", "BLOCK", "50", "STREAMS", "a", "$"], "*-1\r\n");
    assert!(error(&mut c, &["XREAD", "STREAMS", "a", "b", "0"]).contains("Unbalanced"));

    // BLOCK: `$` is the last ID when the wait begins; an XADD from another client wakes it.
    r.send(&resp(&["XREAD", "BLOCK", "0", "STREAMS", "a", "$"]));
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    query::<String>(&mut c, &["XADD", "a", "9-1", "new", "x"]);
    let got = String::from_utf8(read_reply(&mut r)).unwrap();
    assert!(got.contains("9-1") && got.contains("new"), "{got}");
    assert!(start.elapsed() < Duration::from_secs(5));

    // A key that becomes a list does not end the wait (Redis does not wake XREAD for it);
    // a stream there again does.
    r.send(&resp(&["XREAD", "BLOCK", "0", "STREAMS", "a", "$"]));
    std::thread::sleep(Duration::from_millis(100));
    query::<i64>(&mut c, &["DEL", "a"]);
    query::<i64>(&mut c, &["LPUSH", "a", "x"]);
    std::thread::sleep(Duration::from_millis(200));
    query::<i64>(&mut c, &["DEL", "a"]);
    query::<String>(&mut c, &["XADD", "a", "10-1", "back", "y"]);
    let got = String::from_utf8(read_reply(&mut r)).unwrap();
    assert!(got.contains("10-1") && got.contains("back"), "{got}");
}

#[test]
fn every_acknowledged_xadd_survives_kill_9_with_its_id() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    let mut acked = Vec::new();
    for i in 0..200 {
        let id: String = query(&mut c, &["XADD", "log", "*", "i", &i.to_string()]);
        acked.push(id);
    }
    // In a transaction and in a script too: the IDs are decided once and logged.
    let (): () = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("log")
        .arg("*")
        .arg("i")
        .arg("multi")
        .query(&mut c)
        .map(|_: Value| ())
        .unwrap();
    let from_script: String = redis::cmd("EVAL")
        .arg("return redis.call('XADD', KEYS[1], '*', 'i', 'script')")
        .arg(1)
        .arg("log")
        .query(&mut c)
        .unwrap();
    srv.kill9();
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    let all: Value = query(&mut c, &["XRANGE", "log", "-", "+"]);
    let got = ids(&all);
    assert_eq!(got.len(), 202);
    assert_eq!(&got[..200], &acked[..]);
    assert_eq!(got[201], from_script);
    // The stream's last ID came back: a new ID is still above every one before.
    let next: String = query(&mut c, &["XADD", "log", "*", "i", "after"]);
    let parse = |s: &str| -> (u64, u64) {
        let (a, b) = s.split_once('-').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert!(parse(&next) > parse(&got[201]));
}

#[test]
fn consumer_groups_deliver_acknowledge_claim_and_keep_their_pending_entries_across_kill_9() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    // Errors first: Redis's texts.
    assert!(error(&mut c, &["XGROUP", "CREATE", "jobs", "g", "$"])
        .contains("requires the key to exist"));
    let ok: String = query(&mut c, &["XGROUP", "CREATE", "jobs", "g", "$", "MKSTREAM"]);
    assert_eq!(ok, "OK");
    assert!(error(&mut c, &["XGROUP", "CREATE", "jobs", "g", "$"])
        .contains("Consumer Group name already exists"));
    assert!(error(
        &mut c,
        &["XREADGROUP", "GROUP", "nope", "a", "STREAMS", "jobs", ">"]
    )
    .contains("No such key 'jobs' or consumer group 'nope'"));
    assert!(error(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "a", "STREAMS", "jobs", "$"]
    )
    .contains("meaningless"));
    assert!(error(
        &mut c,
        &["XGROUP", "CREATE", "jobs", "h", "$", "ENTRIESREAD", "-3"]
    )
    .contains("must be positive or -1"));
    assert!(error(
        &mut c,
        &["XAUTOCLAIM", "jobs", "g", "a", "0", "0", "COUNT", "0"]
    )
    .contains("COUNT must be > 0"));
    assert!(error(&mut c, &["XACK", "jobs", "g", "1-1", "bad"]).contains("Invalid stream ID"));
    query::<()>(&mut c, &["SET", "str", "v"]);
    assert!(error(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "a", "STREAMS", "str", ">"]
    )
    .contains("WRONGTYPE"));

    for i in 1..=10 {
        query::<String>(
            &mut c,
            &["XADD", "jobs", &format!("{i}-0"), "n", &i.to_string()],
        );
    }
    // Alice takes 4, Bob the rest; Alice acknowledges two.
    let got: Value = query(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "alice",
            "COUNT",
            "4",
            "STREAMS",
            "jobs",
            ">",
        ],
    );
    let Value::Array(streams) = &got else {
        panic!("{got:?}")
    };
    let Value::Array(pair) = &streams[0] else {
        panic!("{got:?}")
    };
    assert_eq!(ids(&pair[1]), ["1-0", "2-0", "3-0", "4-0"]);
    let _: Value = query(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "bob", "STREAMS", "jobs", ">"],
    );
    let nothing: Value = query(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "bob", "STREAMS", "jobs", ">"],
    );
    assert_eq!(nothing, Value::Nil);
    let acked: i64 = query(&mut c, &["XACK", "jobs", "g", "1-0", "2-0", "2-0", "99-0"]);
    assert_eq!(acked, 2);
    // Bob claims one of Alice's; XAUTOCLAIM gives Carol the rest that are idle at all.
    let claimed: Value = query(
        &mut c,
        &["XCLAIM", "jobs", "g", "bob", "0", "3-0", "JUSTID"],
    );
    assert_eq!(
        claimed,
        Value::Array(vec![Value::BulkString(b"3-0".to_vec())])
    );
    let auto: Value = query(
        &mut c,
        &[
            "XAUTOCLAIM",
            "jobs",
            "g",
            "carol",
            "0",
            "0",
            "COUNT",
            "2",
            "JUSTID",
        ],
    );
    let Value::Array(parts) = &auto else {
        panic!("{auto:?}")
    };
    assert_eq!(
        parts[0],
        Value::BulkString(b"5-0".to_vec()),
        "the cursor: {auto:?}"
    );
    let summary: Value = query(&mut c, &["XPENDING", "jobs", "g"]);
    let before_kill = format!("{summary:?}");
    assert!(
        before_kill.contains("carol") && before_kill.contains("bob"),
        "{before_kill}"
    );
    let detail: Value = query(&mut c, &["XPENDING", "jobs", "g", "-", "+", "100"]);
    let pending_before = ids(&detail);
    assert_eq!(
        pending_before,
        ["3-0", "4-0", "5-0", "6-0", "7-0", "8-0", "9-0", "10-0"]
    );
    let groups: Value = query(&mut c, &["XINFO", "GROUPS", "jobs"]);
    let consumers: Value = query(&mut c, &["XINFO", "CONSUMERS", "jobs", "g"]);
    let text = format!("{groups:?} {consumers:?}");
    assert!(text.contains("10-0") && text.contains("alice"), "{text}");

    // Every acknowledgement and delivery was durable before its reply: after kill -9 the
    // same entries are pending with the same consumers and counts, none acknowledged is back.
    srv.kill9();
    let srv = Server::start(&data, &[]);
    let mut c = srv.client();
    let summary: Value = query(&mut c, &["XPENDING", "jobs", "g"]);
    assert_eq!(format!("{summary:?}"), before_kill);
    let detail: Value = query(&mut c, &["XPENDING", "jobs", "g", "-", "+", "100"]);
    assert_eq!(ids(&detail), pending_before);
    let again: Value = query(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "dave", "STREAMS", "jobs", ">"],
    );
    assert_eq!(again, Value::Nil, "the group's last ID came back too");
    // A blocked XREADGROUP is served by the next XADD, and answers NOGROUP once the group goes.
    let mut r = srv.raw();
    r.send(&resp(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "erin",
        "BLOCK",
        "0",
        "STREAMS",
        "jobs",
        ">",
    ]));
    std::thread::sleep(Duration::from_millis(100));
    query::<String>(&mut c, &["XADD", "jobs", "11-0", "n", "11"]);
    let got = String::from_utf8(read_reply(&mut r)).unwrap();
    assert!(got.contains("11-0"), "{got}");
    r.send(&resp(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "erin",
        "BLOCK",
        "0",
        "STREAMS",
        "jobs",
        ">",
    ]));
    std::thread::sleep(Duration::from_millis(100));
    let destroyed: i64 = query(&mut c, &["XGROUP", "DESTROY", "jobs", "g"]);
    assert_eq!(destroyed, 1);
    let got = String::from_utf8(read_reply(&mut r)).unwrap();
    assert!(got.starts_with("-NOGROUP"), "{got}");
}
