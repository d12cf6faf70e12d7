//! The list value type: a deque of packed chunks (Redis's quicklist).
//!
//! Each chunk is one buffer of at most [`LIST_CHUNK_BYTES_MAX`] bytes (Redis's default
//! `list-max-listpack-size -2`, 8 KiB) holding its elements back to back, each readable from
//! either end:
//!
//! ```text
//! element := varint(len) bytes[len] rvarint(len)
//! rvarint := the bytes of varint(len) in reverse order, so that it reads backwards from the end
//! ```
//!
//! LPUSH, RPUSH, LPOP and RPOP are O(1) amortized (plus a memmove within one chunk at the head);
//! LINDEX and LSET are O(n / elements per chunk + elements per chunk), LRANGE is
//! O(start / elements per chunk + elements returned), LLEN is O(1). An element longer than a
//! chunk gets a chunk of its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};

use super::packed::{get_varint, put_varint, sampled_total, varint_len};

/// Redis's `list-max-listpack-size -2`: chunks of at most 8 KiB.
pub const LIST_CHUNK_BYTES_MAX: usize = 8192;

/// Redis's `list-max-listpack-size` in force: -1 to -5, chunks of at most 4, 8, 16, 32 or 64 KiB;
/// a positive n, at most n elements a chunk (and at most 8 KiB). One setting for the whole
/// process, as Redis's is for its server.
static CHUNK_LIMIT: AtomicI64 = AtomicI64::new(-2);

/// See [`CHUNK_LIMIT`].
pub fn list_chunk_limit() -> i64 {
    CHUNK_LIMIT.load(Ordering::Relaxed)
}

/// Sets [`list_chunk_limit`]; false (and nothing changes) unless `n` is -5 to -1 or positive.
/// Chunks already built keep their size.
pub fn set_list_chunk_limit(n: i64) -> bool {
    let ok = n >= -5 && n != 0;
    if ok {
        CHUNK_LIMIT.store(n, Ordering::Relaxed);
    }
    ok
}

