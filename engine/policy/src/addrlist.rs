//! Address lists (`badmailfrom`, `badrcptto`, `goodrcptto`, `blackholedsender`,
//! `blackholedrcpt`, `relaymailfrom`, `chkrcptdomains`, `badhelo`, `badip`) and their
//! `*patterns` companions, matched as IndiMail's `address_match()` does:
//!
//! * QREGEX off (wildmat mode): the lower-cased address, then its `@domain` part, is looked
//!   up in the list's exact entries (a hash set: O(1) however long the list). Failing that the
//!   `*patterns` file is evaluated if it exists, otherwise the list's own lines that contain
//!   wildcards; in both the last matching line decides, a line starting with `!` meaning
//!   "does not match".
//! * QREGEX on: every list line is an extended regex searched anywhere in the address
//!   (`@domain` lines become `.*@domain`), a `!` line counts as a match when its regex does
//!   *not* match, and the `*patterns` file is not used (as documented: "disabled when QREGEX
//!   set"). Positive regexes are combined in one `RegexSet` so a long list is one scan.

use std::collections::HashMap;
use std::sync::Arc;

use regex::{Regex, RegexSet, RegexSetBuilder};

use crate::control::ControlFile;
use crate::error::{PolicyError, PolicyErrorKind};
use crate::pattern;
use crate::wildmat::{has_wildcards, Wild};

#[derive(Debug)]
struct WildPat {
    negate: bool,
    pat: Wild,
    line: usize,
}

#[derive(Debug)]
enum Positives {
    Set(RegexSet, Vec<usize>),
    Each(Vec<(Regex, usize)>),
}

#[derive(Debug)]
struct RegexList {
    positives: Positives,
    negated: Vec<(Regex, usize)>,
}

/// One list file, compiled.
#[derive(Debug)]
pub(crate) struct ListFile {
    label: String,
    exact: HashMap<String, usize>,
    wild: Vec<WildPat>,
    regex: Option<RegexList>,
}

/// One `*patterns` file (wildmat only).
#[derive(Debug)]
pub(crate) struct PatFile {
    label: String,
    pats: Vec<WildPat>,
}

/// A list and its patterns file as one check.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddrRule {
    pub(crate) list: Option<Arc<ListFile>>,
    pub(crate) pats: Option<Arc<PatFile>>,
}

fn wild_line(text: &str, line: usize) -> WildPat {
    let (negate, body) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    WildPat {
        negate,
        pat: Wild::new(body),
        line,
    }
}

impl ListFile {
    /// Compiles a list file; `None` when it does not exist. Bad regexes are reported and left out.
    pub(crate) fn load(
        file: &ControlFile,
        qregex: bool,
        errors: &mut Vec<PolicyError>,
    ) -> Option<Arc<ListFile>> {
        if !file.exists() {
            return None;
        }
        let mut exact = HashMap::new();
        let mut wild = Vec::new();
        let mut regex = None;
        if qregex {
            let mut pos_src = Vec::new();
            let mut pos_each = Vec::new();
            let mut negated = Vec::new();
            for l in file.lines() {
                let (negate, body) = match l.text.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, l.text.as_str()),
                };
                let src = if body.starts_with('@') {
                    format!(".*{body}")
                } else {
                    body.to_string()
                };
                match pattern::regex(&src) {
                    Ok(r) if negate => negated.push((r, l.no)),
                    Ok(r) => {
                        pos_src.push((src, l.no));
                        pos_each.push((r, l.no));
                    }
                    Err(reason) => errors.push(file.error(
                        l.no,
                        PolicyErrorKind::Regex {
                            pattern: l.text.clone(),
                            reason,
                        },
                    )),
                }
            }
            let positives = match RegexSetBuilder::new(pos_src.iter().map(|(s, _)| s))
                .case_insensitive(true)
                .dot_matches_new_line(true)
                .size_limit(256 << 20)
                .build()
            {
                Ok(set) => Positives::Set(set, pos_src.iter().map(|(_, n)| *n).collect()),
                // Too big for one automaton: fall back to testing them one by one.
                Err(_) => Positives::Each(pos_each),
            };
            regex = Some(RegexList { positives, negated });
        } else {
            for l in file.lines() {
                if l.text.starts_with('!') || has_wildcards(&l.text) {
                    wild.push(wild_line(&l.text, l.no));
                } else {
                    exact.entry(l.text.to_ascii_lowercase()).or_insert(l.no);
                }
            }
        }
        Some(Arc::new(ListFile {
            label: file.label.clone(),
            exact,
            wild,
            regex,
        }))
    }
}

impl PatFile {
    pub(crate) fn load(file: &ControlFile) -> Option<Arc<PatFile>> {
        if !file.exists() {
            return None;
        }
        let pats = file
            .lines()
            .iter()
            .map(|l| wild_line(&l.text, l.no))
            .collect();
        Some(Arc::new(PatFile {
            label: file.label.clone(),
            pats,
        }))
    }
}

/// Last-matching-line-wins evaluation of `!`-capable wildmat lines (qregex.c `wildmat_match`).
fn eval_wild(pats: &[WildPat], lower: &str) -> Option<usize> {
    let mut hit: Option<usize> = None;
    for p in pats {
        let sub = !p.negate;
        if hit.is_some() != sub && p.pat.matches(lower.as_bytes()) {
            hit = if sub { Some(p.line) } else { None };
        }
    }
    hit
}

impl AddrRule {
    /// True when neither file exists (nothing can match).
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_none() && self.pats.is_none()
    }

    /// Returns the matching rule as `file:line`, or `None`. `lower` must be lower-case.
    pub(crate) fn matches(&self, lower: &str) -> Option<String> {
        if let Some(list) = &self.list {
            if let Some(rx) = &list.regex {
                let pos = match &rx.positives {
                    Positives::Set(set, lines) => {
                        set.matches(lower).iter().next().map(|i| lines[i])
                    }
                    Positives::Each(v) => {
                        v.iter().find(|(r, _)| r.is_match(lower)).map(|(_, n)| *n)
                    }
                };
                if let Some(n) = pos {
                    return Some(format!("{}:{}", list.label, n));
                }
                return rx
                    .negated
                    .iter()
                    .find(|(r, _)| !r.is_match(lower))
                    .map(|(_, n)| format!("{}:{}", list.label, n));
            }
            if let Some(n) = list.exact.get(lower) {
                return Some(format!("{}:{}", list.label, n));
            }
            if let Some(at) = lower.rfind('@') {
                if let Some(n) = list.exact.get(&lower[at..]) {
                    return Some(format!("{}:{}", list.label, n));
                }
            }
        }
        if let Some(p) = &self.pats {
            // A list in regex mode returned above; here QREGEX is off.
            return eval_wild(&p.pats, lower).map(|n| format!("{}:{}", p.label, n));
        }
        let list = self.list.as_ref()?;
        eval_wild(&list.wild, lower).map(|n| format!("{}:{}", list.label, n))
    }
}
