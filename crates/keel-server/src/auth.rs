//! Who a connection is and what it may run.
//!
//! Two sources of users:
//! - `requirepass` is the password of the user `default`, which may run every command;
//! - `[[users]]` tables in the config file add named users, each with the SHA-256 of its
//!   password (`password_sha256`, 64 hex digits; `keel hash-password` prints it) and a list of
//!   permissions out of `read`, `write` and `admin`. An entry named `default` configures the
//!   default user instead (and then `requirepass` must not be set).
//!
//! A connection starts as `default` only when `default` needs no password: that is, when
//! neither `requirepass` nor any `[[users]]` entry is configured. Configuring any user turns
//! authentication on; the default user is then disabled unless it is configured itself.
//!
//! Why SHA-256 and not a slow KDF: these passwords are shared secrets between a server and its
//! client programs, not something a person memorises, and AUTH runs on every new connection,
//! before the client is known. A slow KDF (argon2, scrypt) would let anyone who can reach the
//! port burn tens of milliseconds of CPU and megabytes of memory per AUTH attempt, which is a
//! cheap way to starve the durable write path. A random password of 128 bits or more
//! (`keel hash-password --generate` makes one) cannot be brute-forced from its SHA-256, and the
//! hash is the one Redis's ACL stores, so hashes move between the two. Comparison is constant
//! time, and an unknown user costs the same hash and comparison as a known one.
//!
//! Passwords never reach a log or an error message, and neither do rejected user names (people
//! type passwords into user name fields).

use std::fmt;
use std::io::{IsTerminal, Read};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Deserialize;

use crate::cmd::{self, Command, Flags};
use crate::HashMap;

pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
pub const NOAUTH: &str = "NOAUTH Authentication required.";

/// The user that `requirepass` and a bare `AUTH <password>` refer to.
pub const DEFAULT_USER: &str = "default";
/// Longest user name accepted in the config file.
const USER_NAME_BYTES_MAX: usize = 128;
/// Longest password `keel hash-password` reads.
const PASSWORD_BYTES_MAX: usize = 4096;

/// A permission a `[[users]]` entry can grant. What each command needs comes from its
/// [`Flags`] in the command table ([`cmd::COMMANDS`]), and nowhere else.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Commands that return stored data ([`Flags::READ`]): GET, MGET, EXISTS, TTL, SCAN, KEYS,
    /// DBSIZE, KEEL.VERSION, WATCH, and with `write` also GETSET, GETDEL, GETEX with an
    /// option, SET … GET, INCR and the other counters, RENAME.
    Read,
    /// Commands that change data ([`Flags::WRITE`]): SET, DEL, APPEND, EXPIRE, KEEL.CAS,
    /// KEEL.IDEM, …
    Write,
    /// Commands that act on the whole server ([`Flags::ADMIN`]): CONFIG, SHUTDOWN, SAVE,
    /// BGSAVE, KEEL.BACKUP, KEEL.CLUSTER, and with `write` FLUSHALL and FLUSHDB.
    Admin,
}

/// One `[[users]]` table of the config file.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// SHA-256 of the password, as 64 hexadecimal digits. Checked in [`Users::new`], not by
    /// serde, so that a password pasted here by mistake is never echoed in an error.
    pub password_sha256: String,
    pub permissions: Vec<Permission>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

/// What one user may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Perms {
    read: bool,
    write: bool,
    admin: bool,
}

impl Perms {
    const ALL: Perms = Perms {
        read: true,
        write: true,
        admin: true,
    };

    /// Whether these permissions cover everything `need` asks for.
    fn allows(self, need: Flags) -> bool {
        (self.read || !need.contains(Flags::READ))
            && (self.write || !need.contains(Flags::WRITE))
            && (self.admin || !need.contains(Flags::ADMIN))
    }
}

struct Account {
    /// SHA-256 of the password; `None` only for a default user that needs no password.
    password_sha256: Option<[u8; 32]>,
    perms: Perms,
}

/// Every user the server knows, fixed at start-up.
pub struct Users {
    /// Names are shared, so that an audit entry can name a user without copying the name.
    accounts: HashMap<std::sync::Arc<str>, Account>,
}