/// The most bytes and elements a chunk holds under the limit in force.
fn chunk_bounds() -> (usize, usize) {
    match list_chunk_limit() {
        n if n < 0 => (4096 << (-n - 1), usize::MAX),
        n => (LIST_CHUNK_BYTES_MAX, n as usize),
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListValue {
    chunks: VecDeque<Chunk>,
    len: usize,
}

#[derive(Clone, Debug, Default)]
struct Chunk {
    buf: Vec<u8>,
    len: usize,
}

fn element_size(len: usize) -> usize {
    2 * varint_len(len) + len
}

fn encode(v: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    put_varint(out, v.len());
    let n = out.len() - start;
    out.extend_from_slice(v);
    for i in (start..start + n).rev() {
        out.push(out[i]);
    }
}

/// The element starting at `at`: (bytes, offset past it).
fn forward(buf: &[u8], at: usize) -> (&[u8], usize) {
    let (len, n) = get_varint(&buf[at..]);
    let start = at + n;
    (&buf[start..start + len], start + len + n)
}

/// The element ending at `end`: (bytes, its start offset).
fn backward(buf: &[u8], end: usize) -> (&[u8], usize) {
    let mut len = 0usize;
    let mut n = 0;
    loop {
        let byte = buf[end - 1 - n];
        len |= usize::from(byte & 0x7f) << (7 * n);
        n += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let data_end = end - n;
    let data_start = data_end - len;
    (&buf[data_start..data_end], data_start - n)
}

impl Chunk {
    /// Room for `extra` more bytes: capacity doubles, as a `Vec`'s would, but never past the
    /// chunk's limit, so that full chunks carry almost no spare capacity.
    fn grow(&mut self, extra: usize) {
        let need = self.buf.len() + extra;
        if self.buf.capacity() < need {
            let want = (self.buf.capacity() * 2)
                .max(need)
                .min(chunk_bounds().0.max(need));
            self.buf.reserve_exact(want - self.buf.len());
        }
    }

    fn fits(&self, v: &[u8]) -> bool {
        let (bytes, elements) = chunk_bounds();
        self.buf.len() + element_size(v.len()) <= bytes && self.len < elements
    }

    /// Byte offset of element `i`.
    fn offset(&self, i: usize) -> usize {
        let mut at = 0;
        for _ in 0..i {
            at = forward(&self.buf, at).1;
        }
        at
    }

    fn shrink_if_sparse(&mut self) {
        if self.buf.capacity() > 2 * self.buf.len() + 64 {
            self.buf.shrink_to_fit();
        }
    }
}

impl ListValue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the list fits one chunk (what Redis 7.2 calls the listpack encoding; past one
    /// chunk, a quicklist).
    pub fn is_single_chunk(&self) -> bool {
        self.chunks.len() <= 1
    }

    /// LLEN.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// LPUSH of one element.
    pub fn push_front(&mut self, v: &[u8]) {
        if !self.chunks.front().is_some_and(|c| c.fits(v)) {
            self.chunks.push_front(Chunk::default());
        }
        let c = self.chunks.front_mut().expect("pushed above");
        // Encoded at the end, then rotated to the front: no buffer of its own.
        let (old, size) = (c.buf.len(), element_size(v.len()));
        c.grow(size);
        encode(v, &mut c.buf);
        c.buf.rotate_right(size);
        debug_assert_eq!(c.buf.len(), old + size);
        c.len += 1;
        self.len += 1;
    }

    /// RPUSH of one element.
    pub fn push_back(&mut self, v: &[u8]) {
        if !self.chunks.back().is_some_and(|c| c.fits(v)) {
            self.chunks.push_back(Chunk::default());
        }
        let c = self.chunks.back_mut().expect("pushed above");
        c.grow(element_size(v.len()));
        encode(v, &mut c.buf);
        c.len += 1;
        self.len += 1;
    }

    /// LPOP of one element, which goes uncopied (a decision read it before); false if the
    /// list is empty.
    pub fn pop_front(&mut self) -> bool {
        let Some(c) = self.chunks.front_mut() else {
            return false;
        };
        let next = forward(&c.buf, 0).1;
        c.buf.drain(..next);
        c.len -= 1;
        if c.len == 0 {
            self.chunks.pop_front();
        } else {
            c.shrink_if_sparse();
        }
        self.len -= 1;
        true
    }

    /// RPOP of one element, as [`ListValue::pop_front`].
    pub fn pop_back(&mut self) -> bool {
        let Some(c) = self.chunks.back_mut() else {
            return false;
        };
        let start = backward(&c.buf, c.buf.len()).1;
        c.buf.truncate(start);
        c.len -= 1;
        if c.len == 0 {
            self.chunks.pop_back();
        } else {
            c.shrink_if_sparse();
        }
        self.len -= 1;
        true
    }

    /// (chunk index, element index within it) of element `i`, walking from the nearer end.
    fn locate(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.len {
            return None;
        }
        if i < self.len / 2 {
            let mut i = i;
            for (ci, c) in self.chunks.iter().enumerate() {
                if i < c.len {
                    return Some((ci, i));
                }
                i -= c.len;
            }
        } else {
            let mut from_end = self.len - 1 - i;
            for (ci, c) in self.chunks.iter().enumerate().rev() {
                if from_end < c.len {
                    return Some((ci, c.len - 1 - from_end));
                }
                from_end -= c.len;
            }
        }
        unreachable!("chunk lengths add up to the list's length")
    }

    /// LINDEX with a non-negative index.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (ci, ei) = self.locate(i)?;
        let c = &self.chunks[ci];
        Some(forward(&c.buf, c.offset(ei)).0)
    }

    /// LSET with a non-negative index; false if out of range.
    pub fn set(&mut self, i: usize, v: &[u8]) -> bool {
        let Some((ci, ei)) = self.locate(i) else {
            return false;
        };
        let c = &mut self.chunks[ci];
        let at = c.offset(ei);
        let end = forward(&c.buf, at).1;
        let mut e = Vec::with_capacity(element_size(v.len()));
        encode(v, &mut e);
        replace_bytes(&mut c.buf, at, end, &e);
        true
    }

    /// LTRIM once the caller has turned Redis's inclusive, possibly negative bounds into a
    /// half-open range: keeps elements `start..end` (clamped), drops the rest. O(removed /
    /// elements per chunk + elements per chunk): whole chunks go at once.
    pub fn trim(&mut self, start: usize, end: usize) {
        let end = end.min(self.len);
        if start >= end {
            *self = ListValue::new();
            return;
        }
        let mut drop_back = self.len - end;
        while let Some(c) = self.chunks.back_mut() {
            if c.len <= drop_back {
                drop_back -= c.len;
                self.len -= c.len;
                self.chunks.pop_back();
            } else {
                if drop_back > 0 {
                    let keep = c.len - drop_back;
                    let off = c.offset(keep);
                    c.buf.truncate(off);
                    c.len = keep;
                    self.len -= drop_back;
                    c.shrink_if_sparse();
                }
                break;
            }
        }
        let mut drop_front = start;
        while let Some(c) = self.chunks.front_mut() {
            if c.len <= drop_front {
                drop_front -= c.len;
                self.len -= c.len;
                self.chunks.pop_front();
            } else {
                if drop_front > 0 {
                    let off = c.offset(drop_front);
                    c.buf.drain(..off);
                    c.len -= drop_front;
                    self.len -= drop_front;
                    c.shrink_if_sparse();
                }
                break;
            }
        }
    }

    /// LREM: removes elements equal to `v`, at most `count` of them from the head if `count` is
    /// positive, from the tail if negative, all if zero. Returns how many. O(n).
    pub fn remove_matching(&mut self, v: &[u8], count: i64) -> usize {
        let mut budget = if count == 0 {
            usize::MAX
        } else {
            count.unsigned_abs() as usize
        };
        let mut removed = 0;
        let order: Vec<usize> = if count < 0 {
            (0..self.chunks.len()).rev().collect()
        } else {
            (0..self.chunks.len()).collect()
        };
        for ci in order {
            if budget == 0 {
                break;
            }
            let c = &mut self.chunks[ci];
            let mut spans = Vec::with_capacity(c.len);
            let mut at = 0;
            while at < c.buf.len() {
                let (e, next) = forward(&c.buf, at);
                spans.push((at, next, e == v));
                at = next;
            }
            let mut drop = vec![false; spans.len()];
            let idx: Vec<usize> = if count < 0 {
                (0..spans.len()).rev().collect()
            } else {
                (0..spans.len()).collect()
            };
            for i in idx {
                if budget == 0 {
                    break;
                }
                if spans[i].2 {
                    drop[i] = true;
                    budget -= 1;
                }
            }
            let n = drop.iter().filter(|d| **d).count();
            if n == 0 {
                continue;
            }
            let mut buf = Vec::with_capacity(c.buf.len());
            for (i, (a, b, _)) in spans.iter().enumerate() {
                if !drop[i] {
                    buf.extend_from_slice(&c.buf[*a..*b]);
                }
            }
            c.buf = buf;
            c.len -= n;
            removed += n;
        }
        self.chunks.retain(|c| c.len > 0);
        self.len -= removed;
        removed
    }

    /// LINSERT: puts `v` before or after the first element equal to `pivot`; false if there is
    /// none. O(n) to find the pivot; a chunk that would overflow is split there.
    pub fn insert_at_pivot(&mut self, pivot: &[u8], after: bool, v: &[u8]) -> bool {
        let mut found = None;
        'chunks: for (ci, c) in self.chunks.iter().enumerate() {
            let mut at = 0;
            let mut ei = 0;
            while at < c.buf.len() {
                let (e, next) = forward(&c.buf, at);
                if e == pivot {
                    found = Some((ci, ei + usize::from(after), if after { next } else { at }));
                    break 'chunks;
                }
                at = next;
                ei += 1;
            }
        }
        let Some((ci, ei, off)) = found else {
            return false;
        };
        let mut e = Vec::with_capacity(element_size(v.len()));
        encode(v, &mut e);
        let c = &mut self.chunks[ci];
        if c.fits(v) {
            c.grow(e.len());
            replace_bytes(&mut c.buf, off, off, &e);
            c.len += 1;
        } else {
            // Split at the insertion point: [head] [v] [tail], dropping an empty side.
            let tail = Chunk {
                buf: c.buf.split_off(off),
                len: c.len - ei,
            };
            c.len = ei;
            c.buf.shrink_to_fit();
            let mid = Chunk { len: 1, buf: e };
            let mut at = ci + 1;
            if c.len == 0 {
                self.chunks.remove(ci);
                at = ci;
            }
            self.chunks.insert(at, mid);
            if tail.len > 0 {
                self.chunks.insert(at + 1, tail);
            }
        }
        self.len += 1;
        true
    }

    /// Elements `start..end` (clamped to the list), in order: LRANGE once the caller has turned
    /// Redis's inclusive, possibly negative bounds into a half-open range.
    pub fn range(&self, start: usize, end: usize) -> impl Iterator<Item = &[u8]> + '_ {
        let end = end.min(self.len);
        let take = end.saturating_sub(start);
        let (first_chunk, skip) = self.locate(start).unwrap_or((self.chunks.len(), 0));
        self.chunks
            .range(first_chunk..)
            .enumerate()
            .flat_map(move |(n, c)| {
                let mut at = if n == 0 { c.offset(skip) } else { 0 };
                std::iter::from_fn(move || {
                    (at < c.buf.len()).then(|| {
                        let (v, next) = forward(&c.buf, at);
                        at = next;
                        v
                    })
                })
            })
            .take(take)
    }

    /// Every element, head to tail.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.range(0, self.len)
    }

    /// Heap bytes this value holds, as requested from the allocator.
    pub fn memory_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self.chunks.iter().map(|c| c.buf.capacity()).sum::<usize>()
    }

    /// [`memory_bytes`](Self::memory_bytes) in O(1): the chunks' buffers are estimated from
    /// the first 16 (the sequencer sizes a hot list after every round of writes to it).
    pub fn memory_estimate(&self) -> usize {
        let caps = self.chunks.iter().map(|c| c.buf.capacity());
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + sampled_total(caps, self.chunks.len())
    }
}

