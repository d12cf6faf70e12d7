//! `keel serve` security as a real process on an ephemeral port: ACL users from the config file
//! (AUTH, HELLO AUTH, NOAUTH, WRONGPASS, NOPERM), `keel hash-password`, TLS with certificates made
//! in the test by rcgen, mutual TLS, and start-up errors for bad security settings.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

mod common;
use common::*;

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

fn noperm(user: &str, cmd: &str) -> String {
    format!("-NOPERM User {user} has no permissions to run the '{cmd}' command\r\n")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("keel.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn hash_password_prints_sha256_hex_and_generates_passwords() {
    // FIPS 180-2's "abc" vector; a trailing newline is not part of the password.
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
    assert_eq!(hash_password(&[], "abc"), abc);
    assert_eq!(hash_password(&[], "abc\n"), abc);
    assert_eq!(hash_password(&[], "abc\r\n"), abc);
    let generated = hash_password(&["--generate"], "");
    let lines: Vec<&str> = generated.lines().collect();
    assert_eq!(lines.len(), 2, "{generated}");
    assert_eq!(lines[0].len(), 64);
    assert_eq!(format!("{}\n", lines[1]), hash_password(&[], lines[0]));
    let empty = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!empty.status.success());
}

#[test]
fn acl_users_from_the_config_file() {
    let t = tempfile::tempdir().unwrap();
    let generated = hash_password(&["--generate"], "");
    let (boss_pass, boss_hash) = generated.split_once('\n').unwrap();
    let conf = write_config(
        t.path(),
        &format!(
            "requirepass = \"default-pass\"\n\n\
             [[users]]\nname = \"reader\"\npassword_sha256 = \"{}\"\npermissions = [\"read\"]\n\n\
             [[users]]\nname = \"writer\"\npassword_sha256 = \"{}\"\npermissions = [\"write\"]\n\n\
             [[users]]\nname = \"app\"\npassword_sha256 = \"{}\"\npermissions = [\"read\", \"write\"]\n\n\
             [[users]]\nname = \"boss\"\npassword_sha256 = \"{}\"\npermissions = [\"read\", \"write\", \"admin\"]\n",
            hash_password(&[], "reader-pass").trim(),
            hash_password(&[], "writer-pass").trim(),
            hash_password(&[], "app-pass").trim(),
            boss_hash.trim(),
        ),
    );
    // Debug logging, so that the check below that no password reaches the log means something.
    let srv = Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap(), "--log-level", "debug"],
    );

    // Nothing but AUTH, HELLO and QUIT before authenticating.
    let mut c = srv.raw();
    c.cmd(&["GET", "k"], NOAUTH);
    c.cmd(&["PING"], NOAUTH);
    c.cmd(&["FLUSHALL"], NOAUTH);
    c.cmd(&["AUTH", "reader", "writer-pass"], WRONGPASS);
    c.cmd(&["AUTH", "reader", "reader-pass "], WRONGPASS);
    c.cmd(&["AUTH", "nobody", "reader-pass"], WRONGPASS);
    c.cmd(&["AUTH", "reader-pass"], WRONGPASS);
    c.cmd(&["HELLO", "3", "AUTH", "reader", "wrong"], WRONGPASS);
    c.cmd(&["GET", "k"], NOAUTH);

    // requirepass is the default user's password, and the default user may do everything.
    c.cmd(&["AUTH", "default-pass"], "+OK\r\n");
    c.cmd(&["SET", "k", "v"], "+OK\r\n");
    c.cmd(
        &["CONFIG", "GET", "maxclients"],
        "*2\r\n$10\r\nmaxclients\r\n",
    );

    // read only.
    let mut r = srv.raw();
    r.cmd(&["AUTH", "reader", "reader-pass"], "+OK\r\n");
    r.cmd(&["PING"], "+PONG\r\n");
    r.cmd(&["GET", "k"], "$1\r\nv\r\n");
    r.cmd(&["EXISTS", "k"], ":1\r\n");
    r.cmd(&["SET", "k", "w"], &noperm("reader", "set"));
    r.cmd(&["DEL", "k"], &noperm("reader", "del"));
    r.cmd(
        &["KEEL.IDEM", "id1", "SET", "k", "w"],
        &noperm("reader", "keel.idem"),
    );
    r.cmd(&["FLUSHALL"], &noperm("reader", "flushall"));
    r.cmd(&["FLUSHDB"], &noperm("reader", "flushdb"));
    r.cmd(&["SHUTDOWN"], &noperm("reader", "shutdown"));
    r.cmd(&["CONFIG", "GET", "port"], &noperm("reader", "config|get"));
    // A denied command inside MULTI aborts the transaction, as in Redis.
    r.cmd(&["MULTI"], "+OK\r\n");
    r.cmd(&["GET", "k"], "+QUEUED\r\n");
    r.cmd(&["SET", "k", "w"], &noperm("reader", "set"));
    r.cmd(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    r.cmd(&["GET", "k"], "$1\r\nv\r\n");
    // A failed AUTH leaves the connection as it was; a good one switches user.
    r.cmd(&["AUTH", "writer", "nope"], WRONGPASS);
    r.cmd(&["GET", "k"], "$1\r\nv\r\n");
    r.cmd(&["AUTH", "writer", "writer-pass"], "+OK\r\n");
    r.cmd(&["GET", "k"], &noperm("writer", "get"));

    // write only: may change keys, not read them, not even through KEEL.IDEM.
    let mut w = srv.raw();
    w.send(&resp(&["HELLO", "3", "AUTH", "writer", "writer-pass"]));
    let mut hello = Vec::new();
    while !hello.ends_with(b"modules\r\n*0\r\n") {
        let b = w.read_exact_len(1);
        assert_eq!(b.len(), 1, "{}", String::from_utf8_lossy(&hello));
        hello.extend(b);
    }
    assert!(hello.starts_with(b"%7\r\n"));
    // RESP3 from here on: the replies below are the same bytes in RESP2 and RESP3.
    w.cmd(&["SET", "k", "w"], "+OK\r\n");
    w.cmd(&["INCR", "n"], &noperm("writer", "incr"));
    w.cmd(&["APPEND", "n", "1"], ":1\r\n");
    w.cmd(&["KEEL.IDEM", "id2", "SET", "k2", "x"], "+OK\r\n");
    w.cmd(&["KEEL.IDEM", "id3", "GET", "k"], &noperm("writer", "get"));
    w.cmd(&["GET", "k"], &noperm("writer", "get"));
    w.cmd(&["MGET", "k"], &noperm("writer", "mget"));
    w.cmd(&["FLUSHALL"], &noperm("writer", "flushall"));
    w.cmd(&["SHUTDOWN"], &noperm("writer", "shutdown"));
    w.cmd(
        &["CONFIG", "SET", "x", "y"],
        &noperm("writer", "config|set"),
    );
    w.cmd(&["SAVE"], &noperm("writer", "save"));

    // read and write, still no admin.
    let mut a = srv.raw();
    a.cmd(&["AUTH", "app", "app-pass"], "+OK\r\n");
    a.cmd(&["GET", "k"], "$1\r\nw\r\n");
    a.cmd(&["SET", "k", "a"], "+OK\r\n");
    a.cmd(&["FLUSHALL"], &noperm("app", "flushall"));
    a.cmd(&["SHUTDOWN"], &noperm("app", "shutdown"));
    a.cmd(&["CONFIG", "GET", "port"], &noperm("app", "config|get"));
    // RESET logs out: the default user needs a password here.
    a.cmd(&["RESET"], "+RESET\r\n");
    a.cmd(&["GET", "k"], NOAUTH);

    // The redis crate with a user name in the URL.
    let url = |u: &str, p: &str| format!("redis://{u}:{p}@127.0.0.1:{}/", srv.port);
    let mut con = redis::Client::open(url("reader", "reader-pass"))
        .unwrap()
        .get_connection()
        .unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "a");
    let e = redis::cmd("SET")
        .arg("k")
        .arg("b")
        .query::<()>(&mut con)
        .unwrap_err();
    assert_eq!(e.code(), Some("NOPERM"), "{e}");
    assert!(redis::Client::open(url("reader", "bad"))
        .unwrap()
        .get_connection()
        .is_err());

    // admin: the generated password works, FLUSHALL and SHUTDOWN are allowed.
    let mut b = srv.raw();
    b.cmd(&["AUTH", "boss", boss_pass], "+OK\r\n");
    b.cmd(
        &["CONFIG", "GET", "maxclients"],
        "*2\r\n$10\r\nmaxclients\r\n$4\r\n1000\r\n",
    );
    b.cmd(&["FLUSHALL"], "+OK\r\n");
    b.cmd(&["DBSIZE"], ":0\r\n");

    // No password reached the log.
    let log = srv.log_text();
    for secret in [
        "reader-pass",
        "writer-pass",
        "app-pass",
        "default-pass",
        boss_pass,
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    b.send(&resp(&["SHUTDOWN"]));
    assert!(srv.wait().success());
}

