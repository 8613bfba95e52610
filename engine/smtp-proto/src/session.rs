//! The server session: a sans-I/O state machine that turns received bytes into replies and
//! [`Event`]s for the driver (RFC 5321, with RFC 1870, 2920, 3030, 3463, 6152 and 6531).
//!
//! The driver owns the socket and its buffers. It calls [`Session::feed`] with what it received
//! and acts on the returned [`Event`]; bytes the session did not consume (an incomplete command
//! line) stay with the driver and are fed again with more input appended. Questions that need
//! I/O (is this sender or recipient acceptable? is the message committed?) pause the session: it
//! consumes nothing more until the driver answers with [`Session::decide`] or
//! [`Session::message_committed`], so pipelined commands are answered in order.

use std::rc::Rc;

use crate::address::{ForwardPath, ReversePath};
use crate::command::{self, Command, CommandError, Extensions, MailParams, RcptParams};
use crate::data::{DataError, DataScanner, Scan};
use crate::reply::Reply;

/// Settings of one listener, shared by its sessions. Mirrors qmail-smtpd's control files
/// (`me`, `smtpgreeting`, `databytes`, `maxrecipients`, `maxcmdlen`) and environment switches.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our host name, used in the 220, EHLO, 221 and 421 lines (control file `me`).
    pub hostname: String,
    /// Text after `220 ` in the greeting (`smtpgreeting`); default hostname + " ESMTP".
    pub greeting: String,
    /// Largest message accepted, in octets as stored (`databytes`, env `DATABYTES`); 0 means
    /// unlimited. Advertised as `SIZE n` (plain `SIZE` when 0).
    pub max_message_size: u64,
    /// Recipients per transaction (`maxrecipients`); beyond it RCPT gets 452 4.5.3. 0 means no
    /// limit.
    pub max_recipients: usize,
    /// Bad commands tolerated before `421 4.7.0` and close. 0 means no limit.
    pub max_bad_commands: u32,
    /// Longest command line, CRLF included (`maxcmdlen`); longer lines get 500 5.5.2 and are
    /// discarded without being buffered. RFC 5321 4.5.3.1.4 sets 512 as the minimum to accept.
    pub max_command_line: usize,
    /// Longest text line inside DATA, CRLF included (RFC 5321 4.5.3.1.6: 1000). A longer line
    /// makes the message refused at its end with 500 5.5.2; it is never buffered. 0: no limit.
    pub max_text_line: usize,
    /// Advertise and accept BDAT (RFC 3030).
    pub chunking: bool,
    /// Advertise and accept SMTPUTF8 (RFC 6531; env `SMTPUTF8`).
    pub smtputf8: bool,
    /// Advertise PIPELINING (RFC 2920). Pipelined input is handled correctly either way.
    pub pipelining: bool,
    /// Advertise and accept BODY=8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// VRFY answers 252 2.5.2 when true, 502 5.5.1 when false (env `DISABLE_VRFY`).
    pub vrfy_enabled: bool,
    /// Extra EHLO keywords (e.g. `STARTTLS`, `AUTH LOGIN PLAIN`), listed after the built-in
    /// ones and before `HELP`.
    pub extra_ehlo: Vec<String>,
}

impl SessionConfig {
    /// Defaults with the given host name and the greeting derived from it.
    pub fn new(hostname: impl Into<String>) -> SessionConfig {
        let hostname = hostname.into();
        SessionConfig {
            greeting: format!("{hostname} ESMTP"),
            hostname,
            max_message_size: 0,
            max_recipients: 100,
            max_bad_commands: 10,
            max_command_line: 512,
            max_text_line: 1000,
            chunking: true,
            smtputf8: true,
            pipelining: true,
            eightbitmime: true,
            vrfy_enabled: true,
            extra_ehlo: Vec::new(),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::new("localhost")
    }
}

/// One accepted recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The forward path.
    pub path: ForwardPath,
    /// Its parameters.
    pub params: RcptParams,
}

/// What the client has told us so far: HELO name and the current transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Argument of the last HELO/EHLO.
    pub helo: Option<String>,
    /// The client greeted with EHLO.
    pub esmtp: bool,
    /// Accepted MAIL FROM path, if a transaction is open.
    pub reverse_path: Option<ReversePath>,
    /// Parameters of the accepted MAIL FROM (BODY, SMTPUTF8, SIZE, AUTH).
    pub mail_params: MailParams,
    /// Accepted recipients, in order.
    pub recipients: Vec<Recipient>,
}

