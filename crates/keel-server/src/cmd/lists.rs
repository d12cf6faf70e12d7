//! List commands. Writes log the elements they push and how many elements they pop, so a record
//! is the size of the change, not of the list. The blocking pops (BLPOP and the like) compile to
//! the same writes; the connection waits while they find nothing (`crate::blocking`).

use keel_engine::{Read, Write, WriteResult};

use super::*;

pub const COMMANDS: &[Command] = &[
    Command::new("lpush", -3, W, KEY1)
        .redis("write denyoom fast", "@list")
        .key_flags("RW insert")
        .doc(
            "list",
            "key element [element ...]",
            "Pushes elements onto the head of a list, creating it; returns its length.",
        )
        .data(push),
    Command::new("rpush", -3, W, KEY1)
        .redis("write denyoom fast", "@list")
        .key_flags("RW insert")
        .doc(
            "list",
            "key element [element ...]",
            "Pushes elements onto the tail of a list, creating it; returns its length.",
        )
        .data(push),
    Command::new("lpushx", -3, W, KEY1)
        .redis("write denyoom fast", "@list")
        .key_flags("RW insert")
        .doc(
            "list",
            "key element [element ...]",
            "Pushes elements onto the head of a list only if it exists.",
        )
        .data(push),
    Command::new("rpushx", -3, W, KEY1)
        .redis("write denyoom fast", "@list")
        .key_flags("RW insert")
        .doc(
            "list",
            "key element [element ...]",
            "Pushes elements onto the tail of a list only if it exists.",
        )
        .data(push),
    // Returns what it removed (Redis: ACCESS).
    Command::new("lpop", -2, RW, KEY1)
        .redis("write fast", "@list")
        .key_flags("RW access delete")
        .doc(
            "list",
            "key [count]",
            "Removes and returns elements from the head of a list.",
        )
        .data(pop),
    Command::new("rpop", -2, RW, KEY1)
        .redis("write fast", "@list")
        .key_flags("RW access delete")
        .doc(
            "list",
            "key [count]",
            "Removes and returns elements from the tail of a list.",
        )
        .data(pop),
    Command::new("llen", 2, R, KEY1)
        .redis("readonly fast", "@list")
        .key_flags("RO")
        .doc("list", "key", "Returns the length of a list.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::ListLen)], |r| {
                int_reply(&r[0])
            }))
        }),
    Command::new("lrange", 4, R, KEY1)
        .redis("readonly", "@list")
        .key_flags("RO access")
        .doc(
            "list",
            "key start stop",
            "Returns the elements from start to stop, inclusive; negative indexes count from the tail.",
        )
        .data(|_, a, _| {
            let op = Read::ListRange {
                start: int_arg(&a[2])?,
                stop: int_arg(&a[3])?,
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| take_values_reply(&mut r[0])))
        }),
    Command::new("lindex", 3, R, KEY1)
        .redis("readonly", "@list")
        .key_flags("RO access")
        .doc(
            "list",
            "key index",
            "Returns the element at an index, or nil; negative indexes count from the tail.",
        )
        .data(|_, a, _| {
            let op = Read::ListIndex {
                index: int_arg(&a[2])?,
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| take_value_reply(&mut r[0])))
        }),
    Command::new("lset", 4, W, KEY1)
        .redis("write denyoom", "@list")
        .key_flags("RW update")
        .doc("list", "key index element", "Sets the element at an index.")
        .data(|_, a, _| {
            let w = Write::ListSet {
                key: a[1].clone(),
                index: int_arg(&a[2])?,
                element: a[3].clone(),
            };
            Ok(Part::new(vec![w], |r| match &r[0] {
                WriteResult::Put(_) => Reply::ok(),
                other => value_reply(other),
            }))
        }),
    Command::new("linsert", 5, W, KEY1)
        .redis("write denyoom", "@list")
        .key_flags("RW insert")
        .doc(
            "list",
            "key <BEFORE|AFTER> pivot element",
            "Inserts an element before or after the first one equal to the pivot.",
        )
        .data(|_, a, _| {
            let after = if eq(&a[2], "after") {
                true
            } else if eq(&a[2], "before") {
                false
            } else {
                return Err(Reply::err(SYNTAX));
            };
            let w = Write::ListInsert {
                key: a[1].clone(),
                after,
                pivot: a[3].clone(),
                element: a[4].clone(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("lrem", 4, W, KEY1)
        .redis("write", "@list")
        .key_flags("RW delete")
        .doc(
            "list",
            "key count element",
            "Removes elements equal to one: count from the head, -count from the tail, 0 all.",
        )
        .data(|_, a, _| {
            let w = Write::ListRem {
                key: a[1].clone(),
                count: int_arg(&a[2])?,
                element: a[3].clone(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("ltrim", 4, W, KEY1)
        .redis("write", "@list")
        .key_flags("RW delete")
        .doc(
            "list",
            "key start stop",
            "Keeps only the elements from start to stop, inclusive.",
        )
        .data(|_, a, _| {
            let w = Write::ListTrim {
                key: a[1].clone(),
                start: int_arg(&a[2])?,
                stop: int_arg(&a[3])?,
            };
            Ok(Part::new(vec![w], |r| match &r[0] {
                WriteResult::Put(_) => Reply::ok(),
                other => value_reply(other),
            }))
        }),
    Command::new("lpos", -3, R, KEY1)
        .redis("readonly", "@list")
        .key_flags("RO access")
        .doc(
            "list",
            "key element [RANK rank] [COUNT num-matches] [MAXLEN len]",
            "Returns the index of an element, or of several with COUNT.",
        )
        .data(lpos),
    Command::new("lmove", 5, RW, (1, 2, 1))
        .redis("write denyoom", "@list")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "RW insert")])
        .doc(
            "list",
            "source destination <LEFT|RIGHT> <LEFT|RIGHT>",
            "Pops an element from one end of a list and pushes it onto an end of another, atomically.",
        )
        .data(|_, a, _| {
            let (from_front, to_front) = (side(&a[3])?, side(&a[4])?);
            Ok(lmove(a, from_front, to_front))
        }),
    Command::new("lmpop", -4, RW, NO_KEYS)
        .redis("write", "@list")
        .key_specs(&[Keys::keynum(1, "RW access delete")])
        .doc(
            "list",
            "numkeys key [key ...] <LEFT|RIGHT> [COUNT count]",
            "Pops elements from the first of the lists that exists.",
        )
        .data(|_, a, _| mpop(&a[1..])),
    Command::new("blpop", -3, RW, (1, -2, 1))
        .redis("write blocking", "@list")
        .key_flags("RW access delete")
        .doc(
            "list",
            "key [key ...] timeout:double",
            "Pops the head of the first list that has an element, waiting up to timeout seconds (0: for ever) for one.",
        )
        .data(bpop)
        .blocks(Block {
            wait: |a| Block::seconds(last(a)),
            prepare: None,
            keys: |a| a[1..a.len() - 1].to_vec(),
        }),
    Command::new("brpop", -3, RW, (1, -2, 1))
        .redis("write blocking", "@list")
        .key_flags("RW access delete")
        .doc(
            "list",
            "key [key ...] timeout:double",
            "Pops the tail of the first list that has an element, waiting up to timeout seconds (0: for ever) for one.",
        )
        .data(bpop)
        .blocks(Block {
            wait: |a| Block::seconds(last(a)),
            prepare: None,
            keys: |a| a[1..a.len() - 1].to_vec(),
        }),
    Command::new("blmove", 6, RW, (1, 2, 1))
        .redis("write denyoom blocking", "@list")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "RW insert")])
        .doc(
            "list",
            "source destination <LEFT|RIGHT> <LEFT|RIGHT> timeout:double",
            "LMOVE, waiting up to timeout seconds (0: for ever) for the source to have an element.",
        )
        .data(|_, a, _| {
            let (from_front, to_front) = (side(&a[3])?, side(&a[4])?);
            Ok(lmove(a, from_front, to_front))
        })
        .blocks(Block {
            wait: |a| Block::seconds(last(a)),
            prepare: None,
            keys: |a| vec![a[1].clone()],
        }),
    Command::new("brpoplpush", 4, RW, (1, 2, 1))
        .redis("write denyoom blocking", "@list")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "RW insert")])
        .doc(
            "list",
            "source destination timeout:double",
            "RPOPLPUSH, waiting up to timeout seconds (0: for ever) for the source to have an element.",
        )
        .data(|_, a, _| Ok(lmove(a, false, true)))
        .blocks(Block {
            wait: |a| Block::seconds(last(a)),
            prepare: None,
            keys: |a| vec![a[1].clone()],
        }),
    Command::new("blmpop", -5, RW, NO_KEYS)
        .redis("write blocking", "@list")
        .key_specs(&[Keys::keynum(2, "RW access delete")])
        .doc(
            "list",
            "timeout:double numkeys key [key ...] <LEFT|RIGHT> [COUNT count]",
            "LMPOP, waiting up to timeout seconds (0: for ever) for a list to have an element.",
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
    Command::new("rpoplpush", 3, RW, (1, 2, 1))
        .redis("write denyoom", "@list")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "RW insert")])
        .doc(
            "list",
            "source destination",
            "Pops an element from the tail of a list and pushes it onto the head of another.",
        )
        .data(|_, a, _| Ok(lmove(a, false, true))),
];

