//! Bitmaps, byte ranges and the generic COPY, TOUCH and RANDOMKEY through `keel serve`, driven
//! by the `redis` crate, and killed with -9. No assertion depends on timing.

use std::collections::HashSet;

mod common;
use common::*;

fn wal_bytes_written(c: &mut redis::Connection) -> u64 {
    let info: String = query(c, &["INFO", "persistence"]);
    info.lines()
        .find_map(|l| l.strip_prefix("wal_bytes_written:"))
        .expect("INFO persistence has wal_bytes_written")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn bitmap_and_byte_range_commands_answer_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    // SETBIT grows the string with zero bytes; bit 0 is the high bit of byte 0.
    assert_eq!(query::<i64>(&mut c, &["SETBIT", "b", "7", "1"]), 0);
    assert_eq!(query::<i64>(&mut c, &["SETBIT", "b", "7", "1"]), 1);
    assert_eq!(query::<i64>(&mut c, &["SETBIT", "b", "17", "1"]), 0);
    assert_eq!(
        query::<Vec<u8>>(&mut c, &["GET", "b"]),
        vec![0x01, 0x00, 0x40]
    );
    assert_eq!(query::<i64>(&mut c, &["GETBIT", "b", "17"]), 1);
    assert_eq!(query::<i64>(&mut c, &["GETBIT", "b", "1000"]), 0);
    assert!(error(&mut c, &["SETBIT", "b", "-1", "1"]).contains("bit offset"));
    assert!(error(&mut c, &["SETBIT", "b", "4294967296", "1"]).contains("bit offset"));
    assert!(error(&mut c, &["SETBIT", "b", "1", "2"]).contains("bit is not an integer"));
    assert_eq!(query::<i64>(&mut c, &["BITCOUNT", "b"]), 2);
    assert_eq!(query::<i64>(&mut c, &["BITCOUNT", "b", "1", "-1"]), 1);
    assert_eq!(
        query::<i64>(&mut c, &["BITCOUNT", "b", "8", "23", "BIT"]),
        1
    );
    assert_eq!(query::<i64>(&mut c, &["BITPOS", "b", "1"]), 7);
    assert_eq!(query::<i64>(&mut c, &["BITPOS", "b", "1", "1"]), 17);
    assert_eq!(query::<i64>(&mut c, &["BITPOS", "nothing", "0"]), 0);
    // BITOP: shorter inputs are zero-padded; an empty result deletes the destination.
    query::<()>(&mut c, &["SET", "x", "\u{7f}\u{7f}"]);
    assert_eq!(query::<i64>(&mut c, &["BITOP", "AND", "and", "b", "x"]), 3);
    assert_eq!(
        query::<Vec<u8>>(&mut c, &["GET", "and"]),
        vec![0x01, 0x00, 0x00]
    );
    assert_eq!(query::<i64>(&mut c, &["BITOP", "NOT", "not", "x"]), 2);
    assert_eq!(query::<Vec<u8>>(&mut c, &["GET", "not"]), vec![0x80, 0x80]);
    assert_eq!(query::<i64>(&mut c, &["BITOP", "OR", "and", "missing"]), 0);
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "and"]), 0);
    assert!(error(&mut c, &["BITOP", "NOT", "d", "x", "b"]).contains("single source key"));
    // BITFIELD: fields of any width, the three overflow rules, #n offsets.
    assert_eq!(
        query::<Vec<Option<i64>>>(
            &mut c,
            &[
                "BITFIELD", "f", "SET", "u8", "#0", "250", "INCRBY", "u8", "#0", "10", "OVERFLOW",
                "SAT", "INCRBY", "u8", "#0", "300", "OVERFLOW", "FAIL", "INCRBY", "i4", "8", "8",
                "GET", "i4", "8"
            ]
        ),
        vec![Some(0), Some(4), Some(255), None, Some(0)]
    );
    assert_eq!(
        query::<Vec<i64>>(&mut c, &["BITFIELD_RO", "f", "GET", "u8", "0"]),
        vec![255]
    );
    assert!(error(&mut c, &["BITFIELD_RO", "f", "SET", "u8", "0", "1"])
        .contains("only supports the GET"));
    assert!(error(&mut c, &["BITFIELD", "f", "GET", "u64", "0"]).contains("Invalid bitfield type"));
    // SETRANGE keeps the expiry; SUBSTR is GETRANGE; LCS finds the common subsequence.
    query::<()>(&mut c, &["SET", "s", "Hello World", "EX", "1000"]);
    assert_eq!(query::<i64>(&mut c, &["SETRANGE", "s", "6", "Redis"]), 11);
    assert_eq!(query::<i64>(&mut c, &["SETRANGE", "pad", "3", "x"]), 4);
    assert_eq!(
        query::<Vec<u8>>(&mut c, &["GET", "pad"]),
        b"\0\0\0x".to_vec()
    );
    assert_eq!(query::<i64>(&mut c, &["SETRANGE", "empty", "5", ""]), 0);
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "empty"]), 0);
    assert!(error(&mut c, &["SETRANGE", "s", "-1", "x"]).contains("out of range"));
    assert!(
        error(&mut c, &["SETRANGE", "s", "9223372036854775807", "x"])
            .contains("maximum allowed size")
    );
    assert_eq!(
        query::<String>(&mut c, &["SUBSTR", "s", "-5", "-1"]),
        "Redis"
    );
    query::<()>(&mut c, &["MSET", "k1", "ohmytext", "k2", "mynewtext"]);
    assert_eq!(query::<String>(&mut c, &["LCS", "k1", "k2"]), "mytext");
    assert_eq!(query::<i64>(&mut c, &["LCS", "k1", "k2", "LEN"]), 6);
    let idx: redis::Value = query(
        &mut c,
        &["LCS", "k1", "k2", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"],
    );
    assert_eq!(
        format!("{idx:?}"),
        format!(
            "{:?}",
            redis::Value::Array(vec![
                redis::Value::BulkString(b"matches".to_vec()),
                redis::Value::Array(vec![redis::Value::Array(vec![
                    redis::Value::Array(vec![redis::Value::Int(4), redis::Value::Int(7)]),
                    redis::Value::Array(vec![redis::Value::Int(5), redis::Value::Int(8)]),
                    redis::Value::Int(4),
                ])]),
                redis::Value::BulkString(b"len".to_vec()),
                redis::Value::Int(6),
            ])
        )
    );
    // WRONGTYPE, and nothing changed.
    query::<i64>(&mut c, &["RPUSH", "list", "a"]);
    let wrong = "\"WRONGTYPE\": Operation against a key holding the wrong kind of value";
    assert_eq!(error(&mut c, &["SETBIT", "list", "1", "1"]), wrong);
    assert_eq!(error(&mut c, &["SETRANGE", "list", "1", "x"]), wrong);
    assert_eq!(error(&mut c, &["BITOP", "OR", "d", "list"]), wrong);
    assert!(error(&mut c, &["LCS", "list", "s"]).contains("must contain string values"));
    // COPY of every type, with its expiry; REPLACE; TOUCH; RANDOMKEY.
    query::<i64>(&mut c, &["ZADD", "z", "1", "a", "2", "b"]);
    query::<i64>(&mut c, &["EXPIRE", "z", "1000"]);
    assert_eq!(query::<i64>(&mut c, &["COPY", "z", "z2"]), 1);
    assert_eq!(query::<i64>(&mut c, &["COPY", "z", "z2"]), 0);
    assert_eq!(query::<i64>(&mut c, &["COPY", "s", "z2", "REPLACE"]), 1);
    assert_eq!(query::<i64>(&mut c, &["COPY", "z", "z3", "DB", "0"]), 1);
    assert!(query::<i64>(&mut c, &["TTL", "z3"]) > 900);
    assert!(error(&mut c, &["COPY", "z", "z4", "DB", "1"]).contains("out of range"));
    assert!(error(&mut c, &["COPY", "z", "z"]).contains("the same"));
    assert_eq!(query::<String>(&mut c, &["GET", "z2"]), "Hello Redis");
    assert_eq!(query::<i64>(&mut c, &["TOUCH", "z", "z3", "nope"]), 2);
    let all: HashSet<String> = query(&mut c, &["KEYS", "*"]);
    for _ in 0..20 {
        let k: String = query(&mut c, &["RANDOMKEY"]);
        assert!(all.contains(&k), "{k}");
    }
    // Through kill -9: every byte-range write was logged.
    drop(c);
    srv.kill9();
    let srv = Server::start(&dir, &[]);
    let mut c = srv.client();
    assert_eq!(
        query::<Vec<u8>>(&mut c, &["GET", "b"]),
        vec![0x01, 0x00, 0x40]
    );
    assert_eq!(query::<Vec<u8>>(&mut c, &["GET", "f"]), vec![0xff, 0x00]);
    assert_eq!(query::<String>(&mut c, &["GET", "s"]), "Hello Redis");
    assert!(query::<i64>(&mut c, &["TTL", "s"]) > 900);
    assert_eq!(
        query::<Vec<String>>(&mut c, &["ZRANGE", "z3", "0", "-1"]),
        vec!["a".to_string(), "b".to_string()]
    );
    query::<()>(&mut c, &["FLUSHALL"]);
    assert_eq!(query::<Option<String>>(&mut c, &["RANDOMKEY"]), None);
}

