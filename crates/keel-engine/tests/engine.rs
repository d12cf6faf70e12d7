//! keel-engine on the real disk.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use keel_engine::{Engine, Error, Guard, Options, Outcome, PutIf, Ttl, Write, WriteResult};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str, ttl: Ttl, only: PutIf) -> Write {
    Write::Put {
        key: b(key),
        value: b(value),
        ttl,
        only,
    }
}

#[test]
fn writes_reads_and_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let v1 = e.put("a", "1").unwrap();
    assert_eq!(e.get(b"a").unwrap().value, "1");
    assert_eq!(e.get(b"a").unwrap().version, v1);

    // put-if-absent / put-if-present
    let r = e
        .commit(
            vec![],
            vec![
                put("a", "x", Ttl::None, PutIf::Absent),
                put("b", "2", Ttl::None, PutIf::Present),
            ],
        )
        .unwrap();
    assert_eq!(
        r,
        Outcome::Committed {
            lsn: None,
            results: vec![WriteResult::Put(false), WriteResult::Put(false)],
            effects: vec![],
        }
    );
    assert_eq!(e.get(b"a").unwrap().value, "1");
    assert!(e.get(b"b").is_none());

    // compare-and-set on versions
    assert_eq!(e.compare_and_set("a", Some(v1 + 100), "no").unwrap(), None);
    let v2 = e.compare_and_set("a", Some(v1), "yes").unwrap().unwrap();
    assert!(v2 > v1);
    assert!(e.compare_and_set("new", None, "fresh").unwrap().is_some());
    assert_eq!(e.compare_and_set("new", None, "again").unwrap(), None);

    // increments log absolute values
    assert_eq!(e.incr("n", 5).unwrap(), 5);
    assert_eq!(e.incr("n", -7).unwrap(), -2);
    assert!(matches!(e.incr("a", 1), Err(Error::NotAnInteger)));
    e.put("max", i64::MAX.to_string()).unwrap();
    assert!(matches!(e.incr("max", 1), Err(Error::Overflow)));

    // a failed guard writes nothing, even the writes before it in the list
    let r = e
        .commit(
            vec![Guard {
                key: b("a"),
                version: Some(v1),
            }],
            vec![put("z", "1", Ttl::None, PutIf::Always)],
        )
        .unwrap();
    assert_eq!(r, Outcome::GuardFailed(0));
    assert!(e.get(b"z").is_none());

    // an atomic batch, where later writes see earlier ones
    let r = e
        .commit(
            vec![],
            vec![
                Write::Incr { key: b("c"), by: 1 },
                Write::Incr { key: b("c"), by: 1 },
                Write::Delete { key: b("n") },
            ],
        )
        .unwrap();
    match r {
        Outcome::Committed {
            lsn: Some(_),
            results,
            ..
        } => {
            assert_eq!(
                results,
                vec![
                    WriteResult::Int(1),
                    WriteResult::Int(2),
                    WriteResult::Existed(true)
                ]
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.delete("n").unwrap());

    // expiry in the past hides the key; KEEPTTL keeps it
    let r = e
        .commit(
            vec![],
            vec![Write::Expire {
                only: keel_engine::ExpireIf::Always,
                key: b("a"),
                at_ms: Some(1),
            }],
        )
        .unwrap();
    assert!(matches!(r, Outcome::Committed { lsn: Some(_), .. }));
    assert!(e.get(b"a").is_none(), "expired");
    let far = 4_000_000_000_000;
    e.commit(vec![], vec![put("t", "1", Ttl::At(far), PutIf::Always)])
        .unwrap();
    e.commit(vec![], vec![put("t", "2", Ttl::Keep, PutIf::Always)])
        .unwrap();
    assert_eq!(e.get(b"t").unwrap().expires_at_ms, Some(far));

    // scans and counts see live keys only
    e.read(|snap| {
        let (page, next) = snap.scan(0, 100);
        assert_eq!(next, 0, "one step covers a small keyspace");
        let keys: BTreeSet<Bytes> = page.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [b("c"), b("max"), b("new"), b("t")].into());
        assert_eq!(snap.count(), 4);
        assert_eq!(snap.keys().count(), 4);
    });

    e.commit(vec![], vec![Write::DeleteAll]).unwrap();
    assert_eq!(e.read(|v| v.count()), 0);
}

#[test]
fn limits_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert!(matches!(
        e.put(vec![0u8; 257], "v"),
        Err(Error::KeyTooLarge { len: 257, max: 256 })
    ));
    assert!(matches!(
        e.put("k", vec![0u8; 4097]),
        Err(Error::ValueTooLarge { .. })
    ));
    let many: Vec<Write> = (0..10)
        .map(|i| Write::Put {
            key: b(&format!("k{i}")),
            value: Bytes::from(vec![0u8; 4000]),
            ttl: Ttl::None,
            only: PutIf::Always,
        })
        .collect();
    assert!(matches!(
        e.commit(vec![], many),
        Err(Error::TxnTooLarge { .. })
    ));
    assert_eq!(
        e.read(|v| v.count()),
        0,
        "nothing of a refused transaction is applied"
    );
    let bad = Options {
        value_bytes_max: 1 << 30,
        ..Options::small_for_tests()
    };
    assert!(matches!(
        Engine::open(dir.path().join("x"), bad),
        Err(Error::InvalidOptions(_))
    ));
}

