//! keel under real power cuts (tests/powercut). Four commands:
//!
//! - `workload` (in the guest): concurrent writers put records and atomic batches into a keel
//!   engine with small segments and frequent checkpoints. Each record's bytes follow from
//!   (seed, id), so a checker can regenerate them. A line `ACK <id>` or `ACKB <first> <n>` is
//!   printed only after keel acknowledged the write.
//! - `dump` (in the guest): opens the directory, which runs recovery, and prints one line per
//!   record, or the typed error recovery failed with.
//! - `verify`: checks a dump (or a directory) against the acknowledgements in a serial log.
//! - `replay` (on the host): reads a dm-log-writes log and writes crash states of the disk.
#![deny(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use keel_engine::{Engine, Outcome, PutIf, Ttl, Write};

#[derive(Parser)]
#[command(about = "keel power-cut test: guest workload, checker and dm-log-writes replayer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write records until killed (or for --secs), printing an ACK line per acknowledged write.
    Workload {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 4)]
        threads: u64,
        /// Stop after this long and close the engine (0: run until killed).
        #[arg(long, default_value_t = 0)]
        secs: u64,
        /// A dm-log-writes device: after new acknowledgements, place a mark in its log.
        #[arg(long)]
        mark_dev: Option<String>,
        /// Keep going after write errors, and report any acknowledgement of a write submitted
        /// after an error was seen.
        #[arg(long)]
        expect_errors: bool,
    },
    /// Open the directory (running recovery) and print every record.
    Dump {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Check recovered records against the acknowledgements in a serial log.
    Verify {
        /// The workload's console output.
        #[arg(long)]
        serial: PathBuf,
        /// A dump's output ...
        #[arg(long, conflicts_with = "dir")]
        dump: Option<PathBuf>,
        /// ... or a directory to open and dump here.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Which acknowledgements must be present: `all`, `none`, or a mark name (the acks
        /// printed before that mark was placed).
        #[arg(long, default_value = "all")]
        required: String,
        /// A label printed with the verdict.
        #[arg(long, default_value = "-")]
        label: String,
    },
    /// Write crash states of a disk recorded with dm-log-writes, one after another into --out.
    Replay {
        #[arg(long)]
        log: PathBuf,
        /// The disk as it was when the log began.
        #[arg(long)]
        base: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Where to write the index: one line per state.
        #[arg(long)]
        index: PathBuf,
        #[arg(long, default_value_t = 200)]
        states: usize,
        /// Skip this many states of the plan (to write the plan in batches).
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Write at most this many states (0: all the remaining).
        #[arg(long, default_value_t = 0)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the log's entries and stop.
        #[arg(long)]
        list: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Workload {
            dir,
            seed,
            threads,
            secs,
            mark_dev,
            expect_errors,
        } => workload(&dir, seed, threads, secs, mark_dev, expect_errors),
        Cmd::Dump { dir } => {
            let out = std::io::stdout();
            let mut out = out.lock();
            dump(&dir, &mut out)?;
            Ok(())
        }
        Cmd::Verify {
            serial,
            dump: dump_file,
            dir,
            required,
            label,
        } => {
            let text = match (dump_file, dir) {
                (Some(p), _) => {
                    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?
                }
                (None, Some(d)) => {
                    let mut v = Vec::new();
                    dump(&d, &mut v)?;
                    String::from_utf8(v)?
                }
                (None, None) => bail!("give --dump or --dir"),
            };
            let serial = std::fs::read_to_string(&serial)
                .with_context(|| format!("read {}", serial.display()))?;
            let v = verify(&serial, &text, &required)?;
            println!("VERDICT {label} {}", v.line());
            if !v.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Replay {
            log,
            base,
            out,
            index,
            states,
            skip,
            batch,
            seed,
            list,
        } => replay(&log, &base, &out, &index, states, skip, batch, seed, list),
    }
}

// ---------------------------------------------------------------------------------------------
// Records: bytes that follow from (seed, id)

fn mix(mut z: u64) -> u64 {
    // splitmix64
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const HEADER_BYTES: usize = 24;

/// Sizes from tens of bytes to a few KiB, so records straddle sectors and pages.
fn value_len(seed: u64, id: u64) -> usize {
    let h = mix(seed ^ mix(id));
    let r = h % 100;
    let x = (h >> 8) as usize;
    HEADER_BYTES
        + match r {
            0..=59 => x % 200,
            60..=89 => 200 + x % 1000,
            _ => 1200 + x % 3000,
        }
}

/// Layout: id u64 | batch's first id u64 | batch size u32 | total length u32 | bytes from a
/// stream seeded by (seed, id). All little-endian.
fn value(seed: u64, id: u64, first: u64, n: u32) -> Vec<u8> {
    let len = value_len(seed, id);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&first.to_le_bytes());
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    let mut r = Rng(mix(seed.wrapping_mul(31) ^ mix(id ^ 0x5eed)));
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn key(id: u64) -> Bytes {
    Bytes::from(format!("r{id:012}"))
}

fn fnv64(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn engine_options() -> keel_engine::Options {
    let mut o = keel_engine::Options::default();
    // Small segments and frequent checkpoints, so that a few seconds of writing rotate
    // segments, write snapshots and prune the log many times.
    o.wal.segment_bytes_max = 256 << 10;
    o.wal.batch_bytes_max = 128 << 10;
    o.wal.record_bytes_max = 96 << 10;
    o.wal.queue_bytes_max = 1 << 20;
    o.key_bytes_max = 1 << 10;
    o.value_bytes_max = 32 << 10;
    o.checkpoint_log_bytes = 4 << 20;
    // tests/powercut/run --encrypt: the guest's init sets this from keelencrypt=1. A fixed test
    // key: the campaign checks durability with sealed frames and snapshots, not secrecy.
    if std::env::var("KEEL_POWERCUT_ENCRYPT").as_deref() == Ok("1") {
        o.wal.keyring = Some(std::sync::Arc::new(
            keel_wal::Keyring::parse(
                "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            )
            .expect("a valid key line"),
        ));
    }
    o
}

// ---------------------------------------------------------------------------------------------
// workload

struct Out {
    /// ACK and ACKB lines printed so far: a mark covers the first `acks` of them.
    acks: u64,
}

fn say(out: &Mutex<Out>, line: &str, ack: bool) {
    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
    let so = std::io::stdout();
    let mut so = so.lock();
    // A console write that fails leaves nothing to report to.
    let _ = writeln!(so, "{line}");
    let _ = so.flush();
    if ack {
        o.acks += 1;
    }
}

fn workload(
    dir: &Path,
    seed: u64,
    threads: u64,
    secs: u64,
    mark_dev: Option<String>,
    expect_errors: bool,
) -> Result<()> {
    let (engine, report) = Engine::open(dir, engine_options()).context("open keel")?;
    let engine = Arc::new(engine);
    let out = Arc::new(Mutex::new(Out { acks: 0 }));
    say(
        &out,
        &format!(
            "START seed={seed} threads={threads} recovered_keys={}",
            report.keys
        ),
        false,
    );
    // Ids continue after whatever a previous run left, so a rerun never reuses one.
    let next_id = Arc::new(AtomicU64::new(1_000_000 * (1 + report.lsn)));
    let error_seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));

    let mut handles = Vec::new();
    for t in 0..threads {
        let (engine, out, next_id, error_seen, stop) = (
            engine.clone(),
            out.clone(),
            next_id.clone(),
            error_seen.clone(),
            stop.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(mix(seed ^ (t + 1).wrapping_mul(0x1234_5678)));
            while !stop.load(Ordering::Relaxed) {
                let n = if rng.below(4) == 0 {
                    2 + rng.below(5)
                } else {
                    1
                };
                let first = next_id.fetch_add(n, Ordering::SeqCst);
                let writes = (first..first + n)
                    .map(|id| Write::Put {
                        key: key(id),
                        value: Bytes::from(value(seed, id, first, n as u32)),
                        ttl: Ttl::None,
                        only: PutIf::Always,
                    })
                    .collect();
                let after_error = error_seen.load(Ordering::SeqCst);
                match engine.commit(Vec::new(), writes) {
                    Ok(Outcome::Committed { lsn: Some(_), .. }) => {
                        if after_error {
                            say(&out, &format!("BADACK {first} {n}"), false);
                        }
                        let line = if n == 1 {
                            format!("ACK {first}")
                        } else {
                            format!("ACKB {first} {n}")
                        };
                        say(&out, &line, true);
                    }
                    Ok(o) => say(&out, &format!("ODD {first} {o:?}"), false),
                    Err(e) => {
                        error_seen.store(true, Ordering::SeqCst);
                        say(&out, &format!("ERR {first} {n} {e}"), false);
                        if !expect_errors {
                            stop.store(true, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }));
    }
    {
        // Explicit checkpoints on top of the size-triggered ones.
        let (engine, out, stop) = (engine.clone(), out.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(3000));
                if let Err(e) = engine.checkpoint() {
                    say(&out, &format!("CHECKPOINT-ERR {e}"), false);
                }
            }
        }));
    }
    if let Some(dev) = mark_dev {
        let (out, stop) = (out.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut k = 0u64;
            let mut last = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = out.lock().unwrap_or_else(|p| p.into_inner()).acks;
                if n == last {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let name = format!("m{k}");
                let ok = match dm_message(&dev, &format!("mark {name}")) {
                    Ok(()) => true,
                    Err(e) => {
                        say(&out, &format!("MARK-ERR {e}"), false);
                        std::thread::sleep(Duration::from_millis(100));
                        false
                    }
                };
                if ok {
                    // Every ack counted in n was printed before the mark entered the log.
                    say(&out, &format!("MARK {name} {n}"), false);
                    last = n;
                    k += 1;
                }
            }
        }));
    }
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let engine = Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("engine still shared"))?;
    match engine.close() {
        Ok(()) => say(&out, "CLOSED", false),
        Err(e) => say(&out, &format!("CLOSE-ERR {e}"), false),
    }
    say(&out, "WORKLOAD-END", false);
    Ok(())
}

