//! The server session: a sans-I/O state machine that turns received bytes into replies and
//! [`Event`]s for the driver (RFC 5321, with RFC 1870, 2920, 3030, 3463, 6152 and 6531).
//!
//! The driver owns the socket and its buffers. It calls [`Session::feed`] with what it received
//! and acts on the returned [`Event`]; bytes the session did not consume (an incomplete command
//! line) stay with the driver and are fed again with more input appended. Questions that need
//! I/O (is this sender or recipient acceptable? is the message committed?) pause the session: it
//! consumes nothing more until the driver answers with [`Session::decide`] or
//! [`Session::message_committed`], so pipelined commands are answered in order.
//!
//! STARTTLS (RFC 3207) and AUTH (RFC 4954) follow the same pattern: [`Event::StartTls`] asks the
//! driver to run the TLS handshake and call [`Session::tls_started`]; [`Event::Auth`] asks it to
//! verify credentials and call [`Session::auth_result`]. SCRAM-SHA-256 asks one more question
//! in the middle of its exchange: [`Event::ScramLookup`], answered with
//! [`Session::scram_credentials`] (the user's stored secret and a fresh server nonce).

use std::rc::Rc;

use crate::address::{ForwardPath, ReversePath};
use crate::auth::scram::{self, ScramCredentials};
use crate::auth::{self, Attempt, AuthMechanism, AuthOutcome, AuthSecret, SaslError};
use crate::command::{self, Command, CommandError, EtrnNode, Extensions, MailParams, RcptParams};
use crate::data::{DataError, DataScanner, LineEnds, Scan};
use crate::reply::Reply;

mod commands;
mod config;
mod sasl;

