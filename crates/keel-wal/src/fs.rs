//! The storage seam. Every byte keel reads or writes, and every directory change it makes, goes
//! through [`Fs`]. [`StdFs`] is the real file system; the simulated one (keel-sim) plugs in here and
//! models what a power cut keeps.
//!
//! The `durable_*` helpers are the single audited place where metadata changes are made durable
//! (promise P2): each one syncs the parent directory after the change, so a crash can never show a
//! file that was acknowledged as created, renamed or removed in its old state.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing file, read only.
    Read,
    /// Existing file, read and write.
    ReadWrite,
    /// Create a file that must not exist yet, read and write.
    CreateNew,
    /// Create the file, or truncate it to zero length if it exists, read and write.
    CreateTruncate,
}

/// A file system. Implementations must be usable from several threads at once.
pub trait Fs: Send + Sync + fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory; its parent must exist.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries in a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> io::Result<bool>;
}

/// An open file. All I/O is positional, so one handle can be shared by a writer and readers.
#[allow(clippy::len_without_is_empty)]
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`; may write fewer (a short write).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data, and its size, durable (`fdatasync`; `F_FULLFSYNC` on macOS).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and all of its metadata durable (`fsync`; `F_FULLFSYNC` on macOS).
    fn sync_all(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `[offset, offset + len)` without writing it (`fallocate` where the
    /// platform has it, otherwise extends the file).
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Writes zeros over `[offset, offset + len)`, so that its blocks exist and hold zeros.
    /// The default writes them as any write; [`StdFs`] on Linux writes them past the page
    /// cache (`O_DIRECT`) where the range is aligned to [`ZERO_FILL_ALIGN`] and the file
    /// system takes it, so that a segment's zero fill neither copies 64 MiB through the kernel
    /// nor fills the cache with pages that the log then writes over.
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        zeros_through(self, offset, len, &vec![0u8; ZERO_CHUNK])
    }
    /// The file's size in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Takes an exclusive advisory lock for as long as this handle lives. Returns false when
    /// someone else holds it.
    fn try_lock(&self) -> io::Result<bool>;
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn FsFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` at `offset`, continuing after short writes. An error is returned as is and
/// the write is not retried: the caller decides what a failure means (the log poisons itself).
pub fn write_all_at<F: FsFile + ?Sized>(
    file: &F,
    mut buf: &[u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What [`FsFile::write_zeros`] writes at a time, and how its offsets and lengths align
/// (`O_DIRECT` needs the device's logical block size; 4096 covers every common one).
pub const ZERO_FILL_ALIGN: u64 = 4096;
const ZERO_CHUNK: usize = 1 << 20;

/// Writes `[offset, offset + len)` as zeros through `file.write_at`, `zeros` at a time.
fn zeros_through<F: FsFile + ?Sized>(
    file: &F,
    offset: u64,
    len: u64,
    zeros: &[u8],
) -> io::Result<()> {
    let mut at = offset;
    while at < offset + len {
        let n = ((offset + len - at) as usize).min(zeros.len());
        write_all_at(file, &zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a new file and makes its directory entry durable. The file's contents are not yet
/// durable: sync the file before relying on them.
pub fn durable_create(fs: &dyn Fs, path: &Path) -> io::Result<Box<dyn FsFile>> {
    let file = fs.open(path, OpenMode::CreateNew)?;
    fs.sync_dir(parent_of(path))?;
    Ok(file)
}

/// Renames a file and makes the change durable in both directories. The caller must have synced
/// the file's contents first (P2: synced before renamed).
pub fn durable_rename(fs: &dyn Fs, from: &Path, to: &Path) -> io::Result<()> {
    fs.rename(from, to)?;
    if crate::mutated("skip_dir_sync") {
        return Ok(());
    }
    let (a, b) = (parent_of(from), parent_of(to));
    fs.sync_dir(b)?;
    if a != b {
        fs.sync_dir(a)?;
    }
    Ok(())
}

/// Removes a file and makes the removal durable.
pub fn durable_remove(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    fs.remove_file(path)?;
    fs.sync_dir(parent_of(path))
}

/// Creates a directory and any missing parents, syncing each parent after each creation.
pub fn durable_create_dir_all(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    if fs.exists(path)? {
        return Ok(());
    }
    let parent = parent_of(path);
    if parent != path {
        durable_create_dir_all(fs, parent)?;
    }
    match fs.create_dir(path) {
        Ok(()) => fs.sync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `contents` atomically: write a temporary file, sync it, rename it over
/// `path`, sync the directory. A crash leaves either the old contents or the new, never a mix.
pub fn durable_replace(fs: &dyn Fs, path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = fs.open(&tmp, OpenMode::CreateTruncate)?;
    write_all_at(&*file, contents, 0)?;
    file.sync_all()?;
    drop(file);
    durable_rename(fs, &tmp, path)
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl StdFs {
    pub fn shared() -> Arc<dyn Fs> {
        Arc::new(StdFs)
    }
}

#[derive(Debug)]
struct StdFile(std::fs::File);

/// `fdatasync` where it exists. On Apple platforms a plain fsync does not reach the platter, so
/// both syncs use `F_FULLFSYNC` there.
fn sync_data_fd(file: &std::fs::File) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        rustix::fs::fcntl_fullfsync(file)?;
    }
    #[cfg(all(unix, not(target_vendor = "apple")))]
    {
        rustix::fs::fdatasync(file)?;
    }
    #[cfg(not(unix))]
    {
        file.sync_data()?;
    }
    Ok(())
}

fn sync_all_fd(file: &std::fs::File) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        rustix::fs::fcntl_fullfsync(file)?;
    }
    #[cfg(all(unix, not(target_vendor = "apple")))]
    {
        rustix::fs::fsync(file)?;
    }
    #[cfg(not(unix))]
    {
        file.sync_all()?;
    }
    Ok(())
}

impl Fs for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FsFile>> {
        let mut o = std::fs::OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
            OpenMode::CreateTruncate => o.read(true).write(true).create(true).truncate(true),
        };
        Ok(Box::new(StdFile(o.open(path)?)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        sync_all_fd(&std::fs::File::open(path)?)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
}

impl FsFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        sync_data_fd(&self.0)
    }
    fn sync_all(&self) -> io::Result<()> {
        sync_all_fd(&self.0)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        // A buffer aligned for O_DIRECT, found inside a larger one (no unsafe code).
        let mut space = vec![0u8; ZERO_CHUNK + ZERO_FILL_ALIGN as usize];
        let skip = space.as_ptr().align_offset(ZERO_FILL_ALIGN as usize);
        let zeros = &mut space[skip..skip + ZERO_CHUNK];
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
            let flags = fcntl_getfl(&self.0)?;
            // File systems without O_DIRECT (tmpfs before 6.6, some FUSE) refuse the flag, and
            // a device whose blocks are larger than ZERO_FILL_ALIGN refuses the writes
            // (EINVAL): then the zeros go through the page cache, as any write.
            if fcntl_setfl(&self.0, flags | OFlags::DIRECT).is_ok() {
                let written = zeros_through(self, offset, len, zeros);
                fcntl_setfl(&self.0, flags)?;
                let einval = Some(rustix::io::Errno::INVAL.raw_os_error());
                match written {
                    Err(e) if e.raw_os_error() == einval => {}
                    done => return done,
                }
            }
        }
        zeros_through(self, offset, len, zeros)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), offset, len) {
                Ok(()) => return Ok(()),
                // File systems without fallocate (tmpfs on old kernels, some FUSE) fall through.
                Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let end = offset + len;
        if self.0.metadata()?.len() < end {
            self.0.set_len(end)?;
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn try_lock(&self) -> io::Result<bool> {
        match self.0.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `write_zeros` on the real disk: zeros over the range, nothing else changed, the file
    /// grown where the range passes its end, and ordinary (unaligned) writes still work after
    /// it (the handle does not stay in O_DIRECT).
    #[test]
    fn std_write_zeros_zeroes_the_range_and_leaves_the_handle_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = StdFs.open(&path, OpenMode::CreateNew).unwrap();
        write_all_at(&*f, &[0xAB; 3 * 4096], 0).unwrap();
        f.write_zeros(4096, 4096).unwrap();
        f.write_zeros(2 * 4096 + ZERO_CHUNK as u64, 2 * 4096)
            .unwrap();
        assert_eq!(f.len().unwrap(), 4 * 4096 + ZERO_CHUNK as u64);
        write_all_at(&*f, b"abc", 4097).unwrap();
        // A range O_DIRECT refuses (not aligned) gets its zeros through the page cache.
        write_all_at(&*f, &[0xCD; 4], 4200).unwrap();
        f.write_zeros(4201, 2).unwrap();
        f.sync_all().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got[..4096].iter().all(|&b| b == 0xAB));
        assert_eq!(&got[4096..4097], &[0]);
        assert_eq!(&got[4097..4100], b"abc");
        assert!(got[4100..4200].iter().all(|&b| b == 0));
        assert_eq!(&got[4200..4204], &[0xCD, 0, 0, 0xCD]);
        assert!(got[4204..2 * 4096].iter().all(|&b| b == 0));
        assert!(got[2 * 4096..3 * 4096].iter().all(|&b| b == 0xAB));
        assert!(got[3 * 4096..].iter().all(|&b| b == 0));
    }
}
