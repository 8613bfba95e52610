//! The MAIL and RCPT decision pipeline: DNSBL, rates and SPF at MAIL, the access
//! policy (badmailfrom, envrules, ...), rcpthosts or relaying, domainqueue and
//! greylisting at RCPT.

use std::net::IpAddr;
use std::time::SystemTime;

use smtp_proto::{Decision, Reply};

use crate::greylisting::Greylisting;
use crate::service::Service;
use control::log;

use super::txn::{env_text, Dnsbl, Txn};
use super::Connection;

impl Connection {
    /// The MAIL checks that ask DNS or count: the client's DNSBL listing
    /// (not for authenticated users), the message rate, then SPF
    /// (`spfbehavior`; not for relay clients or authenticated users), which
    /// also prepares the `Received-SPF:` header.
    pub(super) async fn mail_dns_and_rate(&mut self, sender: &str) -> Decision {
        if let Dnsbl::Pending(task) = &mut self.dnsbl {
            let listed = task.await.ok().flatten();
            self.dnsbl = Dnsbl::Done(listed);
        }
        let mut txn = std::mem::take(&mut self.txn);
        let d = self.mail_dns_checks(sender, &mut txn).await;
        self.txn = txn;
        d
    }

    pub(super) async fn mail_dns_checks(&mut self, sender: &str, txn: &mut Txn) -> Decision {
        if self.auth_user.is_none() {
            if let Dnsbl::Done(Some(v)) = &self.dnsbl {
                return self.verdict(v.clone(), txn, sender);
            }
        }
        if let d @ Decision::Reject(_) = self.rate_check(true).await {
            return d;
        }
        let spf = self.settings.spf;
        if !spf.enabled() || self.relay || txn.relay || self.auth_user.is_some() {
            return Decision::Accept;
        }
        let (ip, helo) = self.policy_conn();
        let found = self
            .shard
            .dns
            .spf(
                ip,
                &helo,
                sender,
                &self.settings.me,
                &self.settings.spf_local,
            )
            .await;
        log!(
            "shard{} spf ip={ip} sender=<{sender}> domain={} result={}",
            self.shard.index,
            found.domain,
            found.result
        );
        txn.spf_result = Some((found.result.to_string(), sender.to_string()));
        txn.spf_header = Some(policy::spf::received_spf(
            found.result,
            &self.settings.me,
            ip,
            sender,
            &helo,
        ));
        let v = spf.verdict(found.result, &found.domain, found.explanation.as_deref());
        self.verdict(v, txn, sender)
    }

    /// One message (at MAIL) or one recipient (at RCPT) against the rate
    /// limits: the authenticated user's, else the client address's.
    pub(super) async fn rate_check(&self, message: bool) -> Decision {
        let ip = self.peer.ip();
        let user = self.auth_user.as_deref();
        let d = match user {
            Some(u) => {
                let router = self.shard.user_rates.borrow().clone();
                crate::userrates::check_user(router.as_deref(), &self.shard.rates, u, message).await
            }
            None => {
                let now = std::time::Instant::now();
                let mut rates = self.shard.rates.borrow_mut();
                if message {
                    rates.check_message(ip, None, now)
                } else {
                    rates.check_rcpt(ip, None, now)
                }
            }
        };
        match d.verdict() {
            policy::Verdict::Reject {
                code,
                enhanced,
                text,
                ..
            } => {
                log!(
                    "shard{} rate limited ip={ip} user={} what={}",
                    self.shard.index,
                    user.unwrap_or("-"),
                    if message { "message" } else { "rcpt" }
                );
                Decision::Reject(Reply::new(code, Some(enhanced), text))
            }
            _ => Decision::Accept,
        }
    }

    /// Submission's anti-spoofing (IndiMail's CHECKSENDER/MASQUERADE): an
    /// authenticated client may only use its own address as the envelope
    /// sender, unless `MASQUERADE` is set (to anything).
    pub(super) fn mail_decision(&self, sender: &str) -> Decision {
        if self.service != Service::Submission || self.settings.masquerade {
            return Decision::Accept;
        }
        match &self.auth_user {
            Some(user) if !sender.is_empty() && !sender.eq_ignore_ascii_case(user) => {
                log!(
                    "shard{} submission sender refused user={user} sender=<{sender}>",
                    self.shard.index
                );
                Decision::Reject(Reply::new(
                    553,
                    Some((5, 7, 1)),
                    "sender address does not match the authenticated user",
                ))
            }
            _ => Decision::Accept,
        }
    }

    pub(super) fn policy_conn(&self) -> (IpAddr, String) {
        let helo = self.session.envelope().helo.clone().unwrap_or_default();
        (self.peer.ip(), helo)
    }

    /// MAIL-time access controls (spec 2.4): from.envrules, hostaccess,
    /// blackholedsender, badmailfrom, relaymailfrom. Starts a new
    /// transaction's state.
    pub(super) fn mail_policy(&mut self, sender: &str) -> Decision {
        let (ip, helo) = self.policy_conn();
        let conn = policy::Conn {
            ip,
            relay_client: self.relay,
            authenticated: self.auth_user.as_deref(),
            helo: &helo,
        };
        // badhelo: the protocol core answers HELO itself, so the HELO name
        // is judged at the first MAIL after it (same reply class).
        if !self.relay {
            if let policy::Verdict::Reject {
                code,
                enhanced,
                text,
                rule,
            } = self.settings.policy.check_helo(&helo)
            {
                log!(
                    "shard{} policy refused helo <{helo}> ip={ip} reply={code} rule={rule}",
                    self.shard.index
                );
                return Decision::Reject(Reply::new(code, Some(enhanced), text));
            }
        }
        let v = self.settings.policy.check_mail(&conn, sender);
        let mut txn = Txn {
            sender: sender.to_string(),
            relay: v.relay,
            ..Txn::default()
        };
        if !v.env.is_empty() {
            txn.apply_env(&v.env);
            log!(
                "shard{} envrules sender=<{sender}> set={}",
                self.shard.index,
                env_text(&v.env)
            );
        }
        let d = self.verdict(v.verdict, &mut txn, sender);
        self.txn = txn;
        d
    }

