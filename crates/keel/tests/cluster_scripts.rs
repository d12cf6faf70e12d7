//! Scripts and functions on a keel cluster of real `keel serve` processes: the leader runs a
//! script as a dry run and proposes its writes under the versions it saw, so concurrent
//! scripts lose no update, every replica holds the script's effects, a script that errors
//! after a write keeps the write, and a function library survives a leader change.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use common::Server;

/// A port below the kernel's ephemeral range (32768 and up here), so that no outgoing
/// connection takes it while its node is down between a kill and a restart.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
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

/// Three nodes started with `extra` flags and formed into a cluster with `keel cluster init`.
fn started_cluster(extra: &[&str], tmp: &std::path::Path) -> Vec<Node> {
    let mut nodes = make(3, extra, tmp);
    for n in nodes.iter_mut() {
        n.start();
    }
    let (ok, text) = cluster_cli(&nodes[0].addr(), &["init"]);
    assert!(ok, "{text}");
    nodes
}

/// Prints every running node's status and the end of its log, for a failure message.
fn dump(nodes: &[Node]) {
    for n in nodes.iter().filter(|n| n.server.is_some()) {
        let log = n.server.as_ref().unwrap().log_text();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!(
            "node {}: {:?}\n{}",
            n.id,
            status(&n.addr()),
            tail.join("\n")
        );
    }
}

/// The leader's client address, once some node knows it.
fn leader(nodes: &[Node]) -> String {
    // Generous: two cluster tests run at once on two shared cores.
    let deadline = Instant::now() + Duration::from_secs(60);
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
        if Instant::now() > deadline {
            dump(nodes);
            panic!("no leader elected");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn connect(addr: &str) -> redis::Connection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

const INCR_AND_LOG: &str = "local n = redis.call('INCR', KEYS[1]) \
    redis.call('RPUSH', KEYS[2], n) return n";

#[test]
fn scripts_and_functions_run_on_the_leader_lose_no_update_and_survive_a_leader_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(&[], tmp.path());
    let lead = leader(&nodes);
    let mut c = connect(&lead);

    // Concurrent scripts on one key: each sees the count the one before it left.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let lead = lead.clone();
            thread::spawn(move || {
                let mut c = connect(&lead);
                (0..25)
                    .map(|_| {
                        redis::cmd("EVAL")
                            .arg(INCR_AND_LOG)
                            .arg(2)
                            .arg("{k}n")
                            .arg("{k}log")
                            .query::<i64>(&mut c)
                            .unwrap()
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut got: Vec<i64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=100).collect::<Vec<i64>>(), "every reply once");
    let log: Vec<i64> = redis::cmd("LRANGE")
        .arg("{k}log")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(log, (1..=100).collect::<Vec<i64>>(), "in order, none lost");

    // A script that writes, then fails: the write stays, as in Redis.
    let err = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], 'kept') return redis.error_reply('boom')")
        .arg(1)
        .arg("half")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    let kept: String = redis::cmd("GET").arg("half").query(&mut c).unwrap();
    assert_eq!(kept, "kept");

    // A follower sends the client to the leader.
    let follower = nodes.iter().map(Node::addr).find(|a| *a != lead).unwrap();
    let err = redis::cmd("EVAL")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("half")
        .query::<redis::Value>(&mut connect(&follower))
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("moved"), "{err}");
    // Scripts queued in MULTI are refused with a clear error.
    let err = redis::pipe()
        .atomic()
        .cmd("EVAL")
        .arg("return 1")
        .arg(0)
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(
        err.to_string().contains("does not queue scripts in MULTI"),
        "{err}"
    );

    // A library loaded on this leader answers FCALL on the next one.
    let lib = "#!lua name=counter\n\
        redis.register_function('bump', function(keys, args) \
        return redis.call('INCRBY', keys[1], args[1]) end)";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(lib)
        .query(&mut c)
        .unwrap();
    assert_eq!(name, "counter");
    let n: i64 = redis::cmd("FCALL")
        .arg("bump")
        .arg(1)
        .arg("{k}n")
        .arg(10)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 110);
    let old = nodes.iter().position(|n| n.addr() == lead).unwrap();
    nodes[old].server.take().unwrap().kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    let n: i64 = loop {
        let lead = leader(&nodes);
        let bumped = redis::Client::open(format!("redis://{lead}/"))
            .and_then(|cl| cl.get_connection())
            .and_then(|mut c| {
                redis::cmd("FCALL")
                    .arg("bump")
                    .arg(1)
                    .arg("{k}n")
                    .arg(1)
                    .query::<i64>(&mut c)
            });
        match bumped {
            Ok(n) => break n,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        thread::sleep(Duration::from_millis(200));
    };
    // 111, or more if an earlier try took effect before its reply was lost in the election.
    assert!(n >= 111, "{n}");
    let lead = leader(&nodes);
    let mut c = connect(&lead);
    let log_len: i64 = redis::cmd("LLEN").arg("{k}log").query(&mut c).unwrap();
    assert_eq!(log_len, 100);
    let libs: redis::Value = redis::cmd("FUNCTION").arg("LIST").query(&mut c).unwrap();
    assert!(format!("{libs:?}").contains("bump"), "{libs:?}");
}
