//! COMMAND DOCS: a summary, a group and an argument tree for every command keel serves, so that
//! redis-cli's `help` and its typing hints work against keel.
//!
//! Each command's arguments are written once, as the syntax line a user reads
//! (`key value [NX|XX] [GET] …`), and parsed into the tree COMMAND DOCS replies with. The tests
//! render every tree back the way redis-cli does and check that it gives the same line, so the
//! table and the reply cannot drift apart. A value's type is inferred from its name (`key`,
//! `seconds`, `pattern`, …) or written after a colon (`increment:double`); the colon part is not
//! shown.

use bytes::Bytes;

use crate::cmd::{self, Keys};
use crate::resp::Reply;

/// A command's or a subcommand's docs. A command's are part of its registry entry
/// ([`crate::cmd::Command`]). A subcommand's entry is its docs, and what COMMAND reports of it
/// (see [`crate::cmd::introspect`]): its arity follows from its syntax line.
pub struct Doc {
    pub name: &'static str,
    /// redis-cli's command group (`help @string`).
    pub group: &'static str,
    pub syntax: &'static str,
    pub summary: &'static str,
    pub subcommands: &'static [Doc],
    /// A subcommand's Redis flags and ACL categories, as [`crate::cmd::Command::redis`] takes
    /// them; `None`: its container's.
    pub redis: Option<(&'static str, &'static str)>,
    /// A subcommand's key specs (OBJECT ENCODING's key).
    pub key_specs: &'static [Keys],
}

pub const fn doc(
    name: &'static str,
    group: &'static str,
    syntax: &'static str,
    summary: &'static str,
) -> Doc {
    Doc {
        name,
        group,
        syntax,
        summary,
        subcommands: &[],
        redis: None,
        key_specs: &[],
    }
}

impl Doc {
    /// A subcommand's Redis flags and ACL categories (see [`crate::cmd::Command::redis`]).
    pub const fn redis(mut self, flags: &'static str, acl: &'static str) -> Doc {
        self.redis = Some((flags, acl));
        self
    }

    pub const fn key_specs(mut self, specs: &'static [Keys]) -> Doc {
        self.key_specs = specs;
        self
    }
}

/// One argument in a command's syntax, as COMMAND DOCS describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    name: String,
    kind: Kind,
    /// The literal word before the value (`EX` in `EX seconds`), or the word itself for a
    /// pure token.
    token: Option<String>,
    optional: bool,
    multiple: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// A value, with its type: key, string, integer, double, pattern or unix-time.
    Value(&'static str),
    PureToken,
    OneOf(Vec<Arg>),
    Block(Vec<Arg>),
    /// `...` while parsing; never in a finished tree.
    Ellipsis,
}

fn value_type(name: &str) -> &'static str {
    match name {
        "key" | "newkey" => "key",
        "pattern" => "pattern",
        "unix-time-seconds" | "unix-time-milliseconds" => "unix-time",
        "seconds" | "milliseconds" | "count" | "increment" | "decrement" | "start" | "end"
        | "cursor" | "version" | "numlocal" | "numreplicas" | "timeout" | "protover" | "index"
        | "node-id" | "bits" => "integer",
        _ => "string",
    }
}

fn is_token(word: &str) -> bool {
    word.bytes().any(|b| b.is_ascii_uppercase()) && !word.bytes().any(|b| b.is_ascii_lowercase())
}

fn value(word: &str) -> Result<Arg, String> {
    let (name, ty) = match word.split_once(':') {
        Some((n, "double")) => (n, "double"),
        Some((n, "string")) => (n, "string"),
        Some((_, t)) => return Err(format!("unknown type '{t}'")),
        None => (word, value_type(word)),
    };
    Ok(Arg {
        name: name.to_string(),
        kind: Kind::Value(ty),
        token: None,
        optional: false,
        multiple: false,
    })
}

/// Several arguments as one: a block named after its first.
fn group(mut args: Vec<Arg>) -> Arg {
    if args.len() == 1 {
        return args.pop().expect("one");
    }
    Arg {
        name: args.first().map_or_else(String::new, |a| a.name.clone()),
        kind: Kind::Block(args),
        token: None,
        optional: false,
        multiple: false,
    }
}

