//! A queue placement for this host, and writing it.
//!
//! The engine runs one shard per CPU listed in `control/cpus`, in the order
//! listed, and gives queue `QUEUE_START + k` to shard `k % shards`. So the
//! plan is: one CPU per physical core (SMT siblings share execution units
//! and caches, and an MTA shard is busy enough that a second shard on the
//! sibling mostly adds contention), CPUs listed node by node so that the
//! queue numbers of one NUMA node are contiguous, as many queues as shards
//! (each shard owns exactly one queue), and queue directories spread
//! round-robin over the disks given, because each queue commit ends in an
//! fsync and fsyncs on different devices proceed in parallel.
//!
//! Writing never destroys: an existing `control/cpus` or `queue<N>`
//! symlink with other contents is replaced only with `yes`, and a real
//! `queue<N>` directory (which may hold mail) is never replaced at all.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cpulist::format_cpu_list;
use crate::queues::{control_dir, control_line, existing_queues, queue_path, QueueLayout};
use crate::topology::{Core, HostRoots, Location, Topology};
use crate::{lossy, lossy_opt, TuningError};

/// What to plan for.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Use every SMT sibling, not one CPU per core.
    pub smt: bool,
    /// Directories on the disks to hold the queues; empty = all queues
    /// stay under the queue base.
    pub disks: Vec<PathBuf>,
}

/// One planned queue.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedQueue {
    /// N in `queue<N>`.
    pub number: u32,
    /// `<QUEUE_BASE>/queue<N>`, the path the engine opens.
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// `<disk>/queue<N>`, where `path` points when disks were given.
    #[serde(serialize_with = "lossy_opt")]
    pub target: Option<PathBuf>,
    /// Index of the shard that owns it.
    pub shard: usize,
    /// The CPU that shard runs on.
    pub cpu: usize,
    /// The CPUs of that core (the shard's CPU and its SMT siblings).
    pub core: Vec<usize>,
    /// NUMA node of the CPU.
    pub node: usize,
}

/// One disk directory given with `--disks`.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDisk {
    /// Where it lives.
    pub location: Location,
    /// Whether the disk spins (each fsync then costs a seek).
    pub rotational: Option<bool>,
    /// Queues placed on it.
    pub queues: Vec<u32>,
}

/// A placement.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The home directory planned for.
    #[serde(serialize_with = "lossy")]
    pub home: PathBuf,
    /// Its control directory.
    #[serde(serialize_with = "lossy")]
    pub control_dir: PathBuf,
    /// `QUEUE_BASE`.
    #[serde(serialize_with = "lossy")]
    pub base: PathBuf,
    /// `QUEUE_START`.
    pub start: u32,
    /// `QUEUE_COUNT` (= shards).
    pub count: u32,
    /// CPUs of the shards, in shard order.
    pub cpus: Vec<usize>,
    /// The same as the line of `control/cpus`.
    pub cpu_list: String,
    /// Current first line of `control/cpus`, if any.
    pub current_cpu_list: Option<String>,
    /// Queues in number order.
    pub queues: Vec<PlannedQueue>,
    /// Disks, in the order given.
    pub disks: Vec<PlannedDisk>,
    /// Things the operator should know before applying it.
    pub warnings: Vec<String>,
}

impl Plan {
    /// Builds the plan. `var` is how the engine would see its environment.
    pub fn make(
        topo: &Topology,
        roots: &HostRoots,
        home: &Path,
        var: &dyn Fn(&str) -> Option<OsString>,
        opts: &PlanOptions,
    ) -> Result<Plan, TuningError> {
        let mut warnings = Vec::new();
        let control = control_dir(home, var);
        // The current layout tells base and start; the count is ours.
        let layout = QueueLayout::resolve(home, var, topo.affinity.len())?;

        let picks = pick_cpus(topo, opts.smt)?;
        let cpus: Vec<usize> = picks.iter().map(|(c, _)| *c).collect();
        let count = cpus.len() as u32;
        let start = layout.start;

        environment_warnings(topo, &layout, var, &cpus, &mut warnings);

        let mut disks = planned_disks(&opts.disks, topo, roots)?;
        disk_warnings(&disks, &mut warnings);

        let mut queues = Vec::new();
        for (k, (cpu, core)) in picks.iter().enumerate() {
            let number = start + k as u32;
            let target = if disks.is_empty() {
                None
            } else {
                let i = k % disks.len();
                disks[i].queues.push(number);
                Some(queue_path(&disks[i].location.path, number))
            };
            queues.push(PlannedQueue {
                number,
                path: queue_path(&layout.base, number),
                target,
                shard: k,
                cpu: *cpu,
                core: core.cpus.clone(),
                node: core.node,
            });
        }

        let stray: Vec<String> = existing_queues(&layout.base)
            .into_iter()
            .filter(|n| *n < start || *n >= start + count)
            .map(|n| format!("queue{n}"))
            .collect();
        if !stray.is_empty() {
            warnings.push(format!(
                "{} exist under {} but are outside the plan: the engine adopts them (queue N \
                 to shard N % shards) so their mail is delivered; remove them once empty",
                stray.join(", "),
                layout.base.display()
            ));
        }

        Ok(Plan {
            home: home.to_path_buf(),
            current_cpu_list: control_line(&control, "cpus")?,
            control_dir: control,
            base: layout.base,
            start,
            count,
            cpu_list: format_cpu_list(&cpus),
            cpus,
            queues,
            disks,
            warnings,
        })
    }