use commands::must_starttls;
pub use config::SessionConfig;
use sasl::{auth_event, scram_lookup_event, Sasl};

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
    /// The SASL authentication identity (authcid) after a successful AUTH (IndiMail exports it
    /// as `AUTHINFO`). Kept across transactions; cleared by STARTTLS.
    pub auth_user: Option<String>,
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
    /// `220 2.0.0 Ready to start TLS` is queued after a STARTTLS: flush the output, drop every
    /// byte of input still buffered (the session reported all of it consumed; RFC 3207 section
    /// 5: plaintext pipelined after STARTTLS must not be processed), run the TLS handshake as
    /// the server, then call [`Session::tls_started`] and feed the decrypted stream. If the
    /// handshake fails, close the connection.
    StartTls,
    /// A complete AUTH exchange: verify the credentials, then call [`Session::auth_result`]
    /// before feeding more. The secret is redacted in `Debug` output.
    Auth {
        /// The mechanism used.
        mechanism: AuthMechanism,
        /// The authentication identity (user name as given, e.g. `user@domain`).
        authcid: String,
        /// The authorization identity, when the client asked to act as someone else (PLAIN).
        authzid: Option<String>,
        /// The password, the CRAM challenge and digest, or the SCRAM proof check.
        secret: AuthSecret,
    },
    /// A SCRAM exchange needs the user's stored secret before it can answer the client-first
    /// message: look `authcid` up, then call [`Session::scram_credentials`] before feeding
    /// more.
    ScramLookup {
        /// The mechanism (SCRAM-SHA-256).
        mechanism: AuthMechanism,
        /// The user name of the client-first message (`n=`, unescaped).
        authcid: String,
    },
    /// A valid `ETRN` (RFC 1985): decide, start the flush if allowed, then call
    /// [`Session::etrn_result`] with the reply before feeding more.
    Etrn {
        /// The node asked for.
        node: EtrnNode,
    },
    /// A valid `ATRN` from an authenticated client (RFC 2645): check which domains the
    /// client may turn and whether mail waits for them, then call [`Session::atrn_result`]
    /// before feeding more.
    Atrn {
        /// The domains asked for, lower-cased; empty means every domain the client may turn.
        domains: Vec<String>,
    },
    /// `250 OK now reversing the connection` is queued after [`Session::atrn_result`]: flush
    /// the output; the server session is over and the connection now carries an SMTP session
    /// in the other direction, this host being the client (RFC 2645 section 4.3). Bytes the
    /// session did not consume belong to that session.
    Turn,
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
    /// A SASL response line from the client.
    ExpectSaslResponse(Sasl),
    /// The rest of an over-long SASL response line, to be discarded.
    DiscardLongSaslLine,
    /// The driver's verdict on a complete AUTH exchange.
    ExpectAuthResult(Attempt),
    /// The driver's lookup of the SCRAM secret after the client-first message.
    ExpectScramCredentials(scram::ClientFirst),
    /// The driver's TLS handshake after STARTTLS; all input is discarded meanwhile.
    ExpectTls,
    /// The driver's answer to an ETRN.
    ExpectEtrnResult(EtrnNode),
    /// The driver's answer to an ATRN.
    ExpectAtrnResult(Vec<String>),
    /// ATRN accepted: the connection is turned around (RFC 2645).
    Turned,
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
    /// Line ends of the BDAT octets so far: held to DATA's rules.
    bdat_lines: LineEnds,
    tls: bool,
    authenticated: bool,
    auth_failures: u32,
    /// RCPTs refused permanently (5xx) in this connection.
    rcpt_errors: u32,
    /// Close with 421 after this many (`MAX_RCPT_ERRCOUNT`); 0 = never.
    max_rcpt_errors: u32,
    /// Driver-supplied randomness and clock for CRAM challenges.
    auth_random: u64,
    auth_time: u64,
    challenges: u64,
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
            bdat_lines: LineEnds::default(),
            tls: false,
            authenticated: false,
            auth_failures: 0,
            rcpt_errors: 0,
            max_rcpt_errors: 0,
            auth_random: 0,
            auth_time: 0,
            challenges: 0,
        }
    }

    /// Closes the connection with `421 4.7.0 too many invalid addresses` once
    /// `max` recipients have been refused permanently (IndiMail's
    /// `MAX_RCPT_ERRCOUNT`, a dictionary attack's end); 0 = never.
    pub fn set_max_rcpt_errors(&mut self, max: u32) {
        self.max_rcpt_errors = max;
    }

    /// Recipients refused permanently so far in this connection.
    pub fn rcpt_errors(&self) -> u32 {
        self.rcpt_errors
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

    /// Records that the connection is under TLS from the start (SMTPS, port 465): call it
    /// before [`Session::greet`]. After STARTTLS use [`Session::tls_started`] instead.
    pub fn set_tls(&mut self, tls: bool) {
        self.tls = tls;
    }

    /// The connection is under TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Reports that the TLS handshake after [`Event::StartTls`] succeeded. The session forgets
    /// everything the client said before (RFC 3207 section 4.2: HELO/EHLO, the transaction, any
    /// authentication) and expects a new EHLO. Without a pending STARTTLS this does nothing.
    pub fn tls_started(&mut self) {
        if !matches!(self.mode, Mode::ExpectTls) {
            return;
        }
        self.mode = Mode::ExpectCommand;
        self.tls = true;
        self.reset_transaction();
        self.envelope = Envelope::default();
        self.authenticated = false;
    }

    /// Records that the client authenticated.
    pub fn set_authenticated(&mut self, authenticated: bool) {
        self.authenticated = authenticated;
    }

    /// The session has sent 221 or 421 and must be closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// The session waits for [`Session::decide`], [`Session::message_committed`],
    /// [`Session::auth_result`], [`Session::tls_started`], [`Session::etrn_result`] or
    /// [`Session::atrn_result`].
    pub fn is_paused(&self) -> bool {
        matches!(
            self.mode,
            Mode::ExpectDecision(_)
                | Mode::ExpectCommit
                | Mode::ExpectAuthResult(_)
                | Mode::ExpectScramCredentials(_)
                | Mode::ExpectTls
                | Mode::ExpectEtrnResult(_)
                | Mode::ExpectAtrnResult(_)
        )
    }

    /// ATRN was accepted: the connection now belongs to the reverse SMTP session.
    pub fn is_turned(&self) -> bool {
        matches!(self.mode, Mode::Turned)
    }

    /// Answers a pending [`Event::Etrn`] with the reply to send (RFC 1985 section 5: 250,
    /// 251, 252, 253, 458, 459, or the site's refusal). Without a pending ETRN this does
    /// nothing.
    pub fn etrn_result(&mut self, reply: Reply) {
        if !matches!(self.mode, Mode::ExpectEtrnResult(_)) {
            return;
        }
        self.mode = Mode::ExpectCommand;
        reply.write_to(&mut self.out);
    }

    /// Answers a pending [`Event::Atrn`]: `Ok` queues `250 2.0.0 OK now reversing the
    /// connection` and turns the session (the next [`Session::feed`] returns [`Event::Turn`]);
    /// `Err(reply)` refuses (RFC 2645: e.g. 453 no mail waiting, 450 try later, 553 not
    /// allowed) and the session goes on. Without a pending ATRN this does nothing.
    pub fn atrn_result(&mut self, r: Result<(), Reply>) {
        if !matches!(self.mode, Mode::ExpectAtrnResult(_)) {
            return;
        }
        match r {
            Ok(()) => {
                self.reply(250, (2, 0, 0), "OK now reversing the connection");
                self.mode = Mode::Turned;
            }
            Err(reply) => {
                reply.write_to(&mut self.out);
                self.mode = Mode::ExpectCommand;
            }
        }
    }

    /// Feeds received bytes. Returns how many were consumed and what the driver must do next.
    /// Unconsumed bytes must be fed again, with more appended, after the driver acted.
    ///
    /// While a question is pending (after [`Event::Mail`], [`Event::Rcpt`] or
    /// [`Event::MessageEnd`], [`Event::Auth`]) feeding consumes nothing and returns the same
    /// event again; after [`Event::Close`] it consumes nothing and returns `Close`. After
    /// [`Event::StartTls`], and until [`Session::tls_started`], all input is consumed unread.
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
                Mode::ExpectAuthResult(a) => return (pos, auth_event(a)),
                Mode::ExpectScramCredentials(first) => return (pos, scram_lookup_event(first)),
                Mode::ExpectEtrnResult(node) => return (pos, Event::Etrn { node: node.clone() }),
                Mode::ExpectAtrnResult(domains) => {
                    let ev = Event::Atrn {
                        domains: domains.clone(),
                    };
                    return (pos, ev);
                }
                Mode::Turned => return (pos, Event::Turn),
                // Plaintext after STARTTLS: never processed (RFC 3207 section 5).
                Mode::ExpectTls => return (input.len(), Event::StartTls),
                Mode::ExpectCommand => {
                    let rest = &input[pos..];
                    if rest.is_empty() {
                        return (pos, Event::NeedMore);
                    }
                    let cap = self.command_cap(rest);
                    let window = &rest[..rest.len().min(cap)];
                    match memchr::memchr(b'\n', window) {
                        Some(lf) => {
                            pos += lf + 1;
                            if let Some(ev) = self.command_line(&rest[..lf]) {
                                if matches!(ev, Event::StartTls) {
                                    // Whatever the client pipelined after STARTTLS is dropped.
                                    return (input.len(), ev);
                                }
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
                    match memchr::memchr(b'\n', rest) {
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
                Mode::ExpectSaslResponse(_) => {
                    let rest = &input[pos..];
                    if rest.is_empty() {
                        return (pos, Event::NeedMore);
                    }
                    let cap = self.config.max_auth_line.max(8);
                    let window = &rest[..rest.len().min(cap)];
                    match memchr::memchr(b'\n', window) {
                        Some(lf) => {
                            pos += lf + 1;
                            if let Some(ev) = self.sasl_line(&rest[..lf]) {
                                return (pos, ev);
                            }
                        }
                        None if rest.len() >= cap => {
                            pos += cap;
                            self.mode = Mode::DiscardLongSaslLine;
                        }
                        None => return (pos, Event::NeedMore),
                    }
                }
                Mode::DiscardLongSaslLine => {
                    let rest = &input[pos..];
                    match memchr::memchr(b'\n', rest) {
                        Some(lf) => {
                            pos += lf + 1;
                            self.mode = Mode::ExpectCommand;
                            let r = Reply::new(
                                500,
                                Some((5, 5, 6)),
                                "Authentication Exchange line is too long",
                            );
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
                Mode::ExpectChunk { .. } => {
                    if let Some(ev) = self.feed_chunk(input, &mut pos) {
                        return (pos, ev);
                    }
                }
            }
        }
    }

    /// Feeds the octets of a BDAT chunk: `Some` event for the driver, or `None` to go on with
    /// the next input (a dropped or erroneous chunk's octets, the end of a non-last chunk).
    fn feed_chunk<'a>(&mut self, input: &'a [u8], pos: &mut usize) -> Option<Event<'a>> {
        let Mode::ExpectChunk {
            remaining,
            last,
            discard,
        } = &mut self.mode
        else {
            return None;
        };
        let (last, discard) = (*last, *discard);
        if *remaining > 0 {
            let rest = &input[*pos..];
            if rest.is_empty() {
                return Some(Event::NeedMore);
            }
            let take = rest
                .len()
                .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            *remaining -= take as u64;
            *pos += take;
            if discard {
                return None;
            }
            let max = self.config.max_message_size;
            if self.bdat_error.is_none() {
                let lines = self
                    .bdat_lines
                    .check(&rest[..take], self.config.max_text_line);
                if let Err(e) = lines {
                    self.bdat_error = Some(e);
                } else if max > 0 && self.bdat_size + take as u64 > max {
                    self.bdat_error = Some(DataError::TooBig);
                } else {
                    self.bdat_size += take as u64;
                    return Some(Event::Data(&rest[..take]));
                }
            }
            return None;
        }
        // Chunk complete.
        self.mode = Mode::ExpectCommand;
        if discard {
            return None;
        }
        if last && self.bdat_error.is_none() {
            self.bdat_error = self.bdat_lines.finish().err();
        }
        if self.bdat_error.is_some() {
            return Some(self.message_end(self.bdat_error));
        }
        if last {
            return Some(self.message_end(None));
        }
        let r = Reply::new(
            250,
            Some((2, 0, 0)),
            format!("{} octets received", self.bdat_size),
        );
        r.write_to(&mut self.out);
        None
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
            (Pending::Rcpt(..), Decision::Reject(r)) => {
                r.write_to(&mut self.out);
                if r.code() >= 500 {
                    self.rcpt_errors = self.rcpt_errors.saturating_add(1);
                    let max = self.max_rcpt_errors;
                    if max > 0 && self.rcpt_errors >= max {
                        let text = format!("{} too many invalid addresses", self.config.hostname);
                        self.reply(421, (4, 7, 0), &text);
                        self.mode = Mode::Closed;
                    }
                }
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
        self.bdat_lines = LineEnds::default();
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

    /// Longest command line accepted at the start of `rest`: AUTH lines may be longer
    /// (RFC 4954 section 4) when AUTH is on. Decided by the first five bytes, which are always
    /// there when the cap matters.
    fn command_cap(&self, rest: &[u8]) -> usize {
        let cap = self.config.max_command_line.max(8);
        if !self.config.auth_mechanisms.is_empty()
            && rest.len() >= 5
            && rest[..5].eq_ignore_ascii_case(b"AUTH ")
        {
            cap.max(self.config.max_auth_line)
        } else {
            cap
        }
    }

    /// The longest line the driver may have to hold: see [`SessionConfig::max_auth_line`].
    pub fn max_line(&self) -> usize {
        let cap = self.config.max_command_line.max(8);
        if self.config.auth_mechanisms.is_empty() {
            cap
        } else {
            cap.max(self.config.max_auth_line.max(8))
        }
    }
}

#[cfg(test)]
mod tests;