fn system(key: &str, value: &str) -> Write {
    Write::System {
        key: b(key),
        value: b(value),
    }
}

/// The system namespace holds an embedder's bookkeeping beside the keyspace: written atomically
/// with user writes, kept by the log, checkpoints, backups and point-in-time restores, and
/// invisible to every user read; a DeleteAll leaves it.
#[test]
fn the_system_namespace_is_durable_and_apart_from_user_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (e, _) = Engine::open(&db, Options::small_for_tests()).unwrap();
    let o = e
        .commit(
            vec![],
            vec![
                put("pos", "user value", Ttl::None, PutIf::Always),
                system("pos", "1"),
            ],
        )
        .unwrap();
    assert!(matches!(o, Outcome::Committed { ref results, .. }
        if results == &[WriteResult::Put(true), WriteResult::Put(true)]));
    let at_1 = e.visible_lsn();
    assert_eq!(e.system(b"pos"), Some(b("1")));
    assert_eq!(e.get(b"pos").unwrap().value, "user value");
    e.commit(vec![], vec![Write::DeleteAll, system("pos", "2")])
        .unwrap();
    e.read(|s| {
        assert_eq!((s.count(), s.iter().count()), (0, 0), "no user key is left");
        assert_eq!(
            s.system(b"pos"),
            Some(&b("2")),
            "DeleteAll leaves the system namespace"
        );
        assert_eq!(s.system(b"other"), None);
    });
    // A guard on the user key of the same name sees only the user key (now gone).
    let guard = Guard {
        key: b("pos"),
        version: None,
    };
    assert!(matches!(
        e.commit(vec![guard], vec![system("pos", "3")]).unwrap(),
        Outcome::Committed { .. }
    ));
    e.close().unwrap();

    // From the log, then from a snapshot.
    for checkpoint in [true, false] {
        let (e, _) = Engine::open(&db, Options::small_for_tests()).unwrap();
        assert_eq!(e.system(b"pos"), Some(b("3")));
        assert_eq!(e.get(b"pos"), None);
        if checkpoint {
            e.checkpoint().unwrap();
        }
        e.close().unwrap();
    }
    // Backups and point-in-time restores carry it, as of their point; it can be read without
    // opening the database, also while it is open.
    let (e, _) = Engine::open(&db, Options::small_for_tests()).unwrap();
    e.commit(vec![], vec![system("pos", "4"), system("other", "x")])
        .unwrap();
    let read = keel_engine::read_system(&db, &Options::small_for_tests()).unwrap();
    assert_eq!(
        read.get(&b("pos")),
        Some(&b("4")),
        "from the log after the snapshot"
    );
    assert_eq!(read.get(&b("other")), Some(&b("x")));
    e.checkpoint().unwrap();
    let read = keel_engine::read_system(&db, &Options::small_for_tests()).unwrap();
    assert_eq!(read.get(&b("pos")), Some(&b("4")), "from the snapshot");
    e.commit(vec![], vec![system("pos", "3")]).unwrap();
    let backup = dir.path().join("backup");
    e.backup(&backup).unwrap();
    assert_eq!(e.backup_view().system(b"pos"), Some(&b("3")));
    e.close().unwrap();
    let restored = dir.path().join("restored");
    keel_engine::restore(
        &db,
        &restored,
        keel_engine::RestoreTarget::Lsn(at_1),
        &Options::small_for_tests(),
    )
    .unwrap();
    for (path, pos, user) in [(&backup, "3", None), (&restored, "1", Some("user value"))] {
        let (e, _) = Engine::open(path, Options::small_for_tests()).unwrap();
        assert_eq!(e.system(b"pos"), Some(b(pos)), "{}", path.display());
        assert_eq!(e.get(b"pos").map(|e| e.value), user.map(b));
        e.close().unwrap();
    }
}

#[test]
fn reopen_replays_state_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
        for i in 0..300 {
            e.put(format!("k{}", i % 50), format!("v{i}-{}", "x".repeat(200)))
                .unwrap();
            if i % 7 == 0 {
                e.delete(format!("k{}", (i + 3) % 50)).unwrap();
            }
            e.incr("counter", 1).unwrap();
        }
        let s = e.read(|v| v.iter().collect::<BTreeMap<_, _>>());
        e.close().unwrap();
        s
    };
    let (e, report) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert!(report.wal.segments > 1, "the workload should span segments");
    assert_eq!(e.read(|v| v.iter().collect::<BTreeMap<_, _>>()), before);
    assert_eq!(e.get(b"counter").unwrap().value, "300");
}

/// Reads until `stop`, asserting each time that what a reader sees is durable (P10); returns
/// how many reads it made.
fn read_only_durable_until(e: &Engine, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut reads = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let seen = e.read(|v| v.lsn());
        let durable = e.durable_lsn();
        assert!(
            seen <= durable,
            "a reader saw LSN {seen} with only {durable} durable"
        );
        reads += 1;
    }
    reads
}

