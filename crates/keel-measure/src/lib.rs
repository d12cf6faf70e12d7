//! What keel's benchmark programs (`keel bench`, `keel-bench compare`) share: writer threads timed
//! from a common start with a latency histogram, and a one-line description of the machine.

use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;

/// A latency histogram in µs, from 1 µs to 120 s, 3 significant digits.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static bounds")
}

type WriterResult = (Histogram<u64>, u64);

/// Runs `threads` writers from a common start for `secs` seconds. Writer `t` calls `op(t, i)`
/// for its i-th operation, and each call's latency is recorded. Returns the merged latencies and
/// the operations per second.
pub fn timed_writers(
    threads: usize,
    secs: f64,
    op: impl Fn(usize, u64) -> Result<()> + Sync,
) -> Result<(Histogram<u64>, f64)> {
    let barrier = Barrier::new(threads + 1);
    let (results, start) = std::thread::scope(|s| -> Result<(Vec<WriterResult>, Instant)> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || -> Result<WriterResult> {
                    let mut h = hist();
                    let mut n = 0u64;
                    barrier.wait();
                    let deadline = Instant::now() + Duration::from_secs_f64(secs);
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        op(t, n)?;
                        h.saturating_record(t0.elapsed().as_micros() as u64);
                        n += 1;
                    }
                    Ok((h, n))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.join().expect("writer thread")?);
        }
        Ok((out, start))
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut h = hist();
    let mut ops = 0;
    for (x, n) in &results {
        h.add(x).expect("same bounds");
        ops += n;
    }
    Ok((h, ops as f64 / elapsed))
}

fn first_field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

/// The file system `dir` is on, from /proc/self/mountinfo: type, device, mount point, options.
fn filesystem(dir: &Path) -> String {
    let Ok(dir) = dir.canonicalize() else {
        return "unknown".into();
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "unknown".into();
    };
    let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t");
    let mut best: Option<(PathBuf, String)> = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        let mount = PathBuf::from(unescape(l[4]));
        if dir.starts_with(&mount)
            && best
                .as_ref()
                .is_none_or(|(m, _)| mount.as_os_str().len() >= m.as_os_str().len())
        {
            let desc = format!(
                "{} ({} at {}; {} / {})",
                r[0],
                r[1],
                mount.display(),
                l[5],
                r[2]
            );
            best = Some((mount, desc));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, d)| d)
}

/// One line naming the machine: CPU model, cores, memory, kernel, file system of `dir`.
pub fn machine(dir: &Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = first_field(&cpuinfo, "model name").unwrap_or("unknown CPU");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = first_field(&meminfo, "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("?".into(), |kb| format!("{:.1}", kb / (1 << 20) as f64));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_string());
    format!(
        "{cpu} · {} cores · {mem_gib} GiB · Linux {kernel} · {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        filesystem(dir)
    )
}
