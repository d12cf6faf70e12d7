//! keel-resp: RESP requests in, RESP2/RESP3 replies out.
//!
//! The parser is the server's attack surface, so it is strict, bounded and pure: [`parse`] takes
//! bytes and limits and returns a frame, "need more bytes", or an error, and never panics or
//! allocates more than the limits allow. A cargo-fuzz target can call it directly.
//!
//! A request is what Redis accepts from clients:
//! - a multibulk: `*<n>\r\n` followed by `n` bulk strings `$<len>\r\n<len bytes>\r\n`;
//! - an inline command: one line of space-separated arguments, with Redis's quoting rules.
//!
//! Error strings match Redis's own (`Protocol error: invalid bulk length`, ...).

#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};

/// Hard limits on what one request may declare (P11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (one argument).
    pub bulk_bytes_max: usize,
    /// Most arguments in one multibulk request.
    pub multibulk_len_max: usize,
    /// Longest inline request line.
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bulk_bytes_max: 8 << 20,
            multibulk_len_max: 1 << 20,
            inline_bytes_max: 64 << 10,
        }
    }
}

/// Longest `*<n>` or `$<len>` header line accepted, as in Redis.
const HEADER_LINE_MAX: usize = 64 << 10;

/// Most arguments in a request from a client that has not authenticated, as in Redis 7.2
/// (`processMultibulkBuffer`: a count over 10 is refused while `authRequired`).
pub const UNAUTHENTICATED_MULTIBULK_LEN_MAX: usize = 10;
/// Largest bulk string from a client that has not authenticated, as in Redis 7.2.
pub const UNAUTHENTICATED_BULK_BYTES_MAX: usize = 16 << 10;
/// Longest inline request from a client that has not authenticated. Redis bounds inline
/// requests only by its 64 KiB inline limit; keel applies the bulk bound, since an inline line
/// carries the same arguments.
pub const UNAUTHENTICATED_INLINE_BYTES_MAX: usize = UNAUTHENTICATED_BULK_BYTES_MAX;

/// One client request. `args` is empty for requests Redis ignores (`*0`, `*-1`, a blank line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub args: Vec<Bytes>,
    /// Sent as an inline command rather than a multibulk.
    pub inline: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// More than [`UNAUTHENTICATED_MULTIBULK_LEN_MAX`] arguments before authentication.
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A bulk over [`UNAUTHENTICATED_BULK_BYTES_MAX`] before authentication.
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("too big mbulk count string")]
    MultibulkHeaderTooLong,
    #[error("too big bulk count string")]
    BulkHeaderTooLong,
    #[error("too big inline request")]
    InlineTooLong,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("expected CRLF after bulk string")]
    MissingCrlf,
}

/// Parses one request from the start of `buf`. `Ok(None)`: the request is incomplete and more
/// bytes are needed; `Ok(Some((frame, consumed)))`: a complete request taken from the first
/// `consumed` bytes.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, ProtocolError> {
    Parser::default().parse(buf, limits)
}

/// A resumable [`parse`]: it remembers the arguments of a multibulk request that is still
/// arriving, so a long pipeline of arguments is not re-parsed from its start on every read.
/// Feed it the same buffer, only ever appended to, until it returns a frame; the frame's
/// `consumed` bytes must then be removed from the front of the buffer.
#[derive(Debug, Default)]
pub struct Parser {
    /// Offset of the next unparsed bulk header, inside a multibulk request.
    pos: usize,
    /// Arguments the current multibulk declared (0: not inside one).
    expected: usize,
    /// Where each argument parsed so far lies in the buffer: (start, length). The arguments
    /// are copied out together once the request is whole (see [`gather`]).
    found: Vec<(usize, usize)>,
    /// The client has not authenticated: the tighter `UNAUTHENTICATED_*` bounds apply too.
    unauthenticated: bool,
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        match buf[i..].iter().position(|&b| b == b'\r') {
            Some(off) => {
                let at = i + off;
                if at + 1 < buf.len() && buf[at + 1] == b'\n' {
                    return Some(at);
                }
                i = at + 1;
            }
            None => return None,
        }
    }
    None
}

