//! The command registry: one entry per command keel serves, holding everything about it.
//!
//! An entry ([`Command`]) holds the command's spec (arity, [`Flags`], key positions), what Redis
//! 7.2's command table says of it (its flags, ACL categories and key specs), its docs (the syntax
//! line and summary COMMAND DOCS and `help` show) and how it runs ([`Run`]). COMMAND
//! ([`introspect`]), the permission check ([`crate::auth`]), the MULTI rules and the dispatch
//! all read from the entry; nothing else lists commands. The entries live with their family's
//! code: [`connection`], [`server`], [`cluster`], [`strings`], [`keys`], [`hashes`], [`sets`], [`lists`],
//! [`zsets`], [`bits`].
//!
//! Every data command compiles to a [`Part`]: guards, a list of engine [`Write`]s (reads become
//! `Write::Get`) and a function that renders the reply from the writes' results. The same
//! translation serves a lone command, each command queued in MULTI (EXEC concatenates the parts
//! into one engine transaction) and KEEL.IDEM (whose reply is rendered again from the outcome the
//! engine stored, so a retry after a restart gets the same reply).

use std::sync::LazyLock;

use bytes::Bytes;
use keel_engine::{Guard, PutIf, Read, Ttl, Write, WriteError, WriteResult};

use crate::docs::Doc;
use crate::resp::{parse_i64, Reply};
use crate::HashMap;

pub use introspect::{key_at, GetKeys, KeyFlags, Keys};

pub mod bits;
pub mod cluster;
pub mod connection;
pub mod hashes;
pub mod introspect;
pub mod keys;
pub mod lists;
pub mod pubsub;
pub mod scripting;
pub mod server;
pub mod sets;
pub mod streams;
pub mod strings;
pub mod zsets;

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

/// Where a command's keys are, as COMMAND INFO reports them: first, last (negative: from the
/// end) and step; all zero for none. Keys a single range cannot describe are given by
/// [`Command::key_specs`] (and [`Command::get_keys`]); this range is then the part of them one
/// range covers, as Redis reports it.
pub type KeySpec = (i64, i64, i64);

pub const NO_KEYS: KeySpec = (0, 0, 0);
pub const KEY1: KeySpec = (1, 1, 1);
pub const ALL_KEYS: KeySpec = (1, -1, 1);

pub const CONN: Flags = Flags::NONE;
pub const R: Flags = Flags::READ;
pub const W: Flags = Flags::WRITE;
pub const RW: Flags = Flags::READ.with(Flags::WRITE);
pub const ADMIN: Flags = Flags::ADMIN;
pub const ADMIN_W: Flags = Flags::ADMIN.with(Flags::WRITE);
pub const VARIES: Flags = Flags::VARIES;

/// Translates a data command (`name` as the registry spells it, `a[0]` the command itself,
/// arity already checked) at the time `now_ms`.
pub type Compile = fn(name: &'static str, a: &[Bytes], now_ms: u64) -> Result<Part, Reply>;

/// How a command runs.
#[derive(Clone, Copy)]
pub enum Run {
    /// A data command: compiled to a [`Part`] and run by the engine, alone, in MULTI or under
    /// KEEL.IDEM.
    Data(Compile),
    /// A reply from the arguments alone (PING, ECHO, TIME); queued in MULTI like data.
    Local(fn(&[Bytes]) -> Reply),
    /// Run by the connection ([`crate::server`]): it needs the session's state, the server's or
    /// a read longer than a key.
    Conn,
}

/// What a command does when sent inside MULTI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InMulti {
    /// Queued for EXEC (data and local commands).
    Queue,
    /// Runs at once: it controls the transaction or the connection (EXEC, DISCARD, …).
    Run,
    /// Refused, and the transaction is marked failed: keel cannot run it inside a transaction
    /// (Redis can).
    Refuse,
    /// Refused as Redis refuses it (its `no-multi` flag), and the transaction is marked failed.
    Forbid,
}

/// One command: its spec, its docs and how it runs.
pub struct Command {
    pub name: &'static str,
    /// Redis's convention: n > 0 exactly n arguments (the name included), n < 0 at least -n.
    pub arity: i64,
    /// The most this command can need; [`flags`] gives what one invocation needs.
    pub flags: Flags,
    pub keys: KeySpec,
    /// Redis's flags for the command, as COMMAND INFO shows them (`write denyoom fast`).
    pub redis_flags: &'static str,
    /// The ACL categories Redis names for it (`@string`); those its flags imply are added (see
    /// [`introspect`]). They describe the command; they decide no permission.
    pub acl: &'static str,
    /// What the command does to the keys at `keys` (`RO access`), when one range holds them.
    pub key_flags: &'static str,
    /// Its key specs, when one range with `key_flags` cannot describe its keys.
    pub key_specs: &'static [Keys],
    /// Finds its keys where the specs cannot, or where what it does to them depends on the
    /// arguments (SET … GET).
    pub get_keys: Option<GetKeys>,
    pub doc: Doc,
    pub run: Run,
    pub in_multi: InMulti,
    /// Runs before the connection has authenticated (AUTH, HELLO, QUIT).
    pub before_auth: bool,
    /// A blocking command (BLPOP and friends): outside MULTI, the connection waits while its
    /// data command finds nothing (see [`crate::blocking`]).
    pub block: Option<Block>,
}

