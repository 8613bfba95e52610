//! On-disk record format (see `FORMAT.md` for the byte layout table).
//!
//! Sans-I/O: encoding builds byte vectors, decoding reads slices. Recovery
//! decides "complete record" from structure and checksum alone: a length
//! that fits, a known type, zero reserved bytes and a CRC32C over the header
//! and payload. Nothing here trusts an end marker.

use std::net::IpAddr;

use crate::state::{cut_reply, RecipientState, RecipientStatus};
use crate::Envelope;

/// Magic at the start of every segment file.
pub(crate) const SEG_MAGIC: &[u8; 8] = b"IMQSEG\x00\x01";
/// Length of the segment header.
pub(crate) const SEG_HEADER_LEN: usize = 32;
/// Length of a record header: payload length, type, reserved, CRC32C.
pub(crate) const REC_HEADER_LEN: usize = 12;
/// Records start on multiples of this, so a run of zero bytes (a hole left
/// by a failed write) can be told from a header and stepped over.
pub(crate) const ALIGN: usize = 8;
/// Largest payload a reader accepts; a larger length field is corruption
/// (the body of a big message lives in a spill file, not in the record).
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

pub(crate) const TYPE_MESSAGE: u8 = 1;
pub(crate) const TYPE_OUTCOME: u8 = 2;

const FLAG_SPILLED: u8 = 1;

/// Rounds `n` up to the record alignment.
pub(crate) fn align_up(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Builds the 32-byte header of segment `seg`.
pub(crate) fn segment_header(seg: u32, queue_no: u32, created: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(SEG_HEADER_LEN);
    h.extend_from_slice(SEG_MAGIC);
    h.extend_from_slice(&seg.to_le_bytes());
    h.extend_from_slice(&queue_no.to_le_bytes());
    h.extend_from_slice(&created.to_le_bytes());
    h.extend_from_slice(&[0u8; 4]);
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns the segment number written in it.
pub(crate) fn check_segment_header(buf: &[u8]) -> Result<u32, &'static str> {
    if buf.len() < SEG_HEADER_LEN {
        return Err("segment shorter than its header");
    }
    if &buf[..8] != SEG_MAGIC {
        return Err("bad segment magic");
    }
    let crc = u32::from_le_bytes([buf[28], buf[29], buf[30], buf[31]]);
    if crc32c::crc32c(&buf[..28]) != crc {
        return Err("segment header checksum mismatch");
    }
    Ok(u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]))
}

/// A record being built: header placeholder followed by the payload. The
/// header (length, CRC) is filled by [`finish_record`] once the payload is
/// final, which may be after the message key is patched in.
pub(crate) fn begin_record(ty: u8, capacity: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(align_up(REC_HEADER_LEN + capacity));
    b.extend_from_slice(&[0u8; REC_HEADER_LEN]);
    b[4] = ty;
    b
}

/// Length on disk (header + payload + padding) of a record under
/// construction.
pub(crate) fn padded_len(rec: &[u8]) -> usize {
    align_up(rec.len())
}

/// Fills in length and CRC and pads to [`ALIGN`].
pub(crate) fn finish_record(rec: &mut Vec<u8>) {
    let payload_len = (rec.len() - REC_HEADER_LEN) as u32;
    rec[0..4].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[0..8]), &rec[REC_HEADER_LEN..]);
    rec[8..12].copy_from_slice(&crc.to_le_bytes());
    let padded = align_up(rec.len());
    rec.resize(padded, 0);
}

/// Writes the message key (first payload field of MESSAGE and OUTCOME).
pub(crate) fn patch_key(rec: &mut [u8], key: u64) {
    rec[REC_HEADER_LEN..REC_HEADER_LEN + 8].copy_from_slice(&key.to_le_bytes());
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s.as_bytes());
}
fn put_status(b: &mut Vec<u8>, st: &RecipientStatus) {
    b.push(st.state.code());
    put_u32(b, st.attempts);
    put_u64(b, st.next_attempt);
    put_str(b, cut_reply(&st.last_reply));
}

