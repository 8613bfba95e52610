//! The IMAP not-authenticated state (RFC 9051 §6.1–6.2, RFC 3501 §6.1–6.2) as a sans-I/O
//! state machine: bytes in, [`ImapEvent`]s out.
//!
//! Handled here: `CAPABILITY`, `NOOP`, `LOGOUT`, `ID` (RFC 2971, answered `NIL`; clients
//! send it before login), `STARTTLS`, `LOGIN` with atoms, quoted strings and literals
//! (`{n}` synchronizing, answered `+ Ready for literal data`; `{n+}` LITERAL+, RFC 7888),
//! and `AUTHENTICATE PLAIN` with an initial response (SASL-IR, RFC 4959) or a `+ `
//! continuation. Anything else is `BAD`.
//!
//! The core owns only the command being assembled (capped by [`ImapLoginConfig::max_line`]
//! and [`ImapLoginConfig::max_literal`]); [`ImapLogin::feed`] reports how many input bytes
//! it used and stops right after a command that needs the driver (login, STARTTLS, close),
//! so bytes a client pipelined after `LOGIN` stay with the driver and go to the mailstore.
//! Timeouts and the socket are the driver's business; the values live in the config.

use std::time::Duration;

use crate::login::{LoginCore, LoginEvent};
use crate::sasl::{decode_plain, PlainError};
use crate::Refusal;

/// Limits and options of the not-authenticated state.
#[derive(Debug, Clone)]
pub struct ImapLoginConfig {
    /// Longest command, counting every line and literal of it (bytes).
    pub max_line: usize,
    /// Largest literal accepted before login (a user name or password).
    pub max_literal: usize,
    /// Failed logins before the connection is closed (`BADLOGINS`, spec 6: 5).
    pub max_bad_logins: u32,
    /// Whether `STARTTLS` is offered (a TLS configuration exists and TLS is not active yet).
    pub starttls: bool,
    /// Longest wait for one command before the driver disconnects (spec 6: 60 s).
    pub command_timeout: Duration,
    /// Whether `LOGIN` and `AUTHENTICATE PLAIN` are allowed before TLS (the client is in
    /// [`crate::ProxyConfig::plaintext_auth`]). Otherwise the capabilities say
    /// `LOGINDISABLED` (RFC 9051 §7.2.2) and logins get `NO [PRIVACYREQUIRED]` (RFC 5530)
    /// until TLS is active.
    pub plaintext_without_tls: bool,
}

impl Default for ImapLoginConfig {
    fn default() -> Self {
        ImapLoginConfig {
            // RFC 2971 allows an ID of 30 fields of 1024 octets each (imaptest's `id` test
            // sends about 30 KB); the whole command, literals included, stays bounded.
            max_line: 64 * 1024,
            max_literal: 4096,
            max_bad_logins: 5,
            starttls: false,
            command_timeout: Duration::from_secs(60),
            plaintext_without_tls: false,
        }
    }
}

/// What the IMAP driver must do next.
pub type ImapEvent = LoginEvent<Credentials>;

/// A login to verify.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The client's tag, for the answer.
    pub tag: String,
    /// The user name as given (normally `user@domain`).
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Passwords never reach logs through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("tag", &self.tag)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Part {
    Text(Vec<u8>),
    Literal(Vec<u8>),
}

#[derive(Debug)]
enum State {
    /// Collecting a command line.
    ExpectCommand,
    /// Collecting the bytes of a literal.
    ExpectLiteral { remaining: usize },
    /// After `+ ` for `AUTHENTICATE PLAIN`.
    ExpectSaslResponse { tag: String },
    /// Paused until the driver answers a [`ImapEvent::Login`].
    AwaitLogin { tag: String },
    /// Paused until the handshake is done.
    AwaitTls,
    /// Logged in or closed: the core has nothing more to say.
    Done,
}

/// The not-authenticated state of one IMAP connection.
#[derive(Debug)]
pub struct ImapLogin {
    cfg: ImapLoginConfig,
    state: State,
    tls_active: bool,
    bad_logins: u32,
    parts: Vec<Part>,
    line: Vec<u8>,
    size: usize,
}

