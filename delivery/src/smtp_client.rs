//! Sans-I/O SMTP client core (RFC 5321, RFC 2920 PIPELINING, RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3207 STARTTLS).
//!
//! Written here because `smtp_proto::client` did not exist when this crate
//! was built; it has the same shape (the driver owns the socket and the
//! buffers, the core says what to do next) so it can be swapped for the
//! shared one later.
//!
//! The driver loop: [`ClientSession::new`] then read a reply and call
//! [`ClientSession::on_reply`]; each call returns an [`Action`]:
//! `SendAndRead(bytes)` (write, then read the next reply), `Read` (a
//! pipelined reply is still due), `StartTls` (handshake, then
//! [`ClientSession::tls_established`]), `SendMessage` (stream the
//! dot-stuffed body and `.\r\n`, then [`ClientSession::message_sent`]),
//! `Ready` (idle: take results, start the next transaction with
//! [`ClientSession::begin`] or [`ClientSession::quit`]), `Failed` and
//! `Closed`. A failed session stays failed.

use std::collections::VecDeque;

use crate::Outcome;

/// Longest reply line accepted (RFC 5321 4.5.3.1.5 says 512; be lenient).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply.
pub const MAX_REPLY_LINES: usize = 256;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Text of each line, without code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// `code text` lines joined with `\n`, as qmail-remote reports them.
    pub fn text(&self) -> String {
        if self.lines.is_empty() {
            return self.code.to_string();
        }
        self.lines
            .iter()
            .map(|l| format!("{} {}", self.code, l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// 2, 3, 4 or 5.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The outcome this reply means for a recipient.
    pub fn outcome(&self) -> Outcome {
        match self.class() {
            2 | 3 => Outcome::Delivered(self.text()),
            5 => Outcome::Permanent(self.text()),
            _ => Outcome::Temporary(self.text()),
        }
    }
}

/// A reply that is not SMTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line does not start with three digits and ` `/`-`, or the code
    /// changes within a multi-line reply.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// A line or the whole reply exceeds the caps.
    #[error("reply too long")]
    TooLong,
}

/// Parses one complete reply from the front of `buf`: `Ok(None)` if more
/// input is needed, else the reply and the bytes it used. Lines may end in
/// CRLF or bare LF.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut lines = Vec::new();
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() - pos > MAX_REPLY_LINE {
                return Err(ReplyError::TooLong);
            }
            // Garbage is reported as soon as it is visible, not when a newline comes.
            check_prefix(&buf[pos..])?;
            return Ok(None);
        };
        let raw = &buf[pos..pos + nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.len() > MAX_REPLY_LINE {
            return Err(ReplyError::TooLong);
        }
        pos += nl + 1;
        let bad = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || line[0] == b'0' {
            return Err(bad());
        }
        let c =
            (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
        if code.is_some_and(|k| k != c) {
            return Err(bad());
        }
        code = Some(c);
        let sep = line.get(3).copied();
        if !matches!(sep, None | Some(b' ') | Some(b'-')) {
            return Err(bad());
        }
        lines.push(String::from_utf8_lossy(line.get(4..).unwrap_or(b"")).into_owned());
        if lines.len() > MAX_REPLY_LINES {
            return Err(ReplyError::TooLong);
        }
        if sep != Some(b'-') {
            return Ok(Some((Reply { code: c, lines }, pos)));
        }
    }
}

fn check_prefix(partial: &[u8]) -> Result<(), ReplyError> {
    let ok = partial
        .iter()
        .take(3)
        .enumerate()
        .all(|(i, b)| b.is_ascii_digit() && !(i == 0 && *b == b'0'))
        && partial
            .get(3)
            .is_none_or(|b| matches!(b, b' ' | b'-' | b'\r'));
    if ok {
        Ok(())
    } else {
        Err(ReplyError::Malformed(
            String::from_utf8_lossy(&partial[..partial.len().min(80)]).into_owned(),
        ))
    }
}

