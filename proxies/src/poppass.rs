//! The poppassd protocol (Eudora's password-change service, IndiMail's `qmail-poppass.106`
//! running `vsetpass`, spec 8.2) as a sans-I/O state machine.
//!
//! ```text
//! S: 200 <host> poppassd hello, who are you?
//! C: USER name            S: 200 your password please.
//! C: PASS old             S: 200 your new password please.    (or 500 Old password is incorrect.)
//! C: NEWPASS new          S: 200 Password changed, thank-you. (or 500 <reason>)
//! C: QUIT                 S: 200 Bye.
//! ```
//!
//! Everything else, and commands out of order, are answered `500`. A password is the rest of
//! its line and may hold spaces. Without TLS, clear-text passwords are refused at `USER`
//! and `PASS` unless the client is in [`crate::ProxyConfig::plaintext_auth`] (the rule of
//! the POP3 and IMAP servers). Lines are capped ([`PoppassConfig::max_line`]); after
//! [`PoppassConfig::max_bad_logins`] wrong passwords the connection is closed.

use std::time::Duration;

/// Limits and options of a poppassd session.
#[derive(Debug, Clone)]
pub struct PoppassConfig {
    /// Longest command line including CRLF.
    pub max_line: usize,
    /// Wrong old passwords before the connection is closed (`BADLOGINS`).
    pub max_bad_logins: u32,
    /// Longest wait for one command before the driver disconnects.
    pub command_timeout: Duration,
    /// Whether passwords may be sent on a connection that is not encrypted.
    pub plaintext_without_tls: bool,
}

impl Default for PoppassConfig {
    fn default() -> Self {
        PoppassConfig {
            max_line: 1024,
            max_bad_logins: 5,
            command_timeout: Duration::from_secs(60),
            plaintext_without_tls: false,
        }
    }
}

/// What the driver must do next.
#[derive(Clone, PartialEq, Eq)]
pub enum PoppassEvent {
    /// All input was used; read more.
    NeedMore,
    /// Send these bytes, then keep feeding.
    Reply(Vec<u8>),
    /// Check `password` is the current password of `user` and that the account may change
    /// it, then call [`Poppass::verified`].
    Verify {
        /// The user name as given.
        user: String,
        /// The old password.
        password: String,
    },
    /// Store `new_password` for `user` (verified before), then call [`Poppass::changed`].
    Change {
        /// The user name as given.
        user: String,
        /// The new password.
        new_password: String,
    },
    /// Send these bytes and close.
    Close(Vec<u8>),
}

impl std::fmt::Debug for PoppassEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoppassEvent::NeedMore => f.write_str("NeedMore"),
            PoppassEvent::Reply(r) => write!(f, "Reply({:?})", String::from_utf8_lossy(r)),
            PoppassEvent::Close(r) => write!(f, "Close({:?})", String::from_utf8_lossy(r)),
            PoppassEvent::Verify { user, .. } => write!(f, "Verify({user:?})"),
            PoppassEvent::Change { user, .. } => write!(f, "Change({user:?})"),
        }
    }
}

/// Why the driver refused a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoppassRefusal {
    /// Unknown user, wrong old password or inactive account (counts as a bad login).
    BadPassword,
    /// The account may not change its password (`NO_PASSWD_CHNG`, or the domain's
    /// `vlimits`).
    NotAllowed,
    /// The directory could not answer now.
    TempFail,
    /// The new password is not acceptable; the text says why.
    BadNewPassword(String),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    ExpectUser,
    ExpectPass,
    AwaitVerify,
    ExpectNewPass,
    AwaitChange,
    /// Changed: only `QUIT` is left.
    ExpectQuit,
    Done,
}

/// One poppassd connection.
#[derive(Debug)]
pub struct Poppass {
    cfg: PoppassConfig,
    state: State,
    tls_active: bool,
    user: Option<String>,
    bad_logins: u32,
    line: Vec<u8>,
}

/// Reply to a password sent in the clear by a client that may not.
pub const NEED_TLS: &[u8] = b"500 password changes need TLS (use the poppasss port)\r\n";

impl Poppass {
    /// A fresh connection (`tls_active` on the implicit-TLS port).
    pub fn new(cfg: PoppassConfig, tls_active: bool) -> Poppass {
        Poppass {
            cfg,
            state: State::ExpectUser,
            tls_active,
            user: None,
            bad_logins: 0,
            line: Vec::new(),
        }
    }

