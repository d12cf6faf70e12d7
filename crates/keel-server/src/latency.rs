//! LATENCY and INFO latencystats: what took long, as Redis 7.2 reports it.
//!
//! Two records, both fed by the command timer ([`crate::metrics::CommandTimer`]), so a command's
//! time is the one INFO commandstats and SLOWLOG use: from parsing to its reply being ready,
//! for a write once it is durable, a blocking command's wait left out.
//!
//! - **Events** ([`Events`]): with `latency-monitor-threshold` above 0, every command that took
//!   at least that many ms is a sample of `command`, or of `fast-command` for one Redis flags
//!   `fast`. keel adds the events that matter for durability: `wal-fsync` (one data sync of the
//!   WAL that took that long) and `checkpoint` (one checkpoint, start to manifest). Per event:
//!   the latest sample, the largest since start or LATENCY RESET, and the last
//!   [`HISTORY_LEN`] samples, one a second at most (the largest of that second), as Redis keeps
//!   them. The set of event names is fixed, so the store has a bound (P11).
//! - **Per-command histograms** ([`Histograms`]): every command and subcommand that runs gets a
//!   histogram ([`Histogram`]), allocated the first time it runs, for INFO latencystats'
//!   percentiles and LATENCY HISTOGRAM.
//!
//! The hot path is one relaxed atomic add into the command's histogram and a relaxed load of
//! the threshold; the event store's lock is taken only for a command at or over the threshold.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_engine::Engine;

use crate::cmd::{self, introspect::Info};
use crate::resp::Reply;

/// Samples kept per event (Redis's `LATENCY_TS_LEN`).
pub const HISTORY_LEN: usize = 160;

/// A command without Redis's `fast` flag that took at least the threshold.
pub const COMMAND: &str = "command";
/// A command Redis flags `fast` (O(1) or O(log N)) that took at least the threshold.
pub const FAST_COMMAND: &str = "fast-command";
/// One data sync (`fdatasync`) of the WAL that took at least the threshold: every write
/// waiting for it waited that long too.
pub const WAL_FSYNC: &str = "wal-fsync";
/// One checkpoint (snapshot written, manifest replaced, log pruned) that took at least the
/// threshold. It runs in the background, but shares the disk with the log.
pub const CHECKPOINT: &str = "checkpoint";

// ---------------------------------------------------------------------------------------------
// Histograms
// ---------------------------------------------------------------------------------------------

/// Sub-buckets per power of two: a value is known to within 1/16 of itself (6.25%).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values are in ns, up to 2^40 ns (about 18 minutes); longer ones count as the longest.
const TOP_BITS: u32 = 40;
/// Buckets per histogram: `SUB` exact ones below `SUB` ns, then `SUB` per power of two.
const BUCKETS: usize = SUB + (TOP_BITS - SUB_BITS) as usize * SUB;
const _: () = assert!(BUCKETS == 592);
/// LATENCY HISTOGRAM's first bucket bound, in ns (Redis's: 1024 ns, then doubling).
const CDF_FIRST_NS: u64 = 1024;
const _: () = assert!(CDF_FIRST_NS.is_power_of_two() && CDF_FIRST_NS >= SUB as u64);

/// Durations of one command, in log-linear buckets of atomic counters: recording is one
/// relaxed atomic add, so any number of connections record at once without a lock. Its bucket
/// bounds are powers of two and 1/16 steps between them; 592 counters, 4.6 KiB.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

/// The bucket of a value in ns.
fn bucket(ns: u64) -> usize {
    let v = ns.min((1 << TOP_BITS) - 1);
    if v < SUB as u64 {
        return v as usize;
    }
    // v is in [2^k, 2^(k+1)) with k >= SUB_BITS: its top SUB_BITS + 1 bits pick the bucket.
    let k = u64::BITS - 1 - v.leading_zeros();
    let shift = k - SUB_BITS;
    let sub = (v >> shift) as usize - SUB;
    SUB + shift as usize * SUB + sub
}

