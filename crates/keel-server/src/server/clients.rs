//! The clients connected now, as CLIENT LIST, CLIENT INFO and CLIENT KILL see them, and CLIENT
//! PAUSE. Each connection keeps its own state; what other connections may read or change is
//! here, in its [`Client`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8};
use std::sync::Mutex;

use tokio::sync::{mpsc, Notify};

use super::session::check_client_name;
use super::*;

/// One connection, as the others see it.
pub struct Client {
    pub id: u64,
    pub addr: Arc<str>,
    pub laddr: String,
    pub fd: i32,
    created: Instant,
    /// When the last command started, in ms after `created`.
    last_ms: AtomicU64,
    /// The last command's index in [`cmd::COMMANDS`] (`usize::MAX`: none yet), and its
    /// subcommand's index in the command's docs, plus one (0: none).
    cmd: AtomicUsize,
    sub: AtomicUsize,
    /// Commands queued since MULTI, or -1 outside MULTI.
    pub multi: AtomicI64,
    pub resp: AtomicU8,
    /// Bytes of the request being run and those buffered behind it.
    pub qbuf: AtomicUsize,
    /// Waiting in a blocking command, or in CLIENT PAUSE.
    pub blocked: AtomicBool,
    pub no_evict: AtomicBool,
    pub no_touch: AtomicBool,
    /// Its channels, patterns and shard channels (CLIENT LIST's sub, psub and ssub).
    pub subscriptions: [AtomicUsize; 3],
    text: Mutex<Text>,
    killed: AtomicBool,
    kill: Notify,
    /// Out-of-band replies for this connection (Pub/Sub messages, invalidations), and the bytes
    /// waiting in it.
    pushes: mpsc::UnboundedSender<(Pushed, usize)>,
    pushed_bytes: AtomicUsize,
    /// Replies encoded and not yet written to the socket (with `pushed_bytes`, CLIENT LIST's
    /// omem).
    pub out_bytes: AtomicUsize,
}

/// An out-of-band reply waiting for its connection.
pub enum Pushed {
    Reply(Reply),
    /// A Pub/Sub message, shared by all its subscribers.
    Message(Arc<Message>),
    /// Nothing to write: the connection was killed or the server stops. A connection waiting
    /// for its next request waits on its pushes alone, so that each wait does not also
    /// register with the kill and shutdown signals (see `session`).
    Wake,
}

/// A message many connections write: encoded once for each protocol, by the first that writes
/// it in that protocol.
pub struct Message {
    pub reply: Reply,
    encoded: [std::sync::OnceLock<Bytes>; 2],
}

impl Message {
    pub fn new(reply: Reply) -> Arc<Message> {
        Arc::new(Message {
            reply,
            encoded: Default::default(),
        })
    }

    /// The message in RESP `proto` (2 or 3).
    pub fn encoded(&self, proto: u8) -> &Bytes {
        self.encoded[usize::from(proto == 3)].get_or_init(|| {
            let mut out = bytes::BytesMut::new();
            self.reply.encode(proto, &mut out);
            out.freeze()
        })
    }
}

/// Bytes of out-of-band replies that may wait for one connection (Redis's
/// `client-output-buffer-limit pubsub` hard limit): past it the connection is closed, so one that
/// does not read cannot grow the server's memory without bound.
pub const PUSHED_BYTES_MAX: usize = 32 << 20;

#[derive(Default)]
struct Text {
    name: Option<Bytes>,
    lib_name: String,
    lib_ver: String,
    user: String,
}

impl Client {
    /// A client, and the receiving end of its out-of-band replies.
    pub fn new(
        id: u64,
        addr: Arc<str>,
        laddr: String,
        fd: i32,
    ) -> (Client, mpsc::UnboundedReceiver<(Pushed, usize)>) {
        let (pushes, rx) = mpsc::unbounded_channel();
        let c = Client {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            last_ms: AtomicU64::new(0),
            cmd: AtomicUsize::new(usize::MAX),
            sub: AtomicUsize::new(0),
            multi: AtomicI64::new(-1),
            resp: AtomicU8::new(2),
            qbuf: AtomicUsize::new(0),
            blocked: AtomicBool::new(false),
            no_evict: AtomicBool::new(false),
            no_touch: AtomicBool::new(false),
            subscriptions: Default::default(),
            text: Mutex::default(),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
            pushes,
            pushed_bytes: AtomicUsize::new(0),
            out_bytes: AtomicUsize::new(0),
        };
        (c, rx)
    }

