//! The audit log against a real `keel serve --audit`: logins, refusals and admin commands are
//! recorded with user and address and never a password; an admin command's entry is durable
//! before its reply (kill -9 right after FLUSHALL keeps it); `keel audit verify` passes the
//! chain, and catches an edited, removed, reordered or cut entry, naming the first bad one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{hash_password, Server};

const ROOT_PW: &str = "root-pw-Zq81";
const APP_PW: &str = "app-pw-Yt72";

fn keel(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn audit_lines(data: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn entries(data: &Path) -> Vec<serde_json::Value> {
    audit_lines(data)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn logins_refusals_and_admin_commands_are_on_record_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "requirepass = \"{ROOT_PW}\"\naudit = true\n\n\
             [[users]]\nname = \"app\"\npassword_sha256 = \"{}\"\npermissions = [\"read\", \"write\"]\n",
            hash_password(&[], APP_PW).trim()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let srv = Server::start(&data, &args);
    let mut c = srv.client();
    let wrong = redis::cmd("AUTH")
        .arg("app")
        .arg("not-it")
        .query::<()>(&mut c);
    assert!(wrong.is_err());
    // A password typed where the user name goes is not recorded as a name.
    let swapped = redis::cmd("AUTH")
        .arg(ROOT_PW)
        .arg("app")
        .query::<()>(&mut c);
    assert!(swapped.is_err());
    redis::cmd("AUTH")
        .arg("app")
        .arg(APP_PW)
        .query::<()>(&mut c)
        .unwrap();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut c)
        .unwrap();
    let denied = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query::<()>(&mut c);
    assert!(denied.is_err());
    let mut root = srv.client();
    redis::cmd("AUTH")
        .arg(ROOT_PW)
        .query::<()>(&mut root)
        .unwrap();
    redis::cmd("FLUSHALL").query::<()>(&mut root).unwrap();
    let info: String = redis::cmd("INFO").arg("keel").query(&mut root).unwrap();
    for want in [
        "audit:1\r\n",
        "audit_write_failures:0\r\n",
        "audit_dropped:0\r\n",
    ] {
        assert!(info.contains(want), "{want} not in {info}");
    }
    assert!(!info.contains("audit_seq:0\r\n"), "{info}");
    // Its entry was synced before the reply: a kill -9 now cannot take it.
    srv.kill9();

    let e = entries(&data);
    let find = |event: &str, extra: &dyn Fn(&serde_json::Value) -> bool| {
        e.iter().any(|x| x["event"] == event && extra(x))
    };
    assert!(find("start", &|_| true), "{e:?}");
    assert!(find("recovery", &|_| true), "{e:?}");
    assert!(find("auth", &|x| x["user"] == "app" && x["ok"] == false));
    assert!(find("auth", &|x| x["user"] == "(unknown)" && x["ok"] == false));
    assert!(find("auth", &|x| x["user"] == "app"
        && x["ok"] == true
        && x["addr"].as_str().unwrap().starts_with("127.0.0.1:")));
    assert!(find("denied", &|x| x["user"] == "app"
        && x["command"] == "config|get"));
    assert!(find("admin", &|x| x["user"] == "default"
        && x["command"] == "flushall"));
    assert!(
        !find("admin", &|x| x["command"] == "set"),
        "SET is no admin command"
    );

    // Restarted: the chain continues; a clean stop anchors its last entry in the database.
    let srv = Server::start(&data, &args);
    let mut root = srv.client();
    redis::cmd("AUTH")
        .arg(ROOT_PW)
        .query::<()>(&mut root)
        .unwrap();
    redis::cmd("SAVE").query::<()>(&mut root).unwrap();
    assert_eq!(srv.sigterm().code(), Some(0));
    let text = audit_lines(&data).join("\n");
    for secret in [ROOT_PW, APP_PW, "not-it", hash_password(&[], APP_PW).trim()] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }
    let e = entries(&data);
    assert_eq!(e.last().unwrap()["event"], "stop");
    for (i, x) in e.iter().enumerate() {
        assert_eq!(x["seq"], i as u64 + 1);
    }
    let d = data.to_str().unwrap();
    let (code, out) = keel(&["audit", "verify", d]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("intact") && out.contains(&format!("head at seq {}", e.len())),
        "{out}"
    );
    let (code, out) = keel(&["audit", "show", d, "--since", "0"]);
    assert_eq!((code, out.lines().count()), (0, e.len()), "{out}");

    // Each kind of tampering, on a copy, is caught and the first bad entry named.
    let lines = audit_lines(&data);
    let file = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let n = lines.len();
    // The first entry that names the app user: changing it breaks the next entry's prev.
    let edit = lines.iter().position(|l| l.contains("\"app\"")).unwrap();
    let edited_msg = format!("seq {}: prev does not match", edit + 2);
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "edited",
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i == edit {
                        l.replace("\"app\"", "\"eve\"")
                    } else {
                        l.clone()
                    }
                })
                .collect(),
            &edited_msg,
        ),
        (
            "removed",
            [&lines[..3], &lines[4..]].concat(),
            "seq 5 follows seq 3",
        ),
        (
            "reordered",
            [
                &lines[..3],
                &[lines[4].clone(), lines[3].clone()],
                &lines[5..],
            ]
            .concat(),
            "seq 5 follows seq 3",
        ),
        ("cut", lines[..n - 2].to_vec(), "cut from the end"),
    ];
    for (what, edited, want) in cases {
        std::fs::write(&file, edited.join("\n") + "\n").unwrap();
        let (code, out) = keel(&["audit", "verify", d]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(
            out.contains("TAMPERED") && out.contains(want),
            "{what}: {out}"
        );
    }
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    assert_eq!(keel(&["audit", "verify", d]).0, 0);
}

