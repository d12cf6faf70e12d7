//! HSCAN, SSCAN and ZSCAN cursors over a `hashbrown` table.
//!
//! Redis promises that a scan returns every element present from its first call to its last at
//! least once, and that the cursor is just a number. A table's buckets give that for free while
//! the table keeps its layout: an element stays in its bucket until removed, so a cursor can be
//! the next bucket to visit. Only a reorganization (growing, shrinking, or hashbrown's rehash in
//! place, which all happen only in an insert into a full table or a shrink) moves elements.
//! [`Layout`] counts those; a cursor carries the count it was issued under, and a cursor from
//! another layout starts the scan over. Elements may then come twice, which Redis allows, and
//! none is missed.
//!
//! A cursor is `layout tag << 40 | next bucket`: the tag is the count's low 24 bits, started at a
//! random value per table so that a cursor from another table (or another process, after a
//! restart) is unlikely to be taken for one of this table's. 0 is the start and the end.

use std::hash::BuildHasher;

use hashbrown::HashTable;

const INDEX_BITS: u32 = 40;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const TAG_MASK: u32 = (1 << 24) - 1;

/// A hash or set table's hasher and [`Layout`], in the 8 bytes foldhash's `RandomState` takes
/// alone, so that a collection's slot in the keyspace stays 48 bytes. The seed is foldhash's
/// random process-wide seed and 32 random bits of the table's own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableState {
    seed: u32,
    pub(crate) layout: Layout,
}

impl TableState {
    pub(crate) fn new() -> TableState {
        let r = foldhash::fast::RandomState::default().hash_one(0u8);
        TableState {
            seed: r as u32,
            layout: Layout::new(r >> 32),
        }
    }
}

impl BuildHasher for TableState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        let seed = u64::from(self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        foldhash::fast::FoldHasher::with_seed(seed, foldhash::SharedSeed::global_random())
    }
}

/// The number of reorganizations a table went through (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout(u32);

impl Layout {
    /// A new table's layout, from a random `seed`.
    pub(crate) fn new(seed: u64) -> Layout {
        Layout(seed as u32)
    }

    /// Call before inserting into `t`: an insert into a full table reorganizes it.
    pub(crate) fn before_insert<T>(&mut self, t: &HashTable<T>) {
        if t.len() >= t.capacity() {
            self.changed();
        }
    }

    /// Call after anything else that may move elements (a shrink).
    pub(crate) fn changed(&mut self) {
        self.0 = self.0.wrapping_add(1);
    }