/// Sends a message to a device-mapper target, as `dmsetup message <dev> 0 <msg>` does, but
/// without starting a process: a mark must land in the log right after the acknowledgements it
/// covers, before the page cache has had time to write back what a missing sync left behind.
///
/// The buffer is a `struct dm_ioctl` (include/uapi/linux/dm-ioctl.h, 312 bytes) followed by a
/// `struct dm_target_msg`: a u64 sector and the NUL-terminated message.
#[allow(unsafe_code)]
fn dm_message(dev: &str, msg: &str) -> std::io::Result<()> {
    use rustix::ioctl::{ioctl, opcode, Updater};
    const DM_IOCTL_BYTES: usize = 312;
    const DM_TARGET_MSG: rustix::ioctl::Opcode =
        opcode::read_write::<[u8; DM_IOCTL_BYTES]>(0xfd, 14);
    #[repr(C, align(8))]
    struct Buf([u8; 1024]);
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    if dev.len() >= 128 || dev.contains('\0') {
        return Err(invalid("bad device name"));
    }
    let total = DM_IOCTL_BYTES + 8 + msg.len() + 1;
    if total > 1024 || msg.contains('\0') {
        return Err(invalid("message too long"));
    }
    let mut b = Buf([0u8; 1024]);
    let put = |b: &mut Buf, at: usize, v: u32| b.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut b, 0, 4); // version 4.0.0
    put(&mut b, 12, 1024); // data_size
    put(&mut b, 16, DM_IOCTL_BYTES as u32); // data_start
    b.0[48..48 + dev.len()].copy_from_slice(dev.as_bytes()); // name
                                                             // dm_target_msg: sector 0, then the message.
    let m = DM_IOCTL_BYTES + 8;
    b.0[m..m + msg.len()].copy_from_slice(msg.as_bytes());
    let control = File::open("/dev/mapper/control")?;
    // SAFETY: DM_TARGET_MSG reads and writes a `struct dm_ioctl` whose data_size (1024) says how
    // many bytes the kernel may access; `Buf` is exactly that long, 8-aligned like the C
    // struct, and lives until the call returns.
    unsafe { ioctl(&control, Updater::<DM_TARGET_MSG, Buf>::new(&mut b)) }?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dump

