//! Every client address has a home shard: the kernel places each new
//! connection on the listener of the shard that owns the client's address
//! (SO_REUSEPORT with a classic BPF program hashing the source address), so
//! per-client state (connections per IP, rates, AUTH failures, greylisting
//! triplets) lives on one shard and holds for the whole server.
//!
//! Why in the kernel and not a hand-off of the accepted socket over the mesh:
//! the program costs a few instructions per SYN, while a hand-off costs a
//! cross-thread message and a wake-up per connection, and the accepting shard
//! would still run the accept. [`home_shard`] computes the same placement in
//! user space for anything that must find a client's shard.
//!
//! IPv6 clients are placed by their /64, the unit the rate limits count in.
//! Users have a home shard too ([`home_shard_of_name`]): the one whose
//! directory cache holds their entry.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// Multiplier of the placement hash (Knuth's, 2^32 / golden ratio).
const MULTIPLIER: u32 = 0x9E37_79B1;

/// `SKF_NET_OFF`: classic BPF loads relative to the network header.
const NET: u32 = (-0x10_0000i32) as u32;

/// The home shard of a client address among `shards` shards: what the
/// program of [`place_by_client_address`] computes in the kernel.
pub fn home_shard(ip: IpAddr, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let key = match ip {
        IpAddr::V4(a) => u32::from_be_bytes(a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u32::from_be_bytes(v4.octets()),
            None => {
                let o = a.octets();
                u32::from_be_bytes([o[0], o[1], o[2], o[3]])
                    ^ u32::from_be_bytes([o[4], o[5], o[6], o[7]])
            }
        },
    };
    ((key.wrapping_mul(MULTIPLIER) >> 16) % shards as u32) as usize
}

/// The home shard of a name (a user's `user@domain`): FNV-1a over its
/// lower-cased bytes, so every shard computes the same owner without asking.
pub fn home_shard_of_name(name: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// The classic BPF program: source address (IPv4, or the /64 of IPv6),
/// hashed, modulo `shards`; the result is the index of the socket in the
/// SO_REUSEPORT group, which is the order the shards' sockets listened in.
fn program(shards: u32) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MISC, BPF_MOD,
        BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    vec![
        /* 0 */ op(BPF_LD | BPF_B | BPF_ABS, 0, 0, NET), // version << 4 | ihl
        /* 1 */ op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),
        /* 2 */ op(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 6), // IPv6: 3, else 8
        /* 3 */ op(BPF_LD | BPF_W | BPF_ABS, 0, 0, NET.wrapping_add(8)),
        /* 4 */ op(BPF_MISC | BPF_TAX, 0, 0, 0),
        /* 5 */ op(BPF_LD | BPF_W | BPF_ABS, 0, 0, NET.wrapping_add(12)),
        /* 6 */ op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        /* 7 */ op(BPF_JMP | BPF_JA, 0, 0, 1),
        /* 8 */ op(BPF_LD | BPF_W | BPF_ABS, 0, 0, NET.wrapping_add(12)), // IPv4 source
        /* 9 */ op(BPF_ALU | BPF_MUL | BPF_K, 0, 0, MULTIPLIER),
        /* 10 */ op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),
        /* 11 */ op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, shards),
        /* 12 */ op(BPF_RET | BPF_A, 0, 0, 0),
    ]
}

/// Attaches the placement program to the SO_REUSEPORT group `listener`
/// belongs to (one call per group). The group's sockets must have started
/// listening in shard order: shard `i`'s socket is index `i`.
pub fn place_by_client_address(listener: &impl AsRawFd, shards: usize) -> io::Result<()> {
    let shards = u32::try_from(shards.max(1))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many shards"))?;
    let mut filter = program(shards);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: setsockopt(2) with a valid fd and a sock_fprog pointing at
    // `filter`, which outlives the call; the kernel copies the program.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

    #[test]
    fn spreads_and_is_stable() {
        for shards in [2usize, 3, 8] {
            let mut seen = vec![0; shards];
            for last in 0..=255u8 {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
                let s = home_shard(ip, shards);
                assert_eq!(s, home_shard(ip, shards));
                seen[s] += 1;
            }
            assert!(seen.iter().all(|&n| n > 0), "{shards}: {seen:?}");
        }
        // IPv6: the /64 decides; a mapped IPv4 address is that address.
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(home_shard(a.into(), 8), home_shard(b.into(), 8));
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            home_shard(mapped.into(), 8),
            home_shard(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 8)
        );
        assert_eq!(home_shard(a.into(), 1), 0);
    }

    #[test]
    fn names_spread_and_ignore_case() {
        let mut seen = [0; 8];
        for i in 0..200 {
            seen[home_shard_of_name(&format!("user{i}@example.com"), 8)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 5), "{seen:?}");
        assert_eq!(
            home_shard_of_name("Alice@Example.COM", 8),
            home_shard_of_name("alice@example.com", 8)
        );
        assert_eq!(home_shard_of_name("x@y", 1), 0);
    }

    /// The kernel places connections where `home_shard` says.
    #[test]
    fn kernel_placement_matches_home_shard() {
        let shards = 4;
        let first = crate::io::bind_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = first.local_addr().unwrap();
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners.push(crate::io::bind_reuseport(addr, 128).unwrap());
        }
        place_by_client_address(&listeners[0], shards).unwrap();
        for l in &listeners {
            l.set_nonblocking(true).unwrap();
        }
        for last in 1..=40u8 {
            let src = Ipv4Addr::new(127, 0, 0, last);
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::from((src, 0)).into()).unwrap();
            sock.connect(&addr.into()).unwrap();
            let _client: TcpStream = sock.into();
            let mut got = None;
            for _ in 0..1000 {
                if let Some(i) = listeners.iter().position(|l| l.accept().is_ok()) {
                    got = Some(i);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert_eq!(got, Some(home_shard(src.into(), shards)), "{src}");
        }
    }
}
