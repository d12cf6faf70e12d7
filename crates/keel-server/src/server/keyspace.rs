//! Reads over the keyspace that are longer than a key's: KEYS, SCAN, RANDOMKEY, DBSIZE, and
//! a key's metadata (OBJECT, MEMORY USAGE, KEEL.VERSION).

use super::*;

impl Conn {
    /// DBSIZE, KEYS, SCAN, RANDOMKEY, MEMORY, OBJECT and KEEL.VERSION.
    pub(super) async fn keyspace_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match name {
            "dbsize" => {
                self.settle().await;
                // As Redis counts: every key held, in O(1), expired keys that active expiry has
                // not removed yet (within about 100 ms) included.
                Reply::Int(self.engine().read(|v| v.held()) as i64)
            }
            "keys" => {
                self.settle().await;
                let pat = &args[1];
                // One read: KEYS sees one state, as Redis's blocks its server while it runs.
                let keys: Vec<Reply> = self.engine().read(|v| {
                    if glob::literal_prefix(pat).len() == pat.len() {
                        // No wildcard: one lookup instead of a pass over every key.
                        return (v.version(pat).map(|_| Reply::Bulk(pat.clone())))
                            .into_iter()
                            .collect();
                    }
                    (v.keys())
                        .filter(|k| glob::matches(pat, k))
                        .map(|k| Reply::Bulk(Bytes::copy_from_slice(k)))
                        .collect()
                });
                Reply::Array(keys)
            }
            "scan" => {
                self.settle().await;
                self.scan(&args)
            }
            "randomkey" => {
                self.settle().await;
                // From a random place in the keys' hash order: the first live key there, going
                // round to the start once. Keys after a large gap come up more often; Redis's
                // choice is not uniform either.
                let start = cmd::random();
                let key = self.engine().read(|v| {
                    let (mut cursor, mut wrapped) = (start, false);
                    loop {
                        let (keys, next) = v.scan_keys(cursor, 1);
                        if let Some(k) = keys.into_iter().next() {
                            return Some(k);
                        }
                        if next == 0 {
                            if wrapped {
                                return None;
                            }
                            wrapped = true;
                        }
                        cursor = next;
                    }
                });
                key.map_or(Reply::Nil, Reply::Bulk)
            }
            // A checkpoint (snapshot, manifest, prune) on a blocking thread: it can take seconds.
            "memory" => {
                let sub = lower(&args[1]);
                let samples_ok = |a: &[Bytes]| match a {
                    [] => Ok(()),
                    [o, n] if eq(o, "samples") => {
                        parse_i64(n).map(|_| ()).ok_or(Reply::err(NOT_INT))
                    }
                    _ => Err(Reply::err(SYNTAX)),
                };
                match sub.as_str() {
                    "usage" if args.len() >= 3 => match samples_ok(&args[3..]) {
                        Err(e) => e,
                        Ok(()) => {
                            self.settle().await;
                            let n = self.engine().read(|v| v.memory_usage(&args[2]));
                            n.map_or(Reply::Nil, |n| Reply::Int(n as i64))
                        }
                    },
                    "usage" => cmd::wrong_args("memory|usage"),
                    "purge" if args.len() == 2 => {
                        tokio::task::spawn_blocking(crate::server::trim_allocator)
                            .await
                            .ok();
                        Reply::ok()
                    }
                    "purge" => cmd::wrong_args("memory|purge"),
                    _ => unknown_subcommand(&args[1], "MEMORY"),
                }
            }
            "object" => {
                self.settle().await;
                let sub = lower(&args[1]);
                match (sub.as_str(), args.len()) {
                    ("encoding", 3) => self
                        .engine()
                        .read(|v| v.encoding(&args[2]))
                        .map_or(Reply::Nil, Reply::bulk),
                    ("refcount", 3) => match self.engine().read(|v| v.version(&args[2])) {
                        Some(_) => Reply::Int(1),
                        None => Reply::Nil,
                    },
                    ("freq" | "idletime", 3) => match self.engine().read(|v| v.version(&args[2])) {
                        Some(_) => Reply::err(format!(
                            "ERR keel does not track access {}: it evicts nothing, so it needs \
                             neither LRU nor LFU data",
                            if sub == "freq" { "frequency" } else { "times" }
                        )),
                        None => Reply::Nil,
                    },
                    ("encoding" | "refcount" | "freq" | "idletime" | "help", _) => {
                        cmd::wrong_args(&format!("object|{sub}"))
                    }
                    _ => unknown_subcommand(&args[1], "OBJECT"),
                }
            }
            "keel.version" => {
                self.settle().await;
                match self.engine().read(|v| v.version(&args[1])) {
                    Some(version) => Reply::Int(version as i64),
                    None => Reply::Nil,
                }
            }
            other => Reply::err(format!("ERR internal: no handler for '{other}'")),
        };
        self.reply(reply);
        Flow::Continue
    }

    pub(super) fn scan(&self, args: &[Bytes]) -> Reply {
        let Some(cursor) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Reply::err("ERR invalid cursor");
        };
        let mut pattern: Option<&Bytes> = None;
        let mut count = 10usize;
        let mut kind: Option<String> = None;
        let mut i = 2;
        while i < args.len() {
            if i + 1 >= args.len() {
                return Reply::err(SYNTAX);
            }
            if eq(&args[i], "match") {
                pattern = Some(&args[i + 1]);
            } else if eq(&args[i], "count") {
                match parse_i64(&args[i + 1]) {
                    Some(c) if c >= 1 => count = (c as usize).min(100_000),
                    Some(_) => return Reply::err(SYNTAX),
                    None => return Reply::err(NOT_INT),
                }
            } else if eq(&args[i], "type") {
                kind = Some(lower(&args[i + 1]));
            } else {
                return Reply::err(SYNTAX);
            }
            i += 2;
        }
        // The cursor is a position in hash order: it holds no state, so any number is valid
        // (a made-up one starts the scan part-way).
        let (page, next) = self.engine().read(|v| {
            let (page, next) = v.scan_keys(cursor, count);
            let page: Vec<Bytes> = (page.into_iter())
                .filter(|k| kind.as_deref().is_none_or(|t| v.kind(k) == Some(t)))
                .collect();
            (page, next)
        });
        let keys = page
            .into_iter()
            .filter(|k| pattern.is_none_or(|p| glob::matches(p, k)))
            .map(Reply::Bulk)
            .collect();
        Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
    }
}
