//! A private `clamd` (Debian clamav-daemon) for tests: its own config, a
//! LocalSocket in a temporary directory and a one-signature database the
//! test writes (no download needed), started in the foreground and killed
//! when dropped.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Text the test signature matches.
pub const TEST_VIRUS: &str = "INDIMAIL-TEST-VIRUS-7d1f";
/// The name clamd reports for it.
pub const TEST_SIGNATURE: &str = "Indimail.Test.Sig.UNOFFICIAL";

pub struct Clamd {
    child: Child,
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Clamd {
    pub fn start() -> Clamd {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let hex: String = TEST_VIRUS.bytes().map(|b| format!("{b:02x}")).collect();
        // .ndb: Name:TargetType(0 = any):Offset(* = anywhere):HexSignature
        std::fs::write(
            db.join("test.ndb"),
            format!("Indimail.Test.Sig:0:*:{hex}\n"),
        )
        .unwrap();
        let socket = dir.path().join("clamd.sock");
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {0}/clamd.sock\nDatabaseDirectory {0}/db\nForeground yes\nLogFile {0}/clamd.log\nTemporaryDirectory {0}\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/clamd")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/clamd (Debian package clamav-daemon)");
        let mut c = Clamd {
            child,
            _dir: dir,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!("clamd exited: {st}");
            }
            if c.ping() {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("clamd did not answer PING");
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"zPING\0").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"PONG"))
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
