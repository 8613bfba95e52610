//! ETRN/ATRN on the delivery side: releasing held mail when `etrnhosts` changes,
//! and handing a turned domain's held mail to the SMTP session that asked for it.

use std::collections::BTreeMap;
use std::rc::Rc;

use delivery::schedule::Channel;
use delivery::Outcome;
use queue_store::{DueRecipient, MessageId, Queue};

use control::log;

use super::outcomes::log_outcome;
use super::{domain_of, DeliveryShard};

impl DeliveryShard {
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
        while let Some(req) = crate::turn::next_request(&mut rx, &stop).await {
            match req {
                TurnRequest::Flush { node, reply } => {
                    let n = self.flush(&node);
                    let _ = reply.send(n);
                }
                TurnRequest::Take { node, count, items } => {
                    let me = Rc::clone(&self);
                    tokio::task::spawn_local(me.hand_over(node, count, items));
                }
            }
        }
    }

    /// Leases the held mail `node` covers in every queue of this shard,
    /// grouped by message (oldest first).
    pub(super) fn take_held(
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
    pub(super) fn flush(self: &Rc<Self>, node: &crate::turn::NodeMatch) -> usize {
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
                        me.remote_job(&q, id, domain, None, rcpts, None).await;
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
    pub(super) async fn hand_over(
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
}
