//! The on-disk format of a log segment. docs/FORMAT.md holds the same tables; keep them equal.
//!
//! ```text
//! Segment header, 64 bytes at offset 0, all integers little-endian
//! offset size field
//!      0    8 magic            "KEELWAL\0"
//!      8    4 format_version   1 = frame payloads are plaintext; 2 = every data frame's payload
//!                                 is sealed (encryption at rest, see `crypt`)
//!     12    4 header_bytes     64
//!     16    8 segment_id       1, 2, 3, ... consecutive within one log
//!     24    8 first_lsn        LSN of the first frame this segment may hold
//!     32    8 created_unix_ms  wall clock when the segment was created (informational)
//!     40   20 reserved         zero
//!     60    4 header_crc       CRC32C of bytes 0..60
//!
//! Frame, at offset 64 and then at every 8-byte boundary that follows the previous frame
//! offset size field
//!      0    4 header_crc   CRC32C(seed, bytes 4..32) with seed = CRC32C(segment_id as u64 LE)
//!      4    4 payload_len  bytes of payload, at most the configured record_bytes_max
//!      8    8 lsn          >= 1; consecutive across frames and segments
//!     16    8 durable_lsn  every LSN <= this was durable before this frame was written
//!     24    1 kind         1 = data, 2 = mark; other values are invalid
//!     25    1 flags        data: bit 0 = BATCH_CONTINUES (the next frame belongs to the same
//!                          batch); mark: bit 1 = CLOSED (written by a clean close)
//!     26    2 reserved     zero
//!     28    4 payload_crc  CRC32C(seed, payload)
//!     32    n payload
//!   32+n    p zero padding up to the next multiple of 8
//!
//! Mark frame: the same 32-byte header, kind 2, payload_len 0, no payload
//!      4    4 payload_len  0
//!      8    8 lsn          the NEXT LSN (last record + 1); a mark consumes no LSN
//!     16    8 durable_lsn  every LSN <= this was durable (a sync covering it had returned)
//!                          before the mark was written
//!     25    1 flags        bit 1 = CLOSED; no other bit may be set
//!     28    4 payload_crc  CRC32C(seed, empty) = seed
//! ```
//!
//! A mark is written right after the last frame, at the offset where the next batch will start
//! (and which that batch overwrites): after a sync when no further batch is queued (not synced),
//! and on close after the final sync (synced, with CLOSED). It is not a record. A mark whose
//! durable_lsn covers every frame before it proves the whole log durable, so recovery treats
//! damage before it as corruption, never as a torn tail (see `recovery`). It is only ever written
//! after a sync returned success, so a mark that survives a crash never claims more than was
//! durable.
//!
//! In a version 2 segment, a data frame's payload is the record sealed by [`crate::crypt`]:
//! `key_id u32 | nonce 24 | ciphertext | tag 16`, with the associated data `lsn u64 LE | flags`,
//! so a frame moved to another LSN, or with its batch flag changed, no longer opens. Both CRCs
//! cover the sealed bytes: damage is told from a wrong key without any key. A version 2 payload
//! may be up to `record_bytes_max + SEAL_BYTES` long.
//!
//! Frames are 8-byte aligned, so the length word never straddles a sector boundary. Both CRCs are
//! seeded with the segment id, so a frame left over from another segment (a reused or recycled
//! file, a misdirected write) never validates. An all-zero header is the end of the log: LSN 0 is
//! never valid, so zeros can never pass as a frame.

use crate::Lsn;

pub const MAGIC: [u8; 8] = *b"KEELWAL\0";
/// A segment whose frame payloads are plaintext.
pub const FORMAT_VERSION: u32 = 1;
/// A segment whose data frames' payloads are sealed (encrypted). Older keel refuses it as an
/// unsupported version instead of misreading it.
pub const FORMAT_VERSION_ENCRYPTED: u32 = 2;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const FRAME_HEADER_BYTES: usize = 32;
pub const FRAME_ALIGN: usize = 8;

/// The largest LSN a frame or segment may carry. Far beyond any real log (2^62 records), and it
/// leaves room so that `lsn + 1` never overflows on values read from disk.
pub const LSN_MAX: Lsn = 1 << 62;

pub const KIND_DATA: u8 = 1;
pub const KIND_MARK: u8 = 2;
/// On a data frame: the next frame belongs to the same atomic batch.
pub const FLAG_BATCH_CONTINUES: u8 = 0b0000_0001;
/// On a mark: written by a clean close, after the final sync, and synced itself.
pub const FLAG_CLOSED: u8 = 0b0000_0010;
const DATA_FLAGS_KNOWN: u8 = FLAG_BATCH_CONTINUES;
const MARK_FLAGS_KNOWN: u8 = FLAG_CLOSED;
/// Bytes a mark takes on disk: a frame header and nothing else.
pub const MARK_BYTES: usize = FRAME_HEADER_BYTES;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));
// The length word sits at offset 4 of an 8-aligned frame: it can never cross a 512-byte sector.
const _: () = assert!(512usize.is_multiple_of(FRAME_ALIGN));

