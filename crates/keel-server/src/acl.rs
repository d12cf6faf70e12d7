//! ACL: keel's users shown in Redis 7.2's ACL terms, read-only, and the log of refusals.
//!
//! keel's users come from its config file ([`crate::auth`]): `requirepass` and `[[users]]`, each
//! with a SHA-256 password hash and some of the permissions read, write and admin. ACL WHOAMI,
//! USERS, LIST, GETUSER, CAT and DRYRUN describe them; SETUSER, DELUSER, SAVE and LOAD are
//! refused, since the file is the one place users are defined.
//!
//! A user's permissions are written as Redis's rules, so that tools that read ACL LIST make
//! sense of them: read is `+@read`, write `+@write`, admin `+@admin +@dangerous`, and every user
//! gets `+@connection +@transaction +@pubsub` (keel lets anyone logged in run the connection's
//! own commands, MULTI/EXEC and Pub/Sub, whose messages are never stored data). Redis's
//! categories and keel's permissions do not cut the commands the same way (KEYS is @dangerous
//! and only reads; SORT without STORE only reads yet Redis calls it @write), so after the
//! categories come `+command` and `-command` rules for each command (or subcommand) where keel
//! decides otherwise. They are computed from the same check the pipeline runs ([`cmd::flags`]
//! and the user's permissions), never written by hand, and a test evaluates the rules as Redis
//! would and compares them with keel's decision for every command. Where the arguments decide
//! (`SET k v GET` reads, `SET k v` does not), the key pattern says it as Redis does: read and
//! write `~*`, read only `%R~*`, write only `%W~*`.
//!
//! The ACL log keeps the latest commands refused and logins failed, as Redis 7.2's ACL LOG
//! shows them, at most [`LOG_LEN_MAX`]. It never holds a password or an argument: a refused
//! command is named (`config|get`), and a failed login names its user only if that user is
//! configured (`(unknown)` otherwise, since a name that is no user may be a password typed in
//! the wrong field), as the audit log does (P14).

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};

use bytes::Bytes;

use crate::auth::{hex, User, UserView, Users, DEFAULT_USER};
use crate::cmd::introspect::{self, Info, CATEGORIES};
use crate::cmd::{self, Flags, NOT_INT};
use crate::docs;
use crate::resp::{parse_i64, Reply};

/// How many entries the ACL log keeps (Redis's `acllog-max-len` default).
pub const LOG_LEN_MAX: usize = 128;
/// The most of a client's CLIENT LIST line an entry keeps: a client chooses its name and library
/// name, and 128 entries must not hold megabytes of them (P11).
const CLIENT_INFO_BYTES_MAX: usize = 1024;
/// A refusal like one logged less than this long ago counts in that entry (as in Redis).
const LOG_GROUP_MS: u64 = 60_000;
/// ACL GENPASS's default length, and the most it gives.
const GENPASS_BITS: i64 = 256;
const GENPASS_BITS_MAX: i64 = 4096;

/// Something an ACL rule can allow or deny: a command without subcommands, or a container's
/// subcommand (`config|get`). A container itself is never checked on its own, in Redis or in
/// keel: its subcommand is.
struct Target {
    /// `get`, or `config|get`.
    name: String,
    /// The container, for a subcommand.
    container: Option<&'static str>,
    categories: Vec<&'static str>,
    /// What keel's check asks of the plainest invocation (`SET k v`, not `SET k v GET`).
    need: Flags,
}

static TARGETS: LazyLock<Vec<Target>> = LazyLock::new(|| {
    let mut out = Vec::new();
    for c in cmd::COMMANDS.iter() {
        let name = Bytes::from_static(c.name.as_bytes());
        let info = Info::of(c);
        if info.subcommands.is_empty() {
            out.push(Target {
                need: cmd::flags(c, std::slice::from_ref(&name)),
                categories: info.categories(),
                name: info.name,
                container: None,
            });
            continue;
        }
        for (d, sub) in c.doc.subcommands.iter().zip(&info.subcommands) {
            let args = [name.clone(), Bytes::from_static(d.name.as_bytes())];
            out.push(Target {
                name: sub.name.clone(),
                container: Some(c.name),
                categories: sub.categories(),
                need: cmd::flags(c, &args),
            });
        }
    }
    out
});

