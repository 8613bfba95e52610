//! The end of DATA: the message is committed to its queue (or refused, blackholed
//! or routed to another shard's queue) and the one reply for a storing failure.

use smtp_proto::{Decision, Reply};

use control::log;
use scheduler::domainqueue::{Spool, Stored};
use scheduler::metrics::Counter;

use super::{parse_enhanced, Connection};

impl Connection {
    /// The end of DATA: the message plugins, the end of the header rules, the checks
    /// that need the whole message, then the commit, answered once.
    pub(super) async fn commit(&mut self) {
        if self.txn.nullqueue && self.spool.is_none() {
            log!(
                "shard{} blackholed msg from=<{}> ip={} (nothing stored)",
                self.shard.index,
                self.txn.sender,
                self.peer.ip()
            );
            self.session.message_committed(Ok("blackholed".into()));
            return;
        }
        if let Some(r) = self.release_held().await {
            if let Some(w) = self.spool.take() {
                w.abort().await;
            }
            self.session.message_committed(Err(r));
            return;
        }
        let Some(mut w) = self.spool.take() else {
            let r = Reply::new(451, Some((4, 3, 0)), "internal error: no spool for message");
            self.session.message_committed(Err(r));
            return;
        };
        let found = self.finish_headers(&mut w).await;
        if let Some(answer) = self.refusal_at_end() {
            w.abort().await;
            self.session.message_committed(answer);
            return;
        }
        let (envelope, sender) = self.queue_envelope(found.env);
        self.store(w, envelope, &sender, &found.logged).await;
    }

    /// Writes what the header rules still hold (and a CR left at the very end of the
    /// data, not followed by LF); their findings (envheaders, logheaders).
    async fn finish_headers(&mut self, w: &mut Spool) -> msgproc::headers::HeaderFindings {
        let tail: &[u8] = if std::mem::take(&mut self.pending_cr) {
            b"\r"
        } else {
            b""
        };
        let mut found = None;
        let mut out = std::mem::take(&mut self.txn.header_out);
        out.clear();
        match self.txn.headers.as_mut() {
            Some(h) => {
                h.feed(tail, &mut out);
                found = Some(h.finish(&mut out));
            }
            None => out.extend_from_slice(tail),
        }
        if !out.is_empty() && self.spool_failed.is_none() {
            if let Err(e) = w.write(&out).await {
                self.spool_failed = Some(SpoolFailure::Queue(e));
            }
        }
        found.unwrap_or_default()
    }

    /// What the client is told instead of a commit, when the whole message says no: a
    /// storing failure, a mail loop, bodycheck, or a blackhole ("ok", nothing stored).
    fn refusal_at_end(&mut self) -> Option<Result<String, Reply>> {
        if let Some(failure) = self.spool_failed.take() {
            match &failure {
                SpoolFailure::OverSenderLimit => log!(
                    "shard{} message too big for sender <{}> (envrules DATABYTES)",
                    self.shard.index,
                    self.txn.sender
                ),
                SpoolFailure::Queue(e) => log!(
                    "shard{} smtp spool failed ip={} reason={e}",
                    self.shard.index,
                    self.peer.ip()
                ),
            }
            return Some(Err(failure.reply()));
        }
        if self.txn.hops.looping() {
            log!(
                "shard{} refused looping msg from=<{}> ip={} hops={}",
                self.shard.index,
                self.txn.sender,
                self.peer.ip(),
                self.txn.hops.hops()
            );
            let r = Reply::new(
                554,
                Some((5, 4, 6)),
                "too many hops, this message is looping",
            );
            return Some(Err(r));
        }
        if let Some(mut scanner) = self.txn.scanner.take() {
            let mut txn = std::mem::take(&mut self.txn);
            let d = self.verdict(scanner.finish(), &mut txn, "message body");
            self.txn = txn;
            if let Decision::Reject(r) = d {
                return Some(Err(r));
            }
        }
        if self.txn.nullqueue {
            log!(
                "shard{} blackholed msg from=<{}> ip={}",
                self.shard.index,
                self.txn.sender,
                self.peer.ip()
            );
            return Some(Ok("blackholed".into()));
        }
        None
    }

