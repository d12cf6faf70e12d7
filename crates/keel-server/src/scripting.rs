//! Scripts (EVAL, EVALSHA, SCRIPT): Lua 5.1, as Redis embeds it, through mlua.
//!
//! A script runs inside one engine transaction ([`keel_engine::Engine::submit_script`]): each
//! `redis.call` is compiled by the command registry exactly as the same command sent alone,
//! decided at once against the state every earlier transaction and the script's earlier calls
//! leave, and its reply handed back to Lua. Everything the script wrote is logged as one record
//! and its reply leaves once that record is durable. Replay, PITR and backups apply the
//! record's effects; the script never runs again, as Redis 7 replicates effects.
//!
//! The sandbox is Redis's: the base, table, string and math libraries, no `io`, `os`, `debug`
//! or `package`, a global table that refuses new names (`Attempt to modify a readonly table`)
//! and reads of missing ones, a `math.random` that starts from the same seed every run, and the
//! `redis`, `bit`, `cjson`, `cmsgpack` and `struct` libraries.
//!
//! A script runs on the thread that calls [`Scripts::run`]: keel serve's runtime worker that
//! read the command, so that a short script costs no trip to another thread. One that runs long
//! hands the worker's other connections to another thread ([`release_worker`]) and goes on
//! where it is.

mod lua_struct;

use std::cell::{Cell, RefCell};
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mlua::{
    ffi, FromLuaMulti, Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value,
    Variadic, VmState,
};
use smallvec::SmallVec;

use crate::resp::Reply;
use crate::HashMap;

/// How often (in Lua instructions) a running script looks for SCRIPT KILL.
const KILL_CHECK_EVERY: u32 = 100_000;

/// How long a script runs before it first hands its worker's other connections to another
/// thread ([`release_worker`]); it tries again after twice as long, and so on.
const RELEASE_AFTER: Duration = Duration::from_millis(5);

/// The script names Redis's error messages give (`user_script:1: …`).
const CHUNK_NAME: &str = "@user_script";

/// What a script's `redis.call` runs: one command, with the script's transaction.
pub trait Caller {
    /// Runs `args` (the command's name first) and returns its reply, or an error reply (also
    /// for a command a script may not run).
    fn call(&mut self, args: Vec<Bytes>) -> Reply;
    /// Whether the script has written: from then on it cannot be killed.
    fn wrote(&self) -> bool;
}

/// A script's flags from its `#!lua` line (Redis 7's shebang).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScriptFlags {
    /// `flags=no-writes`: it may only read, like EVAL_RO.
    pub no_writes: bool,
    /// A shebang was given: scripts then declare what they do (Redis: no flags = may write).
    pub declared: bool,
}

struct Cached {
    function: Function,
    flags: ScriptFlags,
}

/// The scripting engine: one Lua state and the scripts it compiled, by SHA-1.
pub struct Scripts {
    vm: Mutex<Vm>,
    /// The loaded function libraries (FUNCTION, FCALL).
    functions: Mutex<FunctionVm>,
    /// The running script, if any: SCRIPT KILL and busy replies look at it.
    running: Mutex<Option<Arc<Running>>>,
    flags: Arc<RunFlags>,
    /// Wakes whoever waits for the running script to end.
    done: tokio::sync::Notify,
    editing: tokio::sync::Mutex<()>,
    /// Held by the script that runs (see [`Scripts::turn`]).
    turn: tokio::sync::Mutex<()>,
}

/// A running script, as SCRIPT KILL and busy replies see it.
pub struct Running {
    /// The script's SHA-1, or the function's name.
    pub name: String,
    /// A function (FCALL), not a script (EVAL): FUNCTION KILL stops it, SCRIPT KILL does not.
    pub function: bool,
    /// The command that runs it (FUNCTION STATS).
    pub command: Vec<Bytes>,
    pub started: Instant,
}

/// No script runs, or the one that ran has settled its reply: SCRIPT KILL finds nothing to
/// stop.
const IDLE: u8 = 0;
/// The script has not written and is not inside a `redis.call`: SCRIPT KILL may stop it.
const FREE: u8 = 1;
/// The script is inside a `redis.call`, which may write: SCRIPT KILL waits for it to end.
const IN_CALL: u8 = 2;
/// The script has written: it runs to its end (Redis: UNKILLABLE).
const WROTE: u8 = 3;
/// SCRIPT KILL stopped it: its next `redis.call` or kill check raises the kill error.
const KILLED: u8 = 4;

/// The error a killed script stops with.
const KILLED_ERROR: &str = "ERR Script killed by user with SCRIPT KILL...";

/// What the running script shares with the functions its Lua state keeps from one run to the
/// next (the kill hook, `redis.setresp`: see [`prepare`]).
#[derive(Default)]
struct RunFlags {
    /// A script or function runs.
    running: AtomicBool,
    /// Where the running script stands against SCRIPT KILL: [`IDLE`], [`FREE`], [`IN_CALL`],
    /// [`WROTE`] or [`KILLED`]. It moves by compare-and-swap, so that a KILL and a call that
    /// writes cannot both win: a KILL that finds a call under way waits for it to end.
    state: AtomicU8,
    /// The protocol `redis.call` answers in (`redis.setresp`): 2 or 3.
    resp: AtomicU8,
    /// When the running script started, and how long after that it next calls
    /// [`release_worker`].
    release: Mutex<Option<(Instant, Duration)>>,
}

impl RunFlags {
    /// Whether the running script has run long enough to call [`release_worker`] (again).
    fn release_due(&self) -> bool {
        let mut release = crate::lock(&self.release);
        match &mut *release {
            Some((started, after)) if started.elapsed() >= *after => {
                *after *= 2;
                true
            }
            _ => false,
        }
    }
}

/// Called by a script that has run long. If this thread is a worker of a multi-threaded tokio
/// runtime (keel serve's), hands the worker's other tasks (its connections) to another thread
/// with `block_in_place`, so that they are served meanwhile: other clients get -BUSY, and SCRIPT
/// KILL reaches the script. This thread goes on running the script, outside the runtime's pool,
/// and gives up its place there. Waits (at most a second) for a task spawned here to run, which
/// shows the runtime is served again: until the other thread has taken the worker over, the end
/// of `block_in_place` would take it back. Elsewhere (the scripts' thread of a cluster node, a
/// test) it does nothing.
fn release_worker() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return;
    }
    let (served, wait) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = served.send(());
    });
    tokio::task::block_in_place(|| {
        let _ = wait.recv_timeout(Duration::from_secs(1));
    });
}

struct Vm {
    lua: Lua,
    cache: HashMap<String, Cached>,
}

/// SHA-1 of `body`, in lowercase hex: a script's name.
pub fn sha1_hex(body: &[u8]) -> String {
    use std::fmt::Write;
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
    let mut hex = String::with_capacity(2 * d.as_ref().len());
    for b in d.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// What SCRIPT KILL found.
pub enum Kill {
    NotBusy,
    /// A function runs and SCRIPT KILL was sent, or the other way round.
    OtherKind,
    Unkillable,
    Killed,
}

impl Scripts {
    pub fn new() -> Scripts {
        let lua = sandbox().expect("the Lua sandbox is built from constants");
        Scripts {
            vm: Mutex::new(Vm {
                lua,
                cache: HashMap::default(),
            }),
            functions: Mutex::new(
                compile_libraries(&Libraries::new()).expect("no libraries compile"),
            ),
            running: Mutex::new(None),
            flags: Arc::default(),
            done: tokio::sync::Notify::new(),
            editing: tokio::sync::Mutex::new(()),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Compiles `body` and keeps it; returns its SHA-1, or Redis's error for a script that
    /// does not compile.
    pub fn load(&self, body: &[u8]) -> Result<String, Reply> {
        let sha = sha1_hex(body);
        let mut vm = crate::lock(&self.vm);
        if !vm.cache.contains_key(&sha) {
            let (flags, code) = shebang(body)?;
            let function = (vm.lua.load(code))
                .set_name(CHUNK_NAME)
                .set_environment(env(&vm.lua))
                .into_function()
                .map_err(|e| {
                    Reply::err(format!(
                        "ERR Error compiling script (new function): {}",
                        lua_message(&e)
                    ))
                })?;
            vm.cache.insert(sha.clone(), Cached { function, flags });
        }
        Ok(sha)
    }

    pub fn exists(&self, sha: &[u8]) -> bool {
        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
        crate::lock(&self.vm).cache.contains_key(&sha)
    }

    /// How many scripts the cache holds (INFO's `number_of_cached_scripts`).
    pub fn cached(&self) -> usize {
        crate::lock(&self.vm).cache.len()
    }

    /// The flags of a cached script, or `None` if it is not cached.
    pub fn flags(&self, sha: &str) -> Option<ScriptFlags> {
        crate::lock(&self.vm).cache.get(sha).map(|c| c.flags)
    }

    /// SCRIPT FLUSH: forgets every script and starts a fresh Lua state.
    pub fn flush(&self) {
        let mut vm = crate::lock(&self.vm);
        vm.cache.clear();
        vm.lua = sandbox().expect("the Lua sandbox is built from constants");
    }

    pub fn running(&self) -> Option<Arc<Running>> {
        if !self.flags.running.load(Ordering::SeqCst) {
            return None;
        }
        crate::lock(&self.running).clone()
    }

    /// Waits until no script runs.
    pub async fn idle(&self) {
        // Nearly always: nothing runs, and no waiter need be made.
        if !self.flags.running.load(Ordering::SeqCst) {
            return;
        }
        loop {
            let notified = self.done.notified();
            if self.running().is_none() {
                return;
            }
            notified.await;
        }
    }

    /// SCRIPT KILL (`function` false) or FUNCTION KILL: stops the running script or function
    /// if it has not written.
    pub fn kill(&self, function: bool) -> Kill {
        match self.running() {
            None => Kill::NotBusy,
            Some(r) if r.function != function => Kill::OtherKind,
            Some(_) => loop {
                let state = &self.flags.state;
                match state.compare_exchange(FREE, KILLED, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) | Err(KILLED) => return Kill::Killed,
                    Err(WROTE) => return Kill::Unkillable,
                    // It ended first, and answered as it would have without the KILL.
                    Err(IDLE) => return Kill::NotBusy,
                    // One command: it ends within its own run time, and then either wrote
                    // (unkillable) or did not (killed now, before its next call).
                    Err(_) => std::thread::yield_now(),
                }
            },
        }
    }

    /// Runs the cached script `sha` with `keys` and `argv`; `caller` runs its `redis.call`s.
    /// Blocks the thread while the script runs.
    pub fn run(&self, sha: &str, command: &[Bytes], caller: &mut dyn Caller) -> Reply {
        let (keys, argv) = keys_and_args(command);
        // Handles, so that the cache is not locked while the script runs (SCRIPT LOAD from
        // another client waits for nothing).
        let (lua, function) = {
            let vm = crate::lock(&self.vm);
            let Some(cached) = vm.cache.get(sha) else {
                return noscript();
            };
            (vm.lua.clone(), cached.function.clone())
        };
        self.running_while(sha, false, command, || {
            run_in(&lua, &function, Args::Globals, keys, argv, caller, self)
        })
    }

    /// Runs the loaded function `name` (FCALL), as [`Scripts::run`] runs a script.
    pub fn call_function(&self, name: &str, command: &[Bytes], caller: &mut dyn Caller) -> Reply {
        let (keys, argv) = keys_and_args(command);
        // Handles, so that FUNCTION STATS and LIST are served while the function runs.
        let (lua, function) = {
            let functions = crate::lock(&self.functions);
            let Some(f) = functions.function(name) else {
                return Reply::err("ERR Function not found");
            };
            (functions.lua.clone(), f.function.clone())
        };
        self.running_while(name, true, command, || {
            run_in(&lua, &function, Args::Parameters, keys, argv, caller, self)
        })
    }

    fn running_while(
        &self,
        name: &str,
        function: bool,
        command: &[Bytes],
        run: impl FnOnce() -> mlua::Result<Reply>,
    ) -> Reply {
        let started = Instant::now();
        let running = Running {
            name: name.to_string(),
            function,
            command: command.to_vec(),
            started,
        };
        let flags = &self.flags;
        *crate::lock(&flags.release) = Some((started, RELEASE_AFTER));
        flags.state.store(FREE, Ordering::SeqCst);
        *crate::lock(&self.running) = Some(Arc::new(running));
        flags.running.store(true, Ordering::SeqCst);
        let reply = run().unwrap_or_else(|e| error_reply(&e, name));
        // One swap settles a KILL that races the script's end: if SCRIPT KILL answered OK, the
        // script (which has not written) answers the kill error even when it ended before its
        // next kill check; a KILL after the swap answers NOTBUSY.
        let reply = match flags.state.swap(IDLE, Ordering::SeqCst) {
            KILLED => Reply::err(KILLED_ERROR),
            _ => reply,
        };
        flags.running.store(false, Ordering::SeqCst);
        *crate::lock(&self.running) = None;
        self.done.notify_waiters();
        reply
    }

    /// The flags of the loaded function `name`, or `None` if there is none.
    pub fn function_flags(&self, name: &str) -> Option<ScriptFlags> {
        crate::lock(&self.functions).function(name).map(|f| f.flags)
    }

    /// The libraries' sources, by name (what FUNCTION DUMP and the durable copy hold).
    pub fn library_sources(&self) -> Libraries {
        crate::lock(&self.functions).sources()
    }

    /// A turn to run scripts: they run one at a time, and one that waits for its turn holds
    /// no thread.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }

    /// Serializes changes to the libraries: each reads them, changes them and stores them.
    pub async fn editing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.editing.lock().await
    }

    /// Installs `libraries`, compiled by [`compile_libraries`], in place of the loaded ones.
    pub fn install(&self, libraries: FunctionVm) {
        *crate::lock(&self.functions) = libraries;
    }

    /// FUNCTION LIST: every library matching `pattern`, with its code if asked.
    pub fn list(&self, pattern: Option<&[u8]>, with_code: bool) -> Reply {
        let functions = crate::lock(&self.functions);
        let text = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let libraries = (functions.libraries.iter())
            .filter(|(name, _)| pattern.is_none_or(|p| crate::glob::matches(p, name.as_bytes())))
            .map(|(name, lib)| {
                let fs = (lib.functions.iter())
                    .map(|(fname, f)| {
                        let flags = [(f.flags.no_writes, "no-writes")]
                            .into_iter()
                            .filter(|(on, _)| *on)
                            .map(|(_, n)| text(n))
                            .collect();
                        Reply::Map(vec![
                            (text("name"), text(fname)),
                            (
                                text("description"),
                                f.description.as_deref().map_or(Reply::Nil, text),
                            ),
                            (text("flags"), Reply::Set(flags)),
                        ])
                    })
                    .collect();
                let mut m = vec![
                    (text("library_name"), text(name)),
                    (text("engine"), text("LUA")),
                    (text("functions"), Reply::Array(fs)),
                ];
                if with_code {
                    m.push((text("library_code"), Reply::Bulk(lib.code.clone())));
                }
                Reply::Map(m)
            })
            .collect();
        Reply::Array(libraries)
    }

    /// FUNCTION STATS' counts: libraries and functions.
    pub fn function_counts(&self) -> (usize, usize) {
        let f = crate::lock(&self.functions);
        let n = f.libraries.values().map(|l| l.functions.len()).sum();
        (f.libraries.len(), n)
    }
}

/// Libraries' sources by name: what is stored durably and what FUNCTION DUMP gives.
pub type Libraries = std::collections::BTreeMap<String, Bytes>;

/// The loaded libraries, compiled in a Lua state of their own (SCRIPT FLUSH does not touch
/// them, as in Redis).
pub struct FunctionVm {
    lua: Lua,
    libraries: std::collections::BTreeMap<String, Library>,
}

struct Library {
    code: Bytes,
    functions: std::collections::BTreeMap<String, LoadedFunction>,
}

struct LoadedFunction {
    function: Function,
    flags: ScriptFlags,
    description: Option<String>,
}

impl FunctionVm {
    /// Function names are case-insensitive, as in Redis.
    fn function(&self, name: &str) -> Option<&LoadedFunction> {
        (self.libraries.values())
            .flat_map(|l| l.functions.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, f)| f)
    }

    fn sources(&self) -> Libraries {
        (self.libraries.iter())
            .map(|(n, l)| (n.clone(), l.code.clone()))
            .collect()
    }
}