/// P10 when many writers share each sync: the log's ack thread then publishes their round
/// before it wakes them (`Wal::on_acks`), and must publish only what that sync made durable,
/// not what was queued behind it meanwhile.
#[test]
fn many_writers_sharing_syncs_show_readers_only_durable_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| read_only_durable_until(&e, &stop));
        let writers: Vec<_> = (0..32)
            .map(|w| {
                let e = &e;
                s.spawn(move || {
                    for i in 0..200 {
                        e.put(format!("w{w}-{i}"), "v").unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    assert_eq!(e.read(|v| v.iter().count()), 32 * 200);
}

#[test]
fn concurrent_increments_lose_nothing_and_readers_see_only_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // P10: whatever a reader sees is durable.
        s.spawn(|| read_only_durable_until(&e, &stop));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..100 {
                        e.incr("n", 1).unwrap();
                        // a compare-and-set loop, the way a client would write one
                        loop {
                            let cur = e.get(b"m");
                            let v: i64 = cur.as_ref().map_or(0, |c| {
                                std::str::from_utf8(&c.value).unwrap().parse().unwrap()
                            });
                            if e.compare_and_set("m", cur.map(|c| c.version), (v + 1).to_string())
                                .unwrap()
                                .is_some()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(e.get(b"n").unwrap().value, "800");
    assert_eq!(e.get(b"m").unwrap().value, "800");
}

/// Blocking commits from many threads go through the combiner, which decides whole queues of
/// them at once and reuses the queue's memory between rounds. Every increment must still be
/// decided against all those before it in LSN order: sorted by LSN, the values the increments
/// returned are exactly 1, 2, 3, ... with nothing lost, repeated or swapped, also after a
/// reopen replays the log.
#[test]
fn combined_commits_from_many_threads_decide_in_log_order() {
    const THREADS: usize = 32;
    const EACH: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let incr = || Write::Incr { key: b("c"), by: 1 };
    let mut seen: Vec<(u64, i64)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let e = &e;
                s.spawn(move || {
                    (0..EACH)
                        .map(|_| match e.commit(vec![], vec![incr()]).unwrap() {
                            Outcome::Committed {
                                lsn: Some(lsn),
                                results,
                                ..
                            } => match results[..] {
                                [WriteResult::Int(v)] => (lsn, v),
                                ref r => panic!("{r:?}"),
                            },
                            o => panic!("{o:?}"),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    seen.sort_unstable();
    let total = (THREADS * EACH) as i64;
    assert_eq!(seen.len() as i64, total);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "two commits share an LSN"
    );
    let values: Vec<i64> = seen.iter().map(|&(_, v)| v).collect();
    assert_eq!(values, (1..=total).collect::<Vec<_>>());
    let last = seen.last().unwrap().0;
    assert_eq!(e.get(b"c").unwrap().version, last);
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let c = e.get(b"c").unwrap();
    assert_eq!((c.value, c.version), (b(&total.to_string()), last));
}

fn wal_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    v.sort();
    v
}

#[test]
fn checkpoint_prunes_the_log_and_reopens_without_applying_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    for i in 0..400 {
        e.put(format!("k{}", i % 40), "x".repeat(300)).unwrap();
        e.incr("counter", 1).unwrap();
        if i == 199 {
            // The first checkpoint keeps the whole log: the empty state is its fallback (P13).
            let before = wal_segments(dir.path()).len();
            e.checkpoint().unwrap();
            assert_eq!(wal_segments(dir.path()).len(), before);
        }
    }
    let before = wal_segments(dir.path()).len();
    let lsn = e.checkpoint().unwrap();
    assert_eq!(lsn, e.durable_lsn());
    assert!(
        wal_segments(dir.path()).len() < before,
        "the log the previous snapshot covers is pruned"
    );
    assert_eq!(e.checkpoint().unwrap(), lsn, "nothing new: no new snapshot");
    for _ in 0..10 {
        e.incr("counter", 1).unwrap();
    }
    let state = e.read(|v| v.iter().collect::<BTreeMap<_, _>>());
    e.close().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(
        e.get(b"counter").unwrap().value,
        "410",
        "increments the snapshot holds are not replayed (P7)"
    );
    assert_eq!(e.read(|v| v.iter().collect::<BTreeMap<_, _>>()), state);
    // By default a checkpoint keeps the snapshot before it (P13), and no older one.
    for i in 0..2 {
        e.put(format!("after{i}"), "1").unwrap();
        e.checkpoint().unwrap();
    }
    let snaps = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 2);
}

#[test]
fn damaged_snapshot_or_manifest_falls_back_and_a_missing_path_fails_closed() {
    let setup = || {
        let dir = tempfile::tempdir().unwrap();
        let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
        for i in 0..300 {
            e.put(format!("k{i}"), "y".repeat(300)).unwrap();
        }
        let lsn = e.checkpoint().unwrap();
        for i in 0..300 {
            e.put(format!("j{i}"), "z".repeat(300)).unwrap();
        }
        e.close().unwrap();
        (dir, lsn)
    };
    let snap = |dir: &std::path::Path, lsn: u64| {
        dir.join("snapshots").join(format!("snap-{lsn:020}.keel"))
    };
    let flip = |p: &std::path::Path, at: usize| {
        let mut b = std::fs::read(p).unwrap();
        b[at] ^= 1;
        std::fs::write(p, &b).unwrap();
    };
    let all_there = |dir: &std::path::Path| {
        let (e, report) = Engine::open(dir, Options::small_for_tests()).unwrap();
        for i in 0..300 {
            assert!(e.get(format!("k{i}").as_bytes()).is_some(), "k{i}");
            assert!(e.get(format!("j{i}").as_bytes()).is_some(), "j{i}");
        }
        e.close().unwrap();
        report
    };
    // The first checkpoint keeps the whole log (the empty state is its fallback): a flipped
    // byte in the snapshot, in the manifest, or a missing snapshot costs nothing.
    let (dir, lsn) = setup();
    flip(&snap(dir.path(), lsn), 100);
    let report = all_there(dir.path());
    assert_eq!(report.damaged.len(), 1, "{report}");
    assert_eq!(report.snapshot_lsn, 0);
    assert!(report.damaged[0].moved_to.as_ref().unwrap().exists());
    assert!(
        all_there(dir.path()).damaged.is_empty(),
        "a correct manifest was written"
    );
    let (dir, _) = setup();
    flip(&dir.path().join("MANIFEST"), 17);
    let report = all_there(dir.path());
    assert!(report.to_string().contains("MANIFEST"), "{report}");
    let (dir, lsn) = setup();
    std::fs::remove_file(snap(dir.path(), lsn)).unwrap();
    assert_eq!(all_there(dir.path()).damaged.len(), 1);
    // No complete path: the snapshot is damaged and the log no longer starts at LSN 1.
    let (dir, lsn) = setup();
    flip(&snap(dir.path(), lsn), 100);
    std::fs::remove_file(&wal_segments(dir.path())[0]).unwrap();
    let err = Engine::open(dir.path(), Options::small_for_tests())
        .err()
        .unwrap();
    assert!(matches!(err, Error::NoCompletePath { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("snap-") && msg.contains("keel verify") && msg.contains("LSNs 1..="),
        "{msg}"
    );
    assert!(snap(dir.path(), lsn).exists(), "refusing moves nothing");
}

#[test]
fn stale_files_from_a_crashed_checkpoint_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
        e.put("a", "1").unwrap();
        e.checkpoint().unwrap();
        e.put("b", "2").unwrap();
    }
    // A crash can leave an uncommitted newer snapshot, a temporary one and a temporary manifest.
    let sdir = dir.path().join("snapshots");
    std::fs::write(
        sdir.join(format!("snap-{:020}.keel", 99)),
        b"never committed",
    )
    .unwrap();
    std::fs::write(sdir.join(format!("snap-{:020}.tmp", 98)), b"half").unwrap();
    std::fs::write(dir.path().join("MANIFEST.tmp"), b"half").unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(std::fs::read_dir(&sdir).unwrap().count(), 1);
    assert!(!dir.path().join("MANIFEST.tmp").exists());
    assert_eq!(e.get(b"b").unwrap().value, "2");
}

#[test]
fn retries_with_a_request_id_return_the_first_outcome_and_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        request_retention_count: 3,
        ..Options::small_for_tests()
    };
    let incr = || vec![Write::Incr { key: b("n"), by: 5 }];
    let absent = || {
        vec![Guard {
            key: b("n"),
            version: None,
        }]
    };
    let (e, _) = Engine::open(dir.path(), opts.clone()).unwrap();
    let first = e.commit_request("r1", vec![], incr()).unwrap();
    assert!(
        matches!(&first, Outcome::Committed { lsn: Some(_), results, .. } if results == &[WriteResult::Int(5)])
    );
    assert_eq!(e.commit_request("r1", vec![], incr()).unwrap(), first);
    assert_eq!(e.get(b"n").unwrap().value, "5", "the retry applied nothing");

    // A guard failure is an outcome too: the retry gets it even once the guard would hold.
    let failed = e.commit_request("r2", absent(), incr()).unwrap();
    assert_eq!(failed, Outcome::GuardFailed(0));
    e.delete("n").unwrap();
    assert_eq!(e.commit_request("r2", absent(), incr()).unwrap(), failed);
    assert!(e.get(b"n").is_none());
    e.close().unwrap();

    // After a restart (replayed from the log) ...
    let (e, _) = Engine::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(e.commit_request("r1", vec![], incr()).unwrap(), first);
    assert_eq!(e.commit_request("r2", absent(), incr()).unwrap(), failed);
    assert!(e.get(b"n").is_none());
    // ... and after a checkpoint, when the ids live only in the snapshot.
    e.checkpoint().unwrap();
    e.close().unwrap();
    let (e, _) = Engine::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(e.commit_request("r1", vec![], incr()).unwrap(), first);
    assert!(e.get(b"n").is_none());

    // Retention: with room for 3 ids, two more push r1 out, and its retry is a new request.
    e.commit_request("r3", vec![], vec![Write::Delete { key: b("x") }])
        .unwrap();
    e.commit_request("r4", vec![], vec![Write::Delete { key: b("x") }])
        .unwrap();
    assert!(
        matches!(e.commit_request("r1", vec![], incr()).unwrap(), Outcome::Committed { results, .. } if results == [WriteResult::Int(5)])
    );
    assert_eq!(e.get(b"n").unwrap().value, "5");

    let long = vec![b'x'; keel_engine::REQUEST_ID_BYTES_MAX + 1];
    assert!(matches!(
        e.commit_request(long, vec![], incr()),
        Err(Error::RequestIdTooLong { .. })
    ));
}

#[test]
fn a_retry_under_a_weaker_sync_policy_does_not_wait_forever() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        wal: keel_wal::Options {
            sync_policy: keel_wal::SyncPolicy::Never,
            ..keel_wal::Options::small_for_tests()
        },
        ..Options::small_for_tests()
    };
    let (e, _) = Engine::open(dir.path(), opts).unwrap();
    let e = std::sync::Arc::new(e);
    let w = || vec![Write::Incr { key: b("n"), by: 1 }];
    let first = e.commit_request("r", vec![], w()).unwrap();
    // A liveness check, not a timing one: without the fix the retry never returns.
    let (tx, rx) = std::sync::mpsc::channel();
    let e2 = e.clone();
    std::thread::spawn(move || {
        tx.send(e2.commit_request("r", vec![], w()).unwrap())
            .unwrap()
    });
    let retried = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the retry must not wait for a sync that never comes");
    assert_eq!(retried, first);
    assert_eq!(e.get(b"n").unwrap().value, "1");
}

#[test]
fn a_transaction_sees_its_own_earlier_writes_and_failures_do_not_abort_it() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    e.put("old", "1").unwrap();
    e.put("text", "abc").unwrap();
    let get = |k: &str| Write::Get { key: b(k) };
    let r = e
        .commit(
            vec![],
            vec![
                put("a", "1", Ttl::None, PutIf::Always),
                Write::DeleteAll,
                get("a"),
                get("old"),
                put("b", "2", Ttl::None, PutIf::Absent),
                Write::Append {
                    key: b("b"),
                    suffix: b("x"),
                },
                get("b"),
                Write::Incr { key: b("b"), by: 1 }, // "2x" is not an integer
                Write::Rename {
                    from: b("b"),
                    to: b("c"),
                    only_if_absent: false,
                },
                get("b"),
                get("c"),
                Write::Rename {
                    from: b("b"),
                    to: b("d"),
                    only_if_absent: false,
                },
                Write::IncrFloat {
                    key: b("f"),
                    by: 1.5,
                },
                Write::IncrFloat {
                    key: b("f"),
                    by: 0.25,
                },
                Write::IncrFloat {
                    key: b("g"),
                    by: 0.1,
                },
                Write::IncrFloat {
                    key: b("g"),
                    by: 0.2,
                },
                Write::IncrFloat {
                    key: b("g"),
                    by: 1e20,
                },
            ],
        )
        .unwrap();
    let Outcome::Committed {
        lsn: Some(_),
        results,
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    use keel_engine::WriteError;
    assert_eq!(
        results,
        vec![
            WriteResult::Put(true),
            WriteResult::DeletedAll,
            WriteResult::Value(None),
            WriteResult::Value(None),
            WriteResult::Put(true),
            WriteResult::Int(2),
            WriteResult::Value(Some(b("2x"))),
            WriteResult::Failed(WriteError::NotAnInteger),
            WriteResult::Put(true),
            WriteResult::Value(None),
            WriteResult::Value(Some(b("2x"))),
            WriteResult::Failed(WriteError::NoSuchKey),
            WriteResult::Value(Some(b("1.5"))),
            WriteResult::Value(Some(b("1.75"))),
            WriteResult::Value(Some(b("0.1"))),
            WriteResult::Value(Some(b("0.3"))),
            WriteResult::Value(Some(b("100000000000000000000"))),
        ]
    );
    let keys: BTreeSet<_> = e.read(|v| v.keys().map(Bytes::copy_from_slice).collect());
    assert_eq!(keys, [b("c"), b("f"), b("g")].into());
    assert_eq!(e.get(b"f").unwrap().value, "1.75");
}

#[test]
fn conditional_expiry_follows_redis_options() {
    use keel_engine::ExpireIf::*;
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let far = u64::MAX / 4;
    let expire = |at: Option<u64>, only| match e
        .commit(
            vec![],
            vec![Write::Expire {
                key: b("k"),
                at_ms: at,
                only,
            }],
        )
        .unwrap()
    {
        Outcome::Committed { results, .. } => results[0] == WriteResult::Existed(true),
        o => panic!("{o:?}"),
    };
    let ttl = || e.get(b"k").and_then(|x| x.expires_at_ms);
    assert!(!expire(Some(far), Always), "a missing key");
    e.put("k", "v").unwrap();
    assert!(!expire(Some(far), HasExpiry));
    assert!(
        !expire(Some(far), Later),
        "no expiry counts as never: nothing is later"
    );
    assert!(!expire(None, HasExpiry), "PERSIST of a key without expiry");
    assert!(expire(Some(far), NoExpiry));
    assert_eq!(ttl(), Some(far));
    assert!(!expire(Some(far + 1), NoExpiry));
    assert!(!expire(Some(far - 1), Later));
    assert!(expire(Some(far + 1), Later));
    assert!(expire(Some(far - 5), SoonerWithExpiry));
    assert!(!expire(Some(far), Sooner));
    assert!(expire(None, HasExpiry), "PERSIST");
    assert_eq!(ttl(), None);
    assert!(expire(Some(far), Sooner), "anything is sooner than never");
    assert!(expire(Some(1), Always), "a time already past deletes");
    assert!(e.get(b"k").is_none());
    e.close().unwrap();
    let (e, report) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(report.keys, 0, "the delete was logged, not just hidden");
    assert!(e.get(b"k").is_none());
}

fn results(o: Outcome) -> Vec<WriteResult> {
    match o {
        Outcome::Committed { results, .. } => results,
        o => panic!("expected a commit, got {o:?}"),
    }
}

/// Transactions decided while earlier ones are still on their way to the disk see them: the
/// sequencer's view of the newest writes, including a DeleteAll, lies over the visible state.
#[test]
fn decisions_see_writes_still_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let incr = |key: &str| Write::Incr { key: b(key), by: 1 };
    let one = |w: Write| e.submit(vec![], vec![w]).unwrap();
    e.put("k", "5").unwrap();
    // Nothing is waited on until every transaction is decided, so none of them is visible yet
    // (only a waiter publishes).
    let pending = vec![
        one(incr("k")),
        one(Write::DeleteAll),
        one(incr("k")),
        one(put("j", "x", Ttl::None, PutIf::Absent)),
        one(put("j", "y", Ttl::None, PutIf::Absent)),
        one(Write::Get { key: b("j") }),
        one(Write::Delete { key: b("j") }),
        one(Write::Get { key: b("j") }),
    ];
    let got: Vec<_> = pending
        .into_iter()
        .map(|p| results(p.wait().unwrap()).remove(0))
        .collect();
    assert_eq!(
        got,
        vec![
            WriteResult::Int(6),
            WriteResult::DeletedAll,
            WriteResult::Int(1),
            WriteResult::Put(true),
            WriteResult::Put(false),
            WriteResult::Value(Some(b("x"))),
            WriteResult::Existed(true),
            WriteResult::Value(None),
        ]
    );
    assert_eq!(e.get(b"k").unwrap().value, "1");
    assert!(e.get(b"j").is_none());

    // Pipelines from several threads at once, mixed with blocking commits.
    std::thread::scope(|s| {
        for t in 0..4 {
            let e = &e;
            s.spawn(move || {
                let seen: Vec<i64> = if t % 2 == 0 {
                    let pending: Vec<_> = (0..200)
                        .map(|_| e.submit(vec![], vec![incr("c")]).unwrap())
                        .collect();
                    pending
                        .into_iter()
                        .map(|p| match results(p.wait().unwrap()).remove(0) {
                            WriteResult::Int(n) => n,
                            r => panic!("{r:?}"),
                        })
                        .collect()
                } else {
                    (0..200).map(|_| e.incr("c", 1).unwrap()).collect()
                };
                assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
            });
        }
    });
    assert_eq!(e.get(b"c").unwrap().value, "800");
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(e.get(b"c").unwrap().value, "800");
    assert_eq!(e.get(b"k").unwrap().value, "1");
}

