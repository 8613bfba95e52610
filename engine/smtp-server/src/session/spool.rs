//! Spooling a message as it streams in: the trace headers, header rules, the
//! message plugins on a held message, and CRLF to queue form.

use smtp_proto::Reply;

use control::log;

use super::commit::SpoolFailure;
use super::txn::env_text;
use super::Connection;

impl Connection {
    /// The envelope recipients as queued: the bare `<postmaster>` of
    /// RFC 5321 4.1.1.3 becomes `postmaster@me`, so it is delivered here
    /// and never taken for a remote address.
    pub(super) fn queue_recipients(&self) -> Vec<String> {
        self.session
            .envelope()
            .recipients
            .iter()
            .map(|r| match &r.path {
                smtp_proto::ForwardPath::Postmaster => format!("postmaster@{}", self.settings.me),
                p => p.to_string(),
            })
            .collect()
    }

    pub(super) async fn begin_message(&mut self) {
        if let Some(w) = self.spool.take() {
            w.abort().await;
        }
        self.spool_failed = None;
        self.message_bytes = 0;
        self.pending_cr = false;
        self.txn.hops = smtp_proto::HopCounter::new();
        self.txn.scanner = self.settings.policy.body_scanner();
        if self.relay || self.txn.relay || self.auth_user.is_some() {
            // auth.envrules (AUTHRULES), at DATA for relay and
            // authenticated clients (spec 2.6).
            let env = self.settings.policy.auth_env();
            if !env.is_empty() {
                self.txn.apply_env(&env);
                log!(
                    "shard{} auth.envrules user={} set={}",
                    self.shard.index,
                    self.auth_user.as_deref().unwrap_or("-"),
                    env_text(&env)
                );
            }
        }
        let rules = std::sync::Arc::clone(&self.settings.msgproc);
        if self.txn.nullqueue || rules.nullqueue {
            // NULLQUEUE / blackholed at MAIL or RCPT: the client is told
            // "ok" and nothing touches the disk (spec 1.11).
            self.txn.nullqueue = true;
            return;
        }
        self.txn.headers = (!rules.headers.is_empty())
            .then(|| msgproc::HeaderProcessor::new(std::sync::Arc::clone(&rules.headers)));
        let dq = &self.settings.domain_queues;
        let target = dq.target(&self.txn.queue_env, self.shard.index);
        let mut w = scheduler::domainqueue::Spool::begin(&self.shard.queues, target);
        let mut received = self.txn.spf_header.clone().unwrap_or_default();
        received.push_str(&self.received_header());
        let rcpts = self.queue_recipients();
        if let (_, Some(q)) = rules.recipients(self.txn.quarantine.as_deref(), rcpts) {
            received.push_str(&q);
        }
        if crate::plugins::any(&rules) {
            // Message plugins: hold the message until its end, when the
            // headers they make (`Authentication-Results:`, `X-QHPSI:`)
            // go first.
            self.txn.held = Some(Vec::new());
            self.txn.held_prefix = received;
            self.spool = Some(w);
            return;
        }
        if let Err(e) = w.write(received.as_bytes()).await {
            self.spool_failed = Some(SpoolFailure::Queue(e));
        }
        self.spool = Some(w);
    }

    pub(super) async fn spool_data(&mut self, chunk: &[u8]) {
        self.message_bytes += chunk.len() as u64;
        self.txn.hops.feed(chunk);
        if let Some(s) = self.txn.scanner.as_mut() {
            s.feed(chunk);
        }
        if self.spool_failed.is_some() {
            return;
        }
        if self
            .txn
            .databytes
            .is_some_and(|max| max > 0 && self.message_bytes > max)
        {
            // An envrules DATABYTES for this sender: stop storing; the
            // commit answers 552.
            self.spool_failed = Some(SpoolFailure::OverSenderLimit);
            return;
        }
        if let Some(held) = self.txn.held.as_mut() {
            held.extend_from_slice(chunk);
            return;
        }
        self.spool_write(chunk).await;
    }

    /// Writes a piece of the message (SMTP form) to the spool, through the
    /// header rules.
    pub(super) async fn spool_write(&mut self, chunk: &[u8]) {
        if self.spool_failed.is_some() {
            return;
        }
        if let Some(w) = self.spool.as_mut() {
            self.scratch.clear();
            to_queue_form(chunk, &mut self.pending_cr, &mut self.scratch);
            let data = match self.txn.headers.as_mut() {
                Some(h) if !h.in_body() => {
                    self.txn.header_out.clear();
                    h.feed(&self.scratch, &mut self.txn.header_out);
                    &self.txn.header_out
                }
                _ => &self.scratch,
            };
            if let Err(e) = w.write(data).await {
                self.spool_failed = Some(SpoolFailure::Queue(e));
            }
        }
    }

