//! Replay of segments into the in-memory index (sans-I/O).
//!
//! Shared by [`crate::Queue::open`] (which then truncates torn tails) and by
//! the read-only [`crate::scan`] (which never writes). Records are applied in
//! log order (segment number, then offset), which is the order they were
//! reserved in, so a later record always wins.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use crate::format::{
    check_segment_header, decode_message, decode_outcome, parse_at, BodyLoc, MessageRecord,
    OutcomeRecord, Parsed, SEG_HEADER_LEN, TYPE_MESSAGE, TYPE_OUTCOME,
};
use crate::state::RecipientStatus;
use crate::Envelope;

/// A decoded record.
#[derive(Debug)]
pub(crate) enum Decoded {
    Message(MessageRecord),
    Outcome(OutcomeRecord),
}

/// What scanning one segment found.
#[derive(Debug, Default)]
pub(crate) struct SegmentScan {
    /// End of the last complete record including its padding (or of the
    /// header): where appends
    /// may continue. 0 when even the header is incomplete.
    pub(crate) valid_end: usize,
    /// Bytes after `valid_end`.
    pub(crate) torn_bytes: u64,
    /// Records before `valid_end` that failed their checksum or decoding,
    /// skipped by their length: (offset, reason).
    pub(crate) corrupt: Vec<(usize, &'static str)>,
    /// Why the header is unusable, if it is.
    pub(crate) header_error: Option<&'static str>,
    /// Complete records applied.
    pub(crate) records: u64,
}

/// Scans one segment's bytes, calling `f(offset, unpadded_len, record)` for
/// each complete record in order.
///
/// Corruption policy: a record whose length field is sane (fits in the
/// file, ≤ 64 MiB) but whose checksum fails is skipped by its length and
/// reported, as long as a valid record follows it somewhere; if nothing
/// valid follows, it is part of the torn tail. A record whose length cannot
/// be trusted ends the scan: the rest of the segment is torn.
pub(crate) fn scan_segment(buf: &[u8], mut f: impl FnMut(usize, usize, Decoded)) -> SegmentScan {
    let mut scan = SegmentScan::default();
    if buf.len() < SEG_HEADER_LEN {
        scan.header_error = Some("segment shorter than its header");
        scan.torn_bytes = buf.len() as u64;
        return scan;
    }
    if let Err(e) = check_segment_header(buf) {
        scan.header_error = Some(e);
    }
    let mut off = SEG_HEADER_LEN;
    scan.valid_end = SEG_HEADER_LEN;
    let mut pending_corrupt: Vec<(usize, &'static str)> = Vec::new();
    while off < buf.len() {
        match parse_at(buf, off) {
            Parsed::Record {
                ty,
                payload,
                len,
                next,
            } => {
                let decoded = match ty {
                    TYPE_MESSAGE => decode_message(payload).map(Decoded::Message),
                    TYPE_OUTCOME => decode_outcome(payload).map(Decoded::Outcome),
                    _ => Err("unknown record type"),
                };
                match decoded {
                    Ok(d) => {
                        f(off, len, d);
                        scan.records += 1;
                    }
                    Err(reason) => pending_corrupt.push((off, reason)),
                }
                // A checksummed record is structurally complete even if its
                // content is unusable: appends continue after it.
                scan.corrupt.append(&mut pending_corrupt);
                scan.valid_end = next.min(buf.len());
                off = next;
            }
            Parsed::Hole { next } => off = next,
            Parsed::Corrupt { reason, next } => {
                pending_corrupt.push((off, reason));
                off = next;
            }
            Parsed::Torn { .. } => break,
        }
    }
    scan.torn_bytes = (buf.len() - scan.valid_end) as u64;
    scan
}

/// One live message.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) envelope: Rc<Envelope>,
    pub(crate) rcpts: Vec<RecipientStatus>,
    /// Segment holding the current MESSAGE record.
    pub(crate) seg: u32,
    /// Offset of that record in the segment.
    pub(crate) offset: u32,
    /// Unpadded length of that record.
    pub(crate) len: u32,
    pub(crate) body: BodyLoc,
}

impl Entry {
    pub(crate) fn is_dead(&self) -> bool {
        self.rcpts.iter().all(|r| r.state.is_final())
    }
}

/// Live messages per segment: a segment with none can be deleted (subject
/// to the prefix rule in `queue.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SegLive {
    pub(crate) msgs: u64,
    pub(crate) bytes: u64,
}

