//! SMTP replies (RFC 5321 section 4.2) with RFC 3463 enhanced status codes: building them for the
//! server side and parsing them, possibly multi-line and split anywhere, for the client side.

use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// Subject, 0..=999.
    pub subject: u16,
    /// Detail, 0..=999.
    pub detail: u16,
}

impl From<(u8, u16, u16)> for EnhancedCode {
    fn from((class, subject, detail): (u8, u16, u16)) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl EnhancedCode {
    /// Appends `class.subject.detail`.
    pub(crate) fn write_to(self, out: &mut Vec<u8>) {
        push_number(out, u64::from(self.class));
        out.push(b'.');
        push_number(out, u64::from(self.subject));
        out.push(b'.');
        push_number(out, u64::from(self.detail));
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code and one or more lines
/// of text (stored joined by `\n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: String,
}

impl Reply {
    /// Builds a reply. `text` may hold several lines separated by `\n`; it becomes a multi-line
    /// reply. CR characters are dropped so a text can never inject a reply line of its own.
    /// `code` should be 200..=599; it is written modulo 1000 with three digits.
    pub fn new(code: u16, enhanced: Option<(u8, u16, u16)>, text: impl Into<String>) -> Reply {
        let mut text: String = text.into();
        if text.contains('\r') {
            text.retain(|c| c != '\r');
        }
        Reply {
            code,
            enhanced: enhanced.map(EnhancedCode::from),
            text,
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, when the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text of all lines joined by `\n` (without codes).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text lines (without codes).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form: every line `code-[enh ]text` except the last `code [enh ]text`,
    /// each ended by CRLF. The enhanced code is repeated on every line (RFC 2034 section 4).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Written digit by digit: this runs for every reply of every session, and `format!`
        // per line cost more than the rest of the reply path (callgrind, RESULTS.md).
        let code = self.code % 1000;
        let digits = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&digits);
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            if let Some(e) = self.enhanced {
                e.write_to(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

/// Appends `n` in decimal, without leading zeros.
pub(crate) fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_wire()))
    }
}

/// Why a peer's reply could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line did not start with a three-digit code 2xx-5xx followed by SP, `-` or the line end.
    #[error("malformed reply line")]
    Malformed,
    /// A continuation line carried a different code from the first line.
    #[error("reply code changed within a multi-line reply ({first} then {then})")]
    CodeMismatch {
        /// Code of the first line.
        first: u16,
        /// Code of the offending line.
        then: u16,
    },
    /// One line exceeded the line cap (RFC 5321 4.5.3.1.5 allows 512 octets).
    #[error("reply line longer than {0} octets")]
    LineTooLong(usize),
    /// The whole multi-line reply exceeded the total cap.
    #[error("reply longer than {0} octets")]
    TooLong(usize),
    /// A line was not valid UTF-8.
    #[error("reply is not valid UTF-8")]
    NotUtf8,
}

/// Incremental parser of replies, for the client side.
///
/// Feed it what was received; it consumes complete lines and returns a [`Reply`] once the last
/// line (`code SP`) is seen. An incomplete line is not consumed: the caller keeps it and feeds it
/// again with more bytes, as with [`crate::Session::feed`]. Lines may end in CRLF or, leniently,
/// in a bare LF. After an error the parser must be discarded along with the connection.
#[derive(Debug, Clone)]
pub struct ReplyParser {
    max_line: usize,
    max_total: usize,
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    text: String,
    total: usize,
    lossy: bool,
}

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new(512, 64 * 1024)
    }
}

impl ReplyParser {
    /// A parser with a cap per line (including CRLF) and a cap on a whole multi-line reply.
    pub fn new(max_line: usize, max_total: usize) -> ReplyParser {
        ReplyParser {
            max_line: max_line.max(8),
            max_total: max_total.max(8),
            code: None,
            enhanced: None,
            text: String::new(),
            total: 0,
            lossy: false,
        }
    }

    /// With `lossy`, a line that is not UTF-8 is taken with U+FFFD for its bad bytes instead of
    /// failing with [`ReplyError::NotUtf8`] (mail servers with Latin-1 banners exist).
    pub fn lossy(mut self, lossy: bool) -> ReplyParser {
        self.lossy = lossy;
        self
    }

