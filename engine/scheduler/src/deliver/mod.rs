//! The delivery scheduler of one shard (the role of qmail-send, per shard).
//!
//! Each shard delivers the messages of the queues it owns: no global queue
//! manager, no cross-shard locks. The loop asks each queue for due
//! recipients (`Queue::due`, oldest first and cheap however large the
//! deferred backlog is), splits them into local and remote, starts one job
//! per message (local) or per message and domain (remote) within the
//! concurrency limits, and records each recipient's outcome durably. A new
//! commit wakes the loop at once (`Queue::subscribe`), so fresh mail never
//! waits for a poll.
//!
//! Concurrency: `concurrencylocal` / `concurrencyremote` (per queue
//! `concurrencyl.queueN` / `concurrencyr.queueN`) apply per queue on the
//! shard that owns the queue; since a queue has exactly one owner, the limit
//! is not divided further.
//!
//! A permanent failure is bounced (RFC 3464) by committing the bounce into
//! the shard's own queue *before* the failure is recorded, so a crash in
//! between bounces twice rather than never.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;
use tracing::Instrument;

use delivery::remote::Remote;
use delivery::schedule::{Accountant, Channel};
use delivery::Outcome;
use queue_store::{DueRecipient, Lane, LaneLimits, MessageId, Queue};

use crate::queues::ShardQueues;
use control::log;
use queue_layout::QueueSpec;

mod local;
mod outcomes;
mod remote;
mod settings;
mod turns;

pub use settings::{DeliverySettings, SettingsError};

/// One shard's delivery state.
pub struct DeliveryShard {
    index: usize,
    queues: Rc<ShardQueues>,
    specs: Vec<QueueSpec>,
    directory: Rc<crate::directory::DirectoryHandle>,
    /// Replaced whole on reload (see [`DeliveryShard::set_settings`]);
    /// a delivery under way keeps the settings it started with.
    settings: std::cell::RefCell<Rc<DeliverySettings>>,
    remote: Remote,
    accountant: Accountant,
    /// Woken when a job finishes (a concurrency slot is free again).
    slot_freed: tokio::sync::Notify,
    next_delivery: std::cell::Cell<u64>,
    metrics: std::sync::Arc<crate::metrics::ShardMetrics>,
    /// `etrnhosts`: domains whose mail is held for ETRN/ATRN (see
    /// [`crate::turn`]); replaced on reload.
    turn: std::cell::RefCell<std::sync::Arc<crate::turn::TurnConfig>>,
}

impl DeliveryShard {
    /// Delivery state for one shard.
    pub fn new(
        index: usize,
        queues: Rc<ShardQueues>,
        specs: Vec<QueueSpec>,
        directory: Rc<crate::directory::DirectoryHandle>,
        settings: Rc<DeliverySettings>,
        remote: Remote,
        metrics: std::sync::Arc<crate::metrics::ShardMetrics>,
    ) -> DeliveryShard {
        DeliveryShard {
            index,
            accountant: Accountant::new(settings.limits.clone(), 1),
            queues,
            specs,
            directory,
            settings: std::cell::RefCell::new(settings),
            remote,
            slot_freed: tokio::sync::Notify::new(),
            next_delivery: std::cell::Cell::new(1),
            metrics,
            turn: std::cell::RefCell::new(Default::default()),
        }
    }

    /// The delivery settings now in force.
    fn settings(&self) -> Rc<DeliverySettings> {
        Rc::clone(&self.settings.borrow())
    }

    /// Replaces the delivery settings (control files changed): new
    /// deliveries use them, concurrency limits included.
    pub fn set_settings(&self, settings: DeliverySettings) {
        self.accountant.set_limits(settings.limits.clone());
        *self.settings.borrow_mut() = Rc::new(settings);
    }

    /// Sets the `smtproutes` table (on reload).
    pub fn set_routes(&self, routes: std::sync::Arc<delivery::routes::SmtpRoutes>) {
        self.remote.set_routes(routes);
    }
}

