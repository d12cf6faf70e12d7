//! Deciding a transaction: its guards, then each write against the state the earlier ones
//! leave, into an outcome and the absolute effects to log. Nothing here locks, logs or
//! publishes: the sequencer calls [`decide`] under its lock, against its decided state.

use std::cell::OnceCell;
use std::ops::Bound;

use bytes::Bytes;

use crate::bits;
use crate::keyspace::{
    change, edit_typed, eval_get, eval_read, expiry, list_bounds, Change, Lent, Shape, Typed,
};
use crate::record::Mutation;
use crate::sort;
use crate::table::{ListValue, SetValue, StreamGroup, StreamValue, ValueRef, ZSetValue};
use crate::util::{int_text, HashMap, Pick};
use crate::zsets::{self, format_score, zset_combine};

use crate::types::{
    Claim, ClaimTime, Guard, KeyEffect, Outcome, PutIf, Read, SetOp, StreamId, StreamIdSpec,
    StreamTrim, StreamTrimBy, Ttl, Write, WriteError, WriteResult,
};
use keel_wal::Lsn;

/// The state a transaction is decided against: every earlier transaction, durable or not.
pub(crate) trait Decided {
    /// The decided entry of `key`, expired or not, lent without copying.
    fn lend(&self, key: &[u8]) -> Option<Lent<'_>>;

    /// The shape of the decided entry of `key`, expired or not.
    fn shape(&self, key: &[u8]) -> Option<Shape> {
        self.lend(key).map(Shape::of)
    }
}

fn parse_int(v: &[u8]) -> Option<i64> {
    // Redis's rules: plain decimal, optional '-', no '+', spaces or leading zeros.
    let s = std::str::from_utf8(v).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) || s == "-0" {
        return None;
    }
    s.parse().ok()
}

/// A float as INCRBYFLOAT writes it: rounded to 15 significant digits (all an f64 holds
/// exactly), then the shortest decimal form, never an exponent.
fn format_float(x: f64) -> String {
    let rounded: f64 = format!("{x:.14e}").parse().unwrap_or(x);
    let s = rounded.to_string();
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn parse_float(v: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || s.len() > 5000 || s.starts_with(char::is_whitespace) {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| !f.is_nan())
}

/// The state a transaction sees part-way through: the state before it, plus what its earlier
/// writes changed. Cheaper than cloning the map: the common single-write transaction never
/// touches it, and the sequencer's state is then updated in place, once.
struct Overlay<S> {
    base: S,
    /// What the transaction wrote so far, by key.
    changed: HashMap<Bytes, Written>,
    /// A DeleteAll came: keys not in `changed` are gone.
    cleared: bool,
    now: u64,
}

/// A key a transaction wrote: the entry it holds now, or, while nothing has read it since, the
/// relative mutations it took over the state before the transaction. A write reads only what
/// it needs of the entry before it (LPUSH, the list's length), so a transaction that writes a
/// key once never copies it: the copy is made, O(the value), by the first read after.
struct Written {
    /// `None`: deleted.
    entry: OnceCell<Option<Typed>>,
    /// Pending while `entry` is unset; applied to a copy of the base's entry when it is set.
    edits: Vec<Mutation>,
}

impl Written {
    fn now(e: Option<Typed>) -> Written {
        Written {
            entry: OnceCell::from(e),
            edits: Vec::new(),
        }
    }
}

/// The most changes a transaction's overlay folds to tell a key's shape (see [`Overlay::shape`]).
const SHAPE_EDITS_MAX: usize = 8;

/// A string value, its expiry, or the key holds another type.
type Str = Result<Option<(Bytes, Option<u64>)>, WriteError>;

impl<S: Decided> Overlay<S> {
    fn lend(&self, k: &[u8]) -> Option<Lent<'_>> {
        match self.changed.get(k) {
            Some(w) => {
                // Pending edits are over the base: a DeleteAll drops every key's.
                let e = w.entry.get_or_init(|| {
                    let base = self.base.lend(k).map(|e| e.typed());
                    (w.edits.iter()).fold(base, |e, m| edit_typed(e, m, 0))
                });
                e.as_ref().map(Typed::lend)
            }
            None if self.cleared => None,
            None => self.base.lend(k),
        }
    }

    /// The live entry of `key`, of any type.
    fn live(&self, k: &[u8]) -> Option<Lent<'_>> {
        self.lend(k).filter(|e| e.live(self.now))
    }

    /// The shape of `key`'s entry, expired or not; an entry this transaction changed but has
    /// not read is not made for it, if its few changes tell their shape (see [`Shape`]). Past
    /// [`SHAPE_EDITS_MAX`] of them the entry is made, and later changes edit it in place: a
    /// script pushing in a loop onto one list would otherwise fold every earlier push again at
    /// each one.
    fn shape(&self, k: &[u8]) -> Option<Shape> {
        match self.changed.get(k) {
            Some(w) => match w.entry.get() {
                Some(e) => e.as_ref().map(Typed::shape),
                None => (w.edits.len() <= SHAPE_EDITS_MAX)
                    .then(|| {
                        (w.edits.iter()).try_fold(self.base.shape(k), |s, m| Shape::edit(s, m, 0))
                    })
                    .flatten()
                    .unwrap_or_else(|| self.lend(k).map(Shape::of)),
            },
            None if self.cleared => None,
            None => self.base.shape(k),
        }
    }

    /// The shape of `key`'s live entry, of any type.
    fn live_shape(&self, k: &[u8]) -> Option<Shape> {
        self.shape(k).filter(|s| s.live(self.now))
    }

    /// The live string at `key` and its expiry, copied; `Err(WrongType)` for another type.
    fn string(&self, k: &[u8]) -> Str {
        match self.live(k) {
            None => Ok(None),
            Some(Lent {
                value: ValueRef::String(v),
                expires_at_ms,
                ..
            }) => Ok(Some((Bytes::copy_from_slice(v), expires_at_ms))),
            Some(_) => Err(WriteError::WrongType),
        }
    }

    fn apply(&mut self, mutations: &[Mutation]) {
        // The version is provisional: only liveness and values are read back.
        for m in mutations {
            match change(m, 0) {
                Change::Key(k, e) => {
                    self.changed
                        .insert(k.clone(), Written::now(e.map(Typed::from)));
                }
                // A key this transaction read since it wrote it is changed in place; otherwise
                // the mutation waits for a read (see `Written`).
                Change::Edit(k, m) => match self.changed.get_mut(k) {
                    Some(w) => match w.entry.get_mut() {
                        Some(e) => *e = edit_typed(e.take(), m, 0),
                        None => w.edits.push(m.clone()),
                    },
                    None if self.cleared => {
                        let w = Written::now(edit_typed(None, m, 0));
                        self.changed.insert(k.clone(), w);
                    }
                    None => {
                        let w = Written {
                            entry: OnceCell::new(),
                            edits: vec![m.clone()],
                        };
                        self.changed.insert(k.clone(), w);
                    }
                },
                Change::All => {
                    self.changed.clear();
                    self.cleared = true;
                }
                Change::System(..) => {}
            }
        }
    }
}

/// What a decision depends on besides the state and the writes: the engine's options.
#[derive(Clone, Copy)]
pub(crate) struct Rules {
    /// [`Options::value_bytes_max`](crate::Options).
    pub(crate) value_max: usize,
    /// [`Options::replicas_decide`](crate::Options): a random pick (SPOP's) must come out
    /// the same on every replica, whatever order its tables keep.
    pub(crate) replicas_decide: bool,
}

impl Rules {
    pub(crate) fn of(opts: &crate::Options) -> Rules {
        Rules {
            value_max: opts.value_bytes_max,
            replicas_decide: opts.replicas_decide,
        }
    }
}