/// Where the body of a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyRef<'a> {
    /// In the record itself.
    Inline(&'a [u8]),
    /// In `big/<name>`, `len` bytes with CRC32C `crc`.
    Spilled { name: &'a str, len: u64, crc: u32 },
}

/// Encodes a MESSAGE record (header not yet finished; key 0 until patched).
pub(crate) fn encode_message(
    key: u64,
    env: &Envelope,
    rcpts: &[RecipientStatus],
    body: &BodyRef<'_>,
) -> Vec<u8> {
    let inline_len = match body {
        BodyRef::Inline(b) => b.len(),
        BodyRef::Spilled { .. } => 0,
    };
    let mut b = begin_record(TYPE_MESSAGE, 256 + inline_len);
    put_u64(&mut b, key);
    put_u64(&mut b, env.arrival);
    b.push(match body {
        BodyRef::Inline(_) => 0,
        BodyRef::Spilled { .. } => FLAG_SPILLED,
    });
    put_str(&mut b, &env.sender);
    put_str(
        &mut b,
        &env.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
    );
    put_str(&mut b, &env.helo);
    match &env.auth_user {
        Some(u) => {
            b.push(1);
            put_str(&mut b, u);
        }
        None => b.push(0),
    }
    put_u32(&mut b, env.extra.len() as u32);
    for (k, v) in &env.extra {
        put_str(&mut b, k);
        put_str(&mut b, v);
    }
    put_u32(&mut b, env.recipients.len() as u32);
    for (addr, st) in env.recipients.iter().zip(rcpts) {
        put_str(&mut b, addr);
        put_status(&mut b, st);
    }
    match body {
        BodyRef::Inline(data) => {
            put_u32(&mut b, data.len() as u32);
            b.extend_from_slice(data);
        }
        BodyRef::Spilled { name, len, crc } => {
            put_str(&mut b, name);
            put_u64(&mut b, *len);
            put_u32(&mut b, *crc);
        }
    }
    b
}

/// Encodes an OUTCOME record: new status of some recipients of `key`.
pub(crate) fn encode_outcome(key: u64, changes: &[(u32, RecipientStatus)]) -> Vec<u8> {
    let mut b = begin_record(TYPE_OUTCOME, 16 + changes.len() * 64);
    put_u64(&mut b, key);
    put_u32(&mut b, changes.len() as u32);
    for (idx, st) in changes {
        put_u32(&mut b, *idx);
        put_status(&mut b, st);
    }
    b
}

/// What one aligned position of a segment holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// A complete record with a valid checksum. `next` is the aligned
    /// offset after it; `len` its unpadded length.
    Record {
        ty: u8,
        payload: &'a [u8],
        len: usize,
        next: usize,
    },
    /// Eight zero bytes: part of a hole, not a record.
    Hole { next: usize },
    /// A record whose length is sane but whose checksum or reserved bytes
    /// are wrong: skipped by its length.
    Corrupt { reason: &'static str, next: usize },
    /// Not a record and no trustworthy length: the rest is torn.
    Torn { reason: &'static str },
}

/// Parses the record at `off` (a multiple of [`ALIGN`]).
pub(crate) fn parse_at(buf: &[u8], off: usize) -> Parsed<'_> {
    let rest = &buf[off.min(buf.len())..];
    if rest.len() >= ALIGN && rest[..ALIGN].iter().all(|&b| b == 0) {
        return Parsed::Hole { next: off + ALIGN };
    }
    if rest.len() < REC_HEADER_LEN {
        return Parsed::Torn {
            reason: "partial record header",
        };
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Parsed::Torn {
            reason: "record length out of range",
        };
    }
    if REC_HEADER_LEN + len > rest.len() {
        return Parsed::Torn {
            reason: "record extends past end of segment",
        };
    }
    let next = off + align_up(REC_HEADER_LEN + len);
    let payload = &rest[REC_HEADER_LEN..REC_HEADER_LEN + len];
    let stored = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    if crc32c::crc32c_append(crc32c::crc32c(&rest[..8]), payload) != stored {
        return Parsed::Corrupt {
            reason: "record checksum mismatch",
            next,
        };
    }
    if rest[5..8] != [0, 0, 0] {
        return Parsed::Corrupt {
            reason: "record reserved bytes not zero",
            next,
        };
    }
    Parsed::Record {
        ty: rest[4],
        payload,
        len: REC_HEADER_LEN + len,
        next,
    }
}

/// A decoded MESSAGE payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MessageRecord {
    pub(crate) key: u64,
    pub(crate) envelope: Envelope,
    pub(crate) rcpts: Vec<RecipientStatus>,
    pub(crate) body: BodyLoc,
}

/// Where a body is, as remembered by the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyLoc {
    /// `len` bytes at `start` from the beginning of the record (header
    /// included).
    Inline { start: u32, len: u32 },
    /// A spill file under `big/`.
    Spilled { name: String, len: u64, crc: u32 },
}

impl BodyLoc {
    pub(crate) fn len(&self) -> u64 {
        match self {
            BodyLoc::Inline { len, .. } => u64::from(*len),
            BodyLoc::Spilled { len, .. } => *len,
        }
    }
}

