//! Small helpers every role uses: the clock, poisoned-lock recovery and the hash map for client
//! bytes.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Every hash map keyed by client bytes: foldhash is several times cheaper than SipHash on
/// short keys and is seeded at random per map, so clients cannot aim collisions at it.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// An integer's decimal text.
pub(crate) fn int_text(i: impl itoa::Integer) -> Bytes {
    Bytes::copy_from_slice(itoa::Buffer::new().format(i).as_bytes())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pseudo-random sequence (splitmix64) from a seed. For a decision that must come out the
/// same on every replica (SPOP in a cluster), the seed comes from the transaction's time, the
/// key and its version ([`Pick::new`]); for a read's picks, from the caller.
pub(crate) struct Pick(pub(crate) u64);

impl Pick {
    pub(crate) fn new(now: u64, key: &[u8], version: keel_wal::Lsn) -> Pick {
        let mut seed = now ^ version.rotate_left(32);
        for chunk in key.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            seed = seed.rotate_left(5) ^ u64::from_le_bytes(b);
        }
        Pick(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Copies of many byte strings in one buffer, handed out as slices of it: a read that returns
/// n members (LRANGE, HGETALL, SMEMBERS, ZRANGE) makes one allocation instead of n. A slice
/// keeps the whole buffer alive, so this is for results that are written out and dropped.
#[derive(Default)]
pub(crate) struct Copies {
    buf: bytes::BytesMut,
    ends: Vec<usize>,
}

impl Copies {
    pub(crate) fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        self.ends.push(self.buf.len());
    }

    pub(crate) fn of<B: AsRef<[u8]>>(items: impl IntoIterator<Item = B>) -> Vec<Option<Bytes>> {
        let mut c = Copies::default();
        for b in items {
            c.push(b.as_ref());
        }
        c.finish()
    }

    pub(crate) fn finish(self) -> Vec<Option<Bytes>> {
        let buf = self.buf.freeze();
        let mut start = 0;
        (self.ends.into_iter())
            .map(|end| Some(buf.slice(std::mem::replace(&mut start, end)..end)))
            .collect()
    }
}

/// A scan's result: `scan` pushes the elements it visits and returns the next cursor, which
/// comes first, as text, before them.
pub(crate) fn scan_result(scan: impl FnOnce(&mut Copies) -> u64) -> crate::WriteResult {
    let mut found = Copies::default();
    found.push(b"");
    let next = scan(&mut found);
    let mut v = found.finish();
    v[0] = Some(int_text(next));
    crate::WriteResult::Values(v)
}

#[cfg(test)]
mod tests {
    use super::Copies;
    use std::borrow::Cow;

    #[test]
    fn copies_are_the_items_in_order_empty_ones_too() {
        let items: Vec<Cow<[u8]>> = vec![
            Cow::Borrowed(b"a"),
            Cow::Borrowed(b""),
            Cow::Owned(b"12345".to_vec()),
            Cow::Borrowed(b""),
            Cow::Borrowed(b"xyz"),
        ];
        let got = Copies::of(items.iter());
        let want: Vec<Option<&[u8]>> = items.iter().map(|c| Some(&c[..])).collect();
        assert_eq!(got.iter().map(|b| b.as_deref()).collect::<Vec<_>>(), want);
        assert!(Copies::of(Vec::<&[u8]>::new()).is_empty());
    }
}