/// A library's name from its `#!lua name=…` line, and its code. The line is split into words
/// as Redis splits it (`sdssplitargs`: `name="foo"` is `name=foo`), and its errors come in
/// Redis's order: the words first, then the engine, then the name's characters.
pub fn library_name(code: &[u8]) -> Result<String, Reply> {
    let end = code.iter().position(|&b| b == b'\n').unwrap_or(code.len());
    let line = &code[..end];
    if !line.starts_with(b"#!") {
        return Err(Reply::err("ERR Missing library metadata"));
    }
    let words = keel_resp::split_args(line)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| Reply::err("ERR Invalid library metadata"))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut name = None;
    for w in &words[1..] {
        let is_name = w.len() >= 5 && w[..5].eq_ignore_ascii_case(b"name=");
        match (is_name, &name) {
            (true, None) => name = Some(text(&w[5..])),
            (true, Some(_)) => {
                return Err(Reply::err(
                    "ERR Invalid metadata value, name argument was given multiple times",
                ))
            }
            (false, _) => {
                return Err(Reply::err(format!(
                    "ERR Invalid metadata value given: {}",
                    text(w)
                )))
            }
        }
    }
    let name = name.ok_or_else(|| Reply::err("ERR Library name was not given"))?;
    let engine = text(&words[0][2..]);
    if !engine.eq_ignore_ascii_case("lua") {
        return Err(Reply::err(format!("ERR Engine '{engine}' not found")));
    }
    if !valid_name(&name) {
        return Err(Reply::err(format!("ERR {BAD_NAME}")));
    }
    Ok(name)
}

/// Redis's error for a bad library name, and (Redis 7.2 says "Library" there too) for a bad
/// function name.
const BAD_NAME: &str = "Library names can only contain letters, numbers, or underscores(_) and must be at least one character long";

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Compiles `libraries` into a fresh Lua state: each library's code runs once, registering its
/// functions with `redis.register_function`. Redis's errors for a library that registers
/// nothing, a function name taken twice, or code that does not compile or fails.
pub fn compile_libraries(libraries: &Libraries) -> Result<FunctionVm, Reply> {
    let lua = sandbox().map_err(|e| Reply::err(format!("ERR {e}")))?;
    let mut vm = FunctionVm {
        lua,
        libraries: Default::default(),
    };
    for (name, code) in libraries {
        let functions = load_library(&vm.lua, code)?;
        for f in functions.keys() {
            if vm.function(f).is_some() {
                return Err(Reply::err(format!("ERR Function {f} already exists")));
            }
        }
        vm.libraries.insert(
            name.clone(),
            Library {
                code: code.clone(),
                functions,
            },
        );
    }
    Ok(vm)
}

/// The longest a library's code may run at FUNCTION LOAD (Redis's limit).
const LOAD_TIME_MAX: std::time::Duration = std::time::Duration::from_millis(500);

fn load_library(
    lua: &Lua,
    code: &[u8],
) -> Result<std::collections::BTreeMap<String, LoadedFunction>, Reply> {
    let registered = std::cell::RefCell::new(std::collections::BTreeMap::new());
    let redis: Table =
        (lua.named_registry_value("keel_redis")).map_err(|e| Reply::err(format!("ERR {e}")))?;
    // The #! line stays, commented out, so that line numbers in errors stay right.
    let mut body = b"--".to_vec();
    body.extend_from_slice(code);
    let loaded = lua.scope(|scope| {
        let register = scope.create_function(|_, args: MultiValue| {
            let (name, callback, flags, description) = match args.len() {
                1 => {
                    let Some(Value::Table(t)) = args.front() else {
                        return Err(mlua::Error::runtime(
                            "calling redis.register_function with a single argument is only applicable to Lua table (representing named arguments).",
                        ));
                    };
                    for pair in t.clone().pairs::<Value, Value>() {
                        let (k, _) = pair?;
                        let key = match &k {
                            Value::String(s) => s.to_string_lossy(),
                            _ => String::new(),
                        };
                        if !["function_name", "callback", "flags", "description"].contains(&key.as_str()) {
                            return Err(mlua::Error::runtime(
                                "unknown argument given to redis.register_function",
                            ));
                        }
                    }
                    // Redis's errors for a named argument of the wrong type.
                    let wrong = |what: &str| mlua::Error::runtime(format!("{what} argument given to redis.register_function must be a {}", if what == "callback" { "function" } else { "string" }));
                    let name = match t.raw_get::<Value>("function_name")? {
                        Value::Nil => return Err(mlua::Error::runtime("redis.register_function must get a function name argument")),
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(n) => n.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(wrong("function_name")),
                    };
                    let callback = match t.raw_get::<Value>("callback")? {
                        Value::Nil => return Err(mlua::Error::runtime("redis.register_function must get a callback argument")),
                        Value::Function(f) => f,
                        _ => return Err(wrong("callback")),
                    };
                    let flags = match t.raw_get::<Value>("flags")? {
                        Value::Nil => None,
                        Value::Table(t) => Some(t),
                        _ => return Err(mlua::Error::runtime("flags argument to redis.register_function must be a table representing function flags")),
                    };
                    let description = match t.raw_get::<Value>("description")? {
                        Value::Nil => None,
                        Value::String(s) => Some(s.to_string_lossy()),
                        _ => return Err(wrong("description")),
                    };
                    (name, callback, flags, description)
                }
                2 => {
                    let mut it = args.into_iter();
                    let name = match it.next() {
                        Some(Value::String(s)) => s.to_string_lossy(),
                        _ => return Err(mlua::Error::runtime("first argument to redis.register_function must be a string")),
                    };
                    let callback = match it.next() {
                        Some(Value::Function(f)) => f,
                        _ => return Err(mlua::Error::runtime("second argument to redis.register_function must be a function")),
                    };
                    (name, callback, None, None)
                }
                _ => {
                    return Err(mlua::Error::runtime(
                        "wrong number of arguments to redis.register_function",
                    ))
                }
            };
            if !valid_name(&name) {
                return Err(mlua::Error::runtime(BAD_NAME));
            }
            let mut parsed = ScriptFlags {
                declared: true,
                ..ScriptFlags::default()
            };
            let flags: Vec<Value> = match flags {
                Some(t) => t.sequence_values::<Value>().collect::<mlua::Result<_>>()?,
                None => Vec::new(),
            };
            for flag in flags {
                let flag = match &flag {
                    Value::String(s) => s.to_string_lossy(),
                    _ => String::new(),
                };
                match flag.as_str() {
                    "no-writes" => parsed.no_writes = true,
                    "allow-oom" | "allow-stale" | "no-cluster" | "allow-cross-slot-keys" => {}
                    "" => return Err(mlua::Error::runtime("unknown flag given")),
                    other => return Err(mlua::Error::runtime(format!("unknown flag given: {other}"))),
                }
            }
            let mut r = registered.borrow_mut();
            if r.contains_key(&name) {
                return Err(mlua::Error::runtime("Function already exists in the library"));
            }
            r.insert(
                name,
                LoadedFunction {
                    function: callback,
                    flags: parsed,
                    description,
                },
            );
            Ok(())
        })?;
        redis.raw_set("register_function", register)?;
        let chunk = (lua.load(&body[..]))
            .set_name("@user_function")
            .set_environment(env(lua))
            .into_function()?;
        // A library's code runs at most LOAD_TIME_MAX, as in Redis: an endless loop there
        // would otherwise hold FUNCTION LOAD (and every later edit) for ever.
        let started = std::time::Instant::now();
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(KILL_CHECK_EVERY),
            move |_, _| match started.elapsed() > LOAD_TIME_MAX {
                true => Err(mlua::Error::runtime("FUNCTION LOAD timeout")),
                false => Ok(VmState::Continue),
            },
        )?;
        let set_loading: Function = lua.named_registry_value("keel_set_loading")?;
        set_loading.call::<()>(true)?;
        let ran = chunk.call::<()>(());
        set_loading.call::<()>(false)?;
        ran
    });
    lua.remove_hook();
    let _ = redis.raw_set("register_function", Value::Nil);
    match loaded {
        Err(e @ mlua::Error::SyntaxError { .. }) => {
            return Err(Reply::err(format!(
                "ERR Error compiling function: {}",
                lua_message(&e)
            )))
        }
        Err(e) => {
            return Err(Reply::err(format!(
                "ERR Error registering functions: {}",
                lua_message(&e)
            )))
        }
        Ok(()) => {}
    }
    let functions = registered.into_inner();
    if functions.is_empty() {
        return Err(Reply::err("ERR No functions registered"));
    }
    Ok(functions)
}

