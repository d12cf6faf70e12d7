//! SLOWLOG: the commands that took at least `slowlog-log-slower-than` µs, newest first, at most
//! `slowlog-max-len` of them, as Redis keeps them.
//!
//! keel times a command from the moment it is parsed to the moment its reply is ready, which
//! for a write is once it is durable: a slow disk shows here. (Redis times the execution only.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::resp::Reply;

/// Arguments kept per entry, and bytes kept per argument (Redis's bounds).
const ARGS_MAX: usize = 32;
const ARG_BYTES_MAX: usize = 128;

struct Entry {
    id: u64,
    at_secs: u64,
    micros: u64,
    args: Vec<Bytes>,
    addr: Arc<str>,
    name: Bytes,
}

#[derive(Default)]
pub struct SlowLog {
    entries: Mutex<VecDeque<Entry>>,
    next_id: AtomicU64,
}

impl SlowLog {
    /// Records a command that took `took`, keeping at most `max_len` entries.
    pub fn record(
        &self,
        max_len: usize,
        took: Duration,
        args: &[Bytes],
        addr: Arc<str>,
        name: Bytes,
    ) {
        let mut kept: Vec<Bytes> = (args.iter().take(ARGS_MAX))
            .enumerate()
            .map(|(i, a)| redact(args, i).unwrap_or_else(|| trim(a)))
            .collect();
        if args.len() > ARGS_MAX {
            kept[ARGS_MAX - 1] = Bytes::from(format!(
                "... ({} more arguments)",
                args.len() - ARGS_MAX + 1
            ));
        }
        let entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            at_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            micros: took.as_micros() as u64,
            args: kept,
            addr,
            name,
        };
        let mut e = crate::lock(&self.entries);
        e.push_front(entry);
        e.truncate(max_len);
    }

    /// `SLOWLOG GET [count] | LEN | RESET`.
    pub fn command(&self, args: &[Bytes]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_lowercase();
        let mut e = crate::lock(&self.entries);
        match (sub.as_str(), args.len()) {
            ("len", 2) => Reply::Int(e.len() as i64),
            ("reset", 2) => {
                e.clear();
                Reply::ok()
            }
            ("get", 2 | 3) => {
                let count = match args.get(2).map(|c| crate::resp::parse_i64(c)) {
                    None => 10,
                    Some(Some(-1)) => e.len(),
                    Some(Some(n)) if n >= 0 => n as usize,
                    Some(_) => {
                        return Reply::err("ERR count should be greater than or equal to -1")
                    }
                };
                Reply::Array(e.iter().take(count).map(Entry::reply).collect())
            }
            ("len" | "reset" | "get", _) => crate::cmd::wrong_args(&format!("slowlog|{sub}")),
            _ => Reply::err(format!(
                "ERR unknown subcommand '{}'. Try SLOWLOG HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }
}

impl Entry {
    fn reply(&self) -> Reply {
        Reply::Array(vec![
            Reply::Int(self.id as i64),
            Reply::Int(self.at_secs as i64),
            Reply::Int(self.micros as i64),
            Reply::Array(self.args.iter().cloned().map(Reply::Bulk).collect()),
            Reply::bulk(self.addr.to_string()),
            Reply::Bulk(self.name.clone()),
        ])
    }
}

fn trim(a: &Bytes) -> Bytes {
    // A copy, not a slice: a slice would keep its request's every argument alive.
    if a.len() <= ARG_BYTES_MAX {
        return Bytes::copy_from_slice(a);
    }
    let mut t = a[..ARG_BYTES_MAX].to_vec();
    t.extend_from_slice(format!("... ({} more bytes)", a.len() - ARG_BYTES_MAX).as_bytes());
    t.into()
}

/// `(redacted)` in place of a secret: a password given to AUTH, HELLO … AUTH or CONFIG SET
/// requirepass/masterauth, every argument of ACL SETUSER (its rules can hold `>password`; keel
/// refuses it, but it is logged before it is refused), and the same in a command ACL DRYRUN
/// names. Secrets never reach the slow log (P14).
pub(crate) fn redact(args: &[Bytes], i: usize) -> Option<Bytes> {
    let is = |j: usize, s: &str| {
        args.get(j)
            .is_some_and(|a| a.eq_ignore_ascii_case(s.as_bytes()))
    };
    let secret = (is(0, "auth") && i >= 1)
        || (is(0, "hello")
            && (3..)
                .step_by(3)
                .take_while(|&j| j < args.len())
                .any(|j| is(j - 1, "auth") && (i == j || i == j + 1)))
        || (is(0, "config")
            && is(1, "set")
            && i >= 3
            && i % 2 == 1
            && (is(i - 1, "requirepass") || is(i - 1, "masterauth")))
        || (is(0, "acl") && is(1, "setuser") && i >= 2)
        || (is(0, "acl") && is(1, "dryrun") && i >= 3 && redact(&args[3..], i - 3).is_some());
    secret.then(|| Bytes::from_static(b"(redacted)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[&str]) -> Vec<Bytes> {
        s.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn logged(args: &[&str]) -> Vec<Bytes> {
        let log = SlowLog::default();
        log.record(10, Duration::ZERO, &b(args), "a".into(), Bytes::new());
        let e = log.entries.lock().unwrap();
        e[0].args.clone()
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            logged(&["AUTH", "u", "p"]),
            b(&["AUTH", "(redacted)", "(redacted)"])
        );
        assert_eq!(
            logged(&["hello", "3", "auth", "u", "p", "setname", "n"]),
            b(&[
                "hello",
                "3",
                "auth",
                "(redacted)",
                "(redacted)",
                "setname",
                "n"
            ])
        );
        assert_eq!(
            logged(&["config", "set", "requirepass", "x", "maxclients", "5"]),
            b(&[
                "config",
                "set",
                "requirepass",
                "(redacted)",
                "maxclients",
                "5"
            ])
        );
    }

    #[test]
    fn acl_secrets_are_redacted() {
        assert_eq!(
            logged(&["acl", "setuser", "u", "on", ">pw"]),
            b(&["acl", "setuser", "(redacted)", "(redacted)", "(redacted)"])
        );
        assert_eq!(
            logged(&["ACL", "DRYRUN", "u", "AUTH", "v", "pw"]),
            b(&["ACL", "DRYRUN", "u", "AUTH", "(redacted)", "(redacted)"])
        );
        assert_eq!(
            logged(&["acl", "dryrun", "u", "get", "k"]),
            b(&["acl", "dryrun", "u", "get", "k"])
        );
    }

    #[test]
    fn long_commands_are_cut_as_redis_cuts_them() {
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let a = logged(&many);
        assert_eq!(a.len(), 32);
        assert_eq!(a[31], "... (9 more arguments)");
        let long = "x".repeat(200);
        assert_eq!(
            logged(&["set", &long])[1].len(),
            128 + "... (72 more bytes)".len()
        );
    }

    /// A request's arguments are slices of one buffer: an entry keeps copies, or a short key
    /// kept for minutes would keep the request's megabyte value with it.
    #[test]
    fn an_entry_keeps_no_slice_of_its_request() {
        let request = Bytes::from(vec![b'v'; 1 << 20]);
        let args = [
            Bytes::from_static(b"set"),
            request.slice(0..3),
            request.slice(3..),
        ];
        let log = SlowLog::default();
        log.record(10, Duration::ZERO, &args, "a".into(), Bytes::new());
        let e = log.entries.lock().unwrap();
        let (start, end) = (
            request.as_ptr() as usize,
            request.as_ptr() as usize + request.len(),
        );
        assert_eq!(e[0].args[1], "vvv");
        assert!(e[0]
            .args
            .iter()
            .all(|a| !(start..end).contains(&(a.as_ptr() as usize))));
    }

    #[test]
    fn keeps_the_newest_up_to_the_limit() {
        let log = SlowLog::default();
        for i in 0..5 {
            log.record(
                3,
                Duration::ZERO,
                &b(&["get", &i.to_string()]),
                "a".into(),
                Bytes::new(),
            );
        }
        let e = log.entries.lock().unwrap();
        assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 3, 2]);
    }
}
