//! One pattern as `do_match()` applies it: POSIX-style extended regex (case-insensitive,
//! unanchored, as `regcomp(REG_EXTENDED|REG_ICASE)` + `regexec`) when QREGEX is on, otherwise
//! a wildmat pattern that must match the whole text.

use regex::{Regex, RegexBuilder};

use crate::wildmat::Wild;

/// A compiled pattern. Text handed to [`Pattern::matches`] must already be lower-case.
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    Wild(Wild),
    Regex(Regex),
}

impl Pattern {
    /// Compiles `text` in the mode QREGEX selects. Only regexes can fail.
    pub(crate) fn compile(text: &str, qregex: bool) -> Result<Pattern, String> {
        if qregex {
            regex(text).map(Pattern::Regex)
        } else {
            Ok(Pattern::Wild(Wild::new(text)))
        }
    }

    pub(crate) fn matches(&self, lower: &str) -> bool {
        match self {
            Pattern::Wild(p) => p.matches(lower.as_bytes()),
            Pattern::Regex(r) => r.is_match(lower),
        }
    }
}

/// Builds a case-insensitive regex. Size limits are raised a little above the crate default
/// because operators' qregex lists contain long alternations.
pub(crate) fn regex(text: &str) -> Result<Regex, String> {
    RegexBuilder::new(text)
        .case_insensitive(true)
        .dot_matches_new_line(true)
        .size_limit(32 << 20)
        .build()
        .map_err(|e| e.to_string())
}
