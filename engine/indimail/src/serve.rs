//! `indimail serve`: start the shards, bind the listeners, run until SIGTERM.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context};
use shard::io::{self, Driver};
use shard::{Placement, ShardInfo, Shutdown};

use crate::config::{QueueSpec, ServeConfig, SmtpSettings};
use control::log;
use scheduler::metrics::{Counter, Registry};
use scheduler::queues::ShardQueues;
use smtp_server::{self as smtp, SmtpShard};

/// Each shard's listening sockets (shard `i` takes entry `i`), and the bound addresses.
type ListenerSet = (
    Vec<(smtp_server::Service, SocketAddr)>,
    Vec<Option<Vec<std::net::TcpListener>>>,
);

/// What every shard is handed at start-up.
struct Shared {
    settings: Arc<SmtpSettings>,
    /// Queue specs per shard.
    assignment: Vec<Vec<QueueSpec>>,
    /// The resolved listener addresses (port 0 replaced by the real port).
    addrs: Vec<(smtp_server::Service, SocketAddr)>,
    /// Every shard's sockets, bound by the main thread (to learn ephemeral
    /// ports, and before privileges are dropped: see [`crate::privs`]):
    /// shard `i` takes entry `i`; the same addresses with SO_REUSEPORT.
    shard_listeners: Mutex<Vec<Option<Vec<std::net::TcpListener>>>>,
    ready: Mutex<mpsc::Sender<Result<String, anyhow::Error>>>,
    /// Every shard's counters.
    registry: Registry,
    /// SMTP connections open on every shard (`maxdaemons` is the server's).
    smtp_connections: Arc<std::sync::atomic::AtomicU32>,
    /// New SMTP settings after a reload.
    reload: tokio::sync::watch::Receiver<Arc<SmtpSettings>>,
    /// The home directory (directory store, mailboxes).
    home: std::path::PathBuf,
    /// The control directory.
    control: control::ControlDir,
    /// `control/shutdowntimeout`: how long a stopping shard waits for SMTP
    /// sessions in flight.
    shutdown_timeout: std::time::Duration,
    /// `INDIMAIL_NO_DELIVERY`: accept and queue only (benchmarks of the
    /// accept path).
    no_delivery: bool,
    /// Every shard's turn channel (ETRN, ATRN; see [`scheduler::turn`]).
    turn_hub: scheduler::turn::TurnHub,
    /// The receiving ends, taken by each shard at start.
    turn_rx: Mutex<Vec<Option<shard::MeshReceiver<scheduler::turn::TurnRequest>>>>,
    /// Questions to users' home shards (see [`scheduler::directory::MeshUserHome`]).
    user_tx: Vec<shard::MeshSender<scheduler::directory::UserQuestion>>,
    /// Their receiving ends, taken by each shard at start.
    user_rx: Mutex<Vec<Option<shard::MeshReceiver<scheduler::directory::UserQuestion>>>>,
    /// Rate checks for authenticated users, sent to their home shards.
    rate_tx: Vec<shard::MeshSender<smtp_server::userrates::UserRateQuestion>>,
    /// Their receiving ends, taken by each shard at start.
    rate_rx: Mutex<Vec<Option<shard::MeshReceiver<smtp_server::userrates::UserRateQuestion>>>>,
    /// Queue-tool requests from the control socket (see [`crate::queuectl`]),
    /// taken by each shard at start.
    ctl_rx: Mutex<Vec<Option<shard::MeshReceiver<operator_tools::queuectl::CtlRequest>>>>,
    /// The queue base, to pick up `queueN` drop directories created after
    /// start (an injector that chose before `run/queues` was written);
    /// `None` with `QUEUEDIR`.
    stray_base: Option<std::path::PathBuf>,
    /// Numbers of the queues in the layout (the others are strays).
    known_queues: Vec<u32>,
    /// Each shard's import wake-up: a drop file routed there by another
    /// shard (`domainqueue`) is imported at once.
    import_wake: Vec<Arc<tokio::sync::Notify>>,
}

