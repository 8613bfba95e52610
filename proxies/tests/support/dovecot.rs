//! A private Dovecot (IMAP and POP3) on loopback ports, configured from a temp dir.
//!
//! Two ways to authenticate:
//! * [`Auth::Static`] ([`Dovecot::start`]): a static passdb accepting any password (the
//!   proxy has already verified it; tests that must not reach the backend use a sentinel),
//!   mail in `<tmp>/mail/<user part>/Maildir`;
//! * [`Auth::Checkpassword`]: `passdb { driver = checkpassword }` running the given command
//!   (`indimail --home H checkpassword`) with Dovecot's `checkpassword-reply`, `userdb {
//!   driver = prefetch }`, so Dovecot checks every password against the indimail directory
//!   and takes home, uid and gid from it; mail in `~/Maildir` (the user's `pw_dir`), or under
//!   [`Options::mail_root`] as `<root>/<domain>/<user>/Maildir` (a second mailstore).
//!
//! Self-contained (std and `tempfile` only) so other crates' tests include it with
//! `#[path]`.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/sbin/dovecot";
const CHECKPASSWORD_REPLY: &str = "/usr/lib/dovecot/checkpassword-reply";

/// How Dovecot authenticates logins.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Any password is accepted.
    Static,
    /// This checkpassword command (argv; Dovecot appends its reply program).
    Checkpassword(Vec<String>),
}

/// How to start one Dovecot.
#[derive(Debug, Clone)]
pub struct Options {
    pub auth: Auth,
    /// Listening address (a second mailstore uses 127.0.0.2).
    pub address: IpAddr,
    /// Ports; `None`: a free ephemeral port.
    pub imap_port: Option<u16>,
    pub pop3_port: Option<u16>,
    /// Checkpassword mode: keep mail under `<root>/<domain>/<user>/Maildir` instead of the
    /// user's home (`pw_dir`).
    pub mail_root: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auth: Auth::Static,
            address: IpAddr::from([127, 0, 0, 1]),
            imap_port: None,
            pop3_port: None,
            mail_root: None,
        }
    }
}

pub struct Dovecot {
    child: Child,
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

/// A port free on `ip` (bound, then released).
pub fn free_port(ip: IpAddr) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// A port free on both addresses (mailstores share one IMAP/POP3 port, `DESTPORT`).
pub fn free_port_on(a: IpAddr, b: IpAddr) -> u16 {
    for _ in 0..100 {
        let p = free_port(a);
        if std::net::TcpListener::bind((b, p)).is_ok() {
            return p;
        }
    }
    panic!("no port free on both {a} and {b}");
}

/// uid/gid of a system user, from /etc/passwd.
fn passwd(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The uid/gid Dovecot's mail processes run as: ours, or `nobody` when we are root (mail
/// processes may not run as root).
pub fn mail_uid() -> (u32, u32) {
    let me = own_uid();
    if me.0 == 0 {
        passwd("nobody").expect("user nobody")
    } else {
        me
    }
}

/// Hand `path` and everything below it to the mail uid (as `indimail serve` would own it
/// when run as the mail account rather than as root).
pub fn chown_to_mail_uid(path: &Path) {
    let (uid, gid) = mail_uid();
    fn walk(p: &Path, uid: u32, gid: u32) {
        let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), uid, gid);
            }
        }
    }
    walk(path, uid, gid);
}

impl Dovecot {
    /// Static passdb on 127.0.0.1, ephemeral ports.
    pub fn start() -> Dovecot {
        Dovecot::with(Options::default())
    }

