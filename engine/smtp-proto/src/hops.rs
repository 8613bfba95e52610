//! Hop counting over a message's header block, for qmail-smtpd's loop
//! guard: a message carrying more than [`MAX_HOPS`] `Received:` and
//! `Delivered-To:` fields is refused with `554 5.4.6` (RFC 5321 6.3: a
//! relay must detect loops; qmail's limit is 100).

/// qmail-smtpd's MAXHOPS.
pub const MAX_HOPS: u32 = 100;

/// Longest prefix compared: `delivered-to:` is 13 bytes.
const PREFIX: usize = 13;

/// Counts `Received:` and `Delivered-To:` header fields as the message
/// streams in, in pieces split anywhere; stops looking at the first empty
/// line. Accepts CRLF or LF line ends.
#[derive(Debug, Clone, Default)]
pub struct HopCounter {
    line: [u8; PREFIX],
    len: usize,
    in_body: bool,
    hops: u32,
}

impl HopCounter {
    /// A counter at the start of a message.
    pub fn new() -> HopCounter {
        HopCounter::default()
    }

    /// Feeds the next piece of the message.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.in_body {
                return;
            }
            if b == b'\n' {
                self.end_line();
            } else if self.len < PREFIX {
                self.line[self.len] = b.to_ascii_lowercase();
                self.len += 1;
            }
        }
    }

    fn end_line(&mut self) {
        let line = &self.line[..self.len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.in_body = true;
        } else if line.starts_with(b"received:") || line.starts_with(b"delivered-to:") {
            self.hops = self.hops.saturating_add(1);
        }
        self.len = 0;
    }

    /// Trace fields seen so far.
    pub fn hops(&self) -> u32 {
        self.hops
    }

    /// Whether the message has been through more hops than [`MAX_HOPS`].
    pub fn looping(&self) -> bool {
        self.hops > MAX_HOPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(hops: usize) -> Vec<u8> {
        let mut m = Vec::new();
        for i in 0..hops {
            if i % 2 == 0 {
                m.extend_from_slice(b"Received: from a by b\r\n\tid x\r\n");
            } else {
                m.extend_from_slice(b"DELIVERED-TO: x@y\r\n");
            }
        }
        m.extend_from_slice(b"Subject: hi\r\n\r\nReceived: in the body\r\n");
        m
    }

    #[test]
    fn counts_across_every_split() {
        let m = message(7);
        for cut in 0..m.len() {
            let mut c = HopCounter::new();
            c.feed(&m[..cut]);
            c.feed(&m[cut..]);
            assert_eq!(c.hops(), 7, "cut at {cut}");
        }
    }

    #[test]
    fn loops_beyond_one_hundred() {
        let mut c = HopCounter::new();
        c.feed(&message(100));
        assert!(!c.looping());
        let mut c = HopCounter::new();
        c.feed(&message(101));
        assert!(c.looping());
    }

    #[test]
    fn body_and_lf_only() {
        let mut c = HopCounter::new();
        c.feed(b"Subject: x\n\nReceived: no\nDelivered-To: no\n");
        assert_eq!(c.hops(), 0);
        let mut c = HopCounter::new();
        c.feed(b"Received: yes\nX-Received: no\n received: folded\n\n");
        assert_eq!(c.hops(), 1);
    }
}
