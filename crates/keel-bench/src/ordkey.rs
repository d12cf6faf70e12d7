//! The key of the engine's former ordered map, kept here for `keyspace-memory`'s comparison:
//! the key's bytes, plus its first 16 bytes held inline.
//!
//! Inserting into the ordered map compares the new key with a dozen or more keys on the way
//! down. With plain `Bytes` keys each comparison follows a pointer to a key stored elsewhere on
//! the heap, and with a million keys most of those are cache misses: they were a quarter of a
//! SET's CPU. The inline head decides almost every comparison where the keys differ in their
//! first 16 bytes, without leaving the tree node.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Deref;

use bytes::Bytes;

/// A key of the engine's ordered map; it dereferences to the key's bytes.
#[derive(Clone, Debug)]
pub struct Key {
    /// The first 16 bytes, big-endian, zero-padded: comparing heads orders keys as their bytes
    /// do whenever the heads differ (a zero pad sorts a shorter key first, as a prefix sorts).
    head: u128,
    bytes: Bytes,
}

impl Key {
    pub fn new(bytes: Bytes) -> Key {
        let mut h = [0u8; 16];
        let n = bytes.len().min(16);
        h[..n].copy_from_slice(&bytes[..n]);
        Key {
            head: u128::from_be_bytes(h),
            bytes,
        }
    }
}

impl Deref for Key {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Lookups and ranges by `&[u8]` order exactly as `Key`s do, as `Borrow` requires.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.bytes
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.head == other.head && self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.bytes.cmp(&other.bytes))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &[u8]) -> Key {
        Key::new(Bytes::copy_from_slice(b))
    }

    /// The order must be the bytes' order, or lookups by `&[u8]` would miss keys.
    #[test]
    fn orders_as_the_bytes_do() {
        let samples: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"a\0\0",
            b"ab",
            b"key:000000000001",
            b"key:000000000001\0",
            b"key:000000000001a",
            b"key:000000000001b",
            b"key:000000000002",
            b"key:0000000000010",
            b"\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ];
        for a in &samples {
            for b in &samples {
                assert_eq!(key(a).cmp(&key(b)), a.cmp(b), "{a:?} vs {b:?}");
                assert_eq!(key(a) == key(b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    /// Random keys over the bytes where padding matters (0, 1, 0xff) and lengths around 16: the
    /// map sorts them as the bytes sort, and finds each by its bytes.
    #[test]
    fn a_map_of_random_keys_sorts_and_finds_them_by_their_bytes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut keys: Vec<Vec<u8>> = (0..3000)
            .map(|_| {
                let len = (next() % 22) as usize;
                (0..len)
                    .map(|_| [0u8, 1, b'a', 0xff][(next() % 4) as usize])
                    .collect()
            })
            .collect();
        let mut map = imbl::OrdMap::new();
        for (i, k) in keys.iter().enumerate() {
            map.insert(key(k), i);
        }
        keys.sort();
        keys.dedup();
        let in_map: Vec<&[u8]> = map.keys().map(|k| &k[..]).collect();
        let sorted: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        assert_eq!(in_map, sorted);
        for k in &keys {
            assert!(map.get(&k[..]).is_some(), "{k:?} not found by its bytes");
        }
    }
}
