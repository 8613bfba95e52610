//! Bounces: RFC 3464 delivery status notifications in the words of
//! qmail-send's QSBMF text, and the decision of who gets one.
//!
//! The engine collects the permanent failures of a message (qmail's
//! `bounce/id`), calls [`decide`] and [`build`], and injects the result
//! with the envelope sender and recipients given here. Nothing here
//! touches the queue.

use crate::Outcome;

/// Bounce settings (control files of the same names, spec 3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceConfig {
    /// `bouncehost` (default: `me`): host in From and the QSBMF greeting.
    pub bouncehost: String,
    /// `bouncefrom` (default `MAILER-DAEMON`).
    pub bouncefrom: String,
    /// `bouncesubject` (default `failure notice`).
    pub bouncesubject: String,
    /// `doublebouncesubject` (default `failure notice`).
    pub doublebouncesubject: String,
    /// `doublebounceto` (default `postmaster`); blank or containing `@`
    /// discards double bounces.
    pub doublebounceto: String,
    /// `doublebouncehost` (default: `me`).
    pub doublebouncehost: String,
    /// `bouncemaxbytes` (default 50000): most bytes of the original enclosed.
    pub bouncemaxbytes: usize,
    /// `bouncemessage`: replaces the QSBMF greeting paragraph when set.
    pub bouncemessage: Option<String>,
}

impl BounceConfig {
    /// Defaults for a host whose control `me` is `me`.
    pub fn new(me: &str) -> BounceConfig {
        BounceConfig {
            bouncehost: me.into(),
            bouncefrom: "MAILER-DAEMON".into(),
            bouncesubject: "failure notice".into(),
            doublebouncesubject: "failure notice".into(),
            doublebounceto: "postmaster".into(),
            doublebouncehost: me.into(),
            bouncemaxbytes: 50_000,
            bouncemessage: None,
        }
    }
}

/// The envelope sender of a double bounce (qmail's `#@[]`): an address no
/// one can reply to, so a failed double bounce is recognised and dropped.
pub const DOUBLE_BOUNCE_SENDER: &str = "#@[]";

/// What to do with the permanent failures of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BounceDecision {
    /// Bounce to the original sender, with the null envelope sender.
    Bounce {
        /// The original envelope sender.
        to: String,
    },
    /// The failed message was itself a bounce: tell the postmaster, with
    /// envelope sender [`DOUBLE_BOUNCE_SENDER`].
    DoubleBounce {
        /// `doublebounceto@doublebouncehost`.
        to: String,
    },
    /// A failed double bounce, or double bounces disabled: discard.
    Drop,
}

/// Decides the bounce for a message whose envelope sender is `sender`.
pub fn decide(cfg: &BounceConfig, sender: &str) -> BounceDecision {
    if sender == DOUBLE_BOUNCE_SENDER {
        return BounceDecision::Drop;
    }
    if !sender.is_empty() {
        return BounceDecision::Bounce {
            to: sender.to_string(),
        };
    }
    let to = cfg.doublebounceto.trim();
    if to.is_empty() || to.contains('@') {
        return BounceDecision::Drop;
    }
    BounceDecision::DoubleBounce {
        to: format!("{to}@{}", cfg.doublebouncehost),
    }
}

/// One failed (or delayed) recipient for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The original recipient.
    pub recipient: String,
    /// The reason: remote reply text or local error.
    pub reason: String,
    /// The remote host that answered, when there was one.
    pub remote_mta: Option<String>,
}

/// A message ready to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// Envelope sender: empty for a bounce, `#@[]` for a double bounce.
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// The message, LF line ends (queue form).
    pub message: Vec<u8>,
}

/// Facts about the original message.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Its envelope sender.
    pub sender: &'a str,
    /// Its arrival time (birth), seconds since the epoch.
    pub arrival: u64,
    /// Its queue id, used in the boundary and Message-ID.
    pub id: &'a str,
    /// The message itself.
    pub message: &'a [u8],
}

