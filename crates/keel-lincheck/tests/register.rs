//! The checker against hand-made register histories with known answers, and against random
//! histories recorded from a real sequential execution.

use keel_lincheck::{
    check, check_keyed, History, InvalidHistory, Model, Register, RegisterOp, Verdict,
};

type Op = RegisterOp<u64>;

fn read(v: Option<u64>) -> Op {
    RegisterOp::Read { returned: v }
}
fn write(v: u64) -> Op {
    RegisterOp::Write { value: v }
}
fn cas(expected: Option<u64>, new: u64, succeeded: bool) -> Op {
    RegisterOp::Cas {
        expected,
        new,
        succeeded,
    }
}

/// Builds a history from (invoke, completion, op); completion `None` is indeterminate.
fn history(ops: &[(u64, Option<u64>, Op)]) -> History<Op> {
    let mut h = History::new();
    for (invoke, completion, op) in ops {
        h.push(*invoke, *completion, op.clone());
    }
    h
}

fn verdict(ops: &[(u64, Option<u64>, Op)]) -> Verdict {
    check(&Register::default(), &history(ops), u64::MAX)
}

fn assert_linearizable(ops: &[(u64, Option<u64>, Op)]) {
    let v = verdict(ops);
    assert!(v.is_linearizable(), "{v:?}");
}

