//! The engine's vocabulary: entries, the writes a transaction holds, and what they did.

use std::ops::Bound;

use bytes::Bytes;
use keel_wal::Lsn;

pub use crate::table::StreamId;

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    /// LSN of the write that produced it: the key's version for compare-and-set.
    pub version: Lsn,
    /// Absolute expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

/// Whether an entry that expires at `expires_at_ms` (`None`: never) is live at `now_ms`.
pub(crate) fn live_at(expires_at_ms: Option<u64>, now_ms: u64) -> bool {
    expires_at_ms.is_none_or(|t| t > now_ms)
}

/// When a put applies.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PutIf {
    #[default]
    Always,
    /// Only if the key has no live value (SET NX).
    Absent,
    /// Only if the key has a live value (SET XX).
    Present,
}

/// What to do with an existing expiry on put.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The new value never expires.
    #[default]
    None,
    /// Expires at this Unix millisecond.
    At(u64),
    /// Keep the old value's expiry (SET KEEPTTL).
    Keep,
}

/// One operation in a transaction. Each is decided against the state the earlier ones leave.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Result: `Put(applied)`.
    Put {
        key: Bytes,
        value: Bytes,
        ttl: Ttl,
        only: PutIf,
    },
    /// Result: `Existed(had a live value)`.
    Delete { key: Bytes },
    /// Adds `by` to a decimal integer value (absent counts as 0) and keeps the expiry. Logs the
    /// result, not `by`. Result: `Int(new value)`, or `Failed(NotAnInteger | Overflow)`.
    Incr { key: Bytes, by: i64 },
    /// Adds `by` to a decimal float value (absent counts as 0) and keeps the expiry. The result
    /// is written with at most 15 significant digits and no exponent, so 0.1 + 0.2 gives "0.3"
    /// as in Redis. Result: `Value(new value as written)`, or `Failed(NotAFloat | NotFinite)`.
    IncrFloat { key: Bytes, by: f64 },
    /// Appends to the value (absent counts as empty) and keeps the expiry. Result: `Int(new
    /// length)`, or `Failed(ValueTooLarge)`.
    Append { key: Bytes, suffix: Bytes },
    /// Sets (`Some`) or removes (`None`) the expiry of a live key, if `only` holds; a time
    /// already past deletes the key, as in Redis. Result: `Existed(applied)`.
    Expire {
        key: Bytes,
        at_ms: Option<u64>,
        only: ExpireIf,
    },
    /// Moves a value, with its expiry, to another key. With `only_if_absent` the move happens
    /// only if `to` has no live value. Result: `Put(moved)`, or `Failed(NoSuchKey)`.
    Rename {
        from: Bytes,
        to: Bytes,
        only_if_absent: bool,
    },
    /// COPY: makes `to` hold a copy of `from`'s value and expiry, of any type; unless `replace`,
    /// only if `to` does not exist. Logs the value under `to` (O(the value)). Result: `Int(1)`
    /// if it copied, `Int(0)` if `from` does not exist or `to` does and `replace` is not set.
    Copy {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// RESTORE: makes `key` hold the value of a DUMP payload ([`Read::Dump`]), with the
    /// expiry `expires_at_ms`; unless `replace`, only if `key` does not exist. Logs the value
    /// (O(the value)), as COPY does. An expiry already past writes nothing (with `replace` it
    /// deletes the key). Result: `Put(true)`; `Failed(BusyKey)` if the key exists and `replace`
    /// is not set; `Failed(BadPayload)` for a payload that is not a keel DUMP payload.
    Restore {
        key: Bytes,
        payload: Bytes,
        expires_at_ms: Option<u64>,
        replace: bool,
    },
    /// Reads the string value as the transaction sees it at this point; writes nothing. Result:
    /// `Value`, or `Failed(WrongType)` if the key holds another type.
    Get { key: Bytes },
    /// Reads the string value as [`Write::Get`] does, then does `then` unless the key holds
    /// another type (GETSET, GETDEL, SET … GET, GETEX: Redis refuses them whole on a
    /// collection). Result: the read's.
    GetThen { key: Bytes, then: Box<Write> },
    /// Reads anything else as the transaction sees it at this point; writes nothing. Result: see
    /// [`Read`].
    Read { key: Bytes, op: Read },
    /// Sets fields of the hash at `key`, creating it if absent; the expiry stays. With
    /// `only_new`, fields that exist keep their value (HSETNX). Logs the fields set. Result:
    /// `Int(fields added)`, or `Failed(WrongType)`.
    HashSet {
        key: Bytes,
        pairs: Vec<(Bytes, Bytes)>,
        only_new: bool,
    },
    /// Removes fields of the hash at `key`; a hash left empty is deleted, as in Redis. Result:
    /// `Int(fields removed)`, or `Failed(WrongType)`.
    HashDel { key: Bytes, fields: Vec<Bytes> },
    /// Adds `by` to a hash field's decimal integer (absent counts as 0). Logs the result, not
    /// `by`. Result: `Int(new value)`, or `Failed(WrongType | NotAnInteger | Overflow)`.
    HashIncr { key: Bytes, field: Bytes, by: i64 },
    /// Adds members to the set at `key`, creating it if absent; the expiry stays. Logs the
    /// members added. Result: `Int(members added)`, or `Failed(WrongType)`.
    SetAdd { key: Bytes, members: Vec<Bytes> },
    /// Removes members of the set at `key`; a set left empty is deleted. Result: `Int(members
    /// removed)`, or `Failed(WrongType)`.
    SetRem { key: Bytes, members: Vec<Bytes> },
    /// Removes random members (SPOP): one (`count: None`; result `Value`, nil when absent) or up
    /// to `count` distinct ones (result `Values`). The choice is decided once, from the
    /// transaction's time and the set's version (so every replica deciding the same
    /// transaction picks the same members), and the log holds the members removed. Or
    /// `Failed(WrongType)`.
    SetPop { key: Bytes, count: Option<usize> },
    /// Moves `member` from the set at `from` to the set at `to` (SMOVE). Result: `Int(1)` if it
    /// moved, `Int(0)` if `from` did not hold it; `Failed(WrongType)` if either key holds another
    /// type.
    SetMove {
        from: Bytes,
        to: Bytes,
        member: Bytes,
    },
    /// Stores at `key` the intersection, union or difference of the sets at `keys` (absent keys
    /// are empty sets), replacing whatever `key` held; an empty result deletes `key`. Logs the
    /// result's members. Result: `Int(members stored)`, or `Failed(WrongType)`.
    SetStore {
        key: Bytes,
        op: SetOp,
        keys: Vec<Bytes>,
    },
    /// Pushes `elements` one by one onto the head (`front`: LPUSH, so the last ends first) or
    /// the tail of the list at `key`, creating it unless `only_existing` (LPUSHX). Logs the
    /// elements. Result: `Int(new length)` (0 when `only_existing` and absent), or
    /// `Failed(WrongType)`.
    ListPush {
        key: Bytes,
        front: bool,
        elements: Vec<Bytes>,
        only_existing: bool,
    },
    /// Pops from the head (`front`) or the tail: one element (`count: None`; result `Value`, nil
    /// when absent) or up to `count` (result `Values`; `Value(None)` when absent). A list left
    /// empty is deleted. Logs how many it popped, from which end. Or `Failed(WrongType)`.
    ListPop {
        key: Bytes,
        front: bool,
        count: Option<usize>,
    },
    /// LSET: result `Put(true)`, or `Failed(NoSuchKey | IndexOutOfRange | WrongType)`.
    ListSet {
        key: Bytes,
        index: i64,
        element: Bytes,
    },
    /// LTRIM with Redis's inclusive, possibly negative bounds. Result: `Put(true)`, or
    /// `Failed(WrongType)`.
    ListTrim { key: Bytes, start: i64, stop: i64 },
    /// LREM: result `Int(removed)`, or `Failed(WrongType)`.
    ListRem {
        key: Bytes,
        count: i64,
        element: Bytes,
    },
    /// LINSERT: result `Int(new length)`, `Int(-1)` without the pivot, `Int(0)` when absent;
    /// or `Failed(WrongType)`.
    ListInsert {
        key: Bytes,
        after: bool,
        pivot: Bytes,
        element: Bytes,
    },
    /// LMPOP (and the first try of BLPOP, BRPOP, BLMPOP): pops up to `count` elements from the
    /// head (`front`) or tail of the first list among `keys` that exists. Result: `Values`
    /// holding that key, then the elements; `Value(None)` when none exists; or
    /// `Failed(WrongType)` when a key before the first list holds another type.
    ListPopFirst {
        keys: Vec<Bytes>,
        front: bool,
        count: usize,
        /// Pass over keys of another type instead of failing (a blocked client's later tries:
        /// only a list serves it).
        skip_other_types: bool,
    },
    /// LMOVE (RPOPLPUSH): pops from one end of `from` and pushes onto one end of `to`. Result:
    /// `Value(the element)`, nil when `from` is absent; or `Failed(WrongType)`.
    ListMove {
        from: Bytes,
        to: Bytes,
        from_front: bool,
        to_front: bool,
    },
    /// Adds `by` to a hash field's decimal float (absent counts as 0), written as
    /// [`Write::IncrFloat`] writes. Result: `Value(new value as written)`, or
    /// `Failed(WrongType | NotAFloat | NotFinite)`.
    HashIncrFloat { key: Bytes, field: Bytes, by: f64 },
    /// ZADD (and ZINCRBY, as `incr`): sets the scores of members of the sorted set at `key`,
    /// creating it unless nothing is added; the expiry stays. Pairs apply in order. `only`:
    /// `Absent` adds new members only (NX), `Present` updates existing ones only (XX); `cmp`
    /// updates an existing member only when its new score is greater or less (GT, LT). Logs
    /// each changed member's final score. Result: `Int(added)`, or with `ch` `Int(added +
    /// changed)`; with `incr` (one pair) `Value(new score as text)`, or nil when a condition
    /// stopped it. Or `Failed(WrongType | NotANumber)`.
    ZAdd {
        key: Bytes,
        pairs: Vec<(f64, Bytes)>,
        only: PutIf,
        cmp: ZCmp,
        ch: bool,
        incr: bool,
    },
    /// Removes members of the sorted set at `key`; a sorted set left empty is deleted. Result:
    /// `Int(members removed)`, or `Failed(WrongType)`.
    ZRem { key: Bytes, members: Vec<Bytes> },
    /// ZREMRANGEBYRANK, ZREMRANGEBYSCORE, ZREMRANGEBYLEX: removes the members in `range`. Logs
    /// the members removed. Result: `Int(removed)`, or `Failed(WrongType)`.
    ZRemRange { key: Bytes, range: ZRange },
    /// ZPOPMIN and ZPOPMAX (one key), ZMPOP and the first try of BZPOPMIN, BZPOPMAX, BZMPOP:
    /// removes up to `count` members of lowest (or, with `max`, highest) score from the first
    /// sorted set among `keys` that exists. Result: `Values` holding that key, then member,
    /// score, member, score, … (scores as text, lowest or highest first); `Value(None)` when
    /// none exists; or `Failed(WrongType)` when a key before the first sorted set holds another
    /// type.
    ZPopFirst {
        keys: Vec<Bytes>,
        max: bool,
        count: usize,
        /// Pass over keys of another type instead of failing (a blocked client's later tries).
        skip_other_types: bool,
    },
    /// ZUNIONSTORE, ZINTERSTORE, ZDIFFSTORE: stores at `key` the combination of the sorted sets
    /// (or sets, each member scoring 1) at `keys`, as [`zset_combine`](crate::zset_combine)
    /// computes it, replacing whatever `key` held; an empty result deletes `key`. Logs the
    /// result. Result: `Int(members stored)`, or `Failed(WrongType)`.
    ZStore {
        key: Bytes,
        op: SetOp,
        keys: Vec<Bytes>,
        /// One per key (empty: all 1).
        weights: Vec<f64>,
        aggregate: Aggregate,
    },
    /// ZRANGESTORE: stores at `key` what [`Read::ZRange`] of `src` selects, replacing whatever
    /// `key` held; an empty result deletes `key`. Result: `Int(members stored)`, or
    /// `Failed(WrongType)`.
    ZRangeStore {
        key: Bytes,
        src: Bytes,
        range: ZRange,
        rev: bool,
        limit: Option<(usize, Option<usize>)>,
    },
    /// SETRANGE: writes `value` at byte `offset` of the string at `key`, zero bytes filling any
    /// gap; an empty `value` changes nothing (and creates nothing). Logs only the bytes written.
    /// Result: `Int(new length)`, or `Failed(WrongType | ValueTooLarge)`.
    SetRange {
        key: Bytes,
        offset: u64,
        value: Bytes,
    },
    /// SETBIT: sets or clears bit `offset` (bit 0 is the high bit of byte 0), growing the string
    /// with zero bytes to hold it. Logs the byte it changed. Result: `Int(the bit's old value)`,
    /// or `Failed(WrongType | ValueTooLarge)`.
    SetBit { key: Bytes, offset: u64, on: bool },
    /// BITOP: stores at `dest` the bitwise `op` of the strings at `keys` (absent keys are empty;
    /// shorter ones read as zero bytes), replacing whatever `dest` held without an expiry; an
    /// empty result deletes `dest`. Result: `Int(the result's length)`, or `Failed(WrongType)`.
    BitOp {
        dest: Bytes,
        op: BitOp,
        keys: Vec<Bytes>,
    },
    /// BITFIELD: applies `ops` in order to the string at `key` as
    /// [`bitfield_apply`](crate::bitfield_apply) does, logging the bytes that changed. Result:
    /// `Values` of each op's number as decimal text (nil where OVERFLOW FAIL stopped it), or
    /// `Failed(WrongType | ValueTooLarge)`.
    BitField { key: Bytes, ops: Vec<BitFieldOp> },
    /// SORT and SORT_RO: the elements of the list, set or sorted set at `spec.key`, sorted as
    /// [`SortSpec`] says. Without `store` it only reads; result `Values` (nil where a GET
    /// pattern found nothing). With `store`, the result replaces whatever `store` held as a list
    /// (nil elements stored as empty strings; an empty result deletes it); result `Int(length)`.
    /// Or `Failed(WrongType)` (the source is another type), `Failed(NotAFloat)` (a weight is
    /// not a number without ALPHA).
    Sort {
        spec: SortSpec,
        store: Option<Bytes>,
    },
    /// Removes every user key; the system namespace stays. Result: `DeletedAll`.
    DeleteAll,
    /// Sets `key` of the **system namespace** to `value`: an embedder's own bookkeeping (the
    /// cluster keeps its applied position and membership there), written atomically with the
    /// rest of the transaction and kept in the log, snapshots, backups and restores. It is
    /// apart from the user keyspace: no user read, scan, count, guard or `DeleteAll` sees or
    /// touches it; read it with [`Snapshot::system`](crate::Snapshot::system). Entries are
    /// never removed. Each embedder keeps to its own prefix: keel's cluster `raft.`, keel serve
    /// `server.` (docs/FORMAT.md lists them). Result: `Put(true)`.
    System { key: Bytes, value: Bytes },
    /// XADD: adds an entry of `fields` (field, value, … ; at least one pair) to the stream at
    /// `key`, creating it unless `no_create`, under the ID `id` names; decided here, above
    /// the stream's last ID, from the transaction's time. Then trims as `trim` says.
    /// Result: `Value(Some(ID))`, `Value(None)` (no stream and `no_create`), or
    /// `Failed(WrongType | StreamIdTooSmall | StreamIdZero)`.
    StreamAdd {
        key: Bytes,
        id: StreamIdSpec,
        fields: Vec<Bytes>,
        no_create: bool,
        trim: Option<StreamTrim>,
    },
    /// XDEL. Result: `Int(deleted)`, or `Failed(WrongType)`.
    StreamDel { key: Bytes, ids: Vec<StreamId> },
    /// XTRIM. Result: `Int(deleted)`, or `Failed(WrongType)`.
    StreamTrimTo { key: Bytes, trim: StreamTrim },
    /// XSETID: the stream's last ID, and optionally its entries-added count and greatest
    /// deleted ID. Result: `Put(true)`, or `Failed(NoSuchKey | WrongType | StreamSetId…)`.
    StreamSetId {
        key: Bytes,
        id: StreamId,
        entries_added: Option<u64>,
        max_deleted: Option<StreamId>,
    },
    /// XGROUP CREATE: consumer group `group` of the stream at `key`, having read up to `id`
    /// (`None`: the stream's last ID, `$`), with `entries_read` (`None`: not known). With
    /// `mkstream`, an empty stream first if there is none. Result: `Put(true)`, or
    /// `Failed(NoSuchKey | WrongType | GroupExists)`.
    StreamGroupCreate {
        key: Bytes,
        group: Bytes,
        id: Option<StreamId>,
        entries_read: Option<u64>,
        mkstream: bool,
    },
    /// XGROUP SETID: where the group has read to, as in `StreamGroupCreate`. Result:
    /// `Put(true)`, or `Failed(NoSuchKey | WrongType | NoGroup)`.
    StreamGroupSetId {
        key: Bytes,
        group: Bytes,
        id: Option<StreamId>,
        entries_read: Option<u64>,
    },
    /// XGROUP DESTROY. Result: `Int(1)` (destroyed) or `Int(0)`, or
    /// `Failed(NoSuchKey | WrongType)`.
    StreamGroupDestroy { key: Bytes, group: Bytes },
    /// XGROUP CREATECONSUMER. Result: `Int(1)` (created) or `Int(0)` (it was there), or
    /// `Failed(NoSuchKey | WrongType | NoGroup)`.
    StreamConsumerCreate {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    },
    /// XGROUP DELCONSUMER. Result: `Int(entries it had pending)`, or
    /// `Failed(NoSuchKey | WrongType | NoGroup)`.
    StreamConsumerDelete {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
    },
    /// XREADGROUP: for each stream, with `None` the entries after the group's last ID (`>`),
    /// at most `count`, which become pending with `consumer` (not with `no_ack`) and move the
    /// group on; with `Some(id)` the consumer's own pending entries after `id`, delivered
    /// again. The consumer is created if absent, and seen now; with `retry` (a blocked
    /// XREADGROUP's try after a wake-up), a read that gives an existing consumer nothing logs
    /// nothing, not even that. Every stream is checked first:
    /// `Failed(WrongType | NoGroup)` delivers nothing. Result: `Values`: for each stream, its
    /// entries (an ID, its fields and values, then a nil; a pending entry since deleted is its
    /// ID and a nil), then a nil that ends the stream.
    StreamReadGroup {
        group: Bytes,
        consumer: Bytes,
        streams: Vec<(Bytes, Option<StreamId>)>,
        count: Option<usize>,
        no_ack: bool,
        retry: bool,
    },
    /// XACK. Result: `Int(acknowledged)` (0 when no stream or group), or `Failed(WrongType)`.
    StreamAck {
        key: Bytes,
        group: Bytes,
        ids: Vec<StreamId>,
    },
    /// XCLAIM and XAUTOCLAIM: pending entries idle at least `min_idle_ms` become `consumer`'s,
    /// delivered at the time `claim.delivered` says, their delivery count set or raised.
    /// Pending entries deleted from the stream are acknowledged instead. Result: `Values`:
    /// XAUTOCLAIM's cursor first (the next pending ID, `0-0` at the end); the claimed entries
    /// (an ID, its fields and values unless `just_id`, then a nil); for XAUTOCLAIM a nil, then
    /// the deleted IDs. Or `Failed(WrongType | NoGroup)`.
    StreamClaim {
        key: Bytes,
        group: Bytes,
        consumer: Bytes,
        min_idle_ms: u64,
        claim: Claim,
    },
}

