//! Settings: defaults, then a TOML file, then `KEEL_*` environment variables, then flags.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::auth::{UserConfig, Users};
use crate::resp::Limits;
use crate::tls::{self, Tls};

/// `keel serve` options. Every flag also reads the `KEEL_*` variable named in its help; a flag
/// on the command line wins over the variable, and both win over the config file.
/// Most worker threads `workers` may ask for.
const WORKERS_MAX: usize = 1024;

/// One worker per CPU this process may run on, less one for the log's threads (its writes,
/// syncs and acknowledgements), and at least one. On two CPUs shared with the clients, a second
/// worker cost more CPU per command than it gave, reads included (BENCHMARKS.md, session 21):
/// each worker that sleeps and wakes is a context switch, and the log's syncs took smaller
/// batches.
fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cpus.saturating_sub(1).max(1)
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file (keys: see the README).
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./keel-data].
    #[arg(long, env = "KEEL_DIR")]
    pub dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "KEEL_BIND")]
    pub bind: Option<String>,
    /// Port to listen on; 0 picks a free one (the log says which) [default: 7379].
    #[arg(long, env = "KEEL_PORT")]
    pub port: Option<u16>,
    /// Password clients must give with AUTH or HELLO. Prefer the environment variable or the
    /// config file: a flag is visible in the process list.
    // A password may start with '-': taken as a flag, clap would echo it back in its error.
    #[arg(
        long,
        env = "KEEL_REQUIREPASS",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub requirepass: Option<Secret>,
    /// PEM certificate chain; with --tls-key, the port speaks TLS only.
    #[arg(long, env = "KEEL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KEEL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: every client must present a certificate one of them signed (mTLS).
    #[arg(long, env = "KEEL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Set from `keel --encryption-key-file` (a global flag, also `KEEL_ENCRYPTION_KEY_FILE`).
    #[arg(skip)]
    pub encryption_key_file: Option<PathBuf>,
    /// error, warn, info, debug or trace [default: info].
    #[arg(long, env = "KEEL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Most client connections at once [default: 1000].
    #[arg(long, env = "KEEL_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// Threads that serve connections [default: one per CPU this process may use, less one
    /// for the log, at least one].
    #[arg(long, env = "KEEL_WORKERS")]
    pub workers: Option<usize>,
    /// Close a connection idle this many seconds, or whose request has not arrived whole
    /// within this many seconds of waiting for it (slow clients); 0 = never [default: 0].
    #[arg(long, env = "KEEL_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Serve Prometheus metrics at http://BIND:PORT/metrics; 0 picks a free port (the log says
    /// which) [default: off].
    #[arg(long, env = "KEEL_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Run as node N of a keel cluster (see the README's "keel cluster"). Writes then go
    /// through raft and are acknowledged once a quorum holds them durably.
    #[arg(long, env = "KEEL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Port of this node's raft RPC listener, on --bind [default with --node-id: --port + 10000].
    #[arg(long, env = "KEEL_RAFT_PORT")]
    pub raft_port: Option<u16>,
    /// The raft address other nodes should use for this one, if not --bind:--raft-port (behind
    /// NAT or a proxy). Required with an unspecified --bind such as 0.0.0.0.
    #[arg(long, env = "KEEL_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// The client address -MOVED replies give for this node when it leads, if not --bind:--port.
    /// Required with an unspecified --bind such as 0.0.0.0.
    #[arg(long, env = "KEEL_ADVERTISE")]
    pub advertise: Option<String>,
    /// The other nodes' raft addresses, `ID=HOST:PORT,...`; `keel cluster init` forms the
    /// cluster from them.
    #[arg(long, env = "KEEL_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Let this node answer reads from its own state when it is not the leader (possibly stale)
    /// instead of replying -MOVED.
    #[arg(long, env = "KEEL_STALE_READS")]
    pub stale_reads: bool,
    /// Build a raft snapshot (and purge the raft log before it) every this many entries
    /// [default: 100000].
    #[arg(long, env = "KEEL_RAFT_SNAPSHOT_EVERY")]
    pub raft_snapshot_every: Option<u64>,
    /// Keep a hash-chained audit log of logins, refusals and admin commands in DIR/audit/ (see
    /// the README) [default: off].
    #[arg(long, env = "KEEL_AUDIT")]
    pub audit: bool,
}

