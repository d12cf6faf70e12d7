//! Upgrade: a data directory written by keel with snapshot format v1, MANIFEST v1, log segment
//! format v1 and engine record v1 (every release up to issue #18) opens under this code with
//! every byte of its state intact, and its next checkpoint is readable too.
//!
//! The directory is `tests/fixtures/v1-database/`, committed once and **frozen**: it was written
//! by [`write_v1_fixture`] with the v1 code, and it must never be written again. The expected
//! state below is spelled out as literals (and two deterministic byte patterns), not read back
//! from the fixture, and the fixture's every file is pinned by length and hash, so neither a
//! format change nor a regenerated fixture can pass unnoticed. docs/FORMAT.md names the
//! fixture as the reference sample of v1.
//!
//! A snapshot of a version this code does not know is refused, not taken for damage. And the
//! release before snapshot v4 wrote v2 (v3 when encrypted): two more frozen fixtures open, and
//! their next checkpoint writes v4.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_engine::{
    Engine, Entry, Guard, Options, Outcome, PutIf, Ttl, Write, WriteError, WriteResult,
};

/// 2100-01-01T00:00:00Z in Unix milliseconds: an expiry still in the future when this test runs.
const FAR_FUTURE_MS: u64 = 4_102_444_800_000;
/// 2100-01-01T00:00:01Z.
const FAR_FUTURE_2_MS: u64 = FAR_FUTURE_MS + 1_000;
/// 2023-11-14T22:13:20Z: an expiry already past when the fixture was written.
const PAST_MS: u64 = 1_700_000_000_000;

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn put(key: &[u8], value: &[u8], ttl: Ttl) -> Write {
    Write::Put {
        key: b(key),
        value: b(value),
        ttl,
        only: PutIf::Always,
    }
}

/// Every byte value once: `00 01 .. ff`.
fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

/// A value of exactly `value_bytes_max` (4096) bytes as the fixture was written with: byte `i`
/// is `(i * 31 + seed) % 251`.
fn big(seed: u32) -> Vec<u8> {
    (0..4096u32)
        .map(|i| ((i * 31 + seed) % 251) as u8)
        .collect()
}

/// Filler, written before the `DeleteAll` so that the first log segment fills up and is pruned
/// by the second checkpoint: 4000 bytes of `(i + seed) % 256`.
fn filler(seed: u32) -> Vec<u8> {
    (0..4000u32).map(|i| ((i + seed) % 256) as u8).collect()
}

/// The options the fixture was written with: 16 KiB segments (so that several exist and the
/// first is pruned), values up to 4096 bytes, no background thread (so no active expiry removes
/// the expired keys and no automatic checkpoint interferes), LZ4-compressed snapshots and
/// `retention = 0` (the defaults).
fn writer_options() -> Options {
    Options {
        wal: keel_wal::Options {
            segment_bytes_max: 16 << 10,
            record_bytes_max: 8 << 10,
            batch_bytes_max: 12 << 10,
            queue_bytes_max: 256 << 10,
            prepare_segments_in_background: false,
            ..keel_wal::Options::default()
        },
        key_bytes_max: 256,
        value_bytes_max: 4096,
        background: false,
        ..Options::default()
    }
}

