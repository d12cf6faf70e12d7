//! The engine's log record: the payload of one WAL record, holding the absolute effects of one
//! transaction. docs/FORMAT.md holds the same table.
//!
//! ```text
//! offset size field
//!      0    1 version        1
//!      1    1 flags          bit 0 = REQUEST: a request section follows; other bits zero
//!      2    8 at_ms          Unix ms when the transaction was decided, u64 LE; never less
//!                            than the previous record's (point-in-time restore searches it)
//!             request section (only with REQUEST):
//!             2 id_len       u16 LE, then the client's request id (at most 256 bytes)
//!             8 at_ms        Unix ms when the request was decided
//!               outcome      1 = Committed: 1 wrote (0: nothing written; 1: the writes
//!                                  are in this very record), 4 n, n results
//!                                  (tag 1/2 Put false/true, 3/4 Existed false/true,
//!                                   5 Int + i64 LE, 6 DeletedAll,
//!                                   7 Value: 1 present, then u32 len + bytes if 1,
//!                                   8 Failed + 1 reason: 1 not an integer, 2 overflow,
//!                                     3 not a float, 4 not finite, 5 no such key,
//!                                     6 value too large, 7 wrong type,
//!                                     8 index out of range, 9 score NaN,
//!                                     10-14 stream ID refused (XADD too small, XADD 0-0,
//!                                     XSETID too small, entries-added, max-deleted),
//!                                     15 no such consumer group, 16 group exists,
//!                                   9 Values: u32 n, then n values as in tag 7)
//!                            2 = GuardFailed: 4 index
//!                            3 = Fenced
//!             4 count        number of mutations, u32 LE
//!               mutations, each:
//!             1 tag          1 = Set, 2 = Delete, 3 = DeleteAll, 4 = System,
//!                            5 = HashSet, 6 = HashDel, 7 = Expire, 8 = SetAdd, 9 = SetRem,
//!                            10 = ListPush, 11 = ListPop, 12 = ListSet, 13 = ListTrim,
//!                            14 = ListRem, 15 = ListInsert, 16 = ZAdd, 17 = ZRem,
//!                            18 = StringWrite, 19 = StreamAdd, 20 = StreamDel,
//!                            21 = StreamTrim, 22 = StreamMeta, 23 = StreamGroup,
//!                            24 = StreamGroupDel, 25 = StreamConsumer,
//!                            26 = StreamConsumerDel, 27 = StreamPending, 28 = StreamAck
//!   Set:      4 key_len      u32 LE, then key bytes
//!             4 value_len    u32 LE, then value bytes
//!             8 expires_at   Unix ms, u64 LE; 0 = never
//!   Delete:   4 key_len      u32 LE, then key bytes
//!   DeleteAll: nothing (removes every user key; the system namespace stays)
//!   System:   4 key_len      u32 LE, then key bytes   (an entry of the system namespace)
//!             4 value_len    u32 LE, then value bytes
//!   HashSet:  4 key_len      u32 LE, then key bytes
//!             1 create       1: replace whatever the key holds by an empty hash first;
//!                            0: set the fields in the hash the key holds
//!             4 n            u32 LE, then n pairs of (u32 len + field, u32 len + value)
//!   HashDel:  4 key_len      u32 LE, then key bytes
//!             4 n            u32 LE, then n fields (u32 len + bytes); a hash left empty is
//!                            deleted
//!   Expire:   4 key_len      u32 LE, then key bytes
//!             8 expires_at   Unix ms, u64 LE; 0 = never (the value stays as it is)
//!   SetAdd:   4 key_len      u32 LE, then key bytes
//!             1 create       1: replace whatever the key holds by an empty set first
//!             4 n            u32 LE, then n members (u32 len + bytes)
//!   SetRem:   4 key_len      u32 LE, then key bytes
//!             4 n            u32 LE, then n members; a set left empty is deleted
//!   ListPush: 4 key_len      u32 LE, then key bytes
//!             1 create       1: replace whatever the key holds by an empty list first
//!             1 front        1: push each at the head, in order; 0: at the tail
//!             4 n            u32 LE, then n elements (u32 len + bytes)
//!   ListPop:  4 key_len      u32 LE, then key bytes
//!             1 front        1: from the head; 0: from the tail
//!             4 n            u32 LE: how many to remove; a list left empty is deleted
//!   ListSet:  4 key_len, key; 8 index u64 LE (from the head); 4 len, element
//!   ListTrim: 4 key_len, key; 8 start u64 LE; 8 end u64 LE: keeps start..end (half-open)
//!   ListRem:  4 key_len, key; 8 count i64 LE (Redis's LREM count); 4 len, element
//!   ListInsert: 4 key_len, key; 1 after (1) or before (0); 4 len, pivot; 4 len, element
//!   ZAdd:     4 key_len      u32 LE, then key bytes
//!             1 create       1: replace whatever the key holds by an empty sorted set first
//!             4 n            u32 LE, then n pairs of (u32 len + member, 8 score f64 LE); the
//!                            member's score becomes that (never NaN)
//!   ZRem:     4 key_len      u32 LE, then key bytes
//!             4 n            u32 LE, then n members; a sorted set left empty is deleted
//!   StringWrite: 4 key_len, key; 1 create; 8 offset u64 LE; 4 len, bytes: writes the bytes
//!                            at offset of the key's string, zero bytes filling a gap; with
//!                            create (or a key that is absent or of another type) into an
//!                            empty string without an expiry
//!   StreamAdd: 4 key_len, key; 1 create (1: the key first becomes an empty stream, whatever it
//!                            held); 8 ms, 8 seq (u64 LE): the entry's ID, above every ID in
//!                            the stream; 4 n, then n fields and values interleaved (u32 len +
//!                            bytes). The stream's last ID becomes the ID; entries-added + 1.
//!   StreamDel: 4 key_len, key; 4 n, then n IDs (8 ms, 8 seq): deletes those entries; the
//!                            greatest deleted ID is kept. A stream left empty stays.
//!   StreamTrim: 4 key_len, key; 8 ms, 8 seq: deletes every entry below that ID.
//!   StreamMeta: 4 key_len, key; 1 create (1: an empty stream first); 8+8 last ID;
//!                            8 entries-added; 8+8 greatest deleted ID (XSETID, a copy)
//!   StreamGroup: 4 key_len, key; 4 len, group; 8+8 last ID; 8 entries-read (u64::MAX: not
//!                            known): creates the consumer group, or sets where it read to
//!   StreamGroupDel: 4 key_len, key; 4 len, group: deletes the group, its consumers and its
//!                            pending entries
//!   StreamConsumer: 4 key_len, key; 4 len, group; 4 len, consumer; 8 seen (Unix ms);
//!                            8 active (Unix ms; u64::MAX: never): creates the consumer, or
//!                            sets its times
//!   StreamConsumerDel: 4 key_len, key; 4 len, group; 4 len, consumer: deletes the consumer
//!                            and its pending entries
//!   StreamPending: 4 key_len, key; 4 len, group; 4 len, consumer; 4 n, then n of (8+8 ID,
//!                            8 delivered at (Unix ms), 8 deliveries): each entry becomes
//!                            pending with the consumer (created if absent), from whichever
//!                            consumer had it
//!   StreamAck: 4 key_len, key; 4 len, group; 4 n, then n IDs: no longer pending
//! ```
//!
//! Tags 5 to 28 are **relative**: their effect depends on the key's entry before the record
//! (the hash it holds, the value whose expiry changes), and on nothing else. Every record still
//! makes each key's new version its LSN, so the by-version rule (a record applies to a key only
//! if the key's entry is older than it) keeps replay exact. They came with typed values and
//! need no new record version: an older keel refuses them as unknown tags.
//!
//! Tag 4 came with the system namespace (snapshot format v2) and needs no new record version: an older keel meets it only in a
//! log the new code wrote, and refuses it as an unknown tag instead of misreading it.
//!
//! Records carry results, never deltas: an increment logs the value it produced, an expiry its
//! absolute time. Replaying a record twice therefore changes nothing (P7). The WAL frame already
//! checksums the bytes; decoding still checks every length before it slices.

