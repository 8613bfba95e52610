//! `accesslist` (IndiMail `mail_acl()`):
//!
//! * `rcpt:<sender-pat>:<rcpt-pat>` — a recipient matching `rcpt-pat` may receive only from
//!   senders matching one of its rules' `sender-pat`;
//! * `from:<sender-pat>:<rcpt-pat>` — a sender matching `sender-pat` may mail only recipients
//!   matching one of its rules' `rcpt-pat`.
//!
//! Patterns match exactly (case-insensitively), or as wildmat / regex per QREGEX. The null
//! sender, `#@[]`, and recipients `postmaster[@...]` / `abuse[@...]` are never refused. The
//! two passes follow the original's order exactly: the recipient pass can allow outright
//! (skipping the sender pass) once a `rcpt:` rule has claimed the recipient.

use std::collections::HashMap;

use crate::control::ControlFile;
use crate::error::{PolicyError, PolicyErrorKind};
use crate::pattern::Pattern;
use crate::wildmat::has_wildcards;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Kind {
    From,
    Rcpt,
}

#[derive(Debug)]
struct Rule {
    line: usize,
    kind: Kind,
    sender: (String, Pattern),
    rcpt: (String, Pattern),
}

/// Rule numbers whose pattern on one side could match a given text: literal patterns by hash
/// lookup, the rest (wildcards, regexes) always. Both lists are in file order.
#[derive(Debug, Default)]
struct Index {
    exact: HashMap<String, Vec<usize>>,
    wild: Vec<usize>,
}

impl Index {
    fn add(&mut self, i: usize, pattern: &str, literal: bool) {
        if literal {
            self.exact.entry(pattern.to_string()).or_default().push(i);
        } else {
            self.wild.push(i);
        }
    }

    /// Candidate rule numbers for `text`, in file order (a merge of the two sorted lists).
    fn candidates<'a>(&'a self, text: &str) -> impl Iterator<Item = usize> + 'a {
        let mut a = self
            .exact
            .get(text)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .copied()
            .peekable();
        let mut b = self.wild.iter().copied().peekable();
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(&x), Some(&y)) if x < y => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        })
    }
}

/// Compiled `accesslist`. Literal patterns are indexed, so only wildcard and regex rules are
/// tested one by one.
#[derive(Debug, Default)]
pub(crate) struct AccessList {
    label: String,
    rules: Vec<Rule>,
    by_rcpt: Index,
    by_sender: Index,
}

fn hit(p: &(String, Pattern), lower: &str) -> bool {
    p.0 == lower || p.1.matches(lower)
}

impl AccessList {
    pub(crate) fn load(
        file: &ControlFile,
        qregex: bool,
        errors: &mut Vec<PolicyError>,
    ) -> AccessList {
        let mut rules = Vec::new();
        for l in file.lines() {
            let syntax = |reason| file.syntax_error(l, reason);
            let (kind, rest) = if let Some(r) = l.text.strip_prefix("from:") {
                (Kind::From, r)
            } else if let Some(r) = l.text.strip_prefix("rcpt:") {
                (Kind::Rcpt, r)
            } else {
                errors.push(syntax(
                    "expected from:<sender>:<rcpt> or rcpt:<sender>:<rcpt>",
                ));
                continue;
            };
            let Some((s, r)) = rest.split_once(':') else {
                errors.push(syntax("missing the :<rcpt-pattern> field"));
                continue;
            };
            let compile = |p: &str| {
                Pattern::compile(p, qregex)
                    .map(|c| (p.to_ascii_lowercase(), c))
                    .map_err(|reason| {
                        file.error(
                            l.no,
                            PolicyErrorKind::Regex {
                                pattern: p.to_string(),
                                reason,
                            },
                        )
                    })
            };
            match (compile(s), compile(r)) {
                (Ok(sender), Ok(rcpt)) => rules.push(Rule {
                    line: l.no,
                    kind,
                    sender,
                    rcpt,
                }),
                (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
            }
        }
        let (mut by_rcpt, mut by_sender) = (Index::default(), Index::default());
        for (i, r) in rules.iter().enumerate() {
            by_rcpt.add(i, &r.rcpt.0, !qregex && !has_wildcards(&r.rcpt.0));
            by_sender.add(i, &r.sender.0, !qregex && !has_wildcards(&r.sender.0));
        }
        AccessList {
            label: file.label.clone(),
            rules,
            by_rcpt,
            by_sender,
        }
    }

    /// `None` = allowed, `Some(rule)` = denied (the rule that claimed the sender or recipient).
    /// Both arguments lower-case.
    pub(crate) fn check(&self, sender: &str, rcpt: &str) -> Option<String> {
        if self.rules.is_empty() || sender.is_empty() || sender == "#@[]" {
            return None;
        }
        let exempt = |name: &str| {
            rcpt == name || rcpt.strip_prefix(name).is_some_and(|r| r.starts_with('@'))
        };
        if exempt("postmaster") || exempt("abuse") {
            return None;
        }
        let mut rcpt_reject: Option<usize> = None;
        for r in self.by_rcpt.candidates(rcpt).map(|i| &self.rules[i]) {
            if !hit(&r.rcpt, rcpt) {
                continue;
            }
            if r.kind == Kind::Rcpt && rcpt_reject.is_none() {
                rcpt_reject = Some(r.line);
            }
            if rcpt_reject.is_some() && hit(&r.sender, sender) {
                return None;
            }
        }
        let mut from_reject: Option<usize> = None;
        for r in self.by_sender.candidates(sender).map(|i| &self.rules[i]) {
            if !hit(&r.sender, sender) {
                continue;
            }
            if r.kind == Kind::From && from_reject.is_none() {
                from_reject = Some(r.line);
            }
            if from_reject.is_some() && hit(&r.rcpt, rcpt) {
                return None;
            }
        }
        rcpt_reject
            .or(from_reject)
            .map(|n| format!("{}:{}", self.label, n))
    }
}
