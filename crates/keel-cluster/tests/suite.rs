//! openraft's own storage test suite (`openraft::testing::Suite`) against keel's raft log
//! (keel-wal) and state machine (keel-engine), on real files: log state, votes, reads,
//! truncation, purging, membership, initial state after a restart, applying, and snapshot build,
//! transfer and install. One test per case of the suite, so a failure names its case.
//!
//! Two cases are left out, each for a state raft never produces:
//! - `get_initial_state_membership_from_log_and_sm` appends entry 1 after the log was purged
//!   through entry 2; keel's log refuses an append that does not continue it, before writing
//!   (`an_append_that_does_not_continue_the_log_is_refused` below holds it to that).
//! - `get_initial_state_log_ids` purges entries that were never applied and then asks for a
//!   snapshot of the empty state machine; an engine that applied nothing has no snapshot file,
//!   and keel refuses to build one (raft purges only behind a snapshot of applied entries).

use std::sync::Arc;

use keel_cluster::{Engines, LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

type S = Suite<TypeConfig, LogStore, StateMachine, Builder, tempfile::TempDir>;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(
            &dir.path().join("raft"),
            keel_wal::Options::small_for_tests(),
        )
        .unwrap();
        let mut engine = keel_engine::Options {
            wal: keel_wal::Options::small_for_tests(),
            active_expiry: false,
            ..keel_engine::Options::default()
        };
        engine.key_bytes_max = 256;
        engine.value_bytes_max = 4096;
        let engines = Arc::new(Engines::open(dir.path(), engine).unwrap());
        let sm = StateMachine::new(engines).unwrap();
        Ok((dir, log, sm))
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, log, sm) = Builder.build().await.unwrap();
            S::$name(log, sm).await.unwrap();
        }
    )*};
}

cases!(
    last_membership_in_log_initial,
    last_membership_in_log,
    last_membership_in_log_multi_step,
    get_membership_initial,
    get_membership_from_log_and_empty_sm,
    get_membership_from_empty_log_and_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_without_init,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_last_log_lt_sm,
    get_initial_state_re_apply_committed,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    try_get_log_entry,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    purge_logs_upto_20,
    delete_logs_since_11,
    delete_logs_since_0,
    append_to_log,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_snapshot() {
    S::transfer_snapshot(&Builder).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_does_not_continue_the_log_is_refused() {
    let (_dir, log, sm) = Builder.build().await.unwrap();
    let e = S::get_initial_state_membership_from_log_and_sm(log, sm)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("an append of entry 1 does not continue the log, whose next entry is 3"),
        "{e}"
    );
}
