//! CHECKRECIPIENT (spec 2.5 step 9): whether a recipient of a domain we accept mail for exists,
//! asked of the directory (mode 1), of the RECIPIENTS extension (`control/recipients`, mode 3),
//! or of the extension first and the directory for what it does not confirm (mode 2).
//!
//! | value | check |
//! |---|---|
//! | unset, `1` (any other non-zero) | the directory: absent 550 5.1.1, inactive 550 5.2.1, over quota 552 5.2.2 |
//! | `2` | `recipients` first; what it does not find (or no such file) goes to the directory |
//! | `3` | `recipients` only; without the file every address passes, as in IndiMail |
//! | `0`, empty | off |
//!
//! IndiMail's default is 3 when no virtual package is loaded and 1 with one; this server always
//! has its directory, so unset means 1. A lookup that cannot answer (database down, a PAVM
//! program exiting 111) gives 451, never a permanent refusal.

use smtp_proto::{Decision, Reply};

use crate::server::SmtpShard;
use crate::settings::{RecipientCheck, SmtpSettings};
use control::log;

/// The answer for `addr` (already known to be in a domain we accept, and covered by
/// `chkrcptdomains`). Postmaster is always accepted (RFC 5321 4.5.1).
pub(crate) async fn check(
    shard: &SmtpShard,
    settings: &SmtpSettings,
    mode: RecipientCheck,
    addr: &str,
) -> Decision {
    let postmaster = addr
        .rsplit_once('@')
        .is_some_and(|(l, _)| l.eq_ignore_ascii_case("postmaster"));
    if mode == RecipientCheck::Off || postmaster {
        return Decision::Accept;
    }
    if mode != RecipientCheck::Directory {
        use policy::RecipientsAnswer as A;
        match recipients_answer(settings, addr).await {
            A::Found | A::Unchecked => return Decision::Accept,
            A::NotConfigured if mode == RecipientCheck::Recipients => return Decision::Accept,
            A::NotFound if mode == RecipientCheck::Recipients => {
                return refuse(shard, addr, &lookup::UserStatus::NoSuchUser.smtp_reply())
            }
            A::TempFail(why) => {
                log!(
                    "shard{} rcpt check failed addr=<{addr}> reason={why}",
                    shard.index
                );
                return refuse(shard, addr, &Some(lookup::SmtpReply::TEMPFAIL));
            }
            A::NotFound | A::NotConfigured => {}
        }
    }
    let status = match shard.directory.get().await {
        // vdelivermail's view: extension addresses (QMAIL_EXT) and the
        // domain's catch-all take mail with no mailbox of its own, so
        // RCPT does not refuse what delivery would take.
        Ok(dir) => dir
            .recipient_status(&addr.to_ascii_lowercase(), settings.qmail_ext)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let reply = match status {
        Ok(status) => status.smtp_reply(),
        Err(e) => {
            log!(
                "shard{} rcpt check failed addr=<{addr}> reason={e}",
                shard.index
            );
            Some(lookup::SmtpReply::TEMPFAIL)
        }
    };
    refuse(shard, addr, &reply)
}

/// Asks `control/recipients`; off the event loop when a line runs a program.
async fn recipients_answer(settings: &SmtpSettings, addr: &str) -> policy::RecipientsAnswer {
    let policy = settings.policy.clone();
    if !policy.recipients().runs_programs() {
        return policy
            .recipients()
            .check(addr, &mut |_, _| Err("no program".into()));
    }
    let addr = addr.to_string();
    let job = move || policy.recipients().check(&addr, &mut policy::run_pavm);
    match tokio::task::spawn_blocking(job).await {
        Ok(a) => a,
        Err(e) => policy::RecipientsAnswer::TempFail(format!("recipients check failed: {e}")),
    }
}

fn refuse(shard: &SmtpShard, addr: &str, reply: &Option<lookup::SmtpReply>) -> Decision {
    match reply {
        None => Decision::Accept,
        Some(r) => {
            log!(
                "shard{} rcpt refused addr=<{addr}> reply={} {}",
                shard.index,
                r.code,
                r.enhanced
            );
            Decision::Reject(Reply::new(
                r.code,
                super::parse_enhanced(r.enhanced),
                r.text,
            ))
        }
    }
}
