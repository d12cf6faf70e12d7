//! Publishing: decided transactions become visible to readers strictly in LSN order, once their
//! records are acknowledged (P10).

use std::sync::Arc;

use keel_wal::Lsn;

use crate::keyspace::{Keyspace, Map};
use crate::record::Mutation;
use crate::types::Entry;

/// The state readers see: every transaction up to `lsn`, applied in LSN order.
pub(crate) struct Visible {
    pub(crate) keyspace: Keyspace,
    pub(crate) lsn: Lsn,
    /// Decision time of the record at `lsn`.
    pub(crate) at_ms: u64,
}

impl Visible {
    pub(crate) fn new(map: Map, lsn: Lsn, at_ms: u64) -> Visible {
        Visible {
            keyspace: Keyspace::new(map),
            lsn,
            at_ms,
        }
    }

    /// The entry of `key`, expired or not.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.keyspace.get(key)
    }

    pub(crate) fn apply(&mut self, mutations: &[Mutation], lsn: Lsn, at_ms: u64) {
        self.keyspace.apply(mutations, lsn);
        self.lsn = lsn;
        self.at_ms = at_ms;
    }
}

/// A decided transaction's effects, waiting for its record to be acknowledged.
pub(crate) struct Unpublished {
    pub(crate) lsn: Lsn,
    pub(crate) at_ms: u64,
    pub(crate) mutations: Arc<Vec<Mutation>>,
}
