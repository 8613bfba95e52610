//! Placement and host checks for the indimail-rs engine ("Proving the speed").
//!
//! What it does:
//! - [`topology`] reads the host as the kernel reports it — online CPUs and
//!   their SMT siblings, NUMA nodes, block devices, mounts — straight from
//!   `/sys` and `/proc`, and says which filesystem and disk hold each queue
//!   directory ([`queues`] resolves those with the engine's own
//!   `queue-layout` crate: `QUEUEDIR`, `QUEUE_BASE` / `control/queue_base`,
//!   `QUEUE_START`, `QUEUE_COUNT`, `control/cpus`, `INDIMAIL_SHARDS`).
//! - [`plan`] proposes a placement: one shard and one queue per physical
//!   core, grouped by NUMA node, queue directories spread over the disks
//!   given; it can write `control/cpus` and the `queue<N>` symlinks, never
//!   overwriting an operator's file without consent and never replacing a
//!   real queue directory.
//! - [`check`] reports the host settings that limit an MTA (file and
//!   memlock limits, listen backlogs, port range, io_uring, writeback, THP,
//!   CPU governor, queue filesystem mount options), each OK or WARN.
//!
//! What it does not do: change sysctls or limits (it says what to set),
//! move queued messages between disks, measure speed (that is `benches/`
//! and `loadtest/`), or run anything as a daemon. Nothing in the workspace
//! depends on this crate; `indimail tuning ARGS` execs its binary.

#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod check;
pub mod cpulist;
pub mod mountinfo;
pub mod plan;
pub mod queues;
pub mod topology;

use std::path::{Path, PathBuf};

/// Errors of this crate. Reading the host is best-effort (a missing sysfs
/// file is "unknown", not an error); these are the failures that stop a
/// command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuningError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A CPU list (sysfs or `control/cpus`) is malformed.
    #[error("bad CPU list `{list}`: {problem}")]
    BadCpuList {
        /// The list as written.
        list: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A line of `/proc/self/mountinfo` did not parse.
    #[error("mountinfo line {line}: {problem}")]
    BadMountInfo {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// The queue layout (variables, `control/cpus`, `control/queue_base`)
    /// is invalid; every problem is listed.
    #[error("queue layout: {0}")]
    Layout(#[from] queue_layout::LayoutErrors),
    /// An environment variable the engine reads has a bad value.
    #[error("${name}: {problem}")]
    BadVariable {
        /// The variable.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A disk directory given to `plan --disks` is unusable.
    #[error("disk directory {path}: {problem}")]
    BadDisk {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `plan --write` refused to change anything; each entry says why.
    #[error("refused to write: {}", .0.join("; "))]
    Refused(Vec<String>),
}

impl TuningError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TuningError {
        TuningError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Serializes a path as a string, replacing bytes that are not UTF-8
/// (serde's own impl fails on them, and a JSON report must not).
pub(crate) fn lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Like [`lossy`] for an optional path.
pub(crate) fn lossy_opt<S: serde::Serializer>(
    path: &Option<PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}
