//! Remote delivery dispatch: one SMTP job per message and destination domain.

use std::rc::Rc;

use delivery::remote::RemoteJob;
use delivery::schedule::Channel;
use delivery::Outcome;
use queue_store::{DueRecipient, MessageId, Queue};

use control::log;

use super::outcomes::log_outcome;
use super::DeliveryShard;

impl DeliveryShard {
    pub(super) async fn remote_job(
        &self,
        q: &Rc<Queue>,
        id: MessageId,
        domain: String,
        route: Option<delivery::routes::Route>,
        rcpts: Vec<DueRecipient>,
        permit: Option<delivery::schedule::Permit>,
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
        // The transaction is over: its slot is free while the outcomes are
        // recorded (the recipients stay leased until then).
        if let Some(permit) = permit {
            drop(permit);
            self.slot_freed.notify_one();
        }
        self.finish(q, id, outs, Channel::Remote).await;
    }

    /// The message body; when the queue cannot give it, every recipient of
    /// the job is deferred and `None` returned.
    pub(super) async fn read_or_defer(
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
}