/// The longest payload a frame may declare in a segment of this kind: a sealed payload is its
/// record and `SEAL_BYTES` more. Pass it to [`decode_frame`] as its `record_bytes_max`.
pub fn payload_max(record_bytes_max: u32, encrypted: bool) -> u32 {
    if encrypted {
        record_bytes_max.saturating_add(crate::crypt::SEAL_BYTES as u32)
    } else {
        record_bytes_max
    }
}

/// Bytes a frame with `payload_len` bytes of payload takes on disk, padding included.
pub const fn frame_bytes(payload_len: usize) -> usize {
    (FRAME_HEADER_BYTES + payload_len).div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// The CRC seed of a segment.
pub fn segment_seed(segment_id: u64) -> u32 {
    crc32c::crc32c(&segment_id.to_le_bytes())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_id: u64,
    pub first_lsn: Lsn,
    pub created_unix_ms: u64,
    /// Version 2: every data frame's payload is sealed.
    pub encrypted: bool,
}

/// Why a segment header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    Short { len: usize },
    BadMagic,
    UnsupportedVersion { found: u32 },
    Checksum { expected: u32, found: u32 },
    BadField,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        let version = if self.encrypted {
            FORMAT_VERSION_ENCRYPTED
        } else {
            FORMAT_VERSION
        };
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Magic first, then version (a newer keel's segment must say "unsupported version", not
    /// "bad checksum"), then the checksum, then the fields.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderError::Short { len: b.len() });
        }
        if b[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_ENCRYPTED {
            return Err(HeaderError::UnsupportedVersion { found: version });
        }
        let expected = crc32c::crc32c(&b[0..60]);
        let found = u32_at(b, 60);
        if expected != found {
            return Err(HeaderError::Checksum { expected, found });
        }
        let h = SegmentHeader {
            segment_id: u64_at(b, 16),
            first_lsn: u64_at(b, 24),
            created_unix_ms: u64_at(b, 32),
            encrypted: version == FORMAT_VERSION_ENCRYPTED,
        };
        if u32_at(b, 12) as usize != SEGMENT_HEADER_BYTES
            || b[40..60].iter().any(|&x| x != 0)
            || h.first_lsn == 0
            || h.first_lsn > LSN_MAX
            || h.segment_id == 0
            || h.segment_id > LSN_MAX
        {
            return Err(HeaderError::BadField);
        }
        Ok(h)
    }
}

/// Appends one frame to `out`. `out.len()` must be 8-aligned (it is the position in the segment
/// relative to an aligned base).
pub fn encode_frame(
    out: &mut Vec<u8>,
    seed: u32,
    lsn: Lsn,
    durable_lsn: Lsn,
    flags: u8,
    payload: &[u8],
) {
    debug_assert_eq!(out.len() % FRAME_ALIGN, 0);
    debug_assert!(
        lsn > durable_lsn,
        "a frame cannot be durable before it is written"
    );
    let start = out.len();
    let payload_len = u32::try_from(payload.len()).expect("payload length validated by caller");
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let h = &mut out[start..start + FRAME_HEADER_BYTES];
    h[4..8].copy_from_slice(&payload_len.to_le_bytes());
    h[8..16].copy_from_slice(&lsn.to_le_bytes());
    h[16..24].copy_from_slice(&durable_lsn.to_le_bytes());
    h[24] = KIND_DATA;
    h[25] = flags;
    h[28..32].copy_from_slice(&crc32c::crc32c_append(seed, payload).to_le_bytes());
    let header_crc = crc32c::crc32c_append(seed, &h[4..32]);
    h[0..4].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(start + frame_bytes(payload.len()), 0);
}

/// The mark frame (layout above) that says: the next record gets `next_lsn`, and everything up
/// to `durable_lsn` was durable when this was written.
pub fn encode_mark(seed: u32, next_lsn: Lsn, durable_lsn: Lsn, closed: bool) -> [u8; MARK_BYTES] {
    debug_assert!(next_lsn > durable_lsn, "a mark claims no LSN it precedes");
    let mut h = [0u8; MARK_BYTES];
    h[8..16].copy_from_slice(&next_lsn.to_le_bytes());
    h[16..24].copy_from_slice(&durable_lsn.to_le_bytes());
    h[24] = KIND_MARK;
    h[25] = if closed { FLAG_CLOSED } else { 0 };
    h[28..32].copy_from_slice(&crc32c::crc32c_append(seed, &[]).to_le_bytes());
    let header_crc = crc32c::crc32c_append(seed, &h[4..32]);
    h[0..4].copy_from_slice(&header_crc.to_le_bytes());
    h
}

