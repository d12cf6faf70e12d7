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
//! One thread appends entries and syncs them in groups. An admin command is recorded, and the
//! record synced, before the command runs; AUTH and denials are group-committed. After each
//! synced group, the chain's head (seq and hash) is written into the engine's system namespace
//! (`server.audit_head`), which the engine's log and checkpoints keep: `keel audit verify`
//! compares the files with it, so entries cut from the end are detected up to the last anchor.
//! (On a cluster node the engine is replicated, not this node's own: there is no anchor.)
//!
//! # Rotation and retention
//!
//! A file is closed past `audit_file_bytes_max`; past `audit_files_max` files the oldest is
//! removed. The oldest retained entry's `prev` then points at a removed entry: verification
//! starts from it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

/// The audit directory under a data directory.
pub const DIR: &str = "audit";
/// The engine system entry that holds the chain's head: seq (u64 LE), then the SHA-256 of
/// that entry's line (32 bytes).
pub const ANCHOR_KEY: &[u8] = b"server.audit_head";

/// Settings (the config file's `audit`, `audit_file_bytes_max`, `audit_files_max`).
#[derive(Clone, Debug)]
pub struct Options {
    pub file_bytes_max: u64,
    pub files_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            file_bytes_max: 64 << 20,
            files_max: 16,
        }
    }
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
    pub prev: String,
}

/// An event to record (an [`Entry`] without its place in the chain).
#[derive(Clone, Debug, Default)]
pub struct Event {
    pub event: &'static str,
    pub user: Option<String>,
    pub addr: Option<String>,
    pub ok: Option<bool>,
    pub command: Option<String>,
    pub detail: Option<String>,
}

type Done = tokio::sync::oneshot::Sender<Result<(), String>>;

enum Msg {
    Record(Event, Option<Done>),
    Stop,
}

/// Writes the chain's head somewhere else than the audit files.
pub type Anchor = Box<dyn FnMut(u64, &[u8; 32]) -> Result<(), String> + Send>;