/// Writes the v1 fixture into `$KEEL_WRITE_V1_FIXTURE` (a directory that must not exist yet).
///
/// **Do not run this again.** The committed fixture is frozen: it stands for directories that
/// today's users have on disk. It was written once, with the v1 formats, by
///
/// ```text
/// KEEL_WRITE_V1_FIXTURE=/tmp/v1-database cargo test -p keel-engine --test upgrade \
///     -- --ignored write_v1_fixture
/// rm /tmp/v1-database/wal/LOCK
/// cp -r /tmp/v1-database crates/keel-engine/tests/fixtures/v1-database
/// ```
///
/// After the keyspace or a format changes, this function no longer writes v1. Keep it (adapted
/// only as far as it must be to compile) as the recipe of what the fixture holds, or delete it:
/// the fixture and the literals below are what count. The LSNs it asserts after each step are
/// the versions that [`expected_entries`] lists.
#[test]
#[ignore = "writes the frozen v1 fixture; see the doc comment, never re-run"]
fn write_v1_fixture() {
    let Some(out) = std::env::var_os("KEEL_WRITE_V1_FIXTURE") else {
        panic!("set KEEL_WRITE_V1_FIXTURE to a directory that does not exist yet");
    };
    let out = PathBuf::from(out);
    assert!(
        !out.exists(),
        "{} exists: refusing to write over it",
        out.display()
    );
    let (e, _) = Engine::open(&out, writer_options()).unwrap();
    let at = |lsn: u64| assert_eq!(e.visible_lsn(), lsn, "the recipe's LSNs changed");

    // --- Before the first checkpoint (LSNs 1..=33): in snapshot 1 and snapshot 2. ---
    // 1..=4: filler that fills the first 16 KiB segment; 5: FLUSHALL removes it.
    for i in 0..4u32 {
        e.put(format!("doomed/{i}"), filler(i)).unwrap();
    }
    at(4);
    e.commit(vec![], vec![Write::DeleteAll]).unwrap();
    at(5);
    e.put("plain", "hello").unwrap(); // 6
    e.put("empty", "").unwrap(); // 7
    e.put(&b"bin\x00\xff\n"[..], all_bytes()).unwrap(); // 8
    e.put("big", big(0)).unwrap(); // 9
    e.put("overwritten", "first").unwrap(); // 10
    e.put("overwritten", "second").unwrap(); // 11
    e.put("deleted", "gone soon").unwrap(); // 12
    assert!(e.delete("deleted").unwrap()); // 13
    assert_eq!(e.incr("counter", 40).unwrap(), 40); // 14
    assert_eq!(e.incr("counter", 2).unwrap(), 42); // 15
    let ttl = |k: &[u8], v: &[u8], t| e.commit(vec![], vec![put(k, v, Ttl::At(t))]).unwrap();
    ttl(b"ttl/future", b"until 2100", FAR_FUTURE_MS); // 16
    ttl(b"ttl/past", b"expired before it was written", PAST_MS); // 17
    at(17);
    e.put("cas", "v1").unwrap(); // 18
    assert_eq!(e.compare_and_set("cas", Some(18), "v2").unwrap(), Some(19));
    assert_eq!(e.compare_and_set("cas", Some(18), "v3").unwrap(), None); // no record
    assert_eq!(
        e.compare_and_set("cas/new", None, "created").unwrap(),
        Some(20)
    );
    // 21: a MULTI-like batch, one record.
    let o = e
        .commit(
            vec![],
            vec![
                put(b"batch/a", b"1", Ttl::None),
                Write::Append {
                    key: b(b"batch/a"),
                    suffix: b(b"+x"),
                },
                put(b"batch/b", b"2", Ttl::At(FAR_FUTURE_2_MS)),
                Write::Incr {
                    key: b(b"batch/n"),
                    by: 3,
                },
                Write::Delete {
                    key: b(b"no such key"),
                },
            ],
        )
        .unwrap();
    assert_eq!(
        o,
        Outcome::Committed {
            lsn: Some(21),
            results: vec![
                WriteResult::Put(true),
                WriteResult::Int(3),
                WriteResult::Put(true),
                WriteResult::Int(3),
                WriteResult::Existed(false),
            ],
            effects: vec![],
        }
    );
    // 22..=27: idempotent requests, one of each outcome encoding.
    for (id, guards, writes, expect) in requests_before_checkpoint_1() {
        assert_eq!(
            e.commit_request(id, guards, writes).unwrap(),
            expect,
            "{id}"
        );
    }
    at(27);
    e.put("rename/from", "moved").unwrap(); // 28
    let rename = Write::Rename {
        from: b(b"rename/from"),
        to: b(b"rename/to"),
        only_if_absent: false,
    };
    e.commit(vec![], vec![rename]).unwrap(); // 29
    let fl = |by| Write::IncrFloat {
        key: b(b"float"),
        by,
    };
    e.commit(vec![], vec![fl(0.1)]).unwrap(); // 30
    e.commit(vec![], vec![fl(0.2)]).unwrap(); // 31
    ttl(b"ttl/persisted", b"had an expiry", FAR_FUTURE_MS); // 32
    let persist = Write::Expire {
        key: b(b"ttl/persisted"),
        at_ms: None,
        only: keel_engine::ExpireIf::HasExpiry,
    };
    e.commit(vec![], vec![persist]).unwrap(); // 33
    at(33);
    assert_eq!(e.checkpoint().unwrap(), SNAPSHOT_1_LSN);

    // --- Between the checkpoints (LSNs 34..=38): in snapshot 2, and in the log after
    // snapshot 1. ---
    e.put("phase/b", "between checkpoints").unwrap(); // 34
    assert!(e.delete("cas/new").unwrap()); // 35
    assert_eq!(e.incr("counter", 58).unwrap(), 100); // 36
    for (id, guards, writes, expect) in requests_between_checkpoints() {
        assert_eq!(
            e.commit_request(id, guards, writes).unwrap(),
            expect,
            "{id}"
        );
    }
    e.put("big/2", big(7)).unwrap(); // 38
    at(38);
    assert_eq!(e.checkpoint().unwrap(), SNAPSHOT_2_LSN);

    // --- After the last checkpoint (LSNs 39..=50): only in the log, replayed on open. The two
    // large values fill the active segment, so it is sealed and a new one holds the rest. ---
    e.put("phase/c", "after the last checkpoint").unwrap(); // 39
    e.put("big/3", big(13)).unwrap(); // 40
    e.put("overwritten", "third").unwrap(); // 41
    assert!(e.delete("rename/to").unwrap()); // 42
    e.put("big/2", big(11)).unwrap(); // 43
    assert_eq!(e.incr("counter", 1).unwrap(), 101); // 44
    for (id, guards, writes, expect) in requests_after_checkpoint_2() {
        assert_eq!(
            e.commit_request(id, guards, writes).unwrap(),
            expect,
            "{id}"
        );
    }
    at(46);
    ttl(b"ttl/past-log", b"expired, in the log", PAST_MS); // 47
    ttl(b"ttl/future-log", b"until 2100, in the log", FAR_FUTURE_MS); // 48
    let o = e
        .commit(
            vec![Guard {
                key: b(b"batch/n"),
                version: Some(21),
            }],
            vec![
                put(b"batch/c", b"", Ttl::None),
                Write::Delete { key: b(b"batch/b") },
                Write::Incr {
                    key: b(b"batch/n"),
                    by: 1,
                },
            ],
        )
        .unwrap(); // 49
    assert!(
        matches!(o, Outcome::Committed { lsn: Some(49), .. }),
        "{o:?}"
    );
    assert_eq!(e.compare_and_set("cas", Some(19), "v4").unwrap(), Some(50));
    at(FINAL_LSN);
    assert_eq!(e.durable_lsn(), FINAL_LSN);
    e.close().unwrap();
}

