//! On-demand delivery: ETRN (RFC 1985) and ATRN / ODMR (RFC 2645).
//!
//! **Held domains.** Mail for a domain listed in `control/etrnhosts` is
//! accepted and queued as usual, but the delivery scheduler never attempts
//! it on its own: when such a recipient comes due, the shard owning its
//! queue *holds* it ([`queue_store::Queue::hold`]): it stays `Pending` on
//! disk (no attempt counted, no record written) and leaves the retry
//! schedule, in memory only. After a restart it comes due again and is held
//! again. This is IndiMail's autoturn Maildir (`/var/indimail/autoturn/<d>`)
//! without the extra copy: the queue itself keeps the mail until the node
//! asks for it. A domain removed from `etrnhosts` (reload) has its held mail
//! returned to the schedule at once.
//!
//! **ETRN** `domain`, `@domain` (the domain and its subdomains) or `#name`
//! (a queue name, here the domain) on the `smtp` and `smtps` services (not on
//! `submission`): the node must be listed in `etrnhosts`, else
//! `553 5.7.1 etrn service rejected`. Every shard is asked (by message over
//! its turn channel) to lease the held mail of the node
//! ([`queue_store::Queue::take_matching`], also mail deferred after an
//! earlier flush) and deliver it now by the usual route (`smtproutes`, else
//! MX), one message after another on one connection; the reply counts the
//! messages: `253 2.0.0 OK, <n> pending messages for node <d> started`, or
//! `251 2.0.0 OK, no messages waiting for node <d>`; `458 4.3.0` when no
//! shard could be asked.
//!
//! **ATRN** on the `odmr` service (port 366; `ODMR` set forces ODMR mode on
//! `smtp`/`smtps`): after AUTH, `ATRN [dom1,dom2]` checks that the
//! authenticated user may turn each domain (`control/atrnaccess` lines
//! `user@domain:dom1,dom2`, or the directory's `atrn_map` table, `vatrn`)
//! and that each is held (`etrnhosts`), else `553 5.7.1 atrn service
//! unavailable`. Every shard leases the domains' mail and counts it; with
//! none, `453 4.3.0 No message waiting`. Otherwise `250 OK now reversing the
//! connection`, and this host becomes the SMTP client on the same
//! connection: it waits for the node's 220, sends EHLO and one transaction
//! per message, handed over by the owning shards one at a time. Each
//! recipient's outcome goes back to the shard that owns the message, which
//! records it in its queue (delivered mail is never sent twice; temporary
//! failures stay held; permanent ones bounce), then QUIT. A second ATRN or
//! ETRN for the same domains meanwhile finds the mail leased: nothing
//! waiting.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use delivery::Outcome;
use smtp_proto::client::{ClientConfig, ClientError, ClientEvent, ClientSession, OutgoingMessage};
use smtp_proto::{EtrnNode, Reply};
use tls::MaybeTls;
use tokio::sync::{mpsc, oneshot};

use control::log;
use control::{ControlDir, ControlError, DomainList};

/// `etrnhosts` and `atrnaccess`, read with the other control files and
/// swapped whole on reload.
#[derive(Debug, Clone, Default)]
pub struct TurnConfig {
    /// `etrnhosts` lines, lower-cased, as written (`.domain` = subdomains).
    entries: Vec<String>,
    held: DomainList,
    /// `atrnaccess`: authenticated user (lower-cased) → domains.
    access: HashMap<String, Vec<String>>,
}

