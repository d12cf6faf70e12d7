//! MONITOR: every command any client runs, as one line each, to the connections that asked.
//!
//! A line is fed once a command is known to run (its arguments are valid, the client may run
//! it, and CLIENT PAUSE let it through), before it runs. Secrets are `(redacted)`, as in the
//! slow log. A monitor that falls more than [`BACKLOG`] lines behind loses the oldest (it is
//! told how many), so a slow monitor cannot grow the server's memory.

use tokio::sync::broadcast;

use super::*;

/// Lines kept for monitors that have not read them yet.
const BACKLOG: usize = 4096;

pub struct Monitors(broadcast::Sender<Arc<str>>);

impl Default for Monitors {
    fn default() -> Monitors {
        Monitors(broadcast::channel(BACKLOG).0)
    }
}

impl Monitors {
    /// A new monitor's lines: every command fed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.0.subscribe()
    }

    /// Feeds a command to the monitors, if there are any.
    pub fn feed(&self, client: &Client, args: &[Bytes]) {
        self.feed_as(&client.addr, args)
    }

    /// Feeds a command sent by `who` (a client's address, or `lua` for a script's call).
    pub fn feed_as(&self, who: &str, args: &[Bytes]) {
        if self.0.receiver_count() == 0 {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = format!("{}.{:06} [0 {}]", now.as_secs(), now.subsec_micros(), who);
        for (i, a) in args.iter().enumerate() {
            line.push(' ');
            let shown = crate::slowlog::redact(args, i);
            quote(&mut line, shown.as_deref().unwrap_or(a));
        }
        let _ = self.0.send(line.into());
    }
}

/// Appends `b` in double quotes, escaped as Redis's MONITOR writes arguments.
fn quote(o: &mut String, b: &[u8]) {
    o.push('"');
    for &c in b {
        match c {
            b'\\' => o.push_str("\\\\"),
            b'"' => o.push_str("\\\""),
            b'\n' => o.push_str("\\n"),
            b'\r' => o.push_str("\\r"),
            b'\t' => o.push_str("\\t"),
            7 => o.push_str("\\a"),
            8 => o.push_str("\\b"),
            0x20..=0x7e => o.push(c as char),
            _ => o.push_str(&format!("\\x{c:02x}")),
        }
    }
    o.push('"');
}

/// How a monitoring session ended.
pub(super) enum Ended {
    /// A QUIT or RESET arrived: it is left at the front of the buffer, for the session to run.
    Command,
    /// The client went away, was killed, or the server stops.
    Gone,
}

/// Streams the monitor's lines to a client that sent MONITOR, until it sends QUIT or RESET.
/// Anything else it sends gets an error and is dropped.
pub(super) async fn monitor<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    parser: &mut Parser,
    limits: &crate::resp::Limits,
    sh: &Shared,
    client: &Client,
    mut lines: broadcast::Receiver<Arc<str>>,
) -> std::io::Result<Ended> {
    let mut stop = sh.stopping();
    let mut out = Vec::new();
    loop {
        // What the client sent meanwhile.
        loop {
            match parser.parse(buf, limits) {
                Ok(Some((frame, n))) => {
                    let first = frame.args.first();
                    if first.is_some_and(|a| eq(a, "quit") || eq(a, "reset")) {
                        return Ok(Ended::Command);
                    }
                    buf.advance(n);
                    if first.is_some() {
                        out.extend_from_slice(
                            b"-ERR this connection is in MONITOR mode: only QUIT and RESET are served\r\n",
                        );
                    }
                }
                Ok(None) => break,
                Err(_) => return Ok(Ended::Gone),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        buf.reserve(16 << 10);
        tokio::select! {
            line = lines.recv() => match line {
                Ok(l) => {
                    out.push(b'+');
                    out.extend_from_slice(l.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                Err(broadcast::error::RecvError::Lagged(n)) => out.extend_from_slice(
                    format!("+keel: {n} lines were dropped: this monitor fell behind\r\n").as_bytes(),
                ),
                Err(broadcast::error::RecvError::Closed) => return Ok(Ended::Gone),
            },
            n = stream.read_buf(buf) => {
                let n = n?;
                if n == 0 {
                    return Ok(Ended::Gone);
                }
                sh.net_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            _ = stop.wait_for(|s| *s) => return Ok(Ended::Gone),
            _ = client.until_killed() => return Ok(Ended::Gone),
        }
    }
}
