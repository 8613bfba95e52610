//! The read queries, shared by the cached [`crate::Directory`] and the admin commands.

use std::path::PathBuf;

use crate::db::Db;
use crate::model::{Limits, MailStore, Quota, User, UserFlags};
use crate::sql::{params, Row};
use crate::LookupError;

pub(crate) const USER_COLUMNS: &str =
    "pw_name, pw_domain, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell, scram";

pub(crate) fn user_from_row(r: &Row, active: bool) -> User {
    let quota_raw = r.text(7);
    User {
        name: r.text(0),
        domain: r.text(1),
        passwd: r.text(2),
        uid: r.int(3),
        flags: UserFlags(u32::try_from(r.int(4)).unwrap_or(0)),
        gecos: r.text(5),
        dir: PathBuf::from(r.text(6)),
        quota: Quota::parse(&quota_raw).unwrap_or(Quota::Unlimited),
        quota_raw,
        scram: r.opt_text(8),
        active,
    }
}

/// Store a new password (`pw_passwd`, `scram`) in the user's row (`indimail` when active,
/// else `indibak`). Returns the rows changed.
pub(crate) async fn set_password(
    db: &Db,
    active: bool,
    name: &str,
    domain: &str,
    stored: &str,
    scram: Option<&str>,
) -> Result<u64, LookupError> {
    let table = if active { "indimail" } else { "indibak" };
    db.on(domain)
        .exec(
            &format!(
                "UPDATE {table} SET pw_passwd = ?, scram = ? WHERE pw_name = ? AND pw_domain = ?"
            ),
            params![stored, scram.map(str::to_string), name, domain],
        )
        .await
}

/// The user, from `indimail` (active) or else `indibak` (inactive).
pub(crate) async fn user(db: &Db, name: &str, domain: &str) -> Result<Option<User>, LookupError> {
    for (table, active) in [("indimail", true), ("indibak", false)] {
        let rows = db
            .on(domain)
            .query(
                &format!("SELECT {USER_COLUMNS} FROM {table} WHERE pw_name = ? AND pw_domain = ?"),
                params![name, domain],
            )
            .await?;
        if let Some(r) = rows.first() {
            return Ok(Some(user_from_row(r, active)));
        }
    }
    Ok(None)
}

/// Is `domain` a virtual domain (a `dir_control` row, written by `domain add`)?
pub(crate) async fn domain_exists(db: &Db, domain: &str) -> Result<bool, LookupError> {
    Ok(!db
        .on(domain)
        .query(
            "SELECT domain FROM dir_control WHERE domain = ?",
            params![domain],
        )
        .await?
        .is_empty())
}

/// The real domain for `domain`: itself when virtual, its target when an alias domain.
pub(crate) async fn real_domain(db: &Db, domain: &str) -> Result<Option<String>, LookupError> {
    if domain_exists(db, domain).await? {
        return Ok(Some(domain.to_string()));
    }
    let rows = db
        .query(
            "SELECT domain FROM aliasdomain WHERE alias = ?",
            params![domain],
        )
        .await?;
    match rows.first() {
        Some(r) => {
            let real = r.text(0);
            Ok(domain_exists(db, &real).await?.then_some(real))
        }
        None => Ok(None),
    }
}

/// valias lines of `name@domain`.
pub(crate) async fn aliases(db: &Db, name: &str, domain: &str) -> Result<Vec<String>, LookupError> {
    Ok(db
        .on(domain)
        .query(
            "SELECT valias_line FROM valias WHERE alias = ? AND domain = ? ORDER BY valias_line",
            params![name, domain],
        )
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect())
}

/// The host of `name@domain`'s hostcntrl row (`*` for the domain's default row).
pub(crate) async fn hostcntrl_host(
    db: &Db,
    name: &str,
    domain: &str,
) -> Result<Option<String>, LookupError> {
    Ok(db
        .query(
            "SELECT host FROM hostcntrl WHERE pw_name = ? AND pw_domain = ?",
            params![name, domain],
        )
        .await?
        .first()
        .map(|r| r.text(0)))
}