/// The durable form of the libraries (also FUNCTION DUMP's payload): `KEELFN1\n`, the count
/// (u32 LE), then per library its name and code, each a u32 LE length and the bytes, and last
/// a CRC-32C of everything before it (u32 LE). docs/FORMAT.md describes it.
pub fn encode_libraries(libraries: &Libraries) -> Bytes {
    let mut o = b"KEELFN1\n".to_vec();
    o.extend_from_slice(&(libraries.len() as u32).to_le_bytes());
    for (name, code) in libraries {
        o.extend_from_slice(&(name.len() as u32).to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&(code.len() as u32).to_le_bytes());
        o.extend_from_slice(code);
    }
    let crc = CRC32C.checksum(&o);
    o.extend_from_slice(&crc.to_le_bytes());
    o.into()
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Reads [`encode_libraries`]'s form; `None` if it is not that form or its checksum is wrong.
pub fn decode_libraries(b: &[u8]) -> Option<Libraries> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if CRC32C.checksum(body).to_le_bytes() != crc {
        return None;
    }
    let mut rest = body.strip_prefix(b"KEELFN1\n")?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = rest.split_at_checked(n)?;
        rest = b;
        Some(a)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut libraries = Libraries::new();
    for _ in 0..count {
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let name = String::from_utf8(take(n)?.to_vec()).ok()?;
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let code = Bytes::copy_from_slice(take(n)?);
        libraries.insert(name, code);
    }
    rest.is_empty().then_some(libraries)
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

/// The keys and arguments of `EVAL script numkeys key … arg …` (or EVALSHA, FCALL), whose key
/// count the caller has checked.
fn keys_and_args(command: &[Bytes]) -> (&[Bytes], &[Bytes]) {
    let n = std::str::from_utf8(&command[2])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .expect("the key count is checked before a script runs");
    command[3..].split_at(n)
}

pub fn noscript() -> Reply {
    Reply::err("NOSCRIPT No matching script. Please use EVAL.")
}

/// Whether a script's body may write: not when its `#!lua` line says `no-writes`.
pub fn body_may_write(body: &[u8]) -> bool {
    shebang(body).map_or(true, |(flags, _)| !flags.no_writes)
}

/// Splits a `#!lua flags=…` line off the body.
fn shebang(body: &[u8]) -> Result<(ScriptFlags, Vec<u8>), Reply> {
    if !body.starts_with(b"#!") {
        return Ok((ScriptFlags::default(), body.to_vec()));
    }
    let end = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
    let line = String::from_utf8_lossy(&body[2..end]).into_owned();
    let mut words = line.split_ascii_whitespace();
    let engine = words.next().unwrap_or("");
    if engine != "lua" {
        return Err(Reply::err(format!(
            "ERR Unexpected engine in script shebang: '{engine}'"
        )));
    }
    let mut flags = ScriptFlags {
        declared: true,
        ..ScriptFlags::default()
    };
    for w in words {
        let Some(list) = w.strip_prefix("flags=") else {
            return Err(Reply::err(format!("ERR Unknown lua shebang option: {w}")));
        };
        for f in list.split(',').filter(|f| !f.is_empty()) {
            match f {
                "no-writes" => flags.no_writes = true,
                "allow-oom" | "allow-stale" | "no-cluster" | "allow-cross-slot-keys" => {}
                _ => {
                    return Err(Reply::err(format!(
                        "ERR Unexpected flag in script shebang: {f}"
                    )))
                }
            }
        }
    }
    // The line stays, commented out, so that line numbers in errors stay right.
    let mut code = b"--".to_vec();
    code.extend_from_slice(body);
    Ok((flags, code))
}

/// The read-only view of the globals scripts run in (see [`sandbox`]).
fn env(lua: &Lua) -> Table {
    lua.named_registry_value("keel_env")
        .expect("the sandbox keeps its environment in the registry")
}

/// Builds the sandboxed Lua state: libraries, `redis`, `bit`, `cjson`, and the read-only
/// global table.
fn sandbox() -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::default(),
    )?;
    let g = lua.globals();
    // Lua 5.1's base library comes whole; take out what reaches outside the sandbox.
    for name in [
        "dofile",
        "loadfile",
        "load",
        "module",
        "require",
        "print",
        "gcinfo",
        "collectgarbage",
        "newproxy",
        "getfenv",
        "setfenv",
    ] {
        g.raw_set(name, Value::Nil)?;
    }
    let redis = redis_library(&lua)?;
    // The real table (its `call` and `pcall` are set by the sandbox below); scripts see a
    // read-only view.
    lua.set_named_registry_value("keel_redis", redis.clone())?;
    g.raw_set("redis", redis)?;
    g.raw_set("bit", bit_library(&lua)?)?;
    g.raw_set("cjson", cjson_library(&lua)?)?;
    g.raw_set("cmsgpack", cmsgpack_library(&lua)?)?;
    g.raw_set("struct", lua_struct::library(&lua)?)?;
    deterministic_random(&lua)?;
    // Scripts run in `env`, a read-only view of the globals: assigning any global, or a field
    // of a library, fails; reading a global that does not exist fails too. KEYS and ARGV are
    // set on the real table before each run. setmetatable and rawset refuse the views.
    let env = lua
        .load(
            r#"
            local G, rawget, error, tostring = _G, rawget, error, tostring
            local real_setmetatable, real_rawset, real_getmetatable =
                setmetatable, rawset, getmetatable
            local loadstring, real_pcall, real_xpcall, unpack = loadstring, pcall, xpcall, unpack
            -- SCRIPT KILL's error cannot be caught: pcall and xpcall raise it again.
            local function killed(e)
                return tostring(e):find("Script killed by user", 1, true) ~= nil
            end
            G.pcall = function(...)
                local r = {real_pcall(...)}
                if not r[1] and killed(r[2]) then error(r[2], 0) end
                return unpack(r)
            end
            G.xpcall = function(f, handler)
                local kill
                local r = {real_xpcall(f, function(e)
                    if killed(e) then kill = e end
                    return handler(e)
                end)}
                if kill then error(kill, 0) end
                return unpack(r)
            end
            local function refuse() error("Attempt to modify a readonly table", 2) end
            local marker = real_setmetatable({}, {__newindex = refuse, __metatable = false})
            local function readonly(t)
                return real_setmetatable({}, {__index = t, __newindex = refuse, __metatable = marker})
            end
            G.setmetatable = function(t, m)
                if real_getmetatable(t) == marker then refuse() end
                return real_setmetatable(t, m)
            end
            G.rawset = function(t, k, v)
                if real_getmetatable(t) == marker then refuse() end
                return real_rawset(t, k, v)
            end
            -- Text only: a precompiled chunk could break out of the sandbox.
            G.loadstring = function(code, name)
                if type(code) == "string" and code:byte(1) == 27 then return nil, "binary code" end
                return loadstring(code, name)
            end
            -- redis.call and redis.pcall call `current`, the state's one Rust function that
            -- finds the run's caller (make_call), set once by `prepare` through set_call: an
            -- upvalue, not a field of a table. A run sets KEYS and ARGV.
            local current
            G.redis.call = function(...) return current(true, ...) end
            G.redis.pcall = function(...) return current(false, ...) end
            local function set_call(call) current = call end
            local function run_script(f, keys, argv)
                G.KEYS, G.ARGV = keys, argv
                return f()
            end
            local function run_function(f, keys, argv)
                return f(keys, argv)
            end
            for _, name in ipairs({"redis", "bit", "cjson", "cmsgpack", "struct", "string", "table", "math"}) do
                G[name] = readonly(G[name])
            end
            local function missing(k)
                error("Script attempted to access nonexistent global variable '" .. tostring(k) .. "'", 3)
            end
            -- While a library loads (FUNCTION LOAD), its code sees only Redis's library API:
            -- `redis` with register_function, log and the constants, as in Redis.
            local R = rawget(G, "redis")
            local loading = false
            local api = {register_function = true, log = true, LOG_DEBUG = true,
                LOG_VERBOSE = true, LOG_NOTICE = true, LOG_WARNING = true,
                REDIS_VERSION = true, REDIS_VERSION_NUM = true}
            -- A function that kept the library API's table finds register_function refusing.
            local function not_loading()
                error("redis.register_function can only be called on FUNCTION LOAD command", 2)
            end
            local load_redis = real_setmetatable({}, {
                __index = function(_, k)
                    if not api[k] then missing(k) end
                    if k == "register_function" and not loading then return not_loading end
                    return R[k]
                end,
                __newindex = refuse,
                __metatable = marker,
            })
            -- A script reads its globals through `env`, whose __index is the globals table
            -- itself, not a function: every read of `redis`, KEYS or ARGV stays in the VM
            -- instead of calling Lua (a script of two redis.call reads five). The globals
            -- table refuses a name it lacks; while a library loads, __index is a function.
            local function loading_index(_, k)
                if k ~= "redis" then missing(k) end
                return load_redis
            end
            local env_meta = {__index = G, __newindex = refuse, __metatable = marker}
            local env = real_setmetatable({}, env_meta)
            G._G = env
            real_setmetatable(G, {__index = function(_, k) missing(k) end, __metatable = marker})
            return env, function(on)
                loading = on
                env_meta.__index = on and loading_index or G
            end, run_script, run_function, set_call
            "#,
        )
        .set_name("=sandbox")
        .eval::<(Table, Function, Function, Function, Function)>()?;
    let (env, set_loading, script, function, set_call) = env;
    lua.set_named_registry_value("keel_env", env)?;
    lua.set_named_registry_value("keel_set_loading", set_loading)?;
    lua.set_named_registry_value("keel_set_call", set_call)?;
    lua.set_app_data(Runners { script, function });
    Ok(lua)
}

/// How a script gets its keys and arguments: EVAL's as the globals KEYS and ARGV, a
/// function's (FCALL) as its two parameters.
enum Args {
    Globals,
    Parameters,
}

/// The sandbox's two Lua functions that start a run, `(f, keys, argv)`: each calls `f` with
/// KEYS and ARGV as globals (a script) or as its parameters (a function).
struct Runners {
    script: Function,
    function: Function,
}

/// A run's caller as `redis.call` reaches it.
type RunCaller<'c> = RefCell<&'c mut dyn Caller>;

thread_local! {
    /// The caller of the run this thread is in (a [`RunCaller`]), which `redis.call` reaches;
    /// null outside runs. Set only by [`Entered`]. Per thread, because a Lua state calls its
    /// Rust functions on the thread that called into it, the one whose run they serve.
    static CALLER: Cell<*const ()> = const { Cell::new(std::ptr::null()) };
}

/// Makes a run's caller this thread's [`CALLER`] while it lives, and puts back the one before
/// when dropped, unwinding included. It borrows the caller, so the borrow checker sees that it
/// goes first.
struct Entered<'a> {
    before: *const (),
    _caller: std::marker::PhantomData<&'a RunCaller<'a>>,
}

impl<'a> Entered<'a> {
    fn new(caller: &'a RunCaller<'a>) -> Entered<'a> {
        let p = std::ptr::from_ref(caller).cast::<()>();
        Entered {
            before: CALLER.replace(p),
            _caller: std::marker::PhantomData,
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        CALLER.set(self.before);
    }
}

