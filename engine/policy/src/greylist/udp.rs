//! The qmail-greyd UDP protocol (spec 2.9), both directions.
//!
//! Request, one datagram: `I<client-ip>\0F<sender>\0T<rcpt1>\0T<rcpt2>\0...\0` (the list of
//! `T` fields is closed by an empty field). Reply, two bytes: byte 0 is `0` (greylisted: the
//! client answers `450 4.7.1 try again later`) or `1` (accept); byte 1 is the reason.
//! The client waits [`DEFAULT_TIMEOUT`] for it; a timeout or socket error is a temporary
//! failure (`451 greylist temporary failure`), which [`temporary_failure`] builds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::Verdict;

/// qmail-greyd's port.
pub const DEFAULT_PORT: u16 = 1999;
/// How long qmail-smtpd waits for the reply (GREYTIMEOUT).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why qmail-greyd answered as it did (byte 1 of the reply, read together with byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GreyReason {
    /// `\0\1` first time this triplet is seen.
    NewRecord,
    /// `\0\2` retried before the minimum resend time.
    TooEarly,
    /// `\0\3` retried after the window closed; the clock restarts.
    Stale,
    /// `\0\4` the server could not store the record.
    AddFailed,
    /// `\1\1` the client address is whitelisted.
    WhitelistedIp,
    /// `\1\2` the client address passed before and is still remembered.
    Ok,
    /// `\1\3` the triplet passed greylisting now.
    GreyPassed,
    /// `\1\4` passed, null sender (the record is dropped at once).
    Bounce,
    /// A reason byte this implementation does not know, with the accept flag.
    Other(bool, u8),
}

impl GreyReason {
    fn accept(self) -> bool {
        match self {
            GreyReason::NewRecord
            | GreyReason::TooEarly
            | GreyReason::Stale
            | GreyReason::AddFailed => false,
            GreyReason::WhitelistedIp
            | GreyReason::Ok
            | GreyReason::GreyPassed
            | GreyReason::Bounce => true,
            GreyReason::Other(a, _) => a,
        }
    }

    fn code(self) -> u8 {
        match self {
            GreyReason::NewRecord | GreyReason::WhitelistedIp => 1,
            GreyReason::TooEarly | GreyReason::Ok => 2,
            GreyReason::Stale | GreyReason::GreyPassed => 3,
            GreyReason::AddFailed | GreyReason::Bounce => 4,
            GreyReason::Other(_, c) => c,
        }
    }
}

/// A decoded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreyReply {
    /// Byte 0 was 1.
    pub accept: bool,
    /// Byte 1, interpreted.
    pub reason: GreyReason,
}

impl GreyReply {
    /// A reply carrying `reason` (whose kind fixes the accept byte).
    pub fn new(reason: GreyReason) -> GreyReply {
        GreyReply {
            accept: reason.accept(),
            reason,
        }
    }

    /// `Accept`, or `450 4.7.1 try again later` when greylisted.
    pub fn verdict(&self) -> Verdict {
        if self.accept {
            Verdict::Accept
        } else {
            Verdict::Reject {
                code: 450,
                enhanced: (4, 7, 1),
                text: "try again later".into(),
                rule: format!("qmail-greyd:{:?}", self.reason),
            }
        }
    }
}

/// A decoded request (the server side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreyRequest {
    /// Client address as sent (`TCPREMOTEIP` text).
    pub ip: String,
    /// Envelope sender, empty for `<>`.
    pub sender: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
}

/// Malformed datagrams and `GREYIP` values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    /// The reply is shorter than two bytes.
    #[error("greylist reply too short ({0} bytes)")]
    ShortReply(usize),
    /// Reply byte 0 is neither 0 nor 1.
    #[error("greylist reply has bad status byte {0}")]
    BadStatus(u8),
    /// The request does not follow `I..\0F..\0T..\0...\0`.
    #[error("malformed greylist request: {0}")]
    BadRequest(&'static str),
    /// `GREYIP` is not `ip`, `ip@port` or `@port`.
    #[error("bad GREYIP value {0:?}")]
    BadAddress(String),
}