impl TurnConfig {
    /// Reads `etrnhosts` and `atrnaccess` (both optional).
    pub fn load(control: &ControlDir) -> Result<TurnConfig, Vec<ControlError>> {
        let mut errors = Vec::new();
        let entries: Vec<String> = match control.list("etrnhosts") {
            Ok(v) => v.into_iter().map(|l| l.to_ascii_lowercase()).collect(),
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
        };
        let mut access: HashMap<String, Vec<String>> = HashMap::new();
        match control.lines("atrnaccess") {
            Ok(lines) => {
                for (line, text) in lines.unwrap_or_default() {
                    let parsed = text.split_once(':').and_then(|(user, doms)| {
                        let user = user.trim().to_ascii_lowercase();
                        let doms: Vec<String> = doms
                            .split(',')
                            .map(|d| d.trim().to_ascii_lowercase())
                            .filter(|d| !d.is_empty())
                            .collect();
                        (!user.is_empty() && !doms.is_empty()).then_some((user, doms))
                    });
                    match parsed {
                        Some((user, doms)) => {
                            let v = access.entry(user).or_default();
                            for d in doms {
                                if !v.contains(&d) {
                                    v.push(d);
                                }
                            }
                        }
                        None => errors.push(ControlError {
                            path: control.file("atrnaccess"),
                            line: Some(line),
                            problem: format!("`{text}`: expected `user:domain[,domain...]`"),
                        }),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TurnConfig {
            held: DomainList::new(entries.clone()),
            entries,
            access,
        })
    }

    /// The `etrnhosts` lines (lower-cased).
    pub fn held_domains(&self) -> &[String] {
        &self.entries
    }

    /// Whether mail for `domain` is held for ETRN/ATRN (listed in `etrnhosts`).
    pub fn is_held(&self, domain: &str) -> bool {
        !self.entries.is_empty() && self.held.contains(domain)
    }

    /// Whether an ETRN for `node` is allowed, and for which recipients then.
    pub fn etrn_target(&self, node: &EtrnNode) -> Option<NodeMatch> {
        match node {
            EtrnNode::Domain(d) => self.is_held(d).then(|| NodeMatch::Domain(d.clone())),
            EtrnNode::Queue(q) => {
                let d = q.to_ascii_lowercase();
                self.is_held(&d).then_some(NodeMatch::Domain(d))
            }
            EtrnNode::Subdomains(d) => {
                let dot = format!(".{d}");
                let any = self.is_held(d)
                    || self.entries.iter().any(|e| {
                        let e = e.trim_start_matches('.');
                        e == d || e.ends_with(&dot)
                    });
                any.then(|| NodeMatch::Subdomains(d.clone()))
            }
        }
    }

    /// The domains `user` may turn according to `atrnaccess`.
    pub fn atrn_access(&self, user: &str) -> &[String] {
        self.access
            .get(&user.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }
}

/// Which recipients a turn request covers (held ones only, see
/// [`TurnConfig::is_held`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMatch {
    /// One domain.
    Domain(String),
    /// A domain and its subdomains (`ETRN @domain`).
    Subdomains(String),
    /// These domains (ATRN).
    Domains(Vec<String>),
}

impl NodeMatch {
    /// Whether a recipient in `domain` is covered.
    pub fn matches_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match self {
            NodeMatch::Domain(d) => domain == *d,
            NodeMatch::Subdomains(d) => {
                domain == *d
                    || domain
                        .strip_suffix(d.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            NodeMatch::Domains(v) => v.contains(&domain),
        }
    }

    /// The node as written in replies and logs.
    pub fn name(&self) -> String {
        match self {
            NodeMatch::Domain(d) => d.clone(),
            NodeMatch::Subdomains(d) => format!("@{d}"),
            NodeMatch::Domains(v) => v.join(","),
        }
    }
}

/// The domain of an address (after the last `@`).
pub fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

/// A request to the shard owning some queues (sent to every shard).
pub enum TurnRequest {
    /// ETRN: lease the covered held mail and deliver it now by the usual
    /// route; answer the number of messages.
    Flush {
        /// Which recipients.
        node: NodeMatch,
        /// The number of messages whose delivery started.
        reply: oneshot::Sender<usize>,
    },
    /// ATRN: lease the covered mail, answer the number of messages, then
    /// hand them over one at a time on `items`, each with a channel for the
    /// recipients' outcomes.
    Take {
        /// Which recipients.
        node: NodeMatch,
        /// The number of messages that will be handed over.
        count: oneshot::Sender<usize>,
        /// Where to hand them.
        items: mpsc::Sender<TurnItem>,
    },
}

/// One message handed to an ATRN session by the shard that owns it.
pub struct TurnItem {
    /// Envelope sender (empty = null sender).
    pub sender: String,
    /// The recipients to deliver to.
    pub recipients: Vec<String>,
    /// The message in queue form (LF line ends).
    pub body: Vec<u8>,
    /// One outcome per recipient, in order. Dropping it unanswered returns
    /// the recipients to the owner's queue untouched.
    pub done: oneshot::Sender<Vec<Outcome>>,
}

/// Every shard's turn channel (clone one into each shard).
#[derive(Clone)]
pub struct TurnHub {
    senders: Vec<shard::MeshSender<TurnRequest>>,
}

impl TurnHub {
    /// A hub over the mesh senders, by shard index.
    pub fn new(senders: Vec<shard::MeshSender<TurnRequest>>) -> TurnHub {
        TurnHub { senders }
    }
}

/// Answers an ETRN (see the module documentation).
pub async fn etrn(
    hub: Option<&TurnHub>,
    cfg: &TurnConfig,
    node: &EtrnNode,
    shard: usize,
    ip: IpAddr,
) -> Reply {
    let shown = match node {
        EtrnNode::Domain(d) => d.clone(),
        EtrnNode::Subdomains(d) => format!("@{d}"),
        EtrnNode::Queue(q) => format!("#{q}"),
    };
    let Some(target) = cfg.etrn_target(node) else {
        log!("shard{shard} etrn refused node={shown} ip={ip} reason=not in etrnhosts");
        return Reply::new(
            553,
            Some((5, 7, 1)),
            format!("etrn service rejected for {shown}"),
        );
    };
    let unable = || {
        Reply::new(
            458,
            Some((4, 3, 0)),
            format!("Unable to queue messages for node {shown}"),
        )
    };
    let Some(hub) = hub else {
        return unable();
    };
    let mut waiting = Vec::new();
    for s in &hub.senders {
        let (tx, rx) = oneshot::channel();
        let req = TurnRequest::Flush {
            node: target.clone(),
            reply: tx,
        };
        if s.send(req).await.is_ok() {
            waiting.push(rx);
        }
    }
    let mut answered = 0;
    let mut messages = 0;
    for rx in waiting {
        if let Ok(n) = rx.await {
            answered += 1;
            messages += n;
        }
    }
    log!(
        "shard{shard} etrn node={shown} ip={ip} messages={messages} shards={answered}/{}",
        hub.senders.len()
    );
    if answered == 0 {
        return unable();
    }
    if messages == 0 {
        return Reply::new(
            251,
            Some((2, 0, 0)),
            format!("OK, no messages waiting for node {shown}"),
        );
    }
    Reply::new(
        253,
        Some((2, 0, 0)),
        format!("OK, {messages} pending messages for node {shown} started"),
    )
}

/// An accepted ATRN: the mail to hand over once the connection is turned.
pub struct Turned {
    /// Messages from every shard, one at a time.
    items: mpsc::Receiver<TurnItem>,
    /// The domains turned.
    domains: Vec<String>,
    /// How many messages the shards announced.
    messages: usize,
    /// The authenticated user.
    user: String,
}

/// Checks an ATRN and leases the domains' mail (see the module
/// documentation). `Ok` means: reply 250 and call [`reverse`].
pub async fn atrn(
    hub: Option<&TurnHub>,
    cfg: &TurnConfig,
    directory: &crate::directory::DirectoryHandle,
    user: Option<&str>,
    requested: &[String],
    shard: usize,
    ip: IpAddr,
) -> Result<Turned, Reply> {
    let unavailable = |what: &str| {
        Reply::new(
            553,
            Some((5, 7, 1)),
            format!("atrn service unavailable{what}"),
        )
    };
    let later = || Reply::new(450, Some((4, 3, 0)), "Unable to process ATRN request now");
    // The session core only lets an authenticated client get here.
    let Some(user) = user else {
        return Err(Reply::new(530, Some((5, 7, 0)), "Authentication required"));
    };
    let mut permitted: Vec<String> = cfg.atrn_access(user).to_vec();
    match directory.get().await {
        Ok(dir) => match dir.atrn_domains(user).await {
            Ok(v) => permitted.extend(v),
            Err(e) => {
                log!("shard{shard} atrn tempfail user={user} ip={ip} reason={e}");
                return Err(later());
            }
        },
        // Without the directory, atrnaccess alone decides.
        Err(e) if !permitted.is_empty() => {
            log!("shard{shard} atrn directory unavailable user={user} reason={e}");
        }
        Err(e) => {
            log!("shard{shard} atrn tempfail user={user} ip={ip} reason={e}");
            return Err(later());
        }
    }
    let mut seen = std::collections::HashSet::new();
    permitted.retain(|d| seen.insert(d.clone()));
    let domains: Vec<String> = if requested.is_empty() {
        permitted
            .iter()
            .filter(|d| cfg.is_held(d))
            .cloned()
            .collect()
    } else {
        requested.to_vec()
    };
    if domains.is_empty() {
        log!("shard{shard} atrn refused user={user} ip={ip} reason=no domains to turn");
        return Err(unavailable(""));
    }
    for d in &domains {
        let why = if !permitted.contains(d) {
            "not permitted for this user"
        } else if !cfg.is_held(d) {
            "not in etrnhosts"
        } else {
            continue;
        };
        log!("shard{shard} atrn refused user={user} domain={d} ip={ip} reason={why}");
        return Err(unavailable(&format!(" for {d}")));
    }
    let Some(hub) = hub else {
        return Err(later());
    };
    let node = NodeMatch::Domains(domains.clone());
    let (items_tx, items) = mpsc::channel(1);
    let mut counts = Vec::new();
    for s in &hub.senders {
        let (tx, rx) = oneshot::channel();
        let req = TurnRequest::Take {
            node: node.clone(),
            count: tx,
            items: items_tx.clone(),
        };
        if s.send(req).await.is_ok() {
            counts.push(rx);
        }
    }
    drop(items_tx);
    let mut messages = 0;
    for rx in counts {
        messages += rx.await.unwrap_or(0);
    }
    log!(
        "shard{shard} atrn user={user} domains={} messages={messages} ip={ip}",
        domains.join(",")
    );
    if messages == 0 {
        return Err(Reply::new(453, Some((4, 3, 0)), "No message waiting"));
    }
    Ok(Turned {
        items,
        domains,
        messages,
        user: user.to_string(),
    })
}

/// Why the reverse session ended early.
#[derive(Debug, thiserror::Error)]
enum ReverseError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timeout")]
    Timeout,
    #[error("connection closed by the node")]
    Closed,
    #[error("{0}")]
    Protocol(#[from] ClientError),
}

/// Runs the reverse SMTP session after `250 OK now reversing the
/// connection` (RFC 2645 section 4.3): this host is the client on `io`;
/// `inbuf` holds what the node sent after the ATRN line (usually its 220
/// greeting). Delivers every message the shards hand over, returns each
/// recipient's outcome to its owner, then QUIT.
pub async fn reverse(
    io: &mut MaybeTls,
    inbuf: Vec<u8>,
    mut turned: Turned,
    helo: &str,
    timeout: Duration,
    shard: usize,
    peer: SocketAddr,
) {
    let mut current: Option<TurnItem> = None;
    let mut tally = Tally::default();
    let r = drive(
        io,
        inbuf,
        &mut turned,
        &mut current,
        &mut tally,
        helo,
        timeout,
        peer,
    )
    .await;
    if let Err(e) = &r {
        // The message in hand stays queued (temporary); the others were
        // never handed over and go back to their queues untouched.
        if let Some(item) = current.take() {
            let n = item.recipients.len();
            let why = format!("ATRN session with {} failed: {e} (#4.4.2)", peer.ip());
            tally.deferred += n;
            let _ = item.done.send(vec![Outcome::Temporary(why); n]);
        }
    }
    turned.items.close();
    log!(
        "shard{shard} atrn done user={} domains={} messages={} delivered={} deferred={} failed={} ip={}{}",
        turned.user,
        turned.domains.join(","),
        turned.messages,
        tally.delivered,
        tally.deferred,
        tally.failed,
        peer.ip(),
        match &r {
            Ok(()) => String::new(),
            Err(e) => format!(" error={e}"),
        }
    );
}

/// Recipients per outcome, for the closing log line.
#[derive(Default)]
struct Tally {
    delivered: usize,
    deferred: usize,
    failed: usize,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    io: &mut MaybeTls,
    mut inbuf: Vec<u8>,
    turned: &mut Turned,
    current: &mut Option<TurnItem>,
    tally: &mut Tally,
    helo: &str,
    timeout: Duration,
    peer: SocketAddr,
) -> Result<(), ReverseError> {
    let mut client = ClientSession::new(ClientConfig {
        // The node chose this connection (TLS or not) before ATRN.
        starttls: false,
        ..ClientConfig::new(helo)
    });
    loop {
        let (n, ev) = client.feed(&inbuf)?;
        inbuf.drain(..n);
        match ev {
            ClientEvent::NeedReply => {
                write_out(io, &mut client, timeout).await?;
                read_more(io, &mut inbuf, timeout).await?;
            }
            ClientEvent::Ready => match turned.items.recv().await {
                Some(item) => {
                    let msg = OutgoingMessage {
                        from: item.sender.clone(),
                        to: item.recipients.clone(),
                        size: Some(item.body.len() as u64),
                        eight_bit: !item.body.is_ascii(),
                        smtputf8: !item.sender.is_ascii()
                            || item.recipients.iter().any(|r| !r.is_ascii()),
                    };
                    match client.send_mail(msg) {
                        Ok(()) => *current = Some(item),
                        Err(e) => {
                            // Refused before anything was sent (size, SMTPUTF8,
                            // address syntax): the node cannot take it.
                            let o = refusal(&e, peer);
                            count(tally, &o, item.recipients.len());
                            let n = item.recipients.len();
                            let _ = item.done.send(vec![o; n]);
                        }
                    }
                }
                None => client.quit()?,
            },
            ClientEvent::SendData => {
                let Some(item) = current.as_ref() else {
                    return Err(ReverseError::Protocol(ClientError::WrongState(
                        "data without a message",
                    )));
                };
                write_out(io, &mut client, timeout).await?;
                let mut wire = Vec::with_capacity(item.body.len() + item.body.len() / 32 + 8);
                smtp_proto::dot_stuff(&item.body, &mut wire);
                write_all(io, wire, timeout).await?;
                client.data_sent()?;
            }
            ClientEvent::TransactionDone { per_rcpt, .. } => {
                if let Some(item) = current.take() {
                    let outcomes: Vec<Outcome> = per_rcpt
                        .iter()
                        .map(|r| {
                            let o = rcpt_outcome(&r.outcome, peer);
                            count(tally, &o, 1);
                            o
                        })
                        .collect();
                    let _ = item.done.send(outcomes);
                }
            }
            ClientEvent::StartTls => {
                return Err(ReverseError::Protocol(ClientError::WrongState(
                    "STARTTLS was not asked for",
                )))
            }
            ClientEvent::Closed => {
                write_out(io, &mut client, timeout).await?;
                let _ = io.shutdown().await;
                return Ok(());
            }
        }
    }
}

fn count(t: &mut Tally, o: &Outcome, n: usize) {
    match o {
        Outcome::Delivered(_) => t.delivered += n,
        Outcome::Temporary(_) => t.deferred += n,
        Outcome::Permanent(_) => t.failed += n,
    }
}

/// A reply as qmail-remote reports it: `code enhanced text`, lines joined.
fn reply_text(r: &Reply) -> String {
    r.to_string().trim_end().replace("\r\n", "\n")
}

fn rcpt_outcome(o: &smtp_proto::client::RcptOutcome, peer: SocketAddr) -> Outcome {
    use smtp_proto::client::RcptOutcome;
    let ip = peer.ip();
    match o {
        RcptOutcome::Delivered(r) => Outcome::Delivered(format!(
            "{ip} accepted message by ATRN.\nRemote host said: {}",
            reply_text(r)
        )),
        RcptOutcome::Deferred(r) => Outcome::Temporary(format!("{ip} said: {}", reply_text(r))),
        RcptOutcome::Failed(r) => Outcome::Permanent(format!("{ip} said: {}", reply_text(r))),
    }
}

fn refusal(e: &ClientError, peer: SocketAddr) -> Outcome {
    let ip = peer.ip();
    match e {
        ClientError::MessageTooBig { .. }
        | ClientError::SmtpUtf8NotOffered
        | ClientError::BadAddress(_) => Outcome::Permanent(format!("{ip}: {e} (#5.3.4)")),
        _ => Outcome::Temporary(format!("{ip}: {e} (#4.3.0)")),
    }
}

async fn write_out(
    io: &mut MaybeTls,
    client: &mut ClientSession,
    timeout: Duration,
) -> Result<(), ReverseError> {
    if client.output().is_empty() {
        return Ok(());
    }
    let bytes = client.output().to_vec();
    let n = bytes.len();
    write_all(io, bytes, timeout).await?;
    client.consume_output(n);
    Ok(())
}

async fn write_all(
    io: &mut MaybeTls,
    bytes: Vec<u8>,
    timeout: Duration,
) -> Result<(), ReverseError> {
    match tokio::time::timeout(timeout, io.write_all(bytes)).await {
        Err(_) => Err(ReverseError::Timeout),
        Ok((r, _)) => Ok(r?),
    }
}

async fn read_more(
    io: &mut MaybeTls,
    inbuf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ReverseError> {
    let mut buf = std::mem::take(inbuf);
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let (r, b) = match tokio::time::timeout(timeout, io.read(buf)).await {
        Err(_) => return Err(ReverseError::Timeout),
        Ok(x) => x,
    };
    *inbuf = b;
    match r {
        Ok(0) => Err(ReverseError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The next turn request, or `None` once the channel closes or the shard stops.
pub(crate) async fn next_request(
    rx: &mut shard::MeshReceiver<TurnRequest>,
    stop: &shard::Shutdown,
) -> Option<TurnRequest> {
    tokio::select! {
        _ = stop.wait() => None,
        r = rx.recv() => r,
    }
}

/// A shard without delivery (`INDIMAIL_NO_DELIVERY`) answers turn requests
/// with "nothing here".
pub async fn answer_idle(mut rx: shard::MeshReceiver<TurnRequest>, stop: shard::Shutdown) {
    while let Some(req) = next_request(&mut rx, &stop).await {
        match req {
            TurnRequest::Flush { reply, .. } => {
                let _ = reply.send(0);
            }
            TurnRequest::Take { count, .. } => {
                let _ = count.send(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(etrnhosts: &str, atrnaccess: &str) -> TurnConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etrnhosts"), etrnhosts).unwrap();
        std::fs::write(dir.path().join("atrnaccess"), atrnaccess).unwrap();
        TurnConfig::load(&ControlDir::new(dir.path())).unwrap()
    }

    #[test]
    fn etrnhosts_and_nodes() {
        let c = cfg(
            "# held domains\nNode.Example\n.sub.example\n",
            "ann@example.com:node.example, b.sub.example\n",
        );
        assert!(c.is_held("node.example"));
        assert!(c.is_held("a.sub.example"));
        assert!(!c.is_held("sub.example"));
        assert!(!c.is_held("other.example"));
        let d = |s: &str| EtrnNode::Domain(s.into());
        assert_eq!(
            c.etrn_target(&d("node.example")),
            Some(NodeMatch::Domain("node.example".into()))
        );
        assert_eq!(c.etrn_target(&d("other.example")), None);
        assert_eq!(
            c.etrn_target(&EtrnNode::Queue("NODE.example".into())),
            Some(NodeMatch::Domain("node.example".into()))
        );
        let sub = c
            .etrn_target(&EtrnNode::Subdomains("sub.example".into()))
            .unwrap();
        assert!(sub.matches_domain("x.sub.example"));
        assert!(sub.matches_domain("sub.example"));
        assert!(!sub.matches_domain("xsub.example"));
        assert!(c
            .etrn_target(&EtrnNode::Subdomains("example".into()))
            .is_some());
        assert!(c
            .etrn_target(&EtrnNode::Subdomains("other.example".into()))
            .is_none());
        assert_eq!(
            c.atrn_access("Ann@Example.com"),
            ["node.example".to_string(), "b.sub.example".to_string()]
        );
        assert!(c.atrn_access("bob@example.com").is_empty());
        assert!(NodeMatch::Domains(vec!["a.example".into()]).matches_domain("A.Example."));
    }

    #[test]
    fn bad_atrnaccess_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("atrnaccess"), "ok@x.y:a.example\nbroken\n").unwrap();
        let e = TurnConfig::load(&ControlDir::new(dir.path())).unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().contains("atrnaccess:2"), "{}", e[0]);
        // Nothing configured: nothing held.
        let empty = TurnConfig::load(&ControlDir::new(tempfile::tempdir().unwrap().path()));
        assert!(!empty.unwrap().is_held("x.example"));
    }
}
