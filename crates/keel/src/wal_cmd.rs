use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use keel_wal::{Error, LogReader, Wal};

use crate::WalCommand;

pub fn run(cmd: WalCommand) -> Result<ExitCode> {
    match cmd {
        WalCommand::Dump { dir, from, json } => dump(&dir, from, json),
        WalCommand::Verify { dir } => verify(&dir),
        WalCommand::Repair { dir, force } => repair(&dir, force),
        WalCommand::Append { dir } => append(&dir),
    }
}

/// A byte progress bar on stderr; invisible when stderr is not a terminal.
pub(crate) fn scan_bar(what: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn open_reader(dir: &Path) -> std::result::Result<LogReader, Error> {
    let bar = scan_bar("scanning");
    let r = LogReader::open_with_progress(dir, &crate::wal_options(), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    r
}

fn dump(dir: &Path, from: Option<u64>, json: bool) -> Result<ExitCode> {
    let reader = open_reader(dir)?;
    let from = from.unwrap_or(reader.first_lsn());
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for rec in reader.iter_from(from)? {
        let rec = rec?;
        if json {
            let mut obj = serde_json::json!({
                "lsn": rec.lsn,
                "len": rec.payload.len(),
                "more_in_batch": rec.more_in_batch,
            });
            match std::str::from_utf8(&rec.payload) {
                Ok(s) => obj["utf8"] = s.into(),
                Err(_) => obj["hex"] = hex(&rec.payload).into(),
            }
            writeln!(out, "{obj}")?;
        } else {
            let batch = if rec.more_in_batch { " +batch" } else { "" };
            writeln!(
                out,
                "{}\t{}{}\t{}",
                rec.lsn,
                rec.payload.len(),
                batch,
                rec.payload.escape_ascii()
            )?;
        }
    }
    out.flush()?;
    if let Some(t) = reader.torn_tail() {
        eprintln!(
            "note: {} bytes of torn tail at offset {} of {} are not shown (opening the log cuts them)",
            t.end - t.offset,
            t.offset,
            t.file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Refuses a directory that is not a log: a database directory, or one with no segment at all
/// (an empty log would otherwise read as "clean, 0 segments").
fn not_a_log(dir: &Path) -> Option<String> {
    if crate::db_cmd::is_database(dir) {
        return Some(format!(
            "{} is a keel database, not a log; run `keel verify {}` (the whole database) or `keel wal verify {}` (its log)",
            dir.display(),
            dir.display(),
            dir.join("wal").display()
        ));
    }
    let segments = std::fs::read_dir(dir).ok().map(|r| {
        r.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("wal-"))
    });
    match segments {
        Some(true) => None,
        Some(false) => Some(format!(
            "{} holds no log segment (wal-*); it is not a keel log",
            dir.display()
        )),
        // Missing or unreadable: the reader says why.
        None => None,
    }
}

/// The database whose log `dir` is (`DB/wal`), and the first LSN it needs: the LSN after the
/// snapshot that opening the database would start from.
fn database_needs(dir: &Path) -> Option<Result<(std::path::PathBuf, u64)>> {
    let db = dir.parent()?;
    if dir.file_name()? != "wal" || !(db.join("MANIFEST").exists() || db.join("snapshots").is_dir())
    {
        return None;
    }
    Some(
        keel_engine::inspect(db, &crate::engine_options())
            .map(|i| (db.to_path_buf(), i.base + 1))
            .with_context(|| format!("checking the database {} that owns this log", db.display())),
    )
}

fn verify(dir: &Path) -> Result<ExitCode> {
    if let Some(why) = not_a_log(dir) {
        println!("{why}");
        return Ok(ExitCode::from(3));
    }
    match open_reader(dir) {
        Ok(r) => {
            let records = (r.last_lsn() + 1).saturating_sub(r.first_lsn());
            println!(
                "{}: {} segments, {} records (LSN {}..={}), {} bytes checked",
                dir.display(),
                r.segments().len(),
                records,
                r.first_lsn(),
                r.last_lsn(),
                r.bytes_scanned()
            );
            let ids: std::collections::BTreeSet<u32> = r
                .segments()
                .iter()
                .flat_map(|s| s.key_ids.iter().map(|k| k.0))
                .collect();
            if !ids.is_empty() {
                let plain = r
                    .segments()
                    .iter()
                    .filter(|s| !s.encrypted && s.last_lsn >= s.first_lsn)
                    .count();
                let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                println!(
                    "encryption: key ids in use: {}; plaintext segments: {plain}",
                    ids.join(", ")
                );
            }
            match r.end_mark() {
                Some(m) if m.durable_lsn == r.last_lsn() && m.closed => {
                    println!("closed cleanly at LSN {}", m.durable_lsn)
                }
                Some(m) if m.durable_lsn == r.last_lsn() => println!(
                    "not closed cleanly, but a mark proves every record durable (LSN {})",
                    m.durable_lsn
                ),
                _ if records > 0 => println!(
                    "not closed cleanly (no end mark): damage in the last batch would read as a torn tail"
                ),
                _ => {}
            }
            match r.torn_tail() {
                None => {
                    println!("clean");
                    Ok(ExitCode::SUCCESS)
                }
                Some(t) => {
                    println!(
                        "torn tail: {} bytes at offset {} of {} ({:?}); opening the log or `keel wal repair {}` cuts it and keeps the bytes in {}/torn/",
                        t.end - t.offset,
                        t.offset,
                        t.file.display(),
                        t.reason,
                        dir.display(),
                        dir.display()
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
        Err(Error::Corruption(c)) => {
            println!("CORRUPT: {c}");
            if let Some(Ok((db, needed))) = database_needs(dir) {
                let blocks = keel_wal::LogReader::open_from(
                    dir,
                    &crate::wal_options(),
                    needed,
                    &mut |_, _| {},
                )
                .is_err();
                let what = if blocks {
                    "the damage reaches into that range"
                } else {
                    "the damage lies below it, so it does not block opening the database"
                };
                println!(
                    "note: this is the log of the database {}, which needs it from LSN {needed} on; {what}. Run `keel verify {}` to see what opening it would do",
                    db.display(),
                    db.display()
                );
            }
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn repair(dir: &Path, force: bool) -> Result<ExitCode> {
    if crate::db_cmd::is_database(dir) {
        println!(
            "{} is a keel database, not a log: nothing was changed. Run `keel verify {}` to see what is damaged and what opening would do",
            dir.display(),
            dir.display()
        );
        return Ok(ExitCode::from(3));
    }
    // On a database's log, never cut below what the database's snapshot needs.
    let needed = match database_needs(dir) {
        None => 1,
        Some(Err(e)) => {
            println!(
                "{} is a database's log, and what the database needs could not be determined ({e:#}): nothing was changed. Run `keel verify {}`",
                dir.display(),
                dir.parent().map_or(dir, |p| p).display()
            );
            return Ok(ExitCode::from(3));
        }
        Some(Ok((db, needed))) => {
            println!(
                "{} is the log of the database {}, which needs it from LSN {needed} on: damage below that is left in place, and no cut goes below it",
                dir.display(),
                db.display()
            );
            needed
        }
    };
    match keel_wal::repair_from(dir, crate::wal_options(), force, needed) {
        Ok(r) => {
            for cut in &r.forced_cuts {
                if let Some(p) = &cut.restarted_at {
                    println!(
                        "damage below the LSNs needed: {}\n  nothing needed was cut: the needed frames now start {}",
                        cut.corruption,
                        p.display()
                    );
                    for q in &cut.quarantined {
                        println!("  segment moved to {}", q.display());
                    }
                    continue;
                }
                println!("cut before corruption: {}", cut.corruption);
                if let Some(p) = &cut.side_file {
                    println!("  cut bytes kept in {}", p.display());
                }
                for q in &cut.quarantined {
                    println!("  segment moved to {}", q.display());
                }
            }
            match &r.recovery.torn_tail {
                Some(t) => println!("{t}"),
                None if r.forced_cuts.is_empty() => println!("nothing to repair"),
                None => {}
            }
            println!("{}", r.recovery);
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Corruption(c)) => {
            println!("CORRUPT: {c}");
            println!("refusing to cut acknowledged data without --force");
            Ok(ExitCode::from(2))
        }
        Err(e @ Error::CutBelowNeeded { .. }) => {
            println!("{e}");
            if let Some(db) = dir.parent() {
                println!(
                    "Run `keel verify {}` to see what is damaged and what opening the database would do",
                    db.display()
                );
            }
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn append(dir: &Path) -> Result<ExitCode> {
    let (wal, report) = Wal::open(dir, crate::wal_options())
        .with_context(|| format!("opening {}", dir.display()))?;
    eprintln!("{report}");
    let (tx, rx) = std::sync::mpsc::sync_channel::<keel_wal::Ticket>(4096);
    // Print LSNs in order as their syncs complete, while the main thread keeps submitting: lines
    // that arrive together share one fdatasync.
    let printer = std::thread::spawn(move || -> Result<()> {
        let out = std::io::stdout();
        let mut out = out.lock();
        for ticket in rx {
            let lsns = ticket.wait()?;
            writeln!(out, "{}", lsns.end())?;
            out.flush()?;
        }
        Ok(())
    });
    let stdin = std::io::stdin();
    let mut submit_err = None;
    for line in stdin.lock().split(b'\n') {
        let mut line = line.context("reading standard input")?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match wal.submit(line) {
            Ok(t) => {
                if tx.send(t).is_err() {
                    break;
                }
            }
            Err(e) => {
                submit_err = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let printed = printer.join().expect("printer thread");
    wal.close()?;
    if let Some(e) = submit_err {
        return Err(e.into());
    }
    printed?;
    Ok(ExitCode::SUCCESS)
}
