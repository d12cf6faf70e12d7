//! Snapshot files and the manifest. docs/FORMAT.md holds the same tables.
//!
//! ```text
//! MANIFEST (40 bytes, replaced atomically: temp file, fsync, rename, fsync directory)
//! offset size field
//!      0    8 magic           "KEELMAN\0"
//!      8    4 version         2 (1 is read too; the layout is the same)
//!     12    4 reserved        0
//!     16    8 snapshot_lsn    0 = no snapshot; the WAL is needed from snapshot_lsn + 1
//!     24    8 snapshot_bytes  length of snapshots/snap-<snapshot_lsn>.keel
//!     32    4 snapshot_crc    the snapshot's trailing CRC
//!     36    4 manifest_crc    CRC32C of bytes 0..36
//!
//! Snapshot file snapshots/snap-<lsn:020>.keel
//!      0    8 magic           "KEELSNAP"
//!      8    4 version         4 (1, 2 and 3 are read too: see below)
//!     12    4 flags           bit 0 = blocks may be LZ4-compressed (informational: each
//!                             block says whether it is compressed); bit 1 = encrypted (in
//!                             versions 1-3, set exactly when the version is 3); other bits 0
//!     16    8 lsn             every write up to this LSN is in the file, none after it
//!     24    8 at_ms           the decision time of the record at `lsn` (0 if lsn is 0)
//!     32    8 count           number of entries, expired ones included
//!     40    8 request_count   number of remembered request ids (P8)
//!     48   16 file_id         v4: random in an encrypted file (its blocks are bound to it),
//!                             zero otherwise; v1-v3 have none, and their blocks start at 48
//!     64      blocks, each:   raw_len u32, stored_len u32, then stored_len bytes; the bytes
//!                             are LZ4 block-compressed if stored_len < raw_len, raw if equal.
//!                             raw_len is at most 1 MiB; a block with raw_len 0 ends the list.
//!                             Encrypted: the stored bytes are sealed (keel_wal::crypt:
//!                             key_id, nonce, ciphertext, tag) with the associated data
//!                             `file_id (v4; v3: the 48-byte header) | block index u64 |
//!                             raw_len u32`; the plaintext is LZ4 if shorter than raw_len,
//!                             raw if equal.
//!             The blocks' raw bytes, concatenated, are:
//!               entries, each key once, in any order (v1-v3: in key order):
//!                 v4: kind u8, key_len u32, key, version u64, expires_at u64 (0 = never),
//!                     then the value by kind (see `encode_entry`); then the end byte 0xff
//!                 v1-v3: key_len u32, key, value_len u32, value, version u64, expires_at u64
//!               requests, in LSN order: len u32, then lsn u64 and the request section of
//!                 the engine record (record.rs)
//!               v2 and later: the system namespace: count u32, then in key order
//!                 key_len u32, key, value_len u32, value
//!               v4: the tail: count u32, then in LSN order len u32, lsn u64, engine record
//!                 (the records a fuzzy checkpoint's image may lack; applied by version)
//!               v4: the header's bytes 16..48 again, which must match it
//!   end-4   4 crc             CRC32C of every byte before it
//! ```
//!
//! Files are written and read as streams: neither side holds the whole file in memory. Version 4
//! is written header last (zeros first), so that a checkpoint can stream entries before it knows
//! its LSN and count.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use keel_wal::crypt::{KeyError, KeyId, Keyring, SEAL_BYTES};
use keel_wal::fs::{read_exact_at, write_all_at};
use keel_wal::{FsFile, Lsn};

use crate::keyspace::{apply_by_version, Image, Map, MapLoader, System};
use crate::record::{decode_request, encode_request, Mutation, RecordError, Request};
use crate::table::{
    HashValue, Kind, ListValue, SetValue, StreamGroup, StreamId, StreamValue, Value, ValueRef,
    ZSetValue,
};

pub const MANIFEST: &str = "MANIFEST";
pub const SNAPSHOT_DIR: &str = "snapshots";
const MANIFEST_MAGIC: &[u8; 8] = b"KEELMAN\0";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSNAP";
/// The MANIFEST's format version. Version 2 has version 1's layout; it came with snapshot v2, so
/// that a keel from before the rule that an unknown snapshot version is not damage refuses the
/// directory instead of setting a v2 snapshot aside (docs/FORMAT.md, "A new version"). Version 1
/// is read too.
pub const MANIFEST_VERSION: u32 = 2;
/// The snapshot format this code writes: typed entries, encrypted or not by flag. Versions 1
/// (before the system namespace), 2 and 3 (version 2 with sealed blocks) are read too.
pub const SNAPSHOT_VERSION: u32 = 4;
/// The version that meant "version 2, encrypted" before encryption became a flag.
const SNAPSHOT_VERSION_V2_ENCRYPTED: u32 = 3;
/// Version 4's random file id, after the header: an encrypted file's blocks are bound to it.
const FILE_ID_BYTES: usize = 16;
/// The kind byte that ends version 4's entries.
const END_OF_ENTRIES: u8 = 0xff;
const FLAG_LZ4: u32 = 1;
const FLAG_ENCRYPTED: u32 = 2;
pub const MANIFEST_BYTES: usize = 40;
pub const SNAPSHOT_HEADER_BYTES: usize = 48;
const BLOCK_RAW_MAX: usize = 1 << 20;

pub fn snapshot_name(lsn: Lsn) -> String {
    format!("snap-{lsn:020}.keel")
}

/// The LSN a snapshot file name stands for.
pub fn parse_snapshot_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".keel")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
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
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("checksum mismatch (expected {expected:#010x}, found {found:#010x})")]
    Checksum { expected: u32, found: u32 },
    #[error("ends early")]
    Short,
    #[error("reserved field, block or trailing bytes are not valid")]
    BadField,
    /// Not damage: a newer keel wrote a value of a type this one cannot hold.
    #[error("it holds {0}, which this keel cannot load (a newer keel wrote it)")]
    Unloadable(String),
    #[error("{field} is {found}, the manifest says {expected}")]
    Mismatch {
        field: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("read: {0}")]
    Io(#[from] io::Error),
    /// Not damage: the key is missing, unknown or wrong. Recovery never falls back over it.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl FileError {
    /// Whether the file is damaged. A newer keel's format and a key problem are not: recovery and
    /// restore refuse such a file instead of falling back past it, which would downgrade the
    /// database or hide the key problem.
    pub fn is_damage(&self) -> bool {
        !matches!(
            self,
            FileError::Version(_) | FileError::Unloadable(_) | FileError::Key(_)
        )
    }
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
        b[8..12].copy_from_slice(&MANIFEST_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.snapshot_lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.snapshot_bytes.to_le_bytes());
        b[32..36].copy_from_slice(&self.snapshot_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The checksum is checked before the version: a flipped bit in the version field is damage,
    /// and only a manifest whose bytes check out (or one of another length that a newer keel
    /// could have written) is reported as an unsupported version.
    pub fn decode(b: &[u8]) -> Result<Self, FileError> {
        let known = |v: u32| (1..=MANIFEST_VERSION).contains(&v);
        let newer = |b: &[u8]| b.len() >= 12 && &b[0..8] == MANIFEST_MAGIC && !known(u32_at(b, 8));
        if b.len() != MANIFEST_BYTES {
            return Err(if newer(b) {
                FileError::Version(u32_at(b, 8))
            } else {
                FileError::Short
            });
        }
        let (expected, found) = (crc32c::crc32c(&b[..36]), u32_at(b, 36));
        if expected != found {
            return Err(FileError::Checksum { expected, found });
        }
        if &b[0..8] != MANIFEST_MAGIC {
            return Err(FileError::Magic);
        }
        let v = u32_at(b, 8);
        if !known(v) {
            return Err(FileError::Version(v));
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

/// What a snapshot file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The format version (1 to 4).
    pub version: u32,
    pub lsn: Lsn,
    pub at_ms: u64,
    pub count: u64,
    pub request_count: u64,
    compressed: bool,
    encrypted: bool,
}

impl SnapshotHeader {
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    /// Entries carry their kind and a typed value (version 4), rather than a string.
    fn typed(&self) -> bool {
        self.version >= 4
    }
}

impl SnapshotHeader {
    fn encode(&self) -> [u8; SNAPSHOT_HEADER_BYTES] {
        let mut b = [0u8; SNAPSHOT_HEADER_BYTES];
        b[0..8].copy_from_slice(SNAPSHOT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        let mut flags = if self.compressed { FLAG_LZ4 } else { 0 };
        if self.encrypted {
            flags |= FLAG_ENCRYPTED;
        }
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.at_ms.to_le_bytes());
        b[32..40].copy_from_slice(&self.count.to_le_bytes());
        b[40..48].copy_from_slice(&self.request_count.to_le_bytes());
        b
    }

    /// Checks magic, version and flags. Says nothing about the rest of the file.
    pub fn decode(b: &[u8; SNAPSHOT_HEADER_BYTES]) -> Result<Self, FileError> {
        if &b[0..8] != SNAPSHOT_MAGIC {
            return Err(FileError::Magic);
        }
        let version = u32_at(b, 8);
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(FileError::Version(version));
        }
        let flags = u32_at(b, 12);
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        if flags & !(FLAG_LZ4 | FLAG_ENCRYPTED) != 0
            || (version < 4 && encrypted != (version == SNAPSHOT_VERSION_V2_ENCRYPTED))
        {
            return Err(FileError::BadField);
        }
        Ok(SnapshotHeader {
            version,
            compressed: flags & FLAG_LZ4 != 0,
            encrypted,
            lsn: u64_at(b, 16),
            at_ms: u64_at(b, 24),
            count: u64_at(b, 32),
            request_count: u64_at(b, 40),
        })
    }

    pub fn read(file: &dyn FsFile) -> Result<Self, FileError> {
        let mut b = [0u8; SNAPSHOT_HEADER_BYTES];
        read_exact_at(file, &mut b, 0).map_err(short)?;
        Self::decode(&b)
    }
}

fn short(e: io::Error) -> FileError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FileError::Short
    } else {
        FileError::Io(e)
    }
}

/// Streams blocks into a file, keeping the running CRC of what it writes.
struct BlockWriter<'a> {
    file: &'a dyn FsFile,
    offset: u64,
    crc: u32,
    raw: Vec<u8>,
    compress: bool,
    /// Seals every block, bound to the file (see [`block_aad`]) and the block's index.
    seal: Option<(&'a Keyring, Vec<u8>)>,
    index: u64,
    /// Bytes written since the file was last synced.
    unsynced: u64,
}

