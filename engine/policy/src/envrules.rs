//! `from.envrules` / `auth.envrules` / `domainqueue`: `pattern:VAR=val,VAR2=,...`.
//!
//! Every line whose pattern matches is applied in file order, so later lines win. `VAR=` (empty
//! value) unsets the variable; `\,` puts a literal comma in a value; leading blanks before a
//! name are skipped. An empty pattern or `<>` matches the null sender (and only it).

use crate::control::ControlFile;
use crate::error::{PolicyError, PolicyErrorKind};
use crate::pattern::Pattern;

/// One variable assignment: `Some(value)` sets, `None` unsets.
pub type EnvAssign = (String, Option<String>);

#[derive(Debug)]
struct Rule {
    line: usize,
    null: bool,
    pattern: Option<Pattern>,
    assigns: Vec<EnvAssign>,
}

/// A compiled rules file.
#[derive(Debug, Default)]
pub(crate) struct EnvRules {
    label: String,
    path: std::path::PathBuf,
    rules: Vec<Rule>,
}

/// Splits `VAR=val,VAR2=,...` as IndiMail's `parse_env()`.
pub(crate) fn parse_assignments(s: &str) -> Result<Vec<EnvAssign>, &'static str> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&',') {
            cur.push(',');
            chars.next();
        } else if c == ',' {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    let mut out: Vec<EnvAssign> = Vec::new();
    for item in items {
        let item = item.trim_start();
        if item.is_empty() {
            continue;
        }
        let Some((name, value)) = item.split_once('=') else {
            return Err("expected VAR=value or VAR= in the assignment list");
        };
        if name.is_empty() {
            return Err("empty variable name");
        }
        let value = if value.is_empty() {
            None
        } else {
            Some(value.to_string())
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// Applies `new` on top of `env`, later assignments replacing earlier ones of the same name
/// (as successive lines set the environment in IndiMail).
pub fn merge(env: &mut Vec<EnvAssign>, new: &[EnvAssign]) {
    for (k, v) in new {
        match env.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
}

impl EnvRules {
    /// Compiles a rules file. `qregex` selects regex or wildmat patterns (domainqueue always
    /// uses wildmat, as in IndiMail).
    pub(crate) fn load(
        file: &ControlFile,
        qregex: bool,
        errors: &mut Vec<PolicyError>,
    ) -> EnvRules {
        let mut rules = Vec::new();
        for l in file.lines() {
            let Some((pat, assigns)) = l.text.split_once(':') else {
                errors.push(file.syntax_error(l, "expected pattern:VAR=value,..."));
                continue;
            };
            let assigns = match parse_assignments(assigns) {
                Ok(a) => a,
                Err(reason) => {
                    errors.push(file.syntax_error(l, reason));
                    continue;
                }
            };
            let null = pat.is_empty() || pat == "<>";
            let pattern = if null {
                None
            } else {
                match Pattern::compile(pat, qregex) {
                    Ok(p) => Some(p),
                    Err(reason) => {
                        errors.push(file.error(
                            l.no,
                            PolicyErrorKind::Regex {
                                pattern: pat.to_string(),
                                reason,
                            },
                        ));
                        continue;
                    }
                }
            };
            rules.push(Rule {
                line: l.no,
                null,
                pattern,
                assigns,
            });
        }
        EnvRules {
            label: file.label.clone(),
            path: file.path.clone(),
            rules,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The file the rules were read from.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Each rule's line number and assignments, in file order.
    pub(crate) fn lines(&self) -> impl Iterator<Item = (usize, &[EnvAssign])> {
        self.rules.iter().map(|r| (r.line, r.assigns.as_slice()))
    }

    /// All assignments any rule could make (used to find files the rules may switch to).
    pub(crate) fn all_assignments(&self) -> impl Iterator<Item = (usize, &EnvAssign)> {
        self.rules
            .iter()
            .flat_map(|r| r.assigns.iter().map(move |a| (r.line, a)))
    }

    /// Applies every matching rule to `text` (lower-case; empty = null sender). Returns the
    /// merged assignments and the `file:line` labels of the rules that matched.
    pub(crate) fn apply(&self, lower: &str) -> (Vec<EnvAssign>, Vec<String>) {
        let mut env = Vec::new();
        let mut hits = Vec::new();
        for r in &self.rules {
            let hit = if r.null {
                lower.is_empty()
            } else {
                r.pattern.as_ref().is_some_and(|p| p.matches(lower))
            };
            if hit {
                merge(&mut env, &r.assigns);
                hits.push(format!("{}:{}", self.label, r.line));
            }
        }
        (env, hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_env_like_indimail() {
        assert_eq!(
            parse_assignments("DATABYTES=1000, NODNSCHECK=,X=a\\,b").unwrap(),
            vec![
                ("DATABYTES".into(), Some("1000".into())),
                ("NODNSCHECK".into(), None),
                ("X".into(), Some("a,b".into())),
            ]
        );
        assert!(parse_assignments("JUNK").is_err());
        assert_eq!(
            parse_assignments("Q=a=b").unwrap(),
            vec![("Q".into(), Some("a=b".into()))]
        );
    }

    #[test]
    fn merge_later_wins() {
        let mut env = vec![("A".to_string(), Some("1".to_string()))];
        merge(
            &mut env,
            &[("A".into(), None), ("B".into(), Some("2".into()))],
        );
        assert_eq!(
            env,
            vec![("A".into(), None), ("B".into(), Some("2".into()))]
        );
    }
}
