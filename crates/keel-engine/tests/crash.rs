//! keel-engine against a model, through simulated power cuts (keel-sim).

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;

use bytes::Bytes;
use keel_engine::{
    format_score, zset_combine, Aggregate, Claim, Engine, Guard, Options, Outcome, PutIf, Read,
    SetOp, StreamId, StreamIdSpec, StreamTrim, StreamTrimBy, Ttl, Write, WriteError, WriteResult,
    ZCmp, ZRange,
};
use keel_sim::{Faults, Rng, SimFs};
use keel_wal::Lsn;

const DIR: &str = "/db";
/// Every live key: its value and version. A hash's value is its fields in order, written out
/// by [`hash_text`].
type Model = BTreeMap<Bytes, (Bytes, Lsn)>;
type Fields = BTreeMap<Bytes, Bytes>;

fn hash_text(h: &Fields) -> Bytes {
    let mut out = b"hash:".to_vec();
    for (f, v) in h {
        out.extend_from_slice(&[&f[..], b"=", &v[..], b";"].concat());
    }
    out.into()
}

type Members = std::collections::BTreeSet<Bytes>;

fn set_text(s: &Members) -> Bytes {
    let mut out = b"set:".to_vec();
    for m in s {
        out.extend_from_slice(&[&m[..], b";"].concat());
    }
    out.into()
}

