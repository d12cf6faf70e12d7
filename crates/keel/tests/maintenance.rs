//! Maintenance mode against a real `keel serve`: KEEL.MAINTENANCE ON refuses every write with
//! `-MAINTENANCE <reason>` while reads, INFO, the metrics, checkpoints and backups go on; the
//! mode survives kill -9; OFF takes writes again. Needs admin permission.

mod common;

use common::{hash_password, http, metrics_port, Server};
use redis::Value;

/// The error code and text a command got, or `None` if it succeeded.
fn refusal(c: &mut redis::Connection, args: &[&str]) -> Option<String> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(c) {
        Ok(Value::ServerError(e)) => Some(format!("{} {}", e.code(), e.details().unwrap_or(""))),
        Ok(_) => None,
        Err(e) => Some(format!(
            "{} {}",
            e.code().unwrap_or("?"),
            e.detail().unwrap_or("")
        )),
    }
}

fn info_field(c: &mut redis::Connection, name: &str) -> String {
    let info: String = redis::cmd("INFO").arg("keel").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} missing from INFO keel"))
        .trim()
        .to_string()
}

const WRITES: &[&[&str]] = &[
    &["SET", "a", "2"],
    &["INCR", "n"],
    &["DEL", "a"],
    &["EXPIRE", "a", "100"],
    &["FLUSHALL"],
    &["KEEL.IDEM", "req-1", "SET", "a", "3"],
    &["GETSET", "a", "4"],
];

#[test]
fn maintenance_refuses_writes_serves_reads_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path(), &["--metrics-port", "0"]);
    let mut c = srv.client();
    redis::cmd("SET")
        .arg("a")
        .arg("1")
        .query::<()>(&mut c)
        .unwrap();
    // A transaction queued before the mode is turned on.
    let mut queued = srv.client();
    redis::cmd("MULTI").query::<()>(&mut queued).unwrap();
    redis::cmd("SET")
        .arg("q")
        .arg("1")
        .query::<()>(&mut queued)
        .unwrap();

    let ok: String = redis::cmd("KEEL.MAINTENANCE")
        .arg("ON")
        .arg("moving racks")
        .query(&mut c)
        .unwrap();
    assert_eq!(ok, "OK");
    let check_on = |srv: &Server, c: &mut redis::Connection| {
        for w in WRITES {
            assert_eq!(
                refusal(c, w).as_deref(),
                Some("MAINTENANCE moving racks"),
                "{w:?}"
            );
        }
        // Reads, INFO and the metrics go on.
        let a: String = redis::cmd("GET").arg("a").query(c).unwrap();
        assert_eq!(a, "1");
        assert_eq!(info_field(c, "maintenance"), "1");
        assert_eq!(info_field(c, "maintenance_reason"), "moving racks");
        let metrics = http(metrics_port(srv), b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(metrics.contains("\nkeel_maintenance 1\n"), "{metrics}");
        let status: Vec<Value> = redis::cmd("KEEL.MAINTENANCE")
            .arg("STATUS")
            .query(c)
            .unwrap();
        assert_eq!(status[1], Value::Int(1), "{status:?}");
    };
    check_on(&srv, &mut c);
    // A write inside MULTI is refused as it is queued, and the EXEC aborts.
    redis::cmd("MULTI").query::<()>(&mut c).unwrap();
    assert!(refusal(&mut c, &["SET", "b", "1"]).is_some_and(|e| e.starts_with("MAINTENANCE")));
    assert!(refusal(&mut c, &["EXEC"]).is_some_and(|e| e.starts_with("EXECABORT")));
    // The transaction queued before: its EXEC runs none of its writes.
    assert_eq!(
        refusal(&mut queued, &["EXEC"]).as_deref(),
        Some("MAINTENANCE moving racks")
    );
    // Checkpoints and backups go on.
    redis::cmd("SAVE").query::<()>(&mut c).unwrap();
    let backup = dir.path().join("backup");
    redis::cmd("KEEL.BACKUP")
        .arg(backup.to_str().unwrap())
        .query::<i64>(&mut c)
        .unwrap();
    assert!(backup.join("MANIFEST").exists());

    // Durable: kill -9 and start again, still on.
    drop((c, queued));
    srv.kill9();
    let srv = Server::start(dir.path(), &["--metrics-port", "0"]);
    let mut c = srv.client();
    check_on(&srv, &mut c);

    let ok: String = redis::cmd("KEEL.MAINTENANCE")
        .arg("OFF")
        .query(&mut c)
        .unwrap();
    assert_eq!(ok, "OK");
    redis::cmd("SET")
        .arg("a")
        .arg("5")
        .query::<()>(&mut c)
        .unwrap();
    assert_eq!(info_field(&mut c, "maintenance"), "0");
    drop(c);
    srv.kill9();
    let srv = Server::start(dir.path(), &[]);
    let mut c = srv.client();
    assert_eq!(
        refusal(&mut c, &["SET", "a", "6"]),
        None,
        "off survives too"
    );
    let q: Option<String> = redis::cmd("GET").arg("q").query(&mut c).unwrap();
    assert_eq!(q, None, "the EXEC refused under maintenance wrote nothing");
}

#[test]
fn maintenance_needs_admin_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "requirepass = \"root-pw\"\n\n\
             [[users]]\nname = \"app\"\npassword_sha256 = \"{}\"\npermissions = [\"read\", \"write\"]\n",
            hash_password(&[], "app-pw").trim()
        ),
    )
    .unwrap();
    let srv = Server::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let login = |user: &str, pw: &str| {
        let mut c = srv.client();
        redis::cmd("AUTH")
            .arg(user)
            .arg(pw)
            .query::<()>(&mut c)
            .unwrap();
        c
    };
    let mut app = login("app", "app-pw");
    let e = refusal(&mut app, &["KEEL.MAINTENANCE", "ON"]).unwrap();
    assert!(e.starts_with("NOPERM"), "{e}");
    let mut root = login("default", "root-pw");
    for (args, want) in [
        (
            &["KEEL.MAINTENANCE", "ON", "two\nlines"][..],
            "ERR the reason",
        ),
        (&["KEEL.MAINTENANCE", "ON", "a", "b"], "ERR wrong number"),
        (&["KEEL.MAINTENANCE", "SIDEWAYS"], "ERR unknown subcommand"),
    ] {
        let e = refusal(&mut root, args).unwrap();
        assert!(e.starts_with(want), "{args:?}: {e}");
    }
    let help: Vec<String> = redis::cmd("KEEL.MAINTENANCE")
        .arg("HELP")
        .query(&mut root)
        .unwrap();
    assert!(help.iter().any(|l| l.starts_with("ON ")), "{help:?}");
    // ON without a reason names one; the app user's writes are refused with it, reads go on.
    redis::cmd("KEEL.MAINTENANCE")
        .arg("ON")
        .query::<()>(&mut root)
        .unwrap();
    let e = refusal(&mut app, &["SET", "k", "v"]).unwrap();
    assert_eq!(e, "MAINTENANCE maintenance mode is on; writes are refused");
    assert_eq!(refusal(&mut app, &["GET", "k"]), None);
}
