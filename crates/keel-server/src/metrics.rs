//! Prometheus metrics: counters the connections update, and a small HTTP endpoint that renders
//! them, with the engine's WAL statistics, in the text exposition format, version 0.0.4.
//!
//! The endpoint is deliberately tiny: it reads one request head (bounded in bytes and time),
//! answers `GET /metrics` and closes. Every label takes values from a fixed set (the command
//! table, plus "other"), so the output has a bound too (P11).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cmd::{self, Flags};
use crate::latency;
use crate::server::Shared;

/// Upper bounds of the command latency buckets, in µs; a `+Inf` bucket follows them.
const LATENCY_BOUNDS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000, 5_000_000,
];
const _: () = assert!(LATENCY_BOUNDS_US[0] > 0);

/// Command families, the label of the latency histogram.
const FAMILIES: [&str; 3] = ["read", "write", "other"];

/// Longest request head the endpoint reads; anything longer is refused.
const HTTP_REQUEST_BYTES_MAX: usize = 8 << 10;
/// How long one scrape may take, from accept to the last byte of the answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more connections are closed at once.
const HTTP_CONNECTIONS_MAX: usize = 16;

/// A histogram of durations over fixed bounds (not cumulative; the last bucket is `+Inf`).
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Most distinct error codes counted (Redis's bound for its errorstats); errors of further
/// codes count under `ERRORSTATS_OVERFLOW`.
const ERROR_CODES_MAX: usize = 128;

/// Counters the server keeps for the metrics endpoint and INFO.
pub struct Metrics {
    /// One counter per entry of [`cmd::COMMANDS`], then one for every other name.
    commands: Box<[AtomicU64]>,
    /// Per command, as `commands`: [µs spent, calls that failed, calls refused before they ran].
    outcomes: Box<[[AtomicU64; 3]]>,
    /// One histogram per entry of [`FAMILIES`].
    latency: [Histogram; FAMILIES.len()],
    /// Error replies by code (their first word: ERR, WRONGTYPE, …).
    errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per command and subcommand: a histogram of its durations (INFO latencystats, LATENCY
    /// HISTOGRAM).
    pub histograms: latency::Histograms,
    /// The latency monitor (LATENCY): what took at least `latency-monitor-threshold`.
    pub events: latency::Events,
}

/// How a command ended, for INFO commandstats.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Ok,
    /// It ran and replied with an error.
    Failed,
    /// It was refused before it ran (arity, permissions, NOAUTH, maintenance, …).
    Rejected,
}

/// One command's counters: calls, µs spent, failed calls, rejected calls.
#[derive(Clone, Copy, Default)]
pub struct CommandStat {
    pub calls: u64,
    pub usec: u64,
    pub failed: u64,
    pub rejected: u64,
}

impl std::ops::Sub for CommandStat {
    type Output = CommandStat;
    fn sub(self, b: CommandStat) -> CommandStat {
        CommandStat {
            calls: self.calls.saturating_sub(b.calls),
            usec: self.usec.saturating_sub(b.usec),
            failed: self.failed.saturating_sub(b.failed),
            rejected: self.rejected.saturating_sub(b.rejected),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            commands: (0..=cmd::COMMANDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            outcomes: (0..=cmd::COMMANDS.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            latency: std::array::from_fn(|_| Histogram::new()),
            errors: Default::default(),
            histograms: Default::default(),
            events: Default::default(),
        }
    }

    /// Every command's counters, as [`cmd::COMMANDS`] (then the commands keel does not serve).
    pub fn command_stats(&self) -> Vec<CommandStat> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (self.commands.iter().zip(self.outcomes.iter()))
            .map(|(calls, [usec, failed, rejected])| CommandStat {
                calls: load(calls),
                usec: load(usec),
                failed: load(failed),
                rejected: load(rejected),
            })
            .collect()
    }

    /// Counts an error reply by its code.
    pub fn error(&self, message: &str) {
        let code = message.split(' ').next().unwrap_or_default();
        let mut errors = crate::lock(&self.errors);
        if let Some(n) = errors.get_mut(code) {
            *n += 1;
        } else if errors.len() < ERROR_CODES_MAX {
            errors.insert(code.to_string(), 1);
        } else {
            *errors.entry("ERRORSTATS_OVERFLOW".into()).or_default() += 1;
        }
    }

    /// Error replies so far, by code.
    pub fn error_stats(&self) -> std::collections::BTreeMap<String, u64> {
        crate::lock(&self.errors).clone()
    }

    /// Counts a command (its index in `cmd::COMMANDS`; `None`: one keel does not serve; `args`
    /// the request, for a subcommand's name) and starts its timer; the caller finishes the
    /// timer when the reply is ready, for a write once it is durable.
    pub fn start(
        self: &Arc<Self>,
        found: Option<usize>,
        args: &[bytes::Bytes],
        started: Instant,
    ) -> CommandTimer {
        let index = found.unwrap_or(cmd::COMMANDS.len());
        self.commands[index].fetch_add(1, Ordering::Relaxed);
        CommandTimer {
            metrics: self.clone(),
            index,
            slot: found.and_then(|i| latency::slot(i, args)),
            started,
        }
    }

    /// Renders every metric in the Prometheus text format 0.0.4.
    pub fn render(&self, sh: &Shared) -> String {
        let mut o = String::with_capacity(16 << 10);
        header(
            &mut o,
            "keel_commands_total",
            "counter",
            "Commands received, by command name; names keel does not serve count as \"other\".",
        );
        for (i, n) in self.commands.iter().enumerate() {
            let name = cmd::COMMANDS.get(i).map_or("other", |s| s.name);
            let _ = writeln!(
                o,
                "keel_commands_total{{cmd=\"{name}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        header(
            &mut o,
            "keel_command_duration_seconds",
            "histogram",
            "Time from parsing a command to its reply being ready (for a write: durable), by family.",
        );
        for (family, h) in FAMILIES.iter().zip(&self.latency) {
            let counts: Vec<u64> = h
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let bounds = LATENCY_BOUNDS_US.iter().map(|&us| us as f64 / 1e6);
            histogram(
                &mut o,
                "keel_command_duration_seconds",
                &format!("family=\"{family}\","),
                bounds,
                &counts,
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            );
        }

        let e = sh.engine();
        let ws = e.wal_stats();
        header(
            &mut o,
            "keel_wal_fsyncs_total",
            "counter",
            "Data syncs (fdatasync) the WAL issued for appends.",
        );
        let _ = writeln!(o, "keel_wal_fsyncs_total {}", ws.syncs);
        header(
            &mut o,
            "keel_wal_fsync_duration_seconds",
            "histogram",
            "Latency of the WAL's data syncs; bucket bounds are powers of two microseconds.",
        );
        // Bucket i of the WAL counts syncs below 2^i µs; its last bucket also holds everything
        // slower, so it becomes the +Inf bucket here.
        let last = ws.sync_latency_buckets.len() - 1;
        let bounds = (0..last).map(|i| (1u64 << i) as f64 / 1e6);
        histogram(
            &mut o,
            "keel_wal_fsync_duration_seconds",
            "",
            bounds,
            &ws.sync_latency_buckets,
            ws.sync_nanos as f64 / 1e9,
        );
        header(
            &mut o,
            "keel_wal_records_total",
            "counter",
            "Records appended to the WAL and acknowledged.",
        );
        let _ = writeln!(o, "keel_wal_records_total {}", ws.records);
        header(
            &mut o,
            "keel_wal_bytes_written_total",
            "counter",
            "Bytes written to WAL segments.",
        );
        let _ = writeln!(o, "keel_wal_bytes_written_total {}", ws.bytes_written);
        header(
            &mut o,
            "keel_wal_queued_bytes",
            "gauge",
            "Bytes of records waiting for the WAL's I/O thread; writes wait near the queue's limit.",
        );
        let _ = writeln!(o, "keel_wal_queued_bytes {}", ws.queued_bytes);
        header(
            &mut o,
            "keel_wal_group_commit_records_mean",
            "gauge",
            "Mean group-commit batch: records per data sync since start.",
        );
        let mean = match ws.syncs {
            0 => 0.0,
            s => ws.records as f64 / s as f64,
        };
        let _ = writeln!(o, "keel_wal_group_commit_records_mean {mean}");
        header(
            &mut o,
            "keel_durable_lsn",
            "gauge",
            "Highest LSN on the durable side of a completed sync.",
        );
        let _ = writeln!(o, "keel_durable_lsn {}", e.durable_lsn());
        header(
            &mut o,
            "keel_visible_lsn",
            "gauge",
            "LSN of the last write readers can see.",
        );
        let _ = writeln!(o, "keel_visible_lsn {}", e.visible_lsn());
        header(
            &mut o,
            "keel_maintenance",
            "gauge",
            "1 while maintenance mode is on (KEEL.MAINTENANCE): writes are refused, reads go on.",
        );
        let on = crate::maintenance::current(&e).is_some();
        let _ = writeln!(o, "keel_maintenance {}", on as u8);
        if let Some(a) = &sh.audit {
            let st = a.stats();
            header(
                &mut o,
                "keel_audit_seq",
                "gauge",
                "Seq of the last audit entry synced to disk.",
            );
            let _ = writeln!(o, "keel_audit_seq {}", st.seq.load(Ordering::Relaxed));
            header(
                &mut o,
                "keel_audit_write_failures_total",
                "counter",
                "Groups of audit entries that could not be written or synced (admin commands are refused meanwhile).",
            );
            let _ = writeln!(
                o,
                "keel_audit_write_failures_total {}",
                st.write_failures.load(Ordering::Relaxed)
            );
            header(
                &mut o,
                "keel_audit_dropped_total",
                "counter",
                "Login and refusal events dropped because the audit queue was full.",
            );
            let _ = writeln!(
                o,
                "keel_audit_dropped_total {}",
                st.dropped.load(Ordering::Relaxed)
            );
        }
        let h = sh.wal_health();
        header(
            &mut o,
            "keel_wal_poisoned",
            "gauge",
            "1 while a failed write or sync has poisoned the WAL: writes are refused until it is reopened.",
        );
        let _ = writeln!(o, "keel_wal_poisoned {}", h.poisoned.is_some() as u8);
        header(
            &mut o,
            "keel_wal_reopen_attempts_total",
            "counter",
            "Attempts to reopen a poisoned WAL (recovery from disk), successful or not.",
        );
        let _ = writeln!(o, "keel_wal_reopen_attempts_total {}", h.reopen_attempts);
        header(
            &mut o,
            "keel_wal_reopens_total",
            "counter",
            "Successful reopens of a poisoned WAL: writes were taken again without a restart.",
        );
        let _ = writeln!(o, "keel_wal_reopens_total {}", h.reopens);

        if let Some(c) = sh.cluster() {
            raft_metrics(&mut o, &c.status());
        }

        let (current, total, rejected) = sh.connection_counts();
        header(
            &mut o,
            "keel_connections",
            "gauge",
            "Client connections open now.",
        );
        let _ = writeln!(o, "keel_connections {current}");
        header(
            &mut o,
            "keel_connections_total",
            "counter",
            "Client connections accepted since start, the rejected ones included.",
        );
        let _ = writeln!(o, "keel_connections_total {total}");
        header(
            &mut o,
            "keel_rejected_connections_total",
            "counter",
            "Client connections refused because max_clients were open.",
        );
        let _ = writeln!(o, "keel_rejected_connections_total {rejected}");
        o
    }
}

/// A cluster node's raft state.
fn raft_metrics(o: &mut String, st: &keel_cluster::Status) {
    let mut gauge = |name: &str, help: &str, v: u64| {
        header(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    };
    gauge("keel_raft_term", "The current raft term.", st.term);
    gauge(
        "keel_raft_leader_id",
        "The node this node knows as leader (0: none known).",
        st.leader.unwrap_or(0),
    );
    gauge(
        "keel_raft_last_log_index",
        "Index of the last entry in this node's raft log.",
        st.last_log_index.unwrap_or(0),
    );
    gauge(
        "keel_raft_applied_index",
        "Index of the last entry this node applied to its engine.",
        st.applied_index.unwrap_or(0),
    );
    gauge(
        "keel_raft_snapshot_index",
        "Index of the last entry in this node's raft snapshot.",
        st.snapshot_index.unwrap_or(0),
    );
    gauge(
        "keel_raft_voters",
        "Voting members of the cluster, as this node knows them.",
        st.members.values().filter(|(_, voter)| *voter).count() as u64,
    );
    header(
        o,
        "keel_raft_state",
        "gauge",
        "1 for this node's raft role (leader, follower, candidate, learner, shutdown).",
    );
    let _ = writeln!(o, "keel_raft_state{{state=\"{}\"}} 1", st.state);
    header(
        o,
        "keel_raft_log_fsyncs_total",
        "counter",
        "Data syncs of the raft log.",
    );
    let _ = writeln!(o, "keel_raft_log_fsyncs_total {}", st.log_syncs);
    if !st.replication.is_empty() {
        header(
            o,
            "keel_raft_replication_lag_entries",
            "gauge",
            "On the leader: entries each member's log lacks of the leader's.",
        );
        for (id, (_, lag)) in &st.replication {
            let _ = writeln!(
                o,
                "keel_raft_replication_lag_entries{{node=\"{id}\"}} {lag}"
            );
        }
    }
}

/// A command in flight; [`CommandTimer::finish`] records its latency.
pub struct CommandTimer {
    metrics: Arc<Metrics>,
    index: usize,
    /// Its histogram (see [`latency::slot`]).
    slot: Option<usize>,
    started: Instant,
}

impl CommandTimer {
    /// Leaves `d` out of the command's time (a blocking command's wait).
    pub fn excluding(mut self, d: Duration) -> CommandTimer {
        self.started += d;
        self
    }

    /// Records the command's latency, and returns it.
    pub fn finish(self, done: Done) -> Duration {
        let [usec, failed, rejected] = &self.metrics.outcomes[self.index];
        let spent = self.started.elapsed();
        usec.fetch_add(spent.as_micros() as u64, Ordering::Relaxed);
        match done {
            Done::Ok => {}
            Done::Failed => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            Done::Rejected => {
                rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let family = match cmd::COMMANDS.get(self.index).map(|s| s.flags) {
            Some(f) if f.contains(Flags::ADMIN) => 2,
            Some(f) if f.contains(Flags::WRITE) => 1,
            Some(f) if f.contains(Flags::READ) => 0,
            _ => 2,
        };
        self.metrics.latency[family].observe(spent);
        // A command refused before it ran is not a call (Redis's histograms skip it too).
        if done != Done::Rejected && self.index < cmd::COMMANDS.len() {
            if let Some(slot) = self.slot {
                self.metrics.histograms.record(slot, spent);
            }
            self.metrics.events.command(self.index, self.slot, spent);
        }
        spent
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one histogram series: `counts` are per bucket, not cumulative, and have one more
/// entry than `bounds` (the `+Inf` bucket). `labels` is empty or ends with a comma.
fn histogram(
    o: &mut String,
    name: &str,
    labels: &str,
    bounds: impl Iterator<Item = f64>,
    counts: &[u64],
    sum: f64,
) {
    let mut cumulative = 0u64;
    for (le, n) in bounds.zip(counts) {
        cumulative += n;
        let _ = writeln!(o, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    let total: u64 = counts.iter().sum();
    let _ = writeln!(o, "{name}_bucket{{{labels}le=\"+Inf\"}} {total}");
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(o, "{name}_sum{braces} {sum}");
    let _ = writeln!(o, "{name}_count{braces} {total}");
}

/// Binds the metrics endpoint and serves it in the background for the life of the runtime.
pub async fn spawn(addr: SocketAddr, sh: Arc<Shared>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!("metrics at http://{local}/metrics");
    tokio::spawn(serve(listener, sh));
    Ok(local)
}

async fn serve(listener: TcpListener, sh: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("metrics: {peer} refused, {HTTP_CONNECTIONS_MAX} scrapes in progress");
            continue;
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HTTP_TIMEOUT, answer(stream, &sh)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics: {peer}: {e}"),
                Err(_) => tracing::debug!("metrics: {peer}: timed out"),
            }
        });
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, sh: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() >= HTTP_REQUEST_BYTES_MAX {
            break false;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).unwrap_or("");
    let mut words = line.trim_end_matches('\r').split(' ');
    let (method, target, version) = (words.next(), words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, body, head_only) = if !complete {
        ("431 Request Header Fields Too Large", String::new(), false)
    } else if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || words.next().is_some() {
        ("400 Bad Request", "bad request\n".to_string(), false)
    } else if path != Some("/metrics") {
        (
            "404 Not Found",
            "not found; try /metrics\n".to_string(),
            false,
        )
    } else {
        match method {
            Some("GET") => ("200 OK", sh.metrics.render(sh), false),
            Some("HEAD") => ("200 OK", sh.metrics.render(sh), true),
            _ => ("405 Method Not Allowed", "use GET\n".to_string(), false),
        }
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        reply.push_str("Allow: GET, HEAD\r\n");
    }
    reply.push_str("\r\n");
    if !head_only {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_ends_with_inf() {
        let mut o = String::new();
        histogram(
            &mut o,
            "x",
            "f=\"a\",",
            [0.5, 1.0].into_iter(),
            &[1, 2, 3],
            4.5,
        );
        assert_eq!(
            o,
            "x_bucket{f=\"a\",le=\"0.5\"} 1\nx_bucket{f=\"a\",le=\"1\"} 3\n\
             x_bucket{f=\"a\",le=\"+Inf\"} 6\nx_sum{f=\"a\"} 4.5\nx_count{f=\"a\"} 6\n"
        );
        let mut o = String::new();
        histogram(&mut o, "y", "", [1e-6].into_iter(), &[0, 1], 0.25);
        assert_eq!(
            o,
            "y_bucket{le=\"0.000001\"} 0\ny_bucket{le=\"+Inf\"} 1\ny_sum 0.25\ny_count 1\n"
        );
    }

    #[test]
    fn commands_count_by_name_and_unknown_names_share_one_label() {
        let m = Arc::new(Metrics::new());
        let now = Instant::now();
        m.start(cmd::find(b"SET"), &[], now).finish(Done::Ok);
        m.start(cmd::find(b"set"), &[], now).finish(Done::Ok);
        m.start(cmd::find(b"no-such-command"), &[], now)
            .finish(Done::Ok);
        m.start(cmd::find(b"\xff\x00"), &[], now).finish(Done::Ok);
        let set = cmd::COMMANDS.iter().position(|s| s.name == "set").unwrap();
        assert_eq!(m.commands[set].load(Ordering::Relaxed), 2);
        assert_eq!(m.commands[cmd::COMMANDS.len()].load(Ordering::Relaxed), 2);
        let observed: u64 = m.latency[1]
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum();
        assert_eq!(observed, 2, "two writes timed");
    }

    #[test]
    fn latency_buckets_split_at_their_bounds() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(3600));
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[LATENCY_BOUNDS_US.len()], 1);
    }
}