/// Builds the failure DSN for `decision`; `None` for [`BounceDecision::Drop`].
pub fn build(
    cfg: &BounceConfig,
    decision: &BounceDecision,
    original: Original<'_>,
    failed: &[FailedRecipient],
    now: u64,
) -> Option<Bounce> {
    let (sender, to, subject, double) = match decision {
        BounceDecision::Drop => return None,
        BounceDecision::Bounce { to } => (String::new(), to.clone(), &cfg.bouncesubject, false),
        BounceDecision::DoubleBounce { to } => (
            DOUBLE_BOUNCE_SENDER.to_string(),
            to.clone(),
            &cfg.doublebouncesubject,
            true,
        ),
    };
    let intro = match &cfg.bouncemessage {
        Some(m) => m.trim_end().to_string(),
        None if double => format!(
            "Hi. This is the qmail-send program at {}.\n\
             I tried to deliver a bounce message to this address, but the bounce bounced!",
            cfg.bouncehost
        ),
        None => format!(
            "Hi. This is the qmail-send program at {}.\n\
             I'm afraid I wasn't able to deliver your message to the following addresses.\n\
             This is a permanent error; I've given up. Sorry it didn't work out.",
            cfg.bouncehost
        ),
    };
    Some(Bounce {
        sender,
        recipients: vec![to.clone()],
        message: render(cfg, &to, subject, &intro, "failed", original, failed, now),
    })
}

/// Builds a delay warning (Action: delayed) to the original sender, or
/// `None` for the null sender (never warn about bounces).
pub fn build_delay_warning(
    cfg: &BounceConfig,
    original: Original<'_>,
    delayed: &[FailedRecipient],
    now: u64,
) -> Option<Bounce> {
    if original.sender.is_empty() || original.sender == DOUBLE_BOUNCE_SENDER {
        return None;
    }
    let intro = format!(
        "Hi. This is the qmail-send program at {}.\n\
         Your message has not been delivered yet to the following addresses.\n\
         This is a temporary problem; I'm still trying. You do not need to resend it.",
        cfg.bouncehost
    );
    let to = original.sender.to_string();
    Some(Bounce {
        sender: String::new(),
        recipients: vec![to.clone()],
        message: render(
            cfg,
            &to,
            "delivery delayed",
            &intro,
            "delayed",
            original,
            delayed,
            now,
        ),
    })
}

