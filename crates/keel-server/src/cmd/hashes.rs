//! Hash commands. Writes log the fields they set or remove (HINCRBY the value it produced), so a
//! record stays the size of the change, not of the hash (docs/FORMAT.md).

use keel_engine::{Read, Write, WriteResult};

use super::*;

pub const COMMANDS: &[Command] = &[
    Command::new("hset", -4, W, KEY1)
        .redis("write denyoom fast", "@hash")
        .key_flags("RW update")
        .doc(
            "hash",
            "key field value [field value ...]",
            "Sets fields of a hash, creating it, and returns how many fields were added.",
        )
        .data(hset),
    Command::new("hmset", -4, W, KEY1)
        .redis("write denyoom fast", "@hash")
        .key_flags("RW update")
        .doc(
            "hash",
            "key field value [field value ...]",
            "Sets fields of a hash, creating it (HSET that replies OK).",
        )
        .data(hset),
    Command::new("hsetnx", 4, W, KEY1)
        .redis("write denyoom fast", "@hash")
        .key_flags("RW insert")
        .doc(
            "hash",
            "key field value",
            "Sets a field of a hash only if the field does not exist.",
        )
        .data(|_, a, _| {
            let pairs = vec![(a[2].clone(), a[3].clone())];
            Ok(Part::new(
                vec![Write::HashSet {
                    key: a[1].clone(),
                    pairs,
                    only_new: true,
                }],
                |r| int_reply(&r[0]),
            ))
        }),
    Command::new("hget", 3, R, KEY1)
        .redis("readonly fast", "@hash")
        .key_flags("RO access")
        .doc("hash", "key field", "Returns the value of a field of a hash, or nil.")
        .data(|_, a, _| {
            let fields = vec![a[2].clone()];
            Ok(Part::new(vec![read(&a[1], Read::HashGet { fields })], |r| {
                match &r[0] {
                    WriteResult::Values(v) if v.len() == 1 => {
                        v[0].clone().map_or(Reply::Nil, Reply::Bulk)
                    }
                    other => values_reply(other),
                }
            }))
        }),
    Command::new("hmget", -3, R, KEY1)
        .redis("readonly fast", "@hash")
        .key_flags("RO access")
        .doc(
            "hash",
            "key field [field ...]",
            "Returns the values of fields of a hash, nil for each one missing.",
        )
        .data(|_, a, _| {
            let fields = a[2..].to_vec();
            Ok(Part::new(vec![read(&a[1], Read::HashGet { fields })], |r| {
                take_values_reply(&mut r[0])
            }))
        }),
    Command::new("hgetall", 2, R, KEY1)
        .redis("readonly", "@hash")
        .key_flags("RO access")
        .doc("hash", "key", "Returns every field and value of a hash.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::HashAll)], |r| {
                match &r[0] {
                    WriteResult::Values(v) => Reply::Map(pairs(v)),
                    other => values_reply(other),
                }
            }))
        }),
    Command::new("hkeys", 2, R, KEY1)
        .redis("readonly", "@hash")
        .key_flags("RO access")
        .doc("hash", "key", "Returns every field of a hash.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::HashKeys)], |r| {
                take_values_reply(&mut r[0])
            }))
        }),
    Command::new("hvals", 2, R, KEY1)
        .redis("readonly", "@hash")
        .key_flags("RO access")
        .doc("hash", "key", "Returns every value of a hash.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::HashVals)], |r| {
                take_values_reply(&mut r[0])
            }))
        }),
    Command::new("hlen", 2, R, KEY1)
        .redis("readonly fast", "@hash")
        .key_flags("RO")
        .doc("hash", "key", "Returns the number of fields of a hash.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::HashLen)], |r| {
                int_reply(&r[0])
            }))
        }),
    Command::new("hexists", 3, R, KEY1)
        .redis("readonly fast", "@hash")
        .key_flags("RO")
        .doc("hash", "key field", "Returns 1 if a hash has the field, else 0.")
        .data(|_, a, _| {
            let op = Read::HashExists {
                field: a[2].clone(),
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| int_reply(&r[0])))
        }),
    Command::new("hstrlen", 3, R, KEY1)
        .redis("readonly fast", "@hash")
        .key_flags("RO")
        .doc(
            "hash",
            "key field",
            "Returns the length of a field's value, 0 if it does not exist.",
        )
        .data(|_, a, _| {
            let op = Read::HashStrlen {
                field: a[2].clone(),
            };
            Ok(Part::new(vec![read(&a[1], op)], |r| int_reply(&r[0])))
        }),
    Command::new("hdel", -3, W, KEY1)
        .redis("write fast", "@hash")
        .key_flags("RW delete")
        .doc(
            "hash",
            "key field [field ...]",
            "Removes fields of a hash, and the hash once it is empty; returns how many were removed.",
        )
        .data(|_, a, _| {
            Ok(Part::new(
                vec![Write::HashDel {
                    key: a[1].clone(),
                    fields: a[2..].to_vec(),
                }],
                |r| int_reply(&r[0]),
            ))
        }),
    // The counters return the stored number plus the increment (Redis: ACCESS).
    Command::new("hincrby", 4, RW, KEY1)
        .redis("write denyoom fast", "@hash")
        .key_flags("RW access update")
        .doc(
            "hash",
            "key field increment",
            "Adds an integer to a field's integer value; the log holds the result.",
        )
        .data(|_, a, _| {
            let by = int_arg(&a[3])?;
            Ok(Part::new(
                vec![Write::HashIncr {
                    key: a[1].clone(),
                    field: a[2].clone(),
                    by,
                }],
                |r| match &r[0] {
                    WriteResult::Failed(WriteError::NotAnInteger) => {
                        Reply::err("ERR hash value is not an integer")
                    }
                    other => int_reply(other),
                },
            ))
        }),
    Command::new("hincrbyfloat", 4, RW, KEY1)
        .redis("write denyoom fast", "@hash")
        .key_flags("RW access update")
        .doc(
            "hash",
            "key field increment:double",
            "Adds a number to a field's numeric value; the log holds the result.",
        )
        .data(|_, a, _| {
            let by = float_arg(&a[3])?;
            if by.is_infinite() {
                return Err(Reply::err("ERR value is NaN or Infinity"));
            }
            Ok(Part::new(
                vec![Write::HashIncrFloat {
                    key: a[1].clone(),
                    field: a[2].clone(),
                    by,
                }],
                |r| match &r[0] {
                    WriteResult::Failed(WriteError::NotAFloat) => {
                        Reply::err("ERR hash value is not a float")
                    }
                    other => value_reply(other),
                },
            ))
        }),
    Command::new("hrandfield", -2, R, KEY1)
        .redis("readonly", "@hash")
        .key_flags("RO access")
        .doc(
            "hash",
            "key [count [WITHVALUES]]",
            "Returns random fields of a hash: distinct ones for a positive count, repeats allowed for a negative one.",
        )
        .data(hrandfield),
    Command::new("hscan", -3, R, KEY1)
        .redis("readonly", "@hash")
        .key_flags("RO access")
        .doc(
            "hash",
            "key cursor [MATCH pattern] [COUNT count]",
            "Incrementally iterates over the fields and values of a hash.",
        )
        .data(hscan),
];