/// Decides a transaction against `state`: the guards, then every write against the state the
/// earlier writes leave. Returns the outcome (without an LSN, with the keys each write changed
/// if `effects`) and the absolute effects to log.
pub(crate) fn decide(
    state: impl Decided,
    now: u64,
    rules: Rules,
    guards: &[Guard],
    writes: Vec<Write>,
    effects: bool,
) -> (Outcome, Vec<Mutation>) {
    for (i, g) in guards.iter().enumerate() {
        let version = state
            .shape(&g.key)
            .filter(|s| s.live(now))
            .map(|s| s.version);
        if version != g.version {
            return (Outcome::GuardFailed(i), Vec::new());
        }
    }
    let mut work = Overlay {
        base: state,
        changed: HashMap::default(),
        cleared: false,
        now,
    };
    let n = writes.len();
    // Most writes log one mutation (a rename logs two).
    let mut mutations = Vec::with_capacity(n);
    // A transaction of plain puts (a bulk load, MSET) reads nothing back, so its writes need
    // not be laid over the state one by one (unless each write's effects are wanted).
    let reads = effects
        || !writes.iter().all(|w| {
            matches!(
                w,
                Write::Put {
                    only: PutIf::Always,
                    ttl: Ttl::None | Ttl::At(_),
                    ..
                }
            )
        });
    let mut results = Vec::with_capacity(n);
    let mut changed = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        // This write's mutations are pushed straight onto the transaction's.
        let first = mutations.len();
        let result = decide_one(&work, rules, w, &mut mutations);
        if effects {
            key_effects(&work, i, &mutations[first..], &mut changed);
        }
        if reads && i + 1 < n {
            work.apply(&mutations[first..]);
        }
        results.push(result);
    }
    let outcome = Outcome::Committed {
        lsn: None,
        results,
        effects: changed,
    };
    (outcome, mutations)
}

/// Adds the keys the `i`th write changed, through its `mutations`, to `out`: whether each was
/// created or deleted is read from `work`, which does not hold the write yet. A removal that
/// leaves a collection empty is logged as a delete, so a key's last mutation says whether it
/// is left live.
fn key_effects<S: Decided>(
    work: &Overlay<S>,
    i: usize,
    mutations: &[Mutation],
    out: &mut Vec<KeyEffect>,
) {
    let from = out.len();
    for m in mutations {
        let Some(key) = m.user_key() else { continue };
        let live = !matches!(m, Mutation::Delete { .. });
        let e = match out[from..].iter().position(|e| e.key == key) {
            // `deleted` holds whether it is live for now; settled below.
            Some(at) => {
                out[from + at].deleted = live;
                &mut out[from + at]
            }
            None => {
                // Whether it was live only: a pushed list is not made for this.
                let before = work.live_shape(key).is_some();
                out.push(KeyEffect {
                    write: i as u32,
                    key: key.clone(),
                    created: before,
                    deleted: live,
                    consumer_created: false,
                });
                out.last_mut().expect("pushed")
            }
        };
        if let Mutation::StreamConsumer {
            group, consumer, ..
        } = m
        {
            let had = work.live(key).is_some_and(|e| match e.value {
                ValueRef::Stream(x) => {
                    (x.groups.get(group)).is_some_and(|g| g.consumers.contains_key(consumer))
                }
                _ => false,
            });
            e.consumer_created |= !had;
        }
    }
    for e in &mut out[from..] {
        let (before, after) = (e.created, e.deleted);
        e.created = !before && after;
        e.deleted = before && !after;
    }
}

/// A transaction decided one call at a time (a script's): each step is decided against the
/// state every earlier transaction and the earlier steps leave, and its effects join the
/// transaction's, which are logged together.
pub(crate) struct Deciding<S> {
    work: Overlay<S>,
    rules: Rules,
    pub(crate) mutations: Vec<Mutation>,
    /// The keys each step changed, when asked for (`write` counts steps from the first).
    pub(crate) effects: Option<Vec<KeyEffect>>,
    steps: usize,
}

impl<S: Decided> Deciding<S> {
    pub(crate) fn new(state: S, now: u64, rules: Rules, effects: bool) -> Self {
        Deciding {
            work: Overlay {
                base: state,
                changed: HashMap::default(),
                cleared: false,
                now,
            },
            rules,
            mutations: Vec::new(),
            effects: effects.then(Vec::new),
            steps: 0,
        }
    }

    /// Whether every guard holds against the state the steps so far leave (as [`decide`]
    /// checks a transaction's guards).
    pub(crate) fn guards_hold(&self, guards: &[Guard]) -> bool {
        guards
            .iter()
            .all(|g| self.work.live_shape(&g.key).map(|s| s.version) == g.version)
    }

    /// The version of `key`'s live entry after every earlier step (`None`: no live entry).
    pub(crate) fn live_version(&self, key: &[u8]) -> Option<Lsn> {
        self.work.live_shape(key).map(|s| s.version)
    }

    /// Decides `w` after every earlier step.
    pub(crate) fn step(&mut self, w: Write) -> WriteResult {
        let first = self.mutations.len();
        let result = decide_one(&self.work, self.rules, w, &mut self.mutations);
        if let Some(out) = &mut self.effects {
            key_effects(&self.work, self.steps, &self.mutations[first..], out);
        }
        self.steps += 1;
        self.work.apply(&self.mutations[first..]);
        result
    }
}