/// Redis's `string2ll`: optional '-', decimal digits, no '+', spaces or leading zeros.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    match digits {
        [] | [b'0', _, ..] => return None,
        [b'0'] if digits.len() < s.len() => return None, // -0
        _ if digits.len() > 19 => return None,
        _ => {}
    }
    // At most 19 digits: below 10^19, so the sum cannot overflow a u64. (Every length of
    // every request goes through here: str::parse took several times as many instructions.)
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    match s[0] {
        b'-' if n <= 1 << 63 => Some((n as i64).wrapping_neg()),
        b'-' => None,
        _ => i64::try_from(n).ok(),
    }
}

impl Parser {
    /// Whether the client has not authenticated yet (default: it has, or needs not). Until it
    /// has, a request may hold at most [`UNAUTHENTICATED_MULTIBULK_LEN_MAX`] arguments of
    /// [`UNAUTHENTICATED_BULK_BYTES_MAX`] bytes, so that nobody who cannot log in makes the
    /// server hold megabytes for them. Set it before each request: it is read as the request's
    /// headers arrive.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<(Frame, usize)>, ProtocolError> {
        if self.expected == 0 {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if first != b'*' {
                let inline_max = if self.unauthenticated {
                    limits
                        .inline_bytes_max
                        .min(UNAUTHENTICATED_INLINE_BYTES_MAX)
                } else {
                    limits.inline_bytes_max
                };
                return parse_inline(buf, inline_max);
            }
            let Some(end) = find_crlf(buf, 1) else {
                if buf.len() > HEADER_LINE_MAX {
                    return Err(ProtocolError::MultibulkHeaderTooLong);
                }
                return Ok(None);
            };
            if end > HEADER_LINE_MAX {
                return Err(ProtocolError::MultibulkHeaderTooLong);
            }
            let n = parse_i64(&buf[1..end]).ok_or(ProtocolError::InvalidMultibulkLength)?;
            // The bound before authentication first. Redis checks its absolute bounds first,
            // but those (512 MB bulks) are above anything its tests send before AUTH; keel's
            // are lower (8 MiB), and this order gives Redis's reply to `$100000000`.
            if self.unauthenticated && n > UNAUTHENTICATED_MULTIBULK_LEN_MAX as i64 {
                return Err(ProtocolError::UnauthenticatedMultibulkLength);
            }
            if n > limits.multibulk_len_max as i64 {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            if n <= 0 {
                let frame = Frame {
                    args: Vec::new(),
                    inline: false,
                };
                return Ok(Some((frame, end + 2)));
            }
            self.expected = n as usize;
            self.pos = end + 2;
            self.found.clear();
        }
        while self.found.len() < self.expected {
            let Some(&first) = buf.get(self.pos) else {
                return Ok(None);
            };
            if first != b'$' {
                return Err(self.fail(ProtocolError::ExpectedBulk(first)));
            }
            let Some(end) = find_crlf(buf, self.pos + 1) else {
                if buf.len() - self.pos > HEADER_LINE_MAX {
                    return Err(self.fail(ProtocolError::BulkHeaderTooLong));
                }
                return Ok(None);
            };
            if end - self.pos > HEADER_LINE_MAX {
                return Err(self.fail(ProtocolError::BulkHeaderTooLong));
            }
            let len = match parse_i64(&buf[self.pos + 1..end]) {
                Some(l) if self.unauthenticated && l > UNAUTHENTICATED_BULK_BYTES_MAX as i64 => {
                    return Err(self.fail(ProtocolError::UnauthenticatedBulkLength))
                }
                Some(l) if l >= 0 && l as u64 <= limits.bulk_bytes_max as u64 => l as usize,
                _ => return Err(self.fail(ProtocolError::InvalidBulkLength)),
            };
            let start = end + 2;
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                return Err(self.fail(ProtocolError::MissingCrlf));
            }
            // Capacity grows with the bytes that actually arrive, not with the declared count.
            self.found.push((start, len));
            self.pos = start + len + 2;
        }
        let frame = Frame {
            args: gather(buf, &self.found),
            inline: false,
        };
        let consumed = self.pos;
        self.expected = 0;
        self.pos = 0;
        // A request of a million arguments does not leave its 16 MiB of positions behind.
        if self.found.capacity() > FOUND_KEPT_MAX {
            self.found = Vec::new();
        }
        Ok(Some((frame, consumed)))
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        *self = Parser {
            unauthenticated: self.unauthenticated,
            ..Parser::default()
        };
        e
    }
}