    /// The changes writing this plan makes, and whether each may proceed.
    pub fn actions(&self) -> Vec<Action> {
        let mut out = Vec::new();
        let cpus_path = self.control_dir.join("cpus");
        out.push(Action {
            what: ActionKind::WriteCpus {
                path: cpus_path.clone(),
                line: self.cpu_list.clone(),
            },
            state: match &self.current_cpu_list {
                None if !cpus_path.exists() => State::New,
                // Compare as lists, so `0,1` and `0-1` are the same.
                Some(cur)
                    if crate::cpulist::parse_cpu_list(cur).ok().as_deref()
                        == Some(&self.cpus[..]) =>
                {
                    State::Unchanged
                }
                Some(cur) => State::Replaces(format!("`{cur}`")),
                None => State::Replaces("a file without a CPU list".into()),
            },
        });
        for q in &self.queues {
            let Some(target) = &q.target else { continue };
            if !target.exists() {
                out.push(Action {
                    what: ActionKind::MakeDir(target.clone()),
                    state: State::New,
                });
            }
            let state = match std::fs::symlink_metadata(&q.path) {
                Err(_) => State::New,
                Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&q.path) {
                    Ok(t) if &t == target => State::Unchanged,
                    Ok(t) => State::Replaces(format!("a symlink to {}", t.display())),
                    Err(e) => State::Forbidden(format!("unreadable symlink: {e}")),
                },
                Ok(m) if m.is_dir() => State::Forbidden(
                    "is a real queue directory (it may hold mail): move its contents to the \
                     target and remove it first"
                        .into(),
                ),
                Ok(_) => State::Forbidden("exists and is not a symlink".into()),
            };
            out.push(Action {
                what: ActionKind::Symlink {
                    link: q.path.clone(),
                    target: target.clone(),
                },
                state,
            });
        }
        out
    }

    /// Writes the plan. Nothing is changed unless every action may
    /// proceed: a forbidden action always refuses; replacing requires
    /// `yes`. Returns the actions taken.
    pub fn write(&self, yes: bool) -> Result<Vec<Action>, TuningError> {
        let actions = self.actions();
        let refusals: Vec<String> = actions
            .iter()
            .filter_map(|a| match &a.state {
                State::Forbidden(why) => Some(format!("{}: {why}", a.what.path().display())),
                State::Replaces(old) if !yes => Some(format!(
                    "{} would replace {old} (re-run with --yes)",
                    a.what.path().display()
                )),
                _ => None,
            })
            .collect();
        if !refusals.is_empty() {
            return Err(TuningError::Refused(refusals));
        }
        for a in &actions {
            if a.state == State::Unchanged {
                continue;
            }
            match &a.what {
                ActionKind::WriteCpus { path, line } => {
                    make_dirs(&parent(path))?;
                    write_atomic(path, format!("{line}\n").as_bytes())?;
                }
                ActionKind::MakeDir(dir) => make_dirs(dir)?,
                ActionKind::Symlink { link, target } => {
                    let dir = &parent(link);
                    make_dirs(dir)?;
                    // A temporary link renamed over the old one: the queue
                    // path never points nowhere.
                    let tmp = dir.join(format!(
                        ".{}.tmp{}",
                        link.file_name().unwrap_or_default().to_string_lossy(),
                        std::process::id()
                    ));
                    let _ = std::fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(target, &tmp)
                        .map_err(|e| TuningError::io(&tmp, e))?;
                    std::fs::rename(&tmp, link).map_err(|e| TuningError::io(link, e))?;
                    sync_dir(dir)?;
                }
            }
        }
        Ok(actions)
    }
}

