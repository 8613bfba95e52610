//! The host as the kernel reports it: CPUs, SMT siblings, NUMA nodes, block
//! devices and mounts, and where a given directory lives.
//!
//! Everything is read from sysfs and procfs under a [`HostRoots`], so tests
//! can point it at a directory tree laid out like `/sys`. A file that is
//! missing (old kernel, container, VM without cpufreq) makes that datum
//! unknown rather than failing the whole report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cpulist::parse_cpu_list;
use crate::mountinfo::{mount_of, parse_mountinfo, Mount};
use crate::{lossy, lossy_opt, TuningError};

/// Where sysfs and procfs are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoots {
    /// Normally `/sys`.
    pub sys: PathBuf,
    /// Normally `/proc`.
    pub proc: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        HostRoots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
        }
    }
}

impl HostRoots {
    /// Reads a small sysfs/procfs file, trimmed; `None` when absent or
    /// unreadable (both mean "the kernel does not tell us").
    pub fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// A file under the sysfs root.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sys.join(rel)
    }

    /// A file under the procfs root.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.proc.join(rel)
    }
}

/// One physical core: the online CPUs that share it (SMT siblings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Core {
    /// Online CPUs of this core, ascending; the first is the one a plan
    /// without `--smt` uses.
    pub cpus: Vec<usize>,
    /// NUMA node of the core.
    pub node: usize,
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// N in `nodeN`.
    pub id: usize,
    /// Its online CPUs.
    pub cpus: Vec<usize>,
    /// `MemTotal` of the node, KiB.
    pub mem_total_kib: Option<u64>,
    /// `MemFree` of the node, KiB.
    pub mem_free_kib: Option<u64>,
}

/// One entry of `/sys/block`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// `vda`, `nvme0n1`, `dm-0`.
    pub name: String,
    /// Its device number.
    pub dev: Option<(u32, u32)>,
    /// `queue/rotational`: a spinning disk, where each fsync costs a seek.
    pub rotational: Option<bool>,
    /// The active I/O scheduler (the bracketed one in `queue/scheduler`).
    pub scheduler: Option<String>,
    /// All schedulers offered.
    pub schedulers: Vec<String>,
    /// `queue/nr_requests`.
    pub nr_requests: Option<u64>,
    /// Size in bytes (`size` is in 512-byte sectors whatever the block size).
    pub size_bytes: Option<u64>,
    /// Devices under a device-mapper or md device (`slaves/`).
    pub slaves: Vec<String>,
    /// NUMA node of the controller, when the kernel knows it.
    pub numa_node: Option<i64>,
}

/// Everything `topology` reports about the host.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    /// Online CPUs (`/sys/devices/system/cpu/online`).
    pub online: Vec<usize>,
    /// CPUs this process may run on; narrower than `online` under
    /// `taskset` or a cpuset cgroup, and the engine started from the same
    /// context would see the same.
    pub affinity: Vec<usize>,
    /// Physical cores, by first CPU.
    pub cores: Vec<Core>,
    /// NUMA nodes (one node 0 holding every CPU when the kernel has no
    /// NUMA support).
    pub nodes: Vec<NumaNode>,
    /// Block devices.
    pub block_devices: Vec<BlockDevice>,
    /// Mounts of this process's mount namespace.
    pub mounts: Vec<Mount>,
}

impl Topology {
    /// Reads the host.
    pub fn read(roots: &HostRoots) -> Result<Topology, TuningError> {
        let online = online_cpus(roots)?;
        let nodes = numa_nodes(roots, &online)?;
        let cores = cores(roots, &online, &nodes)?;
        let mountinfo_path = roots.proc("self/mountinfo");
        let text = std::fs::read_to_string(&mountinfo_path)
            .map_err(|e| TuningError::io(&mountinfo_path, e))?;
        Ok(Topology {
            affinity: affinity_cpus().unwrap_or_else(|| online.clone()),
            online,
            cores,
            nodes,
            block_devices: block_devices(roots),
            mounts: parse_mountinfo(&text)?,
        })
    }