    /// The configuration (the driver takes its timeouts from here).
    pub fn config(&self) -> &PoppassConfig {
        &self.cfg
    }

    /// The greeting.
    pub fn greeting(host: &str) -> Vec<u8> {
        format!("200 {host} poppassd hello, who are you?\r\n").into_bytes()
    }

    /// The user named by `USER`, once given.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Feed input; returns how many bytes were used and what to do. Call again with the
    /// rest while the event is not [`PoppassEvent::NeedMore`].
    pub fn feed(&mut self, input: &[u8]) -> (usize, PoppassEvent) {
        if matches!(
            self.state,
            State::AwaitVerify | State::AwaitChange | State::Done
        ) {
            return (0, PoppassEvent::NeedMore);
        }
        let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(p) => (&input[..=p], true),
            None => (input, false),
        };
        if self.line.len() + chunk.len() > self.cfg.max_line {
            self.state = State::Done;
            return (chunk.len(), close("500 Line too long."));
        }
        self.line.extend_from_slice(chunk);
        if !complete {
            return (chunk.len(), PoppassEvent::NeedMore);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        (chunk.len(), self.execute(&line))
    }

    fn execute(&mut self, line: &[u8]) -> PoppassEvent {
        let (cmd, arg) = match line.iter().position(|&b| b == b' ') {
            Some(p) => (&line[..p], Some(&line[p + 1..])),
            None => (line, None),
        };
        let cmd = String::from_utf8_lossy(cmd).to_ascii_uppercase();
        let secure = self.tls_active || self.cfg.plaintext_without_tls;
        let arg = arg.filter(|a| !a.is_empty());
        match (cmd.as_str(), arg) {
            ("QUIT", _) => {
                self.state = State::Done;
                close("200 Bye.")
            }
            ("USER" | "PASS" | "NEWPASS", _) if !secure => PoppassEvent::Reply(NEED_TLS.to_vec()),
            ("USER", Some(u)) if self.state == State::ExpectUser => {
                match String::from_utf8(u.to_vec()) {
                    Ok(u) if !u.contains(char::is_whitespace) => {
                        self.user = Some(u);
                        self.state = State::ExpectPass;
                        reply("200 your password please.")
                    }
                    _ => reply("500 Invalid user name."),
                }
            }
            ("PASS", Some(p)) if self.state == State::ExpectPass => {
                let Some(user) = self.user.clone() else {
                    return reply("500 Username first.");
                };
                match String::from_utf8(p.to_vec()) {
                    Ok(password) => {
                        self.state = State::AwaitVerify;
                        PoppassEvent::Verify { user, password }
                    }
                    Err(_) => self.verified(Err(PoppassRefusal::BadPassword)),
                }
            }
            ("NEWPASS", Some(p)) if self.state == State::ExpectNewPass => {
                let Some(user) = self.user.clone() else {
                    return reply("500 Username first.");
                };
                match String::from_utf8(p.to_vec()) {
                    Ok(new_password) => {
                        self.state = State::AwaitChange;
                        PoppassEvent::Change { user, new_password }
                    }
                    Err(_) => reply("500 The new password is not valid UTF-8."),
                }
            }
            ("USER" | "PASS" | "NEWPASS", None) => reply("500 Missing argument."),
            ("USER" | "PASS" | "NEWPASS", Some(_)) => reply(match self.state {
                State::ExpectUser => "500 Username first.",
                State::ExpectPass => "500 Password first.",
                State::ExpectNewPass => "500 New password expected.",
                _ => "500 Password already changed, QUIT.",
            }),
            _ => reply("500 Unknown command."),
        }
    }

