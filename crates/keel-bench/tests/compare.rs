//! A tiny comparison end to end: keel, keel-wal and the fdatasync baseline (plus RocksDB when the
//! peers are not built, to see it reported as such). It checks that the report and the plots are
//! produced and hold what they should; it asserts no time.

use std::process::Command;

#[test]
fn tiny_compare_writes_tables_and_plots() {
    let scratch = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut peers = vec!["keel-engine", "keel-wal", "fdatasync"];
    if !cfg!(feature = "peers") {
        peers.push("rocksdb");
    }
    let run = Command::new(env!("CARGO_BIN_EXE_keel-bench"))
        .args([
            "compare",
            "--seconds",
            "0.2",
            "--writers",
            "1,2",
            "--batch-writers",
            "1",
        ])
        .args([
            "--batch",
            "10",
            "--recovery-mib",
            "2",
            "--peers",
            &peers.join(","),
        ])
        .arg("--dir")
        .arg(scratch.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "keel-bench compare failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let md = std::fs::read_to_string(out.path().join("compare.md")).unwrap();
    for want in [
        "### Durable puts per second",
        "### Put latency p50, µs",
        "### Put latency p999, µs",
        "### Durable batches of 10 puts",
        "### Recovery after kill -9 with 2 MiB of unsnapshotted log",
        "| keel-engine | SyncPolicy::Always",
        "| writers | keel-engine<br>",
        "fdatasync<br><sub>pwrite + fdatasync",
        "n/a (no log)",
        "![durable puts/s against writers](throughput.svg)",
    ] {
        assert!(md.contains(want), "compare.md lacks {want:?}:\n{md}");
    }
    // Every store passed the kill -9 check.
    for p in ["keel-engine", "keel-wal", "fdatasync"] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {p} | ")))
            .unwrap_or_else(|| panic!("no row for {p}"));
        assert!(row.ends_with("| passed |"), "{row}");
    }
    if !cfg!(feature = "peers") {
        assert!(md.contains("not built: keel-bench was built without `--features peers`"));
    }
    // The put table has a row per writer count, keel-engine's own ratio is 1.00×, and the
    // throughput figures are positive numbers.
    let puts = md.split("### Durable puts per second").nth(1).unwrap();
    for w in [1, 2] {
        let row = puts
            .lines()
            .find(|l| l.starts_with(&format!("| {w} | ")))
            .unwrap_or_else(|| panic!("no row for {w} writers"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(
            cells[2].ends_with("(1.00×, 1.00×)") || cells[2].contains("(1.00×, "),
            "{row}"
        );
        let n: u64 = cells[2]
            .split(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        assert!(n > 0, "{row}");
    }
    // keel's recovery was measured, and found the marker.
    let rec = md.split("### Recovery").nth(1).unwrap();
    let row = rec
        .lines()
        .find(|l| l.starts_with("| keel-engine | "))
        .unwrap();
    assert!(row.contains(" MiB | "), "{row}");

    for svg in ["throughput.svg", "latency-cdf-1.svg", "latency-cdf-2.svg"] {
        let s = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(s.starts_with("<svg"), "{svg} is not an SVG");
        for p in ["keel-engine", "keel-wal", "fdatasync"] {
            assert!(s.contains(p), "{svg} has no series for {p}");
        }
    }
}
