//! Strings as bit arrays and byte ranges: SETRANGE, SETBIT, BITFIELD and BITOP as Redis 7.2
//! defines them, and the byte-range write ([`Mutation::StringWrite`]) that logs only what
//! changed, so that a SETBIT on a large bitmap logs a byte, not the bitmap.
//!
//! Bits are numbered as Redis numbers them: bit 0 is the most significant bit of byte 0.

use bytes::Bytes;

use crate::record::Mutation;
use crate::types::{BitFieldAction, BitFieldOp, BitOp, Overflow};

/// `old` with `bytes` written at `offset`, zero bytes filling any gap past its end.
pub(crate) fn write_at(old: &[u8], offset: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = old.to_vec();
    let end = offset + bytes.len();
    if out.len() < end {
        out.resize(end, 0);
    }
    out[offset..end].copy_from_slice(bytes);
    out
}

/// The StringWrite that turns `old` into `new` (never shorter), or `None` when they are equal:
/// the bytes from the first that differs to the last that differs (to the end when `new` is
/// longer: the grown part must be written even where it is zero). `old` is `None` when the key
/// was absent or expired: the write then creates the string.
pub(crate) fn diff_write(key: Bytes, old: Option<&[u8]>, new: &[u8]) -> Option<Mutation> {
    let create = old.is_none();
    let old = old.unwrap_or_default();
    debug_assert!(new.len() >= old.len());
    if create && new.is_empty() {
        return None;
    }
    // A created string starts empty and zero-padded: its leading zero bytes need no logging.
    let first = if create {
        new.iter().position(|&b| b != 0).unwrap_or(new.len() - 1)
    } else {
        (0..new.len()).find(|&i| old.get(i) != Some(&new[i]))?
    };
    let last = if new.len() > old.len() {
        new.len() - 1
    } else {
        (first..new.len()).rev().find(|&i| old[i] != new[i])?
    };
    Some(Mutation::StringWrite {
        key,
        create,
        offset: first as u64,
        bytes: Bytes::copy_from_slice(&new[first..=last]),
    })
}

/// Redis's GETRANGE index rules: negative indexes count from the end, out-of-range ends clamp.
pub(crate) fn substring(v: &[u8], start: i64, end: i64) -> &[u8] {
    let len = v.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return &[];
    }
    let s = if start < 0 { len + start } else { start }.max(0);
    let e = if end < 0 { len + end } else { end }.clamp(0, len - 1);
    if s > e {
        return &[];
    }
    &v[s as usize..=e as usize]
}

pub(crate) fn get_bit(v: &[u8], bit: u64) -> bool {
    let byte = (bit / 8) as usize;
    v.get(byte).is_some_and(|b| b & (0x80 >> (bit % 8)) != 0)
}

pub(crate) fn set_bit(v: &mut [u8], bit: u64, on: bool) {
    let mask = 0x80 >> (bit % 8);
    let b = &mut v[(bit / 8) as usize];
    if on {
        *b |= mask;
    } else {
        *b &= !mask;
    }
}

/// BITOP of `inputs` (an absent key is empty); the result is as long as the longest input,
/// shorter inputs reading as zero bytes.
pub(crate) fn bitop(op: BitOp, inputs: &[&[u8]]) -> Vec<u8> {
    let len = inputs.iter().map(|i| i.len()).max().unwrap_or(0);
    (0..len)
        .map(|i| {
            let at = |k: usize| inputs[k].get(i).copied().unwrap_or(0);
            match op {
                BitOp::Not => !at(0),
                BitOp::And => (0..inputs.len()).fold(0xff, |a, k| a & at(k)),
                BitOp::Or => (0..inputs.len()).fold(0, |a, k| a | at(k)),
                BitOp::Xor => (0..inputs.len()).fold(0, |a, k| a ^ at(k)),
            }
        })
        .collect()
}

/// The highest byte (exclusive) BITFIELD's writes touch, so that the string grows to hold it
/// before any of them applies, as Redis grows it.
pub fn bitfield_len(ops: &[BitFieldOp]) -> usize {
    ops.iter()
        .filter(|o| !matches!(o.action, BitFieldAction::Get))
        .map(|o| ((o.offset + u64::from(o.bits) - 1) / 8 + 1) as usize)
        .max()
        .unwrap_or(0)
}

fn read_bits(v: &[u8], offset: u64, bits: u8) -> u64 {
    (0..u64::from(bits)).fold(0, |acc, i| (acc << 1) | u64::from(get_bit(v, offset + i)))
}

fn write_bits(v: &mut [u8], offset: u64, bits: u8, value: u64) {
    for i in 0..u64::from(bits) {
        let on = value >> (u64::from(bits) - 1 - i) & 1 == 1;
        set_bit(v, offset + i, on);
    }
}

/// The field's value as a number: the low `bits` bits of `raw`, sign-extended when `signed`.
fn as_number(raw: u64, bits: u8, signed: bool) -> i64 {
    if signed && bits < 64 && raw >> (bits - 1) & 1 == 1 {
        (raw | !0u64 << bits) as i64
    } else {
        raw as i64
    }
}

/// `value` fitted into a field of `bits` bits by `overflow`: `None` when it does not fit and
/// `overflow` is FAIL. `value` is the exact result (i128: an i64 increment of an i64 field
/// cannot overflow it).
fn fit(value: i128, bits: u8, signed: bool, overflow: Overflow) -> Option<u64> {
    let (min, max) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    if (min..=max).contains(&value) {
        return Some(value as u64);
    }
    match overflow {
        Overflow::Fail => None,
        Overflow::Sat => Some(if value < min { min as u64 } else { max as u64 }),
        Overflow::Wrap => {
            let m = 1i128 << bits;
            let wrapped = value.rem_euclid(m);
            Some(wrapped as u64)
        }
    }
}

