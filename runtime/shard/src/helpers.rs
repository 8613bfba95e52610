//! The scheduling policy of a shard's own jobs on its blocking pool
//! ([`Scheduling`]): a pool thread takes it for the length of a job the shard
//! hands it through [`crate::io`] ([`wrap`]) and then returns to the policy
//! it had, so other jobs on the pool (content filters, program deliveries,
//! and the children they start, which inherit the policy) keep the default.
//! Only on the io_uring driver, where the shard's pool jobs are delivery work
//! no client waits on (the shared `syncfs`); on epoll they are every file
//! operation, the queue's commits included, and keep the default.

use std::cell::Cell;

use crate::placement::{set_own_policy, Scheduling};

thread_local! {
    /// On a shard thread: the policy of its pool jobs (`None` elsewhere, and
    /// on the epoll driver: left alone).
    static POOL_SCHEDULING: Cell<Option<Scheduling>> = const { Cell::new(None) };
}

/// Records, on a shard thread, how its pool jobs are to be scheduled: only
/// when the shard runs io_uring (`uring`), see the module doc.
pub(crate) fn set_for_this_shard(s: Scheduling, uring: bool) {
    POOL_SCHEDULING.with(|h| h.set(uring.then_some(s)));
}

/// `f`, to run on a blocking-pool thread under the calling shard's pool
/// policy, the thread's own restored afterwards (a panic included).
pub(crate) fn wrap<T>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl FnOnce() -> T + Send + 'static {
    let policy = POOL_SCHEDULING.with(Cell::get).map(Scheduling::pool_policy);
    move || {
        struct Restore(libc::c_int);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = set_own_policy(self.0);
            }
        }
        // SAFETY: a plain query of the calling thread's policy.
        let own = unsafe { libc::sched_getscheduler(0) };
        let _restore = match policy {
            Some(p) if own >= 0 && p != own && set_own_policy(p).is_ok() => Some(Restore(own)),
            _ => None,
        };
        f()
    }
}
