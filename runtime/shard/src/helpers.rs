//! The scheduling policy of a shard's blocking pool ([`Scheduling`]): a
//! pool thread takes it before running a job the shard hands it ([`wrap`]),
//! once per thread and policy. Only on the io_uring driver, where the pool
//! runs delivery work no client waits on (the shared `syncfs`); on epoll it
//! runs every file operation, the queue's commits included, and keeps the
//! default.

use std::cell::Cell;

use crate::placement::{set_own_policy, Scheduling};

thread_local! {
    /// On a shard thread: how its pool's threads are scheduled (`None`
    /// elsewhere, and on the epoll driver: left alone).
    static POOL_SCHEDULING: Cell<Option<Scheduling>> = const { Cell::new(None) };
    /// On a blocking-pool thread: the policy it last set for itself.
    static OWN_POLICY: Cell<Option<libc::c_int>> = const { Cell::new(None) };
}

/// Records, on a shard thread, how its pool's threads are to be scheduled
/// (on the io_uring driver only, see the module doc).
pub(crate) fn set_for_this_shard(s: Scheduling, driver: crate::io::Driver) {
    let s = (driver == crate::io::Driver::Uring).then_some(s);
    POOL_SCHEDULING.with(|h| h.set(s));
}

/// `f`, run on a blocking-pool thread, after that thread took the calling
/// shard's pool policy (once per thread and policy).
pub(crate) fn wrap<T>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl FnOnce() -> T + Send + 'static {
    let policy = POOL_SCHEDULING.with(Cell::get).map(Scheduling::pool_policy);
    move || {
        if let Some(p) = policy {
            if OWN_POLICY.with(Cell::get) != Some(p) && set_own_policy(p).is_ok() {
                OWN_POLICY.with(|o| o.set(Some(p)));
            }
        }
        f()
    }
}