/// Which pending entries XCLAIM or XAUTOCLAIM take, and how.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// XCLAIM: these IDs. `delivered`: when they count as delivered (`None`: now; never
    /// later than now); `deliveries`: the delivery count to set (`None`: one more, or the
    /// same with `just_id`); `force`: an ID pending with no one (but in the stream) is
    /// claimed too; `last_id`: the group's last ID moves up to it.
    Ids {
        ids: Vec<StreamId>,
        delivered: Option<ClaimTime>,
        deliveries: Option<u64>,
        force: bool,
        just_id: bool,
        last_id: Option<StreamId>,
    },
    /// XAUTOCLAIM: pending entries from `start`, at most `count` claimed or deleted, looking
    /// at most at `10 × count`.
    Scan {
        start: StreamId,
        count: usize,
        just_id: bool,
    },
}

/// XCLAIM's IDLE (ms before now) or TIME (Unix ms).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimTime {
    Idle(u64),
    At(u64),
}

/// How XADD names the new entry.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamIdSpec {
    /// `*`: the transaction's time in ms, and the next sequence number if that is not above
    /// the last ID's time (so IDs increase strictly even when the clock steps back).
    Auto,
    /// `ms-*`: these ms, and the next sequence number within them.
    Seq(u64),
    /// `ms-seq`.
    Exact(StreamId),
}

