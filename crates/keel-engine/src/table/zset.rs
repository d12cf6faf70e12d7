//! The sorted set value type: members ordered by (score, member).
//!
//! Small sorted sets are one packed buffer of (member, score) pairs kept in order (Redis's
//! listpack encoding): O(n) per operation over at most [`ZSET_PACKED_ENTRIES_MAX`] members of at
//! most [`ZSET_PACKED_BYTES_MAX`] bytes. Past that they convert, once and for good, to Redis's
//! large form: a skip list with spans (O(log n) ZADD, ZREM, ZRANK, and rank or score range
//! starts) beside a `hashbrown` table from member to node (O(1) ZSCORE). The skip list lives in
//! an arena of nodes addressed by `u32`, so the table holds 4-byte indices and no code is
//! unsafe.
//!
//! The sequencer's copy of a large sorted set (see [`ZSetValue::working_copy`]) keeps members and
//! scores in one table and no order: a ZADD or ZREM that it decides then changes the table
//! alone, where the skip list would take a second O(log n) search (the visible state's copy
//! takes the first). A read that needs the order builds it once, and the copy is a skip list
//! again from its next write.
//!
//! Scores are never NaN: the command layer rejects NaN, as Redis does, before it gets here.
//! Packed, an integral score takes as few bytes as hold it (see `encode_score`).

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::OnceLock;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::cursor::Layout;
use super::packed::{self, element, Elements};

/// Redis's `zset-max-listpack-entries`, by default.
pub const ZSET_PACKED_ENTRIES_MAX: usize = 128;
/// Redis's `zset-max-listpack-value`, by default.
pub const ZSET_PACKED_BYTES_MAX: usize = 64;

static PACKED_ENTRIES: AtomicUsize = AtomicUsize::new(ZSET_PACKED_ENTRIES_MAX);
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(ZSET_PACKED_BYTES_MAX);

/// The thresholds in force: (most members, longest member) a packed sorted set holds. One
/// setting for the whole process, as Redis's are for its server.
pub fn zset_packed_limits() -> (usize, usize) {
    (
        PACKED_ENTRIES.load(AtomicOrdering::Relaxed),
        PACKED_BYTES.load(AtomicOrdering::Relaxed),
    )
}

/// Sets one of [`zset_packed_limits`], by its place there (0 or 1: keel serve's CONFIG SET
/// zset-max-listpack-entries and -value). Sorted sets already converted stay skip lists.
pub fn set_zset_packed_limit(which: usize, n: usize) {
    [&PACKED_ENTRIES, &PACKED_BYTES][which].store(n, AtomicOrdering::Relaxed);
}

#[derive(Clone, Debug)]
pub struct ZSetValue(Repr);

#[derive(Clone)]
enum Repr {
    /// member, score (see `encode_score`), member, score, ... ordered by (score, member).
    Packed {
        buf: Vec<u8>,
        len: usize,
    },
    Skip(Box<SkipList>),
    Unordered(Box<Unordered>),
}

/// A large sorted set without its order: see [`ZSetValue::working_copy`].
#[derive(Clone, Debug)]
struct Unordered {
    scores: hashbrown::HashMap<Box<[u8]>, f64, RandomState>,
    member_bytes: usize,
    /// The skip list of `scores`, built by the first read that needs the order; the next write
    /// takes it and keeps it in order.
    ordered: OnceLock<Box<SkipList>>,
}

impl Unordered {
    fn skip_list(&self) -> &SkipList {
        self.ordered.get_or_init(|| {
            let mut pairs: Vec<(&[u8], f64)> =
                self.scores.iter().map(|(m, s)| (&m[..], *s)).collect();
            pairs.sort_unstable_by(|a, b| cmp(a.1, a.0, b.1, b.0));
            let mut s = SkipList::new();
            for (m, sc) in pairs {
                s.insert(m, sc);
            }
            Box::new(s)
        })
    }
}

impl std::fmt::Debug for Repr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repr::Packed { len, .. } => write!(f, "Packed({len} members)"),
            Repr::Skip(s) => write!(f, "SkipList({} members)", s.len),
            Repr::Unordered(u) => write!(f, "Unordered({} members)", u.scores.len()),
        }
    }
}

