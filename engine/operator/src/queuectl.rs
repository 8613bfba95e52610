//! Queue tools that change the queue: `indimail queue show | delete |
//! bounce | hold | release | flush` (the roles of Postfix's postcat,
//! postsuper and postqueue, and of qmail-rm).
//!
//! **Running server.** A queue is written by the one shard that owns it, so
//! a tool never touches the files of a running server. The server listens
//! on a control socket, `<home>/run/control.sock` (mode 0600), served by a
//! plain thread of its own; each request goes to every shard by message
//! ([`CtlRequest`] over a [`shard::Mesh`], as ETRN does in [`scheduler::turn`]),
//! each shard applies it to its own queues and answers a [`Report`].
//!
//! **Stopped server.** With no server answering, the tool takes the
//! exclusive lock of every queue (`<queue>/lock`, the same lock the server
//! holds while it runs, see [`scheduler::queues::lock_queue`]), opens the queues
//! itself, imports waiting drop files, and applies the same code. A queue
//! whose lock is taken while the socket does not answer is refused, never
//! opened twice. `flush` on a stopped server is recorded in `<queue>/flush`
//! and applied by the owning shard when the server starts.
//!
//! **Semantics.** A selection names messages by id and/or by pattern:
//! `--sender`, `--rcpt` (an address, or `@domain` for every address of the
//! domain, case-insensitive), `--domain` (a recipient's domain) and `--grep`
//! (a substring of the envelope or the message). All given criteria must
//! hold. `hold`/`release` act on whole messages (operator hold, durable:
//! [`queue_store::Queue::freeze`]); `delete`, `bounce` and `flush` act on
//! the pending recipients of the selected messages, only those matching
//! `--rcpt`/`--domain` when given. Recipients whose delivery is in flight
//! at that moment are left to finish and counted as `busy`. `bounce` sends
//! a real RFC 3464 bounce to the sender through [`delivery::bounce`],
//! committed into the same queue before the recipients are marked failed
//! (as the scheduler does). `delete` marks them failed without a bounce.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use delivery::bounce::{self, BounceConfig, FailedRecipient, Original};
use queue_store::{
    DueRecipient, Envelope, MessageId, Queue, QueueError, RecipientOutcome, RecipientState,
};

use ::control::log;
use ::control::ControlDir;
use queue_layout::Paths;
use queue_layout::QueueSpec;
use scheduler::queues::ShardQueues;

/// The control socket of a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("run").join("control.sock")
}

/// Which messages (and recipients) a command acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Message ids (any of them).
    pub ids: Vec<MessageId>,
    /// Envelope sender pattern.
    pub sender: Option<String>,
    /// Recipient pattern.
    pub rcpt: Option<String>,
    /// Recipient domain.
    pub domain: Option<String>,
    /// Substring of the envelope or the message.
    pub grep: Option<String>,
    /// `grep` ignores case.
    pub icase: bool,
}

impl Selection {
    /// Whether nothing narrows the selection (every message).
    pub fn is_everything(&self) -> bool {
        self.ids.is_empty()
            && self.sender.is_none()
            && self.rcpt.is_none()
            && self.domain.is_none()
            && self.grep.is_none()
    }

    /// Whether message `id` with envelope `env` is selected (ids, sender,
    /// recipient, domain; not `grep`, which needs the message).
    pub fn envelope_matches(&self, id: MessageId, env: &Envelope) -> bool {
        (self.ids.is_empty() || self.ids.contains(&id))
            && self
                .sender
                .as_deref()
                .is_none_or(|p| address_matches(p, &env.sender))
            && self
                .rcpt
                .as_deref()
                .is_none_or(|p| env.recipients.iter().any(|r| address_matches(p, r)))
            && self
                .domain
                .as_deref()
                .is_none_or(|d| env.recipients.iter().any(|r| domain_matches(d, r)))
    }

    /// Whether a recipient of a selected message is concerned (`--rcpt`,
    /// `--domain`).
    fn recipient_matches(&self, addr: &str) -> bool {
        self.rcpt
            .as_deref()
            .is_none_or(|p| address_matches(p, addr))
            && self
                .domain
                .as_deref()
                .is_none_or(|d| domain_matches(d, addr))
    }