/// How long a blocking command waits: `None` not at all (XREAD without BLOCK), `Some(None)`
/// for ever, `Some(Some(d))` at most `d`.
pub type Wait = Option<Option<std::time::Duration>>;

/// Rewrites a blocking command's arguments against the state, before it waits.
pub type Prepare = fn(&keel_engine::ReadView<'_>, &[Bytes]) -> Vec<Bytes>;

/// Where a blocking command's timeout and keys are.
#[derive(Clone, Copy)]
pub struct Block {
    /// The wait the arguments ask for, or Redis's error for a bad timeout.
    pub wait: fn(&[Bytes]) -> Result<Wait, Reply>,
    /// The keys to wait on.
    pub keys: fn(&[Bytes]) -> Vec<Bytes>,
    /// Rewrites the arguments against the state once, before the first try (XREAD's `$`
    /// becomes the stream's last ID, so that what comes after is what it waits for).
    pub prepare: Option<Prepare>,
}

impl Block {
    /// A list or sorted set command's wait: a timeout argument in seconds (a float; 0: for
    /// ever), always.
    pub fn seconds(t: &[u8]) -> Result<Wait, Reply> {
        let t = std::str::from_utf8(t)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|t| t.is_finite())
            .ok_or_else(|| Reply::err("ERR timeout is not a float or out of range"))?;
        if t < 0.0 {
            return Err(Reply::err("ERR timeout is negative"));
        }
        // Redis holds timeouts as Unix milliseconds in an i64.
        if t * 1000.0 >= i64::MAX as f64 {
            return Err(Reply::err("ERR timeout is out of range"));
        }
        // Past about 30 years a timeout is as good as none.
        Ok(Some(
            (t > 0.0 && t < 1e9).then(|| std::time::Duration::from_secs_f64(t)),
        ))
    }
}

impl Command {
    /// An entry run by the connection, refused in MULTI, without docs yet.
    pub const fn new(name: &'static str, arity: i64, flags: Flags, keys: KeySpec) -> Command {
        Command {
            name,
            arity,
            flags,
            keys,
            redis_flags: "",
            acl: "",
            key_flags: "",
            key_specs: &[],
            get_keys: None,
            doc: crate::docs::doc(name, "", "", ""),
            run: Run::Conn,
            in_multi: InMulti::Refuse,
            before_auth: false,
            block: None,
        }
    }

    /// What Redis 7.2's command table says of it: its flags (`write denyoom fast`) and the ACL
    /// categories it names (`@string`).
    pub const fn redis(mut self, flags: &'static str, acl: &'static str) -> Command {
        self.redis_flags = flags;
        self.acl = acl;
        self
    }

    /// What it does to the keys at [`Command::keys`], as Redis's key spec flags say it.
    pub const fn key_flags(mut self, flags: &'static str) -> Command {
        self.key_flags = flags;
        self
    }

    pub const fn key_specs(mut self, specs: &'static [Keys]) -> Command {
        self.key_specs = specs;
        self
    }

    pub const fn get_keys(mut self, get_keys: GetKeys) -> Command {
        self.get_keys = Some(get_keys);
        self
    }

    pub const fn blocks(mut self, block: Block) -> Command {
        self.block = Some(block);
        self
    }

    /// Its docs: redis-cli's group, the syntax line after the name, a one-line summary.
    pub const fn doc(
        mut self,
        group: &'static str,
        syntax: &'static str,
        summary: &'static str,
    ) -> Command {
        self.doc.group = group;
        self.doc.syntax = syntax;
        self.doc.summary = summary;
        self
    }

    pub const fn subcommands(mut self, subcommands: &'static [Doc]) -> Command {
        self.doc.subcommands = subcommands;
        self
    }

    pub const fn data(mut self, compile: Compile) -> Command {
        self.run = Run::Data(compile);
        self.in_multi = InMulti::Queue;
        self
    }

    pub const fn local(mut self, reply: fn(&[Bytes]) -> Reply) -> Command {
        self.run = Run::Local(reply);
        self.in_multi = InMulti::Queue;
        self
    }

