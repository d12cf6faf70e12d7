//! The command table, and the translation of string and key commands into engine writes.
//!
//! Every data command compiles to a [`Part`]: guards, a list of engine [`Write`]s (reads become
//! `Write::Get`) and a function that renders the reply from the writes' results. The same
//! translation serves a lone command, each command queued in MULTI (EXEC concatenates the parts
//! into one engine transaction) and KEEL.IDEM (whose reply is rendered again from the outcome the
//! engine stored, so a retry after a restart gets the same reply).

use bytes::Bytes;
use keel_engine::{ExpireIf, Guard, PutIf, Ttl, Write, WriteError, WriteResult};

use crate::resp::{parse_i64, Reply};

/// What a command does with the data, which decides who may run it (see [`crate::auth`]) and
/// what COMMAND INFO reports. One entry per command in [`COMMANDS`]; nothing else lists them.
///
/// The rule: a command that returns stored data needs `read`, one that changes data needs
/// `write`, and many need both. It follows Redis 7.2's command table: `READ` is a readonly
/// command, or a key spec with ACCESS ("returns, copies or uses the user data": GETSET, GETDEL,
/// INCR, RENAME, SET … GET); `WRITE` is Redis's `write` flag. A write's reply may still say
/// whether a key existed or a value's new length (DEL, SETNX, APPEND), as in Redis; it never
/// holds a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    /// Connection housekeeping: any authenticated user may run it.
    pub const NONE: Flags = Flags(0);
    /// Returns stored data: values, anything computed from one, key names, counts, TTLs.
    pub const READ: Flags = Flags(1);
    /// Changes stored data.
    pub const WRITE: Flags = Flags(2);
    /// Acts on the server as a whole (CONFIG, SHUTDOWN, SAVE, FLUSHALL, …).
    pub const ADMIN: Flags = Flags(4);
    /// The arguments decide whether READ or WRITE applies; the table holds the most a command
    /// can need, and [`flags`] works out what a given invocation needs.
    pub const VARIES: Flags = Flags(8);

    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Neither READ, WRITE nor ADMIN.
    pub const fn is_connection(self) -> bool {
        self.0 & (Flags::READ.0 | Flags::WRITE.0 | Flags::ADMIN.0) == 0
    }
}

pub struct Spec {
    pub name: &'static str,
    /// Redis's convention: n > 0 exactly n arguments (the name included), n < 0 at least -n.
    pub arity: i64,
    /// The most this command can need; [`flags`] gives what one invocation needs.
    pub flags: Flags,
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
}

