//! keel-sim: an in-memory [`Fs`] that loses exactly what a power cut loses.
//!
//! Every file has two layers. Writes land in the *volatile* layer, which reads see. `sync_data` and
//! `sync_all` copy a file's volatile bytes and size into its *durable* layer. Directory entries work
//! the same way: a create, rename or unlink is volatile until the directory it touches is synced.
//!
//! [`SimFs::crash`] returns the durable image after a power cut. That image holds:
//! - every synced state;
//! - any subset of the unsynced writes, applied in any order;
//! - each kept write possibly torn at 512-byte sectors: some sectors new, some old, some zero,
//!   some garbage;
//! - the durable or the volatile size of each file, whichever the seed picks, so a size can
//!   persist without its data and data without its size;
//! - each unsynced directory change kept or dropped. A rename is atomic: the old name or the new
//!   one, never both and never neither.
//!
//! Faults: EIO on the Nth write, sync or read; ENOSPC past a byte budget; short writes;
//! misdirected writes; bit rot in the image. After an injected EIO on sync, the file's unsynced
//! writes are dropped from the durable path but stay visible to reads, as Linux does
//! ("fsyncgate"), so a retried sync succeeds without having persisted anything.
//!
//! Every choice comes from a `u64` seed: the same seed and the same sequence of calls give the
//! same result. [`SimFs::crash_at`] makes the file system die at a chosen operation index, which
//! turns "a crash at a random moment" into a reproducible number.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_wal::{Fs, FsFile, OpenMode};

pub mod workload;

pub const SECTOR: usize = 512;

/// SplitMix64: tiny, fast, and the same on every platform and version, which reproducible seeds
/// need.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_5EED_5EED_5EED)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Faults to inject. Counts are of calls of that kind made after the plan was set; 0 = off.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub eio_on_write: u64,
    pub eio_on_sync: u64,
    pub eio_on_read: u64,
    /// Writes may grow files by this many bytes in all; beyond it, ENOSPC (the write that
    /// crosses the line is cut short first). Overwrites never fail.
    pub space_bytes: Option<u64>,
    /// Percent of writes that are cut short at a random length (they report how much they wrote).
    pub short_write_percent: u64,
    /// The Nth write lands `misdirect_by` bytes away from where it was aimed, and reports success.
    pub misdirect_write: u64,
    pub misdirect_by: i64,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link { path: PathBuf, entry: Entry },
    Unlink { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
}

impl DirOp {
    fn touches(&self, dir: &Path) -> bool {
        let parent = |p: &Path| p.parent() == Some(dir);
        match self {
            DirOp::Link { path, .. } | DirOp::Unlink { path } => parent(path),
            DirOp::Rename { from, to } => parent(from) || parent(to),
        }
    }

    fn apply(&self, names: &mut BTreeMap<PathBuf, Entry>) {
        match self {
            DirOp::Link { path, entry } => {
                names.insert(path.clone(), *entry);
            }
            DirOp::Unlink { path } => {
                names.remove(path);
            }
            DirOp::Rename { from, to } => {
                if let Some(e) = names.remove(from) {
                    names.insert(to.clone(), e);
                }
            }
        }
    }
}

/// Counts of operations by kind, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub total: u64,
    pub writes: u64,
    pub syncs: u64,
    pub reads: u64,
}

#[derive(Debug)]
struct State {
    rng: Rng,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Volatile namespace: what lookups see.
    names: BTreeMap<PathBuf, Entry>,
    /// Durable namespace: what survives a crash for sure.
    durable_names: BTreeMap<PathBuf, Entry>,
    pending_dir: Vec<DirOp>,
    faults: Faults,
    counts: OpCounts,
    crash_at: Option<u64>,
    dead: bool,
    locked: HashSet<u64>,
    space_used: u64,
}

/// The simulated file system. Clones share one state.
#[derive(Clone, Debug)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn err(kind: io::ErrorKind, msg: &str) -> io::Error {
    io::Error::new(kind, msg.to_string())
}

fn eio(msg: &str) -> io::Error {
    io::Error::other(format!("Input/output error (os error 5): {msg}"))
}

