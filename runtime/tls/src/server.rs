//! The server certificate, as IndiMail keeps it, loaded into a rustls `ServerConfig` and
//! reloaded when its files change; and the self-signed demo certificate.
//!
//! Files (spec 2.12): `servercert.pem` in `CERTDIR` (environment; the installer sets
//! `/etc/indimail/certs`), falling back to the control directory as the original code does;
//! `SERVERCERT` names the file directly. The file holds the certificate chain (end entity first)
//! and normally the private key too. When it holds no key, the key is read from `serverkey.pem`
//! beside it. Keys may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, SupportedProtocolVersion};

use crate::TlsError;

/// File name of the server certificate (and usually its key).
pub const SERVERCERT: &str = "servercert.pem";
/// File name of the key when `servercert.pem` holds none.
pub const SERVERKEY: &str = "serverkey.pem";

/// Which TLS versions to offer. Never anything below 1.2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2; the highest both sides support is used (IndiMail's default).
    #[default]
    Both,
    /// TLS 1.2 only (for old peers or tests).
    Tls12Only,
    /// TLS 1.3 only.
    Tls13Only,
}

impl TlsVersions {
    pub(crate) fn list(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static V12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static V13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersions::Both => &BOTH,
            TlsVersions::Tls12Only => &V12,
            TlsVersions::Tls13Only => &V13,
        }
    }
}

/// Settings of a [`CertStore`] beyond the files.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Versions offered.
    pub versions: TlsVersions,
    /// How often, at most, the files' metadata is checked for a change. A check is a couple of
    /// `stat(2)` calls, done by the caller of [`CertStore::config`] when due.
    pub check_interval: Duration,
    /// ALPN protocols offered, in preference order (empty: no ALPN, the usual for mail).
    pub alpn: Vec<Vec<u8>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            versions: TlsVersions::Both,
            check_interval: Duration::from_secs(5),
            alpn: Vec::new(),
        }
    }
}

/// Where the certificate and key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate chain file (`servercert.pem`).
    pub cert: PathBuf,
    /// The key file when given explicitly; `None`: the key in `cert`, else `serverkey.pem`
    /// beside it.
    pub key: Option<PathBuf>,
}

impl CertPaths {
    /// `servercert.pem` in `dir`, key inside it or in `serverkey.pem` beside it.
    pub fn in_dir(dir: impl AsRef<Path>) -> CertPaths {
        CertPaths {
            cert: dir.as_ref().join(SERVERCERT),
            key: None,
        }
    }

    /// IndiMail's lookup: `SERVERCERT` if set, else `servercert.pem` in `CERTDIR` if set, else
    /// in `control_dir`.
    pub fn from_env(control_dir: impl AsRef<Path>) -> CertPaths {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        CertPaths::resolve(var("CERTDIR"), var("SERVERCERT"), control_dir.as_ref())
    }

    /// [`CertPaths::from_env`] with the variables passed in (for tests and callers that read
    /// the environment themselves).
    pub fn resolve(
        certdir: Option<PathBuf>,
        servercert: Option<PathBuf>,
        control_dir: &Path,
    ) -> CertPaths {
        match (servercert, certdir) {
            (Some(cert), _) => CertPaths { cert, key: None },
            (None, Some(dir)) => CertPaths::in_dir(dir),
            (None, None) => CertPaths::in_dir(control_dir),
        }
    }

    /// The certificate file exists (IndiMail advertises STARTTLS only then).
    pub fn exists(&self) -> bool {
        self.cert.is_file()
    }

    fn sibling_key(&self) -> PathBuf {
        match &self.key {
            Some(k) => k.clone(),
            None => self.cert.parent().unwrap_or(Path::new(".")).join(SERVERKEY),
        }
    }
}

/// Identity of a file's current content, as far as `stat(2)` tells: a rename-into-place changes
/// the inode, an in-place rewrite the mtime or size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// Stamps of the certificate file and of the separate key file.
type Stamps = (Option<FileStamp>, Option<FileStamp>);

