//! Byte encodings shared by the table's compact forms: LEB128 lengths and a listpack-like packed
//! buffer of length-prefixed elements.
//!
//! Everything here decodes bytes this module encoded itself, in memory; nothing here ever reads
//! bytes from disk or the network, so a malformed buffer is a bug and is asserted, not returned.
//!
//! Packed buffer layout, one element after another:
//!
//! ```text
//! element := varint(len) bytes[len]
//! varint  := LEB128, low 7 bits first, high bit set on every byte but the last
//! ```

/// Bytes `put_varint` writes for `v`.
pub(crate) fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at the start of `b`: (value, bytes it took).
pub(crate) fn get_varint(b: &[u8]) -> (usize, usize) {
    let mut v = 0usize;
    let mut shift = 0;
    for (i, &byte) in b.iter().enumerate() {
        v |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
        shift += 7;
    }
    unreachable!("truncated varint in a buffer the table encoded itself")
}

/// The element starting at `at`: (its bytes, the offset of the next element).
pub(crate) fn element(buf: &[u8], at: usize) -> (&[u8], usize) {
    let (len, n) = get_varint(&buf[at..]);
    let start = at + n;
    (&buf[start..start + len], start + len)
}

/// Bytes an element of `len` bytes takes in a packed buffer.
pub(crate) fn element_size(len: usize) -> usize {
    varint_len(len) + len
}

pub(crate) fn push_element(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.reserve_exact(element_size(bytes.len()));
    put_varint(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// The elements of a packed buffer, in order.
#[derive(Clone)]
pub(crate) struct Elements<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Elements<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Elements { buf, at: 0 }
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.at >= self.buf.len() {
            return None;
        }
        let (e, next) = element(self.buf, self.at);
        self.at = next;
        Some(e)
    }
}

/// Replaces `buf[range]` with the encoding of `elements`, in a new allocation of exactly the
/// new size: a packed buffer is small by construction, and its spare capacity would be paid per
/// key. (Growing in place and then shrinking would not give it back: mimalloc's realloc keeps a
/// block that shrinks by less than half.)
pub(crate) fn splice(buf: &mut Vec<u8>, range: std::ops::Range<usize>, elements: &[&[u8]]) {
    let added: usize = elements.iter().map(|e| element_size(e.len())).sum();
    let mut out = Vec::with_capacity(buf.len() - range.len() + added);
    out.extend_from_slice(&buf[..range.start]);
    for e in elements {
        put_varint(&mut out, e.len());
        out.extend_from_slice(e);
    }
    out.extend_from_slice(&buf[range.end..]);
    *buf = out;
}

/// A uniformly random element of a hashbrown table, `rand` giving the randomness (so that the
/// sequencer can decide it once and log the result): random buckets until a full one, 1/load
/// tries expected, and after 64 empty ones the n-th element by iteration, O(n).
pub(crate) fn random_in<'a, T>(
    t: &'a hashbrown::HashTable<T>,
    rand: &mut dyn FnMut() -> u64,
) -> Option<&'a T> {
    if t.is_empty() {
        return None;
    }
    let buckets = t.num_buckets() as u64;
    for _ in 0..64 {
        if let Some(x) = t.get_bucket((rand() % buckets) as usize) {
            return Some(x);
        }
    }
    t.iter().nth((rand() % t.len() as u64) as usize)
}

/// The total of `n` lengths estimated from the first 16 of `lens` (a table's, in its order,
/// which is no order in particular): O(1), where summing them all is O(n). Redis's MEMORY
/// USAGE samples likewise.
pub(crate) fn sampled_total(lens: impl Iterator<Item = usize>, n: usize) -> usize {
    let (sum, k) = lens.take(16).fold((0, 0), |(s, k), len| (s + len, k + 1));
    (sum * n).checked_div(k).unwrap_or(0)
}

/// Gives memory back after removals, as Redis shrinks a dict under 1/8 full (hashbrown never
/// shrinks by itself): when a table of more than 64 slots holds under an eighth of its
/// capacity, it shrinks to twice its length, so that growing back costs as much as the shrink.
/// Returns whether it shrank (which moves elements: scan cursors must know).
pub(crate) fn shrink_if_sparse<T>(
    t: &mut hashbrown::HashTable<T>,
    hasher: impl Fn(&T) -> u64,
) -> bool {
    let sparse = t.capacity() > 64 && t.len() < t.capacity() / 8;
    if sparse {
        t.shrink_to(t.len() * 2, hasher);
    }
    sparse
}

/// Redis's test for a member an intset may hold: the canonical decimal form of an `i64` (no
/// sign on zero, no leading zeros, no '+', no spaces), so that rendering it back gives the very
/// same bytes.
pub(crate) fn canonical_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let s = std::str::from_utf8(b).ok()?;
    let v: i64 = s.parse().ok()?;
    (itoa::Buffer::new().format(v).as_bytes() == b).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for v in [
            0usize,
            1,
            127,
            128,
            16383,
            16384,
            u32::MAX as usize,
            usize::MAX,
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(get_varint(&b), (v, b.len()));
        }
    }

    #[test]
    fn only_canonical_decimals_are_integers() {
        for (s, v) in [
            (&b"0"[..], Some(0)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-0", None),
            (b"01", None),
            (b"+1", None),
            (b" 1", None),
            (b"", None),
            (b"1a", None),
        ] {
            assert_eq!(canonical_i64(s), v, "{:?}", String::from_utf8_lossy(s));
        }
    }
}