fn run_in(
    lua: &Lua,
    function: &Function,
    args: Args,
    keys: &[Bytes],
    argv: &[Bytes],
    caller: &mut dyn Caller,
    scripts: &Scripts,
) -> mlua::Result<Reply> {
    let flags = &scripts.flags;
    prepare(lua, flags)?;
    // Text goes onto Lua's stack as it is, other bytes through a string handle each: mlua
    // pushes `&str` directly (about 0.1-0.2 µs less a run, examples/script_glue.rs).
    let table = |items: &[Bytes]| -> mlua::Result<Table> {
        match (items.iter())
            .map(|k| std::str::from_utf8(k))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(text) => lua.create_sequence_from(text),
            Err(_) => lua.create_sequence_from(
                (items.iter())
                    .map(|k| lua.create_string(k))
                    .collect::<mlua::Result<Vec<_>>>()?,
            ),
        }
    };
    let (keys, argv) = (table(keys)?, table(argv)?);
    // Every run starts from the same state: math.random's seed, cjson's settings, RESP2.
    if let Some(d) = lua.app_data_ref::<Drand48>() {
        d.seed(0);
    }
    if let Some(j) = lua.app_data_ref::<JsonSettings>() {
        j.reset();
    }
    flags.resp.store(2, Ordering::SeqCst);
    let runner = {
        let runners = (lua.app_data_ref::<Runners>()).expect("the sandbox keeps its runners");
        match args {
            Args::Globals => runners.script.clone(),
            Args::Parameters => runners.function.clone(),
        }
    };
    let caller: RunCaller<'_> = RefCell::new(caller);
    let _entered = Entered::new(&caller);
    let out: Value = runner.call((function, keys, argv))?;
    from_lua(&out, 0)
}

/// The function `redis.call` and `redis.pcall` call (see `sandbox`), with whether an error
/// reply raises: one for every run of a Lua state, reaching the run's caller through
/// [`CALLER`]. (A function made for each run in an mlua scope, which makes the borrow safe
/// without unsafe code, cost some 2,200 instructions a run to make and destroy.) Called
/// outside a run, it is an error.
fn make_call(lua: &Lua, flags: Arc<RunFlags>) -> mlua::Result<Function> {
    lua.create_function(move |lua, CallArgs { raise, args }| {
        let p = CALLER.get();
        if p.is_null() {
            return Err(mlua::Error::runtime(
                "redis.call and redis.pcall work only while their script runs",
            ));
        }
        // SAFETY: this thread's `CALLER` is non-null only while an `Entered` made on this
        // thread lives. An `Entered` lives in `run_in`'s frame, made after the `RunCaller` it
        // points to and dropped before it, and puts back the pointer before it when dropped
        // (unwinding too). Lua runs this function on the thread that called into Lua, inside
        // that call: the frame that set `p` is below this one on this thread's stack, so its
        // `RunCaller` is alive, whichever Lua state or frame made this call (guards are put
        // back in stack order). Its lifetime is written as 'static only because neither the
        // reference nor the cell's borrow leaves this call (the reply is owned); a nested call
        // finds the cell borrowed and errs.
        #[allow(unsafe_code)]
        let caller = unsafe { &*p.cast::<RunCaller<'static>>() };
        let Ok(mut c) = caller.try_borrow_mut() else {
            return Err(mlua::Error::runtime("redis.call may not call itself"));
        };
        // A call may write: SCRIPT KILL cannot stop the script while it runs.
        let state = &flags.state;
        let entered =
            match state.compare_exchange(FREE, IN_CALL, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => true,
                Err(KILLED) => return Err(mlua::Error::runtime(KILLED_ERROR)),
                Err(_) => false, // it wrote before: nothing can stop it now
            };
        let reply = c.call(args);
        if entered {
            state.store(if c.wrote() { WROTE } else { FREE }, Ordering::SeqCst);
        }
        drop(c);
        if raise {
            if let Reply::Error(e) = &reply {
                return Err(mlua::Error::external(CallError(e.clone())));
            }
        }
        to_lua(lua, reply, flags.resp.load(Ordering::SeqCst))
    })
}

/// Gives a Lua state, once, what runs share through `flags`: the hook that stops a killed
/// script (every [`KILL_CHECK_EVERY`] instructions), and `redis.setresp`.
fn prepare(lua: &Lua, flags: &Arc<RunFlags>) -> mlua::Result<()> {
    if lua.app_data_ref::<Arc<RunFlags>>().is_some() {
        return Ok(());
    }
    let set_call: Function = lua.named_registry_value("keel_set_call")?;
    set_call.call::<()>(make_call(lua, flags.clone())?)?;
    let f = flags.clone();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(KILL_CHECK_EVERY),
        move |_, _| {
            if f.running.load(Ordering::SeqCst) {
                // A script that has written runs to its end (Redis: UNKILLABLE).
                if f.state.load(Ordering::SeqCst) == KILLED {
                    return Err(mlua::Error::runtime(KILLED_ERROR));
                }
                if f.release_due() {
                    release_worker();
                }
            }
            Ok(VmState::Continue)
        },
    )?;
    let redis: Table = lua.named_registry_value("keel_redis")?;
    let f = flags.clone();
    redis.raw_set(
        "setresp",
        lua.create_function(move |_, v: i64| match v {
            2 | 3 => {
                f.resp.store(v as u8, Ordering::SeqCst);
                Ok(())
            }
            _ => Err(mlua::Error::runtime("RESP version must be 2 or 3.")),
        })?,
    )?;
    // Last: a state whose preparation failed part way is prepared again at its next run.
    lua.set_app_data(flags.clone());
    Ok(())
}

/// A `redis.call` whose command failed: the script stops with that error, unless it caught it
/// with `pcall` (Lua's).
#[derive(Debug)]
struct CallError(String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallError {}

/// What `redis.call` and `redis.pcall` pass the run's function (see `sandbox`): whether an
/// error reply raises, then the command's arguments, in one buffer as a request's are (see
/// keel_resp::one_buffer).
struct CallArgs {
    raise: bool,
    args: Vec<Bytes>,
}

/// An argument's bytes: a Lua string's own, or a number's text.
enum Arg<'a> {
    Lua(&'a [u8]),
    Owned(Vec<u8>),
}

impl Arg<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Arg::Lua(b) => b,
            Arg::Owned(b) => b,
        }
    }

    /// A number as Redis 7.2 passes it to a command: C's `%.17g`, enough digits to read back
    /// the same double (Lua's own `tostring` keeps 14).
    fn number(n: f64) -> Arg<'static> {
        // A whole number below 1e17 has the same text as an integer (-0 aside), without
        // core::fmt: scripts pass counts, TTLs and timestamps.
        if n.fract() == 0.0 && n.abs() < 1e17 && !(n == 0.0 && n.is_sign_negative()) {
            return Arg::Owned(itoa::Buffer::new().format(n as i64).as_bytes().to_vec());
        }
        Arg::Owned(printf_g(n, 17).into_bytes())
    }
}

impl CallArgs {
    fn new(raise: bool, args: &[Arg<'_>]) -> mlua::Result<CallArgs> {
        if args.is_empty() {
            return Err(mlua::Error::runtime(
                "Please specify at least one argument for this redis lib call",
            ));
        }
        let args = keel_resp::one_buffer(args.iter().map(Arg::bytes));
        Ok(CallArgs { raise, args })
    }
}

fn bad_argument() -> mlua::Error {
    mlua::Error::runtime("Lua redis lib command arguments must be strings or integers")
}

impl FromLuaMulti for CallArgs {
    /// Values already taken off the stack (not how mlua calls a Rust function from Lua).
    fn from_lua_multi(values: MultiValue, _: &Lua) -> mlua::Result<CallArgs> {
        let mut values = values.iter();
        let raise = matches!(values.next(), Some(Value::Boolean(true)));
        let args = values
            .map(|v| match v {
                Value::String(s) => Ok(Arg::Owned(s.as_bytes().to_vec())),
                // Lua 5.1 has only doubles: mlua's integers are whole ones among them.
                Value::Integer(i) => Ok(Arg::number(*i as f64)),
                Value::Number(n) => Ok(Arg::number(*n)),
                _ => Err(bad_argument()),
            })
            .collect::<mlua::Result<Vec<_>>>()?;
        CallArgs::new(raise, &args)
    }

    /// The arguments read where they are, on Lua's stack, which is how mlua converts the
    /// arguments of a Rust function that Lua calls. The generic way (a `MultiValue`) takes a
    /// reference to each string first, some 2,000 instructions more a call (EVALSHA of a
    /// two-call script: 49,751 -> 45,024). This method is mlua's (0.12), hidden from its docs;
    /// should a later mlua stop calling it, `from_lua_multi` above gives the same result.
    #[allow(unsafe_code)]
    unsafe fn from_stack_args(
        nargs: c_int,
        _: usize,
        _: Option<&str>,
        lua: &mlua::state::RawLua,
    ) -> mlua::Result<CallArgs> {
        let state = lua.state();
        // SAFETY: mlua calls this with the `nargs` values on top of the stack, which holds
        // them (and so their strings' bytes) until the function returns; nothing is pushed
        // or popped here.
        unsafe {
            let raise = nargs > 0 && ffi::lua_toboolean(state, -nargs) != 0;
            let mut args = SmallVec::<[Arg<'_>; 8]>::new();
            for idx in (1 - nargs)..0 {
                match ffi::lua_type(state, idx) {
                    ffi::LUA_TSTRING => {
                        let mut len = 0;
                        let p = ffi::lua_tolstring(state, idx, &mut len);
                        args.push(Arg::Lua(std::slice::from_raw_parts(p.cast::<u8>(), len)));
                    }
                    ffi::LUA_TNUMBER => args.push(Arg::number(ffi::lua_tonumber(state, idx))),
                    _ => return Err(bad_argument()),
                }
            }
            CallArgs::new(raise, &args)
        }
    }
}

/// A number as Lua 5.1's `tostring` writes it: C's `%.14g`.
pub(crate) fn lua_number(n: f64) -> String {
    printf_g(n, 14)
}

/// C's `%.{digits}g`: `digits` significant digits, trailing zeros dropped, in exponent form
/// below 1e-4 and from 10^digits.
fn printf_g(n: f64, digits: usize) -> String {
    if !n.is_finite() {
        return match (n.is_nan(), n.is_sign_negative()) {
            (true, false) => "nan",
            (true, true) => "-nan",
            (false, false) => "inf",
            (false, true) => "-inf",
        }
        .into();
    }
    // Rounded to `digits` first: the exponent is the rounded number's (9.99...9 is 10).
    let scientific = format!("{n:.*e}", digits - 1);
    let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e}'s exponent is a number");
    // Trailing zeros of a fraction go, and then a bare point.
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..digits as i32).contains(&exponent) {
        trim(&format!(
            "{:.*}",
            (digits as i32 - 1 - exponent) as usize,
            n
        ))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    }
}

/// A command's reply as Lua sees it (Redis's conversion rules).
fn to_lua(lua: &Lua, r: Reply, resp: u8) -> mlua::Result<Value> {
    let seq = |items: Vec<Reply>| -> mlua::Result<Value> {
        let t = lua.create_table_with_capacity(items.len(), 0)?;
        for (i, item) in items.into_iter().enumerate() {
            t.raw_set(i + 1, to_lua(lua, item, resp)?)?;
        }
        Ok(Value::Table(t))
    };
    let field = |name: &str, v: Value| -> mlua::Result<Value> {
        let t = lua.create_table()?;
        t.raw_set(name, v)?;
        Ok(Value::Table(t))
    };
    Ok(match r {
        Reply::Simple(s) => field("ok", Value::String(lua.create_string(s.as_bytes())?))?,
        Reply::Error(e) => field("err", Value::String(lua.create_string(&e)?))?,
        Reply::Int(i) => Value::Integer(i),
        Reply::Bulk(b) => Value::String(lua.create_string(&b)?),
        Reply::Verbatim(s) => Value::String(lua.create_string(&s)?),
        Reply::Nil | Reply::NilArray if resp == 3 => Value::Nil,
        Reply::Nil | Reply::NilArray => Value::Boolean(false),
        Reply::Array(v) | Reply::Push(v) => seq(v)?,
        Reply::Set(v) if resp == 3 => {
            let t = lua.create_table()?;
            for item in v {
                t.raw_set(to_lua(lua, item, resp)?, true)?;
            }
            field("set", Value::Table(t))?
        }
        Reply::Set(v) => seq(v)?,
        Reply::Map(pairs) | Reply::Nested(pairs) if resp == 3 => {
            let t = lua.create_table()?;
            for (k, v) in pairs {
                t.raw_set(to_lua(lua, k, resp)?, to_lua(lua, v, resp)?)?;
            }
            field("map", Value::Table(t))?
        }
        Reply::Pairs(pairs) if resp == 3 => seq((pairs.into_iter())
            .map(|(a, b)| Reply::Array(vec![a, b]))
            .collect())?,
        Reply::Map(pairs) | Reply::Pairs(pairs) => {
            seq(pairs.into_iter().flat_map(|(a, b)| [a, b]).collect())?
        }
        Reply::Nested(pairs) => seq((pairs.into_iter())
            .map(|(a, b)| Reply::Array(vec![a, b]))
            .collect())?,
        Reply::Double(d) if resp == 3 => {
            let n = std::str::from_utf8(&d)
                .ok()
                .and_then(keel_engine::parse_double)
                .unwrap_or(0.0);
            field("double", Value::Number(n))?
        }
        Reply::Double(d) => Value::String(lua.create_string(&d)?),
    })
}

