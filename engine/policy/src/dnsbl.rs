//! DNS block lists (IndiMail's `dnsbllist` / rblsmtpd): the query names and what an answer
//! means. The driver does the lookups (A, then TXT for the reason) asynchronously.
//!
//! `control/dnsbllist` (or the file named by `DNSBLLIST`) lists one zone per line, e.g.
//! `zen.spamhaus.org`. A client is listed in a zone when `<reversed address>.<zone>` has an
//! A record in 127.0.0.0/8 (RFC 5782 section 2.1); the TXT record at the same name, if any,
//! is the reason given to the client.

use std::net::IpAddr;

use crate::Verdict;

/// The name to look up for `ip` in `zone` (RFC 5782 section 2.1 and 2.4): IPv4 octets
/// reversed, IPv6 nibbles reversed.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match crate::canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len() + 1);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str(zone);
            s.push('.');
            s
        }
    }
}

/// Whether an A record answered by a list means "listed": only 127.0.0.0/8 does (RFC 5782
/// section 2.1; other answers are lists' error signals, e.g. Spamhaus's 127.255.255.x
/// for refused queries, which must not block mail).
pub fn is_listing(addr: std::net::Ipv4Addr) -> bool {
    let [a, b, c, d] = addr.octets();
    a == 127 && !(b == 255 && c == 255) && d != 0
}

/// The zones of a `dnsbllist` file: one per line, `#` comments and blank lines skipped.
pub fn parse_zones(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// The reply for a client listed in `zone`: `554 5.7.1` with the list's reason (its TXT
/// record) when there is one.
pub fn listed_verdict(ip: IpAddr, zone: &str, reason: Option<&str>) -> Verdict {
    // The reason is the list's text; keep it to one printable line.
    let reason: Option<String> = reason.map(|r| {
        r.chars()
            .filter(|c| !c.is_control())
            .take(400)
            .collect::<String>()
    });
    let text = match reason.as_deref().filter(|r| !r.trim().is_empty()) {
        Some(r) => format!("{ip} is listed in {zone}: {r}"),
        None => format!("{ip} is listed in {zone}"),
    };
    Verdict::Reject {
        code: 554,
        enhanced: (5, 7, 1),
        text,
        rule: format!("dnsbl:{zone}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "zen.example"),
            "99.2.0.192.zen.example."
        );
        assert_eq!(
            query_name("::ffff:192.0.2.99".parse().unwrap(), "zen.example."),
            "99.2.0.192.zen.example."
        );
        // RFC 5782 section 2.4's example.
        assert_eq!(
            query_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "bl.example"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example."
        );
    }

    #[test]
    fn listing_answers() {
        assert!(is_listing("127.0.0.2".parse().unwrap()));
        assert!(is_listing("127.0.0.10".parse().unwrap()));
        assert!(!is_listing("127.255.255.254".parse().unwrap()));
        assert!(!is_listing("10.0.0.2".parse().unwrap()));
        assert!(!is_listing("127.0.0.0".parse().unwrap()));
    }

    #[test]
    fn zones_and_reply() {
        assert_eq!(
            parse_zones("# lists\nZen.Example.\n\n bl.example \n"),
            vec!["zen.example", "bl.example"]
        );
        let v = listed_verdict(
            "192.0.2.1".parse().unwrap(),
            "bl.example",
            Some("spam\r\nx"),
        );
        assert_eq!(
            v.to_string(),
            "554 5.7.1 192.0.2.1 is listed in bl.example: spamx"
        );
        let v = listed_verdict("192.0.2.1".parse().unwrap(), "bl.example", None);
        assert_eq!(v.to_string(), "554 5.7.1 192.0.2.1 is listed in bl.example");
    }
}
