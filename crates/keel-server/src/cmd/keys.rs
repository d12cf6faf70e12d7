//! Generic key commands: deleting, renaming, expiry, TYPE, DUMP and RESTORE, KEYS and SCAN.

use bytes::Bytes;
use keel_engine::{ExpireIf, Read, SortSpec, Write, WriteError, WriteResult};

use super::*;
use crate::docs::doc;

pub const COMMANDS: &[Command] = &[
    Command::new("del", -2, W, ALL_KEYS)
        .redis("write", "@keyspace")
        .key_flags("RM delete")
        .doc("generic", "key [key ...]", "Deletes keys and returns how many existed.")
        .data(del),
    Command::new("unlink", -2, W, ALL_KEYS)
        .redis("write fast", "@keyspace")
        .key_flags("RM delete")
        .doc(
            "generic",
            "key [key ...]",
            "Deletes keys and returns how many existed (the same as DEL in keel).",
        )
        .data(del),
    Command::new("exists", -2, R, ALL_KEYS)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO")
        .doc("generic", "key [key ...]", "Counts how many of the keys exist.")
        .data(count_existing),
    Command::new("touch", -2, R, ALL_KEYS)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO")
        .doc(
            "generic",
            "key [key ...]",
            "Counts how many of the keys exist (keel keeps no access times to update).",
        )
        .data(count_existing),
    // Reads the source (Redis: key spec RO ACCESS) and writes the destination.
    Command::new("copy", -3, RW, (1, 2, 1))
        .redis("write denyoom", "@keyspace")
        .key_specs(&[Keys::at(1, "RO access"), Keys::at(2, "OW update")])
        .doc(
            "generic",
            "source destination [DB destination-db] [REPLACE]",
            "Copies a key's value and expiry, of any type, to another key; returns 1 if it copied.",
        )
        .data(copy),
    Command::new("dump", 2, R, KEY1)
        .redis("readonly", "@keyspace")
        .key_flags("RO")
        .doc(
            "generic",
            "key",
            "Returns a key's value serialized in keel's own DUMP payload (not Redis's RDB format), for RESTORE on a keel server; nil if the key does not exist.",
        )
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::Dump)], |r| match &mut r[0] {
                WriteResult::Value(v) => v.take().map_or(Reply::Nil, Reply::Bulk),
                other => unexpected(other),
            }))
        }),
    Command::new("restore", -4, W, KEY1)
        .redis("write denyoom", "@keyspace @dangerous")
        .key_flags("OW update")
        .doc(
            "generic",
            "key ttl serialized-value [REPLACE] [ABSTTL] [IDLETIME seconds] [FREQ frequency]",
            "Creates a key from a keel DUMP payload, with a time to live in ms (0: none); IDLETIME and FREQ are accepted and ignored.",
        )
        .data(restore),
    // WRITE only with STORE.
    Command::new("sort", -2, RW.with(VARIES), KEY1)
        .redis("write denyoom", "@set @sortedset @list @dangerous")
        .key_specs(&[
            Keys::at(1, "RO access"),
            // BY and GET patterns: keys named by the sorted values.
            Keys::unknown("RO access"),
            Keys::unknown("OW update"),
        ])
        .get_keys(sort_keys)
        .doc(
            "generic",
            "key [BY pattern] [LIMIT offset count] [GET pattern] [ASC|DESC] [ALPHA] [STORE destination]",
            "Sorts a list, set or sorted set by its elements or by other keys' values (BY), returning elements or other keys' values (GET, any number of times), or storing them as a list.",
        )
        .data(sort),
    Command::new("sort_ro", -2, R, KEY1)
        .redis("readonly", "@set @sortedset @list @dangerous")
        .key_specs(&[Keys::at(1, "RO access"), Keys::unknown("RO access")])
        .get_keys(sort_ro_keys)
        .doc(
            "generic",
            "key [BY pattern] [LIMIT offset count] [GET pattern] [ASC|DESC] [ALPHA]",
            "SORT without STORE.",
        )
        .data(sort),
    Command::new("randomkey", 1, R, NO_KEYS)
        .redis("readonly", "@keyspace")
        .doc(
            "generic",
            "",
            "Returns a random key, or nil when there is none.",
        ),
    Command::new("type", 2, R, KEY1)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO")
        .doc(
            "generic",
            "key",
            "Returns the type of a key's value: string, hash, or none.",
        )
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::Type)], |r| match &r[0] {
                WriteResult::Value(t) => Reply::Simple(
                    t.as_ref()
                        .map_or("none".into(), |t| String::from_utf8_lossy(t).into_owned().into()),
                ),
                other => unexpected(other),
            }))
        }),
    // Moving a value uses it (Redis: ACCESS on the source key).
    Command::new("rename", 3, RW, (1, 2, 1))
        .redis("write", "@keyspace")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "OW update")])
        .doc("generic", "key newkey", "Renames a key, replacing any key of the new name.")
        .data(rename),
    Command::new("renamenx", 3, RW, (1, 2, 1))
        .redis("write fast", "@keyspace")
        .key_specs(&[Keys::at(1, "RW access delete"), Keys::at(2, "OW insert")])
        .doc(
            "generic",
            "key newkey",
            "Renames a key only if the new name is not taken.",
        )
        .data(rename),
    Command::new("expire", -3, W, KEY1)
        .redis("write fast", "@keyspace")
        .key_flags("RW update")
        .doc(
            "generic",
            "key seconds [NX|XX|GT|LT]",
            "Sets a key's expiry in seconds from now.",
        )
        .data(expire),
    Command::new("pexpire", -3, W, KEY1)
        .redis("write fast", "@keyspace")
        .key_flags("RW update")
        .doc(
            "generic",
            "key milliseconds [NX|XX|GT|LT]",
            "Sets a key's expiry in milliseconds from now.",
        )
        .data(expire),
    Command::new("expireat", -3, W, KEY1)
        .redis("write fast", "@keyspace")
        .key_flags("RW update")
        .doc(
            "generic",
            "key unix-time-seconds [NX|XX|GT|LT]",
            "Sets a key's expiry to a Unix time in seconds.",
        )
        .data(expire),
    Command::new("pexpireat", -3, W, KEY1)
        .redis("write fast", "@keyspace")
        .key_flags("RW update")
        .doc(
            "generic",
            "key unix-time-milliseconds [NX|XX|GT|LT]",
            "Sets a key's expiry to a Unix time in milliseconds.",
        )
        .data(expire),
    Command::new("ttl", 2, R, KEY1)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO access")
        .doc(
            "generic",
            "key",
            "Returns a key's remaining time to live in seconds.",
        )
        .data(expiry),
    Command::new("pttl", 2, R, KEY1)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO access")
        .doc(
            "generic",
            "key",
            "Returns a key's remaining time to live in milliseconds.",
        )
        .data(expiry),
    Command::new("expiretime", 2, R, KEY1)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO access")
        .doc(
            "generic",
            "key",
            "Returns the Unix time in seconds at which a key expires.",
        )
        .data(expiry),
    Command::new("pexpiretime", 2, R, KEY1)
        .redis("readonly fast", "@keyspace")
        .key_flags("RO access")
        .doc(
            "generic",
            "key",
            "Returns the Unix time in milliseconds at which a key expires.",
        )
        .data(expiry),
    Command::new("persist", 2, W, KEY1)
        .redis("write fast", "@keyspace")
        .key_flags("RW update")
        .doc("generic", "key", "Removes a key's expiry.")
        .data(|_, a, _| {
            Ok(Part::new(
                vec![Write::Expire {
                    key: a[1].clone(),
                    at_ms: None,
                    only: ExpireIf::HasExpiry,
                }],
                |r| Reply::Int((r[0] == WriteResult::Existed(true)) as i64),
            ))
        }),
    Command::new("object", -2, R, NO_KEYS)
        .redis("", "")
        .doc("generic", "", "Inspects how a key's value is stored.")
        .subcommands(OBJECT_SUBCOMMANDS),
    Command::new("keys", 2, R, NO_KEYS)
        .redis("readonly", "@keyspace @dangerous")
        .doc(
            "generic",
            "pattern",
            "Returns every key matching a glob pattern.",
        ),
    Command::new("scan", -2, R, NO_KEYS)
        .redis("readonly", "@keyspace")
        .doc(
            "generic",
            "cursor [MATCH pattern] [COUNT count] [TYPE type]",
            "Iterates over the keys with a stateless cursor: every key present for the whole scan is returned.",
        ),
];

