//! `indimail hostcntrl ...` and `indimail cluster ...`, hostcntrl, vhostid and vsmtp: which
//! host holds each user (hostcntrl), the hosts (host_table) and their SMTP ports (smtp_port).

use std::io::Write;
use std::net::IpAddr;

use clap::Subcommand;

use super::getopt::{getopt, operand, opt_value, unknown_program};
use super::{CliError, DirectoryCommand};
use crate::Admin;

/// `indimail hostcntrl ...`
#[derive(Debug, Clone, Subcommand)]
pub enum HostCommand {
    /// Place a user (or `*@domain`) on a host id.
    Add {
        /// user@domain or *@domain
        email: String,
        /// Host id.
        host: String,
    },
    /// Move a user to another host id.
    Mod {
        /// user@domain or *@domain
        email: String,
        /// Host id.
        host: String,
    },
    /// Remove a placement.
    Del {
        /// user@domain or *@domain
        email: String,
    },
    /// List placements.
    List {
        /// Domain (all when absent).
        domain: Option<String>,
    },
    /// Map a host id to its IP address (host_table; vhostid -i).
    SetHost {
        /// Host id.
        host: String,
        /// IP address.
        ip: IpAddr,
    },
    /// Remove a host id (vhostid -d).
    DelHost {
        /// Host id.
        host: String,
    },
    /// Remove the SMTP port row of a host for a domain (vsmtp -d).
    DelPort {
        /// Domain.
        domain: String,
        /// Host id.
        host: String,
        /// Sending host (`*` = any).
        #[arg(long, default_value = "*")]
        src_host: String,
    },
    /// Set the SMTP port of a host for a domain (vsmtp).
    SetPort {
        /// Domain.
        domain: String,
        /// Host id.
        host: String,
        /// Port.
        port: u16,
        /// Sending host (`*` = any).
        #[arg(long, default_value = "*")]
        src_host: String,
    },
}

/// `indimail cluster ...`
///
/// Every change bumps the directory's change counter: hosts sharing the directory see it
/// within their change poll (one second) plus one query, without a restart.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Register a host (or change its address): its host_table row (vhostid -i), and with
    /// `--smtp-port` the port its SMTP server takes mail on for each `--domain` (vsmtp -i).
    AddHost {
        /// Host id (the host's `control/hostid`).
        host: String,
        /// The address relays and proxies connect to.
        ip: IpAddr,
        /// A domain the host holds users of (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// SMTP port of the host for those domains (default 25 when no row exists).
        #[arg(long, requires = "domains")]
        smtp_port: Option<u16>,
        /// Sending host the port applies to (`*` = any).
        #[arg(long, default_value = "*")]
        src_host: String,
    },
    /// Remove a host: its smtp_port and host_table rows. Refused while users are placed on
    /// it, unless `--force`.
    DelHost {
        /// Host id.
        host: String,
        /// Remove even with users placed on it (their mail defers until they are moved).
        #[arg(long)]
        force: bool,
    },
    /// List hosts: address, user count and SMTP ports.
    Hosts,
    /// Place a user (or `*@domain`, the domain default) on a registered host: new mail and
    /// new logins go there (hostcntrl -i / -m).
    Move {
        /// user@domain or *@domain
        email: String,
        /// Host id (must be registered with add-host).
        host: String,
    },
    /// Where mail and logins for a user go: `domain:ip:port host`, uncached.
    Where {
        /// user@domain
        email: String,
    },
}

/// Run a `hostcntrl` command.
pub(super) async fn run_hostcntrl(
    admin: &Admin,
    c: HostCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match c {
        HostCommand::Add { email, host } => {
            admin.hostcntrl_add(&email, &host).await?;
            writeln!(out, "placed {email} on {host}")?;
        }
        HostCommand::Mod { email, host } => {
            admin.hostcntrl_mod(&email, &host).await?;
            writeln!(out, "moved {email} to {host}")?;
        }
        HostCommand::Del { email } => {
            admin.hostcntrl_del(&email).await?;
            writeln!(out, "removed {email}")?;
        }
        HostCommand::List { domain } => {
            for h in admin.hostcntrl_list(domain.as_deref()).await? {
                writeln!(out, "{}@{} {}", h.user, h.domain, h.host)?;
            }
        }
        HostCommand::SetHost { host, ip } => {
            admin.host_set(&host, ip).await?;
            writeln!(out, "host {host} is {ip}")?;
        }
        HostCommand::DelHost { host } => {
            admin.host_del(&host).await?;
            writeln!(out, "removed host {host}")?;
        }
        HostCommand::DelPort {
            domain,
            host,
            src_host,
        } => {
            admin.smtp_port_del(&domain, &host, &src_host).await?;
            writeln!(out, "{domain} on {host}: port removed")?;
        }
        HostCommand::SetPort {
            domain,
            host,
            port,
            src_host,
        } => {
            admin.smtp_port_set(&domain, &host, &src_host, port).await?;
            writeln!(out, "{domain} on {host}: port {port}")?;
        }
    }
    Ok(())
}

