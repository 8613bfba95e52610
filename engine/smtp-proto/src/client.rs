//! Sans-I/O SMTP client session (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and
//! STARTTLS negotiation) for remote delivery.
//!
//! The driver owns the connection. It writes [`ClientSession::output`] to the socket (then
//! [`ClientSession::consume_output`]), feeds what it reads to [`ClientSession::feed`] and acts on
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
//!   (after a failed transaction it has queued an RSET, so the connection can be reused);
//! * [`ClientEvent::Closed`]: the server answered QUIT (or a 421): close the connection.
//!
//! With PIPELINING offered, MAIL, all RCPTs and DATA go out in one batch (RFC 2920 section 3.1)
//! and each RCPT reply is kept separately. BDAT is not used for sending (CHUNKING is only
//! recorded in [`Capabilities`]); the message always goes by DATA.

use std::collections::VecDeque;

use crate::reply::{Reply, ReplyError, ReplyParser};

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
        }
    }
}

/// What the server's EHLO reply offered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered EHLO (false after a HELO fallback).
    pub esmtp: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE, with the maximum when given and non-zero (RFC 1870).
    pub size: Option<u64>,
    /// SIZE was listed (with or without a number).
    pub size_offered: bool,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// AUTH mechanisms, upper-cased (RFC 4954).
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Parses the lines of a 250 reply to EHLO (the first line is the server's name).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    caps.size_offered = true;
                    caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0);
                }
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "CHUNKING" => caps.chunking = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "AUTH" => caps.auth.extend(words.map(|w| w.to_ascii_uppercase())),
                // Pre-RFC 4954 form some servers still send.
                k if k.starts_with("AUTH=") => {
                    caps.auth.push(k[5..].to_string());
                    caps.auth.extend(words.map(|w| w.to_ascii_uppercase()));
                }
                _ => {}
            }
        }
        caps.auth.sort();
        caps.auth.dedup();
        caps
    }
}

/// One message to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Sender address without brackets; empty for the null sender.
    pub from: String,
    /// Recipient addresses without brackets.
    pub to: Vec<String>,
    /// Size of the message in octets, for `SIZE=` (RFC 1870) when the server offers SIZE.
    pub size: Option<u64>,
    /// The message has 8-bit content: `BODY=8BITMIME` when offered.
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (UTF-8 addresses or headers).
    pub smtputf8: bool,
}

/// Final state of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took responsibility (250 after the data); the reply is that 250.
    Delivered(Reply),
    /// 4xx (or a connection-level failure): try again later.
    Deferred(Reply),
    /// 5xx: bounce.
    Failed(Reply),
}

impl RcptOutcome {
    fn from_reply(r: &Reply) -> RcptOutcome {
        if r.is_positive() {
            RcptOutcome::Delivered(r.clone())
        } else if r.is_permanent() {
            RcptOutcome::Failed(r.clone())
        } else {
            RcptOutcome::Deferred(r.clone())
        }
    }
}

/// Result for one recipient of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptResult {
    /// The recipient as given.
    pub to: String,
    /// The reply to its RCPT (None when RCPT was never answered because MAIL failed first).
    pub rcpt_reply: Option<Reply>,
    /// What became of it.
    pub outcome: RcptOutcome,
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
    /// RSET after a failed transaction: any answer is fine.
    Rset,
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

#[derive(Debug)]
struct Transaction {
    msg: OutgoingMessage,
    mail_reply: Option<Reply>,
    rcpt_replies: Vec<Option<Reply>>,
    /// Commands not yet sent (without PIPELINING they go one per reply).
    unsent: VecDeque<(Vec<u8>, Expect)>,
    message_reply: Option<Reply>,
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
}

fn has_bad_chars(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
}

