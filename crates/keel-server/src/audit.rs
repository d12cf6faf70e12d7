//! The audit log: who logged in, who was refused, who ran which admin command, and when the
//! server started, recovered and stopped, as a hash chain of JSON lines in `DIR/audit/`.
//!
//! # Format
//!
//! Files `audit-<first seq:020>.jsonl`, one entry a line:
//!
//! ```text
//! {"seq":7,"at_ms":1796392556289,"event":"admin","user":"default","addr":"127.0.0.1:50312",
//!  "command":"flushall","prev":"<64 hex digits>"}
//! ```
//!
//! `seq` counts from 1 without gaps across files; `prev` is the SHA-256 (hex) of the previous
//! entry's line, its bytes without the newline (64 zeros before entry 1). Events: `start`,
//! `recovery` and `stop` (`detail`), `auth` (`user`, `addr`, `ok`), `denied` (`user`, `addr`,
//! `command`), `admin` (`user`, `addr`, `command`: the name and, for a container command, its
//! subcommand; never an argument value, so no password, hash or key reaches the log).
//!
//! # Durability and the anchor
//!
//! One thread appends entries and syncs them in groups, at most every `GROUP_EVERY` (5 ms)
//! unless an admin command waits. An admin command is recorded, and the record synced, before
//! the command runs; AUTH and denials are group-committed, and identical ones in a group are one
//! entry with their `count`. After a group an admin command waited for, and otherwise at most
//! every `ANCHOR_EVERY` (50 ms), the chain's head (seq and hash) is written into the engine's
//! system namespace (`server.audit_head`), which the engine's log and checkpoints keep: `keel
//! audit verify` compares the files with it, so entries cut from the end are detected up to the
//! last anchor.
//! (On a cluster node the engine is replicated, not this node's own: there is no anchor.)
//!
//! # Failures
//!
//! A group that cannot be written or synced is lost whole (its waiters hear why; an admin
//! command is then refused). The file is cut back to its last synced length and the next group
//! tries again, so a full disk that is freed heals without a restart. Unlike the engine's log
//! (P5), the sync is retried on the same file: what a failed sync may have dropped is cut first,
//! and nothing acknowledged depends on it.
//!
//! # Encryption
//!
//! With an encryption keyring, an entry's line is `~` and then the lowercase hex of its JSON
//! sealed with the keyring's first key (`keel_wal::crypt`, associated data `keel audit`). The
//! chain hashes the JSON, not the line, so it is the same encrypted or not, and a log may hold
//! both kinds of lines (encryption switched on). A sealed line whose key is missing, unknown or
//! wrong stops opening and verification with a key error; it is never taken for a torn tail.
//!
//! # Rotation and retention
//!
//! A file is closed past `audit_file_bytes_max`; past `audit_files_max` files the oldest is
//! removed, but never the one that holds the head the database recorded. The oldest retained
//! entry's `prev` then points at a removed entry: verification starts from it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use keel_wal::Fs as _;
use serde::{Deserialize, Serialize};

use keel_wal::Keyring;

use crate::auth::{hex, sha256};

/// The audit directory under a data directory.
pub const DIR: &str = "audit";
/// The engine system entry that holds the chain's head: seq (u64 LE), then the SHA-256 of
/// that entry's line (32 bytes).
pub const ANCHOR_KEY: &[u8] = b"server.audit_head";

/// Settings (the config file's `audit`, `audit_file_bytes_max`, `audit_files_max`; the
/// keyring of `encryption_key_file`).
#[derive(Clone, Debug)]
pub struct Options {
    pub file_bytes_max: u64,
    pub files_max: usize,
    /// Seal new entries with its first key; every key opens.
    pub keyring: Option<Arc<Keyring>>,
    /// Most events waiting to be written; past it [`Audit::record`] drops and counts them, so a
    /// flood of failed logins cannot grow the server's memory. Default 65,536.
    pub queue_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            file_bytes_max: 64 << 20,
            files_max: 16,
            keyring: None,
            queue_max: 65_536,
        }
    }
}

/// A group's events as entries: identical logins and refusals (same event, user, address,
/// outcome and command) become one entry with their count, in the place of the first. A flood
/// of AUTH from a few connections so costs a few entries per group, not one per command. Every
/// other event stays an entry of its own, in order.
fn merge(events: Vec<Event>) -> Vec<(Event, u64)> {
    // The last few distinct mergeable entries are searched, newest first: a flood comes from a
    // few connections, and a wider search would cost more than the entries it saves.
    const RECENT: usize = 16;
    let mut out: Vec<(Event, u64)> = Vec::with_capacity(events.len().min(1024));
    let mut recent: Vec<usize> = Vec::with_capacity(RECENT);
    for ev in events {
        if matches!(ev.event, "auth" | "denied") {
            if let Some(&i) = recent.iter().rev().find(|&&i| out[i].0 == ev) {
                out[i].1 += 1;
                continue;
            }
            if recent.len() == RECENT {
                recent.remove(0);
            }
            recent.push(out.len());
        }
        out.push((ev, 1));
    }
    out
}

/// The first byte of a sealed entry's line.
const SEALED: u8 = b'~';
const AAD: &[u8] = b"keel audit";

/// The line that stores entry `json`: itself, or sealed.
fn seal_line(json: &[u8], keyring: Option<&Keyring>, out: &mut Vec<u8>) {
    match keyring {
        None => out.extend_from_slice(json),
        Some(k) => {
            out.push(SEALED);
            out.extend_from_slice(hex(&k.seal(AAD, json)).as_bytes());
        }
    }
}

