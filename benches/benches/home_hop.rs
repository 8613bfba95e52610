//! The cost of asking a user's home shard (issue 17): every user has a home shard whose
//! directory cache alone holds the user's entry; another shard asks it over `shard::Mesh`
//! and awaits the answer on a oneshot, as `indimail serve`'s `MeshUserHome` does.
//!
//! Two shard threads, each on its own runtime (`shard::io::run`, driver from
//! `INDIMAIL_DRIVER`, uring by default), one embedded (SQLite) directory per shard, the user's
//! entry already cached on its home:
//!
//! * `home_hop/local_user_status_hit`: `Directory::user_status` answered from the asking
//!   shard's own cache (the user's home is this shard, or the old per-shard cache when warm).
//! * `home_hop/remote_user_status_hit`: the same call on a shard whose user home is the other
//!   thread: domain from the local cache, then the question over the mesh, the home's cache
//!   hit, the entry cloned back and the oneshot answer awaited. The asking shard's clock is
//!   moved past `lookup::HOME_MEMO_MS` before each call, so that every call asks.
//! * `home_hop/remote_user_status_reused`: the same shard within `HOME_MEMO_MS` of the last
//!   answer (a message's delivery after its RCPT check): the home's answer reused, no hop.
//!
//! The difference is the price of one hop. `mesh/round_trip` (bench `mesh`) is the bare
//! channel round trip without any lookup.

use std::rc::Rc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lookup::{
    Clock, Directory, DirectoryConfig, HomeAnswer, LookupError, ManualClock, RefreshMode,
    SharedUser, UserHome, HOME_MEMO_MS,
};
use shard::io::{run, Driver};
use shard::{Mesh, MeshReceiver, MeshSender};

const USER: &str = "manny@example.com";

/// A question to the home shard, as the server's `UserQuestion`.
struct Question {
    user: String,
    domain: String,
    reply: tokio::sync::oneshot::Sender<Result<SharedUser, LookupError>>,
}

/// Every user's home is the other shard.
struct OtherShard(MeshSender<Question>);

impl UserHome for OtherShard {
    fn ask(&self, user: &str, domain: &str) -> Option<HomeAnswer> {
        let tx = self.0.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let q = Question {
            user: user.to_string(),
            domain: domain.to_string(),
            reply,
        };
        Some(Box::pin(async move {
            tx.send(q).await.ok()?;
            answer.await.ok()
        }))
    }
}

/// What the asking shard is told to time.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Local,
    Remote,
    Reused,
}

type Job = (Mode, u64, std_mpsc::Sender<Duration>);

fn driver() -> Driver {
    Driver::from_env().expect("INDIMAIL_DRIVER")
}

async fn open(cfg: &DirectoryConfig) -> Directory {
    let mut cfg = cfg.clone();
    cfg.change_poll = Duration::from_secs(1_000_000);
    let dir = Directory::open(cfg).await.expect("directory");
    dir.user_status(USER).await.expect("warm");
    dir
}

/// The home shard: answers questions from its cache until the mesh closes.
fn home_shard(cfg: DirectoryConfig, mut rx: MeshReceiver<Question>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        run(driver(), async move {
            let dir = open(&cfg).await;
            while let Some(q) = rx.recv().await {
                let _ = q.reply.send(dir.shared_user(&q.user, &q.domain).await);
            }
        })
    })
}

/// The asking shard: runs each job (so many lookups, local or remote) and reports the time.
fn asking_shard(
    cfg: DirectoryConfig,
    to_home: MeshSender<Question>,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        run(driver(), async move {
            let local = open(&cfg).await;
            // The clock moves 2 s per call: nothing but the memo may expire meanwhile.
            let mut routed_cfg = cfg.clone();
            routed_cfg.change_poll = Duration::from_secs(1 << 32);
            routed_cfg.cache.positive_ttl = Duration::from_secs(1 << 32);
            let clock = Rc::new(ManualClock::new(1_700_000_000));
            let dyn_clock: Rc<dyn Clock> = clock.clone();
            let routed = Directory::open_with(routed_cfg, dyn_clock, RefreshMode::Inline)
                .await
                .expect("directory");
            routed.set_user_home(Rc::new(OtherShard(to_home)));
            let past_memo = Duration::from_millis(HOME_MEMO_MS + 1);
            while let Some((mode, iters, done)) = jobs.recv().await {
                let dir = match mode {
                    Mode::Local => &local,
                    Mode::Remote | Mode::Reused => &routed,
                };
                let start = Instant::now();
                for _ in 0..iters {
                    if let Mode::Remote = mode {
                        clock.advance(past_memo);
                    }
                    let status = dir.user_status(std::hint::black_box(USER)).await;
                    std::hint::black_box(status.expect("user_status"));
                }
                let _ = done.send(start.elapsed());
            }
        })
    })
}

fn bench_home_hop(c: &mut Criterion) {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let cfg = DirectoryConfig::with_paths(h, h.join("control"), h.join("mail")).expect("config");
    run(driver(), indimail_benches::add_domain_and_user(&cfg, USER));

    let Mesh {
        mut senders,
        mut receivers,
    } = Mesh::<Question>::new(2, 1024);
    let to_home = senders.pop().expect("two senders");
    let home_rx = receivers.pop().expect("two receivers");
    let home_thread = home_shard(cfg.clone(), home_rx);
    let (jobs, job_rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let asking_thread = asking_shard(cfg, to_home, job_rx);

    let timed = |mode: Mode, iters: u64| {
        let (done, elapsed) = std_mpsc::channel();
        jobs.send((mode, iters, done)).expect("asking shard");
        elapsed.recv().expect("asking shard answers")
    };
    let mut g = c.benchmark_group("home_hop");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    g.bench_function("local_user_status_hit", |b| {
        b.iter_custom(|iters| timed(Mode::Local, iters))
    });
    g.bench_function("remote_user_status_hit", |b| {
        b.iter_custom(|iters| timed(Mode::Remote, iters))
    });
    g.bench_function("remote_user_status_reused", |b| {
        b.iter_custom(|iters| timed(Mode::Reused, iters))
    });
    g.finish();

    drop(jobs);
    asking_thread.join().expect("asking shard");
    home_thread.join().expect("home shard");
}

criterion_group!(benches, bench_home_hop);
criterion_main!(benches);