/// Whether Redis would let a user with `rules` (`-@all +@read -keys …`, applied in order)
/// run `t`.
fn rules_allow(rules: &[String], t: &Target) -> bool {
    let mut allowed = false;
    for r in rules {
        let (on, what) = match r.split_at(1) {
            ("+", w) => (true, w),
            ("-", w) => (false, w),
            _ => continue,
        };
        let hit = match what.strip_prefix('@') {
            Some("all") => true,
            Some(cat) => t.categories.iter().any(|c| &c[1..] == cat),
            None => t.name == what || t.container == Some(what),
        };
        if hit {
            allowed = on;
        }
    }
    allowed
}

/// The command rules that say what `u` may run, in Redis's syntax (see the module's docs).
pub fn command_rules(u: &UserView<'_>) -> Vec<String> {
    if u.is_all() {
        return vec!["+@all".into()];
    }
    let mut rules = vec!["-@all".to_string()];
    for (has, cats) in [
        (u.read, &["@read"][..]),
        (u.write, &["@write"]),
        (u.admin, &["@admin", "@dangerous"]),
        (true, &["@connection", "@transaction", "@pubsub"]),
    ] {
        if has {
            rules.extend(cats.iter().map(|c| format!("+{c}")));
        }
    }
    let base = rules.clone();
    // Then each command keel decides otherwise; a container as a whole when all of its
    // subcommands go one way.
    let targets = &*TARGETS;
    let mut i = 0;
    while i < targets.len() {
        let group = match targets[i].container {
            None => 1,
            Some(c) => targets[i..]
                .iter()
                .take_while(|t| t.container == Some(c))
                .count(),
        };
        let subs = &targets[i..i + group];
        i += group;
        let differs: Vec<&Target> = (subs.iter())
            .filter(|t| u.permits(t.need) != rules_allow(&base, t))
            .collect();
        if differs.is_empty() {
            continue;
        }
        let sign = |t: &Target| if u.permits(t.need) { '+' } else { '-' };
        match subs[0].container {
            Some(c) if subs.iter().all(|t| u.permits(t.need)) => rules.push(format!("+{c}")),
            Some(c) if !subs.iter().any(|t| u.permits(t.need)) => rules.push(format!("-{c}")),
            _ => rules.extend(differs.iter().map(|t| format!("{}{}", sign(t), t.name))),
        }
    }
    rules
}

/// The key pattern: which keys the user may read and write (empty: none).
fn key_rule(u: &UserView<'_>) -> &'static str {
    match (u.read, u.write) {
        (true, true) => "~*",
        (true, false) => "%R~*",
        (false, true) => "%W~*",
        (false, false) => "",
    }
}

/// keel checks no permission on a channel: any user may publish or subscribe to any, which is
/// Redis's `&*`.
const CHANNEL_RULE: &str = "&*";

/// The user's flags as Redis shows them: `on`/`off`, `nopass`, `sanitize-payload` (Redis's
/// default for every user; keel has no RESTORE to sanitize).
fn flags(u: &UserView<'_>) -> Vec<&'static str> {
    let mut f = vec![if u.enabled { "on" } else { "off" }];
    if u.enabled && u.password_sha256.is_none() {
        f.push("nopass");
    }
    f.push("sanitize-payload");
    f
}

/// ACL LIST's line for a user: `user app on sanitize-payload #<sha256> ~* &* -@all +@read …`.
pub fn describe(u: &UserView<'_>) -> String {
    let mut words = vec!["user".to_string(), u.name.to_string()];
    words.extend(flags(u).into_iter().map(String::from));
    words.extend(u.password_sha256.map(|h| format!("#{}", hex(h))));
    let keys = key_rule(u);
    if !keys.is_empty() {
        words.push(keys.into());
    }
    words.push(CHANNEL_RULE.into());
    words.extend(command_rules(u));
    words.join(" ")
}

/// ACL GETUSER's map, with Redis 7.2's fields.
fn getuser(u: &UserView<'_>) -> Reply {
    let s = |x: &str| Reply::bulk(x.to_string());
    Reply::Map(vec![
        (
            s("flags"),
            Reply::Set(flags(u).into_iter().map(s).collect()),
        ),
        (
            s("passwords"),
            Reply::Array(u.password_sha256.map(|h| s(&hex(h))).into_iter().collect()),
        ),
        (s("commands"), s(&command_rules(u).join(" "))),
        (s("keys"), s(key_rule(u))),
        (s("channels"), s(CHANNEL_RULE)),
        (s("selectors"), Reply::Array(Vec::new())),
    ])
}

/// Why an entry is in the ACL log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A command the user may not run.
    Command,
    /// A failed AUTH or HELLO … AUTH.
    Auth,
}

/// Where the refusal happened: a command on its own, or one queued in MULTI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Toplevel,
    Multi,
}

