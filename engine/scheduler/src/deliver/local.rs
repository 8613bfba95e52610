//! Local delivery dispatch: one job per message for the recipients of this host,
//! resolved through the directory (dot-qmail, valias, catch-all) into Maildirs,
//! with duplicate elimination, autoreplies and over-quota flags.

use std::rc::Rc;

use delivery::local::{LocalEnvelope, LocalTarget};
use delivery::remote::RemoteJob;
use delivery::schedule::Channel;
use delivery::Outcome;
use queue_store::{DueRecipient, MessageId, Queue};

use control::log;

use super::outcomes::log_outcome;
use super::{domain_of, unix_now, Deferral, DeliveryShard};

impl DeliveryShard {
    pub(super) async fn local_job(
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
        let failed: Vec<(DueRecipient, Outcome)> = futures_util::future::join_all(
            rcpts
                .into_iter()
                .zip(permits)
                .map(|(r, permit)| self.local_recipient(q, id, env, message, r, permit)),
        )
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
    /// `permit` (its `concurrencylocal` slot) is released as soon as the
    /// delivery itself is over, before the outcome is recorded.
    pub(super) async fn local_recipient(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        env: &queue_store::Envelope,
        message: &[u8],
        r: DueRecipient,
        permit: delivery::schedule::Permit,
    ) -> Option<(DueRecipient, Outcome)> {
        let d = self.delivery_no();
        log!(
            "shard{} starting delivery {d}: msg {id} to local {}",
            self.index,
            r.recipient
        );
        let outcome = match self.resolve_local(&r.recipient).await {
            Err(why) => Outcome::Temporary(why.to_string()),
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
        // The delivery is over, so its slot is free: the next one starts
        // while this outcome is being recorded (qmail frees the slot when
        // the delivery ends too). The recipient stays leased until then, so
        // it is not handed out again.
        drop(permit);
        self.slot_freed.notify_one();
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
    pub(super) async fn autoreply(
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
    pub(super) fn duplicate(&self, target: &LocalTarget, message: &[u8]) -> bool {
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
    pub(super) async fn resolve_local(&self, rcpt: &str) -> Result<LocalDest, Deferral> {
        let dir = self
            .directory
            .get()
            .await
            .map_err(Deferral::UserDirectoryUnavailable)?;
        let settings = self.settings();
        let mut email = rcpt.to_ascii_lowercase();
        if !email.contains('@') {
            email = format!("{email}@{}", settings.local.hostname);
        }
        let dest = dir.destination(&email, settings.qmail_ext).await?;
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
                let mut found = delivery::local::read_instructions(&user.dir, &ext)
                    .map_err(Deferral::DotQmail)?;
                if found.is_none() && !ext.is_empty() {
                    found = delivery::local::read_instructions(&user.dir, "")
                        .map_err(Deferral::DotQmail)?;
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
                let lines = dir.aliases(&email).await?;
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
    pub(super) async fn catch_all(
        &self,
        dir: &lookup::Directory,
        email: &str,
        handler: lookup::catchall::Handler,
    ) -> Result<LocalDest, Deferral> {
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
                        return Err(Deferral::CatchAllMaildir {
                            maildir: d,
                            domain: domain.to_string(),
                            source: e,
                        });
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
                    .await?
                    .unwrap_or_else(|| domain.to_string());
                LocalDest::Target(target(lines, dir.config().domains_dir.join(real)))
            }
        })
    }

    /// A catch-all `domain:ip:port`: the mail goes to that SMTP server, as
    /// vdelivermail does with SMTPROUTE and qmail-remote.
    pub(super) async fn relay_unknown(
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
    pub(super) async fn flag_over_quota(&self, user: &str) {
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
    pub(super) fn host_postmaster(&self, email: &str) -> Result<Option<LocalTarget>, Deferral> {
        let settings = self.settings();
        let Some(home) = settings.postmaster_home.as_ref() else {
            return Ok(None);
        };
        let local = email.split_once('@').map_or(email, |(l, _)| l);
        if !local.eq_ignore_ascii_case("postmaster") {
            return Ok(None);
        }
        let found =
            delivery::local::read_instructions(home, "postmaster").map_err(Deferral::DotQmail)?;
        let (source, instructions) = match found {
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
}

/// What local delivery does with one recipient ([`DeliveryShard::resolve_local`]).
pub(super) enum LocalDest {
    /// Deliver to a mailbox, by dot-qmail lines or valias lines.
    Target(LocalTarget),
    /// No mailbox, and the domain's catch-all says `delete`.
    Discard,
    /// No mailbox, and the domain's catch-all hands the mail to this SMTP server.
    Relay(delivery::routes::Route),
    /// No mailbox here by that name (a bounce).
    NoMailbox,
}

/// The envheaders values of an envelope as `(NAME, value)` variables.
pub(super) fn envheader_vars(extra: &[(String, String)]) -> Vec<(String, String)> {
    extra
        .iter()
        .filter(|(k, _)| k == msgproc::headers::ENVELOPE_KEY)
        .filter_map(|(_, v)| v.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