/// The greeting sent on connect (spec 6).
pub const GREETING: &[u8] = b"* OK IMAP4rev1 Server Ready.\r\n";

impl ImapLogin {
    /// A fresh connection (`tls_active` for implicit TLS, port 993).
    pub fn new(cfg: ImapLoginConfig, tls_active: bool) -> ImapLogin {
        ImapLogin {
            cfg,
            state: State::ExpectCommand,
            tls_active,
            bad_logins: 0,
            parts: Vec::new(),
            line: Vec::new(),
            size: 0,
        }
    }

    /// The configuration (the driver takes its timeouts from here).
    pub fn config(&self) -> &ImapLoginConfig {
        &self.cfg
    }

    /// The capabilities offered before login.
    pub fn capabilities(&self) -> String {
        let mut c = String::from("IMAP4rev1 LITERAL+ SASL-IR ID");
        if self.cfg.starttls && !self.tls_active {
            c.push_str(" STARTTLS");
        }
        if self.login_allowed() {
            c.push_str(" AUTH=PLAIN");
        } else {
            c.push_str(" LOGINDISABLED");
        }
        c
    }

    /// Whether a clear-text password may be sent now.
    fn login_allowed(&self) -> bool {
        self.tls_active || self.cfg.plaintext_without_tls
    }

