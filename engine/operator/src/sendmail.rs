//! `sendmail`-compatible entry for local programs: `indimail sendmail` or
//! the binary invoked as `sendmail`.
//!
//! Options understood: `-t` (recipients from To/Cc/Bcc, Bcc removed), `-f
//! SENDER` / `-fSENDER` / `-r SENDER`, `-F NAME` (full name for a generated
//! From:), `-i` / `-oi` (a line with a single dot does not end the message),
//! recipients as arguments. Other `-o*`, `-B*`, `-v`, `-em`... options that
//! sendmail accepts are ignored, as qmail's sendmail wrapper does. Exit
//! codes are sysexits: 0 ok, 64 usage, 75 temporary failure, 70 permanent.

use std::io::Read;

use queue_layout::Paths;
use scheduler::inject::{self, Envelope};

/// sysexits codes.
const EX_USAGE: i32 = 64;
const EX_SOFTWARE: i32 = 70;
const EX_TEMPFAIL: i32 = 75;

#[derive(Debug, Default, PartialEq)]
struct Options {
    from_headers: bool,
    sender: Option<String>,
    full_name: Option<String>,
    ignore_dots: bool,
    recipients: Vec<String>,
}

/// Why a sendmail command line or message is refused (exit 64, EX_USAGE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `-f` or `-F` at the end of the line.
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    /// A `-b` mode other than `-bm` (delivery).
    #[error("mode {0} is not supported (only -bm, delivery)")]
    Mode(String),
    /// An option sendmail does not have.
    #[error("unknown option {0}")]
    Unknown(String),
    /// Neither arguments nor `-t` headers name a recipient.
    #[error("no recipients (give addresses as arguments or use -t)")]
    NoRecipients,
}

fn parse_args(args: &[String]) -> Result<Options, UsageError> {
    let mut o = Options::default();
    let mut i = 0;
    let take = |i: &mut usize, inline: &str, flag: &'static str| -> Result<String, UsageError> {
        if !inline.is_empty() {
            return Ok(inline.to_string());
        }
        *i += 1;
        args.get(*i).cloned().ok_or(UsageError::MissingValue(flag))
    };
    let mut only_rcpts = false;
    while i < args.len() {
        let a = &args[i];
        if only_rcpts || !a.starts_with('-') || a == "-" {
            o.recipients.push(a.clone());
        } else if a == "--" {
            only_rcpts = true;
        } else if a == "-t" {
            o.from_headers = true;
        } else if a == "-i" || a == "-oi" {
            o.ignore_dots = true;
        } else if let Some(v) = a.strip_prefix("-f").or_else(|| a.strip_prefix("-r")) {
            o.sender = Some(take(&mut i, v, "-f")?);
        } else if let Some(v) = a.strip_prefix("-F") {
            o.full_name = Some(take(&mut i, v, "-F")?);
        } else if a.starts_with("-o")
            || a.starts_with("-B")
            || a.starts_with("-e")
            || a == "-v"
            || a.starts_with("-X")
            || a == "-bm"
            || a == "-U"
        {
            // Accepted and ignored, as qmail's sendmail does.
        } else if a.starts_with("-b") {
            return Err(UsageError::Mode(a.clone()));
        } else {
            return Err(UsageError::Unknown(a.clone()));
        }
        i += 1;
    }
    Ok(o)
}

/// Runs the sendmail entry; returns the exit code.
pub fn main(paths: &Paths, args: &[String]) -> i32 {
    let opts = match parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return EX_USAGE;
        }
    };
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut raw) {
        eprintln!("sendmail: read error: {e}");
        return EX_TEMPFAIL;
    }
    match build(paths, &opts, raw) {
        Err(e) => {
            eprintln!("sendmail: {e}");
            EX_USAGE
        }
        Ok((env, body)) => {
            let result =
                inject::choose_queue(paths).and_then(|q| inject::write_drop(&q.dir, &env, &body));
            match result {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("sendmail: {e}");
                    if e.is_temporary() {
                        EX_TEMPFAIL
                    } else {
                        EX_SOFTWARE
                    }
                }
            }
        }
    }
}

fn default_sender(paths: &Paths) -> String {
    let user = std::env::var("MAILUSER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let host = std::env::var("MAILHOST").ok().unwrap_or_else(|| {
        paths
            .control
            .string("me")
            .ok()
            .flatten()
            .unwrap_or_else(control::env::system_hostname)
    });
    format!("{user}@{host}")
}