/// Hasher for message keys. Keys are positions in our own log, not
/// attacker-chosen, so a multiplicative hash is enough, and it is several
/// times cheaper than SipHash when a million messages are indexed at open.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; fold the high half down since hashbrown uses
        // the top bits for tags and the low bits for buckets.
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

pub(crate) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// The in-memory index: live messages by key.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) messages: KeyMap<Entry>,
    pub(crate) live: HashMap<u32, SegLive, BuildHasherDefault<KeyHasher>>,
    /// OUTCOME records naming a message no longer (or never) present:
    /// normal after a segment holding a dead message was deleted.
    pub(crate) orphan_outcomes: u64,
    /// OUTCOME entries naming a recipient index out of range.
    pub(crate) bad_outcomes: u64,
}

impl Index {
    /// Applies one record read at (`seg`, `offset`).
    pub(crate) fn apply(&mut self, seg: u32, offset: usize, len: usize, rec: Decoded) {
        match rec {
            Decoded::Message(m) => {
                let entry = Entry {
                    envelope: Rc::new(m.envelope),
                    rcpts: m.rcpts,
                    seg,
                    offset: offset as u32,
                    len: len as u32,
                    body: m.body,
                };
                self.remove(m.key);
                if !entry.is_dead() {
                    self.insert(m.key, entry);
                }
            }
            Decoded::Outcome(o) => {
                let Some(e) = self.messages.get_mut(&o.key) else {
                    self.orphan_outcomes += 1;
                    return;
                };
                for (idx, st) in o.changes {
                    match e.rcpts.get_mut(idx as usize) {
                        Some(slot) => *slot = st,
                        None => self.bad_outcomes += 1,
                    }
                }
                if e.is_dead() {
                    self.remove(o.key);
                }
            }
        }
    }

    /// Inserts (or replaces) a live message.
    pub(crate) fn insert(&mut self, key: u64, entry: Entry) {
        self.remove(key);
        let l = self.live.entry(entry.seg).or_default();
        l.msgs += 1;
        l.bytes += u64::from(entry.len);
        self.messages.insert(key, entry);
    }

    /// Removes a message, keeping the per-segment counts right.
    pub(crate) fn remove(&mut self, key: u64) -> Option<Entry> {
        let e = self.messages.remove(&key)?;
        if let Some(l) = self.live.get_mut(&e.seg) {
            l.msgs -= 1;
            l.bytes -= u64::from(e.len);
            if l.msgs == 0 {
                self.live.remove(&e.seg);
            }
        }
        Some(e)
    }