/// hostcntrl (user row, else the domain's `*` row) → host_table → smtp_port.
pub(crate) async fn host_of(
    db: &Db,
    name: &str,
    domain: &str,
) -> Result<Option<MailStore>, LookupError> {
    let mut host = None;
    for who in [name, "*"] {
        host = hostcntrl_host(db, who, domain).await?;
        if host.is_some() {
            break;
        }
    }
    let Some(host_id) = host else {
        return Ok(None);
    };
    let ip = db
        .query(
            "SELECT ipaddr FROM host_table WHERE host = ?",
            params![&host_id],
        )
        .await?
        .first()
        .map(|r| r.text(0))
        .ok_or_else(|| {
            LookupError::Corrupt(format!(
                "hostcntrl names host {host_id} missing from host_table"
            ))
        })?;
    let ports = db
        .query(
            "SELECT src_host, port FROM smtp_port WHERE domain = ? AND host = ?",
            params![domain, &host_id],
        )
        .await?;
    let port = ports
        .iter()
        .find(|r| r.text(0) == "*")
        .or(ports.first())
        .map(|r| u16::try_from(r.int(1)).unwrap_or(25))
        .unwrap_or(25);
    Ok(Some(MailStore {
        domain: domain.to_string(),
        host_id,
        ip,
        port,
    }))
}

/// A relay row for `ip` newer than `since` (Unix seconds)?
pub(crate) async fn relay_allowed(db: &Db, ip: &str, since: i64) -> Result<bool, LookupError> {
    Ok(!db
        .query(
            "SELECT email FROM relay WHERE ipaddr = ? AND timestamp >= ?",
            params![ip, since],
        )
        .await?
        .is_empty())
}

/// The `vlimits` row of `domain`.
pub(crate) async fn limits(db: &Db, domain: &str) -> Result<Option<Limits>, LookupError> {
    let rows = db
        .on(domain).query(
            "SELECT domain, domain_expiry, passwd_expiry, maxpopaccounts, maxaliases, maxforwards, \
             maxautoresponders, maxmailinglists, diskquota, maxmsgcount, defaultquota, \
             defaultmaxmsgcount, disable_pop, disable_imap, disable_dialup, \
             disable_passwordchanging, disable_webmail, disable_relay, disable_smtp, \
             perm_account, perm_alias, perm_forward, perm_autoresponder, perm_maillist, \
             perm_quota, perm_defaultquota \
             FROM vlimits WHERE domain = ?",
            params![domain],
        )
        .await?;
    Ok(rows.first().map(|r| Limits {
        domain: r.text(0),
        domain_expiry: r.int(1),
        passwd_expiry: r.int(2),
        maxpopaccounts: r.int(3),
        maxaliases: r.int(4),
        maxforwards: r.int(5),
        maxautoresponders: r.int(6),
        maxmailinglists: r.int(7),
        diskquota: r.int(8),
        maxmsgcount: r.int(9),
        defaultquota: r.int(10),
        defaultmaxmsgcount: r.int(11),
        disable_pop: r.int(12) != 0,
        disable_imap: r.int(13) != 0,
        disable_dialup: r.int(14) != 0,
        disable_passwordchanging: r.int(15) != 0,
        disable_webmail: r.int(16) != 0,
        disable_relay: r.int(17) != 0,
        disable_smtp: r.int(18) != 0,
        perm_account: r.int(19),
        perm_alias: r.int(20),
        perm_forward: r.int(21),
        perm_autoresponder: r.int(22),
        perm_maillist: r.int(23),
        perm_quota: r.int(24),
        perm_defaultquota: r.int(25),
    }))
}

/// `atrn_map` rows of `name@domain`: the domains it may turn (ATRN), lower-cased, without
/// duplicates; a `domain_list` may hold several separated by commas.
pub(crate) async fn atrn_domains(
    db: &Db,
    name: &str,
    domain: &str,
) -> Result<Vec<String>, LookupError> {
    let rows = db
        .on(domain).query(
            "SELECT domain_list FROM atrn_map WHERE pw_name = ? AND pw_domain = ? ORDER BY domain_list",
            params![name, domain],
        )
        .await?;
    let mut out: Vec<String> = Vec::new();
    for r in &rows {
        for d in r.text(0).split([',', ' ', '\t']) {
            let d = d.trim().to_ascii_lowercase();
            if !d.is_empty() && !out.contains(&d) {
                out.push(d);
            }
        }
    }
    Ok(out)
}
