//! Lua's `struct` library, as Redis gives it to scripts: `struct.pack(fmt, ...)`,
//! `struct.unpack(fmt, data [, init])` and `struct.size(fmt)`, binary data by a format string.
//! Written from the library's documented behaviour (Roberto Ierusalimschy's struct 0.2, which
//! Redis embeds):
//!
//! - `>` big endian, `<` little endian (the default), `!n` align items to at most `n` bytes
//!   (a power of 2; `!` alone: 8), ` ` ignored;
//! - `x` a zero byte; `b`/`B` a signed/unsigned char, `h`/`H` a short (2 bytes), `l`/`L` and
//!   `T` 8 bytes, `i`/`I` an int (`in`: of `n` bytes, 1 to 8; 4 by default);
//! - `f` a float, `d` a double;
//! - `cn` a string of `n` bytes (`c0` packs the whole string; unpacking `c0` takes its length
//!   from the value unpacked just before); `s` a string ending with a zero byte.
//!
//! `unpack` returns the values and then the position after them. Numbers are Lua 5.1's
//! doubles, so integers of more than 53 bits lose precision, as in Redis. Integers are limited
//! to 8 bytes (struct 0.2 takes up to 32, sign-extending the rest).

use mlua::{Lua, LuaString, MultiValue, Table, Value, Variadic};

/// The largest alignment `!` alone asks for.
const ALIGN_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Item {
    Pad,
    Int {
        size: usize,
        signed: bool,
    },
    Float,
    Double,
    /// `cn`; 0: the string's own length (pack) or the previous value (unpack).
    Chars(usize),
    Zstr,
}

impl Item {
    /// Its size in the data (0: it depends on the data).
    fn size(self) -> usize {
        match self {
            Item::Pad => 1,
            Item::Int { size, .. } => size,
            Item::Float => 4,
            Item::Double => 8,
            Item::Chars(n) => n,
            Item::Zstr => 0,
        }
    }
}

/// A format string, read item by item, with the endianness and alignment its options set.
struct Format<'a> {
    fmt: &'a [u8],
    at: usize,
    little: bool,
    align: usize,
}

fn error(what: &str, arg: usize, message: &str) -> mlua::Error {
    mlua::Error::runtime(format!("bad argument #{arg} to '{what}' ({message})"))
}

impl<'a> Format<'a> {
    fn new(fmt: &'a [u8]) -> Self {
        Format {
            fmt,
            at: 0,
            little: true,
            align: 1,
        }
    }

    /// The number right after the option, or `default`.
    fn number(&mut self, default: usize) -> mlua::Result<usize> {
        let start = self.at;
        while self.fmt.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        if start == self.at {
            return Ok(default);
        }
        std::str::from_utf8(&self.fmt[start..self.at])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| mlua::Error::runtime("invalid format: number too large"))
    }

    /// The next item, after the options before it.
    fn next(&mut self) -> mlua::Result<Option<Item>> {
        while let Some(&c) = self.fmt.get(self.at) {
            self.at += 1;
            let int = |size, signed| Item::Int { size, signed };
            let item = match c {
                b' ' => continue,
                b'>' => {
                    self.little = false;
                    continue;
                }
                b'<' => {
                    self.little = true;
                    continue;
                }
                b'!' => {
                    let a = self.number(ALIGN_MAX)?;
                    if !a.is_power_of_two() {
                        return Err(mlua::Error::runtime(format!(
                            "alignment {a} is not a power of 2"
                        )));
                    }
                    self.align = a;
                    continue;
                }
                b'x' => Item::Pad,
                b'b' => int(1, true),
                b'B' => int(1, false),
                b'h' => int(2, true),
                b'H' => int(2, false),
                b'l' => int(8, true),
                b'L' | b'T' => int(8, false),
                b'i' | b'I' => {
                    let size = self.number(4)?;
                    if !(1..=8).contains(&size) {
                        return Err(mlua::Error::runtime(format!(
                            "integral size {size} is larger than limit of 8"
                        )));
                    }
                    int(size, c == b'i')
                }
                b'f' => Item::Float,
                b'd' => Item::Double,
                b'c' => Item::Chars(self.number(1)?),
                b's' => Item::Zstr,
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "invalid format option '{}'",
                        other as char
                    )))
                }
            };
            return Ok(Some(item));
        }
        Ok(None)
    }

    /// The padding an item needs at offset `len`.
    fn padding(&self, len: usize, item: Item) -> usize {
        let size = item.size();
        if size == 0 || matches!(item, Item::Chars(_)) {
            return 0;
        }
        let a = size.min(self.align);
        if !a.is_power_of_two() {
            return 0;
        }
        (a - (len & (a - 1))) & (a - 1)
    }

    /// Up to 8 bytes of data, least significant first.
    fn get(&self, raw: &[u8]) -> [u8; 8] {
        let mut b = [0u8; 8];
        if self.little {
            b[..raw.len()].copy_from_slice(raw);
        } else {
            b.iter_mut()
                .zip(raw.iter().rev())
                .for_each(|(d, s)| *d = *s);
        }
        b
    }

    fn put(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.little {
            out.extend_from_slice(bytes);
        } else {
            out.extend(bytes.iter().rev());
        }
    }
}