    /// The driver checked the old password: the reply, or a reply and close
    /// ([`PoppassEvent::Close`]) after too many wrong passwords.
    pub fn verified(&mut self, r: Result<(), PoppassRefusal>) -> PoppassEvent {
        let text = match r {
            Ok(()) => {
                self.state = State::ExpectNewPass;
                return reply("200 your new password please.");
            }
            Err(PoppassRefusal::BadPassword) => {
                self.bad_logins += 1;
                "500 Old password is incorrect."
            }
            Err(PoppassRefusal::NotAllowed) => {
                "500 Password changes are not allowed for this account."
            }
            Err(PoppassRefusal::TempFail) => "500 Temporary failure, try again later.",
            Err(PoppassRefusal::BadNewPassword(_)) => "500 Old password is incorrect.",
        };
        self.state = State::ExpectUser;
        self.user = None;
        if self.bad_logins >= self.cfg.max_bad_logins {
            self.state = State::Done;
            return close(text);
        }
        reply(text)
    }

    /// The driver tried to store the new password: the reply. A refused new password may be
    /// followed by another `NEWPASS`; anything else starts over at `USER`.
    pub fn changed(&mut self, r: Result<(), PoppassRefusal>) -> PoppassEvent {
        match r {
            Ok(()) => {
                self.state = State::ExpectQuit;
                reply("200 Password changed, thank-you.")
            }
            Err(PoppassRefusal::BadNewPassword(why)) => {
                self.state = State::ExpectNewPass;
                let why = why.replace(['\r', '\n'], " ");
                reply(&format!("500 {why}"))
            }
            Err(PoppassRefusal::TempFail) => {
                self.state = State::ExpectUser;
                self.user = None;
                reply("500 Temporary failure, try again later.")
            }
            Err(r) => self.verified(Err(r)),
        }
    }
}

fn reply(s: &str) -> PoppassEvent {
    PoppassEvent::Reply(format!("{s}\r\n").into_bytes())
}

