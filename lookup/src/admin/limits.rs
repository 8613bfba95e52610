//! vlimit: a domain's limits (the vlimits row), in force when the domain dir says so.

use super::Admin;
use crate::model::Limits;
use crate::queries;
use crate::sql::params;
use crate::LookupError;

impl Admin {
    /// vlimit: set a domain's limits row.
    pub async fn limits_set(&self, limits: &Limits) -> Result<(), LookupError> {
        let d = self.require_domain(&limits.domain).await?;
        let b = |v: bool| i64::from(v);
        self.db
            .on(&d).exec(
                "REPLACE INTO vlimits (domain, domain_expiry, passwd_expiry, maxpopaccounts, maxaliases, \
                 maxforwards, maxautoresponders, maxmailinglists, diskquota, maxmsgcount, defaultquota, \
                 defaultmaxmsgcount, disable_pop, disable_imap, disable_dialup, disable_passwordchanging, \
                 disable_webmail, disable_relay, disable_smtp, perm_account, perm_alias, perm_forward, \
                 perm_autoresponder, perm_maillist, perm_quota, perm_defaultquota) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    &d,
                    limits.domain_expiry,
                    limits.passwd_expiry,
                    limits.maxpopaccounts,
                    limits.maxaliases,
                    limits.maxforwards,
                    limits.maxautoresponders,
                    limits.maxmailinglists,
                    limits.diskquota,
                    limits.maxmsgcount,
                    limits.defaultquota,
                    limits.defaultmaxmsgcount,
                    b(limits.disable_pop),
                    b(limits.disable_imap),
                    b(limits.disable_dialup),
                    b(limits.disable_passwordchanging),
                    b(limits.disable_webmail),
                    b(limits.disable_relay),
                    b(limits.disable_smtp),
                    limits.perm_account,
                    limits.perm_alias,
                    limits.perm_forward,
                    limits.perm_autoresponder,
                    limits.perm_maillist,
                    limits.perm_quota,
                    limits.perm_defaultquota
                ],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// vlimit -s: the domain's `vlimits` row, `None` when it has none (defaults apply).
    pub async fn limits_get(&self, domain: &str) -> Result<Option<Limits>, LookupError> {
        let d = self.require_domain(domain).await?;
        queries::limits(&self.db, &d).await
    }

    /// vlimit -d: remove the domain's `vlimits` row (back to the defaults).
    pub async fn limits_del(&self, domain: &str) -> Result<(), LookupError> {
        let d = self.require_domain(domain).await?;
        let n = self
            .db
            .on(&d)
            .exec("DELETE FROM vlimits WHERE domain = ?", params![&d])
            .await?;
        if n == 0 {
            return Err(LookupError::LimitsNotFound(d));
        }
        self.db.bump_changes().await
    }

    /// The domain's vlimits row when limits are in force for it (`.domain_limits`,
    /// `DOMAIN_LIMITS`), as vadduser and valias consult it.
    pub(super) async fn limits_in_force(
        &self,
        domain: &str,
    ) -> Result<Option<Limits>, LookupError> {
        if crate::directory::limits_in_force(&self.domain_dir(domain)) {
            queries::limits(&self.db, domain).await
        } else {
            Ok(None)
        }
    }
}