/// The entry's JSON a stored line holds: `Ok(None)` if the line is not one keel wrote (damage,
/// or a torn write), `Err` if it is sealed and the keyring cannot open it.
pub fn open_line<'a>(
    line: &'a [u8],
    keyring: Option<&Keyring>,
) -> Result<Option<std::borrow::Cow<'a, [u8]>>, keel_wal::KeyError> {
    let Some(hexed) = line.strip_prefix(&[SEALED]) else {
        return Ok(Some(line.into()));
    };
    let Some(sealed) = keel_wal::crypt::unhex(hexed) else {
        return Ok(None);
    };
    if keel_wal::crypt::sealed_key_id(&sealed).is_none() {
        return Ok(None);
    }
    let what = "an audit entry";
    let Some(k) = keyring else {
        return Err(keel_wal::KeyError::Missing { what: what.into() });
    };
    Ok(Some(k.open(&what, AAD, &sealed)?.into()))
}

/// The entry a stored line holds, and the hash that chains it (of its JSON).
fn parse_line(
    line: &[u8],
    keyring: Option<&Keyring>,
) -> std::io::Result<Option<(Entry, [u8; 32])>> {
    let json = match open_line(line, keyring) {
        Ok(Some(j)) => j,
        Ok(None) => return Ok(None),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    Ok(serde_json::from_slice::<Entry>(&json)
        .ok()
        .map(|e| (e, sha256(&json))))
}

/// One entry as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub seq: u64,
    pub at_ms: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many identical events this entry stands for (auth and denied only; absent = 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub prev: String,
}

/// An entry as written: [`Entry`]'s fields, in its order, borrowed.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    at_ms: u64,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    prev: &'a str,
}

/// An event to record (an [`Entry`] without its place in the chain).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    pub event: &'static str,
    /// Shared, so that recording a login copies no string.
    pub user: Option<Arc<str>>,
    pub addr: Option<Arc<str>>,
    pub ok: Option<bool>,
    pub command: Option<String>,
    pub detail: Option<String>,
}

type Done = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The messages of one group.
#[derive(Default)]
struct Gathered {
    events: Vec<Event>,
    waiting: Vec<Done>,
    stop: bool,
}

impl Gathered {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Record(ev, done) => {
                self.events.push(ev);
                self.waiting.extend(done);
            }
            Msg::Stop => self.stop = true,
        }
    }
}

enum Msg {
    Record(Event, Option<Done>),
    Stop,
}

/// Between the starts of two groups of logins and refusals, unless an admin command waits.
const GROUP_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// Between two anchors of the chain's head, unless an admin command waits (see the writer).
const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Writes the chain's head somewhere else than the audit files.
pub type Anchor = Box<dyn FnMut(u64, &[u8; 32]) -> Result<(), String> + Send>;

/// The running audit log.
pub struct Audit {
    tx: mpsc::SyncSender<Msg>,
    stats: Arc<Stats>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What INFO and the metrics show of the audit log.
#[derive(Default)]
pub struct Stats {
    /// The last synced entry's seq.
    pub seq: AtomicU64,
    /// Groups that could not be written or synced.
    pub write_failures: AtomicU64,
    /// Events dropped because the queue was full, in all.
    pub dropped: AtomicU64,
    /// Dropped since the last `dropped` entry.
    unrecorded_drops: AtomicU64,
    /// The last failure's message, until a group is written again.
    pub last_error: Mutex<Option<String>>,
}

fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// The audit files in `dir`, oldest first, with the first seq their names give.
pub fn files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let seq = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|d| d.len() == 20)
            .and_then(|d| d.parse().ok())
            // Entries count from 1: a file named for seq 0 is not one keel wrote.
            .filter(|&seq: &u64| seq > 0);
        if let Some(seq) = seq {
            v.push((seq, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    keel_wal::StdFs.sync_dir(dir)
}

/// An anchor value's seq and hash.
fn parse_anchor(a: &[u8]) -> Option<(u64, [u8; 32])> {
    (a.len() == 40).then(|| {
        (
            u64::from_le_bytes(a[..8].try_into().expect("8 bytes")),
            a[8..].try_into().expect("32 bytes"),
        )
    })
}

/// What a file holds up to the first line that is not a whole entry continuing the chain.
#[derive(Default)]
struct Scanned {
    /// The last good entry's seq and line hash.
    head: Option<(u64, [u8; 32])>,
    /// Bytes up to and including its newline.
    whole: u64,
}

/// Reads `path` up to its first line that is not a whole entry or does not follow `after`
/// (`None`: the first line is taken as it is).
fn scan(
    path: &Path,
    mut after: Option<(u64, [u8; 32])>,
    keyring: Option<&Keyring>,
) -> std::io::Result<Scanned> {
    let mut out = Scanned::default();
    let mut r = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(out);
        }
        let Some((e, hash)) = parse_line(&line[..n - 1], keyring)? else {
            return Ok(out);
        };
        if after.is_some_and(|(seq, h)| seq.checked_add(1) != Some(e.seq) || e.prev != hex(&h)) {
            return Ok(out);
        }
        let h = (e.seq, hash);
        after = Some(h);
        out.head = Some(h);
        out.whole += n as u64;
    }
}

/// The line hash of the entry with seq `seq`, if the files hold it.
fn scan_for(dir: &Path, seq: u64, keyring: Option<&Keyring>) -> std::io::Result<Option<[u8; 32]>> {
    let Some((_, path)) = files(dir)?
        .into_iter()
        .rev()
        .find(|(first, _)| *first <= seq)
    else {
        return Ok(None);
    };
    let text = std::fs::read(path)?;
    for line in text.split(|&b| b == b'\n') {
        if let Some((e, hash)) = parse_line(line, keyring)? {
            if e.seq == seq {
                return Ok(Some(hash));
            }
        }
    }
    Ok(None)
}

