//! The retry schedule split by delivery channel, as qmail-send keeps its
//! local and remote jobs apart.
//!
//! A recipient starts in the unsorted lane. When the scheduler has
//! classified it and found its channel full, it puts it back in that
//! channel's lane ([`Lane::Local`], [`Lane::Remote`]), so the next rounds
//! take from a lane only as many as its channel has free slots. Without the
//! split, a flood for one channel made every freed slot hand out, classify
//! and put back the whole look-ahead (one slot, ~170 recipients moved).
//! Lanes are memory only: a restart starts every recipient unsorted.

use std::collections::{BTreeSet, HashMap};

/// A schedule entry: (next attempt, message key, recipient index).
pub(super) type Slot = (u64, u64, u32);

/// Which part of the schedule a pending recipient waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Not classified since it was last scheduled.
    Unsorted,
    /// Waits for a local delivery slot (`concurrencylocal`).
    Local,
    /// Waits for a remote delivery slot (`concurrencyremote`).
    Remote,
}

impl Lane {
    const ALL: [Lane; 3] = [Lane::Unsorted, Lane::Local, Lane::Remote];

    fn index(self) -> usize {
        match self {
            Lane::Unsorted => 0,
            Lane::Local => 1,
            Lane::Remote => 2,
        }
    }
}

/// How many due recipients to take from each lane in one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneLimits {
    /// From the unsorted lane (the scheduler classifies them).
    pub unsorted: usize,
    /// From the local lane.
    pub local: usize,
    /// From the remote lane.
    pub remote: usize,
}

impl LaneLimits {
    fn of(&self, lane: Lane) -> usize {
        match lane {
            Lane::Unsorted => self.unsorted,
            Lane::Local => self.local,
            Lane::Remote => self.remote,
        }
    }
}

/// The scheduled (pending, not leased, not held) recipients, by lane.
#[derive(Default)]
pub(super) struct Schedule {
    lanes: [BTreeSet<Slot>; 3],
    /// The lane of each entry not in the unsorted lane.
    sorted: HashMap<(u64, u32), Lane>,
}

impl Schedule {
    /// Schedules `k` in the unsorted lane.
    pub(super) fn insert(&mut self, k: Slot) {
        self.insert_in(k, Lane::Unsorted);
    }

    /// Schedules `k` in `lane`.
    pub(super) fn insert_in(&mut self, k: Slot, lane: Lane) {
        // An entry is in one lane only.
        match self.sorted.remove(&(k.1, k.2)) {
            Some(old) => {
                self.lanes[old.index()].remove(&k);
            }
            None if lane != Lane::Unsorted => {
                self.lanes[Lane::Unsorted.index()].remove(&k);
            }
            None => {}
        }
        if lane != Lane::Unsorted {
            self.sorted.insert((k.1, k.2), lane);
        }
        self.lanes[lane.index()].insert(k);
    }

    /// Takes `k` out of whichever lane holds it; false if none does.
    pub(super) fn remove(&mut self, k: &Slot) -> bool {
        let lane = self.sorted.remove(&(k.1, k.2)).unwrap_or(Lane::Unsorted);
        self.lanes[lane.index()].remove(k)
    }

    /// The earliest entry of all lanes.
    pub(super) fn first(&self) -> Option<&Slot> {
        self.lanes.iter().filter_map(BTreeSet::first).min()
    }

    /// Entries in all lanes.
    pub(super) fn len(&self) -> usize {
        self.lanes.iter().map(BTreeSet::len).sum()
    }

    /// Every entry, lane by lane (each lane in time order).
    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.lanes.iter().flatten()
    }

    /// Takes out up to `limits` entries due at or before `now` from each
    /// lane, and returns them earliest first with the lane each came from.
    pub(super) fn take_due(&mut self, now: u64, limits: LaneLimits) -> Vec<(Slot, Lane)> {
        let mut out = Vec::new();
        for lane in Lane::ALL {
            let set = &self.lanes[lane.index()];
            let picked: Vec<Slot> = set
                .iter()
                .take_while(|k| k.0 <= now)
                .take(limits.of(lane))
                .copied()
                .collect();
            for k in picked {
                self.remove(&k);
                out.push((k, lane));
            }
        }
        out.sort_unstable_by_key(|&(k, _)| k);
        out
    }

    /// Takes out the `limit` earliest entries due at or before `now`,
    /// whatever their lanes, earliest first.
    pub(super) fn take_due_earliest(&mut self, now: u64, limit: usize) -> Vec<(Slot, Lane)> {
        let mut candidates: Vec<(Slot, Lane)> = Lane::ALL
            .iter()
            .flat_map(|&lane| {
                self.lanes[lane.index()]
                    .iter()
                    .take_while(|k| k.0 <= now)
                    .take(limit)
                    .map(move |&k| (k, lane))
            })
            .collect();
        candidates.sort_unstable_by_key(|&(k, _)| k);
        candidates.truncate(limit);
        for (k, _) in &candidates {
            self.remove(k);
        }
        candidates
    }
}

impl FromIterator<Slot> for Schedule {
    fn from_iter<I: IntoIterator<Item = Slot>>(iter: I) -> Self {
        let mut s = Schedule::default();
        s.lanes[0] = iter.into_iter().collect();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_hand_out_by_their_own_limits_in_time_order() {
        let mut s = Schedule::default();
        s.insert((5, 1, 0));
        s.insert_in((1, 2, 0), Lane::Local);
        s.insert_in((2, 3, 0), Lane::Local);
        s.insert_in((3, 4, 0), Lane::Remote);
        assert_eq!(s.len(), 4);
        assert_eq!(s.first(), Some(&(1, 2, 0)));
        let got = s.take_due(
            10,
            LaneLimits {
                unsorted: 5,
                local: 1,
                remote: 0,
            },
        );
        assert_eq!(
            got,
            vec![((1, 2, 0), Lane::Local), ((5, 1, 0), Lane::Unsorted)]
        );
        assert_eq!(s.len(), 2);
        s.insert((0, 9, 0));
        assert_eq!(
            s.take_due_earliest(10, 1),
            vec![((0, 9, 0), Lane::Unsorted)]
        );
        // Not yet due stays.
        assert!(s
            .take_due(
                1,
                LaneLimits {
                    unsorted: 9,
                    local: 9,
                    remote: 9
                }
            )
            .is_empty());
    }

    #[test]
    fn remove_finds_the_entry_in_its_lane_and_forgets_the_lane() {
        let mut s = Schedule::default();
        s.insert_in((3, 4, 1), Lane::Remote);
        assert!(s.remove(&(3, 4, 1)));
        assert!(!s.remove(&(3, 4, 1)));
        assert_eq!(s.len(), 0);
        // Back in, unsorted; moving lanes leaves no copy behind.
        s.insert((3, 4, 1));
        s.insert_in((3, 4, 1), Lane::Local);
        assert_eq!(s.len(), 1);
        assert_eq!(s.iter().count(), 1);
        assert!(s.sorted.len() == 1);
        assert!(s.remove(&(3, 4, 1)));
        assert!(s.sorted.is_empty());
    }
}