fn set_members(m: &Model, key: &[u8]) -> Members {
    let Some((text, _)) = m.get(key) else {
        return Members::new();
    };
    let body = text.strip_prefix(b"set:").expect("a set key holds a set");
    body.split(|b| *b == b';')
        .filter(|p| !p.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Writes the set `s` at `key` at `lsn`, or deletes the key if `s` is empty.
fn put_set(m: &mut Model, key: &Bytes, s: &Members, lsn: Lsn) {
    if s.is_empty() {
        m.remove(key);
    } else {
        m.insert(key.clone(), (set_text(s), lsn));
    }
}

fn list_text(l: &[Bytes]) -> Bytes {
    let mut out = b"list:".to_vec();
    for e in l {
        out.extend_from_slice(&[&e[..], b";"].concat());
    }
    out.into()
}

fn list_elements(m: &Model, key: &[u8]) -> Vec<Bytes> {
    let Some((text, _)) = m.get(key) else {
        return Vec::new();
    };
    let body = text
        .strip_prefix(b"list:")
        .expect("a list key holds a list");
    body.split(|b| *b == b';')
        .filter(|p| !p.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Writes the list `l` at `key` at `lsn`, or deletes the key if `l` is empty.
fn put_list(m: &mut Model, key: &Bytes, l: &[Bytes], lsn: Lsn) {
    if l.is_empty() {
        m.remove(key);
    } else {
        m.insert(key.clone(), (list_text(l), lsn));
    }
}

type Scores = BTreeMap<Bytes, f64>;

fn zset_text(z: &Scores) -> Bytes {
    let mut out = b"zset:".to_vec();
    for (m, s) in z {
        out.extend_from_slice(&[&m[..], b"=", format_score(*s).as_bytes(), b";"].concat());
    }
    out.into()
}

fn zset_scores(m: &Model, key: &[u8]) -> Scores {
    let Some((text, _)) = m.get(key) else {
        return Scores::new();
    };
    let body = text
        .strip_prefix(b"zset:")
        .expect("a zset key holds a zset");
    body.split(|b| *b == b';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let i = p.iter().position(|b| *b == b'=').unwrap();
            let score = std::str::from_utf8(&p[i + 1..]).unwrap().parse().unwrap();
            (Bytes::copy_from_slice(&p[..i]), score)
        })
        .collect()
}

/// Writes the sorted set `z` at `key` at `lsn`, or deletes the key if `z` is empty.
fn put_zset(m: &mut Model, key: &Bytes, z: &Scores, lsn: Lsn) {
    if z.is_empty() {
        m.remove(key);
    } else {
        m.insert(key.clone(), (zset_text(z), lsn));
    }
}

/// A sorted set's members by (score, member).
fn zset_order(z: &Scores) -> Vec<(Bytes, f64)> {
    let mut v: Vec<(Bytes, f64)> = z.iter().map(|(m, s)| (m.clone(), *s)).collect();
    v.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap().then_with(|| a.0.cmp(&b.0)));
    v
}

/// A stream as the model keeps it: what a power cut must keep, without the times a group's
/// deliveries and consumers carry (the engine takes those from its clock) and without Redis's
/// entries-read estimate. Written out by [`stream_text`]; a stream stays when emptied.
#[derive(Clone, Default)]
struct Stream {
    entries: BTreeMap<StreamId, Vec<Bytes>>,
    last: StreamId,
    added: u64,
    max_deleted: StreamId,
    groups: BTreeMap<Bytes, Group>,
}

/// A consumer group: its last delivered ID, its pending entries (ID to consumer and
/// deliveries) and its consumers, each with the IDs pending with it.
#[derive(Clone, Default)]
struct Group {
    last: StreamId,
    pending: BTreeMap<StreamId, (Bytes, u64)>,
    consumers: BTreeMap<Bytes, std::collections::BTreeSet<StreamId>>,
}

impl Group {
    /// Makes `id` pending with `consumer` (created if absent), delivered `n` times.
    fn give(&mut self, id: StreamId, consumer: &Bytes, n: u64) {
        if let Some((old, _)) = self.pending.insert(id, (consumer.clone(), n)) {
            self.consumers.get_mut(&old).unwrap().remove(&id);
        }
        self.consumers
            .entry(consumer.clone())
            .or_default()
            .insert(id);
    }

    /// Acknowledges `id`; whether it was pending.
    fn ack(&mut self, id: StreamId) -> bool {
        let Some((owner, _)) = self.pending.remove(&id) else {
            return false;
        };
        self.consumers.get_mut(&owner).unwrap().remove(&id);
        true
    }
}

/// One line per part: `stream: last added max-deleted`, then `e ID field value …` per entry,
/// `g name last` per group, followed by its `p ID consumer deliveries` and `c name ID …`.
fn stream_text(x: &Stream) -> Bytes {
    let mut out = format!("stream: {} {} {}\n", x.last, x.added, x.max_deleted).into_bytes();
    for (id, fields) in &x.entries {
        out.extend_from_slice(format!("e {id}").as_bytes());
        for f in fields {
            out.extend_from_slice(&[&b" "[..], f].concat());
        }
        out.push(b'\n');
    }
    for (name, g) in &x.groups {
        out.extend_from_slice(&[&b"g "[..], name, format!(" {}\n", g.last).as_bytes()].concat());
        for (id, (c, n)) in &g.pending {
            out.extend_from_slice(
                &[
                    format!("p {id} ").as_bytes(),
                    c,
                    format!(" {n}\n").as_bytes(),
                ]
                .concat(),
            );
        }
        for (c, ids) in &g.consumers {
            out.extend_from_slice(&[&b"c "[..], c].concat());
            for id in ids {
                out.extend_from_slice(format!(" {id}").as_bytes());
            }
            out.push(b'\n');
        }
    }
    out.into()
}

/// The stream at `key` in the model, if there is one.
fn stream_of(m: &Model, key: &[u8]) -> Option<Stream> {
    let (text, _) = m.get(key)?;
    let text = std::str::from_utf8(text).unwrap();
    let body = text
        .strip_prefix("stream: ")
        .expect("a stream key holds a stream");
    let id = |s: &str| StreamId::parse(s.as_bytes(), 0).unwrap();
    let mut x = Stream::default();
    let mut group = None;
    for line in body.lines() {
        let mut words = line.split(' ');
        match words.next().unwrap() {
            "e" => {
                let fields = words
                    .clone()
                    .skip(1)
                    .map(|w| Bytes::copy_from_slice(w.as_bytes()));
                x.entries
                    .insert(id(words.next().unwrap()), fields.collect());
            }
            "g" => {
                let name = Bytes::copy_from_slice(words.next().unwrap().as_bytes());
                let g = Group {
                    last: id(words.next().unwrap()),
                    ..Group::default()
                };
                x.groups.insert(name.clone(), g);
                group = Some(name);
            }
            "p" => {
                let g = x.groups.get_mut(group.as_ref().unwrap()).unwrap();
                let (at, c, n) = (
                    words.next().unwrap(),
                    words.next().unwrap(),
                    words.next().unwrap(),
                );
                g.pending.insert(
                    id(at),
                    (Bytes::copy_from_slice(c.as_bytes()), n.parse().unwrap()),
                );
            }
            "c" => {
                let g = x.groups.get_mut(group.as_ref().unwrap()).unwrap();
                let c = Bytes::copy_from_slice(words.next().unwrap().as_bytes());
                g.consumers.insert(c, words.map(id).collect());
            }
            header => {
                x.last = id(header);
                x.added = words.next().unwrap().parse().unwrap();
                x.max_deleted = id(words.next().unwrap());
            }
        }
    }
    Some(x)
}

/// The stream at `key` with its group `group`, or why a group command finds neither.
fn stream_group(m: &Model, key: &[u8], group: &[u8]) -> Result<Stream, WriteError> {
    match stream_of(m, key) {
        None => Err(WriteError::NoSuchKey),
        Some(x) if x.groups.contains_key(group) => Ok(x),
        Some(_) => Err(WriteError::NoGroup),
    }
}

/// Trims `x` exactly (XTRIM, and XADD's trim after its entry is in); returns how many
/// entries went. The greatest deleted ID stays as it is.
fn stream_trim(x: &mut Stream, trim: &StreamTrim) -> usize {
    let gone = match trim.by {
        StreamTrimBy::MaxLen(n) => x.entries.len().saturating_sub(n as usize),
        StreamTrimBy::MinId(min) => x.entries.range(..min).count(),
    };
    for _ in 0..gone {
        x.entries.pop_first();
    }
    gone
}

/// Pushes an entry as stream reads lay it out: its ID, its fields and values (none for an
/// entry deleted since, or for JUSTID), then a nil.
fn stream_entry(out: &mut Vec<Option<Bytes>>, id: StreamId, fields: Option<&Vec<Bytes>>) {
    out.push(Some(Bytes::from(id.to_string())));
    out.extend(fields.into_iter().flatten().cloned().map(Some));
    out.push(None);
}

fn hash_fields(text: &[u8]) -> Fields {
    let body = text
        .strip_prefix(b"hash:")
        .expect("a hash key holds a hash");
    body.split(|b| *b == b';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let i = p.iter().position(|b| *b == b'=').unwrap();
            (
                Bytes::copy_from_slice(&p[..i]),
                Bytes::copy_from_slice(&p[i + 1..]),
            )
        })
        .collect()
}

/// System entries the workload writes, and the model key each stands under (user keys never
/// start with `sys/`). System entries have no version: the model gives them 0.
const SYSTEM_KEYS: [&str; 2] = ["applied", "membership"];
fn system_model_key(key: &[u8]) -> Bytes {
    [&b"sys/"[..], key].concat().into()
}

/// What a reader of `snap` sees: every live user entry with its version, and the system entries.
fn observed(snap: &keel_engine::ReadView<'_>) -> Model {
    let mut m: Model = snap
        .iter()
        .map(|(k, v)| (k, (v.value, v.version)))
        .collect();
    for k in snap.keys().filter(|k| snap.kind(k) == Some("hash")) {
        let WriteResult::Values(all) = snap.read(k, Some(&Read::HashAll)) else {
            panic!("a hash reads as values")
        };
        let h: Fields = all
            .chunks(2)
            .map(|p| (p[0].clone().unwrap(), p[1].clone().unwrap()))
            .collect();
        m.insert(
            Bytes::copy_from_slice(k),
            (hash_text(&h), snap.version(k).unwrap()),
        );
    }
    for k in snap.keys().filter(|k| snap.kind(k) == Some("set")) {
        let WriteResult::Values(all) = snap.read(k, Some(&Read::SetMembers)) else {
            panic!("a set reads as values")
        };
        let s: Members = all.into_iter().map(Option::unwrap).collect();
        m.insert(
            Bytes::copy_from_slice(k),
            (set_text(&s), snap.version(k).unwrap()),
        );
    }
    for k in snap.keys().filter(|k| snap.kind(k) == Some("list")) {
        let range = Read::ListRange { start: 0, stop: -1 };
        let WriteResult::Values(all) = snap.read(k, Some(&range)) else {
            panic!("a list reads as values")
        };
        let l: Vec<Bytes> = all.into_iter().map(Option::unwrap).collect();
        m.insert(
            Bytes::copy_from_slice(k),
            (list_text(&l), snap.version(k).unwrap()),
        );
    }
    for k in snap.keys().filter(|k| snap.kind(k) == Some("zset")) {
        let range = Read::ZRange {
            range: ZRange::Rank { start: 0, stop: -1 },
            rev: false,
            limit: None,
            with_scores: true,
        };
        let WriteResult::Values(all) = snap.read(k, Some(&range)) else {
            panic!("a sorted set reads as values")
        };
        let z: Scores = all
            .chunks(2)
            .map(|p| {
                let score = std::str::from_utf8(p[1].as_ref().unwrap()).unwrap();
                (p[0].clone().unwrap(), score.parse().unwrap())
            })
            .collect();
        m.insert(
            Bytes::copy_from_slice(k),
            (zset_text(&z), snap.version(k).unwrap()),
        );
    }
    for k in snap.keys().filter(|k| snap.kind(k) == Some("stream")) {
        let full = Read::StreamInfo { entries: Some(0) };
        let WriteResult::Values(all) = snap.read(k, Some(&full)) else {
            panic!("a stream reads as values")
        };
        let mut all = all.into_iter();
        let mut next = || all.next().expect("XINFO STREAM FULL's layout");
        let text = |v: Option<Bytes>| String::from_utf8(v.unwrap().to_vec()).unwrap();
        let id = |v: Option<Bytes>| StreamId::parse(&v.unwrap(), 0).unwrap();
        let num = |v: Option<Bytes>| text(v).parse::<u64>().unwrap();
        let mut x = Stream::default();
        next(); // the length: the entries' count
        x.last = id(next());
        x.max_deleted = id(next());
        x.added = num(next());
        next(); // the first entry's ID
        let groups = num(next());
        while let Some(at) = next() {
            let fields = std::iter::from_fn(&mut next).collect();
            x.entries.insert(id(Some(at)), fields);
        }
        for _ in 0..groups {
            let name = next().unwrap();
            let mut g = Group {
                last: id(next()),
                ..Group::default()
            };
            next(); // entries-read and lag, left out
            next();
            next(); // the number pending, all of which follow
            for _ in 0..num(next()) {
                let (at, c) = (id(next()), next().unwrap());
                next(); // the delivery time
                g.pending.insert(at, (c, num(next())));
            }
            for _ in 0..num(next()) {
                let c = next().unwrap();
                next(); // seen and active times
                next();
                next(); // the number pending with it, all of which follow
                let mine = (0..num(next())).map(|_| {
                    let at = id(next());
                    next(); // the delivery time, and deliveries as the group's
                    next();
                    at
                });
                g.consumers.insert(c, mine.collect());
            }
            x.groups.insert(name, g);
        }
        m.insert(
            Bytes::copy_from_slice(k),
            (stream_text(&x), snap.version(k).unwrap()),
        );
    }
    for k in SYSTEM_KEYS {
        if let Some(v) = snap.system(k.as_bytes()) {
            m.insert(system_model_key(k.as_bytes()), (v.clone(), 0));
        }
    }
    m
}
/// An expiry already in the past: the put lands in the log but the key reads as absent.
const PAST: u64 = 1;

thread_local! {
    /// Encryption at rest for the runs of this thread (odd seeds of the model test).
    static ENCRYPT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The size limits of [`options`], which a script now and then breaks.
const KEY_BYTES_MAX: usize = 64;
const VALUE_BYTES_MAX: usize = 1024;
const RECORD_BYTES_MAX: usize = 2048;

fn options(fs: &SimFs) -> Options {
    let keyring = ENCRYPT.get().then(|| {
        Arc::new(
            keel_wal::Keyring::parse(
                "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            )
            .unwrap(),
        )
    });
    Options {
        // 4 KiB segments, so that rotation and pruning happen within a short workload.
        wal: keel_wal::Options {
            fs: Arc::new(fs.clone()),
            prepare_segments_in_background: false,
            segment_bytes_max: 4096,
            record_bytes_max: RECORD_BYTES_MAX as u32,
            batch_bytes_max: 4000,
            queue_bytes_max: 64 << 10,
            keyring,
            ..keel_wal::Options::default()
        },
        key_bytes_max: KEY_BYTES_MAX,
        value_bytes_max: VALUE_BYTES_MAX,
        // All I/O from the test's own thread, in a reproducible order.
        background: false,
        ..Options::default()
    }
}

/// The reference: what a transaction does to the model, or `None` if a guard fails.
fn model_apply(
    m: &Model,
    guards: &[Guard],
    writes: &[Write],
    lsn: Lsn,
) -> Option<(Model, Vec<WriteResult>)> {
    if guards
        .iter()
        .any(|g| m.get(&g.key).map(|e| e.1) != g.version)
    {
        return None;
    }
    let mut m = m.clone();
    let mut results = Vec::new();
    for w in writes {
        match w {
            Write::Put {
                key, value, ttl, ..
            } => {
                if *ttl == Ttl::At(PAST) {
                    m.remove(key);
                } else {
                    m.insert(key.clone(), (value.clone(), lsn));
                }
                results.push(WriteResult::Put(true));
            }
            Write::Delete { key } => results.push(WriteResult::Existed(m.remove(key).is_some())),
            Write::Get { key } => results.push(WriteResult::Value(m.get(key).map(|e| e.0.clone()))),
            Write::Read {
                key,
                op: Read::SetIsMember { member },
            } => results.push(WriteResult::Int(
                set_members(&m, key).contains(member) as i64
            )),
            Write::SetRange { key, offset, value } => {
                let mut v = m.get(key).map_or_else(Vec::new, |(v, _)| v.to_vec());
                let end = *offset as usize + value.len();
                if v.len() < end {
                    v.resize(end, 0);
                }
                v[*offset as usize..end].copy_from_slice(value);
                let len = v.len() as i64;
                if m.get(key).is_none_or(|(old, _)| old[..] != v[..]) {
                    m.insert(key.clone(), (v.into(), lsn));
                }
                results.push(WriteResult::Int(len));
            }
            Write::SetBit { key, offset, on } => {
                let mut v = m.get(key).map_or_else(Vec::new, |(v, _)| v.to_vec());
                let byte = (*offset / 8) as usize;
                if v.len() <= byte {
                    v.resize(byte + 1, 0);
                }
                let mask = 0x80u8 >> (*offset % 8);
                let was = v[byte] & mask != 0;
                if *on {
                    v[byte] |= mask;
                } else {
                    v[byte] &= !mask;
                }
                if m.get(key).is_none_or(|(old, _)| old[..] != v[..]) {
                    m.insert(key.clone(), (v.into(), lsn));
                }
                results.push(WriteResult::Int(was as i64));
            }
            Write::Append { key, suffix } => {
                let mut v = m.get(key).map_or_else(Vec::new, |(v, _)| v.to_vec());
                v.extend_from_slice(suffix);
                let len = v.len() as i64;
                if !suffix.is_empty() || !m.contains_key(key) {
                    m.insert(key.clone(), (v.into(), lsn));
                }
                results.push(WriteResult::Int(len));
            }
            Write::System { key, value } => {
                m.insert(system_model_key(key), (value.clone(), 0));
                results.push(WriteResult::Put(true));
            }
            Write::Incr { key, by } => {
                let cur: i64 = m
                    .get(key)
                    .map_or(0, |(v, _)| std::str::from_utf8(v).unwrap().parse().unwrap());
                m.insert(key.clone(), (Bytes::from((cur + by).to_string()), lsn));
                results.push(WriteResult::Int(cur + by));
            }
            Write::HashSet {
                key,
                pairs,
                only_new,
            } => {
                let mut h = m.get(key).map_or_else(Fields::new, |(v, _)| hash_fields(v));
                let mut added = 0;
                let mut changed = false;
                for (f, v) in pairs {
                    let new = !h.contains_key(f);
                    added += new as i64;
                    if new || !only_new {
                        h.insert(f.clone(), v.clone());
                        changed = true;
                    }
                }
                if changed {
                    m.insert(key.clone(), (hash_text(&h), lsn));
                }
                results.push(WriteResult::Int(added));
            }
            Write::HashDel { key, fields } => {
                let mut h = m.get(key).map_or_else(Fields::new, |(v, _)| hash_fields(v));
                let removed = fields.iter().filter(|f| h.remove(*f).is_some()).count();
                if h.is_empty() {
                    m.remove(key);
                } else if removed > 0 {
                    m.insert(key.clone(), (hash_text(&h), lsn));
                }
                results.push(WriteResult::Int(removed as i64));
            }
            Write::SetAdd { key, members } => {
                let mut s = set_members(&m, key);
                let added = members.iter().filter(|x| s.insert((*x).clone())).count();
                if added > 0 {
                    put_set(&mut m, key, &s, lsn);
                }
                results.push(WriteResult::Int(added as i64));
            }
            Write::SetRem { key, members } => {
                let mut s = set_members(&m, key);
                let removed = members.iter().filter(|x| s.remove(*x)).count();
                if removed > 0 {
                    put_set(&mut m, key, &s, lsn);
                }
                results.push(WriteResult::Int(removed as i64));
            }
            Write::SetMove { from, to, member } => {
                let (mut a, mut b) = (set_members(&m, from), set_members(&m, to));
                let moved = a.contains(member);
                if moved && from != to {
                    a.remove(member);
                    put_set(&mut m, from, &a, lsn);
                    if b.insert(member.clone()) {
                        put_set(&mut m, to, &b, lsn);
                    }
                }
                results.push(WriteResult::Int(moved as i64));
            }
            Write::SetStore { key, op, keys } => {
                let sets: Vec<Members> = keys.iter().map(|k| set_members(&m, k)).collect();
                let out: Members = match op {
                    SetOp::Union => sets.iter().flatten().cloned().collect(),
                    SetOp::Inter => sets[0]
                        .iter()
                        .filter(|x| sets[1..].iter().all(|s| s.contains(*x)))
                        .cloned()
                        .collect(),
                    SetOp::Diff => sets[0]
                        .iter()
                        .filter(|x| sets[1..].iter().all(|s| !s.contains(*x)))
                        .cloned()
                        .collect(),
                };
                if !out.is_empty() || m.contains_key(key) {
                    put_set(&mut m, key, &out, lsn);
                }
                results.push(WriteResult::Int(out.len() as i64));
            }
            Write::ListPush {
                key,
                front,
                elements,
                ..
            } => {
                let mut l = list_elements(&m, key);
                for e in elements {
                    if *front {
                        l.insert(0, e.clone());
                    } else {
                        l.push(e.clone());
                    }
                }
                put_list(&mut m, key, &l, lsn);
                results.push(WriteResult::Int(l.len() as i64));
            }
            Write::ListPop { key, front, count } => {
                let mut l = list_elements(&m, key);
                if l.is_empty() {
                    results.push(WriteResult::Value(None));
                    continue;
                }
                let n = count.unwrap_or(1).min(l.len());
                let popped: Vec<Bytes> = if *front {
                    l.drain(..n).collect()
                } else {
                    l.drain(l.len() - n..).rev().collect()
                };
                if n > 0 {
                    put_list(&mut m, key, &l, lsn);
                }
                results.push(match count {
                    None => WriteResult::Value(popped.into_iter().next()),
                    Some(_) => WriteResult::Values(popped.into_iter().map(Some).collect()),
                });
            }
            Write::ListPopFirst {
                keys, front, count, ..
            } => {
                let Some(key) = keys.iter().find(|k| m.contains_key(*k)) else {
                    results.push(WriteResult::Value(None));
                    continue;
                };
                let mut l = list_elements(&m, key);
                let n = (*count).min(l.len());
                let popped: Vec<Bytes> = if *front {
                    l.drain(..n).collect()
                } else {
                    l.drain(l.len() - n..).rev().collect()
                };
                put_list(&mut m, key, &l, lsn);
                let mut out = vec![Some(key.clone())];
                out.extend(popped.into_iter().map(Some));
                results.push(WriteResult::Values(out));
            }
            Write::ListMove {
                from,
                to,
                from_front,
                to_front,
            } => {
                let mut src = list_elements(&m, from);
                if src.is_empty() {
                    results.push(WriteResult::Value(None));
                    continue;
                }
                let e = if *from_front {
                    src.remove(0)
                } else {
                    src.pop().unwrap()
                };
                if from == to && src.is_empty() {
                    // The list stays as it is, but the key was written: its version moves.
                    m.get_mut(from).unwrap().1 = lsn;
                    results.push(WriteResult::Value(Some(e)));
                    continue;
                }
                put_list(&mut m, from, &src, lsn);
                let mut dst = list_elements(&m, to);
                if *to_front {
                    dst.insert(0, e.clone());
                } else {
                    dst.push(e.clone());
                }
                put_list(&mut m, to, &dst, lsn);
                results.push(WriteResult::Value(Some(e)));
            }
            Write::ListTrim { key, start, stop } => {
                let l = list_elements(&m, key);
                if !l.is_empty() {
                    let len = l.len() as i64;
                    let a = if *start < 0 {
                        (len + start).max(0)
                    } else {
                        *start
                    };
                    let b = if *stop < 0 {
                        len + stop
                    } else {
                        (*stop).min(len - 1)
                    };
                    let kept: Vec<Bytes> = if a > b || a >= len {
                        Vec::new()
                    } else {
                        l[a as usize..=b as usize].to_vec()
                    };
                    if kept.len() != l.len() {
                        put_list(&mut m, key, &kept, lsn);
                    }
                }
                results.push(WriteResult::Put(true));
            }
            Write::HashIncr { key, field, by } => {
                let mut h = m.get(key).map_or_else(Fields::new, |(v, _)| hash_fields(v));
                let cur: i64 = h
                    .get(field)
                    .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                h.insert(field.clone(), Bytes::from((cur + by).to_string()));
                m.insert(key.clone(), (hash_text(&h), lsn));
                results.push(WriteResult::Int(cur + by));
            }
            Write::ZAdd {
                key,
                pairs,
                only,
                cmp,
                ch,
                incr,
            } => {
                let mut z = zset_scores(&m, key);
                let (mut added, mut changed, mut touched, mut new_score) = (0, 0, false, None);
                for (score, member) in pairs {
                    match z.get(member).copied() {
                        None if *only == PutIf::Present => {}
                        None => {
                            z.insert(member.clone(), *score);
                            (added, touched, new_score) = (added + 1, true, Some(*score));
                        }
                        Some(_) if *only == PutIf::Absent => {}
                        Some(cur) => {
                            let new = if *incr { cur + score } else { *score };
                            let stopped = match cmp {
                                ZCmp::Any => false,
                                ZCmp::Greater => new <= cur,
                                ZCmp::Less => new >= cur,
                            };
                            if !stopped {
                                new_score = Some(new);
                                if new != cur {
                                    z.insert(member.clone(), new);
                                    (changed, touched) = (changed + 1, true);
                                }
                            }
                        }
                    }
                }
                if touched {
                    put_zset(&mut m, key, &z, lsn);
                }
                results.push(if *incr {
                    WriteResult::Value(new_score.map(|s| Bytes::from(format_score(s))))
                } else {
                    WriteResult::Int(added + if *ch { changed } else { 0 })
                });
            }
            Write::ZRem { key, members } => {
                let mut z = zset_scores(&m, key);
                let removed = members.iter().filter(|x| z.remove(*x).is_some()).count();
                if removed > 0 {
                    put_zset(&mut m, key, &z, lsn);
                }
                results.push(WriteResult::Int(removed as i64));
            }
            Write::ZRemRange {
                key,
                range: ZRange::Rank { start, stop },
            } => {
                let mut z = zset_scores(&m, key);
                let order = zset_order(&z);
                let len = order.len() as i64;
                let a = if *start < 0 {
                    (len + start).max(0)
                } else {
                    *start
                };
                let b = if *stop < 0 {
                    len + stop
                } else {
                    (*stop).min(len - 1)
                };
                let mut removed = 0;
                if a <= b && a < len {
                    for (member, _) in &order[a as usize..=b as usize] {
                        z.remove(member);
                        removed += 1;
                    }
                    put_zset(&mut m, key, &z, lsn);
                }
                results.push(WriteResult::Int(removed));
            }
            Write::ZPopFirst {
                keys, max, count, ..
            } => {
                let Some(key) = keys.iter().find(|k| m.contains_key(*k)) else {
                    results.push(WriteResult::Value(None));
                    continue;
                };
                let mut z = zset_scores(&m, key);
                let mut order = zset_order(&z);
                if *max {
                    order.reverse();
                }
                let mut out = vec![Some(key.clone())];
                for (member, score) in order.into_iter().take(*count) {
                    z.remove(&member);
                    out.push(Some(member));
                    out.push(Some(Bytes::from(format_score(score))));
                }
                put_zset(&mut m, key, &z, lsn);
                results.push(WriteResult::Values(out));
            }
            Write::ZStore {
                key,
                op,
                keys,
                weights,
                aggregate,
            } => {
                // The combining itself is zset_combine's (unit-tested against Redis's rules);
                // here what matters is that its result is logged and survives.
                let inputs: Vec<Vec<(Bytes, f64)>> = keys
                    .iter()
                    .map(|k| zset_scores(&m, k).into_iter().collect())
                    .collect();
                let out: Scores = zset_combine(*op, &inputs, weights, *aggregate)
                    .into_iter()
                    .collect();
                if !out.is_empty() || m.contains_key(key) {
                    put_zset(&mut m, key, &out, lsn);
                }
                results.push(WriteResult::Int(out.len() as i64));
            }
            Write::StreamAdd {
                key,
                id: StreamIdSpec::Exact(id),
                fields,
                no_create: false,
                trim,
            } => {
                let mut x = stream_of(&m, key).unwrap_or_default();
                if *id == StreamId::MIN {
                    results.push(WriteResult::Failed(WriteError::StreamIdZero));
                    continue;
                }
                if *id <= x.last {
                    results.push(WriteResult::Failed(WriteError::StreamIdTooSmall));
                    continue;
                }
                x.entries.insert(*id, fields.clone());
                (x.last, x.added) = (*id, x.added + 1);
                if let Some(t) = trim {
                    stream_trim(&mut x, t);
                }
                m.insert(key.clone(), (stream_text(&x), lsn));
                results.push(WriteResult::Value(Some(Bytes::from(id.to_string()))));
            }
            Write::StreamDel { key, ids } => {
                let mut x = stream_of(&m, key).unwrap_or_default();
                let mut n = 0;
                for id in ids {
                    if x.entries.remove(id).is_some() {
                        x.max_deleted = x.max_deleted.max(*id);
                        n += 1;
                    }
                }
                if n > 0 {
                    m.insert(key.clone(), (stream_text(&x), lsn));
                }
                results.push(WriteResult::Int(n));
            }
            Write::StreamTrimTo { key, trim } => {
                let mut x = stream_of(&m, key).unwrap_or_default();
                let n = stream_trim(&mut x, trim);
                if n > 0 {
                    m.insert(key.clone(), (stream_text(&x), lsn));
                }
                results.push(WriteResult::Int(n as i64));
            }
            Write::StreamGroupCreate {
                key,
                group,
                id,
                mkstream,
                ..
            } => {
                let mut x = match stream_of(&m, key) {
                    Some(x) if x.groups.contains_key(group) => {
                        results.push(WriteResult::Failed(WriteError::GroupExists));
                        continue;
                    }
                    Some(x) => x,
                    None if *mkstream => Stream::default(),
                    None => {
                        results.push(WriteResult::Failed(WriteError::NoSuchKey));
                        continue;
                    }
                };
                let g = Group {
                    last: id.unwrap_or(x.last),
                    ..Group::default()
                };
                x.groups.insert(group.clone(), g);
                m.insert(key.clone(), (stream_text(&x), lsn));
                results.push(WriteResult::Put(true));
            }
            Write::StreamGroupSetId { key, group, id, .. } => {
                let mut x = match stream_group(&m, key, group) {
                    Ok(x) => x,
                    Err(e) => {
                        results.push(WriteResult::Failed(e));
                        continue;
                    }
                };
                let last = x.last;
                x.groups.get_mut(group).unwrap().last = id.unwrap_or(last);
                m.insert(key.clone(), (stream_text(&x), lsn));
                results.push(WriteResult::Put(true));
            }
            Write::StreamGroupDestroy { key, group } => {
                let result = match stream_group(&m, key, group) {
                    Ok(mut x) => {
                        x.groups.remove(group);
                        m.insert(key.clone(), (stream_text(&x), lsn));
                        WriteResult::Int(1)
                    }
                    Err(WriteError::NoGroup) => WriteResult::Int(0),
                    Err(e) => WriteResult::Failed(e),
                };
                results.push(result);
            }
            Write::StreamConsumerCreate {
                key,
                group,
                consumer,
            } => {
                let result = match stream_group(&m, key, group) {
                    Ok(mut x) => {
                        let g = x.groups.get_mut(group).unwrap();
                        let new = !g.consumers.contains_key(consumer);
                        if new {
                            g.consumers.insert(consumer.clone(), Default::default());
                            m.insert(key.clone(), (stream_text(&x), lsn));
                        }
                        WriteResult::Int(new as i64)
                    }
                    Err(e) => WriteResult::Failed(e),
                };
                results.push(result);
            }
            Write::StreamConsumerDelete {
                key,
                group,
                consumer,
            } => {
                let result = match stream_group(&m, key, group) {
                    Ok(mut x) => {
                        let g = x.groups.get_mut(group).unwrap();
                        // Its pending entries go with it, never acknowledged.
                        let had = g.consumers.remove(consumer);
                        for id in had.iter().flatten() {
                            g.pending.remove(id);
                        }
                        if had.is_some() {
                            m.insert(key.clone(), (stream_text(&x), lsn));
                        }
                        WriteResult::Int(had.map_or(0, |ids| ids.len() as i64))
                    }
                    Err(e) => WriteResult::Failed(e),
                };
                results.push(result);
            }
            Write::StreamReadGroup {
                group,
                consumer,
                streams,
                count,
                no_ack,
                retry,
            } => {
                let found: Result<Vec<Stream>, _> = streams
                    .iter()
                    .map(|(k, _)| stream_group(&m, k, group))
                    .collect();
                let Ok(found) = found else {
                    results.push(WriteResult::Failed(WriteError::NoGroup));
                    continue;
                };
                let limit = count.unwrap_or(usize::MAX);
                let mut out = Vec::new();
                for ((key, after), mut x) in streams.iter().zip(found) {
                    let g = x.groups.get_mut(group).unwrap();
                    let existed = g.consumers.contains_key(consumer);
                    let mine = g.consumers.entry(consumer.clone()).or_default().clone();
                    let before = out.len();
                    match after {
                        // Past the group's last ID: delivered, pending unless NOACK.
                        None => {
                            let new = x.entries.range((Excluded(g.last), Unbounded));
                            for (id, fields) in new.take(limit) {
                                stream_entry(&mut out, *id, Some(fields));
                                g.last = *id;
                                if !no_ack {
                                    g.give(*id, consumer, 1);
                                }
                            }
                        }
                        // The consumer's own pending entries: those still in the stream
                        // delivered once more, the others as an ID alone.
                        Some(after) => {
                            for id in mine.range((Excluded(*after), Unbounded)).take(limit) {
                                let fields = x.entries.get(id);
                                stream_entry(&mut out, *id, fields);
                                if fields.is_some() {
                                    g.pending.get_mut(id).unwrap().1 += 1;
                                }
                            }
                        }
                    }
                    // A blocked read's later try that gives an existing consumer nothing
                    // logs nothing (an ID alone, of an entry since deleted, is not given).
                    let given = out[before..]
                        .windows(2)
                        .any(|w| w[0].is_some() && w[1].is_some());
                    out.push(None);
                    if !(*retry && existed && !given) {
                        m.insert(key.clone(), (stream_text(&x), lsn));
                    }
                }
                results.push(WriteResult::Values(out));
            }
            Write::StreamAck { key, group, ids } => {
                let Ok(mut x) = stream_group(&m, key, group) else {
                    results.push(WriteResult::Int(0));
                    continue;
                };
                let g = x.groups.get_mut(group).unwrap();
                let n = ids.iter().filter(|id| g.ack(**id)).count();
                if n > 0 {
                    m.insert(key.clone(), (stream_text(&x), lsn));
                }
                results.push(WriteResult::Int(n as i64));
            }
            Write::StreamClaim {
                key,
                group,
                consumer,
                claim,
                ..
            } => {
                let Ok(mut x) = stream_group(&m, key, group) else {
                    results.push(WriteResult::Failed(WriteError::NoGroup));
                    continue;
                };
                let g = x.groups.get_mut(group).unwrap();
                let (mut out, mut gone, mut changed) = (Vec::new(), Vec::new(), false);
                // Each pending entry met: claimed if still in the stream (from whoever had it,
                // delivered once more unless JUSTID), else acknowledged.
                let mut meet = |g: &mut Group, id: StreamId, was: u64, just_id: bool| {
                    changed = true;
                    match x.entries.get(&id) {
                        Some(fields) => {
                            g.give(id, consumer, was + u64::from(!just_id));
                            stream_entry(&mut out, id, (!just_id).then_some(fields));
                        }
                        None => {
                            g.ack(id);
                            gone.push(Some(Bytes::from(id.to_string())));
                        }
                    }
                };
                match claim {
                    Claim::Ids {
                        ids,
                        force,
                        just_id,
                        ..
                    } => {
                        for id in ids {
                            match g.pending.get(id) {
                                Some((_, n)) => meet(g, *id, *n, *just_id),
                                // FORCE: an entry of the stream pending with no one, as if
                                // delivered once.
                                None if *force && x.entries.contains_key(id) => {
                                    meet(g, *id, 1, *just_id)
                                }
                                None => {}
                            }
                        }
                    }
                    Claim::Scan {
                        start,
                        count,
                        just_id,
                    } => {
                        // At most `count` claimed or acknowledged, of at most 10 × `count`
                        // looked at (every one is, at min-idle 0); the next ID is the cursor.
                        let from: Vec<(StreamId, u64)> = (g.pending.range(start..))
                            .map(|(id, (_, n))| (*id, *n))
                            .collect();
                        let met = from.len().min(*count);
                        for (id, n) in &from[..met] {
                            meet(g, *id, *n, *just_id);
                        }
                        let cursor = from.get(met).map_or(StreamId::MIN, |(id, _)| *id);
                        out.insert(0, Some(Bytes::from(cursor.to_string())));
                        out.push(None);
                        out.append(&mut gone);
                    }
                }
                if changed {
                    m.insert(key.clone(), (stream_text(&x), lsn));
                }
                results.push(WriteResult::Values(out));
            }
            other => unreachable!("not generated: {other:?}"),
        }
    }
    Some((m, results))
}

// Keys are counters (only incremented, or reset by a script), hashes (only written as hashes),
// sets (only written as sets), and so on for lists, sorted sets and streams, or plain keys, so
// every increment is valid and no write meets another type. A hash's field `n` is only
// incremented.
fn plain(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("k{}", rng.below(12)))
}
fn counter(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("n{}", rng.below(3)))
}
fn set(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("s{}", rng.below(3)))
}
fn member(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("m{}", rng.below(8)))
}
fn list(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("l{}", rng.below(3)))
}