struct Entry {
    count: u64,
    reason: Reason,
    context: Context,
    /// The refused command (`get`, `config|get`), or `AUTH`.
    object: String,
    username: String,
    /// The client as CLIENT LIST describes it, when the entry was last counted.
    client_info: String,
    id: u64,
    created_ms: u64,
    updated_ms: u64,
}

/// The ACL log: newest first, at most [`LOG_LEN_MAX`] entries.
#[derive(Default)]
pub struct Log(Mutex<LogInner>);

#[derive(Default)]
struct LogInner {
    entries: VecDeque<Entry>,
    next_id: u64,
}

impl Log {
    /// Records a refusal at `now_ms`. One like an entry counted in the last minute (same
    /// reason, context, object and user) adds to that entry's count and moves it to the front,
    /// as Redis groups them.
    pub fn record(
        &self,
        reason: Reason,
        context: Context,
        object: &str,
        username: &str,
        client_info: String,
        now_ms: u64,
    ) {
        let mut client_info = client_info;
        if client_info.len() > CLIENT_INFO_BYTES_MAX {
            let mut cut = CLIENT_INFO_BYTES_MAX;
            while !client_info.is_char_boundary(cut) {
                cut -= 1;
            }
            client_info.truncate(cut);
            client_info.push_str("...");
        }
        let mut log = crate::lock(&self.0);
        let similar = log.entries.iter().position(|e| {
            e.reason == reason
                && e.context == context
                && e.object == object
                && e.username == username
                && now_ms.saturating_sub(e.updated_ms) < LOG_GROUP_MS
        });
        let entry = match similar.and_then(|i| log.entries.remove(i)) {
            Some(mut e) => {
                e.count += 1;
                e.client_info = client_info;
                e.updated_ms = now_ms;
                e
            }
            None => {
                let id = log.next_id;
                log.next_id += 1;
                Entry {
                    count: 1,
                    reason,
                    context,
                    object: object.to_string(),
                    username: username.to_string(),
                    client_info,
                    id,
                    created_ms: now_ms,
                    updated_ms: now_ms,
                }
            }
        };
        log.entries.push_front(entry);
        log.entries.truncate(LOG_LEN_MAX);
    }

