//! `smtproutes` (spec 3.3): static routes by recipient domain.
//!
//! ```text
//! domain:relay[:port[:penalty:max_tolerance]][ SP user SP password[ SP envstr]]
//! ```
//! Empty domain = default route; `.domain` = its subdomains; empty relay
//! = use MX; `!@` = route for null-sender mail. Lookup follows
//! qmail-remote: the whole domain, then each `.suffix`, then the empty
//! (default) entry.

use std::collections::HashMap;

/// SMTP's port.
pub const SMTP_PORT: u16 = 25;
/// SMTPS (implicit TLS) port.
pub const SMTPS_PORT: u16 = 465;

/// Where to send mail for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The relay host (name or `[ip]` / ip); `None` = look up MX.
    pub relay: Option<String>,
    /// Port (25 unless given; 465 means implicit TLS).
    pub port: u16,
    /// Minimum backoff (penalty) in seconds, if given on the line.
    pub penalty: Option<u64>,
    /// Max tolerance in seconds, if given on the line.
    pub max_tolerance: Option<u64>,
    /// AUTH credentials (`user password[ envstr]` after the route).
    pub credentials: Option<Credentials>,
}

/// What the AUTH client sends a relay (qmail-remote's `smtproutes` credentials): the client
/// core's type; [`parse_credentials`] reads it from a route line.
pub use smtp_proto::client::{Credentials, AUTH_MECHANISMS};

/// Parses `user password[ envstr]`, envstr being `VAR=val,VAR2=,...`. Of the variables,
/// `AUTH_SMTP` (a mechanism, or empty for the best offered) and `SECURE_AUTH` act here;
/// another is an error rather than silently ignored, as are the `remote_auth` lookups
/// (`/s`, `/r`, `/<token>`), which this server does not have.
pub fn parse_credentials(text: &str) -> Result<Credentials, RouteProblem> {
    let mut words = text.split_whitespace();
    let user = words.next().unwrap_or_default();
    if user.starts_with('/') {
        return Err(RouteProblem::RemoteAuthLookup(user.to_string()));
    }
    let password = words
        .next()
        .ok_or_else(|| RouteProblem::NoPassword(user.to_string()))?;
    let mut c = Credentials {
        user: user.to_string(),
        password: password.to_string(),
        mechanism: None,
        require_tls: false,
    };
    for assign in words.flat_map(|w| w.split(',')).filter(|a| !a.is_empty()) {
        let (k, v) = assign.split_once('=').unwrap_or((assign, ""));
        match k {
            "AUTH_SMTP" if v.is_empty() => c.mechanism = None,
            "AUTH_SMTP" => {
                let m = v.to_ascii_uppercase();
                if !AUTH_MECHANISMS.contains(&m.as_str()) {
                    return Err(RouteProblem::UnknownMechanism(v.to_string()));
                }
                c.mechanism = Some(m);
            }
            "SECURE_AUTH" => c.require_tls = true,
            other => return Err(RouteProblem::UnsupportedEnvVar(other.to_string())),
        }
    }
    Ok(c)
}

impl Route {
    /// A route to a relay host and port.
    pub fn relay(host: &str, port: u16) -> Route {
        Route {
            relay: Some(host.to_string()),
            port,
            penalty: None,
            max_tolerance: None,
            credentials: None,
        }
    }

    /// Whether the port means implicit TLS.
    pub fn implicit_tls(&self) -> bool {
        self.port == SMTPS_PORT
    }
}

/// A malformed `smtproutes` line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct RouteError {
    /// File name.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: RouteProblem,
}

