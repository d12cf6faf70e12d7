//! Stream commands: XADD, XLEN, XRANGE, XREVRANGE, XDEL, XTRIM, XSETID and XREAD. An entry's
//! ID is decided by the engine when the write is decided (from the transaction's time, above
//! the stream's last ID) and logged, so replay and replicas never pick one again.

use std::ops::Bound;

use keel_engine::{StreamId, StreamIdSpec, StreamTrim, StreamTrimBy};

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
    Command::new("xinfo", -2, R, NO_KEYS)
        .redis("", "")
        .doc(
            "stream",
            "",
            "Describes a stream (its consumer groups: none, in this release).",
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
        "Returns a stream's consumer groups (none: keel does not serve them yet).",
    )
    .redis("readonly", "@stream")
    .key_specs(&[Keys::at(2, "RO access")]),
    crate::docs::doc(
        "consumers",
        "stream",
        "key group",
        "Returns a consumer group's consumers (keel does not serve groups yet).",
    )
    .redis("readonly", "@stream")
    .key_specs(&[Keys::at(2, "RO access")]),
    crate::docs::doc("help", "stream", "", "Lists the subcommands.")
        .redis("loading stale", "@stream"),
];

/// XINFO STREAM, GROUPS, CONSUMERS and HELP.
fn xinfo(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    match (sub.as_str(), a.len()) {
        ("help", 2) => {
            let lines = crate::docs::help_lines("xinfo").unwrap_or_default();
            Ok(Part::deferred(move || {
                Reply::Array(lines.into_iter().map(Reply::Simple).collect())
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
        ("groups" | "consumers", 3 | 4) if (sub == "groups") == (a.len() == 3) => {
            let (key, group) = (a[2].clone(), a.get(3).cloned());
            Ok(Part::new(vec![read(&a[2], Read::Type)], move |r| {
                match (&r[0], group) {
                    (WriteResult::Value(Some(t)), _) if &t[..] != b"stream" => {
                        Reply::err(WRONGTYPE)
                    }
                    (WriteResult::Value(Some(_)), None) => Reply::Array(Vec::new()),
                    (WriteResult::Value(Some(_)), Some(group)) => Reply::err(format!(
                        "NOGROUP No such consumer group '{}' for key name '{}'",
                        String::from_utf8_lossy(&group),
                        String::from_utf8_lossy(&key)
                    )),
                    _ => Reply::err("ERR no such key"),
                }
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
        WriteResult::Values(v) if v.len() >= 5 => v,
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
    let mut listed = entries(&v[5..]);
    if full {
        out.push((Reply::bulk("entries"), Reply::Array(listed)));
        out.push((Reply::bulk("groups"), Reply::Array(Vec::new())));
    } else {
        out.push((Reply::bulk("groups"), Reply::Int(0)));
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
    Ok(Part::new(vec![w], |r| value_reply(&r[0])))
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

/// XREAD's options: COUNT, BLOCK (ms), and where STREAMS' keys start; `Err` for Redis's
/// errors.
struct XreadArgs {
    count: Option<usize>,
    block_ms: Option<u64>,
    /// The keys, then as many IDs.
    streams: usize,
    n: usize,
}

fn xread_args(a: &[Bytes]) -> Result<XreadArgs, Reply> {
    let (mut count, mut block_ms) = (None, None);
    let mut at = 1;
    while at < a.len() {
        let o = &a[at];
        if eq(o, "count") {
            let n = int_arg(a.get(at + 1).ok_or_else(|| Reply::err(SYNTAX))?)?;
            count = (n > 0).then_some(n as usize);
            at += 2;
        } else if eq(o, "block") {
            let ms = int_arg(a.get(at + 1).ok_or_else(|| Reply::err(SYNTAX))?)
                .map_err(|_| Reply::err("ERR timeout is not an integer or out of range"))?;
            if ms < 0 {
                return Err(Reply::err("ERR timeout is negative"));
            }
            block_ms = Some(ms as u64);
            at += 2;
        } else if eq(o, "streams") {
            let rest = a.len() - at - 1;
            if rest == 0 || !rest.is_multiple_of(2) {
                return Err(Reply::err(
                    "ERR Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.",
                ));
            }
            return Ok(XreadArgs {
                count,
                block_ms,
                streams: at + 1,
                n: rest / 2,
            });
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    Err(Reply::err(SYNTAX))
}

/// XREAD waits only with BLOCK (0: for ever).
fn xread_wait(a: &[Bytes]) -> Result<Wait, Reply> {
    Ok(xread_args(a)?
        .block_ms
        .map(|ms| (ms > 0).then(|| std::time::Duration::from_millis(ms))))
}

/// Before XREAD BLOCK waits: each `$` becomes its stream's last ID (`0-0` for none), so that
/// every try reads only what came after the wait began.
fn xread_prepare(view: &keel_engine::ReadView<'_>, a: &[Bytes]) -> Vec<Bytes> {
    let mut a = a.to_vec();
    if let Ok(x) = xread_args(&a) {
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
    match xread_args(a) {
        Ok(x) => (x.streams..x.streams + x.n)
            .map(|i| key_at(i, "RO access"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// XREAD: for each stream, its entries after the ID given (`$`: its last ID, so none now);
/// nil when no stream has any. BLOCK waits for one (`crate::blocking`, which resolves `$`
/// to the last ID before it waits).
fn xread(_: &'static str, a: &[Bytes], _: u64) -> Result<Part, Reply> {
    let x = xread_args(a)?;
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
