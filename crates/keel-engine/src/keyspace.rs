//! The keyspace: every user key's entry, in the typed hash table ([`crate::table`]), and the
//! views and change sets that read and update it.
//!
//! The map's concrete type ([`Map`]) is this module's business. Other modules still name it
//! where a whole image of the keyspace is loaded or written (recovery, checkpoints, backups,
//! restore and the snapshot file), and nowhere else.
//!
//! Beside the user keyspace lies the **system namespace** ([`System`]): a few entries an
//! embedder keeps atomically with the state (the cluster's applied position and membership).
//! User reads, scans, counts and `DeleteAll` never see it.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use keel_wal::Lsn;

use crate::record::Mutation;
use crate::table::{
    DuplicateKey, EntryRef, HashValue, Kind, ListValue, Loader, SetValue, StreamId, StreamValue,
    Table, Value, ValueMut, ValueRef, ZSetValue, KEYS_PER_SHARD_TARGET,
};
use crate::types::{live_at, Entry, Read, WriteError, WriteResult};
use crate::util::{int_text, scan_result, Copies, HashMap, Pick};
use crate::{bits, zsets};

/// A value of any type: a string, or a collection in the table's encoding.
#[derive(Clone, Debug)]
pub(crate) enum Stored {
    String(Bytes),
    Collection(Value),
}

impl Stored {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Stored::String(_) => Kind::String,
            Stored::Collection(c) => c.kind(),
        }
    }
}

/// An entry of any type, as the decided state and the replay hold it.
#[derive(Clone, Debug)]
pub(crate) struct Typed {
    pub(crate) value: Stored,
    pub(crate) version: Lsn,
    pub(crate) expires_at_ms: Option<u64>,
}

impl Typed {
    /// Whether copying it out of the visible state costs a copy of all it holds: a
    /// collection, but a stream (whose nodes a copy shares).
    pub(crate) fn is_costly_to_copy(&self) -> bool {
        matches!(&self.value, Stored::Collection(v) if !matches!(v, Value::Stream(_)))
    }

    pub(crate) fn is_packed_zset(&self) -> bool {
        matches!(&self.value, Stored::Collection(Value::ZSet(z)) if z.is_packed())
    }

    /// A sorted set in the skip list form becomes a working copy without order
    /// ([`ZSetValue::working_copy`]); anything else stays as it is.
    pub(crate) fn drop_zset_order(&mut self) {
        if let Stored::Collection(Value::ZSet(z)) = &mut self.value {
            if z.is_ordered() {
                *z = z.working_copy();
            }
        }
    }

    /// Heap bytes the value holds, about; O(1) for a hash, a set, a list or a sorted set,
    /// however large (the sequencer asks after every round of writes to one).
    pub(crate) fn memory_bytes(&self) -> usize {
        match &self.value {
            Stored::String(v) => v.len(),
            Stored::Collection(Value::String(v)) => v.len(),
            Stored::Collection(Value::Hash(h)) => h.memory_estimate(),
            Stored::Collection(Value::Set(x)) => x.memory_estimate(),
            Stored::Collection(Value::List(x)) => x.memory_estimate(),
            Stored::Collection(Value::ZSet(x)) => x.memory_bytes(),
            Stored::Collection(Value::Stream(x)) => x.memory_bytes(),
        }
    }
}

impl From<Entry> for Typed {
    fn from(e: Entry) -> Typed {
        Typed {
            value: Stored::String(e.value),
            version: e.version,
            expires_at_ms: e.expires_at_ms,
        }
    }
}

impl Stored {
    pub(crate) fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Stored::String(v) => ValueRef::String(v),
            Stored::Collection(v) => v.as_ref(),
        }
    }

    fn of(v: ValueRef<'_>) -> Stored {
        match v {
            ValueRef::String(v) => Stored::String(Bytes::copy_from_slice(v)),
            ValueRef::Hash(h) => Stored::Collection(Value::Hash(h.clone())),
            ValueRef::Set(x) => Stored::Collection(Value::Set(x.clone())),
            ValueRef::List(x) => Stored::Collection(Value::List(x.clone())),
            ValueRef::ZSet(x) => Stored::Collection(Value::ZSet(x.clone())),
            ValueRef::Stream(x) => Stored::Collection(Value::Stream(x.clone())),
        }
    }
}

/// An entry of any type, lent without copying: what deciding reads, from the visible table or
/// from the decided writes not yet visible.
#[derive(Clone, Copy)]
pub(crate) struct Lent<'a> {
    pub(crate) value: ValueRef<'a>,
    pub(crate) version: Lsn,
    pub(crate) expires_at_ms: Option<u64>,
}

impl<'a> Lent<'a> {
    pub(crate) fn live(&self, now_ms: u64) -> bool {
        live_at(self.expires_at_ms, now_ms)
    }