const fn spec(name: &'static str, arity: i64, flags: Flags, keys: (i64, i64, i64)) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const KEY1: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);

const CONN: Flags = Flags::NONE;
const R: Flags = Flags::READ;
const W: Flags = Flags::WRITE;
const RW: Flags = Flags::READ.with(Flags::WRITE);
const ADMIN: Flags = Flags::ADMIN;
const ADMIN_W: Flags = Flags::ADMIN.with(Flags::WRITE);
const VARIES: Flags = Flags::VARIES;

/// Every command keel serves.
pub const COMMANDS: &[Spec] = &[
    spec("ping", -1, CONN, NO_KEYS),
    spec("echo", 2, CONN, NO_KEYS),
    spec("hello", -1, CONN, NO_KEYS),
    spec("auth", -2, CONN, NO_KEYS),
    spec("select", 2, CONN, NO_KEYS),
    spec("quit", -1, CONN, NO_KEYS),
    spec("reset", 1, CONN, NO_KEYS),
    spec("client", -2, CONN, NO_KEYS),
    spec("command", -1, CONN, NO_KEYS),
    spec("info", -1, CONN, NO_KEYS),
    spec("time", 1, CONN, NO_KEYS),
    spec("config", -2, ADMIN, NO_KEYS),
    spec("shutdown", -1, ADMIN, NO_KEYS),
    spec("dbsize", 1, R, NO_KEYS),
    spec("flushdb", -1, ADMIN_W, NO_KEYS),
    spec("flushall", -1, ADMIN_W, NO_KEYS),
    spec("get", 2, R, KEY1),
    // READ only with GET.
    spec("set", -3, RW.with(VARIES), KEY1),
    spec("setnx", 3, W, KEY1),
    spec("setex", 4, W, KEY1),
    spec("psetex", 4, W, KEY1),
    spec("getset", 3, RW, KEY1),
    spec("getdel", 2, RW, KEY1),
    // WRITE only with an option (EX, PX, EXAT, PXAT, PERSIST): without, it is a plain read.
    // Redis flags GETEX `write` always; keel lets a read-only user run the pure read.
    spec("getex", -2, RW.with(VARIES), KEY1),
    spec("mget", -2, R, ALL_KEYS),
    spec("mset", -3, W, (1, -1, 2)),
    spec("msetnx", -3, W, (1, -1, 2)),
    // The counters return the stored number plus the increment (Redis: ACCESS).
    spec("incr", 2, RW, KEY1),
    spec("decr", 2, RW, KEY1),
    spec("incrby", 3, RW, KEY1),
    spec("decrby", 3, RW, KEY1),
    spec("incrbyfloat", 3, RW, KEY1),
    spec("append", 3, W, KEY1),
    spec("strlen", 2, R, KEY1),
    spec("getrange", 4, R, KEY1),
    spec("del", -2, W, ALL_KEYS),
    spec("unlink", -2, W, ALL_KEYS),
    spec("exists", -2, R, ALL_KEYS),
    spec("type", 2, R, KEY1),
    // Moving a value uses it (Redis: ACCESS on the source key).
    spec("rename", 3, RW, (1, 2, 1)),
    spec("renamenx", 3, RW, (1, 2, 1)),
    spec("expire", -3, W, KEY1),
    spec("pexpire", -3, W, KEY1),
    spec("expireat", -3, W, KEY1),
    spec("pexpireat", -3, W, KEY1),
    spec("ttl", 2, R, KEY1),
    spec("pttl", 2, R, KEY1),
    spec("expiretime", 2, R, KEY1),
    spec("pexpiretime", 2, R, KEY1),
    spec("persist", 2, W, KEY1),
    spec("keys", 2, R, NO_KEYS),
    spec("scan", -2, R, NO_KEYS),
    spec("multi", 1, CONN, NO_KEYS),
    // Each queued command was checked as it was queued.
    spec("exec", 1, CONN, NO_KEYS),
    spec("discard", 1, CONN, NO_KEYS),
    // Reads the keys' versions (Redis: an RO key spec).
    spec("watch", -2, R, ALL_KEYS),
    spec("unwatch", 1, CONN, NO_KEYS),
    spec("waitaof", 4, CONN, NO_KEYS),
    spec("wait", 3, CONN, NO_KEYS),
    spec("keel.version", 2, R, KEY1),
    spec("keel.cas", 4, W, KEY1),
    // Stores its outcome; also needs what the wrapped command needs (see `crate::auth`).
    spec("keel.idem", -3, W, NO_KEYS),
    spec("save", 1, ADMIN, NO_KEYS),
    spec("bgsave", -1, ADMIN, NO_KEYS), // [SCHEDULE] is accepted and ignored,
    spec("lastsave", 1, CONN, NO_KEYS),
    spec("keel.backup", 2, ADMIN, NO_KEYS),
    spec("keel.cluster", -2, ADMIN, NO_KEYS),
    spec("keel.maintenance", -2, ADMIN, NO_KEYS),
];

/// What running `args` (`args[0]` the command, looked up as `spec`) needs: the table's flags,
/// narrowed by the arguments for the commands marked [`Flags::VARIES`]. Any `args` is fine,
/// arity-checked or not: an argument list it cannot make sense of gets the table's flags.
pub fn flags(spec: &Spec, args: &[Bytes]) -> Flags {
    let f = spec.flags;
    if !f.contains(Flags::VARIES) {
        return f;
    }
    let f = f.without(Flags::VARIES);
    let options = args.get(3..).unwrap_or_default();
    match spec.name {
        // An option token equal to GET may also be EX's amount ("SET k v EX get"), which
        // fails to parse anyway: needing READ for it refuses nothing that would work.
        "set" if !options.iter().any(|o| eq(o, "get")) => f.without(Flags::READ),
        "getex" if args.len() <= 2 => f.without(Flags::WRITE),
        _ => f,
    }
}

pub fn lookup(name: &str) -> Option<&'static Spec> {
    find(name.as_bytes()).map(|i| &COMMANDS[i])
}

