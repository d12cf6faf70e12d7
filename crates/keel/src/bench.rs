//! `keel bench wal`: durable appends against the disk's own limits, measured in the same run.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use keel_measure::timed_writers;
use keel_wal::format::frame_bytes;
use keel_wal::{Options, SyncPolicy, Wal};

/// Options every benchmark takes.
#[derive(clap::Args)]
pub struct Common {
    /// Directory on the disk to measure; a scratch subdirectory is created in it and removed.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Seconds per measured point.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Writer thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    pub writers: Vec<usize>,
}

impl Common {
    /// Checks the options and creates the scratch directory, removed when dropped.
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        if self.writers.iter().any(|&w| w == 0 || w > 1000) {
            anyhow::bail!("--writers must be between 1 and 1000");
        }
        tempfile::Builder::new()
            .prefix("keel-bench-")
            .tempdir_in(&self.dir)
            .with_context(|| format!("creating a scratch directory in {}", self.dir.display()))
    }
}

/// A progress line on stderr, flushed at once.
pub(crate) fn progress(m: &str) {
    eprintln!("[bench] {m}");
    let _ = std::io::stderr().flush();
}

#[derive(clap::Args)]
pub struct WalBenchArgs {
    #[command(flatten)]
    common: Common,
    /// Record sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,4096")]
    sizes: Vec<usize>,
    /// Size of the log built for the recovery measurement, in MiB (0 skips it).
    #[arg(long, default_value_t = 1024)]
    recovery_mib: u64,
}

pub(crate) fn us(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

struct RawResult {
    ops_per_s: f64,
    h: Histogram<u64>,
}

fn fdatasync(f: &File) -> std::io::Result<()> {
    rustix::fs::fdatasync(f)?;
    Ok(())
}

/// Bytes of zeros written and synced before an overwrite loop.
const PREWRITE_BYTES: u64 = 64 << 20;

fn prewrite(path: &Path, bytes: u64) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < bytes {
        f.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    f.sync_all()?;
    Ok(f)
}

/// One writer's latencies (µs) and operation count.
/// `threads` threads, each with its own file: write `size` bytes, fdatasync, repeat. This is what
/// durability costs without group commit. `overwrite`: into pre-written files (wrapping around);
/// otherwise appending, so every sync also commits a size change.
fn raw_loop(
    dir: &Path,
    size: usize,
    overwrite: bool,
    threads: usize,
    secs: f64,
) -> Result<RawResult> {
    let prewrite_bytes = (PREWRITE_BYTES / threads as u64).max(1 << 20);
    let files = (0..threads)
        .map(|t| {
            let path = dir.join(format!("raw-{size}-{overwrite}-{t}"));
            let f = if overwrite {
                prewrite(&path, prewrite_bytes)?
            } else {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?
            };
            Ok((path, f))
        })
        .collect::<Result<Vec<_>>>()?;
    let buf = vec![0x5au8; size];
    let (h, ops_per_s) = timed_writers(threads, secs, |t, i| {
        let mut off = i * size as u64;
        if overwrite {
            off %= prewrite_bytes - prewrite_bytes % size as u64;
        }
        files[t].1.write_all_at(&buf, off)?;
        fdatasync(&files[t].1)?;
        Ok(())
    })?;
    for (path, f) in files {
        drop(f);
        std::fs::remove_file(&path)?;
    }
    Ok(RawResult { ops_per_s, h })
}

/// Sequential 1 MiB write + fdatasync into a pre-written file: MB/s.
fn seq_sync_bandwidth(dir: &Path, secs: f64) -> Result<f64> {
    let path = dir.join("raw-seq");
    let size = 256u64 << 20;
    let f = prewrite(&path, size)?;
    let buf = vec![0xa5u8; 1 << 20];
    let (mut off, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&buf, off)?;
        fdatasync(&f)?;
        bytes += buf.len() as u64;
        off = (off + buf.len() as u64) % size;
    }
    let mbps = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(mbps)
}

