//! SPF (RFC 7208) policy: what IndiMail's `spfbehavior` levels do with a result, and the
//! `Received-SPF` header. The driver evaluates the record (asynchronously, with the
//! `mail-auth` crate) and maps its result to [`SpfResult`].
//!
//! `control/spfbehavior` (or `SPFBEHAVIOR`), as in IndiMail's qmail-smtpd:
//!
//! | level | effect |
//! |---|---|
//! | 0 | off (default) |
//! | 1 | evaluate and add `Received-SPF` only |
//! | 2 | also `451 4.7.24` when the check fails temporarily (DNS error) |
//! | 3 | also `550 5.7.23` on `fail` |
//! | 4 | also on `softfail` |
//! | 5 | also on `neutral` |
//! | 6 | also on `none` |
//!
//! Relay clients and authenticated users are never checked.

use std::fmt;
use std::net::IpAddr;

use crate::Verdict;

/// The outcome of an SPF check (RFC 7208 section 2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    /// Authorized.
    Pass,
    /// Explicitly not authorized.
    Fail,
    /// Probably not authorized.
    SoftFail,
    /// No assertion.
    Neutral,
    /// No record.
    None,
    /// A transient DNS error.
    TempError,
    /// The record could not be interpreted.
    PermError,
}

impl fmt::Display for SpfResult {
    /// The lower-case name used in `Received-SPF` (RFC 7208 section 9.1).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        })
    }
}

/// IndiMail's `spfbehavior` level (0-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpfBehavior(pub u8);

impl SpfBehavior {
    /// Reads a level; values above 6 act as 6 (as qmail-smtpd does).
    pub fn new(level: u64) -> SpfBehavior {
        SpfBehavior(level.min(6) as u8)
    }

    /// Whether SPF is evaluated at all.
    pub fn enabled(self) -> bool {
        self.0 > 0
    }

    /// The verdict for `result` at this level. `explanation` is the domain's `exp=` text
    /// if it published one.
    pub fn verdict(self, result: SpfResult, domain: &str, explanation: Option<&str>) -> Verdict {
        let level = self.0;
        let rejects = match result {
            SpfResult::Fail => level >= 3,
            SpfResult::SoftFail => level >= 4,
            SpfResult::Neutral => level >= 5,
            SpfResult::None => level >= 6,
            SpfResult::TempError => level >= 2,
            SpfResult::Pass | SpfResult::PermError => false,
        };
        if !rejects {
            return Verdict::Accept;
        }
        let rule = format!("spfbehavior:{level}");
        if result == SpfResult::TempError {
            return Verdict::Reject {
                code: 451,
                enhanced: (4, 7, 24),
                text: format!("SPF check for {domain} failed temporarily, try again later"),
                rule,
            };
        }
        let exp: Option<String> =
            explanation.map(|e| e.chars().filter(|c| !c.is_control()).take(300).collect());
        let text = match exp.filter(|e| !e.trim().is_empty()) {
            Some(e) => format!("SPF {result} for {domain}: {e}"),
            None => format!("SPF check failed ({result}): {domain} does not designate this host as a permitted sender"),
        };
        Verdict::Reject {
            code: 550,
            enhanced: (5, 7, 23),
            text,
            rule,
        }
    }
}

/// The local SPF settings of qmail-spf: `spfrules` (mechanisms tried before a domain's `all`),
/// `spfguess` (a record for domains that publish none) and `spfexp` (the explanation of a
/// failure when the domain gives none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpfLocal {
    /// `spfrules` / `SPFRULES`, e.g. `include:spf.trusted-forwarder.org`.
    pub rules: Option<String>,
    /// `spfguess` / `SPFGUESS`, e.g. `v=spf1 a/24 mx/24 ptr ?all`.
    pub guess: Option<String>,
    /// `spfexp` / `SPFEXP`, with the macros `%{S}` sender, `%{L}` its local part, `%{O}` and
    /// `%{D}` its domain, `%{I}` client address, `%{H}` HELO name, `%{R}` this host.
    pub exp: Option<String>,
}