/// Converts a queue-form message to wire form: leading dots doubled (RFC 5321 4.5.2), every
/// line end made CRLF (bare LF *and* bare CR, so a message can never carry `\r.\r` or
/// `\r.\r\n` to the next hop, SMTP smuggling), terminated by `.\r\n`. The one stuffer of
/// the workspace, [`smtp_proto::dot_stuff`], does the work.
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 40 + 5);
    smtp_proto::dot_stuff(msg, &mut out);
    out
}

/// Service extensions from the EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING.
    pub pipelining: bool,
    /// SIZE, with the limit (0 = none stated).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eightbitmime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// AUTH mechanisms.
    pub auth: Vec<String>,
}

impl Extensions {
    fn parse(reply: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => e.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "AUTH" => e.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        e
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name sent in EHLO/HELO (`helohost` or `me`).
    pub helo: String,
    /// Issue STARTTLS when offered (and the session is not TLS yet).
    pub starttls: bool,
    /// Authenticate after EHLO (and STARTTLS) with these (RFC 4954).
    pub auth: Option<crate::routes::Credentials>,
}

/// One mail transaction.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// Recipients.
    pub recipients: Vec<String>,
    /// Message size in bytes (for SIZE=).
    pub size: u64,
    /// Whether the message has bytes above 127 (BODY=8BITMIME).
    pub eightbit: bool,
}

/// Why a session is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The greeting was not 2xx.
    #[error("greeting: {}", .0.text())]
    Greeting(Reply),
    /// EHLO and HELO were refused.
    #[error("HELO: {}", .0.text())]
    Helo(Reply),
    /// AUTH could not be done or was refused (the text never holds the password).
    #[error("AUTH: {0}")]
    Auth(String),
    /// A call made in the wrong state (a driver bug).
    #[error("client core misuse: {0}")]
    Misuse(&'static str),
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes, then read a reply.
    SendAndRead(Vec<u8>),
    /// Read the next (pipelined) reply.
    Read,
    /// Perform the TLS handshake, then call `tls_established`.
    StartTls,
    /// Stream the message in wire form ([`dot_stuff`]), then call `message_sent`.
    SendMessage,
    /// Idle: results of the last transaction (if any) are ready.
    Ready,
    /// The session is unusable.
    Failed(SessionError),
    /// QUIT done.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ExpectGreeting,
    ExpectEhlo,
    ExpectHelo,
    ExpectStartTls,
    Handshaking,
    ExpectAuth(AuthStep),
    Ready,
    InTransaction,
    ExpectDataEnd,
    ExpectIgnoredDataEnd,
    ExpectQuit,
    Failed,
    Closed,
}

/// Where an AUTH exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    /// AUTH LOGIN sent: the user name is asked for.
    LoginUser,
    /// The user name sent: the password is asked for.
    LoginPassword,
    /// Everything sent: 235 expected.
    Outcome,
}

struct Tx {
    env: Envelope,
    pending: VecDeque<Pending>,
    /// Commands not yet sent (without PIPELINING, one goes at a time).
    unsent: VecDeque<(Pending, String)>,
    mail: Option<Reply>,
    rcpt: Vec<Option<Reply>>,
    data_ok: bool,
}

/// The client session state machine.
pub struct ClientSession {
    cfg: ClientConfig,
    state: State,
    ext: Extensions,
    tls: bool,
    tx: Option<Tx>,
    results: Option<Vec<Outcome>>,
    needs_rset: bool,
    closing: bool,
    greeting: Option<Reply>,
}

/// `VERB<address>\r\n`.
fn command(verb: &str, a: &str) -> String {
    let mut c = String::with_capacity(verb.len() + a.len() + 4);
    c.push_str(verb);
    c.push('<');
    c.push_str(a);
    c.push_str(">\r\n");
    c
}

impl ClientSession {
    /// A session that waits for the greeting (start by reading a reply).
    /// `tls` says whether the connection is already TLS (port 465).
    pub fn new(cfg: ClientConfig, tls: bool) -> ClientSession {
        ClientSession {
            cfg,
            state: State::ExpectGreeting,
            ext: Extensions::default(),
            tls,
            tx: None,
            results: None,
            needs_rset: false,
            closing: false,
            greeting: None,
        }
    }

