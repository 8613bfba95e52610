//! Remote administration (the role of IndiMail's `indisrvr` and `adminclient`): an
//! authenticated, TLS-only HTTP/JSON endpoint that runs directory and queue commands, and
//! its client.
//!
//! **Server** (`indimail serve --admin ADDR`). A dedicated thread accepts connections; each
//! one is served on a thread of its own with blocking rustls (admin traffic is a few
//! requests, never on the mail path, so it stays off the shards). The certificate is the
//! server's (`servercert.pem` from `SERVERCERT`, `CERTDIR` or the control directory, reloaded
//! when it changes); without one the endpoint does not start. One request per connection:
//!
//! ```text
//! POST /v1/run HTTP/1.1
//! Authorization: Basic base64(user:password)
//! Content-Type: application/json
//!
//! {"args": ["user", "add", "ann@example.com", "--password", "..."]}
//! ```
//!
//! answered `200` with `{"status": <exit code>, "stdout": "...", "stderr": "..."}` once the
//! command ran (as `indimail --home <home> <args...>`, a child process: a failing command
//! cannot disturb the server), `400` for a malformed request or a command outside the
//! whitelist, `401` for a bad user or password, `403` for a command the user may not run,
//! `429` while the user is locked out, `408` for a request that did not arrive in time.
//!
//! **Whitelist.** `domain add|del|list|info|add-alias`, `user add|del|passwd|mod|info|list|
//! quota`, `alias add|del|list`, `hostcntrl ...`, `cluster ...`, `atrn ...`, `queue stat|list`.
//! An operation is named `<group>.<verb>` (`user.add`, `queue.stat`); `--home` is refused.
//!
//! **Users and permissions** (mgmtpass and vpriv): `control/adminusers`, one user a line,
//! `name:password-hash:operations`, where the hash is a crypt string (as `indimail
//! admin-users set` writes) and operations a comma-separated list of `*`, `<group>.*` or
//! `<group>.<verb>`. The file is read on every request: changes apply at once.
//!
//! **Lock-out.** After `ADMIN_MAX_FAILURES` (default 5) failed logins in a row from one client
//! address a user is refused from that address, even with the right password, for
//! `ADMIN_LOCKOUT` seconds (default 900); the same user from another address is not (else
//! anyone could lock an operator out). Addresses count as IPv4 addresses and IPv6 /64s. The
//! count is kept in memory: a restart clears it. An unknown user name costs one password
//! verification against a dummy hash of the same kind, so it answers no faster than a known one.
//!
//! **Hostile clients.** At most `ADMIN_MAX_PER_IP` (default 4) connections per client address
//! may be waiting for their request to arrive and be authenticated, so one address cannot take
//! all `MAX_CONNECTIONS` slots; the whole request (TLS handshake, head and body) must arrive
//! within `ADMIN_REQUEST_TIMEOUT` seconds (default 10), not per read, so trickling clients are
//! closed.
//!
//! **Log.** One line per request on the server's log, naming the admin, the client address,
//! the operation, its arguments (passwords masked) and the outcome: `indisrvr: run
//! user=alice ip=127.0.0.1 op=user.add status=0 args="user add ann@example.com --password
//! ***"`; refusals as `indisrvr: refused ...`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tls::rustls;

use crate::config::Paths;
use crate::log;

/// The permissions file in the control directory.
pub const USERS_FILE: &str = "adminusers";
/// Most requests served at once.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head and body.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// Per-connection read/write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Lock-out entries kept before stale ones are dropped (bounds memory under a name spray).
const MAX_LOCKOUT_ENTRIES: usize = 4096;

