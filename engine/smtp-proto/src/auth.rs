//! SMTP AUTH (RFC 4954) pieces the session uses: mechanisms, the secret handed to the driver
//! (redacted in Debug), the driver's verdict, and the decoding of SASL responses for PLAIN
//! (RFC 4616), LOGIN (draft-murchison-sasl-login) and CRAM-MD5 (RFC 2195) and its CRAM-SHA*
//! siblings, which differ only in the digest the driver computes; SCRAM-SHA-256 is in
//! [`scram`].
//!
//! For PLAIN, LOGIN and CRAM the core never verifies a secret: it decodes the exchange and asks
//! the driver, which looks the user up (directory, checkpassword chain) asynchronously. SCRAM
//! interleaves proof and answer (the server-final message is computed from the stored
//! secret), so there the driver supplies the stored secret instead and the core checks the
//! proof, a pure computation; the driver still gives the final verdict (account active, ...).

use std::fmt;

use base64::Engine;

pub(crate) mod scram;

/// A SASL mechanism the session can run. The numbers of [`AuthMechanism::checkpassword_code`]
/// are those IndiMail passes to its checkpassword chain (spec 2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMechanism {
    /// `PLAIN` (RFC 4616): authzid, authcid and password in one response.
    Plain,
    /// `LOGIN`: user name and password in two responses.
    Login,
    /// `CRAM-MD5` (RFC 2195): HMAC-MD5 of the server's challenge.
    CramMd5,
    /// `CRAM-SHA1`.
    CramSha1,
    /// `CRAM-SHA224`.
    CramSha224,
    /// `CRAM-SHA256`.
    CramSha256,
    /// `CRAM-SHA384`.
    CramSha384,
    /// `CRAM-SHA512`.
    CramSha512,
    /// `CRAM-RIPEMD`.
    CramRipemd,
    /// `SCRAM-SHA-256` (RFC 5802, RFC 7677), without channel binding (no `-PLUS`).
    ScramSha256,
}

impl AuthMechanism {
    /// Every mechanism the core runs, in IndiMail's advertising order.
    pub const ALL: [AuthMechanism; 10] = [
        AuthMechanism::Login,
        AuthMechanism::Plain,
        AuthMechanism::CramMd5,
        AuthMechanism::CramSha1,
        AuthMechanism::CramSha224,
        AuthMechanism::CramSha256,
        AuthMechanism::CramSha384,
        AuthMechanism::CramSha512,
        AuthMechanism::CramRipemd,
        AuthMechanism::ScramSha256,
    ];

    /// The registered name, as advertised and as given in `AUTH`.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::CramMd5 => "CRAM-MD5",
            AuthMechanism::CramSha1 => "CRAM-SHA1",
            AuthMechanism::CramSha224 => "CRAM-SHA224",
            AuthMechanism::CramSha256 => "CRAM-SHA256",
            AuthMechanism::CramSha384 => "CRAM-SHA384",
            AuthMechanism::CramSha512 => "CRAM-SHA512",
            AuthMechanism::CramRipemd => "CRAM-RIPEMD",
            AuthMechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism with this name (case-insensitive); `None` for one the core cannot run.
    pub fn from_name(name: &str) -> Option<AuthMechanism> {
        AuthMechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The method byte of IndiMail's checkpassword protocol (LOGIN 1, PLAIN 2, CRAM-MD5 3 ...,
    /// SCRAM-SHA256 12).
    pub fn checkpassword_code(self) -> u8 {
        match self {
            AuthMechanism::Login => 1,
            AuthMechanism::Plain => 2,
            AuthMechanism::CramMd5 => 3,
            AuthMechanism::CramSha1 => 4,
            AuthMechanism::CramSha224 => 5,
            AuthMechanism::CramSha256 => 6,
            AuthMechanism::CramSha384 => 7,
            AuthMechanism::CramSha512 => 8,
            AuthMechanism::CramRipemd => 9,
            AuthMechanism::ScramSha256 => 12,
        }
    }

    /// The password crosses the wire (in base64): offered only under TLS when
    /// [`crate::SessionConfig::auth_plain_needs_tls`] is set (IndiMail's `SECURE_AUTH`).
    pub fn sends_password(self) -> bool {
        matches!(self, AuthMechanism::Plain | AuthMechanism::Login)
    }
}

impl fmt::Display for AuthMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the client proved its identity with, for the driver to check. Its `Debug` output never
/// shows the password or the digest, so events can be logged safely.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthSecret {
    /// The clear-text password (PLAIN, LOGIN).
    Password(String),
    /// A CRAM response: the driver computes HMAC(password, challenge) with the mechanism's hash
    /// and compares it with `digest`.
    CramResponse {
        /// The challenge the session sent, `<random.timestamp@hostname>`.
        challenge: String,
        /// The client's digest, lower-case hex as sent.
        digest: String,
    },
    /// SCRAM: the core checked the client's proof against the stored secret the driver
    /// supplied ([`crate::Session::scram_credentials`]); the driver only decides whether the
    /// account may log in. Nothing secret is left at this point.
    Scram {
        /// Nonce, channel binding and ClientProof all matched (never for a decoy).
        proof_valid: bool,
    },
}

