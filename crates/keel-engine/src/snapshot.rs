//! Snapshot files and the manifest. docs/FORMAT.md holds the same tables.
//!
//! ```text
//! MANIFEST (40 bytes, replaced atomically: temp file, fsync, rename, fsync directory)
//! offset size field
//!      0    8 magic           "KEELMAN\0"
//!      8    4 version         1
//!     12    4 reserved        0
//!     16    8 snapshot_lsn    0 = no snapshot; the WAL is needed from snapshot_lsn + 1
//!     24    8 snapshot_bytes  length of snapshots/snap-<snapshot_lsn>.keel
//!     32    4 snapshot_crc    the snapshot's trailing CRC
//!     36    4 manifest_crc    CRC32C of bytes 0..36
//!
//! Snapshot file snapshots/snap-<lsn:020>.keel
//!      0    8 magic           "KEELSNAP"
//!      8    4 version         1
//!     12    4 reserved        0
//!     16    8 lsn             every write up to this LSN is in the file, none after it
//!     24    8 count           number of entries
//!     32      entries, in key order: key_len u32, key, value_len u32, value,
//!             version u64, expires_at u64 (0 = never)
//!             8 request_count, then each remembered request id (P8), in LSN order:
//!             lsn u64, then the request section of the engine record (record.rs)
//!   end-4   4 crc             CRC32C of every byte before it
//! ```

use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_wal::Lsn;

use crate::record::{decode_request, encode_request, Request};
use crate::{Entry, Map};

pub const MANIFEST: &str = "MANIFEST";
pub const SNAPSHOT_DIR: &str = "snapshots";
const MANIFEST_MAGIC: &[u8; 8] = b"KEELMAN\0";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSNAP";
const VERSION: u32 = 1;
pub const MANIFEST_BYTES: usize = 40;

pub fn snapshot_name(lsn: Lsn) -> String {
    format!("snap-{lsn:020}.keel")
}

pub fn snapshot_path(dir: &Path, lsn: Lsn) -> PathBuf {
    dir.join(SNAPSHOT_DIR).join(snapshot_name(lsn))
}

/// The single commit point of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    pub snapshot_lsn: Lsn,
    pub snapshot_bytes: u64,
    pub snapshot_crc: u32,
}