/// XADD's and XTRIM's trimming: by length or by lowest ID to keep. Exact (`node` 0), or as
/// Redis's `~`: only whole nodes of `node` entries go, at most `limit` entries (0: no limit;
/// none given: 100 nodes), so a stream may keep more than asked.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTrim {
    pub by: StreamTrimBy,
    pub limit: Option<u64>,
    pub node: u64,
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTrimBy {
    MaxLen(u64),
    MinId(StreamId),
}

/// The keys or values of a write ([`Write::keys`], [`Write::values`]): allocation-free for
/// writes of one key or value or of a list of them, which are most (the limits are checked on
/// every write).
pub enum Refs<'a> {
    One(Option<&'a Bytes>),
    Slice(std::slice::Iter<'a, Bytes>),
    Other(Box<dyn Iterator<Item = &'a Bytes> + 'a>),
}

impl<'a> Refs<'a> {
    fn one(b: &'a Bytes) -> Refs<'a> {
        Refs::One(Some(b))
    }
}

impl<'a> Iterator for Refs<'a> {
    type Item = &'a Bytes;

    fn next(&mut self) -> Option<&'a Bytes> {
        match self {
            Refs::One(b) => b.take(),
            Refs::Slice(i) => i.next(),
            Refs::Other(i) => i.next(),
        }
    }
}

impl Write {
    /// The user keys this write touches or reads (none for `DeleteAll` and `System`, two for
    /// `Rename`, every set for `SetStore`).
    pub fn keys(&self) -> Refs<'_> {
        match self {
            Write::Put { key, .. }
            | Write::Delete { key }
            | Write::Incr { key, .. }
            | Write::IncrFloat { key, .. }
            | Write::Append { key, .. }
            | Write::Expire { key, .. }
            | Write::Get { key }
            | Write::Read { key, .. }
            | Write::HashSet { key, .. }
            | Write::HashDel { key, .. }
            | Write::HashIncr { key, .. }
            | Write::HashIncrFloat { key, .. }
            | Write::SetAdd { key, .. }
            | Write::SetRem { key, .. }
            | Write::SetPop { key, .. }
            | Write::ListPush { key, .. }
            | Write::ListPop { key, .. }
            | Write::ListSet { key, .. }
            | Write::ListTrim { key, .. }
            | Write::ListRem { key, .. }
            | Write::ListInsert { key, .. }
            | Write::ZAdd { key, .. }
            | Write::ZRem { key, .. }
            | Write::ZRemRange { key, .. }
            | Write::SetRange { key, .. }
            | Write::SetBit { key, .. }
            | Write::BitField { key, .. }
            | Write::StreamAdd { key, .. }
            | Write::StreamDel { key, .. }
            | Write::StreamTrimTo { key, .. }
            | Write::StreamSetId { key, .. }
            | Write::StreamGroupCreate { key, .. }
            | Write::StreamGroupSetId { key, .. }
            | Write::StreamGroupDestroy { key, .. }
            | Write::StreamConsumerCreate { key, .. }
            | Write::StreamConsumerDelete { key, .. }
            | Write::StreamAck { key, .. }
            | Write::StreamClaim { key, .. }
            | Write::Restore { key, .. } => Refs::one(key),
            Write::StreamReadGroup { streams, .. } => {
                Refs::Other(Box::new(streams.iter().map(|(k, _)| k)))
            }
            Write::BitOp { dest, keys, .. } => {
                Refs::Other(Box::new(std::iter::once(dest).chain(keys)))
            }
            Write::ZRangeStore { key, src, .. } => Refs::Other(Box::new([key, src].into_iter())),
            Write::ZStore { key, keys, .. } => {
                Refs::Other(Box::new(std::iter::once(key).chain(keys)))
            }
            Write::ZPopFirst { keys, .. } => Refs::Slice(keys.iter()),
            Write::Sort { spec, store } => {
                Refs::Other(Box::new(std::iter::once(&spec.key).chain(store)))
            }
            Write::GetThen { key, then } => {
                Refs::Other(Box::new(std::iter::once(key).chain(then.keys())))
            }
            Write::Rename { from, to, .. }
            | Write::Copy { from, to, .. }
            | Write::SetMove { from, to, .. }
            | Write::ListMove { from, to, .. } => Refs::Other(Box::new([from, to].into_iter())),
            Write::SetStore { key, keys, .. } => {
                Refs::Other(Box::new(std::iter::once(key).chain(keys)))
            }
            Write::ListPopFirst { keys, .. } => Refs::Slice(keys.iter()),
            Write::DeleteAll | Write::System { .. } => Refs::Slice([].iter()),
        }
    }

    /// The values, fields and members it stores, each bounded by `value_bytes_max`.
    pub fn values(&self) -> Refs<'_> {
        match self {
            Write::Put { value, .. } | Write::Restore { payload: value, .. } => Refs::one(value),
            Write::Append { suffix, .. } | Write::SetRange { value: suffix, .. } => {
                Refs::one(suffix)
            }
            Write::HashSet { pairs, .. } => {
                Refs::Other(Box::new(pairs.iter().flat_map(|(f, v)| [f, v])))
            }
            Write::HashIncr { field, .. } | Write::HashIncrFloat { field, .. } => Refs::one(field),
            Write::SetAdd { members, .. } => Refs::Slice(members.iter()),
            Write::SetMove { member, .. } => Refs::one(member),
            Write::ListPush { elements, .. } => Refs::Slice(elements.iter()),
            Write::ListSet { element, .. } | Write::ListInsert { element, .. } => {
                Refs::one(element)
            }
            Write::GetThen { then, .. } => then.values(),
            Write::ZAdd { pairs, .. } => Refs::Other(Box::new(pairs.iter().map(|(_, m)| m))),
            Write::StreamAdd { fields, .. } => Refs::Slice(fields.iter()),
            Write::StreamGroupCreate { group, .. } => Refs::one(group),
            Write::StreamConsumerCreate {
                group, consumer, ..
            }
            | Write::StreamReadGroup {
                group, consumer, ..
            }
            | Write::StreamClaim {
                group, consumer, ..
            } => Refs::Other(Box::new([group, consumer].into_iter())),
            _ => Refs::Slice([].iter()),
        }
    }

    /// Whether it may change the user keyspace: every write but `System`, `Get` and `Read`.
    pub fn writes_user_keys(&self) -> bool {
        !self.is_read() && !matches!(self, Write::System { .. })
    }

    /// Whether it only reads: `Get`, `Read` and a `Sort` without `store`.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Write::Get { .. } | Write::Read { .. } | Write::Sort { store: None, .. }
        )
    }
}

