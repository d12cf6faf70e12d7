//! Keyspace notifications (`notify-keyspace-events`), as in Redis: a write publishes, for each
//! key it changed, an event on `__keyspace@0__:<key>` (the message is the event's name) and on
//! `__keyevent@0__:<event>` (the message is the key), for the classes switched on.
//!
//! A notification leaves only once the write it reports is durable: it is sent with the
//! write's reply ([`super::pipeline::Touched`]), after the engine acknowledged the record. The
//! events come from what the engine says each write did to each key ([`KeyEffect`]: changed,
//! created, deleted), named after the command as Redis names them. Messages are not durable, as
//! Pub/Sub's are not: a subscriber that is not connected when the event happens never gets it.
//!
//! `expired` events come from active expiry, which removes a key within about 100 ms of its
//! expiry; keel has no eviction, so no `evicted` events, and no key-miss events (`m`).

use std::sync::atomic::AtomicU32;

use keel_engine::KeyEffect;

use super::*;

pub const KEYSPACE: u32 = 1 << 0;
pub const KEYEVENT: u32 = 1 << 1;
pub const GENERIC: u32 = 1 << 2;
pub const STRING: u32 = 1 << 3;
pub const LIST: u32 = 1 << 4;
pub const SET: u32 = 1 << 5;
pub const HASH: u32 = 1 << 6;
pub const ZSET: u32 = 1 << 7;
pub const EXPIRED: u32 = 1 << 8;
pub const EVICTED: u32 = 1 << 9;
pub const STREAM: u32 = 1 << 10;
pub const KEY_MISS: u32 = 1 << 11;
pub const MODULE: u32 = 1 << 12;
pub const NEW: u32 = 1 << 13;
/// `A`: every class but key misses and new keys, as in Redis.
pub const ALL: u32 =
    GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// The flag each character of `notify-keyspace-events` stands for.
const CHARS: &[(u8, u32)] = &[
    (b'g', GENERIC),
    (b'$', STRING),
    (b'l', LIST),
    (b's', SET),
    (b'h', HASH),
    (b'z', ZSET),
    (b'x', EXPIRED),
    (b'e', EVICTED),
    (b't', STREAM),
    (b'd', MODULE),
    (b'n', NEW),
    (b'K', KEYSPACE),
    (b'E', KEYEVENT),
    (b'm', KEY_MISS),
];

/// The classes in `notify-keyspace-events`' syntax; `None` for an unknown character.
pub fn parse(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0, |flags, c| match c {
        b'A' => Some(flags | ALL),
        c => CHARS.iter().find(|(x, _)| x == c).map(|(_, f)| flags | f),
    })
}

/// The classes as CONFIG GET reports them: `A` for all of it, then `K`, `E` and `m`.
pub fn render(flags: u32) -> String {
    let mut s = String::new();
    if flags & ALL == ALL {
        s.push('A');
    }
    for &(c, f) in CHARS {
        let in_all = f & ALL != 0;
        if flags & f != 0 && !(in_all && flags & ALL == ALL) {
            s.push(c as char);
        }
    }
    s
}

/// The error CONFIG SET (and the config file) gives for a character that is not a class.
pub const INVALID: &str = "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.";

/// The classes switched on, shared by every connection.
#[derive(Default)]
pub struct Notify {
    flags: AtomicU32,
}

impl Notify {
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Switches the classes in `flags` on and the rest off; the engine reports what each write
    /// did only while some event can be published.
    pub fn set(&self, flags: u32, engine: &Engine) {
        self.flags.store(flags, Ordering::Relaxed);
        engine.report_effects(publishes(flags, ALL | NEW));
    }

    /// Whether a write's events may be published (one load while notifications are off).
    pub fn active(&self) -> bool {
        publishes(self.flags(), ALL | NEW)
    }

    /// Whether `expired` events are wanted.
    pub fn expired(&self) -> bool {
        publishes(self.flags(), EXPIRED)
    }
}

fn publishes(flags: u32, classes: u32) -> bool {
    flags & (KEYSPACE | KEYEVENT) != 0 && flags & classes != 0
}

