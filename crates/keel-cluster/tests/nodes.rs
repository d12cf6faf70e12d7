//! Three nodes in one process over real TCP and real files: replication, leader change,
//! restart without double-applying, catching up by snapshot after the log was purged, and
//! replaying what a power cut took from the engines' unsynced logs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_cluster::{Cluster, ClusterError, Config, Node, Txn};
use keel_engine::{Outcome, PutIf, Ttl, Write, WriteResult};
use tokio::net::TcpListener;

struct Slot {
    id: u64,
    addr: String,
    dir: std::path::PathBuf,
    node: Option<Arc<Cluster>>,
    snapshot_every: u64,
    /// The file systems of the node's raft log and engine (`None`: the real one).
    fs: Option<(Arc<dyn keel_wal::fs::Fs>, Arc<dyn keel_wal::fs::Fs>)>,
}

fn slots(dir: &std::path::Path, snapshot_every: u64) -> Vec<Slot> {
    (1..=3)
        .map(|id| Slot {
            id,
            addr: free_addr(),
            dir: dir.join(format!("n{id}")),
            node: None,
            snapshot_every,
            fs: None,
        })
        .collect()
}

fn config(id: u64, dir: &std::path::Path, addr: &str) -> Config {
    let mut c = Config::new(
        id,
        dir,
        Node {
            raft: addr.into(),
            client: format!("client-of-{id}"),
        },
    );
    c.engine.wal = keel_wal::Options::small_for_tests();
    c.engine.key_bytes_max = 256;
    c.engine.value_bytes_max = 4096;
    c.log = keel_wal::Options::small_for_tests();
    c.snapshot_every = 50;
    c.keep_behind_snapshot = 5;
    c.heartbeat_ms = 50;
    c.election_timeout_ms = (300, 600);
    c
}

/// Starts a node; after a shutdown in this process, raft's detached tasks may hold the old
/// log for a moment (its lock says so), so a start is retried for a while.
async fn start(s: &mut Slot) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = TcpListener::bind(&s.addr).await.unwrap();
        let mut c = config(s.id, &s.dir, &s.addr);
        c.snapshot_every = s.snapshot_every;
        if let Some((log, engine)) = &s.fs {
            c.log.fs = log.clone();
            c.engine.wal.fs = engine.clone();
            // One segment: a rotation syncs, and the engine is to keep only what raft made it
            // sync.
            c.engine.wal.segment_bytes_max = 8 << 20;
        }
        match Cluster::start(c, l).await {
            Ok(n) => {
                s.node = Some(n);
                return;
            }
            Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("node {}: {e}", s.id),
        }
    }
}

fn put(k: &str, v: &str) -> Txn {
    Txn {
        id: None,
        at_ms: 1,
        guards: vec![],
        writes: vec![Write::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            ttl: Ttl::None,
            only: PutIf::Always,
        }],
    }
}

