//! Hashes in keel-engine, on the real disk: their writes, their reads, the other types' writes
//! meeting them, and their durability through replay, checkpoints and writes in flight.

use bytes::Bytes;
use keel_engine::{
    Engine, ExpireIf, Options, Outcome, PutIf, Read, Ttl, Write, WriteError, WriteResult,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn hset(key: &str, pairs: &[(&str, &str)]) -> Write {
    Write::HashSet {
        key: b(key),
        pairs: pairs.iter().map(|(f, v)| (b(f), b(v))).collect(),
        only_new: false,
    }
}

fn read(key: &str, op: Read) -> Write {
    Write::Read { key: b(key), op }
}

fn results(o: Outcome) -> Vec<WriteResult> {
    match o {
        Outcome::Committed { results, .. } => results,
        o => panic!("expected a commit, got {o:?}"),
    }
}

fn run(e: &Engine, writes: Vec<Write>) -> Vec<WriteResult> {
    results(e.commit(vec![], writes).unwrap())
}

fn one(e: &Engine, w: Write) -> WriteResult {
    run(e, vec![w]).remove(0)
}

fn values(v: &[&str]) -> WriteResult {
    WriteResult::Values(v.iter().map(|s| Some(b(s))).collect())
}

/// The hash at `key` as sorted (field, value) pairs, read from the durable state.
fn fields(e: &Engine, key: &str) -> Vec<(Bytes, Bytes)> {
    let WriteResult::Values(all) = e.read(|v| v.read(key.as_bytes(), Some(&Read::HashAll))) else {
        panic!("not a hash")
    };
    let mut pairs: Vec<_> = all
        .chunks(2)
        .map(|p| (p[0].clone().unwrap(), p[1].clone().unwrap()))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn hash_writes_and_reads_follow_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    // HSET counts the fields it adds, a field named twice once.
    assert_eq!(
        one(&e, hset("h", &[("a", "1"), ("b", "2"), ("a", "3")])),
        WriteResult::Int(2)
    );
    assert_eq!(
        one(&e, hset("h", &[("a", "4"), ("c", "5")])),
        WriteResult::Int(1)
    );
    assert_eq!(
        fields(&e, "h"),
        vec![(b("a"), b("4")), (b("b"), b("2")), (b("c"), b("5"))]
    );
    // HSETNX: an existing field keeps its value and nothing is logged.
    let nx = |f: &str, v: &str| Write::HashSet {
        key: b("h"),
        pairs: vec![(b(f), b(v))],
        only_new: true,
    };
    let before = e.read(|v| v.version(b"h"));
    assert_eq!(
        e.commit(vec![], vec![nx("a", "x")]).unwrap(),
        Outcome::Committed {
            lsn: None,
            results: vec![WriteResult::Int(0)],
            effects: vec![],
        }
    );
    assert_eq!(e.read(|v| v.version(b"h")), before);
    assert_eq!(one(&e, nx("d", "6")), WriteResult::Int(1));
    // Reads.
    let get = |fs: &[&str]| {
        read(
            "h",
            Read::HashGet {
                fields: fs.iter().map(|f| b(f)).collect(),
            },
        )
    };
    assert_eq!(
        one(&e, get(&["a", "zz", "d"])),
        WriteResult::Values(vec![Some(b("4")), None, Some(b("6"))])
    );
    assert_eq!(one(&e, read("h", Read::HashLen)), WriteResult::Int(4));
    assert_eq!(
        one(&e, read("h", Read::HashExists { field: b("b") })),
        WriteResult::Int(1)
    );
    assert_eq!(
        one(&e, read("h", Read::HashStrlen { field: b("a") })),
        WriteResult::Int(1)
    );
    assert_eq!(
        one(&e, read("h", Read::Type)),
        WriteResult::Value(Some(b("hash")))
    );
    assert_eq!(one(&e, read("nope", Read::Type)), WriteResult::Value(None));
    assert_eq!(
        one(&e, read("nope", Read::HashAll)),
        WriteResult::Values(vec![])
    );
    assert_eq!(one(&e, read("nope", Read::HashLen)), WriteResult::Int(0));
    // Counters log their result; errors change nothing.
    let incr = |f: &str, by| Write::HashIncr {
        key: b("h"),
        field: b(f),
        by,
    };
    assert_eq!(one(&e, incr("n", 5)), WriteResult::Int(5));
    assert_eq!(one(&e, incr("n", -7)), WriteResult::Int(-2));
    assert_eq!(
        one(&e, hset("h", &[("big", &i64::MAX.to_string())])),
        WriteResult::Int(1)
    );
    assert_eq!(
        one(&e, incr("big", 1)),
        WriteResult::Failed(WriteError::Overflow)
    );
    assert_eq!(one(&e, incr("a", 1)), WriteResult::Int(5));
    assert_eq!(one(&e, incr("d", 1)), WriteResult::Int(7));
    assert_eq!(one(&e, hset("h", &[("s", "text")])), WriteResult::Int(1));
    assert_eq!(
        one(&e, incr("s", 1)),
        WriteResult::Failed(WriteError::NotAnInteger)
    );
    let incr_float = |f: &str, by| Write::HashIncrFloat {
        key: b("h"),
        field: b(f),
        by,
    };
    assert_eq!(
        one(&e, incr_float("x", 0.1)),
        WriteResult::Value(Some(b("0.1")))
    );
    assert_eq!(
        one(&e, incr_float("x", 0.2)),
        WriteResult::Value(Some(b("0.3")))
    );
    assert_eq!(
        one(&e, incr_float("s", 1.0)),
        WriteResult::Failed(WriteError::NotAFloat)
    );
    // HDEL counts what it removed, and an emptied hash is gone.
    let del = |key: &str, fs: &[&str]| Write::HashDel {
        key: b(key),
        fields: fs.iter().map(|f| b(f)).collect(),
    };
    assert_eq!(one(&e, del("h", &["a", "a", "zz"])), WriteResult::Int(1));
    assert_eq!(one(&e, del("nope", &["a"])), WriteResult::Int(0));
    assert_eq!(one(&e, hset("small", &[("f", "v")])), WriteResult::Int(1));
    assert_eq!(one(&e, del("small", &["f", "g"])), WriteResult::Int(1));
    assert_eq!(e.read(|v| v.kind(b"small")), None);
    assert_eq!(e.read(|v| v.count()), 1);
    // A transaction sees its own hash writes.
    assert_eq!(
        run(
            &e,
            vec![
                hset("t", &[("f", "1")]),
                read("t", Read::HashAll),
                Write::HashIncr {
                    key: b("t"),
                    field: b("f"),
                    by: 2
                },
                read(
                    "t",
                    Read::HashGet {
                        fields: vec![b("f")]
                    }
                ),
                del("t", &["f"]),
                read("t", Read::Type),
            ]
        ),
        vec![
            WriteResult::Int(1),
            values(&["f", "1"]),
            WriteResult::Int(3),
            values(&["3"]),
            WriteResult::Int(1),
            WriteResult::Value(None),
        ]
    );
}

/// Redis's WRONGTYPE rules: a string command on a hash, or a hash command on a string, fails
/// and changes nothing; SET, DEL, EXPIRE, RENAME and TYPE work on any type; GETSET, GETDEL and
/// SET … GET fail whole.
#[test]
fn other_types_meet_a_hash_as_redis_says() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    one(&e, hset("h", &[("f", "v")]));
    e.put("s", "text").unwrap();
    let wrong = WriteResult::Failed(WriteError::WrongType);
    assert_eq!(one(&e, Write::Get { key: b("h") }), wrong);
    assert_eq!(one(&e, Write::Incr { key: b("h"), by: 1 }), wrong);
    assert_eq!(
        one(
            &e,
            Write::IncrFloat {
                key: b("h"),
                by: 1.0
            }
        ),
        wrong
    );
    assert_eq!(
        one(
            &e,
            Write::Append {
                key: b("h"),
                suffix: b("x")
            }
        ),
        wrong
    );
    assert_eq!(one(&e, hset("s", &[("f", "v")])), wrong);
    assert_eq!(one(&e, read("s", Read::HashAll)), wrong);
    assert_eq!(
        one(
            &e,
            Write::HashDel {
                key: b("s"),
                fields: vec![b("f")]
            }
        ),
        wrong
    );
    assert_eq!(
        one(
            &e,
            Write::HashIncr {
                key: b("s"),
                field: b("f"),
                by: 1
            }
        ),
        wrong
    );
    // GETSET and GETDEL on a hash: the error, and the hash intact.
    let getset = Write::GetThen {
        key: b("h"),
        then: Box::new(Write::Put {
            key: b("h"),
            value: b("x"),
            ttl: Ttl::None,
            only: PutIf::Always,
        }),
    };
    let getdel = Write::GetThen {
        key: b("h"),
        then: Box::new(Write::Delete { key: b("h") }),
    };
    assert_eq!(
        run(&e, vec![getset, getdel]),
        vec![wrong.clone(), wrong.clone()]
    );
    assert_eq!(fields(&e, "h"), vec![(b("f"), b("v"))]);
    // On a string, GetThen reads the old value and does its write.
    let getset = Write::GetThen {
        key: b("s"),
        then: Box::new(Write::Put {
            key: b("s"),
            value: b("new"),
            ttl: Ttl::None,
            only: PutIf::Always,
        }),
    };
    assert_eq!(one(&e, getset), WriteResult::Value(Some(b("text"))));
    assert_eq!(e.get(b"s").unwrap().value, "new");
    // EXPIRE and a key's stamp work on a hash; the expiry survives HSET, as in Redis.
    let far = u64::MAX / 4;
    assert_eq!(
        one(
            &e,
            Write::Expire {
                key: b("h"),
                at_ms: Some(far),
                only: ExpireIf::Always
            }
        ),
        WriteResult::Existed(true)
    );
    one(&e, hset("h", &[("g", "w")]));
    assert_eq!(e.read(|v| v.stamp(b"h")).unwrap().1, Some(far));
    // RENAME moves the hash with its expiry, over a string.
    assert_eq!(
        one(
            &e,
            Write::Rename {
                from: b("h"),
                to: b("s"),
                only_if_absent: false
            }
        ),
        WriteResult::Put(true)
    );
    assert_eq!(e.read(|v| v.kind(b"h")), None);
    assert_eq!(fields(&e, "s"), vec![(b("f"), b("v")), (b("g"), b("w"))]);
    assert_eq!(e.read(|v| v.stamp(b"s")).unwrap().1, Some(far));
    // SET replaces a hash; an expiry already past deletes it.
    one(&e, hset("h2", &[("f", "v")]));
    e.put("h2", "now a string").unwrap();
    assert_eq!(e.get(b"h2").unwrap().value, "now a string");
    one(&e, hset("h3", &[("f", "v")]));
    let past = Write::Expire {
        key: b("h3"),
        at_ms: Some(1),
        only: ExpireIf::Always,
    };
    assert_eq!(one(&e, past), WriteResult::Existed(true));
    assert_eq!(e.read(|v| v.kind(b"h3")), None);
    // A hash over an expired string starts afresh, without the old expiry.
    e.commit(
        vec![],
        vec![Write::Put {
            key: b("old"),
            value: b("v"),
            ttl: Ttl::At(1),
            only: PutIf::Always,
        }],
    )
    .unwrap();
    assert_eq!(one(&e, hset("old", &[("f", "v")])), WriteResult::Int(1));
    assert_eq!(e.read(|v| v.stamp(b"old")).unwrap().1, None);
    // Every state above survives a reopen (replay) and a checkpoint (snapshot).
    let state = |e: &Engine| {
        let mut keys: Vec<_> = e.read(|v| {
            v.keys()
                .map(|k| {
                    let r = v.read(k, Some(&Read::HashAll));
                    (Bytes::copy_from_slice(k), v.stamp(k), v.get(k), r)
                })
                .collect()
        });
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys
    };
    let before = state(&e);
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(state(&e), before);
    e.checkpoint().unwrap();
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(state(&e), before);
}

