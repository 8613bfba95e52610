//! One command line of a [`Session`]: parsing, sequencing (RFC 5321 4.1.4) and the replies
//! that need no driver, per verb.

use super::*;

impl Session {
    /// Handles one complete command line (without LF). Returns an event for the driver, or
    /// None when the session answered by itself and can go on.
    pub(super) fn command_line(&mut self, line: &[u8]) -> Option<Event<'static>> {
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
            Command::Mail(from, params) => self.mail_command(from, params),
            Command::Rcpt(to, params) => self.rcpt_command(to, params),
            Command::Data => self.data_command(),
            Command::Bdat { size, last } => self.bdat_command(size, last),
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
            Command::StartTls => self.starttls_command(),
            Command::Auth { mechanism, initial } => self.auth_command(&mechanism, initial),
            Command::Etrn(arg) => self.etrn_command(&arg),
            Command::Atrn(arg) => self.atrn_command(&arg),
            Command::NotImplemented => {
                self.reply(502, (5, 5, 1), "Command not implemented");
                None
            }
        }
    }

    /// MAIL FROM: after HELO/EHLO (and AUTH/TLS when required), once per transaction.
    pub(super) fn mail_command(
        &mut self,
        from: ReversePath,
        params: MailParams,
    ) -> Option<Event<'static>> {
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

    /// RCPT TO: after MAIL, not during BDAT, within `max_recipients`.
    pub(super) fn rcpt_command(
        &mut self,
        to: ForwardPath,
        params: RcptParams,
    ) -> Option<Event<'static>> {
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

    /// DATA: after MAIL and at least one accepted RCPT; the body follows.
    pub(super) fn data_command(&mut self) -> Option<Event<'static>> {
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

    /// BDAT (RFC 3030): a refused chunk is still read and dropped to stay in sync.
    pub(super) fn bdat_command(&mut self, size: u64, last: bool) -> Option<Event<'static>> {
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

    /// STARTTLS (RFC 3207), once, when offered.
    pub(super) fn starttls_command(&mut self) -> Option<Event<'static>> {
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

    /// `ETRN node` (RFC 1985): HELO/EHLO first, no mail transaction open.
    pub(super) fn etrn_command(&mut self, arg: &str) -> Option<Event<'static>> {
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
    pub(super) fn atrn_command(&mut self, arg: &str) -> Option<Event<'static>> {
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

    pub(super) fn ehlo_reply(&self) -> Reply {
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
}

/// Whether a command line that failed to parse is one ODMR does not serve anyway (its
/// arguments do not matter then).
pub(super) fn odmr_refuses(line: &[u8]) -> bool {
    let verb = line.split(|&b| b == b' ').next().unwrap_or(b"");
    ["MAIL", "RCPT", "DATA", "BDAT", "VRFY"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v.as_bytes()))
}

pub(super) fn must_starttls() -> Reply {
    Reply::new(530, Some((5, 7, 0)), "Must issue a STARTTLS command first")
}
