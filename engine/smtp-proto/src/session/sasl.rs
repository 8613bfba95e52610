//! AUTH (RFC 4954): the SASL exchanges PLAIN, LOGIN, CRAM-MD5/SHA and SCRAM-SHA-256 inside a
//! [`Session`], and the driver's answers to them.

use super::*;

/// Where a SASL exchange stands, i.e. what the next response line is.
#[derive(Debug)]
pub(super) enum Sasl {
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
pub(super) struct ScramExchange {
    first: scram::ClientFirst,
    server_first: String,
    /// Client nonce + server nonce.
    nonce: String,
    credentials: ScramCredentials,
}

/// What one SASL response leads to.
pub(super) enum Step {
    /// The exchange is complete: ask the driver.
    Done(Attempt),
    /// Prompt for the next response with the state's usual 334.
    Next(Sasl),
    /// Send `334 <base64 text>`, then expect the state's response.
    Challenge(String, Sasl),
    /// SCRAM client-first parsed: ask the driver for the stored secret.
    ScramLookup(scram::ClientFirst),
}

impl Session {
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

    /// Mechanisms offered now: the configured ones the core can run, minus PLAIN and LOGIN in
    /// clear text when they need TLS.
    pub(super) fn offered_mechanisms(&self) -> impl Iterator<Item = AuthMechanism> + '_ {
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

    /// `AUTH mechanism [initial-response]` (RFC 4954 section 4).
    pub(super) fn auth_command(
        &mut self,
        name: &str,
        initial: Option<String>,
    ) -> Option<Event<'static>> {
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
    pub(super) fn prompt(&mut self, state: &Sasl) {
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
    pub(super) fn next_challenge(&mut self) -> String {
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
    pub(super) fn sasl_line(&mut self, line: &[u8]) -> Option<Event<'static>> {
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
    pub(super) fn sasl_response(&mut self, state: Sasl, line: &[u8]) -> Option<Event<'static>> {
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

/// SCRAM client-final: a good proof gets the server-final message (as a 334 challenge the
/// client answers with an empty line) before the driver is asked; a bad one goes to the driver
/// at once, to be answered 535 and counted like any failure.
pub(super) fn scram_final(x: ScramExchange, fin: &scram::ClientFinal) -> Step {
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

pub(super) fn scram_lookup_event(first: &scram::ClientFirst) -> Event<'static> {
    Event::ScramLookup {
        mechanism: AuthMechanism::ScramSha256,
        authcid: first.username.clone(),
    }
}

pub(super) fn auth_event(a: &Attempt) -> Event<'static> {
    Event::Auth {
        mechanism: a.mechanism,
        authcid: a.authcid.clone(),
        authzid: a.authzid.clone(),
        secret: a.secret.clone(),
    }
}