    /// Extensions of the peer (after EHLO).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The greeting reply.
    pub fn greeting(&self) -> Option<&Reply> {
        self.greeting.as_ref()
    }

    /// Whether a new transaction can be started (idle and not closing).
    pub fn is_reusable(&self) -> bool {
        self.state == State::Ready && !self.closing
    }

    /// The per-recipient outcomes of the finished transaction.
    pub fn take_results(&mut self) -> Option<Vec<Outcome>> {
        self.results.take()
    }

    fn fail(&mut self, e: SessionError) -> Action {
        self.state = State::Failed;
        Action::Failed(e)
    }

    fn ehlo(&mut self) -> Action {
        self.state = State::ExpectEhlo;
        Action::SendAndRead(format!("EHLO {}\r\n", self.cfg.helo).into_bytes())
    }

    /// Feeds the next reply.
    pub fn on_reply(&mut self, r: Reply) -> Action {
        match self.state {
            State::ExpectGreeting => {
                self.greeting = Some(r.clone());
                if r.class() != 2 {
                    return self.fail(SessionError::Greeting(r));
                }
                self.ehlo()
            }
            State::ExpectEhlo => match r.class() {
                2 => {
                    self.ext = Extensions::parse(&r);
                    if self.cfg.starttls && self.ext.starttls && !self.tls {
                        self.state = State::ExpectStartTls;
                        return Action::SendAndRead(b"STARTTLS\r\n".to_vec());
                    }
                    self.authenticate()
                }
                5 => {
                    self.state = State::ExpectHelo;
                    Action::SendAndRead(format!("HELO {}\r\n", self.cfg.helo).into_bytes())
                }
                _ => self.fail(SessionError::Helo(r)),
            },
            State::ExpectHelo => {
                if r.class() != 2 {
                    return self.fail(SessionError::Helo(r));
                }
                self.ext = Extensions::default();
                self.authenticate()
            }
            State::ExpectStartTls => {
                if r.code == 220 {
                    self.state = State::Handshaking;
                    Action::StartTls
                } else {
                    // Opportunistic: a refused STARTTLS means plaintext.
                    self.authenticate()
                }
            }
            State::ExpectAuth(step) => self.auth_reply(step, r),
            State::InTransaction => self.tx_reply(r),
            State::ExpectDataEnd => {
                let tx = self.tx.take();
                let results = match tx {
                    Some(tx) => tx
                        .rcpt
                        .iter()
                        .map(|rr| match rr {
                            Some(rr) if rr.class() == 2 => r.outcome(),
                            Some(rr) => rr.outcome(),
                            None => Outcome::Temporary("no reply to RCPT".into()),
                        })
                        .collect(),
                    None => Vec::new(),
                };
                self.finish(results, r.code == 421)
            }
            State::ExpectIgnoredDataEnd => {
                let results = self.tx.take().map(|tx| rcpt_only(&tx)).unwrap_or_default();
                self.finish(results, r.code == 421)
            }
            State::ExpectQuit => {
                self.state = State::Closed;
                Action::Closed
            }
            State::Handshaking | State::Ready | State::Failed | State::Closed => {
                self.fail(SessionError::Misuse("reply fed while none was expected"))
            }
        }
    }