fn dump(dir: &Path, out: &mut dyn std::io::Write) -> Result<()> {
    let mut o = engine_options();
    o.background = false;
    match Engine::open(dir, o) {
        Err(e) => {
            let msg = format!("{e:?}").replace('\n', " ");
            writeln!(out, "RECOVERY error {msg}")?;
        }
        Ok((engine, report)) => {
            let torn = report.wal.torn_tail.is_some();
            writeln!(
                out,
                "RECOVERY ok torn={} keys={} lsn={} snapshot_lsn={}",
                u8::from(torn),
                report.keys,
                report.lsn,
                report.snapshot_lsn
            )?;
            let entries: Vec<(Bytes, Bytes)> = engine.read(|v| {
                v.iter()
                    .map(|(k, e)| (k.clone(), e.value.clone()))
                    .collect()
            });
            for (k, v) in &entries {
                let parsed = (v.len() >= HEADER_BYTES).then(|| {
                    let u = |a: usize, b: usize| {
                        let mut x = [0u8; 8];
                        x[..b - a].copy_from_slice(&v[a..b]);
                        u64::from_le_bytes(x)
                    };
                    (u(0, 8), u(8, 16), u(16, 20))
                });
                match parsed {
                    Some((id, first, n)) => writeln!(
                        out,
                        "REC {id} {first} {n} {} {:016x} {}",
                        v.len(),
                        fnv64(v),
                        String::from_utf8_lossy(k)
                    )?,
                    None => writeln!(out, "JUNK {}", String::from_utf8_lossy(k))?,
                }
            }
            engine.close().context("close")?;
        }
    }
    writeln!(out, "DUMPEND")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify

#[derive(Default)]
struct Verdict {
    recovery: String,
    torn: bool,
    records: usize,
    acks_required: usize,
    acked_txns_verified: usize,
    lost: usize,
    bad: usize,
    partial_batches: usize,
    duplicates: usize,
    bad_acks: usize,
    first_problem: Option<String>,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.recovery == "ok"
            && self.lost == 0
            && self.bad == 0
            && self.partial_batches == 0
            && self.duplicates == 0
            && self.bad_acks == 0
    }
    fn problem(&mut self, s: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(s);
        }
    }
    fn line(&self) -> String {
        format!(
            "{} recovery={} torn={} records={} acks_required={} verified={} lost={} bad={} partial_batches={} duplicates={} bad_acks={} first_problem={}",
            if self.ok() { "OK" } else { "FAIL" },
            self.recovery,
            u8::from(self.torn),
            self.records,
            self.acks_required,
            self.acked_txns_verified,
            self.lost,
            self.bad,
            self.partial_batches,
            self.duplicates,
            self.bad_acks,
            self.first_problem.as_deref().unwrap_or("-").replace(' ', "_"),
        )
    }
}