    pub(crate) fn of(e: EntryRef<'a>) -> Lent<'a> {
        Lent {
            value: e.value(),
            version: e.version(),
            expires_at_ms: e.expires_at_ms(),
        }
    }

    /// A copy: O(the value's size).
    pub(crate) fn typed(&self) -> Typed {
        Typed {
            value: Stored::of(self.value),
            version: self.version,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// The sequencer's copy to decide writes on: as [`Lent::typed`], but
    /// a large sorted set comes without its order ([`ZSetValue::working_copy`]).
    pub(crate) fn working_copy(&self) -> Typed {
        match self.value {
            ValueRef::ZSet(z) => Typed {
                value: Stored::Collection(Value::ZSet(z.working_copy())),
                version: self.version,
                expires_at_ms: self.expires_at_ms,
            },
            _ => self.typed(),
        }
    }
}

impl Typed {
    pub(crate) fn lend(&self) -> Lent<'_> {
        Lent {
            value: self.value.as_ref(),
            version: self.version,
            expires_at_ms: self.expires_at_ms,
        }
    }

    pub(crate) fn shape(&self) -> Shape {
        Shape::of(self.lend())
    }
}

/// The entry of a stored one, whatever its type, copied out.
pub(crate) fn typed_of(e: EntryRef<'_>) -> Typed {
    Typed {
        value: Stored::of(e.value()),
        version: e.version(),
        expires_at_ms: e.expires_at_ms(),
    }
}

/// Applies a relative mutation ([`Mutation::is_relative`]) to `entry`, the key's entry before
/// it (`None`: absent, expired or not), at `version`; returns the entry it leaves. The one
/// definition of what a relative mutation does to a copied-out entry; [`Map::edit`] does the
/// same in place.
pub(crate) fn edit_typed(entry: Option<Typed>, m: &Mutation, version: Lsn) -> Option<Typed> {
    match m {
        Mutation::HashSet { create, pairs, .. } => {
            let mut e = match entry {
                Some(e) if !*create && e.value.kind() == Kind::Hash => e,
                _ => Typed {
                    value: Stored::Collection(Value::Hash(HashValue::new())),
                    version,
                    expires_at_ms: None,
                },
            };
            if let Stored::Collection(Value::Hash(h)) = &mut e.value {
                for (f, v) in pairs {
                    h.insert(f, v);
                }
            }
            e.version = version;
            Some(e)
        }
        Mutation::HashDel { fields, .. } => {
            let mut e = entry?;
            if let Stored::Collection(Value::Hash(h)) = &mut e.value {
                for f in fields {
                    h.remove(f);
                }
                if h.is_empty() {
                    return None;
                }
            }
            e.version = version;
            Some(e)
        }
        Mutation::Expire { expires_at_ms, .. } => {
            let mut e = entry?;
            e.expires_at_ms = *expires_at_ms;
            e.version = version;
            Some(e)
        }
        Mutation::SetAdd {
            create, members, ..
        } => {
            let mut e = match entry {
                Some(e) if !*create && e.value.kind() == Kind::Set => e,
                _ => Typed {
                    value: Stored::Collection(Value::Set(SetValue::new())),
                    version,
                    expires_at_ms: None,
                },
            };
            if let Stored::Collection(Value::Set(set)) = &mut e.value {
                for m in members {
                    set.insert(m);
                }
            }
            e.version = version;
            Some(e)
        }
        Mutation::SetRem { members, .. } => {
            let mut e = entry?;
            if let Stored::Collection(Value::Set(set)) = &mut e.value {
                for m in members {
                    set.remove(m);
                }
                if set.is_empty() {
                    return None;
                }
            }
            e.version = version;
            Some(e)
        }
        m if is_list_mutation(m) => {
            let create = matches!(m, Mutation::ListPush { create: true, .. });
            let is_list = entry.as_ref().is_some_and(|e| e.value.kind() == Kind::List);
            let mut e = match entry {
                Some(e) if is_list && !create => e,
                _ if matches!(m, Mutation::ListPush { .. }) => Typed {
                    value: Stored::Collection(Value::List(ListValue::new())),
                    version,
                    expires_at_ms: None,
                },
                None => return None,
                // Not a list: only its version moves, as in the table.
                Some(e) => e,
            };
            if let Stored::Collection(Value::List(list)) = &mut e.value {
                if edit_list(list, m) {
                    return None;
                }
            }
            e.version = version;
            Some(e)
        }
        Mutation::StringWrite {
            create,
            offset,
            bytes,
            ..
        } => {
            let (old, expires_at_ms): (&[u8], _) = match &entry {
                Some(Typed {
                    value: Stored::String(v),
                    expires_at_ms,
                    ..
                }) if !*create => (v, *expires_at_ms),
                _ => (&[], None),
            };
            Some(Typed {
                value: Stored::String(bits::write_at(old, *offset as usize, bytes).into()),
                version,
                expires_at_ms,
            })
        }
        Mutation::ZAdd { .. } | Mutation::ZRem { .. } => {
            let create = matches!(m, Mutation::ZAdd { create: true, .. });
            let is_zset = entry.as_ref().is_some_and(|e| e.value.kind() == Kind::ZSet);
            let mut e = match entry {
                Some(e) if is_zset && !create => e,
                _ if matches!(m, Mutation::ZAdd { .. }) => Typed {
                    value: Stored::Collection(Value::ZSet(ZSetValue::new())),
                    version,
                    expires_at_ms: None,
                },
                None => return None,
                Some(e) => e,
            };
            if let Stored::Collection(Value::ZSet(z)) = &mut e.value {
                if zsets::edit(z, m) {
                    return None;
                }
            }
            e.version = version;
            Some(e)
        }
        m if is_stream_mutation(m) => {
            let is_stream = entry
                .as_ref()
                .is_some_and(|e| e.value.kind() == Kind::Stream);
            let mut e = match entry {
                Some(e) if is_stream && !stream_create(m) => e,
                _ if stream_create(m) => Typed {
                    value: Stored::Collection(Value::Stream(StreamValue::new())),
                    version,
                    expires_at_ms: None,
                },
                // Not a stream: the mutation was decided against one, so this cannot be.
                other => return other,
            };
            if let Stored::Collection(Value::Stream(x)) = &mut e.value {
                edit_stream(x, m);
            }
            e.version = version;
            Some(e)
        }
        other => unreachable!("not a relative mutation: {other:?}"),
    }
}

/// [`Read::Expiry`]'s result for a live key's expiry (`None`: no key).
pub(crate) fn expiry(at: Option<Option<u64>>) -> WriteResult {
    WriteResult::Int(match at {
        None => -2,
        Some(None) => -1,
        Some(Some(t)) => t as i64,
    })
}

/// Evaluates a read of a key whose live value is `value` (`None`: absent or expired). The one
/// definition of every [`Read`], for reads of the visible state and for reads inside a
/// transaction alike.
pub(crate) fn eval_read(value: Option<ValueRef<'_>>, op: &Read) -> WriteResult {
    let copy = |b: &[u8]| Some(Bytes::copy_from_slice(b));
    if let Read::Type = op {
        return WriteResult::Value(
            value.map(|v| Bytes::from_static(type_name(v.kind()).as_bytes())),
        );
    }
    if let Read::Dump = op {
        return WriteResult::Value(value.map(|v| Bytes::from(crate::snapshot::dump(v))));
    }
    if zsets::is_zset_read(op) {
        return zsets::eval(value, op);
    }
    if let Read::StreamLen
    | Read::StreamRange { .. }
    | Read::StreamLastId
    | Read::StreamInfo { .. }
    | Read::StreamGroups
    | Read::StreamConsumers { .. }
    | Read::StreamPending { .. } = op
    {
        let x = match value {
            None => None,
            Some(ValueRef::Stream(x)) => Some(x),
            Some(_) => return WriteResult::Failed(WriteError::WrongType),
        };
        return match op {
            Read::StreamLen => WriteResult::Int(x.map_or(0, |x| x.len() as i64)),
            Read::StreamLastId => WriteResult::Value(x.map(|x| x.last_id.to_bytes())),
            Read::StreamRange {
                start,
                end,
                count,
                rev,
            } => {
                let mut out = Vec::new();
                let entries = x.into_iter().flat_map(|x| x.range(*start, *end, *rev));
                for (id, fields) in entries.take(count.unwrap_or(usize::MAX)) {
                    out.push(Some(id.to_bytes()));
                    out.extend(fields.iter().map(|f| Some(f.clone())));
                    out.push(None);
                }
                WriteResult::Values(out)
            }
            Read::StreamInfo { entries } => {
                let Some(x) = x else {
                    return WriteResult::Failed(WriteError::NoSuchKey);
                };
                let text = |s: String| Some(Bytes::from(s));
                let first = x.first_id().unwrap_or(StreamId::MIN);
                let mut out = vec![
                    text(x.len().to_string()),
                    text(x.last_id.to_string()),
                    text(x.max_deleted.to_string()),
                    text(x.entries_added.to_string()),
                    text(first.to_string()),
                    text(x.groups.len().to_string()),
                ];
                let mut entry = |(id, fields): (StreamId, Vec<Bytes>)| {
                    out.push(text(id.to_string()));
                    out.extend(fields.iter().map(|f| Some(f.clone())));
                    out.push(None);
                };
                match entries {
                    None => {
                        x.first().into_iter().for_each(&mut entry);
                        x.last().into_iter().for_each(&mut entry);
                    }
                    Some(n) => {
                        let all = x.range(
                            std::ops::Bound::Unbounded,
                            std::ops::Bound::Unbounded,
                            false,
                        );
                        all.take(if *n == 0 { usize::MAX } else { *n })
                            .for_each(entry);
                    }
                }
                if let Some(n) = entries {
                    out.push(None);
                    info_groups(x, if *n == 0 { usize::MAX } else { *n }, &mut out);
                }
                WriteResult::Values(out)
            }
            Read::StreamGroups => {
                let Some(x) = x else {
                    return WriteResult::Failed(WriteError::NoSuchKey);
                };
                let num = |n: usize| Some(int_text(n));
                let mut out = Vec::with_capacity(6 * x.groups.len());
                for (name, g) in &x.groups {
                    out.push(Some(name.clone()));
                    out.push(num(g.consumers.len()));
                    out.push(num(g.pending.len()));
                    out.push(Some(g.last_id.to_bytes()));
                    out.push(g.entries_read.map(int_text));
                    out.push(x.lag(g).map(int_text));
                }
                WriteResult::Values(out)
            }
            Read::StreamConsumers { group } => {
                let Some(x) = x else {
                    return WriteResult::Failed(WriteError::NoSuchKey);
                };
                let Some(g) = x.groups.get(group) else {
                    return WriteResult::Failed(WriteError::NoGroup);
                };
                let num = |n: u64| Some(int_text(n));
                let mut out = Vec::with_capacity(4 * g.consumers.len());
                for (name, c) in &g.consumers {
                    out.push(Some(name.clone()));
                    out.push(num(c.pending.len() as u64));
                    out.push(num(c.seen_ms));
                    out.push(c.active_ms.and_then(num));
                }
                WriteResult::Values(out)
            }
            Read::StreamPending { group, range } => {
                let Some(g) = x.and_then(|x| x.groups.get(group)) else {
                    return WriteResult::Failed(WriteError::NoGroup);
                };
                let num = |n: u64| Some(int_text(n));
                let id = |id: &StreamId| Some(id.to_bytes());
                let Some(r) = range else {
                    let mut out = vec![num(g.pending.len() as u64)];
                    if let (Some((lo, _)), Some((hi, _))) =
                        (g.pending.get_min(), g.pending.get_max())
                    {
                        out.extend([id(lo), id(hi)]);
                        for (name, c) in g.consumers.iter().filter(|(_, c)| !c.pending.is_empty()) {
                            out.extend([Some(name.clone()), num(c.pending.len() as u64)]);
                        }
                    }
                    return WriteResult::Values(out);
                };
                if stream_range_is_empty(r.start, r.end) {
                    return WriteResult::Values(Vec::new());
                }
                let mut out = Vec::new();
                let pending = g.pending.range((r.start, r.end)).filter(|(_, p)| {
                    r.consumer.as_ref().is_none_or(|c| p.consumer == c)
                        && r.delivered_by.is_none_or(|t| p.delivered_ms <= t)
                });
                for (entry, p) in pending.take(r.count) {
                    out.extend([
                        id(entry),
                        Some(p.consumer.clone()),
                        num(p.delivered_ms),
                        num(p.deliveries),
                    ]);
                }
                WriteResult::Values(out)
            }
            _ => unreachable!("a stream read"),
        };
    }
    if let Read::Substring { start, end } = op {
        return match value {
            None => WriteResult::Value(Some(Bytes::new())),
            Some(ValueRef::String(v)) => WriteResult::Value(Some(Bytes::copy_from_slice(
                bits::substring(v, *start, *end),
            ))),
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        };
    }
    let wrong = WriteResult::Failed(WriteError::WrongType);
    let is_set_read = matches!(
        op,
        Read::SetMembers
            | Read::SetIsMember { .. }
            | Read::SetMisMember { .. }
            | Read::SetCard
            | Read::SetRandom { .. }
            | Read::SetScan { .. }
    );
    if is_set_read {
        let empty = SetValue::new();
        let set = match value {
            None => &empty,
            Some(ValueRef::Set(x)) => x,
            Some(_) => return wrong,
        };
        return match op {
            Read::SetMembers => WriteResult::Values(Copies::of(set.iter())),
            Read::SetIsMember { member } => WriteResult::Int(set.contains(member) as i64),
            Read::SetMisMember { members } => WriteResult::Values(
                members
                    .iter()
                    .map(|m| {
                        Some(Bytes::from_static(if set.contains(m) {
                            b"1"
                        } else {
                            b"0"
                        }))
                    })
                    .collect(),
            ),
            Read::SetCard => WriteResult::Int(set.len() as i64),
            Read::SetScan { cursor, count } => {
                scan_result(|c| set.scan(*cursor, *count, |m| c.push(m)))
            }
            Read::SetRandom { count, seed } => {
                let mut rng = Pick(*seed);
                WriteResult::Values(
                    (set.sample(*count, &mut || rng.next()).into_iter())
                        .map(|m| Some(Bytes::from(m.into_owned())))
                        .collect(),
                )
            }
            _ => unreachable!("a set read"),
        };
    }
    if let Read::ListRange { .. } | Read::ListIndex { .. } | Read::ListLen | Read::ListPos { .. } =
        op
    {
        let empty = ListValue::new();
        let list = match value {
            None => &empty,
            Some(ValueRef::List(l)) => l,
            Some(_) => return wrong,
        };
        return eval_list_read(list, op);
    }
    let empty = HashValue::new();
    let h = match value {
        None => &empty,
        Some(ValueRef::Hash(h)) => h,
        Some(_) => return wrong,
    };
    match op {
        Read::HashGet { fields } => {
            WriteResult::Values(fields.iter().map(|f| h.get(f).and_then(copy)).collect())
        }
        Read::HashAll => WriteResult::Values(Copies::of(h.iter().flat_map(|(f, v)| [f, v]))),
        Read::HashKeys => WriteResult::Values(Copies::of(h.iter().map(|(f, _)| f))),
        Read::HashVals => WriteResult::Values(Copies::of(h.iter().map(|(_, v)| v))),
        Read::HashLen => WriteResult::Int(h.len() as i64),
        Read::HashScan { cursor, count } => scan_result(|c| {
            h.scan(*cursor, *count, |f, v| {
                c.push(f);
                c.push(v);
            })
        }),
        Read::HashExists { field } => WriteResult::Int(h.get(field).is_some() as i64),
        Read::HashStrlen { field } => WriteResult::Int(h.get(field).map_or(0, |v| v.len()) as i64),
        Read::HashRandom { count, seed } => {
            let mut rng = Pick(*seed);
            WriteResult::Values(
                (h.sample(*count, &mut || rng.next()).into_iter())
                    .flat_map(|(f, v)| [copy(f), copy(v)])
                    .collect(),
            )
        }
        _ => unreachable!("answered above"),
    }
}

/// A list index as Redis reads one (negative: from the tail) into a position, if in range.
fn list_index(len: usize, index: i64) -> Option<usize> {
    let i = if index < 0 { len as i64 + index } else { index };
    (0..len as i64).contains(&i).then_some(i as usize)
}

/// Redis's inclusive, possibly negative bounds (LRANGE, LTRIM) as a half-open range of a list
/// of `len` elements; empty when they cross or start past the end.
pub(crate) fn list_bounds(len: usize, start: i64, stop: i64) -> (usize, usize) {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    if start > stop || start >= len {
        (0, 0)
    } else {
        (start as usize, stop as usize + 1)
    }
}

fn eval_list_read(list: &ListValue, op: &Read) -> WriteResult {
    let copy = |b: &[u8]| Some(Bytes::copy_from_slice(b));
    match op {
        Read::ListRange { start, stop } => {
            let (a, b) = list_bounds(list.len(), *start, *stop);
            WriteResult::Values(Copies::of(list.range(a, b)))
        }
        Read::ListIndex { index } => WriteResult::Value(
            list_index(list.len(), *index).and_then(|i| list.get(i).and_then(copy)),
        ),
        Read::ListLen => WriteResult::Int(list.len() as i64),
        Read::ListPos {
            element,
            rank,
            count,
            maxlen,
        } => {
            let len = list.len();
            let look = if *maxlen == 0 {
                len
            } else {
                (*maxlen).min(len)
            };
            let want = if *count == 0 { usize::MAX } else { *count };
            let mut skip = (rank.unsigned_abs() as usize).saturating_sub(1);
            let mut found = Vec::new();
            let mut visit = |i: usize, e: &[u8]| {
                if e == &element[..] {
                    if skip > 0 {
                        skip -= 1;
                    } else {
                        found.push(Some(int_text(i)));
                    }
                }
                found.len() < want
            };
            if *rank > 0 {
                for (i, e) in list.iter().enumerate().take(look) {
                    if !visit(i, e) {
                        break;
                    }
                }
            } else {
                let all: Vec<&[u8]> = list.range(len - look, len).collect();
                for (j, e) in all.iter().enumerate().rev() {
                    if !visit(len - look + j, e) {
                        break;
                    }
                }
            }
            WriteResult::Values(found)
        }
        other => unreachable!("not a list read: {other:?}"),
    }
}

/// What a push onto a list is decided from: whether the key holds a list and how long, and the
/// key's expiry; and its version, which a guard (WATCH) reads. Told from a key's entry and the
/// changes held over it without making the list ([`Recent`](crate::seq::Recent), a
/// transaction's overlay): making it copies the list, O(its length), and every later push is
/// then applied twice, to that copy and to the visible state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The list's length; `None`: the key holds another type.
    pub(crate) list_len: Option<usize>,
    pub(crate) expires_at_ms: Option<u64>,
    pub(crate) version: Lsn,
}

impl Shape {
    pub(crate) fn of(e: Lent<'_>) -> Shape {
        Shape {
            list_len: match e.value {
                ValueRef::List(l) => Some(l.len()),
                _ => None,
            },
            expires_at_ms: e.expires_at_ms,
            version: e.version,
        }
    }