    /// Live messages whose MESSAGE record is in `seg`.
    pub(crate) fn live_in(&self, seg: u32) -> SegLive {
        self.live.get(&seg).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{
        encode_message, encode_outcome, finish_record, patch_key, segment_header, BodyRef,
    };
    use crate::state::RecipientState;

    fn env(n: usize) -> Envelope {
        Envelope {
            sender: "s@x".into(),
            recipients: (0..n).map(|i| format!("r{i}@y")).collect(),
            arrival: 1,
            client_ip: None,
            helo: "h".into(),
            auth_user: None,
            extra: vec![],
        }
    }

    fn seg_with(records: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = segment_header(1, 1, 0);
        let mut offs = Vec::new();
        for r in records {
            offs.push(buf.len());
            buf.extend_from_slice(r);
        }
        (buf, offs)
    }

    fn msg(key: u64, n: usize) -> Vec<u8> {
        let mut r = encode_message(
            0,
            &env(n),
            &vec![RecipientStatus::new(1); n],
            &BodyRef::Inline(b"body"),
        );
        patch_key(&mut r, key);
        finish_record(&mut r);
        r
    }

    fn done(key: u64, idx: u32) -> Vec<u8> {
        let mut r = encode_outcome(
            key,
            &[(
                idx,
                RecipientStatus {
                    state: RecipientState::Done,
                    attempts: 1,
                    next_attempt: 1,
                    last_reply: "250".into(),
                },
            )],
        );
        finish_record(&mut r);
        r
    }

    fn replay(buf: &[u8]) -> (Index, SegmentScan) {
        let mut idx = Index::default();
        let scan = scan_segment(buf, |off, len, d| idx.apply(1, off, len, d));
        (idx, scan)
    }

    #[test]
    fn outcomes_kill_messages() {
        let (buf, _) = seg_with(&[msg(1, 2), msg(2, 1), done(1, 0), done(2, 0), done(9, 0)]);
        let (idx, scan) = replay(&buf);
        assert_eq!(scan.records, 5);
        assert_eq!(scan.torn_bytes, 0);
        assert_eq!(idx.messages.len(), 1);
        let e = &idx.messages[&1];
        assert_eq!(e.rcpts[0].state, RecipientState::Done);
        assert_eq!(e.rcpts[1].state, RecipientState::Pending);
        assert_eq!(idx.orphan_outcomes, 1);
        assert_eq!(idx.live_in(1).msgs, 1);
    }

    #[test]
    fn torn_tail_at_every_length() {
        let recs = [msg(1, 1), msg(2, 3), done(2, 1)];
        let (buf, offs) = seg_with(&recs);
        let last = *offs.last().unwrap();
        for cut in last..buf.len() {
            let (idx, scan) = replay(&buf[..cut]);
            assert_eq!(scan.records, 2, "cut {cut}");
            assert_eq!(scan.valid_end, last);
            assert!(scan.corrupt.is_empty());
            assert_eq!(idx.messages[&2].rcpts[1].state, RecipientState::Pending);
        }
    }

    #[test]
    fn corrupt_middle_record_is_skipped() {
        let (mut buf, offs) = seg_with(&[msg(1, 1), msg(2, 1), msg(3, 1)]);
        buf[offs[1] + 20] ^= 0xff;
        let (idx, scan) = replay(&buf);
        assert_eq!(scan.records, 2);
        assert_eq!(scan.corrupt.len(), 1);
        assert_eq!(scan.corrupt[0].0, offs[1]);
        assert_eq!(scan.torn_bytes, 0);
        assert!(idx.messages.contains_key(&1) && idx.messages.contains_key(&3));
        assert!(!idx.messages.contains_key(&2));
    }

    #[test]
    fn corrupt_last_record_is_torn() {
        let (mut buf, offs) = seg_with(&[msg(1, 1), msg(2, 1)]);
        buf[offs[1] + 20] ^= 0xff;
        let (idx, scan) = replay(&buf);
        assert_eq!(scan.records, 1);
        assert!(scan.corrupt.is_empty());
        assert!(scan.torn_bytes > 0);
        assert_eq!(idx.messages.len(), 1);
    }

    #[test]
    fn insane_length_ends_segment() {
        let (mut buf, offs) = seg_with(&[msg(1, 1), msg(2, 1), msg(3, 1)]);
        buf[offs[1] + 3] = 0x7f;
        let (idx, scan) = replay(&buf);
        assert_eq!(scan.records, 1);
        assert_eq!(scan.valid_end, offs[1]);
        assert_eq!(idx.messages.len(), 1);
    }

    #[test]
    fn holes_are_stepped_over() {
        let (mut buf, _) = seg_with(&[msg(1, 1)]);
        buf.extend_from_slice(&[0u8; 64]);
        buf.extend_from_slice(&msg(2, 1));
        let (idx, scan) = replay(&buf);
        assert_eq!(scan.records, 2);
        assert_eq!(scan.torn_bytes, 0);
        assert_eq!(idx.messages.len(), 2);
    }

    #[test]
    fn bad_header_is_reported_records_still_read() {
        let (mut buf, _) = seg_with(&[msg(1, 1)]);
        buf[0] = b'X';
        let (idx, scan) = replay(&buf);
        assert!(scan.header_error.is_some());
        assert_eq!(idx.messages.len(), 1);
        let (_, scan) = replay(&buf[..10]);
        assert_eq!(scan.valid_end, 0);
    }
}