fn cmp(a_score: f64, a_member: &[u8], b_score: f64, b_member: &[u8]) -> Ordering {
    a_score
        .partial_cmp(&b_score)
        .expect("scores are never NaN")
        .then_with(|| a_member.cmp(b_member))
}

/// A packed score: an integral score of magnitude below 2^55 as the fewest little-endian
/// two's-complement bytes that hold it (none for 0; at most 7), as Redis's listpack stores
/// integral scores as integers; any other score as its 8 bytes of f64. -0.0 stays a float, so
/// that its sign survives.
fn encode_score(score: f64) -> ([u8; 8], usize) {
    const INT_LIMIT: f64 = (1u64 << 55) as f64;
    let negative_zero = score == 0.0 && score.is_sign_negative();
    if score.fract() == 0.0 && score.abs() < INT_LIMIT && !negative_zero {
        let v = score as i64;
        let n = (1..=7)
            .find(|&n| {
                let bits = 8 * n;
                v >= -(1i64 << (bits - 1)) && v < (1i64 << (bits - 1))
            })
            .expect("|v| < 2^55 fits in 7 bytes");
        let n = if v == 0 { 0 } else { n };
        (v.to_le_bytes(), n)
    } else {
        (score.to_le_bytes(), 8)
    }
}

fn score_of(b: &[u8]) -> f64 {
    match b.len() {
        8 => f64::from_le_bytes(b.try_into().expect("8 bytes")),
        0 => 0.0,
        n => {
            let mut bytes = [if b[n - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
            bytes[..n].copy_from_slice(b);
            i64::from_le_bytes(bytes) as f64
        }
    }
}

fn above_min(score: f64, min: Bound<f64>) -> bool {
    match min {
        Bound::Included(m) => score >= m,
        Bound::Excluded(m) => score > m,
        Bound::Unbounded => true,
    }
}

fn below_max(score: f64, max: Bound<f64>) -> bool {
    match max {
        Bound::Included(m) => score <= m,
        Bound::Excluded(m) => score < m,
        Bound::Unbounded => true,
    }
}

/// A packed sorted set's pairs: (offset of the pair, offset past it, member, score).
fn packed_pairs(buf: &[u8]) -> impl Iterator<Item = (usize, usize, &[u8], f64)> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        (at < buf.len()).then(|| {
            let (m, s_at) = element(buf, at);
            let (s, next) = element(buf, s_at);
            let start = at;
            at = next;
            (start, next, m, score_of(s))
        })
    })
}

impl Default for ZSetValue {
    fn default() -> Self {
        Self::new()
    }
}

impl ZSetValue {
    pub fn new() -> Self {
        ZSetValue(Repr::Packed {
            buf: Vec::new(),
            len: 0,
        })
    }

    /// ZCARD.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Packed { len, .. } => *len,
            Repr::Skip(s) => s.len,
            Repr::Unordered(u) => u.scores.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_packed(&self) -> bool {
        matches!(self.0, Repr::Packed { .. })
    }

    /// In the skip list form (not packed, not a working copy without order).
    pub fn is_ordered(&self) -> bool {
        matches!(self.0, Repr::Skip(_))
    }