/// A SETBIT, SETRANGE or APPEND logs the bytes it changes, not the whole value: 200 of them
/// on a 1 MiB bitmap write a few kilobytes to the log, where logging the value would write
/// 200 MiB.
#[test]
fn byte_range_writes_log_the_bytes_they_change_not_the_value() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let big = vec![0u8; 1 << 20];
    redis::cmd("SET")
        .arg("bitmap")
        .arg(&big)
        .query::<()>(&mut c)
        .unwrap();
    let before = wal_bytes_written(&mut c);
    for i in 0..100u64 {
        query::<i64>(
            &mut c,
            &["SETBIT", "bitmap", &(i * 80_000).to_string(), "1"],
        );
        query::<i64>(
            &mut c,
            &["SETRANGE", "bitmap", &(i * 1000).to_string(), "xy"],
        );
        query::<i64>(&mut c, &["APPEND", "bitmap", "z"]);
    }
    let logged = wal_bytes_written(&mut c) - before;
    assert!(logged < 256 << 10, "300 small writes logged {logged} bytes");
    assert_eq!(query::<i64>(&mut c, &["STRLEN", "bitmap"]), (1 << 20) + 100);
    assert_eq!(query::<i64>(&mut c, &["GETBIT", "bitmap", "7920000"]), 1);
}

