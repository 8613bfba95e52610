//! Retry schedule, lifetimes and per-shard concurrency accounting.
//!
//! Pure functions over seconds since the epoch, so the engine injects its
//! clock and tests need no sleeping. The formulas are qmail-send's (spec 3.1).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

/// Delivery channel of a recipient, as in qmail's `local/` and `remote/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Local delivery (qmail-lspawn/qmail-local).
    Local,
    /// Remote delivery (qmail-rspawn/qmail-remote).
    Remote,
}

/// Retry and lifetime settings. `Default` gives qmail's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `chanskip` of the local channel (qmail: 10; attempts at 0, 100, 400, 900 s ...).
    pub chanskip_local: u64,
    /// `chanskip` of the remote channel (qmail: 20; attempts at 0, 400, 1600 s ...).
    pub chanskip_remote: u64,
    /// Control `queuelifetime` (default 604800 s): after it, one last attempt,
    /// and a temporary failure then becomes permanent.
    pub queuelifetime: u64,
    /// Control `bouncelifetime` (default 604800 s, capped at `queuelifetime`):
    /// the lifetime of messages with the null envelope sender.
    pub bouncelifetime: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            chanskip_local: 10,
            chanskip_remote: 20,
            queuelifetime: 604_800,
            bouncelifetime: 604_800,
        }
    }
}

impl RetryPolicy {
    /// The `chanskip` of a channel.
    pub fn chanskip(&self, channel: Channel) -> u64 {
        match channel {
            Channel::Local => self.chanskip_local,
            Channel::Remote => self.chanskip_remote,
        }
    }

    /// The time of the next attempt after a temporary failure observed at
    /// `now`, for a message born at `birth` (mtime of `info/S/id`):
    /// `birth + (isqrt(now - birth) + chanskip)^2` (qmail-send `nextretry`).
    pub fn next_retry(&self, channel: Channel, birth: u64, now: u64) -> u64 {
        next_retry(birth, now, self.chanskip(channel))
    }

    /// The lifetime that applies to a message: `bouncelifetime` (capped at
    /// `queuelifetime`) for the null sender, else `queuelifetime`.
    pub fn lifetime(&self, null_sender: bool) -> u64 {
        if null_sender {
            self.bouncelifetime.min(self.queuelifetime)
        } else {
            self.queuelifetime
        }
    }

    /// Whether a message born at `birth` has outlived its lifetime at `now`.
    /// The attempt that observes this is the last one.
    pub fn expired(&self, birth: u64, now: u64, null_sender: bool) -> bool {
        now >= birth.saturating_add(self.lifetime(null_sender))
    }

    /// Applies the lifetime to the result of an attempt made at `now`: a
    /// temporary failure of an expired message becomes permanent, with
    /// qmail-send's wording appended.
    pub fn finalize(
        &self,
        outcome: crate::Outcome,
        birth: u64,
        now: u64,
        null_sender: bool,
    ) -> crate::Outcome {
        match outcome {
            crate::Outcome::Temporary(why) if self.expired(birth, now, null_sender) => {
                crate::Outcome::Permanent(format!(
                    "{why}\nI'm not going to try again; this message has been in the queue too long."
                ))
            }
            other => other,
        }
    }
}

/// `birth + (isqrt(now - birth) + chanskip)^2`; `isqrt` is 0 when `birth > now`.
pub fn next_retry(birth: u64, now: u64, chanskip: u64) -> u64 {
    let n = isqrt(now.saturating_sub(birth));
    let k = n.saturating_add(chanskip);
    birth.saturating_add(k.saturating_mul(k))
}

/// Integer square root (floor).
pub fn isqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // f64 gets within one of the answer for all u64; correct it exactly.
    let mut r = (x as f64).sqrt() as u64;
    while r.checked_mul(r).is_none_or(|sq| sq > x) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= x) {
        r += 1;
    }
    r
}

