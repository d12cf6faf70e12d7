//! The listener and the connections.
//!
//! A connection parses every complete request it has buffered and executes them in order.
//! Writes are submitted to the engine at once, without waiting, so a pipeline's writes (and the
//! writes of every other connection) share group commit; their replies wait in an ordered queue
//! until the engine reports them durable (P1). A read first waits for the connection's earlier
//! writes, so it sees them, and then reads the durable, visible state (P10). Replies leave in
//! request order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use keel_cluster::{Cluster, ClusterError, Txn};
use keel_engine::{table, Engine, Guard, Outcome, Write, WriteResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::audit;
use crate::auth::{User, Users, NOAUTH, WRONGPASS};
use crate::blocking;
use crate::cmd::{self, Flags, InMulti, Part, Run, NOT_INT, SYNTAX};
use crate::config::Settings;
use crate::glob;
use crate::heal::{Health, Local};
use crate::maintenance;
use crate::metrics::{CommandTimer, Metrics};
use crate::resp::{parse_i64, Parser, Reply};

/// Replies are written out once this many bytes are ready, so a long pipeline of large reads
/// holds a bounded amount of reply memory per connection.
const FLUSH_BYTES: usize = 1 << 20;
/// Writes in flight per connection before the connection waits for them.
const PENDING_MAX: usize = 4096;
/// How long shutdown waits for connections to finish what they were doing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The Redis version keel reports, for clients that check features by version.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// Where writes go: the local engine (which the healer replaces after a failure poisons its
/// log, see [`crate::heal`]), or the cluster (through raft).
pub enum Backend {
    Local(Arc<Local>),
    Cluster(Arc<Cluster>),
}

/// The reply to a cluster operation that did not happen (or may not have). A follower answers
/// `-MOVED 0 HOST:PORT` with the leader's client address (slot 0: keel has no slots).
pub fn cluster_error(e: &ClusterError) -> Reply {
    Reply::err(match e {
        ClusterError::NotLeader(Some((_, node))) => format!("MOVED 0 {}", node.client),
        ClusterError::NotLeader(None) => "CLUSTERDOWN no leader is known; retry shortly".into(),
        ClusterError::Timeout(d) => format!(
            "CLUSTERDOWN not confirmed by a quorum within {} ms; a write may still be applied",
            d.as_millis()
        ),
        ClusterError::NoQuorum(m) => format!("CLUSTERDOWN {m}; retry shortly"),
        ClusterError::Rejected(m) => format!("ERR {m}"),
        ClusterError::Failed(m) => format!("ERR cluster: {m}"),
    })
}

/// In a cluster, makes the next read linearizable: this node must be the leader, confirmed by a
/// quorum, with everything committed applied. With stale reads on, a follower reads its own
/// state instead.
async fn linearize(sh: Arc<Shared>) -> Result<(), Reply> {
    let Some(c) = sh.cluster() else {
        return Ok(());
    };
    let stale_ok = sh.settings.cluster.as_ref().is_some_and(|s| s.stale_reads);
    if stale_ok && c.leader().is_none_or(|(id, _)| id != c.id) {
        return Ok(());
    }
    c.read_barrier().await.map_err(|e| cluster_error(&e))
}

/// `KEEL.CLUSTER INIT | ADD-NODE RAFT-ADDR | REMOVE-NODE ID | STATUS`.
async fn cluster_command(sh: Arc<Shared>, args: Vec<Bytes>) -> Reply {
    let Some(c) = sh.cluster() else {
        return Reply::err(
            "ERR This instance has cluster support disabled (start it with --node-id)",
        );
    };
    let sub = lower(&args[1]);
    match (sub.as_str(), args.len()) {
        ("init", 2) => {
            let peers: Vec<String> = sh
                .settings
                .cluster
                .as_ref()
                .map(|s| s.peers.iter().map(|(_, a)| a.clone()).collect())
                .unwrap_or_default();
            match c.init(&peers).await {
                Ok(m) => Reply::bulk(format!(
                    "initialized a cluster of {} nodes: {}",
                    m.len(),
                    m.keys()
                        .map(|id| id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Err(e) => cluster_error(&e),
            }
        }
        ("add-node", 3) => match c.add_node(&String::from_utf8_lossy(&args[2])).await {
            Ok(id) => Reply::Int(id as i64),
            Err(e) => cluster_error(&e),
        },
        ("remove-node", 3) => match std::str::from_utf8(&args[2])
            .ok()
            .and_then(|s| s.parse().ok())
        {
            None => Reply::err("ERR node id must be a number"),
            Some(id) => match c.remove_node(id).await {
                Ok(()) => Reply::ok(),
                Err(e) => cluster_error(&e),
            },
        },
        ("status", 2) => Reply::bulk(status_text(&c.status())),
        ("init" | "add-node" | "remove-node" | "status" | "help", _) => {
            cmd::wrong_args("keel.cluster")
        }
        _ => unknown_subcommand(&args[1], "KEEL.CLUSTER"),
    }
}

/// `KEEL.CLUSTER STATUS` as `key:value` lines, like INFO.
pub fn status_text(s: &keel_cluster::Status) -> String {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut o = format!(
        "node_id:{}\r\nstate:{}\r\nterm:{}\r\nleader:{}\r\nlast_log_index:{}\r\napplied_index:{}\r\nsnapshot_index:{}\r\npurged_index:{}\r\n",
        s.id,
        s.state,
        s.term,
        opt(s.leader),
        opt(s.last_log_index),
        opt(s.applied_index),
        opt(s.snapshot_index),
        opt(s.purged_index),
    );
    o.push_str(&format!(
        "raft_log_records:{}\r\nraft_log_fsyncs:{}\r\nraft_log_fsync_mean_us:{}\r\n",
        s.log_records, s.log_syncs, s.log_sync_mean_us
    ));
    for (id, (node, voter)) in &s.members {
        let role = if *voter { "voter" } else { "learner" };
        o.push_str(&format!(
            "member_{id}:{role},raft={},client={}",
            node.raft, node.client
        ));
        if let Some((matched, lag)) = s.replication.get(id) {
            o.push_str(&format!(",match_index={},lag={lag}", opt(*matched)));
        }
        o.push_str("\r\n");
    }
    o
}

/// State every connection shares.
pub struct Shared {
    backend: Backend,
    pub settings: Settings,
    pub users: Arc<Users>,
    pub port: u16,
    pub metrics: Arc<Metrics>,
    clients: AtomicUsize,
    next_client_id: AtomicU64,
    connections_received: AtomicU64,
    commands_processed: AtomicU64,
    rejected_connections: AtomicU64,
    shutdown: watch::Sender<bool>,
    started: Instant,
    /// The audit log, if kept.
    pub audit: Option<Arc<audit::Audit>>,
    /// Clients waiting in a blocking list command, by key.
    pub blocked: blocking::Waiters,
}

impl Shared {
    pub fn new(
        backend: Backend,
        settings: Settings,
        port: u16,
        audit: Option<Arc<audit::Audit>>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            backend,
            users: settings.users.clone(),
            settings,
            port,
            metrics: Arc::new(Metrics::new()),
            clients: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            connections_received: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
            started: Instant::now(),
            audit,
            blocked: blocking::Waiters::default(),
        })
    }

    /// The engine reads come from (in a cluster, this node's replica).
    pub fn engine(&self) -> Arc<Engine> {
        match &self.backend {
            Backend::Local(l) => l.engine(),
            Backend::Cluster(c) => c.engine(),
        }
    }

    /// The single-node engine and its healer.
    pub fn local(&self) -> Option<&Arc<Local>> {
        match &self.backend {
            Backend::Local(l) => Some(l),
            Backend::Cluster(_) => None,
        }
    }

    /// The log's health: poisoned or not, and the healer's reopen attempts. A cluster node does
    /// not reopen its engine (see the README): its counters stay 0.
    pub fn wal_health(&self) -> Health {
        match &self.backend {
            Backend::Local(l) => l.health(),
            Backend::Cluster(c) => Health {
                poisoned: c
                    .engine()
                    .poisoned()
                    .map(|e| crate::heal::one_line(e.root())),
                ..Health::default()
            },
        }
    }

    /// The reply to an engine error: a poisoned log's refusal names its cause and the healer's
    /// retry interval.
    pub fn engine_error(&self, e: &keel_engine::Error) -> Reply {
        self.local()
            .and_then(|l| l.refusal(e))
            .unwrap_or_else(|| cmd::engine_error(e))
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Cluster(c) => Some(c),
        }
    }

    /// Asks the server to shut down gracefully.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Turns true when the server starts shutting down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Client connections open now, accepted since start, and refused at `max_clients`.
    pub fn connection_counts(&self) -> (usize, u64, u64) {
        (
            self.clients.load(Ordering::Relaxed),
            self.connections_received.load(Ordering::Relaxed),
            self.rejected_connections.load(Ordering::Relaxed),
        )
    }
}

/// Accepts connections until a signal or SHUTDOWN, then drains them.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut stop = shared.shutdown.subscribe();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    shared.connections_received.fetch_add(1, Ordering::Relaxed);
                    let sh = shared.clone();
                    conns.spawn(async move {
                        if let Err(e) = connection(stream, sh).await {
                            tracing::debug!("connection {peer}: {e}");
                        }
                    });
                }
                // Out of file descriptors and the like: keep serving the clients we have.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = stop.wait_for(|s| *s) => { tracing::info!("SHUTDOWN: shutting down"); break; }
        }
    }
    drop(listener);
    shared.request_shutdown();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still busy after {DRAIN_TIMEOUT:?}; closing them",
            conns.len()
        );
        conns.shutdown().await;
    }
    Ok(())
}