    /// Whether any core has more than one online CPU.
    pub fn has_smt(&self) -> bool {
        self.cores.iter().any(|c| c.cpus.len() > 1)
    }

    /// The block device named `name`.
    pub fn block_device(&self, name: &str) -> Option<&BlockDevice> {
        self.block_devices.iter().find(|b| b.name == name)
    }
}

fn online_cpus(roots: &HostRoots) -> Result<Vec<usize>, TuningError> {
    match roots.read(&roots.sys("devices/system/cpu/online")) {
        Some(list) => {
            let mut v = parse_cpu_list(&list)?;
            v.sort_unstable();
            Ok(v)
        }
        // No sysfs (some containers): what this process may use is the best
        // remaining answer.
        None => Ok(affinity_cpus().unwrap_or_else(|| vec![0])),
    }
}

/// CPUs in this process's affinity mask, ascending.
pub fn affinity_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain old data; sched_getaffinity writes at most
    // the size we pass, and CPU_ISSET only reads within CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        (!v.is_empty()).then_some(v)
    }
}

fn numa_nodes(roots: &HostRoots, online: &[usize]) -> Result<Vec<NumaNode>, TuningError> {
    let dir = roots.sys("devices/system/node");
    let mut nodes = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let cpus = match roots.read(&path.join("cpulist")) {
                Some(list) => parse_cpu_list(&list)?
                    .into_iter()
                    .filter(|c| online.contains(c))
                    .collect(),
                None => Vec::new(),
            };
            let meminfo = roots.read(&path.join("meminfo")).unwrap_or_default();
            nodes.push(NumaNode {
                id,
                cpus,
                mem_total_kib: node_meminfo(&meminfo, "MemTotal"),
                mem_free_kib: node_meminfo(&meminfo, "MemFree"),
            });
        }
    }
    nodes.sort_by_key(|n| n.id);
    if nodes.is_empty() {
        let meminfo = roots.read(&roots.proc("meminfo")).unwrap_or_default();
        nodes.push(NumaNode {
            id: 0,
            cpus: online.to_vec(),
            mem_total_kib: meminfo_value(&meminfo, "MemTotal"),
            mem_free_kib: meminfo_value(&meminfo, "MemFree"),
        });
    }
    Ok(nodes)
}

/// A value from a node's meminfo: `Node 0 MemTotal:       13461708 kB`.
pub fn node_meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("Node"), Some(_), Some(k), Some(v)) if k.strip_suffix(':') == Some(key) => {
                v.parse().ok()
            }
            _ => None,
        }
    })
}

/// A value from `/proc/meminfo`: `MemTotal:       13461708 kB`.
pub fn meminfo_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key)
            .then(|| v.split_whitespace().next()?.parse().ok())
            .flatten()
    })
}

