//! DKIM (spec 9.1) with the `mail-auth` crate: signing with keys laid out
//! as IndiMail's `dknewkey` lays them out, key generation, verification.
//!
//! Keys: `control/domainkeys/<domain>/<selector>` holds the private key
//! (PEM: PKCS#1 or PKCS#8 RSA, PKCS#8 Ed25519), `<selector>.pub` the DNS
//! TXT record to publish at `<selector>._domainkey.<domain>`. Which key
//! signs is given by a path template ([`Signer::new`]): `DKIMSIGN` or the
//! default `control/domainkeys/%/default`, `%` replaced by the signing
//! domain, the selector being the key file's name; a missing key file
//! means "do not sign" for that domain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use crate::Error;

/// Header fields signed when present.
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
];

enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

enum Ready {
    Rsa(DkimSigner<RsaKey<Sha256>, mail_auth::dkim::Done>),
    Ed25519(DkimSigner<Ed25519Key, mail_auth::dkim::Done>),
}

/// A signer made from a key file, for one domain.
struct LoadedKey {
    signer: Ready,
    modified: Option<SystemTime>,
}

/// Loads a private key (PEM, PKCS#1 or PKCS#8; RSA or Ed25519).
fn load_key(path: &Path) -> Result<Key, Error> {
    let bad = |problem: String| Error::Key {
        path: path.to_path_buf(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let item = rustls_pemfile::read_one(&mut pem.as_slice())
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no PEM private key found".into()))?;
    match item {
        rustls_pemfile::Item::Pkcs1Key(k) => RsaKey::<Sha256>::from_der(k.secret_pkcs1_der())
            .map(Key::Rsa)
            .map_err(|e| bad(e.to_string())),
        rustls_pemfile::Item::Pkcs8Key(k) => {
            let der = k.secret_pkcs8_der();
            match RsaKey::<Sha256>::from_pkcs8_der(der) {
                Ok(k) => Ok(Key::Rsa(k)),
                Err(rsa) => Ed25519Key::from_pkcs8_maybe_unchecked_der(der)
                    .map(Key::Ed25519)
                    .map_err(|e| {
                        bad(format!(
                            "not a usable RSA key ({rsa}; RSA keys need 2048-4096 bits) nor Ed25519 ({e})"
                        ))
                    }),
            }
        }
        _ => Err(bad("unsupported PEM item (want a private key)".into())),
    }
}

/// How long which key file a domain has (or that it has none) is trusted
/// before the file system is asked again: a relayed message would otherwise
/// cost two `statx` calls, mostly to learn that its domain has no key.
const KEY_RECHECK: Duration = Duration::from_secs(1);
/// Domains remembered at most; past this the memory starts over.
const DOMAINS_REMEMBERED: usize = 4096;

/// What the file system said of one domain's key, and when.
struct KeyFile {
    path: Option<PathBuf>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Signs outgoing mail per domain; keys are read on first use and again
/// when their file changes. Which file a domain has is looked up again at
/// most every [`KEY_RECHECK`], so a key added, replaced or removed takes
/// effect within a second.
pub struct Signer {
    template: String,
    keys: std::cell::RefCell<HashMap<(PathBuf, String), LoadedKey>>,
    files: std::cell::RefCell<HashMap<String, KeyFile>>,
}

impl Signer {
    /// A signer using the key path `template` (`%` = the signing domain).
    pub fn new(template: impl Into<String>) -> Signer {
        Signer {
            template: template.into(),
            keys: Default::default(),
            files: Default::default(),
        }
    }

    /// The signer for a control directory: `DKIMSIGN` when given, else
    /// `<control>/domainkeys/%/default`.
    pub fn from_env(control: &Path, env: &dyn Fn(&str) -> Option<String>) -> Signer {
        let t = env("DKIMSIGN")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| control.join("domainkeys/%/default").display().to_string());
        Signer::new(t)
    }

    /// The key file for `domain`: the template with `%` replaced; when
    /// that file is missing, the template with `%` dropped (spec 9.1).
    fn key_path(&self, domain: &str) -> Option<PathBuf> {
        let domain = domain.to_ascii_lowercase();
        if domain.is_empty() || domain.contains('/') || domain.starts_with('.') {
            return None;
        }
        if !self.template.contains('%') {
            return Some(PathBuf::from(&self.template));
        }
        let p = PathBuf::from(self.template.replace('%', &domain));
        if p.exists() {
            return Some(p);
        }
        let p = PathBuf::from(self.template.replace("%/", "").replace('%', ""));
        p.exists().then_some(p)
    }

    /// The key file of `domain` (lower case) and its modification time, as
    /// looked up at most [`KEY_RECHECK`] ago; `None` when it has none.
    fn key_file(&self, domain: &str) -> Option<(PathBuf, Option<SystemTime>)> {
        let mut files = self.files.borrow_mut();
        if let Some(f) = files.get(domain) {
            if f.checked.elapsed() < KEY_RECHECK {
                return f.path.clone().map(|p| (p, f.modified));
            }
        }
        let path = self.key_path(domain);
        let modified = path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        let path = path.filter(|_| modified.is_some());
        if files.len() >= DOMAINS_REMEMBERED {
            files.clear();
        }
        files.insert(
            domain.to_string(),
            KeyFile {
                path: path.clone(),
                modified,
                checked: Instant::now(),
            },
        );
        path.map(|p| (p, modified))
    }

    /// Forgets every lookup's time, as if [`KEY_RECHECK`] had passed.
    #[cfg(test)]
    fn expire_lookups(&self) {
        for f in self.files.borrow_mut().values_mut() {
            f.checked -= KEY_RECHECK;
        }
    }

    /// The `DKIM-Signature:` header (LF line ends) for `message` (queue
    /// form) signed as `domain`, or `None` when there is no key for it.
    pub fn sign(&self, domain: &str, message: &[u8]) -> Result<Option<String>, Error> {
        let d = domain.to_ascii_lowercase();
        let Some((path, modified)) = self.key_file(&d) else {
            return Ok(None);
        };
        let slot = (path.clone(), d.clone());
        let mut keys = self.keys.borrow_mut();
        let fresh = keys.get(&slot).is_some_and(|k| k.modified == modified);
        if !fresh {
            let selector = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let signer = match load_key(&path)? {
                Key::Rsa(key) => Ready::Rsa(
                    DkimSigner::from_key(key)
                        .domain(&d)
                        .selector(&selector)
                        .headers(SIGNED_HEADERS),
                ),
                Key::Ed25519(key) => Ready::Ed25519(
                    DkimSigner::from_key(key)
                        .domain(&d)
                        .selector(&selector)
                        .headers(SIGNED_HEADERS),
                ),
            };
            keys.insert(slot.clone(), LoadedKey { signer, modified });
        }
        let k = keys.get(&slot).expect("inserted above");
        let sig = match &k.signer {
            Ready::Rsa(s) => s.sign(message),
            Ready::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| Error::Sign(e.to_string()))?;
        Ok(Some(sig.to_header().replace("\r\n", "\n")))
    }
}

/// The unfolded value of the first `name` field in the header block.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let mut lines = message.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        if line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        {
            let mut v = String::from_utf8_lossy(&line[name.len() + 1..])
                .trim()
                .to_string();
            while let Some(next) = lines.peek() {
                if matches!(next.first(), Some(b' ' | b'\t')) {
                    let n = lines.next().unwrap_or_default();
                    v.push(' ');
                    v.push_str(String::from_utf8_lossy(n).trim());
                } else {
                    break;
                }
            }
            return Some(v);
        }
    }
    None
}

