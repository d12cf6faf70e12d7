//! Sorted set semantics over [`ZSetValue`]: what a range selects, the reads, ZADD's rules,
//! combining sets (ZUNION, ZINTER, ZDIFF) and how a score is written as text. Deciding
//! ([`crate::decide`]) and reading ([`crate::keyspace::eval_read`]) both come here, so that a
//! read inside a transaction and a read of the visible state agree.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::record::Mutation;
use crate::table::{ValueRef, ZSetValue};
use crate::types::{
    Aggregate, LexBound, PutIf, Read, SetOp, WriteError, WriteResult, ZCmp, ZRange,
};
use crate::util::{int_text, scan_result, Copies, HashMap, Pick};

/// A score as Redis 7.2 replies with it (its `d2string`): `0` or `-0`; a whole number of
/// magnitude up to 2^62 as an integer; otherwise the shortest digits that read back as the same
/// double, laid out as Redis's `fpconv_dtoa` lays them out: plain when the exponent is small,
/// else `d.ddde+E` with no padding of the exponent. 1.5 is "1.5", 1e17 "100000000000000000",
/// 1e20 "1e+20", 0.00012345 "1.2345e-4", `f64::MAX` "1.7976931348623157e+308".
pub fn format_score(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.into();
    }
    const WHOLE_MAX: f64 = (1u64 << 62) as f64;
    if x.fract() == 0.0 && x.abs() <= WHOLE_MAX {
        return (x as i64).to_string();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-4".
    let sci = format!("{:e}", x.abs());
    let (mantissa, e) = sci.split_once('e').expect("{:e} has an exponent");
    let e: i32 = e.parse().expect("a decimal exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    // x = digits * 10^k.
    let k = e - (n - 1);
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if k >= 0 && e.abs() < n + 7 {
        format!("{digits}{}", "0".repeat(k as usize))
    } else if k < 0 && (k > -7 || e.abs() < 4) {
        let point = n + k;
        if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if e < 0 { '-' } else { '+' };
        format!("{first}{dot}{rest}e{esign}{}", e.unsigned_abs())
    };
    format!("{sign}{body}")
}

fn score_text(x: f64) -> Option<Bytes> {
    Some(Bytes::from(format_score(x)))
}

fn owned(m: &[u8]) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(m))
}

fn above_min(m: &[u8], min: &LexBound) -> bool {
    match min {
        LexBound::Min => true,
        LexBound::Max => false,
        LexBound::Included(b) => m >= &b[..],
        LexBound::Excluded(b) => m > &b[..],
    }
}

fn below_max(m: &[u8], max: &LexBound) -> bool {
    match max {
        LexBound::Min => false,
        LexBound::Max => true,
        LexBound::Included(b) => m <= &b[..],
        LexBound::Excluded(b) => m < &b[..],
    }
}

/// The members `range` selects with their scores: ascending, or with `rev` descending (ranks
/// then count from the highest score), then `limit`'s offset and count (`None`: the rest).
/// Rank ranges are O(log n + m) and score ranges O(log n + offset + m) in the large form; lex
/// ranges walk the whole set.
pub(crate) fn select<'a>(
    z: &'a ZSetValue,
    range: &ZRange,
    rev: bool,
    limit: Option<(usize, Option<usize>)>,
) -> Vec<(&'a [u8], f64)> {
    let (offset, count) = limit.unwrap_or((0, None));
    let mut found = match range {
        ZRange::Rank { start, stop } => {
            let len = z.len() as i64;
            let (mut s, mut e) = (*start, *stop);
            if s < 0 {
                s += len;
            }
            if e < 0 {
                e += len;
            }
            s = s.max(0);
            if s > e || s >= len {
                return Vec::new();
            }
            e = e.min(len - 1);
            let (a, b) = if rev {
                (len - 1 - e, len - 1 - s)
            } else {
                (s, e)
            };
            z.range_by_rank(a as usize, b as usize + 1)
        }
        ZRange::Score { min, max } if !rev => {
            let want = count.map_or(usize::MAX, |c| c.saturating_add(offset));
            z.range_by_score(*min, *max, want)
        }
        ZRange::Score { min, max } => z.range_by_score(*min, *max, usize::MAX),
        ZRange::Lex { min, max } => z
            .iter()
            .into_iter()
            .filter(|(m, _)| above_min(m, min) && below_max(m, max))
            .collect(),
    };
    if rev {
        found.reverse();
    }
    found
        .into_iter()
        .skip(offset)
        .take(count.unwrap_or(usize::MAX))
        .collect()
}

