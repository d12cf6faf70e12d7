//! CLIENT TRACKING: the invalidations of client-side caching, as Redis 7.2 sends them.
//!
//! In the default mode the server remembers which tracking clients read each key; in BCAST mode
//! a client names key prefixes instead. A write to a key sends each of them an `invalidate`
//! push (RESP3), or a message on `__redis__:invalidate` to the client named by REDIRECT (RESP2),
//! once the write is durable: a client never drops a cached value for a write that may not
//! survive. A key read again after its invalidation is remembered again.

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicI64;
use std::sync::Mutex;

use super::*;

/// One client's tracking, as CLIENT TRACKING set it.
pub struct Tracker {
    client: Arc<Client>,
    /// Where invalidations go: another client's id (REDIRECT), or this client.
    redirect: Option<u64>,
    bcast: bool,
    prefixes: Vec<Bytes>,
    optin: bool,
    optout: bool,
    noloop: bool,
}

/// The tracking table.
pub struct Tracking {
    /// Keys read by clients tracking in the default mode, with who read them.
    keys: Mutex<HashMap<Bytes, HashSet<u64>>>,
    trackers: Mutex<HashMap<u64, Arc<Tracker>>>,
    /// How many clients track: writes look up nothing while none does.
    active: AtomicUsize,
    /// `tracking-table-max-keys`: past it, the oldest-looking keys are invalidated and
    /// forgotten (0: no bound).
    pub max_keys: AtomicI64,
}

impl Default for Tracking {
    fn default() -> Tracking {
        Tracking {
            keys: Mutex::default(),
            trackers: Mutex::default(),
            active: AtomicUsize::new(0),
            max_keys: AtomicI64::new(1_000_000),
        }
    }
}

impl Tracking {
    /// Whether any client tracks.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    fn on(&self, t: Arc<Tracker>) {
        if lock(&self.trackers).insert(t.client.id, t).is_none() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends `t`'s tracking, unless CLIENT TRACKING ON replaced it since.
    fn off(&self, t: &Arc<Tracker>) {
        let mut trackers = lock(&self.trackers);
        if trackers
            .get(&t.client.id)
            .is_some_and(|now| Arc::ptr_eq(now, t))
        {
            trackers.remove(&t.client.id);
            // The last tracker gone, nobody is left to tell: forget every key (FLUSHALL
            // would, and it does nothing while nobody tracks).
            if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
                lock(&self.keys).clear();
            }
        }
    }

    /// Remembers that client `id` read `keys`.
    fn remember(&self, id: u64, keys: Vec<Bytes>, registry: &Clients) {
        let mut table = lock(&self.keys);
        for k in keys {
            match table.get_mut(&k) {
                Some(readers) => {
                    readers.insert(id);
                }
                // A copy, not a slice that keeps the request's other arguments alive.
                None => {
                    table.insert(Bytes::copy_from_slice(&k), [id].into());
                }
            }
        }
        drop(table);
        self.enforce_max(registry);
    }

    /// Keeps the table within `tracking-table-max-keys`: the keys over it are forgotten (in the
    /// table's order) and their readers told, as Redis evicts from its tracking table.
    pub fn enforce_max(&self, registry: &Clients) {
        let max = self.max_keys.load(Ordering::Relaxed);
        let mut table = lock(&self.keys);
        if max <= 0 || table.len() as i64 <= max {
            return;
        }
        let over = table.len() - max as usize;
        let evict: Vec<Bytes> = table.keys().take(over).cloned().collect();
        let sends: Vec<_> = (evict.into_iter())
            .filter_map(|k| table.remove(&k).map(|ids| (k, ids)))
            .collect();
        drop(table);
        for (k, ids) in sends {
            self.send_to(&ids, None, &k, registry);
        }
    }

    /// INFO's figures: clients tracking, keys in the table, (key, client) pairs, and BCAST
    /// prefixes.
    pub fn figures(&self) -> (usize, usize, usize, usize) {
        let (keys, items) = {
            let t = lock(&self.keys);
            (t.len(), t.values().map(HashSet::len).sum())
        };
        let trackers = lock(&self.trackers);
        let prefixes = trackers.values().map(|t| t.prefixes.len()).sum();
        (trackers.len(), keys, items, prefixes)
    }

    /// Sends the invalidations a durable write to `keys` causes; `writer` made it.
    pub fn invalidate(&self, keys: &[Bytes], writer: u64, registry: &Clients) {
        if !self.active() {
            return;
        }
        for k in keys {
            let ids = lock(&self.keys).remove(k);
            if let Some(ids) = ids {
                self.send_to(&ids, Some(writer), k, registry);
            }
        }
        let bcast: Vec<Arc<Tracker>> = (lock(&self.trackers).values())
            .filter(|t| t.bcast)
            .cloned()
            .collect();
        for t in bcast {
            if t.noloop && t.client.id == writer {
                continue;
            }
            // One message per prefix, as Redis sends them (no prefix: every key).
            let all = [Bytes::new()];
            let prefixes = if t.prefixes.is_empty() {
                &all[..]
            } else {
                &t.prefixes[..]
            };
            for p in prefixes {
                let hit: Vec<Reply> = (keys.iter())
                    .filter(|k| k.starts_with(p))
                    .map(|k| Reply::Bulk(k.clone()))
                    .collect();
                if !hit.is_empty() {
                    deliver(&t, Some(hit), registry);
                }
            }
        }
    }

    /// FLUSHALL and FLUSHDB: every tracking client drops its whole cache.
    pub fn invalidate_all(&self, writer: u64, registry: &Clients) {
        if !self.active() {
            return;
        }
        lock(&self.keys).clear();
        let all: Vec<Arc<Tracker>> = lock(&self.trackers).values().cloned().collect();
        for t in all {
            if !(t.noloop && t.client.id == writer) {
                deliver(&t, None, registry);
            }
        }
    }

    fn send_to(&self, ids: &HashSet<u64>, writer: Option<u64>, key: &Bytes, registry: &Clients) {
        for id in ids {
            let t = lock(&self.trackers).get(id).cloned();
            let Some(t) = t.filter(|t| !t.bcast) else {
                continue;
            };
            if t.noloop && writer == Some(t.client.id) {
                continue;
            }
            deliver(&t, Some(vec![Reply::Bulk(key.clone())]), registry);
        }
    }
}

