//! Damage to the manifest or a snapshot, and the choice of a complete path to the durable state
//! (P13). [`Engine::open`](crate::Engine::open) and [`inspect`] (`keel verify`) choose the same
//! way, through [`choose`], so they cannot disagree.
//!
//! The choice: the snapshot the manifest names, if the manifest and that snapshot pass their
//! checks. Otherwise every other snapshot file, newest first, then the empty state. A
//! `snap-*.keel` file was synced before it got that name, so it is a complete image of the state
//! at its LSN even if no manifest ever committed it. The chosen base B is usable only if the log
//! holds every LSN from B + 1 to its end; the log is opened needing only those
//! ([`keel_wal::Wal::open_from`]). An older base could never do better: it needs more of the log,
//! never less.

use std::fmt;
use std::path::{Path, PathBuf};

use keel_wal::fs::{durable_create_dir_all, durable_rename};
use keel_wal::{Fs, LogReader, Lsn, OpenMode, UnneededDamage};

use crate::checkpoint::list_snapshots;
use crate::error::{io, Error, Result};
use crate::options::{Options, WAL_DIR};
use crate::snapshot::{self, FileError, Manifest, MANIFEST, MANIFEST_BYTES};
use crate::util::now_ms;

/// Where damaged files are moved, inside the database directory. Nothing in it is ever read or
/// removed by keel.
pub const DAMAGED_DIR: &str = "damaged";

/// A file that failed its checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedFile {
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
    /// Where opening moved it (into `DIR/damaged/`), if it did.
    pub moved_to: Option<PathBuf>,
}

impl fmt::Display for DamagedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.problem)?;
        if let Some(to) = &self.moved_to {
            write!(f, " (moved to {})", to.display())?;
        }
        Ok(())
    }
}

/// What the MANIFEST file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ManifestState {
    /// No MANIFEST: a database that never checkpointed.
    Missing,
    Valid(Manifest),
    /// It fails its checks; the string says how.
    Damaged(String),
}

/// Reads the MANIFEST. Damage is a state, not an error; a manifest whose bytes check out but
/// whose version this keel does not read is an error (a newer keel wrote it: falling back would
/// downgrade the database), as is a failure to read it at all.
pub(crate) fn read_manifest_state(fs: &dyn Fs, dir: &Path) -> Result<ManifestState> {
    let path = dir.join(MANIFEST);
    if !fs.exists(&path).map_err(io("stat", &path))? {
        // No MANIFEST is a database that never checkpointed, whose base is the empty state;
        // unless the log no longer starts at LSN 1 and snapshot files exist: then a MANIFEST was
        // lost, and a snapshot may still be the base of a complete path.
        if !list_snapshots(fs, dir)?.is_empty() && log_first_named(fs, dir)?.is_some_and(|f| f > 1)
        {
            return Ok(ManifestState::Damaged(
                "missing, though snapshots exist and the log no longer starts at LSN 1".into(),
            ));
        }
        return Ok(ManifestState::Missing);
    }
    let f = fs.open(&path, OpenMode::Read).map_err(io("open", &path))?;
    let len = f.len().map_err(io("stat", &path))?;
    // Long enough to recognise a newer format's header; anything longer is not ours.
    let mut b = vec![0u8; len.min(4096) as usize];
    keel_wal::fs::read_exact_at(&*f, &mut b, 0).map_err(io("read", &path))?;
    if len > 4096 {
        return Ok(ManifestState::Damaged(format!(
            "{len} bytes long, a manifest is {MANIFEST_BYTES}"
        )));
    }
    match Manifest::decode(&b) {
        Ok(m) => Ok(ManifestState::Valid(m)),
        Err(source @ FileError::Version(_)) => Err(Error::BadFile { path, source }),
        Err(e) => Ok(ManifestState::Damaged(e.to_string())),
    }
}

/// The lowest first LSN the log's segment file names claim (`wal-<first:020>…`), if any.
fn log_first_named(fs: &dyn Fs, dir: &Path) -> Result<Option<Lsn>> {
    let wal = dir.join(WAL_DIR);
    if !fs.exists(&wal).map_err(io("stat", &wal))? {
        return Ok(None);
    }
    Ok(fs
        .read_dir(&wal)
        .map_err(io("list", &wal))?
        .iter()
        .filter(|n| n.ends_with(".open") || n.ends_with(".sealed"))
        .filter_map(|n| n.get(4..24)?.parse::<Lsn>().ok())
        .min())
}

