//! Thread-per-core shard runtime.
//!
//! What it does: decides where shards run ([`Placement`]), starts one OS
//! thread per shard pinned to its CPU, runs a single-threaded io_uring (or
//! epoll, see [`io::Driver`]) runtime on each, gives the shards bounded
//! channels to talk to each other ([`Mesh`]) and a shared stop signal
//! ([`Shutdown`]).
//!
//! What it does not do: anything about mail. The engine decides what a shard
//! owns (listeners, queues, caches); this crate only makes the threads, the
//! runtimes and the channels between them.
//!
//! Nothing here is shared by reference across shards on the hot path: a
//! shard's state lives on its own thread (`Rc`/`RefCell` are the norm), and
//! the only cross-thread objects are the channels and the stop signal.

mod helpers;
pub mod home;
pub mod io;
mod mesh;
mod placement;

pub use mesh::{Mesh, MeshReceiver, MeshSender, SendError};
// CPU lists are parsed by the `queue-layout` crate (one parser for every program).
pub use placement::{online_cpus, pin_current_thread, Placement, PlacementError, Scheduling};

use std::sync::Arc;
use tokio::sync::watch;

/// A stop signal shared by every shard. Cloning is cheap; [`Shutdown::trigger`]
/// wakes every [`Shutdown::wait`]er on every shard.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Asks everything to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether stop was asked.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once stop is asked (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which only happens at exit.
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// What a shard is told about itself when it starts.
#[derive(Clone)]
pub struct ShardInfo {
    /// Index, 0-based, dense.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
    /// CPU it is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// I/O driver of its runtime.
    pub driver: io::Driver,
    /// The shared stop signal.
    pub shutdown: Shutdown,
}

/// Handles of running shards.
pub struct Shards<T> {
    threads: Vec<std::thread::JoinHandle<T>>,
}

impl<T> Shards<T> {
    /// Waits for every shard thread to finish, returning their results in
    /// shard order. A shard that panicked yields `Err` with its message.
    pub fn join(self) -> Vec<Result<T, String>> {
        self.threads
            .into_iter()
            .map(|h| {
                h.join().map_err(|p| {
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "shard panicked".into())
                })
            })
            .collect()
    }
}

/// Starts one thread per CPU of `placement`, pins it, runs a runtime of
/// `driver` on it and the future made by `shard_main` inside; on io_uring
/// the threads of its blocking pool are scheduled by `scheduling`. `shard_main` is
/// called on the shard's own thread, so the future it returns need not be
/// `Send`.
pub fn start<F, Fut, T>(
    placement: &Placement,
    scheduling: Scheduling,
    driver: io::Driver,
    shutdown: Shutdown,
    shard_main: F,
) -> std::io::Result<Shards<T>>
where
    F: Fn(ShardInfo) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let cpus = placement.cpus();
    let count = cpus.len();
    let shard_main = Arc::new(shard_main);
    let mut threads = Vec::with_capacity(count);
    for (index, cpu) in cpus.into_iter().enumerate() {
        let info = ShardInfo {
            index,
            count,
            cpu,
            driver,
            shutdown: shutdown.clone(),
        };
        let shard_main = Arc::clone(&shard_main);
        let h = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                if let Some(cpu) = info.cpu {
                    // Pinning is a placement preference; a container that
                    // forbids it still gets a working (unpinned) shard.
                    if let Err(e) = pin_current_thread(cpu) {
                        eprintln!("shard {index}: cannot pin to cpu {cpu}: {e}");
                    }
                }
                helpers::set_for_this_shard(scheduling, info.driver == io::Driver::Uring);
                io::run(info.driver, shard_main(info))
            })?;
        threads.push(h);
    }
    Ok(Shards { threads })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn shards_run_and_stop() {
        for driver in [io::Driver::Uring, io::Driver::Epoll] {
            let shutdown = Shutdown::new();
            let started = Arc::new(AtomicUsize::new(0));
            let s2 = Arc::clone(&started);
            let placement = Placement::Unpinned(3);
            let shards = start(
                &placement,
                Scheduling::default(),
                driver,
                shutdown.clone(),
                move |info| {
                    let started = Arc::clone(&s2);
                    async move {
                        assert_eq!(io::current_driver(), info.driver);
                        started.fetch_add(1, Ordering::SeqCst);
                        info.shutdown.wait().await;
                        info.index
                    }
                },
            )
            .unwrap();
            while started.load(Ordering::SeqCst) < 3 {
                std::thread::yield_now();
            }
            shutdown.trigger();
            let r: Vec<_> = shards.join().into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(r, vec![0, 1, 2]);
        }
    }

    /// The policy of thread `tid` of this process.
    fn policy_of(tid: libc::pid_t) -> i32 {
        // SAFETY: a plain query of a thread id.
        unsafe { libc::sched_getscheduler(tid) }
    }

    #[test]
    fn a_shards_blocking_pool_gets_its_scheduling_and_the_shard_keeps_the_default() {
        for (scheduling, policy) in [
            (Scheduling::Batch, libc::SCHED_BATCH),
            (Scheduling::Normal, libc::SCHED_OTHER),
        ] {
            for driver in [io::Driver::Uring, io::Driver::Epoll] {
                let shards = start(
                    &Placement::Unpinned(1),
                    scheduling,
                    driver,
                    Shutdown::new(),
                    |_| async {
                        let pool = io::blocking(|| policy_of(0)).await;
                        // Any other job on the pool (a content filter, a
                        // program delivery) runs under the default policy.
                        let plain = tokio::task::spawn_blocking(|| policy_of(0)).await.unwrap();
                        // The pool's syncfs (delivery work no client waits on).
                        let synced = io::sync_fs(std::env::temp_dir()).await.is_ok();
                        (policy_of(0), pool, synced, plain)
                    },
                )
                .unwrap();
                let (own, pool, synced, plain) = shards.join().pop().unwrap().unwrap();
                assert_eq!(own, libc::SCHED_OTHER, "{scheduling} {driver:?}: the shard");
                // On epoll the pool does the queue's I/O too: left alone.
                let policy = match driver {
                    io::Driver::Uring => policy,
                    _ => libc::SCHED_OTHER,
                };
                assert_eq!(pool, policy, "{scheduling} {driver:?}: its blocking pool");
                assert!(synced, "{scheduling} {driver:?}: syncfs on the pool");
                assert_eq!(
                    plain,
                    libc::SCHED_OTHER,
                    "{scheduling} {driver:?}: another job"
                );
            }
        }
    }

    #[test]
    fn scheduling_names_parse_back() {
        for s in [Scheduling::Batch, Scheduling::Normal] {
            assert_eq!(Scheduling::parse(s.name()), Some(s));
        }
        assert_eq!(Scheduling::parse(" batch\n"), Some(Scheduling::Batch));
        assert_eq!(Scheduling::parse("fifo"), None);
        assert_eq!(Scheduling::default(), Scheduling::Batch);
    }
}