/// A read of one key of any type ([`Write::Read`]), and the result it gives.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// The type's name (`string`, `hash`, …). Result: `Value(Some(name))`, or `Value(None)`
    /// when the key does not exist.
    Type,
    /// DUMP: the value serialized as keel's DUMP payload (docs/FORMAT.md), without its expiry,
    /// for [`Write::Restore`]. Result: `Value(Some(payload))`, or `Value(None)` when the key does
    /// not exist.
    Dump,
    /// Result: `Values` with one value or nil per field.
    HashGet { fields: Vec<Bytes> },
    /// Result: `Values` of field, value, field, value, … in the hash's order.
    HashAll,
    /// Result: `Values` of the fields.
    HashKeys,
    /// Result: `Values` of the values.
    HashVals,
    /// Result: `Int(fields)`.
    HashLen,
    /// Result: `Int(1)` if the field exists, else `Int(0)`.
    HashExists { field: Bytes },
    /// Result: `Int(length of the field's value)`, 0 if absent.
    HashStrlen { field: Bytes },
    /// Result: `Values` of the members, in the set's order.
    SetMembers,
    /// Result: `Int(1)` if the set holds the member, else `Int(0)`.
    SetIsMember { member: Bytes },
    /// Result: `Values`, `1` or `0` per member.
    SetMisMember { members: Vec<Bytes> },
    /// Result: `Int(members)`.
    SetCard,
    /// LRANGE with Redis's inclusive, possibly negative bounds. Result: `Values`.
    ListRange { start: i64, stop: i64 },
    /// LINDEX. Result: `Value`.
    ListIndex { index: i64 },
    /// LLEN. Result: `Int`.
    ListLen,
    /// LPOS: the indexes of `element`, as decimal text in `Values`: from the `rank`-th match
    /// (negative: counting from the tail; never 0), at most `count` of them (0: all), looking at
    /// no more than `maxlen` elements (0: all).
    ListPos {
        element: Bytes,
        rank: i64,
        count: usize,
        maxlen: usize,
    },
    /// GETRANGE of a string with Redis's inclusive, possibly negative bounds (absent: empty).
    /// Result: `Value`.
    Substring { start: i64, end: i64 },
    /// ZSCORE and ZMSCORE: each member's score as text, or nil. Result: `Values`.
    ZScores { members: Vec<Bytes> },
    /// ZCARD. Result: `Int`.
    ZCard,
    /// ZCOUNT (a score range) and ZLEXCOUNT (a lex range). Result: `Int`.
    ZCount { range: ZRange },
    /// ZRANK, or with `rev` ZREVRANK. Result: `Values` of the rank and the score as text, or
    /// `Value(None)` when the member (or the key) is absent.
    ZRank { member: Bytes, rev: bool },
    /// ZRANGE and its legacy forms: the members `range` selects, in ascending order (with
    /// `rev`, descending: ranks then count from the highest), then `limit`'s offset and count
    /// (`None`: all the rest) applied. Result: `Values` of members, or with `with_scores` of
    /// member, score, member, score, ….
    ZRange {
        range: ZRange,
        rev: bool,
        limit: Option<(usize, Option<usize>)>,
        with_scores: bool,
    },
    /// Every member and score, ascending: of a sorted set, or of a set with each member scoring
    /// 1 (ZUNION, ZINTER, ZDIFF and ZINTERCARD take both). Result: `Values` of member, score, ….
    ZMembers,
    /// The key's expiry, of any type (TTL and its friends). Result: `Int(Unix ms)`, `Int(-1)`
    /// for a key without one, `Int(-2)` for no key.
    Expiry,
    /// XLEN. Result: `Int(entries)`.
    StreamLen,
    /// XRANGE and XREVRANGE (and XREAD's reads): the entries between the bounds, at most
    /// `count`, in ID order or with `rev` the reverse. Result: `Values`: for each entry its ID,
    /// then its fields and values, then a nil that ends it.
    StreamRange {
        start: Bound<StreamId>,
        end: Bound<StreamId>,
        count: Option<usize>,
        rev: bool,
    },
    /// The stream's last ID (XREAD's `$`). Result: `Value(Some(ID))`, `Value(None)` when no
    /// stream.
    StreamLastId,
    /// XINFO STREAM: `Values` of the length, the last ID, the greatest deleted ID, the
    /// entries ever added, the first entry's ID (`0-0` for none) and the number of consumer
    /// groups, then entries as [`Read::StreamRange`] gives them: the first and the last
    /// (`entries: None`), or the first `n` (0: all). With `Some(n)` (FULL), a nil, then each
    /// group: its name, last ID, entries-read (nil: not known), lag (nil: not known), number
    /// of pending entries, how many of them follow (at most `n`, 0: all), each as ID,
    /// consumer, delivery time (Unix ms), deliveries; then its number of consumers and each:
    /// name, seen time, active time (nil: never), number pending, how many follow (as
    /// above), each as ID, delivery time, deliveries. `Failed(NoSuchKey)` when no stream.
    StreamInfo { entries: Option<usize> },
    /// XINFO GROUPS: `Values`, six per group in name order: name, consumers, pending, last
    /// ID, entries-read (nil: not known), lag (nil: not known). `Failed(NoSuchKey)` when no
    /// stream.
    StreamGroups,
    /// XINFO CONSUMERS: `Values`, four per consumer in name order: name, pending, seen time
    /// and active time (Unix ms; nil: never). `Failed(NoSuchKey | NoGroup)`.
    StreamConsumers { group: Bytes },
    /// XPENDING. Without `range`, `Values` of the number pending, then (if any) the lowest
    /// and greatest pending ID and each consumer with entries pending and how many. With it,
    /// four per entry: ID, consumer, delivery time (Unix ms), deliveries. `Failed(NoGroup)`
    /// when no stream or group.
    StreamPending {
        group: Bytes,
        range: Option<PendingRange>,
    },
    /// SRANDMEMBER: `count` distinct random members (all of them when the set has no more),
    /// or for a negative count `-count` picks that may repeat. `seed` is the randomness (a
    /// read logs nothing, so any seed will do). Result: `Values` of the members. O(count)
    /// expected; O(n) when `count` is a third of the set or more, as in Redis.
    SetRandom { count: i64, seed: u64 },
    /// HRANDFIELD, picking as [`Read::SetRandom`] does. Result: `Values` of field, value,
    /// field, value, ….
    HashRandom { count: i64, seed: u64 },
    /// ZRANDMEMBER, picking as [`Read::SetRandom`] does. Result: `Values` of member, score
    /// (as text), member, score, ….
    ZRandom { count: i64, seed: u64 },
    /// HSCAN: the pairs from `cursor` on, at least `count` of them unless the hash ends first
    /// (a small hash comes whole). Result: `Values` of the next cursor (as text, `0` once the
    /// scan is over), then field, value, …. Every pair present from a scan's first call to its
    /// last comes at least once; some may come twice.
    HashScan { cursor: u64, count: usize },
    /// SSCAN, as [`Read::HashScan`]. Result: `Values` of the next cursor, then the members.
    SetScan { cursor: u64, count: usize },
    /// ZSCAN, as [`Read::HashScan`]. Result: `Values` of the next cursor, then member, score
    /// (as text), ….
    ZScan { cursor: u64, count: usize },
}

