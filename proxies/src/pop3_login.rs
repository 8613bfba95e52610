//! The POP3 AUTHORIZATION state (RFC 1939 §4, §7; CAPA RFC 2449; AUTH RFC 5034; STLS
//! RFC 2595; response codes RFC 2449 §8 and RFC 3206) as a sans-I/O state machine.
//!
//! Handled: `CAPA`, `USER`, `PASS`, `AUTH PLAIN` (initial response or `+ ` continuation;
//! bare `AUTH` lists the mechanisms), `STLS`, `QUIT`. Everything else is `-ERR`.
//! Lines are capped ([`Pop3LoginConfig::max_line`]); [`Pop3Login::feed`] stops right after
//! a command that needs the driver, so pipelined commands (RFC 2449 PIPELINING) after
//! `PASS` stay with the driver.

use std::time::Duration;

use crate::login::{LoginCore, LoginEvent};
use crate::sasl::{decode_plain, PlainError};
use crate::Refusal;

/// Limits and options of the AUTHORIZATION state.
#[derive(Debug, Clone)]
pub struct Pop3LoginConfig {
    /// Longest command line including CRLF. RFC 2449 allows 255 octets for commands, but an
    /// `AUTH PLAIN` initial response of a long address and password needs more.
    pub max_line: usize,
    /// Failed logins before the connection is closed (`BADLOGINS`, spec 6: 5).
    pub max_bad_logins: u32,
    /// Whether `STLS` is offered.
    pub stls: bool,
    /// Longest wait for one command before the driver disconnects (spec 6: 60 s).
    pub command_timeout: Duration,
    /// Whether `USER`/`PASS` and `AUTH PLAIN` are allowed before TLS (the client is in
    /// [`crate::ProxyConfig::plaintext_auth`]). Otherwise `CAPA` lists neither `USER` nor
    /// `SASL PLAIN` and they are answered `-ERR [AUTH]` until TLS is active.
    pub plaintext_without_tls: bool,
}

impl Default for Pop3LoginConfig {
    fn default() -> Self {
        Pop3LoginConfig {
            max_line: 1024,
            max_bad_logins: 5,
            stls: false,
            command_timeout: Duration::from_secs(60),
            plaintext_without_tls: false,
        }
    }
}

/// What the POP3 driver must do next.
pub type Pop3Event = LoginEvent<Credentials>;

/// A login to verify.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name as given (normally `user@domain`).
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    ExpectCommand,
    ExpectSaslResponse,
    AwaitLogin,
    AwaitTls,
    Done,
}

/// The AUTHORIZATION state of one POP3 connection.
#[derive(Debug)]
pub struct Pop3Login {
    cfg: Pop3LoginConfig,
    state: State,
    tls_active: bool,
    user: Option<String>,
    bad_logins: u32,
    line: Vec<u8>,
}

/// The greeting (no APOP timestamp: APOP is not offered).
pub const GREETING: &[u8] = b"+OK POP3 Server Ready.\r\n";

/// Reply to `QUIT` before login (spec 6; the original's text).
pub const QUIT_REPLY: &[u8] = b"+OK Phir Khab Miloge.\r\n";

impl Pop3Login {
    /// A fresh connection (`tls_active` for implicit TLS, port 995).
    pub fn new(cfg: Pop3LoginConfig, tls_active: bool) -> Pop3Login {
        Pop3Login {
            cfg,
            state: State::ExpectCommand,
            tls_active,
            user: None,
            bad_logins: 0,
            line: Vec::new(),
        }
    }

    /// The configuration (the driver takes its timeouts from here).
    pub fn config(&self) -> &Pop3LoginConfig {
        &self.cfg
    }

    /// The `CAPA` response before login.
    pub fn capa(&self) -> Vec<u8> {
        let mut s = String::from("+OK Capability list follows\r\nTOP\r\nUIDL\r\n");
        if self.login_allowed() {
            s.push_str("USER\r\nSASL PLAIN\r\n");
        }
        s.push_str("RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        if self.cfg.stls && !self.tls_active {
            s.push_str("STLS\r\n");
        }
        s.push_str("IMPLEMENTATION indimail-rs\r\n.\r\n");
        s.into_bytes()
    }

    /// Whether a clear-text password may be sent now.
    fn login_allowed(&self) -> bool {
        self.tls_active || self.cfg.plaintext_without_tls
    }