    /// RCPT-time access controls (spec 2.5): relay probes, goodrcptto,
    /// badrcptto, accesslist, blackholedrcpt.
    pub(super) fn rcpt_policy(&mut self, rcpt: &str) -> Decision {
        let (ip, helo) = self.policy_conn();
        let conn = policy::Conn {
            ip,
            relay_client: self.relay || self.txn.relay,
            authenticated: self.auth_user.as_deref(),
            helo: &helo,
        };
        let sender = self.txn.sender.clone();
        let v = self.settings.policy.check_rcpt(&conn, &sender, rcpt);
        let mut txn = std::mem::take(&mut self.txn);
        let d = self.verdict(v, &mut txn, rcpt);
        self.txn = txn;
        d
    }

    /// `domainqueue`: an accepted recipient's line joins the message's
    /// assignments; DATABYTES, NULLQUEUE and QUARANTINE act as from
    /// envrules (see [`scheduler::domainqueue::txn_vars`]).
    pub(super) fn domain_queue(&mut self, rcpt: &str) {
        let env = self.settings.policy.domain_queue_env(rcpt);
        if env.is_empty() {
            return;
        }
        policy::merge_env(&mut self.txn.queue_env, &env);
        self.txn.apply_env(&scheduler::domainqueue::txn_vars(&env));
        log!(
            "shard{} domainqueue rcpt=<{rcpt}> set={}",
            self.shard.index,
            env_text(&env)
        );
    }

    /// Greylisting for clients that are neither relay clients nor
    /// authenticated (see [`Greylisting`]).
    pub(super) async fn greylist(&mut self, rcpt: &str) -> Decision {
        if self.relay || self.txn.relay || self.auth_user.is_some() {
            return Decision::Accept;
        }
        let ip = self.peer.ip();
        let sender = self.txn.sender.clone();
        let server = match &mut *self.shard.greylisting.borrow_mut() {
            None => return Decision::Accept,
            Some(Greylisting::BuiltIn { state, .. }) => {
                let d = state.check(ip, &sender, &[rcpt], SystemTime::now());
                let mut txn = std::mem::take(&mut self.txn);
                let decision = self.verdict(d.verdict(), &mut txn, rcpt);
                self.txn = txn;
                return decision;
            }
            Some(Greylisting::Server(addr)) => *addr,
        };
        let request = policy::greylist::udp::encode_request(ip, &sender, &[rcpt]);
        let answer = async {
            let bind = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.send_to(&request, server).await?;
            let mut buf = [0u8; 16];
            let n = sock.recv(&mut buf).await?;
            Ok::<_, std::io::Error>(buf[..n].to_vec())
        };
        let verdict =
            match tokio::time::timeout(policy::greylist::udp::DEFAULT_TIMEOUT, answer).await {
                Ok(Ok(bytes)) => match policy::greylist::udp::decode_reply(&bytes) {
                    Ok(reply) => reply.verdict(),
                    Err(e) => policy::greylist::udp::temporary_failure(&format!(
                        "bad reply from {server}: {e}"
                    )),
                },
                Ok(Err(e)) => policy::greylist::udp::temporary_failure(&format!("{server}: {e}")),
                Err(_) => policy::greylist::udp::temporary_failure(&format!("{server}: timeout")),
            };
        let mut txn = std::mem::take(&mut self.txn);
        let decision = self.verdict(verdict, &mut txn, rcpt);
        self.txn = txn;
        decision
    }

    /// Turns a policy verdict into a decision, logging the rule that matched.
    pub(super) fn verdict(&self, v: policy::Verdict, txn: &mut Txn, what: &str) -> Decision {
        match v {
            policy::Verdict::Accept => Decision::Accept,
            policy::Verdict::Blackhole { rule } => {
                log!("shard{} blackhole <{what}> rule={rule}", self.shard.index);
                txn.nullqueue = true;
                Decision::Accept
            }
            policy::Verdict::Reject {
                code,
                enhanced,
                text,
                rule,
            } => {
                log!(
                    "shard{} policy refused <{what}> ip={} reply={code} rule={rule}",
                    self.shard.index,
                    self.peer.ip()
                );
                Decision::Reject(Reply::new(code, Some(enhanced), text))
            }
        }
    }

    pub(super) async fn rcpt_decision(&self, domain: Option<&str>) -> Decision {
        if self.relay || self.txn.relay {
            return Decision::Accept;
        }
        match domain {
            // <postmaster> is always accepted (RFC 5321 4.5.1).
            None => Decision::Accept,
            Some(d) if self.settings.rcpthosts.contains(d) => Decision::Accept,
            Some(_) if self.check_relay && self.relay_table_allows().await => Decision::Accept,
            Some(_) => Decision::Reject(Reply::new(
                553,
                Some((5, 7, 1)),
                "sorry, that domain isn't in my list of allowed rcpthosts",
            )),
        }
    }

    /// POP/IMAP-before-SMTP: the relay table has a recent login from this IP.
    pub(super) async fn relay_table_allows(&self) -> bool {
        match self.shard.directory.get().await {
            Ok(dir) => dir.relay_allowed(self.peer.ip()).await.unwrap_or(false),
            Err(_) => false,
        }
    }
}
