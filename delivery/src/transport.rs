//! One SMTP connection: `shard::io::TcpStream` with owned buffers, every
//! operation under a timeout, and optional TLS driven by hand through
//! `rustls::ClientConnection` (`read_tls` / `process_new_packets` /
//! `write_tls`), since tokio-rustls needs poll-based streams that
//! io_uring's owned-buffer sockets do not provide.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use shard::io::TcpStream;

use crate::smtp_client::{parse_reply, Reply, ReplyError};

/// Size of one socket read.
const READ_CHUNK: usize = 16 * 1024;

/// A failure of the connection (all temporary for the recipients).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connect failed.
    #[error("unable to connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// Connect, read or write took too long.
    #[error("timeout {0} with {1}")]
    Timeout(&'static str, SocketAddr),
    /// The socket failed.
    #[error("{0} with {1} failed: {2}")]
    Io(&'static str, SocketAddr, std::io::Error),
    /// The peer closed the connection.
    #[error("connection to {0} closed by peer")]
    Closed(SocketAddr),
    /// The peer does not speak SMTP.
    #[error("bad reply from {0}: {1}")]
    Garbage(SocketAddr, ReplyError),
    /// TLS failed.
    #[error("TLS with {0} failed: {1}")]
    Tls(SocketAddr, String),
}

/// How the peer's certificate is checked.
#[derive(Debug, Clone)]
pub enum TlsVerify {
    /// Accept any certificate (opportunistic TLS, qmail-remote's default
    /// without `tlshosts/`): encryption against passive listeners only.
    AcceptAny,
    /// Verify the chain against these roots and the host name.
    Roots(Arc<rustls::RootCertStore>),
}

/// Builds the rustls client configuration.
pub fn tls_config(verify: &TlsVerify) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let cfg = match verify {
        TlsVerify::AcceptAny => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        TlsVerify::Roots(roots) => builder
            .with_root_certificates(Arc::clone(roots))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the session keys are bound to the presented key.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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

/// A connected SMTP peer.
pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<rustls::ClientConnection>,
    /// Plaintext received and not yet parsed.
    inbuf: Vec<u8>,
    /// The owned read buffer, reused across reads.
    rbuf: Vec<u8>,
    timeout: Duration,
}

impl Connection {
    /// Connects within `connect_timeout`; later operations use `io_timeout`.
    pub async fn connect(
        peer: SocketAddr,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Connection, TransportError> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(peer)).await {
            Err(_) => return Err(TransportError::Timeout("connecting", peer)),
            Ok(Err(e)) => return Err(TransportError::Connect(peer, e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            peer,
            tls: None,
            inbuf: Vec::new(),
            rbuf: Vec::with_capacity(READ_CHUNK),
            timeout: io_timeout,
        })
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Negotiated TLS protocol version, if any.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.as_ref().and_then(|t| t.protocol_version())
    }

    async fn raw_read(&mut self) -> Result<Vec<u8>, TransportError> {
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        if buf.capacity() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let (r, buf) = match tokio::time::timeout(self.timeout, self.stream.read(buf)).await {
            Err(_) => return Err(TransportError::Timeout("reading", self.peer)),
            Ok(v) => v,
        };
        match r {
            Ok(0) => {
                self.rbuf = buf;
                Err(TransportError::Closed(self.peer))
            }
            Ok(_) => Ok(buf),
            Err(e) => Err(TransportError::Io("read", self.peer, e)),
        }
    }

    async fn raw_write(&mut self, data: Vec<u8>) -> Result<(), TransportError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(data)).await {
            Err(_) => Err(TransportError::Timeout("writing", self.peer)),
            Ok((Err(e), _)) => Err(TransportError::Io("write", self.peer, e)),
            Ok((Ok(()), _)) => Ok(()),
        }
    }

    /// Sends whatever TLS records rustls has queued.
    async fn flush_tls(&mut self) -> Result<(), TransportError> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            if !tls.wants_write() {
                return Ok(());
            }
            let mut out = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut out)
                    .map_err(|e| TransportError::Tls(self.peer, e.to_string()))?;
            }
            self.raw_write(out).await?;
        }
    }

    /// Reads from the socket into `inbuf` (decrypting when TLS is on).
    async fn fill(&mut self) -> Result<(), TransportError> {
        let data = self.raw_read().await?;
        if self.tls.is_none() {
            self.inbuf.extend_from_slice(&data);
            self.rbuf = data;
            return Ok(());
        }
        let r = self.feed_tls(&data);
        self.rbuf = data;
        // Alerts and post-handshake messages (key updates) go out even on error.
        let flushed = self.flush_tls().await;
        r?;
        flushed?;
        Ok(())
    }

    fn feed_tls(&mut self, mut data: &[u8]) -> Result<(), TransportError> {
        let peer = self.peer;
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while !data.is_empty() {
            tls.read_tls(&mut data)
                .map_err(|e| TransportError::Tls(peer, e.to_string()))?;
            let state = tls
                .process_new_packets()
                .map_err(|e| TransportError::Tls(peer, e.to_string()))?;
            if state.plaintext_bytes_to_read() > 0 {
                let start = self.inbuf.len();
                self.inbuf
                    .resize(start + state.plaintext_bytes_to_read(), 0);
                let n = tls
                    .reader()
                    .read(&mut self.inbuf[start..])
                    .map_err(|e| TransportError::Tls(peer, e.to_string()))?;
                self.inbuf.truncate(start + n);
            }
            if state.peer_has_closed() && data.is_empty() && self.inbuf.is_empty() {
                return Err(TransportError::Closed(peer));
            }
        }
        Ok(())
    }

    /// Reads one complete reply.
    pub async fn read_reply(&mut self) -> Result<Reply, TransportError> {
        loop {
            match parse_reply(&self.inbuf) {
                Ok(Some((reply, used))) => {
                    self.inbuf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(TransportError::Garbage(self.peer, e)),
            }
            self.fill().await?;
        }
    }

    /// Sends bytes (encrypting when TLS is on).
    pub async fn send(&mut self, data: Vec<u8>) -> Result<(), TransportError> {
        match self.tls.as_mut() {
            None => self.raw_write(data).await,
            Some(tls) => {
                tls.writer()
                    .write_all(&data)
                    .map_err(|e| TransportError::Tls(self.peer, e.to_string()))?;
                self.flush_tls().await
            }
        }
    }

    /// Runs the TLS handshake (after `220` to STARTTLS, or at once on 465).
    pub async fn start_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(), TransportError> {
        let peer = self.peer;
        let name = ServerName::try_from(
            server_name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .unwrap_or_else(|_| ServerName::IpAddress(peer.ip().into()));
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| TransportError::Tls(peer, e.to_string()))?;
        // Bytes the peer sent after its 220 would be a STARTTLS injection
        // (CVE-2011-0411 class): drop them.
        self.inbuf.clear();
        self.tls = Some(conn);
        loop {
            self.flush_tls().await?;
            let handshaking = self.tls.as_ref().is_some_and(|t| t.is_handshaking());
            if !handshaking {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Closes politely (TLS close_notify, then FIN).
    pub async fn close(mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = self.flush_tls().await;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
