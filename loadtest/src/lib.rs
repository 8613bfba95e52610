//! SMTP load generator and sink used to benchmark indimail against Postfix.
//!
//! What it does:
//! - [`send`] drives many concurrent SMTP sessions at a target, either closed loop (N sessions
//!   as fast as possible) or open loop (a fixed arrival schedule, latency measured from the
//!   scheduled start so a slow server cannot hide its queueing delay: no coordinated omission).
//!   It records an HDR histogram per protocol step, counts errors by class without ever
//!   aborting, and can log every accepted message so a crash test knows what was acknowledged.
//! - [`sink`] is a fast SMTP server that counts and discards what it receives (or writes it to a
//!   Maildir), with optional delay and 4xx/5xx fault injection: a stand-in for remote servers.
//! - [`handshake`] opens and closes mail-less sessions (with STARTTLS, implicit TLS or in
//!   cleartext) as fast as the server answers: connections, or TLS handshakes, per second.
//! - [`target`] keeps the generator on loopback unless the user explicitly allows otherwise.
//!
//! What it does not do: it is not an MTA, it never relays or resolves MX records, and it does
//! not verify TLS certificates (its peers are test servers on this machine). It has no part in
//! the server: nothing in the engine depends on it.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod handshake;
pub mod message;
pub mod send;
pub mod sink;
pub mod stats;
pub mod stream;
pub mod target;
pub mod tls;
