//! `keel rekey` for a log: rewrites every segment that holds a record not sealed with the
//! keyring's first key (plaintext, or an older key), so that older keys can be retired.
//!
//! Each segment is rewritten whole into `wal-<first>.rekey.tmp` (a name recovery removes), synced,
//! and renamed over the old file (`durable_rename`). A crash leaves each segment either old or
//! new, and both open with the keyring. LSNs, batch flags and durable LSNs are kept; a mark after
//! the last frame is carried over (its bytes do not depend on the payloads). The log must be
//! closed (the lock is taken) and have no torn tail: open it once first to run recovery.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    decode_frame, encode_frame, segment_seed, Decoded, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use crate::fs::{durable_rename, read_exact_at, write_all_at, OpenMode};
use crate::needed::analyze_from;
use crate::options::Options;
use crate::read::{check_keys, frame_aad};

/// Rewrites what the keyring's first key did not seal. Returns the segment files rewritten.
pub fn rekey(dir: impl AsRef<Path>, opts: &Options) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let fs = &*opts.fs;
    let Some(ring) = opts.keyring.as_deref() else {
        return Err(Error::InvalidOptions(
            "rekey needs a keyring: its first key seals what is rewritten".into(),
        ));
    };
    let lock = crate::wal::lock_dir(fs, dir)?;
    let (layout, _) = analyze_from(fs, dir, opts.record_bytes_max, 1, &mut |_, _| {})?;
    if let Some(t) = &layout.torn {
        return Err(Error::InvalidOptions(format!(
            "{} ends in a torn tail at offset {}; open the log once (or run `keel wal repair`) before rekeying",
            t.file.display(),
            t.offset
        )));
    }
    check_keys(fs, &layout.segments, Some(ring))?;
    let active = ring.active();
    let mut rewritten = Vec::new();
    for s in &layout.segments {
        let has_records = s.last_lsn >= s.first_lsn;
        let done = s.encrypted && s.key_ids.iter().all(|(id, _)| *id == active);
        if !has_records || done {
            continue;
        }
        let io = |op, e| Error::io(op, &s.path, e);
        let f = fs
            .open(&s.path, OpenMode::Read)
            .map_err(|e| io("open segment", e))?;
        let len = f.len().map_err(|e| io("stat segment", e))? as usize;
        let mut old = vec![0u8; len];
        read_exact_at(&*f, &mut old, 0).map_err(|e| io("read segment", e))?;
        drop(f);
        let header = SegmentHeader::decode(&old).map_err(|_| {
            Error::InvalidOptions(format!("{} changed while rekeying", s.path.display()))
        })?;
        let seed = segment_seed(header.segment_id);
        let mut out = SegmentHeader {
            encrypted: true,
            ..header
        }
        .encode()
        .to_vec();
        let mut off = SEGMENT_HEADER_BYTES;
        while off < s.end_offset as usize {
            let Decoded::Frame(fr) = decode_frame(&old[off..], seed, u32::MAX) else {
                return Err(Error::InvalidOptions(format!(
                    "{} changed while rekeying (offset {off})",
                    s.path.display()
                )));
            };
            let aad = frame_aad(fr.lsn, fr.flags);
            let plain = if header.encrypted {
                let what = format!("the record at LSN {} in {}", fr.lsn, s.path.display());
                ring.open(&what, &aad, fr.payload)?
            } else {
                fr.payload.to_vec()
            };
            let sealed = ring.seal(&aad, &plain);
            encode_frame(&mut out, seed, fr.lsn, fr.durable_lsn, fr.flags, &sealed);
            off += fr.total_bytes;
        }
        // What follows the last frame (a mark, zeros of the preallocated room) is kept.
        let rest = &old[s.end_offset as usize..];
        let mark_len = rest.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        out.extend_from_slice(&rest[..mark_len.div_ceil(8) * 8]);
        let total = out.len().max(len);
        let tmp = dir.join(format!("wal-{:020}.rekey.tmp", s.first_lsn));
        let t = fs
            .open(&tmp, OpenMode::CreateTruncate)
            .map_err(|e| Error::io("create", &tmp, e))?;
        write_all_at(&*t, &out, 0).map_err(|e| Error::io("write", &tmp, e))?;
        t.set_len(total as u64)
            .map_err(|e| Error::io("size", &tmp, e))?;
        t.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        drop(t);
        durable_rename(fs, &tmp, &s.path).map_err(|e| Error::io("replace segment", &s.path, e))?;
        rewritten.push(s.path.clone());
    }
    drop(lock);
    Ok(rewritten)
}
