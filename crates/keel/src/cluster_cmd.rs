//! `keel cluster`: membership and status of a keel cluster, through any node's client port
//! (`KEEL.CLUSTER` over the Redis protocol).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    /// Client address of the node to ask (writes must reach the leader; a follower answers
    /// -MOVED with the leader's address).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7379",
        env = "KEEL_ADDR"
    )]
    addr: String,
    /// Password (AUTH) if the node requires one; an admin user's with --user.
    #[arg(long, global = true, env = "KEEL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long, global = true, env = "KEEL_USER")]
    user: Option<String>,
    /// CA certificate (PEM) to verify a TLS-only node with; turns TLS on.
    #[arg(long, global = true, env = "KEEL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a node that requires one (mTLS), with --tls-key.
    #[arg(long, global = true, env = "KEEL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "KEEL_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Form a new cluster of this node and the nodes its --peers name. Every node must be up.
    /// Run once, on one node.
    Init,
    /// Add the node listening for raft at RAFT_ADDR: it catches up as a learner (by snapshot
    /// if needed), then becomes a voter. Ask the leader.
    AddNode { raft_addr: String },
    /// Remove node ID from the cluster. Ask the leader.
    RemoveNode { id: u64 },
    /// Show the node's state, term, leader, log indexes, and (on the leader) each member's
    /// match index and lag.
    Status,
}

/// Exit code 0: done; 1: the node refused (the reply says why: -MOVED names the leader); 3: the
/// node could not be reached or answered nonsense.
pub fn run(a: ClusterArgs) -> ExitCode {
    let args: Vec<String> = match &a.command {
        ClusterCommand::Init => vec!["init".into()],
        ClusterCommand::AddNode { raft_addr } => vec!["add-node".into(), raft_addr.clone()],
        ClusterCommand::RemoveNode { id } => vec!["remove-node".into(), id.to_string()],
        ClusterCommand::Status => vec!["status".into()],
    };
    match call(&a, &args) {
        Ok(Ok(text)) => {
            let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("error: {err}");
            // -MOVED SLOT LEADER (the slot is 0 for KEEL.CLUSTER, which names no key).
            if let Some((_, leader)) = err.strip_prefix("MOVED ").and_then(|m| m.split_once(' ')) {
                eprintln!("hint: the leader is {leader}; run again with --addr {leader}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A connection to the node: plain, or TLS when --tls-ca is given.
fn open(a: &ClusterArgs) -> anyhow::Result<Box<dyn ReadWrite>> {
    let s = TcpStream::connect(&a.addr).with_context(|| format!("connecting to {}", a.addr))?;
    // Membership changes wait for a learner to catch up.
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let Some(ca) = &a.tls_ca else {
        return Ok(Box::new(s));
    };
    let pem = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem(ca)?) {
        roots
            .add(c.with_context(|| format!("{}: not a PEM certificate", ca.display()))?)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_slice_iter(&pem(c)?)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{}: not a PEM certificate", c.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&pem(k)?)
                .with_context(|| format!("{}: no private key", k.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let host = a.addr.rsplit_once(':').map_or(a.addr.as_str(), |(h, _)| h);
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("{host} is not a host name or address"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    Ok(Box::new(rustls::StreamOwned::new(conn, s)))
}

fn call(a: &ClusterArgs, args: &[String]) -> anyhow::Result<Result<String, String>> {
    let mut r = BufReader::new(open(a)?);
    if let Some(p) = &a.password {
        let mut auth = vec!["AUTH".to_string()];
        auth.extend(a.user.clone());
        auth.push(p.clone());
        send(r.get_mut(), &auth)?;
        if let Err(e) = reply(&mut r)? {
            return Ok(Err(e));
        }
    }
    let mut cmd = vec!["KEEL.CLUSTER".to_string()];
    cmd.extend(args.iter().cloned());
    send(r.get_mut(), &cmd)?;
    reply(&mut r)
}

fn send(w: &mut impl Write, args: &[String]) -> std::io::Result<()> {
    let mut b = format!("*{}\r\n", args.len());
    for a in args {
        b.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    w.write_all(b.as_bytes())
}

/// Reads one reply: simple strings, errors, integers and bulk strings (all KEEL.CLUSTER sends).
fn reply(r: &mut impl BufRead) -> anyhow::Result<Result<String, String>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("the node closed the connection");
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(rest.to_string()),
        "$" | "=" => {
            let n: usize = rest.parse().context("bad bulk length")?;
            let mut buf = vec![0u8; n + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n);
            let text = String::from_utf8_lossy(&buf).into_owned();
            // A RESP3 verbatim string starts with its format, "txt:".
            Ok(text
                .strip_prefix("txt:")
                .map(str::to_string)
                .unwrap_or(text))
        }
        _ => bail!("unexpected reply {line:?}"),
    })
}
