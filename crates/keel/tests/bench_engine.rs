//! `keel bench engine` runs end to end with tiny parameters. No timing is asserted.

use std::path::Path;
use std::process::{Command, Output};

/// `keel bench engine --dir DIR ARGS...`.
fn bench_engine(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "engine", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run keel")
}

#[test]
fn bench_engine_prints_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench_engine(
        dir.path(),
        &["--seconds", "0.2", "--keys", "2000", "--writers", "1,2"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for heading in [
        "# keel bench engine",
        "Machine: ",
        "## Durable puts",
        "| writers | puts/s |",
        "## Load",
        "## Gets",
        "| threads | engine.get keys/s |",
        "## Checkpoint",
        "| keys | snapshot bytes |",
        "## Recovery",
        "| log only (no checkpoint) |",
        "| snapshot + empty log |",
    ] {
        assert!(
            stdout.contains(heading),
            "missing {heading:?} in:\n{stdout}"
        );
    }
    // One row per writer count.
    assert!(
        stdout.contains("\n| 1 | ") && stdout.contains("\n| 2 | "),
        "{stdout}"
    );
    // The scratch directory is removed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// With --rounds, each round prints its row, and the target line takes the median of the
/// rounds' ratios at 64 writers, listing them all.
#[test]
fn bench_engine_rounds_give_a_row_each_and_a_median() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench_engine(
        dir.path(),
        &[
            "--seconds",
            "0.1",
            "--keys",
            "0",
            "--writers",
            "64",
            "--rounds",
            "3",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("\n| 64 | ").count(), 3, "{stdout}");
    let target = (stdout.lines())
        .find(|l| l.starts_with("Target (issue #4)"))
        .unwrap_or_else(|| panic!("no target line in:\n{stdout}"));
    let all = target
        .split_once("the median of 3 rounds (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .unwrap_or_else(|| panic!("no rounds in {target:?}"))
        .0;
    let mut ratios: Vec<u32> = (all.split(", "))
        .map(|r| r.trim_end_matches('%').parse().expect("a percentage"))
        .collect();
    assert!(ratios.is_sorted(), "{target}");
    let median = ratios.remove(1);
    assert!(target.contains(&format!("= **{median}%**")), "{target}");
    // Out of range.
    let out = bench_engine(dir.path(), &["--rounds", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds"));
}
