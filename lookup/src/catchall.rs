//! A domain's unknown-user handler: the last argument of vdelivermail in the
//! domain directory's `.qmail-default` (spec 4.6), which `domain add` writes
//! (`| /usr/sbin/vdelivermail '' bounce-no-mailbox`) and `domain mod
//! --handler` changes. Sans-I/O: the text in, a [`Handler`] out;
//! [`crate::Directory::catch_all`] reads the file.
//!
//! Accepted forms (IndiMail's and vpopmail's installers, hand-edited files):
//! `| /usr/sbin/vdelivermail '' <instruction>`, `|/var/vpopmail/bin/vdelivermail "" <instruction>`,
//! `| vfilter '' <instruction>` (vfilter takes the same arguments), with the
//! instruction quoted or not. Comment and blank lines are skipped; the first
//! vdelivermail/vfilter line counts. A `.qmail-default` without such a line
//! holds ordinary dot-qmail lines, which are then the delivery of every
//! address of the domain that has no mailbox ([`Handler::Lines`]).

use std::fmt;

/// What is done with mail for an address of the domain that has no mailbox
/// and no alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// `bounce-no-mailbox`: a permanent failure (550 5.1.1 at RCPT).
    Bounce,
    /// `delete`: accepted and discarded.
    Delete,
    /// `user@domain`: forwarded to that address.
    Forward(String),
    /// `/path`: delivered to that Maildir. As vdelivermail does, a path not
    /// naming a Maildir (a user's home) gets `/Maildir/` appended.
    Maildir(String),
    /// `domain:ip:port`: handed to that SMTP server (IndiMail's SMTPROUTE).
    Relay {
        /// The route's domain field (informational, as in `smtproutes`).
        domain: String,
        /// The server's address.
        host: String,
        /// Its port.
        port: u16,
    },
    /// No vdelivermail line: these dot-qmail lines are the delivery.
    Lines(Vec<String>),
}

impl Handler {
    /// Parses vdelivermail's instruction argument (quotes already removed).
    pub fn parse_instruction(h: &str) -> Result<Handler, String> {
        let bad = || {
            format!(
                "bad handler {h:?}: expected bounce-no-mailbox, delete, /path/to/Maildir, \
                 user@domain or domain:ip:port"
            )
        };
        if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control() || c == '\'') {
            return Err(bad());
        }
        Ok(match h {
            "bounce-no-mailbox" => Handler::Bounce,
            "delete" => Handler::Delete,
            _ if h.starts_with('/') => {
                if h.contains("/../") || h.ends_with("/..") {
                    return Err(bad());
                }
                let dir = if h.ends_with("/Maildir") || h.ends_with("/Maildir/") {
                    h.trim_end_matches('/').to_string() + "/"
                } else if h.contains("/Maildir/") {
                    // A folder inside a Maildir (`.../Maildir/.Catch/`).
                    h.trim_end_matches('/').to_string() + "/"
                } else {
                    h.trim_end_matches('/').to_string() + "/Maildir/"
                };
                Handler::Maildir(dir)
            }
            _ if h.contains('@') => {
                crate::Address::parse(h).map_err(|_| bad())?;
                Handler::Forward(h.to_string())
            }
            _ => {
                let mut parts = h.splitn(3, ':');
                let (Some(domain), Some(host), Some(port)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad());
                };
                let port = port.parse::<u16>().map_err(|_| bad())?;
                if host.is_empty() || port == 0 {
                    return Err(bad());
                }
                Handler::Relay {
                    domain: domain.to_string(),
                    host: host.to_string(),
                    port,
                }
            }
        })
    }

    /// Parses a whole `.qmail-default`. An error is `(line number, reason)`.
    pub fn parse(text: &str) -> Result<Handler, (usize, String)> {
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if let Some(args) = vdelivermail_args(t) {
                let instruction = match args.as_slice() {
                    [_, i] => unquote(i),
                    [i] => unquote(i),
                    _ => {
                        return Err((
                            n + 1,
                            format!("expected \"| vdelivermail '' <instruction>\", got {t:?}"),
                        ))
                    }
                };
                return Handler::parse_instruction(instruction).map_err(|e| (n + 1, e));
            }
            lines.push(line.to_string());
        }
        if lines.is_empty() {
            // An empty file: IndiMail's default.
            return Ok(Handler::Bounce);
        }
        Ok(Handler::Lines(lines))
    }

    /// The instruction word as vdelivermail takes it (`domain mod` shows it).
    pub fn instruction(&self) -> String {
        match self {
            Handler::Bounce => "bounce-no-mailbox".into(),
            Handler::Delete => "delete".into(),
            Handler::Forward(a) => a.clone(),
            Handler::Maildir(d) => d.clone(),
            Handler::Relay { domain, host, port } => format!("{domain}:{host}:{port}"),
            Handler::Lines(l) => l.join(" / "),
        }
    }

    /// Whether mail for addresses without a mailbox is accepted (RCPT
    /// answers 250 for any address of the domain).
    pub fn accepts(&self) -> bool {
        *self != Handler::Bounce
    }
}

