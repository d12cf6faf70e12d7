//! COMMAND: what keel tells clients about the commands it serves, read from the registry.
//!
//! Redis 7.2 describes each command with its flags (`write denyoom fast`), its ACL categories
//! and its key specs: where the keys are in the arguments and what the command does to each
//! (`RW access delete`). The registry ([`super::Command`], and [`Doc`] for a subcommand) holds
//! those facts as Redis's command table gives them; this module turns them into COMMAND INFO,
//! LIST, COUNT, GETKEYS and GETKEYSANDFLAGS replies.
//!
//! Categories are derived as Redis derives them: the ones a command names (`@string`), plus
//! `@write` for a `write` command, `@read` for a `readonly` one, `@admin @dangerous` for an
//! `admin` one, `@fast` for a `fast` one (else `@slow`) and `@blocking` for a `blocking` one.
//! They describe the command to clients; who may run it is decided by [`super::Flags`] alone.

use bytes::Bytes;

use super::{find, lookup, wrong_args, Command, KeySpec, COMMANDS, NO_KEYS, SYNTAX};
use crate::docs::{self, Doc};
use crate::resp::{parse_i64, Reply};

/// What a command does to one key, as Redis's key spec flags say it: one of RO, RW, OW
/// (overwrite) or RM (remove), and what it does to the value: access (returns or uses it),
/// update, insert, delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KeyFlags(u16);

/// The key spec flags in the order Redis replies with them.
const KEY_FLAG_NAMES: [&str; 11] = [
    "RO",
    "RW",
    "OW",
    "RM",
    "access",
    "update",
    "insert",
    "delete",
    "not_key",
    "incomplete",
    "variable_flags",
];

impl KeyFlags {
    pub const INCOMPLETE: KeyFlags = KeyFlags(1 << 9);
    pub const VARIABLE: KeyFlags = KeyFlags(1 << 10);

    /// Parses flags written as Redis replies with them (`RW access delete`); `None` for a word
    /// that is not one. The registry's strings are checked by the tests.
    pub fn parse(s: &str) -> Option<KeyFlags> {
        s.split_whitespace().try_fold(KeyFlags(0), |f, w| {
            let i = KEY_FLAG_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(w))?;
            Some(KeyFlags(f.0 | 1 << i))
        })
    }

    pub fn contains(self, other: KeyFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        (0..KEY_FLAG_NAMES.len())
            .filter(move |i| self.0 & 1 << i != 0)
            .map(|i| KEY_FLAG_NAMES[i])
    }

    fn reply(self) -> Reply {
        Reply::Set(self.names().map(|n| Reply::Simple(n.into())).collect())
    }
}

/// Where a key spec starts looking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// At this argument (the command's name is argument 0).
    Index(usize),
    /// Only the command's own key finder knows ([`GetKeys`]).
    Unknown,
}

/// How a key spec finds its keys from where it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Find {
    /// Keys up to `last` (relative to the start; negative: from the end of the arguments),
    /// every `step`-th argument.
    Range { last: i64, step: usize },
    /// The start holds the number of keys; they follow it, every `step`-th argument.
    Keynum { step: usize },
    /// Only the command's own key finder knows.
    Unknown,
}

/// One of a command's key specs, as Redis 7.2's command table gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    /// As Redis replies with them: `RO access`, `OW update`, …
    pub flags: &'static str,
    pub begin: Begin,
    pub find: Find,
}

impl Keys {
    /// The one key at argument `index`.
    pub const fn at(index: usize, flags: &'static str) -> Keys {
        Keys::range(index, 0, 1, flags)
    }

    /// The keys from argument `index` to `last` (relative; negative: from the end), every
    /// `step`-th.
    pub const fn range(index: usize, last: i64, step: usize, flags: &'static str) -> Keys {
        Keys {
            flags,
            begin: Begin::Index(index),
            find: Find::Range { last, step },
        }
    }

    /// A count of keys at argument `index`, then the keys (ZUNION's `numkeys key [key ...]`).
    pub const fn keynum(index: usize, flags: &'static str) -> Keys {
        Keys {
            flags,
            begin: Begin::Index(index),
            find: Find::Keynum { step: 1 },
        }
    }

    /// Keys only the command's key finder can locate (SORT's STORE).
    pub const fn unknown(flags: &'static str) -> Keys {
        Keys {
            flags,
            begin: Begin::Unknown,
            find: Find::Unknown,
        }
    }

    fn key_flags(&self) -> KeyFlags {
        KeyFlags::parse(self.flags).unwrap_or_default()
    }

