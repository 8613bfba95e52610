//! Checks run on a whole message at the end of DATA, before it is queued:
//! the [`Plugin`] trait and the built-in plugins — DKIM verification
//! (`DKIMVERIFY`), virus scanning with clamd (`CLAMDSOCKET`), the spam
//! filter (`SPAMFILTER`, e.g. bogofilter) and the external filter
//! (`FILTERARGS`, e.g. altermime for disclaimers), in that order.
//!
//! A plugin sees the message as received (SMTP form, dot-unstuffed) and
//! answers with a [`Verdict`]: go on (adding header lines above the trace
//! lines, possibly replacing the message), refuse, discard, or
//! quarantine. An in-process check is one more type implementing
//! [`Plugin`], added in [`builtins`]; a check in another language is a
//! `FILTERARGS` program.

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use msgproc::scan::{Filter, OnVirus, ScanResult, SpamFilter, SpamVerdict, VirusScan};
use msgproc::QueueRules;
use smtp_proto::Reply;

use crate::dnscheck::DnsChecks;
use control::log;

/// What a plugin knows about the message besides its bytes.
pub struct Context<'a> {
    /// The shard (for log lines).
    pub shard: usize,
    /// This host's name (`me`).
    pub me: &'a str,
    /// The shard's DNS client.
    pub dns: &'a DnsChecks,
    /// Envelope sender.
    pub sender: &'a str,
    /// Envelope recipients.
    pub recipients: &'a [String],
    /// The client's address.
    pub ip: IpAddr,
    /// A relay client or an authenticated user.
    pub relay: bool,
    /// The SPF result word and MAIL FROM, when SPF was evaluated.
    pub spf: Option<(&'a str, &'a str)>,
    /// The most bytes a plugin may give back as a replacement message.
    pub max_output: usize,
}

/// A plugin's answer.
pub enum Verdict {
    /// Go on: `header` (lines ending in LF, may be empty) goes above the
    /// trace lines; `message`, when given, replaces the message.
    Pass {
        /// Header lines to add.
        header: String,
        /// The replacement message.
        message: Option<Vec<u8>>,
    },
    /// Refuse the message with this reply.
    Reject(Reply),
    /// Tell the client "ok" and store nothing.
    Discard,
    /// Queue for `address` only (spec 1.9), adding `header`.
    Quarantine {
        /// The quarantine address.
        address: String,
        /// Header lines to add.
        header: String,
    },
}

impl Verdict {
    fn header(h: impl Into<String>) -> Verdict {
        Verdict::Pass {
            header: h.into(),
            message: None,
        }
    }
}

/// An in-process check of a whole message.
pub trait Plugin {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Checks `message` (SMTP form).
    fn check<'a>(&'a self, cx: &'a Context<'a>, message: &'a [u8]) -> LocalBoxFuture<'a, Verdict>;
}

/// The built-in plugins the settings turn on, in the order they run.
pub fn builtins(rules: &QueueRules) -> Vec<Box<dyn Plugin>> {
    let mut v: Vec<Box<dyn Plugin>> = Vec::new();
    if let Some(letters) = &rules.dkim_verify {
        v.push(Box::new(DkimVerify {
            letters: letters.clone(),
        }));
    }
    if let Some(scan) = &rules.virus {
        v.push(Box::new(Clamd(scan.clone())));
    }
    if let Some(f) = &rules.spam {
        v.push(Box::new(Spam(f.clone())));
    }
    if let Some(f) = &rules.filter {
        v.push(Box::new(External(f.clone())));
    }
    v
}

/// Whether any plugin is on (the message is then held until its end).
pub fn any(rules: &QueueRules) -> bool {
    rules.dkim_verify.is_some()
        || rules.virus.is_some()
        || rules.spam.is_some()
        || rules.filter.is_some()
}

/// `DKIMVERIFY`: `Authentication-Results:` (DKIM and SPF), or the refusal
/// the letter set asks for (spec 9.1).
struct DkimVerify {
    letters: String,
}