fn random_txn(rng: &mut Rng, m: &Model, step: usize) -> (Vec<Guard>, Vec<Write>) {
    let mut guards = Vec::new();
    if rng.chance(25) {
        let key = plain(rng);
        let version = match m.get(&key) {
            Some(e) if rng.chance(80) => Some(e.1),
            Some(e) => Some(e.1 + 1),
            None => None,
        };
        guards.push(Guard { key, version });
    }
    let writes = (0..1 + rng.below(3))
        .map(|_| random_write(rng, m, step))
        .collect();
    (guards, writes)
}

/// One write, of any type the model knows.
fn random_write(rng: &mut Rng, m: &Model, step: usize) -> Write {
    let hash = |rng: &mut Rng| Bytes::from(format!("h{}", rng.below(3)));
    let zset = |rng: &mut Rng| Bytes::from(format!("z{}", rng.below(3)));
    // Halves and integers: sums stay exact, so the model's scores equal the engine's.
    let score = |rng: &mut Rng| (rng.below(21) as f64 - 10.0) / 2.0;
    let field = |rng: &mut Rng| Bytes::from(format!("f{}", rng.below(6)));
    match rng.below(45) {
        29..=44 => stream_write(rng, m, step),
        23 | 24 => {
            let incr = rng.chance(20);
            let n = if incr { 1 } else { 1 + rng.below(3) };
            Write::ZAdd {
                key: zset(rng),
                pairs: (0..n).map(|_| (score(rng), member(rng))).collect(),
                only: [PutIf::Always, PutIf::Always, PutIf::Absent, PutIf::Present]
                    [rng.below(4) as usize],
                cmp: [ZCmp::Any, ZCmp::Any, ZCmp::Greater, ZCmp::Less][rng.below(4) as usize],
                ch: rng.chance(50),
                incr,
            }
        }
        25 => Write::ZRem {
            key: zset(rng),
            members: (0..1 + rng.below(3)).map(|_| member(rng)).collect(),
        },
        26 => Write::ZPopFirst {
            keys: (0..1 + rng.below(3)).map(|_| zset(rng)).collect(),
            max: rng.chance(50),
            count: 1 + rng.below(3) as usize,
            skip_other_types: false,
        },
        27 => {
            let keys: Vec<Bytes> = (0..1 + rng.below(3)).map(|_| zset(rng)).collect();
            Write::ZStore {
                key: zset(rng),
                op: [SetOp::Inter, SetOp::Union, SetOp::Diff][rng.below(3) as usize],
                weights: if rng.chance(50) {
                    keys.iter().map(|_| rng.below(4) as f64).collect()
                } else {
                    Vec::new()
                },
                keys,
                aggregate: [Aggregate::Sum, Aggregate::Min, Aggregate::Max][rng.below(3) as usize],
            }
        }
        28 => Write::ZRemRange {
            key: zset(rng),
            range: ZRange::Rank {
                start: rng.below(5) as i64 - 2,
                stop: rng.below(7) as i64 - 3,
            },
        },
        22 => Write::ListPopFirst {
            keys: (0..1 + rng.below(3)).map(|_| list(rng)).collect(),
            front: rng.chance(50),
            count: 1 + rng.below(3) as usize,
            skip_other_types: false,
        },
        18 => Write::ListPush {
            key: list(rng),
            front: rng.chance(50),
            elements: (0..1 + rng.below(3))
                .map(|i| Bytes::from(format!("e{step}.{i}")))
                .collect(),
            only_existing: false,
        },
        19 => Write::ListPop {
            key: list(rng),
            front: rng.chance(50),
            count: rng.chance(50).then(|| rng.below(4) as usize),
        },
        20 => Write::ListMove {
            from: list(rng),
            to: list(rng),
            from_front: rng.chance(50),
            to_front: rng.chance(50),
        },
        21 => Write::ListTrim {
            key: list(rng),
            start: rng.below(5) as i64 - 2,
            stop: rng.below(7) as i64 - 3,
        },
        14 => Write::SetAdd {
            key: set(rng),
            members: (0..1 + rng.below(4)).map(|_| member(rng)).collect(),
        },
        15 => Write::SetRem {
            key: set(rng),
            members: (0..1 + rng.below(3)).map(|_| member(rng)).collect(),
        },
        16 => Write::SetMove {
            from: set(rng),
            to: set(rng),
            member: member(rng),
        },
        17 => Write::SetStore {
            key: set(rng),
            op: [SetOp::Inter, SetOp::Union, SetOp::Diff][rng.below(3) as usize],
            keys: (0..1 + rng.below(3)).map(|_| set(rng)).collect(),
        },
        10 | 11 => Write::HashSet {
            key: hash(rng),
            pairs: (0..1 + rng.below(3))
                .map(|_| {
                    let len = rng.below(200) as usize;
                    (
                        field(rng),
                        Bytes::from(format!("s{step}-{}", "v".repeat(len))),
                    )
                })
                .collect(),
            only_new: rng.chance(20),
        },
        12 => Write::HashDel {
            key: hash(rng),
            fields: (0..1 + rng.below(3)).map(|_| field(rng)).collect(),
        },
        13 => Write::HashIncr {
            key: hash(rng),
            field: Bytes::from_static(b"n"),
            by: rng.below(100) as i64 - 50,
        },
        0..=4 => {
            let len = rng.below(300) as usize;
            Write::Put {
                key: plain(rng),
                value: Bytes::from(format!("s{step}-{}", "v".repeat(len))),
                // Expiry without wall-clock races: never, far away, or already past.
                ttl: match rng.below(10) {
                    0 => Ttl::At(PAST),
                    1 => Ttl::At(u64::MAX / 2),
                    _ => Ttl::None,
                },
                only: PutIf::Always,
            }
        }
        5 => Write::Delete { key: plain(rng) },
        // Byte-range writes of a plain key: only the changed bytes are logged, and a key
        // whose expiry passed is written as a new string (the create flag).
        6 => match rng.below(3) {
            0 => Write::SetRange {
                key: plain(rng),
                offset: rng.below(40),
                value: Bytes::from(format!("r{step}")),
            },
            1 => Write::SetBit {
                key: plain(rng),
                offset: rng.below(400),
                on: rng.chance(70),
            },
            _ => Write::Append {
                key: plain(rng),
                suffix: Bytes::from(format!("a{step}")),
            },
        },
        // The cluster's bookkeeping: written beside user writes, in the same record.
        7 => Write::System {
            key: Bytes::from_static(SYSTEM_KEYS[rng.below(2) as usize].as_bytes()),
            value: Bytes::from(format!("at step {step}")),
        },
        _ => Write::Incr {
            key: counter(rng),
            by: rng.below(100) as i64 - 50,
        },
    }
}