    /// The keys this spec finds in `args`, or `None` when it cannot say (an unknown spec, a
    /// bad count, positions past the arguments): then the command's own finder is asked.
    fn find(&self, args: &[Bytes], out: &mut Vec<(usize, KeyFlags)>) -> Option<()> {
        let Begin::Index(first) = self.begin else {
            return None;
        };
        let argc = args.len() as i64;
        let first = first as i64;
        let (first, last, step) = match self.find {
            Find::Range { last, step } if last >= 0 => (first, first + last, step),
            Find::Range { last, step } => (first, argc + last, step),
            Find::Keynum { step } => {
                let n = parse_i64(args.get(first as usize)?).filter(|&n| n >= 0)?;
                let first = first + 1;
                (first, first.checked_add(n)?.checked_sub(1)?, step)
            }
            Find::Unknown => return None,
        };
        if first >= argc || last >= argc || last < first {
            return None;
        }
        let flags = self.key_flags();
        out.extend(
            (first..=last)
                .step_by(step.max(1))
                .map(|i| (i as usize, flags)),
        );
        (!flags.contains(KeyFlags::INCOMPLETE)).then_some(())
    }
}

/// Key `i` with `flags` (written as Redis replies with them), for a [`GetKeys`].
pub fn key_at(i: usize, flags: &str) -> (usize, KeyFlags) {
    debug_assert!(KeyFlags::parse(flags).is_some(), "{flags}");
    (i, KeyFlags::parse(flags).unwrap_or_default())
}

/// A command's own key finder, for keys its specs cannot locate or flags that depend on the
/// arguments (SET … GET). Returns (argument index, flags) for each key; none: the arguments
/// make no sense.
pub type GetKeys = fn(&[Bytes]) -> Vec<(usize, KeyFlags)>;

/// The ACL categories, in the order Redis lists them.
pub const CATEGORIES: [&str; 21] = [
    "@keyspace",
    "@read",
    "@write",
    "@set",
    "@sortedset",
    "@list",
    "@hash",
    "@string",
    "@bitmap",
    "@hyperloglog",
    "@geo",
    "@stream",
    "@pubsub",
    "@admin",
    "@fast",
    "@slow",
    "@blocking",
    "@dangerous",
    "@connection",
    "@transaction",
    "@scripting",
];

/// The command flags COMMAND INFO can show, in the order Redis shows them.
const COMMAND_FLAGS: [&str; 20] = [
    "write",
    "readonly",
    "denyoom",
    "admin",
    "pubsub",
    "noscript",
    "blocking",
    "loading",
    "stale",
    "skip_monitor",
    "skip_slowlog",
    "asking",
    "fast",
    "no_auth",
    "may_replicate",
    "no_mandatory_keys",
    "no_async_loading",
    "no_multi",
    "movablekeys",
    "allow_busy",
];

/// A category's index in [`CATEGORIES`], named with or without its `@`, in any case.
fn category(name: &str) -> Option<usize> {
    let name = name.strip_prefix('@').unwrap_or(name);
    CATEGORIES
        .iter()
        .position(|c| c[1..].eq_ignore_ascii_case(name))
}

/// What COMMAND says about a command or a subcommand.
pub struct Info {
    /// `get`, or `config|get` for a subcommand.
    pub name: String,
    pub arity: i64,
    /// Redis's command flags (`write denyoom fast`), without `movablekeys`.
    flags: &'static str,
    /// The categories the table names; the rest follow from `flags`.
    acl: &'static str,
    pub specs: Vec<Keys>,
    get_keys: Option<GetKeys>,
    pub subcommands: Vec<Info>,
}

impl Info {
    pub fn of(c: &Command) -> Info {
        let specs = if !c.key_specs.is_empty() {
            c.key_specs.to_vec()
        } else if c.keys != NO_KEYS {
            let (first, last, step) = c.keys;
            let last = if last < 0 { last } else { last - first };
            vec![Keys::range(
                first as usize,
                last,
                step as usize,
                c.key_flags,
            )]
        } else {
            Vec::new()
        };
        Info {
            name: c.name.to_string(),
            arity: c.arity,
            flags: c.redis_flags,
            acl: c.acl,
            specs,
            get_keys: c.get_keys,
            subcommands: c.doc.subcommands.iter().map(|d| Info::sub(c, d)).collect(),
        }
    }

    /// A subcommand: its arity follows from its syntax line; without facts of its own it has
    /// its container's flags and categories.
    fn sub(parent: &Command, d: &Doc) -> Info {
        let (flags, acl) = d.redis.unwrap_or((parent.redis_flags, parent.acl));
        Info {
            name: format!("{}|{}", parent.name, d.name),
            arity: docs::arity(d.syntax),
            flags,
            acl,
            specs: d.key_specs.to_vec(),
            get_keys: None,
            subcommands: Vec::new(),
        }
    }

