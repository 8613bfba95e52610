//! Damage the server must survive without multiplying or stranding mail.

mod common;
#[path = "common/failfs.rs"]
mod failfs;

use std::path::{Path, PathBuf};

use common::*;
use failfs::{FailFs, Fault};

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

/// A delivering server whose queue lives on `disk` (`home/queue` is a
/// symlink into it) and whose mail for sink.example goes to a capture
/// server that holds each DATA until the test opens it. Five messages are
/// accepted and their deliveries wait at the sink. Returns the server, the
/// sink, its directory and the five recipients.
fn start_storm(
    home: &Path,
    disk: &Path,
    driver: &str,
) -> (Server, Peer, tempfile::TempDir, Vec<String>) {
    std::fs::create_dir_all(disk.join("queue")).unwrap();
    std::os::unix::fs::symlink(disk.join("queue"), home.join("queue")).unwrap();
    let (sink, port, cap) = capture("gate");
    route_domain(home, "sink.example", port);
    let s = Server::start_delivering(home, driver);
    let accepted: Vec<String> = (0..5).map(|i| format!("r{i}@sink.example")).collect();
    for to in &accepted {
        let r = send_to(&s, to);
        assert_eq!(r.0, 250, "{driver}: {r:?}");
    }
    wait_until(30, "a delivery at the sink", || {
        std::fs::read_dir(cap.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("waiting."))
    });
    (s, sink, cap, accepted)
}

/// Sends one small message to `to`; the final reply.
fn send_to(s: &Server, to: &str) -> (u16, String) {
    let body = format!("Subject: to {to}\r\n\r\n{}\r\n.\r\n", "f".repeat(200));
    send_message(s.smtp, "a@example.org", &[to], body.as_bytes())
}

/// With the queue's store failing, lets the held deliveries finish (their
/// outcomes cannot be recorded), then watches 6 s: no more than `n_all`
/// deliveries in all and about a log line a second. Returns the log's
/// growth in lines.
fn open_sink_and_watch(s: &Server, cap: &Path, n_all: usize, what: &str) -> usize {
    std::fs::write(cap.join("open"), b"").unwrap();
    wait_until(30, "the store to fail", || {
        s.log().contains("cannot record outcomes")
    });
    let log_before = s.log().lines().count();
    std::thread::sleep(std::time::Duration::from_secs(6));
    let during = captured(cap).len();
    assert!(
        during <= n_all,
        "{what}: {during} deliveries of {n_all} messages while the store failed:\n{}",
        s.log()
    );
    let log = s.log();
    let grown = log.lines().count() - log_before;
    assert!(
        grown <= 6 + n_all + 2,
        "{what}: the log grew by {grown} lines in 6 s while the store failed:\n{log}"
    );
    grown
}

/// After the heal: waits until the server has finished all `n_all`
/// messages and the queue is empty (`queue list` alone cannot tell: it
/// reads the page cache, where outcome records whose flush failed are
/// already visible), then checks that each of `accepted` reached the sink
/// once or twice, that the store healed and probed at most once a second.
/// Returns the deliveries and the log.
fn assert_drained_at_least_once(
    s: &Server,
    cap: &Path,
    n_all: usize,
    accepted: &[String],
    what: &str,
) -> (Vec<(String, String)>, String) {
    wait_until(120, "the queue to drain after the store healed", || {
        count_lines(&s.log(), " end msg ") == n_all && queue_list(&s.home).is_empty()
    });
    let log = s.log();
    assert!(log.contains("store healed"), "{what}: {log}");
    let got = captured(cap);
    for to in accepted {
        let times = got.iter().filter(|(env, _)| env.contains(to)).count();
        assert!(
            (1..=2).contains(&times),
            "{what}: {to} reached the sink {times} times:\n{log}"
        );
    }
    assert!(
        count_lines(&log, "store failing since") <= 12,
        "{what}: one line per probe at most:\n{log}"
    );
    (got, log)
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
        let (mut s, _sink, cap, mut accepted) = start_storm(home, disk.path(), driver);
        disk.fill();
        // The segment's last block still has room: mail is taken until it
        // is used up, then refused with a temporary reply (and from then
        // on an outcome record needs a block the disk does not have).
        let refused = (0..400).find_map(|k| {
            let to = format!("fill{k}@sink.example");
            let r = send_to(&s, &to);
            match r.0 {
                250 => {
                    accepted.push(to);
                    None
                }
                _ => Some(r),
            }
        });
        let r = refused.expect("a full disk refuses new mail");
        assert_eq!(r.0 / 100, 4, "{r:?}");
        open_sink_and_watch(&s, cap.path(), accepted.len(), driver);
        disk.heal();
        assert_drained_at_least_once(&s, cap.path(), accepted.len(), &accepted, driver);
        assert_eq!(s.stop(), Some(0));
    }
}