fn push_field(out: &mut Vec<u8>, tag: u8, value: &str) {
    out.push(tag);
    // A NUL inside a field would end it early on the server; addresses never contain one.
    out.extend(value.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// Builds the request datagram for a client at `ip` (IPv4-mapped IPv6 is sent as IPv4).
pub fn encode_request<S: AsRef<str>>(ip: IpAddr, sender: &str, rcpts: &[S]) -> Vec<u8> {
    let ip = crate::canonical_ip(ip).to_string();
    let mut out = Vec::with_capacity(ip.len() + sender.len() + 8 + rcpts.len() * 32);
    push_field(&mut out, b'I', &ip);
    push_field(&mut out, b'F', sender);
    for r in rcpts {
        push_field(&mut out, b'T', r.as_ref());
    }
    out.push(0);
    out
}

/// Parses a request datagram.
pub fn decode_request(buf: &[u8]) -> Result<GreyRequest, UdpError> {
    if !buf.ends_with(&[0, 0]) {
        return Err(UdpError::BadRequest("not closed by an empty field"));
    }
    let mut fields = buf.split(|&b| b == 0);
    let text = |f: &[u8]| {
        String::from_utf8(f.to_vec()).map_err(|_| UdpError::BadRequest("field is not UTF-8"))
    };
    let ip = match fields.next() {
        Some([b'I', rest @ ..]) if !rest.is_empty() => text(rest)?,
        _ => return Err(UdpError::BadRequest("missing I<ip> field")),
    };
    let sender = match fields.next() {
        Some([b'F', rest @ ..]) => text(rest)?,
        _ => return Err(UdpError::BadRequest("missing F<sender> field")),
    };
    let mut rcpts = Vec::new();
    loop {
        match fields.next() {
            Some([b'T', rest @ ..]) => rcpts.push(text(rest)?),
            Some([]) => break,
            Some(_) => return Err(UdpError::BadRequest("expected T<rcpt> field")),
            None => return Err(UdpError::BadRequest("unterminated recipient list")),
        }
    }
    // After the closing empty field only the split's trailing empty remainder may follow.
    match fields.next() {
        None | Some([]) if fields.next().is_none() => {}
        _ => return Err(UdpError::BadRequest("bytes after the closing NUL")),
    }
    if rcpts.is_empty() {
        return Err(UdpError::BadRequest("no recipients"));
    }
    Ok(GreyRequest { ip, sender, rcpts })
}

/// Parses the 2-byte reply.
pub fn decode_reply(buf: &[u8]) -> Result<GreyReply, UdpError> {
    let [status, code, ..] = *buf else {
        return Err(UdpError::ShortReply(buf.len()));
    };
    let accept = match status {
        0 => false,
        1 => true,
        s => return Err(UdpError::BadStatus(s)),
    };
    let reason = match (accept, code) {
        (false, 1) => GreyReason::NewRecord,
        (false, 2) => GreyReason::TooEarly,
        (false, 3) => GreyReason::Stale,
        (false, 4) => GreyReason::AddFailed,
        (true, 1) => GreyReason::WhitelistedIp,
        (true, 2) => GreyReason::Ok,
        (true, 3) => GreyReason::GreyPassed,
        (true, 4) => GreyReason::Bounce,
        (a, c) => GreyReason::Other(a, c),
    };
    Ok(GreyReply { accept, reason })
}

/// Builds the 2-byte reply.
pub fn encode_reply(reply: GreyReply) -> [u8; 2] {
    [u8::from(reply.accept), reply.reason.code()]
}

/// The reply after a timeout or socket error talking to qmail-greyd.
pub fn temporary_failure(what: &str) -> Verdict {
    Verdict::Reject {
        code: 451,
        enhanced: (4, 3, 0),
        text: format!("greylist temporary failure - {what}"),
        rule: "GREYIP".into(),
    }
}

/// Parses `GREYIP`: `ip`, `ip@port`, `@port` or `@` (defaults `127.0.0.1`, port 1999).
/// Returns `None` for the empty value, which disables greylisting.
pub fn parse_greyip(value: &str) -> Result<Option<SocketAddr>, UdpError> {
    if value.is_empty() {
        return Ok(None);
    }
    let bad = || UdpError::BadAddress(value.to_string());
    let (ip, port) = match value.rsplit_once('@') {
        Some((ip, port)) => (
            ip,
            if port.is_empty() {
                DEFAULT_PORT
            } else {
                port.parse().map_err(|_| bad())?
            },
        ),
        None => (value, DEFAULT_PORT),
    };
    let ip: IpAddr = match ip {
        "" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "0" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        s => s.parse().map_err(|_| bad())?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}