/// A password as given on the command line, in the environment or in the config file. Its
/// `Debug` does not show it, so that no settings dump can (P14).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// The config file. Every key is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dir: Option<PathBuf>,
    pub bind: Option<String>,
    pub port: Option<u16>,
    pub requirepass: Option<Secret>,
    /// ACL users: `[[users]]` tables with `name`, `password_sha256`, `permissions`. See [`crate::auth`].
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// TLS certificate chain and key (PEM); setting both makes the port TLS-only. See [`tls`].
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that must have signed every client's certificate [default: none].
    pub tls_ca_file: Option<PathBuf>,
    /// Keyring for encryption at rest [default: none, no encryption].
    pub encryption_key_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub max_clients: Option<usize>,
    /// Threads that serve connections [default: one per CPU this process may use, less one].
    pub workers: Option<usize>,
    pub idle_timeout_secs: Option<u64>,
    /// Port of the Prometheus metrics endpoint, on the same address as the server [default: off].
    pub metrics_port: Option<u16>,
    /// Largest bulk string in a request [default: the engine's value_bytes_max, 8 MiB].
    pub max_bulk_bytes: Option<usize>,
    /// Most arguments in one request [default: 1,048,576].
    pub max_multibulk_len: Option<usize>,
    /// Longest inline command [default: 64 KiB].
    pub max_inline_bytes: Option<usize>,
    /// Most unparsed request bytes buffered per connection [default: 32 MiB].
    pub max_request_bytes: Option<usize>,
    /// Ignored: SCAN cursors hold no state since the keyspace became a hash table. Accepted so
    /// that older configuration files still load.
    pub scan_cursors_max: Option<usize>,
    /// When a write is acknowledged: "always" (after its fsync; the default), "interval" (once
    /// written; an fsync at least every `sync_interval_ms`) or "never" (once written; fsync only
    /// on rotation, SAVE and shutdown). See the README for what a crash can take under each.
    pub sync_policy: Option<String>,
    /// With sync_policy = "interval" [default: 1000].
    pub sync_interval_ms: Option<u64>,
    /// Checkpoint after this many bytes of log; 0 = never by size [default: 256 MiB].
    pub checkpoint_log_bytes: Option<u64>,
    /// Checkpoint this long after the last one if anything was written; 0 = off [default: 600].
    pub checkpoint_interval_secs: Option<u64>,
    /// Keep older snapshots and the log after them this long, for `keel restore` [default: 0].
    pub retention_secs: Option<u64>,
    /// Keep the audit log in DIR/audit/ [default: false].
    pub audit: Option<bool>,
    /// Start a new audit file past this size [default: 64 MiB].
    pub audit_file_bytes_max: Option<u64>,
    /// Keep at most this many audit files; the oldest is removed first [default: 16].
    pub audit_files_max: Option<usize>,
    /// Keyspace notifications, in Redis's `notify-keyspace-events` syntax ("KEA", say)
    /// [default: "", none].
    pub notify_keyspace_events: Option<String>,
}

static LOG_THREAD_START: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Tells the server what the logs' own threads run first ([`keel_wal::Options::thread_start`]):
/// called once, by the binary, before the settings are read.
pub fn set_log_thread_start(f: fn()) {
    let _ = LOG_THREAD_START.set(f);
}

/// The engine's options from the config file's keys.
fn engine_options(file: &FileConfig) -> anyhow::Result<keel_engine::Options> {
    // Maintenance mode is the engine's write fence: a write decided after ON is refused, even
    // before ON is visible, and on a cluster every node decides the same.
    let mut o = keel_engine::Options {
        write_fence: Some(bytes::Bytes::from_static(crate::maintenance::KEY)),
        ..keel_engine::Options::default()
    };
    o.wal.thread_start = LOG_THREAD_START.get().copied();
    o.wal.sync_policy = match (file.sync_policy.as_deref(), file.sync_interval_ms) {
        (None | Some("always"), None) => keel_wal::SyncPolicy::Always,
        (Some("interval"), Some(0)) => bail!("sync_interval_ms must be positive"),
        (Some("interval"), ms) => {
            keel_wal::SyncPolicy::Interval(Duration::from_millis(ms.unwrap_or(1000)))
        }
        (Some("never"), None) => keel_wal::SyncPolicy::Never,
        (_, Some(_)) => bail!("sync_interval_ms needs sync_policy = \"interval\""),
        (Some(other), _) => {
            bail!("sync_policy {other:?}: use \"always\", \"interval\" or \"never\"")
        }
    };
    if let Some(b) = file.checkpoint_log_bytes {
        o.checkpoint_log_bytes = b;
    }
    if let Some(secs) = file.checkpoint_interval_secs {
        o.checkpoint_interval = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let Some(secs) = file.retention_secs {
        o.retention = Duration::from_secs(secs);
    }
    Ok(o)
}

/// Resolved settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    /// Every user, `default` included; built from `requirepass` and `[[users]]` (which hold
    /// only the passwords' SHA-256).
    pub users: Arc<Users>,
    /// `Some`: the port speaks TLS only.
    pub tls: Option<Tls>,
    pub log_level: tracing::Level,
    pub max_clients: usize,
    /// The runtime's worker threads.
    pub workers: usize,
    pub idle_timeout: Option<Duration>,
    /// Port of the Prometheus endpoint (`None`: no endpoint).
    pub metrics_port: Option<u16>,
    pub limits: Limits,
    pub max_request_bytes: usize,
    pub engine: keel_engine::Options,
    /// `Some`: run as a cluster node.
    pub cluster: Option<ClusterSettings>,
    /// `Some`: keep the audit log.
    pub audit: Option<crate::audit::Options>,
    /// The keyspace notifications on at start (see `server::notify`).
    pub notify_keyspace_events: u32,
}