/// Applies BITFIELD's operations to `v`, in order, growing it first to hold every field a write
/// touches. Each result is a number, or `None` where OVERFLOW FAIL stopped a SET or INCRBY (which
/// then changes nothing): GET gives the field, SET its old value, INCRBY its new value.
pub fn bitfield_apply(v: &mut Vec<u8>, ops: &[BitFieldOp]) -> Vec<Option<i64>> {
    let len = bitfield_len(ops);
    if v.len() < len {
        v.resize(len, 0);
    }
    ops.iter()
        .map(|o| {
            let old = as_number(read_bits(v, o.offset, o.bits), o.bits, o.signed);
            match o.action {
                BitFieldAction::Get => Some(old),
                BitFieldAction::Set(x) => {
                    // Redis reads an unsigned field's new value as a u64: -1 is 2^64 - 1.
                    let x = if o.signed {
                        i128::from(x)
                    } else {
                        i128::from(x as u64)
                    };
                    let raw = fit(x, o.bits, o.signed, o.overflow)?;
                    write_bits(v, o.offset, o.bits, raw);
                    Some(old)
                }
                BitFieldAction::IncrBy(by) => {
                    let raw = fit(
                        i128::from(old) + i128::from(by),
                        o.bits,
                        o.signed,
                        o.overflow,
                    )?;
                    write_bits(v, o.offset, o.bits, raw);
                    Some(as_number(raw, o.bits, o.signed))
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        action: BitFieldAction,
        signed: bool,
        bits: u8,
        offset: u64,
        overflow: Overflow,
    ) -> BitFieldOp {
        BitFieldOp {
            action,
            signed,
            bits,
            offset,
            overflow,
        }
    }

    #[test]
    fn bitfield_wraps_saturates_and_fails_as_redis() {
        let mut v = Vec::new();
        let r = bitfield_apply(
            &mut v,
            &[
                op(BitFieldAction::Set(255), false, 8, 0, Overflow::Wrap),
                op(BitFieldAction::IncrBy(10), false, 8, 0, Overflow::Wrap),
                op(BitFieldAction::IncrBy(300), false, 8, 0, Overflow::Sat),
                op(BitFieldAction::IncrBy(1), false, 8, 0, Overflow::Fail),
                op(BitFieldAction::Set(-1), true, 4, 8, Overflow::Wrap),
                op(BitFieldAction::Get, true, 4, 8, Overflow::Wrap),
                op(BitFieldAction::IncrBy(-10), true, 4, 8, Overflow::Sat),
            ],
        );
        assert_eq!(
            r,
            vec![
                Some(0),
                Some(9),
                Some(255),
                None,
                Some(0),
                Some(-1),
                Some(-8)
            ]
        );
        assert_eq!(v, vec![255, 0x80]);
    }

    #[test]
    fn diff_write_logs_only_what_changed() {
        let k = Bytes::from_static(b"k");
        assert_eq!(diff_write(k.clone(), Some(b"abc"), b"abc"), None);
        assert_eq!(
            diff_write(k.clone(), Some(b"abcd"), b"aXcY"),
            Some(Mutation::StringWrite {
                key: k.clone(),
                create: false,
                offset: 1,
                bytes: Bytes::from_static(b"XcY")
            })
        );
        assert_eq!(
            diff_write(k.clone(), Some(b"ab"), b"ab\0\0"),
            Some(Mutation::StringWrite {
                key: k.clone(),
                create: false,
                offset: 2,
                bytes: Bytes::from_static(b"\0\0")
            })
        );
        // A string created where an expired one was starts empty, whatever the old bytes.
        assert_eq!(
            diff_write(k.clone(), None, b"\0x"),
            Some(Mutation::StringWrite {
                key: k,
                create: true,
                offset: 1,
                bytes: Bytes::from_static(b"x")
            })
        );
    }

    #[test]
    fn substring_follows_getrange() {
        let v = b"This is a string";
        assert_eq!(substring(v, 0, 3), b"This");
        assert_eq!(substring(v, -3, -1), b"ing");
        assert_eq!(substring(v, 0, -1), v);
        assert_eq!(substring(v, 10, 100), b"string");
        assert_eq!(substring(v, 5, 3), b"");
        assert_eq!(substring(v, -1, -5), b"");
        assert_eq!(substring(b"", 0, 0), b"");
    }

    #[test]
    fn bitop_pads_shorter_inputs_with_zeros() {
        let (a, b): (&[u8], &[u8]) = (&[0xff, 0x0f], &[0x0f]);
        assert_eq!(bitop(BitOp::And, &[a, b]), vec![0x0f, 0]);
        assert_eq!(bitop(BitOp::Or, &[a, b]), vec![0xff, 0x0f]);
        assert_eq!(bitop(BitOp::Xor, &[a, b]), vec![0xf0, 0x0f]);
        assert_eq!(bitop(BitOp::Not, &[a]), vec![0, 0xf0]);
        // An unsigned SET of a negative value is a huge one, as Redis reads it (u64).
        let mut v = Vec::new();
        let sat = BitFieldOp {
            action: BitFieldAction::Set(-1),
            signed: false,
            bits: 8,
            offset: 0,
            overflow: Overflow::Sat,
        };
        bitfield_apply(&mut v, &[sat]);
        assert_eq!(v, vec![255]);
    }
}