/// What the driver must do after [`Session::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// All input was consumed, or an incomplete line remains: flush the output, read more.
    NeedMore,
    /// A syntactically valid MAIL FROM: check policy, then call [`Session::decide`] before
    /// feeding more.
    Mail {
        /// The sender.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// A syntactically valid RCPT TO in an open transaction: check it, then call
    /// [`Session::decide`] before feeding more.
    Rcpt {
        /// The recipient.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// A new message starts (354 queued, or the first BDAT chunk): open a spool for it. Flush
    /// the output now: a DATA client waits for the 354.
    DataStart,
    /// Message bytes exactly as to be stored (dot-unstuffed); a sub-slice of the input.
    Data(&'a [u8]),
    /// The message is complete and acceptable: commit it durably, then call
    /// [`Session::message_committed`].
    MessageEnd,
    /// The message was refused (too big, bare CR/LF, line too long); its reply is queued and the
    /// transaction reset. Discard what was spooled.
    MessageAborted,
    /// 221 or 421 is queued: flush the output and close the connection.
    Close,
}

/// The driver's answer to [`Event::Mail`] or [`Event::Rcpt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Accept: the session replies 250 2.1.0 (MAIL) or 250 2.1.5 (RCPT).
    Accept,
    /// Refuse with this reply; a refused RCPT adds no recipient.
    Reject(Reply),
}

#[derive(Debug)]
enum Pending {
    Mail(ReversePath, MailParams),
    Rcpt(ForwardPath, RcptParams),
}

/// What the session expects next.
#[derive(Debug)]
enum Mode {
    /// A command line.
    ExpectCommand,
    /// The rest of an over-long command line, to be discarded.
    DiscardLongLine,
    /// A driver decision on MAIL or RCPT.
    ExpectDecision(Pending),
    /// DATA body up to CRLF.CRLF.
    ExpectDataEnd(DataScanner),
    /// The octets of a BDAT chunk.
    ExpectChunk {
        remaining: u64,
        last: bool,
        /// The BDAT command was refused: read and drop the chunk to stay in sync.
        discard: bool,
    },
    /// The driver's commit result after MessageEnd.
    ExpectCommit,
    /// 221/421 sent.
    Closed,
}

/// One SMTP server conversation.
#[derive(Debug)]
pub struct Session {
    config: Rc<SessionConfig>,
    out: Vec<u8>,
    mode: Mode,
    envelope: Envelope,
    bad_commands: u32,
    /// A BDAT transfer is under way in this transaction (DATA is then out of sequence).
    bdat_active: bool,
    bdat_size: u64,
    bdat_error: Option<DataError>,
    tls: bool,
    authenticated: bool,
}

impl Session {
    /// A session in the state right after connect. Call [`Session::greet`] to send the 220.
    pub fn new(config: Rc<SessionConfig>) -> Session {
        Session {
            config,
            out: Vec::with_capacity(256),
            mode: Mode::ExpectCommand,
            envelope: Envelope::default(),
            bad_commands: 0,
            bdat_active: false,
            bdat_size: 0,
            bdat_error: None,
            tls: false,
            authenticated: false,
        }
    }

    /// Queues the 220 greeting.
    pub fn greet(&mut self) {
        let r = Reply::new(220, None, self.config.greeting.clone());
        r.write_to(&mut self.out);
    }

    /// Replies produced so far, to be written to the socket.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Drops the first `n` bytes of [`Session::output`] once written.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.drain(..n);
    }

    /// HELO name and the current transaction.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The `with` protocol of the Received line (RFC 3848, RFC 6531 section 3.7.3).
    pub fn protocol(&self) -> &'static str {
        let utf8 = self.envelope.mail_params.smtputf8;
        match (self.envelope.esmtp, utf8, self.tls, self.authenticated) {
            (false, _, false, _) => "SMTP",
            (false, _, true, _) => "SMTPS",
            (true, false, false, false) => "ESMTP",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8ESMTP",
            (true, true, true, false) => "UTF8ESMTPS",
            (true, true, false, true) => "UTF8ESMTPA",
            (true, true, true, true) => "UTF8ESMTPSA",
        }
    }

    /// Records that the connection is under TLS (SMTPS, or after STARTTLS).
    pub fn set_tls(&mut self, tls: bool) {
        self.tls = tls;
    }

    /// Records that the client authenticated.
    pub fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    /// The session has sent 221 or 421 and must be closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// The session waits for [`Session::decide`] or [`Session::message_committed`].
    pub fn is_paused(&self) -> bool {
        matches!(self.mode, Mode::ExpectDecision(_) | Mode::ExpectCommit)
    }

    /// Feeds received bytes. Returns how many were consumed and what the driver must do next.
    /// Unconsumed bytes must be fed again, with more appended, after the driver acted.
    ///
    /// While a question is pending (after [`Event::Mail`], [`Event::Rcpt`] or
    /// [`Event::MessageEnd`]) feeding consumes nothing and returns the same event again; after
    /// [`Event::Close`] it consumes nothing and returns `Close`.
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> (usize, Event<'a>) {
        let mut pos = 0;
        loop {
            match &mut self.mode {
                Mode::Closed => return (pos, Event::Close),
                Mode::ExpectDecision(Pending::Mail(from, params)) => {
                    let ev = Event::Mail {
                        from: from.clone(),
                        params: params.clone(),
                    };
                    return (pos, ev);
                }
                Mode::ExpectDecision(Pending::Rcpt(to, params)) => {
                    let ev = Event::Rcpt {
                        to: to.clone(),
                        params: params.clone(),
                    };
                    return (pos, ev);
                }
                Mode::ExpectCommit => return (pos, Event::MessageEnd),
                Mode::ExpectCommand => {
                    let rest = &input[pos..];
                    if rest.is_empty() {
                        return (pos, Event::NeedMore);
                    }
                    let cap = self.config.max_command_line.max(8);
                    let window = &rest[..rest.len().min(cap)];
                    match window.iter().position(|&b| b == b'\n') {
                        Some(lf) => {
                            pos += lf + 1;
                            if let Some(ev) = self.command_line(&rest[..lf]) {
                                return (pos, ev);
                            }
                        }
                        None if rest.len() >= cap => {
                            // Over-long: drop it rather than let the driver buffer it.
                            pos += cap;
                            self.mode = Mode::DiscardLongLine;
                        }
                        None => return (pos, Event::NeedMore),
                    }
                }
                Mode::DiscardLongLine => {
                    let rest = &input[pos..];
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(lf) => {
                            pos += lf + 1;
                            self.mode = Mode::ExpectCommand;
                            let r = Reply::new(500, Some((5, 5, 2)), "Line too long");
                            if let Some(ev) = self.bad(r) {
                                return (pos, ev);
                            }
                        }
                        None => return (input.len(), Event::NeedMore),
                    }
                }
                Mode::ExpectDataEnd(scanner) => {
                    let start = pos;
                    let (n, scan) = scanner.scan(&input[pos..]);
                    pos += n;
                    match scan {
                        Scan::Data(r) => {
                            return (pos, Event::Data(&input[start + r.start..start + r.end]))
                        }
                        Scan::NeedMore => return (pos, Event::NeedMore),
                        Scan::End => {
                            let error = scanner.error();
                            return (pos, self.message_end(error));
                        }
                    }
                }
                Mode::ExpectChunk {
                    remaining,
                    last,
                    discard,
                } => {
                    let (last, discard) = (*last, *discard);
                    if *remaining > 0 {
                        let rest = &input[pos..];
                        if rest.is_empty() {
                            return (pos, Event::NeedMore);
                        }
                        let take = rest
                            .len()
                            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                        *remaining -= take as u64;
                        pos += take;
                        if discard {
                            continue;
                        }
                        let max = self.config.max_message_size;
                        if self.bdat_error.is_none() {
                            if max > 0 && self.bdat_size + take as u64 > max {
                                self.bdat_error = Some(DataError::TooBig);
                            } else {
                                self.bdat_size += take as u64;
                                return (pos, Event::Data(&rest[..take]));
                            }
                        }
                        continue;
                    }
                    // Chunk complete.
                    self.mode = Mode::ExpectCommand;
                    if discard {
                        continue;
                    }
                    if self.bdat_error.is_some() {
                        return (pos, self.message_end(self.bdat_error));
                    }
                    if last {
                        return (pos, self.message_end(None));
                    }
                    let r = Reply::new(
                        250,
                        Some((2, 0, 0)),
                        format!("{} octets received", self.bdat_size),
                    );
                    r.write_to(&mut self.out);
                }
            }
        }
    }

    /// Answers a pending [`Event::Mail`] or [`Event::Rcpt`]. Without a pending question this
    /// does nothing.
    pub fn decide(&mut self, d: Decision) {
        let Mode::ExpectDecision(_) = self.mode else {
            return;
        };
        let Mode::ExpectDecision(pending) = std::mem::replace(&mut self.mode, Mode::ExpectCommand)
        else {
            return;
        };
        match (pending, d) {
            (Pending::Mail(path, params), Decision::Accept) => {
                self.envelope.reverse_path = Some(path);
                self.envelope.mail_params = params;
                self.reply(250, (2, 1, 0), "Sender ok");
            }
            (Pending::Rcpt(path, params), Decision::Accept) => {
                self.envelope.recipients.push(Recipient { path, params });
                self.reply(250, (2, 1, 5), "Recipient ok");
            }
            (_, Decision::Reject(r)) => r.write_to(&mut self.out),
        }
    }

    /// Reports the outcome of committing the message after [`Event::MessageEnd`]:
    /// `Ok(queue_id)` replies `250 2.0.0 ok <queue_id>`, `Err(reply)` sends that reply. The
    /// transaction is reset either way. Without a pending commit this does nothing.
    pub fn message_committed(&mut self, r: Result<String, Reply>) {
        if !matches!(self.mode, Mode::ExpectCommit) {
            return;
        }
        self.mode = Mode::ExpectCommand;
        match r {
            Ok(id) => self.reply(250, (2, 0, 0), &format!("ok {id}")),
            Err(reply) => reply.write_to(&mut self.out),
        }
        self.reset_transaction();
    }

    fn reply(&mut self, code: u16, enh: (u8, u16, u16), text: &str) {
        Reply::new(code, Some(enh), text).write_to(&mut self.out);
    }

    fn reset_transaction(&mut self) {
        self.envelope.reverse_path = None;
        self.envelope.mail_params = MailParams::default();
        self.envelope.recipients.clear();
        self.bdat_active = false;
        self.bdat_size = 0;
        self.bdat_error = None;
    }

    /// Sends an error reply for a client mistake and counts it; closes after too many.
    fn bad(&mut self, r: Reply) -> Option<Event<'static>> {
        r.write_to(&mut self.out);
        self.bad_commands = self.bad_commands.saturating_add(1);
        let max = self.config.max_bad_commands;
        if max > 0 && self.bad_commands >= max {
            let text = format!(
                "{} Too many errors, closing connection",
                self.config.hostname
            );
            self.reply(421, (4, 7, 0), &text);
            self.mode = Mode::Closed;
            return Some(Event::Close);
        }
        None
    }

    fn message_end(&mut self, error: Option<DataError>) -> Event<'static> {
        let Some(e) = error else {
            self.mode = Mode::ExpectCommit;
            return Event::MessageEnd;
        };
        self.mode = Mode::ExpectCommand;
        match e {
            DataError::BareCrLf => self.reply(550, (5, 6, 11), "bare CR or LF in message refused"),
            DataError::LineTooLong => self.reply(500, (5, 5, 2), "Line too long in message"),
            DataError::TooBig => self.reply(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
        }
        self.reset_transaction();
        Event::MessageAborted
    }

    fn ehlo_reply(&self) -> Reply {
        let c = &self.config;
        let mut lines = vec![c.hostname.clone()];
        if c.pipelining {
            lines.push("PIPELINING".into());
        }
        if c.eightbitmime {
            lines.push("8BITMIME".into());
        }
        lines.push(if c.max_message_size > 0 {
            format!("SIZE {}", c.max_message_size)
        } else {
            "SIZE".into()
        });
        lines.push("ENHANCEDSTATUSCODES".into());
        if c.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if c.chunking {
            lines.push("CHUNKING".into());
        }
        lines.extend(c.extra_ehlo.iter().map(|l| l.replace(['\r', '\n'], " ")));
        lines.push("HELP".into());
        Reply::new(250, None, lines.join("\n"))
    }

    /// Handles one complete command line (without LF). Returns an event for the driver, or
    /// None when the session answered by itself and can go on.
    fn command_line(&mut self, line: &[u8]) -> Option<Event<'static>> {
        let Some(line) = line.strip_suffix(b"\r") else {
            let r = Reply::new(500, Some((5, 5, 2)), "Syntax error: bare LF in command");
            return self.bad(r);
        };
        if line.contains(&b'\r') {
            let r = Reply::new(500, Some((5, 5, 2)), "Syntax error: bare CR in command");
            return self.bad(r);
        }
        let ext = Extensions {
            smtputf8: self.config.smtputf8,
            eightbitmime: self.config.eightbitmime,
            max_size: self.config.max_message_size,
        };
        let cmd = match command::parse(line, ext) {
            Ok(cmd) => cmd,
            // A legitimate refusal, not a client mistake.
            Err(CommandError::SizeExceeded) => {
                CommandError::SizeExceeded.reply().write_to(&mut self.out);
                return None;
            }
            Err(e) => return self.bad(e.reply()),
        };
        match cmd {
            Command::Helo(name) => {
                self.reset_transaction();
                self.envelope.helo = Some(name);
                self.envelope.esmtp = false;
                Reply::new(250, None, self.config.hostname.clone()).write_to(&mut self.out);
                None
            }
            Command::Ehlo(name) => {
                self.reset_transaction();
                self.envelope.helo = Some(name);
                self.envelope.esmtp = true;
                self.ehlo_reply().write_to(&mut self.out);
                None
            }
            Command::Mail(from, params) => {
                if self.envelope.helo.is_none() {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "Send HELO/EHLO first"));
                }
                if self.envelope.reverse_path.is_some() {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "Nested MAIL command"));
                }
                self.mode = Mode::ExpectDecision(Pending::Mail(from.clone(), params.clone()));
                Some(Event::Mail { from, params })
            }
            Command::Rcpt(to, params) => {
                if self.envelope.reverse_path.is_none() {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "Need MAIL before RCPT"));
                }
                if self.bdat_active {
                    return self.bad(Reply::new(
                        503,
                        Some((5, 5, 1)),
                        "RCPT not allowed during BDAT",
                    ));
                }
                if let ForwardPath::Mailbox(m) = &to {
                    if !self.envelope.mail_params.smtputf8 && m.is_utf8() {
                        let e = CommandError::Recipient(crate::AddressError::NonAscii);
                        return self.bad(e.reply());
                    }
                }
                let max = self.config.max_recipients;
                if max > 0 && self.envelope.recipients.len() >= max {
                    self.reply(452, (4, 5, 3), "Too many recipients");
                    return None;
                }
                self.mode = Mode::ExpectDecision(Pending::Rcpt(to.clone(), params.clone()));
                Some(Event::Rcpt { to, params })
            }
            Command::Data => {
                if self.bdat_active {
                    return self.bad(Reply::new(
                        503,
                        Some((5, 5, 1)),
                        "DATA not allowed after BDAT",
                    ));
                }
                if self.envelope.reverse_path.is_none() {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "Need MAIL command"));
                }
                if self.envelope.recipients.is_empty() {
                    self.reply(554, (5, 5, 1), "No valid recipients");
                    return None;
                }
                Reply::new(354, None, "End data with <CR><LF>.<CR><LF>").write_to(&mut self.out);
                self.mode = Mode::ExpectDataEnd(DataScanner::new(
                    self.config.max_text_line,
                    self.config.max_message_size,
                ));
                Some(Event::DataStart)
            }
            Command::Bdat { size, last } => {
                if !self.config.chunking {
                    self.reply(502, (5, 5, 1), "Command not implemented");
                    return None;
                }
                let refuse = if self.envelope.reverse_path.is_none() {
                    Some(Reply::new(503, Some((5, 5, 1)), "Need MAIL command"))
                } else if self.envelope.recipients.is_empty() {
                    Some(Reply::new(554, Some((5, 5, 1)), "No valid recipients"))
                } else {
                    None
                };
                if let Some(r) = refuse {
                    // The chunk follows regardless (RFC 3030 section 3): read and drop it.
                    self.mode = Mode::ExpectChunk {
                        remaining: size,
                        last,
                        discard: true,
                    };
                    return if r.code() == 503 {
                        self.bad(r)
                    } else {
                        r.write_to(&mut self.out);
                        None
                    };
                }
                let first = !self.bdat_active;
                self.bdat_active = true;
                self.mode = Mode::ExpectChunk {
                    remaining: size,
                    last,
                    discard: false,
                };
                first.then_some(Event::DataStart)
            }
            Command::Rset => {
                self.reset_transaction();
                self.reply(250, (2, 0, 0), "ok");
                None
            }
            Command::Noop => {
                self.reply(250, (2, 0, 0), "ok");
                None
            }
            Command::Quit => {
                let text = format!("{} closing connection", self.config.hostname);
                self.reply(221, (2, 0, 0), &text);
                self.mode = Mode::Closed;
                Some(Event::Close)
            }
            Command::Vrfy(_) => {
                if self.config.vrfy_enabled {
                    self.reply(
                        252,
                        (2, 5, 2),
                        "Cannot VRFY user, but will accept message and attempt delivery",
                    );
                } else {
                    self.reply(502, (5, 5, 1), "VRFY disabled");
                }
                None
            }
            Command::Help => {
                self.reply(
                    214,
                    (2, 0, 0),
                    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT\nSee RFC 5321",
                );
                None
            }
            Command::NotImplemented => {
                self.reply(502, (5, 5, 1), "Command not implemented");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
