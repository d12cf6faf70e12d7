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