    pub(crate) fn live(&self, now_ms: u64) -> bool {
        live_at(self.expires_at_ms, now_ms)
    }

    /// The shape of what [`edit_typed`] leaves when it applies `m`, decided at `version`, to an
    /// entry of shape `s` (`None`: no entry); `None` for a mutation whose effect is not told
    /// here (the entry is then made).
    pub(crate) fn edit(s: Option<Shape>, m: &Mutation, version: Lsn) -> Option<Option<Shape>> {
        let list = |len: usize, expires_at_ms| {
            (len > 0).then_some(Shape {
                list_len: Some(len),
                expires_at_ms,
                version,
            })
        };
        let told = match (s, m) {
            (
                Some(Shape {
                    list_len: Some(len),
                    expires_at_ms,
                    ..
                }),
                Mutation::ListPush {
                    create: false,
                    elements,
                    ..
                },
            ) => list(len + elements.len(), expires_at_ms),
            // A new list, whatever the key held.
            (_, Mutation::ListPush { elements, .. }) => list(elements.len(), None),
            (None, Mutation::ListPop { .. }) => None,
            (Some(s), Mutation::ListPop { count, .. }) => match s.list_len {
                Some(len) => list(len - len.min(*count as usize), s.expires_at_ms),
                // Not a list: only its version moves.
                None => Some(s),
            },
            (s, Mutation::Expire { expires_at_ms, .. }) => s.map(|s| Shape {
                expires_at_ms: *expires_at_ms,
                ..s
            }),
            _ => return None,
        };
        // Whatever the change, an entry it leaves has its version.
        Some(told.map(|s| Shape { version, ..s }))
    }
}

/// Applies a list mutation to `list`; returns whether the list is left empty. The one
/// definition, for the table's lists and for copied entries alike.
fn edit_list(list: &mut ListValue, m: &Mutation) -> bool {
    match m {
        Mutation::ListPush {
            front, elements, ..
        } => {
            for e in elements {
                if *front {
                    list.push_front(e);
                } else {
                    list.push_back(e);
                }
            }
        }
        Mutation::ListPop { front, count, .. } => {
            for _ in 0..*count {
                let popped = if *front {
                    list.pop_front()
                } else {
                    list.pop_back()
                };
                if !popped {
                    break;
                }
            }
        }
        Mutation::ListSet { index, element, .. } => {
            list.set(*index as usize, element);
        }
        Mutation::ListTrim { start, end, .. } => list.trim(*start as usize, *end as usize),
        Mutation::ListRem { count, element, .. } => {
            list.remove_matching(element, *count);
        }
        Mutation::ListInsert {
            after,
            pivot,
            element,
            ..
        } => {
            list.insert_at_pivot(pivot, *after, element);
        }
        other => unreachable!("not a list mutation: {other:?}"),
    }
    list.is_empty()
}

fn is_list_mutation(m: &Mutation) -> bool {
    matches!(
        m,
        Mutation::ListPush { .. }
            | Mutation::ListPop { .. }
            | Mutation::ListSet { .. }
            | Mutation::ListTrim { .. }
            | Mutation::ListRem { .. }
            | Mutation::ListInsert { .. }
    )
}

/// Whether two values hold the same contents, whatever their encodings.
pub(crate) fn same_value(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::String(a), ValueRef::String(b)) => a == b,
        (ValueRef::Hash(a), ValueRef::Hash(b)) => {
            a.len() == b.len() && a.iter().all(|(f, v)| b.get(f) == Some(v))
        }
        (ValueRef::Set(a), ValueRef::Set(b)) => {
            a.len() == b.len() && a.iter().all(|m| b.contains(&m))
        }
        (ValueRef::List(a), ValueRef::List(b)) => a.iter().eq(b.iter()),
        (ValueRef::ZSet(a), ValueRef::ZSet(b)) => {
            a.len() == b.len()
                && (a.iter().iter()).all(|(m, s)| b.score(m).map(f64::to_bits) == Some(s.to_bits()))
        }
        _ => false,
    }
}