/// The DSN `Status` for a reason: an RFC 3463 code written in the text
/// (`5.1.1` after an SMTP code, or qmail's `#5.1.1`), else the class from
/// the SMTP code, else `default_class.0.0`.
pub fn status_code(reason: &str, default_class: u8) -> String {
    for word in reason.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        let w = word.trim_start_matches('#');
        let parts: Vec<&str> = w.split('.').collect();
        if parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return w.to_string();
        }
    }
    let r = reason.trim_start();
    match r.as_bytes().first() {
        Some(c @ (b'4' | b'5'))
            if r.len() >= 3 && r.as_bytes()[..3].iter().all(u8::is_ascii_digit) =>
        {
            format!("{}.0.0", *c as char)
        }
        _ => format!("{default_class}.0.0"),
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    cfg: &BounceConfig,
    to: &str,
    subject: &str,
    intro: &str,
    action: &str,
    original: Original<'_>,
    failed: &[FailedRecipient],
    now: u64,
) -> Vec<u8> {
    let default_class = if action == "failed" { 5 } else { 4 };
    let mut boundary = format!("{}{}{}", original.arrival, cfg.bouncehost, original.id);
    while contains(original.message, boundary.as_bytes()) {
        boundary.push('_');
    }
    let mut m = String::new();
    m.push_str(&format!("Date: {}\n", rfc5322_date(now)));
    m.push_str(&format!("From: {}@{}\n", cfg.bouncefrom, cfg.bouncehost));
    m.push_str(&format!("To: {}\n", if to.is_empty() { "<>" } else { to }));
    m.push_str(&format!("Subject: {subject}\n"));
    m.push_str(&format!(
        "Message-ID: <{}.{}.bounce@{}>\n",
        now, original.id, cfg.bouncehost
    ));
    if let Some(f) = failed.first() {
        m.push_str(&format!("X-Bounced-Address: {}\n", one_line(&f.recipient)));
    }
    m.push_str("Auto-Submitted: auto-replied\n");
    m.push_str("MIME-Version: 1.0\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n\n"
    ));
    m.push_str("This is a MIME-formatted message.\n\n");

    // Human part (QSBMF).
    m.push_str(&format!("--{boundary}\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"));
    m.push_str(intro);
    m.push_str("\n\n");
    for f in failed {
        m.push_str(&format!("<{}>:\n", one_line(&f.recipient)));
        // QSBMF: a blank line ends a report, so embedded ones become "/".
        for line in f.reason.lines() {
            m.push_str(if line.trim().is_empty() { "/" } else { line });
            m.push('\n');
        }
        m.push('\n');
    }
    m.push_str("--- Enclosed is a copy of the message.\n\n");

    // Machine part (RFC 3464 section 2).
    m.push_str(&format!(
        "--{boundary}\nContent-Type: message/delivery-status\n\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {}\n", cfg.bouncehost));
    m.push_str(&format!(
        "Arrival-Date: {}\n",
        rfc5322_date(original.arrival)
    ));
    for f in failed {
        m.push('\n');
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\n",
            one_line(&f.recipient)
        ));
        m.push_str(&format!("Action: {action}\n"));
        m.push_str(&format!(
            "Status: {}\n",
            status_code(&f.reason, default_class)
        ));
        if let Some(h) = &f.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {}\n", one_line(h)));
        }
        let reason = one_line(&f.reason);
        match smtp_reply_in(&reason) {
            Some(reply) => m.push_str(&format!("Diagnostic-Code: smtp; {reply}\n")),
            None => m.push_str(&format!("Diagnostic-Code: x-unix; {reason}\n")),
        }
        if action == "delayed" {
            m.push_str(&format!("Last-Attempt-Date: {}\n", rfc5322_date(now)));
        }
    }
    m.push('\n');

    // The original, headed by its Return-Path, truncated to bouncemaxbytes.
    let mut out = m.into_bytes();
    let mut copy = format!("Return-Path: <{}>\n", one_line(original.sender)).into_bytes();
    let (body, cut) = truncate(original.message, cfg.bouncemaxbytes);
    copy.extend_from_slice(body);
    let header_only = cut && !contains(body, b"\n\n") && !body.starts_with(b"\n");
    let ctype = if header_only {
        "text/rfc822-headers"
    } else {
        "message/rfc822"
    };
    out.extend_from_slice(format!("--{boundary}\nContent-Type: {ctype}\n\n").as_bytes());
    out.extend_from_slice(&copy);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    if cut {
        out.extend_from_slice(b"\n--- End of message stripped.\n");
    }
    out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    out
}

/// The SMTP reply inside a remote report: the text itself when it starts
/// with a reply code, or what follows the last `said: ` (the wording of
/// the remote agent's reports).
fn smtp_reply_in(reason: &str) -> Option<&str> {
    let is_reply = |s: &str| {
        let b = s.as_bytes();
        b.len() >= 3
            && (b'2'..=b'5').contains(&b[0])
            && b[1..3].iter().all(u8::is_ascii_digit)
            && matches!(b.get(3), None | Some(b' ') | Some(b'-'))
    };
    if is_reply(reason) {
        return Some(reason);
    }
    let i = reason.rfind("said: ")?;
    let rest = &reason[i + 6..];
    is_reply(rest).then_some(rest)
}