/// Whether `op` reads a sorted set ([`eval`] answers it).
pub(crate) fn is_zset_read(op: &Read) -> bool {
    matches!(
        op,
        Read::ZScores { .. }
            | Read::ZCard
            | Read::ZCount { .. }
            | Read::ZRank { .. }
            | Read::ZRange { .. }
            | Read::ZMembers
            | Read::ZRandom { .. }
            | Read::ZScan { .. }
    )
}

/// A sorted set read of a key whose live value is `value` (`None`: absent or expired).
pub(crate) fn eval(value: Option<ValueRef<'_>>, op: &Read) -> WriteResult {
    let wrong = WriteResult::Failed(WriteError::WrongType);
    if let Read::ZMembers = op {
        return match value {
            None => WriteResult::Values(Vec::new()),
            Some(ValueRef::ZSet(z)) => pairs_result(z.iter(), true),
            Some(ValueRef::Set(s)) => WriteResult::Values(
                s.iter()
                    .flat_map(|m| [owned(&m), Some(Bytes::from_static(b"1"))])
                    .collect(),
            ),
            Some(_) => wrong,
        };
    }
    let empty = ZSetValue::new();
    let z = match value {
        None => &empty,
        Some(ValueRef::ZSet(z)) => z,
        Some(_) => return wrong,
    };
    match op {
        Read::ZScores { members } => WriteResult::Values(
            members
                .iter()
                .map(|m| z.score(m).and_then(score_text))
                .collect(),
        ),
        Read::ZCard => WriteResult::Int(z.len() as i64),
        Read::ZCount {
            range: ZRange::Score { min, max },
        } => WriteResult::Int(z.count_by_score(*min, *max) as i64),
        Read::ZCount { range } => WriteResult::Int(select(z, range, false, None).len() as i64),
        Read::ZRank { member, rev } => match (z.rank(member), z.score(member)) {
            (Some(r), Some(s)) => {
                let r = if *rev { z.len() - 1 - r } else { r };
                WriteResult::Values(vec![Some(int_text(r)), score_text(s)])
            }
            _ => WriteResult::Value(None),
        },
        Read::ZRange {
            range,
            rev,
            limit,
            with_scores,
        } => pairs_result(select(z, range, *rev, *limit), *with_scores),
        Read::ZRandom { count, seed } => {
            let mut rng = Pick(*seed);
            pairs_result(z.sample(*count, &mut || rng.next()), true)
        }
        Read::ZScan { cursor, count } => scan_result(|c| {
            z.scan(*cursor, *count, |m, s| {
                c.push(m);
                c.push(format_score(s).as_bytes());
            })
        }),
        _ => unreachable!("not a sorted set read: {op:?}"),
    }
}

/// Members, or members and scores, as a read's `Values`.
fn pairs_result(pairs: Vec<(&[u8], f64)>, with_scores: bool) -> WriteResult {
    WriteResult::Values(if with_scores {
        let mut c = Copies::default();
        for (m, s) in pairs {
            c.push(m);
            c.push(format_score(s).as_bytes());
        }
        c.finish()
    } else {
        Copies::of(pairs.into_iter().map(|(m, _)| m))
    })
}

/// Applies a ZAdd or ZRem mutation's members to `z`; true if it is left empty.
pub(crate) fn edit(z: &mut ZSetValue, m: &Mutation) -> bool {
    match m {
        Mutation::ZAdd { pairs, .. } => {
            for (member, score) in pairs {
                z.insert(member, *score);
            }
        }
        Mutation::ZRem { members, .. } => {
            for member in members {
                z.remove(member);
            }
        }
        other => unreachable!("not a sorted set mutation: {other:?}"),
    }
    z.is_empty()
}

