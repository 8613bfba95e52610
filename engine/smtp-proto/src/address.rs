//! Mailbox and path syntax of RFC 5321 section 4.1.2, with the UTF-8 extension of RFC 6531
//! section 3.3 (only when the transaction announced SMTPUTF8).
//!
//! Source routes (`<@a,@b:user@c>`) are parsed and dropped, as RFC 5321 section 4.1.1.3 and
//! appendix C allow. The local part is stored decoded (quotes and backslashes removed); its
//! `Display` form re-quotes it when it is not a plain dot-string, so an address read here can be
//! written back to the wire unchanged in meaning.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.1.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3 (including the angle brackets).
pub const MAX_PATH: usize = 256;

/// Why a path could not be parsed. Every variant maps to a 501 reply except
/// [`AddressError::NonAscii`], which maps to 553 5.6.7 (RFC 6531 section 3.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The path does not start with `<`.
    #[error("path must be enclosed in <>")]
    MissingOpen,
    /// The path does not end with `>`.
    #[error("path is not closed by >")]
    MissingClose,
    /// The local part is not a dot-string or quoted-string.
    #[error("bad local part")]
    LocalPart,
    /// The domain is not a valid host name.
    #[error("bad domain")]
    Domain,
    /// `[...]` is not a valid IPv4, IPv6 or general address literal.
    #[error("bad address literal")]
    AddressLiteral,
    /// The `@a,@b:` source route is malformed.
    #[error("bad source route")]
    SourceRoute,
    /// Local part, domain or path longer than RFC 5321 4.5.3.1 allows.
    #[error("address too long")]
    TooLong,
    /// Non-ASCII characters without SMTPUTF8.
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    /// `<>` where a mailbox is required.
    #[error("null path not allowed here")]
    NullNotAllowed,
}

/// The part after `@`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A host name (A-labels or, with SMTPUTF8, U-labels), as given.
    Name(String),
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
    /// `[tag:content]`, RFC 5321 General-address-literal.
    General {
        /// Standardized tag.
        tag: String,
        /// Content after the colon.
        content: String,
    },
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Domain::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// `local-part@domain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Decoded local part (no surrounding quotes, no backslash escapes). May be empty (`""@x`).
    pub local_part: String,
    /// The domain.
    pub domain: Domain,
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local_part) {
            f.write_str(&self.local_part)?;
        } else {
            f.write_str("\"")?;
            for c in self.local_part.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl Mailbox {
    /// True when local part or domain holds non-ASCII characters (needs SMTPUTF8 downstream).
    pub fn is_utf8(&self) -> bool {
        !self.to_string().is_ascii()
    }
}

/// MAIL FROM argument: `<>` or a mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`, the null sender of bounces.
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    /// The address without brackets; empty for the null path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// RCPT TO argument: a mailbox or the special `<Postmaster>` (RFC 5321 4.1.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` with no domain: the local postmaster.
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Parses `<...>` at the start of `s` (after optional spaces, tolerated as many clients send
/// `MAIL FROM: <a@b>`). Returns the path and the rest of the line after `>`.
pub fn parse_reverse_path(s: &str, utf8: bool) -> Result<(ReversePath, &str), AddressError> {
    let (inner, rest) = bracketed(s, utf8)?;
    if inner.is_empty() {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(path_mailbox(inner, utf8)?), rest))
}

/// Parses a forward path `<...>` (see [`parse_reverse_path`]); `<>` is refused.
pub fn parse_forward_path(s: &str, utf8: bool) -> Result<(ForwardPath, &str), AddressError> {
    let (inner, rest) = bracketed(s, utf8)?;
    if inner.is_empty() {
        return Err(AddressError::NullNotAllowed);
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster, rest));
    }
    Ok((ForwardPath::Mailbox(path_mailbox(inner, utf8)?), rest))
}

/// Parses a bare mailbox `local@domain` (no brackets).
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    let (local_part, rest) = local_part(s, utf8)?;
    let rest = rest.strip_prefix('@').ok_or(AddressError::LocalPart)?;
    let domain = domain_or_literal(rest, utf8)?;
    if local_part.len() > MAX_LOCAL_PART {
        return Err(AddressError::TooLong);
    }
    Ok(Mailbox { local_part, domain })
}

