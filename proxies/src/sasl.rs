//! SASL PLAIN (RFC 4616) decoding shared by the IMAP and POP3 login cores.

use base64::Engine as _;

/// Why a PLAIN response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlainError {
    /// Not valid base64 (RFC 4648).
    #[error("invalid base64")]
    Base64,
    /// Not `authzid NUL authcid NUL passwd`, or not UTF-8.
    #[error("malformed PLAIN message")]
    Malformed,
    /// An authorization identity other than the authentication identity: the proxies log in
    /// to the mailstore as the user itself, so acting for someone else cannot be honoured.
    #[error("authorization identity not supported")]
    Authzid,
}

/// Decode a base64 PLAIN response into `(user, password)`. `=` is the empty response
/// (RFC 4959), which is malformed for PLAIN.
pub(crate) fn decode_plain(b64: &[u8]) -> Result<(String, String), PlainError> {
    let b64 = b64.trim_ascii();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| PlainError::Base64)?;
    let mut it = raw.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(PlainError::Malformed);
    };
    if user.is_empty() || pass.is_empty() {
        return Err(PlainError::Malformed);
    }
    if !authz.is_empty() && authz != user {
        return Err(PlainError::Authzid);
    }
    let user = String::from_utf8(user.to_vec()).map_err(|_| PlainError::Malformed)?;
    let pass = String::from_utf8(pass.to_vec()).map_err(|_| PlainError::Malformed)?;
    Ok((user, pass))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(s)
            .into_bytes()
    }

    #[test]
    fn plain_forms() {
        assert_eq!(
            decode_plain(&b64(b"\0amy@example.com\0secret")).unwrap(),
            ("amy@example.com".into(), "secret".into())
        );
        assert_eq!(
            decode_plain(&b64(b"amy@example.com\0amy@example.com\0pw")).unwrap(),
            ("amy@example.com".into(), "pw".into())
        );
        assert_eq!(
            decode_plain(&b64(b"boss\0amy\0pw")),
            Err(PlainError::Authzid)
        );
        assert_eq!(decode_plain(&b64(b"\0amy")), Err(PlainError::Malformed));
        assert_eq!(decode_plain(&b64(b"\0amy\0")), Err(PlainError::Malformed));
        assert_eq!(decode_plain(&b64(b"\0a\0b\0c")), Err(PlainError::Malformed));
        assert_eq!(decode_plain(b"!!!"), Err(PlainError::Base64));
        assert_eq!(decode_plain(b"="), Err(PlainError::Base64));
    }
}