    /// ZSCORE.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        match &self.0 {
            Repr::Packed { buf, .. } => packed_pairs(buf)
                .find(|(_, _, m, _)| *m == member)
                .map(|(_, _, _, s)| s),
            Repr::Skip(s) => s.find(member).map(|b| s.score(b)),
            Repr::Unordered(u) => u.scores.get(member).copied(),
        }
    }

    /// A copy to decide writes on, for the sequencer: a large sorted set comes as a table of
    /// members and scores without the skip list, and stays so while only ZADD and ZREM change
    /// it (O(1) each instead of O(log n)); the first read that needs the order (a rank, a
    /// range, a pop) builds it, O(n log n) once. O(n) like any copy.
    pub fn working_copy(&self) -> ZSetValue {
        match &self.0 {
            Repr::Skip(s) => {
                let mut scores =
                    hashbrown::HashMap::with_capacity_and_hasher(s.len, RandomState::default());
                scores.extend(s.walk_from(s.fwd(HEAD, 0)).map(|(m, sc)| (m.into(), sc)));
                ZSetValue(Repr::Unordered(Box::new(Unordered {
                    scores,
                    member_bytes: s.member_bytes,
                    ordered: OnceLock::new(),
                })))
            }
            _ => self.clone(),
        }
    }

    /// The skip list of the large forms (built now for an unordered copy); `None` packed.
    fn skip_list(&self) -> Option<&SkipList> {
        match &self.0 {
            Repr::Packed { .. } => None,
            Repr::Skip(s) => Some(s),
            Repr::Unordered(u) => Some(u.skip_list()),
        }
    }

    /// An unordered copy whose order a read has built becomes that skip list, before a write.
    fn keep_order(&mut self) {
        if let Repr::Unordered(u) = &mut self.0 {
            if let Some(s) = u.ordered.take() {
                self.0 = Repr::Skip(s);
            }
        }
    }

    /// ZADD of one member: sets its score; true if the member is new.
    pub fn insert(&mut self, member: &[u8], score: f64) -> bool {
        assert!(!score.is_nan(), "the command layer rejects NaN scores");
        self.keep_order();
        if let Repr::Unordered(u) = &mut self.0 {
            return match u.scores.get_mut(member) {
                Some(s) => {
                    *s = score;
                    false
                }
                None => {
                    u.scores.insert(member.into(), score);
                    u.member_bytes += member.len();
                    true
                }
            };
        }
        if let Repr::Packed { buf, len } = &mut self.0 {
            let old = packed_pairs(buf).find(|(_, _, m, _)| *m == member);
            let (most, longest) = zset_packed_limits();
            let fits = member.len() <= longest && (old.is_some() || *len < most);
            if fits {
                let existed = old.is_some();
                if let Some((start, end, _, s)) = old {
                    if s == score {
                        return false;
                    }
                    packed::splice(buf, start..end, &[]);
                    *len -= 1;
                }
                let at = packed_pairs(buf)
                    .find(|(_, _, m, s)| cmp(*s, m, score, member) == Ordering::Greater)
                    .map_or(buf.len(), |(start, ..)| start);
                let (bytes, n) = encode_score(score);
                packed::splice(buf, at..at, &[member, &bytes[..n]]);
                *len += 1;
                return !existed;
            }
            self.convert_to_skip_list();
        }
        let Repr::Skip(s) = &mut self.0 else {
            unreachable!("converted above")
        };
        match s.find(member) {
            Some(i) if s.score(i) == score => false,
            Some(i) => {
                s.rescore(i, score);
                false
            }
            None => {
                s.insert(member, score);
                true
            }
        }
    }

    /// ZREM of one member; true if it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        self.keep_order();
        match &mut self.0 {
            Repr::Packed { buf, len } => {
                let found = packed_pairs(buf)
                    .find(|(_, _, m, _)| *m == member)
                    .map(|(start, end, ..)| (start, end));
                match found {
                    Some((start, end)) => {
                        packed::splice(buf, start..end, &[]);
                        *len -= 1;
                        true
                    }
                    None => false,
                }
            }
            Repr::Skip(s) => match s.find(member) {
                Some(i) => {
                    s.remove(i);
                    s.compact_if_sparse();
                    true
                }
                None => false,
            },
            Repr::Unordered(u) => {
                let gone = u.scores.remove(member).is_some();
                if gone {
                    u.member_bytes -= member.len();
                }
                gone
            }
        }
    }

    /// ZRANK: the member's 0-based position in ascending order (ZREVRANK is `len - 1 - rank`).
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        match &self.0 {
            Repr::Packed { buf, .. } => packed_pairs(buf).position(|(_, _, m, _)| m == member),
            _ => {
                let s = self.skip_list()?;
                let i = s.find(member)?;
                Some(s.rank(s.score(i), member))
            }
        }
    }

    /// ZRANGE by rank: members at ranks `start..end` (clamped), ascending, with their scores.
    pub fn range_by_rank(&self, start: usize, end: usize) -> Vec<(&[u8], f64)> {
        let end = end.min(self.len());
        if start >= end {
            return Vec::new();
        }
        match &self.0 {
            Repr::Packed { buf, .. } => packed_pairs(buf)
                .skip(start)
                .take(end - start)
                .map(|(_, _, m, s)| (m, s))
                .collect(),
            _ => {
                let s = self.skip_list().expect("a large form");
                s.walk_from(s.by_rank(start)).take(end - start).collect()
            }
        }
    }

    /// ZRANGEBYSCORE: members with `min <= score <= max` (each bound inclusive, exclusive or
    /// open), ascending, at most `limit`.
    pub fn range_by_score(
        &self,
        min: Bound<f64>,
        max: Bound<f64>,
        limit: usize,
    ) -> Vec<(&[u8], f64)> {
        match &self.0 {
            Repr::Packed { buf, .. } => packed_pairs(buf)
                .map(|(_, _, m, s)| (m, s))
                .skip_while(|(_, s)| !above_min(*s, min))
                .take_while(|(_, s)| below_max(*s, max))
                .take(limit)
                .collect(),
            _ => {
                let s = self.skip_list().expect("a large form");
                s.walk_from(s.first_at_least(min))
                    .take_while(|(_, sc)| below_max(*sc, max))
                    .take(limit)
                    .collect()
            }
        }
    }

    /// ZRANDMEMBER's pick: a uniformly random (member, score), `rand` giving the randomness.
    /// O(log n) by rank.
    pub fn random(&self, rand: &mut dyn FnMut() -> u64) -> Option<(&[u8], f64)> {
        if self.is_empty() {
            return None;
        }
        let i = (rand() % self.len() as u64) as usize;
        self.range_by_rank(i, i + 1).pop()
    }

    /// ZRANDMEMBER's picks ([`super::sample`]): `count` distinct (member, score) pairs, or for
    /// a negative count `-count` that may repeat.
    pub fn sample(&self, count: i64, rand: &mut dyn FnMut() -> u64) -> Vec<(&[u8], f64)> {
        super::sample(
            self.len(),
            count,
            rand,
            |r| self.random(r).expect("the sorted set is not empty"),
            || self.iter(),
            |p| p.0,
        )
    }

    /// ZCOUNT: how many members have a score within `min` and `max`. O(log n) in the large
    /// form.
    pub fn count_by_score(&self, min: Bound<f64>, max: Bound<f64>) -> usize {
        match &self.0 {
            Repr::Packed { buf, .. } => packed_pairs(buf)
                .filter(|(_, _, _, s)| above_min(*s, min) && below_max(*s, max))
                .count(),
            _ => {
                let s = self.skip_list().expect("a large form");
                let (_, first) = s.first_where(|sc| above_min(sc, min));
                let (_, past) = s.first_where(|sc| !below_max(sc, max));
                past.saturating_sub(first)
            }
        }
    }

    /// ZSCAN: from `cursor`, at least `count` (member, score) pairs (or the rest) to `found`,
    /// and the cursor to go on from, 0 at the end. A packed sorted set comes whole, as Redis's
    /// listpack does. See [`super::cursor`] for what a cursor promises.
    pub fn scan(&self, cursor: u64, count: usize, mut found: impl FnMut(&[u8], f64)) -> u64 {
        match &self.0 {
            Repr::Skip(s) => {
                (s.layout).scan(&s.dict, cursor, count, |&b| found(s.member(b), s.score(b)))
            }
            Repr::Packed { .. } | Repr::Unordered(_) => {
                self.iter().into_iter().for_each(|(m, s)| found(m, s));
                0
            }
        }
    }

    /// Every (member, score), ascending.
    pub fn iter(&self) -> Vec<(&[u8], f64)> {
        self.range_by_rank(0, self.len())
    }

    /// Heap bytes this value holds, as requested from the allocator.
    pub fn memory_bytes(&self) -> usize {
        match &self.0 {
            Repr::Packed { buf, .. } => buf.capacity(),
            Repr::Skip(s) => s.memory_bytes(),
            Repr::Unordered(u) => {
                u.scores.allocation_size()
                    + u.member_bytes
                    + u.ordered.get().map_or(0, |s| s.memory_bytes())
            }
        }
    }

    /// Panics unless the skip list's links, spans and counts are consistent.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        match &self.0 {
            Repr::Skip(s) => s.check(),
            Repr::Unordered(u) => {
                let bytes: usize = u.scores.keys().map(|m| m.len()).sum();
                assert_eq!(bytes, u.member_bytes, "member bytes");
                if let Some(s) = u.ordered.get() {
                    s.check();
                }
            }
            Repr::Packed { .. } => {}
        }
    }

    fn convert_to_skip_list(&mut self) {
        let Repr::Packed { buf, .. } = &self.0 else {
            return;
        };
        let mut s = SkipList::new();
        let mut e = Elements::new(buf);
        while let (Some(m), Some(sc)) = (e.next(), e.next()) {
            s.insert(m, score_of(sc));
        }
        self.0 = Repr::Skip(Box::new(s));
    }
}

