//! A stream: entries by ID, each a list of field-value pairs, and the stream's metadata
//! (the last ID given out, how many entries were ever added, the greatest ID deleted). A
//! stream stays when its last entry is deleted, as in Redis.

use std::fmt;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::Bytes;

/// A stream entry's ID: milliseconds, then a sequence number within them.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    /// The ID right after this one, if any.
    pub fn next(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }

    /// The ID right before this one, if any.
    pub fn prev(self) -> Option<StreamId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self
                .ms
                .checked_sub(1)
                .map(|ms| StreamId { ms, seq: u64::MAX }),
        }
    }

    /// `ms-seq`, as [`fmt::Display`] writes it, in one allocation and without core::fmt (a
    /// few hundred instructions less an XADD).
    pub fn to_bytes(self) -> Bytes {
        let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (ms, seq) = (
            ms.format(self.ms).as_bytes(),
            seq.format(self.seq).as_bytes(),
        );
        let mut text = Vec::with_capacity(ms.len() + 1 + seq.len());
        text.extend_from_slice(ms);
        text.push(b'-');
        text.extend_from_slice(seq);
        Bytes::from(text)
    }

    /// Redis's `ms-seq`, or just `ms` (sequence `default_seq`); `None` if it is neither.
    pub fn parse(s: &[u8], default_seq: u64) -> Option<StreamId> {
        let s = std::str::from_utf8(s).ok()?;
        let number = |t: &str| {
            (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten()
        };
        match s.split_once('-') {
            Some((ms, seq)) => Some(StreamId::new(number(ms)?, number(seq)?)),
            None => Some(StreamId::new(number(s)?, default_seq)),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A stream's value. Its entries are kept in nodes of up to [`NODE_ENTRIES_MAX`] entries (or
/// about [`NODE_BYTES_MAX`] bytes), as Redis keeps listpacks in a radix tree: one buffer per
/// node, each ID a delta from the node's first, field names left out when they repeat those of
/// the node's first entry. A node is shared (`Arc`) between copies of the stream (the
/// sequencer's and the visible state's), so a copy costs a pointer per node and a write copies
/// only the node it changes.
#[derive(Clone, Debug, Default)]
pub struct StreamValue {
    /// By the ID the node was started with (its base: no entry of it is below). A persistent
    /// map: a copy of the stream shares it whole, and a write copies only its path.
    nodes: imbl::OrdMap<StreamId, Arc<Node>>,
    len: usize,
    /// The greatest ID ever added (or set by XSETID): the next must be greater.
    pub last_id: StreamId,
    /// Entries ever added (XADD), deleted or not.
    pub entries_added: u64,
    /// The greatest ID XDEL deleted (a trim leaves it).
    pub max_deleted: StreamId,
    /// Consumer groups by name. Persistent maps, as the nodes: a copy of the stream shares its
    /// groups, and a write copies only the paths it changes (a group's pending list can hold
    /// millions of entries).
    pub groups: imbl::OrdMap<Bytes, StreamGroup>,
}

/// The most entries a node holds (Redis's `stream-node-max-entries`).
pub const NODE_ENTRIES_MAX: usize = 100;
/// A node takes no entry once its buffer holds this many bytes (`stream-node-max-bytes`).
pub const NODE_BYTES_MAX: usize = 4096;

/// A node's entry flag: its field names are the node's first entry's, left out.
const SAME_FIELDS: u8 = 1;

/// Entries in one buffer: the first entry's field names (a count, then each as a length and
/// bytes), then each entry: a flag byte, its ms and seq less the node's base's ms (varints;
/// seq whole), then its fields and values (a count unless [`SAME_FIELDS`], each as a length
/// and bytes; with [`SAME_FIELDS`] only the values).
#[derive(Debug, Default)]
struct Node {
    buf: Vec<u8>,
    count: usize,
    /// Where the entries start (after the field names).
    entries_at: usize,
}

/// A copy keeps the buffer's spare room: a node is copied (`Arc::make_mut`) to take the next
/// entry, so a copy at the exact length would be grown again at once, a second allocation and
/// copy of up to 4 KiB per XADD. A full node has no spare room ([`StreamValue::add`] trims it).
impl Clone for Node {
    fn clone(&self) -> Node {
        let mut buf = Vec::with_capacity(self.buf.capacity());
        buf.extend_from_slice(&self.buf);
        Node {
            buf,
            count: self.count,
            entries_at: self.entries_at,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint(buf: &[u8], at: &mut usize) -> u64 {
    let (mut n, mut shift) = (0u64, 0);
    loop {
        let b = buf[*at];
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return n;
        }
        shift += 7;
    }
}

/// One entry of a node: its ID and where its encoding lies in the node's buffer.
#[derive(Clone, Copy)]
struct At {
    id: StreamId,
    start: usize,
    end: usize,
}

impl Node {
    /// A node whose first entry will be one with these fields.
    fn new(fields: &[Bytes]) -> Node {
        let mut buf = Vec::new();
        put_varint(&mut buf, (fields.len() / 2) as u64);
        for name in fields.iter().step_by(2) {
            put_varint(&mut buf, name.len() as u64);
            buf.extend_from_slice(name);
        }
        let entries_at = buf.len();
        Node {
            buf,
            count: 0,
            entries_at,
        }
    }

    /// The field names of the node's first entry.
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        let n = varint(&self.buf, &mut at);
        (0..n).map(move |_| {
            let len = varint(&self.buf, &mut at) as usize;
            at += len;
            &self.buf[at - len..at]
        })
    }

    fn same_names(&self, fields: &[Bytes]) -> bool {
        let mut names = self.names();
        fields
            .iter()
            .step_by(2)
            .all(|f| names.next() == Some(&f[..]))
            && names.next().is_none()
    }

    fn push(&mut self, base: StreamId, id: StreamId, fields: &[Bytes]) {
        let same = self.same_names(fields);
        self.buf.push(if same { SAME_FIELDS } else { 0 });
        put_varint(&mut self.buf, id.ms - base.ms);
        put_varint(&mut self.buf, id.seq);
        if !same {
            put_varint(&mut self.buf, fields.len() as u64);
        }
        for (i, f) in fields.iter().enumerate() {
            if !same || i % 2 == 1 {
                put_varint(&mut self.buf, f.len() as u64);
                self.buf.extend_from_slice(f);
            }
        }
        self.count += 1;
    }

    /// Its entries, in ID order, without decoding their fields.
    fn entries(&self, base: StreamId) -> impl Iterator<Item = At> + '_ {
        let names = {
            let mut at = 0;
            varint(&self.buf, &mut at) as usize
        };
        let mut at = self.entries_at;
        std::iter::from_fn(move || {
            if at >= self.buf.len() {
                return None;
            }
            let start = at;
            let same = self.buf[at] & SAME_FIELDS != 0;
            at += 1;
            let ms = base.ms + varint(&self.buf, &mut at);
            let seq = varint(&self.buf, &mut at);
            let n = if same {
                names
            } else {
                varint(&self.buf, &mut at) as usize
            };
            for _ in 0..n {
                at += varint(&self.buf, &mut at) as usize;
            }
            Some(At {
                id: StreamId { ms, seq },
                start,
                end: at,
            })
        })
    }

    /// An entry's fields and values, copied into one allocation of their own.
    fn fields(&self, e: At) -> Vec<Bytes> {
        let b = &self.buf[e.start..e.end];
        let mut at = 0;
        let same = b[0] & SAME_FIELDS != 0;
        at += 1;
        varint(b, &mut at);
        varint(b, &mut at);
        let mut spans = Vec::new();
        let mut names = self.names();
        let n = if same {
            usize::MAX
        } else {
            varint(b, &mut at) as usize
        };
        let mut all = Vec::with_capacity(b.len());
        let mut take = |s: &[u8], spans: &mut Vec<(usize, usize)>| {
            spans.push((all.len(), all.len() + s.len()));
            all.extend_from_slice(s);
        };
        let mut i = 0;
        while at < b.len() && i < n {
            if same {
                take(names.next().unwrap_or_default(), &mut spans);
            }
            let len = varint(b, &mut at) as usize;
            take(&b[at..at + len], &mut spans);
            at += len;
            i += 1;
        }
        let all = Bytes::from(all);
        spans.into_iter().map(|(a, z)| all.slice(a..z)).collect()
    }

    /// The node without the entries `gone` names.
    fn without(&self, base: StreamId, gone: impl Fn(StreamId) -> bool) -> Node {
        let mut n = Node {
            buf: self.buf[..self.entries_at].to_vec(),
            count: 0,
            entries_at: self.entries_at,
        };
        for e in self.entries(base).filter(|e| !gone(e.id)) {
            n.buf.extend_from_slice(&self.buf[e.start..e.end]);
            n.count += 1;
        }
        n.buf.shrink_to_fit();
        n
    }
}

impl PartialEq for StreamValue {
    /// The same entries, metadata and groups, however they lie in nodes.
    fn eq(&self, other: &StreamValue) -> bool {
        let all = || (Bound::Unbounded, Bound::Unbounded);
        self.len == other.len
            && self.last_id == other.last_id
            && self.entries_added == other.entries_added
            && self.max_deleted == other.max_deleted
            && self.groups == other.groups
            && self
                .range(all().0, all().1, false)
                .eq(other.range(all().0, all().1, false))
    }
}

/// A consumer group: where it has read to, what it delivered and no consumer acknowledged
/// yet (its pending entries), and its consumers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamGroup {
    /// The greatest ID delivered to the group: `>` reads after it.
    pub last_id: StreamId,
    /// How many entries the group read, counted from the stream's first entry ever; `None`
    /// when not known (Redis's entries-read).
    pub entries_read: Option<u64>,
    /// Delivered, not acknowledged: by ID, whom to and when.
    pub pending: imbl::OrdMap<StreamId, Pending>,
    pub consumers: imbl::OrdMap<Bytes, Consumer>,
}

/// A pending entry: delivered to `consumer` at `delivered_ms` (Unix ms), `deliveries` times.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub consumer: Bytes,
    pub delivered_ms: u64,
    pub deliveries: u64,
}

/// A consumer of a group: when it last asked (`seen_ms`), when it last was given entries
/// (`active_ms`, `None`: never), and the IDs pending with it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Consumer {
    pub seen_ms: u64,
    pub active_ms: Option<u64>,
    pub pending: imbl::OrdSet<StreamId>,
}