/// The shard placement of a layout: every online CPU stays `PerCpu` so the
/// log says so; a list is `Fixed`; `INDIMAIL_SHARDS` is `Unpinned`.
fn placement_of(layout: &queue_layout::Layout) -> Placement {
    let pinned: Vec<usize> = layout.shard_cpus.iter().flatten().copied().collect();
    if pinned.len() < layout.shard_cpus.len() {
        Placement::Unpinned(layout.shard_cpus.len())
    } else if layout.shards_from == queue_layout::Source::Default && layout.shards_asked.is_none() {
        Placement::PerCpu
    } else {
        Placement::Fixed(pinned)
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig, requested: Driver) -> anyhow::Result<()> {
    // Refuse early (before binding) when root has no user to drop to.
    let privileges = crate::privs::decide(&config.paths)?;
    let (driver, fallback) = io::choose_driver(requested);
    if let Some(why) = fallback {
        log!("warning: {why}");
    }
    let (layout, placement) = resolve_layout(&config)?;
    let queues = layout.specs();
    let shards = placement.len();
    let assignment = layout.assignment();
    print_assignment(&assignment, &placement);
    let (addrs, shard_listeners) = bind_listeners(&config.listeners, shards)?;
    become_user(&privileges, &config, &queues)?;
    open_directory(&config.paths.home);

    let queue_numbers: Vec<u32> = queues.iter().map(|q| q.number).collect();
    let registry = Registry::with_queues(shards, &queue_numbers);
    block_signals();
    let (reload_tx, reload_rx) = tokio::sync::watch::channel(Arc::new(config.smtp.clone()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let turn_mesh = shard::Mesh::new(shards, 64);
    let ctl_mesh = shard::Mesh::new(shards, 16);
    let user_mesh = shard::Mesh::new(shards, 1024);
    let rate_mesh = shard::Mesh::new(shards, 1024);
    let shared = Arc::new(Shared {
        smtp_connections: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        rate_tx: rate_mesh.senders,
        rate_rx: Mutex::new(rate_mesh.receivers.into_iter().map(Some).collect()),
        user_tx: user_mesh.senders,
        user_rx: Mutex::new(user_mesh.receivers.into_iter().map(Some).collect()),
        ctl_rx: Mutex::new(ctl_mesh.receivers.into_iter().map(Some).collect()),
        turn_hub: scheduler::turn::TurnHub::new(turn_mesh.senders),
        turn_rx: Mutex::new(turn_mesh.receivers.into_iter().map(Some).collect()),
        settings: Arc::new(config.smtp.clone()),
        assignment,
        stray_base: layout.queuedir.is_none().then(|| layout.base.clone()),
        known_queues: queue_numbers.clone(),
        import_wake: (0..shards).map(|_| Default::default()).collect(),
        addrs: addrs.clone(),
        shard_listeners: Mutex::new(shard_listeners),
        ready: Mutex::new(ready_tx),
        reload: reload_rx,
        registry: registry.clone(),
        home: config.paths.home.clone(),
        control: config.paths.control.clone(),
        shutdown_timeout: config.shutdown_timeout,
        no_delivery: std::env::var_os("INDIMAIL_NO_DELIVERY")
            .is_some_and(|v| !v.is_empty() && v != "0"),
    });
    let shutdown = Shutdown::new();
    let handles = shard::start(&placement, config.scheduling, driver, shutdown.clone(), {
        let shared = Arc::clone(&shared);
        move |info| shard_main(info, Arc::clone(&shared))
    })?;

    if let Err(e) = wait_until_ready(&ready_rx, shards) {
        shutdown.trigger();
        let _ = handles.join();
        scheduler::inject::remove_serving(&config.paths.home);
        bail!("start-up failed: {e}");
    }
    log!(
        "status: {shards} shards driver={} placement={placement} sched={}",
        driver.name(),
        config.scheduling
    );
    // Queue tools talk to the shards through the control socket.
    let control_socket = match operator_tools::queuectl::ControlSocket::start(
        operator_tools::queuectl::socket_path(&config.paths.home),
        ctl_mesh.senders,
    ) {
        Ok(c) => Some(c),
        Err(e) => {
            log!("warning: no control socket, queue tools cannot reach this server: {e}");
            None
        }
    };
    for (svc, a) in &addrs {
        println!("{} listening on {a}", svc.name());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let sig = run_until_signal(&config, &reload_tx);
    log!("status: signal {sig}, stopping");
    scheduler::inject::remove_serving(&config.paths.home);
    if let Some(c) = control_socket {
        c.stop();
    }
    shutdown.trigger();
    for (i, r) in handles.join().into_iter().enumerate() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log!("shard{i} error: {e}"),
            Err(p) => log!("shard{i} panicked: {p}"),
        }
    }
    log!(
        "status: stopped connections={} accepted={} rejected={} delivered={} bounced={}",
        registry.total(Counter::Connections),
        registry.total(Counter::Accepted),
        registry.total(Counter::Rejected),
        registry.total(Counter::Delivered),
        registry.total(Counter::Failed)
    );
    Ok(())
}

/// The one layout every program resolves (queue-layout), plus every `queueN` left outside
/// it (mail injected there is never stranded), and the shard placement it asks for.
fn resolve_layout(config: &ServeConfig) -> anyhow::Result<(queue_layout::Layout, Placement)> {
    let mut layout = config
        .paths
        .layout(config.cpus_arg.as_deref())
        .map_err(|e| anyhow::anyhow!("queue layout: {e}"))?;
    // Before looking for strays: an injector that reads this list from now
    // on writes only into queues this server imports.
    if let Err(e) = scheduler::inject::write_serving(&config.paths.home, &layout.configured()) {
        log!("warning: cannot record the queues served: {e}");
    }
    let mut adopted = layout.adopt_existing();
    // A stray another running server (sharing the base) holds is its own.
    adopted.retain(|n| {
        let dir = queue_layout::queue_path(&layout.base, *n);
        let busy = scheduler::queues::queue_in_use(&dir);
        if busy {
            log!(
                "queue{n} {} is in use by another process: not adopted",
                dir.display()
            );
        }
        !busy
    });
    layout
        .queues
        .retain(|q| !q.adopted || adopted.contains(&q.spec.number));
    let placement = placement_of(&layout);
    placement
        .validate()
        .context("shard CPUs (--cpus, control/cpus)")?;
    if let Some(asked) = layout.shards_asked {
        log!(
            "note: {} queues for {asked} cpus: running {} shards",
            layout.configured().len(),
            layout.shards()
        );
    }
    for n in &adopted {
        log!(
            "adopted queue{n} {} (outside the configured queues): shard {} imports and delivers it",
            queue_layout::queue_path(&layout.base, *n).display(),
            layout.shard_of(*n).unwrap_or(0)
        );
    }
    Ok((layout, placement))
}

/// Prints which shard (and CPU) owns each queue.
fn print_assignment(assignment: &[Vec<QueueSpec>], placement: &Placement) {
    let cpus = placement.cpus();
    for (i, qs) in assignment.iter().enumerate() {
        for q in qs {
            let cpu = cpus[i].map_or("any".to_string(), |c| c.to_string());
            println!(
                "queue{} {} -> shard {i} (cpu {cpu})",
                q.number,
                q.dir.display()
            );
        }
    }
}

/// Every shard's listening sockets, and the addresses they are bound to (port 0 replaced by
/// the real port).
fn bind_listeners(
    listeners: &[(smtp_server::Service, SocketAddr)],
    shards: usize,
) -> anyhow::Result<ListenerSet> {
    // Bind on this thread first so ephemeral ports are known and errors
    // (address in use, permission) are reported before any shard starts.
    let mut first = Vec::new();
    let mut addrs = Vec::new();
    for (svc, a) in listeners {
        let l = io::bind_reuseport(*a, 1024).with_context(|| format!("cannot listen on {a}"))?;
        addrs.push((*svc, l.local_addr()?));
        first.push(l);
    }
    // Every other shard's sockets too, while binding a port below 1024 is
    // still allowed.
    let mut shard_listeners = vec![Some(first)];
    for _ in 1..shards {
        let mut v = Vec::new();
        for (_, a) in &addrs {
            v.push(io::bind_reuseport(*a, 1024).with_context(|| format!("cannot listen on {a}"))?);
        }
        shard_listeners.push(Some(v));
    }
    // Every client address has a home shard (see `shard::home`): the kernel
    // places its connections there, so per-client limits hold server-wide.
    if shards > 1 {
        for l in &shard_listeners[0].as_ref().expect("bound above")[..] {
            if let Err(e) = shard::home::place_by_client_address(l, shards) {
                log!("warning: connections not placed by client address ({e}): per-client limits count per shard");
            }
        }
    }
    Ok((addrs, shard_listeners))
}

/// Drops root for the configured user (after binding, before any shard starts).
fn become_user(
    privileges: &crate::privs::Decision,
    config: &ServeConfig,
    queues: &[QueueSpec],
) -> anyhow::Result<()> {
    match privileges {
        crate::privs::Decision::AsIs => {}
        crate::privs::Decision::StayRoot => {
            log!("warning: running as root (INDIMAIL_ALLOW_ROOT): deliveries write as root")
        }
        crate::privs::Decision::Drop(user) => {
            crate::privs::prepare_ownership(&config.paths, queues, user)
                .and_then(|()| crate::privs::drop_to(user))
                .map_err(|e| anyhow::anyhow!("dropping privileges to {}: {e}", user.name))?;
            log!(
                "status: listeners bound, running as {} uid={} gid={}",
                user.name,
                user.uid,
                user.gid
            );
        }
    }
    Ok(())
}

/// Opens the directory once before the shards start, so a fresh embedded
/// store gets its tables from one writer instead of every shard racing
/// to create them.
fn open_directory(home: &std::path::Path) {
    let home = home.to_path_buf();
    if let Err(e) = io::run(Driver::Epoll, async move {
        lookup::Directory::open_home(&home).await.map(drop)
    }) {
        log!("warning: user directory unavailable at start: {e}");
    }
}

/// Waits for every shard's start-up report and logs it; the first failure.
fn wait_until_ready(
    ready_rx: &mpsc::Receiver<Result<String, anyhow::Error>>,
    shards: usize,
) -> anyhow::Result<()> {
    let mut failed = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(report)) => log!("{report}"),
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some(anyhow::anyhow!("a shard exited during start-up")),
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Serves until SIGTERM or SIGINT (its name), reloading the configuration on SIGHUP or
/// when a watched file changes.
fn run_until_signal(
    config: &ServeConfig,
    reload_tx: &tokio::sync::watch::Sender<Arc<SmtpSettings>>,
) -> &'static str {
    // Hot reload: on SIGHUP, or when a control file or the access rules
    // change, the configuration is read again; a good one replaces the old
    // one on every shard (new connections use it), a bad one is reported
    // with file and line and the old one stays. Listeners and CPUs need a
    // restart.
    let fingerprint_now = || config_fingerprint(&config.paths, &reload_tx.borrow().policy);
    let mut fingerprint = fingerprint_now();
    // Lists kept in MySQL tables (`.sql` variants) change without a file
    // changing: such a policy is read again every SQL_LIST_REFRESH seconds.
    let sql_refresh = std::time::Duration::from_secs(
        std::env::var("SQL_LIST_REFRESH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(60u64)
            .max(1),
    );
    let mut loaded_at = std::time::Instant::now();
    loop {
        match wait_for_signal(std::time::Duration::from_secs(2)) {
            Some(Sig::Hup) => {
                reload(config, reload_tx, "SIGHUP");
                fingerprint = fingerprint_now();
                loaded_at = std::time::Instant::now();
            }
            Some(Sig::Term) => break "TERM",
            Some(Sig::Int) => break "INT",
            None => {
                // Taken before the reload reads the files, so a change made
                // while it reads is seen at the next poll.
                let now = fingerprint_now();
                if now != fingerprint {
                    fingerprint = now;
                    reload(config, reload_tx, "control files changed");
                    loaded_at = std::time::Instant::now();
                } else if reload_tx.borrow().policy.uses_sql() && loaded_at.elapsed() >= sql_refresh
                {
                    reload(config, reload_tx, "sql lists refreshed");
                    loaded_at = std::time::Instant::now();
                }
            }
        }
    }
}

/// One shard: its queues, listeners and delivery started, then every task it runs, until
/// shutdown.
/// On io_uring, this shard's log lines are buffered and written once per
/// turn of its event loop (`control::log`): a flusher task, woken by the
/// first line of a turn, runs in that turn, before the runtime parks and
/// submits the turn's socket writes. Not on epoll, where a socket write
/// leaves at once and could overtake a line still in the buffer.
fn buffer_log_lines(info: &ShardInfo) -> Option<control::log::BufferGuard> {
    if info.driver != io::Driver::Uring {
        return None;
    }
    let wake = Rc::new(tokio::sync::Notify::new());
    let guard = control::log::buffer_this_thread({
        let wake = Rc::clone(&wake);
        move || wake.notify_one()
    });
    tokio::task::spawn_local(async move {
        loop {
            wake.notified().await;
            control::log::flush();
        }
    });
    Some(guard)
}

async fn shard_main(info: ShardInfo, shared: Arc<Shared>) -> anyhow::Result<()> {
    let _log_buffer = buffer_log_lines(&info);
    let ready = shared
        .ready
        .lock()
        .map(|t| t.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = start_shard(&info, &shared).await;
    let (smtp_shard, listeners, delivery, proxy) = match started {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("shard{}: {e}", info.index)));
            return Err(e);
        }
    };
    let queues_text: Vec<String> = shared.assignment[info.index]
        .iter()
        .map(|q| format!("queue{}", q.number))
        .collect();
    let _ = ready.send(Ok(format!(
        "shard{} ready cpu={} queues={}",
        info.index,
        info.cpu.map_or("any".into(), |c| c.to_string()),
        queues_text.join(",")
    )));

    spawn_listeners(&info, &shared, listeners, &smtp_shard, proxy.as_ref());
    spawn_importer(&info, &shared, &smtp_shard);
    // ETRN / ATRN requests from any shard for this shard's queues.
    let turn_rx = take_receiver(&shared.turn_rx, info.index);
    smtp_shard.set_turn(shared.turn_hub.clone());
    route_user_rates(&info, &shared, &smtp_shard);
    serve_queue_control(&info, &shared, &smtp_shard).await;
    match (&delivery, turn_rx) {
        (Some(d), Some(rx)) => {
            d.set_turn(Arc::clone(&shared.settings.turn));
            tokio::task::spawn_local(Rc::clone(d).serve_turns(rx, info.shutdown.clone()));
        }
        (None, Some(rx)) => {
            tokio::task::spawn_local(scheduler::turn::answer_idle(rx, info.shutdown.clone()));
        }
        (_, None) => {}
    }
    if let Some(d) = delivery.clone() {
        tokio::task::spawn_local(d.run(info.shutdown.clone()));
    }
    spawn_reloader(&info, &shared, &smtp_shard, delivery.clone());
    spawn_greylist_saver(&info, &smtp_shard);
    spawn_queue_gauges(&info, &shared, &smtp_shard);
    info.shutdown.wait().await;
    drain_sessions(&info, &shared, &smtp_shard).await;
    Ok(())
}