    /// Refused inside MULTI, as Redis refuses it.
    pub const fn no_multi(mut self) -> Command {
        self.in_multi = InMulti::Forbid;
        self
    }

    /// A command the connection runs that MULTI queues: it runs at EXEC, after the
    /// transaction's writes are durable, and its reply takes its place in EXEC's.
    pub const fn queued_in_multi(mut self) -> Command {
        self.in_multi = InMulti::Queue;
        self
    }

    pub const fn runs_in_multi(mut self) -> Command {
        self.in_multi = InMulti::Run;
        self
    }

    pub const fn before_auth(mut self) -> Command {
        self.before_auth = true;
        self
    }

    /// Compiles this data command; `None` when it is not one.
    pub fn compile(&self, a: &[Bytes], now_ms: u64) -> Option<Result<Part, Reply>> {
        match self.run {
            Run::Data(compile) => Some(compile(self.name, a, now_ms)),
            _ => None,
        }
    }
}

/// Every command keel serves, family by family. A command's index here is stable for the
/// process (the metrics count by it).
pub static COMMANDS: LazyLock<Vec<&'static Command>> = LazyLock::new(|| {
    [
        connection::COMMANDS,
        server::COMMANDS,
        cluster::COMMANDS,
        strings::COMMANDS,
        keys::COMMANDS,
        hashes::COMMANDS,
        sets::COMMANDS,
        lists::COMMANDS,
        zsets::COMMANDS,
        streams::COMMANDS,
        bits::COMMANDS,
        pubsub::COMMANDS,
        scripting::COMMANDS,
    ]
    .into_iter()
    .flatten()
    .collect()
});

/// Longest command name the registry holds; longer names are unknown without a lookup.
const NAME_MAX: usize = 32;

static INDEX: LazyLock<HashMap<&'static [u8], usize>> = LazyLock::new(|| {
    COMMANDS
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_bytes(), i))
        .collect()
});

/// What running `args` (`args[0]` the command, looked up as `spec`) needs: the table's flags,
/// narrowed by the arguments for the commands marked [`Flags::VARIES`]. Any `args` is fine,
/// arity-checked or not: an argument list it cannot make sense of gets the table's flags.
pub fn flags(spec: &Command, args: &[Bytes]) -> Flags {
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
        "sort" if !args.iter().skip(2).any(|o| eq(o, "store")) => f.without(Flags::WRITE),
        "xgroup" if args.get(1).is_some_and(|s| eq(s, "help")) => f.without(Flags::WRITE),
        // CLIENT's subcommands that see or act on other connections need admin.
        "client"
            if !args.get(1).is_some_and(|s| {
                ["list", "kill", "pause", "unpause", "no-evict"]
                    .iter()
                    .any(|a| eq(s, a))
            }) =>
        {
            f.without(Flags::ADMIN)
        }
        // FUNCTION's subcommands that only read what is loaded need nothing.
        "function"
            if args
                .get(1)
                .is_some_and(|s| ["list", "stats", "help"].iter().any(|a| eq(s, a))) =>
        {
            f.without(Flags::ADMIN)
        }
        "module" if args.get(1).is_some_and(|s| eq(s, "help")) => f.without(Flags::ADMIN),
        // ACL's subcommands that show only the caller or fixed facts need nothing; the rest
        // show every user and the log of refusals, and need admin.
        "acl"
            if args.get(1).is_some_and(|s| {
                ["whoami", "cat", "genpass", "help"]
                    .iter()
                    .any(|a| eq(s, a))
            }) =>
        {
            f.without(Flags::ADMIN)
        }
        _ => f,
    }
}

/// The command a client named, in any case.
pub fn lookup(name: &str) -> Option<&'static Command> {
    find(name.as_bytes()).map(|i| COMMANDS[i])
}

/// Of the command at `index` in [`COMMANDS`], whether Redis flags it `noscript` (no script may
/// call it) and `may_replicate` (no read-only script may): read once per command, not split out
/// of its flags at every `redis.call`.
pub fn script_limits(index: usize) -> ScriptLimits {
    static LIMITS: LazyLock<Vec<ScriptLimits>> = LazyLock::new(|| {
        (COMMANDS.iter())
            .map(|c| {
                let has = |f: &str| c.redis_flags.split(' ').any(|g| g == f);
                ScriptLimits {
                    noscript: has("noscript"),
                    may_replicate: has("may_replicate"),
                }
            })
            .collect()
    });
    LIMITS[index]
}

/// See [`script_limits`].
#[derive(Clone, Copy, Debug)]
pub struct ScriptLimits {
    pub noscript: bool,
    pub may_replicate: bool,
}