fn cores(
    roots: &HostRoots,
    online: &[usize],
    nodes: &[NumaNode],
) -> Result<Vec<Core>, TuningError> {
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    for &cpu in online {
        let path = roots.sys(&format!(
            "devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        ));
        let siblings = match roots.read(&path) {
            Some(list) => siblings_of(cpu, &list, online)?,
            None => vec![cpu],
        };
        seen.insert(siblings);
    }
    let node_of = |cpu: usize| {
        nodes
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map_or(0, |n| n.id)
    };
    let mut cores: Vec<Core> = seen
        .into_iter()
        .map(|cpus| Core {
            node: node_of(cpus[0]),
            cpus,
        })
        .collect();
    cores.sort_by_key(|c| c.cpus[0]);
    Ok(cores)
}

/// The online siblings of `cpu` from its `thread_siblings_list`, ascending,
/// always including `cpu` itself (a kernel that omits it is still right
/// that `cpu` runs on that core).
pub fn siblings_of(cpu: usize, list: &str, online: &[usize]) -> Result<Vec<usize>, TuningError> {
    let mut v: Vec<usize> = parse_cpu_list(list)?
        .into_iter()
        .filter(|c| online.contains(c))
        .collect();
    if !v.contains(&cpu) {
        v.push(cpu);
    }
    v.sort_unstable();
    Ok(v)
}

fn block_devices(roots: &HostRoots) -> Vec<BlockDevice> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(roots.sys("block")) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let read = |rel: &str| roots.read(&dir.join(rel));
        let (scheduler, schedulers) = read("queue/scheduler")
            .map(|s| parse_scheduler(&s))
            .unwrap_or((None, Vec::new()));
        let mut slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        slaves.sort();
        out.push(BlockDevice {
            dev: read("dev").and_then(|d| parse_dev(&d)),
            rotational: read("queue/rotational").map(|r| r == "1"),
            scheduler,
            schedulers,
            nr_requests: read("queue/nr_requests").and_then(|n| n.parse().ok()),
            size_bytes: read("size")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|s| s.saturating_mul(512)),
            slaves,
            numa_node: read("device/numa_node").and_then(|n| n.parse().ok()),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `none [mq-deadline] kyber bfq` → (active, all offered).
pub fn parse_scheduler(text: &str) -> (Option<String>, Vec<String>) {
    let mut active = None;
    let all = text
        .split_whitespace()
        .map(
            |w| match w.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                Some(inner) => {
                    active = Some(inner.to_string());
                    inner.to_string()
                }
                None => w.to_string(),
            },
        )
        .collect::<Vec<_>>();
    // A lone unbracketed name is the only (hence active) choice.
    if active.is_none() && all.len() == 1 {
        active = Some(all[0].clone());
    }
    (active, all)
}

/// `254:0` → (254, 0).
pub fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Splits an `st_dev` into (major, minor), glibc's encoding.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// The whole disks under a block device number: a partition maps to its
/// disk, a device-mapper or md device to the disks under it. Empty when
/// the number is not a block device (tmpfs, NFS, btrfs's anonymous ids).
pub fn disks_of(roots: &HostRoots, dev: (u32, u32)) -> Vec<String> {
    let link = roots.sys(&format!("dev/block/{}:{}", dev.0, dev.1));
    let Ok(real) = std::fs::canonicalize(&link) else {
        return Vec::new();
    };
    let disk_dir = if real.join("partition").exists() {
        match real.parent() {
            Some(p) => p.to_path_buf(),
            None => return Vec::new(),
        }
    } else {
        real
    };
    let mut out = BTreeSet::new();
    expand_slaves(&disk_dir, &mut out, 0);
    out.into_iter().collect()
}

fn expand_slaves(dir: &Path, out: &mut BTreeSet<String>, depth: usize) {
    let name = match dir.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => return,
    };
    let slaves: Vec<PathBuf> = std::fs::read_dir(dir.join("slaves"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    // Depth guard: stacked dm over md over partitions is 3 deep; a cycle is
    // impossible in a sane kernel, but we read a filesystem, not a proof.
    if slaves.is_empty() || depth > 8 {
        out.insert(name);
        return;
    }
    for s in slaves {
        let Ok(real) = std::fs::canonicalize(&s) else {
            continue;
        };
        let disk = if real.join("partition").exists() {
            real.parent().map(Path::to_path_buf).unwrap_or(real)
        } else {
            real
        };
        expand_slaves(&disk, out, depth + 1);
    }
}

/// Where a directory lives: which filesystem, which disks.
#[derive(Debug, Clone, Serialize)]
pub struct Location {
    /// The path asked about.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// Whether it exists. When not, the rest describes its nearest existing
    /// ancestor, which is where it would be created.
    pub exists: bool,
    /// Target of the path when it is itself a symlink.
    #[serde(serialize_with = "lossy_opt")]
    pub symlink: Option<PathBuf>,
    /// Canonical path of the path (or of the nearest existing ancestor).
    #[serde(serialize_with = "lossy")]
    pub resolved: PathBuf,
    /// `st_dev` of that directory.
    pub dev: (u32, u32),
    /// The mount holding it.
    pub mount: Option<Mount>,
    /// Whole disks underneath (see [`disks_of`]).
    pub disks: Vec<String>,
}

impl Location {
    /// Finds where `path` lives.
    pub fn of(path: &Path, topo: &Topology, roots: &HostRoots) -> Result<Location, TuningError> {
        use std::os::unix::fs::MetadataExt;
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| TuningError::io(Path::new("."), e))?
                .join(path)
        };
        let symlink = std::fs::symlink_metadata(&abs)
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .and_then(|_| std::fs::read_link(&abs).ok());
        let mut probe = abs.as_path();
        let (resolved, meta) = loop {
            if let (Ok(real), Ok(meta)) = (std::fs::canonicalize(probe), std::fs::metadata(probe)) {
                break (real, meta);
            }
            match probe.parent() {
                Some(p) => probe = p,
                None => {
                    return Err(TuningError::io(
                        &abs,
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no existing ancestor"),
                    ))
                }
            }
        };
        let exists = probe == abs.as_path();
        let dev = split_dev(meta.dev());
        let mount = mount_of(&topo.mounts, &resolved).cloned();
        let mut disks = disks_of(roots, dev);
        if disks.is_empty() {
            // btrfs and some others report an anonymous st_dev; the mount's
            // source device node still names the disk.
            if let Some(m) = &mount {
                if m.source.starts_with("/dev/") {
                    if let Ok(sm) = std::fs::metadata(&m.source) {
                        disks = disks_of(roots, split_dev(sm.rdev()));
                    }
                }
            }
        }
        Ok(Location {
            path: path.to_path_buf(),
            exists,
            symlink,
            resolved,
            dev,
            mount,
            disks,
        })
    }

    /// What identifies "the same device" for placement: the set of whole
    /// disks when known, else the filesystem's device number.
    pub fn device_key(&self) -> String {
        if self.disks.is_empty() {
            format!("fs {}:{}", self.dev.0, self.dev.1)
        } else {
            self.disks.join("+")
        }
    }

    /// One-line description: `ext4 /dev/vda on / (disk vda)`.
    pub fn describe(&self) -> String {
        let mut s = match &self.mount {
            Some(m) => format!(
                "{} {} on {}",
                m.fstype,
                m.source.display(),
                m.mount_point.display()
            ),
            None => format!("device {}:{}", self.dev.0, self.dev.1),
        };
        if !self.disks.is_empty() {
            s.push_str(&format!(" (disk {})", self.disks.join("+")));
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn sibling_lists() {
        assert_eq!(
            siblings_of(0, "0,4", &[0, 1, 2, 3, 4, 5]).unwrap(),
            vec![0, 4]
        );
        assert_eq!(
            siblings_of(5, "1,5", &[0, 1, 2, 3, 4, 5]).unwrap(),
            vec![1, 5]
        );
        assert_eq!(siblings_of(2, "2-3", &[0, 1, 2, 3]).unwrap(), vec![2, 3]);
        // An offline sibling does not count.
        assert_eq!(siblings_of(0, "0,4", &[0, 1, 2, 3]).unwrap(), vec![0]);
        // The CPU itself is always there.
        assert_eq!(siblings_of(3, "", &[3]).unwrap(), vec![3]);
        assert!(siblings_of(0, "0,x", &[0]).is_err());
    }

    #[test]
    fn scheduler_line() {
        assert_eq!(
            parse_scheduler("none [mq-deadline] kyber bfq"),
            (
                Some("mq-deadline".to_string()),
                vec![
                    "none".into(),
                    "mq-deadline".into(),
                    "kyber".into(),
                    "bfq".into()
                ]
            )
        );
        assert_eq!(parse_scheduler("[none]").0.as_deref(), Some("none"));
        assert_eq!(parse_scheduler("none").0.as_deref(), Some("none"));
        assert_eq!(parse_scheduler("").0, None);
    }

    #[test]
    fn meminfo_lines() {
        let node = "Node 0 MemTotal:       13461708 kB\nNode 0 MemFree:         5486120 kB\n";
        assert_eq!(node_meminfo(node, "MemTotal"), Some(13461708));
        assert_eq!(node_meminfo(node, "MemFree"), Some(5486120));
        assert_eq!(node_meminfo(node, "MemUsed"), None);
        let proc = "MemTotal:       16000000 kB\nMemFree: 1 kB\n";
        assert_eq!(meminfo_value(proc, "MemTotal"), Some(16000000));
        assert_eq!(meminfo_value(proc, "MemFree"), Some(1));
    }

    #[test]
    fn dev_numbers() {
        assert_eq!(parse_dev("254:0\n"), Some((254, 0)));
        assert_eq!(parse_dev("254"), None);
        assert_eq!(split_dev(65024), (254, 0));
        assert_eq!(split_dev(0x801), (8, 1));
    }

    /// A two-node, SMT host laid out as sysfs: cores {0,4},{1,5} on node 0,
    /// {2,6},{3,7} on node 1 — the interleaved numbering Intel hosts use.
    pub(crate) fn fake_host(dir: &Path) -> HostRoots {
        let sys = dir.join("sys");
        let proc = dir.join("proc");
        let w = |rel: &str, text: &str| {
            let p = sys.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("devices/system/cpu/online", "0-7\n");
        for cpu in 0..8 {
            let sib = format!("{},{}\n", cpu % 4, cpu % 4 + 4);
            w(
                &format!("devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
                &sib,
            );
        }
        w("devices/system/node/node0/cpulist", "0-1,4-5\n");
        w(
            "devices/system/node/node0/meminfo",
            "Node 0 MemTotal: 1000 kB\nNode 0 MemFree: 500 kB\n",
        );
        w("devices/system/node/node1/cpulist", "2-3,6-7\n");
        w(
            "devices/system/node/node1/meminfo",
            "Node 1 MemTotal: 2000 kB\n",
        );
        w("block/sda/dev", "8:0\n");
        w("block/sda/queue/rotational", "1\n");
        w("block/sda/queue/scheduler", "none [bfq]\n");
        w("block/sda/queue/nr_requests", "64\n");
        w("block/sda/size", "2048\n");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(
            proc.join("self/mountinfo"),
            "1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n",
        )
        .unwrap();
        HostRoots { sys, proc }
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = fake_host(tmp.path());
        let t = Topology::read(&roots).unwrap();
        assert_eq!(t.online, (0..8).collect::<Vec<_>>());
        assert!(t.has_smt());
        let cores: Vec<(Vec<usize>, usize)> =
            t.cores.iter().map(|c| (c.cpus.clone(), c.node)).collect();
        assert_eq!(
            cores,
            vec![
                (vec![0, 4], 0),
                (vec![1, 5], 0),
                (vec![2, 6], 1),
                (vec![3, 7], 1)
            ]
        );
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[0].mem_total_kib, Some(1000));
        assert_eq!(t.nodes[1].mem_free_kib, None);
        let sda = t.block_device("sda").unwrap();
        assert_eq!(sda.rotational, Some(true));
        assert_eq!(sda.scheduler.as_deref(), Some("bfq"));
        assert_eq!(sda.nr_requests, Some(64));
        assert_eq!(sda.size_bytes, Some(1024 * 1024));
        assert_eq!(sda.dev, Some((8, 0)));
        assert_eq!(t.mounts.len(), 1);
    }

    #[test]
    fn locates_this_directory() {
        let roots = HostRoots::default();
        let t = Topology::read(&roots).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let here = Location::of(tmp.path(), &t, &roots).unwrap();
        assert!(here.exists);
        assert!(here.mount.is_some());
        let missing = Location::of(&tmp.path().join("a/b/c"), &t, &roots).unwrap();
        assert!(!missing.exists);
        assert_eq!(missing.dev, here.dev);
        assert_eq!(missing.device_key(), here.device_key());
    }
}