/// What a ZADD decided: the members whose score it sets (to log), how many it added and
/// changed, and with INCR the new score (`None`: a condition stopped it).
pub(crate) struct Added {
    pub(crate) set: Vec<(Bytes, f64)>,
    pub(crate) added: usize,
    pub(crate) changed: usize,
    pub(crate) incr_result: Option<f64>,
}

/// ZADD's rules over the sorted set `z` (`None`: absent), pair by pair as Redis applies them.
pub(crate) fn zadd(
    z: Option<&ZSetValue>,
    pairs: Vec<(f64, Bytes)>,
    only: PutIf,
    cmp: ZCmp,
    incr: bool,
) -> Result<Added, WriteError> {
    let mut out = Added {
        set: Vec::new(),
        added: 0,
        changed: 0,
        incr_result: None,
    };
    // Where each member set so far is in `out.set`: a later pair of the same member sees it.
    let mut at = HashMap::<Bytes, usize>::default();
    for (score, member) in pairs {
        let current = match at.get(&member) {
            Some(&i) => Some(out.set[i].1),
            None => z.and_then(|z| z.score(&member)),
        };
        let new = match current {
            None if only == PutIf::Present => continue,
            None => {
                out.added += 1;
                score
            }
            Some(_) if only == PutIf::Absent => continue,
            Some(cur) => {
                let new = if incr { cur + score } else { score };
                if new.is_nan() {
                    return Err(WriteError::NotANumber);
                }
                let stopped = match cmp {
                    ZCmp::Any => false,
                    ZCmp::Greater => new <= cur,
                    ZCmp::Less => new >= cur,
                };
                if stopped {
                    continue;
                }
                out.incr_result = Some(new);
                if new == cur {
                    continue;
                }
                out.changed += 1;
                new
            }
        };
        out.incr_result = Some(new);
        match at.get(&member) {
            Some(&i) => out.set[i].1 = new,
            None => {
                at.insert(member.clone(), out.set.len());
                out.set.push((member, new));
            }
        }
    }
    Ok(out)
}