impl fmt::Debug for AuthSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthSecret::Password(_) => f.write_str("Password(<redacted>)"),
            AuthSecret::CramResponse { challenge, .. } => f
                .debug_struct("CramResponse")
                .field("challenge", challenge)
                .field("digest", &"<redacted>")
                .finish(),
            AuthSecret::Scram { proof_valid } => f
                .debug_struct("Scram")
                .field("proof_valid", proof_valid)
                .finish(),
        }
    }
}

/// The driver's verdict on [`crate::Event::Auth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials valid: `235 2.7.0 Authentication successful`.
    Ok,
    /// Credentials invalid: `535 5.7.8 Authentication credentials invalid`; counts towards
    /// [`crate::SessionConfig::max_auth_failures`].
    Failed,
    /// The check could not be made (directory down): `454 4.7.0 Temporary authentication
    /// failure`.
    TempFail,
}

/// A decoded, complete authentication attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub mechanism: AuthMechanism,
    pub authcid: String,
    pub authzid: Option<String>,
    pub secret: AuthSecret,
}

/// Why a SASL response was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SaslError {
    /// `*`: the client gave up.
    Cancelled,
    /// Not base64.
    BadBase64,
    /// Decoded, but not the shape the mechanism needs.
    Malformed,
    /// SCRAM `p=`: channel binding asked for, but no `-PLUS` mechanism is offered.
    ChannelBindingUnsupported,
}

/// Base64 as clients send it: the standard alphabet, padding optional, no whitespace.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub(crate) fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes one response line (initial response or continuation). `=` is the empty response
/// (RFC 4954 section 4), `*` cancels.
pub(crate) fn decode(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"=" | b"" => Ok(Vec::new()),
        _ => B64.decode(line).map_err(|_| SaslError::BadBase64),
    }
}

/// A field that will be handed on (to a checkpassword program, whose input is NUL-separated):
/// UTF-8 without NUL, CR or LF.
fn field(bytes: &[u8]) -> Result<String, SaslError> {
    let s = std::str::from_utf8(bytes).map_err(|_| SaslError::Malformed)?;
    if s.contains(['\0', '\r', '\n']) {
        return Err(SaslError::Malformed);
    }
    Ok(s.to_string())
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
pub(crate) fn plain(data: &[u8]) -> Result<Attempt, SaslError> {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Attempt {
        mechanism: AuthMechanism::Plain,
        authcid: field(authcid)?,
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(field(authzid)?)
        },
        secret: AuthSecret::Password(field(passwd)?),
    })
}

/// LOGIN: the user name response.
pub(crate) fn login_user(data: &[u8]) -> Result<String, SaslError> {
    if data.is_empty() {
        return Err(SaslError::Malformed);
    }
    field(data)
}

