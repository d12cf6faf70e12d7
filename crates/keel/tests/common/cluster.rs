//! A keel cluster of real `keel serve` processes on 127.0.0.1, for the cluster tests: nodes on
//! fixed ports (so a killed node can come back on its own), `keel cluster` for status and
//! init, and finding the leader.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use super::Server;

/// A port below the kernel's ephemeral range (32768 and up here), so that no outgoing
/// connection takes it while its node is down between a kill and a restart.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub struct Node {
    pub id: u64,
    pub port: u16,
    pub raft: u16,
    pub dir: std::path::PathBuf,
    pub peers: String,
    pub extra: Vec<String>,
    pub server: Option<Server>,
}

impl Node {
    pub fn start(&mut self) {
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

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub fn cluster_cli(addr: &str, args: &[&str]) -> (bool, String) {
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

pub fn status(addr: &str) -> HashMap<String, String> {
    let (_, text) = cluster_cli(addr, &["status"]);
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn make(n: u64, extra: &[&str], tmp: &std::path::Path) -> Vec<Node> {
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
pub fn started_cluster(extra: &[&str], tmp: &std::path::Path) -> Vec<Node> {
    let mut nodes = make(3, extra, tmp);
    for n in nodes.iter_mut() {
        n.start();
    }
    let (ok, text) = cluster_cli(&nodes[0].addr(), &["init"]);
    assert!(ok, "{text}");
    nodes
}

/// Prints every running node's status and the end of its log, for a failure message.
pub fn dump(nodes: &[Node]) {
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
pub fn leader(nodes: &[Node]) -> String {
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

/// A CA, and a certificate it signed for 127.0.0.1 and localhost that serves and identifies a
/// node (client authentication too), written as PEM files into `dir`: their paths, and the DER
/// a test client presents and trusts.
pub struct NodePki {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub ca_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn node_pki(dir: &std::path::Path) -> NodePki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keel cluster test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "keel node");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_string()
    };
    NodePki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("node.pem", cert.pem()),
        key: write("node-key.pem", key.serialize_pem()),
        ca_der: ca_cert.der().to_vec(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}