/// XPENDING's extended form: pending entries between two bounds, at most `count`, of one
/// consumer if given, delivered at or before `delivered_by` (Unix ms) if given (IDLE).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRange {
    pub start: Bound<StreamId>,
    pub end: Bound<StreamId>,
    pub count: usize,
    pub consumer: Option<Bytes>,
    pub delivered_by: Option<u64>,
}

/// Which members of a sorted set a range command means.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq)]
pub enum ZRange {
    /// By position, Redis's inclusive and possibly negative ranks.
    Rank { start: i64, stop: i64 },
    /// By score, each bound inclusive, exclusive or open.
    Score { min: Bound<f64>, max: Bound<f64> },
    /// By member, for members of equal score (Redis's lex ranges); `Unbounded` is `-` as a
    /// minimum and `+` as a maximum.
    Lex { min: LexBound, max: LexBound },
}

/// One end of a lex range: `-`, `+`, `[member` or `(member`.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LexBound {
    /// `-`: below every member.
    Min,
    /// `+`: above every member.
    Max,
    Included(Bytes),
    Excluded(Bytes),
}

/// ZADD's GT and LT.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ZCmp {
    #[default]
    Any,
    Greater,
    Less,
}

/// How ZUNION and ZINTER combine a member's scores (AGGREGATE).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Aggregate {
    #[default]
    Sum,
    Min,
    Max,
}