fn truncate(msg: &[u8], max: usize) -> (&[u8], bool) {
    if msg.len() <= max {
        return (msg, false);
    }
    // Cut at a line end so the enclosed copy has no half line.
    let head = &msg[..max];
    match head.iter().rposition(|&b| b == b'\n') {
        Some(i) => (&msg[..=i], true),
        None => (head, true),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The outcomes that belong in a failure report (permanent ones).
pub fn permanent_failures<'a>(
    results: impl IntoIterator<Item = (&'a str, &'a Outcome)>,
) -> Vec<FailedRecipient> {
    results
        .into_iter()
        .filter_map(|(r, o)| match o {
            Outcome::Permanent(why) => Some(FailedRecipient {
                recipient: r.to_string(),
                reason: why.clone(),
                remote_mta: None,
            }),
            _ => None,
        })
        .collect()
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31) (Howard Hinnant's
/// civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn parts(t: u64) -> (&'static str, i64, &'static str, u32, u64, u64, u64) {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let (y, m, d) = civil(days);
    (
        DAYS[(days % 7) as usize],
        y,
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
    )
}

/// RFC 5322 date in UTC: `Thu, 01 Jan 1970 00:00:00 +0000`.
pub fn rfc5322_date(t: u64) -> String {
    let (wd, y, mon, d, h, mi, s) = parts(t);
    format!("{wd}, {d:02} {mon} {y} {h:02}:{mi:02}:{s:02} +0000")
}

/// Appends [`rfc5322_date`] of now, formatted once per second per thread
/// (a Received line is written for every message).
pub fn push_rfc5322_date_now(out: &mut String) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            *last = (secs, rfc5322_date(secs));
        }
        out.push_str(&last.1);
    });
}

/// [`rfc5322_date`] of a clock reading (the epoch for one before it).
pub fn rfc5322_date_of(t: std::time::SystemTime) -> String {
    rfc5322_date(
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// ctime(3)-style UTC date for mbox `From ` lines: `Thu Jan  1 00:00:00 1970`.
pub fn ctime_utc(t: u64) -> String {
    let (wd, y, mon, d, h, mi, s) = parts(t);
    format!("{wd} {mon} {d:>2} {h:02}:{mi:02}:{s:02} {y}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(ctime_utc(0), "Thu Jan  1 00:00:00 1970");
    }

    #[test]
    fn statuses() {
        assert_eq!(status_code("550 5.1.1 <x>: no such user", 5), "5.1.1");
        assert_eq!(
            status_code("Sorry, no mailbox here by that name. (#5.1.1)", 5),
            "5.1.1"
        );
        assert_eq!(status_code("552 mailbox full", 5), "5.0.0");
        assert_eq!(status_code("program said no", 5), "5.0.0");
        assert_eq!(status_code("451 try later", 4), "4.0.0");
        assert_eq!(status_code("version 1.2.3 failed", 5), "5.0.0");
    }

    #[test]
    fn decisions() {
        let c = BounceConfig::new("mx.example");
        assert_eq!(
            decide(&c, "a@b"),
            BounceDecision::Bounce { to: "a@b".into() }
        );
        assert_eq!(
            decide(&c, ""),
            BounceDecision::DoubleBounce {
                to: "postmaster@mx.example".into()
            }
        );
        assert_eq!(decide(&c, DOUBLE_BOUNCE_SENDER), BounceDecision::Drop);
        let mut c2 = c.clone();
        c2.doublebounceto = "x@y".into();
        assert_eq!(decide(&c2, ""), BounceDecision::Drop);
        c2.doublebounceto = " ".into();
        assert_eq!(decide(&c2, ""), BounceDecision::Drop);
    }

    #[test]
    fn truncation_at_line() {
        assert_eq!(truncate(b"abc\ndef\n", 100), (&b"abc\ndef\n"[..], false));
        assert_eq!(truncate(b"abc\ndef\n", 6), (&b"abc\n"[..], true));
    }
}
