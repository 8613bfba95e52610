//! The autoresponder / vacation of local users (spec 9.3, RFC 3834).
//!
//! A mailbox whose home holds `.vacation.msg` answers mail with that text:
//! the reply has a null envelope sender, `Auto-Submitted: auto-replied`,
//! `In-Reply-To:` and `References:` naming the original. No reply goes to
//! a null sender, MAILER-DAEMON or list-owner addresses, mail that is
//! itself automatic (`Auto-Submitted:` other than `no`), list mail
//! (`List-*:` fields), bulk mail (`Precedence: bulk|list|junk`), spam
//! (`X-Bogosity: Yes` or `Spam`), or mail not addressed to the user in
//! `To:`/`Cc:`/`Resent-To:`/`Resent-Cc:` (a Bcc or a list); and at most one
//! per sender per interval, remembered in `.vacation.dir/<sender>`.
//!
//! The message file: an optional first line `Subject: ...`, then the reply
//! text. `%S` is replaced by the original subject, `%F` by its `From:`,
//! `%t` by the recipient, `%%` by `%`. Without a subject line the reply's
//! subject is `Auto: <original subject>`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::dkim::header_value;

/// The message file in the user's home directory.
pub const MESSAGE_FILE: &str = ".vacation.msg";
/// The directory (in the home) remembering whom was answered when.
pub const RATE_DIR: &str = ".vacation.dir";
/// One reply per sender per this many seconds by default (autoresponder's
/// `-t`, a week).
pub const DEFAULT_INTERVAL: u64 = 604_800;

/// Why a message gets no automatic reply (`None` from [`refusal`]: reply).
pub fn refusal(sender: &str, recipient: &str, message: &[u8]) -> Option<&'static str> {
    let s = sender.to_ascii_lowercase();
    let local = s.rsplit_once('@').map_or(s.as_str(), |(l, _)| l);
    if s.is_empty() || s == "#@[]" {
        return Some("null sender");
    }
    if local == "mailer-daemon"
        || local == "postmaster"
        || local.starts_with("owner-")
        || local.ends_with("-request")
        || local.starts_with("bounce")
        || local.contains("-bounces")
    {
        return Some("sender is a robot or list address");
    }
    if header_value(message, "Auto-Submitted").is_some_and(|v| {
        !v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("no")
    }) {
        return Some("auto-submitted");
    }
    if ["List-Id", "List-Post", "List-Unsubscribe", "List-Help"]
        .iter()
        .any(|h| header_value(message, h).is_some())
    {
        return Some("list mail");
    }
    if header_value(message, "Precedence").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "bulk" | "list" | "junk"
        )
    }) {
        return Some("bulk mail");
    }
    if header_value(message, "X-Bogosity").is_some_and(|v| {
        let v = v.trim_start().to_ascii_lowercase();
        v.starts_with("yes") || v.starts_with("spam")
    }) {
        return Some("spam");
    }
    let rcpt = recipient.to_ascii_lowercase();
    let addressed = ["To", "Cc", "Resent-To", "Resent-Cc"]
        .iter()
        .any(|h| header_value(message, h).is_some_and(|v| v.to_ascii_lowercase().contains(&rcpt)));
    if !addressed {
        return Some("recipient not in To/Cc");
    }
    None
}

/// Whether `sender` may be answered now (no reply within `interval`
/// seconds); when so, notes the reply in `dir`. A state file that cannot
/// be written means no reply (never a reply storm).
pub fn rate_allows(dir: &Path, sender: &str, interval: u64, now: SystemTime) -> bool {
    let name: String = sender
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_+=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        return false;
    }
    let path = dir.join(name);
    if let Ok(m) = std::fs::metadata(&path).and_then(|m| m.modified()) {
        if now
            .duration_since(m)
            .is_ok_and(|age| age < Duration::from_secs(interval))
            || m > now
        {
            return false;
        }
    }
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    match std::fs::File::create(&path) {
        Ok(f) => f.set_modified(now).is_ok(),
        Err(_) => false,
    }
}