/// The index in [`COMMANDS`] of the command a client named, in any case.
pub fn find(name: &[u8]) -> Option<usize> {
    COMMANDS
        .iter()
        .position(|s| name.eq_ignore_ascii_case(s.name.as_bytes()))
}

pub fn arity_ok(spec: &Spec, argc: usize) -> bool {
    let argc = argc as i64;
    if spec.arity >= 0 {
        argc == spec.arity
    } else {
        argc >= -spec.arity
    }
}

pub fn wrong_args(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

pub const NOT_INT: &str = "ERR value is not an integer or out of range";
pub const SYNTAX: &str = "ERR syntax error";

/// Renders a reply from this part's write results; `None` when a guard failed.
pub type Render = Box<dyn FnOnce(Option<&[WriteResult]>) -> Reply + Send>;

pub struct Part {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
    pub render: Render,
}

impl Part {
    fn new(
        writes: Vec<Write>,
        render: impl FnOnce(&[WriteResult]) -> Reply + Send + 'static,
    ) -> Part {
        Part {
            guards: Vec::new(),
            writes,
            render: Box::new(move |r| match r {
                Some(r) => render(r),
                None => Reply::NilArray,
            }),
        }
    }

    /// A part whose reply does not depend on the database (PING inside MULTI).
    pub fn fixed(reply: Reply) -> Part {
        Part::new(Vec::new(), move |_| reply)
    }

    /// Only `Get`s and no guards: it can be answered from a snapshot of the visible state.
    pub fn read_only(&self) -> bool {
        self.guards.is_empty() && self.writes.iter().all(|w| matches!(w, Write::Get { .. }))
    }
}

pub fn write_error(e: WriteError) -> Reply {
    Reply::err(match e {
        WriteError::NotAnInteger => NOT_INT,
        WriteError::Overflow => "ERR increment or decrement would overflow",
        WriteError::NotAFloat => "ERR value is not a valid float",
        WriteError::NotFinite => "ERR increment would produce NaN or Infinity",
        WriteError::NoSuchKey => "ERR no such key",
        WriteError::ValueTooLarge => "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
    })
}

/// Redis-style error reply for an engine error.
pub fn engine_error(e: &keel_engine::Error) -> Reply {
    match e {
        keel_engine::Error::Wal(w) => Reply::err(format!(
            "IOERR the write was not made durable and is not acknowledged: {w}"
        )),
        keel_engine::Error::ValueTooLarge { .. } => {
            Reply::err(format!("ERR string exceeds maximum allowed size ({e})"))
        }
        other => Reply::err(format!("ERR {other}")),
    }
}

/// A result that does not fit the command. It happens when a KEEL.IDEM id is reused for
/// another command: the retry gets the first command's stored outcome. Only the kind of result
/// is named: its value may be stored data the caller has no permission to read.
fn unexpected(r: &WriteResult) -> Reply {
    let kind = match r {
        WriteResult::Value(_) => "a value",
        WriteResult::Int(_) => "an integer",
        WriteResult::Put(_) => "a put",
        WriteResult::Existed(_) => "an existence flag",
        WriteResult::Failed(_) => "a failure",
        WriteResult::DeletedAll => "a flush",
    };
    Reply::err(format!(
        "ERR unexpected stored result ({kind}) for this command; was its KEEL.IDEM id used for \
         another command?"
    ))
}

fn value_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Value(Some(v)) => Reply::Bulk(v.clone()),
        WriteResult::Value(None) => Reply::Nil,
        other => unexpected(other),
    }
}