impl ClientSession {
    /// A session that waits for the server's greeting.
    pub fn new(config: ClientConfig) -> ClientSession {
        ClientSession {
            parser: ReplyParser::new(config.max_reply_line, config.max_reply),
            config,
            out: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            state: State::Talking,
            caps: Capabilities::default(),
            tls: false,
            tx: None,
            done: None,
        }
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
                    self.state = State::Ready;
                }
            }
            Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::Message => {
                self.on_transaction_reply(expect, reply);
            }
            Expect::Rset => {
                if reply.code() == 421 {
                    self.state = State::Closed;
                } else if self.expect.is_empty() && self.state == State::Talking {
                    self.state = State::Ready;
                }
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
        self.state = State::Ready;
        Ok(())
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
        self.parser = ReplyParser::new(self.config.max_reply_line, self.config.max_reply);
        self.state = State::Talking;
        self.send_ehlo();
        Ok(())
    }

    /// Starts a transaction. Only in the [`ClientEvent::Ready`] state.
    pub fn send_mail(&mut self, msg: OutgoingMessage) -> Result<(), ClientError> {
        if self.state != State::Ready {
            return Err(ClientError::WrongState("not ready"));
        }
        if msg.to.is_empty() {
            return Err(ClientError::NoRecipients);
        }
        if let Some(bad) = std::iter::once(&msg.from)
            .chain(msg.to.iter())
            .find(|a| has_bad_chars(a))
        {
            return Err(ClientError::BadAddress(bad.clone()));
        }
        if msg.to.iter().any(|t| t.is_empty()) {
            return Err(ClientError::BadAddress(String::new()));
        }
        let utf8 = msg.smtputf8 || !msg.from.is_ascii() || msg.to.iter().any(|t| !t.is_ascii());
        if utf8 && !self.caps.smtputf8 {
            return Err(ClientError::SmtpUtf8NotOffered);
        }
        if let (Some(size), Some(max)) = (msg.size, self.caps.size) {
            if size > max {
                return Err(ClientError::MessageTooBig { size, max });
            }
        }
        let mut mail = format!("MAIL FROM:<{}>", msg.from);
        if let (Some(size), true) = (msg.size, self.caps.size_offered) {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if msg.eight_bit && self.caps.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        let mut unsent = VecDeque::new();
        unsent.push_back((mail.into_bytes(), Expect::Mail));
        for (i, to) in msg.to.iter().enumerate() {
            unsent.push_back((format!("RCPT TO:<{to}>").into_bytes(), Expect::Rcpt(i)));
        }
        unsent.push_back((b"DATA".to_vec(), Expect::Data));
        self.tx = Some(Transaction {
            rcpt_replies: vec![None; msg.to.len()],
            msg,
            mail_reply: None,
            unsent,
            message_reply: None,
        });
        self.state = State::Talking;
        self.send_next();
        Ok(())
    }

    /// Sends all remaining commands (PIPELINING) or the next one.
    fn send_next(&mut self) {
        let pipelining = self.caps.pipelining;
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let mut batch = Vec::new();
        while let Some(cmd) = tx.unsent.pop_front() {
            batch.push(cmd);
            if !pipelining {
                break;
            }
        }
        for (line, e) in batch {
            self.send(&line, e);
        }
    }

    fn on_transaction_reply(&mut self, expect: Expect, reply: Reply) {
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        match expect {
            Expect::Mail => {
                let ok = reply.is_positive();
                tx.mail_reply = Some(reply);
                if !ok {
                    // Without pipelining nothing else was sent; with it, the answers to the
                    // RCPTs and DATA already sent are read and ignored.
                    tx.unsent.clear();
                    return self.maybe_finish();
                }
                self.send_next();
            }
            Expect::Rcpt(i) => {
                if tx.mail_reply.as_ref().is_some_and(Reply::is_positive) {
                    if let Some(slot) = tx.rcpt_replies.get_mut(i) {
                        *slot = Some(reply);
                    }
                }
                let any_ok = tx.rcpt_replies.iter().flatten().any(Reply::is_positive);
                let rcpts_done = !tx.unsent.iter().any(|(_, e)| matches!(e, Expect::Rcpt(_)))
                    && !self.expect.iter().any(|e| matches!(e, Expect::Rcpt(_)));
                if rcpts_done && !any_ok && !self.caps.pipelining {
                    // No point in DATA.
                    if let Some(tx) = self.tx.as_mut() {
                        tx.unsent.clear();
                    }
                    return self.maybe_finish();
                }
                self.send_next();
            }
            Expect::Data => {
                let mail_ok = tx.mail_reply.as_ref().is_some_and(Reply::is_positive);
                let any_ok = tx.rcpt_replies.iter().flatten().any(Reply::is_positive);
                if reply.code() == 354 {
                    if mail_ok && any_ok {
                        self.state = State::SendingData;
                    } else {
                        // RFC 2920 3.1: DATA accepted with no valid recipient: send only the dot.
                        self.out.extend_from_slice(b".\r\n");
                        self.expect.push_back(Expect::Message);
                        tx.message_reply = None;
                    }
                    return;
                }
                if mail_ok && any_ok {
                    tx.message_reply = Some(reply);
                }
                self.maybe_finish();
            }
            Expect::Message => {
                let mail_ok = tx.mail_reply.as_ref().is_some_and(Reply::is_positive);
                let any_ok = tx.rcpt_replies.iter().flatten().any(Reply::is_positive);
                if mail_ok && any_ok {
                    tx.message_reply = Some(reply);
                }
                self.maybe_finish();
            }
            _ => {}
        }
    }

    /// Finishes the transaction once no reply for it is outstanding.
    fn maybe_finish(&mut self) {
        let outstanding = self.expect.iter().any(|e| {
            matches!(
                e,
                Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::Message
            )
        });
        if outstanding {
            return;
        }
        let Some(tx) = self.tx.take() else {
            return;
        };
        let mail_reply = tx
            .mail_reply
            .unwrap_or_else(|| Reply::new(451, Some((4, 4, 2)), "no reply to MAIL"));
        let message_reply = tx.message_reply;
        let mut success = false;
        let per_rcpt = tx
            .msg
            .to
            .into_iter()
            .zip(tx.rcpt_replies)
            .map(|(to, rcpt_reply)| {
                let outcome = if !mail_reply.is_positive() {
                    RcptOutcome::from_reply(&mail_reply)
                } else {
                    match &rcpt_reply {
                        Some(r) if r.is_positive() => match &message_reply {
                            Some(m) => RcptOutcome::from_reply(m),
                            None => RcptOutcome::Deferred(Reply::new(
                                451,
                                Some((4, 4, 2)),
                                "no reply after data",
                            )),
                        },
                        Some(r) => RcptOutcome::from_reply(r),
                        None => RcptOutcome::Deferred(Reply::new(
                            451,
                            Some((4, 4, 2)),
                            "no reply to RCPT",
                        )),
                    }
                };
                success |= matches!(outcome, RcptOutcome::Delivered(_));
                RcptResult {
                    to,
                    rcpt_reply,
                    outcome,
                }
            })
            .collect();
        let closing =
            mail_reply.code() == 421 || message_reply.as_ref().is_some_and(|r| r.code() == 421);
        self.done = Some(ClientEvent::TransactionDone {
            mail_reply,
            per_rcpt,
            message_reply,
        });
        if closing {
            self.state = State::Closed;
        } else if success {
            self.state = State::Ready;
        } else {
            // Reset the server's transaction state before the connection is reused.
            self.send(b"RSET", Expect::Rset);
            self.state = State::Talking;
        }
    }

    /// Call after writing the message body and its terminator following
    /// [`ClientEvent::SendData`].
    pub fn data_sent(&mut self) -> Result<(), ClientError> {
        if self.state != State::SendingData {
            return Err(ClientError::WrongState("not sending data"));
        }
        self.state = State::Talking;
        self.expect.push_back(Expect::Message);
        Ok(())
    }

    /// Ends the session politely: queues QUIT; [`ClientEvent::Closed`] follows its reply.
    pub fn quit(&mut self) -> Result<(), ClientError> {
        if self.state != State::Ready {
            return Err(ClientError::WrongState("not ready"));
        }
        self.send(b"QUIT", Expect::Quit);
        self.state = State::Talking;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