/// Recovery replays the log onto the snapshot key by key at the end, not record by record: the
/// result must still be what the records say, in their order, including a DeleteAll that wipes
/// the snapshot's keys, deletes, and keys rewritten several times.
#[test]
fn replay_onto_a_snapshot_keeps_the_log_order_of_delete_all_deletes_and_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
        for i in 0..50 {
            e.put(format!("snap{i:02}"), "s").unwrap();
        }
        e.checkpoint().unwrap();
        e.put("snap00", "rewritten").unwrap();
        e.delete("snap01").unwrap();
        e.commit(vec![], vec![Write::DeleteAll]).unwrap();
        e.put("after", "1").unwrap();
        e.put("after", "2").unwrap();
        e.put("gone", "x").unwrap();
        e.delete("gone").unwrap();
        e.put("back", "x").unwrap();
        e.delete("back").unwrap();
        e.put("back", "y").unwrap();
    }
    let (e, report) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert!(
        report.snapshot_lsn > 0,
        "recovery must start from the snapshot"
    );
    let keys: BTreeMap<Bytes, Bytes> = e.read(|v| v.iter().map(|(k, e)| (k, e.value)).collect());
    assert_eq!(keys, [(b("after"), b("2")), (b("back"), b("y"))].into());
    assert!(
        e.get(b"snap00").is_none(),
        "DeleteAll came after the rewrite"
    );
}

