//! Streams in keel-engine, on the real disk: IDs decided at the sequencer, trimming, deletes,
//! XSETID's metadata, a rename, and the same stream after replay and after a checkpoint.

use std::ops::Bound;

use bytes::Bytes;
use keel_engine::{
    Engine, Options, Outcome, Read, StreamId, StreamIdSpec, StreamTrim, StreamTrimBy, Write,
    WriteError, WriteResult,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn one(e: &Engine, w: Write) -> WriteResult {
    match e.commit(vec![], vec![w]).unwrap() {
        Outcome::Committed { mut results, .. } => results.remove(0),
        o => panic!("expected a commit, got {o:?}"),
    }
}

fn xadd(key: &str, id: StreamIdSpec, fields: &[&str], trim: Option<StreamTrim>) -> Write {
    Write::StreamAdd {
        key: b(key),
        id,
        fields: fields.iter().map(|f| b(f)).collect(),
        no_create: false,
        trim,
    }
}

fn id(ms: u64, seq: u64) -> StreamId {
    StreamId::new(ms, seq)
}

/// The stream as "id f v f v" lines, and its length and last ID.
fn dump(e: &Engine, key: &str) -> (Vec<String>, WriteResult, WriteResult) {
    let range = Read::StreamRange {
        start: Bound::Unbounded,
        end: Bound::Unbounded,
        count: None,
        rev: false,
    };
    let WriteResult::Values(all) = e.read(|v| v.read(key.as_bytes(), Some(&range))) else {
        panic!("not a stream")
    };
    let lines = all
        .split(Option::is_none)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.iter()
                .map(|x| String::from_utf8(x.clone().unwrap().to_vec()).unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let len = e.read(|v| v.read(key.as_bytes(), Some(&Read::StreamLen)));
    let last = e.read(|v| v.read(key.as_bytes(), Some(&Read::StreamLastId)));
    (lines, len, last)
}

#[test]
fn ids_trims_deletes_and_metadata_survive_replay_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let ok = |s: &str| WriteResult::Value(Some(b(s)));
    assert_eq!(
        one(
            &e,
            xadd("s", StreamIdSpec::Exact(id(5, 1)), &["a", "1"], None)
        ),
        ok("5-1")
    );
    // `ms-*` takes the next sequence number within the ms; `*` is at least the next ID.
    assert_eq!(
        one(&e, xadd("s", StreamIdSpec::Seq(5), &["a", "2"], None)),
        ok("5-2")
    );
    assert_eq!(
        one(&e, xadd("s", StreamIdSpec::Seq(7), &["a", "3"], None)),
        ok("7-0")
    );
    let WriteResult::Value(Some(auto)) = one(&e, xadd("a", StreamIdSpec::Auto, &["a", "4"], None))
    else {
        panic!()
    };
    assert!(
        auto.starts_with(b"17") || auto.starts_with(b"18"),
        "now in ms: {auto:?}"
    );
    // Two at once, in one transaction: the second still above the first.
    let o = e
        .commit(
            vec![],
            vec![
                xadd("t", StreamIdSpec::Auto, &["x", "1"], None),
                xadd("t", StreamIdSpec::Auto, &["x", "2"], None),
            ],
        )
        .unwrap();
    let Outcome::Committed { results, .. } = o else {
        panic!()
    };
    let ids: Vec<StreamId> = results
        .iter()
        .map(|r| match r {
            WriteResult::Value(Some(v)) => StreamId::parse(v, 0).unwrap(),
            r => panic!("{r:?}"),
        })
        .collect();
    assert!(ids[1] > ids[0], "{ids:?}");
    // Refusals.
    let small_id = xadd("s", StreamIdSpec::Exact(id(6, 0)), &["a", "x"], None);
    assert_eq!(
        one(&e, small_id),
        WriteResult::Failed(WriteError::StreamIdTooSmall)
    );
    let zero = xadd("z", StreamIdSpec::Exact(id(0, 0)), &["a", "x"], None);
    assert_eq!(one(&e, zero), WriteResult::Failed(WriteError::StreamIdZero));
    let mut absent = xadd("none", StreamIdSpec::Auto, &["a", "x"], None);
    if let Write::StreamAdd { no_create, .. } = &mut absent {
        *no_create = true;
    }
    assert_eq!(one(&e, absent), WriteResult::Value(None));
    one(
        &e,
        Write::Put {
            key: b("str"),
            value: b("v"),
            ttl: keel_engine::Ttl::None,
            only: keel_engine::PutIf::Always,
        },
    );
    let wrong = xadd("str", StreamIdSpec::Auto, &["a", "x"], None);
    assert_eq!(one(&e, wrong), WriteResult::Failed(WriteError::WrongType));

    // MAXLEN counts the new entry; XDEL keeps the greatest deleted ID; a stream left empty
    // stays.
    let trim = StreamTrim {
        by: StreamTrimBy::MaxLen(3),
        limit: None,
        node: 0,
    };
    one(
        &e,
        xadd("s", StreamIdSpec::Exact(id(9, 0)), &["a", "5"], Some(trim)),
    );
    let del = Write::StreamDel {
        key: b("s"),
        ids: vec![id(7, 0), id(7, 0), id(1, 1)],
    };
    assert_eq!(one(&e, del), WriteResult::Int(1));
    let (lines, len, _) = dump(&e, "s");
    assert_eq!(len, WriteResult::Int(2));
    assert_eq!(lines[1], "9-0 a 5");
    let set_id = Write::StreamSetId {
        key: b("s"),
        id: id(100, 0),
        entries_added: Some(50),
        max_deleted: Some(id(8, 0)),
    };
    assert_eq!(one(&e, set_id), WriteResult::Put(true));
    let low = Write::StreamSetId {
        key: b("s"),
        id: id(1, 0),
        entries_added: None,
        max_deleted: None,
    };
    // Below the greatest deleted ID (8-0) as well as the top entry: the first check says.
    assert_eq!(
        one(&e, low),
        WriteResult::Failed(WriteError::StreamSetIdMaxDeleted)
    );
    let all = Write::StreamTrimTo {
        key: b("t"),
        trim: StreamTrim {
            by: StreamTrimBy::MinId(StreamId::MAX),
            limit: None,
            node: 0,
        },
    };
    assert_eq!(one(&e, all), WriteResult::Int(2));
    assert_eq!(dump(&e, "t").1, WriteResult::Int(0), "empty, still there");
    let rename = Write::Rename {
        from: b("s"),
        to: b("moved"),
        only_if_absent: false,
    };
    one(&e, rename);
    let before = (dump(&e, "moved"), dump(&e, "t"));
    assert_eq!(before.0 .2, WriteResult::Value(Some(b("100-0"))));
    assert_eq!(
        e.read(|v| v.read(b"t", Some(&Read::Type))),
        WriteResult::Value(Some(b("stream")))
    );
    e.close().unwrap();

    // From the log, then from a snapshot.
    for checkpoint in [false, true] {
        let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
        assert_eq!(
            (dump(&e, "moved"), dump(&e, "t")),
            before,
            "checkpoint {checkpoint}"
        );
        // The metadata came back too: an ID at or below 100-0 is refused.
        let again = xadd("moved", StreamIdSpec::Exact(id(100, 0)), &["a", "x"], None);
        assert_eq!(
            one(&e, again),
            WriteResult::Failed(WriteError::StreamIdTooSmall)
        );
        // The second round opens from this snapshot.
        e.checkpoint().unwrap();
        e.close().unwrap();
    }
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(
        (dump(&e, "moved"), dump(&e, "t")),
        before,
        "after a checkpoint"
    );
}

fn texts(r: WriteResult) -> Vec<String> {
    let WriteResult::Values(v) = r else {
        panic!("not values: {r:?}")
    };
    v.into_iter()
        .map(|x| x.map_or("nil".into(), |x| String::from_utf8(x.to_vec()).unwrap()))
        .collect()
}

fn read_group(consumer: &str, after: Option<StreamId>, count: Option<usize>) -> Write {
    Write::StreamReadGroup {
        group: b("g"),
        consumer: b(consumer),
        streams: vec![(b("s"), after)],
        count,
        no_ack: false,
        retry: false,
    }
}

#[test]
fn consumer_groups_change_only_through_the_log_and_survive_replay_checkpoints_and_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    for i in 1..=3 {
        one(
            &e,
            xadd("s", StreamIdSpec::Exact(id(i, 0)), &["f", "v"], None),
        );
    }
    let create = |key: &str, mkstream| Write::StreamGroupCreate {
        key: b(key),
        group: b("g"),
        id: Some(StreamId::MIN),
        entries_read: None,
        mkstream,
    };
    assert_eq!(one(&e, create("s", false)), WriteResult::Put(true));
    assert_eq!(
        one(&e, create("s", false)),
        WriteResult::Failed(WriteError::GroupExists)
    );
    assert_eq!(
        one(&e, create("new", false)),
        WriteResult::Failed(WriteError::NoSuchKey)
    );
    assert_eq!(one(&e, create("new", true)), WriteResult::Put(true));

    // `>` delivers what the group has not read; each delivery becomes pending.
    let got = texts(one(&e, read_group("alice", None, Some(2))));
    assert_eq!(got, ["1-0", "f", "v", "nil", "2-0", "f", "v", "nil", "nil"]);
    let got = texts(one(&e, read_group("bob", None, None)));
    assert_eq!(got, ["3-0", "f", "v", "nil", "nil"]);
    // A blocked read's later try that finds nothing for a known consumer logs nothing; a
    // first try does (the consumer's seen time).
    let o = e
        .commit(vec![], vec![read_group("bob", None, None)])
        .unwrap();
    assert!(
        matches!(o, Outcome::Committed { lsn: Some(_), .. }),
        "{o:?}"
    );
    let mut retry = read_group("bob", None, None);
    if let Write::StreamReadGroup { retry, .. } = &mut retry {
        *retry = true;
    }
    let o = e.commit(vec![], vec![retry]).unwrap();
    assert!(
        matches!(&o, Outcome::Committed { lsn: None, results, .. } if texts(results[0].clone()) == ["nil"]),
        "{o:?}"
    );
    // Its own history, delivered again: the count goes up.
    let got = texts(one(&e, read_group("alice", Some(StreamId::MIN), None)));
    assert_eq!(got, ["1-0", "f", "v", "nil", "2-0", "f", "v", "nil", "nil"]);
    let other = Write::StreamReadGroup {
        group: b("nope"),
        consumer: b("alice"),
        streams: vec![(b("s"), None)],
        count: None,
        no_ack: false,
        retry: false,
    };
    assert_eq!(one(&e, other), WriteResult::Failed(WriteError::NoGroup));

    let ack = Write::StreamAck {
        key: b("s"),
        group: b("g"),
        ids: vec![id(1, 0), id(9, 9), id(1, 0)],
    };
    assert_eq!(one(&e, ack), WriteResult::Int(1));
    let claim = Write::StreamClaim {
        key: b("s"),
        group: b("g"),
        consumer: b("bob"),
        min_idle_ms: 0,
        claim: keel_engine::Claim::Ids {
            ids: vec![id(2, 0), id(1, 0)],
            delivered: None,
            deliveries: None,
            force: false,
            just_id: false,
            last_id: None,
        },
    };
    assert_eq!(texts(one(&e, claim)), ["2-0", "f", "v", "nil"]);
    let summary = Read::StreamPending {
        group: b("g"),
        range: None,
    };
    let pending = |e: &Engine, key: &str| texts(e.read(|v| v.read(key.as_bytes(), Some(&summary))));
    assert_eq!(pending(&e, "s"), ["2", "2-0", "3-0", "bob", "2"]);
    // Deleted from the stream, a pending entry is acknowledged by the next claim that meets it.
    one(
        &e,
        Write::StreamDel {
            key: b("s"),
            ids: vec![id(3, 0)],
        },
    );
    let autoclaim = Write::StreamClaim {
        key: b("s"),
        group: b("g"),
        consumer: b("alice"),
        min_idle_ms: 0,
        claim: keel_engine::Claim::Scan {
            start: StreamId::MIN,
            count: 10,
            just_id: true,
        },
    };
    assert_eq!(
        texts(one(&e, autoclaim)),
        ["0-0", "2-0", "nil", "nil", "3-0"]
    );
    assert_eq!(pending(&e, "s"), ["1", "2-0", "2-0", "alice", "1"]);
    let groups = texts(e.read(|v| v.read(b"s", Some(&Read::StreamGroups))));
    // Name, consumers, pending, last ID, entries read, lag (unknown after the XDEL).
    assert_eq!(groups, ["g", "2", "1", "3-0", "3", "0"]);

    // A rename moves the groups with the stream.
    let rename = Write::Rename {
        from: b("s"),
        to: b("r"),
        only_if_absent: false,
    };
    one(&e, rename);
    let full = Read::StreamInfo { entries: Some(0) };
    let state = |e: &Engine| {
        (
            texts(e.read(|v| v.read(b"r", Some(&full)))),
            texts(e.read(|v| v.read(b"new", Some(&full)))),
        )
    };
    let before = state(&e);
    assert_eq!(pending(&e, "r"), ["1", "2-0", "2-0", "alice", "1"]);
    assert!(before.0.contains(&"alice".to_string()), "{before:?}");
    e.close().unwrap();

    // From the log, then from a snapshot: the same groups, consumers, pending entries, times
    // and delivery counts.
    for checkpoint in [false, true] {
        let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
        assert_eq!(state(&e), before, "checkpoint {checkpoint}");
        e.checkpoint().unwrap();
        e.close().unwrap();
    }
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(state(&e), before, "after a checkpoint");
}
