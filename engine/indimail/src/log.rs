//! One line per event, qmail-style: `<unix seconds>.<micros> <event text>`.
//!
//! Lines are written to standard error with a single `write` each, so lines
//! from different shards never interleave mid-line. Event texts follow
//! qmailanalog where an equivalent exists (`new msg`, `info msg`, `end msg`),
//! with `key=value` fields for everything else.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one log line.
pub fn line(args: std::fmt::Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut buf = Vec::with_capacity(160);
    let _ = write!(buf, "{}.{:06} ", now.as_secs(), now.subsec_micros());
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&buf);
}

/// `log!("new msg {id}")`: one event line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

/// RFC 5322 date-time in UTC, e.g. `Tue, 24 Nov 2026 02:18:09 +0000`
/// (the same formatter the bounces use).
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    delivery::bounce::rfc5322_date(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_832_289); // python: datetime.utcfromtimestamp
        assert_eq!(rfc5322_date(t), "Sat, 28 Nov 2026 02:18:09 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
