//! Owned-buffer helpers over `shard::io::TcpStream`: an input buffer that keeps an
//! unconsumed tail and reads after it, line reads with a cap and a timeout, whole writes.

use std::io;
use std::time::Duration;

use shard::io::TcpStream;

/// A byte stream with owned-buffer I/O: a plain socket, or plain-or-TLS
/// ([`tls::MaybeTls`], whose reads and writes need `&mut`).
pub(crate) trait Io {
    /// Reads into the spare capacity of `buf`; 0 means the peer closed.
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf`.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    /// Ends the session (close_notify first under TLS) and both directions of the socket.
    async fn close(&mut self);
    /// Shuts the reading side down at once (a goodbye can still be written). Needed after
    /// a read was cancelled by a timeout: on io_uring the descriptor stays open until the
    /// cancelled read completes, which a silent peer never lets happen; `SHUT_RD` completes
    /// it.
    fn abort(&self);
}

impl Io for TcpStream {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        TcpStream::read(self, buf).await
    }
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        TcpStream::write_all(self, buf).await
    }
    async fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
    fn abort(&self) {
        let _ = self.shutdown(std::net::Shutdown::Read);
    }
}

impl Io for tls::MaybeTls {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        tls::MaybeTls::read(self, buf).await
    }
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        tls::MaybeTls::write_all(self, buf).await
    }
    async fn close(&mut self) {
        let _ = self.shutdown().await;
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
    fn abort(&self) {
        let _ = self.tcp().shutdown(std::net::Shutdown::Read);
    }
}

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// Input read from a socket and not yet used: `buf[start..]`.
#[derive(Debug, Default)]
pub(crate) struct Inbuf {
    buf: Vec<u8>,
    start: usize,
}

impl Inbuf {
    pub(crate) fn new() -> Inbuf {
        Inbuf::default()
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Drops everything buffered (after STARTTLS: pipelined plaintext is never trusted).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Takes what is buffered, leaving the buffer empty.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        let v = self.buf.split_off(self.start);
        self.clear();
        v
    }

    /// One socket read appended after the pending bytes; 0 means the peer closed.
    pub(crate) async fn fill<S: Io>(&mut self, s: &mut S) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut b = std::mem::take(&mut self.buf);
        b.reserve(READ_SIZE);
        let (r, b) = s.read(b).await;
        self.buf = b;
        r
    }

    /// [`Inbuf::fill`] bounded by `limit`; a timeout is an `io::ErrorKind::TimedOut` error.
    pub(crate) async fn fill_within<S: Io>(
        &mut self,
        s: &mut S,
        limit: Duration,
    ) -> io::Result<usize> {
        match tokio::time::timeout(limit, self.fill(s)).await {
            Ok(r) => r,
            Err(_) => {
                s.abort();
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    }

    /// The next line (without CRLF/LF), reading as needed. A line longer than `max`, a
    /// closed peer or a timeout is an error.
    pub(crate) async fn line<S: Io>(
        &mut self,
        s: &mut S,
        max: usize,
        limit: Duration,
    ) -> io::Result<Vec<u8>> {
        loop {
            if let Some(p) = self.pending().iter().position(|&b| b == b'\n') {
                let mut line = self.pending()[..p].to_vec();
                self.consume(p + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.pending().len() > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill_within(s, limit).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Writes all of `bytes`.
pub(crate) async fn write<S: Io>(s: &mut S, bytes: Vec<u8>) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    s.write_all(bytes).await.0
}

/// The client side of a proxy session: plain, or TLS that reads and writes at once.
pub(crate) enum ClientConn {
    Plain(TcpStream),
    Tls(Box<crate::duplex_tls::DuplexTls>),
}

impl ClientConn {
    pub(crate) async fn read_shared(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            ClientConn::Plain(s) => s.read(buf).await,
            ClientConn::Tls(t) => t.read(buf).await,
        }
    }

    pub(crate) async fn write_shared(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            ClientConn::Plain(s) => s.write_all(buf).await,
            ClientConn::Tls(t) => t.write_all(buf).await,
        }
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            ClientConn::Plain(s) => s,
            ClientConn::Tls(t) => t.tcp(),
        }
    }

    /// Ends the sending direction (close_notify first under TLS).
    pub(crate) async fn shutdown_write(&self) {
        match self {
            ClientConn::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            ClientConn::Tls(t) => t.shutdown_write().await,
        }
    }

    /// Upgrades a plain connection (STARTTLS/STLS or implicit TLS) within `limit`. `None`
    /// (socket shut down) when the handshake failed, timed out, or TLS was already on.
    pub(crate) async fn upgrade(
        self,
        store: &tls::CertStore,
        limit: Duration,
    ) -> Option<ClientConn> {
        let ClientConn::Plain(s) = self else {
            return None;
        };
        let _ = store.reload_if_changed();
        let t = match crate::duplex_tls::DuplexTls::new(s, store.config()) {
            Ok(t) => t,
            Err(_) => return None,
        };
        match tokio::time::timeout(limit, t.handshake()).await {
            Ok(Ok(())) => Some(ClientConn::Tls(Box::new(t))),
            _ => {
                // A cancelled io_uring read would otherwise hold the descriptor open.
                let _ = t.tcp().shutdown(std::net::Shutdown::Both);
                None
            }
        }
    }
}

/// A freshly accepted client: under TLS at once on the implicit-TLS ports (993, 995;
/// RFC 8314), then greeted. `None` (connection over) when implicit TLS has no certificate,
/// the handshake failed or the greeting could not be sent.
pub(crate) async fn greeted<S: Io + IntoTls>(
    mut s: S,
    ctx: &crate::ProxyContext,
    implicit_tls: bool,
    greeting: &[u8],
) -> Option<S> {
    if implicit_tls {
        s = s
            .into_tls(ctx.tls.as_ref()?, ctx.config.command_timeout)
            .await?;
    }
    write(&mut s, greeting.to_vec()).await.ok()?;
    Some(s)
}

/// A stream that can be upgraded to TLS after STARTTLS/STLS: the Maildir server's
/// [`tls::MaybeTls`] and the proxies' [`ClientConn`].
pub(crate) trait IntoTls: Sized {
    /// The server side of the handshake within `limit`; `None` (socket shut down) when it
    /// failed, timed out, or TLS was already on.
    async fn into_tls(self, store: &tls::CertStore, limit: Duration) -> Option<Self>;
}

impl IntoTls for ClientConn {
    async fn into_tls(self, store: &tls::CertStore, limit: Duration) -> Option<Self> {
        self.upgrade(store, limit).await
    }
}

/// The STARTTLS/STLS switch shared by the IMAP and POP3 login phases: sends the go-ahead
/// `reply` in the clear, drops every byte read so far (RFC 3207 §5, RFC 2595 §4, RFC 9051
/// §6.2.1: nothing pipelined before the handshake may be trusted), then runs the handshake
/// within `limit`. `None`: the connection is over (write failed, no certificate, or the
/// handshake failed).
pub(crate) async fn switch_to_tls<S: Io + IntoTls>(
    mut s: S,
    reply: Vec<u8>,
    inb: &mut Inbuf,
    store: Option<&tls::CertStore>,
    limit: Duration,
) -> Option<S> {
    if write(&mut s, reply).await.is_err() {
        return None;
    }
    inb.clear();
    s.into_tls(store?, limit).await
}

impl Io for ClientConn {
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read_shared(buf).await
    }
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.write_shared(buf).await
    }
    async fn close(&mut self) {
        self.shutdown_write().await;
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
    fn abort(&self) {
        let _ = self.tcp().shutdown(std::net::Shutdown::Read);
    }
}