/// The base a complete path starts from, and what failed on the way to it.
pub(crate) struct Choice<T> {
    /// The snapshot's LSN; 0 is the empty state.
    pub base: Lsn,
    /// What the loader returned for the chosen snapshot (`None` for the empty state).
    pub loaded: Option<T>,
    /// The manifest and the snapshot files that failed, in the order tried.
    pub damaged: Vec<DamagedFile>,
}

/// Checks (and loads) one snapshot file, against the manifest that names it if any; returns the
/// LSN its header holds.
pub(crate) type Loader<'a, T> =
    dyn FnMut(&Path, Option<&Manifest>) -> Result<(Lsn, T), FileError> + 'a;

/// Chooses the base (see the module comment). `load(path, manifest)` checks a snapshot file
/// (against the manifest that names it, if any) and returns the LSN its header holds.
pub(crate) fn choose<T>(
    fs: &dyn Fs,
    dir: &Path,
    manifest: &ManifestState,
    load: &mut Loader<'_, T>,
) -> Result<Choice<T>> {
    let mut damaged = Vec::new();
    let named = match manifest {
        ManifestState::Missing => Some(0),
        ManifestState::Valid(m) => Some(m.snapshot_lsn),
        ManifestState::Damaged(problem) => {
            damaged.push(DamagedFile {
                path: dir.join(MANIFEST),
                problem: problem.clone(),
                moved_to: None,
            });
            None
        }
    };
    let done = |base, loaded, damaged| Choice {
        base,
        loaded,
        damaged,
    };
    match (named, manifest) {
        (Some(0), _) => return Ok(done(0, None, damaged)),
        (Some(s), ManifestState::Valid(m)) => {
            let path = snapshot::snapshot_path(dir, s);
            if !fs.exists(&path).map_err(io("stat", &path))? {
                damaged.push(DamagedFile {
                    path,
                    problem: "missing, though the MANIFEST names it".into(),
                    moved_to: None,
                });
            } else {
                match load(&path, Some(m)) {
                    Ok((_, t)) => return Ok(done(s, Some(t), damaged)),
                    Err(e) => damaged.push(DamagedFile {
                        problem: not_damage(e, &path)?,
                        path,
                        moved_to: None,
                    }),
                }
            }
        }
        _ => {}
    }
    for l in list_snapshots(fs, dir)?.into_iter().rev() {
        if Some(l) == named {
            continue;
        }
        let path = snapshot::snapshot_path(dir, l);
        let problem = match load(&path, None) {
            Ok((found, t)) if found == l => return Ok(done(l, Some(t), damaged)),
            Ok((found, _)) => format!("its header says LSN {found}, its name LSN {l}"),
            Err(e) => not_damage(e, &path)?,
        };
        damaged.push(DamagedFile {
            path,
            problem,
            moved_to: None,
        });
    }
    Ok(done(0, None, damaged))
}

/// A file that could not be read for a reason that says nothing about its bytes (permissions,
/// too many open files in the process or the system) is an error, not damage: falling back would set a good file aside. So
/// is a snapshot whose checksum holds but whose version is unknown: a newer keel wrote it, and
/// falling back would downgrade the database, as for such a MANIFEST. Returns the problem text
/// for real damage.
fn not_damage(e: FileError, path: &Path) -> Result<String> {
    match e {
        e if !e.is_damage() => Err(Error::BadFile {
            path: path.to_path_buf(),
            source: e,
        }),
        FileError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::OutOfMemory
                    | std::io::ErrorKind::Interrupted
            ) || matches!(e.raw_os_error(), Some(23 | 24)) =>
        {
            Err(Error::Io {
                op: "read snapshot",
                path: path.to_path_buf(),
                source: e,
            })
        }
        e => Ok(e.to_string()),
    }
}

