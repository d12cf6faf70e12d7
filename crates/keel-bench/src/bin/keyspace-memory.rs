//! keyspace-memory: RSS growth per key and insert time per key of keel's keyspace structures.
//!
//! Each workload runs in a fresh child process (this binary, re-executed), which reads its RSS
//! from /proc/self/status, loads the keys, reads it again and prints one line; the parent prints
//! the table. Runs under mimalloc, the allocator the keel server uses, so the figures compare
//! with the server's (and with issue 18's 662 bytes per key for today's keyspace in the server).
//!
//! Workloads:
//! - `table-strings`: the new `keel_engine::table::Table`, N keys of 16 bytes, values of 100;
//! - `ordmap-strings`: the engine's visible state before the table replaced it, reproduced: `imbl::OrdMap<Key, Entry>` plus the
//!   `HashMap<Bytes, Entry>` index beside it, key and value bytes shared between the two;
//! - `engine-strings`: a real `Engine` (no background thread, log never synced) given N puts,
//!   which adds the sequencer's state and the log's buffers to the above;
//! - `table-hashes`, `table-sets`, `table-zsets`, `table-lists`: the new table with N/10 hashes
//!   of 20 fields, N/10 sets of 20 members, N/10 sorted sets of 20 members, N/100 lists of 1000
//!   elements.
//!
//! For the string workloads of the table and of today's map, the child then overwrites every key
//! and reads every key, in a scattered order, and reports the time per key of each.
//!
//! `cargo run --release -p keel-bench --bin keyspace-memory -- [--keys N] [WORKLOAD...]`

#[path = "../ordkey.rs"]
mod ordkey;

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use keel_engine::table::{HashValue, ListValue, SetValue, Table, Value, ValueMut, ZSetValue};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WORKLOADS: &[&str] = &[
    "table-strings",
    "ordmap-strings",
    "engine-strings",
    "table-hashes",
    "table-sets",
    "table-zsets",
    "table-lists",
];

/// Resident set size, from /proc/self/status (what statm counts in pages, here in KiB).
fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("status has VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("VmRSS is a number of kB")?;
    Ok(kib * 1024)
}

/// `key:` and a zero-padded number: 16 bytes.
fn key16(i: usize) -> [u8; 16] {
    let mut k = [0u8; 16];
    let s = format!("key:{i:012}");
    k.copy_from_slice(s.as_bytes());
    k
}

fn value100(i: usize) -> [u8; 100] {
    let mut v = [b'v'; 100];
    let s = format!("{i:012}");
    v[..12].copy_from_slice(s.as_bytes());
    v
}

/// What a child loaded: (items it counts per, items, the table's own estimate of its heap).
struct Loaded {
    what: String,
    items: usize,
    estimate: Option<usize>,
    keep: Box<dyn std::any::Any>,
}