/// Sends one invalidation (`None`: of everything) where the tracker's invalidations go.
fn deliver(t: &Tracker, keys: Option<Vec<Reply>>, registry: &Clients) {
    let size = keys.as_ref().map_or(0, |k| k.len() * 32) + 64;
    let target = match t.redirect {
        None => t.client.clone(),
        Some(id) => match registry.get(id) {
            Some(c) => c,
            None => {
                // The client it redirects to has gone: a RESP3 client is told.
                if t.client.resp.load(Ordering::Relaxed) >= 3 {
                    let r = Reply::Push(vec![
                        Reply::bulk("tracking-redir-broken"),
                        Reply::Int(id as i64),
                    ]);
                    t.client.push(Pushed::Reply(r), 64);
                }
                return;
            }
        },
    };
    let push = if target.resp.load(Ordering::Relaxed) >= 3 {
        Reply::Push(vec![
            Reply::bulk("invalidate"),
            keys.map_or(Reply::Nil, Reply::Array),
        ])
    } else if !target.subscribed() {
        // RESP2 has no pushes: only a subscribed client can take the message, as in Redis.
        return;
    } else {
        Reply::Push(vec![
            Reply::bulk("message"),
            Reply::bulk("__redis__:invalidate"),
            keys.map_or(Reply::NilArray, Reply::Array),
        ])
    };
    target.push(Pushed::Reply(push), size);
}

/// A connection's tracking; turning it off, or closing, ends it.
pub(super) struct Tracked {
    sh: Arc<Shared>,
    t: Arc<Tracker>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.sh.tracking.off(&self.t);
    }
}

