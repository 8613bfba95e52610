//! Rate limits: token buckets per key (client address, authenticated user), with an injected
//! clock and a bounded number of keys.
//!
//! A bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens per second;
//! each recipient or message takes one. An empty bucket answers `Limited { retry_after }`,
//! which the driver turns into `451 4.7.0` ([`RateDecision::verdict`]). A rate of 0 means
//! unlimited. When the table is full, buckets that have refilled completely are dropped first
//! (forgetting them changes nothing); if none has, the least recently used half is dropped,
//! which at worst gives those clients a fresh allowance — the table never grows unbounded.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::Verdict;

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Go on (a token was taken).
    Allowed,
    /// Over the limit; a token will be available after `retry_after`.
    Limited {
        /// Time until the next token.
        retry_after: Duration,
    },
}

impl RateDecision {
    /// `Accept`, or `451 4.7.0 rate limit exceeded, try again in N seconds`.
    pub fn verdict(&self) -> Verdict {
        match self {
            RateDecision::Allowed => Verdict::Accept,
            RateDecision::Limited { retry_after } => Verdict::Reject {
                code: 451,
                enhanced: (4, 7, 0),
                text: format!(
                    "rate limit exceeded, try again in {} seconds",
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
                ),
                rule: "ratelimit".into(),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by `K`.
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` events per minute with a burst of the same size; at most `max_keys` keys.
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        Self::with_burst(per_minute, per_minute, max_keys)
    }

    /// `per_minute` sustained, `burst` at once.
    pub fn with_burst(per_minute: u32, burst: u32, max_keys: usize) -> Self {
        RateLimiter {
            per_sec: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Changes the rate (and the burst, to the same size) keeping the buckets, so a limit
    /// changed by a reload applies to clients already counted.
    pub fn set_per_minute(&mut self, per_minute: u32) {
        self.per_sec = f64::from(per_minute) / 60.0;
        self.burst = f64::from(per_minute.max(1));
        for b in self.buckets.values_mut() {
            b.tokens = b.tokens.min(self.burst);
        }
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.per_sec).min(self.burst);
        b.last = b.last.max(now);
    }

    /// Takes one token for `key` at `now`.
    pub fn check(&mut self, key: &K, now: Instant) -> RateDecision {
        if self.per_sec == 0.0 {
            return RateDecision::Allowed;
        }
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= self.max_keys {
                self.evict(now);
            }
            self.buckets.insert(
                key.clone(),
                Bucket {
                    tokens: self.burst,
                    last: now,
                },
            );
        }
        let mut b = self.buckets[key];
        self.refill(&mut b, now);
        let decision = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            RateDecision::Allowed
        } else {
            let secs = (1.0 - b.tokens) / self.per_sec;
            RateDecision::Limited {
                retry_after: Duration::from_secs_f64(secs),
            }
        };
        self.buckets.insert(key.clone(), b);
        decision
    }

    fn evict(&mut self, now: Instant) {
        let (per_sec, burst) = (self.per_sec, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < burst
        });
        if self.buckets.len() < self.max_keys {
            return;
        }
        let mut ages: Vec<(Instant, K)> = self
            .buckets
            .iter()
            .map(|(k, b)| (b.last, k.clone()))
            .collect();
        let half = ages.len() / 2;
        ages.select_nth_unstable_by(half, |a, b| a.0.cmp(&b.0));
        for (_, k) in ages.into_iter().take(half.max(1)) {
            self.buckets.remove(&k);
        }
    }
}

/// The key for a client address: IPv6 clients are limited per /64 (one host can use the
/// whole prefix), IPv4 per address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match crate::canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Recipients and messages per minute, per client address and per authenticated user.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// RCPTs per minute per client address.
    pub rcpt_per_ip: RateLimiter<IpAddr>,
    /// Messages per minute per client address.
    pub msg_per_ip: RateLimiter<IpAddr>,
    /// RCPTs per minute per authenticated user.
    pub rcpt_per_user: RateLimiter<String>,
    /// Messages per minute per authenticated user.
    pub msg_per_user: RateLimiter<String>,
}

impl RateLimits {
    /// All four limits, each keeping at most `max_keys` keys (0 per minute = unlimited).
    pub fn new(rcpt_ip: u32, msg_ip: u32, rcpt_user: u32, msg_user: u32, max_keys: usize) -> Self {
        RateLimits {
            rcpt_per_ip: RateLimiter::new(rcpt_ip, max_keys),
            msg_per_ip: RateLimiter::new(msg_ip, max_keys),
            rcpt_per_user: RateLimiter::new(rcpt_user, max_keys),
            msg_per_user: RateLimiter::new(msg_user, max_keys),
        }
    }

    /// New rates (a reload), keeping what each client has used.
    pub fn set_rates(&mut self, rcpt_ip: u32, msg_ip: u32, rcpt_user: u32, msg_user: u32) {
        self.rcpt_per_ip.set_per_minute(rcpt_ip);
        self.msg_per_ip.set_per_minute(msg_ip);
        self.rcpt_per_user.set_per_minute(rcpt_user);
        self.msg_per_user.set_per_minute(msg_user);
    }

    /// One RCPT: the user's limit when authenticated, else the address's.
    pub fn check_rcpt(&mut self, ip: IpAddr, user: Option<&str>, now: Instant) -> RateDecision {
        match user {
            Some(u) => self.rcpt_per_user.check(&u.to_ascii_lowercase(), now),
            None => self.rcpt_per_ip.check(&client_key(ip), now),
        }
    }

    /// One message (at MAIL FROM or DATA): the user's limit when authenticated, else the address's.
    pub fn check_message(&mut self, ip: IpAddr, user: Option<&str>, now: Instant) -> RateDecision {
        match user {
            Some(u) => self.msg_per_user.check(&u.to_ascii_lowercase(), now),
            None => self.msg_per_ip.check(&client_key(ip), now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_limits_then_refills() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(60, 10); // one per second, burst 60
        for _ in 0..60 {
            assert_eq!(l.check(&"a", t0), RateDecision::Allowed);
        }
        let d = l.check(&"a", t0);
        let RateDecision::Limited { retry_after } = d else {
            panic!("{d:?}")
        };
        assert!(retry_after <= Duration::from_secs(1) && retry_after > Duration::from_millis(900));
        assert_eq!(
            d.verdict().to_string(),
            "451 4.7.0 rate limit exceeded, try again in 1 seconds"
        );
        assert_eq!(
            l.check(&"a", t0 + Duration::from_secs(1)),
            RateDecision::Allowed
        );
        assert!(matches!(
            l.check(&"a", t0 + Duration::from_secs(1)),
            RateDecision::Limited { .. }
        ));
        // Another key is independent.
        assert_eq!(l.check(&"b", t0), RateDecision::Allowed);
    }

    #[test]
    fn zero_is_unlimited() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, 1);
        for _ in 0..1000 {
            assert_eq!(l.check(&1u32, t0), RateDecision::Allowed);
        }
        assert!(l.is_empty());
    }

    #[test]
    fn key_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = RateLimiter::with_burst(6, 2, 100);
        for i in 0..10_000u32 {
            l.check(&i, t0 + Duration::from_millis(u64::from(i)));
            assert!(l.len() <= 100);
        }
        // Idle buckets that refilled are the first to go.
        let mut l = RateLimiter::new(60, 2);
        l.check(&1u32, t0);
        l.check(&2u32, t0);
        l.check(&3u32, t0 + Duration::from_secs(120));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn limits_by_user_and_v6_prefix() {
        let t0 = Instant::now();
        let mut r = RateLimits::new(2, 1, 3, 1, 100);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(r.check_rcpt(a, None, t0), RateDecision::Allowed);
        assert_eq!(r.check_rcpt(b, None, t0), RateDecision::Allowed);
        assert!(matches!(
            r.check_rcpt(a, None, t0),
            RateDecision::Limited { .. }
        ));
        for _ in 0..3 {
            assert_eq!(
                r.check_rcpt(a, Some("User@Example.com"), t0),
                RateDecision::Allowed
            );
        }
        assert!(matches!(
            r.check_rcpt(b, Some("user@example.com"), t0),
            RateDecision::Limited { .. }
        ));
        assert_eq!(r.check_message(a, None, t0), RateDecision::Allowed);
        let v = r.check_message(a, None, t0).verdict();
        assert!(matches!(
            v,
            Verdict::Reject {
                code: 451,
                enhanced: (4, 7, 0),
                ..
            }
        ));
    }

    #[test]
    fn rate_change_keeps_counts() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(0, 10);
        assert_eq!(l.check(&"a", t0), RateDecision::Allowed);
        l.set_per_minute(2);
        assert_eq!(l.check(&"a", t0), RateDecision::Allowed);
        assert_eq!(l.check(&"a", t0), RateDecision::Allowed);
        assert!(matches!(l.check(&"a", t0), RateDecision::Limited { .. }));
        // Lowered further: the bucket keeps what was used.
        l.set_per_minute(1);
        assert!(matches!(l.check(&"a", t0), RateDecision::Limited { .. }));
        l.set_per_minute(0);
        assert_eq!(l.check(&"a", t0), RateDecision::Allowed);
    }
}