/// The index in [`COMMANDS`] of the command a client named, in any case: one hash lookup.
pub fn find(name: &[u8]) -> Option<usize> {
    let mut lower = [0u8; NAME_MAX];
    let lower = lower.get_mut(..name.len())?;
    for (l, b) in lower.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    INDEX.get(&lower[..]).copied()
}

pub fn arity_ok(spec: &Command, argc: usize) -> bool {
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
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// Makes a part's reply from its results, which it may take apart (moving values out rather
/// than copying them), or from `None` when a guard failed.
pub type Render = Box<dyn FnOnce(Option<&mut [WriteResult]>) -> Reply + Send>;

pub struct Part {
    pub guards: Vec<Guard>,
    pub writes: Vec<Write>,
    pub render: Render,
    /// A script queued in MULTI (EVAL, FCALL and their kin), run at EXEC in the transaction;
    /// it has no writes of its own.
    pub script: Option<QueuedScript>,
}

/// A script command queued in MULTI: its arguments, and whether it may write (which CLIENT
/// PAUSE WRITE holds).
pub struct QueuedScript {
    pub args: Vec<Bytes>,
    pub may_write: bool,
}

impl Part {
    fn new(
        writes: Vec<Write>,
        render: impl FnOnce(&mut [WriteResult]) -> Reply + Send + 'static,
    ) -> Part {
        Part {
            guards: Vec::new(),
            writes,
            render: Box::new(move |r| match r {
                Some(r) => render(r),
                None => Reply::NilArray,
            }),
            script: None,
        }
    }

    /// A script command queued in MULTI.
    pub fn script(args: Vec<Bytes>, may_write: bool) -> Part {
        Part {
            script: Some(QueuedScript { args, may_write }),
            ..Part::new(Vec::new(), |_| Reply::NilArray)
        }
    }

    /// Whether it may write when EXEC runs it.
    pub fn may_write(&self) -> bool {
        match &self.script {
            Some(s) => s.may_write,
            None => !self.read_only(),
        }
    }

    /// A part whose reply does not depend on the database, made at EXEC (PING, TIME or
    /// CONFIG inside MULTI).
    pub fn deferred(reply: impl FnOnce() -> Reply + Send + 'static) -> Part {
        Part::new(Vec::new(), move |_| reply())
    }

    /// Only reads and no guards: it can be answered from a read of the visible state (never a
    /// script, which runs in a transaction).
    pub fn read_only(&self) -> bool {
        self.script.is_none() && self.guards.is_empty() && self.writes.iter().all(Write::is_read)
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
        WriteError::WrongType => WRONGTYPE,
        WriteError::IndexOutOfRange => "ERR index out of range",
        WriteError::NotANumber => "ERR resulting score is not a number (NaN)",
        WriteError::StreamIdTooSmall => {
            "ERR The ID specified in XADD is equal or smaller than the target stream top item"
        }
        WriteError::StreamIdZero => "ERR The ID specified in XADD must be greater than 0-0",
        WriteError::StreamSetIdTooSmall => {
            "ERR The ID specified in XSETID is smaller than the target stream top item"
        }
        WriteError::StreamSetIdEntriesAdded => {
            "ERR The entries_added specified in XSETID is smaller than the target stream length"
        }
        WriteError::StreamSetIdMaxDeleted => {
            "ERR The ID specified in XSETID is smaller than the max_deleted_entry_id"
        }
        WriteError::NoGroup => "NOGROUP No such key or consumer group",
        WriteError::GroupExists => "BUSYGROUP Consumer Group name already exists",
        WriteError::BusyKey => "BUSYKEY Target key name already exists.",
        WriteError::BadPayload => "ERR DUMP payload version or checksum are wrong",
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
        WriteResult::Values(_) => "values",
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
        WriteResult::Failed(e) => write_error(*e),
        other => unexpected(other),
    }
}

/// An integer result, or the write's error.
fn int_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Int(v) => Reply::Int(*v),
        WriteResult::Failed(e) => write_error(*e),
        other => unexpected(other),
    }
}

/// [`value_reply`], moving the value out of the result: a clone of a freshly copied `Bytes`
/// allocates (it becomes shared), a move does not.
fn take_value_reply(r: &mut WriteResult) -> Reply {
    match r {
        WriteResult::Value(v) => v.take().map_or(Reply::Nil, Reply::Bulk),
        other => value_reply(other),
    }
}

/// [`values_reply`], moving the values out of the result (see [`take_value_reply`]).
fn take_values_reply(r: &mut WriteResult) -> Reply {
    match r {
        WriteResult::Values(v) => Reply::Array(
            v.iter_mut()
                .map(|v| v.take().map_or(Reply::Nil, Reply::Bulk))
                .collect(),
        ),
        other => value_reply(other),
    }
}

/// Values as an array of bulk strings and nils, or the read's error.
fn values_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Values(v) => Reply::Array(v.iter().map(bulk_or_nil).collect()),
        other => value_reply(other),
    }
}

