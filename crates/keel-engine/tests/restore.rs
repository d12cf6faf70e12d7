//! Point-in-time restore, backup, background checkpoints, expiry and pipelined submits, on the
//! real disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_engine::{
    restore, Engine, Error, Options, Outcome, PutIf, RestoreTarget, Ttl, Write, WriteResult,
};
use keel_wal::Lsn;

type Model = BTreeMap<Bytes, Bytes>;

fn small() -> Options {
    Options {
        background: false,
        ..Options::small_for_tests()
    }
}

fn state(e: &Engine) -> Model {
    e.read(|v| {
        v.iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    })
}

/// Every file under `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A short history of mixed writes with checkpoints in between; returns the model after every
/// LSN (index = LSN).
fn history(e: &Engine) -> Vec<Model> {
    let mut models = vec![Model::new()];
    let mut m = Model::new();
    let mut counter = 0i64;
    for i in 0..120u64 {
        if i % 25 == 24 {
            e.checkpoint().unwrap();
        }
        let key = Bytes::from(format!("k{}", i % 13));
        let lsn = match i % 5 {
            0..=2 => {
                let v = Bytes::from(format!("v{i}-{}", "y".repeat((i * 137 % 2000) as usize)));
                m.insert(key.clone(), v.clone());
                e.put(key, v).unwrap()
            }
            3 => {
                counter += i as i64;
                assert_eq!(e.incr("n", i as i64).unwrap(), counter);
                m.insert(Bytes::from("n"), Bytes::from(counter.to_string()));
                e.durable_lsn()
            }
            _ => {
                let existed = m.remove(&key).is_some();
                assert_eq!(e.delete(key).unwrap(), existed);
                if !existed {
                    continue; // nothing logged
                }
                e.durable_lsn()
            }
        };
        assert_eq!(lsn as usize, models.len(), "one record per write");
        models.push(m.clone());
    }
    models
}

