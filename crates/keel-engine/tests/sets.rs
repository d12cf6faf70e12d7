//! Sets in keel-engine, on the real disk: their writes and reads, SPOP's decided choice, and
//! their durability through replay and checkpoints.

use std::collections::BTreeSet;

use bytes::Bytes;
use keel_engine::{Engine, Options, Outcome, Read, SetOp, Write, WriteError, WriteResult};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn one(e: &Engine, w: Write) -> WriteResult {
    match e.commit(vec![], vec![w]).unwrap() {
        Outcome::Committed { mut results, .. } => results.remove(0),
        o => panic!("{o:?}"),
    }
}

fn sadd(key: &str, members: &[&str]) -> Write {
    Write::SetAdd {
        key: b(key),
        members: members.iter().map(|m| b(m)).collect(),
    }
}

fn members(e: &Engine, key: &str) -> BTreeSet<Bytes> {
    match e.read(|v| v.read(key.as_bytes(), Some(&Read::SetMembers))) {
        WriteResult::Values(v) => v.into_iter().map(Option::unwrap).collect(),
        r => panic!("{r:?}"),
    }
}

fn set(ms: &[&str]) -> BTreeSet<Bytes> {
    ms.iter().map(|m| b(m)).collect()
}

#[test]
fn set_writes_and_reads_follow_redis() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(
        one(&e, sadd("s", &["a", "b", "a", "1"])),
        WriteResult::Int(3)
    );
    assert_eq!(one(&e, sadd("s", &["b", "c"])), WriteResult::Int(1));
    assert_eq!(members(&e, "s"), set(&["1", "a", "b", "c"]));
    let read = |key: &str, op| one(&e, Write::Read { key: b(key), op });
    assert_eq!(read("s", Read::SetCard), WriteResult::Int(4));
    assert_eq!(
        read("s", Read::SetIsMember { member: b("a") }),
        WriteResult::Int(1)
    );
    assert_eq!(
        read(
            "s",
            Read::SetMisMember {
                members: vec![b("a"), b("z")]
            }
        ),
        WriteResult::Values(vec![Some(b("1")), Some(b("0"))])
    );
    assert_eq!(read("none", Read::SetCard), WriteResult::Int(0));
    assert_eq!(read("s", Read::Type), WriteResult::Value(Some(b("set"))));
    let rem = |key: &str, ms: &[&str]| Write::SetRem {
        key: b(key),
        members: ms.iter().map(|m| b(m)).collect(),
    };
    assert_eq!(one(&e, rem("s", &["1", "1", "z"])), WriteResult::Int(1));
    // SMOVE: to a new set, and the source emptied is gone.
    one(&e, sadd("one", &["x"]));
    let mv = |from: &str, to: &str, m: &str| Write::SetMove {
        from: b(from),
        to: b(to),
        member: b(m),
    };
    assert_eq!(one(&e, mv("one", "two", "x")), WriteResult::Int(1));
    assert_eq!(one(&e, mv("one", "two", "x")), WriteResult::Int(0));
    assert_eq!(e.read(|v| v.kind(b"one")), None);
    assert_eq!(members(&e, "two"), set(&["x"]));
    // The STORE forms replace the destination; an empty result deletes it.
    one(&e, sadd("t", &["b", "c", "d"]));
    let store = |key: &str, op, keys: &[&str]| Write::SetStore {
        key: b(key),
        op,
        keys: keys.iter().map(|k| b(k)).collect(),
    };
    assert_eq!(
        one(&e, store("i", SetOp::Inter, &["s", "t"])),
        WriteResult::Int(2)
    );
    assert_eq!(members(&e, "i"), set(&["b", "c"]));
    assert_eq!(
        one(&e, store("u", SetOp::Union, &["s", "t", "none"])),
        WriteResult::Int(4)
    );
    assert_eq!(
        one(&e, store("d", SetOp::Diff, &["t", "s"])),
        WriteResult::Int(1)
    );
    assert_eq!(members(&e, "d"), set(&["d"]));
    assert_eq!(
        one(&e, store("i", SetOp::Inter, &["s", "none"])),
        WriteResult::Int(0)
    );
    assert_eq!(e.read(|v| v.kind(b"i")), None);
    // A store over its own source.
    assert_eq!(
        one(&e, store("s", SetOp::Union, &["s", "two"])),
        WriteResult::Int(4)
    );
    // WRONGTYPE, and nothing changed.
    e.put("str", "v").unwrap();
    let wrong = WriteResult::Failed(WriteError::WrongType);
    assert_eq!(one(&e, sadd("str", &["a"])), wrong);
    assert_eq!(one(&e, mv("s", "str", "a")), wrong);
    assert_eq!(one(&e, store("x", SetOp::Union, &["s", "str"])), wrong);
    assert_eq!(
        one(
            &e,
            Write::SetPop {
                key: b("str"),
                count: None
            }
        ),
        wrong
    );
    assert_eq!(members(&e, "s"), set(&["a", "b", "c", "x"]));
    // SPOP takes distinct members that were there, and logs what it took.
    let WriteResult::Values(popped) = one(
        &e,
        Write::SetPop {
            key: b("u"),
            count: Some(3),
        },
    ) else {
        panic!()
    };
    let popped: BTreeSet<Bytes> = popped.into_iter().map(Option::unwrap).collect();
    assert_eq!(popped.len(), 3);
    assert!(popped.is_subset(&set(&["a", "b", "c", "d"])));
    let left = members(&e, "u");
    assert_eq!(left.len(), 1);
    assert!(left.is_disjoint(&popped));
    let WriteResult::Values(rest) = one(
        &e,
        Write::SetPop {
            key: b("u"),
            count: Some(10),
        },
    ) else {
        panic!()
    };
    assert_eq!(
        rest.into_iter()
            .map(Option::unwrap)
            .collect::<BTreeSet<_>>(),
        left
    );
    assert_eq!(e.read(|v| v.kind(b"u")), None);
    assert_eq!(
        one(
            &e,
            Write::SetPop {
                key: b("u"),
                count: None
            }
        ),
        WriteResult::Value(None)
    );
    // Everything survives a reopen and a checkpoint.
    let all = |e: &Engine| {
        ["s", "t", "d", "two"]
            .iter()
            .map(|k| members(e, k))
            .collect::<Vec<_>>()
    };
    let before = all(&e);
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(all(&e), before);
    e.checkpoint().unwrap();
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(all(&e), before);
}

