//! Test messages: valid RFC 5322 headers with a unique Message-ID, and a body of realistic
//! text lines (at most 78 characters, RFC 5322 section 2.1.1) filling the requested size.
//!
//! The body is generated once per run and shared; only the headers differ per message, so the
//! generator spends its CPU on the wire, not on making text.

use std::time::{SystemTime, UNIX_EPOCH};

const WORDS: &[&str] = &[
    "the",
    "queue",
    "message",
    "delivery",
    "server",
    "mailbox",
    "domain",
    "virtual",
    "relay",
    "report",
    "meeting",
    "tomorrow",
    "please",
    "attached",
    "review",
    "quarterly",
    "numbers",
    "thanks",
    "regards",
    "budget",
    "project",
    "status",
    "update",
    "schedule",
    "customer",
    "invoice",
    "shipment",
    "order",
    "confirm",
    "details",
    "below",
    "about",
    "with",
    "from",
    "into",
    "after",
    "before",
    "office",
    "team",
    "weekly",
    "summary",
    "and",
    "of",
    "to",
    "a",
    "in",
    "is",
    "for",
    "on",
    "that",
    "this",
    "will",
    "be",
    "we",
    "you",
    "our",
    "new",
    "plan",
];

/// Longest body line, not counting CRLF (RFC 5322 recommends 78).
pub const LINE_LEN: usize = 78;

/// One message ready to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// The Message-ID header value, angle brackets included.
    pub message_id: String,
    /// The message in wire form with CRLF line ends, not dot-stuffed (what BDAT sends).
    pub raw: Vec<u8>,
}

impl Message {
    /// The DATA payload: dot-stuffed (RFC 5321 section 4.5.2) and closed by `.` CRLF, by the
    /// server's own stuffer ([`smtp_proto::dot_stuff`]).
    pub fn data_payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 64);
        smtp_proto::dot_stuff(&self.raw, &mut out);
        out
    }
}

/// Makes the messages of one run.
#[derive(Debug, Clone)]
pub struct MessageFactory {
    from: String,
    run_id: String,
    host: String,
    body: Vec<u8>,
}

impl MessageFactory {
    /// A factory producing messages of about `size` bytes (headers included) from `from`.
    pub fn new(size: usize, from: &str) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let run_id = format!(
            "{:x}.{:x}",
            now.as_secs(),
            now.subsec_nanos() ^ (std::process::id() << 8)
        );
        let host = from
            .rsplit_once('@')
            .map_or("loadtest.invalid", |(_, d)| d)
            .to_string();
        // Headers take about 300 bytes; the body makes up the rest.
        let body = generate_body(size.saturating_sub(300));
        MessageFactory {
            from: from.to_string(),
            run_id,
            host,
            body,
        }
    }

    /// Message number `seq` for the given recipients.
    pub fn message(&self, seq: u64, rcpts: &[String]) -> Message {
        let message_id = format!("<{}.{}@{}>", self.run_id, seq, self.host);
        let to = rcpts
            .first()
            .map_or("undisclosed-recipients:;", String::as_str);
        let mut raw = Vec::with_capacity(self.body.len() + 400);
        let headers = format!(
            "Date: {}\r\nFrom: Load Test <{}>\r\nTo: <{}>\r\nSubject: load test message {}\r\n\
             Message-ID: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\
             X-Loadtest-Seq: {}\r\n\r\n",
            rfc5322_date(SystemTime::now()),
            self.from,
            to,
            seq,
            message_id,
            seq
        );
        raw.extend_from_slice(headers.as_bytes());
        raw.extend_from_slice(format!("Message {seq} of run {}.\r\n", self.run_id).as_bytes());
        raw.extend_from_slice(&self.body);
        Message { message_id, raw }
    }
}

/// Lines of words wrapped at [`LINE_LEN`], about `size` bytes, every line CRLF-terminated.
fn generate_body(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + LINE_LEN + 2);
    let mut line = String::with_capacity(LINE_LEN + 2);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() + line.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = WORDS[(state % WORDS.len() as u64) as usize];
        if !line.is_empty() && line.len() + 1 + word.len() > LINE_LEN {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 5322 section 3.3 date in UTC, e.g. `Tue, 24 Nov 2026 02:19:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn date_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_486_740); // 2026-11-24 02:19:00 UTC
        assert_eq!(rfc5322_date(t), "Tue, 24 Nov 2026 02:19:00 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn size_and_lines() {
        for size in [0usize, 1024, 102_400] {
            let f = MessageFactory::new(size, "load@example.org");
            let m = f.message(7, &["user1@example.com".into()]);
            assert!(
                m.raw.len() + 200 >= size && m.raw.len() <= size + 400,
                "{size} {}",
                m.raw.len()
            );
            let text = String::from_utf8(m.raw.clone()).unwrap();
            assert!(text.ends_with("\r\n"));
            for line in text.split("\r\n") {
                assert!(line.len() <= 998);
                assert!(!line.contains('\n') && !line.contains('\r'));
            }
            let (_, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(body.split("\r\n").all(|l| l.len() <= LINE_LEN));
            assert!(text.contains(&format!("Message-ID: {}\r\n", m.message_id)));
        }
    }

    #[test]
    fn ids_unique() {
        let f = MessageFactory::new(100, "a@b.c");
        let a = f.message(1, &[]);
        let b = f.message(2, &[]);
        assert_ne!(a.message_id, b.message_id);
        assert!(a.message_id.starts_with('<') && a.message_id.ends_with("@b.c>"));
    }

    #[test]
    fn dot_stuffing() {
        let m = Message {
            message_id: String::new(),
            raw: b".a\r\nb\r\n..c\r\n".to_vec(),
        };
        assert_eq!(m.data_payload(), b"..a\r\nb\r\n...c\r\n.\r\n");
        let m = Message {
            message_id: String::new(),
            raw: b"x".to_vec(),
        };
        assert_eq!(m.data_payload(), b"x\r\n.\r\n");
    }
}