impl SpfLocal {
    /// The record to evaluate for a domain whose published SPF record is `published` (`None`:
    /// it has none): the guess for a domain without one, the published record with the local
    /// rules put before its final `all` (or after its last term when it has none). `None`
    /// when nothing local applies (evaluate what DNS says).
    pub fn record_for(&self, published: Option<&str>) -> Option<String> {
        match published {
            None => self.guess.clone().filter(|g| is_spf1(g)),
            Some(r) => self
                .rules
                .as_deref()
                .map(|rules| with_local_rules(r, rules)),
        }
    }

    /// `spfexp` expanded for one failure; `None` when unset.
    pub fn explanation(&self, sender: &str, ip: IpAddr, helo: &str, me: &str) -> Option<String> {
        let t = self.exp.as_deref()?;
        let (local, domain) = sender.rsplit_once('@').unwrap_or(("postmaster", helo));
        let mut out = String::with_capacity(t.len() + 64);
        let mut rest = t;
        while let Some(i) = rest.find("%{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            match after[..end].chars().next().map(|c| c.to_ascii_uppercase()) {
                Some('S') => out.push_str(sender),
                Some('L') => out.push_str(local),
                Some('O') | Some('D') => out.push_str(domain),
                Some('I') => out.push_str(&crate::canonical_ip(ip).to_string()),
                Some('H') => out.push_str(helo),
                Some('R') => out.push_str(me),
                _ => out.push_str(&rest[i..i + 3 + end]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// Whether `record` is an SPF version 1 record.
pub fn is_spf1(record: &str) -> bool {
    let r = record.trim_start();
    r.len() >= 6
        && r[..6].eq_ignore_ascii_case("v=spf1")
        && r[6..].chars().next().is_none_or(|c| c == ' ')
}

/// `record` with `rules` put before its last `all` term (any qualifier), or at its end.
pub fn with_local_rules(record: &str, rules: &str) -> String {
    let terms: Vec<&str> = record.split_whitespace().collect();
    let is_all = |t: &&str| {
        t.trim_start_matches(['+', '-', '~', '?'])
            .eq_ignore_ascii_case("all")
    };
    let at = terms.iter().rposition(is_all).unwrap_or(terms.len());
    let mut out: Vec<&str> = terms[..at].to_vec();
    out.extend(rules.split_whitespace());
    out.extend(&terms[at..]);
    out.join(" ")
}

/// The `Received-SPF:` header line (RFC 7208 section 9.1), with a trailing newline.
pub fn received_spf(result: SpfResult, me: &str, ip: IpAddr, sender: &str, helo: &str) -> String {
    let (what, identity) = if sender.is_empty() {
        ("helo", format!("postmaster@{helo}"))
    } else {
        ("mailfrom", sender.to_string())
    };
    let ip = crate::canonical_ip(ip);
    let comment = match result {
        SpfResult::Pass => {
            format!("{me}: domain of {identity} designates {ip} as permitted sender")
        }
        SpfResult::Fail => {
            format!("{me}: domain of {identity} does not designate {ip} as permitted sender")
        }
        SpfResult::SoftFail => format!(
            "{me}: transitioning domain of {identity} does not designate {ip} as permitted sender"
        ),
        SpfResult::Neutral => {
            format!("{me}: {ip} is neither permitted nor denied by domain of {identity}")
        }
        SpfResult::None => format!("{me}: domain of {identity} does not provide an SPF record"),
        SpfResult::TempError => format!("{me}: error in processing during lookup of {identity}"),
        SpfResult::PermError => format!("{me}: permanent error in processing domain of {identity}"),
    };
    // Values are quoted only when they could break the header's syntax.
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != ';')
            .collect()
    };
    format!(
        "Received-SPF: {result} ({}) client-ip={ip}; envelope-from=\"{}\"; helo=\"{}\"; receiver={}; identity={what};\n",
        clean(&comment),
        clean(sender),
        clean(helo),
        clean(me)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_rules_go_before_all_and_guess_only_without_a_record() {
        let l = SpfLocal {
            rules: Some("include:fwd.test a:relay.test".into()),
            guess: Some("v=spf1 a/24 mx ?all".into()),
            exp: None,
        };
        assert_eq!(
            l.record_for(Some("v=spf1 ip4:192.0.2.1 -all")).as_deref(),
            Some("v=spf1 ip4:192.0.2.1 include:fwd.test a:relay.test -all")
        );
        assert_eq!(
            l.record_for(Some("v=spf1 mx redirect=x.test")).as_deref(),
            Some("v=spf1 mx redirect=x.test include:fwd.test a:relay.test")
        );
        assert_eq!(l.record_for(None).as_deref(), Some("v=spf1 a/24 mx ?all"));
        assert_eq!(SpfLocal::default().record_for(Some("v=spf1 -all")), None);
        assert!(!is_spf1("v=spf10 -all") && is_spf1("V=SPF1"));
    }

    #[test]
    fn explanation_macros() {
        let l = SpfLocal {
            exp: Some("See https://why.test/?s=%{S}&i=%{I}&r=%{R}&l=%{l}&d=%{d} %{x}".into()),
            ..SpfLocal::default()
        };
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            l.explanation("joe@bad.test", ip, "helo.test", "mx.me")
                .unwrap(),
            "See https://why.test/?s=joe@bad.test&i=192.0.2.9&r=mx.me&l=joe&d=bad.test %{x}"
        );
        assert_eq!(SpfLocal::default().explanation("a@b", ip, "h", "m"), None);
    }

    #[test]
    fn levels() {
        let at = |l: u64, r: SpfResult| SpfBehavior::new(l).verdict(r, "example.org", None);
        assert!(at(1, SpfResult::Fail).is_accept());
        assert!(at(2, SpfResult::Fail).is_accept());
        assert_eq!(
            at(2, SpfResult::TempError).to_string(),
            "451 4.7.24 SPF check for example.org failed temporarily, try again later"
        );
        assert!(at(1, SpfResult::TempError).is_accept());
        assert!(at(3, SpfResult::Fail)
            .to_string()
            .starts_with("550 5.7.23 "));
        assert!(at(3, SpfResult::SoftFail).is_accept());
        assert!(!at(4, SpfResult::SoftFail).is_accept());
        assert!(at(4, SpfResult::Neutral).is_accept());
        assert!(!at(5, SpfResult::Neutral).is_accept());
        assert!(at(5, SpfResult::None).is_accept());
        assert!(!at(6, SpfResult::None).is_accept());
        assert!(at(9, SpfResult::Pass).is_accept());
        assert!(at(6, SpfResult::PermError).is_accept());
        assert_eq!(SpfBehavior::new(9), SpfBehavior(6));
        let v =
            SpfBehavior::new(3).verdict(SpfResult::Fail, "example.org", Some("see\r\nhttp://x"));
        assert_eq!(
            v.to_string(),
            "550 5.7.23 SPF fail for example.org: seehttp://x"
        );
    }

    #[test]
    fn header() {
        let h = received_spf(
            SpfResult::Pass,
            "mx.test",
            "::ffff:192.0.2.1".parse().unwrap(),
            "a@example.org",
            "client.example.org",
        );
        assert_eq!(
            h,
            "Received-SPF: pass (mx.test: domain of a@example.org designates 192.0.2.1 as permitted sender) client-ip=192.0.2.1; envelope-from=\"a@example.org\"; helo=\"client.example.org\"; receiver=mx.test; identity=mailfrom;\n"
        );
        let h = received_spf(
            SpfResult::None,
            "mx.test",
            "192.0.2.1".parse().unwrap(),
            "",
            "h;x",
        );
        assert!(h.contains("identity=helo;"), "{h}");
        assert!(h.contains("helo=\"hx\""), "{h}");
    }
}
