//! Access rules by client IP in the style of ucspi-tcp's `tcprules`
//! (`<home>/tcp/tcp.smtp`, as IndiMail keeps `/etc/indimail/tcp/tcp.smtp`).
//!
//! Each line is `address:instruction`, where address is
//! * an IP (`127.0.0.1`, `::1`): that address;
//! * a prefix ending in `.` or `:` (`127.0.0.`, `10.`, `fe80:`): every
//!   address whose text starts with it, as tcprules does;
//! * a CIDR block (`192.168.1.0/24`, `2001:db8::/32`), as IndiMail's
//!   tcpserver accepts;
//! * empty: every address (the default rule).
//!
//! and instruction is `allow` or `deny`, optionally followed by
//! `,VAR=value` or `,VAR="value"` settings (e.g. `RELAYCLIENT=""`,
//! `MAXPERIP=5`, `DATABYTES=1000000`) that apply to connections matching the
//! rule. The most specific match wins: an exact address, then the longest
//! prefix or CIDR, then the default. No rule file, or no matching line,
//! means allow with no settings.

use std::net::IpAddr;

use control::ControlError;

/// What a matching rule says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleMatch {
    /// Whether the connection is refused.
    pub deny: bool,
    /// Variables set for the connection, in file order.
    pub env: Vec<(String, String)>,
}

impl RuleMatch {
    /// The value of `name` set by the rule, if set.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    Exact(IpAddr),
    Prefix(String),
    Cidr(IpAddr, u8),
    Any,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Pattern,
    result: RuleMatch,
}

/// A parsed rules file.
#[derive(Debug, Clone, Default)]
pub struct TcpRules {
    rules: Vec<Rule>,
}

impl TcpRules {
    /// Parses rules text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &std::path::Path) -> Result<TcpRules, Vec<ControlError>> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok(r) => rules.push(r),
                Err(e) => errors.push(ControlError {
                    path: origin.to_path_buf(),
                    line: Some(i + 1),
                    problem: e.to_string(),
                }),
            }
        }
        if errors.is_empty() {
            Ok(TcpRules { rules })
        } else {
            Err(errors)
        }
    }

    /// The rule for `ip`.
    pub fn lookup(&self, ip: IpAddr) -> RuleMatch {
        let ip = canonical(ip);
        let text = ip.to_string();
        let mut best: Option<(u32, &Rule)> = None;
        for r in &self.rules {
            let score = match &r.pattern {
                Pattern::Exact(a) if *a == ip => Some(1000),
                Pattern::Prefix(p) if text.starts_with(p.as_str()) => Some(p.len() as u32 * 4),
                Pattern::Cidr(net, bits) if in_cidr(ip, *net, *bits) => {
                    // Rank a /24 like the 3-octet prefix `a.b.c.` it stands for.
                    Some(*bits as u32 + 1)
                }
                Pattern::Any => Some(0),
                _ => None,
            };
            if let Some(s) = score {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, r));
                }
            }
        }
        best.map(|(_, r)| r.result.clone()).unwrap_or_default()
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What is wrong with a tcp.smtp line (reported as a [`ControlError`] naming the line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RuleError {
    #[error("`{0}`: expected `address:allow` or `address:deny`")]
    NoAction(String),
    #[error("`{0}`: expected VAR=value")]
    NotAnAssignment(String),
    #[error("`{0}` is not a variable name")]
    NotAVariable(String),
    #[error("`{0}`: bad network address")]
    BadNetwork(String),
    #[error("`{0}`: bad prefix length")]
    BadPrefix(String),
    #[error("`{addr}`: prefix length over {max}")]
    PrefixTooLong { addr: String, max: u8 },
    #[error("`{0}` is not an address, prefix or CIDR block")]
    NotAnAddress(String),
}

fn parse_line(line: &str) -> Result<Rule, RuleError> {
    // The address part ends at the last ':' before the instruction word;
    // IPv6 addresses contain ':' themselves, so split at ":allow"/":deny".
    let lower = line.to_ascii_lowercase();
    let cut = ["allow", "deny"]
        .iter()
        .filter_map(|w| {
            let mut found = None;
            let mut from = 0;
            while let Some(p) = lower[from..].find(&format!(":{w}")) {
                let at = from + p;
                let after = at + 1 + w.len();
                if after == lower.len() || lower.as_bytes()[after] == b',' {
                    found = Some(at);
                }
                from = at + 1;
            }
            found
        })
        .max()
        .ok_or_else(|| RuleError::NoAction(line.to_string()))?;
    let addr = line[..cut].trim();
    let rest = &line[cut + 1..];
    let (word, settings) = match rest.find(',') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, ""),
    };
    let deny = word.trim().eq_ignore_ascii_case("deny");
    let pattern = parse_pattern(addr)?;
    let mut env = Vec::new();
    for s in split_settings(settings) {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| RuleError::NotAnAssignment(s.to_string()))?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(RuleError::NotAVariable(k.to_string()));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        env.push((k.to_string(), v.to_string()));
    }
    Ok(Rule {
        pattern,
        result: RuleMatch { deny, env },
    })
}