/// The domain of the `From:` header's (first) address.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let v = header_value(message, "From")?;
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split([',', ' ']).find(|w| w.contains('@'))?,
    };
    let d = addr.rsplit_once('@')?.1.trim().trim_end_matches('>');
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

/// Key algorithm for [`keygen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// rsa-sha256 with a key of this many bits (2048-4096: the signing
    /// library refuses smaller keys, so IndiMail's 1024-bit default is
    /// not followed).
    Rsa(u32),
    /// ed25519-sha256.
    Ed25519,
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Creates `<control>/domainkeys/<domain>/<selector>` (mode 0640) and
/// `<selector>.pub`, like IndiMail's `dknewkey`; returns the key path and
/// the DNS TXT record for `<selector>._domainkey.<domain>`. RSA keys are
/// made by `openssl` (as dknewkey does), Ed25519 keys with `ring`. An
/// existing key is never overwritten.
pub fn keygen(
    control: &Path,
    domain: &str,
    selector: &str,
    kind: KeyType,
) -> Result<(PathBuf, String), Error> {
    use base64::Engine;
    use std::os::unix::fs::OpenOptionsExt;
    let domain = domain.to_ascii_lowercase();
    let dir = control.join("domainkeys").join(&domain);
    let path = dir.join(selector);
    let bad = |problem: String| Error::Key {
        path: path.clone(),
        problem,
    };
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid(&domain) || !valid(selector) {
        return Err(bad("domain and selector must be plain DNS labels".into()));
    }
    if path.exists() {
        return Err(bad("exists; remove it first to make a new key".into()));
    }
    std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
    let (private_pem, record) = match kind {
        KeyType::Ed25519 => {
            use ring::signature::KeyPair;
            let rng = ring::rand::SystemRandom::new();
            let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| bad(e.to_string()))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(der.as_ref())
                .map_err(|e| bad(e.to_string()))?;
            let p = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
            (
                pem("PRIVATE KEY", der.as_ref()),
                format!("v=DKIM1; k=ed25519; p={p}"),
            )
        }
        KeyType::Rsa(bits) => {
            let run = |args: &[&str], input: Option<&[u8]>| -> Result<Vec<u8>, Error> {
                use std::io::Write;
                let mut child = std::process::Command::new("openssl")
                    .args(args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| bad(format!("cannot run openssl: {e}")))?;
                if let (Some(i), Some(mut stdin)) = (input, child.stdin.take()) {
                    stdin.write_all(i).map_err(|e| bad(e.to_string()))?;
                }
                let out = child.wait_with_output().map_err(|e| bad(e.to_string()))?;
                if !out.status.success() {
                    return Err(bad(format!(
                        "openssl {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                Ok(out.stdout)
            };
            let bits_opt = format!("rsa_keygen_bits:{bits}");
            let private = run(
                &["genpkey", "-algorithm", "RSA", "-pkeyopt", &bits_opt],
                None,
            )?;
            let public = run(&["pkey", "-pubout", "-outform", "DER"], Some(&private))?;
            let p = base64::engine::general_purpose::STANDARD.encode(public);
            (
                String::from_utf8_lossy(&private).into_owned(),
                format!("v=DKIM1; k=rsa; h=sha256; p={p}"),
            )
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)
        .map_err(|e| bad(e.to_string()))?;
    std::io::Write::write_all(&mut f, private_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let pubfile = dir.join(format!("{selector}.pub"));
    std::fs::write(&pubfile, format!("{record}\n")).map_err(|e| bad(e.to_string()))?;
    // Check the key we wrote loads.
    load_key(&path)?;
    Ok((path, record))
}

/// What checking an incoming message's DKIM signatures found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The `Authentication-Results:` header, LF line ends.
    pub header: String,
    /// The result as the letter of IndiMail's `DKIMVERIFY` set (spec
    /// 9.1): `A` a signature verified, `S` no signatures, `T` no valid
    /// signature, `U` body hash mismatch; `None` when a DNS failure left
    /// the answer open (never a reason to refuse).
    pub code: Option<char>,
}

/// What `DKIMVERIFY` (the letter set) says about a result letter: `None`
/// accept, `Some(true)` permanent refusal (the letter is in the set in
/// upper case), `Some(false)` temporary refusal (in lower case).
pub fn verify_action(letters: &str, code: Option<char>) -> Option<bool> {
    let c = code?;
    if letters.contains(c.to_ascii_uppercase()) {
        Some(true)
    } else if letters.contains(c.to_ascii_lowercase()) {
        Some(false)
    } else {
        None
    }
}

/// Checks the DKIM signatures of an incoming `message` (as received, CRLF
/// or LF line ends) and its DMARC policy over DNS, and makes the
/// `Authentication-Results:` header naming `hostname`: `dkim=`, `spf=`
/// (the result found at MAIL: `spf` = result word and MAIL FROM address)
/// and `dmarc=` (alignment with the `From:` domain; organizational domain
/// = the domain itself, no public suffix list). DMARC is reported, not
/// enforced.
pub async fn verify(
    resolver: Option<&hickory_resolver::TokioAsyncResolver>,
    hostname: &str,
    message: &[u8],
    spf: Option<(&str, &str)>,
) -> Verification {
    use mail_auth::{DkimResult, Error as AuthError};
    let mut code = Some('S');
    let mut text = String::new();
    let parsed = mail_auth::AuthenticatedMessage::parse(message);
    let mailfrom = spf
        .map(|(_, f)| f.replace(['\n', '\r', ';', ' '], ""))
        .unwrap_or_default();
    let mailfrom_domain = mailfrom
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
    match (resolver, parsed) {
        (Some(resolver), Some(msg)) => {
            let auth = mail_auth::MessageAuthenticator(resolver.clone());
            let results = if msg.dkim_headers.is_empty() {
                Vec::new()
            } else {
                auth.verify_dkim(&msg).await
            };
            // A body that does not match its hash is a failed signature
            // (RFC 6376 6.1.3: PERMFAIL), not a neutral one.
            let results: Vec<_> = results
                .iter()
                .map(|r| match (r.result(), r.signature()) {
                    (DkimResult::Neutral(AuthError::FailedBodyHashMatch), Some(sig)) => {
                        mail_auth::DkimOutput::fail(AuthError::FailedBodyHashMatch)
                            .with_signature(sig)
                    }
                    _ => r.clone(),
                })
                .collect();
            let from = from_domain(message).unwrap_or_default();
            if !results.is_empty() {
                code = if results.iter().any(|r| r.result() == &DkimResult::Pass) {
                    Some('A')
                } else if results
                    .iter()
                    .any(|r| matches!(r.result(), DkimResult::TempError(_)))
                {
                    None
                } else if results
                    .iter()
                    .any(|r| matches!(r.result(), DkimResult::Fail(AuthError::FailedBodyHashMatch)))
                {
                    Some('U')
                } else {
                    Some('T')
                };
            }
            let spf_result = match spf.map(|(r, _)| r) {
                Some("pass") => mail_auth::SpfResult::Pass,
                Some("fail") => mail_auth::SpfResult::Fail,
                Some("softfail") => mail_auth::SpfResult::SoftFail,
                Some("neutral") => mail_auth::SpfResult::Neutral,
                Some("temperror") => mail_auth::SpfResult::TempError,
                Some("permerror") => mail_auth::SpfResult::PermError,
                _ => mail_auth::SpfResult::None,
            };
            let spf_output =
                mail_auth::SpfOutput::new(mailfrom_domain.clone()).with_result(spf_result);
            let dmarc = auth
                .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
                    &msg,
                    &results,
                    &mailfrom_domain,
                    &spf_output,
                ))
                .await;
            // The domain publishes DMARC but neither SPF nor DKIM passed:
            // that is a failure (RFC 7489 6.6.2), which mail-auth reports
            // as "none".
            let dmarc = if dmarc.dmarc_record().is_some()
                && dmarc.spf_result() == &mail_auth::DmarcResult::None
                && dmarc.dkim_result() == &mail_auth::DmarcResult::None
            {
                dmarc.with_spf_result(mail_auth::DmarcResult::Fail(AuthError::NotAligned))
            } else {
                dmarc
            };
            let mut ar = mail_auth::AuthenticationResults::new(hostname);
            if !results.is_empty() {
                ar = ar.with_dkim_results(&results, &from);
            }
            if !from.is_empty() {
                ar = ar.with_dmarc_result(&dmarc);
            }
            text = ar.to_header();
            if results.is_empty() {
                text = text.replacen(
                    &format!("Authentication-Results: {hostname}"),
                    &format!("Authentication-Results: {hostname};\r\n\tdkim=none"),
                    1,
                );
            }
        }
        (None, Some(msg)) if !msg.dkim_headers.is_empty() => {
            code = None;
            text = format!(
                "Authentication-Results: {hostname};\r\n\tdkim=temperror (no resolver)\r\n"
            );
        }
        (_, None) => code = Some('T'),
        _ => {}
    }
    if text.is_empty() {
        text = format!("Authentication-Results: {hostname};\r\n\tdkim=none\r\n");
    }
    let mut text = text.trim_end().replace("\r\n", "\n").replace("; none", "");
    if let Some((result, _)) = spf {
        text.push_str(&format!(";\n\tspf={result} smtp.mailfrom={mailfrom}"));
    }
    text.push('\n');
    Verification { header: text, code }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_forms() {
        assert_eq!(
            from_domain(b"Subject: x\nFrom: \"A B\" <a@Example.TEST>\n\nb").as_deref(),
            Some("example.test")
        );
        assert_eq!(
            from_domain(b"From: a@x.test\n\nb").as_deref(),
            Some("x.test")
        );
        assert_eq!(from_domain(b"Subject: x\n\nFrom: a@x.test\n"), None);
    }

    #[test]
    fn a_new_key_signs_once_the_lookup_is_due_again() {
        let d = tempfile::tempdir().unwrap();
        let s = Signer::new(d.path().join("domainkeys/%/ed").display().to_string());
        let msg = b"From: a@example.test\nSubject: hi\n\nbody\n";
        assert_eq!(s.sign("example.test", msg).unwrap(), None);
        keygen(d.path(), "example.test", "ed", KeyType::Ed25519).unwrap();
        assert_eq!(
            s.sign("Example.test", msg).unwrap(),
            None,
            "within a second the answer is remembered"
        );
        s.expire_lookups();
        let h = s.sign("example.test", msg).unwrap().unwrap();
        assert!(h.contains("d=example.test"), "{h}");
        std::fs::remove_file(d.path().join("domainkeys/example.test/ed")).unwrap();
        s.expire_lookups();
        assert_eq!(
            s.sign("example.test", msg).unwrap(),
            None,
            "a removed key stops signing"
        );
    }

    #[test]
    fn ed25519_and_rsa_keys_sign() {
        let d = tempfile::tempdir().unwrap();
        let (p, rec) = keygen(d.path(), "Example.test", "ed", KeyType::Ed25519).unwrap();
        assert!(rec.starts_with("v=DKIM1; k=ed25519; p="));
        assert!(p.ends_with("domainkeys/example.test/ed"));
        assert!(keygen(d.path(), "example.test", "ed", KeyType::Ed25519).is_err());
        let msg = b"From: a@example.test\nTo: b@x.test\nSubject: hi\n\nbody\n";
        let s = Signer::new(d.path().join("domainkeys/%/ed").display().to_string());
        let h = s.sign("example.test", msg).unwrap().unwrap();
        assert!(h.starts_with("DKIM-Signature:"), "{h}");
        assert!(
            h.contains("a=ed25519-sha256") && h.contains("s=ed") && h.contains("d=example.test")
        );
        assert!(!h.contains('\r'));
        assert_eq!(s.sign("other.test", msg).unwrap(), None);
        if std::path::Path::new("/usr/bin/openssl").exists() {
            let (_, rec) = keygen(d.path(), "example.test", "default", KeyType::Rsa(2048)).unwrap();
            assert!(rec.starts_with("v=DKIM1; k=rsa; h=sha256; p="));
            let s = Signer::from_env(d.path(), &|_| None);
            let h = s.sign("example.test", msg).unwrap().unwrap();
            assert!(h.contains("a=rsa-sha256") && h.contains("s=default"), "{h}");
        }
    }
}