/// "the snapshot at LSN n", or "the empty state" for 0.
pub(crate) fn base_name(base: Lsn) -> String {
    match base {
        0 => "the empty state".to_string(),
        l => format!("the snapshot at LSN {l}"),
    }
}

/// Whether the log (`first..=last`) continues the base: `Ok` or the unreachable LSN range.
pub(crate) fn reach(base: Lsn, first: Lsn, last: Lsn) -> std::result::Result<(), (Lsn, Lsn)> {
    if first > base + 1 {
        Err((base + 1, first - 1))
    } else if last < base {
        Err((last + 1, base))
    } else {
        Ok(())
    }
}

/// Moves a damaged file into `dir/damaged/` under a name that says when, durably. Never deletes.
pub(crate) fn move_aside(fs: &dyn Fs, dir: &Path, path: &Path) -> Result<PathBuf> {
    let to_dir = dir.join(DAMAGED_DIR);
    durable_create_dir_all(fs, &to_dir).map_err(io("create directory", &to_dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let stamp = now_ms();
    let mut to = to_dir.join(format!("{name}.{stamp}"));
    let mut n = 0;
    while fs.exists(&to).map_err(io("stat", &to))? {
        n += 1;
        to = to_dir.join(format!("{name}.{stamp}.{n}"));
    }
    durable_rename(fs, path, &to).map_err(io("move damaged file aside", path))?;
    Ok(to)
}

/// The verdict of [`inspect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Nothing is damaged.
    Healthy,
    /// Something is damaged, but a complete path to the durable end exists: opening loses no
    /// acknowledged write.
    Openable,
    /// No complete path: the LSNs `from..=to` (`to` = `None`: to the end of the log) cannot be
    /// reached.
    Unreachable { from: Lsn, to: Option<Lsn> },
}

/// One snapshot file as [`inspect`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotCheck {
    pub lsn: Lsn,
    pub path: PathBuf,
    /// `None`: it passed every check.
    pub problem: Option<String>,
}

/// What [`inspect`] found: every file of the database, the base a complete path starts from and
/// what opening would do.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub dir: PathBuf,
    /// The MANIFEST: what it names, or what is wrong with it.
    pub manifest: String,
    pub snapshots: Vec<SnapshotCheck>,
    /// The base opening would use (LSN; 0 = the empty state).
    pub base: Lsn,
    /// The manifest and snapshots that opening would move aside (it tries them before the base).
    pub set_aside: Vec<DamagedFile>,
    /// The log's range as opening would read it (`first > last` when empty).
    pub log_first: Lsn,
    pub log_last: Lsn,
    /// Damage in the log that opening would fail on, if any.
    pub log_corruption: Option<keel_wal::Corruption>,
    /// Damage in the log below what the base needs: left out, costs nothing.
    pub log_unneeded_damage: Vec<UnneededDamage>,
    /// A torn tail that opening would cut (unsynced writes after a crash; never acknowledged
    /// under the default sync policy).
    pub torn_tail: Option<String>,
    pub health: Health,
    /// Encryption: the key ids the snapshots and the log's segments use, and how many of those
    /// files are plaintext. A key can be retired once no file uses it (`keel rekey`).
    pub key_ids: std::collections::BTreeSet<keel_wal::KeyId>,
    pub plaintext_files: usize,
}

