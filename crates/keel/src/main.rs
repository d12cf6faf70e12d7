//! The `keel` command.
// Denied, not forbidden: the counting allocator and two FFI calls (the allocator's trim and
// the log threads' scheduling) need it.
#![deny(unsafe_code)]

mod audit_cmd;
mod bench;
mod bench_engine;
mod cluster_cmd;
mod counting;
mod db_cmd;
mod wal_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use keel_wal::Keyring;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the server allocates and frees a request's buffers,
/// keys and values at a high rate from two worker threads, and glibc's malloc was about 15% of
/// `keel serve`'s CPU under a pipelined SET load (perf). Counting the bytes held, for INFO.
#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "keel: a durable key-value database. A write keel acknowledges survives a process crash, a kernel crash and a power cut."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Encryption keyring (`ID HEX64` a line; the first key encrypts, every key decrypts; mode
    /// 0600). Needed to read or write an encrypted database; `keel keygen` makes a key.
    #[arg(long, global = true, env = "KEEL_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
}

static KEYRING: OnceLock<Option<Arc<Keyring>>> = OnceLock::new();

/// The keyring `--encryption-key-file` names, if any.
pub(crate) fn keyring() -> Option<Arc<Keyring>> {
    KEYRING.get().cloned().flatten()
}

/// Log options for offline tools: the defaults, with the keyring.
pub(crate) fn wal_options() -> keel_wal::Options {
    keel_wal::Options {
        keyring: keyring(),
        ..keel_wal::Options::default()
    }
}

/// Database options for offline tools: the defaults, with the keyring.
pub(crate) fn engine_options() -> keel_engine::Options {
    let mut o = keel_engine::Options::default();
    o.wal.keyring = keyring();
    o
}

#[derive(Subcommand)]
enum Command {
    /// Serve the database over the Redis protocol (RESP2/RESP3). A write's reply leaves only
    /// once the write is durable. Exit code 0: shut down cleanly (SIGTERM, SIGINT or SHUTDOWN);
    /// 2: the database refused to open (the error says why and what to run), or a bad flag;
    /// 3: other errors; 4: shut down while the log was poisoned by a failed write or sync
    /// (everything acknowledged is in the log; the next start runs recovery).
    Serve(Box<keel_server::ServeArgs>),
    /// Manage a keel cluster through one of its nodes: init, add-node, remove-node, status.
    Cluster(cluster_cmd::ClusterArgs),
    /// Inspect, verify, repair and append to a write-ahead log directory.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Benchmarks that print tables, with ratios against the disk's own limits measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Checkpoint a database that no server has open: write a snapshot, then prune the log.
    /// Exit code 0: done; 1: not possible (no database, or in use); 2: damaged; 3: failed.
    Snapshot(db_cmd::SnapshotArgs),
    /// Check a whole database directory without changing it: the MANIFEST, every snapshot, the
    /// log, and whether a complete path from a snapshot to the durable end exists; says what
    /// opening would do. Exit code 0: healthy; 1: damaged, but opening loses no acknowledged
    /// write; 2: acknowledged writes are unreachable (opening refuses); 3: could not read.
    Verify(db_cmd::VerifyArgs),
    /// Copy a database that no server has open into a new directory, as a snapshot.
    /// Exit codes as for snapshot.
    Backup(db_cmd::BackupArgs),
    /// Rebuild a database as of an LSN or a time into a new directory. Reads the source only,
    /// so it works on a live database. Exit code 0: done; 1: the point is not retained, or the
    /// target is in use; 2: damaged; 3: failed.
    Restore(db_cmd::RestoreArgs),
    /// Print the password_sha256 of a password read from standard input, for a [[users]] entry
    /// of the config file; or, with --generate, make a random password and print both.
    HashPassword(keel_server::auth::HashPasswordArgs),
    /// The audit log a server started with --audit keeps in DIR/audit/: verify its hash chain,
    /// or show its entries.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Print a new encryption key line, `ID HEX64`, for a key file. Put it first in the file
    /// (mode 0600, outside the data directory) to encrypt new data with it.
    Keygen {
        /// The key's id, 1 to 4294967295 [default: random].
        #[arg(long)]
        id: Option<u32>,
    },
    /// Rewrite a database that no server has open so that only the key file's first key is
    /// needed: checkpoint, then re-encrypt every older snapshot and log segment that uses
    /// another key or none. Then `keel verify` lists the key ids still in use. Exit codes as
    /// for snapshot.
    Rekey(db_cmd::RekeyArgs),
}

