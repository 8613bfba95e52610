//! What both remote-administration protocols share (the HTTP/JSON endpoint of
//! `adminsrv` and IndiMail's indisrvr line protocol of `indisrvr`): the
//! users file `control/adminusers` and its permissions, the login check with its equal
//! timing for unknown names and its lock-out per user and client address, the share of
//! unauthenticated connections per address, the TLS accept loop (one thread per
//! connection, off the shards), and the child process that runs a command.
//!
//! One copy of each, so that a rule (lock-out, timing, limits) cannot drift between the two
//! doors to the same commands.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tls::rustls;

use queue_layout::Paths;

use crate::operations::known_permission;
use control::log;

/// The permissions file in the control directory.
pub const USERS_FILE: &str = "adminusers";
/// Most connections served at once, per protocol.
const MAX_CONNECTIONS: usize = 16;
/// Per-connection read/write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Lock-out entries kept before stale ones are dropped (bounds memory under a name spray).
const MAX_LOCKOUT_ENTRIES: usize = 4096;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No usable certificate: the endpoint is TLS-only.
    #[error("admin endpoint is TLS-only and the certificate is unusable: {0}")]
    Tls(#[from] tls::TlsError),
    /// Binding the listener failed.
    #[error("admin endpoint: bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The control file is malformed.
    #[error("{path}:{line}: {reason}")]
    Users {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// Reading a file failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// One line of `control/adminusers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    pub name: String,
    pub hash: String,
    pub ops: Vec<String>,
}

impl AdminUser {
    /// May this user run `op` (`group.verb`)?
    pub fn allows(&self, op: &str) -> bool {
        let group = op.split('.').next().unwrap_or(op);
        self.ops
            .iter()
            .any(|p| p == "*" || p == op || p.strip_suffix(".*").is_some_and(|g| g == group))
    }
}

/// Parses `control/adminusers` (missing file: no users).
pub fn read_users(path: &Path) -> Result<Vec<AdminUser>, AdminError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AdminError::Io(path.to_path_buf(), e)),
    };
    let mut users = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| AdminError::Users {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let mut f = l.splitn(3, ':');
        let (Some(name), Some(hash), Some(ops)) = (f.next(), f.next(), f.next()) else {
            return Err(bad("expected name:password-hash:operations"));
        };
        if name.is_empty() || hash.is_empty() {
            return Err(bad("empty name or password hash"));
        }
        let ops: Vec<String> = ops
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(o) = ops.iter().find(|o| !known_permission(o)) {
            return Err(bad(&format!("unknown operation {o}")));
        }
        users.push(AdminUser {
            name: name.to_string(),
            hash: hash.to_string(),
            ops,
        });
    }
    Ok(users)
}

/// Writes `control/adminusers` with `user` added or replaced (mgmtpass), atomically.
pub fn set_user(path: &Path, user: &AdminUser) -> Result<(), AdminError> {
    if let Some(o) = user.ops.iter().find(|o| !known_permission(o)) {
        return Err(AdminError::Users {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("unknown operation {o}"),
        });
    }
    if user.name.is_empty() || user.name.contains(':') || user.hash.contains(':') {
        return Err(AdminError::Users {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("bad user name or hash for {:?}", user.name),
        });
    }
    let mut users = read_users(path)?;
    users.retain(|u| u.name != user.name);
    users.push(user.clone());
    write_users(path, &users)
}

/// Removes a user; `false` when there was none of that name.
pub fn del_user(path: &Path, name: &str) -> Result<bool, AdminError> {
    let mut users = read_users(path)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Ok(false);
    }
    write_users(path, &users)?;
    Ok(true)
}

fn write_users(path: &Path, users: &[AdminUser]) -> Result<(), AdminError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| AdminError::Io(path.to_path_buf(), e);
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        writeln!(
            f,
            "# indimail admin endpoint users: name:password-hash:operations"
        )
        .map_err(io)?;
        for u in users {
            writeln!(f, "{}:{}:{}", u.name, u.hash, u.ops.join(",")).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// The client a limit or lock-out applies to: an IPv4 address (IPv4-mapped IPv6 included)
/// or an IPv6 /64, since one host usually holds a whole /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// Numeric environment knob with a default.
pub fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(d)
}

/// Failures of one (user, client) pair.
#[derive(Debug)]
struct Failures {
    count: u32,
    last: Instant,
    until: Option<Instant>,
}

