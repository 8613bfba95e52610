//! valias: the aliases kept in the valias table.

use super::Admin;
use crate::model::{Address, MAX_VALIAS_LEN};
use crate::queries;
use crate::sql::params;
use crate::LookupError;

impl Admin {
    /// valias -i: add an alias line for `email` (the domain must be virtual).
    pub async fn alias_add(&self, email: &str, line: &str) -> Result<(), LookupError> {
        let addr = Address::parse(email)?;
        let d = self.require_domain(addr.domain()).await?;
        let line = line.trim();
        if line.is_empty() || line.contains(['\n', '\0']) {
            return Err(LookupError::InvalidAddress(line.to_string()));
        }
        if line.len() > MAX_VALIAS_LEN {
            return Err(LookupError::FieldTooLong {
                field: "alias line",
                max: MAX_VALIAS_LEN,
            });
        }
        if queries::aliases(&self.db, addr.user(), &d)
            .await?
            .iter()
            .any(|l| l == line)
        {
            return Err(LookupError::AliasExists(addr.to_string()));
        }
        if let Some(l) = self
            .limits_in_force(&d)
            .await?
            .filter(|l| l.maxaliases >= 0)
        {
            let new_alias = queries::aliases(&self.db, addr.user(), &d)
                .await?
                .is_empty();
            let n = self
                .count(
                    "SELECT COUNT(DISTINCT alias) FROM valias WHERE domain = ?",
                    &d,
                )
                .await?;
            if new_alias && n >= l.maxaliases {
                return Err(LookupError::Refused(format!(
                    "{d} has reached its limit of {} aliases (vlimit -A)",
                    l.maxaliases
                )));
            }
        }
        self.db
            .on(&d)
            .exec(
                "INSERT INTO valias (alias, domain, valias_line) VALUES (?, ?, ?)",
                params![addr.user(), &d, line],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// valias -d: delete one line, or all lines with `None`.
    pub async fn alias_del(&self, email: &str, line: Option<&str>) -> Result<(), LookupError> {
        let addr = Address::parse(email)?;
        let d = self.require_domain(addr.domain()).await?;
        let n = match line {
            Some(l) => {
                self.db
                    .on(&d)
                    .exec(
                        "DELETE FROM valias WHERE alias = ? AND domain = ? AND valias_line = ?",
                        params![addr.user(), &d, l.trim()],
                    )
                    .await?
            }
            None => {
                self.db
                    .on(&d)
                    .exec(
                        "DELETE FROM valias WHERE alias = ? AND domain = ?",
                        params![addr.user(), &d],
                    )
                    .await?
            }
        };
        if n == 0 {
            return Err(LookupError::AliasNotFound(addr.to_string()));
        }
        self.db.bump_changes().await
    }

    /// valias -s: `(address, line)` pairs of one address or of a whole domain.
    pub async fn alias_list(
        &self,
        email_or_domain: &str,
    ) -> Result<Vec<(String, String)>, LookupError> {
        let rows = match email_or_domain.rsplit_once('@') {
            Some(_) => {
                let addr = Address::parse(email_or_domain)?;
                let d = self.require_domain(addr.domain()).await?;
                self.db
                    .on(&d).query(
                        "SELECT alias, domain, valias_line FROM valias WHERE alias = ? AND domain = ? ORDER BY valias_line",
                        params![addr.user(), &d],
                    )
                    .await?
            }
            None => {
                let d = self.require_domain(email_or_domain).await?;
                self.db
                    .on(&d).query(
                        "SELECT alias, domain, valias_line FROM valias WHERE domain = ? ORDER BY alias, valias_line",
                        params![&d],
                    )
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| (format!("{}@{}", r.text(0), r.text(1)), r.text(2)))
            .collect())
    }
}