fn string_arg(what: &str, arg: usize, v: Option<&Value>) -> mlua::Result<Vec<u8>> {
    match v {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(Value::Integer(i)) => Ok(i.to_string().into_bytes()),
        Some(Value::Number(n)) => Ok(crate::scripting::lua_number(*n).into_bytes()),
        other => Err(error(
            what,
            arg,
            &format!(
                "string expected, got {}",
                other.map_or("no value", Value::type_name)
            ),
        )),
    }
}

fn number_arg(what: &str, arg: usize, v: Option<&Value>) -> mlua::Result<f64> {
    match v {
        Some(Value::Integer(i)) => Ok(*i as f64),
        Some(Value::Number(n)) => Ok(*n),
        Some(Value::String(s)) => (s.to_str().ok())
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| error(what, arg, "number expected, got string")),
        other => Err(error(
            what,
            arg,
            &format!(
                "number expected, got {}",
                other.map_or("no value", Value::type_name)
            ),
        )),
    }
}

fn pack(fmt: &[u8], args: &[Value]) -> mlua::Result<Vec<u8>> {
    let mut f = Format::new(fmt);
    let mut out = Vec::new();
    let mut next = 0;
    while let Some(item) = f.next()? {
        out.resize(out.len() + f.padding(out.len(), item), 0);
        let arg = next + 2;
        match item {
            Item::Pad => {
                out.push(0);
                continue;
            }
            Item::Int { size, signed } => {
                let n = number_arg("pack", arg, args.get(next))?;
                let v = if signed || n < 0.0 {
                    n as i64 as u64
                } else {
                    n as u64
                };
                f.put(&mut out, &v.to_le_bytes()[..size]);
            }
            Item::Float => {
                let n = number_arg("pack", arg, args.get(next))?;
                f.put(&mut out, &(n as f32).to_le_bytes());
            }
            Item::Double => {
                let n = number_arg("pack", arg, args.get(next))?;
                f.put(&mut out, &n.to_le_bytes());
            }
            Item::Chars(n) => {
                let s = string_arg("pack", arg, args.get(next))?;
                let n = if n == 0 { s.len() } else { n };
                if s.len() < n {
                    return Err(error("pack", arg, "string too short"));
                }
                out.extend_from_slice(&s[..n]);
            }
            Item::Zstr => {
                let s = string_arg("pack", arg, args.get(next))?;
                if s.contains(&0) {
                    return Err(error("pack", arg, "string contains zeros"));
                }
                out.extend_from_slice(&s);
                out.push(0);
            }
        }
        next += 1;
    }
    Ok(out)
}

fn unpack(lua: &Lua, fmt: &[u8], data: &[u8], init: usize) -> mlua::Result<MultiValue> {
    let mut f = Format::new(fmt);
    let mut pos = init
        .checked_sub(1)
        .filter(|p| *p <= data.len())
        .ok_or_else(|| error("unpack", 3, "offset out of bounds"))?;
    let mut out: Vec<Value> = Vec::new();
    let short = || error("unpack", 2, "data string too short");
    while let Some(item) = f.next()? {
        pos += f.padding(pos, item);
        let take = |pos: usize, n: usize| data.get(pos..pos + n).ok_or_else(short);
        let value = match item {
            Item::Pad => {
                take(pos, 1)?;
                pos += 1;
                continue;
            }
            Item::Int { size, signed } => {
                let mut v = u64::from_le_bytes(f.get(take(pos, size)?));
                if signed && size < 8 && v >> (size * 8 - 1) & 1 == 1 {
                    v |= u64::MAX << (size * 8);
                }
                pos += size;
                Value::Number(if signed { v as i64 as f64 } else { v as f64 })
            }
            Item::Float | Item::Double => {
                let size = item.size();
                let b = f.get(take(pos, size)?);
                pos += size;
                Value::Number(if size == 4 {
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64
                } else {
                    f64::from_le_bytes(b)
                })
            }
            Item::Chars(n) => {
                let n = if n == 0 {
                    match out.last() {
                        Some(Value::Number(n)) if *n >= 0.0 => *n as usize,
                        _ => return Err(error("unpack", 1, "format 'c0' needs a previous size")),
                    }
                } else {
                    n
                };
                let s = take(pos, n)?;
                pos += n;
                Value::String(lua.create_string(s)?)
            }
            Item::Zstr => {
                let rest = data.get(pos..).ok_or_else(short)?;
                let end = (rest.iter().position(|b| *b == 0))
                    .ok_or_else(|| error("unpack", 2, "unfinished string in data"))?;
                let s = lua.create_string(&rest[..end])?;
                pos += end + 1;
                Value::String(s)
            }
        };
        out.push(value);
    }
    out.push(Value::Number((pos + 1) as f64));
    Ok(MultiValue::from_vec(out))
}

