//! A stream: entries by ID, each a list of field-value pairs, and the stream's metadata
//! (the last ID given out, how many entries were ever added, the greatest ID deleted). A
//! stream stays when its last entry is deleted, as in Redis.

use std::collections::BTreeMap;
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
    }
}