fn int_arg(b: &[u8]) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(|| Reply::err(NOT_INT))
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn invalid_expire(cmd: &str) -> Reply {
    Reply::err(format!("ERR invalid expire time in '{cmd}' command"))
}

/// An absolute expiry in Unix ms from an EX/PX/EXAT/PXAT-style amount. `positive`: the amount
/// must be > 0 (SET, SETEX, GETEX); EXPIRE accepts any value and a past time deletes the key.
fn expiry_ms(
    cmd: &str,
    amount: i64,
    unit_ms: i64,
    absolute: bool,
    positive: bool,
    now_ms: u64,
) -> Result<i64, Reply> {
    if positive && amount <= 0 {
        return Err(invalid_expire(cmd));
    }
    let ms = amount
        .checked_mul(unit_ms)
        .ok_or_else(|| invalid_expire(cmd))?;
    if absolute {
        Ok(ms)
    } else {
        ms.checked_add(now_ms as i64)
            .ok_or_else(|| invalid_expire(cmd))
    }
}

/// An expiry in the future, or the time it has already passed.
fn ttl_of(at_ms: i64) -> Ttl {
    Ttl::At(at_ms.max(0) as u64)
}

fn get(key: &Bytes) -> Write {
    Write::Get { key: key.clone() }
}

fn put(key: &Bytes, value: &Bytes, ttl: Ttl, only: PutIf) -> Write {
    Write::Put {
        key: key.clone(),
        value: value.clone(),
        ttl,
        only,
    }
}

