//! Pub/Sub on a keel cluster of real `keel serve` processes: a message published on any node
//! (leader or follower; PUBLISH, SPUBLISH, PUBLISH inside MULTI/EXEC or a script) reaches the
//! subscribers of every node, each publisher's messages in the order it published them; PUBLISH
//! counts the receivers of its own node; with a node killed, the others go on publishing to each
//! other, and once it is back it receives again; with mutual TLS between nodes too.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{free_port, node_pki};
use common::{read_reply, resp, Raw, Server};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

struct Node {
    id: u64,
    port: u16,
    raft: u16,
    dir: std::path::PathBuf,
    peers: String,
    /// `--tls-cert`, `--tls-key` and `--tls-ca`, for `keel serve` and `keel cluster` alike.
    tls: Vec<String>,
    server: Option<Server>,
}

impl Node {
    fn start(&mut self) {
        let (port, raft, id) = (
            self.port.to_string(),
            self.raft.to_string(),
            self.id.to_string(),
        );
        let mut args = vec![
            "--port",
            &port,
            "--node-id",
            &id,
            "--raft-port",
            &raft,
            "--peers",
            &self.peers,
        ];
        args.extend(self.tls.iter().map(String::as_str));
        self.server = Some(Server::start(&self.dir, &args));
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("cluster")
            .args(args)
            .args(["--addr", &self.addr()])
            .args(&self.tls)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn status(&self) -> HashMap<String, String> {
        let (_, text) = self.cli(&["status"]);
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("the node runs")
    }

    /// A RESP2 connection subscribed to `channels` (SSUBSCRIBE with `shard`), confirmations
    /// read.
    fn subscriber(&self, shard: bool, channels: &[&str]) -> Raw {
        let mut raw = self.server().raw();
        subscribe(&mut raw, shard, channels);
        raw
    }
}

fn subscribe<S: Read + Write>(raw: &mut Raw<S>, shard: bool, channels: &[&str]) {
    let verb = if shard { "SSUBSCRIBE" } else { "SUBSCRIBE" };
    raw.send(&resp(&[&[verb][..], channels].concat()));
    for c in channels {
        let r = parts(&read_reply(raw));
        assert_eq!(r[..2], [verb.to_lowercase(), c.to_string()], "{r:?}");
    }
}

/// Three nodes (started with `tls` flags) formed into a cluster with `keel cluster init`, once
/// every node knows every member (a node forwards messages to the members it knows).
fn started_cluster(tmp: &std::path::Path, tls: &[String]) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut nodes: Vec<Node> = (1..=3u64)
        .map(|id| {
            let peers = (1..=3u64)
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
                tls: tls.to_vec(),
                server: None,
            }
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    let (ok, text) = nodes[0].cli(&["init"]);
    assert!(ok, "{text}");
    // Generous: cluster tests share two cores.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in &nodes {
        while !(1..=3).all(|m| n.status().contains_key(&format!("member_{m}"))) {
            assert!(
                Instant::now() < deadline,
                "node {} never saw 3 members",
                n.id
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}

/// The index of the leader, once some node knows it.
fn leader(nodes: &[Node]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for n in nodes.iter().filter(|n| n.server.is_some()) {
            let st = n.status();
            if let Some(l) = st.get("leader").and_then(|l| l.parse::<u64>().ok()) {
                return nodes.iter().position(|n| n.id == l).unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The bulk strings of a RESP2 array of bulk strings (a message or a confirmation).
fn parts(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8(reply.to_vec()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    (lines.iter().zip(&lines[1..]))
        .filter(|(head, _)| head.starts_with('$'))
        .map(|(_, value)| value.to_string())
        .collect()
}

fn publish(c: &mut redis::Connection, verb: &str, channel: &str, message: &str) -> i64 {
    redis::cmd(verb)
        .arg(channel)
        .arg(message)
        .query(c)
        .unwrap_or_else(|e| panic!("{verb} {channel} {message}: {e}"))
}

/// Reads messages until each origin in `want` (published as `ORIGIN-I`, I counting from 0)
/// has delivered its count, and checks each origin's arrived whole and in order. The first
/// element of each message is `kind` (`message`, `pmessage` or `smessage`); messages on the
/// channel `warm` (probes, see [`until_delivered`]) are skipped.
fn expect_in_order<S: Read + Write>(
    sub: &mut Raw<S>,
    kind: &str,
    want: &[(&str, usize)],
    what: &str,
) {
    let mut next: HashMap<&str, usize> = want.iter().map(|(o, _)| (*o, 0)).collect();
    let mut left: usize = want.iter().map(|(_, n)| n).sum();
    while left > 0 {
        let m = parts(&read_reply(sub));
        if m.get(1).is_some_and(|c| c == "warm") {
            continue;
        }
        assert_eq!(m[0], kind, "{what}: {m:?}");
        let (origin, i) = (m.last().and_then(|p| p.split_once('-')))
            .unwrap_or_else(|| panic!("{what}: unexpected {m:?}"));
        let expected = next
            .get_mut(origin)
            .unwrap_or_else(|| panic!("{what}: {m:?}"));
        assert_eq!(
            i.parse::<usize>().unwrap(),
            *expected,
            "{what}: a message from {origin} lost or out of order"
        );
        *expected += 1;
        left -= 1;
    }
}

/// Publishes probes on `warm` from `publisher` until something arrived on each of `subs`
/// (subscribed to `warm` too): a node that was down gets messages again only after its
/// peers retry it. The probes stay unread, for [`expect_in_order`] to skip.
fn until_delivered(publisher: &mut redis::Connection, subs: &mut [&mut Raw]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = vec![false; subs.len()];
    while !ready.iter().all(|r| *r) {
        assert!(Instant::now() < deadline, "probes never arrived: {ready:?}");
        publish(publisher, "PUBLISH", "warm", "probe");
        thread::sleep(Duration::from_millis(100));
        for (sub, r) in subs.iter_mut().zip(&mut ready) {
            sub.s
                .set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            *r |= sub.s.peek(&mut [0]).is_ok_and(|n| n > 0);
            sub.s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        }
    }
}

fn info_field(c: &mut redis::Connection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("cluster").query(c).unwrap();
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"));
    line.trim().parse().unwrap()
}

#[test]
fn a_message_reaches_every_node() {
    let t = tempfile::tempdir().unwrap();
    let nodes = started_cluster(t.path(), &[]);
    let li = leader(&nodes);
    let fi = (li + 1) % 3;

    let mut subs: Vec<Raw> = nodes
        .iter()
        .map(|n| n.subscriber(false, &["news"]))
        .collect();
    // A pattern on node 1 receives forwarded messages as well.
    let mut psub = nodes[1].server().raw();
    psub.send(&resp(&["PSUBSCRIBE", "ne*"]));
    assert_eq!(parts(&read_reply(&mut psub))[..2], ["psubscribe", "ne*"]);
    let mut ssubs: Vec<Raw> = (nodes.iter())
        .map(|n| n.subscriber(true, &["orders"]))
        .collect();

    // Every node publishes at once, the leader and both followers: each subscriber gets each
    // publisher's messages, all of them, in its order. PUBLISH counts its own node's
    // receivers (two on node 1, with the pattern), as Redis Cluster does.
    const N: usize = 300;
    let publishers: Vec<_> = (0..3)
        .map(|i| {
            let mut c = nodes[i].server().client();
            thread::spawn(move || {
                for k in 0..N {
                    let n = publish(&mut c, "PUBLISH", "news", &format!("{i}-{k}"));
                    assert_eq!(n, if i == 1 { 2 } else { 1 }, "PUBLISH on node {i}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let all = [("0", N), ("1", N), ("2", N)];
    for (i, sub) in subs.iter_mut().enumerate() {
        expect_in_order(sub, "message", &all, &format!("subscriber on node {i}"));
    }
    expect_in_order(&mut psub, "pmessage", &all, "pattern subscriber");

    // SPUBLISH, from the leader and then a follower.
    for (i, origin) in [(li, "leader"), (fi, "follower")] {
        let mut c = nodes[i].server().client();
        for k in 0..50 {
            let n = publish(&mut c, "SPUBLISH", "orders", &format!("{origin}-{k}"));
            assert_eq!(n, 1, "SPUBLISH on node {i}");
        }
    }
    for (i, sub) in ssubs.iter_mut().enumerate() {
        let want = [("leader", 50), ("follower", 50)];
        expect_in_order(
            sub,
            "smessage",
            &want,
            &format!("shard subscriber on node {i}"),
        );
    }

    // PUBLISH queued in MULTI: with a write on the leader (sent once the transaction is
    // durable), alone on a follower. And from a script, on the leader, where scripts run.
    let local = |i: usize| if i == 1 { 2 } else { 1 };
    let mut c = nodes[li].server().client();
    let r: (String, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("k")
        .arg("v")
        .cmd("PUBLISH")
        .arg("news")
        .arg("mleader-0")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, ("OK".into(), local(li)));
    let script = "redis.call('SET', KEYS[1], 'x') return redis.call('PUBLISH', 'news', 'script-0')";
    let n: i64 = redis::cmd("EVAL")
        .arg(script)
        .arg(1)
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, local(li));
    let mut c = nodes[fi].server().client();
    let r: (i64,) = redis::pipe()
        .atomic()
        .cmd("PUBLISH")
        .arg("news")
        .arg("mfollower-0")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, (local(fi),));
    let want = [("mleader", 1), ("script", 1), ("mfollower", 1)];
    for (i, sub) in subs.iter_mut().enumerate() {
        expect_in_order(sub, "message", &want, &format!("node {i}"));
    }
    expect_in_order(&mut psub, "pmessage", &want, "pattern subscriber");

    // Keyspace notifications stay on the node that took the write: no node forwards them.
    for n in &nodes {
        let mut c = n.server().client();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("KE$")
            .query(&mut c)
            .unwrap();
    }
    let mut events: Vec<Raw> = nodes
        .iter()
        .map(|n| n.subscriber(false, &["__keyevent@0__:set", "news"]))
        .collect();
    let mut c = nodes[li].server().client();
    let _: () = redis::cmd("SET").arg("k").arg("w").query(&mut c).unwrap();
    // A message after the event, from the same node: where it arrives first, no event came.
    publish(&mut c, "PUBLISH", "news", "after-0");
    for (i, sub) in events.iter_mut().enumerate() {
        if i == li {
            assert_eq!(
                parts(&read_reply(sub)),
                ["message", "__keyevent@0__:set", "k"]
            );
        }
        expect_in_order(sub, "message", &[("after", 1)], &format!("node {i}"));
    }
    let forwarded = info_field(&mut c, "pubsub_forwarded");
    // Everything the leader published before `after-0` was acknowledged by both peers before
    // it was sent.
    assert!(forwarded >= 2 * (N as u64 + 52), "{forwarded}");
}

#[test]
fn publishing_goes_on_without_a_node() {
    let t = tempfile::tempdir().unwrap();
    let mut nodes = started_cluster(t.path(), &[]);
    // The leader goes: messages do not need raft, and the others publish on regardless.
    let gone = leader(&nodes);
    let live: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    let mut subs: HashMap<usize, Raw> = (live.iter())
        .map(|&i| (i, nodes[i].subscriber(false, &["news", "warm"])))
        .collect();
    nodes[gone].server.take().unwrap().kill9();

    let mut clients: HashMap<usize, redis::Connection> = (live.iter())
        .map(|&i| (i, nodes[i].server().client()))
        .collect();
    for &i in &live {
        let c = clients.get_mut(&i).unwrap();
        for k in 0..100 {
            assert_eq!(publish(c, "PUBLISH", "news", &format!("{i}-{k}")), 1);
        }
    }
    let origins: Vec<String> = live.iter().map(|i| i.to_string()).collect();
    let want: Vec<(&str, usize)> = origins.iter().map(|o| (o.as_str(), 100)).collect();
    for (i, sub) in subs.iter_mut() {
        expect_in_order(sub, "message", &want, &format!("node {i}, one node down"));
    }
    // What could not reach the dead node is counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = clients.get_mut(&live[0]).unwrap();
    while info_field(c, "pubsub_forward_dropped") == 0 {
        assert!(Instant::now() < deadline, "nothing counted as dropped");
        thread::sleep(Duration::from_millis(100));
    }

    // Back, the node receives again (once its peers retry it), and forwards again.
    nodes[gone].start();
    let mut back = nodes[gone].subscriber(false, &["news", "warm"]);
    let mut back_client = nodes[gone].server().client();
    for &i in &live {
        until_delivered(clients.get_mut(&i).unwrap(), &mut [&mut back]);
    }
    {
        let [a, b] = &live[..] else { unreachable!() };
        let (mut sa, mut sb) = (subs.remove(a).unwrap(), subs.remove(b).unwrap());
        until_delivered(&mut back_client, &mut [&mut sa, &mut sb]);
        subs.insert(*a, sa);
        subs.insert(*b, sb);
    }
    subs.insert(gone, back);
    clients.insert(gone, back_client);
    for i in 0..3 {
        let c = clients.get_mut(&i).unwrap();
        for k in 0..100 {
            assert_eq!(publish(c, "PUBLISH", "news", &format!("{i}-{k}")), 1);
        }
    }
    let all = [("0", 100), ("1", 100), ("2", 100)];
    for (i, sub) in subs.iter_mut() {
        expect_in_order(sub, "message", &all, &format!("node {i}, all back"));
    }
}

/// What a test client presents and trusts.
struct ClientPki {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

/// The flags that make a node use [`node_pki`]'s files, and the same for the test's clients.
fn tls_setup(dir: &std::path::Path) -> (Vec<String>, ClientPki) {
    let pki = node_pki(dir);
    let flags = vec![
        "--tls-cert".into(),
        pki.cert,
        "--tls-key".into(),
        pki.key,
        "--tls-ca".into(),
        pki.ca,
    ];
    let client = ClientPki {
        ca: pki.ca_der.into(),
        cert: pki.cert_der.into(),
        key: pki.key_der,
    };
    (flags, client)
}

type TlsRaw = Raw<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A TLS connection to a node's client port, as a client of `pki`.
fn tls_connect(port: u16, pki: &ClientPki) -> TlsRaw {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![pki.cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
    )
    .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(common::DEADLINE)).unwrap();
    Raw {
        s: rustls::StreamOwned::new(conn, tcp),
    }
}

#[test]
fn messages_travel_over_mutual_tls() {
    let t = tempfile::tempdir().unwrap();
    let (tls, pki) = tls_setup(t.path());
    let nodes = started_cluster(t.path(), &tls);
    let connect = |i: usize| tls_connect(nodes[i].server().port, &pki);
    let mut subs: Vec<TlsRaw> = (0..2).map(connect).collect();
    for sub in subs.iter_mut() {
        subscribe(sub, false, &["news"]);
    }
    let mut publisher = connect(2);
    for k in 0..100 {
        publisher.cmd(&["PUBLISH", "news", &format!("2-{k}")], ":0\r\n");
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        expect_in_order(sub, "message", &[("2", 100)], &format!("node {i} over TLS"));
    }
}
