//! Counters, one set per shard (plain `Cell`s: a shard is one thread),
//! summed when read.

use std::cell::Cell;

/// One shard's counters.
#[derive(Default, Debug)]
pub struct ShardMetrics {
    /// SMTP connections served.
    pub connections: Cell<u64>,
    /// Messages accepted (250 after DATA).
    pub accepted: Cell<u64>,
    /// Messages refused at end of data (too big, bare LF, ...).
    pub rejected: Cell<u64>,
}

/// A snapshot, sendable across threads, for summing.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// See [`ShardMetrics::connections`].
    pub connections: u64,
    /// See [`ShardMetrics::accepted`].
    pub accepted: u64,
    /// See [`ShardMetrics::rejected`].
    pub rejected: u64,
}

impl ShardMetrics {
    /// Current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connections: self.connections.get(),
            accepted: self.accepted.get(),
            rejected: self.rejected.get(),
        }
    }
}

impl std::ops::Add for MetricsSnapshot {
    type Output = MetricsSnapshot;
    fn add(self, o: MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            connections: self.connections + o.connections,
            accepted: self.accepted + o.accepted,
            rejected: self.rejected + o.rejected,
        }
    }
}