fn hset(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    // The name, the key, then whole pairs.
    if !a.len().is_multiple_of(2) {
        return Err(wrong_args(name));
    }
    let pairs = a[2..]
        .chunks(2)
        .map(|fv| (fv[0].clone(), fv[1].clone()))
        .collect();
    let w = Write::HashSet {
        key: a[1].clone(),
        pairs,
        only_new: false,
    };
    Ok(if name == "hmset" {
        Part::new(vec![w], |r| match &r[0] {
            WriteResult::Int(_) => Reply::ok(),
            other => int_reply(other),
        })
    } else {
        Part::new(vec![w], |r| int_reply(&r[0]))
    })
}

/// Field, value, field, value, … as pairs.
fn pairs(v: &[Option<Bytes>]) -> Vec<(Reply, Reply)> {
    v.chunks(2)
        .map(|p| {
            let bulk = |b: &Option<Bytes>| b.clone().map_or(Reply::Nil, Reply::Bulk);
            (bulk(&p[0]), bulk(&p[1]))
        })
        .collect()
}

fn hrandfield(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let op = |count, seed| Read::HashRandom { count, seed };
    random_pairs(a, "withvalues", "fields", op, pairs)
}

fn hscan(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let s = ScanArgs::parse(a)?;
    let op = Read::HashScan {
        cursor: s.cursor,
        count: s.count,
    };
    Ok(Part::new(vec![read(&a[1], op)], move |r| {
        s.reply(&mut r[0], 2)
    }))
}
