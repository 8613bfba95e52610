//! Logging in to a mailstore on the user's behalf (spec 6, "Remote mailstore").
//!
//! IMAP: `<tag> LOGIN user@domain[:clientip] password`, with quoted strings, or
//! synchronizing literals for 8-bit values (IMAP4rev1 quoted strings are 7-bit). POP3:
//! `USER user@domain[:clientip]` then `PASS password`. The mailstore's greeting and login
//! replies are read here and never reach the client.

use std::net::SocketAddr;
use std::time::Duration;

use shard::io::TcpStream;

use crate::conn::{write, Inbuf};
use crate::{ProxyContext, Refusal};

/// Longest mailstore reply line read during login.
const MAX_REPLY: usize = 64 * 1024;

/// `user@domain:clientip`, or `user@domain` under `LEGACY_SERVER` (spec 6).
pub(crate) fn backend_user(ctx: &ProxyContext, u: &lookup::User, peer: SocketAddr) -> String {
    if ctx.config.legacy_server {
        u.email()
    } else {
        format!("{}:{}", u.email(), peer.ip())
    }
}

/// A logged-in mailstore connection.
pub(crate) struct Backend {
    pub(crate) stream: TcpStream,
    /// Bytes the mailstore sent after its login reply (to be passed to the client).
    pub(crate) leftover: Vec<u8>,
    /// The capability list from the IMAP login reply (`[CAPABILITY ...]`) or an untagged
    /// `CAPABILITY` response before it.
    pub(crate) capability: Option<String>,
}

/// Why the mailstore login failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    /// Connecting failed or timed out.
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The mailstore closed, timed out or said something unexpected.
    #[error("mailstore {0}: {1}")]
    Protocol(SocketAddr, String),
    /// The mailstore refused the login.
    #[error("mailstore {0} refused the login: {1}")]
    Refused(SocketAddr, String, Refusal),
}

impl BackendError {
    pub(crate) fn refusal(&self) -> Refusal {
        match self {
            BackendError::Refused(_, _, r) => *r,
            _ => Refusal::Unavailable,
        }
    }
}

