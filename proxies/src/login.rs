//! What a login core (IMAP's `imap_login`, POP3's `pop3_login`) asks of its driver, and the
//! core as the driver they share (`login_driver`) sees it.

use std::time::Duration;

use crate::Refusal;

/// What the driver of a login core must do next. `C` is what a login to verify carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginEvent<C> {
    /// All input was used; read more.
    NeedMore,
    /// Send these bytes, then keep feeding.
    Reply(Vec<u8>),
    /// Verify these credentials, then call the core's `accepted` or `refused`.
    Login(C),
    /// Send these bytes in the clear, discard any input already buffered (RFC 9051 §6.2.1,
    /// RFC 2595 §4: nothing pipelined before the handshake may be trusted), run the TLS
    /// handshake, then call the core's `tls_started`.
    StartTls(Vec<u8>),
    /// Send these bytes and close the connection.
    Close(Vec<u8>),
}

/// A login core as the driver sees it: the IMAP and POP3 cores differ in their protocol,
/// not in what they ask of the socket.
pub(crate) trait LoginCore {
    /// What a login to verify carries.
    type Credentials;
    /// Feeds input; how many bytes were used and what to do.
    fn feed(&mut self, input: &[u8]) -> (usize, LoginEvent<Self::Credentials>);
    /// Longest wait for one command.
    fn command_timeout(&self) -> Duration;
    /// The STARTTLS handshake is done.
    fn tls_started(&mut self);
    /// The login asked for was refused: what to tell the client.
    fn refused(&mut self, why: Refusal) -> LoginEvent<Self::Credentials>;
}
