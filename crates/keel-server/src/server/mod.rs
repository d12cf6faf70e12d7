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
use crate::metrics::{CommandStat, CommandTimer, Done, Metrics};
use crate::resp::{parse_i64, Parser, Reply};

mod acl;
mod admin;
mod backend;
mod clients;
mod cluster;
mod info;
mod keyspace;
mod monitor;
pub(crate) mod notify;
mod params;
mod pipeline;
mod pubsub;
mod scripts;
mod session;
mod tracking;
mod transactions;

pub use backend::Backend;
use clients::{Client, Clients, Message, Pause, Pushed, Silence};
use cluster::redis_mode;
pub(crate) use info::trim_allocator;
pub use info::{set_allocator_stats, set_allocator_trim, AllocatorStats};
use monitor::Monitors;
use params::config;
pub use params::Live;
pub use pipeline::queues_in_multi;
use pipeline::{eval_reads, observe, Touched};
use pubsub::{PubSub, Subs};
use session::session;
use tracking::{touched_keys, Tracked, Tracking};

/// Replies are written out once this many bytes are ready, so a long pipeline of large reads
/// holds a bounded amount of reply memory per connection.
const FLUSH_BYTES: usize = 1 << 20;
/// Writes in flight per connection before the connection waits for them.
const PENDING_MAX: usize = 4096;
/// How long shutdown waits for connections to finish what they were doing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The Redis version keel reports, for clients that check features by version.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// The reply to a cluster operation that did not happen (or may not have). A follower answers
/// `-MOVED SLOT HOST:PORT` with the leader's client address, as a Redis Cluster node does:
/// `SLOT` is the hash slot of `key`, the command's first key (0 for a command without keys;
/// see [`cluster::key_slot`]).
pub fn cluster_error(e: &ClusterError, key: Option<&[u8]>) -> Reply {
    Reply::err(match e {
        ClusterError::NotLeader(Some((_, node))) => {
            format!("MOVED {} {}", key.map_or(0, cluster::key_slot), node.client)
        }
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

/// Makes the next read of `args` (a command run as `spec`) linearizable (see
/// [`Backend::read_barrier`]). `stale_ok`: the connection has not asked for READWRITE, so a
/// follower started with `--stale-reads` answers from its own state instead. A `-MOVED` names
/// the slot of the command's first key.
async fn linearize(
    sh: Arc<Shared>,
    stale_ok: bool,
    spec: &cmd::Command,
    args: &[Bytes],
) -> Result<(), Reply> {
    let stale_ok = stale_ok && sh.settings.cluster.as_ref().is_some_and(|s| s.stale_reads);
    sh.backend
        .read_barrier(stale_ok)
        .await
        .map_err(|e| cluster_error(&e, cluster::first_key(spec, args).as_deref()))
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
    /// Keys read-only commands found with a live value, and found without (INFO's
    /// `keyspace_hits` and `keyspace_misses`).
    keyspace_hits: AtomicU64,
    keyspace_misses: AtomicU64,
    shutdown: watch::Sender<bool>,
    started: Instant,
    /// The audit log, if kept.
    pub audit: Option<Arc<audit::Audit>>,
    /// Clients waiting in a blocking list command, by key.
    pub blocked: blocking::Waiters,
    /// Bytes read from and written to clients.
    net_in: AtomicU64,
    net_out: AtomicU64,
    /// Every 100 ms, the last 1.6 s of (time, commands, bytes in, bytes out), for INFO's
    /// instantaneous rates (as Redis samples them).
    samples: std::sync::Mutex<VecDeque<(Instant, u64, u64, u64)>>,
    pub slowlog: crate::slowlog::SlowLog,
    /// The script cache and the running script (EVAL).
    pub scripts: crate::scripting::Scripts,
    /// The thread scripts run on, one at a time (see [`scripts::ScriptThread`]).
    script_thread: scripts::ScriptThread,
    /// The stored function libraries the scripts have loaded (see `Shared::sync_functions`).
    functions_loaded: std::sync::Mutex<Option<Bytes>>,
    /// Held by a cluster node's script from its dry run until its writes are applied.
    cluster_scripts: tokio::sync::Mutex<()>,
    /// Refused commands and failed logins (ACL LOG).
    pub acl_log: crate::acl::Log,
    monitors: Monitors,
    pubsub: PubSub,
    /// The keyspace notifications switched on (`notify-keyspace-events`).
    notify: notify::Notify,
    tracking: Tracking,
    /// Every client connected now (CLIENT LIST and KILL).
    registry: Clients,
    /// CLIENT PAUSE, and how many clients wait in it.
    pause: watch::Sender<Pause>,
    paused_clients: AtomicUsize,
    /// The settings CONFIG SET changes.
    pub live: Live,
    /// The counters as CONFIG RESETSTAT found them: INFO reports what was counted since. (The
    /// metrics endpoint's counters never go back.)
    stat_base: std::sync::Mutex<StatBase>,
}

/// See [`Shared::reset_stats`].
#[derive(Clone, Default)]
pub struct StatBase {
    pub connections_received: u64,
    pub commands_processed: u64,
    pub rejected_connections: u64,
    pub expired_keys: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub commands: Vec<CommandStat>,
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl Shared {
    pub fn new(
        backend: Backend,
        settings: Settings,
        port: u16,
        audit: Option<Arc<audit::Audit>>,
    ) -> Arc<Shared> {
        let settings_live = settings.clone();
        let sh = Arc::new(Shared {
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
            keyspace_hits: AtomicU64::new(0),
            keyspace_misses: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
            started: Instant::now(),
            audit,
            blocked: blocking::Waiters::default(),
            net_in: AtomicU64::new(0),
            net_out: AtomicU64::new(0),
            samples: Default::default(),
            slowlog: Default::default(),
            scripts: Default::default(),
            script_thread: scripts::ScriptThread::start(),
            functions_loaded: std::sync::Mutex::new(None),
            cluster_scripts: tokio::sync::Mutex::new(()),
            acl_log: Default::default(),
            registry: Clients::default(),
            monitors: Monitors::default(),
            pubsub: PubSub::default(),
            notify: notify::Notify::default(),
            tracking: Tracking::default(),
            pause: watch::channel(Pause::default()).0,
            paused_clients: AtomicUsize::new(0),
            live: Live::new(&settings_live),
            stat_base: Default::default(),
        });
        sh.load_functions();
        sh.set_notify(sh.settings.notify_keyspace_events);
        sh.receive_forwarded();
        sh
    }

    /// The engine reads come from (in a cluster, this node's replica).
    pub fn engine(&self) -> Arc<Engine> {
        self.backend.engine()
    }

    pub fn local(&self) -> Option<&Arc<Local>> {
        self.backend.local()
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.backend.cluster()
    }

    pub fn wal_health(&self) -> Health {
        self.backend.health()
    }

    pub fn engine_error(&self, e: &keel_engine::Error) -> Reply {
        self.backend.engine_error(e)
    }

    /// The counters INFO reports, as counted since start or the last CONFIG RESETSTAT.
    pub fn stats(&self) -> StatBase {
        let base = crate::lock(&self.stat_base).clone();
        let now = self.stats_since_start();
        StatBase {
            connections_received: now.connections_received - base.connections_received,
            commands_processed: now.commands_processed - base.commands_processed,
            rejected_connections: now.rejected_connections - base.rejected_connections,
            expired_keys: now.expired_keys.saturating_sub(base.expired_keys),
            keyspace_hits: now.keyspace_hits - base.keyspace_hits,
            keyspace_misses: now.keyspace_misses - base.keyspace_misses,
            commands: (now.commands.iter().enumerate())
                .map(|(i, c)| *c - base.commands.get(i).copied().unwrap_or_default())
                .collect(),
            errors: (now.errors.into_iter())
                .map(|(k, n)| {
                    let b = base.errors.get(&k).copied().unwrap_or(0);
                    (k, n - b)
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    fn stats_since_start(&self) -> StatBase {
        StatBase {
            connections_received: self.connections_received.load(Ordering::Relaxed),
            commands_processed: self.commands_processed.load(Ordering::Relaxed),
            rejected_connections: self.rejected_connections.load(Ordering::Relaxed),
            expired_keys: self.engine().expired_keys(),
            keyspace_hits: self.keyspace_hits.load(Ordering::Relaxed),
            keyspace_misses: self.keyspace_misses.load(Ordering::Relaxed),
            commands: self.metrics.command_stats(),
            errors: self.metrics.error_stats(),
        }
    }

    /// Counts keys read-only commands read: `hits` had a live value, `misses` did not.
    pub(super) fn keyspace_reads(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.keyspace_hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.keyspace_misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    /// Takes one sample of the counters INFO's instantaneous rates come from.
    fn sample(&self) {
        let mut s = crate::lock(&self.samples);
        if s.len() == 16 {
            s.pop_front();
        }
        s.push_back((
            Instant::now(),
            self.commands_processed.load(Ordering::Relaxed),
            self.net_in.load(Ordering::Relaxed),
            self.net_out.load(Ordering::Relaxed),
        ));
        drop(s);
        self.metrics.events.sample_engine(&self.engine());
        // The allocator keeps its peak from what it is asked.
        info::allocator_stats();
    }

    /// Switches keyspace notifications to the classes in `flags`.
    pub(super) fn set_notify(&self, flags: u32) {
        self.notify.set(flags, &self.engine());
        // From now on active expiry keeps the keys it removes, for `expired` events.
        self.invalidate_expired();
    }

    /// Tracking clients learn of the keys active expiry removed (within the sampler's 100 ms),
    /// and subscribers get their `expired` events.
    pub(super) fn invalidate_expired(&self) {
        let (tracking, notify) = (self.tracking.active(), self.notify.expired());
        match self.engine().take_expired(tracking || notify) {
            Some(keys) if keys.is_empty() => {}
            Some(keys) => {
                if tracking {
                    self.tracking.invalidate(&keys, 0, &self.registry);
                }
                if notify {
                    let events: Vec<notify::Event> = (keys.into_iter())
                        .map(|k| (notify::EXPIRED, "expired", k))
                        .collect();
                    notify::publish(self, &events);
                }
            }
            // More expired than were kept: tracking clients drop everything; the events of
            // the keys not kept are lost (as a slow subscriber's would be).
            None if tracking => self.tracking.invalidate_all(0, &self.registry),
            None => {}
        }
    }

    /// Commands per second, and kilobytes per second in and out, over the last samples.
    pub fn rates(&self) -> (u64, f64, f64) {
        let s = crate::lock(&self.samples);
        let (Some(a), Some(b)) = (s.front(), s.back()) else {
            return (0, 0.0, 0.0);
        };
        let secs = b.0.duration_since(a.0).as_secs_f64();
        if secs == 0.0 {
            return (0, 0.0, 0.0);
        }
        (
            ((b.1 - a.1) as f64 / secs) as u64,
            (b.2 - a.2) as f64 / secs / 1024.0,
            (b.3 - a.3) as f64 / secs / 1024.0,
        )
    }

    /// CONFIG RESETSTAT: INFO's counters start again from 0, and its latencystats.
    pub fn reset_stats(&self) {
        let now = self.stats_since_start();
        *crate::lock(&self.stat_base) = now;
        self.metrics.histograms.reset();
    }

    /// Asks the server to shut down gracefully.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
        // A connection that registers after this sees the flag before it waits.
        for c in self.registry.all() {
            c.wake();
        }
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
    let sampler = {
        let sh = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while let Some(sh) = (tick.tick().await, sh.upgrade()).1 {
                sh.sample();
                sh.resume_expiry();
                sh.invalidate_expired();
            }
        })
    };
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
    sampler.abort();
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
    /// A reply on its way, and the timer of the command it ends (see `pipeline::observe`).
    Pending(ReplyFuture, Option<Timed>),
    /// Awaited in order, but not sent (CLIENT REPLY OFF or SKIP).
    Silent(ReplyFuture),
}

/// A command whose time ends when its pending reply is ready: its timer, how it went so far,
/// and its arguments, for the slow log.
struct Timed {
    timer: CommandTimer,
    done: Done,
    args: Vec<Bytes>,
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
    /// MONITOR: send what is queued, then stream the monitor's lines (subscribed before its
    /// +OK, so that every command after it is seen) until QUIT or RESET.
    Monitor(tokio::sync::broadcast::Receiver<Arc<str>>),
}

struct Conn {
    sh: Arc<Shared>,
    /// What other connections see of this one (its id too).
    client: Arc<Client>,
    proto: u8,
    user: Option<User>,
    /// CLIENT REPLY, and whether the command running now is answered.
    silence: Silence,
    quiet: bool,
    /// Commands queued since MULTI.
    multi: Option<Vec<Part>>,
    /// A command queued since MULTI was rejected: EXEC must abort.
    multi_dirty: bool,
    /// WATCHed keys with their versions when watched.
    watched: Vec<Guard>,
    /// Whether reads may be answered from a follower's own state, where the node allows it
    /// (`--stale-reads`): READWRITE clears it, READONLY and RESET set it again.
    stale_reads: bool,
    out: BytesMut,
    queue: VecDeque<Slot>,
    /// How the command being executed ended so far (INFO commandstats).
    done: Done,
    /// Pub/Sub subscriptions, once the connection has subscribed.
    subs: Option<Subs>,
    /// CLIENT TRACKING, and CLIENT CACHING's choice for the command running and the next.
    tracking: Option<Tracked>,
    caching: Option<bool>,
    caching_next: Option<bool>,
    /// With tracking on anywhere: the keys the queued MULTI commands change, and the queued
    /// reads (their arguments), for invalidations and tracking at EXEC.
    multi_touched: Vec<Bytes>,
    multi_flush: bool,
    multi_reads: Vec<Vec<Bytes>>,
    /// Each queued command's arguments while notifications are on, for EXEC's events.
    multi_args: Vec<Option<Vec<Bytes>>>,
    /// What the next submitted write tells tracking clients.
    touched: Touched,
    /// Out-of-band replies for this connection ([`Client::push`]).
    pushes: tokio::sync::mpsc::UnboundedReceiver<(Pushed, usize)>,
}

async fn connection(mut stream: TcpStream, sh: Arc<Shared>) -> std::io::Result<()> {
    let max = Live::get(&sh.live.maxclients).max(1) as usize;
    if sh.clients.fetch_add(1, Ordering::Relaxed) >= max {
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
    let laddr = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let id = sh.next_client_id.fetch_add(1, Ordering::Relaxed);
    let client = Client::new(id, addr.into(), laddr, fd);
    match &sh.settings.tls {
        None => session(&mut stream, client, sh.clone()).await,
        Some(tls) => {
            // The handshake holds the client slot taken above, and has a deadline.
            let mut stream = tls.accept(stream).await?;
            let r = session(&mut stream, client, sh.clone()).await;
            crate::tls::close(&mut stream).await;
            r
        }
    }
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
