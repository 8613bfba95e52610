//! MX and address resolution for remote delivery (RFC 5321 section 5.1,
//! RFC 7505 null MX), over `hickory-resolver`.
//!
//! The resolver's configuration is injectable: the system's
//! `/etc/resolv.conf`, or one nameserver address (tests point it at a stub
//! on loopback). Names are queried fully qualified so no search domain is
//! ever appended to a mail domain.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;

/// Where the resolver sends its queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsConfig {
    /// `/etc/resolv.conf`.
    System,
    /// One nameserver (UDP, TCP fallback), e.g. a local stub.
    Nameserver(SocketAddr),
}

impl DnsConfig {
    /// `INDIMAIL_DNS=ADDRESS:PORT` (one nameserver, e.g. a local cache or a
    /// test's DNS server), else the system's configuration.
    pub fn from_env() -> Result<DnsConfig, DnsError> {
        match std::env::var("INDIMAIL_DNS") {
            Ok(ns) => ns
                .parse()
                .map(DnsConfig::Nameserver)
                .map_err(|_| DnsError::Config(format!("INDIMAIL_DNS: `{ns}` is not ADDRESS:PORT"))),
            Err(_) => Ok(DnsConfig::System),
        }
    }
}

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: permanent.
    #[error("Sorry, I couldn't find any host named {0}. (#5.1.2)")]
    NoSuchDomain(String),
    /// The domain publishes a null MX: it accepts no mail (permanent).
    #[error("Sorry, {0} does not accept mail (null MX, RFC 7505). (#5.1.10)")]
    NullMx(String),
    /// A host has no address records (permanent).
    #[error("Sorry, I couldn't find an address for {0}. (#5.4.4)")]
    NoAddress(String),
    /// Timeouts, SERVFAIL, no nameserver: temporary.
    #[error("CNAME lookup failed temporarily for {0}: {1} (#4.4.3)")]
    Temporary(String, String),
    /// The resolver could not be set up from its configuration.
    #[error("resolver configuration: {0}")]
    Config(String),
}

impl DnsError {
    /// Whether retrying later can help.
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary(..) | DnsError::Config(_))
    }
}

/// One mail exchanger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// MX preference (0 for the implicit MX).
    pub preference: u16,
    /// Host name without the trailing dot.
    pub host: String,
}

/// A resolver; one per shard (cheap to clone).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioAsyncResolver,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Resolver {
    /// A resolver with the given configuration. Must be called inside a
    /// runtime (it spawns nothing until the first query).
    pub fn new(cfg: &DnsConfig) -> Result<Resolver, DnsError> {
        let inner = match cfg {
            DnsConfig::System => TokioAsyncResolver::tokio_from_system_conf()
                .map_err(|e| DnsError::Config(e.to_string()))?,
            DnsConfig::Nameserver(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                let config = ResolverConfig::from_parts(None, vec![], group);
                let mut opts = ResolverOpts::default();
                opts.timeout = std::time::Duration::from_secs(2);
                opts.attempts = 2;
                opts.use_hosts_file = false;
                TokioAsyncResolver::tokio(config, opts)
            }
        };
        Ok(Resolver { inner })
    }

    /// The mail exchangers of `domain`, best first. No MX but the domain
    /// exists: the domain itself (implicit MX, RFC 5321 5.1).
    pub async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, DnsError> {
        match self.inner.mx_lookup(fqdn(domain)).await {
            Ok(l) => {
                let mut hosts: Vec<MxHost> = Vec::new();
                let mut null = false;
                for mx in l.iter() {
                    if mx.exchange().is_root() {
                        null = true;
                        continue;
                    }
                    let h = mx.exchange().to_utf8();
                    hosts.push(MxHost {
                        preference: mx.preference(),
                        host: h.trim_end_matches('.').to_string(),
                    });
                }
                if hosts.is_empty() {
                    if null {
                        return Err(DnsError::NullMx(domain.to_string()));
                    }
                    return Ok(vec![MxHost {
                        preference: 0,
                        host: domain.to_string(),
                    }]);
                }
                hosts.sort_by_key(|h| h.preference);
                Ok(hosts)
            }
            Err(e) => match no_records(&e) {
                Some(ResponseCode::NXDomain) => Err(DnsError::NoSuchDomain(domain.to_string())),
                Some(_) => Ok(vec![MxHost {
                    preference: 0,
                    host: domain.to_string(),
                }]),
                None => Err(DnsError::Temporary(domain.to_string(), e.to_string())),
            },
        }
    }

    /// The addresses of `host` (IPv4 first, then IPv6). An IP literal
    /// (optionally in brackets) is returned as is.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.inner.lookup_ip(fqdn(host)).await {
            Ok(l) => {
                let v: Vec<IpAddr> = l.iter().collect();
                if v.is_empty() {
                    Err(DnsError::NoAddress(host.to_string()))
                } else {
                    Ok(v)
                }
            }
            Err(e) => match no_records(&e) {
                Some(ResponseCode::NXDomain) => Err(DnsError::NoSuchDomain(host.to_string())),
                Some(_) => Err(DnsError::NoAddress(host.to_string())),
                None => Err(DnsError::Temporary(host.to_string(), e.to_string())),
            },
        }
    }

    /// The IPv4 addresses `name` has (A records); none when the name does
    /// not exist or has no A record (a DNSBL's "not listed").
    pub async fn ipv4(&self, name: &str) -> Result<Vec<std::net::Ipv4Addr>, DnsError> {
        match self.inner.ipv4_lookup(fqdn(name)).await {
            Ok(l) => Ok(l.iter().map(|a| a.0).collect()),
            Err(e) if no_records(&e).is_some() => Ok(Vec::new()),
            Err(e) => Err(DnsError::Temporary(name.to_string(), e.to_string())),
        }
    }

    /// The first name the PTR records of `ip` give (the client's `TCPREMOTEHOST`), without the
    /// final dot; `None` when it has none.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Option<String>, DnsError> {
        match self.inner.reverse_lookup(ip).await {
            Ok(l) => Ok(l
                .iter()
                .next()
                .map(|n| n.to_utf8().trim_end_matches('.').to_string())),
            Err(e) if no_records(&e).is_some() => Ok(None),
            Err(e) => Err(DnsError::Temporary(ip.to_string(), e.to_string())),
        }
    }

    /// The TXT records of `name`, each record's strings joined; none when
    /// the name does not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.inner.txt_lookup(fqdn(name)).await {
            Ok(l) => Ok(l
                .iter()
                .map(|t| {
                    t.txt_data()
                        .iter()
                        .map(|d| String::from_utf8_lossy(d).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(e) if no_records(&e).is_some() => Ok(Vec::new()),
            Err(e) => Err(DnsError::Temporary(name.to_string(), e.to_string())),
        }
    }

    /// The underlying hickory resolver, for libraries that take one (SPF).
    pub fn hickory(&self) -> &TokioAsyncResolver {
        &self.inner
    }
}

fn no_records(e: &ResolveError) -> Option<ResponseCode> {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => Some(*response_code),
        _ => None,
    }
}
