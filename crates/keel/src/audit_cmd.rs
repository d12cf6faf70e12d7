//! `keel audit verify|show`: the audit log of a data directory (see the README's "Audit log").

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keel_server::audit;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of DIR/audit/ against the chain's head the database recorded.
    /// Exit code 0: intact; 1: an entry was changed, removed, reordered or cut from the end, or
    /// the log records such a break (the first bad entry is named); 2: the database's record of
    /// the head could not be read, so the end was not checked; 3: could not read the files.
    Verify {
        /// Data directory (the one `keel serve --dir` uses).
        #[arg(default_value = "keel-data")]
        dir: PathBuf,
    },
    /// Print the entries of DIR/audit/ as JSON lines, oldest first.
    Show {
        /// Data directory.
        #[arg(default_value = "keel-data")]
        dir: PathBuf,
        /// Only entries at or after this Unix time in milliseconds.
        #[arg(long)]
        since: Option<u64>,
    },
}

pub fn run(c: AuditCommand) -> ExitCode {
    match c {
        AuditCommand::Verify { dir } => verify(&dir),
        AuditCommand::Show { dir, since } => show(&dir, since),
    }
}

fn audit_dir(dir: &Path) -> Result<PathBuf, ExitCode> {
    let a = dir.join(audit::DIR);
    if a.is_dir() {
        Ok(a)
    } else {
        eprintln!(
            "error: {} does not exist: no audit log (start keel serve with --audit)",
            a.display()
        );
        Err(ExitCode::from(3))
    }
}

fn verify(dir: &Path) -> ExitCode {
    let a = match audit_dir(dir) {
        Ok(a) => a,
        Err(code) => return code,
    };
    // A checkpoint of a live database can remove what read_system reads: try again.
    let opts = crate::engine_options();
    let mut read = keel_engine::read_system(dir, &opts);
    for _ in 0..3 {
        if read.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        read = keel_engine::read_system(dir, &opts);
    }
    let anchor = match read {
        Ok(s) => s.get(audit::ANCHOR_KEY).cloned(),
        Err(e) => {
            eprintln!(
                "error: the chain's head recorded in the database could not be read ({e}); \
                 `keel verify {}` says more",
                dir.display()
            );
            return ExitCode::from(2);
        }
    };
    let v = match audit::verify(&a, anchor.as_deref(), crate::keyring().as_deref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: reading {}: {e}", a.display());
            return ExitCode::from(3);
        }
    };
    let range = match (v.first_seq, v.last_seq) {
        (Some(f), Some(l)) => format!("seq {f}..={l}"),
        _ => "no entries".into(),
    };
    println!(
        "{}: {} files, {} entries ({range})",
        a.display(),
        v.files,
        v.entries
    );
    match v.anchor_seq {
        Some(s) => println!("the database recorded the chain's head at seq {s}"),
        None => println!("the database holds no chain head (a cluster node, or never written)"),
    }
    if let Some(t) = &v.torn_tail {
        println!("note: {t} (a crash while writing it; keel serve cuts it at its next start)");
    }
    match &v.bad {
        Some(b) => {
            println!("TAMPERED: {b}");
            ExitCode::from(1)
        }
        None => {
            println!("intact");
            ExitCode::SUCCESS
        }
    }
}

fn show(dir: &Path, since: Option<u64>) -> ExitCode {
    let a = match audit_dir(dir) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let files = match audit::files(&a) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: reading {}: {e}", a.display());
            return ExitCode::from(3);
        }
    };
    let keyring = crate::keyring();
    let mut out = std::io::stdout().lock();
    for (_, path) in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: reading {}: {e}", path.display());
                return ExitCode::from(3);
            }
        };
        for stored in text.lines() {
            // A sealed entry is shown as its JSON; one that cannot be read is shown as stored.
            let line = match audit::open_line(stored.as_bytes(), keyring.as_deref()) {
                Ok(Some(json)) => String::from_utf8_lossy(&json).into_owned(),
                Ok(None) => stored.to_string(),
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            let at = serde_json::from_str::<audit::Entry>(&line).map(|e| e.at_ms);
            if since.is_none_or(|s| at.as_ref().is_ok_and(|&t| t >= s))
                && writeln!(out, "{line}").is_err()
            {
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::SUCCESS
}