const OBJECT_SUBCOMMANDS: &[Doc] = &[
    doc(
        "encoding",
        "generic",
        "key",
        "Returns how the value is stored: int, embstr or raw for a string, listpack or hashtable for a hash.",
    )
    .redis("readonly", "@keyspace")
    .key_specs(&[Keys::at(2, "RO")]),
    doc(
        "refcount",
        "generic",
        "key",
        "Returns 1: keel never shares a value between keys.",
    )
    .redis("readonly", "@keyspace")
    .key_specs(&[Keys::at(2, "RO")]),
    doc(
        "freq",
        "generic",
        "key",
        "Refused: keel keeps no access counts (it evicts nothing).",
    )
    .redis("readonly", "@keyspace")
    .key_specs(&[Keys::at(2, "RO")]),
    doc(
        "idletime",
        "generic",
        "key",
        "Refused: keel keeps no access times (it evicts nothing).",
    )
    .redis("readonly", "@keyspace")
    .key_specs(&[Keys::at(2, "RO")]),
    doc("help", "generic", "", "Lists the subcommands.")
    .redis("loading stale", "@keyspace"),
];

fn del(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    Ok(Part::new(
        a[1..]
            .iter()
            .map(|k| Write::Delete { key: k.clone() })
            .collect(),
        |r| {
            Reply::Int(
                r.iter()
                    .filter(|x| **x == WriteResult::Existed(true))
                    .count() as i64,
            )
        },
    ))
}