    /// Feed input; returns how many bytes were used and what to do. Call again with the
    /// rest while the event is not [`Pop3Event::NeedMore`].
    pub fn feed(&mut self, input: &[u8]) -> (usize, Pop3Event) {
        if !matches!(self.state, State::ExpectCommand | State::ExpectSaslResponse) {
            return (0, Pop3Event::NeedMore);
        }
        let rest = input;
        let (chunk, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(p) => (&rest[..=p], true),
            None => (rest, false),
        };
        if self.line.len() + chunk.len() > self.cfg.max_line {
            self.state = State::Done;
            return (
                chunk.len(),
                Pop3Event::Close(b"-ERR Line too long.\r\n".to_vec()),
            );
        }
        self.line.extend_from_slice(chunk);
        let used = chunk.len();
        if !complete {
            return (used, Pop3Event::NeedMore);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let ev = if self.state == State::ExpectSaslResponse {
            self.state = State::ExpectCommand;
            self.sasl_response(&line)
        } else {
            self.execute(&line)
        };
        (used, ev)
    }

    fn execute(&mut self, line: &[u8]) -> Pop3Event {
        let (cmd, arg) = match line.iter().position(|&b| b == b' ') {
            Some(p) => (&line[..p], Some(&line[p + 1..])),
            None => (line, None),
        };
        let cmd = String::from_utf8_lossy(cmd).to_ascii_uppercase();
        match (cmd.as_str(), arg) {
            ("CAPA", None) => Pop3Event::Reply(self.capa()),
            ("USER" | "PASS" | "AUTH", Some(_)) if !self.login_allowed() => reply(
                "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) \
                 connections.",
            ),
            ("AUTH", None) if !self.login_allowed() => reply("+OK\r\n."),
            ("QUIT", None) => {
                self.state = State::Done;
                Pop3Event::Close(QUIT_REPLY.to_vec())
            }
            ("USER", Some(u)) if !u.is_empty() => match String::from_utf8(u.to_vec()) {
                Ok(u) => {
                    self.user = Some(u);
                    reply("+OK Password required.")
                }
                Err(_) => reply("-ERR Invalid user name."),
            },
            ("PASS", Some(p)) => {
                // RFC 1939 §7: the password is the rest of the line and may hold spaces.
                let Some(user) = self.user.take() else {
                    return reply("-ERR USER first.");
                };
                match String::from_utf8(p.to_vec()) {
                    Ok(password) if !password.is_empty() => {
                        self.state = State::AwaitLogin;
                        Pop3Event::Login(Credentials { user, password })
                    }
                    _ => self.refused(Refusal::AuthFailed),
                }
            }
            ("AUTH", None) => Pop3Event::Reply(b"+OK\r\nPLAIN\r\n.\r\n".to_vec()),
            ("AUTH", Some(a)) => {
                let (mech, ir) = match a.iter().position(|&b| b == b' ') {
                    Some(p) => (&a[..p], Some(&a[p + 1..])),
                    None => (a, None),
                };
                if !mech.eq_ignore_ascii_case(b"PLAIN") {
                    return reply("-ERR Unsupported authentication mechanism.");
                }
                match ir {
                    Some(ir) => self.sasl_response(ir),
                    None => {
                        self.state = State::ExpectSaslResponse;
                        Pop3Event::Reply(b"+ \r\n".to_vec())
                    }
                }
            }
            ("STLS", None) => {
                if self.tls_active {
                    reply("-ERR TLS is already active.")
                } else if !self.cfg.stls {
                    reply("-ERR STLS is not available.")
                } else {
                    self.state = State::AwaitTls;
                    Pop3Event::StartTls(b"+OK Begin TLS negotiation now.\r\n".to_vec())
                }
            }
            ("CAPA" | "QUIT" | "USER" | "PASS" | "STLS", _) => reply("-ERR Invalid arguments."),
            _ => reply("-ERR Unknown command or not allowed before login."),
        }
    }

    fn sasl_response(&mut self, line: &[u8]) -> Pop3Event {
        if line == b"*" {
            return reply("-ERR Authentication cancelled.");
        }
        match decode_plain(line) {
            Ok((user, password)) => {
                self.state = State::AwaitLogin;
                Pop3Event::Login(Credentials { user, password })
            }
            Err(PlainError::Base64) => reply("-ERR Invalid base64 data."),
            Err(_) => self.refused(Refusal::AuthFailed),
        }
    }

    /// The driver verified the login: the reply to send. The core is done.
    pub fn accepted(&mut self) -> Vec<u8> {
        self.state = State::Done;
        b"+OK Logged in.\r\n".to_vec()
    }

    /// The driver refused the login: a reply ([`Pop3Event::Reply`]), or a reply and close
    /// ([`Pop3Event::Close`]) once [`Pop3LoginConfig::max_bad_logins`] is reached.
    pub fn refused(&mut self, why: Refusal) -> Pop3Event {
        self.state = State::ExpectCommand;
        self.user = None;
        let text: &[u8] = match why {
            Refusal::AuthFailed => {
                self.bad_logins += 1;
                b"-ERR [AUTH] Authentication failed.\r\n"
            }
            Refusal::Disabled => {
                self.bad_logins += 1;
                b"-ERR [AUTH] POP3 access is disabled for this account.\r\n"
            }
            Refusal::Unavailable => b"-ERR [SYS/TEMP] Backend unavailable\r\n",
            Refusal::TempFail => b"-ERR [SYS/TEMP] Temporary authentication failure.\r\n",
            Refusal::InUse => b"-ERR [IN-USE] Mailbox is locked by another session.\r\n",
        };
        if self.bad_logins >= self.cfg.max_bad_logins {
            self.state = State::Done;
            return Pop3Event::Close(text.to_vec());
        }
        Pop3Event::Reply(text.to_vec())
    }

    /// The handshake after `STLS` succeeded: back to AUTHORIZATION without `STLS`.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
        self.user = None;
        self.line.clear();
        self.state = State::ExpectCommand;
    }
}