#[test]
fn users_without_a_default_entry_disable_the_default_user() {
    let t = tempfile::tempdir().unwrap();
    let conf = write_config(
        t.path(),
        &format!(
            "[[users]]\nname = \"app\"\npassword_sha256 = \"{}\"\npermissions = [\"read\", \"write\"]\n",
            hash_password(&[], "app-pass").trim()
        ),
    );
    let srv = Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    let mut c = srv.raw();
    c.cmd(&["GET", "k"], NOAUTH);
    c.cmd(&["AUTH", "anything"], WRONGPASS);
    c.cmd(&["AUTH", "default", ""], WRONGPASS);
    c.send(&resp(&["HELLO", "3"]));
    assert_eq!(c.read_exact_len(7), b"-NOAUTH");
    let mut c = srv.raw();
    c.cmd(&["AUTH", "app", "app-pass"], "+OK\r\n");
    c.cmd(&["SET", "k", "v"], "+OK\r\n");
}

/// Runs `keel serve` expecting it to refuse to start; returns its log.
fn refuses_to_start(dir: &Path, extra: &[&str]) -> String {
    match Server::try_start(dir, extra) {
        Ok(_) => panic!("keel serve started with {extra:?}"),
        Err((status, log)) => {
            let status = status.expect("exited");
            assert!(!status.success(), "{status:?}");
            log.join("\n")
        }
    }
}

#[test]
fn bad_security_settings_stop_the_server_at_start_up() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    // A password where its hash belongs is refused without being echoed.
    let conf = write_config(
        t.path(),
        "[[users]]\nname = \"app\"\npassword_sha256 = \"hunter2\"\npermissions = [\"read\"]\n",
    );
    let log = refuses_to_start(&data, &["--config", conf.to_str().unwrap()]);
    assert!(log.contains("64 hexadecimal digits"), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    let conf = write_config(
        t.path(),
        "[[users]]\nname = \"app\"\npassword_sha256 = \"\"\npermissions = [\"sudo\"]\n",
    );
    let log = refuses_to_start(&data, &["--config", conf.to_str().unwrap()]);
    assert!(log.contains("unknown variant"), "{log}");

    // TLS files: missing, not PEM, a key of another certificate.
    let pki = Pki::new(t.path());
    let missing = t.path().join("missing.pem");
    let junk = t.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&pki.server_key),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&junk),
                "--tls-key".into(),
                s(&pki.server_key),
            ],
            "junk.pem",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&pki.server_cert),
                "--tls-key".into(),
                s(&junk),
            ],
            "junk.pem",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&pki.server_cert),
                "--tls-key".into(),
                s(&pki.client_key),
            ],
            "do not make a usable pair",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&pki.server_cert),
                "--tls-key".into(),
                s(&pki.server_key),
                "--tls-ca".into(),
                s(&junk),
            ],
            "junk.pem",
        ),
        (
            vec!["--tls-cert".into(), s(&pki.server_cert)],
            "go together",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = refuses_to_start(&data, &args);
        assert!(log.contains(want), "{args:?}: wanted {want:?} in:\n{log}");
        assert!(!log.contains("PRIVATE KEY"), "{log}");
    }
}