/// With `replicas_decide`, SPOP's choice depends only on the state and the transaction's time:
/// two replicas deciding the same transactions at the same times pop the same members, though
/// each table keeps its own order (its own random hash seed).
#[test]
fn spop_decides_the_same_members_on_every_replica() {
    let pops = |dir: &std::path::Path| {
        let opts = Options {
            replicas_decide: true,
            ..Options::small_for_tests()
        };
        let (e, _) = Engine::open(dir, opts).unwrap();
        let members: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
        let ms: Vec<&str> = members.iter().map(String::as_str).collect();
        e.submit_at(None, 1_000, vec![], vec![sadd("s", &ms)])
            .unwrap()
            .wait()
            .unwrap();
        (0..20)
            .map(|i| {
                e.submit_at(
                    None,
                    2_000 + i,
                    vec![],
                    vec![Write::SetPop {
                        key: b("s"),
                        count: Some(3),
                    }],
                )
                .unwrap()
                .wait()
                .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let (a, b2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = pops(a.path());
    assert_eq!(first, pops(b2.path()));
    // And the picks are not all the same members.
    assert_ne!(first[0], first[1]);
}

/// On its own, the engine pops from a large set by drawing from its table, and logs what it
/// took: pops of one and of many take distinct members that were there, the random reads pick
/// from what is left, and a reopen (replaying the pops) and a checkpoint leave exactly the set
/// the pops acknowledged.
#[test]
fn spop_from_a_large_set_takes_distinct_members_and_logs_them() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let all: Vec<String> = (0..5000).map(|i| format!("member:{i}")).collect();
    for chunk in all.chunks(200) {
        let ms: Vec<&str> = chunk.iter().map(String::as_str).collect();
        one(&e, sadd("big", &ms));
    }
    let mut left: BTreeSet<Bytes> = all.iter().map(|m| b(m)).collect();
    let pop = |count| Write::SetPop {
        key: b("big"),
        count,
    };
    for _ in 0..200 {
        let WriteResult::Value(Some(m)) = one(&e, pop(None)) else {
            panic!("a member")
        };
        assert!(left.remove(&m), "{m:?} popped twice or never there");
    }
    for count in [1, 7, 100, 400] {
        let WriteResult::Values(ms) = one(&e, pop(Some(count))) else {
            panic!("members")
        };
        assert_eq!(ms.len(), count);
        for m in ms {
            assert!(left.remove(&m.unwrap()));
        }
    }
    assert_eq!(members(&e, "big"), left);
    let random = |count| {
        let read = Write::Read {
            key: b("big"),
            op: Read::SetRandom { count, seed: 42 },
        };
        match one(&e, read) {
            WriteResult::Values(v) => v.into_iter().map(Option::unwrap).collect::<Vec<_>>(),
            r => panic!("{r:?}"),
        }
    };
    let picked = random(50);
    assert_eq!(picked.iter().collect::<BTreeSet<_>>().len(), 50);
    assert!(picked.iter().all(|m| left.contains(m)));
    assert_eq!(random(-20).len(), 20);
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(members(&e, "big"), left);
    e.checkpoint().unwrap();
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(members(&e, "big"), left);
}