/// A snapshot being written is synced every this many bytes. Left to the end, the whole file's
/// dirty pages are written back at once, and on a file system that orders data before its
/// journal (ext4's default) the log's syncs wait behind them: acknowledgements stall while a
/// checkpoint finishes. Synced as it goes, the file leaves little for any one sync.
const SNAPSHOT_SYNC_EVERY: u64 = 8 << 20;

/// The associated data of an encrypted snapshot's block: what binds it to its file (version 4:
/// the file id; version 3: the header), the block's index and its raw length, so that no block
/// opens in another file or at another place.
fn block_aad(file: &[u8], index: u64, raw_len: usize) -> Vec<u8> {
    let mut a = Vec::with_capacity(file.len() + 12);
    a.extend_from_slice(file);
    a.extend_from_slice(&index.to_le_bytes());
    a.extend_from_slice(&(raw_len as u32).to_le_bytes());
    a
}

impl BlockWriter<'_> {
    fn out(&mut self, b: &[u8]) -> io::Result<()> {
        write_all_at(self.file, b, self.offset)?;
        self.offset += b.len() as u64;
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.unsynced += b.len() as u64;
        if self.unsynced >= SNAPSHOT_SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Appends `b`, a block's worth at a time, so that a large `b` (a checkpoint's part) is
    /// never shifted through `raw` block by block.
    fn push(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            // `raw` holds less than a block between calls (`flush_if_full` sees to it).
            let n = b
                .len()
                .min(BLOCK_RAW_MAX.saturating_sub(self.raw.len()).max(1));
            self.raw.extend_from_slice(&b[..n]);
            b = &b[n..];
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// Writes out the whole blocks the raw bytes fill (after something was appended to `raw`).
    fn flush_if_full(&mut self) -> io::Result<()> {
        while self.raw.len() >= BLOCK_RAW_MAX {
            self.flush_one()?;
        }
        Ok(())
    }

    /// Writes out every raw byte, the last block short.
    fn flush_block(&mut self) -> io::Result<()> {
        while !self.raw.is_empty() {
            self.flush_one()?;
        }
        Ok(())
    }

    /// Writes out one block of up to [`BLOCK_RAW_MAX`] raw bytes.
    fn flush_one(&mut self) -> io::Result<()> {
        {
            let n = self.raw.len().min(BLOCK_RAW_MAX);
            let raw: Vec<u8> = self.raw.drain(..n).collect();
            let packed = self
                .compress
                .then(|| lz4_flex::block::compress(&raw))
                .filter(|c| c.len() < raw.len());
            let mut stored = packed.as_deref().unwrap_or(&raw);
            let sealed;
            if let Some((ring, file)) = &self.seal {
                sealed = ring.seal(&block_aad(file, self.index, raw.len()), stored);
                stored = &sealed;
            }
            self.index += 1;
            let mut h = [0u8; 8];
            h[..4].copy_from_slice(&(raw.len() as u32).to_le_bytes());
            h[4..].copy_from_slice(&(stored.len() as u32).to_le_bytes());
            self.out(&h)?;
            self.out(stored)?;
        }
        Ok(())
    }
}

/// Appends one version 4 entry: `kind u8 | key_len u32 | key | version u64 | expires_at u64`
/// (`0` = never), then the value by kind, every length a u32:
/// - string: `len | bytes`;
/// - hash: `n | n × (field_len | field | value_len | value)`;
/// - set: `n | n × (len | member)`;
/// - list: `n | n × (len | element)`, head to tail;
/// - sorted set: `n | n × (len | member | score f64 LE)`, in the set's order.
///
/// A collection is never empty (`n ≥ 1`), and holds each field or member once. The entries end
/// with the kind byte [`END_OF_ENTRIES`].
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    key: &[u8],
    version: Lsn,
    expires_at_ms: Option<u64>,
    value: ValueRef<'_>,
) {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.push(value.kind() as u8);
    bytes(out, key);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
    let count = |out: &mut Vec<u8>, n: usize| {
        debug_assert!(
            n > 0,
            "an empty collection is no key; the reader refuses it"
        );
        out.extend_from_slice(&(n as u32).to_le_bytes());
    };
    match value {
        ValueRef::String(v) => bytes(out, v),
        ValueRef::Hash(h) => {
            count(out, h.len());
            for (f, v) in h.iter() {
                bytes(out, f);
                bytes(out, v);
            }
        }
        ValueRef::Set(set) => {
            count(out, set.len());
            for m in set.iter() {
                bytes(out, &m);
            }
        }
        ValueRef::List(l) => {
            count(out, l.len());
            for e in l.iter() {
                bytes(out, e);
            }
        }
        ValueRef::ZSet(z) => {
            count(out, z.len());
            for (m, score) in z.iter() {
                bytes(out, m);
                out.extend_from_slice(&score.to_le_bytes());
            }
        }
        // A stream may be empty: its metadata first, then its entries (any number), then its
        // consumer groups (any number).
        ValueRef::Stream(x) => {
            let id = |out: &mut Vec<u8>, id: StreamId| {
                out.extend_from_slice(&id.ms.to_le_bytes());
                out.extend_from_slice(&id.seq.to_le_bytes());
            };
            id(out, x.last_id);
            out.extend_from_slice(&x.entries_added.to_le_bytes());
            id(out, x.max_deleted);
            out.extend_from_slice(&(x.len() as u32).to_le_bytes());
            for (entry, fields) in x.range(
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                false,
            ) {
                id(out, entry);
                out.extend_from_slice(&(fields.len() as u32).to_le_bytes());
                for f in &fields {
                    bytes(out, f);
                }
            }
            let u32 =
                |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&(n as u32).to_le_bytes());
            let u64 = |out: &mut Vec<u8>, n: Option<u64>| {
                out.extend_from_slice(&n.unwrap_or(u64::MAX).to_le_bytes())
            };
            u32(out, x.groups.len());
            for (name, g) in &x.groups {
                bytes(out, name);
                id(out, g.last_id);
                u64(out, g.entries_read);
                u32(out, g.consumers.len());
                for (name, c) in &g.consumers {
                    bytes(out, name);
                    u64(out, Some(c.seen_ms));
                    u64(out, c.active_ms);
                }
                // Each pending entry names its consumer by its place in the list above.
                let place: std::collections::HashMap<&[u8], usize> =
                    (g.consumers.keys().enumerate())
                        .map(|(i, n)| (&n[..], i))
                        .collect();
                u32(out, g.pending.len());
                for (entry, p) in &g.pending {
                    id(out, *entry);
                    u32(out, place[&p.consumer[..]]);
                    u64(out, Some(p.delivered_ms));
                    u64(out, Some(p.deliveries));
                }
            }
        }
    }
}

/// The version of the DUMP payload keel writes: [`dump`].
pub const DUMP_VERSION: u16 = 1;

/// A value as DUMP serializes it (docs/FORMAT.md, "DUMP payload"): one snapshot version 4
/// entry with an empty key, version 0 and no expiry ([`encode_entry`]), then the payload's
/// version (`u16` LE) and the CRC32C (`u32` LE) of everything before it. Redis's payloads end
/// the same way (an RDB version, a CRC64), so neither server mistakes the other's for its own.
pub(crate) fn dump(value: ValueRef<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_entry(&mut out, b"", 0, None, value);
    out.extend_from_slice(&DUMP_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a DUMP payload cannot be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Undump {
    /// Too short, another version, or a checksum that does not match: not a payload this keel
    /// wrote (a Redis payload fails here).
    VersionOrChecksum,
    /// The checksum holds but the value inside cannot be read (a newer keel's kind of value).
    BadFormat,
}

/// The value a [`dump`] payload holds.
pub(crate) fn undump(payload: &[u8]) -> Result<Value, Undump> {
    let Some(body_len) = payload.len().checked_sub(6) else {
        return Err(Undump::VersionOrChecksum);
    };
    let (body, trailer) = payload.split_at(body_len);
    let version = u16::from_le_bytes([trailer[0], trailer[1]]);
    let crc = u32_at(trailer, 2);
    if version != DUMP_VERSION || crc32c::crc32c(&payload[..body_len + 2]) != crc {
        return Err(Undump::VersionOrChecksum);
    }
    let header = SnapshotHeader {
        version: SNAPSHOT_VERSION,
        lsn: 0,
        at_ms: 0,
        count: 1,
        request_count: 0,
        compressed: false,
        encrypted: false,
    };
    let mut r = BlockReader {
        file: None,
        offset: 0,
        end: 0,
        block: body.to_vec(),
        pos: 0,
        done: true,
        open: None,
        index: 0,
    };
    let mut buf = EntryBuf::default();
    let value = match read_entry(&mut r, &header, &mut buf) {
        Ok(Some((b"", 0, None, value))) => match value {
            ValueIn::String(v) => Value::String(v.to_vec()),
            ValueIn::Collection(c) => c,
        },
        _ => return Err(Undump::BadFormat),
    };
    if r.pos != r.block.len() {
        return Err(Undump::BadFormat);
    }
    Ok(value)
}

/// Writes the snapshot of `image`, a consistent image at `at`, into `file` (from offset 0).
/// Returns its length and its trailing CRC, which the manifest records. The caller syncs.
pub(crate) fn write_snapshot(
    file: &dyn FsFile,
    image: &Image,
    requests: &[(Lsn, Request)],
    at: Position,
    compress: bool,
    keyring: Option<&Keyring>,
) -> io::Result<(u64, u32)> {
    let mut w = SnapshotWriter::new(file, compress, keyring)?;
    for e in image.map.iter() {
        w.entry(e.key(), e.version(), e.expires_at_ms(), e.value())?;
    }
    w.finish(&Rest {
        at,
        requests,
        system: &image.system,
        tail: &[],
    })
}

/// Where a snapshot stands: its LSN and the decision time of the record at it.
#[derive(Clone, Copy)]
pub(crate) struct Position {
    pub(crate) lsn: Lsn,
    pub(crate) at_ms: u64,
}

/// What a snapshot holds besides its entries, all of it as of `at`.
pub(crate) struct Rest<'a> {
    pub(crate) at: Position,
    pub(crate) requests: &'a [(Lsn, Request)],
    pub(crate) system: &'a System,
    /// The engine records (LSN, encoded record) the entries may lack, in LSN order, all at or
    /// before `at.lsn`: the records written while a fuzzy checkpoint read the keyspace.
    pub(crate) tail: &'a [(Lsn, Bytes)],
}

/// Writes a version 4 snapshot as a stream: the entries one at a time, then the rest, and the
/// header last, so that nothing the header says (LSN, count, request count) need be known when
/// the first entry is written. Nothing refers to the file until a manifest names it; a file cut
/// short before `finish` has a zero header, which no reader takes for a snapshot.
pub(crate) struct SnapshotWriter<'a> {
    w: BlockWriter<'a>,
    header: SnapshotHeader,
}