/// `keel serve --node-id` settings.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub node_id: u64,
    pub raft_port: u16,
    pub raft_advertise: Option<String>,
    pub advertise: Option<String>,
    /// The peers' ids and raft addresses.
    pub peers: Vec<(u64, String)>,
    pub stale_reads: bool,
    pub snapshot_every: u64,
}

fn cluster_settings(args: &ServeArgs, port: u16) -> anyhow::Result<Option<ClusterSettings>> {
    let Some(node_id) = args.node_id else {
        if !args.peers.is_empty()
            || args.raft_port.is_some()
            || args.raft_advertise.is_some()
            || args.advertise.is_some()
        {
            bail!("--peers, --raft-port, --raft-advertise and --advertise need --node-id");
        }
        return Ok(None);
    };
    let peers = args
        .peers
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("peer {p:?}: expected ID=HOST:PORT"))?;
            let id: u64 = id
                .parse()
                .with_context(|| format!("peer {p:?}: the id must be a number"))?;
            if id == node_id {
                bail!("peer {p:?} has this node's own id {node_id}");
            }
            Ok((id, addr.to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let raft_port = match args.raft_port {
        Some(p) => p,
        None => port
            .checked_add(10_000)
            .context("--port + 10000 is not a port; give --raft-port")?,
    };
    Ok(Some(ClusterSettings {
        node_id,
        raft_port,
        raft_advertise: args.raft_advertise.clone(),
        advertise: args.advertise.clone(),
        peers,
        stale_reads: args.stale_reads,
        snapshot_every: args.raft_snapshot_every.unwrap_or(100_000).max(1),
    }))
}

impl Settings {
    /// Defaults, overridden by the file `args.config` names (if any), overridden by `args`.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let engine = engine_options(&file)?;
        let bind = args
            .bind
            .clone()
            .or(file.bind)
            .unwrap_or_else(|| "127.0.0.1".into());
        let bind: IpAddr = bind
            .parse()
            .with_context(|| format!("bind address {bind:?} is not an IP address"))?;
        let level = args
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        let log_level = level.parse().map_err(|_| {
            anyhow::anyhow!("log level {level:?}: use error, warn, info, debug or trace")
        })?;
        let limits = Limits {
            bulk_bytes_max: file.max_bulk_bytes.unwrap_or(engine.value_bytes_max),
            multibulk_len_max: file.max_multibulk_len.unwrap_or(1 << 20),
            inline_bytes_max: file.max_inline_bytes.unwrap_or(64 << 10),
        };
        let requirepass = args
            .requirepass
            .clone()
            .or(file.requirepass)
            .map(|p| p.0)
            .filter(|p| !p.is_empty());
        // Only a config file has [[users]], so Users::new fails only when there is one.
        let users = Users::new(requirepass, &file.users).with_context(|| {
            let path = args.config.as_deref().unwrap_or(Path::new("?"));
            format!("[[users]] in config file {}", path.display())
        })?;
        let tls = tls::configure(
            args.tls_cert.clone().or(file.tls_cert_file),
            args.tls_key.clone().or(file.tls_key_file),
            args.tls_ca.clone().or(file.tls_ca_file),
        )?;
        let port = args.port.or(file.port).unwrap_or(7379);
        let cluster = cluster_settings(args, port)?;
        let dir = args
            .dir
            .clone()
            .or(file.dir)
            .unwrap_or_else(|| "keel-data".into());
        let mut engine = engine;
        if let Some(key_file) = args
            .encryption_key_file
            .clone()
            .or(file.encryption_key_file)
        {
            engine.wal.keyring = Some(load_keyring(&key_file, &dir)?);
        }
        let keyring = engine.wal.keyring.clone();
        let notify = file.notify_keyspace_events.as_deref().unwrap_or("");
        let Some(notify_keyspace_events) = crate::server::notify::parse(notify.as_bytes()) else {
            bail!(
                "notify_keyspace_events {notify:?}: {}",
                crate::server::notify::INVALID
            );
        };
        let s = Settings {
            dir,
            bind,
            port,
            users: Arc::new(users),
            tls,
            log_level,
            max_clients: args.max_clients.or(file.max_clients).unwrap_or(1000),
            workers: (args.workers.or(file.workers)).unwrap_or_else(default_workers),
            idle_timeout: args
                .idle_timeout_secs
                .or(file.idle_timeout_secs)
                .filter(|&s| s > 0)
                .map(Duration::from_secs),
            metrics_port: args.metrics_port.or(file.metrics_port),
            max_request_bytes: file.max_request_bytes.unwrap_or(32 << 20),
            limits,
            engine,
            cluster,
            audit: (args.audit || file.audit.unwrap_or(false)).then(|| {
                let d = crate::audit::Options::default();
                crate::audit::Options {
                    file_bytes_max: file.audit_file_bytes_max.unwrap_or(d.file_bytes_max),
                    files_max: file.audit_files_max.unwrap_or(d.files_max),
                    keyring,
                    ..d
                }
            }),
            notify_keyspace_events,
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_clients == 0 {
            bail!("max_clients must be at least 1");
        }
        if !(1..=WORKERS_MAX).contains(&self.workers) {
            bail!("workers must be from 1 to {WORKERS_MAX}");
        }
        let l = &self.limits;
        if l.bulk_bytes_max == 0 || l.multibulk_len_max == 0 || l.inline_bytes_max == 0 {
            bail!("max_bulk_bytes, max_multibulk_len and max_inline_bytes must be positive");
        }
        if self.max_request_bytes < l.bulk_bytes_max.max(l.inline_bytes_max) {
            bail!(
                "max_request_bytes ({}) must hold at least one max_bulk_bytes ({}) and one max_inline_bytes ({}) request",
                self.max_request_bytes,
                l.bulk_bytes_max,
                l.inline_bytes_max
            );
        }
        if let Some(a) = &self.audit {
            if a.files_max == 0 || a.file_bytes_max < 4096 {
                bail!("audit_files_max must be at least 1 and audit_file_bytes_max at least 4096");
            }
        }
        Ok(())
    }
}

/// Loads the encryption keyring, refusing a key file others can read or one inside the data
/// directory it protects.
pub fn load_keyring(key_file: &Path, dir: &Path) -> anyhow::Result<Arc<keel_wal::Keyring>> {
    keel_wal::crypt::check_key_outside(key_file, dir)?;
    Ok(Arc::new(keel_wal::Keyring::load(key_file)?))
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| config_error(path, &text, &e))
}

