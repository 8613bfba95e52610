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

use delivery::bounce::{self, BounceConfig, FailedRecipient, Original};
use delivery::local::{LocalConfig, LocalEnvelope, LocalTarget};
use delivery::remote::{Remote, RemoteJob};
use delivery::schedule::{Accountant, Channel, ConcurrencyLimits, RetryPolicy};
use delivery::Outcome;
use queue_store::{DueRecipient, MessageId, Queue, RecipientOutcome};

use crate::config::QueueSpec;
use crate::queues::ShardQueues;
use control::log;
use control::{ControlDir, DomainList};

/// Settings of delivery read from control files.
pub struct DeliverySettings {
    /// `locals`: domains delivered locally besides virtual domains.
    pub locals: DomainList,
    /// Domains of `virtualdomains` (left of `:`).
    pub virtualdomains: DomainList,
    /// Local delivery settings.
    pub local: LocalConfig,
    /// Retry schedule and lifetimes.
    pub retry: RetryPolicy,
    /// Bounce settings.
    pub bounce: BounceConfig,
    /// Concurrency limits.
    pub limits: ConcurrencyLimits,
    /// `SMTPROUTE`: a route (smtproutes syntax) that beats `smtproutes`.
    pub smtproute: Option<delivery::routes::SmtpRoutes>,
    /// `control/hostid`: this host's id in `host_table`. When set, the
    /// directory's placement (hostcntrl → host_table → smtp_port) decides
    /// whether a virtual user's mail is delivered here or relayed by SMTP to
    /// the user's mailstore (IndiMail's dynamic SMTPROUTE, `ROUTES=smtp`).
    pub hostid: Option<String>,
    /// DKIM signing of remote mail per `From:` domain (`DKIMSIGN`, default
    /// `control/domainkeys/%/default`; `DKIMSIGN=` empty turns it off).
    pub dkim: Option<msgproc::dkim::Signer>,
    /// `ELIMINATE_DUPS`: the duplicate eliminator's window in seconds
    /// (`ELIMINATE_DUPS_INT`, default 900), `None` when off.
    pub dups_window: Option<u64>,
    /// The vacation autoresponder's interval: one reply per sender per
    /// this many seconds (`AUTORESPONDER_INTERVAL`, default a week).
    pub autoreply_interval: u64,
    /// The host postmaster's home (`HOME/alias`, qmail's alias user): mail
    /// to `postmaster` of a local domain with no mailbox of its own is
    /// delivered by `.qmail-postmaster` there, else to its `Maildir/`.
    /// `None` (tools that never deliver): no such fallback.
    pub postmaster_home: Option<std::path::PathBuf>,
    /// `QMAIL_EXT`: `user-ext@domain` is delivered as `user`'s (its
    /// `.qmail-ext` file, else its mailbox); see [`crate::config::qmail_ext`].
    pub qmail_ext: bool,
}