fn bulk_or_nil(v: &Option<Bytes>) -> Reply {
    v.clone().map_or(Reply::Nil, Reply::Bulk)
}

/// The most elements HRANDFIELD and SRANDMEMBER return for a negative count (repeats
/// allowed), so that a request cannot make the server build an unbounded reply (P11).
const RANDOM_REPLY_MAX: i64 = 1 << 20;

/// Checks a random read's count (HRANDFIELD, ZRANDMEMBER) against Redis's bounds, and keel's:
/// a negative count's answer (repeats allowed) must fit in a reply.
fn random_count(count: i64, with_values: bool, what: &str) -> Result<(), Reply> {
    let doubled_overflows = with_values && !(-i64::MAX / 2..=i64::MAX / 2).contains(&count);
    if doubled_overflows || count < -i64::MAX {
        return Err(Reply::err("ERR value is out of range"));
    }
    if count < -RANDOM_REPLY_MAX {
        return Err(Reply::err(format!(
            "ERR value is out of range: keel returns at most {RANDOM_REPLY_MAX} random {what}"
        )));
    }
    Ok(())
}

/// What makes (name, value) reply pairs of a read's flat values (a hash's, a sorted set's).
type PairsOf = fn(&[Option<Bytes>]) -> Vec<(Reply, Reply)>;

/// HRANDFIELD and ZRANDMEMBER: `a` is the command (key, then an optional count and `option`,
/// WITHVALUES or WITHSCORES), `op` the engine's read for a count and a seed, `pairs` what
/// makes (name, value) pairs of its result. The reply: one name (nil for none) without a
/// count, else the pairs with `option`, or the names.
fn random_pairs(
    a: &[Bytes],
    option: &str,
    what: &str,
    op: fn(i64, u64) -> Read,
    pairs: PairsOf,
) -> Result<Part, Reply> {
    let count = match a.get(2) {
        None => None,
        Some(c) => Some(int_arg(c)?),
    };
    let with_values = match a.get(3) {
        None => false,
        Some(o) if eq(o, option) && a.len() == 4 => true,
        Some(_) => return Err(Reply::err(SYNTAX)),
    };
    if let Some(c) = count {
        random_count(c, with_values, what)?;
    }
    let read_op = op(count.unwrap_or(1), random());
    Ok(Part::new(vec![read(&a[1], read_op)], move |r| {
        let mut picked = match &r[0] {
            WriteResult::Values(v) => pairs(v).into_iter(),
            other => return values_reply(other),
        };
        match (count, with_values) {
            (None, _) => picked.next().map_or(Reply::Nil, |(name, _)| name),
            (Some(_), true) => Reply::Pairs(picked.collect()),
            (Some(_), false) => Reply::Array(picked.map(|(name, _)| name).collect()),
        }
    }))
}

/// A float argument as Redis reads one: no NaN, no leading space, and nothing out of a
/// double's range (`1e400` is refused, not read as inf; `1e-400` is refused, not read as 0).
fn float_arg(b: &[u8]) -> Result<f64, Reply> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with(char::is_whitespace))
        .and_then(keel_engine::parse_double)
        .ok_or_else(|| Reply::err("ERR value is not a valid float"))
}

/// A random number for a read's reply (HRANDFIELD, SRANDMEMBER): each call hashes a fresh
/// counter with a per-process random key. A read's randomness needs no logging: it changes
/// nothing.
pub(crate) fn random() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    STATE.hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// HSCAN's, SSCAN's and ZSCAN's arguments after the key.
struct ScanArgs {
    cursor: u64,
    pattern: Option<Bytes>,
    /// COUNT, 10 by default as in Redis: how many elements a call visits (MATCH filters them
    /// afterwards, so fewer may come back).
    count: usize,
}

impl ScanArgs {
    /// From `a[2]` (the cursor) on, checked as Redis checks them.
    fn parse(a: &[Bytes]) -> Result<ScanArgs, Reply> {
        let cursor = std::str::from_utf8(&a[2])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Reply::err("ERR invalid cursor"))?;
        let mut s = ScanArgs {
            cursor,
            pattern: None,
            count: 10,
        };
        for o in a[3..].chunks(2) {
            match o {
                [name, p] if eq(name, "match") => s.pattern = Some(p.clone()),
                [name, c] if eq(name, "count") => match int_arg(c)? {
                    n if n < 1 => return Err(Reply::err(SYNTAX)),
                    n => s.count = usize::try_from(n).unwrap_or(usize::MAX),
                },
                _ => return Err(Reply::err(SYNTAX)),
            }
        }
        Ok(s)
    }

    /// The reply to a scan read's result (the next cursor, then the elements, `group` values
    /// to an element: 2 for a field and its value): the cursor and the elements whose first
    /// value matches the pattern.
    fn reply(&self, r: &mut WriteResult, group: usize) -> Reply {
        let WriteResult::Values(v) = r else {
            return take_values_reply(r);
        };
        let cursor = bulk_or_nil(&v[0]);
        let found = v[1..]
            .chunks(group)
            .filter(|e| match (&self.pattern, &e[0]) {
                (Some(p), Some(first)) => crate::glob::matches(p, first),
                _ => true,
            })
            .flatten()
            .map(bulk_or_nil)
            .collect();
        Reply::Array(vec![cursor, Reply::Array(found)])
    }
}

