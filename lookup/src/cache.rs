//! The lookup cache policy (the inlookup role of spec 5), sans I/O.
//!
//! A plain struct: the async [`crate::Directory`] asks it what to do for a key and reports
//! back; time comes in as a number so tests drive it with a [`ManualClock`].
//!
//! * Positive and negative entries, each with its own TTL.
//! * After the TTL, an entry is served *stale* for `refresh_window` while one refresh runs in
//!   the background (the first caller to see it stale gets the refresh ticket).
//! * Single flight: at most one fetch per key is in flight; later misses are told to
//!   [`Lookup::Wait`].
//! * Admin changes bump a generation ([`Cache::invalidate_all`]): entries of an older
//!   generation are never served as valid, only as a fallback when the database is down.
//! * When a fetch fails, positive entries younger than `max_stale` are the fallback answer.
//!   Negative entries are *not* used past their TTL: answering 550 from a stale "no such user"
//!   while the database is down could bounce mail for a user added meanwhile; a 451 is safer.
//! * Bounded: at most `capacity` entries, evicted by CLOCK (second chance), O(1) amortized.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Source of time for the cache and the relay window. Injected so tests are deterministic.
pub trait Clock {
    /// Monotonic milliseconds since an arbitrary origin.
    fn now_ms(&self) -> u64;
    /// Wall-clock Unix seconds (the relay table stores these).
    fn unix_seconds(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    fn unix_seconds(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock moved by hand (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: Cell<u64>,
    unix: Cell<i64>,
}

impl ManualClock {
    /// Start at monotonic 0 and the given Unix time.
    pub fn new(unix_seconds: i64) -> ManualClock {
        ManualClock {
            ms: Cell::new(0),
            unix: Cell::new(unix_seconds),
        }
    }

    /// Move both clocks forward.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.ms.set(self.ms.get().saturating_add(ms));
        self.unix.set(
            self.unix
                .get()
                .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.get()
    }
    fn unix_seconds(&self) -> i64 {
        self.unix.get()
    }
}

/// Cache tuning. Every field is a trade-off between load on the database and staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// How long a positive answer (user exists, aliases, host, limits) is served as fresh.
    pub positive_ttl: Duration,
    /// How long a negative answer (no such user/domain) is served as fresh.
    pub negative_ttl: Duration,
    /// After the TTL, how long the old answer is still served while a refresh runs.
    pub refresh_window: Duration,
    /// Positive answers younger than this answer when the database is unreachable.
    pub max_stale: Duration,
    /// Most entries kept per shard.
    pub capacity: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            refresh_window: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            capacity: 100_000,
        }
    }
}

/// Proof that the caller owns the single flight for a key; hand it back to
/// [`Cache::complete`] or [`Cache::abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u64,
}

/// What the caller should do for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// Valid answer.
    Fresh(V),
    /// Old but usable answer. With a ticket, the caller must start a background refresh.
    Stale(V, Option<Ticket>),
    /// The caller must fetch; on failure it may answer with the fallback (if any).
    Fetch(Ticket, Option<V>),
    /// Another fetch of this key is in flight: wait for its result.
    Wait,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    negative: bool,
    fetched_at: u64,
    generation: u64,
    referenced: bool,
}

/// Counters (per shard, summed by whoever reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: u64,
    /// Stale hits (served while refreshing).
    pub stale_hits: u64,
    /// Fetches started.
    pub misses: u64,
    /// Callers that waited for another's fetch.
    pub waits: u64,
    /// Entries evicted for capacity.
    pub evictions: u64,
    /// Fallback answers given because the fetch failed.
    pub fallbacks: u64,
}