impl Plugin for DkimVerify {
    fn name(&self) -> &'static str {
        "dkim"
    }

    fn check<'a>(&'a self, cx: &'a Context<'a>, message: &'a [u8]) -> LocalBoxFuture<'a, Verdict> {
        Box::pin(async move {
            let v = cx.dns.verify_dkim(cx.me, message, cx.spf).await;
            log!(
                "shard{} dkim verify from=<{}> ip={} result={}",
                cx.shard,
                cx.sender,
                cx.ip,
                v.code.unwrap_or('-')
            );
            match msgproc::dkim::verify_action(&self.letters, v.code) {
                Some(true) => Verdict::Reject(Reply::new(
                    554,
                    Some((5, 7, 1)),
                    "sorry, the message failed DKIM verification",
                )),
                Some(false) => Verdict::Reject(Reply::new(
                    451,
                    Some((4, 7, 1)),
                    "DKIM verification failed, try again later",
                )),
                None => Verdict::header(v.header),
            }
        })
    }
}

/// Virus scanning with clamd (spec 1.8): `X-QHPSI:`; `REJECTVIRUS`,
/// `VIRUSFORWARD`; a scanner that cannot answer gives 451 unless
/// `QHPSIFAILOPEN`.
struct Clamd(VirusScan);

impl Plugin for Clamd {
    fn name(&self) -> &'static str {
        "clamd"
    }

    fn check<'a>(&'a self, cx: &'a Context<'a>, message: &'a [u8]) -> LocalBoxFuture<'a, Verdict> {
        Box::pin(async move {
            let v = &self.0;
            if !v.in_window(message.len() as u64) {
                return Verdict::header("");
            }
            let (idx, from, ip) = (cx.shard, cx.sender, cx.ip);
            match crate::scanners::clamd(&v.socket, message).await {
                ScanResult::Clean => Verdict::header("X-QHPSI: clean\n"),
                ScanResult::Error(e) => {
                    log!("shard{idx} virus scan failed from=<{from}> ip={ip}: {e}");
                    if v.fail_open {
                        Verdict::header("X-QHPSI: not scanned (scanner unavailable)\n")
                    } else {
                        Verdict::Reject(Reply::new(
                            451,
                            Some((4, 3, 0)),
                            "virus scanner unavailable, try again later",
                        ))
                    }
                }
                ScanResult::Infected(sig) => {
                    if let Some(q) = &v.forward {
                        log!(
                            "shard{idx} virus found from=<{from}> ip={ip} rcpts={} signature={sig} action=quarantine:{q}",
                            cx.recipients.len()
                        );
                        return Verdict::Quarantine {
                            address: q.clone(),
                            header: format!("X-QHPSI: Virus found ({sig})\n"),
                        };
                    }
                    let action = match v.on_virus {
                        OnVirus::Accept => "accept",
                        OnVirus::Reject => "reject",
                        OnVirus::Blackhole => "blackhole",
                    };
                    log!(
                        "shard{idx} virus found from=<{from}> ip={ip} rcpts={} signature={sig} action={action}",
                        cx.recipients.len()
                    );
                    match v.on_virus {
                        OnVirus::Accept => {
                            Verdict::header(format!("X-QHPSI: Virus found ({sig})\n"))
                        }
                        OnVirus::Blackhole => Verdict::Discard,
                        OnVirus::Reject => Verdict::Reject(Reply::new(
                            554,
                            Some((5, 7, 1)),
                            format!("message contains virus {sig}"),
                        )),
                    }
                }
            }
        })
    }
}

/// `SPAMFILTER` (spec 9.5): the message passes through the filter
/// (bogofilter `-p` adds `X-Bogosity:`); its exit status says spam
/// (`REJECTSPAM`: 0 keep, 1 refuse with 554, 2 discard), ham/unsure, 100
/// refuse; anything else is a temporary problem (451).
struct Spam(SpamFilter);