/// P9: restoring to every LSN of a history gives exactly the model at that LSN, the restored
/// directory opens as a normal database that takes new writes, and the source does not change
/// by a single byte — whether the source is open or closed.
#[test]
fn restore_to_every_lsn_equals_the_model_and_leaves_the_source_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let opts = Options {
        retention: Duration::from_secs(3600),
        ..small()
    };
    let (e, _) = Engine::open(&src, opts.clone()).unwrap();
    let models = history(&e);
    let last = models.len() as Lsn - 1;
    assert!(
        std::fs::read_dir(src.join("snapshots")).unwrap().count() >= 3,
        "retention keeps older snapshots"
    );
    let before = files(&src);
    for lsn in 0..=last {
        let target = dir.path().join(format!("r{lsn}"));
        let r = restore(&src, &target, RestoreTarget::Lsn(lsn), &small())
            .unwrap_or_else(|err| panic!("restore to {lsn}: {err}"));
        assert_eq!(r.lsn, lsn);
        assert!(r.base_snapshot <= lsn);
        let (re, report) = Engine::open(&target, small()).unwrap();
        assert_eq!(report.lsn, lsn);
        assert_eq!(state(&re), models[lsn as usize], "restore to LSN {lsn}");
        if lsn % 40 == 0 {
            let next = re.put("new", "write").unwrap();
            assert_eq!(
                next,
                lsn + 1,
                "the restored log continues after its snapshot"
            );
            re.close().unwrap();
            let (re, _) = Engine::open(&target, small()).unwrap();
            assert_eq!(re.get(b"new").unwrap().value, "write");
        }
    }
    assert_eq!(files(&src), before, "restore wrote to an open source");
    e.close().unwrap();
    let before = files(&src);
    let target = dir.path().join("closed");
    restore(&src, &target, RestoreTarget::Latest, &small()).unwrap();
    assert_eq!(files(&src), before, "restore wrote to a closed source");
    let (re, _) = Engine::open(&target, small()).unwrap();
    assert_eq!(state(&re), models[last as usize]);

    // Errors: beyond the end, and into a directory that is in use.
    assert!(matches!(
        restore(
            &src,
            dir.path().join("x"),
            RestoreTarget::Lsn(last + 1),
            &small()
        ),
        Err(Error::NotRestorable(_))
    ));
    assert!(matches!(
        restore(&src, &target, RestoreTarget::Latest, &small()),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn without_retention_only_the_recent_past_is_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let (e, _) = Engine::open(&src, small()).unwrap();
    history(&e);
    // By default the snapshot before the newest one and the log after it are kept (P13), and
    // nothing older: two more checkpoints, with a segment's worth of writes between them.
    let mut prev = 0;
    for r in 0..2 {
        for i in 0..100 {
            e.put(format!("more{r}-{i}"), "m".repeat(1000)).unwrap();
        }
        prev = e.checkpoint().unwrap();
    }
    let last = e.durable_lsn();
    let err = restore(
        &src,
        dir.path().join("old"),
        RestoreTarget::Lsn(1),
        &small(),
    )
    .expect_err("LSN 1 is pruned");
    assert!(matches!(err, Error::NotRestorable(_)), "{err}");
    assert!(err.to_string().contains("retention"), "{err}");
    for (name, to) in [("new", last), ("prev", prev)] {
        let r = restore(
            &src,
            dir.path().join(name),
            RestoreTarget::Lsn(to),
            &small(),
        )
        .unwrap();
        assert_eq!(r.lsn, to);
    }
}

#[test]
fn restore_to_a_time_stops_at_the_first_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let opts = Options {
        retention: Duration::from_secs(3600),
        ..small()
    };
    let (e, _) = Engine::open(&src, opts).unwrap();
    for i in 0..20 {
        e.put(format!("a{i}"), "1").unwrap();
    }
    e.checkpoint().unwrap();
    e.put("a-last", "1").unwrap();
    let expected = state(&e);
    let lsn = e.durable_lsn();
    std::thread::sleep(Duration::from_millis(5));
    let t = now_ms();
    std::thread::sleep(Duration::from_millis(5));
    for i in 0..20 {
        e.put(format!("b{i}"), "2").unwrap();
    }
    e.checkpoint().unwrap();
    e.put("b-last", "2").unwrap();
    let r = restore(
        &src,
        dir.path().join("t"),
        RestoreTarget::UnixMs(t),
        &small(),
    )
    .unwrap();
    assert_eq!(r.lsn, lsn);
    assert!(r.at_ms <= t);
    let (re, _) = Engine::open(dir.path().join("t"), small()).unwrap();
    assert_eq!(state(&re), expected);
    // Before the first write: the empty database.
    let r = restore(
        &src,
        dir.path().join("t0"),
        RestoreTarget::UnixMs(1),
        &small(),
    )
    .unwrap();
    assert_eq!(r.lsn, 0);
    let (re, _) = Engine::open(dir.path().join("t0"), small()).unwrap();
    assert!(state(&re).is_empty());
}

#[test]
fn online_backup_is_a_consistent_copy_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path().join("src"), small()).unwrap();
    e.commit_request(
        "req",
        vec![],
        vec![Write::Incr {
            key: "n".into(),
            by: 2,
        }],
    )
    .unwrap();
    let backups: Vec<_> = std::thread::scope(|s| {
        let w = s.spawn(|| {
            for i in 0..300 {
                // Two keys always written together: a consistent copy never splits them.
                e.commit(
                    vec![],
                    vec![
                        Write::Put {
                            key: "x".into(),
                            value: Bytes::from(i.to_string()),
                            ttl: Ttl::None,
                            only: PutIf::Always,
                        },
                        Write::Put {
                            key: "y".into(),
                            value: Bytes::from(i.to_string()),
                            ttl: Ttl::None,
                            only: PutIf::Always,
                        },
                    ],
                )
                .unwrap();
            }
        });
        let b: Vec<_> = (0..5)
            .map(|i| {
                let t = dir.path().join(format!("b{i}"));
                (e.backup(&t).unwrap(), t)
            })
            .collect();
        w.join().unwrap();
        b
    });
    for (r, t) in backups {
        let (b, report) = Engine::open(&t, small()).unwrap();
        assert_eq!(report.lsn, r.lsn);
        assert_eq!(b.get(b"x").map(|e| e.value), b.get(b"y").map(|e| e.value));
        // Request ids travel with the backup (P8).
        let retry = b
            .commit_request(
                "req",
                vec![],
                vec![Write::Incr {
                    key: "n".into(),
                    by: 2,
                }],
            )
            .unwrap();
        assert!(
            matches!(retry, Outcome::Committed { results, .. } if results == [WriteResult::Int(2)])
        );
        assert_eq!(b.get(b"n").unwrap().value, "2");
    }
}

