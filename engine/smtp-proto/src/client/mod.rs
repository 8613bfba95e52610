//! Sans-I/O SMTP client session (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and
//! STARTTLS negotiation, AUTH PLAIN/LOGIN for relays that want credentials): the one client core
//! of the workspace, for remote delivery and for ETRN/ATRN.
//!
//! The driver owns the connection. It writes [`ClientSession::output`] to the socket (then
//! [`ClientSession::consume_output`], or takes it whole with [`ClientSession::take_output`]),
//! feeds what it reads to [`ClientSession::feed`] and acts on
//! the returned [`ClientEvent`]:
//!
//! * [`ClientEvent::NeedReply`]: flush the output, read more, feed again (unconsumed bytes, an
//!   incomplete reply line, stay with the driver);
//! * [`ClientEvent::StartTls`]: do the TLS handshake, then call
//!   [`ClientSession::tls_established`] (the session sends EHLO again, RFC 3207 section 4.2);
//! * [`ClientEvent::Ready`]: call [`ClientSession::send_mail`] or [`ClientSession::quit`];
//! * [`ClientEvent::SendData`]: write the dot-stuffed message and its terminating `.` CRLF (see
//!   [`crate::DotStuffer`]), then call [`ClientSession::data_sent`];
//! * [`ClientEvent::TransactionDone`]: one result per recipient; the session is ready again
//!   (the next transaction on the connection starts with RSET);
//! * [`ClientEvent::Closed`]: the server answered QUIT (or a 421): close the connection.
//!
//! With PIPELINING offered, MAIL, all RCPTs and DATA go out in one batch (RFC 2920 section 3.1)
//! and each RCPT reply is kept separately. BDAT is not used for sending (CHUNKING is only
//! recorded in [`Capabilities`]); the message always goes by DATA. A 421 at any point of a
//! transaction defers all its recipients and ends the session.
//!
//! Modules by job: [`capabilities`](Capabilities) (the EHLO reply), `auth` (AUTH after EHLO),
//! `transaction` (MAIL, RCPT, DATA and the per-recipient results); this file holds the session
//! (greeting, EHLO/HELO, STARTTLS, QUIT) and the reply dispatch.

use std::collections::VecDeque;

use crate::reply::{Reply, ReplyError, ReplyParser};

mod auth;
mod capabilities;
mod transaction;

use auth::AuthStep;
pub use auth::{Credentials, AUTH_MECHANISMS};
pub use capabilities::Capabilities;
use transaction::Transaction;
pub use transaction::{OutgoingMessage, RcptOutcome, RcptResult};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO (control file `helohost`, else `me`).
    pub helo_name: String,
    /// Issue STARTTLS when the server offers it.
    pub starttls: bool,
    /// Fail instead of continuing in clear text when STARTTLS is not offered or refused.
    pub require_tls: bool,
    /// Cap on one reply line, CRLF included (RFC 5321 4.5.3.1.5: 512).
    pub max_reply_line: usize,
    /// Cap on a whole multi-line reply.
    pub max_reply: usize,
    /// Replies that are not UTF-8 are taken with U+FFFD for bad bytes instead of failing
    /// (relays with Latin-1 banners).
    pub lossy_replies: bool,
    /// The connection is TLS from the start (port 465): no STARTTLS.
    pub implicit_tls: bool,
    /// Authenticate after EHLO (and STARTTLS) with these (RFC 4954).
    pub auth: Option<Credentials>,
}

impl ClientConfig {
    /// Defaults: opportunistic STARTTLS, 512-octet lines, 64 KiB replies.
    pub fn new(helo_name: impl Into<String>) -> ClientConfig {
        ClientConfig {
            helo_name: helo_name.into(),
            starttls: true,
            require_tls: false,
            max_reply_line: 512,
            max_reply: 64 * 1024,
            lossy_replies: false,
            implicit_tls: false,
            auth: None,
        }
    }
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Flush the output, then read more and feed it.
    NeedReply,
    /// Start TLS on the connection, then call [`ClientSession::tls_established`].
    StartTls,
    /// Idle: call [`ClientSession::send_mail`] or [`ClientSession::quit`].
    Ready,
    /// 354 received: write the dot-stuffed message with its terminator, then call
    /// [`ClientSession::data_sent`].
    SendData,
    /// The transaction is over.
    TransactionDone {
        /// Reply to MAIL FROM.
        mail_reply: Reply,
        /// One entry per recipient, in the order given.
        per_rcpt: Vec<RcptResult>,
        /// Reply after the data (or to DATA when it was refused); None when no data was sent.
        message_reply: Option<Reply>,
    },
    /// The session is over: close the connection.
    Closed,
}