    /// The envelope as queued (quarantine and extraqueue applied, envheaders carried
    /// along) and its sender.
    fn queue_envelope(
        &self,
        env_headers: Vec<(String, String)>,
    ) -> (queue_store::Envelope, String) {
        let env = self.session.envelope();
        let sender = env
            .reverse_path
            .as_ref()
            .map_or(String::new(), |p| p.to_string());
        let recipients = self.queue_recipients();
        let helo = env.helo.clone().unwrap_or_default();
        // quarantine replaces the recipients, extraqueue adds some.
        let (recipients, _) = self
            .settings
            .msgproc
            .recipients(self.txn.quarantine.as_deref(), recipients);
        let mut envelope = queue_store::Envelope::new(sender.clone(), recipients);
        envelope.client_ip = Some(self.peer.ip());
        envelope.helo = helo;
        envelope.auth_user = self.auth_user.clone();
        // envheaders travel with the envelope; delivery exports them.
        envelope.extra.extend(env_headers.iter().map(|(k, v)| {
            (
                msgproc::headers::ENVELOPE_KEY.to_string(),
                format!("{k}={v}"),
            )
        }));
        (envelope, sender)
    }

    /// Commits the message and answers: 250 with its id once it is durable, else the
    /// queue's own reply for the failure.
    async fn store(
        &mut self,
        w: Spool,
        envelope: queue_store::Envelope,
        sender: &str,
        logged: &[String],
    ) {
        let rcpt_count = envelope.recipients.len();
        match w.commit(envelope, logged).await {
            Ok(Stored::Routed { queue, name }) => {
                // The importing shard logs `new msg` and the headers.
                self.shard.queues.wake_owner(queue);
                self.shard.metrics.inc(Counter::Accepted);
                log!(
                    "shard{} routed msg to queue{queue} drop={name} bytes={} from=<{sender}> rcpts={rcpt_count} ip={} (domainqueue)",
                    self.shard.index,
                    self.message_bytes,
                    self.peer.ip()
                );
                self.session
                    .message_committed(Ok(format!("queue{queue} {name}")));
            }
            Ok(Stored::Queued(id)) => {
                self.shard.metrics.inc(Counter::Accepted);
                log!(
                    "shard{} new msg {id} bytes={} from=<{sender}> rcpts={} ip={}",
                    self.shard.index,
                    self.message_bytes,
                    rcpt_count,
                    self.peer.ip()
                );
                if !logged.is_empty() {
                    log!(
                        "shard{} headers msg {id} {}",
                        self.shard.index,
                        logged.join(" | ").replace(['\n', '\r'], " ")
                    );
                }
                self.session.message_committed(Ok(id.to_string()));
            }
            Err(e) => {
                log!(
                    "shard{} smtp commit failed ip={} reason={e}",
                    self.shard.index,
                    self.peer.ip()
                );
                self.session
                    .message_committed(Err(SpoolFailure::Queue(e).reply()));
            }
        }
    }
}

/// Why a message could not be stored; answered at the end of DATA.
#[derive(Debug, thiserror::Error)]
pub(super) enum SpoolFailure {
    /// Over the DATABYTES an envrules line set for this sender.
    #[error("message too big for the sender's databytes (envrules)")]
    OverSenderLimit,
    /// The queue refused (full disk, failed flush, sealed segment, an
    /// envelope too large...): its own reply class says temporary or not.
    #[error(transparent)]
    Queue(#[from] queue_store::QueueError),
}

impl SpoolFailure {
    /// The one place a storing failure becomes an SMTP reply.
    pub(super) fn reply(&self) -> Reply {
        match self {
            SpoolFailure::OverSenderLimit => Reply::new(
                552,
                Some((5, 3, 4)),
                "sorry, that message size exceeds my databytes limit",
            ),
            SpoolFailure::Queue(e) => {
                let (code, enhanced) = e.smtp_reply();
                let text = match code {
                    452 => "insufficient system storage, message not queued; try later",
                    451 => "local error in processing, message not queued; try later",
                    552 => "envelope too large for the queue",
                    _ => "message not queued",
                };
                Reply::new(code, parse_enhanced(enhanced), text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SpoolFailure;
    use queue_store::QueueError;

    #[test]
    fn storing_failures_keep_their_reply_class() {
        let r = SpoolFailure::Queue(QueueError::EnvelopeTooLarge).reply();
        assert_eq!(
            (r.code(), r.to_string().contains("5.3.4")),
            (552, true),
            "{r}"
        );
        let r = SpoolFailure::Queue(QueueError::NoRecipients).reply();
        assert_eq!(r.code(), 554);
        let r = SpoolFailure::OverSenderLimit.reply();
        assert_eq!(r.code(), 552);
        let io = QueueError::Corrupt {
            path: "seg".into(),
            offset: 0,
            reason: "torn",
        };
        assert_eq!(SpoolFailure::Queue(io).reply().code() / 100, 4);
    }
}