/// A frame that decoded and passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub lsn: Lsn,
    pub durable_lsn: Lsn,
    pub flags: u8,
    pub payload: &'a [u8],
    /// Bytes on disk, padding included.
    pub total_bytes: usize,
}

impl Frame<'_> {
    pub fn batch_continues(&self) -> bool {
        self.flags & FLAG_BATCH_CONTINUES != 0
    }
}

/// A mark frame that decoded and passed every check. It is not a record: it ends the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The LSN the next record gets.
    pub lsn: Lsn,
    /// Every LSN up to this was durable when the mark was written.
    pub durable_lsn: Lsn,
    /// Written by a clean close.
    pub closed: bool,
}

/// Why the bytes at a position are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes remain than a frame header, or than the length the header declares.
    Truncated {
        needed: usize,
        available: usize,
    },
    HeaderChecksum {
        expected: u32,
        found: u32,
    },
    BadLength {
        len: u64,
        max: u64,
    },
    PayloadChecksum {
        expected: u32,
        found: u32,
    },
    BadKind {
        kind: u8,
    },
    BadFlags {
        flags: u8,
    },
    /// Reserved bytes, padding, LSN 0 or above `LSN_MAX`, a durable_lsn not below the frame's
    /// own LSN, or a mark with a payload.
    BadField,
}

/// What lies at a position in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Frame(Frame<'a>),
    /// A mark frame: the records end here.
    Mark(Mark),
    /// An all-zero header: the end of the log in preallocated space.
    Zero,
    /// No bytes left at all.
    End,
    Bad(FrameError),
}