/// LSN of the older snapshot, which retention keeps as the fallback.
const SNAPSHOT_1_LSN: u64 = 33;
/// LSN of the snapshot the MANIFEST names.
const SNAPSHOT_2_LSN: u64 = 38;
/// The last record.
const FINAL_LSN: u64 = 50;

type Req = (&'static str, Vec<Guard>, Vec<Write>, Outcome);

fn committed(lsn: Option<u64>, results: Vec<WriteResult>) -> Outcome {
    Outcome::Committed {
        lsn,
        results,
        effects: vec![],
    }
}

/// LSNs 22..=27.
fn requests_before_checkpoint_1() -> Vec<Req> {
    use WriteResult::*;
    vec![
        (
            "req-put",
            vec![],
            vec![put(b"idem/put", b"once", Ttl::None)],
            committed(Some(22), vec![Put(true)]),
        ),
        (
            "req-incr",
            vec![],
            vec![Write::Incr {
                key: b(b"idem/counter"),
                by: 10,
            }],
            committed(Some(23), vec![Int(10)]),
        ),
        (
            "req-guard",
            vec![Guard {
                key: b(b"cas"),
                version: Some(1),
            }],
            vec![put(b"idem/never", b"x", Ttl::None)],
            Outcome::GuardFailed(0),
        ),
        (
            "req-nx",
            vec![],
            vec![Write::Put {
                key: b(b"plain"),
                value: b(b"no"),
                ttl: Ttl::None,
                only: PutIf::Absent,
            }],
            committed(None, vec![Put(false)]),
        ),
        (
            "req-get",
            vec![],
            vec![
                Write::Get { key: b(b"plain") },
                Write::Get {
                    key: b(b"no such key"),
                },
                Write::Delete {
                    key: b(b"no such key"),
                },
            ],
            committed(
                None,
                vec![Value(Some(b(b"hello"))), Value(None), Existed(false)],
            ),
        ),
        (
            "req-fail",
            vec![],
            vec![
                Write::Incr {
                    key: b(b"plain"),
                    by: 1,
                },
                Write::IncrFloat {
                    key: b(b"plain"),
                    by: 1.0,
                },
                Write::Rename {
                    from: b(b"no such key"),
                    to: b(b"x"),
                    only_if_absent: false,
                },
                Write::Incr {
                    key: b(b"counter"),
                    by: i64::MAX,
                },
            ],
            committed(
                None,
                vec![
                    Failed(WriteError::NotAnInteger),
                    Failed(WriteError::NotAFloat),
                    Failed(WriteError::NoSuchKey),
                    Failed(WriteError::Overflow),
                ],
            ),
        ),
    ]
}

/// LSN 37.
fn requests_between_checkpoints() -> Vec<Req> {
    use WriteResult::*;
    vec![(
        "req-b",
        vec![],
        vec![
            put(b"idem/b", b"b", Ttl::At(FAR_FUTURE_MS)),
            Write::Delete {
                key: b(b"idem/put"),
            },
            put(b"idem/b", b"b again", Ttl::Keep),
        ],
        committed(Some(37), vec![Put(true), Existed(true), Put(true)]),
    )]
}

/// LSNs 45..=46.
fn requests_after_checkpoint_2() -> Vec<Req> {
    use WriteResult::*;
    vec![
        (
            "req-c",
            vec![],
            vec![Write::Incr {
                key: b(b"idem/counter"),
                by: 5,
            }],
            committed(Some(45), vec![Int(15)]),
        ),
        (
            "req-c-guard",
            vec![Guard {
                key: b(b"cas"),
                version: Some(999),
            }],
            vec![Write::DeleteAll],
            Outcome::GuardFailed(0),
        ),
    ]
}

/// The fixture's files: path, length and FNV-1a 64 of the bytes. (Not CRC32C: a snapshot or
/// manifest ends with the CRC32C of what precedes it, so the CRC32C of the whole file is the
/// same constant for all of them.)
const FIXTURE_FILES: [(&str, u64, u64); 5] = [
    ("MANIFEST", 40, 0x1c9c488e4b881b44),
    (
        "snapshots/snap-00000000000000000033.keel",
        1203,
        0x3fd67adf5ec50c8f,
    ),
    (
        "snapshots/snap-00000000000000000038.keel",
        1283,
        0xae407fc2bd2821b7,
    ),
    (
        "wal/wal-00000000000000000005-00000000000000000042.sealed",
        15776,
        0xdec9d2e0fbc12dc5,
    ),
    (
        "wal/wal-00000000000000000043.open",
        16384,
        0xc3c325426c61a324,
    ),
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-database")
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Every file under `dir`, as paths relative to it, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.push(rel.to_str().unwrap().replace('\\', "/"));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// The committed fixture holds exactly the files it was written with, byte for byte: it was
/// neither regenerated nor changed (by a test, a checkout's line-ending conversion, or a hand).
fn assert_fixture_frozen() {
    let dir = fixture();
    let want: Vec<String> = FIXTURE_FILES.iter().map(|f| f.0.to_string()).collect();
    assert_eq!(files(&dir), want, "the v1 fixture's files changed");
    for (name, len, hash) in FIXTURE_FILES {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            (bytes.len() as u64, fnv1a64(&bytes)),
            (len, hash),
            "{name} changed: the v1 fixture is frozen and must never be rewritten"
        );
    }
}

/// A copy of the fixture in a temporary directory: opening writes (it marks the log open,
/// checkpoints), so the committed files are never opened themselves.
fn copy_of_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    for name in files(&fixture()) {
        let to = db.join(&name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixture().join(&name), &to).unwrap();
    }
    (tmp, db)
}

