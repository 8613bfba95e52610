//! What qmail-smtpd does to a client before its greeting and to one that
//! probes for addresses (spec 2.2 and 2.5), with IndiMail's names:
//!
//! | control (variable) | effect |
//! |---|---|
//! | `greetdelay` (`GREETDELAY`) | wait this many seconds before the 220; negative: also drop a client that talked before it (`554 5.5.1`) |
//! | `REQPTR` | a client whose address has no PTR gets `553 5.7.1` (the value, when set, is the text); a DNS failure `421 4.4.3` |
//! | `badhost` (`BADHOSTCHECK`, `BADHOST`) | the client's PTR name in the list: `553 5.7.1` (the list itself is the `policy` crate's) |
//! | `tarpitcount`, `tarpitdelay` (`TARPITCOUNT`, `TARPITDELAY`) | from the Nth recipient of a message on, each RCPT is answered after the delay (default 5 s); 0 = never |
//! | `MAX_RCPT_ERRCOUNT` | after this many refused recipients: `421 4.7.0 too many invalid addresses` and closed; 0 = never |
//! | `PENALTY` | seconds waited after each refused recipient |
//!
//! Each variable may also be set per client in `tcp.smtp` (e.g.
//! `:allow,GREETDELAY="-5"`), which wins over the server's value.

use std::time::Duration;

use crate::dnscheck::ClientNameError;
use crate::tcprules::RuleMatch;
use control::env::env_number;
use control::{ControlDir, ControlError};
use smtp_proto::Reply;

/// The settings, server-wide or for one client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientChecks {
    /// Seconds before the greeting; negative also drops early talkers.
    pub greet_delay: i64,
    /// `REQPTR`: `Some(text)` requires a PTR (empty text: the standard one).
    pub require_ptr: Option<String>,
    /// The recipient from which RCPTs are delayed (0 = never).
    pub tarpit_count: usize,
    /// How long each of those RCPTs waits.
    pub tarpit_delay: Duration,
    /// Refused recipients before the connection is closed (0 = never).
    pub max_rcpt_errors: u32,
    /// Wait after each refused recipient.
    pub penalty: Duration,
}

/// `var` from the environment, else `file` from the control directory.
fn setting<T: std::str::FromStr + Copy>(
    c: &ControlDir,
    var: &str,
    file: Option<&str>,
    default: T,
) -> Result<T, ControlError> {
    match (std::env::var_os(var), file) {
        (None, Some(f)) => c.number(f, default),
        _ => env_number(var, default),
    }
}

impl ClientChecks {
    /// The server-wide settings (environment, then control files).
    pub fn load(c: &ControlDir, errors: &mut Vec<ControlError>) -> ClientChecks {
        let mut take = |r: Result<u64, ControlError>, default: u64| {
            r.unwrap_or_else(|e| {
                errors.push(e);
                default
            })
        };
        let tarpit_count = take(setting(c, "TARPITCOUNT", Some("tarpitcount"), 0), 0);
        let tarpit_delay = take(setting(c, "TARPITDELAY", Some("tarpitdelay"), 5), 5);
        let max_rcpt_errors = take(setting(c, "MAX_RCPT_ERRCOUNT", None, 0), 0);
        let penalty = take(setting(c, "PENALTY", None, 0), 0);
        let greet_delay = setting(c, "GREETDELAY", Some("greetdelay"), 0i64).unwrap_or_else(|e| {
            errors.push(e);
            0
        });
        ClientChecks {
            greet_delay,
            require_ptr: std::env::var("REQPTR").ok(),
            tarpit_count: usize::try_from(tarpit_count).unwrap_or(usize::MAX),
            tarpit_delay: Duration::from_secs(tarpit_delay),
            max_rcpt_errors: u32::try_from(max_rcpt_errors).unwrap_or(u32::MAX),
            penalty: Duration::from_secs(penalty),
        }
    }

    /// These settings with a `tcp.smtp` rule's variables applied (a value
    /// that is not a number leaves the server's).
    pub fn for_client(&self, rule: &RuleMatch) -> ClientChecks {
        let num = |name: &str| rule.var(name).and_then(|v| v.trim().parse::<i64>().ok());
        let mut c = self.clone();
        if let Some(v) = num("GREETDELAY") {
            c.greet_delay = v;
        }
        if let Some(v) = rule.var("REQPTR") {
            c.require_ptr = Some(v.to_string());
        }
        if let Some(v) = num("TARPITCOUNT") {
            c.tarpit_count = usize::try_from(v).unwrap_or(0);
        }
        if let Some(v) = num("TARPITDELAY") {
            c.tarpit_delay = Duration::from_secs(u64::try_from(v).unwrap_or(0));
        }
        if let Some(v) = num("MAX_RCPT_ERRCOUNT") {
            c.max_rcpt_errors = u32::try_from(v).unwrap_or(0);
        }
        if let Some(v) = num("PENALTY") {
            c.penalty = Duration::from_secs(u64::try_from(v).unwrap_or(0));
        }
        c
    }

