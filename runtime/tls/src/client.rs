//! Client configurations, for remote delivery (STARTTLS to MX hosts) and the proxies.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{TlsError, TlsVersions};

/// How a client checks the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientVerify {
    /// Chain to one of Mozilla's roots (the `webpki-roots` set compiled in) and match the name.
    WebPkiRoots,
    /// Chain to one of the CAs in this PEM file (a private or pinned CA) and match the name.
    CaFile(PathBuf),
    /// Accept any certificate for any name: opportunistic TLS (RFC 3207 section 4.1; what MTAs
    /// do towards MX hosts unless told otherwise) protects against passive eavesdropping only.
    /// The handshake signature is still verified against the presented certificate.
    AcceptAny,
}

/// Settings of a client TLS configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsConfig {
    /// Certificate checking.
    pub verify: ClientVerify,
    /// Versions offered.
    pub versions: TlsVersions,
    /// ALPN protocols offered (empty: none).
    pub alpn: Vec<Vec<u8>>,
}

impl ClientTlsConfig {
    /// TLS 1.2 and 1.3, no ALPN, with the given verification.
    pub fn new(verify: ClientVerify) -> ClientTlsConfig {
        ClientTlsConfig {
            verify,
            versions: TlsVersions::Both,
            alpn: Vec::new(),
        }
    }

    /// Builds the rustls configuration (share it between connections; building reads the CA
    /// file, if any).
    pub fn build(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(self.versions.list())?;
        let mut config = match &self.verify {
            ClientVerify::WebPkiRoots => {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ClientVerify::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::File {
                    path: path.clone(),
                    source,
                })?;
                let mut roots = RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut &pem[..]) {
                    let cert = cert.map_err(|e| TlsError::BadPem {
                        path: path.clone(),
                        what: format!("bad PEM: {e}"),
                    })?;
                    roots.add(cert)?;
                }
                if roots.is_empty() {
                    return Err(TlsError::BadPem {
                        path: path.clone(),
                        what: "no CERTIFICATE block".into(),
                    });
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            ClientVerify::AcceptAny => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

/// Accepts any chain and name, but checks that the server holds the certificate's key.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        ClientTlsConfig::new(ClientVerify::WebPkiRoots)
            .build()
            .unwrap();
        ClientTlsConfig::new(ClientVerify::AcceptAny)
            .build()
            .unwrap();
        let missing = ClientTlsConfig::new(ClientVerify::CaFile("/nonexistent/ca.pem".into()));
        assert!(matches!(missing.build(), Err(TlsError::File { .. })));
    }
}
