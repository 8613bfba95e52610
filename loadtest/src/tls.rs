//! TLS configurations for STARTTLS and implicit TLS on both sides.
//!
//! The generator does not verify the server's certificate: its targets are test servers on
//! loopback with self-signed certificates, and what is measured is the cost of the handshake
//! and the encrypted session, which verification of a chain would not change on the server.
//! Signatures in the handshake are still checked, so the key exchange is the real one.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client configuration could not be built.
    #[error("{0}")]
    Client(#[from] tls::TlsError),
    /// The self-signed certificate could not be generated.
    #[error("generating self-signed certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Client configuration for the generator (see the module docs about verification).
///
/// Without `resumption` every connection makes a full handshake (key exchange and
/// certificate signature), the cost a server pays for a client it has not seen; with it the
/// generator keeps rustls's session cache, shared by all its sessions, and resumes where the
/// server allows (TLS 1.3 tickets, TLS 1.2 session IDs).
pub fn client_config(resumption: bool) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let shared = tls::ClientTlsConfig::new(tls::ClientVerify::AcceptAny).build()?;
    let mut config = (*shared).clone();
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Server configuration for the sink, with a fresh self-signed certificate for `hostname`.
pub fn server_config(hostname: &str) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)?;
    Ok(Arc::new(config))
}
