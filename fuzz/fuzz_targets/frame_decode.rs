//! Fuzzes `format::decode_frame` on arbitrary bytes.
//!
//! Input layout: `[mode, id_lo, id_hi, max0, max1, max2, frame bytes...]`.
//! - `mode` bit 0: before decoding, rewrite the header CRC (and the payload CRC, when the declared
//!   length fits in the buffer) so that the checks behind the CRCs are reached without the fuzzer
//!   having to solve CRC32C. Every property below must hold either way.
//! - segment id = 1 + u16, record_bytes_max = u24 capped to 1 MiB.
#![no_main]

use keel_wal::format::{
    decode_frame, encode_frame, encode_mark, frame_bytes, segment_seed, Decoded, FrameError,
    MARK_BYTES,
};
use libfuzzer_sys::fuzz_target;

const FRAME_HEADER_BYTES: usize = 32;
const RECORD_BYTES_MAX_CAP: u32 = 1 << 20;

fn fix_crcs(buf: &mut [u8], seed: u32) {
    if buf.len() < FRAME_HEADER_BYTES {
        return;
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().unwrap()) as usize;
    if let Some(payload) = buf.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES.saturating_add(len)) {
        let crc = crc32c::crc32c_append(seed, payload);
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c_append(seed, &buf[4..32]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let mode = data[0];
    let segment_id = 1 + u64::from(u16::from_le_bytes([data[1], data[2]]));
    let record_bytes_max =
        u32::from_le_bytes([data[3], data[4], data[5], 0]) % (RECORD_BYTES_MAX_CAP + 1);
    let seed = segment_seed(segment_id);
    let mut owned;
    let mut buf = &data[6..];
    if mode & 1 != 0 {
        owned = buf.to_vec();
        fix_crcs(&mut owned, seed);
        buf = &owned;
    }

    let d = decode_frame(buf, seed, record_bytes_max);
    // Deterministic.
    assert_eq!(d, decode_frame(buf, seed, record_bytes_max));

    // End and Zero mean exactly what they say.
    assert_eq!(matches!(d, Decoded::End), buf.is_empty(), "{d:?}");
    let head = &buf[..buf.len().min(FRAME_HEADER_BYTES)];
    assert_eq!(
        matches!(d, Decoded::Zero),
        !buf.is_empty() && head.iter().all(|&b| b == 0),
        "{d:?}"
    );

    if let Decoded::Mark(m) = d {
        // A mark is a bare header: it re-encodes to exactly its bytes, claims no LSN it precedes,
        // and one byte less is truncated.
        assert!(buf.len() >= MARK_BYTES);
        assert!(m.lsn > m.durable_lsn && m.lsn >= 1, "{m:?}");
        assert!(encode_mark(seed, m.lsn, m.durable_lsn, m.closed) == buf[..MARK_BYTES]);
        assert_eq!(decode_frame(&buf[..MARK_BYTES], seed, 0), d);
        assert!(matches!(
            decode_frame(&buf[..MARK_BYTES - 1], seed, record_bytes_max),
            Decoded::Bad(FrameError::Truncated { .. })
        ));
        return;
    }
    let Decoded::Frame(f) = d else {
        return;
    };
    assert!(f.total_bytes <= buf.len(), "{f:?}");
    assert_eq!(f.total_bytes, frame_bytes(f.payload.len()));
    assert_eq!(f.total_bytes % 8, 0);
    assert!(f.payload.len() <= record_bytes_max as usize);
    assert!(f.lsn > f.durable_lsn, "{f:?}");
    assert!(f.lsn >= 1);
    assert_eq!(
        f.payload,
        &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + f.payload.len()]
    );

    // Re-encoding reproduces exactly the bytes that were decoded.
    let mut out = Vec::with_capacity(f.total_bytes);
    encode_frame(&mut out, seed, f.lsn, f.durable_lsn, f.flags, f.payload);
    assert_eq!(out.len(), f.total_bytes);
    assert!(
        out == buf[..f.total_bytes],
        "re-encoding differs from the decoded bytes"
    );

    // Only the frame's own bytes matter: its exact extent decodes to the same frame...
    assert_eq!(
        decode_frame(&buf[..f.total_bytes], seed, record_bytes_max),
        d
    );
    // ...one byte less is truncated...
    assert!(matches!(
        decode_frame(&buf[..f.total_bytes - 1], seed, record_bytes_max),
        Decoded::Bad(FrameError::Truncated { .. })
    ));
    // ...and the length limit is inclusive.
    let len = f.payload.len() as u32;
    assert_eq!(decode_frame(buf, seed, len), d);
    if len > 0 {
        assert_eq!(
            decode_frame(buf, seed, len - 1),
            Decoded::Bad(FrameError::BadLength {
                len: len.into(),
                max: (len - 1).into(),
            })
        );
    }

    // A frame never validates under another seed. This is sound, not probabilistic: CRC32C over a
    // fixed-length input (the 28 header bytes) is an affine function of the seed whose linear part
    // (the CRC register shifted 224 times) is invertible, so distinct seeds give distinct header
    // CRCs. Compare seeds, not segment ids: two ids may share a seed.
    let other_seed = segment_seed(segment_id.wrapping_add(1 + u64::from(mode >> 1)));
    if other_seed != seed {
        assert!(
            !matches!(
                decode_frame(buf, other_seed, record_bytes_max),
                Decoded::Frame(_)
            ),
            "frame validated under seeds {seed:#x} and {other_seed:#x}"
        );
    }
});
