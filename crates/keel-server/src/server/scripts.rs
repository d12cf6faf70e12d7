//! EVAL, EVALSHA, their read-only forms and SCRIPT on a connection (see [`crate::scripting`]).
//!
//! A script runs on the worker that read it, inside one engine transaction, holding the
//! sequencer: other writes wait, asynchronously, until it ends. Scripts take turns without
//! holding a thread. A script that runs past a few milliseconds hands the worker's other
//! connections to another thread and runs on (see [`crate::scripting`]), and once it has run
//! `busy-reply-threshold` ms every command but SCRIPT KILL and SHUTDOWN gets -BUSY. Reads of
//! other clients are served meanwhile, from the durable state (Redis serves nothing while a
//! script runs). On a cluster, the leader's dry runs go to the scripts' own thread
//! ([`ScriptThread`]).

use super::*;
use crate::cmd::Command;
use crate::scripting::{
    compile_libraries, decode_libraries, encode_libraries, library_name, Caller, Kill, Libraries,
};

/// The system entry that holds the function libraries (docs/FORMAT.md).
pub(super) const FUNCTIONS_KEY: &[u8] = b"server.functions";
/// How often a cluster's leader runs a script again when other writes keep changing its keys
/// between its dry run and its proposal.
const CLUSTER_SCRIPT_TRIES: usize = 16;

pub(super) const NO_SCRIPTS_ON_A_CLUSTER: &str =
    "ERR keel cluster does not queue scripts in MULTI: send the script on its own (a script is atomic)";

fn kill_reply(k: Kill) -> Reply {
    match k {
        Kill::NotBusy => Reply::err("NOTBUSY No scripts in execution right now."),
        Kill::Unkillable => Reply::err(
            "UNKILLABLE Sorry the script already executed write commands against the dataset. You can either wait the script termination or kill the server in a hard way using the SHUTDOWN NOSAVE command.",
        ),
        Kill::Killed => Reply::ok(),
        Kill::OtherKind => Reply::err(
            "BUSY Redis is busy running a script of the other kind: use SCRIPT KILL for a script, FUNCTION KILL for a function.",
        ),
    }
}

impl Shared {
    /// Loads the function libraries stored durably, at start-up. A stored entry that does not
    /// decode or compile (which no keel wrote) is logged and left alone: FCALL then finds no
    /// function, and the next FUNCTION LOAD replaces it.
    pub(super) fn load_functions(&self) {
        self.sync_functions();
    }

    /// Loads the stored libraries if they are not the ones loaded: on a cluster another node
    /// may have changed them (FUNCTION LOAD on an earlier leader), and this node's engine then
    /// holds them but its scripts do not.
    pub(super) fn sync_functions(&self) {
        let stored = self.engine().system(FUNCTIONS_KEY);
        let mut loaded = (self.functions_loaded.lock()).unwrap_or_else(|p| p.into_inner());
        if *loaded == stored {
            return;
        }
        *loaded = stored.clone();
        let Some(stored) = stored else {
            self.scripts
                .install(compile_libraries(&Libraries::default()).expect("none"));
            return;
        };
        match decode_libraries(&stored).ok_or_else(|| Reply::err("not keel's format")) {
            Ok(libs) => match compile_libraries(&libs) {
                Ok(vm) => self.scripts.install(vm),
                Err(e) => tracing::error!("the stored function libraries do not load: {e:?}"),
            },
            Err(e) => tracing::error!("the stored function libraries do not decode: {e:?}"),
        }
    }
}
use keel_engine::Script;

/// The one thread a cluster node's scripts run on (their dry runs, see `eval_on_cluster`): one
/// at a time, in order, so a burst of scripts does not grow a pool of threads.
pub(super) struct ScriptThread {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<ScriptJob>>,
}

type ScriptJob = Box<dyn FnOnce() + Send>;

impl ScriptThread {
    pub(super) fn start() -> ScriptThread {
        let (tx, rx) = std::sync::mpsc::channel::<ScriptJob>();
        std::thread::Builder::new()
            .name("keel-scripts".into())
            // Room for a reply nested 1,000 deep, as on the workers.
            .stack_size(16 << 20)
            .spawn(move || {
                for job in rx {
                    // A job that panics (a bug) fails its own script, not the ones after.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .expect("starting the scripts' thread");
        ScriptThread {
            jobs: std::sync::Mutex::new(tx),
        }
    }

    /// Runs `job` on the scripts' thread, after the jobs before it; `None` if it panicked.
    async fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            let _ = tx.send(job());
        });
        crate::lock(&self.jobs).send(job).ok()?;
        rx.await.ok()
    }
}