    /// Queues an out-of-band reply of about `size` bytes for the connection to write when it
    /// can; past [`PUSHED_BYTES_MAX`] waiting, closes the connection instead.
    pub fn push(&self, r: Pushed, size: usize) {
        if self.pushed_bytes.fetch_add(size, Ordering::Relaxed) + size > PUSHED_BYTES_MAX {
            tracing::warn!(
                "client {}: disconnected: more than {PUSHED_BYTES_MAX} bytes of messages waiting",
                self.addr
            );
            self.kill();
            return;
        }
        let _ = self.pushes.send((r, size));
    }

    /// The connection took `size` bytes of out-of-band replies from its queue.
    pub fn pushed(&self, size: usize) {
        self.pushed_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    fn text(&self) -> std::sync::MutexGuard<'_, Text> {
        crate::lock(&self.text)
    }

    pub fn name(&self) -> Option<Bytes> {
        self.text().name.clone()
    }

    pub fn set_name(&self, name: Option<Bytes>) {
        self.text().name = name.filter(|n| !n.is_empty());
    }

    pub fn set_user(&self, user: &str) {
        self.text().user = user.to_string();
    }

    /// A command starts `now`: `index` in [`cmd::COMMANDS`], its arguments, and the bytes of the
    /// request and of those buffered behind it.
    pub fn started(&self, now: Instant, index: Option<usize>, args: &[Bytes], qbuf: usize) {
        let ms = now.saturating_duration_since(self.created).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        self.qbuf.store(qbuf, Ordering::Relaxed);
        let index = index.unwrap_or(usize::MAX);
        self.cmd.store(index, Ordering::Relaxed);
        let sub = (cmd::COMMANDS.get(index))
            .filter(|c| !c.doc.subcommands.is_empty())
            .and_then(|c| {
                let sub = args.get(1)?;
                let i = (c.doc.subcommands.iter())
                    .position(|s| s.name.as_bytes().eq_ignore_ascii_case(sub))?;
                Some(i + 1)
            });
        self.sub.store(sub.unwrap_or(0), Ordering::Relaxed);
    }

    /// The last command's name as Redis writes it: `get`, `client|list`, or `NULL`.
    fn command(&self) -> String {
        let Some(c) = cmd::COMMANDS.get(self.cmd.load(Ordering::Relaxed)) else {
            return "NULL".into();
        };
        match self.sub.load(Ordering::Relaxed) {
            0 => c.name.to_string(),
            i => format!("{}|{}", c.name, c.doc.subcommands[i - 1].name),
        }
    }

    /// Seconds since it connected.
    pub fn age(&self) -> u64 {
        self.created.elapsed().as_secs()
    }

