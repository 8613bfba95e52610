//! One line per event, qmail-style: `<unix seconds>.<micros> <event text>`.
//!
//! Lines go to standard error whole, so lines from different shards never
//! interleave mid-line. Event texts follow qmailanalog where an equivalent
//! exists (`new msg`, `info msg`, `end msg`), with `key=value` fields for
//! everything else.
//!
//! A shard thread may buffer its lines ([`buffer_this_thread`]): each line
//! is appended to the thread's buffer, and the buffer is written with one
//! `write(2)` per turn of the shard's event loop instead of one per line
//! (a relayed message logs five lines). The shard's flusher task runs in the
//! same turn, before the runtime parks and submits that turn's socket
//! writes, so a line logged before a reply is on its way is in the log
//! before the reply leaves. Each line keeps the time it was logged at.

use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// A buffer this big is written at once, whatever the turn.
const FLUSH_AT: usize = 32 * 1024;
/// Writes of at most this many bytes to a pipe are atomic (POSIX `PIPE_BUF`
/// on Linux), so a buffer is written in pieces of at most this size, each
/// ending a line: lines of different shards never interleave mid-line even
/// when standard error is a pipe to a log collector.
const ATOMIC_WRITE: usize = 4096;

struct LineBuffer {
    bytes: Vec<u8>,
    /// Called when the first line enters an empty buffer: wakes the
    /// shard's flusher.
    schedule: Box<dyn Fn()>,
}

thread_local! {
    static BUFFER: RefCell<Option<LineBuffer>> = const { RefCell::new(None) };
}

/// Buffers this thread's lines until [`flush`]; `schedule` is called when
/// the first line enters an empty buffer and must make [`flush`] run soon
/// (a shard wakes a task that flushes). Lines already buffered stay until
/// that flush. The returned guard flushes and stops buffering when dropped
/// (on the shard's exit, a panic included).
pub fn buffer_this_thread(schedule: impl Fn() + 'static) -> BufferGuard {
    BUFFER.with(|b| {
        *b.borrow_mut() = Some(LineBuffer {
            bytes: Vec::with_capacity(FLUSH_AT),
            schedule: Box::new(schedule),
        })
    });
    BufferGuard(std::marker::PhantomData)
}

/// Stops this thread's buffering (and flushes) when dropped.
pub struct BufferGuard(std::marker::PhantomData<*const ()>);

impl Drop for BufferGuard {
    fn drop(&mut self) {
        flush();
        BUFFER.with(|b| *b.borrow_mut() = None);
    }
}

/// Writes this thread's buffered lines, if any.
pub fn flush() {
    let bytes = BUFFER.with(|b| match b.borrow_mut().as_mut() {
        Some(buf) if !buf.bytes.is_empty() => Some(std::mem::replace(
            &mut buf.bytes,
            Vec::with_capacity(FLUSH_AT),
        )),
        _ => None,
    });
    if let Some(bytes) = bytes {
        write_lines(&bytes);
    }
}

/// Writes whole lines in pieces of at most [`ATOMIC_WRITE`] bytes (a
/// longer line goes alone).
fn write_lines(mut bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    while !bytes.is_empty() {
        let cut = if bytes.len() <= ATOMIC_WRITE {
            bytes.len()
        } else {
            match memrchr_newline(&bytes[..ATOMIC_WRITE]) {
                Some(i) => i + 1,
                None => bytes
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |i| i + 1),
            }
        };
        let _ = err.write_all(&bytes[..cut]);
        bytes = &bytes[cut..];
    }
}

fn memrchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'\n')
}

/// Appends `<seconds>.<microseconds> ` (six digits after the point), digit
/// by digit: every line starts with it, and `core::fmt` would cost more than
/// the rest of a short line.
fn push_stamp(out: &mut Vec<u8>, since_epoch: std::time::Duration) {
    out.extend_from_slice(itoa::Buffer::new().format(since_epoch.as_secs()).as_bytes());
    out.push(b'.');
    let mut micros = since_epoch.subsec_micros();
    let mut frac = [b'0'; 6];
    for d in frac.iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&frac);
    out.push(b' ');
}

/// Writes one log line (or buffers it, on a buffering shard).
pub fn line(args: std::fmt::Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let buffered = BUFFER.with(|b| {
        let mut b = b.borrow_mut();
        let Some(buf) = b.as_mut() else {
            return false;
        };
        let was_empty = buf.bytes.is_empty();
        push_stamp(&mut buf.bytes, now);
        let _ = buf.bytes.write_fmt(args);
        buf.bytes.push(b'\n');
        if buf.bytes.len() >= FLUSH_AT {
            let bytes = std::mem::replace(&mut buf.bytes, Vec::with_capacity(FLUSH_AT));
            drop(b);
            write_lines(&bytes);
        } else if was_empty {
            (buf.schedule)();
        }
        true
    });
    if buffered {
        return;
    }
    let mut buf = Vec::with_capacity(160);
    push_stamp(&mut buf, now);
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&buf);
}

/// `log!("new msg {id}")`: one event line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_buffered_line_waits_for_the_flush_and_schedules_it_once() {
        let scheduled = Rc::new(Cell::new(0));
        let s = Rc::clone(&scheduled);
        let guard = buffer_this_thread(move || s.set(s.get() + 1));
        line(format_args!("one"));
        line(format_args!("two"));
        assert_eq!(scheduled.get(), 1, "one wake per empty-to-non-empty");
        let held = BUFFER.with(|b| b.borrow().as_ref().unwrap().bytes.clone());
        let text = String::from_utf8(held).unwrap();
        assert!(
            text.ends_with(" one\n") || text.contains(" one\n"),
            "{text}"
        );
        assert!(text.ends_with(" two\n"), "{text}");
        flush();
        assert!(BUFFER.with(|b| b.borrow().as_ref().unwrap().bytes.is_empty()));
        line(format_args!("three"));
        assert_eq!(scheduled.get(), 2);
        drop(guard);
        assert!(
            BUFFER.with(|b| b.borrow().is_none()),
            "the guard ends buffering"
        );
    }

    #[test]
    fn the_stamp_is_seconds_dot_six_digits() {
        for (secs, micros, want) in [
            (1_796_706_188, 802_599, "1796706188.802599 "),
            (0, 0, "0.000000 "),
            (7, 5, "7.000005 "),
            (u64::MAX, 999_999, "18446744073709551615.999999 "),
        ] {
            let mut out = Vec::new();
            push_stamp(&mut out, std::time::Duration::new(secs, micros * 1000));
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn a_long_buffer_is_cut_at_line_ends_within_the_atomic_size() {
        // The cut logic alone: a 4096-byte window ends at its last newline.
        let mut bytes = Vec::new();
        for i in 0..200 {
            bytes.extend_from_slice(format!("{i:05} {}\n", "x".repeat(40)).as_bytes());
        }
        let i = memrchr_newline(&bytes[..ATOMIC_WRITE]).unwrap();
        assert_eq!(bytes[i], b'\n');
        assert!(i < ATOMIC_WRITE);
        assert_eq!((i + 1) % 47, 0, "the cut falls at a line's end");
    }
}