/// A script command checked, with its script found (see [`Conn::resolve`]).
#[derive(Clone)]
struct Resolved {
    /// The script's SHA-1, or the function's name.
    sha: String,
    function: bool,
    read_only: bool,
}

/// One command of a script transaction: a script (or why it cannot run), or a data command
/// queued in MULTI with its arguments while notifications are on.
enum Step {
    Script(Result<Resolved, Reply>, Vec<Bytes>),
    Part(Part, Option<Vec<Bytes>>),
}

/// Runs a script's `redis.call`s: compiled by the registry as if sent alone, checked against
/// the user's permissions, decided in the script's transaction.
struct ScriptCaller<'s, 't> {
    tx: &'s mut Script<'t>,
    sh: &'s Shared,
    user: Option<&'s User>,
    read_only: bool,
    now: u64,
    /// For tracking's invalidations and blocked clients, once the script is durable.
    touched: Vec<Bytes>,
    flushed: bool,
    pushed: Vec<Bytes>,
    /// The calls that read, for the caller's own tracking (`None`: it does not track).
    reads: Option<Vec<Vec<Bytes>>>,
    /// The keyspace notifications of the calls so far, sent once the script is durable.
    events: Vec<notify::Event>,
    /// What the script published (shard, channel, message), sent once it is durable too.
    published: Vec<(bool, Bytes, Bytes)>,
}

impl<'s, 't> ScriptCaller<'s, 't> {
    /// A caller for a script transaction of `user` decided as of `now`; `tracks`: the client
    /// tracks its reads.
    fn new(
        tx: &'s mut Script<'t>,
        sh: &'s Shared,
        user: Option<&'s User>,
        now: u64,
        tracks: bool,
    ) -> Self {
        ScriptCaller {
            tx,
            sh,
            user,
            read_only: false,
            now,
            touched: Vec::new(),
            flushed: false,
            pushed: Vec::new(),
            reads: tracks.then(Vec::new),
            events: Vec::new(),
            published: Vec::new(),
        }
    }
}

impl Caller for ScriptCaller<'_, '_> {
    fn call(&mut self, args: Vec<Bytes>) -> Reply {
        let Some(index) = cmd::find(&args[0]) else {
            return Reply::err("ERR Unknown Redis command called from script");
        };
        let spec = cmd::COMMANDS[index];
        if !cmd::arity_ok(spec, args.len()) {
            return Reply::err("ERR Wrong number of args calling Redis command from script");
        }
        let limits = cmd::script_limits(index);
        // Redis refuses what may replicate (PUBLISH) from a read-only script this way too.
        if self.read_only
            && (cmd::flags(spec, &args).contains(Flags::WRITE) || limits.may_replicate)
        {
            return Reply::err("ERR Write commands are not allowed from read-only scripts.");
        }
        let publish = matches!(spec.name, "publish" | "spublish");
        if limits.noscript || (matches!(spec.run, Run::Conn) && !publish) {
            return Reply::err("ERR This Redis command is not allowed from script");
        }
        // A script never waits: XREAD and XREADGROUP with BLOCK are refused (the other
        // blocking commands run as if they timed out at once, as in MULTI).
        let mut options = args.iter().take_while(|a| !cmd::eq(a, "streams"));
        if matches!(spec.name, "xread" | "xreadgroup") && options.any(|a| cmd::eq(a, "block")) {
            return Reply::err(format!(
                "ERR {} command is not allowed with BLOCK option from scripts",
                spec.name
            ));
        }
        if let Some(u) = self.user {
            if let Err(e) = self.sh.users.check(u, spec, &args) {
                return Reply::err(e.to_string());
            }
        }
        self.sh.monitors.feed_as("lua", &args);
        if publish {
            // Sent with the script's other effects, once it is durable; the count is of the
            // subscribers now.
            let shard = spec.name == "spublish";
            let n = self.sh.pubsub.receivers(shard, &args[1]);
            let [_, channel, message] = <[Bytes; 3]>::try_from(args).expect("arity checked");
            self.published.push((shard, channel, message));
            return Reply::Int(n as i64);
        }
        let compile = match spec.run {
            Run::Local(reply) => return reply(&args),
            Run::Data(compile) => compile,
            Run::Conn => unreachable!("refused above"),
        };
        let part = match compile(spec.name, &args, self.now) {
            Ok(p) => p,
            Err(e) => return e,
        };
        if !part.guards.is_empty() {
            return Reply::err(format!(
                "ERR keel does not run {} inside a script",
                spec.name.to_uppercase()
            ));
        }
        if part.read_only() {
            if let Some(reads) = &mut self.reads {
                reads.push(args.clone());
            }
        } else {
            if self.sh.tracking.active() {
                self.touched.extend(tracking::touched_keys(&args));
                self.flushed |= part.writes.iter().any(|w| matches!(w, Write::DeleteAll));
            }
            self.pushed.extend(blocking::pushed_keys(&part.writes));
        }
        match self.tx.call(part.writes) {
            Ok(mut results) => {
                let effects = self.tx.take_effects();
                notify::events(&args, &effects, &mut self.events);
                (part.render)(Some(&mut results))
            }
            Err(e) => self.sh.backend.engine_error(&e),
        }
    }