/// Translates a data command (`name` lowercased, `a[0]` the command itself, arity already
/// checked). `None`: not a data command.
pub fn compile(name: &str, a: &[Bytes], now_ms: u64) -> Option<Result<Part, Reply>> {
    Some(match name {
        "get" => Ok(Part::new(vec![get(&a[1])], |r| value_reply(&r[0]))),
        "set" => compile_set(a, now_ms),
        "setnx" => Ok(Part::new(
            vec![put(&a[1], &a[2], Ttl::None, PutIf::Absent)],
            |r| Reply::Int(matches!(r[0], WriteResult::Put(true)) as i64),
        )),
        "setex" | "psetex" => (|| {
            let unit = if name == "setex" { 1000 } else { 1 };
            let at = expiry_ms(name, int_arg(&a[2])?, unit, false, true, now_ms)?;
            Ok(Part::new(
                vec![put(&a[1], &a[3], ttl_of(at), PutIf::Always)],
                |_| Reply::ok(),
            ))
        })(),
        "getset" => Ok(Part::new(
            vec![get(&a[1]), put(&a[1], &a[2], Ttl::None, PutIf::Always)],
            |r| value_reply(&r[0]),
        )),
        "getdel" => Ok(Part::new(
            vec![get(&a[1]), Write::Delete { key: a[1].clone() }],
            |r| value_reply(&r[0]),
        )),
        "getex" => compile_getex(a, now_ms),
        "mget" => Ok(Part::new(a[1..].iter().map(get).collect(), |r| {
            Reply::Array(r.iter().map(value_reply).collect())
        })),
        "mset" | "msetnx" => {
            if a.len().is_multiple_of(2) {
                return Some(Err(wrong_args(name)));
            }
            let writes = a[1..]
                .chunks(2)
                .map(|kv| put(&kv[0], &kv[1], Ttl::None, PutIf::Always))
                .collect();
            if name == "mset" {
                Ok(Part::new(writes, |_| Reply::ok()))
            } else {
                let guards = a[1..]
                    .chunks(2)
                    .map(|kv| Guard {
                        key: kv[0].clone(),
                        version: None,
                    })
                    .collect();
                Ok(Part {
                    guards,
                    writes,
                    render: Box::new(|r| Reply::Int(r.is_some() as i64)),
                })
            }
        }
        "incr" | "decr" | "incrby" | "decrby" => (|| {
            let by = match name {
                "incr" => 1,
                "decr" => -1,
                "incrby" => int_arg(&a[2])?,
                _ => int_arg(&a[2])?
                    .checked_neg()
                    .ok_or_else(|| Reply::err("ERR decrement would overflow"))?,
            };
            Ok(Part::new(
                vec![Write::Incr {
                    key: a[1].clone(),
                    by,
                }],
                |r| match r[0] {
                    WriteResult::Int(v) => Reply::Int(v),
                    WriteResult::Failed(e) => write_error(e),
                    ref other => unexpected(other),
                },
            ))
        })(),
        "incrbyfloat" => {
            let by = std::str::from_utf8(&a[2])
                .ok()
                .filter(|s| !s.is_empty() && !s.starts_with(char::is_whitespace))
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|f| !f.is_nan());
            match by {
                None => Err(Reply::err("ERR value is not a valid float")),
                Some(by) => Ok(Part::new(
                    vec![Write::IncrFloat {
                        key: a[1].clone(),
                        by,
                    }],
                    |r| match &r[0] {
                        WriteResult::Failed(e) => write_error(*e),
                        other => value_reply(other),
                    },
                )),
            }
        }
        "append" => Ok(Part::new(
            vec![Write::Append {
                key: a[1].clone(),
                suffix: a[2].clone(),
            }],
            |r| match r[0] {
                WriteResult::Int(v) => Reply::Int(v),
                WriteResult::Failed(e) => write_error(e),
                ref other => unexpected(other),
            },
        )),
        "strlen" => Ok(Part::new(vec![get(&a[1])], |r| match &r[0] {
            WriteResult::Value(v) => Reply::Int(v.as_ref().map_or(0, |v| v.len() as i64)),
            other => unexpected(other),
        })),
        "getrange" => (|| {
            let (start, end) = (int_arg(&a[2])?, int_arg(&a[3])?);
            Ok(Part::new(vec![get(&a[1])], move |r| match &r[0] {
                WriteResult::Value(v) => {
                    let v = v.clone().unwrap_or_default();
                    Reply::Bulk(getrange(&v, start, end))
                }
                other => unexpected(other),
            }))
        })(),
        "del" | "unlink" => Ok(Part::new(
            a[1..]
                .iter()
                .map(|k| Write::Delete { key: k.clone() })
                .collect(),
            |r| {
                Reply::Int(
                    r.iter()
                        .filter(|x| **x == WriteResult::Existed(true))
                        .count() as i64,
                )
            },
        )),
        "exists" => Ok(Part::new(a[1..].iter().map(get).collect(), |r| {
            Reply::Int(
                r.iter()
                    .filter(|x| matches!(x, WriteResult::Value(Some(_))))
                    .count() as i64,
            )
        })),
        "type" => Ok(Part::new(vec![get(&a[1])], |r| {
            Reply::Simple(
                if matches!(r[0], WriteResult::Value(Some(_))) {
                    "string"
                } else {
                    "none"
                }
                .into(),
            )
        })),
        "rename" | "renamenx" => {
            let nx = name == "renamenx";
            Ok(Part::new(
                vec![Write::Rename {
                    from: a[1].clone(),
                    to: a[2].clone(),
                    only_if_absent: nx,
                }],
                move |r| match r[0] {
                    WriteResult::Put(moved) if nx => Reply::Int(moved as i64),
                    WriteResult::Put(_) => Reply::ok(),
                    WriteResult::Failed(e) => write_error(e),
                    ref other => unexpected(other),
                },
            ))
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => (|| {
            let only = expire_options(&a[3..])?;
            let unit = if name.starts_with('p') { 1 } else { 1000 };
            let absolute = name.ends_with("at");
            let at = expiry_ms(name, int_arg(&a[2])?, unit, absolute, false, now_ms)?;
            // A time already past deletes the key (if the option holds), as in Redis: the
            // engine does that.
            let w = Write::Expire {
                key: a[1].clone(),
                at_ms: Some(at.max(1) as u64),
                only,
            };
            Ok(Part::new(vec![w], |r| {
                Reply::Int((r[0] == WriteResult::Existed(true)) as i64)
            }))
        })(),
        "persist" => Ok(Part::new(
            vec![Write::Expire {
                key: a[1].clone(),
                at_ms: None,
                only: ExpireIf::HasExpiry,
            }],
            |r| Reply::Int((r[0] == WriteResult::Existed(true)) as i64),
        )),
        "flushdb" | "flushall" => {
            if a.len() > 2 || (a.len() == 2 && !eq(&a[1], "sync") && !eq(&a[1], "async")) {
                Err(Reply::err(SYNTAX))
            } else {
                Ok(Part::new(vec![Write::DeleteAll], |_| Reply::ok()))
            }
        }
        "keel.cas" => (|| {
            let v = parse_i64(&a[2])
                .filter(|v| *v >= 0)
                .ok_or_else(|| Reply::err("ERR version must be a non-negative integer"))?;
            Ok(Part {
                guards: vec![Guard {
                    key: a[1].clone(),
                    version: (v > 0).then_some(v as u64),
                }],
                writes: vec![put(&a[1], &a[3], Ttl::None, PutIf::Always)],
                render: Box::new(|r| Reply::Int(r.is_some() as i64)),
            })
        })(),
        _ => return None,
    })
}

