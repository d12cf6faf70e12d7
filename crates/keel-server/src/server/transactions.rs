//! MULTI, EXEC, DISCARD, WATCH and UNWATCH: a transaction is one engine write (one log
//! record) guarded by the watched keys' versions, or one read of one durable state.

use super::*;

impl Conn {
    /// MULTI, DISCARD, EXEC, WATCH and UNWATCH.
    pub(super) async fn transaction_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match name {
            "multi" => {
                if self.multi.is_some() {
                    Reply::err("ERR MULTI calls can not be nested")
                } else {
                    self.multi = Some(Vec::new());
                    self.multi_touched.clear();
                    self.multi_flush = false;
                    self.multi_reads.clear();
                    self.multi_args.clear();
                    self.client.multi.store(0, Ordering::Relaxed);
                    self.multi_dirty = false;
                    Reply::ok()
                }
            }
            "discard" => match self
                .multi
                .take()
                .inspect(|_| self.client.multi.store(-1, Ordering::Relaxed))
            {
                None => Reply::err("ERR DISCARD without MULTI"),
                Some(_) => {
                    self.watched.clear();
                    Reply::ok()
                }
            },
            "exec" => {
                self.exec().await;
                return Flow::Continue;
            }
            "watch" => {
                if self.multi.is_some() {
                    Reply::err("ERR WATCH inside MULTI is not allowed")
                } else {
                    self.settle().await;
                    for k in &args[1..] {
                        let version = self.engine().read(|v| v.version(k));
                        self.watched.push(Guard {
                            key: k.clone(),
                            version,
                        });
                    }
                    Reply::ok()
                }
            }
            "unwatch" => {
                self.watched.clear();
                Reply::ok()
            }
            other => Reply::err(format!("ERR internal: no handler for '{other}'")),
        };
        self.reply(reply);
        Flow::Continue
    }

    /// EXEC refused before it could run (a busy script): the transaction is discarded, and
    /// the reply says why, as Redis's does.
    pub(super) fn exec_abort(&mut self, cause: Reply) {
        self.client.multi.store(-1, Ordering::Relaxed);
        self.multi = None;
        self.watched.clear();
        self.multi_touched.clear();
        self.multi_flush = false;
        self.multi_reads.clear();
        self.multi_args.clear();
        self.multi_dirty = false;
        let Reply::Error(e) = cause else {
            unreachable!("an abort has an error for its cause")
        };
        self.reply(Reply::err(format!(
            "EXECABORT Transaction discarded because of: {e}"
        )));
    }

    pub(super) async fn exec(&mut self) {
        self.client.multi.store(-1, Ordering::Relaxed);
        let Some(parts) = self.multi.take() else {
            self.reply(Reply::err("ERR EXEC without MULTI"));
            return;
        };
        let watched = std::mem::take(&mut self.watched);
        let touched = std::mem::take(&mut self.multi_touched);
        let flush = std::mem::take(&mut self.multi_flush);
        let reads = std::mem::take(&mut self.multi_reads);
        let queued_args = std::mem::take(&mut self.multi_args);
        if std::mem::take(&mut self.multi_dirty) {
            self.reply(Reply::err(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
            return;
        }
        // Maintenance turned on after the writes were queued: none of them runs.
        if !parts.iter().all(Part::read_only) {
            if let Some(m) = maintenance::current(&self.engine()) {
                self.reply(m.refusal());
                return;
            }
        }
        if parts.iter().all(Part::read_only) {
            // Nothing to write: answer from one durable snapshot, checking WATCH against it.
            self.settle().await;
            // The reads are copied out under the read lock; the replies render after it.
            let results = self.engine().read(|v| {
                let changed = watched.iter().any(|g| v.version(&g.key) != g.version);
                (!changed).then(|| {
                    parts
                        .iter()
                        .map(|p| eval_reads(&self.sh, v, &p.writes))
                        .collect::<Vec<_>>()
                })
            });
            let Some(results) = results else {
                self.reply(Reply::NilArray);
                return;
            };
            let replies = parts
                .into_iter()
                .zip(results)
                .map(|(p, mut r)| (p.render)(Some(&mut r)))
                .collect();
            self.reply(Reply::Array(replies));
            for args in reads {
                self.track_read(&args);
            }
            return;
        }
        if parts.iter().any(|p| p.script.is_some()) {
            let touched = Touched::new(touched, flush, self.client.id);
            self.exec_scripted(parts, queued_args, watched, touched)
                .await;
            for args in reads {
                self.track_read(&args);
            }
            return;
        }
        // One engine transaction: one WAL record, WATCH versions as its guards.
        let mut writes = Vec::new();
        let mut renders = Vec::with_capacity(parts.len());
        let mut commands = Vec::new();
        for (p, args) in parts.into_iter().zip(queued_args) {
            let n = p.writes.len();
            if let Some(args) = args {
                commands.push((args, writes.len() as u32));
            }
            writes.extend(p.writes);
            renders.push((n, p.render));
        }
        let render: cmd::Render = Box::new(move |results| {
            let Some(results) = results else {
                return Reply::NilArray;
            };
            let mut at = 0;
            let mut replies = Vec::with_capacity(renders.len());
            for (n, r) in renders {
                replies.push(r(Some(&mut results[at..at + n])));
                at += n;
            }
            Reply::Array(replies)
        });
        self.touched = Touched::new(touched, flush, self.client.id).commands(commands);
        self.submit(None, watched, writes, render);
        for args in reads {
            self.track_read(&args);
        }
    }
}
