//! Stream commands: XADD, XLEN, XRANGE, XREVRANGE, XDEL, XTRIM, XSETID, XREAD, XINFO, and the
//! consumer groups' XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM and XAUTOCLAIM. An entry's ID
//! is decided by the engine when the write is decided (from the transaction's time, above the
//! stream's last ID) and logged, so replay and replicas never pick one again. A group's state
//! (where it read to, its pending entries and their delivery counts, its consumers) changes
//! only through the log too: XREADGROUP and the claims reply once their record is durable.

use std::ops::Bound;

use keel_engine::{
    Claim, ClaimTime, PendingRange, StreamId, StreamIdSpec, StreamTrim, StreamTrimBy,
};

use super::*;

pub const COMMANDS: &[Command] = &[
    Command::new("xadd", -5, W, KEY1)
        .redis("write denyoom fast", "@stream")
        .key_flags("RW insert")
        .doc(
            "stream",
            "key [NOMKSTREAM] [<MAXLEN|MINID> [=|~] threshold [LIMIT count]] <*|id> field value [field value ...]",
            "Appends an entry to a stream, creating it, under an ID decided durably; returns the ID.",
        )
        .data(xadd),
    Command::new("xlen", 2, R, KEY1)
        .redis("readonly fast", "@stream")
        .key_flags("RO")
        .doc("stream", "key", "Returns the number of entries in a stream.")
        .data(|_, a, _| {
            Ok(Part::new(vec![read(&a[1], Read::StreamLen)], |r| {
                int_reply(&r[0])
            }))
        }),
    Command::new("xrange", -4, R, KEY1)
        .redis("readonly", "@stream")
        .key_flags("RO access")
        .doc(
            "stream",
            "key start end [COUNT count]",
            "Returns the entries between two IDs, in order (- and + for the ends, ( to exclude).",
        )
        .data(|_, a, _| xrange(a, false)),
    Command::new("xrevrange", -4, R, KEY1)
        .redis("readonly", "@stream")
        .key_flags("RO access")
        .doc(
            "stream",
            "key end start [COUNT count]",
            "Returns the entries between two IDs, newest first.",
        )
        .data(|_, a, _| xrange(a, true)),
    Command::new("xdel", -3, W, KEY1)
        .redis("write fast", "@stream")
        .key_flags("RW delete")
        .doc(
            "stream",
            "key id [id ...]",
            "Deletes entries of a stream by ID; returns how many there were.",
        )
        .data(|_, a, _| {
            let ids = (a[2..].iter())
                .map(|id| StreamId::parse(id, 0).ok_or_else(invalid_id))
                .collect::<Result<_, _>>()?;
            let w = Write::StreamDel {
                key: a[1].clone(),
                ids,
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("xtrim", -4, W, KEY1)
        .redis("write", "@stream")
        .key_flags("RW delete")
        .doc(
            "stream",
            "key <MAXLEN|MINID> [=|~] threshold [LIMIT count]",
            "Deletes the oldest entries past a length, or below an ID; returns how many.",
        )
        .data(|_, a, _| {
            let (trim, at) = trim_args(a, 2)?;
            if at != a.len() {
                return Err(Reply::err(SYNTAX));
            }
            let w = Write::StreamTrimTo {
                key: a[1].clone(),
                trim: trim.ok_or_else(|| Reply::err(SYNTAX))?,
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("xsetid", -3, W, KEY1)
        .redis("write denyoom fast", "@stream")
        .key_flags("RW update")
        .doc(
            "stream",
            "key last-id [ENTRIESADDED entries-added] [MAXDELETEDID max-deleted-id]",
            "Sets a stream's last ID, and optionally its entries-added count and greatest deleted ID.",
        )
        .data(xsetid),
    Command::new("xread", -4, R, NO_KEYS)
        .redis("readonly blocking", "@stream")
        .key_specs(&[Keys::unknown("RO access")])
        .get_keys(xread_keys)
        .blocks(Block {
            wait: xread_wait,
            keys: |a| {
                let keys = xread_keys(a);
                keys.into_iter().map(|(i, _)| a[i].clone()).collect()
            },
            prepare: Some(xread_prepare),
        })
        .doc(
            "stream",
            "[COUNT count] [BLOCK milliseconds] STREAMS key [key ...] id [id ...]",
            "Returns the entries after the given IDs ($: the last) of one or more streams.",
        )
        .data(xread),
    Command::new("xreadgroup", -7, RW, NO_KEYS)
        .redis("write blocking", "@stream")
        .key_specs(&[Keys::unknown("RW access")])
        .get_keys(xreadgroup_keys)
        .blocks(Block {
            wait: |a| Ok(read_args(a, true)?.block_ms.map(block_wait)),
            keys: |a| {
                let keys = xreadgroup_keys(a);
                keys.into_iter().map(|(i, _)| a[i].clone()).collect()
            },
            prepare: None,
        })
        .doc(
            "stream",
            "GROUP group consumer [COUNT count] [BLOCK milliseconds] [NOACK] STREAMS key [key ...] id [id ...]",
            "Reads for a consumer of a group: new entries (>), which become pending with it once durable, or its own pending entries after an ID.",
        )
        .data(xreadgroup),
    Command::new("xack", -4, W, KEY1)
        .redis("write fast", "@stream")
        .key_flags("RW update")
        .doc(
            "stream",
            "key group id [id ...]",
            "Acknowledges pending entries of a consumer group; returns how many were pending.",
        )
        .data(|_, a, _| {
            let w = Write::StreamAck {
                key: a[1].clone(),
                group: a[2].clone(),
                ids: ids(&a[3..])?,
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("xpending", -3, R, KEY1)
        .redis("readonly", "@stream")
        .key_flags("RO access")
        .doc(
            "stream",
            "key group [[IDLE min-idle-time] start end count [consumer]]",
            "Summarizes a consumer group's pending entries, or lists those in a range.",
        )
        .data(xpending),
    Command::new("xclaim", -6, RW, KEY1)
        .redis("write fast", "@stream")
        .key_flags("RW update")
        .doc(
            "stream",
            "key group consumer min-idle-time id [id ...] [IDLE ms] [TIME unix-time-milliseconds] [RETRYCOUNT count] [FORCE] [JUSTID] [LASTID lastid]",
            "Gives pending entries idle long enough to another consumer; returns them.",
        )
        .data(xclaim),
    Command::new("xautoclaim", -6, RW, KEY1)
        .redis("write fast", "@stream")
        .key_flags("RW update")
        .doc(
            "stream",
            "key group consumer min-idle-time start [COUNT count] [JUSTID]",
            "Gives the pending entries idle long enough, from an ID on, to another consumer; returns a cursor, them and the IDs deleted meanwhile.",
        )
        .data(xautoclaim),
    Command::new("xgroup", -2, W.with(VARIES), NO_KEYS)
        .redis("", "@write @stream")
        .doc("stream", "", "Manages a stream's consumer groups and their consumers.")
        .subcommands(XGROUP_SUBCOMMANDS)
        .data(xgroup),
    Command::new("xinfo", -2, R, NO_KEYS)
        .redis("", "")
        .doc(
            "stream",
            "",
            "Describes a stream, its consumer groups and their consumers.",
        )
        .subcommands(XINFO_SUBCOMMANDS)
        .data(xinfo),
];

const XINFO_SUBCOMMANDS: &[Doc] = &[
    crate::docs::doc(
        "stream",
        "stream",
        "key [FULL [COUNT count]]",
        "Returns a stream's length, IDs and first and last entries (FULL: its entries).",
    )
    .redis("readonly", "@stream")
    .key_specs(&[Keys::at(2, "RO access")]),
    crate::docs::doc(
        "groups",
        "stream",
        "key",
        "Returns a stream's consumer groups: consumers, pending entries, last ID, entries read and lag.",
    )
    .redis("readonly", "@stream")
    .key_specs(&[Keys::at(2, "RO access")]),
    crate::docs::doc(
        "consumers",
        "stream",
        "key group",
        "Returns a consumer group's consumers: pending entries, idle and inactive times.",
    )
    .redis("readonly", "@stream")
    .key_specs(&[Keys::at(2, "RO access")]),
    crate::docs::doc("help", "stream", "", "Lists the subcommands.")
        .redis("loading stale", "@stream"),
];

const XGROUP_SUBCOMMANDS: &[Doc] = &[
    crate::docs::doc(
        "create",
        "stream",
        "key group <id|$> [MKSTREAM] [ENTRIESREAD entries-read]",
        "Creates a consumer group that has read up to an ID ($: the last), and the stream with MKSTREAM.",
    )
    .redis("write denyoom", "@stream")
    .key_specs(&[Keys::at(2, "RW insert")]),
    crate::docs::doc(
        "setid",
        "stream",
        "key group <id|$> [ENTRIESREAD entries-read]",
        "Sets the ID a consumer group has read up to.",
    )
    .redis("write", "@stream")
    .key_specs(&[Keys::at(2, "RW update")]),
    crate::docs::doc(
        "destroy",
        "stream",
        "key group",
        "Deletes a consumer group, its consumers and its pending entries.",
    )
    .redis("write", "@stream")
    .key_specs(&[Keys::at(2, "RW delete")]),
    crate::docs::doc(
        "createconsumer",
        "stream",
        "key group consumer",
        "Creates a consumer in a group; returns 1, or 0 if it was there.",
    )
    .redis("write denyoom", "@stream")
    .key_specs(&[Keys::at(2, "RW insert")]),
    crate::docs::doc(
        "delconsumer",
        "stream",
        "key group consumer",
        "Deletes a consumer and its pending entries; returns how many it had.",
    )
    .redis("write", "@stream")
    .key_specs(&[Keys::at(2, "RW delete")]),
    crate::docs::doc("help", "stream", "", "Lists the subcommands.")
        .redis("loading stale", "@stream"),
];

/// XINFO STREAM, GROUPS, CONSUMERS and HELP.
fn xinfo(_: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    match (sub.as_str(), a.len()) {
        ("help", 2) => {
            let lines = crate::docs::help_lines("xinfo").unwrap_or_default();
            Ok(Part::deferred(move || {
                Reply::Array(lines.into_iter().map(Reply::simple).collect())
            }))
        }
        ("stream", 3) => {
            let op = Read::StreamInfo { entries: None };
            Ok(Part::new(vec![read(&a[2], op)], |r| {
                info_reply(&r[0], false)
            }))
        }
        ("stream", 4..=6) => {
            let count = match &a[3..] {
                [f] if eq(f, "full") => 10,
                [f, c, n] if eq(f, "full") && eq(c, "count") => int_arg(n)?.max(0) as usize,
                _ => return Err(Reply::err(SYNTAX)),
            };
            let op = Read::StreamInfo {
                entries: Some(count),
            };
            Ok(Part::new(vec![read(&a[2], op)], |r| {
                info_reply(&r[0], true)
            }))
        }
        ("groups", 3) => Ok(Part::new(vec![read(&a[2], Read::StreamGroups)], |r| {
            let v = match &r[0] {
                WriteResult::Values(v) => v,
                other => return value_reply(other),
            };
            let groups = v.chunks(6).map(|g| {
                Reply::Map(vec![
                    (Reply::bulk("name"), bulk_or_nil(&g[0])),
                    (Reply::bulk("consumers"), int_or_nil(&g[1])),
                    (Reply::bulk("pending"), int_or_nil(&g[2])),
                    (Reply::bulk("last-delivered-id"), bulk_or_nil(&g[3])),
                    (Reply::bulk("entries-read"), int_or_nil(&g[4])),
                    (Reply::bulk("lag"), int_or_nil(&g[5])),
                ])
            });
            Reply::Array(groups.collect())
        })),
        ("consumers", 4) => {
            let (key, group) = (a[2].clone(), a[3].clone());
            let op = Read::StreamConsumers {
                group: group.clone(),
            };
            Ok(Part::new(vec![read(&a[2], op)], move |r| {
                let v = match &r[0] {
                    WriteResult::Values(v) => v,
                    WriteResult::Failed(WriteError::NoGroup) => {
                        return no_group_for_key(&key, &group)
                    }
                    other => return value_reply(other),
                };
                let since = |t: &Option<Bytes>| match number(t) {
                    Some(t) => Reply::Int(now_ms.saturating_sub(t as u64) as i64),
                    None => Reply::Int(-1),
                };
                let consumers = v.chunks(4).map(|c| {
                    Reply::Map(vec![
                        (Reply::bulk("name"), bulk_or_nil(&c[0])),
                        (Reply::bulk("pending"), int_or_nil(&c[1])),
                        (Reply::bulk("idle"), since(&c[2])),
                        (Reply::bulk("inactive"), since(&c[3])),
                    ])
                });
                Reply::Array(consumers.collect())
            }))
        }
        ("stream" | "groups" | "consumers" | "help", _) => Err(wrong_args(&format!("xinfo|{sub}"))),
        _ => Err(Reply::err(format!(
            "ERR unknown subcommand '{}'. Try XINFO HELP.",
            String::from_utf8_lossy(&a[1])
        ))),
    }
}

/// XINFO STREAM's reply, from [`Read::StreamInfo`]'s values. keel keeps no radix tree: the
/// radix-tree figures are those of Redis's 100-entry nodes for this many entries.
fn info_reply(r: &WriteResult, full: bool) -> Reply {
    let v = match r {
        WriteResult::Values(v) if v.len() >= 6 => v,
        WriteResult::Failed(WriteError::NoSuchKey) => return Reply::err("ERR no such key"),
        other => return value_reply(other),
    };
    let text = |i: usize| String::from_utf8_lossy(v[i].as_deref().unwrap_or_default()).into_owned();
    let int = |i: usize| Reply::Int(text(i).parse().unwrap_or(0));
    let len: i64 = text(0).parse().unwrap_or(0);
    let nodes = Reply::Int((len + 99) / 100);
    let mut out = vec![
        (Reply::bulk("length"), int(0)),
        (Reply::bulk("radix-tree-keys"), nodes.clone()),
        (Reply::bulk("radix-tree-nodes"), nodes),
        (Reply::bulk("last-generated-id"), Reply::bulk(text(1))),
        (Reply::bulk("max-deleted-entry-id"), Reply::bulk(text(2))),
        (Reply::bulk("entries-added"), int(3)),
        (Reply::bulk("recorded-first-entry-id"), Reply::bulk(text(4))),
    ];
    if full {
        let mut it = v[6..].iter();
        let listed = next_entries(&mut it).into_iter().map(entry_reply).collect();
        out.push((Reply::bulk("entries"), Reply::Array(listed)));
        out.push((Reply::bulk("groups"), Reply::Array(full_groups(&mut it))));
    } else {
        let mut listed = entries(&v[6..]);
        out.push((Reply::bulk("groups"), int(5)));
        let last = listed.pop().unwrap_or(Reply::Nil);
        let first = listed.pop().unwrap_or(Reply::Nil);
        out.push((Reply::bulk("first-entry"), first));
        out.push((Reply::bulk("last-entry"), last));
    }
    Reply::Map(out)
}

/// `stream-node-max-entries`: keel keeps no nodes, but `~` trims as if it did, in whole nodes
/// of this many entries (0: exactly), as Redis trims.
pub static STREAM_NODE_MAX_ENTRIES: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(100);

fn invalid_id() -> Reply {
    Reply::err("ERR Invalid stream ID specified as stream command argument")
}

/// An XRANGE bound: `-`, `+`, an ID (`ms` alone is `ms-0` at the start, `ms-max` at the
/// end), or `(` and an ID to exclude it.
fn range_bound(b: &[u8], start: bool) -> Result<Bound<StreamId>, Reply> {
    let parse =
        |id: &[u8]| StreamId::parse(id, if start { 0 } else { u64::MAX }).ok_or_else(invalid_id);
    match b {
        b"-" => Ok(Bound::Included(StreamId::MIN)),
        b"+" => Ok(Bound::Included(StreamId::MAX)),
        [b'(', id @ ..] => {
            let id = parse(id)?;
            // Nothing lies past the greatest ID, or before 0-0.
            if start && id == StreamId::MAX {
                return Err(Reply::err("ERR invalid start ID for the interval"));
            }
            if !start && id == StreamId::MIN {
                return Err(Reply::err("ERR invalid end ID for the interval"));
            }
            Ok(Bound::Excluded(id))
        }
        id => Ok(Bound::Included(parse(id)?)),
    }
}

fn xrange(a: &[Bytes], rev: bool) -> Result<Part, Reply> {
    let (first, second) = (range_bound(&a[2], !rev)?, range_bound(&a[3], rev)?);
    let (start, end) = if rev {
        (second, first)
    } else {
        (first, second)
    };
    let count = match &a[4..] {
        [] => None,
        [c, n] if eq(c, "count") => Some(int_arg(n)?.max(0) as usize),
        _ => return Err(Reply::err(SYNTAX)),
    };
    if count == Some(0) {
        return Ok(Part::new(Vec::new(), |_| Reply::Array(Vec::new())));
    }
    let op = Read::StreamRange {
        start,
        end,
        count,
        rev,
    };
    Ok(Part::new(vec![read(&a[1], op)], |r| entries_reply(&r[0])))
}

/// A stream read's entries as Redis replies with them: each `[id, [field, value, ...]]`.
fn entries(values: &[Option<Bytes>]) -> Vec<Reply> {
    values
        .split(Option::is_none)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let id = Reply::Bulk(e[0].clone().unwrap_or_default());
            let fields = (e[1..].iter())
                .map(|f| Reply::Bulk(f.clone().unwrap_or_default()))
                .collect();
            Reply::Array(vec![id, Reply::Array(fields)])
        })
        .collect()
}

fn entries_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Values(v) => Reply::Array(entries(v)),
        other => value_reply(other),
    }
}

/// MAXLEN or MINID, an optional `=` or `~`, the threshold and an optional LIMIT, from
/// `a[at]`; returns the trim (`None` if `a[at]` starts none) and where the arguments go on.
fn trim_args(a: &[Bytes], mut at: usize) -> Result<(Option<StreamTrim>, usize), Reply> {
    let Some(kind) = a.get(at) else {
        return Ok((None, at));
    };
    let maxlen = eq(kind, "maxlen");
    if !maxlen && !eq(kind, "minid") {
        return Ok((None, at));
    }
    at += 1;
    let mut approx = false;
    if a.get(at).is_some_and(|x| &x[..] == b"~" || &x[..] == b"=") {
        approx = &a[at][..] == b"~";
        at += 1;
    }
    let threshold = a.get(at).ok_or_else(|| Reply::err(SYNTAX))?;
    at += 1;
    let by = if maxlen {
        let n = int_arg(threshold)?;
        if n < 0 {
            return Err(Reply::err("ERR The MAXLEN argument must be >= 0."));
        }
        StreamTrimBy::MaxLen(n as u64)
    } else {
        StreamTrimBy::MinId(StreamId::parse(threshold, 0).ok_or_else(invalid_id)?)
    };
    let mut limit = None;
    if a.get(at).is_some_and(|x| eq(x, "limit")) {
        let n = int_arg(a.get(at + 1).ok_or_else(|| Reply::err(SYNTAX))?)?;
        if n < 0 {
            return Err(Reply::err("ERR The LIMIT argument must be >= 0."));
        }
        if !approx {
            return Err(Reply::err(
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ));
        }
        limit = Some(n as u64);
        at += 2;
    }
    let node = if approx {
        STREAM_NODE_MAX_ENTRIES
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0) as u64
    } else {
        0
    };
    Ok((Some(StreamTrim { by, limit, node }), at))
}

fn xadd(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let mut at = 2;
    let mut no_create = false;
    let mut trim = None;
    loop {
        match a.get(at) {
            Some(x) if eq(x, "nomkstream") => {
                no_create = true;
                at += 1;
            }
            Some(x) if eq(x, "maxlen") || eq(x, "minid") => {
                let (t, next) = trim_args(a, at)?;
                trim = t;
                at = next;
            }
            _ => break,
        }
    }
    let id = a.get(at).ok_or_else(|| wrong_args("xadd"))?;
    let fields = &a[at + 1..];
    if fields.is_empty() || !fields.len().is_multiple_of(2) {
        return Err(wrong_args("xadd"));
    }
    let id = if &id[..] == b"*" {
        StreamIdSpec::Auto
    } else if let Some(ms) = id.strip_suffix(b"-*") {
        let ms = StreamId::parse(ms, 0).filter(|x| x.seq == 0 && !ms.contains(&b'-'));
        StreamIdSpec::Seq(ms.ok_or_else(invalid_id)?.ms)
    } else {
        StreamIdSpec::Exact(StreamId::parse(id, 0).ok_or_else(invalid_id)?)
    };
    let w = Write::StreamAdd {
        key: a[1].clone(),
        id,
        fields: fields.to_vec(),
        no_create,
        trim,
    };
    Ok(Part::new(vec![w], |r| take_value_reply(&mut r[0])))
}

fn xsetid(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let id = StreamId::parse(&a[2], 0).ok_or_else(invalid_id)?;
    let (mut entries_added, mut max_deleted) = (None, None);
    let mut rest = a[3..].chunks(2);
    for pair in rest.by_ref() {
        match pair {
            [o, n] if eq(o, "entriesadded") => {
                let n = int_arg(n)?;
                if n < 0 {
                    return Err(Reply::err("ERR entries_added must be positive"));
                }
                entries_added = Some(n as u64);
            }
            [o, d] if eq(o, "maxdeletedid") => {
                let d = StreamId::parse(d, 0).ok_or_else(invalid_id)?;
                max_deleted = Some(d);
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
    }
    let w = Write::StreamSetId {
        key: a[1].clone(),
        id,
        entries_added,
        max_deleted,
    };
    Ok(Part::new(vec![w], |r| match &r[0] {
        WriteResult::Put(_) => Reply::ok(),
        other => value_reply(other),
    }))
}

/// XREAD's and XREADGROUP's options: COUNT, BLOCK (ms), GROUP and NOACK (XREADGROUP's), and
/// where STREAMS' keys start; `Err` for Redis's errors.
struct ReadArgs {
    count: Option<usize>,
    block_ms: Option<u64>,
    /// XREADGROUP's group and consumer.
    group: Option<(Bytes, Bytes)>,
    no_ack: bool,
    /// The keys, then as many IDs.
    streams: usize,
    n: usize,
}

fn read_args(a: &[Bytes], xreadgroup: bool) -> Result<ReadArgs, Reply> {
    let (mut count, mut block_ms, mut group, mut no_ack) = (None, None, None, false);
    let mut at = 1;
    let arg = |i: usize| a.get(i).ok_or_else(|| Reply::err(SYNTAX));
    while at < a.len() {
        let o = &a[at];
        if eq(o, "count") {
            let n = int_arg(arg(at + 1)?)?;
            count = (n > 0).then_some(n as usize);
            at += 2;
        } else if eq(o, "block") {
            let ms = int_arg(arg(at + 1)?)
                .map_err(|_| Reply::err("ERR timeout is not an integer or out of range"))?;
            if ms < 0 {
                return Err(Reply::err("ERR timeout is negative"));
            }
            block_ms = Some(ms as u64);
            at += 2;
        } else if xreadgroup && eq(o, "group") {
            group = Some((arg(at + 1)?.clone(), arg(at + 2)?.clone()));
            at += 3;
        } else if xreadgroup && eq(o, "noack") {
            no_ack = true;
            at += 1;
        } else if eq(o, "streams") {
            let rest = a.len() - at - 1;
            if rest == 0 || !rest.is_multiple_of(2) {
                let (name, id) = if xreadgroup {
                    ("xreadgroup", '>')
                } else {
                    ("xread", '$')
                };
                return Err(Reply::err(format!(
                    "ERR Unbalanced '{name}' list of streams: for each stream key an ID or '{id}' must be specified."
                )));
            }
            if xreadgroup && group.is_none() {
                return Err(Reply::err("ERR Missing GROUP option for XREADGROUP"));
            }
            return Ok(ReadArgs {
                count,
                block_ms,
                group,
                no_ack,
                streams: at + 1,
                n: rest / 2,
            });
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    Err(Reply::err(SYNTAX))
}

/// BLOCK's wait: 0 for ever.
fn block_wait(ms: u64) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// XREAD waits only with BLOCK (0: for ever).
fn xread_wait(a: &[Bytes]) -> Result<Wait, Reply> {
    Ok(read_args(a, false)?.block_ms.map(block_wait))
}

/// Before XREAD BLOCK waits: each `$` becomes its stream's last ID (`0-0` for none), so that
/// every try reads only what came after the wait began.
fn xread_prepare(view: &keel_engine::ReadView<'_>, a: &[Bytes]) -> Vec<Bytes> {
    let mut a = a.to_vec();
    if let Ok(x) = read_args(&a, false) {
        for i in 0..x.n {
            let (key, id) = (x.streams + i, x.streams + x.n + i);
            if &a[id][..] == b"$" {
                a[id] = match view.read(&a[key], Some(&Read::StreamLastId)) {
                    WriteResult::Value(Some(last)) => last,
                    _ => Bytes::from_static(b"0-0"),
                };
            }
        }
    }
    a
}

fn xread_keys(a: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    match read_args(a, false) {
        Ok(x) => (x.streams..x.streams + x.n)
            .map(|i| key_at(i, "RO access"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn xreadgroup_keys(a: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    match read_args(a, true) {
        Ok(x) => (x.streams..x.streams + x.n)
            .map(|i| key_at(i, "RW access"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// XREAD: for each stream, its entries after the ID given (`$`: its last ID, so none now);
/// nil when no stream has any. BLOCK waits for one (`crate::blocking`, which resolves `$`
/// to the last ID before it waits).
fn xread(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let x = read_args(a, false)?;
    let keys = a[x.streams..x.streams + x.n].to_vec();
    let mut writes = Vec::with_capacity(x.n);
    for (key, id) in keys.iter().zip(&a[x.streams + x.n..]) {
        if &id[..] == b"$" {
            // Nothing is after the last ID, now; a blocking read waits for what comes.
            writes.push(read(key, Read::StreamLastId));
            continue;
        }
        let id = StreamId::parse(id, 0).ok_or_else(invalid_id)?;
        writes.push(read(
            key,
            Read::StreamRange {
                start: Bound::Excluded(id),
                end: Bound::Unbounded,
                count: x.count,
                rev: false,
            },
        ));
    }
    Ok(Part::new(writes, move |r| {
        let mut streams = Vec::new();
        for (key, result) in keys.into_iter().zip(r) {
            match result {
                WriteResult::Values(v) if !v.is_empty() => {
                    streams.push((Reply::Bulk(key), Reply::Array(entries(v))));
                }
                WriteResult::Failed(e) => return write_error(*e),
                _ => {}
            }
        }
        if streams.is_empty() {
            Reply::NilArray
        } else {
            Reply::Nested(streams)
        }
    }))
}

/// XREADGROUP: for each stream, the entries the group has not read (`>`), which become
/// pending with the consumer, or the consumer's own pending entries after an ID. The reply
/// leaves once the record of the delivery is durable. With `>` only streams that gave
/// entries are listed (nil when none did: BLOCK then waits); a history read lists its
/// stream always, so it never waits.
fn xreadgroup(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let x = read_args(a, true)?;
    let (group, consumer) = x.group.expect("read_args asks for GROUP");
    let keys = a[x.streams..x.streams + x.n].to_vec();
    let mut streams = Vec::with_capacity(x.n);
    for (key, id) in keys.iter().zip(&a[x.streams + x.n..]) {
        let after = match &id[..] {
            b">" => None,
            b"$" => return Err(Reply::err(
                "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
            )),
            id => Some(StreamId::parse(id, 0).ok_or_else(invalid_id)?),
        };
        streams.push((key.clone(), after));
    }
    let history: Vec<bool> = streams.iter().map(|(_, after)| after.is_some()).collect();
    let w = Write::StreamReadGroup {
        group: group.clone(),
        consumer,
        streams,
        count: x.count,
        no_ack: x.no_ack,
        retry: false,
    };
    Ok(Part::new(vec![w], move |r| {
        let v = match &r[0] {
            WriteResult::Values(v) => v,
            // The first stream named: the engine does not say which one lacks the group.
            WriteResult::Failed(WriteError::NoGroup) => {
                let e = no_key_or_group(&keys[0], &group);
                return Reply::err(e + " in XREADGROUP with GROUP option");
            }
            other => return value_reply(other),
        };
        let mut it = v.iter();
        let mut out = Vec::new();
        for (key, history) in keys.into_iter().zip(history) {
            let listed: Vec<Reply> = next_entries(&mut it).into_iter().map(entry_reply).collect();
            if history || !listed.is_empty() {
                out.push((Reply::Bulk(key), Reply::Array(listed)));
            }
        }
        if out.is_empty() {
            Reply::NilArray
        } else {
            Reply::Nested(out)
        }
    }))
}

/// Stream IDs, each given in full or as `ms`.
fn ids(a: &[Bytes]) -> Result<Vec<StreamId>, Reply> {
    a.iter()
        .map(|id| StreamId::parse(id, 0).ok_or_else(invalid_id))
        .collect()
}

/// Entries as stream reads lay them out (an ID, its fields and values, then a nil), up to a
/// nil where an ID would be (which ends a stream's) or the end. An entry without fields is
/// a pending entry since deleted, or a JUSTID claim.
fn next_entries<'a>(it: &mut impl Iterator<Item = &'a Option<Bytes>>) -> Vec<(Bytes, Vec<Bytes>)> {
    let mut out = Vec::new();
    while let Some(Some(id)) = it.next() {
        let fields = it.by_ref().map_while(|f| f.clone()).collect();
        out.push((id.clone(), fields));
    }
    out
}

/// `[id, [field, value, ...]]`, or `[id, nil]` for an entry since deleted.
fn entry_reply((id, fields): (Bytes, Vec<Bytes>)) -> Reply {
    let fields = if fields.is_empty() {
        Reply::NilArray
    } else {
        Reply::Array(fields.into_iter().map(Reply::Bulk).collect())
    };
    Reply::Array(vec![Reply::Bulk(id), fields])
}

fn bulk_or_nil(v: &Option<Bytes>) -> Reply {
    v.clone().map_or(Reply::Nil, Reply::Bulk)
}

fn number(v: &Option<Bytes>) -> Option<i64> {
    std::str::from_utf8(v.as_deref()?).ok()?.parse().ok()
}

fn int_or_nil(v: &Option<Bytes>) -> Reply {
    number(v).map_or(Reply::Nil, Reply::Int)
}

fn no_group_for_key(key: &[u8], group: &[u8]) -> Reply {
    Reply::err(format!(
        "NOGROUP No such consumer group '{}' for key name '{}'",
        String::from_utf8_lossy(group),
        String::from_utf8_lossy(key)
    ))
}

/// Redis's NOGROUP for a stream or consumer group that does not exist.
fn no_key_or_group(key: &[u8], group: &[u8]) -> String {
    format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    )
}

/// XINFO STREAM FULL's groups, as [`Read::StreamInfo`] lays them out.
fn full_groups<'a>(it: &mut impl Iterator<Item = &'a Option<Bytes>>) -> Vec<Reply> {
    let mut next = || it.next().cloned().flatten();
    let mut groups = Vec::new();
    while let Some(name) = next() {
        let last_id = next();
        let (entries_read, lag) = (next(), next());
        let pel_count = next();
        let listed = number(&next()).unwrap_or(0);
        let pending = (0..listed)
            .map(|_| {
                let (id, consumer, at, n) = (next(), next(), next(), next());
                Reply::Array(vec![
                    bulk_or_nil(&id),
                    bulk_or_nil(&consumer),
                    int_or_nil(&at),
                    int_or_nil(&n),
                ])
            })
            .collect();
        let consumers = (0..number(&next()).unwrap_or(0))
            .map(|_| {
                let (name, seen, active, pel_count) = (next(), next(), next(), next());
                let listed = number(&next()).unwrap_or(0);
                let pending = (0..listed)
                    .map(|_| {
                        let (id, at, n) = (next(), next(), next());
                        Reply::Array(vec![bulk_or_nil(&id), int_or_nil(&at), int_or_nil(&n)])
                    })
                    .collect();
                Reply::Map(vec![
                    (Reply::bulk("name"), bulk_or_nil(&name)),
                    (Reply::bulk("seen-time"), int_or_nil(&seen)),
                    (
                        Reply::bulk("active-time"),
                        Reply::Int(number(&active).unwrap_or(-1)),
                    ),
                    (Reply::bulk("pel-count"), int_or_nil(&pel_count)),
                    (Reply::bulk("pending"), Reply::Array(pending)),
                ])
            })
            .collect();
        groups.push(Reply::Map(vec![
            (Reply::bulk("name"), Reply::Bulk(name)),
            (Reply::bulk("last-delivered-id"), bulk_or_nil(&last_id)),
            (Reply::bulk("entries-read"), int_or_nil(&entries_read)),
            (Reply::bulk("lag"), int_or_nil(&lag)),
            (Reply::bulk("pel-count"), int_or_nil(&pel_count)),
            (Reply::bulk("pending"), Reply::Array(pending)),
            (Reply::bulk("consumers"), Reply::Array(consumers)),
        ]));
    }
    groups
}

/// XPENDING: the summary, or the pending entries in a range (IDLE: delivered at least that
/// long ago).
fn xpending(_: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let (key, group) = (a[1].clone(), a[2].clone());
    let mut rest = &a[3..];
    let mut idle = None;
    if rest.len() > 1 && eq(&rest[0], "idle") {
        idle = Some(int_arg(&rest[1])?.max(0) as u64);
        rest = &rest[2..];
        if rest.is_empty() {
            return Err(Reply::err(SYNTAX));
        }
    }
    let range = match rest {
        [] => None,
        [start, end, count, consumer @ ..] if consumer.len() <= 1 => Some(PendingRange {
            start: range_bound(start, true)?,
            end: range_bound(end, false)?,
            count: int_arg(count)?.max(0) as usize,
            consumer: consumer.first().cloned(),
            delivered_by: idle.map(|ms| now_ms.saturating_sub(ms)),
        }),
        _ => return Err(Reply::err(SYNTAX)),
    };
    let detail = range.is_some();
    let op = Read::StreamPending {
        group: group.clone(),
        range,
    };
    Ok(Part::new(vec![read(&a[1], op)], move |r| {
        let v = match &r[0] {
            WriteResult::Values(v) => v,
            WriteResult::Failed(WriteError::NoGroup) => {
                return Reply::err(no_key_or_group(&key, &group))
            }
            other => return value_reply(other),
        };
        if detail {
            let entries = v.chunks(4).map(|p| {
                let at = number(&p[2]).unwrap_or(0);
                Reply::Array(vec![
                    bulk_or_nil(&p[0]),
                    bulk_or_nil(&p[1]),
                    Reply::Int((now_ms as i64).saturating_sub(at).max(0)),
                    int_or_nil(&p[3]),
                ])
            });
            return Reply::Array(entries.collect());
        }
        if v.len() < 3 {
            return Reply::Array(vec![
                int_or_nil(&v[0]),
                Reply::Nil,
                Reply::Nil,
                Reply::NilArray,
            ]);
        }
        let consumers = v[3..]
            .chunks(2)
            .map(|c| Reply::Array(vec![bulk_or_nil(&c[0]), bulk_or_nil(&c[1])]))
            .collect();
        Reply::Array(vec![
            int_or_nil(&v[0]),
            bulk_or_nil(&v[1]),
            bulk_or_nil(&v[2]),
            Reply::Array(consumers),
        ])
    }))
}

/// A claim's non-negative number argument, or Redis's error naming the option.
fn claim_number(a: Option<&Bytes>, what: &str, command: &str) -> Result<u64, Reply> {
    let bad = || Reply::err(format!("ERR Invalid {what} argument for {command}"));
    let n = int_arg(a.ok_or_else(|| Reply::err(SYNTAX))?).map_err(|_| bad())?;
    Ok(n.max(0) as u64)
}

/// A claim's reply: the entries, or only their IDs (JUSTID).
fn claimed<'a>(it: &mut impl Iterator<Item = &'a Option<Bytes>>, just_id: bool) -> Reply {
    let entries = next_entries(it).into_iter();
    Reply::Array(if just_id {
        entries.map(|(id, _)| Reply::Bulk(id)).collect()
    } else {
        entries.map(entry_reply).collect()
    })
}

fn xclaim(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let (key, group) = (a[1].clone(), a[2].clone());
    let min_idle_ms = claim_number(a.get(4), "min-idle-time", "XCLAIM")?;
    let mut at = 5;
    let mut ids = Vec::new();
    while let Some(id) = a.get(at).and_then(|id| StreamId::parse(id, 0)) {
        ids.push(id);
        at += 1;
    }
    let (mut delivered, mut deliveries, mut force, mut just_id, mut last_id) =
        (None, None, false, false, None);
    while let Some(o) = a.get(at) {
        let value = a.get(at + 1);
        at += 2;
        if eq(o, "idle") {
            delivered = Some(ClaimTime::Idle(claim_number(
                value,
                "IDLE option",
                "XCLAIM",
            )?));
        } else if eq(o, "time") {
            delivered = Some(ClaimTime::At(claim_number(value, "TIME option", "XCLAIM")?));
        } else if eq(o, "retrycount") {
            deliveries = Some(claim_number(value, "RETRYCOUNT option", "XCLAIM")?);
        } else if eq(o, "lastid") {
            let id = value.ok_or_else(|| Reply::err(SYNTAX))?;
            last_id = Some(StreamId::parse(id, 0).ok_or_else(invalid_id)?);
        } else {
            at -= 1;
            if eq(o, "force") {
                force = true;
            } else if eq(o, "justid") {
                just_id = true;
            } else {
                return Err(Reply::err(format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    String::from_utf8_lossy(o)
                )));
            }
        }
    }
    let w = Write::StreamClaim {
        key: key.clone(),
        group: group.clone(),
        consumer: a[3].clone(),
        min_idle_ms,
        claim: Claim::Ids {
            ids,
            delivered,
            deliveries,
            force,
            just_id,
            last_id,
        },
    };
    Ok(Part::new(vec![w], move |r| match &r[0] {
        WriteResult::Values(v) => claimed(&mut v.iter(), just_id),
        WriteResult::Failed(WriteError::NoGroup) => Reply::err(no_key_or_group(&key, &group)),
        other => value_reply(other),
    }))
}

fn xautoclaim(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let (key, group) = (a[1].clone(), a[2].clone());
    let min_idle_ms = claim_number(a.get(4), "min-idle-time", "XAUTOCLAIM")?;
    let start = match range_bound(&a[5], true)? {
        Bound::Excluded(id) => id.next().ok_or_else(invalid_id)?,
        Bound::Included(id) => id,
        Bound::Unbounded => StreamId::MIN,
    };
    let (mut count, mut just_id) = (100, false);
    let mut at = 6;
    while let Some(o) = a.get(at) {
        if eq(o, "count") {
            let n = int_arg(a.get(at + 1).ok_or_else(|| Reply::err(SYNTAX))?)?;
            // Redis looks at up to 10 × COUNT entries, in a long.
            if !(1..=i64::MAX / 10).contains(&n) {
                return Err(Reply::err("ERR COUNT must be > 0"));
            }
            count = n as usize;
            at += 2;
        } else if eq(o, "justid") {
            just_id = true;
            at += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    let w = Write::StreamClaim {
        key: key.clone(),
        group: group.clone(),
        consumer: a[3].clone(),
        min_idle_ms,
        claim: Claim::Scan {
            start,
            count,
            just_id,
        },
    };
    Ok(Part::new(vec![w], move |r| {
        let v = match &r[0] {
            WriteResult::Values(v) if !v.is_empty() => v,
            WriteResult::Failed(WriteError::NoGroup) => {
                return Reply::err(no_key_or_group(&key, &group))
            }
            other => return value_reply(other),
        };
        let mut it = v[1..].iter();
        let entries = claimed(&mut it, just_id);
        let deleted = it.map(bulk_or_nil).collect();
        Reply::Array(vec![bulk_or_nil(&v[0]), entries, Reply::Array(deleted)])
    }))
}

/// XGROUP CREATE's and SETID's ID: `$` (`None`: the stream's last), `-`, `+` or an ID.
fn group_id(id: &[u8]) -> Result<Option<StreamId>, Reply> {
    match id {
        b"$" => Ok(None),
        b"-" => Ok(Some(StreamId::MIN)),
        b"+" => Ok(Some(StreamId::MAX)),
        id => Ok(Some(StreamId::parse(id, 0).ok_or_else(invalid_id)?)),
    }
}

/// XGROUP CREATE, SETID, DESTROY, CREATECONSUMER, DELCONSUMER and HELP.
fn xgroup(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    let arity = match sub.as_str() {
        "help" => 2..=2,
        "create" => 5..=8,
        "setid" => 5..=7,
        "destroy" => 4..=4,
        "createconsumer" | "delconsumer" => 5..=5,
        _ => {
            return Err(Reply::err(format!(
                "ERR unknown subcommand '{}'. Try XGROUP HELP.",
                String::from_utf8_lossy(&a[1])
            )))
        }
    };
    if !arity.contains(&a.len()) {
        return Err(wrong_args(&format!("xgroup|{sub}")));
    }
    if sub == "help" {
        let lines = crate::docs::help_lines("xgroup").unwrap_or_default();
        return Ok(Part::deferred(move || {
            Reply::Array(lines.into_iter().map(Reply::simple).collect())
        }));
    }
    let (key, group) = (a[2].clone(), a[3].clone());
    let w = match sub.as_str() {
        "create" | "setid" => {
            let id = group_id(&a[4])?;
            let (mut mkstream, mut entries_read) = (false, None);
            let mut at = 5;
            while let Some(o) = a.get(at) {
                if sub == "create" && eq(o, "mkstream") {
                    mkstream = true;
                    at += 1;
                } else if eq(o, "entriesread") {
                    let n = int_arg(a.get(at + 1).ok_or_else(|| Reply::err(SYNTAX))?)?;
                    if n < -1 {
                        return Err(Reply::err(
                            "ERR value for ENTRIESREAD must be positive or -1",
                        ));
                    }
                    entries_read = (n >= 0).then_some(n as u64);
                    at += 2;
                } else {
                    return Err(Reply::err(SYNTAX));
                }
            }
            if sub == "create" {
                Write::StreamGroupCreate {
                    key: key.clone(),
                    group: group.clone(),
                    id,
                    entries_read,
                    mkstream,
                }
            } else {
                Write::StreamGroupSetId {
                    key: key.clone(),
                    group: group.clone(),
                    id,
                    entries_read,
                }
            }
        }
        "destroy" => Write::StreamGroupDestroy {
            key: key.clone(),
            group: group.clone(),
        },
        "createconsumer" => Write::StreamConsumerCreate {
            key: key.clone(),
            group: group.clone(),
            consumer: a[4].clone(),
        },
        _ => Write::StreamConsumerDelete {
            key: key.clone(),
            group: group.clone(),
            consumer: a[4].clone(),
        },
    };
    Ok(Part::new(vec![w], move |r| {
        match &r[0] {
        WriteResult::Put(_) => Reply::ok(),
        WriteResult::Int(n) => Reply::Int(*n),
        WriteResult::Failed(WriteError::NoSuchKey) => Reply::err(
            "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
        ),
        WriteResult::Failed(WriteError::NoGroup) => no_group_for_key(&key, &group),
        other => value_reply(other),
    }
    }))
}
