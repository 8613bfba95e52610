//! [`TlsStream`]: a rustls connection pumped by hand over a `shard::io::TcpStream`, and
//! [`MaybeTls`], a plain-or-TLS stream with one API.
//!
//! rustls never touches the socket: it takes ciphertext through `read_tls`, turns it into
//! plaintext and handshake replies in `process_new_packets`, and hands out records to send
//! through `write_tls`. This module owns the two buffers that sit between rustls and the
//! owned-buffer socket (received ciphertext not yet given to rustls, and records being written),
//! and reuses them for the life of the connection so a steady transfer allocates nothing.

use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use shard::io::TcpStream;

use crate::TlsError;

/// Bytes asked of the socket per read: one full TLS record (16 KiB of plaintext plus header,
/// padding and tag) and then some, so a record rarely needs two reads.
const READ_SIZE: usize = 32 * 1024;

/// RFC 9266 section 2: the exporter label of the `tls-exporter` channel binding.
const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// A TLS connection over a `shard::io::TcpStream`, server or client side.
///
/// `!Send` like the socket under it; it lives on one shard. Reads and writes take `&mut self`:
/// a TLS connection has one state, so reading and writing at the same time from two tasks is
/// not possible (SMTP, POP3 and IMAP alternate anyway).
pub struct TlsStream {
    io: TcpStream,
    conn: Connection,
    /// Ciphertext received from the socket; `rbuf[rpos..]` is not yet given to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Records on their way out; kept to reuse its allocation.
    wbuf: Vec<u8>,
    /// The socket reported end of file.
    eof: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("server", &self.is_server())
            .field("handshaking", &self.conn.is_handshaking())
            .field("version", &self.protocol_name())
            .field("cipher", &self.cipher_name())
            .field("sni", &self.sni())
            .finish()
    }
}

impl TlsStream {
    /// The server side over an accepted socket; call [`TlsStream::handshake`] next (or let the
    /// first read or write do it).
    ///
    /// After STARTTLS the caller must discard any plaintext it had already read past the
    /// command (RFC 3207 section 5): TLS starts with the next byte read from the socket, so a
    /// client's pipelined plaintext can never be mistaken for protected input.
    pub fn server(io: TcpStream, config: Arc<ServerConfig>) -> Result<TlsStream, TlsError> {
        let conn = ServerConnection::new(config)?;
        Ok(TlsStream::new(io, conn.into()))
    }

    /// The client side over a connected socket, verifying the server as `server_name` (a DNS
    /// name or an IP address; it is also sent as SNI when it is a name).
    pub fn client(
        io: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<TlsStream, TlsError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        let conn = ClientConnection::new(config, name)?;
        Ok(TlsStream::new(io, conn.into()))
    }

    /// [`TlsStream::server`] followed by the handshake.
    pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> Result<TlsStream, TlsError> {
        let mut s = TlsStream::server(io, config)?;
        s.handshake().await?;
        Ok(s)
    }