fn close(s: &str) -> PoppassEvent {
    PoppassEvent::Close(format!("{s}\r\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(plain_ok: bool) -> Poppass {
        Poppass::new(
            PoppassConfig {
                plaintext_without_tls: plain_ok,
                max_bad_logins: 2,
                ..PoppassConfig::default()
            },
            false,
        )
    }

    /// Feeds `input` `step` bytes at a time; returns the replies and the first event that
    /// needs the driver (with the bytes left unused).
    fn run(c: &mut Poppass, input: &[u8], step: usize) -> (String, Option<PoppassEvent>, usize) {
        use crate::testing::{feed_in_steps, Fed};
        let (out, ev, left) = feed_in_steps(input, step, |b| match c.feed(b) {
            (n, PoppassEvent::NeedMore) => (n, Fed::More),
            (n, PoppassEvent::Reply(r)) => (n, Fed::Reply(r)),
            (n, e) => (n, Fed::Stop(e)),
        });
        (String::from_utf8(out).unwrap(), ev, left)
    }

    fn text(ev: PoppassEvent) -> String {
        match ev {
            PoppassEvent::Reply(r) | PoppassEvent::Close(r) => String::from_utf8(r).unwrap(),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn greeting() {
        assert_eq!(
            Poppass::greeting("mx.example.com"),
            b"200 mx.example.com poppassd hello, who are you?\r\n"
        );
    }

    #[test]
    fn full_dialogue_split_at_every_byte() {
        for step in 1..=40 {
            let mut c = core(true);
            let input = b"user alice@example.com\r\nPASS old secret\r\nNEWPASS new one\r\nQUIT\r\n";
            let (out, ev, left) = run(&mut c, input, step);
            assert_eq!(out, "200 your password please.\r\n");
            assert_eq!(
                ev,
                Some(PoppassEvent::Verify {
                    user: "alice@example.com".into(),
                    password: "old secret".into()
                })
            );
            let rest = &input[input.len() - left..];
            assert_eq!(
                text(c.verified(Ok(()))),
                "200 your new password please.\r\n"
            );
            let (out, ev, left) = run(&mut c, rest, step);
            assert_eq!(out, "");
            assert_eq!(
                ev,
                Some(PoppassEvent::Change {
                    user: "alice@example.com".into(),
                    new_password: "new one".into()
                })
            );
            let rest = &rest[rest.len() - left..];
            assert_eq!(
                text(c.changed(Ok(()))),
                "200 Password changed, thank-you.\r\n"
            );
            let (out, ev, _) = run(&mut c, rest, step);
            assert_eq!(out, "");
            assert_eq!(ev, Some(PoppassEvent::Close(b"200 Bye.\r\n".to_vec())));
        }
    }

    #[test]
    fn wrong_old_password_and_lockout() {
        let mut c = core(true);
        let (_, ev, _) = run(&mut c, b"USER a@b.c\nPASS x\n", 64);
        assert!(matches!(ev, Some(PoppassEvent::Verify { .. })));
        let r = c.verified(Err(PoppassRefusal::BadPassword));
        assert_eq!(text(r), "500 Old password is incorrect.\r\n");
        // Back to USER: PASS alone is out of order.
        let (out, _, _) = run(&mut c, b"PASS y\n", 64);
        assert_eq!(out, "500 Username first.\r\n");
        let (_, ev, _) = run(&mut c, b"USER a@b.c\nPASS y\n", 64);
        assert!(matches!(ev, Some(PoppassEvent::Verify { .. })));
        let r = c.verified(Err(PoppassRefusal::BadPassword));
        assert!(matches!(r, PoppassEvent::Close(_)), "{r:?}");
        assert_eq!(c.feed(b"USER a@b.c\n"), (0, PoppassEvent::NeedMore));
    }

    #[test]
    fn refusals() {
        let mut c = core(true);
        run(&mut c, b"USER a@b.c\nPASS x\n", 64);
        let r = c.verified(Err(PoppassRefusal::NotAllowed));
        assert_eq!(
            text(r),
            "500 Password changes are not allowed for this account.\r\n"
        );
        run(&mut c, b"USER a@b.c\nPASS x\n", 64);
        let r = c.verified(Err(PoppassRefusal::TempFail));
        assert_eq!(text(r), "500 Temporary failure, try again later.\r\n");
        // A refused new password may be retried.
        run(&mut c, b"USER a@b.c\nPASS x\n", 64);
        c.verified(Ok(()));
        run(&mut c, b"NEWPASS \n", 64);
        let (_, ev, _) = run(&mut c, b"NEWPASS x\n", 64);
        assert!(matches!(ev, Some(PoppassEvent::Change { .. })));
        let r = c.changed(Err(PoppassRefusal::BadNewPassword(
            "empty\npassword".into(),
        )));
        assert_eq!(text(r), "500 empty password\r\n");
        let (_, ev, _) = run(&mut c, b"NEWPASS good\n", 64);
        assert!(matches!(ev, Some(PoppassEvent::Change { .. })));
        c.changed(Ok(()));
        let (out, _, _) = run(&mut c, b"NEWPASS again\nUSER x\n", 64);
        assert_eq!(
            out,
            "500 Password already changed, QUIT.\r\n500 Password already changed, QUIT.\r\n"
        );
    }

    #[test]
    fn out_of_order_and_unknown() {
        let mut c = core(true);
        let (out, ev, _) = run(
            &mut c,
            b"NEWPASS x\nPASS x\nHELO\nUSER\nUSER two words\nUSER a@b.c\nUSER again\nNEWPASS y\n",
            64,
        );
        assert_eq!(ev, None);
        assert_eq!(
            out,
            "500 Username first.\r\n500 Username first.\r\n500 Unknown command.\r\n\
             500 Missing argument.\r\n500 Invalid user name.\r\n200 your password please.\r\n\
             500 Password first.\r\n500 Password first.\r\n"
        );
    }

    #[test]
    fn plaintext_needs_tls() {
        let mut c = core(false);
        let (out, ev, _) = run(&mut c, b"USER a@b.c\nPASS x\nQUIT\n", 64);
        let need = String::from_utf8(NEED_TLS.to_vec()).unwrap();
        assert_eq!(out, format!("{need}{need}"));
        assert_eq!(ev, Some(PoppassEvent::Close(b"200 Bye.\r\n".to_vec())));
        // Under TLS the same client may.
        let mut c = Poppass::new(PoppassConfig::default(), true);
        let (out, _, _) = run(&mut c, b"USER a@b.c\n", 64);
        assert_eq!(out, "200 your password please.\r\n");
    }

    #[test]
    fn long_line_closes() {
        let mut c = core(true);
        let mut input = b"USER ".to_vec();
        input.extend(std::iter::repeat_n(b'a', 2000));
        let (_, ev, _) = run(&mut c, &input, 100);
        assert_eq!(
            ev,
            Some(PoppassEvent::Close(b"500 Line too long.\r\n".to_vec()))
        );
    }
}
