//! One SMTP connection: `shard::io::TcpStream` with owned buffers, every
//! operation under a timeout, and optional TLS (implicit or after STARTTLS)
//! through the `tls` crate's [`tls::MaybeTls`], the same TLS layer the
//! server side uses. The client configuration (verification policy) comes
//! from [`tls::ClientTlsConfig`]. [`Connection::step`] drives the protocol
//! core, [`smtp_proto::client::ClientSession`], over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shard::io::TcpStream;
use tls::MaybeTls;

use smtp_proto::client::{ClientError, ClientEvent, ClientSession};
use smtp_proto::ReplyError;

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

/// Why [`Connection::step`] stopped.
#[derive(Debug)]
pub enum StepError {
    /// The connection failed (or the peer sent garbage).
    Transport(TransportError),
    /// The session failed (greeting, HELO, AUTH refused; a QUIT was sent).
    Session(ClientError),
}

impl From<TransportError> for StepError {
    fn from(e: TransportError) -> StepError {
        StepError::Transport(e)
    }
}

/// A connected SMTP peer.
pub struct Connection {
    /// `None` only after a failed TLS upgrade consumed the socket.
    stream: Option<MaybeTls>,
    peer: SocketAddr,
    /// Plaintext received and not yet parsed; reads append to its spare
    /// capacity.
    inbuf: Vec<u8>,
    /// Bytes of replies taken by the session so far.
    consumed: u64,
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
            stream: Some(MaybeTls::Plain(stream)),
            peer,
            inbuf: Vec::with_capacity(READ_CHUNK),
            consumed: 0,
            timeout: io_timeout,
        })
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(MaybeTls::is_tls)
    }

    /// Negotiated TLS protocol version, if any.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream
            .as_ref()
            .and_then(MaybeTls::tls)
            .and_then(|t| t.protocol_version())
    }

    fn stream(&mut self) -> Result<&mut MaybeTls, TransportError> {
        self.stream
            .as_mut()
            .ok_or(TransportError::Closed(self.peer))
    }

    /// Reads from the socket (decrypting when TLS is on) into `inbuf`.
    async fn fill(&mut self) -> Result<(), TransportError> {
        let peer = self.peer;
        let timeout = self.timeout;
        let mut buf = std::mem::take(&mut self.inbuf);
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        let stream = match self.stream.as_mut() {
            Some(s) => s,
            None => {
                self.inbuf = buf;
                return Err(TransportError::Closed(peer));
            }
        };
        let tls = stream.is_tls();
        let (r, buf) = match tokio::time::timeout(timeout, stream.read(buf)).await {
            Err(_) => return Err(TransportError::Timeout("reading", peer)),
            Ok(v) => v,
        };
        self.inbuf = buf;
        match r {
            Ok(0) => Err(TransportError::Closed(peer)),
            Ok(_) => Ok(()),
            // A TCP close without close_notify ends the session like a FIN.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(TransportError::Closed(peer))
            }
            // The TLS layer reports protocol failures as InvalidData.
            Err(e) if tls && e.kind() == std::io::ErrorKind::InvalidData => {
                Err(TransportError::Tls(peer, e.to_string()))
            }
            Err(e) => Err(TransportError::Io("read", peer, e)),
        }
    }

    /// How many bytes of replies the session has taken from this connection
    /// (a change means the peer answered).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Runs the session until it needs the driver: writes what it has to say,
    /// reads and feeds replies while it waits for them, and returns the next
    /// event other than [`ClientEvent::NeedReply`]. On a session error the
    /// QUIT it queued is sent (best effort) before the error is returned.
    pub async fn step(&mut self, session: &mut ClientSession) -> Result<ClientEvent, StepError> {
        loop {
            let fed = session.feed(&self.inbuf);
            let out = session.take_output();
            let (n, ev) = match fed {
                Ok(x) => x,
                Err(ClientError::BadReply(e)) => {
                    return Err(TransportError::Garbage(self.peer, e).into())
                }
                Err(e) => {
                    if !out.is_empty() {
                        let _ = self.send(out).await;
                    }
                    return Err(StepError::Session(e));
                }
            };
            self.inbuf.drain(..n);
            self.consumed += n as u64;
            if !out.is_empty() {
                self.send(out).await?;
            }
            if !matches!(ev, ClientEvent::NeedReply) {
                return Ok(ev);
            }
            self.fill().await?;
        }
    }

    /// Sends bytes (encrypting when TLS is on).
    pub async fn send(&mut self, data: Vec<u8>) -> Result<(), TransportError> {
        let peer = self.peer;
        let timeout = self.timeout;
        let stream = self.stream()?;
        let tls = stream.is_tls();
        match tokio::time::timeout(timeout, stream.write_all(data)).await {
            Err(_) => Err(TransportError::Timeout("writing", peer)),
            Ok((Err(e), _)) if tls && e.kind() == std::io::ErrorKind::InvalidData => {
                Err(TransportError::Tls(peer, e.to_string()))
            }
            Ok((Err(e), _)) => Err(TransportError::Io("write", peer, e)),
            Ok((Ok(()), _)) => Ok(()),
        }
    }

    /// Runs the TLS handshake (after `220` to STARTTLS, or at once on 465),
    /// within the I/O timeout.
    pub async fn start_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(), TransportError> {
        let peer = self.peer;
        // A `[1.2.3.4]` literal or a name rustls refuses: verify (and skip
        // SNI) against the address connected to.
        let bare = server_name.trim_start_matches('[').trim_end_matches(']');
        let name = match rustls::pki_types::ServerName::try_from(bare) {
            Ok(_) => bare.to_string(),
            Err(_) => peer.ip().to_string(),
        };
        // Bytes the peer sent after its 220 would be a STARTTLS injection
        // (CVE-2011-0411 class): drop them.
        self.inbuf.clear();
        let Some(plain) = self.stream.take() else {
            return Err(TransportError::Closed(peer));
        };
        match tokio::time::timeout(self.timeout, plain.start_tls_client(config, &name)).await {
            Err(_) => Err(TransportError::Timeout("TLS handshake", peer)),
            Ok(Err(e)) => Err(TransportError::Tls(peer, e.to_string())),
            Ok(Ok(s)) => {
                self.stream = Some(s);
                Ok(())
            }
        }
    }

    /// Closes politely (TLS close_notify, then FIN).
    pub async fn close(mut self) {
        if let Some(mut s) = self.stream.take() {
            let _ = tokio::time::timeout(self.timeout, s.shutdown()).await;
            let _ = s.tcp().shutdown(std::net::Shutdown::Both);
        }
    }
}