/// What TYPE answers for a kind.
pub(crate) fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::String => "string",
        Kind::Hash => "hash",
        Kind::Set => "set",
        Kind::List => "list",
        Kind::ZSet => "zset",
        Kind::Stream => "stream",
    }
}

/// A string read ([`Write::Get`](crate::Write::Get)) of a live value.
pub(crate) fn eval_get(value: Option<ValueRef<'_>>) -> WriteResult {
    match value {
        None => WriteResult::Value(None),
        Some(ValueRef::String(v)) => WriteResult::Value(Some(Bytes::copy_from_slice(v))),
        Some(_) => WriteResult::Failed(WriteError::WrongType),
    }
}

/// Every user key's entry, in the typed table (strings, hashes and sets so far), and how many of them
/// carry an expiry. Not a persistent structure: cloning it copies every entry, which only a
/// legacy backup view and tests do.
#[derive(Clone)]
pub(crate) struct Map {
    table: Table,
    /// Entries that carry an expiry, kept as writes apply, so that counting them is O(1).
    expiring: usize,
}

/// Fills a new [`Map`] (see [`Map::loader`]).
pub(crate) struct MapLoader {
    loader: Loader,
    expiring: usize,
}

impl MapLoader {
    /// Adds the string entry `key` = `value`; an error if `key` came before.
    pub(crate) fn insert_string(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        version: Lsn,
    ) -> Result<(), DuplicateKey> {
        self.expiring += usize::from(expires_at_ms.is_some());
        self.loader
            .insert_string(key, value, expires_at_ms, version)
    }

    /// Adds `key`'s entry, of any type; an error if `key` came before.
    pub(crate) fn insert(
        &mut self,
        key: &[u8],
        value: Value,
        expires_at_ms: Option<u64>,
        version: Lsn,
    ) -> Result<(), DuplicateKey> {
        self.expiring += usize::from(expires_at_ms.is_some());
        self.loader.insert(key, value, expires_at_ms, version)
    }

    /// The map, every entry in it; an error if a key came twice.
    pub(crate) fn finish(self) -> Result<Map, DuplicateKey> {
        Ok(Map {
            table: self.loader.finish()?,
            expiring: self.expiring,
        })
    }
}

/// The string entry of a stored one, copied out; `None` for a collection.
pub(crate) fn entry_of(e: EntryRef<'_>) -> Option<Entry> {
    match e.value() {
        ValueRef::String(v) => Some(Entry {
            value: Bytes::copy_from_slice(v),
            version: e.version(),
            expires_at_ms: e.expires_at_ms(),
        }),
        _ => None,
    }
}

impl Default for Map {
    fn default() -> Map {
        Map::with_expected_keys(0)
    }
}

impl Map {
    /// A map sized for about `keys` keys, in 64 shards at least (a checkpoint reads whole
    /// shards a part at a time, so even a small keyspace is read in several parts); it splits
    /// its shards as it grows past them.
    pub(crate) fn with_expected_keys(keys: usize) -> Map {
        Map {
            table: Table::with_expected_keys(keys.max(KEYS_PER_SHARD_TARGET << 6)),
            expiring: 0,
        }
    }

    /// A loader that fills a new map, sized as [`Map::with_expected_keys`], with about `keys`
    /// keys, each once: the fast way to load a snapshot ([`crate::table::Loader`]).
    pub(crate) fn loader(keys: usize) -> MapLoader {
        MapLoader {
            loader: Loader::new(Map::with_expected_keys(keys).table, keys),
            expiring: 0,
        }
    }

    /// Entries held, expired ones included.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Entries that carry an expiry, expired ones included.
    pub(crate) fn expiring(&self) -> usize {
        self.expiring
    }

