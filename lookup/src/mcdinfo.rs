//! IndiMail's Mail Cluster Definition file, `control/mcdinfo` (spec 4.1): which database
//! server holds each listed domain's users, per mailstore host (`mdahost`). Parsing and
//! writing only (sans-I/O); the file is read by [`crate::DirectoryConfig`] and written by the
//! `dbinfo` command.
//!
//! A record is a block of `key value` lines, as IndiMail's `writemcdinfo` writes it:
//!
//! ```text
//! domain   example.com 1
//! server   10.0.0.5
//! mdahost  10.0.0.11
//! port     3306
//! use_ssl  0
//! database indimail
//! user     indimail
//! pass     secret
//! ```
//!
//! `domain` opens a record (its second word is the clustered flag, 0 when absent); every
//! other key must follow one, at most once. `#` starts a comment. A record missing `server`
//! or `mdahost` is an error, as is an unknown key: a misspelt line must not silently send a
//! domain's users to the default server.

use std::path::Path;

use crate::LookupError;

/// The file's name in the control directory (IndiMail's `MCDFILE` default).
pub const MCDINFO_FILE: &str = "mcdinfo";

/// One record: where `domain`'s users live for the mailstore `mdahost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McdRecord {
    /// The domain.
    pub domain: String,
    /// Clustered ("distributed"): the domain's users are spread over several mailstores,
    /// each with its own record; otherwise the domain has one record.
    pub distributed: bool,
    /// Database server: host name or IP.
    pub server: String,
    /// The mailstore host this record is for (its host id or address).
    pub mdahost: String,
    /// TCP port (IndiMail's default 3306).
    pub port: u16,
    /// IndiMail's use_ssl flag (kept and shown; this build connects without TLS).
    pub use_ssl: bool,
    /// Database name.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
}

impl McdRecord {
    /// The fields in the file's order: domain, clustered, server, mdahost, port, use_ssl,
    /// database, user, password.
    pub fn values(&self) -> [String; 9] {
        [
            self.domain.clone(),
            u8::from(self.distributed).to_string(),
            self.server.clone(),
            self.mdahost.clone(),
            self.port.to_string(),
            u8::from(self.use_ssl).to_string(),
            self.database.clone(),
            self.user.clone(),
            self.password.clone(),
        ]
    }

    /// A record with IndiMail's defaults for everything but the two keys.
    fn new(domain: &str, distributed: bool) -> McdRecord {
        McdRecord {
            domain: domain.to_string(),
            distributed,
            server: String::new(),
            mdahost: String::new(),
            port: 3306,
            use_ssl: false,
            database: "indimail".into(),
            user: "indimail".into(),
            password: "ssh-1.5-".into(),
        }
    }
}

/// Parse an mcdinfo file; `file` names it in errors (`file:line: reason`).
pub fn parse(text: &str, file: &Path) -> Result<Vec<McdRecord>, LookupError> {
    let mut out: Vec<McdRecord> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut opened_at = 0;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let bad = |reason: String| LookupError::Config {
            file: file.to_path_buf(),
            line: lineno,
            reason,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) if !v.trim().is_empty() => (k, v.trim()),
            _ => return Err(bad(format!("{line}: has no value"))),
        };
        if key == "domain" {
            if let Some(prev) = out.last() {
                complete(prev, file, opened_at)?;
            }
            let mut words = value.split_whitespace();
            let domain = words.next().unwrap_or_default();
            let distributed = match words.next() {
                None | Some("0") => false,
                Some("1") => true,
                Some(o) => return Err(bad(format!("clustered flag must be 0 or 1, got {o}"))),
            };
            if let Some(extra) = words.next() {
                return Err(bad(format!("unexpected {extra} after the clustered flag")));
            }
            let domain = crate::normalize_domain(domain).map_err(|e| bad(e.to_string()))?;
            out.push(McdRecord::new(&domain, distributed));
            seen.clear();
            opened_at = lineno;
            continue;
        }
        let Some(rec) = out.last_mut() else {
            return Err(bad(format!("{key} before the first domain line")));
        };
        if seen.contains(&key) {
            return Err(bad(format!("{key} given twice for {}", rec.domain)));
        }
        let flag = |v: &str| match v {
            "0" => Ok(false),
            "1" => Ok(true),
            o => Err(bad(format!("use_ssl must be 0 or 1, got {o}"))),
        };
        match key {
            "server" => rec.server = value.to_string(),
            "mdahost" => rec.mdahost = value.to_string(),
            "port" => {
                rec.port = value
                    .parse()
                    .map_err(|_| bad(format!("bad port {value}")))?
            }
            "use_ssl" => rec.use_ssl = flag(value)?,
            "database" => rec.database = value.to_string(),
            "user" => rec.user = value.to_string(),
            "pass" => rec.password = value.to_string(),
            other => return Err(bad(format!("unknown key {other}"))),
        }
        seen.push(key);
    }
    if let Some(last) = out.last() {
        complete(last, file, opened_at)?;
    }
    Ok(out)
}