    /// Feed input; returns how many bytes were used and what to do. Call again with the
    /// rest while the event is not [`ImapEvent::NeedMore`].
    pub fn feed(&mut self, input: &[u8]) -> (usize, ImapEvent) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.state {
                State::AwaitLogin { .. } | State::AwaitTls | State::Done => {
                    return (used, ImapEvent::NeedMore)
                }
                State::ExpectLiteral { remaining } => {
                    if rest.is_empty() && *remaining > 0 {
                        return (used, ImapEvent::NeedMore);
                    }
                    let take = (*remaining).min(rest.len());
                    self.line.extend_from_slice(&rest[..take]);
                    *remaining -= take;
                    used += take;
                    if *remaining == 0 {
                        self.parts
                            .push(Part::Literal(std::mem::take(&mut self.line)));
                        self.state = State::ExpectCommand;
                    }
                }
                State::ExpectCommand | State::ExpectSaslResponse { .. } => {
                    let (chunk, complete) = match rest.iter().position(|&b| b == b'\n') {
                        Some(p) => (&rest[..=p], true),
                        None => (rest, false),
                    };
                    if self.size + self.line.len() + chunk.len() > self.cfg.max_line {
                        return (used + chunk.len(), self.close(b"* BYE Line too long.\r\n"));
                    }
                    self.line.extend_from_slice(chunk);
                    used += chunk.len();
                    if !complete {
                        return (used, ImapEvent::NeedMore);
                    }
                    self.line.pop();
                    if self.line.last() == Some(&b'\r') {
                        self.line.pop();
                    }
                    let line = std::mem::take(&mut self.line);
                    if let State::ExpectSaslResponse { tag } = &self.state {
                        let tag = tag.clone();
                        return (used, self.sasl_response(tag, &line));
                    }
                    if let Some(ev) = self.line_done(line) {
                        return (used, ev);
                    }
                }
            }
        }
    }

    /// A complete line of a command: either it ends with a literal marker (more to come)
    /// or the command is complete.
    fn line_done(&mut self, mut line: Vec<u8>) -> Option<ImapEvent> {
        self.size += line.len() + 2;
        match literal_marker(&line) {
            Some((start, n, sync)) => {
                line.truncate(start);
                self.parts.push(Part::Text(line));
                if n > self.cfg.max_literal || self.size + n > self.cfg.max_line {
                    if sync {
                        // The client waits for our continuation, so a tagged BAD ends the
                        // command cleanly (RFC 9051 §7.1.4 / §2.2.2).
                        let tag = self.first_tag();
                        self.reset();
                        return Some(ImapEvent::Reply(
                            format!("{tag} BAD Literal too large.\r\n").into_bytes(),
                        ));
                    }
                    // A LITERAL+ payload is already on its way: the stream cannot be resynced.
                    return Some(self.close(b"* BYE Literal too large.\r\n"));
                }
                self.size += n;
                self.state = State::ExpectLiteral { remaining: n };
                sync.then(|| ImapEvent::Reply(b"+ Ready for literal data\r\n".to_vec()))
            }
            None => {
                self.parts.push(Part::Text(line));
                let parts = std::mem::take(&mut self.parts);
                self.size = 0;
                Some(self.execute(parts))
            }
        }
    }

    fn first_tag(&self) -> String {
        match self.parts.first() {
            Some(Part::Text(t)) => {
                let tag = t.split(|&b| b == b' ').next().unwrap_or_default();
                if valid_tag(tag) {
                    String::from_utf8_lossy(tag).into_owned()
                } else {
                    "*".into()
                }
            }
            _ => "*".into(),
        }
    }

    fn reset(&mut self) {
        self.parts.clear();
        self.line.clear();
        self.size = 0;
        self.state = State::ExpectCommand;
    }

    fn close(&mut self, reply: &[u8]) -> ImapEvent {
        self.reset();
        self.state = State::Done;
        ImapEvent::Close(reply.to_vec())
    }

    fn execute(&mut self, parts: Vec<Part>) -> ImapEvent {
        let tokens = match tokenize(&parts) {
            Ok(t) => t,
            Err(()) => {
                let tag = match parts.first() {
                    Some(Part::Text(t)) => t.split(|&b| b == b' ').next().unwrap_or_default(),
                    _ => b"",
                };
                let tag = if valid_tag(tag) {
                    String::from_utf8_lossy(tag).into_owned()
                } else {
                    "*".into()
                };
                return reply(format!("{tag} BAD Invalid arguments.\r\n"));
            }
        };
        let mut it = tokens.into_iter();
        let tag = match it.next() {
            Some(Token::Atom(t)) if valid_tag(&t) => String::from_utf8_lossy(&t).into_owned(),
            None => return reply("* BAD Empty command line.\r\n".into()),
            Some(_) => return reply("* BAD Invalid tag.\r\n".into()),
        };
        let cmd = match it.next() {
            Some(Token::Atom(c)) => String::from_utf8_lossy(&c).to_ascii_uppercase(),
            _ => return reply(format!("{tag} BAD Missing command.\r\n")),
        };
        let args: Vec<Token> = it.collect();
        match cmd.as_str() {
            "CAPABILITY" if args.is_empty() => reply(format!(
                "* CAPABILITY {}\r\n{tag} OK Capability completed.\r\n",
                self.capabilities()
            )),
            "NOOP" if args.is_empty() => reply(format!("{tag} OK NOOP completed.\r\n")),
            "ID" if args.len() == 1 => reply(format!("* ID NIL\r\n{tag} OK ID completed.\r\n")),
            "LOGOUT" if args.is_empty() => {
                let r = format!("* BYE Logging out.\r\n{tag} OK Logout completed.\r\n");
                self.close(r.as_bytes())
            }
            "STARTTLS" if args.is_empty() => {
                if self.tls_active {
                    reply(format!("{tag} BAD TLS is already active.\r\n"))
                } else if !self.cfg.starttls {
                    reply(format!("{tag} BAD STARTTLS is not available.\r\n"))
                } else {
                    self.state = State::AwaitTls;
                    ImapEvent::StartTls(
                        format!("{tag} OK Begin TLS negotiation now.\r\n").into_bytes(),
                    )
                }
            }
            "LOGIN" | "AUTHENTICATE" if !self.login_allowed() => reply(format!(
                "{tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on \
                 non-secure (SSL/TLS) connections.\r\n"
            )),
            "LOGIN" if args.len() == 2 => {
                let mut a = args.into_iter();
                let (Some(user), Some(pass)) = (a.next(), a.next()) else {
                    return reply(format!("{tag} BAD Invalid arguments.\r\n"));
                };
                match (
                    String::from_utf8(user.into_bytes()),
                    String::from_utf8(pass.into_bytes()),
                ) {
                    (Ok(user), Ok(password)) if !user.is_empty() && !password.is_empty() => self
                        .login(Credentials {
                            tag,
                            user,
                            password,
                        }),
                    _ => self.refused_tagged(&tag, Refusal::AuthFailed),
                }
            }
            "AUTHENTICATE" if !args.is_empty() && args.len() <= 2 => {
                let mut a = args.into_iter();
                let mech = a.next().map(Token::into_bytes).unwrap_or_default();
                if !mech.eq_ignore_ascii_case(b"PLAIN") {
                    return reply(format!(
                        "{tag} NO Unsupported authentication mechanism.\r\n"
                    ));
                }
                match a.next() {
                    Some(ir) => {
                        let ir = ir.into_bytes();
                        self.sasl_response(tag, &ir)
                    }
                    None => {
                        self.state = State::ExpectSaslResponse { tag };
                        reply("+ \r\n".into())
                    }
                }
            }
            "CAPABILITY" | "NOOP" | "ID" | "LOGOUT" | "STARTTLS" | "LOGIN" | "AUTHENTICATE" => {
                reply(format!("{tag} BAD Invalid arguments.\r\n"))
            }
            _ => reply(format!("{tag} BAD Command not valid before login.\r\n")),
        }
    }

    fn sasl_response(&mut self, tag: String, line: &[u8]) -> ImapEvent {
        self.state = State::ExpectCommand;
        if line == b"*" {
            return reply(format!("{tag} BAD Authentication cancelled.\r\n"));
        }
        match decode_plain(line) {
            Ok((user, password)) => self.login(Credentials {
                tag,
                user,
                password,
            }),
            Err(PlainError::Base64) => reply(format!("{tag} BAD Invalid base64 data.\r\n")),
            Err(PlainError::Authzid) => {
                self.bad_logins += 1;
                self.after_failure(format!(
                    "{tag} NO [AUTHORIZATIONFAILED] Authorization identity not supported.\r\n"
                ))
            }
            Err(_) => self.refused_tagged(&tag, Refusal::AuthFailed),
        }
    }

    fn login(&mut self, c: Credentials) -> ImapEvent {
        self.state = State::AwaitLogin { tag: c.tag.clone() };
        ImapEvent::Login(c)
    }

    /// The driver verified the login: the reply to send (`<tag> OK [CAPABILITY ...] Logged
    /// in`, with the mailstore's capability list when it gave one). The core is done.
    pub fn accepted(&mut self, capability: Option<&str>) -> Vec<u8> {
        let tag = match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitLogin { tag } => tag,
            _ => "*".into(),
        };
        match capability {
            Some(c) => format!("{tag} OK [CAPABILITY {c}] Logged in\r\n").into_bytes(),
            None => format!("{tag} OK Logged in\r\n").into_bytes(),
        }
    }

    /// The driver refused the login: a reply to send ([`ImapEvent::Reply`]), or a reply and
    /// close ([`ImapEvent::Close`]) once [`ImapLoginConfig::max_bad_logins`] is reached.
    pub fn refused(&mut self, why: Refusal) -> ImapEvent {
        let tag = match std::mem::replace(&mut self.state, State::ExpectCommand) {
            State::AwaitLogin { tag } => tag,
            _ => "*".into(),
        };
        self.refused_tagged(&tag, why)
    }

    fn refused_tagged(&mut self, tag: &str, why: Refusal) -> ImapEvent {
        self.state = State::ExpectCommand;
        let text = match why {
            Refusal::AuthFailed => {
                self.bad_logins += 1;
                format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            }
            Refusal::Disabled => {
                self.bad_logins += 1;
                format!("{tag} NO [CONTACTADMIN] IMAP access is disabled for this account.\r\n")
            }
            Refusal::Unavailable => format!("{tag} NO [UNAVAILABLE] Backend unavailable\r\n"),
            Refusal::TempFail => {
                format!("{tag} NO [UNAVAILABLE] Temporary authentication failure.\r\n")
            }
            Refusal::InUse => format!("{tag} NO [INUSE] Mailbox is in use.\r\n"),
        };
        self.after_failure(text)
    }

    fn after_failure(&mut self, text: String) -> ImapEvent {
        if self.bad_logins >= self.cfg.max_bad_logins {
            let r = format!("{text}* BYE Too many invalid authentication attempts.\r\n");
            return self.close(r.as_bytes());
        }
        ImapEvent::Reply(text.into_bytes())
    }

    /// The TLS handshake after `STARTTLS` succeeded: continue in the not-authenticated
    /// state, now without `STARTTLS` in the capabilities.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.reset();
    }

    /// Failed logins so far.
    pub fn bad_logins(&self) -> u32 {
        self.bad_logins
    }
}

