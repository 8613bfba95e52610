//! Progress of long operations (a queue migration, a scan of a large
//! queue): a bar redrawn in place when stderr is a terminal, plain periodic
//! lines otherwise (for logs and pipes). Written to stderr so stdout stays
//! the operation's output.

use std::io::Write;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is not a
/// terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);
/// How often the bar is redrawn on a terminal.
const BAR_EVERY: Duration = Duration::from_millis(100);
const BAR_WIDTH: u64 = 30;

/// A progress reporter for `total` items.
pub struct Progress {
    what: String,
    total: u64,
    done: u64,
    tty: bool,
    last: Instant,
    started: Instant,
    drawn: bool,
}

impl Progress {
    /// Starts reporting `what` over `total` items (bar when stderr is a
    /// terminal).
    pub fn new(what: &str, total: u64) -> Progress {
        // SAFETY: isatty(3) on a descriptor number; no memory involved.
        let tty = unsafe { libc::isatty(2) == 1 };
        Progress::with_mode(what, total, tty)
    }

    fn with_mode(what: &str, total: u64, tty: bool) -> Progress {
        let now = Instant::now();
        Progress {
            what: what.to_string(),
            total,
            done: 0,
            tty,
            last: now,
            started: now,
            drawn: false,
        }
    }

    /// `n` more items done.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty { BAR_EVERY } else { LINE_EVERY };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            let text = self.render();
            self.emit(&text);
        }
    }

    /// The current state as one line (bar or plain).
    fn render(&self) -> String {
        let pct = (self.done * 100).checked_div(self.total).unwrap_or(100);
        if self.tty {
            let fill = (self.done * BAR_WIDTH)
                .checked_div(self.total)
                .unwrap_or(BAR_WIDTH)
                .min(BAR_WIDTH) as usize;
            format!(
                "{} [{}{}] {}/{} {pct}%",
                self.what,
                "#".repeat(fill),
                ".".repeat(BAR_WIDTH as usize - fill),
                self.done,
                self.total
            )
        } else {
            format!(
                "{}: {}/{} ({pct}%) after {}s",
                self.what,
                self.done,
                self.total,
                self.started.elapsed().as_secs()
            )
        }
    }

    fn emit(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{text}\x1b[K");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// Ends the bar (final state, newline) on a terminal; nothing more on
    /// plain output (the caller prints its summary).
    pub fn finish(&mut self) {
        if self.tty && (self.drawn || self.total > 0) {
            let text = self.render();
            self.emit(&text);
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bar_and_line() {
        let mut p = Progress::with_mode("import", 4, true);
        p.done = 2;
        assert_eq!(
            p.render(),
            format!("import [{}{}] 2/4 50%", "#".repeat(15), ".".repeat(15))
        );
        let mut p = Progress::with_mode("scan", 0, false);
        p.done = 0;
        assert!(p.render().starts_with("scan: 0/0 (100%)"));
    }
}