/// `buf[at..end]` replaced by `e`, as `Vec::splice` does, in block copies: `splice` writes its
/// replacement a byte at a time, about 1,500 instructions for one LPUSH of a short element.
fn replace_bytes(buf: &mut Vec<u8>, at: usize, end: usize, e: &[u8]) {
    let (old, removed) = (buf.len(), end - at);
    if e.len() >= removed {
        let grow = e.len() - removed;
        buf.resize(old + grow, 0);
        buf.copy_within(end..old, end + grow);
    } else {
        let shrink = removed - e.len();
        buf.copy_within(end..old, end - shrink);
        buf.truncate(old - shrink);
    }
    buf[at..at + e.len()].copy_from_slice(e);
}

#[cfg(test)]
mod replace_tests {
    use super::replace_bytes;

    /// Against `Vec::splice` over every range of a short buffer and replacements shorter,
    /// as long and longer.
    #[test]
    fn replace_bytes_is_splice() {
        let buf: Vec<u8> = (0..9).collect();
        for at in 0..=buf.len() {
            for end in at..=buf.len() {
                for n in 0..12 {
                    let e: Vec<u8> = (100..100 + n).collect();
                    let mut want = buf.clone();
                    want.splice(at..end, e.iter().copied());
                    let mut got = buf.clone();
                    replace_bytes(&mut got, at, end, &e);
                    assert_eq!(got, want, "at {at}, end {end}, {n} bytes");
                }
            }
        }
    }
}