/// The options a release opens an existing directory with: the defaults (64 MiB segments, where
/// the fixture's are 16 KiB), without the background thread, and remembering request ids for
/// ever, since the fixture's are older than the default 24 hours by the time this runs.
fn reader_options() -> Options {
    Options {
        background: false,
        request_retention_ms: u64::MAX,
        ..Options::default()
    }
}

fn entry(value: &[u8], version: u64, expires_at_ms: Option<u64>) -> Entry {
    Entry {
        value: b(value),
        version,
        expires_at_ms,
    }
}

/// Every live key at LSN 50, in key order, with its value, version and expiry.
fn expected_entries() -> Vec<(Bytes, Entry)> {
    let far = Some(FAR_FUTURE_MS);
    let v: Vec<(&[u8], Entry)> = vec![
        (b"batch/a", entry(b"1+x", 21, None)),
        (b"batch/c", entry(b"", 49, None)),
        (b"batch/n", entry(b"4", 49, None)),
        (b"big", entry(&big(0), 9, None)),
        (b"big/2", entry(&big(11), 43, None)),
        (b"big/3", entry(&big(13), 40, None)),
        (b"bin\x00\xff\n", entry(&all_bytes(), 8, None)),
        (b"cas", entry(b"v4", 50, None)),
        (b"counter", entry(b"101", 44, None)),
        (b"empty", entry(b"", 7, None)),
        (b"float", entry(b"0.3", 31, None)),
        (b"idem/b", entry(b"b again", 37, far)),
        (b"idem/counter", entry(b"15", 45, None)),
        (b"overwritten", entry(b"third", 41, None)),
        (b"phase/b", entry(b"between checkpoints", 34, None)),
        (b"phase/c", entry(b"after the last checkpoint", 39, None)),
        (b"plain", entry(b"hello", 6, None)),
        (b"ttl/future", entry(b"until 2100", 16, far)),
        (b"ttl/future-log", entry(b"until 2100, in the log", 48, far)),
        (b"ttl/persisted", entry(b"had an expiry", 33, None)),
    ];
    v.into_iter().map(|(k, e)| (b(k), e)).collect()
}

