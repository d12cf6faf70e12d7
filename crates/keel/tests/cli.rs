//! The real `keel` binary against real directories.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn keel(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel");
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    v.sort();
    v
}

#[test]
fn append_prints_durable_lsns_and_dump_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = keel(
        &["wal", "append", d],
        Some(b"hello\nworld\r\n\nlast-no-newline"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n4\n");
    let out = keel(&["wal", "append", d], Some(b"more\n"));
    assert_eq!(text(&out.stdout), "5\n");

    let out = keel(&["wal", "dump", d], None);
    assert!(out.status.success());
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            "1\t5\thello",
            "2\t5\tworld",
            "3\t0\t",
            "4\t15\tlast-no-newline",
            "5\t4\tmore"
        ]
    );

    let out = keel(&["wal", "dump", d, "--from", "4", "--json"], None);
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["lsn"], 4);
    assert_eq!(first["utf8"], "last-no-newline");

    let out = keel(&["wal", "verify", d], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("5 records"));
}

#[test]
fn verify_and_repair_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    keel(&["wal", "append", d], Some(b"one\ntwo\nthree\n"));
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let out = keel(&["wal", "verify", d], None);
    assert!(
        text(&out.stdout).contains("closed cleanly at LSN 3"),
        "{}",
        text(&out.stdout)
    );
    // A crash state: the mark a clean close leaves after the last frame (LSN 3's, at
    // 64 + 40 + 40) never reached the disk. Then garble LSN 3's header.
    bytes[64 + 120..64 + 120 + 32].fill(0);
    bytes[64 + 80 + 5] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let out = keel(&["wal", "verify", d], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("torn tail"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "verify changes nothing"
    );

    let out = keel(&["wal", "repair", d], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("torn tail cut"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        dir.path().join("torn").read_dir().unwrap().next().is_some(),
        "cut bytes kept"
    );
    assert_eq!(keel(&["wal", "verify", d], None).status.code(), Some(0));
    assert_eq!(
        text(&keel(&["wal", "dump", d], None).stdout)
            .lines()
            .count(),
        2
    );
}

#[test]
fn verify_reports_mid_log_corruption_and_repair_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Separate invocations: separate syncs, so later frames prove earlier ones durable.
    for line in ["a", "b", "c", "d"] {
        keel(&["wal", "append", d], Some(format!("{line}\n").as_bytes()));
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[64 + 40 + 32] ^= 1; // payload of LSN 2
    std::fs::write(&seg, &bytes).unwrap();

    let out = keel(&["wal", "verify", d], None);
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out.stdout);
    assert!(
        msg.contains("CORRUPT")
            && msg.contains("byte offset 104")
            && msg.contains("last good LSN 1"),
        "{msg}"
    );
    assert!(msg.contains(&seg.display().to_string()), "{msg}");

    let out = keel(&["wal", "repair", d], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "refused repair changes nothing"
    );
    assert!(text(&keel(&["wal", "dump", d], None).stderr).contains("corruption"));

    let out = keel(&["wal", "repair", "--force", d], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let side: Vec<_> = dir.path().join("quarantine").read_dir().unwrap().collect();
    assert_eq!(side.len(), 1, "the cut bytes are kept");
    assert_eq!(text(&keel(&["wal", "dump", d], None).stdout), "1\t1\ta\n");
    assert_eq!(
        text(&keel(&["wal", "append", d], Some(b"e\n")).stdout),
        "2\n"
    );
}

#[test]
fn errors_are_clear_and_help_is_there() {
    let out = keel(&["wal", "verify", "/nonexistent/keel"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("/nonexistent/keel"),
        "{}",
        text(&out.stderr)
    );
    let out = keel(&["--help"], None);
    assert!(out.status.success());
    for cmd in ["wal", "bench"] {
        assert!(text(&out.stdout).contains(cmd));
    }
    let out = keel(&["wal", "repair", "--help"], None);
    assert!(text(&out.stdout).contains("--force"));
}

#[test]
fn kill_9_during_append_loses_no_printed_lsn() {
    use std::io::BufRead;
    for round in 0..5u64 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["wal", "append", &d])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            for i in 0.. {
                if writeln!(stdin, "line-{i}-{}", "x".repeat(i % 300)).is_err() {
                    break;
                }
            }
        });
        let mut acked = Vec::new();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = 200 + round * 700;
        while let Some(Ok(l)) = lines.next() {
            acked.push(l.parse::<u64>().unwrap());
            if acked.len() as u64 >= kill_after {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed after the kill was decided are acknowledged too.
        for l in lines.map_while(Result::ok) {
            acked.push(l.parse().unwrap());
        }
        feeder.join().unwrap();
        let out = keel(&["wal", "dump", &d, "--json"], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let present: Vec<serde_json::Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            present.len() >= acked.len(),
            "round {round}: {} acked, {} present",
            acked.len(),
            present.len()
        );
        for (i, rec) in present.iter().enumerate() {
            assert_eq!(rec["lsn"], i as u64 + 1);
            assert_eq!(rec["utf8"], format!("line-{i}-{}", "x".repeat(i % 300)));
        }
    }
}
