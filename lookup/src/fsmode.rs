//! File modes of secrets: the user store holds password hashes (and `{CRAM}` clear text), so
//! it is created owner-only and tightened when found looser (an older release, a restore, a
//! hand copy with the umask's 0644).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The store file's mode.
pub const SECRET_FILE_MODE: u32 = 0o600;

/// Clears from `path`'s mode every permission bit outside `allowed` (e.g. `0o600`, `0o750`).
/// Returns `Ok(true)` when the mode changed, `Ok(false)` when it was tight already or the
/// path does not exist. A symbolic link is not followed: it may point at a file shared with
/// other software, whose mode is not ours to change.
pub fn restrict_mode(path: &Path, allowed: u32) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !allowed == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & allowed))?;
    Ok(true)
}

/// Creates `path` empty with `mode` if missing (so it never exists with the umask's bits),
/// then tightens it to `mode` if it was there with looser bits.
pub fn create_restricted(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => restrict_mode(path, mode).map(|_| ()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_and_tightens() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s");
        create_restricted(&f, 0o600).unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_restricted(&f, 0o600).unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(restrict_mode(d.path(), 0o750).unwrap());
        assert_eq!(mode(d.path()), 0o750);
        assert!(!restrict_mode(d.path(), 0o750).unwrap());
        // Tighter than allowed stays as it is.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(!restrict_mode(&f, 0o600).unwrap());
        assert_eq!(mode(&f), 0o400);
        assert!(!restrict_mode(&d.path().join("none"), 0o600).unwrap());
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!restrict_mode(&l, 0o600).unwrap(), "links are not followed");
    }
}
