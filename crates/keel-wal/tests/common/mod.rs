//! Test helpers: a fault-injecting file system over the real disk, and small utilities.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use keel_wal::{Fs, FsFile, OpenMode, Options, StdFs};

/// Faults to inject. Counters count calls made after the fault was armed.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail the Nth `sync_data` from now (1 = the next one) with EIO; 0 = off.
    pub fail_sync_nth: AtomicU64,
    syncs_seen: AtomicU64,
    /// Once set, writes beyond this many bytes fail with EIO (the first may be short).
    write_budget: Mutex<Option<u64>>,
    /// Once set, writes may grow files by this many bytes in all; beyond it, ENOSPC. Overwrites
    /// of bytes a file already has always succeed, as on ext4.
    growth_budget: Mutex<Option<u64>>,
    /// While true, `sync_data` blocks.
    gate_closed: Mutex<bool>,
    gate: Condvar,
    pub syncs_blocked: AtomicU64,
    pub fail_reads: AtomicBool,
    /// Every write's offset and length, in order, while `Some`.
    pub writes: Mutex<Option<Vec<(u64, usize)>>>,
}

impl Faults {
    pub fn fail_nth_sync(&self, n: u64) {
        self.syncs_seen.store(0, Ordering::SeqCst);
        self.fail_sync_nth.store(n, Ordering::SeqCst);
    }
    pub fn limit_writes(&self, bytes: u64) {
        *self.write_budget.lock().unwrap() = Some(bytes);
    }
    pub fn limit_growth(&self, bytes: u64) {
        *self.growth_budget.lock().unwrap() = Some(bytes);
    }
    pub fn close_gate(&self) {
        *self.gate_closed.lock().unwrap() = true;
    }
    pub fn open_gate(&self) {
        *self.gate_closed.lock().unwrap() = false;
        self.gate.notify_all();
    }
}

#[derive(Debug, Clone)]
pub struct FaultFs {
    pub faults: Arc<Faults>,
}

impl FaultFs {
    pub fn new() -> Self {
        FaultFs {
            faults: Arc::new(Faults::default()),
        }
    }
    pub fn options(&self, base: Options) -> Options {
        Options {
            fs: Arc::new(self.clone()),
            ..base
        }
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn FsFile>,
    faults: Arc<Faults>,
}

impl Fs for FaultFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(FaultFile {
            inner: StdFs.open(path, mode)?,
            faults: self.faults.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdFs.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.create_dir(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        StdFs.read_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        StdFs.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdFs.exists(path)
    }
}

impl FsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.faults.fail_reads.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if let Some(w) = self.faults.writes.lock().unwrap().as_mut() {
            w.push((offset, buf.len()));
        }
        let mut n = buf.len();
        let mut budget = self.faults.write_budget.lock().unwrap();
        if let Some(left) = budget.as_mut() {
            if *left == 0 {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            n = n.min(*left as usize);
            *left -= n as u64;
        }
        let mut growth = self.faults.growth_budget.lock().unwrap();
        if let Some(left) = growth.as_mut() {
            let len = self.inner.len()?;
            let grows = (offset + n as u64).saturating_sub(len.max(offset));
            if grows > *left {
                let fits = (len.max(offset) - offset + *left) as usize;
                if fits == 0 {
                    return Err(io::Error::from_raw_os_error(28)); // ENOSPC
                }
                n = n.min(fits);
            }
            *left -= (offset + n as u64).saturating_sub(len.max(offset));
        }
        self.inner.write_at(&buf[..n], offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        {
            let mut closed = self.faults.gate_closed.lock().unwrap();
            if *closed {
                self.faults.syncs_blocked.fetch_add(1, Ordering::SeqCst);
            }
            while *closed {
                closed = self.faults.gate.wait(closed).unwrap();
            }
        }
        let nth = self.faults.fail_sync_nth.load(Ordering::SeqCst);
        if nth > 0 && self.faults.syncs_seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.faults.growth_budget.lock().unwrap().is_some() {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.inner.allocate(offset, len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn try_lock(&self) -> io::Result<bool> {
        self.inner.try_lock()
    }
}

/// Minimal executor for the async API: keel-wal has no runtime dependency.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("rec-{i}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    v
}

/// Segment files of a log directory, sorted (which is LSN order).
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("wal-") && (n.ends_with(".open") || n.ends_with(".sealed"))
        })
        .collect();
    v.sort();
    v
}

pub fn read_all(dir: &Path, opts: &Options) -> Vec<(u64, Vec<u8>)> {
    let r = keel_wal::LogReader::open(dir, opts).unwrap();
    r.iter_from(r.first_lsn())
        .unwrap()
        .map(|r| r.map(|r| (r.lsn, r.payload)).unwrap())
        .collect()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