/// The CPUs to shard on, each with its core: node-major, then by core, so
/// the queue numbers of a node are contiguous. With `smt` every hyperthread
/// of a core, else its first.
fn pick_cpus(topo: &Topology, smt: bool) -> Result<Vec<(usize, &Core)>, TuningError> {
    let mut by_node: BTreeMap<usize, Vec<&Core>> = BTreeMap::new();
    for core in &topo.cores {
        by_node.entry(core.node).or_default().push(core);
    }
    let mut picks: Vec<(usize, &Core)> = Vec::new();
    for cores in by_node.values() {
        for core in cores {
            if smt {
                picks.extend(core.cpus.iter().map(|&c| (c, *core)));
            } else {
                picks.push((core.cpus[0], core));
            }
        }
    }
    if picks.is_empty() {
        return Err(TuningError::BadCpuList {
            list: String::new(),
            problem: "the host reports no online CPU".into(),
        });
    }
    Ok(picks)
}

/// Warnings about what would make the engine not follow the plan: CPUs it
/// could not pin to, `QUEUEDIR`, a `QUEUE_COUNT` that overrides it.
fn environment_warnings(
    topo: &Topology,
    layout: &QueueLayout,
    var: &dyn Fn(&str) -> Option<OsString>,
    cpus: &[usize],
    warnings: &mut Vec<String>,
) {
    let count = cpus.len() as u32;
    let outside: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !topo.affinity.contains(c))
        .collect();
    if !outside.is_empty() {
        warnings.push(format!(
            "CPUs {} are online but outside this process's affinity ({}); an engine started \
             from the same context could not pin shards to them",
            format_cpu_list(&outside),
            format_cpu_list(&topo.affinity)
        ));
    }
    if let Some(q) = &layout.queuedir {
        warnings.push(format!(
            "QUEUEDIR={} is set: the engine then uses that one queue and ignores this plan's \
             queues",
            q.display()
        ));
    }
    if let Some(n) = var("QUEUE_COUNT") {
        if n.to_str().and_then(|s| s.trim().parse::<u32>().ok()) != Some(count) {
            warnings.push(format!(
                "QUEUE_COUNT={} is set and overrides the planned {count}; unset it (the \
                 engine then makes one queue per CPU of control/cpus)",
                n.to_string_lossy()
            ));
        }
    }
}

/// The disks to spread queues over. Each must exist (creating
/// `<disk>/queueN` on an unmounted mount point would silently put the queue
/// on the root filesystem).
fn planned_disks(
    paths: &[PathBuf],
    topo: &Topology,
    roots: &HostRoots,
) -> Result<Vec<PlannedDisk>, TuningError> {
    let mut disks: Vec<PlannedDisk> = Vec::new();
    for d in paths {
        // Symlink targets must be absolute, or they would resolve
        // relative to the queue base.
        let d = &if d.is_absolute() {
            d.clone()
        } else {
            std::env::current_dir()
                .map_err(|e| TuningError::io(Path::new("."), e))?
                .join(d)
        };
        let location = Location::of(d, topo, roots)?;
        if !location.exists {
            return Err(TuningError::BadDisk {
                path: d.clone(),
                problem: "does not exist (mount the disk and create the directory first)".into(),
            });
        }
        if !location.resolved.is_dir() {
            return Err(TuningError::BadDisk {
                path: d.clone(),
                problem: "is not a directory".into(),
            });
        }
        let rotational = location
            .disks
            .iter()
            .filter_map(|n| topo.block_device(n)?.rotational)
            .reduce(|a, b| a || b);
        disks.push(PlannedDisk {
            location,
            rotational,
            queues: Vec::new(),
        });
    }
    Ok(disks)
}

/// Warnings about disks that will not give the speed or safety asked of
/// them: two on one device, a rotational one, one in memory.
fn disk_warnings(disks: &[PlannedDisk], warnings: &mut Vec<String>) {
    for (i, a) in disks.iter().enumerate() {
        for b in &disks[..i] {
            if a.location.device_key() == b.location.device_key() {
                warnings.push(format!(
                    "{} and {} are on the same device ({}): their fsyncs will not run in \
                     parallel",
                    b.location.path.display(),
                    a.location.path.display(),
                    a.location.describe()
                ));
            }
        }
        if a.rotational == Some(true) {
            warnings.push(format!(
                "{} is on a rotational disk: every commit waits for a seek",
                a.location.path.display()
            ));
        }
        if let Some(m) = &a.location.mount {
            if m.fstype == "tmpfs" || m.fstype == "ramfs" {
                warnings.push(format!(
                    "{} is on {}: queued mail is lost at reboot",
                    a.location.path.display(),
                    m.fstype
                ));
            }
        }
    }
}