/// One notification: its class, the event's name and the key.
pub type Event = (u32, &'static str, Bytes);

/// Publishes `events` for the classes switched on.
pub(super) fn publish(sh: &Shared, events: &[Event]) {
    let flags = sh.notify.flags();
    for (class, event, key) in events {
        if flags & class == 0 {
            continue;
        }
        if flags & KEYSPACE != 0 {
            let channel = [&b"__keyspace@0__:"[..], key].concat();
            let message = Bytes::from_static(event.as_bytes());
            sh.pubsub.publish(false, &channel.into(), &message);
        }
        if flags & KEYEVENT != 0 {
            let channel = format!("__keyevent@0__:{event}");
            sh.pubsub.publish(false, &channel.into(), key);
        }
    }
}

/// The events of one command (`args`, the command itself first) from the keys its writes
/// changed, as Redis names them: `new` when it created the key, the command's event, then `del`
/// when a removal left the key empty. A command that deletes a key any other way (EXPIRE with a
/// time past, a store of an empty result) reports only `del`.
pub fn events(args: &[Bytes], effects: &[KeyEffect], out: &mut Vec<Event>) {
    // No key changed (effects are reported only while notifications are on): nothing to name.
    if effects.is_empty() {
        return;
    }
    let name = lower(&args[0]);
    for e in effects {
        if e.created {
            out.push((NEW, "new", e.key.clone()));
        }
        let source = args.get(1) == Some(&e.key);
        let own = match name.as_str() {
            // Redis reports only the consumer they create, if they create one.
            "xreadgroup" | "xclaim" | "xautoclaim" if e.consumer_created => {
                vec![(STREAM, "xgroup-createconsumer")]
            }
            "xreadgroup" | "xclaim" | "xautoclaim" | "xack" => continue,
            _ => named(&name, args, source),
        };
        let removal = own.iter().any(|(_, ev)| REMOVALS.contains(ev));
        if e.deleted && !removal && !own.iter().any(|(_, ev)| ev.starts_with("rename")) {
            out.push((GENERIC, "del", e.key.clone()));
            continue;
        }
        out.extend(own.into_iter().map(|(c, ev)| (c, ev, e.key.clone())));
        if e.deleted && removal {
            out.push((GENERIC, "del", e.key.clone()));
        }
    }
}

/// Events after which a key left empty is deleted, with a `del` of its own.
const REMOVALS: &[&str] = &[
    "lpop",
    "rpop",
    "lrem",
    "ltrim",
    "srem",
    "spop",
    "hdel",
    "zrem",
    "zpopmin",
    "zpopmax",
    "zremrangebyscore",
    "zremrangebyrank",
    "zremrangebylex",
];

/// A list command's end: `left` (or `right`) as its argument says.
fn end(arg: Option<&Bytes>, left: &'static str, right: &'static str) -> &'static str {
    if arg.is_some_and(|a| eq(a, "left")) {
        left
    } else {
        right
    }
}

/// Whether SET's options give the key an expiry.
fn set_expires(args: &[Bytes]) -> bool {
    args.iter()
        .skip(3)
        .any(|a| ["ex", "px", "exat", "pxat"].iter().any(|o| eq(a, o)))
}

