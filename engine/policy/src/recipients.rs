//! The RECIPIENTS extension (control file `recipients`, spec 2.5 step 9 and 2.7), which
//! `CHECKRECIPIENT=2|3` consults: which recipients exist, per domain, in a cdb or by asking a
//! program (PAVM), without the directory.
//!
//! Lines, tried in order until one answers:
//! * `@domain:cdb` — the domain exactly; `domain:cdb` — the domain and its subdomains;
//!   `*:cdb` — any domain. The cdb holds the keys `:address` (lower case, as IndiMail's
//!   `qmail-recipients` and fastforward's `setforward` write them); an address with an
//!   extension (`user-ext@d`, also after `=` or `+`) is found by its `:user-@d` key too.
//! * `@domain|program args`, `domain|...`, `*|...` — the program gets `address\0\0\0` on fd 3
//!   (checkpassword style); exit 0 means the address exists, 111 is a temporary failure, any
//!   other code sends the lookup on to the next line.
//! * `!domain` — the domain is not checked (every address accepted); `!*` — everything not
//!   answered above is accepted (pass-through, normally the last line).
//! * anything else — a cdb path checked for every domain (the extension's legacy form).
//!
//! Relative cdb paths are taken from the IndiMail home (the control directory's parent), where
//! qmail-smtpd runs. The cdbs are mapped at load and their paths become policy sources, so
//! replacing one (qmail-cdb renames a new file into place) reloads the policy.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::control::{ControlFile, Reader};

/// Which domains a line covers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// `*:` / `*|`.
    Any,
    /// `@domain`.
    Exact(String),
    /// `domain`: itself and `*.domain`.
    Tree(String),
    /// A legacy bare cdb path: every domain.
    Legacy,
}

impl Scope {
    fn parse(text: &str) -> Scope {
        match text {
            "*" => Scope::Any,
            _ => match text.strip_prefix('@') {
                Some(d) => Scope::Exact(d.to_ascii_lowercase()),
                None => Scope::Tree(text.to_ascii_lowercase()),
            },
        }
    }

    fn covers(&self, domain: &str) -> bool {
        match self {
            Scope::Any | Scope::Legacy => true,
            Scope::Exact(d) => d == domain,
            Scope::Tree(d) => {
                domain == d
                    || (domain.len() > d.len()
                        && domain.ends_with(d.as_str())
                        && domain.as_bytes()[domain.len() - d.len() - 1] == b'.')
            }
        }
    }
}

/// A cdb mapped at load (or absent: then it finds nothing, as IndiMail's failed open does).
struct Cdb {
    path: PathBuf,
    db: Option<cdb::CDB>,
}

impl fmt::Debug for Cdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cdb({}, mapped: {})",
            self.path.display(),
            self.db.is_some()
        )
    }
}

#[derive(Debug)]
enum Source {
    Cdb(Arc<Cdb>),
    Program(Vec<String>),
}

#[derive(Debug)]
enum Rule {
    NoCheck(String),
    PassThrough,
    Lookup { scope: Scope, source: Source },
}

/// What the `recipients` file says about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientsAnswer {
    /// Found in a cdb or confirmed by a program.
    Found,
    /// `!domain` or `!*`: accepted without a check.
    Unchecked,
    /// No line confirmed it: the address does not exist (550 5.1.1).
    NotFound,
    /// There is no `recipients` file: CHECKRECIPIENT=3 lets everything pass.
    NotConfigured,
    /// A program failed temporarily (exit 111, or it could not be run): 451.
    TempFail(String),
}

/// Runs one PAVM program line: its argv and the address for fd 3 in, the exit code (or why it
/// could not run) out.
pub type ProgramRunner<'a> = dyn FnMut(&[String], &str) -> Result<i32, String> + 'a;

/// The parsed `recipients` control file.
#[derive(Debug, Default)]
pub struct Recipients {
    rules: Option<Vec<Rule>>,
}