struct ClientSlot<'a>(&'a Shared);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

enum Slot {
    Ready(Reply),
    Pending(ReplyFuture),
}

enum Flow {
    Continue,
    /// Send what is queued, then close (QUIT, protocol errors).
    Close,
    /// Send what is queued, close, and shut the server down.
    Shutdown,
    /// A blocking command waits: send what is queued, then wait for this reply while watching
    /// the socket (a client that goes away stops the wait, and takes nothing).
    Block(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

struct Conn {
    sh: Arc<Shared>,
    id: u64,
    addr: Arc<str>,
    proto: u8,
    user: Option<User>,
    name: Option<Bytes>,
    /// Commands queued since MULTI.
    multi: Option<Vec<Part>>,
    /// A command queued since MULTI was rejected: EXEC must abort.
    multi_dirty: bool,
    /// WATCHed keys with their versions when watched.
    watched: Vec<Guard>,
    out: BytesMut,
    queue: VecDeque<Slot>,
}

async fn connection(mut stream: TcpStream, sh: Arc<Shared>) -> std::io::Result<()> {
    if sh.clients.fetch_add(1, Ordering::Relaxed) >= sh.settings.max_clients {
        sh.clients.fetch_sub(1, Ordering::Relaxed);
        sh.rejected_connections.fetch_add(1, Ordering::Relaxed);
        stream
            .write_all(b"-ERR max number of clients reached\r\n")
            .await?;
        return Ok(());
    }
    let _slot = ClientSlot(&sh);
    stream.set_nodelay(true)?;
    let addr = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    match &sh.settings.tls {
        None => session(&mut stream, addr, sh.clone()).await,
        Some(tls) => {
            // The handshake holds the client slot taken above, and has a deadline.
            let mut stream = tls.accept(stream).await?;
            let r = session(&mut stream, addr, sh.clone()).await;
            crate::tls::close(&mut stream).await;
            r
        }
    }
}

/// Serves one client over a plain or TLS stream until it leaves or the server shuts down.
async fn session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    addr: String,
    sh: Arc<Shared>,
) -> std::io::Result<()> {
    let mut stop = sh.shutdown.subscribe();
    let mut conn = Conn {
        id: sh.next_client_id.fetch_add(1, Ordering::Relaxed),
        addr: addr.into(),
        sh: sh.clone(),
        proto: 2,
        user: sh.users.initial(),
        name: None,
        multi: None,
        multi_dirty: false,
        watched: Vec::new(),
        out: BytesMut::new(),
        queue: VecDeque::new(),
    };
    let limits = sh.settings.limits.clone();
    let mut parser = Parser::default();
    let mut buf = BytesMut::with_capacity(16 << 10);
    // Time spent waiting for the bytes of the request now arriving. The idle timeout bounds
    // this sum, not the gap between two reads: a client that dribbles a byte at a time
    // (slowloris) is cut off once its request has taken the timeout in all.
    let mut waited = Duration::ZERO;
    loop {
        // Execute every complete request buffered.
        loop {
            // Until the client logs in, a request is bounded tightly (Redis's 10 arguments of
            // 16 KiB), so nobody who cannot authenticate makes us hold megabytes.
            parser.set_unauthenticated(conn.user.is_none());
            match parser.parse(&buf, &limits) {
                Ok(Some((frame, n))) => {
                    buf.advance(n);
                    waited = Duration::ZERO;
                    if frame.args.is_empty() {
                        continue;
                    }
                    sh.commands_processed.fetch_add(1, Ordering::Relaxed);
                    let found = cmd::find(&frame.args[0]);
                    let timer = sh.metrics.start(found);
                    let queued = conn.queue.len();
                    let flow = conn.execute(found, frame.args).await;
                    observe(&mut conn, timer, queued);
                    match flow {
                        Flow::Continue => {}
                        Flow::Block(wait) => {
                            conn.flush(&mut stream).await?;
                            let max = sh.settings.max_request_bytes;
                            match block(&mut stream, &mut buf, max, wait, stop.clone()).await? {
                                Some(reply) => conn.reply(reply),
                                None => return Ok(()),
                            }
                        }
                        Flow::Close => return conn.flush(&mut stream).await,
                        Flow::Shutdown => {
                            conn.flush(&mut stream).await?;
                            sh.request_shutdown();
                            return Ok(());
                        }
                    }
                    if conn.out.len() >= FLUSH_BYTES || conn.queue.len() >= PENDING_MAX {
                        conn.flush(&mut stream).await?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    conn.reply(Reply::err(format!("ERR Protocol error: {e}")));
                    tracing::debug!("client {}: protocol error: {e}", conn.addr);
                    return conn.flush(&mut stream).await;
                }
            }
        }
        conn.flush(&mut stream).await?;
        if buf.len() >= sh.settings.max_request_bytes {
            conn.reply(Reply::err(format!(
                "ERR Protocol error: request exceeds max_request_bytes ({})",
                sh.settings.max_request_bytes
            )));
            return conn.flush(&mut stream).await;
        }
        if *stop.borrow() {
            return Ok(());
        }
        if buf.is_empty() {
            waited = Duration::ZERO;
        }
        buf.reserve(16 << 10);
        let read = stream.read_buf(&mut buf);
        let read_started = Instant::now();
        let n = tokio::select! {
            r = async {
                match sh.settings.idle_timeout {
                    Some(t) => tokio::time::timeout(t.saturating_sub(waited), read).await.ok(),
                    None => Some(read.await),
                }
            } => match r {
                Some(r) => r?,
                None => return Ok(()), // idle, or a request not complete in time
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        waited += read_started.elapsed();
        if n == 0 {
            return Ok(());
        }
    }
}

/// Waits for a blocking command's reply while reading what the client sends meanwhile into
/// `buf` (it runs after the reply, in order). `None`: the client went away or the server stops,
/// and the wait is dropped before it took anything.
async fn block<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
    mut wait: Pin<Box<dyn Future<Output = Reply> + Send>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Option<Reply>> {
    loop {
        // What a client sends while it waits is bounded as any request is (P11): past the
        // bound, nothing more is read until the reply.
        if buf.len() >= max {
            tokio::select! {
                reply = &mut wait => return Ok(Some(reply)),
                _ = stop.wait_for(|s| *s) => return Ok(None),
            }
        }
        buf.reserve(16 << 10);
        tokio::select! {
            reply = &mut wait => return Ok(Some(reply)),
            n = stream.read_buf(buf) => {
                if n? == 0 {
                    return Ok(None);
                }
            }
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

/// Runs a data command's part on its own (a blocking command's try): to its durable reply, and
/// the blocked clients its write woke.
async fn run_part(sh: Arc<Shared>, part: Part) -> (Reply, blocking::Woken) {
    if part.read_only() {
        let results = sh.engine().read(|v| eval_reads(v, &part.writes));
        return ((part.render)(Some(&results)), Vec::new());
    }
    let woken = blocking::pushed_keys(&part.writes);
    let reply = match sh.cluster().cloned() {
        Some(c) => {
            let txn = Txn {
                id: None,
                at_ms: now_ms(),
                guards: part.guards,
                writes: part.writes,
            };
            match c.write(txn).await {
                Ok(o) => render_outcome(part.render, o, &sh),
                Err(e) => return (cluster_error(&e), Vec::new()),
            }
        }
        None => {
            let engine = sh.engine();
            engine.room(0).await;
            match engine.submit(part.guards, part.writes) {
                Ok(p) => match p.await {
                    Ok(o) => render_outcome(part.render, o, &sh),
                    Err(e) => return (sh.engine_error(&e), Vec::new()),
                },
                Err(e) => return (sh.engine_error(&e), Vec::new()),
            }
        }
    };
    // A try that found nothing moved nothing: waking its own keys would wake this very client
    // again, for ever (BRPOPLPUSH k k on an empty list).
    let woken = if !woken.is_empty() && !blocking::is_empty_reply(&reply) && sh.blocked.any() {
        sh.blocked.wake(&woken)
    } else {
        Vec::new()
    };
    (reply, woken)
}

/// Finishes a command's timer now if its reply is ready, or once it is durable if the command
/// left a pending write at the back of the queue.
fn observe(conn: &mut Conn, timer: CommandTimer, queued_before: usize) {
    if conn.queue.len() > queued_before && matches!(conn.queue.back(), Some(Slot::Pending(_))) {
        if let Some(Slot::Pending(f)) = conn.queue.pop_back() {
            conn.queue.push_back(Slot::Pending(Box::pin(async move {
                let reply = f.await;
                timer.finish();
                reply
            })));
        }
        return;
    }
    timer.finish();
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_lowercase()
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn unknown_command(args: &[Bytes]) -> Reply {
    let mut s = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&args[0][..args[0].len().min(128)])
    );
    for a in args[1..].iter().take(10) {
        s.push_str(&format!(
            "'{}' ",
            String::from_utf8_lossy(&a[..a.len().min(128)])
        ));
    }
    Reply::err(s)
}

/// How the audit log names a command: its name, and for a command with subcommands the
/// subcommand (`config|set`). Never an argument's value: that can be a password.
fn audited_name(name: &str, args: &[Bytes]) -> String {
    match args
        .get(1)
        .and_then(|sub| crate::docs::subcommand(name, sub))
    {
        Some(sub) => format!("{name}|{sub}"),
        None => name.to_string(),
    }
}

fn unknown_subcommand(sub: &[u8], cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR unknown subcommand '{}'. Try {cmd} HELP.",
        String::from_utf8_lossy(sub)
    ))
}

/// Evaluates a read-only part against a read of the visible (durable) state.
fn eval_reads(view: &keel_engine::ReadView<'_>, writes: &[Write]) -> Vec<WriteResult> {
    writes
        .iter()
        .map(|w| match w {
            Write::Get { key } => view.read(key, None),
            Write::Read { key, op } => view.read(key, Some(op)),
            Write::Sort { spec, store: None } => view.sort(spec),
            other => unreachable!("read-only parts hold only reads: {other:?}"),
        })
        .collect()
}

fn render_outcome(render: cmd::Render, o: Outcome, sh: &Shared) -> Reply {
    match o {
        Outcome::Committed { results, .. } => render(Some(&results)),
        Outcome::GuardFailed(_) => render(None),
        // Maintenance mode was on when the write was decided (the engine's write fence).
        Outcome::Fenced => maintenance::refusal_now(&sh.engine()),
    }
}

impl Conn {
    fn engine(&self) -> Arc<Engine> {
        self.sh.engine()
    }

    /// Queues a reply behind everything already queued.
    fn reply(&mut self, r: Reply) {
        if self.queue.is_empty() {
            r.encode(self.proto, &mut self.out);
        } else {
            self.queue.push_back(Slot::Ready(r));
        }
    }

    /// Submits a transaction now (with `id`, as a KEEL.IDEM request); its reply waits in the
    /// queue until it is durable. In a cluster: until a quorum holds it durably and this node
    /// applied it; the connection's writes are proposed one after another, in order.
    fn submit(
        &mut self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
        render: cmd::Render,
    ) {
        // A write that may give a list an element wakes the clients waiting on it, once
        // durable: whether any wait is asked then, so that a client that starts waiting while
        // this write is on its way is not missed. Its reply waits until they have tried.
        let pushed = blocking::pushed_keys(&writes);
        let woken = move |sh: &Shared| {
            if !pushed.is_empty() && sh.blocked.any() {
                sh.blocked.wake(&pushed)
            } else {
                Vec::new()
            }
        };
        if let Some(c) = self.sh.cluster().cloned() {
            let txn = Txn {
                id,
                at_ms: now_ms(),
                guards,
                writes,
            };
            let sh = self.sh.clone();
            self.queue.push_back(Slot::Pending(Box::pin(async move {
                let reply = match c.write(txn).await {
                    Ok(o) => render_outcome(render, o, &sh),
                    Err(e) => cluster_error(&e),
                };
                sh.blocked.settled(&woken(&sh)).await;
                reply
            })));
            return;
        }
        let submitted = match id {
            Some(id) => self.engine().submit_request(id, guards, writes),
            None => self.engine().submit(guards, writes),
        };
        match submitted {
            Ok(p) => {
                let sh = self.sh.clone();
                self.queue.push_back(Slot::Pending(Box::pin(async move {
                    let reply = match p.await {
                        Ok(o) => render_outcome(render, o, &sh),
                        Err(e) => sh.engine_error(&e),
                    };
                    sh.blocked.settled(&woken(&sh)).await;
                    reply
                })))
            }
            Err(e) => {
                let r = self.sh.engine_error(&e);
                self.reply(r)
            }
        }
    }

    /// Waits for every queued write and encodes every queued reply, in order.
    async fn settle(&mut self) {
        while let Some(slot) = self.queue.pop_front() {
            let r = match slot {
                Slot::Ready(r) => r,
                Slot::Pending(f) => f.await,
            };
            r.encode(self.proto, &mut self.out);
        }
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, stream: &mut W) -> std::io::Result<()> {
        self.settle().await;
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
            if self.out.capacity() > 4 * FLUSH_BYTES {
                self.out = BytesMut::new();
            }
        }
        Ok(())
    }

    /// Answers a read-only part from the visible state, after this connection's earlier writes.
    async fn read(&mut self, part: Part) {
        self.settle().await;
        let results = self.engine().read(|v| eval_reads(v, &part.writes));
        self.reply((part.render)(Some(&results)));
    }

    /// Executes one request; `found` is its command's index in [`cmd::COMMANDS`].
    async fn execute(&mut self, found: Option<usize>, args: Vec<Bytes>) -> Flow {
        let Some(spec) = found.map(|i| cmd::COMMANDS[i]) else {
            if self.multi.is_some() {
                self.multi_dirty = true;
            }
            self.reply(unknown_command(&args));
            return Flow::Continue;
        };
        let name = spec.name;
        if !cmd::arity_ok(spec, args.len()) {
            if self.multi.is_some() {
                self.multi_dirty = true;
            }
            self.reply(cmd::wrong_args(name));
            return Flow::Continue;
        }
        let user = match &self.user {
            Some(u) => u.clone(),
            None if spec.before_auth => User(String::new()),
            None => {
                if self.multi.is_some() {
                    self.multi_dirty = true;
                }
                self.reply(Reply::err(NOAUTH));
                return Flow::Continue;
            }
        };
        if self.user.is_some() {
            if let Err(e) = self.sh.users.check(&user, spec, &args) {
                if self.multi.is_some() {
                    self.multi_dirty = true;
                }
                self.audit(audit::Event {
                    event: "denied",
                    command: Some(audited_name(spec.name, &args)),
                    ..self.who(&user.0)
                });
                self.reply(Reply::err(e));
                return Flow::Continue;
            }
        }
        let need = cmd::flags(spec, &args);
        // An admin command is on record, durably, before it runs (fail closed).
        if need.contains(Flags::ADMIN) {
            if let Some(a) = self.sh.audit.clone() {
                self.settle().await;
                let ev = audit::Event {
                    event: "admin",
                    command: Some(audited_name(spec.name, &args)),
                    ..self.who(&user.0)
                };
                if let Err(e) = a.record_durably(ev).await {
                    if self.multi.is_some() {
                        self.multi_dirty = true;
                    }
                    self.reply(Reply::err(format!("ERR {e}; admin commands are refused")));
                    return Flow::Continue;
                }
            }
        }
        // While the log's queue is full, Engine::submit blocks its thread, and with it every
        // connection on this worker: wait for room here instead. (Cluster writes go to raft.)
        if ((need.contains(Flags::WRITE) && self.multi.is_none()) || name == "exec")
            && self.sh.cluster().is_none()
        {
            let bytes = args.iter().map(Bytes::len).sum();
            self.engine().room(bytes).await;
        }
        // Maintenance mode, checked after every wait above, so that on a single node nothing
        // lies between the check and the write's decision.
        if need.contains(Flags::WRITE) {
            if let Some(m) = maintenance::current(&self.engine()) {
                if self.multi.is_some() {
                    self.multi_dirty = true;
                }
                self.reply(m.refusal());
                return Flow::Continue;
            }
        }
        if self.multi.is_some() && spec.in_multi != InMulti::Run {
            let queued = match spec.run {
                Run::Local(reply) => Ok(Part::fixed(reply(&args))),
                Run::Data(compile) => match compile(name, &args, now_ms()) {
                    Ok(p) if !p.guards.is_empty() => Err(Reply::err(format!(
                        "ERR {} is not supported inside MULTI by keel; use WATCH",
                        name.to_uppercase()
                    ))),
                    r => r,
                },
                Run::Conn => Err(Reply::err(format!(
                    "ERR {} is not supported inside MULTI by keel",
                    name.to_uppercase()
                ))),
            };
            match queued {
                Ok(p) => {
                    self.multi.as_mut().expect("in MULTI").push(p);
                    self.reply(Reply::Simple("QUEUED".into()));
                }
                Err(e) => {
                    self.multi_dirty = true;
                    self.reply(e);
                }
            }
            return Flow::Continue;
        }
        // A pure read (GETEX without an option too) is answered from this node's state. WATCH
        // is one: a version read before the leader applied everything committed would fail the
        // EXEC of a key that did not change while watched.
        if need.contains(Flags::READ) && !need.contains(Flags::WRITE) {
            if let Err(r) = linearize(self.sh.clone()).await {
                self.reply(r);
                return Flow::Continue;
            }
        }
        if let (Some(block), Run::Data(compile)) = (spec.block, spec.run) {
            let timeout = match block.timeout(&args) {
                Ok(t) => t,
                Err(e) => {
                    self.reply(e);
                    return Flow::Continue;
                }
            };
            // Fails fast on bad arguments; the wait tries again with fresh parts.
            if let Err(e) = compile(name, &args, now_ms()) {
                self.reply(e);
                return Flow::Continue;
            }
            self.settle().await;
            let sh = self.sh.clone();
            let keys = (block.keys)(&args);
            return Flow::Block(Box::pin(async move {
                let attempt = |later: bool| {
                    let mut part = compile(name, &args, now_ms()).expect("compiled once already");
                    // Once woken, only a list (a sorted set) serves a pop: keys of another type
                    // are passed over, as Redis does not serve a blocked client from them.
                    for w in &mut part.writes {
                        if let Write::ListPopFirst {
                            skip_other_types, ..
                        }
                        | Write::ZPopFirst {
                            skip_other_types, ..
                        } = w
                        {
                            *skip_other_types = later;
                        }
                    }
                    run_part(sh.clone(), part)
                };
                blocking::wait_for(&sh.blocked, keys, timeout, attempt).await
            }));
        }
        match spec.run {
            Run::Data(compile) => match compile(name, &args, now_ms()) {
                Err(e) => self.reply(e),
                Ok(p) if p.read_only() => self.read(p).await,
                Ok(p) => self.submit(None, p.guards, p.writes, p.render),
            },
            Run::Local(reply) => self.reply(reply(&args)),
            Run::Conn => return self.command(name, args).await,
        }
        Flow::Continue
    }

    /// The commands the connection runs ([`Run::Conn`]).
    async fn command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        // NAME HELP, for every command with subcommands, from the same table as COMMAND DOCS.
        if args.len() == 2 && eq(&args[1], "help") {
            if let Some(lines) = crate::docs::help_lines(name) {
                self.reply(Reply::Array(lines.into_iter().map(Reply::Simple).collect()));
                return Flow::Continue;
            }
        }
        let reply = match name {
            "quit" => {
                self.reply(Reply::ok());
                return Flow::Close;
            }
            "auth" => self.auth(&args),
            "hello" => {
                self.settle().await;
                self.hello(&args)
            }
            "select" => match parse_i64(&args[1]) {
                None => Reply::err(NOT_INT),
                Some(0) => Reply::ok(),
                Some(_) => Reply::err("ERR DB index is out of range"),
            },
            "reset" => {
                self.settle().await;
                self.multi = None;
                self.multi_dirty = false;
                self.watched.clear();
                self.proto = 2;
                self.name = None;
                self.user = self.sh.users.initial();
                Reply::Simple("RESET".into())
            }
            "client" => self.client(&args),
            "command" => command_info(&args),
            "info" => {
                self.settle().await;
                Reply::Verbatim(self.info(&args))
            }
            "config" => self.config(&args),
            "shutdown" => {
                if args.len() > 1 && args[1..].iter().any(|a| eq(a, "abort")) {
                    Reply::err("ERR No shutdown in progress.")
                } else {
                    return Flow::Shutdown;
                }
            }
            "dbsize" => {
                self.settle().await;
                // As Redis counts: every key held, in O(1), expired keys that active expiry has
                // not removed yet (within about 100 ms) included.
                Reply::Int(self.engine().read(|v| v.held()) as i64)
            }
            "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
                self.settle().await;
                // Any type: a stamp reads the expiry without copying the value.
                match self.engine().read(|v| v.stamp(&args[1])) {
                    None => Reply::Int(-2),
                    Some((_, expires_at_ms)) => match expires_at_ms {
                        None => Reply::Int(-1),
                        Some(at) => {
                            let left = at.saturating_sub(now_ms()) as i64;
                            Reply::Int(match name {
                                "ttl" => (left + 500) / 1000,
                                "pttl" => left,
                                "expiretime" => (at / 1000) as i64,
                                _ => at as i64,
                            })
                        }
                    },
                }
            }
            "keys" => {
                self.settle().await;
                let pat = &args[1];
                // One read: KEYS sees one state, as Redis's blocks its server while it runs.
                let keys: Vec<Reply> = self.engine().read(|v| {
                    if glob::literal_prefix(pat).len() == pat.len() {
                        // No wildcard: one lookup instead of a pass over every key.
                        return (v.version(pat).map(|_| Reply::Bulk(pat.clone())))
                            .into_iter()
                            .collect();
                    }
                    (v.keys())
                        .filter(|k| glob::matches(pat, k))
                        .map(|k| Reply::Bulk(Bytes::copy_from_slice(k)))
                        .collect()
                });
                Reply::Array(keys)
            }
            "scan" => {
                self.settle().await;
                self.scan(&args)
            }
            "randomkey" => {
                self.settle().await;
                // From a random place in the keys' hash order: the first live key there, going
                // round to the start once. Keys after a large gap come up more often; Redis's
                // choice is not uniform either.
                let start = cmd::random();
                let key = self.engine().read(|v| {
                    let (mut cursor, mut wrapped) = (start, false);
                    loop {
                        let (keys, next) = v.scan_keys(cursor, 1);
                        if let Some(k) = keys.into_iter().next() {
                            return Some(k);
                        }
                        if next == 0 {
                            if wrapped {
                                return None;
                            }
                            wrapped = true;
                        }
                        cursor = next;
                    }
                });
                key.map_or(Reply::Nil, Reply::Bulk)
            }
            // A checkpoint (snapshot, manifest, prune) on a blocking thread: it can take seconds.
            "save" | "bgsave" => {
                let engine = self.sh.engine();
                let job = tokio::task::spawn_blocking(move || engine.checkpoint());
                if name == "bgsave" {
                    Reply::Simple("Background saving started".into())
                } else {
                    match job.await {
                        Ok(Ok(_)) => Reply::ok(),
                        Ok(Err(e)) => self.sh.engine_error(&e),
                        Err(_) => Reply::err("ERR the checkpoint thread failed"),
                    }
                }
            }
            "lastsave" => {
                let at = self
                    .engine()
                    .last_checkpoint()
                    .0
                    .map(|i| i.completed_ms / 1000);
                let started = now_ms() / 1000 - self.sh.started.elapsed().as_secs();
                Reply::Int(at.unwrap_or(started) as i64)
            }
            "keel.cluster" => cluster_command(self.sh.clone(), args).await,
            "keel.maintenance" => {
                let sub = lower(&args[1]);
                match (sub.as_str(), args.len()) {
                    ("on", 2 | 3) => match maintenance::on(args.get(2).map(|a| &a[..]), now_ms()) {
                        Ok(m) => {
                            let w = maintenance::write(Some(&m));
                            self.submit(None, vec![], vec![w], Box::new(|_| Reply::ok()));
                            return Flow::Continue;
                        }
                        Err(r) => r,
                    },
                    ("off", 2) => {
                        let w = maintenance::write(None);
                        self.submit(None, vec![], vec![w], Box::new(|_| Reply::ok()));
                        return Flow::Continue;
                    }
                    ("status", 2) => {
                        self.settle().await;
                        maintenance::status(maintenance::current(&self.engine()).as_ref())
                    }
                    ("on" | "off" | "status" | "help", _) => cmd::wrong_args("keel.maintenance"),
                    _ => unknown_subcommand(&args[1], "KEEL.MAINTENANCE"),
                }
            }
            "keel.backup" => {
                let engine = self.sh.engine();
                let target =
                    std::path::PathBuf::from(String::from_utf8_lossy(&args[1]).into_owned());
                match tokio::task::spawn_blocking(move || engine.backup(target)).await {
                    Ok(Ok(r)) => Reply::Int(r.lsn as i64),
                    Ok(Err(e)) => self.sh.engine_error(&e),
                    Err(_) => Reply::err("ERR the backup thread failed"),
                }
            }
            "multi" => {
                if self.multi.is_some() {
                    Reply::err("ERR MULTI calls can not be nested")
                } else {
                    self.multi = Some(Vec::new());
                    self.multi_dirty = false;
                    Reply::ok()
                }
            }
            "discard" => match self.multi.take() {
                None => Reply::err("ERR DISCARD without MULTI"),
                Some(_) => {
                    self.watched.clear();
                    Reply::ok()
                }
            },
            "exec" => {
                self.exec().await;
                return Flow::Continue;
            }
            "watch" => {
                if self.multi.is_some() {
                    Reply::err("ERR WATCH inside MULTI is not allowed")
                } else {
                    self.settle().await;
                    for k in &args[1..] {
                        let version = self.engine().read(|v| v.version(k));
                        self.watched.push(Guard {
                            key: k.clone(),
                            version,
                        });
                    }
                    Reply::ok()
                }
            }
            "unwatch" => {
                self.watched.clear();
                Reply::ok()
            }
            "waitaof" => match (
                parse_i64(&args[1]),
                parse_i64(&args[2]),
                parse_i64(&args[3]),
            ) {
                (Some(l), Some(r), Some(t)) if l >= 0 && r >= 0 => {
                    if t < 0 {
                        Reply::err("ERR timeout is negative")
                    } else {
                        self.settle().await;
                        let engine = self.sh.engine();
                        match tokio::task::spawn_blocking(move || engine.sync()).await {
                            Ok(Ok(_)) => Reply::Array(vec![Reply::Int(1), Reply::Int(0)]),
                            Ok(Err(e)) => self.sh.engine_error(&e),
                            Err(e) => Reply::err(format!("ERR sync task failed: {e}")),
                        }
                    }
                }
                _ => Reply::err(NOT_INT),
            },
            "wait" => match (parse_i64(&args[1]), parse_i64(&args[2])) {
                (Some(_), Some(t)) if t < 0 => Reply::err("ERR timeout is negative"),
                (Some(_), Some(_)) => Reply::Int(0),
                _ => Reply::err(NOT_INT),
            },
            "memory" => {
                let sub = lower(&args[1]);
                let samples_ok = |a: &[Bytes]| match a {
                    [] => Ok(()),
                    [o, n] if eq(o, "samples") => {
                        parse_i64(n).map(|_| ()).ok_or(Reply::err(NOT_INT))
                    }
                    _ => Err(Reply::err(SYNTAX)),
                };
                match sub.as_str() {
                    "usage" if args.len() >= 3 => match samples_ok(&args[3..]) {
                        Err(e) => e,
                        Ok(()) => {
                            self.settle().await;
                            let n = self.engine().read(|v| v.memory_usage(&args[2]));
                            n.map_or(Reply::Nil, |n| Reply::Int(n as i64))
                        }
                    },
                    "usage" => cmd::wrong_args("memory|usage"),
                    _ => unknown_subcommand(&args[1], "MEMORY"),
                }
            }
            "object" => {
                self.settle().await;
                let sub = lower(&args[1]);
                match (sub.as_str(), args.len()) {
                    ("encoding", 3) => self
                        .engine()
                        .read(|v| v.encoding(&args[2]))
                        .map_or(Reply::Nil, Reply::bulk),
                    ("refcount", 3) => match self.engine().read(|v| v.version(&args[2])) {
                        Some(_) => Reply::Int(1),
                        None => Reply::Nil,
                    },
                    ("freq" | "idletime", 3) => match self.engine().read(|v| v.version(&args[2])) {
                        Some(_) => Reply::err(format!(
                            "ERR keel does not track access {}: it evicts nothing, so it needs \
                             neither LRU nor LFU data",
                            if sub == "freq" { "frequency" } else { "times" }
                        )),
                        None => Reply::Nil,
                    },
                    ("encoding" | "refcount" | "freq" | "idletime" | "help", _) => {
                        cmd::wrong_args(&format!("object|{sub}"))
                    }
                    _ => unknown_subcommand(&args[1], "OBJECT"),
                }
            }
            "keel.version" => {
                self.settle().await;
                match self.engine().read(|v| v.version(&args[1])) {
                    Some(version) => Reply::Int(version as i64),
                    None => Reply::Nil,
                }
            }
            "keel.idem" => {
                let inner = lower(&args[2]);
                let part = match cmd::lookup(&inner) {
                    Some(s) if !cmd::arity_ok(s, args.len() - 2) => Err(cmd::wrong_args(&inner)),
                    Some(s) => s.compile(&args[2..], now_ms()).unwrap_or_else(|| {
                        Err(Reply::err(format!(
                            "ERR KEEL.IDEM wraps a string or key command, not '{inner}'"
                        )))
                    }),
                    None => Err(unknown_command(&args[2..])),
                };
                match part {
                    Err(e) => e,
                    Ok(p) => {
                        self.submit(Some(args[1].clone()), p.guards, p.writes, p.render);
                        return Flow::Continue;
                    }
                }
            }
            other => Reply::err(format!("ERR internal: no handler for '{other}'")),
        };
        self.reply(reply);
        Flow::Continue
    }

    fn auth(&mut self, args: &[Bytes]) -> Reply {
        let (user, pass) = match args.len() {
            2 => (&b"default"[..], &args[1]),
            3 => (&args[1][..], &args[2]),
            _ => return Reply::err(SYNTAX),
        };
        if args.len() == 2 && !self.sh.users.password_required() {
            return Reply::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        }
        let ok = match self.sh.users.authenticate(user, pass) {
            Some(u) => {
                self.user = Some(u);
                true
            }
            None => false,
        };
        self.audit_auth(user, ok);
        if ok {
            Reply::ok()
        } else {
            Reply::err(WRONGPASS)
        }
    }

    /// Records an event in the audit log, if one is kept.
    fn audit(&self, ev: audit::Event) {
        if let Some(a) = &self.sh.audit {
            a.record(ev);
        }
    }

    /// An event's user and client address.
    fn who(&self, user: &str) -> audit::Event {
        audit::Event {
            user: Some(user.into()),
            addr: Some(self.addr.clone()),
            ..audit::Event::default()
        }
    }

    /// Records a login, if an audit log is kept. A name that is no configured user is recorded
    /// as `(unknown)`: it is whatever the client sent, possibly a password typed in the wrong
    /// place (P14).
    fn audit_auth(&self, user: &[u8], ok: bool) {
        if self.sh.audit.is_none() {
            return;
        }
        let user = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.sh.users.name(u))
            .unwrap_or_else(|| "(unknown)".into());
        self.audit(audit::Event {
            event: "auth",
            ok: Some(ok),
            user: Some(user),
            addr: Some(self.addr.clone()),
            ..audit::Event::default()
        });
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut proto = self.proto;
        if let Some(v) = args.get(1) {
            match parse_i64(v) {
                None => {
                    return Reply::err("ERR Protocol version is not an integer or out of range")
                }
                Some(v @ (2 | 3)) => proto = v as u8,
                Some(_) => return Reply::err("NOPROTO unsupported protocol version"),
            }
        }
        let mut i = 2;
        let mut auth = None;
        let mut setname = None;
        while i < args.len() {
            if eq(&args[i], "auth") && i + 2 < args.len() {
                auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            } else if eq(&args[i], "setname") && i + 1 < args.len() {
                setname = Some(args[i + 1].clone());
                i += 2;
            } else {
                return Reply::err(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                ));
            }
        }
        if let Some((u, p)) = auth {
            match self.sh.users.authenticate(&u, &p) {
                Some(user) => {
                    self.user = Some(user);
                    self.audit_auth(&u, true);
                }
                None => {
                    self.audit_auth(&u, false);
                    return Reply::err(WRONGPASS);
                }
            }
        }
        if self.user.is_none() {
            return Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        if let Some(n) = setname {
            if let Err(e) = check_client_name(&n) {
                return e;
            }
            self.name = Some(n).filter(|n| !n.is_empty());
        }
        self.proto = proto;
        let s = |x: &str| Reply::bulk(x.to_string());
        Reply::Map(vec![
            (s("server"), s("keel")),
            (s("version"), s(REDIS_COMPAT_VERSION)),
            (s("proto"), Reply::Int(proto as i64)),
            (s("id"), Reply::Int(self.id as i64)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (s("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = lower(&args[1]);
        match (sub.as_str(), args.len()) {
            ("id", 2) => Reply::Int(self.id as i64),
            ("getname", 2) => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
            ("setname", 3) => match check_client_name(&args[2]) {
                Ok(()) => {
                    self.name = Some(args[2].clone()).filter(|n| !n.is_empty());
                    Reply::ok()
                }
                Err(e) => e,
            },
            ("setinfo", 4) => Reply::ok(),
            ("info", 2) => Reply::Verbatim(format!(
                "id={} addr={} name={} db=0 multi={} resp={}\n",
                self.id,
                self.addr,
                self.name
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default(),
                self.multi.as_ref().map_or(-1, |m| m.len() as i64),
                self.proto
            )),
            ("id" | "getname" | "setname" | "setinfo" | "info", _) => {
                cmd::wrong_args(&format!("client|{sub}"))
            }
            _ => unknown_subcommand(&args[1], "CLIENT"),
        }
    }

    fn config(&self, args: &[Bytes]) -> Reply {
        let sub = lower(&args[1]);
        match sub.as_str() {
            "get" if args.len() >= 3 => {
                let st = &self.sh.settings;
                let table: Vec<(&str, String)> = vec![
                    ("appendonly", "yes".into()),
                    (
                        "appendfsync",
                        // A cluster node's raft log syncs every write (its engine's log
                        // need not).
                        match self.engine().options().wal.sync_policy {
                            _ if self.sh.cluster().is_some() => "always",
                            keel_wal::SyncPolicy::Always => "always",
                            keel_wal::SyncPolicy::Interval(_) => "everysec",
                            keel_wal::SyncPolicy::Never => "no",
                        }
                        .into(),
                    ),
                    ("save", String::new()),
                    ("databases", "1".into()),
                    ("maxmemory", "0".into()),
                    ("maxmemory-policy", "noeviction".into()),
                    ("maxclients", st.max_clients.to_string()),
                    ("port", self.sh.port.to_string()),
                    ("bind", st.bind.to_string()),
                    ("dir", st.dir.display().to_string()),
                    (
                        "timeout",
                        st.idle_timeout.map_or(0, |d| d.as_secs()).to_string(),
                    ),
                    ("proto-max-bulk-len", st.limits.bulk_bytes_max.to_string()),
                    (
                        "client-query-buffer-limit",
                        st.max_request_bytes.to_string(),
                    ),
                    (
                        "cluster-enabled",
                        if self.sh.cluster().is_some() {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                    ),
                ];
                let table = table
                    .into_iter()
                    .chain(SETTABLE.iter().map(|s| (s.name, (s.get)().to_string())));
                let pairs = table
                    .into_iter()
                    .filter(|(k, _)| {
                        args[2..]
                            .iter()
                            .any(|p| glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
                    })
                    .map(|(k, v)| (Reply::bulk(k.to_string()), Reply::bulk(v)))
                    .collect();
                Reply::Map(pairs)
            }
            "set" => config_set(&args[2..]),
            "resetstat" => Reply::ok(),
            "get" => cmd::wrong_args("config|get"),
            _ => unknown_subcommand(&args[1], "CONFIG"),
        }
    }

    fn scan(&self, args: &[Bytes]) -> Reply {
        let Some(cursor) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Reply::err("ERR invalid cursor");
        };
        let mut pattern: Option<&Bytes> = None;
        let mut count = 10usize;
        let mut kind: Option<String> = None;
        let mut i = 2;
        while i < args.len() {
            if i + 1 >= args.len() {
                return Reply::err(SYNTAX);
            }
            if eq(&args[i], "match") {
                pattern = Some(&args[i + 1]);
            } else if eq(&args[i], "count") {
                match parse_i64(&args[i + 1]) {
                    Some(c) if c >= 1 => count = (c as usize).min(100_000),
                    Some(_) => return Reply::err(SYNTAX),
                    None => return Reply::err(NOT_INT),
                }
            } else if eq(&args[i], "type") {
                kind = Some(lower(&args[i + 1]));
            } else {
                return Reply::err(SYNTAX);
            }
            i += 2;
        }
        // The cursor is a position in hash order: it holds no state, so any number is valid
        // (a made-up one starts the scan part-way).
        let (page, next) = self.engine().read(|v| {
            let (page, next) = v.scan_keys(cursor, count);
            let page: Vec<Bytes> = (page.into_iter())
                .filter(|k| kind.as_deref().is_none_or(|t| v.kind(k) == Some(t)))
                .collect();
            (page, next)
        });
        let keys = page
            .into_iter()
            .filter(|k| pattern.is_none_or(|p| glob::matches(p, k)))
            .map(Reply::Bulk)
            .collect();
        Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
    }

    async fn exec(&mut self) {
        let Some(parts) = self.multi.take() else {
            self.reply(Reply::err("ERR EXEC without MULTI"));
            return;
        };
        let watched = std::mem::take(&mut self.watched);
        if std::mem::take(&mut self.multi_dirty) {
            self.reply(Reply::err(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
            return;
        }
        // Maintenance turned on after the writes were queued: none of them runs.
        if !parts.iter().all(Part::read_only) {
            if let Some(m) = maintenance::current(&self.engine()) {
                self.reply(m.refusal());
                return;
            }
        }
        if parts.iter().all(Part::read_only) {
            // Nothing to write: answer from one durable snapshot, checking WATCH against it.
            self.settle().await;
            // The reads are copied out under the read lock; the replies render after it.
            let results = self.engine().read(|v| {
                let changed = watched.iter().any(|g| v.version(&g.key) != g.version);
                (!changed).then(|| {
                    parts
                        .iter()
                        .map(|p| eval_reads(v, &p.writes))
                        .collect::<Vec<_>>()
                })
            });
            let Some(results) = results else {
                self.reply(Reply::NilArray);
                return;
            };
            let replies = parts
                .into_iter()
                .zip(results)
                .map(|(p, r)| (p.render)(Some(&r)))
                .collect();
            self.reply(Reply::Array(replies));
            return;
        }
        // One engine transaction: one WAL record, WATCH versions as its guards.
        let mut writes = Vec::new();
        let mut renders = Vec::with_capacity(parts.len());
        for p in parts {
            let n = p.writes.len();
            writes.extend(p.writes);
            renders.push((n, p.render));
        }
        let render: cmd::Render = Box::new(move |results| {
            let Some(results) = results else {
                return Reply::NilArray;
            };
            let mut at = 0;
            let mut replies = Vec::with_capacity(renders.len());
            for (n, r) in renders {
                replies.push(r(Some(&results[at..at + n])));
                at += n;
            }
            Reply::Array(replies)
        });
        self.submit(None, watched, writes, render);
    }

    fn info(&self, args: &[Bytes]) -> String {
        let want = |s: &str| {
            args.len() == 1
                || args[1..]
                    .iter()
                    .any(|a| eq(a, s) || eq(a, "all") || eq(a, "everything") || eq(a, "default"))
        };
        let e = self.engine();
        let st = &self.sh.settings;
        let mut o = String::new();
        let line = |o: &mut String, k: &str, v: &dyn std::fmt::Display| {
            o.push_str(&format!("{k}:{v}\r\n"));
        };
        if want("server") {
            o.push_str("# Server\r\n");
            line(&mut o, "redis_version", &REDIS_COMPAT_VERSION);
            line(&mut o, "keel_version", &env!("CARGO_PKG_VERSION"));
            line(&mut o, "redis_mode", &"standalone");
            line(&mut o, "os", &std::env::consts::OS);
            line(&mut o, "arch_bits", &64);
            line(&mut o, "process_id", &std::process::id());
            line(&mut o, "tcp_port", &self.sh.port);
            let up = self.sh.started.elapsed().as_secs();
            line(&mut o, "uptime_in_seconds", &up);
            line(&mut o, "uptime_in_days", &(up / 86400));
            line(&mut o, "data_dir", &st.dir.display());
            o.push_str("\r\n");
        }
        if want("clients") {
            o.push_str("# Clients\r\n");
            line(
                &mut o,
                "connected_clients",
                &self.sh.clients.load(Ordering::Relaxed),
            );
            line(&mut o, "maxclients", &st.max_clients);
            line(&mut o, "blocked_clients", &self.sh.blocked.waiting());
            o.push_str("\r\n");
        }
        if want("stats") {
            o.push_str("# Stats\r\n");
            line(
                &mut o,
                "total_connections_received",
                &self.sh.connections_received.load(Ordering::Relaxed),
            );
            line(
                &mut o,
                "total_commands_processed",
                &self.sh.commands_processed.load(Ordering::Relaxed),
            );
            line(
                &mut o,
                "rejected_connections",
                &self.sh.rejected_connections.load(Ordering::Relaxed),
            );
            o.push_str("\r\n");
        }
        let ws = e.wal_stats();
        if want("persistence") {
            o.push_str("# Persistence\r\n");
            line(&mut o, "loading", &0);
            line(&mut o, "aof_enabled", &1);
            line(&mut o, "aof_fsync", &"always");
            line(&mut o, "durable_lsn", &e.durable_lsn());
            line(&mut o, "visible_lsn", &e.visible_lsn());
            line(&mut o, "wal_fsyncs", &ws.syncs);
            let mean_us = ws.sync_nanos.checked_div(ws.syncs).unwrap_or(0) as f64 / 1000.0;
            line(&mut o, "wal_fsync_mean_us", &format!("{mean_us:.1}"));
            for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
                // Upper bounds of log2 buckets: exact to a factor of two.
                let v = ws.sync_latency_quantile_us(q).unwrap_or(0);
                line(&mut o, &format!("wal_fsync_{name}_us_max"), &v);
            }
            line(&mut o, "wal_records", &ws.records);
            let batch = if ws.syncs == 0 {
                0.0
            } else {
                ws.records as f64 / ws.syncs as f64
            };
            line(
                &mut o,
                "wal_group_commit_mean_records",
                &format!("{batch:.2}"),
            );
            line(&mut o, "wal_bytes_written", &ws.bytes_written);
            line(&mut o, "wal_queued_bytes", &ws.queued_bytes);
            let h = self.sh.wal_health();
            line(&mut o, "wal_poisoned", &(h.poisoned.is_some() as u8));
            line(
                &mut o,
                "wal_poison_cause",
                &h.poisoned.as_deref().unwrap_or(""),
            );
            line(&mut o, "wal_reopen_attempts", &h.reopen_attempts);
            line(&mut o, "wal_reopens", &h.reopens);
            line(&mut o, "wal_reopen_retry_ms", &h.retry.as_millis());
            line(
                &mut o,
                "wal_reopen_last_error",
                &h.last_error.as_deref().unwrap_or(""),
            );
            let (cp, cp_err) = e.last_checkpoint();
            match cp {
                Some(c) => {
                    line(&mut o, "last_checkpoint_lsn", &c.lsn);
                    line(&mut o, "last_checkpoint_keys", &c.keys);
                    line(&mut o, "last_checkpoint_bytes", &c.snapshot_bytes);
                    line(&mut o, "last_checkpoint_completed_ms", &c.completed_ms);
                    line(
                        &mut o,
                        "last_checkpoint_duration_ms",
                        &c.duration.as_millis(),
                    );
                }
                None => line(&mut o, "last_checkpoint_lsn", &0),
            }
            line(
                &mut o,
                "last_checkpoint_status",
                &cp_err.map_or("ok".to_string(), |e| format!("err ({e})")),
            );
            o.push_str("\r\n");
        }
        if let Some(c) = self.sh.cluster().filter(|_| want("cluster")) {
            o.push_str("# Cluster\r\n");
            line(&mut o, "cluster_enabled", &1);
            o.push_str(&status_text(&c.status()));
            o.push_str("\r\n");
        }
        if want("keel") {
            let r = e.recovery_report();
            o.push_str("# Keel\r\n");
            let a = self.sh.audit.as_ref().map(|a| a.stats());
            line(&mut o, "audit", &(a.is_some() as u8));
            if let Some(a) = a {
                line(&mut o, "audit_seq", &a.seq.load(Ordering::Relaxed));
                line(
                    &mut o,
                    "audit_write_failures",
                    &a.write_failures.load(Ordering::Relaxed),
                );
                line(&mut o, "audit_dropped", &a.dropped.load(Ordering::Relaxed));
                let err = a
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                line(&mut o, "audit_last_error", &err.unwrap_or_default());
            }
            let m = maintenance::current(&e);
            line(&mut o, "maintenance", &(m.is_some() as u8));
            line(
                &mut o,
                "maintenance_reason",
                &m.as_ref().map_or("", |m| m.reason.as_str()),
            );
            line(
                &mut o,
                "maintenance_since_ms",
                &m.as_ref().map_or(0, |m| m.since_ms),
            );
            line(&mut o, "recovery_snapshot_lsn", &r.snapshot_lsn);
            line(&mut o, "recovery_snapshot_bytes", &r.snapshot_bytes);
            line(&mut o, "recovery_records_replayed", &r.records_replayed);
            line(&mut o, "recovery_bytes_replayed", &r.bytes_replayed);
            line(&mut o, "recovery_keys", &r.keys);
            line(&mut o, "recovery_lsn", &r.lsn);
            line(&mut o, "recovery_duration_ms", &r.duration.as_millis());
            let wal = r.wal.to_string().replace(['\r', '\n'], " ");
            line(&mut o, "recovery_wal", &wal.trim());
            // P13: files recovery found damaged and moved aside (or log damage it could open
            // past). "none" when there were none; otherwise each file and what was done.
            let mut damaged: Vec<String> = r.damaged.iter().map(|d| d.to_string()).collect();
            damaged.extend(r.wal.unneeded_damage.iter().map(|d| d.to_string()));
            line(&mut o, "recovery_damaged_files", &damaged.len());
            let text = if damaged.is_empty() {
                "none".to_string()
            } else {
                damaged.join("; ").replace(['\r', '\n'], " ")
            };
            line(&mut o, "recovery_damaged", &text);
            line(&mut o, "wal_appends", &ws.appends);
            line(&mut o, "wal_writes", &ws.writes);
            line(&mut o, "wal_segments_created", &ws.segments_created);
            o.push_str("\r\n");
        }
        if want("keyspace") {
            // Counted as Redis counts them, in O(1): every key held, expired ones that active
            // expiry has not removed yet included.
            let (keys, expires) = e.read(|v| (v.held(), v.expiring()));
            o.push_str("# Keyspace\r\n");
            if keys > 0 {
                line(
                    &mut o,
                    "db0",
                    &format!("keys={keys},expires={expires},avg_ttl=0"),
                );
            }
        }
        o
    }
}

/// A setting CONFIG SET changes at run time, for this process only (as Redis's, until a
/// CONFIG REWRITE that keel does not have): a restart returns to the default.
struct Settable {
    name: &'static str,
    get: fn() -> i64,
    /// Whether a value is in the setting's range.
    valid: fn(i64) -> bool,
    /// Sets a valid value.
    set: fn(i64),
}

/// A count setting: any non-negative value.
fn count(n: i64) -> bool {
    n >= 0
}

/// The compression depth keel reports (it does not compress list chunks: CPU for memory it
/// does not trade).
static LIST_COMPRESS_DEPTH: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// The encoding thresholds of keel's compact collections, under Redis's names (and their old
/// `ziplist` aliases): they change how a value is stored, never what it holds.
const SETTABLE: &[Settable] = &[
    Settable {
        name: "hash-max-listpack-entries",
        get: || table::hash_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_hash_packed_entries(n as usize),
    },
    Settable {
        name: "hash-max-listpack-value",
        get: || table::hash_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_hash_packed_bytes(n as usize),
    },
    Settable {
        name: "hash-max-ziplist-entries",
        get: || table::hash_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_hash_packed_entries(n as usize),
    },
    Settable {
        name: "hash-max-ziplist-value",
        get: || table::hash_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_hash_packed_bytes(n as usize),
    },
    Settable {
        name: "set-max-intset-entries",
        get: || table::set_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_set_packed_limit(0, n as usize),
    },
    Settable {
        name: "set-max-listpack-entries",
        get: || table::set_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_set_packed_limit(1, n as usize),
    },
    Settable {
        name: "set-max-listpack-value",
        get: || table::set_packed_limits().2 as i64,
        valid: count,
        set: |n| table::set_set_packed_limit(2, n as usize),
    },
    Settable {
        name: "zset-max-listpack-entries",
        get: || table::zset_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(0, n as usize),
    },
    Settable {
        name: "zset-max-listpack-value",
        get: || table::zset_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(1, n as usize),
    },
    Settable {
        name: "zset-max-ziplist-entries",
        get: || table::zset_packed_limits().0 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(0, n as usize),
    },
    Settable {
        name: "zset-max-ziplist-value",
        get: || table::zset_packed_limits().1 as i64,
        valid: count,
        set: |n| table::set_zset_packed_limit(1, n as usize),
    },
    Settable {
        name: "list-max-listpack-size",
        get: table::list_chunk_limit,
        valid: |n| n >= -5 && n != 0,
        set: |n| {
            table::set_list_chunk_limit(n);
        },
    },
    Settable {
        name: "list-max-ziplist-size",
        get: table::list_chunk_limit,
        valid: |n| n >= -5 && n != 0,
        set: |n| {
            table::set_list_chunk_limit(n);
        },
    },
    Settable {
        name: "list-compress-depth",
        get: || LIST_COMPRESS_DEPTH.load(std::sync::atomic::Ordering::Relaxed),
        valid: count,
        set: |n| LIST_COMPRESS_DEPTH.store(n, std::sync::atomic::Ordering::Relaxed),
    },
];

/// CONFIG SET name value [name value ...]: all or nothing, as in Redis 7.
fn config_set(pairs: &[Bytes]) -> Reply {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return cmd::wrong_args("config|set");
    }
    let mut changes = Vec::new();
    for p in pairs.chunks(2) {
        let name = lower(&p[0]);
        // keel takes no RDB save points (it checkpoints by log size and time), which is what
        // `save ""` asks for: accepted, and nothing else.
        if name == "save" {
            if p[1].is_empty() {
                continue;
            }
            return Reply::err(
                "ERR keel takes no RDB save points; it checkpoints by log size and by time \
                 (checkpoint_interval_secs in its config file), so only save \"\" is accepted",
            );
        }
        let Some(s) = SETTABLE.iter().find(|s| s.name == name) else {
            return Reply::err(format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{name}' (keel \
                 changes only the encoding thresholds at run time; the rest is in its config \
                 file)"
            ));
        };
        let Some(n) = std::str::from_utf8(&p[1])
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        else {
            return Reply::err(format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}') - argument \
                 couldn't be parsed into an integer"
            ));
        };
        if !(s.valid)(n) {
            return Reply::err(format!(
                "ERR CONFIG SET failed (possibly related to argument '{name}') - argument must \
                 be in the setting's range"
            ));
        }
        changes.push((s, n));
    }
    for (s, n) in changes {
        (s.set)(n);
    }
    Reply::ok()
}

fn check_client_name(n: &[u8]) -> Result<(), Reply> {
    if n.iter().all(|&c| (b'!'..=b'~').contains(&c)) {
        Ok(())
    } else {
        Err(Reply::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

/// COMMAND INFO for one command, from its flags in the command table: `write` for anything
/// that can change data (GETEX too, as in Redis), `readonly` for the rest that reads.
fn spec_info(s: &cmd::Command) -> Reply {
    let f = s.flags;
    let mut flags = Vec::new();
    let mut categories = Vec::new();
    if f.contains(Flags::WRITE) {
        flags.extend(["write", "denyoom"]);
        categories.push("@write");
    } else if f.contains(Flags::READ) {
        flags.extend(["readonly", "fast"]);
        categories.push("@read");
    }
    if f.contains(Flags::ADMIN) {
        flags.extend(["admin", "noscript"]);
        categories.extend(["@admin", "@dangerous"]);
    }
    if f.is_connection() {
        flags.push("fast");
        categories.push("@connection");
    }
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(s.arity),
        Reply::Array(flags.iter().map(|f| Reply::Simple(f.to_string())).collect()),
        Reply::Int(s.keys.0),
        Reply::Int(s.keys.1),
        Reply::Int(s.keys.2),
        Reply::Array(
            categories
                .iter()
                .map(|c| Reply::Simple(c.to_string()))
                .collect(),
        ),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn command_info(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1).map(|s| lower(s)) else {
        return Reply::Array(cmd::COMMANDS.iter().map(|c| spec_info(c)).collect());
    };
    match sub.as_str() {
        "count" => Reply::Int(cmd::COMMANDS.len() as i64),
        "docs" => crate::docs::reply(&args[2..]),
        "list" => Reply::Array(cmd::COMMANDS.iter().map(|s| Reply::bulk(s.name)).collect()),
        "info" => Reply::Array(
            args[2..]
                .iter()
                .map(|n| cmd::lookup(&lower(n)).map_or(Reply::Nil, spec_info))
                .collect(),
        ),
        _ => unknown_subcommand(&args[1], "COMMAND"),
    }
}
