//! Virus scanning (the QHPSI role, spec 1.8 and 9.5) with `clamd`: the
//! settings and the INSTREAM protocol, sans I/O (the engine owns the
//! socket).
//!
//! INSTREAM: the client sends `zINSTREAM\0`, the message as chunks each
//! preceded by its length (4 bytes, network order), and a zero length;
//! clamd answers one `\0`-terminated line: `stream: OK`,
//! `stream: <signature> FOUND`, or `... ERROR`.

use std::path::Path;

use crate::{control_lines, Error};

/// What to do with an infected message (`REJECTVIRUS`, spec 1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnVirus {
    /// `REJECTVIRUS=0`: accept, tagged `X-QHPSI: Virus found`.
    Accept,
    /// `REJECTVIRUS=1` (default): refuse at DATA with 554 5.7.1.
    Reject,
    /// `REJECTVIRUS=2`: accept and discard.
    Blackhole,
}

/// The virus scanner settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirusScan {
    /// clamd's socket: a path (its `LocalSocket`) or `host:port`.
    pub socket: String,
    /// What an infected message gets.
    pub on_virus: OnVirus,
    /// `VIRUSFORWARD`: quarantine infected mail to this address instead
    /// (beats `REJECTVIRUS`).
    pub forward: Option<String>,
    /// `QHPSIFAILOPEN`: when the scanner cannot be asked, accept the
    /// message tagged `X-QHPSI: not scanned` instead of answering 451.
    pub fail_open: bool,
    /// `QHPSIMINSIZE` / `QHPSIMAXSIZE`: messages outside this size window
    /// (bytes; 0 = no limit) are not scanned.
    pub min_size: u64,
    /// See `min_size`.
    pub max_size: u64,
}

impl VirusScan {
    /// The scanner from `CLAMDSOCKET` (or the control file `clamdsocket`),
    /// with `REJECTVIRUS`, `VIRUSFORWARD`, `QHPSIFAILOPEN`,
    /// `QHPSIMINSIZE`, `QHPSIMAXSIZE`; `None` when no socket is set.
    pub fn load(
        control: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<VirusScan>, Error> {
        let socket = match env("CLAMDSOCKET") {
            Some(v) => Some(v.trim().to_string()),
            None => control_lines(&control.join("clamdsocket"))?
                .and_then(|l| l.into_iter().next().map(|(_, v)| v)),
        };
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let num = |n: &str| -> Result<u64, Error> {
            match env(n) {
                None => Ok(0),
                Some(v) if v.trim().is_empty() => Ok(0),
                Some(v) => v.trim().parse().map_err(|_| Error::Syntax {
                    path: format!("${n}").into(),
                    line: 1,
                    problem: format!("`{v}` is not a number"),
                }),
            }
        };
        let on_virus = match env("REJECTVIRUS") {
            None => OnVirus::Reject,
            Some(_) => match num("REJECTVIRUS")? {
                0 => OnVirus::Accept,
                2 => OnVirus::Blackhole,
                _ => OnVirus::Reject,
            },
        };
        Ok(Some(VirusScan {
            socket,
            on_virus,
            forward: env("VIRUSFORWARD")
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            fail_open: num("QHPSIFAILOPEN")? > 0,
            min_size: num("QHPSIMINSIZE")?,
            max_size: num("QHPSIMAXSIZE")?,
        }))
    }

    /// Whether a message of `len` bytes is scanned.
    pub fn in_window(&self, len: u64) -> bool {
        len >= self.min_size && (self.max_size == 0 || len <= self.max_size)
    }
}

/// The INSTREAM command.
pub const INSTREAM: &[u8] = b"zINSTREAM\0";

/// Chunk size for INSTREAM (well below clamd's default StreamMaxLength).
pub const CHUNK: usize = 64 * 1024;

/// The INSTREAM frame for one piece of data (at most `u32::MAX` bytes);
/// an empty piece ends the stream.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 4);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// What clamd said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    /// Nothing found.
    Clean,
    /// A signature matched.
    Infected(String),
    /// clamd could not scan (the text of its answer).
    Error(String),
}

/// Reads clamd's answer (`\0` or newline terminated).
pub fn parse_reply(reply: &[u8]) -> ScanResult {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n', '\r']).trim();
    let rest = text.split_once(": ").map_or(text, |(_, r)| r);
    if rest == "OK" {
        ScanResult::Clean
    } else if let Some(sig) = rest.strip_suffix(" FOUND") {
        ScanResult::Infected(sig.chars().filter(|c| !c.is_control()).take(200).collect())
    } else {
        ScanResult::Error(text.chars().filter(|c| !c.is_control()).take(200).collect())
    }
}

/// An external program the message passes through at the end of DATA
/// (message on stdin, the message to queue on stdout): `SPAMFILTER`
/// (IndiMail's qmail-spamfilter, e.g. `bogofilter -p`) and `FILTERARGS`
/// (qmail-multi's filter, e.g. altermime adding a disclaimer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Program and arguments (the variable split at white space).
    pub argv: Vec<String>,
}