/// The write fence (`Options::write_fence`, keel serve's maintenance mode) is decided under the
/// sequencer, like a guard: a write submitted right after the fence, before the fence is durable
/// and visible, is already refused. Reads, system writes and the write that lifts the fence go
/// on; the fence survives a reopen; a request id keeps its `Fenced` outcome on retry (P8); the
/// fenced writes leave no trace.
#[test]
fn a_write_fence_refuses_every_user_write_decided_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let opts = Options {
        write_fence: Some(b("fence")),
        background: false,
        ..Options::small_for_tests()
    };
    let (e, _) = Engine::open(&db, opts.clone()).unwrap();
    e.put("a", "1").unwrap();
    let set_a2 = || vec![put("a", "2", Ttl::None, PutIf::Always)];
    // Back to back, without waiting: the write is decided after the fence while the fence's
    // record is not yet synced, so not yet visible.
    let fence = e.submit(vec![], vec![system("fence", "\u{1}on")]).unwrap();
    let write = e.submit(vec![], set_a2()).unwrap();
    assert_eq!(write.wait().unwrap(), Outcome::Fenced);
    assert!(matches!(fence.wait().unwrap(), Outcome::Committed { .. }));
    assert!(matches!(e.put("b", "1"), Err(Error::Fenced)));
    assert!(matches!(e.delete("a"), Err(Error::Fenced)));
    assert!(matches!(e.incr("n", 1), Err(Error::Fenced)));
    assert!(matches!(
        e.commit(vec![], vec![Write::DeleteAll]),
        Ok(Outcome::Fenced)
    ));
    let id = e.commit_request("r1", vec![], set_a2()).unwrap();
    assert_eq!(id, Outcome::Fenced);
    // Reads and system entries go on.
    let read = e.commit(vec![], vec![Write::Get { key: b("a") }]).unwrap();
    assert!(
        matches!(read, Outcome::Committed { lsn: None, .. }),
        "{read:?}"
    );
    let other = e.commit(vec![], vec![system("other", "x")]).unwrap();
    assert!(matches!(other, Outcome::Committed { lsn: Some(_), .. }));
    e.close().unwrap();

    let (e, _) = Engine::open(&db, opts.clone()).unwrap();
    assert!(
        matches!(e.put("b", "1"), Err(Error::Fenced)),
        "the fence is durable"
    );
    // A first byte of zero lifts it.
    e.commit(vec![], vec![system("fence", "\0off")]).unwrap();
    assert_eq!(
        e.commit_request("r1", vec![], set_a2()).unwrap(),
        Outcome::Fenced
    );
    assert_eq!(
        e.get(b"a").unwrap().value,
        b("1"),
        "no fenced write applied"
    );
    assert!(e.get(b"b").is_none() && e.get(b"n").is_none());
    e.put("a", "3").unwrap();
    assert_eq!(e.get(b"a").unwrap().value, b("3"));
    e.close().unwrap();

    // Without the option, the same system entry fences nothing.
    let (e, _) = Engine::open(&db, Options::small_for_tests()).unwrap();
    e.commit(vec![], vec![system("fence", "\u{1}on")]).unwrap();
    e.put("a", "4").unwrap();
}

