//! Deciding a transaction: its guards, then each write against the state the earlier ones
//! leave, into an outcome and the absolute effects to log. Nothing here locks, logs or
//! publishes: the sequencer calls [`decide`] under its lock, against its decided state.

use bytes::Bytes;

use crate::keyspace::Changes;
use crate::record::Mutation;
use keel_wal::Lsn;

use crate::types::{live_at, Entry, Guard, Outcome, PutIf, Ttl, Write, WriteError, WriteResult};

/// The state a transaction is decided against: every earlier transaction, durable or not.
pub(crate) trait Decided {
    /// The decided entry of `key`, expired or not, copied out.
    fn get(&self, key: &[u8]) -> Option<Entry>;

    /// The version and expiry of `key`'s decided entry, expired or not, without copying its
    /// value (a guard needs no more).
    fn stamp(&self, key: &[u8]) -> Option<(Lsn, Option<u64>)>;
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
/// touches the tree, and the sequencer's map is then updated in place, once.
struct Overlay<S> {
    base: S,
    /// What the transaction wrote so far.
    changes: Changes,
    now: u64,
}

impl<S: Decided> Overlay<S> {
    fn live(&self, k: &[u8]) -> Option<Entry> {
        let e = match self.changes.get(k) {
            Some(e) => e.cloned(),
            None => self.base.get(k),
        };
        e.filter(|e| e.live(self.now))
    }

    fn apply(&mut self, mutations: &[Mutation]) {
        // The version is provisional: only liveness and values are read back.
        self.changes.apply(mutations, 0);
    }
}

/// Decides a transaction against `state`: the guards, then every write against the state the
/// earlier writes leave. Returns the outcome (without an LSN) and the absolute effects to log.
pub(crate) fn decide(
    state: impl Decided,
    now: u64,
    value_max: usize,
    guards: &[Guard],
    writes: Vec<Write>,
) -> (Outcome, Vec<Mutation>) {
    for (i, g) in guards.iter().enumerate() {
        let stamp = state.stamp(&g.key).filter(|&(_, at)| live_at(at, now));
        if stamp.map(|(version, _)| version) != g.version {
            return (Outcome::GuardFailed(i), Vec::new());
        }
    }
    let mut work = Overlay {
        base: state,
        changes: Changes::default(),
        now,
    };
    let n = writes.len();
    // Most writes log one mutation (a rename logs two).
    let mut mutations = Vec::with_capacity(n);
    // A transaction of plain puts (a bulk load, MSET) reads nothing back, so its writes need
    // not be laid over the state one by one.
    let reads = !writes.iter().all(|w| {
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
    for (i, w) in writes.into_iter().enumerate() {
        // This write's mutations are pushed straight onto the transaction's.
        let first = mutations.len();
        let m = &mut mutations;
        let result = match w {
            Write::Put {
                key,
                value,
                ttl,
                only,
            } => {
                // A plain put reads nothing: skip the lookup.
                let old = match (&only, &ttl) {
                    (PutIf::Always, Ttl::None | Ttl::At(_)) => None,
                    _ => work.live(&key),
                };
                let go = match only {
                    PutIf::Always => true,
                    PutIf::Absent => old.is_none(),
                    PutIf::Present => old.is_some(),
                };
                let expires_at_ms = match ttl {
                    Ttl::None => None,
                    Ttl::At(t) => Some(t),
                    Ttl::Keep => old.and_then(|e| e.expires_at_ms),
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
                let old = work.live(&key);
                match old.as_ref().map_or(Some(0), |e| parse_int(&e.value)) {
                    None => WriteResult::Failed(WriteError::NotAnInteger),
                    Some(cur) => match cur.checked_add(by) {
                        None => WriteResult::Failed(WriteError::Overflow),
                        Some(new) => {
                            m.push(Mutation::Set {
                                key,
                                value: Bytes::from(new.to_string()),
                                expires_at_ms: old.and_then(|e| e.expires_at_ms),
                            });
                            WriteResult::Int(new)
                        }
                    },
                }
            }
            Write::IncrFloat { key, by } => {
                let old = work.live(&key);
                match old.as_ref().map_or(Some(0.0), |e| parse_float(&e.value)) {
                    None => WriteResult::Failed(WriteError::NotAFloat),
                    Some(cur) if !(cur + by).is_finite() || !by.is_finite() => {
                        WriteResult::Failed(WriteError::NotFinite)
                    }
                    Some(cur) => {
                        let value = Bytes::from(format_float(cur + by));
                        m.push(Mutation::Set {
                            key,
                            value: value.clone(),
                            expires_at_ms: old.and_then(|e| e.expires_at_ms),
                        });
                        WriteResult::Value(Some(value))
                    }
                }
            }
            Write::Append { key, suffix } => {
                let old = work.live(&key);
                let len = old.as_ref().map_or(0, |e| e.value.len()) + suffix.len();
                if len > value_max {
                    WriteResult::Failed(WriteError::ValueTooLarge)
                } else {
                    let (value, expires_at_ms) = match old {
                        Some(e) => {
                            let mut v = Vec::with_capacity(len);
                            v.extend_from_slice(&e.value);
                            v.extend_from_slice(&suffix);
                            (Bytes::from(v), e.expires_at_ms)
                        }
                        None => (suffix, None),
                    };
                    m.push(Mutation::Set {
                        key,
                        value,
                        expires_at_ms,
                    });
                    WriteResult::Int(len as i64)
                }
            }
            Write::Expire { key, at_ms, only } => match work.live(&key) {
                Some(e) if only.holds(e.expires_at_ms, at_ms) => {
                    m.push(match at_ms {
                        Some(t) if t <= now => Mutation::Delete { key },
                        _ => Mutation::Set {
                            key,
                            value: e.value,
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
                    m.push(Mutation::Delete { key: from });
                    m.push(Mutation::Set {
                        key: to,
                        value: e.value,
                        expires_at_ms: e.expires_at_ms,
                    });
                    WriteResult::Put(true)
                }
            },
            Write::Get { key } => WriteResult::Value(work.live(&key).map(|e| e.value)),
            Write::DeleteAll => {
                m.push(Mutation::DeleteAll);
                WriteResult::DeletedAll
            }
            Write::System { key, value } => {
                m.push(Mutation::System { key, value });
                WriteResult::Put(true)
            }
        };
        if reads && i + 1 < n {
            work.apply(&mutations[first..]);
        }
        results.push(result);
    }
    (Outcome::Committed { lsn: None, results }, mutations)
}