/// Finds the text between `<` and the matching `>` (a `>` inside a quoted local part does not
/// close the path).
fn bracketed(s: &str, utf8: bool) -> Result<(&str, &str), AddressError> {
    let s = s.trim_start_matches(' ');
    let body = s.strip_prefix('<').ok_or(AddressError::MissingOpen)?;
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quote && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quote = !in_quote;
        } else if c == '>' && !in_quote {
            let inner = &body[..i];
            if inner.len() + 2 > MAX_PATH {
                return Err(AddressError::TooLong);
            }
            if !utf8 && !inner.is_ascii() {
                return Err(AddressError::NonAscii);
            }
            return Ok((inner, &body[i + 1..]));
        }
    }
    Err(AddressError::MissingClose)
}

/// `[A-d-l ":"] Mailbox`: the source route is validated then dropped.
fn path_mailbox(inner: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    let mailbox = if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(AddressError::SourceRoute)?;
        for hop in inner[..colon].split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::SourceRoute)?;
            domain_or_literal(d, utf8).map_err(|_| AddressError::SourceRoute)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    parse_mailbox(mailbox, utf8)
}

fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(|c| is_atext(c, true)))
}

/// Returns the decoded local part and the rest (starting at `@` if well formed).
fn local_part(s: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((out, &q[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, e)) if (' '..='~').contains(&e) => out.push(e),
                    _ => return Err(AddressError::LocalPart),
                },
                ' '..='~' => out.push(c),
                c if utf8 && !c.is_ascii() => out.push(c),
                _ => return Err(AddressError::LocalPart),
            }
        }
        return Err(AddressError::LocalPart);
    }
    let end = s
        .find(|c: char| !(c == '.' || is_atext(c, utf8)))
        .unwrap_or(s.len());
    let lp = &s[..end];
    if lp.is_empty() || !lp.split('.').all(|a| !a.is_empty()) {
        return Err(AddressError::LocalPart);
    }
    Ok((lp.to_string(), &s[end..]))
}

fn domain_or_literal(s: &str, utf8: bool) -> Result<Domain, AddressError> {
    if s.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if let Some(lit) = s.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(AddressError::AddressLiteral)?;
        return address_literal(lit);
    }
    if is_domain_name(s, utf8) {
        Ok(Domain::Name(s.to_string()))
    } else {
        Err(AddressError::Domain)
    }
}

/// `sub-domain *("." sub-domain)`, sub-domain = Let-dig [Ldh-str] (U-labels with SMTPUTF8).
pub(crate) fn is_domain_name(s: &str, utf8: bool) -> bool {
    let letdig = |c: char| c.is_ascii_alphanumeric() || (utf8 && !c.is_ascii());
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().next().is_some_and(letdig)
                && label.chars().last().is_some_and(letdig)
                && label.chars().all(|c| letdig(c) || c == '-')
        })
}