/// A record needs its server and its mailstore.
fn complete(rec: &McdRecord, file: &Path, line: usize) -> Result<(), LookupError> {
    for (key, value) in [("server", &rec.server), ("mdahost", &rec.mdahost)] {
        if value.is_empty() {
            return Err(LookupError::Config {
                file: file.to_path_buf(),
                line,
                reason: format!("domain {} has no {key} line", rec.domain),
            });
        }
    }
    Ok(())
}

/// The file's text for `records`, in IndiMail's layout (a blank line after each record).
pub fn render(records: &[McdRecord]) -> String {
    const KEYS: [&str; 7] = [
        "server", "mdahost", "port", "use_ssl", "database", "user", "pass",
    ];
    let mut s = String::new();
    for r in records {
        let v = r.values();
        s.push_str(&format!("domain   {} {}\n", v[0], v[1]));
        for (key, value) in KEYS.iter().zip(&v[2..]) {
            s.push_str(&format!("{key:<9}{value}\n"));
        }
        s.push('\n');
    }
    s
}

/// The record that routes `domain` on the host known by `host_names`: the domain's only
/// record when it is not clustered, else the one whose `mdahost` is this host.
pub fn route_for<'a>(
    records: &'a [McdRecord],
    domain: &str,
    host_names: &[String],
) -> Option<&'a McdRecord> {
    let mut mine = records.iter().filter(|r| r.domain == domain);
    let first = mine.clone().next()?;
    if !first.distributed {
        return Some(first);
    }
    mine.find(|r| host_names.iter().any(|h| h == &r.mdahost))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# two domains
domain   example.com 1
server   10.0.0.5
mdahost  store1
port     3307
use_ssl  0
database maildb
user     im
pass     pw

domain   example.com 1
server   10.0.0.6
mdahost  store2

domain example.org
server 10.0.0.7   # no cluster
mdahost store9
";

    fn p(text: &str) -> Result<Vec<McdRecord>, LookupError> {
        parse(text, Path::new("control/mcdinfo"))
    }

    #[test]
    fn parses_records_with_defaults() {
        let r = p(FILE).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].server.as_str(), r[0].port, r[0].database.as_str()),
            ("10.0.0.5", 3307, "maildb")
        );
        assert!(r[0].distributed && !r[2].distributed);
        assert_eq!((r[1].port, r[1].user.as_str()), (3306, "indimail"));
        assert_eq!(r[2].mdahost, "store9");
        let cfg = r[0].mysql();
        assert_eq!((cfg.host.as_str(), cfg.user.as_str()), ("10.0.0.5", "im"));
    }

    #[test]
    fn render_parses_back() {
        let r = p(FILE).unwrap();
        assert_eq!(p(&render(&r)).unwrap(), r);
        assert!(render(&r).starts_with("domain   example.com 1\nserver   10.0.0.5\n"));
    }

    #[test]
    fn routes_by_mailstore_when_clustered() {
        let r = p(FILE).unwrap();
        let me = |h: &str| vec![h.to_string()];
        assert_eq!(
            route_for(&r, "example.com", &me("store2")).map(|r| r.server.as_str()),
            Some("10.0.0.6")
        );
        assert!(route_for(&r, "example.com", &me("store7")).is_none());
        // Not clustered: its one record, whatever the host.
        assert_eq!(
            route_for(&r, "example.org", &me("store7")).map(|r| r.server.as_str()),
            Some("10.0.0.7")
        );
        assert!(route_for(&r, "example.net", &me("store1")).is_none());
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let cases = [
            ("server 10.0.0.1\n", 1, "before the first domain"),
            ("domain a.example\nserver\n", 2, "no value"),
            (
                "domain a.example\nserver h\nmdahost m\nport x\n",
                4,
                "bad port",
            ),
            ("domain a.example 2\n", 1, "clustered flag"),
            ("domain a.example\nserver h\nserver i\n", 3, "twice"),
            ("domain a.example\nsrever h\n", 2, "unknown key srever"),
            (
                "domain a.example\nserver h\n\ndomain b.example\n",
                1,
                "no mdahost",
            ),
            ("domain b.example\nmdahost m\n", 1, "no server"),
            (
                "domain a.example\nserver h\nmdahost m\nuse_ssl yes\n",
                4,
                "use_ssl",
            ),
        ];
        for (text, line, what) in cases {
            let e = p(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("control/mcdinfo:{line}: ")) && e.contains(what),
                "{text:?}: {e}"
            );
        }
        assert_eq!(p("# nothing\n\n").unwrap(), vec![]);
    }
}
