//! `keel-bench compare`: every store on the same disk, the same workload, in one run.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

use crate::peers::{self, Peer, Purpose};

#[derive(clap::Args, Clone, Debug)]
pub struct CompareArgs {
    /// Scratch directory on the disk under test (each store gets a fresh directory inside).
    #[arg(long, default_value = "/work/benchtmp")]
    pub dir: PathBuf,
    /// Where the Markdown report and the SVG plots go.
    #[arg(long, default_value = "docs/bench")]
    pub out: PathBuf,
    /// Seconds per timed point.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Writer counts for durable puts.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    pub writers: Vec<usize>,
    /// Writer counts for durable batches (empty: skip batches).
    // One value parsed whole (`::std::vec::Vec` keeps clap from treating it as a repeated
    // argument): clap's value_delimiter would split "" into one empty, unparsable count.
    #[arg(long, value_parser = writer_counts, default_value = "1,16")]
    pub batch_writers: ::std::vec::Vec<usize>,
    /// Puts per batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// The stores to run, in table order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "keel-engine,keel-wal,rocksdb,sqlite,sqlite-per-writer,redb,fjall,okaywal,fdatasync"
    )]
    pub peers: Vec<Peer>,
    /// MiB of unsnapshotted log to recover after a kill -9 (0 skips recovery).
    #[arg(long, default_value_t = 1024)]
    pub recovery_mib: u64,
}

/// A comma-separated list of writer counts; the empty string is the empty list.
fn writer_counts(s: &str) -> Result<Vec<usize>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .map_err(|e| format!("writer count {n:?}: {e}"))
        })
        .collect()
}

/// What the hidden child subcommand does.
#[derive(clap::Args, Clone, Debug)]
pub struct ChildArgs {
    #[arg(long)]
    pub peer: Peer,
    #[arg(long)]
    pub dir: PathBuf,
    /// `ack`: one durable put, then "ACK". `fill`: fill the log to --mib, one durable marker
    /// put, then "FILLED <puts>".
    #[arg(long)]
    pub task: String,
    #[arg(long, default_value_t = 0)]
    pub mib: u64,
}

/// The key the honesty check writes.
fn honesty_key() -> [u8; peers::KEY_BYTES] {
    *b"honesty-check-01"
}

/// The key written, durably, after the fill.
fn marker_key() -> [u8; peers::KEY_BYTES] {
    *b"recovery-marker!"
}