/// A stream or consumer-group write on one of two streams (keys `x0`, `x1`, which hold
/// nothing else), naming entries and pending entries there more often than not. XADD's IDs
/// grow with `step`, and are sometimes at or below the stream's last.
fn stream_write(rng: &mut Rng, m: &Model, step: usize) -> Write {
    let key = Bytes::from(format!("x{}", rng.below(2)));
    let x = stream_of(m, &key).unwrap_or_default();
    // Mostly a group the stream has.
    let group = match x
        .groups
        .keys()
        .nth(rng.below(x.groups.len().max(1) as u64) as usize)
    {
        Some(g) if rng.chance(85) => g.clone(),
        _ => Bytes::from(format!("g{}", rng.below(2))),
    };
    let pick = |rng: &mut Rng, ids: &[StreamId]| match ids.len() as u64 {
        n if n > 0 && rng.chance(80) => ids[rng.below(n) as usize],
        _ => StreamId::new(rng.below(step as u64 + 2), rng.below(3)),
    };
    let entries: Vec<StreamId> = x.entries.keys().copied().collect();
    let pending: Vec<(StreamId, Bytes)> = (x.groups.get(&group).into_iter())
        .flat_map(|g| g.pending.iter().map(|(id, (c, _))| (*id, c.clone())))
        .collect();
    let anyone = |rng: &mut Rng| Bytes::from(format!("c{}", rng.below(3)));
    // Often a consumer with entries pending (its history is then worth reading); claims are
    // by anyone.
    let consumer = match pending.len() as u64 {
        n if n > 0 && rng.chance(60) => pending[rng.below(n) as usize].1.clone(),
        _ => anyone(rng),
    };
    let pending: Vec<StreamId> = pending.into_iter().map(|(id, _)| id).collect();
    let id = |rng: &mut Rng| pick(rng, &entries);
    // Distinct IDs, mostly of `from` (XCLAIM is given each pending entry once).
    let distinct = |rng: &mut Rng, from: &[StreamId]| {
        let ids: std::collections::BTreeSet<StreamId> =
            (0..1 + rng.below(3)).map(|_| pick(rng, from)).collect();
        ids.into_iter().collect::<Vec<_>>()
    };
    let trim = |rng: &mut Rng| StreamTrim {
        by: if rng.chance(70) {
            StreamTrimBy::MaxLen(rng.below(6))
        } else {
            StreamTrimBy::MinId(id(rng))
        },
        limit: None,
        node: 0,
    };
    // A stream without groups gets one sooner.
    let op = match rng.below(20) {
        _ if x.groups.is_empty() && rng.chance(30) => 7,
        op => op,
    };
    match op {
        0..=4 => {
            let at = if rng.chance(10) {
                rng.below(step as u64 + 1)
            } else {
                step as u64
            };
            Write::StreamAdd {
                key,
                id: StreamIdSpec::Exact(StreamId::new(at, rng.below(3))),
                fields: (0..1 + rng.below(2))
                    .flat_map(|i| {
                        [
                            Bytes::from(format!("f{i}")),
                            Bytes::from(format!("v{step}")),
                        ]
                    })
                    .collect(),
                no_create: false,
                trim: rng.chance(15).then(|| trim(rng)),
            }
        }
        5 => Write::StreamDel {
            key,
            ids: (0..1 + rng.below(3)).map(|_| id(rng)).collect(),
        },
        6 => Write::StreamTrimTo {
            key,
            trim: trim(rng),
        },
        7 => Write::StreamGroupCreate {
            key,
            group,
            // `$`, or from the start, or from an entry.
            id: match rng.below(3) {
                0 => None,
                1 => Some(StreamId::MIN),
                _ => Some(id(rng)),
            },
            entries_read: None,
            mkstream: rng.chance(50),
        },
        8 | 9 => match rng.below(5) {
            0 => Write::StreamGroupSetId {
                key,
                group,
                id: rng.chance(50).then_some(StreamId::MIN),
                entries_read: None,
            },
            1 => Write::StreamGroupDestroy { key, group },
            2 => Write::StreamConsumerCreate {
                key,
                group,
                consumer,
            },
            3 => Write::StreamConsumerDelete {
                key,
                group,
                consumer,
            },
            _ => Write::Delete { key },
        },
        10..=13 => {
            let history = rng.chance(30);
            let after = |rng: &mut Rng| {
                history.then(|| {
                    if rng.chance(60) {
                        StreamId::MIN
                    } else {
                        pick(rng, &pending)
                    }
                })
            };
            let mut streams = vec![(key, after(rng))];
            if rng.chance(20) {
                let other = Bytes::from(if streams[0].0 == "x0" { "x1" } else { "x0" });
                streams.push((other, after(rng)));
            }
            Write::StreamReadGroup {
                group,
                consumer,
                streams,
                count: rng.chance(70).then(|| 1 + rng.below(3) as usize),
                no_ack: rng.chance(15),
                retry: rng.chance(20),
            }
        }
        14..=16 => Write::StreamAck {
            key,
            group,
            ids: distinct(rng, &pending),
        },
        17 | 18 => {
            // FORCE also takes entries pending with no one.
            let force = rng.chance(20);
            Write::StreamClaim {
                key,
                group,
                consumer: anyone(rng),
                min_idle_ms: 0,
                claim: Claim::Ids {
                    ids: distinct(rng, if force { &entries } else { &pending }),
                    delivered: None,
                    deliveries: None,
                    force,
                    just_id: rng.chance(30),
                    last_id: None,
                },
            }
        }
        _ => Write::StreamClaim {
            key,
            group,
            consumer: anyone(rng),
            min_idle_ms: 0,
            claim: Claim::Scan {
                start: if rng.chance(70) {
                    StreamId::MIN
                } else {
                    pick(rng, &pending)
                },
                count: 1 + rng.below(2) as usize,
                just_id: rng.chance(30),
            },
        },
    }
}

