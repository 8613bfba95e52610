//! Password schemes of spec 4.5: crypt(3) DES, MD5 `$1$`, SHA-256 `$5$`, SHA-512 `$6$`,
//! yescrypt `$y$` (RustCrypto's maintained `yescrypt` crate), the `{CRAM}clear,crypt`
//! form that keeps the clear text for CRAM-MD5, and the SCRAM-SHA-256 secrets of the `scram`
//! column ([`scram_sha256`]; RFC 5802/7677, PBKDF2 from RustCrypto's `pbkdf2`).
//!
//! These are CPU-bound (SHA-512 crypt is 5000 rounds, yescrypt tens of milliseconds): the
//! async [`crate::Directory::check_password`] runs them on the blocking pool so a shard's
//! event loop is never stalled; the functions here are synchronous.

use std::fmt;
use std::io::Read;

use yescrypt::{PasswordHasher, PasswordVerifier};

use crate::LookupError;

/// Width of `pw_passwd` (char(128)).
pub const MAX_PASSWD_LEN: usize = 128;

/// Marker of the clear-text-for-CRAM form.
pub const CRAM_PREFIX: &str = "{CRAM}";

/// Longest clear-text password accepted (the stored crypt string must also fit char(128)).
pub const MAX_CLEAR_LEN: usize = 128;

/// A crypt(3) scheme, numbered as IndiMail's `hash_method` / `PASSWORD_HASH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashMethod {
    /// Traditional DES crypt (0).
    Des,
    /// MD5 crypt `$1$` (1).
    Md5,
    /// SHA-256 crypt `$5$` (2; IndiMail's default build).
    #[default]
    Sha256,
    /// SHA-512 crypt `$6$` (3).
    Sha512,
    /// yescrypt `$y$` (4).
    Yescrypt,
}

impl HashMethod {
    /// Parse a `hash_method` value: `DES`, `MD5`, `SHA-256`, `SHA-512`, `YESCRYPT` or 0–4.
    pub fn parse(s: &str) -> Result<HashMethod, LookupError> {
        match s.trim().to_ascii_uppercase().as_str() {
            "0" | "DES" => Ok(HashMethod::Des),
            "1" | "MD5" => Ok(HashMethod::Md5),
            "2" | "SHA-256" | "SHA256" => Ok(HashMethod::Sha256),
            "3" | "SHA-512" | "SHA512" => Ok(HashMethod::Sha512),
            "4" | "YESCRYPT" => Ok(HashMethod::Yescrypt),
            _ => Err(LookupError::UnknownHash(s.to_string())),
        }
    }
}

impl fmt::Display for HashMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashMethod::Des => "DES",
            HashMethod::Md5 => "MD5",
            HashMethod::Sha256 => "SHA-256",
            HashMethod::Sha512 => "SHA-512",
            HashMethod::Yescrypt => "YESCRYPT",
        })
    }
}

const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_bytes(n: usize) -> Result<Vec<u8>, LookupError> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| LookupError::io("/dev/urandom", e))?;
    Ok(buf)
}

/// A random salt of `n` characters from the crypt alphabet.
pub fn random_salt(n: usize) -> Result<String, LookupError> {
    Ok(random_bytes(n)?
        .into_iter()
        .map(|b| CRYPT_ALPHABET[usize::from(b & 63)] as char)
        .collect())
}

fn check_clear(clear: &str) -> Result<(), LookupError> {
    if clear.is_empty() {
        return Err(LookupError::InvalidPassword("empty password".into()));
    }
    if clear.len() > MAX_CLEAR_LEN {
        return Err(LookupError::PasswordTooLong { max: MAX_CLEAR_LEN });
    }
    if clear.contains(['\0', '\n', '\r']) {
        return Err(LookupError::InvalidPassword(
            "password holds NUL or line break".into(),
        ));
    }
    Ok(())
}

// pwhash marks DES/MD5/SHA-crypt hashing deprecated for new passwords; IndiMail
// compatibility requires producing them when an operator chooses them (`-h`, hash_method).
#[allow(deprecated)]
/// Hash `clear` with `method`. `salt` (crypt alphabet; for yescrypt the raw salt bytes'
/// source string) is random when `None`.
pub fn hash(method: HashMethod, clear: &str, salt: Option<&str>) -> Result<String, LookupError> {
    check_clear(clear)?;
    let herr = |e: pwhash::error::Error| LookupError::Hash(e.to_string());
    let salt = |n: usize| -> Result<String, LookupError> {
        match salt {
            Some(s) => Ok(s.to_string()),
            None => random_salt(n),
        }
    };
    match method {
        HashMethod::Des => pwhash::unix_crypt::hash_with(&salt(2)?, clear).map_err(herr),
        HashMethod::Md5 => {
            pwhash::md5_crypt::hash_with(format!("$1${}", salt(8)?).as_str(), clear).map_err(herr)
        }
        HashMethod::Sha256 => {
            pwhash::sha256_crypt::hash_with(format!("$5${}", salt(16)?).as_str(), clear)
                .map_err(herr)
        }
        HashMethod::Sha512 => {
            pwhash::sha512_crypt::hash_with(format!("$6${}", salt(16)?).as_str(), clear)
                .map_err(herr)
        }
        HashMethod::Yescrypt => {
            let raw = match salt(0) {
                Ok(s) if !s.is_empty() => s.into_bytes(),
                _ => random_bytes(16)?,
            };
            yescrypt::Yescrypt::default()
                .hash_password_with_salt(clear.as_bytes(), &raw)
                .map(|h| h.as_str().to_string())
                .map_err(|e| LookupError::Hash(e.to_string()))
        }
    }
}

