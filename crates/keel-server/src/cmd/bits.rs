//! Bitmap commands over string values. SETBIT and BITFIELD log only the bytes they change;
//! BITOP logs its result; the reads count and search server-side.

use keel_engine::{
    bitfield_apply, BitFieldAction, BitFieldOp, BitOp, Overflow, Read, Write, WriteResult,
};

use super::*;

/// Redis's largest bit offset plus one: 512 MiB of bits.
const BITS_MAX: i64 = 1 << 32;

pub const COMMANDS: &[Command] = &[
    // Returns the bit's old value (Redis: ACCESS).
    Command::new("setbit", 4, RW, KEY1)
        .redis("write denyoom", "@bitmap")
        .key_flags("RW access update")
        .doc(
            "bitmap",
            "key offset value",
            "Sets or clears the bit at offset (bit 0 is the high bit of the first byte), growing the string; returns the bit's old value.",
        )
        .data(|_, a, _| {
            let offset = bit_offset(&a[2])?;
            let on = match &a[3][..] {
                b"1" => true,
                b"0" => false,
                _ => return Err(Reply::err("ERR bit is not an integer or out of range")),
            };
            let w = Write::SetBit {
                key: a[1].clone(),
                offset,
                on,
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    Command::new("getbit", 3, R, KEY1)
        .redis("readonly fast", "@bitmap")
        .key_flags("RO access")
        .doc("bitmap", "key offset", "Returns the bit at offset (0 past the end).")
        .data(|_, a, _| {
            let offset = bit_offset(&a[2])?;
            let byte = (offset / 8) as i64;
            let op = Read::Substring {
                start: byte,
                end: byte,
            };
            Ok(Part::new(vec![read(&a[1], op)], move |r| match &r[0] {
                WriteResult::Value(v) => {
                    let b = v.as_deref().and_then(|v| v.first()).copied().unwrap_or(0);
                    Reply::Int(i64::from(b & (0x80 >> (offset % 8)) != 0))
                }
                other => value_reply(other),
            }))
        }),
    Command::new("bitcount", -2, R, KEY1)
        .redis("readonly", "@bitmap")
        .key_flags("RO access")
        .doc(
            "bitmap",
            "key [start end [BYTE|BIT]]",
            "Counts the set bits, in a byte (or BIT) range; negative positions count from the end.",
        )
        .data(|_, a, _| {
            let range = match &a[2..] {
                [] => None,
                [s, e] => Some((int_arg(s)?, int_arg(e)?, false)),
                [s, e, unit] => Some((int_arg(s)?, int_arg(e)?, bit_unit(unit)?)),
                _ => return Err(Reply::err(SYNTAX)),
            };
            Ok(Part::new(vec![get(&a[1])], move |r| match &r[0] {
                WriteResult::Value(v) => {
                    Reply::Int(bitcount(v.as_deref().unwrap_or_default(), range))
                }
                other => value_reply(other),
            }))
        }),
    Command::new("bitpos", -3, R, KEY1)
        .redis("readonly", "@bitmap")
        .key_flags("RO access")
        .doc(
            "bitmap",
            "key bit [start [end [BYTE|BIT]]]",
            "Returns the position of the first bit set to 1 or 0, in a byte (or BIT) range.",
        )
        .data(|_, a, _| {
            let bit = match int_arg(&a[2])? {
                1 => true,
                0 => false,
                _ => return Err(Reply::err("ERR The bit argument must be 1 or 0.")),
            };
            let (start, end, in_bits) = match &a[3..] {
                [] => (None, None, false),
                [s] => (Some(int_arg(s)?), None, false),
                [s, e] => (Some(int_arg(s)?), Some(int_arg(e)?), false),
                [s, e, unit] => (Some(int_arg(s)?), Some(int_arg(e)?), bit_unit(unit)?),
                _ => return Err(Reply::err(SYNTAX)),
            };
            Ok(Part::new(vec![get(&a[1])], move |r| match &r[0] {
                WriteResult::Value(None) => Reply::Int(if bit { -1 } else { 0 }),
                WriteResult::Value(Some(v)) => Reply::Int(bitpos(v, bit, start, end, in_bits)),
                other => value_reply(other),
            }))
        }),
    // Reads its sources (Redis: ACCESS).
    Command::new("bitop", -4, RW, (2, -1, 1))
        .redis("write denyoom", "@bitmap")
        .key_specs(&[Keys::at(2, "OW update"), Keys::range(3, -1, 1, "RO access")])
        .doc(
            "bitmap",
            "<AND|OR|XOR|NOT> destkey key [key ...]",
            "Stores the bitwise AND, OR, XOR or NOT of strings (shorter ones zero-padded); returns the result's length.",
        )
        .data(|_, a, _| {
            let op = match lower(&a[1]).as_str() {
                "and" => BitOp::And,
                "or" => BitOp::Or,
                "xor" => BitOp::Xor,
                "not" => BitOp::Not,
                _ => return Err(Reply::err(SYNTAX)),
            };
            if op == BitOp::Not && a.len() != 4 {
                return Err(Reply::err(
                    "ERR BITOP NOT must be called with a single source key.",
                ));
            }
            let w = Write::BitOp {
                dest: a[2].clone(),
                op,
                keys: a[3..].to_vec(),
            };
            Ok(Part::new(vec![w], |r| int_reply(&r[0])))
        }),
    // Returns the fields it reads (Redis: ACCESS).
    Command::new("bitfield", -2, RW, KEY1)
        .redis("write denyoom", "@bitmap")
        .key_flags("RW update access variable_flags")
        .get_keys(bitfield_keys)
        .doc(
            "bitmap",
            "key [GET encoding offset] [SET encoding offset value] [INCRBY encoding offset increment] [OVERFLOW <WRAP|SAT|FAIL>]",
            "Reads, sets and increments integer fields of any width (i1 to i64, u1 to u63) at any bit offset (#n: the n-th field of that width); each subcommand may repeat, in any order.",
        )
        .data(|_, a, _| {
            let w = Write::BitField {
                key: a[1].clone(),
                ops: bitfield_ops(&a[2..], false)?,
            };
            Ok(Part::new(vec![w], |r| fields_reply(&r[0])))
        }),
    Command::new("bitfield_ro", -2, R, KEY1)
        .redis("readonly fast", "@bitmap")
        .key_flags("RO access")
        .doc(
            "bitmap",
            "key [GET encoding offset]",
            "BITFIELD's GET only, any number of times: reads integer fields.",
        )
        .data(|_, a, _| {
            let ops = bitfield_ops(&a[2..], true)?;
            Ok(Part::new(vec![get(&a[1])], move |r| match &r[0] {
                WriteResult::Value(v) => {
                    let mut v = v.as_deref().unwrap_or_default().to_vec();
                    let got = bitfield_apply(&mut v, &ops);
                    Reply::Array(got.into_iter().map(|x| x.map_or(Reply::Nil, Reply::Int)).collect())
                }
                other => value_reply(other),
            }))
        }),
];

/// BITFIELD's key: only read while every operation is a GET (OVERFLOW changes nothing);
/// anything else, an unparsable operation too, may write.
fn bitfield_keys(a: &[Bytes]) -> Vec<(usize, KeyFlags)> {
    let mut i = 2;
    while i < a.len() {
        let rest = a.len() - i - 1;
        match &a[i] {
            op if eq(op, "get") && rest >= 2 => i += 3,
            op if eq(op, "overflow") && rest >= 1 => i += 2,
            _ => return vec![key_at(1, "RW access update")],
        }
    }
    vec![key_at(1, "RO access")]
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// A bit offset: 0 to 2^32 - 1, as Redis allows.
fn bit_offset(b: &[u8]) -> Result<u64, Reply> {
    match parse_i64(b) {
        Some(n) if (0..BITS_MAX).contains(&n) => Ok(n as u64),
        _ => Err(Reply::err(
            "ERR bit offset is not an integer or out of range",
        )),
    }
}

/// BYTE (false) or BIT (true).
fn bit_unit(b: &[u8]) -> Result<bool, Reply> {
    match lower(b).as_str() {
        "byte" => Ok(false),
        "bit" => Ok(true),
        _ => Err(Reply::err(SYNTAX)),
    }
}

/// `start`..=`end` of a string of `total` units with Redis's rules (negative: from the end;
/// clamped), or `None` when it selects nothing.
fn clamp(start: i64, end: i64, total: i64) -> Option<(i64, i64)> {
    let s = if start < 0 { start + total } else { start }.max(0);
    let e = if end < 0 { end + total } else { end }
        .max(0)
        .min(total - 1);
    (total > 0 && s <= e).then_some((s, e))
}

fn bit_at(v: &[u8], i: i64) -> bool {
    v[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
}

fn bitcount(v: &[u8], range: Option<(i64, i64, bool)>) -> i64 {
    let ones = |b: &[u8]| b.iter().map(|x| i64::from(x.count_ones())).sum::<i64>();
    // Both from the end and crossed: nothing, before any clamping (Redis's rule).
    if range.is_some_and(|(s, e, _)| s < 0 && e < 0 && s > e) {
        return 0;
    }
    match range {
        None => ones(v),
        Some((s, e, false)) => match clamp(s, e, v.len() as i64) {
            Some((s, e)) => ones(&v[s as usize..=e as usize]),
            None => 0,
        },
        Some((s, e, true)) => match clamp(s, e, v.len() as i64 * 8) {
            Some((s, e)) => (s..=e).filter(|&i| bit_at(v, i)).count() as i64,
            None => 0,
        },
    }
}

/// BITPOS of an existing string: the first bit equal to `bit` in the range, or -1. Looking for
/// a 0 with no end given, the string counts as followed by zeros, as in Redis.
fn bitpos(v: &[u8], bit: bool, start: Option<i64>, end: Option<i64>, in_bits: bool) -> i64 {
    let total = v.len() as i64 * if in_bits { 8 } else { 1 };
    let Some((s, e)) = clamp(start.unwrap_or(0), end.unwrap_or(total - 1), total) else {
        return -1;
    };
    let (first, last) = if in_bits { (s, e) } else { (s * 8, e * 8 + 7) };
    match (first..=last).find(|&i| bit_at(v, i) == bit) {
        Some(i) => i,
        None if !bit && end.is_none() => last + 1,
        None => -1,
    }
}

/// BITFIELD's operations, each with the OVERFLOW in force where it stands.
fn bitfield_ops(a: &[Bytes], read_only: bool) -> Result<Vec<BitFieldOp>, Reply> {
    let mut ops = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut i = 0;
    while i < a.len() {
        let sub = lower(&a[i]);
        let wants = match sub.as_str() {
            "get" => 2,
            "set" | "incrby" => 3,
            "overflow" => 1,
            _ => return Err(Reply::err(SYNTAX)),
        };
        if a.len() - i - 1 < wants {
            return Err(Reply::err(SYNTAX));
        }
        if read_only && (sub == "set" || sub == "incrby") {
            return Err(Reply::err(
                "ERR BITFIELD_RO only supports the GET subcommand",
            ));
        }
        if sub == "overflow" {
            overflow = match lower(&a[i + 1]).as_str() {
                "wrap" => Overflow::Wrap,
                "sat" => Overflow::Sat,
                "fail" => Overflow::Fail,
                _ => return Err(Reply::err("ERR Invalid OVERFLOW type specified")),
            };
            i += 2;
            continue;
        }
        let (signed, bits) = encoding(&a[i + 1])?;
        let offset = match a[i + 2].strip_prefix(b"#") {
            Some(n) => parse_i64(n)
                .filter(|n| *n >= 0)
                .and_then(|n| n.checked_mul(i64::from(bits))),
            None => parse_i64(&a[i + 2]),
        }
        .filter(|o| (0..BITS_MAX).contains(o))
        .ok_or_else(|| Reply::err("ERR bit offset is not an integer or out of range"))?;
        let action = match sub.as_str() {
            "get" => BitFieldAction::Get,
            "set" => BitFieldAction::Set(int_arg(&a[i + 3])?),
            _ => BitFieldAction::IncrBy(int_arg(&a[i + 3])?),
        };
        ops.push(BitFieldOp {
            action,
            signed,
            bits,
            offset: offset as u64,
            overflow,
        });
        i += 1 + wants;
    }
    Ok(ops)
}

/// `i1`..`i64` or `u1`..`u63`.
fn encoding(b: &[u8]) -> Result<(bool, u8), Reply> {
    let bad = || {
        Reply::err(
            "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.",
        )
    };
    let (signed, digits) = match b.split_first() {
        Some((b'i', d)) => (true, d),
        Some((b'u', d)) => (false, d),
        _ => return Err(bad()),
    };
    let bits = parse_i64(digits).ok_or_else(bad)?;
    let max = if signed { 64 } else { 63 };
    if !(1..=max).contains(&bits) {
        return Err(bad());
    }
    Ok((signed, bits as u8))
}

fn fields_reply(r: &WriteResult) -> Reply {
    match r {
        WriteResult::Values(v) => Reply::Array(
            v.iter()
                .map(|x| {
                    x.as_deref()
                        .and_then(parse_i64)
                        .map_or(Reply::Nil, Reply::Int)
                })
                .collect(),
        ),
        other => value_reply(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitpos_and_bitcount_follow_redis() {
        let v = [0xff, 0xf0, 0x00];
        assert_eq!(bitpos(&v, false, None, None, false), 12);
        assert_eq!(bitpos(&[0xff], false, None, None, false), 8);
        assert_eq!(bitpos(&[0xff], false, Some(0), Some(0), false), -1);
        assert_eq!(bitpos(&v, true, Some(1), None, false), 8);
        assert_eq!(bitpos(&v, true, Some(7), Some(15), true), 7);
        assert_eq!(bitpos(&[0], true, None, None, false), -1);
        assert_eq!(bitcount(&v, None), 12);
        assert_eq!(bitcount(&v, Some((1, 1, false))), 4);
        assert_eq!(bitcount(&v, Some((5, 30, true))), 7);
        assert_eq!(bitcount(&v, Some((-1, -2, false))), 0);
        assert_eq!(bitcount(b"foobar", Some((-6, -7, false))), 0);
    }
}
