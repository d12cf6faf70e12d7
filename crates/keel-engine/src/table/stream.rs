//! A stream: entries by ID, each a list of field-value pairs, and the stream's metadata
//! (the last ID given out, how many entries were ever added, the greatest ID deleted). A
//! stream stays when its last entry is deleted, as in Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;

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

/// A stream's value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamValue {
    /// Each entry's fields and values, interleaved.
    entries: BTreeMap<StreamId, Vec<Bytes>>,
    /// The greatest ID ever added (or set by XSETID): the next must be greater.
    pub last_id: StreamId,
    /// Entries ever added (XADD), deleted or not.
    pub entries_added: u64,
    /// The greatest ID XDEL deleted (a trim leaves it).
    pub max_deleted: StreamId,
    /// Consumer groups by name.
    pub groups: BTreeMap<Bytes, StreamGroup>,
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
    pub pending: BTreeMap<StreamId, Pending>,
    pub consumers: BTreeMap<Bytes, Consumer>,
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
    pub pending: BTreeSet<StreamId>,
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
                    pending: BTreeSet::new(),
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
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn first(&self) -> Option<(StreamId, &[Bytes])> {
        self.entries.iter().next().map(|(id, f)| (*id, &f[..]))
    }

    pub fn last(&self) -> Option<(StreamId, &[Bytes])> {
        self.entries.iter().next_back().map(|(id, f)| (*id, &f[..]))
    }

    pub fn get(&self, id: StreamId) -> Option<&[Bytes]> {
        self.entries.get(&id).map(|f| &f[..])
    }

    /// Adds an entry; `id` is above every ID before (the caller checked). The fields are
    /// copied into one allocation of their own: they may be slices of a request or a log
    /// record, which the stream must not keep alive.
    pub fn add(&mut self, id: StreamId, fields: Vec<Bytes>) {
        let all = Bytes::from(fields.concat());
        let mut at = 0;
        let fields = fields
            .iter()
            .map(|f| {
                at += f.len();
                all.slice(at - f.len()..at)
            })
            .collect();
        self.entries.insert(id, fields);
        self.last_id = self.last_id.max(id);
        self.entries_added += 1;
    }

    /// Deletes the entries with these IDs; returns how many there were.
    pub fn delete(&mut self, ids: &[StreamId]) -> usize {
        let mut n = 0;
        for id in ids {
            if self.entries.remove(id).is_some() {
                self.max_deleted = self.max_deleted.max(*id);
                n += 1;
            }
        }
        n
    }

    /// Deletes every entry below `keep_from`; returns how many. As in Redis, a trim leaves
    /// the greatest deleted ID (XDEL's) as it is.
    pub fn trim_below(&mut self, keep_from: StreamId) -> usize {
        let kept = self.entries.split_off(&keep_from);
        std::mem::replace(&mut self.entries, kept).len()
    }

    /// The entries between two bounds, in order (or in reverse).
    pub fn range(
        &self,
        start: Bound<StreamId>,
        end: Bound<StreamId>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = (StreamId, &[Bytes])> + '_> {
        // BTreeMap::range panics on a range that ends before it starts.
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
        let it = self
            .entries
            .range((start, end))
            .map(|(id, f)| (*id, &f[..]));
        if rev {
            Box::new(it.rev())
        } else {
            Box::new(it)
        }
    }

    /// The ID of the `n`th entry from the start (0-based), if there are that many.
    pub fn nth_id(&self, n: usize) -> Option<StreamId> {
        self.entries.keys().nth(n).copied()
    }

    pub fn memory_bytes(&self) -> usize {
        // A B-tree node's share per entry, the ID, the Vec and the fields' bytes.
        self.entries
            .values()
            .map(|f| 48 + f.capacity() * 32 + f.iter().map(Bytes::len).sum::<usize>())
            .sum::<usize>()
            + 48
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