fn reply(s: String) -> ImapEvent {
    ImapEvent::Reply(s.into_bytes())
}

/// RFC 9051 `tag = 1*<any ASTRING-CHAR except "+">`.
fn valid_tag(t: &[u8]) -> bool {
    !t.is_empty() && t.len() <= 64 && t.iter().all(|&b| astring_char(b) && b != b'+')
}

/// ATOM-CHAR plus `]` (RFC 9051 `ASTRING-CHAR`).
fn astring_char(b: u8) -> bool {
    b > b' ' && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\')
}

/// `{n}` or `{n+}` at the end of a line: (start index, n, synchronizing).
fn literal_marker(line: &[u8]) -> Option<(usize, usize, bool)> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let mut digits = &body[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((open, n, sync))
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Atom(Vec<u8>),
    Str(Vec<u8>),
}

impl Token {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            Token::Atom(b) | Token::Str(b) => b,
        }
    }
}

/// Split a command into tokens separated by single spaces: atoms, quoted strings (with
/// `\"` and `\\` escapes) and literals. `()` lists are only accepted whole as one atom-like
/// token for `ID` (its argument is ignored).
fn tokenize(parts: &[Part]) -> Result<Vec<Token>, ()> {
    let mut out = Vec::new();
    for part in parts {
        let t = match part {
            Part::Literal(l) => {
                out.push(Token::Str(l.clone()));
                continue;
            }
            Part::Text(t) => t,
        };
        let mut i = 0;
        while i < t.len() {
            match t[i] {
                b' ' => i += 1,
                b'"' => {
                    let mut s = Vec::new();
                    i += 1;
                    loop {
                        match t.get(i) {
                            None => return Err(()),
                            Some(b'"') => break,
                            Some(b'\\') => match t.get(i + 1) {
                                Some(&c @ (b'"' | b'\\')) => {
                                    s.push(c);
                                    i += 1;
                                }
                                _ => return Err(()),
                            },
                            Some(&c) => s.push(c),
                        }
                        i += 1;
                    }
                    i += 1;
                    if i < t.len() && t[i] != b' ' {
                        return Err(());
                    }
                    out.push(Token::Str(s));
                }
                b'(' => {
                    // A parenthesised list (ID's field list): kept as one opaque token.
                    let mut depth = 0usize;
                    let start = i;
                    let mut quoted = false;
                    while i < t.len() {
                        match t[i] {
                            b'"' => quoted = !quoted,
                            b'\\' if quoted => i += 1,
                            b'(' if !quoted => depth += 1,
                            b')' if !quoted => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                    if depth != 0 || i >= t.len() {
                        return Err(());
                    }
                    i += 1;
                    out.push(Token::Atom(t[start..i].to_vec()));
                }
                _ => {
                    let start = i;
                    while i < t.len() && t[i] != b' ' {
                        if !astring_char(t[i]) && !matches!(t[i], b'+' | b'*' | b'%') {
                            return Err(());
                        }
                        i += 1;
                    }
                    out.push(Token::Atom(t[start..i].to_vec()));
                }
            }
        }
    }
    Ok(out)
}

impl LoginCore for ImapLogin {
    type Credentials = Credentials;
    fn feed(&mut self, input: &[u8]) -> (usize, ImapEvent) {
        ImapLogin::feed(self, input)
    }
    fn command_timeout(&self) -> Duration {
        self.cfg.command_timeout
    }
    fn tls_started(&mut self) {
        ImapLogin::tls_started(self)
    }
    fn refused(&mut self, why: Refusal) -> ImapEvent {
        ImapLogin::refused(self, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> ImapLogin {
        ImapLogin::new(
            ImapLoginConfig {
                starttls: true,
                plaintext_without_tls: true,
                ..ImapLoginConfig::default()
            },
            false,
        )
    }

    /// Feed `input` in chunks of `step` bytes; collect every event (replies concatenated
    /// into a transcript) until a Login/StartTls/Close, and return the unused rest too.
    fn run(c: &mut ImapLogin, input: &[u8], step: usize) -> (Vec<u8>, Option<ImapEvent>, usize) {
        use crate::testing::{feed_in_steps, Fed};
        feed_in_steps(input, step, |b| match c.feed(b) {
            (n, ImapEvent::NeedMore) => (n, Fed::More),
            (n, ImapEvent::Reply(r)) => (n, Fed::Reply(r)),
            (n, e) => (n, Fed::Stop(e)),
        })
    }

    fn every_split(input: &[u8], check: impl Fn(&[u8], Option<ImapEvent>, usize)) {
        for step in 1..=input.len() {
            let mut c = core();
            let (out, ev, rest) = run(&mut c, input, step);
            check(&out, ev, rest);
        }
    }

    fn login(tag: &str, user: &str, pass: &str) -> Option<ImapEvent> {
        Some(ImapEvent::Login(Credentials {
            tag: tag.into(),
            user: user.into(),
            password: pass.into(),
        }))
    }

    #[test]
    fn capability_noop_id() {
        every_split(
            b"a1 CAPABILITY\r\na2 noop\r\na3 ID (\"name\" \"x\")\r\na4 ID NIL\r\n",
            |out, ev, _| {
                assert_eq!(
                    out,
                    b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS AUTH=PLAIN\r\n\
                      a1 OK Capability completed.\r\na2 OK NOOP completed.\r\n\
                      * ID NIL\r\na3 OK ID completed.\r\n* ID NIL\r\na4 OK ID completed.\r\n"
                );
                assert_eq!(ev, None);
            },
        );
    }

    #[test]
    fn login_atoms_quoted_and_pipelined_rest() {
        every_split(
            b"x LOGIN amy@example.com \"p a\\\"ss\\\\\"\r\ny SELECT INBOX\r\n",
            |out, ev, rest| {
                assert!(out.is_empty());
                assert_eq!(ev, login("x", "amy@example.com", "p a\"ss\\"));
                assert_eq!(rest, b"y SELECT INBOX\r\n".len());
            },
        );
    }

    #[test]
    fn login_synchronizing_literals() {
        every_split(
            b"t1 LOGIN {15}\r\namy@example.com {6}\r\nse\r\nct\r\n",
            |out, ev, rest| {
                assert_eq!(
                    out,
                    b"+ Ready for literal data\r\n+ Ready for literal data\r\n"
                );
                assert_eq!(ev, login("t1", "amy@example.com", "se\r\nct"));
                assert_eq!(rest, 0);
            },
        );
    }

    #[test]
    fn login_literal_plus_has_no_continuation() {
        every_split(b"t1 LOGIN {3+}\r\namy {2+}\r\npw\r\n", |out, ev, _| {
            assert!(out.is_empty());
            assert_eq!(ev, login("t1", "amy", "pw"));
        });
        // An empty password is refused without asking anyone.
        every_split(b"t1 LOGIN amy {0}\r\n\r\n", |out, ev, _| {
            assert_eq!(
                String::from_utf8_lossy(out),
                "+ Ready for literal data\r\nt1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
            );
            assert_eq!(ev, None);
        });
    }

    #[test]
    fn authenticate_plain_ir_and_continuation() {
        // "\0amy@example.com\0secret"
        let b64 = "AGFteUBleGFtcGxlLmNvbQBzZWNyZXQ=";
        every_split(
            format!("a AUTHENTICATE PLAIN {b64}\r\n").as_bytes(),
            |out, ev, _| {
                assert!(out.is_empty());
                assert_eq!(ev, login("a", "amy@example.com", "secret"));
            },
        );
        every_split(
            format!("a authenticate plain\r\n{b64}\r\n").as_bytes(),
            |out, ev, _| {
                assert_eq!(out, b"+ \r\n");
                assert_eq!(ev, login("a", "amy@example.com", "secret"));
            },
        );
        every_split(b"a AUTHENTICATE PLAIN\r\n*\r\n", |out, ev, _| {
            assert_eq!(out, b"+ \r\na BAD Authentication cancelled.\r\n");
            assert_eq!(ev, None);
        });
        every_split(b"a AUTHENTICATE CRAM-MD5\r\n", |out, _, _| {
            assert_eq!(out, b"a NO Unsupported authentication mechanism.\r\n");
        });
    }

    #[test]
    fn other_commands_bad() {
        every_split(
            b"a SELECT INBOX\r\n\r\n+x NOOP\r\nb LOGIN onlyone\r\n",
            |out, ev, _| {
                assert_eq!(
                    String::from_utf8_lossy(out),
                    "a BAD Command not valid before login.\r\n* BAD Empty command line.\r\n\
                 * BAD Invalid tag.\r\nb BAD Invalid arguments.\r\n"
                );
                assert_eq!(ev, None);
            },
        );
    }

    #[test]
    fn logout_and_starttls() {
        every_split(b"z LOGOUT\r\nextra", |out, ev, rest| {
            assert!(out.is_empty());
            assert_eq!(
                ev,
                Some(ImapEvent::Close(
                    b"* BYE Logging out.\r\nz OK Logout completed.\r\n".to_vec()
                ))
            );
            assert_eq!(rest, 5);
        });
        every_split(b"s STARTTLS\r\nx LOGIN a b\r\n", |_, ev, rest| {
            assert_eq!(
                ev,
                Some(ImapEvent::StartTls(
                    b"s OK Begin TLS negotiation now.\r\n".to_vec()
                ))
            );
            assert_eq!(rest, b"x LOGIN a b\r\n".len());
        });
        let mut c = core();
        let (_, ev) = c.feed(b"s STARTTLS\r\n");
        assert!(matches!(ev, ImapEvent::StartTls(_)));
        c.tls_started();
        assert!(!c.capabilities().contains("STARTTLS"));
        let (_, ev) = c.feed(b"s STARTTLS\r\n");
        assert_eq!(
            ev,
            ImapEvent::Reply(b"s BAD TLS is already active.\r\n".to_vec())
        );
    }

    #[test]
    fn caps_on_lines_and_literals() {
        let cfg = ImapLoginConfig {
            max_line: 64,
            max_literal: 16,
            ..ImapLoginConfig::default()
        };
        let mut c = ImapLogin::new(cfg.clone(), false);
        let (_, ev) = c.feed(&[b'a'; 65]);
        assert_eq!(ev, ImapEvent::Close(b"* BYE Line too long.\r\n".to_vec()));
        let mut c = ImapLogin::new(cfg.clone(), false);
        let (n, ev) = c.feed(b"t LOGIN {17}\r\n");
        assert_eq!(n, 14);
        assert_eq!(
            ev,
            ImapEvent::Reply(b"t BAD Literal too large.\r\n".to_vec())
        );
        // The command is gone; the next one works.
        let (_, ev) = c.feed(b"u NOOP\r\n");
        assert_eq!(ev, ImapEvent::Reply(b"u OK NOOP completed.\r\n".to_vec()));
        let mut c = ImapLogin::new(cfg, false);
        let (_, ev) = c.feed(b"t LOGIN {17+}\r\n");
        assert_eq!(
            ev,
            ImapEvent::Close(b"* BYE Literal too large.\r\n".to_vec())
        );
    }

    #[test]
    fn clear_text_login_needs_tls() {
        let cfg = ImapLoginConfig {
            starttls: true,
            ..ImapLoginConfig::default()
        };
        let no = "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure \
                  (SSL/TLS) connections.\r\n";
        let b64 = "AGFteUBleGFtcGxlLmNvbQBzZWNyZXQ=";
        let input = format!(
            "a CAPABILITY\r\nb LOGIN amy pw\r\nc AUTHENTICATE PLAIN {b64}\r\n\
             d AUTHENTICATE PLAIN\r\ne STARTTLS\r\n"
        );
        for step in 1..=input.len() {
            let mut c = ImapLogin::new(cfg.clone(), false);
            let (out, ev, _) = run(&mut c, input.as_bytes(), step);
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!(
                    "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS LOGINDISABLED\r\n\
                     a OK Capability completed.\r\nb {no}c {no}d {no}"
                )
            );
            assert!(matches!(ev, Some(ImapEvent::StartTls(_))));
            assert_eq!(c.bad_logins(), 0);
            c.tls_started();
            let (_, ev) = c.feed(b"x CAPABILITY\r\n");
            assert_eq!(
                ev,
                ImapEvent::Reply(
                    b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\n\
                      x OK Capability completed.\r\n"
                        .to_vec()
                )
            );
            assert_eq!(
                c.feed(b"y LOGIN amy pw\r\n").1,
                login("y", "amy", "pw").unwrap()
            );
        }
        // Implicit TLS: allowed from the start.
        let mut c = ImapLogin::new(cfg, true);
        assert!(matches!(
            c.feed(b"y LOGIN amy pw\r\n").1,
            ImapEvent::Login(_)
        ));
    }

    #[test]
    fn rfc2971_id_of_30_kb() {
        let fields: Vec<String> = (0..30)
            .map(|i| format!("\"field{i}\" \"{}\"", "v".repeat(1000)))
            .collect();
        let cmd = format!("i ID ({})\r\n", fields.join(" "));
        assert!(cmd.len() > 30_000);
        let mut c = core();
        let (n, ev) = c.feed(cmd.as_bytes());
        assert_eq!(n, cmd.len());
        assert_eq!(
            ev,
            ImapEvent::Reply(b"* ID NIL\r\ni OK ID completed.\r\n".to_vec())
        );
        // Beyond 64 KiB the line is still refused.
        let mut c = core();
        let (_, ev) = c.feed(&vec![b'a'; 64 * 1024 + 1]);
        assert_eq!(ev, ImapEvent::Close(b"* BYE Line too long.\r\n".to_vec()));
    }

    #[test]
    fn bad_login_cap_closes() {
        let mut c = core();
        for i in 1..=5 {
            let (_, ev) = c.feed(b"a LOGIN amy pw\r\n");
            assert!(matches!(ev, ImapEvent::Login(_)));
            let ev = c.refused(Refusal::AuthFailed);
            let want = b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n".to_vec();
            if i < 5 {
                assert_eq!(ev, ImapEvent::Reply(want));
            } else {
                let mut w = want;
                w.extend_from_slice(b"* BYE Too many invalid authentication attempts.\r\n");
                assert_eq!(ev, ImapEvent::Close(w));
            }
        }
        let mut c = core();
        c.feed(b"a LOGIN amy pw\r\n");
        assert_eq!(
            c.refused(Refusal::Unavailable),
            ImapEvent::Reply(b"a NO [UNAVAILABLE] Backend unavailable\r\n".to_vec())
        );
        c.feed(b"b LOGIN amy pw\r\n");
        assert_eq!(
            c.accepted(Some("IMAP4rev1 IDLE")),
            b"b OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n".to_vec()
        );
    }
}
