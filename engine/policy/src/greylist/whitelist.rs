//! `greylist.white`: client addresses never greylisted. One per line: an address, a CIDR
//! block (`10.0.0.0/8`, `2001:db8::/32`), or a wildcard pattern on the dotted address
//! (`192.168.2.*`, `192.168.[3-4].45`), as qmail-greyd's `-w` file.

use std::net::IpAddr;
use std::path::Path;

use crate::control::{split_lines, ControlFile, Reader};
use crate::error::{PolicyError, PolicyErrorKind};
use crate::wildmat::{has_wildcards, wildmat};

#[derive(Debug, Clone)]
enum Entry {
    Cidr(IpAddr, u8),
    Pattern(Box<[u8]>),
}

/// Parsed whitelist.
#[derive(Debug, Clone, Default)]
pub struct Whitelist {
    entries: Vec<Entry>,
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let ((a, w1), (b, w2)) = (bits(ip), bits(net));
    if w1 != w2 {
        return false;
    }
    if len == 0 {
        return true;
    }
    let shift = u32::from(w1 - len.min(w1));
    (a >> shift) == (b >> shift)
}

impl Whitelist {
    /// Reads the file; a missing file is an empty whitelist. Every bad line is reported.
    pub fn load(path: &Path) -> Result<Whitelist, Vec<PolicyError>> {
        let mut rd = Reader::default();
        let file = rd.read(path.to_path_buf());
        let mut errors = rd.errors;
        let wl = Whitelist::from_file(&file, &mut errors);
        if errors.is_empty() {
            Ok(wl)
        } else {
            Err(errors)
        }
    }

    /// Parses whitelist text (for configuration embedded elsewhere, and tests).
    pub fn parse(text: &str) -> Result<Whitelist, Vec<PolicyError>> {
        let file = ControlFile {
            path: "greylist.white".into(),
            label: "greylist.white".into(),
            lines: Some(split_lines(text.as_bytes())),
        };
        let mut errors = Vec::new();
        let wl = Whitelist::from_file(&file, &mut errors);
        if errors.is_empty() {
            Ok(wl)
        } else {
            Err(errors)
        }
    }

    fn from_file(file: &ControlFile, errors: &mut Vec<PolicyError>) -> Whitelist {
        let mut entries = Vec::new();
        for l in file.lines() {
            let t = l.text.trim();
            let bad = |reason| {
                file.error(
                    l.no,
                    PolicyErrorKind::Syntax {
                        text: t.to_string(),
                        reason,
                    },
                )
            };
            if let Some((addr, len)) = t.split_once('/') {
                match (addr.parse::<IpAddr>(), len.parse::<u8>()) {
                    (Ok(a), Ok(n)) if n <= bits(a).1 => entries.push(Entry::Cidr(a, n)),
                    _ => errors.push(bad("expected address/prefix-length")),
                }
            } else if has_wildcards(t) {
                entries.push(Entry::Pattern(
                    t.to_ascii_lowercase().into_bytes().into_boxed_slice(),
                ));
            } else {
                match t.parse::<IpAddr>() {
                    Ok(a) => entries.push(Entry::Cidr(a, bits(a).1)),
                    Err(_) => {
                        errors.push(bad("expected an address, CIDR block or wildcard pattern"))
                    }
                }
            }
        }
        Whitelist { entries }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `ip` is whitelisted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = crate::canonical_ip(ip);
        let text = ip.to_string();
        self.entries.iter().any(|e| match e {
            Entry::Cidr(net, len) => in_cidr(ip, *net, *len),
            Entry::Pattern(p) => wildmat(text.as_bytes(), p),
        })
    }
}