/// The cache policy state for one shard.
#[derive(Debug)]
pub struct Cache<K, V> {
    policy: CachePolicy,
    entries: HashMap<K, Entry<V>>,
    clock_hand: VecDeque<K>,
    in_flight: HashMap<K, ()>,
    generation: u64,
    stats: CacheStats,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    /// An empty cache.
    pub fn new(policy: CachePolicy) -> Cache<K, V> {
        Cache {
            policy,
            entries: HashMap::new(),
            clock_hand: VecDeque::new(),
            in_flight: HashMap::new(),
            generation: 0,
            stats: CacheStats::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// Decide what to do for `key` at time `now` (ms of a [`Clock`]).
    pub fn lookup(&mut self, key: &K, now: u64) -> Lookup<V> {
        let generation = self.generation;
        let ticket = Ticket { generation };
        let busy = self.in_flight.contains_key(key);
        let Some(e) = self.entries.get_mut(key) else {
            if busy {
                self.stats.waits += 1;
                return Lookup::Wait;
            }
            self.in_flight.insert(key.clone(), ());
            self.stats.misses += 1;
            return Lookup::Fetch(ticket, None);
        };
        let ttl = ms(if e.negative {
            self.policy.negative_ttl
        } else {
            self.policy.positive_ttl
        });
        let age = now.saturating_sub(e.fetched_at);
        let current = e.generation == generation;
        if current && age < ttl {
            e.referenced = true;
            self.stats.hits += 1;
            return Lookup::Fresh(e.value.clone());
        }
        if current && age < ttl.saturating_add(ms(self.policy.refresh_window)) {
            e.referenced = true;
            self.stats.stale_hits += 1;
            if busy {
                return Lookup::Stale(e.value.clone(), None);
            }
            self.in_flight.insert(key.clone(), ());
            return Lookup::Stale(e.value.clone(), Some(ticket));
        }
        if busy {
            self.stats.waits += 1;
            return Lookup::Wait;
        }
        let fallback = (!e.negative && age < ms(self.policy.max_stale)).then(|| e.value.clone());
        self.in_flight.insert(key.clone(), ());
        self.stats.misses += 1;
        Lookup::Fetch(ticket, fallback)
    }

    /// A fetch finished: store its answer (unless an admin change happened meanwhile, in which
    /// case the answer may predate the change and is not kept) and end the flight.
    pub fn complete(&mut self, key: K, ticket: Ticket, value: V, negative: bool, now: u64) {
        self.in_flight.remove(&key);
        if ticket.generation != self.generation {
            return;
        }
        if let Some(e) = self.entries.get_mut(&key) {
            *e = Entry {
                value,
                negative,
                fetched_at: now,
                generation: ticket.generation,
                referenced: true,
            };
            return;
        }
        if self.policy.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.policy.capacity {
            self.evict_one();
        }
        self.clock_hand.push_back(key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                negative,
                fetched_at: now,
                generation: ticket.generation,
                referenced: false,
            },
        );
    }

    /// A fetch failed or was cancelled: end the flight (waiters will retry or fail).
    pub fn abort(&mut self, key: &K) {
        self.in_flight.remove(key);
    }

    /// Note that a fallback answer was served.
    pub fn note_fallback(&mut self) {
        self.stats.fallbacks += 1;
    }

    /// Is a fetch of `key` in flight?
    pub fn in_flight(&self, key: &K) -> bool {
        self.in_flight.contains_key(key)
    }

    /// An admin change happened: nothing cached so far is valid any more (it stays only as a
    /// fallback for outages).
    pub fn invalidate_all(&mut self) {
        self.generation += 1;
    }

    /// Drop everything (inlookup's HUP).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.clock_hand.clear();
        self.generation += 1;
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    fn evict_one(&mut self) {
        // Every key in `entries` is in `clock_hand` exactly once (entries leave only here or in
        // `clear`), so this loop ends within two turns of the hand.
        while let Some(k) = self.clock_hand.pop_front() {
            match self.entries.get_mut(&k) {
                Some(e) if e.referenced => {
                    e.referenced = false;
                    self.clock_hand.push_back(k);
                }
                Some(_) => {
                    self.entries.remove(&k);
                    self.stats.evictions += 1;
                    return;
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            positive_ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(2),
            refresh_window: Duration::from_secs(5),
            max_stale: Duration::from_secs(100),
            capacity: 3,
        }
    }

    fn fetch_ticket(l: Lookup<u32>) -> (Ticket, Option<u32>) {
        match l {
            Lookup::Fetch(t, f) => (t, f),
            other => panic!("expected fetch, got {other:?}"),
        }
    }

    #[test]
    fn miss_then_fresh_then_stale_then_fetch() {
        let mut c: Cache<&str, u32> = Cache::new(policy());
        let (t, _) = fetch_ticket(c.lookup(&"a", 0));
        assert_eq!(c.lookup(&"a", 0), Lookup::Wait, "single flight");
        c.complete("a", t, 1, false, 0);
        assert_eq!(c.lookup(&"a", 9_999), Lookup::Fresh(1));
        let Lookup::Stale(1, Some(t)) = c.lookup(&"a", 10_000) else {
            panic!("stale with refresh ticket")
        };
        assert_eq!(
            c.lookup(&"a", 10_001),
            Lookup::Stale(1, None),
            "one refresh"
        );
        c.complete("a", t, 2, false, 10_002);
        assert_eq!(c.lookup(&"a", 10_003), Lookup::Fresh(2));
        // Past TTL + refresh window: fetch, with the old value as fallback.
        let (_, fb) = fetch_ticket(c.lookup(&"a", 10_002 + 15_000));
        assert_eq!(fb, Some(2));
        c.abort(&"a");
        // Past max_stale: no fallback.
        let (_, fb) = fetch_ticket(c.lookup(&"a", 10_002 + 100_000));
        assert_eq!(fb, None);
    }

    #[test]
    fn negative_entries_expire_sooner_and_never_fall_back() {
        let mut c: Cache<&str, u32> = Cache::new(policy());
        let (t, _) = fetch_ticket(c.lookup(&"n", 0));
        c.complete("n", t, 0, true, 0);
        assert_eq!(c.lookup(&"n", 1_999), Lookup::Fresh(0));
        assert!(matches!(c.lookup(&"n", 2_000), Lookup::Stale(0, Some(_))));
        c.abort(&"n");
        let (_, fb) = fetch_ticket(c.lookup(&"n", 8_000));
        assert_eq!(fb, None);
    }

    #[test]
    fn invalidation_forces_fetch_and_drops_racing_answers() {
        let mut c: Cache<&str, u32> = Cache::new(policy());
        let (t, _) = fetch_ticket(c.lookup(&"a", 0));
        c.complete("a", t, 1, false, 0);
        // A fetch starts, then an admin change lands before it completes.
        c.invalidate_all();
        let (t_old, fb) = fetch_ticket(c.lookup(&"a", 1));
        assert_eq!(fb, Some(1), "old value kept as outage fallback");
        c.invalidate_all();
        c.complete("a", t_old, 5, false, 2);
        let (t, _) = fetch_ticket(c.lookup(&"a", 3));
        c.complete("a", t, 7, false, 3);
        assert_eq!(c.lookup(&"a", 4), Lookup::Fresh(7));
    }

    #[test]
    fn bounded_with_second_chance() {
        let mut c: Cache<u32, u32> = Cache::new(policy());
        for k in 0..3 {
            let (t, _) = fetch_ticket(c.lookup(&k, 0));
            c.complete(k, t, k, false, 0);
        }
        assert_eq!(c.lookup(&0, 1), Lookup::Fresh(0)); // referenced: survives
        let (t, _) = fetch_ticket(c.lookup(&3, 1));
        c.complete(3, t, 3, false, 1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.lookup(&0, 2), Lookup::Fresh(0));
        assert!(matches!(c.lookup(&1, 2), Lookup::Fetch(..)), "1 evicted");
        assert_eq!(c.stats().evictions, 1);
        for k in 10..1000 {
            c.abort(&(k - 1));
            let (t, _) = fetch_ticket(c.lookup(&k, 3));
            c.complete(k, t, k, false, 3);
            assert!(c.len() <= 3);
        }
        assert!(c.clock_hand.len() <= 3);
    }

    #[test]
    fn manual_clock_moves() {
        let c = ManualClock::new(1000);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now_ms(), 1500);
        assert_eq!(c.unix_seconds(), 1001);
    }
}
