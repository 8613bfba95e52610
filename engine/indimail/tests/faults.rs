//! Damage the server must survive without multiplying or stranding mail.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Every spill file (bodies over the spill threshold) under the queues.
fn spill_files(home: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![home.join("queue")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().and_then(|p| p.file_name()) == Some("big".as_ref()) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_body_that_lost_its_bytes_is_quarantined_listed_and_logged() {
    for driver in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        {
            let mut s = Server::start(home, driver);
            let mut body = b"Subject: big\r\n\r\n".to_vec();
            for _ in 0..6000 {
                body.extend_from_slice(&[b'x'; 62]);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b".\r\n");
            let r = send_message(s.smtp, "a@example.org", &["b@sink.example"], &body);
            assert_eq!(r.0, 250, "{r:?}");
            assert_eq!(s.stop(), Some(0));
        }
        // A power cut took the body's bytes (the record survived).
        let spills = spill_files(home);
        assert_eq!(spills.len(), 1, "{spills:?}");
        std::fs::write(&spills[0], b"").unwrap();
        {
            let mut s = Server::start(home, driver);
            let log = s.log();
            assert!(log.contains("quarantined=1"), "{log}");
            assert!(log.contains("quarantined msg"), "{log}");
            assert_eq!(s.stop(), Some(0));
        }
        let list = queue_list(home);
        assert!(
            list.iter().any(|l| l.contains("state=quarantined")
                && l.contains("<b@sink.example>")
                && l.contains("0 bytes")),
            "{list:?}"
        );
        assert!(!list.iter().any(|l| l.contains("pending")), "{list:?}");
        // Never retried: a third start finds nothing to quarantine again.
        let mut s = Server::start(home, driver);
        assert!(s.log().contains("quarantined=0"), "{}", s.log());
        assert_eq!(s.stop(), Some(0));
    }
}

/// A small ext4 (no journal, no reserved blocks, as on these machines)
/// loop-mounted for a queue, so a test can fill it; unmounted on drop.
struct SmallDisk {
    mnt: tempfile::TempDir,
    _image_dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mib: u64) -> SmallDisk {
        assert!(
            unsafe_is_root(),
            "this test needs root (it loop-mounts a small ext4 to fill it); CI runs as root"
        );
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run(
            "/sbin/mkfs.ext4",
            &["-q", "-F", "-m", "0", "-O", "^has_journal"],
            &image,
        );
        let mnt = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("/bin/mount")
            .args(["-o", "loop,errors=continue"])
            .arg(&image)
            .arg(mnt.path())
            .output()
            .expect("mount (Debian package mount)");
        assert!(
            out.status.success(),
            "mount -o loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            mnt,
            _image_dir: image_dir,
        }
    }

    fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// Fills every free block (the writer is root, and there is no reserve).
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        // What the last partial write left.
        let mut small = vec![0u8; 4096];
        while f.write_all(&small).is_ok() {}
        small.truncate(512);
        while f.write_all(&small).is_ok() {}
    }

    fn heal(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/bin/umount")
            .arg("-l")
            .arg(self.mnt.path())
            .status();
    }
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn run(cmd: &str, args: &[&str], path: &Path) {
    let out = std::process::Command::new(cmd)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (Debian package e2fsprogs)"));
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count_lines(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// The delivery storm: the queue's disk fills while messages are being
/// delivered, so their outcomes cannot be recorded. Each recipient must
/// reach the next hop at most once more than at-least-once needs (not once
/// per scheduler pass), the log must not flood, new mail gets a 4xx, and
/// once the disk has room again everything drains by itself.
#[test]
fn a_full_disk_pauses_delivery_without_a_storm_and_heals() {
    for driver in DRIVERS {
        let disk = SmallDisk::new(24);
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        std::fs::create_dir_all(disk.path().join("queue")).unwrap();
        std::os::unix::fs::symlink(disk.path().join("queue"), home.join("queue")).unwrap();
        let (_sink, port, cap) = capture("gate");
        let control = home.join("control");
        std::fs::create_dir_all(&control).unwrap();
        std::fs::write(
            control.join("smtproutes"),
            format!("sink.example:127.0.0.1:{port}\n"),
        )
        .unwrap();
        let mut s = Server::start_delivering(home, driver);
        let n = 5;
        for i in 0..n {
            let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n.\r\n");
            let r = send_message(
                s.smtp,
                "a@example.org",
                &[&format!("r{i}@sink.example")],
                body.as_bytes(),
            );
            assert_eq!(r.0, 250, "{r:?}");
        }
        // Deliveries are under way (held at the next hop's DATA); now the
        // queue's disk fills, then the next hop accepts.
        wait_until(30, "a delivery at the sink", || {
            std::fs::read_dir(cap.path())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("waiting."))
        });
        disk.fill();
        // The segment's last block still has room: mail is taken until it
        // is used up, then refused with a temporary reply (and from then
        // on an outcome record needs a block the disk does not have).
        let mut accepted = n;
        let refused = (0..400).find_map(|k| {
            let r = send_message(
                s.smtp,
                "a@example.org",
                &[&format!("fill{k}@sink.example")],
                format!("Subject: fill {k}\r\n\r\n{}\r\n.\r\n", "f".repeat(200)).as_bytes(),
            );
            match r.0 {
                250 => {
                    accepted += 1;
                    None
                }
                _ => Some(r),
            }
        });
        let r = refused.expect("a full disk refuses new mail");
        assert_eq!(r.0 / 100, 4, "{r:?}");
        std::fs::write(cap.path().join("open"), b"").unwrap();
        wait_until(30, "the store to fail", || {
            s.log().contains("cannot record outcomes")
        });
        let n_all = accepted;
        let log_before = s.log().lines().count();
        std::thread::sleep(std::time::Duration::from_secs(6));
        let during = captured(cap.path()).len();
        assert!(
            during <= n_all,
            "{during} deliveries of {n_all} messages while the disk was full:\n{}",
            s.log()
        );
        let log = s.log();
        let grown = log.lines().count() - log_before;
        assert!(
            grown <= 6 + n_all + 2,
            "the log grew by {grown} lines in 6 s while the disk was full:\n{log}"
        );
        disk.heal();
        wait_until(120, "the queue to drain after the disk healed", || {
            queue_list(home).is_empty()
        });
        let log = s.log();
        assert!(log.contains("store healed"), "{log}");
        let got = captured(cap.path());
        let fills = (0..n_all - n).map(|k| format!("fill{k}@sink.example"));
        for to in (0..n).map(|i| format!("r{i}@sink.example")).chain(fills) {
            let times = got.iter().filter(|(env, _)| env.contains(&to)).count();
            assert!(
                (1..=2).contains(&times),
                "{to} reached the sink {times} times:\n{log}"
            );
        }
        assert!(
            count_lines(&log, "store failing since") <= 12,
            "one line per probe at most:\n{log}"
        );
        assert_eq!(s.stop(), Some(0));
    }
}