const NIL: u32 = u32::MAX;
/// The head's block: the first in the arena, with every level.
const HEAD: u32 = 0;
/// Redis's ZSKIPLIST_MAXLEVEL and ZSKIPLIST_P.
const LEVEL_MAX: usize = 32;
const LEVEL_P_PERCENT: u64 = 25;

/// One slot of the skip list's arena. A node is a block of slots: a header, then one link per
/// level. A link leads to another node's block, so moving along a level reads one slot of
/// the next block and nothing else.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// A link: the target's block (NIL at the end). A header: the node's index in `members`.
    to: u32,
    /// A link: nodes it jumps over, counting its target (what ranks are summed from). A
    /// header: the node's number of levels.
    span: u32,
    /// A link: the target's score (0 at NIL), so that a search compares with it without
    /// reading the target, which it needs only on a tie (for the member) or to move on: one
    /// cache miss fewer at every level than Redis's zskiplist. A header: the node's score.
    score: f64,
}

const LINK_NIL: Slot = Slot {
    to: NIL,
    span: 0,
    score: 0.0,
};

/// Redis's zskiplist, its nodes in one arena of [`Slot`]s (a block of 1 + levels slots each,
/// the head's first), with a member index. No backward links: reverse ranges go by rank.
#[derive(Clone, Debug)]
struct SkipList {
    arena: Vec<Slot>,
    /// Freed blocks by number of levels (index 0: one level), reused by the next node of as
    /// many.
    free_blocks: Vec<Vec<u32>>,
    /// Each node's member and block; the head's member is empty.
    members: Vec<(Box<[u8]>, u32)>,
    free_members: Vec<u32>,
    level: usize,
    len: usize,
    /// The live members' bytes, kept as they change so that [`SkipList::memory_bytes`] is
    /// O(1): the sequencer asks after every round of writes.
    member_bytes: usize,
    /// member → block.
    dict: HashTable<u32>,
    /// `dict`'s reorganizations, for ZSCAN's cursors.
    layout: Layout,
    state: RandomState,
    /// xorshift state for node levels. Levels only shape the list, never its contents, so
    /// they need not be reproducible.
    rng: u64,
}