/// Hard ceiling on any concurrency (qmail's `conf-spawn`).
pub const CONCURRENCY_CEILING: u32 = 500;

/// Error reading concurrency control files.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A control file could not be read (other than not existing).
    #[error("{file}: {reason}")]
    Unreadable {
        /// The file.
        file: String,
        /// The OS error.
        reason: String,
    },
    /// A control file's first line is not a non-negative integer.
    #[error("{file}:1: not a non-negative integer: {line:?}")]
    NotANumber {
        /// The file.
        file: String,
        /// The offending line.
        line: String,
    },
}

/// `concurrencylocal` when the control file is absent: 50 per queue, the
/// local deliveries a default IndiMail runs at once (its installer makes 5
/// queues of qmail's 10, and qmail-queue spreads messages over them at
/// random). Here one client's mail goes to its home shard's one queue, so
/// qmail's 10 per queue would give a fifth of that; and a Maildir delivery
/// spends most of its slot waiting for a flush it shares with the others,
/// so more slots mean bigger shared flushes (loadtest/RESULTS.md: 10 to 30
/// raised one mailbox's rate from 3,963 to 5,447 msgs/s and cut CPU per
/// delivery from 204 to 161 µs). An operator's file still sets it exactly.
pub const DEFAULT_CONCURRENCY_LOCAL: u32 = 50;

/// Concurrency limits of every channel and queue, as the control files say.
///
/// In IndiMail every queue has its own qmail-send, so `concurrencylocal`
/// and `concurrencyremote` are limits *per queue*; `concurrencyl.<queue>` /
/// `concurrencyr.<queue>` override them for one queue. 0 holds the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimits {
    /// `concurrencylocal` (default [`DEFAULT_CONCURRENCY_LOCAL`]).
    pub local: u32,
    /// `concurrencyremote` (default 20).
    pub remote: u32,
    /// `concurrencyl.<queue>` overrides, keyed by queue name (`queue1`...).
    pub local_per_queue: HashMap<String, u32>,
    /// `concurrencyr.<queue>` overrides.
    pub remote_per_queue: HashMap<String, u32>,
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        ConcurrencyLimits {
            local: DEFAULT_CONCURRENCY_LOCAL,
            remote: 20,
            local_per_queue: HashMap::new(),
            remote_per_queue: HashMap::new(),
        }
    }
}

impl ConcurrencyLimits {
    /// Reads `concurrencylocal`, `concurrencyremote` and the per-queue files
    /// for `queues` from the control directory. Missing files keep the
    /// defaults; every bad file is reported, not just the first.
    pub fn load(control_dir: &Path, queues: &[&str]) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut limits = ConcurrencyLimits::default();
        let mut read = |name: &str| -> Option<u32> {
            match read_number(&control_dir.join(name)) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        if let Some(v) = read("concurrencylocal") {
            limits.local = v;
        }
        if let Some(v) = read("concurrencyremote") {
            limits.remote = v;
        }
        for q in queues {
            if let Some(v) = read(&format!("concurrencyl.{q}")) {
                limits.local_per_queue.insert((*q).to_string(), v);
            }
            if let Some(v) = read(&format!("concurrencyr.{q}")) {
                limits.remote_per_queue.insert((*q).to_string(), v);
            }
        }
        if errors.is_empty() {
            Ok(limits)
        } else {
            Err(errors)
        }
    }

    /// The limit of one channel of one queue, capped at [`CONCURRENCY_CEILING`].
    pub fn limit(&self, channel: Channel, queue: &str) -> u32 {
        let v = match channel {
            Channel::Local => self
                .local_per_queue
                .get(queue)
                .copied()
                .unwrap_or(self.local),
            Channel::Remote => self
                .remote_per_queue
                .get(queue)
                .copied()
                .unwrap_or(self.remote),
        };
        v.min(CONCURRENCY_CEILING)
    }
}

