//! Per-destination backoff (the role of qmail-remote's `lock/tcpto`,
//! spec 3.3): if every connection to an address has failed for longer than
//! `max_tolerance`, skip that address for `penalty` seconds.
//!
//! Held per shard in memory: each shard learns about the hosts it talks
//! to; a restart forgets, which only costs one round of timeouts.

use std::collections::HashMap;
use std::net::IpAddr;

/// Default penalty (`MIN_PENALTY`): 3600 s.
pub const DEFAULT_PENALTY: u64 = 3600;
/// Default tolerance (`MAX_TOLERANCE`): 120 s.
pub const DEFAULT_MAX_TOLERANCE: u64 = 120;

#[derive(Debug, Clone, Copy)]
struct Entry {
    first_failure: u64,
    last_failure: u64,
}

/// The table. Times are seconds since the epoch, passed in.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<IpAddr, Entry>,
}

impl Backoff {
    /// An empty table.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// Whether `ip` is to be skipped at `now`. A penalty of 0 disables.
    pub fn should_skip(&self, ip: IpAddr, now: u64, penalty: u64, max_tolerance: u64) -> bool {
        if penalty == 0 {
            return false;
        }
        match self.entries.get(&ip) {
            Some(e) => {
                e.last_failure.saturating_sub(e.first_failure) >= max_tolerance
                    && now < e.last_failure.saturating_add(penalty)
            }
            None => false,
        }
    }

    /// Records a failed connection (connect error, timeout, 4xx greeting).
    pub fn failure(&mut self, ip: IpAddr, now: u64) {
        let e = self.entries.entry(ip).or_insert(Entry {
            first_failure: now,
            last_failure: now,
        });
        e.last_failure = now.max(e.last_failure);
    }

    /// Records a working connection: the address is healthy again.
    pub fn success(&mut self, ip: IpAddr) {
        self.entries.remove(&ip);
    }

    /// Drops entries whose penalty ran out long ago, bounding the table.
    pub fn prune(&mut self, now: u64, penalty: u64) {
        self.entries
            .retain(|_, e| now < e.last_failure.saturating_add(penalty.max(1)));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no address is backed off.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_then_penalty() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut b = Backoff::new();
        b.failure(ip, 1000);
        assert!(!b.should_skip(ip, 1001, 3600, 120));
        b.failure(ip, 1119);
        assert!(!b.should_skip(ip, 1120, 3600, 120));
        b.failure(ip, 1120);
        assert!(b.should_skip(ip, 1121, 3600, 120));
        assert!(b.should_skip(ip, 4719, 3600, 120));
        assert!(!b.should_skip(ip, 4720, 3600, 120));
        assert!(!b.should_skip(ip, 1121, 0, 120));
        b.success(ip);
        assert!(!b.should_skip(ip, 1121, 3600, 120));
        b.failure(ip, 10);
        b.prune(5000, 3600);
        assert!(b.is_empty());
    }
}