/// A config file error that quotes nothing from the file (P14). toml's own `Display` prints the
/// offending line, and serde's messages quote the value ("invalid type: integer `123`"); either
/// can be a password or a hash. This names the file, the line, the column and the key instead,
/// and keeps the message without the value. The error carries no source, so the toml error
/// cannot be printed further down the chain either.
fn config_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let mut at = format!("config file {}", path.display());
    let mut value = None;
    if let Some(span) = e.span() {
        let (line, column) = line_column(text, span.start);
        at.push_str(&format!(", line {}, column {}", line + 1, column + 1));
        let line_text = text.split('\n').nth(line).unwrap_or("");
        if let Some((key, v)) = line_text.split_once('=') {
            let key = key.trim();
            if !key.is_empty()
                && key
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
            {
                at.push_str(&format!(", key `{key}`"));
            }
            value = Some(v.trim_matches(|c: char| c.is_whitespace() || "\"'[]{},".contains(c)));
        }
        if let Some(table) = text
            .split('\n')
            .take(line + 1)
            .map(str::trim)
            .filter(|l| l.starts_with('['))
            .last()
            .filter(|l| l.ends_with(']'))
        {
            at.push_str(&format!(" in {table}"));
        }
    }
    let mut message = redact(e.message().trim());
    // Belt and braces: whatever the message says, it must not contain the value on that line.
    if value.is_some_and(|v| v.len() >= 3 && message.contains(v)) {
        message = "invalid value".into();
    }
    anyhow::anyhow!("{at}: {message}")
}