    fn grep_matches(&self, env: &Envelope, body: &[u8]) -> bool {
        let Some(g) = &self.grep else { return true };
        let fold = |b: &[u8]| -> Vec<u8> {
            if self.icase {
                b.to_ascii_lowercase()
            } else {
                b.to_vec()
            }
        };
        let needle = fold(g.as_bytes());
        if needle.is_empty() {
            return true;
        }
        let hay = |b: &[u8]| {
            fold(b)
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
        };
        hay(env.sender.as_bytes()) || env.recipients.iter().any(|r| hay(r.as_bytes())) || hay(body)
    }
}

/// `pattern` against an address: the address itself, `@domain` for every
/// address of the domain, `<>` for the null sender; case-insensitive.
pub fn address_matches(pattern: &str, addr: &str) -> bool {
    let p = pattern.trim().trim_start_matches('<').trim_end_matches('>');
    if p.is_empty() {
        return addr.is_empty();
    }
    match p.strip_prefix('@') {
        Some(d) => domain_matches(d, addr),
        None => p.eq_ignore_ascii_case(addr),
    }
}

fn domain_matches(domain: &str, addr: &str) -> bool {
    let d = domain.trim().trim_start_matches('@').trim_end_matches('.');
    addr.rsplit_once('@')
        .is_some_and(|(_, a)| a.trim_end_matches('.').eq_ignore_ascii_case(d))
}

/// A queue command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// List the selected messages (also the dry run before a confirmation).
    Select(Selection),
    /// Envelope and headers (or the whole message) of one message.
    Show {
        /// The message.
        id: MessageId,
        /// The whole message, not only the headers.
        body: bool,
    },
    /// Remove the selected recipients without a bounce.
    Delete(Selection),
    /// Bounce the selected recipients to the sender.
    Bounce(Selection),
    /// Put the selected messages on hold.
    Hold(Selection),
    /// Take the selected messages off hold (due at once).
    Release(Selection),
    /// Retry the selected deferred recipients now.
    Flush(Selection),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Select(_) => "select",
            Op::Show { .. } => "show",
            Op::Delete(_) => "delete",
            Op::Bounce(_) => "bounce",
            Op::Hold(_) => "hold",
            Op::Release(_) => "release",
            Op::Flush(_) => "flush",
        }
    }

    fn selection(&self) -> Option<&Selection> {
        match self {
            Op::Select(s)
            | Op::Delete(s)
            | Op::Bounce(s)
            | Op::Hold(s)
            | Op::Release(s)
            | Op::Flush(s) => Some(s),
            Op::Show { .. } => None,
        }
    }

    /// The request in wire form: `op NAME` then `key value` lines, ended by
    /// an empty line. Values may not hold a newline (refused).
    pub fn encode(&self) -> Result<String, RequestError> {
        let mut out = format!("op {}\n", self.name());
        let mut put = |k: &str, v: &str| -> Result<(), RequestError> {
            if v.contains(['\n', '\r']) {
                return Err(RequestError::Newline(k.to_string()));
            }
            out.push_str(&format!("{k} {v}\n"));
            Ok(())
        };
        match self {
            Op::Show { id, body } => {
                put("id", &id.to_string())?;
                if *body {
                    put("body", "1")?;
                }
            }
            _ => {
                let s = self.selection().cloned().unwrap_or_default();
                for id in &s.ids {
                    put("id", &id.to_string())?;
                }
                for (k, v) in [
                    ("sender", &s.sender),
                    ("rcpt", &s.rcpt),
                    ("domain", &s.domain),
                    ("grep", &s.grep),
                ] {
                    if let Some(v) = v {
                        put(k, v)?;
                    }
                }
                if s.icase {
                    put("icase", "1")?;
                }
            }
        }
        out.push('\n');
        Ok(out)
    }

    /// Parses [`Op::encode`]'s form (the lines before the empty line).
    pub fn decode(text: &str) -> Result<Op, RequestError> {
        let mut name = None;
        let mut s = Selection::default();
        let mut body = false;
        for line in text.lines() {
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "op" => name = Some(v.to_string()),
                "id" => s.ids.push(v.parse()?),
                "sender" => s.sender = Some(v.to_string()),
                "rcpt" => s.rcpt = Some(v.to_string()),
                "domain" => s.domain = Some(v.to_string()),
                "grep" => s.grep = Some(v.to_string()),
                "icase" => s.icase = v == "1",
                "body" => body = v == "1",
                other => return Err(RequestError::UnknownField(other.to_string())),
            }
        }
        Ok(match name.as_deref() {
            Some("select") => Op::Select(s),
            Some("show") => Op::Show {
                id: *s.ids.first().ok_or(RequestError::NoId)?,
                body,
            },
            Some("delete") => Op::Delete(s),
            Some("bounce") => Op::Bounce(s),
            Some("hold") => Op::Hold(s),
            Some("release") => Op::Release(s),
            Some("flush") => Op::Flush(s),
            Some(other) => return Err(RequestError::UnknownOperation(other.to_string())),
            None => return Err(RequestError::NoOperation),
        })
    }
}