    /// Whether the client's name (PTR) must be looked up before the greeting.
    pub fn wants_client_name(&self, policy: &policy::Policy) -> bool {
        self.require_ptr.is_some() || policy.wants_client_name()
    }

    /// The answer before the greeting once the client's name lookup is done:
    /// `None` to greet.
    pub fn judge_client_name(
        &self,
        policy: &policy::Policy,
        name: &Result<Option<String>, ClientNameError>,
        me: &str,
    ) -> Option<(Reply, String)> {
        match name {
            Ok(Some(n)) => match policy.check_client_name(n) {
                policy::Verdict::Reject {
                    code,
                    enhanced,
                    text,
                    rule,
                } => Some((Reply::new(code, Some(enhanced), text), rule)),
                _ => None,
            },
            Ok(None) => self.require_ptr.as_ref().map(|text| {
                let text = if text.trim().is_empty() {
                    format!("{me} sorry, no PTR record for your IP address")
                } else {
                    text.clone()
                };
                (Reply::new(553, Some((5, 7, 1)), text), "REQPTR".into())
            }),
            Err(_) if self.require_ptr.is_some() => Some((
                Reply::new(
                    421,
                    Some((4, 4, 3)),
                    format!("{me} cannot look up your IP address's name now, try later"),
                ),
                "REQPTR".into(),
            )),
            Err(_) => None,
        }
    }

    /// How long the RCPT that would make `recipients` recipients waits.
    pub fn tarpit(&self, recipients: usize) -> Option<Duration> {
        (self.tarpit_count > 0 && recipients >= self.tarpit_count && !self.tarpit_delay.is_zero())
            .then_some(self.tarpit_delay)
    }

    /// The greeting delay, and whether a client talking during it is dropped.
    pub fn greeting(&self) -> Option<(Duration, bool)> {
        (self.greet_delay != 0).then(|| {
            (
                Duration::from_secs(self.greet_delay.unsigned_abs()),
                self.greet_delay < 0,
            )
        })
    }

    /// The reply to a client that talked before the greeting.
    pub fn early_talker(me: &str) -> Reply {
        Reply::new(
            554,
            Some((5, 5, 1)),
            format!("{me} protocol violation: you talked before the greeting"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(env: &[(&str, &str)]) -> RuleMatch {
        RuleMatch {
            deny: false,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn tcp_rules_override_and_tarpit_counts_from_nth() {
        let base = ClientChecks {
            tarpit_count: 3,
            tarpit_delay: Duration::from_secs(5),
            ..Default::default()
        };
        assert_eq!(base.tarpit(2), None);
        assert_eq!(base.tarpit(3), Some(Duration::from_secs(5)));
        let c = base.for_client(&rule(&[
            ("GREETDELAY", "-4"),
            ("TARPITCOUNT", "0"),
            ("MAX_RCPT_ERRCOUNT", "2"),
            ("PENALTY", "x"),
        ]));
        assert_eq!(c.greeting(), Some((Duration::from_secs(4), true)));
        assert_eq!(c.tarpit(10), None);
        assert_eq!(c.max_rcpt_errors, 2);
        assert_eq!(c.penalty, Duration::ZERO);
        assert_eq!(base.greeting(), None);
    }

    #[test]
    fn ptr_required_refuses_nameless_and_defers_on_dns_failure() {
        let policy = policy::Policy::load(std::path::Path::new("/nonexistent"), &|_| None).unwrap();
        let mut c = ClientChecks::default();
        assert_eq!(c.judge_client_name(&policy, &Ok(None), "mx"), None);
        c.require_ptr = Some(String::new());
        let (r, _) = c.judge_client_name(&policy, &Ok(None), "mx").unwrap();
        assert_eq!(r.code(), 553);
        let (r, _) = c
            .judge_client_name(&policy, &Err(ClientNameError::NoResolver), "mx")
            .unwrap();
        assert_eq!(r.code(), 421);
        assert_eq!(
            c.judge_client_name(&policy, &Ok(Some("a.example".into())), "mx"),
            None
        );
    }
}
