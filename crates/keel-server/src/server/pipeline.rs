//! The pipeline: one request at a time, in order, from the registry to a reply. Writes are
//! submitted at once and their replies wait, in order, until durable.

use super::*;

/// What a write tells once it is durable: tracking clients the keys it changed, or that it
/// flushed everything, and who wrote it (NOLOOP); subscribers its keyspace notifications.
pub(super) struct Touched {
    keys: Vec<Bytes>,
    flush: bool,
    writer: u64,
    /// While notifications are on: each command's arguments and the index of its first write
    /// in the transaction, whose effects the events are made from.
    commands: Vec<(Vec<Bytes>, u32)>,
    /// Events made already (a script's, call by call).
    events: Vec<notify::Event>,
    /// Messages a script published: (shard, channel, message).
    published: Vec<(bool, Bytes, Bytes)>,
}

impl Touched {
    /// Nothing, while no client tracks and notifications are off (the common case costs two
    /// loads).
    pub(super) fn of(sh: &Shared, writer: u64, args: &[Bytes], writes: &[Write]) -> Touched {
        let active = sh.tracking.active();
        Touched {
            keys: if active {
                touched_keys(args)
            } else {
                Vec::new()
            },
            flush: active && writes.iter().any(|w| matches!(w, Write::DeleteAll)),
            writer,
            commands: if sh.notify.active() {
                vec![(args.to_vec(), 0)]
            } else {
                Vec::new()
            },
            events: Vec::new(),
            published: Vec::new(),
        }
    }

    pub(super) fn new(keys: Vec<Bytes>, flush: bool, writer: u64) -> Touched {
        Touched {
            keys,
            flush,
            writer,
            commands: Vec::new(),
            events: Vec::new(),
            published: Vec::new(),
        }
    }

    pub(super) fn none(writer: u64) -> Touched {
        Touched::new(Vec::new(), false, writer)
    }

    /// With the commands of a transaction, for its notifications.
    pub(super) fn commands(mut self, commands: Vec<(Vec<Bytes>, u32)>) -> Touched {
        self.commands = commands;
        self
    }

    /// With messages to publish.
    pub(super) fn published(mut self, messages: Vec<(bool, Bytes, Bytes)>) -> Touched {
        self.published = messages;
        self
    }

    /// With notifications already made.
    pub(super) fn events(mut self, events: Vec<notify::Event>) -> Touched {
        self.events = events;
        self
    }

    /// With more keys changed, or a flush.
    pub(super) fn add(mut self, keys: Vec<Bytes>, flush: bool) -> Touched {
        self.keys.extend(keys);
        self.flush |= flush;
        self
    }

    pub(super) fn parts(self) -> (Vec<Bytes>, bool) {
        (self.keys, self.flush)
    }

    /// After the write is durable: the invalidations and notifications it causes.
    pub(super) fn send(&self, sh: &Shared, o: &Outcome) {
        let Outcome::Committed { effects, .. } = o else {
            return;
        };
        if self.flush {
            sh.tracking.invalidate_all(self.writer, &sh.registry);
        } else if !self.keys.is_empty() {
            sh.tracking
                .invalidate(&self.keys, self.writer, &sh.registry);
        }
        if !self.events.is_empty() {
            notify::publish(sh, &self.events);
        }
        for (shard, channel, message) in &self.published {
            sh.publish(*shard, channel, message);
        }
        if !self.commands.is_empty() && !effects.is_empty() {
            let mut events = Vec::new();
            for (i, (args, first)) in self.commands.iter().enumerate() {
                let next = self.commands.get(i + 1).map_or(u32::MAX, |c| c.1);
                let from = effects.partition_point(|e| e.write < *first);
                let to = effects.partition_point(|e| e.write < next);
                notify::events(args, &effects[from..to], &mut events);
            }
            notify::publish(sh, &events);
        }
    }
}