/// Decides one write against `work`, pushing its effects onto `m`.
fn decide_one<S: Decided>(
    work: &Overlay<S>,
    rules: Rules,
    w: Write,
    m: &mut Vec<Mutation>,
) -> WriteResult {
    let now = work.now;
    let value_max = rules.value_max;
    match w {
        Write::Put {
            key,
            value,
            ttl,
            only,
        } => {
            // A plain put reads nothing: skip the lookup. A put replaces a value of any type.
            let old = match (&only, &ttl) {
                (PutIf::Always, Ttl::None | Ttl::At(_)) => None,
                _ => work.live(&key).map(|e| e.expires_at_ms),
            };
            let go = match only {
                PutIf::Always => true,
                PutIf::Absent => old.is_none(),
                PutIf::Present => old.is_some(),
            };
            let expires_at_ms = match ttl {
                Ttl::None => None,
                Ttl::At(t) => Some(t),
                Ttl::Keep => old.flatten(),
            };
            if go {
                m.push(Mutation::Set {
                    key,
                    value,
                    expires_at_ms,
                });
            }
            WriteResult::Put(go)
        }
        Write::Delete { key } => {
            let existed = work.live(&key).is_some();
            if existed {
                m.push(Mutation::Delete { key });
            }
            WriteResult::Existed(existed)
        }
        Write::Incr { key, by } => {
            let old = match work.string(&key) {
                Ok(old) => old,
                Err(e) => return WriteResult::Failed(e),
            };
            match old.as_ref().map_or(Some(0), |(v, _)| parse_int(v)) {
                None => WriteResult::Failed(WriteError::NotAnInteger),
                Some(cur) => match cur.checked_add(by) {
                    None => WriteResult::Failed(WriteError::Overflow),
                    Some(new) => {
                        m.push(Mutation::Set {
                            key,
                            value: int_text(new),
                            expires_at_ms: old.and_then(|(_, t)| t),
                        });
                        WriteResult::Int(new)
                    }
                },
            }
        }
        Write::IncrFloat { key, by } => {
            let old = match work.string(&key) {
                Ok(old) => old,
                Err(e) => return WriteResult::Failed(e),
            };
            let cur = old.as_ref().map_or(Some(0.0), |(v, _)| parse_float(v));
            match add_float(cur, by) {
                Err(e) => WriteResult::Failed(e),
                Ok(value) => {
                    m.push(Mutation::Set {
                        key,
                        value: value.clone(),
                        expires_at_ms: old.and_then(|(_, t)| t),
                    });
                    WriteResult::Value(Some(value))
                }
            }
        }
        Write::Append { key, suffix } => {
            let old = match work.string(&key) {
                Ok(old) => old,
                Err(e) => return WriteResult::Failed(e),
            };
            let len = old.as_ref().map_or(0, |(v, _)| v.len()) + suffix.len();
            if len > value_max {
                return WriteResult::Failed(WriteError::ValueTooLarge);
            }
            // The log holds the suffix, not the grown value.
            match old {
                Some((v, _)) if !suffix.is_empty() => m.push(Mutation::StringWrite {
                    key,
                    create: false,
                    offset: v.len() as u64,
                    bytes: suffix,
                }),
                Some(_) => {}
                None => m.push(Mutation::Set {
                    key,
                    value: suffix,
                    expires_at_ms: None,
                }),
            }
            WriteResult::Int(len as i64)
        }
        Write::Expire { key, at_ms, only } => match work.live(&key) {
            Some(e) if only.holds(e.expires_at_ms, at_ms) => {
                m.push(match at_ms {
                    Some(t) if t <= now => Mutation::Delete { key },
                    _ => Mutation::Expire {
                        key,
                        expires_at_ms: at_ms,
                    },
                });
                WriteResult::Existed(true)
            }
            _ => WriteResult::Existed(false),
        },
        Write::Rename {
            from,
            to,
            only_if_absent,
        } => match work.live(&from) {
            None => WriteResult::Failed(WriteError::NoSuchKey),
            Some(_) if only_if_absent && work.live(&to).is_some() => WriteResult::Put(false),
            Some(_) if from == to => WriteResult::Put(true),
            Some(e) => {
                let moved = recreate(to, e);
                m.push(Mutation::Delete { key: from });
                m.extend(moved);
                WriteResult::Put(true)
            }
        },
        Write::Copy { from, to, replace } => match work.live(&from) {
            None => WriteResult::Int(0),
            Some(_) if !replace && work.live(&to).is_some() => WriteResult::Int(0),
            Some(_) if from == to => WriteResult::Int(0),
            Some(e) => {
                m.extend(recreate(to, e));
                WriteResult::Int(1)
            }
        },
        Write::Restore {
            key,
            payload,
            expires_at_ms,
            replace,
        } => {
            // The key first, as Redis: BUSYKEY whatever the payload.
            let exists = work.live(&key).is_some();
            if exists && !replace {
                return WriteResult::Failed(WriteError::BusyKey);
            }
            let Ok(value) = crate::snapshot::undump(&payload) else {
                return WriteResult::Failed(WriteError::BadPayload);
            };
            if exists {
                m.push(Mutation::Delete { key: key.clone() });
            }
            // Already expired: nothing to create (Redis answers OK too).
            if expires_at_ms.is_none_or(|t| t > now) {
                let e = Lent {
                    value: value.as_ref(),
                    version: 0,
                    expires_at_ms,
                };
                m.extend(recreate(key, e));
            }
            WriteResult::Put(true)
        }
        Write::Get { key } => eval_get(work.live(&key).map(|e| e.value)),
        Write::GetThen { key, then } => match eval_get(work.live(&key).map(|e| e.value)) {
            r @ WriteResult::Failed(_) => r,
            r => {
                decide_one(work, rules, *then, m);
                r
            }
        },
        Write::Read {
            key,
            op: Read::Expiry,
        } => expiry(work.live(&key).map(|e| e.expires_at_ms)),
        Write::Read { key, op } => eval_read(work.live(&key).map(|e| e.value), &op),
        Write::HashSet {
            key,
            pairs,
            only_new,
        } => {
            let (create, h) = match work.live(&key).map(|e| e.value) {
                None => (true, None),
                Some(ValueRef::Hash(h)) => (false, Some(h)),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            // A field is added once however often it is named; with `only_new` its first value
            // is the one set, as if the pairs were set one by one.
            let mut added = HashMap::<Bytes, ()>::default();
            let mut kept = Vec::with_capacity(pairs.len());
            for (f, v) in pairs {
                let new = h.is_none_or(|h| h.get(&f).is_none()) && !added.contains_key(&f);
                if new {
                    added.insert(f.clone(), ());
                }
                if new || !only_new {
                    kept.push((f, v));
                }
            }
            let (added, pairs) = (added.len(), kept);
            // HSETNX of a field that exists writes nothing.
            if !pairs.is_empty() {
                m.push(Mutation::HashSet { key, create, pairs });
            }
            WriteResult::Int(added as i64)
        }
        Write::HashDel { key, fields } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::Hash(h)) => {
                let mut seen = HashMap::<&[u8], ()>::default();
                let fields: Vec<Bytes> = fields
                    .iter()
                    .filter(|f| h.get(f).is_some() && seen.insert(f, ()).is_none())
                    .cloned()
                    .collect();
                let removed = fields.len();
                if removed == h.len() {
                    m.push(Mutation::Delete { key });
                } else if removed > 0 {
                    m.push(Mutation::HashDel { key, fields });
                }
                WriteResult::Int(removed as i64)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::HashIncr { key, field, by } => {
            let (create, old) = match hash_field(work, &key, &field) {
                Ok(x) => x,
                Err(e) => return WriteResult::Failed(e),
            };
            match old.as_deref().map_or(Some(0), parse_int) {
                None => WriteResult::Failed(WriteError::NotAnInteger),
                Some(cur) => match cur.checked_add(by) {
                    None => WriteResult::Failed(WriteError::Overflow),
                    Some(new) => {
                        let pairs = vec![(field, int_text(new))];
                        m.push(Mutation::HashSet { key, create, pairs });
                        WriteResult::Int(new)
                    }
                },
            }
        }
        Write::HashIncrFloat { key, field, by } => {
            let (create, old) = match hash_field(work, &key, &field) {
                Ok(x) => x,
                Err(e) => return WriteResult::Failed(e),
            };
            match add_float(old.as_deref().map_or(Some(0.0), parse_float), by) {
                Err(e) => WriteResult::Failed(e),
                Ok(value) => {
                    let pairs = vec![(field, value.clone())];
                    m.push(Mutation::HashSet { key, create, pairs });
                    WriteResult::Value(Some(value))
                }
            }
        }
        Write::SetAdd { key, members } => {
            let (create, set) = match work.live(&key).map(|e| e.value) {
                None => (true, None),
                Some(ValueRef::Set(s)) => (false, Some(s)),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let members = new_members(members, |m| set.is_some_and(|s| s.contains(m)));
            let added = members.len();
            if added > 0 {
                m.push(Mutation::SetAdd {
                    key,
                    create,
                    members,
                });
            }
            WriteResult::Int(added as i64)
        }
        Write::SetRem { key, members } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::Set(set)) => {
                let members = new_members(members, |m| !set.contains(m));
                let removed = members.len();
                if removed == set.len() {
                    m.push(Mutation::Delete { key });
                } else if removed > 0 {
                    m.push(Mutation::SetRem { key, members });
                }
                WriteResult::Int(removed as i64)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::SetPop { key, count } => {
            let entry = work.live(&key);
            let set = match entry.map(|e| e.value) {
                None => None,
                Some(ValueRef::Set(s)) => Some(s),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let want = count.unwrap_or(1);
            let popped: Vec<Bytes> = match (set, entry) {
                (Some(set), Some(e)) if want > 0 => {
                    // Seeded by the transaction's time, the key and its version: every
                    // replica deciding this transaction draws the same numbers.
                    let mut rng = Pick::new(now, &key, e.version);
                    if rules.replicas_decide {
                        pick_distinct(set, want, &mut rng)
                    } else {
                        // Only this engine decides, and it logs the members picked: they
                        // may depend on its table's order.
                        let count = i64::try_from(want).unwrap_or(i64::MAX);
                        (set.sample(count, &mut || rng.next()).into_iter())
                            .map(|m| Bytes::from(m.into_owned()))
                            .collect()
                    }
                }
                _ => Vec::new(),
            };
            if let Some(set) = set {
                if popped.len() == set.len() {
                    m.push(Mutation::Delete { key });
                } else if !popped.is_empty() {
                    m.push(Mutation::SetRem {
                        key,
                        members: popped.clone(),
                    });
                }
            }
            match count {
                None => WriteResult::Value(popped.into_iter().next()),
                Some(_) => WriteResult::Values(popped.into_iter().map(Some).collect()),
            }
        }
        Write::SetMove { from, to, member } => {
            let src = match work.live(&from).map(|e| e.value) {
                None => None,
                Some(ValueRef::Set(s)) => Some(s),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let (create, dst) = match work.live(&to).map(|e| e.value) {
                None => (true, None),
                Some(ValueRef::Set(s)) => (false, Some(s)),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let Some(src) = src.filter(|s| s.contains(&member)) else {
                return WriteResult::Int(0);
            };
            if from == to {
                return WriteResult::Int(1);
            }
            m.push(if src.len() == 1 {
                Mutation::Delete { key: from }
            } else {
                Mutation::SetRem {
                    key: from,
                    members: vec![member.clone()],
                }
            });
            if !dst.is_some_and(|d| d.contains(&member)) {
                m.push(Mutation::SetAdd {
                    key: to,
                    create,
                    members: vec![member],
                });
            }
            WriteResult::Int(1)
        }
        Write::SetStore { key, op, keys } => {
            let mut sets = Vec::with_capacity(keys.len());
            for k in &keys {
                match work.live(k).map(|e| e.value) {
                    None => sets.push(None),
                    Some(ValueRef::Set(s)) => sets.push(Some(s)),
                    Some(_) => return WriteResult::Failed(WriteError::WrongType),
                }
            }
            let members = combine(op, &sets);
            let n = members.len();
            if n > 0 {
                // `create` replaces whatever the key held.
                m.push(Mutation::SetAdd {
                    key,
                    create: true,
                    members,
                });
            } else if work.live(&key).is_some() {
                m.push(Mutation::Delete { key });
            }
            WriteResult::Int(n as i64)
        }
        Write::ListPush {
            key,
            front,
            elements,
            only_existing,
        } => {
            // Only the list's length: a push does not make a copy of a list it has not read.
            let (create, len) = match work.live_shape(&key) {
                None if only_existing => return WriteResult::Int(0),
                None => (true, 0),
                Some(Shape {
                    list_len: Some(len),
                    ..
                }) => (false, len),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let len = len + elements.len();
            m.push(Mutation::ListPush {
                key,
                create,
                front,
                elements,
            });
            WriteResult::Int(len as i64)
        }
        Write::ListPop { key, front, count } => {
            let list = match work.live(&key).map(|e| e.value) {
                None => return WriteResult::Value(None),
                Some(ValueRef::List(l)) => l,
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let n = count.unwrap_or(1).min(list.len());
            let popped = list_end(list, front, n);
            if n == list.len() {
                m.push(Mutation::Delete { key });
            } else if n > 0 {
                m.push(Mutation::ListPop {
                    key,
                    front,
                    count: n as u32,
                });
            }
            match count {
                None => WriteResult::Value(popped.into_iter().next()),
                Some(_) => WriteResult::Values(popped.into_iter().map(Some).collect()),
            }
        }
        Write::ListSet {
            key,
            index,
            element,
        } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Failed(WriteError::NoSuchKey),
            Some(ValueRef::List(l)) => {
                let i = if index < 0 {
                    l.len() as i64 + index
                } else {
                    index
                };
                if !(0..l.len() as i64).contains(&i) {
                    return WriteResult::Failed(WriteError::IndexOutOfRange);
                }
                m.push(Mutation::ListSet {
                    key,
                    index: i as u64,
                    element,
                });
                WriteResult::Put(true)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::ListTrim { key, start, stop } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Put(true),
            Some(ValueRef::List(l)) => {
                let (a, b) = list_bounds(l.len(), start, stop);
                if a == b {
                    m.push(Mutation::Delete { key });
                } else if (a, b) != (0, l.len()) {
                    m.push(Mutation::ListTrim {
                        key,
                        start: a as u64,
                        end: b as u64,
                    });
                }
                WriteResult::Put(true)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::ListRem {
            key,
            count,
            element,
        } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::List(l)) => {
                let matching = l.iter().filter(|e| *e == &element[..]).count();
                let removed = match count {
                    0 => matching,
                    c => matching.min(c.unsigned_abs() as usize),
                };
                if removed == l.len() {
                    m.push(Mutation::Delete { key });
                } else if removed > 0 {
                    m.push(Mutation::ListRem {
                        key,
                        count,
                        element,
                    });
                }
                WriteResult::Int(removed as i64)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::ListInsert {
            key,
            after,
            pivot,
            element,
        } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::List(l)) => {
                if !l.iter().any(|e| e == &pivot[..]) {
                    return WriteResult::Int(-1);
                }
                let len = l.len() + 1;
                m.push(Mutation::ListInsert {
                    key,
                    after,
                    pivot,
                    element,
                });
                WriteResult::Int(len as i64)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::ListPopFirst {
            keys,
            front,
            count,
            skip_other_types,
        } => {
            for key in keys {
                match work.live(&key).map(|e| e.value) {
                    None => continue,
                    Some(ValueRef::List(_)) => {}
                    Some(_) if skip_other_types => continue,
                    Some(_) => return WriteResult::Failed(WriteError::WrongType),
                }
                let popped = decide_one(
                    work,
                    rules,
                    Write::ListPop {
                        key: key.clone(),
                        front,
                        count: Some(count),
                    },
                    m,
                );
                let WriteResult::Values(elements) = popped else {
                    unreachable!("a pop of a list that exists gives values: {popped:?}")
                };
                let mut out = Vec::with_capacity(1 + elements.len());
                out.push(Some(key));
                out.extend(elements);
                return WriteResult::Values(out);
            }
            WriteResult::Value(None)
        }
        Write::ListMove {
            from,
            to,
            from_front,
            to_front,
        } => {
            let entry = work.live(&from);
            let src = match entry.map(|e| e.value) {
                None => return WriteResult::Value(None),
                Some(ValueRef::List(l)) => l,
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let create = match work.live(&to).map(|e| e.value) {
                None => true,
                Some(ValueRef::List(_)) => false,
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let element = list_end(src, from_front, 1).remove(0);
            if from == to && src.len() == 1 {
                // Moving the only element of a list onto itself leaves it as it is, but it
                // is a write of the key: its version moves (WATCH sees it), through an
                // expiry change to the expiry it has.
                m.push(Mutation::Expire {
                    key: from,
                    expires_at_ms: entry.and_then(|e| e.expires_at_ms),
                });
                return WriteResult::Value(Some(element));
            }
            m.push(if src.len() == 1 {
                Mutation::Delete { key: from }
            } else {
                Mutation::ListPop {
                    key: from,
                    front: from_front,
                    count: 1,
                }
            });
            m.push(Mutation::ListPush {
                key: to,
                create,
                front: to_front,
                elements: vec![element.clone()],
            });
            WriteResult::Value(Some(element))
        }
        Write::ZAdd {
            key,
            pairs,
            only,
            cmp,
            ch,
            incr,
        } => {
            let z = match work.live(&key).map(|e| e.value) {
                None => None,
                Some(ValueRef::ZSet(z)) => Some(z),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let added = match zsets::zadd(z, pairs, only, cmp, incr) {
                Ok(a) => a,
                Err(e) => return WriteResult::Failed(e),
            };
            if !added.set.is_empty() {
                m.push(Mutation::ZAdd {
                    key,
                    create: z.is_none(),
                    pairs: added.set,
                });
            }
            if incr {
                WriteResult::Value(added.incr_result.map(|s| Bytes::from(format_score(s))))
            } else {
                WriteResult::Int((added.added + if ch { added.changed } else { 0 }) as i64)
            }
        }
        Write::ZRem { key, members } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::ZSet(z)) => {
                let members = new_members(members, |m| z.score(m).is_none());
                zrem(key, z, members, m)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::ZRemRange { key, range } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::ZSet(z)) => {
                let members = zsets::select(z, &range, false, None)
                    .into_iter()
                    .map(|(m, _)| Bytes::copy_from_slice(m))
                    .collect();
                zrem(key, z, members, m)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::ZPopFirst {
            keys,
            max,
            count,
            skip_other_types,
        } => {
            for key in keys {
                let z = match work.live(&key).map(|e| e.value) {
                    None => continue,
                    Some(ValueRef::ZSet(z)) => z,
                    Some(_) if skip_other_types => continue,
                    Some(_) => return WriteResult::Failed(WriteError::WrongType),
                };
                let n = count.min(z.len());
                let mut popped = if max {
                    z.range_by_rank(z.len() - n, z.len())
                } else {
                    z.range_by_rank(0, n)
                };
                if max {
                    popped.reverse();
                }
                let mut out = Vec::with_capacity(1 + 2 * n);
                out.push(Some(key.clone()));
                let mut members = Vec::with_capacity(n);
                for (member, score) in popped {
                    let member = Bytes::copy_from_slice(member);
                    out.push(Some(member.clone()));
                    out.push(Some(Bytes::from(format_score(score))));
                    members.push(member);
                }
                zrem(key, z, members, m);
                return WriteResult::Values(out);
            }
            WriteResult::Value(None)
        }
        Write::ZStore {
            key,
            op,
            keys,
            weights,
            aggregate,
        } => {
            let mut inputs = Vec::with_capacity(keys.len());
            for k in &keys {
                match zsets::input_of(work.live(k).map(|e| e.value)) {
                    Ok(pairs) => inputs.push(pairs),
                    Err(e) => return WriteResult::Failed(e),
                }
            }
            let pairs = zset_combine(op, &inputs, &weights, aggregate);
            zstore(work, key, pairs, m)
        }
        Write::ZRangeStore {
            key,
            src,
            range,
            rev,
            limit,
        } => {
            let pairs = match work.live(&src).map(|e| e.value) {
                None => Vec::new(),
                Some(ValueRef::ZSet(z)) => zsets::select(z, &range, rev, limit)
                    .into_iter()
                    .map(|(m, s)| (Bytes::copy_from_slice(m), s))
                    .collect(),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            zstore(work, key, pairs, m)
        }
        Write::SetRange { key, offset, value } => {
            let old = match work.string(&key) {
                Ok(old) => old.map(|(v, _)| v),
                Err(e) => return WriteResult::Failed(e),
            };
            if value.is_empty() {
                return WriteResult::Int(old.map_or(0, |v| v.len()) as i64);
            }
            if offset.saturating_add(value.len() as u64) > value_max as u64 {
                return WriteResult::Failed(WriteError::ValueTooLarge);
            }
            let new = bits::write_at(old.as_deref().unwrap_or_default(), offset as usize, &value);
            m.extend(bits::diff_write(key, old.as_deref(), &new));
            WriteResult::Int(new.len() as i64)
        }
        Write::SetBit { key, offset, on } => {
            let old = match work.string(&key) {
                Ok(old) => old.map(|(v, _)| v),
                Err(e) => return WriteResult::Failed(e),
            };
            let len = (offset / 8 + 1) as usize;
            if len > value_max {
                return WriteResult::Failed(WriteError::ValueTooLarge);
            }
            let mut new = old.as_deref().unwrap_or_default().to_vec();
            if new.len() < len {
                new.resize(len, 0);
            }
            let was = bits::get_bit(&new, offset);
            bits::set_bit(&mut new, offset, on);
            m.extend(bits::diff_write(key, old.as_deref(), &new));
            WriteResult::Int(was as i64)
        }
        Write::BitOp { dest, op, keys } => {
            // Lent, not copied: BITOP OR d k k k … names one large key many times for free.
            let mut inputs: Vec<&[u8]> = Vec::with_capacity(keys.len());
            for k in &keys {
                match work.live(k).map(|e| e.value) {
                    None => inputs.push(&[]),
                    Some(ValueRef::String(v)) => inputs.push(v),
                    Some(_) => return WriteResult::Failed(WriteError::WrongType),
                }
            }
            let out = bits::bitop(op, &inputs);
            if out.is_empty() {
                if work.live(&dest).is_some() {
                    m.push(Mutation::Delete { key: dest });
                }
                return WriteResult::Int(0);
            }
            let len = out.len();
            m.push(Mutation::Set {
                key: dest,
                value: out.into(),
                expires_at_ms: None,
            });
            WriteResult::Int(len as i64)
        }
        Write::BitField { key, ops } => {
            let old = match work.string(&key) {
                Ok(old) => old.map(|(v, _)| v),
                Err(e) => return WriteResult::Failed(e),
            };
            if bits::bitfield_len(&ops) > value_max {
                return WriteResult::Failed(WriteError::ValueTooLarge);
            }
            let mut new = old.as_deref().unwrap_or_default().to_vec();
            let results = bits::bitfield_apply(&mut new, &ops);
            m.extend(bits::diff_write(key, old.as_deref(), &new));
            WriteResult::Values(results.into_iter().map(|r| r.map(int_text)).collect())
        }
        Write::Sort { spec, store } => {
            let lookup = |k: &[u8]| work.live(k).map(|e| e.value);
            let found = match sort::sort(&lookup, &spec) {
                Ok(found) => found,
                Err(e) => return WriteResult::Failed(e),
            };
            let Some(dest) = store else {
                return WriteResult::Values(found);
            };
            let n = found.len();
            if n > 0 {
                m.push(Mutation::ListPush {
                    key: dest,
                    create: true,
                    front: false,
                    elements: found.into_iter().map(Option::unwrap_or_default).collect(),
                });
            } else if work.live(&dest).is_some() {
                m.push(Mutation::Delete { key: dest });
            }
            WriteResult::Int(n as i64)
        }
        Write::DeleteAll => {
            m.push(Mutation::DeleteAll);
            WriteResult::DeletedAll
        }
        Write::System { key, value } => {
            m.push(Mutation::System { key, value });
            WriteResult::Put(true)
        }
        Write::StreamAdd {
            key,
            id,
            fields,
            no_create,
            trim,
        } => {
            let x = match work.live(&key).map(|e| e.value) {
                None if no_create => return WriteResult::Value(None),
                None => None,
                Some(ValueRef::Stream(x)) => Some(x),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
            };
            let last = x.map_or(StreamId::MIN, |x| x.last_id);
            let id = match stream_id(id, last, now) {
                Ok(id) => id,
                Err(e) => return WriteResult::Failed(e),
            };
            m.push(Mutation::StreamAdd {
                key: key.clone(),
                create: x.is_none(),
                id,
                fields,
            });
            // Trimmed as if the entry were in (it counts toward MAXLEN, and may itself fall
            // below MINID), without copying the stream to add it.
            if let Some(keep_from) = trim.and_then(|t| trim_point(x, Some(id), t)) {
                m.push(Mutation::StreamTrim { key, keep_from });
            }
            WriteResult::Value(Some(id.to_bytes()))
        }
        Write::StreamDel { key, ids } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::Stream(x)) => {
                let mut ids: Vec<StreamId> = ids.into_iter().filter(|id| x.contains(*id)).collect();
                ids.sort_unstable();
                ids.dedup();
                let n = ids.len();
                if n > 0 {
                    m.push(Mutation::StreamDel { key, ids });
                }
                WriteResult::Int(n as i64)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::StreamTrimTo { key, trim } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Int(0),
            Some(ValueRef::Stream(x)) => match trim_point(Some(x), None, trim) {
                None => WriteResult::Int(0),
                Some(keep_from) => {
                    let n = x.count_below(keep_from);
                    m.push(Mutation::StreamTrim { key, keep_from });
                    WriteResult::Int(n as i64)
                }
            },
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::StreamSetId {
            key,
            id,
            entries_added,
            max_deleted,
        } => match work.live(&key).map(|e| e.value) {
            None => WriteResult::Failed(WriteError::NoSuchKey),
            Some(ValueRef::Stream(x)) => {
                if id < max_deleted.unwrap_or(x.max_deleted) {
                    return WriteResult::Failed(WriteError::StreamSetIdMaxDeleted);
                }
                if entries_added.is_some_and(|n| n < x.len() as u64) {
                    return WriteResult::Failed(WriteError::StreamSetIdEntriesAdded);
                }
                if x.last_entry_id().is_some_and(|top| id < top) {
                    return WriteResult::Failed(WriteError::StreamSetIdTooSmall);
                }
                m.push(Mutation::StreamMeta {
                    key,
                    create: false,
                    last_id: id,
                    entries_added: entries_added.unwrap_or(x.entries_added),
                    max_deleted: max_deleted.unwrap_or(x.max_deleted),
                });
                WriteResult::Put(true)
            }
            Some(_) => WriteResult::Failed(WriteError::WrongType),
        },
        Write::StreamGroupCreate {
            key,
            group,
            id,
            entries_read,
            mkstream,
        } => {
            let last_id = match work.live(&key).map(|e| e.value) {
                Some(ValueRef::Stream(x)) if x.groups.contains_key(&group) => {
                    return WriteResult::Failed(WriteError::GroupExists)
                }
                Some(ValueRef::Stream(x)) => id.unwrap_or(x.last_id),
                Some(_) => return WriteResult::Failed(WriteError::WrongType),
                None if mkstream => {
                    m.push(Mutation::StreamMeta {
                        key: key.clone(),
                        create: true,
                        last_id: StreamId::MIN,
                        entries_added: 0,
                        max_deleted: StreamId::MIN,
                    });
                    id.unwrap_or(StreamId::MIN)
                }
                None => return WriteResult::Failed(WriteError::NoSuchKey),
            };
            m.push(Mutation::StreamGroup {
                key,
                group,
                last_id,
                entries_read,
            });
            WriteResult::Put(true)
        }
        Write::StreamGroupSetId {
            key,
            group,
            id,
            entries_read,
        } => match stream_group(work, &key, &group) {
            Err(e) => WriteResult::Failed(e),
            Ok((_, None)) => WriteResult::Failed(WriteError::NoGroup),
            Ok((x, Some(_))) => {
                m.push(Mutation::StreamGroup {
                    key,
                    group,
                    last_id: id.unwrap_or(x.last_id),
                    entries_read,
                });
                WriteResult::Put(true)
            }
        },
        Write::StreamGroupDestroy { key, group } => match stream_group(work, &key, &group) {
            Err(e) => WriteResult::Failed(e),
            Ok((_, None)) => WriteResult::Int(0),
            Ok((_, Some(_))) => {
                m.push(Mutation::StreamGroupDel { key, group });
                WriteResult::Int(1)
            }
        },
        Write::StreamConsumerCreate {
            key,
            group,
            consumer,
        } => match stream_group(work, &key, &group) {
            Err(e) => WriteResult::Failed(e),
            Ok((_, None)) => WriteResult::Failed(WriteError::NoGroup),
            Ok((_, Some(g))) if g.consumers.contains_key(&consumer) => WriteResult::Int(0),
            Ok((_, Some(_))) => {
                m.push(Mutation::StreamConsumer {
                    key,
                    group,
                    consumer,
                    seen_ms: now,
                    active_ms: None,
                });
                WriteResult::Int(1)
            }
        },
        Write::StreamConsumerDelete {
            key,
            group,
            consumer,
        } => match stream_group(work, &key, &group) {
            Err(e) => WriteResult::Failed(e),
            Ok((_, None)) => WriteResult::Failed(WriteError::NoGroup),
            Ok((_, Some(g))) => match g.consumers.get(&consumer) {
                None => WriteResult::Int(0),
                Some(c) => {
                    let n = c.pending.len();
                    m.push(Mutation::StreamConsumerDel {
                        key,
                        group,
                        consumer,
                    });
                    WriteResult::Int(n as i64)
                }
            },
        },
        Write::StreamReadGroup {
            group,
            consumer,
            streams,
            count,
            no_ack,
            retry,
        } => {
            // Every stream first: an error delivers nothing.
            let mut found = Vec::with_capacity(streams.len());
            for (key, _) in &streams {
                match stream_group(work, key, &group) {
                    Ok((x, Some(g))) => found.push((x, g)),
                    Ok((_, None)) | Err(WriteError::NoSuchKey) => {
                        return WriteResult::Failed(WriteError::NoGroup)
                    }
                    Err(e) => return WriteResult::Failed(e),
                }
            }
            let limit = count.unwrap_or(usize::MAX);
            let mut out = Vec::new();
            // Where a stream named twice was read to by its first `>` (Redis reads on).
            let mut read_to: HashMap<Bytes, (StreamId, Option<u64>)> = HashMap::default();
            for ((key, after), (x, g)) in streams.into_iter().zip(found) {
                let known = g.consumers.get(&consumer);
                let mut active_ms = known.and_then(|c| c.active_ms);
                let mut pending = Vec::new();
                match after {
                    // `>`: what the group has not read yet.
                    None => {
                        let from =
                            (read_to.get(&key).copied()).unwrap_or((g.last_id, g.entries_read));
                        let (mut last_id, mut entries_read) = from;
                        let new = x.range(Bound::Excluded(from.0), Bound::Unbounded, false);
                        for (id, fields) in new.take(limit) {
                            entries_read = x.read_one(entries_read, id);
                            last_id = id;
                            push_entry(&mut out, id, Some(&fields));
                            if !no_ack {
                                pending.push((id, now, 1));
                            }
                        }
                        if last_id != from.0 {
                            read_to.insert(key.clone(), (last_id, entries_read));
                            active_ms = Some(now);
                            m.push(Mutation::StreamGroup {
                                key: key.clone(),
                                group: group.clone(),
                                last_id,
                                entries_read,
                            });
                        }
                    }
                    // The consumer's own pending entries, delivered again.
                    Some(after) => {
                        let mine = known.into_iter().flat_map(|c| {
                            c.pending.range((Bound::Excluded(after), Bound::Unbounded))
                        });
                        for id in mine.take(limit) {
                            let fields = x.get(*id);
                            push_entry(&mut out, *id, fields.as_deref());
                            if fields.is_some() {
                                pending.push((*id, now, g.pending[id].deliveries + 1));
                            }
                        }
                    }
                }
                // A blocked read's try that finds nothing for a consumer that exists logs
                // nothing: every consumer woken by one entry would log a record otherwise.
                let idle = retry && known.is_some_and(|c| c.active_ms == active_ms);
                if !idle || !pending.is_empty() {
                    m.push(Mutation::StreamConsumer {
                        key: key.clone(),
                        group: group.clone(),
                        consumer: consumer.clone(),
                        seen_ms: now,
                        active_ms,
                    });
                }
                if !pending.is_empty() {
                    m.push(Mutation::StreamPending {
                        key,
                        group: group.clone(),
                        consumer: consumer.clone(),
                        entries: pending,
                    });
                }
                out.push(None);
            }
            WriteResult::Values(out)
        }
        Write::StreamAck { key, group, ids } => match stream_group(work, &key, &group) {
            Err(WriteError::NoSuchKey) | Ok((_, None)) => WriteResult::Int(0),
            Err(e) => WriteResult::Failed(e),
            Ok((_, Some(g))) => {
                let mut ids: Vec<StreamId> = (ids.into_iter())
                    .filter(|id| g.pending.contains_key(id))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                let n = ids.len();
                if n > 0 {
                    m.push(Mutation::StreamAck { key, group, ids });
                }
                WriteResult::Int(n as i64)
            }
        },
        Write::StreamClaim {
            key,
            group,
            consumer,
            min_idle_ms,
            claim,
        } => {
            let (x, g) = match stream_group(work, &key, &group) {
                Ok((x, Some(g))) => (x, g),
                Ok((_, None)) | Err(WriteError::NoSuchKey) => {
                    return WriteResult::Failed(WriteError::NoGroup)
                }
                Err(e) => return WriteResult::Failed(e),
            };
            let idle =
                |p: &crate::table::Pending| now.saturating_sub(p.delivered_ms) >= min_idle_ms;
            let (mut claimed, mut taken, mut gone) = (Vec::new(), Vec::new(), Vec::new());
            let mut cursor = None;
            match claim {
                Claim::Ids {
                    ids,
                    delivered,
                    deliveries,
                    force,
                    just_id,
                    last_id,
                } => {
                    if let Some(last_id) = last_id.filter(|l| *l > g.last_id) {
                        m.push(Mutation::StreamGroup {
                            key: key.clone(),
                            group: group.clone(),
                            last_id,
                            entries_read: g.entries_read,
                        });
                    }
                    let at = match delivered {
                        None => now,
                        Some(ClaimTime::Idle(ms)) => now.saturating_sub(ms),
                        Some(ClaimTime::At(t)) => t.min(now),
                    };
                    // An ID named twice is claimed again as this claim left it (Redis goes
                    // through the IDs one by one): at `at`, with the count it gave.
                    let mut claimed_here: HashMap<StreamId, u64> = HashMap::default();
                    for id in ids {
                        let p = g.pending.get(&id);
                        let Some(fields) = x.get(id) else {
                            // Gone from the stream: no longer pending.
                            if p.is_some() && !gone.contains(&id) {
                                gone.push(id);
                            }
                            continue;
                        };
                        let before = match (claimed_here.get(&id), p) {
                            (Some(_), _) if now.saturating_sub(at) < min_idle_ms => continue,
                            (Some(n), _) => *n,
                            (None, Some(p)) if !idle(p) => continue,
                            (None, Some(p)) => p.deliveries,
                            // FORCE: pending with no one until now, delivered once.
                            (None, None) if force => 1,
                            (None, None) => continue,
                        };
                        let n = deliveries.unwrap_or(before + u64::from(!just_id));
                        claimed_here.insert(id, n);
                        taken.push((id, at, n));
                        push_entry(&mut claimed, id, (!just_id).then_some(&fields[..]));
                    }
                }
                Claim::Scan {
                    start,
                    count,
                    just_id,
                } => {
                    let (mut attempts, mut left) = (count.saturating_mul(10), count);
                    let mut it = g.pending.range(start..);
                    cursor = Some(StreamId::MIN);
                    loop {
                        if attempts == 0 || left == 0 {
                            cursor = Some(it.next().map_or(StreamId::MIN, |(id, _)| *id));
                            break;
                        }
                        let Some((id, p)) = it.next() else {
                            break;
                        };
                        attempts -= 1;
                        let Some(fields) = x.get(*id) else {
                            gone.push(*id);
                            left -= 1;
                            continue;
                        };
                        if !idle(p) {
                            continue;
                        }
                        taken.push((*id, now, p.deliveries + u64::from(!just_id)));
                        push_entry(&mut claimed, *id, (!just_id).then_some(&fields[..]));
                        left -= 1;
                    }
                }
            }
            let mut out = Vec::new();
            if let Some(c) = cursor {
                out.push(Some(c.to_bytes()));
            }
            out.append(&mut claimed);
            if !taken.is_empty() {
                m.push(Mutation::StreamConsumer {
                    key: key.clone(),
                    group: group.clone(),
                    consumer: consumer.clone(),
                    seen_ms: now,
                    active_ms: Some(now),
                });
                m.push(Mutation::StreamPending {
                    key: key.clone(),
                    group: group.clone(),
                    consumer,
                    entries: taken,
                });
            }
            if cursor.is_some() {
                out.push(None);
                out.extend(gone.iter().map(|id| Some(id.to_bytes())));
            }
            if !gone.is_empty() {
                m.push(Mutation::StreamAck {
                    key,
                    group,
                    ids: gone,
                });
            }
            WriteResult::Values(out)
        }
    }
}

/// The stream at `key` and its consumer group `group` (`None`: no such group), or
/// `NoSuchKey` (no stream) or `WrongType`.
fn stream_group<'a, S: Decided>(
    work: &'a Overlay<S>,
    key: &[u8],
    group: &[u8],
) -> Result<(&'a StreamValue, Option<&'a StreamGroup>), WriteError> {
    match work.live(key).map(|e| e.value) {
        Some(ValueRef::Stream(x)) => Ok((x, x.groups.get(group))),
        Some(_) => Err(WriteError::WrongType),
        None => Err(WriteError::NoSuchKey),
    }
}

/// Pushes a stream entry as reads lay it out: its ID, its fields and values (none for an
/// entry since deleted, or for JUSTID), then a nil.
fn push_entry(out: &mut Vec<Option<Bytes>>, id: StreamId, fields: Option<&[Bytes]>) {
    out.push(Some(id.to_bytes()));
    out.extend(fields.into_iter().flatten().map(|f| Some(f.clone())));
    out.push(None);
}

/// The ID XADD gives an entry, from its spec, the stream's last ID and the transaction's time.
fn stream_id(spec: StreamIdSpec, last: StreamId, now: u64) -> Result<StreamId, WriteError> {
    let id = match spec {
        // The clock may step back: the ID still increases.
        StreamIdSpec::Auto if now > last.ms => StreamId::new(now, 0),
        StreamIdSpec::Auto => last.next().ok_or(WriteError::StreamIdTooSmall)?,
        // Within the same ms only: a sequence that would overflow is refused.
        StreamIdSpec::Seq(ms) if ms == last.ms => (last.seq.checked_add(1))
            .map(|seq| StreamId::new(ms, seq))
            .ok_or(WriteError::StreamIdTooSmall)?,
        StreamIdSpec::Seq(ms) => StreamId::new(ms, u64::from(ms == 0)),
        StreamIdSpec::Exact(id) => id,
    };
    if id == StreamId::MIN {
        return Err(WriteError::StreamIdZero);
    }
    if id <= last {
        return Err(WriteError::StreamIdTooSmall);
    }
    Ok(id)
}

/// The lowest ID a trim keeps (every entry below it goes), or `None` when nothing goes: of the
/// stream's entries, followed by the entry XADD is `adding` (the greatest ID) if any. Reads
/// only the entries that go.
fn trim_point(
    x: Option<&crate::table::StreamValue>,
    adding: Option<StreamId>,
    trim: StreamTrim,
) -> Option<StreamId> {
    let len = x.map_or(0, |x| x.len());
    let all = len + usize::from(adding.is_some());
    let mut gone = match trim.by {
        StreamTrimBy::MaxLen(max) => all.saturating_sub(max as usize),
        StreamTrimBy::MinId(min) => {
            let old = x.map_or(0, |x| x.count_below(min));
            old + usize::from(adding.is_some_and(|id| id < min))
        }
    };
    if trim.node > 0 {
        let node = trim.node as usize;
        let limit = match trim.limit {
            Some(0) => usize::MAX,
            Some(l) => l as usize,
            None => node.saturating_mul(100),
        };
        gone = gone.min(limit);
        gone -= gone % node;
    }
    let last = || adding.or_else(|| x.and_then(|x| x.last_entry_id()));
    match gone {
        0 => None,
        n if n < len => x.and_then(|x| x.nth_id(n)),
        // Every entry that was there goes; the one added stays.
        n if n == len && adding.is_some() => adding,
        _ => last().and_then(StreamId::next),
    }
}

/// Removes `members` (each in the sorted set `z` at `key`, each once): logs a ZRem, or a Delete
/// when none would be left. Result: `Int(removed)`.
fn zrem(key: Bytes, z: &ZSetValue, members: Vec<Bytes>, m: &mut Vec<Mutation>) -> WriteResult {
    let n = members.len();
    if n == z.len() {
        m.push(Mutation::Delete { key });
    } else if n > 0 {
        m.push(Mutation::ZRem { key, members });
    }
    WriteResult::Int(n as i64)
}

/// Makes `key` hold a sorted set of exactly `pairs`, whatever it held (none: deletes it).
/// Result: `Int(members stored)`.
fn zstore<S: Decided>(
    work: &Overlay<S>,
    key: Bytes,
    pairs: Vec<(Bytes, f64)>,
    m: &mut Vec<Mutation>,
) -> WriteResult {
    let n = pairs.len();
    if n > 0 {
        m.push(Mutation::ZAdd {
            key,
            create: true,
            pairs,
        });
    } else if work.live(&key).is_some() {
        m.push(Mutation::Delete { key });
    }
    WriteResult::Int(n as i64)
}

/// The first `n` elements from the head (`front`) or the tail of `list`, in the order a pop
/// takes them.
fn list_end(list: &ListValue, front: bool, n: usize) -> Vec<Bytes> {
    let len = list.len();
    let copy = |e: &[u8]| Bytes::copy_from_slice(e);
    if front {
        list.range(0, n).map(copy).collect()
    } else {
        let mut tail: Vec<Bytes> = list.range(len - n, len).map(copy).collect();
        tail.reverse();
        tail
    }
}

/// `items` without those `skip` says to leave out, each once, in their first order.
fn new_members(items: Vec<Bytes>, skip: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
    let mut seen = HashMap::<Bytes, ()>::default();
    items
        .into_iter()
        .filter(|i| !skip(i) && seen.insert(i.clone(), ()).is_none())
        .collect()
}

/// The members of the intersection, union or difference of `sets` (`None`: an absent key, an
/// empty set), each once.
pub(crate) fn combine(op: SetOp, sets: &[Option<&SetValue>]) -> Vec<Bytes> {
    let owned = |m: std::borrow::Cow<'_, [u8]>| Bytes::from(m.into_owned());
    match op {
        SetOp::Union => {
            let all = sets.iter().flatten().flat_map(|s| s.iter().map(owned));
            new_members(all.collect(), |_| false)
        }
        SetOp::Inter => {
            if sets.iter().any(Option::is_none) {
                return Vec::new();
            }
            let mut sets: Vec<&SetValue> = sets.iter().flatten().copied().collect();
            // From the smallest set, as Redis does.
            sets.sort_by_key(|s| s.len());
            let Some((first, rest)) = sets.split_first() else {
                return Vec::new();
            };
            first
                .iter()
                .filter(|m| rest.iter().all(|s| s.contains(m)))
                .map(owned)
                .collect()
        }
        SetOp::Diff => {
            let Some(Some(first)) = sets.first() else {
                return Vec::new();
            };
            first
                .iter()
                .filter(|m| sets[1..].iter().flatten().all(|s| !s.contains(m)))
                .map(owned)
                .collect()
        }
    }
}

/// Up to `want` distinct members of `set`, chosen by `rng`, when every replica decides:
/// those with the smallest keyed hash.
/// The choice depends on the members and the seed only, never on the set's encoding or the
/// order its table happens to keep (which differs between replicas: each table has its own
/// random hash seed, and a replica that installed a snapshot inserted in another order). O(n).
fn pick_distinct(set: &SetValue, want: usize, rng: &mut Pick) -> Vec<Bytes> {
    let seed = rng.next();
    let rank = |m: &[u8]| {
        let mut h = Pick(seed);
        for chunk in m.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            h.0 ^= u64::from_le_bytes(b);
            h.next();
        }
        h.0 ^= m.len() as u64;
        h.next()
    };
    let mut ranked: Vec<(u64, std::borrow::Cow<'_, [u8]>)> =
        set.iter().map(|m| (rank(&m), m)).collect();
    if want < ranked.len() {
        ranked.select_nth_unstable_by(want, |a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        ranked.truncate(want);
    }
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .map(|(_, m)| Bytes::from(m.into_owned()))
        .collect()
}

/// Whether a write to the hash at `key` creates it, and the value of its `field`, copied;
/// `Err(WrongType)` if the key holds another type.
fn hash_field<S: Decided>(
    work: &Overlay<S>,
    key: &[u8],
    field: &[u8],
) -> Result<(bool, Option<Bytes>), WriteError> {
    match work.live(key).map(|e| e.value) {
        None => Ok((true, None)),
        Some(ValueRef::Hash(h)) => Ok((false, h.get(field).map(Bytes::copy_from_slice))),
        Some(_) => Err(WriteError::WrongType),
    }
}

/// `cur + by` as INCRBYFLOAT writes it; `cur` is `None` when the value is not a float.
fn add_float(cur: Option<f64>, by: f64) -> Result<Bytes, WriteError> {
    match cur {
        None => Err(WriteError::NotAFloat),
        Some(cur) if !(cur + by).is_finite() || !by.is_finite() => Err(WriteError::NotFinite),
        Some(cur) => Ok(Bytes::from(format_float(cur + by))),
    }
}

/// The mutations that make `key` hold what `e` holds, with its expiry: a rename's second half.
/// O(the value): the log holds the moved value itself, not a reference to the old key, so that
/// each record's effect on a key depends only on that key (docs/FORMAT.md).
fn recreate(key: Bytes, e: Lent<'_>) -> Vec<Mutation> {
    let copy = |b: &[u8]| Bytes::copy_from_slice(b);
    let contents = match e.value {
        ValueRef::String(v) => {
            return vec![Mutation::Set {
                key,
                value: copy(v),
                expires_at_ms: e.expires_at_ms,
            }]
        }
        ValueRef::Hash(h) => Mutation::HashSet {
            key: key.clone(),
            create: true,
            pairs: h.iter().map(|(f, v)| (copy(f), copy(v))).collect(),
        },
        ValueRef::Set(set) => Mutation::SetAdd {
            key: key.clone(),
            create: true,
            members: set.iter().map(|m| Bytes::from(m.into_owned())).collect(),
        },
        ValueRef::List(list) => Mutation::ListPush {
            key: key.clone(),
            create: true,
            front: false,
            elements: list.iter().map(copy).collect(),
        },
        ValueRef::ZSet(z) => Mutation::ZAdd {
            key: key.clone(),
            create: true,
            pairs: z.iter().into_iter().map(|(m, s)| (copy(m), s)).collect(),
        },
        ValueRef::Stream(x) => {
            // An empty stream with the metadata, the entries, then the metadata again (each
            // added entry moved it).
            let meta = |create| Mutation::StreamMeta {
                key: key.clone(),
                create,
                last_id: x.last_id,
                entries_added: x.entries_added,
                max_deleted: x.max_deleted,
            };
            let mut out = vec![meta(true)];
            let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
            for (id, fields) in x.range(all.0, all.1, false) {
                out.push(Mutation::StreamAdd {
                    key: key.clone(),
                    create: false,
                    id,
                    fields,
                });
            }
            out.push(meta(false));
            for (name, g) in &x.groups {
                out.push(Mutation::StreamGroup {
                    key: key.clone(),
                    group: name.clone(),
                    last_id: g.last_id,
                    entries_read: g.entries_read,
                });
                for (consumer, c) in &g.consumers {
                    out.push(Mutation::StreamConsumer {
                        key: key.clone(),
                        group: name.clone(),
                        consumer: consumer.clone(),
                        seen_ms: c.seen_ms,
                        active_ms: c.active_ms,
                    });
                    if !c.pending.is_empty() {
                        let entries = (c.pending.iter())
                            .map(|id| (*id, g.pending[id].delivered_ms, g.pending[id].deliveries))
                            .collect();
                        out.push(Mutation::StreamPending {
                            key: key.clone(),
                            group: name.clone(),
                            consumer: consumer.clone(),
                            entries,
                        });
                    }
                }
            }
            if let Some(t) = e.expires_at_ms {
                out.push(Mutation::Expire {
                    key,
                    expires_at_ms: Some(t),
                });
            }
            return out;
        }
    };
    // A collection's `create` leaves it without an expiry: its expiry follows.
    let mut out = vec![contents];
    if let Some(t) = e.expires_at_ms {
        out.push(Mutation::Expire {
            key,
            expires_at_ms: Some(t),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No key holds anything.
    struct Empty;

    impl Decided for Empty {
        fn lend(&self, _: &[u8]) -> Option<Lent<'_>> {
            None
        }
    }

    /// A transaction's pushes onto one list are told from their shape while they are few; past
    /// SHAPE_EDITS_MAX the entry is made, so that a loop of pushes is not quadratic.
    #[test]
    fn a_transaction_makes_a_list_it_pushes_onto_many_times() {
        let mut work = Overlay {
            base: Empty,
            changed: HashMap::default(),
            cleared: false,
            now: 0,
        };
        let key = Bytes::from_static(b"list");
        let made = |work: &Overlay<Empty>| work.changed[&key[..]].entry.get().is_some();
        for n in 1..=SHAPE_EDITS_MAX + 3 {
            work.apply(&[Mutation::ListPush {
                key: key.clone(),
                create: n == 1,
                front: true,
                elements: vec![Bytes::from_static(b"e")],
            }]);
            let shape = work.live_shape(&key).expect("a list");
            assert_eq!(shape.list_len, Some(n));
            assert_eq!(made(&work), n > SHAPE_EDITS_MAX, "after {n} pushes");
        }
    }
}
