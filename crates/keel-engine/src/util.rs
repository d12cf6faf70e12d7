//! Small helpers every role uses: the clock, poisoned-lock recovery and the hash map for client
//! bytes.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Every hash map keyed by client bytes: foldhash is several times cheaper than SipHash on
/// short keys and is seeded at random per map, so clients cannot aim collisions at it.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
