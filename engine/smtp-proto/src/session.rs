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
    /// Extra EHLO keywords, listed after the built-in ones and before `HELP`. (STARTTLS and
    /// AUTH have their own settings below; do not list them here too.)
    pub extra_ehlo: Vec<String>,
    /// Offer and accept STARTTLS (RFC 3207; env `STARTTLS`). Advertised only while the session
    /// is not under TLS yet. The driver must have a usable certificate before enabling it.
    pub starttls: bool,
    /// SASL mechanisms offered in `AUTH`, in order, e.g. `["LOGIN", "PLAIN", "CRAM-MD5"]`
    /// (IndiMail: AUTH on when auth programs are configured, minus `DISABLE_AUTH_*`). Names the
    /// core cannot run (see [`AuthMechanism`]) are ignored. Empty: AUTH is not offered and the
    /// command gets 502.
    pub auth_mechanisms: Vec<String>,
    /// Offer PLAIN and LOGIN only under TLS (env `SECURE_AUTH`); trying them in clear text gets
    /// `538 5.7.11`.
    pub auth_plain_needs_tls: bool,
    /// No MAIL before a successful AUTH: `530 5.7.0` (env `REQUIREAUTH`; submission).
    pub require_auth: bool,
    /// No MAIL, RCPT or AUTH before STARTTLS: `530 5.7.0 Must issue a STARTTLS command first`
    /// (env `FORCE_TLS`). AUTH is not advertised before TLS then.
    pub require_tls: bool,
    /// Failed AUTH attempts before `421 4.7.0` and close. 0 means no limit.
    pub max_auth_failures: u32,
    /// Longest AUTH command line and SASL response line, CRLF included (RFC 4954 section 4:
    /// 12288). Longer responses end the exchange with `500 5.5.6`.
    pub max_auth_line: usize,
    /// Advertise and accept ETRN (RFC 1985); off: 502 (IndiMail's submission port).
    pub etrn: bool,
    /// Advertise and accept ATRN (RFC 2645; IndiMail's ODMR port 366). ATRN needs a
    /// successful AUTH first (`530 5.7.0`).
    pub atrn: bool,
    /// On-Demand Mail Relay mode (RFC 2645, port 366): only HELO, EHLO, AUTH, STARTTLS, ATRN,
    /// ETRN, HELP, NOOP, RSET and QUIT are served; mail transactions and VRFY get 502 and the
    /// EHLO reply lists only what applies.
    pub odmr: bool,
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
            starttls: false,
            auth_mechanisms: Vec::new(),
            auth_plain_needs_tls: true,
            require_auth: false,
            require_tls: false,
            max_auth_failures: 3,
            max_auth_line: 12288,
            etrn: false,
            atrn: false,
            odmr: false,
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

/// Where a SASL exchange stands, i.e. what the next response line is.
#[derive(Debug)]
enum Sasl {
    /// The PLAIN response.
    Plain,
    /// The LOGIN user name.
    LoginUser,
    /// The LOGIN password.
    LoginPassword { user: String },
    /// The CRAM response to `challenge`.
    Cram {
        mechanism: AuthMechanism,
        challenge: String,
    },
    /// The SCRAM client-first message.
    ScramFirst,
    /// The SCRAM client-final message, after our server-first.
    ScramFinal(Box<ScramExchange>),
    /// The client's empty response to our SCRAM server-final message; the proof was good.
    ScramAck(Attempt),
}

/// A SCRAM exchange between server-first and client-final.
#[derive(Debug)]
struct ScramExchange {
    first: scram::ClientFirst,
    server_first: String,
    /// Client nonce + server nonce.
    nonce: String,
    credentials: ScramCredentials,
}

/// What one SASL response leads to.
enum Step {
    /// The exchange is complete: ask the driver.
    Done(Attempt),
    /// Prompt for the next response with the state's usual 334.
    Next(Sasl),
    /// Send `334 <base64 text>`, then expect the state's response.
    Challenge(String, Sasl),
    /// SCRAM client-first parsed: ask the driver for the stored secret.
    ScramLookup(scram::ClientFirst),
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

    /// Supplies the randomness and the clock (Unix seconds) CRAM challenges are made of,
    /// `<random.time@hostname>` (RFC 2195). Call it once per connection before feeding, with a
    /// value from a real random source; later challenges of the same session are derived from
    /// it so that none repeats. The core has no randomness of its own, to stay deterministic.
    pub fn set_auth_entropy(&mut self, random: u64, unix_time: u64) {
        self.auth_random = random;
        self.auth_time = unix_time;
        self.challenges = 0;
    }

