//! Parsing of one command line (RFC 5321 section 4.1) into a [`Command`], including the MAIL
//! parameters of RFC 1870 (SIZE), RFC 6152 (BODY), RFC 6531 (SMTPUTF8) and RFC 4954 (AUTH=).
//!
//! Parsing is pure: whether a command is allowed in the current state is the session's business.

use crate::address::{self, AddressError, ForwardPath, ReversePath};
use crate::reply::Reply;

/// BODY= values of MAIL (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Parameters accepted on MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailParams {
    /// `SIZE=n`: the client's estimate of the message size (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8` was given (RFC 6531): UTF-8 addresses and headers allowed.
    pub smtputf8: bool,
    /// `AUTH=` xtext as given (RFC 4954 section 5), not decoded.
    pub auth: Option<String>,
}

/// Parameters accepted on RCPT TO. None are supported yet (no DSN); the struct exists so that
/// NOTIFY/ORCPT can be added without changing [`crate::Event::Rcpt`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RcptParams {}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`.
    Helo(String),
    /// `EHLO domain`.
    Ehlo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(ReversePath, MailParams),
    /// `RCPT TO:<path> [params]`.
    Rcpt(ForwardPath, RcptParams),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets that follow the command line.
        size: u64,
        /// `LAST` was given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The mechanism name, upper-cased.
        mechanism: String,
        /// The initial response as sent (base64, or `=` for an empty one).
        initial: Option<String>,
    },
    /// `ETRN node` (RFC 1985): the argument as given, trimmed; the session checks it.
    Etrn(String),
    /// `ATRN [domain[,domain]*]` (RFC 2645): the argument as given, trimmed (may be empty);
    /// the session checks it.
    Atrn(String),
    /// A known verb this server does not implement (EXPN, TURN).
    NotImplemented,
}

/// The node an `ETRN` asks for (RFC 1985 section 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtrnNode {
    /// `ETRN example.com`: that domain (lower-cased).
    Domain(String),
    /// `ETRN @example.com`: the domain and its subdomains (lower-cased, without the `@`).
    Subdomains(String),
    /// `ETRN #name`: a queue named by the server (case kept, without the `#`).
    Queue(String),
}

/// Checks a domain name: dot-separated labels of letters, digits and `-` (not at either end
/// of a label), at most 255 octets. Returns it lower-cased.
fn domain_name(s: &str) -> Option<String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then(|| s.to_ascii_lowercase())
}

/// The argument of `ETRN`: `domain`, `@domain` or `#queue` (RFC 1985 section 5).
pub(crate) fn parse_etrn_node(arg: &str) -> Result<EtrnNode, CommandError> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Err(CommandError::Syntax("ETRN needs a node name"));
    }
    if arg.contains(' ') {
        return Err(CommandError::Syntax("ETRN takes one node name"));
    }
    let bad = CommandError::Syntax("bad node name");
    if let Some(q) = arg.strip_prefix('#') {
        let ok = !q.is_empty()
            && q.len() <= 255
            && q.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        return if ok {
            Ok(EtrnNode::Queue(q.to_string()))
        } else {
            Err(bad)
        };
    }
    if let Some(d) = arg.strip_prefix('@') {
        return domain_name(d).map(EtrnNode::Subdomains).ok_or(bad);
    }
    domain_name(arg).map(EtrnNode::Domain).ok_or(bad)
}