/// Why a request cannot be put in wire form or read back from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A value holding a newline (it would end the field); names the key.
    #[error("{0}: a newline is not allowed")]
    Newline(String),
    /// An `id` that is not a message id.
    #[error("{0}")]
    Id(#[from] queue_store::BadMessageId),
    /// A key this version does not know.
    #[error("unknown request field `{0}`")]
    UnknownField(String),
    /// `show` without an `id`.
    #[error("show: no message id")]
    NoId,
    /// An operation this version does not know.
    #[error("unknown operation `{0}`")]
    UnknownOperation(String),
    /// No `op` line.
    #[error("no operation")]
    NoOperation,
}

/// Why one message could not be shown, deleted or bounced (the command goes on with the
/// others).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Delivered (or removed) between selection and action.
    #[error("message finished meanwhile")]
    Finished,
    /// The queue failed to read the message or record the outcomes.
    #[error("{0}")]
    Queue(#[from] QueueError),
    /// The bounce could not be written to the queue.
    #[error("cannot queue the bounce: {0}")]
    Bounce(QueueError),
}

/// What a command did, summed over queues and shards.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per message acted on.
    pub lines: Vec<String>,
    /// Messages acted on.
    pub messages: usize,
    /// Recipients acted on.
    pub recipients: usize,
    /// `show`: the envelope and message text.
    pub text: Option<Vec<u8>>,
    /// Problems (the command went on with the rest).
    pub errors: Vec<String>,
}

impl Report {
    fn merge(&mut self, o: Report) {
        self.lines.extend(o.lines);
        self.messages += o.messages;
        self.recipients += o.recipients;
        if self.text.is_none() {
            self.text = o.text;
        }
        self.errors.extend(o.errors);
    }

    /// The answer as sent on the socket and printed: `ok <messages>
    /// <recipients>` (or `error`), then the text.
    fn render(&self, op: &Op) -> Vec<u8> {
        if let (Op::Show { id, .. }, None, true) = (op, &self.text, self.errors.is_empty()) {
            return format!("error 0 0\nerror: no message {id} in the queue\n").into_bytes();
        }
        let mut out = format!(
            "{} {} {}\n",
            if self.errors.is_empty() {
                "ok"
            } else {
                "error"
            },
            self.messages,
            self.recipients
        )
        .into_bytes();
        if let Some(t) = &self.text {
            out.extend_from_slice(t);
        }
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        for e in &self.errors {
            out.extend_from_slice(format!("error: {e}\n").as_bytes());
        }
        let summary = match op {
            Op::Show { .. } => String::new(),
            Op::Select(_) => format!("{} messages\n", self.messages),
            Op::Flush(_) => format!(
                "flush: {} recipients of {} messages due now\n",
                self.recipients, self.messages
            ),
            Op::Hold(_) | Op::Release(_) => {
                format!("{}: {} messages\n", op.name(), self.messages)
            }
            Op::Delete(_) | Op::Bounce(_) => format!(
                "{}: {} recipients of {} messages\n",
                op.name(),
                self.recipients,
                self.messages
            ),
        };
        out.extend_from_slice(summary.as_bytes());
        out
    }
}

/// What a shard (or the stopped-server tool) needs to apply a command.
pub struct Ctx {
    /// Shard index for log lines (`tool` when run on a stopped server).
    pub who: String,
    /// Control directory (bounce settings are read per command, so a
    /// changed `bouncefrom` applies at once).
    pub control: ControlDir,
    /// `me`.
    pub me: String,
    /// The queues acted on.
    pub specs: Vec<QueueSpec>,
}

impl Ctx {
    fn bounce_config(&self) -> Result<BounceConfig, scheduler::deliver::SettingsError> {
        scheduler::deliver::DeliverySettings::load(&self.control, &self.me, &self.specs)
            .map(|s| s.bounce)
    }
}