/// Why the client session failed. After an error the connection should be closed (a QUIT may
/// be queued in the output for politeness).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent something that is not a valid reply.
    #[error("bad reply from server: {0}")]
    BadReply(#[from] ReplyError),
    /// The greeting was not 220.
    #[error("server greeting refused: {0}")]
    Greeting(Reply),
    /// Both EHLO and HELO were refused.
    #[error("HELO refused: {0}")]
    Helo(Reply),
    /// TLS is required but the server does not offer it or refused STARTTLS.
    #[error("STARTTLS required but not available")]
    TlsUnavailable(Option<Reply>),
    /// The server sent a reply when none was expected.
    #[error("unexpected reply from server: {0}")]
    Unexpected(Reply),
    /// The message needs SMTPUTF8 and the server does not offer it (RFC 6531 section 3.4).
    #[error("server does not support SMTPUTF8")]
    SmtpUtf8NotOffered,
    /// The message is larger than the server's SIZE.
    #[error("message of {size} octets exceeds server limit {max}")]
    MessageTooBig {
        /// The message size.
        size: u64,
        /// The server's limit.
        max: u64,
    },
    /// An address holds characters that cannot go into a command line.
    #[error("address not allowed in a command: {0:?}")]
    BadAddress(String),
    /// A transaction needs at least one recipient.
    #[error("no recipients")]
    NoRecipients,
    /// AUTH could not be done or was refused (the text never holds the password).
    #[error("AUTH: {0}")]
    Auth(String),
    /// The call is not allowed in the current state.
    #[error("operation not allowed in state {0}")]
    WrongState(&'static str),
}

/// What a reply is expected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    Message,
    /// RSET opening a transaction on a reused connection: any answer but 421 is fine.
    Rset,
    Auth(AuthStep),
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for replies in `expect`.
    Talking,
    /// The driver must do TLS.
    TlsPending,
    /// Idle between transactions.
    Ready,
    /// 354 received, the driver writes the body.
    SendingData,
    Closed,
    Failed,
}

/// One SMTP client conversation.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    parser: ReplyParser,
    out: Vec<u8>,
    expect: VecDeque<Expect>,
    state: State,
    caps: Capabilities,
    tls: bool,
    tx: Option<Transaction>,
    /// A transaction just finished and its result awaits delivery to the driver.
    done: Option<ClientEvent>,
    /// A transaction was started: the next one opens with RSET.
    used: bool,
}

impl ClientSession {
    /// A session that waits for the server's greeting.
    pub fn new(config: ClientConfig) -> ClientSession {
        ClientSession {
            parser: Self::parser(&config),
            tls: config.implicit_tls,
            config,
            out: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            state: State::Talking,
            caps: Capabilities::default(),
            tx: None,
            done: None,
            used: false,
        }
    }

    fn parser(config: &ClientConfig) -> ReplyParser {
        ReplyParser::new(config.max_reply_line, config.max_reply).lossy(config.lossy_replies)
    }