use bytes::Bytes;

use crate::table::StreamId;
use crate::types::{Outcome, WriteError, WriteResult};

pub const RECORD_VERSION: u8 = 1;
const TAG_SET: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DELETE_ALL: u8 = 3;
const TAG_SYSTEM: u8 = 4;
const TAG_HASH_SET: u8 = 5;
const TAG_HASH_DEL: u8 = 6;
const TAG_EXPIRE: u8 = 7;
const TAG_SET_ADD: u8 = 8;
const TAG_SET_REM: u8 = 9;
const TAG_LIST_PUSH: u8 = 10;
const TAG_LIST_POP: u8 = 11;
const TAG_LIST_SET: u8 = 12;
const TAG_LIST_TRIM: u8 = 13;
const TAG_LIST_REM: u8 = 14;
const TAG_LIST_INSERT: u8 = 15;
const TAG_ZADD: u8 = 16;
const TAG_ZREM: u8 = 17;
const TAG_STRING_WRITE: u8 = 18;
const TAG_STREAM_ADD: u8 = 19;
const TAG_STREAM_DEL: u8 = 20;
const TAG_STREAM_TRIM: u8 = 21;
const TAG_STREAM_META: u8 = 22;
const TAG_STREAM_GROUP: u8 = 23;
const TAG_STREAM_GROUP_DEL: u8 = 24;
const TAG_STREAM_CONSUMER: u8 = 25;
const TAG_STREAM_CONSUMER_DEL: u8 = 26;
const TAG_STREAM_PENDING: u8 = 27;
const TAG_STREAM_ACK: u8 = 28;
/// An absent u64 (a group's unknown entries-read, a consumer never active).
const NONE_U64: u64 = u64::MAX;
const FLAG_REQUEST: u8 = 1;
/// Longest client request id.
pub const REQUEST_ID_BYTES_MAX: usize = 256;

/// A client request id and the outcome it got, logged so that a retry returns the same outcome
/// and applies nothing (P8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: Bytes,
    pub at_ms: u64,
    pub outcome: Outcome,
}

/// One absolute effect on the state.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    Set {
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: Bytes,
    },
    /// Removes every user key. The system namespace stays.
    DeleteAll,
    /// Sets an entry of the system namespace (see [`Write::System`](crate::Write::System)).
    System {
        key: Bytes,
        value: Bytes,
    },
    /// Sets fields of the hash at `key`; with `create`, the key first becomes an empty hash
    /// without an expiry, whatever it held.
    HashSet {
        key: Bytes,
        create: bool,
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Removes fields of the hash at `key`, and the key if the hash is left empty.
    HashDel {
        key: Bytes,
        fields: Vec<Bytes>,
    },
    /// Sets (`Some`) or removes the expiry of the entry at `key`; its value stays.
    Expire {
        key: Bytes,
        expires_at_ms: Option<u64>,
    },
    /// Adds members to the set at `key`; with `create`, the key first becomes an empty set
    /// without an expiry, whatever it held.
    SetAdd {
        key: Bytes,
        create: bool,
        members: Vec<Bytes>,
    },
    /// Removes members of the set at `key`, and the key if the set is left empty.
    SetRem {
        key: Bytes,
        members: Vec<Bytes>,
    },
    /// Pushes elements one by one onto the head (`front`) or tail of the list at `key`; with
    /// `create`, the key first becomes an empty list without an expiry, whatever it held.
    ListPush {
        key: Bytes,
        create: bool,
        front: bool,
        elements: Vec<Bytes>,
    },
    /// Removes `count` elements from the head (`front`) or tail of the list at `key`, and the
    /// key if the list is left empty.
    ListPop {
        key: Bytes,
        front: bool,
        count: u32,
    },
    /// Sets the element at `index` (from the head) of the list at `key`.
    ListSet {
        key: Bytes,
        index: u64,
        element: Bytes,
    },
    /// Keeps the elements `start..end` of the list at `key`, and deletes it if none are left.
    ListTrim {
        key: Bytes,
        start: u64,
        end: u64,
    },
    /// Removes elements equal to `element`: at most `count` from the head if positive, from the
    /// tail if negative, all if zero (Redis's LREM); a list left empty is deleted.
    ListRem {
        key: Bytes,
        count: i64,
        element: Bytes,
    },
    /// Puts `element` before or `after` the first element equal to `pivot`.
    ListInsert {
        key: Bytes,
        after: bool,
        pivot: Bytes,
        element: Bytes,
    },
    /// Sets the scores of members of the sorted set at `key` (never NaN); with `create`, the
    /// key first becomes an empty sorted set without an expiry, whatever it held.
    ZAdd {
        key: Bytes,
        create: bool,
        pairs: Vec<(Bytes, f64)>,
    },
    /// Removes members of the sorted set at `key`, and the key if it is left empty.
    ZRem {
        key: Bytes,
        members: Vec<Bytes>,
    },
    /// Writes `bytes` at byte `offset` of the string at `key`, zero bytes filling any gap; the
    /// string keeps its expiry. With `create`, or when the key is absent or holds another type,
    /// it writes into an empty string without an expiry.
    StringWrite {
        key: Bytes,
        create: bool,
        offset: u64,
        bytes: Bytes,
    },
    /// Adds an entry to the stream at `key` (with `create`, an empty stream first).
    StreamAdd {
        key: Bytes,
        create: bool,
        id: StreamId,
        fields: Vec<Bytes>,
    },
    /// Deletes entries of the stream at `key`; the stream stays, even empty.
    StreamDel {
        key: Bytes,
        ids: Vec<StreamId>,
    },
    /// Deletes every entry of the stream at `key` below `keep_from`.
    StreamTrim {
        key: Bytes,
        keep_from: StreamId,
    },
    /// Sets the stream's metadata (with `create`, an empty stream first).
    StreamMeta {
        key: Bytes,
        create: bool,
        last_id: StreamId,
        entries_added: u64,
        max_deleted: StreamId,
    },
    /// Creates consumer group `group` of the stream at `key`, or sets where it read to.
    StreamGroup {
        key: Bytes,
        group: Bytes,
        last_id: StreamId,
        entries_read: Option<u64>,
    },
    /// Deletes consumer group `group`, its consumers and its pending entries.
    StreamGroupDel {
        key: Bytes,
        group: Bytes,
    },
    /// Creates consumer `consumer` of `group`, or sets its times (Unix ms).
    StreamConsumer {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        seen_ms: u64,
        active_ms: Option<u64>,
    },
    /// Deletes consumer `consumer` of `group` and its pending entries.
    StreamConsumerDel {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    },
    /// Makes entries pending with `consumer` (created if absent): each `(ID, delivered at
    /// (Unix ms), deliveries)`.
    StreamPending {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        entries: Vec<(StreamId, u64, u64)>,
    },
    /// Acknowledges entries of `group`: they are no longer pending.
    StreamAck {
        key: Bytes,
        group: Bytes,
        ids: Vec<StreamId>,
    },
}