/// The argument of `ATRN`: empty (every domain the client may turn) or a comma-separated list
/// of domains (RFC 2645 section 4.2). Returns them lower-cased, without duplicates.
pub(crate) fn parse_atrn_domains(arg: &str) -> Result<Vec<String>, CommandError> {
    let arg = arg.trim();
    if arg.is_empty() {
        return Ok(Vec::new());
    }
    if arg.contains(' ') {
        return Err(CommandError::Syntax("ATRN takes one comma-separated list"));
    }
    let mut out: Vec<String> = Vec::new();
    for d in arg.split(',') {
        let d = domain_name(d).ok_or(CommandError::Syntax("bad domain in ATRN"))?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

/// What the server supports, as far as parsing MAIL parameters is concerned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extensions {
    pub smtputf8: bool,
    pub eightbitmime: bool,
    pub max_size: u64,
}

/// Why a command line was refused. Each maps to one reply (see [`CommandError::reply`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Unknown verb: 500 5.5.1.
    #[error("unknown command")]
    Unknown,
    /// Bad or missing arguments: 501 5.5.4.
    #[error("syntax error in arguments: {0}")]
    Syntax(&'static str),
    /// The line is not UTF-8: 500 5.5.2.
    #[error("command line is not valid UTF-8")]
    NotUtf8,
    /// Bad sender path: 501 5.1.7 (553 5.6.7 for non-ASCII without SMTPUTF8).
    #[error("bad sender address: {0}")]
    Sender(AddressError),
    /// Bad recipient path: 501 5.1.3 (553 5.6.7 for non-ASCII without SMTPUTF8).
    #[error("bad recipient address: {0}")]
    Recipient(AddressError),
    /// Unknown or unadvertised MAIL/RCPT parameter: 555 5.5.4.
    #[error("unsupported parameter")]
    UnknownParameter,
    /// SIZE= larger than the maximum: 552 5.3.4.
    #[error("declared size exceeds the maximum")]
    SizeExceeded,
}

impl CommandError {
    /// The reply that reports this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => Reply::new(500, Some((5, 5, 1)), "Command unrecognized"),
            CommandError::Syntax(what) => {
                Reply::new(501, Some((5, 5, 4)), format!("Syntax error: {what}"))
            }
            CommandError::NotUtf8 => {
                Reply::new(500, Some((5, 5, 2)), "Invalid characters in command")
            }
            CommandError::Sender(AddressError::NonAscii)
            | CommandError::Recipient(AddressError::NonAscii) => {
                Reply::new(553, Some((5, 6, 7)), "Non-ASCII addresses require SMTPUTF8")
            }
            CommandError::Sender(e) => Reply::new(
                501,
                Some((5, 1, 7)),
                format!("Bad sender address syntax: {e}"),
            ),
            CommandError::Recipient(e) => Reply::new(
                501,
                Some((5, 1, 3)),
                format!("Bad recipient address syntax: {e}"),
            ),
            CommandError::UnknownParameter => {
                Reply::new(555, Some((5, 5, 4)), "Unsupported parameter")
            }
            CommandError::SizeExceeded => Reply::new(
                552,
                Some((5, 3, 4)),
                "Message size exceeds fixed maximum message size",
            ),
        }
    }
}

