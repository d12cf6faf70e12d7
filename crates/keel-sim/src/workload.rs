//! A seeded keel-wal workload on [`SimFs`], a crash, recovery, and the checks that must hold.
//!
//! The workload runs on one thread and waits for each append before the next, so the log's I/O
//! thread issues the same calls in the same order on every run of a seed. A crash is then named by
//! two numbers: the seed and the operation index at which the file system dies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use keel_wal::{Error, Lsn, Options, Wal};

use crate::{Faults, Rng, SimFs};

pub const WAL_DIR: &str = "/db/wal";

/// What to do to the run.
#[derive(Clone, Debug, Default)]
pub struct Case {
    pub seed: u64,
    /// Workload steps (appends, batches, prunes, truncations).
    pub steps: usize,
    /// The file system dies at this operation index (counted from creation).
    pub crash_at: Option<u64>,
    /// Faults injected once the log is open.
    pub faults: Option<Faults>,
    /// Flip bits in durable data of the crash image before recovery.
    pub rot_bits: u32,
    /// Also crash during recovery, then recover again, and compare.
    pub crash_during_recovery: bool,
    /// More than one: that many threads append concurrently (no prune or truncate), so group
    /// commit batches several appends per sync. The I/O order then depends on scheduling, so a
    /// seed is not guaranteed to replay the same run.
    pub threads: usize,
    /// The process dies at this operation index (kill -9: its page cache survives, so the file
    /// system is forked with its unsynced writes), and a new one reopens the log and carries on.
    /// `crash_at` then counts operations from the restart.
    pub restart_at: Option<u64>,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} steps={} crash_at={:?}",
            self.seed, self.steps, self.crash_at
        )?;
        if let Some(x) = &self.faults {
            write!(f, " faults={x:?}")?;
        }
        if self.rot_bits > 0 {
            write!(f, " rot_bits={}", self.rot_bits)?;
        }
        if self.crash_during_recovery {
            write!(f, " crash_during_recovery")?;
        }
        if let Some(k) = self.restart_at {
            write!(f, " restart_at={k}")?;
        }
        if self.threads > 1 {
            write!(f, " threads={} (scheduling-dependent)", self.threads)?;
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Operations the workload issued (including its close), crash or not.
    pub ops: u64,
    /// File and directory syncs among them.
    pub syncs: u64,
    pub acked: usize,
    pub recovered: u64,
    /// Recovery refused the image (only acceptable with rot).
    pub failed_closed: bool,
    pub torn_tail: bool,
}