/// Held with an expiry in the past: counted in `RecoveryReport::keys`, never served.
const EXPIRED: [&[u8]; 2] = [b"ttl/past", b"ttl/past-log"];

/// Written and then deleted, removed by FLUSHALL, renamed away, or never written.
const ABSENT: [&[u8]; 13] = [
    b"doomed/0",
    b"doomed/1",
    b"doomed/2",
    b"doomed/3",
    b"deleted",
    b"cas/new",
    b"rename/from",
    b"rename/to",
    b"idem/put",
    b"idem/never",
    b"batch/b",
    b"no such key",
    b"x",
];

fn assert_state(e: &Engine) {
    assert_eq!(e.visible_lsn(), FINAL_LSN);
    assert_eq!(e.durable_lsn(), FINAL_LSN);
    let (lsn, live, count) = e.read(|v| {
        let mut live: Vec<(Bytes, Entry)> = v.iter().collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        (v.lsn(), live, v.count())
    });
    assert_eq!(lsn, FINAL_LSN);
    let want = expected_entries();
    for (got, want) in live.iter().zip(&want) {
        assert_eq!(got, want);
    }
    assert_eq!(live, want);
    assert_eq!(count, want.len());
    for (k, v) in &want {
        assert_eq!(e.get(k).as_ref(), Some(v), "{k:?}");
    }
    for k in EXPIRED.iter().chain(&ABSENT) {
        assert_eq!(e.get(k), None, "{:?}", b(k));
        assert!(e.read(|v| v.get(k).is_none()), "{:?}", b(k));
    }
}

/// Every remembered request id is recognised: a retry, even with other writes, returns the
/// original outcome and applies nothing.
fn assert_requests_remembered(e: &Engine) {
    let all = requests_before_checkpoint_1()
        .into_iter()
        .chain(requests_between_checkpoints())
        .chain(requests_after_checkpoint_2());
    let mut n = 0;
    for (id, _, _, outcome) in all {
        let retry = vec![put(b"retry/must-not-apply", id.as_bytes(), Ttl::None)];
        assert_eq!(
            e.commit_request(id, vec![], retry).unwrap(),
            outcome,
            "{id}"
        );
        n += 1;
    }
    assert_eq!(n, 9);
    assert_eq!(e.get(b"retry/must-not-apply"), None);
    assert_eq!(e.visible_lsn(), FINAL_LSN, "a retry logged nothing");
}

