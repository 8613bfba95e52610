//! SMTP AUTH against the directory: PLAIN, LOGIN, CRAM-MD5 and SCRAM-SHA-256,
//! with failures delayed per client IP and the user's SMTP permissions.

use std::rc::Rc;

use smtp_proto::{AuthOutcome, AuthSecret, ScramCredentials};

use control::log;

use super::Connection;

impl Connection {
    /// SCRAM-SHA-256 after the client-first message: the user's stored
    /// secret (the `scram` column) and a fresh server nonce. A user who does
    /// not exist, has no SCRAM secret or an unusable one gets a decoy, so the
    /// exchange looks the same and fails with 535 at its end; `None` (454)
    /// only when the directory cannot answer now.
    pub(super) async fn scram_lookup(&self, authcid: &str) -> (Option<ScramCredentials>, String) {
        let user = authcid.trim().to_ascii_lowercase();
        let ip = self.peer.ip();
        let random = || tls::random_u64().ok();
        let Some(nonce) = (|| {
            Some(format!(
                "{:016x}{:016x}{:016x}",
                random()?,
                random()?,
                random()?
            ))
        })() else {
            log!(
                "shard{} auth tempfail user={user} ip={ip} reason=no randomness",
                self.shard.index
            );
            return (None, String::new());
        };
        let secret = match self.shard.directory.get().await {
            Ok(dir) => dir.scram_secret(&user).await,
            Err(e) => Err(lookup::LookupError::Unavailable(e)),
        };
        let decoy = || {
            ScramCredentials::decoy(
                &user,
                scram_decoy_key(),
                smtp_proto::SCRAM_DEFAULT_ITERATIONS,
            )
        };
        let credentials = match secret {
            Ok(Some(column)) => ScramCredentials::parse(&column).unwrap_or_else(|e| {
                log!(
                    "shard{} auth scram secret of {user} unusable: {e}",
                    self.shard.index
                );
                decoy()
            }),
            Ok(None) => decoy(),
            Err(e) if e.is_temporary() => {
                log!(
                    "shard{} auth tempfail user={user} ip={ip} reason={e}",
                    self.shard.index
                );
                return (None, nonce);
            }
            // Not a user name the directory can hold: fails like an unknown user.
            Err(_) => decoy(),
        };
        (Some(credentials), nonce)
    }

    /// Verifies an AUTH exchange against the directory. The secret is never
    /// logged. Failures are delayed, more for IPs with many failures on this
    /// shard.
    pub(super) async fn authenticate(
        &mut self,
        mechanism: &str,
        authcid: &str,
        secret: AuthSecret,
    ) -> AuthOutcome {
        let user = authcid.trim().to_ascii_lowercase();
        let ip = self.peer.ip();
        let dir = match self.shard.directory.get().await {
            Ok(d) => d,
            Err(e) => {
                log!(
                    "shard{} auth tempfail user={user} ip={ip} reason={e}",
                    self.shard.index
                );
                return AuthOutcome::TempFail;
            }
        };
        let verdict: Result<Option<Rc<lookup::User>>, lookup::LookupError> = match secret {
            AuthSecret::Password(pw) => match dir.check_password(&user, &pw).await {
                Ok(lookup::AuthResult::Ok(u)) => Ok(Some(u)),
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            },
            // The core checked the proof against the secret from scram_lookup.
            AuthSecret::Scram { proof_valid: true } => {
                dir.user(&user).await.map(|u| u.filter(|u| u.active))
            }
            AuthSecret::Scram { proof_valid: false } => Ok(None),
            AuthSecret::CramResponse { challenge, digest } => match dir.cram_secret(&user).await {
                Ok(Some(clear))
                    if cram_md5_hex(&clear, &challenge).eq_ignore_ascii_case(digest.trim()) =>
                {
                    dir.user(&user).await.map(|u| u.filter(|u| u.active))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            },
        };
        // User flags and domain limits (vlimit) decide what a valid login
        // may do: NO_SMTP / disable_smtp refuse it like a bad password
        // (IndiMail's vchkpass), NO_RELAY / disable_relay keep it local.
        let verdict = match verdict {
            Ok(Some(u)) => match smtp_permissions(&dir, &u).await {
                Ok(Some(relay)) => Ok(Some((u, relay))),
                Ok(None) => {
                    log!(
                        "shard{} auth refused user={} ip={ip} reason=no-smtp",
                        self.shard.index,
                        u.email()
                    );
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match verdict {
            Ok(Some((u, may_relay))) => {
                let no_relay = !may_relay;
                if !no_relay {
                    self.relay = true;
                }
                self.auth_user = Some(u.email());
                self.shard.auth_failures.borrow_mut().remove(&ip);
                log!(
                    "shard{} auth ok user={} mech={mechanism} ip={ip} relay={}",
                    self.shard.index,
                    u.email(),
                    !no_relay
                );
                AuthOutcome::Ok
            }
            Ok(None) => {
                self.auth_failures += 1;
                let ip_failures = {
                    let mut m = self.shard.auth_failures.borrow_mut();
                    let n = m.entry(ip).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                self.shard
                    .metrics
                    .inc(scheduler::metrics::Counter::AuthFailures);
                log!(
                    "shard{} auth failed user={user} mech={mechanism} ip={ip} failures={} ip_failures={ip_failures}",
                    self.shard.index,
                    self.auth_failures
                );
                // PENALTY-style delay: 1 s, growing with the IP's failures
                // on this shard up to 10 s. Only this session waits.
                let delay = std::time::Duration::from_millis(500 * u64::from(ip_failures.min(20)));
                tokio::time::sleep(delay).await;
                AuthOutcome::Failed
            }
            Err(e) => {
                log!(
                    "shard{} auth tempfail user={user} ip={ip} reason={e}",
                    self.shard.index
                );
                AuthOutcome::TempFail
            }
        }
    }
}

/// What an authenticated user may do over SMTP: `None` when the user's
/// NO_SMTP flag, the domain's `disable_smtp` limit or its expiry (domain or
/// passwords, vlimit -e / -t) refuses SMTP altogether, else whether relaying is allowed (NO_RELAY, `disable_relay`).
/// The `override` flag exempts a user from the domain limits, as in vlimit.
async fn smtp_permissions(
    dir: &lookup::Directory,
    u: &lookup::User,
) -> Result<Option<bool>, lookup::LookupError> {
    use lookup::UserFlags;
    if u.flags.has(UserFlags::NO_SMTP) {
        return Ok(None);
    }
    let mut relay = !u.flags.has(UserFlags::NO_RELAY);
    if !u.flags.has(UserFlags::V_OVERRIDE) {
        if let Some(l) = dir.limits(&u.domain).await? {
            if l.disable_smtp || l.expired(lookup::unix_now()) {
                return Ok(None);
            }
            relay &= !l.disable_relay;
        }
    }
    Ok(Some(relay))
}

/// CRAM-MD5 (RFC 2195): hex HMAC-MD5 of the challenge keyed by the
/// clear-text secret.
pub(super) fn cram_md5_hex(secret: &str, challenge: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<md5::Md5> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(challenge.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This process's key for SCRAM decoys ([`ScramCredentials::decoy`]): the
/// salt shown for an unknown user stays the same while the server runs, as a
/// real user's would.
pub(super) fn scram_decoy_key() -> &'static [u8] {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        (0..4)
            .flat_map(|i| {
                tls::random_u64()
                    .unwrap_or_else(|_| {
                        u64::from(std::process::id()) ^ scheduler::deliver::unix_now() ^ i
                    })
                    .to_le_bytes()
            })
            .collect()
    })
}