/// Serves each listener of this shard: SMTP, metrics, or a proxy.
fn spawn_listeners(
    info: &ShardInfo,
    shared: &Shared,
    listeners: Vec<shard::io::TcpListener>,
    smtp_shard: &Rc<SmtpShard>,
    proxy: Option<&Rc<proxies::ProxyContext>>,
) {
    for (l, (svc, _)) in listeners.into_iter().zip(&shared.addrs) {
        let stop = info.shutdown.clone();
        let stop = async move { stop.wait().await };
        use smtp_server::Service;
        if svc.is_smtp() {
            tokio::task::spawn_local(smtp::accept_loop(Rc::clone(smtp_shard), l, *svc, stop));
            continue;
        }
        if *svc == Service::Metrics {
            tokio::task::spawn_local(scheduler::metrics::serve(l, shared.registry.clone(), stop));
            continue;
        }
        let Some(ctx) = proxy.cloned() else { continue };
        match svc {
            Service::Pop3 => drop(tokio::task::spawn_local(proxies::serve_pop3(l, ctx, stop))),
            Service::Pop3s => drop(tokio::task::spawn_local(proxies::serve_pop3s(l, ctx, stop))),
            Service::ImapProxy => drop(tokio::task::spawn_local(proxies::serve_imap_proxy(
                l, ctx, stop,
            ))),
            Service::ImapsProxy => drop(tokio::task::spawn_local(proxies::serve_imaps_proxy(
                l, ctx, stop,
            ))),
            Service::Pop3Proxy => drop(tokio::task::spawn_local(proxies::serve_pop3_proxy(
                l, ctx, stop,
            ))),
            Service::Pop3sProxy => drop(tokio::task::spawn_local(proxies::serve_pop3s_proxy(
                l, ctx, stop,
            ))),
            Service::Poppass => drop(tokio::task::spawn_local(proxies::serve_poppass(
                l, ctx, stop,
            ))),
            Service::Poppasss => drop(tokio::task::spawn_local(proxies::serve_poppasss(
                l, ctx, stop,
            ))),
            Service::Metrics => {}
            Service::Smtp | Service::Submission | Service::Smtps | Service::Odmr => {}
        }
    }
}

