//! The files IndiMail keeps beside the tables: control files rewritten atomically, Maildirs,
//! hashed user directories, renamed domain directories, vacation messages.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::LookupError;

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LookupError + '_ {
    move |e| LookupError::io(path, e)
}

/// Rewrite a control file atomically (temp file, fsync, rename, fsync dir).
pub(super) fn rewrite_lines(path: &Path, lines: &[String]) -> Result<(), LookupError> {
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
    }
    rewrite_file(path, &text)
}

/// Replace a file atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn rewrite_file(path: &Path, bytes: &[u8]) -> Result<(), LookupError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("tmp-indimail-rs");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// vmoduser `-l`: installs `message` as the mailbox's vacation reply
/// (`<home>/.vacation.msg`, owned like the home so delivery can read it) or,
/// with `None`, removes it and the record of senders already answered.
pub(crate) fn set_vacation(home: &Path, message: Option<&[u8]>) -> Result<(), LookupError> {
    let path = home.join(".vacation.msg");
    match message {
        Some(m) => {
            rewrite_file(&path, m)?;
            let md = std::fs::metadata(home).map_err(io_err(home))?;
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&path, Some(md.uid()), Some(md.gid())).map_err(io_err(&path))
        }
        None => {
            for p in [path, home.join(".vacation.dir")] {
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LookupError::io(&p, e)),
                }
            }
            Ok(())
        }
    }
}

pub(super) fn read_lines(path: &Path) -> Result<Vec<String>, LookupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(LookupError::io(path, e)),
    }
}

pub(super) fn read_value(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub(super) const HASH_ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The `<hashdir>` for the `n`-th user (0-based) of a domain: none for the first
/// `per_level` users, then one directory per `per_level` users named from the 62-character
/// alphabet, one to three levels deep (`x`, `x/y`, `x/y/z`).
pub fn hash_dir(n: u64, per_level: u64) -> Option<String> {
    let per_level = per_level.max(1);
    let slot = n / per_level;
    if slot == 0 {
        return None;
    }
    let mut k = slot - 1;
    let a = |i: u64| HASH_ALPHABET[(i % 62) as usize] as char;
    if k < 62 {
        return Some(a(k).to_string());
    }
    k -= 62;
    if k < 62 * 62 {
        return Some(format!("{}/{}", a(k / 62), a(k)));
    }
    k -= 62 * 62;
    Some(format!("{}/{}/{}", a(k / 3844), a(k / 62), a(k)))
}

pub(super) fn make_maildir(home: &Path) -> Result<(), LookupError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let maildir = home.join("Maildir");
    // New directories take the owner of the nearest one that exists: an
    // admin command run as root inside a home the server's (unprivileged)
    // user owns must not leave it mailboxes it cannot write (IndiMail's
    // tools chown to the indimail user the same way).
    let mut created = Vec::new();
    let mut owner = None;
    for a in maildir.ancestors() {
        match std::fs::metadata(a) {
            Ok(m) => {
                owner = Some((m.uid(), m.gid()));
                break;
            }
            Err(_) => created.push(a.to_path_buf()),
        }
    }
    for sub in ["cur", "new", "tmp"] {
        let p = maildir.join(sub);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(io_err(&p))?;
    }
    if let Some((uid, gid)) = owner {
        created.extend(["cur", "new", "tmp"].map(|s| maildir.join(s)));
        for p in &created {
            let differs = std::fs::metadata(p).is_ok_and(|m| m.uid() != uid || m.gid() != gid);
            if differs {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p))?;
            }
        }
    }
    // Make the new directory entries durable (admin answered "done").
    for p in [maildir.as_path(), home, home.parent().unwrap_or(home)] {
        std::fs::File::open(p)
            .and_then(|d| d.sync_all())
            .map_err(io_err(p))?;
    }
    Ok(())
}

pub(super) fn rename_path(from: &Path, to: &Path) -> Result<(), LookupError> {
    if to.exists() {
        return Err(LookupError::Refused(format!(
            "{} exists already",
            to.display()
        )));
    }
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).map_err(io_err(p))?;
    }
    std::fs::rename(from, to).map_err(io_err(from))
}

/// `dir` with its `<bucket>/<old>` component pair renamed to `<bucket>/<new>` (spec 4.3),
/// and the directory pair that has to move; `None` when the path is not of that form.
pub(super) fn renamed_domain_dir(
    dir: &Path,
    old: &str,
    new: &str,
) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let parts: Vec<_> = dir.components().collect();
    let i = (1..parts.len()).find(|&i| {
        parts[i].as_os_str() == old
            && ["A2E", "F2K", "L2P", "Q2S", "T2Zsym"]
                .iter()
                .any(|b| parts[i - 1].as_os_str() == *b)
    })?;
    let from: PathBuf = parts[..=i].iter().collect();
    let to = from.with_file_name(new);
    let rest: PathBuf = parts[i + 1..].iter().collect();
    Some((to.join(rest), from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_dirs_fill_levels() {
        assert_eq!(hash_dir(0, 100), None);
        assert_eq!(hash_dir(99, 100), None);
        assert_eq!(hash_dir(100, 100).as_deref(), Some("0"));
        assert_eq!(hash_dir(199, 100).as_deref(), Some("0"));
        assert_eq!(hash_dir(200, 100).as_deref(), Some("1"));
        assert_eq!(hash_dir(62 * 100, 100).as_deref(), Some("z"));
        assert_eq!(hash_dir(63 * 100, 100).as_deref(), Some("0/0"));
        assert_eq!(hash_dir(64 * 100, 100).as_deref(), Some("0/1"));
        assert_eq!(hash_dir((63 + 3844) * 100, 100).as_deref(), Some("0/0/0"));
        assert_eq!(hash_dir(5, 1).as_deref(), Some("4"));
    }
}
