//! Dot-qmail files (`dot-qmail(5)`): the delivery instructions in a user's
//! `.qmail`, `.qmail-ext` and `.qmail-default` files, valias rows and the
//! alias user's `.qmail-postmaster`. Sans-I/O: lines in, [`Instruction`]s
//! out, and which file names apply to an extension ([`file_names`]).
//! Reading the files is the local delivery's job (`local` depends on this
//! module, never the reverse).
//!
//! A line's first character decides what it is, as in qmail-local: `#`
//! comment, `|` program, `/` or `.` a file (a Maildir when it ends with
//! `/`, else an mbox), `&` a forward, anything else a forward too. Blank
//! lines are skipped.

use std::fmt;
use std::path::{Path, PathBuf};

/// One delivery instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `|command`: run with `/bin/sh -c` (qmail-command(8)).
    Program(String),
    /// `/path/` or `./path/`: a Maildir.
    Maildir(PathBuf),
    /// `/path` or `./path`: an mbox file.
    Mbox(PathBuf),
    /// `&address` or a bare address.
    Forward(String),
}

/// Why a line cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses one line relative to `home` (`./` paths); comments and blank
/// lines give `Ok(None)`.
pub fn parse_line(line: &str, home: &Path) -> Result<Option<Instruction>, &'static str> {
    let line = line.trim_end_matches(['\r', '\n']);
    let Some(first) = line.chars().next() else {
        return Ok(None);
    };
    match first {
        '#' => Ok(None),
        '|' => {
            let cmd = &line[1..];
            if cmd.trim().is_empty() {
                return Err("a program line names no program");
            }
            Ok(Some(Instruction::Program(cmd.to_string())))
        }
        '.' | '/' => {
            let path = if let Some(rest) = line.strip_prefix("./") {
                home.join(rest)
            } else if first == '.' {
                home.join(line)
            } else {
                PathBuf::from(line)
            };
            if line.ends_with('/') {
                Ok(Some(Instruction::Maildir(path)))
            } else {
                Ok(Some(Instruction::Mbox(path)))
            }
        }
        _ => {
            let a = line.strip_prefix('&').unwrap_or(line).trim();
            if a.is_empty() {
                return if first == '&' {
                    Err("a forward line names no address")
                } else {
                    Ok(None)
                };
            }
            if a.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err("a forward address holds white space or control characters");
            }
            Ok(Some(Instruction::Forward(a.to_string())))
        }
    }
}

/// Parses every line; the first bad one is the error.
pub fn parse<S: AsRef<str>>(lines: &[S], home: &Path) -> Result<Vec<Instruction>, LineError> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match parse_line(l.as_ref(), home) {
            Ok(Some(ins)) => out.push(ins),
            Ok(None) => {}
            Err(reason) => {
                return Err(LineError {
                    line: i + 1,
                    reason,
                })
            }
        }
    }
    Ok(out)
}

/// The file names qmail-local tries for extension `ext`, most specific
/// first: for `a-b`, `.qmail-a-b`, `.qmail-a-default`, `.qmail-default`;
/// for the empty extension, `.qmail`. As qmail-local does, the extension is
/// lower-cased and `.` becomes `:` (a file name cannot hide in `..`). An
/// extension holding `/` or NUL names no file of its own (it would name a
/// path elsewhere), only `.qmail-default`.
pub fn file_names(ext: &str) -> Vec<String> {
    if ext.is_empty() {
        return vec![".qmail".into()];
    }
    let ext = ext.to_ascii_lowercase().replace('.', ":");
    let mut names = Vec::new();
    if !ext.contains(['/', '\0']) {
        names.push(format!(".qmail-{ext}"));
        let mut rest = ext.as_str();
        while let Some((head, _)) = rest.rsplit_once('-') {
            names.push(format!(".qmail-{head}-default"));
            rest = head;
        }
    }
    names.push(".qmail-default".into());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let h = Path::new("/home/u");
        let p = |l| parse_line(l, h);
        assert_eq!(p("# c"), Ok(None));
        assert_eq!(p(""), Ok(None));
        assert_eq!(p("   "), Ok(None));
        assert_eq!(
            p("./Maildir/"),
            Ok(Some(Instruction::Maildir("/home/u/Maildir/".into())))
        );
        assert_eq!(
            p(".Maildir/"),
            Ok(Some(Instruction::Maildir("/home/u/.Maildir/".into())))
        );
        assert_eq!(
            p("/var/mail/u"),
            Ok(Some(Instruction::Mbox("/var/mail/u".into())))
        );
        assert_eq!(p("&a@b.c"), Ok(Some(Instruction::Forward("a@b.c".into()))));
        assert_eq!(
            p("a@b.c\r\n"),
            Ok(Some(Instruction::Forward("a@b.c".into())))
        );
        assert_eq!(
            p("| /bin/prog x"),
            Ok(Some(Instruction::Program(" /bin/prog x".into())))
        );
        assert!(p("|").is_err());
        assert!(p("&").is_err());
        assert!(p("&a b@c").is_err());
    }

    #[test]
    fn whole_file_names_the_bad_line() {
        let h = Path::new("/h");
        assert_eq!(
            parse(&["# x", "./Maildir/", "|  "], h),
            Err(LineError {
                line: 3,
                reason: "a program line names no program"
            })
        );
        assert_eq!(parse(&["# only comments"], h), Ok(vec![]));
        assert_eq!(
            parse(&["&a@b", "./M/"], h).unwrap().len(),
            2,
            "forward and maildir"
        );
    }

    #[test]
    fn extension_file_names() {
        assert_eq!(file_names(""), vec![".qmail"]);
        assert_eq!(file_names("News"), vec![".qmail-news", ".qmail-default"]);
        assert_eq!(
            file_names("a-b-c"),
            vec![
                ".qmail-a-b-c",
                ".qmail-a-b-default",
                ".qmail-a-default",
                ".qmail-default"
            ]
        );
        assert_eq!(file_names("x.y"), vec![".qmail-x:y", ".qmail-default"]);
        assert_eq!(file_names(".."), vec![".qmail-::", ".qmail-default"]);
        assert_eq!(file_names("a/../b"), vec![".qmail-default"]);
    }
}
