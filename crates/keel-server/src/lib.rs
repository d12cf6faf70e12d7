//! keel-server: `keel serve`, a Redis-protocol (RESP2 and RESP3) server on keel-engine.
//!
//! Every write reply leaves the socket only after the engine reports the write durable (P1);
//! readers see only durable state (P10); a client can make a write retryable with
//! `KEEL.IDEM` (P8); every input has a bound (P11). See [`server`] for how a connection
//! pipelines, and [`resp`] for the parser.
// Denied, not forbidden, for two places in `scripting`: one method reads a script's
// redis.call arguments off Lua's stack through its C API (`CallArgs`), and `redis.call`, one
// function for every run, reaches the run's caller through a pointer (`make_call`).
#![deny(unsafe_code)]

pub mod acl;
pub mod audit;
pub mod auth;
pub mod blocking;
pub mod cmd;
pub mod config;
pub mod docs;
pub mod glob;
pub mod heal;
pub mod latency;
pub mod maintenance;
pub mod metrics;
pub mod scripting;
pub mod server;
pub mod slowlog;
pub mod tls;

/// The protocol, in its own small crate so that it can be fuzzed without the server.
pub use keel_resp as resp;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_engine::Engine;

pub use config::{set_log_thread_start, ServeArgs, Settings};
pub use server::{set_allocator_stats, set_allocator_trim, AllocatorStats};

/// Takes a mutex even if a thread panicked while holding it: every state kept behind one in the
/// server (counters, logs, registries) stays usable as it was left.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A hash map hashed with foldhash rather than SipHash: the maps looked in at every command
/// (the command table, the users, the script cache) take about 200 instructions less a lookup.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Exit code when the database refuses to open (it failed closed, or is locked).
pub const EXIT_OPEN_FAILED: u8 = 2;
/// Exit code of a shutdown while the log was poisoned (a write or sync had failed and no reopen
/// had succeeded yet): every write acknowledged before the failure is in the log, but the log
/// was not closed cleanly, and the next start runs recovery. (3 is every other error.)
pub const EXIT_POISONED: u8 = 4;