/// `ReadView::held` and `ReadView::expiring` (INFO keyspace's `keys` and `expires`, O(1)) follow
/// every kind of write: puts with and without expiry, overwrites both ways, PERSIST, deletes, an
/// expired key until active expiry removes it, a reopen, and a DeleteAll.
#[test]
fn held_and_expiring_counts_follow_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let opts = Options {
        background: false,
        ..Options::small_for_tests()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (far, past) = (Ttl::At(now + 3_600_000), Ttl::At(1));
    let (e, _) = Engine::open(&db, opts.clone()).unwrap();
    let counts = |e: &Engine| e.read(|s| (s.held(), s.expiring(), s.count()));
    let set = |k: &str, ttl| put(k, "v", ttl, PutIf::Always);
    e.commit(
        vec![],
        vec![
            set("a", Ttl::None),
            set("b", far),
            set("c", far),
            set("d", past),
        ],
    )
    .unwrap();
    assert_eq!(counts(&e), (4, 3, 3), "d is held, expired, not live");
    e.commit(vec![], vec![set("b", Ttl::None), set("a", far)])
        .unwrap();
    assert_eq!(counts(&e), (4, 3, 3));
    let persist = Write::Expire {
        key: b("c"),
        at_ms: None,
        only: keel_engine::ExpireIf::Always,
    };
    e.commit(vec![], vec![persist]).unwrap();
    assert_eq!(counts(&e), (4, 2, 3));
    e.delete("a").unwrap();
    assert_eq!(counts(&e), (3, 1, 2));
    assert_eq!(e.remove_expired(100).unwrap(), 1);
    assert_eq!(counts(&e), (2, 0, 2));
    e.commit(vec![], vec![set("x", far)]).unwrap();
    e.close().unwrap();
    let (e, _) = Engine::open(&db, opts).unwrap();
    assert_eq!(counts(&e), (3, 1, 3), "counted again at open");
    e.commit(vec![], vec![Write::DeleteAll]).unwrap();
    assert_eq!(counts(&e), (0, 0, 0));
}