fn last(a: &[Bytes]) -> &Bytes {
    &a[a.len() - 1]
}

/// BLPOP's and BRPOP's try: the first list among the keys, one element.
fn bpop(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    Block::seconds(last(a))?;
    let w = Write::ListPopFirst {
        keys: a[1..a.len() - 1].to_vec(),
        front: name == "blpop",
        count: 1,
        skip_other_types: false,
    };
    Ok(Part::new(vec![w], |r| match &mut r[0] {
        WriteResult::Value(None) => Reply::NilArray,
        other => take_values_reply(other),
    }))
}

/// LMPOP's arguments after the command (BLMPOP's after the timeout): numkeys, the keys, the
/// side and an optional COUNT.
fn mpop(a: &[Bytes]) -> Result<Part, Reply> {
    let (keys, front, count) = mpop_args(a, ["right", "left"])?;
    let w = Write::ListPopFirst {
        keys,
        front,
        count,
        skip_other_types: false,
    };
    Ok(Part::new(vec![w], |r| match &r[0] {
        WriteResult::Values(v) if !v.is_empty() => Reply::Array(vec![
            bulk_or_nil(&v[0]),
            Reply::Array(v[1..].iter().map(bulk_or_nil).collect()),
        ]),
        WriteResult::Value(None) => Reply::NilArray,
        other => values_reply(other),
    }))
}