/// What SORT sorts and returns. `by` and `get` are Redis's patterns: the first `*` stands
/// for an element, `->field` after it reads a hash's field, and `#` (GET only) is the element
/// itself; a `by` without `*` does not sort.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortSpec {
    pub key: Bytes,
    pub by: Option<Bytes>,
    /// LIMIT offset count (a negative count: to the end).
    pub limit: Option<(i64, i64)>,
    pub get: Vec<Bytes>,
    pub desc: bool,
    /// Compare as bytes; otherwise as numbers.
    pub alpha: bool,
}

/// BITOP's operations.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    And,
    Or,
    Xor,
    /// Of one key.
    Not,
}

/// One BITFIELD operation on the field of `bits` bits (1 to 64 signed, 1 to 63 unsigned) at
/// bit `offset`.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitFieldOp {
    pub action: BitFieldAction,
    pub signed: bool,
    pub bits: u8,
    pub offset: u64,
    /// The OVERFLOW in force for a SET or INCRBY.
    pub overflow: Overflow,
}

#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitFieldAction {
    Get,
    Set(i64),
    IncrBy(i64),
}

/// BITFIELD's OVERFLOW: what a SET or INCRBY does with a value the field cannot hold.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Keep the low bits (two's complement for signed fields).
    #[default]
    Wrap,
    /// Clamp to the field's least or greatest value.
    Sat,
    /// Change nothing and answer nil.
    Fail,
}