    pub fn with(o: Options) -> Dovecot {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install the Debian packages dovecot-core, dovecot-imapd and \
             dovecot-pop3d (CI installs them)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path();
        let (uid, gid) = mail_uid();
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(t.join("mail")).unwrap();
        std::os::unix::fs::chown(t.join("mail"), Some(uid), Some(gid)).unwrap();
        let login_user = ["dovenull", "nobody"]
            .into_iter()
            .find(|u| passwd(u).is_some())
            .expect("a login user");
        let internal_user = ["dovecot", "nobody"]
            .into_iter()
            .find(|u| passwd(u).is_some())
            .expect("an internal user");
        let imap = o.imap_port.unwrap_or_else(|| free_port(o.address));
        let pop3 = o.pop3_port.unwrap_or_else(|| free_port(o.address));
        let (auth, mail_location) = match &o.auth {
            Auth::Static => (
                format!(
                    "passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
                     userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={t}/mail/%n\n}}\n",
                    t = t.display()
                ),
                format!("maildir:{}/mail/%n/Maildir", t.display()),
            ),
            Auth::Checkpassword(argv) => {
                assert!(
                    Path::new(CHECKPASSWORD_REPLY).exists(),
                    "{CHECKPASSWORD_REPLY} is missing (Debian package dovecot-core)"
                );
                // The checker opens the indimail directory (an embedded store is a file
                // owned by whoever created it): as root, run the auth service as root too.
                let auth_user = if own_uid().0 == 0 {
                    "service auth {\n  user = root\n}\n"
                } else {
                    ""
                };
                let location = match &o.mail_root {
                    Some(r) => format!("maildir:{}/%d/%n/Maildir", r.display()),
                    None => "maildir:~/Maildir".to_string(),
                };
                (
                    format!(
                        "passdb {{\n  driver = checkpassword\n  args = {}\n}}\n\
                         userdb {{\n  driver = prefetch\n}}\n{auth_user}",
                        argv.join(" ")
                    ),
                    location,
                )
            }
        };
        let conf = format!(
            r#"base_dir = {t}/run
state_dir = {t}/state
log_path = {t}/dovecot.log
info_log_path = {t}/dovecot.log
auth_verbose = yes
listen = {addr}
protocols = imap pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_chars =
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
mail_location = {mail_location}
pop3_uidl_format = %08Xu%08Xv
{auth}
service imap-login {{
  inet_listener imap {{
    address = {addr}
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {addr}
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"#,
            t = t.display(),
            addr = o.address,
        );
        let conf_path = t.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(BINARY)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dovecot");
        let mut d = Dovecot {
            child,
            imap: (o.address, imap).into(),
            pop3: (o.address, pop3).into(),
            dir,
            uid,
            gid,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("dovecot exited ({status}): {err}\nlog:\n{}", self.log());
            }
            let up = [self.imap, self.pop3]
                .iter()
                .all(|a| std::net::TcpStream::connect(a).is_ok());
            if up {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "dovecot did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The Maildir Dovecot serves for `user` (the part before `@`), created and owned by
    /// the mail uid.
    pub fn maildir(&self, user: &str) -> PathBuf {
        let home = self.dir.path().join("mail").join(user);
        let md = home.join("Maildir");
        for d in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(d)).unwrap();
        }
        for p in [
            &home,
            &md,
            &md.join("cur"),
            &md.join("new"),
            &md.join("tmp"),
        ] {
            std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid)).unwrap();
        }
        md
    }

    /// Deliver `body` into `user`'s Maildir/new, owned by the mail uid.
    pub fn deliver(&self, user: &str, unique: &str, body: &str) {
        let md = self.maildir(user);
        deliver_into(&md, unique, body);
    }
}

/// Writes `body` into `maildir/new` (creating the Maildir), everything created owned by
/// the mail uid.
pub fn deliver_into(maildir: &Path, unique: &str, body: &str) -> PathBuf {
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(d)).unwrap();
    }
    let p = maildir
        .join("new")
        .join(format!("{unique},S={}", body.len()));
    std::fs::write(&p, body).unwrap();
    chown_to_mail_uid(maildir);
    p
}

/// Our own uid/gid from /proc (no libc call needed).
fn own_uid() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Uid:"), field("Gid:"))
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its login and auth processes; SIGKILL is the fallback.
        let pid = self.child.id().to_string();
        let termed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