impl DeliverySettings {
    /// Reads the control files; errors name file and line.
    pub fn load(
        control: &ControlDir,
        me: &str,
        queues: &[QueueSpec],
    ) -> Result<DeliverySettings, String> {
        let list = |n: &str| control.list(n).map_err(|e| e.to_string());
        let mut locals = list("locals")?;
        if locals.is_empty() {
            locals = vec![me.to_string(), "localhost".to_string()];
        }
        let virtualdomains = list("virtualdomains")?
            .into_iter()
            .filter_map(|l| l.split_once(':').map(|(d, _)| d.to_string()))
            .filter(|d| !d.is_empty() && !d.contains('@'))
            .collect::<Vec<_>>();
        let num = |n: &str, d: u64| control.number(n, d).map_err(|e| e.to_string());
        // qmail's schedule by default; `chanskiplocal`/`chanskipremote`
        // change the spacing (attempt k at about birth + (k * chanskip)^2).
        let retry = RetryPolicy {
            chanskip_local: num("chanskiplocal", 10)?.max(1),
            chanskip_remote: num("chanskipremote", 20)?.max(1),
            queuelifetime: num("queuelifetime", 604_800)?,
            bouncelifetime: num("bouncelifetime", 604_800)?,
        };
        let mut bounce = BounceConfig::new(me);
        if let Some(h) = control.string("bouncehost").map_err(|e| e.to_string())? {
            bounce.bouncehost = h;
        }
        if let Some(f) = control.string("bouncefrom").map_err(|e| e.to_string())? {
            bounce.bouncefrom = f;
        }
        if let Some(t) = control
            .string("doublebounceto")
            .map_err(|e| e.to_string())?
        {
            bounce.doublebounceto = t;
        }
        bounce.bouncemaxbytes = num("bouncemaxbytes", 50_000)? as usize;
        let names: Vec<String> = queues
            .iter()
            .map(|q| format!("queue{}", q.number))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let limits = ConcurrencyLimits::load(control.path(), &refs).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let env = |n: &str| std::env::var(n).ok();
        let quota =
            delivery::maildir::QuotaPolicy::from_env(&env, control.file("holdoverquota").exists())?;
        let local = LocalConfig {
            hostname: me.to_string(),
            qmaillocal: std::env::var_os("QMAILLOCAL").map(Into::into),
            quota,
            ..LocalConfig::default()
        };
        let smtproute = match std::env::var("SMTPROUTE") {
            Ok(v) if !v.trim().is_empty() => Some(
                delivery::routes::SmtpRoutes::parse("$SMTPROUTE", &v.replace(';', "\n")).map_err(
                    |errs| {
                        errs.iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                )?,
            ),
            _ => None,
        };
        let hostid = control.string("hostid").map_err(|e| e.to_string())?;
        let env = |n: &str| std::env::var(n).ok();
        let dkim = match std::env::var("DKIMSIGN") {
            Ok(v) if v.trim().is_empty() => None,
            _ => Some(msgproc::dkim::Signer::from_env(control.path(), &env)),
        };
        let dups_window = match std::env::var_os("ELIMINATE_DUPS") {
            None => None,
            Some(_) => Some(
                crate::config::env_number("ELIMINATE_DUPS_INT", msgproc::dups::DEFAULT_WINDOW)
                    .map_err(|e| e.to_string())?,
            ),
        };
        let autoreply_interval = crate::config::env_number(
            "AUTORESPONDER_INTERVAL",
            msgproc::autoreply::DEFAULT_INTERVAL,
        )
        .map_err(|e| e.to_string())?;
        Ok(DeliverySettings {
            postmaster_home: None,
            qmail_ext: crate::config::qmail_ext(),
            autoreply_interval,
            dkim,
            dups_window,
            smtproute,
            hostid,
            locals: DomainList::new(locals),
            virtualdomains: DomainList::new(virtualdomains),
            local,
            retry,
            bounce,
            limits,
        })
    }
}

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

    /// Sets the held domains (`etrnhosts`; at start and on reload). Mail of
    /// a domain no longer held goes back to the retry schedule.
    pub fn set_turn(&self, cfg: std::sync::Arc<crate::turn::TurnConfig>) {
        let released: usize = self
            .queues
            .all()
            .iter()
            .map(|q| q.unhold(|a| !cfg.is_held(crate::turn::domain_of(a))))
            .sum();
        if released > 0 {
            log!(
                "shard{} {released} held recipients released (no longer in etrnhosts)",
                self.index
            );
            // Wake the scheduler: they are due now.
            self.slot_freed.notify_one();
        }
        *self.turn.borrow_mut() = cfg;
    }

    /// Serves the shard's turn channel: ETRN flushes and ATRN hand-overs of
    /// the mail in this shard's queues (see [`crate::turn`]).
    pub async fn serve_turns(
        self: Rc<Self>,
        mut rx: shard::MeshReceiver<crate::turn::TurnRequest>,
        stop: shard::Shutdown,
    ) {
        use crate::turn::TurnRequest;
        loop {
            let req = tokio::select! {
                _ = stop.wait() => break,
                r = rx.recv() => r,
            };
            match req {
                None => break,
                Some(TurnRequest::Flush { node, reply }) => {
                    let n = self.flush(&node);
                    let _ = reply.send(n);
                }
                Some(TurnRequest::Take { node, count, items }) => {
                    let me = Rc::clone(&self);
                    tokio::task::spawn_local(me.hand_over(node, count, items));
                }
            }
        }
    }

    /// Leases the held mail `node` covers in every queue of this shard,
    /// grouped by message (oldest first).
    fn take_held(
        &self,
        node: &crate::turn::NodeMatch,
        held_only: bool,
    ) -> Vec<(Rc<Queue>, MessageId, Vec<DueRecipient>)> {
        let turn = std::sync::Arc::clone(&self.turn.borrow());
        let mut out: Vec<(Rc<Queue>, MessageId, Vec<DueRecipient>)> = Vec::new();
        for q in self.queues.all() {
            let taken = q.take_matching(|a| {
                let d = crate::turn::domain_of(a);
                node.matches_domain(d) && (!held_only || turn.is_held(d))
            });
            for r in taken {
                match out.last_mut() {
                    Some((lq, id, v)) if Rc::ptr_eq(lq, q) && *id == r.id => v.push(r),
                    _ => out.push((Rc::clone(q), r.id, vec![r])),
                }
            }
        }
        out
    }

