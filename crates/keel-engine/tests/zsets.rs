//! Sorted sets in keel-engine, on the real disk: a hot sorted set past the packed form, whose
//! writes the sequencer decides on its own copy (kept without order until a write or a read
//! needs the order), against a model.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_engine::{
    format_score, Engine, Options, Outcome, PutIf, Read, Write, WriteResult, ZCmp, ZRange,
};

/// member → score.
type Model = BTreeMap<Bytes, f64>;

fn ascending(m: &Model) -> Vec<(Bytes, f64)> {
    let mut v: Vec<(Bytes, f64)> = m.iter().map(|(k, s)| (k.clone(), *s)).collect();
    v.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn as_values(pairs: &[(Bytes, f64)]) -> Vec<Option<Bytes>> {
    pairs
        .iter()
        .flat_map(|(k, s)| [Some(k.clone()), Some(Bytes::from(format_score(*s)))])
        .collect()
}

fn range_all() -> Read {
    Read::ZRange {
        range: ZRange::Rank { start: 0, stop: -1 },
        rev: false,
        limit: None,
        with_scores: true,
    }
}

/// The write a step sends and the result the model expects of it, the model updated.
fn step(m: &mut Model, r: &mut u64) -> (Write, WriteResult) {
    let mut next = |n: u64| {
        *r ^= *r << 13;
        *r ^= *r >> 7;
        *r ^= *r << 17;
        *r % n
    };
    let key = Bytes::from_static(b"z");
    let member = Bytes::from(format!("m{}", next(600)));
    // Few distinct scores, so ties (ordered by member) are common.
    let score = next(50) as f64 - 10.0;
    match next(10) {
        0..=5 => {
            let new = m.insert(member.clone(), score).is_none();
            let w = Write::ZAdd {
                key,
                pairs: vec![(score, member)],
                only: PutIf::Always,
                cmp: ZCmp::Any,
                ch: false,
                incr: false,
            };
            (w, WriteResult::Int(new as i64))
        }
        6 => {
            let gone = m.remove(&member).is_some();
            let w = Write::ZRem {
                key,
                members: vec![member],
            };
            (w, WriteResult::Int(gone as i64))
        }
        7 => {
            let max = next(2) == 1;
            let count = 1 + next(3) as usize;
            let mut order = ascending(m);
            if max {
                order.reverse();
            }
            order.truncate(count);
            for (k, _) in &order {
                m.remove(k);
            }
            let mut want = vec![Some(key.clone())];
            want.extend(as_values(&order));
            let w = Write::ZPopFirst {
                keys: vec![key],
                max,
                count,
                skip_other_types: false,
            };
            (w, WriteResult::Values(want))
        }
        8 => {
            let start = next(20) as i64;
            let stop = start + next(3) as i64;
            let order = ascending(m);
            let gone: Vec<_> = order
                .iter()
                .skip(start as usize)
                .take((stop - start + 1) as usize)
                .collect();
            for (k, _) in &gone {
                m.remove(k);
            }
            let w = Write::ZRemRange {
                key,
                range: ZRange::Rank { start, stop },
            };
            (w, WriteResult::Int(gone.len() as i64))
        }
        _ => {
            let w = Write::Read {
                key,
                op: Read::ZRank {
                    member: member.clone(),
                    rev: false,
                },
            };
            let order = ascending(m);
            let want = match order.iter().position(|(k, _)| *k == member) {
                Some(rank) => WriteResult::Values(vec![
                    Some(Bytes::from(rank.to_string())),
                    Some(Bytes::from(format_score(order[rank].1))),
                ]),
                None => WriteResult::Value(None),
            };
            (w, want)
        }
    }
}

fn commit(e: &Engine, writes: Vec<Write>) -> Vec<WriteResult> {
    match e.commit(vec![], writes).unwrap() {
        Outcome::Committed { results, .. } => results,
        o => panic!("{o:?}"),
    }
}

fn stored(e: &Engine) -> WriteResult {
    e.read(|v| v.read(b"z", Some(&range_all())))
}

/// Thousands of writes to one sorted set of a few hundred members, alone and in
/// transactions of two to four, each result as the model has it; then the set itself, after
/// a reopen (replay), and after a checkpoint and a reopen.
#[test]
fn a_hot_sorted_set_decides_every_write_as_the_model_does() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    let mut m = Model::new();
    let mut r = 0x9e37_79b9_7f4a_7c15u64;
    // Past the packed form first (128 members), so that the rest runs on the large one.
    for i in 0..300 {
        let w = Write::ZAdd {
            key: Bytes::from_static(b"z"),
            pairs: vec![(i as f64, Bytes::from(format!("m{i}")))],
            only: PutIf::Always,
            cmp: ZCmp::Any,
            ch: false,
            incr: false,
        };
        m.insert(Bytes::from(format!("m{i}")), i as f64);
        commit(&e, vec![w]);
    }
    for round in 0..3000 {
        let n = if round % 5 == 0 { 2 + round % 3 } else { 1 };
        let (writes, want): (Vec<_>, Vec<_>) = (0..n).map(|_| step(&mut m, &mut r)).unzip();
        let got = commit(&e, writes.clone());
        for ((g, w), write) in got.iter().zip(&want).zip(&writes) {
            assert_eq!(g, w, "round {round}: {write:?}");
        }
    }
    assert!(m.len() > 128, "the set stayed large: {}", m.len());
    let want = WriteResult::Values(as_values(&ascending(&m)));
    assert_eq!(stored(&e), want);
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(stored(&e), want, "after replay");
    e.checkpoint().unwrap();
    drop(e);
    let (e, _) = Engine::open(dir.path(), Options::small_for_tests()).unwrap();
    assert_eq!(stored(&e), want, "after a checkpoint");
}