    /// Answers a pending [`Event::Auth`]: `Ok` replies 235 and marks the session
    /// authenticated ([`Envelope::auth_user`], the `A` in [`Session::protocol`]); `Failed`
    /// replies 535 and, after [`SessionConfig::max_auth_failures`], 421 and closes; `TempFail`
    /// replies 454. Without a pending question this does nothing.
    pub fn auth_result(&mut self, outcome: AuthOutcome) {
        if !matches!(self.mode, Mode::ExpectAuthResult(_)) {
            return;
        }
        let Mode::ExpectAuthResult(attempt) =
            std::mem::replace(&mut self.mode, Mode::ExpectCommand)
        else {
            return;
        };
        match outcome {
            AuthOutcome::Ok => {
                self.reply(235, (2, 7, 0), "Authentication successful");
                self.authenticated = true;
                self.envelope.auth_user = Some(attempt.authcid);
            }
            AuthOutcome::Failed => {
                self.reply(535, (5, 7, 8), "Authentication credentials invalid");
                self.auth_failures = self.auth_failures.saturating_add(1);
                let max = self.config.max_auth_failures;
                if max > 0 && self.auth_failures >= max {
                    let text = format!(
                        "{} Too many authentication failures, closing connection",
                        self.config.hostname
                    );
                    self.reply(421, (4, 7, 0), &text);
                    self.mode = Mode::Closed;
                }
            }
            AuthOutcome::TempFail => {
                self.reply(454, (4, 7, 0), "Temporary authentication failure");
            }
        }
    }