// The level loops index `update` and `rank` in step, as Redis's zskiplist code does;
// iterators over one of them would hide that.
#[allow(clippy::needless_range_loop)]
impl SkipList {
    fn new() -> SkipList {
        let state = RandomState::default();
        let mut arena = vec![LINK_NIL; 1 + LEVEL_MAX];
        arena[0] = Slot {
            to: 0,
            span: LEVEL_MAX as u32,
            score: 0.0,
        };
        SkipList {
            arena,
            free_blocks: Vec::new(),
            members: vec![(Box::new([]), HEAD)],
            free_members: Vec::new(),
            level: 1,
            len: 0,
            member_bytes: 0,
            dict: HashTable::new(),
            layout: Layout::new(state.hash_one(1u64)),
            rng: state.hash_one(0u64) | 1,
            state,
        }
    }

    fn random_level(&mut self) -> usize {
        let mut level = 1;
        loop {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            if level < LEVEL_MAX && self.rng % 100 < LEVEL_P_PERCENT {
                level += 1;
            } else {
                return level;
            }
        }
    }

    /// Block `b`'s link at level `l`.
    fn link(&self, b: u32, l: usize) -> Slot {
        self.arena[b as usize + 1 + l]
    }

    fn link_mut(&mut self, b: u32, l: usize) -> &mut Slot {
        &mut self.arena[b as usize + 1 + l]
    }

