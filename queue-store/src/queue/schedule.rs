//! The retry schedule: which pending recipients are due, leases handed out
//! by `due`, and the on-demand (ETRN/ATRN) holds and queue-tool picks that
//! take recipients out of it.

use std::rc::Rc;

use tokio::sync::Notify;

use crate::state::RecipientState;
use crate::{Envelope, MessageId};

use super::lanes::{Lane, LaneLimits, Schedule, Slot};
use super::{DueRecipient, Queue};

impl Queue {
    /// Hands out up to `limit` pending recipients whose next attempt is at
    /// or before `now`, earliest first (ties: oldest message first). Each
    /// is leased: it is not handed out again until an outcome is recorded
    /// or it is [`Queue::release`]d; a restart forgets leases.
    pub fn due(&self, now: u64, limit: usize) -> Vec<DueRecipient> {
        self.hand_out(|s| s.take_due_earliest(now, limit))
            .into_iter()
            .map(|(d, _)| d)
            .collect()
    }

    /// [`Queue::due`] lane by lane: up to `limits` from each lane (see
    /// [`Lane`]), earliest first, each with the lane it waited in. A
    /// recipient put back with [`Queue::release_to`] comes out of its
    /// channel's lane, so a full channel's recipients are not handed out
    /// again until the caller asks that lane for some.
    pub fn due_by_lane(&self, now: u64, limits: LaneLimits) -> Vec<(DueRecipient, Lane)> {
        self.hand_out(|s| s.take_due(now, limits))
    }

    /// Leases what `take` takes out of the schedule.
    fn hand_out(
        &self,
        take: impl FnOnce(&mut Schedule) -> Vec<(Slot, Lane)>,
    ) -> Vec<(DueRecipient, Lane)> {
        let mut st = self.sh.st.borrow_mut();
        if st.failure.is_some() {
            // The outcome could not be recorded: delivering now would only
            // deliver again (see `StoreFailure`).
            return Vec::new();
        }
        let picked = take(&mut st.schedule);
        let mut out = Vec::with_capacity(picked.len());
        for ((next, key, idx), lane) in picked {
            let Some(e) = st.index.messages.get(&key) else {
                continue;
            };
            let Some(addr) = e.envelope.recipients.get(idx as usize) else {
                continue;
            };
            if e.rcpts[idx as usize].state != RecipientState::Pending {
                // Never hand out a finished recipient, whatever the schedule
                // says.
                continue;
            }
            out.push((
                DueRecipient {
                    id: MessageId::from_key(self.sh.cfg.queue_no, key),
                    rcpt: idx as usize,
                    recipient: addr.clone(),
                    attempts: e.rcpts[idx as usize].attempts,
                    next_attempt: next,
                },
                lane,
            ));
            st.leased.insert((key, idx));
        }
        out
    }

    /// Returns a leased recipient to the schedule without an outcome (e.g.
    /// at shutdown), due at its recorded next attempt time.
    pub fn release(&self, id: &MessageId, rcpt: usize) {
        self.release_at(id, rcpt, 0);
    }

    /// Returns a leased recipient to the schedule in `lane`: the caller
    /// found its channel full, so [`Queue::due_by_lane`] hands it out again
    /// only when asked for that lane. Memory only, as [`Queue::release`].
    pub fn release_to(&self, id: &MessageId, rcpt: usize, lane: Lane) {
        self.reschedule(id, rcpt, 0, lane);
    }

    /// Returns a leased recipient to the schedule, due no sooner than
    /// `not_before` nor than its recorded next attempt. Memory only: for an
    /// outcome that could not be recorded (a restart schedules it at its
    /// recorded time, which is at-least-once).
    pub fn release_at(&self, id: &MessageId, rcpt: usize, not_before: u64) {
        self.reschedule(id, rcpt, not_before, Lane::Unsorted);
    }

    fn reschedule(&self, id: &MessageId, rcpt: usize, not_before: u64, lane: Lane) {
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let key = id.key();
        if st.leased.remove(&(key, rcpt as u32)) && !st.frozen.contains(&key) {
            if let Some(r) = st
                .index
                .messages
                .get_mut(&key)
                .and_then(|e| e.rcpts.get_mut(rcpt))
                .filter(|r| r.state == RecipientState::Pending)
            {
                // The schedule key must be the recipient's next_attempt:
                // every later removal (outcome, freeze, take) looks it up by
                // that time, and a stale entry would hand a finished
                // recipient out again (simulation seed 1994).
                r.next_attempt = r.next_attempt.max(not_before);
                st.schedule
                    .insert_in((r.next_attempt, key, rcpt as u32), lane);
            }
        }
    }

    /// Earliest next-attempt time among scheduled (not leased) recipients.
    pub fn next_due_time(&self) -> Option<u64> {
        let st = self.sh.st.borrow();
        if let Some(f) = &st.failure {
            // Nothing is due while the store fails; the next probe is.
            return Some(f.retry_at);
        }
        st.schedule.first().map(|k| k.0)
    }