impl Inspection {
    /// Every damaged file: manifest, snapshots and log segments.
    pub fn damaged_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.set_aside.iter().map(|d| d.path.clone()).collect();
        for s in &self.snapshots {
            if s.problem.is_some() && !v.contains(&s.path) {
                v.push(s.path.clone());
            }
        }
        for d in &self.log_unneeded_damage {
            v.push(d.corruption.file.clone());
        }
        if let Some(c) = &self.log_corruption {
            v.push(c.file.clone());
        }
        v
    }

    /// `keel verify`'s exit code: 0 healthy, 1 damaged but openable without loss, 2 acknowledged
    /// data unreachable.
    pub fn exit_code(&self) -> u8 {
        match self.health {
            Health::Healthy => 0,
            Health::Openable => 1,
            Health::Unreachable { .. } => 2,
        }
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.dir.display();
        writeln!(f, "{d}: keel database")?;
        writeln!(f, "MANIFEST: {}", self.manifest)?;
        if self.snapshots.is_empty() {
            writeln!(f, "snapshots: none")?;
        }
        for s in &self.snapshots {
            match &s.problem {
                None => writeln!(f, "snapshot {}: ok (LSN {})", s.path.display(), s.lsn)?,
                Some(p) => writeln!(f, "snapshot {}: DAMAGED: {p}", s.path.display())?,
            }
        }
        if self.log_corruption.is_some() {
            // The range was not established: the damage stopped the scan.
        } else if self.log_first > self.log_last {
            writeln!(f, "log: empty, continues at LSN {}", self.log_first)?;
        } else {
            writeln!(f, "log: LSN {}..={}", self.log_first, self.log_last)?;
        }
        for u in &self.log_unneeded_damage {
            writeln!(f, "log: DAMAGED: {}", u.corruption)?;
            writeln!(
                f,
                "  the base needs none of LSNs {}..={}: opening leaves these files where they are and starts the log after them",
                u.lsns.0, u.lsns.1
            )?;
        }
        if let Some(c) = &self.log_corruption {
            writeln!(f, "log: DAMAGED: {c}")?;
        }
        if let Some(t) = &self.torn_tail {
            writeln!(f, "log: {t}")?;
        }
        if self.key_ids.is_empty() {
            writeln!(f, "encryption: none")?;
        } else {
            let ids: Vec<String> = self.key_ids.iter().map(|i| i.to_string()).collect();
            writeln!(
                f,
                "encryption: key ids in use: {}; plaintext files: {}",
                ids.join(", "),
                self.plaintext_files
            )?;
        }
        let base = base_name(self.base);
        match &self.health {
            Health::Healthy => write!(
                f,
                "healthy: opening starts from {base} and replays the log after it"
            ),
            Health::Openable => {
                write!(f, "damaged, but a complete path exists: opening starts from {base} and replays the log after it")?;
                if !self.set_aside.is_empty() {
                    write!(f, "; it moves ")?;
                    for (i, s) in self.set_aside.iter().enumerate() {
                        let sep = if i == 0 { "" } else { ", " };
                        write!(f, "{sep}{}", s.path.display())?;
                    }
                    write!(f, " into {d}/{DAMAGED_DIR}/ and writes a new MANIFEST")?;
                }
                write!(f, ". No acknowledged write is lost")
            }
            Health::Unreachable { from, to } => {
                let range = match to {
                    Some(t) => format!("LSNs {from}..={t}"),
                    None => format!("LSNs from {from} on"),
                };
                write!(
                    f,
                    "NO complete path: {range} cannot be reached from {base} and the log; opening refuses. \
                     Keep a copy of {d} before changing anything"
                )
            }
        }
    }
}