/// Failed-login counts and lock-outs, per (user name, client address).
#[derive(Debug)]
struct Lockout {
    max_failures: u32,
    duration: Duration,
    state: Mutex<HashMap<(String, IpAddr), Failures>>,
}

impl Lockout {
    fn from_env() -> Lockout {
        Lockout::new(
            u32::try_from(env_num("ADMIN_MAX_FAILURES", 5).max(1)).unwrap_or(5),
            Duration::from_secs(env_num("ADMIN_LOCKOUT", 900)),
        )
    }

    fn new(max_failures: u32, duration: Duration) -> Lockout {
        Lockout {
            max_failures,
            duration,
            state: Mutex::new(HashMap::new()),
        }
    }

    fn key(user: &str, ip: IpAddr) -> (String, IpAddr) {
        (user.to_string(), client_key(ip))
    }

    fn locked(&self, user: &str, ip: IpAddr) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = Lockout::key(user, ip);
        match s.get(&key).and_then(|f| f.until) {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                s.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Records a failure; returns (failures so far, now locked).
    fn fail(&self, user: &str, ip: IpAddr) -> (u32, bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.len() >= MAX_LOCKOUT_ENTRIES {
            // Forget expired lock-outs and counts idle for a lock-out period; failing
            // that, every count that did not lock (a spray of names must not grow memory).
            let d = self.duration;
            s.retain(|_, f| match f.until {
                Some(until) => now < until,
                None => now.duration_since(f.last) < d,
            });
            if s.len() >= MAX_LOCKOUT_ENTRIES {
                s.retain(|_, f| f.until.is_some());
            }
        }
        let f = s.entry(Lockout::key(user, ip)).or_insert(Failures {
            count: 0,
            last: now,
            until: None,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= self.max_failures {
            f.until = Some(now + self.duration);
        }
        (f.count, f.until.is_some())
    }

    fn succeed(&self, user: &str, ip: IpAddr) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Lockout::key(user, ip));
    }
}

/// Connections per client address still waiting for an authenticated request.
#[derive(Debug)]
struct PreAuth {
    max_per_ip: usize,
    count: Mutex<HashMap<IpAddr, usize>>,
}

impl PreAuth {
    /// A slot for `ip`, or `None` when that address already holds its share.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PreAuthSlot> {
        let key = client_key(ip);
        let mut m = self.count.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(PreAuthSlot {
            owner: Arc::clone(self),
            key,
            held: true,
        })
    }
}

/// One pre-authentication slot; given back on [`PreAuthSlot::release`] or drop.
#[derive(Debug)]
pub struct PreAuthSlot {
    owner: Arc<PreAuth>,
    key: IpAddr,
    held: bool,
}

impl PreAuthSlot {
    /// Gives the slot back (once; later calls do nothing).
    pub fn release(&mut self) {
        if !std::mem::replace(&mut self.held, false) {
            return;
        }
        let mut m = self.owner.count.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// The socket under TLS, with a deadline for the whole request: each read may wait only
/// for what is left of it, so a client trickling a byte at a time is still cut off.
pub struct Deadlined {
    pub tcp: TcpStream,
    pub deadline: Option<Instant>,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request deadline passed",
                ));
            }
            self.tcp.set_read_timeout(Some(left.min(IO_TIMEOUT)))?;
        }
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// Dummy hashes, one per scheme, verified for unknown user names (see [`authenticate`]).
fn dummy_hash(like: Option<&str>) -> &'static str {
    use lookup::HashMethod as M;
    use std::sync::OnceLock;
    static DUMMIES: [OnceLock<String>; 5] = [const { OnceLock::new() }; 5];
    // Only the cost of verifying against it matters: the result is thrown away.
    const PASSWORD: &str = "indimail-admin-dummy";
    let crypted = like
        .map(|h| {
            h.strip_prefix(lookup::password::CRAM_PREFIX)
                .and_then(|r| r.rsplit_once(',').map(|(_, c)| c))
                .unwrap_or(h)
        })
        .unwrap_or("$6$");
    let (i, method) = if crypted.starts_with("$y$") {
        (0, M::Yescrypt)
    } else if crypted.starts_with("$5$") {
        (1, M::Sha256)
    } else if crypted.starts_with("$1$") {
        (2, M::Md5)
    } else if crypted.len() == 13 && !crypted.starts_with('$') {
        (3, M::Des)
    } else {
        (4, M::Sha512)
    };
    DUMMIES[i].get_or_init(|| {
        lookup::password::hash(method, PASSWORD, None)
            .or_else(|_| lookup::password::hash(M::Sha512, PASSWORD, Some("indimailadmindum")))
            // Unreachable in practice (hashing a fixed short password); never matches.
            .unwrap_or_else(|_| "*".to_string())
    })
}