    /// Consumes as many complete lines of `input` as possible. Returns the number of bytes
    /// consumed and the reply when its last line was among them (bytes after it are left).
    pub fn parse(&mut self, input: &[u8]) -> Result<(usize, Option<Reply>), ReplyError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let window = &rest[..rest.len().min(self.max_line)];
            let Some(lf) = memchr::memchr(b'\n', window) else {
                if rest.len() >= self.max_line {
                    return Err(ReplyError::LineTooLong(self.max_line));
                }
                // Garbage is reported as soon as it is visible, not when a newline comes (a
                // peer that is not SMTP may never send one).
                check_prefix(rest)?;
                return Ok((pos, None));
            };
            let mut line = &rest[..lf];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            pos += lf + 1;
            self.total += lf + 1;
            if self.total > self.max_total {
                return Err(ReplyError::TooLong(self.max_total));
            }
            if let Some(reply) = self.line(line)? {
                return Ok((pos, Some(reply)));
            }
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let (code, last, text) = match line {
            [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', rest @ ..] => {
                let code =
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
                match rest {
                    [] => (code, true, rest),
                    [b' ', t @ ..] => (code, true, t),
                    [b'-', t @ ..] => (code, false, t),
                    _ => return Err(ReplyError::Malformed),
                }
            }
            _ => return Err(ReplyError::Malformed),
        };
        let text = match std::str::from_utf8(text) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) if self.lossy => String::from_utf8_lossy(text),
            Err(_) => return Err(ReplyError::NotUtf8),
        };
        let text = text.as_ref();
        if memchr::memchr(b'\r', text.as_bytes()).is_some() {
            return Err(ReplyError::Malformed);
        }
        let first_line = self.code.is_none();
        match self.code {
            Some(first) if first != code => {
                return Err(ReplyError::CodeMismatch { first, then: code })
            }
            Some(_) => self.text.push('\n'),
            None => self.code = Some(code),
        }
        // Enhanced codes are on every line or on none (RFC 2034 section 4): the first line
        // decides whether a leading "x.y.z" is a code or just text.
        let text = if first_line {
            let (enh, text) = split_enhanced(code, text);
            self.enhanced = enh;
            text
        } else if self.enhanced.is_some() {
            split_enhanced(code, text).1
        } else {
            text
        };
        self.text.push_str(text);
        if !last {
            return Ok(None);
        }
        let reply = Reply {
            code,
            enhanced: self.enhanced.take(),
            text: std::mem::take(&mut self.text),
        };
        self.code = None;
        self.total = 0;
        Ok(Some(reply))
    }
}

/// Checks the start of an incomplete line: a code 2xx-5xx, then SP, `-` or the line end.
fn check_prefix(partial: &[u8]) -> Result<(), ReplyError> {
    let ok = partial.iter().take(4).enumerate().all(|(i, &b)| match i {
        0 => (b'2'..=b'5').contains(&b),
        1 | 2 => b.is_ascii_digit(),
        _ => matches!(b, b' ' | b'-' | b'\r'),
    });
    if ok {
        Ok(())
    } else {
        Err(ReplyError::Malformed)
    }
}