    /// Bytes to write to the server.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Drops the first `n` bytes of the output once written.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.drain(..n);
    }

    /// Takes the whole output to write (an owned buffer, for completion-based I/O).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Idle and usable: a transaction can start (false once closing, closed or failed).
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready && self.done.is_none()
    }

    /// What the server offered in its last EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// TLS was established on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn send(&mut self, line: &[u8], e: Expect) {
        self.out.extend_from_slice(line);
        self.out.extend_from_slice(b"\r\n");
        self.expect.push_back(e);
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        if !matches!(self.state, State::Closed | State::Failed) {
            self.out.extend_from_slice(b"QUIT\r\n");
        }
        self.state = State::Failed;
        e
    }

    /// Feeds bytes read from the server. Returns how many were consumed and what to do next.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, ClientEvent), ClientError> {
        let mut pos = 0;
        loop {
            if let Some(ev) = self.done.take() {
                return Ok((pos, ev));
            }
            match self.state {
                State::Closed => return Ok((pos, ClientEvent::Closed)),
                State::Failed => return Err(ClientError::WrongState("failed")),
                State::TlsPending => return Ok((pos, ClientEvent::StartTls)),
                State::SendingData => return Ok((pos, ClientEvent::SendData)),
                // Bytes that arrive while idle are left alone: the driver decides (usually a
                // 421 before an idle timeout, so it closes).
                State::Ready => return Ok((pos, ClientEvent::Ready)),
                State::Talking => {}
            }
            let (n, reply) = match self.parser.parse(&input[pos..]) {
                Ok(x) => x,
                Err(e) => return Err(self.fail(e.into())),
            };
            pos += n;
            let Some(reply) = reply else {
                return Ok((pos, ClientEvent::NeedReply));
            };
            let Some(expect) = self.expect.pop_front() else {
                return Err(self.fail(ClientError::Unexpected(reply)));
            };
            self.on_reply(expect, reply)?;
        }
    }

    fn on_reply(&mut self, expect: Expect, reply: Reply) -> Result<(), ClientError> {
        match expect {
            Expect::Greeting => {
                if reply.code() != 220 {
                    return Err(self.fail(ClientError::Greeting(reply)));
                }
                self.send_ehlo();
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.after_ehlo()?;
                } else if reply.is_permanent() && !self.tls {
                    // RFC 5321 3.2: fall back to HELO when EHLO is not understood.
                    let line = format!("HELO {}", self.config.helo_name);
                    self.send(line.as_bytes(), Expect::Helo);
                } else {
                    return Err(self.fail(ClientError::Helo(reply)));
                }
            }
            Expect::Helo => {
                if !reply.is_positive() {
                    return Err(self.fail(ClientError::Helo(reply)));
                }
                self.caps = Capabilities::default();
                self.after_ehlo()?;
            }
            Expect::StartTls => {
                if reply.code() == 220 {
                    self.state = State::TlsPending;
                } else if self.config.require_tls {
                    return Err(self.fail(ClientError::TlsUnavailable(Some(reply))));
                } else {
                    // Opportunistic: a refused STARTTLS means clear text.
                    self.authenticate()?;
                }
            }
            Expect::Auth(step) => self.on_auth_reply(step, reply)?,
            Expect::Rset | Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::Message => {
                self.on_transaction_reply(expect, reply);
            }
            Expect::Quit => self.state = State::Closed,
        }
        Ok(())
    }

    fn send_ehlo(&mut self) {
        let line = format!("EHLO {}", self.config.helo_name);
        self.send(line.as_bytes(), Expect::Ehlo);
    }

    fn after_ehlo(&mut self) -> Result<(), ClientError> {
        if !self.tls && self.config.starttls && self.caps.starttls {
            self.send(b"STARTTLS", Expect::StartTls);
            return Ok(());
        }
        if !self.tls && self.config.require_tls {
            return Err(self.fail(ClientError::TlsUnavailable(None)));
        }
        self.authenticate()
    }

    /// Call after the TLS handshake that followed [`ClientEvent::StartTls`]: the session
    /// forgets what it knew and sends EHLO again.
    pub fn tls_established(&mut self) -> Result<(), ClientError> {
        if self.state != State::TlsPending {
            return Err(ClientError::WrongState("not waiting for TLS"));
        }
        self.tls = true;
        self.caps = Capabilities::default();
        // Nothing read before the handshake may be trusted afterwards (RFC 3207 section 4.2).
        self.parser = Self::parser(&self.config);
        self.state = State::Talking;
        self.send_ehlo();
        Ok(())
    }

    /// Ends the session politely: queues QUIT; [`ClientEvent::Closed`] follows its reply.
    pub fn quit(&mut self) -> Result<(), ClientError> {
        if !self.is_ready() {
            return Err(ClientError::WrongState("not ready"));
        }
        self.send(b"QUIT", Expect::Quit);
        self.state = State::Talking;
        Ok(())
    }
}

/// A reply as qmail-remote reports it: each line `code[ enhanced] text`, lines joined by `\n`.
pub fn reply_text(r: &Reply) -> String {
    // Byte by byte, no formatting machinery: this runs for every relayed recipient.
    let code = r.code() % 1000;
    let digits = [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    let mut out = Vec::with_capacity(r.text().len() + 16);
    for (i, line) in r.text().as_bytes().split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(&digits);
        if let Some(e) = r.enhanced() {
            out.push(b' ');
            e.write_to(&mut out);
        }
        if !line.is_empty() {
            out.push(b' ');
            out.extend_from_slice(line);
        }
    }
    // Only ASCII and the reply's own UTF-8 went in.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests;
