//! A Maildir as a POP3 drop (RFC 1939 on the Maildir layout): listing with new mail moved
//! to `cur/` (what every Maildir reader does on access), sizes from the file name,
//! the mailbox lock, and TOP's line cut for the wire (the dot-stuffing is smtp_proto's).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// One message of the drop.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    /// Its file in `cur/`.
    pub(crate) path: PathBuf,
    /// The UIDL: the base name before `:2,` (unique by Maildir's naming), made printable.
    pub(crate) uid: String,
    /// Size in octets: `,W=` (CRLF size) or `,S=` from the name, else the file size.
    pub(crate) size: u64,
    /// Marked by DELE.
    pub(crate) deleted: bool,
}

/// Lists the drop, moving `new/` entries to `cur/` (with the `:2,` info suffix). Returns
/// the messages in delivery order and whether anything was moved (the caller fsyncs the
/// directories then).
pub(crate) fn scan(maildir: &Path) -> io::Result<(Vec<Message>, bool)> {
    let cur = maildir.join("cur");
    let new = maildir.join("new");
    let mut moved = false;
    match std::fs::read_dir(&new) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let target = if name.contains(":2,") {
                    cur.join(name)
                } else {
                    cur.join(format!("{name}:2,"))
                };
                match std::fs::rename(e.path(), &target) {
                    Ok(()) => moved = true,
                    // Another reader moved it first.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut msgs = Vec::new();
    for e in std::fs::read_dir(&cur)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let base = name.split(':').next().unwrap_or(name);
        let size = match size_from_name(base) {
            Some(s) => s,
            None => match e.metadata() {
                Ok(m) if m.is_file() => m.len(),
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            },
        };
        msgs.push(Message {
            path: e.path(),
            uid: uid_of(base),
            size,
            deleted: false,
        });
    }
    // Maildir names start with the delivery time in seconds: numeric order of that, then
    // the name, is delivery order and stable across sessions.
    msgs.sort_by(|a, b| {
        let key = |m: &Message| {
            let t: u64 = m
                .uid
                .split('.')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(u64::MAX);
            (t, m.uid.clone())
        };
        key(a).cmp(&key(b))
    });
    Ok((msgs, moved))
}

/// `,W=<n>` (size with CRLF line ends) or `,S=<n>` from a Maildir base name.
fn size_from_name(base: &str) -> Option<u64> {
    let field = |k: &str| {
        base.split(',')
            .skip(1)
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
    };
    field("W=").or_else(|| field("S="))
}

/// RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21..=0x7E. Maildir base names
/// normally are; anything else is replaced by a stable hash of it.
fn uid_of(base: &str) -> String {
    if !base.is_empty() && base.len() <= 70 && base.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return base.to_string();
    }
    // FNV-1a, 64 bit: stable across builds (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("x{h:016x}")
}

/// The per-process mailbox locks (one POP3 session per Maildir, across every shard).
fn locks() -> &'static Mutex<HashSet<PathBuf>> {
    static LOCKS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    LOCKS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Held while a session has the mailbox; released on drop.
#[derive(Debug)]
pub(crate) struct MailboxLock(PathBuf);

impl MailboxLock {
    /// `None` when another session holds it.
    pub(crate) fn try_lock(maildir: &Path) -> Option<MailboxLock> {
        let key = std::fs::canonicalize(maildir).unwrap_or_else(|_| maildir.to_path_buf());
        let fresh = locks()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        // Built only when taken: a dropped MailboxLock would release someone else's lock.
        fresh.then(|| MailboxLock(key))
    }
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        let mut set = locks().lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.0);
    }
}

/// TOP's cut (RFC 1939 §7): the header, the blank line after it and the first `body_lines`
/// lines of the body, fed in chunks of any size. What it lets through goes to the one
/// dot-stuffer, [`smtp_proto::DotStuffer`] (CRLF line ends, leading dots doubled).
#[derive(Debug, Clone)]
pub struct TopCut {
    body_lines: Option<u64>,
    at_line_start: bool,
    in_body: bool,
    header_line_empty: bool,
    done: bool,
}

impl TopCut {
    /// Whole message (`RETR`, `None`), or header plus `body_lines` lines (`TOP`).
    pub fn new(body_lines: Option<u64>) -> TopCut {
        TopCut {
            body_lines,
            at_line_start: true,
            in_body: false,
            header_line_empty: true,
            done: false,
        }
    }

