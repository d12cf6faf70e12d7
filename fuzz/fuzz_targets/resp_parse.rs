//! Fuzzes the server's RESP request parser (`keel_resp::parse` and the resumable `Parser`).
//!
//! Input layout: `[selector, request bytes...]`; the selector picks small or default limits, so
//! that the limit checks are reached often, and whether the client has authenticated (before it
//! has, the parser's tighter bounds apply). Properties:
//! - nothing panics, and a frame is never larger than the limits allow;
//! - a complete frame consumes at least one byte and no more than the input;
//! - every strict prefix of a complete multibulk frame is "need more bytes";
//! - the resumable parser, fed the input in growing pieces, agrees with the one-shot parser.
#![no_main]

use keel_resp::{
    Limits, Parser, UNAUTHENTICATED_BULK_BYTES_MAX, UNAUTHENTICATED_MULTIBULK_LEN_MAX,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let limits = if sel & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            bulk_bytes_max: 16,
            multibulk_len_max: 4,
            inline_bytes_max: 32,
        }
    };
    let unauthenticated = sel & 2 != 0;
    let fresh = || {
        let mut p = Parser::default();
        p.set_unauthenticated(unauthenticated);
        p
    };
    let whole = fresh().parse(buf, &limits);
    if let Ok(Some((frame, consumed))) = &whole {
        assert!(*consumed > 0 && *consumed <= buf.len());
        if !frame.inline {
            assert!(frame.args.len() <= limits.multibulk_len_max);
            assert!(frame.args.iter().all(|a| a.len() <= limits.bulk_bytes_max));
            if unauthenticated {
                assert!(frame.args.len() <= UNAUTHENTICATED_MULTIBULK_LEN_MAX);
                assert!(frame
                    .args
                    .iter()
                    .all(|a| a.len() <= UNAUTHENTICATED_BULK_BYTES_MAX));
            }
            // Quadratic: only for small frames.
            for n in 0..*consumed.min(&512) {
                assert_eq!(
                    fresh().parse(&buf[..n], &limits),
                    Ok(None),
                    "prefix {n} of a frame"
                );
            }
        }
    }
    // The resumable parser, fed growing prefixes, must reach the same answer.
    let step = 1 + usize::from(sel >> 2) % 7;
    let mut p = fresh();
    let mut end = 0;
    let resumed = loop {
        end = (end + step).min(buf.len());
        match p.parse(&buf[..end], &limits) {
            Ok(None) if end < buf.len() => continue,
            r => break r,
        }
    };
    assert_eq!(resumed, whole);
});