/// Asserts a violation whose search got stuck at op `blocked` after `prefix` ops.
fn assert_violation(ops: &[(u64, Option<u64>, Op)], blocked: usize, prefix: usize) {
    match verdict(ops) {
        Verdict::NotLinearizable(v) => {
            assert_eq!((v.blocked_op, v.prefix_ops), (blocked, prefix), "{v}");
            assert!(v.to_string().contains(&format!("#{blocked} ")), "{v}");
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn accepts_sequential_history_and_empty_history() {
    assert_linearizable(&[]);
    assert_linearizable(&[
        (0, Some(1), read(None)),
        (2, Some(3), write(1)),
        (4, Some(5), read(Some(1))),
        (6, Some(7), RegisterOp::Delete),
        (8, Some(9), read(None)),
    ]);
}

#[test]
fn accepts_overlapping_writes_read_in_either_order() {
    for (first, second) in [(1, 2), (2, 1)] {
        assert_linearizable(&[
            (0, Some(10), write(1)),
            (5, Some(15), write(2)),
            (20, Some(30), read(Some(first))),
            (40, Some(50), read(Some(first))),
        ]);
        // A read overlapping both writes may see either, then the other.
        assert_linearizable(&[
            (0, Some(10), write(1)),
            (0, Some(10), write(2)),
            (1, Some(2), read(Some(first))),
            (3, Some(20), read(Some(second))),
        ]);
    }
}

#[test]
fn equal_ticks_count_as_concurrent() {
    // The write completes at tick 10 and the read is invoked at tick 10: either order is allowed.
    assert_linearizable(&[(0, Some(10), write(1)), (10, Some(12), read(None))]);
}

#[test]
fn accepts_indeterminate_write_seen_later_or_never() {
    let base = [(0, Some(10), write(1)), (20, None, write(2))];
    // Seen long after its invoke, or seen late after the old value, or never seen.
    for reads in [[Some(2), Some(2)], [Some(1), Some(2)], [Some(1), Some(1)]] {
        let mut ops = base.to_vec();
        ops.push((100, Some(110), read(reads[0])));
        ops.push((200, Some(210), read(reads[1])));
        assert_linearizable(&ops);
    }
}

#[test]
fn accepts_successful_and_failed_cas() {
    assert_linearizable(&[
        (0, Some(1), cas(None, 1, true)),
        (2, Some(3), cas(Some(1), 2, true)),
        (4, Some(5), cas(Some(1), 3, false)),
        (6, Some(7), cas(None, 3, false)),
        (8, Some(9), read(Some(2))),
    ]);
    // A CAS concurrent with a write may succeed against the value before it.
    assert_linearizable(&[
        (0, Some(1), write(1)),
        (2, Some(10), write(2)),
        (3, Some(9), cas(Some(1), 3, true)),
        (11, Some(12), read(Some(2))),
    ]);
}

#[test]
fn an_op_that_changes_nothing_from_here_is_not_read_only() {
    // Regression: an early version placed any op that left the current state unchanged at once,
    // as it does reads. Deleting the absent key first is then the only try, and fails; the
    // linearization is write, delete, read.
    assert_linearizable(&[
        (0, Some(100), RegisterOp::Delete),
        (0, Some(10), write(1)),
        (50, Some(60), read(None)),
    ]);
}

#[test]
fn rejects_stale_read_after_completed_write() {
    assert_violation(
        &[
            (0, Some(10), write(1)),
            (20, Some(30), write(2)),
            (40, Some(50), read(Some(1))),
        ],
        2,
        2,
    );
}

#[test]
fn violation_describes_where_the_search_got_stuck() {
    let ops = [
        (0, Some(10), write(1)),
        (20, Some(30), write(2)),
        (40, Some(50), read(Some(1))),
        (40, Some(60), read(Some(1))),
    ];
    let Verdict::NotLinearizable(v) = verdict(&ops) else {
        panic!("stale reads accepted");
    };
    assert_eq!(
        v.description,
        "at most 2 of 4 ops can be linearized; after them the state is Some(2), the last placed \
         being #0 Write { value: 1 } [0, 10], #1 Write { value: 2 } [20, 30]; \
         #2 Read { returned: Some(1) } [40, 50] cannot take effect before it completes, whatever \
         order the other pending ops take: #3 Read { returned: Some(1) } [40, 60]"
    );
}

#[test]
fn rejects_read_of_value_never_written() {
    assert_violation(
        &[(0, Some(10), write(1)), (20, Some(30), read(Some(7)))],
        1,
        1,
    );
}

#[test]
fn rejects_reads_seeing_writes_in_inconsistent_orders() {
    // Reader A sees 1 then 2; reader B, at the same times, sees 2 then 1.
    let v = verdict(&[
        (0, Some(100), write(1)),
        (0, Some(100), write(2)),
        (10, Some(20), read(Some(1))),
        (30, Some(40), read(Some(2))),
        (10, Some(20), read(Some(2))),
        (30, Some(40), read(Some(1))),
    ]);
    assert!(matches!(v, Verdict::NotLinearizable(_)), "{v:?}");
}

#[test]
fn rejects_cas_that_succeeded_against_a_replaced_value() {
    assert_violation(
        &[
            (0, Some(10), write(1)),
            (20, Some(30), write(2)),
            (40, Some(50), cas(Some(1), 3, true)),
        ],
        2,
        2,
    );
}

#[test]
fn rejects_cas_that_failed_against_the_current_value() {
    assert_violation(
        &[
            (0, Some(10), write(1)),
            (20, Some(30), cas(Some(1), 3, false)),
        ],
        1,
        1,
    );
}

#[test]
fn rejects_older_value_after_an_indeterminate_write_was_seen() {
    // Once a read has seen the indeterminate write, it has taken effect for good.
    assert_violation(
        &[
            (0, Some(10), write(1)),
            (20, None, write(2)),
            (30, Some(40), read(Some(2))),
            (50, Some(60), read(Some(1))),
        ],
        3,
        3,
    );
}

#[test]
fn completion_before_invoke_is_invalid_not_a_panic() {
    let ops = [(0, Some(1), write(1)), (10, Some(9), read(Some(1)))];
    let bad = InvalidHistory {
        op: 1,
        invoke: 10,
        completion: 9,
    };
    assert_eq!(verdict(&ops), Verdict::Invalid(bad.clone()));
    let mut keyed = History::new();
    keyed.push(0, Some(1), ("k", write(1)));
    keyed.push(10, Some(9), ("k", read(None)));
    assert_eq!(
        check_keyed(&Register::default(), &keyed, u64::MAX),
        Verdict::Invalid(bad.clone())
    );
    assert!(bad.to_string().contains("op 1"));
}

#[test]
fn step_budget_gives_unknown() {
    let ops = [(0, Some(10), write(1)), (20, Some(30), read(Some(1)))];
    assert_eq!(
        check(&Register::default(), &history(&ops), 1),
        Verdict::Unknown { key: (), steps: 1 }
    );
}

#[test]
fn keyed_check_splits_by_key_and_names_the_failing_key() {
    let mut h = History::new();
    // Key "a" is fine alone; on one register these ops would not be linearizable.
    h.push(0, Some(10), ("a", write(1)));
    h.push(0, Some(10), ("b", write(2)));
    h.push(20, Some(30), ("a", read(Some(1))));
    h.push(20, Some(30), ("b", read(Some(2))));
    assert!(check_keyed(&Register::default(), &h, u64::MAX).is_linearizable());
    h.push(40, Some(50), ("c", write(3)));
    h.push(60, Some(70), ("b", read(Some(3))));
    match check_keyed(&Register::default(), &h, u64::MAX) {
        Verdict::NotLinearizable(v) => {
            assert_eq!(
                (v.key, v.blocked_op, v.ops, v.prefix_ops),
                ("b", 5, 3, 2),
                "{v}"
            );
            assert!(v.to_string().starts_with("key \"b\""), "{v}");
        }
        other => panic!("expected key b to fail, got {other:?}"),
    }
}

/// xorshift64*: enough randomness for generating histories, with no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// `clients` clients each run ops one after another, each op taking 1 to `duration_max` ticks
/// and taking effect at a random tick inside that window; then the ops run on a real register
/// in the order of those ticks, which is therefore a linearization of the recorded history.
/// About one op in `indeterminate_one_in` is recorded with an unknown completion: a write or
/// successful CAS that took effect, or an extra write that never did.
fn recorded_history(
    seed: u64,
    ops: usize,
    clients: u64,
    duration_max: u64,
    indeterminate_one_in: u64,
) -> History<Op> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut free = vec![0u64; clients as usize];
    // (effect tick, invoke, completion, kind, takes effect)
    let mut timed = Vec::new();
    for _ in 0..ops {
        let c = rng.below(clients) as usize;
        let invoke = free[c] + rng.below(3);
        let completion = invoke + 1 + rng.below(duration_max);
        free[c] = completion;
        let lost = rng.below(indeterminate_one_in) == 0;
        timed.push((
            invoke + rng.below(completion - invoke + 1),
            invoke,
            completion,
            rng.below(10),
            lost,
        ));
    }
    timed.sort_unstable();
    let (mut h, mut state, mut fresh) = (History::new(), None, 0u64);
    for (_, invoke, completion, kind, lost) in timed {
        fresh += 1;
        if lost {
            h.push(invoke, None, write(fresh));
            continue;
        }
        let op = match kind {
            0..=3 => read(state),
            4..=6 => write(fresh),
            7 => RegisterOp::Delete,
            _ => {
                let expected = if kind == 8 {
                    state
                } else {
                    Some(rng.below(fresh))
                };
                cas(expected, fresh, expected == state)
            }
        };
        state = Register::default()
            .step(&state, &op)
            .expect("generated from the real state");
        let timed_out = !Register::default().read_only(&op) && rng.below(indeterminate_one_in) == 0;
        h.push(invoke, (!timed_out).then_some(completion), op);
    }
    h
}

#[test]
fn random_recorded_histories_are_accepted() {
    for seed in 0..200 {
        let h = recorded_history(seed, 300, 1 + seed % 8, 20, 25);
        let v = check(&Register::default(), &h, 10_000_000);
        assert!(v.is_linearizable(), "seed {seed}: {v:?}");
    }
}

#[test]
fn random_histories_with_a_never_written_read_are_rejected() {
    for seed in 0..200 {
        let mut h = recorded_history(seed, 100, 1 + seed % 6, 20, 40);
        let reads: Vec<usize> = (0..h.ops.len())
            .filter(|&i| matches!(h.ops[i].op, RegisterOp::Read { .. }))
            .collect();
        let target = reads[seed as usize % reads.len()];
        h.ops[target].op = read(Some(u64::MAX));
        match check(&Register::default(), &h, 10_000_000) {
            Verdict::NotLinearizable(v) => assert_eq!(v.blocked_op, target, "seed {seed}: {v}"),
            other => panic!("seed {seed}: mutated read #{target} accepted: {other:?}"),
        }
    }
}

#[test]
fn large_history_with_heavy_concurrency_finishes() {
    // Twelve clients always busy on one key; some writes stay indeterminate throughout.
    let h = recorded_history(7, 5_000, 12, 20, 100);
    let v = check(&Register::default(), &h, u64::MAX);
    assert!(v.is_linearizable(), "{v:?}");
}

#[test]
fn ten_thousand_op_history_does_not_overflow_the_stack() {
    let mut h = recorded_history(11, 10_000, 3, 20, u64::MAX);
    assert!(check(&Register::default(), &h, u64::MAX).is_linearizable());
    // A violation at the very end makes the search unwind all the way back.
    h.push(u64::MAX - 1, Some(u64::MAX), read(Some(u64::MAX)));
    assert!(matches!(
        check(&Register::default(), &h, u64::MAX),
        Verdict::NotLinearizable(_)
    ));
}
