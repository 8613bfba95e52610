//! The queue-time rules read from the control directory and the
//! environment (spec 1.7, 1.9, 1.11).

use std::path::Path;

use crate::headers::HeaderRules;
use crate::{control_lines, Error};

/// What happens to every message at queue time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRules {
    /// `removeheaders`, `envheaders`, `logheaders`.
    pub headers: std::sync::Arc<HeaderRules>,
    /// `quarantine` / `QUARANTINE`: every message goes to this address
    /// only; the original recipients are kept in `X-Quarantine-ID:`.
    pub quarantine: Option<String>,
    /// `extraqueue` / `EXTRAQUEUE`: recipients added to every message.
    pub extra_recipients: Vec<String>,
    /// `NULLQUEUE` in the server's environment: accept and discard.
    pub nullqueue: bool,
    /// `DKIMVERIFY` (or the control file `dkimverify`): verify incoming
    /// DKIM signatures and add `Authentication-Results:`; the value is the
    /// set of result letters that refuse the message (empty: annotate
    /// only). See [`crate::dkim::verify_action`].
    pub dkim_verify: Option<String>,
    /// Virus scanning with clamd (`CLAMDSOCKET` / `clamdsocket`).
    pub virus: Option<crate::scan::VirusScan>,
    /// `SPAMFILTER`: the spam filter (e.g. bogofilter).
    pub spam: Option<crate::scan::SpamFilter>,
    /// `FILTERARGS`: an external filter every message passes through.
    pub filter: Option<crate::scan::Filter>,
}

/// Which file a rule is read from: the variable, when set, names the file
/// (empty = rule disabled), else the default name (spec 1.7).
fn file_for(env: &dyn Fn(&str) -> Option<String>, var: &str, default: &str) -> Option<String> {
    match env(var) {
        Some(v) if v.trim().is_empty() => None,
        Some(v) => Some(v.trim().to_string()),
        None => Some(default.to_string()),
    }
}

fn names(control: &Path, file: Option<String>) -> Result<Vec<(usize, String)>, Error> {
    match file {
        None => Ok(Vec::new()),
        Some(f) => Ok(control_lines(&control.join(f))?.unwrap_or_default()),
    }
}