    fn fwd(&self, b: u32, l: usize) -> u32 {
        self.link(b, l).to
    }

    fn score(&self, b: u32) -> f64 {
        self.arena[b as usize].score
    }

    fn levels(&self, b: u32) -> usize {
        self.arena[b as usize].span as usize
    }

    fn member(&self, b: u32) -> &[u8] {
        &self.members[self.arena[b as usize].to as usize].0
    }

    /// How the node link `l` leads to compares with (score, member); `None` at the end.
    fn target_cmp(&self, l: Slot, score: f64, member: &[u8]) -> Option<Ordering> {
        (l.to != NIL).then(
            || match l.score.partial_cmp(&score).expect("scores are never NaN") {
                Ordering::Equal => self.member(l.to).cmp(member),
                o => o,
            },
        )
    }

    /// The block of `member`, if present.
    fn find(&self, member: &[u8]) -> Option<u32> {
        self.dict
            .find(self.state.hash_one(member), |&b| self.member(b) == member)
            .copied()
    }

    /// For each level, the last block before (score, member) and its rank (the head's is 0).
    fn path(&self, score: f64, member: &[u8]) -> ([u32; LEVEL_MAX], [u32; LEVEL_MAX]) {
        let mut update = [HEAD; LEVEL_MAX];
        let mut rank = [0u32; LEVEL_MAX];
        let mut x = HEAD;
        let mut r = 0;
        for i in (0..self.level).rev() {
            let mut l = self.link(x, i);
            while self.target_cmp(l, score, member) == Some(Ordering::Less) {
                r += l.span;
                x = l.to;
                l = self.link(x, i);
            }
            update[i] = x;
            rank[i] = r;
        }
        (update, rank)
    }

    /// Links block `b` (its header set, its links not) in order.
    fn link_in(&mut self, b: u32) {
        let (score, levels) = (self.score(b), self.levels(b));
        let (mut update, mut rank) = self.path(score, self.member(b));
        if levels > self.level {
            for i in self.level..levels {
                rank[i] = 0;
                update[i] = HEAD;
                self.link_mut(HEAD, i).span = self.len as u32;
            }
            self.level = levels;
        }
        for i in 0..levels {
            let ul = self.link(update[i], i);
            *self.link_mut(b, i) = Slot {
                span: ul.span - (rank[0] - rank[i]),
                ..ul
            };
            *self.link_mut(update[i], i) = Slot {
                to: b,
                span: rank[0] - rank[i] + 1,
                score,
            };
        }
        for i in levels..self.level {
            self.link_mut(update[i], i).span += 1;
        }
        self.len += 1;
    }

    /// Unlinks block `b`, which is linked; its header stays.
    fn unlink(&mut self, b: u32) {
        let update = self.path(self.score(b), self.member(b)).0;
        assert_eq!(self.fwd(update[0], 0), b, "unlinking a node that is linked");
        for i in 0..self.level {
            if self.fwd(update[i], i) == b {
                let bl = self.link(b, i);
                let ul = self.link_mut(update[i], i);
                *ul = Slot {
                    span: ul.span + bl.span - 1,
                    ..bl
                };
            } else {
                self.link_mut(update[i], i).span -= 1;
            }
        }
        while self.level > 1 && self.fwd(HEAD, self.level - 1) == NIL {
            self.level -= 1;
        }
        self.len -= 1;
    }

