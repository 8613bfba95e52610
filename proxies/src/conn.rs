//! Owned-buffer helpers over `shard::io::TcpStream`: an input buffer that keeps an
//! unconsumed tail and reads after it, line reads with a cap and a timeout, whole writes.

use std::io;
use std::time::Duration;

use shard::io::TcpStream;

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
    pub(crate) async fn fill(&mut self, s: &TcpStream) -> io::Result<usize> {
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
    pub(crate) async fn fill_within(
        &mut self,
        s: &TcpStream,
        limit: Duration,
    ) -> io::Result<usize> {
        match tokio::time::timeout(limit, self.fill(s)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// The next line (without CRLF/LF), reading as needed. A line longer than `max`, a
    /// closed peer or a timeout is an error.
    pub(crate) async fn line(
        &mut self,
        s: &TcpStream,
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
pub(crate) async fn write(s: &TcpStream, bytes: Vec<u8>) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    s.write_all(bytes).await.0
}