/// Opened from a snapshot, the keyspace counts its expiring keys again and active expiry finds
/// the expired ones (the expiry index is rebuilt only when some key has an expiry); with none, it
/// starts empty and takes new ones.
#[test]
fn expiry_is_indexed_again_after_opening_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let opts = Options {
        background: false,
        ..Options::small_for_tests()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (far, past) = (Ttl::At(now + 3_600_000), Ttl::At(1));
    let counts = |e: &Engine| e.read(|s| (s.held(), s.expiring(), s.count()));
    let set = |k: &str, ttl| put(k, "v", ttl, PutIf::Always);
    let (e, _) = Engine::open(&db, opts.clone()).unwrap();
    let mut writes: Vec<Write> = (0..300).map(|i| set(&format!("k{i}"), Ttl::None)).collect();
    writes.extend([set("far", far), set("past1", past), set("past2", past)]);
    e.commit(vec![], writes).unwrap();
    e.checkpoint().unwrap();
    e.close().unwrap();
    let (e, report) = Engine::open(&db, opts.clone()).unwrap();
    assert!(report.snapshot_lsn > 0 && report.records_replayed == 0);
    assert_eq!(counts(&e), (303, 3, 301), "counted again at open");
    assert_eq!(e.remove_expired(100).unwrap(), 2, "both expired keys found");
    assert_eq!(counts(&e), (301, 1, 301));
    e.delete("far").unwrap();
    e.checkpoint().unwrap();
    e.close().unwrap();
    let (e, _) = Engine::open(&db, opts).unwrap();
    assert_eq!(counts(&e), (300, 0, 300));
    assert_eq!(e.remove_expired(100).unwrap(), 0);
    e.commit(vec![], vec![set("p", past)]).unwrap();
    assert_eq!(e.remove_expired(100).unwrap(), 1);
}

