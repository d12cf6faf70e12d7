//! keel cluster with real `keel serve` processes on 127.0.0.1: leader loss under load (kill -9,
//! at least 10 cycles), and a node that was down while the log was purged catching up by
//! snapshot, then membership changes while clients write.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::Server;

/// Runs `cmd` on whichever node leads, retrying through elections (a connection error, -MOVED
/// or -CLUSTERDOWN). Only for commands that are safe to repeat: reads, and KEEL.IDEM.
fn on_leader<T: redis::FromRedisValue>(
    nodes: &[Node],
    conn: &mut Option<redis::Connection>,
    cmd: &redis::Cmd,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if conn.is_none() {
            let lead = leader(nodes);
            *conn = redis::Client::open(format!("redis://{lead}/"))
                .and_then(|c| c.get_connection())
                .ok();
        }
        if let Some(c) = conn.as_mut() {
            match cmd.query::<T>(c) {
                Ok(v) => return v,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{:?}: {e}",
                        cmd.args_iter().count()
                    );
                    *conn = None;
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// GET through whichever node leads.
fn get_from_leader(
    nodes: &[Node],
    conn: &mut Option<redis::Connection>,
    k: &str,
) -> Option<String> {
    on_leader(nodes, conn, redis::cmd("GET").arg(k))
}

/// What one writer was told about each key.
#[derive(Default)]
struct Ledger {
    acked: Vec<(String, String)>,
    unknown: Vec<(String, String)>,
}

/// Writes unique keys, following -MOVED to the leader, and trying the next node of `addrs` when
/// one fails; a reply other than OK leaves the key's fate unknown.
fn writer(t: usize, addrs: Vec<String>, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let mut next = t;
    let mut addr = addrs[next % addrs.len()].clone();
    let mut conn: Option<redis::Connection> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match redis::Client::open(format!("redis://{addr}/"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            {
                Ok(c) => {
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    conn.insert(c)
                }
                Err(_) => {
                    next += 1;
                    addr = addrs[next % addrs.len()].clone();
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let (k, v) = (
            format!("w{t}-{i}"),
            format!("value-{t}-{i}-{}", "x".repeat(i % 50)),
        );
        i += 1;
        let r: redis::RedisResult<String> = redis::cmd("SET").arg(&k).arg(&v).query(c);
        match r {
            Ok(s) if s == "OK" => ledger.lock().unwrap().acked.push((k, v)),
            Err(e) if e.code() == Some("MOVED") => {
                // Never applied: a follower refuses before proposing.
                let detail = e.detail().unwrap_or("").to_string();
                addr = detail.split_whitespace().last().unwrap().to_string();
                conn = None;
            }
            _ => {
                ledger.lock().unwrap().unknown.push((k, v));
                conn = None;
                next += 1;
                addr = addrs[next % addrs.len()].clone();
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn leader_loss_under_load_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    let first = leader(&nodes);

    // A follower names the leader, and the hash slot of the key (CRC16 of "k", mod 16384).
    let follower = nodes.iter().find(|n| n.addr() != first).unwrap();
    let out = follower.server.as_ref().unwrap().cli(&["SET", "k", "v"]);
    assert_eq!(out.trim(), format!("MOVED 7629 {first}"));

    let stop = Arc::new(AtomicBool::new(false));
    let ledgers: Vec<_> = (0..16)
        .map(|_| Arc::new(Mutex::new(Ledger::default())))
        .collect();
    let writers: Vec<_> = ledgers
        .iter()
        .enumerate()
        .map(|(t, l)| {
            let (stop, l) = (stop.clone(), l.clone());
            let addrs = nodes.iter().map(Node::addr).collect();
            thread::spawn(move || writer(t, addrs, stop, l))
        })
        .collect();
    let acked = |ls: &[Arc<Mutex<Ledger>>]| {
        ls.iter()
            .map(|l| l.lock().unwrap().acked.len())
            .sum::<usize>()
    };
    for cycle in 0..10 {
        thread::sleep(Duration::from_millis(800));
        let lead = leader(&nodes);
        let before = acked(&ledgers);
        let vi = nodes.iter().position(|n| n.addr() == lead).unwrap();
        nodes[vi].server.take().unwrap().kill9();
        // Writes continue under a new leader.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked(&ledgers) <= before + 10 {
            if Instant::now() > deadline {
                dump(&nodes);
                panic!("cycle {cycle}: writes did not resume");
            }
            thread::sleep(Duration::from_millis(50));
        }
        nodes[vi].start();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }

    // KEEL.IDEM across a leader change: the retry, on the new leader, returns the first reply
    // and applies nothing. KEEL.CAS by version there.
    let mut c = None;
    let idem = || {
        redis::cmd("KEEL.IDEM")
            .arg("req-1")
            .arg("INCR")
            .arg("idem-ctr")
            .clone()
    };
    assert_eq!(on_leader::<i64>(&nodes, &mut c, &idem()), 1);
    let lead = leader(&nodes);
    let vi = nodes.iter().position(|n| n.addr() == lead).unwrap();
    nodes[vi].server.take().unwrap().kill9();
    c = None;
    assert_eq!(
        on_leader::<i64>(&nodes, &mut c, &idem()),
        1,
        "KEEL.IDEM applied twice"
    );
    nodes[vi].start();
    assert_eq!(
        get_from_leader(&nodes, &mut c, "idem-ctr").as_deref(),
        Some("1")
    );
    let v: i64 = on_leader(&nodes, &mut c, redis::cmd("KEEL.VERSION").arg("idem-ctr"));
    let cas = |value: &str| {
        redis::cmd("KEEL.CAS")
            .arg("idem-ctr")
            .arg(v)
            .arg(value)
            .clone()
    };
    assert_eq!(on_leader::<i64>(&nodes, &mut c, &cas("x")), 1);
    assert_eq!(
        on_leader::<i64>(&nodes, &mut c, &cas("y")),
        0,
        "a stale version was accepted"
    );
    assert_eq!(
        get_from_leader(&nodes, &mut c, "idem-ctr").as_deref(),
        Some("x")
    );

    let (mut n_acked, mut n_unknown, mut unknown_present) = (0, 0, 0);
    for l in &ledgers {
        let l = l.lock().unwrap();
        for (k, v) in &l.acked {
            let got = get_from_leader(&nodes, &mut c, k);
            assert_eq!(got.as_deref(), Some(v.as_str()), "acknowledged {k} lost");
            n_acked += 1;
        }
        for (k, v) in &l.unknown {
            let got = get_from_leader(&nodes, &mut c, k);
            assert!(
                got.is_none() || got.as_deref() == Some(v.as_str()),
                "{k} torn: {got:?}"
            );
            n_unknown += 1;
            unknown_present += got.is_some() as usize;
        }
    }
    eprintln!("10 leader kills: {n_acked} acknowledged writes all present; {n_unknown} unknown ({unknown_present} applied)");
    assert!(n_acked > 100);
}

/// How a command sent through a [`ToLeader`] failed.
enum Failed {
    /// Never sent: not applied.
    NotSent,
    /// Refused by a follower before it was proposed (-MOVED, or -CLUSTERDOWN where it knows
    /// no leader): not applied. (Of a transaction, EXEC or a queued command was refused:
    /// nothing was applied.)
    Refused,
    /// The reply was lost or an error: it may or may not have taken effect.
    Unknown,
}

/// A connection to whichever node leads: it follows -MOVED to the leader, and tries the next
/// node of `addrs` when one fails. Errors other than a lost connection, -MOVED and
/// -CLUSTERDOWN (or a cluster failure) are kept in `surprises`.
struct ToLeader {
    addrs: Vec<String>,
    next: usize,
    addr: String,
    conn: Option<redis::Connection>,
    surprises: Vec<String>,
}

impl ToLeader {
    fn new(t: usize, addrs: Vec<String>) -> ToLeader {
        ToLeader {
            addr: addrs[t % addrs.len()].clone(),
            next: t,
            addrs,
            conn: None,
            surprises: Vec::new(),
        }
    }

    fn try_next(&mut self) {
        self.conn = None;
        self.next += 1;
        self.addr = self.addrs[self.next % self.addrs.len()].clone();
    }

    fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Failed> {
        self.run(|c| cmd.query(c))
    }

    /// Runs `f` (one command, or a transaction: see [`transaction`]) on the node taken for
    /// the leader.
    fn run<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failed> {
        let c = match self.conn.as_mut() {
            Some(c) => c,
            None => match redis::Client::open(format!("redis://{}/", self.addr))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            {
                Ok(c) => {
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    self.conn.insert(c)
                }
                Err(_) => {
                    self.try_next();
                    thread::sleep(Duration::from_millis(50));
                    return Err(Failed::NotSent);
                }
            },
        };
        let e = match f(c) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        // A pipeline's error is its first failed command's.
        let errs = e.clone().into_server_errors().unwrap_or_default();
        let expected = match errs
            .first()
            .map(|(_, s)| (s.code(), s.details().unwrap_or("")))
        {
            Some(("MOVED", detail)) => {
                match detail.split_whitespace().nth(1) {
                    Some(leader) => {
                        self.addr = leader.to_string();
                        self.conn = None;
                    }
                    None => self.try_next(),
                }
                // Until they elect another, followers name a leader just killed.
                thread::sleep(Duration::from_millis(10));
                return Err(Failed::Refused);
            }
            Some(("CLUSTERDOWN", detail)) if detail.starts_with("no leader is known") => {
                self.try_next();
                thread::sleep(Duration::from_millis(20));
                return Err(Failed::Refused);
            }
            Some(("CLUSTERDOWN", _)) => true,
            Some(("ERR", detail)) => detail.starts_with("cluster:"),
            Some(_) => false,
            None => e.is_io_error() || e.is_connection_dropped() || e.is_timeout(),
        };
        if !expected {
            self.surprises.push(e.to_string());
        }
        self.try_next();
        thread::sleep(Duration::from_millis(20));
        Err(Failed::Unknown)
    }
}

/// What the producer and the consumers of the stream `jobs` were told.
#[derive(Default)]
struct Jobs {
    /// XADDs acknowledged: the entry's ID and its payload.
    added: Vec<(String, u64)>,
    /// Payloads of XADDs whose reply was lost: each may or may not be in the stream.
    unknown: Vec<u64>,
    /// What XREADGROUP delivered: the entry's ID, its payload and the consumer.
    delivered: Vec<(String, u64, usize)>,
    /// IDs whose XACK answered 1.
    acked: Vec<String>,
    /// IDs whose XACK answered 0 after an earlier attempt's reply was lost (that attempt acked).
    acked_before: Vec<String>,
    /// IDs whose XACK answered 0 at the first attempt: a delivery the group had no record of.
    not_pending: Vec<String>,
    /// XREADGROUPs whose reply was lost: what they delivered stays pending.
    lost_reads: usize,
    /// Consumers with an XREADGROUP in flight now.
    reading: usize,
    /// Unexpected error replies.
    surprises: Vec<String>,
}

/// XADDs `jobs * n <n>` with n counting up, ten in a MULTI, to whichever node leads; it
/// keeps a backlog of a few hundred entries not yet delivered, so that each XREADGROUP
/// delivers a full batch.
fn producer(addrs: Vec<String>, stop: Arc<AtomicBool>, jobs: Arc<Mutex<Jobs>>) {
    let mut to = ToLeader::new(0, addrs);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let backlog = {
            let j = jobs.lock().unwrap();
            j.added.len().saturating_sub(j.delivered.len())
        };
        if backlog > 300 {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        let batch: Vec<u64> = (n..n + 10).collect();
        n += 10;
        let add = transaction(batch.iter().map(|n| {
            redis::cmd("XADD")
                .arg("jobs")
                .arg("*")
                .arg("n")
                .arg(n)
                .clone()
        }));
        match to.run(|c| add.query::<(Vec<String>,)>(c)) {
            Ok((ids,)) => jobs
                .lock()
                .unwrap()
                .added
                .extend(ids.into_iter().zip(batch)),
            Err(Failed::NotSent | Failed::Refused) => {}
            Err(Failed::Unknown) => jobs.lock().unwrap().unknown.extend(batch),
        }
    }
    jobs.lock().unwrap().surprises.append(&mut to.surprises);
}

/// MULTI, `cmds`, EXEC, as a pipeline whose one reply is EXEC's. (redis-rs's atomic pipeline
/// hides the code of an error EXEC answers, such as a follower's -MOVED.)
fn transaction(cmds: impl Iterator<Item = redis::Cmd>) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.cmd("MULTI").ignore();
    for c in cmds {
        p.add_command(c).ignore();
    }
    p.cmd("EXEC");
    p
}

/// One entry of a stream reply: its ID and fields.
type Entry = (String, Vec<String>);

/// The payload of a job entry (`n <n>`).
fn payload((id, fields): &Entry) -> u64 {
    match &fields[..] {
        [f, n] if f == "n" => n.parse().unwrap(),
        _ => panic!("entry {id}: {fields:?}"),
    }
}

/// Consumer `c{t}` of group `g`: reads new entries five at a time and XACKs each one (one
/// XACK per ID, in a MULTI), retrying the XACKs not answered until they are; it finishes its
/// batch after `stop`.
fn consumer(t: usize, addrs: Vec<String>, stop: Arc<AtomicBool>, jobs: Arc<Mutex<Jobs>>) {
    let mut to = ToLeader::new(t, addrs);
    let read = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg(format!("c{t}"))
        .arg("COUNT")
        .arg(5)
        .arg("BLOCK")
        .arg(200)
        .arg("STREAMS")
        .arg("jobs")
        .arg(">")
        .clone();
    while !stop.load(Ordering::Relaxed) {
        jobs.lock().unwrap().reading += 1;
        let got = to.query::<Option<Vec<(String, Vec<Entry>)>>>(&read);
        jobs.lock().unwrap().reading -= 1;
        let got = match got {
            Ok(got) => got.unwrap_or_default(),
            Err(Failed::NotSent | Failed::Refused) => continue,
            Err(Failed::Unknown) => {
                jobs.lock().unwrap().lost_reads += 1;
                continue;
            }
        };
        let mut ids = Vec::new();
        for (key, entries) in got {
            assert_eq!(key, "jobs");
            for e in entries {
                jobs.lock()
                    .unwrap()
                    .delivered
                    .push((e.0.clone(), payload(&e), t));
                ids.push(e.0);
            }
        }
        // Whether an XACK of the ID was sent before, its reply lost.
        let mut lost = vec![false; ids.len()];
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ids.is_empty() {
            assert!(Instant::now() < deadline, "XACKs of {ids:?} never answered");
            let ack = transaction(
                ids.iter()
                    .map(|id| redis::cmd("XACK").arg("jobs").arg("g").arg(id).clone()),
            );
            let replies = match to.run(|c| ack.query::<(Vec<i64>,)>(c)) {
                Ok((replies,)) => replies,
                Err(Failed::NotSent | Failed::Refused) => continue,
                Err(Failed::Unknown) => {
                    lost.iter_mut().for_each(|l| *l = true);
                    continue;
                }
            };
            let mut j = jobs.lock().unwrap();
            for ((id, lost), r) in ids.drain(..).zip(lost.drain(..)).zip(replies) {
                match (r, lost) {
                    (1, _) => j.acked.push(id),
                    (0, true) => j.acked_before.push(id),
                    (0, false) => j.not_pending.push(id),
                    _ => panic!("XACK {id} answered {r}"),
                }
            }
        }
    }
    jobs.lock().unwrap().surprises.append(&mut to.surprises);
}

/// A stream ID as (ms, seq), for ordering.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// What one node holds of `jobs` and its group `g`: the entries, the pending entries (ID,
/// consumer and delivery count; not the idle time, which each node measures), the XPENDING
/// summary, and the group's last-delivered ID and entries-read.
type StreamState = (
    Vec<Entry>,
    Vec<(String, String, i64)>,
    redis::Value,
    String,
    Option<i64>,
);

fn stream_state(mut q: impl FnMut(&redis::Cmd) -> redis::Value) -> StreamState {
    let entries: Vec<Entry> =
        redis::from_redis_value(q(redis::cmd("XRANGE").arg("jobs").arg("-").arg("+"))).unwrap();
    let pending: Vec<(String, String, i64, i64)> =
        redis::from_redis_value(q(redis::cmd("XPENDING")
            .arg("jobs")
            .arg("g")
            .arg("-")
            .arg("+")
            .arg(100_000)))
        .unwrap();
    let pending = pending
        .into_iter()
        .map(|(id, c, _, n)| (id, c, n))
        .collect();
    let summary = q(redis::cmd("XPENDING").arg("jobs").arg("g"));
    let groups: Vec<HashMap<String, redis::Value>> =
        redis::from_redis_value(q(redis::cmd("XINFO").arg("GROUPS").arg("jobs"))).unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let field = |k: &str| groups[0].get(k).cloned().unwrap_or(redis::Value::Nil);
    (
        entries,
        pending,
        summary,
        redis::from_redis_value(field("last-delivered-id")).unwrap(),
        redis::from_redis_value(field("entries-read")).unwrap(),
    )
}

/// Consumers of a stream's group through leader kills (issue #20). A producer XADDs numbered
/// jobs while three consumers XREADGROUP and XACK them, each following the leader; twice, the
/// leader is killed -9 while a consumer waits for XREADGROUP's reply, and restarted once the
/// work goes on under a new one. Then, on the
/// leader: every acknowledged XADD is in the stream, and nothing else but XADDs of unknown
/// outcome, once each; no entry was delivered twice, or past the group's last-delivered ID;
/// no XACKed entry is pending; and every entry up to the last-delivered ID is either XACKed
/// or still pending (an XREADGROUP whose reply was lost in the kill leaves its entries
/// pending: their delivery was durable before the reply), none skipped. Every node then
/// holds the same stream and group.
#[test]
fn stream_consumers_through_a_leader_kill_lose_no_delivery_and_no_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&["--stale-reads"], tmp.path());
    let mut c = None;
    let create = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("jobs")
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .clone();
    assert_eq!(on_leader::<String>(&nodes, &mut c, &create), "OK");

    let stop = Arc::new(AtomicBool::new(false));
    let jobs = Arc::new(Mutex::new(Jobs::default()));
    let addrs: Vec<String> = nodes.iter().map(Node::addr).collect();
    let mut threads = vec![{
        let (addrs, stop, jobs) = (addrs.clone(), stop.clone(), jobs.clone());
        thread::spawn(move || producer(addrs, stop, jobs))
    }];
    for t in 1..=3 {
        let (addrs, stop, jobs) = (addrs.clone(), stop.clone(), jobs.clone());
        threads.push(thread::spawn(move || consumer(t, addrs, stop, jobs)));
    }
    // Waits until `more` further XADDs were acknowledged and XACKs answered.
    let progress = |nodes: &[Node], more: usize, what: &str| {
        let counts = || {
            let j = jobs.lock().unwrap();
            let answered = j.acked.len() + j.acked_before.len() + j.not_pending.len();
            (j.added.len(), answered)
        };
        let (added, acked) = counts();
        let deadline = Instant::now() + Duration::from_secs(30);
        while counts().0 < added + more || counts().1 < acked + more {
            if Instant::now() > deadline {
                dump(nodes);
                let (a, b) = counts();
                panic!("{what}: XADDs acknowledged {added} -> {a}, XACKs answered {acked} -> {b}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    progress(&nodes, 200, "at the start");
    for cycle in 0..2 {
        // Killed while a consumer waits for XREADGROUP's reply, when likely its delivery is
        // in the leader's log, maybe in a follower's, and not yet committed.
        let lead = leader(&nodes);
        let vi = nodes.iter().position(|n| n.addr() == lead).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while jobs.lock().unwrap().reading == 0 && Instant::now() < deadline {
            thread::yield_now();
        }
        nodes[vi].server.take().unwrap().kill9();
        progress(&nodes, 100, &format!("kill {cycle}: under a new leader"));
        nodes[vi].start();
        progress(
            &nodes,
            100,
            &format!("kill {cycle}: with the old leader back"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let j = jobs.lock().unwrap();
    assert!(
        j.surprises.is_empty(),
        "unexpected errors: {:?}",
        j.surprises
    );
    let (entries, pending, summary, last, entries_read) =
        stream_state(|cmd| on_leader(&nodes, &mut c, cmd));

    // (1) Every acknowledged XADD is there; nothing but XADDs is, once each.
    let by_id: HashMap<&str, u64> = entries.iter().map(|e| (e.0.as_str(), payload(e))).collect();
    for (id, n) in &j.added {
        assert_eq!(
            by_id.get(id.as_str()),
            Some(n),
            "acknowledged XADD {id} (n {n}) lost"
        );
    }
    let sent: HashSet<u64> = j
        .added
        .iter()
        .map(|a| a.1)
        .chain(j.unknown.clone())
        .collect();
    let mut seen = HashSet::new();
    for e in &entries {
        let n = payload(e);
        assert!(sent.contains(&n), "entry {} holds n {n}, never sent", e.0);
        assert!(seen.insert(n), "n {n} added twice");
    }

    // No entry delivered twice, or past the group's last-delivered ID, or unlike the stream's.
    let last_id = stream_id(&last);
    let mut delivered = HashMap::new();
    for (id, n, t) in &j.delivered {
        assert_eq!(
            by_id.get(id.as_str()),
            Some(n),
            "{id} delivered to c{t} as n {n}"
        );
        assert!(stream_id(id) <= last_id, "{id} delivered past {last}");
        if let Some(first) = delivered.insert(id.as_str(), *t) {
            panic!("{id} delivered twice: to c{first} and to c{t}");
        }
    }
    assert!(
        j.not_pending.is_empty(),
        "delivered, yet not pending at its first XACK: {:?}",
        j.not_pending
    );

    // (2) No XACKed entry is pending.
    let pending_ids: HashMap<&str, &str> = pending
        .iter()
        .map(|(id, c, _)| (id.as_str(), c.as_str()))
        .collect();
    let acked: HashSet<&str> = j
        .acked
        .iter()
        .chain(&j.acked_before)
        .map(String::as_str)
        .collect();
    for id in &acked {
        assert!(!pending_ids.contains_key(id), "{id} XACKed, yet pending");
    }
    // What is pending was delivered by XREADGROUPs whose reply was lost (five at most each).
    for (id, c, count) in &pending {
        assert!(
            by_id.contains_key(id.as_str()),
            "pending {id} not in the stream"
        );
        if let Some(t) = delivered.get(id.as_str()) {
            panic!("{id} pending with {c}, yet c{t} had it and XACKed it");
        }
        assert_eq!(*count, 1, "{id} pending with {c}, delivered {count} times");
    }
    assert!(
        pending.len() <= 5 * j.lost_reads,
        "{} pending after {} XREADGROUP replies were lost",
        pending.len(),
        j.lost_reads
    );

    // (3) Every entry up to the last-delivered ID is XACKed or pending; none after it is
    // either. entries-read counts the entries delivered.
    let mut upto = 0;
    for (id, _) in &entries {
        let (a, p) = (
            acked.contains(id.as_str()),
            pending_ids.contains_key(id.as_str()),
        );
        if stream_id(id) <= last_id {
            upto += 1;
            assert!(
                a || p,
                "{id} (up to {last}) neither XACKed nor pending: skipped"
            );
        } else {
            assert!(
                !a && !p,
                "{id} after {last}, yet XACKed ({a}) or pending ({p})"
            );
        }
    }
    assert_eq!(entries_read, Some(upto), "entries-read of the group");

    // (4) Every node holds the same stream and group, once caught up.
    let want = (
        entries.clone(),
        pending.clone(),
        summary.clone(),
        last.clone(),
        entries_read,
    );
    for n in &nodes {
        let mut f = n.server.as_ref().unwrap().client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = stream_state(|cmd| cmd.query(&mut f).unwrap());
            if got == want {
                break;
            }
            if Instant::now() > deadline {
                dump(&nodes);
                panic!(
                    "node {} differs: XLEN {} vs {}, XPENDING {:?} vs {:?}, last {} vs {}, entries-read {:?} vs {:?}",
                    n.id,
                    got.0.len(),
                    want.0.len(),
                    got.2,
                    want.2,
                    got.3,
                    want.3,
                    got.4,
                    want.4
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!(
        "{} XADDs acknowledged, {} unknown; stream of {}; {} delivered, {} XACKed (+{} whose \
         first reply was lost); {} XREADGROUP replies lost, {} entries left pending; last {last}",
        j.added.len(),
        j.unknown.len(),
        entries.len(),
        j.delivered.len(),
        j.acked.len(),
        j.acked_before.len(),
        j.lost_reads,
        pending.len()
    );
}

#[test]
fn a_node_behind_a_purged_log_catches_up_by_snapshot_and_membership_changes_under_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = [
        "--raft-snapshot-every",
        "100",
        "--stale-reads",
        "--metrics-port",
        "0",
    ];
    let mut nodes = started_cluster(&extra, tmp.path());
    let lead = leader(&nodes);
    let li = nodes.iter().position(|n| n.addr() == lead).unwrap();
    let lagger = (li + 1) % 3;
    nodes[lagger].server.take().unwrap().kill9();

    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    common::set_numbered(&mut c, "k", 600);
    let st = status(&lead);
    let purged: u64 = st["purged_index"]
        .parse()
        .expect("the leader purged its log");
    assert!(purged > 100, "{st:?}");

    nodes[lagger].start();
    let mut f = nodes[lagger].server.as_ref().unwrap().client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Option<String> = redis::cmd("GET").arg("k599").query(&mut f).unwrap();
        if got.as_deref() == Some("599") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lagging node never caught up"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let st = status(&nodes[lagger].addr());
    assert_ne!(
        st["snapshot_index"], "-",
        "caught up without a snapshot? {st:?}"
    );
    let got: Option<String> = redis::cmd("GET").arg("k0").query(&mut f).unwrap();
    assert_eq!(got.as_deref(), Some("0"));
    // The metrics endpoint reports the raft state.
    let leader_node = nodes.iter().find(|n| n.addr() == lead).unwrap();
    let port = common::metrics_port(leader_node.server.as_ref().unwrap());
    let text = common::http(port, b"GET /metrics HTTP/1.1\r\nHost: keel\r\n\r\n");
    for want in [
        "keel_raft_state{state=\"leader\"} 1",
        "keel_raft_voters 3",
        "keel_raft_replication_lag_entries{node=",
        "keel_raft_log_fsyncs_total ",
    ] {
        assert!(text.contains(want), "no {want} in:\n{text}");
    }
    // Bad input on a raft port (P11): a frame longer than the limit, and bytes that are no
    // request, each close that connection and nothing else.
    use std::io::{Read, Write};
    for bad in [
        &[0xff, 0xff, 0xff, 0x7f][..],
        &[3, 0, 0, 0, 0xee, 0xee, 0xee],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", nodes[lagger].raft)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bad).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "{bad:?} got an answer: {buf:?}");
    }
    // The node still serves its peers: the leader still reaches a quorum.
    let got: Option<String> = redis::cmd("GET").arg("k0").query(&mut c).unwrap();
    assert_eq!(got.as_deref(), Some("0"));
    // Replication state stays hidden from clients.
    let size: i64 = redis::cmd("DBSIZE").query(&mut f).unwrap();
    assert_eq!(size, 600);
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut f).unwrap();
    assert!(info.contains("db0:keys=600,"), "{info}");
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut f).unwrap();
    assert_eq!(all.len(), 600);

    // Membership: add a fourth node while a client writes, then remove one.
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let w = {
        let (stop, ledger, lead) = (stop.clone(), ledger.clone(), lead.clone());
        thread::spawn(move || writer(0, vec![lead], stop, ledger))
    };
    let mut fourth = Node {
        id: 4,
        port: free_port(),
        raft: free_port(),
        dir: tmp.path().join("n4"),
        peers: String::new(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        server: None,
    };
    fourth.start();
    let (ok, text) = cluster_cli(&lead, &["add-node", &format!("127.0.0.1:{}", fourth.raft)]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), "4");
    let victim = nodes.iter().position(|n| n.addr() != lead).unwrap();
    let (ok, text) = cluster_cli(&lead, &["remove-node", &nodes[victim].id.to_string()]);
    assert!(ok, "{text}");
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    let st = status(&lead);
    assert!(
        st.contains_key("member_4") && !st.contains_key(&format!("member_{}", nodes[victim].id)),
        "{st:?}"
    );
    let l = ledger.lock().unwrap();
    assert!(!l.acked.is_empty());
    let mut f4 = fourth.server.as_ref().unwrap().client();
    let (k, v) = l.acked.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Option<String> = redis::cmd("GET").arg(k).query(&mut f4).unwrap();
        if got.as_deref() == Some(v.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the new node never got {k}");
        thread::sleep(Duration::from_millis(100));
    }
    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    for (k, v) in l.acked.iter() {
        let got: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(got.as_deref(), Some(v.as_str()));
    }
}

/// A TCP proxy in front of one node's raft port that drops connections from blocked source
/// addresses (each node connects out from its own --bind address).
struct Proxy {
    port: u16,
    blocked: Arc<Mutex<Vec<std::net::IpAddr>>>,
}

impl Proxy {
    fn start(to: std::net::SocketAddr) -> Proxy {
        let l = std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let port = l.local_addr().unwrap().port();
        let blocked: Arc<Mutex<Vec<std::net::IpAddr>>> = Arc::default();
        let b = blocked.clone();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(a) = conn else { continue };
                let src = a.peer_addr().unwrap().ip();
                if b.lock().unwrap().contains(&src) {
                    continue; // dropped: the peer sees the connection close
                }
                let Ok(z) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut into) in
                    [(a.try_clone().unwrap(), z.try_clone().unwrap()), (z, a)]
                {
                    let b = b.clone();
                    thread::spawn(move || {
                        use std::io::{Read, Write};
                        from.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            if b.lock().unwrap().contains(&src) {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                // Checked again: nothing read after the cut goes through.
                                Ok(n) if !b.lock().unwrap().contains(&src) => {
                                    if into.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => break,
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, blocked }
    }
}

#[test]
fn an_isolated_leader_acknowledges_nothing_and_its_entries_are_discarded_on_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let ip = |id: u64| -> std::net::IpAddr { format!("127.0.0.{}", 10 + id).parse().unwrap() };
    let raft: Vec<u16> = (1..=3).map(|_| free_port()).collect();
    let proxies: Vec<Proxy> = (1..=3u64)
        .map(|id| Proxy::start(std::net::SocketAddr::new(ip(id), raft[id as usize - 1])))
        .collect();
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let peers = (1..=3u64)
                .filter(|&j| j != id)
                .map(|j| format!("{j}=127.0.0.1:{}", proxies[j as usize - 1].port))
                .collect::<Vec<_>>()
                .join(",");
            Node {
                id,
                port: free_port(),
                raft: raft[id as usize - 1],
                dir: tmp.path().join(format!("n{id}")),
                peers,
                extra: vec![
                    "--bind".into(),
                    ip(id).to_string(),
                    "--raft-advertise".into(),
                    format!("127.0.0.1:{}", proxies[id as usize - 1].port),
                ],
                server: None,
            }
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let addr = |n: &Node| format!("{}:{}", ip(n.id), n.port);
    let (ok, text) = cluster_cli(&addr(&nodes[0]), &["init"]);
    assert!(ok, "{text}");
    let status_of = |n: &Node| status(&addr(n));
    // `leader` reads addresses from status, which names the client addresses.
    let deadline = Instant::now() + Duration::from_secs(30);
    let old = loop {
        if let Some(l) = nodes
            .iter()
            .find(|n| status_of(n).get("state").map(String::as_str) == Some("leader"))
        {
            break l.id;
        }
        assert!(Instant::now() < deadline, "no leader");
        thread::sleep(Duration::from_millis(100));
    };
    let li = old as usize - 1;
    let client = |n: &Node| {
        let c = redis::Client::open(format!("redis://{}/", addr(n))).unwrap();
        let c = c.get_connection().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    };
    let mut c = client(&nodes[li]);
    common::set_numbered(&mut c, "before", 50);

    // Cut the leader off, both ways.
    for (j, p) in proxies.iter().enumerate() {
        let mut b = p.blocked.lock().unwrap();
        if j == li {
            b.extend((1..=3u64).filter(|&id| id != old).map(ip));
        } else {
            b.push(ip(old));
        }
    }
    for i in 0..2 {
        let r: redis::RedisResult<String> = redis::cmd("SET")
            .arg(format!("isolated{i}"))
            .arg("x")
            .query(&mut c);
        let e = r.expect_err("an isolated leader acknowledged a write");
        assert_eq!(e.code(), Some("CLUSTERDOWN"), "{e}");
    }
    let r: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("before1").query(&mut c);
    assert!(
        r.is_err(),
        "an isolated leader answered a linearizable read: {r:?}"
    );

    // The majority elects a new leader and goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let found = nodes
            .iter()
            .filter(|n| n.id != old)
            .find(|n| status_of(n).get("state").map(String::as_str) == Some("leader"));
        if let Some(n) = found {
            break n.id;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        thread::sleep(Duration::from_millis(100));
    };
    let mut m = client(&nodes[new as usize - 1]);
    common::set_numbered(&mut m, "after", 50);

    // Heal: the old leader follows, its log is overwritten past the last committed entry (its
    // two unacknowledged entries are discarded), and it catches up.
    let target: u64 = status_of(&nodes[new as usize - 1])["applied_index"]
        .parse()
        .unwrap();
    for p in &proxies {
        p.blocked.lock().unwrap().clear();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status_of(&nodes[li]);
        let applied: u64 = st["applied_index"].parse().unwrap_or(0);
        if st["state"] == "follower" && st["leader"] == new.to_string() && applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader did not rejoin: {st:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // A follower sends clients to the leader.
    let r: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("before1").query(&mut c);
    assert_eq!(r.unwrap_err().code(), Some("MOVED"));
    {
        let conn = &mut m;
        for i in 0..2 {
            let got: Option<String> = redis::cmd("GET")
                .arg(format!("isolated{i}"))
                .query(conn)
                .unwrap();
            assert_eq!(
                got, None,
                "an unacknowledged write of the isolated leader survived"
            );
        }
        for i in 0..50 {
            for k in [format!("before{i}"), format!("after{i}")] {
                let got: Option<String> = redis::cmd("GET").arg(&k).query(conn).unwrap();
                assert_eq!(got, Some(i.to_string()), "{k}");
            }
        }
    }
}

/// One client's view of an op, for the linearizability check.
type Op = (String, keel_lincheck::RegisterOp<String>);

/// A client that runs reads, writes and compare-and-sets (WATCH, GET, MULTI, SET, EXEC) on a
/// few keys against whichever node leads, recording each op with its invoke and completion
/// ticks on one shared clock. -MOVED means the op was refused before it was proposed, so it is
/// not recorded; any other failure leaves a write or CAS indeterminate (it may or may not have
/// taken effect) and drops a read.
fn lin_client(
    t: usize,
    addrs: Vec<String>,
    clock: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<keel_lincheck::History<Op>>>,
) {
    use keel_lincheck::RegisterOp;
    let tick = || clock.elapsed().as_micros() as u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut node = t;
    let mut conn: Option<redis::Connection> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            node += 1;
            conn = redis::Client::open(format!("redis://{}/", addrs[node % addrs.len()]))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .ok();
            if let Some(c) = conn.as_ref() {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            } else {
                thread::sleep(Duration::from_millis(50));
            }
            continue;
        };
        let key = format!("lin{}", next() % 3);
        i += 1;
        let value = format!("{t}-{i}");
        let invoke = tick();
        let (op, result): (RegisterOp<String>, redis::RedisResult<bool>) = match next() % 3 {
            0 => {
                let r: redis::RedisResult<Option<String>> = redis::cmd("GET").arg(&key).query(c);
                match r {
                    Ok(v) => (RegisterOp::Read { returned: v }, Ok(true)),
                    Err(e) => (RegisterOp::Read { returned: None }, Err(e)),
                }
            }
            1 => {
                let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(&value).query(c);
                (
                    RegisterOp::Write {
                        value: value.clone(),
                    },
                    r.map(|_| true),
                )
            }
            _ => {
                let r = (|| -> redis::RedisResult<(Option<String>, bool)> {
                    redis::cmd("WATCH").arg(&key).query::<()>(c)?;
                    let seen: Option<String> = redis::cmd("GET").arg(&key).query(c)?;
                    redis::cmd("MULTI").query::<()>(c)?;
                    redis::cmd("SET").arg(&key).arg(&value).query::<()>(c)?;
                    let done: Option<Vec<String>> = redis::cmd("EXEC").query(c)?;
                    Ok((seen, done.is_some()))
                })();
                match r {
                    Ok((seen, ok)) => (
                        RegisterOp::Cas {
                            expected: seen,
                            new: value.clone(),
                            succeeded: ok,
                        },
                        Ok(true),
                    ),
                    // Unknown: recorded as a CAS that succeeded if it took effect at all. What
                    // it expected is unknown too, so it is recorded only if EXEC may have run.
                    Err(e) => (
                        RegisterOp::Write {
                            value: value.clone(),
                        },
                        Err(e),
                    ),
                }
            }
        };
        let done = tick();
        match result {
            Ok(_) => {
                history.lock().unwrap().push(invoke, Some(done), (key, op));
            }
            Err(e) if e.code() == Some("MOVED") => {
                let detail = e.detail().unwrap_or("").to_string();
                let leader = detail.split_whitespace().last().unwrap_or("").to_string();
                if let Some(p) = addrs.iter().position(|a| *a == leader) {
                    node = p + addrs.len() - 1;
                }
                conn = None;
            }
            Err(_) => {
                // A read that failed proves nothing; a write or CAS may still take effect.
                // (A CAS that failed before EXEC never wrote: recording it as a write that may
                // have happened only widens what the checker accepts for this one op.)
                if !matches!(op, RegisterOp::Read { .. }) {
                    history.lock().unwrap().push(invoke, None, (key, op));
                }
                conn = None;
            }
        }
    }
}

#[test]
fn reads_writes_and_cas_stay_linearizable_while_leaders_are_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    leader(&nodes);
    let clock = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(keel_lincheck::History::new()));
    let addrs: Vec<String> = nodes.iter().map(Node::addr).collect();
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let (addrs, stop, history) = (addrs.clone(), stop.clone(), history.clone());
            thread::spawn(move || lin_client(t, addrs, clock, stop, history))
        })
        .collect();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(1500));
        let lead = leader(&nodes);
        let vi = nodes.iter().position(|n| n.addr() == lead).unwrap();
        nodes[vi].server.take().unwrap().kill9();
        thread::sleep(Duration::from_millis(1500));
        nodes[vi].start();
    }
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let history = history.lock().unwrap().clone();
    let completed = history
        .ops
        .iter()
        .filter(|o| o.completion.is_some())
        .count();
    let verdict =
        keel_lincheck::check_keyed(&keel_lincheck::Register::default(), &history, 50_000_000);
    eprintln!(
        "{} ops recorded ({completed} completed, {} indeterminate): {verdict:?}",
        history.ops.len(),
        history.ops.len() - completed
    );
    assert!(completed > 100, "too few ops completed to judge");
    assert!(verdict.is_linearizable(), "{verdict:?}");
}

#[test]
fn nodes_talk_mutual_tls_and_refuse_plaintext_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let NodePki { ca, cert, key, .. } = node_pki(tmp.path());
    let tls = ["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca];
    let mut nodes = make(3, &tls, tmp.path());
    for n in nodes.iter_mut() {
        n.start();
    }
    let cli_tls = [
        "--tls-ca",
        ca.as_str(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let run = |addr: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(cli_tls);
        cluster_cli(addr, &all)
    };
    let (ok, text) = run(&nodes[0].addr(), &["init"]);
    assert!(ok, "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let lead = loop {
        let (_, text) = run(&nodes[0].addr(), &["status"]);
        let st: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once(':')).collect();
        if let Some(m) = st
            .get("leader")
            .and_then(|l| st.get(format!("member_{l}").as_str()))
        {
            break m
                .split("client=")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_string();
        }
        assert!(Instant::now() < deadline, "no leader: {text}");
        thread::sleep(Duration::from_millis(100));
    };
    // A write replicated over TLS: every member's match index reaches it.
    let (host, port) = lead.rsplit_once(':').unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args([
                "--tls", "--cacert", &ca, "--cert", &cert, "--key", &key, "-h", host, "-p", port,
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "k", "over-tls"]), "OK");
    assert_eq!(cli(&["GET", "k"]), "over-tls");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = run(&lead, &["status"]);
        let applied: Vec<&str> = text.lines().filter(|l| l.starts_with("member_")).collect();
        if applied.len() == 3 && applied.iter().all(|l| l.contains("lag=0")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "followers did not catch up over TLS: {text}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // A plaintext peer gets no answer from a raft port.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", nodes[0].raft)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[1, 0, 0, 0, 0]).unwrap(); // a hello frame
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty() || buf[0] == 0x15,
        "a plaintext hello got {buf:?}"
    );
    // TLS on a cluster node without a CA to verify peers with refuses to start.
    let dir = tmp.path().join("no-ca");
    let port = free_port().to_string();
    let err = Server::try_start(
        &dir,
        &[
            "--port",
            &port,
            "--node-id",
            "9",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    )
    .err()
    .expect("a TLS node without a CA started");
    assert!(
        err.1.join("\n").contains("needs tls_ca_file"),
        "{:?}",
        err.1
    );
    // Bound to every address, a node must be told which one to advertise.
    let port = free_port().to_string();
    let err = Server::try_start(
        &tmp.path().join("any"),
        &["--bind", "0.0.0.0", "--port", &port, "--node-id", "9"],
    )
    .err()
    .expect("a node bound to 0.0.0.0 without --advertise started");
    assert!(
        err.1.join("\n").contains("needs --advertise"),
        "{:?}",
        err.1
    );
    // A weaker sync_policy would be a false promise on a cluster node: refused, not ignored.
    let conf = tmp.path().join("never.toml");
    std::fs::write(&conf, "sync_policy = \"never\"\n").unwrap();
    let port = free_port().to_string();
    let err = Server::try_start(
        &tmp.path().join("never"),
        &[
            "--config",
            conf.to_str().unwrap(),
            "--port",
            &port,
            "--node-id",
            "9",
        ],
    )
    .err()
    .expect("a cluster node with sync_policy = never started");
    assert!(
        err.1
            .join("\n")
            .contains("sync_policy does not apply to a cluster node"),
        "{:?}",
        err.1
    );
}

/// KEEL.MAINTENANCE goes through the raft log: once the leader acknowledges ON, it refuses
/// writes, every node reports the mode after applying it, a follower killed and restarted still
/// has it, and OFF takes writes again.
#[test]
fn maintenance_mode_reaches_every_node_of_a_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    let lead = leader(&nodes);
    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut c)
        .unwrap();
    redis::cmd("KEEL.MAINTENANCE")
        .arg("ON")
        .arg("rolling upgrade")
        .query::<()>(&mut c)
        .unwrap();
    let err = redis::cmd("SET")
        .arg("k")
        .arg("w")
        .query::<()>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("MAINTENANCE"), "{err}");
    let got: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(got, "v");

    let mode_on = |n: &Node| {
        let mut c = n.server.as_ref().unwrap().client();
        let info: String = redis::cmd("INFO").arg("keel").query(&mut c).unwrap();
        info.lines().any(|l| l.trim() == "maintenance:1")
    };
    let wait_for = |nodes: &[Node], want: bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while nodes.iter().any(|n| mode_on(n) != want) {
            assert!(
                Instant::now() < deadline,
                "not every node has maintenance {want}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(&nodes, true);
    let follower = nodes.iter().position(|n| n.addr() != lead).unwrap();
    nodes[follower].server.take().unwrap().kill9();
    nodes[follower].start();
    wait_for(&nodes, true);

    redis::cmd("KEEL.MAINTENANCE")
        .arg("OFF")
        .query::<()>(&mut c)
        .unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("w")
        .query::<()>(&mut c)
        .unwrap();
    wait_for(&nodes, false);
}

/// Encryption at rest on a cluster: every node's raft log, engine log and snapshots (the one a
/// lagging node receives included) hold no value in plaintext; a node without the key refuses
/// to start, saying "key".
#[test]
fn an_encrypted_cluster_writes_no_value_in_plaintext_on_any_node() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let line = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["keygen", "--id", "3"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&keys, line).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = [
        "--encryption-key-file",
        keys.to_str().unwrap(),
        "--raft-snapshot-every",
        "100",
        "--stale-reads",
    ];
    let mut nodes = started_cluster(&extra, tmp.path());
    let lead = leader(&nodes);
    let lagger = nodes.iter().position(|n| n.addr() != lead).unwrap();
    nodes[lagger].server.take().unwrap().kill9();
    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    for i in 0..400 {
        redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("TOPSECRET-{i}"))
            .query::<()>(&mut c)
            .unwrap();
    }
    nodes[lagger].start();
    let mut f = nodes[lagger].server.as_ref().unwrap().client();
    let deadline = Instant::now() + Duration::from_secs(60);
    while redis::cmd("GET")
        .arg("k399")
        .query::<Option<String>>(&mut f)
        .unwrap()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the lagging node never caught up"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(status(&nodes[lagger].addr())["snapshot_index"], "-");
    for n in nodes.iter_mut() {
        n.server.take().unwrap().sigterm();
    }
    fn search(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>, files: &mut usize) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                search(&p, found, files);
            } else {
                *files += 1;
                if std::fs::read(&p)
                    .unwrap()
                    .windows(9)
                    .any(|w| w == b"TOPSECRET")
                {
                    found.push(p);
                }
            }
        }
    }
    let (mut found, mut files) = (Vec::new(), 0);
    for n in &nodes {
        search(&n.dir, &mut found, &mut files);
    }
    assert!(files > 10);
    assert!(found.is_empty(), "plaintext values in {found:?}");
    nodes[0].extra.drain(..2);
    let (port, raft) = (nodes[0].port.to_string(), nodes[0].raft.to_string());
    let (status, log) = Server::try_start(
        &nodes[0].dir,
        &["--port", &port, "--node-id", "1", "--raft-port", &raft],
    )
    .err()
    .expect("a node without its key refuses to start");
    let log = log.join("\n");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("no encryption key was given"), "{log}");
}

