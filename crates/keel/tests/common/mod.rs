//! The real `keel serve` as a child process on an ephemeral port, for the integration tests.
#![allow(dead_code)] // each test file uses a different part of it

pub mod cluster;
pub mod files;
pub mod loopfs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Self::try_start(dir, extra).unwrap_or_else(|(status, log)| {
            panic!("keel serve exited with {status:?}:\n{}", log.join("\n"))
        })
    }

    /// Starts `keel serve` with extra environment variables.
    pub fn start_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::try_start_env(dir, extra, env).unwrap_or_else(|(status, log)| {
            panic!("keel serve exited with {status:?}:\n{}", log.join("\n"))
        })
    }

    /// Starts `keel serve`; `Err` with the exit status and log if it exits instead.
    pub fn try_start(
        dir: &Path,
        extra: &[&str],
    ) -> Result<Server, (Option<ExitStatus>, Vec<String>)> {
        Self::try_start_env(dir, extra, &[])
    }

    fn try_start_env(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, (Option<ExitStatus>, Vec<String>)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(
                ["--port", "0"]
                    .iter()
                    .filter(|_| !extra.contains(&"--port")),
            )
            .args(
                ["--log-level", "info"]
                    .iter()
                    .filter(|_| !extra.contains(&"--log-level")),
            )
            .args(extra)
            .env_remove("KEEL_REQUIREPASS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        // Drains stderr for the process's whole life, so it never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let port = rest.rsplit(':').next().unwrap().trim().parse::<u16>();
                    let _ = tx.send(port.unwrap());
                }
                log2.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(port) => Ok(Server { child, port, log }),
            Err(_) => {
                let status = child.try_wait().ok().flatten().or_else(|| {
                    let _ = child.kill();
                    child.wait().ok()
                });
                // Let the reader thread collect the last lines.
                thread::sleep(Duration::from_millis(100));
                let log = log.lock().unwrap().clone();
                Err((status, log))
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A `redis` crate connection; a server that stops answering fails the test instead of
    /// hanging it.
    pub fn client(&self) -> redis::Connection {
        let c = redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(DEADLINE)
            .unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c
    }

    pub fn raw(&self) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Raw { s }
    }

    /// Runs redis-cli against the server (killed after [`DEADLINE`], so a server that stops
    /// answering fails the test instead of hanging it).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .arg(DEADLINE.as_secs().to_string())
            .arg("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed (scripts/test installs redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for the server to exit by itself (after SHUTDOWN, say).
    pub fn wait(mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw RESP connection, for exact reply bytes.
/// A RESP connection over any byte stream, for exact reply bytes.
pub struct Raw<S: Read + Write = TcpStream> {
    pub s: S,
}

impl<S: Read + Write> Raw<S> {
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
        self.s.flush().unwrap();
    }

    /// Reads until exactly `want` bytes arrived (or the connection closed).
    pub fn read_exact_len(&mut self, want: usize) -> Vec<u8> {
        let mut buf = vec![0; want];
        let mut got = 0;
        while got < want {
            match self.s.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        buf.truncate(got);
        buf
    }

    /// Reads whatever arrives until the server closes the connection.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.s.read_to_end(&mut v);
        v
    }

    pub fn roundtrip(&mut self, req: &[u8], expect: &[u8]) {
        self.send(req);
        let got = self.read_exact_len(expect.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expect),
            "request {:?}",
            String::from_utf8_lossy(req)
        );
    }

    /// Sends one command and expects exactly `expect` back.
    pub fn cmd(&mut self, args: &[&str], expect: &str) {
        self.roundtrip(&resp(args), expect.as_bytes());
    }
}

pub fn resp(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

/// The metrics endpoint's port, as the log announced it.
pub fn metrics_port(srv: &Server) -> u16 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let found = srv.log.lock().unwrap().iter().find_map(|l| {
            let rest = l.split("metrics at http://").nth(1)?;
            rest.split('/').next()?.rsplit(':').next()?.parse().ok()
        });
        if let Some(port) = found {
            return port;
        }
        assert!(Instant::now() < deadline, "no metrics line in the log");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one raw HTTP request and returns the whole answer (the server closes after it).
pub fn http(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).unwrap();
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// SETs `{prefix}{i}` to `i` for every `i` below `n`, one request at a time.
pub fn set_numbered(c: &mut redis::Connection, prefix: &str, n: usize) {
    for i in 0..n {
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}{i}"))
            .arg(i)
            .query(c)
            .unwrap();
    }
}

/// `keel hash-password` with `input` on standard input: its standard output.
pub fn hash_password(args: &[&str], input: &str) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("hash-password")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command with the `redis` crate; a failure fails the test.
pub fn query<T: redis::FromRedisValue>(c: &mut redis::Connection, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(c).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must fail; its error as the `redis` crate shows it.
pub fn error(c: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(c) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("{args:?} answered {v:?}, not an error"),
    }
}

/// Reads one RESP2/RESP3 reply and returns its bytes (an error or a closed connection ends it).
pub fn read_reply<S: std::io::Read + std::io::Write>(c: &mut Raw<S>) -> Vec<u8> {
    fn line<S: std::io::Read + std::io::Write>(c: &mut Raw<S>, out: &mut Vec<u8>) -> Vec<u8> {
        let start = out.len();
        while !out[start..].ends_with(b"\r\n") {
            let b = c.read_exact_len(1);
            assert_eq!(
                b.len(),
                1,
                "closed mid-reply: {}",
                String::from_utf8_lossy(out)
            );
            out.extend(b);
        }
        out[start + 1..out.len() - 2].to_vec()
    }
    fn one<S: std::io::Read + std::io::Write>(c: &mut Raw<S>, out: &mut Vec<u8>) {
        let tag = out.len();
        let head = line(c, out);
        let n: i64 = std::str::from_utf8(&head)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match out[tag] {
            b'$' | b'=' if n >= 0 => out.extend(c.read_exact_len(n as usize + 2)),
            b'*' | b'~' | b'>' => (0..n).for_each(|_| one(c, out)),
            b'%' => (0..2 * n).for_each(|_| one(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    one(c, &mut out);
    out
}