/// A full disk: the audit log cannot grow, so admin commands are refused with an error that
/// says why, while logins and writes go on (the log's segments are allocated ahead). Once there
/// is room again, admin commands work without a restart and the chain is unbroken.
#[test]
fn a_full_disk_refuses_admin_commands_until_there_is_room_again() {
    use common::loopfs::{fill, run, LoopFs};
    let t = tempfile::Builder::new()
        .prefix("keel-audit-full-")
        .tempdir()
        .unwrap();
    let fs = match LoopFs::mount(t.path(), 160 << 20) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let data = fs.mnt.join("data");
    let ballast = fs.mnt.join("ballast");
    let srv = Server::start(&data, &["--audit"]);
    let mut c = srv.client();
    redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query::<redis::Value>(&mut c)
        .unwrap();

    assert!(fill(&ballast) > 0);
    // Enough entries to need a new block of the audit file.
    let mut refused = None;
    for _ in 0..200 {
        match redis::cmd("CONFIG")
            .arg("GET")
            .arg("port")
            .query::<redis::Value>(&mut c)
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let e = refused.expect("an admin command is refused once the audit log cannot grow");
    for part in [
        "audit log cannot be written",
        "No space left on device",
        "refused",
    ] {
        assert!(e.contains(part), "the error names {part:?}: {e}");
    }
    // Writes and reads go on.
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut c)
        .unwrap();
    let info: String = redis::cmd("INFO").arg("keel").query(&mut c).unwrap();
    assert!(!info.contains("audit_write_failures:0\r\n"), "{info}");

    std::fs::remove_file(&ballast).unwrap();
    run("sync", &["-f", fs.mnt.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ok = redis::cmd("CONFIG")
            .arg("GET")
            .arg("port")
            .query::<redis::Value>(&mut c);
        if ok.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {ok:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(srv.sigterm().code(), Some(0));
    let (code, out) = keel(&["audit", "verify", data.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

/// Bad audit settings, and an audit directory that cannot be one, stop the server at start-up
/// with an error that names them.
#[test]
fn bad_audit_settings_stop_the_server_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let refused = |args: &[&str]| match Server::try_start(&data, args) {
        Ok(_) => panic!("started with {args:?}"),
        Err((status, log)) => (status.and_then(|s| s.code()), log.join("\n")),
    };
    for (text, want) in [
        ("audit = true\naudit_files_max = 0\n", "audit_files_max"),
        (
            "audit = true\naudit_file_bytes_max = 10\n",
            "audit_file_bytes_max",
        ),
        ("audit = \"yes\"\n", "audit"),
    ] {
        let config = dir.path().join("keel.toml");
        std::fs::write(&config, text).unwrap();
        let (code, log) = refused(&["--config", config.to_str().unwrap()]);
        assert_eq!(code, Some(3), "{log}");
        assert!(log.contains(want), "{text:?}: {log}");
    }
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("audit"), b"not a directory").unwrap();
    let (code, log) = refused(&["--audit"]);
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("audit log") && log.contains("audit"), "{log}");
}
