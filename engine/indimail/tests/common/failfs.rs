//! A real kernel file system whose flushes (and writes) fail on demand:
//! `tests/peers/failfs.py`, a passthrough FUSE file system (Debian
//! python3-fusepy, fusermount from package fuse) mounted over a temporary
//! directory. device-mapper's error/flakey targets would do the same below
//! a real ext4, but the test kernels have no device-mapper; through FUSE the
//! server's own write(2)/fsync(2)/fdatasync(2) and io_uring operations
//! complete with the kernel's EIO just the same. Unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What fails while switched on.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// fsync, fdatasync and directory fsync return EIO.
    Flush,
    /// write returns EIO (nothing written).
    Write,
}

impl Fault {
    fn switch(self) -> &'static str {
        match self {
            Fault::Flush => "fsync",
            Fault::Write => "write",
        }
    }
}

pub struct FailFs {
    child: Child,
    mnt: tempfile::TempDir,
    control: tempfile::TempDir,
    _backing: tempfile::TempDir,
}

impl FailFs {
    /// Mounts it (as root) and waits until the kernel lists the mount.
    pub fn mount() -> FailFs {
        assert!(
            Path::new("/dev/fuse").exists() && Path::new("/bin/fusermount").exists(),
            "this test needs /dev/fuse and fusermount (Debian package fuse), as root"
        );
        let backing = tempfile::tempdir().unwrap();
        let mnt = tempfile::tempdir().unwrap();
        let control = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/failfs.py");
        let child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(backing.path())
            .arg(mnt.path())
            .arg(control.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(control.path().join("stderr")).unwrap())
            .spawn()
            .expect("python3 with fusepy (Debian python3-fusepy)");
        let mut fs = FailFs {
            child,
            mnt,
            control,
            _backing: backing,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs.mounted() {
            let dead = fs.child.try_wait().ok().flatten().is_some();
            if dead || Instant::now() > deadline {
                panic!(
                    "failfs did not mount {}: {}",
                    fs.path().display(),
                    std::fs::read_to_string(fs.control.path().join("stderr")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        fs
    }

    fn mounted(&self) -> bool {
        let want = self.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let mut f = l.split(' ');
                f.next() == Some("failfs") && f.next() == Some(want.as_str())
            })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// Switches `fault` on (`true`) or off; the file system reads the switch
    /// on every operation.
    pub fn set(&self, fault: Fault, on: bool) {
        let p = self.control.path().join(fault.switch());
        if on {
            std::fs::write(&p, b"").unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }

    /// The operations failed so far, one "op path" line each.
    pub fn injected(&self) -> Vec<String> {
        std::fs::read_to_string(self.injected_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn injected_path(&self) -> PathBuf {
        self.control.path().join("injected")
    }
}

impl Drop for FailFs {
    fn drop(&mut self) {
        // A failing test may leave the queue busy: lazy unmount then.
        let umount = |args: &[&str]| {
            Command::new("/bin/fusermount")
                .args(args)
                .arg(self.mnt.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(&["-u"]) {
            umount(&["-u", "-z"]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