fn rename(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let nx = name == "renamenx";
    Ok(Part::new(
        vec![Write::Rename {
            from: a[1].clone(),
            to: a[2].clone(),
            only_if_absent: nx,
        }],
        move |r| match r[0] {
            WriteResult::Put(moved) if nx => Reply::Int(moved as i64),
            WriteResult::Put(_) => Reply::ok(),
            WriteResult::Failed(e) => write_error(e),
            ref other => unexpected(other),
        },
    ))
}

fn expire(name: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let only = expire_options(&a[3..])?;
    let unit = if name.starts_with('p') { 1 } else { 1000 };
    let absolute = name.ends_with("at");
    let at = expiry_ms(name, int_arg(&a[2])?, unit, absolute, false, now_ms)?;
    // A time already past deletes the key (if the option holds), as in Redis: the engine does
    // that.
    let w = Write::Expire {
        key: a[1].clone(),
        at_ms: Some(at.max(1) as u64),
        only,
    };
    Ok(Part::new(vec![w], |r| {
        Reply::Int((r[0] == WriteResult::Existed(true)) as i64)
    }))
}

/// EXPIRE's NX, XX, GT and LT options, with Redis's error for the combinations it refuses.
fn expire_options(opts: &[Bytes]) -> Result<ExpireIf, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in opts {
        if eq(o, "nx") {
            nx = true;
        } else if eq(o, "xx") {
            xx = true;
        } else if eq(o, "gt") {
            gt = true;
        } else if eq(o, "lt") {
            lt = true;
        } else {
            return Err(Reply::err(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(o)
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireIf::NoExpiry,
        // GT already needs an expiry: no expiry counts as never, and nothing is later.
        (_, _, true, _) => ExpireIf::Later,
        (_, true, _, true) => ExpireIf::SoonerWithExpiry,
        (_, _, _, true) => ExpireIf::Sooner,
        (_, true, ..) => ExpireIf::HasExpiry,
        _ => ExpireIf::Always,
    })
}

/// RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME seconds] [FREQ frequency], with
/// Redis's errors. keel keeps no access times, so IDLETIME and FREQ are checked and ignored.
fn restore(_: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let ttl = int_arg(&a[2])?;
    let (mut replace, mut absolute, mut idle, mut freq) = (false, false, false, false);
    let mut i = 4;
    while i < a.len() {
        let more = i + 1 < a.len();
        if eq(&a[i], "replace") {
            replace = true;
        } else if eq(&a[i], "absttl") {
            absolute = true;
        } else if eq(&a[i], "idletime") && more && !freq {
            if int_arg(&a[i + 1])? < 0 {
                return Err(Reply::err("ERR Invalid IDLETIME value, must be >= 0"));
            }
            idle = true;
            i += 1;
        } else if eq(&a[i], "freq") && more && !idle {
            if !(0..=255).contains(&int_arg(&a[i + 1])?) {
                return Err(Reply::err(
                    "ERR Invalid FREQ value, must be >= 0 and <= 255",
                ));
            }
            freq = true;
            i += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    if ttl < 0 {
        return Err(Reply::err("ERR Invalid TTL value, must be >= 0"));
    }
    let expires_at_ms = match (ttl, absolute) {
        (0, _) => None,
        (t, true) => Some(t as u64),
        (t, false) => Some(now_ms.saturating_add(t as u64)),
    };
    let w = Write::Restore {
        key: a[1].clone(),
        payload: a[3].clone(),
        expires_at_ms,
        replace,
    };
    Ok(Part::new(vec![w], |r| match &r[0] {
        WriteResult::Put(true) => Reply::ok(),
        WriteResult::Failed(e) => write_error(*e),
        other => unexpected(other),
    }))
}

fn copy(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let mut replace = false;
    let mut i = 3;
    while i < a.len() {
        if eq(&a[i], "replace") {
            replace = true;
        } else if eq(&a[i], "db") && i + 1 < a.len() {
            if int_arg(&a[i + 1])? != 0 {
                return Err(Reply::err(
                    "ERR DB index is out of range (keel has one database, 0)",
                ));
            }
            i += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    if a[1] == a[2] {
        return Err(Reply::err(
            "ERR source and destination objects are the same",
        ));
    }
    let w = Write::Copy {
        from: a[1].clone(),
        to: a[2].clone(),
        replace,
    };
    Ok(Part::new(vec![w], |r| int_reply(&r[0])))
}

fn sort(name: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let mut spec = SortSpec {
        key: a[1].clone(),
        by: None,
        limit: None,
        get: Vec::new(),
        desc: false,
        alpha: false,
    };
    let mut store = None;
    let mut i = 2;
    while i < a.len() {
        let left = a.len() - i - 1;
        let o = &a[i];
        if eq(o, "asc") {
            spec.desc = false;
        } else if eq(o, "desc") {
            spec.desc = true;
        } else if eq(o, "alpha") {
            spec.alpha = true;
        } else if eq(o, "limit") && left >= 2 {
            spec.limit = Some((int_arg(&a[i + 1])?, int_arg(&a[i + 2])?));
            i += 2;
        } else if eq(o, "store") && left >= 1 && name == "sort" {
            store = Some(a[i + 1].clone());
            i += 1;
        } else if eq(o, "by") && left >= 1 {
            spec.by = Some(a[i + 1].clone());
            i += 1;
        } else if eq(o, "get") && left >= 1 {
            spec.get.push(a[i + 1].clone());
            i += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    let stores = store.is_some();
    let w = Write::Sort { spec, store };
    Ok(Part::new(vec![w], move |r| match &mut r[0] {
        WriteResult::Failed(WriteError::NotAFloat) => {
            Reply::err("ERR One or more scores can't be converted into double")
        }
        WriteResult::Failed(WriteError::ValueTooLarge) => Reply::err(
            "ERR SORT's result would exceed 64 MiB: narrow it with LIMIT or fewer GET patterns",
        ),
        other if stores => int_reply(other),
        other => take_values_reply(other),
    }))
}

/// EXISTS and TOUCH: how many of the keys exist, a key named twice counting twice.
/// SORT's keys: the key sorted, and STORE's destination. LIMIT's two arguments and BY's and
/// GET's one are skipped; of several STOREs the last counts, as in SORT itself.
fn sort_keys(a: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    let mut store = None;
    let mut i = 2;
    while i < a.len() {
        let o = &a[i];
        if eq(o, "limit") {
            i += 2;
        } else if eq(o, "by") || eq(o, "get") {
            i += 1;
        } else if eq(o, "store") && i + 1 < a.len() {
            store = Some(i + 1);
        }
        i += 1;
    }
    let mut keys = vec![key_at(1, "RO access")];
    keys.extend(store.map(|i| key_at(i, "OW update")));
    keys
}

/// SORT_RO's key: the key sorted (BY and GET name keys only the sorted values know).
fn sort_ro_keys(_: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    vec![key_at(1, "RO access")]
}

fn count_existing(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let types = a[1..].iter().map(|k| read(k, Read::Type)).collect();
    Ok(Part::new(types, |r| {
        Reply::Int(
            r.iter()
                .filter(|x| matches!(x, WriteResult::Value(Some(_))))
                .count() as i64,
        )
    }))
}

/// TTL, PTTL, EXPIRETIME and PEXPIRETIME: a key's expiry, of any type, as the command gives it
/// (-2: no key, -1: no expiry). TTL rounds to the nearest second, as Redis does.
fn expiry(name: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    Ok(Part::new(
        vec![read(&a[1], Read::Expiry)],
        move |r| match r[0] {
            WriteResult::Int(at) if at < 0 => Reply::Int(at),
            WriteResult::Int(at) => {
                let left = (at as u64).saturating_sub(now_ms) as i64;
                Reply::Int(match name {
                    "ttl" => (left + 500) / 1000,
                    "pttl" => left,
                    "expiretime" => at / 1000,
                    _ => at,
                })
            }
            ref other => unexpected(other),
        },
    ))
}