/// Splits `A="x,y",B=z` at commas outside quotes.
fn split_settings(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn parse_pattern(addr: &str) -> Result<Pattern, RuleError> {
    if addr.is_empty() {
        return Ok(Pattern::Any);
    }
    if let Some((net, bits)) = addr.split_once('/') {
        let net: IpAddr = net
            .parse()
            .map_err(|_| RuleError::BadNetwork(addr.to_string()))?;
        let bits: u8 = bits
            .parse()
            .map_err(|_| RuleError::BadPrefix(addr.to_string()))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(RuleError::PrefixTooLong {
                addr: addr.to_string(),
                max,
            });
        }
        return Ok(Pattern::Cidr(canonical(net), bits));
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(Pattern::Exact(canonical(ip)));
    }
    let prefix = addr.strip_prefix("::ffff:").unwrap_or(addr);
    if prefix
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
    {
        return Ok(Pattern::Prefix(prefix.to_ascii_lowercase()));
    }
    Err(RuleError::NotAnAddress(addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(t: &str) -> TcpRules {
        TcpRules::parse(t, std::path::Path::new("tcp.smtp")).unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let r = rules(
            "127.:allow,RELAYCLIENT=\"\"\n10.1.1.0/24:deny\n10.1.1.7:allow,MAXPERIP=2\n::1:allow,RELAYCLIENT=\"\"\n:allow,GREYIP=\"127.0.0.1@1999\"\n",
        );
        let lo = r.lookup("127.0.0.1".parse().unwrap());
        assert_eq!(lo.var("RELAYCLIENT"), Some(""));
        assert!(!lo.deny);
        assert!(r.lookup("10.1.1.9".parse().unwrap()).deny);
        let seven = r.lookup("10.1.1.7".parse().unwrap());
        assert_eq!(seven.var("MAXPERIP"), Some("2"));
        assert_eq!(
            r.lookup("::1".parse().unwrap()).var("RELAYCLIENT"),
            Some("")
        );
        assert_eq!(
            r.lookup("::ffff:127.0.0.5".parse().unwrap())
                .var("RELAYCLIENT"),
            Some("")
        );
        let other = r.lookup("192.0.2.1".parse().unwrap());
        assert_eq!(other.var("GREYIP"), Some("127.0.0.1@1999"));
        assert_eq!(other.var("RELAYCLIENT"), None);
    }

    #[test]
    fn no_rules_allows() {
        assert_eq!(
            rules("").lookup("1.2.3.4".parse().unwrap()),
            RuleMatch::default()
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = TcpRules::parse(
            "127.:allow\nbogus line\n1.2.3.4/40:deny\n",
            std::path::Path::new("t"),
        )
        .unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, Some(2));
        assert_eq!(e[1].line, Some(3));
    }
}
