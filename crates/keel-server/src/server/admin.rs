//! The operator's commands: COMMAND, INFO, CONFIG, SLOWLOG, LATENCY, MODULE, SHUTDOWN, checkpoints and
//! backups, maintenance mode and WAIT/WAITAOF. The cluster's are in `cluster`.

use super::*;

impl Conn {
    /// COMMAND, INFO, CONFIG, SHUTDOWN, SAVE, BGSAVE, LASTSAVE, the KEEL.* admin commands, WAITAOF and WAIT.
    pub(super) async fn admin_command(&mut self, name: &str, args: Vec<Bytes>) -> Flow {
        let reply = match name {
            "command" => cmd::introspect::command(&args),
            "acl" => self.acl(&args),
            "info" => {
                self.settle().await;
                Reply::Verbatim(self.info(&args))
            }
            "config" => config(&self.sh, &args),
            "slowlog" => self.sh.slowlog.command(&args),
            "latency" => {
                let m = &self.sh.metrics;
                crate::latency::command(&m.events, &m.histograms, &args)
            }
            "shutdown" => {
                if args.len() > 1 && args[1..].iter().any(|a| eq(a, "abort")) {
                    Reply::err("ERR No shutdown in progress.")
                } else {
                    return Flow::Shutdown;
                }
            }
            "save" | "bgsave" => {
                let engine = self.sh.engine();
                let job = tokio::task::spawn_blocking(move || engine.checkpoint());
                if name == "bgsave" {
                    Reply::Simple("Background saving started".into())
                } else {
                    match job.await {
                        Ok(Ok(_)) => Reply::ok(),
                        Ok(Err(e)) => self.sh.engine_error(&e),
                        Err(_) => Reply::err("ERR the checkpoint thread failed"),
                    }
                }
            }
            "lastsave" => {
                let at = self
                    .engine()
                    .last_checkpoint()
                    .0
                    .map(|i| i.completed_ms / 1000);
                let started = now_ms() / 1000 - self.sh.started.elapsed().as_secs();
                Reply::Int(at.unwrap_or(started) as i64)
            }
            "keel.maintenance" => {
                let sub = lower(&args[1]);
                match (sub.as_str(), args.len()) {
                    ("on", 2 | 3) => match maintenance::on(args.get(2).map(|a| &a[..]), now_ms()) {
                        Ok(m) => {
                            let w = maintenance::write(Some(&m));
                            self.submit(None, vec![], vec![w], Box::new(|_| Reply::ok()));
                            return Flow::Continue;
                        }
                        Err(r) => r,
                    },
                    ("off", 2) => {
                        let w = maintenance::write(None);
                        self.submit(None, vec![], vec![w], Box::new(|_| Reply::ok()));
                        return Flow::Continue;
                    }
                    ("status", 2) => {
                        self.settle().await;
                        maintenance::status(maintenance::current(&self.engine()).as_ref())
                    }
                    ("on" | "off" | "status" | "help", _) => cmd::wrong_args("keel.maintenance"),
                    _ => unknown_subcommand(&args[1], "KEEL.MAINTENANCE"),
                }
            }
            "module" => match (lower(&args[1]).as_str(), args.len()) {
                ("list", 2) => Reply::Array(vec![]),
                ("load" | "loadex", 3..) => Reply::err(
                    "ERR keel cannot load Redis modules: a module is C code built against Redis's internals",
                ),
                ("unload", 3) => Reply::err("ERR Error unloading module: no such module with that name"),
                ("list" | "load" | "loadex" | "unload", _) => {
                    cmd::wrong_args(&format!("module|{}", lower(&args[1])))
                }
                _ => unknown_subcommand(&args[1], "MODULE"),
            },
            "keel.backup" => {
                let engine = self.sh.engine();
                let target =
                    std::path::PathBuf::from(String::from_utf8_lossy(&args[1]).into_owned());
                match tokio::task::spawn_blocking(move || engine.backup(target)).await {
                    Ok(Ok(r)) => Reply::Int(r.lsn as i64),
                    Ok(Err(e)) => self.sh.engine_error(&e),
                    Err(_) => Reply::err("ERR the backup thread failed"),
                }
            }
            "waitaof" => match (
                parse_i64(&args[1]),
                parse_i64(&args[2]),
                parse_i64(&args[3]),
            ) {
                (Some(l), Some(r), Some(t)) if l >= 0 && r >= 0 => {
                    if t < 0 {
                        Reply::err("ERR timeout is negative")
                    } else {
                        self.settle().await;
                        let engine = self.sh.engine();
                        match tokio::task::spawn_blocking(move || engine.sync()).await {
                            Ok(Ok(_)) => Reply::Array(vec![Reply::Int(1), Reply::Int(0)]),
                            Ok(Err(e)) => self.sh.engine_error(&e),
                            Err(e) => Reply::err(format!("ERR sync task failed: {e}")),
                        }
                    }
                }
                _ => Reply::err(NOT_INT),
            },
            "wait" => match (parse_i64(&args[1]), parse_i64(&args[2])) {
                (Some(_), Some(t)) if t < 0 => Reply::err("ERR timeout is negative"),
                (Some(_), Some(_)) => Reply::Int(0),
                _ => Reply::err(NOT_INT),
            },
            other => Reply::err(format!("ERR internal: no handler for '{other}'")),
        };
        self.reply(reply);
        Flow::Continue
    }
}