    /// The scheduler's wake-up: `notify_one` is called after every commit,
    /// so a waiting (or next) `notified().await` returns at once. Meant for
    /// one consumer.
    pub fn subscribe(&self) -> Rc<Notify> {
        Rc::clone(&self.sh.arrivals)
    }

    /// Holds a leased recipient back: it is not handed out by [`Queue::due`]
    /// again until [`Queue::take_matching`] or [`Queue::unhold`] releases it
    /// (on-demand delivery: ETRN, ATRN). Memory only: a restart schedules it
    /// again at its recorded next attempt, where the caller holds it anew.
    /// Returns false (and does nothing) when the recipient is not leased.
    pub fn hold(&self, id: &MessageId, rcpt: usize) -> bool {
        let mut st = self.sh.st.borrow_mut();
        let k = (id.key(), rcpt as u32);
        if id.queue != self.sh.cfg.queue_no || !st.leased.remove(&k) {
            return false;
        }
        // On operator hold: it stays out of the schedule until thawed.
        if !st.frozen.contains(&k.0) {
            st.held.insert(k);
        }
        true
    }

    /// Returns held recipients whose address satisfies `matches` to the
    /// schedule, due at their recorded next attempt (a domain no longer held
    /// after a reload). Returns how many.
    pub fn unhold(&self, mut matches: impl FnMut(&str) -> bool) -> usize {
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let mut back = Vec::new();
        for &(key, idx) in &st.held {
            let Some(e) = st.index.messages.get(&key) else {
                continue;
            };
            if e.envelope
                .recipients
                .get(idx as usize)
                .is_some_and(|a| matches(a))
            {
                back.push((e.rcpts[idx as usize].next_attempt, key, idx));
            }
        }
        for &(next, key, idx) in &back {
            st.held.remove(&(key, idx));
            st.schedule.insert((next, key, idx));
        }
        back.len()
    }

    /// Leases every pending recipient whose address satisfies `matches` and
    /// that is not leased already, whether held or scheduled (at any time,
    /// also in the future): what an ETRN or ATRN flushes now. Messages on
    /// operator hold ([`Queue::freeze`]) are left alone. Oldest message
    /// first. The caller records outcomes or [`Queue::release`]s them.
    pub fn take_matching(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<DueRecipient> {
        let frozen = self.sh.st.borrow().frozen.clone();
        self.take_where(|id, env, idx| !frozen.contains(&id.key()) && matches(&env.recipients[idx]))
    }

    /// Leases every pending recipient for which `matches(id, envelope,
    /// index)` holds and that is not leased already: scheduled, held or on
    /// operator hold alike (queue tools: delete, bounce). Oldest message
    /// first. The caller records outcomes or [`Queue::release`]s them.
    pub fn take_where(
        &self,
        mut matches: impl FnMut(MessageId, &Envelope, usize) -> bool,
    ) -> Vec<DueRecipient> {
        let queue_no = self.sh.cfg.queue_no;
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let mut picked: Vec<(u64, u32)> = Vec::new();
        for (&key, e) in &st.index.messages {
            let id = MessageId::from_key(queue_no, key);
            for (idx, r) in e.rcpts.iter().enumerate() {
                let k = (key, idx as u32);
                if r.state == RecipientState::Pending
                    && !st.leased.contains(&k)
                    && matches(id, &e.envelope, idx)
                {
                    picked.push(k);
                }
            }
        }
        picked.sort_unstable();
        let mut out = Vec::with_capacity(picked.len());
        for (key, idx) in picked {
            let e = &st.index.messages[&key];
            let r = &e.rcpts[idx as usize];
            if !st.held.remove(&(key, idx)) {
                st.schedule.remove(&(r.next_attempt, key, idx));
            }
            st.leased.insert((key, idx));
            out.push(DueRecipient {
                id: MessageId::from_key(queue_no, key),
                rcpt: idx as usize,
                recipient: e.envelope.recipients[idx as usize].clone(),
                attempts: r.attempts,
                next_attempt: r.next_attempt,
            });
        }
        out
    }

    /// Makes every scheduled recipient for which `matches(id, envelope,
    /// index)` holds due at `now` (an operator's "retry now"); leased, held
    /// and frozen ones are left alone. Memory only: after a restart the
    /// recorded next attempt applies again. Returns how many; wake the
    /// scheduler with [`Queue::subscribe`] afterwards.
    pub fn retry_now(
        &self,
        now: u64,
        mut matches: impl FnMut(MessageId, &Envelope, usize) -> bool,
    ) -> usize {
        let queue_no = self.sh.cfg.queue_no;
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let moved: Vec<(u64, u64, u32)> = st
            .schedule
            .iter()
            .filter(|&&(next, key, idx)| {
                next > now
                    && st.index.messages.get(&key).is_some_and(|e| {
                        matches(
                            MessageId::from_key(queue_no, key),
                            &e.envelope,
                            idx as usize,
                        )
                    })
            })
            .copied()
            .collect();
        for &(next, key, idx) in &moved {
            st.schedule.remove(&(next, key, idx));
            if let Some(e) = st.index.messages.get_mut(&key) {
                e.rcpts[idx as usize].next_attempt = now;
            }
            st.schedule.insert((now, key, idx));
        }
        moved.len()
    }
}