/// Checks the whole database in `dir` without changing anything: the MANIFEST, every snapshot,
/// the log, and whether a complete path from a snapshot (or the empty state) to the end of the
/// log exists. It makes the same choice [`Engine::open`](crate::Engine::open) makes.
pub fn inspect(dir: impl AsRef<Path>, opts: &Options) -> Result<Inspection> {
    let dir = dir.as_ref();
    let fs = &*opts.wal.fs;
    let state = read_manifest_state(fs, dir)?;
    let verify = &mut |path: &Path, expect: Option<&Manifest>| -> Result<(Lsn, ()), FileError> {
        verify_file(fs, path, expect).map(|l| (l, ()))
    };
    let choice = choose(fs, dir, &state, verify)?;
    let manifest = match &state {
        ManifestState::Missing => "none (the database never checkpointed)".to_string(),
        ManifestState::Valid(m) if m.snapshot_lsn == 0 => "ok, names no snapshot".to_string(),
        ManifestState::Valid(m) => format!(
            "ok, names {}",
            snapshot::snapshot_path(dir, m.snapshot_lsn).display()
        ),
        ManifestState::Damaged(p) => format!("DAMAGED: {p}"),
    };
    let mut snapshots = Vec::new();
    for l in list_snapshots(fs, dir)? {
        let path = snapshot::snapshot_path(dir, l);
        let problem = match choice.damaged.iter().find(|d| d.path == path) {
            Some(d) => Some(d.problem.clone()),
            None if l == choice.base => None,
            None => match verify_file(fs, &path, None) {
                Ok(found) if found == l => None,
                Ok(found) => Some(format!("its header says LSN {found}, its name LSN {l}")),
                Err(e) => Some(e.to_string()),
            },
        };
        snapshots.push(SnapshotCheck {
            lsn: l,
            path,
            problem,
        });
    }
    // A named snapshot that is missing is listed too.
    for d in &choice.damaged {
        if d.path != dir.join(MANIFEST) && !snapshots.iter().any(|s| s.path == d.path) {
            snapshots.push(SnapshotCheck {
                lsn: 0,
                path: d.path.clone(),
                problem: Some(d.problem.clone()),
            });
        }
    }
    let mut inspection = Inspection {
        dir: dir.to_path_buf(),
        manifest,
        snapshots,
        base: choice.base,
        set_aside: choice.damaged,
        log_first: choice.base + 1,
        log_last: choice.base,
        log_corruption: None,
        log_unneeded_damage: Vec::new(),
        torn_tail: None,
        health: Health::Healthy,
        key_ids: Default::default(),
        plaintext_files: 0,
    };
    for s in inspection.snapshots.iter().filter(|s| s.problem.is_none()) {
        let id = fs
            .open(&s.path, OpenMode::Read)
            .map_err(FileError::from)
            .and_then(|f| snapshot::snapshot_key_id(&*f));
        match id {
            Ok(Some(id)) => drop(inspection.key_ids.insert(id)),
            Ok(None) => inspection.plaintext_files += 1,
            Err(_) => {}
        }
    }
    let wal_dir = dir.join(WAL_DIR);
    match LogReader::open_from(&wal_dir, &opts.wal, choice.base + 1, &mut |_, _| {}) {
        Ok(r) => {
            for s in r.segments() {
                inspection.key_ids.extend(s.key_ids.iter().map(|k| k.0));
                // A segment that holds no record yet says nothing about keys.
                if !s.encrypted && s.last_lsn >= s.first_lsn {
                    inspection.plaintext_files += 1;
                }
            }
            inspection.log_first = r.first_lsn();
            inspection.log_last = r.last_lsn();
            inspection.log_unneeded_damage = r.unneeded_damage().to_vec();
            inspection.torn_tail = r.torn_tail().map(|t| {
                format!(
                    "torn tail: {} bytes at offset {} of {} ({:?}); opening cuts it and keeps the bytes in {}/torn/",
                    t.end - t.offset,
                    t.offset,
                    t.file.display(),
                    t.reason,
                    wal_dir.display()
                )
            });
            if let Err((from, to)) = reach(choice.base, r.first_lsn(), r.last_lsn()) {
                inspection.health = Health::Unreachable { from, to: Some(to) };
            }
        }
        Err(keel_wal::Error::Corruption(c)) => {
            inspection.health = Health::Unreachable {
                from: c.last_good_lsn.unwrap_or(0).max(choice.base) + 1,
                to: None,
            };
            inspection.log_corruption = Some(*c);
        }
        Err(e) => return Err(e.into()),
    }
    let damaged = !inspection.damaged_files().is_empty();
    if inspection.health == Health::Healthy && damaged {
        inspection.health = Health::Openable;
    }
    Ok(inspection)
}

/// Checks a snapshot file's length and CRC (against the manifest that names it, if any). Returns
/// the LSN its header holds.
fn verify_file(fs: &dyn Fs, path: &Path, expect: Option<&Manifest>) -> Result<Lsn, FileError> {
    let f = fs.open(path, OpenMode::Read)?;
    let (header, len, crc) = snapshot::verify_snapshot(&*f)?;
    if let Some(m) = expect {
        for (field, expected, found) in [
            ("snapshot length", m.snapshot_bytes, len),
            ("snapshot checksum", m.snapshot_crc.into(), crc.into()),
            ("snapshot LSN", m.snapshot_lsn, header.lsn),
        ] {
            if expected != found {
                return Err(FileError::Mismatch {
                    field,
                    expected,
                    found,
                });
            }
        }
    }
    Ok(header.lsn)
}
