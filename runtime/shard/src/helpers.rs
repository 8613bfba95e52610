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
    /// On a shard thread whose pool jobs run `SCHED_BATCH` (io_uring driver,
    /// [`Scheduling::Batch`]); false elsewhere: those jobs are left alone.
    static POOL_BATCH: Cell<bool> = const { Cell::new(false) };
}

/// Records, on a shard thread, how its pool jobs are to be scheduled: only
/// when the shard runs io_uring (`uring`), see the module doc.
pub(crate) fn set_for_this_shard(s: Scheduling, uring: bool) {
    POOL_BATCH.with(|b| b.set(uring && s == Scheduling::Batch));
}

/// `f`, to run on a blocking-pool thread: under `SCHED_BATCH` when the
/// calling shard's pool jobs are, the thread's own policy restored afterwards
/// (a panic included); else as it is, with no system call.
pub(crate) fn wrap<T>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl FnOnce() -> T + Send + 'static {
    let batch = POOL_BATCH.with(Cell::get);
    move || {
        struct Restore(libc::c_int);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = set_own_policy(self.0);
            }
        }
        let _restore = if batch {
            // SAFETY: a plain query of the calling thread's policy.
            let own = unsafe { libc::sched_getscheduler(0) };
            (own >= 0 && own != libc::SCHED_BATCH && set_own_policy(libc::SCHED_BATCH).is_ok())
                .then_some(Restore(own))
        } else {
            None
        };
        f()
    }
}