/// Finds `name` and checks `password` with `verify`. An unknown name is still verified, once,
/// against a dummy hash of the same kind as the first user's, so that a prober cannot tell
/// known names from unknown ones by the time the answer takes.
fn authenticate<'a>(
    users: &'a [AdminUser],
    name: &str,
    password: &str,
    mut verify: impl FnMut(&str, &str) -> bool,
) -> Option<&'a AdminUser> {
    match users.iter().find(|u| u.name == name) {
        Some(u) => verify(&u.hash, password).then_some(u),
        None => {
            let dummy = dummy_hash(users.first().map(|u| u.hash.as_str()));
            // The result is meaningless: only the cost matters.
            let _ = verify(dummy, password);
            None
        }
    }
}

/// `indimail admin-users ...` (mgmtpass's role): the lines of `control/adminusers`.
#[derive(clap::Subcommand)]
pub enum UsersCommand {
    /// Add or replace a user: password from a file, allowed operations (`*`, `user.*`,
    /// `domain.list`, `queue.stat`, ..., or IndiMail program names for indisrvr: `vadduser`).
    Set {
        name: String,
        /// File holding the password (first line).
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// Comma-separated operations.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<String>,
    },
    /// Remove a user.
    Del { name: String },
    /// List users and their operations.
    List,
}

/// Why `indimail admin-users` failed (exit 1).
#[derive(Debug, thiserror::Error)]
enum UsersError {
    /// The password file cannot be read.
    #[error("{}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The password file's first line is empty.
    #[error("{}: empty password", .0.display())]
    EmptyPassword(PathBuf),
    /// The password cannot be hashed.
    #[error("{0}")]
    Hash(#[from] lookup::LookupError),
    /// `control/adminusers` cannot be read or written.
    #[error("{0}")]
    File(#[from] AdminError),
    /// `del` of a name not in the file.
    #[error("no admin user {0}")]
    NoSuchUser(String),
}

/// Runs `indimail admin-users set|del|list` on `control/adminusers`; the exit status.
pub fn users_main(paths: &Paths, cmd: UsersCommand) -> i32 {
    let file = paths.control.path().join(USERS_FILE);
    let r: Result<(), UsersError> = match cmd {
        UsersCommand::Set {
            name,
            password_file,
            allow,
        } => std::fs::read_to_string(&password_file)
            .map_err(|source| UsersError::PasswordFile {
                path: password_file.clone(),
                source,
            })
            .and_then(|pw| {
                let pw = pw.lines().next().unwrap_or("");
                if pw.is_empty() {
                    return Err(UsersError::EmptyPassword(password_file.clone()));
                }
                let hash = lookup::password::hash(lookup::HashMethod::Sha512, pw, None)?;
                let user = AdminUser {
                    name: name.clone(),
                    hash,
                    ops: allow,
                };
                set_user(&file, &user)?;
                println!("admin user {name} set");
                Ok(())
            }),
        UsersCommand::Del { name } => match del_user(&file, &name) {
            Ok(true) => {
                println!("admin user {name} removed");
                Ok(())
            }
            Ok(false) => Err(UsersError::NoSuchUser(name)),
            Err(e) => Err(e.into()),
        },
        UsersCommand::List => read_users(&file)
            .map(|users| {
                for u in users {
                    println!("{} {}", u.name, u.ops.join(","));
                }
            })
            .map_err(UsersError::from),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("indimail admin-users: {e}");
            1
        }
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many failed logins from this address: refused even with the right password.
    LockedOut,
    /// Unknown user or wrong password.
    BadLogin,
    /// `control/adminusers` cannot be read.
    Unusable,
}

/// The state both protocols' connections share: who may log in, failures, connection counts.
pub struct Gate {
    pub home: PathBuf,
    users_file: PathBuf,
    exe: PathBuf,
    lockout: Lockout,
    active: AtomicUsize,
    preauth: Arc<PreAuth>,
    /// Time for a whole request to arrive (handshake, login, command).
    pub request_timeout: Duration,
    /// Time for a client's input once its command has run (indisrvr's final `\n`).
    pub data_timeout: Duration,
}

impl Gate {
    /// The gate of `paths`'s home, limits from the environment (`ADMIN_MAX_FAILURES`,
    /// `ADMIN_LOCKOUT`, `ADMIN_MAX_PER_IP`, `ADMIN_REQUEST_TIMEOUT`). Fails when the users
    /// file is malformed, so that a bad file stops the start, loudly.
    pub fn new(paths: &Paths) -> Result<Gate, AdminError> {
        let users_file = paths.control.path().join(USERS_FILE);
        read_users(&users_file)?;
        Ok(Gate {
            home: paths.home.clone(),
            users_file,
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("indimail")),
            lockout: Lockout::from_env(),
            active: AtomicUsize::new(0),
            preauth: Arc::new(PreAuth {
                max_per_ip: usize::try_from(env_num("ADMIN_MAX_PER_IP", 4).max(1)).unwrap_or(4),
                count: Mutex::new(HashMap::new()),
            }),
            request_timeout: Duration::from_secs(env_num("ADMIN_REQUEST_TIMEOUT", 10).max(1)),
            data_timeout: IO_TIMEOUT,
        })
    }

    /// Checks `user`'s `password` from `ip` (the users file is read each time: changes apply
    /// at once), counts failures and locks out; logs every refusal. On success the
    /// connection no longer counts against its address's unauthenticated share.
    pub fn login(
        &self,
        user: &str,
        password: &str,
        ip: IpAddr,
        slot: &mut PreAuthSlot,
    ) -> Result<AdminUser, Refused> {
        if self.lockout.locked(user, ip) {
            log!("indisrvr: refused user={user} ip={ip} reason=locked-out");
            return Err(Refused::LockedOut);
        }
        let users = read_users(&self.users_file).map_err(|e| {
            log!("indisrvr: alert: {e}");
            Refused::Unusable
        })?;
        let Some(admin) = authenticate(&users, user, password, lookup::password::verify) else {
            let (n, locked) = self.lockout.fail(user, ip);
            log!(
                "indisrvr: refused user={user} ip={ip} reason=bad-login failures={n}{}",
                if locked { " locked-out" } else { "" }
            );
            return Err(Refused::BadLogin);
        };
        self.lockout.succeed(user, ip);
        slot.release();
        Ok(admin.clone())
    }

    /// This binary as a child, standard input closed: a failing command cannot disturb the
    /// server. The caller adds the arguments and how the home is passed.
    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.exe);
        c.stdin(std::process::Stdio::null());
        c
    }
}