fn stamps(paths: &CertPaths) -> Stamps {
    (stamp(&paths.cert), stamp(&paths.sibling_key()))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn bad(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::BadPem {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Reads the chain and key and builds a server configuration.
fn build(paths: &CertPaths, options: &ServerOptions) -> Result<Arc<ServerConfig>, TlsError> {
    let pem = read_file(&paths.cert)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&paths.cert, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(&paths.cert, "no CERTIFICATE block"));
    }
    let inline_key = match &paths.key {
        Some(_) => None,
        None => rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| bad(&paths.cert, format!("bad PEM: {e}")))?,
    };
    let key: PrivateKeyDer<'static> = match inline_key {
        Some(k) => k,
        None => {
            let key_path = paths.sibling_key();
            let kpem = read_file(&key_path).map_err(|e| match e {
                TlsError::File { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    bad(
                        &paths.cert,
                        format!("no private key in it and {} not found", key_path.display()),
                    )
                }
                other => other,
            })?;
            rustls_pemfile::private_key(&mut &kpem[..])
                .map_err(|e| bad(&key_path, format!("bad PEM: {e}")))?
                .ok_or_else(|| bad(&key_path, "no PRIVATE KEY block"))?
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(options.versions.list())?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = options.alpn.clone();
    Ok(Arc::new(config))
}

/// The server TLS configuration of one shard, reloaded from its files when they change.
///
/// Each shard owns one (it is `!Send`); the configuration is an `Arc<ServerConfig>` swapped
/// whole on reload, so a handshake in progress keeps the configuration it started with and new
/// connections get the new one, with no lock anywhere. A reload that fails (a half-written or
/// broken file) keeps the previous configuration and leaves the error for
/// [`CertStore::take_reload_error`]; the same broken files are not parsed again until they
/// change.
#[derive(Debug)]
pub struct CertStore {
    paths: CertPaths,
    options: ServerOptions,
    current: RefCell<Arc<ServerConfig>>,
    stamps: Cell<Stamps>,
    next_check: Cell<Instant>,
    error: RefCell<Option<TlsError>>,
    generation: Cell<u64>,
}

impl CertStore {
    /// Loads the certificate and key. Fails when they are missing or unusable (the caller then
    /// does not offer TLS).
    pub fn load(paths: CertPaths, options: ServerOptions) -> Result<CertStore, TlsError> {
        let before = stamps(&paths);
        let config = build(&paths, &options)?;
        Ok(CertStore {
            next_check: Cell::new(Instant::now() + options.check_interval),
            paths,
            options,
            current: RefCell::new(config),
            stamps: Cell::new(before),
            error: RefCell::new(None),
            generation: Cell::new(0),
        })
    }

    /// The configuration for a new connection, after reloading the files if the check is due
    /// and they changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let now = Instant::now();
        if now >= self.next_check.get() {
            self.next_check.set(now + self.options.check_interval);
            if let Err(e) = self.reload_if_changed() {
                *self.error.borrow_mut() = Some(e);
            }
        }
        Arc::clone(&self.current.borrow())
    }

    /// Checks the files now and reloads them if they changed. `Ok(true)`: a new configuration
    /// is in use. On error the previous configuration stays.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.paths);
        if now == self.stamps.get() {
            return Ok(false);
        }
        // Remember these stamps even if the load fails: broken files are reported once, and
        // tried again when they change.
        self.stamps.set(now);
        let config = build(&self.paths, &self.options)?;
        *self.current.borrow_mut() = config;
        self.generation.set(self.generation.get() + 1);
        Ok(true)
    }

    /// The error of the last failed automatic reload, once.
    pub fn take_reload_error(&self) -> Option<TlsError> {
        self.error.borrow_mut().take()
    }

    /// How many times the configuration was reloaded (0 after [`CertStore::load`]).
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// The files this store reads.
    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }
}

/// A self-signed demo certificate written by [`create_self_signed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfSignedCert {
    /// The file written (`servercert.pem`, certificate and key, mode 0600).
    pub path: PathBuf,
    /// The host name it was made for.
    pub hostname: String,
}

