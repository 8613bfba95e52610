//! Running as root: `serve` binds its listeners (ports below 1024 need
//! root), then drops to an unprivileged user before it touches mail.
//!
//! Which user: `INDIMAIL_USER`, else the control file `user`, else a user
//! named `indimail` when one exists. Started as root with none of those,
//! `serve` refuses to start — it never opens a queue or a mailbox as root —
//! unless `INDIMAIL_ALLOW_ROOT=1` says so explicitly (tests, throw-away
//! setups; logged as a warning). A configured user with uid 0 is refused
//! the same way. Started as any other user, nothing changes.
//!
//! Before dropping, what the server writes is given to the user where it
//! belongs to someone else: `<home>` itself; every file of each queue
//! directory, `run/` and `db/` (a queue tool, `sendmail` or an import run
//! as root on a stopped server adds files there); the mailbox trees
//! (`domains/`, `mail/` or `BASE_PATH`) by directory, looked at down to 3
//! levels, so a mailbox a root admin command made since the last start is
//! found while a correctly owned store costs one `stat` per directory near
//! the top; and the server certificate and key (`servercert.pem`,
//! `serverkey.pem`) when they belong to root. Then supplementary groups are
//! set to the user's group, then the gid, then the uid; that root cannot be
//! regained is checked.
//!
//! Not covered: a mailbox directory deeper than 3 levels made by root
//! (e.g. a Maildir++ folder created by a root tool) is not found; files a
//! root tool writes inside an existing mailbox stay root's.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use queue_layout::Paths;
use queue_layout::QueueSpec;

/// Why the server user could not be decided on, given the files, or become.
#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    /// A name with a NUL byte.
    #[error("bad user name {0:?}")]
    BadName(String),
    /// The password database could not be asked.
    #[error("cannot look up user {name}: {source}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// getpwnam_r's error.
        source: std::io::Error,
    },
    /// `INDIMAIL_USER` or `control/user` names nobody.
    #[error("{origin}: no user named {name}")]
    NoSuchUser {
        /// Where the name came from.
        origin: &'static str,
        /// The name.
        name: String,
    },
    /// Started as root with no user to drop to.
    #[error(
        "refusing to run as root: name an unprivileged user in control/user or INDIMAIL_USER \
         (or create a user `indimail`); INDIMAIL_ALLOW_ROOT=1 runs as root anyway (not for production)"
    )]
    NoUser,
    /// The user named is root.
    #[error("refusing to run as root: user {0} has uid 0 (INDIMAIL_ALLOW_ROOT=1 overrides)")]
    UidZero(String),
    /// `control/user` could not be read.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// A file of the home could not be given to the user.
    #[error("{}: chown to {user}: {source}", path.display())]
    Chown {
        /// The file.
        path: std::path::PathBuf,
        /// The user.
        user: String,
        /// The error.
        source: std::io::Error,
    },
    /// A directory of the home could not be listed.
    #[error("{}: {source}", path.display())]
    List {
        /// The directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// setgroups, setgid or setuid failed (`what` names the call).
    #[error("{what}: {source}")]
    Drop {
        /// The call and its argument.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// setuid(0) still worked after the drop.
    #[error("still root after dropping privileges")]
    StillRoot,
}

/// The user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

/// Looks a user up in the password database.
pub fn lookup_user(name: &str) -> Result<Option<User>, PrivsError> {
    let cname = CString::new(name).map_err(|_| PrivsError::BadName(name.to_string()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r(3) with a NUL-terminated name, a caller-owned
    // passwd, a buffer of the stated length and a result pointer.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 {
        return Err(PrivsError::Lookup {
            name: name.to_string(),
            source: std::io::Error::from_raw_os_error(r),
        });
    }
    if result.is_null() {
        return Ok(None);
    }
    Ok(Some(User {
        name: name.to_string(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    }))
}

/// What a server started by `euid` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not root: run as is.
    AsIs,
    /// Drop to this user after binding.
    Drop(User),
    /// Stay root (explicit `INDIMAIL_ALLOW_ROOT=1`).
    StayRoot,
}

fn allow_root() -> bool {
    std::env::var("INDIMAIL_ALLOW_ROOT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Decides from the euid, `INDIMAIL_USER`, `control/user` and the password
/// database.
pub fn decide(paths: &Paths) -> Result<Decision, PrivsError> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Decision::AsIs);
    }
    let configured = match std::env::var("INDIMAIL_USER") {
        Ok(v) if !v.trim().is_empty() => Some((v.trim().to_string(), "INDIMAIL_USER")),
        _ => paths.control.string("user")?.map(|u| (u, "control/user")),
    };
    let user = match configured {
        Some((name, origin)) => match lookup_user(&name)? {
            Some(u) => u,
            None => return Err(PrivsError::NoSuchUser { origin, name }),
        },
        None => match lookup_user("indimail")? {
            Some(u) => u,
            None if allow_root() => return Ok(Decision::StayRoot),
            None => return Err(PrivsError::NoUser),
        },
    };
    if user.uid == 0 {
        if allow_root() {
            return Ok(Decision::StayRoot);
        }
        return Err(PrivsError::UidZero(user.name));
    }
    Ok(Decision::Drop(user))
}

fn chown(path: &Path, user: &User) -> Result<(), PrivsError> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).map_err(|source| {
        PrivsError::Chown {
            path: path.to_path_buf(),
            user: user.name.clone(),
            source,
        }
    })
}