/// ZUNION, ZINTER and ZDIFF as Redis computes them, ordered by (score, member). `inputs` holds
/// each key's (member, score) pairs (an absent key is empty; a set's members score 1). A
/// member's score in each input is multiplied by that input's weight (`weights` empty: all 1),
/// then combined by `aggregate`; a NaN from `inf * 0` or `inf + -inf` becomes 0, as in Redis.
/// ZINTER keeps the members every input holds, ZDIFF those of the first that no other holds
/// (with the first's scores).
pub fn zset_combine(
    op: SetOp,
    inputs: &[Vec<(Bytes, f64)>],
    weights: &[f64],
    aggregate: Aggregate,
) -> Vec<(Bytes, f64)> {
    let weight = |i: usize| weights.get(i).copied().unwrap_or(1.0);
    let weighted = |s: f64, i: usize| {
        let v = s * weight(i);
        if v.is_nan() {
            0.0
        } else {
            v
        }
    };
    let combine = |a: f64, b: f64| match aggregate {
        Aggregate::Sum => {
            let v = a + b;
            if v.is_nan() {
                0.0
            } else {
                v
            }
        }
        // On a tie the score already there stays (-0 against 0), as in Redis.
        Aggregate::Min => {
            if b < a {
                b
            } else {
                a
            }
        }
        Aggregate::Max => {
            if b > a {
                b
            } else {
                a
            }
        }
    };
    let lookup = |input: &Vec<(Bytes, f64)>| -> HashMap<Bytes, f64> {
        input.iter().map(|(m, s)| (m.clone(), *s)).collect()
    };
    let mut out: Vec<(Bytes, f64)> = match op {
        SetOp::Union => {
            let mut at = HashMap::<Bytes, usize>::default();
            let mut out: Vec<(Bytes, f64)> = Vec::new();
            // Smallest input first, as Redis adds them: with inf and -inf (whose sum becomes
            // 0) the order changes the result.
            let mut order: Vec<usize> = (0..inputs.len()).collect();
            order.sort_by_key(|&i| inputs[i].len());
            for i in order {
                let input = &inputs[i];
                for (m, s) in input {
                    let v = weighted(*s, i);
                    match at.get(m) {
                        Some(&j) => out[j].1 = combine(out[j].1, v),
                        None => {
                            at.insert(m.clone(), out.len());
                            out.push((m.clone(), v));
                        }
                    }
                }
            }
            out
        }
        SetOp::Inter => {
            if inputs.is_empty() || inputs.iter().any(Vec::is_empty) {
                return Vec::new();
            }
            // From the smallest input, as Redis does.
            let mut order: Vec<usize> = (0..inputs.len()).collect();
            order.sort_by_key(|&i| inputs[i].len());
            let others: Vec<(usize, HashMap<Bytes, f64>)> = order[1..]
                .iter()
                .map(|&i| (i, lookup(&inputs[i])))
                .collect();
            let first = order[0];
            inputs[first]
                .iter()
                .filter_map(|(m, s)| {
                    let mut v = weighted(*s, first);
                    for (i, other) in &others {
                        v = combine(v, weighted(*other.get(m)?, *i));
                    }
                    Some((m.clone(), v))
                })
                .collect()
        }
        SetOp::Diff => {
            let Some((first, rest)) = inputs.split_first() else {
                return Vec::new();
            };
            let rest: Vec<HashMap<Bytes, f64>> = rest.iter().map(lookup).collect();
            first
                .iter()
                .filter(|(m, _)| rest.iter().all(|r| !r.contains_key(m)))
                .cloned()
                .collect()
        }
    };
    out.sort_by(|a, b| {
        a.1.partial_cmp(&b.1)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
    out
}

/// The (member, score) pairs a value holds for ZUNIONSTORE and friends: a sorted set's, or a
/// set's with each member scoring 1; `Err(WrongType)` for another type.
pub(crate) fn input_of(value: Option<ValueRef<'_>>) -> Result<Vec<(Bytes, f64)>, WriteError> {
    match value {
        None => Ok(Vec::new()),
        Some(ValueRef::ZSet(z)) => Ok(z
            .iter()
            .into_iter()
            .map(|(m, s)| (Bytes::copy_from_slice(m), s))
            .collect()),
        Some(ValueRef::Set(s)) => Ok(s
            .iter()
            .map(|m| (Bytes::from(m.into_owned()), 1.0))
            .collect()),
        Some(_) => Err(WriteError::WrongType),
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;

    #[test]
    fn scores_are_written_as_redis_writes_them() {
        // Redis 7.2's replies (d2string: integers up to 2^62, then fpconv_dtoa's layout).
        for (x, text) in [
            (1.0, "1"),
            (1.5, "1.5"),
            (-2.0, "-2"),
            (0.0, "0"),
            (-0.0, "-0"),
            (0.1, "0.1"),
            (-0.25, "-0.25"),
            (1e20, "1e+20"),
            (1e16, "10000000000000000"),
            (1e17, "100000000000000000"),
            (9.223372036854776e18, "9223372036854776000"),
            (0.0001, "0.0001"),
            (0.00001, "0.00001"),
            (0.000012, "0.000012"),
            (1e-7, "1e-7"),
            (0.00012345, "1.2345e-4"),
            (12345.6789012, "1.23456789012e+4"),
            (1700000000.1234567, "1.7000000001234567e+9"),
            (3.5e-300, "3.5e-300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            assert_eq!(format_score(x), text, "{x}");
            if x.is_finite() {
                assert_eq!(text.parse::<f64>().unwrap(), x);
            }
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn union_weights_and_aggregates_as_redis() {
        let a = vec![(b("x"), 1.0), (b("y"), 2.0)];
        let c = vec![(b("y"), 10.0), (b("z"), f64::INFINITY)];
        let sum = zset_combine(
            SetOp::Union,
            &[a.clone(), c.clone()],
            &[2.0, 0.0],
            Aggregate::Sum,
        );
        // inf * 0 is NaN, which Redis makes 0.
        assert_eq!(sum, vec![(b("z"), 0.0), (b("x"), 2.0), (b("y"), 4.0)]);
        let max = zset_combine(SetOp::Inter, &[a.clone(), c.clone()], &[], Aggregate::Max);
        assert_eq!(max, vec![(b("y"), 10.0)]);
        let diff = zset_combine(SetOp::Diff, &[a, c], &[], Aggregate::Sum);
        assert_eq!(diff, vec![(b("x"), 1.0)]);
    }

    #[test]
    fn zadd_follows_nx_xx_gt_lt_and_incr() {
        let mut z = ZSetValue::new();
        z.insert(b"x", 10.0);
        z.insert(b"i", f64::INFINITY);
        let run = |pairs: Vec<(f64, &str)>, only, cmp, incr| {
            let pairs = pairs.into_iter().map(|(s, m)| (s, b(m))).collect();
            zadd(Some(&z), pairs, only, cmp, incr)
        };
        let a = run(
            vec![(5.0, "x"), (1.0, "y")],
            PutIf::Always,
            ZCmp::Greater,
            false,
        )
        .unwrap();
        assert_eq!((a.added, a.changed, a.set.len()), (1, 0, 1));
        let a = run(vec![(1.0, "y")], PutIf::Present, ZCmp::Any, false).unwrap();
        assert!(a.set.is_empty());
        let a = run(vec![(2.0, "x")], PutIf::Always, ZCmp::Any, true).unwrap();
        assert_eq!(a.incr_result, Some(12.0));
        let a = run(vec![(-1.0, "x")], PutIf::Always, ZCmp::Greater, true).unwrap();
        assert_eq!(a.incr_result, None);
        let a = run(
            vec![(1.0, "y"), (3.0, "y")],
            PutIf::Always,
            ZCmp::Any,
            false,
        )
        .unwrap();
        assert_eq!((a.added, a.set), (1, vec![(b("y"), 3.0)]));
        let e = run(
            vec![(f64::NEG_INFINITY, "i")],
            PutIf::Always,
            ZCmp::Any,
            true,
        );
        assert_eq!(e.err(), Some(WriteError::NotANumber));
    }

    #[test]
    fn ranges_select_as_zrange_does() {
        let mut z = ZSetValue::new();
        for (m, s) in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)] {
            z.insert(m.as_bytes(), s);
        }
        let names = |v: Vec<(&[u8], f64)>| {
            v.into_iter()
                .map(|(m, _)| String::from_utf8(m.to_vec()).unwrap())
                .collect::<Vec<_>>()
                .join("")
        };
        let rank = |start, stop| ZRange::Rank { start, stop };
        assert_eq!(names(select(&z, &rank(0, -1), false, None)), "abcd");
        assert_eq!(names(select(&z, &rank(0, 1), true, None)), "dc");
        assert_eq!(names(select(&z, &rank(-2, 10), false, None)), "cd");
        assert_eq!(names(select(&z, &rank(3, 1), false, None)), "");
        let score = ZRange::Score {
            min: Bound::Excluded(1.0),
            max: Bound::Included(4.0),
        };
        assert_eq!(names(select(&z, &score, false, Some((1, Some(1))))), "c");
        assert_eq!(names(select(&z, &score, true, Some((0, Some(2))))), "dc");
        let lex = ZRange::Lex {
            min: LexBound::Included(b("b")),
            max: LexBound::Excluded(b("d")),
        };
        assert_eq!(names(select(&z, &lex, false, None)), "bc");
        let none = ZRange::Lex {
            min: LexBound::Max,
            max: LexBound::Max,
        };
        assert_eq!(names(select(&z, &none, false, None)), "");
    }
}
