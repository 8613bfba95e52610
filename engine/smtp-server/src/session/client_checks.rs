//! The client checks around the greeting and each RCPT (see `crate::clientchecks`):
//! greetdelay, early talkers, REQPTR and badhost, tarpitting and the penalty.

use std::rc::Rc;

use smtp_proto::Decision;

use control::log;

use super::Connection;

impl Connection {
    /// The checks before the greeting (see [`crate::clientchecks`]):
    /// `greetdelay` (with the client's name looked up meanwhile when `REQPTR`
    /// or `badhost` need it), then early talkers, REQPTR and badhost. `false`
    /// when the client was refused (answered; the caller closes).
    pub(super) async fn before_greeting(&mut self) -> bool {
        let ip = self.peer.ip();
        let lookup = self.checks.wants_client_name(&self.settings.policy);
        let delay = self.checks.greeting();
        let shard = Rc::clone(&self.shard);
        let (name, ()) = tokio::join!(
            async move {
                match lookup {
                    true => Some(shard.dns.client_name(ip).await),
                    false => None,
                }
            },
            async {
                if let Some((d, _)) = delay {
                    tokio::time::sleep(d).await;
                }
            }
        );
        let me = self.settings.me.clone();
        let early = matches!(delay, Some((_, true)))
            && !self.session.is_tls()
            && self.io().tcp().has_unread_input();
        let refusal = if early {
            Some((
                crate::clientchecks::ClientChecks::early_talker(&me),
                "GREETDELAY".to_string(),
            ))
        } else {
            name.and_then(|n| {
                self.checks
                    .judge_client_name(&self.settings.policy, &n, &me)
            })
        };
        let Some((reply, rule)) = refusal else {
            // The client's clock starts at the greeting, not at connect.
            self.waiting_since = tokio::time::Instant::now();
            return true;
        };
        log!(
            "shard{} smtp refused ip={ip} rule={rule} code={}",
            self.shard.index,
            reply.code()
        );
        let _ = self.io().write_all(reply.to_wire()).await;
        let _ = self.io().shutdown().await;
        false
    }

    /// Tarpitting before an accepted RCPT's answer, the penalty after a
    /// refused one (see [`crate::clientchecks`]).
    pub(super) async fn slow_down_rcpt(&self, d: &Decision) {
        let wait = match d {
            Decision::Accept => self
                .checks
                .tarpit(self.session.envelope().recipients.len() + 1),
            Decision::Reject(r) if r.code() >= 500 => {
                Some(self.checks.penalty).filter(|p| !p.is_zero())
            }
            Decision::Reject(_) => None,
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}