impl Recipients {
    pub(crate) fn load(file: &ControlFile, home: &Path, rd: &mut Reader) -> Recipients {
        if !file.exists() {
            return Recipients { rules: None };
        }
        let mut open = |path: &str| {
            let path = crate::control::resolve(home, path);
            let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if !rd.sources.iter().any(|(p, _)| *p == path) {
                rd.sources.push((path.clone(), mtime));
            }
            let db = cdb::CDB::open(&path).ok();
            Source::Cdb(Arc::new(Cdb { path, db }))
        };
        let mut rules = Vec::new();
        for line in file.lines() {
            let t = line.text.trim();
            if let Some(rest) = t.strip_prefix('!') {
                rules.push(match rest {
                    "*" => Rule::PassThrough,
                    d => Rule::NoCheck(d.to_ascii_lowercase()),
                });
                continue;
            }
            // The first of ':' or '|' decides the line's kind (a program's arguments may hold
            // either).
            let rule = match t.find([':', '|']) {
                Some(i) if t.as_bytes()[i] == b':' => Rule::Lookup {
                    scope: Scope::parse(&t[..i]),
                    source: open(t[i + 1..].trim()),
                },
                Some(i) => Rule::Lookup {
                    scope: Scope::parse(&t[..i]),
                    source: Source::Program(
                        t[i + 1..].split_whitespace().map(str::to_string).collect(),
                    ),
                },
                None => Rule::Lookup {
                    scope: Scope::Legacy,
                    source: open(t),
                },
            };
            rules.push(rule);
        }
        Recipients { rules: Some(rules) }
    }

    /// True when a line runs a program, so a check may block and belongs off the event loop.
    pub fn runs_programs(&self) -> bool {
        self.rules.iter().flatten().any(|r| {
            matches!(
                r,
                Rule::Lookup {
                    source: Source::Program(_),
                    ..
                }
            )
        })
    }

    /// Answers for `address` (`local@domain`). `run` executes a program line: it gets the
    /// argv and the address to write on fd 3, and returns the exit code (or why it could not
    /// run). Without program lines `run` is never called.
    pub fn check(&self, address: &str, run: &mut ProgramRunner<'_>) -> RecipientsAnswer {
        let Some(rules) = &self.rules else {
            return RecipientsAnswer::NotConfigured;
        };
        let address = address.to_ascii_lowercase();
        let (local, domain) = match address.rsplit_once('@') {
            Some((l, d)) => (l.to_string(), d.to_string()),
            None => (address.clone(), "localhost".to_string()),
        };
        let full = format!("{local}@{domain}");
        // The extension form: the local part up to and including its first break character.
        let verp = local
            .find(['-', '=', '+'])
            .map(|i| format!("{}@{domain}", &local[..=i]));
        for rule in rules {
            match rule {
                Rule::NoCheck(d) if *d == domain => return RecipientsAnswer::Unchecked,
                Rule::NoCheck(_) => {}
                Rule::PassThrough => return RecipientsAnswer::Unchecked,
                Rule::Lookup { scope, source } if scope.covers(&domain) => match source {
                    Source::Cdb(c) => {
                        let Some(db) = &c.db else { continue };
                        let has = |a: &str| db.get(format!(":{a}").as_bytes()).is_some();
                        if has(&full) || verp.as_deref().is_some_and(has) {
                            return RecipientsAnswer::Found;
                        }
                    }
                    Source::Program(argv) if !argv.is_empty() => {
                        for a in std::iter::once(full.as_str()).chain(verp.as_deref()) {
                            match run(argv, a) {
                                Ok(0) => return RecipientsAnswer::Found,
                                Ok(111) => {
                                    return RecipientsAnswer::TempFail(format!(
                                        "{} exited 111",
                                        argv[0]
                                    ))
                                }
                                Ok(_) => {}
                                Err(e) => return RecipientsAnswer::TempFail(e),
                            }
                        }
                    }
                    Source::Program(_) => {}
                },
                Rule::Lookup { .. } => {}
            }
        }
        RecipientsAnswer::NotFound
    }
}

