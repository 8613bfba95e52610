//! TLS for the shard runtime: rustls 0.23 driven by hand over the owned-buffer sockets of
//! [`shard::io::TcpStream`], on both the io_uring and the epoll driver.
//!
//! What it does:
//! * [`TlsStream`]: a server or client TLS connection with the same owned-buffer API as
//!   `shard::io::TcpStream` (`read` fills spare capacity, `write_all` sends all), an explicit
//!   [`TlsStream::handshake`], close_notify on [`TlsStream::shutdown`], and accessors for the
//!   negotiated version, cipher suite, peer certificates, SNI and the RFC 9266
//!   `tls-exporter` channel binding (for SCRAM-PLUS). [`MaybeTls`] lets a driver handle a plain
//!   and a TLS connection alike and upgrade one after STARTTLS.
//! * [`CertStore`]: the server certificate as IndiMail keeps it (`servercert.pem` in `CERTDIR`,
//!   else the control directory), reloaded without a restart when the files change, checked at
//!   most every few seconds, swapped whole (no lock on the hot path; one store per shard).
//! * [`create_self_signed`]: a demo certificate for `indimail init` / a first start.
//! * [`random_u64`], [`session_random_u64`]: randomness for keys, CRAM challenges and the like.
//! * [`ClientTlsConfig`]: client configurations (Mozilla roots from `webpki-roots`, a pinned
//!   CA file, or opportunistic accept-any) for proxies and remote delivery.
//!
//! What it does not do: no threads, no blocking adapters and no tokio-rustls (tokio-uring's
//! sockets are not `AsyncRead`); no timeouts of its own (wrap the handshake and reads in
//! `tokio::time::timeout`, as for a plain socket); no TLS below 1.2; no client-certificate
//! authentication yet (`clientca.pem`/`clientcrl.pem` are not read); no `tls-unique` channel
//! binding (rustls does not expose the Finished message, see [`TlsStream::channel_binding`]).
//!
//! STARTTLS and plaintext injection (RFC 3207 section 5, CVE-2011-0411): when a server switches
//! to TLS, any plaintext it had buffered after the STARTTLS command must be dropped, never fed to
//! the TLS layer or to the protocol afterwards. [`TlsStream::server`] takes only the socket for
//! that reason: there is deliberately no way to hand it bytes read before the switch.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod client;
mod server;
mod stream;

pub use client::{ClientTlsConfig, ClientVerify};
pub use server::{
    create_self_signed, CertPaths, CertStore, SelfSignedCert, ServerOptions, TlsVersions,
    SERVERCERT, SERVERKEY,
};
pub use stream::{MaybeTls, TlsStream};

pub use rustls;

use std::path::PathBuf;

/// Why setting up TLS or a TLS connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Socket I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS protocol failed (bad handshake, alert from the peer, bad record).
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer closed the connection before the handshake completed.
    #[error("peer closed the connection during the TLS handshake")]
    ClosedDuringHandshake,
    /// A certificate or key file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A certificate or key file was read but holds no usable certificate or key.
    #[error("{path}: {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is missing or malformed.
        what: String,
    },
    /// Generating a self-signed certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The name to verify the server against is not a DNS name or IP address.
    #[error("invalid server name `{0}`")]
    ServerName(String),
    /// A certificate file already exists where a new one was to be written.
    #[error("{0} exists; not overwriting it")]
    Exists(PathBuf),
}

/// 64 random bits from the operating system's secure generator (through the TLS crypto
/// provider), e.g. for `smtp_proto::Session::set_auth_entropy`.
pub fn random_u64() -> Result<u64, TlsError> {
    let mut b = [0u8; 8];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| TlsError::Tls(rustls::Error::FailedToGetRandomBytes))?;
    Ok(u64::from_le_bytes(b))
}

/// 64 unpredictable bits for one session's challenges (`set_auth_entropy`), without a system
/// call per connection: a keyed hash (std's SipHash, under a key this thread drew from the
/// operating system once) of a per-thread counter, so the values differ per call and cannot be
/// guessed without the key.
pub fn session_random_u64() -> u64 {
    use std::hash::BuildHasher;
    thread_local! {
        static KEYED_COUNTER: (std::hash::RandomState, std::cell::Cell<u64>) =
            (std::hash::RandomState::new(), std::cell::Cell::new(0));
    }
    KEYED_COUNTER.with(|(key, n)| {
        let count = n.get();
        n.set(count.wrapping_add(1));
        key.hash_one(count)
    })
}

impl TlsError {
    /// This error as an `io::Error` (for the `read`/`write_all` API, which mirrors sockets).
    pub fn into_io(self) -> std::io::Error {
        match self {
            TlsError::Io(e) => e,
            TlsError::ClosedDuringHandshake => {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, self.to_string())
            }
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}
