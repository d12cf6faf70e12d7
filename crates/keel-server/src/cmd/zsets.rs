//! Sorted set commands. Writes log each changed member's final score (ZINCRBY logs the score
//! it produced, not the increment) or the members they remove; the pops log the members they
//! took; the STORE forms the result.

use std::ops::Bound;

use keel_engine::{
    format_score, zset_combine, Aggregate, LexBound, PutIf, Read, SetOp, Write, WriteResult, ZCmp,
    ZRange,
};

use super::*;

pub const COMMANDS: &[Command] = &[
    Command::new("zadd", -4, W, KEY1)
        .redis("write denyoom fast", "@sortedset")
        .key_flags("RW update")
        .doc(
            "sorted-set",
            "key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]",
            "Adds members to a sorted set or updates their scores; returns how many were added (with CH: changed), or with INCR the new score.",
        )
        .data(zadd),
    Command::new("zincrby", 4, W, KEY1)
        .redis("write denyoom fast", "@sortedset")
        .key_flags("RW access update")
        .doc(
            "sorted-set",
            "key increment member",
            "Adds increment to a member's score (absent: 0) and returns the new score.",
        )
        .data(|_, a, _| {
            let w = Write::ZAdd {
                key: a[1].clone(),
                pairs: vec![(float_arg(&a[2])?, a[3].clone())],
                only: PutIf::Always,
                cmp: ZCmp::Any,
                ch: false,
                incr: true,
            };
            Ok(Part::new(vec![w], |r| score_reply(&r[0])))
        }),
    Command::new("zrem", -3, W, KEY1)
        .redis("write fast", "@sortedset")
        .key_flags("RW delete")
        .doc(
            "sorted-set",
            "key member [member ...]",
            "Removes members, and the sorted set once it is empty; returns how many were removed.",
        )
        .data(|_, a, _| {
            let w = Write::ZRem {
                key: a[1].clone(),
                members: a[2..].to_vec(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("zcard", 2, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO")
        .doc("sorted-set", "key", "Returns the number of members.")
        .data(|_, a, _| Ok(Part::new(vec![read(&a[1], Read::ZCard)], |r| int_reply(&r[0])))),
    Command::new("zcount", 4, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key min max",
            "Returns how many members have a score within min and max ((: exclusive; -inf, +inf).",
        )
        .data(|_, a, _| {
            let range = score_range(&a[2], &a[3])?;
            Ok(Part::new(vec![read(&a[1], Read::ZCount { range })], |r| {
                int_reply(&r[0])
            }))
        }),
    Command::new("zlexcount", 4, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key min max",
            "Returns how many members lie within a lex range ([a, (a, -, +).",
        )
        .data(|_, a, _| {
            let range = lex_range(&a[2], &a[3])?;
            Ok(Part::new(vec![read(&a[1], Read::ZCount { range })], |r| {
                int_reply(&r[0])
            }))
        }),
    Command::new("zscore", 3, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO access")
        .doc("sorted-set", "key member", "Returns a member's score, or nil.")
        .data(|_, a, _| {
            let op = Read::ZScores {
                members: vec![a[2].clone()],
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| match &r[0] {
                WriteResult::Values(v) => double_or_nil(&v[0]),
                other => value_reply(other),
            }))
        }),
    Command::new("zmscore", -3, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key member [member ...]",
            "Returns each member's score, or nil.",
        )
        .data(|_, a, _| {
            let op = Read::ZScores {
                members: a[2..].to_vec(),
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| match &r[0] {
                WriteResult::Values(v) => Reply::Array(v.iter().map(double_or_nil).collect()),
                other => value_reply(other),
            }))
        }),
    Command::new("zrank", -3, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key member [WITHSCORE]",
            "Returns a member's rank by ascending score (and its score), or nil.",
        )
        .data(zrank),
    Command::new("zrevrank", -3, R, KEY1)
        .redis("readonly fast", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key member [WITHSCORE]",
            "Returns a member's rank by descending score (and its score), or nil.",
        )
        .data(zrank),
    Command::new("zrange", -4, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]",
            "Returns members by rank, score or lex range, ascending or (REV) descending.",
        )
        .data(zrange),
    Command::new("zrangestore", -5, W, (1, 2, 1))
        .redis("write denyoom", "@sortedset")
        .key_specs(&[Keys::at(1, "OW update"), Keys::at(2, "RO access")])
        .doc(
            "sorted-set",
            "dst src min max [BYSCORE|BYLEX] [REV] [LIMIT offset count]",
            "Stores at dst what ZRANGE selects from src; returns how many members it stored.",
        )
        .data(zrange),
    Command::new("zrevrange", -4, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key start stop [WITHSCORES]",
            "Returns members by rank, highest score first.",
        )
        .data(zrange),
    Command::new("zrangebyscore", -4, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key min max [WITHSCORES] [LIMIT offset count]",
            "Returns members with a score within min and max, lowest first.",
        )
        .data(zrange),
    Command::new("zrevrangebyscore", -4, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key max min [WITHSCORES] [LIMIT offset count]",
            "Returns members with a score within max and min, highest first.",
        )
        .data(zrange),
    Command::new("zrangebylex", -4, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key min max [LIMIT offset count]",
            "Returns members within a lex range, ascending.",
        )
        .data(zrange),
    Command::new("zrevrangebylex", -4, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key max min [LIMIT offset count]",
            "Returns members within a lex range, descending.",
        )
        .data(zrange),
    Command::new("zremrangebyrank", 4, W, KEY1)
        .redis("write", "@sortedset")
        .key_flags("RW delete")
        .doc(
            "sorted-set",
            "key start stop",
            "Removes the members within a rank range; returns how many.",
        )
        .data(|_, a, _| {
            let range = ZRange::Rank {
                start: int_arg(&a[2])?,
                stop: int_arg(&a[3])?,
            };
            Ok(remrange(&a[1], range))
        }),
    Command::new("zremrangebyscore", 4, W, KEY1)
        .redis("write", "@sortedset")
        .key_flags("RW delete")
        .doc(
            "sorted-set",
            "key min max",
            "Removes the members within a score range; returns how many.",
        )
        .data(|_, a, _| Ok(remrange(&a[1], score_range(&a[2], &a[3])?))),
    Command::new("zremrangebylex", 4, W, KEY1)
        .redis("write", "@sortedset")
        .key_flags("RW delete")
        .doc(
            "sorted-set",
            "key min max",
            "Removes the members within a lex range; returns how many.",
        )
        .data(|_, a, _| Ok(remrange(&a[1], lex_range(&a[2], &a[3])?))),
    // The pops return what they removed (Redis: ACCESS).
    Command::new("zpopmin", -2, RW, KEY1)
        .redis("write fast", "@sortedset")
        .key_flags("RW access delete")
        .doc(
            "sorted-set",
            "key [count]",
            "Removes and returns the members with the lowest scores.",
        )
        .data(zpop),
    Command::new("zpopmax", -2, RW, KEY1)
        .redis("write fast", "@sortedset")
        .key_flags("RW access delete")
        .doc(
            "sorted-set",
            "key [count]",
            "Removes and returns the members with the highest scores.",
        )
        .data(zpop),
    Command::new("zmpop", -4, RW, NO_KEYS)
        .redis("write", "@sortedset")
        .key_specs(&[Keys::keynum(1, "RW access delete")])
        .doc(
            "sorted-set",
            "numkeys key [key ...] <MIN|MAX> [COUNT count]",
            "Pops members from the first of the sorted sets that exists.",
        )
        .data(|_, a, _| mpop(&a[1..])),
    Command::new("bzpopmin", -3, RW, (1, -2, 1))
        .redis("write fast blocking", "@sortedset")
        .key_flags("RW access delete")
        .doc(
            "sorted-set",
            "key [key ...] timeout:double",
            "ZPOPMIN of the first sorted set that has a member, waiting up to timeout seconds (0: for ever) for one.",
        )
        .data(bzpop)
        .blocks(Block {
            wait: |a| Block::seconds(&a[a.len() - 1]),
            prepare: None,
            keys: |a| a[1..a.len() - 1].to_vec(),
        }),
    Command::new("bzpopmax", -3, RW, (1, -2, 1))
        .redis("write fast blocking", "@sortedset")
        .key_flags("RW access delete")
        .doc(
            "sorted-set",
            "key [key ...] timeout:double",
            "ZPOPMAX of the first sorted set that has a member, waiting up to timeout seconds (0: for ever) for one.",
        )
        .data(bzpop)
        .blocks(Block {
            wait: |a| Block::seconds(&a[a.len() - 1]),
            prepare: None,
            keys: |a| a[1..a.len() - 1].to_vec(),
        }),
    Command::new("bzmpop", -5, RW, NO_KEYS)
        .redis("write blocking", "@sortedset")
        .key_specs(&[Keys::keynum(2, "RW access delete")])
        .doc(
            "sorted-set",
            "timeout:double numkeys key [key ...] <MIN|MAX> [COUNT count]",
            "ZMPOP, waiting up to timeout seconds (0: for ever) for a sorted set to have a member.",
        )
        .data(|_, a, _| mpop(&a[2..]))
        .blocks(Block {
            wait: |a| Block::seconds(&a[1]),
            prepare: None,
            keys: |a| {
                let n = parse_i64(&a[2]).unwrap_or(0).max(0) as usize;
                a[3..].iter().take(n).cloned().collect()
            },
        }),
    Command::new("zunion", -3, R, NO_KEYS)
        .redis("readonly", "@sortedset")
        .key_specs(&[Keys::keynum(1, "RO access")])
        .doc(
            "sorted-set",
            "numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]",
            "Returns the union of sorted sets (or sets, scoring 1).",
        )
        .data(combine),
    Command::new("zinter", -3, R, NO_KEYS)
        .redis("readonly", "@sortedset")
        .key_specs(&[Keys::keynum(1, "RO access")])
        .doc(
            "sorted-set",
            "numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]",
            "Returns the intersection of sorted sets (or sets, scoring 1).",
        )
        .data(combine),
    Command::new("zdiff", -3, R, NO_KEYS)
        .redis("readonly", "@sortedset")
        .key_specs(&[Keys::keynum(1, "RO access")])
        .doc(
            "sorted-set",
            "numkeys key [key ...] [WITHSCORES]",
            "Returns the members of the first sorted set that no other holds.",
        )
        .data(combine),
    Command::new("zunionstore", -4, W, KEY1)
        .redis("write denyoom", "@sortedset")
        .key_specs(&[Keys::at(1, "OW update"), Keys::keynum(2, "RO access")])
        .doc(
            "sorted-set",
            "destination numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX]",
            "Stores the union of sorted sets (or sets) and returns its size.",
        )
        .data(combine),
    Command::new("zinterstore", -4, W, KEY1)
        .redis("write denyoom", "@sortedset")
        .key_specs(&[Keys::at(1, "OW update"), Keys::keynum(2, "RO access")])
        .doc(
            "sorted-set",
            "destination numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX]",
            "Stores the intersection of sorted sets (or sets) and returns its size.",
        )
        .data(combine),
    Command::new("zdiffstore", -4, W, KEY1)
        .redis("write denyoom", "@sortedset")
        .key_specs(&[Keys::at(1, "OW update"), Keys::keynum(2, "RO access")])
        .doc(
            "sorted-set",
            "destination numkeys key [key ...]",
            "Stores the difference of sorted sets (or sets) and returns its size.",
        )
        .data(combine),
    Command::new("zintercard", -3, R, NO_KEYS)
        .redis("readonly", "@sortedset")
        .key_specs(&[Keys::keynum(1, "RO access")])
        .doc(
            "sorted-set",
            "numkeys key [key ...] [LIMIT limit]",
            "Returns how many members every sorted set holds, counting at most LIMIT (0: no limit).",
        )
        .data(zintercard),
    Command::new("zrandmember", -2, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key [count [WITHSCORES]]",
            "Returns random members: distinct ones for a positive count, repeats allowed for a negative one.",
        )
        .data(zrandmember),
    Command::new("zscan", -3, R, KEY1)
        .redis("readonly", "@sortedset")
        .key_flags("RO access")
        .doc(
            "sorted-set",
            "key cursor [MATCH pattern] [COUNT count]",
            "Incrementally iterates over the members and scores of a sorted set.",
        )
        .data(|_, a, _| {
            let s = ScanArgs::parse(a)?;
            let op = Read::ZScan {
                cursor: s.cursor,
                count: s.count,
            };
            Ok(Part::new(vec![read(&a[1], op)], move |r| s.reply(&mut r[0], 2)))
        }),
];

fn double_or_nil(v: &Option<Bytes>) -> Reply {
    v.clone().map_or(Reply::Nil, Reply::Double)
}

/// A score result (ZINCRBY, ZADD INCR): the score, nil, or the write's error.
fn score_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Value(v) => double_or_nil(v),
        other => value_reply(other),
    }
}

/// Member, score, member, score, … as pairs of a bulk string and a double.
fn scored(v: &[Option<Bytes>]) -> Vec<(Reply, Reply)> {
    v.chunks(2)
        .map(|p| (bulk_or_nil(&p[0]), double_or_nil(&p[1])))
        .collect()
}

/// Members (and scores): pairs with scores (an array of pairs in RESP3, flat in RESP2), else
/// an array of members.
fn members_reply(r: &mut WriteResult, with_scores: bool) -> Reply {
    match r {
        WriteResult::Values(v) if with_scores => Reply::Pairs(scored(v)),
        other => take_values_reply(other),
    }
}

fn zadd(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while i < a.len() {
        let flag = match lower(&a[i]).as_str() {
            "nx" => &mut nx,
            "xx" => &mut xx,
            "gt" => &mut gt,
            "lt" => &mut lt,
            "ch" => &mut ch,
            "incr" => &mut incr,
            _ => break,
        };
        *flag = true;
        i += 1;
    }
    let rest = &a[i..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(Reply::err(SYNTAX));
    }
    if nx && xx {
        return Err(Reply::err(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (gt || lt) && nx || (gt && lt) {
        return Err(Reply::err(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if incr && rest.len() > 2 {
        return Err(Reply::err(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let pairs = rest
        .chunks(2)
        .map(|p| Ok((float_arg(&p[0])?, p[1].clone())))
        .collect::<Result<Vec<_>, Reply>>()?;
    let w = Write::ZAdd {
        key: a[1].clone(),
        pairs,
        only: match (nx, xx) {
            (true, _) => PutIf::Absent,
            (_, true) => PutIf::Present,
            _ => PutIf::Always,
        },
        cmp: match (gt, lt) {
            (true, _) => ZCmp::Greater,
            (_, true) => ZCmp::Less,
            _ => ZCmp::Any,
        },
        ch,
        incr,
    };
    Ok(Part::new(vec![w], move |r| match incr {
        true => score_reply(&r[0]),
        false => int_reply(&r[0]),
    }))
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// A score bound: a float, `(` before it for exclusive; `-inf`, `+inf`.
fn score_bound(b: &[u8]) -> Result<Bound<f64>, Reply> {
    let bad = || Reply::err("ERR min or max is not a float");
    let (text, exclusive) = match b.strip_prefix(b"(") {
        Some(rest) => (rest, true),
        None => (b, false),
    };
    let x = float_arg(text).map_err(|_| bad())?;
    Ok(if exclusive {
        Bound::Excluded(x)
    } else {
        Bound::Included(x)
    })
}

fn score_range(min: &[u8], max: &[u8]) -> Result<ZRange, Reply> {
    Ok(ZRange::Score {
        min: score_bound(min)?,
        max: score_bound(max)?,
    })
}

/// A lex bound: `-`, `+`, `[member` or `(member`.
fn lex_bound(b: &Bytes) -> Result<LexBound, Reply> {
    match b.first() {
        Some(b'-') if b.len() == 1 => Ok(LexBound::Min),
        Some(b'+') if b.len() == 1 => Ok(LexBound::Max),
        Some(b'[') => Ok(LexBound::Included(b.slice(1..))),
        Some(b'(') => Ok(LexBound::Excluded(b.slice(1..))),
        _ => Err(Reply::err("ERR min or max not valid string range item")),
    }
}

fn lex_range(min: &Bytes, max: &Bytes) -> Result<ZRange, Reply> {
    Ok(ZRange::Lex {
        min: lex_bound(min)?,
        max: lex_bound(max)?,
    })
}

fn zrank(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let with_score = match &a[3..] {
        [] => false,
        [o] if eq(o, "withscore") => true,
        [_] => return Err(Reply::err(SYNTAX)),
        _ => return Err(wrong_args(name)),
    };
    let op = Read::ZRank {
        member: a[2].clone(),
        rev: name == "zrevrank",
    };
    Ok(Part::new(vec![read(&a[1], op)], move |r| match &r[0] {
        WriteResult::Values(v) => {
            let rank = Reply::Int(
                v[0].as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                    .unwrap_or(0),
            );
            match with_score {
                true => Reply::Array(vec![rank, double_or_nil(&v[1])]),
                false => rank,
            }
        }
        WriteResult::Value(None) if with_score => Reply::NilArray,
        other => value_reply(other),
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum By {
    Rank,
    Score,
    Lex,
}

/// ZRANGE, ZRANGESTORE and the legacy range commands, parsed as Redis's one range command
/// parses them: the legacy forms fix the kind and the direction, so naming either is a syntax
/// error there.
fn zrange(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let store = name == "zrangestore";
    let (mut by, mut rev) = match name {
        "zrevrange" => (Some(By::Rank), Some(true)),
        "zrangebyscore" => (Some(By::Score), Some(false)),
        "zrevrangebyscore" => (Some(By::Score), Some(true)),
        "zrangebylex" => (Some(By::Lex), Some(false)),
        "zrevrangebylex" => (Some(By::Lex), Some(true)),
        _ => (None, None),
    };
    let at = if store { 2 } else { 1 };
    let (key, mut min, mut max) = (&a[at], &a[at + 1], &a[at + 2]);
    let (mut with_scores, mut limit) = (false, None);
    // Redis lets a rank range take LIMIT only as `LIMIT offset -1`, which changes nothing.
    let mut limits_rank = false;
    let mut i = at + 3;
    while i < a.len() {
        let left = a.len() - i - 1;
        let o = &a[i];
        if !store && eq(o, "withscores") {
            with_scores = true;
        } else if eq(o, "limit") && left >= 2 {
            let (offset, count) = (int_arg(&a[i + 1])?, int_arg(&a[i + 2])?);
            // A negative offset selects nothing; a negative count, everything after it.
            limit = Some((
                usize::try_from(offset).unwrap_or(usize::MAX),
                usize::try_from(count).ok(),
            ));
            limits_rank = count != -1;
            i += 2;
        } else if rev.is_none() && eq(o, "rev") {
            rev = Some(true);
        } else if by.is_none() && eq(o, "bylex") {
            by = Some(By::Lex);
        } else if by.is_none() && eq(o, "byscore") {
            by = Some(By::Score);
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    let (by, rev) = (by.unwrap_or(By::Rank), rev.unwrap_or(false));
    if limits_rank && by == By::Rank {
        return Err(Reply::err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && by == By::Lex {
        return Err(Reply::err(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    if rev && by != By::Rank {
        std::mem::swap(&mut min, &mut max);
    }
    let range = match by {
        By::Rank => ZRange::Rank {
            start: int_arg(min)?,
            stop: int_arg(max)?,
        },
        By::Score => score_range(min, max)?,
        By::Lex => lex_range(min, max)?,
    };
    if by == By::Rank {
        limit = None;
    }
    if store {
        let w = Write::ZRangeStore {
            key: a[1].clone(),
            src: key.clone(),
            range,
            rev,
            limit,
        };
        return Ok(Part::new(vec![w], |r| int_reply(&r[0])));
    }
    let op = Read::ZRange {
        range,
        rev,
        limit,
        with_scores,
    };
    Ok(Part::new(vec![read(key, op)], move |r| {
        members_reply(&mut r[0], with_scores)
    }))
}

fn remrange(key: &Bytes, range: ZRange) -> Part {
    let w = Write::ZRemRange {
        key: key.clone(),
        range,
    };
    Part::new(vec![w], |r| int_reply(&r[0]))
}

fn zpop(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let count = match &a[2..] {
        [] => None,
        [c] => match int_arg(c)? {
            n if n < 0 => return Err(Reply::err("ERR value is out of range, must be positive")),
            n => Some(n as usize),
        },
        _ => return Err(Reply::err(SYNTAX)),
    };
    let w = Write::ZPopFirst {
        keys: vec![a[1].clone()],
        max: name == "zpopmax",
        count: count.unwrap_or(1),
        skip_other_types: false,
    };
    Ok(Part::new(vec![w], move |r| match &r[0] {
        // Without a count, one member and its score, flat; with one, pairs.
        WriteResult::Values(v) if count.is_none() => Reply::Array(
            scored(&v[1..])
                .into_iter()
                .flat_map(|(m, s)| [m, s])
                .collect(),
        ),
        WriteResult::Values(v) => Reply::Pairs(scored(&v[1..])),
        WriteResult::Value(None) => Reply::Array(Vec::new()),
        other => values_reply(other),
    }))
}

/// BZPOPMIN's and BZPOPMAX's try: the first sorted set among the keys, one member. The reply
/// is the key, the member and its score.
fn bzpop(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let w = Write::ZPopFirst {
        keys: a[1..a.len() - 1].to_vec(),
        max: name == "bzpopmax",
        count: 1,
        skip_other_types: false,
    };
    Ok(Part::new(vec![w], |r| match &r[0] {
        WriteResult::Values(v) if v.len() == 3 => Reply::Array(vec![
            bulk_or_nil(&v[0]),
            bulk_or_nil(&v[1]),
            double_or_nil(&v[2]),
        ]),
        WriteResult::Value(None) => Reply::NilArray,
        other => values_reply(other),
    }))
}

/// ZMPOP's arguments after the command (BZMPOP's after the timeout): numkeys, the keys, MIN or
/// MAX and an optional COUNT. The reply is the key, then its members and scores as pairs.
fn mpop(a: &[Bytes]) -> Result<Part, Reply> {
    let (keys, max, count) = mpop_args(a, ["min", "max"])?;
    let w = Write::ZPopFirst {
        keys,
        max,
        count,
        skip_other_types: false,
    };
    Ok(Part::new(vec![w], |r| match &r[0] {
        WriteResult::Values(v) if !v.is_empty() => Reply::Array(vec![
            bulk_or_nil(&v[0]),
            Reply::Array(
                scored(&v[1..])
                    .into_iter()
                    .map(|(m, s)| Reply::Array(vec![m, s]))
                    .collect(),
            ),
        ]),
        WriteResult::Value(None) => Reply::NilArray,
        other => values_reply(other),
    }))
}

/// The keys of a numkeys command at `a[at]` (ZUNION and friends, ZINTERCARD), as Redis checks
/// them, and the arguments after them.
fn numkeys<'a>(name: &str, a: &'a [Bytes], at: usize) -> Result<(&'a [Bytes], &'a [Bytes]), Reply> {
    let n = int_arg(&a[at])?;
    if n < 1 {
        return Err(Reply::err(format!(
            "ERR at least 1 input key is needed for '{name}' command"
        )));
    }
    let n = n as usize;
    if n > a.len() - at - 1 {
        return Err(Reply::err(SYNTAX));
    }
    Ok((&a[at + 1..at + 1 + n], &a[at + 1 + n..]))
}

/// ZUNION, ZINTER, ZDIFF and their STORE forms.
fn combine(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let store = name.ends_with("store");
    let op = match name.trim_end_matches("store") {
        "zunion" => SetOp::Union,
        "zinter" => SetOp::Inter,
        _ => SetOp::Diff,
    };
    let (keys, mut opts) = numkeys(name, a, if store { 2 } else { 1 })?;
    let (mut weights, mut aggregate, mut with_scores) = (Vec::new(), Aggregate::Sum, false);
    while let Some(o) = opts.first() {
        if op != SetOp::Diff && eq(o, "weights") && opts.len() > keys.len() {
            weights = opts[1..=keys.len()]
                .iter()
                .map(|w| float_arg(w).map_err(|_| Reply::err("ERR weight value is not a float")))
                .collect::<Result<_, _>>()?;
            opts = &opts[keys.len() + 1..];
        } else if op != SetOp::Diff && eq(o, "aggregate") && opts.len() >= 2 {
            aggregate = match lower(&opts[1]).as_str() {
                "sum" => Aggregate::Sum,
                "min" => Aggregate::Min,
                "max" => Aggregate::Max,
                _ => return Err(Reply::err(SYNTAX)),
            };
            opts = &opts[2..];
        } else if !store && eq(o, "withscores") {
            with_scores = true;
            opts = &opts[1..];
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    if store {
        let w = Write::ZStore {
            key: a[1].clone(),
            op,
            keys: keys.to_vec(),
            weights,
            aggregate,
        };
        return Ok(Part::new(vec![w], |r| int_reply(&r[0])));
    }
    let reads = keys.iter().map(|k| read(k, Read::ZMembers)).collect();
    Ok(Part::new(reads, move |r| {
        let inputs = match inputs(r) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let out = zset_combine(op, &inputs, &weights, aggregate);
        if with_scores {
            Reply::Pairs(
                out.into_iter()
                    .map(|(m, s)| (Reply::Bulk(m), Reply::Double(format_score(s).into())))
                    .collect(),
            )
        } else {
            Reply::Array(out.into_iter().map(|(m, _)| Reply::Bulk(m)).collect())
        }
    }))
}

/// The (member, score) pairs of [`Read::ZMembers`] results, or the first error.
fn inputs(results: &[WriteResult]) -> Result<Vec<Vec<(Bytes, f64)>>, Reply> {
    results
        .iter()
        .map(|r| match r {
            WriteResult::Values(v) => Ok(v
                .chunks(2)
                .filter_map(|p| {
                    let score = std::str::from_utf8(p[1].as_deref()?).ok()?.parse().ok()?;
                    Some((p[0].clone()?, score))
                })
                .collect()),
            other => Err(value_reply(other)),
        })
        .collect()
}

fn zintercard(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let (keys, opts) = numkeys(name, a, 1)?;
    let limit = match opts {
        [] => 0,
        [o, l] if eq(o, "limit") => match parse_i64(l) {
            Some(l) if l >= 0 => l as usize,
            _ => return Err(Reply::err("ERR LIMIT can't be negative")),
        },
        _ => return Err(Reply::err(SYNTAX)),
    };
    let reads = keys.iter().map(|k| read(k, Read::ZMembers)).collect();
    Ok(Part::new(reads, move |r| match inputs(r) {
        Ok(inputs) => {
            let n = zset_combine(SetOp::Inter, &inputs, &[], Aggregate::Sum).len();
            Reply::Int(if limit > 0 { n.min(limit) } else { n } as i64)
        }
        Err(e) => e,
    }))
}

fn zrandmember(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let op = |count, seed| Read::ZRandom { count, seed };
    random_pairs(a, "withscores", "members", op, scored)
}