fn address_literal(lit: &str) -> Result<Domain, AddressError> {
    if lit.starts_with(|c: char| c.is_ascii_digit()) {
        return lit
            .parse::<Ipv4Addr>()
            .map(Domain::Ipv4)
            .map_err(|_| AddressError::AddressLiteral);
    }
    let colon = lit.find(':').ok_or(AddressError::AddressLiteral)?;
    let (tag, content) = (&lit[..colon], &lit[colon + 1..]);
    if tag.eq_ignore_ascii_case("IPv6") {
        return content
            .parse::<Ipv6Addr>()
            .map(Domain::Ipv6)
            .map_err(|_| AddressError::AddressLiteral);
    }
    let tag_ok = is_domain_name(tag, false) && !tag.contains('.');
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    if tag_ok && content_ok {
        Ok(Domain::General {
            tag: tag.to_string(),
            content: content.to_string(),
        })
    } else {
        Err(AddressError::AddressLiteral)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        parse_mailbox(s, false).unwrap()
    }

    #[test]
    fn reverse_paths() {
        assert_eq!(parse_reverse_path("<>", false), Ok((ReversePath::Null, "")));
        assert_eq!(
            parse_reverse_path("<>  SIZE=10", false),
            Ok((ReversePath::Null, "  SIZE=10"))
        );
        let (p, rest) = parse_reverse_path(" <a.b@example.org> BODY=8BITMIME", false).unwrap();
        assert_eq!(p, ReversePath::Mailbox(mb("a.b@example.org")));
        assert_eq!(rest, " BODY=8BITMIME");
        assert_eq!(p.to_string(), "a.b@example.org");
    }

    #[test]
    fn source_route_is_stripped() {
        let (p, _) = parse_forward_path("<@a.example,@[10.0.0.1]:u@c.example>", false).unwrap();
        assert_eq!(p, ForwardPath::Mailbox(mb("u@c.example")));
        assert_eq!(
            parse_forward_path("<@a.example u@c.example>", false),
            Err(AddressError::SourceRoute)
        );
        assert_eq!(
            parse_forward_path("<@-bad:u@c.example>", false),
            Err(AddressError::SourceRoute)
        );
    }

    #[test]
    fn quoted_local_parts() {
        let m = mb(r#""john doe"@example.org"#);
        assert_eq!(m.local_part, "john doe");
        assert_eq!(m.to_string(), r#""john doe"@example.org"#);
        let m = mb(r#""a\"b\\c"@x.org"#);
        assert_eq!(m.local_part, r#"a"b\c"#);
        assert_eq!(m.to_string(), r#""a\"b\\c"@x.org"#);
        let m = mb(r#""plain"@x.org"#);
        assert_eq!(m.to_string(), "plain@x.org");
        assert_eq!(mb(r#"""@x.org"#).local_part, "");
        // a '>' inside quotes does not close the path
        let (p, rest) = parse_forward_path(r#"<"a>b"@x.org> X"#, false).unwrap();
        assert_eq!(p.to_string(), r#""a>b"@x.org"#);
        assert_eq!(rest, " X");
        assert_eq!(
            parse_mailbox(r#""abc@x.org"#, false),
            Err(AddressError::LocalPart)
        );
        assert_eq!(
            parse_mailbox("\"a\tb\"@x.org", false),
            Err(AddressError::LocalPart)
        );
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            mb("u@[192.0.2.1]").domain,
            Domain::Ipv4("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            mb("u@[IPv6:2001:db8::1]").domain,
            Domain::Ipv6("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            mb("u@[IPv6:2001:db8::1]").to_string(),
            "u@[IPv6:2001:db8::1]"
        );
        assert_eq!(
            mb("u@[x-tag:abc]").domain,
            Domain::General {
                tag: "x-tag".into(),
                content: "abc".into()
            }
        );
        for bad in [
            "u@[300.1.1.1]",
            "u@[1.2.3]",
            "u@[IPv6:zz::1]",
            "u@[nocolon]",
            "u@[1.2.3.4",
        ] {
            assert_eq!(
                parse_mailbox(bad, false),
                Err(AddressError::AddressLiteral),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_syntax() {
        for (s, e) in [
            ("a..b@x.org", AddressError::LocalPart),
            (".a@x.org", AddressError::LocalPart),
            ("a.@x.org", AddressError::LocalPart),
            ("a b@x.org", AddressError::LocalPart),
            ("ab", AddressError::LocalPart),
            ("a@", AddressError::Domain),
            ("a@-x.org", AddressError::Domain),
            ("a@x-.org", AddressError::Domain),
            ("a@x..org", AddressError::Domain),
            ("a@x.org.", AddressError::Domain),
            ("a@x_y.org", AddressError::Domain),
            ("a@b@c.org", AddressError::Domain),
        ] {
            assert_eq!(parse_mailbox(s, false), Err(e), "{s}");
        }
        assert_eq!(
            parse_reverse_path("a@x.org", false),
            Err(AddressError::MissingOpen)
        );
        assert_eq!(
            parse_reverse_path("<a@x.org", false),
            Err(AddressError::MissingClose)
        );
        assert_eq!(
            parse_forward_path("<>", false),
            Err(AddressError::NullNotAllowed)
        );
        let long = format!("{}@x.org", "a".repeat(65));
        assert_eq!(parse_mailbox(&long, false), Err(AddressError::TooLong));
        let long = format!("<a@{}.org>", "b.".repeat(130));
        assert_eq!(parse_forward_path(&long, false), Err(AddressError::TooLong));
        assert_eq!(
            parse_forward_path("<PostMaster>", false),
            Ok((ForwardPath::Postmaster, ""))
        );
    }

    #[test]
    fn utf8_only_with_smtputf8() {
        assert_eq!(
            parse_forward_path("<jörg@bücher.example>", false),
            Err(AddressError::NonAscii)
        );
        let (p, _) = parse_forward_path("<jörg@bücher.example>", true).unwrap();
        assert_eq!(p.to_string(), "jörg@bücher.example");
        let ForwardPath::Mailbox(m) = p else { panic!() };
        assert!(m.is_utf8());
        assert!(mb("a@b.c").domain == Domain::Name("b.c".into()));
    }
}