impl<'a> SnapshotWriter<'a> {
    pub(crate) fn new(
        file: &'a dyn FsFile,
        compress: bool,
        keyring: Option<&'a Keyring>,
    ) -> io::Result<Self> {
        // The header's place, filled by `finish`; the running CRC starts after it.
        write_all_at(file, &[0u8; SNAPSHOT_HEADER_BYTES], 0)?;
        // Plaintext files need no id: nothing but the CRC binds their blocks.
        let mut id = [0u8; FILE_ID_BYTES];
        if keyring.is_some() {
            getrandom::fill(&mut id).map_err(|e| io::Error::other(e.to_string()))?;
        }
        let mut w = BlockWriter {
            file,
            offset: SNAPSHOT_HEADER_BYTES as u64,
            crc: 0,
            raw: Vec::with_capacity(BLOCK_RAW_MAX + 4096),
            compress,
            seal: keyring.map(|k| (k, id.to_vec())),
            index: 0,
            unsynced: 0,
        };
        w.out(&id)?;
        let header = SnapshotHeader {
            version: SNAPSHOT_VERSION,
            lsn: 0,
            at_ms: 0,
            count: 0,
            request_count: 0,
            compressed: compress,
            encrypted: keyring.is_some(),
        };
        Ok(SnapshotWriter { w, header })
    }

    /// Appends one entry: each key once, at a version no later than the LSN `finish` is given.
    pub(crate) fn entry(
        &mut self,
        key: &[u8],
        version: Lsn,
        expires_at_ms: Option<u64>,
        value: ValueRef<'_>,
    ) -> io::Result<()> {
        encode_entry(&mut self.w.raw, key, version, expires_at_ms, value);
        self.header.count += 1;
        self.w.flush_if_full()
    }

    /// Appends `count` entries already encoded by [`encode_entry`], each key once, at versions
    /// no later than the LSN `finish` is given.
    pub(crate) fn encoded_entries(&mut self, entries: &[u8], count: u64) -> io::Result<()> {
        self.header.count += count;
        self.w.push(entries)
    }

    /// Entries written so far.
    pub(crate) fn count(&self) -> u64 {
        self.header.count
    }

    /// Writes the rest, the header and the CRC. Returns the file's length and CRC.
    pub(crate) fn finish(mut self, rest: &Rest<'_>) -> io::Result<(u64, u32)> {
        self.header.lsn = rest.at.lsn;
        self.header.at_ms = rest.at.at_ms;
        self.header.request_count = rest.requests.len() as u64;
        let w = &mut self.w;
        w.push(&[END_OF_ENTRIES])?;
        let mut one = Vec::new();
        for (l, r) in rest.requests {
            one.clear();
            encode_request(*l, r, &mut one);
            w.push(&(one.len() as u32).to_le_bytes())?;
            w.push(&one)?;
        }
        w.push(&(rest.system.len() as u32).to_le_bytes())?;
        for (k, v) in rest.system.iter() {
            w.push(&(k.len() as u32).to_le_bytes())?;
            w.push(k)?;
            w.push(&(v.len() as u32).to_le_bytes())?;
            w.push(v)?;
        }
        debug_assert!(rest.tail.windows(2).all(|p| p[0].0 < p[1].0));
        w.push(&(rest.tail.len() as u32).to_le_bytes())?;
        for (l, record) in rest.tail {
            debug_assert!(*l <= rest.at.lsn);
            w.push(&(8 + record.len() as u32).to_le_bytes())?;
            w.push(&l.to_le_bytes())?;
            w.push(record)?;
        }
        // The header's fields again, inside the blocks: an encrypted file's header is then
        // authenticated too, though it is written last and bound to no block.
        let header = self.header.encode();
        w.push(&header[ECHOED])?;
        w.flush_block()?;
        w.out(&[0u8; 8])?;
        write_all_at(w.file, &header, 0)?;
        let body = w.offset - SNAPSHOT_HEADER_BYTES as u64;
        let crc = crc32c::crc32c_combine(crc32c::crc32c(&header), w.crc, body as usize);
        write_all_at(w.file, &crc.to_le_bytes(), w.offset)?;
        Ok((w.offset + 4, crc))
    }
}

/// The header's bytes that version 4 repeats at the end of its blocks: LSN, decision time,
/// count and request count.
const ECHOED: std::ops::Range<usize> = 16..SNAPSHOT_HEADER_BYTES;

/// Writes a version 4 snapshot of `entries` (key, version, expiry, value) and `rest`.
#[cfg(test)]
pub(crate) fn write_entries<'a>(
    file: &dyn FsFile,
    entries: impl Iterator<Item = (&'a [u8], Lsn, Option<u64>, ValueRef<'a>)>,
    rest: &Rest<'_>,
    compress: bool,
    keyring: Option<&Keyring>,
) -> io::Result<(u64, u32)> {
    let mut w = SnapshotWriter::new(file, compress, keyring)?;
    for (key, version, expires_at_ms, value) in entries {
        w.entry(key, version, expires_at_ms, value)?;
    }
    w.finish(rest)
}