impl StreamGroup {
    pub fn new(last_id: StreamId, entries_read: Option<u64>) -> StreamGroup {
        StreamGroup {
            last_id,
            entries_read,
            ..StreamGroup::default()
        }
    }

    /// Creates or updates consumer `name`'s times. Names are copied: they may be slices of a
    /// request or a log record.
    pub fn set_consumer(&mut self, name: &[u8], seen_ms: u64, active_ms: Option<u64>) {
        match self.consumers.get_mut(name) {
            Some(c) => {
                c.seen_ms = seen_ms;
                c.active_ms = active_ms;
            }
            None => {
                let c = Consumer {
                    seen_ms,
                    active_ms,
                    pending: imbl::OrdSet::new(),
                };
                self.consumers.insert(Bytes::copy_from_slice(name), c);
            }
        }
    }

    /// Removes consumer `name` and its pending entries; returns how many it had.
    pub fn delete_consumer(&mut self, name: &[u8]) -> usize {
        let Some(c) = self.consumers.remove(name) else {
            return 0;
        };
        for id in &c.pending {
            self.pending.remove(id);
        }
        c.pending.len()
    }

    /// Makes entry `id` pending with consumer `name` (created if absent), delivered at
    /// `delivered_ms`, `deliveries` times; from whichever consumer had it before.
    pub fn set_pending(&mut self, id: StreamId, name: &[u8], delivered_ms: u64, deliveries: u64) {
        if !self.consumers.contains_key(name) {
            self.set_consumer(name, delivered_ms, Some(delivered_ms));
        }
        let owner = (self.consumers.get_key_value(name))
            .map(|(k, _)| k.clone())
            .expect("created above");
        if let Some(old) = self.pending.get(&id).filter(|p| p.consumer != owner) {
            if let Some(prev) = self.consumers.get_mut(&old.consumer) {
                prev.pending.remove(&id);
            }
        }
        if let Some(c) = self.consumers.get_mut(name) {
            c.pending.insert(id);
        }
        self.pending.insert(
            id,
            Pending {
                consumer: owner,
                delivered_ms,
                deliveries,
            },
        );
    }

