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