/// Imports messages injected locally (qmail-queue, sendmail) into this shard's queues.
/// Injectors write durable drop files, so a poll costs latency only, never safety.
fn spawn_importer(info: &ShardInfo, shared: &Arc<Shared>, smtp_shard: &Rc<SmtpShard>) {
    let queues = Rc::clone(&smtp_shard.queues);
    // The queue's line processing acts on injected mail too.
    queues.set_rules(Arc::clone(&shared.settings.msgproc));
    let owners = shared.assignment.iter().zip(&shared.import_wake);
    queues.set_wakers(
        owners
            .flat_map(|(qs, w)| qs.iter().map(|q| (q.number, Arc::clone(w))))
            .collect(),
    );
    let wake = Arc::clone(&shared.import_wake[info.index]);
    let specs = shared.assignment[info.index].clone();
    let stop = info.shutdown.clone();
    let (index, count) = (info.index, info.count);
    let shared = Arc::clone(shared);
    tokio::task::spawn_local(async move {
        let mut pass = 0u64;
        let mut seen = std::collections::BTreeSet::new();
        loop {
            queues.import_drops(&specs, index).await;
            // Every 2 s: drops in a `queueN` made after start, queue N
            // being this shard's by N % shards.
            if let (Some(base), 0) = (&shared.stray_base, pass % 10) {
                for n in queue_layout::existing_queues(base) {
                    if shared.known_queues.contains(&n) || n as usize % count != index {
                        continue;
                    }
                    let qdir = queue_layout::queue_path(base, n);
                    // A queue log means another server opened it: its mail.
                    if qdir.join("seg").exists() {
                        continue;
                    }
                    if seen.insert(n) {
                        log!("shard{index} adopted drops of queue{n} (created after start)");
                    }
                    let dir = scheduler::inject::drop_dir(&qdir);
                    queues.import_dir(0, &dir, n, index).await;
                }
            }
            pass += 1;
            tokio::select! {
                _ = stop.wait() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    });
}

/// Authenticated users' rates, counted on each user's home shard.
fn route_user_rates(info: &ShardInfo, shared: &Shared, smtp_shard: &Rc<SmtpShard>) {
    if shared.rate_tx.len() > 1 {
        smtp_shard.set_user_rates(smtp_server::userrates::UserRateRouter::new(
            info.index,
            shared.rate_tx.clone(),
        ));
        let questions = take_receiver(&shared.rate_rx, info.index);
        if let Some(rx) = questions {
            tokio::task::spawn_local(smtp_server::server::answer_user_rate_questions(
                Rc::clone(smtp_shard),
                rx,
            ));
        }
    }
}

/// Queue tools (show, delete, bounce, hold, release, flush) for this shard's queues.
async fn serve_queue_control(info: &ShardInfo, shared: &Shared, smtp_shard: &Rc<SmtpShard>) {
    let ctx = Rc::new(operator_tools::queuectl::Ctx {
        who: format!("shard{}", info.index),
        control: shared.control.clone(),
        me: shared.settings.me.clone(),
        specs: shared.assignment[info.index].clone(),
    });
    operator_tools::queuectl::apply_recorded_flushes(&smtp_shard.queues, &ctx).await;
    let rx = take_receiver(&shared.ctl_rx, info.index);
    if let Some(rx) = rx {
        tokio::task::spawn_local(operator_tools::queuectl::serve_shard(
            rx,
            Rc::clone(&smtp_shard.queues),
            ctx,
            info.shutdown.clone(),
        ));
    }
}

/// Applies a reloaded configuration to this shard's SMTP and delivery.
fn spawn_reloader(
    info: &ShardInfo,
    shared: &Shared,
    smtp_shard: &Rc<SmtpShard>,
    delivery: Option<Rc<scheduler::deliver::DeliveryShard>>,
) {
    let mut rx = shared.reload.clone();
    let smtp = Rc::clone(smtp_shard);
    let (control, home) = (shared.control.clone(), shared.home.clone());
    let (index, specs) = (info.index, shared.assignment[info.index].clone());
    tokio::task::spawn_local(async move {
        while rx.changed().await.is_ok() {
            let new = rx.borrow_and_update().clone();
            if let Some(d) = &delivery {
                d.set_turn(Arc::clone(&new.turn));
                d.set_routes(Arc::clone(&new.smtproutes));
                match delivery_settings(&control, &home, &new.me, &specs) {
                    Ok(settings) => d.set_settings(settings),
                    Err(e) => log!("shard{index} delivery settings kept: {e}"),
                }
            }
            smtp.queues.set_rules(Arc::clone(&new.msgproc));
            smtp.reload(Rc::new((*new).clone()));
        }
    });
}

/// Saves the greylisting state every five minutes.
fn spawn_greylist_saver(info: &ShardInfo, smtp_shard: &Rc<SmtpShard>) {
    let smtp = Rc::clone(smtp_shard);
    let stop = info.shutdown.clone();
    tokio::task::spawn_local(async move {
        loop {
            tokio::select! {
                _ = stop.wait() => break,
                _ = tokio::time::sleep(std::time::Duration::from_secs(300)) => smtp.save_greylist(),
            }
        }
    });
}

/// Queue gauges for the metrics endpoint, refreshed off the mail path.
fn spawn_queue_gauges(info: &ShardInfo, shared: &Shared, smtp_shard: &Rc<SmtpShard>) {
    let directory = Rc::clone(&smtp_shard.directory);
    let metrics = shared.registry.shard(info.index);
    let queues = Rc::clone(&smtp_shard.queues);
    let gauges: Vec<_> = shared.assignment[info.index]
        .iter()
        .map(|spec| shared.registry.queue(spec.number))
        .collect();
    let stop = info.shutdown.clone();
    tokio::task::spawn_local(async move {
        loop {
            for (q, g) in queues.all().iter().zip(&gauges) {
                if let Some(g) = g {
                    g.update(q);
                }
            }
            if let Some(d) = directory.current() {
                use scheduler::metrics::Counter;
                metrics.set(Counter::DirectoryUserQueries, d.user_queries());
                let cache = d.cache_stats();
                metrics.set(Counter::DirectoryCacheHits, cache.hits + cache.stale_hits);
                metrics.set(Counter::DirectoryCacheMisses, cache.misses + cache.waits);
            }
            tokio::select! {
                _ = stop.wait() => break,
                _ = tokio::time::sleep(scheduler::metrics::QUEUE_GAUGE_EVERY) => {}
            }
        }
    });
}

/// Stopping: saves the greylisting state and gives sessions in flight `shutdowntimeout` to
/// finish.
async fn drain_sessions(info: &ShardInfo, shared: &Shared, smtp_shard: &SmtpShard) {
    smtp_shard.save_greylist();
    // Give sessions in flight `shutdowntimeout` to finish their
    // transaction; the ones still open then are closed when the runtime
    // ends: what has not been answered 250 is not accepted (the client
    // keeps it and retries), nothing that was is lost.
    let deadline = tokio::time::Instant::now() + shared.shutdown_timeout;
    while smtp_shard.active_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let open = smtp_shard.active_connections();
    if open > 0 {
        log!(
            "shard{} stopping: closing {open} smtp sessions still open after {}s",
            info.index,
            shared.shutdown_timeout.as_secs()
        );
    }
}

use std::rc::Rc;

type Started = (
    Rc<SmtpShard>,
    Vec<shard::io::TcpListener>,
    Option<Rc<scheduler::deliver::DeliveryShard>>,
    Option<Rc<proxies::ProxyContext>>,
);

/// The delivery settings of a shard owning `specs` (at start and reload).
fn delivery_settings(
    control: &control::ControlDir,
    home: &std::path::Path,
    me: &str,
    specs: &[QueueSpec],
) -> anyhow::Result<scheduler::deliver::DeliverySettings> {
    let mut settings = scheduler::deliver::DeliverySettings::load(control, me, specs)?;
    settings.postmaster_home = Some(home.join("alias"));
    Ok(settings)
}

fn build_remote(shared: &Shared) -> anyhow::Result<delivery::remote::Remote> {
    let mut cfg =
        delivery::remote::RemoteConfig::new(&shared.settings.me).map_err(anyhow::Error::msg)?;
    cfg.routes = (*shared.settings.smtproutes).clone();
    cfg.qmailremote = std::env::var_os("QMAILREMOTE")
        .filter(|v| !v.is_empty())
        .map(Into::into);
    let dns = delivery::dns::DnsConfig::from_env().map_err(anyhow::Error::msg)?;
    let resolver = delivery::dns::Resolver::new(&dns).map_err(anyhow::Error::msg)?;
    Ok(delivery::remote::Remote::new(cfg, resolver))
}

async fn start_shard(info: &ShardInfo, shared: &Shared) -> anyhow::Result<Started> {
    let (queues, reports) = ShardQueues::open(&shared.assignment[info.index])
        .await
        .map_err(anyhow::Error::msg)?;
    for (spec, r) in reports {
        log!(
            "shard{} queue{} recovered: messages={} pending={} segments={} torn_bytes={} corrupt={} quarantined={} ms={}",
            info.index,
            spec.number,
            r.messages,
            r.recipients_pending,
            r.segments,
            r.torn_bytes,
            r.corrupt_records.len(),
            r.quarantined.len(),
            r.millis
        );
        for q in &r.quarantined {
            log!(
                "shard{} queue{} quarantined msg {q} (kept in {}/quarantine)",
                info.index,
                spec.number,
                spec.dir.display()
            );
        }
        for c in &r.corrupt_records {
            log!(
                "shard{} queue{} corrupt record skipped: {c}",
                info.index,
                spec.number
            );
        }
    }
    let std_listeners = shared
        .shard_listeners
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_mut(info.index)
        .and_then(Option::take)
        .ok_or_else(|| anyhow::anyhow!("no listening sockets for this shard"))?;
    let listeners = std_listeners
        .into_iter()
        .map(shard::io::TcpListener::from_std)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let settings = Rc::new((*shared.settings).clone());
    // Opened now to surface problems early; if it fails, mail is still
    // accepted, recipient checks answer 451 and local deliveries are
    // deferred until the directory is back.
    let directory = Rc::new(scheduler::directory::DirectoryHandle::new(
        shared.home.clone(),
    ));
    if shared.user_tx.len() > 1 {
        directory.set_user_home(Rc::new(scheduler::directory::MeshUserHome::new(
            info.index,
            shared.user_tx.clone(),
            shared.registry.shard(info.index),
        )));
        let questions = take_receiver(&shared.user_rx, info.index);
        if let Some(rx) = questions {
            tokio::task::spawn_local(scheduler::directory::answer_user_questions(
                Rc::clone(&directory),
                rx,
            ));
        }
    }
    let _ = directory.get().await;
    let queues = Rc::new(queues);
    let cert_paths = tls::CertPaths::from_env(shared.control.path());
    let certs = if cert_paths.exists() {
        match tls::CertStore::load(cert_paths, tls::ServerOptions::default()) {
            Ok(c) => Some(Rc::new(c)),
            Err(e) => {
                log!("shard{} warning: TLS disabled: {e}", info.index);
                None
            }
        }
    } else {
        None
    };
    if certs.is_none() {
        if let Some((s, _)) = shared.addrs.iter().find(|(s, _)| s.implicit_tls()) {
            anyhow::bail!(
                "the {} listener needs a server certificate (control/servercert.pem)",
                s.name()
            );
        }
    }
    let proxy = if shared
        .addrs
        .iter()
        .any(|(s, _)| !s.is_smtp() && *s != smtp_server::Service::Metrics)
    {
        let mut config = proxies::ProxyConfig::from_env().map_err(|errs| {
            let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("{}", all.join("; "))
        })?;
        config.hostname = shared.settings.me.clone();
        Some(Rc::new(proxies::ProxyContext {
            directory: directory.clone(),
            config,
            tls: certs.clone(),
        }))
    } else {
        None
    };
    let smtp_shard = Rc::new(SmtpShard::new(
        settings,
        Rc::clone(&queues),
        shared.registry.shard(info.index),
        (info.index, Arc::clone(&shared.smtp_connections)),
        directory.clone(),
        certs,
    ));
    smtp_shard.set_greylisting(
        smtp_server::Greylisting::from_config(&shared.control, &shared.home, info.index)
            .map_err(anyhow::Error::msg)?,
    );
    let delivery = if shared.no_delivery {
        None
    } else {
        let specs = shared.assignment[info.index].clone();
        let settings =
            delivery_settings(&shared.control, &shared.home, &shared.settings.me, &specs)?;
        let remote = build_remote(shared)?;
        Some(Rc::new(scheduler::deliver::DeliveryShard::new(
            info.index,
            queues,
            specs,
            directory,
            Rc::new(settings),
            remote,
            shared.registry.shard(info.index),
        )))
    };
    Ok((smtp_shard, listeners, delivery, proxy))
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread (and so in every thread
/// started after), so only [`wait_for_signal`] receives them.
fn block_signals() {
    // SAFETY: plain libc signal-mask calls on a zeroed sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

enum Sig {
    Term,
    Int,
    Hup,
}

/// Waits up to `timeout` for SIGTERM, SIGINT or SIGHUP.
fn wait_for_signal(timeout: std::time::Duration) -> Option<Sig> {
    // SAFETY: plain libc calls on a zeroed sigset and timespec.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: 0,
        };
        match libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) {
            libc::SIGTERM => Some(Sig::Term),
            libc::SIGINT => Some(Sig::Int),
            libc::SIGHUP => Some(Sig::Hup),
            _ => None,
        }
    }
}

/// Names, sizes and mtimes of the control files and the access rules: a
/// change in any of them triggers a reload.
/// What the reloader watches: the control directory, the access rules, and
/// every file the policy read from elsewhere (absolute list names, the
/// RECIPIENTS extension's cdbs).
fn config_fingerprint(
    paths: &crate::config::Paths,
    policy: &policy::Policy,
) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut v = Vec::new();
    let mut add = |p: std::path::PathBuf| {
        if let Ok(m) = std::fs::metadata(&p) {
            v.push((p, m.len(), m.modified().ok()));
        }
    };
    if let Ok(rd) = std::fs::read_dir(paths.control.path()) {
        for e in rd.flatten() {
            add(e.path());
        }
    }
    add(paths.tcp_rules());
    for (p, _) in policy.sources() {
        if !p.starts_with(paths.control.path()) {
            add(p.clone());
        }
    }
    v.sort();
    v
}

fn reload(config: &ServeConfig, tx: &tokio::sync::watch::Sender<Arc<SmtpSettings>>, why: &str) {
    match ServeConfig::load(
        config.paths.clone(),
        &config.listeners,
        config.cpus_arg.clone(),
    ) {
        Ok(new) => {
            tx.send_replace(Arc::new(new.smtp));
            log!("status: configuration reloaded ({why})");
        }
        Err(errors) => {
            for e in errors {
                log!("reload failed: {e}");
            }
            log!("status: configuration kept ({why}: errors above)");
        }
    }
}

/// Shard `index`'s end of a mesh, taken once at its start.
fn take_receiver<T>(ends: &Mutex<Vec<Option<T>>>, index: usize) -> Option<T> {
    ends.lock()
        .ok()
        .and_then(|mut v| v.get_mut(index).and_then(Option::take))
}