/// Builds the envelope and the message to queue (headers completed).
fn build(paths: &Paths, o: &Options, raw: Vec<u8>) -> Result<(Envelope, Vec<u8>), UsageError> {
    // Normalise line ends to LF as qmail stores messages, and honour the
    // lone-dot terminator unless -i.
    let text = raw;
    let mut lines: Vec<&[u8]> = Vec::new();
    for l in text.split_inclusive(|&b| b == b'\n') {
        let bare = l.strip_suffix(b"\n").unwrap_or(l);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if !o.ignore_dots && bare == b"." {
            break;
        }
        lines.push(bare);
    }
    let split = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    let (head, body) = lines.split_at(split);
    // Unfold header lines into (name, full text) groups.
    let mut headers: Vec<Vec<u8>> = Vec::new();
    for l in head {
        if (l.starts_with(b" ") || l.starts_with(b"\t")) && !headers.is_empty() {
            let last = headers.last_mut().expect("non-empty");
            last.push(b'\n');
            last.extend_from_slice(l);
        } else {
            headers.push(l.to_vec());
        }
    }
    let name_of = |h: &[u8]| -> String {
        let end = h.iter().position(|&b| b == b':').unwrap_or(0);
        String::from_utf8_lossy(&h[..end])
            .trim()
            .to_ascii_lowercase()
    };
    let sender = o.sender.clone().unwrap_or_else(|| default_sender(paths));
    let mut recipients = o.recipients.clone();
    if o.from_headers {
        for h in &headers {
            if matches!(name_of(h).as_str(), "to" | "cc" | "bcc") {
                let value = &h[h.iter().position(|&b| b == b':').unwrap_or(0) + 1..];
                recipients.extend(addresses(&String::from_utf8_lossy(value)));
            }
        }
    }
    if recipients.is_empty() {
        return Err(UsageError::NoRecipients);
    }
    let mut out = Vec::with_capacity(text.len() + 256);
    let has = |n: &str| headers.iter().any(|h| name_of(h) == n);
    if !has("from") {
        let from = match &o.full_name {
            Some(n) => format!("From: {n} <{sender}>\n"),
            None => format!("From: {sender}\n"),
        };
        out.extend_from_slice(from.as_bytes());
    }
    if !has("date") {
        out.extend_from_slice(
            format!(
                "Date: {}\n",
                delivery::bounce::rfc5322_date_of(std::time::SystemTime::now())
            )
            .as_bytes(),
        );
    }
    if !has("message-id") {
        let id = format!(
            "Message-ID: <{}.{}.indimail@{}>\n",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id(),
            sender.rsplit('@').next().unwrap_or("localhost")
        );
        out.extend_from_slice(id.as_bytes());
    }
    for h in &headers {
        if name_of(h) == "bcc" {
            continue;
        }
        out.extend_from_slice(h);
        out.push(b'\n');
    }
    for l in body {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    Ok((Envelope { sender, recipients }, out))
}

/// Addresses in a header value: `a@b, "N" <c@d>, e@f (comment)`.
fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0, false, String::new());
    let mut flush = |cur: &mut String| {
        let t = cur.trim();
        let a = match (t.rfind('<'), t.rfind('>')) {
            (Some(s), Some(e)) if s < e => t[s + 1..e].trim(),
            _ => t,
        };
        if a.contains('@') {
            out.push(a.to_string());
        }
        cur.clear();
    };
    for c in value.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            ',' if !quoted && depth == 0 => flush(&mut cur),
            _ if depth > 0 => {}
            _ => cur.push(c),
        }
    }
    flush(&mut cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&s(&["-t", "-oi", "-fme@x", "-F", "Me", "-odb", "a@b"])).unwrap();
        assert!(o.from_headers && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("me@x"));
        assert_eq!(o.full_name.as_deref(), Some("Me"));
        assert_eq!(o.recipients, vec!["a@b"]);
        assert!(parse_args(&s(&["-q"])).is_err());
        assert!(parse_args(&s(&["-f"])).is_err());
        assert!(parse_args(&s(&["-bp"])).is_err());
    }

    #[test]
    fn header_addresses() {
        assert_eq!(
            addresses(r#"a@b, "Last, First" <c@d>, e@f (x, y)"#),
            vec!["a@b", "c@d", "e@f"]
        );
    }

    #[test]
    fn builds_headers_and_strips_bcc() {
        let paths = Paths::resolve(Some(std::path::Path::new("/nonexistent-home")));
        let o = parse_args(&s(&["-t", "-f", "s@x"])).unwrap();
        let (env, msg) = build(
            &paths,
            &o,
            b"To: a@b\r\nBcc: hidden@c\r\nSubject: t\r\n\r\nhi\r\n.\r\nafter\r\n".to_vec(),
        )
        .unwrap();
        assert_eq!(env.recipients, vec!["a@b", "hidden@c"]);
        let m = String::from_utf8(msg).unwrap();
        assert!(m.starts_with("From: s@x\nDate: "));
        assert!(m.contains("Message-ID: <"));
        assert!(!m.contains("hidden"));
        assert!(m.ends_with("Subject: t\n\nhi\n"), "{m}");
    }
}
