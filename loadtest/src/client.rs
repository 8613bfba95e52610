//! The client side of one SMTP connection: reading replies (RFC 5321 section 4.2), writing
//! commands, EHLO capabilities, STARTTLS (RFC 3207) and AUTH PLAIN (RFC 4616).
//!
//! Replies are capped (line length and line count) so a misbehaving server yields a typed
//! error, never a hang or unbounded memory; every read carries a timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::stream::Stream;

/// Longest reply line accepted (RFC 5321 section 4.5.3.1.5 says 512; servers exceed it).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply.
const MAX_REPLY_LINES: usize = 256;

/// What went wrong on a connection. Each variant is an error class in the report.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SmtpError {
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The server closed the connection (EOF or reset).
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// No reply within the timeout.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server sent something that is not an SMTP reply.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// The TLS handshake failed or the server sent data before it (STARTTLS injection).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server answered with a code that ends the session (421, or a failed greeting,
    /// EHLO, STARTTLS or AUTH).
    #[error("session refused at {step}: {code} {text}")]
    Refused {
        /// Which step was refused.
        step: &'static str,
        /// The reply code.
        code: u16,
        /// The reply text.
        text: String,
    },
}

impl SmtpError {
    /// Short class name used as the key in the error counts.
    pub fn class(&self) -> String {
        match self {
            SmtpError::Connect(_) => "connect".into(),
            SmtpError::Disconnected(_) => "disconnect".into(),
            SmtpError::Timeout => "timeout".into(),
            SmtpError::Malformed(_) => "protocol".into(),
            SmtpError::Tls(_) => "tls".into(),
            SmtpError::Refused { step, code, .. } => format!("{step} {}xx", code / 100),
        }
    }
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2, 3, 4 or 5.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// True for 2xx.
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }

    /// Code and the lines joined by spaces, as logged.
    pub fn text(&self) -> String {
        let mut s = self.code.to_string();
        for l in &self.lines {
            s.push(' ');
            s.push_str(l);
        }
        s
    }
}

/// What the server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// CHUNKING (RFC 3030).
    pub chunking: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH PLAIN offered.
    pub auth_plain: bool,
    /// SIZE announced (RFC 1870).
    pub size: bool,
    /// 8BITMIME.
    pub eightbitmime: bool,
}

impl Capabilities {
    /// Reads the keywords of an EHLO reply (the first line is the greeting, skipped).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "CHUNKING" => caps.chunking = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => caps.size = true,
                "8BITMIME" => caps.eightbitmime = true,
                "AUTH" => caps.auth_plain |= words.any(|w| w.eq_ignore_ascii_case("PLAIN")),
                _ => {}
            }
        }
        caps
    }
}

/// Parses one complete reply at the start of `buf`. `Ok(None)` means more input is needed;
/// otherwise returns the reply and the bytes it used.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, SmtpError> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() - pos > MAX_REPLY_LINE {
                return Err(SmtpError::Malformed("reply line too long".into()));
            }
            return Ok(None);
        };
        let mut line = &buf[pos..pos + nl];
        if nl > MAX_REPLY_LINE {
            return Err(SmtpError::Malformed("reply line too long".into()));
        }
        pos += nl + 1;
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(SmtpError::Malformed(
                String::from_utf8_lossy(line).into_owned(),
            ));
        }
        let this_code = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if !(200..=599).contains(&this_code) || code.is_some_and(|c| c != this_code) {
            return Err(SmtpError::Malformed(
                String::from_utf8_lossy(line).into_owned(),
            ));
        }
        code = Some(this_code);
        let (last, text) = match line.get(3) {
            None => (true, &b""[..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => {
                return Err(SmtpError::Malformed(
                    String::from_utf8_lossy(line).into_owned(),
                ))
            }
        };
        lines.push(String::from_utf8_lossy(text).into_owned());
        if last {
            return Ok(Some((
                Reply {
                    code: this_code,
                    lines,
                },
                pos,
            )));
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(SmtpError::Malformed("too many reply lines".into()));
        }
    }
}

/// A client connection with its read buffer.
#[derive(Debug)]
pub struct Connection {
    stream: Option<Stream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Connection {
    /// Connects to `addr`; every later read or write fails with [`SmtpError::Timeout`] after
    /// `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, SmtpError> {
        Connection::connect_from(addr, None, timeout).await
    }

