//! `keel snapshot`, `keel backup` and `keel restore`: offline work on an engine directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use keel_engine::{inspect, restore, Engine, Error, Options, RestoreTarget};

use crate::engine_options;

/// Exit codes shared by the three commands.
const NOT_POSSIBLE: u8 = 1;
const DAMAGED: u8 = 2;
const FAILED: u8 = 3;

#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// Database directory.
    #[arg(long, default_value = "keel-data")]
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Database directory (the one `keel serve --dir` uses).
    #[arg(default_value = "keel-data")]
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct RekeyArgs {
    /// Database directory.
    #[arg(default_value = "keel-data")]
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct BackupArgs {
    /// Database directory.
    #[arg(long, default_value = "keel-data")]
    dir: PathBuf,
    /// New directory for the copy; must not exist or be empty.
    #[arg(long)]
    target: PathBuf,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("to").args(["to_lsn", "to_timestamp_ms", "latest"]).required(true))]
pub struct RestoreArgs {
    /// Database directory to restore from. Only read; it may be in use by a running server.
    #[arg(long)]
    source: PathBuf,
    /// New directory for the restored database; must not exist or be empty.
    #[arg(long)]
    target: PathBuf,
    /// Every write up to and including this LSN.
    #[arg(long)]
    to_lsn: Option<u64>,
    /// Every write decided at or before this Unix time in milliseconds.
    #[arg(long)]
    to_timestamp_ms: Option<u64>,
    /// Everything the source holds.
    #[arg(long)]
    latest: bool,
}

fn spinner(msg: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("static"));
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Opens the database for offline work, with a progress bar over the log's recovery scan.
fn open(dir: &Path) -> Result<Engine, Error> {
    if !dir.join("wal").exists() {
        return Err(Error::InvalidOptions(format!(
            "{} holds no keel database",
            dir.display()
        )));
    }
    let bar = crate::wal_cmd::scan_bar("recovering");
    let opts = Options {
        background: false,
        ..engine_options()
    };
    let r = Engine::open_with_progress(dir, opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let (e, report) = r?;
    eprintln!("{report}");
    Ok(e)
}

/// Prints the error and maps it to the exit code the help text documents.
fn fail(e: Error) -> ExitCode {
    let code = match &e {
        Error::NotRestorable(_) | Error::InvalidOptions(_) => NOT_POSSIBLE,
        Error::BadFile { .. } | Error::NoCompletePath { .. } | Error::BadRecord { .. } => DAMAGED,
        Error::Wal(keel_wal::Error::Corruption(_)) => DAMAGED,
        Error::Wal(keel_wal::Error::Key(_)) => NOT_POSSIBLE,
        Error::Wal(keel_wal::Error::Locked { .. }) => {
            eprintln!("error: {e}");
            eprintln!("the database is in use by a running `keel serve`: ask the server instead (redis-cli SAVE, or KEEL.BACKUP <dir>)");
            return ExitCode::from(NOT_POSSIBLE);
        }
        _ => FAILED,
    };
    eprintln!("error: {e}");
    ExitCode::from(code)
}

pub fn snapshot(a: SnapshotArgs) -> ExitCode {
    let run = || -> Result<_, Error> {
        let e = open(&a.dir)?;
        let bar = spinner("writing snapshot");
        let lsn = e.checkpoint();
        bar.finish_and_clear();
        let lsn = lsn?;
        let (info, _) = e.last_checkpoint();
        e.close()?;
        Ok((lsn, info))
    };
    match run() {
        Ok((lsn, Some(i))) => {
            println!(
                "snapshot at LSN {lsn}: {} keys, {} bytes, in {:.2?}; {} log segments pruned",
                i.keys, i.snapshot_bytes, i.duration, i.segments_pruned
            );
            ExitCode::SUCCESS
        }
        Ok((lsn, None)) => {
            println!("snapshot at LSN {lsn} is already current");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn backup(a: BackupArgs) -> ExitCode {
    let run = || -> Result<_, Error> {
        let e = open(&a.dir)?;
        let bar = spinner("writing backup");
        let r = e.backup(&a.target);
        bar.finish_and_clear();
        e.close()?;
        r
    };
    match run() {
        Ok(r) => {
            println!(
                "backup of LSN {} in {}: {} keys, {} bytes, in {:.2?}",
                r.lsn,
                a.target.display(),
                r.keys,
                r.snapshot_bytes,
                r.duration
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn restore_cmd(a: RestoreArgs) -> ExitCode {
    let to = match (a.to_lsn, a.to_timestamp_ms) {
        (Some(l), _) => RestoreTarget::Lsn(l),
        (_, Some(t)) => RestoreTarget::UnixMs(t),
        _ => RestoreTarget::Latest,
    };
    let bar = spinner("restoring");
    let r = restore(&a.source, &a.target, to, &engine_options());
    bar.finish_and_clear();
    match r {
        Ok(r) => {
            for l in &r.damaged_snapshots {
                eprintln!("warning: snapshot at LSN {l} failed verification and was passed over");
            }
            for d in &r.unneeded_log_damage {
                eprintln!("warning: the source's log has {d}; the restore did not need it");
            }
            println!(
                "restored LSN {} (decided at Unix ms {}) into {}: {} keys, from the snapshot at LSN {} and {} log records, in {:.2?}",
                r.lsn,
                r.at_ms,
                a.target.display(),
                r.keys,
                r.base_snapshot,
                r.records_replayed,
                r.duration
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// True when `dir` looks like a keel database directory (not a log directory).
pub(crate) fn is_database(dir: &Path) -> bool {
    dir.join("MANIFEST").exists() || dir.join("wal").is_dir() || dir.join("snapshots").is_dir()
}

/// `keel verify DIR`: the MANIFEST, every snapshot, the log, and whether a complete path to the
/// durable end exists. The same choice `keel serve` makes when it opens the directory.
pub fn verify(a: VerifyArgs) -> ExitCode {
    if !is_database(&a.dir) {
        eprintln!(
            "error: {} holds no keel database (no MANIFEST, wal/ or snapshots/); for a log directory run `keel wal verify {}`",
            a.dir.display(),
            a.dir.display()
        );
        return ExitCode::from(FAILED);
    }
    let bar = spinner("verifying");
    let r = inspect(&a.dir, &engine_options());
    bar.finish_and_clear();
    match r {
        Ok(i) => {
            println!("{i}");
            ExitCode::from(i.exit_code())
        }
        Err(e) => {
            eprintln!("error: could not read {}: {e}", a.dir.display());
            ExitCode::from(FAILED)
        }
    }
}

pub fn rekey(a: RekeyArgs) -> ExitCode {
    let Some(ring) = crate::keyring() else {
        eprintln!(
            "error: keel rekey needs --encryption-key-file: its first key seals what is rewritten"
        );
        return ExitCode::from(NOT_POSSIBLE);
    };
    if !a.dir.join("wal").exists() {
        eprintln!("error: {} holds no keel database", a.dir.display());
        return ExitCode::from(NOT_POSSIBLE);
    }
    let opts = engine_options();
    let bar = spinner("rekeying");
    let r =
        keel_engine::rekey(&a.dir, &opts).and_then(|files| Ok((files, inspect(&a.dir, &opts)?)));
    bar.finish_and_clear();
    match r {
        Ok((files, i)) => {
            for f in &files {
                println!("rewritten with key id {}: {}", ring.active(), f.display());
            }
            let ids: Vec<String> = i.key_ids.iter().map(|k| k.to_string()).collect();
            println!(
                "{} files rewritten; key ids in use: {}; plaintext files: {}",
                files.len(),
                ids.join(", "),
                i.plaintext_files
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