/// A server TLS session over `tcp` whose whole request (handshake included) must arrive
/// within the gate's request timeout; `None` when rustls refuses the configuration.
pub fn tls_session(
    gate: &Gate,
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Option<rustls::StreamOwned<rustls::ServerConnection, Deadlined>> {
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
    let conn = rustls::ServerConnection::new(config).ok()?;
    let sock = Deadlined {
        tcp,
        deadline: Some(Instant::now() + gate.request_timeout),
    };
    Some(rustls::StreamOwned::new(conn, sock))
}

/// What serves one accepted connection: the gate, the socket, the client's address, its
/// unauthenticated slot and the TLS configuration of the moment.
pub type ConnHandler = fn(&Gate, TcpStream, IpAddr, PreAuthSlot, Arc<rustls::ServerConfig>);

/// Binds `addr` and serves it on a thread named `name`, each connection on a thread of its
/// own with `handler`, TLS only (the certificate of `cert_paths`, reloaded when it changes).
/// Fails when the certificate is unusable or the address cannot be bound; returns the
/// bound address.
pub fn serve_tls(
    name: &str,
    addr: SocketAddr,
    cert_paths: tls::CertPaths,
    gate: Gate,
    handler: ConnHandler,
) -> Result<SocketAddr, AdminError> {
    // Load once here so that a missing certificate fails the start, loudly.
    tls::CertStore::load(cert_paths.clone(), tls::ServerOptions::default())?;
    let listener = TcpListener::bind(addr).map_err(|e| AdminError::Bind(addr, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| AdminError::Bind(addr, e))?;
    let gate = Arc::new(gate);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || accept_loop(&listener, cert_paths, &gate, handler))
        .map_err(|e| AdminError::Bind(addr, e))?;
    Ok(local)
}

fn accept_loop(
    listener: &TcpListener,
    cert_paths: tls::CertPaths,
    gate: &Arc<Gate>,
    handler: ConnHandler,
) {
    // The store is not shareable between threads; this thread owns it and hands each
    // connection the current configuration.
    let store = match tls::CertStore::load(cert_paths, tls::ServerOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            log!("indisrvr: alert: cannot load the certificate: {e}");
            return;
        }
    };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let config = store.config();
        if let Some(e) = store.take_reload_error() {
            log!("indisrvr: warning: certificate reload failed: {e}");
        }
        // The address's share first, so one address's surplus never holds a global slot,
        // even briefly.
        let Some(ip) = conn.peer_addr().ok().map(|a| a.ip()) else {
            continue;
        };
        let Some(slot) = gate.preauth.acquire(ip) else {
            continue;
        };
        if gate.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            gate.active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let mine = Arc::clone(gate);
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                handler(&mine, conn, ip, slot, config);
                mine.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure (and its slot) was dropped unrun: give the count back.
            gate.active.fetch_sub(1, Ordering::SeqCst);
            log!("indisrvr: warning: cannot start a connection thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn users_file_round_trip_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(USERS_FILE);
        let u = AdminUser {
            name: "alice".into(),
            hash: "$6$salt$hash".into(),
            ops: s(&["*"]),
        };
        set_user(&p, &u).unwrap();
        assert_eq!(read_users(&p).unwrap(), vec![u]);
        assert!(del_user(&p, "alice").unwrap());
        assert!(!del_user(&p, "alice").unwrap());
        std::fs::write(&p, "bob:h:user.fly\n").unwrap();
        let e = read_users(&p).unwrap_err().to_string();
        assert!(e.ends_with(":1: unknown operation user.fly"), "{e}");
        std::fs::write(&p, "\n# c\nbob\n").unwrap();
        assert!(read_users(&p).unwrap_err().to_string().contains(":3:"));
    }

    #[test]
    fn unknown_user_costs_one_verification_of_the_same_kind() {
        let users = vec![AdminUser {
            name: "alice".into(),
            hash: lookup::password::hash(lookup::HashMethod::Sha512, "pw", None).unwrap(),
            ops: s(&["*"]),
        }];
        let mut seen = Vec::new();
        let mut rec = |h: &str, p: &str| {
            seen.push(h.to_string());
            lookup::password::verify(h, p)
        };
        assert!(authenticate(&users, "alice", "pw", &mut rec).is_some());
        assert!(authenticate(&users, "alice", "bad", &mut rec).is_none());
        assert!(authenticate(&users, "mallory", "pw", &mut rec).is_none());
        // One verification per attempt, the unknown name's against a SHA-512 dummy.
        assert_eq!(seen.len(), 3);
        assert!(
            seen[2].starts_with("$6$") && seen[2] != users[0].hash,
            "{seen:?}"
        );
        assert!(!lookup::password::verify(&seen[2], "pw"));
        assert!(dummy_hash(Some("$5$abc$def")).starts_with("$5$"));
        assert!(dummy_hash(None).starts_with("$6$"));
    }

    #[test]
    fn lockout_is_per_user_and_address() {
        let l = Lockout::new(3, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for n in 1..=3 {
            assert_eq!(l.fail("bob", a), (n, n == 3));
        }
        assert!(l.locked("bob", a));
        assert!(!l.locked("bob", b), "another address is not locked out");
        assert!(!l.locked("alice", a), "another user is not locked out");
        // IPv4-mapped IPv6 is the same client.
        assert!(l.locked("bob", "::ffff:192.0.2.1".parse().unwrap()));
        l.succeed("bob", b);
        assert!(l.locked("bob", a));
        let l = Lockout::new(1, Duration::ZERO);
        l.fail("x", a);
        assert!(!l.locked("x", a), "expired");
    }

    #[test]
    fn preauth_share_per_address() {
        let p = Arc::new(PreAuth {
            max_per_ip: 2,
            count: Mutex::new(HashMap::new()),
        });
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        let mut one = p.acquire(ip("10.0.0.1")).unwrap();
        let _two = p.acquire(ip("10.0.0.1")).unwrap();
        assert!(p.acquire(ip("10.0.0.1")).is_none());
        assert!(p.acquire(ip("10.0.0.2")).is_some());
        one.release();
        one.release();
        let _three = p.acquire(ip("10.0.0.1")).unwrap();
        assert!(
            p.acquire(ip("10.0.0.1")).is_none(),
            "double release counted once"
        );
        // One IPv6 /64 is one client.
        let _a = p.acquire(ip("2001:db8::1")).unwrap();
        let _b = p.acquire(ip("2001:db8::2")).unwrap();
        assert!(p.acquire(ip("2001:db8::ffff:1")).is_none());
        assert!(p.acquire(ip("2001:db8:0:1::1")).is_some());
    }
}
