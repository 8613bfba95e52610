//! vatrn: the domains a user may turn with ATRN (atrn_map).

use super::Admin;
use crate::model::{normalize_domain, Address};
use crate::sql::params;
use crate::LookupError;

impl Admin {
    /// vatrn -i: `email` may turn `domain` with ATRN (an `atrn_map` row).
    pub async fn atrn_add(&self, email: &str, domain: &str) -> Result<(), LookupError> {
        let a = Address::parse(email)?;
        let d = normalize_domain(domain)?;
        if d.len() > 67 {
            return Err(LookupError::FieldTooLong {
                field: "atrn_map.domain_list",
                max: 67,
            });
        }
        let exists = !self
            .db
            .on(a.domain()).query(
                "SELECT domain_list FROM atrn_map WHERE pw_name = ? AND pw_domain = ? AND domain_list = ?",
                params![a.user(), a.domain(), &d],
            )
            .await?
            .is_empty();
        if exists {
            return Err(LookupError::AtrnMapExists(format!("{a} {d}")));
        }
        self.db
            .on(a.domain())
            .exec(
                "INSERT INTO atrn_map (pw_name, pw_domain, domain_list) VALUES (?, ?, ?)",
                params![a.user(), a.domain(), &d],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// vatrn -d: remove one domain of `email`, or all of them when `domain` is `None`.
    pub async fn atrn_del(&self, email: &str, domain: Option<&str>) -> Result<(), LookupError> {
        let a = Address::parse(email)?;
        let n = match domain {
            Some(d) => {
                let d = normalize_domain(d)?;
                self.db
                    .on(a.domain()).exec(
                        "DELETE FROM atrn_map WHERE pw_name = ? AND pw_domain = ? AND domain_list = ?",
                        params![a.user(), a.domain(), &d],
                    )
                    .await?
            }
            None => {
                self.db
                    .on(a.domain())
                    .exec(
                        "DELETE FROM atrn_map WHERE pw_name = ? AND pw_domain = ?",
                        params![a.user(), a.domain()],
                    )
                    .await?
            }
        };
        if n == 0 {
            return Err(LookupError::AtrnMapNotFound(match domain {
                Some(d) => format!("{a} {d}"),
                None => a.to_string(),
            }));
        }
        self.db.bump_changes().await
    }

    /// vatrn -u old -i new: replace one domain of `email`.
    pub async fn atrn_update(&self, email: &str, old: &str, new: &str) -> Result<(), LookupError> {
        self.atrn_del(email, Some(old)).await?;
        self.atrn_add(email, new).await
    }

    /// vatrn -s: `(user@domain, domain)` rows of one address, or all, sorted.
    pub async fn atrn_list(
        &self,
        email: Option<&str>,
    ) -> Result<Vec<(String, String)>, LookupError> {
        let rows = match email {
            Some(e) => {
                let a = Address::parse(e)?;
                self.db
                    .on(a.domain())
                    .query(
                        "SELECT pw_name, pw_domain, domain_list FROM atrn_map \
                         WHERE pw_name = ? AND pw_domain = ? ORDER BY domain_list",
                        params![a.user(), a.domain()],
                    )
                    .await?
            }
            None => {
                self.db
                    .query_everywhere(
                        "SELECT pw_name, pw_domain, domain_list FROM atrn_map \
                         ORDER BY pw_domain, pw_name, domain_list",
                        vec![],
                    )
                    .await?
            }
        };
        let mut maps: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.text(1), r.text(0), r.text(2)))
            .collect();
        if self.db.routes_domains() {
            maps.sort();
        }
        Ok(maps
            .into_iter()
            .map(|(domain, name, list)| (format!("{name}@{domain}"), list))
            .collect())
    }
}