    /// Acknowledges entry `id`; whether it was pending.
    pub fn ack(&mut self, id: StreamId) -> bool {
        let Some(p) = self.pending.remove(&id) else {
            return false;
        };
        if let Some(c) = self.consumers.get_mut(&p.consumer) {
            c.pending.remove(&id);
        }
        true
    }

    fn memory_bytes(&self) -> usize {
        96 + self.pending.len() * 64
            + (self.consumers.iter())
                .map(|(n, c)| 96 + n.len() + c.pending.len() * 24)
                .sum::<usize>()
    }
}

impl StreamValue {
    pub fn new() -> StreamValue {
        StreamValue::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first(&self) -> Option<(StreamId, Vec<Bytes>)> {
        self.range(Bound::Unbounded, Bound::Unbounded, false).next()
    }

    pub fn last(&self) -> Option<(StreamId, Vec<Bytes>)> {
        self.range(Bound::Unbounded, Bound::Unbounded, true).next()
    }

    /// The first entry's ID, without its fields.
    pub fn first_id(&self) -> Option<StreamId> {
        let (base, node) = self.nodes.get_min()?;
        node.entries(*base).next().map(|e| e.id)
    }

    /// The last entry's ID, without its fields.
    pub fn last_entry_id(&self) -> Option<StreamId> {
        let (base, node) = self.nodes.get_max()?;
        node.entries(*base).last().map(|e| e.id)
    }

    /// The node that holds `id` if any entry does: the last that starts at or below it.
    fn node_of(&self, id: StreamId) -> Option<(&StreamId, &Arc<Node>)> {
        self.nodes.get_prev(&id)
    }

    pub fn contains(&self, id: StreamId) -> bool {
        self.node_of(id)
            .is_some_and(|(base, n)| n.entries(*base).any(|e| e.id == id))
    }

    pub fn get(&self, id: StreamId) -> Option<Vec<Bytes>> {
        let (base, n) = self.node_of(id)?;
        let e = n.entries(*base).find(|e| e.id == id)?;
        Some(n.fields(e))
    }

    /// Adds an entry; `id` is above every ID before (the caller checked). The fields are
    /// copied into the stream's own buffers: they may be slices of a request or a log record,
    /// which the stream must not keep alive.
    pub fn add(&mut self, id: StreamId, fields: &[Bytes]) {
        let last = (self.nodes.get_max()).map(|(base, n)| {
            (
                *base,
                n.count < NODE_ENTRIES_MAX && n.buf.len() < NODE_BYTES_MAX,
            )
        });
        match last {
            Some((base, true)) => {
                let node = self.nodes.get_mut(&base).expect("the last node");
                Arc::make_mut(node).push(base, id, fields);
            }
            _ => {
                // The node before is full: it keeps no spare capacity.
                if let Some(node) = last.and_then(|(base, _)| self.nodes.get_mut(&base)) {
                    if node.buf.capacity() > node.buf.len() {
                        Arc::make_mut(node).buf.shrink_to_fit();
                    }
                }
                let mut node = Node::new(fields);
                node.push(id, id, fields);
                self.nodes.insert(id, Arc::new(node));
            }
        }
        self.len += 1;
        self.last_id = self.last_id.max(id);
        self.entries_added += 1;
    }

    /// Deletes the entries with these IDs; returns how many there were.
    pub fn delete(&mut self, ids: &[StreamId]) -> usize {
        let mut n = 0;
        for id in ids {
            let Some((base, node)) = self.node_of(*id) else {
                continue;
            };
            if !node.entries(*base).any(|e| e.id == *id) {
                continue;
            }
            let base = *base;
            let kept = node.without(base, |e| e == *id);
            if kept.count == 0 {
                self.nodes.remove(&base);
            } else {
                self.nodes.insert(base, Arc::new(kept));
            }
            self.len -= 1;
            self.max_deleted = self.max_deleted.max(*id);
            n += 1;
        }
        n
    }

    /// Deletes every entry below `keep_from`; returns how many. As in Redis, a trim leaves
    /// the greatest deleted ID (XDEL's) as it is.
    pub fn trim_below(&mut self, keep_from: StreamId) -> usize {
        let before = self.len;
        // Whole nodes below; the node that holds `keep_from` keeps its base.
        let below: Vec<StreamId> = self.nodes.range(..keep_from).map(|(k, _)| *k).collect();
        if let Some((straddling, whole)) = below.split_last() {
            for base in whole {
                self.len -= self.nodes.remove(base).map_or(0, |n| n.count);
            }
            if let Some(node) = self.nodes.remove(straddling) {
                let rest = node.without(*straddling, |id| id < keep_from);
                self.len -= node.count - rest.count;
                if rest.count > 0 {
                    self.nodes.insert(*straddling, Arc::new(rest));
                }
            }
        }
        before - self.len
    }

    /// How many entries lie below `id`.
    pub fn count_below(&self, id: StreamId) -> usize {
        let mut n = 0;
        let mut nodes = self.nodes.range(..=id).peekable();
        while let Some((base, node)) = nodes.next() {
            // A node followed by another that starts at or below `id` is below it whole.
            n += match nodes.peek() {
                Some(_) => node.count,
                None => node.entries(*base).take_while(|e| e.id < id).count(),
            };
        }
        n
    }

    /// The entries between two bounds, in order (or in reverse), each with its fields.
    pub fn range(
        &self,
        start: Bound<StreamId>,
        end: Bound<StreamId>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = (StreamId, Vec<Bytes>)> + '_> {
        let point = |b: Bound<StreamId>| match b {
            Bound::Included(x) => Some((x, false)),
            Bound::Excluded(x) => Some((x, true)),
            Bound::Unbounded => None,
        };
        if let (Some((a, ax)), Some((b, bx))) = (point(start), point(end)) {
            if a > b || (a == b && (ax || bx)) {
                return Box::new(std::iter::empty());
            }
        }
        let inside = move |id: &StreamId| (start, end).contains(id);
        // The nodes that may hold entries in range: from the one holding the start.
        let from = match start {
            Bound::Included(x) | Bound::Excluded(x) => {
                self.node_of(x).map_or(StreamId::MIN, |(base, _)| *base)
            }
            Bound::Unbounded => StreamId::MIN,
        };
        let upto = match end {
            Bound::Included(x) | Bound::Excluded(x) => Bound::Included(x),
            Bound::Unbounded => Bound::Unbounded,
        };
        let nodes = self.nodes.range((Bound::Included(from), upto));
        if rev {
            Box::new(nodes.rev().flat_map(move |(base, n)| {
                let mut all: Vec<At> = n.entries(*base).filter(|e| inside(&e.id)).collect();
                all.reverse();
                all.into_iter().map(move |e| (e.id, n.fields(e)))
            }))
        } else {
            Box::new(nodes.flat_map(move |(base, n)| {
                (n.entries(*base))
                    .filter(move |e| inside(&e.id))
                    .map(move |e| (e.id, n.fields(e)))
            }))
        }
    }

    /// The ID of the `n`th entry from the start (0-based), if there are that many.
    pub fn nth_id(&self, mut n: usize) -> Option<StreamId> {
        for (base, node) in self.nodes.iter() {
            if n < node.count {
                return node.entries(*base).nth(n).map(|e| e.id);
            }
            n -= node.count;
        }
        None
    }

    pub fn memory_bytes(&self) -> usize {
        // A B-tree slot and the Arc's header per node, and the buffers.
        (self.nodes.values())
            .map(|n| 64 + n.buf.capacity())
            .sum::<usize>()
            + 64
            + (self.groups.iter())
                .map(|(n, g)| n.len() + g.memory_bytes())
                .sum::<usize>()
    }

    /// Creates consumer group `name`, or moves it to `last_id` and `entries_read`. Names are
    /// copied: they may be slices of a request or a log record.
    pub fn set_group(&mut self, name: &[u8], last_id: StreamId, entries_read: Option<u64>) {
        match self.groups.get_mut(name) {
            Some(g) => {
                g.last_id = last_id;
                g.entries_read = entries_read;
            }
            None => {
                let g = StreamGroup::new(last_id, entries_read);
                self.groups.insert(Bytes::copy_from_slice(name), g);
            }
        }
    }

    /// Whether some entry at or after `start` was deleted by XDEL (Redis's tombstones): a
    /// group's read count cannot then be known by counting.
    pub fn tombstones_from(&self, start: StreamId) -> bool {
        let Some((first, _)) = self.first() else {
            return false;
        };
        self.max_deleted != StreamId::MIN && first <= self.max_deleted && start <= self.max_deleted
    }

    /// How many entries lie from the first ever added up to `id`, if that can be known:
    /// Redis's estimate of a group's entries-read at `id`.
    pub fn entries_read_at(&self, id: StreamId) -> Option<u64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        if self.is_empty() && id <= self.last_id {
            return Some(self.entries_added);
        }
        match id.cmp(&self.last_id) {
            std::cmp::Ordering::Equal => return Some(self.entries_added),
            std::cmp::Ordering::Greater => return None,
            std::cmp::Ordering::Less => {}
        }
        let first = self.first().map_or(StreamId::MIN, |(f, _)| f);
        if self.max_deleted == StreamId::MIN || self.max_deleted < first {
            let before = self.entries_added - self.len() as u64;
            match id.cmp(&first) {
                std::cmp::Ordering::Less => return Some(before),
                std::cmp::Ordering::Equal => return Some(before + 1),
                std::cmp::Ordering::Greater => {}
            }
        }
        None
    }