impl fmt::Display for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.instruction())
    }
}

/// The line `domain add` and `domain mod --handler` write.
pub fn qmail_default_line(instruction: &str) -> String {
    format!("| /usr/sbin/vdelivermail '' {instruction}")
}

/// The arguments after the program when `line` runs vdelivermail or vfilter.
fn vdelivermail_args(line: &str) -> Option<Vec<&str>> {
    let cmd = line.strip_prefix('|')?.trim_start();
    let mut words = cmd.split_whitespace();
    let prog = words.next()?;
    let name = prog.rsplit('/').next().unwrap_or(prog);
    matches!(name, "vdelivermail" | "vfilter").then(|| words.collect())
}

fn unquote(s: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_indimail_writes_and_variants() {
        let p = |t: &str| Handler::parse(t);
        assert_eq!(
            p("| /usr/sbin/vdelivermail '' bounce-no-mailbox\n"),
            Ok(Handler::Bounce)
        );
        assert_eq!(
            p("|/home/vpopmail/bin/vdelivermail \"\" delete"),
            Ok(Handler::Delete)
        );
        assert_eq!(
            p("# catch-all\n| /usr/sbin/vfilter '' 'all@example.org'\n"),
            Ok(Handler::Forward("all@example.org".into()))
        );
        assert_eq!(
            p("| /usr/sbin/vdelivermail '' /m/A2E/example.com/catch"),
            Ok(Handler::Maildir("/m/A2E/example.com/catch/Maildir/".into()))
        );
        assert_eq!(
            p("| /usr/sbin/vdelivermail '' /var/catch/Maildir"),
            Ok(Handler::Maildir("/var/catch/Maildir/".into()))
        );
        assert_eq!(
            p("| vdelivermail '' /var/catch/Maildir/.Junk/"),
            Ok(Handler::Maildir("/var/catch/Maildir/.Junk/".into()))
        );
        assert_eq!(
            p("| /usr/sbin/vdelivermail '' example.com:10.0.0.1:2525"),
            Ok(Handler::Relay {
                domain: "example.com".into(),
                host: "10.0.0.1".into(),
                port: 2525
            })
        );
        assert_eq!(p(""), Ok(Handler::Bounce));
        assert_eq!(
            p("&all@example.org\n./Maildir/\n"),
            Ok(Handler::Lines(vec![
                "&all@example.org".into(),
                "./Maildir/".into()
            ]))
        );
    }

    #[test]
    fn bad_lines_name_the_line() {
        let (n, e) = Handler::parse("#x\n| /usr/sbin/vdelivermail ''\n").unwrap_err();
        assert!(n == 2 && e.starts_with("bad handler"), "{e}");
        let (n, e) = Handler::parse("| vdelivermail '' rm -rf /").unwrap_err();
        assert!(n == 1 && e.starts_with("expected"), "{e}");
        assert!(Handler::parse_instruction("a b").is_err());
        assert!(Handler::parse_instruction("x:y").is_err());
        assert!(Handler::parse_instruction("d:h:99999").is_err());
        assert!(Handler::parse_instruction("/a/../etc").is_err());
        assert!(Handler::parse_instruction("not@an@address").is_err());
        assert_eq!(
            qmail_default_line("delete"),
            "| /usr/sbin/vdelivermail '' delete"
        );
        assert!(!Handler::Bounce.accepts() && Handler::Delete.accepts());
    }
}