    /// Whether Redis gives it this flag (`fast`, `write`, …).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split_whitespace().any(|f| f == flag)
    }

    /// Its ACL categories, `@`-prefixed, in Redis's order.
    pub fn categories(&self) -> Vec<&'static str> {
        let mut set = 0u32;
        let mut add = |name: &str| {
            if let Some(i) = category(name) {
                set |= 1 << i;
            }
        };
        self.acl.split_whitespace().for_each(&mut add);
        for (flag, implied) in [
            ("write", "write"),
            ("readonly", "read"),
            ("admin", "admin"),
            ("admin", "dangerous"),
            ("pubsub", "pubsub"),
            ("fast", "fast"),
            ("blocking", "blocking"),
        ] {
            if self.has_flag(flag) {
                add(implied);
            }
        }
        if !self.has_flag("fast") {
            add("slow");
        }
        (0..CATEGORIES.len())
            .filter(|i| set & 1 << i != 0)
            .map(|i| CATEGORIES[i])
            .collect()
    }

    /// `(first, last, step)` as COMMAND INFO gives them: the keys one plain range covers, as
    /// Redis works it out from the key specs.
    pub fn legacy_range(&self) -> KeySpec {
        legacy(&self.specs).0
    }

    /// Whether the keys' positions depend on the arguments: a spec that is not one plain
    /// range, or keys only the command's finder knows.
    pub fn movable(&self) -> bool {
        legacy(&self.specs).1 || (self.specs.is_empty() && self.get_keys.is_some())
    }

    /// Its flags as COMMAND INFO shows them.
    pub fn flags(&self) -> Vec<&'static str> {
        let movable = self.movable();
        COMMAND_FLAGS
            .into_iter()
            .filter(|f| self.has_flag(f) || (*f == "movablekeys" && movable))
            .collect()
    }

    pub fn has_keys(&self) -> bool {
        !self.specs.is_empty() || self.get_keys.is_some()
    }

    /// The keys in `args` (`args[0]` the command; for a subcommand `args[1]` is its name),
    /// found from the key specs as Redis finds them, or by the command's own finder when the
    /// specs cannot say or the flags vary. Empty: the arguments make no sense.
    pub fn keys(&self, args: &[Bytes]) -> Vec<(usize, KeyFlags)> {
        let varies = (self.specs.iter()).any(|s| s.key_flags().contains(KeyFlags::VARIABLE));
        if !self.specs.is_empty() && !varies {
            let mut out = Vec::new();
            if self.specs.iter().all(|s| s.find(args, &mut out).is_some()) {
                return out;
            }
        }
        self.get_keys.map_or_else(Vec::new, |f| f(args))
    }

    fn reply(&self) -> Reply {
        let (first, last, step) = self.legacy_range();
        let status = |s: &str| Reply::simple(s.to_string());
        Reply::Array(vec![
            Reply::bulk(self.name.clone()),
            Reply::Int(self.arity),
            Reply::Set(self.flags().into_iter().map(status).collect()),
            Reply::Int(first),
            Reply::Int(last),
            Reply::Int(step),
            Reply::Set(self.categories().into_iter().map(status).collect()),
            Reply::Set(Vec::new()),
            Reply::Array(self.specs.iter().map(spec_reply).collect()),
            Reply::Array(self.subcommands.iter().map(Info::reply).collect()),
        ])
    }
}

/// The legacy `(first, last, step)` range Redis derives from key specs, and whether the specs
/// make the keys movable: a spec that is not an index and a range, a step other than 1 among
/// several specs, ranges that do not follow one another, or an incomplete spec.
fn legacy(specs: &[Keys]) -> (KeySpec, bool) {
    let range = |k: &Keys| match (k.begin, k.find) {
        (Begin::Index(i), Find::Range { last, step }) => Some((i as i64, last, step as i64)),
        _ => None,
    };
    let incomplete = |k: &Keys| k.key_flags().contains(KeyFlags::INCOMPLETE);
    if let [only] = specs {
        if let Some((first, last, step)) = range(only) {
            let last = if last < 0 { last } else { first + last };
            return ((first, last, step), incomplete(only));
        }
    }
    let mut movable = false;
    let (mut first, mut last) = (i64::MAX, 0i64);
    let mut prev_last = 0;
    for k in specs {
        let Some((pos, rel_last, step)) = range(k) else {
            movable = true;
            continue;
        };
        if step != 1 || (prev_last != 0 && prev_last != pos - 1) {
            movable = true;
            continue;
        }
        movable |= incomplete(k);
        first = first.min(pos);
        let abs_last = if rel_last >= 0 {
            pos + rel_last
        } else {
            rel_last
        };
        // As unsigned, so a negative (from the end) last wins over any position.
        last = (last as u64).max(abs_last as u64) as i64;
        prev_last = last;
    }
    if first == i64::MAX {
        return (NO_KEYS, movable || !specs.is_empty());
    }
    ((first, last, 1), movable)
}