/// The reply (LF line ends) from `recipient` to `sender` for `message`,
/// with the message file's `template`; `date` is the reply's `Date:`
/// value and `message_id` its `Message-ID:` (with angle brackets).
pub fn compose(
    template: &str,
    sender: &str,
    recipient: &str,
    message: &[u8],
    date: &str,
    message_id: &str,
) -> Vec<u8> {
    let clean = |v: Option<String>| v.unwrap_or_default().replace(['\r', '\n'], " ");
    let subject = clean(header_value(message, "Subject"));
    let from = clean(header_value(message, "From"));
    let orig_id = clean(header_value(message, "Message-ID"));
    let refs = clean(header_value(message, "References"));
    let fill = |t: &str| {
        let mut out = String::with_capacity(t.len());
        let mut chars = t.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('S') => out.push_str(&subject),
                Some('F') => out.push_str(&from),
                Some('t') => out.push_str(recipient),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            }
        }
        out
    };
    let template = template.replace("\r\n", "\n");
    let (subj, body) = match template.strip_prefix("Subject:") {
        Some(rest) => {
            let (line, body) = rest.split_once('\n').unwrap_or((rest, ""));
            let body = body.strip_prefix('\n').unwrap_or(body);
            (fill(line.trim()).replace(['\r', '\n'], " "), fill(body))
        }
        None => (format!("Auto: {subject}"), fill(&template)),
    };
    let mut h = format!(
        "From: {recipient}\nTo: {sender}\nSubject: {subj}\nDate: {date}\nMessage-ID: {message_id}\nAuto-Submitted: auto-replied\n"
    );
    if !orig_id.is_empty() {
        h.push_str(&format!("In-Reply-To: {orig_id}\n"));
        let refs = if refs.is_empty() {
            orig_id.clone()
        } else {
            format!("{refs} {orig_id}")
        };
        h.push_str(&format!("References: {refs}\n"));
    }
    h.push_str("MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n");
    h.push_str(&body);
    if !h.ends_with('\n') {
        h.push('\n');
    }
    h.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"From: Bob <bob@x.test>\nTo: alice@example.com\nSubject: hello\nMessage-ID: <m1@x>\nReferences: <m0@x>\n\nhi\n";

    #[test]
    fn who_gets_a_reply() {
        assert_eq!(refusal("bob@x.test", "alice@example.com", MSG), None);
        assert!(refusal("", "alice@example.com", MSG).is_some());
        assert!(refusal("MAILER-DAEMON@x.test", "alice@example.com", MSG).is_some());
        assert!(refusal("list-request@x.test", "alice@example.com", MSG).is_some());
        assert!(refusal("bob@x.test", "carol@example.com", MSG).is_some());
        for extra in [
            "Auto-Submitted: auto-generated\n",
            "List-Id: <l.x.test>\n",
            "Precedence: Bulk\n",
            "X-Bogosity: Yes, tests=bogofilter\n",
        ] {
            let m = [extra.as_bytes(), MSG].concat();
            assert!(
                refusal("bob@x.test", "alice@example.com", &m).is_some(),
                "{extra}"
            );
        }
        let m = [b"Auto-Submitted: no\n".as_slice(), MSG].concat();
        assert_eq!(refusal("bob@x.test", "alice@example.com", &m), None);
    }

    #[test]
    fn reply_headers_and_rate() {
        let r = compose(
            "Subject: Away: %S\n\nI am away (%t). 100%%\n",
            "bob@x.test",
            "alice@example.com",
            MSG,
            "Mon, 1 Jan 2024 00:00:00 +0000",
            "<r1@me>",
        );
        let r = String::from_utf8(r).unwrap();
        assert!(r.contains("\nSubject: Away: hello\n"), "{r}");
        assert!(r.contains("\nAuto-Submitted: auto-replied\n"));
        assert!(r.contains("\nIn-Reply-To: <m1@x>\nReferences: <m0@x> <m1@x>\n"));
        assert!(
            r.ends_with("\n\nI am away (alice@example.com). 100%\n"),
            "{r}"
        );
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert!(rate_allows(d.path(), "bob@x.test", 60, now));
        assert!(!rate_allows(d.path(), "Bob@x.test", 60, now));
        assert!(rate_allows(
            d.path(),
            "bob@x.test",
            60,
            now + Duration::from_secs(61)
        ));
        assert!(rate_allows(d.path(), "carol@x.test", 60, now));
    }
}