/// Splits a leading enhanced status code off a reply line when present and consistent with the
/// reply code's class (RFC 3463 section 2; RFC 2034 section 4).
fn split_enhanced(code: u16, text: &str) -> (Option<EnhancedCode>, &str) {
    let word_end = memchr::memchr(b' ', text.as_bytes()).unwrap_or(text.len());
    let word = &text.as_bytes()[..word_end];
    let mut parts = word.split(|&b| b == b'.');
    let (Some(c), Some(s), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (None, text);
    };
    // Digits folded by hand: every reply a client reads passes here.
    let num = |p: &[u8], max_len: usize| -> Option<u16> {
        if p.is_empty() || p.len() > max_len {
            return None;
        }
        p.iter().try_fold(0u16, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0'))
        })
    };
    match (num(c, 1), num(s, 3), num(d, 3)) {
        (Some(c), Some(s), Some(d)) if c == code / 100 => {
            let rest = text[word_end..].strip_prefix(' ').unwrap_or("");
            (
                Some(EnhancedCode {
                    class: c as u8,
                    subject: s,
                    detail: d,
                }),
                rest,
            )
        }
        _ => (None, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_wire_form() {
        let r = Reply::new(250, Some((2, 1, 0)), "Sender ok");
        assert_eq!(r.to_wire(), b"250 2.1.0 Sender ok\r\n");
        let r = Reply::new(250, None, "mx.example\nPIPELINING\nHELP");
        assert_eq!(
            r.to_wire(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 HELP\r\n"
        );
        let r = Reply::new(550, Some((5, 7, 1)), "a\r\nb");
        assert_eq!(r.to_wire(), b"550-5.7.1 a\r\n550 5.7.1 b\r\n");
        let r = Reply::new(421, Some((4, 10, 123)), "");
        assert_eq!(r.to_wire(), b"421 4.10.123\r\n");
        assert_eq!(Reply::new(7, None, "x").to_wire(), b"007 x\r\n");
    }

    #[test]
    fn parse_multiline_split_everywhere() {
        let wire = b"250-mx.example Hello\r\n250-SIZE 1000\r\n250 2.0.0 HELP\r\n221 bye\r\n";
        for split in 0..=wire.len() {
            let mut p = ReplyParser::default();
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                loop {
                    let (n, r) = p.parse(&buf).unwrap();
                    buf.drain(..n);
                    match r {
                        Some(r) => got.push(r),
                        None => break,
                    }
                }
            }
            assert_eq!(got.len(), 2, "split {split}");
            assert_eq!(got[0].code(), 250);
            // The first line decides: no enhanced code there, so none is split off later lines.
            assert_eq!(got[0].text(), "mx.example Hello\nSIZE 1000\n2.0.0 HELP");
            assert_eq!(got[0].enhanced(), None);
            assert_eq!(got[1].code(), 221);
            assert_eq!(got[1].text(), "bye");
        }
    }

    #[test]
    fn parse_enhanced_and_errors() {
        let mut p = ReplyParser::default();
        let (n, r) = p.parse(b"550 5.1.1 no such user\r\n").unwrap();
        assert_eq!(n, 24);
        let r = r.unwrap();
        assert_eq!(r.enhanced(), Some(EnhancedCode::from((5, 1, 1))));
        assert_eq!(r.text(), "no such user");
        // class mismatch: not an enhanced code
        let (_, r) = p.parse(b"250 5.1.1 x\n").unwrap();
        assert_eq!(r.unwrap().text(), "5.1.1 x");
        let (_, r) = p.parse(b"250\r\n").unwrap();
        assert_eq!(r.unwrap().text(), "");
        assert_eq!(
            ReplyParser::default().parse(b"hello\r\n"),
            Err(ReplyError::Malformed)
        );
        assert_eq!(
            ReplyParser::default().parse(b"250x\r\n"),
            Err(ReplyError::Malformed)
        );
        assert_eq!(
            ReplyParser::default().parse(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeMismatch {
                first: 250,
                then: 251
            })
        );
        assert_eq!(
            ReplyParser::new(16, 100).parse(&[b'2'; 20]),
            Err(ReplyError::LineTooLong(16))
        );
        let many = b"250-aaaa\r\n".repeat(20);
        assert_eq!(
            ReplyParser::new(16, 100).parse(&many),
            Err(ReplyError::TooLong(100))
        );
        // incomplete line: nothing consumed
        assert_eq!(ReplyParser::default().parse(b"250 o"), Ok((0, None)));
        assert_eq!(ReplyParser::default().parse(b"25"), Ok((0, None)));
        // ...unless it already cannot be a reply.
        assert_eq!(
            ReplyParser::default().parse(b"HTTP/1.1"),
            Err(ReplyError::Malformed)
        );
        assert_eq!(
            ReplyParser::default().parse(b"250x"),
            Err(ReplyError::Malformed)
        );
        assert_eq!(
            ReplyParser::default().parse(b"220 caf\xe9\r\n"),
            Err(ReplyError::NotUtf8)
        );
        let (_, r) = ReplyParser::default()
            .lossy(true)
            .parse(b"220 caf\xe9\r\n")
            .unwrap();
        assert_eq!(r.unwrap().text(), "caf\u{fffd}");
    }
}