/// Runs a PAVM program the way IndiMail's qmail-smtpd does: `address\0\0\0` on fd 3, the exit
/// code as the answer. Blocking: call it off the event loop. The shell only moves the pipe to
/// fd 3 (`3<&0`), so no unsafe `pre_exec` is needed; the program's stdin is /dev/null.
pub fn run_pavm(argv: &[String], address: &str) -> Result<i32, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 3<&0 0</dev/null")
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if let Some(mut w) = child.stdin.take() {
        // A program that exits without reading closes the pipe: its exit code still answers.
        let _ = w.write_all(format!("{address}\0\0\0").as_bytes());
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", argv[0]))?;
    status
        .code()
        .ok_or_else(|| format!("{} killed by a signal", argv[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, text: &str) -> (Recipients, Vec<PathBuf>) {
        let control = dir.join("control");
        std::fs::create_dir_all(&control).unwrap();
        std::fs::write(control.join("recipients"), text).unwrap();
        let mut rd = Reader::default();
        let f = rd.read(control.join("recipients"));
        let r = Recipients::load(&f, dir, &mut rd);
        (r, rd.sources.into_iter().map(|(p, _)| p).collect())
    }

    fn cdb(path: &Path, keys: &[&str]) {
        let mut w = cdb::CDBWriter::create(path.display().to_string()).unwrap();
        for k in keys {
            w.add(k.as_bytes(), b"").unwrap();
        }
        w.finish().unwrap();
    }

    fn no_run(_: &[String], _: &str) -> Result<i32, String> {
        panic!("no program lines")
    }

    #[test]
    fn cdb_lines_by_scope_and_extension() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("users")).unwrap();
        cdb(
            &d.path().join("users/a.cdb"),
            &[":ann@a.example", ":list-@a.example"],
        );
        cdb(&d.path().join("users/all.cdb"), &[":bob@b.example"]);
        let (r, sources) = load(
            d.path(),
            "@a.example:users/a.cdb\nc.example:users/a.cdb\n!open.example\n*:users/all.cdb\n",
        );
        assert!(sources.contains(&d.path().join("users/a.cdb")));
        let check = |a: &str| r.check(a, &mut no_run);
        assert_eq!(check("Ann@A.example"), RecipientsAnswer::Found);
        assert_eq!(check("list-owner@a.example"), RecipientsAnswer::Found);
        assert_eq!(check("list@a.example"), RecipientsAnswer::NotFound);
        assert_eq!(check("nobody@a.example"), RecipientsAnswer::NotFound);
        assert_eq!(check("bob@b.example"), RecipientsAnswer::Found);
        assert_eq!(check("anyone@open.example"), RecipientsAnswer::Unchecked);
        // `c.example:` covers its subdomains; keys are whole addresses.
        assert_eq!(check("ann@x.c.example"), RecipientsAnswer::NotFound);
        assert!(!r.runs_programs());
    }

    #[test]
    fn pass_through_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let (r, _) = load(d.path(), "@a.example:users/missing.cdb\n!*\n");
        assert_eq!(
            r.check("x@a.example", &mut no_run),
            RecipientsAnswer::Unchecked
        );
        let none = Recipients::default();
        assert_eq!(
            none.check("x@a.example", &mut no_run),
            RecipientsAnswer::NotConfigured
        );
    }

    #[test]
    fn programs_answer_by_exit_code() {
        let d = tempfile::tempdir().unwrap();
        let (r, _) = load(d.path(), "@p.example|/usr/bin/pavm -x\n");
        assert!(r.runs_programs());
        let mut seen = Vec::new();
        let mut run = |argv: &[String], a: &str| {
            seen.push((argv.join(" "), a.to_string()));
            Ok(match a {
                "yes@p.example" => 0,
                "tmp@p.example" => 111,
                _ => 1,
            })
        };
        assert_eq!(r.check("yes@p.example", &mut run), RecipientsAnswer::Found);
        assert!(matches!(
            r.check("tmp@p.example", &mut run),
            RecipientsAnswer::TempFail(_)
        ));
        assert_eq!(
            r.check("no-ext@p.example", &mut run),
            RecipientsAnswer::NotFound
        );
        assert_eq!(seen[0], ("/usr/bin/pavm -x".into(), "yes@p.example".into()));
        assert_eq!(seen.last().unwrap().1, "no-@p.example");
    }

    #[test]
    fn pavm_gets_the_address_on_fd3() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("pavm");
        std::fs::write(
            &script,
            "#!/bin/sh\na=$(tr -d '\\000' <&3)\n[ \"$a\" = ok@p.example ] && exit 0\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let argv = vec![script.display().to_string()];
        let code = run_pavm(&argv, "ok@p.example").unwrap();
        let code_no = run_pavm(&argv, "no@p.example").unwrap();
        assert_ne!(code_no, 0);
        assert_eq!(code, 0, "program read the address from fd 3");
    }
}