/// A script's calls as it made them, each with what it returned: the results, or the error
/// that refused the call whole.
type Calls = Vec<(Vec<Write>, Result<Vec<WriteResult>, String>)>;

/// A script (EVAL): its calls made one by one in one transaction, logged as one record. It is
/// drawn from its own seed, so the engine's run and the model's make the same calls for as long
/// as they return the same results.
#[derive(Clone, Copy, Debug)]
struct ScriptTxn {
    seed: u64,
    step: usize,
}

impl ScriptTxn {
    /// Makes the script's calls through `decide` (the engine's `Script::call`, or the model's),
    /// against `m` as it was before the script. Some branch on what an earlier call read or
    /// wrote, as a script's control flow does; some are refused by a limit; and the script may
    /// stop half-way as one that raises an error does, keeping what it wrote so far.
    fn run(
        self,
        m: &Model,
        decide: &mut dyn FnMut(Vec<Write>) -> Result<Vec<WriteResult>, String>,
    ) -> Calls {
        let (mut rng, step) = (Rng::new(self.seed), self.step);
        let mut calls = Calls::new();
        let mut call = |writes: Vec<Write>| {
            let r = decide(writes.clone());
            calls.push((writes, r.clone()));
            r.ok()
        };
        for _ in 0..1 + rng.below(4) {
            // Six kinds of call, 4 in 25 each, and a seventh 1 in 25.
            match rng.below(25) / 4 {
                // GET, then SET if absent or APPEND if not; a value grown long raises an error.
                0 => {
                    let key = plain(&mut rng);
                    let then = match call(vec![Write::Get { key: key.clone() }]).as_deref() {
                        Some([WriteResult::Value(None)]) => Write::Put {
                            key,
                            value: Bytes::from(format!("script{step}")),
                            ttl: Ttl::None,
                            only: PutIf::Always,
                        },
                        Some([WriteResult::Value(Some(v))]) if v.len() < 250 => Write::Append {
                            key,
                            suffix: Bytes::from(format!("+{step}")),
                        },
                        _ => break,
                    };
                    call(vec![then]);
                }
                // INCR, then GET of the same counter: one gone negative is reset.
                1 => {
                    let key = counter(&mut rng);
                    let by = rng.below(100) as i64 - 50;
                    call(vec![Write::Incr {
                        key: key.clone(),
                        by,
                    }]);
                    let got = call(vec![Write::Get { key: key.clone() }]);
                    if let Some([WriteResult::Value(Some(v))]) = got.as_deref() {
                        if v.starts_with(b"-") {
                            call(vec![Write::Put {
                                key,
                                value: Bytes::from_static(b"0"),
                                ttl: Ttl::None,
                                only: PutIf::Always,
                            }]);
                        }
                    }
                }
                // SISMEMBER, then SMOVE the member elsewhere if it is there, else SADD it.
                2 => {
                    let (key, member) = (set(&mut rng), member(&mut rng));
                    let op = Read::SetIsMember {
                        member: member.clone(),
                    };
                    let then = match call(vec![Write::Read {
                        key: key.clone(),
                        op,
                    }])
                    .as_deref()
                    {
                        Some([WriteResult::Int(1)]) => Write::SetMove {
                            from: key,
                            to: set(&mut rng),
                            member,
                        },
                        _ => Write::SetAdd {
                            key,
                            members: vec![member],
                        },
                    };
                    call(vec![then]);
                }
                // A pop, and the element popped pushed onto a list or added to a set.
                3 => {
                    let popped = call(vec![Write::ListPop {
                        key: list(&mut rng),
                        front: rng.chance(50),
                        count: None,
                    }]);
                    if let Some([WriteResult::Value(Some(e))]) = popped.as_deref() {
                        call(vec![if rng.chance(50) {
                            Write::ListPush {
                                key: list(&mut rng),
                                front: rng.chance(50),
                                elements: vec![e.clone()],
                                only_existing: false,
                            }
                        } else {
                            Write::SetAdd {
                                key: set(&mut rng),
                                members: vec![e.clone()],
                            }
                        }]);
                    }
                }
                // A call with a put over a limit, refused whole (its other write too); the error
                // is then raised (redis.call) or caught (redis.pcall) and the script goes on.
                4 => {
                    let big = if rng.chance(50) {
                        Write::Put {
                            key: Bytes::from(format!("k{}", "x".repeat(KEY_BYTES_MAX))),
                            value: Bytes::from_static(b"v"),
                            ttl: Ttl::None,
                            only: PutIf::Always,
                        }
                    } else {
                        let len = VALUE_BYTES_MAX + 1 + rng.below(100) as usize;
                        Write::Put {
                            key: plain(&mut rng),
                            value: Bytes::from("v".repeat(len)),
                            ttl: Ttl::None,
                            only: PutIf::Always,
                        }
                    };
                    let mut writes = vec![random_write(&mut rng, m, step)];
                    writes.insert(rng.below(2) as usize, big);
                    if call(writes).is_none() && rng.chance(50) {
                        break;
                    }
                }
                5 => {
                    let writes = (0..1 + rng.below(2))
                        .map(|_| random_write(&mut rng, m, step))
                        .collect();
                    call(writes);
                }
                // Puts within the limits, but too big for one log record between them: the
                // whole script is refused when it ends, with what it wrote before.
                _ => {
                    let writes = (0..3)
                        .map(|_| Write::Put {
                            key: plain(&mut rng),
                            value: Bytes::from("v".repeat(VALUE_BYTES_MAX)),
                            ttl: Ttl::None,
                            only: PutIf::Always,
                        })
                        .collect();
                    call(writes);
                }
            }
            // An error raised half-way.
            if rng.chance(10) {
                break;
            }
        }
        calls
    }