    /// After EHLO (and STARTTLS): AUTH when credentials are configured
    /// (PLAIN, else LOGIN, unless one is named), else ready.
    fn authenticate(&mut self) -> Action {
        let Some(c) = &self.cfg.auth else {
            self.state = State::Ready;
            return Action::Ready;
        };
        if c.require_tls && !self.tls {
            return self.fail(SessionError::Auth(
                "SECURE_AUTH: the relay offers no TLS, credentials not sent".into(),
            ));
        }
        let offered = &self.ext.auth;
        let mechanism = match &c.mechanism {
            Some(m) => offered.contains(m).then(|| m.clone()),
            None => crate::routes::AUTH_MECHANISMS
                .iter()
                .find(|m| offered.iter().any(|o| o == *m))
                .map(|m| m.to_string()),
        };
        let Some(mechanism) = mechanism else {
            let wanted = c
                .mechanism
                .clone()
                .unwrap_or_else(|| "PLAIN or LOGIN".into());
            return self.fail(SessionError::Auth(format!(
                "the relay offers {} (wanted {wanted})",
                if offered.is_empty() {
                    "no AUTH".to_string()
                } else {
                    offered.join(" ")
                }
            )));
        };
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        if mechanism == "PLAIN" {
            let token = b64(format!("\0{}\0{}", c.user, c.password).as_bytes());
            self.state = State::ExpectAuth(AuthStep::Outcome);
            Action::SendAndRead(format!("AUTH PLAIN {token}\r\n").into_bytes())
        } else {
            self.state = State::ExpectAuth(AuthStep::LoginUser);
            Action::SendAndRead(b"AUTH LOGIN\r\n".to_vec())
        }
    }

    fn auth_reply(&mut self, step: AuthStep, r: Reply) -> Action {
        use base64::Engine as _;
        let Some(c) = &self.cfg.auth else {
            return self.fail(SessionError::Misuse("AUTH reply without credentials"));
        };
        let send = |secret: &str| {
            let mut line = base64::engine::general_purpose::STANDARD.encode(secret);
            line.push_str("\r\n");
            Action::SendAndRead(line.into_bytes())
        };
        match (step, r.code) {
            (AuthStep::LoginUser, 334) => {
                let a = send(&c.user);
                self.state = State::ExpectAuth(AuthStep::LoginPassword);
                a
            }
            (AuthStep::LoginPassword, 334) => {
                let a = send(&c.password);
                self.state = State::ExpectAuth(AuthStep::Outcome);
                a
            }
            (AuthStep::Outcome, 235) => {
                self.state = State::Ready;
                Action::Ready
            }
            _ => {
                let user = c.user.clone();
                self.fail(SessionError::Auth(format!(
                    "{user} was refused: {}",
                    r.text()
                )))
            }
        }
    }

    fn finish(&mut self, results: Vec<Outcome>, closing: bool) -> Action {
        self.results = Some(results);
        // needs_rset stays set: a reused connection starts with RSET, whose
        // reply also proves the idle connection is still alive.
        self.closing |= closing;
        self.state = State::Ready;
        Action::Ready
    }

    /// The TLS handshake finished: EHLO again (RFC 3207 4.2).
    pub fn tls_established(&mut self) -> Action {
        if self.state != State::Handshaking {
            return self.fail(SessionError::Misuse("tls_established outside STARTTLS"));
        }
        self.tls = true;
        self.ehlo()
    }

    /// Starts a transaction. Recipients the peer cannot take (SMTPUTF8
    /// needed but not offered, SIZE exceeded) fail at once and `Ready` is
    /// returned with the results.
    pub fn begin(&mut self, env: Envelope) -> Action {
        if self.state != State::Ready || self.closing {
            return self.fail(SessionError::Misuse("begin while not ready"));
        }
        let n = env.recipients.len();
        let utf8 = !env.sender.is_ascii() || env.recipients.iter().any(|r| !r.is_ascii());
        if utf8 && !self.ext.smtputf8 {
            let o = Outcome::Permanent(
                "Remote host does not offer SMTPUTF8 but the address is not ASCII (#5.6.7)".into(),
            );
            self.results = Some(vec![o; n]);
            return Action::Ready;
        }
        if let Some(max) = self.ext.size {
            if max > 0 && env.size > max {
                let o = Outcome::Permanent(format!(
                    "Message is {} bytes; remote host accepts at most {max} (#5.3.4)",
                    env.size
                ));
                self.results = Some(vec![o; n]);
                return Action::Ready;
            }
        }
        // Built by appending (no `format!` per command: this runs for every relayed message).
        let mut mail = String::with_capacity(env.sender.len() + 64);
        mail.push_str("MAIL FROM:<");
        mail.push_str(&env.sender);
        mail.push('>');
        if self.ext.size.is_some() {
            use std::fmt::Write as _;
            let _ = write!(mail, " SIZE={}", env.size);
        }
        if env.eightbit && self.ext.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        let mut unsent = VecDeque::new();
        if self.needs_rset {
            unsent.push_back((Pending::Rset, "RSET\r\n".to_string()));
        }
        mail.push_str("\r\n");
        unsent.push_back((Pending::Mail, mail));
        for (i, r) in env.recipients.iter().enumerate() {
            unsent.push_back((Pending::Rcpt(i), command("RCPT TO:", r)));
        }
        unsent.push_back((Pending::Data, "DATA\r\n".to_string()));
        self.tx = Some(Tx {
            env,
            pending: VecDeque::new(),
            unsent,
            mail: None,
            rcpt: vec![None; n],
            data_ok: false,
        });
        self.needs_rset = true;
        self.state = State::InTransaction;
        self.flush()
    }

