//! A client's session: reading requests and writing replies, logging in, HELLO and CLIENT.

use super::*;

/// Room made in a connection's read buffer before each read.
const READ_BYTES: usize = 16 << 10;

/// Serves one client over a plain or TLS stream until it leaves or the server shuts down.
pub(super) async fn session<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    (client, pushes): (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<(Pushed, usize)>,
    ),
    sh: Arc<Shared>,
) -> std::io::Result<()> {
    let stop = sh.shutdown.subscribe();
    let client = Arc::new(client);
    let user = sh.users.initial();
    client.set_user(user.as_ref().map_or("", |u| u.0.as_str()));
    let _registered = sh.registry.add(client.clone());
    let conn_id = client.id;
    let mut conn = Conn {
        client,
        sh: sh.clone(),
        proto: 2,
        user,
        silence: Silence::Never,
        quiet: false,
        multi: None,
        multi_dirty: false,
        watched: Vec::new(),
        stale_reads: true,
        out: BytesMut::new(),
        queue: VecDeque::new(),
        done: Done::Ok,
        subs: None,
        pushes,
        tracking: None,
        caching: None,
        caching_next: None,
        multi_touched: Vec::new(),
        multi_flush: false,
        multi_reads: Vec::new(),
        multi_args: Vec::new(),
        touched: Touched::none(conn_id),
    };
    let limits = sh.settings.limits.clone();
    let mut parser = Parser::default();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    // Time spent waiting for the bytes of the request now arriving. The idle timeout bounds
    // this sum, not the gap between two reads: a client that dribbles a byte at a time
    // (slowloris) is cut off once its request has taken the timeout in all.
    let mut waited = Duration::ZERO;
    loop {
        // Execute every complete request buffered.
        loop {
            // Until the client logs in, a request is bounded tightly (Redis's 10 arguments of
            // 16 KiB), so nobody who cannot authenticate makes us hold megabytes.
            parser.set_unauthenticated(conn.user.is_none());
            match parser.parse(&buf, &limits) {
                Ok(Some((frame, n))) => {
                    // Killed by another client (CLIENT KILL) while its request arrived: the
                    // request is not run, and the connection closes (in Redis it closes before
                    // the KILL's reply; here the kill can wake this task after the request).
                    if conn.client.killed() {
                        return Ok(());
                    }
                    let qbuf = buf.len();
                    buf.advance(n);
                    waited = Duration::ZERO;
                    if frame.args.is_empty() {
                        continue;
                    }
                    sh.commands_processed.fetch_add(1, Ordering::Relaxed);
                    let found = cmd::find(&frame.args[0]);
                    let now = Instant::now();
                    conn.client.started(now, found, &frame.args, qbuf);
                    conn.caching = conn.caching_next.take();
                    // CLIENT REPLY: whether this command's reply is sent.
                    conn.quiet = match conn.silence {
                        Silence::Never => false,
                        Silence::Always => true,
                        Silence::Next => {
                            conn.silence = Silence::Never;
                            true
                        }
                    };
                    let timer = sh.metrics.start(found, &frame.args, now);
                    let queued = conn.queue.len();
                    let flow = conn.execute(found, &frame.args).await;
                    // A blocking command's timer stops once it is served, and leaves its
                    // wait out (as Redis's slow log does).
                    let mut timer = Some((timer, frame.args));
                    if !matches!(flow, Flow::Block(_)) {
                        let (timer, args) = timer.take().expect("not blocked");
                        observe(&mut conn, timer, queued, args);
                    }
                    match flow {
                        Flow::Continue => {}
                        Flow::Block(wait) => {
                            conn.flush(&mut stream).await?;
                            let max = sh.settings.max_request_bytes;
                            let waiting = Instant::now();
                            conn.client.blocked.store(true, Ordering::Relaxed);
                            let served =
                                block(&mut stream, &mut buf, max, wait, stop.clone(), &conn.client)
                                    .await?;
                            conn.client.blocked.store(false, Ordering::Relaxed);
                            match served {
                                Some(reply) => {
                                    let (timer, args) = timer.take().expect("blocked");
                                    let timer = timer.excluding(waiting.elapsed());
                                    let queued = conn.queue.len();
                                    conn.reply(reply);
                                    observe(&mut conn, timer, queued, args);
                                }
                                None => return Ok(()),
                            }
                        }
                        Flow::Monitor(lines) => {
                            conn.flush(&mut stream).await?;
                            let c = conn.client.clone();
                            let m = monitor::monitor(
                                &mut stream,
                                &mut buf,
                                &mut parser,
                                &limits,
                                &sh,
                                &c,
                                lines,
                            );
                            if let monitor::Ended::Gone = m.await? {
                                return Ok(());
                            }
                        }
                        Flow::Close => return conn.flush(&mut stream).await,
                        Flow::Shutdown => {
                            conn.flush(&mut stream).await?;
                            sh.request_shutdown();
                            return Ok(());
                        }
                    }
                    conn.push_waiting();
                    // CLIENT KILL: the command that killed it (its own) is answered first.
                    if conn.client.killed() {
                        return conn.flush(&mut stream).await;
                    }
                    if conn.out.len() >= FLUSH_BYTES || conn.queue.len() >= PENDING_MAX {
                        conn.flush(&mut stream).await?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    conn.reply(Reply::err(format!("ERR Protocol error: {e}")));
                    tracing::debug!("client {}: protocol error: {e}", conn.client.addr);
                    return conn.flush(&mut stream).await;
                }
            }
        }
        conn.flush(&mut stream).await?;
        if buf.len() >= sh.settings.max_request_bytes {
            conn.reply(Reply::err(format!(
                "ERR Protocol error: request exceeds max_request_bytes ({})",
                sh.settings.max_request_bytes
            )));
            return conn.flush(&mut stream).await;
        }
        if *stop.borrow() || conn.client.killed() {
            return Ok(());
        }
        if buf.is_empty() {
            waited = Duration::ZERO;
            // A large request (100,000 arguments) grew the buffer; an idle connection does
            // not keep the megabytes (Redis shrinks its query buffers too).
            if buf.capacity() > 4 * READ_BYTES {
                buf = BytesMut::with_capacity(READ_BYTES);
            }
        }
        buf.reserve(READ_BYTES);
        let read = stream.read_buf(&mut buf);
        // A subscriber waits for messages as long as it likes: no idle timeout.
        let idle_timeout = sh.settings.idle_timeout.filter(|_| conn.subs.is_none());
        // Timed only for the idle timeout: two clock reads a command less without one.
        let read_started = idle_timeout.map(|_| Instant::now());
        // A kill and a shutdown come as `Pushed::Wake`: one wait less to register each time
        // (checked before this wait, so none is missed). The socket first, without drawing a
        // random number each time: the pushes are also taken after every command.
        let woke = tokio::select! {
            biased;
            r = async {
                match idle_timeout {
                    Some(t) => tokio::time::timeout(t.saturating_sub(waited), read).await.ok(),
                    None => Some(read.await),
                }
            } => match r {
                Some(r) => Ok(r?),
                None => return Ok(()), // idle, or a request not complete in time
            },
            message = conn.pushes.recv() => Err(message),
        };
        // A Pub/Sub message arrived first: out it goes, and the read starts again.
        let n = match woke {
            Ok(n) => n,
            Err(message) => {
                let client = conn.client.clone();
                if client.killed() || *stop.borrow() {
                    return Ok(());
                }
                if let Some((m, size)) = message {
                    conn.client.pushed(size);
                    conn.push_out(m);
                    // Let the publishers that are ready run first: the messages they publish
                    // meanwhile go out in this one write (as Redis writes a subscriber's
                    // messages once per turn of its event loop) instead of a write each.
                    tokio::task::yield_now().await;
                    conn.push_waiting();
                }
                // A subscriber that stops reading blocks this write; past its bound the
                // publishers kill it, and that ends the wait.
                tokio::select! {
                    r = conn.flush(&mut stream) => r?,
                    _ = client.until_killed() => return Ok(()),
                }
                continue;
            }
        };
        if let Some(t) = read_started {
            waited += t.elapsed();
        }
        if n == 0 {
            return Ok(());
        }
        sh.net_in.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Waits for a blocking command's reply while reading what the client sends meanwhile into
/// `buf` (it runs after the reply, in order). `None`: the client went away or the server stops,
/// and the wait is dropped before it took anything.
pub(super) async fn block<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
    mut wait: Pin<Box<dyn Future<Output = Reply> + Send>>,
    mut stop: watch::Receiver<bool>,
    client: &Client,
) -> std::io::Result<Option<Reply>> {
    loop {
        // What a client sends while it waits is bounded as any request is (P11): past the
        // bound, nothing more is read until the reply.
        if buf.len() >= max {
            tokio::select! {
                reply = &mut wait => return Ok(Some(reply)),
                _ = stop.wait_for(|s| *s) => return Ok(None),
                _ = client.until_killed() => return Ok(None),
            }
        }
        buf.reserve(READ_BYTES);
        tokio::select! {
            reply = &mut wait => return Ok(Some(reply)),
            n = stream.read_buf(buf) => {
                if n? == 0 {
                    return Ok(None);
                }
            }
            _ = stop.wait_for(|s| *s) => return Ok(None),
            _ = client.until_killed() => return Ok(None),
        }
    }
}

impl Conn {
    /// QUIT, AUTH, HELLO, SELECT, RESET and CLIENT.
    pub(super) async fn session_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match name {
            "quit" => {
                self.reply(Reply::ok());
                return Flow::Close;
            }
            "auth" => self.auth(&args),
            "hello" => {
                self.settle().await;
                self.hello(&args)
            }
            "select" => match parse_i64(&args[1]) {
                None => Reply::err(NOT_INT),
                Some(0) => Reply::ok(),
                Some(_) => Reply::err("ERR DB index is out of range"),
            },
            "reset" => {
                self.settle().await;
                self.multi = None;
                self.multi_dirty = false;
                self.watched.clear();
                self.stale_reads = true;
                self.proto = 2;
                self.client.resp.store(2, Ordering::Relaxed);
                self.client.multi.store(-1, Ordering::Relaxed);
                self.client.set_name(None);
                self.unsubscribe_all();
                self.tracking = None;
                self.silence = Silence::Never;
                self.quiet = false;
                self.user = self.sh.users.initial();
                let user = self.user.as_ref().map_or("", |u| u.0.as_str());
                self.client.set_user(user);
                Reply::Simple("RESET".into())
            }
            "client" => self.client(&args),
            "monitor" => {
                let lines = self.sh.monitors.subscribe();
                self.reply(Reply::ok());
                return Flow::Monitor(lines);
            }
            other => Reply::err(format!("ERR internal: no handler for '{other}'")),
        };
        self.reply(reply);
        Flow::Continue
    }

    pub(super) fn auth(&mut self, args: &[Bytes]) -> Reply {
        let (user, pass) = match args.len() {
            2 => (&b"default"[..], &args[1]),
            3 => (&args[1][..], &args[2]),
            _ => return Reply::err(SYNTAX),
        };
        if args.len() == 2 && !self.sh.users.password_required() {
            return Reply::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        }
        let ok = match self.sh.users.authenticate(user, pass) {
            Some(u) => {
                self.client.set_user(&u.0);
                self.user = Some(u);
                true
            }
            None => false,
        };
        self.audit_auth(user, ok);
        if ok {
            Reply::ok()
        } else {
            Reply::err(WRONGPASS)
        }
    }

    /// Records an event in the audit log, if one is kept.
    pub(super) fn audit(&self, ev: audit::Event) {
        if let Some(a) = &self.sh.audit {
            a.record(ev);
        }
    }

    /// An event's user and client address.
    pub(super) fn who(&self, user: &str) -> audit::Event {
        audit::Event {
            user: Some(user.into()),
            addr: Some(self.client.addr.clone()),
            ..audit::Event::default()
        }
    }

    /// Records a login, if an audit log is kept. A name that is no configured user is recorded
    /// as `(unknown)`: it is whatever the client sent, possibly a password typed in the wrong
    /// place (P14).
    pub(super) fn audit_auth(&self, user: &[u8], ok: bool) {
        if !ok {
            self.acl_log_failed_auth(user);
        }
        if self.sh.audit.is_none() {
            return;
        }
        let user = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.sh.users.name(u))
            .unwrap_or_else(|| "(unknown)".into());
        self.audit(audit::Event {
            event: "auth",
            ok: Some(ok),
            user: Some(user),
            addr: Some(self.client.addr.clone()),
            ..audit::Event::default()
        });
    }

    pub(super) fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut proto = self.proto;
        if let Some(v) = args.get(1) {
            match parse_i64(v) {
                None => {
                    return Reply::err("ERR Protocol version is not an integer or out of range")
                }
                Some(v @ (2 | 3)) => proto = v as u8,
                Some(_) => return Reply::err("NOPROTO unsupported protocol version"),
            }
        }
        let mut i = 2;
        let mut auth = None;
        let mut setname = None;
        while i < args.len() {
            if eq(&args[i], "auth") && i + 2 < args.len() {
                auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            } else if eq(&args[i], "setname") && i + 1 < args.len() {
                setname = Some(args[i + 1].clone());
                i += 2;
            } else {
                return Reply::err(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i])
                ));
            }
        }
        if let Some((u, p)) = auth {
            match self.sh.users.authenticate(&u, &p) {
                Some(user) => {
                    self.client.set_user(&user.0);
                    self.user = Some(user);
                    self.audit_auth(&u, true);
                }
                None => {
                    self.audit_auth(&u, false);
                    return Reply::err(WRONGPASS);
                }
            }
        }
        if self.user.is_none() {
            return Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        if let Some(n) = setname {
            if let Err(e) = check_client_name(&n) {
                return e;
            }
            self.client.set_name(Some(n));
        }
        self.proto = proto;
        self.client.resp.store(proto, Ordering::Relaxed);
        let s = |x: &str| Reply::bulk(x.to_string());
        Reply::Map(vec![
            (s("server"), s("keel")),
            (s("version"), s(REDIS_COMPAT_VERSION)),
            (s("proto"), Reply::Int(proto as i64)),
            (s("id"), Reply::Int(self.client.id as i64)),
            (s("mode"), s(redis_mode(self.sh.cluster()))),
            (s("role"), s("master")),
            (s("modules"), Reply::Array(Vec::new())),
        ])
    }
}

pub(super) fn check_client_name(n: &[u8]) -> Result<(), Reply> {
    if n.iter().all(|&c| (b'!'..=b'~').contains(&c)) {
        Ok(())
    } else {
        Err(Reply::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}