/// What is wrong with one route line (or its credentials), or with the file holding them.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RouteProblem {
    /// The file exists but cannot be read (line 0).
    #[error("{0}")]
    Unreadable(std::sync::Arc<std::io::Error>),
    /// The credentials name a `remote_auth` lookup this server does not have.
    #[error(
        "`{0}`: remote_auth lookups (/s, /r, /<token>) are not supported; \
         give `user password` on the line"
    )]
    RemoteAuthLookup(String),
    /// A user with no password after it.
    #[error("user `{0}` has no password")]
    NoPassword(String),
    /// `AUTH_SMTP=` names a mechanism the client does not speak.
    #[error("AUTH_SMTP={0}: not a mechanism this client speaks ({mechs})", mechs = AUTH_MECHANISMS.join(", "))]
    UnknownMechanism(String),
    /// A variable in the envstr other than `AUTH_SMTP` and `SECURE_AUTH`.
    #[error("`{0}` in the route's envstr is not supported")]
    UnsupportedEnvVar(String),
    /// No `:` between domain and relay; holds the whole line.
    #[error("missing ':' in {0:?}")]
    MissingColon(String),
    /// A `[` around the relay with no `]`.
    #[error("unclosed '[' in relay")]
    UnclosedBracket,
    /// A numeric field that is not a number: the field's name and its text.
    #[error("bad {what} {value:?}")]
    BadNumber {
        /// `port`, `penalty` or `max_tolerance`.
        what: &'static str,
        /// The text found.
        value: String,
    },
    /// A port outside 1..=65535.
    #[error("bad port {0}")]
    PortOutOfRange(u64),
    /// A field after `max_tolerance`.
    #[error("unexpected field {0:?}")]
    UnexpectedField(String),
}

/// Parsed `smtproutes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmtpRoutes {
    map: HashMap<String, Route>,
}

impl SmtpRoutes {
    /// Parses the file text; every bad line is reported. `file` names the
    /// source in errors. Duplicate domains: the first line wins (qmail's
    /// constmap does the same).
    pub fn parse(file: &str, text: &str) -> Result<SmtpRoutes, Vec<RouteError>> {
        let mut map = HashMap::new();
        let mut errors = Vec::new();
        for (lineno, line) in control::split_lines(text.as_bytes()) {
            match parse_line(&line) {
                Ok((domain, route)) => {
                    map.entry(domain).or_insert(route);
                }
                Err(reason) => errors.push(RouteError {
                    file: file.to_string(),
                    line: lineno,
                    reason,
                }),
            }
        }
        if errors.is_empty() {
            Ok(SmtpRoutes { map })
        } else {
            Err(errors)
        }
    }

    /// Reads `smtproutes` from a path; a missing file is an empty table.
    pub fn load(path: &std::path::Path) -> Result<SmtpRoutes, Vec<RouteError>> {
        match std::fs::read_to_string(path) {
            Ok(t) => SmtpRoutes::parse(&path.display().to_string(), &t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SmtpRoutes::default()),
            Err(e) => Err(vec![RouteError {
                file: path.display().to_string(),
                line: 0,
                reason: RouteProblem::Unreadable(e.into()),
            }]),
        }
    }