    /// [`TlsStream::client`] followed by the handshake.
    pub async fn connect(
        io: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<TlsStream, TlsError> {
        let mut s = TlsStream::client(io, config, server_name)?;
        s.handshake().await?;
        Ok(s)
    }

    fn new(io: TcpStream, conn: Connection) -> TlsStream {
        TlsStream {
            io,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            eof: false,
        }
    }

    /// Runs the handshake to completion. Returns at once when it is already done.
    ///
    /// Has no timeout of its own: a peer that sends half a record and waits keeps it waiting,
    /// exactly like a plain read. Wrap it in `tokio::time::timeout`. A peer that sends something
    /// that is not TLS gets an alert and an error here, without waiting.
    pub async fn handshake(&mut self) -> Result<(), TlsError> {
        while self.conn.is_handshaking() {
            self.flush().await?;
            if !self.conn.is_handshaking() {
                break;
            }
            if self.rpos < self.rbuf.len() {
                self.feed().await?;
                continue;
            }
            if self.eof || self.read_socket().await? == 0 {
                self.eof = true;
                // Let rustls know, so its state says so too.
                let _ = self.conn.read_tls(&mut io::empty());
                return Err(TlsError::ClosedDuringHandshake);
            }
        }
        // The last flight (the client's Finished, the server's TLS 1.3 tickets).
        self.flush().await?;
        Ok(())
    }

    /// Reads plaintext into the spare capacity of `buf` (`len..capacity`), advancing its length,
    /// like `shard::io::TcpStream::read`. `Ok(0)` means the peer closed the TLS session cleanly
    /// (close_notify) or `buf` has no spare capacity; a TCP close without close_notify is an
    /// `UnexpectedEof` error, since the data may have been truncated.
    pub async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if self.conn.is_handshaking() {
            if let Err(e) = self.handshake().await {
                return (Err(e.into_io()), buf);
            }
        }
        loop {
            match self.take_plaintext(&mut buf) {
                Ok(Some(n)) => return (Ok(n), buf),
                Ok(None) => {}
                Err(e) => return (Err(e), buf),
            }
            // Whatever rustls wants to say first (TLS 1.3 key update replies, alerts).
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
            if self.rpos < self.rbuf.len() {
                if let Err(e) = self.feed().await {
                    return (Err(e.into_io()), buf);
                }
                continue;
            }
            if self.eof {
                // rustls has seen the end too; take_plaintext reports it. Never reached in
                // practice, kept so a logic slip cannot spin.
                return (Err(io::ErrorKind::UnexpectedEof.into()), buf);
            }
            match self.read_socket().await {
                Ok(0) => {
                    self.eof = true;
                    let _ = self.conn.read_tls(&mut io::empty());
                    if let Err(e) = self.process().await {
                        return (Err(e.into_io()), buf);
                    }
                }
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Encrypts and sends all of `buf[..len]`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if self.conn.is_handshaking() {
            if let Err(e) = self.handshake().await {
                return (Err(e.into_io()), buf);
            }
        }
        let mut off = 0;
        while off < buf.len() {
            // rustls takes as much as its outgoing buffer allows (64 KiB by default), then we
            // send that before giving it more: memory stays bounded for any size of `buf`.
            match self.conn.writer().write(&buf[off..]) {
                Ok(0) if !self.conn.wants_write() => {
                    // Nothing taken and nothing to send: writing cannot progress (closed).
                    return (Err(io::ErrorKind::WriteZero.into()), buf);
                }
                Ok(n) => off += n,
                Err(e) => return (Err(e), buf),
            }
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
        }
        (Ok(()), buf)
    }

    /// Sends close_notify and shuts down the sending half of the socket. Reading stays possible
    /// (the peer's own close_notify ends it with `Ok(0)`).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush().await?;
        self.io.shutdown(std::net::Shutdown::Write)
    }

    /// The handshake has not completed yet.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// This is the server side.
    pub fn is_server(&self) -> bool {
        matches!(self.conn, Connection::Server(_))
    }

    /// Negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Negotiated protocol version as logged (`TLSv1.2`, `TLSv1.3`), as OpenSSL names them.
    pub fn protocol_name(&self) -> Option<&'static str> {
        Some(match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            _ => "unknown",
        })
    }

    /// Negotiated cipher suite, once known.
    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// IANA name of the negotiated cipher suite (e.g. `TLS13_AES_256_GCM_SHA384`).
    pub fn cipher_name(&self) -> Option<&'static str> {
        self.conn.negotiated_cipher_suite()?.suite().as_str()
    }

    /// The peer's certificate chain, end entity first: the server's on the client side; on the
    /// server side `None` (client certificates are not requested).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The server name the client asked for (SNI), on the server side.
    pub fn sni(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(s) => s.server_name(),
            Connection::Client(_) => None,
        }
    }

    /// The ALPN protocol agreed on, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// RFC 5705 / RFC 8446 section 7.5 keying material exporter: fills `out` with key material
    /// derived from the session for `label` and `context`. Fails before the handshake is done.
    pub fn export_keying_material(
        &self,
        out: &mut [u8],
        label: &[u8],
        context: Option<&[u8]>,
    ) -> Result<(), TlsError> {
        self.conn.export_keying_material(out, label, context)?;
        Ok(())
    }

    /// The `tls-exporter` channel binding of RFC 9266 (32 bytes, label
    /// `EXPORTER-Channel-Binding`, no context), for SCRAM-*-PLUS. `None` before the handshake.
    ///
    /// RFC 9266 defines it for TLS 1.3, and for TLS 1.2 only with the extended master secret
    /// (which rustls negotiates with every client that offers it). `tls-unique`, the older
    /// binding used for TLS 1.2 by some clients, needs the Finished message, which rustls does
    /// not expose; SCRAM-PLUS over TLS 1.2 must therefore use `tls-exporter` or be refused.
    pub fn channel_binding(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        self.conn
            .export_keying_material(&mut out[..], TLS_EXPORTER_LABEL, None)
            .ok()?;
        Some(out)
    }

    /// The socket under the TLS session (for addresses and socket options; reading or writing it
    /// directly would corrupt the session).
    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    /// Moves buffered plaintext into the spare capacity of `buf`. `Some(n)`: return `n` to the
    /// caller (0 = clean close or no room); `None`: nothing buffered, more ciphertext needed.
    fn take_plaintext(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let room = buf.capacity() - buf.len();
        if room == 0 {
            return Ok(Some(0));
        }
        let mut copied = 0;
        let mut reader = self.conn.reader();
        while copied < room {
            match reader.fill_buf() {
                // Clean close (close_notify): report what we have, then 0 on the next call.
                Ok([]) => return Ok(Some(copied)),
                Ok(chunk) => {
                    let n = chunk.len().min(room - copied);
                    // Within capacity: no reallocation, so the caller's buffer stays theirs.
                    buf.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    copied += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if copied > 0 => {
                    // Hand over the data first; the error comes again on the next call.
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((copied > 0).then_some(copied))
    }

    /// One read from the socket into the (emptied) ciphertext buffer.
    async fn read_socket(&mut self) -> io::Result<usize> {
        let mut b = std::mem::take(&mut self.rbuf);
        b.clear();
        self.rpos = 0;
        if b.capacity() < READ_SIZE {
            b.reserve(READ_SIZE);
        }
        let (r, b) = self.io.read(b).await;
        self.rbuf = b;
        r
    }

    /// Gives buffered ciphertext to rustls and processes it.
    async fn feed(&mut self) -> Result<(), TlsError> {
        let mut pending = &self.rbuf[self.rpos..];
        let n = self.conn.read_tls(&mut pending)?;
        if n == 0 {
            // After close_notify rustls reads nothing more: the rest is dropped.
            self.rpos = self.rbuf.len();
        } else {
            self.rpos += n;
        }
        self.process().await
    }

    /// `process_new_packets`; on a protocol error, sends the alert rustls queued before
    /// reporting it, so the peer learns why.
    async fn process(&mut self) -> Result<(), TlsError> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = self.flush().await;
                Err(e.into())
            }
        }
    }

    /// Sends every record rustls has queued, in one socket write.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.conn.wants_write() {
            return Ok(());
        }
        let mut w = std::mem::take(&mut self.wbuf);
        w.clear();
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail or block.
            self.conn.write_tls(&mut w)?;
        }
        let (r, w) = self.io.write_all(w).await;
        self.wbuf = w;
        r
    }
}