/// The values bucket `i` holds, in ns: `lo..hi`.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64 + 1);
    }
    let shift = ((i - SUB) / SUB) as u32;
    let lo = ((SUB + (i - SUB) % SUB) as u64) << shift;
    (lo, lo + (1 << shift))
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Values recorded.
    pub fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn clear(&self) {
        self.buckets
            .iter()
            .for_each(|b| b.store(0, Ordering::Relaxed));
    }

    /// The value at `percentile` (0 to 100), in ns, as HdrHistogram (and so Redis) gives it:
    /// the highest value of the bucket that holds the `round(p% of total)`-th value (at least
    /// the first). So at most 1/16 above the true value. `None` when empty.
    pub fn percentile_ns(&self, percentile: f64) -> Option<u64> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((percentile.clamp(0.0, 100.0) / 100.0 * total as f64).round() as u64).max(1);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(bounds(i).1 - 1);
            }
        }
        Some(bounds(BUCKETS - 1).1 - 1)
    }

    /// LATENCY HISTOGRAM's buckets: (bound in µs, values below 1024·2^k ns), for each
    /// doubling bound at which the count grew, until every value is counted.
    pub fn cdf_usec(&self) -> Vec<(u64, u64)> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        let mut out = Vec::new();
        let (mut bound, mut seen, mut i, mut last) = (CDF_FIRST_NS, 0u64, 0usize, 0u64);
        while seen < total {
            // Bucket bounds fall on every power of two, so "below the bound" is exact.
            while i < BUCKETS && bounds(i).1 <= bound {
                seen += counts[i];
                i += 1;
            }
            if i == BUCKETS {
                seen = total;
            }
            if seen > last {
                out.push((bound / 1000, seen));
                last = seen;
            }
            bound *= 2;
        }
        out
    }
}

/// Where each command's and subcommand's histogram is: Redis keeps one per subcommand
/// (`config|get`), and a container command (CONFIG) has none of its own.
struct Slots {
    /// Per entry of [`cmd::COMMANDS`]: its slot; its subcommands' follow it, in doc order.
    base: Vec<usize>,
    /// Per slot: its name as Redis writes it (`get`, `config|get`), and whether it is `fast`.
    names: Vec<String>,
    fast: Vec<bool>,
}

static SLOTS: LazyLock<Slots> = LazyLock::new(|| {
    let mut s = Slots {
        base: Vec::new(),
        names: Vec::new(),
        fast: Vec::new(),
    };
    for c in cmd::COMMANDS.iter() {
        s.base.push(s.names.len());
        let info = Info::of(c);
        s.names.push(info.name.clone());
        s.fast.push(info.has_flag("fast"));
        for sub in &info.subcommands {
            s.names.push(sub.name.clone());
            s.fast.push(sub.has_flag("fast"));
        }
    }
    s
});

/// The histogram slot of a command (`index` in [`cmd::COMMANDS`]) run with `args`: its
/// subcommand's, for a container; `None` for a container's unknown subcommand.
pub fn slot(index: usize, args: &[Bytes]) -> Option<usize> {
    let c = cmd::COMMANDS.get(index)?;
    let base = SLOTS.base[index];
    let subs = c.doc.subcommands;
    if subs.is_empty() {
        return Some(base);
    }
    let sub = args.get(1)?;
    let j = subs
        .iter()
        .position(|d| d.name.as_bytes().eq_ignore_ascii_case(sub))?;
    Some(base + 1 + j)
}

/// Whether a command's latency event is `fast-command`: its subcommand's flag if it has one
/// (`slot`), else its own.
fn is_fast(index: usize, slot: Option<usize>) -> bool {
    slot.or_else(|| SLOTS.base.get(index).copied())
        .is_some_and(|s| SLOTS.fast[s])
}

