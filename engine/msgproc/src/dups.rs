//! Duplicate eliminator (spec 9.2, IndiMail's `ELIMINATE_DUPS` in
//! vdelivermail / `ismaildup`).
//!
//! A message's key is the MD5 (32 hex digits) of its `Message-ID:` value,
//! or, when it has none, of its header block without the trace fields that
//! differ between two copies (`Received`, `Delivered-To`, `X-Delivered-To`,
//! `Return-Path`, `Received-SPF`, `Authentication-Results`). State is kept
//! per mailbox in `<Maildir>/dupmd5`, lines `unix_time md5`; lines older
//! than the window are dropped whenever the file is rewritten. State is
//! per Maildir, so it holds whichever shard delivers.

use std::io::Write;
use std::path::Path;

use md5::{Digest, Md5};

/// Default window (`ELIMINATE_DUPS_INT`), seconds.
pub const DEFAULT_WINDOW: u64 = 900;

const TRACE: [&str; 6] = [
    "received:",
    "delivered-to:",
    "x-delivered-to:",
    "return-path:",
    "received-spf:",
    "authentication-results:",
];

/// The duplicate key of `message` (queue form).
pub fn key(message: &[u8]) -> String {
    let mut h = Md5::new();
    match crate::dkim::header_value(message, "Message-ID").filter(|v| !v.is_empty()) {
        Some(id) => h.update(id.as_bytes()),
        None => {
            let mut skipping = false;
            for line in message.split_inclusive(|&b| b == b'\n') {
                let bare = line.strip_suffix(b"\n").unwrap_or(line);
                let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
                if bare.is_empty() {
                    break;
                }
                if matches!(bare.first(), Some(b' ' | b'\t')) {
                    if !skipping {
                        h.update(bare);
                    }
                    continue;
                }
                skipping = TRACE.iter().any(|t| {
                    bare.len() >= t.len() && bare[..t.len()].eq_ignore_ascii_case(t.as_bytes())
                });
                if !skipping {
                    h.update(bare);
                    h.update(b"\n");
                }
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `message` was already delivered to `maildir` within `window`
/// seconds of `now`; when not, it is recorded as delivered now.
pub fn seen_before(maildir: &Path, message: &[u8], window: u64, now: u64) -> std::io::Result<bool> {
    let k = key(message);
    let file = maildir.join("dupmd5");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut keep = String::with_capacity(text.len() + 48);
    let mut dup = false;
    for line in text.lines() {
        let Some((t, m)) = line.split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<u64>() else { continue };
        if t + window < now {
            continue;
        }
        if m == k {
            dup = true;
        }
        keep.push_str(line);
        keep.push('\n');
    }
    if !dup {
        keep.push_str(&format!("{now} {k}\n"));
    }
    let tmp = maildir.join(format!("dupmd5.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(keep.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &file)?;
    Ok(dup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_message_id_is_a_duplicate_within_the_window() {
        let d = tempfile::tempdir().unwrap();
        let a = b"Received: x\nMessage-ID: <1@x>\nSubject: a\n\nbody\n";
        let b = b"Received: y\nMessage-ID: <1@x>\nSubject: a\n\nbody\n";
        assert!(!seen_before(d.path(), a, 900, 1000).unwrap());
        assert!(seen_before(d.path(), b, 900, 1500).unwrap());
        // Outside the window: delivered again (and recorded anew).
        assert!(!seen_before(d.path(), a, 900, 3000).unwrap());
        let no_id1 = b"Received: one\nSubject: s\n\nx\n";
        let no_id2 = b"Received: two\n  folded\nSubject: s\n\ny\n";
        assert_eq!(key(no_id1), key(no_id2));
        assert_ne!(key(no_id1), key(b"Subject: t\n\nx\n"));
    }
}