/// A connection that is plain or TLS, with one API, so a protocol driver need not care and can
/// upgrade after STARTTLS.
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (implicit, or after STARTTLS).
    Tls(Box<TlsStream>),
}

impl std::fmt::Debug for MaybeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaybeTls::Plain(_) => f.write_str("Plain"),
            MaybeTls::Tls(s) => f.debug_tuple("Tls").field(s).finish(),
        }
    }
}

impl MaybeTls {
    /// Reads into the spare capacity of `buf`; see [`TlsStream::read`] for what 0 means.
    pub async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            MaybeTls::Plain(s) => s.read(buf).await,
            MaybeTls::Tls(s) => s.read(buf).await,
        }
    }

    /// Writes all of `buf[..len]`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            MaybeTls::Plain(s) => s.write_all(buf).await,
            MaybeTls::Tls(s) => s.write_all(buf).await,
        }
    }

    /// Ends the sending direction (close_notify first under TLS).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown(std::net::Shutdown::Write),
            MaybeTls::Tls(s) => s.shutdown().await,
        }
    }

    /// Before a clean close: under TLS, ends the session as [`Self::shutdown`] does (the
    /// peer can tell this end from a truncation); on plain TCP nothing, since closing the
    /// socket sends the FIN and a `shutdown(2)` first would only cost a system call.
    pub async fn close_notify(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(_) => Ok(()),
            MaybeTls::Tls(s) => s.shutdown().await,
        }
    }

    /// The connection is under TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// The TLS session, if any (for version, cipher and channel binding).
    pub fn tls(&self) -> Option<&TlsStream> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(s) => Some(s),
        }
    }

    /// The socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref(),
        }
    }

    /// Upgrades a plain connection to TLS as the server, running the handshake (STARTTLS, after
    /// the `220` was flushed). The caller must have dropped any plaintext it buffered past the
    /// STARTTLS command. On an already-TLS connection this is an error.
    pub async fn start_tls_server(self, config: Arc<ServerConfig>) -> Result<MaybeTls, TlsError> {
        match self {
            MaybeTls::Plain(s) => Ok(MaybeTls::Tls(Box::new(TlsStream::accept(s, config).await?))),
            MaybeTls::Tls(_) => Err(already_tls()),
        }
    }

    /// Upgrades a plain connection to TLS as the client (after the server's `220` to
    /// STARTTLS).
    pub async fn start_tls_client(
        self,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<MaybeTls, TlsError> {
        match self {
            MaybeTls::Plain(s) => Ok(MaybeTls::Tls(Box::new(
                TlsStream::connect(s, config, server_name).await?,
            ))),
            MaybeTls::Tls(_) => Err(already_tls()),
        }
    }
}

fn already_tls() -> TlsError {
    TlsError::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        "connection is already under TLS",
    ))
}