/// Most argument positions a [`Parser`] keeps room for between requests.
const FOUND_KEPT_MAX: usize = 1024;

/// The arguments at `found` in `buf`, copied into one buffer and handed out as slices of it
/// (see [`one_buffer`]).
fn gather(buf: &[u8], found: &[(usize, usize)]) -> Vec<Bytes> {
    one_buffer(found.iter().map(|&(start, len)| &buf[start..start + len]))
}

/// `parts` copied into one buffer and handed out as slices of it: one allocation for a
/// request's arguments instead of one each. A short request's buffer holds its reference count
/// too (a [`Bytes`] made from a `Vec` pays a second allocation for it at its first clone). A
/// slice keeps the whole buffer alive, so whatever keeps one argument long after its request
/// (an expiry index, a retry's id, a slow-log entry) copies it out instead, or it would keep
/// the request's other arguments too.
pub fn one_buffer<'a>(parts: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<Bytes> {
    let bytes = parts.clone().map(<[u8]>::len).sum();
    let all = match bytes {
        0..=64 => inline::<64>(parts.clone()),
        65..=128 => inline::<128>(parts.clone()),
        129..=256 => inline::<256>(parts.clone()),
        257..=512 => inline::<512>(parts.clone()),
        _ => {
            let mut all = Vec::with_capacity(bytes);
            parts.clone().for_each(|p| all.extend_from_slice(p));
            Bytes::from(all)
        }
    };
    let mut at = 0;
    parts
        .map(|p| {
            at += p.len();
            all.slice(at - p.len()..at)
        })
        .collect()
}

/// Up to `N` bytes and their reference count, in one allocation (see [`one_buffer`]).
struct Inline<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn inline<'a, const N: usize>(parts: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut i = Inline {
        len: 0,
        bytes: [0; N],
    };
    for p in parts {
        i.bytes[i.len..i.len + p.len()].copy_from_slice(p);
        i.len += p.len();
    }
    Bytes::from_owner(i)
}

fn parse_inline(buf: &[u8], inline_max: usize) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > inline_max {
            return Err(ProtocolError::InlineTooLong);
        }
        return Ok(None);
    };
    if nl > inline_max {
        return Err(ProtocolError::InlineTooLong);
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args = split_args(line).ok_or(ProtocolError::UnbalancedQuotes)?;
    Ok(Some((Frame { args, inline: true }, nl + 1)))
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Redis's `sdssplitargs`: spaces separate arguments; "double quotes" take C escapes
/// (`\n \r \t \b \a \\ \" \xHH`), 'single quotes' take `\'`; a closing quote must be followed by
/// a space or the end. `None` on unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        // NUL ends an unquoted argument below, so it must also be skipped here, or the loop
        // would push empty arguments forever (found by the resp_parse fuzz target).
        while i < n && (line[i].is_ascii_whitespace() || line[i] == 0) {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut inq, mut insq) = (false, false);
        loop {
            if inq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && hex(line[i + 2]).is_some()
                    && hex(line[i + 3]).is_some()
                {
                    cur.push(hex(line[i + 2])? * 16 + hex(line[i + 3])?);
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if insq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(cur));
    }
}