    pub fn len(&self) -> usize {
        crate::lock(&self.0).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// ACL LOG [count | RESET]: `arg` is the argument after LOG.
    fn command(&self, arg: Option<&Bytes>, now_ms: u64) -> Reply {
        let mut log = crate::lock(&self.0);
        let count = match arg {
            None => 10,
            Some(a) if a.eq_ignore_ascii_case(b"reset") => {
                log.entries.clear();
                return Reply::ok();
            }
            Some(a) => match parse_i64(a) {
                None => return Reply::err(NOT_INT),
                Some(n) => n.max(0) as usize,
            },
        };
        Reply::Array(
            (log.entries.iter().take(count))
                .map(|e| e.reply(now_ms))
                .collect(),
        )
    }
}

impl Entry {
    fn reply(&self, now_ms: u64) -> Reply {
        let s = |x: &str| Reply::bulk(x.to_string());
        let age_secs = now_ms.saturating_sub(self.updated_ms) as f64 / 1000.0;
        Reply::Map(vec![
            (s("count"), Reply::Int(self.count as i64)),
            (
                s("reason"),
                s(match self.reason {
                    Reason::Command => "command",
                    Reason::Auth => "auth",
                }),
            ),
            (
                s("context"),
                s(match self.context {
                    Context::Toplevel => "toplevel",
                    Context::Multi => "multi",
                }),
            ),
            (s("object"), s(&self.object)),
            (s("username"), s(&self.username)),
            (s("age-seconds"), Reply::Double(age_secs.to_string().into())),
            (s("client-info"), s(&self.client_info)),
            (s("entry-id"), Reply::Int(self.id as i64)),
            (s("timestamp-created"), Reply::Int(self.created_ms as i64)),
            (
                s("timestamp-last-updated"),
                Reply::Int(self.updated_ms as i64),
            ),
        ])
    }
}

/// How a failed login's user is logged: its name if it is a configured user (or `default`,
/// which always exists in Redis's terms), else `(unknown)`: what the client sent may be a
/// password typed in the wrong place (P14).
pub fn logged_user_name(users: &Users, given: &[u8]) -> String {
    match std::str::from_utf8(given) {
        Ok(DEFAULT_USER) => DEFAULT_USER.into(),
        Ok(u) => users
            .name(u)
            .map_or_else(|| "(unknown)".into(), |n| n.to_string()),
        Err(_) => "(unknown)".into(),
    }
}

/// ACL <subcommand> …, run by `me` (`args[0]` is ACL; the arity of ACL itself is checked).
pub fn command(users: &Users, log: &Log, me: &User, args: &[Bytes], now_ms: u64) -> Reply {
    let Some(spec) = cmd::lookup("acl") else {
        return Reply::err("ERR the command table has no ACL");
    };
    let Some(d) =
        (spec.doc.subcommands.iter()).find(|d| d.name.as_bytes().eq_ignore_ascii_case(&args[1]))
    else {
        return Reply::err(format!(
            "ERR unknown subcommand '{}'. Try ACL HELP.",
            String::from_utf8_lossy(&args[1])
        ));
    };
    let arity = docs::arity(d.syntax);
    let argc = args.len() as i64;
    if (arity > 0 && arity != argc) || argc < -arity {
        return cmd::wrong_args(&format!("acl|{}", d.name));
    }
    let views = users.views();
    let find = |name: &[u8]| views.iter().find(|u| u.name.as_bytes() == name);
    match d.name {
        "whoami" => Reply::bulk(me.0.clone()),
        "users" => Reply::Array(
            views
                .iter()
                .map(|u| Reply::bulk(u.name.to_string()))
                .collect(),
        ),
        "list" => Reply::Array(views.iter().map(|u| Reply::bulk(describe(u))).collect()),
        "getuser" => find(&args[2]).map_or(Reply::Nil, getuser),
        "cat" => match args.get(2) {
            None => Reply::Array(
                CATEGORIES
                    .iter()
                    .map(|c| Reply::bulk(c[1..].to_string()))
                    .collect(),
            ),
            Some(_) if args.len() > 3 => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try ACL HELP.",
                String::from_utf8_lossy(&args[1])
            )),
            Some(name) => {
                match CATEGORIES
                    .iter()
                    .position(|c| c.as_bytes()[1..].eq_ignore_ascii_case(name))
                {
                    Some(i) => Reply::Array(
                        (introspect::in_category(i).into_iter())
                            .map(Reply::bulk)
                            .collect(),
                    ),
                    None => Reply::err(format!(
                        "ERR Unknown category '{}'",
                        String::from_utf8_lossy(name)
                    )),
                }
            }
        },
        "dryrun" => match find(&args[2]) {
            None => Reply::err(format!(
                "ERR User '{}' not found",
                String::from_utf8_lossy(&args[2])
            )),
            Some(u) => dryrun(users, &User(u.name.to_string()), &args[3..]),
        },
        "log" => log.command(args.get(2), now_ms),
        "genpass" => genpass(args.get(2)),
        "setuser" | "deluser" | "save" | "load" => Reply::err(format!(
            "ERR ACL {} is not served: keel's users come from its config file (requirepass and \
             [[users]]) and do not change while it runs; edit the file and restart keel",
            d.name.to_uppercase()
        )),
        // HELP with its one argument is answered before this (see the pipeline).
        _ => Reply::Array(
            (docs::help_lines("acl").unwrap_or_default().into_iter())
                .map(Reply::simple)
                .collect(),
        ),
    }
}

/// ACL DRYRUN: whether `user` may run `args`, by the pipeline's own check; runs nothing. A
/// refusal is Redis's text, as a bulk string.
fn dryrun(users: &Users, user: &User, args: &[Bytes]) -> Reply {
    let not_found = || {
        Reply::err(format!(
            "ERR Command '{}' not found",
            String::from_utf8_lossy(&args[0])
        ))
    };
    let Some(spec) = cmd::find(&args[0]).map(|i| cmd::COMMANDS[i]) else {
        return not_found();
    };
    // A container with a subcommand named is that subcommand, which must exist (Redis looks
    // the subcommand up before anything else).
    let mut shown = spec.name.to_string();
    if let (false, Some(sub)) = (spec.doc.subcommands.is_empty(), args.get(1)) {
        match docs::subcommand(spec.name, sub) {
            Some(sub) => shown = format!("{}|{sub}", spec.name),
            None => return not_found(),
        }
    }
    if !cmd::arity_ok(spec, args.len()) {
        return cmd::wrong_args(&shown);
    }
    match users.check(user, spec, args) {
        Ok(()) => Reply::ok(),
        Err(denied) => Reply::bulk(denied.message()),
    }
}