/// Parses one command line without its CRLF.
pub(crate) fn parse(line: &[u8], ext: Extensions) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(CommandError::NotUtf8);
    }
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_arg = |cmd: Command| {
        if arg.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::Syntax("no parameters allowed"))
        }
    };
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "HELO" | "EHLO" => {
            let host = arg.trim();
            if host.is_empty() {
                return Err(CommandError::Syntax("HELO/EHLO needs a domain"));
            }
            // EHLO may carry trailing junk from some clients; keep only the first word.
            let host = host.split(' ').next().unwrap_or(host).to_string();
            Ok(if upper == "EHLO" {
                Command::Ehlo(host)
            } else {
                Command::Helo(host)
            })
        }
        "MAIL" => mail(arg, ext),
        "RCPT" => rcpt(arg, ext),
        "DATA" => no_arg(Command::Data),
        "BDAT" => bdat(arg),
        "RSET" => no_arg(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(Command::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            let a = arg.trim();
            if a.is_empty() {
                Err(CommandError::Syntax("VRFY needs an argument"))
            } else {
                Ok(Command::Vrfy(a.to_string()))
            }
        }
        "STARTTLS" => no_arg(Command::StartTls),
        "AUTH" => auth(arg),
        "ETRN" => Ok(Command::Etrn(arg.trim().to_string())),
        "ATRN" => Ok(Command::Atrn(arg.trim().to_string())),
        "EXPN" | "TURN" => Ok(Command::NotImplemented),
        _ => Err(CommandError::Unknown),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn mail(arg: &str, ext: Extensions) -> Result<Command, CommandError> {
    let rest = strip_prefix_ci(arg, "FROM:")
        .ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, rest) = address::parse_reverse_path(rest, true).map_err(CommandError::Sender)?;
    let mut params = MailParams::default();
    for (key, value) in esmtp_params(rest, ext.smtputf8)? {
        let dup = || CommandError::Syntax("duplicate parameter");
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => {
                let v = value.ok_or(CommandError::Syntax("SIZE needs a value"))?;
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::Syntax("bad SIZE value"));
                }
                let n: u64 = v
                    .parse()
                    .map_err(|_| CommandError::Syntax("bad SIZE value"))?;
                if params.size.replace(n).is_some() {
                    return Err(dup());
                }
            }
            "BODY" => {
                let v = value.ok_or(CommandError::Syntax("BODY needs a value"))?;
                let body = if v.eq_ignore_ascii_case("7BIT") {
                    Body::SevenBit
                } else if v.eq_ignore_ascii_case("8BITMIME") && ext.eightbitmime {
                    Body::EightBitMime
                } else if v.eq_ignore_ascii_case("BINARYMIME") || v.eq_ignore_ascii_case("8BITMIME")
                {
                    // Defined values of extensions we do not advertise.
                    return Err(CommandError::UnknownParameter);
                } else {
                    return Err(CommandError::Syntax("bad BODY value"));
                };
                if params.body.replace(body).is_some() {
                    return Err(dup());
                }
            }
            "SMTPUTF8" if ext.smtputf8 => {
                if value.is_some() {
                    return Err(CommandError::Syntax("SMTPUTF8 takes no value"));
                }
                if std::mem::replace(&mut params.smtputf8, true) {
                    return Err(dup());
                }
            }
            "AUTH" => {
                let v = value.ok_or(CommandError::Syntax("AUTH needs a value"))?;
                if params.auth.replace(v.to_string()).is_some() {
                    return Err(dup());
                }
            }
            _ => return Err(CommandError::UnknownParameter),
        }
    }
    if let ReversePath::Mailbox(m) = &path {
        if !params.smtputf8 && m.is_utf8() {
            return Err(CommandError::Sender(AddressError::NonAscii));
        }
    }
    if let Some(size) = params.size {
        if ext.max_size > 0 && size > ext.max_size {
            return Err(CommandError::SizeExceeded);
        }
    }
    Ok(Command::Mail(path, params))
}

fn rcpt(arg: &str, ext: Extensions) -> Result<Command, CommandError> {
    let rest =
        strip_prefix_ci(arg, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    // Whether UTF-8 is allowed depends on the MAIL command; the session checks that.
    let (path, rest) = address::parse_forward_path(rest, true).map_err(CommandError::Recipient)?;
    if let Some((_key, _value)) = esmtp_params(rest, ext.smtputf8)?.next() {
        return Err(CommandError::UnknownParameter);
    }
    Ok(Command::Rcpt(path, RcptParams::default()))
}

/// `AUTH mechanism [initial-response]`; mechanism names are RFC 4422 `sasl-mech`
/// (1 to 20 of upper-case letters, digits, `-` and `_`; accepted in any case).
fn auth(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?;
    if mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CommandError::Syntax("bad mechanism name"));
    }
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many AUTH arguments"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

fn bdat(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .ok_or(CommandError::Syntax("BDAT needs a size"))?;
    if size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("bad BDAT size"));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| CommandError::Syntax("bad BDAT size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected LAST")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many BDAT arguments"));
    }
    Ok(Command::Bdat { size, last })
}

