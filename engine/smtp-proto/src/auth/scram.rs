//! SCRAM-SHA-256 (RFC 5802 with the SHA-256 of RFC 7677), server side, without channel
//! binding: the `-PLUS` variant is not offered, so the client's GS2 flag must be `n` (no
//! channel binding) or `y` (client could bind but believes the server cannot, which is true
//! here); `p=` is refused.
//!
//! The exchange, as [`crate::Session`] runs it:
//! 1. client-first `gs2-header client-first-bare`, parsed by [`client_first`];
//! 2. the driver looks the user's [`ScramCredentials`] up (a [`ScramCredentials::decoy`] for
//!    an unknown user or one without a SCRAM secret, so that the answer does not tell who
//!    exists, as RFC 5802 section 9 suggests) and supplies a random server nonce; the session
//!    sends server-first ([`server_first`]);
//! 3. client-final, parsed by [`client_final`] and checked by [`verify`]: the channel-binding
//!    attribute, the combined nonce, and the ClientProof against StoredKey in constant time;
//! 4. when the proof is good, the server-final `v=ServerSignature` goes out as a `334`
//!    challenge that the client answers with an empty line (RFC 4954 has no "additional data
//!    with success"; Postfix with Cyrus SASL and others do the same), and only then is the
//!    driver asked for its verdict.
//!
//! The server never needs the password, nor PBKDF2: the directory keeps StoredKey and
//! ServerKey (IndiMail's `scram` column). SASLprep is not applied to user names (they are
//! looked up as the driver normalises them); clients apply it to passwords, which is the
//! identity for ASCII passwords.

use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{SaslError, B64};

type HmacSha256 = Hmac<Sha256>;

/// Marker of a SCRAM-SHA-256 secret in IndiMail's `scram` column.
pub const SCRAM_SHA256_PREFIX: &str = "{SCRAM-SHA-256}";

/// Iteration count of [`ScramCredentials::decoy`] when the driver has no better value:
/// IndiMail's default (`vadduser -m SCRAM-SHA-256` without `-I`) and RFC 7677's minimum.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Longest salt accepted from the directory (IndiMail's column is char(255)).
const MAX_SALT: usize = 128;

/// A user's stored SCRAM-SHA-256 secret: iteration count, salt, StoredKey and ServerKey
/// (RFC 5802 section 3). Its `Debug` output shows neither key.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
    /// Made up for a user without a secret: never verifies.
    decoy: bool,
}

/// Why a `scram` column value was not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramSecretError {
    /// Not a `{SCRAM-SHA-256}` secret (e.g. `{SCRAM-SHA-1}`, which this server does not run).
    #[error("not a {SCRAM_SHA256_PREFIX} secret")]
    NotScramSha256,
    /// The right marker, but not `iter,salt,StoredKey,ServerKey`.
    #[error("malformed SCRAM-SHA-256 secret: {0}")]
    Malformed(&'static str),
}