/// A decoded OUTCOME payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutcomeRecord {
    pub(crate) key: u64,
    pub(crate) changes: Vec<(u32, RecipientStatus)>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type DecodeResult<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err("field extends past end of record");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> DecodeResult<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> DecodeResult<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> DecodeResult<String> {
        let n = self.u32()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| "string is not UTF-8")
    }
    fn status(&mut self) -> DecodeResult<RecipientStatus> {
        let state = RecipientState::from_code(self.u8()?).ok_or("unknown recipient state")?;
        Ok(RecipientStatus {
            state,
            attempts: self.u32()?,
            next_attempt: self.u64()?,
            last_reply: self.str()?,
        })
    }
    /// A count of items each at least `min` bytes long, checked against the
    /// remaining length so a corrupt count cannot ask for a huge allocation.
    fn count(&mut self, min: usize) -> DecodeResult<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.buf.len() - self.pos {
            return Err("item count exceeds record length");
        }
        Ok(n)
    }
}

/// Decodes a MESSAGE payload. `payload` starts after the record header.
pub(crate) fn decode_message(payload: &[u8]) -> DecodeResult<MessageRecord> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let key = r.u64()?;
    let arrival = r.u64()?;
    let flags = r.u8()?;
    if flags & !FLAG_SPILLED != 0 {
        return Err("unknown message flags");
    }
    let sender = r.str()?;
    let ip = r.str()?;
    let client_ip = if ip.is_empty() {
        None
    } else {
        Some(ip.parse::<IpAddr>().map_err(|_| "bad client IP")?)
    };
    let helo = r.str()?;
    let auth_user = match r.u8()? {
        0 => None,
        1 => Some(r.str()?),
        _ => return Err("bad auth flag"),
    };
    let n_extra = r.count(8)?;
    let mut extra = Vec::with_capacity(n_extra);
    for _ in 0..n_extra {
        let k = r.str()?;
        let v = r.str()?;
        extra.push((k, v));
    }
    let n_rcpt = r.count(25)?;
    if n_rcpt == 0 {
        return Err("message without recipients");
    }
    let mut recipients = Vec::with_capacity(n_rcpt);
    let mut rcpts = Vec::with_capacity(n_rcpt);
    for _ in 0..n_rcpt {
        recipients.push(r.str()?);
        rcpts.push(r.status()?);
    }
    let body = if flags & FLAG_SPILLED != 0 {
        let name = r.str()?;
        if !valid_spill_name(&name) {
            return Err("bad spill file name");
        }
        BodyLoc::Spilled {
            name,
            len: r.u64()?,
            crc: r.u32()?,
        }
    } else {
        let len = r.u32()?;
        let start = (REC_HEADER_LEN + r.pos) as u32;
        r.take(len as usize)?;
        BodyLoc::Inline { start, len }
    };
    if r.pos != payload.len() {
        return Err("trailing bytes after message");
    }
    Ok(MessageRecord {
        key,
        envelope: Envelope {
            sender,
            recipients,
            arrival,
            client_ip,
            helo,
            auth_user,
            extra,
        },
        rcpts,
        body,
    })
}

/// Decodes an OUTCOME payload.
pub(crate) fn decode_outcome(payload: &[u8]) -> DecodeResult<OutcomeRecord> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let key = r.u64()?;
    let n = r.count(21)?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        let idx = r.u32()?;
        changes.push((idx, r.status()?));
    }
    if r.pos != payload.len() {
        return Err("trailing bytes after outcome");
    }
    Ok(OutcomeRecord { key, changes })
}

/// Spill file names are made by this crate: lowercase hex digits only, so a
/// corrupt record can never name a path outside `big/`.
pub(crate) fn valid_spill_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Segment file name for segment number `seg`.
pub(crate) fn segment_file_name(seg: u32) -> String {
    format!("{seg:08x}.log")
}