impl Plugin for Spam {
    fn name(&self) -> &'static str {
        "spamfilter"
    }

    fn check<'a>(&'a self, cx: &'a Context<'a>, message: &'a [u8]) -> LocalBoxFuture<'a, Verdict> {
        Box::pin(async move {
            let f = &self.0;
            if f.skip_relay && cx.relay {
                return Verdict::header("");
            }
            let (idx, from, ip) = (cx.shard, cx.sender, cx.ip);
            let trouble = || {
                Verdict::Reject(Reply::new(
                    451,
                    Some((4, 3, 0)),
                    "temporary spam-filter problem",
                ))
            };
            let input = Arc::new(message.to_vec());
            let run = match crate::scanners::run_filter(f.filter.argv.clone(), input, cx.max_output)
                .await
            {
                Ok(r) if r.truncated => {
                    log!("shard{idx} spam filter failed from=<{from}> ip={ip}: output too big");
                    return trouble();
                }
                Ok(r) => r,
                Err(e) => {
                    log!("shard{idx} spam filter failed from=<{from}> ip={ip}: {e}");
                    return trouble();
                }
            };
            let verdict = f.verdict(run.code);
            let word = match verdict {
                SpamVerdict::Spam => "spam",
                SpamVerdict::NotSpam => "ham",
                SpamVerdict::Refuse => "refused",
                SpamVerdict::Trouble => "trouble",
            };
            log!(
                "shard{idx} spam filter from=<{from}> ip={ip} exit={} verdict={word}",
                run.code.map_or("signal".to_string(), |c| c.to_string())
            );
            // A filter that only classifies (prints nothing) leaves the
            // message as it was.
            let message = (!run.output.is_empty()).then_some(run.output);
            match verdict {
                SpamVerdict::Spam if f.reject == 1 => {
                    Verdict::Reject(Reply::new(554, Some((5, 7, 1)), "spam threshold exceeded"))
                }
                SpamVerdict::Spam if f.reject >= 2 => Verdict::Discard,
                SpamVerdict::Spam | SpamVerdict::NotSpam => Verdict::Pass {
                    header: String::new(),
                    message,
                },
                SpamVerdict::Refuse => Verdict::Reject(Reply::new(
                    554,
                    Some((5, 7, 1)),
                    "message refused by the spam filter",
                )),
                SpamVerdict::Trouble => trouble(),
            }
        })
    }
}

/// `FILTERARGS` (spec 9.4, qmail-multi's filter contract): the program's
/// output is the message queued; exit 100 refuses (554), 2 discards,
/// anything else non-zero is temporary (451).
struct External(Filter);

impl Plugin for External {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn check<'a>(&'a self, cx: &'a Context<'a>, message: &'a [u8]) -> LocalBoxFuture<'a, Verdict> {
        Box::pin(async move {
            let (idx, from, ip) = (cx.shard, cx.sender, cx.ip);
            let input = Arc::new(message.to_vec());
            match crate::scanners::run_filter(self.0.argv.clone(), input, cx.max_output).await {
                Ok(r) if r.code == Some(0) && !r.truncated => Verdict::Pass {
                    header: String::new(),
                    message: Some(r.output),
                },
                Ok(r) if r.code == Some(2) => {
                    log!("shard{idx} filter discarded msg from=<{from}> ip={ip}");
                    Verdict::Discard
                }
                Ok(r) if r.code == Some(100) => {
                    log!("shard{idx} filter refused msg from=<{from}> ip={ip}");
                    Verdict::Reject(Reply::new(
                        554,
                        Some((5, 7, 1)),
                        "message refused by filter",
                    ))
                }
                other => {
                    let why = match other {
                        Ok(r) if r.truncated => "output too big".to_string(),
                        Ok(r) => format!("exit {:?}", r.code),
                        Err(e) => e.to_string(),
                    };
                    log!("shard{idx} filter failed from=<{from}> ip={ip}: {why}");
                    Verdict::Reject(Reply::new(451, Some((4, 3, 0)), "temporary filter problem"))
                }
            }
        })
    }
}