/// Runs `keel serve` until SIGTERM, SIGINT or SHUTDOWN. Returns the process exit code.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&args)?;
    let _ = tracing_subscriber::fmt()
        .with_max_level(settings.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .enable_all()
        // A script runs on a worker thread, and turning its nested tables into a reply (or
        // JSON) recurses up to 1,000 levels, as Redis allows: room for that in any build.
        .thread_stack_size(16 << 20)
        .build()
        .context("starting the async runtime")?;
    // Bound before recovery, so that a cluster node can advertise its real client port.
    let addr = SocketAddr::new(settings.bind, settings.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("binding {addr}"))?;
    let local_addr = listener.local_addr()?;
    let opened = match &settings.cluster {
        None => open_engine(&settings)
            .map(|e| {
                server::Backend::Local(heal::Local::new(
                    e,
                    settings.dir.clone(),
                    settings.engine.clone(),
                ))
            })
            .map_err(anyhow::Error::from),
        Some(cs) => runtime
            .block_on(start_node(&settings, cs, local_addr))
            .map(server::Backend::Cluster),
    };
    let backend = match opened {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("keel refuses to start: {e}");
            eprintln!("error: keel refuses to start: {e}");
            return Ok(ExitCode::from(EXIT_OPEN_FAILED));
        }
    };
    let (local, cluster) = match &backend {
        server::Backend::Local(l) => (Some(l.clone()), None),
        server::Backend::Cluster(c) => (None, Some(c.clone())),
    };
    let audit = match &settings.audit {
        None => None,
        Some(opts) => {
            let a = start_audit(&settings, opts, local.clone())?;
            let engine = match (&local, &cluster) {
                (Some(l), _) => l.engine(),
                (None, Some(c)) => c.engine(),
                (None, None) => unreachable!("a backend is local or a cluster"),
            };
            a.record(audit::Event {
                event: "start",
                detail: Some(format!(
                    "keel {} pid {} on {local_addr}, data directory {}",
                    env!("CARGO_PKG_VERSION"),
                    std::process::id(),
                    settings.dir.display()
                )),
                ..audit::Event::default()
            });
            let report = engine.recovery_report().to_string();
            a.record(audit::Event {
                event: "recovery",
                detail: Some(report.split_whitespace().collect::<Vec<_>>().join(" ")),
                ..audit::Event::default()
            });
            Some(Arc::new(a))
        }
    };
    let result = runtime.block_on(async {
        let client_certs = settings.tls.as_ref().is_some_and(|t| t.verifies_clients());
        if !settings.bind.is_loopback() && !settings.users.password_required() && !client_certs {
            let warning = format!(
                "keel is listening on {local_addr}, which is not a loopback address, and no password is set: \
                 anyone who can reach this port can read and overwrite every key. \
                 Set requirepass (KEEL_REQUIREPASS or the config file) or bind to 127.0.0.1."
            );
            eprintln!("\n******** WARNING ********\n{warning}\n*************************\n");
            tracing::warn!("{warning}");
        }
        let shared = server::Shared::new(backend, settings.clone(), local_addr.port(), audit.clone());
        if let Some(port) = settings.metrics_port {
            metrics::spawn(SocketAddr::new(settings.bind, port), shared.clone()).await?;
        }
        if settings.users.password_required() {
            tracing::info!("users: {}", settings.users.names().join(", "));
        }
        if let Some(tls) = &settings.tls {
            tracing::info!("TLS only: {tls}");
        }
        // Reopens the log after a failure poisons it; stops when the server shuts down.
        let healer = local
            .clone()
            .map(|l| tokio::spawn(l.heal(shared.stopping())));
        tracing::info!("listening on {local_addr}");
        let served = server::serve(listener, shared.clone()).await;
        // Also when serving failed early: the healer stops only once asked to.
        shared.request_shutdown();
        if let Some(h) = healer {
            let _ = h.await;
        }
        served
    });
    // A cluster node's engine is the one in use now (a snapshot install replaces it).
    let engine = match (local, cluster) {
        (Some(l), _) => l.engine(),
        (None, Some(c)) => {
            runtime.block_on(c.shutdown());
            c.engine()
        }
        (None, None) => unreachable!("a backend is local or a cluster"),
    };
    // Dropping the runtime drops every connection task, and with them their engine handles.
    drop(runtime);
    if let Some(a) = &audit {
        // Synced (and anchored) while the engine is still open.
        a.stop(audit::Event {
            event: "stop",
            detail: Some(match &result {
                Ok(()) => "shutting down".into(),
                Err(e) => format!("shutting down after an error: {e}"),
            }),
            ..audit::Event::default()
        });
    }
    if let Some(first) = engine.poisoned() {
        // Nothing more can be made durable: close without a sync (P5), and say what holds.
        let _ = engine.halt();
        result?;
        let policy = engine.options().wal.sync_policy;
        let unsynced = match policy {
            keel_wal::SyncPolicy::Always => String::new(),
            p => format!(
                " (sync_policy {p:?}: writes acknowledged after that LSN were written but never synced)"
            ),
        };
        let msg = format!(
            "shut down with the log poisoned since a failure ({}): every write acknowledged \
             before it is in the log, durable up to LSN {}{unsynced}; the log was not closed \
             cleanly and the next start runs recovery. Exit code {EXIT_POISONED}",
            first.root(),
            engine.durable_lsn()
        );
        tracing::error!("{msg}");
        eprintln!("error: {msg}");
        return Ok(ExitCode::from(EXIT_POISONED));
    }
    let durable = engine.sync();
    // Other handles may remain (a cluster's state machine holds its engine): halt closes the
    // engine through them.
    engine.halt().context("closing the engine")?;
    result?;
    let lsn = durable.context("final sync")?;
    tracing::info!("shut down cleanly; durable LSN {lsn}");
    Ok(ExitCode::SUCCESS)
}