/// Segment number from a file name made by [`segment_file_name`].
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            sender: "a@example.org".into(),
            recipients: vec!["b@example.net".into(), "c@example.com".into()],
            arrival: 1_700_000_000,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            helo: "mx.example.org".into(),
            auth_user: Some("alice".into()),
            extra: vec![("qqeh".into(), "X-Foo: bar\n".into())],
        }
    }

    fn full(rec: &mut Vec<u8>) -> &[u8] {
        finish_record(rec);
        rec
    }

    #[test]
    fn message_round_trip_inline() {
        let e = env();
        let st = vec![RecipientStatus::new(5); 2];
        let mut rec = encode_message(0, &e, &st, &BodyRef::Inline(b"Subject: x\r\n\r\nhi\r\n"));
        patch_key(&mut rec, 0x1_0000_0020);
        let buf = full(&mut rec).to_vec();
        assert_eq!(buf.len() % ALIGN, 0);
        match parse_at(&buf, 0) {
            Parsed::Record {
                ty, payload, next, ..
            } => {
                assert_eq!(ty, TYPE_MESSAGE);
                assert_eq!(next, buf.len());
                let m = decode_message(payload).unwrap();
                assert_eq!(m.key, 0x1_0000_0020);
                assert_eq!(m.envelope, e);
                assert_eq!(m.rcpts, st);
                let BodyLoc::Inline { start, len } = m.body else {
                    panic!("not inline")
                };
                assert_eq!(
                    &buf[start as usize..(start + len) as usize],
                    b"Subject: x\r\n\r\nhi\r\n"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn message_round_trip_spilled_and_minimal() {
        let e = Envelope {
            sender: String::new(),
            recipients: vec!["x@y".into()],
            arrival: 0,
            client_ip: None,
            helo: String::new(),
            auth_user: None,
            extra: vec![],
        };
        let st = vec![RecipientStatus::new(0)];
        let mut rec = encode_message(
            7,
            &e,
            &st,
            &BodyRef::Spilled {
                name: "00ab",
                len: 11 << 20,
                crc: 42,
            },
        );
        let buf = full(&mut rec).to_vec();
        let Parsed::Record { payload, .. } = parse_at(&buf, 0) else {
            panic!()
        };
        let m = decode_message(payload).unwrap();
        assert_eq!(m.envelope, e);
        assert_eq!(
            m.body,
            BodyLoc::Spilled {
                name: "00ab".into(),
                len: 11 << 20,
                crc: 42
            }
        );
    }

    #[test]
    fn outcome_round_trip() {
        let ch = vec![
            (
                0,
                RecipientStatus {
                    state: RecipientState::Done,
                    attempts: 1,
                    next_attempt: 0,
                    last_reply: "250 ok".into(),
                },
            ),
            (
                3,
                RecipientStatus {
                    state: RecipientState::Pending,
                    attempts: 2,
                    next_attempt: 99,
                    last_reply: "451 later".into(),
                },
            ),
        ];
        let mut rec = encode_outcome(9, &ch);
        let buf = full(&mut rec).to_vec();
        let Parsed::Record { ty, payload, .. } = parse_at(&buf, 0) else {
            panic!()
        };
        assert_eq!(ty, TYPE_OUTCOME);
        assert_eq!(
            decode_outcome(payload).unwrap(),
            OutcomeRecord {
                key: 9,
                changes: ch
            }
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut rec = encode_outcome(9, &[(0, RecipientStatus::new(1))]);
        let len = rec.len();
        let buf = full(&mut rec).to_vec();
        for i in 0..len {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(
                !matches!(parse_at(&b, 0), Parsed::Record { .. }),
                "flip at {i} accepted"
            );
        }
    }

    #[test]
    fn truncation_is_torn() {
        let mut rec = encode_outcome(9, &[(0, RecipientStatus::new(1))]);
        let len = rec.len();
        let buf = full(&mut rec).to_vec();
        for cut in 1..len {
            assert!(
                matches!(parse_at(&buf[..cut], 0), Parsed::Torn { .. }),
                "cut at {cut}"
            );
        }
        assert_eq!(parse_at(&[0u8; 16], 0), Parsed::Hole { next: 8 });
    }

    #[test]
    fn hostile_payloads_do_not_panic() {
        // Counts and lengths far beyond the payload must be errors.
        let mut p = vec![0u8; 17];
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_message(&p).is_err());
        let mut p = 9u64.to_le_bytes().to_vec();
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_outcome(&p).is_err());
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let _ = decode_message(&junk);
            let _ = decode_outcome(&junk);
        }
    }

    #[test]
    fn segment_header_and_names() {
        let h = segment_header(5, 2, 77);
        assert_eq!(h.len(), SEG_HEADER_LEN);
        assert_eq!(check_segment_header(&h), Ok(5));
        let mut bad = h.clone();
        bad[9] ^= 1;
        assert!(check_segment_header(&bad).is_err());
        assert_eq!(segment_file_name(0x1a), "0000001a.log");
        assert_eq!(parse_segment_file_name("0000001a.log"), Some(0x1a));
        assert_eq!(parse_segment_file_name("1a.log"), None);
        assert!(valid_spill_name("00ff"));
        assert!(!valid_spill_name("../x"));
    }
}
