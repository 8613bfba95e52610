//! Shell-style pattern matching as IndiMail's `wildmat_internal()` (Rich Salz's wildmat):
//! `*` any run, `?` any one byte, `[...]` a class (`[^...]` negated, `a-z` ranges, `]` or `-`
//! first taken literally), `\x` the literal `x`. The whole text must match.
//!
//! Case: qmail lower-cases the address before matching but not the pattern; IndiMail's
//! documentation calls the lists case-insensitive, so both sides are lower-cased here
//! (patterns once at load time, the text per check).

#[derive(PartialEq, Eq, Clone, Copy)]
enum M {
    True,
    False,
    Abort,
}

/// True when `text` matches `pattern` (both compared byte for byte; lower-case them first for
/// case-insensitive matching).
pub(crate) fn wildmat(text: &[u8], pattern: &[u8]) -> bool {
    do_match(text, pattern) == M::True
}

/// True when the pattern uses any wildcard syntax (otherwise it can only match itself, and an
/// exact-set lookup gives the same answer).
pub(crate) fn has_wildcards(pattern: &str) -> bool {
    pattern
        .bytes()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

fn do_match(text: &[u8], p: &[u8]) -> M {
    let (mut t, mut i) = (0usize, 0usize);
    while i < p.len() {
        if t >= text.len() && p[i] != b'*' {
            return M::Abort;
        }
        match p[i] {
            b'\\' => {
                i += 1;
                // A trailing backslash matches a literal backslash.
                let want = p.get(i).copied().unwrap_or(b'\\');
                if text[t] != want {
                    return M::False;
                }
            }
            b'?' => {}
            b'*' => {
                while i + 1 < p.len() && p[i + 1] == b'*' {
                    i += 1;
                }
                if i + 1 == p.len() {
                    return M::True;
                }
                // The "ABORT" trick: once a star loop is entered, a failure below it is final,
                // which keeps patterns like `*a*b*c*d` linear-ish instead of exponential.
                while t < text.len() {
                    let r = do_match(&text[t..], &p[i + 1..]);
                    if r != M::False {
                        return r;
                    }
                    t += 1;
                }
                return M::Abort;
            }
            b'[' => {
                let c = text[t];
                let mut j = i + 1;
                let reverse = p.get(j) == Some(&b'^');
                if reverse {
                    j += 1;
                }
                let mut matched = false;
                // `]` or `-` right after the opening bracket are literal members.
                if matches!(p.get(j), Some(b']') | Some(b'-')) {
                    if p[j] == c {
                        matched = true;
                    }
                    j += 1;
                }
                let mut last: Option<u8> = if j > i + 1 { Some(p[j - 1]) } else { None };
                while j < p.len() && p[j] != b']' {
                    if p[j] == b'-' && j + 1 < p.len() && p[j + 1] != b']' {
                        let lo = last.unwrap_or(0);
                        let hi = p[j + 1];
                        if c >= lo && c <= hi {
                            matched = true;
                        }
                        j += 1;
                        last = Some(hi);
                    } else {
                        if p[j] == c {
                            matched = true;
                        }
                        last = Some(p[j]);
                    }
                    j += 1;
                }
                if matched == reverse {
                    return M::False;
                }
                // `j` is on the closing bracket (or past the end of a malformed class).
                i = j.min(p.len().saturating_sub(1));
                if j >= p.len() {
                    // Unterminated class: what was consumed matched; the pattern is over.
                    t += 1;
                    return if t == text.len() { M::True } else { M::False };
                }
            }
            other => {
                if text[t] != other {
                    return M::False;
                }
            }
        }
        i += 1;
        t += 1;
    }
    if t == text.len() {
        M::True
    } else {
        M::False
    }
}

#[cfg(test)]
mod tests {
    use super::wildmat;

    fn w(t: &str, p: &str) -> bool {
        wildmat(t.as_bytes(), p.as_bytes())
    }

    #[test]
    fn stars_and_questions() {
        assert!(w("spam@example.com", "*@example.com"));
        assert!(w("spam@example.com", "*"));
        assert!(!w("spam@example.org", "*@example.com"));
        assert!(w("a1@x", "a?@x"));
        assert!(!w("a@x", "a?@x"));
        assert!(w("abcxd", "*a*b*c*d"));
        assert!(!w("abcxxxxx", "*a*b*c*d"));
        assert!(w("", "*"));
        assert!(!w("", "?"));
    }

    #[test]
    fn classes() {
        assert!(w("192.168.3.45", "192.168.[3-4].45"));
        assert!(w("192.168.4.45", "192.168.[3-4].45"));
        assert!(!w("192.168.5.45", "192.168.[3-4].45"));
        assert!(w("x5", "x[^a-z]"));
        assert!(!w("xq", "x[^a-z]"));
        assert!(w("a]", "a[]]"));
        assert!(w("a-", "a[-x]"));
        // Malformed classes must neither panic nor match wildly.
        let _ = w("ab", "a[b-");
        let _ = w("a", "a[");
        assert!(w("ab", "a[b"));
    }

    #[test]
    fn escapes() {
        assert!(w("a*b", "a\\*b"));
        assert!(!w("axb", "a\\*b"));
        assert!(w("a\\", "a\\"));
    }
}

/// A wildmat pattern with its literal prefix and suffix precomputed: most texts fail one of
/// those byte comparisons, so a long list of patterns costs little more than a loop of
/// `starts_with`/`ends_with` before any real matching.
#[derive(Debug, Clone)]
pub(crate) struct Wild {
    pat: Box<[u8]>,
    pre: usize,
    suf: usize,
}

impl Wild {
    /// Compiles a pattern, lower-casing it.
    pub(crate) fn new(pattern: &str) -> Wild {
        let pat: Box<[u8]> = pattern.to_ascii_lowercase().into_bytes().into();
        let is_meta = |b: &u8| matches!(b, b'*' | b'?' | b'[' | b'\\');
        let pre = pat.iter().position(is_meta).unwrap_or(pat.len());
        let suf = if pre == pat.len() {
            0
        } else {
            // After the last metacharacter (or class end) everything is literal.
            let last = pat
                .iter()
                .rposition(|b| is_meta(b) || *b == b']')
                .unwrap_or(0);
            pat.len() - last - 1
        };
        Wild { pat, pre, suf }
    }

    /// True when `text` (lower-case) matches.
    pub(crate) fn matches(&self, text: &[u8]) -> bool {
        if self.pre == self.pat.len() {
            return text == &*self.pat;
        }
        text.len() >= self.pre + self.suf
            && text.starts_with(&self.pat[..self.pre])
            && text.ends_with(&self.pat[self.pat.len() - self.suf..])
            && wildmat(text, &self.pat)
    }
}

#[cfg(test)]
mod wild_tests {
    use super::{wildmat, Wild};

    #[test]
    fn prefilter_agrees_with_wildmat() {
        let pats = [
            "*@x.example",
            "vendor@*",
            "a?b*c[d-f]g",
            "a[bc]d",
            "a\\*b",
            "plain",
            "*",
            "x]y*z",
            "[",
            "a[b",
        ];
        let texts = [
            "v@x.example",
            "vendor@q",
            "azbqqcdg",
            "abd",
            "a*b",
            "plain",
            "",
            "x]yqz",
            "[",
            "ab",
            "a]",
            "Plain",
        ];
        for p in pats {
            let w = Wild::new(p);
            for t in texts {
                let t = t.to_ascii_lowercase();
                assert_eq!(
                    w.matches(t.as_bytes()),
                    wildmat(t.as_bytes(), p.to_ascii_lowercase().as_bytes()),
                    "{p} {t}"
                );
            }
        }
    }
}