impl ScramCredentials {
    /// Parses IndiMail's `scram` column:
    /// `{SCRAM-SHA-256}<iter>,<b64 salt>,<b64 StoredKey>,<b64 ServerKey>`, optionally followed
    /// by `:<hex salted password>:<clear>` (`vadduser -C`), which is ignored.
    pub fn parse(column: &str) -> Result<ScramCredentials, ScramSecretError> {
        let t = column.trim();
        let rest = t
            .get(..SCRAM_SHA256_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(SCRAM_SHA256_PREFIX))
            .map(|_| &t[SCRAM_SHA256_PREFIX.len()..])
            .ok_or(ScramSecretError::NotScramSha256)?;
        let keys = rest.split(':').next().unwrap_or(rest);
        let mut f = keys.split(',');
        let (Some(iter), Some(salt), Some(stored), Some(server), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(ScramSecretError::Malformed(
                "expected iter,salt,StoredKey,ServerKey",
            ));
        };
        let iterations = iter
            .parse::<u32>()
            .ok()
            .filter(|&i| i > 0)
            .ok_or(ScramSecretError::Malformed("bad iteration count"))?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= MAX_SALT)
            .ok_or(ScramSecretError::Malformed("bad salt"))?;
        let key = |s: &str| -> Option<[u8; 32]> { B64.decode(s).ok()?.try_into().ok() };
        let stored_key = key(stored).ok_or(ScramSecretError::Malformed("bad StoredKey"))?;
        let server_key = key(server).ok_or(ScramSecretError::Malformed("bad ServerKey"))?;
        Ok(ScramCredentials {
            iterations,
            salt,
            stored_key,
            server_key,
            decoy: false,
        })
    }

    /// Credentials from their parts (StoredKey = H(ClientKey), ServerKey = HMAC(SaltedPassword,
    /// "Server Key")). `iterations` of 0 is taken as 1.
    pub fn from_keys(
        iterations: u32,
        salt: &[u8],
        stored_key: [u8; 32],
        server_key: [u8; 32],
    ) -> ScramCredentials {
        ScramCredentials {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            stored_key,
            server_key,
            decoy: false,
        }
    }

    /// Made-up credentials for `authcid` when the directory has none (unknown user, or no
    /// SCRAM secret stored): the exchange then runs as for a real user and fails with 535 at
    /// the end. The salt and keys are derived from `key`, a secret of the server, and the user
    /// name, so that asking twice gives the same salt, as it would for a real user.
    pub fn decoy(authcid: &str, key: &[u8], iterations: u32) -> ScramCredentials {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut m =
                <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
            m.update(label);
            m.update(authcid.as_bytes());
            m.finalize().into_bytes().into()
        };
        ScramCredentials {
            iterations: iterations.max(1),
            salt: derive(b"scram-decoy-salt\0")[..16].to_vec(),
            stored_key: derive(b"scram-decoy-stored\0"),
            server_key: derive(b"scram-decoy-server\0"),
            decoy: true,
        }
    }

    /// The iteration count sent in server-first.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt sent (in base64) in server-first.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// A parsed client-first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientFirst {
    /// `gs2-header` exactly as sent (`n,,` or `y,,` with an optional `a=`): the client-final
    /// `c=` attribute must be its base64.
    pub gs2_header: String,
    /// The authorization identity (`a=`), decoded.
    pub authzid: Option<String>,
    /// The user name (`n=`), decoded.
    pub username: String,
    /// The client nonce (`r=`).
    pub nonce: String,
    /// `client-first-message-bare`, the first part of AuthMessage.
    pub bare: String,
}

/// A parsed client-final message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientFinal {
    /// The decoded `c=` attribute.
    pub channel_binding: Vec<u8>,
    /// The combined nonce (`r=`).
    pub nonce: String,
    /// `client-final-message-without-proof`, the last part of AuthMessage.
    pub without_proof: String,
    /// The decoded `p=` attribute.
    pub proof: [u8; 32],
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802 section 7): a nonce character.
fn printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

/// A nonce the driver may send: printable, non-empty, not absurdly long.
pub(crate) fn valid_server_nonce(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.len() <= 256 && nonce.bytes().all(printable)
}

/// `saslname`: `,` and `=` are escaped as `=2C` and `=3D`; any other `=` is an error. NUL,
/// CR and LF are refused too (the name goes into logs and lookups).
fn saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") | Some("=2c") => out.push(','),
            Some("=3D") | Some("=3d") => out.push('='),
            _ => return Err(SaslError::Malformed),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() || out.contains(['\0', '\r', '\n']) {
        return Err(SaslError::Malformed);
    }
    Ok(out)
}

/// An optional extension attribute `attr-val`: a letter, `=`, anything. Unknown ones are
/// ignored (RFC 5802 section 5.1).
fn extension(a: &str) -> Result<(), SaslError> {
    let b = a.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'=' {
        Ok(())
    } else {
        Err(SaslError::Malformed)
    }
}

/// Parses `gs2-header client-first-message-bare`.
pub(crate) fn client_first(data: &[u8]) -> Result<ClientFirst, SaslError> {
    let text = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    let (flag, rest) = text.split_once(',').ok_or(SaslError::Malformed)?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(SaslError::ChannelBindingUnsupported),
        _ => return Err(SaslError::Malformed),
    }
    let (authzid, bare) = rest.split_once(',').ok_or(SaslError::Malformed)?;
    let authzid = match authzid {
        "" => None,
        a => Some(saslname(a.strip_prefix("a=").ok_or(SaslError::Malformed)?)?),
    };
    let gs2_header = text[..text.len() - bare.len()].to_string();
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or("");
    // `m=` is a mandatory extension this server does not know: it must fail.
    let username = saslname(user.strip_prefix("n=").ok_or(SaslError::Malformed)?)?;
    let nonce = nonce_then_extensions(&mut attrs)?;
    Ok(ClientFirst {
        gs2_header,
        authzid,
        username,
        nonce: nonce.to_string(),
        bare: bare.to_string(),
    })
}