/// Checks a whole snapshot file's length and checksum in one streaming pass. Returns its header
/// and its CRC.
pub fn verify_snapshot(file: &dyn FsFile) -> Result<(SnapshotHeader, u64, u32), FileError> {
    let len = file.len()?;
    if len < (SNAPSHOT_HEADER_BYTES + 8 + 4) as u64 {
        return Err(FileError::Short);
    }
    let body = len - 4;
    let mut crc = 0;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < body {
        let n = (body - at).min(buf.len() as u64) as usize;
        read_exact_at(file, &mut buf[..n], at).map_err(short)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    let mut t = [0u8; 4];
    read_exact_at(file, &mut t, body).map_err(short)?;
    let found = u32::from_le_bytes(t);
    if crc != found {
        return Err(FileError::Checksum {
            expected: crc,
            found,
        });
    }
    Ok((SnapshotHeader::read(file)?, len, crc))
}

/// Reads the raw stream back, block by block. The file's CRC must have been verified first, so
/// lengths are trusted only as far as the blocks actually hold bytes.
struct BlockReader<'a> {
    /// `None` for a reader of one block in memory (a DUMP payload: see [`undump`]).
    file: Option<&'a dyn FsFile>,
    offset: u64,
    end: u64,
    block: Vec<u8>,
    pos: usize,
    done: bool,
    /// An encrypted file's keyring, and what its blocks are bound to (see [`block_aad`]).
    open: Option<(&'a Keyring, Vec<u8>)>,
    index: u64,
}

impl BlockReader<'_> {
    fn next_block(&mut self) -> Result<(), FileError> {
        let Some(file) = self
            .file
            .filter(|_| !self.done && self.offset + 8 <= self.end)
        else {
            return Err(FileError::Short);
        };
        let mut h = [0u8; 8];
        read_exact_at(file, &mut h, self.offset).map_err(short)?;
        let (raw, stored) = (u32_at(&h, 0) as usize, u32_at(&h, 4) as usize);
        self.offset += 8;
        if raw == 0 {
            self.done = true;
            return if stored == 0 {
                Err(FileError::Short)
            } else {
                Err(FileError::BadField)
            };
        }
        let over = if self.open.is_some() { SEAL_BYTES } else { 0 };
        if raw > BLOCK_RAW_MAX
            || stored < over
            || stored - over > raw
            || self.offset + stored as u64 > self.end
        {
            return Err(FileError::BadField);
        }
        let mut s = vec![0u8; stored];
        read_exact_at(file, &mut s, self.offset).map_err(short)?;
        self.offset += stored as u64;
        if let Some((ring, file)) = &self.open {
            let what = format!("snapshot block {}", self.index);
            s = ring.open(&what, &block_aad(file, self.index, raw), &s)?;
        }
        self.index += 1;
        self.block = if s.len() == raw {
            s
        } else {
            lz4_flex::block::decompress(&s, raw).map_err(|_| FileError::BadField)?
        };
        if self.block.len() != raw {
            return Err(FileError::BadField);
        }
        self.pos = 0;
        Ok(())
    }

    fn read(&mut self, mut out: &mut [u8]) -> Result<(), FileError> {
        while !out.is_empty() {
            if self.pos == self.block.len() {
                self.next_block()?;
            }
            let n = out.len().min(self.block.len() - self.pos);
            out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            out = &mut out[n..];
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, FileError> {
        let mut b = [0u8; 1];
        self.read(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32, FileError> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, FileError> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A length-prefixed byte string: `len u32`, then `len` bytes.
    fn field(&mut self) -> Result<Bytes, FileError> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    /// A length-prefixed byte string, into `out` (cleared first): no allocation once `out`
    /// has grown to the longest.
    fn field_into(&mut self, out: &mut Vec<u8>) -> Result<(), FileError> {
        let mut left = self.u32()? as usize;
        out.clear();
        while left > 0 {
            if self.pos == self.block.len() {
                self.next_block()?;
            }
            let n = left.min(self.block.len() - self.pos);
            out.extend_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            left -= n;
        }
        Ok(())
    }

    /// `len` bytes, copied out so that no block stays alive behind a value.
    fn bytes(&mut self, len: usize) -> Result<Bytes, FileError> {
        if self.pos + len <= self.block.len() {
            let b = Bytes::copy_from_slice(&self.block[self.pos..self.pos + len]);
            self.pos += len;
            return Ok(b);
        }
        let mut v = Vec::with_capacity(len.min(BLOCK_RAW_MAX));
        let mut left = len;
        while left > 0 {
            if self.pos == self.block.len() {
                self.next_block()?;
            }
            let n = left.min(self.block.len() - self.pos);
            v.extend_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            left -= n;
        }
        Ok(Bytes::from(v))
    }

    /// After the last item: no raw bytes left, then the end block, then exactly the CRC.
    fn finish(mut self) -> Result<(), FileError> {
        if self.pos != self.block.len() {
            return Err(FileError::BadField);
        }
        match self.next_block() {
            Err(FileError::Short) if self.done && self.offset == self.end => Ok(()),
            Err(FileError::Short) if self.done => Err(FileError::BadField),
            Err(e) => Err(e),
            Ok(()) => Err(FileError::BadField),
        }
    }
}

/// A record or request section in a snapshot that does not decode. The file's checksum held, so
/// what a newer keel may write (a record version, mutation tag or outcome kind this one does not
/// know) is `Unloadable`, never damage; anything else is not a file keel wrote.
fn record_error(e: RecordError) -> FileError {
    match e {
        RecordError::Version(_) | RecordError::Tag { .. } | RecordError::OutcomeKind(_) => {
            FileError::Unloadable(format!("an engine record it cannot read ({e})"))
        }
        _ => FileError::BadField,
    }
}

/// A value as read: a string's bytes (in the reader's buffer), or a collection.
pub(crate) enum ValueIn<'a> {
    String(&'a [u8]),
    Collection(Value),
}

/// Buffers the entries are read into, reused from one entry to the next.
#[derive(Default)]
struct EntryBuf {
    key: Vec<u8>,
    value: Vec<u8>,
}

/// One entry read: key, version, expiry and value.
type EntryIn<'a> = (&'a [u8], Lsn, Option<u64>, ValueIn<'a>);

/// Reads one entry (see [`encode_entry`] for version 4's layout) into `buf`: key, version,
/// expiry, value; `None` at version 4's end of the entries.
/// A version above the file's LSN, an empty collection, a field or member twice, or a NaN score
/// is not a file keel wrote.
fn read_entry<'a>(
    r: &mut BlockReader<'_>,
    header: &SnapshotHeader,
    buf: &'a mut EntryBuf,
) -> Result<Option<EntryIn<'a>>, FileError> {
    let (version, exp, collection);
    if header.typed() {
        let kind = r.u8()?;
        if kind == END_OF_ENTRIES {
            return Ok(None);
        }
        r.field_into(&mut buf.key)?;
        version = r.u64()?;
        exp = r.u64()?;
        collection = read_value(r, kind, &mut buf.value)?;
    } else {
        r.field_into(&mut buf.key)?;
        r.field_into(&mut buf.value)?;
        collection = None;
        version = r.u64()?;
        exp = r.u64()?;
    }
    if version > header.lsn {
        return Err(FileError::BadField);
    }
    let value = match collection {
        Some(c) => ValueIn::Collection(c),
        None => ValueIn::String(&buf.value),
    };
    Ok(Some((&buf.key, version, (exp != 0).then_some(exp), value)))
}

/// Reads a value of `kind`: a string into `string` (and `None`), or a collection.
fn read_value(
    r: &mut BlockReader<'_>,
    kind: u8,
    string: &mut Vec<u8>,
) -> Result<Option<Value>, FileError> {
    // Kinds 6 and 7 are free; every unknown code is a newer keel's, not damage: the
    // file's checksum held.
    let Some(kind) = Kind::from_code(kind) else {
        return Err(FileError::Unloadable(format!("a value of kind {kind}")));
    };
    if kind == Kind::String {
        r.field_into(string)?;
        return Ok(None);
    }
    if kind == Kind::Stream {
        return read_stream(r).map(|x| Some(Value::Stream(x)));
    }
    let n = r.u32()?;
    if n == 0 {
        return Err(FileError::BadField);
    }
    let bad = |fresh: bool| {
        if fresh {
            Ok(())
        } else {
            Err(FileError::BadField)
        }
    };
    let value = match kind {
        Kind::Hash => {
            let mut h = HashValue::new();
            for _ in 0..n {
                let f = r.field()?;
                let v = r.field()?;
                bad(h.insert(&f, &v))?;
            }
            Value::Hash(h)
        }
        Kind::Set => {
            let mut set = SetValue::new();
            for _ in 0..n {
                bad(set.insert(&r.field()?))?;
            }
            Value::Set(set)
        }
        Kind::List => {
            let mut l = ListValue::new();
            for _ in 0..n {
                l.push_back(&r.field()?);
            }
            Value::List(l)
        }
        Kind::String | Kind::Stream => unreachable!("returned above"),
        Kind::ZSet => {
            let mut z = ZSetValue::new();
            for _ in 0..n {
                let m = r.field()?;
                let score = f64::from_le_bytes(r.u64()?.to_le_bytes());
                if score.is_nan() {
                    return Err(FileError::BadField);
                }
                bad(z.insert(&m, score))?;
            }
            Value::ZSet(z)
        }
    };
    Ok(Some(value))
}

/// A stream, as [`write_entry`] lays it out: its IDs in increasing order, none above its last
/// ID, each entry's fields in pairs.
fn read_stream(r: &mut BlockReader<'_>) -> Result<StreamValue, FileError> {
    let id = |r: &mut BlockReader<'_>| -> Result<StreamId, FileError> {
        Ok(StreamId::new(r.u64()?, r.u64()?))
    };
    let last_id = id(r)?;
    let entries_added = r.u64()?;
    let max_deleted = id(r)?;
    let n = r.u32()?;
    let mut x = StreamValue::new();
    let mut prev = None;
    for _ in 0..n {
        let entry = id(r)?;
        let fields = r.u32()?;
        if prev.is_some_and(|p| entry <= p) || entry > last_id || fields == 0 || fields % 2 != 0 {
            return Err(FileError::BadField);
        }
        let fields = (0..fields)
            .map(|_| r.field())
            .collect::<Result<Vec<_>, _>>()?;
        x.add(entry, &fields);
        prev = Some(entry);
    }
    let opt = |n: u64| (n != u64::MAX).then_some(n);
    let mut group_name: Option<Bytes> = None;
    for _ in 0..r.u32()? {
        let name = r.field()?;
        if group_name.as_ref().is_some_and(|p| name <= *p) {
            return Err(FileError::BadField);
        }
        let mut g = StreamGroup::new(id(r)?, opt(r.u64()?));
        let mut names: Vec<Bytes> = Vec::new();
        for _ in 0..r.u32()? {
            let c = r.field()?;
            if names.last().is_some_and(|p| c <= *p) {
                return Err(FileError::BadField);
            }
            let seen = r.u64()?;
            g.set_consumer(&c, seen, opt(r.u64()?));
            names.push(c);
        }
        let mut prev = None;
        for _ in 0..r.u32()? {
            let entry = id(r)?;
            let owner = names.get(r.u32()? as usize).ok_or(FileError::BadField)?;
            if prev.is_some_and(|p| entry <= p) {
                return Err(FileError::BadField);
            }
            let (at, n) = (r.u64()?, r.u64()?);
            g.set_pending(entry, owner, at, n);
            prev = Some(entry);
        }
        x.groups.insert(Bytes::copy_from_slice(&name), g);
        group_name = Some(name);
    }
    x.last_id = last_id;
    x.entries_added = entries_added;
    x.max_deleted = max_deleted;
    Ok(x)
}

/// The key id an encrypted snapshot's first block was sealed with (every block uses the same
/// key), or `None` for a plaintext snapshot. Needs no key; check the file's CRC first.
pub fn snapshot_key_id(file: &dyn FsFile) -> Result<Option<KeyId>, FileError> {
    let header = SnapshotHeader::read(file)?;
    if !header.encrypted() {
        return Ok(None);
    }
    let id = if header.typed() { FILE_ID_BYTES } else { 0 };
    let mut b = [0u8; 12];
    read_exact_at(file, &mut b, (SNAPSHOT_HEADER_BYTES + id) as u64).map_err(short)?;
    Ok(Some(u32_at(&b, 8)))
}

/// A decoded snapshot.
pub struct Loaded {
    pub header: SnapshotHeader,
    pub(crate) image: Image,
    pub requests: Vec<(Lsn, Request)>,
    /// The tail's records (LSN, mutations), in LSN order, for the loader to apply by version
    /// ([`crate::keyspace::apply_by_version`]). Empty once `read_snapshot` returns.
    pub(crate) tail: Vec<(Lsn, Vec<Mutation>)>,
}

/// Verifies and loads a snapshot file. `expect` is the manifest that names it, when there is one:
/// the file must then have its length, CRC and LSN.
pub fn read_snapshot(
    file: &dyn FsFile,
    expect: Option<&Manifest>,
    keyring: Option<&Keyring>,
) -> Result<Loaded, FileError> {
    // Sized by the header's count once it is read (the table's shard count is fixed at birth);
    // a false count costs at most the largest shard count's empty shards, and a table sized
    // for KEYS_PER_SHARD_TARGET keys for each shard that gets a key (table::Loader).
    let mut map: Option<MapLoader> = None;
    let mut last: Option<Vec<u8>> = None;
    let mut loaded = read_snapshot_into(
        file,
        expect,
        keyring,
        &mut |header, key, version, expires_at_ms, value| {
            // Before version 4, keys are written in order; anything else is not a file keel
            // wrote.
            if !header.typed() {
                if last.as_deref().is_some_and(|l| l >= key) {
                    return Err(FileError::BadField);
                }
                let l = last.get_or_insert_with(Vec::new);
                l.clear();
                l.extend_from_slice(key);
            }
            let map = map.get_or_insert_with(|| {
                Map::loader(usize::try_from(header.count).unwrap_or(usize::MAX))
            });
            match value {
                ValueIn::String(v) => map.insert_string(key, v, expires_at_ms, version),
                ValueIn::Collection(c) => map.insert(key, c, expires_at_ms, version),
            }
            // A key twice is not a file keel wrote.
            .map_err(|_| FileError::BadField)
        },
    )?;
    let mut map = match map {
        Some(m) => m.finish().map_err(|_| FileError::BadField)?,
        None => Map::default(),
    };
    for (lsn, mutations) in std::mem::take(&mut loaded.tail) {
        apply_by_version(&mut map, &mutations, lsn);
    }
    loaded.image.map = map;
    Ok(loaded)
}

/// Receives a snapshot's entries one by one: the header, then key, version, expiry and value.
/// Each key comes once; the sink refuses a second one.
pub(crate) type EntrySink<'a> =
    dyn FnMut(&SnapshotHeader, &[u8], Lsn, Option<u64>, ValueIn<'_>) -> Result<(), FileError> + 'a;

/// Verifies a snapshot file and hands its entries to `sink`. Returns the rest: the header, the
/// requests and the system namespace (the image's map is left empty).
pub(crate) fn read_snapshot_into(
    file: &dyn FsFile,
    expect: Option<&Manifest>,
    keyring: Option<&Keyring>,
    sink: &mut EntrySink<'_>,
) -> Result<Loaded, FileError> {
    if let Some(m) = expect {
        let len = file.len()?;
        if len != m.snapshot_bytes {
            return Err(FileError::Mismatch {
                field: "snapshot length",
                expected: m.snapshot_bytes,
                found: len,
            });
        }
    }
    // The checksum pass and the decoding run at once, on two threads: the pass reads the file
    // from the disk while the decoder, the slower of the two, follows it through the page
    // cache. Nothing decoded is used unless the whole file's checksum holds, and the
    // checksum's verdict comes first, as if it had run alone before: a damaged file is
    // reported as damaged, whatever the decoder made of it. The decoder treats its bytes as
    // untrusted meanwhile: lengths are bounded by the blocks, and what it allocates by what it
    // reads (and, for a false count in the header, by the table's largest shard count).
    let (verified, decoded) = std::thread::scope(|s| {
        let verify = std::thread::Builder::new()
            .name("keel-snapshot-crc".into())
            .spawn_scoped(s, || verify_snapshot(file));
        match verify {
            Ok(v) => {
                let decoded = decode_snapshot(file, keyring, sink);
                let verified = v.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                (verified, decoded)
            }
            // No thread to be had: one after the other.
            Err(_) => match verify_snapshot(file) {
                Ok(v) => (Ok(v), decode_snapshot(file, keyring, sink)),
                Err(e) => (Err(e), Err(FileError::Short)),
            },
        }
    });
    let (header, _, crc) = verified?;
    if let Some(m) = expect {
        if crc != m.snapshot_crc {
            return Err(FileError::Mismatch {
                field: "snapshot checksum",
                expected: m.snapshot_crc.into(),
                found: crc.into(),
            });
        }
        if header.lsn != m.snapshot_lsn {
            return Err(FileError::Mismatch {
                field: "snapshot LSN",
                expected: m.snapshot_lsn,
                found: header.lsn,
            });
        }
    }
    decoded
}

/// Decodes a snapshot file, handing its entries to `sink`: what [`read_snapshot_into`] does
/// once the file's checksum holds, but without that check.
fn decode_snapshot(
    file: &dyn FsFile,
    keyring: Option<&Keyring>,
    sink: &mut EntrySink<'_>,
) -> Result<Loaded, FileError> {
    let len = file.len()?;
    if len < (SNAPSHOT_HEADER_BYTES + 8 + 4) as u64 {
        return Err(FileError::Short);
    }
    let header = SnapshotHeader::read(file)?;
    // Version 4's blocks follow its file id, and are bound to it; version 3's to the header.
    let mut blocks = SNAPSHOT_HEADER_BYTES as u64;
    let mut bound_to = header.encode().to_vec();
    if header.typed() {
        bound_to = vec![0u8; FILE_ID_BYTES];
        read_exact_at(file, &mut bound_to, blocks).map_err(short)?;
        blocks += FILE_ID_BYTES as u64;
        // A plaintext file's id is zero: keel writes nothing else there.
        if !header.encrypted() && bound_to.iter().any(|&b| b != 0) {
            return Err(FileError::BadField);
        }
    }
    let open = if header.encrypted() {
        let Some(ring) = keyring else {
            return Err(KeyError::Missing {
                what: "the snapshot".into(),
            }
            .into());
        };
        Some((ring, bound_to))
    } else {
        None
    };
    let mut r = BlockReader {
        file: Some(file),
        offset: blocks,
        end: len - 4,
        block: Vec::new(),
        pos: 0,
        done: false,
        open,
        index: 0,
    };
    // Before version 4 the header counts the entries. Version 4's end with a marker, and the
    // header's count must match.
    let mut n = 0;
    let mut buf = EntryBuf::default();
    while header.typed() || n < header.count {
        let Some((key, version, expires_at_ms, value)) = read_entry(&mut r, &header, &mut buf)?
        else {
            (header.count == n)
                .then_some(())
                .ok_or(FileError::BadField)?;
            break;
        };
        sink(&header, key, version, expires_at_ms, value)?;
        n += 1;
    }
    let mut requests = Vec::new();
    for _ in 0..header.request_count {
        let n = r.u32()? as usize;
        let one = r.bytes(n)?;
        let (l, req, next) = decode_request(&one, 0).map_err(record_error)?;
        if next != one.len() || l > header.lsn {
            return Err(FileError::BadField);
        }
        requests.push((l, req));
    }
    let mut system = System::new();
    if header.version >= 2 {
        let mut last: Option<Bytes> = None;
        for _ in 0..r.u32()? {
            let key = r.field()?;
            let value = r.field()?;
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(FileError::BadField);
            }
            last = Some(key.clone());
            system.insert(key, value);
        }
    }
    let mut tail = Vec::new();
    if header.typed() {
        for _ in 0..r.u32()? {
            let n = r.u32()? as usize;
            let lsn = r.u64()?;
            let record = r.bytes(n.checked_sub(8).ok_or(FileError::BadField)?)?;
            let after_last = tail.last().is_none_or(|(l, _)| *l < lsn);
            if lsn == 0 || lsn > header.lsn || !after_last {
                return Err(FileError::BadField);
            }
            let decoded = crate::record::decode(&record, lsn).map_err(record_error)?;
            tail.push((lsn, decoded.mutations));
        }
        // The header's fields, repeated: they must be the header's.
        let mut echo = [0u8; ECHOED.end - ECHOED.start];
        r.read(&mut echo)?;
        if echo[..] != header.encode()[ECHOED] {
            return Err(FileError::BadField);
        }
    }
    r.finish()?;
    Ok(Loaded {
        header,
        image: Image {
            map: Map::default(),
            system,
        },
        requests,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::keyspace::{change, Change};
    use crate::table::tests::{
        build, check_table, observe, random_value, seeds, MEntry, MValue, Rng,
    };
    use crate::table::Table;
    use crate::types::Entry;
    use keel_wal::{Fs, OpenMode, StdFs};

    fn sample(n: u64) -> Image {
        let mut m = Map::default();
        for i in 0..n {
            m.insert(
                format!("k{i:06}").as_bytes(),
                &Entry {
                    value: Bytes::from(vec![i as u8; (i % 300) as usize]),
                    version: i + 1,
                    expires_at_ms: (i % 3 == 0).then_some(1000 + i),
                },
            );
        }
        let mut system = System::new();
        system.insert(Bytes::from_static(b"applied"), Bytes::from_static(b"3-17"));
        system.insert(Bytes::from_static(b"membership"), Bytes::new());
        Image { map: m, system }
    }

    fn reqs() -> Vec<(Lsn, Request)> {
        vec![(
            5,
            Request {
                id: Bytes::from_static(b"r"),
                at_ms: 9,
                outcome: crate::types::Outcome::GuardFailed(0),
            },
        )]
    }

    fn write(dir: &Path, map: &Image, compress: bool) -> (PathBuf, Manifest) {
        write_with(dir, map, compress, None)
    }

    fn write_with(
        dir: &Path,
        map: &Image,
        compress: bool,
        ring: Option<&Keyring>,
    ) -> (PathBuf, Manifest) {
        let path = dir.join(format!("s-{compress}-{}", ring.is_some()));
        let f = StdFs.open(&path, OpenMode::CreateTruncate).unwrap();
        let at = Position {
            lsn: 77_000,
            at_ms: 1234,
        };
        let (len, crc) = write_snapshot(&*f, map, &reqs(), at, compress, ring).unwrap();
        let m = Manifest {
            snapshot_lsn: 77_000,
            snapshot_bytes: len,
            snapshot_crc: crc,
        };
        (path, m)
    }

    fn load(path: &Path, m: Option<&Manifest>) -> Result<Loaded, FileError> {
        load_with(path, m, None)
    }

    fn load_with(
        path: &Path,
        m: Option<&Manifest>,
        ring: Option<&Keyring>,
    ) -> Result<Loaded, FileError> {
        let f = StdFs.open(path, OpenMode::Read).unwrap();
        read_snapshot(&*f, m, ring)
    }

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text).unwrap()
    }
    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    /// A checkpoint hands the writer parts already encoded, many blocks long at once (a part is
    /// whole shards of large values): they are cut into whole blocks and read back entry for
    /// entry, compressed or not, encrypted or not.
    #[test]
    fn encoded_parts_of_many_blocks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ring = ring(K1);
        for (compress, keyring) in [(false, None), (true, None), (true, Some(&ring))] {
            let path = dir.path().join("s.keel");
            let f = StdFs.open(&path, OpenMode::CreateTruncate).unwrap();
            let mut w = SnapshotWriter::new(&*f, compress, keyring).unwrap();
            let mut want = Map::default();
            for part in 0..3u64 {
                let (mut bytes, mut n) = (Vec::new(), 0);
                for i in 0..40u64 {
                    let key = format!("p{part}k{i}");
                    let value = vec![(part * 40 + i) as u8; 100_000 + i as usize];
                    let e = Entry {
                        value: Bytes::from(value),
                        version: part + 1,
                        expires_at_ms: None,
                    };
                    encode_entry(
                        &mut bytes,
                        key.as_bytes(),
                        1 + part,
                        None,
                        ValueRef::String(&e.value),
                    );
                    want.insert(key.as_bytes(), &e);
                    n += 1;
                }
                assert!(bytes.len() > 3 * BLOCK_RAW_MAX);
                w.encoded_entries(&bytes, n).unwrap();
            }
            let rest = Rest {
                at: Position { lsn: 3, at_ms: 0 },
                requests: &[],
                system: &System::new(),
                tail: &[],
            };
            w.finish(&rest).unwrap();
            drop(f);
            let loaded = load_with(&path, None, keyring).unwrap();
            assert_eq!(loaded.header.count, 120);
            assert!(loaded.image.map == want, "compress {compress}");
        }
    }

    #[test]
    fn encrypted_snapshots_hold_no_plaintext_and_need_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = sample(20_000);
        map.system.insert(
            Bytes::from_static(b"secret"),
            Bytes::from_static(b"TOPSECRET"),
        );
        let k1 = ring(K1);
        for compress in [true, false] {
            let (path, m) = write_with(dir.path(), &map, compress, Some(&k1));
            let bytes = std::fs::read(&path).unwrap();
            assert!(!bytes.windows(9).any(|w| w == b"TOPSECRET"));
            assert!(!bytes.windows(7).any(|w| w == b"k000123"));
            let l = load_with(&path, Some(&m), Some(&k1)).unwrap();
            assert_eq!(l.image.map, map.map);
            assert_eq!(l.image.system, map.system);
            assert_eq!(
                (l.header.version, l.header.encrypted()),
                (SNAPSHOT_VERSION, true)
            );
            let f = StdFs.open(&path, OpenMode::Read).unwrap();
            assert_eq!(snapshot_key_id(&*f).unwrap(), Some(1));
            // The checksum needs no key.
            assert_eq!(verify_snapshot(&*f).unwrap().2, m.snapshot_crc);
            // Rotated: the old key still opens it.
            let rotated = ring(&format!(
                "2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100\n{K1}"
            ));
            assert!(load_with(&path, Some(&m), Some(&rotated)).is_ok());
            for (keys, what) in [
                (None, "no encryption key"),
                (
                    Some(ring(
                        "1 1111111111111111111111111111111111111111111111111111111111111111",
                    )),
                    "does not decrypt",
                ),
                (
                    Some(ring(
                        "3 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
                    )),
                    "not in the encryption keyring",
                ),
            ] {
                let e = load_with(&path, Some(&m), keys.as_ref()).err().unwrap();
                assert!(matches!(e, FileError::Key(_)), "{e}");
                assert!(e.to_string().contains(what), "{e}");
            }
        }
        let (plain, _) = write(dir.path(), &map, false);
        let f = StdFs.open(&plain, OpenMode::Read).unwrap();
        assert_eq!(snapshot_key_id(&*f).unwrap(), None);
    }

    /// Blocks swapped (or a ciphertext byte changed) with the CRC recomputed, as someone altering
    /// the file would: the tags catch it, as a key error that names the block.
    #[test]
    fn altered_encrypted_blocks_with_a_good_crc_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = ring(K1);
        let (path, _) = write_with(dir.path(), &sample(20_000), false, Some(&k1));
        let bytes = std::fs::read(&path).unwrap();
        let with_crc = |mut b: Vec<u8>| {
            let n = b.len() - 4;
            let crc = crc32c::crc32c(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
        };
        let mut b = bytes.clone();
        b[SNAPSHOT_HEADER_BYTES + FILE_ID_BYTES + 8 + 40] ^= 1;
        with_crc(b);
        let e = load_with(&path, None, Some(&k1)).err().unwrap();
        assert!(e.to_string().contains("snapshot block 0"), "{e}");
        // Swap two blocks of equal size.
        let mut blocks = Vec::new();
        let mut at = SNAPSHOT_HEADER_BYTES + FILE_ID_BYTES;
        while u32_at(&bytes, at) != 0 {
            blocks.push((at, u32_at(&bytes, at + 4) as usize));
            at += 8 + blocks.last().unwrap().1;
        }
        let (a, stored) = blocks[0];
        let (b2, _) = *blocks[1..].iter().find(|(_, n)| *n == stored).unwrap();
        let mut b = bytes.clone();
        let block_a = bytes[a..a + 8 + stored].to_vec();
        b.copy_within(b2..b2 + 8 + stored, a);
        b[b2..b2 + 8 + stored].copy_from_slice(&block_a);
        with_crc(b);
        assert!(matches!(
            load_with(&path, None, Some(&k1)),
            Err(FileError::Key(_))
        ));
        // The header is written last and bound to no block, but its fields are repeated inside
        // the sealed blocks: a header that says another LSN is refused.
        let mut b = bytes.clone();
        b[16] ^= 1;
        with_crc(b);
        assert!(matches!(
            load_with(&path, None, Some(&k1)),
            Err(FileError::BadField)
        ));
        // A block from another file of the same contents, under the same key and at the same
        // place, does not open: each file's blocks are bound to its own random id.
        let odir = dir.path().join("o");
        std::fs::create_dir(&odir).unwrap();
        let (other, _) = write_with(&odir, &sample(20_000), false, Some(&k1));
        let other = std::fs::read(&other).unwrap();
        let mut b = bytes.clone();
        assert_ne!(other[48..64], bytes[48..64], "file ids differ");
        b[a..a + 8 + stored].copy_from_slice(&other[a..a + 8 + stored]);
        with_crc(b);
        let e = load_with(&path, None, Some(&k1)).err().unwrap();
        assert!(e.to_string().contains("snapshot block 0"), "{e}");
        std::fs::write(&path, &bytes).unwrap();
        load_with(&path, None, Some(&k1)).unwrap();
    }

    #[test]
    fn round_trip_compressed_and_raw_across_many_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let map = sample(20_000); // ~3 MB raw: several blocks, entries spanning block edges
        let mut sizes = Vec::new();
        for compress in [true, false] {
            let (path, m) = write(dir.path(), &map, compress);
            let l = load(&path, Some(&m)).unwrap();
            assert_eq!(l.image.map, map.map);
            assert_eq!(l.image.system, map.system);
            assert_eq!(l.header.version, SNAPSHOT_VERSION);
            assert_eq!(l.requests, reqs());
            assert_eq!((l.header.lsn, l.header.at_ms), (77_000, 1234));
            sizes.push(m.snapshot_bytes);
        }
        assert!(
            sizes[0] * 2 < sizes[1],
            "repetitive values compress: {sizes:?}"
        );
    }

    /// A random keyspace of every kind, each collection non-empty, as the table model tests
    /// draw it.
    fn typed_model(seed: u64) -> BTreeMap<Vec<u8>, MEntry> {
        let mut r = Rng(seed);
        let mut model = BTreeMap::default();
        for i in 0..400u64 {
            let mut key = r.bytes(6);
            key.extend_from_slice(&i.to_le_bytes());
            let value = loop {
                let v = random_value(&mut r);
                let empty = match &v {
                    MValue::String(_) => false,
                    MValue::Hash(h) => h.is_empty(),
                    MValue::Set(m) => m.is_empty(),
                    MValue::List(l) => l.is_empty(),
                    MValue::ZSet(z) => z.is_empty(),
                    MValue::Stream(_) => false,
                };
                if !empty {
                    break v;
                }
            };
            let expiry = r.chance(30).then(|| 1 + r.below(1 << 40));
            let version = 1 + r.below(77_000);
            model.insert(
                key,
                MEntry {
                    value,
                    version,
                    expiry,
                },
            );
        }
        model
    }

    fn write_table(path: &Path, t: &Table, compress: bool, ring: Option<&Keyring>) -> Manifest {
        let f = StdFs.open(path, OpenMode::CreateTruncate).unwrap();
        let entries = t
            .iter()
            .map(|e| (e.key(), e.version(), e.expires_at_ms(), e.value()));
        let at = Position {
            lsn: 77_000,
            at_ms: 1234,
        };
        let rest = Rest {
            at,
            requests: &reqs(),
            system: &sample(0).system,
            tail: &[],
        };
        let (len, crc) = write_entries(&*f, entries, &rest, compress, ring).unwrap();
        Manifest {
            snapshot_lsn: 77_000,
            snapshot_bytes: len,
            snapshot_crc: crc,
        }
    }

    fn read_table(path: &Path, m: &Manifest, ring: Option<&Keyring>) -> Result<Table, FileError> {
        let f = StdFs.open(path, OpenMode::Read).unwrap();
        let mut t = Table::new();
        let mut sink = |_: &SnapshotHeader, key: &[u8], version, exp, value: ValueIn<'_>| {
            let fresh = match value {
                ValueIn::String(v) => !t.insert_string(key, v, exp, version),
                ValueIn::Collection(c) => !t.insert(key, c, exp, version),
            };
            fresh.then_some(()).ok_or(FileError::BadField)
        };
        let l = read_snapshot_into(&*f, Some(m), ring, &mut sink)?;
        assert_eq!((l.header.version, l.header.lsn), (SNAPSHOT_VERSION, 77_000));
        assert_eq!((l.requests, l.image.system), (reqs(), sample(0).system));
        Ok(t)
    }

    /// Version 4 holds every kind of value: a table of strings, hashes, sets, lists and sorted
    /// sets (packed and large, binary and empty members, with and without expiry) comes back
    /// entry for entry, raw, compressed and encrypted.
    /// DUMP then RESTORE gives back every kind of value as it was, and a payload with any one
    /// byte changed, cut short or from another version is refused, never read as a value.
    #[test]
    fn a_dump_payload_gives_back_its_value_and_refuses_any_change() {
        let mut r = Rng(7);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let m = random_value(&mut r);
            let empty = match &m {
                MValue::Hash(h) => h.is_empty(),
                MValue::Set(x) => x.is_empty(),
                MValue::List(l) => l.is_empty(),
                MValue::ZSet(z) => z.is_empty(),
                MValue::String(_) | MValue::Stream(_) => false,
            };
            if empty {
                continue;
            }
            let value = build(&m);
            kinds.insert(value.kind() as u8);
            let payload = dump(value.as_ref());
            let back = undump(&payload).expect("its own payload");
            assert_eq!(observe(back.as_ref()), m);
            for i in 0..payload.len() {
                let mut bad = payload.clone();
                bad[i] ^= 0x20;
                assert_eq!(
                    undump(&bad).err(),
                    Some(Undump::VersionOrChecksum),
                    "byte {i}"
                );
            }
            for n in 0..payload.len() {
                assert!(undump(&payload[..n]).is_err(), "cut at {n}");
            }
        }
        assert_eq!(kinds.len(), 6, "every kind of value: {kinds:?}");
        // The checksum holds, the value inside does not: a kind keel does not know.
        let mut other = vec![6u8];
        other.extend_from_slice(&[0; 20]);
        other.extend_from_slice(&DUMP_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&other);
        other.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(undump(&other).err(), Some(Undump::BadFormat));
        // A payload of another version, its checksum made to hold.
        let mut newer = dump(ValueRef::String(b"v"));
        let at = newer.len() - 6;
        newer[at..at + 2].copy_from_slice(&(DUMP_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&newer[..at + 2]);
        newer[at + 2..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(undump(&newer).err(), Some(Undump::VersionOrChecksum));
    }

    #[test]
    fn typed_entries_come_back_into_a_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed");
        let k1 = ring(K1);
        for seed in seeds(6) {
            let model = typed_model(seed);
            let mut t = Table::new();
            for (k, e) in &model {
                t.insert(k, build(&e.value), e.expiry, e.version);
            }
            for (compress, keys) in [(false, None), (true, None), (true, Some(&k1))] {
                let m = write_table(&path, &t, compress, keys);
                check_table(&read_table(&path, &m, keys).unwrap(), &model, seed);
            }
        }
    }

    /// A snapshot with a hash and a sorted set loads them with their versions and expiries (an
    /// unknown kind is a newer keel's: see the next test).
    #[test]
    fn a_hash_and_a_sorted_set_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typed");
        let mut t = Table::new();
        t.insert_string(b"s", b"v", None, 1);
        let mut h = HashValue::new();
        h.insert(b"f", b"v");
        t.insert(b"h", Value::Hash(h), Some(9), 2);
        let m = write_table(&path, &t, false, None);
        let map = load(&path, Some(&m)).unwrap().image.map;
        assert_eq!(map.len(), 2);
        let h = map.get(b"h").unwrap();
        assert_eq!((h.version(), h.expires_at_ms()), (2, Some(9)));
        assert!(matches!(h.value(), ValueRef::Hash(h) if h.get(b"f") == Some(&b"v"[..])));
        let mut z = ZSetValue::new();
        z.insert(b"m", 1.5);
        t.insert(b"z", Value::ZSet(z), None, 3);
        let m = write_table(&path, &t, false, None);
        let map = load(&path, Some(&m)).unwrap().image.map;
        let z = map.get(b"z").unwrap();
        assert_eq!(z.version(), 3);
        assert!(matches!(z.value(), ValueRef::ZSet(z) if z.score(b"m") == Some(1.5)));
    }

    /// A version 4 file whose checksum holds but whose entries keel would never write: an
    /// empty collection, a field or member twice, a NaN score, a key twice, a version after the
    /// file's LSN. Each is refused as a bad field; an unknown kind as a newer keel's.
    #[test]
    fn typed_entries_keel_never_writes_are_refused() {
        fn entry(kind: u8, key: &[u8], version: u64, value: &[&[u8]]) -> Vec<u8> {
            let mut b = vec![kind];
            b.extend_from_slice(&(key.len() as u32).to_le_bytes());
            b.extend_from_slice(key);
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes());
            for part in value {
                b.extend_from_slice(part);
            }
            b
        }
        fn file(entries: &[Vec<u8>]) -> Vec<u8> {
            file_with_tail(entries, &[])
        }
        /// `tail`: (LSN, record) pairs.
        fn file_with_tail(entries: &[Vec<u8>], tail: &[(u64, Vec<u8>)]) -> Vec<u8> {
            file_counted(entries, tail, entries.len() as u64)
        }
        /// A file whose header (and the header's echo) says `count` entries.
        fn file_counted(entries: &[Vec<u8>], tail: &[(u64, Vec<u8>)], count: u64) -> Vec<u8> {
            let header = SnapshotHeader {
                version: SNAPSHOT_VERSION,
                lsn: 10,
                at_ms: 1,
                count,
                request_count: 0,
                compressed: false,
                encrypted: false,
            };
            let mut raw = entries.concat();
            let echo = header.encode();
            raw.push(END_OF_ENTRIES);
            raw.extend_from_slice(&0u32.to_le_bytes()); // no system entries
            raw.extend_from_slice(&(tail.len() as u32).to_le_bytes());
            for (lsn, record) in tail {
                raw.extend_from_slice(&(8 + record.len() as u32).to_le_bytes());
                raw.extend_from_slice(&lsn.to_le_bytes());
                raw.extend_from_slice(record);
            }
            raw.extend_from_slice(&echo[ECHOED]);
            let mut f = header.encode().to_vec();
            f.extend_from_slice(&[0u8; FILE_ID_BYTES]);
            f.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            f.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            f.extend_from_slice(&raw);
            f.extend_from_slice(&[0u8; 8]);
            let crc = crc32c::crc32c(&f);
            f.extend_from_slice(&crc.to_le_bytes());
            f
        }
        let n = |x: u32| x.to_le_bytes().to_vec();
        let s = |b: &[u8]| [&(b.len() as u32).to_le_bytes()[..], b].concat();
        let score = |x: f64| x.to_le_bytes().to_vec();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let read = |bytes: Vec<u8>| {
            std::fs::write(&path, bytes).unwrap();
            let f = StdFs.open(&path, OpenMode::Read).unwrap();
            read_snapshot_into(&*f, None, None, &mut |_, _, _, _, _| Ok(())).map(|_| ())
        };
        let good = [
            entry(0, b"s", 3, &[&s(b"v")]),
            entry(1, b"h", 3, &[&n(1), &s(b"f"), &s(b"v")]),
            entry(2, b"set", 3, &[&n(2), &s(b"a"), &s(b"b")]),
            entry(3, b"l", 3, &[&n(2), &s(b"a"), &s(b"a")]),
            entry(4, b"z", 3, &[&n(1), &s(b"m"), &score(1.5)]),
        ];
        read(file(&good)).unwrap();
        // Streams: metadata, entries (maybe none), then no consumer groups.
        let id = |ms: u64, seq: u64| [ms.to_le_bytes(), seq.to_le_bytes()].concat();
        let u = |x: u64| x.to_le_bytes().to_vec();
        let stream = |entry_id: Vec<u8>, m: u32| {
            let (last, zero, one, groups) = (id(2, 0), id(0, 0), u(1), n(0));
            let parts = [
                &last,
                &one,
                &zero,
                &n(1),
                &entry_id,
                &n(m),
                &s(b"f"),
                &s(b"v"),
                &groups,
            ];
            entry(5, b"x", 3, &parts.map(|p| &p[..]))
        };
        read(file(&[stream(id(2, 0), 2)])).unwrap();
        let empty = entry(5, b"e", 3, &[&id(0, 0), &u(0), &id(0, 0), &n(0), &n(0)]);
        read(file(&[empty])).unwrap();
        // An empty stream with consumer groups: each a name, last ID, entries-read, consumers
        // (name, seen, active) and pending entries (ID, consumer's place, time, count).
        // (name, consumers, pending entries as (ID's ms, consumer's place)).
        type Group<'a> = (&'a [u8], u32, &'a [(u64, u32)]);
        let grouped = |groups: &[Group]| {
            let mut v = [id(5, 0), u(1), id(0, 0), n(0), n(groups.len() as u32)].concat();
            for (name, consumers, pending) in groups {
                v.extend([s(name), id(5, 0), u(1), n(*consumers)].concat());
                for c in 0..*consumers {
                    v.extend([s(&[b'c', b'0' + c as u8]), u(7), u(u64::MAX)].concat());
                }
                v.extend(n(pending.len() as u32));
                for (ms, owner) in *pending {
                    v.extend([id(*ms, 0), n(*owner), u(9), u(1)].concat());
                }
            }
            entry(5, b"g", 3, &[&v[..]])
        };
        read(file(&[grouped(&[
            (b"a", 2, &[(1, 0), (2, 1)]),
            (b"b", 0, &[]),
        ])]))
        .unwrap();
        for (why, bad) in [
            (
                "a pending entry of no consumer",
                grouped(&[(b"a", 1, &[(1, 1)])]),
            ),
            (
                "pending IDs not increasing",
                grouped(&[(b"a", 1, &[(2, 0), (1, 0)])]),
            ),
            (
                "group names not increasing",
                grouped(&[(b"b", 0, &[]), (b"a", 0, &[])]),
            ),
        ] {
            let e = read(file(&[bad])).expect_err(why);
            assert!(matches!(e, FileError::BadField), "{why}: {e}");
        }
        // The header's count must match the entries (here the echo agrees with the header), and
        // the header's fields their echo after the tail; a plaintext file's id is zero.
        let with_crc = |mut f: Vec<u8>| {
            let end = f.len() - 4;
            let crc = crc32c::crc32c(&f[..end]);
            f[end..].copy_from_slice(&crc.to_le_bytes());
            f
        };
        for count in [4u64, 6, u64::MAX] {
            let e = read(file_counted(&good, &[], count)).unwrap_err();
            assert!(matches!(e, FileError::BadField), "count {count}: {e}");
            let mut f = file(&good);
            f[32..40].copy_from_slice(&count.to_le_bytes());
            let e = read(with_crc(f)).unwrap_err();
            assert!(
                matches!(e, FileError::BadField),
                "header count {count}: {e}"
            );
        }
        let mut f = file(&good);
        f[SNAPSHOT_HEADER_BYTES] = 1;
        let e = read(with_crc(f)).unwrap_err();
        assert!(
            matches!(e, FileError::BadField),
            "a plaintext file's id: {e}"
        );
        for (why, bad) in [
            ("empty hash", entry(1, b"h", 3, &[&n(0)])),
            ("empty list", entry(3, b"l", 3, &[&n(0)])),
            (
                "field twice",
                entry(1, b"h", 3, &[&n(2), &s(b"f"), &s(b"v"), &s(b"f"), &s(b"w")]),
            ),
            (
                "member twice",
                entry(2, b"set", 3, &[&n(2), &s(b"a"), &s(b"a")]),
            ),
            (
                "NaN score",
                entry(4, b"z", 3, &[&n(1), &s(b"m"), &score(f64::NAN)]),
            ),
            (
                "sorted member twice",
                entry(
                    4,
                    b"z",
                    3,
                    &[&n(2), &s(b"m"), &score(1.0), &s(b"m"), &score(2.0)],
                ),
            ),
            ("version after the LSN", entry(0, b"s", 11, &[&s(b"v")])),
            ("stream entry above its last ID", stream(id(3, 0), 2)),
            ("stream entry with an odd field count", stream(id(1, 0), 1)),
        ] {
            let e = read(file(&[good[0].clone(), bad])).expect_err(why);
            assert!(matches!(e, FileError::BadField), "{why}: {e}");
        }
        // A tail record with a mutation tag this keel does not know is a newer keel's too.
        let mut record = Vec::new();
        let gone = Mutation::Delete {
            key: Bytes::from_static(b"s"),
        };
        crate::record::encode(1, None, std::slice::from_ref(&gone), &mut record);
        read(file_with_tail(&good, &[(5, record.clone())])).unwrap();
        // Version, flags, at_ms and the mutation count come before the first tag.
        assert_eq!(record[14], 2, "the delete's tag");
        record[14] = 99;
        let e = read(file_with_tail(&good, &[(5, record)])).unwrap_err();
        assert!(matches!(&e, FileError::Unloadable(_)), "{e}");
        assert!(e.to_string().contains("unknown mutation tag 99"), "{e}");
        let e = read(file(&[entry(6, b"x", 3, &[&n(1)])])).unwrap_err();
        assert!(
            matches!(&e, FileError::Unloadable(k) if k == "a value of kind 6"),
            "{e}"
        );
        // A key twice is refused by the engine's loader.
        std::fs::write(&path, file(&[good[0].clone(), good[0].clone()])).unwrap();
        let e = load(&path, None).err().expect("a key twice");
        assert!(matches!(e, FileError::BadField), "{e}");
        std::fs::write(&path, file(&[good[0].clone()])).unwrap();
        assert_eq!(load(&path, None).unwrap().image.map.len(), 1);
    }

    /// `n` random records (LSNs 1 to n) of one to four mutations over keys `k0` to `k<keys - 1>`:
    /// sets, deletes, DeleteAlls, system entries and every relative mutation.
    fn random_records(r: &mut Rng, n: u64, keys: u64) -> Vec<Vec<Mutation>> {
        let key = |i: u64| Bytes::from(format!("k{i}"));
        (1..=n)
            .map(|lsn| {
                (0..1 + r.below(4))
                    .map(|j| match r.below(37) {
                        36 => Mutation::StringWrite {
                            key: key(r.below(keys)),
                            create: r.chance(30),
                            offset: r.below(6),
                            bytes: Bytes::from(format!("w{lsn}")),
                        },
                        33 | 34 => Mutation::ZAdd {
                            key: key(r.below(keys)),
                            create: r.chance(30),
                            pairs: (0..1 + r.below(3))
                                .map(|_| {
                                    let m = Bytes::from(format!("m{}", r.below(6)));
                                    (m, r.below(5) as f64 - 2.0)
                                })
                                .collect(),
                        },
                        35 => Mutation::ZRem {
                            key: key(r.below(keys)),
                            members: (0..1 + r.below(3))
                                .map(|_| Bytes::from(format!("m{}", r.below(6))))
                                .collect(),
                        },
                        0 => Mutation::DeleteAll,
                        1 => Mutation::System {
                            key: key(r.below(2)),
                            value: Bytes::from(format!("s{lsn}")),
                        },
                        2..=7 => Mutation::Delete {
                            key: key(r.below(keys)),
                        },
                        // The relative ones: their effect depends on the key's entry.
                        20..=22 => Mutation::HashSet {
                            key: key(r.below(keys)),
                            create: r.chance(30),
                            pairs: (0..1 + r.below(3))
                                .map(|f| {
                                    let f = Bytes::from(format!("f{}", r.below(4) + f));
                                    (f, Bytes::from(format!("h{lsn}.{j}")))
                                })
                                .collect(),
                        },
                        23 | 24 => Mutation::HashDel {
                            key: key(r.below(keys)),
                            fields: (0..1 + r.below(3))
                                .map(|_| Bytes::from(format!("f{}", r.below(6))))
                                .collect(),
                        },
                        25 => Mutation::Expire {
                            key: key(r.below(keys)),
                            expires_at_ms: r.chance(50).then(|| 1 + r.below(1000)),
                        },
                        26 | 27 => Mutation::SetAdd {
                            key: key(r.below(keys)),
                            create: r.chance(30),
                            members: (0..1 + r.below(3))
                                .map(|_| Bytes::from(format!("m{}", r.below(6))))
                                .collect(),
                        },
                        29 => Mutation::ListPush {
                            key: key(r.below(keys)),
                            create: r.chance(30),
                            front: r.chance(50),
                            elements: (0..1 + r.below(3))
                                .map(|e| Bytes::from(format!("e{lsn}.{j}.{e}")))
                                .collect(),
                        },
                        30 => Mutation::ListPop {
                            key: key(r.below(keys)),
                            front: r.chance(50),
                            count: r.below(3) as u32,
                        },
                        31 => Mutation::ListTrim {
                            key: key(r.below(keys)),
                            start: r.below(2),
                            end: r.below(4),
                        },
                        32 => Mutation::ListRem {
                            key: key(r.below(keys)),
                            count: r.below(3) as i64 - 1,
                            element: Bytes::from(format!("e{}.0.0", r.below(lsn))),
                        },
                        28 => Mutation::SetRem {
                            key: key(r.below(keys)),
                            members: (0..1 + r.below(3))
                                .map(|_| Bytes::from(format!("m{}", r.below(6))))
                                .collect(),
                        },
                        _ => Mutation::Set {
                            key: key(r.below(keys)),
                            value: Bytes::from(format!("v{lsn}.{j}")),
                            expires_at_ms: r.chance(30).then(|| 1 + r.below(1000)),
                        },
                    })
                    .collect()
            })
            .collect()
    }

    /// The true state after each of `records` (LSN i + 1 each), from the empty state.
    fn states_of(records: &[Vec<Mutation>]) -> Vec<Map> {
        let mut states = vec![Map::default()];
        for (i, muts) in records.iter().enumerate() {
            let mut m = states[i].clone();
            for mu in muts {
                match change(mu, i as u64 + 1) {
                    Change::Key(k, Some(e)) => {
                        m.insert(k, &e);
                    }
                    Change::Key(k, None) => {
                        m.remove(k);
                    }
                    Change::Edit(k, e) => m.edit(k, e, i as u64 + 1),
                    Change::All => m.clear(),
                    Change::System(..) => {}
                }
            }
            states.push(m);
        }
        states
    }

    /// A log replayed into an empty keyspace (recovery without a snapshot) or onto an image
    /// gives the true state, over up to 400 keys.
    #[test]
    fn a_log_replayed_onto_nothing_or_an_image_gives_the_true_state() {
        for seed in seeds(100) {
            let mut r = Rng(seed);
            let n = 1 + r.below(300);
            let keys = 1 + r.below(400);
            let records = random_records(&mut r, n, keys);
            let states = states_of(&records);
            let from = r.below(n + 1) as usize;
            let mut changes = crate::keyspace::Changes::default();
            for (i, muts) in records.iter().enumerate().skip(from) {
                changes.apply(muts, i as u64 + 1);
            }
            let mut image = Image {
                map: states[from].clone(),
                system: System::new(),
            };
            changes.merge_into(&mut image);
            assert_eq!(image.map, states[n as usize], "seed {seed}: from {from}");
        }
    }

    /// A shard-by-shard checkpoint's file: each shard of the image read at its own moment while
    /// records went on, and the records since the first moment as the tail. Loading it gives the
    /// state at the file's LSN exactly, values, versions and expiries, over random histories of
    /// sets, deletes, DeleteAlls, system entries and the relative hash, set and expiry mutations, in
    /// records of one to four mutations (the same key more than once in a record too).
    #[test]
    fn a_fuzzy_image_and_its_tail_load_as_of_the_snapshot_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzzy");
        for seed in seeds(300) {
            let mut r = Rng(seed);
            let n = 1 + r.below(40);
            let records = random_records(&mut r, n, 8);
            // The true state after each LSN.
            let states = states_of(&records);
            let start = r.below(n + 1);
            let end = start + r.below(n - start + 1);
            // Three shards (by key number), read in turn at non-decreasing moments in
            // [start, end].
            let mut moments: Vec<u64> = (0..3).map(|_| start + r.below(end - start + 1)).collect();
            moments.sort_unstable();
            let mut image = Map::default();
            for (shard, at) in moments.iter().enumerate() {
                for e in states[*at as usize].iter() {
                    let k = e.key();
                    let number: usize = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
                    if number % 3 == shard {
                        image.insert_typed(k, crate::keyspace::typed_of(e));
                    }
                }
            }
            let tail: Vec<(Lsn, Bytes)> = (start + 1..=end)
                .map(|lsn| {
                    let mut out = Vec::new();
                    crate::record::encode(lsn * 10, None, &records[lsn as usize - 1], &mut out);
                    (lsn, Bytes::from(out))
                })
                .collect();
            let entries = image
                .iter()
                .map(|e| (e.key(), e.version(), e.expires_at_ms(), e.value()));
            let f = StdFs.open(&path, OpenMode::CreateTruncate).unwrap();
            let rest = Rest {
                at: Position {
                    lsn: end,
                    at_ms: end * 10,
                },
                requests: &[],
                system: &System::new(),
                tail: &tail,
            };
            write_entries(&*f, entries, &rest, seed % 2 == 0, None).unwrap();
            let loaded = load(&path, None).unwrap();
            assert_eq!(
                loaded.image.map, states[end as usize],
                "seed {seed}: start {start}, end {end}, shards read at {moments:?}"
            );
            assert!(loaded.tail.is_empty());
        }
    }

    #[test]
    fn every_flip_or_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = write(dir.path(), &sample(40), true);
        let bytes = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad");
        // The checksum's verdict comes first, though the file is decoded while it is checked:
        // a flip is reported as a checksum mismatch (damage), never as what the decoder made of
        // the flipped byte (a newer version, say, which is not damage).
        let checksum = |r: Result<Loaded, FileError>| matches!(r, Err(FileError::Checksum { .. }));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            std::fs::write(&bad, &b).unwrap();
            assert!(checksum(load(&bad, Some(&m))), "flip at {i}");
            assert!(checksum(load(&bad, None)), "flip at {i}, no manifest");
        }
        for n in 0..bytes.len() {
            std::fs::write(&bad, &bytes[..n]).unwrap();
            let e = load(&bad, None).err().expect("a cut file");
            assert!(e.is_damage(), "cut at {n}: {e}");
        }
        // The same in a file of many blocks, entries spanning their edges.
        std::fs::create_dir(dir.path().join("big")).unwrap();
        let (big, bm) = write(&dir.path().join("big"), &sample(20_000), true);
        let bytes = std::fs::read(&big).unwrap();
        for i in (0..bytes.len()).step_by(9973) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            std::fs::write(&bad, &b).unwrap();
            assert!(checksum(load(&bad, Some(&bm))), "flip at {i}");
        }
        let other = Manifest {
            snapshot_lsn: 78,
            ..m
        };
        assert!(matches!(
            load(&path, Some(&other)),
            Err(FileError::Mismatch { .. })
        ));
        let mut mb = m.encode();
        mb[20] ^= 1;
        assert!(matches!(
            Manifest::decode(&mb),
            Err(FileError::Checksum { .. })
        ));
        // A flipped byte in the version field is damage, not a newer format.
        for i in 0..MANIFEST_BYTES {
            let mut mb = m.encode();
            mb[i] ^= 0x01;
            assert!(
                matches!(Manifest::decode(&mb), Err(FileError::Checksum { .. })),
                "flip at {i}"
            );
        }
        // A version that checks out is reported as a version; v1 is read as v2.
        let with_version = |v: u32| {
            let mut mb = m.encode();
            mb[8..12].copy_from_slice(&v.to_le_bytes());
            let crc = crc32c::crc32c(&mb[..36]);
            mb[36..40].copy_from_slice(&crc.to_le_bytes());
            Manifest::decode(&mb)
        };
        assert!(matches!(with_version(3), Err(FileError::Version(3))));
        assert_eq!(with_version(1).unwrap(), m);
        assert_eq!(with_version(MANIFEST_VERSION).unwrap(), m);
    }

    #[test]
    fn names_parse_back() {
        assert_eq!(parse_snapshot_name(&snapshot_name(42)), Some(42));
        assert_eq!(parse_snapshot_name("snap-42.keel"), None);
        assert_eq!(parse_snapshot_name("snap-00000000000000000042.tmp"), None);
    }
}