/// How deep a script's reply may nest; deeper (a table that holds itself) ends in an error.
const REPLY_DEPTH_MAX: usize = 1000;

/// A script's return value as a reply (Redis's conversion rules).
fn from_lua(v: &Value, depth: usize) -> mlua::Result<Reply> {
    if depth > REPLY_DEPTH_MAX {
        return Ok(Reply::err("ERR reached lua stack limit"));
    }
    Ok(match v {
        Value::Nil => Reply::Nil,
        Value::Boolean(true) => Reply::Int(1),
        Value::Boolean(false) => Reply::Nil,
        Value::Integer(i) => Reply::Int(*i),
        Value::Number(n) => Reply::Int(*n as i64),
        Value::String(s) => Reply::Bulk(Bytes::copy_from_slice(&s.as_bytes())),
        Value::Table(t) => {
            if let Ok(Value::String(e)) = t.raw_get::<Value>("err") {
                // An empty error is Redis's generic one.
                let e = e.to_string_lossy();
                return Ok(Reply::Error(if e.is_empty() { "ERR".into() } else { e }));
            }
            if let Ok(Value::String(s)) = t.raw_get::<Value>("ok") {
                return Ok(Reply::simple(s.to_string_lossy()));
            }
            if let Ok(Value::Number(d)) = t.raw_get::<Value>("double") {
                return Ok(Reply::Double(Bytes::from(lua_number(d))));
            }
            if let Ok(Value::Table(m)) = t.raw_get::<Value>("map") {
                let mut pairs = Vec::new();
                for pair in m.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    pairs.push((from_lua(&k, depth + 1)?, from_lua(&v, depth + 1)?));
                }
                return Ok(Reply::Map(pairs));
            }
            if let Ok(Value::Table(m)) = t.raw_get::<Value>("set") {
                let mut items = Vec::new();
                for pair in m.pairs::<Value, Value>() {
                    items.push(from_lua(&pair?.0, depth + 1)?);
                }
                return Ok(Reply::Set(items));
            }
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i)? {
                    Value::Nil => break,
                    v => items.push(from_lua(&v, depth + 1)?),
                }
            }
            Reply::Array(items)
        }
        _ => Reply::Nil,
    })
}

/// The text of a Lua error, without mlua's wrapping.
fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => {
            without_traceback(m)
        }
        mlua::Error::ExternalError(e) => e.to_string(),
        other => without_traceback(&other.to_string()),
    }
}

/// A Lua error's message without the stack traceback mlua appends (Redis sends none).
fn without_traceback(m: &str) -> String {
    m.split("stack traceback:")
        .next()
        .unwrap_or(m)
        .trim_end()
        .to_string()
}

/// The reply to a script that failed: a failed `redis.call`'s own error, or Redis's ERR with the
/// Lua message; both name the script.
fn error_reply(e: &mlua::Error, sha: &str) -> Reply {
    if let Some(CallError(msg)) = find_call_error(e) {
        return Reply::Error(format!("{msg} script: {sha}"));
    }
    let msg = lua_message(e);
    // An error raised with a table (error({err=…}) or redis.error_reply's) is its own reply.
    if let Some(rest) = msg.strip_prefix("ERR Script killed") {
        return Reply::Error(format!("ERR Script killed{rest}"));
    }
    let msg = msg.strip_prefix("runtime error: ").unwrap_or(&msg);
    Reply::Error(format!("ERR {msg} script: {sha}"))
}

fn find_call_error(e: &mlua::Error) -> Option<&CallError> {
    match e {
        mlua::Error::CallbackError { cause, .. } => find_call_error(cause),
        mlua::Error::ExternalError(x) => x.downcast_ref::<CallError>(),
        _ => None,
    }
}

fn redis_library(lua: &Lua) -> mlua::Result<Table> {
    let r = lua.create_table()?;
    r.raw_set(
        "status_reply",
        lua.create_function(|lua, s: mlua::LuaString| {
            let t = lua.create_table()?;
            t.raw_set("ok", s)?;
            Ok(t)
        })?,
    )?;
    r.raw_set(
        "error_reply",
        lua.create_function(|lua, s: mlua::LuaString| {
            let t = lua.create_table()?;
            t.raw_set("err", s)?;
            Ok(t)
        })?,
    )?;
    r.raw_set(
        "sha1hex",
        lua.create_function(|_, args: Variadic<mlua::LuaString>| match &args[..] {
            [s] => Ok(sha1_hex(&s.as_bytes())),
            _ => Err(mlua::Error::runtime("wrong number of arguments")),
        })?,
    )?;
    r.raw_set(
        "log",
        lua.create_function(|_, (level, parts): (i64, Variadic<Value>)| {
            let text: Vec<String> = (parts.iter())
                .map(|p| match p {
                    Value::String(s) => s.to_string_lossy(),
                    other => format!("{other:?}"),
                })
                .collect();
            let text = text.join(" ");
            match level {
                3 => tracing::warn!(target: "keel::script", "{text}"),
                2 => tracing::info!(target: "keel::script", "{text}"),
                _ => tracing::debug!(target: "keel::script", "{text}"),
            }
            Ok(())
        })?,
    )?;
    // Effects are always what keel logs; these are accepted for scripts written for Redis.
    r.raw_set("set_repl", lua.create_function(|_, _: Value| Ok(()))?)?;
    r.raw_set("replicate_commands", lua.create_function(|_, ()| Ok(true))?)?;
    for (name, v) in [
        ("LOG_DEBUG", 0),
        ("LOG_VERBOSE", 1),
        ("LOG_NOTICE", 2),
        ("LOG_WARNING", 3),
        ("REPL_NONE", 0),
        ("REPL_AOF", 1),
        ("REPL_SLAVE", 2),
        ("REPL_REPLICA", 2),
        ("REPL_ALL", 3),
    ] {
        r.raw_set(name, v)?;
    }
    // The Redis version keel answers as, as a string and as 0x00MMmmpp.
    let version = crate::server::REDIS_COMPAT_VERSION;
    let num = (version.split('.'))
        .map(|p| p.parse::<i64>().unwrap_or(0))
        .fold(0, |n, p| (n << 8) | p);
    r.raw_set("REDIS_VERSION", version)?;
    r.raw_set("REDIS_VERSION_NUM", num)?;
    Ok(r)
}

/// Lua 5.1 numbers are doubles; `bit` works on their low 32 bits, as LuaBitOp does.
fn tobit(n: f64) -> i32 {
    (n.rem_euclid(4294967296.0) as u64 as u32) as i32
}

fn bit_library(lua: &Lua) -> mlua::Result<Table> {
    let b = lua.create_table()?;
    let fold = |lua: &Lua, f: fn(i32, i32) -> i32| {
        lua.create_function(move |_, args: Variadic<f64>| {
            let mut it = args.iter();
            let first = it
                .next()
                .ok_or_else(|| mlua::Error::runtime("bad argument #1 (number expected)"))?;
            Ok(it.fold(tobit(*first), |acc, x| f(acc, tobit(*x))))
        })
    };
    b.raw_set("band", fold(lua, |a, x| a & x)?)?;
    b.raw_set("bor", fold(lua, |a, x| a | x)?)?;
    b.raw_set("bxor", fold(lua, |a, x| a ^ x)?)?;
    b.raw_set("tobit", lua.create_function(|_, x: f64| Ok(tobit(x)))?)?;
    b.raw_set("bnot", lua.create_function(|_, x: f64| Ok(!tobit(x)))?)?;
    b.raw_set(
        "bswap",
        lua.create_function(|_, x: f64| Ok(tobit(x).swap_bytes()))?,
    )?;
    let shift = |lua: &Lua, f: fn(i32, u32) -> i32| {
        lua.create_function(move |_, (x, n): (f64, f64)| Ok(f(tobit(x), (tobit(n) & 31) as u32)))
    };
    b.raw_set("lshift", shift(lua, |x, n| ((x as u32) << n) as i32)?)?;
    b.raw_set("rshift", shift(lua, |x, n| ((x as u32) >> n) as i32)?)?;
    b.raw_set("arshift", shift(lua, |x, n| x >> n)?)?;
    b.raw_set("rol", shift(lua, |x, n| (x as u32).rotate_left(n) as i32)?)?;
    b.raw_set("ror", shift(lua, |x, n| (x as u32).rotate_right(n) as i32)?)?;
    b.raw_set(
        "tohex",
        lua.create_function(|_, (x, n): (f64, Option<f64>)| {
            let n = n.map_or(8, tobit);
            let (upper, digits) = (n < 0, n.unsigned_abs().min(8) as usize);
            let v = tobit(x) as u32 as u64;
            let s = format!("{v:08x}");
            let s = s[8 - digits..].to_string();
            Ok(if upper { s.to_uppercase() } else { s })
        })?,
    )?;
    Ok(b)
}

/// Tables nested deeper than this pack as nil (lua_cmsgpack's LUACMSGPACK_MAX_NESTING).
const MSGPACK_NESTING_MAX: usize = 16;

/// Redis's cmsgpack library: `pack(...)`, `unpack(s)`, `unpack_one(s, offset)` and
/// `unpack_limit(s, limit, offset)`, mapping Lua values to MessagePack as lua_cmsgpack does:
/// an integral number as the smallest integer, another as a float32 when that is exact (else
/// a float64), a table whose keys are 1..n as an array and any other as a map.
fn cmsgpack_library(lua: &Lua) -> mlua::Result<Table> {
    let c = lua.create_table()?;
    c.raw_set(
        "pack",
        lua.create_function(|lua, args: MultiValue| {
            if args.is_empty() {
                return Err(mlua::Error::runtime("MessagePack pack needs input."));
            }
            let mut out = Vec::new();
            for v in args.iter() {
                msgpack_encode(v, 0, &mut out)?;
            }
            lua.create_string(&out)
        })?,
    )?;
    c.raw_set(
        "unpack",
        lua.create_function(|lua, s: mlua::LuaString| {
            let (_, values) = msgpack_decode(lua, &s.as_bytes(), 0, 0)?;
            Ok(MultiValue::from_vec(values))
        })?,
    )?;
    c.raw_set(
        "unpack_one",
        lua.create_function(|lua, (s, offset): (mlua::LuaString, Option<i64>)| {
            let (next, values) = msgpack_decode(lua, &s.as_bytes(), 1, offset.unwrap_or(0))?;
            let mut out = vec![Value::Number(next as f64)];
            out.extend(values);
            Ok(MultiValue::from_vec(out))
        })?,
    )?;
    c.raw_set(
        "unpack_limit",
        lua.create_function(
            |lua, (s, limit, offset): (mlua::LuaString, i64, Option<i64>)| {
                let limit = limit.max(0) as usize;
                let (next, values) =
                    msgpack_decode(lua, &s.as_bytes(), limit, offset.unwrap_or(0))?;
                let mut out = vec![Value::Number(next as f64)];
                out.extend(values);
                Ok(MultiValue::from_vec(out))
            },
        )?,
    )?;
    Ok(c)
}