fn verify(serial: &str, dump: &str, required: &str) -> Result<Verdict> {
    let mut v = Verdict::default();
    let mut seed = None;
    let mut acks: Vec<(u64, u64)> = Vec::new();
    let mut marks: HashMap<String, usize> = HashMap::new();
    // The console interleaves kernel messages; only well-formed lines count. A power cut can
    // tear the last line ("ACK 12" of "ACK 1234"): only complete lines count.
    let complete = match serial.rfind('\n') {
        Some(i) => &serial[..=i],
        None => "",
    };
    for line in complete.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["START", s, ..] if s.starts_with("seed=") => seed = s[5..].parse().ok(),
            ["ACK", id] => {
                if let Ok(id) = id.parse() {
                    acks.push((id, 1));
                }
            }
            ["ACKB", first, n] => {
                if let (Ok(a), Ok(b)) = (first.parse(), n.parse()) {
                    acks.push((a, b));
                }
            }
            ["MARK", name, n] => {
                if let Ok(n) = n.parse() {
                    marks.insert(name.to_string(), n);
                }
            }
            ["BADACK", ..] => {
                v.bad_acks += 1;
                v.problem(format!("acknowledged after an error: {line}"));
            }
            _ => {}
        }
    }
    let seed = seed.context("no START line in the serial log")?;
    let required_n = match required {
        "all" => acks.len(),
        "none" => 0,
        m => *marks
            .get(m)
            .with_context(|| format!("mark {m} not in the serial log"))?,
    };
    v.acks_required = required_n;

    let mut recs: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let mut ended = false;
    for line in dump.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["RECOVERY", "ok", rest @ ..] => {
                v.recovery = "ok".into();
                v.torn = rest.contains(&"torn=1");
            }
            ["RECOVERY", "error", ..] => {
                v.recovery = "error".into();
                v.problem(line.chars().take(300).collect());
            }
            ["REC", id, first, n, len, hash, key] => {
                v.records += 1;
                let (id, first, n, len): (u64, u64, u32, usize) =
                    (id.parse()?, first.parse()?, n.parse()?, len.parse()?);
                let good = n >= 1
                    && id >= first
                    && id < first + u64::from(n)
                    && *key == std::str::from_utf8(&self::key(id))?
                    && {
                        let want = value(seed, id, first, n);
                        want.len() == len && format!("{:016x}", fnv64(&want)) == *hash
                    };
                if !good {
                    v.bad += 1;
                    v.problem(format!("bad record {line}"));
                    continue;
                }
                if recs.insert(id, (first, n)).is_some() {
                    v.duplicates += 1;
                    v.problem(format!("duplicate id {id}"));
                }
            }
            ["JUNK", ..] => {
                v.bad += 1;
                v.problem(format!("unparseable record {line}"));
            }
            ["DUMPEND"] => ended = true,
            _ => {}
        }
    }
    if v.recovery.is_empty() || !ended {
        v.recovery = "no-dump".into();
        v.problem("the dump is incomplete".into());
    }
    // Batches are whole.
    for (&id, &(first, n)) in &recs {
        if id == first {
            let whole = (first..first + u64::from(n)).all(|i| recs.get(&i) == Some(&(first, n)));
            if !whole {
                v.partial_batches += 1;
                v.problem(format!("batch {first}+{n} is partial"));
            }
        } else if recs.get(&first) != Some(&(first, n)) {
            v.partial_batches += 1;
            v.problem(format!("batch {first}+{n} lacks its first record"));
        }
    }
    // Every required acknowledgement is there, whole.
    for &(first, n) in &acks[..required_n.min(acks.len())] {
        let whole = (first..first + n).all(|i| recs.get(&i) == Some(&(first, n as u32)));
        if whole {
            v.acked_txns_verified += 1;
        } else {
            v.lost += 1;
            v.problem(format!("acknowledged {first}+{n} is missing"));
        }
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// replay: dm-log-writes, from Documentation/admin-guide/device-mapper/log-writes.rst
//
// The log device starts with a super block (all little-endian):
//
//     0   8  magic        0x6a736677736872
//     8   8  version      1
//    16   8  nr_entries
//    24   4  sectorsize   the data device's logical block size: the unit of everything below
//
// Entries follow from block 1 on. Each entry takes one block:
//
//     0   8  sector       where the write went, in sectorsize units
//     8   8  nr_sectors   its length, in sectorsize units
//    16   8  flags        FLUSH 1, FUA 2, DISCARD 4, MARK 8, METADATA 16
//    24   8  data_len     a mark: the length of its name, stored right after the entry in the
//                         same block. Otherwise nonzero only for inline data, which then
//                         follows in the next blocks.
//
// A write's data (nr_sectors blocks) follows its entry block. Writes are logged once they are
// known to be on stable storage: ordinary writes when the next flush completes (just before the
// flush entry), FUA writes when they complete. So the writes logged just before a flush are the
// ones the flush made durable, and in a crash before that flush completed any subset of them may
// have reached the disk.

const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
const FLUSH: u64 = 1;
const FUA: u64 = 2;
const DISCARD: u64 = 4;
const MARK: u64 = 8;

struct LogEntry {
    sector: u64,
    nr_sectors: u64,
    flags: u64,
    /// Byte offset of the data in the log.
    data_at: u64,
    data_bytes: u64,
    mark: Option<String>,
}

fn read_log(log: &File) -> Result<(u64, Vec<LogEntry>)> {
    let mut sb = [0u8; 28];
    log.read_exact_at(&mut sb, 0)
        .context("read log super block")?;
    let u = |a: usize| u64::from_le_bytes(sb[a..a + 8].try_into().unwrap());
    if u(0) != LOG_MAGIC {
        bail!("not a dm-log-writes log: magic {:#x}", u(0));
    }
    if u(8) != 1 {
        bail!("unknown dm-log-writes version {}", u(8));
    }
    let nr = u(16);
    let bs = u64::from(u32::from_le_bytes(sb[24..28].try_into().unwrap()));
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
        bail!("bad sectorsize {bs}");
    }
    let log_bytes = log.metadata()?.len();
    let mut entries = Vec::with_capacity(nr.min(1 << 24) as usize);
    let mut at = bs;
    let mut block = vec![0u8; bs as usize];
    for i in 0..nr {
        if at + bs > log_bytes {
            bail!("entry {i} at byte {at} is past the log's end");
        }
        log.read_exact_at(&mut block, at)?;
        let g = |a: usize| u64::from_le_bytes(block[a..a + 8].try_into().unwrap());
        let (sector, nr_sectors, flags, data_len) = (g(0), g(8), g(16), g(24));
        at += bs;
        let mut e = LogEntry {
            sector,
            nr_sectors,
            flags,
            data_at: at,
            data_bytes: 0,
            mark: None,
        };
        if flags & MARK != 0 {
            let n = (data_len as usize).min(bs as usize - 32);
            e.mark = Some(String::from_utf8_lossy(&block[32..32 + n]).into_owned());
        } else if flags & DISCARD == 0 {
            e.data_bytes = if data_len > 0 {
                data_len
            } else {
                nr_sectors * bs
            };
            at += e.data_bytes.div_ceil(bs) * bs;
        }
        entries.push(e);
    }
    Ok((bs, entries))
}

