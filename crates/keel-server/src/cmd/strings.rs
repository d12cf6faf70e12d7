//! String commands, and keel's own versioned writes (KEEL.VERSION, KEEL.CAS, KEEL.IDEM).

use bytes::Bytes;
use keel_engine::{Guard, PutIf, Read, Ttl, Write, WriteError, WriteResult};

use super::*;

pub const COMMANDS: &[Command] = &[
    Command::new("get", 2, R, KEY1)
        .redis("readonly fast", "@string")
        .key_flags("RO access")
        .doc("string", "key", "Returns the value of a key, or nil.")
        .data(|_, a, _| Ok(Part::new(vec![get(&a[1])], |r| take_value_reply(&mut r[0])))),
    // READ only with GET.
    Command::new("set", -3, RW.with(VARIES), KEY1)
        .redis("write denyoom", "@string")
        .key_flags("RW access update variable_flags")
        .get_keys(set_keys)
        .doc(
            "string",
            "key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]",
            "Sets a key's value, optionally only if it exists or not, with an expiry, returning the old value.",
        )
        .data(set),
    Command::new("setnx", 3, W, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("OW insert")
        .doc("string", "key value", "Sets a key's value only if the key does not exist.")
        .data(|_, a, _| {
            Ok(Part::new(
                vec![put(&a[1], &a[2], Ttl::None, PutIf::Absent)],
                |r| Reply::Int(matches!(r[0], WriteResult::Put(true)) as i64),
            ))
        }),
    Command::new("setex", 4, W, KEY1)
        .redis("write denyoom", "@string")
        .key_flags("OW update")
        .doc("string", "key seconds value", "Sets a key's value with an expiry in seconds.")
        .data(setex),
    Command::new("psetex", 4, W, KEY1)
        .redis("write denyoom", "@string")
        .key_flags("OW update")
        .doc(
            "string",
            "key milliseconds value",
            "Sets a key's value with an expiry in milliseconds.",
        )
        .data(setex),
    Command::new("getset", 3, RW, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW access update")
        .doc("string", "key value", "Sets a key's value and returns the old one.")
        .data(|_, a, _| {
            let set = put(&a[1], &a[2], Ttl::None, PutIf::Always);
            Ok(Part::new(vec![get_then(&a[1], set)], |r| {
                take_value_reply(&mut r[0])
            }))
        }),
    Command::new("getdel", 2, RW, KEY1)
        .redis("write fast", "@string")
        .key_flags("RW access delete")
        .doc("string", "key", "Returns a key's value and deletes the key.")
        .data(|_, a, _| {
            let del = Write::Delete { key: a[1].clone() };
            Ok(Part::new(vec![get_then(&a[1], del)], |r| {
                take_value_reply(&mut r[0])
            }))
        }),
    // WRITE only with an option (EX, PX, EXAT, PXAT, PERSIST): without, it is a plain read.
    // Redis flags GETEX `write` always; keel lets a read-only user run the pure read.
    Command::new("getex", -2, RW.with(VARIES), KEY1)
        .redis("write fast", "@string")
        .key_flags("RW access update")
        .doc(
            "string",
            "key [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|PERSIST]",
            "Returns a key's value and changes or removes its expiry.",
        )
        .data(getex),
    Command::new("mget", -2, R, ALL_KEYS)
        .redis("readonly fast", "@string")
        .key_flags("RO access")
        .doc("string", "key [key ...]", "Returns the values of several keys.")
        .data(|_, a, _| {
            // A key of another type reads as nil, as in Redis.
            Ok(Part::new(a[1..].iter().map(get).collect(), |r| {
                let value = |r: &WriteResult| match r {
                    WriteResult::Failed(WriteError::WrongType) => Reply::Nil,
                    r => value_reply(r),
                };
                Reply::Array(r.iter().map(value).collect())
            }))
        }),
    Command::new("mset", -3, W, (1, -1, 2))
        .redis("write denyoom", "@string")
        .key_flags("OW update")
        .doc(
            "string",
            "key value [key value ...]",
            "Sets several keys in one atomic log record.",
        )
        .data(mset),
    Command::new("msetnx", -3, W, (1, -1, 2))
        .redis("write denyoom", "@string")
        .key_flags("OW insert")
        .doc(
            "string",
            "key value [key value ...]",
            "Sets several keys atomically, only if none of them exists.",
        )
        .data(mset),
    // The counters return the stored number plus the increment (Redis: ACCESS).
    Command::new("incr", 2, RW, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW access update")
        .doc("string", "key", "Adds one to a key's integer value.")
        .data(incr),
    Command::new("decr", 2, RW, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW access update")
        .doc("string", "key", "Subtracts one from a key's integer value.")
        .data(incr),
    Command::new("incrby", 3, RW, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW access update")
        .doc("string", "key increment", "Adds an integer to a key's integer value.")
        .data(incr),
    Command::new("decrby", 3, RW, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW access update")
        .doc(
            "string",
            "key decrement",
            "Subtracts an integer from a key's integer value.",
        )
        .data(incr),
    Command::new("incrbyfloat", 3, RW, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW access update")
        .doc(
            "string",
            "key increment:double",
            "Adds a number to a key's numeric value; the log holds the result, not the increment.",
        )
        .data(incrbyfloat),
    Command::new("append", 3, W, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW insert")
        .doc("string", "key value", "Appends to a key's value and returns the new length.")
        .data(|_, a, _| {
            Ok(Part::new(
                vec![Write::Append {
                    key: a[1].clone(),
                    suffix: a[2].clone(),
                }],
                |r| int_reply(&r[0]),
            ))
        }),
    Command::new("strlen", 2, R, KEY1)
        .redis("readonly fast", "@string")
        .key_flags("RO")
        .doc("string", "key", "Returns the length of a key's value.")
        .data(|_, a, _| {
            Ok(Part::new(vec![get(&a[1])], |r| match &r[0] {
                WriteResult::Value(v) => Reply::Int(v.as_ref().map_or(0, |v| v.len() as i64)),
                other => value_reply(other),
            }))
        }),
    Command::new("getrange", 4, R, KEY1)
        .redis("readonly", "@string")
        .key_flags("RO access")
        .doc(
            "string",
            "key start end",
            "Returns part of a key's value; negative offsets count from the end.",
        )
        .data(getrange),
    Command::new("substr", 4, R, KEY1)
        .redis("readonly", "@string")
        .key_flags("RO access")
        .doc(
            "string",
            "key start end",
            "GETRANGE under its old name.",
        )
        .data(getrange),
    Command::new("setrange", 4, W, KEY1)
        .redis("write denyoom", "@string")
        .key_flags("RW update")
        .doc(
            "string",
            "key offset value",
            "Overwrites part of a key's value from offset, zero bytes filling any gap; returns the new length.",
        )
        .data(|_, a, _| {
            let offset = int_arg(&a[2])?;
            if offset < 0 {
                return Err(Reply::err("ERR offset is out of range"));
            }
            let w = Write::SetRange {
                key: a[1].clone(),
                offset: offset as u64,
                value: a[3].clone(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("lcs", -3, R, (1, 2, 1))
        .redis("readonly", "@string")
        .key_flags("RO access")
        .doc(
            "string",
            "key1 key2 [LEN] [IDX] [MINMATCHLEN min-match-len] [WITHMATCHLEN]",
            "Returns the longest common subsequence of two strings, its length, or where it matches.",
        )
        .data(lcs),
    Command::new("keel.version", 2, R, KEY1)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO")
        .doc(
            "string",
            "key",
            "Returns the version of a key (for KEEL.CAS), or nil if it does not exist.",
        ),
    Command::new("keel.cas", 4, W, KEY1)
        .redis("write denyoom fast", "@string")
        .key_flags("RW update")
        .doc(
            "string",
            "key version value",
            "Sets a key's value only if its version is still the one given; 0 means the key must not exist.",
        )
        .data(cas),
    // Stores its outcome; also needs what the wrapped command needs (see `crate::auth`).
    Command::new("keel.idem", -3, W, NO_KEYS)
        .redis("write", "")
        .get_keys(idem_keys)
        .doc(
            "string",
            "request-id command [arg [arg ...]]",
            "Runs a write once per request id; a retry, also after a restart, gets the first reply.",
        ),
];

fn setex(name: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let unit = if name == "setex" { 1000 } else { 1 };
    let at = expiry_ms(name, int_arg(&a[2])?, unit, false, true, now_ms)?;
    Ok(Part::new(
        vec![put(&a[1], &a[3], ttl_of(at), PutIf::Always)],
        |_| Reply::ok(),
    ))
}

fn mset(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    if a.len().is_multiple_of(2) {
        return Err(wrong_args(name));
    }
    let writes = a[1..]
        .chunks(2)
        .map(|kv| put(&kv[0], &kv[1], Ttl::None, PutIf::Always))
        .collect();
    if name == "mset" {
        return Ok(Part::new(writes, |_| Reply::ok()));
    }
    let guards = a[1..]
        .chunks(2)
        .map(|kv| Guard {
            key: kv[0].clone(),
            version: None,
        })
        .collect();
    Ok(Part {
        guards,
        writes,
        render: Box::new(|r| Reply::Int(r.is_some() as i64)),
        script: None,
    })
}

fn incr(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let by = match name {
        "incr" => 1,
        "decr" => -1,
        "incrby" => int_arg(&a[2])?,
        _ => int_arg(&a[2])?
            .checked_neg()
            .ok_or_else(|| Reply::err("ERR decrement would overflow"))?,
    };
    Ok(Part::new(
        vec![Write::Incr {
            key: a[1].clone(),
            by,
        }],
        |r| int_reply(&r[0]),
    ))
}

fn incrbyfloat(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let by = std::str::from_utf8(&a[2])
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with(char::is_whitespace))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| !f.is_nan())
        .ok_or_else(|| Reply::err("ERR value is not a valid float"))?;
    Ok(Part::new(
        vec![Write::IncrFloat {
            key: a[1].clone(),
            by,
        }],
        |r| match &r[0] {
            WriteResult::Failed(e) => write_error(*e),
            other => value_reply(other),
        },
    ))
}

fn cas(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let v = parse_i64(&a[2])
        .filter(|v| *v >= 0)
        .ok_or_else(|| Reply::err("ERR version must be a non-negative integer"))?;
    Ok(Part {
        guards: vec![Guard {
            key: a[1].clone(),
            version: (v > 0).then_some(v as u64),
        }],
        writes: vec![put(&a[1], &a[3], Ttl::None, PutIf::Always)],
        render: Box::new(|r| Reply::Int(r.is_some() as i64)),
        script: None,
    })
}

/// SET's key: with GET it also returns the old value (Redis's key spec for it is RW access
/// update, marked as varying with the arguments).
fn set_keys(a: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    match a.iter().skip(3).any(|o| eq(o, "get")) {
        true => vec![key_at(1, "RW access update")],
        false => vec![key_at(1, "OW update")],
    }
}

/// KEEL.IDEM's keys: those of the command it wraps.
fn idem_keys(a: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    let wrapped = a.get(2..).unwrap_or_default();
    (introspect::keys(wrapped).into_iter())
        .map(|(i, flags)| (i + 2, flags))
        .collect()
}

fn set(_: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let (key, value) = (&a[1], &a[2]);
    let mut only = PutIf::Always;
    let mut ttl = Ttl::None;
    let mut with_get = false;
    let mut ttl_set = false;
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        if eq(o, "nx") && only == PutIf::Always {
            only = PutIf::Absent;
        } else if eq(o, "xx") && only == PutIf::Always {
            only = PutIf::Present;
        } else if eq(o, "get") {
            with_get = true;
        } else if eq(o, "keepttl") && !ttl_set {
            ttl = Ttl::Keep;
            ttl_set = true;
        } else if !ttl_set
            && i + 1 < a.len()
            && (eq(o, "ex") || eq(o, "px") || eq(o, "exat") || eq(o, "pxat"))
        {
            let unit = if eq(o, "ex") || eq(o, "exat") {
                1000
            } else {
                1
            };
            let absolute = eq(o, "exat") || eq(o, "pxat");
            let at = expiry_ms("set", int_arg(&a[i + 1])?, unit, absolute, true, now_ms)?;
            ttl = ttl_of(at);
            ttl_set = true;
            i += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    let p = put(key, value, ttl, only);
    Ok(if with_get {
        Part::new(vec![get_then(key, p)], |r| take_value_reply(&mut r[0]))
    } else {
        Part::new(vec![p], |r| match r[0] {
            WriteResult::Put(true) => Reply::ok(),
            WriteResult::Put(false) => Reply::Nil,
            ref other => unexpected(other),
        })
    })
}

fn getex(_: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let key = &a[1];
    let expire = |at_ms| Write::Expire {
        key: key.clone(),
        at_ms,
        only: keel_engine::ExpireIf::Always,
    };
    let write = match a.len() {
        2 => get(key),
        3 if eq(&a[2], "persist") => get_then(key, expire(None)),
        4 => {
            let o = &a[2];
            let (unit, absolute) = if eq(o, "ex") {
                (1000, false)
            } else if eq(o, "px") {
                (1, false)
            } else if eq(o, "exat") {
                (1000, true)
            } else if eq(o, "pxat") {
                (1, true)
            } else {
                return Err(Reply::err(SYNTAX));
            };
            let at = expiry_ms("getex", int_arg(&a[3])?, unit, absolute, true, now_ms)?;
            get_then(key, expire(Some(at.max(1) as u64)))
        }
        _ => return Err(Reply::err(SYNTAX)),
    };
    Ok(Part::new(vec![write], |r| take_value_reply(&mut r[0])))
}

fn getrange(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let op = Read::Substring {
        start: int_arg(&a[2])?,
        end: int_arg(&a[3])?,
    };
    Ok(Part::new(vec![read(&a[1], op)], |r| {
        take_value_reply(&mut r[0])
    }))
}

/// The most cells of LCS's table (4 bytes each): two strings whose lengths multiply past it are
/// refused rather than let one request take gigabytes (P11).
const LCS_CELLS_MAX: usize = 1 << 26;

fn lcs(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let (mut len, mut idx, mut min_len, mut with_len) = (false, false, 0usize, false);
    let mut i = 3;
    while i < a.len() {
        if eq(&a[i], "len") {
            len = true;
        } else if eq(&a[i], "idx") {
            idx = true;
        } else if eq(&a[i], "withmatchlen") {
            with_len = true;
        } else if eq(&a[i], "minmatchlen") && i + 1 < a.len() {
            min_len = int_arg(&a[i + 1])?.max(0) as usize;
            i += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    if len && idx {
        return Err(Reply::err(
            "ERR If you want both the length and indexes, please just use IDX.",
        ));
    }
    Ok(Part::new(vec![get(&a[1]), get(&a[2])], move |r| {
        let mut strings = Vec::with_capacity(2);
        for x in r {
            match x {
                WriteResult::Value(v) => strings.push(v.clone().unwrap_or_default()),
                WriteResult::Failed(WriteError::WrongType) => {
                    return Reply::err("ERR The specified keys must contain string values")
                }
                other => return value_reply(other),
            }
        }
        let (x, y) = (&strings[0], &strings[1]);
        if (x.len() + 1).saturating_mul(y.len() + 1) > LCS_CELLS_MAX {
            return Reply::err(format!(
                "ERR Insufficient memory, keel computes LCS of strings whose lengths (plus one) \
                 multiply to at most {LCS_CELLS_MAX}"
            ));
        }
        let found = longest_common(x, y);
        if len {
            return Reply::Int(found.text.len() as i64);
        }
        if !idx {
            return Reply::Bulk(found.text.into());
        }
        let range =
            |(s, e): (usize, usize)| Reply::Array(vec![Reply::Int(s as i64), Reply::Int(e as i64)]);
        let matches = found
            .ranges
            .into_iter()
            .filter(|(ra, _)| min_len == 0 || ra.1 - ra.0 + 1 >= min_len)
            .map(|(ra, rb)| {
                let mut m = vec![range(ra), range(rb)];
                if with_len {
                    m.push(Reply::Int((ra.1 - ra.0 + 1) as i64));
                }
                Reply::Array(m)
            })
            .collect();
        Reply::Map(vec![
            (Reply::bulk("matches"), Reply::Array(matches)),
            (Reply::bulk("len"), Reply::Int(found.text.len() as i64)),
        ])
    }))
}

/// What LCS finds: the subsequence, and its matching runs as inclusive ranges of each string,
/// the last run first.
struct Common {
    text: Vec<u8>,
    ranges: Vec<((usize, usize), (usize, usize))>,
}

/// The longest common subsequence of `x` and `y` by Redis's dynamic programme, walked back from
/// the end as Redis walks it (on a tie it steps back in `y`), so that among equally long
/// subsequences it finds the one Redis finds.
fn longest_common(x: &[u8], y: &[u8]) -> Common {
    let w = y.len() + 1;
    let mut t = vec![0u32; (x.len() + 1) * w];
    for i in 1..=x.len() {
        for j in 1..=y.len() {
            t[i * w + j] = if x[i - 1] == y[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let mut text = Vec::with_capacity(t[x.len() * w + y.len()] as usize);
    let mut ranges = Vec::new();
    // The run being matched, as (start in x, end in x, start in y, end in y).
    let mut run: Option<(usize, usize, usize, usize)> = None;
    let (mut i, mut j) = (x.len(), y.len());
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            text.push(x[i - 1]);
            run = Some(match run {
                Some((_, ae, _, be)) => (i - 1, ae, j - 1, be),
                None => (i - 1, i - 1, j - 1, j - 1),
            });
            i -= 1;
            j -= 1;
            if i == 0 || j == 0 {
                if let Some((as_, ae, bs, be)) = run.take() {
                    ranges.push(((as_, ae), (bs, be)));
                }
            }
        } else {
            if t[(i - 1) * w + j] > t[i * w + j - 1] {
                i -= 1;
            } else {
                j -= 1;
            }
            if let Some((as_, ae, bs, be)) = run.take() {
                ranges.push(((as_, ae), (bs, be)));
            }
        }
    }
    text.reverse();
    Common { text, ranges }
}