/// Why a manifest or snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("checksum mismatch (expected {expected:#010x}, found {found:#010x})")]
    Checksum { expected: u32, found: u32 },
    #[error("ends early")]
    Short,
    #[error("reserved field or trailing bytes are not zero/empty")]
    BadField,
    #[error("{field} is {found}, the manifest says {expected}")]
    Mismatch {
        field: &'static str,
        expected: u64,
        found: u64,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Manifest {
    pub fn encode(&self) -> [u8; MANIFEST_BYTES] {
        let mut b = [0u8; MANIFEST_BYTES];
        b[0..8].copy_from_slice(MANIFEST_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.snapshot_lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.snapshot_bytes.to_le_bytes());
        b[32..36].copy_from_slice(&self.snapshot_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, FileError> {
        if b.len() != MANIFEST_BYTES {
            return Err(FileError::Short);
        }
        if &b[0..8] != MANIFEST_MAGIC {
            return Err(FileError::Magic);
        }
        let v = u32_at(b, 8);
        if v != VERSION {
            return Err(FileError::Version(v));
        }
        let (expected, found) = (crc32c::crc32c(&b[..36]), u32_at(b, 36));
        if expected != found {
            return Err(FileError::Checksum { expected, found });
        }
        if u32_at(b, 12) != 0 {
            return Err(FileError::BadField);
        }
        Ok(Manifest {
            snapshot_lsn: u64_at(b, 16),
            snapshot_bytes: u64_at(b, 24),
            snapshot_crc: u32_at(b, 32),
        })
    }
}

/// Serializes `map` as the snapshot at `lsn`. Returns the bytes and their trailing CRC.
pub fn encode_snapshot(map: &Map, requests: &[(Lsn, Request)], lsn: Lsn) -> (Vec<u8>, u32) {
    let mut b = Vec::with_capacity(32 + map.len() * 48);
    b.extend_from_slice(SNAPSHOT_MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&lsn.to_le_bytes());
    b.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (k, e) in map.iter() {
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(&(e.value.len() as u32).to_le_bytes());
        b.extend_from_slice(&e.value);
        b.extend_from_slice(&e.version.to_le_bytes());
        b.extend_from_slice(&e.expires_at_ms.unwrap_or(0).to_le_bytes());
    }
    b.extend_from_slice(&(requests.len() as u64).to_le_bytes());
    for (l, r) in requests {
        encode_request(*l, r, &mut b);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    (b, crc)
}

/// Decodes and verifies a snapshot against its manifest. Every length is checked before use.
pub fn decode_snapshot(buf: &Bytes, m: &Manifest) -> Result<(Map, Vec<(Lsn, Request)>), FileError> {
    if buf.len() as u64 != m.snapshot_bytes {
        return Err(FileError::Mismatch {
            field: "snapshot length",
            expected: m.snapshot_bytes,
            found: buf.len() as u64,
        });
    }
    if buf.len() < 36 {
        return Err(FileError::Short);
    }
    let body = buf.len() - 4;
    let (expected, found) = (crc32c::crc32c(&buf[..body]), u32_at(buf, body));
    if expected != found {
        return Err(FileError::Checksum { expected, found });
    }
    if found != m.snapshot_crc {
        return Err(FileError::Mismatch {
            field: "snapshot checksum",
            expected: m.snapshot_crc.into(),
            found: found.into(),
        });
    }
    if &buf[0..8] != SNAPSHOT_MAGIC {
        return Err(FileError::Magic);
    }
    let v = u32_at(buf, 8);
    if v != VERSION {
        return Err(FileError::Version(v));
    }
    let lsn = u64_at(buf, 16);
    if lsn != m.snapshot_lsn {
        return Err(FileError::Mismatch {
            field: "snapshot LSN",
            expected: m.snapshot_lsn,
            found: lsn,
        });
    }
    let count = u64_at(buf, 24);
    let mut at: usize = 32;
    let mut take = |n: usize| -> Result<usize, FileError> {
        let start = at;
        at = at
            .checked_add(n)
            .filter(|&e| e <= body)
            .ok_or(FileError::Short)?;
        Ok(start)
    };
    let mut map = Map::new();
    for _ in 0..count {
        let kl = u32_at(buf, take(4)?) as usize;
        let k = take(kl)?;
        let vl = u32_at(buf, take(4)?) as usize;
        let vstart = take(vl)?;
        let version = u64_at(buf, take(8)?);
        let exp = u64_at(buf, take(8)?);
        map.insert(
            buf.slice(k..k + kl),
            Entry {
                value: buf.slice(vstart..vstart + vl),
                version,
                expires_at_ms: (exp != 0).then_some(exp),
            },
        );
    }
    let n = u64_at(buf, take(8)?);
    let within = buf.slice(..body);
    let mut requests = Vec::new();
    for _ in 0..n {
        let (l, r, next) = decode_request(&within, at).map_err(|_| FileError::Short)?;
        requests.push((l, r));
        at = next;
    }
    if at != body {
        return Err(FileError::BadField);
    }
    Ok((map, requests))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Map {
        let mut m = Map::new();
        for i in 0..20u64 {
            m.insert(
                Bytes::from(format!("k{i}")),
                Entry {
                    value: Bytes::from(vec![i as u8; i as usize]),
                    version: i + 1,
                    expires_at_ms: (i % 3 == 0).then_some(1000 + i),
                },
            );
        }
        m
    }

    #[test]
    fn round_trip_and_every_flip_or_cut_is_refused() {
        let reqs = vec![(
            5,
            Request {
                id: Bytes::from_static(b"r"),
                at_ms: 9,
                outcome: crate::Outcome::GuardFailed(0),
            },
        )];
        let (bytes, crc) = encode_snapshot(&sample(), &reqs, 77);
        let m = Manifest {
            snapshot_lsn: 77,
            snapshot_bytes: bytes.len() as u64,
            snapshot_crc: crc,
        };
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
        assert_eq!(
            decode_snapshot(&Bytes::from(bytes.clone()), &m).unwrap(),
            (sample(), reqs)
        );
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_snapshot(&Bytes::from(b), &m).is_err(), "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode_snapshot(&Bytes::copy_from_slice(&bytes[..n]), &m).is_err());
        }
        let other = Manifest {
            snapshot_lsn: 78,
            ..m
        };
        assert!(matches!(
            decode_snapshot(&Bytes::from(bytes), &other),
            Err(FileError::Mismatch { .. })
        ));
        let mut mb = m.encode();
        mb[20] ^= 1;
        assert!(matches!(
            Manifest::decode(&mb),
            Err(FileError::Checksum { .. })
        ));
    }
}