    /// Inserts a member that is not present.
    fn insert(&mut self, member: &[u8], score: f64) {
        let levels = self.random_level();
        let node = match self.free_members.pop() {
            Some(n) => n,
            None => {
                self.members.push((Box::new([]), NIL));
                u32::try_from(self.members.len() - 1).expect("fewer than 2^32 members")
            }
        };
        let header = Slot {
            to: node,
            span: levels as u32,
            score,
        };
        let b = match self.free_blocks.get_mut(levels - 1).and_then(Vec::pop) {
            Some(b) => {
                self.arena[b as usize] = header;
                b
            }
            None => {
                let b = u32::try_from(self.arena.len()).expect("an arena under 2^32 slots");
                self.arena.push(header);
                self.arena.extend(std::iter::repeat_n(LINK_NIL, levels));
                b
            }
        };
        self.members[node as usize] = (member.into(), b);
        self.member_bytes += member.len();
        self.link_in(b);
        let hash = self.state.hash_one(member);
        self.layout.before_insert(&self.dict);
        let (arena, members, state) = (&self.arena, &self.members, &self.state);
        self.dict.insert_unique(hash, b, |&b| {
            state.hash_one(&members[arena[b as usize].to as usize].0[..])
        });
    }

    /// Gives present block `b` a new score: moved in place, keeping its levels and its index
    /// entry (Redis's zslUpdateScore reuses its node likewise).
    fn rescore(&mut self, b: u32, score: f64) {
        self.unlink(b);
        self.arena[b as usize].score = score;
        self.link_in(b);
    }

    /// Removes present block `b`.
    fn remove(&mut self, b: u32) {
        self.unlink(b);
        let hash = self.state.hash_one(self.member(b));
        self.dict
            .find_entry(hash, |&x| x == b)
            .unwrap_or_else(|_| panic!("a present member is in the index"))
            .remove();
        let (arena, members, state) = (&self.arena, &self.members, &self.state);
        let shrunk = packed::shrink_if_sparse(&mut self.dict, |&b| {
            state.hash_one(&members[arena[b as usize].to as usize].0[..])
        });
        if shrunk {
            self.layout.changed();
        }
        let (node, levels) = (self.arena[b as usize].to, self.levels(b));
        let member = std::mem::take(&mut self.members[node as usize].0);
        self.member_bytes -= member.len();
        self.free_members.push(node);
        if self.free_blocks.len() < levels {
            self.free_blocks.resize_with(levels, Vec::new);
        }
        self.free_blocks[levels - 1].push(b);
    }

    /// 0-based rank of a present (score, member).
    fn rank(&self, score: f64, member: &[u8]) -> usize {
        let mut x = HEAD;
        let mut rank = 0usize;
        for i in (0..self.level).rev() {
            let mut l = self.link(x, i);
            while self
                .target_cmp(l, score, member)
                .is_some_and(|o| o != Ordering::Greater)
            {
                rank += l.span as usize;
                x = l.to;
                l = self.link(x, i);
            }
            if x != HEAD && self.member(x) == member {
                return rank - 1;
            }
        }
        unreachable!("the member is present")
    }

    /// The block at 0-based rank `r` (< len).
    fn by_rank(&self, r: usize) -> u32 {
        let target = r + 1;
        let mut x = HEAD;
        let mut traversed = 0usize;
        for i in (0..self.level).rev() {
            loop {
                let l = self.link(x, i);
                if l.to == NIL || traversed + l.span as usize > target {
                    break;
                }
                traversed += l.span as usize;
                x = l.to;
            }
            if traversed == target {
                return x;
            }
        }
        unreachable!("rank {r} is below the length {}", self.len)
    }

    /// The first block whose score is within `min`, or NIL.
    fn first_at_least(&self, min: Bound<f64>) -> u32 {
        self.first_where(|s| above_min(s, min)).0
    }

    /// The first block whose score satisfies `at_or_past` (which must hold from some node on,
    /// in order), and its 0-based rank (`len` if there is none). O(log n).
    fn first_where(&self, at_or_past: impl Fn(f64) -> bool) -> (u32, usize) {
        let mut x = HEAD;
        let mut rank = 0usize;
        for i in (0..self.level).rev() {
            loop {
                let l = self.link(x, i);
                if l.to == NIL || at_or_past(l.score) {
                    break;
                }
                rank += l.span as usize;
                x = l.to;
            }
        }
        (self.fwd(x, 0), rank)
    }