/// Applies `op` to `queues` (all owned by the caller's thread).
pub async fn apply(queues: &[Rc<Queue>], op: &Op, ctx: &Ctx) -> Report {
    let mut report = Report::default();
    let now = Envelope::now();
    if let Op::Show { id, body } = op {
        for q in queues {
            if q.envelope(id).is_some() {
                match show(q, *id, *body, now).await {
                    Ok(t) => report.text = Some(t),
                    Err(e) => report.errors.push(e.to_string()),
                }
                report.messages = 1;
                return report;
            }
        }
        // Not in these queues: another shard may have it (see render).
        return report;
    }
    let Some(sel) = op.selection() else {
        return report;
    };
    let bounce_cfg = match op {
        Op::Bounce(_) => match ctx.bounce_config() {
            Ok(c) => Some(c),
            Err(e) => {
                report.errors.push(format!("bounce settings: {e}"));
                return report;
            }
        },
        _ => None,
    };
    for q in queues {
        let ids = select(q, sel).await;
        match op {
            Op::Select(_) => {
                for id in &ids {
                    if let Some(line) = describe(q, *id, now) {
                        report.lines.push(line);
                        report.messages += 1;
                    }
                }
            }
            Op::Hold(_) | Op::Release(_) => {
                hold_or_release(q, ids, op, ctx, now, &mut report).await
            }
            Op::Flush(_) => flush(q, &ids, sel, ctx, now, &mut report),
            Op::Delete(_) | Op::Bounce(_) => {
                remove(q, &ids, sel, bounce_cfg.as_ref(), ctx, now, &mut report).await
            }
            Op::Show { .. } => {}
        }
    }
    report
}

/// Holds (`queue hold`) or releases (`queue release`) the messages `ids`.
async fn hold_or_release(
    q: &Queue,
    ids: Vec<MessageId>,
    op: &Op,
    ctx: &Ctx,
    now: u64,
    report: &mut Report,
) {
    let qn = q.config().queue_no;
    for id in ids {
        let r = if matches!(op, Op::Hold(_)) {
            q.freeze(&id).await
        } else {
            q.thaw(&id, now).await
        };
        match r {
            Ok(true) => {
                let word = if matches!(op, Op::Hold(_)) {
                    "held"
                } else {
                    "released"
                };
                log!("{} queue{qn} msg {id} {word} by operator", ctx.who);
                report.lines.push(format!("queue{qn} {id} {word}"));
                report.messages += 1;
            }
            Ok(false) => report.lines.push(format!(
                "queue{qn} {id} {}",
                if matches!(op, Op::Hold(_)) {
                    "already held"
                } else {
                    "not held"
                }
            )),
            Err(e) => report.errors.push(format!("queue{qn} {id}: {e}")),
        }
    }
    if matches!(op, Op::Release(_)) {
        q.subscribe().notify_one();
    }
}

/// Makes the selected recipients of `ids` due now (`queue flush`).
fn flush(q: &Queue, ids: &[MessageId], sel: &Selection, ctx: &Ctx, now: u64, report: &mut Report) {
    let qn = q.config().queue_no;
    let set: std::collections::HashSet<MessageId> = ids.iter().copied().collect();
    let mut msgs = std::collections::HashSet::new();
    let n = q.retry_now(now, |id, env, idx| {
        let hit = set.contains(&id) && sel.recipient_matches(&env.recipients[idx]);
        if hit {
            msgs.insert(id);
        }
        hit
    });
    if n > 0 {
        log!(
            "{} queue{qn} flush: {n} recipients of {} messages due now",
            ctx.who,
            msgs.len()
        );
        q.subscribe().notify_one();
    }
    report.recipients += n;
    report.messages += msgs.len();
}

