//! The Markdown report and the SVG plots of a comparison run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::compare::{PeerResult, Point, Run};
use crate::peers::{self, Peer};

pub use keel_measure::machine;

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The current UTC date and time, from `date -u` (no time crate for one line).
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "?".into(), |s| s.trim().to_string())
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}×", x / b),
        _ => "–".into(),
    }
}

fn find(run: &Run, peer: Peer) -> Option<&PeerResult> {
    run.results.iter().find(|r| r.peer == peer)
}

/// A header cell: the store's name and its durability setting.
fn header(peer: Peer) -> String {
    format!("{}<br><sub>{}</sub>", peer, peers_durability_md(peer))
}

fn peers_durability_md(peer: Peer) -> String {
    peer.durability().replace('|', "\\|")
}

fn error_cell(e: &str) -> String {
    let e = e.replace('|', "\\|");
    if e.chars().count() > 60 {
        format!("{}…", e.chars().take(60).collect::<String>())
    } else {
        e
    }
}

/// A table with a row per writer count and a column per store. `value` gives the figure of a
/// point; the cell also shows it as a ratio to keel-engine and keel-wal at the same count.
fn writer_table(
    out: &mut String,
    run: &Run,
    writers: &[usize],
    point: impl Fn(&PeerResult, usize) -> Result<&Point, String>,
    value: impl Fn(&Point) -> f64,
) {
    let _ = write!(out, "| writers |");
    for r in &run.results {
        let _ = write!(out, " {} |", header(r.peer));
    }
    let _ = write!(out, "\n|---:|");
    for _ in &run.results {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for &w in writers {
        let base = |p: Peer| find(run, p).and_then(|r| point(r, w).ok()).map(&value);
        let (engine, wal) = (base(Peer::KeelEngine), base(Peer::KeelWal));
        let _ = write!(out, "| {w} |");
        for r in &run.results {
            match point(r, w) {
                Ok(p) => {
                    let v = value(p);
                    let _ = write!(
                        out,
                        " {} ({}, {}) |",
                        thousands(v),
                        ratio(v, engine),
                        ratio(v, wal)
                    );
                }
                Err(e) => {
                    let _ = write!(out, " {} |", error_cell(&e));
                }
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

fn put_point(r: &PeerResult, w: usize) -> Result<&Point, String> {
    r.puts
        .iter()
        .find(|(x, _)| *x == w)
        .map_or(Err("not run".into()), |(_, p)| {
            p.as_ref().map_err(Clone::clone)
        })
}

fn batch_point(r: &PeerResult, w: usize) -> Result<&Point, String> {
    r.batches
        .iter()
        .find(|(x, _)| *x == w)
        .map_or(Err("not run".into()), |(_, p)| {
            p.as_ref().map_err(Clone::clone)
        })
}

/// The best external peer at `w` writers by throughput: (peer, ops/s).
fn best_peer(run: &Run, w: usize) -> Option<(Peer, f64)> {
    run.results
        .iter()
        .filter(|r| r.peer.is_external())
        .filter_map(|r| r.put_at(w).map(|p| (r.peer, p.ops_per_s)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn targets(out: &mut String, run: &Run) {
    let Some(engine) = find(run, Peer::KeelEngine) else {
        return;
    };
    let _ = writeln!(out, "| target (issue #8) | result | met? |\n|---|---|---|");
    if !run
        .results
        .iter()
        .any(|r| r.peer.is_external() && r.put_at(1).is_some())
    {
        let _ = writeln!(out, "| all | no peer was measured in this run | – |");
    }
    if let (Some(k), Some((bp, b))) = (engine.put_at(64), best_peer(run, 64)) {
        let r = k.ops_per_s / b;
        let _ = writeln!(
            out,
            "| keel-engine durable puts ≥ 1.5× the best peer at 64 writers | keel-engine {} puts/s vs {bp} {} = {:.2}× | {} |",
            thousands(k.ops_per_s),
            thousands(b),
            r,
            if r >= 1.5 { "yes" } else { "**no**" }
        );
    }
    let mut behind = Vec::new();
    let mut checked = 0;
    for &w in run.args.writers.iter().filter(|&&w| w >= 4) {
        let (Some(k), Some((bp, b))) = (engine.put_at(w), best_peer(run, w)) else {
            continue;
        };
        checked += 1;
        if k.ops_per_s <= b {
            behind.push(format!(
                "{w} writers: {} vs {bp} {} ({:.2}×)",
                thousands(k.ops_per_s),
                thousands(b),
                k.ops_per_s / b
            ));
        }
    }
    if checked > 0 {
        let closest = run
            .args
            .writers
            .iter()
            .filter(|&&w| w >= 4)
            .filter_map(|&w| {
                let k = engine.put_at(w)?;
                let (bp, b) = best_peer(run, w)?;
                Some((w, bp, k.ops_per_s / b))
            })
            .min_by(|a, b| a.2.total_cmp(&b.2));
        let detail = if behind.is_empty() {
            closest.map_or(String::new(), |(w, bp, r)| {
                format!("ahead everywhere; closest: {r:.2}× {bp} at {w} writers")
            })
        } else {
            format!("behind at {}", behind.join("; "))
        };
        let _ = writeln!(
            out,
            "| keel-engine ahead of every peer at every writer count ≥ 4 | {detail} | {} |",
            if behind.is_empty() { "yes" } else { "**no**" }
        );
    }
    let best_p50 = run
        .results
        .iter()
        .filter(|r| r.peer.is_external())
        .filter_map(|r| r.put_at(1).map(|p| (r.peer, p.h.value_at_quantile(0.5))))
        .min_by_key(|x| x.1);
    if let (Some(k), Some((bp, b))) = (engine.put_at(1), best_p50) {
        let kp = k.h.value_at_quantile(0.5);
        let _ = writeln!(
            out,
            "| single-writer p50 no worse than the best peer's | keel-engine {kp} µs vs {bp} {b} µs ({:.2}×) | {} |",
            kp as f64 / b.max(1) as f64,
            if kp <= b { "yes" } else { "**no**" }
        );
    }
    out.push('\n');
}

/// The whole report, in Markdown. `svg_prefix` is how the report links to the plots.
pub fn markdown(run: &Run, svg_prefix: &str, plots: &[(String, String)]) -> String {
    let a = &run.args;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Run {} · {}\n\nLoad average (1/5/15 min) before: {} · after: {}\n",
        run.started, run.machine, run.load_before, run.load_after
    );
    let _ = writeln!(out, "```sh\n{}\n```\n", run.command);
    let _ = writeln!(
        out,
        "Directory {} · {} s per point · keys {} B in pseudo-random order, values {} B incompressible · every writer waits for its own put to be durable before its next.\n",
        a.dir.display(),
        a.seconds,
        peers::KEY_BYTES,
        peers::VALUE_BYTES
    );

    let _ = writeln!(out, "### The stores\n");
    let _ = writeln!(
        out,
        "The honesty check runs before any timing: a child process makes one durable put and prints an acknowledgement; the parent kills it with SIGKILL as soon as it reads it, reopens the store and looks for the put. It proves a store does not acknowledge before the write reaches the operating system. It cannot catch a skipped or lying fsync: a process crash keeps the page cache.\n"
    );
    let _ = writeln!(
        out,
        "| store | durability | configuration | honesty check |\n|---|---|---|---|"
    );
    for r in &run.results {
        let h = match &r.honesty {
            Ok(()) => "passed".to_string(),
            Err(e) if r.peer.available().is_err() => error_cell(e),
            Err(e) => format!("**FAILED**: {}", e.replace('|', "\\|")),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.peer,
            peers_durability_md(r.peer),
            r.peer.configuration().replace('|', "\\|"),
            h
        );
    }
    out.push('\n');

    let _ = writeln!(out, "### Against the targets\n");
    targets(&mut out, run);

    let _ = writeln!(
        out,
        "### Durable puts per second\n\nEach cell: puts/s (× keel-engine, × keel-wal) at the same writer count. Higher is better.\n"
    );
    writer_table(&mut out, run, &a.writers, put_point, |p| p.ops_per_s);
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
        let _ = writeln!(
            out,
            "### Put latency {name}, µs\n\nEach cell: µs (× keel-engine, × keel-wal). Lower is better.\n"
        );
        writer_table(&mut out, run, &a.writers, put_point, |p| {
            p.h.value_at_quantile(q) as f64
        });
    }
    for (file, caption) in plots {
        let _ = writeln!(out, "![{caption}]({svg_prefix}{file})\n");
    }

    if !a.batch_writers.is_empty() {
        let _ = writeln!(
            out,
            "### Durable batches of {} puts\n\nEach batch is one atomic commit, durable before the call returns. Puts per second (× keel-engine, × keel-wal):\n",
            a.batch
        );
        let n = a.batch as f64;
        writer_table(&mut out, run, &a.batch_writers, batch_point, |p| {
            p.ops_per_s * n
        });
        let _ = writeln!(
            out,
            "Latency of one batch, p50 µs (× keel-engine, × keel-wal):\n"
        );
        writer_table(&mut out, run, &a.batch_writers, batch_point, |p| {
            p.h.value_at_quantile(0.5) as f64
        });
        let _ = writeln!(
            out,
            "Latency of one batch, p99 µs (× keel-engine, × keel-wal):\n"
        );
        writer_table(&mut out, run, &a.batch_writers, batch_point, |p| {
            p.h.value_at_quantile(0.99) as f64
        });
    }

    if a.recovery_mib > 0 {
        let _ = writeln!(
            out,
            "### Recovery after kill -9 with {} MiB of unsnapshotted log\n\nA child process puts keys and values in batches of 1000 until the store's log holds {} MiB (nothing checkpointed, flushed or compacted: each store is configured so; the fill itself need not be durable), then makes one durable marker put, and is killed with SIGKILL. The parent drops the store's files from the page cache and times the reopen until the marker is readable. For keel-wal and okaywal, reopening includes handing every record to the application. Log bytes are what the store appended (keel: the log's own count; others: the bytes their files use, preallocated space not counted). SQLite's WAL holds whole B-tree pages, so the same log size holds far fewer puts. Time × keel-engine: lower is better.\n",
            a.recovery_mib, a.recovery_mib
        );
        let engine = find(run, Peer::KeelEngine).and_then(|r| r.recovery.as_ref().ok());
        let wal = find(run, Peer::KeelWal).and_then(|r| r.recovery.as_ref().ok());
        let _ = writeln!(
            out,
            "| store | log at the kill | puts in it | reopen s | puts recovered/s | × keel-engine | × keel-wal |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for r in &run.results {
            match &r.recovery {
                Ok(x) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} MiB | {} | {:.2} | {} | {} | {} |",
                        r.peer,
                        x.log_bytes >> 20,
                        thousands(x.puts as f64),
                        x.secs,
                        thousands(x.puts as f64 / x.secs),
                        ratio(x.secs, engine.map(|e| e.secs)),
                        ratio(x.secs, wal.map(|e| e.secs))
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "| {} | {} | | | | | |", r.peer, e.replace('|', "\\|"));
                }
            }
        }
        out.push('\n');
    }
    out
}

const COLORS: [RGBColor; 9] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(152, 223, 138),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(peer: Peer) -> RGBColor {
    let i = peers::ALL.iter().position(|&p| p == peer).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn width(peer: Peer) -> u32 {
    if matches!(peer, Peer::KeelEngine) {
        3
    } else {
        2
    }
}

/// Durable puts/s against writers, both axes logarithmic.
pub fn plot_throughput(run: &Run, path: &Path) -> Result<()> {
    let series: Vec<(Peer, Vec<(f64, f64)>)> = run
        .results
        .iter()
        .map(|r| {
            let pts = r
                .puts
                .iter()
                .filter_map(|(w, p)| {
                    p.as_ref()
                        .ok()
                        .map(|p| ((*w as f64).log2(), p.ops_per_s.max(1.0)))
                })
                .collect();
            (r.peer, pts)
        })
        .filter(|(_, pts): &(Peer, Vec<(f64, f64)>)| !pts.is_empty())
        .collect();
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1));
    let (lo, hi) = ys.fold((f64::MAX, 1.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    // x is log2(writers), labelled with the writer count: a tick at every power of two.
    let xmax = (run.args.writers.iter().copied().max().unwrap_or(1) as f64).log2();
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Durable puts/s (16 B key, 100 B value) against writers",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            -0.3f64..xmax + 0.3,
            ((lo.min(hi) / 1.5).max(1.0)..hi * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("writers (each waits for its own put)")
        .y_desc("durable puts/s")
        .x_labels(xmax as usize + 2)
        .x_label_formatter(&|x| format!("{:.0}", 2f64.powf(*x)))
        .y_label_formatter(&|y| thousands(*y))
        .draw()?;
    for (peer, pts) in &series {
        let c = color(*peer);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(width(*peer))))?
            .label(peer.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

const QUANTILES: [f64; 24] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98,
    0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 1.0,
];

/// The CDF of put latency at `writers` writers, latency on a logarithmic axis.
pub fn plot_cdf(run: &Run, writers: usize, path: &Path) -> Result<()> {
    let series: Vec<(Peer, Vec<(f64, f64)>)> = run
        .results
        .iter()
        .filter_map(|r| {
            let p = r.put_at(writers)?;
            let pts = QUANTILES
                .iter()
                .map(|&q| (p.h.value_at_quantile(q).max(1) as f64, q))
                .collect();
            Some((r.peer, pts))
        })
        .collect();
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0));
    let (lo, hi) = xs.fold((f64::MAX, 1.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Durable put latency CDF, {writers} writer{}",
                if writers == 1 { "" } else { "s" }
            ),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            ((lo.min(hi) / 1.5).max(1.0)..hi * 1.5).log_scale(),
            0f64..1.0,
        )?;
    chart
        .configure_mesh()
        .x_desc("latency, µs")
        .y_desc("fraction of puts at most this slow")
        .x_label_formatter(&|x| thousands(*x))
        .draw()?;
    for (peer, pts) in &series {
        let c = color(*peer);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(width(*peer))))?
            .label(peer.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes compare.md and the plots into `out`; returns the Markdown.
pub fn write_all(run: &Run, out: &Path) -> Result<String> {
    let mut plots = Vec::new();
    let f = "throughput.svg".to_string();
    plot_throughput(run, &out.join(&f))?;
    plots.push((f, "durable puts/s against writers".to_string()));
    let mut cdf_at: Vec<usize> = Vec::new();
    if let Some(&first) = run.args.writers.first() {
        cdf_at.push(first);
    }
    let wide = if run.args.writers.contains(&64) {
        Some(64)
    } else {
        run.args.writers.last().copied()
    };
    if let Some(w) = wide.filter(|w| !cdf_at.contains(w)) {
        cdf_at.push(w);
    }
    for w in cdf_at {
        let f = format!("latency-cdf-{w}.svg");
        plot_cdf(run, w, &out.join(&f))?;
        plots.push((
            f,
            format!(
                "put latency CDF at {w} writer{}",
                if w == 1 { "" } else { "s" }
            ),
        ));
    }
    let md = markdown(run, "", &plots);
    std::fs::write(out.join("compare.md"), &md)?;
    Ok(md)
}