/// Parses a syntax line into its arguments.
pub fn parse(syntax: &str) -> Result<Vec<Arg>, String> {
    let spaced = syntax
        .replace('[', " [ ")
        .replace(']', " ] ")
        .replace('<', " < ")
        .replace('>', " > ")
        .replace('|', " | ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let args = seq(&words, &mut pos)?;
    match words.get(pos) {
        None => Ok(args),
        Some(w) => Err(format!("unexpected '{w}'")),
    }
}

fn seq(words: &[&str], pos: &mut usize) -> Result<Vec<Arg>, String> {
    let mut out: Vec<Arg> = Vec::new();
    while let Some(&w) = words.get(*pos) {
        match w {
            "]" | "|" | ">" => break,
            // A required choice: <A|B>.
            "<" => {
                *pos += 1;
                let mut alts = vec![seq(words, pos)?];
                while words.get(*pos) == Some(&"|") {
                    *pos += 1;
                    alts.push(seq(words, pos)?);
                }
                if words.get(*pos) != Some(&">") || alts.len() < 2 {
                    return Err("a '<' needs alternatives and a '>'".into());
                }
                *pos += 1;
                let mut a = bracket(&mut out, alts)?;
                a.optional = false;
                out.push(a);
            }
            "[" => {
                *pos += 1;
                let mut alts = vec![seq(words, pos)?];
                while words.get(*pos) == Some(&"|") {
                    *pos += 1;
                    alts.push(seq(words, pos)?);
                }
                if words.get(*pos) != Some(&"]") {
                    return Err("unclosed '['".into());
                }
                *pos += 1;
                let a = bracket(&mut out, alts)?;
                out.push(a);
            }
            "..." => {
                if words.get(*pos + 1) != Some(&"]") {
                    return Err("'...' must end a '[ ]'".into());
                }
                *pos += 1;
                out.push(Arg {
                    name: String::new(),
                    kind: Kind::Ellipsis,
                    token: None,
                    optional: false,
                    multiple: false,
                });
            }
            w if is_token(w) => {
                *pos += 1;
                let mut values = Vec::new();
                while let Some(&v) = words.get(*pos) {
                    if matches!(v, "[" | "]" | "|" | "..." | "<" | ">") || is_token(v) {
                        break;
                    }
                    values.push(value(v)?);
                    *pos += 1;
                }
                let mut a = match values.len() {
                    0 => Arg {
                        name: w.to_ascii_lowercase(),
                        kind: Kind::PureToken,
                        token: None,
                        optional: false,
                        multiple: false,
                    },
                    _ => group(values),
                };
                if matches!(a.kind, Kind::Block(_)) {
                    a.name = w.to_ascii_lowercase();
                }
                a.token = Some(w.to_string());
                out.push(a);
            }
            w => {
                *pos += 1;
                out.push(value(w)?);
            }
        }
    }
    Ok(out)
}

/// The argument a `[ … ]` stands for. `[x ...]` after `x` marks `x` as repeatable (it takes `x`
/// off `before`); a single alternative is optional; several are a choice.
fn bracket(before: &mut Vec<Arg>, mut alts: Vec<Vec<Arg>>) -> Result<Arg, String> {
    if alts.len() == 1 && matches!(alts[0].last(), Some(a) if a.kind == Kind::Ellipsis) {
        let mut repeated = alts.pop().expect("one");
        repeated.pop();
        let n = repeated.len();
        // `TOKEN value [value ...]`: the token's value repeats (ZUNION's WEIGHTS).
        let tokened = |l: &Arg| {
            n == 1
                && l.token.is_some()
                && !l.multiple
                && l.kind == repeated[0].kind
                && l.name == repeated[0].name
        };
        if before.last().is_some_and(tokened) {
            let mut a = before.pop().expect("checked");
            a.multiple = true;
            return Ok(a);
        }
        if n == 0 || before.len() < n || before[before.len() - n..] != repeated[..] {
            return Err("'...' must repeat the arguments just before it".into());
        }
        before.truncate(before.len() - n);
        let mut a = group(repeated);
        a.multiple = true;
        return Ok(a);
    }
    if alts.iter().any(|s| s.is_empty()) {
        return Err("empty '[ ]' or alternative".into());
    }
    if alts.iter().flatten().any(|a| a.kind == Kind::Ellipsis) {
        return Err("'...' in a choice".into());
    }
    let mut a = if alts.len() == 1 {
        group(alts.pop().expect("one"))
    } else {
        let choices: Vec<Arg> = alts.into_iter().map(group).collect();
        Arg {
            name: choices
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join("-or-"),
            kind: Kind::OneOf(choices),
            token: None,
            optional: false,
            multiple: false,
        }
    };
    a.optional = true;
    Ok(a)
}

fn bulk(s: &str) -> Reply {
    Reply::bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn arg_reply(a: &Arg) -> Reply {
    let ty = match &a.kind {
        Kind::Value(t) => t,
        Kind::PureToken => "pure-token",
        Kind::OneOf(_) => "oneof",
        Kind::Block(_) => "block",
        Kind::Ellipsis => unreachable!("parse removes '...'"),
    };
    let mut fields = vec![(bulk("name"), bulk(&a.name)), (bulk("type"), bulk(ty))];
    if let Some(t) = &a.token {
        fields.push((bulk("token"), bulk(t)));
    }
    let flags: Vec<Reply> = [("optional", a.optional), ("multiple", a.multiple)]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| Reply::simple(f.to_string()))
        .collect();
    if !flags.is_empty() {
        fields.push((bulk("flags"), Reply::Array(flags)));
    }
    if let Kind::OneOf(xs) | Kind::Block(xs) = &a.kind {
        fields.push((
            bulk("arguments"),
            Reply::Array(xs.iter().map(arg_reply).collect()),
        ));
    }
    Reply::Map(fields)
}

fn doc_reply(d: &Doc, parent: Option<&str>) -> (Reply, Reply) {
    let name = match parent {
        Some(p) => format!("{p}|{}", d.name),
        None => d.name.to_string(),
    };
    let mut fields = vec![
        (bulk("summary"), bulk(d.summary)),
        (bulk("since"), bulk(env!("CARGO_PKG_VERSION"))),
        (bulk("group"), bulk(d.group)),
    ];
    // The table is checked by the tests; a bad line gives no arguments rather than a panic.
    let args = parse(d.syntax).unwrap_or_default();
    if !args.is_empty() {
        fields.push((
            bulk("arguments"),
            Reply::Array(args.iter().map(arg_reply).collect()),
        ));
    }
    if !d.subcommands.is_empty() {
        let subs = d
            .subcommands
            .iter()
            .map(|s| doc_reply(s, Some(d.name)))
            .collect();
        fields.push((bulk("subcommands"), Reply::Map(subs)));
    }
    (bulk(&name), Reply::Map(fields))
}

/// The reply to `COMMAND DOCS [name ...]`: every command, or the named ones, in the order
/// named. A subcommand is named `container|sub` (`config|get`); unknown names are left out, as
/// Redis does.
pub fn reply(names: &[Bytes]) -> Reply {
    if names.is_empty() {
        return Reply::Map(
            cmd::COMMANDS
                .iter()
                .map(|c| doc_reply(&c.doc, None))
                .collect(),
        );
    }
    let command = |name: &[u8]| cmd::find(name).map(|i| &cmd::COMMANDS[i].doc);
    Reply::Map(
        names
            .iter()
            .filter_map(|n| match n.iter().position(|&b| b == b'|') {
                None => command(n).map(|d| doc_reply(d, None)),
                Some(i) => {
                    let parent = command(&n[..i])?;
                    (parent.subcommands.iter())
                        .find(|d| n[i + 1..].eq_ignore_ascii_case(d.name.as_bytes()))
                        .map(|d| doc_reply(d, Some(parent.name)))
                }
            })
            .collect(),
    )
}

/// The subcommand `sub` of the container command `name`, as the table spells it, if it has one
/// by that name (case-insensitive).
pub fn subcommand(name: &str, sub: &[u8]) -> Option<&'static str> {
    cmd::lookup(name)?
        .doc
        .subcommands
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(sub))
        .map(|s| s.name)
}

