//! `bodycheck`: content rules applied to the message as it streams.
//!
//! Line format (IndiMail `bodycheck.c`): `regex:comment[:-header|-body]`, split at the last
//! colon (so the regex itself may contain colons when a comment follows). A line with no colon
//! is a bare regex whose comment is the regex. The scope suffix may carry `blackhole`
//! (`-headerblackhole`, `-bodyblackhole`, or just `blackhole`/`-blackhole` for both parts), as
//! the `signatures` file allows: a match then discards the message silently instead of
//! rejecting it. Regexes are extended, case-insensitive and unanchored, and `.` matches the
//! newline inside an unfolded header, as with POSIX `regcomp` without `REG_NEWLINE`.
//!
//! Header lines are checked unfolded (a continuation line is appended to the field it
//! continues); body lines one by one. Unlike qmail-smtpd, which re-checks the last header in
//! the body because it never refreshes its folded-line buffer, every body line is checked.
//! MIME part headers are body lines here. Lines are capped at [`MAX_LINE`] bytes (the original
//! caps at 1024): the rest of an over-long line is not scanned.

use std::sync::Arc;

use regex::bytes::{RegexSet, RegexSetBuilder};

use crate::control::ControlFile;
use crate::error::{PolicyError, PolicyErrorKind};
use crate::Verdict;

/// Longest line scanned, in bytes.
pub const MAX_LINE: usize = 1024;
/// Longest unfolded header field scanned, in bytes.
pub const MAX_FIELD: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Both,
    Header,
    Body,
}

#[derive(Debug)]
struct Rule {
    line: usize,
    comment: String,
    blackhole: bool,
}

/// Compiled `bodycheck` rules: one regex set for header lines, one for body lines.
#[derive(Debug)]
pub(crate) struct BodyRules {
    label: String,
    rules: Vec<Rule>,
    header: RegexSet,
    header_idx: Vec<usize>,
    body: RegexSet,
    body_idx: Vec<usize>,
}

/// Splits one line into (regex, comment, scope, blackhole).
fn split_rule(text: &str) -> (&str, &str, Scope, bool) {
    // A colon at position 0 is not a separator (the C loop stops before the first byte).
    let Some(last) = text.rfind(':').filter(|&i| i > 0) else {
        return (text, text, Scope::Both, false);
    };
    let tail = text[last + 1..].trim_start();
    let flag = match tail {
        "-header" => Some((Scope::Header, false)),
        "-body" => Some((Scope::Body, false)),
        "-headerblackhole" => Some((Scope::Header, true)),
        "-bodyblackhole" => Some((Scope::Body, true)),
        "blackhole" | "-blackhole" => Some((Scope::Both, true)),
        _ => None,
    };
    match flag {
        None => (&text[..last], &text[last + 1..], Scope::Both, false),
        Some((scope, bh)) => {
            let head = &text[..last];
            match head.rfind(':').filter(|&i| i > 0) {
                Some(prev) => (&head[..prev], &head[prev + 1..], scope, bh),
                None => (head, head, scope, bh),
            }
        }
    }
}

fn build(src: &[String]) -> Result<RegexSet, String> {
    RegexSetBuilder::new(src)
        .case_insensitive(true)
        .dot_matches_new_line(true)
        .size_limit(64 << 20)
        .build()
        .map_err(|e| e.to_string())
}

impl BodyRules {
    pub(crate) fn load(
        file: &ControlFile,
        errors: &mut Vec<PolicyError>,
    ) -> Option<Arc<BodyRules>> {
        if !file.exists() {
            return None;
        }
        let mut rules = Vec::new();
        let (mut hsrc, mut hidx, mut bsrc, mut bidx) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for l in file.lines() {
            let (re, comment, scope, blackhole) = split_rule(&l.text);
            // Compile alone first so a bad line is reported with its number.
            if let Err(e) = regex::bytes::RegexBuilder::new(re)
                .case_insensitive(true)
                .dot_matches_new_line(true)
                .build()
            {
                errors.push(file.error(
                    l.no,
                    PolicyErrorKind::Regex {
                        pattern: re.to_string(),
                        reason: e.to_string(),
                    },
                ));
                continue;
            }
            let i = rules.len();
            rules.push(Rule {
                line: l.no,
                comment: comment.to_string(),
                blackhole,
            });
            if scope != Scope::Body {
                hsrc.push(re.to_string());
                hidx.push(i);
            }
            if scope != Scope::Header {
                bsrc.push(re.to_string());
                bidx.push(i);
            }
        }
        match (build(&hsrc), build(&bsrc)) {
            (Ok(header), Ok(body)) => Some(Arc::new(BodyRules {
                label: file.label.clone(),
                rules,
                header,
                header_idx: hidx,
                body,
                body_idx: bidx,
            })),
            (Err(reason), _) | (_, Err(reason)) => {
                errors.push(PolicyError::new(
                    &file.path,
                    None,
                    PolicyErrorKind::Regex {
                        pattern: "(all rules together)".into(),
                        reason,
                    },
                ));
                None
            }
        }
    }
}

