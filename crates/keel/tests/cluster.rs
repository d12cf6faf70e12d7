//! keel cluster with real `keel serve` processes on 127.0.0.1: leader loss under load (kill -9,
//! at least 10 cycles), and a node that was down while the log was purged catching up by
//! snapshot, then membership changes while clients write.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::Server;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    id: u64,
    port: u16,
    raft: u16,
    dir: std::path::PathBuf,
    peers: String,
    extra: Vec<String>,
    server: Option<Server>,
}

impl Node {
    fn start(&mut self) {
        let (port, raft, id) = (
            self.port.to_string(),
            self.raft.to_string(),
            self.id.to_string(),
        );
        let mut args = vec!["--port", &port, "--node-id", &id, "--raft-port", &raft];
        if !self.peers.is_empty() {
            args.extend(["--peers", &self.peers]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        self.server = Some(Server::start(&self.dir, &args));
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn cluster_cli(addr: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("cluster")
        .args(args)
        .args(["--addr", addr])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn status(addr: &str) -> HashMap<String, String> {
    let (_, text) = cluster_cli(addr, &["status"]);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn make(n: u64, extra: &[&str], tmp: &std::path::Path) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    (1..=n)
        .map(|id| {
            let peers = (1..=n)
                .filter(|&j| j != id)
                .map(|j| format!("{j}=127.0.0.1:{}", ports[j as usize - 1].1))
                .collect::<Vec<_>>()
                .join(",");
            Node {
                id,
                port: ports[id as usize - 1].0,
                raft: ports[id as usize - 1].1,
                dir: tmp.join(format!("n{id}")),
                peers,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                server: None,
            }
        })
        .collect()
}

/// The leader's client address, once some node knows it.
fn leader(nodes: &[Node]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for n in nodes.iter().filter(|n| n.server.is_some()) {
            let st = status(&n.addr());
            if let Some(l) = st.get("leader").and_then(|l| l.parse::<u64>().ok()) {
                if let Some(m) = st.get(&format!("member_{l}")) {
                    let client = m
                        .split("client=")
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .next()
                        .unwrap();
                    return client.to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        thread::sleep(Duration::from_millis(100));
    }
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
    let mut nodes = make(3, &[], tmp.path());
    for n in nodes.iter_mut() {
        n.start();
    }
    let (ok, text) = cluster_cli(&nodes[0].addr(), &["init"]);
    assert!(ok, "{text}");
    let first = leader(&nodes);

    // A follower names the leader.
    let follower = nodes.iter().find(|n| n.addr() != first).unwrap();
    let out = follower.server.as_ref().unwrap().cli(&["SET", "k", "v"]);
    assert_eq!(out.trim(), format!("MOVED 0 {first}"));

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
                for n in nodes.iter().filter(|n| n.server.is_some()) {
                    let log = n.server.as_ref().unwrap().log_text();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!(
                        "node {}: {:?}\n{}",
                        n.id,
                        status(&n.addr()),
                        tail.join("\n")
                    );
                }
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

    let lead = leader(&nodes);
    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let (mut n_acked, mut n_unknown, mut unknown_present) = (0, 0, 0);
    for l in &ledgers {
        let l = l.lock().unwrap();
        for (k, v) in &l.acked {
            let got: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
            assert_eq!(got.as_deref(), Some(v.as_str()), "acknowledged {k} lost");
            n_acked += 1;
        }
        for (k, v) in &l.unknown {
            let got: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
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

#[test]
fn a_node_behind_a_purged_log_catches_up_by_snapshot_and_membership_changes_under_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = ["--raft-snapshot-every", "100", "--stale-reads"];
    let mut nodes = make(3, &extra, tmp.path());
    for n in nodes.iter_mut() {
        n.start();
    }
    assert!(cluster_cli(&nodes[0].addr(), &["init"]).0);
    let lead = leader(&nodes);
    let li = nodes.iter().position(|n| n.addr() == lead).unwrap();
    let lagger = (li + 1) % 3;
    nodes[lagger].server.take().unwrap().kill9();

    let mut c = redis::Client::open(format!("redis://{lead}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    for i in 0..600 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
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
    // Replication state stays hidden from clients.
    let size: i64 = redis::cmd("DBSIZE").query(&mut f).unwrap();
    assert_eq!(size, 600);

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
