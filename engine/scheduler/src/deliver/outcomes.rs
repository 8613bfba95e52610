//! Outcomes of a delivery: the lifetime applied, permanent failures bounced
//! (committed before the failure is recorded), each recipient's result recorded.

use std::rc::Rc;

use delivery::bounce::{self, FailedRecipient, Original};
use delivery::schedule::Channel;
use delivery::Outcome;
use queue_store::{DueRecipient, MessageId, Queue, QueueError, RecipientOutcome};

use control::log;

use super::{unix_now, DeliveryShard};

impl DeliveryShard {
    /// Applies the lifetime, bounces permanent failures, records outcomes.
    pub(super) async fn finish(
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

    pub(super) async fn bounce(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        sender: &str,
        arrival: u64,
        failed: &[FailedRecipient],
    ) -> Result<(), QueueError> {
        let decision = bounce::decide(&self.settings().bounce, sender);
        let message = q.read_message(&id).await?;
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
    pub(super) async fn inject(
        &self,
        sender: &str,
        recipients: Vec<String>,
        body: Vec<u8>,
    ) -> Result<MessageId, QueueError> {
        let mut w = self.queues.begin();
        if let Err(e) = w.write(&body).await {
            w.abort().await;
            return Err(e);
        }
        let env = queue_store::Envelope::new(sender.to_string(), recipients);
        let n = env.recipients.len();
        let id = w.commit(env).await?;
        log!(
            "shard{} new msg {id} bytes={} from=<{sender}> rcpts={n} origin=delivery",
            self.index,
            body.len()
        );
        Ok(id)
    }
}

pub(super) fn log_outcome(shard: usize, d: u64, o: &Outcome) {
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
