//! `indimail-tuning`: host topology, queue placement and host checks.
//!
//! Exit status: 0 success; 1 `check` found a WARN, or `plan --write`
//! refused to change something; 2 bad usage or an error reading the host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use indimail_tuning::check::{self, Status};
use indimail_tuning::cpulist::format_cpu_list;
use indimail_tuning::plan::{Plan, PlanOptions, State};
use indimail_tuning::queues::{default_home, QueueLayout, Source};
use indimail_tuning::topology::{HostRoots, Location, Topology};
use indimail_tuning::TuningError;

#[derive(Parser)]
#[command(
    name = "indimail-tuning",
    version,
    about = "Host topology, queue placement and host checks for indimail-rs"
)]
struct Cli {
    /// Home of the engine (control/, queue/); default $INDIMAIL_HOME, else
    /// /var/indimail for root or ~/.indimail.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cores, SMT siblings, NUMA nodes, block devices, mounts, and where each queue lives.
    Topology {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Propose a placement: one queue per physical core, grouped by NUMA node, spread over disks.
    Plan {
        /// Directories on separate disks to hold the queues (round-robin), comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "DIR1,DIR2,...")]
        disks: Vec<PathBuf>,
        /// Use every SMT sibling (one shard per hardware thread).
        #[arg(long)]
        smt: bool,
        /// Write control/cpus and the queue<N> symlinks.
        #[arg(long)]
        write: bool,
        /// With --write: replace a control/cpus or queue<N> symlink that differs.
        #[arg(long, requires = "write")]
        yes: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check host settings that limit an MTA; exit 1 if any WARN.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(TuningError::Refused(why)) = e.downcast_ref::<TuningError>() {
                eprintln!("indimail-tuning: nothing written:");
                for w in why {
                    eprintln!("  {w}");
                }
                return ExitCode::from(1);
            }
            eprintln!("indimail-tuning: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn env_var(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let roots = HostRoots::default();
    let topo = Topology::read(&roots).context("reading the host topology")?;
    // Read by hand rather than by clap's `env`, which rejects an empty
    // variable; empty means unset here.
    let home = cli
        .home
        .or_else(|| {
            std::env::var_os("INDIMAIL_HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(default_home);
    // Absolute, so that reports and symlinks do not depend on where this
    // was run from.
    let home = if home.is_absolute() {
        home
    } else {
        std::env::current_dir()
            .context("current directory")?
            .join(home)
    };
    match cli.command {
        Command::Topology { json } => topology(&roots, &topo, &home, json),
        Command::Plan {
            disks,
            smt,
            write,
            yes,
            json,
        } => plan(
            &roots,
            &topo,
            &home,
            PlanOptions { smt, disks },
            write,
            yes,
            json,
        ),
        Command::Check { json } => check(&roots, &topo, &home, json),
    }
}

fn gib(kib: u64) -> String {
    format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0))
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn source(s: Source) -> &'static str {
    match s {
        Source::Environment => "environment",
        Source::Control => "control file",
        Source::Default => "default",
    }
}

fn topology(
    roots: &HostRoots,
    topo: &Topology,
    home: &Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let layout = QueueLayout::resolve(home, &env_var, topo.affinity.len())?;
    let mut queues = Vec::new();
    for (n, dir) in layout.dirs() {
        queues.push((n, Location::of(&dir, topo, roots)?));
    }
    if json {
        let v = serde_json::json!({
            "online": topo.online,
            "affinity": topo.affinity,
            "smt": topo.has_smt(),
            "cores": topo.cores,
            "nodes": topo.nodes,
            "block_devices": topo.block_devices,
            "mounts": topo.mounts,
            "home": home.to_string_lossy(),
            "queue_layout": layout,
            "queues": queues.iter().map(|(n, l)| serde_json::json!({"number": n, "location": l})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "CPUs: {} online ({}), {} physical cores, {}; this process may use {}",
        topo.online.len(),
        format_cpu_list(&topo.online),
        topo.cores.len(),
        if topo.has_smt() { "SMT on" } else { "no SMT" },
        format_cpu_list(&topo.affinity)
    );
    for (i, c) in topo.cores.iter().enumerate() {
        println!(
            "  core {i:<3} cpus {:<10} node {}",
            format_cpu_list(&c.cpus),
            c.node
        );
    }
    println!("NUMA nodes: {}", topo.nodes.len());
    for n in &topo.nodes {
        let mem = match (n.mem_total_kib, n.mem_free_kib) {
            (Some(t), Some(f)) => format!("memory {} ({} free)", gib(t), gib(f)),
            (Some(t), None) => format!("memory {}", gib(t)),
            _ => "memory unknown".into(),
        };
        println!(
            "  node{:<3} cpus {:<10} {mem}",
            n.id,
            format_cpu_list(&n.cpus)
        );
    }
    println!("Block devices:");
    let mut hidden = 0;
    for b in &topo.block_devices {
        if b.size_bytes.unwrap_or(0) == 0 {
            hidden += 1;
            continue;
        }
        let kind = match b.rotational {
            Some(true) => "rotational",
            Some(false) => "non-rotational",
            None => "?",
        };
        let dev = b.dev.map_or("?".into(), |(a, m)| format!("{a}:{m}"));
        let mut line = format!(
            "  {:<10} {:<8} {:>10}  {kind:<14} scheduler {:<12} nr_requests {}",
            b.name,
            dev,
            size(b.size_bytes.unwrap_or(0)),
            b.scheduler.as_deref().unwrap_or("-"),
            b.nr_requests.map_or("-".into(), |n| n.to_string()),
        );
        if !b.slaves.is_empty() {
            line.push_str(&format!("  on {}", b.slaves.join(",")));
        }
        if let Some(node) = b.numa_node.filter(|n| *n >= 0) {
            line.push_str(&format!("  node {node}"));
        }
        println!("{line}");
    }
    if hidden > 0 {
        println!("  ({hidden} empty devices not shown)");
    }
    println!("Filesystems:");
    for m in topo.mounts.iter().filter(|m| !m.is_pseudo()) {
        println!(
            "  {:<24} {:<8} {:<20} {}:{:<4} {}",
            m.mount_point.display(),
            m.fstype,
            m.source.display(),
            m.dev.0,
            m.dev.1,
            m.options
        );
    }
    println!(
        "Queues of {}: base {} ({}), start {}, count {} ({}){}",
        home.display(),
        layout.base.display(),
        source(layout.base_from),
        layout.start,
        layout.count,
        source(layout.count_from),
        layout.queuedir.as_ref().map_or(String::new(), |q| format!(
            "; QUEUEDIR={} overrides",
            q.display()
        ))
    );
    for (n, loc) in &queues {
        let state = if loc.exists {
            match &loc.symlink {
                Some(t) => format!("-> {}", t.display()),
                None => "exists".into(),
            }
        } else {
            "missing, would be created".into()
        };
        println!(
            "  queue{n:<4} {}  [{state}]  {}",
            loc.path.display(),
            loc.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn plan(
    roots: &HostRoots,
    topo: &Topology,
    home: &Path,
    opts: PlanOptions,
    write: bool,
    yes: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let plan = Plan::make(topo, roots, home, &env_var, &opts)?;
    let actions = plan.actions();
    if json {
        let v = serde_json::json!({ "plan": plan, "actions": actions });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_plan(&plan, topo, opts.smt);
    }
    if !write {
        if !json {
            println!();
            println!("With --write this would:");
            for a in &actions {
                println!("  {}  [{}]", a.what, a.state);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let done = plan.write(yes)?;
    if !json {
        println!();
        println!("Written:");
        for a in &done {
            let verb = if a.state == State::Unchanged {
                "unchanged"
            } else {
                "done"
            };
            println!("  {}  [{verb}]", a.what);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &Plan, topo: &Topology, smt: bool) {
    println!(
        "# {} queues for {} physical cores on {} NUMA node(s){}",
        plan.count,
        topo.cores.len(),
        topo.nodes.len(),
        if smt {
            ", one per hardware thread (--smt)"
        } else if topo.has_smt() {
            ", one per core (SMT siblings left free)"
        } else {
            ", one per core"
        }
    );
    println!(
        "QUEUE_BASE={} QUEUE_START={} QUEUE_COUNT={}",
        plan.base.display(),
        plan.start,
        plan.count
    );
    println!();
    println!(
        "{}: {}    (now: {})",
        plan.control_dir.join("cpus").display(),
        plan.cpu_list,
        plan.current_cpu_list.as_deref().unwrap_or("absent")
    );
    println!(
        "# The engine runs one shard per listed CPU and maps queue START+k to shard k % shards;"
    );
    println!("# with control/cpus as above, QUEUE_COUNT may stay unset (one queue per shard).");
    let mut node = None;
    for q in &plan.queues {
        if node != Some(q.node) {
            node = Some(q.node);
            println!("node {}:", q.node);
        }
        let place = match &q.target {
            Some(t) => format!("{} -> {}", q.path.display(), t.display()),
            None => q.path.display().to_string(),
        };
        println!(
            "  queue{:<4} shard {:<3} cpu {:<4} core {:<8} {place}",
            q.number,
            q.shard,
            q.cpu,
            format_cpu_list(&q.core)
        );
    }
    if !plan.disks.is_empty() {
        println!("disks:");
        for d in &plan.disks {
            let kind = match d.rotational {
                Some(true) => "rotational",
                Some(false) => "non-rotational",
                None => "kind unknown",
            };
            let qs: Vec<String> = d.queues.iter().map(|n| format!("queue{n}")).collect();
            println!(
                "  {}  {}  {kind}  holds {}",
                d.location.path.display(),
                d.location.describe(),
                if qs.is_empty() {
                    "nothing".into()
                } else {
                    qs.join(",")
                }
            );
        }
    }
    for w in &plan.warnings {
        println!("WARN {w}");
    }
}

fn check(roots: &HostRoots, topo: &Topology, home: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let layout = QueueLayout::resolve(home, &env_var, topo.affinity.len())?;
    let dirs: Vec<PathBuf> = layout.dirs().into_iter().map(|(_, d)| d).collect();
    let checks = check::run(roots, topo, &dirs);
    let warn = check::any_warn(&checks);
    if json {
        let v = serde_json::json!({ "warn": warn, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &checks {
            let mut line = format!(
                "{:<4} {:<width$}  found: {}; advised: {}",
                c.status, c.name, c.found, c.advised
            );
            if let Some(n) = &c.note {
                line.push_str(" — ");
                line.push_str(n);
            }
            println!("{line}");
        }
        let n = checks.iter().filter(|c| c.status == Status::Warn).count();
        println!("{} checks, {n} WARN", checks.len());
    }
    Ok(if warn {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