/// Takes the selected recipients of `ids` off the queue, bounced to the sender when
/// `bounce_cfg` is given, else deleted (`queue bounce`, `queue delete`). Recipients leased
/// by a delivery in flight are left alone and reported busy.
async fn remove(
    q: &Queue,
    ids: &[MessageId],
    sel: &Selection,
    bounce_cfg: Option<&BounceConfig>,
    ctx: &Ctx,
    now: u64,
    report: &mut Report,
) {
    let qn = q.config().queue_no;
    let set: std::collections::HashSet<MessageId> = ids.iter().copied().collect();
    let wanted = |id: MessageId, env: &Envelope, idx: usize| {
        set.contains(&id) && sel.recipient_matches(&env.recipients[idx])
    };
    let taken = q.take_where(wanted);
    let mut by_msg: std::collections::BTreeMap<MessageId, Vec<DueRecipient>> = Default::default();
    for r in taken {
        by_msg.entry(r.id).or_default().push(r);
    }
    for id in ids {
        let rcpts = by_msg.remove(id).unwrap_or_default();
        // What is still pending among the selected recipients
        // besides those just taken was leased by a delivery in
        // flight.
        let busy = pending_selected(q, *id, sel).saturating_sub(rcpts.len());
        if rcpts.is_empty() && busy == 0 {
            continue;
        }
        let result = match bounce_cfg {
            Some(cfg) => bounce_now(q, *id, &rcpts, cfg, now, &ctx.who).await,
            None => delete_now(q, *id, &rcpts).await,
        };
        match result {
            Ok(extra) => {
                let word = if bounce_cfg.is_some() {
                    "bounced"
                } else {
                    "deleted"
                };
                log!(
                    "{} queue{qn} msg {id} {word} by operator rcpts={}{extra}",
                    ctx.who,
                    rcpts.len()
                );
                if !rcpts.is_empty() && q.envelope(id).is_none() {
                    log!("{} end msg {id}", ctx.who);
                }
                let busy_text = if busy > 0 {
                    format!(" busy={busy} (in delivery now, left alone)")
                } else {
                    String::new()
                };
                report.lines.push(format!(
                    "queue{qn} {id} {word} rcpts={}{extra}{busy_text}",
                    rcpts.len()
                ));
                if !rcpts.is_empty() {
                    report.messages += 1;
                    report.recipients += rcpts.len();
                }
            }
            Err(e) => {
                for r in &rcpts {
                    q.release(id, r.rcpt);
                }
                report.errors.push(format!("queue{qn} {id}: {e}"));
            }
        }
    }
}

/// Pending recipients of `id` that `sel` concerns.
fn pending_selected(q: &Queue, id: MessageId, sel: &Selection) -> usize {
    let (Some(env), Some(st)) = (q.envelope(&id), q.recipients(&id)) else {
        return 0;
    };
    st.iter()
        .enumerate()
        .filter(|(i, r)| {
            r.state == RecipientState::Pending && sel.recipient_matches(&env.recipients[*i])
        })
        .count()
}

/// The live messages of `q` matching `sel`, oldest first.
async fn select(q: &Queue, sel: &Selection) -> Vec<MessageId> {
    let mut out = Vec::new();
    for id in q.message_ids() {
        let Some(env) = q.envelope(&id) else { continue };
        if !sel.envelope_matches(id, &env) {
            continue;
        }
        if sel.grep.is_some() {
            match q.read_message(&id).await {
                Ok(body) if sel.grep_matches(&env, &body) => {}
                _ => continue,
            }
        }
        out.push(id);
    }
    out
}

/// One line per message, as `queue list` prints it.
fn describe(q: &Queue, id: MessageId, now: u64) -> Option<String> {
    let env = q.envelope(&id)?;
    let st = q.recipients(&id)?;
    let rcpts: Vec<String> = env
        .recipients
        .iter()
        .zip(&st)
        .map(|(a, s)| format!("<{a}>:{}", state_word(s.state)))
        .collect();
    Some(format!(
        "queue{} {id} age={}s from=<{}> to={}{}",
        id.queue,
        now.saturating_sub(env.arrival),
        env.sender,
        rcpts.join(","),
        if q.is_frozen(&id) { " held" } else { "" }
    ))
}

fn state_word(s: RecipientState) -> &'static str {
    match s {
        RecipientState::Pending => "pending",
        RecipientState::Done => "done",
        RecipientState::Failed => "failed",
    }
}