    /// Answers a pending [`Event::ScramLookup`] with the user's stored secret and a fresh
    /// server nonce (printable ASCII without `,`, e.g. the base64 of 18 random bytes; the core
    /// has no randomness of its own). For a user who does not exist or has no SCRAM secret,
    /// pass [`ScramCredentials::decoy`]: the exchange then goes on as for a real user and ends
    /// in 535, so that a client cannot tell (RFC 5802 section 9). `None` means the lookup
    /// failed for now: `454 4.7.0`. The session then sends server-first and expects
    /// client-final. Without a pending lookup this does nothing.
    pub fn scram_credentials(&mut self, credentials: Option<ScramCredentials>, server_nonce: &str) {
        if !matches!(self.mode, Mode::ExpectScramCredentials(_)) {
            return;
        }
        let Mode::ExpectScramCredentials(first) =
            std::mem::replace(&mut self.mode, Mode::ExpectCommand)
        else {
            return;
        };
        let Some(credentials) = credentials.filter(|_| scram::valid_server_nonce(server_nonce))
        else {
            self.reply(454, (4, 7, 0), "Temporary authentication failure");
            return;
        };
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = scram::server_first(&nonce, &credentials);
        Reply::new(334, None, auth::encode(server_first.as_bytes())).write_to(&mut self.out);
        self.mode = Mode::ExpectSaslResponse(Sasl::ScramFinal(Box::new(ScramExchange {
            first,
            server_first,
            nonce,
            credentials,
        })));
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
                            let lines = self
                                .bdat_lines
                                .check(&rest[..take], self.config.max_text_line);
                            if let Err(e) = lines {
                                self.bdat_error = Some(e);
                            } else if max > 0 && self.bdat_size + take as u64 > max {
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
                    if last && self.bdat_error.is_none() {
                        self.bdat_error = self.bdat_lines.finish().err();
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

    /// Mechanisms offered now: the configured ones the core can run, minus PLAIN and LOGIN in
    /// clear text when they need TLS.
    fn offered_mechanisms(&self) -> impl Iterator<Item = AuthMechanism> + '_ {
        let clear_ok = self.tls || !self.config.auth_plain_needs_tls;
        let mut seen = Vec::new();
        self.config
            .auth_mechanisms
            .iter()
            .filter_map(|n| AuthMechanism::from_name(n))
            .filter(move |m| clear_ok || !m.sends_password())
            .filter(move |m| {
                let new = !seen.contains(m);
                seen.push(*m);
                new
            })
    }

    fn ehlo_reply(&self) -> Reply {
        let c = &self.config;
        let mut lines = vec![c.hostname.clone()];
        // ODMR (RFC 2645) takes no mail: the transaction extensions do not apply.
        if c.pipelining && !c.odmr {
            lines.push("PIPELINING".into());
        }
        if c.eightbitmime && !c.odmr {
            lines.push("8BITMIME".into());
        }
        if !c.odmr {
            lines.push(if c.max_message_size > 0 {
                format!("SIZE {}", c.max_message_size)
            } else {
                "SIZE".into()
            });
        }
        if c.etrn {
            lines.push("ETRN".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        if c.smtputf8 && !c.odmr {
            lines.push("SMTPUTF8".into());
        }
        if c.chunking && !c.odmr {
            lines.push("CHUNKING".into());
        }
        if c.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        // Under FORCE_TLS, AUTH is not offered before STARTTLS (it would be refused).
        if !c.require_tls || self.tls {
            let mechs: Vec<&str> = self.offered_mechanisms().map(|m| m.name()).collect();
            if !mechs.is_empty() {
                lines.push(format!("AUTH {}", mechs.join(" ")));
            }
        }
        if c.atrn {
            lines.push("ATRN".into());
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
            // ODMR's table has no MAIL (IndiMail's port 366): not implemented, whatever its
            // arguments.
            Err(_) if self.config.odmr && odmr_refuses(line) => {
                self.reply(502, (5, 5, 1), "Command not implemented");
                return None;
            }
            Err(e) => return self.bad(e.reply()),
        };
        if self.config.odmr
            && matches!(
                cmd,
                Command::Mail(..)
                    | Command::Rcpt(..)
                    | Command::Data
                    | Command::Bdat { .. }
                    | Command::Vrfy(_)
            )
        {
            self.reply(502, (5, 5, 1), "Command not implemented");
            if let Command::Bdat { size, .. } = cmd {
                // The chunk follows regardless (RFC 3030 section 3): read and drop it.
                self.mode = Mode::ExpectChunk {
                    remaining: size,
                    last: true,
                    discard: true,
                };
            }
            return None;
        }
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
                if self.config.require_tls && !self.tls {
                    return self.bad(must_starttls());
                }
                if self.envelope.helo.is_none() {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "Send HELO/EHLO first"));
                }
                if self.config.require_auth && !self.authenticated {
                    return self.bad(Reply::new(530, Some((5, 7, 0)), "Authentication required"));
                }
                if self.envelope.reverse_path.is_some() {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "Nested MAIL command"));
                }
                self.mode = Mode::ExpectDecision(Pending::Mail(from.clone(), params.clone()));
                Some(Event::Mail { from, params })
            }
            Command::Rcpt(to, params) => {
                if self.config.require_tls && !self.tls {
                    return self.bad(must_starttls());
                }
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
            Command::StartTls => {
                if !self.config.starttls {
                    self.reply(502, (5, 5, 1), "Command not implemented");
                    return None;
                }
                if self.tls {
                    return self.bad(Reply::new(503, Some((5, 5, 1)), "TLS already active"));
                }
                self.reply(220, (2, 0, 0), "Ready to start TLS");
                self.mode = Mode::ExpectTls;
                Some(Event::StartTls)
            }
            Command::Auth { mechanism, initial } => self.auth_command(&mechanism, initial),
            Command::Etrn(arg) => self.etrn_command(&arg),
            Command::Atrn(arg) => self.atrn_command(&arg),
            Command::NotImplemented => {
                self.reply(502, (5, 5, 1), "Command not implemented");
                None
            }
        }
    }

    /// `ETRN node` (RFC 1985): HELO/EHLO first, no mail transaction open.
    fn etrn_command(&mut self, arg: &str) -> Option<Event<'static>> {
        if !self.config.etrn {
            self.reply(502, (5, 5, 1), "Command not implemented");
            return None;
        }
        if self.envelope.helo.is_none() {
            return self.bad(Reply::new(503, Some((5, 5, 1)), "Send HELO/EHLO first"));
        }
        if self.envelope.reverse_path.is_some() {
            return self.bad(Reply::new(
                503,
                Some((5, 5, 1)),
                "ETRN not permitted during a mail transaction",
            ));
        }
        let node = match command::parse_etrn_node(arg) {
            Ok(n) => n,
            Err(e) => return self.bad(e.reply()),
        };
        self.mode = Mode::ExpectEtrnResult(node.clone());
        Some(Event::Etrn { node })
    }

    /// `ATRN [domains]` (RFC 2645 section 4.2): EHLO first, authenticated, no mail
    /// transaction open.
    fn atrn_command(&mut self, arg: &str) -> Option<Event<'static>> {
        if !self.config.atrn {
            self.reply(502, (5, 5, 1), "Command not implemented");
            return None;
        }
        if self.envelope.helo.is_none() {
            return self.bad(Reply::new(503, Some((5, 5, 1)), "Send EHLO first"));
        }
        if self.envelope.reverse_path.is_some() {
            return self.bad(Reply::new(
                503,
                Some((5, 5, 1)),
                "ATRN not permitted during a mail transaction",
            ));
        }
        if !self.authenticated {
            return self.bad(Reply::new(530, Some((5, 7, 0)), "Authentication required"));
        }
        let domains = match command::parse_atrn_domains(arg) {
            Ok(d) => d,
            Err(e) => return self.bad(e.reply()),
        };
        self.mode = Mode::ExpectAtrnResult(domains.clone());
        Some(Event::Atrn { domains })
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954 section 4).
    fn auth_command(&mut self, name: &str, initial: Option<String>) -> Option<Event<'static>> {
        if self.config.auth_mechanisms.is_empty() {
            self.reply(502, (5, 5, 1), "Command not implemented");
            return None;
        }
        if self.config.require_tls && !self.tls {
            return self.bad(must_starttls());
        }
        if self.envelope.helo.is_none() {
            return self.bad(Reply::new(503, Some((5, 5, 1)), "Send EHLO first"));
        }
        if self.authenticated {
            return self.bad(Reply::new(503, Some((5, 5, 1)), "Already authenticated"));
        }
        if self.envelope.reverse_path.is_some() {
            return self.bad(Reply::new(
                503,
                Some((5, 5, 1)),
                "AUTH not permitted during a mail transaction",
            ));
        }
        let configured = self
            .config
            .auth_mechanisms
            .iter()
            .filter_map(|n| AuthMechanism::from_name(n))
            .find(|m| m.name() == name);
        let Some(mechanism) = configured else {
            return self.bad(Reply::new(
                504,
                Some((5, 5, 4)),
                "Unrecognized authentication type",
            ));
        };
        if !self.offered_mechanisms().any(|m| m == mechanism) {
            // Only PLAIN/LOGIN in clear text with auth_plain_needs_tls get here.
            return self.bad(Reply::new(
                538,
                Some((5, 7, 11)),
                "Encryption required for requested authentication mechanism",
            ));
        }
        let state = match mechanism {
            AuthMechanism::Plain => Sasl::Plain,
            AuthMechanism::Login => Sasl::LoginUser,
            // Client-first: the initial response, when given, is the client-first message.
            AuthMechanism::ScramSha256 => Sasl::ScramFirst,
            m => {
                if initial.is_some() {
                    return self.bad(Reply::new(
                        501,
                        Some((5, 5, 4)),
                        "Syntax error: no initial response allowed with this mechanism",
                    ));
                }
                let challenge = self.next_challenge();
                Reply::new(334, None, auth::encode(challenge.as_bytes())).write_to(&mut self.out);
                self.mode = Mode::ExpectSaslResponse(Sasl::Cram {
                    mechanism: m,
                    challenge,
                });
                return None;
            }
        };
        match initial {
            Some(resp) => self.sasl_response(state, resp.as_bytes()),
            None => {
                self.prompt(&state);
                self.mode = Mode::ExpectSaslResponse(state);
                None
            }
        }
    }

    /// The 334 that asks for the response `state` expects. (CRAM's is sent with its challenge.)
    fn prompt(&mut self, state: &Sasl) {
        let text = match state {
            Sasl::Plain
            | Sasl::Cram { .. }
            | Sasl::ScramFirst
            | Sasl::ScramFinal(_)
            | Sasl::ScramAck(_) => String::new(),
            Sasl::LoginUser => auth::encode(b"Username:"),
            Sasl::LoginPassword { .. } => auth::encode(b"Password:"),
        };
        Reply::new(334, None, text).write_to(&mut self.out);
    }

    /// `<random.time@hostname>`; the first challenge uses the driver's random value as given,
    /// later ones a value derived from it.
    fn next_challenge(&mut self) -> String {
        let n = self.challenges;
        self.challenges = n.wrapping_add(1);
        let random = if n == 0 {
            self.auth_random
        } else {
            auth::mix(self.auth_random ^ auth::mix(n))
        };
        format!(
            "<{random}.{}@{}>",
            self.auth_time,
            self.config.hostname.replace(['\r', '\n', '>'], "")
        )
    }

    /// One SASL response line (without LF) while an exchange is under way.
    fn sasl_line(&mut self, line: &[u8]) -> Option<Event<'static>> {
        let Mode::ExpectSaslResponse(state) =
            std::mem::replace(&mut self.mode, Mode::ExpectCommand)
        else {
            return None;
        };
        let Some(line) = line.strip_suffix(b"\r") else {
            let r = Reply::new(501, Some((5, 5, 2)), "Syntax error: bare LF in response");
            return self.bad(r);
        };
        self.sasl_response(state, line)
    }

    /// Decodes a response (initial or continuation) and moves the exchange on. The session is
    /// in `ExpectCommand` when this is called; it sets the next mode.
    fn sasl_response(&mut self, state: Sasl, line: &[u8]) -> Option<Event<'static>> {
        let step = auth::decode(line).and_then(|data| match state {
            Sasl::Plain => auth::plain(&data).map(Step::Done),
            Sasl::LoginUser => {
                auth::login_user(&data).map(|user| Step::Next(Sasl::LoginPassword { user }))
            }
            Sasl::LoginPassword { user } => auth::login_password(user, &data).map(Step::Done),
            Sasl::Cram {
                mechanism,
                challenge,
            } => auth::cram(mechanism, challenge, &data).map(Step::Done),
            Sasl::ScramFirst => scram::client_first(&data).map(Step::ScramLookup),
            Sasl::ScramFinal(x) => scram::client_final(&data).map(|fin| scram_final(*x, &fin)),
            Sasl::ScramAck(attempt) if data.is_empty() => Ok(Step::Done(attempt)),
            Sasl::ScramAck(_) => Err(SaslError::Malformed),
        });
        match step {
            Ok(Step::Done(attempt)) => {
                let ev = auth_event(&attempt);
                self.mode = Mode::ExpectAuthResult(attempt);
                Some(ev)
            }
            Ok(Step::Next(next)) => {
                self.prompt(&next);
                self.mode = Mode::ExpectSaslResponse(next);
                None
            }
            Ok(Step::Challenge(text, next)) => {
                Reply::new(334, None, text).write_to(&mut self.out);
                self.mode = Mode::ExpectSaslResponse(next);
                None
            }
            Ok(Step::ScramLookup(first)) => {
                let ev = scram_lookup_event(&first);
                self.mode = Mode::ExpectScramCredentials(first);
                Some(ev)
            }
            Err(SaslError::ChannelBindingUnsupported) => self.bad(Reply::new(
                501,
                Some((5, 5, 4)),
                "Channel binding not supported (no -PLUS mechanism is offered)",
            )),
            Err(SaslError::Cancelled) => {
                self.reply(501, (5, 0, 0), "Authentication cancelled");
                None
            }
            Err(SaslError::BadBase64) => {
                self.bad(Reply::new(501, Some((5, 5, 2)), "Cannot decode response"))
            }
            Err(SaslError::Malformed) => self.bad(Reply::new(
                501,
                Some((5, 5, 2)),
                "Malformed authentication response",
            )),
        }
    }
}