fn load(workload: &str, n: usize) -> Result<Loaded> {
    Ok(match workload {
        "table-strings" => {
            let mut t = Table::with_expected_keys(n);
            for i in 0..n {
                t.insert_string(&key16(i), &value100(i), None, i as u64 + 1);
            }
            Loaded {
                what: "string keys (16 B key, 100 B value)".into(),
                items: n,
                estimate: Some(t.memory_bytes()),
                keep: Box::new(t),
            }
        }
        "ordmap-strings" => {
            type Index =
                std::collections::HashMap<Bytes, keel_engine::Entry, foldhash::fast::RandomState>;
            let mut map: imbl::OrdMap<ordkey::Key, keel_engine::Entry> = imbl::OrdMap::new();
            let mut index = Index::default();
            for i in 0..n {
                let key = Bytes::copy_from_slice(&key16(i));
                let e = keel_engine::Entry {
                    value: Bytes::copy_from_slice(&value100(i)),
                    version: i as u64 + 1,
                    expires_at_ms: None,
                };
                map.insert(ordkey::Key::new(key.clone()), e.clone());
                index.insert(key, e);
            }
            Loaded {
                what: "string keys (16 B key, 100 B value)".into(),
                items: n,
                estimate: None,
                keep: Box::new((map, index)),
            }
        }
        "engine-strings" => {
            let dir = tempfile::tempdir()?;
            let mut o = keel_engine::Options {
                background: false,
                ..Default::default()
            };
            o.wal.sync_policy = keel_wal::SyncPolicy::Never;
            let (engine, _) = keel_engine::Engine::open(dir.path(), o)?;
            for i in 0..n {
                engine.put(
                    Bytes::copy_from_slice(&key16(i)),
                    Bytes::copy_from_slice(&value100(i)),
                )?;
            }
            Loaded {
                what: "string keys (16 B key, 100 B value)".into(),
                items: n,
                estimate: None,
                keep: Box::new((engine, dir)),
            }
        }
        "table-hashes" => {
            let keys = n / 10;
            let mut t = Table::with_expected_keys(keys);
            for i in 0..keys {
                let ValueMut::Hash(h) = t
                    .get_or_insert_with(&key16(i), || Value::Hash(HashValue::new()), 1)
                    .value_mut()
                else {
                    bail!("a hash");
                };
                for f in 0..20 {
                    h.insert(format!("field:{f}").as_bytes(), &value100(i)[..16]);
                }
            }
            Loaded {
                what: "hashes of 20 fields (field:N, 16 B values)".into(),
                items: keys,
                estimate: Some(t.memory_bytes()),
                keep: Box::new(t),
            }
        }
        "table-sets" => {
            let keys = n / 10;
            let mut t = Table::with_expected_keys(keys);
            for i in 0..keys {
                let ValueMut::Set(s) = t
                    .get_or_insert_with(&key16(i), || Value::Set(SetValue::new()), 1)
                    .value_mut()
                else {
                    bail!("a set");
                };
                for m in 0..20 {
                    s.insert(format!("member:{m}").as_bytes());
                }
            }
            Loaded {
                what: "sets of 20 members (member:N)".into(),
                items: keys,
                estimate: Some(t.memory_bytes()),
                keep: Box::new(t),
            }
        }
        "table-zsets" => {
            let keys = n / 10;
            let mut t = Table::with_expected_keys(keys);
            for i in 0..keys {
                let ValueMut::ZSet(z) = t
                    .get_or_insert_with(&key16(i), || Value::ZSet(ZSetValue::new()), 1)
                    .value_mut()
                else {
                    bail!("a sorted set");
                };
                for m in 0..20 {
                    z.insert(format!("member:{m}").as_bytes(), (i + m) as f64);
                }
            }
            Loaded {
                what: "sorted sets of 20 members (member:N, integral scores)".into(),
                items: keys,
                estimate: Some(t.memory_bytes()),
                keep: Box::new(t),
            }
        }
        "table-lists" => {
            let keys = n / 100;
            let mut t = Table::with_expected_keys(keys);
            for i in 0..keys {
                let ValueMut::List(l) = t
                    .get_or_insert_with(&key16(i), || Value::List(ListValue::new()), 1)
                    .value_mut()
                else {
                    bail!("a list");
                };
                for e in 0..1000 {
                    l.push_back(&value100(e)[..16]);
                }
            }
            Loaded {
                what: "lists of 1000 elements (16 B)".into(),
                items: keys,
                estimate: Some(t.memory_bytes()),
                keep: Box::new(t),
            }
        }
        w => bail!("unknown workload {w}; known: {}", WORKLOADS.join(", ")),
    })
}

/// The i-th key of a scattered walk over all `n` keys: 2654435761 is a prime above any `n`
/// used here, so `i -> i * p mod n` visits each key once, in an order with no locality.
fn scattered(i: usize, n: usize) -> usize {
    ((i as u128 * 2_654_435_761) % n as u128) as usize
}