/// Splits `SP keyword[=value]` parameters (RFC 5321 4.1.2 esmtp-param; values may hold UTF-8
/// under SMTPUTF8, RFC 6531 3.3).
fn esmtp_params(
    rest: &str,
    utf8: bool,
) -> Result<impl Iterator<Item = (&str, Option<&str>)>, CommandError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::Syntax("garbage after address"));
    }
    let mut out = Vec::new();
    for p in rest.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.find('=') {
            Some(i) => (&p[..i], Some(&p[i + 1..])),
            None => (p, None),
        };
        let key_ok = k.starts_with(|c: char| c.is_ascii_alphanumeric())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let val_ok = v.is_none_or(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| (c.is_ascii_graphic() && c != '=') || (utf8 && !c.is_ascii()))
        });
        if !key_ok || !val_ok {
            return Err(CommandError::Syntax("bad parameter"));
        }
        out.push((k, v));
    }
    Ok(out.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXT: Extensions = Extensions {
        smtputf8: true,
        eightbitmime: true,
        max_size: 1000,
    };

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(s.as_bytes(), EXT)
    }

    #[test]
    fn verbs() {
        assert_eq!(
            p("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(p("HELO [1.2.3.4]"), Ok(Command::Helo("[1.2.3.4]".into())));
        assert_eq!(
            p("EHLO"),
            Err(CommandError::Syntax("HELO/EHLO needs a domain"))
        );
        assert_eq!(p("DaTa"), Ok(Command::Data));
        assert!(matches!(p("DATA x"), Err(CommandError::Syntax(_))));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("RSET"), Ok(Command::Rset));
        assert_eq!(p("HELP"), Ok(Command::Help));
        assert_eq!(p("VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert!(matches!(p("VRFY"), Err(CommandError::Syntax(_))));
        assert_eq!(p("EXPN list"), Ok(Command::NotImplemented));
        assert_eq!(
            p("etrn example.com"),
            Ok(Command::Etrn("example.com".into()))
        );
        assert_eq!(p("ETRN"), Ok(Command::Etrn(String::new())));
        assert_eq!(
            p("ATRN a.example,b.example"),
            Ok(Command::Atrn("a.example,b.example".into()))
        );
        assert_eq!(p("atrn"), Ok(Command::Atrn(String::new())));
        assert_eq!(p("starttls"), Ok(Command::StartTls));
        assert!(matches!(p("STARTTLS now"), Err(CommandError::Syntax(_))));
        assert_eq!(
            p("auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            p("AUTH CRAM-MD5"),
            Ok(Command::Auth {
                mechanism: "CRAM-MD5".into(),
                initial: None
            })
        );
        assert!(matches!(p("AUTH"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("AUTH PLAIN a b"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("AUTH PL@IN"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            p("AUTH ABCDEFGHIJKLMNOPQRSTU"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(p("XYZZY"), Err(CommandError::Unknown));
        assert_eq!(p(""), Err(CommandError::Unknown));
        assert_eq!(parse(b"NOOP \xff", EXT), Err(CommandError::NotUtf8));
        assert_eq!(p("NOOP \u{1}"), Err(CommandError::NotUtf8));
    }

    #[test]
    fn bdat_args() {
        assert_eq!(
            p("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            p("bdat 42"),
            Ok(Command::Bdat {
                size: 42,
                last: false
            })
        );
        assert!(matches!(p("BDAT"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("BDAT -1"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            p("BDAT 99999999999999999999999"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(p("BDAT 1 FIRST"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("BDAT 1 LAST x"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn mail_params() {
        let Ok(Command::Mail(ReversePath::Null, params)) =
            p("MAIL FROM:<> SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>")
        else {
            panic!()
        };
        assert_eq!(params.size, Some(100));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8);
        assert_eq!(params.auth.as_deref(), Some("<>"));
        assert_eq!(p("MAIL FROM:<> SIZE=1001"), Err(CommandError::SizeExceeded));
        assert!(matches!(
            p("MAIL FROM:<> SIZE=x"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> SIZE=1 SIZE=2"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<> BODY=9BIT"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            p("MAIL FROM:<> BODY=BINARYMIME"),
            Err(CommandError::UnknownParameter)
        );
        assert_eq!(
            p("MAIL FROM:<> RET=HDRS"),
            Err(CommandError::UnknownParameter)
        );
        assert!(matches!(
            p("MAIL FROM:<> SMTPUTF8=1"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<>SIZE=1"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(p("MAIL FROM:<> =x"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("MAIL TO:<>"), Err(CommandError::Syntax(_))));
        assert!(matches!(
            p("MAIL FROM:<a@b.c> SIZE=1"),
            Ok(Command::Mail(..))
        ));
        assert!(matches!(p("mail from: <a@b.c>"), Ok(Command::Mail(..))));
        assert_eq!(
            p("MAIL FROM:<jö@b.c>"),
            Err(CommandError::Sender(AddressError::NonAscii))
        );
        assert!(matches!(
            p("MAIL FROM:<jö@b.c> SMTPUTF8"),
            Ok(Command::Mail(..))
        ));
        let no_utf8 = Extensions {
            smtputf8: false,
            eightbitmime: false,
            max_size: 0,
        };
        assert_eq!(
            parse(b"MAIL FROM:<> SMTPUTF8", no_utf8),
            Err(CommandError::UnknownParameter)
        );
        assert_eq!(
            parse(b"MAIL FROM:<> BODY=8BITMIME", no_utf8),
            Err(CommandError::UnknownParameter)
        );
        assert!(parse(b"MAIL FROM:<> SIZE=99999999", no_utf8).is_ok());
    }

    #[test]
    fn rcpt_params() {
        assert!(matches!(p("RCPT TO:<a@b.c>"), Ok(Command::Rcpt(..))));
        assert_eq!(
            p("RCPT TO:<a@b.c> NOTIFY=NEVER"),
            Err(CommandError::UnknownParameter)
        );
        assert_eq!(
            p("RCPT TO:<>"),
            Err(CommandError::Recipient(AddressError::NullNotAllowed))
        );
        assert_eq!(
            p("RCPT TO:<postmaster>"),
            Ok(Command::Rcpt(ForwardPath::Postmaster, RcptParams {}))
        );
        assert_eq!(p("RCPT TO:<a@b.c>").unwrap_err_or_reply(), 250);
    }

    trait Code {
        fn unwrap_err_or_reply(self) -> u16;
    }
    impl Code for Result<Command, CommandError> {
        fn unwrap_err_or_reply(self) -> u16 {
            self.map(|_| 250).unwrap_or_else(|e| e.reply().code())
        }
    }

    #[test]
    fn error_replies() {
        assert_eq!(
            CommandError::Unknown.reply().to_wire(),
            b"500 5.5.1 Command unrecognized\r\n"
        );
        assert_eq!(CommandError::UnknownParameter.reply().code(), 555);
        assert_eq!(CommandError::SizeExceeded.reply().code(), 552);
        assert_eq!(
            CommandError::Sender(AddressError::NonAscii).reply().code(),
            553
        );
        assert_eq!(
            CommandError::Recipient(AddressError::Domain).reply().code(),
            501
        );
    }

    #[test]
    fn etrn_and_atrn_arguments() {
        assert_eq!(
            parse_etrn_node(" Example.COM "),
            Ok(EtrnNode::Domain("example.com".into()))
        );
        assert_eq!(
            parse_etrn_node("@example.com"),
            Ok(EtrnNode::Subdomains("example.com".into()))
        );
        assert_eq!(
            parse_etrn_node("#Queue_1"),
            Ok(EtrnNode::Queue("Queue_1".into()))
        );
        for bad in [
            "",
            "a b",
            "-x.example",
            "x..example",
            "@",
            "#",
            "#a b",
            "ex@mple",
            "x_y.example",
        ] {
            assert!(parse_etrn_node(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_atrn_domains(""), Ok(vec![]));
        assert_eq!(
            parse_atrn_domains("A.example,b.example,a.example"),
            Ok(vec!["a.example".to_string(), "b.example".to_string()])
        );
        for bad in [
            "a.example,",
            ",a.example",
            "a.example b.example",
            "a,,b",
            "a!b",
        ] {
            assert!(parse_atrn_domains(bad).is_err(), "{bad:?}");
        }
    }
}