impl SelfSignedCert {
    /// The words to log so that nobody mistakes it for a real certificate; also written into
    /// the certificate's organisation name.
    pub const MARKER: &'static str = "self-signed demo certificate";
}

impl std::fmt::Display for SelfSignedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for {} written to {}: clients will not trust it; replace it with a real certificate",
            SelfSignedCert::MARKER,
            self.hostname,
            self.path.display()
        )
    }
}

/// Writes a self-signed certificate for `hostname` with its key to `dir/servercert.pem`
/// (mode 0600, written to a temporary file, fsynced and renamed into place). Refuses to replace
/// an existing file. For `indimail init` and first-start demos only.
pub fn create_self_signed(
    dir: impl AsRef<Path>,
    hostname: &str,
) -> Result<SelfSignedCert, TlsError> {
    let dir = dir.as_ref();
    let path = dir.join(SERVERCERT);
    if path.exists() {
        return Err(TlsError::Exists(path));
    }
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, SelfSignedCert::MARKER);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let mut pem = cert.pem();
    pem.push_str(&key.serialize_pem());

    let file_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TlsError::File { path: p, source }
    };
    let tmp = dir.join(format!(".{SERVERCERT}.{}.tmp", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_err(&tmp))?;
    let written = f
        .write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(file_err(&tmp));
    drop(f);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // No-clobber publish: link fails if a certificate appeared meanwhile.
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    linked.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(path.clone())
        } else {
            TlsError::File {
                path: path.clone(),
                source: e,
            }
        }
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err(dir))?;
    Ok(SelfSignedCert {
        path,
        hostname: hostname.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tls-server-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn paths_follow_indimail_lookup() {
        let ctl = Path::new("/etc/indimail/control");
        assert_eq!(
            CertPaths::resolve(None, None, ctl).cert,
            ctl.join("servercert.pem")
        );
        assert_eq!(
            CertPaths::resolve(Some("/etc/indimail/certs".into()), None, ctl).cert,
            Path::new("/etc/indimail/certs/servercert.pem")
        );
        assert_eq!(
            CertPaths::resolve(Some("/x".into()), Some("/y/c.pem".into()), ctl).cert,
            Path::new("/y/c.pem")
        );
        assert_eq!(
            CertPaths::in_dir("/z").sibling_key(),
            Path::new("/z/serverkey.pem")
        );
    }

    #[test]
    fn self_signed_loads_and_refuses_to_overwrite() {
        let d = tempdir("selfsigned");
        let made = create_self_signed(&d, "mx.example").unwrap();
        assert!(made.to_string().contains(SelfSignedCert::MARKER));
        let mode = fs::metadata(&made.path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let store = CertStore::load(CertPaths::in_dir(&d), ServerOptions::default()).unwrap();
        assert_eq!(store.generation(), 0);
        assert!(matches!(
            create_self_signed(&d, "mx.example"),
            Err(TlsError::Exists(_))
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn key_in_separate_file() {
        let d = tempdir("splitkey");
        create_self_signed(&d, "mx.example").unwrap();
        let pem = fs::read_to_string(d.join(SERVERCERT)).unwrap();
        let at = pem.find("-----BEGIN PRIVATE KEY").unwrap();
        fs::write(d.join(SERVERCERT), &pem[..at]).unwrap();
        let err = CertStore::load(CertPaths::in_dir(&d), ServerOptions::default()).unwrap_err();
        assert!(err.to_string().contains("serverkey.pem not found"), "{err}");
        fs::write(d.join(SERVERKEY), &pem[at..]).unwrap();
        CertStore::load(CertPaths::in_dir(&d), ServerOptions::default()).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn broken_files_are_clear_errors() {
        let d = tempdir("broken");
        let paths = CertPaths::in_dir(&d);
        assert!(matches!(
            CertStore::load(paths.clone(), ServerOptions::default()),
            Err(TlsError::File { .. })
        ));
        fs::write(&paths.cert, "not a pem\n").unwrap();
        let err = CertStore::load(paths, ServerOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }
}