/// One histogram per slot, allocated the first time its command runs.
pub struct Histograms {
    slots: Box<[OnceLock<Box<Histogram>>]>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            slots: (0..SLOTS.names.len()).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl Histograms {
    pub fn record(&self, slot: usize, d: Duration) {
        if let Some(h) = self.slots.get(slot) {
            h.get_or_init(Default::default).record(d);
        }
    }

    /// Every slot that has recorded a value since start or the last reset: (name, histogram),
    /// in registry order.
    pub fn used(&self) -> impl Iterator<Item = (&str, &Histogram)> {
        self.slots.iter().enumerate().filter_map(|(i, h)| {
            let h = h.get().filter(|h| h.total() > 0)?;
            Some((SLOTS.names[i].as_str(), &**h))
        })
    }

    /// CONFIG RESETSTAT. Nothing else reads these (the metrics endpoint has its own
    /// histograms, which never go back), so they are simply zeroed; a command finishing
    /// meanwhile may be counted or not.
    pub fn reset(&self) {
        self.slots
            .iter()
            .filter_map(|h| h.get())
            .for_each(|h| h.clear());
    }

    /// The slots a LATENCY HISTOGRAM argument names: a command, a subcommand
    /// (`client|id`), or a container (CLIENT: each of its subcommands). None if unknown.
    fn named(&self, name: &[u8]) -> Vec<usize> {
        let name = String::from_utf8_lossy(name).to_lowercase();
        let (top, sub) = match name.split_once('|') {
            Some((t, s)) => (t, Some(s)),
            None => (name.as_str(), None),
        };
        let Some(index) = cmd::find(top.as_bytes()) else {
            return Vec::new();
        };
        let c = cmd::COMMANDS[index];
        let base = SLOTS.base[index];
        match sub {
            Some(s) => c
                .doc
                .subcommands
                .iter()
                .position(|d| d.name == s)
                .map(|j| vec![base + 1 + j])
                .unwrap_or_default(),
            None if c.doc.subcommands.is_empty() => vec![base],
            None => (0..c.doc.subcommands.len()).map(|j| base + 1 + j).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// One sample: when (Unix seconds) and how long (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at_secs: u64,
    pub ms: u64,
}

/// One event's record.
#[derive(Debug)]
struct Series {
    /// Oldest first, at most [`HISTORY_LEN`], at most one per second.
    history: VecDeque<Sample>,
    /// The largest since the series began (or was reset).
    max_ms: u64,
}

impl Series {
    fn add(&mut self, s: Sample) {
        self.max_ms = self.max_ms.max(s.ms);
        if let Some(last) = self.history.back_mut() {
            if last.at_secs == s.at_secs {
                last.ms = last.ms.max(s.ms);
                return;
            }
        }
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(s);
    }

    fn latest(&self) -> Sample {
        *self.history.back().expect("a series has a sample")
    }
}

/// The latency monitor's events, and its threshold.
pub struct Events {
    /// `latency-monitor-threshold`, in ms; 0 (or less): nothing is recorded.
    pub threshold_ms: AtomicI64,
    series: Mutex<BTreeMap<&'static str, Series>>,
    /// `completed_ms` of the last checkpoint looked at (`u64::MAX`: none looked at yet).
    checkpoint_seen_ms: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            threshold_ms: AtomicI64::new(0),
            series: Mutex::default(),
            checkpoint_seen_ms: AtomicU64::new(u64::MAX),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Events {
    pub fn threshold_ms(&self) -> i64 {
        self.threshold_ms.load(Ordering::Relaxed)
    }

    /// Records `took` as a sample of `event` now, if monitoring is on and it reached the
    /// threshold.
    pub fn observe(&self, event: &'static str, took: Duration) {
        self.observe_at(event, took, now_secs());
    }

    fn observe_at(&self, event: &'static str, took: Duration, at_secs: u64) {
        let min = self.threshold_ms();
        let ms = took.as_millis() as u64;
        if min > 0 && ms >= min as u64 {
            self.add(event, Sample { at_secs, ms });
        }
    }

    fn add(&self, event: &'static str, s: Sample) {
        let mut series = crate::lock(&self.series);
        series
            .entry(event)
            .or_insert_with(|| Series {
                history: VecDeque::with_capacity(HISTORY_LEN),
                max_ms: 0,
            })
            .add(s);
    }

    /// A command finished: `index` in [`cmd::COMMANDS`], `slot` its histogram's.
    pub fn command(&self, index: usize, slot: Option<usize>, took: Duration) {
        let min = self.threshold_ms();
        if min > 0 && took.as_millis() >= min as u128 {
            let event = if is_fast(index, slot) {
                FAST_COMMAND
            } else {
                COMMAND
            };
            self.observe(event, took);
        }
    }

    /// Looks at what the engine did since the last look (the server calls this every 100 ms):
    /// its slowest WAL sync (the WAL keeps the slowest for us, one `fetch_max` per sync) and
    /// the last checkpoint, if a new one completed.
    pub fn sample_engine(&self, e: &Engine) {
        // Taken also while monitoring is off, so that turning it on does not report old syncs.
        let sync = e.take_slowest_wal_sync();
        self.observe(WAL_FSYNC, sync);
        if let (Some(c), _) = e.last_checkpoint() {
            let seen = self
                .checkpoint_seen_ms
                .swap(c.completed_ms, Ordering::Relaxed);
            if seen != u64::MAX && seen != c.completed_ms {
                self.observe_at(CHECKPOINT, c.duration, c.completed_ms / 1000);
            }
        } else {
            self.checkpoint_seen_ms.store(0, Ordering::Relaxed);
        }
    }

    /// LATENCY RESET: forgets the named events (all, if none named); how many there were.
    pub fn reset(&self, names: &[Bytes]) -> usize {
        let mut series = crate::lock(&self.series);
        if names.is_empty() {
            let n = series.len();
            series.clear();
            return n;
        }
        let mut n = 0;
        for name in names {
            let key = series
                .keys()
                .copied()
                .find(|k| k.as_bytes().eq_ignore_ascii_case(name));
            if let Some(k) = key {
                series.remove(k);
                n += 1;
            }
        }
        n
    }

    /// Every event: (name, latest sample, largest).
    pub fn latest(&self) -> Vec<(&'static str, Sample, u64)> {
        let series = crate::lock(&self.series);
        series
            .iter()
            .map(|(k, s)| (*k, s.latest(), s.max_ms))
            .collect()
    }

    /// An event's samples, oldest first (empty for an event with none).
    pub fn history(&self, name: &[u8]) -> (Vec<Sample>, u64) {
        let series = crate::lock(&self.series);
        series
            .iter()
            .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, s)| (s.history.iter().copied().collect(), s.max_ms))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// LATENCY
// ---------------------------------------------------------------------------------------------

/// `LATENCY LATEST | HISTORY | RESET | DOCTOR | GRAPH | HISTOGRAM` (HELP is the registry's).
pub fn command(events: &Events, histograms: &Histograms, args: &[Bytes]) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_lowercase();
    match (sub.as_str(), args.len()) {
        ("latest", 2) => Reply::Array(
            events
                .latest()
                .into_iter()
                .map(|(name, s, max)| {
                    Reply::Array(vec![
                        Reply::bulk(name),
                        Reply::Int(s.at_secs as i64),
                        Reply::Int(s.ms as i64),
                        Reply::Int(max as i64),
                    ])
                })
                .collect(),
        ),
        ("history", 3) => Reply::Array(
            events
                .history(&args[2])
                .0
                .into_iter()
                .map(|s| Reply::Array(vec![Reply::Int(s.at_secs as i64), Reply::Int(s.ms as i64)]))
                .collect(),
        ),
        ("reset", _) => Reply::Int(events.reset(&args[2..]) as i64),
        ("doctor", 2) => Reply::Verbatim(doctor(events, now_secs())),
        ("graph", 3) => match graph(events, &args[2], now_secs()) {
            Some(g) => Reply::Verbatim(g),
            None => Reply::err(format!(
                "ERR No samples available for event '{}'",
                String::from_utf8_lossy(&args[2])
            )),
        },
        ("histogram", _) => histogram_reply(histograms, &args[2..]),
        ("latest" | "history" | "doctor" | "graph" | "help", _) => {
            cmd::wrong_args(&format!("latency|{sub}"))
        }
        _ => Reply::err(format!(
            "ERR unknown subcommand '{}'. Try LATENCY HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// LATENCY HISTOGRAM [command ...]: per command, its calls and the cumulative counts below
/// each doubling bound in µs, as Redis 7 replies.
fn histogram_reply(histograms: &Histograms, names: &[Bytes]) -> Reply {
    let entry = |name: &str, h: &Histogram| {
        let buckets = h
            .cdf_usec()
            .into_iter()
            .map(|(us, n)| (Reply::Int(us as i64), Reply::Int(n as i64)))
            .collect();
        (
            Reply::bulk(name.to_string()),
            Reply::Map(vec![
                (Reply::bulk("calls"), Reply::Int(h.total() as i64)),
                (Reply::bulk("histogram_usec"), Reply::Map(buckets)),
            ]),
        )
    };
    if names.is_empty() {
        return Reply::Map(histograms.used().map(|(n, h)| entry(n, h)).collect());
    }
    let mut out = Vec::new();
    for name in names {
        for slot in histograms.named(name) {
            if let Some(h) = histograms.slots[slot].get().filter(|h| h.total() > 0) {
                out.push(entry(&SLOTS.names[slot], h));
            }
        }
    }
    Reply::Map(out)
}

/// What a run of samples of one event says, and what to look at.
fn advice(event: &str) -> &'static str {
    match event {
        COMMAND => {
            "Commands that are not O(1) took long: SLOWLOG GET names them. A write's time \
             runs until it is durable, so a slow disk shows here too (see wal-fsync)."
        }
        FAST_COMMAND => {
            "Commands that should take microseconds took long. Either they waited for a durable \
             sync (see wal-fsync), or the process was starved: an overloaded or swapping \
             machine, or a busy neighbour on the same cores."
        }
        WAL_FSYNC => {
            "The disk took long to make the log durable, and every write acknowledged by that \
             sync waited as long. Look at the disk: other I/O on it, its queue, a virtual disk's \
             throttling. INFO persistence has the sync percentiles (wal_fsync_p99_us_max)."
        }
        CHECKPOINT => {
            "Checkpoints took long. They run in the background, but they share the disk with \
             the log; checkpoint_log_bytes and checkpoint_interval_secs decide how often they run."
        }
        _ => "",
    }
}

/// LATENCY DOCTOR: a short report in plain words.
fn doctor(events: &Events, now_secs: u64) -> String {
    let min = events.threshold_ms();
    let mut o = String::new();
    if min <= 0 {
        o.push_str(
            "Latency monitoring is off. Turn it on with CONFIG SET latency-monitor-threshold <ms>: \
             keel then records every command, WAL sync and checkpoint that takes at least that \
             long. (INFO latencystats has per-command percentiles either way.)\n",
        );
    }
    let latest = events.latest();
    if latest.is_empty() {
        if min > 0 {
            let _ = writeln!(
                o,
                "Nothing took {min} ms or more since keel started or LATENCY RESET. All good."
            );
        }
        return o;
    }
    let _ = writeln!(
        o,
        "Events that took {} ms or more (latency-monitor-threshold):\n",
        min.max(1)
    );
    for (name, last, max) in &latest {
        let (samples, _) = events.history(name.as_bytes());
        let mean = samples.iter().map(|s| s.ms).sum::<u64>() / samples.len().max(1) as u64;
        let first = samples.first().map_or(now_secs, |s| s.at_secs);
        let _ = writeln!(
            o,
            "{name}: {n} sample{s} in the last {span} s; latest {ms} ms {ago} s ago; \
             mean {mean} ms; worst {max} ms.",
            n = samples.len(),
            s = if samples.len() == 1 { "" } else { "s" },
            span = now_secs.saturating_sub(first),
            ms = last.ms,
            ago = now_secs.saturating_sub(last.at_secs),
        );
        let _ = writeln!(o, "  {}\n", advice(name));
    }
    o.push_str("LATENCY HISTORY <event> lists the samples; LATENCY RESET forgets them.\n");
    o
}

/// LATENCY GRAPH: one line per sample, oldest first, with a bar scaled to the highest.
fn graph(events: &Events, name: &[u8], now_secs: u64) -> Option<String> {
    let (samples, max) = events.history(name);
    if samples.is_empty() {
        return None;
    }
    let name = String::from_utf8_lossy(name).to_lowercase();
    let high = samples.iter().map(|s| s.ms).max().unwrap_or(0);
    let low = samples.iter().map(|s| s.ms).min().unwrap_or(0);
    let mut o = format!("{name} - high {high} ms, low {low} ms (all time high {max} ms)\n");
    o.push_str(&"-".repeat(72));
    o.push('\n');
    const WIDTH: u64 = 50;
    for s in &samples {
        let bar = (s.ms * WIDTH).div_ceil(high.max(1)) as usize;
        let ago = now_secs.saturating_sub(s.at_secs);
        let _ = writeln!(o, "{ago:>8} s ago {:>8} ms |{}", s.ms, "#".repeat(bar));
    }
    Some(o)
}

/// INFO latencystats: each command's p50, p99 and p99.9 in µs, as Redis 7.2 writes them.
pub fn info_section(histograms: &Histograms) -> String {
    let mut o = String::from("# Latencystats\r\n");
    for (name, h) in histograms.used() {
        let _ = write!(o, "latency_percentiles_usec_{name}:");
        for (i, (label, p)) in [("50", 50.0), ("99", 99.0), ("99.9", 99.9)]
            .iter()
            .enumerate()
        {
            let us = h.percentile_ns(*p).unwrap_or(0) as f64 / 1000.0;
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(o, "{sep}p{label}={us:.3}");
        }
        o.push_str("\r\n");
    }
    o.push_str("\r\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_once_and_in_order() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds(i);
            assert_eq!(
                lo,
                next,
                "bucket {i} starts where {} ended",
                i.wrapping_sub(1)
            );
            assert!(hi > lo);
            // Within 1/16 of the value, above the exact range.
            assert!(
                lo < SUB as u64 || (hi - lo) * 16 <= lo,
                "bucket {i}: {lo}..{hi}"
            );
            assert_eq!(bucket(lo), i);
            assert_eq!(bucket(hi - 1), i);
            next = hi;
        }
        assert_eq!(next, 1 << TOP_BITS);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_a_sixteenth_and_never_below() {
        let h = Histogram::default();
        assert_eq!(h.percentile_ns(50.0), None);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        for (p, exact) in [(50.0, 500_000u64), (99.0, 990_000), (100.0, 1_000_000)] {
            let v = h.percentile_ns(p).unwrap();
            assert!(
                v >= exact && v <= exact + exact / 16,
                "p{p}: {v} vs {exact}"
            );
        }
        assert!(h.percentile_ns(0.0).unwrap() < 1100);
        assert_eq!(h.total(), 1000);
        h.clear();
        assert_eq!(h.total(), 0);
    }

    #[test]
    fn histogram_usec_doubles_from_one_microsecond_and_is_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(500)); // below 1024 ns
        h.record(Duration::from_nanos(1500)); // below 2048
        h.record(Duration::from_nanos(1600));
        h.record(Duration::from_micros(100)); // below 131072
        assert_eq!(h.cdf_usec(), vec![(1, 1), (2, 3), (131, 4)]);
        let slow = Histogram::default();
        slow.record(Duration::from_secs(1 << 20)); // past the top: the last bucket
        assert_eq!(slow.cdf_usec().last().map(|x| x.1), Some(1));
        assert_eq!(Histogram::default().cdf_usec(), vec![]);
    }

    #[test]
    fn subcommands_have_their_own_slots() {
        let b = |s: &[&str]| {
            s.iter()
                .map(|s| Bytes::from(s.to_string()))
                .collect::<Vec<_>>()
        };
        let get = cmd::find(b"get").unwrap();
        let config = cmd::find(b"config").unwrap();
        assert_eq!(SLOTS.names[slot(get, &b(&["GET", "k"])).unwrap()], "get");
        let s = slot(config, &b(&["CONFIG", "ReSetStat"])).unwrap();
        assert_eq!(SLOTS.names[s], "config|resetstat");
        assert_eq!(slot(config, &b(&["CONFIG", "nope"])), None);
        assert_eq!(slot(config, &b(&["CONFIG"])), None);
        assert!(is_fast(get, slot(get, &b(&["GET", "k"]))));
        let sort = cmd::find(b"sort").unwrap();
        assert!(!is_fast(sort, Some(SLOTS.base[sort])));
        let hs = Histograms::default();
        assert_eq!(hs.named(b"CLIENT|ID").len(), 1);
        assert!(hs.named(b"client").len() > 3);
        assert!(hs.named(b"client|nope").is_empty());
        assert!(hs.named(b"nope").is_empty());
    }

    #[test]
    fn events_need_the_threshold() {
        let e = Events::default();
        e.observe(COMMAND, Duration::from_secs(5));
        assert!(e.latest().is_empty(), "off by default");
        e.threshold_ms.store(10, Ordering::Relaxed);
        e.observe(COMMAND, Duration::from_millis(9));
        assert!(e.latest().is_empty());
        e.observe(COMMAND, Duration::from_millis(10));
        assert_eq!(e.latest()[0].2, 10);
        let get = cmd::find(b"get").unwrap();
        e.command(get, Some(SLOTS.base[get]), Duration::from_millis(30));
        let names: Vec<_> = e.latest().iter().map(|l| l.0).collect();
        assert_eq!(names, [COMMAND, FAST_COMMAND]);
    }

    #[test]
    fn history_keeps_the_last_160_one_per_second_and_the_max() {
        let e = Events::default();
        e.threshold_ms.store(1, Ordering::Relaxed);
        let at = |s: u64, ms: u64| e.observe_at(WAL_FSYNC, Duration::from_millis(ms), s);
        at(100, 50);
        at(100, 70); // same second: the larger one stays
        at(100, 60);
        let (h, max) = e.history(b"wal-fsync");
        assert_eq!(
            h,
            [Sample {
                at_secs: 100,
                ms: 70
            }]
        );
        assert_eq!(max, 70);
        for s in 101..101 + 200 {
            at(s, s % 10 + 1);
        }
        let (h, max) = e.history(b"WAL-FSYNC");
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(
            h[0].at_secs,
            301 - HISTORY_LEN as u64,
            "oldest dropped first"
        );
        assert_eq!(h.last().unwrap().at_secs, 300);
        assert!(h.windows(2).all(|w| w[0].at_secs < w[1].at_secs));
        assert_eq!(max, 70, "the max outlives the samples it came from");
        let latest = e.latest();
        assert_eq!(
            latest,
            [(
                WAL_FSYNC,
                Sample {
                    at_secs: 300,
                    ms: 1
                },
                70
            )]
        );
    }

    #[test]
    fn reset_forgets_named_events_or_all() {
        let e = Events::default();
        e.threshold_ms.store(1, Ordering::Relaxed);
        for ev in [COMMAND, FAST_COMMAND, WAL_FSYNC] {
            e.observe(ev, Duration::from_millis(5));
        }
        assert_eq!(e.reset(&[Bytes::from("nope")]), 0);
        assert_eq!(e.reset(&[Bytes::from("COMMAND"), Bytes::from("nope")]), 1);
        assert_eq!(e.latest().len(), 2);
        assert!(e.history(b"command").0.is_empty());
        assert_eq!(e.reset(&[]), 2);
        assert!(e.latest().is_empty());
        // A reset series starts its max again.
        e.observe(COMMAND, Duration::from_millis(2));
        assert_eq!(e.latest()[0].2, 2);
    }

    #[test]
    fn doctor_and_graph_speak_of_what_was_recorded() {
        let e = Events::default();
        assert!(doctor(&e, 1000).contains("off"));
        e.threshold_ms.store(5, Ordering::Relaxed);
        assert!(doctor(&e, 1000).contains("Nothing took 5 ms"));
        e.observe_at(WAL_FSYNC, Duration::from_millis(40), 990);
        e.observe_at(WAL_FSYNC, Duration::from_millis(20), 995);
        let d = doctor(&e, 1000);
        assert!(d.contains("wal-fsync: 2 samples"), "{d}");
        assert!(d.contains("worst 40 ms"), "{d}");
        let g = graph(&e, b"wal-fsync", 1000).unwrap();
        assert!(
            g.starts_with("wal-fsync - high 40 ms, low 20 ms (all time high 40 ms)\n"),
            "{g}"
        );
        assert_eq!(g.matches('\n').count(), 4);
        assert!(graph(&e, b"command", 1000).is_none());
    }

    #[test]
    fn info_section_writes_redis_percentiles() {
        let hs = Histograms::default();
        let set = cmd::find(b"set").unwrap();
        hs.record(SLOTS.base[set], Duration::from_micros(10));
        let s = info_section(&hs);
        assert!(s.starts_with("# Latencystats\r\n"));
        let line = s.lines().nth(1).unwrap();
        assert!(
            line.starts_with("latency_percentiles_usec_set:p50=10."),
            "{line}"
        );
        assert!(line.contains(",p99=") && line.contains(",p99.9="), "{line}");
        hs.reset();
        assert_eq!(info_section(&hs), "# Latencystats\r\n\r\n");
    }
}
