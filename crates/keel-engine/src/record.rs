//! The engine's log record: the payload of one WAL record, holding the absolute effects of one
//! transaction. docs/FORMAT.md holds the same table.
//!
//! ```text
//! offset size field
//!      0    1 version        1
//!      1    1 flags          0 (reserved)
//!      2    4 count          number of mutations, u32 LE
//!      6      mutations, each:
//!             1 tag          1 = Set, 2 = Delete, 3 = DeleteAll
//!   Set:      4 key_len      u32 LE, then key bytes
//!             4 value_len    u32 LE, then value bytes
//!             8 expires_at   Unix ms, u64 LE; 0 = never
//!   Delete:   4 key_len      u32 LE, then key bytes
//!   DeleteAll: nothing
//! ```
//!
//! Records carry results, never deltas: an increment logs the value it produced, an expiry its
//! absolute time. Replaying a record twice therefore changes nothing (P7). The WAL frame already
//! checksums the bytes; decoding still checks every length before it slices.

use bytes::Bytes;

pub const RECORD_VERSION: u8 = 1;
const TAG_SET: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DELETE_ALL: u8 = 3;

/// One absolute effect on the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Set {
        key: Bytes,
        value: Bytes,
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: Bytes,
    },
    DeleteAll,
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("reserved flags set: {0:#04x}")]
    Flags(u8),
    #[error("record ends early at byte {0}")]
    Short(usize),
    #[error("unknown mutation tag {tag} at byte {at}")]
    Tag { tag: u8, at: usize },
    #[error("{len} trailing bytes after the last mutation")]
    Trailing { len: usize },
}

pub fn encode(mutations: &[Mutation], out: &mut Vec<u8>) {
    out.push(RECORD_VERSION);
    out.push(0);
    out.extend_from_slice(&(mutations.len() as u32).to_le_bytes());
    for m in mutations {
        match m {
            Mutation::Set {
                key,
                value,
                expires_at_ms,
            } => {
                out.push(TAG_SET);
                put_bytes(out, key);
                put_bytes(out, value);
                out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
            }
            Mutation::Delete { key } => {
                out.push(TAG_DELETE);
                put_bytes(out, key);
            }
            Mutation::DeleteAll => out.push(TAG_DELETE_ALL),
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(RecordError::Short(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, all: &Bytes) -> Result<Bytes, RecordError> {
        let len = self.u32()? as usize;
        let start = self.at;
        self.take(len)?;
        Ok(all.slice(start..start + len))
    }
}

/// Decodes a record. `buf` is shared, so keys and values are slices of it, not copies.
pub fn decode(buf: &Bytes) -> Result<Vec<Mutation>, RecordError> {
    let mut r = Reader { buf, at: 0 };
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(RecordError::Version(version));
    }
    let flags = r.u8()?;
    if flags != 0 {
        return Err(RecordError::Flags(flags));
    }
    let count = r.u32()? as usize;
    // Every mutation takes at least one byte: a count beyond the bytes left is a lie, and is
    // refused before anything is allocated for it.
    if count > buf.len() - r.at {
        return Err(RecordError::Short(r.at));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let at = r.at;
        out.push(match r.u8()? {
            TAG_SET => {
                let key = r.bytes(buf)?;
                let value = r.bytes(buf)?;
                let exp = r.u64()?;
                Mutation::Set {
                    key,
                    value,
                    expires_at_ms: (exp != 0).then_some(exp),
                }
            }
            TAG_DELETE => Mutation::Delete { key: r.bytes(buf)? },
            TAG_DELETE_ALL => Mutation::DeleteAll,
            tag => return Err(RecordError::Tag { tag, at }),
        });
    }
    if r.at != buf.len() {
        return Err(RecordError::Trailing {
            len: buf.len() - r.at,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Mutation> {
        vec![
            Mutation::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                expires_at_ms: Some(42),
            },
            Mutation::Delete {
                key: Bytes::from_static(b"gone"),
            },
            Mutation::DeleteAll,
            Mutation::Set {
                key: Bytes::new(),
                value: Bytes::new(),
                expires_at_ms: None,
            },
        ]
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        assert_eq!(decode(&Bytes::from(out)).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        for n in 0..out.len() {
            assert!(
                decode(&Bytes::copy_from_slice(&out[..n])).is_err(),
                "prefix {n}"
            );
        }
        let mut extra = out.clone();
        extra.push(0);
        assert_eq!(
            decode(&Bytes::from(extra)),
            Err(RecordError::Trailing { len: 1 })
        );
        let mut huge = out.clone();
        huge[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&Bytes::from(huge)).is_err());
        for i in 0..out.len() {
            for x in [0u8, 0xff, 0x7f] {
                let mut b = out.clone();
                b[i] = x;
                let _ = decode(&Bytes::from(b)); // must not panic
            }
        }
    }
}