    /// CLIENT LIST's line, with Redis 7.2's fields. Of the memory fields keel reports the query
    /// buffer (qbuf), what waits to be written (omem: replies encoded, and messages queued
    /// behind them) and their sum (tot-mem); the others are 0.
    pub fn line(&self) -> String {
        let t = self.text();
        let qbuf = self.qbuf.load(Ordering::Relaxed);
        let omem =
            self.out_bytes.load(Ordering::Relaxed) + self.pushed_bytes.load(Ordering::Relaxed);
        let name = t
            .name
            .as_ref()
            .map(|n| String::from_utf8_lossy(n))
            .unwrap_or_default();
        let idle = (self.created.elapsed().as_millis() as u64)
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
            / 1000;
        let mut flags = String::new();
        let multi = self.multi.load(Ordering::Relaxed);
        if multi >= 0 {
            flags.push('x');
        }
        if self.blocked.load(Ordering::Relaxed) {
            flags.push('b');
        }
        if self.no_evict.load(Ordering::Relaxed) {
            flags.push('e');
        }
        if self.no_touch.load(Ordering::Relaxed) {
            flags.push('T');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} laddr={} fd={} name={name} age={} idle={idle} flags={flags} db=0 \
             sub={} psub={} ssub={} multi={multi} qbuf={qbuf} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 \
             rbp=0 obl=0 oll=0 omem={omem} tot-mem={} events=r cmd={} user={} redir=-1 resp={} \
             lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            self.age(),
            self.subscriptions[0].load(Ordering::Relaxed),
            self.subscriptions[1].load(Ordering::Relaxed),
            self.subscriptions[2].load(Ordering::Relaxed),
            qbuf + omem,
            self.command(),
            t.user,
            self.resp.load(Ordering::Relaxed),
            t.lib_name,
            t.lib_ver,
        )
    }

    /// Whether it is subscribed to anything (Redis's pubsub flag).
    pub fn subscribed(&self) -> bool {
        self.subscriptions
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Closes the connection: after the command it is running, or at once if it is waiting.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
        self.wake();
    }

    /// Wakes the connection if it waits for its next request, to look at whether it was
    /// killed or the server stops.
    pub fn wake(&self) {
        let _ = self.pushes.send((Pushed::Wake, 0));
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    /// Returns once the connection is killed.
    pub async fn until_killed(&self) {
        if !self.killed() {
            self.kill.notified().await;
        }
    }
}

/// Every client connected now, by id.
#[derive(Default)]
pub struct Clients(Mutex<BTreeMap<u64, Arc<Client>>>);

impl Clients {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        crate::lock(&self.0)
    }

    /// Registers a client until the guard is dropped.
    pub fn add(&self, c: Arc<Client>) -> Registered<'_> {
        let id = c.id;
        self.map().insert(id, c);
        Registered(self, id)
    }

    pub fn get(&self, id: u64) -> Option<Arc<Client>> {
        self.map().get(&id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Client>> {
        self.map().values().cloned().collect()
    }
}

pub struct Registered<'a>(&'a Clients, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.map().remove(&self.1);
    }
}

/// CLIENT PAUSE's state: until when, and whether reads wait too.
#[derive(Clone, Copy, Default)]
pub struct Pause {
    until: Option<Instant>,
    all: bool,
}

impl Pause {
    /// Whether a command that `writes` (or not) waits now.
    fn holds(&self, writes: bool) -> bool {
        self.until.is_some_and(|u| u > Instant::now()) && (self.all || writes)
    }
}

impl Shared {
    /// CLIENT PAUSE ms [ALL|WRITE] and CLIENT UNPAUSE (`args` from CLIENT on, arity checked),
    /// sent alone or queued in MULTI (which pauses once EXEC's writes are in).
    pub(super) fn client_pause(&self, args: &[Bytes]) -> Reply {
        if eq(&args[1], "unpause") {
            self.pause.send_replace(Pause::default());
            self.resume_expiry();
            return Reply::ok();
        }
        let Some(ms) = parse_i64(&args[2]).filter(|&n| n >= 0) else {
            return Reply::err("ERR timeout is not an integer or out of range");
        };
        let all = match args.get(3).map(|a| lower(a)).as_deref() {
            None | Some("all") => true,
            Some("write") => false,
            Some(_) => return Reply::err(SYNTAX),
        };
        self.pause(ms as u64, all);
        Reply::ok()
    }

    /// Active expiry goes on once no pause holds writes, and catches up at once.
    pub(super) fn resume_expiry(&self) {
        let engine = self.engine();
        if !engine.expiry_paused() || self.pause.borrow().holds(true) {
            return;
        }
        engine.pause_expiry(false);
        while matches!(engine.remove_expired(1000), Ok(1000)) {}
    }

    /// CLIENT PAUSE: the longer of the two pauses, and ALL over WRITE while the old one lasts.
    /// Active expiry waits too, as in Redis: a pause keeps the data set still.
    fn pause(&self, for_ms: u64, all: bool) {
        self.engine().pause_expiry(true);
        let until = Instant::now() + Duration::from_millis(for_ms);
        self.pause.send_modify(|p| {
            let active = p.until.is_some_and(|u| u > Instant::now());
            *p = Pause {
                until: Some(if active {
                    until.max(p.until.unwrap_or(until))
                } else {
                    until
                }),
                all: all || (active && p.all),
            };
        });
    }

