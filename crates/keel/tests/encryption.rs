//! Encryption at rest against a real `keel serve` and the real `keel` CLI: no value readable in
//! any file of the data directory or a backup; a missing, wrong or badly kept key refused as a
//! key problem that changes nothing; rotation across a restart, `keel rekey` and `keel verify`;
//! restore and the log tools with the key.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::files::{keel, text};
use common::Server;

fn all_files(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else if p.file_name().is_some_and(|n| n != "LOCK") {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
}

fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    all_files(dir, &mut m);
    m
}

/// Fails naming the file if any file under `dir` holds `needle`.
fn assert_nowhere(dir: &Path, needle: &[u8]) {
    let f = files(dir);
    assert!(!f.is_empty());
    for (p, b) in f {
        assert!(
            !b.windows(needle.len()).any(|w| w == needle),
            "{} holds {:?} in plaintext",
            p.display(),
            String::from_utf8_lossy(needle)
        );
    }
}

fn keygen(id: u32) -> String {
    let o = keel(&["keygen", "--id", &id.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    let line = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(line.starts_with(&format!("{id} ")) && line.len() == id.to_string().len() + 65);
    line
}

fn write_keys(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn secret(i: usize) -> String {
    format!("TOPSECRET-{i:05}-payload")
}

fn set_secrets(srv: &Server, range: std::ops::Range<usize>) {
    let mut c = srv.client();
    for i in range {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(secret(i))
            .query(&mut c)
            .unwrap();
    }
}

fn assert_secrets(srv: &Server, range: std::ops::Range<usize>) {
    let mut c = srv.client();
    for i in range {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v.as_deref(), Some(&*secret(i)), "k{i}");
    }
}

#[test]
fn an_encrypted_database_and_its_backup_hold_no_value_in_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys, backup) = (
        tmp.path().join("db"),
        tmp.path().join("keys"),
        tmp.path().join("backup"),
    );
    write_keys(&keys, &[&keygen(1)]);
    let key_arg = ["--encryption-key-file", keys.to_str().unwrap()];
    let srv = Server::start(&dir, &[key_arg[0], key_arg[1], "--audit"]);
    set_secrets(&srv, 0..300);
    let mut c = srv.client();
    let _: () = redis::cmd("SAVE").query(&mut c).unwrap();
    set_secrets(&srv, 300..600);
    let _: () = redis::cmd("KEEL.BACKUP")
        .arg(backup.to_str().unwrap())
        .query(&mut c)
        .unwrap();
    srv.kill9();
    assert_nowhere(&dir, b"TOPSECRET");
    assert_nowhere(&backup, b"TOPSECRET");
    // The audit log is sealed too: no entry's JSON on disk, and reading it needs the key.
    assert_nowhere(&dir.join("audit"), b"\"event\"");
    let o = keel(&["audit", "verify", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no encryption key"), "{}", text(&o));
    let o = keel(&[
        "audit",
        "verify",
        dir.to_str().unwrap(),
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && text(&o).contains("intact"),
        "{}",
        text(&o)
    );
    let o = keel(&[
        "audit",
        "show",
        dir.to_str().unwrap(),
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    assert!(text(&o).contains("\"command\":\"save\""), "{}", text(&o));
    // The backup opens with the key, and so does the database after kill -9.
    let b = Server::start(&backup, &key_arg);
    assert_secrets(&b, 0..600);
    b.sigterm();
    let srv = Server::start(&dir, &key_arg);
    assert_secrets(&srv, 0..600);
    srv.sigterm();
    // The log's checksums need no key; reading records does.
    let wal = dir.join("wal");
    let o = keel(&["wal", "verify", wal.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("key ids in use: 1; plaintext segments: 0"),
        "{}",
        text(&o)
    );
    let o = keel(&["wal", "dump", wal.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("key"),
        "{}",
        text(&o)
    );
    let o = keel(&[
        "wal",
        "dump",
        wal.to_str().unwrap(),
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = keel(&["verify", dir.to_str().unwrap()]);
    assert!(
        o.status.success() && text(&o).contains("key ids in use: 1; plaintext files: 0"),
        "{}",
        text(&o)
    );
    // Point-in-time restore with the key: encrypted too.
    let restored = tmp.path().join("restored");
    let o = keel(&[
        "restore",
        "--source",
        dir.to_str().unwrap(),
        "--target",
        restored.to_str().unwrap(),
        "--latest",
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_nowhere(&restored, b"TOPSECRET");
    let r = Server::start(&restored, &key_arg);
    assert_secrets(&r, 0..600);
    r.sigterm();
}

#[test]
fn a_missing_wrong_or_badly_kept_key_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = (tmp.path().join("db"), tmp.path().join("keys"));
    write_keys(&keys, &[&keygen(7)]);
    let srv = Server::start(&dir, &["--encryption-key-file", keys.to_str().unwrap()]);
    set_secrets(&srv, 0..50);
    srv.kill9();
    let before = files(&dir);

    let wrong = tmp.path().join("wrong");
    let other_line = keygen(7);
    write_keys(&wrong, &[&other_line]);
    let unknown = tmp.path().join("unknown");
    write_keys(&unknown, &[&keygen(8)]);
    for (args, want) in [
        (vec![], "no encryption key was given"),
        (
            vec!["--encryption-key-file", wrong.to_str().unwrap()],
            "does not decrypt with key id 7",
        ),
        (
            vec!["--encryption-key-file", unknown.to_str().unwrap()],
            "key id 7, which is not in the encryption keyring",
        ),
    ] {
        let (status, log) = Server::try_start(&dir, &args).err().expect("refused");
        let log = log.join("\n");
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
        assert!(log.contains(want), "{args:?}: {log}");
        assert!(!log.to_lowercase().contains("corrupt"), "{log}");
        assert_eq!(files(&dir), before, "{args:?} changed the data directory");
    }
    // Readable by others: refused, naming the mode.
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, log) = Server::try_start(&dir, &["--encryption-key-file", keys.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(log.join("\n").contains("mode 0644"), "{log:?}");
    // Inside the data directory: refused.
    let inside = dir.join("keys");
    write_keys(&inside, &[&other_line]);
    let (_, log) = Server::try_start(&dir, &["--encryption-key-file", inside.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(
        log.join("\n").contains("inside the data directory"),
        "{log:?}"
    );
    std::fs::remove_file(&inside).unwrap();
    assert_eq!(files(&dir), before);
    // The environment variable works as the flag does...
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let srv = Server::start_env(
        &dir,
        &[],
        &[("KEEL_ENCRYPTION_KEY_FILE", keys.to_str().unwrap())],
    );
    assert_secrets(&srv, 0..50);
    srv.sigterm();
    // So does the config file's key.
    let config = tmp.path().join("keel.toml");
    std::fs::write(
        &config,
        format!("encryption_key_file = {:?}\n", keys.to_str().unwrap()),
    )
    .unwrap();
    let srv = Server::start(&dir, &["--config", config.to_str().unwrap()]);
    assert_secrets(&srv, 0..50);
    srv.sigterm();
}

#[test]
fn rotation_across_a_restart_then_rekey_retires_the_old_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, keys) = (tmp.path().join("db"), tmp.path().join("keys"));
    // Start unencrypted: switching encryption on later is a rotation from "no key".
    let srv = Server::start(&dir, &[]);
    set_secrets(&srv, 0..100);
    srv.sigterm();
    let (k1, k2) = (keygen(1), keygen(2));
    write_keys(&keys, &[&k1]);
    let key_arg = ["--encryption-key-file", keys.to_str().unwrap()];
    let srv = Server::start(&dir, &key_arg);
    set_secrets(&srv, 100..200);
    srv.sigterm();
    write_keys(&keys, &[&k2, &k1]);
    let srv = Server::start(&dir, &key_arg);
    assert_secrets(&srv, 0..200);
    set_secrets(&srv, 200..300);
    srv.sigterm();
    let o = keel(&[
        "verify",
        dir.to_str().unwrap(),
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(
        t.contains("key ids in use: 1, 2; plaintext files: 1"),
        "{t}"
    );

    let o = keel(&[
        "rekey",
        dir.to_str().unwrap(),
        "--encryption-key-file",
        keys.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("key ids in use: 2; plaintext files: 0"), "{t}");
    assert_nowhere(&dir, b"TOPSECRET");
    // The old key's line can go now.
    write_keys(&keys, &[&k2]);
    let srv = Server::start(&dir, &key_arg);
    assert_secrets(&srv, 0..300);
    srv.sigterm();
    let o = keel(&["rekey", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