/// Writes through whichever node leads, following NotLeader answers.
async fn write(nodes: &[Slot], txn: Txn) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for n in nodes.iter().filter_map(|s| s.node.as_ref()) {
            match n.write(txn.clone()).await {
                Ok(o) => return o,
                Err(ClusterError::NotLeader(_) | ClusterError::Timeout(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(Instant::now() < deadline, "no leader accepted the write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// INCR n 7 through the leader; the reply must be `expect`.
async fn incr_by_7(nodes: &[Slot], expect: i64) {
    let incr = Txn {
        writes: vec![Write::Incr {
            key: "n".into(),
            by: 7,
        }],
        ..put("x", "x")
    };
    let o = write(nodes, incr).await;
    assert!(
        matches!(o, Outcome::Committed { ref results, .. } if results == &[WriteResult::Int(expect)]),
        "{o:?}"
    );
}

/// Writes `k{i}` = `v{i}` for each `i`, one after another, through the leader.
async fn write_keys(nodes: &[Slot], range: std::ops::Range<u32>) {
    for i in range {
        write(nodes, put(&format!("k{i}"), &format!("v{i}"))).await;
    }
}

async fn wait_applied(n: &Cluster, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.engine().get(key.as_bytes()).map(|e| e.value)
        != Some(Bytes::copy_from_slice(value.as_bytes()))
    {
        assert!(
            Instant::now() < deadline,
            "node {} never applied {key}",
            n.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Three nodes started and joined into one cluster.
async fn cluster(dir: &std::path::Path, snapshot_every: u64) -> Vec<Slot> {
    let mut nodes = slots(dir, snapshot_every);
    start_all(&mut nodes).await;
    let peers: Vec<String> = nodes[1..].iter().map(|s| s.addr.clone()).collect();
    let members = nodes[0].node.as_ref().unwrap().init(&peers).await.unwrap();
    assert_eq!(members.len(), 3);
    nodes
}

/// The running node that is leader by its own account.
fn leader_of(nodes: &[Slot]) -> Arc<Cluster> {
    nodes
        .iter()
        .filter_map(|s| s.node.clone())
        .find(|n| n.leader().is_some_and(|(id, _)| id == n.id))
        .expect("a leader")
}

/// The slot indices of the leader (as node 1 sees it) and of a follower.
fn leader_and_follower(nodes: &[Slot]) -> (usize, usize) {
    let leader = nodes[0].node.as_ref().unwrap().leader().unwrap().0;
    let at = |pred: &dyn Fn(u64) -> bool| nodes.iter().position(|s| pred(s.id)).unwrap();
    (at(&|id| id == leader), at(&|id| id != leader))
}

/// Every replica reached the same engine LSN: versions mean the same on every node.
fn assert_same_lsns(nodes: &[Slot]) {
    let lsns: Vec<u64> = nodes
        .iter()
        .map(|s| s.node.as_ref().unwrap().engine().visible_lsn())
        .collect();
    assert!(lsns.windows(2).all(|w| w[0] == w[1]), "{lsns:?}");
}

/// Shuts every running node down (a clean stop: engines synced).
async fn stop_all(nodes: &mut [Slot]) {
    for s in nodes.iter_mut() {
        if let Some(n) = s.node.take() {
            n.shutdown().await;
        }
    }
    // Raft's detached tasks let go of the logs shortly after.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn start_all(nodes: &mut [Slot]) {
    for s in nodes.iter_mut() {
        start(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up_by_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path(), 50).await;

    // Replication, and an INCR decided once on every replica.
    write_keys(&nodes, 0..20).await;
    incr_by_7(&nodes, 7).await;
    for s in &nodes {
        wait_applied(s.node.as_ref().unwrap(), "k19", "v19").await;
        wait_applied(s.node.as_ref().unwrap(), "n", "7").await;
    }
    // Replication state (the engine's system namespace) cannot be written by clients, and a
    // transaction too large for one raft entry is refused before it is proposed.
    let leader_node = leader_of(&nodes);
    for txn in [
        Txn {
            writes: vec![Write::System {
                key: Bytes::from_static(b"raft.applied"),
                value: Bytes::new(),
            }],
            ..put("x", "x")
        },
        put("k0", &"x".repeat(keel_cluster::TXN_BYTES_MAX)),
    ] {
        match leader_node.write(txn).await {
            Err(ClusterError::Rejected(m)) => assert!(
                m.contains("system namespace") || m.contains("exceeds"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }
    drop(leader_node);
    // Every replica reached the same engine LSN: versions mean the same on every node.
    assert_same_lsns(&nodes);

    // Kill the leader; the others elect a new one and keep accepting writes.
    let (li, _) = leader_and_follower(&nodes);
    let old = nodes[li].node.take().unwrap();
    old.shutdown().await;
    drop(old);
    write_keys(&nodes, 20..120).await;
    // The survivors snapshotted and purged (snapshot_every = 50): the old leader must catch up
    // by installing a snapshot, and must not apply anything twice after its restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    start(&mut nodes[li]).await;
    let back = nodes[li].node.clone().unwrap();
    wait_applied(&back, "k119", "v119").await;
    assert_eq!(back.engine().get(b"n").unwrap().value, "7");
    assert_eq!(back.engine().get(b"k0").unwrap().value, "v0");
    let st = back.status();
    assert!(st.snapshot_index.is_some(), "{st:?}");
    drop(back);

    // A full restart replays the raft log after each engine's applied log id and applies
    // nothing twice: the counter stays at 7, then one more INCR makes it 14 everywhere, and
    // every replica is at the same LSN.
    stop_all(&mut nodes).await;
    start_all(&mut nodes).await;
    for s in &nodes {
        assert_eq!(
            s.node.as_ref().unwrap().engine().get(b"n").unwrap().value,
            "7"
        );
    }
    incr_by_7(&nodes, 14).await;
    write(&nodes, put("last", "1")).await;
    for s in &nodes {
        wait_applied(s.node.as_ref().unwrap(), "last", "1").await;
    }
    assert_same_lsns(&nodes);

    // The replication state is not among the user keys: a FLUSHALL removes every user key but
    // leaves the membership and the applied position. After a full restart the nodes still
    // elect a leader from the stored membership and apply nothing twice. (The keys that held
    // the state before the system namespace stay reserved: older nodes may still use them.)
    let mut own = put("x", "x");
    own.writes[0] = Write::Put {
        key: Bytes::from_static(b"\xffkeel.raft.applied"),
        value: Bytes::from_static(b"a user's value"),
        ttl: Ttl::None,
        only: PutIf::Always,
    };
    match leader_of(&nodes).write(own).await {
        Err(ClusterError::Rejected(m)) => assert!(m.contains("reserved"), "{m}"),
        other => panic!("{other:?}"),
    }
    let flush = Txn {
        writes: vec![Write::DeleteAll],
        ..put("x", "x")
    };
    write(&nodes, flush).await;
    incr_by_7(&nodes, 7).await;
    stop_all(&mut nodes).await;
    start_all(&mut nodes).await;
    incr_by_7(&nodes, 14).await;
    for s in &nodes {
        let n = s.node.as_ref().unwrap();
        wait_applied(n, "n", "14").await;
        let keys: Vec<_> = n
            .engine()
            .read(|v| v.iter().map(|(k, _)| k.clone()).collect());
        assert_eq!(keys, ["n"], "node {}: only the user's keys", n.id);
    }
    assert_same_lsns(&nodes);
    stop_all(&mut nodes).await;
}

/// Zeroes an engine log from `keep` (a fraction of its written bytes) on, as a power cut does to
/// what was never synced: the last segment's bytes past that point were only in the page cache.
/// Returns how many bytes were cut.
fn cut_engine_log(node_dir: &std::path::Path, keep: f64) -> usize {
    let wal = node_dir.join("engine-0").join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "open"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let path = segments.pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let from = 64 + ((end - 64) as f64 * keep) as usize;
    bytes[from..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    end - from
}

/// The engine's log does not sync on apply (the raft log is the write-ahead log). A power cut
/// on every node takes a different tail of each engine's log, some of them inside a raft entry
/// of several transactions; on restart raft applies the rest again from the raft log: every
/// write is back, none twice, and the replicas agree on every LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_that_takes_the_engines_unsynced_tails_is_replayed_from_the_raft_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path(), 100_000).await;
    write_keys(&nodes, 0..30).await;
    // Concurrent increments share raft entries: a cut can fall inside one.
    let leader = leader_of(&nodes);
    let mut incrs = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let l = leader.clone();
        incrs.spawn(async move {
            l.write(Txn {
                writes: vec![Write::Incr {
                    key: "n".into(),
                    by: 1,
                }],
                ..put("x", "x")
            })
            .await
            .unwrap()
        });
    }
    while let Some(o) = incrs.join_next().await {
        assert!(matches!(o.unwrap(), Outcome::Committed { .. }));
    }
    drop(leader);
    write(&nodes, put("last", "1")).await;
    for s in &nodes {
        wait_applied(s.node.as_ref().unwrap(), "last", "1").await;
    }
    let lsn = nodes[0].node.as_ref().unwrap().engine().visible_lsn();
    stop_all(&mut nodes).await;
    for (s, keep) in nodes.iter().zip([0.0, 0.5, 0.93]) {
        assert!(cut_engine_log(&s.dir, keep) > 0);
    }

    start_all(&mut nodes).await;
    for s in &nodes {
        let n = s.node.as_ref().unwrap();
        let recovered = n.engine().recovery_report().lsn;
        assert!(
            recovered < lsn,
            "node {}: recovered {recovered} of {lsn}",
            s.id
        );
        wait_applied(n, "last", "1").await;
        for i in 0..30 {
            assert_eq!(
                n.engine().get(format!("k{i}").as_bytes()).unwrap().value,
                format!("v{i}")
            );
        }
        assert_eq!(n.engine().get(b"n").unwrap().value, "200", "node {}", s.id);
        assert_eq!(n.engine().visible_lsn(), lsn, "node {}", s.id);
    }
    stop_all(&mut nodes).await;
}

/// Installing a snapshot publishes it before switching to the engine rebuilt from it. A crash in
/// between leaves a published snapshot newer than the engine: opening the node must finish the
/// install by itself, before it hears from any peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_a_crash_interrupted_is_finished_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path(), 50).await;
    write_keys(&nodes, 0..20).await;
    // A follower stops; the others go on and snapshot (every 50 entries).
    let (l, f) = leader_and_follower(&nodes);
    let n = nodes[f].node.take().unwrap();
    wait_applied(&n, "k19", "v19").await;
    n.shutdown().await;
    drop(n);
    write_keys(&nodes, 20..130).await;
    // openraft builds snapshots in the background: on busy cores the one past entry 90 may
    // come a little after the writes' replies.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let snap_index = nodes[l].node.as_ref().unwrap().status().snapshot_index;
        if snap_index.is_some_and(|i| i >= 90) {
            break;
        }
        assert!(Instant::now() < deadline, "{snap_index:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_all(&mut nodes).await;
    // The crash: the leader's snapshot published in the follower's directory, its engine not
    // yet rebuilt from it.
    let theirs = nodes[l].dir.join("snapshots");
    let mine = nodes[f].dir.join("snapshots");
    for e in std::fs::read_dir(&mine).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for e in std::fs::read_dir(&theirs).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, mine.join(p.file_name().unwrap())).unwrap();
    }
    start(&mut nodes[f]).await;
    {
        let n = nodes[f].node.as_ref().unwrap();
        // Every other node is down: what it serves came from its own disk.
        assert_eq!(n.engine().get(b"k80").unwrap().value, "v80");
    }
    for (i, s) in nodes.iter_mut().enumerate() {
        if i != f {
            start(s).await;
        }
    }
    write(&nodes, put("last", "1")).await;
    for s in &nodes {
        let n = s.node.as_ref().unwrap();
        wait_applied(n, "last", "1").await;
        assert_eq!(n.engine().get(b"k129").unwrap().value, "v129");
    }
    assert_same_lsns(&nodes);
    stop_all(&mut nodes).await;
}

/// P12: a write is acknowledged only once a quorum holds it durably. Every node's raft log and
/// engine run on simulated file systems; while clients write, the power goes out on all three
/// at once. Each raft log restarts from what its disk durably held (unsynced writes kept or lost
/// at random), each engine from what was synced (so raft must replay everything it applied),
/// and every acknowledged write must be there. Making the raft log acknowledge before its fsync
/// (SyncPolicy::Never) fails this test.
///
/// (An engine that kept an entry its raft log lost, which a follower applying before its own
/// flush allows, is `an_engine_ahead_of_its_raft_log_after_a_power_cut_starts_from_a_snapshot`:
/// it needs a snapshot, and snapshots live on the real file system.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_power_cut_on_every_node() {
    for seed in 0..4u64 {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = slots(tmp.path(), 100_000);
        let disks: Vec<(keel_sim::SimFs, keel_sim::SimFs)> = (0..3)
            .map(|i| {
                (
                    keel_sim::SimFs::new(seed * 6 + i),
                    keel_sim::SimFs::new(seed * 6 + 3 + i),
                )
            })
            .collect();
        for (s, (log, engine)) in nodes.iter_mut().zip(&disks) {
            s.fs = Some((Arc::new(log.clone()), Arc::new(engine.clone())));
            start(s).await;
        }
        let peers: Vec<String> = nodes[1..].iter().map(|s| s.addr.clone()).collect();
        nodes[0].node.as_ref().unwrap().init(&peers).await.unwrap();
        write(&nodes, put("first", "1")).await;
        let leader = leader_of(&nodes);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (l, acked) = (leader.clone(), acked.clone());
            writers.spawn(async move {
                for i in 0.. {
                    let k = format!("w{w}-{i}");
                    match l.write(put(&k, &k)).await {
                        Ok(_) => acked.lock().unwrap().push(k),
                        Err(_) => return,
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100 + 50 * seed)).await;
        // The power cut: from this instant no node's disk takes anything.
        for (log, engine) in &disks {
            log.kill();
            engine.kill();
        }
        while writers.join_next().await.is_some() {}
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            acked.len() > 20,
            "seed {seed}: only {} writes acknowledged",
            acked.len()
        );
        drop(leader);
        for s in nodes.iter_mut() {
            let n = s.node.take().unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), n.shutdown()).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (s, (log, engine)) in nodes.iter_mut().zip(&disks) {
            s.fs = Some((
                Arc::new(log.crash(seed)),
                Arc::new(engine.crash_to_synced()),
            ));
            start(s).await;
        }
        write(&nodes, put("after", "1")).await;
        let leader = leader_of(&nodes);
        wait_applied(&leader, "after", "1").await;
        let lost: Vec<&String> = acked
            .iter()
            .filter(|k| leader.engine().get(k.as_bytes()).is_none())
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed}: {} of {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        eprintln!(
            "seed {seed}: {} acknowledged writes, all present after the power cut",
            acked.len()
        );
        drop(leader);
        stop_all(&mut nodes).await;
    }
}

/// A follower may apply an entry before its own raft log has synced it (the leader and the
/// other follower made it committed). A power cut can then leave its engine holding an entry
/// its raft log lost. On restart the node must take its engine's position as purged, and its
/// snapshot must cover that position (raft builds one only where there is none; here an older
/// one exists), or a lagging peer could be sent a snapshot that stops short of the log: here a
/// follower's raft log loses its last entry after all nodes applied it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_ahead_of_its_raft_log_after_a_power_cut_starts_from_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path(), 20).await;
    write_keys(&nodes, 0..30).await;
    for s in &nodes {
        wait_applied(s.node.as_ref().unwrap(), "k29", "v29").await;
    }
    let (_, f) = leader_and_follower(&nodes);
    let applied = nodes[f]
        .node
        .as_ref()
        .unwrap()
        .status()
        .applied_index
        .unwrap();
    stop_all(&mut nodes).await;
    // The follower's raft log loses its last record (torn), its engine keeps everything.
    let log = nodes[f].dir.join("raft").join("log");
    let seg = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "open"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    // A clean stop leaves a mark after the last frame, which proves it durable; a power cut
    // before the last sync leaves none.
    let seed = keel_wal::format::segment_seed(
        keel_wal::format::SegmentHeader::decode(&bytes)
            .unwrap()
            .segment_id,
    );
    let mark = keel_wal::format::MARK_BYTES;
    if let keel_wal::format::Decoded::Mark(_) =
        keel_wal::format::decode_frame(&bytes[end - mark..], seed, u32::MAX)
    {
        bytes[end - mark..end].fill(0);
        end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    }
    bytes[end - 16..end].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    start_all(&mut nodes).await;
    // (A re-election while the nodes stopped may have added an entry after `applied`.)
    let st = nodes[f].node.as_ref().unwrap().status();
    assert!(st.purged_index >= Some(applied), "{st:?}");
    assert_eq!(st.snapshot_index, st.purged_index, "{st:?}");
    write(&nodes, put("last", "1")).await;
    for s in &nodes {
        let n = s.node.as_ref().unwrap();
        wait_applied(n, "last", "1").await;
        assert_eq!(n.engine().get(b"k29").unwrap().value, "v29");
    }
    assert_same_lsns(&nodes);
    stop_all(&mut nodes).await;
}

/// Rewrites a stopped node's engine as a release before the system namespace left it: the same
/// user entries, and the replication state as user keys (`\xffkeel.raft.applied` and
/// `\xffkeel.raft.membership`, whose values were encoded as they are now) instead of system
/// entries.
fn make_legacy_engine(node_dir: &std::path::Path) {
    let dir = node_dir.join("engine-0");
    let opts = || {
        let mut o = config(0, node_dir, "").engine;
        o.background = false;
        o
    };
    let (e, _) = keel_engine::Engine::open(&dir, opts()).unwrap();
    let plain = |key: Bytes, value: Bytes| Write::Put {
        key,
        value,
        ttl: Ttl::None,
        only: PutIf::Always,
    };
    let mut writes: Vec<Write> = e.read(|v| {
        v.iter()
            .map(|(k, e)| plain(k.clone(), e.value.clone()))
            .collect()
    });
    for (system, legacy) in [
        (&b"raft.applied"[..], &b"\xffkeel.raft.applied"[..]),
        (b"raft.membership", b"\xffkeel.raft.membership"),
    ] {
        let value = e
            .system(system)
            .expect("the node stored its replication state");
        writes.push(plain(Bytes::copy_from_slice(legacy), value));
    }
    e.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (e, _) = keel_engine::Engine::open(&dir, opts()).unwrap();
    e.commit(vec![], writes).unwrap();
    e.checkpoint().unwrap();
    e.close().unwrap();
}

/// Engines written before the system namespace kept the replication state in user keys. Such a
/// node reads it from there, applies nothing twice, and its next applied transaction moves the
/// state into the system namespace and deletes the old keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_with_the_replication_state_in_user_keys_are_read_and_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster(tmp.path(), 1000).await;
    write_keys(&nodes, 0..5).await;
    incr_by_7(&nodes, 7).await;
    for s in &nodes {
        wait_applied(s.node.as_ref().unwrap(), "n", "7").await;
    }
    stop_all(&mut nodes).await;
    for s in &nodes {
        make_legacy_engine(&s.dir);
    }

    start_all(&mut nodes).await;
    let legacy = [&b"\xffkeel.raft.applied"[..], b"\xffkeel.raft.membership"];
    for s in &nodes {
        let e = s.node.as_ref().unwrap().engine();
        assert_eq!(e.get(b"n").unwrap().value, "7", "nothing applied twice");
    }
    // The stored membership elects a leader; the next entries move the state.
    incr_by_7(&nodes, 14).await;
    for s in &nodes {
        let n = s.node.as_ref().unwrap();
        wait_applied(n, "n", "14").await;
        let e = n.engine();
        for k in legacy {
            assert_eq!(e.get(k), None, "node {}: the old key is gone", n.id);
        }
        assert!(e.system(b"raft.applied").is_some());
        assert!(e.system(b"raft.membership").is_some());
        assert_eq!(e.read(|v| v.count()), 6, "k0..k4 and n");
    }
    assert_same_lsns(&nodes);
    // And from the system namespace after a restart.
    stop_all(&mut nodes).await;
    start_all(&mut nodes).await;
    incr_by_7(&nodes, 21).await;
    for s in &nodes {
        wait_applied(s.node.as_ref().unwrap(), "n", "21").await;
    }
    assert_same_lsns(&nodes);
    stop_all(&mut nodes).await;
}
