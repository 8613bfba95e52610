//! The loopback guard: a load generator pointed at the wrong host is a denial of service, so
//! only loopback targets are accepted unless the caller opts out explicitly.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Why a target was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetError {
    /// The text is not `HOST:PORT` or the host does not resolve.
    #[error("cannot resolve target {0:?}: {1}")]
    Resolve(String, String),
    /// The target resolves to an address outside 127.0.0.0/8 and ::1.
    #[error(
        "refusing non-loopback target {0} ({1}); only 127.0.0.0/8, ::1 and localhost are allowed \
         without --allow-remote-target"
    )]
    NotLoopback(String, IpAddr),
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Resolves `HOST:PORT` and checks that every address it names is loopback (unless
/// `allow_remote`). Returns the first address.
pub fn resolve_target(target: &str, allow_remote: bool) -> Result<SocketAddr, TargetError> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| TargetError::Resolve(target.to_string(), e.to_string()))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| TargetError::Resolve(target.to_string(), "no address".into()))?;
    if !allow_remote {
        if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(TargetError::NotLoopback(target.to_string(), bad.ip()));
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_accepted() {
        assert!(resolve_target("127.0.0.1:25", false).is_ok());
        assert!(resolve_target("127.9.8.7:2525", false).is_ok());
        assert!(resolve_target("[::1]:25", false).is_ok());
        assert!(resolve_target("localhost:25", false).is_ok());
    }

    #[test]
    fn remote_refused_without_flag() {
        assert!(matches!(
            resolve_target("10.0.0.1:25", false),
            Err(TargetError::NotLoopback(_, _))
        ));
        assert!(matches!(
            resolve_target("[::ffff:10.0.0.1]:25", false),
            Err(TargetError::NotLoopback(_, _))
        ));
        assert!(resolve_target("10.0.0.1:25", true).is_ok());
    }

    #[test]
    fn mapped_loopback_is_loopback() {
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            resolve_target("no-port", false),
            Err(TargetError::Resolve(_, _))
        ));
    }
}