/// With the string keys loaded: ns per overwrite of an existing key (the publish step's work:
/// new key and value bytes arrive from a request) and per point read, in a scattered order.
fn steady(workload: &str, keep: &mut dyn std::any::Any, n: usize) -> Option<(f64, f64)> {
    type OrdMapAndIndex = (
        imbl::OrdMap<ordkey::Key, keel_engine::Entry>,
        std::collections::HashMap<Bytes, keel_engine::Entry, foldhash::fast::RandomState>,
    );
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e9 / n as f64;
    let mut found = 0usize;
    let r = match workload {
        "table-strings" => {
            let t: &mut Table = keep.downcast_mut()?;
            let t0 = Instant::now();
            for i in 0..n {
                let k = scattered(i, n);
                t.insert_string(&key16(k), &value100(k + 1), None, 2);
            }
            let replace = per(t0);
            let t0 = Instant::now();
            for i in 0..n {
                let k = scattered(i, n);
                found += t.get(&key16(k)).is_some() as usize;
            }
            (replace, per(t0))
        }
        "ordmap-strings" => {
            let (map, index): &mut OrdMapAndIndex = keep.downcast_mut()?;
            let t0 = Instant::now();
            for i in 0..n {
                let k = scattered(i, n);
                let key = Bytes::copy_from_slice(&key16(k));
                let e = keel_engine::Entry {
                    value: Bytes::copy_from_slice(&value100(k + 1)),
                    version: 2,
                    expires_at_ms: None,
                };
                map.insert(ordkey::Key::new(key.clone()), e.clone());
                index.insert(key, e);
            }
            let replace = per(t0);
            let t0 = Instant::now();
            for i in 0..n {
                let k = scattered(i, n);
                found += index.get(&key16(k)[..]).is_some() as usize;
            }
            (replace, per(t0))
        }
        _ => return None,
    };
    assert_eq!(found, n, "every key is found");
    Some(r)
}

fn child(workload: &str, n: usize) -> Result<()> {
    let before = rss_bytes()?;
    let t0 = Instant::now();
    let mut loaded = load(workload, n)?;
    let secs = t0.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    let steady = steady(workload, loaded.keep.as_mut(), n)
        .map_or("-\t-".to_string(), |(r, g)| format!("{r:.0} ns\t{g:.0} ns"));
    // One line for the parent: workload, items, rss growth, seconds, estimate, description,
    // overwrite and read times.
    println!(
        "{workload}\t{}\t{}\t{secs}\t{}\t{}\t{steady}",
        loaded.items,
        after.saturating_sub(before),
        loaded.estimate.map_or("-".to_string(), |e| e.to_string()),
        loaded.what
    );
    drop(loaded.keep);
    Ok(())
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut n = 1_000_000usize;
    if let Some(i) = args.iter().position(|a| a == "--keys") {
        n = args
            .get(i + 1)
            .context("--keys N")?
            .parse()
            .context("--keys N")?;
        args.drain(i..i + 2);
    }
    if args.first().map(String::as_str) == Some("--child") {
        return child(args.get(1).context("--child WORKLOAD")?, n);
    }
    let workloads: Vec<String> = if args.is_empty() {
        WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        args
    };
    let exe = std::env::current_exe()?;
    println!(
        "| workload | shape | items | RSS growth | bytes per item | table's estimate per item | insert time per item | overwrite per key | read per key |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for w in &workloads {
        let out = Command::new(&exe)
            .args(["--keys", &n.to_string(), "--child", w])
            .output()
            .with_context(|| format!("run child {w}"))?;
        if !out.status.success() {
            bail!(
                "child {w} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let line = String::from_utf8(out.stdout)?;
        let f: Vec<&str> = line.trim().split('\t').collect();
        let [_, items, grown, secs, estimate, what, overwrite, read] = f[..] else {
            bail!("child {w} printed {line:?}");
        };
        let (items, grown, secs): (f64, f64, f64) = (items.parse()?, grown.parse()?, secs.parse()?);
        let estimate = estimate
            .parse::<f64>()
            .map_or("-".to_string(), |e| format!("{:.0} B", e / items));
        println!(
            "| {w} | {what} | {items} | {:.1} MiB | {:.0} B | {estimate} | {:.0} ns | {overwrite} | {read} |",
            grown / (1 << 20) as f64,
            grown / items,
            secs * 1e9 / items
        );
    }
    Ok(())
}
