//! A private Dovecot (IMAP and POP3) on ephemeral loopback ports, configured from a temp
//! dir: static passdb accepting any password (the proxy has already verified it; tests
//! that must not reach the backend use a sentinel), mail in `<tmp>/mail/<user part>/Maildir`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = "/usr/sbin/dovecot";

pub struct Dovecot {
    child: Child,
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// uid/gid of a system user, from /etc/passwd.
fn passwd(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

impl Dovecot {
    pub fn start() -> Dovecot {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install the Debian packages dovecot-core, dovecot-imapd and \
             dovecot-pop3d (CI installs them)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path();
        // Mail processes may not run as root: as root, use `nobody` and make the tree
        // reachable for it.
        let me = unsafe_free_uid();
        let (uid, gid) = if me.0 == 0 {
            passwd("nobody").expect("user nobody")
        } else {
            me
        };
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
        let (imap, pop3) = (free_port(), free_port());
        let conf = format!(
            r#"base_dir = {t}/run
state_dir = {t}/state
log_path = {t}/dovecot.log
info_log_path = {t}/dovecot.log
listen = 127.0.0.1
protocols = imap pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_chars =
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
mail_location = maildir:{t}/mail/%n/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={t}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"#,
            t = t.display()
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
            imap: ([127, 0, 0, 1], imap).into(),
            pop3: ([127, 0, 0, 1], pop3).into(),
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
        let p = super::deliver(&md, unique, body);
        std::os::unix::fs::chown(&p, Some(self.uid), Some(self.gid)).unwrap();
    }
}

/// Our own uid/gid from /proc (no libc call needed).
fn unsafe_free_uid() -> (u32, u32) {
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