/// A reply, encoded for the connection's protocol version.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+text`. Must not contain CR or LF. Borrowed for fixed texts (`OK`, `PONG`, …): a
    /// reply sent for most writes costs no allocation.
    Simple(std::borrow::Cow<'static, str>),
    /// `-CODE text`, for example `ERR syntax error`. CR and LF are replaced by spaces.
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A missing array (EXEC aborted by WATCH): `*-1` in RESP2, `_` in RESP3.
    NilArray,
    Array(Vec<Reply>),
    /// A map in RESP3; a flat array of key, value, ... in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A set in RESP3 (`~`); an array in RESP2 (SMEMBERS, SINTER, …).
    Set(Vec<Reply>),
    /// An array of two-element arrays in RESP3; a flat array of both, pair by pair, in RESP2
    /// (HRANDFIELD … WITHVALUES, ZRANGE … WITHSCORES).
    Pairs(Vec<(Reply, Reply)>),
    /// A map in RESP3; an array of two-element arrays in RESP2 (XREAD's streams).
    Nested(Vec<(Reply, Reply)>),
    /// Text (INFO): a verbatim string in RESP3, a bulk string in RESP2.
    Verbatim(String),
    /// A floating-point number written as text (a sorted set's score: `1.5`, `inf`): a double
    /// (`,`) in RESP3, a bulk string in RESP2.
    Double(Bytes),
    /// Out-of-band data (a Pub/Sub message, a subscription's confirmation): a push (`>`) in
    /// RESP3, an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// `+text`, from a fixed text or a built one.
    pub fn simple(text: impl Into<std::borrow::Cow<'static, str>>) -> Reply {
        Reply::Simple(text.into())
    }

    pub fn err(s: impl Into<String>) -> Reply {
        Reply::Error(s.into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding for protocol version `proto` (2 or 3).
    pub fn encode(&self, proto: u8, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Int(i) => {
                out.put_u8(b':');
                out.put_slice(itoa::Buffer::new().format(*i).as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(b) => {
                header(out, b'$', b.len());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Nil if proto >= 3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if proto >= 3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', items.len());
                for r in items {
                    r.encode(proto, out);
                }
            }
            Reply::Push(items) => {
                header(out, if proto >= 3 { b'>' } else { b'*' }, items.len());
                for r in items {
                    r.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Set(items) => {
                header(out, if proto >= 3 { b'~' } else { b'*' }, items.len());
                for r in items {
                    r.encode(proto, out);
                }
            }
            Reply::Pairs(pairs) => {
                header(out, b'*', pairs.len() * if proto >= 3 { 1 } else { 2 });
                for (a, b) in pairs {
                    if proto >= 3 {
                        header(out, b'*', 2);
                    }
                    a.encode(proto, out);
                    b.encode(proto, out);
                }
            }
            Reply::Nested(pairs) => {
                header(out, if proto >= 3 { b'%' } else { b'*' }, pairs.len());
                for (k, v) in pairs {
                    if proto < 3 {
                        header(out, b'*', 2);
                    }
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Verbatim(s) if proto >= 3 => {
                header(out, b'=', s.len() + 4);
                out.put_slice(b"txt:");
                out.put_slice(s.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(s) => {
                header(out, b'$', s.len());
                out.put_slice(s.as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Double(d) if proto >= 3 => line(out, b',', d),
            Reply::Double(d) => {
                header(out, b'$', d.len());
                out.put_slice(d);
                out.put_slice(b"\r\n");
            }
        }
    }
}

fn header(out: &mut BytesMut, tag: u8, n: usize) {
    out.put_u8(tag);
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

fn line(out: &mut BytesMut, tag: u8, s: &[u8]) {
    out.reserve(s.len() + 3);
    out.put_u8(tag);
    if s.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            s.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(s);
    }
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn one(input: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        parse(input, &Limits::default())
    }

    #[test]
    fn multibulk_and_every_prefix_is_incomplete() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let (f, n) = one(req).unwrap().unwrap();
        assert_eq!(f.args, args(&["SET", "k", "hello"]));
        assert_eq!(n, req.len());
        for cut in 0..req.len() {
            assert_eq!(one(&req[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn resumable_parser_matches_pure_parse() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let mut p = Parser::default();
        let mut fed = 0;
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        while fed < req.len() {
            buf.push(req[fed]);
            fed += 1;
            while let Some((f, n)) = p.parse(&buf, &Limits::default()).unwrap() {
                frames.push(f.args);
                buf.drain(..n);
            }
        }
        assert_eq!(frames, vec![args(&["SET", "k", "hello"]), args(&["PING"])]);
    }

    /// The arguments are copied into one buffer of a size class (or one `Vec` past them):
    /// every class and its edges, empty arguments among them, come back whole and in order,
    /// parsed at once or fed a byte at a time.
    #[test]
    fn arguments_of_every_size_come_back_whole() {
        for total in [0, 1, 63, 64, 65, 128, 129, 256, 257, 512, 513, 5000] {
            // Three arguments sharing `total` bytes, the middle one empty, each byte distinct.
            let a: Vec<u8> = (0..total / 2).map(|i| (i % 251) as u8).collect();
            let c: Vec<u8> = (0..total - total / 2)
                .map(|i| (i % 241) as u8 + 7)
                .collect();
            let want = vec![Bytes::from(a), Bytes::new(), Bytes::from(c)];
            let mut req = b"*3\r\n".to_vec();
            for w in &want {
                req.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
                req.extend_from_slice(w);
                req.extend_from_slice(b"\r\n");
            }
            let (f, n) = one(&req).unwrap().unwrap();
            assert_eq!(
                (f.args, n),
                (want.clone(), req.len()),
                "{total} bytes at once"
            );
            let mut p = Parser::default();
            let mut got = None;
            for end in 1..=req.len() {
                if let Some((f, n)) = p.parse(&req[..end], &Limits::default()).unwrap() {
                    got = Some((f.args, n, end));
                }
            }
            assert_eq!(
                got,
                Some((want, req.len(), req.len())),
                "{total} bytes, fed slowly"
            );
        }
    }

    #[test]
    fn empty_and_negative_multibulk_are_ignored() {
        assert_eq!(one(b"*0\r\n").unwrap().unwrap().0.args.len(), 0);
        assert_eq!(one(b"*-1\r\n").unwrap().unwrap().1, 5);
    }

    #[test]
    fn limits_and_malformed_input() {
        let small = Limits {
            bulk_bytes_max: 10,
            multibulk_len_max: 4,
            inline_bytes_max: 16,
        };
        let p = |b: &[u8]| parse(b, &small);
        assert_eq!(
            p(b"*5\r\n"),
            Err(ProtocolError::InvalidMultibulkLength),
            "over-long array"
        );
        assert_eq!(p(b"*1\r\n$11\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(
            one(b"*1\r\n$99999999999999999999\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(one(b"*1\r\n$-1\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(one(b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(one(b"*1\r\n:1\r\n"), Err(ProtocolError::ExpectedBulk(b':')));
        assert_eq!(one(b"*1\r\n$1\r\nab\r\n"), Err(ProtocolError::MissingCrlf));
        assert_eq!(
            p(b"this line is longer than sixteen"),
            Err(ProtocolError::InlineTooLong)
        );
        let long = vec![b'1'; HEADER_LINE_MAX + 2];
        let mut req = b"*".to_vec();
        req.extend_from_slice(&long);
        assert_eq!(one(&req), Err(ProtocolError::MultibulkHeaderTooLong));
        assert_eq!(
            ProtocolError::ExpectedBulk(b'\n').to_string(),
            "expected '$', got '\\n'"
        );
    }

    #[test]
    fn unauthenticated_limits() {
        let mut p = Parser::default();
        p.set_unauthenticated(true);
        let d = Limits::default();
        assert_eq!(
            p.parse(b"*11\r\n", &d),
            Err(ProtocolError::UnauthenticatedMultibulkLength)
        );
        assert_eq!(
            p.parse(b"*99999999\r\n", &d),
            Err(ProtocolError::UnauthenticatedMultibulkLength)
        );
        assert_eq!(
            p.parse(b"*abc\r\n", &d),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            p.parse(b"*1\r\n$16385\r\n", &d),
            Err(ProtocolError::UnauthenticatedBulkLength)
        );
        // A failed request leaves the parser unauthenticated.
        assert_eq!(
            p.parse(b"*1\r\n$100000000\r\n", &d),
            Err(ProtocolError::UnauthenticatedBulkLength)
        );
        assert_eq!(
            p.parse(&vec![b'a'; 16385], &d),
            Err(ProtocolError::InlineTooLong)
        );
        assert_eq!(p.parse(&vec![b'a'; 16384], &d), Ok(None));
        let mut req = b"*10\r\n".to_vec();
        for _ in 0..10 {
            req.extend(b"$16384\r\n");
            req.extend(vec![b'x'; 16384]);
            req.extend(b"\r\n");
        }
        let (f, n) = p.parse(&req, &d).unwrap().unwrap();
        assert_eq!((f.args.len(), n), (10, req.len()));
        p.set_unauthenticated(false);
        assert!(p.parse(b"*1\r\n$16385\r\n", &d).unwrap().is_none());
        assert_eq!(
            ProtocolError::UnauthenticatedBulkLength.to_string(),
            "unauthenticated bulk length"
        );
    }

    #[test]
    fn inline_commands_with_quotes() {
        let (f, n) = one(b"SET k \"a b\\x41\\n\" 'it\\'s'\r\nrest")
            .unwrap()
            .unwrap();
        assert!(f.inline);
        assert_eq!(f.args, args(&["SET", "k", "a bA\n", "it's"]));
        assert_eq!(n, 27);
        assert_eq!(one(b"\r\n").unwrap().unwrap().0.args.len(), 0);
        assert_eq!(one(b"GET \"k\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(one(b"GET \"k\"x\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(one(b"PING"), Ok(None));
    }

    #[test]
    fn integers_follow_redis() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b"+1"[..],
            b"01",
            b"-0",
            b"",
            b"-",
            b" 1",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
            b"18446744073709551616",
            b"1a",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", bad);
        }
        assert_eq!(parse_i64(b"0"), Some(0));
        // Against the standard library's parse, on Redis's rules, over many lengths and signs.
        let mut x: u64 = 0x2545f4914f6cdd1d;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 21) as usize;
            let mut s = if x & (1 << 40) != 0 {
                b"-".to_vec()
            } else {
                Vec::new()
            };
            s.extend((0..digits).map(|i| b'0' + (x.rotate_left(i as u32 * 3) % 10) as u8));
            let text = std::str::from_utf8(&s).unwrap();
            let canonical = text.parse::<i64>().is_ok_and(|n| n.to_string() == text);
            let expected = canonical.then(|| text.parse::<i64>().unwrap());
            assert_eq!(parse_i64(&s), expected, "{text}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A tiny deterministic fuzz loop; cargo-fuzz does the real work.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let alphabet = b"*$\r\n-0123456789abc \"'\\x";
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            for i in 0..len {
                let r = x.rotate_left(i as u32 * 7);
                buf.push(alphabet[(r % alphabet.len() as u64) as usize]);
            }
            if let Ok(Some((_, n))) = one(&buf) {
                assert!(n <= buf.len() && n > 0);
            }
        }
    }

    #[test]
    fn encodings() {
        let enc = |r: &Reply, p| {
            let mut b = BytesMut::new();
            r.encode(p, &mut b);
            String::from_utf8(b.to_vec()).unwrap()
        };
        assert_eq!(enc(&Reply::Nil, 2), "$-1\r\n");
        assert_eq!(enc(&Reply::Nil, 3), "_\r\n");
        assert_eq!(enc(&Reply::NilArray, 2), "*-1\r\n");
        let m = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&m, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&m, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        let set = Reply::Set(vec![Reply::bulk("a")]);
        assert_eq!(enc(&set, 2), "*1\r\n$1\r\na\r\n");
        assert_eq!(enc(&set, 3), "~1\r\n$1\r\na\r\n");
        let p = Reply::Pairs(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&p, 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&p, 3), "*1\r\n*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Verbatim("x".into()), 3), "=5\r\ntxt:x\r\n");
        assert_eq!(enc(&Reply::Double("1.5".into()), 2), "$3\r\n1.5\r\n");
        assert_eq!(enc(&Reply::Double("-inf".into()), 3), ",-inf\r\n");
        assert_eq!(enc(&Reply::err("ERR a\r\nb"), 2), "-ERR a  b\r\n");
    }
}
#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// fuzz/artifacts/resp_parse/oom-81ac6f70…: an inline request with a NUL byte made
    /// `split_args` push empty arguments until memory ran out.
    #[test]
    fn inline_nul_byte_is_a_separator_not_an_endless_loop() {
        let r = parse(b"j\x00\xd3\n", &Limits::default()).unwrap().unwrap();
        assert_eq!(
            r.0.args,
            vec![Bytes::from_static(b"j"), Bytes::from_static(b"\xd3")]
        );
        assert_eq!(r.1, 4);
        assert_eq!(
            split_args(b"\0\0a\0b\0").unwrap(),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
    }
}