impl Conn {
    /// After a read: remembers its keys if this connection tracks them.
    pub(super) fn track_read(&mut self, args: &[Bytes]) {
        let caching = self.caching;
        let Some(t) = self.tracking.as_ref().map(|t| &t.t) else {
            return;
        };
        let wanted = if t.bcast {
            false
        } else if t.optin {
            caching == Some(true)
        } else if t.optout {
            caching != Some(false)
        } else {
            true
        };
        if wanted {
            let keys = cmd::introspect::keys(args)
                .into_iter()
                .filter_map(|(i, _)| args.get(i).cloned())
                .collect();
            self.sh
                .tracking
                .remember(self.client.id, keys, &self.sh.registry);
        }
    }

    /// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP]`.
    pub(super) fn client_tracking(&mut self, args: &[Bytes]) -> Reply {
        let on = match lower(&args[2]).as_str() {
            "on" => true,
            "off" => false,
            _ => return Reply::err(SYNTAX),
        };
        let (mut redirect, mut bcast, mut optin, mut optout, mut noloop) =
            (None, false, false, false, false);
        let mut prefixes: Vec<Bytes> = Vec::new();
        let mut i = 3;
        while i < args.len() {
            match lower(&args[i]).as_str() {
                "redirect" if i + 1 < args.len() => {
                    match parse_i64(&args[i + 1]) {
                        Some(id) if id > 0 => redirect = Some(id as u64),
                        _ => return Reply::err("ERR Invalid client ID"),
                    }
                    i += 1;
                }
                "prefix" if i + 1 < args.len() => {
                    prefixes.push(args[i + 1].clone());
                    i += 1;
                }
                "bcast" => bcast = true,
                "optin" => optin = true,
                "optout" => optout = true,
                "noloop" => noloop = true,
                _ => return Reply::err(SYNTAX),
            }
            i += 1;
        }
        if !on {
            self.tracking = None;
            return Reply::ok();
        }
        if !bcast && !prefixes.is_empty() {
            return Reply::err("ERR PREFIX option requires BCAST mode to be enabled");
        }
        if optin && optout {
            return Reply::err("ERR You can't use OPTIN and OPTOUT at the same time");
        }
        if bcast && (optin || optout) {
            return Reply::err("ERR OPTIN and OPTOUT are not compatible with BCAST");
        }
        if let Some(id) = redirect {
            if id != self.client.id && self.sh.registry.get(id).is_none() {
                return Reply::err("ERR The client ID you want redirect to does not exist");
            }
        }
        // Turning it on again keeps the prefixes already given, as Redis does; none may be a
        // prefix of another.
        let new_prefixes: Vec<Bytes> = prefixes.clone();
        if let Some(old) = self.tracking.as_ref().map(|t| &t.t) {
            if old.bcast && bcast {
                let mut all = old.prefixes.clone();
                all.extend(
                    new_prefixes
                        .iter()
                        .filter(|p| !old.prefixes.contains(p))
                        .cloned(),
                );
                prefixes = all;
            }
        }
        // Each new prefix against the ones kept and the other new ones, as Redis checks them.
        let kept = prefixes.len() - new_prefixes.len();
        for (a, p) in prefixes.iter().enumerate().skip(kept) {
            for (b, q) in prefixes.iter().enumerate() {
                if a != b && p != q && (p.starts_with(q) || q.starts_with(p)) {
                    return Reply::err(format!(
                        "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                        String::from_utf8_lossy(p),
                        String::from_utf8_lossy(q)
                    ));
                }
            }
        }
        let t = Arc::new(Tracker {
            client: self.client.clone(),
            redirect: redirect.filter(|&id| id != self.client.id),
            bcast,
            prefixes,
            optin,
            optout,
            noloop,
        });
        self.sh.tracking.on(t.clone());
        // From now on active expiry keeps the keys it removes, for the sampler to invalidate.
        self.sh.invalidate_expired();
        self.tracking = Some(Tracked {
            sh: self.sh.clone(),
            t,
        });
        Reply::ok()
    }

