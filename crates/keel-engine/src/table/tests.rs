//! Model tests: every structure against a `BTreeMap`/`BTreeSet`/`VecDeque` model, over seeded
//! random operation sequences. A failure names its seed; rerun one seed by setting
//! `KEEL_TABLE_SEED`. (proptest is not a dependency of the workspace; these do the same job
//! without shrinking.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use super::*;

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut p = crate::util::Pick(self.0);
        let x = p.next();
        self.0 = p.0;
        x
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// Bytes of a length chosen to hit the edges: empty, around the packed forms' 64-byte
    /// limit, and large; drawn from a small alphabet with 0 and 0xff so keys collide often.
    pub(crate) fn bytes(&mut self, alphabet: usize) -> Vec<u8> {
        let len = match self.below(10) {
            0 => 0,
            1 => 63 + self.below(3) as usize,
            2 if self.chance(10) => 5000 + self.below(12000) as usize,
            _ => self.below(4) as usize,
        };
        (0..len)
            .map(|_| [0u8, 0xff, b'a', b'1', b'-', b'7'][self.below(alphabet as u64) as usize])
            .collect()
    }
}

pub(crate) fn seeds(n: u64) -> Vec<u64> {
    match std::env::var("KEEL_TABLE_SEED") {
        Ok(s) => vec![s.parse().expect("KEEL_TABLE_SEED is a number")],
        Err(_) => (0..n).collect(),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum MValue {
    String(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    List(VecDeque<Vec<u8>>),
    ZSet(BTreeMap<Vec<u8>, f64>),
    Stream(StreamValue),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MEntry {
    pub(crate) value: MValue,
    pub(crate) version: u64,
    pub(crate) expiry: Option<u64>,
}

pub(crate) fn observe(v: ValueRef<'_>) -> MValue {
    match v {
        ValueRef::String(s) => MValue::String(s.to_vec()),
        ValueRef::Hash(h) => {
            let m: BTreeMap<_, _> = h.iter().map(|(f, v)| (f.to_vec(), v.to_vec())).collect();
            assert_eq!(m.len(), h.len(), "hash iterates each field once");
            MValue::Hash(m)
        }
        ValueRef::Set(s) => {
            let m: BTreeSet<_> = s.iter().map(|m| m.into_owned()).collect();
            assert_eq!(m.len(), s.len(), "set iterates each member once");
            MValue::Set(m)
        }
        ValueRef::List(l) => {
            let m: VecDeque<_> = l.iter().map(|e| e.to_vec()).collect();
            assert_eq!(m.len(), l.len());
            MValue::List(m)
        }
        ValueRef::ZSet(z) => {
            let m: BTreeMap<_, _> = z.iter().into_iter().map(|(m, s)| (m.to_vec(), s)).collect();
            assert_eq!(m.len(), z.len());
            MValue::ZSet(m)
        }
        ValueRef::Stream(x) => MValue::Stream(x.clone()),
    }
}

pub(crate) fn build(m: &MValue) -> Value {
    match m {
        MValue::String(s) => Value::String(s.clone()),
        MValue::Hash(h) => {
            let mut x = HashValue::new();
            for (f, v) in h {
                x.insert(f, v);
            }
            Value::Hash(x)
        }
        MValue::Set(s) => {
            let mut x = SetValue::new();
            for m in s {
                x.insert(m);
            }
            Value::Set(x)
        }
        MValue::List(l) => {
            let mut x = ListValue::new();
            for e in l {
                x.push_back(e);
            }
            Value::List(x)
        }
        MValue::ZSet(z) => {
            let mut x = ZSetValue::new();
            for (m, s) in z {
                x.insert(m, *s);
            }
            Value::ZSet(x)
        }
        MValue::Stream(x) => Value::Stream(x.clone()),
    }
}

pub(crate) fn random_value(r: &mut Rng) -> MValue {
    let n = r.below(6) as usize;
    match r.below(6) {
        0 => MValue::String(r.bytes(6)),
        5 => {
            // Entries at increasing IDs, maybe none: a stream may be empty.
            let mut x = StreamValue::new();
            for i in 0..n as u64 {
                x.add(
                    StreamId::new(i + 1, r.below(3)),
                    &[r.bytes(4).into(), r.bytes(6).into()],
                );
            }
            x.entries_added += r.below(4);
            x.max_deleted = StreamId::new(0, r.below(2));
            MValue::Stream(x)
        }
        4 => MValue::ZSet((0..n).map(|_| (r.bytes(6), r.below(5) as f64)).collect()),
        1 => MValue::Hash((0..n).map(|_| (r.bytes(6), r.bytes(6))).collect()),
        2 => MValue::Set((0..n).map(|_| r.bytes(6)).collect()),
        _ => MValue::List((0..n).map(|_| r.bytes(6)).collect()),
    }
}

pub(crate) fn check_table(t: &Table, model: &BTreeMap<Vec<u8>, MEntry>, seed: u64) {
    assert_eq!(t.len(), model.len(), "seed {seed}: len");
    for (k, e) in model {
        let got = t
            .get(k)
            .unwrap_or_else(|| panic!("seed {seed}: {k:?} missing"));
        assert_eq!(got.key(), &k[..]);
        let seen = MEntry {
            value: observe(got.value()),
            version: got.version(),
            expiry: got.expires_at_ms(),
        };
        assert_eq!(&seen, e, "seed {seed}: key {k:?}");
    }
    let mut keys: Vec<Vec<u8>> = t.iter().map(|e| e.key().to_vec()).collect();
    keys.sort();
    assert_eq!(
        keys,
        model.keys().cloned().collect::<Vec<_>>(),
        "seed {seed}: iter"
    );
}

/// Inserts, replacements (string over collection and back), removals, takes and expiry changes
/// on binary keys (empty ones too), with empty, 64-byte and multi-KiB values; few shards so
/// that shards hold many keys and grow, and on some seeds split.
#[test]
fn the_table_matches_a_map_model() {
    for seed in seeds(60) {
        let mut r = Rng(seed);
        // Some seeds split shards often.
        let split_at = [4, 16, SHARD_SPLIT_KEYS][(seed % 3) as usize];
        let mut t = Table::with_split_at(1 + (seed % 4) as u32, split_at);
        let mut model: BTreeMap<Vec<u8>, MEntry> = BTreeMap::new();
        let mut lsn = 0;
        for _ in 0..400 {
            lsn += 1;
            let key = r.bytes(4);
            match r.below(10) {
                0..=3 => {
                    let value = random_value(&mut r);
                    let expiry = r.chance(30).then(|| r.next());
                    let replaced = if r.chance(50) {
                        if let MValue::String(s) = &value {
                            t.insert_string(&key, s, expiry, lsn)
                        } else {
                            t.insert(&key, build(&value), expiry, lsn)
                        }
                    } else {
                        t.insert(&key, build(&value), expiry, lsn)
                    };
                    let old = model.insert(
                        key,
                        MEntry {
                            value,
                            version: lsn,
                            expiry,
                        },
                    );
                    assert_eq!(replaced, old.is_some(), "seed {seed}");
                }
                4 => assert_eq!(t.remove(&key), model.remove(&key).is_some(), "seed {seed}"),
                5 => {
                    let got = t.take(&key).map(|r| MEntry {
                        value: observe(match &r.value {
                            Value::String(s) => ValueRef::String(s),
                            Value::Hash(h) => ValueRef::Hash(h),
                            Value::Set(s) => ValueRef::Set(s),
                            Value::List(l) => ValueRef::List(l),
                            Value::ZSet(z) => ValueRef::ZSet(z),
                            Value::Stream(x) => ValueRef::Stream(x),
                        }),
                        version: r.version,
                        expiry: r.expires_at_ms,
                    });
                    assert_eq!(got, model.remove(&key), "seed {seed}");
                }
                6 => {
                    let expiry = r.chance(50).then(|| r.next());
                    let had = t.set_expiry(&key, expiry, lsn);
                    let m = model.get_mut(&key);
                    assert_eq!(had, m.is_some(), "seed {seed}");
                    if let Some(m) = m {
                        m.expiry = expiry;
                        m.version = lsn;
                    }
                }
                7 => {
                    // A collection write through get_or_insert_with + value_mut, as HSET/SADD/
                    // RPUSH will do it, bumping the version.
                    let (f, v) = (r.bytes(6), r.bytes(6));
                    let which = r.below(3);
                    let make = move || match which {
                        0 => Value::Hash(HashValue::new()),
                        1 => Value::Set(SetValue::new()),
                        _ => Value::List(ListValue::new()),
                    };
                    let m = model.entry(key.clone()).or_insert_with(|| MEntry {
                        value: match which {
                            0 => MValue::Hash(BTreeMap::new()),
                            1 => MValue::Set(BTreeSet::new()),
                            _ => MValue::List(VecDeque::new()),
                        },
                        version: lsn,
                        expiry: None,
                    });
                    let mut e = t.get_or_insert_with(&key, make, lsn);
                    e.set_version(lsn);
                    m.version = lsn;
                    match (e.value_mut(), &mut m.value) {
                        (ValueMut::Hash(h), MValue::Hash(mh)) => {
                            assert_eq!(h.insert(&f, &v), mh.insert(f, v).is_none());
                        }
                        (ValueMut::Set(s), MValue::Set(ms)) => {
                            assert_eq!(s.insert(&f), ms.insert(f));
                        }
                        (ValueMut::List(l), MValue::List(ml)) => {
                            l.push_front(&f);
                            ml.push_front(f);
                        }
                        (ValueMut::ZSet(z), MValue::ZSet(mz)) => {
                            assert_eq!(z.insert(&f, 1.0), mz.insert(f, 1.0).is_none());
                        }
                        (ValueMut::String(s), MValue::String(ms)) => assert_eq!(s, &ms[..]),
                        (ValueMut::Stream(x), MValue::Stream(mx)) => {
                            let id = x.last_id.next().expect("room above");
                            x.add(id, &[f.clone().into(), f.clone().into()]);
                            mx.add(id, &[f.clone().into(), f.into()]);
                        }
                        (got, want) => panic!("seed {seed}: {got:?} vs {want:?}"),
                    }
                }
                8 => {
                    let got = t.get(&key).map(|e| observe(e.value()));
                    assert_eq!(got, model.get(&key).map(|m| m.value.clone()), "seed {seed}");
                    let batch = [key.clone(), r.bytes(4), r.bytes(4), key];
                    let present = batch.iter().filter(|k| model.contains_key(*k)).count();
                    let warm = t.warm(batch.iter().map(|k| &k[..]), batch.len());
                    assert_eq!(warm, present, "seed {seed}");
                }
                _ => {
                    if r.chance(3) {
                        t.clear();
                        model.clear();
                    }
                }
            }
        }
        check_table(&t, &model, seed);
    }
}

/// The hash stays packed exactly while Redis's listpack would: at most 128 fields, none of
/// them nor their values over 64 bytes, ever. It never converts back.
#[test]
fn hashes_match_a_map_model_and_convert_as_redis_does() {
    for seed in seeds(40) {
        let mut r = Rng(seed);
        let mut h = HashValue::new();
        let mut m: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut should_be_packed = true;
        let field_space = [20, 200][(seed % 2) as usize];
        for step in 0..1500 {
            let field = if r.chance(95) {
                format!("f{}", r.below(field_space)).into_bytes()
            } else {
                r.bytes(6)
            };
            match r.below(4) {
                0..=1 => {
                    // Most seeds keep values short, so that the hash grows past 128 fields
                    // while packed; the others add long values too.
                    let value = if seed % 3 == 0 {
                        r.bytes(6)
                    } else {
                        r.below(1 << 20).to_string().into_bytes()
                    };
                    if field.len() > 64 || value.len() > 64 {
                        should_be_packed = false;
                    }
                    let new = h.insert(&field, &value);
                    assert_eq!(new, m.insert(field.clone(), value).is_none());
                    if m.len() > HASH_PACKED_ENTRIES_MAX {
                        should_be_packed = false;
                    }
                }
                2 => assert_eq!(h.remove(&field), m.remove(&field).is_some()),
                _ => assert_eq!(h.get(&field), m.get(&field).map(|v| &v[..])),
            }
            assert_eq!(h.len(), m.len(), "seed {seed} step {step}");
            assert_eq!(h.is_packed(), should_be_packed, "seed {seed} step {step}");
        }
        let all: BTreeMap<_, _> = h.iter().map(|(f, v)| (f.to_vec(), v.to_vec())).collect();
        assert_eq!(all, m, "seed {seed}");
    }
}

fn redis_set_encoding(members: &BTreeSet<Vec<u8>>, was: SetEncoding) -> SetEncoding {
    let all_ints = members.iter().all(|m| packed::canonical_i64(m).is_some());
    match was {
        SetEncoding::Ints if all_ints && members.len() <= SET_INTSET_ENTRIES_MAX => {
            SetEncoding::Ints
        }
        SetEncoding::Ints | SetEncoding::Packed
            if members.len() <= SET_PACKED_ENTRIES_MAX
                && members.iter().all(|m| m.len() <= SET_PACKED_BYTES_MAX) =>
        {
            SetEncoding::Packed
        }
        _ => SetEncoding::Table,
    }
}

/// Sets against a `BTreeSet`: integers of every width (so the intset widens), non-integers
/// that look like integers ("-0", "01"), counts across 128 and 512, long members.
#[test]
fn sets_match_a_set_model_and_convert_as_redis_does() {
    for seed in seeds(40) {
        let mut r = Rng(seed);
        let mut s = SetValue::new();
        let mut m: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut enc = SetEncoding::Ints;
        let space = [100, 700, 3000][(seed % 3) as usize];
        let ints_only = seed % 4 != 0;
        for step in 0..2500 {
            let member: Vec<u8> = match r.below(20) {
                _ if ints_only && r.chance(99) => {
                    let v = r.below(space) as i64 - (space as i64 / 2);
                    let scale = [1i64, 1000, 1 << 20, 1 << 40][r.below(4) as usize];
                    (v * scale).to_string().into_bytes()
                }
                0 => b"-0".to_vec(),
                1 => b"01".to_vec(),
                2 => i64::MIN.to_string().into_bytes(),
                3..=5 => r.bytes(6),
                _ => r.below(space).to_string().into_bytes(),
            };
            match r.below(5) {
                0..=2 => {
                    let new = s.insert(&member);
                    assert_eq!(new, m.insert(member.clone()), "seed {seed} step {step}");
                    enc = redis_set_encoding(&m, enc);
                }
                3 => {
                    assert_eq!(
                        s.remove(&member),
                        m.remove(&member),
                        "seed {seed} step {step}"
                    );
                }
                _ => assert_eq!(s.contains(&member), m.contains(&member)),
            }
            assert_eq!(s.len(), m.len(), "seed {seed} step {step}");
            assert_eq!(s.encoding(), enc, "seed {seed} step {step}");
        }
        let all: BTreeSet<Vec<u8>> = s.iter().map(|m| m.into_owned()).collect();
        assert_eq!(all, m, "seed {seed}");
    }
}

/// Lists against a `VecDeque`, with elements from empty to larger than a chunk, so that chunks
/// fill, split off, empty and vanish at both ends.
#[test]
fn lists_match_a_deque_model() {
    for seed in seeds(40) {
        let mut r = Rng(seed);
        let mut l = ListValue::new();
        let mut m: VecDeque<Vec<u8>> = VecDeque::new();
        let push_bias = [50, 60, 70][(seed % 3) as usize];
        for step in 0..3000 {
            let v = if r.chance(2) {
                vec![7u8; LIST_CHUNK_BYTES_MAX + r.below(100) as usize]
            } else {
                // Few distinct contents of each length, so LREM and LINSERT find matches.
                let n = [0, 1, 20, 127, 128, 300][r.below(6) as usize];
                let fill = r.below(3) as u8;
                vec![fill; n]
            };
            match r.below(100) {
                x if x < push_bias => {
                    if r.chance(50) {
                        l.push_front(&v);
                        m.push_front(v);
                    } else {
                        l.push_back(&v);
                        m.push_back(v);
                    }
                }
                x if x < push_bias + 15 => {
                    assert_eq!(l.get(0), m.front().map(Vec::as_slice));
                    assert_eq!(l.pop_front(), m.pop_front().is_some());
                }
                x if x < push_bias + 30 => {
                    let last = l.len().checked_sub(1).and_then(|i| l.get(i));
                    assert_eq!(last, m.back().map(Vec::as_slice));
                    assert_eq!(l.pop_back(), m.pop_back().is_some());
                }
                x if x < push_bias + 35 => {
                    let i = r.below(m.len() as u64 + 2) as usize;
                    assert_eq!(l.set(i, &v), i < m.len());
                    if let Some(e) = m.get_mut(i) {
                        *e = v;
                    }
                }
                x if x < push_bias + 37 => {
                    // LREM of a value that is often there: lists hold few distinct values.
                    let target = m
                        .get(r.below(m.len() as u64 + 1) as usize)
                        .cloned()
                        .unwrap_or_default();
                    let count = r.below(7) as i64 - 3;
                    let mut want = 0;
                    let mut budget = if count == 0 {
                        usize::MAX
                    } else {
                        count.unsigned_abs() as usize
                    };
                    let idx: Vec<usize> = if count < 0 {
                        (0..m.len()).rev().collect()
                    } else {
                        (0..m.len()).collect()
                    };
                    let mut drop = BTreeSet::new();
                    for i in idx {
                        if budget > 0 && m[i] == target {
                            drop.insert(i);
                            budget -= 1;
                            want += 1;
                        }
                    }
                    let mut i = 0;
                    m.retain(|_| {
                        i += 1;
                        !drop.contains(&(i - 1))
                    });
                    assert_eq!(
                        l.remove_matching(&target, count),
                        want,
                        "seed {seed} step {step}"
                    );
                }
                x if x < push_bias + 39 => {
                    let pivot = m
                        .get(r.below(m.len() as u64 + 1) as usize)
                        .cloned()
                        .unwrap_or_else(|| b"none".to_vec());
                    let after = r.chance(50);
                    let at = m.iter().position(|e| *e == pivot);
                    assert_eq!(
                        l.insert_at_pivot(&pivot, after, &v),
                        at.is_some(),
                        "seed {seed} step {step}"
                    );
                    if let Some(at) = at {
                        m.insert(at + usize::from(after), v);
                    }
                }
                x if x < push_bias + 40 => {
                    let a = r.below(m.len() as u64 / 4 + 2) as usize;
                    let b = m.len() + 1 - r.below(m.len() as u64 / 4 + 2) as usize;
                    l.trim(a, b);
                    let b = b.min(m.len());
                    m = if a < b {
                        m.iter().skip(a).take(b - a).cloned().collect()
                    } else {
                        VecDeque::new()
                    };
                }
                x if x < push_bias + 42 => {
                    let a = r.below(m.len() as u64 + 3) as usize;
                    let b = r.below(m.len() as u64 + 3) as usize;
                    let got: Vec<&[u8]> = l.range(a, b).collect();
                    let want: Vec<&[u8]> = m
                        .iter()
                        .skip(a)
                        .take(b.saturating_sub(a))
                        .map(|e| &e[..])
                        .collect();
                    assert_eq!(got, want, "seed {seed} step {step}: range {a}..{b}");
                }
                _ => {
                    let i = r.below(m.len() as u64 + 2) as usize;
                    assert_eq!(
                        l.get(i),
                        m.get(i).map(|e| &e[..]),
                        "seed {seed} step {step}"
                    );
                }
            }
            assert_eq!(l.len(), m.len(), "seed {seed} step {step}");
        }
        assert!(l.iter().eq(m.iter().map(|e| &e[..])), "seed {seed}");
    }
}

/// Redis's SCAN guarantee: every key present from the scan's first call to its last is returned
/// at least once, while between calls other keys are inserted (enough to make shard tables
/// grow several times) and removed (enough to empty shards), with random COUNTs.
#[test]
fn scan_returns_every_key_present_throughout() {
    for seed in seeds(30) {
        let mut r = Rng(seed);
        // Some seeds split shards often, between the scan's calls too.
        let split_at = [8, SHARD_SPLIT_KEYS][(seed % 2) as usize];
        let mut t = Table::with_split_at([1, 3, 6][(seed % 3) as usize], split_at);
        let stable: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("stable:{i}").into_bytes())
            .collect();
        for k in &stable {
            t.insert_string(k, b"v", None, 1);
        }
        let mut churn: Vec<Vec<u8>> = Vec::new();
        for i in 0..200 {
            let k = format!("churn:{i}").into_bytes();
            t.insert_string(&k, b"", None, 1);
            churn.push(k);
        }
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut cursor = 0;
        let mut calls = 0;
        let mut next_churn = 200;
        loop {
            let (page, next) = t.scan(cursor, 1 + r.below(40) as usize);
            calls += 1;
            for e in page {
                *seen.entry(e.key().to_vec()).or_default() += 1;
            }
            if next == 0 {
                break;
            }
            assert!(next > cursor, "seed {seed}: the cursor moves forward");
            cursor = next;
            for _ in 0..r.below(60) {
                if r.chance(60) || churn.is_empty() {
                    let k = format!("churn:{next_churn}").into_bytes();
                    next_churn += 1;
                    t.insert_string(&k, b"x", None, 2);
                    churn.push(k);
                } else {
                    let i = r.below(churn.len() as u64) as usize;
                    let k = churn.swap_remove(i);
                    assert!(t.remove(&k));
                }
            }
            assert!(calls < 100_000, "seed {seed}: the scan ends");
        }
        for k in &stable {
            let n = seen.get(k).copied().unwrap_or(0);
            assert_eq!(n, 1, "seed {seed}: {k:?} returned {n} times");
        }
    }
}

/// With no writes between calls, a scan returns every key exactly once, for every COUNT.
#[test]
fn scan_without_writes_returns_each_key_once() {
    let mut t = Table::with_expected_keys(5000);
    for i in 0..5000u32 {
        t.insert_string(&i.to_be_bytes(), b"", None, 1);
    }
    for count in [1, 7, 100, 10_000] {
        let mut seen = BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (page, next) = t.scan(cursor, count);
            assert!(
                !page.is_empty() || next == 0,
                "a page is empty only at the end"
            );
            for e in page {
                assert!(seen.insert(e.key().to_vec()), "{:?} twice", e.key());
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 5000, "count {count}");
    }
}

/// A string entry is one block of 10 bytes of header plus key and value, and expiry adds 8.
#[test]
fn a_string_entry_is_one_block_with_a_ten_byte_header() {
    let mut t = Table::with_shard_bits(1);
    t.insert_string(&[1u8; 16], &[2u8; 100], None, 7);
    let block_bytes: usize = t
        .shards
        .iter()
        .flat_map(|s| s.slots.iter())
        .map(|b| b.len())
        .sum();
    assert_eq!(block_bytes, 10 + 16 + 100);
    t.set_expiry(&[1u8; 16], Some(5), 8);
    let block_bytes: usize = t
        .shards
        .iter()
        .flat_map(|s| s.slots.iter())
        .map(|b| b.len())
        .sum();
    assert_eq!(block_bytes, 18 + 16 + 100);
    let e = t.get(&[1u8; 16]).expect("present");
    assert_eq!((e.version(), e.expires_at_ms()), (8, Some(5)));
    assert!(e.live(4) && !e.live(5));
}

/// Sorted sets against a member → score map: ZADD (new members and score changes, ties broken
/// by member), ZREM, ZSCORE, ZRANK, ranges by rank and by score with every kind of bound,
/// across the conversion at 128 members or a 65-byte member, up to a few thousand members so
/// the skip list grows several levels. Now and then the set is replaced by its working copy
/// (the sequencer's, without order until a read needs it), and every read after holds too;
/// in half the seeds the reads that need the order are rare, so the copy takes runs of writes.
#[test]
fn sorted_sets_match_a_model_and_convert_as_redis_does() {
    for seed in seeds(20) {
        let mut r = Rng(seed);
        let mut z = ZSetValue::new();
        let mut m: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
        let mut should_be_packed = true;
        let space = [100, 300, 3000][(seed % 3) as usize];
        let steps = [1500, 1500, 4000][(seed % 3) as usize];
        for step in 0..steps {
            let member = if r.chance(98) || seed % 2 == 1 {
                format!("m{}", r.below(space)).into_bytes()
            } else {
                r.bytes(6)
            };
            // Few distinct scores, so ties (ordered by member) are common; -0.0 and 0.0 too.
            let score = [
                -0.0,
                0.0,
                1.5,
                -3.0,
                1e300,
                f64::INFINITY,
                f64::NEG_INFINITY,
            ][r.below(7) as usize]
                + (r.below(4) as f64);
            let sorted = || {
                let mut s: Vec<(Vec<u8>, f64)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
                s.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap().then_with(|| a.0.cmp(&b.0)));
                s
            };
            if r.below(40) == 0 {
                z = z.working_copy();
            }
            // Seeds 0 and 1 (mod 4) read the order at most one step in 20.
            let op = match r.below(8) {
                op @ 5.. if seed % 4 < 2 && r.below(20) != 0 => op - 4,
                op => op,
            };
            match op {
                0..=2 => {
                    let new = z.insert(&member, score);
                    assert_eq!(
                        new,
                        m.insert(member.clone(), score).is_none(),
                        "seed {seed} step {step}"
                    );
                    if member.len() > ZSET_PACKED_BYTES_MAX || m.len() > ZSET_PACKED_ENTRIES_MAX {
                        should_be_packed = false;
                    }
                }
                3 => assert_eq!(z.remove(&member), m.remove(&member).is_some()),
                4 => assert_eq!(z.score(&member), m.get(&member).copied()),
                5 => assert_eq!(
                    z.rank(&member),
                    sorted().iter().position(|(k, _)| *k == member),
                    "seed {seed} step {step}"
                ),
                6 => {
                    let sorted = sorted();
                    let a = r.below(sorted.len() as u64 + 3) as usize;
                    let b = r.below(sorted.len() as u64 + 3) as usize;
                    let got: Vec<(Vec<u8>, f64)> = z
                        .range_by_rank(a, b)
                        .into_iter()
                        .map(|(k, s)| (k.to_vec(), s))
                        .collect();
                    let want: Vec<(Vec<u8>, f64)> = sorted
                        .iter()
                        .skip(a)
                        .take(b.saturating_sub(a))
                        .cloned()
                        .collect();
                    assert_eq!(got, want, "seed {seed} step {step}: ranks {a}..{b}");
                }
                _ => {
                    let sorted = sorted();
                    let bound = |r: &mut Rng| {
                        let v = r.below(8) as f64 - 2.0;
                        match r.below(3) {
                            0 => Bound::Included(v),
                            1 => Bound::Excluded(v),
                            _ => Bound::Unbounded,
                        }
                    };
                    let (lo, hi) = (bound(&mut r), bound(&mut r));
                    let limit = [usize::MAX, 3][r.below(2) as usize];
                    let inside = |s: f64| {
                        (match lo {
                            Bound::Included(v) => s >= v,
                            Bound::Excluded(v) => s > v,
                            Bound::Unbounded => true,
                        }) && (match hi {
                            Bound::Included(v) => s <= v,
                            Bound::Excluded(v) => s < v,
                            Bound::Unbounded => true,
                        })
                    };
                    assert_eq!(
                        z.count_by_score(lo, hi),
                        sorted.iter().filter(|(_, s)| inside(*s)).count(),
                        "seed {seed} step {step}: count {lo:?}..{hi:?}"
                    );
                    let got: Vec<(Vec<u8>, f64)> = z
                        .range_by_score(lo, hi, limit)
                        .into_iter()
                        .map(|(k, s)| (k.to_vec(), s))
                        .collect();
                    let want: Vec<(Vec<u8>, f64)> = sorted
                        .iter()
                        .filter(|(_, s)| inside(*s))
                        .take(limit)
                        .cloned()
                        .collect();
                    assert_eq!(got, want, "seed {seed} step {step}: scores {lo:?}..{hi:?}");
                }
            }
            assert_eq!(z.len(), m.len(), "seed {seed} step {step}");
            assert_eq!(z.is_packed(), should_be_packed, "seed {seed} step {step}");
            if step % 10 == 0 {
                z.check();
            }
        }
    }
}

/// The random picks reach every member, with roughly equal frequency, in every encoding: 40
/// members drawn 8000 times each, so each is expected 200 times; fewer than 100 or more than 300
/// would be off by over seven standard deviations.
#[test]
fn random_picks_are_uniform_in_every_encoding() {
    let mut r = Rng(7);
    let mut rand = move || r.next();
    let check = |counts: BTreeMap<Vec<u8>, usize>, what: &str| {
        assert_eq!(counts.len(), 40, "{what}: every member drawn");
        for (m, n) in counts {
            assert!((100..=300).contains(&n), "{what}: {m:?} drawn {n} times");
        }
    };
    for (what, members) in [
        (
            "intset",
            (0..40)
                .map(|i| i.to_string().into_bytes())
                .collect::<Vec<_>>(),
        ),
        (
            "packed",
            (0..40).map(|i| format!("m{i}").into_bytes()).collect(),
        ),
        ("table", (0..40).map(|i| vec![b'x'; 65 + i]).collect()),
    ] {
        let mut s = SetValue::new();
        let mut h = HashValue::new();
        let mut z = ZSetValue::new();
        for m in &members {
            s.insert(m);
            h.insert(m, b"v");
            z.insert(m, 1.0);
        }
        // Many removals leave the tables sparse, which the bucket sampling must not skew; the
        // churned members keep each set in its encoding.
        for i in 0..2000usize {
            let m = match what {
                "intset" => (1000 + i).to_string().into_bytes(),
                "packed" => format!("gone{i}").into_bytes(),
                _ => vec![b'y'; 65 + i],
            };
            s.insert(&m);
            s.remove(&m);
            h.insert(&m, b"v");
            h.remove(&m);
        }
        let want = match what {
            "intset" => SetEncoding::Ints,
            "packed" => SetEncoding::Packed,
            _ => SetEncoding::Table,
        };
        assert_eq!(s.encoding(), want);
        assert_eq!(h.is_packed(), what != "table");
        assert_eq!(z.is_packed(), what != "table");
        let mut counts = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for _ in 0..8000 {
            *counts
                .0
                .entry(s.random(&mut rand).unwrap().into_owned())
                .or_default() += 1;
            *counts
                .1
                .entry(h.random(&mut rand).unwrap().0.to_vec())
                .or_default() += 1;
            *counts
                .2
                .entry(z.random(&mut rand).unwrap().0.to_vec())
                .or_default() += 1;
        }
        check(counts.0, &format!("set {what}"));
        check(counts.1, &format!("hash {what}"));
        check(counts.2, &format!("sorted set {what}"));
    }
    // Keys over many shards of unequal sizes.
    let mut t = Table::with_shard_bits(3);
    for i in 0..40u32 {
        t.insert_string(&i.to_be_bytes(), b"", None, 1);
    }
    let mut counts = BTreeMap::new();
    for _ in 0..8000 {
        *counts
            .entry(t.random(&mut rand).unwrap().key().to_vec())
            .or_default() += 1;
    }
    check(counts, "table");
    assert!(Table::new().random(&mut rand).is_none());
}

/// SRANDMEMBER's, HRANDFIELD's, ZRANDMEMBER's and SPOP's picks: a positive count gives that
/// many distinct members that are there (all of them past the length) by each of its three
/// ways (drawing, a partial shuffle, everything); a negative count gives that many, repeats
/// allowed; and small counts drawn often reach every member of a large set.
#[test]
fn samples_are_distinct_members_of_the_count_asked() {
    let mut r = Rng(11);
    let mut rand = move || r.next();
    for n in [0usize, 1, 2, 7, 150, 3000] {
        let (mut s, mut h, mut z) = (SetValue::new(), HashValue::new(), ZSetValue::new());
        let members: BTreeSet<Vec<u8>> = (0..n).map(|i| format!("m{i}").into_bytes()).collect();
        for (i, m) in members.iter().enumerate() {
            s.insert(m);
            h.insert(m, format!("v{i}").as_bytes());
            z.insert(m, i as f64);
        }
        let third = n as i64 / 3;
        for count in [
            1,
            2,
            third,
            third + 1,
            n as i64 - 1,
            n as i64,
            n as i64 + 5,
            i64::MAX,
        ] {
            let what = format!("{n} members, count {count}");
            let want = (count.max(0) as usize).min(n);
            let picks: Vec<Vec<u8>> = s
                .sample(count, &mut rand)
                .iter()
                .map(|m| m.to_vec())
                .collect();
            let hp = h.sample(count, &mut rand);
            let zp = z.sample(count, &mut rand);
            assert_eq!(picks.len(), want, "set, {what}");
            assert_eq!(hp.len(), want, "hash, {what}");
            assert_eq!(zp.len(), want, "sorted set, {what}");
            let distinct: BTreeSet<Vec<u8>> = picks.into_iter().collect();
            assert_eq!(distinct.len(), want, "set, {what}: distinct");
            assert!(distinct.is_subset(&members), "set, {what}");
            let fields: BTreeSet<&[u8]> = hp.iter().map(|p| p.0).collect();
            assert_eq!(fields.len(), want, "hash, {what}: distinct");
            for (f, v) in hp {
                assert_eq!(h.get(f), Some(v), "hash, {what}: a field with its value");
            }
            let names: BTreeSet<&[u8]> = zp.iter().map(|p| p.0).collect();
            assert_eq!(names.len(), want, "sorted set, {what}: distinct");
            for (m, score) in zp {
                assert_eq!(
                    z.score(m),
                    Some(score),
                    "sorted set, {what}: a member with its score"
                );
            }
        }
        for count in [0i64, -1, -7, -(n as i64) * 2] {
            let want = if n == 0 {
                0
            } else {
                count.unsigned_abs() as usize
            };
            let picks = s.sample(count, &mut rand);
            assert_eq!(picks.len(), want, "{n} members, count {count}");
            assert!(picks.iter().all(|m| members.contains(&m[..])));
            assert_eq!(h.sample(count, &mut rand).len(), want);
            assert_eq!(z.sample(count, &mut rand).len(), want);
        }
    }
    // Small counts from a large set (the drawing way) reach all of it.
    let mut s = SetValue::new();
    for i in 0..300 {
        s.insert(format!("m{i}").as_bytes());
    }
    let mut seen = BTreeSet::new();
    for _ in 0..1000 {
        seen.extend(s.sample(10, &mut rand).into_iter().map(|m| m.into_owned()));
    }
    assert_eq!(seen.len(), 300);
}

/// Shards split as the table grows: every key stays findable with its value (collections too,
/// whose slab slots move with them), the shard count follows the key count, removals and
/// clears leave the split shards in place, and a whole pass of `visit_from` with splits between
/// its calls visits each key present throughout exactly once.
#[test]
fn shards_split_as_the_table_grows_and_keep_every_entry() {
    for seed in seeds(20) {
        let mut r = Rng(seed);
        let mut t = Table::with_split_at(1, 4 + r.below(8) as usize);
        let mut model: BTreeMap<Vec<u8>, MEntry> = BTreeMap::new();
        for i in 0..3000u64 {
            let key = format!("k{i}").into_bytes();
            let value = random_value(&mut r);
            t.insert(&key, build(&value), None, i + 1);
            model.insert(
                key,
                MEntry {
                    value,
                    version: i + 1,
                    expiry: None,
                },
            );
        }
        assert!(
            t.shard_count() > 3000 / 12,
            "seed {seed}: {} shards",
            t.shard_count()
        );
        assert!(
            t.shards.iter().all(|s| s.len() <= t.split_at),
            "seed {seed}"
        );
        check_table(&t, &model, seed);
        // A pass with inserts (and so splits) and removes between its parts.
        let stable: Vec<Vec<u8>> = model.keys().take(1000).cloned().collect();
        let (mut seen, mut at, mut next_key) = (BTreeMap::new(), 0u64, 0u64);
        loop {
            at = t.visit_from(at, 1 + r.below(50) as usize, &mut |e| {
                *seen.entry(e.key().to_vec()).or_insert(0) += 1;
            });
            if at == 0 {
                break;
            }
            for _ in 0..r.below(100) {
                t.insert_string(format!("new{next_key}").as_bytes(), b"x", None, 1);
                next_key += 1;
            }
            for k in model.keys().skip(1000 + r.below(2000) as usize).take(3) {
                t.remove(k);
            }
        }
        for k in &stable {
            assert_eq!(seen.get(k), Some(&1), "seed {seed}: {k:?}");
        }
        assert!(
            seen.values().all(|&n| n == 1),
            "seed {seed}: a key visited twice"
        );
        let shards = t.shard_count();
        t.clear();
        assert_eq!(
            (t.len(), t.shard_count()),
            (0, shards),
            "a clear keeps the shards"
        );
    }
}

/// Removing most keys, fields or members gives the tables' memory back, as Redis's dicts shrink;
/// the survivors stay findable.
#[test]
fn tables_shrink_after_most_entries_are_removed() {
    let mut t = Table::with_shard_bits(1);
    let mut h = HashValue::new();
    let mut s = SetValue::new();
    let mut z = ZSetValue::new();
    let n = 20_000u32;
    for i in 0..n {
        let k = format!("k{i}").into_bytes();
        t.insert_string(&k, b"", None, 1);
        h.insert(&k, b"");
        s.insert(&k);
        z.insert(&k, f64::from(i));
    }
    let full = (
        t.memory_bytes(),
        h.memory_bytes(),
        s.memory_bytes(),
        z.memory_bytes(),
    );
    for i in 10..n {
        let k = format!("k{i}").into_bytes();
        assert!(t.remove(&k) && h.remove(&k) && s.remove(&k) && z.remove(&k));
    }
    let after = (
        t.memory_bytes(),
        h.memory_bytes(),
        s.memory_bytes(),
        z.memory_bytes(),
    );
    // The table keeps the shards it split into (they never merge): a few dozen small ones.
    assert!(after.0 * 15 < full.0, "table: {after:?} vs {full:?}");
    assert!(after.1 * 20 < full.1, "hash: {after:?} vs {full:?}");
    assert!(after.2 * 20 < full.2, "set: {after:?} vs {full:?}");
    assert!(after.3 * 20 < full.3, "sorted set: {after:?} vs {full:?}");
    for i in 0..10 {
        let k = format!("k{i}").into_bytes();
        assert!(t.get(&k).is_some() && h.get(&k).is_some() && s.contains(&k));
        assert_eq!(z.score(&k), Some(f64::from(i)));
    }
}

/// A loader fills a table with what one insert at a time would: every kind, with and without
/// expiry, across many of its (test-sized) batches, whether the expected count is right, far
/// too low or far too high, and with shards that split while it loads. The table keeps working
/// afterwards: its shards grow, split and find their keys as any table's.
#[test]
fn a_loader_fills_a_table_as_inserts_do() {
    for seed in seeds(20) {
        let mut r = Rng(seed);
        let n = r.below(3000) as usize;
        let mut model: BTreeMap<Vec<u8>, MEntry> = BTreeMap::new();
        while model.len() < n {
            let mut key = r.bytes(6);
            key.extend_from_slice(&(model.len() as u64).to_le_bytes());
            let value = random_value(&mut r);
            let expiry = r.chance(30).then(|| r.next());
            let version = r.next();
            model.insert(
                key,
                MEntry {
                    value,
                    version,
                    expiry,
                },
            );
        }
        let expected = match seed % 4 {
            0 => n,
            1 => 0,
            2 => n / 10,
            _ => n * 100,
        };
        let table = if seed % 3 == 0 {
            Table::with_split_at(1, 4 + r.below(8) as usize)
        } else {
            Table::with_expected_keys(expected)
        };
        let mut loader = Loader::new(table, expected);
        for (k, e) in &model {
            let built = build(&e.value);
            let ok = if r.chance(50) {
                loader.insert(k, built, e.expiry, e.version)
            } else if let (MValue::String(s), false) = (&e.value, r.chance(20)) {
                loader.insert_string(k, s, e.expiry, e.version)
            } else {
                loader.insert(k, built, e.expiry, e.version)
            };
            ok.unwrap_or_else(|d| panic!("seed {seed}: {d:?}"));
        }
        let mut t = loader.finish().unwrap();
        check_table(&t, &model, seed);
        assert!(
            t.shards.iter().all(|s| s.len() <= t.split_at),
            "seed {seed}: a shard past its bound"
        );
        for i in 0..500u64 {
            let key = format!("after{i}").into_bytes();
            let value = random_value(&mut r);
            t.insert(&key, build(&value), None, i);
            model.insert(
                key,
                MEntry {
                    value,
                    version: i,
                    expiry: None,
                },
            );
        }
        check_table(&t, &model, seed);
    }
}

/// A key given twice is refused, whatever the kinds and wherever the two fall: in one batch, in
/// two, a string after a collection and the other way round.
#[test]
fn a_loader_refuses_a_key_twice() {
    let string = || Value::String(b"v".to_vec());
    let set = || {
        let mut s = SetValue::new();
        s.insert(b"m");
        Value::Set(s)
    };
    for (first, second) in [(true, true), (true, false), (false, true), (false, false)] {
        for gap in [0, 1, LOAD_BATCH - 1, LOAD_BATCH, 3 * LOAD_BATCH + 5] {
            let mut l = Loader::new(Table::new(), gap + 2);
            let value = |s: bool| if s { string() } else { set() };
            l.insert(b"twice", value(first), None, 1).unwrap();
            for i in 0..gap {
                l.insert_string(format!("k{i}").as_bytes(), b"x", None, 1)
                    .unwrap();
            }
            let e = l
                .insert(b"twice", value(second), Some(5), 2)
                .and_then(|()| l.finish().map(|_| ()));
            assert_eq!(
                e,
                Err(DuplicateKey(b"twice".to_vec())),
                "first string {first}, second string {second}, {gap} keys between"
            );
        }
    }
}

/// Every collection's slab slot is as large as the largest variant, so a large one (a stream's
/// value) stays boxed: 96 bytes a slot for every small sorted set, before.
#[test]
fn a_collection_slot_stays_small() {
    let slot = std::mem::size_of::<Option<super::Coll>>();
    assert!(slot <= 48, "a collection slot takes {slot} bytes");
}

/// The O(1) memory estimates the sequencer's kept budget reads: exact for members of one
/// length (a list: while it has at most 16 chunks), within a factor of two of the exact count
/// for lengths that vary.
#[test]
fn memory_estimates_follow_the_exact_count() {
    for varied in [false, true] {
        let (mut s, mut h, mut l) = (SetValue::new(), HashValue::new(), ListValue::new());
        for i in 0..5000usize {
            let len = if varied { 10 + i % 50 } else { 30 };
            let m = format!("{i:0len$}");
            s.insert(m.as_bytes());
            h.insert(m.as_bytes(), b"value");
            if i % 2 == 0 {
                l.push_front(m.as_bytes());
            } else {
                l.push_back(m.as_bytes());
            }
            if i == 100 {
                assert_eq!(l.memory_estimate(), l.memory_bytes(), "a short list");
            }
        }
        for (what, exact, estimate) in [
            ("set", s.memory_bytes(), s.memory_estimate()),
            ("hash", h.memory_bytes(), h.memory_estimate()),
            ("list", l.memory_bytes(), l.memory_estimate()),
        ] {
            if varied || what == "list" {
                assert!(
                    estimate > exact / 2 && estimate < exact * 2,
                    "{what}: {estimate} for {exact}"
                );
            } else {
                assert_eq!(estimate, exact, "{what}");
            }
        }
    }
}