#[test]
fn the_v1_fixture_opens_with_every_byte_of_its_state() {
    assert_fixture_frozen();
    let (_tmp, db) = copy_of_fixture();

    let (e, report) = Engine::open(&db, reader_options()).unwrap();
    // The MANIFEST names snapshot 38; the log after it is replayed; it had been closed cleanly.
    assert_eq!(report.snapshot_lsn, SNAPSHOT_2_LSN);
    assert_eq!(report.snapshot_bytes, 1283);
    assert_eq!(report.records_replayed, FINAL_LSN - SNAPSHOT_2_LSN);
    assert_eq!(report.lsn, FINAL_LSN);
    assert_eq!(report.keys, expected_entries().len() + EXPIRED.len());
    assert!(report.damaged.is_empty(), "{report}");
    assert_eq!(
        report.wal.first_lsn, 5,
        "segments below snapshot 33 were pruned"
    );
    assert_eq!(report.wal.last_lsn, FINAL_LSN);
    assert_eq!(report.wal.segments, 2);
    assert!(report.wal.torn_tail.is_none(), "{report}");
    let mark = report.wal.end_mark.as_ref().expect("closed with a mark");
    assert!(mark.closed && mark.durable_lsn == FINAL_LSN, "{mark:?}");
    assert_state(&e);
    assert_requests_remembered(&e);

    // The next checkpoint writes the current format (v4: typed entries and the system
    // namespace); the state and the request ids survive it.
    assert_eq!(e.checkpoint().unwrap(), FINAL_LSN);
    e.close().unwrap();
    let newest = db
        .join("snapshots")
        .join(format!("snap-{FINAL_LSN:020}.keel"));
    let header = std::fs::read(&newest).unwrap();
    assert_eq!(
        u32::from_le_bytes(header[8..12].try_into().unwrap()),
        keel_engine::snapshot::SNAPSHOT_VERSION
    );
    assert_eq!(keel_engine::snapshot::SNAPSHOT_VERSION, 4);
    let (e, report) = Engine::open(&db, reader_options()).unwrap();
    assert_eq!(report.snapshot_lsn, FINAL_LSN);
    assert_eq!(report.records_replayed, 0);
    assert!(report.damaged.is_empty(), "{report}");
    assert_state(&e);
    assert_requests_remembered(&e);

    // The system namespace, new in v2, works on the upgraded database: from the log, then from
    // a snapshot.
    let position = Write::System {
        key: b(b"position"),
        value: b(b"after the upgrade"),
    };
    e.commit(vec![], vec![position]).unwrap();
    e.close().unwrap();
    for checkpoint in [true, false] {
        let (e, _) = Engine::open(&db, reader_options()).unwrap();
        assert_eq!(e.system(b"position"), Some(b(b"after the upgrade")));
        assert_eq!(e.get(b"position"), None, "not a user key");
        if checkpoint {
            assert_eq!(e.checkpoint().unwrap(), FINAL_LSN + 1);
        }
        e.close().unwrap();
    }

    assert_fixture_frozen();
}

/// The older snapshot and the log after it are read too: with the newest snapshot damaged, the
/// copy opens from snapshot 33 and replays 34..=50 into the same state (P13).
#[test]
fn the_v1_fixture_opens_from_its_older_snapshot_and_log() {
    let (_tmp, db) = copy_of_fixture();
    let newest = db.join(FIXTURE_FILES[2].0);
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();

    let (e, report) = Engine::open(&db, reader_options()).unwrap();
    assert_eq!(report.snapshot_lsn, SNAPSHOT_1_LSN);
    assert_eq!(report.records_replayed, FINAL_LSN - SNAPSHOT_1_LSN);
    assert_eq!(report.damaged.len(), 1, "{report}");
    assert_state(&e);
    assert_requests_remembered(&e);
    e.close().unwrap();
    assert_fixture_frozen();
}

