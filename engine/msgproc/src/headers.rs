//! One pass over the header block as the message streams into the queue
//! (qmail-queue's line processing, spec 1.7).
//!
//! [`HeaderProcessor`] is fed the message in queue form (LF line ends) in
//! whatever chunks the network gave; it holds at most one header field
//! (bounded by [`MAX_FIELD`]) and passes the body through untouched, so
//! header rules never need the whole message in memory.
//!
//! Header detection follows qmail: a line `name:` with a name of printable
//! characters other than `:` and space starts a field, a line starting with
//! space or tab continues it, and the first other line (normally the empty
//! one) ends the header block. Rule names match case-insensitively as a
//! prefix of the field name (spec 1.7).

/// Longest header field (with its continuation lines) held while deciding
/// what to do with it; a longer field is decided on its first part and
/// its remaining continuation lines follow that decision.
pub const MAX_FIELD: usize = 64 * 1024;

/// The key of an envheaders value (`NAME=value`) in the queue envelope's
/// extra records.
pub const ENVELOPE_KEY: &str = "envheader";

/// The header rules: `removeheaders`, `envheaders`, `logheaders`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// `removeheaders`: names of fields dropped (with continuation lines).
    pub remove: Vec<String>,
    /// `envheaders`: `(name, maxlen)`; a field's value travels with the
    /// envelope when its length is at most `maxlen` (no limit when `None`).
    pub env: Vec<(String, Option<usize>)>,
    /// `logheaders`: names of fields written to the log.
    pub log: Vec<String>,
}

impl HeaderRules {
    /// No rule at all: the message need not be looked at.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.env.is_empty() && self.log.is_empty()
    }
}

/// The name of the environment variable an envheaders field becomes at
/// delivery: upper case, `-` → `_` (spec 1.7).
pub fn env_var_name(header: &str) -> String {
    header
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

fn prefix_match(rule: &str, name: &[u8]) -> bool {
    name.len() >= rule.len() && name[..rule.len()].eq_ignore_ascii_case(rule.as_bytes())
}

/// The field name of a header line (`None` when the line is not a header).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    if name.is_empty() || name.iter().any(|&b| !(33..=126).contains(&b)) {
        return None;
    }
    Some(name)
}

/// Unfolded, trimmed value of a whole field.
fn field_value(field: &[u8], name_len: usize) -> String {
    let raw = String::from_utf8_lossy(&field[name_len + 1..]);
    let mut v = String::with_capacity(raw.len());
    for part in raw.split('\n') {
        let part = part.trim_end_matches('\r');
        if part.trim().is_empty() {
            continue;
        }
        if !v.is_empty() {
            v.push(' ');
        }
        v.push_str(part.trim());
    }
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the header block, collecting a field.
    Headers,
    /// A field too long to hold: its continuation lines are dropped.
    DropContinuation,
    /// A field too long to hold: its continuation lines are passed on.
    PassContinuation,
    /// In the body: everything passes.
    Body,
}

/// What one message's header block gave (see [`HeaderProcessor::finish`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFindings {
    /// envheaders: `(VARIABLE_NAME, value)`.
    pub env: Vec<(String, String)>,
    /// logheaders: `Name: value` (unfolded), in message order.
    pub logged: Vec<String>,
    /// Fields removed.
    pub removed: usize,
    /// The `Message-ID:` value, when there was one.
    pub message_id: Option<String>,
}

/// The streaming header processor of one message.
#[derive(Debug)]
pub struct HeaderProcessor {
    rules: std::sync::Arc<HeaderRules>,
    state: State,
    /// The current field (first line and continuation lines so far).
    field: Vec<u8>,
    /// A line not yet complete (no LF seen).
    partial: Vec<u8>,
    found: HeaderFindings,
}

impl HeaderProcessor {
    /// A processor applying `rules`.
    pub fn new(rules: std::sync::Arc<HeaderRules>) -> HeaderProcessor {
        HeaderProcessor {
            rules,
            state: State::Headers,
            field: Vec::new(),
            partial: Vec::new(),
            found: HeaderFindings::default(),
        }
    }

