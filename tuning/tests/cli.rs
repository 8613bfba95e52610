//! Runs the `indimail-tuning` binary on this machine: real /sys, /proc,
//! real files in temporary homes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn tuning(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_indimail-tuning"));
    cmd.args(args);
    // The engine's variables would change the layout; the tests want the
    // defaults.
    for var in [
        "INDIMAIL_HOME",
        "CONTROLDIR",
        "QUEUEDIR",
        "QUEUE_BASE",
        "QUEUE_START",
        "QUEUE_COUNT",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run indimail-tuning")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Physical cores counted independently of the crate: distinct sibling
/// sets among online CPUs.
fn physical_cores() -> usize {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let mut cpus = Vec::new();
    for part in online.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse::<usize>().unwrap()),
        }
    }
    let mut sets = BTreeSet::new();
    for c in cpus {
        let p = format!("/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list");
        sets.insert(
            std::fs::read_to_string(p)
                .unwrap_or_else(|_| c.to_string())
                .trim()
                .to_string(),
        );
    }
    sets.len()
}

#[test]
fn topology_json_parses() {
    let home = tempfile::tempdir().unwrap();
    let o = tuning(&[
        "topology",
        "--json",
        "--home",
        home.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert!(!v["online"].as_array().unwrap().is_empty());
    assert_eq!(v["cores"].as_array().unwrap().len(), physical_cores());
    assert!(!v["nodes"].as_array().unwrap().is_empty());
    assert!(v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mount_point"] == "/"));
    let queues = v["queues"].as_array().unwrap();
    assert!(!queues.is_empty());
    assert_eq!(
        queues[0]["location"]["path"],
        home.path().join("queue/queue1").to_str().unwrap()
    );
    assert!(queues[0]["location"]["mount"]["fstype"].is_string());
}

#[test]
fn topology_text_names_the_queue_filesystem() {
    let home = tempfile::tempdir().unwrap();
    let o = tuning(&["--home", home.path().to_str().unwrap(), "topology"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for section in [
        "CPUs:",
        "NUMA nodes:",
        "Block devices:",
        "Filesystems:",
        "Queues of",
    ] {
        assert!(out.contains(section), "{section} missing:\n{out}");
    }
    assert!(out.contains("queue1"), "{out}");
}

#[test]
fn plan_has_one_queue_per_physical_core() {
    let home = tempfile::tempdir().unwrap();
    let o = tuning(&["plan", "--home", home.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("QUEUE_BASE="))
        .unwrap_or_else(|| panic!("no QUEUE_BASE line:\n{out}"));
    let count: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("QUEUE_COUNT="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(count, physical_cores(), "{out}");
    assert!(line.contains("QUEUE_START=1"), "{line}");
    assert!(line.contains(&format!(
        "QUEUE_BASE={}",
        home.path().join("queue").display()
    )));
    // Without --write nothing is created.
    assert!(!home.path().join("control/cpus").exists());
}

#[test]
fn check_prints_every_check() {
    let home = tempfile::tempdir().unwrap();
    let o = tuning(&["check", "--home", home.path().to_str().unwrap()]);
    let code = o.status.code().unwrap();
    let out = stdout(&o);
    assert!(
        code == 0 || code == 1,
        "exit {code}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for name in [
        "RLIMIT_NOFILE",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "RLIMIT_MEMLOCK",
        "kernel.io_uring_disabled",
        "io_uring_setup",
        "vm.dirty_ratio",
        "vm.dirty_background_ratio",
        "transparent_hugepage",
        "scaling_governor",
        "queue filesystem",
    ] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    let warned = out.lines().any(|l| l.starts_with("WARN"));
    assert_eq!(
        code == 1,
        warned,
        "exit status disagrees with the report:\n{out}"
    );

    let o = tuning(&["check", "--json", "--home", home.path().to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["warn"].as_bool().unwrap(), warned);
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn plan_write_creates_and_refuses_to_overwrite() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap();
    let cpus = home.path().join("control/cpus");

    let o = tuning(&["plan", "--home", h, "--write"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = read(&cpus);
    let shards = indimail_tuning::cpulist::parse_cpu_list(&written)
        .unwrap()
        .len();
    assert_eq!(shards, physical_cores());

    // Same plan again: nothing to replace, succeeds.
    assert!(tuning(&["plan", "--home", h, "--write"]).status.success());

    // An operator's different file is kept without --yes.
    std::fs::write(&cpus, "0\n").unwrap();
    let o = tuning(&["plan", "--home", h, "--write"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert_eq!(read(&cpus), "0\n");

    let o = tuning(&["plan", "--home", h, "--write", "--yes"]);
    assert!(o.status.success());
    assert_eq!(read(&cpus), written);
}

#[test]
fn plan_write_links_queues_to_disks() {
    let home = tempfile::tempdir().unwrap();
    let disks = tempfile::tempdir().unwrap();
    let (d1, d2) = (disks.path().join("d1"), disks.path().join("d2"));
    std::fs::create_dir(&d1).unwrap();
    std::fs::create_dir(&d2).unwrap();
    let list = format!("{},{}", d1.display(), d2.display());
    let h = home.path().to_str().unwrap();

    let o = tuning(&["plan", "--home", h, "--disks", &list, "--write"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Both directories are on one filesystem here, which the plan says.
    assert!(stdout(&o).contains("same device"), "{}", stdout(&o));
    let link = home.path().join("queue/queue1");
    assert_eq!(std::fs::read_link(&link).unwrap(), d1.join("queue1"));
    assert!(d1.join("queue1").is_dir());
    if physical_cores() > 1 {
        assert_eq!(
            std::fs::read_link(home.path().join("queue/queue2")).unwrap(),
            d2.join("queue2")
        );
    }

    // A real queue directory is never replaced, even with --yes.
    std::fs::remove_file(&link).unwrap();
    std::fs::create_dir(&link).unwrap();
    std::fs::write(link.join("msg"), "mail").unwrap();
    let o = tuning(&["plan", "--home", h, "--disks", &list, "--write", "--yes"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("real queue directory"));
    assert_eq!(read(&link.join("msg")), "mail");

    // A missing disk directory is an error, not a silent mkdir.
    let o = tuning(&["plan", "--home", h, "--disks", "/nonexistent/disk"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn relative_home_and_disks_become_absolute() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("d1")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_indimail-tuning"))
        .current_dir(cwd.path())
        .env_remove("QUEUE_BASE")
        .env_remove("QUEUE_START")
        .env_remove("QUEUE_COUNT")
        .env_remove("QUEUEDIR")
        .env_remove("CONTROLDIR")
        .args(["plan", "--home", "h", "--disks", "d1", "--write"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cwd.path().join("h/control/cpus").is_file());
    let target = std::fs::read_link(cwd.path().join("h/queue/queue1")).unwrap();
    assert!(target.is_absolute(), "{}", target.display());
    assert!(cwd.path().join("h/queue/queue1").is_dir());
}
