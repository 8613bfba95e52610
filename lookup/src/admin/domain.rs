//! Domains: vadddomain, vdeldomain, vdominfo, vaddaliasdomain, vrenamedomain, vmoddomain,
//! and the control files (`rcpthosts`, `morercpthosts`, `virtualdomains`) they maintain.

use std::path::PathBuf;

use super::files::{io_err, read_lines, rename_path, renamed_domain_dir, rewrite_lines};
use super::{Admin, RCPTHOSTS_MAX};
use crate::catchall::qmail_default_line;
use crate::catchall::Handler;
use crate::model::normalize_domain;
use crate::queries;
use crate::sql::params;
use crate::LookupError;

/// Options of `domain add`.
#[derive(Debug, Clone, Default)]
pub struct DomainOptions {
    /// `-l`: users per directory level (default 100).
    pub users_per_level: Option<u64>,
    /// `-B`: mailbox base for this domain (default `BASE_PATH`).
    pub base_path: Option<PathBuf>,
}

/// What `domain info` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Its config dir (`<home>/domains/<domain>`).
    pub dir: PathBuf,
    /// Mailbox base.
    pub base_path: PathBuf,
    /// Users (active + inactive).
    pub users: u64,
    /// Users per level.
    pub users_per_level: u64,
    /// Alias domains pointing here.
    pub aliases: Vec<String>,
}

/// Changes of `domain mod` (vmoddomain); unset fields are left alone.
#[derive(Debug, Clone, Default)]
pub struct DomainChange {
    /// `-l 1|0`: the domain's limits are (not) in force (`.domain_limits` in its dir).
    pub limits: Option<bool>,
    /// `-h`: what vdelivermail does with mail for unknown users (`.qmail-default`).
    pub handler: Option<String>,
}

/// What `domain mod` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    /// Domain name.
    pub name: String,
    /// `.domain_limits` exists.
    pub limits: bool,
    /// vdelivermail's instruction for unknown users.
    pub handler: String,
}

/// The unknown-user instruction in a `.qmail-default` (see [`crate::catchall`]).
pub(super) fn handler_of(qmail_default: &str) -> String {
    match Handler::parse(qmail_default) {
        Ok(h) => h.instruction(),
        Err((line, e)) => format!("unreadable (line {line}: {e})"),
    }
}

pub(super) fn check_handler(h: &str) -> Result<(), LookupError> {
    Handler::parse_instruction(h)
        .map(|_| ())
        .map_err(LookupError::Refused)
}

impl Admin {
    pub(super) fn add_control(&self, domain: &str, target: &str) -> Result<(), LookupError> {
        let ctl = &self.cfg.control_dir;
        let rcpt = ctl.join("rcpthosts");
        let more = ctl.join("morercpthosts");
        let mut r = read_lines(&rcpt)?;
        let mut m = read_lines(&more)?;
        if !r.iter().chain(m.iter()).any(|l| l == domain) {
            if r.len() < RCPTHOSTS_MAX {
                r.push(domain.to_string());
                rewrite_lines(&rcpt, &r)?;
            } else {
                m.push(domain.to_string());
                rewrite_lines(&more, &m)?;
            }
        }
        let vd = ctl.join("virtualdomains");
        let mut v = read_lines(&vd)?;
        let prefix = format!("{domain}:");
        v.retain(|l| !l.starts_with(&prefix));
        v.push(format!("{domain}:{target}"));
        rewrite_lines(&vd, &v)
    }

    pub(super) fn remove_control(&self, domain: &str) -> Result<(), LookupError> {
        let ctl = &self.cfg.control_dir;
        for name in ["rcpthosts", "morercpthosts"] {
            let p = ctl.join(name);
            let mut l = read_lines(&p)?;
            let before = l.len();
            l.retain(|x| x != domain);
            if l.len() != before {
                rewrite_lines(&p, &l)?;
            }
        }
        let vd = ctl.join("virtualdomains");
        let mut v = read_lines(&vd)?;
        let prefix = format!("{domain}:");
        let before = v.len();
        v.retain(|l| !l.starts_with(&prefix));
        if v.len() != before {
            rewrite_lines(&vd, &v)?;
        }
        Ok(())
    }

    /// vadddomain: domain dir with `.qmail-default`, `dir_control` row, rcpthosts /
    /// morercpthosts and virtualdomains entries.
    pub async fn domain_add(
        &self,
        domain: &str,
        opts: &DomainOptions,
    ) -> Result<DomainInfo, LookupError> {
        let d = normalize_domain(domain)?;
        if queries::domain_exists(&self.db, &d).await? {
            return Err(LookupError::DomainExists(d));
        }
        if !self
            .db
            .query("SELECT alias FROM aliasdomain WHERE alias = ?", params![&d])
            .await?
            .is_empty()
        {
            return Err(LookupError::AliasDomainExists(d));
        }
        let dir = self.domain_dir(&d);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let write = |name: &str, content: String| -> Result<(), LookupError> {
            let p = dir.join(name);
            std::fs::write(&p, content).map_err(io_err(&p))
        };
        write(
            ".qmail-default",
            qmail_default_line("bounce-no-mailbox") + "\n",
        )?;
        if let Some(n) = opts.users_per_level {
            write(".users_per_level", format!("{}\n", n.max(1)))?;
        }
        if let Some(b) = &opts.base_path {
            write(".base_path", format!("{}\n", b.display()))?;
        }
        self.db
            .on(&d)
            .exec(
                "INSERT INTO dir_control (domain, the_dir) VALUES (?, ?)",
                params![&d, ""],
            )
            .await?;
        self.add_control(&d, &d)?;
        self.db.bump_changes().await?;
        self.domain_info(&d).await
    }