/// Small segments so that rotation, prune and truncation happen often.
pub fn sim_options(fs: &SimFs, rng: &mut Rng) -> Options {
    Options {
        segment_bytes_max: 16 << 10,
        record_bytes_max: 2 << 10,
        batch_bytes_max: 8 << 10,
        queue_bytes_max: 64 << 10,
        zero_fill_segments: rng.chance(70),
        prepare_segments_in_background: false,
        fs: Arc::new(fs.clone()),
        // Half the seeds with encryption at rest: sealed frames must keep every promise. Drawn
        // from a copy, so that the rest of every seed's choices stay as they were.
        keyring: Rng::new(rng.clone().next_u64()).chance(50).then(|| {
            Arc::new(
                keel_wal::Keyring::parse(
                    "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                )
                .expect("a valid key line"),
            )
        }),
        ..Options::default()
    }
}

#[derive(Default, Debug)]
struct Model {
    /// Payload that each LSN was last attempted with.
    attempted: BTreeMap<Lsn, Vec<u8>>,
    /// Attempted batches, first LSN → last LSN (singles included).
    batches: BTreeMap<Lsn, Lsn>,
    acked: BTreeSet<Lsn>,
    /// Records below this may have been pruned.
    prune_floor: Lsn,
    /// A truncation that did not return: records above it may or may not be there.
    truncate_in_flight: Option<Lsn>,
    /// The last acknowledged batch. After a crash, the mark written after its sync may be lost,
    /// and then nothing after it records that it was synced, so damage to it cannot be told from
    /// a torn write (see keel-wal's recovery docs).
    last_acked: Option<(Lsn, Lsn)>,
    /// The log was closed cleanly: it ends with a synced mark that proves every record durable,
    /// so no damage may read as a torn tail that costs an acknowledged record.
    closed_cleanly: bool,
}

fn payload(rng: &mut Rng, step: usize, len: usize) -> Vec<u8> {
    let mut p = format!("s{step}:").into_bytes();
    let fill = rng.next_u64();
    while p.len() < len {
        p.push((fill >> (p.len() % 8 * 8)) as u8 ^ p.len() as u8);
    }
    p
}

/// Runs the workload. Returns the model and the number of operations issued. The workload stops
/// at its first error; in fault mode it then checks that nothing more is acknowledged.
fn workload(
    case: &Case,
    fs: &SimFs,
    opts: &Options,
    rng: &mut Rng,
) -> Result<(Model, SimFs), String> {
    let mut m = Model::default();
    let mut fs = fs.clone();
    let mut restart = case.restart_at;
    if let Some(k) = restart {
        fs.crash_at(k);
    }
    let mut wal = loop {
        match Wal::open(WAL_DIR, with_fs(opts, &fs)) {
            Ok((w, _)) => break w,
            Err(_) if fs.is_dead() && restart.take().is_some() => fs = restarted(&fs, case),
            Err(_) if fs.is_dead() => return Ok((m, fs)),
            Err(e) => return Err(format!("open on a fresh file system failed: {e}")),
        }
    };
    if let Some(f) = &case.faults {
        fs.set_faults(f.clone());
    }
    let mut failed = false;
    for step in 0..case.steps {
        let r = match rng.below(100) {
            0..=59 => append(&wal, &mut m, rng, step, 1),
            60..=84 => {
                let n = 2 + rng.below(4) as usize;
                append(&wal, &mut m, rng, step, n)
            }
            85..=91 => {
                let (first, last) = (wal.first_lsn(), wal.last_lsn());
                let x = first + rng.below(last + 2 - first);
                m.prune_floor = m.prune_floor.max(x);
                wal.prune_before(x).map(|_| ())
            }
            _ => {
                let first = wal.first_lsn();
                let candidates: Vec<Lsn> = std::iter::once(first - 1)
                    .chain(m.batches.range(first..).map(|(_, &l)| l))
                    .collect();
                let x = candidates[rng.below(candidates.len() as u64) as usize];
                m.truncate_in_flight = Some(x);
                let r = wal.truncate_after(x);
                if r.is_ok() {
                    m.truncate_in_flight = None;
                    m.attempted.split_off(&(x + 1));
                    m.batches.split_off(&(x + 1));
                    m.acked.retain(|&l| l <= x);
                    // The batch that now ends the log is again the last one: nothing after it
                    // records that it was synced.
                    m.last_acked = m.batches.range(..=x).next_back().map(|(&f, &l)| (f, l));
                }
                r
            }
        };
        if let Err(e) = r {
            if matches!(e, Error::InsideBatch { .. } | Error::LsnOutOfRange { .. }) {
                return Err(format!("the workload asked for something invalid: {e}"));
            }
            if fs.is_dead() && restart.take().is_some() {
                // kill -9 and restart: reopen on what the page cache still holds.
                fs = restarted(&fs, case);
                drop(wal);
                wal = match Wal::open(WAL_DIR, with_fs(opts, &fs)) {
                    Ok((w, _)) => w,
                    Err(_) if fs.is_dead() => return Ok((m, fs)),
                    Err(e) => return Err(format!("reopen after a process crash failed: {e}")),
                };
                // A truncation cut short by the kill may or may not have happened.
                if let Some(x) = m.truncate_in_flight.take() {
                    let last = wal.last_lsn();
                    if last <= x {
                        m.attempted.split_off(&(last + 1));
                        m.batches.split_off(&(last + 1));
                        m.acked.retain(|&l| l <= last);
                        m.last_acked = m.batches.range(..=last).next_back().map(|(&f, &l)| (f, l));
                    } else {
                        m.truncate_in_flight = Some(x);
                    }
                }
                continue;
            }
            failed = true;
            break;
        }
    }
    if failed && case.faults.is_some() {
        // P5: once anything failed, nothing is acknowledged any more.
        for i in 0..3 {
            let before = m.acked.len();
            let _ = append(&wal, &mut m, rng, case.steps + i, 1);
            if m.acked.len() != before {
                return Err("an append was acknowledged after a failure (P5)".into());
            }
        }
    }
    m.closed_cleanly = wal.close().is_ok() && !failed && !fs.is_dead();
    Ok((m, fs))
}

/// `threads` writers append until their steps run out or the log fails.
fn concurrent_workload(case: &Case, opts: &Options) -> Result<Model, String> {
    let (wal, _) = match Wal::open(WAL_DIR, opts.clone()) {
        Ok(w) => w,
        Err(_) => return Ok(Model::default()),
    };
    let shared = std::sync::Mutex::new(Model::default());
    std::thread::scope(|s| {
        for t in 0..case.threads {
            let (wal, shared) = (&wal, &shared);
            s.spawn(move || {
                let mut rng = Rng::new(case.seed ^ (t as u64 + 1).wrapping_mul(0x9E37));
                for step in 0..case.steps {
                    let n = if rng.chance(30) {
                        2 + rng.below(3) as usize
                    } else {
                        1
                    };
                    let records: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            let len = rng.below(400) as usize;
                            payload(&mut rng, t * 100_000 + step, len)
                        })
                        .collect();
                    let Ok(ticket) = wal.submit_batch(records.clone()) else {
                        return;
                    };
                    let lsns = ticket.lsns();
                    {
                        let mut m = shared.lock().unwrap();
                        for (lsn, p) in lsns.clone().zip(records) {
                            m.attempted.insert(lsn, p);
                        }
                        m.batches.insert(*lsns.start(), *lsns.end());
                    }
                    if ticket.wait().is_err() {
                        return;
                    }
                    shared.lock().unwrap().acked.extend(lsns);
                }
            });
        }
    });
    drop(wal);
    Ok(shared.into_inner().unwrap())
}