/// Counts down an "Nth call fails" fault: true on exactly the Nth call, then never again.
fn fires(n: &mut u64) -> bool {
    if *n == 0 {
        return false;
    }
    *n -= 1;
    *n == 0
}

/// `/a/./b/` → `/a/b`. Paths must be absolute.
fn norm(p: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::Prefix(_) => return Err(err(io::ErrorKind::InvalidInput, "no prefixes")),
        }
    }
    if !p.is_absolute() {
        return Err(err(
            io::ErrorKind::InvalidInput,
            "SimFs paths must be absolute",
        ));
    }
    Ok(out)
}

impl SimFs {
    /// An empty file system with only `/`.
    pub fn new(seed: u64) -> Self {
        let mut names = BTreeMap::new();
        names.insert(PathBuf::from("/"), Entry::Dir);
        Self::from_files(
            Rng::new(seed),
            BTreeMap::new(),
            1,
            names.clone(),
            names,
            Vec::new(),
        )
    }

    /// A healthy file system holding these files: no faults, no locks, counters at zero.
    fn from_files(
        rng: Rng,
        inodes: BTreeMap<u64, Inode>,
        next_ino: u64,
        names: BTreeMap<PathBuf, Entry>,
        durable_names: BTreeMap<PathBuf, Entry>,
        pending_dir: Vec<DirOp>,
    ) -> Self {
        SimFs {
            state: Arc::new(Mutex::new(State {
                rng,
                inodes,
                next_ino,
                names,
                durable_names,
                pending_dir,
                faults: Faults::default(),
                counts: OpCounts::default(),
                crash_at: None,
                dead: false,
                locked: HashSet::new(),
                space_used: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.lock();
        s.faults = faults;
        s.space_used = 0;
    }

    /// The file system dies when operation number `op` (0-based, counting every call) begins:
    /// that call and every later one fail with EIO, as if the power went out.
    pub fn crash_at(&self, op: u64) {
        self.lock().crash_at = Some(op);
    }

    /// Kills the file system now: every later call fails.
    pub fn kill(&self) {
        self.lock().dead = true;
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    pub fn counts(&self) -> OpCounts {
        self.lock().counts
    }

    /// An independent copy of the whole state, volatile and durable.
    pub fn fork(&self) -> SimFs {
        let s = self.lock();
        Self::from_files(
            s.rng.clone(),
            s.inodes.clone(),
            s.next_ino,
            s.names.clone(),
            s.durable_names.clone(),
            s.pending_dir.clone(),
        )
    }

    /// The durable image after a power cut now, with every choice drawn from `seed`. The result
    /// is a fresh, healthy file system in which volatile equals durable.
    pub fn crash(&self, seed: u64) -> SimFs {
        let s = self.lock();
        let mut rng = Rng::new(seed);
        // Namespace: synced state, plus each unsynced change kept or not, in order.
        let mut names = s.durable_names.clone();
        for op in &s.pending_dir {
            if rng.chance(50) {
                op.apply(&mut names);
            }
        }
        Self::image(&s, Rng::new(seed), names, |inode| {
            crash_bytes(inode, &mut rng)
        })
    }

    /// The durable image after a power cut that kept none of the unsynced writes or directory
    /// changes: exactly what was synced.
    pub fn crash_to_synced(&self) -> SimFs {
        let s = self.lock();
        Self::image(&s, s.rng.clone(), s.durable_names.clone(), |inode| {
            inode.durable.clone()
        })
    }

    /// A fresh, healthy file system holding `names` and, for each file they name, the bytes
    /// `bytes` gives it as both its volatile and its durable contents.
    fn image(
        s: &State,
        rng: Rng,
        names: BTreeMap<PathBuf, Entry>,
        mut bytes: impl FnMut(&Inode) -> Vec<u8>,
    ) -> SimFs {
        let inodes = s
            .inodes
            .iter()
            .filter(|(&ino, _)| names.values().any(|e| *e == Entry::File(ino)))
            .map(|(&ino, inode)| {
                let data = bytes(inode);
                let kept = Inode {
                    durable: data.clone(),
                    data,
                    pending: Vec::new(),
                };
                (ino, kept)
            })
            .collect();
        Self::from_files(rng, inodes, s.next_ino, names.clone(), names, Vec::new())
    }

    /// Flips `bits` random bits in the durable bytes of `path`, within `range` if given.
    pub fn rot(
        &self,
        path: &Path,
        bits: u32,
        range: Option<std::ops::Range<usize>>,
        seed: u64,
    ) -> io::Result<()> {
        let mut s = self.lock();
        let path = norm(path)?;
        let Some(Entry::File(ino)) = s.names.get(&path).copied() else {
            return Err(err(io::ErrorKind::NotFound, "no such file"));
        };
        let mut rng = Rng::new(seed);
        let inode = s.inodes.get_mut(&ino).expect("linked inode exists");
        let range = range.unwrap_or(0..inode.durable.len());
        if range.is_empty() || range.end > inode.durable.len() {
            return Err(err(io::ErrorKind::InvalidInput, "range outside the file"));
        }
        for _ in 0..bits {
            let at = range.start + rng.below(range.len() as u64) as usize;
            let bit = 1u8 << rng.below(8);
            inode.durable[at] ^= bit;
            inode.data[at] ^= bit;
        }
        Ok(())
    }

    /// Durable contents of a file (for tests).
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let path = norm(path).ok()?;
        match s.durable_names.get(&path)? {
            Entry::File(ino) => s.inodes.get(ino).map(|i| i.durable.clone()),
            Entry::Dir => None,
        }
    }

    /// Names in a directory, volatile view (for tests).
    pub fn list(&self, dir: &Path) -> Vec<String> {
        self.read_dir_inner(dir).unwrap_or_default()
    }

    fn read_dir_inner(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.lock();
        let dir = norm(dir)?;
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
}

/// One file after a power cut.
fn crash_bytes(inode: &Inode, rng: &mut Rng) -> Vec<u8> {
    let mut img = inode.durable.clone();
    let volatile_len = inode.data.len();
    let durable_len = inode.durable.len();
    // Kept writes, in a random order.
    let mut kept: Vec<&Pending> = inode.pending.iter().filter(|_| rng.chance(50)).collect();
    for i in (1..kept.len()).rev() {
        kept.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for p in kept {
        let Pending::Write { offset, data } = p else {
            continue; // sizes are chosen below
        };
        let (offset, end) = (*offset as usize, *offset as usize + data.len());
        if img.len() < end {
            img.resize(end, 0);
        }
        // Tear at absolute sector boundaries.
        let mut at = offset;
        while at < end {
            let sector_end = ((at / SECTOR) + 1) * SECTOR;
            let stop = sector_end.min(end);
            match rng.below(10) {
                0..=5 => img[at..stop].copy_from_slice(&data[at - offset..stop - offset]),
                6 | 7 => {} // old contents
                8 => img[at..stop].fill(0),
                _ => img[at..stop]
                    .iter_mut()
                    .for_each(|b| *b = rng.next_u64() as u8),
            }
            at = stop;
        }
    }
    // The size that persisted: the synced one or the latest one.
    let len = if rng.chance(50) {
        durable_len
    } else {
        volatile_len
    };
    img.resize(len, 0);
    img
}

impl State {
    /// Counts one operation and dies at the crash point.
    fn op(&mut self) -> io::Result<()> {
        if self.crash_at == Some(self.counts.total) {
            self.dead = true;
        }
        self.counts.total += 1;
        if self.dead {
            return Err(eio("simulated power loss"));
        }
        Ok(())
    }

    fn ino(&self, path: &Path) -> io::Result<u64> {
        match self.names.get(path) {
            Some(Entry::File(ino)) => Ok(*ino),
            Some(Entry::Dir) => Err(err(io::ErrorKind::IsADirectory, "is a directory")),
            None => Err(err(io::ErrorKind::NotFound, "no such file")),
        }
    }

    fn parent_is_dir(&self, path: &Path) -> io::Result<()> {
        match path.parent().map(|p| self.names.get(p)) {
            Some(Some(Entry::Dir)) => Ok(()),
            _ => Err(err(
                io::ErrorKind::NotFound,
                "parent directory does not exist",
            )),
        }
    }

    fn dir_op(&mut self, op: DirOp) {
        op.apply(&mut self.names);
        self.pending_dir.push(op);
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    ino: u64,
    writable: bool,
    holds_lock: Mutex<bool>,
}

impl Fs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        let path = norm(path)?;
        let mut s = self.lock();
        s.op()?;
        let exists = s.names.contains_key(&path);
        let ino = match mode {
            OpenMode::Read | OpenMode::ReadWrite => s.ino(&path)?,
            OpenMode::CreateNew if exists => {
                return Err(err(io::ErrorKind::AlreadyExists, "file exists"))
            }
            OpenMode::CreateTruncate if exists => {
                let ino = s.ino(&path)?;
                let inode = s.inodes.get_mut(&ino).expect("linked inode exists");
                inode.data.clear();
                inode.pending.push(Pending::SetLen(0));
                ino
            }
            OpenMode::CreateNew | OpenMode::CreateTruncate => {
                s.parent_is_dir(&path)?;
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.dir_op(DirOp::Link {
                    path,
                    entry: Entry::File(ino),
                });
                ino
            }
        };
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
            writable: mode != OpenMode::Read,
            holds_lock: Mutex::new(false),
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (norm(from)?, norm(to)?);
        let mut s = self.lock();
        s.op()?;
        if !s.names.contains_key(&from) {
            return Err(err(io::ErrorKind::NotFound, "no such file"));
        }
        s.parent_is_dir(&to)?;
        s.dir_op(DirOp::Rename { from, to });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = norm(path)?;
        let mut s = self.lock();
        s.op()?;
        s.ino(&path)?;
        s.dir_op(DirOp::Unlink { path });
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let path = norm(path)?;
        let mut s = self.lock();
        s.op()?;
        if s.names.contains_key(&path) {
            return Err(err(io::ErrorKind::AlreadyExists, "exists"));
        }
        s.parent_is_dir(&path)?;
        s.dir_op(DirOp::Link {
            path,
            entry: Entry::Dir,
        });
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        {
            let mut s = self.lock();
            s.op()?;
            let p = norm(path)?;
            if s.names.get(&p) != Some(&Entry::Dir) {
                return Err(err(io::ErrorKind::NotFound, "no such directory"));
            }
        }
        self.read_dir_inner(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = norm(path)?;
        let mut s = self.lock();
        s.op()?;
        s.counts.syncs += 1;
        if fires(&mut s.faults.eio_on_sync) {
            return Err(eio("injected on directory sync"));
        }
        let (now, later): (Vec<DirOp>, Vec<DirOp>) =
            s.pending_dir.drain(..).partition(|op| op.touches(&dir));
        for op in &now {
            op.apply(&mut s.durable_names);
        }
        s.pending_dir = later;
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let path = norm(path)?;
        let mut s = self.lock();
        s.op()?;
        Ok(s.names.contains_key(&path))
    }
}

impl SimFile {
    fn sync(&self) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.op()?;
        s.counts.syncs += 1;
        if fires(&mut s.faults.eio_on_sync) {
            // Linux marks the failed pages clean: they will never reach the disk, yet reads
            // still return them until the cache is dropped.
            s.inodes
                .get_mut(&self.ino)
                .expect("open inode exists")
                .pending
                .clear();
            return Err(eio("injected on sync"));
        }
        // Persist exactly what is pending, in order. After a failed sync that is less than the
        // volatile view: the dropped writes never come back.
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        for p in inode.pending.drain(..) {
            match p {
                Pending::Write { offset, data } => {
                    let end = offset as usize + data.len();
                    if inode.durable.len() < end {
                        inode.durable.resize(end, 0);
                    }
                    inode.durable[offset as usize..end].copy_from_slice(&data);
                }
                Pending::SetLen(len) => inode.durable.resize(len as usize, 0),
            }
        }
        Ok(())
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.fs.lock();
        s.op()?;
        s.counts.reads += 1;
        if fires(&mut s.faults.eio_on_read) {
            return Err(eio("injected on read"));
        }
        let data = &s.inodes[&self.ino].data;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if !self.writable {
            return Err(err(io::ErrorKind::PermissionDenied, "opened read-only"));
        }
        let mut s = self.fs.lock();
        s.op()?;
        s.counts.writes += 1;
        if fires(&mut s.faults.eio_on_write) {
            return Err(eio("injected on write"));
        }
        let mut n = buf.len();
        let short = s.faults.short_write_percent;
        if n > 1 && short > 0 && s.rng.chance(short) {
            n = 1 + s.rng.below(n as u64 - 1) as usize;
        }
        let len = s.inodes[&self.ino].data.len() as u64;
        if let Some(space) = s.faults.space_bytes {
            let grows = (offset + n as u64).saturating_sub(len.max(offset));
            let left = space.saturating_sub(s.space_used);
            if grows > left {
                let fits = (len.max(offset) - offset + left) as usize;
                if fits == 0 {
                    return Err(io::Error::from_raw_os_error(28));
                }
                n = n.min(fits);
            }
            s.space_used += (offset + n as u64).saturating_sub(len.max(offset));
        }
        let mut at = offset;
        if s.faults.misdirect_write > 0 {
            s.faults.misdirect_write -= 1;
            if s.faults.misdirect_write == 0 {
                at = offset.saturating_add_signed(s.faults.misdirect_by);
            }
        }
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        let end = at as usize + n;
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[at as usize..end].copy_from_slice(&buf[..n]);
        inode.pending.push(Pending::Write {
            offset: at,
            data: buf[..n].to_vec(),
        });
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.op()?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        inode.data.resize(len as usize, 0);
        // A pending write past the new end must not come back on its own after a crash that
        // keeps the new size; one that keeps the old size shows the old bytes, as a real disk.
        for p in &mut inode.pending {
            if let Pending::Write { offset, data } = p {
                let keep = (len as usize)
                    .saturating_sub(*offset as usize)
                    .min(data.len());
                data.truncate(keep);
            }
        }
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        s.op()?;
        let cur = s.inodes[&self.ino].data.len() as u64;
        let grows = (offset + len).saturating_sub(cur);
        if let Some(space) = s.faults.space_bytes {
            if s.space_used + grows > space {
                return Err(io::Error::from_raw_os_error(28));
            }
            s.space_used += grows;
        }
        let inode = s.inodes.get_mut(&self.ino).expect("open inode exists");
        if grows > 0 {
            inode.data.resize((offset + len) as usize, 0);
            inode.pending.push(Pending::SetLen(offset + len));
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut s = self.fs.lock();
        s.op()?;
        Ok(s.inodes[&self.ino].data.len() as u64)
    }

    fn try_lock(&self) -> io::Result<bool> {
        let mut s = self.fs.lock();
        s.op()?;
        let mut held = self.holds_lock.lock().unwrap_or_else(|p| p.into_inner());
        if *held {
            return Ok(true);
        }
        if !s.locked.insert(self.ino) {
            return Ok(false);
        }
        *held = true;
        Ok(true)
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        if *self.holds_lock.lock().unwrap_or_else(|p| p.into_inner()) {
            self.fs.lock().locked.remove(&self.ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, data: &[u8], sync: bool) {
        let f = fs.open(Path::new(path), OpenMode::CreateTruncate).unwrap();
        keel_wal::fs::write_all_at(&*f, data, 0).unwrap();
        if sync {
            f.sync_data().unwrap();
        }
    }

    #[test]
    fn synced_data_and_entries_survive_every_crash() {
        let fs = SimFs::new(1);
        fs.create_dir(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        write(&fs, "/d/a", b"hello", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        for seed in 0..200 {
            let img = fs.crash(seed);
            assert_eq!(img.durable_bytes(Path::new("/d/a")).unwrap(), b"hello");
        }
    }

    #[test]
    fn crash_to_synced_keeps_exactly_what_was_synced() {
        let fs = SimFs::new(9);
        fs.create_dir(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        write(&fs, "/d/kept", b"synced", true);
        fs.sync_dir(Path::new("/d")).unwrap();
        // Unsynced: more data in a synced file, and a new file whose entry was never synced.
        let f = fs.open(Path::new("/d/kept"), OpenMode::ReadWrite).unwrap();
        keel_wal::fs::write_all_at(&*f, b"-and-more", 6).unwrap();
        write(&fs, "/d/new", b"x", true);
        let img = fs.crash_to_synced();
        assert_eq!(img.durable_bytes(Path::new("/d/kept")).unwrap(), b"synced");
        assert!(img.durable_bytes(Path::new("/d/new")).is_none());
        // A healthy file system that reads back what it holds.
        let f = img.open(Path::new("/d/kept"), OpenMode::Read).unwrap();
        assert_eq!(f.len().unwrap(), 6);
        assert_eq!(img.list(Path::new("/d")), vec!["kept".to_string()]);
    }

    #[test]
    fn unsynced_entries_and_data_can_vanish_and_tear() {
        let fs = SimFs::new(1);
        write(&fs, "/a", &[7u8; 2048], false);
        let mut outcomes = HashSet::new();
        for seed in 0..400 {
            let img = fs.crash(seed);
            let state = match img.durable_bytes(Path::new("/a")) {
                None => "gone".to_string(),
                Some(b) if b.is_empty() => "empty".to_string(),
                Some(b) => {
                    let sectors: Vec<bool> = b
                        .chunks(SECTOR)
                        .map(|c| c.iter().all(|&x| x == 7))
                        .collect();
                    format!("{}:{:?}", b.len(), sectors)
                }
            };
            outcomes.insert(state);
        }
        assert!(
            outcomes.contains("gone") && outcomes.contains("empty"),
            "{outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| o.contains("true") && o.contains("false")),
            "torn writes: {outcomes:?}"
        );
    }

    #[test]
    fn rename_is_atomic_across_crashes() {
        let fs = SimFs::new(3);
        write(&fs, "/old", b"x", true);
        fs.sync_dir(Path::new("/")).unwrap();
        fs.rename(Path::new("/old"), Path::new("/new")).unwrap();
        let mut seen = HashSet::new();
        for seed in 0..200 {
            let img = fs.crash(seed);
            let old = img.durable_bytes(Path::new("/old")).is_some();
            let new = img.durable_bytes(Path::new("/new")).is_some();
            assert!(old != new, "seed {seed}: old {old}, new {new}");
            seen.insert(new);
        }
        assert_eq!(seen.len(), 2, "both outcomes happen");
        fs.sync_dir(Path::new("/")).unwrap();
        for seed in 0..50 {
            assert!(fs.crash(seed).durable_bytes(Path::new("/new")).is_some());
        }
    }

    #[test]
    fn failed_sync_drops_the_writes_but_reads_still_see_them() {
        let fs = SimFs::new(5);
        write(&fs, "/f", b"old!", true);
        fs.sync_dir(Path::new("/")).unwrap();
        let f = fs.open(Path::new("/f"), OpenMode::ReadWrite).unwrap();
        keel_wal::fs::write_all_at(&*f, b"new!", 0).unwrap();
        fs.set_faults(Faults {
            eio_on_sync: 1,
            ..Faults::default()
        });
        assert!(f.sync_data().is_err());
        let mut buf = [0u8; 4];
        keel_wal::fs::read_exact_at(&*f, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"new!", "the page cache still shows the write");
        f.sync_data().unwrap(); // "succeeds", persisting nothing
        for seed in 0..100 {
            assert_eq!(
                fs.crash(seed).durable_bytes(Path::new("/f")).unwrap(),
                b"old!"
            );
        }
    }

    #[test]
    fn crash_at_kills_from_that_operation_on() {
        let fs = SimFs::new(0);
        fs.crash_at(2);
        assert!(fs.exists(Path::new("/")).is_ok());
        assert!(fs.exists(Path::new("/")).is_ok());
        assert!(fs.exists(Path::new("/")).is_err());
        assert!(fs.is_dead());
    }

    #[test]
    fn same_seed_same_image() {
        let fs = SimFs::new(9);
        for i in 0..5 {
            write(&fs, &format!("/f{i}"), &vec![i as u8; 1500], i % 2 == 0);
        }
        for seed in 0..20 {
            let (a, b) = (fs.crash(seed), fs.crash(seed));
            for i in 0..5 {
                let p = PathBuf::from(format!("/f{i}"));
                assert_eq!(a.durable_bytes(&p), b.durable_bytes(&p));
            }
        }
    }
}