fn spec_reply(k: &Keys) -> Reply {
    let b = |s: &str| Reply::bulk(Bytes::copy_from_slice(s.as_bytes()));
    let map =
        |pairs: Vec<(&str, Reply)>| Reply::Map(pairs.into_iter().map(|(k, v)| (b(k), v)).collect());
    let begin = match k.begin {
        Begin::Index(i) => map(vec![
            ("type", b("index")),
            ("spec", map(vec![("index", Reply::Int(i as i64))])),
        ]),
        Begin::Unknown => map(vec![("type", b("unknown")), ("spec", map(vec![]))]),
    };
    let find = match k.find {
        Find::Range { last, step } => map(vec![
            ("type", b("range")),
            (
                "spec",
                map(vec![
                    ("lastkey", Reply::Int(last)),
                    ("keystep", Reply::Int(step as i64)),
                    ("limit", Reply::Int(0)),
                ]),
            ),
        ]),
        Find::Keynum { step } => map(vec![
            ("type", b("keynum")),
            (
                "spec",
                map(vec![
                    ("keynumidx", Reply::Int(0)),
                    ("firstkey", Reply::Int(1)),
                    ("keystep", Reply::Int(step as i64)),
                ]),
            ),
        ]),
        Find::Unknown => map(vec![("type", b("unknown")), ("spec", map(vec![]))]),
    };
    map(vec![
        ("flags", k.key_flags().reply()),
        ("begin_search", begin),
        ("find_keys", find),
    ])
}

/// The command or subcommand `args` invoke (`args[0]` the command): for a command with
/// subcommands and a second argument, that subcommand, if it has it. `None`: unknown.
pub fn resolve(args: &[Bytes]) -> Option<Info> {
    let c = COMMANDS[find(args.first()?)?];
    let mut info = Info::of(c);
    match args.get(1) {
        Some(sub) if !info.subcommands.is_empty() => {
            let i = (c.doc.subcommands.iter())
                .position(|d| d.name.as_bytes().eq_ignore_ascii_case(sub))?;
            Some(info.subcommands.swap_remove(i))
        }
        _ => Some(info),
    }
}

/// The keys of the command `args` invoke, with what it does to each; empty for an unknown
/// command or one without keys.
pub fn keys(args: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    resolve(args).map_or_else(Vec::new, |i| i.keys(args))
}

/// A command or subcommand by the name COMMAND INFO takes: `get`, `config|get`.
fn by_name(name: &[u8]) -> Option<Info> {
    let mut parts = name.split(|&b| b == b'|');
    let c = COMMANDS[find(parts.next()?)?];
    match (parts.next(), parts.next()) {
        (None, _) => Some(Info::of(c)),
        (Some(sub), None) => {
            let i = (c.doc.subcommands.iter())
                .position(|d| d.name.as_bytes().eq_ignore_ascii_case(sub))?;
            Some(Info::sub(c, &c.doc.subcommands[i]))
        }
        _ => None,
    }
}

/// Every command and every subcommand, as `COMMAND LIST` names them.
fn everything() -> impl Iterator<Item = Info> {
    COMMANDS.iter().flat_map(|c| {
        let mut info = Info::of(c);
        let subs = std::mem::take(&mut info.subcommands);
        std::iter::once(info).chain(subs)
    })
}

/// The commands and subcommands in the category `CATEGORIES[i]`, in the registry's order, as
/// COMMAND LIST FILTERBY ACLCAT and ACL CAT name them (`config|get`). A container is listed when
/// it is in the category itself (CONFIG is @slow), and each of its subcommands that is.
pub fn in_category(i: usize) -> Vec<String> {
    everything()
        .filter(|info| info.categories().contains(&CATEGORIES[i]))
        .map(|info| info.name)
        .collect()
}

/// COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern].
fn list(args: &[Bytes]) -> Reply {
    let names = |keep: &dyn Fn(&Info) -> bool| {
        Reply::Array(
            everything()
                .filter(|i| keep(i))
                .map(|i| Reply::bulk(i.name))
                .collect(),
        )
    };
    match args {
        [] => names(&|_| true),
        [by, kind, arg] if eq(by, "filterby") => {
            if eq(kind, "module") {
                // keel loads no modules.
                Reply::Array(Vec::new())
            } else if eq(kind, "aclcat") {
                let found = std::str::from_utf8(arg).ok().and_then(category);
                Reply::Array(
                    (found.map(in_category).unwrap_or_default().into_iter())
                        .map(Reply::bulk)
                        .collect(),
                )
            } else if eq(kind, "pattern") {
                let pattern = arg.to_ascii_lowercase();
                names(&|i| crate::glob::matches(&pattern, i.name.as_bytes()))
            } else {
                Reply::err(SYNTAX)
            }
        }
        _ => Reply::err(SYNTAX),
    }
}