/// A change `write` makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// What.
    pub what: ActionKind,
    /// Against what is there now.
    pub state: State,
}

/// Kinds of change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Write the CPU list to `control/cpus`.
    WriteCpus {
        /// The file.
        #[serde(serialize_with = "lossy")]
        path: PathBuf,
        /// Its line.
        line: String,
    },
    /// Create a queue directory on a disk.
    MakeDir(#[serde(serialize_with = "lossy")] PathBuf),
    /// Point `<QUEUE_BASE>/queue<N>` at the disk.
    Symlink {
        /// The queue path.
        #[serde(serialize_with = "lossy")]
        link: PathBuf,
        /// The directory on the disk.
        #[serde(serialize_with = "lossy")]
        target: PathBuf,
    },
}

impl ActionKind {
    /// The path changed.
    pub fn path(&self) -> &Path {
        match self {
            ActionKind::WriteCpus { path, .. } => path,
            ActionKind::MakeDir(p) => p,
            ActionKind::Symlink { link, .. } => link,
        }
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActionKind::WriteCpus { path, line } => {
                write!(f, "write `{line}` to {}", path.display())
            }
            ActionKind::MakeDir(p) => write!(f, "create directory {}", p.display()),
            ActionKind::Symlink { link, target } => {
                write!(f, "symlink {} -> {}", link.display(), target.display())
            }
        }
    }
}

/// How an action relates to what exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Nothing there yet.
    New,
    /// Already as planned; nothing to do.
    Unchanged,
    /// Would replace this (needs `--yes`).
    Replaces(String),
    /// Never done, with why.
    Forbidden(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::New => f.write_str("new"),
            State::Unchanged => f.write_str("already so"),
            State::Replaces(old) => write!(f, "replaces {old}"),
            State::Forbidden(why) => write!(f, "refused: {why}"),
        }
    }
}

/// `create_dir_all`, then fsync of each directory created and its parent,
/// so the layout survives a crash just like the queue files will.
fn make_dirs(dir: &Path) -> Result<(), TuningError> {
    // A relative path's last parent is "", which names nothing: use ".".
    let parent_of = |p: &Path| match p.parent() {
        Some(q) if q.as_os_str().is_empty() => Some(PathBuf::from(".")),
        q => q.map(Path::to_path_buf),
    };
    let mut missing = Vec::new();
    let mut p = dir.to_path_buf();
    while !p.exists() {
        missing.push(p.clone());
        match parent_of(&p) {
            Some(parent) => p = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| TuningError::io(dir, e))?;
    for m in missing.iter().rev() {
        if let Some(parent) = parent_of(m) {
            sync_dir(&parent)?;
        }
    }
    Ok(())
}

/// The directory holding `path`; "." for a bare name.
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> Result<(), TuningError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| TuningError::io(dir, e))
}