    /// Whether the header block is over: the caller may then write chunks
    /// as they are instead of feeding them.
    pub fn in_body(&self) -> bool {
        self.state == State::Body
    }

    /// Feeds the next chunk (queue form); what is to be stored is appended
    /// to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            if self.state == State::Body {
                out.extend_from_slice(chunk);
                return;
            }
            match memchr::memchr(b'\n', chunk) {
                Some(p) => {
                    let (line, rest) = chunk.split_at(p + 1);
                    chunk = rest;
                    if self.partial.is_empty() {
                        self.line(line, out);
                    } else {
                        let mut whole = std::mem::take(&mut self.partial);
                        whole.extend_from_slice(line);
                        self.line(&whole, out);
                        whole.clear();
                        self.partial = whole;
                    }
                }
                None => {
                    self.partial.extend_from_slice(chunk);
                    if self.partial.len() > MAX_FIELD {
                        // An endless line: decide on what we have.
                        let line = std::mem::take(&mut self.partial);
                        self.overlong(&line, out);
                    }
                    return;
                }
            }
        }
    }

    fn overlong(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        match self.state {
            State::DropContinuation => {}
            State::PassContinuation => out.extend_from_slice(piece),
            State::Body => out.extend_from_slice(piece),
            State::Headers => {
                let continuation = matches!(piece.first(), Some(b' ' | b'\t'));
                if continuation && !self.field.is_empty() {
                    self.field.extend_from_slice(piece);
                } else {
                    self.flush_field(out);
                    self.field.extend_from_slice(piece);
                }
                self.cut_long_field(out);
            }
        }
    }

    /// A field grown past [`MAX_FIELD`] is flushed as it stands; the rest of its
    /// continuation lines follow it out, or are dropped with it.
    fn cut_long_field(&mut self, out: &mut Vec<u8>) {
        let keep = !self.is_removed();
        self.flush_field(out);
        self.state = if keep {
            State::PassContinuation
        } else {
            State::DropContinuation
        };
    }

    fn is_removed(&self) -> bool {
        field_name(&self.field)
            .is_some_and(|n| self.rules.remove.iter().any(|r| prefix_match(r, n)))
    }

    /// One complete line (ending in LF).
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match self.state {
            State::Body => out.extend_from_slice(line),
            State::DropContinuation | State::PassContinuation if continuation => {
                if self.state == State::PassContinuation {
                    out.extend_from_slice(line);
                }
            }
            State::DropContinuation | State::PassContinuation => {
                self.state = State::Headers;
                self.line(line, out);
            }
            State::Headers => {
                if continuation && !self.field.is_empty() {
                    self.field.extend_from_slice(line);
                    if self.field.len() > MAX_FIELD {
                        self.cut_long_field(out);
                    }
                    return;
                }
                self.flush_field(out);
                if field_name(line).is_some() {
                    self.field.extend_from_slice(line);
                } else {
                    // The empty line (or any non-header line) ends the
                    // header block and belongs to the body.
                    self.state = State::Body;
                    out.extend_from_slice(line);
                }
            }
        }
    }

    /// Decides on the field held and writes it unless removed.
    fn flush_field(&mut self, out: &mut Vec<u8>) {
        if self.field.is_empty() {
            return;
        }
        let field = std::mem::take(&mut self.field);
        if let Some(name) = field_name(&field) {
            let name_str = String::from_utf8_lossy(name).into_owned();
            if self.rules.log.iter().any(|r| prefix_match(r, name)) {
                let v = field_value(&field, name.len());
                self.found.logged.push(format!("{name_str}: {v}"));
            }
            for (rule, max) in &self.rules.env {
                if prefix_match(rule, name) {
                    let v = field_value(&field, name.len());
                    if max.is_none_or(|m| v.len() <= m) {
                        self.found.env.push((env_var_name(&name_str), v));
                    }
                    break;
                }
            }
            if name.eq_ignore_ascii_case(b"message-id") && self.found.message_id.is_none() {
                self.found.message_id = Some(field_value(&field, name.len()));
            }
            if self.rules.remove.iter().any(|r| prefix_match(r, name)) {
                self.found.removed += 1;
                self.field = field;
                self.field.clear();
                return;
            }
        }
        out.extend_from_slice(&field);
        self.field = field;
        self.field.clear();
    }

    /// Ends the message: what is still held is written to `out`, and the
    /// findings are returned.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> HeaderFindings {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last, out);
        }
        if self.state == State::Headers {
            self.flush_field(out);
        }
        std::mem::take(&mut self.found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> std::sync::Arc<HeaderRules> {
        std::sync::Arc::new(HeaderRules {
            remove: vec!["X-Secret".into(), "Bcc".into()],
            env: vec![("X-Ticket".into(), Some(10)), ("Subject".into(), None)],
            log: vec!["Subject".into(), "Message-ID".into()],
        })
    }

    const MSG: &[u8] = b"From: a@b.test\nX-Secret: one\n two\n\tthree\nSubject: hello\n world\nX-Ticket: 12345\nX-Ticket-Long: x\nMessage-ID: <m1@b.test>\nbcc: c@d.test\n\nX-Secret: in body stays\nbody\n";
    const WANT: &[u8] = b"From: a@b.test\nSubject: hello\n world\nX-Ticket: 12345\nX-Ticket-Long: x\nMessage-ID: <m1@b.test>\n\nX-Secret: in body stays\nbody\n";

    #[test]
    fn every_split_gives_the_same_result() {
        let r = rules();
        for split in 0..MSG.len() {
            for split2 in split..MSG.len() {
                let mut p = HeaderProcessor::new(r.clone());
                let mut out = Vec::new();
                p.feed(&MSG[..split], &mut out);
                p.feed(&MSG[split..split2], &mut out);
                p.feed(&MSG[split2..], &mut out);
                let f = p.finish(&mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(WANT),
                    "split at {split}/{split2}"
                );
                assert_eq!(f.removed, 2);
                assert_eq!(
                    f.env,
                    vec![
                        ("SUBJECT".to_string(), "hello world".to_string()),
                        ("X_TICKET".to_string(), "12345".to_string()),
                        ("X_TICKET_LONG".to_string(), "x".to_string()),
                    ]
                );
                assert_eq!(
                    f.logged,
                    vec!["Subject: hello world", "Message-ID: <m1@b.test>"]
                );
                assert_eq!(f.message_id.as_deref(), Some("<m1@b.test>"));
            }
        }
    }

    #[test]
    fn envheaders_maxlen_is_respected() {
        let r = rules();
        let mut p = HeaderProcessor::new(r.clone());
        let mut out = Vec::new();
        p.feed(b"X-Ticket: 12345678901\n\nb\n", &mut out);
        assert!(p.finish(&mut out).env.is_empty());
    }

    #[test]
    fn headers_only_message_and_non_header_line() {
        let r = rules();
        let mut p = HeaderProcessor::new(r.clone());
        let mut out = Vec::new();
        p.feed(b"Subject: x\nBcc: y", &mut out);
        p.finish(&mut out);
        assert_eq!(out, b"Subject: x\n");
        let mut p = HeaderProcessor::new(r.clone());
        let mut out = Vec::new();
        p.feed(b"Subject: x\nnot a header\nBcc: y\n", &mut out);
        p.finish(&mut out);
        assert_eq!(out, b"Subject: x\nnot a header\nBcc: y\n");
    }

    #[test]
    fn huge_removed_field_is_dropped_without_holding_it() {
        let r = rules();
        let mut p = HeaderProcessor::new(r.clone());
        let mut out = Vec::new();
        p.feed(b"X-Secret: start\n", &mut out);
        let cont = vec![b'a'; 1000];
        for _ in 0..200 {
            p.feed(b" ", &mut out);
            p.feed(&cont, &mut out);
            p.feed(b"\n", &mut out);
            assert!(p.field.len() <= MAX_FIELD + 2000);
        }
        p.feed(b"Subject: s\n\nbody\n", &mut out);
        p.finish(&mut out);
        assert_eq!(out, b"Subject: s\n\nbody\n");
    }
}
