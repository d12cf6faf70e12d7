//! Files on a real disk and the `keel` binary, for the tests that damage databases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keel_engine::Options;

/// Runs the `keel` binary with `args`.
pub fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .expect("run keel")
}

/// Its standard output, then its standard error.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The entries of `dir`, sorted; none if it does not exist.
pub fn sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Flips the lowest bit of the byte at `at`.
pub fn flip(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 0x01;
    std::fs::write(p, &b).unwrap();
}

/// An engine with 64 KiB log segments and no background thread, so that sealed segments exist
/// after a short workload and nothing runs behind the test's back.
pub fn small_engine() -> Options {
    Options {
        wal: keel_wal::Options::small_for_tests(),
        key_bytes_max: 256,
        value_bytes_max: 4096,
        background: false,
        ..Options::default()
    }
}