/// LEFT (the head) or RIGHT.
fn side(b: &[u8]) -> Result<bool, Reply> {
    if eq(b, "left") {
        Ok(true)
    } else if eq(b, "right") {
        Ok(false)
    } else {
        Err(Reply::err(SYNTAX))
    }
}

fn push(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let w = Write::ListPush {
        key: a[1].clone(),
        front: name.starts_with('l'),
        elements: a[2..].to_vec(),
        only_existing: name.ends_with('x'),
    };
    Ok(Part::new(vec![w], |r| int_reply(&r[0])))
}

fn pop(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let count = match a.len() {
        2 => None,
        3 => match int_arg(&a[2])? {
            n if n < 0 => return Err(Reply::err("ERR value is out of range, must be positive")),
            n => Some(n as usize),
        },
        _ => return Err(wrong_args(name)),
    };
    let w = Write::ListPop {
        key: a[1].clone(),
        front: name == "lpop",
        count,
    };
    Ok(Part::new(vec![w], move |r| match (&mut r[0], count) {
        // With a count, an absent list is a nil array, as in Redis.
        (WriteResult::Value(None), Some(_)) => Reply::NilArray,
        (other, _) => take_values_reply(other),
    }))
}

fn lmove(a: &[Bytes], from_front: bool, to_front: bool) -> Part {
    let w = Write::ListMove {
        from: a[1].clone(),
        to: a[2].clone(),
        from_front,
        to_front,
    };
    Part::new(vec![w], |r| take_value_reply(&mut r[0]))
}

fn lpos(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let (mut rank, mut count, mut maxlen) = (1i64, None, 0usize);
    for o in a[3..].chunks(2) {
        let [name, v] = o else {
            return Err(Reply::err(SYNTAX));
        };
        let n = int_arg(v)?;
        if eq(name, "rank") {
            if n == i64::MIN {
                return Err(Reply::err(
                    "ERR value is out of range, value must between -9223372036854775807 and \
                     9223372036854775807",
                ));
            }
            if n == 0 {
                return Err(Reply::err(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the \
                     second ... or use negative to start from the end of the list",
                ));
            }
            rank = n;
        } else if eq(name, "count") {
            if n < 0 {
                return Err(Reply::err("ERR COUNT can't be negative"));
            }
            count = Some(n as usize);
        } else if eq(name, "maxlen") {
            if n < 0 {
                return Err(Reply::err("ERR MAXLEN can't be negative"));
            }
            maxlen = n as usize;
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    let op = Read::ListPos {
        element: a[2].clone(),
        rank,
        count: count.unwrap_or(1),
        maxlen,
    };
    Ok(Part::new(vec![read(&a[1], op)], move |r| match &r[0] {
        WriteResult::Values(found) => {
            let index = |v: &Option<Bytes>| {
                Reply::Int(
                    v.as_ref()
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                        .unwrap_or(-1),
                )
            };
            match count {
                Some(_) => Reply::Array(found.iter().map(index).collect()),
                None => found.first().map_or(Reply::Nil, index),
            }
        }
        other => value_reply(other),
    }))
}