    /// The model's run: the state the script leaves, its writes at `lsn`, and its calls.
    fn model(self, m: &Model, lsn: Lsn) -> (Model, Calls) {
        let mut after = m.clone();
        let calls = self.run(m, &mut |writes| {
            if let Some(err) = over_limit(&writes) {
                return Err(err.to_string());
            }
            let (next, results) = model_apply(&after, &[], &writes, lsn).expect("no guards");
            after = next;
            Ok(results)
        });
        (after, calls)
    }
}

/// Whether the puts a script made (those not refused) are already more than one log record
/// holds.
fn too_big(calls: &Calls) -> bool {
    let put = |w: &Write| match w {
        Write::Put { value, .. } => value.len(),
        _ => 0,
    };
    let bytes: usize = (calls.iter())
        .filter(|(_, r)| r.is_ok())
        .flat_map(|(writes, _)| writes.iter().map(put))
        .sum();
    bytes > RECORD_BYTES_MAX
}

/// The limit a call breaks, which `Script::call` refuses it for: of the writes the workload
/// makes, only a script's oversized puts do.
fn over_limit(writes: &[Write]) -> Option<keel_engine::Error> {
    writes.iter().find_map(|w| match w {
        Write::Put { key, .. } if key.len() > KEY_BYTES_MAX => {
            Some(keel_engine::Error::KeyTooLarge {
                len: key.len(),
                max: KEY_BYTES_MAX,
            })
        }
        Write::Put { value, .. } if value.len() > VALUE_BYTES_MAX => {
            Some(keel_engine::Error::ValueTooLarge {
                len: value.len(),
                max: VALUE_BYTES_MAX,
            })
        }
        _ => None,
    })
}

fn values(m: &Model) -> BTreeMap<Bytes, Bytes> {
    m.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
}

/// The transaction the engine failed on: it may have landed, whole, or not at all.
enum InFlight {
    /// Guarded writes, under a request id or not.
    Writes(Option<Bytes>, Vec<Guard>, Vec<Write>),
    Script(ScriptTxn),
}

fn now_ms() -> u64 {
    let since = std::time::UNIX_EPOCH.elapsed().unwrap();
    since.as_millis() as u64
}

/// Runs `steps` transactions, crashing at operation `crash_at`; returns the operations issued.
fn run(seed: u64, steps: usize, crash_at: Option<u64>) -> Result<u64, String> {
    let fs = SimFs::new(seed);
    if let Some(k) = crash_at {
        fs.crash_at(k);
    }
    // A quarter of the runs also meet an I/O error or a full disk somewhere.
    let mut frng = Rng::new(seed ^ 0xFA);
    if frng.chance(25) {
        fs.set_faults(match frng.below(3) {
            0 => Faults {
                eio_on_sync: 1 + frng.below(30),
                ..Faults::default()
            },
            1 => Faults {
                eio_on_write: 1 + frng.below(60),
                ..Faults::default()
            },
            _ => Faults {
                space_bytes: Some(8192 + frng.below(40_000)),
                ..Faults::default()
            },
        });
    }
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    let mut in_flight = None;
    let mut seen_lsn = 0;
    if let Ok((e, _)) = Engine::open(DIR, options(&fs)) {
        for step in 0..steps {
            if rng.chance(12) {
                // A checkpoint changes no state, and a crash inside it must lose nothing (P6).
                if e.checkpoint().is_err() {
                    break;
                }
                continue;
            }
            if rng.chance(5) {
                // Removing expired keys changes nothing a reader can see.
                if e.remove_expired(100).is_err() {
                    break;
                }
                continue;
            }
            // A script now and then: its calls decided one by one, and logged as one record.
            if rng.chance(15) {
                let script = ScriptTxn {
                    seed: rng.next_u64(),
                    step,
                };
                let submitted = e.submit_script(now_ms(), |s| {
                    script.run(&model, &mut |w| s.call(w).map_err(|e| e.to_string()))
                });
                match submitted.and_then(|(calls, p)| Ok((calls, p.wait()?))) {
                    Ok((calls, Outcome::Committed { lsn, .. })) => {
                        let (m, expected) = script.model(&model, lsn.unwrap_or(0));
                        if too_big(&expected) {
                            return Err(format!("step {step}: {script:?}: committed, too big"));
                        }
                        if calls != expected {
                            return Err(format!(
                                "step {step}: {script:?}: calls {calls:?}, model {expected:?}"
                            ));
                        }
                        match lsn {
                            Some(_) => model = m,
                            None if values(&m) != values(&model) => {
                                return Err(format!(
                                    "step {step}: {script:?} logged nothing, yet the model changed"
                                ))
                            }
                            None => {}
                        }
                    }
                    Ok((_, other)) => return Err(format!("step {step}: {script:?}: {other:?}")),
                    // Too big for one record: refused whole, and nothing of it applies.
                    Err(keel_engine::Error::TxnTooLarge { .. }) => {
                        if e.read(observed) != model {
                            return Err(format!("step {step}: {script:?}: refused, yet applied"));
                        }
                    }
                    Err(_) => {
                        in_flight = Some(InFlight::Script(script));
                        break;
                    }
                }
                seen_lsn = seen_lsn.max(e.read(|v| v.lsn()));
                continue;
            }
            let (guards, writes) = random_txn(&mut rng, &model, step);
            let id = rng.chance(50).then(|| Bytes::from(format!("q{step}")));
            let result = match &id {
                Some(id) => e.commit_request(id.clone(), guards.clone(), writes.clone()),
                None => e.commit(guards.clone(), writes.clone()),
            };
            match result {
                Ok(Outcome::Committed {
                    lsn: Some(lsn),
                    results,
                    ..
                }) => {
                    let (m, expected) = model_apply(&model, &guards, &writes, lsn).ok_or(
                        format!("step {step}: committed but the model's guard failed"),
                    )?;
                    if results != expected {
                        return Err(format!(
                            "step {step}: results {results:?}, model {expected:?}"
                        ));
                    }
                    model = m;
                }
                Ok(Outcome::Committed { lsn: None, .. }) => {
                    let (m, _) = model_apply(&model, &guards, &writes, 0)
                        .ok_or("nothing written but the guard fails")?;
                    if values(&m) != values(&model) {
                        return Err(format!(
                            "step {step}: nothing was logged, yet the model changed"
                        ));
                    }
                }
                Ok(Outcome::GuardFailed(_)) => {
                    if model_apply(&model, &guards, &writes, 0).is_some() {
                        return Err(format!(
                            "step {step}: guard failed, the model says it holds"
                        ));
                    }
                }
                Ok(Outcome::Fenced) => {
                    return Err(format!("step {step}: fenced, but no fence is configured"))
                }
                Err(_) => {
                    in_flight = Some(InFlight::Writes(id, guards, writes));
                    break;
                }
            }
            seen_lsn = seen_lsn.max(e.read(|v| v.lsn()));
        }
    }
    let ops = fs.counts().total;
    let image = fs.crash(seed ^ 0x5EED);
    let (e, _) = Engine::open(DIR, options(&image)).map_err(|e| format!("recovery failed: {e}"))?;
    let (lsn, got) = e.read(|v| (v.lsn(), observed(v)));
    if lsn < seen_lsn {
        return Err(format!(
            "a reader saw LSN {seen_lsn}, but only {lsn} survived (P10)"
        ));
    }
    // The one unacknowledged transaction (a script too) may have made it, whole, or not at all.
    let with_in_flight = match &in_flight {
        Some(InFlight::Writes(_, g, w)) => model_apply(&model, g, w, lsn).map(|(m, _)| m),
        Some(InFlight::Script(script)) => Some(script.model(&model, lsn).0),
        None => None,
    };
    if got != model && Some(&got) != with_in_flight.as_ref() {
        let differs = (got.keys().chain(model.keys()))
            .find(|k| got.get(*k) != model.get(*k))
            .map(|k| {
                format!(
                    "{k:?}: recovered {:?}, model {:?}",
                    got.get(k),
                    model.get(k)
                )
            });
        return Err(format!(
            "recovered state differs from the model: {} keys recovered, {} in the model; {}",
            got.len(),
            model.len(),
            differs.unwrap_or_default()
        ));
    }
    // P8: the client retries the in-doubt transaction under its id. Whether or not it landed,
    // afterwards its effects are there exactly once. (A script has no id: its client is told
    // of the failure, and the check above found it applied once or not at all.)
    if let Some(InFlight::Writes(Some(id), g, w)) = in_flight {
        e.commit_request(id, g.clone(), w.clone())
            .map_err(|e| format!("retry failed: {e}"))?;
        let after = e.read(observed);
        let once =
            model_apply(&model, &g, &w, 0).map_or_else(|| values(&model), |(m, _)| values(&m));
        if values(&after) != once {
            return Err(
                "after the retry the in-doubt transaction is not applied exactly once (P8)".into(),
            );
        }
    }
    Ok(ops)
}