/// The bounds that keep one request from taking unbounded memory (P11): LCS refuses strings
/// whose table would pass 2^26 cells, SORT a result past 64 MiB; both change nothing.
#[test]
fn lcs_and_sort_refuse_results_past_their_bounds() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &[]);
    let mut c = srv.client();
    let long = "a".repeat(10_000);
    query::<()>(&mut c, &["MSET", "x", &long, "y", &long]);
    assert!(error(&mut c, &["LCS", "x", "y"]).contains("Insufficient memory"));
    let big = vec![b'v'; 1 << 20];
    redis::cmd("SET")
        .arg("bigx")
        .arg(&big)
        .query::<()>(&mut c)
        .unwrap();
    let ids: Vec<String> = vec!["x".to_string(); 70];
    let mut push = vec!["RPUSH", "ids"];
    push.extend(ids.iter().map(String::as_str));
    query::<i64>(&mut c, &push);
    assert!(
        error(&mut c, &["SORT", "ids", "BY", "nosort", "GET", "big*"]).contains("exceed 64 MiB")
    );
    assert!(error(
        &mut c,
        &["SORT", "ids", "BY", "nosort", "GET", "big*", "STORE", "d"]
    )
    .contains("exceed 64 MiB"));
    assert_eq!(query::<i64>(&mut c, &["EXISTS", "d"]), 0);
    assert_eq!(
        query::<Vec<String>>(
            &mut c,
            &["SORT", "ids", "BY", "nosort", "GET", "big*", "LIMIT", "0", "2"]
        )
        .len(),
        2
    );
}