/// Commands the endpoint runs: group and the verbs allowed (`None`: every verb).
const WHITELIST: &[(&str, Option<&[&str]>)] = &[
    (
        "domain",
        Some(&[
            "add",
            "del",
            "list",
            "info",
            "add-alias",
            "limits",
            "rename",
            "mod",
        ]),
    ),
    (
        "user",
        Some(&[
            "add", "del", "passwd", "mod", "info", "list", "quota", "rename", "expire",
        ]),
    ),
    ("alias", Some(&["add", "del", "list"])),
    ("relay", Some(&["clear"])),
    ("hostcntrl", None),
    ("cluster", None),
    ("atrn", None),
    ("queue", Some(&["stat", "list"])),
];

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
        if let Some(o) = ops.iter().find(|o| !known_op(o)) {
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

/// `*`, `<group>.*` or a whitelisted `<group>.<verb>`.
fn known_op(o: &str) -> bool {
    o == "*"
        || o.split_once('.').is_some_and(|(g, v)| {
            WHITELIST
                .iter()
                .any(|(wg, verbs)| *wg == g && (v == "*" || verbs.is_none_or(|vs| vs.contains(&v))))
        })
}

/// Writes `control/adminusers` with `user` added or replaced (mgmtpass), atomically.
pub fn set_user(path: &Path, user: &AdminUser) -> Result<(), AdminError> {
    if let Some(o) = user.ops.iter().find(|o| !known_op(o)) {
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

/// The operation (`group.verb`) of a command line, if whitelisted.
pub fn operation(args: &[String]) -> Result<String, String> {
    let group = args.first().ok_or("empty command")?;
    let verb = args.get(1).ok_or("missing subcommand")?;
    if args
        .iter()
        .any(|a| a == "--home" || a.starts_with("--home="))
    {
        return Err("--home is not accepted".into());
    }
    let allowed = WHITELIST
        .iter()
        .find(|(g, _)| g == group)
        .is_some_and(|(_, verbs)| verbs.is_none_or(|vs| vs.contains(&verb.as_str())));
    if !allowed {
        return Err(format!("{group} {verb} is not available remotely"));
    }
    Ok(format!("{group}.{verb}"))
}

/// Arguments with secrets masked, for the log.
fn masked(args: &[String]) -> String {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if let Some((k, _)) = a.split_once('=').filter(|(k, _)| k.contains("password")) {
            out.push(format!("{k}=***"));
        } else {
            hide_next = a.starts_with("--") && a.contains("password");
            out.push(a.clone());
        }
    }
    out.join(" ").replace('"', "'")
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
fn env_num(k: &str, d: u64) -> u64 {
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
struct PreAuthSlot {
    owner: Arc<PreAuth>,
    key: IpAddr,
    held: bool,
}

impl PreAuthSlot {
    fn release(&mut self) {
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
struct Deadlined {
    tcp: TcpStream,
    deadline: Option<Instant>,
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

struct Shared {
    home: PathBuf,
    users_file: PathBuf,
    exe: PathBuf,
    lockout: Lockout,
    active: AtomicUsize,
    preauth: Arc<PreAuth>,
    /// Time for a whole request to arrive (handshake, head, body).
    request_timeout: Duration,
}

/// Starts the endpoint on `addr`; returns the bound address. Fails when there is no
/// usable certificate (TLS-only) or the address cannot be bound.
pub fn start(paths: &Paths, addr: SocketAddr) -> Result<SocketAddr, AdminError> {
    let cert_paths = tls::CertPaths::from_env(paths.control.path());
    // Load once here so that a missing certificate fails the start, loudly.
    tls::CertStore::load(cert_paths.clone(), tls::ServerOptions::default())?;
    let users_file = paths.control.path().join(USERS_FILE);
    read_users(&users_file)?;
    let listener = TcpListener::bind(addr).map_err(|e| AdminError::Bind(addr, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| AdminError::Bind(addr, e))?;
    let shared = Arc::new(Shared {
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
    });
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            // The store is not shareable between threads; this thread owns it and hands
            // each connection the current configuration.
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
                // The address's share first, so one address's surplus never holds a
                // global slot, even briefly.
                let Some(ip) = conn.peer_addr().ok().map(|a| a.ip()) else {
                    continue;
                };
                let Some(slot) = shared.preauth.acquire(ip) else {
                    continue;
                };
                if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let mine = Arc::clone(&shared);
                let spawned =
                    std::thread::Builder::new()
                        .name("admin-conn".into())
                        .spawn(move || {
                            serve_conn(&mine, conn, ip, slot, config);
                            mine.active.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    // The closure (and its slots) was dropped unrun: give the count back.
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    log!("indisrvr: warning: cannot start a connection thread");
                }
            }
        })
        .map_err(|e| AdminError::Bind(addr, e))?;
    Ok(local)
}

/// An HTTP response: status, reason, JSON body.
struct Reply(u16, &'static str, Value);

fn serve_conn(
    shared: &Shared,
    tcp: TcpStream,
    ip: IpAddr,
    mut slot: PreAuthSlot,
    config: Arc<rustls::ServerConfig>,
) {
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let tcp = Deadlined {
        tcp,
        deadline: Some(Instant::now() + shared.request_timeout),
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let reply = match read_request(&mut tls) {
        Ok((auth, body)) => {
            // The request is in: no deadline for the answer (a command may take long).
            tls.sock.deadline = None;
            let _ = tls.sock.tcp.set_read_timeout(Some(IO_TIMEOUT));
            handle(shared, ip, &mut slot, auth.as_deref(), &body)
        }
        Err(Some(r)) => r,
        // The handshake failed, the client went away or was too slow: nothing to answer.
        // (The slot goes back before the socket closes: a client that sees the close may
        // connect again at once.)
        Err(None) => {
            slot.release();
            return;
        }
    };
    let Reply(code, reason, body) = reply;
    let body = body.to_string();
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 401 {
        head.push_str("WWW-Authenticate: Basic realm=\"indimail\"\r\n");
    }
    head.push_str("\r\n");
    let _ = tls.write_all(head.as_bytes());
    let _ = tls.write_all(body.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    slot.release();
}

fn error(code: u16, reason: &'static str, text: &str) -> Reply {
    Reply(code, reason, json!({ "error": text }))
}

/// A read that hit the request deadline (or the socket timeout under it).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn too_slow() -> Reply {
    error(408, "Request Timeout", "request not received in time")
}

/// Reads one request: the Authorization header's value and the body. `Err(None)`: no
/// answer possible (TLS or I/O failure).
type Request = (Option<String>, Vec<u8>);

fn read_request<S: Read>(s: &mut S) -> Result<Request, Option<Reply>> {
    let mut r = BufReader::new(s.take((MAX_HEAD + MAX_BODY) as u64));
    let mut line = String::new();
    let mut head_len = 0;
    let mut read_line = |r: &mut BufReader<_>, line: &mut String| -> Result<(), Option<Reply>> {
        line.clear();
        match r.read_line(line) {
            Ok(0) | Err(_) if head_len == 0 => Err(None),
            Err(e) if timed_out(&e) => Err(Some(too_slow())),
            Ok(0) | Err(_) => Err(Some(error(400, "Bad Request", "truncated request"))),
            Ok(n) => {
                head_len += n;
                if head_len > MAX_HEAD {
                    return Err(Some(error(400, "Bad Request", "request head too large")));
                }
                Ok(())
            }
        }
    };
    read_line(&mut r, &mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "POST" || target != "/v1/run" {
        return Err(Some(error(404, "Not Found", "only POST /v1/run is served")));
    }
    let mut auth = None;
    let mut length = 0usize;
    loop {
        read_line(&mut r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(Some(error(400, "Bad Request", "malformed header")));
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("authorization") {
            auth = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("content-length") {
            length = v
                .parse()
                .map_err(|_| Some(error(400, "Bad Request", "bad Content-Length")))?;
        }
    }
    if length > MAX_BODY {
        return Err(Some(error(413, "Payload Too Large", "body too large")));
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).map_err(|e| {
        Some(if timed_out(&e) {
            too_slow()
        } else {
            error(400, "Bad Request", "truncated body")
        })
    })?;
    Ok((auth, body))
}

/// `Basic base64(user:password)` → (user, password).
fn basic(auth: &str) -> Option<(String, String)> {
    let (scheme, b64) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn handle(
    shared: &Shared,
    ip: IpAddr,
    slot: &mut PreAuthSlot,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let Some((user, password)) = auth.and_then(basic) else {
        log!("indisrvr: refused ip={ip} reason=no-credentials");
        return error(401, "Unauthorized", "credentials required");
    };
    if shared.lockout.locked(&user, ip) {
        log!("indisrvr: refused user={user} ip={ip} reason=locked-out");
        return error(429, "Too Many Requests", "locked out after failed logins");
    }
    let users = match read_users(&shared.users_file) {
        Ok(u) => u,
        Err(e) => {
            log!("indisrvr: alert: {e}");
            return error(500, "Internal Server Error", "admin users file unusable");
        }
    };
    let Some(admin) = authenticate(&users, &user, &password, lookup::password::verify) else {
        let (n, locked) = shared.lockout.fail(&user, ip);
        log!(
            "indisrvr: refused user={user} ip={ip} reason=bad-login failures={n}{}",
            if locked { " locked-out" } else { "" }
        );
        return error(401, "Unauthorized", "bad user or password");
    };
    shared.lockout.succeed(&user, ip);
    // Authenticated: no longer counts against the address's pre-authentication share.
    slot.release();
    let args: Vec<String> = match serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("args").cloned())
        .and_then(|a| serde_json::from_value(a).ok())
    {
        Some(a) => a,
        None => {
            return error(
                400,
                "Bad Request",
                "expected a JSON object {\"args\": [strings]}",
            )
        }
    };
    let op = match operation(&args) {
        Ok(op) => op,
        Err(e) => {
            log!(
                "indisrvr: refused user={user} ip={ip} reason=not-available args=\"{}\"",
                masked(&args)
            );
            return error(400, "Bad Request", &e);
        }
    };
    if !admin.allows(&op) {
        log!(
            "indisrvr: refused user={user} ip={ip} op={op} reason=not-permitted args=\"{}\"",
            masked(&args)
        );
        return error(403, "Forbidden", &format!("{user} may not run {op}"));
    }
    let out = std::process::Command::new(&shared.exe)
        .args(&args)
        .arg("--home")
        .arg(&shared.home)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let status = o.status.code().unwrap_or(111);
            log!(
                "indisrvr: run user={user} ip={ip} op={op} status={status} args=\"{}\"",
                masked(&args)
            );
            Reply(
                200,
                "OK",
                json!({
                    "status": status,
                    "stdout": String::from_utf8_lossy(&o.stdout),
                    "stderr": String::from_utf8_lossy(&o.stderr),
                }),
            )
        }
        Err(e) => {
            log!("indisrvr: alert: user={user} ip={ip} op={op} cannot run: {e}");
            error(500, "Internal Server Error", "cannot run the command")
        }
    }
}

/// `indimail admin --host H:PORT --user U --password-file F ARGS...`: runs ARGS on the
/// remote endpoint, prints its output, returns its exit status (111 when the request could
/// not be made, 1 when it was refused).
pub struct ClientArgs {
    pub host: String,
    pub user: String,
    pub password_file: PathBuf,
    /// PEM file of the CA (or the server's own self-signed certificate) to trust; else the
    /// compiled-in public roots.
    pub ca: Option<PathBuf>,
    /// Name expected in the certificate (default: the host part of `host`).
    pub server_name: Option<String>,
    pub args: Vec<String>,
}

pub fn client(a: &ClientArgs) -> i32 {
    match client_request(a) {
        Ok((code, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if code == 200 {
                print!("{}", v["stdout"].as_str().unwrap_or(""));
                eprint!("{}", v["stderr"].as_str().unwrap_or(""));
                let status = v["status"].as_i64().unwrap_or(111);
                i32::try_from(status).unwrap_or(111)
            } else {
                eprintln!(
                    "indimail admin: {code}: {}",
                    v["error"].as_str().unwrap_or(body.trim())
                );
                if code >= 500 {
                    111
                } else {
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("indimail admin: {e}");
            111
        }
    }
}

fn client_request(a: &ClientArgs) -> Result<(u16, String), String> {
    let password = std::fs::read_to_string(&a.password_file)
        .map_err(|e| format!("{}: {e}", a.password_file.display()))?;
    let password = password.trim_end_matches(['\r', '\n']);
    let verify = match &a.ca {
        Some(p) => tls::ClientVerify::CaFile(p.clone()),
        None => tls::ClientVerify::WebPkiRoots,
    };
    let config = tls::ClientTlsConfig::new(verify)
        .build()
        .map_err(|e| e.to_string())?;
    let host_part = match a.host.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => a.host.as_str(),
    };
    let name = a.server_name.as_deref().unwrap_or(host_part).to_string();
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| format!("bad server name {name}"))?;
    let tcp = TcpStream::connect(&a.host).map_err(|e| format!("{}: {e}", a.host))?;
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT * 4));
    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
    let conn = rustls::ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = json!({ "args": a.args }).to_string();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", a.user));
    let req = format!(
        "POST /v1/run HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        a.host,
        body.len()
    );
    tls.write_all(req.as_bytes())
        .and_then(|_| tls.flush())
        .map_err(|e| format!("{}: {e}", a.host))?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(format!("{}: {e}", a.host)),
    }
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed response".to_string())?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "malformed status line".to_string())?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn operations_and_permissions() {
        assert_eq!(operation(&s(&["user", "add", "a@b"])).unwrap(), "user.add");
        assert_eq!(operation(&s(&["queue", "stat"])).unwrap(), "queue.stat");
        // The IndiMail tools added later (vlimit, vrenameuser, vmoddomain, vdeloldusers,
        // clearopensmtp) are reachable too.
        for (g, v) in [
            ("domain", "limits"),
            ("domain", "rename"),
            ("domain", "mod"),
            ("user", "rename"),
            ("user", "expire"),
            ("relay", "clear"),
        ] {
            assert_eq!(operation(&s(&[g, v])).unwrap(), format!("{g}.{v}"));
        }
        assert!(operation(&s(&["queue", "delete"])).is_err());
        assert!(operation(&s(&["serve"])).is_err());
        assert!(operation(&s(&["domain", "list", "--home", "/etc"])).is_err());
        assert!(operation(&s(&["domain", "list", "--home=/etc"])).is_err());
        let u = AdminUser {
            name: "a".into(),
            hash: "x".into(),
            ops: s(&["user.*", "domain.list"]),
        };
        assert!(u.allows("user.add") && u.allows("domain.list"));
        assert!(!u.allows("domain.del") && !u.allows("queue.list"));
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
    fn secrets_are_masked() {
        assert_eq!(
            masked(&s(&["user", "add", "a@b", "--password", "pw"])),
            "user add a@b --password ***"
        );
        assert_eq!(
            masked(&s(&["user", "passwd", "--password=pw"])),
            "user passwd --password=***"
        );
    }

    #[test]
    fn basic_auth() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("al:p:w")
        );
        assert_eq!(basic(&h), Some(("al".into(), "p:w".into())));
        assert_eq!(basic("Bearer x"), None);
        assert_eq!(basic("Basic !!"), None);
    }

    #[test]
    fn request_parsing() {
        let req =
            b"POST /v1/run HTTP/1.1\r\nAuthorization: Basic eA==\r\nContent-Length: 2\r\n\r\n{}";
        let (auth, body) = read_request(&mut &req[..]).ok().unwrap();
        assert_eq!(auth.as_deref(), Some("Basic eA=="));
        assert_eq!(body, b"{}");
        let Err(Some(Reply(404, ..))) = read_request(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]) else {
            panic!("GET refused")
        };
        let Err(Some(Reply(413, ..))) =
            read_request(&mut &b"POST /v1/run HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"[..])
        else {
            panic!("large body refused")
        };
        assert!(matches!(read_request(&mut &b""[..]), Err(None)));
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

    #[test]
    fn slow_request_answers_408() {
        struct Slow(&'static [u8]);
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let Err(Some(Reply(408, ..))) = read_request(&mut Slow(b"POST /v1/run HTTP/1.1\r\nX"))
        else {
            panic!("deadline in the head")
        };
        let Err(Some(Reply(408, ..))) = read_request(&mut Slow(
            b"POST /v1/run HTTP/1.1\r\nContent-Length: 9\r\n\r\n{",
        )) else {
            panic!("deadline in the body")
        };
        assert!(matches!(read_request(&mut Slow(b"")), Err(None)));
    }
}