fn msgpack_encode(v: &Value, depth: usize, out: &mut Vec<u8>) -> mlua::Result<()> {
    use rmp::encode as e;
    // Writing into a Vec cannot fail; the errors are mapped all the same.
    fn w<T, E: std::fmt::Display>(r: Result<T, E>) -> mlua::Result<()> {
        r.map(|_| ())
            .map_err(|e| mlua::Error::runtime(e.to_string()))
    }
    let int = |n: i64, out: &mut Vec<u8>| match n >= 0 {
        true => w(e::write_uint(out, n as u64)),
        false => w(e::write_sint(out, n)),
    };
    match v {
        Value::Boolean(b) => w(e::write_bool(out, *b)),
        Value::Integer(n) => int(*n, out),
        Value::Number(n) if n.is_finite() && (*n as i64) as f64 == *n => int(*n as i64, out),
        Value::Number(n) if (*n as f32) as f64 == *n || n.is_nan() => {
            w(e::write_f32(out, *n as f32))
        }
        Value::Number(n) => w(e::write_f64(out, *n)),
        Value::String(s) => {
            let b = s.as_bytes();
            w(e::write_str_len(out, b.len() as u32))?;
            out.extend_from_slice(&b);
            Ok(())
        }
        Value::Table(t) if depth < MSGPACK_NESTING_MAX => {
            let (mut count, mut max, mut array) = (0usize, 0usize, true);
            for pair in t.clone().pairs::<Value, Value>() {
                count += 1;
                match pair?.0 {
                    Value::Integer(i) if i > 0 => max = max.max(i as usize),
                    Value::Number(n) if n > 0.0 && n.fract() == 0.0 => max = max.max(n as usize),
                    _ => array = false,
                }
            }
            if array && max == count {
                w(e::write_array_len(out, count as u32))?;
                for i in 1..=count {
                    msgpack_encode(&t.raw_get::<Value>(i)?, depth + 1, out)?;
                }
            } else {
                w(e::write_map_len(out, count as u32))?;
                for pair in t.clone().pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    msgpack_encode(&k, depth + 1, out)?;
                    msgpack_encode(&v, depth + 1, out)?;
                }
            }
            Ok(())
        }
        // Nil, tables nested too deep, functions and the rest: nil.
        _ => w(e::write_nil(out)),
    }
}

/// Reads up to `limit` values (0: all) from `bytes` at `offset`; returns the offset of the
/// next value, or -1 when none is left, and the values.
fn msgpack_decode(
    lua: &Lua,
    bytes: &[u8],
    limit: usize,
    offset: i64,
) -> mlua::Result<(i64, Vec<Value>)> {
    if offset < 0 || offset as usize > bytes.len() {
        return Err(mlua::Error::runtime(format!(
            "Start offset {offset} greater than input length {}.",
            bytes.len()
        )));
    }
    let mut cur = std::io::Cursor::new(&bytes[offset as usize..]);
    let mut values = Vec::new();
    while (cur.position() as usize) < cur.get_ref().len() && (limit == 0 || values.len() < limit) {
        // 0xc1 is never used; rmpv would read it as nil.
        if cur.get_ref()[cur.position() as usize] == 0xc1 {
            return Err(mlua::Error::runtime("Bad data format in input."));
        }
        let v = rmpv::decode::read_value(&mut cur).map_err(|e| {
            mlua::Error::runtime(match e {
                rmpv::decode::Error::InvalidMarkerRead(_)
                | rmpv::decode::Error::InvalidDataRead(_) => "Missing bytes in input.",
                _ => "Bad data format in input.",
            })
        })?;
        values.push(from_msgpack(lua, v)?);
    }
    let at = offset as usize + cur.position() as usize;
    let next = if at < bytes.len() { at as i64 } else { -1 };
    Ok((next, values))
}

fn from_msgpack(lua: &Lua, v: rmpv::Value) -> mlua::Result<Value> {
    use rmpv::Value as M;
    Ok(match v {
        M::Nil => Value::Nil,
        M::Boolean(b) => Value::Boolean(b),
        M::Integer(i) => Value::Number(i.as_f64().unwrap_or(0.0)),
        M::F32(f) => Value::Number(f as f64),
        M::F64(f) => Value::Number(f),
        M::String(s) => Value::String(lua.create_string(s.as_bytes())?),
        M::Binary(b) => Value::String(lua.create_string(&b)?),
        M::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, from_msgpack(lua, item)?)?;
            }
            Value::Table(t)
        }
        M::Map(pairs) => {
            let t = lua.create_table_with_capacity(0, pairs.len())?;
            for (k, v) in pairs {
                let k = from_msgpack(lua, k)?;
                if !k.is_nil() {
                    t.raw_set(k, from_msgpack(lua, v)?)?;
                }
            }
            Value::Table(t)
        }
        M::Ext(..) => return Err(mlua::Error::runtime("Bad data format in input.")),
    })
}

fn cjson_library(lua: &Lua) -> mlua::Result<Table> {
    use std::sync::atomic::AtomicUsize;
    let c = lua.create_table()?;
    // The deepest nesting encode and decode accept (cjson's encode_max_depth and
    // decode_max_depth, 1,000 each by default), for the script that set them: each run starts
    // from the defaults again (`JsonSettings::reset`), so one script's setting does not leak.
    let (encode_max, decode_max) = (
        Arc::new(AtomicUsize::new(1000)),
        Arc::new(AtomicUsize::new(1000)),
    );
    // encode_invalid_numbers, for the script that set it too.
    let invalid = Arc::new(Mutex::new(InvalidNumbers::Refuse));
    let (max, setting) = (encode_max.clone(), invalid.clone());
    c.raw_set(
        "encode",
        lua.create_function(move |_, v: Value| {
            let mut out = String::new();
            let invalid = *crate::lock(&setting);
            encode_json(&v, 0, max.load(Ordering::Relaxed), invalid, &mut out)?;
            Ok(out)
        })?,
    )?;
    let setting = invalid.clone();
    c.raw_set(
        "encode_invalid_numbers",
        lua.create_function(move |_, v: Option<Value>| {
            let mut current = crate::lock(&setting);
            *current = match &v {
                None => *current,
                Some(Value::Boolean(true)) => InvalidNumbers::Allow,
                Some(Value::Boolean(false)) => InvalidNumbers::Refuse,
                Some(Value::String(s)) => match &s.as_bytes()[..] {
                    b"on" => InvalidNumbers::Allow,
                    b"off" => InvalidNumbers::Refuse,
                    b"null" => InvalidNumbers::Null,
                    _ => {
                        return Err(mlua::Error::runtime(
                            "bad argument #1 to 'encode_invalid_numbers' (invalid option)",
                        ))
                    }
                },
                Some(_) => {
                    return Err(mlua::Error::runtime(
                        "bad argument #1 to 'encode_invalid_numbers' (invalid option)",
                    ))
                }
            };
            Ok(match *current {
                InvalidNumbers::Refuse => Value::Boolean(false),
                InvalidNumbers::Allow => Value::Boolean(true),
                InvalidNumbers::Null => Value::NULL,
            })
        })?,
    )?;
    let max = decode_max.clone();
    c.raw_set(
        "decode",
        lua.create_function(move |lua, s: mlua::LuaString| {
            let j: serde_json::Value = serde_json::from_slice(&s.as_bytes()).map_err(|e| {
                mlua::Error::runtime(format!("Expected value but found invalid token: {e}"))
            })?;
            let max = max.load(Ordering::Relaxed);
            if json_depth(&j) > max {
                return Err(mlua::Error::runtime(format!(
                    "Found too many nested data structures ({})",
                    max + 1
                )));
            }
            from_json(lua, &j)
        })?,
    )?;
    lua.set_app_data(JsonSettings {
        encode_max: encode_max.clone(),
        decode_max: decode_max.clone(),
        invalid,
    });
    for (name, max) in [
        ("encode_max_depth", encode_max),
        ("decode_max_depth", decode_max),
    ] {
        let set = lua.create_function(move |_, n: Option<i64>| {
            if let Some(n) = n {
                if !(1..=i32::MAX as i64).contains(&n) {
                    return Err(mlua::Error::runtime(
                        "bad argument #1 (expected integer between 1 and 2147483647)",
                    ));
                }
                max.store(n as usize, Ordering::Relaxed);
            }
            Ok(max.load(Ordering::Relaxed) as i64)
        })?;
        c.raw_set(name, set)?;
    }
    // keel keeps no encode buffer between calls: the setting is accepted and echoed.
    c.raw_set(
        "encode_keep_buffer",
        lua.create_function(|_, v: Option<bool>| Ok(v.unwrap_or(true)))?,
    )?;
    c.raw_set("null", Value::NULL)?;
    Ok(c)
}

/// How deep a JSON value nests: 0 for a scalar, 1 for a flat array or object.
fn json_depth(j: &serde_json::Value) -> usize {
    match j {
        serde_json::Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What cjson.encode does with NaN and the infinities (`encode_invalid_numbers`): refuses
/// them (the default), writes them as `nan`, `inf` and `-inf` (not JSON, as lua-cjson does),
/// or as `null`.
#[derive(Clone, Copy, PartialEq)]
enum InvalidNumbers {
    Refuse,
    Allow,
    Null,
}

/// cjson.encode: `v` as JSON text, appended to `out`; tables nested deeper than `max` refused.
fn encode_json(
    v: &Value,
    depth: usize,
    max: usize,
    invalid: InvalidNumbers,
    out: &mut String,
) -> mlua::Result<()> {
    if depth >= max && matches!(v, Value::Table(_)) {
        return Err(mlua::Error::runtime(format!(
            "Cannot serialise, excessive nesting ({})",
            depth + 1
        )));
    }
    let text = |s: &str, out: &mut String| {
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    };
    match v {
        Value::Nil => out.push_str("null"),
        Value::LightUserData(p) if p.0.is_null() => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Number(n) if !n.is_finite() => match invalid {
            InvalidNumbers::Refuse => {
                return Err(mlua::Error::runtime(
                    "Cannot serialise number: must not be NaN or Inf",
                ))
            }
            InvalidNumbers::Null => out.push_str("null"),
            InvalidNumbers::Allow if n.is_nan() => out.push_str("nan"),
            InvalidNumbers::Allow => out.push_str(if *n > 0.0 { "inf" } else { "-inf" }),
        },
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
            out.push_str(&(*n as i64).to_string())
        }
        Value::Number(n) => {
            let j = serde_json::Number::from_f64(*n).expect("finite");
            out.push_str(&j.to_string());
        }
        Value::String(s) => text(&s.to_string_lossy(), out),
        Value::Table(t) => {
            let n = t.raw_len();
            let count = t.clone().pairs::<Value, Value>().count();
            if n > 0 && count == n {
                out.push('[');
                for i in 1..=n {
                    if i > 1 {
                        out.push(',');
                    }
                    encode_json(&t.raw_get::<Value>(i)?, depth + 1, max, invalid, out)?;
                }
                out.push(']');
            } else {
                // Keys in order; a key given twice (1 and "1") keeps its last value.
                let mut fields = std::collections::BTreeMap::new();
                for pair in t.clone().pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    let key = match &k {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(i) => i.to_string(),
                        Value::Number(n) => lua_number(*n),
                        _ => {
                            return Err(mlua::Error::runtime(
                                "Cannot serialise table: table key must be a number or string",
                            ))
                        }
                    };
                    let mut value = String::new();
                    encode_json(&v, depth + 1, max, invalid, &mut value)?;
                    fields.insert(key, value);
                }
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    text(k, out);
                    out.push(':');
                    out.push_str(v);
                }
                out.push('}');
            }
        }
        _ => return Err(mlua::Error::runtime("Cannot serialise: type not supported")),
    }
    Ok(())
}