fn read_number(path: &Path) -> Result<Option<u32>, ConfigError> {
    let file = path.display().to_string();
    let lines = match control::read_values(path) {
        Ok(Some(lines)) => lines,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(ConfigError::Unreadable {
                file,
                reason: e.to_string(),
            })
        }
    };
    let line = lines.first().map_or("", |(_, l)| l.as_str());
    line.parse::<u32>()
        .map(Some)
        .map_err(|_| ConfigError::NotANumber {
            file,
            line: line.to_string(),
        })
}

/// The share of a queue's limit that one shard gets when `shards` shards
/// deliver from that queue: `ceil(limit / shards)`, so the sum over shards
/// is at least the configured limit and never more than `limit + shards - 1`.
/// A limit of 0 (hold) stays 0; `shards == 0` is treated as 1.
pub fn shard_share(limit: u32, shards: u32) -> u32 {
    if limit == 0 {
        return 0;
    }
    limit.div_ceil(shards.max(1))
}

/// Counts deliveries in flight on one shard against per-(channel, queue)
/// limits. Single-threaded (`Rc`), like everything a shard owns.
#[derive(Clone)]
pub struct Accountant {
    inner: Rc<RefCell<AccountantInner>>,
}

struct AccountantInner {
    limits: ConcurrencyLimits,
    shards: u32,
    in_use: HashMap<(Channel, String), u32>,
}