/// LMPOP's and ZMPOP's arguments after the command (their blocking forms' after the timeout):
/// numkeys, the keys, one of `sides` and an optional COUNT. Returns the keys, whether the side
/// named is the second of `sides`, and the count.
fn mpop_args(a: &[Bytes], sides: [&str; 2]) -> Result<(Vec<Bytes>, bool, usize), Reply> {
    let n = match parse_i64(&a[0]) {
        Some(n) if n > 0 => n as usize,
        _ => return Err(Reply::err("ERR numkeys should be greater than 0")),
    };
    if n + 1 >= a.len() {
        return Err(Reply::err(SYNTAX));
    }
    let second = match &a[1 + n] {
        s if eq(s, sides[0]) => false,
        s if eq(s, sides[1]) => true,
        _ => return Err(Reply::err(SYNTAX)),
    };
    let count = match &a[2 + n..] {
        [] => 1,
        [o, c] if eq(o, "count") => match parse_i64(c) {
            Some(c) if c > 0 => c as usize,
            _ => return Err(Reply::err("ERR count should be greater than 0")),
        },
        _ => return Err(Reply::err(SYNTAX)),
    };
    Ok((a[1..1 + n].to_vec(), second, count))
}

/// Reads `key` of any type with `op`.
fn read(key: &Bytes, op: Read) -> Write {
    Write::Read {
        key: key.clone(),
        op,
    }
}

/// Reads the string at `key`, then does `then` unless the key holds another type.
fn get_then(key: &Bytes, then: Write) -> Write {
    Write::GetThen {
        key: key.clone(),
        then: Box::new(then),
    }
}

fn int_arg(b: &[u8]) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(|| Reply::err(NOT_INT))
}

