//! Reading qmail control files the way `control_readfile()` does.
//!
//! A control file is a list of lines: trailing white space is stripped, empty lines and lines
//! whose first character is `#` are skipped. A missing file is not an error: it is an empty
//! list, exactly as qmail-smtpd treats it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{PolicyError, PolicyErrorKind};

/// One kept line of a control file with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) no: usize,
    pub(crate) text: String,
}

/// The lines of one control file, or `None` when it does not exist.
#[derive(Debug, Clone)]
pub(crate) struct ControlFile {
    pub(crate) path: PathBuf,
    /// Just the file name part, used in rule labels (`badmailfrom:12`).
    pub(crate) label: String,
    pub(crate) lines: Option<Vec<Line>>,
}

impl ControlFile {
    pub(crate) fn exists(&self) -> bool {
        self.lines.is_some()
    }

    pub(crate) fn lines(&self) -> &[Line] {
        self.lines.as_deref().unwrap_or(&[])
    }

    pub(crate) fn error(&self, line: usize, kind: PolicyErrorKind) -> PolicyError {
        PolicyError::new(&self.path, Some(line), kind)
    }

    /// `line` is not in the form `reason` says is expected.
    pub(crate) fn syntax_error(&self, line: &Line, reason: &'static str) -> PolicyError {
        self.error(
            line.no,
            PolicyErrorKind::Syntax {
                text: line.text.clone(),
                reason,
            },
        )
    }
}

/// Resolves a control file name as qmail does: absolute names are used as they are, relative
/// ones are looked up in the control directory.
pub(crate) fn resolve(control_dir: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        control_dir.join(p)
    }
}

/// Reads the table a `<list>.sql` file names: gets the file's path and text
/// (`server:user:password:database:table`), returns the table's `email` column, or why not.
pub type SqlFetch = dyn Fn(&Path, &str) -> Result<Vec<String>, String>;

/// Collects the files read and their modification times so the caller can reload on change.
#[derive(Default)]
pub(crate) struct Reader<'a> {
    pub(crate) sources: Vec<(PathBuf, Option<SystemTime>)>,
    pub(crate) errors: Vec<PolicyError>,
    /// How `.sql` list variants are read; `None`: they are load errors.
    pub(crate) sql: Option<&'a SqlFetch>,
    /// Some list had a `.sql` variant (its rows can change without any file changing).
    pub(crate) used_sql: bool,
}

impl Reader<'_> {
    /// Reads `path`. Every path asked for is recorded in `sources` (a missing one with `None`),
    /// so that creating a file that did not exist also triggers a reload.
    pub(crate) fn read(&mut self, path: PathBuf) -> ControlFile {
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        if !self.sources.iter().any(|(p, _)| *p == path) {
            let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            self.sources.push((path.clone(), mtime));
        }
        let lines = match control::read_lines(&path) {
            Ok(lines) => lines.map(|l| l.into_iter().map(|(no, text)| Line { no, text }).collect()),
            Err(e) => {
                self.errors.push(PolicyError::new(
                    &path,
                    None,
                    PolicyErrorKind::Io(e.to_string()),
                ));
                None
            }
        };
        ControlFile { path, label, lines }
    }

    /// Reads a list file (`badmailfrom`, `badrcptto`, ...): the text file, or when there is
    /// none, the keys of its compiled form `<name>.cdb` (as `qmail-cdb` writes it; keys are the
    /// lines, values unused), so a control directory that only keeps the `.cdb` works too.
    /// Its `<name>.sql` variant (IndiMail's sqlmatch: `server:user:password:database:table`)
    /// adds the rows of that table's `email` column, read at load.
    pub(crate) fn read_list(&mut self, path: PathBuf) -> ControlFile {
        let mut file = self.read_text_or_cdb(path.clone());
        let mut sql_path = path.into_os_string();
        sql_path.push(".sql");
        let sql = self.read(PathBuf::from(sql_path));
        let Some(config) = sql.lines.as_ref() else {
            return file;
        };
        self.used_sql = true;
        let config: Vec<&str> = config.iter().map(|l| l.text.as_str()).collect();
        let rows = match self.sql {
            Some(fetch) => fetch(&sql.path, &config.join("\n")),
            None => Err("this program cannot read .sql list variants".into()),
        };
        match rows {
            Ok(rows) => {
                let lines = file.lines.get_or_insert_with(Vec::new);
                lines.extend(rows.into_iter().map(|text| Line { no: 0, text }));
            }
            Err(e) => self
                .errors
                .push(PolicyError::new(&sql.path, None, PolicyErrorKind::Io(e))),
        }
        file
    }

    fn read_text_or_cdb(&mut self, path: PathBuf) -> ControlFile {
        let text = self.read(path.clone());
        if text.exists() {
            return text;
        }
        let mut cdb_path = path.into_os_string();
        cdb_path.push(".cdb");
        let cdb_path = PathBuf::from(cdb_path);
        let mtime = std::fs::metadata(&cdb_path).and_then(|m| m.modified()).ok();
        if !self.sources.iter().any(|(p, _)| *p == cdb_path) {
            self.sources.push((cdb_path.clone(), mtime));
        }
        if mtime.is_none() {
            return text;
        }
        let label = cdb_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lines = match cdb::CDB::open(&cdb_path) {
            Ok(db) => {
                let mut lines = Vec::new();
                for kv in db.iter() {
                    match kv {
                        Ok((key, _)) => lines.push(Line {
                            no: lines.len() + 1,
                            text: String::from_utf8_lossy(&key).trim().to_string(),
                        }),
                        Err(e) => {
                            self.errors.push(PolicyError::new(
                                &cdb_path,
                                None,
                                PolicyErrorKind::Io(format!("corrupt cdb: {e}")),
                            ));
                            break;
                        }
                    }
                }
                lines.retain(|l| !l.text.is_empty());
                Some(lines)
            }
            Err(e) => {
                self.errors.push(PolicyError::new(
                    &cdb_path,
                    None,
                    PolicyErrorKind::Io(e.to_string()),
                ));
                None
            }
        };
        ControlFile {
            path: cdb_path,
            label,
            lines,
        }
    }
}

/// A control file's text as [`Line`]s, by `control`'s rules (qmail's `control_readfile`).
pub(crate) fn split_lines(bytes: &[u8]) -> Vec<Line> {
    control::split_lines(bytes)
        .into_iter()
        .map(|(no, text)| Line { no, text })
        .collect()
}

/// Integer control (`qregex`): the first line, parsed like `scan_int` (leading sign and digits).
pub(crate) fn first_int(file: &ControlFile) -> Result<Option<i64>, PolicyError> {
    let Some(first) = file.lines().first() else {
        return Ok(None);
    };
    scan_int(&first.text)
        .map(Some)
        .ok_or_else(|| file.error(first.no, PolicyErrorKind::Number(first.text.clone())))
}

/// `scan_int`: optional sign then digits; trailing garbage ignored, no digits at all is `None`.
pub(crate) fn scan_int(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return None;
    }
    let v: i64 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_int_like_qmail() {
        assert_eq!(scan_int("1"), Some(1));
        assert_eq!(scan_int("-5x"), Some(-5));
        assert_eq!(scan_int("x"), None);
    }
}