fn with_fs(opts: &Options, fs: &SimFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        ..opts.clone()
    }
}

/// The machine after a process crash: the dead process's file system state, page cache
/// included, carried on by a new process. The old handle stays dead.
fn restarted(dead: &SimFs, case: &Case) -> SimFs {
    let survivor = dead.fork();
    if let Some(k) = case.crash_at {
        survivor.crash_at(k);
    }
    survivor
}

fn append(wal: &Wal, m: &mut Model, rng: &mut Rng, step: usize, n: usize) -> keel_wal::Result<()> {
    let records: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let len = match rng.below(10) {
                0 => 0,
                1 => 1000 + rng.below(1000) as usize,
                _ => rng.below(300) as usize,
            };
            payload(rng, step, len)
        })
        .collect();
    let ticket = wal.submit_batch(records.clone())?;
    let lsns = ticket.lsns();
    for (lsn, p) in lsns.clone().zip(records) {
        m.attempted.insert(lsn, p);
    }
    m.batches.insert(*lsns.start(), *lsns.end());
    ticket.wait()?;
    m.last_acked = Some((*lsns.start(), *lsns.end()));
    m.acked.extend(lsns);
    Ok(())
}

struct Recovered {
    records: Vec<(Lsn, Vec<u8>)>,
    torn: bool,
}

/// Recovery with `rng_seed`'s options, and the workload's keyring.
fn recover(fs: &SimFs, rng_seed: u64, opts: &Options) -> Result<Recovered, Error> {
    let mut rng = Rng::new(rng_seed);
    let recovery_opts = Options {
        keyring: opts.keyring.clone(),
        ..sim_options(fs, &mut rng)
    };
    let (wal, report) = Wal::open(WAL_DIR, recovery_opts)?;
    let records = wal
        .read_from(wal.first_lsn())?
        .map(|r| r.map(|r| (r.lsn, r.payload)))
        .collect::<Result<Vec<_>, _>>()?;
    wal.close()?;
    Ok(Recovered {
        records,
        torn: report.torn_tail.is_some(),
    })
}

