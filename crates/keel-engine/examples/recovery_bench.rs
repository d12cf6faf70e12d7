//! Times `Engine::open` of a directory made once, so that recovery can be measured many times
//! (and by two builds) over the same files. Used for issue #18's recovery figures.
//!
//! ```text
//! recovery_bench gen DIR KEYS   # DIR/log: KEYS puts in the log only; DIR/snap: the same, checkpointed
//! recovery_bench open DIR/snap  # one Engine::open (drop the page cache first), its report as a line
//! ```
//! Keys and values are `keel bench engine`'s: 16-byte keys, 100-byte pseudo-random values.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use keel_engine::{Engine, Options, PutIf, Ttl, Write};

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:015}"))
}

fn value(i: u64) -> Bytes {
    let mut v = Vec::with_capacity(104);
    let mut s = i;
    while v.len() < 100 {
        s = splitmix(s);
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(100);
    Bytes::from(v)
}

fn options() -> Options {
    Options {
        background: false,
        ..Options::default()
    }
}

fn gen(dir: &Path, keys: u64) -> Result<(), Box<dyn std::error::Error>> {
    let log = dir.join("log");
    let (engine, _) = Engine::open(&log, options())?;
    let batch = 60_000;
    let mut inflight = VecDeque::new();
    let mut next = 0;
    while next < keys {
        let end = (next + batch).min(keys);
        let writes = (next..end)
            .map(|i| Write::Put {
                key: key(i),
                value: value(i),
                ttl: Ttl::None,
                only: PutIf::Always,
            })
            .collect();
        inflight.push_back(engine.submit(Vec::new(), writes)?);
        next = end;
        if inflight.len() >= 4 {
            inflight.pop_front().expect("non-empty").wait()?;
        }
    }
    for p in inflight {
        p.wait()?;
    }
    engine.close()?;
    let snap = dir.join("snap");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&log)
        .arg(&snap)
        .status()?;
    assert!(status.success());
    let (engine, _) = Engine::open(&snap, options())?;
    engine.checkpoint()?;
    engine.close()?;
    Ok(())
}

fn open(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let (engine, r) = Engine::open(dir, options())?;
    let open_s = t.elapsed().as_secs_f64();
    println!(
        "open {open_s:.3} s | snapshot load {:.3} s | log scan {:.3} s | records {} | keys {}",
        r.snapshot_load.as_secs_f64(),
        r.wal.duration.as_secs_f64(),
        r.records_replayed,
        r.keys
    );
    // Freeing 10M entries takes seconds and is not what is measured: exit with the engine
    // open (nothing was written since it opened).
    std::mem::forget(engine);
    std::process::exit(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => gen(Path::new(&args[2]), args[3].parse()?),
        Some("open") => open(Path::new(&args[2])),
        _ => Err("usage: recovery_bench gen DIR KEYS | open DIR".into()),
    }
}