/// The other direction, which only a release from before a format change can get right: a
/// snapshot whose checksum holds but whose version this code does not know was written by a
/// newer keel. Opening refuses, as it does for such a MANIFEST, and moves nothing: taking it for
/// damage would set the newer snapshot aside, rewrite the MANIFEST to an older base and replay
/// newer records with older code (or, with no older base left, report damage that is not there).
#[test]
fn a_snapshot_of_a_newer_version_is_refused_not_taken_for_damage() {
    let (_tmp, db) = copy_of_fixture();
    let newest = db.join(FIXTURE_FILES[2].0);
    let mut snap = std::fs::read(&newest).unwrap();
    snap[8..12].copy_from_slice(&5u32.to_le_bytes());
    // The MANIFEST a newer keel would have written for it: same version, the new file's CRC.
    let snap = rewrite_named_snapshot(&db, &newest, snap);
    let before = files(&db);

    for opened in [
        Engine::open(&db, reader_options()).map(|_| ()),
        keel_engine::inspect(&db, &reader_options()).map(|_| ()),
    ] {
        let err = opened.expect_err("a newer snapshot version must not open");
        assert!(
            matches!(
                &err,
                keel_engine::Error::BadFile {
                    source: keel_engine::snapshot::FileError::Version(5),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("unsupported version 5"), "{err}");
    }
    assert_eq!(files(&db), before, "nothing moved or removed");
    assert_eq!(std::fs::read(&newest).unwrap(), snap);
}

/// The release before snapshot v4 (commit 5fc2350) wrote snapshot v2, and v3 when encrypted.
/// `tests/fixtures/v2-database/` and `v3-database/` were written by that release's `keel serve`
/// (the second with `v3-database.keys`, a test key), frozen like the v1 fixture:
///
/// ```text
/// SET plain value; SET bin <bytes 00..ff>; SET ttl far; PEXPIREAT ttl 4102444800000;
/// SET counter 41; INCR counter; SET gone x; DEL gone; SET empty ""      (LSNs 1-9)
/// SAVE                                                                  (snapshot at 9)
/// SET after "in the log"; SHUTDOWN                                      (LSN 10, in the log)
/// ```
///
/// The log's one segment is cut to its first 4 KiB (everything after is zeros), so that the
/// fixture is not 64 MiB.
const V2_V3_FILES: [(&str, &str, u64, u64); 6] = [
    ("v2-database", "MANIFEST", 40, 0xb8c1846af08786e4),
    (
        "v2-database",
        "snapshots/snap-00000000000000000009.keel",
        439,
        0x1154ea18b410ad22,
    ),
    (
        "v2-database",
        "wal/wal-00000000000000000001.open",
        4096,
        0xbacca451572c5db8,
    ),
    ("v3-database", "MANIFEST", 40, 0x7fbf80571016c761),
    (
        "v3-database",
        "snapshots/snap-00000000000000000009.keel",
        483,
        0x662470fb478eaad3,
    ),
    (
        "v3-database",
        "wal/wal-00000000000000000001.open",
        4096,
        0x20be302508f8ccb8,
    ),
];

fn assert_v2_v3_state(e: &Engine, fixture: &str) {
    let want: [(&[u8], Option<Entry>); 7] = [
        (b"plain", Some(entry(b"value", 1, None))),
        (b"bin", Some(entry(&all_bytes(), 2, None))),
        (b"ttl", Some(entry(b"far", 4, Some(FAR_FUTURE_MS)))),
        (b"counter", Some(entry(b"42", 6, None))),
        (b"gone", None),
        (b"empty", Some(entry(b"", 9, None))),
        (b"after", Some(entry(b"in the log", 10, None))),
    ];
    for (k, v) in want {
        assert_eq!(e.get(k), v, "{fixture}: {}", String::from_utf8_lossy(k));
    }
    assert_eq!(e.read(|v| v.count()), 6, "{fixture}");
}

#[test]
fn v2_and_encrypted_v3_databases_open_and_their_next_checkpoint_is_v4() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (dir, name, len, hash) in V2_V3_FILES {
        let bytes = std::fs::read(root.join(dir).join(name)).unwrap();
        assert_eq!(
            (bytes.len() as u64, fnv1a64(&bytes)),
            (len, hash),
            "{dir}/{name} is frozen"
        );
    }
    let keys = std::fs::read_to_string(root.join("v3-database.keys")).unwrap();
    for (fixture, encrypted) in [("v2-database", false), ("v3-database", true)] {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        for name in files(&root.join(fixture)) {
            let to = db.join(&name);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(root.join(fixture).join(&name), &to).unwrap();
        }
        let mut opts = reader_options();
        if encrypted {
            opts.wal.keyring = Some(std::sync::Arc::new(
                keel_wal::crypt::Keyring::parse(&keys).unwrap(),
            ));
        }
        let (e, report) = Engine::open(&db, opts.clone()).unwrap();
        assert_eq!(
            (report.snapshot_lsn, report.records_replayed),
            (9, 1),
            "{fixture}"
        );
        assert!(report.damaged.is_empty(), "{fixture}: {report}");
        assert_v2_v3_state(&e, fixture);
        assert_eq!(e.checkpoint().unwrap(), 10);
        e.close().unwrap();
        let snap = std::fs::read(db.join("snapshots/snap-00000000000000000010.keel")).unwrap();
        let word = |at: usize| u32::from_le_bytes(snap[at..at + 4].try_into().unwrap());
        assert_eq!(word(8), 4, "{fixture}: the next checkpoint writes v4");
        assert_eq!(
            word(12) & 2 != 0,
            encrypted,
            "{fixture}: the encrypted flag"
        );
        let (e, report) = Engine::open(&db, opts).unwrap();
        assert_eq!(
            (report.snapshot_lsn, report.records_replayed),
            (10, 0),
            "{fixture}"
        );
        assert_v2_v3_state(&e, fixture);
    }
}

/// A v4 snapshot whose checksum holds but which holds a value of a type this keel cannot (here a
/// kind code past the five it knows, as a newer keel with streams would write) is refused as
/// `Unloadable`, never set aside as damage: opening fails with nothing moved, and a restore
/// from it fails rather than quietly falling back to an older base (P13).
#[test]
fn a_snapshot_with_a_value_this_keel_cannot_hold_is_refused_not_taken_for_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let opts = Options {
        compress_snapshots: false,
        ..reader_options()
    };
    let (e, _) = Engine::open(&db, opts.clone()).unwrap();
    e.commit(vec![], vec![put(b"k", b"v", Ttl::None)]).unwrap();
    let lsn = e.checkpoint().unwrap();
    e.close().unwrap();
    let snap_path = db.join(format!("snapshots/snap-{lsn:020}.keel"));
    let mut snap = std::fs::read(&snap_path).unwrap();
    // Uncompressed and unencrypted: the first entry's kind byte follows the 48-byte header, the
    // 16-byte file id and the first block's 8-byte header.
    assert_eq!(snap[72], 0, "a string entry");
    snap[72] = 6;
    let _ = rewrite_named_snapshot(&db, &snap_path, snap);
    let before = files(&db);

    let unloadable = |err: &keel_engine::Error| {
        matches!(
            err,
            keel_engine::Error::BadFile {
                source: keel_engine::snapshot::FileError::Unloadable(k),
                ..
            } if k == "a value of kind 6"
        )
    };
    let err = Engine::open(&db, opts.clone())
        .err()
        .expect("must not open");
    assert!(unloadable(&err), "{err}");
    assert!(err.to_string().contains("newer keel"), "{err}");
    let target = tmp.path().join("restored");
    let err = keel_engine::restore(&db, &target, keel_engine::RestoreTarget::Lsn(lsn), &opts)
        .expect_err("a restore must not skip it");
    assert!(unloadable(&err), "{err}");
    assert_eq!(files(&db), before, "nothing moved or removed");
}

/// Writes `snap` (an altered copy of the snapshot the MANIFEST of `db` names) to `path` with its
/// trailing CRC recomputed, and the MANIFEST with that CRC and its own: files whose checksums
/// hold, as a newer keel would write them. Returns the file's bytes.
fn rewrite_named_snapshot(
    db: &std::path::Path,
    path: &std::path::Path,
    mut snap: Vec<u8>,
) -> Vec<u8> {
    let crc = |b: &[u8]| crc32c::crc32c(b).to_le_bytes();
    let end = snap.len() - 4;
    let snap_crc = crc(&snap[..end]);
    snap[end..].copy_from_slice(&snap_crc);
    std::fs::write(path, &snap).unwrap();
    let manifest = db.join("MANIFEST");
    let mut m = std::fs::read(&manifest).unwrap();
    m[32..36].copy_from_slice(&snap_crc);
    let m_crc = crc(&m[..36]);
    m[36..40].copy_from_slice(&m_crc);
    std::fs::write(&manifest, &m).unwrap();
    snap
}