fn size(fmt: &[u8]) -> mlua::Result<usize> {
    let mut f = Format::new(fmt);
    let mut len = 0;
    while let Some(item) = f.next()? {
        if matches!(item, Item::Zstr | Item::Chars(0)) {
            return Err(error("size", 1, "options 'c0' - 's' have undefined sizes"));
        }
        len += f.padding(len, item) + item.size();
    }
    Ok(len)
}

/// The `struct` table.
pub(super) fn library(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "pack",
        lua.create_function(|lua, args: Variadic<Value>| {
            let fmt = string_arg("pack", 1, args.first())?;
            lua.create_string(pack(&fmt, &args[1..])?)
        })?,
    )?;
    t.raw_set(
        "unpack",
        lua.create_function(
            |lua, (fmt, data, init): (LuaString, LuaString, Option<f64>)| {
                let init = init.unwrap_or(1.0);
                unpack(
                    lua,
                    &fmt.as_bytes(),
                    &data.as_bytes(),
                    init.max(0.0) as usize,
                )
            },
        )?,
    )?;
    t.raw_set(
        "size",
        lua.create_function(|_, fmt: LuaString| Ok(size(&fmt.as_bytes())? as f64))?,
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua() -> Lua {
        let lua = Lua::new();
        lua.globals().set("struct", library(&lua).unwrap()).unwrap();
        lua
    }

    fn hex(lua: &Lua, code: &str) -> String {
        let s: LuaString = lua.load(code).eval().unwrap();
        s.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn packs_as_the_format_says() {
        let l = lua();
        assert_eq!(hex(&l, "return struct.pack('>I2', 258)"), "0102");
        assert_eq!(hex(&l, "return struct.pack('<I2', 258)"), "0201");
        assert_eq!(hex(&l, "return struct.pack('b', -1)"), "ff");
        assert_eq!(hex(&l, "return struct.pack('>i3', -2)"), "fffffe");
        assert_eq!(hex(&l, "return struct.pack('>d', 1.5)"), "3ff8000000000000");
        assert_eq!(hex(&l, "return struct.pack('<f', 1)"), "0000803f");
        assert_eq!(hex(&l, "return struct.pack('c3', 'abcdef')"), "616263");
        assert_eq!(hex(&l, "return struct.pack('c0', 'abcd')"), "61626364");
        assert_eq!(hex(&l, "return struct.pack('sx', 'hi')"), "68690000");
        // Alignment: the int after a byte starts at 4 under `!4`, right after it otherwise.
        assert_eq!(
            hex(&l, "return struct.pack('!4bi', 1, 2)"),
            "0100000002000000"
        );
        assert_eq!(hex(&l, "return struct.pack('bi', 1, 2)"), "0102000000");
        assert_eq!(
            hex(&l, "return struct.pack('>L', 2^40)"),
            "0000010000000000"
        );
    }

    #[test]
    fn unpacks_values_then_the_next_position() {
        let l = lua();
        let got: (f64, f64) = l
            .load("return struct.unpack('<h', '\\255\\255')")
            .eval()
            .unwrap();
        assert_eq!(got, (-1.0, 3.0));
        let got: (f64, String, f64) = l
            .load("return struct.unpack('>Hs', '\\1\\2ab\\0rest')")
            .eval()
            .unwrap();
        assert_eq!(got, (258.0, "ab".into(), 6.0));
        // c0 takes its length from the value before it.
        let got: (f64, String, f64) = l
            .load("return struct.unpack('bc0', struct.pack('bc0', 3, 'xyz'))")
            .eval()
            .unwrap();
        assert_eq!(got, (3.0, "xyz".into(), 5.0));
        let got: (f64, f64) = l
            .load("return struct.unpack('>I2', 'xx\\0\\7', 3)")
            .eval()
            .unwrap();
        assert_eq!(got, (7.0, 5.0));
        let round: (f64, f64, f64) = l
            .load("return struct.unpack('!8bd', struct.pack('!8bd', -5, 0.25))")
            .eval()
            .unwrap();
        assert_eq!(round, (-5.0, 0.25, 17.0));
        let size: f64 = l.load("return struct.size('!4bi>d')").eval().unwrap();
        assert_eq!(size, 16.0);
    }

    #[test]
    fn bad_formats_and_short_data_are_errors() {
        let l = lua();
        for (code, msg) in [
            ("struct.pack('q', 1)", "invalid format option 'q'"),
            ("struct.pack('i9', 1)", "larger than limit"),
            ("struct.pack('!3b', 1)", "not a power of 2"),
            ("struct.pack('c5', 'ab')", "string too short"),
            ("struct.pack('s', 'a\\0b')", "string contains zeros"),
            ("struct.pack('i')", "number expected"),
            ("struct.unpack('i', 'ab')", "data string too short"),
            ("struct.unpack('s', 'ab')", "unfinished string"),
            ("struct.unpack('b', 'a', 5)", "offset out of bounds"),
            ("struct.size('s')", "undefined sizes"),
        ] {
            let e = l.load(code).exec().unwrap_err().to_string();
            assert!(e.contains(msg), "{code}: {e}");
        }
    }
}