/// An authenticated user's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User(pub String);

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.accounts.iter().map(|(n, a)| (&**n, a.perms)).collect();
        names.sort_by_key(|(n, _)| *n);
        f.debug_struct("Users").field("accounts", &names).finish()
    }
}

impl Users {
    /// Builds the user table from `requirepass` and the config file's `[[users]]`. Errors name
    /// the offending user and say what to change; they never contain a password or hash.
    pub fn new(requirepass: Option<String>, users: &[UserConfig]) -> anyhow::Result<Users> {
        let mut accounts = HashMap::default();
        for (i, u) in users.iter().enumerate() {
            check_user_name(&u.name).with_context(|| format!("[[users]] entry {}", i + 1))?;
            let hash = parse_sha256_hex(&u.password_sha256).with_context(|| {
                format!(
                    "user {:?}: password_sha256 must be 64 hexadecimal digits, the SHA-256 of the \
                     password (`keel hash-password` prints it), never the password itself",
                    u.name
                )
            })?;
            let mut perms = Perms::default();
            for p in &u.permissions {
                match p {
                    Permission::Read => perms.read = true,
                    Permission::Write => perms.write = true,
                    Permission::Admin => perms.admin = true,
                }
            }
            let account = Account {
                password_sha256: Some(hash),
                perms,
            };
            if accounts.insert(u.name.as_str().into(), account).is_some() {
                bail!("user {:?} is configured twice", u.name);
            }
        }
        match requirepass {
            Some(_) if accounts.contains_key(DEFAULT_USER) => bail!(
                "requirepass and a [[users]] entry named \"default\" both set the default user's \
                 password: keep one"
            ),
            Some(p) => {
                accounts.insert(
                    DEFAULT_USER.into(),
                    Account {
                        password_sha256: Some(sha256(p.as_bytes())),
                        perms: Perms::ALL,
                    },
                );
            }
            // Nothing configured at all: an open server, as before ACLs existed.
            None if accounts.is_empty() => {
                accounts.insert(
                    DEFAULT_USER.into(),
                    Account {
                        password_sha256: None,
                        perms: Perms::ALL,
                    },
                );
            }
            // Named users and no default entry: the default user is disabled.
            None => {}
        }
        Ok(Users { accounts })
    }

    /// Whether a new connection must authenticate before it can run anything.
    pub fn password_required(&self) -> bool {
        self.initial().is_none()
    }

    /// The user a new connection starts as: `default` when it needs no password.
    pub fn initial(&self) -> Option<User> {
        self.accounts
            .get(DEFAULT_USER)
            .filter(|a| a.password_sha256.is_none())
            .map(|_| User(DEFAULT_USER.into()))
    }