/// Hash writes decided while earlier ones are still on their way to the disk see them (the
/// sequencer holds a written hash and changes it in place), from several threads at once, and
/// the result survives a reopen from the log and from a checkpoint.
#[test]
fn hash_writes_in_flight_see_each_other_and_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let incr = |f: &str| Write::HashIncr {
        key: b("h"),
        field: b(f),
        by: 1,
    };
    // A hash already visible, then writes in flight on it: the sequencer's copy starts from it.
    one(&e, hset("h", &[("old", "v")]));
    let first = e.submit(vec![], vec![incr("n")]).unwrap();
    let mid = e
        .submit(
            vec![],
            vec![read(
                "h",
                Read::HashGet {
                    fields: vec![b("old"), b("n")],
                },
            )],
        )
        .unwrap();
    assert_eq!(results(first.wait().unwrap()), vec![WriteResult::Int(1)]);
    assert_eq!(
        results(mid.wait().unwrap()),
        vec![WriteResult::Values(vec![Some(b("v")), Some(b("1"))])]
    );
    let pending: Vec<_> = (0..50)
        .flat_map(|i| {
            [
                e.submit(vec![], vec![incr("n")]).unwrap(),
                e.submit(vec![], vec![hset("h", &[(&format!("f{i}"), "v")])])
                    .unwrap(),
            ]
        })
        .collect();
    let got: Vec<_> = pending
        .into_iter()
        .map(|p| results(p.wait().unwrap()).remove(0))
        .collect();
    for (i, pair) in got.chunks(2).enumerate() {
        assert_eq!(pair[0], WriteResult::Int(i as i64 + 2));
        assert_eq!(pair[1], WriteResult::Int(1));
    }
    std::thread::scope(|s| {
        for t in 0..4 {
            let e = &e;
            s.spawn(move || {
                let pending: Vec<_> = (0..100)
                    .map(|_| e.submit(vec![], vec![incr(&format!("t{t}"))]).unwrap())
                    .collect();
                let seen: Vec<_> = pending
                    .into_iter()
                    .map(|p| match results(p.wait().unwrap()).remove(0) {
                        WriteResult::Int(n) => n,
                        r => panic!("{r:?}"),
                    })
                    .collect();
                assert_eq!(seen, (1..=100).collect::<Vec<_>>());
            });
        }
    });
    let expect = |e: &Engine| {
        let h = fields(e, "h");
        assert_eq!(h.len(), 2 + 50 + 4, "{h:?}");
        assert!(h.contains(&(b("n"), b("51"))));
        assert!(h.contains(&(b("old"), b("v"))));
        for t in 0..4 {
            assert!(h.contains(&(b(&format!("t{t}")), b("100"))));
        }
    };
    expect(&e);
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    expect(&e);
    e.checkpoint().unwrap();
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    expect(&e);
}