    /// The route for `domain` (lowercased by the caller or not: compared
    /// case-insensitively). `null_sender` first consults `!@`.
    pub fn lookup(&self, domain: &str, null_sender: bool) -> Option<&Route> {
        if null_sender {
            if let Some(r) = self.map.get("!@") {
                return Some(r);
            }
        }
        let d = domain.to_ascii_lowercase();
        let d = d.trim_end_matches('.');
        if let Some(r) = self.map.get(d) {
            return Some(r);
        }
        for (i, c) in d.char_indices() {
            if c == '.' {
                if let Some(r) = self.map.get(&d[i..]) {
                    return Some(r);
                }
            }
        }
        self.map.get("")
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Parses one `domain:relay[:port[:penalty:max_tolerance]][ SP creds]`
/// (also the value of `SMTPROUTE`).
pub fn parse_line(line: &str) -> Result<(String, Route), RouteProblem> {
    let (spec, creds) = match line.split_once(' ') {
        Some((s, c)) if !c.trim().is_empty() => (s, Some(parse_credentials(c)?)),
        Some((s, _)) => (s, None),
        None => (line, None),
    };
    // `!@` contains no colon, so the domain is everything before the first one.
    let (domain, rest) = spec
        .split_once(':')
        .ok_or_else(|| RouteProblem::MissingColon(line.to_string()))?;
    let (relay, rest) = if let Some(r) = rest.strip_prefix('[') {
        // [ipv6] or [ip]: keep the brackets' content, colons and all.
        let end = r.find(']').ok_or(RouteProblem::UnclosedBracket)?;
        let after = &r[end + 1..];
        let after = after.strip_prefix(':').unwrap_or(after);
        (r[..end].to_string(), after)
    } else {
        match rest.split_once(':') {
            Some((h, a)) => (h.to_string(), a),
            None => (rest.to_string(), ""),
        }
    };
    let mut fields = rest.split(':');
    let num = |s: Option<&str>, what: &'static str| -> Result<Option<u64>, RouteProblem> {
        match s {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| RouteProblem::BadNumber {
                    what,
                    value: v.to_string(),
                }),
        }
    };
    let port = match num(fields.next(), "port")? {
        None => SMTP_PORT,
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => return Err(RouteProblem::PortOutOfRange(p)),
    };
    let penalty = num(fields.next(), "penalty")?;
    let max_tolerance = num(fields.next(), "max_tolerance")?;
    if let Some(extra) = fields.next() {
        return Err(RouteProblem::UnexpectedField(extra.to_string()));
    }
    Ok((
        domain.to_ascii_lowercase(),
        Route {
            relay: Some(relay).filter(|r| !r.is_empty()),
            port,
            penalty,
            max_tolerance,
            credentials: creds,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let t = "# comment\n\
                 example.com:relay.example.net\n\
                 .example.org:[10.0.0.1]:2525:60:30\n\
                 big.example.org:\n\
                 :default.example.net:587 user secret\n\
                 !@:bounces.example.net:26\n\
                 v6.example:[::1]:2526\n";
        let r = SmtpRoutes::parse("smtproutes", t).unwrap();
        assert_eq!(
            r.lookup("EXAMPLE.com", false),
            Some(&Route::relay("relay.example.net", 25))
        );
        let sub = r.lookup("a.b.example.org", false).unwrap();
        assert_eq!(sub.relay.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            (sub.port, sub.penalty, sub.max_tolerance),
            (2525, Some(60), Some(30))
        );
        // The exact entry beats the wildcard; its empty relay means MX.
        assert_eq!(r.lookup("big.example.org", false).unwrap().relay, None);
        // example.org itself is not covered by .example.org: default route.
        let d = r.lookup("example.org", false).unwrap();
        assert_eq!(
            (d.relay.as_deref(), d.port),
            (Some("default.example.net"), 587)
        );
        let c = d.credentials.as_ref().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("user", "secret"));
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(r.lookup("example.com", true).unwrap().port, 26);
        assert_eq!(
            r.lookup("v6.example", false).unwrap().relay.as_deref(),
            Some("::1")
        );
        assert!(Route::relay("x", 465).implicit_tls());
    }

    #[test]
    fn credentials_and_their_envstr() {
        let (_, r) = parse_line("x:relay:587 u p AUTH_SMTP=login,SECURE_AUTH=").unwrap();
        let c = r.credentials.unwrap();
        assert_eq!(c.mechanism.as_deref(), Some("LOGIN"));
        assert!(c.require_tls);
        assert!(parse_line("x:relay u")
            .unwrap_err()
            .to_string()
            .contains("no password"));
        assert!(parse_line("x:relay /s")
            .unwrap_err()
            .to_string()
            .contains("remote_auth"));
        assert!(parse_line("x:relay u p FOO=1")
            .unwrap_err()
            .to_string()
            .contains("FOO"));
        assert!(parse_line("x:relay u p AUTH_SMTP=CRAM-MD5")
            .unwrap_err()
            .to_string()
            .contains("CRAM-MD5"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = SmtpRoutes::parse(
            "smtproutes",
            "ok.com:r\nbad\nx.com:r:99999\ny.com:r:25:a:1\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].line, 2);
        assert!(e[1].to_string().starts_with("smtproutes:3: bad port"));
        assert!(e[2].reason.to_string().contains("penalty"));
    }

    #[test]
    fn no_default() {
        let r = SmtpRoutes::parse("f", "a.com:b\n").unwrap();
        assert_eq!(r.lookup("c.com", false), None);
    }
}