/// Write to a temporary file, fsync, rename over, fsync the directory.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), TuningError> {
    let dir = &parent(path);
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(TuningError::io(path, e));
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::fake_host;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn one_queue_per_core_grouped_by_node() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = fake_host(tmp.path());
        let mut topo = Topology::read(&roots).unwrap();
        topo.affinity = (0..8).collect();
        let home = tmp.path().join("home");
        let plan = Plan::make(&topo, &roots, &home, &no_env, &PlanOptions::default()).unwrap();
        assert_eq!(plan.cpus, vec![0, 1, 2, 3]);
        assert_eq!(plan.cpu_list, "0-3");
        assert_eq!(plan.count, 4);
        let nodes: Vec<usize> = plan.queues.iter().map(|q| q.node).collect();
        assert_eq!(nodes, vec![0, 0, 1, 1]);
        assert_eq!(plan.queues[2].core, vec![2, 6]);
        assert_eq!(plan.queues[0].path, home.join("queue/queue1"));

        let smt = PlanOptions {
            smt: true,
            ..Default::default()
        };
        let plan = Plan::make(&topo, &roots, &home, &no_env, &smt).unwrap();
        // Node 0's CPUs first (0,4,1,5), then node 1's.
        assert_eq!(plan.cpus, vec![0, 4, 1, 5, 2, 6, 3, 7]);
        assert_eq!(plan.cpu_list, "0,4,1,5,2,6,3,7");
        assert_eq!(plan.count, 8);
    }

    #[test]
    fn disks_round_robin_and_same_device_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = fake_host(tmp.path());
        let mut topo = Topology::read(&roots).unwrap();
        topo.affinity = (0..8).collect();
        // Real mounts so that Location finds the temp directory's filesystem.
        topo.mounts = Topology::read(&HostRoots::default()).unwrap().mounts;
        let (a, b) = (tmp.path().join("d1"), tmp.path().join("d2"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let opts = PlanOptions {
            smt: false,
            disks: vec![a.clone(), b.clone()],
        };
        let home = tmp.path().join("home");
        let plan = Plan::make(&topo, &roots, &home, &no_env, &opts).unwrap();
        let targets: Vec<PathBuf> = plan
            .queues
            .iter()
            .map(|q| q.target.clone().unwrap())
            .collect();
        assert_eq!(
            targets,
            vec![
                a.join("queue1"),
                b.join("queue2"),
                a.join("queue3"),
                b.join("queue4")
            ]
        );
        assert_eq!(plan.disks[0].queues, vec![1, 3]);
        assert!(
            plan.warnings.iter().any(|w| w.contains("same device")),
            "{:?}",
            plan.warnings
        );

        let missing = PlanOptions {
            smt: false,
            disks: vec![tmp.path().join("nope")],
        };
        assert!(matches!(
            Plan::make(&topo, &roots, &home, &no_env, &missing),
            Err(TuningError::BadDisk { .. })
        ));
    }

    #[test]
    fn write_is_careful() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = fake_host(tmp.path());
        let mut topo = Topology::read(&roots).unwrap();
        topo.affinity = (0..8).collect();
        topo.mounts = Topology::read(&HostRoots::default()).unwrap().mounts;
        let disk = tmp.path().join("disk");
        std::fs::create_dir(&disk).unwrap();
        let home = tmp.path().join("home");
        let opts = PlanOptions {
            smt: false,
            disks: vec![disk.clone()],
        };
        let plan = Plan::make(&topo, &roots, &home, &no_env, &opts).unwrap();
        plan.write(false).unwrap();
        assert_eq!(
            std::fs::read_to_string(home.join("control/cpus")).unwrap(),
            "0-3\n"
        );
        for n in 1..=4 {
            let link = home.join(format!("queue/queue{n}"));
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                disk.join(format!("queue{n}"))
            );
            assert!(link.is_dir());
        }
        // Writing the same plan again changes nothing and needs no --yes.
        let again = Plan::make(&topo, &roots, &home, &no_env, &opts).unwrap();
        assert!(again.actions().iter().all(|a| a.state == State::Unchanged));
        again.write(false).unwrap();

        // A different control/cpus needs --yes.
        std::fs::write(home.join("control/cpus"), "0\n").unwrap();
        let plan = Plan::make(&topo, &roots, &home, &no_env, &opts).unwrap();
        assert!(matches!(plan.write(false), Err(TuningError::Refused(_))));
        assert_eq!(
            std::fs::read_to_string(home.join("control/cpus")).unwrap(),
            "0\n"
        );
        plan.write(true).unwrap();
        assert_eq!(
            std::fs::read_to_string(home.join("control/cpus")).unwrap(),
            "0-3\n"
        );

        // A real queue directory is never replaced, even with --yes, and
        // nothing else is written either.
        std::fs::remove_file(home.join("queue/queue2")).unwrap();
        std::fs::create_dir(home.join("queue/queue2")).unwrap();
        std::fs::write(home.join("control/cpus"), "1\n").unwrap();
        let plan = Plan::make(&topo, &roots, &home, &no_env, &opts).unwrap();
        match plan.write(true) {
            Err(TuningError::Refused(why)) => {
                assert!(
                    why.iter().any(|w| w.contains("real queue directory")),
                    "{why:?}"
                )
            }
            other => panic!("expected refusal, got {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(home.join("control/cpus")).unwrap(),
            "1\n"
        );
    }

    #[test]
    fn warns_about_stray_queues_and_overrides() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = fake_host(tmp.path());
        let mut topo = Topology::read(&roots).unwrap();
        topo.affinity = vec![0];
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("queue/queue9")).unwrap();
        let env = |k: &str| (k == "QUEUE_COUNT").then(|| OsString::from("2"));
        let plan = Plan::make(&topo, &roots, &home, &env, &PlanOptions::default()).unwrap();
        let all = plan.warnings.join("\n");
        assert!(all.contains("queue9"), "{all}");
        assert!(all.contains("QUEUE_COUNT=2"), "{all}");
        assert!(all.contains("affinity"), "{all}");
    }
}