impl Mutation {
    /// The user key it changes; `None` for [`Mutation::DeleteAll`] and system entries.
    pub fn user_key(&self) -> Option<&Bytes> {
        match self {
            Mutation::DeleteAll | Mutation::System { .. } => None,
            Mutation::Set { key, .. }
            | Mutation::Delete { key }
            | Mutation::HashSet { key, .. }
            | Mutation::HashDel { key, .. }
            | Mutation::Expire { key, .. }
            | Mutation::SetAdd { key, .. }
            | Mutation::SetRem { key, .. }
            | Mutation::ListPush { key, .. }
            | Mutation::ListPop { key, .. }
            | Mutation::ListSet { key, .. }
            | Mutation::ListTrim { key, .. }
            | Mutation::ListRem { key, .. }
            | Mutation::ListInsert { key, .. }
            | Mutation::ZAdd { key, .. }
            | Mutation::ZRem { key, .. }
            | Mutation::StringWrite { key, .. }
            | Mutation::StreamAdd { key, .. }
            | Mutation::StreamDel { key, .. }
            | Mutation::StreamTrim { key, .. }
            | Mutation::StreamMeta { key, .. }
            | Mutation::StreamGroup { key, .. }
            | Mutation::StreamGroupDel { key, .. }
            | Mutation::StreamConsumer { key, .. }
            | Mutation::StreamConsumerDel { key, .. }
            | Mutation::StreamPending { key, .. }
            | Mutation::StreamAck { key, .. } => Some(key),
        }
    }

    /// Whether its effect depends on the key's entry before it (see the module's docs).
    pub fn is_relative(&self) -> bool {
        !matches!(
            self,
            Mutation::Set { .. }
                | Mutation::Delete { .. }
                | Mutation::DeleteAll
                | Mutation::System { .. }
        )
    }
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("reserved flags set: {0:#04x}")]
    Flags(u8),
    #[error("record ends early at byte {0}")]
    Short(usize),
    #[error("unknown mutation tag {tag} at byte {at}")]
    Tag { tag: u8, at: usize },
    #[error("{len} trailing bytes after the last mutation")]
    Trailing { len: usize },
    #[error("bad request section: {0}")]
    Request(&'static str),
    #[error("unknown outcome kind {0} in the request section")]
    OutcomeKind(u8),
}

