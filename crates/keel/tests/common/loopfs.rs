//! A real file system of a chosen size: ext4 on a loop device, for the tests that need a disk
//! that stalls (`fsfreeze`) or fills up. Mounting needs root and a loop device; without them
//! `LoopFs::mount` says why, and the test reports itself skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A loop-mounted ext4 file system, unfrozen and unmounted on drop (also when a test panics).
pub struct LoopFs {
    pub mnt: PathBuf,
}

impl LoopFs {
    /// Makes an ext4 file system of `bytes` (no blocks reserved for root) in `base` and mounts
    /// it at `base/mnt`.
    pub fn mount(base: &Path, bytes: u64) -> Result<LoopFs, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("mounting a loop file system needs root".into());
        }
        let img = base.join("fs.img");
        let mnt = base.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(bytes).unwrap();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", img.to_str().unwrap()]);
        let out = Command::new("mount")
            .args(["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "cannot loop-mount ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(LoopFs { mnt })
    }

    /// Freezes the file system until the guard is dropped. A process killed while it waits on
    /// the frozen file system cannot finish exiting, so the guard must go before the server. A
    /// detached watchdog thaws it after five minutes in case this process dies frozen.
    pub fn freeze(&self) -> Frozen {
        let m = self.mnt.to_str().unwrap();
        // `setsid --fork` returns at once; the watchdog lives on in its own session.
        let watchdog = Command::new("setsid")
            .args([
                "--fork",
                "sh",
                "-c",
                &format!("sleep 300; fsfreeze -u '{m}' 2>/dev/null"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("setsid");
        assert!(watchdog.success(), "setsid: {watchdog}");
        run("fsfreeze", &["-f", m]);
        Frozen(self.mnt.clone())
    }
}

pub struct Frozen(PathBuf);

impl Drop for Frozen {
    fn drop(&mut self) {
        // No panic here: a panic while unwinding would abort before the unmount.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd}: {e}");
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes zeros into `path` until the file system has no block left, and syncs them.
pub fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    use std::io::Write as _;
    let mut written = 0u64;
    // Big pieces first, then small ones for the last blocks; twice, since delayed allocation
    // frees some reserved blocks once the data is synced.
    for _ in 0..2 {
        for piece in [1 << 20, 4 << 10] {
            let zeros = vec![0u8; piece];
            loop {
                match f.write(&zeros) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("ballast: {e}"),
                }
            }
        }
        let _ = f.sync_all();
    }
    written
}