pub(super) async fn run_cluster(
    admin: &Admin,
    cmd: ClusterCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::AddHost {
            host,
            ip,
            domains,
            smtp_port,
            src_host,
        } => {
            admin.host_set(&host, ip).await?;
            writeln!(out, "host {host} is {ip}")?;
            if let Some(port) = smtp_port {
                for d in &domains {
                    admin.smtp_port_set(d, &host, &src_host, port).await?;
                    writeln!(out, "{} on {host}: port {port}", d.to_ascii_lowercase())?;
                }
            }
        }
        ClusterCommand::DelHost { host, force } => {
            admin.cluster_host_del(&host, force).await?;
            writeln!(out, "removed host {host}")?;
        }
        ClusterCommand::Hosts => {
            for h in admin.cluster_hosts().await? {
                let ip = if h.ip.is_empty() { "-" } else { &h.ip };
                let ports: Vec<String> = h
                    .ports
                    .iter()
                    .map(|(d, src, p)| format!("{d}:{src}:{p}"))
                    .collect();
                writeln!(
                    out,
                    "{} {ip} users={} smtp={}",
                    h.host,
                    h.users,
                    if ports.is_empty() {
                        "-".to_string()
                    } else {
                        ports.join(",")
                    }
                )?;
            }
        }
        ClusterCommand::Move { email, host } => match admin.cluster_move(&email, &host).await? {
            Some(old) if old == host => writeln!(out, "{email} is on {host} already")?,
            Some(old) => writeln!(out, "moved {email} from {old} to {host}")?,
            None => writeln!(out, "placed {email} on {host}")?,
        },
        ClusterCommand::Where { email } => match admin.mailstore_of(&email).await? {
            Some(m) => writeln!(out, "{m} {}", m.host_id)?,
            None => writeln!(out, "{email}: not placed (local to every host)")?,
        },
    }
    Ok(())
}

/// hostcntrl, vhostid and vsmtp as commands.
pub(super) fn host_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "hostcntrl" => {
            let (o, r) = getopt(args, "lsdi:m:")?;
            if o.iter().any(|(c, _)| *c == 'l' || *c == 's') {
                DirectoryCommand::Hostcntrl(HostCommand::List {
                    domain: r.first().map(|t| match t.rsplit_once('@') {
                        Some((_, d)) => d.to_string(),
                        None => t.clone(),
                    }),
                })
            } else if let Some(host) = opt_value(&o, 'i') {
                DirectoryCommand::Hostcntrl(HostCommand::Add {
                    email: operand(&r, 0, "address")?,
                    host,
                })
            } else if let Some(host) = opt_value(&o, 'm') {
                DirectoryCommand::Hostcntrl(HostCommand::Mod {
                    email: operand(&r, 0, "address")?,
                    host,
                })
            } else if o.iter().any(|(c, _)| *c == 'd') {
                DirectoryCommand::Hostcntrl(HostCommand::Del {
                    email: operand(&r, 0, "address")?,
                })
            } else {
                return Err(CliError::Usage(
                    "hostcntrl -l|-s [dom] | -i id addr | -m id addr | -d addr".into(),
                ));
            }
        }
        "vhostid" => {
            let (o, r) = getopt(args, "Ssd:i:u:")?;
            let ip = |v: String| {
                v.parse::<IpAddr>()
                    .map_err(|_| CliError::Usage(format!("not an IP address: {v}")))
            };
            if let Some(host) = opt_value(&o, 'd') {
                DirectoryCommand::Hostcntrl(HostCommand::DelHost { host })
            } else if let Some(v) = opt_value(&o, 'i').or_else(|| opt_value(&o, 'u')) {
                DirectoryCommand::Hostcntrl(HostCommand::SetHost {
                    host: operand(&r, 0, "host id")?,
                    ip: ip(v)?,
                })
            } else if o.iter().any(|(c, _)| *c == 's' || *c == 'S') {
                DirectoryCommand::Cluster(ClusterCommand::Hosts)
            } else {
                return Err(CliError::Usage(
                    "vhostid -s | -d id | -i ip id | -u ip id".into(),
                ));
            }
        }
        "vsmtp" => {
            let (o, r) = getopt(args, "sdi:u:m:")?;
            if o.iter().any(|(c, _)| *c == 's') {
                DirectoryCommand::Cluster(ClusterCommand::Hosts)
            } else {
                let target = operand(&r, 0, "hostid@domain")?;
                let Some((host, domain)) = target.rsplit_once('@') else {
                    return Err(CliError::Usage(format!("expected hostid@domain: {target}")));
                };
                let (host, domain) = (host.to_string(), domain.to_string());
                let src_host = opt_value(&o, 'm').unwrap_or_else(|| "*".into());
                if o.iter().any(|(c, _)| *c == 'd') {
                    DirectoryCommand::Hostcntrl(HostCommand::DelPort {
                        domain,
                        host,
                        src_host,
                    })
                } else if let Some(p) = opt_value(&o, 'i').or_else(|| opt_value(&o, 'u')) {
                    DirectoryCommand::Hostcntrl(HostCommand::SetPort {
                        domain,
                        host,
                        port: p
                            .parse()
                            .map_err(|_| CliError::Usage(format!("not a port: {p}")))?,
                        src_host,
                    })
                } else {
                    return Err(CliError::Usage(
                        "vsmtp -s | -d -m mta hostid@dom | -i port -m mta hostid@dom".into(),
                    ));
                }
            }
        }
        other => return Err(unknown_program(other)),
    })
}