/// The appending side, owned by the writer thread.
struct Writer {
    dir: PathBuf,
    opts: Options,
    file: File,
    file_bytes: u64,
    /// The last entry's seq and the SHA-256 of its line.
    head: (u64, [u8; 32]),
    buf: Vec<u8>,
    /// The entry being encoded, and its line as stored (sealed, with encryption).
    line: Vec<u8>,
    stored: Vec<u8>,
    /// The file's length and the head as of the last successful sync.
    synced: (u64, (u64, [u8; 32])),
    /// A write or sync failed since: the file may hold bytes past `synced`, to be cut before
    /// anything else is written.
    dirty: bool,
    /// The seq of the head last written into the database (`None`: none is kept, as on a
    /// cluster node): retention keeps the file that holds it.
    anchored: Option<u64>,
}

impl Writer {
    /// Opens `dir` for appending after its last whole entry, and returns with it what opening
    /// found that belongs on record: `torn` (a crash's unsynced tail) and `break` (entries the
    /// database's head says existed are gone) events.
    ///
    /// - Bytes after the last entry that parses and continues the chain were being written when
    ///   the process stopped (a torn group: a power cut can keep a later page and lose an
    ///   earlier one). They are moved into `torn-<unix ms>.bytes` beside the files, never
    ///   deleted, and cut.
    /// - A newest file with no entry (a crash right after a rotation created it) continues from
    ///   the file before it.
    /// - `anchor` is the head the database recorded. Files that end before it, or whose entry at
    ///   its seq has another hash, lost entries: that is recorded, and the chain goes on from
    ///   what the files hold.
    fn open(
        dir: &Path,
        opts: Options,
        anchor: Option<&[u8]>,
    ) -> std::io::Result<(Writer, Vec<(&'static str, String)>)> {
        keel_wal::fs::durable_create_dir_all(&keel_wal::StdFs, dir)?;
        let mut notes = Vec::new();
        let keyring = opts.keyring.as_deref();
        let existing = files(dir)?;
        let mut head = (0, [0u8; 32]);
        // The head before the newest file, in case that one holds no entry.
        if existing.len() >= 2 {
            if let Some(h) = scan(&existing[existing.len() - 2].1, None, keyring)?.head {
                head = h;
            }
        }
        let path = match existing.last() {
            None => dir.join(file_name(1)),
            Some((first, path)) => {
                if head.0 + 1 != *first {
                    head = (first - 1, [0u8; 32]);
                }
                path.clone()
            }
        };
        let found = if path.exists() {
            // The first entry of a file is taken as it is (its file was checked by name).
            scan(
                &path,
                (head.1 != [0u8; 32] || head.0 == 0).then_some(head),
                keyring,
            )?
        } else {
            Scanned::default()
        };
        let head = found.head.unwrap_or(head);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        if len > found.whole {
            let bytes = std::fs::read(&path)?;
            let aside = dir.join(format!("torn-{}.bytes", crate::server::now_ms()));
            std::fs::write(&aside, &bytes[found.whole as usize..])?;
            File::open(&aside)?.sync_all()?;
            sync_dir(dir)?;
            file.set_len(found.whole)?;
            file.sync_data()?;
            let note = format!(
                "{} bytes after seq {} in {} did not continue the chain (a group being written when the process stopped); moved to {}",
                len - found.whole,
                head.0,
                path.display(),
                aside.display()
            );
            tracing::warn!("audit: {note}");
            notes.push(("torn", note));
        }
        sync_dir(dir)?;
        let anchored = anchor.and_then(parse_anchor);
        if let Some((seq, hash)) = anchored {
            let lost = match scan_for(dir, seq, keyring)? {
                Some(h) if h == hash => None,
                Some(_) => Some("holds another entry there"),
                None if seq > head.0 => Some("ends before it"),
                None => Some("no longer holds it"),
            };
            if let Some(how) = lost {
                let note = format!(
                    "the database recorded seq {seq} as the chain's head, but the audit log {how} (it ends at seq {}): entries were lost or changed while the server was stopped",
                    head.0
                );
                tracing::error!("audit: {note}");
                notes.push(("break", note));
            }
        }
        let w = Writer {
            dir: dir.to_path_buf(),
            opts,
            file,
            file_bytes: found.whole,
            head,
            buf: Vec::new(),
            line: Vec::new(),
            stored: Vec::new(),
            synced: (found.whole, head),
            dirty: false,
            anchored: anchored.map(|a| a.0),
        };
        Ok((w, notes))
    }

    /// Appends and syncs `events`, all or none: after a failure the file is cut back to its
    /// last synced length (before the next write, if not at once), and the chain goes on from
    /// the last synced entry, so a disk that fails and then recovers (a full disk freed) leaves
    /// no partial or unsynced entry behind (fsync errors drop pages: nothing after a failed
    /// sync is trusted).
    fn write_group(&mut self, events: Vec<Event>, at_ms: u64) -> std::io::Result<()> {
        let r = (|| {
            if self.dirty {
                self.file.set_len(self.synced.0)?;
                self.dirty = false;
            }
            for (ev, count) in merge(events) {
                self.append(ev, count, at_ms)?;
            }
            self.sync()
        })();
        if r.is_err() {
            self.dirty = true;
            self.buf.clear();
            (self.file_bytes, self.head) = self.synced;
        }
        r
    }

    fn append(&mut self, ev: Event, count: u64, at_ms: u64) -> std::io::Result<()> {
        let (seq, prev) = self.head;
        let prev = hex(&prev);
        let e = Line {
            seq: seq
                .checked_add(1)
                .ok_or_else(|| std::io::Error::other("seq overflow"))?,
            at_ms,
            event: ev.event,
            user: ev.user.as_deref(),
            addr: ev.addr.as_deref(),
            ok: ev.ok,
            command: ev.command.as_deref(),
            detail: ev.detail.as_deref(),
            count: (count > 1).then_some(count),
            prev: &prev,
        };
        // Into a buffer kept between entries: one entry costs no allocation here.
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        serde_json::to_writer(&mut line, &e).map_err(std::io::Error::other)?;
        let mut stored = std::mem::take(&mut self.stored);
        stored.clear();
        seal_line(&line, self.opts.keyring.as_deref(), &mut stored);
        if self.file_bytes > 0
            && self.file_bytes + stored.len() as u64 + 1 > self.opts.file_bytes_max
        {
            self.rotate(e.seq)?;
        }
        self.head = (e.seq, sha256(&line));
        self.buf.extend_from_slice(&stored);
        self.buf.push(b'\n');
        self.file_bytes += stored.len() as u64 + 1;
        self.line = line;
        self.stored = stored;
        Ok(())
    }

    /// Writes what was appended and syncs it.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        self.file.sync_data()?;
        self.synced = (self.file_bytes, self.head);
        Ok(())
    }

