//! Point-in-time restore and online backup (P9). Both build a new database directory that opens
//! as a normal database; neither writes a byte to the source.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_wal::{Fs, LogReader, Lsn, OpenMode, Wal};

use crate::checkpoint::{commit_manifest, list_snapshots, write_snapshot_file};
use crate::error::{io, Error, Result};
use crate::keyspace::{Changes, Image};
use crate::options::{Options, WAL_DIR};
use crate::record::{self, Request};
use crate::seq::Requests;
use crate::sequencer::Sequencer;
use crate::snapshot::{self, SnapshotHeader};
use crate::types::Entry;
use crate::util::{int_text, now_ms};

/// The point a restore rebuilds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Every write up to and including this LSN, none after it.
    Lsn(Lsn),
    /// Every write decided at or before this Unix millisecond; the restore stops at the first
    /// record decided later. (Record times never go backwards within a log.)
    UnixMs(u64),
    /// Everything the source's log holds. A torn tail is left out, as recovery would cut it.
    Latest,
}

/// What a restore or backup built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The restored database holds every write up to this LSN.
    pub lsn: Lsn,
    /// Decision time of the record at `lsn` (0 for an empty database).
    pub at_ms: u64,
    /// The snapshot the restore started from (0: the empty state).
    pub base_snapshot: Lsn,
    /// Snapshots passed over because they failed verification.
    pub damaged_snapshots: Vec<Lsn>,
    /// Damage in the source's log below the point restored, which the restore did not need.
    pub unneeded_log_damage: Vec<keel_wal::UnneededDamage>,
    pub records_replayed: u64,
    pub keys: usize,
    pub snapshot_bytes: u64,
    pub duration: Duration,
    /// The new database's system namespace (see [`Write::System`](crate::Write::System)), as
    /// of `lsn`.
    pub system: std::collections::BTreeMap<Bytes, Bytes>,
}

/// Refuses a target directory that exists and is not empty.
pub(crate) fn check_target(fs: &dyn Fs, target: &Path) -> Result<()> {
    if fs.exists(target).map_err(io("stat", target))?
        && !fs.read_dir(target).map_err(io("list", target))?.is_empty()
    {
        return Err(Error::InvalidOptions(format!(
            "restore target {} exists and is not empty; choose a new directory",
            target.display()
        )));
    }
    Ok(())
}

/// Writes a complete database holding `image` at `lsn` into `target`: snapshot, manifest, and
/// an empty log that continues at `lsn + 1`.
fn write_database(
    target: &Path,
    image: &Image,
    requests: &[(Lsn, Request)],
    lsn: Lsn,
    at_ms: u64,
    opts: &Options,
) -> Result<u64> {
    let fs = &*opts.wal.fs;
    keel_wal::fs::durable_create_dir_all(fs, target).map_err(io("create directory", target))?;
    let mut bytes = 0;
    if lsn > 0 {
        let m = write_snapshot_file(target, image, requests, lsn, at_ms, opts)?;
        commit_manifest(fs, target, &m)?;
        bytes = m.snapshot_bytes;
    }
    Wal::create_at(target.join(WAL_DIR), lsn + 1, opts.wal.clone())?;
    Ok(bytes)
}