    /// ETRN: delivers the held mail `node` covers now, by the usual route
    /// (smtproutes, else MX), one message after another (one connection,
    /// reused); returns the number of messages. Not counted against
    /// `concurrencyremote`: one sequential job per ETRN.
    fn flush(self: &Rc<Self>, node: &crate::turn::NodeMatch) -> usize {
        let jobs = self.take_held(node, true);
        let n = jobs.len();
        if n > 0 {
            log!(
                "shard{} etrn flush node={} messages={n}",
                self.index,
                node.name()
            );
            let me = Rc::clone(self);
            tokio::task::spawn_local(async move {
                for (q, id, rcpts) in jobs {
                    let mut by_domain: BTreeMap<String, Vec<DueRecipient>> = BTreeMap::new();
                    for r in rcpts {
                        by_domain
                            .entry(domain_of(&r.recipient).to_ascii_lowercase())
                            .or_default()
                            .push(r);
                    }
                    for (domain, rcpts) in by_domain {
                        me.remote_job(&q, id, domain, None, rcpts).await;
                    }
                }
            });
        }
        n
    }

    /// ATRN: leases the mail `node` covers, says how many messages, then
    /// hands them to the ATRN session one at a time and records the
    /// outcomes it sends back. Whatever is not answered goes back to the
    /// queue untouched.
    async fn hand_over(
        self: Rc<Self>,
        node: crate::turn::NodeMatch,
        count: tokio::sync::oneshot::Sender<usize>,
        items: tokio::sync::mpsc::Sender<crate::turn::TurnItem>,
    ) {
        let mut jobs = self.take_held(&node, false).into_iter();
        if count.send(jobs.len()).is_err() {
            for (q, id, rcpts) in jobs {
                rcpts.iter().for_each(|r| q.release(&id, r.rcpt));
            }
            return;
        }
        while let Some((q, id, rcpts)) = jobs.next() {
            let Some(env) = q.envelope(&id) else {
                continue;
            };
            let Some(body) = self.read_or_defer(&q, id, &rcpts, Channel::Remote).await else {
                continue;
            };
            let d = self.delivery_no();
            let addrs: Vec<String> = rcpts.iter().map(|r| r.recipient.clone()).collect();
            log!(
                "shard{} starting delivery {d}: msg {id} to atrn {}",
                self.index,
                addrs.join(",")
            );
            let (done, answer) = tokio::sync::oneshot::channel();
            let item = crate::turn::TurnItem {
                sender: env.sender.clone(),
                recipients: addrs,
                body,
                done,
            };
            if items.send(item).await.is_err() {
                // The session is gone: this and the rest stay queued.
                log!("shard{} delivery {d}: atrn session ended", self.index);
                rcpts.iter().for_each(|r| q.release(&id, r.rcpt));
                for (q, id, rcpts) in jobs.by_ref() {
                    rcpts.iter().for_each(|r| q.release(&id, r.rcpt));
                }
                break;
            }
            match answer.await {
                Ok(outcomes) => {
                    let mut outs = Vec::with_capacity(rcpts.len());
                    let missing = Outcome::Temporary("no result from ATRN session (#4.3.0)".into());
                    for (r, o) in rcpts
                        .into_iter()
                        .zip(outcomes.into_iter().chain(std::iter::repeat(missing)))
                    {
                        log_outcome(self.index, d, &o);
                        outs.push((r, o));
                    }
                    self.finish(&q, id, outs, Channel::Remote).await;
                }
                Err(_) => {
                    log!("shard{} delivery {d}: atrn session ended", self.index);
                    rcpts.iter().for_each(|r| q.release(&id, r.rcpt));
                }
            }
        }
    }

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
        let budget = free(Channel::Local) + free(Channel::Remote);
        if budget == 0 {
            return;
        }
        let due = q.due(now, budget * 8);
        if due.is_empty() {
            return;
        }
        // Group by message, keeping recipient order.
        let mut by_msg: BTreeMap<MessageId, Vec<DueRecipient>> = BTreeMap::new();
        for d in due {
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
                        self.finish(q, id, vec![(r, Outcome::Temporary(why))], Channel::Local)
                            .await;
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
                    None => q.release(&id, r.rcpt),
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
                                me.remote_job(&q, id, domain, route, rcpts).await;
                                drop(permit);
                                me.slot_freed.notify_one();
                            }
                            .instrument(span),
                        );
                    }
                    None => rcpts.iter().for_each(|r| q.release(&id, r.rcpt)),
                }
            }
        }
    }

    /// Local if the domain is in `locals`, `virtualdomains` or is a virtual
    /// domain known to the directory, unless (with `control/hostid`) the
    /// directory places the user on another mailstore: then remote, routed
    /// to that mailstore. `Err` when the directory cannot say (deferral,
    /// never a bounce and never delivery elsewhere).
    async fn classify(&self, rcpt: &str) -> Result<Dest, String> {
        let domain = domain_of(rcpt);
        if domain.is_empty() {
            // qmail's envnoathost: an address without a domain is one of
            // this host's (`me`); it never leaves for a remote host.
            return Ok(Dest::Local);
        }
        let unavailable = |e: String| format!("directory unavailable: {e} (#4.3.0)");
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

    async fn local_job(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        slotted: Vec<(DueRecipient, delivery::schedule::Permit)>,
    ) {
        let Some(env) = q.envelope(&id) else {
            drop(slotted);
            self.slot_freed.notify_one();
            return;
        };
        let (rcpts, permits): (Vec<_>, Vec<_>) = slotted.into_iter().unzip();
        let Some(message) = self.read_or_defer(q, id, &rcpts, Channel::Local).await else {
            drop(permits);
            self.slot_freed.notify_one();
            return;
        };
        // The recipients are delivered at once (their Maildir writes and
        // fsyncs overlap, and their outcome records share the queue's group
        // commits). Each outcome is recorded as soon as that recipient is
        // done, so a crash re-delivers at most the recipients in hand;
        // permanent failures are gathered into one bounce at the end.
        let (env, message) = (&env, &message);
        let failed: Vec<(DueRecipient, Outcome)> =
            futures_util::future::join_all(rcpts.into_iter().zip(permits).map(
                |(r, permit)| async move {
                    let failed = self.local_recipient(q, id, env, message, r).await;
                    // This recipient's slot is free once its outcome is known.
                    drop(permit);
                    self.slot_freed.notify_one();
                    failed
                },
            ))
            .await
            .into_iter()
            .flatten()
            .collect();
        if !failed.is_empty() {
            self.finish(q, id, failed, Channel::Local).await;
        }
    }

    /// Delivers one local recipient and records its outcome, except a
    /// permanent failure, which is returned for the message's one bounce.
    async fn local_recipient(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        env: &queue_store::Envelope,
        message: &[u8],
        r: DueRecipient,
    ) -> Option<(DueRecipient, Outcome)> {
        let d = self.delivery_no();
        log!(
            "shard{} starting delivery {d}: msg {id} to local {}",
            self.index,
            r.recipient
        );
        let outcome = match self.resolve_local(&r.recipient).await {
            Err(why) => Outcome::Temporary(why),
            Ok(LocalDest::NoMailbox) => Outcome::Permanent(format!(
                "Sorry, no mailbox here by that name: {} (#5.1.1)",
                r.recipient
            )),
            Ok(LocalDest::Discard) => Outcome::Delivered(
                "no mailbox here by that name: discarded (the domain's .qmail-default says delete)"
                    .into(),
            ),
            Ok(LocalDest::Relay(route)) => {
                self.relay_unknown(id, env, &r.recipient, message, route)
                    .await
            }
            Ok(LocalDest::Target(target)) if self.duplicate(&target, message) => {
                log!(
                    "shard{} msg {id} to {} is a duplicate (ELIMINATE_DUPS): dropped",
                    self.index,
                    r.recipient
                );
                Outcome::Delivered("duplicate message discarded".into())
            }
            Ok(LocalDest::Target(target)) => {
                let vars = envheader_vars(&env.extra);
                let envl = LocalEnvelope {
                    sender: &env.sender,
                    recipient: &r.recipient,
                    vars: &vars,
                };
                let report =
                    delivery::local::deliver(&self.settings().local, &target, envl, message).await;
                if report.over_quota {
                    self.flag_over_quota(&target.user).await;
                }
                match (&report.outcome, &report.forward) {
                    (Outcome::Delivered(_), Some(fwd)) => match self
                        .inject(&env.sender, fwd.recipients.clone(), fwd.message(message))
                        .await
                    {
                        // The forward could not be queued: retry the whole
                        // recipient later (it may deliver twice).
                        Err(e) => Outcome::Temporary(format!("cannot queue forward: {e}")),
                        Ok(_) => report.outcome,
                    },
                    (Outcome::Delivered(_), None) => {
                        self.autoreply(&target, env, &r.recipient, message).await;
                        report.outcome
                    }
                    _ => report.outcome,
                }
            }
        };
        log_outcome(self.index, d, &outcome);
        if matches!(outcome, Outcome::Permanent(_)) {
            return Some((r, outcome));
        }
        self.finish(q, id, vec![(r, outcome)], Channel::Local).await;
        None
    }

    /// The vacation autoresponder (spec 9.3, RFC 3834): a mailbox whose
    /// home holds `.vacation.msg` answers, through the queue with a null
    /// sender, unless the message must not be answered or the sender was
    /// answered within the interval. Never changes the delivery's outcome.
    async fn autoreply(
        &self,
        target: &LocalTarget,
        env: &queue_store::Envelope,
        recipient: &str,
        message: &[u8],
    ) {
        if !target.instructions.is_empty() {
            return;
        }
        let Ok(template) =
            std::fs::read_to_string(target.home.join(msgproc::autoreply::MESSAGE_FILE))
        else {
            return;
        };
        if let Some(why) = msgproc::autoreply::refusal(&env.sender, recipient, message) {
            log!(
                "shard{} autoresponder {recipient}: no reply to <{}> ({why})",
                self.index,
                env.sender
            );
            return;
        }
        let now = std::time::SystemTime::now();
        let dir = target.home.join(msgproc::autoreply::RATE_DIR);
        if !msgproc::autoreply::rate_allows(
            &dir,
            &env.sender,
            self.settings().autoreply_interval,
            now,
        ) {
            log!(
                "shard{} autoresponder {recipient}: <{}> already answered",
                self.index,
                env.sender
            );
            return;
        }
        let id = format!(
            "<{}.{}.{}.autoreply@{}>",
            unix_now(),
            std::process::id(),
            self.delivery_no(),
            self.settings().local.hostname
        );
        let reply = msgproc::autoreply::compose(
            &template,
            &env.sender,
            recipient,
            message,
            &delivery::bounce::rfc5322_date_of(now),
            &id,
        );
        match self.inject("", vec![env.sender.clone()], reply).await {
            Ok(_) => log!(
                "shard{} autoresponder {recipient}: replied to <{}>",
                self.index,
                env.sender
            ),
            Err(e) => log!(
                "shard{} autoresponder {recipient}: cannot queue reply to <{}>: {e}",
                self.index,
                env.sender
            ),
        }
    }

    /// The duplicate eliminator (spec 9.2): for a mailbox (not a .qmail
    /// alias), whether this message was delivered there within the window.
    /// A state file that cannot be kept never stops a delivery.
    fn duplicate(&self, target: &LocalTarget, message: &[u8]) -> bool {
        let Some(window) = self.settings().dups_window else {
            return false;
        };
        if !target.instructions.is_empty() {
            return false;
        }
        let _ = std::fs::create_dir_all(&target.maildir);
        match msgproc::dups::seen_before(&target.maildir, message, window, unix_now()) {
            Ok(dup) => dup,
            Err(e) => {
                log!(
                    "shard{} warning: duplicate state in {}: {e}",
                    self.index,
                    target.maildir.display()
                );
                false
            }
        }
    }

    /// What local delivery does with `rcpt`, in vdelivermail's order (spec
    /// 4.6, [`lookup::Directory::destination`]): the user's mailbox, through
    /// its `.qmail` (or, for `user-ext`, `.qmail-ext` and its `-default`
    /// fallbacks) when it has one; valias lines; else the domain's
    /// `.qmail-default` handler. `Err` (a deferral) when the directory or a
    /// file cannot be read: never a bounce or a delivery elsewhere on a
    /// failure.
    async fn resolve_local(&self, rcpt: &str) -> Result<LocalDest, String> {
        let dir = self
            .directory
            .get()
            .await
            .map_err(|e| format!("user directory unavailable: {e} (#4.3.0)"))?;
        let temp = |e: lookup::LookupError| format!("directory lookup failed: {e} (#4.3.0)");
        let settings = self.settings();
        let mut email = rcpt.to_ascii_lowercase();
        if !email.contains('@') {
            email = format!("{email}@{}", settings.local.hostname);
        }
        let dest = dir
            .destination(&email, settings.qmail_ext)
            .await
            .map_err(temp)?;
        let alias = |lines: Vec<String>, ext: String| LocalTarget {
            user: email.clone(),
            home: std::env::temp_dir(),
            maildir: std::env::temp_dir(),
            quota: None,
            instructions: lines,
            dash: String::new(),
            ext,
            source: "valias".into(),
        };
        let handler = match dest {
            Some(lookup::Destination::User { user, ext }) => {
                let quota = match user.quota {
                    lookup::Quota::Unlimited => None,
                    lookup::Quota::Limit { bytes, count } => Some(delivery::maildir::Quota {
                        bytes,
                        count: count.unwrap_or(0),
                    }),
                };
                let mut target = LocalTarget {
                    user: user.email(),
                    home: user.dir.clone(),
                    maildir: user.maildir(),
                    quota,
                    instructions: Vec::new(),
                    dash: if ext.is_empty() { "" } else { "-" }.into(),
                    ext: ext.clone(),
                    source: String::new(),
                };
                // `.qmail-ext` (and its fallbacks) for an extension, else the
                // user's `.qmail`, else the mailbox.
                let mut found = delivery::local::read_instructions(&user.dir, &ext)?;
                if found.is_none() && !ext.is_empty() {
                    found = delivery::local::read_instructions(&user.dir, "")?;
                }
                if let Some((path, lines)) = found {
                    target.instructions = lines;
                    target.source = path.display().to_string();
                }
                return Ok(LocalDest::Target(target));
            }
            Some(lookup::Destination::Aliases { lines, ext }) => {
                return Ok(LocalDest::Target(alias(lines, ext)))
            }
            Some(lookup::Destination::CatchAll(h)) => h,
            None => {
                // Not a virtual domain (`locals`): valias lines, else the
                // host postmaster.
                let lines = dir.aliases(&email).await.map_err(temp)?;
                if !lines.is_empty() {
                    return Ok(LocalDest::Target(alias(lines, String::new())));
                }
                lookup::catchall::Handler::Bounce
            }
        };
        self.catch_all(&dir, &email, handler).await
    }

    /// The domain's unknown-user handler (vdelivermail's last argument) for
    /// `email`, which has no mailbox and no alias.
    async fn catch_all(
        &self,
        dir: &lookup::Directory,
        email: &str,
        handler: lookup::catchall::Handler,
    ) -> Result<LocalDest, String> {
        use lookup::catchall::Handler;
        let (_, domain) = email.rsplit_once('@').unwrap_or((email, ""));
        let target = |instructions: Vec<String>, home: std::path::PathBuf| LocalTarget {
            user: email.to_string(),
            maildir: home.join("Maildir"),
            home,
            quota: None,
            instructions,
            dash: String::new(),
            ext: String::new(),
            source: format!(".qmail-default of {domain}"),
        };
        Ok(match handler {
            Handler::Bounce => match self.host_postmaster(email)? {
                Some(t) => LocalDest::Target(t),
                None => LocalDest::NoMailbox,
            },
            Handler::Delete => LocalDest::Discard,
            Handler::Forward(a) => {
                LocalDest::Target(target(vec![format!("&{a}")], std::env::temp_dir()))
            }
            Handler::Maildir(d) => {
                // vdelivermail makes the catch-all Maildir when missing.
                let md = std::path::Path::new(&d);
                for sub in ["cur", "new", "tmp"] {
                    if let Err(e) = std::fs::create_dir_all(md.join(sub)) {
                        return Err(format!(
                            "cannot make catch-all Maildir {d} of {domain}: {e} (#4.3.0)"
                        ));
                    }
                }
                LocalDest::Target(target(vec![d], std::env::temp_dir()))
            }
            Handler::Relay { host, port, .. } => {
                LocalDest::Relay(delivery::routes::Route::relay(&host, port))
            }
            Handler::Lines(lines) => {
                // Plain dot-qmail lines in `.qmail-default`: run in the
                // domain's directory, as qmail-local would.
                let real = dir
                    .real_domain(domain)
                    .await
                    .map_err(|e| format!("directory lookup failed: {e} (#4.3.0)"))?
                    .unwrap_or_else(|| domain.to_string());
                LocalDest::Target(target(lines, dir.config().domains_dir.join(real)))
            }
        })
    }

    /// A catch-all `domain:ip:port`: the mail goes to that SMTP server, as
    /// vdelivermail does with SMTPROUTE and qmail-remote.
    async fn relay_unknown(
        &self,
        id: MessageId,
        env: &queue_store::Envelope,
        rcpt: &str,
        message: &[u8],
        route: delivery::routes::Route,
    ) -> Outcome {
        let domain = domain_of(rcpt).to_ascii_lowercase();
        log!(
            "shard{} msg {id} to {rcpt}: no mailbox, the domain's catch-all relays to {}:{}",
            self.index,
            route.relay.as_deref().unwrap_or(""),
            route.port
        );
        let rcpts = [rcpt.to_string()];
        let job = RemoteJob {
            domain: &domain,
            sender: &env.sender,
            recipients: &rcpts,
            message,
            route: Some(route),
            qqeh: "",
        };
        self.remote
            .deliver(&job)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Outcome::Temporary("no result from remote delivery (#4.3.0)".into()))
    }

    /// A mailbox went over quota: its user gets the BOUNCE_MAIL flag, so
    /// that RCPT refuses further mail with 552 5.2.2 instead of accepting
    /// it only to bounce it (spec 4.7); a login clears the flag. A failure
    /// here never changes the delivery's outcome.
    async fn flag_over_quota(&self, user: &str) {
        let Ok(dir) = self.directory.get().await else {
            return;
        };
        match dir.set_bounce_flag(user, true).await {
            Ok(true) => log!("shard{} {user} over quota: BOUNCE_MAIL set", self.index),
            Ok(false) => {}
            Err(e) => log!(
                "shard{} {user} over quota: BOUNCE_MAIL not set: {e}",
                self.index
            ),
        }
    }

    /// RFC 5321 4.5.1: `postmaster` of every domain delivered here reaches
    /// someone. Without a mailbox or alias of its own it goes to the host
    /// postmaster (see [`DeliverySettings::postmaster_home`]).
    /// The alias user's dot-qmail files are read as any user's: extension
    /// `postmaster`, so `.qmail-postmaster`, then `.qmail-default`. `Err`
    /// when such a file exists but cannot be read.
    fn host_postmaster(&self, email: &str) -> Result<Option<LocalTarget>, String> {
        let settings = self.settings();
        let Some(home) = settings.postmaster_home.as_ref() else {
            return Ok(None);
        };
        let local = email.split_once('@').map_or(email, |(l, _)| l);
        if !local.eq_ignore_ascii_case("postmaster") {
            return Ok(None);
        }
        let (source, instructions) = match delivery::local::read_instructions(home, "postmaster")? {
            Some((path, lines)) => (path.display().to_string(), lines),
            None => (String::new(), Vec::new()),
        };
        if instructions.is_empty() {
            // Made on first use, so a home from before this fallback works.
            for sub in ["cur", "new", "tmp"] {
                let _ = std::fs::create_dir_all(home.join("Maildir").join(sub));
            }
        }
        Ok(Some(LocalTarget {
            user: "postmaster".into(),
            home: home.clone(),
            maildir: home.join("Maildir"),
            quota: None,
            instructions,
            dash: "-".into(),
            ext: "postmaster".into(),
            source,
        }))
    }

    async fn remote_job(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        domain: String,
        route: Option<delivery::routes::Route>,
        rcpts: Vec<DueRecipient>,
    ) {
        let Some(env) = q.envelope(&id) else {
            return;
        };
        let Some(mut message) = self.read_or_defer(q, id, &rcpts, Channel::Remote).await else {
            return;
        };
        // DKIM: remote mail is signed as it leaves, as the `From:` domain,
        // when that domain has a key (IndiMail's `*:remote:qmail-dkim`).
        let settings = self.settings();
        if let Some(signer) = &settings.dkim {
            if let Some(domain) = msgproc::dkim::from_domain(&message) {
                match signer.sign(&domain, &message) {
                    Ok(Some(header)) => {
                        let mut signed = header.into_bytes();
                        signed.extend_from_slice(&message);
                        message = signed;
                    }
                    Ok(None) => {}
                    Err(e) => log!("shard{} msg {id} not signed: {e}", self.index),
                }
            }
        }
        let d = self.delivery_no();
        let addrs: Vec<String> = rcpts.iter().map(|r| r.recipient.clone()).collect();
        log!(
            "shard{} starting delivery {d}: msg {id} to remote {}",
            self.index,
            addrs.join(",")
        );
        let job = RemoteJob {
            domain: &domain,
            sender: &env.sender,
            recipients: &addrs,
            message: &message,
            route: route.or_else(|| {
                settings
                    .smtproute
                    .as_ref()
                    .and_then(|r| r.lookup(&domain, env.sender.is_empty()))
                    .cloned()
            }),
            qqeh: "",
        };
        let outcomes = self.remote.deliver(&job).await;
        let mut outs = Vec::with_capacity(rcpts.len());
        for (r, o) in rcpts
            .into_iter()
            .zip(
                outcomes
                    .into_iter()
                    .chain(std::iter::repeat(Outcome::Temporary(
                        "no result from remote delivery (#4.3.0)".into(),
                    ))),
            )
        {
            log_outcome(self.index, d, &o);
            outs.push((r, o));
        }
        self.finish(q, id, outs, Channel::Remote).await;
    }

    /// The message body; when the queue cannot give it, every recipient of
    /// the job is deferred and `None` returned.
    async fn read_or_defer(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        rcpts: &[DueRecipient],
        channel: Channel,
    ) -> Option<Vec<u8>> {
        match q.read_message(&id).await {
            Ok(m) => Some(m),
            Err(e) => {
                let why = format!("cannot read message from queue: {e} (#4.3.0)");
                let outs = rcpts
                    .iter()
                    .map(|r| (r.clone(), Outcome::Temporary(why.clone())))
                    .collect();
                self.finish(q, id, outs, channel).await;
                None
            }
        }
    }

    /// Applies the lifetime, bounces permanent failures, records outcomes.
    async fn finish(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        outs: Vec<(DueRecipient, Outcome)>,
        channel: Channel,
    ) {
        let Some(env) = q.envelope(&id) else {
            return;
        };
        let now = unix_now();
        let null = env.sender.is_empty();
        let mut records = Vec::with_capacity(outs.len());
        let mut failed = Vec::new();
        for (r, o) in outs {
            let o = self.settings().retry.finalize(o, env.arrival, now, null);
            use crate::metrics::Counter;
            self.metrics.inc(match &o {
                Outcome::Delivered(_) => Counter::Delivered,
                Outcome::Temporary(_) => Counter::Deferred,
                Outcome::Permanent(_) => Counter::Failed,
            });
            if let Outcome::Delivered(_) = &o {
                self.metrics
                    .observe_delivery(now.saturating_sub(env.arrival));
            }
            let rec = match o {
                Outcome::Delivered(t) => RecipientOutcome::Delivered { reply: t },
                Outcome::Temporary(t) => RecipientOutcome::Deferred {
                    reply: t,
                    next_attempt: self.settings().retry.next_retry(channel, env.arrival, now),
                },
                Outcome::Permanent(t) => {
                    failed.push(FailedRecipient {
                        recipient: r.recipient.clone(),
                        reason: t.clone(),
                        remote_mta: None,
                    });
                    RecipientOutcome::Failed { reply: t }
                }
            };
            records.push((r.rcpt, rec));
        }
        if !failed.is_empty() {
            if let Err(e) = self.bounce(q, id, &env.sender, env.arrival, &failed).await {
                // Cannot queue the bounce now: keep the recipients pending
                // and try again later rather than lose the failure notice.
                log!("shard{} bounce for msg {id} not queued: {e}", self.index);
                for (_, rec) in records.iter_mut() {
                    if let RecipientOutcome::Failed { reply } = rec {
                        *rec = RecipientOutcome::Deferred {
                            reply: std::mem::take(reply),
                            next_attempt: now + 60,
                        };
                    }
                }
            }
        }
        if let Err(e) = q.record_outcomes(&id, &records).await {
            // The store is failing: the recipients go back no sooner than
            // the store's next probe (never at their old, past time, which
            // would deliver them again at once), and no sooner than their
            // own retry schedule for a deferral. One line per message
            // finishing while it fails; `due` hands out nothing meanwhile.
            let probe_at = q.store_failure().map_or(now + 1, |f| f.retry_at);
            log!(
                "shard{} cannot record outcomes of msg {id}: {e}; retry after {}s",
                self.index,
                probe_at.saturating_sub(now)
            );
            for (rcpt, rec) in &records {
                let not_before = match rec {
                    RecipientOutcome::Deferred { next_attempt, .. } => {
                        (*next_attempt).max(probe_at)
                    }
                    _ => probe_at,
                };
                q.release_at(&id, *rcpt, not_before);
            }
            return;
        }
        if q.envelope(&id).is_none() {
            log!("shard{} end msg {id}", self.index);
        }
    }

    async fn bounce(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        sender: &str,
        arrival: u64,
        failed: &[FailedRecipient],
    ) -> Result<(), String> {
        let decision = bounce::decide(&self.settings().bounce, sender);
        let message = q.read_message(&id).await.map_err(|e| e.to_string())?;
        let idtext = id.to_string();
        let original = Original {
            sender,
            arrival,
            id: &idtext,
            message: &message,
        };
        match bounce::build(
            &self.settings().bounce,
            &decision,
            original,
            failed,
            unix_now(),
        ) {
            None => {
                log!(
                    "shard{} bounce msg {id} dropped (double bounce failed)",
                    self.index
                );
                Ok(())
            }
            Some(b) => {
                let new = self
                    .inject(&b.sender, b.recipients.clone(), b.message)
                    .await?;
                self.metrics.inc(crate::metrics::Counter::Bounces);
                log!("shard{} bounce msg {id} qp {new}", self.index);
                Ok(())
            }
        }
    }

    /// Queues a new message (bounce or forward) on this shard.
    async fn inject(
        &self,
        sender: &str,
        recipients: Vec<String>,
        body: Vec<u8>,
    ) -> Result<MessageId, String> {
        let mut w = self.queues.begin();
        if let Err(e) = w.write(&body).await {
            w.abort().await;
            return Err(e.to_string());
        }
        let env = queue_store::Envelope::new(sender.to_string(), recipients);
        let n = env.recipients.len();
        let id = w.commit(env).await.map_err(|e| e.to_string())?;
        log!(
            "shard{} new msg {id} bytes={} from=<{sender}> rcpts={n} origin=delivery",
            self.index,
            body.len()
        );
        Ok(id)
    }
}

/// What local delivery does with one recipient ([`DeliveryShard::resolve_local`]).
enum LocalDest {
    /// Deliver to a mailbox, by dot-qmail lines or valias lines.
    Target(LocalTarget),
    /// No mailbox, and the domain's catch-all says `delete`.
    Discard,
    /// No mailbox, and the domain's catch-all hands the mail to this SMTP server.
    Relay(delivery::routes::Route),
    /// No mailbox here by that name (a bounce).
    NoMailbox,
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

fn log_outcome(shard: usize, d: u64, o: &Outcome) {
    let (word, text) = match o {
        Outcome::Delivered(t) => ("success", t),
        Outcome::Temporary(t) => ("deferral", t),
        Outcome::Permanent(t) => ("failure", t),
    };
    log!(
        "shard{shard} delivery {d}: {word}: {}",
        text.replace('\n', "/")
    );
}

/// The envheaders values of an envelope as `(NAME, value)` variables.
fn envheader_vars(extra: &[(String, String)]) -> Vec<(String, String)> {
    extra
        .iter()
        .filter(|(k, _)| k == msgproc::headers::ENVELOPE_KEY)
        .filter_map(|(_, v)| v.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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