fn compile_set(a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let (key, value) = (&a[1], &a[2]);
    let mut only = PutIf::Always;
    let mut ttl = Ttl::None;
    let mut with_get = false;
    let mut ttl_set = false;
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        if eq(o, "nx") && only == PutIf::Always {
            only = PutIf::Absent;
        } else if eq(o, "xx") && only == PutIf::Always {
            only = PutIf::Present;
        } else if eq(o, "get") {
            with_get = true;
        } else if eq(o, "keepttl") && !ttl_set {
            ttl = Ttl::Keep;
            ttl_set = true;
        } else if !ttl_set
            && i + 1 < a.len()
            && (eq(o, "ex") || eq(o, "px") || eq(o, "exat") || eq(o, "pxat"))
        {
            let unit = if eq(o, "ex") || eq(o, "exat") {
                1000
            } else {
                1
            };
            let absolute = eq(o, "exat") || eq(o, "pxat");
            let at = expiry_ms("set", int_arg(&a[i + 1])?, unit, absolute, true, now_ms)?;
            ttl = ttl_of(at);
            ttl_set = true;
            i += 1;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    let p = put(key, value, ttl, only);
    Ok(if with_get {
        Part::new(vec![get(key), p], |r| value_reply(&r[0]))
    } else {
        Part::new(vec![p], |r| match r[0] {
            WriteResult::Put(true) => Reply::ok(),
            WriteResult::Put(false) => Reply::Nil,
            ref other => unexpected(other),
        })
    })
}

/// EXPIRE's NX, XX, GT and LT options, with Redis's error for the combinations it refuses.
fn expire_options(opts: &[Bytes]) -> Result<ExpireIf, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in opts {
        if eq(o, "nx") {
            nx = true;
        } else if eq(o, "xx") {
            xx = true;
        } else if eq(o, "gt") {
            gt = true;
        } else if eq(o, "lt") {
            lt = true;
        } else {
            return Err(Reply::err(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(o)
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireIf::NoExpiry,
        // GT already needs an expiry: no expiry counts as never, and nothing is later.
        (_, _, true, _) => ExpireIf::Later,
        (_, true, _, true) => ExpireIf::SoonerWithExpiry,
        (_, _, _, true) => ExpireIf::Sooner,
        (_, true, ..) => ExpireIf::HasExpiry,
        _ => ExpireIf::Always,
    })
}

fn compile_getex(a: &[Bytes], now_ms: u64) -> Result<Part, Reply> {
    let key = &a[1];
    let mut writes = vec![get(key)];
    match a.len() {
        2 => {}
        3 if eq(&a[2], "persist") => writes.push(Write::Expire {
            key: key.clone(),
            at_ms: None,
            only: ExpireIf::Always,
        }),
        4 => {
            let o = &a[2];
            let (unit, absolute) = if eq(o, "ex") {
                (1000, false)
            } else if eq(o, "px") {
                (1, false)
            } else if eq(o, "exat") {
                (1000, true)
            } else if eq(o, "pxat") {
                (1, true)
            } else {
                return Err(Reply::err(SYNTAX));
            };
            let at = expiry_ms("getex", int_arg(&a[3])?, unit, absolute, true, now_ms)?;
            writes.push(Write::Expire {
                key: key.clone(),
                at_ms: Some(at.max(1) as u64),
                only: ExpireIf::Always,
            });
        }
        _ => return Err(Reply::err(SYNTAX)),
    }
    Ok(Part::new(writes, |r| value_reply(&r[0])))
}

/// Redis's GETRANGE index rules: negative indexes count from the end, out-of-range ends clamp.
pub fn getrange(v: &Bytes, start: i64, end: i64) -> Bytes {
    let len = v.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    s = s.max(0);
    e = e.max(0);
    if e >= len {
        e = len - 1;
    }
    if s > e {
        return Bytes::new();
    }
    v.slice(s as usize..=e as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_matches_redis_examples() {
        let v = Bytes::from_static(b"This is a string");
        assert_eq!(getrange(&v, 0, 3), "This");
        assert_eq!(getrange(&v, -3, -1), "ing");
        assert_eq!(getrange(&v, 0, -1), "This is a string");
        assert_eq!(getrange(&v, 10, 100), "string");
        assert_eq!(getrange(&v, 5, 3), "");
        assert_eq!(getrange(&v, -1, -5), "");
    }

    #[test]
    fn every_command_has_a_sane_spec() {
        for s in COMMANDS {
            assert_eq!(s.name, s.name.to_lowercase());
            assert!(s.arity != 0);
            assert_eq!(
                COMMANDS.iter().filter(|t| t.name == s.name).count(),
                1,
                "{}",
                s.name
            );
        }
    }

    /// Every data command's flags agree with what its compiled writes do: any engine write or
    /// guard needs WRITE, any read of a stored value needs READ, and a command that compiles
    /// to reads only does not need WRITE. `cases` must cover every data command in the table.
    #[test]
    fn flags_agree_with_the_compiled_writes() {
        let args = |v: &[&str]| -> Vec<Bytes> {
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect()
        };
        // (invocation, whether it needs READ, whether it needs WRITE): said here, not read
        // from the table.
        let cases: &[(&[&str], bool, bool)] = &[
            (&["get", "k"], true, false),
            (&["set", "k", "v"], false, true),
            (&["set", "k", "v", "nx", "px", "5"], false, true),
            (&["set", "k", "v", "get"], true, true),
            (&["set", "k", "v", "xx", "GET", "keepttl"], true, true),
            (&["setnx", "k", "v"], false, true),
            (&["setex", "k", "5", "v"], false, true),
            (&["psetex", "k", "5", "v"], false, true),
            (&["getset", "k", "v"], true, true),
            (&["getdel", "k"], true, true),
            (&["getex", "k"], true, false),
            (&["getex", "k", "persist"], true, true),
            (&["getex", "k", "pxat", "5"], true, true),
            (&["mget", "a", "b"], true, false),
            (&["mset", "a", "1", "b", "2"], false, true),
            (&["msetnx", "a", "1"], false, true),
            (&["incr", "n"], true, true),
            (&["decr", "n"], true, true),
            (&["incrby", "n", "2"], true, true),
            (&["decrby", "n", "2"], true, true),
            (&["incrbyfloat", "n", "0.5"], true, true),
            (&["append", "k", "x"], false, true),
            (&["strlen", "k"], true, false),
            (&["getrange", "k", "0", "-1"], true, false),
            (&["del", "a", "b"], false, true),
            (&["unlink", "a"], false, true),
            (&["exists", "a", "b"], true, false),
            (&["type", "k"], true, false),
            (&["rename", "a", "b"], true, true),
            (&["renamenx", "a", "b"], true, true),
            (&["expire", "k", "5", "nx"], false, true),
            (&["pexpire", "k", "5"], false, true),
            (&["expireat", "k", "5"], false, true),
            (&["pexpireat", "k", "5"], false, true),
            (&["persist", "k"], false, true),
            (&["flushdb"], false, true),
            (&["flushall", "sync"], false, true),
            (&["keel.cas", "k", "0", "v"], false, true),
        ];
        for s in COMMANDS {
            let probe = args(&[s.name, "1", "1", "1", "1"]);
            if compile(s.name, &probe, 0).is_some() {
                assert!(
                    cases.iter().any(|(a, ..)| a[0] == s.name),
                    "{}: a data command without a case",
                    s.name
                );
            }
        }
        for &(a, read, write) in cases {
            let spec = lookup(a[0]).unwrap();
            let a = args(a);
            assert!(arity_ok(spec, a.len()), "{a:?}");
            let f = flags(spec, &a);
            assert_eq!(f.contains(Flags::READ), read, "{a:?}: READ");
            assert_eq!(f.contains(Flags::WRITE), write, "{a:?}: WRITE");
            assert!(!f.contains(Flags::VARIES));
            // The table holds the most a command can need.
            assert!(spec.flags.contains(f), "{a:?}");
            let p = compile(spec.name, &a, 1_000).unwrap().unwrap();
            let gets = p.writes.iter().any(|w| matches!(w, Write::Get { .. }));
            let changes = !p.guards.is_empty() || !p.read_only();
            assert!(!gets || read, "{a:?} reads a stored value without READ");
            assert!(!changes || write, "{a:?} writes without WRITE");
            assert!(changes || !write, "{a:?} only reads, yet needs WRITE");
        }
        // Nonsense arguments get the table's flags, and never a panic.
        for s in COMMANDS {
            for n in 0..5 {
                let f = flags(s, &args(&vec!["x"; n]));
                assert!(s.flags.contains(f));
            }
        }
    }

    #[test]
    fn set_options() {
        let args = |v: &[&str]| -> Vec<Bytes> {
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect()
        };
        let c = |v: &[&str]| compile("set", &args(v), 1_000).unwrap();
        assert!(c(&["set", "k", "v", "nx", "xx"]).is_err());
        assert!(c(&["set", "k", "v", "ex", "1", "px", "1"]).is_err());
        assert!(c(&["set", "k", "v", "ex"]).is_err());
        assert_eq!(
            c(&["set", "k", "v", "ex", "0"]).err(),
            Some(Reply::err("ERR invalid expire time in 'set' command"))
        );
        assert_eq!(
            c(&["set", "k", "v", "ex", "x"]).err(),
            Some(Reply::err(NOT_INT))
        );
        let p = c(&["set", "k", "v", "NX", "GET", "PX", "5"]).unwrap();
        assert_eq!(p.writes.len(), 2);
        assert_eq!(
            p.writes[1],
            put(
                &Bytes::from("k"),
                &Bytes::from("v"),
                Ttl::At(1_005),
                PutIf::Absent
            )
        );
        assert!(c(&["set", "k", "v", "ex", "9223372036854775807"]).is_err());
    }
}