/// `show`: envelope, then the headers or the whole message (postcat's
/// layout).
async fn show(q: &Queue, id: MessageId, whole: bool, now: u64) -> Result<Vec<u8>, MessageError> {
    let env = q.envelope(&id).ok_or(MessageError::Finished)?;
    let st = q.recipients(&id).unwrap_or_default();
    let body = q.read_message(&id).await?;
    let mut out = String::from("*** ENVELOPE ***\n");
    out.push_str(&format!("id: {id}\n"));
    out.push_str(&format!(
        "arrival: {} (age {}s)\n",
        delivery::bounce::rfc5322_date(env.arrival),
        now.saturating_sub(env.arrival)
    ));
    out.push_str(&format!(
        "held: {}\n",
        if q.is_frozen(&id) { "yes" } else { "no" }
    ));
    out.push_str(&format!("size: {}\n", body.len()));
    out.push_str(&format!("sender: <{}>\n", env.sender));
    if let Some(ip) = env.client_ip {
        out.push_str(&format!("client: {ip} helo={}\n", env.helo));
    }
    if let Some(u) = &env.auth_user {
        out.push_str(&format!("auth: {u}\n"));
    }
    for (a, s) in env.recipients.iter().zip(&st) {
        out.push_str(&format!(
            "recipient: <{a}> {} attempts={}{}\n",
            state_word(s.state),
            s.attempts,
            if s.last_reply.is_empty() {
                String::new()
            } else {
                format!(" last=\"{}\"", s.last_reply)
            }
        ));
    }
    let mut bytes = out.into_bytes();
    if whole {
        bytes.extend_from_slice(b"*** MESSAGE ***\n");
        bytes.extend_from_slice(&body);
    } else {
        bytes.extend_from_slice(b"*** HEADERS ***\n");
        let end = body
            .windows(2)
            .position(|w| w == b"\n\n")
            .map_or(body.len(), |p| p + 1);
        bytes.extend_from_slice(&body[..end]);
    }
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    Ok(bytes)
}

const DELETED: &str = "message deleted by the postmaster (#5.0.0)";
const BOUNCED: &str = "message bounced by the postmaster (#5.0.0)";

async fn delete_now(
    q: &Queue,
    id: MessageId,
    rcpts: &[DueRecipient],
) -> Result<String, MessageError> {
    if rcpts.is_empty() {
        return Ok(String::new());
    }
    let outs: Vec<(usize, RecipientOutcome)> = rcpts
        .iter()
        .map(|r| {
            (
                r.rcpt,
                RecipientOutcome::Failed {
                    reply: DELETED.into(),
                },
            )
        })
        .collect();
    q.record_outcomes(&id, &outs).await?;
    Ok(String::new())
}

/// Bounces `rcpts` of `id` now: the bounce (delivery::bounce, RFC 3464) is
/// committed into `q` first, then the recipients are recorded failed; a
/// crash in between bounces twice rather than never.
async fn bounce_now(
    q: &Queue,
    id: MessageId,
    rcpts: &[DueRecipient],
    cfg: &BounceConfig,
    now: u64,
    who: &str,
) -> Result<String, MessageError> {
    if rcpts.is_empty() {
        return Ok(String::new());
    }
    let env = q.envelope(&id).ok_or(MessageError::Finished)?;
    let message = q.read_message(&id).await?;
    let failed: Vec<FailedRecipient> = rcpts
        .iter()
        .map(|r| FailedRecipient {
            recipient: r.recipient.clone(),
            reason: BOUNCED.into(),
            remote_mta: None,
        })
        .collect();
    let idtext = id.to_string();
    let decision = bounce::decide(cfg, &env.sender);
    let original = Original {
        sender: &env.sender,
        arrival: env.arrival,
        id: &idtext,
        message: &message,
    };
    let extra = match bounce::build(cfg, &decision, original, &failed, now) {
        None => " bounce=dropped (double bounce)".to_string(),
        Some(b) => {
            let mut w = q.begin();
            if let Err(e) = w.write(&b.message).await {
                w.abort().await;
                return Err(MessageError::Bounce(e));
            }
            let new = w
                .commit(Envelope::new(b.sender.clone(), b.recipients.clone()))
                .await
                .map_err(MessageError::Bounce)?;
            log!(
                "{who} new msg {new} bytes={} from=<{}> rcpts={} origin=operator",
                b.message.len(),
                b.sender,
                b.recipients.len()
            );
            log!("{who} bounce msg {id} qp {new}");
            format!(" bounce={new}")
        }
    };
    let outs: Vec<(usize, RecipientOutcome)> = rcpts
        .iter()
        .map(|r| {
            (
                r.rcpt,
                RecipientOutcome::Failed {
                    reply: BOUNCED.into(),
                },
            )
        })
        .collect();
    q.record_outcomes(&id, &outs).await?;
    Ok(extra)
}

mod control;
pub use control::{
    apply_recorded_flushes, execute, serve_shard, ControlSocket, CtlError, CtlRequest,
};