    /// `CLIENT CACHING YES|NO`: whether the next command's reads are tracked (OPTIN, OPTOUT).
    pub(super) fn client_caching(&mut self, arg: &[u8]) -> Reply {
        let t = self.tracking.as_ref().map(|t| &t.t);
        let yes = match lower(arg).as_str() {
            "yes" => true,
            "no" => false,
            _ => return Reply::err(SYNTAX),
        };
        match t {
            Some(t) if t.optin && yes => {}
            Some(t) if t.optout && !yes => {}
            Some(t) if t.optin || t.optout => {
                return Reply::err(format!(
                    "ERR CLIENT CACHING {} is only valid when tracking is enabled in {} mode.",
                    if yes { "YES" } else { "NO" },
                    if yes { "OPTIN" } else { "OPTOUT" }
                ))
            }
            _ => {
                return Reply::err(
                    "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
                )
            }
        }
        self.caching_next = Some(yes);
        Reply::ok()
    }

    /// `CLIENT TRACKINGINFO`.
    pub(super) fn client_trackinginfo(&self) -> Reply {
        let s = |x: &str| Reply::bulk(x.to_string());
        let Some(t) = self.tracking.as_ref().map(|t| &t.t) else {
            return Reply::Map(vec![
                (s("flags"), Reply::Set(vec![s("off")])),
                (s("redirect"), Reply::Int(-1)),
                (s("prefixes"), Reply::Array(Vec::new())),
            ]);
        };
        let mut flags = vec![s("on")];
        if t.bcast {
            flags.push(s("bcast"));
        }
        if t.optin {
            flags.push(s("optin"));
            if self.caching == Some(true) {
                flags.push(s("caching-yes"));
            }
        }
        if t.optout {
            flags.push(s("optout"));
            if self.caching == Some(false) {
                flags.push(s("caching-no"));
            }
        }
        if t.noloop {
            flags.push(s("noloop"));
        }
        let redirect = match t.redirect {
            None => 0,
            Some(id) => {
                if self.sh.registry.get(id).is_none() {
                    flags.push(s("broken_redirect"));
                }
                id as i64
            }
        };
        Reply::Map(vec![
            (s("flags"), Reply::Set(flags)),
            (s("redirect"), Reply::Int(redirect)),
            // BCAST without a prefix tracks the empty one, as Redis reports it.
            (
                s("prefixes"),
                Reply::Array(if t.bcast && t.prefixes.is_empty() {
                    vec![Reply::bulk("")]
                } else {
                    t.prefixes.iter().cloned().map(Reply::Bulk).collect()
                }),
            ),
        ])
    }

    /// `CLIENT GETREDIR`: the client invalidations go to; 0 for this one, -1 when not tracking.
    pub(super) fn client_getredir(&self) -> Reply {
        match self.tracking.as_ref().map(|t| &t.t) {
            None => Reply::Int(-1),
            Some(t) => Reply::Int(t.redirect.map_or(0, |id| id as i64)),
        }
    }
}

/// The keys a command changes (every key but those it only reads), for its invalidations.
pub(super) fn touched_keys(args: &[Bytes]) -> Vec<Bytes> {
    let ro = cmd::KeyFlags::parse("RO").expect("a key flag");
    cmd::introspect::keys(args)
        .into_iter()
        .filter(|(_, f)| !f.contains(ro))
        .filter_map(|(i, _)| args.get(i).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's arguments are slices of one buffer: the table keeps its own copy of a key
    /// read, or a key kept until it is written would keep the read's other arguments alive.
    #[test]
    fn the_table_keeps_no_slice_of_a_request() {
        let request = Bytes::from(vec![b'k'; 4096]);
        let t = Tracking::default();
        t.remember(
            1,
            vec![request.slice(0..2), request.slice(2..4)],
            &Clients::default(),
        );
        t.remember(2, vec![request.slice(0..2)], &Clients::default());
        let keys = lock(&t.keys);
        let (start, end) = (
            request.as_ptr() as usize,
            request.as_ptr() as usize + request.len(),
        );
        assert_eq!(keys.len(), 1);
        assert_eq!(keys.get(&b"kk"[..]).map(HashSet::len), Some(2));
        assert!(keys
            .keys()
            .all(|k| !(start..end).contains(&(k.as_ptr() as usize))));
    }
}