pub(crate) fn drop_cache(path: &Path) -> Result<()> {
    let f = File::open(path)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

pub(crate) struct Cell {
    pub(crate) ops_per_s: f64,
    pub(crate) h: Histogram<u64>,
    pub(crate) syncs_per_append: f64,
    /// User + system CPU of the whole process per append, µs (`None` without /proc).
    pub(crate) cpu_us_per_op: Option<f64>,
}

/// User + system CPU seconds this process has used so far, all its threads (also those that
/// have exited) counted: fields 14 and 15 of /proc/self/stat, in USER_HZ (100 per second on
/// Linux). `None` where there is no /proc. Resolution 10 ms: use it over seconds of work.
pub(crate) fn process_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; field 3 follows it.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU µs per operation from the process CPU seconds before and after `ops` operations.
pub(crate) fn cpu_us_per_op(before: Option<f64>, after: Option<f64>, ops: u64) -> Option<f64> {
    Some((after? - before?) * 1e6 / ops.max(1) as f64)
}

/// A `cpu_us_per_op` figure for a table cell.
pub(crate) fn cpu_cell(c: Option<f64>) -> String {
    c.map_or_else(|| "–".to_string(), |c| format!("{c:.1}"))
}

/// Raw keel-wal appends of `size`-byte records by `writers` threads, each waiting for its own.
pub(crate) fn keel_cell(dir: &Path, writers: usize, size: usize, secs: f64) -> Result<Cell> {
    let d = tempfile::tempdir_in(dir)?;
    let (wal, _) = Wal::open(d.path(), Options::default())?;
    let payloads: Vec<Vec<u8>> = (0..writers).map(|w| vec![(w % 251) as u8; size]).collect();
    let cpu0 = process_cpu_secs();
    let (h, ops_per_s) = timed_writers(writers, secs, |w, _| {
        wal.append(&payloads[w])?;
        Ok(())
    })?;
    let cpu_us_per_op = cpu_us_per_op(cpu0, process_cpu_secs(), h.len());
    let st = wal.stats();
    wal.close()?;
    Ok(Cell {
        ops_per_s,
        h,
        syncs_per_append: st.syncs as f64 / st.records.max(1) as f64,
        cpu_us_per_op,
    })
}

/// Reads every byte of the regular files among `files`, 1 MiB at a time. Returns the bytes read.
pub(crate) fn read_files(files: &[PathBuf]) -> Result<u64> {
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for f in files.iter().filter(|f| f.is_file()) {
        let file = File::open(f)?;
        let mut off = 0;
        loop {
            let n = file.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        bytes += off;
    }
    Ok(bytes)
}

fn recovery(dir: &Path, mib: u64) -> Result<(u64, f64, f64)> {
    let d = tempfile::tempdir_in(dir)?;
    let opts = Options {
        sync_policy: SyncPolicy::Never,
        ..Options::default()
    };
    {
        let (wal, _) = Wal::open(d.path(), opts.clone())?;
        let batch: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 4096]).collect();
        while wal.stats().bytes_written < mib << 20 {
            let tickets: Vec<_> = (0..8)
                .map(|_| wal.submit_batch(batch.clone()))
                .collect::<Result<_, _>>()?;
            for t in tickets {
                t.wait()?;
            }
        }
        wal.close()?;
    }
    let files: Vec<PathBuf> = std::fs::read_dir(d.path())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let cold = || -> Result<()> {
        for f in &files {
            drop_cache(f)?;
        }
        Ok(())
    };
    // Baseline: read every byte of the same files, cold, 1 MiB at a time.
    cold()?;
    let t = Instant::now();
    let bytes = read_files(&files)?;
    let read_mbps = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    cold()?;
    let t = Instant::now();
    let (wal, report) = Wal::open(d.path(), Options::default())?;
    let secs = t.elapsed().as_secs_f64();
    drop(wal);
    Ok((
        report.bytes_scanned,
        report.bytes_scanned as f64 / 1e6 / secs,
        read_mbps,
    ))
}