impl DeliveryShard {
    /// Runs until `stop` resolves; jobs in flight at that moment are
    /// abandoned unrecorded and simply retried after a restart
    /// (at-least-once).
    pub async fn run(self: Rc<Self>, stop: shard::Shutdown) {
        let notifies: Vec<_> = self.queues.all().iter().map(|q| q.subscribe()).collect();
        // Housekeeping: segment reclamation/compaction and idle remote
        // connections, on their own timer so a busy queue still gets it.
        {
            let me = Rc::clone(&self);
            let stop = stop.clone();
            tokio::task::spawn_local(async move {
                loop {
                    tokio::select! {
                        _ = stop.wait() => break,
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    }
                    for q in me.queues.all() {
                        if let Err(e) = q.maintain().await {
                            log!("shard{} queue maintenance failed: {e}", me.index);
                        }
                    }
                    me.remote.close_idle().await;
                }
            });
        }
        loop {
            let now = unix_now();
            for (q, spec) in self.queues.all().iter().zip(&self.specs) {
                if !self.store_healthy(q, spec, now).await {
                    continue;
                }
                self.dispatch(q, spec, now).await;
            }
            let next_due = self
                .queues
                .all()
                .iter()
                .filter_map(|q| q.next_due_time())
                .min();
            let sleep = match next_due {
                Some(t) if t <= now => Duration::from_millis(200),
                Some(t) => Duration::from_secs((t - now).min(60)),
                None => Duration::from_secs(60),
            };
            let commit = async {
                let futs: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
                futures_select_any(futs).await
            };
            tokio::select! {
                _ = stop.wait() => break,
                _ = commit => {}
                _ = self.slot_freed.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Whether the queue's store takes writes. A failing store is probed
    /// when its back-off allows (one log line per probe, so at most one a
    /// second), and delivery of that queue resumes by itself once a flush
    /// succeeds, the probe's or any other (logged either way).
    async fn store_healthy(&self, q: &Queue, spec: &QueueSpec, now: u64) -> bool {
        if let Some(f) = q.store_failure() {
            if now < f.retry_at {
                return false;
            }
            if let Err(e) = q.probe().await {
                let next = q.store_failure().map_or(0, |f| f.backoff);
                log!(
                    "shard{} queue{} store failing since {}s errors={} last={e}; delivery paused, next probe in {next}s",
                    self.index,
                    spec.number,
                    now.saturating_sub(f.since),
                    f.errors
                );
                return false;
            }
        }
        if let Some(f) = q.take_healed() {
            log!(
                "shard{} queue{} store healed after {}s and {} errors; delivery resumes",
                self.index,
                spec.number,
                now.saturating_sub(f.since),
                f.errors
            );
        }
        true
    }

    async fn dispatch(self: &Rc<Self>, q: &Rc<Queue>, spec: &QueueSpec, now: u64) {
        let qname = format!("queue{}", spec.number);
        let free = |c| {
            self.accountant
                .limit(c, &qname)
                .saturating_sub(self.accountant.in_use(c, &qname)) as usize
        };
        let (free_local, free_remote) = (free(Channel::Local), free(Channel::Remote));
        let budget = free_local + free_remote;
        if budget == 0 {
            return;
        }
        // Unsorted recipients are classified here, so look further ahead
        // among them; those whose channel is full wait in its lane, and a
        // lane gives only as many as its channel has free slots.
        let limits = LaneLimits {
            unsorted: budget * 8,
            local: free_local,
            remote: free_remote,
        };
        let due = q.due_by_lane(now, limits);
        if due.is_empty() {
            return;
        }
        // Group by message, keeping recipient order.
        let mut by_msg: BTreeMap<MessageId, Vec<DueRecipient>> = BTreeMap::new();
        for (d, _) in due {
            by_msg.entry(d.id).or_default().push(d);
        }
        for (id, rcpts) in by_msg {
            let mut local = Vec::new();
            // One transaction per destination: (domain, mailstore route).
            let mut remote: BTreeMap<
                DestKey,
                (Option<delivery::routes::Route>, Vec<DueRecipient>),
            > = BTreeMap::new();
            let turn = std::sync::Arc::clone(&self.turn.borrow());
            for r in rcpts {
                if turn.is_held(domain_of(&r.recipient)) {
                    // An etrnhosts domain: kept for ETRN/ATRN.
                    if q.hold(&id, r.rcpt) {
                        log!(
                            "shard{} held msg {id} to <{}> for ETRN/ATRN",
                            self.index,
                            r.recipient
                        );
                    }
                    continue;
                }
                match self.classify(&r.recipient).await {
                    Ok(Dest::Local) => local.push(r),
                    Ok(Dest::Remote(route)) => {
                        let key = (
                            domain_of(&r.recipient).to_ascii_lowercase(),
                            route.as_ref().map(|(store, _)| store.clone()),
                        );
                        remote
                            .entry(key)
                            .or_insert_with(|| (route.map(|(_, r)| r), Vec::new()))
                            .1
                            .push(r)
                    }
                    Err(why) => {
                        // Directory down: defer without an attempt counted
                        // as a delivery failure of the mailbox.
                        let outcome = Outcome::Temporary(why.to_string());
                        self.finish(q, id, vec![(r, outcome)], Channel::Local).await;
                    }
                }
            }
            // `concurrencylocal` counts local deliveries (recipients), as
            // qmail's does: each recipient takes a slot; those that get none
            // wait for the next round.
            let mut slotted = Vec::new();
            for r in local {
                match self.accountant.try_acquire(Channel::Local, &qname) {
                    Some(permit) => slotted.push((r, permit)),
                    None => q.release_to(&id, r.rcpt, Lane::Local),
                }
            }
            if !slotted.is_empty() {
                let me = Rc::clone(self);
                let q = Rc::clone(q);
                let span = tracing::info_span!(
                    "local_delivery",
                    shard = self.index,
                    msg = %id,
                    rcpts = slotted.len()
                );
                tokio::task::spawn_local(
                    async move {
                        me.local_job(&q, id, slotted).await;
                    }
                    .instrument(span),
                );
            }
            for ((domain, _), (route, rcpts)) in remote {
                match self.accountant.try_acquire(Channel::Remote, &qname) {
                    Some(permit) => {
                        let me = Rc::clone(self);
                        let q = Rc::clone(q);
                        let span = tracing::info_span!(
                            "remote_delivery",
                            shard = self.index,
                            msg = %id,
                            domain = %domain,
                            rcpts = rcpts.len()
                        );
                        tokio::task::spawn_local(
                            async move {
                                // The job frees the slot when its transaction
                                // ends (also on an early return, by drop).
                                me.remote_job(&q, id, domain, route, rcpts, Some(permit))
                                    .await;
                                me.slot_freed.notify_one();
                            }
                            .instrument(span),
                        );
                    }
                    None => rcpts
                        .iter()
                        .for_each(|r| q.release_to(&id, r.rcpt, Lane::Remote)),
                }
            }
        }
    }

    /// Local if the domain is in `locals`, `virtualdomains` or is a virtual
    /// domain known to the directory, unless (with `control/hostid`) the
    /// directory places the user on another mailstore: then remote, routed
    /// to that mailstore. `Err` when the directory cannot say (deferral,
    /// never a bounce and never delivery elsewhere).
    async fn classify(&self, rcpt: &str) -> Result<Dest, Deferral> {
        let domain = domain_of(rcpt);
        if domain.is_empty() {
            // qmail's envnoathost: an address without a domain is one of
            // this host's (`me`); it never leaves for a remote host.
            return Ok(Dest::Local);
        }
        let unavailable = Deferral::DirectoryUnavailable;
        let settings = self.settings();
        let listed = settings.locals.contains(domain) || settings.virtualdomains.contains(domain);
        let dir = match self.directory.get().await {
            Ok(d) => d,
            Err(_) if listed && settings.hostid.is_none() => return Ok(Dest::Local),
            Err(e) => return Err(unavailable(e)),
        };
        let virtual_domain = listed
            || dir
                .is_virtual_domain(domain)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
        if !virtual_domain {
            return Ok(Dest::Remote(None));
        }
        let Some(me) = &settings.hostid else {
            return Ok(Dest::Local);
        };
        match dir.host_of(&rcpt.to_ascii_lowercase()).await {
            Ok(Some(store)) if !store.host_id.eq_ignore_ascii_case(me) => {
                let route = delivery::routes::Route::relay(&store.ip, store.port);
                Ok(Dest::Remote(Some((store.host_id.clone(), route))))
            }
            Ok(_) => Ok(Dest::Local),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    fn delivery_no(&self) -> u64 {
        let n = self.next_delivery.get();
        self.next_delivery.set(n + 1);
        n
    }
}

/// Why where a recipient goes cannot be decided now: a deferral (4.3.0), never a bounce
/// and never a delivery elsewhere. Its text is the deferral's reply.
#[derive(Debug, thiserror::Error)]
enum Deferral {
    /// The directory cannot be reached (or asked) to classify the recipient.
    #[error("directory unavailable: {0} (#4.3.0)")]
    DirectoryUnavailable(String),
    /// The directory cannot be reached to find the local user.
    #[error("user directory unavailable: {0} (#4.3.0)")]
    UserDirectoryUnavailable(String),
    /// A directory question failed.
    #[error("directory lookup failed: {0} (#4.3.0)")]
    Lookup(#[from] lookup::LookupError),
    /// A dot-qmail file exists but cannot be read (its own text).
    #[error("{0}")]
    DotQmail(delivery::local::LocalError),
    /// The catch-all Maildir cannot be made.
    #[error("cannot make catch-all Maildir {maildir} of {domain}: {source} (#4.3.0)")]
    CatchAllMaildir {
        /// The Maildir.
        maildir: String,
        /// The domain whose catch-all it is.
        domain: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Remote recipients of one message are grouped by (domain, mailstore).
type DestKey = (String, Option<String>);

/// Where a recipient goes.
enum Dest {
    /// This host's Maildirs.
    Local,
    /// SMTP; with the mailstore (host id) and route when the directory
    /// placed the user on another host.
    Remote(Option<(String, delivery::routes::Route)>),
}

fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves when any of the futures resolves.
async fn futures_select_any<F: std::future::Future<Output = ()> + Unpin>(mut futs: Vec<F>) {
    if futs.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