    /// vaddaliasdomain: `alias` delivers to the users of `real`.
    pub async fn alias_domain_add(&self, alias: &str, real: &str) -> Result<(), LookupError> {
        let a = normalize_domain(alias)?;
        let r = self.require_domain(real).await?;
        if queries::domain_exists(&self.db, &a).await? {
            return Err(LookupError::DomainExists(a));
        }
        if !self
            .db
            .query("SELECT alias FROM aliasdomain WHERE alias = ?", params![&a])
            .await?
            .is_empty()
        {
            return Err(LookupError::AliasDomainExists(a));
        }
        self.db
            .exec(
                "INSERT INTO aliasdomain (alias, domain) VALUES (?, ?)",
                params![&a, &r],
            )
            .await?;
        self.add_control(&a, &r)?;
        self.db.bump_changes().await
    }

    /// vdeldomain: every user, alias, limit, host row and alias domain of the domain, its
    /// mailboxes, its config dir and its control-file lines.
    pub async fn domain_del(&self, domain: &str) -> Result<(), LookupError> {
        let d = normalize_domain(domain)?;
        if !queries::domain_exists(&self.db, &d).await? {
            // Deleting an alias domain by name is allowed too.
            let n = self
                .db
                .exec("DELETE FROM aliasdomain WHERE alias = ?", params![&d])
                .await?;
            if n == 0 {
                return Err(LookupError::DomainNotFound(d));
            }
            self.remove_control(&d)?;
            return self.db.bump_changes().await;
        }
        let base = self.domain_base(&d);
        for sql in [
            "DELETE FROM indimail WHERE pw_domain = ?",
            "DELETE FROM indibak WHERE pw_domain = ?",
            "DELETE FROM valias WHERE domain = ?",
            "DELETE FROM hostcntrl WHERE pw_domain = ?",
            "DELETE FROM smtp_port WHERE domain = ?",
            "DELETE FROM lastauth WHERE domain = ?",
            "DELETE FROM userquota WHERE domain = ?",
            "DELETE FROM vlimits WHERE domain = ?",
            "DELETE FROM dir_control WHERE domain = ?",
        ] {
            self.db.on(&d).exec(sql, params![&d]).await?;
        }
        let aliases: Vec<String> = self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE domain = ?",
                params![&d],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        self.db
            .exec("DELETE FROM aliasdomain WHERE domain = ?", params![&d])
            .await?;
        for a in &aliases {
            self.remove_control(a)?;
        }
        self.remove_control(&d)?;
        for b in ["A2E", "F2K", "L2P", "Q2S", "T2Zsym"] {
            let p = base.join(b).join(&d);
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LookupError::io(p, e)),
            }
        }
        let dir = self.domain_dir(&d);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LookupError::io(dir, e)),
        }
        self.db.bump_changes().await
    }

    /// Virtual domains, sorted.
    pub async fn domain_list(&self) -> Result<Vec<String>, LookupError> {
        let mut domains: Vec<String> = self
            .db
            .query_everywhere("SELECT domain FROM dir_control ORDER BY domain", vec![])
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        if self.db.routes_domains() {
            domains.sort();
            domains.dedup();
        }
        Ok(domains)
    }

    /// vdominfo.
    pub async fn domain_info(&self, domain: &str) -> Result<DomainInfo, LookupError> {
        let d = self.require_domain(domain).await?;
        let mut users = 0u64;
        for t in ["indimail", "indibak"] {
            let rows = self
                .db
                .on(&d)
                .query(
                    &format!("SELECT COUNT(*) FROM {t} WHERE pw_domain = ?"),
                    params![&d],
                )
                .await?;
            users += rows
                .first()
                .map(|r| u64::try_from(r.int(0)).unwrap_or(0))
                .unwrap_or(0);
        }
        let aliases = self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE domain = ? ORDER BY alias",
                params![&d],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        Ok(DomainInfo {
            dir: self.domain_dir(&d),
            base_path: self.domain_base(&d),
            users,
            users_per_level: self.users_per_level(&d),
            aliases,
            name: d,
        })
    }

    /// vrenamedomain: every row of the domain, its users' homes (`<bucket>/<old>` becomes
    /// `<bucket>/<new>`), its config dir and its control-file lines take the new name; alias
    /// domains follow.
    pub async fn domain_rename(&self, old: &str, new: &str) -> Result<DomainInfo, LookupError> {
        let od = self.require_domain(old).await?;
        let nd = normalize_domain(new)?;
        if !self.db.same_server(&od, &nd) {
            return Err(LookupError::Refused(format!(
                "{od} and {nd} are kept on different database servers: give {nd} the same \
                 server in control/mcdinfo (dbinfo -i) first"
            )));
        }
        if queries::domain_exists(&self.db, &nd).await? {
            return Err(LookupError::DomainExists(nd));
        }
        if !self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE alias = ?",
                params![&nd],
            )
            .await?
            .is_empty()
        {
            return Err(LookupError::AliasDomainExists(nd));
        }
        let new_cfg = self.domain_dir(&nd);
        if new_cfg.exists() {
            return Err(LookupError::Refused(format!(
                "{} exists already",
                new_cfg.display()
            )));
        }
        // Homes to move, and each user's new pw_dir.
        let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut dirs: Vec<(&str, String, String)> = Vec::new();
        for table in ["indimail", "indibak"] {
            let rows = self
                .db
                .on(&od)
                .query(
                    &format!("SELECT pw_name, pw_dir FROM {table} WHERE pw_domain = ?"),
                    params![&od],
                )
                .await?;
            for r in &rows {
                let dir = PathBuf::from(r.text(1));
                if let Some((nd_dir, from, to)) = renamed_domain_dir(&dir, &od, &nd) {
                    if !moves.iter().any(|(f, _)| f == &from) {
                        moves.push((from, to));
                    }
                    dirs.push((table, r.text(0), nd_dir.to_string_lossy().into_owned()));
                }
            }
        }
        for (_, to) in &moves {
            if to.exists() {
                return Err(LookupError::Refused(format!(
                    "{} exists already",
                    to.display()
                )));
            }
        }
        for (t, c) in [
            ("indimail", "pw_domain"),
            ("indibak", "pw_domain"),
            ("valias", "domain"),
            ("hostcntrl", "pw_domain"),
            ("smtp_port", "domain"),
            ("lastauth", "domain"),
            ("userquota", "domain"),
            ("vlimits", "domain"),
            ("dir_control", "domain"),
            ("aliasdomain", "domain"),
            ("atrn_map", "pw_domain"),
        ] {
            self.db
                .on(&od)
                .exec(
                    &format!("UPDATE {t} SET {c} = ? WHERE {c} = ?"),
                    params![&nd, &od],
                )
                .await?;
        }
        for (table, name, dir) in &dirs {
            self.db
                .on(&od)
                .exec(
                    &format!("UPDATE {table} SET pw_dir = ? WHERE pw_name = ? AND pw_domain = ?"),
                    params![dir, name, &nd],
                )
                .await?;
        }
        for (from, to) in &moves {
            if from.exists() {
                rename_path(from, to)?;
            }
        }
        let old_cfg = self.domain_dir(&od);
        if old_cfg.exists() {
            rename_path(&old_cfg, &new_cfg)?;
        }
        self.remove_control(&od)?;
        self.add_control(&nd, &nd)?;
        let aliases: Vec<String> = self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE domain = ?",
                params![&nd],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        for a in &aliases {
            self.add_control(a, &nd)?;
        }
        self.db.bump_changes().await?;
        self.domain_info(&nd).await
    }

    /// vmoddomain: apply `change` and report the domain's settings.
    pub async fn domain_mod(
        &self,
        domain: &str,
        change: &DomainChange,
    ) -> Result<DomainSettings, LookupError> {
        let d = self.require_domain(domain).await?;
        let dir = self.domain_dir(&d);
        let marker = dir.join(".domain_limits");
        match change.limits {
            Some(true) => std::fs::write(&marker, "").map_err(io_err(&marker))?,
            Some(false) => match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LookupError::io(&marker, e))
                }
                _ => {}
            },
            None => {}
        }
        let qd = dir.join(".qmail-default");
        if let Some(h) = &change.handler {
            check_handler(h)?;
            rewrite_lines(&qd, &[qmail_default_line(h)])?;
        }
        if change.limits.is_some() || change.handler.is_some() {
            self.db.bump_changes().await?;
        }
        Ok(DomainSettings {
            limits: marker.exists(),
            handler: handler_of(&std::fs::read_to_string(&qd).unwrap_or_default()),
            name: d,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn domain_dirs_rename() {
        let (dir, from, to) =
            renamed_domain_dir(Path::new("/m/L2P/old.org/0/manny"), "old.org", "new.org").unwrap();
        assert_eq!(dir, Path::new("/m/L2P/new.org/0/manny"));
        assert_eq!(from, Path::new("/m/L2P/old.org"));
        assert_eq!(to, Path::new("/m/L2P/new.org"));
        assert!(renamed_domain_dir(Path::new("/m/x/old.org/u"), "old.org", "n").is_none());
        assert!(check_handler("bounce-no-mailbox").is_ok());
        assert!(check_handler("a@b.org").is_ok());
        assert!(check_handler("b.org:10.0.0.1:25").is_ok());
        assert!(check_handler("rm -rf").is_err());
        assert_eq!(handler_of("| /usr/sbin/vdelivermail '' delete\n"), "delete");
    }
}
