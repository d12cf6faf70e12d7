use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use keel_wal::{Error, LogReader, Options, Wal};

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
    let r = LogReader::open_with_progress(dir, &Options::default(), &mut |done, total| {
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

fn verify(dir: &Path) -> Result<ExitCode> {
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
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn repair(dir: &Path, force: bool) -> Result<ExitCode> {
    match keel_wal::repair(dir, Options::default(), force) {
        Ok(r) => {
            for cut in &r.forced_cuts {
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
        Err(e) => Err(e.into()),
    }
}

fn append(dir: &Path) -> Result<ExitCode> {
    let (wal, report) =
        Wal::open(dir, Options::default()).with_context(|| format!("opening {}", dir.display()))?;
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