    /// The entry of `key`, expired or not.
    pub(crate) fn get(&self, key: &[u8]) -> Option<EntryRef<'_>> {
        self.table.get(key)
    }

    /// The string entry of `key`, expired or not, copied out; `None` for a collection.
    pub(crate) fn entry(&self, key: &[u8]) -> Option<Entry> {
        self.get(key).and_then(entry_of)
    }

    /// Sets `key`'s string entry; true if it replaced one.
    pub(crate) fn insert(&mut self, key: &[u8], e: &Entry) -> bool {
        let old = self
            .table
            .replace_string(key, &e.value, e.expires_at_ms, e.version);
        self.count_expiry(old, e.expires_at_ms.is_some());
        old.is_some()
    }

    /// Sets `key`'s entry, of any type; true if it replaced one.
    pub(crate) fn insert_typed(&mut self, key: &[u8], e: Typed) -> bool {
        match e.value {
            Stored::String(v) => {
                let old = self
                    .table
                    .replace_string(key, &v, e.expires_at_ms, e.version);
                self.count_expiry(old, e.expires_at_ms.is_some());
                old.is_some()
            }
            Stored::Collection(c) => {
                let old = self.table.delete(key);
                self.count_expiry(old, e.expires_at_ms.is_some());
                self.table.insert(key, c, e.expires_at_ms, e.version);
                old.is_some()
            }
        }
    }

    /// Applies a relative mutation ([`Mutation::is_relative`]) to `key`'s entry in place, at
    /// `version`: O(the change) for a collection, O(the value) for a string's byte-range write
    /// (the table rewrites the string; the log holds only the bytes). Does what [`edit_typed`]
    /// does to a copy.
    pub(crate) fn edit(&mut self, key: &[u8], m: &Mutation, version: Lsn) {
        match m {
            Mutation::HashSet { create, pairs, .. } => {
                let is_hash = self.get(key).is_some_and(|e| e.kind() == Kind::Hash);
                if *create || !is_hash {
                    let old = self.table.delete(key);
                    self.count_expiry(old, false);
                    self.table
                        .insert(key, Value::Hash(HashValue::new()), None, version);
                }
                let mut e = self.table.get_mut(key).expect("a hash was made above");
                e.set_version(version);
                if let ValueMut::Hash(h) = e.value_mut() {
                    for (f, v) in pairs {
                        h.insert(f, v);
                    }
                }
            }
            Mutation::HashDel { fields, .. } => {
                let Some(mut e) = self.table.get_mut(key) else {
                    return;
                };
                e.set_version(version);
                let emptied = match e.value_mut() {
                    ValueMut::Hash(h) => {
                        for f in fields {
                            h.remove(f);
                        }
                        h.is_empty()
                    }
                    _ => false,
                };
                if emptied {
                    self.remove(key);
                }
            }
            Mutation::Expire { expires_at_ms, .. } => {
                let Some(old) = self.get(key).map(|e| e.expires_at_ms()) else {
                    return;
                };
                self.table.set_expiry(key, *expires_at_ms, version);
                self.count_expiry(Some(old), expires_at_ms.is_some());
            }
            Mutation::SetAdd {
                create, members, ..
            } => {
                let is_set = self.get(key).is_some_and(|e| e.kind() == Kind::Set);
                if *create || !is_set {
                    let old = self.table.delete(key);
                    self.count_expiry(old, false);
                    self.table
                        .insert(key, Value::Set(SetValue::new()), None, version);
                }
                let mut e = self.table.get_mut(key).expect("a set was made above");
                e.set_version(version);
                if let ValueMut::Set(set) = e.value_mut() {
                    for m in members {
                        set.insert(m);
                    }
                }
            }
            Mutation::SetRem { members, .. } => {
                let Some(mut e) = self.table.get_mut(key) else {
                    return;
                };
                e.set_version(version);
                let emptied = match e.value_mut() {
                    ValueMut::Set(set) => {
                        for m in members {
                            set.remove(m);
                        }
                        set.is_empty()
                    }
                    _ => false,
                };
                if emptied {
                    self.remove(key);
                }
            }
            m if is_list_mutation(m) => {
                let is_list = self.get(key).is_some_and(|e| e.kind() == Kind::List);
                let create = matches!(m, Mutation::ListPush { create: true, .. });
                if let Mutation::ListPush { .. } = m {
                    if create || !is_list {
                        let old = self.table.delete(key);
                        self.count_expiry(old, false);
                        self.table
                            .insert(key, Value::List(ListValue::new()), None, version);
                    }
                }
                let Some(mut e) = self.table.get_mut(key) else {
                    return;
                };
                e.set_version(version);
                let emptied = match e.value_mut() {
                    ValueMut::List(list) => edit_list(list, m),
                    _ => false,
                };
                if emptied {
                    self.remove(key);
                }
            }
            Mutation::StringWrite {
                create,
                offset,
                bytes,
                ..
            } => {
                let old = self.get(key).filter(|_| !*create);
                let (value, expires_at_ms) = match old.map(|e| (e.value(), e.expires_at_ms())) {
                    Some((ValueRef::String(v), t)) => {
                        (bits::write_at(v, *offset as usize, bytes), t)
                    }
                    _ => (bits::write_at(&[], *offset as usize, bytes), None),
                };
                let entry = Entry {
                    value: value.into(),
                    version,
                    expires_at_ms,
                };
                self.insert(key, &entry);
            }
            Mutation::ZAdd { .. } | Mutation::ZRem { .. } => {
                let is_zset = self.get(key).is_some_and(|e| e.kind() == Kind::ZSet);
                if let Mutation::ZAdd { create, .. } = m {
                    if *create || !is_zset {
                        let old = self.table.delete(key);
                        self.count_expiry(old, false);
                        self.table
                            .insert(key, Value::ZSet(ZSetValue::new()), None, version);
                    }
                }
                let Some(mut e) = self.table.get_mut(key) else {
                    return;
                };
                e.set_version(version);
                let emptied = match e.value_mut() {
                    ValueMut::ZSet(z) => zsets::edit(z, m),
                    _ => false,
                };
                if emptied {
                    self.remove(key);
                }
            }
            m if is_stream_mutation(m) => {
                let is_stream = self.get(key).is_some_and(|e| e.kind() == Kind::Stream);
                if stream_create(m) || !is_stream {
                    if !stream_create(m) {
                        return;
                    }
                    let old = self.table.delete(key);
                    self.count_expiry(old, false);
                    self.table
                        .insert(key, Value::Stream(StreamValue::new()), None, version);
                }
                let Some(mut e) = self.table.get_mut(key) else {
                    return;
                };
                e.set_version(version);
                if let ValueMut::Stream(x) = e.value_mut() {
                    edit_stream(x, m);
                }
            }
            other => unreachable!("not a relative mutation: {other:?}"),
        }
    }

    /// Removes `key`'s entry; true if there was one.
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        let old = self.table.delete(key);
        self.count_expiry(old, false);
        old.is_some()
    }

    /// Keeps `expiring` as an entry whose old expiry was `old` (`None`: no entry) is replaced
    /// by one that `expires` or not.
    fn count_expiry(&mut self, old: Option<Option<u64>>, expires: bool) {
        let had = matches!(old, Some(Some(_)));
        self.expiring = self.expiring + usize::from(expires) - usize::from(had);
    }

    pub(crate) fn clear(&mut self) {
        self.table.clear();
        self.expiring = 0;
    }

    /// Every entry, expired or not, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        self.table.iter()
    }

    /// See [`Table::scan`].
    fn scan(&self, cursor: u64, count: usize) -> (Vec<EntryRef<'_>>, u64) {
        self.table.scan(cursor, count)
    }
}

/// Two maps are equal when they hold the same entries (tests compare loaded images).
impl PartialEq for Map {
    fn eq(&self, other: &Map) -> bool {
        self.len() == other.len()
            && self.iter().all(|e| {
                other.get(e.key()).is_some_and(|o| {
                    (o.version(), o.expires_at_ms()) == (e.version(), e.expires_at_ms())
                        && same_value(o.value(), e.value())
                })
            })
    }
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for e in self.iter().take(64) {
            m.entry(&Bytes::copy_from_slice(e.key()), &typed_of(e));
        }
        m.finish()
    }
}

/// The system namespace: key to value, in key order. A handful of entries.
pub(crate) type System = BTreeMap<Bytes, Bytes>;

/// A whole image of the state: the user keyspace and the system namespace.
#[derive(Clone, Debug, Default)]
pub(crate) struct Image {
    pub(crate) map: Map,
    pub(crate) system: System,
}

/// A read of the durable state: what [`Engine::read`](crate::Engine::read) lends its closure.
/// It borrows the visible keyspace under its read lock, so it sees one state, whole
/// transactions only (P10), and lives no longer than the closure.
///
/// Keys are held in a hash table: [`ReadView::scan`] visits them in the order of their hash,
/// [`ReadView::iter`] and [`ReadView::keys`] in no particular order; never in their bytes' order.
#[derive(Clone, Copy)]
pub struct ReadView<'a> {
    keyspace: &'a Keyspace,
    lsn: Lsn,
    now_ms: u64,
}

impl<'a> ReadView<'a> {
    pub(crate) fn new(keyspace: &'a Keyspace, lsn: Lsn, now_ms: u64) -> ReadView<'a> {
        ReadView {
            keyspace,
            lsn,
            now_ms,
        }
    }

    /// The LSN up to which this view includes every write.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The Unix time at which expiry is judged in this view.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn live(&self, key: &[u8]) -> Option<EntryRef<'a>> {
        let now = self.now_ms;
        self.keyspace.map.get(key).filter(|e| e.live(now))
    }