    /// Sends what may be sent now: everything with PIPELINING (RFC 2920:
    /// DATA is the last command of the group), else one command.
    fn flush(&mut self) -> Action {
        let pipelining = self.ext.pipelining;
        let Some(tx) = self.tx.as_mut() else {
            return self.fail(SessionError::Misuse("no transaction"));
        };
        let mut out = String::new();
        while let Some((p, cmd)) = tx.unsent.pop_front() {
            out.push_str(&cmd);
            tx.pending.push_back(p);
            if !pipelining {
                break;
            }
        }
        if out.is_empty() {
            Action::Read
        } else {
            Action::SendAndRead(out.into_bytes())
        }
    }

    fn tx_reply(&mut self, r: Reply) -> Action {
        let pipelining = self.ext.pipelining;
        let Some(tx) = self.tx.as_mut() else {
            return self.fail(SessionError::Misuse("no transaction"));
        };
        let Some(p) = tx.pending.pop_front() else {
            return self.fail(SessionError::Misuse("unexpected reply"));
        };
        if r.code == 421 {
            // Service closing: every recipient not yet done is deferred.
            let o = Outcome::Temporary(r.text());
            let results = tx.rcpt.iter().map(|_| o.clone()).collect();
            self.tx = None;
            self.closing = true;
            self.results = Some(results);
            self.state = State::Ready;
            return Action::Ready;
        }
        match p {
            Pending::Rset => {}
            Pending::Mail => {
                tx.mail = Some(r.clone());
                if r.class() != 2 && !pipelining {
                    return self.abort_tx(r.outcome());
                }
            }
            Pending::Rcpt(i) => {
                tx.rcpt[i] = Some(r);
                let last = i + 1 == tx.rcpt.len();
                if last && !pipelining && !tx.rcpt.iter().flatten().any(|x| x.class() == 2) {
                    let results = rcpt_only(tx);
                    self.tx = None;
                    return self.finish(results, false);
                }
            }
            Pending::Data => {
                let mail_ok = tx.mail.as_ref().is_some_and(|m| m.class() == 2);
                let any_rcpt = tx.rcpt.iter().flatten().any(|x| x.class() == 2);
                if r.code == 354 {
                    tx.data_ok = true;
                    if mail_ok && any_rcpt {
                        self.state = State::ExpectDataEnd;
                        return Action::SendMessage;
                    }
                    // RFC 2920 3.1: the server took DATA though nothing is
                    // deliverable; send an empty message and ignore the reply.
                    self.state = State::ExpectIgnoredDataEnd;
                    return Action::SendAndRead(b".\r\n".to_vec());
                }
                if !mail_ok {
                    let o = tx
                        .mail
                        .as_ref()
                        .map(Reply::outcome)
                        .unwrap_or_else(|| r.outcome());
                    return self.abort_tx(o);
                }
                if !any_rcpt {
                    let results = rcpt_only(tx);
                    self.tx = None;
                    return self.finish(results, false);
                }
                // DATA refused: accepted recipients get the DATA reply.
                let results = tx
                    .rcpt
                    .iter()
                    .map(|x| match x {
                        Some(x) if x.class() == 2 => r.outcome(),
                        Some(x) => x.outcome(),
                        None => r.outcome(),
                    })
                    .collect();
                self.tx = None;
                return self.finish(results, false);
            }
        }
        self.flush()
    }

