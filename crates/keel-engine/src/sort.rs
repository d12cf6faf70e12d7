//! SORT as Redis 7.2 defines it, over any lookup of live values: the decided state inside a
//! transaction, or a read view.

use std::cmp::Ordering;

use bytes::Bytes;

use crate::table::ValueRef;
use crate::types::{SortSpec, WriteError};

/// What a BY or GET pattern finds for `element`: `#` is the element; otherwise the first `*`
/// is replaced by it, and a `->field` after the `*` reads that field of a hash. Only a string
/// (or a hash's field) is found; a pattern without `*` finds nothing.
fn by_pattern<'a>(
    lookup: &dyn Fn(&[u8]) -> Option<ValueRef<'a>>,
    pattern: &[u8],
    element: &[u8],
) -> Option<Bytes> {
    if pattern == b"#" {
        return Some(Bytes::copy_from_slice(element));
    }
    let star = pattern.iter().position(|&b| b == b'*')?;
    let rest = &pattern[star + 1..];
    let arrow = rest
        .windows(2)
        .position(|w| w == b"->")
        .filter(|&i| i + 2 < rest.len());
    let (suffix, field) = match arrow {
        Some(i) => (&rest[..i], Some(&rest[i + 2..])),
        None => (rest, None),
    };
    let key = [&pattern[..star], element, suffix].concat();
    match (lookup(&key)?, field) {
        (ValueRef::String(v), None) => Some(Bytes::copy_from_slice(v)),
        (ValueRef::Hash(h), Some(f)) => h.get(f).map(Bytes::copy_from_slice),
        _ => None,
    }
}

/// A weight as Redis reads one for a numeric sort (strtod: leading spaces allowed, nothing
/// after the number, no NaN, nothing out of a double's range; an empty value is 0).
fn number(v: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(v).ok()?.trim_start();
    if s.is_empty() {
        return Some(0.0);
    }
    parse_double(s)
}

/// A double as Redis reads one (strtod with its checks): no NaN, and nothing out of a double's
/// range: `1e400` is not inf and `1e-400` is not 0, while `inf` and `-inf` are.
pub fn parse_double(s: &str) -> Option<f64> {
    let x = s.parse::<f64>().ok().filter(|x| !x.is_nan())?;
    let spelled_inf = s
        .trim_start_matches(['+', '-'])
        .to_ascii_lowercase()
        .starts_with("inf");
    let mantissa = s.split(['e', 'E']).next().unwrap_or_default();
    let underflow = x == 0.0 && mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c));
    let overflow = x.is_infinite() && !spelled_inf;
    (!overflow && !underflow).then_some(x)
}

/// The most bytes SORT's result may hold: GET patterns can make a short list return a large
/// value for every element (P11).
const SORT_BYTES_MAX: usize = 64 << 20;

/// SORT's result: the elements (or what the GET patterns find for them, nil where nothing),
/// sorted and limited; `Err(WrongType)` when the key holds no list, set or sorted set,
/// `Err(NotAFloat)` when a weight is not a number without ALPHA, `Err(ValueTooLarge)` past
/// [`SORT_BYTES_MAX`].
pub(crate) fn sort<'a>(
    lookup: &dyn Fn(&[u8]) -> Option<ValueRef<'a>>,
    spec: &SortSpec,
) -> Result<Vec<Option<Bytes>>, WriteError> {
    let copy = |b: &[u8]| Bytes::copy_from_slice(b);
    let source = lookup(&spec.key);
    let mut elements: Vec<Bytes> = match source {
        None => Vec::new(),
        Some(ValueRef::List(l)) => l.iter().map(copy).collect(),
        Some(ValueRef::Set(s)) => s.iter().map(|m| Bytes::from(m.into_owned())).collect(),
        Some(ValueRef::ZSet(z)) => z.iter().into_iter().map(|(m, _)| copy(m)).collect(),
        Some(_) => return Err(WriteError::WrongType),
    };
    let dont_sort = spec.by.as_ref().is_some_and(|p| !p.contains(&b'*'));
    if dont_sort {
        // The source's own order: a list's, a sorted set's (DESC from the highest score). A
        // set's is its table's, which differs between nodes: it is sorted, so that the result
        // is the same everywhere (Redis sorts it too when the result is stored).
        match source {
            Some(ValueRef::Set(_)) => {
                elements.sort();
                if spec.desc {
                    elements.reverse();
                }
            }
            Some(ValueRef::ZSet(_) | ValueRef::List(_)) if spec.desc => elements.reverse(),
            _ => {}
        }
    } else {
        // Each element with what it is compared by: its weight or the pattern's value.
        let keyed: Vec<(Bytes, Option<Bytes>)> = elements
            .into_iter()
            .map(|e| {
                let w = match &spec.by {
                    Some(p) => by_pattern(lookup, p, &e),
                    None => Some(e.clone()),
                };
                (e, w)
            })
            .collect();
        let mut sorted: Vec<(Bytes, Option<Bytes>, f64)> = Vec::with_capacity(keyed.len());
        for (e, w) in keyed {
            let score = match (&w, spec.alpha) {
                (_, true) | (None, false) => 0.0,
                (Some(w), false) => number(w).ok_or(WriteError::NotAFloat)?,
            };
            sorted.push((e, w, score));
        }
        sorted.sort_by(|a, b| {
            let cmp = if spec.alpha {
                // Ties fall back to the elements, so that every node sorts a set alike.
                match (&a.1, &b.1) {
                    (Some(x), Some(y)) => x.cmp(y),
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                }
                .then_with(|| a.0.cmp(&b.0))
            } else {
                a.2.partial_cmp(&b.2)
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| a.0.cmp(&b.0))
            };
            if spec.desc {
                cmp.reverse()
            } else {
                cmp
            }
        });
        elements = sorted.into_iter().map(|(e, ..)| e).collect();
    }
    let len = elements.len() as i64;
    let (start, end) = match spec.limit {
        None => (0, len - 1),
        Some((offset, count)) => {
            let start = offset.max(0);
            let end = if count < 0 {
                len - 1
            } else {
                start.saturating_add(count) - 1
            };
            (start, end.min(len - 1))
        }
    };
    let picked = if start >= len || start > end {
        &[][..]
    } else {
        &elements[start as usize..=end as usize]
    };
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(picked.len() * spec.get.len().max(1));
    for e in picked {
        let found: Vec<Option<Bytes>> = if spec.get.is_empty() {
            vec![Some(e.clone())]
        } else {
            spec.get.iter().map(|p| by_pattern(lookup, p, e)).collect()
        };
        bytes += found.iter().flatten().map(|v| v.len() + 16).sum::<usize>();
        if bytes > SORT_BYTES_MAX {
            return Err(WriteError::ValueTooLarge);
        }
        out.extend(found);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_out_of_range_are_refused_as_redis_refuses_them() {
        assert_eq!(parse_double("1.5"), Some(1.5));
        assert_eq!(parse_double("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_double("+Infinity"), Some(f64::INFINITY));
        assert_eq!(parse_double("0e5"), Some(0.0));
        assert_eq!(parse_double("1e400"), None);
        assert_eq!(parse_double("1e-400"), None);
        assert_eq!(parse_double("nan"), None);
        assert_eq!(number(b""), Some(0.0));
        assert_eq!(number(b"  7"), Some(7.0));
        assert_eq!(number(b"7x"), None);
    }
}