/// A subcommand's arity, Redis's way (the command and the subcommand included; negative: at
/// least), from its syntax line: what must be given, and whether more may follow.
pub fn arity(syntax: &str) -> i64 {
    // (least number of words, whether there can be more)
    fn least(a: &Arg) -> (i64, bool) {
        let token = a.token.is_some() as i64;
        let (n, more) = match &a.kind {
            Kind::Value(_) => (1, false),
            Kind::PureToken => (1 - token, false),
            Kind::Block(xs) => all(xs),
            Kind::OneOf(xs) => {
                let each: Vec<_> = xs.iter().map(least).collect();
                let min = each.iter().map(|e| e.0).min().unwrap_or(0);
                let more = each.iter().any(|e| e.1 || e.0 != min);
                (min, more)
            }
            Kind::Ellipsis => (0, true),
        };
        (n + token, more || a.multiple)
    }
    fn all(args: &[Arg]) -> (i64, bool) {
        args.iter().fold((0, false), |(n, more), a| {
            if a.optional {
                (n, true)
            } else {
                let (m, x) = least(a);
                (n + m, more || x)
            }
        })
    }
    // The table's lines are checked by the tests; a bad one admits anything.
    let (n, more) = parse(syntax).map_or((0, true), |args| all(&args));
    match more {
        true => -(n + 2),
        false => n + 2,
    }
}

