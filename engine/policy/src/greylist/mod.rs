//! Greylisting (RFC 6647) as qmail-greyd does it, kept in memory per shard.
//!
//! A delivery attempt is identified by the triplet (client network, sender, recipient); the
//! network is the client's /24 for IPv4 and /64 for IPv6, because large senders retry from
//! another address of the same farm. The first attempt is deferred with
//! `451 4.7.1 Greylisted, try again later`; a retry at least `min_resend` and at most `window`
//! after the first attempt passes; a retry after the window starts over. Once a triplet passes,
//! it and the client network are remembered for `timeout`, so later mail from there is not
//! delayed. Null-sender (bounce) triplets are forgotten as soon as they pass. Addresses in the
//! whitelist are never greylisted. When every recipient of a message passes the message
//! passes; if any is deferred the message is deferred.
//!
//! The state is a plain struct with an injected clock (`now: SystemTime`), bounded in size:
//! expired records are purged when the table is full, and if it is still full the oldest
//! unpassed eighth is dropped (those senders are greylisted again, never blocked). [`save`]
//! writes it atomically (temporary file, fsync, rename, fsync of the directory) in a compact
//! checksummed format so a restart does not greylist everyone again; [`load`] refuses a
//! truncated or corrupt file rather than trusting part of it.
//!
//! [`save`]: Greylist::save
//! [`load`]: Greylist::load

pub mod udp;
mod whitelist;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use udp::{GreyReason, GreyReply};
pub use whitelist::Whitelist;

use crate::Verdict;

/// Greylisting parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreylistConfig {
    /// Earliest accepted retry after the first attempt (qmail-greyd `-m`, default 5 min).
    pub min_resend: Duration,
    /// Latest accepted retry after the first attempt (`-g`, default 12 h).
    pub window: Duration,
    /// How long a passed triplet / client network stays accepted (`-t`, default 7 days).
    pub timeout: Duration,
    /// Most triplets (and most remembered networks) kept (`-h`, default 65536).
    pub max_entries: usize,
}

impl Default for GreylistConfig {
    fn default() -> Self {
        GreylistConfig {
            min_resend: Duration::from_secs(5 * 60),
            window: Duration::from_secs(12 * 3600),
            timeout: Duration::from_secs(7 * 86400),
            max_entries: 65536,
        }
    }
}