/// The real-kernel half of the storm test: the queue lives on a FUSE file
/// system whose flushes (or writes) start failing with EIO while deliveries
/// are in flight. New mail gets 451/452 and never 250, the finished
/// deliveries whose outcomes cannot be recorded are not repeated while it
/// lasts, the log grows by about a line a second, and once the file system
/// heals everything accepted drains, each recipient at most twice and none
/// that was refused, also after a restart.
fn a_failing_disk_pauses_delivery_and_heals(driver: &str, fault: Fault) {
    let fs = FailFs::mount();
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let what = format!("{driver} {fault:?}");
    let (mut s, _sink, cap, accepted) = start_storm(home, fs.path(), driver);
    fs.set(fault, true);
    let refused: Vec<String> = (0..5).map(|k| format!("refused{k}@sink.example")).collect();
    let mut codes = Vec::new();
    for to in &refused {
        let r = send_to(&s, to);
        codes.push(r.0);
        assert!(
            r.0 == 451 || r.0 == 452,
            "{what}: DATA on a failing disk answered {r:?}:\n{}",
            s.log()
        );
    }
    let grown = open_sink_and_watch(&s, cap.path(), accepted.len(), &what);
    let injected = fs.injected().len();
    assert!(injected > 0, "{what}: no fault was injected");
    fs.set(fault, false);
    let (got, log) = assert_drained_at_least_once(&s, cap.path(), 5, &accepted, &what);
    for to in &refused {
        let times = got.iter().filter(|(env, _)| env.contains(to)).count();
        assert_eq!(times, 0, "{what}: {to} was refused:\n{log}");
    }
    assert_eq!(s.stop(), Some(0));
    // Nothing told 451/452 comes back at a restart either: recovery finds
    // no message in any queue.
    let queues = count_lines(&log, " recovered: ");
    let mut s = Server::start_delivering(home, driver);
    wait_until(30, "recovery at the restart", || {
        count_lines(&s.log(), " recovered: ") == 2 * queues
    });
    let restart = s.log();
    let restart = restart.lines().filter(|l| l.contains(" recovered: "));
    for l in restart.skip(queues) {
        assert!(l.contains("messages=0 pending=0"), "{what}: {l}");
    }
    assert_eq!(s.stop(), Some(0));
    eprintln!(
        "{what}: DATA replies {codes:?}, {} deliveries of {} accepted messages, \
         {injected} EIOs injected, log +{grown} lines in 6 s, {} probe lines",
        got.len(),
        accepted.len(),
        count_lines(&log, "store failing since")
    );
}

#[test]
fn failing_flushes_under_serve_refuse_mail_pause_delivery_and_heal() {
    for driver in DRIVERS {
        a_failing_disk_pauses_delivery_and_heals(driver, Fault::Flush);
    }
}

#[test]
fn failing_writes_under_serve_refuse_mail_pause_delivery_and_heal() {
    for driver in DRIVERS {
        a_failing_disk_pauses_delivery_and_heals(driver, Fault::Write);
    }
}
