//! A server-side TLS connection that can read and write at the same time, for the proxies'
//! relay (a mailstore may push data while the client's read is pending).
//!
//! `tls::TlsStream` takes `&mut self` for both directions, so one direction's pending read
//! would have to be cancelled to write the other way, and a cancelled io_uring read loses
//! what it received. Here the rustls state sits in a `RefCell` borrowed only between
//! awaits; the reading side owns the ciphertext buffer, and an async lock orders record
//! generation with the socket write, so records leave in sequence-number order.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::Arc;

use shard::io::TcpStream;
use tls::rustls::{ServerConfig, ServerConnection};

/// Ciphertext bytes asked of the socket per read.
const READ_SIZE: usize = 32 * 1024;

/// A server TLS session over a socket, usable from two tasks at once through `&self`.
pub(crate) struct DuplexTls {
    io: TcpStream,
    conn: RefCell<ServerConnection>,
    /// Received ciphertext not yet given to rustls: `rbuf[rpos..]` (reader side only).
    rbuf: RefCell<Vec<u8>>,
    rpos: Cell<usize>,
    eof: Cell<bool>,
    wlock: tokio::sync::Mutex<()>,
}

impl DuplexTls {
    /// The server side over `io`; run [`DuplexTls::handshake`] next.
    pub(crate) fn new(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<DuplexTls> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(DuplexTls {
            io,
            conn: RefCell::new(conn),
            rbuf: RefCell::new(Vec::new()),
            rpos: Cell::new(0),
            eof: Cell::new(false),
            wlock: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs the handshake to completion (no timeout of its own).
    pub(crate) async fn handshake(&self) -> io::Result<()> {
        let t = self;
        loop {
            t.flush().await?;
            if !t.conn.borrow().is_handshaking() {
                break;
            }
            if !t.feed_some()? && t.read_socket().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if let Err(e) = t.process() {
                let _ = t.flush().await;
                return Err(e);
            }
        }
        t.flush().await
    }

    /// The socket (addresses, shutdown of the reading side after a timeout).
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Gives buffered ciphertext to rustls; false when there was none.
    fn feed_some(&self) -> io::Result<bool> {
        let rbuf = self.rbuf.borrow();
        let pos = self.rpos.get();
        if pos >= rbuf.len() {
            return Ok(false);
        }
        let mut pending = &rbuf[pos..];
        let n = self.conn.borrow_mut().read_tls(&mut pending)?;
        // After close_notify rustls takes nothing more: drop the rest.
        self.rpos.set(if n == 0 { rbuf.len() } else { pos + n });
        Ok(true)
    }

    fn process(&self) -> io::Result<()> {
        self.conn
            .borrow_mut()
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    async fn read_socket(&self) -> io::Result<usize> {
        let mut b = std::mem::take(&mut *self.rbuf.borrow_mut());
        b.clear();
        b.reserve(READ_SIZE);
        self.rpos.set(0);
        let (r, b) = self.io.read(b).await;
        *self.rbuf.borrow_mut() = b;
        let n = r?;
        if n == 0 {
            self.eof.set(true);
            let _ = self.conn.borrow_mut().read_tls(&mut io::empty());
        }
        Ok(n)
    }

    /// Sends the records rustls has queued, in order with every other writer.
    async fn flush(&self) -> io::Result<()> {
        let _g = self.wlock.lock().await;
        self.flush_locked().await
    }

    async fn flush_locked(&self) -> io::Result<()> {
        let mut out = Vec::new();
        {
            let mut c = self.conn.borrow_mut();
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        self.io.write_all(out).await.0
    }

    /// Reads plaintext into the spare capacity of `buf`; 0 at close (close_notify or a TCP
    /// close, which a relay treats alike).
    pub(crate) async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            let room = buf.capacity() - buf.len();
            let got = {
                let mut c = self.conn.borrow_mut();
                let len = buf.len();
                buf.resize(len + room, 0);
                let r = c.reader().read(&mut buf[len..]);
                buf.truncate(len + *r.as_ref().unwrap_or(&0));
                r
            };
            match got {
                Ok(n) => return (Ok(n), buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(0), buf),
                Err(e) => return (Err(e), buf),
            }
            if self.eof.get() {
                return (Ok(0), buf);
            }
            let step = match self.feed_some() {
                Ok(true) => Ok(()),
                Ok(false) => match self.read_socket().await {
                    Ok(_) => continue,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = step.and_then(|()| self.process()) {
                let _ = self.flush().await;
                return (Err(e), buf);
            }
            // Handshake messages after the handshake (key updates) may need an answer.
            if let Err(e) = self.flush().await {
                return (Err(e), buf);
            }
        }
    }

    /// Encrypts and sends all of `buf`. rustls buffers a limited amount of plaintext (64 KiB
    /// by default), so a larger `buf` goes in pieces, each sent before the next is taken.
    pub(crate) async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let _g = self.wlock.lock().await;
        let mut off = 0;
        let mut stalled = false;
        while off < buf.len() {
            let r = self.conn.borrow_mut().writer().write(&buf[off..]);
            match r {
                Ok(0) if stalled => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(0) => stalled = true,
                Ok(n) => {
                    off += n;
                    stalled = false;
                    continue;
                }
                Err(e) => return (Err(e), buf),
            }
            // The buffer is full: send what is encrypted, then go on.
            if let Err(e) = self.flush_locked().await {
                return (Err(e), buf);
            }
        }
        (self.flush_locked().await, buf)
    }

    /// close_notify, then end the sending direction.
    pub(crate) async fn shutdown_write(&self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = self.flush().await;
        let _ = self.io.shutdown(std::net::Shutdown::Write);
    }
}