#[test]
fn a_read_that_calls_its_engine_panics_instead_of_deadlocking() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    e.put("k", "v").unwrap();
    // A commit inside a read would wait for a publish that needs the write lock the read
    // blocks; a second read lock can block behind a waiting writer. Both must fail loudly.
    for call in [
        &(|e: &Engine| drop(e.put("k", "w"))) as &(dyn Fn(&Engine) + Sync),
        &|e: &Engine| drop(e.get(b"k")),
        &|e: &Engine| e.read(|_| ()),
    ] {
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            e.read(|v| {
                assert_eq!(v.get(b"k").unwrap().value, "v");
                call(&e);
            })
        }));
        let msg = panicked.expect_err("a nested call must panic");
        let msg = (msg.downcast_ref::<&str>().copied())
            .or(msg.downcast_ref::<String>().map(|s| s.as_str()))
            .unwrap_or_default();
        assert!(msg.contains("Engine::read closure"), "{msg}");
    }
    // The engine is unharmed: the flag was cleared on unwinding, and the write lock is free.
    e.put("k", "x").unwrap();
    assert_eq!(e.read(|v| v.get(b"k").unwrap().value.clone()), "x");
}

/// A script's calls see the earlier calls' effects; everything it wrote is one record,
/// replayed after a restart without the script; a call over a limit is refused alone.
#[test]
fn a_script_is_one_transaction_decided_call_by_call() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    e.put("n", "41").unwrap();
    let before = e.durable_lsn();
    let now = keel_engine_now();
    let (seen, pending) = e
        .submit_script(now, |s| {
            assert!(!s.wrote());
            let incr = s.call(vec![Write::Incr { key: b("n"), by: 1 }]).unwrap();
            let got = s.call(vec![Write::Get { key: b("n") }]).unwrap();
            s.call(vec![put("copy", "x", Ttl::None, PutIf::Always)])
                .unwrap();
            let too_big = s.call(vec![put(
                "big",
                &"v".repeat(5000),
                Ttl::None,
                PutIf::Always,
            )]);
            assert!(
                matches!(too_big, Err(Error::ValueTooLarge { .. })),
                "{too_big:?}"
            );
            assert!(s.wrote());
            (incr, got)
        })
        .unwrap();
    assert_eq!(seen.0, vec![WriteResult::Int(42)]);
    assert_eq!(seen.1, vec![WriteResult::Value(Some(b("42")))]);
    let Outcome::Committed { lsn: Some(lsn), .. } = pending.wait().unwrap() else {
        panic!("the script wrote");
    };
    assert_eq!(lsn, before + 1, "one record for the whole script");
    assert_eq!(e.get(b"n").unwrap().value, "42");
    assert!(e.get(b"big").is_none());

    // A script that only reads logs nothing.
    let (_, pending) = e
        .submit_script(now, |s| s.call(vec![Write::Get { key: b("n") }]).unwrap())
        .unwrap();
    assert_eq!(
        pending.wait().unwrap(),
        Outcome::Committed {
            lsn: None,
            results: vec![],
            effects: vec![],
        }
    );
    assert_eq!(e.durable_lsn(), lsn);

    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(e.get(b"n").unwrap().value, "42");
    assert_eq!(e.get(b"copy").unwrap().value, "x");
    assert_eq!(e.durable_lsn(), lsn);
}

fn keel_engine_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Outcomes say which keys each write changed, and whether it created or deleted them, only
/// while effects are asked for; a script's calls report theirs one by one.
#[test]
fn effects_name_the_keys_each_write_created_changed_or_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let effects = |o: Outcome| match o {
        Outcome::Committed { effects, .. } => effects
            .into_iter()
            .map(|x| {
                let k = String::from_utf8(x.key.to_vec()).unwrap();
                (x.write, k, x.created, x.deleted)
            })
            .collect::<Vec<_>>(),
        o => panic!("{o:?}"),
    };
    let push = |k: &str, v: &str| Write::ListPush {
        key: b(k),
        front: false,
        elements: vec![b(v)],
        only_existing: false,
    };
    let pop = |k: &str| Write::ListPop {
        key: b(k),
        front: true,
        count: None,
    };
    let o = e.commit(vec![], vec![push("l", "a")]).unwrap();
    assert_eq!(effects(o), [], "not asked for");
    e.report_effects(true);
    let o = e
        .commit(
            vec![],
            vec![
                put("a", "1", Ttl::None, PutIf::Always),
                put("a", "2", Ttl::None, PutIf::Always),
                put("a", "3", Ttl::None, PutIf::Absent),
                push("l", "b"),
                pop("l"),
                pop("l"),
                Write::Rename {
                    from: b("a"),
                    to: b("z"),
                    only_if_absent: false,
                },
            ],
        )
        .unwrap();
    assert_eq!(
        effects(o),
        [
            (0, "a".into(), true, false),
            (1, "a".into(), false, false),
            // write 2 changed nothing
            (3, "l".into(), false, false),
            (4, "l".into(), false, false),
            (5, "l".into(), false, true),
            (6, "a".into(), false, true),
            (6, "z".into(), true, false),
        ]
    );
    let (calls, pending) = e
        .submit_script(keel_engine_now(), |s| {
            s.call(vec![push("s", "x")]).unwrap();
            let first = s.take_effects();
            s.call(vec![pop("s")]).unwrap();
            (first, s.take_effects())
        })
        .unwrap();
    pending.wait().unwrap();
    assert_eq!(calls.0.len(), 1);
    assert!(calls.0[0].created && calls.0[0].write == 0);
    assert!(calls.1[0].deleted && calls.1[0].write == 1);
    e.report_effects(false);
    let o = e.commit(vec![], vec![push("l", "a")]).unwrap();
    assert_eq!(effects(o), []);
}