    /// Names of the configured users, sorted, for the start-up log.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.accounts.keys().map(|k| &**k).collect();
        v.sort_unstable();
        v
    }

    /// The configured user's name, shared, if `name` is one.
    pub fn name(&self, name: &str) -> Option<std::sync::Arc<str>> {
        self.accounts.get_key_value(name).map(|(n, _)| n.clone())
    }

    /// The user, if `password` is theirs. Takes the same time whether or not the user exists
    /// and however much of the password matches.
    pub fn authenticate(&self, user: &[u8], password: &[u8]) -> Option<User> {
        let given = sha256(password);
        let account = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.accounts.get_key_value(u));
        // An unknown user is compared against a hash no password has, for equal work.
        let expected = match account {
            Some((_, a)) => a.password_sha256,
            None => Some([0; 32]),
        };
        let matched = match expected {
            Some(h) => constant_time_eq(&h, &given),
            None => true, // the default user without a password accepts any, as in Redis
        };
        match account {
            Some((name, _)) if matched => Some(User(name.to_string())),
            _ => None,
        }
    }

    /// Whether `user` may run what needs `need` (a connection command needs nothing).
    pub fn permits(&self, user: &User, need: Flags) -> bool {
        need.is_connection()
            || self
                .accounts
                .get(user.0.as_str())
                .is_some_and(|a| a.perms.allows(need))
    }

    /// Whether `user` may run the command `args` (already looked up as `spec` and arity-checked).
    /// What is needed comes from the command table, narrowed by the arguments ([`cmd::flags`]:
    /// SET without GET does not read). KEEL.IDEM also needs what the command it wraps needs,
    /// with that command's arguments. The pipeline and ACL DRYRUN both ask this.
    pub fn check(&self, user: &User, spec: &Command, args: &[Bytes]) -> Result<(), Denied> {
        if !self.permits(user, cmd::flags(spec, args)) {
            // Redis names a subcommand as `container|sub`, for example 'config|get'.
            let command = match args
                .get(1)
                .and_then(|s| crate::docs::subcommand(spec.name, s))
            {
                Some(sub) => format!("{}|{sub}", spec.name),
                None => spec.name.to_string(),
            };
            return Err(Denied {
                user: user.0.clone(),
                command,
            });
        }
        if spec.name == "keel.idem" {
            if let Some(inner) = args.get(2).and_then(|n| cmd::lookup(&lossy_lower(n))) {
                if !self.permits(user, cmd::flags(inner, &args[2..])) {
                    return Err(Denied {
                        user: user.0.clone(),
                        command: inner.name.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every user as ACL USERS, LIST and GETUSER show them, sorted by name. The default user is
    /// always there, as in Redis: when the config file leaves it out it is shown disabled, with
    /// no password and no permission, which is what it amounts to (nobody can log in as it).
    pub fn views(&self) -> Vec<UserView<'_>> {
        let mut v: Vec<UserView<'_>> = (self.accounts.iter())
            .map(|(name, a)| UserView {
                name,
                enabled: true,
                password_sha256: a.password_sha256.as_ref(),
                read: a.perms.read,
                write: a.perms.write,
                admin: a.perms.admin,
            })
            .collect();
        if !self.accounts.contains_key(DEFAULT_USER) {
            v.push(UserView {
                name: DEFAULT_USER,
                enabled: false,
                password_sha256: None,
                read: false,
                write: false,
                admin: false,
            });
        }
        v.sort_unstable_by_key(|u| u.name);
        v
    }
}

/// One user as the ACL commands describe it (see [`Users::views`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserView<'a> {
    pub name: &'a str,
    /// False only for a default user the config file leaves disabled.
    pub enabled: bool,
    /// `None`: no password is needed (the default user of a server without users), or, when
    /// not enabled, none can work.
    pub password_sha256: Option<&'a [u8; 32]>,
    pub read: bool,
    pub write: bool,
    pub admin: bool,
}

impl UserView<'_> {
    /// Whether this user may run what needs `need`: [`Users::permits`]'s rule, from the view.
    pub fn permits(&self, need: Flags) -> bool {
        let perms = Perms {
            read: self.read,
            write: self.write,
            admin: self.admin,
        };
        need.is_connection() || (self.enabled && perms.allows(need))
    }

    /// Whether it holds every permission (the default user of `requirepass`, for one).
    pub fn is_all(&self) -> bool {
        self.read && self.write && self.admin
    }
}

/// A command refused by [`Users::check`]: who ran what (`config|get` for a subcommand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub user: String,
    pub command: String,
}

impl Denied {
    /// Redis's text without its error code, as ACL DRYRUN replies with it.
    pub fn message(&self) -> String {
        format!(
            "User {} has no permissions to run the '{}' command",
            self.user, self.command
        )
    }
}

/// Redis's NOPERM error, as the client gets it.
impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NOPERM {}", self.message())
    }
}

fn lossy_lower(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).to_lowercase()
}

fn check_user_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > USER_NAME_BYTES_MAX
        || !name.bytes().all(|c| (b'!'..=b'~').contains(&c))
    {
        // The name is not echoed: a name that is not one may be a password typed in the
        // wrong field.
        bail!(
            "the user name must be 1 to {USER_NAME_BYTES_MAX} printable ASCII characters \
             without spaces"
        );
    }
    Ok(())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hexadecimal, two digits a byte (password hashes, the audit log's chain).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn parse_sha256_hex(s: &str) -> anyhow::Result<[u8; 32]> {
    if s.len() != 64 {
        bail!("not 64 characters long");
    }
    match keel_wal::crypt::unhex(s.as_bytes()).map(<[u8; 32]>::try_from) {
        Some(Ok(out)) => Ok(out),
        _ => bail!("not hexadecimal"),
    }
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    std::hint::black_box(diff) == 0
}