/// What a cluster-aware client sees: a follower describes one shard owning slots 0-16383 whose
/// master is the leader, names each node by its id as 40 hex digits, and redirects with the
/// key's real slot. redis-rs's ClusterClient, bootstrapped from a follower, writes and reads;
/// it keeps writing once the leader is killed, and every write it had acknowledged is there.
/// The restarted old leader, now a follower with --stale-reads, reads locally until READWRITE.
#[test]
fn a_cluster_client_follows_the_leader_through_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    let lead = leader(&nodes);
    let li = nodes.iter().position(|n| n.addr() == lead).unwrap();
    let fi = (li + 1) % 3;
    let name = |i: usize| format!("{:040x}", nodes[i].id);

    // The follower knows the leader once its state is ok.
    let mut f = nodes[fi].server.as_ref().unwrap().client();
    let info = (0..600)
        .map(|_| {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut f).unwrap();
            if !info.contains("cluster_state:ok\r\n") {
                thread::sleep(Duration::from_millis(100));
            }
            info
        })
        .find(|i| i.contains("cluster_state:ok\r\n"))
        .expect("the follower never learned the leader");
    for field in [
        "cluster_slots_assigned:16384",
        "cluster_slots_ok:16384",
        "cluster_slots_fail:0",
        "cluster_known_nodes:3",
        "cluster_size:1",
    ] {
        assert!(info.contains(&format!("{field}\r\n")), "{info}");
    }
    let term = status(&lead)["term"].clone();
    assert!(
        info.contains(&format!("cluster_current_epoch:{term}\r\n")),
        "{info}"
    );
    let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut f).unwrap();
    assert_eq!(id, name(fi));

    // SLOTS: one range, the leader first, then the two followers.
    let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut f).unwrap();
    let redis::Value::Array(ranges) = slots else {
        panic!("{slots:?}")
    };
    assert_eq!(ranges.len(), 1);
    let redis::Value::Array(range) = &ranges[0] else {
        panic!("{ranges:?}")
    };
    assert_eq!(range.len(), 5, "{range:?}");
    assert_eq!(range[..2], [redis::Value::Int(0), redis::Value::Int(16383)]);
    let node = |v: &redis::Value| -> (String, u16, String) {
        let redis::Value::Array(n) = v else {
            panic!("{v:?}")
        };
        redis::from_redis_value(redis::Value::Array(n[..3].to_vec())).unwrap()
    };
    assert_eq!(
        node(&range[2]),
        ("127.0.0.1".into(), nodes[li].port, name(li))
    );
    let mut replicas: Vec<_> = range[3..].iter().map(node).collect();
    replicas.sort_by_key(|r| r.1);
    let mut want: Vec<_> = (0..3)
        .filter(|&i| i != li)
        .map(|i| ("127.0.0.1".to_string(), nodes[i].port, name(i)))
        .collect();
    want.sort_by_key(|r| r.1);
    assert_eq!(replicas, want);

    // NODES: Redis's line format; the leader a master owning every slot.
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut f).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (i, n) in nodes.iter().enumerate() {
        let l = lines.iter().find(|l| l[0] == name(i)).expect(&text);
        assert_eq!(l[1], format!("127.0.0.1:{}@{}", n.port, n.raft));
        let (flags, of, slots) = match (i == li, i == fi) {
            (true, _) => ("master", "-".to_string(), vec!["0-16383"]),
            (_, true) => ("myself,slave", name(li), vec![]),
            _ => ("slave", name(li), vec![]),
        };
        assert_eq!((l[2], l[3]), (flags, of.as_str()), "{text}");
        assert_eq!(l[6], term, "{text}");
        assert_eq!(l[7], "connected");
        assert_eq!(l[8..], slots[..], "{text}");
    }

    // SHARDS: one shard, with every node and one master.
    let shards: redis::Value = redis::cmd("CLUSTER").arg("SHARDS").query(&mut f).unwrap();
    let shown = format!("{shards:?}").to_lowercase();
    assert!(shown.contains("[int(0), int(16383)]"), "{shown}");
    assert_eq!(shown.matches("\"master\"").count(), 1, "{shown}");
    assert_eq!(shown.matches("\"replica\"").count(), 2, "{shown}");

    // -MOVED names the real slot of the command's first key; 0 for a command without keys.
    let keyslot = |f: &mut redis::Connection, k: &str| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query(f)
            .unwrap()
    };
    assert_eq!(keyslot(&mut f, "foo"), 12182);
    assert_eq!(keyslot(&mut f, "{user1000}.following"), 3443);
    assert_eq!(keyslot(&mut f, "{user1000}.followers"), 3443);
    let mut raw = nodes[fi].server.as_ref().unwrap().raw();
    raw.cmd(&["SET", "foo", "bar"], &format!("-MOVED 12182 {lead}\r\n"));
    raw.cmd(&["GET", "foo"], &format!("-MOVED 12182 {lead}\r\n"));
    raw.cmd(
        &["SET", "{user1000}.following", "x"],
        &format!("-MOVED 3443 {lead}\r\n"),
    );
    raw.cmd(
        &["LRANGE", "{user1000}.followers", "0", "-1"],
        &format!("-MOVED 3443 {lead}\r\n"),
    );
    raw.cmd(&["DBSIZE"], &format!("-MOVED 0 {lead}\r\n"));
    // Without --stale-reads, READONLY is accepted and reads still go to the leader.
    raw.cmd(&["READONLY"], "+OK\r\n");
    raw.cmd(&["GET", "foo"], &format!("-MOVED 12182 {lead}\r\n"));
    raw.cmd(&["READWRITE"], "+OK\r\n");
    let info: String = redis::cmd("INFO").query(&mut f).unwrap();
    assert!(info.contains("\r\nredis_mode:cluster\r\n"), "{info}");
    assert!(
        info.contains("# Cluster\r\ncluster_enabled:1\r\n"),
        "{info}"
    );

    // The client asks the follower for the topology, then writes to the leader.
    let client =
        redis::cluster::ClusterClient::new(vec![format!("redis://{}/", nodes[fi].addr())]).unwrap();
    let mut conn = client.get_connection().unwrap();
    let (mut acked, mut unknown) = (Vec::new(), Vec::new());
    let kv = |i: usize| (format!("{{user{}}}.c{i}", i % 7), format!("v{i}"));
    for i in 0..100 {
        let (k, v) = kv(i);
        redis::cmd("SET")
            .arg(&k)
            .arg(&v)
            .query::<()>(&mut conn)
            .unwrap();
        acked.push((k, v));
    }
    for (k, v) in &acked {
        let got: String = redis::cmd("GET").arg(k).query(&mut conn).unwrap();
        assert_eq!(&got, v);
    }

    // Kill the leader; write on until 20 more writes are acknowledged. A write whose reply was
    // lost may or may not have been applied. A connection that keeps failing (routed to the
    // dead node) is replaced by a new one, which asks the follower for the topology again.
    nodes[li].server.take().unwrap().kill9();
    let (mut i, mut after, mut failures) = (100, 0, 0);
    let mut conn = Some(conn);
    while after < 20 {
        assert!(failures < 600, "the client never found the new leader");
        let Some(c) = conn.as_mut() else {
            conn = client.get_connection().ok();
            failures += conn.is_none() as usize;
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let (k, v) = kv(i);
        i += 1;
        match redis::cmd("SET").arg(&k).arg(&v).query::<()>(c) {
            Ok(()) => {
                acked.push((k, v));
                after += 1;
            }
            Err(e) => {
                unknown.push((k, v));
                failures += 1;
                if failures % 5 == 0 || e.is_io_error() {
                    conn = None;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!(
        "after the kill: {failures} failed attempts, {} writes of unknown outcome",
        unknown.len()
    );
    let c = conn.as_mut().unwrap();
    for (k, v) in &acked {
        let got: Option<String> = redis::cmd("GET").arg(k).query(c).unwrap();
        assert_eq!(got.as_ref(), Some(v), "acknowledged {k} lost");
    }
    for (k, v) in &unknown {
        let got: Option<String> = redis::cmd("GET").arg(k).query(c).unwrap();
        assert!(got.is_none() || got.as_ref() == Some(v), "{k}: {got:?}");
    }
    let lead = leader(&nodes);
    assert_ne!(lead, nodes[li].addr());

    // The old leader comes back as a follower that allows stale reads: a connection reads its
    // state until it asks for READWRITE, and again after READONLY. (Until it hears from the new
    // leader it may take itself for the leader of its old term, and redirect.)
    nodes[li].extra.push("--stale-reads".into());
    nodes[li].start();
    let mut old = nodes[li].server.as_ref().unwrap().client();
    let (k, v) = acked.last().unwrap().clone();
    let caught_up = (0..600).any(|_| {
        let got: Option<String> = redis::cmd("GET").arg(&k).query(&mut old).unwrap_or(None);
        got.as_ref() == Some(&v) || {
            thread::sleep(Duration::from_millis(100));
            false
        }
    });
    assert!(caught_up, "the old leader never caught up");
    redis::cmd("READWRITE").query::<()>(&mut old).unwrap();
    let err = redis::cmd("GET")
        .arg("foo")
        .query::<Option<String>>(&mut old)
        .unwrap_err();
    assert_eq!(err.code(), Some("MOVED"), "{err}");
    assert_eq!(err.detail(), Some(format!("12182 {lead}").as_str()));
    redis::cmd("READONLY").query::<()>(&mut old).unwrap();
    let got: Option<String> = redis::cmd("GET").arg(&k).query(&mut old).unwrap();
    assert_eq!(got, Some(v));
}

/// A single node is a Redis without cluster mode: every CLUSTER subcommand, READONLY and
/// READWRITE get Redis's error, and INFO says cluster_enabled:0.
#[test]
fn a_single_node_has_cluster_support_disabled() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(tmp.path(), &[]);
    let mut r = srv.raw();
    for args in [
        &["CLUSTER", "INFO"][..],
        &["CLUSTER", "SLOTS"],
        &["CLUSTER", "SHARDS"],
        &["CLUSTER", "NODES"],
        &["CLUSTER", "MYID"],
        &["CLUSTER", "KEYSLOT", "foo"],
        &["CLUSTER", "HELP"],
        &["CLUSTER", "NO-SUCH-THING"],
        &["READONLY"],
        &["READWRITE"],
    ] {
        r.cmd(args, "-ERR This instance has cluster support disabled\r\n");
    }
    let mut c = srv.client();
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(
        info.contains("# Cluster\r\ncluster_enabled:0\r\n"),
        "{info}"
    );
    assert!(info.contains("\r\nredis_mode:standalone\r\n"), "{info}");
}

/// RESTORE on a cluster: the restored value is logged through raft like any write, so after
/// the leader that took it is killed, the new leader holds it whole, and a corrupt payload
/// changed nothing anywhere.
#[test]
fn a_restored_key_survives_its_leader_s_death() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    let lead = leader(&nodes);
    let li = nodes.iter().position(|n| n.addr() == lead).unwrap();
    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let fields: Vec<(String, String)> = (0..300)
        .map(|i| (format!("f{i}"), format!("v{i}")))
        .collect();
    redis::cmd("HSET")
        .arg("h")
        .arg(&fields)
        .query::<()>(&mut c)
        .unwrap();
    let payload: Vec<u8> = redis::cmd("DUMP").arg("h").query(&mut c).unwrap();
    redis::cmd("RESTORE")
        .arg("copy")
        .arg(0)
        .arg(&payload)
        .query::<()>(&mut c)
        .unwrap();
    let mut bad = payload.clone();
    bad[10] ^= 1;
    let e = redis::cmd("RESTORE")
        .arg("bad")
        .arg(0)
        .arg(&bad)
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");

    nodes[li].server.take().unwrap().kill9();
    let mut conn = None;
    let mut got: Vec<(String, String)> =
        on_leader(&nodes, &mut conn, redis::cmd("HGETALL").arg("copy"));
    got.sort();
    let mut want = fields;
    want.sort();
    assert_eq!(got, want);
    let exists: i64 = on_leader(&nodes, &mut conn, redis::cmd("EXISTS").arg("bad"));
    assert_eq!(exists, 0);
}