    /// The entries-read count after a group at `last_id` and `entries_read` reads `id`, the
    /// next entry after `last_id`, as Redis keeps it.
    pub fn read_one(&self, entries_read: Option<u64>, id: StreamId) -> Option<u64> {
        match entries_read {
            Some(n) if !self.tombstones_from(id) => Some(n + 1),
            _ if self.entries_added > 0 => self.entries_read_at(id),
            other => other,
        }
    }

    /// A group's lag: the entries added that it has not read, if that can be known.
    pub fn lag(&self, g: &StreamGroup) -> Option<u64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        let read = match g.entries_read {
            Some(n) if !self.tombstones_from(g.last_id) => Some(n),
            _ => self.entries_read_at(g.last_id),
        };
        read.map(|n| self.entries_added.saturating_sub(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A small deterministic generator (xorshift): the test needs no crate.
    struct Gen(u64);
    impl Gen {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Adds, deletes and trims at random across many nodes, against a plain ordered map:
    /// every read (range both ways, get, nth, count below, first and last) agrees.
    #[test]
    fn nodes_read_as_a_plain_ordered_map_through_adds_deletes_and_trims() {
        for seed in 1..40u64 {
            let mut g = Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut x = StreamValue::new();
            let mut model: BTreeMap<StreamId, Vec<Bytes>> = BTreeMap::new();
            let mut next = StreamId::new(1, 0);
            for step in 0..1500 {
                match g.below(10) {
                    0..=6 => {
                        // Mostly the same field names (left out of the node), sometimes others,
                        // sometimes long values (the node's byte bound).
                        let n = 1 + g.below(3) as usize;
                        let mut fields = Vec::new();
                        for i in 0..n {
                            let name = if g.below(5) == 0 {
                                format!("x{i}")
                            } else {
                                format!("f{i}")
                            };
                            let len = if g.below(20) == 0 {
                                900
                            } else {
                                g.below(12) as usize
                            };
                            fields.push(b(&name));
                            fields.push(Bytes::from(vec![b'a' + (step % 26) as u8; len]));
                        }
                        x.add(next, &fields);
                        model.insert(next, fields);
                        next = if g.below(3) == 0 {
                            StreamId::new(next.ms + 1 + g.below(1 << 20), g.below(3))
                        } else {
                            next.next().unwrap()
                        };
                    }
                    7 | 8 if !model.is_empty() => {
                        let at = g.below(model.len() as u64) as usize;
                        let id = *model.keys().nth(at).unwrap();
                        let other = StreamId::new(id.ms, id.seq + 1000);
                        assert_eq!(
                            x.delete(&[id, other]),
                            1 + model.contains_key(&other) as usize
                        );
                        model.remove(&id);
                        model.remove(&other);
                    }
                    _ if !model.is_empty() => {
                        let at = g.below(model.len() as u64 / 4 + 1) as usize;
                        let keep = *model.keys().nth(at).unwrap();
                        let gone = model.range(..keep).count();
                        assert_eq!(x.trim_below(keep), gone);
                        model = model.split_off(&keep);
                    }
                    _ => {}
                }
                assert_eq!(x.len(), model.len(), "seed {seed} step {step}");
            }
            let all: Vec<_> = x.range(Bound::Unbounded, Bound::Unbounded, false).collect();
            let want: Vec<_> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
            assert_eq!(all, want, "seed {seed}");
            let mut back: Vec<_> = x.range(Bound::Unbounded, Bound::Unbounded, true).collect();
            back.reverse();
            assert_eq!(back, want, "seed {seed}");
            assert_eq!(x.first_id(), model.keys().next().copied());
            assert_eq!(x.last_entry_id(), model.keys().next_back().copied());
            let ids: Vec<StreamId> = model.keys().copied().collect();
            for _ in 0..50 {
                let (i, j) = (
                    g.below(ids.len() as u64 + 1) as usize,
                    g.below(ids.len() as u64 + 1) as usize,
                );
                let probe = |i: usize| ids.get(i).copied().unwrap_or(StreamId::MAX);
                let (a, z) = (probe(i.min(j)), probe(i.max(j)));
                for (s, e) in [
                    (Bound::Included(a), Bound::Included(z)),
                    (Bound::Excluded(a), Bound::Included(z)),
                    (Bound::Included(a), Bound::Excluded(z)),
                    (
                        Bound::Excluded(StreamId::new(a.ms, a.seq.saturating_sub(1))),
                        Bound::Unbounded,
                    ),
                ] {
                    let got: Vec<StreamId> = x.range(s, e, false).map(|(id, _)| id).collect();
                    let want: Vec<StreamId> = ids
                        .iter()
                        .copied()
                        .filter(|id| (s, e).contains(id))
                        .collect();
                    assert_eq!(got, want, "seed {seed} {s:?} {e:?}");
                }
                assert_eq!(x.count_below(a), ids.iter().filter(|id| **id < a).count());
                assert_eq!(x.nth_id(i), ids.get(i).copied());
                assert_eq!(x.get(a), model.get(&a).cloned());
                assert_eq!(x.contains(a), model.contains_key(&a));
            }
            // A copy shares its nodes; writing one leaves the other as it was.
            let copy = x.clone();
            x.add(next, &[b("f0"), b("late")]);
            assert_eq!(copy.len(), model.len());
            assert_eq!(
                copy.range(Bound::Unbounded, Bound::Unbounded, false)
                    .count(),
                model.len()
            );
        }
    }
}
