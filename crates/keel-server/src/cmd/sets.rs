//! Set commands. Writes log the members they add or remove; SPOP the members it chose; the
//! STORE forms the members they store.

use std::collections::HashSet;

use keel_engine::{Read, SetOp, Write, WriteResult};

use super::*;

pub const COMMANDS: &[Command] = &[
    Command::new("sadd", -3, W, KEY1)
        .redis("write denyoom fast", "@set")
        .key_flags("RW insert")
        .doc(
            "set",
            "key member [member ...]",
            "Adds members to a set, creating it, and returns how many were added.",
        )
        .data(|_, a, _| {
            let w = Write::SetAdd {
                key: a[1].clone(),
                members: a[2..].to_vec(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("srem", -3, W, KEY1)
        .redis("write fast", "@set")
        .key_flags("RW delete")
        .doc(
            "set",
            "key member [member ...]",
            "Removes members of a set, and the set once it is empty; returns how many were removed.",
        )
        .data(|_, a, _| {
            let w = Write::SetRem {
                key: a[1].clone(),
                members: a[2..].to_vec(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("smembers", 2, R, KEY1)
        .redis("readonly", "@set")
        .key_flags("RO access")
        .doc("set", "key", "Returns every member of a set.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::SetMembers)], |r| {
                set_reply(&r[0])
            }))
        }),
    Command::new("sismember", 3, R, KEY1)
        .redis("readonly fast", "@set")
        .key_flags("RO")
        .doc("set", "key member", "Returns 1 if the set holds the member, else 0.")
        .data(|_, a, _| {
            let op = Read::SetIsMember {
                member: a[2].clone(),
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| int_reply(&r[0])))
        }),
    Command::new("smismember", -3, R, KEY1)
        .redis("readonly fast", "@set")
        .key_flags("RO access")
        .doc(
            "set",
            "key member [member ...]",
            "Returns 1 or 0 for each member: whether the set holds it.",
        )
        .data(|_, a, _| {
            let op = Read::SetMisMember {
                members: a[2..].to_vec(),
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| match &r[0] {
                WriteResult::Values(v) => Reply::Array(
                    v.iter()
                        .map(|x| Reply::Int((x.as_deref() == Some(b"1")) as i64))
                        .collect(),
                ),
                other => value_reply(other),
            }))
        }),
    Command::new("scard", 2, R, KEY1)
        .redis("readonly fast", "@set")
        .key_flags("RO")
        .doc("set", "key", "Returns the number of members of a set.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::SetCard)], |r| {
                int_reply(&r[0])
            }))
        }),
    // Returns the members it removed (Redis: ACCESS).
    Command::new("spop", -2, RW, KEY1)
        .redis("write fast", "@set")
        .key_flags("RW access delete")
        .doc(
            "set",
            "key [count]",
            "Removes and returns random members of a set; the choice is logged, so replay and replicas agree.",
        )
        .data(spop),
    Command::new("srandmember", -2, R, KEY1)
        .redis("readonly", "@set")
        .key_flags("RO access")
        .doc(
            "set",
            "key [count]",
            "Returns random members of a set: distinct ones for a positive count, repeats allowed for a negative one.",
        )
        .data(srandmember),
    Command::new("smove", 4, W, (1, 2, 1))
        .redis("write fast", "@set")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "RW insert")])
        .doc(
            "set",
            "source destination member",
            "Moves a member from one set to another, atomically.",
        )
        .data(|_, a, _| {
            let w = Write::SetMove {
                from: a[1].clone(),
                to: a[2].clone(),
                member: a[3].clone(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("sinter", -2, R, ALL_KEYS)
        .redis("readonly", "@set")
        .key_flags("RO access")
        .doc("set", "key [key ...]", "Returns the members every set holds.")
        .data(combine),
    Command::new("sunion", -2, R, ALL_KEYS)
        .redis("readonly", "@set")
        .key_flags("RO access")
        .doc("set", "key [key ...]", "Returns the members any of the sets holds.")
        .data(combine),
    Command::new("sdiff", -2, R, ALL_KEYS)
        .redis("readonly", "@set")
        .key_flags("RO access")
        .doc(
            "set",
            "key [key ...]",
            "Returns the members of the first set that no other holds.",
        )
        .data(combine),
    Command::new("sintercard", -3, R, NO_KEYS)
        .redis("readonly", "@set")
        .key_specs(&[Keys::keynum(1, "RO access")])
        .doc(
            "set",
            "numkeys key [key ...] [LIMIT limit]",
            "Returns how many members every set holds, counting at most LIMIT (0: no limit).",
        )
        .data(sintercard),
    Command::new("sinterstore", -3, W, ALL_KEYS)
        .redis("write denyoom", "@set")
        .key_specs(&[Keys::at(1, "RW update"), Keys::range(2, -1, 1, "RO access")])
        .doc(
            "set",
            "destination key [key ...]",
            "Stores the intersection of the sets and returns its size.",
        )
        .data(store),
    Command::new("sunionstore", -3, W, ALL_KEYS)
        .redis("write denyoom", "@set")
        .key_specs(&[Keys::at(1, "OW update"), Keys::range(2, -1, 1, "RO access")])
        .doc(
            "set",
            "destination key [key ...]",
            "Stores the union of the sets and returns its size.",
        )
        .data(store),
    Command::new("sdiffstore", -3, W, ALL_KEYS)
        .redis("write denyoom", "@set")
        .key_specs(&[Keys::at(1, "OW update"), Keys::range(2, -1, 1, "RO access")])
        .doc(
            "set",
            "destination key [key ...]",
            "Stores the difference of the sets and returns its size.",
        )
        .data(store),
    Command::new("sscan", -3, R, KEY1)
        .redis("readonly", "@set")
        .key_flags("RO access")
        .doc(
            "set",
            "key cursor [MATCH pattern] [COUNT count]",
            "Incrementally iterates over the members of a set.",
        )
        .data(|_, a, _| {
            let s = ScanArgs::parse(a)?;
            let op = Read::SetScan {
                cursor: s.cursor,
                count: s.count,
            };
            Ok(Part::new(vec![read(&a[1], op)], move |r| s.reply(&mut r[0], 1)))
        }),
];

/// Members as a set reply (an array in RESP2), or the read's error.
fn set_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Values(v) => Reply::Set(v.iter().map(bulk_or_nil).collect()),
        other => value_reply(other),
    }
}

fn op_of(name: &str) -> SetOp {
    match name.trim_end_matches("store") {
        "sinter" => SetOp::Inter,
        "sunion" => SetOp::Union,
        _ => SetOp::Diff,
    }
}

/// A count argument that must not be negative (SPOP's).
fn positive_count(b: &[u8]) -> Result<usize, Reply> {
    match int_arg(b)? {
        n if n < 0 => Err(Reply::err("ERR value is out of range, must be positive")),
        n => Ok(n as usize),
    }
}

fn spop(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let count = match a.len() {
        2 => None,
        3 => Some(positive_count(&a[2])?),
        _ => return Err(Reply::err(SYNTAX)),
    };
    let w = Write::SetPop {
        key: a[1].clone(),
        count,
    };
    Ok(Part::new(vec![w], |r| match &r[0] {
        WriteResult::Values(_) => set_reply(&r[0]),
        other => value_reply(other),
    }))
}

fn srandmember(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let count = match a.len() {
        2 => None,
        3 => Some(int_arg(&a[2])?),
        _ => return Err(Reply::err(SYNTAX)),
    };
    if let Some(c) = count {
        random_count(c, false, "members")?;
    }
    let op = Read::SetRandom {
        count: count.unwrap_or(1),
        seed: random(),
    };
    Ok(Part::new(vec![read(&a[1], op)], move |r| {
        match (&mut r[0], count) {
            (WriteResult::Values(v), None) => v.pop().flatten().map_or(Reply::Nil, Reply::Bulk),
            (other, _) => take_values_reply(other),
        }
    }))
}

/// The members of the sets the results hold (absent keys are empty), combined by `op`; or the
/// first error.
fn combined(op: SetOp, results: &[WriteResult]) -> Result<Vec<Bytes>, Reply> {
    let mut sets = Vec::with_capacity(results.len());
    for r in results {
        match r {
            WriteResult::Values(v) => sets.push(v.iter().flatten().cloned().collect::<Vec<_>>()),
            other => return Err(value_reply(other)),
        }
    }
    let rest: Vec<HashSet<&Bytes>> = sets[1..].iter().map(|s| s.iter().collect()).collect();
    let first = sets[0].iter();
    Ok(match op {
        SetOp::Inter => first
            .filter(|m| rest.iter().all(|s| s.contains(m)))
            .cloned()
            .collect(),
        SetOp::Diff => first
            .filter(|m| rest.iter().all(|s| !s.contains(m)))
            .cloned()
            .collect(),
        SetOp::Union => {
            let mut seen = HashSet::new();
            sets.iter()
                .flatten()
                .filter(|m| seen.insert(*m))
                .cloned()
                .collect()
        }
    })
}

fn combine(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let op = op_of(name);
    let reads = a[1..].iter().map(|k| read(k, Read::SetMembers)).collect();
    Ok(Part::new(reads, move |r| match combined(op, r) {
        Ok(members) => Reply::Set(members.into_iter().map(Reply::Bulk).collect()),
        Err(e) => e,
    }))
}

fn sintercard(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let n = match parse_i64(&a[1]) {
        Some(n) if n > 0 => n,
        _ => return Err(Reply::err("ERR numkeys should be greater than 0")),
    };
    let n = n as usize;
    if n > a.len() - 2 {
        return Err(Reply::err(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    let keys = &a[2..2 + n];
    let limit = match &a[2 + n..] {
        [] => 0,
        [o, l] if eq(o, "limit") => match int_arg(l) {
            Ok(l) if l < 0 => return Err(Reply::err("ERR LIMIT can't be negative")),
            Ok(l) => l as usize,
            Err(_) => return Err(Reply::err("ERR LIMIT can't be negative")),
        },
        _ => return Err(Reply::err(SYNTAX)),
    };
    let reads = keys.iter().map(|k| read(k, Read::SetMembers)).collect();
    Ok(Part::new(reads, move |r| match combined(SetOp::Inter, r) {
        Ok(members) if limit > 0 => Reply::Int(members.len().min(limit) as i64),
        Ok(members) => Reply::Int(members.len() as i64),
        Err(e) => e,
    }))
}

fn store(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let w = Write::SetStore {
        key: a[1].clone(),
        op: op_of(name),
        keys: a[2..].to_vec(),
    };
    Ok(Part::new(vec![w], |r| int_reply(&r[0])))
}