/// Streams a message through the `bodycheck` rules. Obtain one per message from
/// [`crate::Policy::body_scanner`]; feed the message bytes as stored (after dot-unstuffing,
/// CRLF or LF line ends) in chunks of any size, then call [`BodyScanner::finish`].
#[derive(Debug)]
pub struct BodyScanner {
    rules: Arc<BodyRules>,
    line: Vec<u8>,
    field: Vec<u8>,
    in_header: bool,
    hit: Option<usize>,
}

impl BodyScanner {
    pub(crate) fn new(rules: Arc<BodyRules>) -> BodyScanner {
        BodyScanner {
            rules,
            line: Vec::with_capacity(256),
            field: Vec::new(),
            in_header: true,
            hit: None,
        }
    }

    /// Scans `chunk`. Work stops at the first match; later calls return at once.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while self.hit.is_none() && !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    self.push(&chunk[..i]);
                    self.end_line();
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.push(chunk);
                    return;
                }
            }
        }
    }

    /// True once a rule has matched (the driver may stop feeding).
    pub fn matched(&self) -> bool {
        self.hit.is_some()
    }

    /// Scans any unterminated last line and gives the result: `Accept`, a
    /// `554 5.7.1 message content rejected` naming the rule's comment, or `Blackhole`.
    pub fn finish(&mut self) -> Verdict {
        if self.hit.is_none() && !self.line.is_empty() {
            self.end_line();
        }
        match self.hit {
            None => Verdict::Accept,
            Some(i) => {
                let r = &self.rules.rules[i];
                let rule = format!("{}:{}", self.rules.label, r.line);
                if r.blackhole {
                    Verdict::Blackhole { rule }
                } else {
                    Verdict::Reject {
                        code: 554,
                        enhanced: (5, 7, 1),
                        text: format!("message content rejected: {}", r.comment),
                        rule,
                    }
                }
            }
        }
    }

    fn push(&mut self, part: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let rules = &self.rules;
        if self.in_header {
            if self.line.is_empty() {
                self.in_header = false;
            } else {
                if matches!(self.line[0], b' ' | b'\t') && !self.field.is_empty() {
                    if self.field.len() < MAX_FIELD {
                        self.field.push(b'\n');
                        let room = MAX_FIELD - self.field.len();
                        self.field
                            .extend_from_slice(&self.line[..self.line.len().min(room)]);
                    }
                } else {
                    self.field.clear();
                    self.field.extend_from_slice(&self.line);
                }
                if let Some(i) = rules.header.matches(&self.field).iter().next() {
                    self.hit = Some(rules.header_idx[i]);
                }
            }
        } else if let Some(i) = rules.body.matches(&self.line).iter().next() {
            self.hit = Some(rules.body_idx[i]);
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_splitting() {
        assert_eq!(
            split_rule("viagra:no spam"),
            ("viagra", "no spam", Scope::Both, false)
        );
        assert_eq!(
            split_rule("viagra:no spam:-header"),
            ("viagra", "no spam", Scope::Header, false)
        );
        assert_eq!(split_rule("a:b:c:-body"), ("a:b", "c", Scope::Body, false));
        assert_eq!(
            split_rule("x:gone:-bodyblackhole"),
            ("x", "gone", Scope::Body, true)
        );
        assert_eq!(
            split_rule("x:gone:blackhole"),
            ("x", "gone", Scope::Both, true)
        );
        assert_eq!(split_rule("bare"), ("bare", "bare", Scope::Both, false));
        assert_eq!(
            split_rule("bare:-header"),
            ("bare", "bare", Scope::Header, false)
        );
    }
}