    fn abort_tx(&mut self, o: Outcome) -> Action {
        let n = self
            .tx
            .as_ref()
            .map(|t| t.env.recipients.len())
            .unwrap_or(0);
        self.tx = None;
        self.finish(vec![o; n], false)
    }

    /// The message and its terminating dot were written.
    pub fn message_sent(&mut self) -> Action {
        if self.state != State::ExpectDataEnd {
            return self.fail(SessionError::Misuse("message_sent outside DATA"));
        }
        Action::Read
    }

    /// Ends the session politely.
    pub fn quit(&mut self) -> Action {
        self.state = State::ExpectQuit;
        Action::SendAndRead(b"QUIT\r\n".to_vec())
    }
}

fn rcpt_only(tx: &Tx) -> Vec<Outcome> {
    tx.rcpt
        .iter()
        .map(|x| match x {
            // Accepted but the message was never sent: try again later.
            Some(x) if x.class() == 2 => {
                Outcome::Temporary(format!("{} (DATA not completed)", x.text()))
            }
            Some(x) => x.outcome(),
            None => Outcome::Temporary("no reply to RCPT".into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Reply {
        parse_reply(s.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply(b"250 ok\r\n"),
            Ok(Some((
                Reply {
                    code: 250,
                    lines: vec!["ok".into()]
                },
                8
            )))
        );
        assert_eq!(
            parse_reply(b"250-a\r\n250 b\n"),
            Ok(Some((
                Reply {
                    code: 250,
                    lines: vec!["a".into(), "b".into()]
                },
                13
            )))
        );
        assert_eq!(parse_reply(b"250-a\r\n25"), Ok(None));
        assert_eq!(
            parse_reply(b"250\r\n").unwrap().unwrap().0.lines,
            vec![String::new()]
        );
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"hel").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert!(parse_reply(b"250xok\r\n").is_err());
        assert!(parse_reply(&vec![b'2'; MAX_REPLY_LINE + 10]).is_err());
        // Split at every byte: never an error, complete only at the end.
        let full = b"220-mx hello\r\n220 ESMTP\r\n";
        for i in 0..full.len() {
            assert_eq!(parse_reply(&full[..i]), Ok(None), "{i}");
        }
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\n.b\n..\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r\nb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        // Bare CR is a line end too: `\r.\r` can never leave as an end of data.
        assert_eq!(dot_stuff(b"a\r.\rb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r.\r\n"), b"a\r\n..\r\n.\r\n");
    }

    /// The line-wise `dot_stuff` against the byte-at-a-time definition, on
    /// random mixes of the bytes that matter.
    #[test]
    fn dot_stuffing_matches_bytewise_definition() {
        fn reference(msg: &[u8]) -> Vec<u8> {
            let (mut out, mut bol, mut prev) = (Vec::new(), true, 0u8);
            for &b in msg {
                // A CR not followed by LF is completed to CRLF.
                if prev == b'\r' && b != b'\n' {
                    out.push(b'\n');
                    bol = true;
                }
                if bol && b == b'.' {
                    out.push(b'.');
                }
                if b == b'\n' && prev != b'\r' {
                    out.push(b'\r');
                }
                out.push(b);
                bol = b == b'\n';
                prev = b;
            }
            if prev == b'\r' {
                out.push(b'\n');
                bol = true;
            }
            if !msg.is_empty() && !bol {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|i| b".\r\nab"[((seed >> (i * 2 % 60)) % 5) as usize])
                .collect();
            assert_eq!(dot_stuff(&msg), reference(&msg), "input {msg:?}");
        }
    }

    fn session(ext: &str) -> ClientSession {
        let mut s = ClientSession::new(
            ClientConfig {
                helo: "me".into(),
                starttls: true,
                auth: None,
            },
            false,
        );
        assert_eq!(
            s.on_reply(reply("220 hi\r\n")),
            Action::SendAndRead(b"EHLO me\r\n".to_vec())
        );
        let a = s.on_reply(reply(ext));
        if a != Action::Ready {
            assert_eq!(a, Action::SendAndRead(b"STARTTLS\r\n".to_vec()));
        }
        s
    }

    fn auth_session(ext: &str, auth: &str, tls: bool) -> (ClientSession, Action) {
        let (_, route) = crate::routes::parse_line(&format!("x:relay {auth}")).unwrap();
        let mut s = ClientSession::new(
            ClientConfig {
                helo: "me".into(),
                starttls: false,
                auth: route.credentials,
            },
            tls,
        );
        s.on_reply(reply("220 hi\r\n"));
        let a = s.on_reply(reply(ext));
        (s, a)
    }

    #[test]
    fn auth_plain_then_ready() {
        let (mut s, a) = auth_session("250-me\r\n250 AUTH LOGIN PLAIN\r\n", "u p", false);
        // base64("\0u\0p")
        assert_eq!(a, Action::SendAndRead(b"AUTH PLAIN AHUAcA==\r\n".to_vec()));
        assert_eq!(s.on_reply(reply("235 ok\r\n")), Action::Ready);
        assert!(s.is_reusable());
    }

    #[test]
    fn auth_login_steps_and_refusal() {
        let (mut s, a) = auth_session(
            "250-me\r\n250 AUTH PLAIN LOGIN\r\n",
            "user pw AUTH_SMTP=LOGIN",
            true,
        );
        assert_eq!(a, Action::SendAndRead(b"AUTH LOGIN\r\n".to_vec()));
        let a = s.on_reply(reply("334 VXNlcm5hbWU6\r\n"));
        assert_eq!(a, Action::SendAndRead(b"dXNlcg==\r\n".to_vec()));
        let a = s.on_reply(reply("334 UGFzc3dvcmQ6\r\n"));
        assert_eq!(a, Action::SendAndRead(b"cHc=\r\n".to_vec()));
        let Action::Failed(e) = s.on_reply(reply("535 5.7.8 no\r\n")) else {
            panic!("refusal must fail the session");
        };
        assert!(e.to_string().contains("user was refused"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn auth_needs_an_offered_mechanism_and_tls_when_secure() {
        let (_, a) = auth_session("250 me\r\n", "u p", false);
        assert!(matches!(a, Action::Failed(SessionError::Auth(_))), "{a:?}");
        let (_, a) = auth_session("250-me\r\n250 AUTH PLAIN\r\n", "u p SECURE_AUTH=1", false);
        assert!(matches!(a, Action::Failed(SessionError::Auth(_))), "{a:?}");
        let (_, a) = auth_session("250-me\r\n250 AUTH PLAIN\r\n", "u p SECURE_AUTH=1", true);
        assert!(matches!(a, Action::SendAndRead(_)), "{a:?}");
    }

    fn env(n: usize) -> Envelope {
        Envelope {
            sender: "s@x".into(),
            recipients: (0..n).map(|i| format!("r{i}@y")).collect(),
            size: 10,
            eightbit: true,
        }
    }

    #[test]
    fn pipelined_transaction() {
        let mut s = session("250-me\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n");
        let a = s.begin(env(3));
        assert_eq!(
            a,
            Action::SendAndRead(
                b"MAIL FROM:<s@x> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<r0@y>\r\nRCPT TO:<r1@y>\r\nRCPT TO:<r2@y>\r\nDATA\r\n".to_vec()
            )
        );
        assert_eq!(s.on_reply(reply("250 ok\r\n")), Action::Read);
        assert_eq!(s.on_reply(reply("250 ok\r\n")), Action::Read);
        assert_eq!(s.on_reply(reply("550 5.1.1 no\r\n")), Action::Read);
        assert_eq!(s.on_reply(reply("451 later\r\n")), Action::Read);
        assert_eq!(s.on_reply(reply("354 go\r\n")), Action::SendMessage);
        assert_eq!(s.message_sent(), Action::Read);
        assert_eq!(s.on_reply(reply("250 queued\r\n")), Action::Ready);
        let r = s.take_results().unwrap();
        assert_eq!(r[0], Outcome::Delivered("250 queued".into()));
        assert_eq!(r[1], Outcome::Permanent("550 5.1.1 no".into()));
        assert_eq!(r[2], Outcome::Temporary("451 later".into()));
        // The next transaction starts with RSET.
        match s.begin(env(1)) {
            Action::SendAndRead(b) => assert!(b.starts_with(b"RSET\r\nMAIL FROM:<s@x>")),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn unpipelined_mail_refused() {
        let mut s = session("250 me\r\n");
        assert_eq!(
            s.begin(env(2)),
            Action::SendAndRead(b"MAIL FROM:<s@x>\r\n".to_vec())
        );
        assert_eq!(s.on_reply(reply("553 sender bad\r\n")), Action::Ready);
        let r = s.take_results().unwrap();
        assert_eq!(r, vec![Outcome::Permanent("553 sender bad".into()); 2]);
    }

    #[test]
    fn unpipelined_all_rcpts_refused_no_data() {
        let mut s = session("250 me\r\n");
        s.begin(env(1));
        assert_eq!(
            s.on_reply(reply("250 ok\r\n")),
            Action::SendAndRead(b"RCPT TO:<r0@y>\r\n".to_vec())
        );
        assert_eq!(s.on_reply(reply("550 no\r\n")), Action::Ready);
        assert_eq!(
            s.take_results().unwrap(),
            vec![Outcome::Permanent("550 no".into())]
        );
    }

    #[test]
    fn ehlo_fallback_and_greeting() {
        let mut s = ClientSession::new(
            ClientConfig {
                helo: "me".into(),
                starttls: false,
                auth: None,
            },
            false,
        );
        s.on_reply(reply("220 hi\r\n"));
        assert_eq!(
            s.on_reply(reply("502 what\r\n")),
            Action::SendAndRead(b"HELO me\r\n".to_vec())
        );
        assert_eq!(s.on_reply(reply("250 hi\r\n")), Action::Ready);
        let mut s = ClientSession::new(
            ClientConfig {
                helo: "me".into(),
                starttls: false,
                auth: None,
            },
            false,
        );
        assert!(matches!(
            s.on_reply(reply("554 go away\r\n")),
            Action::Failed(SessionError::Greeting(_))
        ));
    }

    #[test]
    fn starttls_then_ehlo() {
        let mut s = session("250-me\r\n250 STARTTLS\r\n");
        assert_eq!(s.on_reply(reply("220 go\r\n")), Action::StartTls);
        assert_eq!(
            s.tls_established(),
            Action::SendAndRead(b"EHLO me\r\n".to_vec())
        );
        assert_eq!(
            s.on_reply(reply("250-me\r\n250 STARTTLS\r\n")),
            Action::Ready
        );
        assert!(s.is_tls());
    }

    #[test]
    fn utf8_and_size_checks() {
        let mut s = session("250-me\r\n250 SIZE 5\r\n");
        assert_eq!(s.begin(env(1)), Action::Ready);
        assert!(
            matches!(&s.take_results().unwrap()[0], Outcome::Permanent(t) if t.contains("5.3.4"))
        );
        let mut e = env(1);
        e.recipients[0] = "jö@y".into();
        assert_eq!(s.begin(e), Action::Ready);
        assert!(
            matches!(&s.take_results().unwrap()[0], Outcome::Permanent(t) if t.contains("5.6.7"))
        );
    }

    #[test]
    fn closing_421() {
        let mut s = session("250-me\r\n250 PIPELINING\r\n");
        s.begin(env(2));
        assert_eq!(s.on_reply(reply("421 bye\r\n")), Action::Ready);
        assert_eq!(
            s.take_results().unwrap(),
            vec![Outcome::Temporary("421 bye".into()); 2]
        );
        assert!(!s.is_reusable());
    }
}