/// Runs a data command's part on its own (a blocking command's try): to its durable reply, and
/// the blocked clients its write woke.
pub(super) async fn run_part(
    sh: Arc<Shared>,
    part: Part,
    touched: &Touched,
) -> (Reply, blocking::Woken) {
    if part.read_only() {
        let mut results = sh.engine().read(|v| eval_reads(&sh, v, &part.writes));
        return ((part.render)(Some(&mut results)), Vec::new());
    }
    let mut woken = blocking::pushed_keys(&part.writes);
    woken.extend(blocking::emptied_keys(&part.writes).cloned());
    sh.backend.room(0).await;
    let reply = match sh.backend.write(None, part.guards, part.writes).await {
        Ok(o) => {
            touched.send(&sh, &o);
            render_outcome(part.render, o, &sh)
        }
        Err(r) => return (r, Vec::new()),
    };
    // A try that found nothing moved nothing: waking its own keys would wake this very client
    // again, for ever (BRPOPLPUSH k k on an empty list).
    let woken = if !woken.is_empty() && !blocking::is_empty_reply(&reply) && sh.blocked.any() {
        sh.blocked.wake(&woken)
    } else {
        Vec::new()
    };
    (reply, woken)
}

/// Finishes a command's timer now if its reply is ready, or, if the command left a pending
/// write at the back of the queue, gives the timer to that slot, for [`Conn::settle`] to finish
/// once the write is durable; the slow log then sees its arguments.
pub(super) fn observe(
    conn: &mut Conn,
    timer: CommandTimer,
    queued_before: usize,
    args: Vec<Bytes>,
) {
    let done = std::mem::replace(&mut conn.done, Done::Ok);
    if conn.queue.len() > queued_before {
        if let Some(Slot::Pending(_, timed)) = conn.queue.back_mut() {
            *timed = Some(Timed { timer, done, args });
            return;
        }
    }
    let took = timer.finish(done);
    slow(&conn.sh, &conn.client, took, &args);
}

/// Puts a command in the slow log if it took at least `slowlog-log-slower-than` µs.
fn slow(sh: &Shared, client: &Client, took: Duration, args: &[Bytes]) {
    let min = Live::get(&sh.live.slowlog_log_slower_than);
    if min >= 0 && took.as_micros() >= min as u128 {
        let max = Live::get(&sh.live.slowlog_max_len).max(0) as usize;
        let name = client.name().unwrap_or_default();
        (sh.slowlog).record(max, took, args, client.addr.clone(), name);
    }
}

/// Whether a command the connection runs is queued by MULTI (see [`run_at_exec`]).
pub fn queues_in_multi(name: &str) -> bool {
    matches!(
        name,
        "config" | "publish" | "spublish" | "pubsub" | "client"
    ) || is_script(name)
}

/// EVAL, FCALL and their kin: queued in MULTI, they run at EXEC inside its transaction.
fn is_script(name: &str) -> bool {
    matches!(
        name,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
    )
}

/// Runs a connection command queued in MULTI, at EXEC.
fn run_at_exec(sh: &Arc<Shared>, name: &str, args: &[Bytes]) -> Reply {
    match name {
        "config" => config(sh, args),
        "publish" | "spublish" => {
            Reply::Int(sh.publish(name == "spublish", &args[1], &args[2]) as i64)
        }
        "pubsub" => sh.pubsub.command(args),
        "client" => sh.client_pause(args),
        other => Reply::err(format!("ERR internal: '{other}' is not queued in MULTI")),
    }
}

/// Evaluates a read-only part against a read of the visible (durable) state, counting its
/// keys' hits and misses for INFO.
pub(super) fn eval_reads(
    sh: &Shared,
    view: &keel_engine::ReadView<'_>,
    writes: &[Write],
) -> Vec<WriteResult> {
    let mut hits = [0u64; 2];
    let mut count = |(r, found): (WriteResult, bool)| {
        hits[usize::from(!found)] += 1;
        r
    };
    let results = writes
        .iter()
        .map(|w| match w {
            Write::Get { key } => count(view.read_found(key, None)),
            Write::Read { key, op } => count(view.read_found(key, Some(op))),
            Write::Sort { spec, store: None } => {
                count((view.sort(spec), view.kind(&spec.key).is_some()))
            }
            other => unreachable!("read-only parts hold only reads: {other:?}"),
        })
        .collect();
    sh.keyspace_reads(hits[0], hits[1]);
    results
}

pub(super) fn render_outcome(render: cmd::Render, o: Outcome, sh: &Shared) -> Reply {
    match o {
        Outcome::Committed { mut results, .. } => render(Some(&mut results)),
        Outcome::GuardFailed(_) => render(None),
        // Maintenance mode was on when the write was decided (the engine's write fence).
        Outcome::Fenced => maintenance::refusal_now(&sh.engine()),
    }
}