/// Whether a command line that failed to parse is one ODMR does not serve anyway (its
/// arguments do not matter then).
fn odmr_refuses(line: &[u8]) -> bool {
    let verb = line.split(|&b| b == b' ').next().unwrap_or(b"");
    ["MAIL", "RCPT", "DATA", "BDAT", "VRFY"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v.as_bytes()))
}

fn must_starttls() -> Reply {
    Reply::new(530, Some((5, 7, 0)), "Must issue a STARTTLS command first")
}

/// SCRAM client-final: a good proof gets the server-final message (as a 334 challenge the
/// client answers with an empty line) before the driver is asked; a bad one goes to the driver
/// at once, to be answered 535 and counted like any failure.
fn scram_final(x: ScramExchange, fin: &scram::ClientFinal) -> Step {
    let v = scram::verify(&x.credentials, &x.first, &x.server_first, &x.nonce, fin);
    let attempt = Attempt {
        mechanism: AuthMechanism::ScramSha256,
        authcid: x.first.username,
        authzid: x.first.authzid,
        secret: AuthSecret::Scram {
            proof_valid: v.valid,
        },
    };
    if v.valid {
        Step::Challenge(
            auth::encode(v.server_final.as_bytes()),
            Sasl::ScramAck(attempt),
        )
    } else {
        Step::Done(attempt)
    }
}

fn scram_lookup_event(first: &scram::ClientFirst) -> Event<'static> {
    Event::ScramLookup {
        mechanism: AuthMechanism::ScramSha256,
        authcid: first.username.clone(),
    }
}

fn auth_event(a: &Attempt) -> Event<'static> {
    Event::Auth {
        mechanism: a.mechanism,
        authcid: a.authcid.clone(),
        authzid: a.authzid.clone(),
        secret: a.secret.clone(),
    }
}

#[cfg(test)]
mod tests;
