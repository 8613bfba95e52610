//! `hostaccess`: `domain:ip` pairs tying sender domains to client addresses (IndiMail
//! `tablematch()`).
//!
//! `ip` is an exact address, `*` / `*.*.*.*`, or four dotted fields each being `*`, a number
//! with `?` wildcards, or a range `a-b` (`a-` = up to 255). `domain` is the sender's domain,
//! `*`, or `<>` for the null sender. A line matching both domain and IP allows at once. With no
//! allowing line: if a line named the domain exactly and `PARANOID` is set, deny; if a line
//! named the IP exactly (not `*`) and `DOMAIN_MASQUERADE` is not set, deny (that IP is reserved
//! for other domains); otherwise allow. No file = allow.
//!
//! Deviation: `tablematch()` re-assigns its "exact match seen" flags on every matching line,
//! so a later `domain:*` line silently cancels an earlier IP reservation (and a later `*:ip`
//! line a domain's). Here an exact match, once seen, stays — the behaviour its own comment
//! describes ("some other domain cannot come from those specific IPs").

use crate::control::ControlFile;
use crate::error::PolicyError;

#[derive(Debug)]
struct Entry {
    line: usize,
    domain: String,
    ip: String,
}

/// Compiled `hostaccess`.
#[derive(Debug, Default)]
pub(crate) struct HostAccess {
    label: String,
    entries: Vec<Entry>,
}

fn valid_field(f: &str) -> bool {
    if f == "*" {
        return true;
    }
    if let Some((lo, hi)) = f.split_once('-') {
        return !lo.is_empty()
            && lo.bytes().all(|b| b.is_ascii_digit())
            && hi.bytes().all(|b| b.is_ascii_digit());
    }
    !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit() || b == b'?')
}

fn valid_token(t: &str) -> bool {
    if t == "*" || t.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let fields: Vec<&str> = t.split('.').collect();
    fields.len() == 4 && fields.iter().all(|f| valid_field(f))
}

/// `matchinet()` without the DNS fallback (which qmail-smtpd never enables here).
fn match_inet(ip: &str, token: &str) -> bool {
    if ip == token {
        return true;
    }
    if token.parse::<std::net::Ipv4Addr>().is_ok() {
        return false;
    }
    let mut ipf = ip.split('.');
    for tf in token.split('.').take(4) {
        let Some(cf) = ipf.next() else { return false };
        if tf == "*" {
            continue;
        }
        if tf.len() == cf.len() && tf.bytes().zip(cf.bytes()).all(|(t, c)| t == b'?' || t == c) {
            continue;
        }
        if let Some((lo, hi)) = tf.split_once('-') {
            let lo: u32 = lo.parse().unwrap_or(0);
            let hi: u32 = if hi.is_empty() {
                256
            } else {
                hi.parse().unwrap_or(0)
            };
            if let Ok(v) = cf.parse::<u32>() {
                if (lo..=hi).contains(&v) {
                    continue;
                }
            }
        }
        return false;
    }
    token.split('.').count() == 4 && ip.split('.').count() == 4
}

impl HostAccess {
    pub(crate) fn load(file: &ControlFile, errors: &mut Vec<PolicyError>) -> HostAccess {
        let mut entries = Vec::new();
        for l in file.lines() {
            let Some((domain, ip)) = l.text.split_once(':') else {
                errors.push(file.syntax_error(l, "expected domain:ip"));
                continue;
            };
            if !valid_token(ip) {
                errors.push(file.syntax_error(
                    l,
                    "ip must be an address, * or four fields of digits/?/*/a-b",
                ));
                continue;
            }
            entries.push(Entry {
                line: l.no,
                domain: domain.to_ascii_lowercase(),
                ip: ip.to_string(),
            });
        }
        HostAccess {
            label: file.label.clone(),
            entries,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `None` = allowed; `Some(rule)` = denied, naming the line that reserved the IP or domain.
    /// `domain` is the sender's domain without `@`, empty for the null sender or a bare local part.
    pub(crate) fn check(
        &self,
        ip: &str,
        domain: &str,
        paranoid: bool,
        masquerade: bool,
    ) -> Option<String> {
        if self.entries.is_empty() {
            return None;
        }
        let (mut exact_domain, mut exact_ip) = (None, None);
        for e in &self.entries {
            let dmatch = (e.domain == "<>" && domain.is_empty())
                || (!domain.is_empty() && (e.domain == "*" || e.domain == domain));
            if dmatch && e.domain != "*" {
                exact_domain = exact_domain.or(Some(e.line));
            }
            let wild_ip = e.ip == "*" || e.ip == "*.*.*.*";
            let imatch = wild_ip || match_inet(ip, &e.ip);
            if imatch && !wild_ip {
                exact_ip = exact_ip.or(Some(e.line));
            }
            if imatch && dmatch {
                return None;
            }
        }
        if let (Some(n), true) = (exact_domain, paranoid) {
            return Some(format!("{}:{}", self.label, n));
        }
        if let (Some(n), false) = (exact_ip, masquerade) {
            return Some(format!("{}:{}", self.label, n));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_tokens() {
        assert!(match_inet("202.33.54.5", "202.10-33.54.5"));
        assert!(match_inet("202.10.54.5", "202.10-33.54.5"));
        assert!(!match_inet("202.34.54.5", "202.10-33.54.5"));
        assert!(match_inet("192.86.28.7", "192.86.28.*"));
        assert!(match_inet("192.86.25.120", "192.86.2?.12?"));
        assert!(!match_inet("192.86.35.120", "192.86.2?.12?"));
        assert!(match_inet("10.0.0.250", "10.0.0.200-"));
        assert!(!match_inet("10.0.0.1", "10.0.0.2"));
        assert!(!match_inet("::1", "10.*.*.*"));
    }
}