#[test]
fn engine_matches_the_model_across_power_cuts() {
    let seeds: u64 = std::env::var("KEEL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        // Every other seed with encryption at rest: the same promises, sealed frames and blocks.
        ENCRYPT.set(seed % 2 == 1);
        let steps = 40;
        let ops = run(seed, steps, None).unwrap_or_else(|e| panic!("seed {seed}, no crash: {e}"));
        let crash_at = Rng::new(seed ^ 0xE4).below(ops);
        if let Err(e) = run(seed, steps, Some(crash_at)) {
            panic!("seed {seed} crash_at {crash_at}: {e}\n  replay: the same seed and crash_at in tests/crash.rs::run");
        }
    }
}

fn state(e: &Engine) -> Model {
    e.read(observed)
}

/// Puts enough to span several 4 KiB segments.
fn fill(e: &Engine, round: usize) {
    for i in 0..30 {
        e.put(
            format!("k{}", i % 17),
            format!("r{round}-{i}-{}", "x".repeat(100)),
        )
        .unwrap();
    }
}

/// P6, exhaustively: a power cut at every single file-system operation of a checkpoint — while
/// the snapshot is written, before and after the manifest is replaced, while segments and the
/// old snapshot are removed — recovers exactly the state before it, and the next checkpoint
/// works.
#[test]
fn a_crash_at_every_step_of_a_checkpoint_recovers_the_same_state() {
    let prepare = |fs: &SimFs| {
        let (e, _) = Engine::open(DIR, options(fs)).unwrap();
        fill(&e, 0);
        e.checkpoint().unwrap();
        fill(&e, 1);
        e
    };
    let fs = SimFs::new(7);
    let e = prepare(&fs);
    let expected = state(&e);
    let (a, _) = (fs.counts().total, e.checkpoint().unwrap());
    let b = fs.counts().total;
    assert!(b - a > 10, "a checkpoint is many operations ({a}..{b})");
    drop(e);
    for k in a..=b {
        let fs = SimFs::new(7);
        let e = prepare(&fs);
        fs.crash_at(k);
        let _ = e.checkpoint();
        drop(e);
        let image = fs.crash(k);
        let (e, _) = Engine::open(DIR, options(&image))
            .unwrap_or_else(|err| panic!("crash at op {k} of {a}..{b}: recovery failed: {err}"));
        assert_eq!(state(&e), expected, "crash at op {k} of {a}..{b}");
        e.checkpoint().unwrap();
        fill(&e, 2);
        drop(e);
        let (e, _) = Engine::open(DIR, options(&image)).unwrap();
        assert_eq!(state(&e).len(), expected.len(), "crash at op {k}: reopen");
    }
}

/// P2 and P9 for new directories: once `backup` or `restore` returns, a power cut takes nothing
/// from the copy (every file and directory entry was synced), and the source's durable bytes
/// are untouched.
#[test]
fn a_backup_or_restore_survives_a_power_cut_right_after_it_returns() {
    for (seed, use_restore) in [(11, false), (12, true)] {
        let fs = SimFs::new(seed);
        let (e, _) = Engine::open(DIR, options(&fs)).unwrap();
        fill(&e, 0);
        e.checkpoint().unwrap();
        fill(&e, 1);
        let expected = state(&e);
        let source_files = |fs: &SimFs| -> Vec<(String, Option<Vec<u8>>)> {
            ["", "/wal", "/snapshots"]
                .iter()
                .flat_map(|d| {
                    let dir = format!("{DIR}{d}");
                    fs.list(std::path::Path::new(&dir))
                        .into_iter()
                        .map(move |n| format!("{dir}/{n}"))
                })
                .map(|p| {
                    let b = fs.durable_bytes(std::path::Path::new(&p));
                    (p, b)
                })
                .collect()
        };
        let before = source_files(&fs);
        if use_restore {
            keel_engine::restore(
                DIR,
                "/copy",
                keel_engine::RestoreTarget::Latest,
                &options(&fs),
            )
            .unwrap();
        } else {
            e.backup("/copy").unwrap();
        }
        assert_eq!(source_files(&fs), before, "seed {seed}: the source changed");
        for cut in 0..20 {
            let image = fs.crash(seed * 100 + cut);
            let (copy, _) = Engine::open("/copy", options(&image))
                .unwrap_or_else(|err| panic!("seed {seed} cut {cut}: {err}"));
            assert_eq!(state(&copy), expected, "seed {seed} cut {cut}");
        }
    }
}

/// Under `SyncPolicy::Never` the visible state runs ahead of the durable log. A checkpoint of it
/// followed by a power cut used to leave a log that ends before the snapshot, and the next open
/// refused the database (a gap). A checkpoint now syncs the log first.
#[test]
fn a_power_cut_after_a_checkpoint_under_sync_never_still_opens() {
    for seed in 0..20 {
        let fs = SimFs::new(seed);
        let mut opts = options(&fs);
        opts.wal.sync_policy = keel_wal::SyncPolicy::Never;
        let (e, _) = Engine::open(DIR, opts).unwrap();
        fill(&e, 0);
        e.checkpoint().unwrap();
        let expected = state(&e);
        let image = fs.crash(seed);
        drop(e);
        let mut opts = options(&image);
        opts.wal.sync_policy = keel_wal::SyncPolicy::Never;
        let (e, _) = Engine::open(DIR, opts)
            .unwrap_or_else(|err| panic!("seed {seed}: the database refused to open: {err}"));
        assert_eq!(state(&e), expected, "seed {seed}");
    }
}

#[test]
fn a_full_disk_poisons_and_a_halted_engine_reopens_in_the_same_process_with_every_ack() {
    let fs = SimFs::new(11);
    let (e, _) = Engine::open(DIR, options(&fs)).unwrap();
    let e = Arc::new(e);
    let held = e.clone(); // a connection in the middle of a command, say
    let mut acked = Model::new();
    for i in 0..20 {
        let (k, v) = (Bytes::from(format!("k{i}")), Bytes::from(format!("v{i}")));
        let lsn = e.put(k.clone(), v.clone()).unwrap();
        acked.insert(k, (v, lsn));
    }
    assert!(e.poisoned().is_none());
    fs.set_faults(Faults {
        space_bytes: Some(3000),
        ..Faults::default()
    });
    let err = (20..200)
        .find_map(|i| e.put(format!("k{i}"), "x".repeat(200)).err())
        .expect("a full disk fails a write");
    let first = e.poisoned().expect("poisoned");
    assert!(
        first.to_string().contains("No space left"),
        "{err}: {first}"
    );
    // Writes that fit the queue and the old segment fail too: nothing more is acknowledged.
    assert!(e.put("late", "x").is_err());
    // The poisoned engine still holds the directory...
    assert!(matches!(
        Engine::open(DIR, options(&fs)),
        Err(keel_engine::Error::Wal(keel_wal::Error::Locked { .. }))
    ));
    // ... until it is halted, through any handle, while the other still reads.
    assert!(held.halt().is_err(), "the poisoning error is returned");
    assert!(
        e.checkpoint().is_err(),
        "a halted engine writes no checkpoint"
    );
    let seen = state(&e);
    fs.set_faults(Faults::default());
    let (again, _) = Engine::open(DIR, options(&fs)).unwrap();
    assert!(again.poisoned().is_none());
    let recovered = state(&again);
    for (k, v) in &acked {
        assert_eq!(recovered.get(k), Some(v), "acknowledged {k:?}");
    }
    for (k, v) in &seen {
        assert_eq!(recovered.get(k), Some(v), "read before the reopen: {k:?}");
    }
    again.put("healed", "yes").unwrap();
    again.checkpoint().unwrap();
    drop((e, held));
    again.close().unwrap();
    let (reopened, _) = Engine::open(DIR, options(&fs)).unwrap();
    assert_eq!(reopened.get(b"healed").unwrap().value, "yes");
}