/// How [`Write::SetStore`] combines its sets.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOp {
    Inter,
    Union,
    /// The first set less every other.
    Diff,
}

/// When an expiry change applies (Redis's EXPIRE options). A key without an expiry counts as
/// expiring never, later than any time.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpireIf {
    #[default]
    Always,
    /// The key has no expiry (NX).
    NoExpiry,
    /// The key has an expiry (XX; with `at_ms: None`, PERSIST).
    HasExpiry,
    /// The new time is later than the current one (GT).
    Later,
    /// The new time is sooner than the current one (LT).
    Sooner,
    /// The key has an expiry and the new time is sooner (XX LT).
    SoonerWithExpiry,
}

impl ExpireIf {
    pub(crate) fn holds(self, current: Option<u64>, new: Option<u64>) -> bool {
        let never = u64::MAX;
        let (cur, new) = (current.unwrap_or(never), new.unwrap_or(never));
        match self {
            ExpireIf::Always => true,
            ExpireIf::NoExpiry => current.is_none(),
            ExpireIf::HasExpiry => current.is_some(),
            ExpireIf::Later => new > cur,
            ExpireIf::Sooner => new < cur,
            ExpireIf::SoonerWithExpiry => current.is_some() && new < cur,
        }
    }
}

/// A precondition checked before any write: the key's current version (`None`: no live value).
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub key: Bytes,
    pub version: Option<Lsn>,
}

