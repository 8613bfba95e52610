//! `indimail init` and `indimail config check|show` (qmail-showctl's role): the home set up,
//! and every configuration problem reported with its file and line.

use crate::config::{self, Paths, ServeConfig};
use crate::privs;
use scheduler::deliver;

pub fn init(paths: &Paths) -> anyhow::Result<()> {
    let mut made = config::prepare_home(paths)?;
    for q in paths
        .layout(None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .configured()
    {
        if !q.dir.exists() {
            std::fs::create_dir_all(&q.dir)?;
            config::make_durable(std::slice::from_ref(&q.dir))?;
            made.push(q.dir);
        }
    }
    if made.is_empty() {
        println!(
            "{}: nothing to create, everything is in place",
            paths.home.display()
        );
    }
    for p in made {
        println!("created {}", p.display());
    }
    Ok(())
}

/// Every configuration problem, as `file:line: problem` lines.
fn config_problems(paths: &Paths) -> (Option<ServeConfig>, Vec<String>) {
    let mut problems = Vec::new();
    let cfg = match ServeConfig::load(paths.clone(), &[], None) {
        Ok(c) => Some(c),
        Err(errs) => {
            problems.extend(errs.iter().map(|e| e.to_string()));
            None
        }
    };
    match paths.layout_with_existing() {
        Ok(layout) => {
            let queues = layout.specs();
            let me = config::system_hostname();
            let me = paths.control.string("me").ok().flatten().unwrap_or(me);
            if let Err(e) = deliver::DeliverySettings::load(&paths.control, &me, &queues) {
                problems.push(e.to_string());
            }
        }
        Err(e) => problems.extend(e.0.iter().map(|e| e.to_string())),
    }
    let certs = tls::CertPaths::from_env(paths.control.path());
    if certs.exists() {
        if let Err(e) = tls::CertStore::load(certs, tls::ServerOptions::default()) {
            problems.push(format!("TLS certificate: {e}"));
        }
    }
    if let Err(e) = shard::io::Driver::from_env() {
        problems.push(e);
    }
    (cfg, problems)
}

pub fn config_check(paths: &Paths) -> i32 {
    let (_, problems) = config_problems(paths);
    if problems.is_empty() {
        println!("{}: configuration ok", paths.control.path().display());
        0
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("{} problem(s)", problems.len());
        1
    }
}

pub fn config_show(paths: &Paths) -> i32 {
    let (cfg, problems) = config_problems(paths);
    println!("home: {}", paths.home.display());
    println!("control: {}", paths.control.path().display());
    if let Some(c) = cfg {
        let s = &c.smtp;
        println!("me: {}", s.me);
        println!("smtpgreeting: {}", s.greeting);
        println!("databytes: {}", s.databytes);
        println!("timeoutsmtpd: {}", s.timeout.as_secs());
        println!("maxrecipients: {}", s.max_recipients);
        println!("maxperip: {}", s.max_per_ip);
        println!("maxdaemons: {}", s.max_connections);
        println!("checkrecipient: {:?}", s.check_recipient);
        println!("qmail_ext (extension addresses): {}", s.qmail_ext);
        println!("relayclient (everyone): {}", s.relay_everyone);
        println!(
            "rcptrate: {} msgrate: {} authrcptrate: {} authmsgrate: {} (per minute, 0 = unlimited)",
            s.rates.rcpt_per_ip, s.rates.msg_per_ip, s.rates.rcpt_per_user, s.rates.msg_per_user
        );
        println!("dnsbllist: {}", s.dnsbl_zones.join(" "));
        println!("spfbehavior: {}", s.spf.0);
        println!("etrnhosts: {}", s.turn.held_domains().join(" "));
        println!("shutdowntimeout: {}", c.shutdown_timeout.as_secs());
        println!("shardsched: {}", c.scheduling);
        match privs::decide(paths) {
            Ok(privs::Decision::AsIs) => println!("user: (not root: runs as the invoking user)"),
            Ok(privs::Decision::Drop(u)) => {
                println!("user: {} (uid {} gid {})", u.name, u.uid, u.gid)
            }
            Ok(privs::Decision::StayRoot) => println!("user: root (INDIMAIL_ALLOW_ROOT)"),
            Err(e) => println!("user: {e}"),
        }
        for (svc, a) in &c.listeners {
            println!("listener: {} {a}", svc.name());
        }
    }
    // The same layout `serve` resolves (without its --cpus), strays included.
    if let Ok(l) = paths.layout_with_existing() {
        let cpus: Vec<String> = l
            .shard_cpus
            .iter()
            .map(|c| c.map_or("any".to_string(), |c| c.to_string()))
            .collect();
        let from = match l.shards_from {
            queue_layout::Source::Argument => "--cpus",
            queue_layout::Source::Environment => "INDIMAIL_SHARDS",
            queue_layout::Source::Control => "control/cpus",
            queue_layout::Source::Default => "all online",
        };
        println!(
            "shards: {} (cpus {}; from {from})",
            l.shards(),
            cpus.join(",")
        );
        if let Some(asked) = l.shards_asked {
            println!(
                "note: {} queues for {asked} cpus: {} shards run",
                l.count,
                l.shards()
            );
        }
        for q in &l.queues {
            println!(
                "queue{} {} -> shard {}{}",
                q.spec.number,
                q.spec.dir.display(),
                q.shard,
                if q.adopted {
                    " (adopted: outside QUEUE_START..QUEUE_COUNT)"
                } else {
                    ""
                }
            );
        }
    }
    let certs = tls::CertPaths::from_env(paths.control.path());
    println!(
        "tls certificate: {} ({})",
        certs.cert.display(),
        if certs.exists() {
            "present"
        } else {
            "missing: STARTTLS off"
        }
    );
    let mysql = paths.control.file("host.mysql");
    println!(
        "directory: {}",
        if mysql.exists() {
            format!("MySQL ({})", mysql.display())
        } else {
            format!(
                "embedded SQLite ({})",
                paths.home.join("db/indimail.sqlite").display()
            )
        }
    );
    for (file, role) in [
        ("host.master", "directory master (writes)"),
        ("host.cntrl", "clusterinfo database"),
    ] {
        let f = paths.control.file(file);
        if f.exists() {
            println!("{role}: MySQL ({})", f.display());
        }
    }
    for p in &problems {
        println!("problem: {p}");
    }
    i32::from(!problems.is_empty())
}