/// One delivery slot; released when dropped.
pub struct Permit {
    inner: Rc<RefCell<AccountantInner>>,
    key: (Channel, String),
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut inner = self.inner.borrow_mut();
        if let Some(n) = inner.in_use.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Accountant {
    /// An accountant for a shard that is one of `shards` shards delivering
    /// from each queue (1 when every queue is owned by a single shard).
    pub fn new(limits: ConcurrencyLimits, shards: u32) -> Accountant {
        Accountant {
            inner: Rc::new(RefCell::new(AccountantInner {
                limits,
                shards,
                in_use: HashMap::new(),
            })),
        }
    }

    /// Replaces the limits (control files reread on HUP); permits already
    /// held stay valid.
    pub fn set_limits(&self, limits: ConcurrencyLimits) {
        self.inner.borrow_mut().limits = limits;
    }

    /// This shard's limit for a channel of a queue.
    pub fn limit(&self, channel: Channel, queue: &str) -> u32 {
        let inner = self.inner.borrow();
        shard_share(inner.limits.limit(channel, queue), inner.shards)
    }

    /// Deliveries in flight for a channel of a queue.
    pub fn in_use(&self, channel: Channel, queue: &str) -> u32 {
        let inner = self.inner.borrow();
        inner
            .in_use
            .get(&(channel, queue.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Takes a slot if one is free; `None` means wait for a permit to drop.
    pub fn try_acquire(&self, channel: Channel, queue: &str) -> Option<Permit> {
        let limit = self.limit(channel, queue);
        let key = (channel, queue.to_string());
        let mut inner = self.inner.borrow_mut();
        let n = inner.in_use.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        drop(inner);
        Some(Permit {
            inner: Rc::clone(&self.inner),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    #[test]
    fn isqrt_exact() {
        for x in 0..10_000u64 {
            let r = isqrt(x);
            assert!(r * r <= x && (r + 1) * (r + 1) > x, "{x}");
        }
        assert_eq!(isqrt(u64::MAX), 4_294_967_295);
    }

    #[test]
    fn qmail_retry_points() {
        let p = RetryPolicy::default();
        // First temporary failure right at birth: next at chanskip^2.
        assert_eq!(p.next_retry(Channel::Local, 1000, 1000), 1100);
        assert_eq!(p.next_retry(Channel::Remote, 1000, 1000), 1400);
        // Failure at birth+400 on remote: isqrt(400)=20 -> (40)^2 = 1600.
        assert_eq!(p.next_retry(Channel::Remote, 0, 400), 1600);
        assert_eq!(p.next_retry(Channel::Local, 0, 100), 400);
        assert_eq!(p.next_retry(Channel::Local, 0, 399), 841);
        // Clock behind birth: n = 0.
        assert_eq!(next_retry(500, 10, 10), 600);
    }

    #[test]
    fn lifetimes() {
        let p = RetryPolicy {
            bouncelifetime: 10_000_000,
            ..RetryPolicy::default()
        };
        assert_eq!(p.lifetime(true), 604_800);
        let p = RetryPolicy {
            bouncelifetime: 3600,
            ..RetryPolicy::default()
        };
        assert!(p.expired(0, 3600, true));
        assert!(!p.expired(0, 3600, false));
        let t = Outcome::Temporary("451 busy".into());
        assert_eq!(p.finalize(t.clone(), 0, 100, false), t);
        match p.finalize(t, 0, 604_800, false) {
            Outcome::Permanent(s) => assert!(s.starts_with("451 busy\nI'm not going")),
            o => panic!("{o:?}"),
        }
        let d = Outcome::Delivered("ok".into());
        assert_eq!(p.finalize(d.clone(), 0, 1 << 40, false), d);
    }

    #[test]
    fn shares() {
        assert_eq!(shard_share(10, 1), 10);
        assert_eq!(shard_share(10, 3), 4);
        assert_eq!(shard_share(20, 2), 10);
        assert_eq!(shard_share(1, 4), 1);
        assert_eq!(shard_share(0, 4), 0);
        assert_eq!(shard_share(5, 0), 5);
    }

    #[test]
    fn limits_from_control_files() {
        let dir = tempfile::tempdir().unwrap();
        // No files: a default IndiMail's total (5 queues of 10) for local, qmail's 20 for remote.
        let l = ConcurrencyLimits::load(dir.path(), &["queue1"]).unwrap();
        assert_eq!(l.limit(Channel::Local, "queue1"), 50);
        assert_eq!(l.limit(Channel::Remote, "queue1"), 20);
        std::fs::write(dir.path().join("concurrencylocal"), "7\n").unwrap();
        std::fs::write(dir.path().join("concurrencyr.queue2"), "900\n").unwrap();
        std::fs::write(dir.path().join("concurrencyl.queue2"), "0\n").unwrap();
        let l = ConcurrencyLimits::load(dir.path(), &["queue1", "queue2"]).unwrap();
        assert_eq!(l.limit(Channel::Local, "queue1"), 7);
        assert_eq!(l.limit(Channel::Remote, "queue1"), 20);
        assert_eq!(l.limit(Channel::Local, "queue2"), 0);
        assert_eq!(l.limit(Channel::Remote, "queue2"), CONCURRENCY_CEILING);

        std::fs::write(dir.path().join("concurrencyremote"), "lots\n").unwrap();
        std::fs::write(dir.path().join("concurrencyl.queue1"), "-1\n").unwrap();
        let errs = ConcurrencyLimits::load(dir.path(), &["queue1"]).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].to_string().contains("concurrencyremote:1"));
    }

    #[test]
    fn accountant_counts_and_releases() {
        let a = Accountant::new(
            ConcurrencyLimits {
                local: 3,
                ..Default::default()
            },
            2,
        );
        assert_eq!(a.limit(Channel::Local, "queue1"), 2);
        let p1 = a.try_acquire(Channel::Local, "queue1").unwrap();
        let _p2 = a.try_acquire(Channel::Local, "queue1").unwrap();
        assert!(a.try_acquire(Channel::Local, "queue1").is_none());
        assert!(a.try_acquire(Channel::Local, "queue2").is_some());
        assert_eq!(a.in_use(Channel::Local, "queue1"), 2);
        drop(p1);
        assert_eq!(a.in_use(Channel::Local, "queue1"), 1);
        assert!(a.try_acquire(Channel::Local, "queue1").is_some());
        let held = Accountant::new(
            ConcurrencyLimits {
                remote: 0,
                ..Default::default()
            },
            1,
        );
        assert!(held.try_acquire(Channel::Remote, "q").is_none());
    }
}