pub(crate) fn eq(a: &[u8], b: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_sane_entry() {
        for s in COMMANDS.iter() {
            assert_eq!(s.name, s.name.to_lowercase());
            assert!(s.name.len() <= NAME_MAX, "{}", s.name);
            assert!(s.arity != 0);
            assert_eq!(s.doc.name, s.name);
            assert!(!s.doc.group.is_empty(), "{}: no group", s.name);
            assert!(!s.doc.summary.is_empty(), "{}: no summary", s.name);
            assert_eq!(
                COMMANDS.iter().filter(|t| t.name == s.name).count(),
                1,
                "{}",
                s.name
            );
            // Found by its name in any case, and at its own index.
            let i = COMMANDS.iter().position(|t| t.name == s.name);
            assert_eq!(find(s.name.as_bytes()), i);
            assert_eq!(find(s.name.to_uppercase().as_bytes()), i);
            // Data and local commands queue in MULTI; the rest run at once or are refused.
            match s.run {
                Run::Data(_) | Run::Local(_) => assert_eq!(s.in_multi, InMulti::Queue),
                Run::Conn if s.in_multi == InMulti::Queue => {
                    assert!(crate::server::queues_in_multi(s.name), "{}", s.name)
                }
                Run::Conn => {}
            }
        }
        assert_eq!(find(b"no-such-command"), None);
        assert_eq!(find(&[b'g'; 200]), None);
        assert_eq!(find(b""), None);
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
            (&["hset", "h", "f", "v", "g", "w"], false, true),
            (&["hmset", "h", "f", "v"], false, true),
            (&["hsetnx", "h", "f", "v"], false, true),
            (&["hget", "h", "f"], true, false),
            (&["hmget", "h", "f", "g"], true, false),
            (&["hgetall", "h"], true, false),
            (&["hkeys", "h"], true, false),
            (&["hvals", "h"], true, false),
            (&["hlen", "h"], true, false),
            (&["hexists", "h", "f"], true, false),
            (&["hstrlen", "h", "f"], true, false),
            (&["hdel", "h", "f", "g"], false, true),
            (&["hincrby", "h", "f", "2"], true, true),
            (&["hincrbyfloat", "h", "f", "0.5"], true, true),
            (&["hrandfield", "h", "-3", "withvalues"], true, false),
            (
                &["hscan", "h", "0", "match", "f*", "count", "5"],
                true,
                false,
            ),
            (&["sadd", "s", "a", "b"], false, true),
            (&["srem", "s", "a"], false, true),
            (&["smembers", "s"], true, false),
            (&["sismember", "s", "a"], true, false),
            (&["smismember", "s", "a", "b"], true, false),
            (&["scard", "s"], true, false),
            (&["spop", "s", "2"], true, true),
            (&["srandmember", "s", "-2"], true, false),
            (&["smove", "s", "t", "a"], false, true),
            (&["sinter", "s", "t"], true, false),
            (&["sunion", "s", "t"], true, false),
            (&["sdiff", "s", "t"], true, false),
            (&["sintercard", "2", "s", "t", "limit", "3"], true, false),
            (&["sinterstore", "d", "s", "t"], false, true),
            (&["sunionstore", "d", "s", "t"], false, true),
            (&["sdiffstore", "d", "s", "t"], false, true),
            (&["sscan", "s", "0", "match", "a*"], true, false),
            (&["lpush", "l", "a", "b"], false, true),
            (&["rpush", "l", "a"], false, true),
            (&["lpushx", "l", "a"], false, true),
            (&["rpushx", "l", "a"], false, true),
            (&["lpop", "l"], true, true),
            (&["rpop", "l", "2"], true, true),
            (&["llen", "l"], true, false),
            (&["lrange", "l", "0", "-1"], true, false),
            (&["lindex", "l", "0"], true, false),
            (&["lset", "l", "0", "x"], false, true),
            (&["linsert", "l", "before", "a", "x"], false, true),
            (&["lrem", "l", "0", "a"], false, true),
            (&["ltrim", "l", "0", "1"], false, true),
            (
                &["lpos", "l", "a", "rank", "-1", "count", "0", "maxlen", "9"],
                true,
                false,
            ),
            (&["lmove", "l", "m", "left", "right"], true, true),
            (&["rpoplpush", "l", "m"], true, true),
            (&["lmpop", "2", "l", "m", "left", "count", "2"], true, true),
            (&["blpop", "l", "m", "0"], true, true),
            (&["brpop", "l", "0.5"], true, true),
            (&["blmove", "l", "m", "left", "right", "0"], true, true),
            (&["brpoplpush", "l", "m", "0"], true, true),
            (&["blmpop", "0", "1", "l", "right"], true, true),
            (&["substr", "k", "0", "1"], true, false),
            (&["setrange", "k", "1", "x"], false, true),
            (&["lcs", "a", "b", "idx"], true, false),
            (&["setbit", "k", "7", "1"], true, true),
            (&["getbit", "k", "7"], true, false),
            (&["bitcount", "k", "0", "-1", "bit"], true, false),
            (&["bitpos", "k", "1", "2"], true, false),
            (&["bitop", "and", "d", "a", "b"], true, true),
            (&["bitfield", "k", "incrby", "u8", "#1", "5"], true, true),
            (&["bitfield_ro", "k", "get", "i4", "0"], true, false),
            (&["zadd", "z", "nx", "ch", "1", "m"], false, true),
            (&["zincrby", "z", "1", "m"], false, true),
            (&["zrem", "z", "m"], false, true),
            (&["zcard", "z"], true, false),
            (&["zcount", "z", "(1", "+inf"], true, false),
            (&["zlexcount", "z", "-", "[b"], true, false),
            (&["zscore", "z", "m"], true, false),
            (&["zmscore", "z", "m", "n"], true, false),
            (&["zrank", "z", "m", "withscore"], true, false),
            (&["zrevrank", "z", "m"], true, false),
            (&["zrange", "z", "0", "-1", "withscores"], true, false),
            (&["zrangestore", "d", "z", "0", "1"], false, true),
            (&["xadd", "s", "*", "f", "v"], false, true),
            (
                &[
                    "xadd",
                    "s",
                    "nomkstream",
                    "maxlen",
                    "~",
                    "5",
                    "1-*",
                    "f",
                    "v",
                ],
                false,
                true,
            ),
            (&["xlen", "s"], true, false),
            (&["xrange", "s", "-", "+"], true, false),
            (&["xrevrange", "s", "+", "-", "count", "2"], true, false),
            (&["xdel", "s", "1-1"], false, true),
            (&["xtrim", "s", "minid", "5"], false, true),
            (&["xsetid", "s", "5-5", "entriesadded", "3"], false, true),
            (
                &["xread", "count", "2", "streams", "s", "t", "0", "$"],
                true,
                false,
            ),
            (&["xinfo", "stream", "s", "full", "count", "5"], true, false),
            (&["xinfo", "groups", "s"], true, false),
            (&["xinfo", "consumers", "s", "g"], true, false),
            (
                &["xgroup", "create", "s", "g", "$", "mkstream"],
                false,
                true,
            ),
            (
                &["xgroup", "setid", "s", "g", "0", "entriesread", "3"],
                false,
                true,
            ),
            (&["xgroup", "destroy", "s", "g"], false, true),
            (&["xgroup", "createconsumer", "s", "g", "c"], false, true),
            (&["xgroup", "delconsumer", "s", "g", "c"], false, true),
            (
                &[
                    "xreadgroup",
                    "group",
                    "g",
                    "c",
                    "count",
                    "2",
                    "noack",
                    "streams",
                    "s",
                    ">",
                ],
                true,
                true,
            ),
            (&["xack", "s", "g", "1-1", "2"], false, true),
            (&["xpending", "s", "g"], true, false),
            (
                &["xpending", "s", "g", "idle", "5", "-", "+", "10", "c"],
                true,
                false,
            ),
            (
                &["xclaim", "s", "g", "c", "0", "1-1", "justid", "force"],
                true,
                true,
            ),
            (
                &["xautoclaim", "s", "g", "c", "0", "-", "count", "5"],
                true,
                true,
            ),
            (&["zrevrange", "z", "0", "1"], true, false),
            (
                &["zrangebyscore", "z", "0", "1", "limit", "0", "1"],
                true,
                false,
            ),
            (&["zrevrangebyscore", "z", "1", "0"], true, false),
            (&["zrangebylex", "z", "-", "+"], true, false),
            (&["zrevrangebylex", "z", "+", "-"], true, false),
            (&["zremrangebyrank", "z", "0", "1"], false, true),
            (&["zremrangebyscore", "z", "0", "1"], false, true),
            (&["zremrangebylex", "z", "[a", "[b"], false, true),
            (&["zpopmin", "z"], true, true),
            (&["zpopmax", "z", "2"], true, true),
            (&["zmpop", "1", "z", "min"], true, true),
            (&["bzpopmin", "z", "0"], true, true),
            (&["bzpopmax", "z", "y", "1"], true, true),
            (&["bzmpop", "0", "1", "z", "max", "count", "2"], true, true),
            (&["zunion", "2", "z", "y", "weights", "1", "2"], true, false),
            (&["zinter", "1", "z", "withscores"], true, false),
            (&["zdiff", "2", "z", "y"], true, false),
            (&["zunionstore", "d", "2", "z", "y"], false, true),
            (
                &["zinterstore", "d", "1", "z", "aggregate", "max"],
                false,
                true,
            ),
            (&["zdiffstore", "d", "2", "z", "y"], false, true),
            (&["zintercard", "2", "z", "y", "limit", "1"], true, false),
            (&["zrandmember", "z", "2", "withscores"], true, false),
            (&["zscan", "z", "0"], true, false),
            (&["touch", "a", "b"], true, false),
            (&["ttl", "a"], true, false),
            (&["pttl", "a"], true, false),
            (&["expiretime", "a"], true, false),
            (&["pexpiretime", "a"], true, false),
            (&["copy", "a", "b", "replace"], true, true),
            (&["dump", "a"], true, false),
            (&["restore", "a", "0", "payload", "replace"], false, true),
            (
                &["sort", "l", "by", "w_*", "get", "#", "alpha"],
                true,
                false,
            ),
            (&["sort", "l", "limit", "0", "2", "store", "d"], true, true),
            (&["sort_ro", "l", "desc"], true, false),
        ];
        for s in COMMANDS.iter() {
            if matches!(s.run, Run::Data(_)) {
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
            let p = spec.compile(&a, 1_000).unwrap().unwrap();
            let gets = p.writes.iter().any(|w| {
                matches!(
                    w,
                    Write::Get { .. } | Write::GetThen { .. } | Write::Read { .. }
                )
            });
            let changes = !p.guards.is_empty() || !p.read_only();
            assert!(!gets || read, "{a:?} reads a stored value without READ");
            assert!(!changes || write, "{a:?} writes without WRITE");
            assert!(changes || !write, "{a:?} only reads, yet needs WRITE");
        }
        // Nonsense arguments get the table's flags, and never a panic.
        for s in COMMANDS.iter() {
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
        let c = |v: &[&str]| lookup("set").unwrap().compile(&args(v), 1_000).unwrap();
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
        // GET with a write: the write happens only if the key holds no other type.
        assert_eq!(
            p.writes,
            vec![get_then(
                &Bytes::from("k"),
                put(
                    &Bytes::from("k"),
                    &Bytes::from("v"),
                    Ttl::At(1_005),
                    PutIf::Absent
                )
            )]
        );
        assert!(c(&["set", "k", "v", "ex", "9223372036854775807"]).is_err());
    }
}
