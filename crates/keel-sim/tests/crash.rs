//! keel-wal through thousands of simulated power cuts.
//!
//! A failure prints the case and a command that replays exactly it. Long campaigns:
//! `KEEL_SIM_SEEDS=100000 cargo test -p keel-sim --release -- --nocapture`.

use std::time::Instant;

use keel_sim::workload::{run, Case, Outcome};
use keel_sim::{Faults, Rng};

fn seeds(default: u64) -> u64 {
    std::env::var("KEEL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn must_pass(case: &Case) -> Outcome {
    match run(case) {
        Ok(o) => o,
        Err(why) => panic!(
            "\nSIM FAILURE: {why}\n  case: {case}\n  replay: KEEL_SIM_REPLAY='{}' cargo test -p keel-sim --release --test crash replay -- --nocapture\n",
            replay_string(case)
        ),
    }
}

fn replay_string(c: &Case) -> String {
    let f = c.faults.clone().unwrap_or_default();
    format!(
        "{} {} {} {} {} {} {} {} {} {} {} {}",
        c.seed,
        c.steps,
        c.crash_at.map_or(-1, |k| k as i64),
        c.rot_bits,
        c.crash_during_recovery as u8,
        f.eio_on_write,
        f.eio_on_sync,
        f.space_bytes.map_or(-1, |b| b as i64),
        f.short_write_percent,
        f.misdirect_write,
        c.threads,
        c.restart_at.map_or(-1, |r| r as i64),
    )
}

/// Replays one case printed by a failure: `KEEL_SIM_REPLAY='<numbers>'`.
#[test]
fn replay() {
    let Ok(s) = std::env::var("KEEL_SIM_REPLAY") else {
        return;
    };
    let n: Vec<i64> = s
        .split_whitespace()
        .map(|x| x.parse().expect("numbers"))
        .collect();
    let faults = Faults {
        eio_on_write: n[5] as u64,
        eio_on_sync: n[6] as u64,
        space_bytes: (n[7] >= 0).then_some(n[7] as u64),
        short_write_percent: n[8] as u64,
        misdirect_write: n[9] as u64,
        misdirect_by: 512,
        ..Faults::default()
    };
    let case = Case {
        seed: n[0] as u64,
        steps: n[1] as usize,
        crash_at: (n[2] >= 0).then_some(n[2] as u64),
        faults: (faults.eio_on_write
            + faults.eio_on_sync
            + faults.short_write_percent
            + faults.misdirect_write
            > 0
            || faults.space_bytes.is_some())
        .then_some(faults),
        rot_bits: n[3] as u32,
        crash_during_recovery: n[4] != 0,
        threads: n.get(10).map_or(1, |&t| t as usize),
        restart_at: n.get(11).filter(|&&r| r >= 0).map(|&r| r as u64),
    };
    println!("{:?}", must_pass(&case));
}

/// Small workloads, crashed at every operation index they issue.
#[test]
fn exhaustive_crash_points() {
    let t = Instant::now();
    let mut states = 0u64;
    for seed in 0..seeds(150) {
        let clean = must_pass(&Case {
            seed,
            steps: 10,
            ..Case::default()
        });
        for k in 0..clean.ops {
            must_pass(&Case {
                seed,
                steps: 10,
                crash_at: Some(k),
                ..Case::default()
            });
            states += 1;
        }
    }
    report("exhaustive crash points", states, t);
    assert!(states >= seeds(150) * 20, "{states}");
}

/// Longer workloads crashed at random points, and crashed again during recovery.
#[test]
fn random_crash_points_and_crash_during_recovery() {
    let t = Instant::now();
    let mut states = 0u64;
    for seed in 0..seeds(400) {
        let mut rng = Rng::new(seed);
        let steps = 20 + rng.below(60) as usize;
        let clean = must_pass(&Case {
            seed,
            steps,
            ..Case::default()
        });
        let case = Case {
            seed,
            steps,
            crash_at: Some(rng.below(clean.ops)),
            crash_during_recovery: seed % 2 == 0,
            ..Case::default()
        };
        must_pass(&case);
        states += 1 + case.crash_during_recovery as u64;
    }
    report(
        "random crash points (half also crashed during recovery)",
        states,
        t,
    );
}

/// Concurrent writers, so that syncs cover several appends and the ack thread is used, crashed at
/// random points. Scheduling decides the I/O order, so the replay line may not reproduce a
/// failure exactly; run the campaign again with the same seeds to hunt it.
#[test]
fn concurrent_writers_crashed_at_random_points() {
    let t = Instant::now();
    let (mut states, mut syncs, mut acked) = (0, 0, 0);
    for seed in 0..seeds(300) / 2 {
        let mut rng = Rng::new(seed ^ 0xC0C0);
        let threads = 2 + rng.below(7) as usize;
        let clean = must_pass(&Case {
            seed,
            steps: 15,
            threads,
            ..Case::default()
        });
        (syncs, acked) = (syncs + clean.syncs, acked + clean.acked as u64);
        for _ in 0..2 {
            must_pass(&Case {
                seed,
                steps: 15,
                threads,
                crash_at: Some(rng.below(clean.ops)),
                crash_during_recovery: rng.chance(30),
                ..Case::default()
            });
            states += 1;
        }
    }
    report("concurrent writers, random crash points", states, t);
    println!("  {syncs} syncs for {acked} acknowledged records in the uncrashed runs");
    // How many records a sync covers depends on scheduling (a loaded 2-core CI machine gave
    // 0.52 syncs per record once, where 0.3 is usual), so this asks only that syncs are shared
    // at all: without group commit there is one sync per record.
    assert!(
        syncs < acked,
        "group commit should share syncs: {syncs} syncs, {acked} records"
    );
}

/// A process crash (kill -9: the page cache survives, unsynced writes included) at a random
/// operation, a restart that carries on, then a power cut at a random point after the restart.
#[test]
fn process_crash_restart_then_power_cut() {
    let t = Instant::now();
    let mut states = 0;
    for seed in 0..seeds(400) {
        let mut rng = Rng::new(seed ^ 0x4E57);
        let steps = 10 + rng.below(40) as usize;
        let clean = must_pass(&Case {
            seed,
            steps,
            ..Case::default()
        });
        let restart_at = Some(rng.below(clean.ops));
        let restarted = must_pass(&Case {
            seed,
            steps,
            restart_at,
            ..Case::default()
        });
        must_pass(&Case {
            seed,
            steps,
            restart_at,
            crash_at: Some(rng.below(restarted.ops.max(1))),
            ..Case::default()
        });
        states += 1;
    }
    report("process crash, restart, power cut", states, t);
}

fn fault_campaign(name: &str, n: u64, make: impl Fn(&mut Rng) -> Faults) {
    let t = Instant::now();
    for seed in 0..seeds(n) {
        let mut rng = Rng::new(seed ^ 0xFA17);
        let faults = make(&mut rng);
        must_pass(&Case {
            seed,
            steps: 40,
            faults: Some(faults),
            ..Case::default()
        });
    }
    report(name, seeds(n), t);
}

#[test]
fn eio_on_sync_poisons_and_loses_nothing_acknowledged() {
    fault_campaign("EIO on sync (fsyncgate model)", 300, |r| Faults {
        eio_on_sync: 1 + r.below(40),
        ..Faults::default()
    });
}

#[test]
fn eio_on_write_poisons_and_loses_nothing_acknowledged() {
    fault_campaign("EIO on write", 300, |r| Faults {
        eio_on_write: 1 + r.below(40),
        ..Faults::default()
    });
}

#[test]
fn full_disk_loses_nothing_acknowledged() {
    fault_campaign("ENOSPC", 300, |r| Faults {
        space_bytes: Some(r.below(80_000)),
        ..Faults::default()
    });
}

#[test]
fn short_writes_lose_nothing_acknowledged() {
    fault_campaign("short writes", 300, |r| Faults {
        short_write_percent: 5 + r.below(50),
        ..Faults::default()
    });
}

#[test]
fn misdirected_write_is_never_read_as_good_data() {
    fault_campaign("misdirected write", 300, |r| Faults {
        misdirect_write: 1 + r.below(30),
        misdirect_by: 512,
        ..Faults::default()
    });
}

/// Bit rot in durable data: recovery fails closed, or returns only intact records and reports
/// any acknowledged loss as a cut torn tail. It never returns damaged bytes.
#[test]
fn bit_rot_is_never_silently_applied() {
    let t = Instant::now();
    let (mut closed, mut n) = (0, 0);
    for seed in 0..seeds(400) {
        let o = must_pass(&Case {
            seed,
            steps: 40,
            // One bit: a second flip could also destroy the later frame that proves the first
            // one was durable, which would make the damage indistinguishable from a torn tail.
            rot_bits: 1,
            ..Case::default()
        });
        closed += o.failed_closed as u64;
        n += 1;
    }
    report("bit rot", n, t);
    assert!(
        closed > n / 4,
        "rot should usually be caught as corruption: {closed} of {n}"
    );
}

fn report(what: &str, states: u64, t: Instant) {
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{what}: {states} crash states in {secs:.1} s ({:.0}/s)",
        states as f64 / secs
    );
}

/// Found by `bit_rot_is_never_silently_applied`: after `truncate_after(21)` the batch 18..=21
/// ended the log again, so a flipped bit in it read as a torn tail. That is the documented
/// ambiguity of the last batch, and the model now knows which batch ends the log after a
/// truncation. Kept so that the case stays covered whatever the seed range.
#[test]
fn regression_seed_296_rot_in_the_batch_a_truncation_left_last() {
    must_pass(&Case {
        seed: 296,
        steps: 40,
        rot_bits: 1,
        ..Case::default()
    });
}