    /// Whether the line limit has been reached (the rest of the file is not needed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The part of `chunk` to send.
    pub fn cut<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        if self.body_lines.is_none() || self.done {
            return if self.done { &[] } else { chunk };
        }
        for (i, &b) in chunk.iter().enumerate() {
            if self.at_line_start {
                if self.in_body {
                    if let Some(n) = self.body_lines.as_mut() {
                        if *n == 0 {
                            self.done = true;
                            return &chunk[..i];
                        }
                        *n -= 1;
                    }
                }
                self.header_line_empty = true;
                self.at_line_start = false;
            }
            if b == b'\n' {
                // The first empty line (CRLF-stored too) ends the header.
                self.in_body |= self.header_line_empty;
                self.at_line_start = true;
            } else if b != b'\r' {
                self.header_line_empty = false;
            }
        }
        chunk
    }
}

/// The whole POP3 wire form of `msg`, cut for TOP when `body_lines` is given.
pub fn dot_stuff(msg: &[u8], body_lines: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 32 + 8);
    let mut d = smtp_proto::DotStuffer::new();
    d.push(TopCut::new(body_lines).cut(msg), &mut out);
    d.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_and_crlf_at_every_split() {
        let msg = b"Subject: x\n.hidden: y\n\n.line\n..two\nend\r\nlast";
        let want = b"Subject: x\r\n..hidden: y\r\n\r\n..line\r\n...two\r\nend\r\nlast\r\n.\r\n";
        assert_eq!(dot_stuff(msg, None), want);
        for split in 0..=msg.len() {
            for top in [None, Some(1)] {
                let mut out = Vec::new();
                let (mut cut, mut d) = (TopCut::new(top), smtp_proto::DotStuffer::new());
                d.push(cut.cut(&msg[..split]), &mut out);
                d.push(cut.cut(&msg[split..]), &mut out);
                d.finish(&mut out);
                assert_eq!(out, dot_stuff(msg, top), "split at {split}");
            }
            assert_eq!(dot_stuff(msg, None), want);
        }
        assert_eq!(dot_stuff(b"", None), b".\r\n");
        assert_eq!(dot_stuff(b".\n", None), b"..\r\n.\r\n");
    }

    #[test]
    fn top_counts_body_lines() {
        let msg = b"A: 1\nB: 2\n\nl1\n.l2\nl3\n";
        assert_eq!(dot_stuff(msg, Some(0)), b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(
            dot_stuff(msg, Some(2)),
            b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
        );
        assert_eq!(dot_stuff(msg, Some(10)), dot_stuff(msg, None));
        // CRLF-stored header end counts as the blank line too.
        assert_eq!(
            dot_stuff(b"A: 1\r\n\r\nx\r\ny\r\n", Some(1)),
            b"A: 1\r\n\r\nx\r\n.\r\n"
        );
    }

    #[test]
    fn names_sizes_uids() {
        assert_eq!(size_from_name("1700000000.M1P2.host,S=1234"), Some(1234));
        assert_eq!(
            size_from_name("1700000000.M1P2.host,S=1234,W=1260"),
            Some(1260)
        );
        assert_eq!(size_from_name("1700000000.M1P2.host"), None);
        assert_eq!(
            uid_of("1700000000.M1P2.host,S=1"),
            "1700000000.M1P2.host,S=1"
        );
        let long = "x".repeat(80);
        assert_eq!(uid_of(&long).len(), 17);
        assert_eq!(uid_of(&long), uid_of(&long));
    }

    #[test]
    fn scan_moves_new_and_orders() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path();
        for d in ["new", "cur", "tmp"] {
            std::fs::create_dir(md.join(d)).unwrap();
        }
        std::fs::write(md.join("new/1700000002.M1P1.h,S=3"), "abc").unwrap();
        std::fs::write(md.join("cur/1700000001.M1P1.h:2,S"), "hello").unwrap();
        std::fs::write(md.join("new/.hidden"), "x").unwrap();
        let (msgs, moved) = scan(md).unwrap();
        assert!(moved);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].uid, "1700000001.M1P1.h");
        assert_eq!(msgs[0].size, 5);
        assert_eq!(msgs[1].size, 3);
        assert!(md.join("cur/1700000002.M1P1.h,S=3:2,").exists());
        let (_, moved) = scan(md).unwrap();
        assert!(!moved);
    }

    #[test]
    fn lock_is_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let a = MailboxLock::try_lock(t.path()).unwrap();
        assert!(MailboxLock::try_lock(t.path()).is_none());
        drop(a);
        assert!(MailboxLock::try_lock(t.path()).is_some());
    }
}