/// ACL GENPASS [bits]: a random password as hexadecimal digits, 4 bits each.
fn genpass(bits: Option<&Bytes>) -> Reply {
    let bits = match bits.map(|b| parse_i64(b)) {
        None => GENPASS_BITS,
        Some(None) => return Reply::err(NOT_INT),
        Some(Some(b)) if b > 0 && b <= GENPASS_BITS_MAX => b,
        Some(Some(_)) => {
            return Reply::err(format!(
                "ERR ACL GENPASS argument must be the number of bits for the output password, \
                 a positive number up to {GENPASS_BITS_MAX}"
            ))
        }
    };
    let digits = (bits as usize).div_ceil(4);
    let mut raw = vec![0u8; digits.div_ceil(2)];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).is_err() {
        return Reply::err("ERR the system's random number generator failed");
    }
    let mut password = hex(&raw);
    password.truncate(digits);
    Reply::bulk(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{sha256, Permission, UserConfig};

    fn b(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn user(name: &str, password: &str, permissions: &[Permission]) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_sha256: hex(&sha256(password.as_bytes())),
            permissions: permissions.to_vec(),
        }
    }

    /// Every combination of permissions, as users named after them, and no default entry.
    fn every_kind() -> Users {
        use Permission::*;
        let mut configs = Vec::new();
        for bits in 0..8u8 {
            let mut perms = Vec::new();
            let mut name = String::from("u");
            for (bit, p, c) in [(1, Read, 'r'), (2, Write, 'w'), (4, Admin, 'a')] {
                if bits & bit != 0 {
                    perms.push(p);
                    name.push(c);
                }
            }
            configs.push(user(&name, &name, &perms));
        }
        Users::new(None, &configs).unwrap()
    }

    fn ok(r: &Reply) -> bool {
        *r == Reply::ok()
    }

    fn bulk_text(r: &Reply) -> String {
        match r {
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not a bulk string: {other:?}"),
        }
    }

    fn strings(r: Reply) -> Vec<String> {
        match r {
            Reply::Array(v) => v.iter().map(bulk_text).collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    /// The rules ACL LIST shows, evaluated as Redis evaluates them, allow exactly what keel's
    /// own check allows, for every user kind and every command and subcommand.
    #[test]
    fn the_rules_say_what_the_check_decides() {
        let users = Users::new(Some("pw".into()), &[]).unwrap();
        let all = every_kind();
        let open = Users::new(None, &[]).unwrap();
        for table in [&users, &all, &open] {
            for u in table.views() {
                let rules = command_rules(&u);
                let as_user = User(u.name.to_string());
                for t in TARGETS.iter() {
                    let keel = table.permits(&as_user, t.need);
                    assert_eq!(u.permits(t.need), keel, "{}: {}", u.name, t.name);
                    assert_eq!(
                        rules_allow(&rules, t),
                        keel,
                        "{}: {} under {}",
                        u.name,
                        t.name,
                        rules.join(" ")
                    );
                }
            }
        }
    }

    #[test]
    fn list_lines_read_as_redis_s() {
        let open = Users::new(None, &[]).unwrap();
        let lines = strings(command(
            &open,
            &Log::default(),
            &User("default".into()),
            &b(&["acl", "list"]),
            0,
        ));
        assert_eq!(
            lines,
            ["user default on nopass sanitize-payload ~* &* +@all"]
        );

        let users = Users::new(
            Some("pw".into()),
            &[user("app", "x", &[Permission::Read, Permission::Write])],
        )
        .unwrap();
        let lines = strings(command(
            &users,
            &Log::default(),
            &User("default".into()),
            &b(&["ACL", "LIST"]),
            0,
        ));
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with(&format!(
                "user app on sanitize-payload #{} ~* &* -@all +@read +@write +@connection +@transaction +@pubsub",
                hex(&sha256(b"x"))
            )),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            format!(
                "user default on sanitize-payload #{} ~* &* +@all",
                hex(&sha256(b"pw"))
            )
        );
        // The password itself is nowhere.
        assert!(!lines.iter().any(|l| l.contains(" pw") || l.contains(">")));

        let kinds = every_kind();
        let lines = strings(command(
            &kinds,
            &Log::default(),
            &User("urwa".into()),
            &b(&["acl", "list"]),
            0,
        ));
        // Sorted by name, with the default user shown disabled.
        let names: Vec<&str> = lines.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(
            names,
            ["default", "u", "ua", "ur", "ura", "urw", "urwa", "uw", "uwa"]
        );
        assert!(
            lines[0].starts_with(
                "user default off sanitize-payload &* -@all +@connection +@transaction +@pubsub"
            ),
            "{}",
            lines[0]
        );
        let line = |n: &str| {
            lines
                .iter()
                .find(|l| l.split(' ').nth(1) == Some(n))
                .unwrap()
                .clone()
        };
        assert!(
            line("ur").contains(" %R~* &* -@all +@read +@connection +@transaction +@pubsub"),
            "{}",
            line("ur")
        );
        assert!(
            line("uw").contains(" %W~* &* -@all +@write +@connection +@transaction +@pubsub"),
            "{}",
            line("uw")
        );
        assert!(
            line("ua")
                .contains(" &* -@all +@admin +@dangerous +@connection +@transaction +@pubsub"),
            "{}",
            line("ua")
        );
        // KEYS is @dangerous but only reads: an admin without read may not run it.
        assert!(line("ua").contains(" -keys"), "{}", line("ua"));
        // Every user may run the connection's own commands; CLIENT LIST needs admin.
        assert!(line("u").contains(" -client|list"), "{}", line("u"));
        assert!(!line("ua").contains("client|list"), "{}", line("ua"));
    }

    #[test]
    fn getuser_has_redis_s_fields() {
        let users = Users::new(None, &[user("w", "pass", &[Permission::Write])]).unwrap();
        let me = User("w".into());
        let r = command(
            &users,
            &Log::default(),
            &me,
            &b(&["acl", "getuser", "w"]),
            0,
        );
        let Reply::Map(fields) = r else {
            panic!("{r:?}")
        };
        let keys: Vec<String> = fields.iter().map(|(k, _)| bulk_text(k)).collect();
        assert_eq!(
            keys,
            [
                "flags",
                "passwords",
                "commands",
                "keys",
                "channels",
                "selectors"
            ]
        );
        assert_eq!(
            fields[0].1,
            Reply::Set(vec![Reply::bulk("on"), Reply::bulk("sanitize-payload")])
        );
        assert_eq!(
            fields[1].1,
            Reply::Array(vec![Reply::bulk(hex(&sha256(b"pass")))])
        );
        assert!(bulk_text(&fields[2].1)
            .starts_with("-@all +@write +@connection +@transaction +@pubsub"));
        assert_eq!(bulk_text(&fields[3].1), "%W~*");
        assert_eq!(bulk_text(&fields[4].1), "&*");
        assert_eq!(
            command(
                &users,
                &Log::default(),
                &me,
                &b(&["acl", "getuser", "nobody"]),
                0
            ),
            Reply::Nil
        );
    }

    #[test]
    fn dryrun_runs_the_pipeline_s_check() {
        let users = every_kind();
        let me = User("urwa".into());
        let run = |v: &[&str]| {
            command(
                &users,
                &Log::default(),
                &me,
                &b(&[&["acl", "dryrun"], v].concat()),
                0,
            )
        };
        assert!(ok(&run(&["ur", "get", "k"])));
        assert_eq!(
            bulk_text(&run(&["ur", "set", "k", "v"])),
            "User ur has no permissions to run the 'set' command"
        );
        assert!(ok(&run(&["uw", "SET", "k", "v"])));
        // The arguments count: SET … GET reads.
        assert_eq!(
            bulk_text(&run(&["uw", "set", "k", "v", "get"])),
            "User uw has no permissions to run the 'set' command"
        );
        assert_eq!(
            bulk_text(&run(&["urw", "config", "get", "port"])),
            "User urw has no permissions to run the 'config|get' command"
        );
        assert!(ok(&run(&["urwa", "config", "get", "port"])));
        assert!(ok(&run(&["u", "ping"])));
        // The disabled default user may run nothing but the connection's commands.
        assert_eq!(
            bulk_text(&run(&["default", "get", "k"])),
            "User default has no permissions to run the 'get' command"
        );
        assert_eq!(
            run(&["nobody", "get", "k"]),
            Reply::err("ERR User 'nobody' not found")
        );
        assert_eq!(
            run(&["ur", "no-such", "k"]),
            Reply::err("ERR Command 'no-such' not found")
        );
        assert_eq!(
            run(&["ur", "config", "bogus"]),
            Reply::err("ERR Command 'config' not found")
        );
        assert_eq!(
            run(&["ur", "get"]),
            Reply::err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(
            run(&["ur", "config"]),
            Reply::err("ERR wrong number of arguments for 'config' command")
        );
        assert_eq!(
            run(&["ur"]),
            Reply::err("ERR wrong number of arguments for 'acl|dryrun' command")
        );
        // ACL's own subcommands: WHOAMI for anyone, LIST for admins.
        assert!(ok(&run(&["u", "acl", "whoami"])));
        assert_eq!(
            bulk_text(&run(&["urw", "acl", "list"])),
            "User urw has no permissions to run the 'acl|list' command"
        );
    }

    #[test]
    fn cat_lists_categories_and_their_commands() {
        let users = every_kind();
        let me = User("u".into());
        let run = |v: &[&str]| command(&users, &Log::default(), &me, &b(v), 0);
        let cats = strings(run(&["acl", "cat"]));
        assert_eq!(cats.len(), CATEGORIES.len());
        assert!(cats.contains(&"keyspace".into()) && cats.contains(&"connection".into()));
        let read = strings(run(&["acl", "cat", "READ"]));
        assert!(read.contains(&"get".into()) && read.contains(&"memory|usage".into()));
        assert!(!read.contains(&"set".into()));
        let admin = strings(run(&["acl", "cat", "admin"]));
        assert!(admin.contains(&"acl|list".into()) && !admin.contains(&"acl|whoami".into()));
        assert!(strings(run(&["acl", "cat", "transaction"])).contains(&"multi".into()));
        assert!(!strings(run(&["acl", "cat", "keyspace"])).contains(&"set".into()));
        assert_eq!(
            run(&["acl", "cat", "NON_EXISTS"]),
            Reply::err("ERR Unknown category 'NON_EXISTS'")
        );
        assert_eq!(
            run(&["acl", "cat", "a", "b"]),
            Reply::err(
                "ERR unknown subcommand or wrong number of arguments for 'cat'. Try ACL HELP."
            )
        );
    }

    #[test]
    fn whoami_users_genpass_and_refusals() {
        let users = every_kind();
        let me = User("uw".into());
        let run = |v: &[&str]| command(&users, &Log::default(), &me, &b(v), 0);
        assert_eq!(run(&["acl", "whoami"]), Reply::bulk("uw"));
        assert_eq!(strings(run(&["acl", "users"]))[..2], ["default", "u"]);
        let p = bulk_text(&run(&["acl", "genpass"]));
        assert_eq!(p.len(), 64);
        assert!(p.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(p, bulk_text(&run(&["acl", "genpass"])));
        assert_eq!(bulk_text(&run(&["acl", "genpass", "5"])).len(), 2);
        assert_eq!(bulk_text(&run(&["acl", "genpass", "4096"])).len(), 1024);
        for bad in ["-236", "5000", "0"] {
            let Reply::Error(e) = run(&["acl", "genpass", bad]) else {
                panic!()
            };
            assert!(e.contains("ACL GENPASS argument must be the number"), "{e}");
        }
        for sub in ["setuser", "deluser", "SAVE", "load"] {
            let mut v = vec!["acl", sub];
            if matches!(sub, "setuser" | "deluser") {
                v.push("someone");
            }
            let Reply::Error(e) = run(&v) else { panic!() };
            assert!(
                e.contains("config file") && e.contains(&sub.to_uppercase()),
                "{e}"
            );
        }
        assert_eq!(
            run(&["acl", "help", "xxx"]),
            Reply::err("ERR wrong number of arguments for 'acl|help' command")
        );
        assert_eq!(
            run(&["acl", "whoami", "x"]),
            Reply::err("ERR wrong number of arguments for 'acl|whoami' command")
        );
        assert!(
            matches!(run(&["acl", "nosuch"]), Reply::Error(e) if e.starts_with("ERR unknown subcommand 'nosuch'"))
        );
    }

    #[test]
    fn permission_to_run_acl_follows_redis() {
        let need = |sub: &str| cmd::flags(cmd::lookup("acl").unwrap(), &b(&["acl", sub]));
        for sub in ["whoami", "cat", "genpass", "help", "WHOAMI"] {
            assert!(need(sub).is_connection(), "{sub}");
        }
        for sub in [
            "users", "list", "getuser", "dryrun", "log", "setuser", "deluser", "save", "load",
            "bogus",
        ] {
            assert!(need(sub).contains(Flags::ADMIN), "{sub}");
        }
    }

    #[test]
    fn the_log_groups_bounds_and_resets() {
        let log = Log::default();
        let users = every_kind();
        let me = User("urwa".into());
        let get = |n: &str| command(&users, &log, &me, &b(&["acl", "log", n]), 70_000);
        log.record(
            Reason::Command,
            Context::Toplevel,
            "get",
            "uw",
            "id=1 cmd=get".into(),
            1_000,
        );
        log.record(
            Reason::Command,
            Context::Toplevel,
            "get",
            "uw",
            "id=2 cmd=get".into(),
            2_000,
        );
        log.record(
            Reason::Auth,
            Context::Toplevel,
            "AUTH",
            "(unknown)",
            "id=3 cmd=auth".into(),
            3_000,
        );
        log.record(
            Reason::Command,
            Context::Multi,
            "get",
            "uw",
            "id=2 cmd=get".into(),
            4_000,
        );
        assert_eq!(log.len(), 3);
        let Reply::Array(entries) = command(&users, &log, &me, &b(&["acl", "log"]), 5_500) else {
            panic!()
        };
        assert_eq!(entries.len(), 3);
        let field = |e: &Reply, k: &str| match e {
            Reply::Map(f) => f.iter().find(|(n, _)| bulk_text(n) == k).unwrap().1.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&entries[0], "context"), Reply::bulk("multi"));
        assert_eq!(field(&entries[1], "reason"), Reply::bulk("auth"));
        assert_eq!(field(&entries[1], "object"), Reply::bulk("AUTH"));
        assert_eq!(field(&entries[1], "username"), Reply::bulk("(unknown)"));
        let grouped = &entries[2];
        assert_eq!(field(grouped, "count"), Reply::Int(2));
        assert_eq!(field(grouped, "entry-id"), Reply::Int(0));
        assert_eq!(field(grouped, "timestamp-created"), Reply::Int(1_000));
        assert_eq!(field(grouped, "timestamp-last-updated"), Reply::Int(2_000));
        assert_eq!(field(grouped, "age-seconds"), Reply::Double("3.5".into()));
        assert_eq!(field(grouped, "client-info"), Reply::bulk("id=2 cmd=get"));
        assert_eq!(field(&entries[0], "entry-id"), Reply::Int(2));
        // Past a minute the same refusal is a new entry.
        log.record(
            Reason::Command,
            Context::Toplevel,
            "get",
            "uw",
            "".into(),
            62_001,
        );
        assert_eq!(log.len(), 4);
        let Reply::Array(two) = get("2") else {
            panic!()
        };
        assert_eq!(two.len(), 2);
        assert_eq!(get("-1"), Reply::Array(vec![]));
        assert_eq!(get("x"), Reply::err(NOT_INT));
        for i in 0..2 * LOG_LEN_MAX {
            log.record(
                Reason::Command,
                Context::Toplevel,
                &format!("c{i}"),
                "uw",
                "".into(),
                70_000,
            );
        }
        assert_eq!(log.len(), LOG_LEN_MAX);
        // A client's line is kept to a bound, whatever name it chose.
        let long = format!("id=9 name={}", "é".repeat(CLIENT_INFO_BYTES_MAX));
        log.record(
            Reason::Command,
            Context::Toplevel,
            "get",
            "uw",
            long,
            70_000,
        );
        let Reply::Array(newest) = get("1") else {
            panic!()
        };
        let Reply::Bulk(info) = field(&newest[0], "client-info") else {
            panic!()
        };
        assert!(info.len() <= CLIENT_INFO_BYTES_MAX + 3 && info.ends_with(b"..."));
        assert_eq!(get("RESET"), Reply::ok());
        assert!(log.is_empty());
    }

    #[test]
    fn failed_logins_name_only_configured_users() {
        let users = every_kind();
        assert_eq!(logged_user_name(&users, b"ur"), "ur");
        assert_eq!(logged_user_name(&users, b"default"), "default");
        assert_eq!(logged_user_name(&users, b"hunter2"), "(unknown)");
        assert_eq!(logged_user_name(&users, b"\xff"), "(unknown)");
    }
}