/// `NAME HELP`'s lines for a command with subcommands, as Redis's HELP replies read: a first
/// line naming the command, then each subcommand with its arguments and its summary indented
/// below, and HELP last.
pub fn help_lines(name: &str) -> Option<Vec<String>> {
    let d = &cmd::lookup(name)?.doc;
    if d.subcommands.is_empty() {
        return None;
    }
    let mut lines = vec![format!(
        "{} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        name.to_uppercase()
    )];
    for sub in d.subcommands.iter().filter(|s| s.name != "help") {
        let head = sub.name.to_uppercase();
        lines.push(match sub.syntax {
            "" => head,
            syntax => format!("{head} {syntax}"),
        });
        lines.push(format!("    {}", sub.summary));
    }
    lines.push("HELP".into());
    lines.push("    Print this help.".into());
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How redis-cli turns an argument tree back into a syntax line (its `help` output and hints).
    fn render(args: &[Arg], sep: &str) -> String {
        args.iter().map(render_one).collect::<Vec<_>>().join(sep)
    }

    fn render_one(a: &Arg) -> String {
        let repeat = match &a.kind {
            Kind::Value(_) => a.name.clone(),
            Kind::PureToken => String::new(),
            Kind::OneOf(xs) => render(xs, "|"),
            Kind::Block(xs) => render(xs, " "),
            Kind::Ellipsis => panic!("ellipsis left in the tree"),
        };
        let mut token = a.token.clone().unwrap_or_default();
        if !token.is_empty() && a.kind != Kind::PureToken {
            token.push(' ');
        }
        let mut s = format!("{token}{repeat}");
        if a.multiple {
            s = format!("{s} [{repeat} ...]");
        }
        if a.optional {
            s = format!("[{s}]");
        } else if matches!(a.kind, Kind::OneOf(_)) {
            s = format!("<{s}>");
        }
        s
    }

    fn all_docs() -> Vec<&'static Doc> {
        (cmd::COMMANDS.iter())
            .flat_map(|c| std::iter::once(&c.doc).chain(c.doc.subcommands.iter()))
            .collect()
    }

    #[test]
    fn every_syntax_line_parses_and_renders_back_unchanged() {
        for d in all_docs() {
            let args = parse(d.syntax).unwrap_or_else(|e| panic!("{}: {e}", d.name));
            let shown = d.syntax.replace(":double", "");
            assert_eq!(render(&args, " "), shown, "{}", d.name);
            assert!(!d.summary.is_empty() && !d.group.is_empty(), "{}", d.name);
        }
    }

    #[test]
    fn set_parses_into_redis_shaped_arguments() {
        let args = parse(cmd::lookup("set").unwrap().doc.syntax).unwrap();
        assert_eq!(args.len(), 5);
        assert_eq!(args[0].kind, Kind::Value("key"));
        assert_eq!(args[1].kind, Kind::Value("string"));
        let Kind::OneOf(cond) = &args[2].kind else {
            panic!("{:?}", args[2])
        };
        assert!(args[2].optional);
        assert_eq!(cond[0].kind, Kind::PureToken);
        assert_eq!(cond[0].token.as_deref(), Some("NX"));
        let Kind::OneOf(expiry) = &args[4].kind else {
            panic!()
        };
        assert_eq!(expiry[0].token.as_deref(), Some("EX"));
        assert_eq!(expiry[0].name, "seconds");
        assert_eq!(expiry[0].kind, Kind::Value("integer"));
        assert_eq!(expiry[2].kind, Kind::Value("unix-time"));
    }

    #[test]
    fn repeats_and_blocks() {
        let mset = parse("key value [key value ...]").unwrap();
        assert_eq!(mset.len(), 1);
        assert!(mset[0].multiple && !mset[0].optional);
        assert!(matches!(&mset[0].kind, Kind::Block(xs) if xs.len() == 2));
        let hello = parse("[protover [AUTH username password] [SETNAME clientname]]").unwrap();
        let Kind::Block(inner) = &hello[0].kind else {
            panic!()
        };
        assert_eq!(inner[1].token.as_deref(), Some("AUTH"));
        assert!(matches!(&inner[1].kind, Kind::Block(xs) if xs.len() == 2));
        assert_eq!(parse("x:double").unwrap()[0].kind, Kind::Value("double"));
    }

    #[test]
    fn malformed_syntax_lines_are_refused() {
        for bad in [
            "[key",
            "key]",
            "<A>",
            "<A|B",
            "key <A|B",
            "a [b ...]",
            "[ ]",
            "[a|]",
            "x:float",
            "[...]",
            "key ...",
            "a [a ... b]",
            "a [x|a ...]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subcommand_arity_follows_the_syntax_as_redis_counts_it() {
        let sub = |c: &str, s: &str| {
            let d = cmd::lookup(c).unwrap().doc.subcommands;
            arity(d.iter().find(|d| d.name == s).unwrap().syntax)
        };
        for (c, s, want) in [
            ("config", "get", -3),
            ("config", "set", -4),
            ("config", "resetstat", 2),
            ("config", "help", 2),
            ("command", "count", 2),
            ("command", "docs", -2),
            ("command", "getkeys", -3),
            ("command", "getkeysandflags", -3),
            ("command", "list", -2),
            ("memory", "usage", -3),
            ("object", "encoding", 3),
            ("client", "setname", 3),
            ("client", "setinfo", 4),
        ] {
            assert_eq!(sub(c, s), want, "{c}|{s}");
        }
        assert_eq!(arity("key [EX seconds|PERSIST]"), -3);
        assert_eq!(arity("key <LEFT|RIGHT>"), 4);
        assert_eq!(arity("key <LEFT|COUNT count>"), -4);
        assert_eq!(arity("numkeys key [key ...]"), -4);
        assert_eq!(arity("AUTH username password"), 5);
    }

    #[test]
    fn help_reads_as_redis_s() {
        let lines = help_lines("object").unwrap();
        assert_eq!(
            lines[0],
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
        );
        assert_eq!(lines[1], "ENCODING key");
        assert!(lines[2].starts_with("    ") && lines[2].len() > 4);
        assert_eq!(&lines[lines.len() - 2..], ["HELP", "    Print this help."]);
        assert_eq!(lines.iter().filter(|l| l.starts_with("HELP")).count(), 1);
        assert!(help_lines("get").is_none());
    }

    #[test]
    fn docs_reply_names_subcommands_with_a_pipe_and_skips_unknown_names() {
        let Reply::Map(all) = reply(&[]) else {
            panic!()
        };
        assert_eq!(all.len(), cmd::COMMANDS.len());
        let Reply::Map(some) = reply(&[Bytes::from("CLIENT"), Bytes::from("nosuch")]) else {
            panic!()
        };
        assert_eq!(some.len(), 1);
        let Reply::Map(fields) = &some[0].1 else {
            panic!()
        };
        let subs = &fields
            .iter()
            .find(|(k, _)| *k == bulk("subcommands"))
            .unwrap()
            .1;
        let Reply::Map(subs) = subs else { panic!() };
        assert!(subs.iter().any(|(k, _)| *k == bulk("client|setname")));
        let Reply::Map(one) = reply(&[Bytes::from("CONFIG|get"), Bytes::from("config|nosuch")])
        else {
            panic!()
        };
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, bulk("config|get"));
    }
}
