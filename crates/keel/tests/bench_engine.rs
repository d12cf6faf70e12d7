//! `keel bench engine` runs end to end with tiny parameters. No timing is asserted.

use std::process::Command;

#[test]
fn bench_engine_prints_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "engine", "--dir"])
        .arg(dir.path())
        .args(["--seconds", "0.2", "--keys", "2000", "--writers", "1,2"])
        .output()
        .expect("run keel");
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