/// The events command `name` reports for a key it changed; `source` when the key is its first
/// argument (which MOVE-like commands take from).
fn named(name: &str, args: &[Bytes], source: bool) -> Vec<(u32, &'static str)> {
    let one = |c, e| vec![(c, e)];
    match name {
        "set" if set_expires(args) => vec![(STRING, "set"), (GENERIC, "expire")],
        "setex" | "psetex" => vec![(STRING, "set"), (GENERIC, "expire")],
        "set" | "setnx" | "getset" | "mset" | "msetnx" | "bitop" | "keel.cas" => one(STRING, "set"),
        "incr" | "decr" | "incrby" | "decrby" => one(STRING, "incrby"),
        "incrbyfloat" => one(STRING, "incrbyfloat"),
        "append" => one(STRING, "append"),
        "setrange" => one(STRING, "setrange"),
        "setbit" | "bitfield" => one(STRING, "setbit"),
        "del" | "unlink" | "getdel" => one(GENERIC, "del"),
        "expire" | "pexpire" | "expireat" | "pexpireat" => one(GENERIC, "expire"),
        "getex" if args.iter().skip(2).any(|a| eq(a, "persist")) => one(GENERIC, "persist"),
        "getex" => one(GENERIC, "expire"),
        "persist" => one(GENERIC, "persist"),
        "rename" | "renamenx" if source => one(GENERIC, "rename_from"),
        "rename" | "renamenx" => one(GENERIC, "rename_to"),
        "copy" => one(GENERIC, "copy_to"),
        "restore" => one(GENERIC, "restore"),
        "sort" => one(GENERIC, "sortstore"),
        "lpush" | "lpushx" => one(LIST, "lpush"),
        "rpush" | "rpushx" => one(LIST, "rpush"),
        "lpop" | "blpop" => one(LIST, "lpop"),
        "rpop" | "brpop" => one(LIST, "rpop"),
        "lmpop" => one(LIST, end(args.get(2 + arg_count(args, 1)), "lpop", "rpop")),
        "blmpop" => one(LIST, end(args.get(3 + arg_count(args, 2)), "lpop", "rpop")),
        "rpoplpush" | "brpoplpush" | "lmove" | "blmove" => {
            let (pop, push) = if name.ends_with("lmove") {
                let pop = end(args.get(3), "lpop", "rpop");
                (pop, end(args.get(4), "lpush", "rpush"))
            } else {
                ("rpop", "lpush")
            };
            if args.get(1) == args.get(2) {
                vec![(LIST, pop), (LIST, push)]
            } else if source {
                vec![(LIST, pop)]
            } else {
                vec![(LIST, push)]
            }
        }
        "linsert" => one(LIST, "linsert"),
        "lset" => one(LIST, "lset"),
        "lrem" => one(LIST, "lrem"),
        "ltrim" => one(LIST, "ltrim"),
        "sadd" => one(SET, "sadd"),
        "srem" => one(SET, "srem"),
        "spop" => one(SET, "spop"),
        "smove" if source => one(SET, "srem"),
        "smove" => one(SET, "sadd"),
        "sinterstore" => one(SET, "sinterstore"),
        "sunionstore" => one(SET, "sunionstore"),
        "sdiffstore" => one(SET, "sdiffstore"),
        "hset" | "hmset" | "hsetnx" => one(HASH, "hset"),
        "hincrby" => one(HASH, "hincrby"),
        "hincrbyfloat" => one(HASH, "hincrbyfloat"),
        "hdel" => one(HASH, "hdel"),
        "zadd" if args.iter().skip(2).any(|a| eq(a, "incr")) => one(ZSET, "zincr"),
        "zadd" => one(ZSET, "zadd"),
        "zincrby" => one(ZSET, "zincr"),
        "zrem" => one(ZSET, "zrem"),
        "zremrangebyscore" => one(ZSET, "zremrangebyscore"),
        "zremrangebyrank" => one(ZSET, "zremrangebyrank"),
        "zremrangebylex" => one(ZSET, "zremrangebylex"),
        "zpopmin" | "bzpopmin" => one(ZSET, "zpopmin"),
        "zpopmax" | "bzpopmax" => one(ZSET, "zpopmax"),
        "zmpop" => one(ZSET, end_z(args.get(2 + arg_count(args, 1)))),
        "bzmpop" => one(ZSET, end_z(args.get(3 + arg_count(args, 2)))),
        "zunionstore" => one(ZSET, "zunionstore"),
        "zinterstore" => one(ZSET, "zinterstore"),
        "zdiffstore" => one(ZSET, "zdiffstore"),
        "zrangestore" => one(ZSET, "zrangestore"),
        "xadd" => one(STREAM, "xadd"),
        "xdel" => one(STREAM, "xdel"),
        "xtrim" => one(STREAM, "xtrim"),
        "xsetid" => one(STREAM, "xsetid"),
        "xgroup" => match args.get(1).map(|s| lower(s)).as_deref() {
            Some("create") => one(STREAM, "xgroup-create"),
            Some("setid") => one(STREAM, "xgroup-setid"),
            Some("destroy") => one(STREAM, "xgroup-destroy"),
            Some("createconsumer") => one(STREAM, "xgroup-createconsumer"),
            Some("delconsumer") => one(STREAM, "xgroup-delconsumer"),
            _ => Vec::new(),
        },
        // FLUSHALL and FLUSHDB report nothing per key, as in Redis.
        _ => Vec::new(),
    }
}

