//! The scheduling policy of a shard's helper threads ([`Scheduling`]): its
//! runtime's blocking pool and io_uring's workers.
//!
//! A blocking-pool thread sets its own policy before the first job a shard
//! hands it ([`wrap`]). io_uring's workers are created by the kernel as
//! copies of the shard thread, whenever the ring needs another, so the shard
//! looks for its own (named `iou-wrk-<shard thread id>`) shortly after start
//! and then once a second, and sets the policy of those it has not seen
//! ([`ring_workers`]); a worker created meanwhile runs under the default
//! policy until then.

use std::cell::Cell;

use crate::placement::{set_policy, Scheduling};

thread_local! {
    /// On a shard thread: how its helpers are scheduled (`None` elsewhere:
    /// helpers of a runtime not started by [`crate::start`] are left alone).
    static SHARD_HELPERS: Cell<Option<Scheduling>> = const { Cell::new(None) };
    /// On a blocking-pool thread: the policy it last set for itself.
    static OWN_POLICY: Cell<Option<libc::c_int>> = const { Cell::new(None) };
}

/// Records, on a shard thread, how its helpers are to be scheduled.
pub(crate) fn set_for_this_shard(s: Scheduling) {
    SHARD_HELPERS.with(|h| h.set(Some(s)));
}

/// `f`, run on a blocking-pool thread, after that thread took the calling
/// shard's helper policy (once per thread and policy).
pub(crate) fn wrap<T>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl FnOnce() -> T + Send + 'static {
    let policy = SHARD_HELPERS.with(Cell::get).map(Scheduling::helper_policy);
    move || {
        if let Some(p) = policy {
            if OWN_POLICY.with(Cell::get) != Some(p) && set_policy(0, p).is_ok() {
                OWN_POLICY.with(|o| o.set(Some(p)));
            }
        }
        f()
    }
}