/// The value to store in `pw_passwd`: the crypt string, or with `cram` the
/// `{CRAM}clear,crypt` form. Fails with [`LookupError::PasswordTooLong`] when it does not
/// fit char(128).
pub fn stored_form(method: HashMethod, clear: &str, cram: bool) -> Result<String, LookupError> {
    let crypted = hash(method, clear, None)?;
    let stored = if cram {
        if clear.contains(',') {
            return Err(LookupError::InvalidPassword(
                "a password kept for CRAM may not contain ','".into(),
            ));
        }
        format!("{CRAM_PREFIX}{clear},{crypted}")
    } else {
        crypted
    };
    if stored.len() > MAX_PASSWD_LEN {
        return Err(LookupError::PasswordTooLong {
            max: MAX_PASSWD_LEN - (stored.len() - clear.len()),
        });
    }
    Ok(stored)
}

/// Marker of a SCRAM-SHA-256 secret in the `scram` column.
pub const SCRAM_SHA256_PREFIX: &str = "{SCRAM-SHA-256}";

/// Iteration count of a SCRAM secret when none is given (IndiMail's `-I` default, and
/// RFC 7677's minimum).
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 4096;

/// Largest iteration count accepted: every login costs the client this many HMACs.
pub const SCRAM_MAX_ITERATIONS: u32 = 10_000_000;

/// Longest salt accepted (`-S`), in bytes.
pub const SCRAM_MAX_SALT: usize = 64;

/// Width of the `scram` column.
pub const MAX_SCRAM_LEN: usize = 255;