async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, BackendError> {
    let s = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(BackendError::Connect(addr, e)),
        Err(_) => {
            return Err(BackendError::Connect(
                addr,
                std::io::ErrorKind::TimedOut.into(),
            ))
        }
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn proto(addr: SocketAddr, what: impl std::fmt::Display) -> BackendError {
    BackendError::Protocol(addr, what.to_string())
}

const TAG: &str = "P1";

async fn read(
    inb: &mut Inbuf,
    s: &mut TcpStream,
    addr: SocketAddr,
    limit: Duration,
) -> Result<Vec<u8>, BackendError> {
    inb.line(s, MAX_REPLY, limit)
        .await
        .map_err(|e| proto(addr, format!("reading reply: {e}")))
}

/// IMAP login on `addr` as `user` (already carrying `:clientip` when wanted).
pub(crate) async fn imap_login(
    addr: SocketAddr,
    user: &str,
    password: &str,
    connect_timeout: Duration,
    reply_timeout: Duration,
) -> Result<Backend, BackendError> {
    if user.contains('\0') || password.contains('\0') {
        // IMAP has no way to carry NUL (RFC 9051 §4.3).
        return Err(BackendError::Refused(
            addr,
            "NUL in credentials".into(),
            Refusal::AuthFailed,
        ));
    }
    let mut s = connect(addr, connect_timeout).await?;
    let mut inb = Inbuf::new();
    let greeting = read(&mut inb, &mut s, addr, reply_timeout).await?;
    if !greeting.starts_with(b"* OK") {
        return Err(proto(
            addr,
            format!("greeting {}", String::from_utf8_lossy(&greeting)),
        ));
    }
    // Pieces ending in a synchronizing literal marker wait for `+` before the next one.
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut cur = format!("{TAG} LOGIN ").into_bytes();
    for (i, arg) in [user, password].into_iter().enumerate() {
        if i == 1 {
            cur.push(b' ');
        }
        if arg.bytes().any(|b| b >= 0x80 || b == b'\r' || b == b'\n') {
            cur.extend_from_slice(format!("{{{}}}\r\n", arg.len()).as_bytes());
            pieces.push(std::mem::take(&mut cur));
            cur.extend_from_slice(arg.as_bytes());
        } else {
            cur.push(b'"');
            for b in arg.bytes() {
                if b == b'"' || b == b'\\' {
                    cur.push(b'\\');
                }
                cur.push(b);
            }
            cur.push(b'"');
        }
    }
    cur.extend_from_slice(b"\r\n");
    pieces.push(cur);
    let last = pieces.len() - 1;
    let mut capability = None;
    for (i, p) in pieces.into_iter().enumerate() {
        write(&mut s, p)
            .await
            .map_err(|e| proto(addr, format!("sending LOGIN: {e}")))?;
        if i < last {
            let l = read(&mut inb, &mut s, addr, reply_timeout).await?;
            if !l.starts_with(b"+") {
                return Err(imap_status(addr, &l)
                    .err()
                    .unwrap_or_else(|| proto(addr, "no continuation for a literal")));
            }
        }
    }
    loop {
        let l = read(&mut inb, &mut s, addr, reply_timeout).await?;
        if let Some(c) = l.strip_prefix(b"* CAPABILITY ") {
            capability = Some(String::from_utf8_lossy(c).into_owned());
            continue;
        }
        if l.starts_with(b"* ") {
            continue;
        }
        if let Some(cap) = imap_status(addr, &l)? {
            capability = Some(cap);
        }
        return Ok(Backend {
            stream: s,
            leftover: inb.take(),
            capability,
        });
    }
}

/// The tagged reply to our LOGIN: `Ok(capability)` for OK, an error otherwise.
fn imap_status(addr: SocketAddr, line: &[u8]) -> Result<Option<String>, BackendError> {
    let text = String::from_utf8_lossy(line);
    let Some(rest) = text.strip_prefix(TAG).and_then(|r| r.strip_prefix(' ')) else {
        return Err(proto(addr, format!("unexpected reply {text}")));
    };
    let (status, resp) = rest.split_once(' ').unwrap_or((rest, ""));
    match status.to_ascii_uppercase().as_str() {
        "OK" => Ok(resp
            .strip_prefix("[CAPABILITY ")
            .and_then(|c| c.split_once(']'))
            .map(|(c, _)| c.to_string())),
        "NO" => {
            let why = if resp.starts_with("[UNAVAILABLE]") || resp.starts_with("[SERVERBUG]") {
                Refusal::Unavailable
            } else if resp.starts_with("[INUSE]") {
                Refusal::InUse
            } else {
                Refusal::AuthFailed
            };
            Err(BackendError::Refused(addr, text.to_string(), why))
        }
        _ => Err(proto(addr, format!("login reply {text}"))),
    }
}

/// POP3 login on `addr` as `user`.
pub(crate) async fn pop3_login(
    addr: SocketAddr,
    user: &str,
    password: &str,
    connect_timeout: Duration,
    reply_timeout: Duration,
) -> Result<Backend, BackendError> {
    let mut s = connect(addr, connect_timeout).await?;
    let mut inb = Inbuf::new();
    let greeting = inb
        .line(&mut s, MAX_REPLY, reply_timeout)
        .await
        .map_err(|e| proto(addr, format!("reading greeting: {e}")))?;
    if !greeting.starts_with(b"+OK") {
        return Err(proto(
            addr,
            format!("greeting {}", String::from_utf8_lossy(&greeting)),
        ));
    }
    for cmd in [format!("USER {user}\r\n"), format!("PASS {password}\r\n")] {
        write(&mut s, cmd.into_bytes())
            .await
            .map_err(|e| proto(addr, format!("sending login: {e}")))?;
        let l = inb
            .line(&mut s, MAX_REPLY, reply_timeout)
            .await
            .map_err(|e| proto(addr, format!("reading login reply: {e}")))?;
        if l.starts_with(b"+OK") {
            continue;
        }
        let text = String::from_utf8_lossy(&l).into_owned();
        if !l.starts_with(b"-ERR") {
            return Err(proto(addr, format!("login reply {text}")));
        }
        // RFC 2449 / 3206 response codes say whether the failure is the account's.
        let why = if text.starts_with("-ERR [SYS/") {
            Refusal::Unavailable
        } else if text.starts_with("-ERR [IN-USE]") {
            Refusal::InUse
        } else {
            Refusal::AuthFailed
        };
        return Err(BackendError::Refused(addr, text, why));
    }
    Ok(Backend {
        stream: s,
        leftover: inb.take(),
        capability: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_status_forms() {
        let a: SocketAddr = "127.0.0.1:143".parse().unwrap();
        assert_eq!(
            imap_status(a, b"P1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in").unwrap(),
            Some("IMAP4rev1 IDLE".into())
        );
        assert_eq!(imap_status(a, b"P1 OK Logged in").unwrap(), None);
        assert_eq!(
            imap_status(a, b"P1 NO [AUTHENTICATIONFAILED] nope")
                .unwrap_err()
                .refusal(),
            Refusal::AuthFailed
        );
        assert_eq!(
            imap_status(a, b"P1 NO [UNAVAILABLE] later")
                .unwrap_err()
                .refusal(),
            Refusal::Unavailable
        );
        assert_eq!(
            imap_status(a, b"P1 BAD what").unwrap_err().refusal(),
            Refusal::Unavailable
        );
    }
}