fn reply(s: &str) -> Pop3Event {
    Pop3Event::Reply(format!("{s}\r\n").into_bytes())
}

impl LoginCore for Pop3Login {
    type Credentials = Credentials;
    fn feed(&mut self, input: &[u8]) -> (usize, Pop3Event) {
        Pop3Login::feed(self, input)
    }
    fn command_timeout(&self) -> Duration {
        self.cfg.command_timeout
    }
    fn tls_started(&mut self) {
        Pop3Login::tls_started(self)
    }
    fn refused(&mut self, why: Refusal) -> Pop3Event {
        Pop3Login::refused(self, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> Pop3Login {
        Pop3Login::new(
            Pop3LoginConfig {
                stls: true,
                plaintext_without_tls: true,
                ..Pop3LoginConfig::default()
            },
            false,
        )
    }

    fn run(c: &mut Pop3Login, input: &[u8], step: usize) -> (Vec<u8>, Option<Pop3Event>, usize) {
        use crate::testing::{feed_in_steps, Fed};
        feed_in_steps(input, step, |b| match c.feed(b) {
            (n, Pop3Event::NeedMore) => (n, Fed::More),
            (n, Pop3Event::Reply(r)) => (n, Fed::Reply(r)),
            (n, e) => (n, Fed::Stop(e)),
        })
    }

    fn every_split(input: &[u8], check: impl Fn(&str, Option<Pop3Event>, usize)) {
        for step in 1..=input.len() {
            let mut c = core();
            let (out, ev, rest) = run(&mut c, input, step);
            check(&String::from_utf8_lossy(&out), ev, rest);
        }
    }

    fn login(u: &str, p: &str) -> Option<Pop3Event> {
        Some(Pop3Event::Login(Credentials {
            user: u.into(),
            password: p.into(),
        }))
    }

    #[test]
    fn user_pass_with_pipelined_rest() {
        every_split(
            b"user amy@example.com\r\nPASS my secret\r\nSTAT\r\n",
            |out, ev, rest| {
                assert_eq!(out, "+OK Password required.\r\n");
                assert_eq!(ev, login("amy@example.com", "my secret"));
                assert_eq!(rest, 6);
            },
        );
    }

    #[test]
    fn capa_lists_stls_until_tls() {
        every_split(b"CAPA\r\n", |out, _, _| {
            assert!(out.starts_with("+OK Capability list follows\r\n"));
            assert!(out.contains("\r\nSTLS\r\n"));
            assert!(out.contains("\r\nSASL PLAIN\r\n"));
            assert!(out.ends_with("\r\n.\r\n"));
        });
        let mut c = core();
        let (_, ev) = c.feed(b"STLS\r\n");
        assert_eq!(
            ev,
            Pop3Event::StartTls(b"+OK Begin TLS negotiation now.\r\n".to_vec())
        );
        c.tls_started();
        assert!(!String::from_utf8(c.capa()).unwrap().contains("STLS"));
        assert_eq!(
            c.feed(b"STLS\r\n").1,
            Pop3Event::Reply(b"-ERR TLS is already active.\r\n".to_vec())
        );
    }

    #[test]
    fn clear_text_login_needs_tls() {
        let cfg = Pop3LoginConfig {
            stls: true,
            ..Pop3LoginConfig::default()
        };
        let no = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) \
                  connections.\r\n";
        let input = b"CAPA\r\nUSER amy\r\nPASS pw\r\nAUTH PLAIN AGFAYg==\r\nAUTH\r\nSTLS\r\n";
        for step in 1..=input.len() {
            let mut c = Pop3Login::new(cfg.clone(), false);
            let (out, ev, _) = run(&mut c, input, step);
            let out = String::from_utf8(out).unwrap();
            let (capa, rest) = out.split_once("\r\n.\r\n").unwrap();
            assert!(!capa.contains("USER") && !capa.contains("SASL"), "{capa}");
            assert!(capa.contains("\r\nSTLS"), "{capa}");
            assert_eq!(rest, format!("{no}{no}{no}+OK\r\n.\r\n"));
            assert!(matches!(ev, Some(Pop3Event::StartTls(_))));
            c.tls_started();
            let capa = String::from_utf8(c.capa()).unwrap();
            assert!(capa.contains("\r\nUSER\r\nSASL PLAIN\r\n"), "{capa}");
            c.feed(b"USER amy\r\n");
            assert_eq!(c.feed(b"PASS pw\r\n").1, login("amy", "pw").unwrap());
        }
        let mut c = Pop3Login::new(cfg, true);
        c.feed(b"USER amy\r\n");
        assert!(matches!(c.feed(b"PASS pw\r\n").1, Pop3Event::Login(_)));
    }

    #[test]
    fn auth_plain_forms() {
        let b64 = "AGFteUBleGFtcGxlLmNvbQBzZWNyZXQ=";
        every_split(format!("AUTH PLAIN {b64}\r\n").as_bytes(), |out, ev, _| {
            assert_eq!(out, "");
            assert_eq!(ev, login("amy@example.com", "secret"));
        });
        every_split(
            format!("auth plain\r\n{b64}\r\n").as_bytes(),
            |out, ev, _| {
                assert_eq!(out, "+ \r\n");
                assert_eq!(ev, login("amy@example.com", "secret"));
            },
        );
        every_split(
            b"AUTH PLAIN\r\n*\r\nAUTH\r\nAUTH LOGIN\r\n",
            |out, ev, _| {
                assert_eq!(
                    out,
                    "+ \r\n-ERR Authentication cancelled.\r\n+OK\r\nPLAIN\r\n.\r\n\
                 -ERR Unsupported authentication mechanism.\r\n"
                );
                assert_eq!(ev, None);
            },
        );
    }

    #[test]
    fn errors_and_quit() {
        every_split(
            b"PASS x\r\nSTAT\r\nUSER\r\nQUIT\r\nleft",
            |out, ev, rest| {
                assert_eq!(
                    out,
                    "-ERR USER first.\r\n-ERR Unknown command or not allowed before login.\r\n\
                 -ERR Invalid arguments.\r\n"
                );
                assert_eq!(ev, Some(Pop3Event::Close(QUIT_REPLY.to_vec())));
                assert_eq!(rest, 4);
            },
        );
    }

    #[test]
    fn line_cap_and_bad_login_cap() {
        let mut c = Pop3Login::new(
            Pop3LoginConfig {
                max_line: 10,
                ..Pop3LoginConfig::default()
            },
            false,
        );
        assert_eq!(
            c.feed(b"USER abcdefghijkl\r\n").1,
            Pop3Event::Close(b"-ERR Line too long.\r\n".to_vec())
        );
        let mut c = core();
        for i in 1..=5 {
            c.feed(b"USER a\r\n");
            assert!(matches!(c.feed(b"PASS b\r\n").1, Pop3Event::Login(_)));
            let ev = c.refused(Refusal::AuthFailed);
            let t = b"-ERR [AUTH] Authentication failed.\r\n".to_vec();
            assert_eq!(
                ev,
                if i < 5 {
                    Pop3Event::Reply(t)
                } else {
                    Pop3Event::Close(t)
                }
            );
        }
        let mut c = core();
        c.feed(b"USER a\r\n");
        c.feed(b"PASS b\r\n");
        assert_eq!(
            c.refused(Refusal::Unavailable),
            Pop3Event::Reply(b"-ERR [SYS/TEMP] Backend unavailable\r\n".to_vec())
        );
        // USER must be given again after a failure.
        assert_eq!(
            c.feed(b"PASS b\r\n").1,
            Pop3Event::Reply(b"-ERR USER first.\r\n".to_vec())
        );
        c.feed(b"USER a\r\n");
        c.feed(b"PASS b\r\n");
        assert_eq!(c.accepted(), b"+OK Logged in.\r\n");
    }
}
