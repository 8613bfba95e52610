//! Admission of a new connection, before any byte is read: tcp.smtp rules, the
//! connect-time policy, `maxdaemons` (the whole server's) and `maxperip`. A refused
//! client gets its one reply and the connection is closed.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use shard::io::TcpStream;
use smtp_proto::Reply;

use crate::server::{Generation, SmtpShard};
use crate::tcprules::RuleMatch;
use control::log;

/// A connection let in: the settings it runs with, its tcp.smtp rule, and the slots it
/// holds until it ends.
pub struct Admitted {
    /// The settings in force when it connected.
    pub generation: Rc<Generation>,
    /// The tcp.smtp line that matched the client.
    pub rule: RuleMatch,
    /// Released when the connection ends.
    pub slot: Slot,
}

/// Lets the client at `ip` in, or answers it and gives `None`.
pub async fn admit(shard: &Rc<SmtpShard>, stream: &TcpStream, ip: IpAddr) -> Option<Admitted> {
    let generation = Rc::clone(&shard.current.borrow());
    let settings = Rc::clone(&generation.settings);
    let rule = settings.rules.lookup(ip);
    let refusal = if rule.deny {
        log!("shard{} smtp deny ip={ip} rule=tcp.smtp", shard.index);
        Some(Reply::new(
            554,
            Some((5, 7, 1)),
            format!("{} access denied to your IP address", settings.me),
        ))
    } else if let policy::Verdict::Reject {
        code,
        enhanced,
        text,
        rule,
    } = settings.policy.check_connect(ip)
    {
        log!("shard{} smtp refused ip={ip} rule={rule}", shard.index);
        Some(Reply::new(code, Some(enhanced), text))
    } else {
        None
    };
    if let Some(r) = refusal {
        let _ = stream.write_all(r.to_wire()).await;
        return None;
    }
    let max_per_ip = rule
        .var("MAXPERIP")
        .and_then(|v| v.parse().ok())
        .unwrap_or(settings.max_per_ip);
    let per_ip = {
        let mut m = shard.per_ip.borrow_mut();
        let n = m.entry(ip).or_insert(0);
        *n += 1;
        *n
    };
    shard.connections.set(shard.connections.get() + 1);
    let server_connections = shard.server_connections.fetch_add(1, Ordering::Relaxed) + 1;
    let slot = Slot {
        shard: Rc::clone(shard),
        ip,
    };
    let busy = if server_connections > shard.connection_limit(&settings) {
        log!(
            "shard{} smtp busy ip={ip} connections={server_connections}",
            shard.index
        );
        Some(Reply::new(
            421,
            Some((4, 3, 2)),
            format!("{} too many connections, try later", settings.me),
        ))
    } else if max_per_ip > 0 && per_ip > max_per_ip {
        log!(
            "shard{} smtp per-ip limit ip={ip} count={per_ip}",
            shard.index
        );
        Some(Reply::new(
            421,
            Some((4, 7, 0)),
            format!("{} too many connections from your IP", settings.me),
        ))
    } else {
        None
    };
    if let Some(r) = busy {
        let _ = stream.write_all(r.to_wire()).await;
        return None;
    }
    Some(Admitted {
        generation,
        rule,
        slot,
    })
}

/// Releases a connection's slots when the connection ends, however it ends.
pub struct Slot {
    shard: Rc<SmtpShard>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shard
            .connections
            .set(self.shard.connections.get().saturating_sub(1));
        self.shard
            .server_connections
            .fetch_sub(1, Ordering::Relaxed);
        let mut m = self.shard.per_ip.borrow_mut();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}