#[derive(Subcommand)]
pub enum WalCommand {
    /// Print records.
    Dump {
        /// Log directory.
        dir: PathBuf,
        /// First LSN to print (default: the first in the log).
        #[arg(long)]
        from: Option<u64>,
        /// One JSON object per line: {"lsn", "len", "more_in_batch", "utf8" or "hex"}.
        #[arg(long)]
        json: bool,
    },
    /// Check every segment and frame without changing anything. Exit code 0: clean; 1: a torn
    /// tail (opening the log, or `keel wal repair`, cuts it); 2: corruption; 3: could not read,
    /// or DIR is not a log (a database directory, or no segments at all).
    Verify {
        /// Log directory.
        dir: PathBuf,
    },
    /// Cut a torn tail. With --force, also cut the log just before mid-log corruption; the cut
    /// bytes and every later segment are moved to DIR/quarantine/, never deleted. On a
    /// database's log (DB/wal) it never cuts below what the database's snapshot needs: damage
    /// the snapshot covers is left alone, and a cut that would leave the database unopenable is
    /// refused (exit 2).
    Repair {
        /// Log directory.
        dir: PathBuf,
        /// Cut at corruption too (records after the damage become unreadable to keel).
        #[arg(long)]
        force: bool,
    },
    /// Append each line of standard input as one record; print each LSN once it is durable.
    Append {
        /// Log directory (created if missing).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable appends at 1..256 writers against raw write+fdatasync loops and the group-commit
    /// bound, plus recovery speed against sequential read bandwidth.
    Wal(bench::WalBenchArgs),
    /// Durable puts at 1..256 writers against raw keel-wal appends of the same record size, gets,
    /// checkpoint and recovery times, each against a baseline measured in the same run.
    Engine(bench_engine::EngineBenchArgs),
}

/// What INFO memory reports: the bytes the process holds, as the allocator counts them
/// (`counting`), now and at the highest figure read so far (INFO and the server's 100 ms
/// sampler read it).
fn allocator_stats() -> keel_server::AllocatorStats {
    let (used, peak) = counting::held();
    keel_server::AllocatorStats {
        name: "mimalloc",
        used,
        peak,
    }
}

/// Makes mimalloc give back to the system the memory freed so far, the memory of threads that
/// ended too (recovery's). Without it, 100,000 XADDs replayed left about 65 MiB committed.
#[allow(unsafe_code)]
fn allocator_trim() {
    // SAFETY: mi_collect takes no pointers; forcing it only costs time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Makes the calling thread `SCHED_BATCH` (Linux): the same share of the CPU, but when woken it
/// does not preempt the running thread; it waits until that thread blocks or the scheduler's
/// tick. Given to the logs' own threads. Woken by the first append of a round, the log's I/O
/// thread used to preempt the server's thread at once and sync that one append alone; now the
/// server's thread first queues the appends of every request it has read, and they share the
/// sync: on one core, a third as many syncs and context switches per SET at `-c 64`, and a
/// third less CPU per SET (BENCHMARKS.md). If the call fails the thread stays as it was.
#[allow(unsafe_code)]
fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a live, initialized sched_param; pid 0 is the calling thread. A
        // failure (-1) leaves the thread's policy as it was, which is all that matters here.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    }
}

fn main() -> ExitCode {
    keel_server::set_allocator_stats(allocator_stats);
    keel_server::set_allocator_trim(allocator_trim);
    keel_server::set_log_thread_start(batch_scheduling);
    let cli = Cli::parse();
    if let Command::Serve(_) = cli.command {
        // keel serve loads it itself, with the data directory's check.
    } else if let Some(path) = &cli.encryption_key_file {
        match Keyring::load(path) {
            Ok(k) => drop(KEYRING.set(Some(Arc::new(k)))),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let result = match cli.command {
        Command::Serve(mut a) => {
            a.encryption_key_file = cli.encryption_key_file;
            keel_server::run(*a)
        }
        Command::Keygen { id } => keygen(id),
        Command::Rekey(a) => Ok(db_cmd::rekey(a)),
        Command::Wal(c) => wal_cmd::run(c),
        Command::Snapshot(a) => Ok(db_cmd::snapshot(a)),
        Command::Backup(a) => Ok(db_cmd::backup(a)),
        Command::Verify(a) => Ok(db_cmd::verify(a)),
        Command::Restore(a) => Ok(db_cmd::restore_cmd(a)),
        Command::Cluster(a) => Ok(cluster_cmd::run(a)),
        Command::Audit(c) => Ok(audit_cmd::run(c)),
        Command::HashPassword(a) => keel_server::auth::hash_password_cmd(a),
        Command::Bench(BenchCommand::Wal(a)) => bench::wal(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Engine(a)) => {
            bench_engine::engine(a).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn keygen(id: Option<u32>) -> anyhow::Result<ExitCode> {
    let id = match id {
        Some(0) => anyhow::bail!("key id 0 is not allowed; ids are 1 to 4294967295"),
        Some(id) => id,
        None => loop {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let id = u32::from_le_bytes(b);
            if id != 0 {
                break id;
            }
        },
    };
    println!(
        "{}",
        keel_wal::crypt::generate_line(id).map_err(anyhow::Error::msg)?
    );
    Ok(ExitCode::SUCCESS)
}