pub(crate) fn encode_outcome(o: &Outcome, out: &mut Vec<u8>) {
    match o {
        // The effects are not kept: a retry is answered, not notified again.
        Outcome::Committed { lsn, results, .. } => {
            out.push(1);
            // A committed outcome's LSN is always that of the record that holds it.
            out.push(lsn.is_some() as u8);
            out.extend_from_slice(&(results.len() as u32).to_le_bytes());
            for r in results {
                match r {
                    WriteResult::Put(b) => out.push(1 + *b as u8),
                    WriteResult::Existed(b) => out.push(3 + *b as u8),
                    WriteResult::Int(v) => {
                        out.push(5);
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    WriteResult::DeletedAll => out.push(6),
                    WriteResult::Failed(e) => {
                        out.push(8);
                        out.push(e.code());
                    }
                    WriteResult::Value(v) => {
                        out.push(7);
                        put_value(out, v);
                    }
                    WriteResult::Values(vs) => {
                        out.push(9);
                        out.extend_from_slice(&(vs.len() as u32).to_le_bytes());
                        for v in vs {
                            put_value(out, v);
                        }
                    }
                }
            }
        }
        Outcome::GuardFailed(i) => {
            out.push(2);
            out.extend_from_slice(&(*i as u32).to_le_bytes());
        }
        Outcome::Fenced => out.push(3),
    }
}

/// Bytes [`encode_outcome`] writes for `o`.
fn outcome_len(o: &Outcome) -> usize {
    match o {
        Outcome::Committed { results, .. } => {
            2 + 4
                + results
                    .iter()
                    .map(|r| match r {
                        WriteResult::Put(_) | WriteResult::Existed(_) | WriteResult::DeletedAll => {
                            1
                        }
                        WriteResult::Int(_) => 1 + 8,
                        WriteResult::Failed(_) => 2,
                        WriteResult::Value(v) => 1 + value_len(v),
                        WriteResult::Values(vs) => 1 + 4 + vs.iter().map(value_len).sum::<usize>(),
                    })
                    .sum::<usize>()
        }
        Outcome::GuardFailed(_) => 1 + 4,
        Outcome::Fenced => 1,
    }
}

/// Bytes [`encode`] writes for this record.
pub fn encoded_len(request: Option<&Request>, mutations: &[Mutation]) -> usize {
    let request = request.map_or(0, |r| 2 + r.id.len() + 8 + outcome_len(&r.outcome));
    let mutations: usize = mutations
        .iter()
        .map(|m| match m {
            Mutation::Set { key, value, .. } => 1 + 4 + key.len() + 4 + value.len() + 8,
            Mutation::Delete { key } => 1 + 4 + key.len(),
            Mutation::DeleteAll => 1,
            Mutation::System { key, value } => 1 + 4 + key.len() + 4 + value.len(),
            Mutation::HashSet { key, pairs, .. } => {
                1 + 4
                    + key.len()
                    + 1
                    + 4
                    + pairs
                        .iter()
                        .map(|(f, v)| 8 + f.len() + v.len())
                        .sum::<usize>()
            }
            Mutation::HashDel { key, fields } => {
                1 + 4 + key.len() + 4 + fields.iter().map(|f| 4 + f.len()).sum::<usize>()
            }
            Mutation::Expire { key, .. } => 1 + 4 + key.len() + 8,
            Mutation::SetAdd { key, members, .. } => {
                1 + 4 + key.len() + 1 + 4 + members.iter().map(|m| 4 + m.len()).sum::<usize>()
            }
            Mutation::SetRem { key, members } => {
                1 + 4 + key.len() + 4 + members.iter().map(|m| 4 + m.len()).sum::<usize>()
            }
            Mutation::ListPush { key, elements, .. } => {
                1 + 4 + key.len() + 2 + 4 + elements.iter().map(|e| 4 + e.len()).sum::<usize>()
            }
            Mutation::ListPop { key, .. } => 1 + 4 + key.len() + 1 + 4,
            Mutation::ListSet { key, element, .. } => 1 + 4 + key.len() + 8 + 4 + element.len(),
            Mutation::ListTrim { key, .. } => 1 + 4 + key.len() + 16,
            Mutation::ListRem { key, element, .. } => 1 + 4 + key.len() + 8 + 4 + element.len(),
            Mutation::ListInsert {
                key,
                pivot,
                element,
                ..
            } => 1 + 4 + key.len() + 1 + 4 + pivot.len() + 4 + element.len(),
            Mutation::ZAdd { key, pairs, .. } => {
                1 + 4
                    + key.len()
                    + 1
                    + 4
                    + pairs.iter().map(|(m, _)| 4 + m.len() + 8).sum::<usize>()
            }
            Mutation::ZRem { key, members } => {
                1 + 4 + key.len() + 4 + members.iter().map(|m| 4 + m.len()).sum::<usize>()
            }
            Mutation::StringWrite { key, bytes, .. } => 1 + 4 + key.len() + 1 + 8 + 4 + bytes.len(),
            Mutation::StreamAdd { key, fields, .. } => {
                1 + 4 + key.len() + 1 + 16 + 4 + fields.iter().map(|f| 4 + f.len()).sum::<usize>()
            }
            Mutation::StreamDel { key, ids } => 1 + 4 + key.len() + 4 + 16 * ids.len(),
            Mutation::StreamTrim { key, .. } => 1 + 4 + key.len() + 16,
            Mutation::StreamMeta { key, .. } => 1 + 4 + key.len() + 1 + 16 + 8 + 16,
            Mutation::StreamGroup { key, group, .. } => 1 + 4 + key.len() + 4 + group.len() + 24,
            Mutation::StreamGroupDel { key, group } => 1 + 4 + key.len() + 4 + group.len(),
            Mutation::StreamConsumer {
                key,
                group,
                consumer,
                ..
            } => 1 + 4 + key.len() + 4 + group.len() + 4 + consumer.len() + 16,
            Mutation::StreamConsumerDel {
                key,
                group,
                consumer,
            } => 1 + 4 + key.len() + 4 + group.len() + 4 + consumer.len(),
            Mutation::StreamPending {
                key,
                group,
                consumer,
                entries,
            } => 1 + 4 + key.len() + 4 + group.len() + 4 + consumer.len() + 4 + 32 * entries.len(),
            Mutation::StreamAck { key, group, ids } => {
                1 + 4 + key.len() + 4 + group.len() + 4 + 16 * ids.len()
            }
        })
        .sum();
    1 + 1 + 8 + request + 4 + mutations
}

/// Appends the record to `out`, which it first grows by exactly the record's size: growing it
/// field by field reallocated and copied it several times per record.
pub fn encode(at_ms: u64, request: Option<&Request>, mutations: &[Mutation], out: &mut Vec<u8>) {
    let len = encoded_len(request, mutations);
    out.reserve(len);
    let start = out.len();
    encode_fields(at_ms, request, mutations, out);
    debug_assert_eq!(out.len() - start, len, "encoded_len is exact");
}

fn encode_fields(at_ms: u64, request: Option<&Request>, mutations: &[Mutation], out: &mut Vec<u8>) {
    out.push(RECORD_VERSION);
    out.push(if request.is_some() { FLAG_REQUEST } else { 0 });
    out.extend_from_slice(&at_ms.to_le_bytes());
    if let Some(r) = request {
        debug_assert!(r.id.len() <= REQUEST_ID_BYTES_MAX);
        out.extend_from_slice(&(r.id.len() as u16).to_le_bytes());
        out.extend_from_slice(&r.id);
        out.extend_from_slice(&r.at_ms.to_le_bytes());
        encode_outcome(&r.outcome, out);
    }
    out.extend_from_slice(&(mutations.len() as u32).to_le_bytes());
    for m in mutations {
        match m {
            Mutation::Set {
                key,
                value,
                expires_at_ms,
            } => {
                out.push(TAG_SET);
                put_bytes(out, key);
                put_bytes(out, value);
                out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
            }
            Mutation::Delete { key } => {
                out.push(TAG_DELETE);
                put_bytes(out, key);
            }
            Mutation::DeleteAll => out.push(TAG_DELETE_ALL),
            Mutation::System { key, value } => {
                out.push(TAG_SYSTEM);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Mutation::HashSet { key, create, pairs } => {
                out.push(TAG_HASH_SET);
                put_bytes(out, key);
                out.push(*create as u8);
                out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
                for (f, v) in pairs {
                    put_bytes(out, f);
                    put_bytes(out, v);
                }
            }
            Mutation::HashDel { key, fields } => {
                out.push(TAG_HASH_DEL);
                put_bytes(out, key);
                put_list(out, fields);
            }
            Mutation::Expire { key, expires_at_ms } => {
                out.push(TAG_EXPIRE);
                put_bytes(out, key);
                out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
            }
            Mutation::SetAdd {
                key,
                create,
                members,
            } => {
                out.push(TAG_SET_ADD);
                put_bytes(out, key);
                out.push(*create as u8);
                put_list(out, members);
            }
            Mutation::SetRem { key, members } => {
                out.push(TAG_SET_REM);
                put_bytes(out, key);
                put_list(out, members);
            }
            Mutation::ListPush {
                key,
                create,
                front,
                elements,
            } => {
                out.push(TAG_LIST_PUSH);
                put_bytes(out, key);
                out.push(*create as u8);
                out.push(*front as u8);
                put_list(out, elements);
            }
            Mutation::ListPop { key, front, count } => {
                out.push(TAG_LIST_POP);
                put_bytes(out, key);
                out.push(*front as u8);
                out.extend_from_slice(&count.to_le_bytes());
            }
            Mutation::ListSet {
                key,
                index,
                element,
            } => {
                out.push(TAG_LIST_SET);
                put_bytes(out, key);
                out.extend_from_slice(&index.to_le_bytes());
                put_bytes(out, element);
            }
            Mutation::ListTrim { key, start, end } => {
                out.push(TAG_LIST_TRIM);
                put_bytes(out, key);
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&end.to_le_bytes());
            }
            Mutation::ListRem {
                key,
                count,
                element,
            } => {
                out.push(TAG_LIST_REM);
                put_bytes(out, key);
                out.extend_from_slice(&count.to_le_bytes());
                put_bytes(out, element);
            }
            Mutation::ListInsert {
                key,
                after,
                pivot,
                element,
            } => {
                out.push(TAG_LIST_INSERT);
                put_bytes(out, key);
                out.push(*after as u8);
                put_bytes(out, pivot);
                put_bytes(out, element);
            }
            Mutation::ZAdd { key, create, pairs } => {
                out.push(TAG_ZADD);
                put_bytes(out, key);
                out.push(*create as u8);
                out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
                for (m, score) in pairs {
                    put_bytes(out, m);
                    out.extend_from_slice(&score.to_le_bytes());
                }
            }
            Mutation::ZRem { key, members } => {
                out.push(TAG_ZREM);
                put_bytes(out, key);
                put_list(out, members);
            }
            Mutation::StringWrite {
                key,
                create,
                offset,
                bytes,
            } => {
                out.push(TAG_STRING_WRITE);
                put_bytes(out, key);
                out.push(*create as u8);
                out.extend_from_slice(&offset.to_le_bytes());
                put_bytes(out, bytes);
            }
            Mutation::StreamAdd {
                key,
                create,
                id,
                fields,
            } => {
                out.push(TAG_STREAM_ADD);
                put_bytes(out, key);
                out.push(*create as u8);
                put_id(out, *id);
                put_list(out, fields);
            }
            Mutation::StreamDel { key, ids } => {
                out.push(TAG_STREAM_DEL);
                put_bytes(out, key);
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    put_id(out, *id);
                }
            }
            Mutation::StreamTrim { key, keep_from } => {
                out.push(TAG_STREAM_TRIM);
                put_bytes(out, key);
                put_id(out, *keep_from);
            }
            Mutation::StreamMeta {
                key,
                create,
                last_id,
                entries_added,
                max_deleted,
            } => {
                out.push(TAG_STREAM_META);
                put_bytes(out, key);
                out.push(*create as u8);
                put_id(out, *last_id);
                out.extend_from_slice(&entries_added.to_le_bytes());
                put_id(out, *max_deleted);
            }
            Mutation::StreamGroup {
                key,
                group,
                last_id,
                entries_read,
            } => {
                out.push(TAG_STREAM_GROUP);
                put_bytes(out, key);
                put_bytes(out, group);
                put_id(out, *last_id);
                out.extend_from_slice(&entries_read.unwrap_or(NONE_U64).to_le_bytes());
            }
            Mutation::StreamGroupDel { key, group } => {
                out.push(TAG_STREAM_GROUP_DEL);
                put_bytes(out, key);
                put_bytes(out, group);
            }
            Mutation::StreamConsumer {
                key,
                group,
                consumer,
                seen_ms,
                active_ms,
            } => {
                out.push(TAG_STREAM_CONSUMER);
                put_bytes(out, key);
                put_bytes(out, group);
                put_bytes(out, consumer);
                out.extend_from_slice(&seen_ms.to_le_bytes());
                out.extend_from_slice(&active_ms.unwrap_or(NONE_U64).to_le_bytes());
            }
            Mutation::StreamConsumerDel {
                key,
                group,
                consumer,
            } => {
                out.push(TAG_STREAM_CONSUMER_DEL);
                put_bytes(out, key);
                put_bytes(out, group);
                put_bytes(out, consumer);
            }
            Mutation::StreamPending {
                key,
                group,
                consumer,
                entries,
            } => {
                out.push(TAG_STREAM_PENDING);
                put_bytes(out, key);
                put_bytes(out, group);
                put_bytes(out, consumer);
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (id, at, n) in entries {
                    put_id(out, *id);
                    out.extend_from_slice(&at.to_le_bytes());
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            Mutation::StreamAck { key, group, ids } => {
                out.push(TAG_STREAM_ACK);
                put_bytes(out, key);
                put_bytes(out, group);
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    put_id(out, *id);
                }
            }
        }
    }
}

fn put_id(out: &mut Vec<u8>, id: StreamId) {
    out.extend_from_slice(&id.ms.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A count (u32 LE), then each item (u32 len + bytes).
fn put_list(out: &mut Vec<u8>, items: &[Bytes]) {
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for i in items {
        put_bytes(out, i);
    }
}

/// A value or nil: 1 present, then u32 len + bytes if 1.
fn put_value(out: &mut Vec<u8>, v: &Option<Bytes>) {
    out.push(v.is_some() as u8);
    if let Some(v) = v {
        put_bytes(out, v);
    }
}

fn value_len(v: &Option<Bytes>) -> usize {
    1 + v.as_ref().map_or(0, |v| 4 + v.len())
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(RecordError::Short(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, all: &Bytes) -> Result<Bytes, RecordError> {
        let len = self.u32()? as usize;
        let start = self.at;
        self.take(len)?;
        Ok(all.slice(start..start + len))
    }
    fn value(&mut self, all: &Bytes) -> Result<Option<Bytes>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes(all)?)),
            _ => Err(RecordError::Request("bad value flag")),
        }
    }
    /// A u32 count of items that take at least one byte each: a count beyond the bytes left is
    /// a lie, refused before anything is allocated for it.
    fn count(&mut self) -> Result<usize, RecordError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() - self.at {
            return Err(RecordError::Short(self.at));
        }
        Ok(n)
    }
    /// A create flag (0 or 1) of the mutation with `tag` at `at`.
    fn flag(&mut self, tag: u8, at: usize) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Tag { tag, at }),
        }
    }
    /// A count, then that many byte strings.
    fn list(&mut self, all: &Bytes) -> Result<Vec<Bytes>, RecordError> {
        let n = self.count()?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.bytes(all)?);
        }
        Ok(items)
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    /// A request id (u16 length), its time and outcome.
    fn request(&mut self, all: &Bytes, lsn: u64) -> Result<Request, RecordError> {
        let len = self.u16()? as usize;
        if len > REQUEST_ID_BYTES_MAX {
            return Err(RecordError::Request("id too long"));
        }
        let start = self.at;
        self.take(len)?;
        let id = all.slice(start..start + len);
        let at_ms = self.u64()?;
        let outcome = self.outcome(all, lsn)?;
        Ok(Request { id, at_ms, outcome })
    }
    fn outcome(&mut self, all: &Bytes, record_lsn: u64) -> Result<Outcome, RecordError> {
        match self.u8()? {
            1 => {
                let lsn = match self.u8()? {
                    0 => None,
                    1 => Some(record_lsn),
                    _ => return Err(RecordError::Request("bad wrote flag")),
                };
                let n = self.u32()? as usize;
                if n > self.buf.len() - self.at {
                    return Err(RecordError::Short(self.at));
                }
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    results.push(match self.u8()? {
                        1 => WriteResult::Put(false),
                        2 => WriteResult::Put(true),
                        3 => WriteResult::Existed(false),
                        4 => WriteResult::Existed(true),
                        5 => WriteResult::Int(self.u64()? as i64),
                        6 => WriteResult::DeletedAll,
                        8 => WriteResult::Failed(
                            WriteError::from_code(self.u8()?)
                                .ok_or(RecordError::Request("bad failure code"))?,
                        ),
                        7 => WriteResult::Value(self.value(all)?),
                        9 => {
                            let n = self.count()?;
                            let mut vs = Vec::with_capacity(n);
                            for _ in 0..n {
                                vs.push(self.value(all)?);
                            }
                            WriteResult::Values(vs)
                        }
                        _ => return Err(RecordError::Request("bad result tag")),
                    });
                }
                Ok(Outcome::Committed {
                    lsn,
                    results,
                    effects: Vec::new(),
                })
            }
            2 => Ok(Outcome::GuardFailed(self.u32()? as usize)),
            3 => Ok(Outcome::Fenced),
            kind => Err(RecordError::OutcomeKind(kind)),
        }
    }
}

