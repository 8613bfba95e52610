//! qmail-style control files: where they live and how they are read.
//!
//! A control file holds one value on its first line (`me`, `databytes`) or
//! a list, one entry per line (`rcpthosts`). Leading and trailing white
//! space is ignored, as are blank lines and lines starting with `#`, like
//! qmail's `control_readfile`. A missing file means "use the documented
//! default"; an unreadable one is an error naming it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Reads a control file as qmail's `control_readfile` does: its lines with their 1-based
/// numbers, trailing white space (space, tab, CR) stripped, empty lines and lines starting
/// with `#` left out; leading white space is kept (a `bodycheck` pattern may start with it).
/// `None` when the file does not exist. Every reader of control files goes through here.
pub fn read_lines(path: &Path) -> io::Result<Option<Vec<(usize, String)>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(split_lines(&bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// [`read_lines`] for files of values (`me`, `databytes`, lists of names): each line also
/// trimmed at the start, and lines left empty or starting with `#` then dropped.
pub fn read_values(path: &Path) -> io::Result<Option<Vec<(usize, String)>>> {
    Ok(read_lines(path)?.map(|lines| {
        lines
            .into_iter()
            .map(|(n, l)| (n, l.trim().to_string()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }))
}

/// [`read_lines`] of a file's bytes.
pub fn split_lines(bytes: &[u8]) -> Vec<(usize, String)> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .enumerate()
        .map(|(i, raw)| (i + 1, raw.trim_end_matches([' ', '\t', '\r'])))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.to_string()))
        .collect()
}

/// An error in one control file, naming the file and, where known, the line.
#[derive(Debug)]
pub struct ControlError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number, when the problem is on a line.
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.path.display(), l, self.problem),
            None => write!(f, "{}: {}", self.path.display(), self.problem),
        }
    }
}

impl std::error::Error for ControlError {}

/// The control directory.
#[derive(Debug, Clone)]
pub struct ControlDir {
    dir: PathBuf,
}

impl ControlDir {
    /// The control directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ControlDir {
        ControlDir { dir: dir.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of control file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The meaningful lines of `name` with their line numbers, or `None`
    /// when the file does not exist.
    pub fn lines(&self, name: &str) -> Result<Option<Vec<(usize, String)>>, ControlError> {
        let path = self.file(name);
        read_values(&path).map_err(|e| ControlError {
            path,
            line: None,
            problem: format!("cannot read: {e}"),
        })
    }

    /// The list in `name` (empty when missing).
    pub fn list(&self, name: &str) -> Result<Vec<String>, ControlError> {
        Ok(self
            .lines(name)?
            .unwrap_or_default()
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// The list in `name`, or when that file is missing, the keys of its
    /// compiled form `name.cdb` (IndiMail keeps `morercpthosts.cdb`).
    pub fn list_or_cdb(&self, name: &str) -> Result<Vec<String>, ControlError> {
        if self.lines(name)?.is_some() {
            return self.list(name);
        }
        let path = self.file(&format!("{name}.cdb"));
        if !path.exists() {
            return Ok(Vec::new());
        }
        let bad = |e: std::io::Error| ControlError {
            path: path.clone(),
            line: None,
            problem: format!("cannot read: {e}"),
        };
        let db = cdb::CDB::open(&path).map_err(bad)?;
        let mut out = Vec::new();
        for kv in db.iter() {
            let (key, _) = kv.map_err(bad)?;
            let key = String::from_utf8_lossy(&key).trim().to_string();
            if !key.is_empty() {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// The first meaningful line of `name`, if the file exists and has one.
    pub fn string(&self, name: &str) -> Result<Option<String>, ControlError> {
        Ok(self
            .lines(name)?
            .and_then(|v| v.into_iter().next())
            .map(|(_, l)| l))
    }

    /// The number on the first line of `name`, or `default` when missing.
    pub fn number<T>(&self, name: &str, default: T) -> Result<T, ControlError>
    where
        T: std::str::FromStr,
    {
        match self.lines(name)?.and_then(|v| v.into_iter().next()) {
            None => Ok(default),
            Some((line, text)) => text.parse().map_err(|_| ControlError {
                path: self.file(name),
                line: Some(line),
                problem: format!("`{text}` is not a valid number"),
            }),
        }
    }

    /// Writes `content` to `name` unless the file exists (never overwrites
    /// an operator's file). Returns whether it wrote.
    pub fn create_default(&self, name: &str, content: &str) -> io::Result<bool> {
        let path = self.file(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(content.as_bytes())?;
                f.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A domain list with qmail's matching: `example.com` matches that domain,
/// `.example.com` matches any subdomain of it. Case-insensitive.
#[derive(Debug, Clone, Default)]
pub struct DomainList {
    exact: std::collections::HashSet<String>,
    suffixes: Vec<String>,
}

impl DomainList {
    /// Builds from entries as written in `rcpthosts`.
    pub fn new<I: IntoIterator<Item = String>>(entries: I) -> DomainList {
        let mut l = DomainList::default();
        for e in entries {
            let e = e.to_ascii_lowercase();
            if e.starts_with('.') {
                l.suffixes.push(e);
            } else {
                l.exact.insert(e);
            }
        }
        l
    }

    /// Whether `domain` is listed.
    pub fn contains(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        self.exact.contains(&d) || self.suffixes.iter().any(|s| d.ends_with(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_control_readfile() {
        let l = split_lines(b"# comment\n\nfoo@bar  \n\t\n@baz\r\n  lead\nlast");
        let want = [(3, "foo@bar"), (5, "@baz"), (6, "  lead"), (7, "last")];
        let want: Vec<(usize, String)> = want.iter().map(|(n, t)| (*n, t.to_string())).collect();
        assert_eq!(l, want);
    }

    #[test]
    fn reads_lists_numbers_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = ControlDir::new(dir.path());
        std::fs::write(
            c.file("rcpthosts"),
            "# comment\nexample.com\n\n .sub.org \n",
        )
        .unwrap();
        std::fs::write(c.file("databytes"), "1000\n").unwrap();
        std::fs::write(c.file("timeoutsmtpd"), "soon\n").unwrap();
        assert_eq!(
            c.list("rcpthosts").unwrap(),
            vec!["example.com", ".sub.org"]
        );
        assert_eq!(c.number("databytes", 0u64).unwrap(), 1000);
        assert_eq!(c.number("missing", 7u64).unwrap(), 7);
        let e = c.number("timeoutsmtpd", 1200u64).unwrap_err();
        assert!(e
            .to_string()
            .ends_with("timeoutsmtpd:1: `soon` is not a valid number"));
        assert!(c.create_default("me", "a.example\n").unwrap());
        assert!(!c.create_default("me", "b.example\n").unwrap());
        assert_eq!(c.string("me").unwrap().as_deref(), Some("a.example"));
    }

    #[test]
    fn domain_matching() {
        let l = DomainList::new(["Example.com".to_string(), ".sub.org".to_string()]);
        assert!(l.contains("example.COM"));
        assert!(l.contains("a.sub.org"));
        assert!(!l.contains("sub.org"));
        assert!(!l.contains("other.com"));
    }
}