fn apply(
    img: &mut [u8],
    log: &File,
    bs: u64,
    e: &LogEntry,
    sectors: Option<&[bool]>,
) -> Result<()> {
    if e.flags & MARK != 0 {
        return Ok(());
    }
    let start = (e.sector * bs) as usize;
    if e.flags & DISCARD != 0 {
        let end = ((e.sector + e.nr_sectors) * bs) as usize;
        if end > img.len() {
            bail!("discard past the disk's end");
        }
        img[start..end].fill(0);
        return Ok(());
    }
    if e.data_bytes == 0 {
        return Ok(());
    }
    let end = start + e.data_bytes as usize;
    if end > img.len() {
        bail!("write at sector {} past the disk's end", e.sector);
    }
    match sectors {
        None => log.read_exact_at(&mut img[start..end], e.data_at)?,
        Some(keep) => {
            let mut buf = vec![0u8; e.data_bytes as usize];
            log.read_exact_at(&mut buf, e.data_at)?;
            for (i, chunk) in buf.chunks(512).enumerate() {
                if keep.get(i).copied().unwrap_or(false) {
                    let a = start + i * 512;
                    img[a..a + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone)]
enum Kind {
    /// Everything up to and including this entry.
    Prefix(&'static str),
    /// Everything up to boundary `b`, plus some writes of the epoch after it; `torn` is one more
    /// write of which only some 512-byte sectors arrive.
    Subset {
        writes: Vec<usize>,
        torn: Option<(usize, Vec<bool>)>,
    },
}

struct State {
    /// Entries 0..=upto are applied whole.
    upto: usize,
    kind: Kind,
    /// The last mark whose acknowledgements must survive.
    required: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn replay(
    log_path: &Path,
    base: &Path,
    out: &Path,
    index: &Path,
    want: usize,
    skip: usize,
    batch: usize,
    seed: u64,
    list: bool,
) -> Result<()> {
    let log = File::open(log_path).with_context(|| format!("open {}", log_path.display()))?;
    let (bs, entries) = read_log(&log)?;
    if list {
        for (i, e) in entries.iter().enumerate() {
            println!(
                "{i} sector={} n={} flags={:#x} mark={}",
                e.sector,
                e.nr_sectors,
                e.flags,
                e.mark.as_deref().unwrap_or("-")
            );
        }
        return Ok(());
    }
    // Boundaries: flush and FUA entries. Everything logged before one is durable once it is.
    let boundaries: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].flags & (FLUSH | FUA) != 0)
        .collect();
    let marks: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].mark.is_some())
        .collect();
    // The workload's marks are m0, m1, ...; dm-log-writes adds "dm-log-writes-end" when the
    // device is removed, after the workload closed keel: everything acknowledged is behind it.
    let last_mark_upto = |i: usize| -> Option<String> {
        let k = marks.partition_point(|&m| m <= i);
        (k > 0).then(|| match entries[marks[k - 1]].mark.as_deref() {
            Some("dm-log-writes-end") => "all".to_string(),
            m => m.unwrap_or_default().to_string(),
        })
    };
    let mut rng = Rng(mix(seed ^ 0xc0ffee));
    let mut plan: Vec<State> = Vec::new();
    // Marks and flushes, evenly spread over the log (all of them if they fit), take up to half
    // of the budget.
    let mut candidates: Vec<(usize, &'static str)> = marks.iter().map(|&m| (m, "mark")).collect();
    candidates.extend(boundaries.iter().map(|&b| (b, "flush")));
    candidates.sort_unstable();
    let prefix_budget = (want / 2).max(1);
    let mut prefixes = Vec::new();
    if !candidates.is_empty() {
        let step = (candidates.len() as f64 / prefix_budget as f64).max(1.0);
        let mut x = 0.0;
        while (x as usize) < candidates.len() && prefixes.len() < prefix_budget {
            prefixes.push(candidates[x as usize]);
            x += step;
        }
        // Always the end of the log.
        if let Some(&last) = candidates.last() {
            if prefixes.last() != Some(&last) {
                prefixes.pop();
                prefixes.push(last);
            }
        }
    }
    for (i, what) in prefixes {
        plan.push(State {
            upto: i,
            kind: Kind::Prefix(what),
            required: last_mark_upto(i),
        });
    }
    // Epochs: the writes between two boundaries (and after the last one).
    let mut epochs: Vec<(Option<usize>, Vec<usize>, usize)> = Vec::new();
    let mut prev: Option<usize> = None;
    for &b in boundaries.iter().chain(std::iter::once(&entries.len())) {
        let lo = prev.map_or(0, |p| p + 1);
        let writes: Vec<usize> = (lo..b)
            .filter(|&i| entries[i].flags & MARK == 0 && entries[i].data_bytes > 0)
            .collect();
        if !writes.is_empty() {
            epochs.push((prev, writes, b));
        }
        prev = Some(b);
    }
    while plan.len() < want && !epochs.is_empty() {
        let (b, writes, end) = &epochs[rng.below(epochs.len() as u64) as usize];
        let mut chosen: Vec<usize> = writes
            .iter()
            .copied()
            .filter(|_| rng.below(2) == 0)
            .collect();
        let torn = if rng.below(3) == 0 {
            let w = writes[rng.below(writes.len() as u64) as usize];
            chosen.retain(|&x| x != w);
            let n = entries[w].data_bytes.div_ceil(512) as usize;
            let keep: Vec<bool> = (0..n).map(|_| rng.below(2) == 0).collect();
            Some((w, keep))
        } else {
            None
        };
        // A mark before the epoch's closing boundary had its acknowledgements made durable by
        // a boundary at or before the epoch's start.
        let required = if *end == 0 {
            None
        } else {
            last_mark_upto(*end - 1)
        };
        plan.push(State {
            upto: b.map_or(usize::MAX, |b| b),
            kind: Kind::Subset {
                writes: chosen,
                torn,
            },
            required,
        });
    }
    // Write them in log order, moving one image forward.
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| plan[i].upto.wrapping_add(1));
    let mut base_f = File::open(base)?;
    let mut img = Vec::new();
    base_f.read_to_end(&mut img)?;
    let size = img.len() as u64;
    let end = if batch == 0 {
        plan.len()
    } else {
        (skip + batch).min(plan.len())
    };
    let selected: Vec<usize> = order
        .into_iter()
        .skip(skip)
        .take(end.saturating_sub(skip))
        .collect();
    let outf = File::create(out)?;
    outf.set_len(size * selected.len() as u64)?;
    let mut idx = std::io::BufWriter::new(File::create(index)?);
    // Applied: entries [0, applied).
    let mut applied = 0usize;
    let mut scratch = Vec::new();
    for (slot, &si) in selected.iter().enumerate() {
        let s = &plan[si];
        let target = s.upto.wrapping_add(1);
        // The plan is sorted, except that a skipped batch starts elsewhere: catch up.
        if target < applied {
            bail!("replay plan out of order");
        }
        while applied < target {
            apply(&mut img, &log, bs, &entries[applied], None)?;
            applied += 1;
        }
        let (what, image): (String, &[u8]) = match &s.kind {
            Kind::Prefix(w) => (format!("{w}@{}", s.upto), &img),
            Kind::Subset { writes, torn } => {
                scratch.clear();
                scratch.extend_from_slice(&img);
                for &w in writes {
                    apply(&mut scratch, &log, bs, &entries[w], None)?;
                }
                if let Some((w, keep)) = torn {
                    apply(&mut scratch, &log, bs, &entries[*w], Some(keep))?;
                }
                let k = if torn.is_some() { "torn" } else { "subset" };
                (
                    format!(
                        "{k}@{}+{}",
                        target,
                        writes.len() + usize::from(torn.is_some())
                    ),
                    &scratch,
                )
            }
        };
        // Only nonzero blocks are written: the output is sparse.
        let off = slot as u64 * size;
        for (j, chunk) in image.chunks(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                outf.write_all_at(chunk, off + (j * 4096) as u64)?;
            }
        }
        writeln!(
            idx,
            "{slot} {} {what} {}",
            skip + slot,
            s.required.as_deref().unwrap_or("none")
        )?;
    }
    idx.flush()?;
    eprintln!(
        "replay: {} entries ({} flush/FUA, {} marks), plan of {} states, wrote {} ({}..{}) of {} bytes each",
        entries.len(),
        boundaries.len(),
        marks.len(),
        plan.len(),
        selected.len(),
        skip,
        end,
        size
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(seed: u64) -> String {
        format!("START seed={seed} threads=1\nACK 10\nACKB 11 3\nMARK m0 2\nACK 14\n")
    }

    fn rec(seed: u64, id: u64, first: u64, n: u32) -> String {
        let v = value(seed, id, first, n);
        format!(
            "REC {id} {first} {n} {} {:016x} r{id:012}\n",
            v.len(),
            fnv64(&v)
        )
    }

    fn dump_of(seed: u64, recs: &[(u64, u64, u32)]) -> String {
        let mut d = String::from("RECOVERY ok torn=0 keys=0 lsn=0 snapshot_lsn=0\n");
        for &(id, first, n) in recs {
            d += &rec(seed, id, first, n);
        }
        d + "DUMPEND\n"
    }

    const ALL: [(u64, u64, u32); 5] = [
        (10, 10, 1),
        (11, 11, 3),
        (12, 11, 3),
        (13, 11, 3),
        (14, 14, 1),
    ];

    #[test]
    fn verify_accepts_everything_acknowledged() {
        let v = verify(&serial(5), &dump_of(5, &ALL), "all").unwrap();
        assert!(v.ok(), "{}", v.line());
        assert_eq!(v.acked_txns_verified, 3);
    }

    #[test]
    fn verify_ignores_a_torn_last_line() {
        // Killed while printing "ACK 14": the ack was never completely reported.
        let torn = serial(5) + "ACK 1";
        let v = verify(&torn, &dump_of(5, &ALL), "all").unwrap();
        assert!(v.ok(), "{}", v.line());
        assert_eq!(v.acks_required, 3);
    }

    #[test]
    fn verify_catches_loss_partial_batches_and_phantoms() {
        // The last ack lost: fine before mark m0, not for "all".
        let d = dump_of(5, &ALL[..4]);
        assert!(verify(&serial(5), &d, "m0").unwrap().ok());
        assert_eq!(verify(&serial(5), &d, "all").unwrap().lost, 1);
        // Half a batch.
        let d = dump_of(5, &[(10, 10, 1), (11, 11, 3), (13, 11, 3)]);
        let v = verify(&serial(5), &d, "none").unwrap();
        assert_eq!((v.ok(), v.partial_batches), (false, 1));
        // Bytes from another seed: not what the workload wrote.
        let d = dump_of(6, &[(10, 10, 1)]);
        assert_eq!(verify(&serial(5), &d, "none").unwrap().bad, 1);
        // Recovery that failed closed, or a dump cut short, is not a pass.
        let d = "RECOVERY error Corruption { .. }\nDUMPEND\n";
        assert!(!verify(&serial(5), d, "none").unwrap().ok());
        assert!(!verify(&serial(5), "RECOVERY ok torn=0\n", "none")
            .unwrap()
            .ok());
    }

    /// A log written the way dm-log-writes writes one: super block, then entries.
    #[test]
    fn replay_reads_the_log_format() {
        let bs = 512usize;
        let mut log = vec![0u8; bs];
        let entry = |log: &mut Vec<u8>, sector: u64, n: u64, flags: u64, data: &[u8]| {
            let mut b = vec![0u8; bs];
            b[0..8].copy_from_slice(&sector.to_le_bytes());
            b[8..16].copy_from_slice(&n.to_le_bytes());
            b[16..24].copy_from_slice(&flags.to_le_bytes());
            if flags & MARK != 0 {
                b[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
                b[32..32 + data.len()].copy_from_slice(data);
                log.extend_from_slice(&b);
            } else {
                log.extend_from_slice(&b);
                log.extend_from_slice(data);
            }
        };
        entry(&mut log, 2, 2, 0, &[7u8; 1024]);
        entry(&mut log, 0, 0, FLUSH, &[]);
        entry(&mut log, 0, 0, MARK, b"m0");
        entry(&mut log, 1, 1, FUA, &[9u8; 512]);
        log[0..8].copy_from_slice(&LOG_MAGIC.to_le_bytes());
        log[8..16].copy_from_slice(&1u64.to_le_bytes());
        log[16..24].copy_from_slice(&4u64.to_le_bytes());
        log[24..28].copy_from_slice(&512u32.to_le_bytes());
        let dir = std::env::temp_dir().join(format!("keel-powercut-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("log");
        std::fs::write(&p, &log).unwrap();
        let f = File::open(&p).unwrap();
        let (got_bs, entries) = read_log(&f).unwrap();
        assert_eq!((got_bs, entries.len()), (512, 4));
        assert_eq!(entries[2].mark.as_deref(), Some("m0"));
        let mut img = vec![0u8; 4 * 512];
        for e in &entries {
            apply(&mut img, &f, 512, e, None).unwrap();
        }
        assert!(img[..512].iter().all(|&b| b == 0));
        assert!(img[512..1024].iter().all(|&b| b == 9));
        assert!(img[1024..].iter().all(|&b| b == 7));
        // A torn write: only the sectors kept arrive.
        let mut img = vec![0u8; 4 * 512];
        apply(&mut img, &f, 512, &entries[0], Some(&[false, true])).unwrap();
        assert!(img[1024..1536].iter().all(|&b| b == 0));
        assert!(img[1536..].iter().all(|&b| b == 7));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
