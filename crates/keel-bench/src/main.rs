//! keel-bench: keel side by side with the embedded engines people would pick instead (issue #8).
//!
//! `keel-bench compare` runs everything; see BENCHMARKS.md. The peers (RocksDB, SQLite, redb,
//! fjall, okaywal) are built only with `--features peers`; without it the comparison runs keel
//! and the raw fdatasync baseline and lists the peers as not built.

mod compare;
mod peers;
mod report;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable puts, batches and recovery for keel and its peers, in one run on one disk.
    Compare(compare::CompareArgs),
    /// Internal: the child process of the honesty check and of the recovery measurement.
    #[command(name = "__child", hide = true)]
    Child(compare::ChildArgs),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Compare(a) => {
            let command = format!(
                "cargo run --release -p keel-bench{} -- {}",
                if cfg!(feature = "peers") {
                    " --features peers"
                } else {
                    ""
                },
                std::env::args().skip(1).collect::<Vec<_>>().join(" ")
            );
            let out = a.out.clone();
            let run = compare::compare(a, command)?;
            let md = report::write_all(&run, &out)?;
            println!("{md}");
            eprintln!("wrote {}", out.join("compare.md").display());
            Ok(())
        }
        Cmd::Child(a) => compare::child(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare_args(extra: &[&str]) -> compare::CompareArgs {
        let argv = ["keel-bench", "compare"].iter().chain(extra);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                cmd: Cmd::Compare(a),
            }) => a,
            Ok(_) => panic!("not parsed as compare"),
            Err(e) => panic!("{extra:?}: {e}"),
        }
    }

    #[test]
    fn an_empty_batch_writers_list_skips_batches() {
        assert!(compare_args(&["--batch-writers", ""])
            .batch_writers
            .is_empty());
        assert!(compare_args(&["--batch-writers="]).batch_writers.is_empty());
        assert_eq!(compare_args(&[]).batch_writers, vec![1, 16]);
        assert_eq!(
            compare_args(&["--batch-writers", "2,8"]).batch_writers,
            vec![2, 8]
        );
        assert!(Cli::try_parse_from(["keel-bench", "compare", "--batch-writers", "1,x"]).is_err());
        assert!(Cli::try_parse_from(["keel-bench", "compare", "--batch-writers", "1,,2"]).is_err());
    }
}