impl Conn {
    pub(super) fn engine(&self) -> Arc<Engine> {
        self.sh.engine()
    }

    /// Refuses a command before it runs; inside MULTI, EXEC will abort.
    fn reject(&mut self, r: Reply) {
        if self.multi.is_some() {
            self.multi_dirty = true;
        }
        self.done = Done::Rejected;
        self.reply(r);
    }

    /// Queues a reply behind everything already queued.
    pub(super) fn reply(&mut self, r: Reply) {
        if let Reply::Error(e) = &r {
            self.sh.metrics.error(e);
            if self.done == Done::Ok {
                self.done = Done::Failed;
            }
        }
        if self.quiet {
            return;
        }
        if self.queue.is_empty() {
            r.encode(self.proto, &mut self.out);
        } else {
            self.queue.push_back(Slot::Ready(r));
        }
    }

    /// Submits a transaction now (with `id`, as a KEEL.IDEM request); its reply waits in the
    /// queue until it is durable. In a cluster: until a quorum holds it durably and this node
    /// applied it; the connection's writes are proposed one after another, in order.
    pub(super) fn submit(
        &mut self,
        id: Option<Bytes>,
        guards: Vec<Guard>,
        writes: Vec<Write>,
        render: cmd::Render,
    ) {
        // A write that may give a list an element wakes the clients waiting on it, once
        // durable: whether any wait is asked then, so that a client that starts waiting while
        // this write is on its way is not missed. Its reply waits until they have tried.
        let mut pushed = blocking::pushed_keys(&writes);
        let flush = writes.iter().any(|w| matches!(w, Write::DeleteAll));
        if self.sh.blocked.any() {
            pushed.extend(blocking::emptied_keys(&writes).cloned());
        }
        let woken = move |sh: &Shared| match () {
            _ if !sh.blocked.any() => Vec::new(),
            _ if flush => sh.blocked.wake_all(),
            _ if !pushed.is_empty() => sh.blocked.wake(&pushed),
            _ => Vec::new(),
        };
        let touched = std::mem::replace(&mut self.touched, Touched::none(self.client.id));
        let durable = self.sh.backend.write(id, guards, writes);
        let sh = self.sh.clone();
        let quiet = self.quiet;
        let reply = Box::pin(async move {
            match durable.await {
                Ok(o) => {
                    touched.send(&sh, &o);
                    let reply = render_outcome(render, o, &sh);
                    sh.blocked.settled(&woken(&sh)).await;
                    reply
                }
                Err(r) => r,
            }
        });
        self.queue.push_back(if quiet {
            Slot::Silent(reply)
        } else {
            Slot::Pending(reply, None)
        });
    }

    /// Waits for every queued write and encodes every queued reply, in order.
    pub(super) async fn settle(&mut self) {
        while let Some(slot) = self.queue.pop_front() {
            let r = match slot {
                Slot::Ready(r) => r,
                Slot::Pending(f, timed) => {
                    let r = f.await;
                    if let Some(t) = timed {
                        let done = match &r {
                            Reply::Error(e) => {
                                self.sh.metrics.error(e);
                                Done::Failed
                            }
                            _ => t.done,
                        };
                        slow(&self.sh, &self.client, t.timer.finish(done), &t.args);
                    }
                    r
                }
                Slot::Silent(f) => {
                    f.await;
                    continue;
                }
            };
            r.encode(self.proto, &mut self.out);
        }
    }