/// Zero-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count();
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count();
    (line, column)
}

/// A toml or serde error message without the value it may quote. serde's shapes are
/// "invalid type: KIND `VALUE`, expected WHAT", the same with "invalid value", and "unknown
/// variant `VALUE`, expected ONE OF"; toml's parser messages describe syntax and quote only
/// the tokens it expected. An unknown field's name is kept: it is the key, not a value.
fn redact(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = rest.split(['`', '"', ',']).next().unwrap_or("").trim();
            let expected = rest
                .rsplit_once(", expected ")
                .map_or(String::new(), |(_, w)| format!(", expected {w}"));
            return format!("{prefix}{kind}{expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest
            .split_once(", expected ")
            .map_or(String::new(), |(_, w)| format!(", expected {w}"));
        return format!("unknown variant{expected}");
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults_apply() {
        let dir = std::env::temp_dir().join(format!("keel-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keel.toml");
        std::fs::write(
            &path,
            "port = 7000\nbind = \"0.0.0.0\"\nrequirepass = \"pw\"\nmax_multibulk_len = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            port: Some(7001),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.port, 7001);
        assert_eq!(s.bind.to_string(), "0.0.0.0");
        assert!(s.users.authenticate(b"default", b"pw").is_some());
        let flagged = ServeArgs {
            requirepass: Some(Secret("flag-secret".into())),
            ..Default::default()
        };
        let with_flag = Settings::resolve(&flagged).unwrap();
        assert!(with_flag
            .users
            .authenticate(b"default", b"flag-secret")
            .is_some());
        assert!(!format!("{flagged:?} {with_flag:?}").contains("flag-secret"));
        assert_eq!(s.limits.multibulk_len_max, 10);
        assert_eq!(s.limits.bulk_bytes_max, 8 << 20);
        assert_eq!(s.dir, PathBuf::from("keel-data"));
        std::fs::write(&path, "prot = 1\n").unwrap();
        let e = Settings::resolve(&args).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn config_errors_quote_no_value() {
        let e = |text: &str| {
            let err = toml::from_str::<FileConfig>(text).unwrap_err();
            config_error(Path::new("k.toml"), text, &err).to_string()
        };
        assert_eq!(
            e("port = 1\nrequirepass = 12345678\n"),
            "config file k.toml, line 2, column 15, key `requirepass`: invalid type: integer, \
             expected a string"
        );
        let m = e("[[users]]\nname = \"a\"\npassword_sha256 = \"x\"\npermissions = [\"s3cret\"]\n");
        assert!(m.starts_with("config file k.toml, line 4, column 16, key `permissions` in [[users]]: unknown variant, expected one of `read`"), "{m}");
        assert!(!e("requirepass = s3cret\n").contains("s3cret"));
        assert_eq!(
            redact("invalid value: string \"s3cret\", expected a port"),
            "invalid value: string, expected a port"
        );
        assert_eq!(line_column("a\nbé c", 6), (1, 3));
    }

    #[test]
    fn engine_keys_from_the_file() {
        let parse = |text: &str| -> anyhow::Result<keel_engine::Options> {
            engine_options(&toml::from_str::<FileConfig>(text)?)
        };
        let d = parse("").unwrap();
        assert_eq!(d.wal.sync_policy, keel_wal::SyncPolicy::Always);
        assert_eq!(d.retention, Duration::ZERO);
        let o = parse(
            "sync_policy = \"interval\"\nsync_interval_ms = 250\ncheckpoint_log_bytes = 1000\n\
             checkpoint_interval_secs = 0\nretention_secs = 3600\n",
        )
        .unwrap();
        assert_eq!(
            o.wal.sync_policy,
            keel_wal::SyncPolicy::Interval(Duration::from_millis(250))
        );
        assert_eq!(o.checkpoint_log_bytes, 1000);
        assert_eq!(o.checkpoint_interval, None);
        assert_eq!(o.retention, Duration::from_secs(3600));
        assert_eq!(
            parse("sync_policy = \"never\"").unwrap().wal.sync_policy,
            keel_wal::SyncPolicy::Never
        );
        for bad in [
            "sync_policy = \"sometimes\"",
            "sync_interval_ms = 5",
            "sync_policy = \"interval\"\nsync_interval_ms = 0",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