    /// Starts the file for entries from `next` on, and removes the oldest files past the limit.
    fn rotate(&mut self, next: u64) -> std::io::Result<()> {
        self.sync()?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(file_name(next)))?;
        self.file_bytes = 0;
        self.synced.0 = 0;
        sync_dir(&self.dir)?;
        // Past files_max the oldest go, but never the one that holds the head the database
        // recorded: verification needs it.
        let all = files(&self.dir)?;
        let mut removable = all.len().saturating_sub(self.opts.files_max);
        for pair in all.windows(2) {
            if removable == 0 || self.anchored.is_some_and(|a| pair[1].0 > a) {
                break;
            }
            // A file that cannot be removed is kept (and said); the group goes on.
            if let Err(e) = std::fs::remove_file(&pair[0].1) {
                tracing::warn!(
                    "audit: retention could not remove {}: {e}",
                    pair[0].1.display()
                );
                break;
            }
            removable -= 1;
        }
        sync_dir(&self.dir)
    }
}

impl Audit {
    /// Opens `dir` (created if missing) and starts the writer thread. `stored` is the head the
    /// database recorded (see [`ANCHOR_KEY`]); `anchor` is called with the new head after a
    /// group an admin command waited for, and otherwise at most every `ANCHOR_EVERY`. What
    /// opening found wrong goes on record first, as `break` events.
    pub fn start(
        dir: &Path,
        opts: Options,
        stored: Option<&[u8]>,
        mut anchor: Option<Anchor>,
    ) -> anyhow::Result<Audit> {
        let queue_max = opts.queue_max;
        let (mut w, notes) = Writer::open(dir, opts, stored)
            .map_err(|e| anyhow::anyhow!("audit log {}: {e}", dir.display()))?;
        if anchor.is_some() {
            w.anchored.get_or_insert(0);
        }
        // Room for every note of the opening at least (they are evidence), and never 0: a
        // rendezvous channel would drop almost every event.
        let (tx, rx) = mpsc::sync_channel::<Msg>(queue_max.max(notes.len()).max(1));
        for (event, detail) in notes {
            let ev = Event {
                event,
                detail: Some(detail),
                ..Event::default()
            };
            let _ = tx.try_send(Msg::Record(ev, None));
        }
        let stats = Arc::new(Stats::default());
        stats.seq.store(w.head.0, Ordering::Relaxed);
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("keel-audit".into())
            .spawn(move || {
                // The head is anchored after a group that an admin command waits for, and
                // otherwise at most every ANCHOR_EVERY (and then once the queue goes quiet): a
                // flood of logins does not cost the database a write per group.
                let mut anchor_due: Option<Instant> = None;
                let mut anchor_now = |w: &mut Writer| {
                    if let Some(a) = anchor.as_mut() {
                        match a(w.head.0, &w.head.1) {
                            Ok(()) => w.anchored = Some(w.head.0),
                            Err(e) => {
                                tracing::warn!("audit: recording the chain's head failed: {e}")
                            }
                        }
                    }
                };
                let mut last_anchor = Instant::now();
                let mut group_began = Instant::now();
                loop {
                    let first = match anchor_due {
                        None => match rx.recv() {
                            Ok(m) => m,
                            Err(_) => break,
                        },
                        Some(due) => match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                            Ok(m) => m,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                anchor_now(&mut w);
                                (anchor_due, last_anchor) = (None, Instant::now());
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                    };
                    let mut g = Gathered::default();
                    g.take(first);
                    // A group starts at most every GROUP_EVERY: each is a write and an fsync, so
                    // a flood of logins gets a few hundred a second, and the events that arrive
                    // meanwhile wake nobody (the thread sleeps instead of waiting on the queue).
                    // An admin command that arrives then waits that much longer for its entry.
                    rx.try_iter().for_each(|m| g.take(m));
                    let pace_until = group_began + GROUP_EVERY;
                    let now = Instant::now();
                    if g.waiting.is_empty() && !g.stop && now < pace_until {
                        std::thread::sleep(pace_until - now);
                        rx.try_iter().for_each(|m| g.take(m));
                    }
                    group_began = Instant::now();
                    let Gathered {
                        mut events,
                        waiting,
                        stop,
                    } = g;
                    let n = st.unrecorded_drops.swap(0, Ordering::Relaxed);
                    if n > 0 {
                        events.push(Event {
                            event: "dropped",
                            detail: Some(format!(
                                "{n} login or refusal events were dropped: more arrived than the disk took (the queue holds {queue_max})"
                            )),
                            ..Event::default()
                        });
                    }
                    // A failed group is lost whole, and its waiters hear why; the next group
                    // tries again.
                    let result = w
                        .write_group(events, crate::server::now_ms())
                        .map_err(|e| format!("the audit log cannot be written: {e}"));
                    let mut last_error = crate::lock(&st.last_error);
                    match &result {
                        Ok(()) => {
                            st.seq.store(w.head.0, Ordering::Relaxed);
                            *last_error = None;
                        }
                        Err(e) => {
                            tracing::error!("{e}");
                            st.write_failures.fetch_add(1, Ordering::Relaxed);
                            // The drops of a lost group are counted again in the next one.
                            st.unrecorded_drops.fetch_add(n, Ordering::Relaxed);
                            *last_error = Some(e.clone());
                        }
                    }
                    drop(last_error);
                    let durable = !waiting.is_empty();
                    for d in waiting {
                        let _ = d.send(result.clone());
                    }
                    if result.is_ok() {
                        if durable || stop || last_anchor.elapsed() >= ANCHOR_EVERY {
                            anchor_now(&mut w);
                            (anchor_due, last_anchor) = (None, Instant::now());
                        } else if anchor_due.is_none() {
                            anchor_due = Some(last_anchor + ANCHOR_EVERY);
                        }
                    }
                    if stop {
                        break;
                    }
                }
            })?;
        Ok(Audit {
            tx,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Records `ev`; it is synced with the next group. If the queue is full (more events than
    /// the disk takes, a flood of failed logins, say), it is dropped and counted, and the count
    /// goes on record instead.
    pub fn record(&self, ev: Event) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(Msg::Record(ev, None)) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.stats.unrecorded_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What INFO and the metrics show.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Records `ev` and waits until it is synced. A full queue (the disk, or the database the
    /// head is anchored in, is slow) is waited out on a blocking thread, never on the async
    /// worker that called this: every other connection goes on meanwhile.
    pub async fn record_durably(&self, ev: Event) -> Result<(), String> {
        let closed = || "the audit log is closed".to_string();
        let (done, wait) = tokio::sync::oneshot::channel();
        match self.tx.try_send(Msg::Record(ev, Some(done))) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(msg))
                    .await
                    .map_err(|e| format!("the audit log's queue: {e}"))?
                    .map_err(|_| closed())?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(closed()),
        }
        wait.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Records `ev`, syncs everything, and stops the writer thread.
    pub fn stop(&self, ev: Event) {
        let _ = self.tx.send(Msg::Record(ev, None));
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = crate::lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// The anchor value for seq `seq` whose line hashes to `hash`.
pub fn anchor_value(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(hash);
    v
}

/// What `keel audit verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub files: usize,
    pub entries: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The first problem: which entry, and what is wrong with it.
    pub bad: Option<String>,
    /// A last line without its newline (a crash while it was written; the server cuts it).
    pub torn_tail: Option<String>,
    /// The anchor's seq, if the database holds one.
    pub anchor_seq: Option<u64>,
}

/// Checks the chain in `dir` (a data directory's `audit/`) against `anchor` (the value of
/// [`ANCHOR_KEY`], if any): every line an entry, seqs without gaps, each `prev` the hash of
/// the line before, file names matching their first seq, and the anchored entry present with
/// the anchored hash.
pub fn verify(
    dir: &Path,
    anchor: Option<&[u8]>,
    keyring: Option<&Keyring>,
) -> std::io::Result<Verified> {
    let mut v = Verified::default();
    let mut last: Option<(u64, [u8; 32])> = None;
    let mut anchored = match anchor.map(|a| (a.len(), parse_anchor(a))) {
        Some((len, None)) => {
            v.bad = Some(format!("the anchor in the database is {len} bytes, not 40"));
            return Ok(v);
        }
        other => other.and_then(|(_, a)| a),
    };
    v.anchor_seq = anchored.map(|a| a.0);
    let mut past_head = false;
    let all = files(dir)?;
    v.files = all.len();
    for (i, (named, path)) in all.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let torn = lines.pop().filter(|l| !l.is_empty());
        let last_file = i + 1 == all.len();
        for (n, text) in lines.iter().enumerate() {
            let at = format!("{} line {}", path.display(), n + 1);
            // In the last file, past the recorded head, bytes that do not continue the chain
            // are a crash's unsynced tail, as keel serve treats them: it moves them aside at its
            // next start. (Without a head, nothing tells a tail from an edit: it is reported.)
            let tail = |v: &mut Verified| {
                let rest: usize = lines[n..].iter().map(|l| l.len() + 1).sum();
                v.torn_tail = Some(format!(
                    "{}: {rest} bytes from line {} on do not continue the chain",
                    path.display(),
                    n + 1
                ));
            };
            let (e, hash) = match parse_line(text, keyring)? {
                Some(e) => e,
                None if last_file && past_head => {
                    tail(&mut v);
                    return Ok(v);
                }
                None => {
                    v.bad.get_or_insert(format!("{at}: not an audit entry"));
                    return Ok(v);
                }
            };
            let chains = last.is_none_or(|(seq, hash)| {
                seq.checked_add(1) == Some(e.seq) && e.prev == hex(&hash)
            });
            if !chains && last_file && past_head {
                tail(&mut v);
                return Ok(v);
            }
            let problem = match last {
                _ if n == 0 && e.seq != *named => {
                    Some(format!("seq {} in a file named for seq {named}", e.seq))
                }
                Some((seq, _)) if seq.checked_add(1) != Some(e.seq) => Some(format!(
                    "seq {} follows seq {seq}: entries are missing or out of order",
                    e.seq
                )),
                Some((_, hash)) if e.prev != hex(&hash) => Some(format!(
                    "seq {}: prev does not match the entry before it (it was changed, or an entry was removed)",
                    e.seq
                )),
                None if e.seq == 1 && e.prev != hex(&[0; 32]) => {
                    Some("seq 1: prev is not all zeros".into())
                }
                _ => None,
            };
            if let Some(p) = problem {
                v.bad.get_or_insert(format!("{at}: {p}"));
                return Ok(v);
            }
            if anchored.is_some_and(|(seq, h)| seq == e.seq && h != hash) {
                v.bad.get_or_insert(format!(
                    "{at}: seq {} does not hash to what the database recorded for it (it was changed)",
                    e.seq
                ));
                return Ok(v);
            }
            if anchored.is_some_and(|(seq, _)| seq == e.seq) {
                anchored = None;
                past_head = true;
            }
            if e.event == "break" && v.bad.is_none() {
                // Intact from here on, but the log itself says entries were lost before.
                v.bad.get_or_insert(format!(
                    "{at}: seq {} records a break: {}",
                    e.seq,
                    e.detail.as_deref().unwrap_or("")
                ));
            }
            v.first_seq.get_or_insert(e.seq);
            v.last_seq = Some(e.seq);
            v.entries += 1;
            last = Some((e.seq, hash));
        }
        if let Some(t) = torn {
            if i + 1 == all.len() {
                v.torn_tail = Some(format!(
                    "{}: a last line of {} bytes without its newline",
                    path.display(),
                    t.len()
                ));
            } else {
                v.bad.get_or_insert(format!(
                    "{}: a line without its newline in a file that is not the last",
                    path.display()
                ));
                return Ok(v);
            }
        }
    }
    if let Some((seq, _)) = anchored {
        // Retention never removes the file that holds the recorded head.
        v.bad.get_or_insert(match v.first_seq {
            Some(f) if seq < f => format!(
                "the database recorded seq {seq} as the chain's head, but the files start at seq {f}: the entries up to it were removed"
            ),
            _ => format!(
                "the database recorded seq {seq} as the chain's head, but the files end at {}: entries were cut from the end",
                v.last_seq.map_or("no entry".into(), |s| format!("seq {s}"))
            ),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(line: &str) -> Option<Arc<Keyring>> {
        Some(Arc::new(Keyring::parse(line).unwrap()))
    }
    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn identical_logins_and_refusals_in_a_group_are_one_entry_with_their_count() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut w, _) = Writer::open(tmp.path(), Options::default(), None).unwrap();
        let auth = |user: &str, ok| Event {
            event: "auth",
            user: Some(user.into()),
            addr: Some("127.0.0.1:5000".into()),
            ok: Some(ok),
            ..Event::default()
        };
        let admin = Event {
            event: "admin",
            user: Some("a".into()),
            command: Some("save".into()),
            ..Event::default()
        };
        let group = vec![
            auth("a", false),
            auth("a", true),
            admin.clone(),
            auth("a", false),
            admin.clone(),
            auth("b", false),
            auth("a", false),
        ];
        w.write_group(group, 7).unwrap();
        let text = std::fs::read_to_string(&files(tmp.path()).unwrap()[0].1).unwrap();
        let got: Vec<_> = text
            .lines()
            .map(|l| serde_json::from_str::<Entry>(l).unwrap())
            .map(|e| (e.event, e.user, e.ok, e.count))
            .collect();
        let e = |ev: &str, u: &str, ok, n| (ev.to_string(), Some(u.to_string()), ok, n);
        assert_eq!(
            got,
            vec![
                e("auth", "a", Some(false), Some(3)),
                e("auth", "a", Some(true), None),
                e("admin", "a", None, None),
                e("admin", "a", None, None),
                e("auth", "b", Some(false), None),
            ]
        );
        assert!(verify(tmp.path(), None, None).unwrap().bad.is_none());
    }

    #[test]
    fn encrypted_entries_chain_with_plaintext_ones_and_need_their_key() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path(), Options::default(), 3);
        let sealed = Options {
            keyring: ring(K1),
            ..Options::default()
        };
        let head = write_some(tmp.path(), sealed.clone(), 4);
        let text = std::fs::read_to_string(&files(tmp.path()).unwrap()[0].1).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7);
        assert!(lines[..3].iter().all(|l| l.starts_with('{')));
        assert!(lines[3..]
            .iter()
            .all(|l| l.starts_with('~') && !l.contains("auth")));
        let anchor = anchor_value(head.0, &head.1);
        let v = verify(tmp.path(), Some(&anchor), ring(K1).as_deref()).unwrap();
        assert!(v.bad.is_none() && v.entries == 7, "{v:?}");
        // Without the key, or with a wrong one: a key error, never damage or a torn tail.
        let e = verify(tmp.path(), Some(&anchor), None).unwrap_err();
        assert!(e.to_string().contains("no encryption key"), "{e}");
        let wrong = ring("1 1111111111111111111111111111111111111111111111111111111111111111");
        let e = verify(tmp.path(), Some(&anchor), wrong.as_deref()).unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        let before = std::fs::read(&files(tmp.path()).unwrap()[0].1).unwrap();
        let e = Writer::open(
            tmp.path(),
            Options {
                keyring: wrong,
                ..Options::default()
            },
            None,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("key"), "{e}");
        assert_eq!(
            std::fs::read(&files(tmp.path()).unwrap()[0].1).unwrap(),
            before
        );
        // The right key goes on from the head.
        assert_eq!(write_some(tmp.path(), sealed, 1).0, 8);
    }

    /// A flood of failed logins past the queue's bound: what does not fit is dropped and
    /// counted, the count goes on record, the queue (so memory) stays bounded, and an admin
    /// command's entry still becomes durable in the middle of it. Every event is accounted for:
    /// written (an entry stands for `count` identical ones) or counted as dropped.
    #[test]
    fn a_flood_beyond_the_queue_is_dropped_counted_and_put_on_record() {
        const N: u64 = 20_000;
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options {
            queue_max: 32,
            ..Options::default()
        };
        let audit = Audit::start(tmp.path(), opts, None, None).unwrap();
        let users: Vec<Arc<str>> = (0..5).map(|i| format!("u{i}").into()).collect();
        let auth = |i: u64| Event {
            event: "auth",
            user: Some(users[i as usize % users.len()].clone()),
            ok: Some(false),
            ..Event::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for i in 0..N {
            audit.record(auth(i));
            if i == N / 2 {
                let admin = Event {
                    event: "admin",
                    command: Some("flushall".into()),
                    ..Event::default()
                };
                runtime.block_on(audit.record_durably(admin)).unwrap();
            }
        }
        let dropped = audit.stats().dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "a queue of 32 cannot hold {N} events at once");
        audit.stop(Event {
            event: "stop",
            ..Event::default()
        });
        let (mut written, mut counted, mut admin) = (0, 0, 0);
        for (_, path) in files(tmp.path()).unwrap() {
            for line in std::fs::read_to_string(path).unwrap().lines() {
                let e: Entry = serde_json::from_str(line).unwrap();
                match e.event.as_str() {
                    "auth" => written += e.count.unwrap_or(1),
                    "dropped" => {
                        let detail = e.detail.unwrap();
                        counted += detail.split(' ').next().unwrap().parse::<u64>().unwrap();
                        assert!(detail.contains("the queue holds 32"), "{detail}");
                    }
                    "admin" => admin += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(admin, 1, "the admin command's entry is there");
        assert_eq!(counted, dropped, "every drop went on record");
        assert_eq!(written + counted, N, "{written} written, {counted} dropped");
        assert!(verify(tmp.path(), None, None).unwrap().bad.is_none());
    }

    /// An admin command's entry that finds the queue full (here: the writer thread is stuck
    /// anchoring the chain's head in a database that does not answer) waits for room without
    /// holding the async worker: on a one-thread runtime, another task still runs. Once the
    /// writer goes on, the entry is written and the command's wait returns.
    #[test]
    fn a_full_queue_does_not_stall_the_async_workers() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options {
            queue_max: 2,
            ..Options::default()
        };
        let (release, gate) = mpsc::channel::<()>();
        let anchor: Anchor = Box::new(move |_, _| {
            let _ = gate.recv();
            Ok(())
        });
        let audit = Arc::new(Audit::start(tmp.path(), opts, None, Some(anchor)).unwrap());
        let admin = |c: &str| Event {
            event: "admin",
            command: Some(c.into()),
            ..Event::default()
        };
        let (progress, progressed) = mpsc::channel();
        let a = audit.clone();
        let runner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            runtime.block_on(async {
                // The first admin entry is written; the writer then blocks in the anchor.
                let first = tokio::spawn({
                    let a = a.clone();
                    async move { a.record_durably(admin("first")).await }
                });
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                for _ in 0..10 {
                    a.record(Event {
                        event: "auth",
                        ..Event::default()
                    });
                }
                // The queue is full: this one must wait for room.
                let second = tokio::spawn({
                    let a = a.clone();
                    async move { a.record_durably(admin("second")).await }
                });
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                progress.send("the runtime still runs").unwrap();
                (first.await.unwrap(), second.await.unwrap())
            })
        });
        let got = progressed.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(
            got,
            Ok("the runtime still runs"),
            "the async worker was blocked"
        );
        for _ in 0..10 {
            let _ = release.send(());
        }
        drop(release);
        let (first, second) = runner.join().unwrap();
        assert_eq!((first, second), (Ok(()), Ok(())));
        audit.stop(Event {
            event: "stop",
            ..Event::default()
        });
        let text: String = files(tmp.path())
            .unwrap()
            .iter()
            .map(|(_, p)| std::fs::read_to_string(p).unwrap())
            .collect();
        assert!(text.contains("\"second\""), "{text}");
    }

    fn write_some(dir: &Path, opts: Options, n: u64) -> (u64, [u8; 32]) {
        let (mut w, _) = Writer::open(dir, opts, None).unwrap();
        for i in 0..n {
            let ev = Event {
                event: "auth",
                user: Some(format!("u{i}").into()),
                ok: Some(i % 2 == 0),
                ..Event::default()
            };
            w.write_group(vec![ev], 1000 + i).unwrap();
        }
        w.head
    }

    #[test]
    fn a_chain_across_reopens_and_rotations_verifies_and_retention_bounds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options {
            file_bytes_max: 300,
            files_max: 3,
            ..Options::default()
        };
        write_some(tmp.path(), opts.clone(), 10);
        let head = write_some(tmp.path(), opts.clone(), 10);
        let all = files(tmp.path()).unwrap();
        assert_eq!(all.len(), 3, "retention keeps 3 files");
        let v = verify(tmp.path(), Some(&anchor_value(head.0, &head.1)), None).unwrap();
        assert!(v.bad.is_none(), "{v:?}");
        assert_eq!(v.last_seq, Some(20));
        let first = v.first_seq.unwrap();
        assert!(first > 1, "the oldest files were removed");
        // Retention never removes the file that holds the head the database recorded.
        let (mut w, _) = Writer::open(tmp.path(), opts.clone(), None).unwrap();
        w.anchored = Some(first);
        for i in 0..10 {
            w.write_group(
                vec![Event {
                    event: "auth",
                    ..Event::default()
                }],
                i,
            )
            .unwrap();
        }
        assert_eq!(files(tmp.path()).unwrap()[0].0, first);
        // A head the files no longer hold is reported, whatever removed it.
        let mut gone = anchor_value(head.0, &head.1);
        gone[..8].copy_from_slice(&(first - 1).to_le_bytes());
        let v = verify(tmp.path(), Some(&gone), None).unwrap();
        assert!(v.bad.as_deref().unwrap().contains("were removed"), "{v:?}");
    }

    /// A group that fails (here: its file handle cannot write) is lost whole and its waiters
    /// told; whatever reached the file after the last sync is cut before the next group, whose
    /// entries continue the chain from the last synced one.
    #[test]
    fn after_a_failed_group_the_next_one_continues_from_the_last_synced_entry() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path(), Options::default(), 3);
        let (mut w, _) = Writer::open(tmp.path(), Options::default(), None).unwrap();
        let path = files(tmp.path()).unwrap()[0].1.clone();
        let writable = std::mem::replace(&mut w.file, File::open(&path).unwrap());
        let ev = || Event {
            event: "admin",
            command: Some("flushall".into()),
            ..Event::default()
        };
        assert!(w.write_group(vec![ev(), ev()], 5).is_err());
        assert_eq!(w.head.0, 3, "the failed group is not in the chain");
        // As a short write or a failed sync can leave: bytes past the last synced length.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"at_ms\":5,\"event\":\"admin\",\"prev\":\"00\"}\n")
            .unwrap();
        w.file = writable;
        w.write_group(vec![ev()], 6).unwrap();
        assert_eq!(w.head.0, 4);
        let v = verify(tmp.path(), Some(&anchor_value(w.head.0, &w.head.1)), None).unwrap();
        assert!(v.bad.is_none() && v.torn_tail.is_none(), "{v:?}");
        assert_eq!(v.entries, 4);
    }

    /// A crash right after a rotation created the next file leaves it empty: the chain goes
    /// on from the file before it.
    #[test]
    fn an_empty_newest_file_continues_the_chain_of_the_one_before() {
        let tmp = tempfile::tempdir().unwrap();
        let head = write_some(tmp.path(), Options::default(), 5);
        std::fs::write(tmp.path().join(file_name(6)), b"").unwrap();
        let head2 = write_some(tmp.path(), Options::default(), 2);
        assert_eq!(head2.0, 7);
        let v = verify(tmp.path(), Some(&anchor_value(head2.0, &head2.1)), None).unwrap();
        assert!(v.bad.is_none(), "{v:?}");
        assert_ne!(head, head2);
    }

    /// A power cut can keep a later page of an unsynced group and lose an earlier one: bytes
    /// that do not continue the chain, even ending in a newline, are moved aside and cut.
    #[test]
    fn bytes_that_do_not_continue_the_chain_are_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path(), Options::default(), 3);
        let path = files(tmp.path()).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        f.write_all(b"{\"seq\":5,\"at_ms\":1,\"event\":\"auth\",\"prev\":\"ab\"}\n")
            .unwrap();
        let (mut w, notes) = Writer::open(tmp.path(), Options::default(), None).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, "torn");
        assert_eq!(w.head.0, 3);
        w.write_group(vec![Event::default()], 9).unwrap();
        let v = verify(tmp.path(), None, None).unwrap();
        assert!(v.bad.is_none() && v.entries == 4, "{v:?}");
        let aside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("torn-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the bytes are kept");
    }

    /// Entries cut from the end while the server was stopped: the head the database recorded
    /// says so when the log is opened, and the chain carries a break from then on.
    #[test]
    fn a_cut_before_a_restart_is_recorded_as_a_break() {
        let tmp = tempfile::tempdir().unwrap();
        let head = write_some(tmp.path(), Options::default(), 6);
        let path = files(tmp.path()).unwrap()[0].1.clone();
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: Vec<&str> = text.lines().take(4).collect();
        std::fs::write(&path, kept.join("\n") + "\n").unwrap();
        let stored = anchor_value(head.0, &head.1);
        let (mut w, notes) = Writer::open(tmp.path(), Options::default(), Some(&stored)).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, "break");
        let ev = Event {
            event: notes[0].0,
            detail: Some(notes[0].1.clone()),
            ..Event::default()
        };
        w.write_group(vec![ev], 9).unwrap();
        let now = anchor_value(w.head.0, &w.head.1);
        let v = verify(tmp.path(), Some(&now), None).unwrap();
        assert!(
            v.bad.as_deref().unwrap().contains("records a break"),
            "{v:?}"
        );
    }

    /// After a power cut, bytes past the recorded head that do not continue the chain are a
    /// torn tail for verify too, not tampering; before the head they are tampering.
    #[test]
    fn verify_takes_bytes_past_the_head_for_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let head = write_some(tmp.path(), Options::default(), 3);
        let path = files(tmp.path()).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        f.write_all(b"tail of an entry\"}\n").unwrap();
        let v = verify(tmp.path(), Some(&anchor_value(head.0, &head.1)), None).unwrap();
        assert!(v.bad.is_none() && v.torn_tail.is_some(), "{v:?}");
        let mut older = anchor_value(head.0, &head.1);
        older[..8].copy_from_slice(&(head.0 + 1).to_le_bytes());
        let v = verify(tmp.path(), Some(&older), None).unwrap();
        assert!(v.bad.is_some(), "before the head it is not a tail: {v:?}");
    }

    /// Names and seqs at the ends of the range neither panic nor wrap around.
    #[test]
    fn files_named_for_seq_0_or_the_last_seq_are_refused_not_wrapped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(file_name(0)), b"").unwrap();
        assert!(files(tmp.path()).unwrap().is_empty());
        let (w, _) = Writer::open(tmp.path(), Options::default(), None).unwrap();
        assert_eq!(w.head.0, 0);
        let max = u64::MAX;
        let e = |seq: u64, prev: &str| {
            format!("{{\"seq\":{seq},\"at_ms\":1,\"event\":\"auth\",\"prev\":\"{prev}\"}}")
        };
        let first = e(max, &hex(&[0; 32]));
        let next = e(0, &hex(&sha256(first.as_bytes())));
        std::fs::write(
            tmp.path().join(file_name(max)),
            format!("{first}\n{next}\n"),
        )
        .unwrap();
        let v = verify(tmp.path(), None, None).unwrap();
        assert!(v.bad.is_some(), "{v:?}");
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path(), Options::default(), 3);
        let path = &files(tmp.path()).unwrap()[0].1;
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"{\"seq\":4,\"at").unwrap();
        assert!(verify(tmp.path(), None, None).unwrap().torn_tail.is_some());
        let head = write_some(tmp.path(), Options::default(), 1);
        assert_eq!(head.0, 4);
        let v = verify(tmp.path(), None, None).unwrap();
        assert!(v.bad.is_none() && v.torn_tail.is_none(), "{v:?}");
    }
}
