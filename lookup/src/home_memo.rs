//! A shard's short memory of the answers its users' home shards gave it.
//!
//! Every user has a home shard whose directory cache alone holds the user's entry; the
//! other shards ask it over the mesh ([`crate::UserHome`]). A message's RCPT check and its
//! delivery a few milliseconds later ask about the same user, and so do the messages of a
//! burst to one mailbox. Each question is a round trip between two shard threads (two
//! wake-ups: 36 µs on a quiet machine, loadtest/RESULTS.md), so the asking shard reuses an
//! answer for [`HOME_MEMO_MS`]. The directory empties the memo with its cache: on an admin
//! change seen by its change poll and on a cache clear (SIGHUP).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// How long (milliseconds) a shard reuses an answer from a user's home shard: at most this
/// much is added to the home cache's own staleness.
pub const HOME_MEMO_MS: u64 = 2_000;

/// At most this many answers per shard; the memo starts afresh when full.
const CAPACITY: usize = 4_096;

/// Domain → user → (when answered, in the clock's milliseconds; the answer): looked up by
/// `&str` without building a key.
type Answers<V> = HashMap<String, HashMap<String, (u64, V)>>;

/// The answers a shard got from home shards, for [`HOME_MEMO_MS`].
pub(crate) struct HomeMemo<V> {
    answers: RefCell<Answers<V>>,
    len: Cell<usize>,
    hits: Cell<u64>,
    /// Counts the clears: an answer asked for before a clear is not kept after it.
    generation: Cell<u64>,
}

impl<V: Clone> HomeMemo<V> {
    pub(crate) fn new() -> Self {
        HomeMemo {
            answers: RefCell::new(HashMap::new()),
            len: Cell::new(0),
            hits: Cell::new(0),
            generation: Cell::new(0),
        }
    }

    /// The answer about `user@domain` if it came within [`HOME_MEMO_MS`] before `now_ms`.
    pub(crate) fn get(&self, now_ms: u64, user: &str, domain: &str) -> Option<V> {
        let answers = self.answers.borrow();
        let (at, v) = answers.get(domain)?.get(user)?;
        (now_ms.saturating_sub(*at) <= HOME_MEMO_MS).then(|| {
            self.hits.set(self.hits.get() + 1);
            v.clone()
        })
    }

    /// Taken before asking a home shard, for [`HomeMemo::put`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Remembers the answer about `user@domain` given at `now_ms`, unless the memo was
    /// cleared since `asked` ([`HomeMemo::generation`]): the answer may predate an admin
    /// change then.
    pub(crate) fn put(&self, asked: u64, now_ms: u64, user: &str, domain: &str, v: V) {
        if asked != self.generation.get() {
            return;
        }
        if self.len.get() >= CAPACITY {
            self.clear();
        }
        let mut answers = self.answers.borrow_mut();
        // The domain's key is built once, not on every answer about its users.
        if !answers.contains_key(domain) {
            answers.insert(domain.to_string(), HashMap::new());
        }
        let users = answers.get_mut(domain).expect("inserted above");
        if users.insert(user.to_string(), (now_ms, v)).is_none() {
            self.len.set(self.len.get() + 1);
        }
    }

    /// Forgets every answer.
    pub(crate) fn clear(&self) {
        self.answers.borrow_mut().clear();
        self.len.set(0);
        self.generation.set(self.generation.get() + 1);
    }

    /// Lookups answered from the memo.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_a_full_memo_starts_afresh() {
        let m = HomeMemo::new();
        m.put(m.generation(), 1_000, "ann", "example.com", 1);
        assert_eq!(m.get(1_000 + HOME_MEMO_MS, "ann", "example.com"), Some(1));
        assert_eq!(m.get(1_001 + HOME_MEMO_MS, "ann", "example.com"), None);
        assert_eq!(m.get(1_000, "ann", "example.org"), None);
        assert_eq!(m.hits(), 1);
        m.put(m.generation(), 5_000, "ann", "example.com", 2);
        assert_eq!(m.get(5_000, "ann", "example.com"), Some(2));
        for i in 0..CAPACITY {
            m.put(m.generation(), 5_000, &format!("u{i}"), "example.com", 3);
        }
        // The 4,096th new answer found the memo full: only it and the later ones remain.
        assert_eq!(m.get(5_000, "ann", "example.com"), None);
        assert_eq!(
            m.get(5_000, &format!("u{}", CAPACITY - 1), "example.com"),
            Some(3)
        );
        m.clear();
        assert_eq!(
            m.get(5_000, &format!("u{}", CAPACITY - 1), "example.com"),
            None
        );
    }

    #[test]
    fn an_answer_asked_for_before_a_clear_is_not_kept() {
        let m = HomeMemo::new();
        let asked = m.generation();
        m.clear(); // an admin change while the question was on its way
        m.put(asked, 1_000, "ann", "example.com", 1);
        assert_eq!(m.get(1_000, "ann", "example.com"), None);
        m.put(m.generation(), 1_000, "ann", "example.com", 2);
        assert_eq!(m.get(1_000, "ann", "example.com"), Some(2));
    }
}