/// Polls `cond` until it holds; a liveness check with a generous bound, not a timing one.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_background_thread_checkpoints_by_log_size_and_removes_expired_keys() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        background: true,
        checkpoint_log_bytes: 20_000,
        checkpoint_interval: None,
        ..small()
    };
    let (e, _) = Engine::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(e.last_checkpoint().0, None);
    for i in 0..100 {
        e.put(format!("k{i}"), "v".repeat(300)).unwrap();
    }
    eventually("a checkpoint after 30 KB of log", || {
        e.last_checkpoint().0.is_some()
    });
    let info = e.last_checkpoint().0.unwrap();
    assert!(info.lsn > 0 && info.snapshot_bytes > 0);

    let soon = now_ms() + 50;
    e.commit(
        vec![],
        vec![Write::Put {
            key: "ttl".into(),
            value: "v".into(),
            ttl: Ttl::At(soon),
            only: PutIf::Always,
        }],
    )
    .unwrap();
    let lsn = e.durable_lsn();
    // Active expiry logs a delete once the time has passed.
    eventually("the expired key's delete is logged", || {
        e.durable_lsn() > lsn
    });
    assert!(e.get(b"ttl").is_none());
    e.close().unwrap();
    let (e, report) = Engine::open(dir.path(), small()).unwrap();
    assert_eq!(report.keys, 100, "the expired key is gone, not just hidden");
    assert_eq!(e.remove_expired(10).unwrap(), 0);
}

#[test]
fn remove_expired_deletes_only_what_has_expired() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), small()).unwrap();
    let put = |k: &str, ttl| Write::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: "v".into(),
        ttl,
        only: PutIf::Always,
    };
    e.commit(
        vec![],
        vec![
            put("past", Ttl::At(1)),
            put("future", Ttl::At(now_ms() + 3_600_000)),
            put("rewritten", Ttl::At(1)),
            put("rewritten", Ttl::None),
        ],
    )
    .unwrap();
    assert_eq!(e.remove_expired(100).unwrap(), 1);
    assert_eq!(e.remove_expired(100).unwrap(), 0);
    assert!(e.get(b"future").is_some() && e.get(b"rewritten").is_some());
}

/// The smallest executor: polls a future on this thread until it is ready.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn submitted_writes_are_decided_in_order_and_awaited_later() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), small()).unwrap();
    let syncs = e.wal_stats().syncs;
    let pending: Vec<_> = (1..=50)
        .map(|_| {
            e.submit(
                vec![],
                vec![Write::Incr {
                    key: "n".into(),
                    by: 1,
                }],
            )
            .unwrap()
        })
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        let o = if i % 2 == 0 { block_on(p) } else { p.wait() }.unwrap();
        assert!(
            matches!(&o, Outcome::Committed { results, .. } if results == &[WriteResult::Int(i as i64 + 1)]),
            "{o:?}"
        );
    }
    assert_eq!(e.get(b"n").unwrap().value, "50");
    assert!(
        e.wal_stats().syncs - syncs < 50,
        "fifty submitted writes share syncs"
    );
}

/// P1 for answers that write nothing: a SET NX refused because of a write still in flight must
/// not be answered before that write is durable, or a crash could take away the reason.
#[test]
fn an_outcome_that_depends_on_a_write_in_flight_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), small()).unwrap();
    for round in 0..50 {
        let key = Bytes::from(format!("k{round}"));
        let first = e
            .submit(
                vec![],
                vec![Write::Put {
                    key: key.clone(),
                    value: "1".into(),
                    ttl: Ttl::None,
                    only: PutIf::Always,
                }],
            )
            .unwrap();
        let refused = Write::Put {
            key,
            value: "2".into(),
            ttl: Ttl::None,
            only: PutIf::Absent,
        };
        let o = if round % 2 == 0 {
            e.commit(vec![], vec![refused]).unwrap()
        } else {
            block_on(e.submit(vec![], vec![refused]).unwrap()).unwrap()
        };
        assert_eq!(
            o,
            Outcome::Committed {
                lsn: None,
                results: vec![WriteResult::Put(false)],
                effects: vec![],
            }
        );
        let lsn = e.read(|v| v.lsn());
        assert!(
            e.durable_lsn() >= lsn && lsn as usize == round + 1,
            "round {round}: answered before the write it depends on was durable and visible"
        );
        first.wait().unwrap();
    }
}