impl QueueRules {
    /// Reads `removeheaders`, `envheaders`, `logheaders` (each renamed or
    /// disabled by `REMOVEHEADERS`, `ENVHEADERS`, `LOGHEADERS`),
    /// `quarantine` (`QUARANTINE` = the address), `extraqueue`
    /// (`EXTRAQUEUE` = one address) and `NULLQUEUE`.
    pub fn load(control: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<QueueRules, Error> {
        let remove = names(control, file_for(env, "REMOVEHEADERS", "removeheaders"))?
            .into_iter()
            .map(|(_, l)| l.trim_end_matches(':').to_string())
            .collect();
        let log = names(control, file_for(env, "LOGHEADERS", "logheaders"))?
            .into_iter()
            .map(|(_, l)| l.trim_end_matches(':').to_string())
            .collect();
        let env_file = file_for(env, "ENVHEADERS", "envheaders");
        let mut envh = Vec::new();
        for (line, text) in names(control, env_file.clone())? {
            let (name, max) = match text.rsplit_once(':') {
                Some((n, m)) => match m.trim().parse::<usize>() {
                    Ok(m) => (n.trim().to_string(), Some(m)),
                    Err(_) => {
                        return Err(Error::Syntax {
                            path: control.join(env_file.as_deref().unwrap_or("envheaders")),
                            line,
                            problem: format!("`{text}`: expected Header-Name[:maxlen]"),
                        })
                    }
                },
                None => (text.clone(), None),
            };
            envh.push((name, max));
        }
        let quarantine = match env("QUARANTINE") {
            Some(v) => Some(v.trim().to_string()).filter(|v| !v.is_empty()),
            None => control_lines(&control.join("quarantine"))?
                .and_then(|l| l.into_iter().next().map(|(_, a)| a)),
        };
        let extra_recipients = match env("EXTRAQUEUE") {
            Some(v) => vec![v.trim().to_string()]
                .into_iter()
                .filter(|v| !v.is_empty())
                .collect(),
            None => control_lines(&control.join("extraqueue"))?
                .unwrap_or_default()
                .into_iter()
                .map(|(_, a)| a)
                .collect(),
        };
        let (spam, filter) = crate::scan::load_filters(env)?;
        Ok(QueueRules {
            spam,
            filter,
            headers: std::sync::Arc::new(HeaderRules {
                remove,
                env: envh,
                log,
            }),
            quarantine,
            extra_recipients,
            nullqueue: env("NULLQUEUE").is_some(),
            virus: crate::scan::VirusScan::load(control, env)?,
            dkim_verify: match env("DKIMVERIFY") {
                Some(v) => Some(v.trim().to_string()),
                None => control_lines(&control.join("dkimverify"))?
                    .map(|l| l.into_iter().next().map(|(_, v)| v).unwrap_or_default()),
            },
        })
    }

    /// The recipients a message is queued for, and the `X-Quarantine-ID:`
    /// header line to add when quarantined (spec 1.9): the quarantine
    /// address alone, the originals kept in the header; otherwise the
    /// recipients plus the `extraqueue` ones not already there.
    pub fn recipients(
        &self,
        quarantine: Option<&str>,
        rcpts: Vec<String>,
    ) -> (Vec<String>, Option<String>) {
        if let Some(q) = quarantine.or(self.quarantine.as_deref()) {
            let mut all = vec![q.to_string()];
            all.extend(rcpts.iter().map(|r| r.replace(['\n', '\r'], "")));
            return (
                vec![q.to_string()],
                Some(format!("X-Quarantine-ID: {}\n", all.join(","))),
            );
        }
        let mut rcpts = rcpts;
        for x in &self.extra_recipients {
            if !rcpts.iter().any(|r| r.eq_ignore_ascii_case(x)) {
                rcpts.push(x.clone());
            }
        }
        (rcpts, None)
    }
}

/// A whole message after the queue's line processing (see [`QueueRules::apply`]).
#[derive(Debug, Clone, Default)]
pub struct Processed {
    /// The recipients to queue (quarantine / extraqueue applied).
    pub recipients: Vec<String>,
    /// The message to queue (an `X-Quarantine-ID:` line first when
    /// quarantined; `removeheaders` fields gone).
    pub message: Vec<u8>,
    /// What the header rules found (`envheaders`, `logheaders`).
    pub found: crate::headers::HeaderFindings,
}

impl QueueRules {
    /// qmail-queue's line processing for a message that arrives whole (from
    /// `sendmail`, `qmail-queue`, a forward), so that the rules of the queue
    /// act on every way into it, not only SMTP: `NULLQUEUE` (then `None`:
    /// store nothing), `quarantine`, `extraqueue`, and the header rules.
    /// `message` is in queue form (LF line ends). The message plugins
    /// (DKIM verification, scanners) stay with SMTP, where a refusal can
    /// still be answered.
    pub fn apply(&self, recipients: Vec<String>, message: &[u8]) -> Option<Processed> {
        if self.nullqueue {
            return None;
        }
        let (recipients, quarantine_line) = self.recipients(None, recipients);
        let mut out = Vec::with_capacity(message.len() + 64);
        if let Some(line) = quarantine_line {
            out.extend_from_slice(line.as_bytes());
        }
        let found = if self.headers.is_empty() {
            out.extend_from_slice(message);
            crate::headers::HeaderFindings::default()
        } else {
            let mut p = crate::HeaderProcessor::new(std::sync::Arc::clone(&self.headers));
            p.feed(message, &mut out);
            p.finish(&mut out)
        };
        Some(Processed {
            recipients,
            message: out,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_files_and_variables() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("removeheaders"), "Bcc\nX-Secret:\n").unwrap();
        std::fs::write(d.path().join("envheaders"), "X-Ticket:20\nSubject\n").unwrap();
        std::fs::write(d.path().join("logheaders"), "# c\nSubject\n").unwrap();
        std::fs::write(d.path().join("extraqueue"), "arch@x.test\n").unwrap();
        let none = |_: &str| None;
        let r = QueueRules::load(d.path(), &none).unwrap();
        assert_eq!(r.headers.remove, vec!["Bcc", "X-Secret"]);
        assert_eq!(
            r.headers.env,
            vec![("X-Ticket".into(), Some(20)), ("Subject".into(), None)]
        );
        assert_eq!(r.headers.log, vec!["Subject"]);
        assert_eq!(r.extra_recipients, vec!["arch@x.test"]);
        let (rc, h) = r.recipients(None, vec!["a@x.test".into()]);
        assert_eq!(rc, vec!["a@x.test", "arch@x.test"]);
        assert!(h.is_none());
        let vars = |n: &str| match n {
            "REMOVEHEADERS" => Some(String::new()),
            "QUARANTINE" => Some("q@x.test".into()),
            _ => None,
        };
        let r = QueueRules::load(d.path(), &vars).unwrap();
        assert!(r.headers.remove.is_empty());
        let (rc, h) = r.recipients(None, vec!["a@x.test".into(), "b@x.test".into()]);
        assert_eq!(rc, vec!["q@x.test"]);
        assert_eq!(
            h.as_deref(),
            Some("X-Quarantine-ID: q@x.test,a@x.test,b@x.test\n")
        );
        std::fs::write(d.path().join("envheaders"), "X-Ticket:abc\n").unwrap();
        assert!(QueueRules::load(d.path(), &none).is_err());
    }
}