    /// Whether CLIENT PAUSE was given and not yet lifted (it may have run out).
    pub(super) fn pause_on(&self) -> bool {
        self.pause.borrow().until.is_some()
    }

    /// Waits while CLIENT PAUSE holds a command that `writes` (or not).
    pub(super) async fn paused(&self, client: &Client, writes: bool) {
        if !self.pause.borrow().holds(writes) {
            return;
        }
        let mut rx = self.pause.subscribe();
        loop {
            let p = *rx.borrow_and_update();
            if !p.holds(writes) {
                return;
            }
            client.blocked.store(true, Ordering::Relaxed);
            self.paused_clients.fetch_add(1, Ordering::Relaxed);
            let deadline = p.until.expect("held");
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            self.paused_clients.fetch_sub(1, Ordering::Relaxed);
            client.blocked.store(false, Ordering::Relaxed);
        }
    }
}

type ClientTest = Box<dyn Fn(&Client) -> bool>;

/// CLIENT KILL's filters, as one test of a client.
fn kill_filter(sh: &Shared, me: u64, filters: &[Bytes]) -> Result<ClientTest, Reply> {
    let mut tests: Vec<ClientTest> = Vec::new();
    let mut skip_me = true;
    if !filters.len().is_multiple_of(2) {
        return Err(Reply::err(SYNTAX));
    }
    for pair in filters.chunks(2) {
        let v = &pair[1];
        match lower(&pair[0]).as_str() {
            "id" => {
                let id = parse_i64(v)
                    .filter(|&n| n > 0)
                    .ok_or_else(|| Reply::err("ERR client-id should be greater than 0"))?;
                tests.push(Box::new(move |c| c.id == id as u64));
            }
            "addr" => {
                let a = String::from_utf8_lossy(v).into_owned();
                tests.push(Box::new(move |c| *c.addr == *a));
            }
            "laddr" => {
                let a = String::from_utf8_lossy(v).into_owned();
                tests.push(Box::new(move |c| c.laddr == a));
            }
            "type" => match lower(v).as_str() {
                "normal" => {}
                "master" | "replica" | "slave" | "pubsub" => tests.push(Box::new(|_| false)),
                _ => {
                    return Err(Reply::err(format!(
                        "ERR Unknown client type '{}'",
                        String::from_utf8_lossy(v)
                    )))
                }
            },
            "user" => {
                let u = String::from_utf8_lossy(v).into_owned();
                if sh.users.name(&u).is_none() {
                    return Err(Reply::err(format!("ERR No such user '{u}'")));
                }
                tests.push(Box::new(move |c| c.text().user == u));
            }
            "skipme" => match lower(v).as_str() {
                "yes" => skip_me = true,
                "no" => skip_me = false,
                _ => return Err(Reply::err(SYNTAX)),
            },
            "maxage" => {
                let age = parse_i64(v).ok_or_else(|| Reply::err(NOT_INT))?;
                tests.push(Box::new(move |c| c.age() as i64 >= age));
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
    }
    let keep = move |c: &Client| (!skip_me || c.id != me) && tests.iter().all(|t| t(c));
    Ok(Box::new(keep))
}

impl Conn {
    pub(super) fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = lower(&args[1]);
        let me = &self.client;
        match (sub.as_str(), args.len()) {
            ("id", 2) => Reply::Int(self.client.id as i64),
            ("getname", 2) => me.name().map_or(Reply::Nil, Reply::Bulk),
            ("setname", 3) => match check_client_name(&args[2]) {
                Ok(()) => {
                    me.set_name(Some(args[2].clone()));
                    Reply::ok()
                }
                Err(e) => e,
            },
            ("setinfo", 4) => {
                let v = String::from_utf8_lossy(&args[3]).into_owned();
                if v.chars().any(|c| !('!'..='~').contains(&c)) {
                    return Reply::err(format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        String::from_utf8_lossy(&args[2])
                    ));
                }
                match lower(&args[2]).as_str() {
                    "lib-name" => me.text().lib_name = v,
                    "lib-ver" => me.text().lib_ver = v,
                    _ => {
                        return Reply::err(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        ))
                    }
                }
                Reply::ok()
            }
            ("info", 2) => Reply::Verbatim(format!("{}\n", me.line())),
            ("list", _) => {
                let mut all = self.sh.registry.all();
                match args.get(2).map(|a| lower(a)).as_deref() {
                    None => {}
                    Some("id") if args.len() > 3 => {
                        let mut ids = Vec::new();
                        for a in &args[3..] {
                            match parse_i64(a).filter(|&n| n > 0) {
                                Some(n) => ids.push(n as u64),
                                None => return Reply::err("ERR Invalid client ID"),
                            }
                        }
                        all.retain(|c| ids.contains(&c.id));
                    }
                    Some("type") if args.len() == 4 => match lower(&args[3]).as_str() {
                        "normal" => {}
                        "master" | "replica" | "slave" | "pubsub" => all.clear(),
                        _ => {
                            return Reply::err(format!(
                                "ERR Unknown client type '{}'",
                                String::from_utf8_lossy(&args[3])
                            ))
                        }
                    },
                    _ => return Reply::err(SYNTAX),
                }
                let text: String = all.iter().map(|c| c.line() + "\n").collect();
                Reply::Verbatim(text)
            }
            ("kill", 3) => {
                // The old form: CLIENT KILL addr:port.
                let addr = String::from_utf8_lossy(&args[2]);
                match self
                    .sh
                    .registry
                    .all()
                    .into_iter()
                    .find(|c| *c.addr == *addr)
                {
                    Some(c) => {
                        c.kill();
                        Reply::ok()
                    }
                    None => Reply::err("ERR No such client"),
                }
            }
            ("kill", 4..) => match kill_filter(&self.sh, self.client.id, &args[2..]) {
                Err(e) => e,
                Ok(keep) => {
                    let hit: Vec<_> = self
                        .sh
                        .registry
                        .all()
                        .into_iter()
                        .filter(|c| keep(c))
                        .collect();
                    for c in &hit {
                        c.kill();
                    }
                    Reply::Int(hit.len() as i64)
                }
            },
            ("reply", 3) => match lower(&args[2]).as_str() {
                "on" => {
                    self.silence = Silence::Never;
                    self.quiet = false;
                    Reply::ok()
                }
                "off" => {
                    self.silence = Silence::Always;
                    self.quiet = true;
                    Reply::ok()
                }
                "skip" => {
                    self.silence = Silence::Next;
                    self.quiet = true;
                    Reply::ok()
                }
                _ => Reply::err(SYNTAX),
            },
            ("no-evict" | "no-touch", 3) => {
                let flag = if sub == "no-evict" {
                    &me.no_evict
                } else {
                    &me.no_touch
                };
                match lower(&args[2]).as_str() {
                    "on" => flag.store(true, Ordering::Relaxed),
                    "off" => flag.store(false, Ordering::Relaxed),
                    _ => return Reply::err(SYNTAX),
                }
                Reply::ok()
            }
            ("getredir", 2) => self.client_getredir(),
            ("tracking", 3..) => self.client_tracking(args),
            ("caching", 3) => self.client_caching(&args[2]),
            ("trackinginfo", 2) => self.client_trackinginfo(),
            ("pause", 3 | 4) | ("unpause", 2) => self.sh.client_pause(args),
            (
                "id" | "getname" | "setname" | "setinfo" | "info" | "kill" | "reply" | "no-evict"
                | "no-touch" | "getredir" | "pause" | "unpause" | "tracking" | "caching"
                | "trackinginfo",
                _,
            ) => cmd::wrong_args(&format!("client|{sub}")),
            _ => unknown_subcommand(&args[1], "CLIENT"),
        }
    }
}

/// CLIENT REPLY's state.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    Never,
    /// OFF: no replies until ON.
    Always,
    /// SKIP: no reply to the next command.
    Next,
}