/// Rebuilds the database in `source` as of `to` into the new directory `target`, from the
/// newest usable snapshot at or before that point and the log after it. `source` is only read:
/// it may be a live database. (A checkpoint that prunes while the restore reads can make it
/// fail; run it again.) `opts` configures the new database's files.
///
/// What can be reached depends on `Options::retention` of the source: older points need older
/// snapshots and the log after them.
pub fn restore(
    source: impl AsRef<Path>,
    target: impl AsRef<Path>,
    to: RestoreTarget,
    opts: &Options,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let (source, target) = (source.as_ref(), target.as_ref());
    opts.validate()?;
    let fs = &*opts.wal.fs;
    check_target(fs, target)?;
    let wal_dir = source.join(WAL_DIR);
    let (log, damage_note) = match LogReader::open(&wal_dir, &opts.wal) {
        Ok(l) => (l, String::new()),
        // Damage below the newest snapshot need not stop a restore that does not reach back to
        // it (P13): read the log from there, and fail closed below.
        Err(keel_wal::Error::Corruption(c)) => {
            let newest = list_snapshots(fs, source)?.last().copied().unwrap_or(0);
            match LogReader::open_from(&wal_dir, &opts.wal, newest + 1, &mut |_, _| {}) {
                Ok(l) => {
                    let note = format!(
                        "; the log is damaged below LSN {} ({c}), so no point before it can be restored",
                        l.first_lsn()
                    );
                    (l, note)
                }
                Err(_) => return Err(keel_wal::Error::Corruption(c).into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let mut report = RestoreReport {
        unneeded_log_damage: log.unneeded_damage().to_vec(),
        ..RestoreReport::default()
    };
    let (first, last) = (log.first_lsn(), log.last_lsn());
    let end = match to {
        RestoreTarget::Lsn(l) if l > last => {
            return Err(Error::NotRestorable(format!(
                "LSN {l} is beyond the end of the log (LSN {last})"
            )))
        }
        RestoreTarget::Lsn(l) => l,
        _ => last,
    };
    // Candidate bases, newest first: snapshots at or before the target, then the empty state if
    // the log reaches back to LSN 1.
    let mut bases: Vec<(Lsn, Option<SnapshotHeader>)> = Vec::new();
    if first == 1 {
        bases.push((0, None));
    }
    for l in list_snapshots(fs, source)? {
        let path = snapshot::snapshot_path(source, l);
        let header = fs
            .open(&path, OpenMode::Read)
            .map_err(crate::snapshot::FileError::from)
            .and_then(|f| SnapshotHeader::read(&*f));
        match header {
            Ok(h) if h.lsn == l => {
                let fits = match to {
                    RestoreTarget::UnixMs(t) => h.at_ms <= t,
                    _ => l <= end,
                };
                // The log must continue where the snapshot ends (or not be needed at all).
                if fits && (first <= l + 1 || l == end) {
                    bases.push((l, Some(h)));
                }
            }
            Err(source) if !source.is_damage() => return Err(Error::BadFile { path, source }),
            _ => report.damaged_snapshots.push(l),
        }
    }
    let mut chosen = None;
    while let Some((l, header)) = bases.pop() {
        if header.is_none() {
            chosen = Some((Image::default(), Vec::new(), 0, 0));
            break;
        }
        let path = snapshot::snapshot_path(source, l);
        let loaded = fs
            .open(&path, OpenMode::Read)
            .map_err(crate::snapshot::FileError::from)
            .and_then(|f| snapshot::read_snapshot(&*f, None, opts.wal.keyring.as_deref()));
        match loaded {
            Ok(s) => {
                chosen = Some((s.image, s.requests, l, s.header.at_ms));
                break;
            }
            // A key problem, or a newer keel's snapshot, is not damage: skipping the snapshot
            // would hide it.
            Err(source) if !source.is_damage() => {
                return Err(Error::BadFile { path, source });
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "damaged snapshot skipped");
                report.damaged_snapshots.push(l);
            }
        }
    }
    let Some((mut image, snap_requests, base, mut at_ms)) = chosen else {
        return Err(Error::NotRestorable(format!(
            "no retained snapshot reaches {to:?} and the log starts at LSN {first}; \
             keep snapshots longer with Options::retention{damage_note}"
        )));
    };
    report.base_snapshot = base;
    let now = now_ms();
    let mut requests = Requests::default();
    for (l, r) in snap_requests {
        requests.insert(l, r, opts, now);
    }
    let mut lsn = base;
    let mut replay = Changes::default();
    if base < end {
        for rec in log.iter_from(base + 1)? {
            let rec = rec?;
            if rec.lsn > end {
                break;
            }
            let d = record::decode(&Bytes::from(rec.payload), rec.lsn).map_err(|source| {
                Error::BadRecord {
                    lsn: rec.lsn,
                    source,
                }
            })?;
            if matches!(to, RestoreTarget::UnixMs(t) if d.at_ms > t) {
                break;
            }
            replay.apply(&d.mutations, rec.lsn);
            if let Some(r) = d.request {
                requests.insert(rec.lsn, r, opts, now);
            }
            lsn = rec.lsn;
            at_ms = d.at_ms;
            report.records_replayed += 1;
        }
    }
    replay.merge_into(&mut image);
    if matches!(to, RestoreTarget::Lsn(l) if l != lsn) {
        return Err(Error::NotRestorable(format!(
            "the log stops at LSN {lsn} before the target"
        )));
    }
    report.snapshot_bytes = write_database(target, &image, &requests.up_to(lsn), lsn, at_ms, opts)?;
    report.lsn = lsn;
    report.at_ms = at_ms;
    report.keys = image.map.len();
    report.system = image.system.into_iter().collect();
    report.duration = started.elapsed();
    Ok(report)
}

/// The durable state at one LSN, held as a copy (O(n) memory), that can be read and then written out
/// as a new database while writes continue. See [`Core::backup_view`](crate::Core::backup_view).
pub struct BackupView {
    image: Image,
    lsn: Lsn,
    at_ms: u64,
    requests: Vec<(Lsn, Request)>,
}

impl BackupView {
    /// The durable state `seq` publishes now.
    pub(crate) fn of(seq: &Sequencer) -> BackupView {
        let (image, lsn, at_ms, requests) = seq.durable_view();
        BackupView {
            image,
            lsn,
            at_ms,
            requests,
        }
    }

    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The entry of `key` in this state, expired or not.
    pub fn get(&self, key: &[u8]) -> Option<Entry> {
        self.image.map.entry(key)
    }

    /// The value of `key` in the system namespace of this state.
    pub fn system(&self, key: &[u8]) -> Option<&Bytes> {
        self.image.system.get(key)
    }

    /// Writes this state into the new directory `target` as a database that opens normally: a
    /// snapshot, and an empty log that continues at `lsn + 1`.
    pub fn write_database(
        &self,
        target: impl AsRef<Path>,
        opts: &Options,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let target = target.as_ref();
        check_target(&*opts.wal.fs, target)?;
        let snapshot_bytes = write_database(
            target,
            &self.image,
            &self.requests,
            self.lsn,
            self.at_ms,
            opts,
        )?;
        Ok(RestoreReport {
            lsn: self.lsn,
            at_ms: self.at_ms,
            base_snapshot: self.lsn,
            keys: self.image.map.len(),
            snapshot_bytes,
            duration: started.elapsed(),
            system: self.image.system.clone().into_iter().collect(),
            ..RestoreReport::default()
        })
    }
}

/// Builds a database in the new directory `target` from one snapshot file (as written by
/// [`BackupView::write_database`] or a checkpoint, possibly copied from another machine): the
/// file is verified whole, copied in, committed by a manifest, and given an empty log that
/// continues after it. Returns the snapshot's LSN.
pub fn create_from_snapshot(
    snapshot_file: impl AsRef<Path>,
    target: impl AsRef<Path>,
    opts: &Options,
) -> Result<Lsn> {
    let (file, target) = (snapshot_file.as_ref(), target.as_ref());
    opts.validate()?;
    let fs = &*opts.wal.fs;
    check_target(fs, target)?;
    let bad = |source| Error::BadFile {
        path: file.to_path_buf(),
        source,
    };
    let f = fs
        .open(file, OpenMode::Read)
        .map_err(io("open snapshot", file))?;
    let (header, bytes, crc) = snapshot::verify_snapshot(&*f).map_err(bad)?;
    let lsn = header.lsn;
    keel_wal::fs::durable_create_dir_all(fs, target).map_err(io("create directory", target))?;
    if lsn > 0 {
        let dst = snapshot::snapshot_path(target, lsn);
        let sdir = dst.parent().expect("snapshot paths have a directory");
        keel_wal::fs::durable_create_dir_all(fs, sdir).map_err(io("create directory", sdir))?;
        let tmp = dst.with_extension("tmp");
        let copy = || -> std::io::Result<()> {
            let t = fs.open(&tmp, OpenMode::CreateTruncate)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < bytes {
                let n = (bytes - at).min(buf.len() as u64) as usize;
                keel_wal::fs::read_exact_at(&*f, &mut buf[..n], at)?;
                keel_wal::fs::write_all_at(&*t, &buf[..n], at)?;
                at += n as u64;
            }
            t.sync_all()
        };
        copy().map_err(io("copy snapshot", &tmp))?;
        keel_wal::fs::durable_rename(fs, &tmp, &dst).map_err(io("rename snapshot", &tmp))?;
        let m = crate::snapshot::Manifest {
            snapshot_lsn: lsn,
            snapshot_bytes: bytes,
            snapshot_crc: crc,
        };
        commit_manifest(fs, target, &m)?;
    }
    Wal::create_at(target.join(WAL_DIR), lsn + 1, opts.wal.clone())?;
    Ok(lsn)
}

/// The system namespace of the database in `dir` as of the end of its log (see
/// [`Write::System`](crate::Write::System)), read without opening the database: from the
/// snapshot its MANIFEST names and the log after it. It takes no lock, so it reads a live
/// database too; a checkpoint that prunes meanwhile can make it fail (run it again). It loads
/// that snapshot whole.
pub fn read_system(
    dir: impl AsRef<Path>,
    opts: &Options,
) -> Result<std::collections::BTreeMap<Bytes, Bytes>> {
    let dir = dir.as_ref();
    let fs = &*opts.wal.fs;
    let manifest = match crate::damage::read_manifest_state(fs, dir)? {
        crate::damage::ManifestState::Valid(m) => m,
        crate::damage::ManifestState::Missing => snapshot::Manifest::default(),
        crate::damage::ManifestState::Damaged(why) => {
            return Err(Error::NotRestorable(format!(
                "{} is damaged ({why}); `keel verify` says more",
                dir.join(snapshot::MANIFEST).display()
            )))
        }
    };
    let mut system = std::collections::BTreeMap::new();
    let base = manifest.snapshot_lsn;
    if base > 0 {
        let path = snapshot::snapshot_path(dir, base);
        let loaded = fs
            .open(&path, OpenMode::Read)
            .map_err(snapshot::FileError::from)
            .and_then(|f| {
                snapshot::read_snapshot(&*f, Some(&manifest), opts.wal.keyring.as_deref())
            })
            .map_err(|source| Error::BadFile { path, source })?;
        system.extend(loaded.image.system);
    }
    let log = LogReader::open_from(dir.join(WAL_DIR), &opts.wal, base + 1, &mut |_, _| {})?;
    if log.last_lsn() <= base {
        return Ok(system);
    }
    for rec in log.iter_from(base + 1)? {
        let rec = rec?;
        let d = record::decode(&Bytes::from(rec.payload), rec.lsn).map_err(|source| {
            Error::BadRecord {
                lsn: rec.lsn,
                source,
            }
        })?;
        for m in d.mutations {
            if let crate::record::Mutation::System { key, value } = m {
                system.insert(key, value);
            }
        }
    }
    Ok(system)
}

/// `keel rekey`: makes the keyring's first key the only one a closed database still needs. Opens
/// the database (recovery runs), checkpoints it (the new snapshot is sealed with the first key),
/// closes it, then rewrites every older snapshot and every log segment that holds plaintext or
/// another key's ciphertext. Each file is replaced atomically (temporary file, sync, rename), so
/// a crash leaves every file either old or new, and the keyring opens both. Returns the files
/// rewritten; `inspect` then lists the key ids still in use.
pub fn rekey(dir: impl AsRef<Path>, opts: &Options) -> Result<Vec<std::path::PathBuf>> {
    let dir = dir.as_ref();
    let Some(ring) = opts.wal.keyring.clone() else {
        return Err(Error::InvalidOptions(
            "rekey needs an encryption key file: its first key seals what is rewritten".into(),
        ));
    };
    let opts = Options {
        background: false,
        ..opts.clone()
    };
    let (engine, _) = crate::Engine::open(dir, opts.clone())?;
    // One system entry (`rekey.at_ms`, the time) moves the LSN on, so that the checkpoint
    // writes a new snapshot with the first key even when the current one is up to date.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    engine.commit(
        Vec::new(),
        vec![crate::Write::System {
            key: Bytes::from_static(b"rekey.at_ms"),
            value: int_text(now),
        }],
    )?;
    let newest = engine.checkpoint()?;
    engine.close()?;
    let fs = &*opts.wal.fs;
    let mut rewritten = Vec::new();
    for l in list_snapshots(fs, dir)? {
        let path = snapshot::snapshot_path(dir, l);
        let bad = |source| Error::BadFile {
            path: path.clone(),
            source,
        };
        let f = fs.open(&path, OpenMode::Read).map_err(|e| bad(e.into()))?;
        // A damaged snapshot is `keel verify`'s business; leave it as it is.
        if l == newest || snapshot::verify_snapshot(&*f).is_err() {
            continue;
        }
        if snapshot::snapshot_key_id(&*f).map_err(bad)? == Some(ring.active()) {
            continue;
        }
        let loaded = snapshot::read_snapshot(&*f, None, Some(&ring)).map_err(bad)?;
        drop(f);
        write_snapshot_file(
            dir,
            &loaded.image,
            &loaded.requests,
            l,
            loaded.header.at_ms,
            &opts,
        )?;
        rewritten.push(path);
    }
    rewritten.extend(keel_wal::rekey(dir.join(WAL_DIR), &opts.wal)?);
    Ok(rewritten)
}