fn from_json(lua: &Lua, j: &serde_json::Value) -> mlua::Result<Value> {
    use serde_json::Value as J;
    Ok(match j {
        J::Null => Value::NULL,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, v) in a.iter().enumerate() {
                t.raw_set(i + 1, from_json(lua, v)?)?;
            }
            Value::Table(t)
        }
        J::Object(o) => {
            let t = lua.create_table_with_capacity(0, o.len())?;
            for (k, v) in o {
                t.raw_set(k.as_str(), from_json(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

/// cjson's settings a script may change, which every run starts from again.
struct JsonSettings {
    encode_max: Arc<std::sync::atomic::AtomicUsize>,
    decode_max: Arc<std::sync::atomic::AtomicUsize>,
    invalid: Arc<Mutex<InvalidNumbers>>,
}

impl JsonSettings {
    fn reset(&self) {
        self.encode_max.store(1000, Ordering::Relaxed);
        self.decode_max.store(1000, Ordering::Relaxed);
        *crate::lock(&self.invalid) = InvalidNumbers::Refuse;
    }
}

/// The state of `math.random`: drand48's 48 bits.
struct Drand48(Arc<Mutex<u64>>);

impl Drand48 {
    fn seed(&self, x: u64) {
        *crate::lock(&self.0) = ((x & 0xFFFF_FFFF) << 16) | 0x330E;
    }
}

/// `math.random` and `math.randomseed` on a 48-bit generator (drand48's constants) that every
/// run restarts from the same seed, so a script's choices do not depend on earlier runs.
fn deterministic_random(lua: &Lua) -> mlua::Result<()> {
    let state = Arc::new(Mutex::new(0u64));
    let math: Table = lua.globals().raw_get("math")?;
    let next = {
        let state = state.clone();
        move || {
            let mut s = crate::lock(&state);
            *s = (s.wrapping_mul(0x5DEECE66D).wrapping_add(0xB)) & ((1 << 48) - 1);
            *s as f64 / (1u64 << 48) as f64
        }
    };
    math.raw_set(
        "random",
        lua.create_function(move |_, args: MultiValue| {
            let r = next();
            let n: Vec<f64> = args
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => Ok(*i as f64),
                    Value::Number(n) => Ok(*n),
                    _ => Err(mlua::Error::runtime(
                        "bad argument to 'random' (number expected)",
                    )),
                })
                .collect::<mlua::Result<_>>()?;
            match n[..] {
                [] => Ok(Value::Number(r)),
                [m] if m >= 1.0 => Ok(Value::Number((r * m).floor() + 1.0)),
                [l, u] if l <= u => Ok(Value::Number((r * (u - l + 1.0)).floor() + l)),
                [_] | [_, _] => Err(mlua::Error::runtime(
                    "bad argument to 'random' (interval is empty)",
                )),
                _ => Err(mlua::Error::runtime("wrong number of arguments")),
            }
        })?,
    )?;
    let seeded = Drand48(state.clone());
    math.raw_set(
        "randomseed",
        lua.create_function(move |_, x: f64| {
            seeded.seed(x as i64 as u64);
            Ok(())
        })?,
    )?;
    lua.set_app_data(Drand48(state));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` with a caller that answers every command with its arguments joined.
    fn eval(body: &str, keys: &[&str], argv: &[&str]) -> Reply {
        let bytes = |items: &[&str]| items.iter().map(|x| x.as_bytes().to_vec()).collect();
        eval_bytes(body, bytes(keys), bytes(argv))
    }

    /// [`eval`] with keys and arguments of any bytes.
    fn eval_bytes(body: &str, keys: Vec<Vec<u8>>, argv: Vec<Vec<u8>>) -> Reply {
        struct Echo(bool);
        impl Caller for Echo {
            fn call(&mut self, args: Vec<Bytes>) -> Reply {
                if args[0].eq_ignore_ascii_case(b"fail") {
                    return Reply::err("ERR failed on purpose");
                }
                self.0 = true;
                Reply::Bulk(Bytes::from(args.join(&b' ')))
            }
            fn wrote(&self) -> bool {
                self.0
            }
        }
        let s = Scripts::new();
        let sha = match s.load(body.as_bytes()) {
            Ok(sha) => sha,
            Err(e) => return e,
        };
        let head = ["EVAL", body, &keys.len().to_string()].map(|x| x.as_bytes().to_vec());
        let command: Vec<Bytes> = (head.into_iter().chain(keys).chain(argv))
            .map(Bytes::from)
            .collect();
        s.run(&sha, &command, &mut Echo(false))
    }

    /// A caller that answers every command with its name and keeps what it was called with.
    struct Named(&'static str, Vec<Vec<Bytes>>);

    impl Caller for Named {
        fn call(&mut self, args: Vec<Bytes>) -> Reply {
            self.1.push(args);
            Reply::Bulk(Bytes::from_static(self.0.as_bytes()))
        }
        fn wrote(&self) -> bool {
            false
        }
    }

    fn evalsha(sha: &str, key: &str) -> Vec<Bytes> {
        ["EVALSHA", sha, "1", key]
            .map(|x| Bytes::copy_from_slice(x.as_bytes()))
            .to_vec()
    }

    /// `redis.call` is one Rust function for every run of a Lua state: it reaches the caller
    /// of the run in progress (after a run that failed too), and outside a run none.
    #[test]
    fn redis_call_reaches_the_run_in_progress_and_no_caller_outside_one() {
        let s = Scripts::new();
        let get = s.load(b"return redis.call('get', KEYS[1])").expect("loads");
        let fail = s
            .load(b"redis.call('get', KEYS[1]); error('stop')")
            .expect("loads");
        let (mut a, mut b) = (Named("a", Vec::new()), Named("b", Vec::new()));
        assert_eq!(
            s.run(&get, &evalsha(&get, "k1"), &mut a),
            Reply::Bulk("a".into())
        );
        assert!(matches!(
            s.run(&fail, &evalsha(&fail, "k2"), &mut b),
            Reply::Error(_)
        ));
        assert_eq!(
            s.run(&get, &evalsha(&get, "k3"), &mut b),
            Reply::Bulk("b".into())
        );
        let keys = |c: &Named| c.1.iter().map(|args| args[1].clone()).collect::<Vec<_>>();
        assert_eq!(keys(&a), ["k1"]);
        assert_eq!(keys(&b), ["k2", "k3"]);

        // redis.call itself, called from Rust between runs.
        let lua = crate::lock(&s.vm).lua.clone();
        let redis: Table = lua
            .named_registry_value("keel_redis")
            .expect("the sandbox's");
        let call: Function = redis.get("call").expect("set by the sandbox");
        let err = (call.call::<Value>(("get", "k4"))).expect_err("no run in progress");
        assert!(
            err.to_string().contains("only while their script runs"),
            "{err}"
        );
        assert_eq!(keys(&b), ["k2", "k3"]);
    }

    /// Scripts run on two threads at once each reach their own caller.
    #[test]
    fn runs_on_two_threads_reach_their_own_callers() {
        std::thread::scope(|scope| {
            for name in ["a", "b"] {
                scope.spawn(move || {
                    let s = Scripts::new();
                    let sha = s
                        .load(b"for i = 1, 50 do redis.call('get', KEYS[1]) end")
                        .expect("loads");
                    let mut c = Named(name, Vec::new());
                    for _ in 0..100 {
                        s.run(&sha, &evalsha(&sha, name), &mut c);
                    }
                    assert_eq!(c.1.len(), 5_000);
                    assert!(c.1.iter().all(|args| args[1] == name.as_bytes()));
                });
            }
        });
    }

    /// KEYS and ARGV hold what the client sent, text or not, and `redis.call` passes it on
    /// unchanged.
    #[test]
    fn keys_and_arguments_reach_the_script_byte_for_byte() {
        let body =
            "return {KEYS[1], ARGV[1], #KEYS[1] + #ARGV[1], redis.call('echo', KEYS[1], ARGV[1])}";
        let bulk = |b: &[u8]| Reply::Bulk(Bytes::copy_from_slice(b));
        let text = (b"k\xc3\xa9".to_vec(), b"v".to_vec());
        let binary = (b"k\xff\x00".to_vec(), b"\x80\r\n".to_vec());
        for (k, v) in [text, binary] {
            let reply = eval_bytes(body, vec![k.clone()], vec![v.clone()]);
            let call = [&b"echo "[..], &k, b" ", &v].concat();
            let expected = vec![
                bulk(&k),
                bulk(&v),
                Reply::Int((k.len() + v.len()) as i64),
                bulk(&call),
            ];
            assert_eq!(reply, Reply::Array(expected), "{k:?} {v:?}");
        }
    }

    #[test]
    fn a_library_loads_with_only_the_library_api_and_its_functions_see_everything() {
        let load = |code: &str| {
            let mut libs = Libraries::new();
            libs.insert("lib".into(), Bytes::from(format!("#!lua name=lib\n{code}")));
            compile_libraries(&libs).map(|_| ())
        };
        for (code, missing) in [
            ("return math.random()", "math"),
            ("return redis.call('ping')", "call"),
            ("return redis.setresp(3)", "setresp"),
            ("local x = redis.math.random()", "math"),
        ] {
            let Err(Reply::Error(e)) = load(code) else {
                panic!("{code} loaded")
            };
            let want = format!("attempted to access nonexistent global variable '{missing}'");
            assert!(e.contains(&want), "{code}: {e}");
        }
        let f = "redis.register_function('f', function() return math.floor(redis.call('x')) end)";
        assert!(load(f).is_ok());
        let twice = "local f = function() return 1 end\n\
                     redis.register_function('f', f)\nredis.register_function('f', f)";
        let Err(Reply::Error(e)) = load(twice) else {
            panic!("a name registered twice")
        };
        assert!(e.contains("Function already exists in the library"), "{e}");
    }

    #[test]
    fn script_kill_during_a_call_answers_by_what_the_call_did() {
        use std::sync::mpsc;
        // A caller that stops inside each call until told whether the call wrote.
        struct Gate {
            inside: mpsc::Sender<()>,
            wrote_now: mpsc::Receiver<bool>,
            wrote: bool,
        }
        impl Caller for Gate {
            fn call(&mut self, _: Vec<Bytes>) -> Reply {
                self.inside.send(()).unwrap();
                self.wrote |= self.wrote_now.recv().unwrap();
                Reply::ok()
            }
            fn wrote(&self) -> bool {
                self.wrote
            }
        }
        for call_writes in [true, false] {
            let scripts = Arc::new(Scripts::new());
            // After its call the script runs on for a while, so that a KILL normally lands
            // while it runs; one that lands after its end must answer NOTBUSY.
            let body =
                "redis.call('set', 'k', 'v') for i = 1, 3000000 do end return 'ran to its end'";
            let sha = scripts.load(body.as_bytes()).unwrap();
            let (inside, entered) = mpsc::channel();
            let (tell, wrote_now) = mpsc::channel();
            let s = scripts.clone();
            let script = std::thread::spawn(move || {
                let command = ["EVAL", body, "0"].map(|x| Bytes::from(x.to_string()));
                let mut gate = Gate {
                    inside,
                    wrote_now,
                    wrote: false,
                };
                s.run(&sha, &command, &mut gate)
            });
            entered.recv().unwrap();
            let s = scripts.clone();
            let kill = std::thread::spawn(move || s.kill(false));
            // The KILL must wait for the call to end: it cannot yet know whether it writes.
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!kill.is_finished(), "SCRIPT KILL answered during a call");
            tell.send(call_writes).unwrap();
            let (kill, reply) = (kill.join().unwrap(), script.join().unwrap());
            if call_writes {
                assert!(matches!(kill, Kill::Unkillable));
                assert_eq!(reply, Reply::Bulk("ran to its end".into()));
            } else {
                match kill {
                    Kill::Killed => {
                        let Reply::Error(e) = reply else {
                            panic!("a killed script answered {reply:?}")
                        };
                        assert!(e.starts_with("ERR Script killed by user"), "{e}");
                    }
                    Kill::NotBusy => assert_eq!(reply, Reply::Bulk("ran to its end".into())),
                    _ => panic!("SCRIPT KILL of a script that has not written did not kill it"),
                }
            }
        }
    }

    #[test]
    fn library_metadata_and_registration_errors_follow_redis() {
        let name = |line: &str| match library_name(format!("{line}\nreturn").as_bytes()) {
            Ok(n) => n,
            Err(Reply::Error(e)) => e,
            Err(r) => panic!("{r:?}"),
        };
        assert_eq!(name("#!lua name=lib"), "lib");
        assert_eq!(name("#!LUA NAME=\"lib\""), "lib");
        assert_eq!(name("#! name=lib"), "ERR Engine '' not found");
        assert_eq!(name("#!js name=lib"), "ERR Engine 'js' not found");
        assert_eq!(
            name("#!lua name=a name=b"),
            "ERR Invalid metadata value, name argument was given multiple times"
        );
        assert_eq!(
            name("#!lua name=a x=y"),
            "ERR Invalid metadata value given: x=y"
        );
        assert_eq!(name("#!lua"), "ERR Library name was not given");
        assert_eq!(name("#!lua name=\"a"), "ERR Invalid library metadata");
        assert_eq!(name("return 1"), "ERR Missing library metadata");
        assert!(name("#!lua name=a-b").starts_with("ERR Library names can only contain"));

        let load = |code: &str| {
            let mut libs = Libraries::new();
            libs.insert("lib".into(), Bytes::from(format!("#!lua name=lib\n{code}")));
            match compile_libraries(&libs) {
                Ok(_) => String::new(),
                Err(Reply::Error(e)) => e,
                Err(r) => panic!("{r:?}"),
            }
        };
        let f = "function() return 1 end";
        for (code, want) in [
            ("redis.register_function('', F)", "Library names can only contain"),
            ("redis.register_function{function_name=F, callback=F}", "function_name argument given to redis.register_function must be a string"),
            ("redis.register_function{function_name='f', callback='x'}", "callback argument given to redis.register_function must be a function"),
            ("redis.register_function{function_name='f', callback=F, description=F}", "description argument given to redis.register_function must be a string"),
            ("redis.register_function{function_name='f', callback=F, flags='no-writes'}", "flags argument to redis.register_function must be a table representing function flags"),
            ("redis.register_function{function_name='f', callback=F, flags={F}}", "unknown flag given"),
        ] {
            let e = load(&code.replace('F', f));
            assert!(e.starts_with("ERR Error registering functions: "), "{code}: {e}");
            assert!(e.contains(want), "{code}: {e}");
        }
        // The version constants are there at load time, and the library API's
        // register_function refuses once the load is over.
        let mut libs = Libraries::new();
        let code = "#!lua name=lib\nlocal lib = redis\nlocal v = redis.REDIS_VERSION_NUM\n\
                    lib.register_function('version', function() return {v, lib.REDIS_VERSION} end)\n\
                    lib.register_function('late', function() lib.register_function('x', function() end) end)";
        libs.insert("lib".into(), Bytes::from(code));
        let scripts = Scripts::new();
        scripts.install(compile_libraries(&libs).unwrap());
        struct NoCalls;
        impl Caller for NoCalls {
            fn call(&mut self, _: Vec<Bytes>) -> Reply {
                unreachable!()
            }
            fn wrote(&self) -> bool {
                false
            }
        }
        let fcall = |name: &str| {
            let command = ["FCALL", name, "0"].map(|x| Bytes::from(x.to_string()));
            scripts.call_function(name, &command, &mut NoCalls)
        };
        assert_eq!(
            fcall("version"),
            Reply::Array(vec![Reply::Int(0x070200), Reply::Bulk("7.2.0".into())])
        );
        let Reply::Error(e) = fcall("late") else {
            panic!("registered a function after its library loaded")
        };
        assert!(
            e.contains("redis.register_function can only be called on FUNCTION LOAD command"),
            "{e}"
        );
    }

    #[test]
    fn conversions_follow_redis() {
        assert_eq!(eval("return 1.9", &[], &[]), Reply::Int(1));
        assert_eq!(eval("return true", &[], &[]), Reply::Int(1));
        assert_eq!(eval("return false", &[], &[]), Reply::Nil);
        assert_eq!(
            eval("return {1, 'a', nil, 3}", &[], &[]),
            Reply::Array(vec![Reply::Int(1), Reply::Bulk("a".into())])
        );
        assert_eq!(
            eval("return redis.status_reply('FINE')", &[], &[]),
            Reply::Simple("FINE".into())
        );
        assert_eq!(
            eval("return redis.error_reply('MY err')", &[], &[]),
            Reply::Error("MY err".into())
        );
        assert_eq!(
            eval("return {KEYS[1], ARGV[2]}", &["k"], &["a", "b"]),
            Reply::Array(vec![Reply::Bulk("k".into()), Reply::Bulk("b".into())])
        );
        assert_eq!(
            eval("return redis.call('set', KEYS[1], 5)", &["k"], &[]),
            Reply::Bulk("set k 5".into())
        );
    }

    /// Numbers passed to redis.call: as Redis 7.2 writes them (`%.17g`; checked against
    /// redis-server 7.0.15, which does the same); strings byte for byte; anything else
    /// refused with Redis's error.
    #[test]
    fn call_arguments_follow_redis() {
        assert_eq!(
            eval(
                "return redis.call('x', 5, -7, 2^53, 0.1 + 0.2, 1e300, 1e-7, 2.5, -0.0, 2^60, KEYS[1], '')",
                &["k\0\x01"],
                &[]
            ),
            Reply::Bulk(
                "x 5 -7 9007199254740992 0.30000000000000004 1.0000000000000001e+300 \
                 9.9999999999999995e-08 2.5 -0 1.152921504606847e+18 k\0\x01 "
                    .into()
            )
        );
        for call in ["redis.call", "redis.pcall"] {
            for args in ["'set', {}", "'set', nil", "'set', true", "redis.call"] {
                let Reply::Error(e) = eval(&format!("return {call}({args})"), &[], &[]) else {
                    panic!("{call}({args}) was not refused");
                };
                assert!(
                    e.starts_with(
                        "ERR Lua redis lib command arguments must be strings or integers"
                    ),
                    "{call}({args}): {e}"
                );
            }
            let Reply::Error(e) = eval(&format!("return {call}()"), &[], &[]) else {
                panic!("{call}() was not refused");
            };
            assert!(
                e.starts_with("ERR Please specify at least one argument for this redis lib call"),
                "{e}"
            );
        }
        // pcall in Lua catches the refusal like any other error.
        assert_eq!(
            eval("return tostring(pcall(redis.call, 'set', {}))", &[], &[]),
            Reply::Bulk("false".into())
        );
    }

    /// Both of mlua's ways to hand a function its arguments give the same `CallArgs`.
    #[test]
    fn call_arguments_from_values_match_those_read_off_the_stack() {
        let lua = Lua::new();
        let values = MultiValue::from_vec(vec![
            Value::Boolean(true),
            Value::String(lua.create_string(b"k\0\x01").unwrap()),
            Value::Integer(-7),
            Value::Integer(1 << 60),
            Value::Number(2.5),
            Value::Number(1e300),
        ]);
        let CallArgs { raise, args } = CallArgs::from_lua_multi(values, &lua).unwrap();
        assert!(raise);
        assert_eq!(
            args,
            [
                "k\0\x01",
                "-7",
                "1.152921504606847e+18",
                "2.5",
                "1.0000000000000001e+300"
            ]
            .map(Bytes::from)
        );
        let table = Value::Table(lua.create_table().unwrap());
        let refused = MultiValue::from_vec(vec![Value::Boolean(false), table]);
        assert!(CallArgs::from_lua_multi(refused, &lua).is_err());
        let none = MultiValue::from_vec(vec![Value::Boolean(false)]);
        assert!(CallArgs::from_lua_multi(none, &lua).is_err());
    }

    /// lua_number writes what Lua's own tostring writes.
    #[test]
    fn lua_number_is_lua_tostring() {
        let lua = Lua::new();
        for n in [
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1.0 / 3.0,
            2.0 / 3.0,
            1e13,
            1e14,
            99999999999999.5,
            123456789012345.0,
            1e15 + 0.5,
            1e-4,
            1.5e-4,
            9.99999999999999e-5,
            1e-5,
            1e100,
            -1e-300,
            5e-324,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.30000000000000004,
        ] {
            let lua_text: String = lua.load("return tostring(...)").call(n).unwrap();
            assert_eq!(lua_number(n), lua_text, "{n:e}");
        }
    }

    #[test]
    fn errors_name_the_script() {
        let Reply::Error(e) = eval("return redis.call('fail')", &[], &[]) else {
            panic!()
        };
        assert!(e.starts_with("ERR failed on purpose script: "), "{e}");
        let r = eval("local ok = redis.pcall('fail'); return ok['err']", &[], &[]);
        assert_eq!(r, Reply::Bulk("ERR failed on purpose".into()));
        let Reply::Error(e) = eval("x = 1", &[], &[]) else {
            panic!()
        };
        assert!(e.contains("Attempt to modify a readonly table"), "{e}");
        let Reply::Error(e) = eval("return y", &[], &[]) else {
            panic!()
        };
        assert!(
            e.contains("user_script:1: Script attempted to access nonexistent global variable 'y'"),
            "{e}"
        );
        // The globals table itself refuses a missing name, for a chunk loadstring made too.
        let r = eval("return loadstring('return z')()", &[], &[]);
        let Reply::Error(e) = r else { panic!("{r:?}") };
        assert!(e.contains("nonexistent global variable 'z'"), "{e}");
        let Reply::Error(e) = eval("return +", &[], &[]) else {
            panic!()
        };
        assert!(e.starts_with("ERR Error compiling script"), "{e}");
        let Reply::Error(e) = eval("return os.time()", &[], &[]) else {
            panic!()
        };
        assert!(e.contains("'os'"), "{e}");
    }

    #[test]
    fn globals_and_libraries_are_read_only() {
        for body in [
            "redis = 1",
            "_G = {}",
            "redis.call = nil",
            "bit.band = nil",
            "cjson.encode = nil",
            "string.rep = nil",
            "setmetatable(_G, {})",
            "getmetatable(_G).__index = {}",
            "rawset(_G, 'x', 1)",
            "rawset(redis, 'call', 1)",
        ] {
            let Reply::Error(e) = eval(body, &[], &[]) else {
                panic!("{body}: ran")
            };
            assert!(
                e.contains("Attempt to modify a readonly table"),
                "{body}: {e}"
            );
        }
        // Local tables stay the script's own.
        let r = eval(
            "local t = setmetatable({}, {}); rawset(t, 'a', 1); return t.a",
            &[],
            &[],
        );
        assert_eq!(r, Reply::Int(1));
        let Reply::Error(e) = eval(
            "return loadstring(string.dump(function() return 1 end))()",
            &[],
            &[],
        ) else {
            panic!("binary code ran")
        };
        assert!(e.contains("attempt to call a nil value"), "{e}");
        assert_eq!(
            eval("return loadstring('return 2')()", &[], &[]),
            Reply::Int(2)
        );
    }

    #[test]
    fn libraries() {
        assert_eq!(
            eval("return bit.band(0xff, 0x0f)", &[], &[]),
            Reply::Int(15)
        );
        assert_eq!(
            eval("return bit.tohex(255, 4)", &[], &[]),
            Reply::Bulk("00ff".into())
        );
        assert_eq!(eval("return bit.bnot(0)", &[], &[]), Reply::Int(-1));
        assert_eq!(
            eval(
                "return cjson.encode(cjson.decode('{\"a\":[1,2,3]}'))",
                &[],
                &[]
            ),
            Reply::Bulk("{\"a\":[1,2,3]}".into())
        );
        assert_eq!(
            eval("return redis.sha1hex('')", &[], &[]),
            Reply::Bulk("da39a3ee5e6b4b0d3255bfef95601890afd80709".into())
        );
        // The same sequence every run.
        let a = eval("return {math.random(100), math.random(100)}", &[], &[]);
        assert_eq!(
            a,
            eval("return {math.random(100), math.random(100)}", &[], &[])
        );
    }

    #[test]
    fn shebang_flags() {
        let s = Scripts::new();
        let sha = s.load(b"#!lua flags=no-writes\nreturn 1").unwrap();
        assert_eq!(
            s.flags(&sha),
            Some(ScriptFlags {
                no_writes: true,
                declared: true
            })
        );
        assert!(
            matches!(s.load(b"#!python\nreturn 1"), Err(Reply::Error(e)) if e.contains("Unexpected engine in script shebang"))
        );
        assert!(
            matches!(s.load(b"#!lua flags=bogus\nreturn 1"), Err(Reply::Error(e)) if e.contains("Unexpected flag"))
        );
    }
}