    /// The live string entry of `key`, copied out; `None` if it is absent, expired or holds
    /// another type (see [`ReadView::kind`]).
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.live(key).and_then(entry_of)
    }

    /// A read of `key`'s live value, of any type: the result the same [`Write::Get`] or
    /// [`Write::Read`] would give inside a transaction.
    ///
    /// [`Write::Get`]: crate::Write::Get
    /// [`Write::Read`]: crate::Write::Read
    pub fn read(&self, key: &[u8], op: Option<&Read>) -> WriteResult {
        self.read_found(key, op).0
    }

    /// [`ReadView::read`], and whether `key` has a live value (of any type): a hit or a miss,
    /// as Redis's INFO counts them.
    pub fn read_found(&self, key: &[u8], op: Option<&Read>) -> (WriteResult, bool) {
        if let Some(Read::Expiry) = op {
            let stamp = self.stamp(key);
            return (expiry(stamp.map(|(_, at)| at)), stamp.is_some());
        }
        let value = self.live(key).map(|e| e.value());
        let found = value.is_some();
        let r = match op {
            None => eval_get(value),
            Some(op) => eval_read(value, op),
        };
        (r, found)
    }

    /// SORT without STORE (see [`Write::Sort`](crate::Write::Sort)) against this state: the
    /// result a transaction would give.
    pub fn sort(&self, spec: &crate::types::SortSpec) -> WriteResult {
        let lookup = |k: &[u8]| self.live(k).map(|e| e.value());
        match crate::sort::sort(&lookup, spec) {
            Ok(found) => WriteResult::Values(found),
            Err(e) => WriteResult::Failed(e),
        }
    }

    /// The type of `key`'s live value, if it has one: `string`, `hash`, `set`, `list` or
    /// `zset`, as Redis's TYPE names them.
    pub fn kind(&self, key: &[u8]) -> Option<&'static str> {
        self.live(key).map(|e| type_name(e.kind()))
    }

    /// How `key`'s live value is stored, under Redis's names where keel's encoding is the same
    /// idea: a string is `int` (a decimal integer of at most 20 bytes), `embstr` (at most 44
    /// bytes) or `raw`, as Redis decides them (keel stores every string inline in its entry);
    /// a hash `listpack` (one packed buffer) or `hashtable`.
    pub fn encoding(&self, key: &[u8]) -> Option<&'static str> {
        Some(match self.live(key)?.value() {
            ValueRef::String(v) => {
                let int = v.len() <= 20
                    && std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .is_some_and(|n| n.to_string().as_bytes() == v);
                match v.len() {
                    _ if int => "int",
                    0..=44 => "embstr",
                    _ => "raw",
                }
            }
            ValueRef::Hash(h) if h.is_packed() => "listpack",
            ValueRef::Hash(_) => "hashtable",
            ValueRef::Set(s) => match s.encoding() {
                crate::table::SetEncoding::Ints => "intset",
                crate::table::SetEncoding::Packed => "listpack",
                crate::table::SetEncoding::Table => "hashtable",
            },
            ValueRef::List(l) if l.is_single_chunk() => "listpack",
            ValueRef::List(_) => "quicklist",
            ValueRef::ZSet(z) if z.is_packed() => "listpack",
            ValueRef::ZSet(_) => "skiplist",
            ValueRef::Stream(_) => "stream",
        })
    }

    /// About how many bytes of memory `key`'s live entry takes (Redis's MEMORY USAGE): its
    /// block (header, key and a string's bytes), its table slot, and a collection's own
    /// allocations as requested from the allocator (its rounding is not counted).
    pub fn memory_usage(&self, key: &[u8]) -> Option<usize> {
        const HEADER_AND_SLOT: usize = 1 + 2 + 8 + 8 + 17;
        let e = self.live(key)?;
        let value = match e.value() {
            ValueRef::String(v) => v.len(),
            ValueRef::Hash(h) => 4 + h.memory_bytes(),
            ValueRef::Set(x) => 4 + x.memory_bytes(),
            ValueRef::List(x) => 4 + x.memory_bytes(),
            ValueRef::ZSet(x) => 4 + x.memory_bytes(),
            ValueRef::Stream(x) => 4 + x.memory_bytes(),
        };
        Some(HEADER_AND_SLOT + key.len() + value)
    }

    /// The version of `key`'s live entry, without copying its value (a WATCH check).
    pub fn version(&self, key: &[u8]) -> Option<Lsn> {
        self.live(key).map(|e| e.version())
    }

    /// The version and expiry (Unix ms) of `key`'s live entry, of any type, without copying it.
    pub fn stamp(&self, key: &[u8]) -> Option<(Lsn, Option<u64>)> {
        self.live(key).map(|e| (e.version(), e.expires_at_ms()))
    }

    /// The value of `key` in the system namespace (see [`Write::System`](crate::Write::System)).
    pub fn system(&self, key: &[u8]) -> Option<&'a Bytes> {
        self.keyspace.system.get(key)
    }

    /// One step of a scan: live entries from `cursor` on (start with 0), about `count` of them
    /// (at least `count` are read, fewer come back when some have expired), and the cursor to
    /// pass next, 0 when the scan is complete.
    /// The cursor is a position in hash order, so it holds no state: a key present for the
    /// whole scan is returned exactly once, whatever is written between the steps (Redis's
    /// guarantee is at least once). A step costs O(keys of the shards it reads).
    /// Only string entries come back with their values; [`ReadView::scan_keys`] gives every key.
    pub fn scan(&self, cursor: u64, count: usize) -> (Vec<(Bytes, Entry)>, u64) {
        let (found, next) = self.scan_live(cursor, count);
        let page = found.filter_map(|e| Some((Bytes::copy_from_slice(e.key()), entry_of(e)?)));
        (page.collect(), next)
    }

    /// [`ReadView::scan`] without the values: the keys only (Redis's SCAN).
    pub fn scan_keys(&self, cursor: u64, count: usize) -> (Vec<Bytes>, u64) {
        let (found, next) = self.scan_live(cursor, count);
        (
            found.map(|e| Bytes::copy_from_slice(e.key())).collect(),
            next,
        )
    }

    /// One scan step's live entries and the next cursor. A cursor is the table's position (a key
    /// hash) sealed by [`CursorSeal`], so that it tells the client no key's hash.
    fn scan_live(
        &self,
        cursor: u64,
        count: usize,
    ) -> (impl Iterator<Item = EntryRef<'a>> + 'a, u64) {
        let seal = &self.keyspace.seal;
        let (found, next) = self.keyspace.map.scan(seal.open(cursor), count);
        let now = self.now_ms;
        (
            found.into_iter().filter(move |e| e.live(now)),
            seal.seal(next),
        )
    }

    /// Every live key, in no particular order, without copying.
    pub fn keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let now = self.now_ms;
        (self.keyspace.map.iter())
            .filter(move |e| e.live(now))
            .map(|e| e.key())
    }

    /// Every live string entry, in no particular order, each copied out (collections are left
    /// out; [`ReadView::keys`] gives every key).
    pub fn iter(&self) -> impl Iterator<Item = (Bytes, Entry)> + 'a {
        let now = self.now_ms;
        (self.keyspace.map.iter())
            .filter(move |e| e.live(now))
            .filter_map(|e| Some((Bytes::copy_from_slice(e.key()), entry_of(e)?)))
    }

    /// Number of live keys. O(n) when some keys carry an expiry.
    pub fn count(&self) -> usize {
        if self.keyspace.map.expiring == 0 {
            return self.keyspace.map.len();
        }
        self.keys().count()
    }

    /// Every entry held, in O(1), including expired ones that active expiry has not removed
    /// yet: what Redis's INFO keyspace counts as `keys`.
    pub fn held(&self) -> usize {
        self.keyspace.map.len()
    }

    /// The entries held that carry an expiry, in O(1): Redis's INFO keyspace `expires`.
    pub fn expiring(&self) -> usize {
        self.keyspace.map.expiring
    }
}

/// SCAN cursors as clients see them: the table's scan position (a key's 64-bit hash) under a
/// secret permutation of the 64-bit numbers. The raw position is a key's hash, and hashes
/// collected through SCAN would help a client work out the table's hash seed (foldhash is fast,
/// not built to keep its seed from someone who sees its outputs) and then aim keys at one shard
/// or one probe chain. Four Feistel rounds over the 32-bit halves, with SipHash under random
/// keys (std's `RandomState`) as the round function: a pseudo-random permutation
/// (Luby–Rackoff). 0 stays 0 both ways, the start and the end of a scan; the number that 0
/// would have become takes 0's place.
struct CursorSeal(std::hash::RandomState);

impl CursorSeal {
    const ROUNDS: u32 = 4;

    fn round(&self, i: u32, half: u32) -> u32 {
        use std::hash::BuildHasher;
        self.0.hash_one((i, half)) as u32
    }