/// The running audit log.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    digest(&SHA256, b)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
            .and_then(|d| d.parse().ok());
        if let Some(seq) = seq {
            v.push((seq, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
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
    /// The file's length and the head as of the last successful sync.
    synced: (u64, (u64, [u8; 32])),
    /// A write or sync failed since: the file may hold bytes past `synced`, to be cut before
    /// anything else is written.
    dirty: bool,
}

impl Writer {
    /// Opens `dir` for appending after its last whole entry. A last line without its newline
    /// was being written when the process stopped and was never synced: it is cut.
    fn open(dir: &Path, opts: Options) -> std::io::Result<Writer> {
        std::fs::create_dir_all(dir)?;
        let existing = files(dir)?;
        let (path, mut head) = match existing.last() {
            None => (dir.join(file_name(1)), (0, [0u8; 32])),
            Some((first, path)) => (path.clone(), (first - 1, [0u8; 32])),
        };
        let mut whole = 0u64;
        if path.exists() {
            let mut r = BufReader::new(File::open(&path)?);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                let text = &line[..line.len() - 1];
                let e: Entry = serde_json::from_slice(text).map_err(|e| {
                    std::io::Error::other(format!(
                        "{} holds an entry that is not one keel wrote ({e}); `keel audit verify` says more",
                        path.display()
                    ))
                })?;
                head = (e.seq, sha256(text));
                whole += n as u64;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if file.metadata()?.len() > whole {
            tracing::warn!(
                "audit: cutting a partial last entry of {} (written, never synced, when the process stopped)",
                path.display()
            );
            file.set_len(whole)?;
            file.sync_data()?;
        }
        sync_dir(dir)?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            opts,
            file,
            file_bytes: whole,
            head,
            buf: Vec::new(),
            synced: (whole, head),
            dirty: false,
        })
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
            for ev in events {
                self.append(ev, at_ms)?;
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

    fn append(&mut self, ev: Event, at_ms: u64) -> std::io::Result<()> {
        let (seq, prev) = self.head;
        let e = Entry {
            seq: seq + 1,
            at_ms,
            event: ev.event.into(),
            user: ev.user,
            addr: ev.addr,
            ok: ev.ok,
            command: ev.command,
            detail: ev.detail,
            prev: hex(&prev),
        };
        let line = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
        if self.file_bytes > 0 && self.file_bytes + line.len() as u64 + 1 > self.opts.file_bytes_max
        {
            self.rotate(e.seq)?;
        }
        self.head = (e.seq, sha256(&line));
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        self.file_bytes += line.len() as u64 + 1;
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
        let all = files(&self.dir)?;
        for (_, old) in all
            .iter()
            .take(all.len().saturating_sub(self.opts.files_max))
        {
            std::fs::remove_file(old)?;
        }
        sync_dir(&self.dir)
    }
}

impl Audit {
    /// Opens `dir` (created if missing) and starts the writer thread. `anchor` is called after
    /// each synced group with the chain's head.
    pub fn start(dir: &Path, opts: Options, mut anchor: Option<Anchor>) -> anyhow::Result<Audit> {
        let mut w = Writer::open(dir, opts)
            .map_err(|e| anyhow::anyhow!("audit log {}: {e}", dir.display()))?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("keel-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (mut events, mut waiting) = (Vec::new(), Vec::new());
                    let mut stop = false;
                    for m in std::iter::once(first).chain(rx.try_iter()) {
                        match m {
                            Msg::Record(ev, done) => {
                                events.push(ev);
                                waiting.extend(done);
                            }
                            Msg::Stop => stop = true,
                        }
                    }
                    // A failed group is lost whole, and its waiters hear why; the next group
                    // tries again.
                    let result = w
                        .write_group(events, crate::server::now_ms())
                        .map_err(|e| format!("the audit log cannot be written: {e}"));
                    if let Err(e) = &result {
                        tracing::error!("{e}");
                    }
                    for d in waiting {
                        let _ = d.send(result.clone());
                    }
                    if let (Ok(()), Some(a)) = (&result, anchor.as_mut()) {
                        if let Err(e) = a(w.head.0, &w.head.1) {
                            tracing::warn!("audit: recording the chain's head failed: {e}");
                        }
                    }
                    if stop {
                        break;
                    }
                }
            })?;
        Ok(Audit {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Records `ev`; it is synced with the next group.
    pub fn record(&self, ev: Event) {
        let _ = self.tx.send(Msg::Record(ev, None));
    }

    /// Records `ev` and waits until it is synced.
    pub async fn record_durably(&self, ev: Event) -> Result<(), String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Record(ev, Some(done)))
            .map_err(|_| "the audit log is closed".to_string())?;
        wait.await
            .unwrap_or_else(|_| Err("the audit log is closed".into()))
    }

    /// Records `ev`, syncs everything, and stops the writer thread.
    pub fn stop(&self, ev: Event) {
        let _ = self.tx.send(Msg::Record(ev, None));
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
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
pub fn verify(dir: &Path, anchor: Option<&[u8]>) -> std::io::Result<Verified> {
    let mut v = Verified::default();
    let mut last: Option<(u64, [u8; 32])> = None;
    let mut anchored: Option<(u64, [u8; 32])> = match anchor {
        Some(a) if a.len() == 40 => Some((
            u64::from_le_bytes(a[..8].try_into().expect("8 bytes")),
            a[8..].try_into().expect("32 bytes"),
        )),
        Some(_) => {
            v.bad = Some(format!(
                "the anchor in the database is {} bytes, not 40",
                anchor.map_or(0, <[u8]>::len)
            ));
            return Ok(v);
        }
        None => None,
    };
    v.anchor_seq = anchored.map(|a| a.0);
    let all = files(dir)?;
    v.files = all.len();
    for (i, (named, path)) in all.iter().enumerate() {
        let bytes = std::fs::read(path)?;
        let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let torn = lines.pop().filter(|l| !l.is_empty());
        for (n, text) in lines.iter().enumerate() {
            let at = format!("{} line {}", path.display(), n + 1);
            let e: Entry = match serde_json::from_slice(text) {
                Ok(e) => e,
                Err(err) => {
                    v.bad = Some(format!("{at}: not an audit entry ({err})"));
                    return Ok(v);
                }
            };
            let problem = match last {
                _ if n == 0 && e.seq != *named => {
                    Some(format!("seq {} in a file named for seq {named}", e.seq))
                }
                Some((seq, _)) if e.seq != seq + 1 => Some(format!(
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
                v.bad = Some(format!("{at}: {p}"));
                return Ok(v);
            }
            let hash = sha256(text);
            if anchored.is_some_and(|(seq, h)| seq == e.seq && h != hash) {
                v.bad = Some(format!(
                    "{at}: seq {} does not hash to what the database recorded for it (it was changed)",
                    e.seq
                ));
                return Ok(v);
            }
            if anchored.is_some_and(|(seq, _)| seq == e.seq) {
                anchored = None;
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
                v.bad = Some(format!(
                    "{}: a line without its newline in a file that is not the last",
                    path.display()
                ));
                return Ok(v);
            }
        }
    }
    if let Some((seq, _)) = anchored {
        // The anchored entry was not met: cut from the end, unless retention removed it.
        if v.first_seq.is_none_or(|f| seq >= f) {
            v.bad = Some(format!(
                "the database recorded seq {seq} as the chain's head, but the files end at {}: entries were cut from the end",
                v.last_seq.map_or("no entry".into(), |s| format!("seq {s}"))
            ));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_some(dir: &Path, opts: Options, n: u64) -> (u64, [u8; 32]) {
        let mut w = Writer::open(dir, opts).unwrap();
        for i in 0..n {
            let ev = Event {
                event: "auth",
                user: Some(format!("u{i}")),
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
        };
        write_some(tmp.path(), opts.clone(), 10);
        let head = write_some(tmp.path(), opts, 10);
        let all = files(tmp.path()).unwrap();
        assert_eq!(all.len(), 3, "retention keeps 3 files");
        let v = verify(tmp.path(), Some(&anchor_value(head.0, &head.1))).unwrap();
        assert!(v.bad.is_none(), "{v:?}");
        assert_eq!(v.last_seq, Some(20));
        assert!(v.first_seq.unwrap() > 1, "the oldest files were removed");
    }

    /// A group that fails (here: its file handle cannot write) is lost whole and its waiters
    /// told; whatever reached the file after the last sync is cut before the next group, whose
    /// entries continue the chain from the last synced one.
    #[test]
    fn after_a_failed_group_the_next_one_continues_from_the_last_synced_entry() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path(), Options::default(), 3);
        let mut w = Writer::open(tmp.path(), Options::default()).unwrap();
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
        let v = verify(tmp.path(), Some(&anchor_value(w.head.0, &w.head.1))).unwrap();
        assert!(v.bad.is_none() && v.torn_tail.is_none(), "{v:?}");
        assert_eq!(v.entries, 4);
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path(), Options::default(), 3);
        let path = &files(tmp.path()).unwrap()[0].1;
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"{\"seq\":4,\"at").unwrap();
        assert!(verify(tmp.path(), None).unwrap().torn_tail.is_some());
        let head = write_some(tmp.path(), Options::default(), 1);
        assert_eq!(head.0, 4);
        let v = verify(tmp.path(), None).unwrap();
        assert!(v.bad.is_none() && v.torn_tail.is_none(), "{v:?}");
    }
}
