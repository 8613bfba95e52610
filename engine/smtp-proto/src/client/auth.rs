//! The client side of SMTP AUTH (RFC 4954) for relays that want credentials (qmail-remote's
//! `smtproutes` user and password): PLAIN (RFC 4616) or LOGIN, after EHLO and STARTTLS.

use base64::Engine as _;

use super::{ClientError, ClientSession, Expect, State};
use crate::reply::Reply;

/// The AUTH mechanisms the client speaks, best first.
pub const AUTH_MECHANISMS: [&str; 2] = ["PLAIN", "LOGIN"];

/// What the client sends a relay that wants AUTH.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password (never printed: `Debug` hides it).
    pub password: String,
    /// The mechanism to use (`PLAIN`, `LOGIN`); `None` picks the best the relay offers.
    pub mechanism: Option<String>,
    /// Never send the credentials outside TLS.
    pub require_tls: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("mechanism", &self.mechanism)
            .field("require_tls", &self.require_tls)
            .finish_non_exhaustive()
    }
}

/// Where an AUTH exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// AUTH LOGIN sent: the user name is asked for.
    LoginUser,
    /// The user name sent: the password is asked for.
    LoginPassword,
    /// Everything sent: 235 expected.
    Outcome,
}

fn base64_line(secret: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(secret)
        .into_bytes()
}

impl ClientSession {
    /// After EHLO (and STARTTLS): AUTH when credentials are configured (the named mechanism,
    /// else the best of [`AUTH_MECHANISMS`] the relay offers), else ready.
    pub(super) fn authenticate(&mut self) -> Result<(), ClientError> {
        let Some(c) = &self.config.auth else {
            self.state = State::Ready;
            return Ok(());
        };
        if c.require_tls && !self.tls {
            let why = "SECURE_AUTH: the relay offers no TLS, credentials not sent";
            return Err(self.fail(ClientError::Auth(why.into())));
        }
        let offered = &self.caps.auth;
        let mechanism = match &c.mechanism {
            Some(m) => offered.contains(m).then_some(m.as_str()),
            None => AUTH_MECHANISMS
                .into_iter()
                .find(|m| offered.iter().any(|o| o == m)),
        };
        let Some(mechanism) = mechanism else {
            let wanted = c.mechanism.as_deref().unwrap_or("PLAIN or LOGIN");
            let offers = if offered.is_empty() {
                "no AUTH".to_string()
            } else {
                offered.join(" ")
            };
            let why = format!("the relay offers {offers} (wanted {wanted})");
            return Err(self.fail(ClientError::Auth(why)));
        };
        if mechanism == "PLAIN" {
            let mut line = b"AUTH PLAIN ".to_vec();
            line.extend(base64_line(
                format!("\0{}\0{}", c.user, c.password).as_bytes(),
            ));
            self.send(&line, Expect::Auth(AuthStep::Outcome));
        } else {
            self.send(b"AUTH LOGIN", Expect::Auth(AuthStep::LoginUser));
        }
        Ok(())
    }

    /// A reply during AUTH. The error text names the user, never the password.
    pub(super) fn on_auth_reply(&mut self, step: AuthStep, r: Reply) -> Result<(), ClientError> {
        let Some(c) = &self.config.auth else {
            return Err(self.fail(ClientError::WrongState("AUTH reply without credentials")));
        };
        match (step, r.code()) {
            (AuthStep::LoginUser, 334) => {
                let line = base64_line(c.user.as_bytes());
                self.send(&line, Expect::Auth(AuthStep::LoginPassword));
            }
            (AuthStep::LoginPassword, 334) => {
                let line = base64_line(c.password.as_bytes());
                self.send(&line, Expect::Auth(AuthStep::Outcome));
            }
            (AuthStep::Outcome, 235) => self.state = State::Ready,
            _ => {
                let why = format!("{} was refused: {}", c.user, super::reply_text(&r));
                return Err(self.fail(ClientError::Auth(why)));
            }
        }
        Ok(())
    }
}
