//! Where shards run: a value, not a side effect (glommio's `Placement`).

use std::fmt;

/// Which CPUs the shards run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// One shard per online CPU, each pinned to it.
    PerCpu,
    /// One shard pinned to each listed CPU, in order.
    Fixed(Vec<usize>),
    /// `n` shards, not pinned (tests, containers that forbid affinity).
    Unpinned(usize),
}

/// How the kernel schedules a shard's own jobs on its blocking pool on the
/// io_uring driver, where they are delivery work no client waits on: the
/// `syncfs` shared by the shard's Maildir deliveries (`control/shardsched`;
/// on epoll they are every file operation, the queue's commits included, and
/// keep the default; other jobs on the pool, such as content filters and
/// program deliveries, always do).
///
/// Each hand-off wakes a pool thread on the shard's own CPU (it inherits the
/// pinning). Under the kernel's default policy that wake-up preempts the
/// shard in the middle of its turn (measured: about one preemption per
/// Maildir delivery). Under `SCHED_BATCH` a waking thread does not preempt;
/// it runs as soon as the shard waits for I/O, or at the next tick. The shard
/// thread keeps the default policy, so a client's command still wakes it at
/// once; so do io_uring's workers, which run the queue's writes and commits
/// that the 250 after DATA waits for: under `SCHED_BATCH` too they saved
/// more CPU but made that reply's 99th percentile at half load 5-39 ms
/// instead of 3-6, whenever other processes kept the shard's CPU busy
/// (loadtest/RESULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// The pool runs `SCHED_BATCH` (the default).
    #[default]
    Batch,
    /// The pool keeps the kernel's default (`SCHED_OTHER`).
    Normal,
}

impl Scheduling {
    /// Reads `batch` or `normal`.
    pub fn parse(s: &str) -> Option<Scheduling> {
        match s.trim() {
            "batch" => Some(Scheduling::Batch),
            "normal" => Some(Scheduling::Normal),
            _ => None,
        }
    }

    /// Its name in `control/shardsched` and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Scheduling::Batch => "batch",
            Scheduling::Normal => "normal",
        }
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sets the calling thread's policy.
pub(crate) fn set_own_policy(policy: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` lives for the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A placement that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A listed CPU is not online or not in this process's affinity mask.
    #[error("cpu {cpu} is not available (available: {available})")]
    Unavailable {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs that are available, as a list.
        available: String,
    },
    /// Zero shards.
    #[error("at least one shard is needed")]
    Empty,
}

impl Placement {
    /// Checks the placement against the CPUs this process may use.
    pub fn validate(&self) -> Result<(), PlacementError> {
        match self {
            Placement::PerCpu => Ok(()),
            Placement::Unpinned(0) => Err(PlacementError::Empty),
            Placement::Unpinned(_) => Ok(()),
            Placement::Fixed(v) if v.is_empty() => Err(PlacementError::Empty),
            Placement::Fixed(v) => {
                let online = online_cpus();
                for &cpu in v {
                    if !online.contains(&cpu) {
                        return Err(PlacementError::Unavailable {
                            cpu,
                            available: fmt_list(&online),
                        });
                    }
                }
                Ok(())
            }
        }
    }

    /// The CPU of each shard (`None` = unpinned), in shard order.
    pub fn cpus(&self) -> Vec<Option<usize>> {
        match self {
            Placement::PerCpu => online_cpus().into_iter().map(Some).collect(),
            Placement::Fixed(v) => v.iter().copied().map(Some).collect(),
            Placement::Unpinned(n) => vec![None; *n],
        }
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.cpus().len()
    }

    /// Whether there are no shards (never true for a validated placement).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::PerCpu => write!(f, "per-cpu ({})", fmt_list(&online_cpus())),
            Placement::Fixed(v) => write!(f, "cpus {}", fmt_list(v)),
            Placement::Unpinned(n) => write!(f, "{n} unpinned"),
        }
    }
}

fn fmt_list(v: &[usize]) -> String {
    v.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// CPUs this process may run on (its affinity mask), ascending.
pub fn online_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds are checked below.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_missing_cpu() {
        let e = Placement::Fixed(vec![100_000]).validate().unwrap_err();
        assert!(matches!(
            e,
            PlacementError::Unavailable { cpu: 100_000, .. }
        ));
        assert!(Placement::PerCpu.validate().is_ok());
        assert_eq!(
            Placement::Unpinned(0).validate(),
            Err(PlacementError::Empty)
        );
    }

    #[test]
    fn pin_to_first_online_cpu() {
        let cpu = online_cpus()[0];
        std::thread::spawn(move || pin_current_thread(cpu).unwrap())
            .join()
            .unwrap();
    }
}