/// Runs in the child process; never returns normally (the parent kills it).
pub fn child(a: ChildArgs) -> Result<()> {
    let stdout = std::io::stdout();
    match a.task.as_str() {
        "ack" => {
            let s = peers::open(a.peer, &a.dir, Purpose::Bench { writers: 1 })?;
            s.put(0, &honesty_key(), &peers::value(0, 0))?;
            let mut o = stdout.lock();
            writeln!(o, "ACK")?;
            o.flush()?;
            drop(o);
            // Wait to be killed. Writing more would only help a store that had kept the put
            // in its own buffers: a later write might push it out before the kill.
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        "fill" => {
            let s = peers::open(a.peer, &a.dir, Purpose::Fill)?;
            let t = Instant::now();
            let mut shown = 0;
            let (n, logged) = peers::fill(&*s, &a.dir, a.mib << 20, |bytes| {
                if bytes >> 27 > shown {
                    shown = bytes >> 27;
                    eprintln!(
                        "    {}: {} MiB of log in {:.1} s",
                        a.peer,
                        bytes >> 20,
                        t.elapsed().as_secs_f64()
                    );
                }
            })?;
            s.sync()?;
            s.put(0, &marker_key(), &peers::value(0, 0))?;
            let mut o = stdout.lock();
            writeln!(o, "FILLED {n} {logged}")?;
            o.flush()?;
            drop(o);
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        other => bail!("unknown child task {other:?}"),
    }
}

/// Starts the child and waits for its line starting with `want`; returns the child and the line.
fn spawn_child(
    peer: Peer,
    dir: &Path,
    task: &str,
    mib: u64,
    timeout: Duration,
) -> Result<(Child, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["__child", "--peer", peer.name(), "--task", task, "--mib"])
        .arg(mib.to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning the child")?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(out).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(line)) if !line.is_empty() => Ok((child, line.trim().to_string())),
        other => {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("child ({task}) gave no acknowledgement ({other:?}); exit {status}")
        }
    }
}

/// Kills the child with SIGKILL and reaps it.
fn kill9(mut child: Child) -> Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// The honesty check: a child process puts one key durably and says so; it is killed with
/// SIGKILL right after; the key must be there on reopen. This catches a store that acknowledges
/// before the write reaches the operating system. It cannot catch a skipped fsync: a process
/// crash does not lose the page cache.
fn honesty(peer: Peer, dir: &Path) -> Result<()> {
    let d = dir.join(format!("honesty-{peer}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    let (child, line) = spawn_child(peer, &d, "ack", 0, Duration::from_secs(120))?;
    kill9(child)?;
    if line != "ACK" {
        bail!("child said {line:?}");
    }
    let s = peers::open(peer, &d, Purpose::Bench { writers: 1 })?;
    let found = s.contains(&honesty_key())?;
    drop(s);
    std::fs::remove_dir_all(&d)?;
    if !found {
        bail!("the acknowledged put was missing after kill -9 and reopen");
    }
    Ok(())
}

/// One timed point.
pub struct Point {
    pub ops_per_s: f64,
    /// Latency of one operation (a put, or a whole batch), µs.
    pub h: Histogram<u64>,
}

/// `writers` threads from a common start for `secs`; writer `w` calls `op(w, i)` for its i-th
/// operation and each call's latency is recorded.
fn timed(writers: usize, secs: f64, op: impl Fn(usize, u64) -> Result<()> + Sync) -> Result<Point> {
    let (h, ops_per_s) = keel_measure::timed_writers(writers, secs, op)?;
    Ok(Point { ops_per_s, h })
}

fn fresh(dir: &Path, name: &str) -> Result<PathBuf> {
    let d = dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn puts_point(peer: Peer, dir: &Path, writers: usize, secs: f64) -> Result<Point> {
    let d = fresh(dir, &format!("puts-{peer}-{writers}"))?;
    let s = peers::open(peer, &d, Purpose::Bench { writers })?;
    let values: Vec<Vec<u8>> = (0..writers).map(|w| peers::value(w, 0)).collect();
    let p = timed(writers, secs, |w, i| {
        s.put(w, &peers::key(w, i), &values[w])
    })?;
    drop(s);
    std::fs::remove_dir_all(&d)?;
    Ok(p)
}

fn batch_point(peer: Peer, dir: &Path, writers: usize, batch: usize, secs: f64) -> Result<Point> {
    let d = fresh(dir, &format!("batch-{peer}-{writers}"))?;
    let s = peers::open(peer, &d, Purpose::Bench { writers })?;
    let p = timed(writers, secs, |w, i| {
        let kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..batch as u64)
            .map(|j| {
                let n = i * batch as u64 + j;
                (peers::key(w, n).to_vec(), peers::value(w, n))
            })
            .collect();
        s.put_batch(w, &kvs)
    })?;
    drop(s);
    std::fs::remove_dir_all(&d)?;
    Ok(p)
}

pub struct Recovery {
    /// Bytes of log at the kill, as [`peers::Store::log_bytes`] counts them.
    pub log_bytes: u64,
    pub puts: u64,
    pub fill_secs: f64,
    /// Reopen (with the page cache dropped) until the marker is readable.
    pub secs: f64,
}

fn recovery(peer: Peer, dir: &Path, mib: u64) -> Result<Recovery> {
    let d = fresh(dir, &format!("recovery-{peer}"))?;
    let t = Instant::now();
    let (child, line) = spawn_child(peer, &d, "fill", mib, Duration::from_secs(3600))?;
    kill9(child)?;
    let fill_secs = t.elapsed().as_secs_f64();
    let (puts, log_bytes) = line
        .strip_prefix("FILLED ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(n, b)| Some((n.parse().ok()?, b.parse().ok()?)))
        .with_context(|| format!("child said {line:?}"))?;
    peers::drop_cache(&d)?;
    let t = Instant::now();
    let s = peers::open(peer, &d, Purpose::Recover)?;
    let found = s.contains(&marker_key())?;
    let secs = t.elapsed().as_secs_f64();
    if !found {
        bail!("the marker put was missing after recovery");
    }
    drop(s);
    std::fs::remove_dir_all(&d)?;
    Ok(Recovery {
        log_bytes,
        puts,
        fill_secs,
        secs,
    })
}

/// Everything measured for one store. `Err` holds the reason a figure is missing.
pub struct PeerResult {
    pub peer: Peer,
    pub honesty: Result<(), String>,
    pub puts: Vec<(usize, Result<Point, String>)>,
    pub batches: Vec<(usize, Result<Point, String>)>,
    pub recovery: Result<Recovery, String>,
}

impl PeerResult {
    pub fn put_at(&self, writers: usize) -> Option<&Point> {
        self.puts
            .iter()
            .find(|(w, _)| *w == writers)
            .and_then(|(_, p)| p.as_ref().ok())
    }
}

pub struct Run {
    pub args: CompareArgs,
    pub command: String,
    pub machine: String,
    pub started: String,
    pub load_before: String,
    pub load_after: String,
    pub results: Vec<PeerResult>,
}

fn progress(m: &str) {
    eprintln!("{m}");
}

fn short(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

pub fn compare(args: CompareArgs, command: String) -> Result<Run> {
    std::fs::create_dir_all(&args.dir)?;
    std::fs::create_dir_all(&args.out)?;
    let machine = crate::report::machine(&args.dir);
    let started = crate::report::now_utc();
    let load_before = crate::report::loadavg();
    progress(&format!("keel-bench compare · {machine}"));
    progress(&format!("command: {command}"));
    let mut results: Vec<PeerResult> = args
        .peers
        .iter()
        .map(|&peer| {
            let why = peer.available().err().map(str::to_string);
            let missing = why.clone().unwrap_or_else(|| "not run".to_string());
            PeerResult {
                peer,
                honesty: why.map_or(Ok(()), Err),
                puts: args
                    .writers
                    .iter()
                    .map(|&w| (w, Err(missing.clone())))
                    .collect(),
                batches: args
                    .batch_writers
                    .iter()
                    .map(|&w| (w, Err(missing.clone())))
                    .collect(),
                recovery: Err(missing),
            }
        })
        .collect();
    let runnable: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].peer.available().is_ok())
        .collect();
    for (i, r) in results.iter().enumerate() {
        if !runnable.contains(&i) {
            progress(&format!("{}: {}", r.peer, r.honesty.as_ref().unwrap_err()));
        }
    }

    progress("== honesty check: kill -9 right after an acknowledged put, reopen, look for it");
    for &i in &runnable {
        let peer = results[i].peer;
        let r = honesty(peer, &args.dir).map_err(|e| short(&e));
        match &r {
            Ok(()) => progress(&format!("  {peer:<18} present after kill -9: ok")),
            Err(e) => progress(&format!("  {peer:<18} FAILED: {e}")),
        }
        results[i].honesty = r;
    }

    // Writer counts outside, stores inside: a drifting load on a shared machine hits every
    // store at about the same point.
    progress(&format!(
        "== durable puts (16 B key, {} B value), {} s per point",
        peers::VALUE_BYTES,
        args.seconds
    ));
    for (wi, &writers) in args.writers.iter().enumerate() {
        for &i in &runnable {
            let peer = results[i].peer;
            let p = puts_point(peer, &args.dir, writers, args.seconds).map_err(|e| short(&e));
            match &p {
                Ok(p) => progress(&format!(
                    "  {writers:>4} writers  {peer:<18} {:>10.0} puts/s  p50 {:>6} µs  p99 {:>7} µs  p999 {:>7} µs",
                    p.ops_per_s,
                    p.h.value_at_quantile(0.5),
                    p.h.value_at_quantile(0.99),
                    p.h.value_at_quantile(0.999)
                )),
                Err(e) => progress(&format!("  {writers:>4} writers  {peer:<18} FAILED: {e}")),
            }
            results[i].puts[wi].1 = p;
        }
    }

    if !args.batch_writers.is_empty() {
        progress(&format!(
            "== durable batches of {} puts, {} s per point",
            args.batch, args.seconds
        ));
    }
    for (wi, &writers) in args.batch_writers.iter().enumerate() {
        for &i in &runnable {
            let peer = results[i].peer;
            let p = batch_point(peer, &args.dir, writers, args.batch, args.seconds)
                .map_err(|e| short(&e));
            match &p {
                Ok(p) => progress(&format!(
                    "  {writers:>4} writers  {peer:<18} {:>10.0} puts/s  batch p50 {:>6} µs  p99 {:>7} µs",
                    p.ops_per_s * args.batch as f64,
                    p.h.value_at_quantile(0.5),
                    p.h.value_at_quantile(0.99)
                )),
                Err(e) => progress(&format!("  {writers:>4} writers  {peer:<18} FAILED: {e}")),
            }
            results[i].batches[wi].1 = p;
        }
    }

    if args.recovery_mib > 0 {
        progress(&format!(
            "== recovery: fill {} MiB of log in a child, kill -9, drop the page cache, time the reopen",
            args.recovery_mib
        ));
    }
    for &i in &runnable {
        let peer = results[i].peer;
        let r = if args.recovery_mib == 0 {
            Err("not run (--recovery-mib 0)".to_string())
        } else if let Some(why) = peer.no_recovery() {
            Err(why.to_string())
        } else {
            recovery(peer, &args.dir, args.recovery_mib).map_err(|e| short(&e))
        };
        match &r {
            Ok(r) => progress(&format!(
                "  {peer:<18} {} MiB of log, {} puts (filled in {:.1} s): reopened in {:.2} s",
                r.log_bytes >> 20,
                r.puts,
                r.fill_secs,
                r.secs
            )),
            Err(e) => progress(&format!("  {peer:<18} {e}")),
        }
        results[i].recovery = r;
    }

    Ok(Run {
        args,
        command,
        machine,
        started,
        load_before,
        load_after: crate::report::loadavg(),
        results,
    })
}