/// Runs one case and checks every promise. `Err` describes the first violation.
pub fn run(case: &Case) -> Result<Outcome, String> {
    let fs = SimFs::new(case.seed);
    if let (Some(k), None) = (case.crash_at, case.restart_at) {
        fs.crash_at(k);
    }
    let mut rng = Rng::new(case.seed);
    let opts = sim_options(&fs, &mut rng);
    let (m, fs) = if case.threads > 1 {
        (concurrent_workload(case, &opts)?, fs)
    } else {
        workload(case, &fs, &opts, &mut rng)?
    };
    let mut out = Outcome {
        ops: fs.counts().total,
        syncs: fs.counts().syncs,
        acked: m.acked.len(),
        ..Outcome::default()
    };

    let image = fs.crash(case.seed.wrapping_mul(31).wrapping_add(7));
    if case.rot_bits > 0 {
        rot_a_segment(&image, case.rot_bits, case.seed);
    }
    let recovery_seed = case.seed ^ 0xAB;
    let rec = if case.crash_during_recovery {
        // How many operations does recovery take? Then die at one of them, and recover again.
        let probe = image.fork();
        let _ = recover(&probe, recovery_seed, &opts);
        let n = probe.counts().total.max(1);
        let second = image.fork();
        second.crash_at(rng.below(n));
        let _ = recover(&second, recovery_seed, &opts);
        let image2 = second.crash(case.seed ^ 0xC0FFEE);
        let direct = recover(&image.fork(), recovery_seed, &opts);
        let again = recover(&image2, recovery_seed, &opts);
        match (&direct, &again) {
            (Ok(a), Ok(b)) if a.records != b.records => {
                return Err(format!(
                    "a crash during recovery changed the result: {} records directly, {} after the second crash",
                    a.records.len(),
                    b.records.len()
                ))
            }
            (Ok(_), Err(e)) => return Err(format!("recovery failed after a crash during recovery: {e}")),
            _ => {}
        }
        direct
    } else {
        recover(&image, recovery_seed, &opts)
    };
    // Bit rot and misdirected writes destroy data: failing closed is then the right answer.
    let damaged = case.rot_bits > 0 || case.faults.as_ref().is_some_and(|f| f.misdirect_write > 0);
    let rec = match rec {
        Ok(r) => r,
        Err(Error::Corruption(_)) if damaged => {
            out.failed_closed = true;
            return Ok(out);
        }
        Err(e) => return Err(format!("recovery failed on a crash image: {e}")),
    };
    out.recovered = rec.records.len() as u64;
    out.torn_tail = rec.torn;
    check(&m, &rec, damaged)?;
    Ok(out)
}

fn rot_a_segment(image: &SimFs, bits: u32, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xB17);
    let segs: Vec<String> = image
        .list(Path::new(WAL_DIR))
        .into_iter()
        .filter(|n| n.ends_with(".open") || n.ends_with(".sealed"))
        .collect();
    if segs.is_empty() {
        return;
    }
    let path = Path::new(WAL_DIR).join(&segs[rng.below(segs.len() as u64) as usize]);
    let len = image.durable_bytes(&path).map_or(0, |b| b.len());
    if len > 64 {
        let _ = image.rot(&path, bits, Some(64..len), rng.next_u64());
    }
}

fn check(m: &Model, rec: &Recovered, damaged: bool) -> Result<(), String> {
    // 2: the recovered log is a prefix of what was attempted: no phantoms, no changed bytes.
    for (lsn, p) in &rec.records {
        match m.attempted.get(lsn) {
            Some(a) if a == p => {}
            Some(_) => return Err(format!("LSN {lsn} came back with different bytes")),
            None => {
                return Err(format!(
                    "LSN {lsn} came back but was never attempted (phantom)"
                ))
            }
        }
    }
    let (first, last) = match (rec.records.first(), rec.records.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => (u64::MAX, 0),
    };
    // 1: every acknowledged record is present (unless pruned, or in doubt under a truncation).
    for &lsn in &m.acked {
        if lsn < m.prune_floor || m.truncate_in_flight.is_some_and(|x| lsn > x) {
            continue;
        }
        if lsn < first || lsn > last {
            if damaged
                && rec.torn
                && !m.closed_cleanly
                && m.last_acked.is_some_and(|(f, l)| (f..=l).contains(&lsn))
            {
                // After a crash that lost its mark, damage in the last synced batch reads as a
                // torn tail (reported). After a clean close it must fail closed.
                continue;
            }
            return Err(format!(
                "acknowledged LSN {lsn} is missing (recovered {}..={last}, {} acked, prune floor {}, truncate in flight {:?}) (P1)",
                if first == u64::MAX { 0 } else { first },
                m.acked.len(),
                m.prune_floor,
                m.truncate_in_flight
            ));
        }
    }
    // 3: batches are whole or absent.
    for (&bf, &bl) in &m.batches {
        if bf >= first && bf <= last && bl > last {
            return Err(format!("batch {bf}..={bl} is cut at {last}"));
        }
    }
    Ok(())
}