/// A throwaway CA, a server certificate for localhost and 127.0.0.1, a client certificate, and
/// a client certificate from another CA; PEM files in `dir`.
struct Pki {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_key: PathBuf,
    client_cert: PathBuf,
    ca_der: CertificateDer<'static>,
    client: (CertificateDer<'static>, Vec<u8>),
    stranger: (CertificateDer<'static>, Vec<u8>),
}

fn new_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("client"),
    );
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let (ca, issuer) = new_ca("keel test CA");
        let (server, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(&issuer, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
        let (_, other_issuer) = new_ca("another CA");
        let (stranger, stranger_key) = leaf(
            &other_issuer,
            &["stranger"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        Pki {
            ca_cert: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            ca_der: ca.der().clone(),
            client: (client.der().clone(), client_key.serialize_der()),
            stranger: (stranger.der().clone(), stranger_key.serialize_der()),
        }
    }

    fn server_args(&self, mtls: bool) -> Vec<String> {
        let mut v = vec![
            "--tls-cert".to_string(),
            self.server_cert.to_str().unwrap().into(),
            "--tls-key".into(),
            self.server_key.to_str().unwrap().into(),
        ];
        if mtls {
            v.push("--tls-ca".into());
            v.push(self.ca_cert.to_str().unwrap().into());
        }
        v
    }

    /// A TLS connection to `port` that trusts the test CA, presenting `client` if given.
    fn connect(
        &self,
        port: u16,
        client: Option<&(CertificateDer<'static>, Vec<u8>)>,
    ) -> Raw<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![cert.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
                )
                .unwrap(),
        };
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        Raw {
            s: rustls::StreamOwned::new(conn, tcp),
        }
    }
}

fn strings(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn redis_cli_has_tls() -> bool {
    Command::new("redis-cli")
        .arg("--help")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("--tls")
                || String::from_utf8_lossy(&o.stderr).contains("--tls")
        })
}

#[test]
fn tls_serves_commands_and_refuses_plaintext() {
    let t = tempfile::tempdir().unwrap();
    let pki = Pki::new(t.path());
    let srv = Server::start(&t.path().join("data"), &strings(&pki.server_args(false)));
    assert!(srv.log_text().contains("TLS only"), "{}", srv.log_text());

    let mut c = pki.connect(srv.port, None);
    c.cmd(&["PING"], "+PONG\r\n");
    c.cmd(&["SET", "k", "over tls"], "+OK\r\n");
    c.cmd(&["GET", "k"], "$8\r\nover tls\r\n");

    // A plaintext client gets no reply and is disconnected; the server carries on.
    let mut plain = srv.raw();
    plain.send(&resp(&["PING"]));
    let got = plain.read_exact_len(7);
    assert!(!got.starts_with(b"+PONG"), "{got:?}");
    let mut garbage = srv.raw();
    garbage.send(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0]);
    assert!(!garbage.read_exact_len(64).starts_with(b"+"));

    c.cmd(&["GET", "k"], "$8\r\nover tls\r\n");
    let mut c2 = pki.connect(srv.port, None);
    c2.cmd(&["PING"], "+PONG\r\n");
    // A client certificate nobody asked for does no harm.
    let mut c3 = pki.connect(srv.port, Some(&pki.client));
    c3.cmd(&["GET", "k"], "$8\r\nover tls\r\n");

    if redis_cli_has_tls() {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&pki.ca_cert)
            .args(["-h", "localhost", "-p", &srv.port.to_string(), "GET", "k"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "over tls\n",
            "{out:?}"
        );
    }
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let t = tempfile::tempdir().unwrap();
    let pki = Pki::new(t.path());
    // TLS and ACL users together.
    let conf = write_config(
        t.path(),
        &format!(
            "[[users]]\nname = \"app\"\npassword_sha256 = \"{}\"\npermissions = [\"read\", \"write\"]\n",
            hash_password(&[], "app-pass").trim()
        ),
    );
    let mut args = pki.server_args(true);
    args.extend(["--config".to_string(), conf.to_str().unwrap().to_string()]);
    let srv = Server::start(&t.path().join("data"), &strings(&args));

    // No certificate: the handshake fails (with TLS 1.3 the client learns it on its first read).
    let mut none = pki.connect(srv.port, None);
    let _ = none.s.write_all(&resp(&["PING"]));
    let got = none.read_exact_len(7);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    // A certificate from another CA: refused the same way.
    let mut stranger = pki.connect(srv.port, Some(&pki.stranger));
    let _ = stranger.s.write_all(&resp(&["PING"]));
    let got = stranger.read_exact_len(7);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // The CA's client certificate gets through TLS, and the ACL still applies after it.
    let mut c = pki.connect(srv.port, Some(&pki.client));
    c.cmd(&["GET", "k"], NOAUTH);
    c.cmd(&["AUTH", "app", "app-pass"], "+OK\r\n");
    c.cmd(&["SET", "k", "mtls"], "+OK\r\n");
    c.cmd(&["GET", "k"], "$4\r\nmtls\r\n");
    c.cmd(&["SHUTDOWN"], &noperm("app", "shutdown"));

    if redis_cli_has_tls() {
        let cli = |with_cert: bool| {
            let mut cmd = Command::new("redis-cli");
            cmd.args(["--tls", "--cacert"]).arg(&pki.ca_cert);
            if with_cert {
                cmd.arg("--cert")
                    .arg(&pki.client_cert)
                    .arg("--key")
                    .arg(&pki.client_key);
            }
            cmd.args(["-h", "localhost", "-p", &srv.port.to_string()])
                .args(["--user", "app", "--pass", "app-pass", "--no-auth-warning"])
                .args(["GET", "k"]);
            cmd.output().unwrap()
        };
        let ok = cli(true);
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "mtls\n", "{ok:?}");
        let refused = cli(false);
        assert!(
            !String::from_utf8_lossy(&refused.stdout).contains("mtls"),
            "{refused:?}"
        );
    }
    // The server is still serving.
    c.cmd(&["PING"], "+PONG\r\n");
}