    /// Visits buckets of `t` from `cursor` until `count` elements have been passed to `f` or the
    /// table ends, and returns the cursor to continue from (0: the scan is over).
    pub(crate) fn scan<T>(
        &self,
        t: &HashTable<T>,
        cursor: u64,
        count: usize,
        mut f: impl FnMut(&T),
    ) -> u64 {
        let buckets = t.num_buckets();
        let tag = self.0 & TAG_MASK;
        let from = (cursor >> INDEX_BITS) as u32 == tag && cursor & INDEX_MASK <= buckets as u64;
        let mut i = if from {
            (cursor & INDEX_MASK) as usize
        } else {
            0
        };
        let mut found = 0;
        while i < buckets && found < count.max(1) {
            if let Some(x) = t.get_bucket(i) {
                f(x);
                found += 1;
            }
            i += 1;
        }
        if i >= buckets {
            0
        } else {
            (u64::from(tag) << INDEX_BITS) | i as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn hash(x: &u64) -> u64 {
        x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn insert(t: &mut HashTable<u64>, l: &mut Layout, x: u64) {
        l.before_insert(t);
        t.insert_unique(hash(&x), x, hash);
    }

    /// Every element present for the whole scan comes back, whatever is inserted and removed
    /// between the calls, growth and shrinking included.
    #[test]
    fn a_scan_returns_every_element_present_throughout() {
        for seed in 0..40u64 {
            let mut t = HashTable::new();
            let mut l = Layout::new(seed);
            let stay: Vec<u64> = (0..300).map(|i| i * 2).collect();
            for &x in &stay {
                insert(&mut t, &mut l, x);
            }
            let (mut seen, mut cursor, mut calls) = (BTreeSet::new(), 0u64, 0);
            let mut extra = 1_000_001u64;
            loop {
                cursor = l.scan(&t, cursor, 1 + (seed as usize % 7), |&x| {
                    seen.insert(x);
                });
                calls += 1;
                // Between calls: grow past a resize, or remove extras and shrink. (A table that
                // grows faster than the scan moves restarts it without end, in Redis too.)
                if calls % 3 == 0 && calls < 30 {
                    for _ in 0..(seed * 13 % 200) {
                        insert(&mut t, &mut l, extra);
                        extra += 2;
                    }
                } else if let Some(&x) = t.iter().find(|&&x| x > 1_000_000) {
                    let h = hash(&x);
                    t.find_entry(h, |&y| y == x).ok().unwrap().remove();
                    if super::super::packed::shrink_if_sparse(&mut t, hash) {
                        l.changed();
                    }
                }
                if cursor == 0 || calls > 100_000 {
                    break;
                }
            }
            assert_eq!(cursor, 0, "seed {seed}: the scan ends");
            for x in &stay {
                assert!(seen.contains(x), "seed {seed}: {x} was missed");
            }
        }
    }

    #[test]
    fn cursors_of_another_layout_or_out_of_range_start_over() {
        let mut t = HashTable::new();
        let mut l = Layout::new(7);
        for x in 0..100 {
            insert(&mut t, &mut l, x);
        }
        let c = l.scan(&t, 0, 10, |_| {});
        assert_ne!(c, 0);
        let mut n = 0;
        let other = Layout::new(8);
        assert_eq!(other.scan(&t, c, usize::MAX, |_| n += 1), 0);
        assert_eq!(n, 100, "a stranger's cursor scans from the start");
        n = 0;
        l.scan(&t, c | INDEX_MASK, usize::MAX, |_| n += 1);
        assert_eq!(n, 100, "a bucket past the end scans from the start");
        let empty: HashTable<u64> = HashTable::new();
        assert_eq!(l.scan(&empty, 0, 10, |_| unreachable!()), 0);
    }

    /// The values' own scans, through growth and shrinking between calls: HSCAN, SSCAN and
    /// ZSCAN each miss nothing (a shrink without its count misses dozens here).
    #[test]
    fn hash_set_and_zset_scans_survive_growth_and_shrinking() {
        use crate::table::{HashValue, SetValue, ZSetValue};
        let name = |x: u64| format!("f{x}").into_bytes();
        for grow_first in [true, false] {
            let (small, big) = (2000u64, 22000u64);
            let (mut h, mut s, mut z) = (HashValue::new(), SetValue::new(), ZSetValue::new());
            for x in 0..if grow_first { small } else { big } {
                h.insert(&name(x), b"v");
                s.insert(&name(x));
                z.insert(&name(x), x as f64);
            }
            let mut seen = [BTreeSet::new(), BTreeSet::new(), BTreeSet::new()];
            // Each scan's cursor; `None` once it has come back to 0.
            let mut cursors = [Some(0u64); 3];
            for call in 0.. {
                let [ch, cs, cz] = &mut cursors;
                let [sh, ss, sz] = &mut seen;
                if let Some(c) = ch {
                    *ch = Some(h.scan(*c, 50, |f, _| {
                        sh.insert(f.to_vec());
                    }));
                }
                if let Some(c) = cs {
                    *cs = Some(s.scan(*c, 50, |m| {
                        ss.insert(m.to_vec());
                    }));
                }
                if let Some(c) = cz {
                    *cz = Some(z.scan(*c, 50, |m, _| {
                        sz.insert(m.to_vec());
                    }));
                }
                for c in &mut cursors {
                    if *c == Some(0) {
                        *c = None;
                    }
                }
                if call == 3 {
                    for x in small..big {
                        if grow_first {
                            h.insert(&name(x), b"v");
                            s.insert(&name(x));
                            z.insert(&name(x), x as f64);
                        } else {
                            h.remove(&name(x));
                            s.remove(&name(x));
                            z.remove(&name(x));
                        }
                    }
                }
                if cursors == [None; 3] {
                    break;
                }
            }
            for (i, seen) in seen.iter().enumerate() {
                let missed = (0..small).filter(|&x| !seen.contains(&name(x))).count();
                assert_eq!(missed, 0, "type {i}, growing first: {grow_first}");
            }
        }
    }
}
