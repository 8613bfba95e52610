//! The DNS questions the SMTP listener asks about a client: DNSBL listings
//! (`dnsbllist`) and SPF (`spfbehavior`). Asked on the shard's runtime
//! (hickory over the shard's sockets), never blocking it; what the answers
//! mean is decided by `policy::dnsbl` and `policy::spf`.

use std::net::IpAddr;

use delivery::dns::{DnsConfig, Resolver};
use policy::spf::SpfResult;

use control::log;

/// One shard's resolver for client checks, made on first use.
pub struct DnsChecks {
    shard: usize,
    resolver: std::cell::OnceCell<Option<Resolver>>,
}

/// What an SPF check found.
pub struct SpfFinding {
    /// The result.
    pub result: SpfResult,
    /// The domain checked (sender's, or the HELO name for a null sender).
    pub domain: String,
    /// The domain's `exp=` explanation, when it gave one.
    pub explanation: Option<String>,
}

impl DnsChecks {
    /// Checks for shard `shard`.
    pub fn new(shard: usize) -> DnsChecks {
        DnsChecks {
            shard,
            resolver: std::cell::OnceCell::new(),
        }
    }

    fn resolver(&self) -> Option<&Resolver> {
        self.resolver
            .get_or_init(
                || match DnsConfig::from_env().and_then(|c| Resolver::new(&c)) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        log!("shard{} dns checks disabled: {e}", self.shard);
                        None
                    }
                },
            )
            .as_ref()
    }

    /// The client's host name from its PTR (`TCPREMOTEHOST`): `Ok(None)` when it has
    /// none, `Err` when DNS could not say (or no resolver could be made).
    pub async fn client_name(&self, ip: IpAddr) -> Result<Option<String>, ClientNameError> {
        let resolver = self.resolver().ok_or(ClientNameError::NoResolver)?;
        Ok(resolver.ptr(ip).await?)
    }

    /// The first of `zones` listing `ip`, as a reply (`554 5.7.1` with the
    /// list's TXT reason). All zones are asked at once. A zone that cannot
    /// be asked (timeout, SERVFAIL) does not block mail; it is logged.
    pub async fn dnsbl(&self, ip: IpAddr, zones: &[String]) -> Option<policy::Verdict> {
        let resolver = self.resolver()?;
        let asks = zones.iter().map(|zone| async move {
            let name = policy::dnsbl::query_name(ip, zone);
            match resolver.ipv4(&name).await {
                Ok(a) if a.iter().any(|a| policy::dnsbl::is_listing(*a)) => {
                    let reason = resolver
                        .txt(&name)
                        .await
                        .ok()
                        .and_then(|t| t.into_iter().next());
                    Some(policy::dnsbl::listed_verdict(ip, zone, reason.as_deref()))
                }
                Ok(_) => None,
                Err(e) => {
                    log!("shard{} dnsbl {zone} unanswered ip={ip}: {e}", self.shard);
                    None
                }
            }
        });
        // Zones in the file's order: the first listing wins.
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()
    }

    /// DKIM verification of an incoming message (`DKIMVERIFY`): the
    /// `Authentication-Results:` header and the result letter.
    pub async fn verify_dkim(
        &self,
        me: &str,
        message: &[u8],
        spf: Option<(&str, &str)>,
    ) -> msgproc::dkim::Verification {
        let resolver = self.resolver().map(Resolver::hickory);
        msgproc::dkim::verify(resolver, me, message, spf).await
    }

    /// The SPF result for `sender` (or, for the null sender, the HELO
    /// name) sending from `ip` (RFC 7208 via `mail-auth`).
    /// `local` adds qmail-spf's `spfrules` and `spfguess` to the domain's
    /// record and `spfexp` to a failure the domain does not explain.
    pub async fn spf(
        &self,
        ip: IpAddr,
        helo: &str,
        sender: &str,
        me: &str,
        local: &policy::spf::SpfLocal,
    ) -> SpfFinding {
        let domain = match sender.rsplit_once('@') {
            Some((_, d)) if !sender.is_empty() => d.to_ascii_lowercase(),
            _ => helo.to_ascii_lowercase(),
        };
        let Some(resolver) = self.resolver() else {
            return SpfFinding {
                result: SpfResult::TempError,
                domain,
                explanation: None,
            };
        };
        let auth = mail_auth::MessageAuthenticator(resolver.hickory().clone());
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let params = if sender.is_empty() {
            mail_auth::spf::verify::SpfParameters::verify_ehlo(ip, helo, me)
        } else {
            mail_auth::spf::verify::SpfParameters::verify_mail_from(ip, helo, me, sender)
        };
        let out = match self.local_record(resolver, &domain, local).await {
            // The record with the local rules (or the guess) stands in for
            // the domain's own, through mail-auth's TXT cache.
            Some(txt) => {
                let cache = OneTxt {
                    key: format!("{domain}."),
                    value: txt,
                };
                let params = mail_auth::Parameters::new(params).with_txt_cache(&cache);
                auth.verify_spf(params).await
            }
            None => auth.verify_spf(params).await,
        };
        let result = match out.result() {
            mail_auth::SpfResult::Pass => SpfResult::Pass,
            mail_auth::SpfResult::Fail => SpfResult::Fail,
            mail_auth::SpfResult::SoftFail => SpfResult::SoftFail,
            mail_auth::SpfResult::Neutral => SpfResult::Neutral,
            mail_auth::SpfResult::None => SpfResult::None,
            mail_auth::SpfResult::TempError => SpfResult::TempError,
            mail_auth::SpfResult::PermError => SpfResult::PermError,
        };
        let explanation = out.explanation().map(str::to_string).or_else(|| {
            (result == SpfResult::Fail)
                .then(|| local.explanation(sender, ip, helo, me))
                .flatten()
        });
        SpfFinding {
            result,
            domain,
            explanation,
        }
    }

    /// The record `spfrules`/`spfguess` make for `domain`, parsed; `None`
    /// when neither applies or DNS could not say (mail-auth then asks and
    /// reports the error as usual).
    async fn local_record(
        &self,
        resolver: &Resolver,
        domain: &str,
        local: &policy::spf::SpfLocal,
    ) -> Option<mail_auth::Txt> {
        if local.rules.is_none() && local.guess.is_none() {
            return None;
        }
        let txts = resolver.txt(domain).await.ok()?;
        let published = txts.iter().find(|t| policy::spf::is_spf1(t));
        let record = local.record_for(published.map(String::as_str))?;
        use mail_auth::common::parse::TxtRecordParser;
        match mail_auth::spf::Spf::parse(record.as_bytes()) {
            Ok(spf) => Some(mail_auth::Txt::Spf(std::sync::Arc::new(spf))),
            Err(e) => {
                log!(
                    "shard{} spf local record for {domain} unusable ({e}): {record}",
                    self.shard
                );
                None
            }
        }
    }
}

/// A TXT cache holding one record: how a local SPF record replaces the
/// domain's for one evaluation.
struct OneTxt {
    key: String,
    value: mail_auth::Txt,
}

impl mail_auth::ResolverCache<String, mail_auth::Txt> for OneTxt {
    fn get<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
    where
        String: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        use std::borrow::Borrow;
        (<String as Borrow<Q>>::borrow(&self.key) == name).then(|| self.value.clone())
    }

    fn remove<Q>(&self, _: &Q) -> Option<mail_auth::Txt>
    where
        String: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: String, _: mail_auth::Txt, _: std::time::Instant) {}
}

/// Why the client's name could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ClientNameError {
    /// No resolver could be made (logged once when it was tried).
    #[error("no resolver")]
    NoResolver,
    /// DNS did not answer (timeout, SERVFAIL, ...).
    #[error(transparent)]
    Dns(#[from] delivery::dns::DnsError),
}