/// LOGIN: the password response.
pub(crate) fn login_password(user: String, data: &[u8]) -> Result<Attempt, SaslError> {
    Ok(Attempt {
        mechanism: AuthMechanism::Login,
        authcid: user,
        authzid: None,
        secret: AuthSecret::Password(field(data)?),
    })
}

/// RFC 2195: `user SP hex-digest`; the user name may itself contain spaces.
pub(crate) fn cram(
    mechanism: AuthMechanism,
    challenge: String,
    data: &[u8],
) -> Result<Attempt, SaslError> {
    let text = field(data)?;
    let (user, digest) = text.rsplit_once(' ').ok_or(SaslError::Malformed)?;
    if user.is_empty()
        || digest.is_empty()
        || digest.len() > 128
        || !digest.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(SaslError::Malformed);
    }
    Ok(Attempt {
        mechanism,
        authcid: user.to_string(),
        authzid: None,
        secret: AuthSecret::CramResponse {
            challenge,
            digest: digest.to_ascii_lowercase(),
        },
    })
}

/// splitmix64: spreads the driver's random seed over successive CRAM challenges.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_and_codes() {
        assert_eq!(
            AuthMechanism::from_name("cram-md5"),
            Some(AuthMechanism::CramMd5)
        );
        assert_eq!(AuthMechanism::from_name("SCRAM-SHA-1"), None);
        assert_eq!(AuthMechanism::from_name("SCRAM-SHA-256-PLUS"), None);
        assert_eq!(
            AuthMechanism::from_name("scram-sha-256"),
            Some(AuthMechanism::ScramSha256)
        );
        assert!(!AuthMechanism::ScramSha256.sends_password());
        assert_eq!(AuthMechanism::Plain.checkpassword_code(), 2);
        assert_eq!(AuthMechanism::CramRipemd.checkpassword_code(), 9);
        for m in AuthMechanism::ALL {
            assert_eq!(AuthMechanism::from_name(m.name()), Some(m));
        }
    }

    #[test]
    fn decoding() {
        assert_eq!(decode(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode(b"="), Ok(Vec::new()));
        assert_eq!(decode(b"YWxpY2U="), Ok(b"alice".to_vec()));
        assert_eq!(decode(b"YWxpY2U"), Ok(b"alice".to_vec()));
        assert_eq!(decode(b"YW xp"), Err(SaslError::BadBase64));
        assert_eq!(decode(b"!!!!"), Err(SaslError::BadBase64));
    }

    #[test]
    fn plain_shapes() {
        let a = plain(b"\0alice\0secret").unwrap();
        assert_eq!(a.authcid, "alice");
        assert_eq!(a.authzid, None);
        assert_eq!(a.secret, AuthSecret::Password("secret".into()));
        let a = plain(b"admin\0alice\0pw").unwrap();
        assert_eq!(a.authzid.as_deref(), Some("admin"));
        assert_eq!(plain(b"alice\0secret"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0\0secret"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0a\0b\0c"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0a\xff\0b"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0a\0b\nc"), Err(SaslError::Malformed));
    }

    #[test]
    fn cram_shapes() {
        let a = cram(
            AuthMechanism::CramMd5,
            "<1.2@h>".into(),
            b"tim b913a602c7eda7a495b4e6e7334d3890",
        )
        .unwrap();
        assert_eq!(a.authcid, "tim");
        let a = cram(AuthMechanism::CramMd5, "c".into(), b"joe user ABCDEF").unwrap();
        assert_eq!(a.authcid, "joe user");
        assert_eq!(
            a.secret,
            AuthSecret::CramResponse {
                challenge: "c".into(),
                digest: "abcdef".into()
            }
        );
        assert!(cram(AuthMechanism::CramMd5, "c".into(), b"tim").is_err());
        assert!(cram(AuthMechanism::CramMd5, "c".into(), b"tim xyz").is_err());
        assert!(cram(AuthMechanism::CramMd5, "c".into(), b" abc").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let p = AuthSecret::Password("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        let c = AuthSecret::CramResponse {
            challenge: "<1.2@h>".into(),
            digest: "b913a602".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("<1.2@h>") && !shown.contains("b913a602"),
            "{shown}"
        );
    }
}