/// P13 with P2: opening a database whose newest snapshot is damaged moves the file aside and
/// rewrites the MANIFEST. A power cut at every single file-system operation of that open still
/// recovers every write, and so does the open after it.
#[test]
fn a_crash_at_every_step_of_a_fallback_open_loses_nothing() {
    use keel_wal::{Fs, OpenMode};
    let prepare = |fs: &SimFs| {
        let (e, _) = Engine::open(DIR, options(fs)).unwrap();
        fill(&e, 0);
        e.checkpoint().unwrap();
        fill(&e, 1);
        let newest = e.checkpoint().unwrap();
        fill(&e, 2);
        let expected = state(&e);
        e.close().unwrap();
        let path = format!("{DIR}/snapshots/snap-{newest:020}.keel");
        let f = fs.open(path.as_ref(), OpenMode::ReadWrite).unwrap();
        let mut b = [0u8; 1];
        keel_wal::fs::read_exact_at(&*f, &mut b, 60).unwrap();
        keel_wal::fs::write_all_at(&*f, &[b[0] ^ 1], 60).unwrap();
        f.sync_all().unwrap();
        expected
    };
    let fs = SimFs::new(11);
    let expected = prepare(&fs);
    let a = fs.counts().total;
    let (e, report) = Engine::open(DIR, options(&fs)).unwrap();
    let b = fs.counts().total;
    assert_eq!(report.damaged.len(), 1, "{report}");
    assert_eq!(state(&e), expected);
    assert!(b - a > 10, "the open is many operations ({a}..{b})");
    drop(e);
    for k in a..=b {
        let fs = SimFs::new(11);
        let expected = prepare(&fs);
        fs.crash_at(k);
        let _ = Engine::open(DIR, options(&fs));
        let image = fs.crash(k);
        let (e, _) = Engine::open(DIR, options(&image))
            .unwrap_or_else(|err| panic!("crash at op {k} of {a}..{b}: recovery failed: {err}"));
        assert_eq!(state(&e), expected, "crash at op {k} of {a}..{b}");
        e.checkpoint().unwrap();
        drop(e);
        let (e, report) = Engine::open(DIR, options(&image)).unwrap();
        assert_eq!(state(&e), expected, "crash at op {k}: reopen");
        assert!(report.damaged.is_empty(), "crash at op {k}: {report}");
    }
}

/// P13 with P2 for the advice on damage below the snapshot inside the segment that holds its
/// LSN + 1: `keel wal repair --force` (here `repair_from`) restarts that segment at the needed
/// LSN. A power cut at every operation of it leaves a database that either opens with every
/// write, or does after the same repair is run again.
#[test]
fn a_crash_at_every_step_of_a_restarting_repair_loses_nothing() {
    use keel_wal::{Fs, OpenMode};
    let wal_dir = format!("{DIR}/wal");
    let prepare = |fs: &SimFs| {
        let (e, _) = Engine::open(DIR, options(fs)).unwrap();
        fill(&e, 0);
        e.checkpoint().unwrap();
        fill(&e, 1);
        e.put("odd", "one").unwrap(); // so that the snapshot ends inside a segment
        let s = e.checkpoint().unwrap();
        fill(&e, 2);
        let expected = state(&e);
        e.close().unwrap();
        let names = fs.read_dir(wal_dir.as_ref()).unwrap();
        let (name, _) = names
            .iter()
            .filter_map(|n| Some((n, n.get(4..24)?.parse::<u64>().ok()?)))
            .filter(|(_, first)| *first <= s)
            .max_by_key(|(_, first)| *first)
            .unwrap();
        assert!(name.get(4..24).unwrap().parse::<u64>().unwrap() < s);
        let path = format!("{wal_dir}/{name}");
        let f = fs.open(path.as_ref(), OpenMode::ReadWrite).unwrap();
        let mut b = [0u8; 1];
        keel_wal::fs::read_exact_at(&*f, &mut b, 64 + 40).unwrap();
        keel_wal::fs::write_all_at(&*f, &[b[0] ^ 1], 64 + 40).unwrap();
        f.sync_all().unwrap();
        (expected, s + 1)
    };
    let repair =
        |fs: &SimFs, needed| keel_wal::repair_from(&wal_dir, options(fs).wal, true, needed);
    let fs = SimFs::new(13);
    let (expected, needed) = prepare(&fs);
    assert!(Engine::open(DIR, options(&fs)).is_err(), "refuses before");
    let a = fs.counts().total;
    let r = repair(&fs, needed).unwrap();
    let b = fs.counts().total;
    assert!(r.forced_cuts.iter().all(|c| c.restarted_at.is_some()));
    assert!(!r.forced_cuts.is_empty() && b - a > 5, "{a}..{b}");
    let (e, _) = Engine::open(DIR, options(&fs)).unwrap();
    assert_eq!(state(&e), expected);
    drop(e);
    for k in a..=b {
        let fs = SimFs::new(13);
        let (expected, needed) = prepare(&fs);
        let _ = Engine::open(DIR, options(&fs)); // refuses; as the operator would see it
        let a2 = fs.counts().total;
        fs.crash_at(a2 + (k - a));
        let _ = repair(&fs, needed);
        let image = fs.crash(k);
        let e = match Engine::open(DIR, options(&image)) {
            Ok((e, _)) => e,
            Err(_) => {
                repair(&image, needed)
                    .unwrap_or_else(|err| panic!("crash at op {k}: repair again: {err}"));
                Engine::open(DIR, options(&image))
                    .unwrap_or_else(|err| panic!("crash at op {k}: after repair: {err}"))
                    .0
            }
        };
        assert_eq!(state(&e), expected, "crash at op {k} of {a}..{b}");
    }
}

/// P5 with P1 ("fsyncgate"): after a failed sync, the frames of the failing batch stay readable
/// in the page cache but never reach the disk, and a second sync of them succeeds without
/// writing anything. A reopen that read them from the cache and called them durable would leave
/// the writes acknowledged after it behind a hole after a power cut, where recovery refuses to
/// reach them. Both ways out must drop them: `reopen_after_failure` (keel serve's healer) and a
/// plain open, as after a restart (the poisoned log zeroed them).
#[test]
fn a_reopen_after_a_failed_sync_drops_what_only_the_page_cache_held() {
    for seed in 0..40 {
        let restart = seed % 2 == 1;
        let fs = SimFs::new(seed);
        let (e, _) = Engine::open(DIR, options(&fs)).unwrap();
        let mut acked = Model::new();
        for i in 0..5 {
            let (k, v) = (Bytes::from(format!("k{i}")), Bytes::from(format!("v{i}")));
            let lsn = e.put(k.clone(), v.clone()).unwrap();
            acked.insert(k, (v, lsn));
        }
        fs.set_faults(Faults {
            eio_on_sync: 1,
            ..Faults::default()
        });
        assert!(e.put("doomed", "x").is_err(), "seed {seed}");
        assert!(e.poisoned().is_some());
        assert!(e.halt().is_err());
        fs.set_faults(Faults::default());
        let (again, _) = if restart {
            Engine::open(DIR, options(&fs)).unwrap()
        } else {
            Engine::reopen_after_failure(DIR, options(&fs), e.durable_lsn()).unwrap()
        };
        assert!(again.get(b"doomed").is_none(), "seed {seed}");
        for i in 5..10 {
            let (k, v) = (Bytes::from(format!("k{i}")), Bytes::from(format!("v{i}")));
            let lsn = again.put(k.clone(), v.clone()).unwrap();
            acked.insert(k, (v, lsn));
        }
        let image = fs.crash(seed);
        let (back, _) = Engine::open(DIR, options(&image))
            .unwrap_or_else(|err| panic!("seed {seed}: recovery after the power cut: {err}"));
        let got = state(&back);
        for (k, v) in &acked {
            assert_eq!(got.get(k), Some(v), "seed {seed}: acknowledged {k:?}");
        }
    }
}

/// `keel rekey` (`keel_engine::rekey`) under a power cut at every operation: the database opens
/// with the keyring that holds both keys and every write, and running rekey again finishes the
/// job, after which the new key alone opens it.
#[test]
fn a_crash_at_every_step_of_rekey_loses_nothing() {
    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let keyed = |fs: &SimFs, ring: Option<&str>| {
        let mut o = options(fs);
        o.wal.keyring = ring.map(|r| Arc::new(keel_wal::Keyring::parse(r).unwrap()));
        o
    };
    let both = format!("{K2}\n{K1}");
    // Plaintext, then key 1, then key 2 first: every kind of file rekey rewrites.
    let prepare = |fs: &SimFs| {
        for (round, ring) in [(0, None), (1, Some(K1)), (2, Some(both.as_str()))] {
            let (e, _) = Engine::open(DIR, keyed(fs, ring)).unwrap();
            fill(&e, round);
            // The last round writes no snapshot: the one before rekey's own is key 1's.
            if round < 2 {
                e.checkpoint().unwrap();
            }
            fill(&e, round + 10);
            e.close().unwrap();
        }
        let (e, _) = Engine::open(DIR, keyed(fs, Some(&both))).unwrap();
        let expected = state(&e);
        e.close().unwrap();
        expected
    };
    let fs = SimFs::new(21);
    let expected = prepare(&fs);
    let a = fs.counts().total;
    let rewritten = keel_engine::rekey(DIR, &keyed(&fs, Some(&both))).unwrap();
    let b = fs.counts().total;
    assert!(
        rewritten.len() >= 2 && b - a > 10,
        "{rewritten:?}, {a}..{b}"
    );
    let (e, _) = Engine::open(DIR, keyed(&fs, Some(K2))).unwrap();
    assert_eq!(state(&e), expected);
    drop(e);
    for k in a..=b {
        let fs = SimFs::new(21);
        prepare(&fs);
        fs.crash_at(fs.counts().total + (k - a));
        let _ = keel_engine::rekey(DIR, &keyed(&fs, Some(&both)));
        let image = fs.crash(k);
        let (e, _) = Engine::open(DIR, keyed(&image, Some(&both)))
            .unwrap_or_else(|err| panic!("crash at op {k} of {a}..{b}: {err}"));
        assert_eq!(state(&e), expected, "crash at op {k} of {a}..{b}");
        e.close().unwrap();
        keel_engine::rekey(DIR, &keyed(&image, Some(&both)))
            .unwrap_or_else(|err| panic!("crash at op {k}: rekey again: {err}"));
        let (e, _) = Engine::open(DIR, keyed(&image, Some(K2)))
            .unwrap_or_else(|err| panic!("crash at op {k}: after rekey again: {err}"));
        assert_eq!(state(&e), expected, "crash at op {k}, after rekey again");
    }
}