/// How deep [`own_tree`] looks for directories of someone else's inside a
/// mailbox tree that is the user's: `mail/<hash>/<domain>/<user>` is 3
/// levels (a mailbox made by a root admin command after the last start).
const OWN_DEPTH: usize = 3;

/// Gives the tree at `path` to `user`: a directory (or file) that is not
/// the user's is given with everything under it; inside directories that
/// are, only directories down to `depth` levels are looked at (files too
/// when `files`), so a correctly owned mailbox tree costs one `stat` per
/// directory near its top.
fn own_tree(path: &Path, user: &User, depth: usize, files: bool) -> Result<(), PrivsError> {
    let mut stack = vec![(path.to_path_buf(), 0usize)];
    while let Some((p, level)) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.uid() != user.uid {
            give_all(&p, user)?;
            continue;
        }
        if meta.is_dir() && level < depth {
            let rd = std::fs::read_dir(&p).map_err(|source| PrivsError::List {
                path: p.clone(),
                source,
            })?;
            for e in rd.flatten() {
                if files || e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), level + 1));
                }
            }
        }
    }
    Ok(())
}

/// Gives `path` and everything under it to `user`.
fn give_all(path: &Path, user: &User) -> Result<(), PrivsError> {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        chown(&p, user)?;
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            let rd = std::fs::read_dir(&p).map_err(|source| PrivsError::List {
                path: p.clone(),
                source,
            })?;
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}

/// Makes the home writable by `user` (see the module docs).
pub fn prepare_ownership(
    paths: &Paths,
    queues: &[QueueSpec],
    user: &User,
) -> Result<(), PrivsError> {
    let home = &paths.home;
    if std::fs::metadata(home).is_ok_and(|m| m.uid() != user.uid) {
        chown(home, user)?;
    }
    for q in queues {
        // A queue base of its own (QUEUE_BASE elsewhere) must be reachable.
        if let Some(base) = q.dir.parent() {
            if base.exists() && std::fs::metadata(base).is_ok_and(|m| m.uid() != user.uid) {
                chown(base, user)?;
            }
        }
        // Every file: a queue tool or an import run as root on a stopped
        // server may have added segment, spill or drop files.
        own_tree(&q.dir, user, usize::MAX, true)?;
    }
    for d in ["queue", "run", "db"] {
        own_tree(&home.join(d), user, usize::MAX, true)?;
    }
    let mut trees: Vec<std::path::PathBuf> =
        ["domains", "mail"].iter().map(|d| home.join(d)).collect();
    // The mailboxes (BASE_PATH) and domain directories may live elsewhere.
    if let Ok(dc) = lookup::DirectoryConfig::from_home(home) {
        trees.push(dc.base_path);
        trees.push(dc.domains_dir);
    }
    for d in &trees {
        own_tree(d, user, OWN_DEPTH, false)?;
    }
    let certs = tls::CertPaths::from_env(paths.control.path());
    let key = certs
        .key
        .clone()
        .or_else(|| certs.cert.parent().map(|d| d.join("serverkey.pem")));
    // The admin endpoint reads its users file per request, after the drop:
    // it is 0600, so it must be the server user's.
    let admin_users = paths.control.path().join(admin_api::adminauth::USERS_FILE);
    for f in std::iter::once(certs.cert).chain(key).chain([admin_users]) {
        if std::fs::metadata(&f).is_ok_and(|m| m.uid() == 0) {
            chown(&f, user)?;
        }
    }
    Ok(())
}

/// Drops to `user` for good: groups, gid, uid; checks root is gone.
pub fn drop_to(user: &User) -> Result<(), PrivsError> {
    let gid = user.gid as libc::gid_t;
    // SAFETY: setgroups(2) with a one-element array that outlives the call;
    // setgid(2)/setuid(2) take plain ids.
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(drop_error("setgroups".into()));
        }
        if libc::setgid(gid) != 0 {
            return Err(drop_error(format!("setgid {gid}")));
        }
        if libc::setuid(user.uid as libc::uid_t) != 0 {
            return Err(drop_error(format!("setuid {}", user.uid)));
        }
        if libc::setuid(0) == 0 || libc::geteuid() == 0 {
            return Err(PrivsError::StillRoot);
        }
    }
    Ok(())
}

fn drop_error(what: String) -> PrivsError {
    PrivsError::Drop {
        what,
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users() {
        let root = lookup_user("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("no-such-user-xyz").unwrap(), None);
        assert!(lookup_user("a\0b").is_err());
    }
}