/// Opens the audit log in DIR/audit/. On a single node, the chain's head is anchored in the
/// engine's system namespace (see `audit`); a cluster node's engine is replicated, so
/// it has no anchor.
fn start_audit(
    settings: &Settings,
    opts: &audit::Options,
    local: Option<Arc<heal::Local>>,
) -> anyhow::Result<audit::Audit> {
    let local_engine_head = local
        .as_ref()
        .and_then(|l| l.engine().system(audit::ANCHOR_KEY));
    let anchor = local.map(|l| -> audit::Anchor {
        Box::new(move |seq, hash| {
            let w = keel_engine::Write::System {
                key: bytes::Bytes::from_static(audit::ANCHOR_KEY),
                value: audit::anchor_value(seq, hash).into(),
            };
            let e = l.engine();
            e.commit(vec![], vec![w]).map_err(|e| e.to_string())?;
            // Retention trusts the head once it is recorded: under a weaker sync policy the
            // commit returned before the record was durable, so make it durable first.
            if e.options().wal.sync_policy != keel_wal::SyncPolicy::Always {
                e.sync().map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    });
    let stored = anchor.as_ref().and(local_engine_head);
    audit::Audit::start(
        &settings.dir.join(audit::DIR),
        opts.clone(),
        stored.as_deref(),
        anchor,
    )
}

/// Starts this process as a cluster node: recovers its raft log and engine, and listens for
/// raft RPCs on the raft port.
async fn start_node(
    settings: &Settings,
    cs: &config::ClusterSettings,
    client: SocketAddr,
) -> anyhow::Result<Arc<keel_cluster::Cluster>> {
    if settings.engine.wal.sync_policy != keel_wal::SyncPolicy::Always {
        anyhow::bail!(
            "sync_policy does not apply to a cluster node: its raft log syncs every entry before \
             the entry counts as held, and the engine's log is a copy raft can replay; set \
             sync_policy = \"always\" or leave it out"
        );
    }
    if settings.bind.is_unspecified() && (cs.advertise.is_none() || cs.raft_advertise.is_none()) {
        anyhow::bail!(
            "with --bind {} (every address), a cluster node needs --advertise and --raft-advertise: \
             -MOVED replies and peers must be given an address they can reach",
            settings.bind
        );
    }
    // Configuration errors first: a node without a CA is refused whatever its ports hold.
    let tls = settings.tls.as_ref().map(|t| t.node_tls()).transpose()?;
    let raft_addr = SocketAddr::new(settings.bind, cs.raft_port);
    let listener = tokio::net::TcpListener::bind(raft_addr)
        .await
        .with_context(|| format!("binding the raft port {raft_addr}"))?;
    let node = keel_cluster::Node {
        raft: cs
            .raft_advertise
            .clone()
            .unwrap_or_else(|| raft_addr.to_string()),
        client: cs.advertise.clone().unwrap_or_else(|| client.to_string()),
    };
    let mut cfg = keel_cluster::Config::new(cs.node_id, &settings.dir, node);
    cfg.engine = settings.engine.clone();
    cfg.log.keyring = settings.engine.wal.keyring.clone();
    cfg.log.thread_start = settings.engine.wal.thread_start;
    cfg.snapshot_every = cs.snapshot_every;
    cfg.source_ip = Some(settings.bind).filter(|ip| !ip.is_unspecified());
    cfg.tls = tls;
    cfg.keep_behind_snapshot = (cs.snapshot_every / 10).max(1);
    tracing::info!(
        "cluster node {} opening {} (raft on {raft_addr})",
        cs.node_id,
        settings.dir.display()
    );
    Ok(keel_cluster::Cluster::start(cfg, listener).await?)
}

/// Opens the engine, showing recovery progress on a terminal, and logs the recovery report.
fn open_engine(settings: &Settings) -> Result<Engine, keel_engine::Error> {
    tracing::info!("opening {} (recovery runs first)", settings.dir.display());
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("recovering {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let opened = Engine::open_with_progress(&settings.dir, settings.engine.clone(), &mut |d, t| {
        bar.set_length(t);
        bar.set_position(d);
    });
    bar.finish_and_clear();
    let (engine, report) = opened?;
    for line in report.to_string().lines() {
        tracing::info!("recovery: {line}");
    }
    server::trim_allocator();
    Ok(engine)
}