    /// As [`Connection::connect`], from the local address `source` when given (any port):
    /// a server that places clients by their address sees as many clients as sources.
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, SmtpError> {
        let connect = async {
            match source {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = if ip.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let tcp = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| SmtpError::Timeout)?
            .map_err(|e| SmtpError::Connect(e.to_string()))?;
        // Commands are small and latency is what is measured: never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        Ok(Connection {
            stream: Some(Stream::Plain(tcp)),
            buf: Vec::with_capacity(4096),
            timeout,
        })
    }

    fn stream(&mut self) -> Result<&mut Stream, SmtpError> {
        self.stream
            .as_mut()
            .ok_or_else(|| SmtpError::Tls("connection lost during STARTTLS".into()))
    }

    /// Reads one reply.
    pub async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let timeout = self.timeout;
            let stream = self.stream()?;
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(timeout, stream.read(&mut chunk))
                .await
                .map_err(|_| SmtpError::Timeout)?
                .map_err(|e| SmtpError::Disconnected(e.to_string()))?;
            if n == 0 {
                return Err(SmtpError::Disconnected("end of stream".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let timeout = self.timeout;
        let stream = self.stream()?;
        tokio::time::timeout(timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| SmtpError::Timeout)?
        .map_err(|e| SmtpError::Disconnected(e.to_string()))
    }

    /// Writes a command and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.write_all(line.as_bytes()).await?;
        self.read_reply().await
    }

    /// The negotiated TLS version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`,
    /// once under TLS.
    pub fn tls_description(&self) -> Option<String> {
        match self.stream.as_ref()? {
            Stream::Client(s) => {
                let c = s.get_ref().1;
                Some(format!(
                    "{:?} {:?}",
                    c.protocol_version()?,
                    c.negotiated_cipher_suite()?.suite()
                ))
            }
            _ => None,
        }
    }

    /// True when the TLS handshake resumed an earlier session (no certificate signature).
    pub fn tls_resumed(&self) -> bool {
        match self.stream.as_ref() {
            Some(Stream::Client(s)) => {
                s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            }
            _ => false,
        }
    }

    /// Upgrades to TLS: after a 220 to STARTTLS, or right after connecting for implicit TLS
    /// (RFC 8314).
    pub async fn start_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<(), SmtpError> {
        if !self.buf.is_empty() {
            // Anything buffered before the handshake would be trusted as if sent over TLS.
            return Err(SmtpError::Tls(
                "server sent data after its STARTTLS reply".into(),
            ));
        }
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| SmtpError::Tls(e.to_string()))?;
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            return Err(SmtpError::Tls(
                "STARTTLS on a connection already in TLS".into(),
            ));
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| SmtpError::Timeout)?
            .map_err(|e| SmtpError::Tls(e.to_string()))?;
        self.stream = Some(Stream::Client(Box::new(tls)));
        Ok(())
    }

    /// True once STARTTLS has succeeded.
    pub fn is_tls(&self) -> bool {
        self.stream.as_ref().is_some_and(Stream::is_tls)
    }

    /// Closes the connection (TLS close_notify, then FIN) once the 221 to QUIT has been
    /// read, waiting at most half a second.
    pub async fn close(mut self) {
        if let Some(mut s) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), s.shutdown()).await;
        }
    }

    /// Sends QUIT and waits briefly for 221; errors are irrelevant at this point.
    pub async fn quit(mut self) {
        self.timeout = self.timeout.min(Duration::from_secs(2));
        let _ = self.command("QUIT\r\n").await;
        if let Some(mut s) = self.stream.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), s.shutdown()).await;
        }
    }
}

/// The AUTH PLAIN initial response for `user` and `pass` (RFC 4616, empty authzid).
pub fn auth_plain_response(user: &str, pass: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + pass.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(pass.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let (r, n) = parse_reply(b"250 ok\r\nrest").unwrap().unwrap();
        assert_eq!((r.code, n), (250, 8));
        assert_eq!(r.text(), "250 ok");
        let (r, _) = parse_reply(b"250-host\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.lines, ["host", "PIPELINING", "CHUNKING"]);
        let (r, _) = parse_reply(b"354\r\n").unwrap().unwrap();
        assert_eq!(r.code, 354);
    }

    #[test]
    fn incomplete_at_every_split() {
        let full = b"250-a\r\n250-b\r\n250 c\r\n";
        for i in 0..full.len() {
            assert_eq!(parse_reply(&full[..i]).unwrap(), None, "split {i}");
        }
        assert!(parse_reply(full).unwrap().is_some());
    }

    #[test]
    fn malformed() {
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert!(parse_reply(b"250xa\r\n").is_err());
        assert!(parse_reply(b"999 x\r\n").is_err());
        assert!(parse_reply(&vec![b'2'; MAX_REPLY_LINE + 10]).is_err());
    }

    #[test]
    fn capabilities() {
        let (r, _) = parse_reply(
            b"250-h\r\n250-PIPELINING\r\n250-AUTH LOGIN PLAIN\r\n250-STARTTLS\r\n250 CHUNKING\r\n",
        )
        .unwrap()
        .unwrap();
        let c = Capabilities::from_ehlo(&r);
        assert!(c.pipelining && c.chunking && c.starttls && c.auth_plain && !c.size);
    }

    #[test]
    fn auth_plain() {
        assert_eq!(
            auth_plain_response("tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            SmtpError::Refused {
                step: "ehlo",
                code: 421,
                text: String::new()
            }
            .class(),
            "ehlo 4xx"
        );
        assert_eq!(SmtpError::Timeout.class(), "timeout");
    }
}