pub fn wal(a: WalBenchArgs) -> Result<()> {
    let scratch = a.common.scratch()?;
    let dir = scratch.path();
    let secs = a.common.seconds;
    println!("# keel bench wal\n");
    println!(
        "Directory: {} · {} s per cell · {} CPUs\n",
        a.common.dir.display(),
        secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("## The disk's own limit: one thread, write + fdatasync\n");
    println!("| pattern | record | ops/s | p50 µs | p99 µs | p999 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut best_p50 = std::collections::BTreeMap::new();
    for &size in &a.sizes {
        for overwrite in [false, true] {
            let what = if overwrite {
                "overwrite of a pre-written file"
            } else {
                "append (file grows)"
            };
            progress(&format!("raw {what}, {size} B"));
            let r = raw_loop(dir, size, overwrite, 1, secs)?;
            println!(
                "| {what} | {size} B | {:.0} | {} | {} | {} |",
                r.ops_per_s,
                us(&r.h, 0.5),
                us(&r.h, 0.99),
                us(&r.h, 0.999)
            );
            let e = best_p50.entry(size).or_insert(u64::MAX);
            *e = (*e).min(us(&r.h, 0.5));
        }
    }
    progress("sequential sync bandwidth");
    let seq_mbps = seq_sync_bandwidth(dir, secs)?;
    println!("\nSequential 1 MiB write + fdatasync: **{seq_mbps:.0} MB/s**\n");

    println!("## keel-wal durable appends (`SyncPolicy::Always`)\n");
    println!("Bound = min(writers / best raw fdatasync p50, sequential sync bandwidth / frame bytes): the most a group commit can do on this disk.\n");
    println!("Raw N threads = N threads each doing write + fdatasync on its own pre-written file: durability without group commit.\n");
    println!("| record | writers | appends/s | p50 µs | p99 µs | p999 µs | fsyncs/append | bound/s | of bound | raw N threads ops/s | raw p999 µs | keel ÷ raw |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut single = Vec::new();
    for &size in &a.sizes {
        let raw_p50_s = best_p50[&size].max(1) as f64 / 1e6;
        for &w in &a.common.writers {
            progress(&format!("keel-wal, {w} writers, {size} B"));
            let c = keel_cell(dir, w, size, secs)?;
            progress(&format!("raw, {w} threads, {size} B"));
            let raw = raw_loop(dir, size, true, w, secs)?;
            let bound = (w as f64 / raw_p50_s).min(seq_mbps * 1e6 / frame_bytes(size) as f64);
            println!(
                "| {size} B | {w} | {:.0} | {} | {} | {} | {:.3} | {:.0} | {:.0}% | {:.0} | {} | {:.2}× |",
                c.ops_per_s,
                us(&c.h, 0.5),
                us(&c.h, 0.99),
                us(&c.h, 0.999),
                c.syncs_per_append,
                bound,
                100.0 * c.ops_per_s / bound,
                raw.ops_per_s,
                us(&raw.h, 0.999),
                c.ops_per_s / raw.ops_per_s
            );
            if w == 1 {
                single.push((size, us(&c.h, 0.5), best_p50[&size]));
            }
        }
    }
    println!();
    for (size, p50, raw) in single {
        println!(
            "Single writer, {size} B: keel p50 {p50} µs vs best raw fdatasync p50 {raw} µs = **{:.2}×**",
            p50 as f64 / raw.max(1) as f64
        );
    }
    if a.recovery_mib > 0 {
        progress(&format!(
            "building a {} MiB log for recovery",
            a.recovery_mib
        ));
        let (bytes, rec_mbps, read_mbps) = recovery(dir, a.recovery_mib)?;
        println!("\n## Recovery (page cache dropped with fadvise before each pass)\n");
        println!("| log bytes | recovery MB/s | sequential read MB/s | ratio |");
        println!("|---:|---:|---:|---:|");
        println!(
            "| {bytes} | {rec_mbps:.0} | {read_mbps:.0} | {:.0}% |",
            100.0 * rec_mbps / read_mbps
        );
    }
    Ok(())
}