/// ZMPOP's MIN or MAX.
fn end_z(arg: Option<&Bytes>) -> &'static str {
    if arg.is_some_and(|a| eq(a, "max")) {
        "zpopmax"
    } else {
        "zpopmin"
    }
}

/// The key count at `args[at]` (LMPOP's numkeys), 0 when it is not a number.
fn arg_count(args: &[Bytes], at: usize) -> usize {
    args.get(at)
        .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_and_render_as_redis_does() {
        for (set, get) in [
            ("gKE", "gKE"),
            ("$lshzxeKE", "$lshzxeKE"),
            ("KA", "AK"),
            ("EA", "AE"),
            ("", ""),
            ("AKEnm", "AnKEm"),
        ] {
            assert_eq!(render(parse(set.as_bytes()).unwrap()), get, "{set}");
        }
        assert_eq!(parse(b"KEq"), None);
        assert!(!publishes(parse(b"A").unwrap(), ALL), "no K or E: nothing");
    }

    fn effect(key: &str, created: bool, deleted: bool) -> KeyEffect {
        KeyEffect {
            write: 0,
            key: Bytes::copy_from_slice(key.as_bytes()),
            created,
            deleted,
            consumer_created: false,
        }
    }

    fn names(args: &[&str], effects: &[KeyEffect]) -> Vec<String> {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let mut out = Vec::new();
        events(&args, effects, &mut out);
        out.iter()
            .map(|(_, e, k)| format!("{e} {}", String::from_utf8_lossy(k)))
            .collect()
    }

    #[test]
    fn every_data_command_that_writes_names_its_event() {
        for c in cmd::COMMANDS.iter() {
            let writes = c.flags.contains(Flags::WRITE) && matches!(c.run, Run::Data(_));
            if !writes || ["flushall", "flushdb", "keel.idem"].contains(&c.name) {
                continue;
            }
            // Redis reports these only when they create a consumer (`events` names that from
            // the write's effect), and XACK never.
            if ["xreadgroup", "xack", "xclaim", "xautoclaim"].contains(&c.name) {
                continue;
            }
            if c.name == "xgroup" {
                let args = [&b"xgroup"[..], b"create"].map(Bytes::from_static);
                assert!(!named(c.name, &args, true).is_empty());
                continue;
            }
            let args = [Bytes::from_static(c.name.as_bytes())];
            assert!(!named(c.name, &args, true).is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn events_are_named_as_redis_names_them() {
        assert_eq!(
            names(&["SET", "k", "v", "EX", "10"], &[effect("k", true, false)]),
            ["new k", "set k", "expire k"]
        );
        assert_eq!(
            names(&["rpop", "l"], &[effect("l", false, true)]),
            ["rpop l", "del l"]
        );
        assert_eq!(
            names(&["expire", "k", "-1"], &[effect("k", false, true)]),
            ["del k"]
        );
        assert_eq!(
            names(
                &["rename", "a", "b"],
                &[effect("a", false, true), effect("b", true, false)]
            ),
            ["rename_from a", "new b", "rename_to b"]
        );
        assert_eq!(
            names(
                &["lmove", "a", "b", "LEFT", "RIGHT"],
                &[effect("a", false, false), effect("b", false, false)]
            ),
            ["lpop a", "rpush b"]
        );
        assert_eq!(
            names(&["rpoplpush", "a", "a"], &[effect("a", false, false)]),
            ["rpop a", "lpush a"]
        );
        assert_eq!(
            names(
                &["lmpop", "2", "a", "b", "RIGHT"],
                &[effect("b", false, false)]
            ),
            ["rpop b"]
        );
        assert_eq!(
            names(&["sinterstore", "d", "a"], &[effect("d", false, true)]),
            ["del d"]
        );
        assert_eq!(
            names(
                &["zadd", "z", "INCR", "1", "m"],
                &[effect("z", false, false)]
            ),
            ["zincr z"]
        );
    }
}