    /// The message plugins (`crate::plugins`: DKIM verification, clamd,
    /// spam filter, external filter) on the held message; then its header
    /// lines, the trace lines and the (possibly replaced) message go to
    /// the spool. A refusal is returned. The message is held in memory
    /// because the checks need all of it and the headers they yield go
    /// first: up to `databytes` per message being received, on top of
    /// what the spool buffers.
    pub(super) async fn release_held(&mut self) -> Option<Reply> {
        let mut held = self.txn.held.take()?;
        if self.spool_failed.is_some() {
            return None;
        }
        let rules = std::sync::Arc::clone(&self.settings.msgproc);
        let recipients = self.queue_recipients();
        let spf = self.txn.spf_result.clone();
        let max_output = match self.txn.databytes.filter(|d| *d > 0) {
            Some(d) => d as usize + 64 * 1024,
            None => held.len().saturating_mul(4).max(1 << 20),
        };
        let mut prefix = String::new();
        for plugin in crate::plugins::builtins(&rules) {
            let cx = crate::plugins::Context {
                shard: self.shard.index,
                me: &self.settings.me,
                dns: &self.shard.dns,
                sender: &self.txn.sender,
                recipients: &recipients,
                ip: self.peer.ip(),
                relay: self.relay || self.txn.relay || self.auth_user.is_some(),
                spf: spf.as_ref().map(|(r, f)| (r.as_str(), f.as_str())),
                max_output,
            };
            match plugin.check(&cx, &held).await {
                crate::plugins::Verdict::Pass { header, message } => {
                    prefix.push_str(&header);
                    if let Some(m) = message {
                        held = m;
                    }
                }
                crate::plugins::Verdict::Reject(r) => {
                    log!(
                        "shard{} {} refused msg from=<{}> ip={}",
                        self.shard.index,
                        plugin.name(),
                        self.txn.sender,
                        self.peer.ip()
                    );
                    return Some(r);
                }
                crate::plugins::Verdict::Discard => {
                    // Blackholed: nothing more is written.
                    self.txn.nullqueue = true;
                    return None;
                }
                crate::plugins::Verdict::Quarantine { address, header } => {
                    prefix.push_str(&header);
                    // The X-Quarantine-ID line written at DATA (if a
                    // quarantine was already in force) names the old
                    // address; this one is the one in force.
                    if let (_, Some(q)) = rules.recipients(Some(&address), recipients.clone()) {
                        prefix.push_str(&q);
                    }
                    self.txn.quarantine = Some(address);
                }
            }
        }
        prefix.push_str(&std::mem::take(&mut self.txn.held_prefix));
        if let Some(w) = self.spool.as_mut() {
            if let Err(e) = w.write(prefix.as_bytes()).await {
                self.spool_failed = Some(SpoolFailure::Queue(e));
            }
        }
        for piece in held.chunks(64 * 1024) {
            self.spool_write(piece).await;
        }
        None
    }

    pub(super) fn received_header(&self) -> String {
        use std::fmt::Write as _;
        let env = self.session.envelope();
        let helo = env.helo.as_deref().unwrap_or("unknown");
        // Built piece by piece: this runs for every message, and format!
        // with its date cost more than the rest of the commit's parsing.
        let mut h = String::with_capacity(192);
        h.push_str("Received: from ");
        h.push_str(helo);
        h.push_str(" ([");
        let _ = write!(h, "{}", self.peer.ip());
        h.push_str("])");
        if let Some(u) = &self.auth_user {
            h.push_str(" (AUTH: ");
            h.push_str(u);
            h.push(')');
        }
        h.push_str(" by ");
        h.push_str(&self.settings.me);
        h.push_str(" (indimail-rs) with ");
        h.push_str(self.session.protocol());
        if let [one] = env.recipients.as_slice() {
            let _ = write!(h, "\n\tfor <{}>", one.path);
        }
        h.push_str(";\n\t");
        delivery::bounce::push_rfc5322_date_now(&mut h);
        h.push('\n');
        h
    }
}

/// Converts message bytes from SMTP form (CRLF line ends) to queue form
/// (LF, as qmail stores messages and Maildir readers expect). A CR is
/// dropped only when an LF follows it, also across chunk boundaries
/// (`pending_cr`); any other CR (possible in BDAT data) is kept.
pub(super) fn to_queue_form(chunk: &[u8], pending_cr: &mut bool, out: &mut Vec<u8>) {
    if chunk.is_empty() {
        return;
    }
    out.reserve(chunk.len() + 1);
    let mut rest = chunk;
    if std::mem::take(pending_cr) && rest.first() != Some(&b'\n') {
        out.push(b'\r');
    }
    while let Some(p) = memchr::memchr(b'\r', rest) {
        out.extend_from_slice(&rest[..p]);
        match rest.get(p + 1) {
            Some(b'\n') => {}
            Some(_) => out.push(b'\r'),
            None => *pending_cr = true,
        }
        rest = &rest[p + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::to_queue_form;

    #[test]
    fn crlf_to_lf_across_every_split() {
        let input = b"a\r\nb\rc\r\n\r\nend\r";
        let want = b"a\nb\rc\n\nend";
        for split in 0..=input.len() {
            let (mut cr, mut out) = (false, Vec::new());
            to_queue_form(&input[..split], &mut cr, &mut out);
            to_queue_form(&input[split..], &mut cr, &mut out);
            assert!(cr, "trailing CR pending at split {split}");
            assert_eq!(out, want, "split {split}");
        }
    }
}