    /// Rebuilds the list when most of its members' slots are free, so that a sorted set that
    /// shrank gives its memory back: O(n log n) once per n/2 removals.
    fn compact_if_sparse(&mut self) {
        if self.members.len() > 64 && self.free_members.len() > self.members.len() / 2 {
            let mut fresh = SkipList::new();
            for (m, s) in self.walk_from(self.fwd(HEAD, 0)) {
                fresh.insert(m, s);
            }
            // Every element moved: no cursor of the old list may pass for one of the new.
            fresh.layout = self.layout;
            fresh.layout.changed();
            *self = fresh;
        }
    }

    fn walk_from(&self, mut x: u32) -> impl Iterator<Item = (&[u8], f64)> + '_ {
        std::iter::from_fn(move || {
            (x != NIL).then(|| {
                let (m, s) = (self.member(x), self.score(x));
                x = self.fwd(x, 0);
                (m, s)
            })
        })
    }

    /// Panics unless every link carries its target's score and the span to it, each level is
    /// in order, every member's block names it, and the counts kept (length, bytes) are what
    /// the nodes hold.
    #[cfg(test)]
    fn check(&self) {
        let mut rank_of = std::collections::HashMap::new();
        rank_of.insert(HEAD, 0usize);
        let first = Some(self.fwd(HEAD, 0)).filter(|&x| x != NIL);
        let next = |&x: &u32| Some(self.fwd(x, 0)).filter(|&f| f != NIL);
        for (r, x) in std::iter::successors(first, next).enumerate() {
            rank_of.insert(x, r + 1);
        }
        assert_eq!(rank_of.len(), self.len + 1);
        let mut bytes = 0;
        for (&b, &rank) in &rank_of {
            let node = self.arena[b as usize].to;
            assert_eq!(self.members[node as usize].1, b, "a member names its block");
            bytes += self.member(b).len();
            for i in 0..self.levels(b).min(self.level) {
                let l = self.link(b, i);
                if l.to == NIL {
                    continue;
                }
                assert_eq!(
                    l.score.to_bits(),
                    self.score(l.to).to_bits(),
                    "a link's score"
                );
                assert_eq!(rank_of[&l.to] - rank, l.span as usize, "a span");
                if b != HEAD {
                    let (s, m, t) = (self.score(b), self.member(b), l.to);
                    assert_eq!(cmp(s, m, self.score(t), self.member(t)), Ordering::Less);
                }
            }
        }
        assert_eq!(bytes, self.member_bytes, "member bytes");
        assert_eq!(self.dict.len(), self.len);
    }

    /// O(1).
    fn memory_bytes(&self) -> usize {
        self.arena.capacity() * std::mem::size_of::<Slot>()
            + self.members.capacity() * std::mem::size_of::<(Box<[u8]>, u32)>()
            + self.member_bytes
            + (self.free_blocks.iter().map(|f| f.capacity()).sum::<usize>()
                + self.free_members.capacity())
                * 4
            + self.dict.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every score comes back bit for bit, through the integer form wherever it applies.
    #[test]
    fn packed_scores_round_trip_bit_for_bit() {
        let mut scores = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            127.0,
            128.0,
            -128.0,
            -129.0,
            0.5,
            -2.5,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            (1u64 << 53) as f64,
            (1u64 << 55) as f64,
            -((1u64 << 55) as f64),
            ((1u64 << 55) - 8) as f64,
        ];
        for b in 0..63 {
            scores.push((1i64 << b) as f64);
            scores.push(-((1i64 << b) as f64));
            scores.push(((1i64 << b) - 1) as f64);
        }
        for s in scores {
            let (bytes, n) = encode_score(s);
            assert_eq!(
                score_of(&bytes[..n]).to_bits(),
                s.to_bits(),
                "{s} in {n} bytes"
            );
        }
        assert_eq!(encode_score(0.0).1, 0);
        assert_eq!(encode_score(-0.0).1, 8);
        assert_eq!(encode_score(100.0).1, 1);
        assert_eq!(encode_score(100_000.0).1, 3);
        assert_eq!(encode_score(0.5).1, 8);
    }
}