impl GreylistConfig {
    /// The values IndiMail's installer gives the `greylist.1999` service: 2 min, 24 h, 30 days.
    pub fn indimail_installer() -> Self {
        GreylistConfig {
            min_resend: Duration::from_secs(2 * 60),
            window: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(30 * 86400),
            max_entries: 65536,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreyDecision {
    /// Deliver. The reason says why (whitelisted, remembered, passed now, bounce).
    Pass(GreyReason),
    /// Defer with 451. The reason says why (new, too early, stale).
    Defer(GreyReason),
}

impl GreyDecision {
    /// `Accept` or `451 4.7.1 Greylisted, try again later`.
    pub fn verdict(&self) -> Verdict {
        match self {
            GreyDecision::Pass(_) => Verdict::Accept,
            GreyDecision::Defer(r) => Verdict::Reject {
                code: 451,
                enhanced: (4, 7, 1),
                text: "Greylisted, try again later".into(),
                rule: format!("greylist:{r:?}"),
            },
        }
    }

    /// The same decision as qmail-greyd's 2-byte reply.
    pub fn reply(&self) -> GreyReply {
        match *self {
            GreyDecision::Pass(r) | GreyDecision::Defer(r) => GreyReply::new(r),
        }
    }
}

/// Errors saving or loading the state file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GreylistError {
    /// File system error.
    #[error("greylist state {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The file is not a complete state file written by [`Greylist::save`].
    #[error("greylist state {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    net: IpAddr,
    sender: Box<str>,
    rcpt: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// First attempt (unix seconds) of the current window.
    first: u64,
    /// Accepted until (unix seconds), once passed; 0 = not passed.
    passed_until: u64,
}

/// Greylisting state for one shard.
#[derive(Debug, Clone)]
pub struct Greylist {
    config: GreylistConfig,
    whitelist: Whitelist,
    nets: HashMap<IpAddr, u64>,
    triplets: HashMap<Key, Entry>,
}

/// The client's network as greylisting sees it: /24 for IPv4, /64 for IPv6.
pub fn network(ip: IpAddr) -> IpAddr {
    match crate::canonical_ip(ip) {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

const MAGIC: &[u8; 8] = b"IMGREY1\n";

impl Greylist {
    /// Empty state.
    pub fn new(config: GreylistConfig, whitelist: Whitelist) -> Greylist {
        Greylist {
            config,
            whitelist,
            nets: HashMap::new(),
            triplets: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GreylistConfig {
        &self.config
    }

    /// Replaces the whitelist (SIGHUP in qmail-greyd).
    pub fn set_whitelist(&mut self, whitelist: Whitelist) {
        self.whitelist = whitelist;
    }

    /// Number of triplets held.
    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    /// True when no triplet is held.
    pub fn is_empty(&self) -> bool {
        self.triplets.is_empty()
    }

    /// Decides one message from `ip` with this envelope at time `now`, and records it.
    /// `sender` is empty for `<>`. Addresses are compared case-insensitively.
    pub fn check<S: AsRef<str>>(
        &mut self,
        ip: IpAddr,
        sender: &str,
        rcpts: &[S],
        now: SystemTime,
    ) -> GreyDecision {
        if self.whitelist.contains(ip) {
            return GreyDecision::Pass(GreyReason::WhitelistedIp);
        }
        let t = secs(now);
        let net = network(ip);
        if self.nets.get(&net).is_some_and(|&until| until > t) {
            return GreyDecision::Pass(GreyReason::Ok);
        }
        let (min, window) = (
            self.config.min_resend.as_secs(),
            self.config.window.as_secs(),
        );
        let sender = sender.to_ascii_lowercase();
        let mut deferred: Option<GreyReason> = None;
        let mut keys = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            let key = Key {
                net,
                sender: sender.as_str().into(),
                rcpt: r.as_ref().to_ascii_lowercase().into(),
            };
            let reason = match self.triplets.get_mut(&key) {
                Some(e) if e.passed_until > t => None,
                Some(e) if t.saturating_sub(e.first) < min => Some(GreyReason::TooEarly),
                Some(e) if t.saturating_sub(e.first) > window => {
                    e.first = t;
                    e.passed_until = 0;
                    Some(GreyReason::Stale)
                }
                Some(_) => None,
                None => {
                    self.make_room(t);
                    self.triplets.insert(
                        key.clone(),
                        Entry {
                            first: t,
                            passed_until: 0,
                        },
                    );
                    Some(GreyReason::NewRecord)
                }
            };
            if deferred.is_none() {
                deferred = reason;
            }
            keys.push(key);
        }
        if let Some(reason) = deferred {
            return GreyDecision::Defer(reason);
        }
        let until = t.saturating_add(self.config.timeout.as_secs());
        for key in keys {
            if sender.is_empty() {
                self.triplets.remove(&key);
            } else if let Some(e) = self.triplets.get_mut(&key) {
                e.passed_until = until;
            }
        }
        if self.nets.len() >= self.config.max_entries && !self.nets.contains_key(&net) {
            self.nets.retain(|_, &mut u| u > t);
            if self.nets.len() >= self.config.max_entries {
                // Forgetting a network only means its next mail is greylisted once more.
                let victim = self.nets.iter().min_by_key(|(_, &u)| u).map(|(k, _)| *k);
                if let Some(v) = victim {
                    self.nets.remove(&v);
                }
            }
        }
        self.nets.insert(net, until);
        GreyDecision::Pass(if sender.is_empty() {
            GreyReason::Bounce
        } else {
            GreyReason::GreyPassed
        })
    }

    /// Drops everything expired at `now` (qmail-greyd's periodic purge).
    pub fn purge(&mut self, now: SystemTime) {
        let t = secs(now);
        let window = self.config.window.as_secs();
        self.nets.retain(|_, &mut u| u > t);
        self.triplets.retain(|_, e| {
            if e.passed_until != 0 {
                e.passed_until > t
            } else {
                t.saturating_sub(e.first) <= window
            }
        });
    }

    fn make_room(&mut self, t: u64) {
        if self.triplets.len() < self.config.max_entries {
            return;
        }
        self.purge(UNIX_EPOCH + Duration::from_secs(t));
        if self.triplets.len() < self.config.max_entries {
            return;
        }
        // Still full of live records: drop the oldest eighth, unpassed ones first. Done in one
        // sweep so a flood of new triplets costs O(1) amortised per insert.
        let mut ages: Vec<(bool, u64, Key)> = self
            .triplets
            .iter()
            .map(|(k, e)| (e.passed_until != 0, e.first, k.clone()))
            .collect();
        let n = (ages.len() / 8).max(1);
        ages.select_nth_unstable_by(n - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, _, k) in ages.into_iter().take(n) {
            self.triplets.remove(&k);
        }
    }

    /// Writes the state to `path` atomically: `path.tmp` is written and fsynced, renamed over
    /// `path`, and the directory is fsynced so the rename itself is durable.
    pub fn save(&self, path: &Path) -> Result<(), GreylistError> {
        let io_err = |source| GreylistError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut buf = Vec::with_capacity(64 + self.triplets.len() * 48);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(self.nets.len() as u32).to_le_bytes());
        for (net, until) in &self.nets {
            put_ip(&mut buf, *net);
            buf.extend_from_slice(&until.to_le_bytes());
        }
        buf.extend_from_slice(&(self.triplets.len() as u32).to_le_bytes());
        for (k, e) in &self.triplets {
            put_ip(&mut buf, k.net);
            buf.extend_from_slice(&e.first.to_le_bytes());
            buf.extend_from_slice(&e.passed_until.to_le_bytes());
            put_str(&mut buf, &k.sender);
            put_str(&mut buf, &k.rcpt);
        }
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());

        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = Path::new(&tmp_name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)
            .map_err(io_err)?;
        f.write_all(&buf).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        drop(f);
        fs::rename(tmp, path).map_err(io_err)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        Ok(())
    }

    /// Reads state written by [`Greylist::save`]. A missing file gives empty state; a file that
    /// is truncated, has a bad checksum or a bad record is an error (start empty and log it).
    /// Records already expired at `now` are dropped.
    pub fn load(
        path: &Path,
        config: GreylistConfig,
        whitelist: Whitelist,
        now: SystemTime,
    ) -> Result<Greylist, GreylistError> {
        let mut g = Greylist::new(config, whitelist);
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(g),
            Err(source) => {
                return Err(GreylistError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let corrupt = |reason| GreylistError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        if data.len() < MAGIC.len() + 12 || &data[..MAGIC.len()] != MAGIC {
            return Err(corrupt("bad header"));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = ByteReader {
            buf: &body[MAGIC.len()..],
        };
        let n = r.u32().ok_or_else(|| corrupt("truncated"))?;
        for _ in 0..n {
            let net = r.ip().ok_or_else(|| corrupt("bad network record"))?;
            let until = r.u64().ok_or_else(|| corrupt("truncated"))?;
            g.nets.insert(net, until);
        }
        let n = r.u32().ok_or_else(|| corrupt("truncated"))?;
        for _ in 0..n {
            let net = r.ip().ok_or_else(|| corrupt("bad triplet record"))?;
            let first = r.u64().ok_or_else(|| corrupt("truncated"))?;
            let passed_until = r.u64().ok_or_else(|| corrupt("truncated"))?;
            let sender = r.str().ok_or_else(|| corrupt("bad sender"))?;
            let rcpt = r.str().ok_or_else(|| corrupt("bad recipient"))?;
            g.triplets.insert(
                Key {
                    net,
                    sender: sender.into(),
                    rcpt: rcpt.into(),
                },
                Entry {
                    first,
                    passed_until,
                },
            );
        }
        if !r.buf.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        g.purge(now);
        Ok(g)
    }

    /// Adds what another state file holds and this state lacks (a key
    /// already here keeps its own record): how a shard takes over the
    /// clients of the other shards' files when the shard count changed
    /// between runs. Same errors as [`Greylist::load`].
    pub fn merge_file(&mut self, path: &Path, now: SystemTime) -> Result<(), GreylistError> {
        let other = Greylist::load(path, self.config, self.whitelist.clone(), now)?;
        for (net, until) in other.nets {
            self.nets.entry(net).or_insert(until);
        }
        for (k, e) in other.triplets {
            self.triplets.entry(k).or_insert(e);
        }
        Ok(())
    }
}

fn put_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            buf.push(4);
            buf.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            buf.push(6);
            buf.extend_from_slice(&v6.octets());
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    // Addresses are capped far below 64 KiB by the SMTP layer; clamp rather than corrupt.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    buf.extend_from_slice(&(b.len() as u16).to_le_bytes());
    buf.extend_from_slice(b);
}

struct ByteReader<'a> {
    buf: &'a [u8],
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn ip(&mut self) -> Option<IpAddr> {
        match self.take(1)?[0] {
            4 => {
                let b = self.take(4)?;
                Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                Some(IpAddr::V6(Ipv6Addr::from(a)))
            }
            _ => None,
        }
    }
    fn str(&mut self) -> Option<&'a str> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

#[cfg(test)]
mod tests;