/// The `scram` column value for `clear` (RFC 5802 section 3 with SHA-256, RFC 7677):
/// `{SCRAM-SHA-256}<iterations>,<b64 salt>,<b64 StoredKey>,<b64 ServerKey>`, where
/// SaltedPassword = PBKDF2-HMAC-SHA-256(clear, salt, iterations), StoredKey =
/// SHA-256(HMAC(SaltedPassword, "Client Key")) and ServerKey = HMAC(SaltedPassword,
/// "Server Key"). `salt` defaults to 16 random bytes. The password is used as given (SASLprep
/// is the identity for ASCII passwords; a client that normalises a non-ASCII one differently
/// will not log in). IndiMail's `-C` suffix `:<hex salted password>:<clear>` is not written:
/// the clear text for CRAM stays in `pw_passwd`.
pub fn scram_sha256(
    clear: &str,
    salt: Option<&[u8]>,
    iterations: u32,
) -> Result<String, LookupError> {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    check_clear(clear)?;
    if !(1..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
        return Err(LookupError::InvalidPassword(format!(
            "SCRAM iteration count must be 1 to {SCRAM_MAX_ITERATIONS}"
        )));
    }
    let salt = match salt {
        Some(s) if s.is_empty() || s.len() > SCRAM_MAX_SALT => {
            return Err(LookupError::InvalidPassword(format!(
                "SCRAM salt must be 1 to {SCRAM_MAX_SALT} bytes"
            )))
        }
        Some(s) => s.to_vec(),
        None => random_bytes(16)?,
    };
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(clear.as_bytes(), &salt, iterations, &mut salted);
    let hmac = |data: &[u8]| {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&salted).expect("HMAC takes keys of any length");
        m.update(data);
        m.finalize().into_bytes()
    };
    let stored_key = Sha256::digest(hmac(b"Client Key"));
    let server_key = hmac(b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    let column = format!(
        "{SCRAM_SHA256_PREFIX}{iterations},{},{},{}",
        b64.encode(&salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    );
    debug_assert!(column.len() <= MAX_SCRAM_LEN);
    Ok(column)
}

/// The `pw_passwd` and `scram` values for a user's own password change (poppassd): hashed
/// with `method` as `user passwd` does, in the form the user already has: `{CRAM}clear,crypt`
/// when the old value kept the clear text, and a SCRAM secret (new salt, the old iteration
/// count) when the user had one, so CRAM-MD5 and SCRAM logins keep working with the new
/// password and none derived from the old one remains.
pub fn changed_secrets(
    method: HashMethod,
    old_passwd: &str,
    old_scram: Option<&str>,
    clear: &str,
) -> Result<(String, Option<String>), LookupError> {
    let stored = stored_form(method, clear, old_passwd.starts_with(CRAM_PREFIX))?;
    let scram = match old_scram.and_then(|s| s.strip_prefix(SCRAM_SHA256_PREFIX)) {
        Some(rest) => {
            let iterations = rest
                .split(',')
                .next()
                .and_then(|i| i.parse().ok())
                .filter(|i| (1..=SCRAM_MAX_ITERATIONS).contains(i))
                .unwrap_or(SCRAM_DEFAULT_ITERATIONS);
            Some(scram_sha256(clear, None, iterations)?)
        }
        None => None,
    };
    Ok((stored, scram))
}

/// The clear text kept in a `{CRAM}clear,crypt` string.
pub fn cram_secret(stored: &str) -> Option<&str> {
    let rest = stored.strip_prefix(CRAM_PREFIX)?;
    Some(match rest.rsplit_once(',') {
        Some((clear, _)) => clear,
        None => rest,
    })
}

fn consteq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when `clear` matches the stored `pw_passwd` value.
///
/// Unknown or empty stored forms never match (IndiMail's `*`/`!` locked accounts included).
pub fn verify(stored: &str, clear: &str) -> bool {
    if let Some(rest) = stored.strip_prefix(CRAM_PREFIX) {
        return match rest.rsplit_once(',') {
            Some((kept, crypted)) if !crypted.is_empty() => {
                consteq(kept.as_bytes(), clear.as_bytes()) || verify_crypt(crypted, clear)
            }
            Some((kept, _)) => consteq(kept.as_bytes(), clear.as_bytes()),
            None => consteq(rest.as_bytes(), clear.as_bytes()),
        };
    }
    verify_crypt(stored, clear)
}

fn verify_crypt(stored: &str, clear: &str) -> bool {
    if stored.starts_with("$y$") {
        return yescrypt::Yescrypt::default()
            .verify_password(clear.as_bytes(), stored)
            .is_ok();
    }
    let known = stored.starts_with("$1$")
        || stored.starts_with("$5$")
        || stored.starts_with("$6$")
        || (stored.len() == 13 && stored.bytes().all(|b| CRYPT_ALPHABET.contains(&b)));
    known && pwhash::unix::verify(clear, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_methods_parse() {
        assert_eq!(HashMethod::parse("SHA-512").unwrap(), HashMethod::Sha512);
        assert_eq!(HashMethod::parse("4").unwrap(), HashMethod::Yescrypt);
        assert!(HashMethod::parse("rot13").is_err());
    }

    #[test]
    fn roundtrip_each_scheme() {
        for m in [
            HashMethod::Des,
            HashMethod::Md5,
            HashMethod::Sha256,
            HashMethod::Sha512,
            HashMethod::Yescrypt,
        ] {
            let h = hash(m, "s3cret", None).unwrap();
            assert!(verify(&h, "s3cret"), "{m}: {h}");
            assert!(!verify(&h, "s3creT"), "{m}");
        }
    }

    #[test]
    fn cram_form() {
        let s = stored_form(HashMethod::Md5, "clear", true).unwrap();
        assert!(s.starts_with("{CRAM}clear,$1$"));
        assert_eq!(cram_secret(&s), Some("clear"));
        assert!(verify(&s, "clear"));
        assert!(!verify(&s, "other"));
        assert!(verify("{CRAM}plain", "plain"));
    }

    /// RFC 7677 section 3: "pencil" with salt W22ZaJ0SNY7soEsUEjb6gQ== and 4096 iterations.
    #[test]
    fn scram_sha256_rfc7677_vector() {
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        assert_eq!(
            scram_sha256("pencil", Some(&salt), 4096).unwrap(),
            "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        let a = scram_sha256("pencil", None, SCRAM_DEFAULT_ITERATIONS).unwrap();
        let b = scram_sha256("pencil", None, SCRAM_DEFAULT_ITERATIONS).unwrap();
        assert_ne!(a, b, "random salts");
        assert!(a.starts_with("{SCRAM-SHA-256}4096,"));
        let longest = scram_sha256(
            &"x".repeat(MAX_CLEAR_LEN),
            Some(&[7; SCRAM_MAX_SALT]),
            SCRAM_MAX_ITERATIONS.min(10),
        )
        .unwrap();
        assert!(longest.len() <= MAX_SCRAM_LEN);
        assert!(scram_sha256("pencil", None, 0).is_err());
        assert!(scram_sha256("pencil", Some(b""), 1).is_err());
        assert!(scram_sha256("pencil", Some(&[0; 65]), 1).is_err());
        assert!(scram_sha256("", None, 1).is_err());
    }

    #[test]
    fn refuses_bad_passwords() {
        assert!(matches!(
            hash(HashMethod::Sha256, &"x".repeat(129), None),
            Err(LookupError::PasswordTooLong { .. })
        ));
        assert!(hash(HashMethod::Sha256, "", None).is_err());
        assert!(matches!(
            stored_form(HashMethod::Sha512, &"x".repeat(100), true),
            Err(LookupError::PasswordTooLong { .. })
        ));
        assert!(!verify("*", ""));
        assert!(!verify("", ""));
        assert!(!verify("!locked", "locked"));
    }
}