/// The `r=` attribute next in `attrs` (printable, not empty), then only extensions this
/// server may ignore.
fn nonce_then_extensions<'a>(attrs: &mut std::str::Split<'a, char>) -> Result<&'a str, SaslError> {
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(printable))
        .ok_or(SaslError::Malformed)?;
    attrs.try_for_each(extension)?;
    Ok(nonce)
}

/// `server-first-message`: `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
pub(crate) fn server_first(nonce: &str, creds: &ScramCredentials) -> String {
    format!(
        "r={nonce},s={},i={}",
        base64::engine::general_purpose::STANDARD.encode(&creds.salt),
        creds.iterations
    )
}

/// Parses `channel-binding "," nonce ["," extensions] "," proof`.
pub(crate) fn client_final(data: &[u8]) -> Result<ClientFinal, SaslError> {
    let text = std::str::from_utf8(data).map_err(|_| SaslError::Malformed)?;
    // The proof is the last attribute.
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
    let proof: [u8; 32] = B64
        .decode(proof)
        .map_err(|_| SaslError::Malformed)?
        .try_into()
        .map_err(|_| SaslError::Malformed)?;
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(SaslError::Malformed)
        .and_then(|c| B64.decode(c).map_err(|_| SaslError::Malformed))?;
    let nonce = nonce_then_extensions(&mut attrs)?;
    Ok(ClientFinal {
        channel_binding,
        nonce: nonce.to_string(),
        without_proof: without_proof.to_string(),
        proof,
    })
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Nonce, channel binding and proof all check out (never for a decoy).
    pub valid: bool,
    /// `server-final-message` to send when valid: `v=<ServerSignature>`.
    pub server_final: String,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Checks client-final against client-first, our server-first and the stored secret
/// (RFC 5802 section 3): ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage) must hash to
/// StoredKey. The comparison runs in constant time; the work is the same for a decoy.
pub(crate) fn verify(
    creds: &ScramCredentials,
    first: &ClientFirst,
    server_first: &str,
    nonce: &str,
    fin: &ClientFinal,
) -> Verdict {
    let auth_message = format!("{},{server_first},{}", first.bare, fin.without_proof);
    let client_signature = hmac(&creds.stored_key, auth_message.as_bytes());
    let mut client_key = fin.proof;
    for (k, s) in client_key.iter_mut().zip(client_signature) {
        *k ^= s;
    }
    let stored: [u8; 32] = Sha256::digest(client_key).into();
    let proof_ok: bool = stored.ct_eq(&creds.stored_key).into();
    let server_signature = hmac(&creds.server_key, auth_message.as_bytes());
    let valid = proof_ok
        && !creds.decoy
        && fin.nonce == nonce
        && fin.channel_binding == first.gs2_header.as_bytes();
    Verdict {
        valid,
        server_final: format!(
            "v={}",
            base64::engine::general_purpose::STANDARD.encode(server_signature)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil".
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    /// What `vadduser -m SCRAM-SHA-256` stores for "pencil" with the RFC's salt, derived here
    /// as a client would (PBKDF2-HMAC-SHA-256).
    fn rfc_credentials() -> ScramCredentials {
        let salt = B64.decode(SALT).unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, 4096, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        ScramCredentials::from_keys(4096, &salt, stored, hmac(&salted, b"Server Key"))
    }

    #[test]
    fn rfc7677_test_vector() {
        let creds = rfc_credentials();
        let e = base64::engine::general_purpose::STANDARD;
        let column = format!(
            "{SCRAM_SHA256_PREFIX}4096,{SALT},{},{}",
            e.encode(creds.stored_key),
            e.encode(creds.server_key)
        );
        assert_eq!(
            column,
            "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        assert_eq!(ScramCredentials::parse(&column).unwrap(), creds);

        let first = client_first(CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(first.gs2_header, "n,,");
        assert_eq!(first.username, "user");
        assert_eq!(first.authzid, None);
        let nonce = format!("{}{SERVER_NONCE}", first.nonce);
        let sf = server_first(&nonce, &creds);
        assert_eq!(sf, SERVER_FIRST);
        let fin = client_final(CLIENT_FINAL.as_bytes()).unwrap();
        let v = verify(&creds, &first, &sf, &nonce, &fin);
        assert!(v.valid);
        assert_eq!(v.server_final, SERVER_FINAL);

        // One bit off in the proof, a different nonce, or a decoy: refused.
        let mut bad = fin.clone();
        bad.proof[0] ^= 1;
        assert!(!verify(&creds, &first, &sf, &nonce, &bad).valid);
        assert!(!verify(&creds, &first, &sf, &format!("{nonce}x"), &fin).valid);
        let mut decoy = creds.clone();
        decoy.decoy = true;
        assert!(!verify(&decoy, &first, &sf, &nonce, &fin).valid);
        // Channel-binding data that is not the gs2 header.
        let y = client_first(b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert!(!verify(&creds, &y, &sf, &nonce, &fin).valid);
    }

    #[test]
    fn column_forms() {
        let c = "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        assert!(ScramCredentials::parse(&format!("{c}:00ff:pencil")).is_ok());
        assert_eq!(
            ScramCredentials::parse("{SCRAM-SHA-1}4096,a,b,c"),
            Err(ScramSecretError::NotScramSha256)
        );
        assert_eq!(
            ScramCredentials::parse(""),
            Err(ScramSecretError::NotScramSha256)
        );
        for bad in [
            "{SCRAM-SHA-256}",
            "{SCRAM-SHA-256}4096,c2FsdA==,AAAA",
            "{SCRAM-SHA-256}0,c2FsdA==,AAAA,AAAA",
            "{SCRAM-SHA-256}x,c2FsdA==,AAAA,AAAA",
            "{SCRAM-SHA-256}4096,,AAAA,AAAA",
            "{SCRAM-SHA-256}4096,c2FsdA==,AAAA,AAAA",
            "{SCRAM-SHA-256}4096,c2FsdA==,!!,AAAA",
        ] {
            assert!(
                matches!(
                    ScramCredentials::parse(bad),
                    Err(ScramSecretError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(!format!("{:?}", rfc_credentials()).contains("WG5d"));
    }

    #[test]
    fn client_first_shapes() {
        let f = client_first(b"y,a=ad=3Dmin=2C,n=jo=2Ce,r=abc,x=ext").unwrap();
        assert_eq!(f.gs2_header, "y,a=ad=3Dmin=2C,");
        assert_eq!(f.authzid.as_deref(), Some("ad=min,"));
        assert_eq!(f.username, "jo,e");
        assert_eq!(f.bare, "n=jo=2Ce,r=abc,x=ext");
        assert_eq!(
            client_first(b"p=tls-exporter,,n=u,r=abc"),
            Err(SaslError::ChannelBindingUnsupported)
        );
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"q,,n=u,r=abc",
            b"n,,n=u",
            b"n,,n=u,r=",
            b"n,,n=,r=abc",
            b"n,,r=abc,n=u",
            b"n,,m=ext,n=u,r=abc",
            b"n,,n=u=41,r=abc",
            b"n,,n=u,r=a b",
            b"n,,n=u,r=abc,junk",
            b"n,x=y,n=u,r=abc",
            b"n,,n=u\xff,r=abc",
            b"n,,n=u\0,r=abc",
        ] {
            assert_eq!(
                client_first(bad),
                Err(SaslError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn client_final_shapes() {
        let p = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let f = client_final(format!("c=biws,r=abc,e=x,p={p}").as_bytes()).unwrap();
        assert_eq!(f.channel_binding, b"n,,");
        assert_eq!(f.without_proof, "c=biws,r=abc,e=x");
        for bad in [
            String::new(),
            "c=biws,r=abc".to_string(),
            format!("r=abc,c=biws,p={p}"),
            format!("c=biws,p={p}"),
            format!("c=bi!s,r=abc,p={p}"),
            "c=biws,r=abc,p=AAAA".to_string(),
            "c=biws,r=abc,p=!!!!".to_string(),
            format!("c=biws,r=abc,p={p},x=y"),
        ] {
            assert_eq!(
                client_final(bad.as_bytes()),
                Err(SaslError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn decoys_are_stable_per_user_and_never_verify() {
        let a = ScramCredentials::decoy("ghost@example.com", b"k", 4096);
        assert_eq!(a, ScramCredentials::decoy("ghost@example.com", b"k", 4096));
        assert_ne!(
            a.salt,
            ScramCredentials::decoy("other@example.com", b"k", 4096).salt
        );
        assert_ne!(
            a.salt,
            ScramCredentials::decoy("ghost@example.com", b"j", 4096).salt
        );
        assert_eq!((a.iterations(), a.salt().len()), (4096, 16));
        assert!(valid_server_nonce("abc+/="));
        assert!(!valid_server_nonce(""));
        assert!(!valid_server_nonce("a,b"));
        assert!(!valid_server_nonce("a b"));
    }
}
