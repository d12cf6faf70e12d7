//! Maintenance mode: `KEEL.MAINTENANCE ON ["reason"] | OFF | STATUS`.
//!
//! While it is on, every command that writes stored data gets `-MAINTENANCE <reason>`; reads,
//! INFO, checkpoints (SAVE), backups (KEEL.BACKUP) and admin commands go on. The mode is a
//! system entry of the engine (`server.maintenance`, see `keel_engine::Write::System`), so it
//! is durable like any write, survives a restart, and on a cluster is replicated through the
//! raft log: every node refuses writes once it has applied it.
//!
//! The entry's value (docs/FORMAT.md): a state byte (`1` on, `0` off), then, when on, the Unix
//! millisecond it was turned on (u64 LE) and the reason (UTF-8, possibly empty).

use bytes::Bytes;
use keel_engine::{Engine, Write};

use crate::resp::Reply;

/// The system entry that holds the mode.
pub const KEY: &[u8] = b"server.maintenance";

/// The reason given when ON names none.
const DEFAULT_REASON: &str = "maintenance mode is on; writes are refused";

/// The mode as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mode {
    pub since_ms: u64,
    pub reason: String,
}

impl Mode {
    /// The error every write gets while the mode is on.
    pub fn refusal(&self) -> Reply {
        Reply::err(format!("MAINTENANCE {}", self.reason))
    }
}

/// The mode `engine` holds now, if it is on.
pub fn current(engine: &Engine) -> Option<Mode> {
    decode(&engine.system(KEY)?)
}

/// The reply to a write the engine's fence refused: the mode's reason, as the write was decided
/// after ON (visible by then on a single node, applied on a cluster node). Should the mode have
/// been turned off again meanwhile, or should this be a KEEL.IDEM retry of such a write, the
/// reply says so instead of claiming the mode is on.
pub fn refusal_now(engine: &Engine) -> Reply {
    match current(engine) {
        Some(mode) => mode.refusal(),
        None => Reply::err(
            "MAINTENANCE the write was decided while maintenance mode was on, and not applied",
        ),
    }
}

fn decode(v: &[u8]) -> Option<Mode> {
    match v {
        [1, rest @ ..] if rest.len() >= 8 => {
            let (at, reason) = rest.split_at(8);
            Some(Mode {
                since_ms: u64::from_le_bytes(at.try_into().expect("8 bytes")),
                reason: String::from_utf8_lossy(reason).into_owned(),
            })
        }
        _ => None,
    }
}

/// The write that turns the mode on (`Some`) or off (`None`).
pub fn write(on: Option<&Mode>) -> Write {
    let value = match on {
        Some(m) => {
            let mut v = vec![1];
            v.extend_from_slice(&m.since_ms.to_le_bytes());
            v.extend_from_slice(m.reason.as_bytes());
            v
        }
        None => vec![0],
    };
    Write::System {
        key: Bytes::from_static(KEY),
        value: value.into(),
    }
}

/// The mode that `KEEL.MAINTENANCE ON [reason]` sets at `now_ms`, or the error its arguments
/// get. A reason is one line of printable text: it goes into an error reply.
pub fn on(reason: Option<&[u8]>, now_ms: u64) -> Result<Mode, Reply> {
    let reason = match reason {
        None => DEFAULT_REASON.to_string(),
        Some(r) => match std::str::from_utf8(r) {
            Ok(s) if !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control) => {
                s.to_string()
            }
            _ => return Err(Reply::err(
                "ERR the reason must be 1 to 1024 bytes of UTF-8 text without control characters",
            )),
        },
    };
    Ok(Mode {
        since_ms: now_ms,
        reason,
    })
}

/// STATUS's reply: `enabled`, `reason` and `since_ms`, as field-value pairs.
pub fn status(mode: Option<&Mode>) -> Reply {
    Reply::Map(vec![
        (
            Reply::bulk("enabled"),
            Reply::Int(i64::from(mode.is_some())),
        ),
        (
            Reply::bulk("reason"),
            mode.map_or(Reply::Nil, |m| Reply::bulk(m.reason.clone())),
        ),
        (
            Reply::bulk("since_ms"),
            mode.map_or(Reply::Nil, |m| Reply::Int(m.since_ms as i64)),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_value_round_trips_and_off_is_not_on() {
        let m = on(Some("moving racks".as_bytes()), 1_700_000_000_123).unwrap();
        let Write::System { value, .. } = write(Some(&m)) else {
            panic!()
        };
        assert_eq!(decode(&value), Some(m));
        let Write::System { value, .. } = write(None) else {
            panic!()
        };
        assert_eq!(decode(&value), None);
        assert_eq!(decode(&[1, 0, 0]), None, "too short is not on");
        assert_eq!(on(None, 5).unwrap().reason, DEFAULT_REASON);
        for bad in [&b""[..], b"two\nlines", b"\xff", &[b'x'; 1025]] {
            assert!(on(Some(bad), 5).is_err(), "{bad:?}");
        }
    }
}