impl Filter {
    fn from_var(v: Option<String>) -> Option<Filter> {
        let argv: Vec<String> = v?.split_whitespace().map(str::to_string).collect();
        (!argv.is_empty()).then_some(Filter { argv })
    }
}

/// What the spam filter's exit status means (spec 9.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamVerdict {
    /// `SPAMEXITCODE` (default 0, bogofilter's "spam").
    Spam,
    /// `HAMEXITCODE` (1) or `UNSUREEXITCODE` (2).
    NotSpam,
    /// 100: refuse the message permanently.
    Refuse,
    /// Anything else (or no exit status): a temporary problem.
    Trouble,
}

/// The spam filter settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamFilter {
    /// The program.
    pub filter: Filter,
    /// `SPAMEXITCODE`, `HAMEXITCODE`, `UNSUREEXITCODE`.
    pub codes: (i32, i32, i32),
    /// `REJECTSPAM`: 0 accept (tagged by the filter), 1 refuse with 554,
    /// 2 or more accept and discard.
    pub reject: u8,
    /// `RELAYCLIENT_NOSPAMFILTER`: relay clients are not filtered.
    pub skip_relay: bool,
}

impl SpamFilter {
    /// The meaning of the program's exit `code`.
    pub fn verdict(&self, code: Option<i32>) -> SpamVerdict {
        match code {
            Some(c) if c == self.codes.0 => SpamVerdict::Spam,
            Some(c) if c == self.codes.1 || c == self.codes.2 => SpamVerdict::NotSpam,
            Some(100) => SpamVerdict::Refuse,
            _ => SpamVerdict::Trouble,
        }
    }
}

/// `SPAMFILTER` (with `SPAMEXITCODE`, `HAMEXITCODE`, `UNSUREEXITCODE`,
/// `REJECTSPAM`, `RELAYCLIENT_NOSPAMFILTER`) and `FILTERARGS`.
pub fn load_filters(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<SpamFilter>, Option<Filter>), Error> {
    let code = |n: &str, d: i32| -> Result<i32, Error> {
        match env(n) {
            Some(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| Error::Syntax {
                path: format!("${n}").into(),
                line: 1,
                problem: format!("`{v}` is not a number"),
            }),
            _ => Ok(d),
        }
    };
    let spam = match Filter::from_var(env("SPAMFILTER")) {
        None => None,
        Some(filter) => Some(SpamFilter {
            filter,
            codes: (
                code("SPAMEXITCODE", 0)?,
                code("HAMEXITCODE", 1)?,
                code("UNSUREEXITCODE", 2)?,
            ),
            reject: code("REJECTSPAM", 0)?.clamp(0, 2) as u8,
            skip_relay: env("RELAYCLIENT_NOSPAMFILTER").is_some(),
        }),
    };
    Ok((spam, Filter::from_var(env("FILTERARGS"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_frames() {
        assert_eq!(parse_reply(b"stream: OK\0"), ScanResult::Clean);
        assert_eq!(
            parse_reply(b"stream: Test.Sig.UNOFFICIAL FOUND\0"),
            ScanResult::Infected("Test.Sig.UNOFFICIAL".into())
        );
        assert!(matches!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            ScanResult::Error(_)
        ));
        assert_eq!(frame(b"ab"), vec![0, 0, 0, 2, b'a', b'b']);
        assert_eq!(frame(b""), vec![0, 0, 0, 0]);
    }

    #[test]
    fn filters() {
        let (spam, f) = load_filters(&|n| match n {
            "SPAMFILTER" => Some("/usr/bin/bogofilter -p -d /x".into()),
            "REJECTSPAM" => Some("1".into()),
            "FILTERARGS" => Some("  ".into()),
            _ => None,
        })
        .unwrap();
        let spam = spam.unwrap();
        assert_eq!(spam.filter.argv, ["/usr/bin/bogofilter", "-p", "-d", "/x"]);
        assert_eq!(spam.reject, 1);
        assert_eq!(f, None);
        assert_eq!(spam.verdict(Some(0)), SpamVerdict::Spam);
        assert_eq!(spam.verdict(Some(2)), SpamVerdict::NotSpam);
        assert_eq!(spam.verdict(Some(100)), SpamVerdict::Refuse);
        assert_eq!(spam.verdict(Some(3)), SpamVerdict::Trouble);
        assert_eq!(spam.verdict(None), SpamVerdict::Trouble);
    }

    #[test]
    fn settings() {
        let d = std::path::Path::new("/nonexistent");
        assert_eq!(VirusScan::load(d, &|_| None).unwrap(), None);
        let v = VirusScan::load(d, &|n| match n {
            "CLAMDSOCKET" => Some("/run/c.sock".into()),
            "REJECTVIRUS" => Some("2".into()),
            "QHPSIMAXSIZE" => Some("100".into()),
            _ => None,
        })
        .unwrap()
        .unwrap();
        assert_eq!(v.on_virus, OnVirus::Blackhole);
        assert!(v.in_window(100) && !v.in_window(101));
        assert!(VirusScan::load(d, &|n| match n {
            "CLAMDSOCKET" => Some("/run/c.sock".into()),
            "QHPSIMAXSIZE" => Some("x".into()),
            _ => None,
        })
        .is_err());
    }
}