/// Why one write in a transaction did nothing. The transaction's other writes still apply, as in
/// a Redis `EXEC`; use guards for all-or-nothing conditions.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
    #[error("value is not a valid float")]
    NotAFloat,
    #[error("increment would produce NaN or Infinity")]
    NotFinite,
    #[error("no such key")]
    NoSuchKey,
    #[error("the result would exceed value_bytes_max")]
    ValueTooLarge,
    #[error("the key holds a value of another type")]
    WrongType,
    #[error("index out of range")]
    IndexOutOfRange,
    #[error("resulting score is not a number (NaN)")]
    NotANumber,
    #[error("the ID specified in XADD is equal or smaller than the target stream top item")]
    StreamIdTooSmall,
    #[error("the ID specified in XADD must be greater than 0-0")]
    StreamIdZero,
    #[error("the ID specified in XSETID is smaller than the target stream top item")]
    StreamSetIdTooSmall,
    #[error("the entries_added specified in XSETID is smaller than the target stream length")]
    StreamSetIdEntriesAdded,
    #[error("the ID specified in XSETID is smaller than the max_deleted_entry_id")]
    StreamSetIdMaxDeleted,
    #[error("no such consumer group")]
    NoGroup,
    #[error("the consumer group already exists")]
    GroupExists,
    #[error("the target key already exists")]
    BusyKey,
    #[error("the payload is not a DUMP payload of this keel")]
    BadPayload,
}

impl WriteError {
    pub(crate) fn code(self) -> u8 {
        self as u8 + 1
    }
    pub(crate) fn from_code(c: u8) -> Option<Self> {
        use WriteError::*;
        [
            NotAnInteger,
            Overflow,
            NotAFloat,
            NotFinite,
            NoSuchKey,
            ValueTooLarge,
            WrongType,
            IndexOutOfRange,
            NotANumber,
            StreamIdTooSmall,
            StreamIdZero,
            StreamSetIdTooSmall,
            StreamSetIdEntriesAdded,
            StreamSetIdMaxDeleted,
            NoGroup,
            GroupExists,
            BusyKey,
            BadPayload,
        ]
        .get(usize::from(c).checked_sub(1)?)
        .copied()
    }
}

/// What one write did.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// A put or rename; `false` when its condition did not hold.
    Put(bool),
    /// A delete or an expiry change; whether the key had a live value.
    Existed(bool),
    /// The value an increment produced, or the length an append produced.
    Int(i64),
    /// A read, or the value a float increment produced.
    Value(Option<Bytes>),
    /// A read of several values (a hash's fields, …).
    Values(Vec<Option<Bytes>>),
    DeletedAll,
    /// The write did nothing, for this reason.
    Failed(WriteError),
}

/// A key one write of a committed transaction changed (see [`Outcome::Committed`]): what
/// keyspace notifications are made from.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEffect {
    /// The write's index in the transaction.
    pub write: u32,
    pub key: Bytes,
    /// The key held no live value before the write and holds one after it.
    pub created: bool,
    /// The key held a live value before the write and holds none after it: deleted, expired
    /// by an expiry in the past, or emptied (a list's last element popped, say).
    pub deleted: bool,
    /// The write created a consumer of one of the stream's consumer groups (XREADGROUP and
    /// the claims create the consumer they name).
    #[cfg_attr(feature = "serde", serde(default))]
    pub consumer_created: bool,
}

/// The outcome of a transaction.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every guard held. `lsn` is `None` when nothing needed writing (for example, only skipped
    /// puts); otherwise the writes are durable and visible when this is returned.
    Committed {
        lsn: Option<Lsn>,
        results: Vec<WriteResult>,
        /// What the writes did to each key they changed, in order; empty unless the engine
        /// was asked for them ([`Engine::report_effects`](crate::Engine::report_effects)).
        #[cfg_attr(feature = "serde", serde(default))]
        effects: Vec<KeyEffect>,
    },
    /// The guard at this index did not hold; nothing was written.
    GuardFailed(usize),
    /// The transaction writes user keys and the write fence was set when it was decided
    /// ([`Options::write_fence`](crate::Options::write_fence)); nothing was written.
    Fenced,
}