/// `keel hash-password`: prints the `password_sha256` of a password for a `[[users]]` entry.
#[derive(clap::Args, Debug)]
pub struct HashPasswordArgs {
    /// Make a random password (256 bits, as 64 hex digits) instead of reading one; print the
    /// password on the first line and its password_sha256 on the second.
    #[arg(long)]
    pub generate: bool,
}

/// Runs `keel hash-password`. The password is read from standard input (one line; a trailing
/// newline is not part of it), never from the command line, where the process list would show
/// it.
pub fn hash_password_cmd(args: HashPasswordArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.generate {
        let mut raw = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| anyhow::anyhow!("the system's random number generator failed"))?;
        let password = hex(&raw);
        eprintln!(
            "line 1: a new password, for the client; line 2: its password_sha256, for [[users]]"
        );
        println!("{password}\n{}", hex(&sha256(password.as_bytes())));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("password (it is shown as you type; pipe it in to avoid that), then Enter:");
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(PASSWORD_BYTES_MAX as u64 + 3)
        .read_to_end(&mut buf)
        .context("reading the password from standard input")?;
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let password = line.strip_suffix(b"\r").unwrap_or(line);
    if password.is_empty() {
        bail!("no password on standard input");
    }
    if password.len() > PASSWORD_BYTES_MAX {
        bail!("password longer than {PASSWORD_BYTES_MAX} bytes");
    }
    if password.len() < 16 {
        eprintln!(
            "warning: a short password can be guessed from its SHA-256; prefer \
             `keel hash-password --generate`"
        );
    }
    println!("{}", hex(&sha256(password)));
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: &str, permissions: &[Permission]) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_sha256: hex(&sha256(password.as_bytes())),
            permissions: permissions.to_vec(),
        }
    }

    #[test]
    fn passwords() {
        let u = Users::new(Some("secret".into()), &[]).unwrap();
        assert!(u.initial().is_none());
        assert!(u.authenticate(b"default", b"secret").is_some());
        assert!(u.authenticate(b"default", b"secreT").is_none());
        assert!(u.authenticate(b"default", b"secret1").is_none());
        assert!(u.authenticate(b"default", b"").is_none());
        assert!(u.authenticate(b"other", b"secret").is_none());
        let open = Users::new(None, &[]).unwrap();
        assert!(open.initial().is_some());
        assert!(!open.password_required());
    }

    #[test]
    fn sha256_matches_the_known_vector() {
        // FIPS 180-2, "abc".
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            parse_sha256_hex(&hex(&sha256(b"abc"))).unwrap(),
            sha256(b"abc")
        );
        let upper = hex(&sha256(b"abc")).to_uppercase();
        assert_eq!(parse_sha256_hex(&upper).unwrap(), sha256(b"abc"));
        assert!(parse_sha256_hex("abc").is_err());
        assert!(parse_sha256_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn acl_users_and_permissions() {
        use Permission::*;
        let u = Users::new(
            None,
            &[
                user("reader", "r-pass", &[Read]),
                user("writer", "w-pass", &[Write]),
                user("boss", "b-pass", &[Read, Write, Admin]),
            ],
        )
        .unwrap();
        // Users configured and no default entry: the default user is disabled.
        assert!(u.initial().is_none());
        assert!(u.password_required());
        assert!(u.authenticate(b"default", b"").is_none());
        assert!(u.authenticate(b"default", b"r-pass").is_none());
        assert!(u.authenticate(b"reader", b"w-pass").is_none());
        assert!(u.authenticate(b"nobody", b"r-pass").is_none());
        assert!(u.authenticate(b"\xff", b"r-pass").is_none());
        let r = u.authenticate(b"reader", b"r-pass").unwrap();
        let w = u.authenticate(b"writer", b"w-pass").unwrap();
        let b = u.authenticate(b"boss", b"b-pass").unwrap();
        assert_eq!(r, User("reader".into()));
        for (who, read, write, admin) in [(&r, true, false, false), (&w, false, true, false)] {
            assert!(u.permits(who, Flags::NONE));
            assert_eq!(u.permits(who, Flags::READ), read);
            assert_eq!(u.permits(who, Flags::WRITE), write);
            assert_eq!(u.permits(who, Flags::ADMIN), admin);
        }
        assert!(u.permits(&b, Flags::ADMIN));
        assert!(!u.permits(&User("ghost".into()), Flags::READ));

        let set = cmd::lookup("set").unwrap();
        let args = |a: &[&str]| -> Vec<Bytes> {
            a.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect()
        };
        assert_eq!(
            u.check(&r, set, &args(&["SET", "k", "v"]))
                .unwrap_err()
                .to_string(),
            "NOPERM User reader has no permissions to run the 'set' command"
        );
        let config = cmd::lookup("config").unwrap();
        assert_eq!(
            u.check(&w, config, &args(&["CONFIG", "GET", "port"]))
                .unwrap_err()
                .to_string(),
            "NOPERM User writer has no permissions to run the 'config|get' command"
        );
        // KEEL.IDEM needs the wrapped command's permission too.
        let idem = cmd::lookup("keel.idem").unwrap();
        assert!(u
            .check(&w, idem, &args(&["KEEL.IDEM", "id", "SET", "k", "v"]))
            .is_ok());
        assert_eq!(
            u.check(&w, idem, &args(&["KEEL.IDEM", "id", "GET", "k"]))
                .unwrap_err()
                .to_string(),
            "NOPERM User writer has no permissions to run the 'get' command"
        );
    }

    #[test]
    fn a_default_entry_configures_the_default_user() {
        let u = Users::new(None, &[user("default", "d", &[Permission::Read])]).unwrap();
        assert!(u.initial().is_none());
        let d = u.authenticate(b"default", b"d").unwrap();
        assert!(u.permits(&d, Flags::READ));
        assert!(!u.permits(&d, Flags::WRITE));
    }

    #[test]
    fn bad_configs_are_refused_without_echoing_secrets() {
        let both = Users::new(Some("x".into()), &[user("default", "d", &[])]);
        assert!(format!("{:#}", both.unwrap_err()).contains("keep one"));
        let twice = Users::new(None, &[user("a", "1", &[]), user("a", "2", &[])]);
        assert!(format!("{:#}", twice.unwrap_err()).contains("twice"));
        let spaced = Users::new(None, &[user("a", "1", &[]), user("my pass", "1", &[])]);
        let e = format!("{:#}", spaced.unwrap_err());
        assert!(e.contains("printable") && e.contains("entry 2"), "{e}");
        assert!(!e.contains("my pass"), "{e}");
        let mut plain = user("app", "", &[]);
        plain.password_sha256 = "hunter2-hunter2".into();
        let e = format!("{:#}", Users::new(None, &[plain.clone()]).unwrap_err());
        assert!(e.contains("64 hexadecimal digits"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(!format!("{plain:?}").contains("hunter2"));
    }

    #[test]
    fn config_syntax() {
        #[derive(Deserialize)]
        struct F {
            users: Vec<UserConfig>,
        }
        let f: F = toml::from_str(
            "[[users]]\nname = \"app\"\npassword_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\npermissions = [\"read\", \"write\"]\n",
        )
        .unwrap();
        let u = Users::new(None, &f.users).unwrap();
        let app = u.authenticate(b"app", b"abc").unwrap();
        assert!(u.permits(&app, Flags::WRITE) && !u.permits(&app, Flags::ADMIN));
        let bad = toml::from_str::<F>(
            "[[users]]\nname = \"app\"\npassword_sha256 = \"\"\npermissions = [\"reed\"]\n",
        );
        let e = bad.err().unwrap().to_string();
        assert!(e.contains("unknown variant"), "{e}");
    }
}