/// Decodes the frame at the start of `buf`. Every field is checked before it is trusted; the
/// declared length is checked against `record_bytes_max` and the bytes available before any
/// slice is taken. Never panics, whatever `buf` holds.
pub fn decode_frame(buf: &[u8], seed: u32, record_bytes_max: u32) -> Decoded<'_> {
    if buf.is_empty() {
        return Decoded::End;
    }
    if buf.len() < FRAME_HEADER_BYTES {
        if buf.iter().all(|&b| b == 0) {
            return Decoded::Zero;
        }
        return Decoded::Bad(FrameError::Truncated {
            needed: FRAME_HEADER_BYTES,
            available: buf.len(),
        });
    }
    let h = &buf[..FRAME_HEADER_BYTES];
    if h.iter().all(|&b| b == 0) {
        return Decoded::Zero;
    }
    let expected = crc32c::crc32c_append(seed, &h[4..32]);
    let found = u32_at(h, 0);
    if expected != found {
        return Decoded::Bad(FrameError::HeaderChecksum { expected, found });
    }
    let len = u32_at(h, 4);
    if len > record_bytes_max {
        return Decoded::Bad(FrameError::BadLength {
            len: len.into(),
            max: record_bytes_max.into(),
        });
    }
    let lsn = u64_at(h, 8);
    let durable_lsn = u64_at(h, 16);
    let (kind, flags) = (h[24], h[25]);
    let flags_known = match kind {
        KIND_DATA => DATA_FLAGS_KNOWN,
        KIND_MARK => MARK_FLAGS_KNOWN,
        _ => return Decoded::Bad(FrameError::BadKind { kind }),
    };
    if flags & !flags_known != 0 {
        return Decoded::Bad(FrameError::BadFlags { flags });
    }
    if h[26..28] != [0, 0]
        || lsn == 0
        || lsn > LSN_MAX
        || durable_lsn >= lsn
        || (kind == KIND_MARK && len != 0)
    {
        return Decoded::Bad(FrameError::BadField);
    }
    let total_bytes = frame_bytes(len as usize);
    if buf.len() < total_bytes {
        return Decoded::Bad(FrameError::Truncated {
            needed: total_bytes,
            available: buf.len(),
        });
    }
    let payload = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len as usize];
    let expected = crc32c::crc32c_append(seed, payload);
    let found = u32_at(h, 28);
    if expected != found && !crate::mutated("skip_checksum") {
        return Decoded::Bad(FrameError::PayloadChecksum { expected, found });
    }
    if buf[FRAME_HEADER_BYTES + len as usize..total_bytes]
        .iter()
        .any(|&b| b != 0)
    {
        return Decoded::Bad(FrameError::BadField);
    }
    if kind == KIND_MARK {
        return Decoded::Mark(Mark {
            lsn,
            durable_lsn,
            closed: flags & FLAG_CLOSED != 0,
        });
    }
    Decoded::Frame(Frame {
        lsn,
        durable_lsn,
        flags,
        payload,
        total_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader {
            segment_id: 7,
            first_lsn: 100,
            created_unix_ms: 42,
            encrypted: false,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        let mut bad = b;
        bad[8] = 9;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::UnsupportedVersion { found: 9 })
        );
        let mut bad = b;
        bad[20] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::Checksum { .. })
        ));
        assert_eq!(
            SegmentHeader::decode(&b[..10]),
            Err(HeaderError::Short { len: 10 })
        );
    }

    #[test]
    fn frame_round_trip_every_length() {
        let seed = segment_seed(3);
        for len in 0..40 {
            let payload: Vec<u8> = (0..len as u8).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, seed, 5, 4, 0, &payload);
            assert_eq!(out.len(), frame_bytes(len));
            assert_eq!(out.len() % 8, 0);
            match decode_frame(&out, seed, 1024) {
                Decoded::Frame(f) => {
                    assert_eq!((f.lsn, f.durable_lsn, f.payload), (5, 4, &payload[..]));
                    assert_eq!(f.total_bytes, out.len());
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let seed = segment_seed(1);
        let mut out = Vec::new();
        encode_frame(&mut out, seed, 9, 3, FLAG_BATCH_CONTINUES, b"hello, world");
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_frame(&bad, seed, 1024), Decoded::Frame(_)),
                "bit {bit} flipped and the frame still decoded"
            );
        }
    }

    #[test]
    fn mark_round_trip_and_every_bit_flip_is_caught() {
        let seed = segment_seed(4);
        for closed in [false, true] {
            let m = encode_mark(seed, 10, 9, closed);
            assert_eq!(
                decode_frame(&m, seed, 1024),
                Decoded::Mark(Mark {
                    lsn: 10,
                    durable_lsn: 9,
                    closed
                })
            );
            for bit in 0..m.len() * 8 {
                let mut bad = m;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(decode_frame(&bad, seed, 1024), Decoded::Bad(_)),
                    "bit {bit} flipped and the mark still decoded"
                );
            }
            assert!(matches!(
                decode_frame(&m, segment_seed(5), 1024),
                Decoded::Bad(FrameError::HeaderChecksum { .. })
            ));
        }
        // A mark carries no payload, and no data flag; a data frame no mark flag. Forged with
        // valid checksums, each is refused.
        let reseal = |h: &mut [u8]| {
            let crc = crc32c::crc32c_append(seed, &h[4..32]);
            h[0..4].copy_from_slice(&crc.to_le_bytes());
        };
        let mut m = encode_mark(seed, 10, 9, false).to_vec();
        m[4] = 8;
        m.extend_from_slice(&[0; 8]);
        m[28..32].copy_from_slice(&crc32c::crc32c_append(seed, &[0; 8]).to_le_bytes());
        reseal(&mut m);
        assert_eq!(
            decode_frame(&m, seed, 1024),
            Decoded::Bad(FrameError::BadField)
        );
        let mut m = encode_mark(seed, 10, 9, false);
        m[25] = FLAG_BATCH_CONTINUES;
        reseal(&mut m);
        assert_eq!(
            decode_frame(&m, seed, 1024),
            Decoded::Bad(FrameError::BadFlags { flags: 1 })
        );
        let mut d = Vec::new();
        encode_frame(&mut d, seed, 10, 9, 0, b"x");
        d[25] = FLAG_CLOSED;
        reseal(&mut d);
        assert_eq!(
            decode_frame(&d, seed, 1024),
            Decoded::Bad(FrameError::BadFlags { flags: 2 })
        );
    }

    #[test]
    fn another_segments_frame_does_not_validate() {
        let mut out = Vec::new();
        encode_frame(&mut out, segment_seed(1), 9, 0, 0, b"stale");
        assert!(matches!(
            decode_frame(&out, segment_seed(2), 1024),
            Decoded::Bad(FrameError::HeaderChecksum { .. })
        ));
    }

    #[test]
    fn zeros_end_and_lengths_are_checked_before_use() {
        let seed = segment_seed(1);
        assert_eq!(decode_frame(&[0u8; 64], seed, 16), Decoded::Zero);
        assert_eq!(decode_frame(&[0u8; 5], seed, 16), Decoded::Zero);
        assert_eq!(decode_frame(&[], seed, 16), Decoded::End);
        let mut out = Vec::new();
        encode_frame(&mut out, seed, 1, 0, 0, &[7u8; 100]);
        assert_eq!(
            decode_frame(&out, seed, 99),
            Decoded::Bad(FrameError::BadLength { len: 100, max: 99 })
        );
        assert!(matches!(
            decode_frame(&out[..out.len() - 8], seed, 1024),
            Decoded::Bad(FrameError::Truncated { .. })
        ));
    }
}