    pub(super) async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
    ) -> std::io::Result<()> {
        self.settle().await;
        if !self.out.is_empty() {
            let out_bytes = &self.client.out_bytes;
            out_bytes.store(self.out.len(), Ordering::Relaxed);
            stream.write_all(&self.out).await?;
            out_bytes.store(0, Ordering::Relaxed);
            (self.sh.net_out).fetch_add(self.out.len() as u64, Ordering::Relaxed);
            self.out.clear();
            if self.out.capacity() > 4 * FLUSH_BYTES {
                self.out = BytesMut::new();
            }
        }
        Ok(())
    }

    /// Answers a read-only part from the visible state, after this connection's earlier writes.
    pub(super) async fn read(&mut self, part: Part) {
        self.settle().await;
        let mut results = self
            .engine()
            .read(|v| eval_reads(&self.sh, v, &part.writes));
        self.reply((part.render)(Some(&mut results)));
    }

    /// Executes one request; `found` is its command's index in [`cmd::COMMANDS`].
    pub(super) async fn execute(&mut self, found: Option<usize>, args: &[Bytes]) -> Flow {
        let Some(spec) = found.map(|i| cmd::COMMANDS[i]) else {
            self.reject(unknown_command(args));
            return Flow::Continue;
        };
        let name = spec.name;
        if !cmd::arity_ok(spec, args.len()) {
            self.reject(cmd::wrong_args(name));
            return Flow::Continue;
        }
        if let Some(r) = self.busy(spec, args) {
            if name == "exec" && self.multi.is_some() {
                self.done = Done::Rejected;
                self.exec_abort(r);
            } else {
                self.reject(r);
            }
            return Flow::Continue;
        }
        if self.user.is_none() && !spec.before_auth {
            self.reject(Reply::err(NOAUTH));
            return Flow::Continue;
        }
        if let Some(user) = &self.user {
            if let Err(e) = self.sh.users.check(user, spec, args) {
                let who = self.who(&user.0);
                self.acl_log_denied(&e);
                self.audit(audit::Event {
                    event: "denied",
                    command: Some(audited_name(spec.name, args)),
                    ..who
                });
                self.reject(Reply::err(e.to_string()));
                return Flow::Continue;
            }
        }
        if let Some(r) = self.refused_while_subscribed(name) {
            self.reject(r);
            return Flow::Continue;
        }
        let need = cmd::flags(spec, args);
        // CLIENT PAUSE holds a command here, once it is known to be valid: under PAUSE ALL every
        // command, CLIENT's too as in Redis, but CLIENT UNPAUSE, so that it can always be sent.
        let unpause = name == "client" && args.get(1).is_some_and(|a| eq(a, "unpause"));
        // Only while a pause is on is it asked whether the command writes (a script's flags
        // take a lookup), and the wait entered.
        if !unpause && (self.multi.is_none() || name == "exec") && self.sh.pause_on() {
            let writes = need.contains(Flags::WRITE)
                || (name == "exec" && self.multi.iter().flatten().any(Part::may_write))
                || self.script_may_write(name, args);
            self.sh.paused(&self.client, writes).await;
        }
        if name != "monitor" {
            self.sh.monitors.feed(&self.client, args);
        }
        // An admin command is on record, durably, before it runs (fail closed).
        if need.contains(Flags::ADMIN) {
            if let Some(a) = self.sh.audit.clone() {
                self.settle().await;
                let ev = audit::Event {
                    event: "admin",
                    command: Some(audited_name(spec.name, args)),
                    ..self.who(self.user.as_ref().map_or("", |u| &u.0))
                };
                if let Err(e) = a.record_durably(ev).await {
                    self.reject(Reply::err(format!("ERR {e}; admin commands are refused")));
                    return Flow::Continue;
                }
            }
        }
        // While the log's queue is full, Engine::submit blocks its thread, and with it every
        // connection on this worker: wait for room here instead (see Backend::room).
        if (need.contains(Flags::WRITE) && self.multi.is_none()) || name == "exec" {
            // A running script holds the sequencer: wait for it here, not on its lock.
            self.sh.scripts.idle().await;
            let bytes = args.iter().map(Bytes::len).sum();
            self.sh.backend.room(bytes).await;
        }
        // Maintenance mode, checked after every wait above, so that on a single node nothing
        // lies between the check and the write's decision.
        if need.contains(Flags::WRITE) {
            if let Some(m) = maintenance::current(&self.engine()) {
                self.reject(m.refusal());
                return Flow::Continue;
            }
        }
        if self.multi.is_some() && spec.in_multi != InMulti::Run {
            let queued = match (spec.run, spec.in_multi) {
                (_, InMulti::Forbid) => {
                    Err(Reply::err("ERR Command not allowed inside a transaction"))
                }
                (Run::Local(reply), _) => {
                    let args = args.to_vec();
                    Ok(Part::deferred(move || reply(&args)))
                }
                (Run::Data(compile), _) => match compile(name, args, now_ms()) {
                    Ok(p) if !p.guards.is_empty() => Err(Reply::err(format!(
                        "ERR {} is not supported inside MULTI by keel; use WATCH",
                        name.to_uppercase()
                    ))),
                    r => r,
                },
                // A cluster's EXEC goes through raft, which runs no scripts.
                (Run::Conn, InMulti::Queue) if is_script(name) && self.sh.cluster().is_some() => {
                    Err(Reply::err(scripts::NO_SCRIPTS_ON_A_CLUSTER))
                }
                // Of CLIENT, only PAUSE and UNPAUSE queue (they need no connection state).
                (Run::Conn, InMulti::Queue) if name == "client" => {
                    match (lower(&args[1]).as_str(), args.len()) {
                        ("pause", 3 | 4) | ("unpause", 2) => {
                            let (sh, args) = (self.sh.clone(), args.to_vec());
                            Ok(Part::deferred(move || run_at_exec(&sh, name, &args)))
                        }
                        (sub @ ("pause" | "unpause"), _) => {
                            Err(cmd::wrong_args(&format!("client|{sub}")))
                        }
                        (sub, _) => Err(Reply::err(format!(
                            "ERR CLIENT {} is not supported inside MULTI by keel",
                            sub.to_uppercase()
                        ))),
                    }
                }
                (Run::Conn, InMulti::Queue) if is_script(name) => {
                    let may_write = self.script_may_write(name, args);
                    Ok(Part::script(args.to_vec(), may_write))
                }
                (Run::Conn, InMulti::Queue) => {
                    let sh = self.sh.clone();
                    let args = args.to_vec();
                    Ok(Part::deferred(move || run_at_exec(&sh, name, &args)))
                }
                (Run::Conn, _) => Err(Reply::err(format!(
                    "ERR {} is not supported inside MULTI by keel",
                    name.to_uppercase()
                ))),
            };
            match queued {
                Ok(p) => {
                    let notify = self.sh.notify.active() && !p.read_only();
                    self.multi_args.push(notify.then(|| args.to_vec()));
                    if self.sh.tracking.active() {
                        if p.read_only() {
                            self.multi_reads.push(args.to_vec());
                        } else {
                            let t = Touched::of(&self.sh, self.client.id, args, &p.writes);
                            let (keys, flush) = t.parts();
                            self.multi_touched.extend(keys);
                            self.multi_flush |= flush;
                        }
                    }
                    let queued = self.multi.as_mut().expect("in MULTI");
                    queued.push(p);
                    (self.client.multi).store(queued.len() as i64, Ordering::Relaxed);
                    self.reply(Reply::Simple("QUEUED".into()));
                }
                Err(e) => self.reject(e),
            }
            return Flow::Continue;
        }
        // A pure read (GETEX without an option too) is answered from this node's state. WATCH
        // is one: a version read before the leader applied everything committed would fail the
        // EXEC of a key that did not change while watched.
        if need.contains(Flags::READ) && !need.contains(Flags::WRITE) {
            if let Err(r) = linearize(self.sh.clone(), self.stale_reads, spec, args).await {
                self.reply(r);
                return Flow::Continue;
            }
        }
        let wait = match spec.block.map(|b| (b.wait)(args)) {
            Some(Err(e)) => {
                self.reply(e);
                return Flow::Continue;
            }
            Some(Ok(wait)) => wait,
            None => None,
        };
        if let (Some(block), Some(timeout), Run::Data(compile)) = (spec.block, wait, spec.run) {
            // Fails fast on bad arguments; the wait tries again with fresh parts.
            if let Err(e) = compile(name, args, now_ms()) {
                self.reply(e);
                return Flow::Continue;
            }
            self.settle().await;
            let sh = self.sh.clone();
            let keys = (block.keys)(args);
            let touched = Touched::of(&sh, self.client.id, args, &[]);
            let args = match block.prepare {
                Some(prepare) => sh.engine().read(|v| prepare(v, args)),
                None => args.to_vec(),
            };
            return Flow::Block(Box::pin(async move {
                let attempt = |later: bool| {
                    let mut part = compile(name, &args, now_ms()).expect("compiled once already");
                    // Once woken, only a list (a sorted set) serves a pop: keys of another type
                    // are passed over, as Redis does not serve a blocked client from them.
                    for w in &mut part.writes {
                        match w {
                            Write::ListPopFirst {
                                skip_other_types, ..
                            }
                            | Write::ZPopFirst {
                                skip_other_types, ..
                            } => *skip_other_types = later,
                            // A later try that finds nothing logs nothing (see the engine).
                            Write::StreamReadGroup { retry, .. } => *retry = later,
                            _ => {}
                        }
                    }
                    let (sh, touched) = (sh.clone(), &touched);
                    async move {
                        let (reply, woken) = run_part(sh, part, touched).await;
                        // A stream read woken by a key that became another type waits on,
                        // as Redis's blocked XREAD is not woken by it.
                        match reply {
                            Reply::Error(e)
                                if later && name == "xread" && e.starts_with("WRONGTYPE") =>
                            {
                                (Reply::NilArray, woken)
                            }
                            reply => (reply, woken),
                        }
                    }
                };
                let on_nokey = name == "xreadgroup";
                blocking::wait_for(&sh.blocked, keys, on_nokey, timeout, attempt).await
            }));
        }
        match spec.run {
            Run::Data(compile) => match compile(name, args, now_ms()) {
                Err(e) => self.reply(e),
                Ok(p) if p.read_only() => {
                    self.read(p).await;
                    if self.tracking.is_some() {
                        self.track_read(args);
                    }
                }
                Ok(p) => {
                    self.touched = Touched::of(&self.sh, self.client.id, args, &p.writes);
                    self.submit(None, p.guards, p.writes, p.render)
                }
            },
            Run::Local(reply) => {
                let r = (name == "ping")
                    .then(|| self.subscribed_ping(args))
                    .flatten()
                    .unwrap_or_else(|| reply(args));
                self.reply(r)
            }
            Run::Conn => return self.command(name, args.to_vec()).await,
        }
        Flow::Continue
    }

    /// The commands the connection runs ([`Run::Conn`]), by family.
    async fn command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        // Before HELP: on a single node CLUSTER answers even HELP with its error, as Redis does.
        if name == "cluster" {
            return self.cluster_command(name, args).await;
        }
        // NAME HELP, for every command with subcommands, from the same table as COMMAND DOCS.
        if args.len() == 2 && eq(&args[1], "help") {
            if let Some(lines) = crate::docs::help_lines(name) {
                self.reply(Reply::Array(lines.into_iter().map(Reply::simple).collect()));
                return Flow::Continue;
            }
        }
        match name {
            "quit" | "auth" | "hello" | "select" | "reset" | "client" | "monitor" => {
                self.session_command(name, args).await
            }
            "multi" | "discard" | "exec" | "watch" | "unwatch" => {
                self.transaction_command(name, args).await
            }
            "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe"
            | "sunsubscribe" | "publish" | "spublish" | "pubsub" => {
                self.pubsub_command(name, &args);
                Flow::Continue
            }
            "dbsize" | "keys" | "scan" | "randomkey" | "memory" | "object" | "keel.version" => {
                self.keyspace_command(name, args).await
            }
            "readonly" | "readwrite" | "keel.cluster" => self.cluster_command(name, args).await,
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "script"
            | "function" => self.scripts_command(name, args).await,
            "keel.idem" => {
                self.idem(args);
                Flow::Continue
            }
            _ => self.admin_command(name, args).await,
        }
    }

    /// KEEL.IDEM id command [arg ...]: the command, applied once per id.
    fn idem(&mut self, args: Vec<Bytes>) {
        let inner = lower(&args[2]);
        let part = match cmd::lookup(&inner) {
            Some(s) if !cmd::arity_ok(s, args.len() - 2) => Err(cmd::wrong_args(&inner)),
            Some(s) => s.compile(&args[2..], now_ms()).unwrap_or_else(|| {
                Err(Reply::err(format!(
                    "ERR KEEL.IDEM wraps a string or key command, not '{inner}'"
                )))
            }),
            None => Err(unknown_command(&args[2..])),
        };
        match part {
            Err(e) => self.reply(e),
            Ok(p) => {
                self.touched = Touched::of(&self.sh, self.client.id, &args[2..], &p.writes);
                self.submit(Some(args[1].clone()), p.guards, p.writes, p.render)
            }
        }
    }
}
