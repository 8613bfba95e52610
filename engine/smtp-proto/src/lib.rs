//! Sans-I/O SMTP protocol core (RFC 5321 with SIZE, PIPELINING, CHUNKING, ENHANCEDSTATUSCODES,
//! 8BITMIME and SMTPUTF8).
//!
//! What it does: the server session state machine ([`Session`]), including STARTTLS
//! (RFC 3207) and SMTP AUTH (RFC 4954: PLAIN, LOGIN, CRAM-MD5, CRAM-SHA*, and SCRAM-SHA-256
//! per RFC 5802/7677 without channel binding, see [`ScramCredentials`]), ETRN (RFC 1985) and
//! ATRN / On-Demand Mail Relay (RFC 2645, [`Event::Turn`]): command parsing,
//! address parsing ([`address`]), the DATA scanner with dot-unstuffing and strict `CRLF.CRLF` end
//! detection (no SMTP smuggling), BDAT chunks, replies with RFC 3463 codes ([`Reply`]); and for
//! the client side a reply parser ([`ReplyParser`]), the workspace's one dot-stuffer
//! ([`dot_stuff`], [`DotStuffer`]: SMTP DATA, POP3 RETR/TOP) and its one client session state
//! machine ([`client::ClientSession`], with AUTH PLAIN/LOGIN to relays: remote delivery,
//! ETRN/ATRN).
//!
//! What it does not do: any I/O. There are no sockets, no runtime, no timers, no randomness and
//! no TLS here (the driver runs the handshake on [`Event::StartTls`] and verifies credentials on
//! [`Event::Auth`]);
//! a driver owns the connection, feeds received bytes in, writes [`Session::output`] out and
//! answers the questions the session asks (policy on MAIL/RCPT, durable commit of a message).
//! Policy (relay rules, recipient checks, greylisting) and spooling belong to the driver.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod address;
mod auth;
pub mod client;
mod command;
mod data;
#[doc(hidden)]
pub mod fuzzing;
mod hops;
mod reply;
mod session;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use auth::scram::{
    ScramCredentials, ScramSecretError, DEFAULT_ITERATIONS as SCRAM_DEFAULT_ITERATIONS,
    SCRAM_SHA256_PREFIX,
};
pub use auth::{AuthMechanism, AuthOutcome, AuthSecret};
pub use command::{Body, Command, CommandError, EtrnNode, MailParams, RcptParams};
pub use data::{dot_stuff, DotStuffer};
pub use hops::{HopCounter, MAX_HOPS};
pub use reply::{EnhancedCode, Reply, ReplyError, ReplyParser};
pub use session::{Decision, Envelope, Event, Recipient, Session, SessionConfig};