/// Encodes a request as a snapshot stores it: its record's LSN, then the request section.
pub(crate) fn encode_request(lsn: u64, r: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(r.id.len() as u16).to_le_bytes());
    out.extend_from_slice(&r.id);
    out.extend_from_slice(&r.at_ms.to_le_bytes());
    encode_outcome(&r.outcome, out);
}

/// Decodes one request from `buf[at..]` (see `encode_request`); returns it and the next offset.
pub(crate) fn decode_request(buf: &Bytes, at: usize) -> Result<(u64, Request, usize), RecordError> {
    let mut r = Reader { buf, at };
    let lsn = r.u64()?;
    let req = r.request(buf, lsn)?;
    Ok((lsn, req, r.at))
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub at_ms: u64,
    pub request: Option<Request>,
    pub mutations: Vec<Mutation>,
}

/// Decodes the record at `lsn`. `buf` is shared, so keys and values are slices of it, not copies.
pub fn decode(buf: &Bytes, lsn: u64) -> Result<Decoded, RecordError> {
    let mut r = Reader { buf, at: 0 };
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(RecordError::Version(version));
    }
    let flags = r.u8()?;
    if flags & !FLAG_REQUEST != 0 {
        return Err(RecordError::Flags(flags));
    }
    let at_ms = r.u64()?;
    let request = if flags & FLAG_REQUEST != 0 {
        Some(r.request(buf, lsn)?)
    } else {
        None
    };
    let count = r.u32()? as usize;
    // Every mutation takes at least one byte: a count beyond the bytes left is a lie, and is
    // refused before anything is allocated for it.
    if count > buf.len() - r.at {
        return Err(RecordError::Short(r.at));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let at = r.at;
        out.push(match r.u8()? {
            TAG_SET => {
                let key = r.bytes(buf)?;
                let value = r.bytes(buf)?;
                let exp = r.u64()?;
                Mutation::Set {
                    key,
                    value,
                    expires_at_ms: (exp != 0).then_some(exp),
                }
            }
            TAG_DELETE => Mutation::Delete { key: r.bytes(buf)? },
            TAG_DELETE_ALL => Mutation::DeleteAll,
            TAG_SYSTEM => Mutation::System {
                key: r.bytes(buf)?,
                value: r.bytes(buf)?,
            },
            TAG_HASH_SET => {
                let key = r.bytes(buf)?;
                let create = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(RecordError::Tag {
                            tag: TAG_HASH_SET,
                            at,
                        })
                    }
                };
                let n = r.count()?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    pairs.push((r.bytes(buf)?, r.bytes(buf)?));
                }
                Mutation::HashSet { key, create, pairs }
            }
            TAG_HASH_DEL => Mutation::HashDel {
                key: r.bytes(buf)?,
                fields: r.list(buf)?,
            },
            TAG_SET_ADD => Mutation::SetAdd {
                key: r.bytes(buf)?,
                create: r.flag(TAG_SET_ADD, at)?,
                members: r.list(buf)?,
            },
            TAG_SET_REM => Mutation::SetRem {
                key: r.bytes(buf)?,
                members: r.list(buf)?,
            },
            TAG_LIST_PUSH => Mutation::ListPush {
                key: r.bytes(buf)?,
                create: r.flag(TAG_LIST_PUSH, at)?,
                front: r.flag(TAG_LIST_PUSH, at)?,
                elements: r.list(buf)?,
            },
            TAG_LIST_POP => Mutation::ListPop {
                key: r.bytes(buf)?,
                front: r.flag(TAG_LIST_POP, at)?,
                count: r.u32()?,
            },
            TAG_LIST_SET => Mutation::ListSet {
                key: r.bytes(buf)?,
                index: r.u64()?,
                element: r.bytes(buf)?,
            },
            TAG_LIST_TRIM => Mutation::ListTrim {
                key: r.bytes(buf)?,
                start: r.u64()?,
                end: r.u64()?,
            },
            TAG_LIST_REM => Mutation::ListRem {
                key: r.bytes(buf)?,
                count: r.u64()? as i64,
                element: r.bytes(buf)?,
            },
            TAG_LIST_INSERT => Mutation::ListInsert {
                key: r.bytes(buf)?,
                after: r.flag(TAG_LIST_INSERT, at)?,
                pivot: r.bytes(buf)?,
                element: r.bytes(buf)?,
            },
            TAG_ZADD => {
                let key = r.bytes(buf)?;
                let create = r.flag(TAG_ZADD, at)?;
                let n = r.count()?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let m = r.bytes(buf)?;
                    let score = f64::from_bits(r.u64()?);
                    if score.is_nan() {
                        return Err(RecordError::Tag { tag: TAG_ZADD, at });
                    }
                    pairs.push((m, score));
                }
                Mutation::ZAdd { key, create, pairs }
            }
            TAG_ZREM => Mutation::ZRem {
                key: r.bytes(buf)?,
                members: r.list(buf)?,
            },
            TAG_STRING_WRITE => Mutation::StringWrite {
                key: r.bytes(buf)?,
                create: r.flag(TAG_STRING_WRITE, at)?,
                offset: r.u64()?,
                bytes: r.bytes(buf)?,
            },
            TAG_EXPIRE => {
                let key = r.bytes(buf)?;
                let exp = r.u64()?;
                Mutation::Expire {
                    key,
                    expires_at_ms: (exp != 0).then_some(exp),
                }
            }
            TAG_STREAM_ADD => {
                let key = r.bytes(buf)?;
                let create = r.flag(TAG_STREAM_ADD, at)?;
                let id = StreamId::new(r.u64()?, r.u64()?);
                let fields = r.list(buf)?;
                if fields.is_empty() || fields.len() % 2 != 0 {
                    return Err(RecordError::Tag {
                        tag: TAG_STREAM_ADD,
                        at,
                    });
                }
                Mutation::StreamAdd {
                    key,
                    create,
                    id,
                    fields,
                }
            }
            TAG_STREAM_DEL => {
                let key = r.bytes(buf)?;
                let n = r.count()?;
                let mut ids = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    ids.push(StreamId::new(r.u64()?, r.u64()?));
                }
                Mutation::StreamDel { key, ids }
            }
            TAG_STREAM_TRIM => Mutation::StreamTrim {
                key: r.bytes(buf)?,
                keep_from: StreamId::new(r.u64()?, r.u64()?),
            },
            TAG_STREAM_META => Mutation::StreamMeta {
                key: r.bytes(buf)?,
                create: r.flag(TAG_STREAM_META, at)?,
                last_id: StreamId::new(r.u64()?, r.u64()?),
                entries_added: r.u64()?,
                max_deleted: StreamId::new(r.u64()?, r.u64()?),
            },
            TAG_STREAM_GROUP => Mutation::StreamGroup {
                key: r.bytes(buf)?,
                group: r.bytes(buf)?,
                last_id: StreamId::new(r.u64()?, r.u64()?),
                entries_read: Some(r.u64()?).filter(|n| *n != NONE_U64),
            },
            TAG_STREAM_GROUP_DEL => Mutation::StreamGroupDel {
                key: r.bytes(buf)?,
                group: r.bytes(buf)?,
            },
            TAG_STREAM_CONSUMER => Mutation::StreamConsumer {
                key: r.bytes(buf)?,
                group: r.bytes(buf)?,
                consumer: r.bytes(buf)?,
                seen_ms: r.u64()?,
                active_ms: Some(r.u64()?).filter(|t| *t != NONE_U64),
            },
            TAG_STREAM_CONSUMER_DEL => Mutation::StreamConsumerDel {
                key: r.bytes(buf)?,
                group: r.bytes(buf)?,
                consumer: r.bytes(buf)?,
            },
            TAG_STREAM_PENDING => {
                let (key, group, consumer) = (r.bytes(buf)?, r.bytes(buf)?, r.bytes(buf)?);
                let n = r.count()?;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let id = StreamId::new(r.u64()?, r.u64()?);
                    entries.push((id, r.u64()?, r.u64()?));
                }
                Mutation::StreamPending {
                    key,
                    group,
                    consumer,
                    entries,
                }
            }
            TAG_STREAM_ACK => {
                let (key, group) = (r.bytes(buf)?, r.bytes(buf)?);
                let n = r.count()?;
                let mut ids = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    ids.push(StreamId::new(r.u64()?, r.u64()?));
                }
                Mutation::StreamAck { key, group, ids }
            }
            tag => return Err(RecordError::Tag { tag, at }),
        });
    }
    if r.at != buf.len() {
        return Err(RecordError::Trailing {
            len: buf.len() - r.at,
        });
    }
    Ok(Decoded {
        at_ms,
        request,
        mutations: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Mutation> {
        vec![
            Mutation::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                expires_at_ms: Some(42),
            },
            Mutation::Delete {
                key: Bytes::from_static(b"gone"),
            },
            Mutation::DeleteAll,
            Mutation::Set {
                key: Bytes::new(),
                value: Bytes::new(),
                expires_at_ms: None,
            },
            Mutation::System {
                key: Bytes::from_static(b"applied"),
                value: Bytes::from_static(b"\x00\x01"),
            },
            Mutation::HashSet {
                key: Bytes::from_static(b"h"),
                create: true,
                pairs: vec![
                    (Bytes::from_static(b"f"), Bytes::from_static(b"v")),
                    (Bytes::new(), Bytes::new()),
                ],
            },
            Mutation::HashSet {
                key: Bytes::from_static(b"h"),
                create: false,
                pairs: vec![],
            },
            Mutation::HashDel {
                key: Bytes::from_static(b"h"),
                fields: vec![Bytes::from_static(b"f"), Bytes::new()],
            },
            Mutation::Expire {
                key: Bytes::from_static(b"h"),
                expires_at_ms: Some(7),
            },
            Mutation::Expire {
                key: Bytes::from_static(b"k"),
                expires_at_ms: None,
            },
            Mutation::SetAdd {
                key: Bytes::from_static(b"s"),
                create: true,
                members: vec![Bytes::from_static(b"m"), Bytes::new()],
            },
            Mutation::SetRem {
                key: Bytes::from_static(b"s"),
                members: vec![Bytes::from_static(b"m")],
            },
            Mutation::ListPush {
                key: Bytes::from_static(b"l"),
                create: true,
                front: false,
                elements: vec![Bytes::from_static(b"e"), Bytes::new()],
            },
            Mutation::ListPop {
                key: Bytes::from_static(b"l"),
                front: true,
                count: 3,
            },
            Mutation::ListSet {
                key: Bytes::from_static(b"l"),
                index: 7,
                element: Bytes::from_static(b"x"),
            },
            Mutation::ListTrim {
                key: Bytes::from_static(b"l"),
                start: 1,
                end: 9,
            },
            Mutation::ListRem {
                key: Bytes::from_static(b"l"),
                count: -2,
                element: Bytes::from_static(b"x"),
            },
            Mutation::ListInsert {
                key: Bytes::from_static(b"l"),
                after: true,
                pivot: Bytes::from_static(b"p"),
                element: Bytes::from_static(b"y"),
            },
            Mutation::ZAdd {
                key: Bytes::from_static(b"z"),
                create: true,
                pairs: vec![
                    (Bytes::from_static(b"a"), 1.5),
                    (Bytes::from_static(b"b"), f64::NEG_INFINITY),
                ],
            },
            Mutation::ZRem {
                key: Bytes::from_static(b"z"),
                members: vec![Bytes::from_static(b"a")],
            },
            Mutation::StringWrite {
                key: Bytes::from_static(b"s"),
                create: false,
                offset: 1 << 20,
                bytes: Bytes::from_static(b"\x80"),
            },
            Mutation::StreamAdd {
                key: Bytes::from_static(b"x"),
                create: true,
                id: StreamId::new(1_700_000_000_000, 3),
                fields: vec![Bytes::from_static(b"f"), Bytes::from_static(b"v")],
            },
            Mutation::StreamDel {
                key: Bytes::from_static(b"x"),
                ids: vec![StreamId::new(1, 0), StreamId::new(u64::MAX, u64::MAX)],
            },
            Mutation::StreamTrim {
                key: Bytes::from_static(b"x"),
                keep_from: StreamId::new(5, 5),
            },
            Mutation::StreamMeta {
                key: Bytes::from_static(b"x"),
                create: false,
                last_id: StreamId::new(9, 1),
                entries_added: 12,
                max_deleted: StreamId::new(2, 0),
            },
            Mutation::StreamGroup {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g"),
                last_id: StreamId::new(9, 1),
                entries_read: None,
            },
            Mutation::StreamGroup {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g2"),
                last_id: StreamId::new(3, 0),
                entries_read: Some(7),
            },
            Mutation::StreamConsumer {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g"),
                consumer: Bytes::from_static(b"alice"),
                seen_ms: 1_700_000_000_000,
                active_ms: None,
            },
            Mutation::StreamPending {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g"),
                consumer: Bytes::from_static(b"alice"),
                entries: vec![(StreamId::new(9, 1), 1_700_000_000_001, 3)],
            },
            Mutation::StreamAck {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g"),
                ids: vec![StreamId::new(9, 1), StreamId::new(9, 2)],
            },
            Mutation::StreamConsumerDel {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g"),
                consumer: Bytes::from_static(b"alice"),
            },
            Mutation::StreamGroupDel {
                key: Bytes::from_static(b"x"),
                group: Bytes::from_static(b"g"),
            },
        ]
    }

    fn request() -> Request {
        Request {
            id: Bytes::from_static(b"req-1"),
            at_ms: 123,
            outcome: Outcome::Committed {
                lsn: Some(9),
                results: vec![
                    WriteResult::Put(true),
                    WriteResult::Existed(false),
                    WriteResult::Int(-5),
                    WriteResult::DeletedAll,
                    WriteResult::Value(None),
                    WriteResult::Failed(WriteError::NoSuchKey),
                    WriteResult::Value(Some(Bytes::from_static(b"old"))),
                    WriteResult::Failed(WriteError::WrongType),
                    WriteResult::Values(vec![]),
                    WriteResult::Values(vec![None, Some(Bytes::from_static(b"v"))]),
                ],
                effects: vec![],
            },
        }
    }

    #[test]
    fn encoded_len_is_exact() {
        let requests = [
            None,
            Some(request()),
            Some(Request {
                outcome: Outcome::GuardFailed(3),
                ..request()
            }),
            Some(Request {
                outcome: Outcome::Fenced,
                ..request()
            }),
        ];
        for req in &requests {
            for n in 0..=sample().len() {
                let muts = &sample()[..n];
                let mut out = vec![0xaa; 3];
                encode(5, req.as_ref(), muts, &mut out);
                assert_eq!(
                    out.len(),
                    3 + encoded_len(req.as_ref(), muts),
                    "{req:?} {muts:?}"
                );
            }
        }
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(77, None, &sample(), &mut out);
        assert_eq!(
            decode(&Bytes::from(out), 9).unwrap(),
            Decoded {
                at_ms: 77,
                request: None,
                mutations: sample()
            }
        );
        for req in [
            request(),
            Request {
                outcome: Outcome::GuardFailed(3),
                ..request()
            },
            Request {
                outcome: Outcome::Fenced,
                ..request()
            },
        ] {
            let mut out = Vec::new();
            encode(78, Some(&req), &sample(), &mut out);
            assert_eq!(
                decode(&Bytes::from(out), 9).unwrap(),
                Decoded {
                    at_ms: 78,
                    request: Some(req),
                    mutations: sample()
                }
            );
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        encode(1, Some(&request()), &sample(), &mut out);
        for n in 0..out.len() {
            assert!(
                decode(&Bytes::copy_from_slice(&out[..n]), 9).is_err(),
                "prefix {n}"
            );
        }
        let mut extra = out.clone();
        extra.push(0);
        assert_eq!(
            decode(&Bytes::from(extra), 9),
            Err(RecordError::Trailing { len: 1 })
        );
        let mut plain = Vec::new();
        encode(1, None, &sample(), &mut plain);
        plain[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&Bytes::from(plain), 9).is_err());
        for i in 0..out.len() {
            for x in [0u8, 0xff, 0x7f] {
                let mut b = out.clone();
                b[i] = x;
                let _ = decode(&Bytes::from(b), 9); // must not panic
            }
        }
    }
}