/// COMMAND GETKEYS and GETKEYSANDFLAGS: `args` is the command to look into.
fn getkeys(args: &[Bytes], with_flags: bool) -> Reply {
    let Some(info) = resolve(args) else {
        return Reply::err("ERR Invalid command specified");
    };
    if !info.has_keys() {
        return Reply::err("ERR The command has no key arguments");
    }
    let arity = info.arity;
    if (arity > 0 && arity != args.len() as i64) || (args.len() as i64) < -arity {
        return Reply::err("ERR Invalid number of arguments specified for command");
    }
    let keys = info.keys(args);
    // No keys is an answer for a command that may have none (EVAL's numkeys 0), as in Redis.
    if keys.is_empty() && !info.has_flag("no_mandatory_keys") {
        return Reply::err("ERR Invalid arguments specified for command");
    }
    Reply::Array(
        keys.into_iter()
            .map(|(i, flags)| match with_flags {
                false => Reply::Bulk(args[i].clone()),
                true => Reply::Array(vec![Reply::Bulk(args[i].clone()), flags.reply()]),
            })
            .collect(),
    )
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// COMMAND [COUNT | DOCS | INFO | LIST | GETKEYS | GETKEYSANDFLAGS | HELP …].
pub fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(|c| Info::of(c).reply()).collect());
    };
    let Some(spec) = lookup("command") else {
        return Reply::err("ERR the command table has no COMMAND");
    };
    let Some(d) =
        (spec.doc.subcommands.iter()).find(|d| d.name.as_bytes().eq_ignore_ascii_case(sub))
    else {
        return Reply::err(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        ));
    };
    let arity = docs::arity(d.syntax);
    let argc = args.len() as i64;
    if (arity > 0 && arity != argc) || argc < -arity {
        return wrong_args(&format!("command|{}", d.name));
    }
    let rest = &args[2..];
    match d.name {
        "count" => Reply::Int(COMMANDS.len() as i64),
        "docs" => docs::reply(rest),
        "info" if rest.is_empty() => command(&args[..1]),
        "info" => Reply::Array(
            rest.iter()
                .map(|n| by_name(n).map_or(Reply::Nil, |i| i.reply()))
                .collect(),
        ),
        "list" => list(rest),
        "getkeys" => getkeys(rest, false),
        "getkeysandflags" => getkeys(rest, true),
        "help" => Reply::Array(
            (docs::help_lines("command").unwrap_or_default().into_iter())
                .map(Reply::simple)
                .collect(),
        ),
        _ => Reply::err(format!("ERR COMMAND {} is not served", d.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{arity_ok, Flags};
    use super::*;

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn keys_of(v: &[&str]) -> Vec<(String, String)> {
        let a = args(v);
        keys(&a)
            .into_iter()
            .map(|(i, f)| {
                (
                    String::from_utf8_lossy(&a[i]).into_owned(),
                    f.names().collect::<Vec<_>>().join(" "),
                )
            })
            .collect()
    }

    fn strs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Every fact in the table is well formed and agrees with the rest of the entry.
    #[test]
    fn the_table_is_consistent() {
        let known_flag = |f: &str| COMMAND_FLAGS.contains(&f) && f != "movablekeys";
        let check = |i: &Info| {
            for f in i.flags.split_whitespace() {
                assert!(known_flag(f), "{}: unknown flag {f}", i.name);
            }
            for c in i.acl.split_whitespace() {
                assert!(
                    c.starts_with('@') && category(c).is_some(),
                    "{}: unknown category {c}",
                    i.name
                );
            }
            for k in &i.specs {
                assert!(
                    KeyFlags::parse(k.flags).is_some(),
                    "{}: {}",
                    i.name,
                    k.flags
                );
                let f = k.key_flags();
                let kinds = ["RO", "RW", "OW", "RM"]
                    .iter()
                    .filter(|n| f.names().any(|m| m == **n))
                    .count();
                assert_eq!(kinds, 1, "{}: {}", i.name, k.flags);
            }
            let cats = i.categories();
            assert_eq!(
                cats.contains(&"@fast"),
                !cats.contains(&"@slow"),
                "{}",
                i.name
            );
            assert!(
                !(i.has_flag("write") && i.has_flag("readonly")),
                "{}",
                i.name
            );
        };
        for c in COMMANDS.iter() {
            let i = Info::of(c);
            check(&i);
            i.subcommands.iter().for_each(check);
            let cats = i.categories();
            let f = c.flags;
            // What COMMAND INFO says agrees with what keel checks before running it.
            assert_eq!(
                cats.contains(&"@write"),
                f.contains(Flags::WRITE),
                "{}: @write and the WRITE flag",
                c.name
            );
            if cats.contains(&"@read") {
                assert!(f.contains(Flags::READ), "{}", c.name);
            }
            let reads_only =
                f.contains(Flags::READ) && !f.contains(Flags::WRITE) && !f.contains(Flags::ADMIN);
            // WATCH needs READ in keel (what it reveals is whether a key changed); Redis
            // files it under @transaction. OBJECT, MEMORY and XINFO: their subcommands read.
            if reads_only && !["watch", "object", "memory", "xinfo"].contains(&c.name) {
                assert!(cats.contains(&"@read"), "{}: reads, not @read", c.name);
            }
            // What keel keeps to admins Redis calls @admin or @dangerous (for a container
            // such as CONFIG: its subcommands but HELP; for one whose need varies with the
            // subcommand, such as CLIENT: some of them). One exception: keel keeps changing
            // FUNCTION libraries to admins (a library changes what every FCALL does), where
            // Redis files those subcommands under @write.
            let admin = |cats: &[&str]| cats.contains(&"@admin") || cats.contains(&"@dangerous");
            if f.contains(Flags::ADMIN) && c.name != "function" {
                let mut subs = (i.subcommands.iter()).filter(|s| !s.name.ends_with("|help"));
                let ok = if f.contains(Flags::VARIES) {
                    subs.any(|s| admin(&s.categories()))
                } else {
                    !i.subcommands.is_empty() && subs.all(|s| admin(&s.categories()))
                };
                assert!(admin(&cats) || ok, "{}", c.name);
            }
            // Every subcommand states its own facts: a new one cannot pass for its container.
            for d in c.doc.subcommands {
                assert!(d.redis.is_some(), "{}|{}: no .redis(…)", c.name, d.name);
            }
            assert_eq!(c.block.is_some(), i.has_flag("blocking"), "{}", c.name);
            if c.before_auth {
                assert!(i.has_flag("no_auth"), "{}", c.name);
            }
            // The legacy range COMMAND INFO shows is the registry's.
            assert_eq!(i.legacy_range(), c.keys, "{}", c.name);
            if c.get_keys.is_some() {
                assert!(i.has_keys(), "{}", c.name);
            }
            assert!(arity_ok(c, c.arity.unsigned_abs() as usize), "{}", c.name);
        }
    }

    #[test]
    fn getkeys_follows_the_key_specs() {
        assert_eq!(keys_of(&["get", "key"]), strs(&[("key", "RO access")]));
        assert_eq!(
            keys_of(&["lcs", "key1", "key2"]),
            strs(&[("key1", "RO access"), ("key2", "RO access")])
        );
        assert_eq!(
            keys_of(&["mset", "k1", "v1", "k2", "v2"]),
            strs(&[("k1", "OW update"), ("k2", "OW update")])
        );
        assert_eq!(
            keys_of(&["LMOVE", "k1", "k2", "left", "right"]),
            strs(&[("k1", "RW access delete"), ("k2", "RW insert")])
        );
        assert_eq!(
            keys_of(&["blpop", "a", "b", "0"]),
            strs(&[("a", "RW access delete"), ("b", "RW access delete")])
        );
        assert_eq!(keys_of(&["memory", "usage", "k"]), strs(&[("k", "RO")]));
        assert_eq!(keys_of(&["object", "ENCODING", "k"]), strs(&[("k", "RO")]));
        assert_eq!(
            keys_of(&["bitop", "and", "d", "a", "b"]),
            strs(&[("d", "OW update"), ("a", "RO access"), ("b", "RO access")])
        );
    }

    #[test]
    fn getkeys_for_movable_keys() {
        assert_eq!(
            keys_of(&["zunionstore", "t", "2", "a", "b", "weights", "1", "2"]),
            strs(&[("t", "OW update"), ("a", "RO access"), ("b", "RO access")])
        );
        assert_eq!(
            keys_of(&["zinter", "2", "a", "b", "withscores"]),
            strs(&[("a", "RO access"), ("b", "RO access")])
        );
        assert_eq!(
            keys_of(&["sintercard", "1", "a", "limit", "3"]),
            strs(&[("a", "RO access")])
        );
        assert_eq!(
            keys_of(&["blmpop", "0", "2", "a", "b", "left"]),
            strs(&[("a", "RW access delete"), ("b", "RW access delete")])
        );
        assert_eq!(
            keys_of(&["zmpop", "1", "z", "min", "count", "2"]),
            strs(&[("z", "RW access delete")])
        );
        // A count that is not one, is zero or runs past the arguments: no keys.
        for bad in [
            &["zunionstore", "t", "x", "a"][..],
            &["zunionstore", "t", "0", "a"],
            &["zunionstore", "t", "3", "a", "b"],
            &["lmpop", "-1", "a", "left"],
        ] {
            assert_eq!(keys_of(bad), vec![], "{bad:?}");
        }
        assert_eq!(
            keys_of(&["sort", "k1", "store", "k2"]),
            strs(&[("k1", "RO access"), ("k2", "OW update")])
        );
        // The last STORE wins; BY, GET and LIMIT take their arguments.
        assert_eq!(
            keys_of(&[
                "sort", "abc", "store", "invalid", "by", "store", "limit", "0", "1", "store", "def"
            ]),
            strs(&[("abc", "RO access"), ("def", "OW update")])
        );
        assert_eq!(keys_of(&["sort_ro", "abc"]), strs(&[("abc", "RO access")]));
    }

    #[test]
    fn getkeys_flags_that_depend_on_the_arguments() {
        assert_eq!(keys_of(&["set", "k", "v"]), strs(&[("k", "OW update")]));
        assert_eq!(
            keys_of(&["set", "k", "v", "nx", "get"]),
            strs(&[("k", "RW access update")])
        );
        assert_eq!(
            keys_of(&["bitfield", "k", "get", "u8", "0"]),
            strs(&[("k", "RO access")])
        );
        assert_eq!(
            keys_of(&["bitfield", "k", "get", "u8", "0", "incrby", "u8", "0", "1"]),
            strs(&[("k", "RW access update")])
        );
        // KEEL.IDEM's keys are the keys of the command it wraps.
        assert_eq!(
            keys_of(&["keel.idem", "id-1", "lmove", "a", "b", "left", "left"]),
            strs(&[("a", "RW access delete"), ("b", "RW insert")])
        );
    }

    #[test]
    fn getkeys_errors_are_redis_s() {
        let e = |v: &[&str]| match command(&args(v)) {
            Reply::Error(e) => e,
            other => panic!("{v:?}: {other:?}"),
        };
        assert_eq!(
            e(&["command", "getkeys", "nosuch", "x"]),
            "ERR Invalid command specified"
        );
        assert_eq!(
            e(&["command", "getkeys", "memory", "nosuch", "x"]),
            "ERR Invalid command specified"
        );
        assert_eq!(
            e(&["command", "getkeys", "ping", "x"]),
            "ERR The command has no key arguments"
        );
        assert_eq!(
            e(&["command", "getkeys", "config", "get", "x"]),
            "ERR The command has no key arguments"
        );
        assert_eq!(
            e(&["command", "getkeys", "get", "a", "b"]),
            "ERR Invalid number of arguments specified for command"
        );
        assert_eq!(
            e(&["command", "getkeys", "memory", "usage"]),
            "ERR Invalid number of arguments specified for command"
        );
        assert_eq!(
            e(&["command", "getkeys", "zunionstore", "t", "0", "a"]),
            "ERR Invalid arguments specified for command"
        );
        assert_eq!(
            e(&["command", "getkeys"]),
            "ERR wrong number of arguments for 'command|getkeys' command"
        );
        assert!(e(&["command", "nosuch"]).starts_with("ERR unknown subcommand 'nosuch'"));
    }

    #[test]
    fn more_than_256_keys() {
        let mut v = vec!["zunionstore".to_string(), "target".into(), "260".into()];
        v.extend((1..=260).map(|i| format!("key{i}")));
        let a: Vec<Bytes> = v.iter().map(|s| Bytes::from(s.clone())).collect();
        let got: Vec<Bytes> = keys(&a).into_iter().map(|(i, _)| a[i].clone()).collect();
        let mut want = vec![a[1].clone()];
        want.extend(a[3..].iter().cloned());
        assert_eq!(got, want);
    }

    fn flags_of(name: &str) -> Vec<&'static str> {
        by_name(name.as_bytes()).unwrap().flags()
    }

    #[test]
    fn movable_keys_as_redis_marks_them() {
        for name in [
            "set",
            "get",
            "mset",
            "bitfield",
            "lmove",
            "lpop",
            "blpop",
            "ping",
            "memory",
            "memory|usage",
            "rename",
            "bitop",
            "sinterstore",
        ] {
            assert!(!flags_of(name).contains(&"movablekeys"), "{name}");
        }
        for name in [
            "zunionstore",
            "zunion",
            "zdiffstore",
            "zintercard",
            "sintercard",
            "sort",
            "sort_ro",
            "lmpop",
            "blmpop",
            "zmpop",
            "bzmpop",
            "keel.idem",
        ] {
            assert!(flags_of(name).contains(&"movablekeys"), "{name}");
        }
    }

    #[test]
    fn categories_as_redis_gives_them() {
        let cats = |n: &str| by_name(n.as_bytes()).unwrap().categories();
        assert_eq!(cats("get"), ["@read", "@string", "@fast"]);
        assert_eq!(cats("set"), ["@write", "@string", "@slow"]);
        assert_eq!(cats("blpop"), ["@write", "@list", "@slow", "@blocking"]);
        assert_eq!(cats("keys"), ["@keyspace", "@read", "@slow", "@dangerous"]);
        assert_eq!(cats("config|get"), ["@admin", "@slow", "@dangerous"]);
        assert_eq!(cats("client|setname"), ["@slow", "@connection"]);
        assert_eq!(cats("command|info"), ["@slow", "@connection"]);
        assert_eq!(cats("multi"), ["@fast", "@transaction"]);
        assert_eq!(cats("lastsave"), ["@admin", "@fast", "@dangerous"]);
        assert_eq!(
            cats("flushall"),
            ["@keyspace", "@write", "@slow", "@dangerous"]
        );
    }

    fn names(r: Reply) -> Vec<String> {
        let Reply::Array(items) = r else {
            panic!("{r:?}")
        };
        items
            .into_iter()
            .map(|i| match i {
                Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn command_list_and_its_filters() {
        let all = names(command(&args(&["command", "list"])));
        assert!(all.contains(&"set".into()) && all.contains(&"client|setname".into()));
        assert!(all.contains(&"config|get".into()) && all.contains(&"memory|usage".into()));
        let by = |v: &[&str]| names(command(&args(&[&["command", "list"], v].concat())));
        assert_eq!(by(&["filterby", "pattern", "set"]), ["set"]);
        assert_eq!(by(&["FILTERBY", "PATTERN", "GET"]), ["get"]);
        let config = by(&["filterby", "pattern", "config*"]);
        assert!(config.contains(&"config".into()) && config.contains(&"config|get".into()));
        assert_eq!(
            by(&["filterby", "pattern", "config|*re*"]),
            ["config|resetstat", "config|rewrite"]
        );
        let helps = by(&["filterby", "pattern", "cl*help"]);
        assert!(helps.contains(&"client|help".into()), "{helps:?}");
        assert!(by(&["filterby", "pattern", "non_exists*"]).is_empty());
        assert!(by(&["filterby", "module", "any"]).is_empty());
        assert!(by(&["filterby", "aclcat", "non_existing_category"]).is_empty());
        let blocking = by(&["filterby", "aclcat", "blocking"]);
        assert!(blocking.contains(&"blpop".into()) && !blocking.contains(&"lpop".into()));
        let read = by(&["filterby", "aclcat", "@READ"]);
        assert!(read.contains(&"memory|usage".into()) && !read.contains(&"set".into()));
        for bad in [
            &["bad_arg"][..],
            &["filterby", "bad_arg"],
            &["filterby", "bad_arg", "bad_arg2"],
            &["filterby", "pattern", "x", "y"],
        ] {
            let r = command(&args(&[&["command", "list"], bad].concat()));
            assert_eq!(r, Reply::err(SYNTAX), "{bad:?}");
        }
    }

    #[test]
    fn command_info_has_subcommands_and_count_top_level_commands() {
        let Reply::Array(infos) = command(&args(&["command", "info", "config", "get|key", "x"]))
        else {
            panic!()
        };
        assert_eq!(infos[1], Reply::Nil);
        assert_eq!(infos[2], Reply::Nil);
        let Reply::Array(config) = &infos[0] else {
            panic!()
        };
        assert_eq!(config.len(), 10);
        let Reply::Array(subs) = &config[9] else {
            panic!()
        };
        assert!(subs.iter().any(|s| matches!(s, Reply::Array(f)
            if f[0] == Reply::bulk("config|get") && f[1] == Reply::Int(-3))));
        let Reply::Array(one) = command(&args(&["command", "info", "MEMORY|USAGE"])) else {
            panic!()
        };
        let Reply::Array(usage) = &one[0] else {
            panic!("{one:?}")
        };
        assert_eq!(usage[0], Reply::bulk("memory|usage"));
        assert_eq!(usage[1], Reply::Int(-3));
        assert_eq!(&usage[3..6], &[Reply::Int(2), Reply::Int(2), Reply::Int(1)]);
        assert_eq!(
            command(&args(&["command", "count"])),
            Reply::Int(COMMANDS.len() as i64)
        );
        let Reply::Array(all) = command(&args(&["command"])) else {
            panic!()
        };
        assert_eq!(all.len(), COMMANDS.len());
        assert_eq!(
            command(&args(&["command", "info"])),
            command(&args(&["command"]))
        );
    }
}