    fn forward(&self, x: u64) -> u64 {
        let (mut l, mut r) = ((x >> 32) as u32, x as u32);
        for i in 0..Self::ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    fn backward(&self, y: u64) -> u64 {
        let (mut l, mut r) = ((y >> 32) as u32, y as u32);
        for i in (0..Self::ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    /// The cursor a client sees for the scan position `p`.
    fn seal(&self, p: u64) -> u64 {
        match (p, self.forward(p)) {
            (0, _) => 0,
            (_, 0) => self.forward(0),
            (_, c) => c,
        }
    }

    /// The scan position of the cursor `c`: [`CursorSeal::seal`] undone.
    fn open(&self, c: u64) -> u64 {
        match (c, self.backward(c)) {
            (0, _) => 0,
            (_, 0) => self.backward(0),
            (_, p) => p,
        }
    }
}

/// The keyspace readers see: the user keys' table and the system namespace.
pub(crate) struct Keyspace {
    map: Map,
    system: System,
    seal: CursorSeal,
}

impl Keyspace {
    pub(crate) fn new(image: Image) -> Keyspace {
        let Image { map, system } = image;
        Keyspace {
            map,
            system,
            seal: CursorSeal(std::hash::RandomState::new()),
        }
    }

    /// The entry of `key`, expired or not, lent.
    pub(crate) fn lend(&self, key: &[u8]) -> Option<Lent<'_>> {
        self.map.get(key).map(Lent::of)
    }

    /// The value of `key` in the system namespace.
    pub(crate) fn system(&self, key: &[u8]) -> Option<&Bytes> {
        self.system.get(key)
    }

    /// A copy of the whole state: O(n) time and memory. Only a legacy backup view takes one.
    pub(crate) fn image(&self) -> Image {
        Image {
            map: self.map.clone(),
            system: self.system.clone(),
        }
    }

    /// See [`Table::visit_from`]: a part of a checkpoint's pass over the keyspace.
    pub(crate) fn visit_part(
        &self,
        from: u64,
        limit: usize,
        visit: &mut dyn FnMut(EntryRef<'_>),
    ) -> u64 {
        self.map.table.visit_from(from, limit, visit)
    }

    /// A copy of the system namespace (a handful of entries).
    pub(crate) fn system_image(&self) -> System {
        self.system.clone()
    }

    /// See [`Table::warm`].
    pub(crate) fn warm<'k>(&self, keys: impl Iterator<Item = &'k [u8]>, count: usize) -> usize {
        self.map.table.warm(keys, count)
    }

    /// Applies `mutations`, giving every entry they write the version `version`.
    pub(crate) fn apply(&mut self, mutations: &[Mutation], version: Lsn) {
        for m in mutations {
            match change(m, version) {
                Change::Key(key, Some(e)) => {
                    self.map.insert(key, &e);
                }
                Change::Key(key, None) => {
                    self.map.remove(key);
                }
                Change::Edit(key, m) => self.map.edit(key, m, version),
                Change::All => self.map.clear(),
                Change::System(key, value) => {
                    self.system.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

/// Applies the mutations of the record at `lsn` to a snapshot's image whose entries may already
/// hold it, or later records: a checkpoint that reads the keyspace shard by shard while writes go
/// on. A key's version is the LSN of its last change, so the rule is, per key: the record applies
/// to a key only if the key's entry before the record is older than it, or absent; a DeleteAll
/// removes the entries older than the record and those the record itself wrote before it. In LSN
/// order, the tail then leaves every key as of the tail's last record, as long as each record's
/// effect on a key depends only on that key's prior state and on the record (docs/FORMAT.md,
/// "Snapshot tail"). System entries are skipped: a snapshot's system namespace is taken as of its
/// LSN. The image must have been read between records, never in the middle of one (publishing
/// applies a record whole under the write lock, so a reader holding the read lock sees whole
/// records): a part read half-way through `[set k1, DeleteAll, set k2]` would hold k1 at the
/// record's version, and the rule would then keep it.
pub(crate) fn apply_by_version(map: &mut Map, mutations: &[Mutation], lsn: Lsn) {
    // Whether the record applies to each key it touches, decided at the key's first mutation in
    // the record, before the record changes the key's version to `lsn`.
    let mut applies: HashMap<Bytes, bool> = HashMap::default();
    for m in mutations {
        match change(m, lsn) {
            Change::Key(key, e) => {
                let older = || map.get(key).is_none_or(|old| old.version() < lsn);
                if !*applies.entry(key.clone()).or_insert_with(older) {
                    continue;
                }
                match e {
                    Some(e) => map.insert(key, &e),
                    None => map.remove(key),
                };
            }
            Change::Edit(key, m) => {
                let older = || map.get(key).is_none_or(|old| old.version() < lsn);
                if *applies.entry(key.clone()).or_insert_with(older) {
                    map.edit(key, m, lsn);
                }
            }
            Change::All => {
                let gone: Vec<Bytes> = map
                    .iter()
                    .filter(|e| e.version() < lsn || applies.get(e.key()) == Some(&true))
                    .map(|e| Bytes::copy_from_slice(e.key()))
                    .collect();
                for k in gone {
                    map.remove(&k);
                }
            }
            Change::System(..) => {}
        }
    }
}

/// What one mutation does.
pub(crate) enum Change<'a> {
    /// The entry it leaves under a user key (`None`: deleted).
    Key(&'a Bytes, Option<Entry>),
    /// A relative change to a user key's entry ([`Mutation::is_relative`]).
    Edit(&'a Bytes, &'a Mutation),
    /// Every user key is gone.
    All,
    /// A system entry is set.
    System(&'a Bytes, &'a Bytes),
}

/// What a mutation does at `version`. Every structure that follows mutations goes through this.
pub(crate) fn change(m: &Mutation, version: Lsn) -> Change<'_> {
    match m {
        Mutation::Set {
            key,
            value,
            expires_at_ms,
        } => Change::Key(
            key,
            Some(Entry {
                value: value.clone(),
                version,
                expires_at_ms: *expires_at_ms,
            }),
        ),
        Mutation::Delete { key } => Change::Key(key, None),
        Mutation::DeleteAll => Change::All,
        Mutation::System { key, value } => Change::System(key, value),
        // Every other mutation is relative, and has a user key.
        m => Change::Edit(m.user_key().expect("a relative mutation's key"), m),
    }
}

/// Whether the mutation makes the key a new empty stream first (whatever it held).
fn stream_create(m: &Mutation) -> bool {
    matches!(
        m,
        Mutation::StreamAdd { create: true, .. } | Mutation::StreamMeta { create: true, .. }
    )
}

/// Whether a range of stream IDs is empty (`BTreeMap::range` panics on one that ends before
/// it starts).
pub(crate) fn stream_range_is_empty(start: Bound<StreamId>, end: Bound<StreamId>) -> bool {
    let point = |b: Bound<StreamId>| match b {
        Bound::Included(x) => Some((x, false)),
        Bound::Excluded(x) => Some((x, true)),
        Bound::Unbounded => None,
    };
    match (point(start), point(end)) {
        (Some((a, ax)), Some((b, bx))) => a > b || (a == b && (ax || bx)),
        _ => false,
    }
}

/// XINFO STREAM FULL's groups, as [`Read::StreamInfo`] lays them out; at most `n` pending
/// entries listed per group and per consumer.
fn info_groups(x: &StreamValue, n: usize, out: &mut Vec<Option<Bytes>>) {
    let num = |n: u64| Some(int_text(n));
    let id = |id: &StreamId| Some(id.to_bytes());
    for (name, g) in &x.groups {
        out.push(Some(name.clone()));
        out.push(id(&g.last_id));
        out.push(g.entries_read.and_then(num));
        out.push(x.lag(g).and_then(num));
        out.push(num(g.pending.len() as u64));
        out.push(num(g.pending.len().min(n) as u64));
        for (entry, p) in g.pending.iter().take(n) {
            out.extend([
                id(entry),
                Some(p.consumer.clone()),
                num(p.delivered_ms),
                num(p.deliveries),
            ]);
        }
        out.push(num(g.consumers.len() as u64));
        for (name, c) in &g.consumers {
            out.push(Some(name.clone()));
            out.push(num(c.seen_ms));
            out.push(c.active_ms.and_then(num));
            out.push(num(c.pending.len() as u64));
            out.push(num(c.pending.len().min(n) as u64));
            for entry in c.pending.iter().take(n) {
                let p = &g.pending[entry];
                out.extend([id(entry), num(p.delivered_ms), num(p.deliveries)]);
            }
        }
    }
}

/// Whether the mutation edits a stream (its entries, metadata or consumer groups).
fn is_stream_mutation(m: &Mutation) -> bool {
    matches!(
        m,
        Mutation::StreamAdd { .. }
            | Mutation::StreamDel { .. }
            | Mutation::StreamTrim { .. }
            | Mutation::StreamMeta { .. }
            | Mutation::StreamGroup { .. }
            | Mutation::StreamGroupDel { .. }
            | Mutation::StreamConsumer { .. }
            | Mutation::StreamConsumerDel { .. }
            | Mutation::StreamPending { .. }
            | Mutation::StreamAck { .. }
    )
}

/// Applies a stream mutation to the stream it edits. A consumer-group mutation whose group is
/// gone does nothing (it was decided against the group, so this cannot be).
fn edit_stream(x: &mut StreamValue, m: &Mutation) {
    match m {
        Mutation::StreamGroup {
            group,
            last_id,
            entries_read,
            ..
        } => x.set_group(group, *last_id, *entries_read),
        Mutation::StreamGroupDel { group, .. } => {
            x.groups.remove(group);
        }
        Mutation::StreamConsumer {
            group,
            consumer,
            seen_ms,
            active_ms,
            ..
        } => {
            if let Some(g) = x.groups.get_mut(group) {
                g.set_consumer(consumer, *seen_ms, *active_ms);
            }
        }
        Mutation::StreamConsumerDel {
            group, consumer, ..
        } => {
            if let Some(g) = x.groups.get_mut(group) {
                g.delete_consumer(consumer);
            }
        }
        Mutation::StreamPending {
            group,
            consumer,
            entries,
            ..
        } => {
            if let Some(g) = x.groups.get_mut(group) {
                for (id, at, n) in entries {
                    g.set_pending(*id, consumer, *at, *n);
                }
            }
        }
        Mutation::StreamAck { group, ids, .. } => {
            if let Some(g) = x.groups.get_mut(group) {
                for id in ids {
                    g.ack(*id);
                }
            }
        }
        Mutation::StreamAdd { id, fields, .. } => x.add(*id, fields),
        Mutation::StreamDel { ids, .. } => {
            x.delete(ids);
        }
        Mutation::StreamTrim { keep_from, .. } => {
            x.trim_below(*keep_from);
        }
        Mutation::StreamMeta {
            last_id,
            entries_added,
            max_deleted,
            ..
        } => {
            x.last_id = *last_id;
            x.entries_added = *entries_added;
            x.max_deleted = *max_deleted;
        }
        other => unreachable!("not a stream mutation: {other:?}"),
    }
}

/// Mutations gathered per key: the newest entry of each key written, and whether a DeleteAll
/// came. Recovery and restore replay the log into it, then merge it into the map: each key is
/// then written once, however often the log rewrote it.
#[derive(Default)]
pub(crate) struct Changes {
    changed: HashMap<Bytes, Slot>,
    /// A DeleteAll came: entries not in `changed` are gone.
    cleared: bool,
    /// The newest value of each system entry written.
    system: HashMap<Bytes, Bytes>,
}

/// What the changes leave under one key.
enum Slot {
    /// This entry (`None`: deleted), whatever the map held.
    Entry(Option<Typed>),
    /// The map's entry, changed by these relative mutations at these versions, in order.
    Edits(Vec<(Mutation, Lsn)>),
}

impl Changes {
    pub(crate) fn apply(&mut self, mutations: &[Mutation], version: Lsn) {
        for m in mutations {
            match change(m, version) {
                Change::Key(key, e) => {
                    self.changed
                        .insert(key.clone(), Slot::Entry(e.map(Typed::from)));
                }
                Change::Edit(key, m) => match self.changed.get_mut(key) {
                    Some(Slot::Entry(e)) => *e = edit_typed(e.take(), m, version),
                    Some(Slot::Edits(edits)) => edits.push((m.clone(), version)),
                    None if self.cleared => {
                        let e = edit_typed(None, m, version);
                        self.changed.insert(key.clone(), Slot::Entry(e));
                    }
                    None => {
                        let edits = vec![(m.clone(), version)];
                        self.changed.insert(key.clone(), Slot::Edits(edits));
                    }
                },
                Change::All => {
                    self.changed.clear();
                    self.cleared = true;
                }
                Change::System(key, value) => {
                    self.system.insert(key.clone(), value.clone());
                }
            }
        }
    }

    /// Merges the changes into `image`.
    pub(crate) fn merge_into(self, image: &mut Image) {
        image.system.extend(self.system);
        let map = &mut image.map;
        if self.cleared {
            map.clear();
        }
        if map.len() == 0 {
            // Sized for the keys at once (a log replayed without a snapshot): growing to them
            // from empty would split every shard many times over, rehashing each key as often.
            *map = Map::with_expected_keys(self.changed.len());
        }
        // In the order of the table's hashes, so that consecutive writes go to the same shard
        // while its table is in the cache, instead of a cache miss or three at every key.
        let mut changed: Vec<(u64, Bytes, Slot)> = (self.changed.into_iter())
            .map(|(k, e)| (map.table.hash(&k), k, e))
            .collect();
        changed.sort_unstable_by_key(|c| c.0);
        for (_, k, slot) in changed {
            match slot {
                Slot::Entry(Some(e)) => {
                    map.insert_typed(&k, e);
                }
                Slot::Entry(None) => {
                    map.remove(&k);
                }
                Slot::Edits(edits) => {
                    for (m, version) in edits {
                        map.edit(&k, &m, version);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Shape::edit`] tells what [`edit_typed`] leaves, for every sequence of up to three
    /// list changes and expiries over no entry, lists of 0-3 elements and a string, with and
    /// without an expiry; and tells nothing of a change it does not model.
    #[test]
    fn a_shape_follows_the_entry_its_changes_make() {
        let key = Bytes::from_static(b"k");
        let push = |create, n| Mutation::ListPush {
            key: key.clone(),
            create,
            front: n % 2 == 0,
            elements: vec![Bytes::from_static(b"e"); n],
        };
        let mut changes = Vec::new();
        for n in 0..3 {
            changes.extend([push(false, n), push(true, n)]);
        }
        for count in 0..4 {
            for front in [false, true] {
                changes.push(Mutation::ListPop {
                    key: key.clone(),
                    front,
                    count,
                });
            }
        }
        for expires_at_ms in [None, Some(7)] {
            changes.push(Mutation::Expire {
                key: key.clone(),
                expires_at_ms,
            });
        }
        let string = |expires_at_ms| match change(
            &Mutation::Set {
                key: key.clone(),
                value: Bytes::from_static(b"v"),
                expires_at_ms,
            },
            1,
        ) {
            Change::Key(_, e) => e.map(Typed::from),
            _ => unreachable!(),
        };
        let mut bases = vec![None, string(None), string(Some(9))];
        for n in 1..4 {
            for expires_at_ms in [None, Some(9)] {
                let mut e = edit_typed(None, &push(true, n), 1);
                e.as_mut().expect("a list").expires_at_ms = expires_at_ms;
                bases.push(e);
            }
        }
        let shape = |e: &Option<Typed>| e.as_ref().map(Typed::shape);
        let mut checked = 0;
        for base in &bases {
            for a in &changes {
                for b in &changes {
                    for c in &changes {
                        let (mut entry, mut told) = (base.clone(), shape(base));
                        for m in [a, b, c] {
                            entry = edit_typed(entry, m, 2);
                            told = Shape::edit(told, m, 2).expect("a list change or an expiry");
                            assert_eq!(told, shape(&entry), "{base:?} then {a:?}, {b:?}, {c:?}");
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, bases.len() * changes.len().pow(3));
        let set = Mutation::ListSet {
            key: key.clone(),
            index: 0,
            element: Bytes::from_static(b"s"),
        };
        assert_eq!(Shape::edit(shape(&bases[3]), &set, 2), None);
    }

    #[test]
    fn sealed_cursors_are_a_permutation_that_keeps_zero_and_hides_positions() {
        let seal = CursorSeal(std::hash::RandomState::new());
        assert_eq!((seal.seal(0), seal.open(0)), (0, 0));
        // The number whose image would be 0 takes 0's old image.
        let z = seal.backward(0);
        assert_eq!(seal.seal(z), seal.forward(0));
        assert_eq!(seal.open(seal.forward(0)), z);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut moved = 0;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = seal.seal(x);
            assert_eq!(seal.open(c), x);
            assert_eq!(seal.seal(seal.open(x)), x);
            assert_ne!(c, 0, "only 0 seals to 0");
            moved += usize::from(c != x);
        }
        assert!(moved > 99_990, "a cursor is not the position itself");
        // Another key, another permutation.
        let other = CursorSeal(std::hash::RandomState::new());
        assert_ne!(other.seal(12345), seal.seal(12345));
    }

    #[test]
    fn a_scan_through_sealed_cursors_returns_every_key_once() {
        let mut image = Image::default();
        for i in 0..5000u32 {
            let e = Entry {
                value: Bytes::from(i.to_string()),
                version: 1,
                expires_at_ms: None,
            };
            image.map.insert(format!("k{i}").as_bytes(), &e);
        }
        let ks = Keyspace::new(image);
        let view = ReadView::new(&ks, 1, 0);
        let (mut seen, mut cursor, mut steps) = (std::collections::HashSet::new(), 0, 0);
        loop {
            let (keys, next) = view.scan_keys(cursor, 100);
            for k in keys {
                assert!(seen.insert(k), "a key came twice");
            }
            steps += 1;
            if next == 0 {
                break;
            }
            // The raw position is never what the client sees.
            assert_ne!(ks.seal.open(next), next);
            cursor = next;
        }
        assert_eq!(seen.len(), 5000);
        assert!(steps > 10, "{steps} steps of about 100 keys");
    }
}