/// `keel serve` run to completion (it is expected to exit at once): its status and stderr.
fn serve_output(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--port", "0"])
        .args(args)
        .env_remove("KEEL_REQUIREPASS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn config_errors_name_the_line_and_key_but_never_a_secret() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let hash = hash_password(&[], "hash-me").trim().to_string();
    // (file, secret, what stderr must say, line)
    let cases: Vec<(String, String, &str, usize)> = vec![
        // A typo in the key: the whole line used to be quoted.
        (
            "port = 0\nrequirepas = \"typo-secret-A1\"\n".into(),
            "typo-secret-A1".into(),
            "requirepas",
            2,
        ),
        // An unquoted value.
        (
            "requirepass = unquoted-secret-B2\n".into(),
            "unquoted-secret-B2".into(),
            "requirepass",
            1,
        ),
        // A password where its hash belongs, under a key that does not exist.
        (
            "[[users]]\nname = \"app\"\npassword = \"users-secret-C3\"\npermissions = [\"read\"]\n"
                .into(),
            "users-secret-C3".into(),
            "password",
            3,
        ),
        // A number: serde's own message quotes the value.
        (
            "requirepass = 31415926535\n".into(),
            "31415926535".into(),
            "requirepass",
            1,
        ),
        (
            "[[users]]\nname = \"app\"\npassword_sha256 = 27182818284590452353\npermissions = []\n"
                .into(),
            "27182818284590452353".into(),
            "password_sha256",
            3,
        ),
        // The same key twice.
        (
            "requirepass = \"dup-secret-D4\"\nrequirepass = \"dup-secret-D4\"\n".into(),
            "dup-secret-D4".into(),
            "requirepass",
            2,
        ),
        // Trailing text after a good hash.
        (
            format!("[[users]]\nname = \"app\"\npassword_sha256 = \"{hash}\" permissions = [\"read\"]\n"),
            hash.clone(),
            "password_sha256",
            3,
        ),
        // Unterminated strings, basic and multi-line.
        (
            "requirepass = \"unterminated-secret-E5\n".into(),
            "unterminated-secret-E5".into(),
            "requirepass",
            1,
        ),
        (
            "port = 0\nrequirepass = \"\"\"multi-secret-F6\nstill-secret-F6\n".into(),
            "secret-F6".into(),
            // Reported where the file ends without closing it.
            "multi-line",
            4,
        ),
        // A value of the wrong kind in a literal string.
        (
            "requirepass = ['array-secret-G7']\n".into(),
            "array-secret-G7".into(),
            "requirepass",
            1,
        ),
    ];
    for (i, (text, secret, key, line)) in cases.iter().enumerate() {
        let conf = t.path().join(format!("bad{i}.toml"));
        std::fs::write(&conf, text).unwrap();
        let (ok, out) = serve_output(&data, &["--config", conf.to_str().unwrap()], &[]);
        assert!(!ok, "{text:?} was accepted:\n{out}");
        assert!(
            !out.contains(secret.as_str()),
            "{text:?}: the secret leaked:\n{out}"
        );
        assert!(out.contains(key), "{text:?}: {key:?} not named:\n{out}");
        assert!(
            out.contains(&format!("line {line}")),
            "{text:?}: line {line} not named:\n{out}"
        );
        assert!(out.contains(conf.to_str().unwrap()), "{out}");
    }

    // The password flag and variable: never echoed, also when the command line is wrong.
    let (ok, out) = serve_output(
        &data,
        &["--port", "not-a-port"],
        &[("KEEL_REQUIREPASS", "env-secret-H8")],
    );
    assert!(!ok);
    assert!(!out.contains("env-secret-H8"), "{out}");
    let (ok, out) = serve_output(
        &data,
        &["--requirepass", "flag-secret-I9", "--max-clients", "many"],
        &[],
    );
    assert!(!ok);
    assert!(!out.contains("flag-secret-I9"), "{out}");
    let (ok, out) = serve_output(
        &data,
        &["--help"],
        &[("KEEL_REQUIREPASS", "help-secret-J10")],
    );
    assert!(ok, "{out}");
    assert!(!out.contains("help-secret-J10"), "{out}");
    // A password that starts with a dash is a value, not a flag clap would echo back.
    let (ok, out) = serve_output(
        &data,
        &["--requirepass", "-dash-secret-K11", "--max-clients", "0"],
        &[],
    );
    assert!(!ok);
    assert!(!out.contains("dash-secret"), "{out}");
    assert!(out.contains("max_clients"), "{out}");
}

#[test]
fn unauthenticated_clients_cannot_send_big_requests() {
    let t = tempfile::tempdir().unwrap();
    let srv = Server::start(&t.path().join("data"), &["--requirepass", "pw"]);
    let refused = |bytes: &[u8], expect: &str| {
        let mut c = srv.raw();
        c.send(bytes);
        // The reply, then the close: the server does not wait for the declared bytes (a read
        // that had to wait for them would run into the test's deadline instead).
        assert_eq!(
            String::from_utf8_lossy(&c.read_to_close()),
            expect,
            "{:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        );
    };
    let mbulk = "-ERR Protocol error: unauthenticated multibulk length\r\n";
    let bulk = "-ERR Protocol error: unauthenticated bulk length\r\n";
    // Redis's tests/unit/auth.tcl cases, and the edges of Redis's limits (10 and 16384).
    refused(b"*100\r\n", mbulk);
    refused(b"*11\r\n", mbulk);
    refused(b"*1\r\n$100000000\r\n", bulk);
    refused(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n", bulk);
    // Past the absolute limits too (max_bulk_bytes is 8 MiB): the client must log in first.
    refused(b"*99999999\r\n", mbulk);
    refused(
        b"*abc\r\n",
        "-ERR Protocol error: invalid multibulk length\r\n",
    );
    // An inline command is bounded the same way (16 KiB), and waits for no newline.
    let mut line = b"AUTH ".to_vec();
    line.extend(vec![b'a'; 16 << 10]);
    refused(&line, "-ERR Protocol error: too big inline request\r\n");

    // At the limits a request is read, and answered NOAUTH.
    let mut c = srv.raw();
    let ten: Vec<String> = (0..9).map(|i| format!("k{i}")).collect();
    let ten: Vec<&str> = ["MGET"]
        .into_iter()
        .chain(ten.iter().map(String::as_str))
        .collect();
    c.cmd(&ten, "-NOAUTH Authentication required.\r\n");
    let big = "x".repeat(16384);
    c.cmd(&["GET", &big], "-NOAUTH Authentication required.\r\n");
    c.send(format!("GET {}\r\n", "y".repeat(16000)).as_bytes());
    assert_eq!(
        c.read_exact_len(NOAUTH.len()),
        NOAUTH.as_bytes(),
        "inline at the limit"
    );
    // After AUTH the normal limits apply: 100 arguments, a 100 kB value, a long inline line;
    // also when the big request comes in the same packet as the AUTH.
    let mut del = vec!["DEL"];
    let keys: Vec<String> = (0..99).map(|i| format!("k{i}")).collect();
    del.extend(keys.iter().map(String::as_str));
    let value = "v".repeat(100_000);
    let mut req = resp(&["AUTH", "pw"]);
    req.extend(resp(&del));
    req.extend(resp(&["SET", "k", &value]));
    req.extend(format!("SET inline {}\r\n", "i".repeat(30_000)).as_bytes());
    c.roundtrip(&req, b"+OK\r\n:0\r\n+OK\r\n+OK\r\n");
    c.cmd(&["STRLEN", "k"], ":100000\r\n");
    c.cmd(&["STRLEN", "inline"], ":30000\r\n");
    // RESET logs out, and the tight limits are back.
    c.cmd(&["RESET"], "+RESET\r\n");
    c.send(b"*11\r\n");
    assert_eq!(String::from_utf8_lossy(&c.read_to_close()), mbulk);

    // Without a password nobody is unauthenticated: the normal limits apply at once.
    let open = Server::start(&t.path().join("open"), &[]);
    let mut c = open.raw();
    c.cmd(&del, ":0\r\n");
    c.cmd(&["SET", "k", &value], "+OK\r\n");
}

/// Every command keel serves, run by users with each permission. A command that returns stored
/// data needs `read`, one that changes data needs `write`, many need both, and the list below
/// must name every command in keel's table, so a new command cannot be left out. Independently
/// of what each command is declared to need, a write-only user never gets a stored value or key
/// name back.
#[test]
fn permissions_follow_what_each_command_does() {
    const R: u8 = 1;
    const W: u8 = 2;
    const A: u8 = 4;
    const RW: u8 = R | W;
    const AW: u8 = A | W;
    // (command, what it needs). Keys: k holds a string, n a number, both secrets.
    let cases: &[(&[&str], u8)] = &[
        (&["PING"], 0),
        (&["ECHO", "x"], 0),
        (&["HELLO", "2"], 0),
        (&["AUTH", "nobody", "x"], 0),
        (&["SELECT", "0"], 0),
        (&["QUIT"], 0),
        (&["RESET"], 0),
        (&["CLIENT", "ID"], 0),
        (&["CLIENT", "INFO"], 0),
        (&["CLIENT", "LIST"], A),
        (&["CLIENT", "NO-EVICT", "off"], A),
        (&["COMMAND", "COUNT"], 0),
        (&["INFO", "server"], 0),
        (&["TIME"], 0),
        (&["CONFIG", "GET", "port"], A),
        (&["SHUTDOWN"], A),
        (&["DBSIZE"], R),
        (&["FLUSHDB"], AW),
        (&["FLUSHALL"], AW),
        (&["GET", "k"], R),
        (&["SET", "k", "v"], W),
        (&["SET", "k", "v", "NX", "EX", "100"], W),
        (&["SET", "k", "v", "GET"], RW),
        (&["SET", "k", "v", "XX", "GET", "KEEPTTL"], RW),
        (&["SETNX", "k", "v"], W),
        (&["SETEX", "k", "100", "v"], W),
        (&["PSETEX", "k", "100000", "v"], W),
        (&["GETSET", "k", "v"], RW),
        (&["GETDEL", "k"], RW),
        // GETEX without an option only reads; with one it also changes the expiry.
        (&["GETEX", "k"], R),
        (&["GETEX", "k", "PERSIST"], RW),
        (&["GETEX", "k", "EX", "100"], RW),
        (&["MGET", "k", "n"], R),
        (&["MSET", "k", "v", "n", "1"], W),
        (&["MSETNX", "new1", "v", "new2", "v"], W),
        // The counters return the stored number plus the increment.
        (&["INCR", "n"], RW),
        (&["DECR", "n"], RW),
        (&["INCRBY", "n", "2"], RW),
        (&["DECRBY", "n", "2"], RW),
        (&["INCRBYFLOAT", "n", "0.5"], RW),
        (&["APPEND", "k", "x"], W),
        (&["STRLEN", "k"], R),
        (&["GETRANGE", "k", "0", "-1"], R),
        (&["SUBSTR", "k", "0", "-1"], R),
        (&["SETRANGE", "k", "1", "x"], W),
        (&["LCS", "k", "n"], R),
        (&["SETBIT", "k", "1", "1"], RW),
        (&["GETBIT", "k", "1"], R),
        (&["BITCOUNT", "k"], R),
        (&["BITPOS", "k", "1"], R),
        (&["BITOP", "AND", "d", "k", "n"], RW),
        (&["BITFIELD", "k", "GET", "u8", "0"], RW),
        (&["BITFIELD_RO", "k", "GET", "u8", "0"], R),
        (&["COPY", "k", "k3"], RW),
        (&["DUMP", "k"], R),
        // A payload that is not one: refused after the permission check, writing nothing.
        (&["RESTORE", "k9", "0", "not-a-payload"], W),
        (&["TOUCH", "k"], R),
        (&["RANDOMKEY"], R),
        (&["SORT", "q"], R),
        (&["SORT", "q", "ALPHA", "STORE", "q3"], RW),
        (&["SORT_RO", "q", "ALPHA"], R),
        (&["DEL", "k"], W),
        (&["UNLINK", "k"], W),
        (&["EXISTS", "k"], R),
        (&["TYPE", "k"], R),
        // As Redis's key specs say (ACCESS on the source): moving a value uses it.
        (&["RENAME", "k", "k2"], RW),
        (&["RENAMENX", "k", "k2"], RW),
        (&["EXPIRE", "k", "100"], W),
        (&["PEXPIRE", "k", "100000"], W),
        (&["EXPIREAT", "k", "4000000000"], W),
        (&["PEXPIREAT", "k", "4000000000000"], W),
        (&["TTL", "k"], R),
        (&["PTTL", "k"], R),
        (&["EXPIRETIME", "k"], R),
        (&["PEXPIRETIME", "k"], R),
        (&["PERSIST", "k"], W),
        (&["KEYS", "*"], R),
        (&["SCAN", "0"], R),
        (&["MULTI"], 0),
        (&["EXEC"], 0),
        (&["DISCARD"], 0),
        (&["WATCH", "k"], R),
        (&["UNWATCH"], 0),
        (&["WAITAOF", "1", "0", "0"], 0),
        (&["WAIT", "0", "0"], 0),
        (&["KEEL.VERSION", "k"], R),
        (&["KEEL.CAS", "k", "0", "v"], W),
        (&["KEEL.IDEM", "id-set", "SET", "k", "v"], W),
        (&["KEEL.IDEM", "id-getset", "GETSET", "k", "v"], RW),
        (&["KEEL.IDEM", "id-get", "GET", "k"], RW),
        (&["KEEL.IDEM", "id-incr", "INCR", "n"], RW),
        (&["KEEL.IDEM", "id-flush", "FLUSHALL"], AW),
        (&["SAVE"], A),
        (&["BGSAVE"], A),
        (&["LASTSAVE"], 0),
        (&["SLOWLOG", "LEN"], A),
        (&["LATENCY", "LATEST"], A),
        (&["LATENCY", "HISTOGRAM"], A),
        // ACL: the caller's own name, the categories and a random password for anyone; every
        // user, the log and the rest for admins, as in Redis.
        (&["MODULE", "HELP"], 0),
        (&["MODULE", "LIST"], A),
        (&["MODULE", "LOAD", "/tmp/no-such-module.so"], A),
        (&["ACL", "WHOAMI"], 0),
        (&["ACL", "CAT", "read"], 0),
        (&["ACL", "GENPASS"], 0),
        (&["ACL", "HELP"], 0),
        (&["ACL", "USERS"], A),
        (&["ACL", "LIST"], A),
        (&["ACL", "GETUSER", "boss"], A),
        (&["ACL", "DRYRUN", "boss", "GET", "k"], A),
        (&["ACL", "LOG"], A),
        (&["ACL", "SETUSER", "eve", "on", ">pw"], A),
        (&["ACL", "DELUSER", "boss"], A),
        (&["ACL", "SAVE"], A),
        (&["ACL", "LOAD"], A),
        (&["MONITOR"], A),
        // Pub/Sub needs no permission: a message is never stored data.
        (&["SUBSCRIBE", "ch"], 0),
        (&["UNSUBSCRIBE"], 0),
        (&["PSUBSCRIBE", "c*"], 0),
        (&["PUNSUBSCRIBE"], 0),
        (&["SSUBSCRIBE", "ch"], 0),
        (&["SUNSUBSCRIBE"], 0),
        (&["PUBLISH", "ch", "m"], 0),
        (&["SPUBLISH", "ch", "m"], 0),
        (&["PUBSUB", "NUMPAT"], 0),
        // A script needs nothing of its own; each command it calls is checked (tests/scripts.rs).
        (&["EVAL", "return 1", "0"], 0),
        (
            &["EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"],
            0,
        ),
        (&["EVAL_RO", "return 1", "0"], R),
        (
            &[
                "EVALSHA_RO",
                "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
                "0",
            ],
            R,
        ),
        (
            &[
                "SCRIPT",
                "EXISTS",
                "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
            ],
            0,
        ),
        (&["FCALL", "nosuch", "0"], 0),
        (&["FCALL_RO", "nosuch", "0"], R),
        (&["FUNCTION", "LIST"], 0),
        (&["FUNCTION", "DELETE", "nosuch"], A),
        (&["KEEL.BACKUP", "/nonexistent/keel-backup-target"], A),
        (&["KEEL.CLUSTER", "STATUS"], A),
        // The topology cluster clients ask for first, and KEYSLOT, a hash of the argument.
        (&["CLUSTER", "SLOTS"], 0),
        (&["CLUSTER", "KEYSLOT", "k"], 0),
        (&["READONLY"], 0),
        (&["READWRITE"], 0),
        (&["KEEL.MAINTENANCE", "STATUS"], A),
        (&["MEMORY", "USAGE", "k"], R),
        (&["OBJECT", "ENCODING", "k"], R),
        // h is a hash whose field f holds the secret.
        (&["HSET", "h", "f", "v", "g", "w"], W),
        (&["HMSET", "h", "f", "v"], W),
        (&["HSETNX", "h", "new", "v"], W),
        (&["HGET", "h", "f"], R),
        (&["HMGET", "h", "f", "g"], R),
        (&["HGETALL", "h"], R),
        (&["HKEYS", "h"], R),
        (&["HVALS", "h"], R),
        (&["HLEN", "h"], R),
        (&["HEXISTS", "h", "f"], R),
        (&["HSTRLEN", "h", "f"], R),
        (&["HDEL", "h", "f"], W),
        (&["HINCRBY", "h", "c", "2"], RW),
        (&["HINCRBYFLOAT", "h", "c", "0.5"], RW),
        (&["HRANDFIELD", "h", "2", "WITHVALUES"], R),
        (&["HSCAN", "h", "0"], R),
        // z is a set whose member is the secret.
        (&["SADD", "z", "m"], W),
        (&["SREM", "z", "m"], W),
        (&["SMEMBERS", "z"], R),
        (&["SISMEMBER", "z", "m"], R),
        (&["SMISMEMBER", "z", "m"], R),
        (&["SCARD", "z"], R),
        (&["SPOP", "z"], RW),
        (&["SRANDMEMBER", "z", "2"], R),
        (&["SMOVE", "z", "z2", "m"], W),
        (&["SINTER", "z", "z2"], R),
        (&["SUNION", "z", "z2"], R),
        (&["SDIFF", "z", "z2"], R),
        (&["SINTERCARD", "1", "z"], R),
        (&["SINTERSTORE", "d", "z"], W),
        (&["SUNIONSTORE", "d", "z"], W),
        (&["SDIFFSTORE", "d", "z"], W),
        (&["SSCAN", "z", "0"], R),
        // q is a list whose element is the secret.
        (&["LPUSH", "q", "e"], W),
        (&["RPUSH", "q", "e"], W),
        (&["LPUSHX", "q", "e"], W),
        (&["RPUSHX", "q", "e"], W),
        (&["LPOP", "q"], RW),
        (&["RPOP", "q", "1"], RW),
        (&["LLEN", "q"], R),
        (&["LRANGE", "q", "0", "-1"], R),
        (&["LINDEX", "q", "0"], R),
        (&["LSET", "q", "0", "e"], W),
        (&["LINSERT", "q", "BEFORE", "x", "e"], W),
        (&["LREM", "q", "0", "e"], W),
        (&["LTRIM", "q", "0", "-1"], W),
        (&["LPOS", "q", "e"], R),
        (&["LMOVE", "q", "q2", "LEFT", "RIGHT"], RW),
        (&["RPOPLPUSH", "q", "q2"], RW),
        (&["LMPOP", "1", "q", "LEFT"], RW),
        (&["BLPOP", "q", "0.01"], RW),
        (&["BRPOP", "q", "0.01"], RW),
        (&["BLMOVE", "q", "q2", "LEFT", "RIGHT", "0.01"], RW),
        (&["BRPOPLPUSH", "q", "q2", "0.01"], RW),
        (&["BLMPOP", "0.01", "1", "q", "LEFT"], RW),
        // o is a sorted set whose member is the secret.
        (&["ZADD", "o", "1", "m"], W),
        (&["ZINCRBY", "o", "1", "m"], W),
        (&["ZREM", "o", "m"], W),
        (&["ZCARD", "o"], R),
        (&["ZCOUNT", "o", "-inf", "+inf"], R),
        (&["ZLEXCOUNT", "o", "-", "+"], R),
        (&["ZSCORE", "o", "m"], R),
        (&["ZMSCORE", "o", "m"], R),
        (&["ZRANK", "o", "m"], R),
        (&["ZREVRANK", "o", "m"], R),
        (&["ZRANGE", "o", "0", "-1"], R),
        (&["ZREVRANGE", "o", "0", "-1"], R),
        (&["ZRANGEBYSCORE", "o", "-inf", "+inf"], R),
        (&["ZREVRANGEBYSCORE", "o", "+inf", "-inf"], R),
        (&["ZRANGEBYLEX", "o", "-", "+"], R),
        (&["ZREVRANGEBYLEX", "o", "+", "-"], R),
        (&["ZRANGESTORE", "o2", "o", "0", "-1"], W),
        (&["ZREMRANGEBYRANK", "o", "5", "6"], W),
        (&["ZREMRANGEBYSCORE", "o", "5", "6"], W),
        (&["ZREMRANGEBYLEX", "o", "[x", "[y"], W),
        (&["ZPOPMIN", "o"], RW),
        (&["ZPOPMAX", "o", "1"], RW),
        (&["ZMPOP", "1", "o", "MIN"], RW),
        (&["BZPOPMIN", "o", "0.01"], RW),
        (&["BZPOPMAX", "o", "0.01"], RW),
        (&["BZMPOP", "0.01", "1", "o", "MAX"], RW),
        (&["ZUNION", "1", "o"], R),
        (&["ZINTER", "1", "o"], R),
        (&["ZDIFF", "1", "o"], R),
        (&["ZUNIONSTORE", "o2", "1", "o"], W),
        (&["ZINTERSTORE", "o2", "1", "o"], W),
        (&["ZDIFFSTORE", "o2", "1", "o"], W),
        (&["ZINTERCARD", "1", "o"], R),
        (&["ZRANDMEMBER", "o"], R),
        (&["ZSCAN", "o", "0"], R),
        (&["XADD", "x", "*", "f", "v"], W),
        (&["XLEN", "x"], R),
        (&["XRANGE", "x", "-", "+"], R),
        (&["XREVRANGE", "x", "+", "-", "COUNT", "1"], R),
        (&["XDEL", "x", "1-1"], W),
        (&["XTRIM", "x", "MAXLEN", "0"], W),
        (&["XSETID", "x", "9-9"], W),
        (&["XREAD", "STREAMS", "x", "0"], R),
        (&["XINFO", "STREAM", "x"], R),
        (&["XINFO", "GROUPS", "x"], R),
        (&["XINFO", "CONSUMERS", "x", "g"], R),
        (&["XGROUP", "CREATE", "x", "g2", "$"], W),
        (&["XGROUP", "SETID", "x", "g", "0"], W),
        (&["XGROUP", "CREATECONSUMER", "x", "g", "c2"], W),
        (&["XGROUP", "DELCONSUMER", "x", "g", "c"], W),
        (&["XGROUP", "DESTROY", "x", "g"], W),
        (&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "x", ">"], RW),
        (&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "x", "0"], RW),
        (&["XACK", "x", "g", "1-1"], W),
        (&["XPENDING", "x", "g"], R),
        (&["XPENDING", "x", "g", "-", "+", "10"], R),
        (&["XCLAIM", "x", "g", "c", "0", "1-1"], RW),
        (&["XAUTOCLAIM", "x", "g", "c", "0", "0"], RW),
    ];

    let t = tempfile::tempdir().unwrap();
    let user = |name: &str, perms: &str| {
        format!(
            "[[users]]\nname = \"{name}\"\npassword_sha256 = \"{}\"\npermissions = [{perms}]\n\n",
            hash_password(&[], &format!("{name}-pass")).trim()
        )
    };
    let conf = write_config(
        t.path(),
        &[
            user("reader", "\"read\""),
            user("writer", "\"write\""),
            user("app", "\"read\", \"write\""),
            user("boss", "\"read\", \"write\", \"admin\""),
        ]
        .concat(),
    );
    let srv = Server::start(
        &t.path().join("data"),
        &["--config", conf.to_str().unwrap()],
    );
    // Every command in keel's table has a case. (COMMAND LIST also names subcommands,
    // `client|setname`: they are checked as their command is.)
    let mut listing = srv.raw();
    listing.cmd(&["AUTH", "boss", "boss-pass"], "+OK\r\n");
    listing.send(&resp(&["COMMAND", "LIST"]));
    let list = String::from_utf8(read_reply(&mut listing)).unwrap();
    let names: Vec<&str> = list
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']) && !l.contains('|'))
        .collect();
    assert!(names.len() > 50, "{list}");
    for name in &names {
        assert!(
            cases.iter().any(|(a, _)| a[0].eq_ignore_ascii_case(name)),
            "no permission case for {name}: add it above"
        );
    }

    let secret_value = "SECRETVALUE";
    let secret_number = "4242424242";
    let secret_key = "secretkeyname";
    let mut boss = srv.raw();
    boss.cmd(&["AUTH", "boss", "boss-pass"], "+OK\r\n");
    // Each command meets the same data.
    let reset = |boss: &mut Raw| {
        boss.cmd(&["FLUSHALL"], "+OK\r\n");
        boss.cmd(
            &[
                "MSET",
                "k",
                secret_value,
                "n",
                secret_number,
                secret_key,
                secret_value,
            ],
            "+OK\r\n",
        );
        boss.cmd(&["HSET", "h", "f", secret_value], ":1\r\n");
        boss.cmd(&["SADD", "z", secret_value], ":1\r\n");
        boss.cmd(&["RPUSH", "q", secret_value], ":1\r\n");
        boss.cmd(&["ZADD", "o", "1", secret_value], ":1\r\n");
        boss.cmd(&["XADD", "x", "1-1", "f", secret_value], "$3\r\n1-1\r\n");
        // A consumer group whose consumer `c` has the entry pending.
        boss.cmd(&["XGROUP", "CREATE", "x", "g", "0"], "+OK\r\n");
        boss.cmd(&["XGROUP", "CREATECONSUMER", "x", "g", "c"], ":1\r\n");
        boss.cmd(
            &["XCLAIM", "x", "g", "c", "0", "1-1", "FORCE", "JUSTID"],
            "*1\r\n$3\r\n1-1\r\n",
        );
    };
    let login = |name: &str| {
        let mut c = srv.raw();
        c.cmd(&["AUTH", name, &format!("{name}-pass")], "+OK\r\n");
        c
    };
    for (args, needs) in cases {
        for (name, has) in [("reader", R), ("writer", W), ("app", RW)] {
            // Nobody here is an admin, so SHUTDOWN and the like are only ever refused.
            reset(&mut boss);
            let mut c = login(name);
            c.send(&resp(args));
            let reply = String::from_utf8_lossy(&read_reply(&mut c)).into_owned();
            let denied = needs & !has != 0;
            if denied {
                let shown = match args[0] {
                    // Redis names a subcommand as `container|sub`.
                    "CONFIG" | "CLIENT" | "SLOWLOG" | "LATENCY" | "KEEL.CLUSTER"
                    | "KEEL.MAINTENANCE" | "MEMORY" | "OBJECT" | "COMMAND" | "ACL" | "FUNCTION"
                    | "XINFO" | "XGROUP" | "MODULE" => {
                        format!("{}|{}", args[0], args[1]).to_lowercase()
                    }
                    // KEEL.IDEM's own need (write) first, then the wrapped command's.
                    "KEEL.IDEM" if has & W != 0 => args[2].to_lowercase(),
                    other => other.to_lowercase(),
                };
                assert_eq!(reply, noperm(name, &shown), "{name} ran {args:?}");
            } else {
                assert!(!reply.starts_with("-NOPERM"), "{name} {args:?}: {reply}");
            }
            if has & R == 0 {
                for secret in [secret_value, &secret_number[..8], secret_key] {
                    assert!(
                        !reply.contains(secret),
                        "{name} {args:?} got stored data back: {reply}"
                    );
                }
            }
        }
    }

    // Queued commands are checked as they are queued, and EXEC then aborts.
    reset(&mut boss);
    let mut w = login("writer");
    w.cmd(&["MULTI"], "+OK\r\n");
    w.cmd(&["SET", "k", "v"], "+QUEUED\r\n");
    w.cmd(&["SET", "k", "v", "GET"], &noperm("writer", "set"));
    w.cmd(&["GETEX", "k", "PERSIST"], &noperm("writer", "getex"));
    w.cmd(&["GETSET", "k", "v"], &noperm("writer", "getset"));
    w.cmd(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    let mut r = login("reader");
    r.cmd(&["MULTI"], "+OK\r\n");
    r.cmd(&["GETEX", "k"], "+QUEUED\r\n");
    r.cmd(&["EXEC"], &format!("*1\r\n$11\r\n{secret_value}\r\n"));
    r.cmd(&["MULTI"], "+OK\r\n");
    r.cmd(&["GETEX", "k", "EX", "100"], &noperm("reader", "getex"));
    r.cmd(&["DISCARD"], "+OK\r\n");
    // A request id reused by a write-only user does not hand over the first command's reply
    // data (the first was a GETSET: its outcome holds the old value).
    boss.cmd(
        &["KEEL.IDEM", "shared-id", "GETSET", "k", "new"],
        &format!("$11\r\n{secret_value}\r\n"),
    );
    for args in [
        &["KEEL.IDEM", "shared-id", "SET", "k", "v"][..],
        &["KEEL.IDEM", "shared-id", "APPEND", "k", "v"],
        &["KEEL.IDEM", "shared-id", "SETNX", "k", "v"],
    ] {
        w.send(&resp(args));
        let reply = String::from_utf8_lossy(&read_reply(&mut w)).into_owned();
        assert!(!reply.contains(secret_value), "{args:?}: {reply}");
    }
}