    fn wrote(&self) -> bool {
        self.tx.wrote()
    }
}

impl ScriptCaller<'_, '_> {
    /// A data command queued in MULTI, compiled when it was queued, decided now.
    fn run_part(&mut self, part: Part, args: Option<&[Bytes]>) -> Reply {
        self.pushed.extend(blocking::pushed_keys(&part.writes));
        match self.tx.call(part.writes) {
            Ok(mut results) => {
                let effects = self.tx.take_effects();
                if let Some(args) = args {
                    notify::events(args, &effects, &mut self.events);
                }
                (part.render)(Some(&mut results))
            }
            Err(e) => self.sh.backend.engine_error(&e),
        }
    }
}

impl Conn {
    pub(super) async fn scripts_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        match name {
            "script" => self.script(&args),
            "function" => {
                if self.sh.backend.cluster().is_some() {
                    self.sh.sync_functions();
                }
                let r = self.function(&args).await;
                self.reply(r);
            }
            _ => self.eval(name, &args).await,
        }
        Flow::Continue
    }

    /// FUNCTION and its subcommands.
    async fn function(&mut self, args: &[Bytes]) -> Reply {
        let scripts = &self.sh.scripts;
        let sub = lower(&args[1]);
        let n = args.len();
        match sub.as_str() {
            "load" if n >= 4 && !args[2..n - 1].iter().all(|a| eq(a, "replace")) => {
                let bad = args[2..n - 1].iter().find(|a| !eq(a, "replace"));
                Reply::err(format!(
                    "ERR Unknown option given: {}",
                    String::from_utf8_lossy(bad.expect("one is not REPLACE"))
                ))
            }
            "load" if n == 3 || n == 4 => {
                let code = args[n - 1].clone();
                let replace = n == 4;
                let name = match library_name(&code) {
                    Ok(name) => name,
                    Err(e) => return e,
                };
                let reply = Reply::Bulk(Bytes::from(name.clone()));
                self.edit_functions(|libs| {
                    if !replace && libs.contains_key(&name) {
                        return Err(Reply::err(format!("ERR Library '{name}' already exists")));
                    }
                    libs.insert(name, code);
                    Ok(())
                })
                .await
                .map_or_else(|e| e, |()| reply)
            }
            "delete" if n == 3 => {
                let name = String::from_utf8_lossy(&args[2]).into_owned();
                self.edit_functions(|libs| match libs.remove(&name) {
                    Some(_) => Ok(()),
                    None => Err(Reply::err("ERR Library not found")),
                })
                .await
                .map_or_else(|e| e, |()| Reply::ok())
            }
            "flush" if n == 2 || (n == 3 && (eq(&args[2], "async") || eq(&args[2], "sync"))) => {
                (self.edit_functions(|libs| {
                    libs.clear();
                    Ok(())
                }))
                .await
                .map_or_else(|e| e, |()| Reply::ok())
            }
            "flush" if n == 3 => Reply::err("ERR FUNCTION FLUSH only supports SYNC|ASYNC option"),
            "list" => {
                let (mut pattern, mut with_code, mut i) = (None, false, 2);
                while i < n {
                    if eq(&args[i], "withcode") && !with_code {
                        with_code = true;
                    } else if eq(&args[i], "libraryname") && pattern.is_none() && i + 1 < n {
                        pattern = Some(&args[i + 1][..]);
                        i += 1;
                    } else if eq(&args[i], "libraryname") && i + 1 >= n {
                        return Reply::err("ERR library name argument was not given");
                    } else {
                        return Reply::err(format!(
                            "ERR Unknown argument {}",
                            String::from_utf8_lossy(&args[i])
                        ));
                    }
                    i += 1;
                }
                scripts.list(pattern, with_code)
            }
            "dump" if n == 2 => Reply::Bulk(encode_libraries(&scripts.library_sources())),
            "restore" if n == 3 || n == 4 => {
                let policy = if n == 4 {
                    lower(&args[3])
                } else {
                    "append".into()
                };
                if !["append", "replace", "flush"].contains(&policy.as_str()) {
                    return Reply::err("ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE.");
                }
                let Some(restored) = decode_libraries(&args[2]) else {
                    return Reply::err("ERR payload version or checksum are wrong");
                };
                self.edit_functions(|libs| {
                    if policy == "flush" {
                        libs.clear();
                    }
                    for (name, code) in restored {
                        if policy == "append" && libs.contains_key(&name) {
                            return Err(Reply::err(format!("ERR Library {name} already exists")));
                        }
                        libs.insert(name, code);
                    }
                    Ok(())
                })
                .await
                .map_or_else(|e| e, |()| Reply::ok())
            }
            "stats" if n == 2 => {
                let text = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
                let running = match scripts.running() {
                    None => Reply::Nil,
                    Some(r) => Reply::Map(vec![
                        (text("name"), text(&r.name)),
                        (
                            text("command"),
                            Reply::Array(r.command.iter().cloned().map(Reply::Bulk).collect()),
                        ),
                        (
                            text("duration_ms"),
                            Reply::Int(r.started.elapsed().as_millis() as i64),
                        ),
                    ]),
                };
                let (libraries, functions) = scripts.function_counts();
                Reply::Map(vec![
                    (text("running_script"), running),
                    (
                        text("engines"),
                        Reply::Map(vec![(
                            text("LUA"),
                            Reply::Map(vec![
                                (text("libraries_count"), Reply::Int(libraries as i64)),
                                (text("functions_count"), Reply::Int(functions as i64)),
                            ]),
                        )]),
                    ),
                ])
            }
            "kill" if n == 2 => kill_reply(scripts.kill(true)),
            "load" | "delete" | "flush" | "dump" | "restore" | "stats" | "kill" => Reply::err(
                format!(
                    "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try FUNCTION HELP."
                ),
            ),
            _ => unknown_subcommand(&args[1], "FUNCTION"),
        }
    }

    /// Changes the libraries with `edit`, stores them durably (one system entry), then loads
    /// them: a change is answered once it is durable, and one that does not compile changes
    /// nothing.
    async fn edit_functions(
        &mut self,
        edit: impl FnOnce(&mut Libraries) -> Result<(), Reply>,
    ) -> Result<(), Reply> {
        let sh = self.sh.clone();
        let _editing = sh.scripts.editing().await;
        if sh.backend.cluster().is_some() {
            // Another node may have changed them since this one last looked.
            sh.sync_functions();
        }
        let mut libs = sh.scripts.library_sources();
        edit(&mut libs)?;
        let compiled = compile_libraries(&libs)?;
        let write = Write::System {
            key: Bytes::from_static(FUNCTIONS_KEY),
            value: encode_libraries(&libs),
        };
        sh.scripts.idle().await;
        sh.backend.room(0).await;
        let stored = match &write {
            Write::System { value, .. } => value.clone(),
            _ => unreachable!("a system entry"),
        };
        sh.backend.write(None, Vec::new(), vec![write]).await?;
        sh.scripts.install(compiled);
        *(sh.functions_loaded.lock()).unwrap_or_else(|p| p.into_inner()) = Some(stored);
        Ok(())
    }

    /// Whether EVAL or EVALSHA may write (CLIENT PAUSE WRITE holds it): unless its script
    /// says `#!lua flags=no-writes`.
    pub(super) fn script_may_write(&self, name: &str, args: &[Bytes]) -> bool {
        match name {
            "eval" => crate::scripting::body_may_write(&args[1]),
            "evalsha" => (self.sh.scripts.flags(&lower(&args[1]))).is_none_or(|f| !f.no_writes),
            "fcall" => (self
                .sh
                .scripts
                .function_flags(&String::from_utf8_lossy(&args[1])))
            .is_none_or(|f| !f.no_writes),
            _ => false,
        }
    }

    /// -BUSY for a command sent while a script has run past `busy-reply-threshold`.
    pub(super) fn busy(&self, spec: &Command, args: &[Bytes]) -> Option<Reply> {
        let running = self.sh.scripts.running()?;
        let threshold = Live::get(&self.sh.live.busy_reply_threshold).max(0) as u128;
        if running.started.elapsed().as_millis() < threshold {
            return None;
        }
        let sub = args.get(1).map(|a| lower(a));
        let kill = sub.as_deref() == Some("kill");
        // A subcommand's own flags (FUNCTION STATS: allow_busy), else its command's.
        let flags = (spec.doc.subcommands.iter())
            .find(|d| sub.as_deref() == Some(d.name))
            .and_then(|d| d.redis)
            .map_or(spec.redis_flags, |(f, _)| f);
        let allowed = spec.name == "shutdown"
            || (spec.name == "script" && kill && !running.function)
            || (spec.name == "function" && kill && running.function)
            || (!kill && flags.split(' ').any(|f| f == "allow_busy"));
        (!allowed).then(|| {
            Reply::err(if running.function {
                "BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE."
            } else {
                "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
            })
        })
    }

    fn script(&mut self, args: &[Bytes]) {
        let scripts = &self.sh.scripts;
        let sub = lower(&args[1]);
        let r = match (sub.as_str(), args.len()) {
            ("load", 3) => match scripts.load(&args[2]) {
                Ok(sha) => Reply::Bulk(sha.into()),
                Err(e) => e,
            },
            ("exists", n) if n >= 3 => Reply::Array(
                (args[2..].iter())
                    .map(|s| Reply::Int(scripts.exists(s) as i64))
                    .collect(),
            ),
            ("flush", 2) => {
                scripts.flush();
                Reply::ok()
            }
            ("flush", 3) if eq(&args[2], "async") || eq(&args[2], "sync") => {
                scripts.flush();
                Reply::ok()
            }
            ("flush", 3) => Reply::err("ERR SCRIPT FLUSH only support SYNC|ASYNC option"),
            ("kill", 2) => kill_reply(scripts.kill(false)),
            ("load" | "exists" | "flush" | "kill", _) => cmd::wrong_args(&format!("script|{sub}")),
            _ => unknown_subcommand(&args[1], "SCRIPT"),
        };
        self.reply(r);
    }

    /// Checks a script command's arguments and finds its script (EVAL loads it into the
    /// cache first).
    fn resolve(&self, name: &str, args: &[Bytes]) -> Result<Resolved, Reply> {
        // The key count, checked here; the script's run splits keys from arguments by it.
        match std::str::from_utf8(&args[2])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            None if name.starts_with("fcall") => {
                return Err(Reply::err("ERR Bad number of keys provided"))
            }
            None => return Err(Reply::err("ERR value is not an integer or out of range")),
            Some(n) if n < 0 => return Err(Reply::err("ERR Number of keys can't be negative")),
            Some(n) if n as usize > args.len() - 3 => {
                return Err(Reply::err(
                    "ERR Number of keys can't be greater than number of args",
                ))
            }
            Some(_) => {}
        }
        let scripts = &self.sh.scripts;
        let function = name.starts_with("fcall");
        let (sha, flags) = if function {
            let function_name = String::from_utf8_lossy(&args[1]).into_owned();
            let flags = (scripts.function_flags(&function_name))
                .ok_or_else(|| Reply::err("ERR Function not found"))?;
            (function_name, flags)
        } else {
            let sha = if name.starts_with("evalsha") {
                lower(&args[1])
            } else {
                scripts.load(&args[1])?
            };
            // Absent: not loaded, or flushed since EVAL loaded it (the run would answer so too).
            let flags = scripts.flags(&sha).ok_or_else(crate::scripting::noscript)?;
            (sha, flags)
        };
        if name.ends_with("_ro") && flags.declared && !flags.no_writes {
            return Err(Reply::err(
                "ERR Can not execute a script with write flag using *_ro command.",
            ));
        }
        Ok(Resolved {
            sha,
            function,
            read_only: name.ends_with("_ro") || flags.no_writes,
        })
    }

    async fn eval(&mut self, name: &str, args: &[Bytes]) {
        if self.sh.backend.cluster().is_some() && name.starts_with("fcall") {
            self.sh.sync_functions();
        }
        let resolved = match self.resolve(name, args) {
            Ok(r) => r,
            Err(e) => return self.reply(e),
        };
        if self.sh.backend.cluster().is_some() {
            return self.eval_on_cluster(resolved, args.to_vec()).await;
        }
        // Scripts run one at a time; a script waits for the one running to end, without
        // holding a thread.
        self.sh.scripts.idle().await;
        if !resolved.read_only {
            self.sh
                .backend
                .room(args.iter().map(Bytes::len).sum())
                .await;
        }
        let step = Step::Script(Ok(resolved), args.to_vec());
        let render: Box<dyn FnOnce(Option<Vec<Reply>>) -> Reply + Send> = Box::new(|r| {
            r.and_then(|r| r.into_iter().next())
                .expect("one step, and no guard")
        });
        self.run_steps(
            vec![step],
            Vec::new(),
            Touched::none(self.client.id),
            render,
        )
        .await;
    }

    /// A script on a cluster node. The leader runs it as a dry run against everything
    /// committed (`Engine::try_script`), then proposes the writes it made, guarded by the
    /// versions of every key it touched and decided as of the dry run's time: every replica
    /// then decides them as the dry run did, and the dry run's reply is the script's. If
    /// another write changed one of those keys in between, the guards fail, nothing is
    /// written, and the script runs again (at most [`CLUSTER_SCRIPT_TRIES`] times). A script
    /// that wrote nothing answers after the read barrier, as a read does.
    async fn eval_on_cluster(&mut self, resolved: Resolved, args: Vec<Bytes>) {
        self.settle().await;
        // One script at a time, from its dry run until its writes are applied: scripts would
        // otherwise keep failing each other's guards (each dry run sees the state before the
        // others' writes in flight), as Redis runs one script at a time.
        let sh = self.sh.clone();
        let _one = sh.cluster_scripts.lock().await;
        let tracks = self.tracking.is_some();
        for _ in 0..CLUSTER_SCRIPT_TRIES {
            if let Err(e) = self.sh.backend.read_barrier(false).await {
                let key = args
                    .get(3)
                    .filter(|_| args.get(2).is_some_and(|n| &n[..] != b"0"));
                return self.reply(cluster_error(&e, key.map(|k| &k[..])));
            }
            self.sh.scripts.idle().await;
            let (sh, engine, user) = (self.sh.clone(), self.engine(), self.user.clone());
            let (r, a) = (resolved.clone(), args.clone());
            let now = now_ms();
            let ran = (self.sh.script_thread)
                .run(move || {
                    engine.try_script(now, |tx| {
                        let mut caller = ScriptCaller::new(tx, &sh, user.as_ref(), now, tracks);
                        caller.read_only = r.read_only;
                        let reply = if r.function {
                            sh.scripts.call_function(&r.sha, &a, &mut caller)
                        } else {
                            sh.scripts.run(&r.sha, &a, &mut caller)
                        };
                        let recorded = caller.tx.take_recorded().unwrap_or_default();
                        let c = caller;
                        let touched = (c.touched, c.flushed, c.events, c.published);
                        (reply, recorded, touched, c.pushed, c.reads)
                    })
                })
                .await;
            let Some((reply, recorded, (keys, flushed, events, published), pushed, reads)) = ran
            else {
                return self.reply(Reply::err("ERR the script failed: see keel's log"));
            };
            let touched = Touched::none(self.client.id)
                .add(keys, flushed)
                .events(events)
                .published(published);
            let outcome = if recorded.writes.is_empty() {
                Outcome::Committed {
                    lsn: None,
                    results: Vec::new(),
                    effects: Vec::new(),
                }
            } else {
                let written = self
                    .sh
                    .backend
                    .write_at(None, now, recorded.guards, recorded.writes);
                match written.await {
                    Ok(Outcome::GuardFailed(_)) => continue,
                    Ok(o) => o,
                    Err(e) => return self.reply(e),
                }
            };
            for a in reads.iter().flatten() {
                self.track_read(a);
            }
            touched.send(&self.sh, &outcome);
            if !pushed.is_empty() && self.sh.blocked.any() {
                self.sh
                    .blocked
                    .settled(&self.sh.blocked.wake(&pushed))
                    .await;
            }
            return self.reply(reply);
        }
        self.reply(Reply::err(
            "ERR the script's keys kept changing while it ran on the cluster's leader; try again",
        ))
    }

    /// EXEC of a transaction that queued a script: every command, scripts and data alike, in
    /// one engine transaction (one log record), decided call by call under WATCH's guards.
    pub(super) async fn exec_scripted(
        &mut self,
        parts: Vec<Part>,
        queued_args: Vec<Option<Vec<Bytes>>>,
        watched: Vec<Guard>,
        touched: Touched,
    ) {
        let steps = (parts.into_iter().zip(queued_args))
            .map(|(p, args)| match p.script {
                Some(s) => {
                    let name = lower(&s.args[0]);
                    Step::Script(self.resolve(&name, &s.args), s.args)
                }
                None => Step::Part(p, args),
            })
            .collect();
        let render: Box<dyn FnOnce(Option<Vec<Reply>>) -> Reply + Send> =
            Box::new(|r| r.map_or(Reply::NilArray, Reply::Array));
        self.run_steps(steps, watched, touched, render).await;
    }

    /// Runs `steps` as one script transaction (see [`Engine::submit_script`]), unless a guard
    /// fails; queues the reply `render` makes of the steps' replies (`None`: a guard failed),
    /// once the transaction is durable.
    async fn run_steps(
        &mut self,
        steps: Vec<Step>,
        watched: Vec<Guard>,
        touched: Touched,
        render: Box<dyn FnOnce(Option<Vec<Reply>>) -> Reply + Send>,
    ) {
        let sh = self.sh.clone();
        let engine = self.engine();
        let user = self.user.clone();
        let tracks = self.tracking.is_some();
        // On this worker: going to another thread and back cost more CPU than a short script
        // (BENCHMARKS.md). A long one hands this worker's other connections to another thread.
        let turn = sh.scripts.turn().await;
        let now = now_ms();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let user = user.as_ref();
            engine.submit_script(now, |tx| {
                if !tx.guards_hold(&watched) {
                    return None;
                }
                let mut caller = ScriptCaller::new(tx, &sh, user, now, tracks);
                let replies = (steps.into_iter())
                    .map(|step| match step {
                        Step::Script(Err(e), _) => e,
                        Step::Script(Ok(r), args) => {
                            caller.read_only = r.read_only;
                            if r.function {
                                sh.scripts.call_function(&r.sha, &args, &mut caller)
                            } else {
                                sh.scripts.run(&r.sha, &args, &mut caller)
                            }
                        }
                        Step::Part(p, args) => caller.run_part(p, args.as_deref()),
                    })
                    .collect();
                let c = caller;
                let effects = (
                    c.touched,
                    c.flushed,
                    c.pushed,
                    c.reads,
                    c.events,
                    c.published,
                );
                Some((replies, effects))
            })
        }))
        .ok();
        drop(turn);
        let (ran, pending) = match ran {
            Some(Ok(r)) => r,
            Some(Err(e)) => return self.reply(self.sh.backend.engine_error(&e)),
            None => return self.reply(Reply::err("ERR the script failed: see keel's log")),
        };
        let (replies, touched, pushed) = match ran {
            None => (None, touched, Vec::new()),
            Some((replies, (keys, flushed, pushed, reads, events, published))) => {
                for args in reads.iter().flatten() {
                    self.track_read(args);
                }
                let touched = touched
                    .add(keys, flushed)
                    .events(events)
                    .published(published);
                (Some(replies), touched, pushed)
            }
        };
        let quiet = self.quiet;
        let durable = Box::pin(async move {
            match pending.await {
                Ok(o) => {
                    touched.send(&sh, &o);
                    if !pushed.is_empty() && sh.blocked.any() {
                        sh.blocked.settled(&sh.blocked.wake(&pushed)).await;
                    }
                    render(replies)
                }
                Err(e) => sh.backend.engine_error(&e),
            }
        });
        self.queue.push_back(if quiet {
            Slot::Silent(durable)
        } else {
            Slot::Pending(durable, None)
        });
    }
}
