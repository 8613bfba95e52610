//! Remote administration (the role of IndiMail's `indisrvr` and `adminclient`): an
//! authenticated, TLS-only HTTP/JSON endpoint that runs directory and queue commands, and
//! its client. IndiMail's own line protocol is `indisrvr`; what both share (users,
//! login and lock-out, connection limits, the accept loop, the child runner) is
//! [`crate::adminauth`]; what an operation is, [`crate::operations`].
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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};
use tls::rustls;

use crate::adminauth::{AdminError, Gate, PreAuthSlot, Refused, IO_TIMEOUT};
use crate::operations::operation;
use control::log;
use queue_layout::Paths;

/// Largest request head and body.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// Starts the endpoint on `addr`; returns the bound address. Fails when there is no
/// usable certificate (TLS-only) or the address cannot be bound.
pub fn start(paths: &Paths, addr: SocketAddr) -> Result<SocketAddr, AdminError> {
    let cert_paths = tls::CertPaths::from_env(paths.control.path());
    crate::adminauth::serve_tls("admin", addr, cert_paths, Gate::new(paths)?, serve_conn)
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

/// An HTTP response: status, reason, JSON body.
struct Reply(u16, &'static str, Value);

fn serve_conn(
    shared: &Gate,
    tcp: TcpStream,
    ip: IpAddr,
    mut slot: PreAuthSlot,
    config: Arc<rustls::ServerConfig>,
) {
    let Some(mut tls) = crate::adminauth::tls_session(shared, tcp, config) else {
        return;
    };
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
    shared: &Gate,
    ip: IpAddr,
    slot: &mut PreAuthSlot,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let Some((user, password)) = auth.and_then(basic) else {
        log!("indisrvr: refused ip={ip} reason=no-credentials");
        return error(401, "Unauthorized", "credentials required");
    };
    let admin = match shared.login(&user, &password, ip, slot) {
        Ok(a) => a,
        Err(Refused::LockedOut) => {
            return error(429, "Too Many Requests", "locked out after failed logins")
        }
        Err(Refused::BadLogin) => return error(401, "Unauthorized", "bad user or password"),
        Err(Refused::Unusable) => {
            return error(500, "Internal Server Error", "admin users file unusable")
        }
    };
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
            return error(400, "Bad Request", &e.to_string());
        }
    };
    if !admin.allows(&op) {
        log!(
            "indisrvr: refused user={user} ip={ip} op={op} reason=not-permitted args=\"{}\"",
            masked(&args)
        );
        return error(403, "Forbidden", &format!("{user} may not run {op}"));
    }
    let out = shared
        .command()
        .args(&args)
        .arg("--home")
        .arg(&shared.home)
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

/// Why `indimail admin` got no answer from the endpoint (exit 111).
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The password file cannot be read.
    #[error("{}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The client's TLS settings (CA file) are unusable.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// Not a name (or address) TLS can verify.
    #[error("bad server name {0}")]
    ServerName(String),
    /// Connecting, writing or reading failed.
    #[error("{host}: {source}")]
    Io {
        host: String,
        source: std::io::Error,
    },
    /// rustls refused to start the session.
    #[error("{0}")]
    Session(#[from] rustls::Error),
    /// No blank line after the head.
    #[error("malformed response")]
    MalformedResponse,
    /// No numeric status in the first line.
    #[error("malformed status line")]
    MalformedStatus,
}

fn client_request(a: &ClientArgs) -> Result<(u16, String), RequestError> {
    let io = |source| RequestError::Io {
        host: a.host.clone(),
        source,
    };
    let password =
        std::fs::read_to_string(&a.password_file).map_err(|source| RequestError::PasswordFile {
            path: a.password_file.clone(),
            source,
        })?;
    let password = password.trim_end_matches(['\r', '\n']);
    let verify = match &a.ca {
        Some(p) => tls::ClientVerify::CaFile(p.clone()),
        None => tls::ClientVerify::WebPkiRoots,
    };
    let config = tls::ClientTlsConfig::new(verify).build()?;
    let host_part = match a.host.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => a.host.as_str(),
    };
    let name = a.server_name.as_deref().unwrap_or(host_part).to_string();
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| RequestError::ServerName(name.clone()))?;
    let tcp = TcpStream::connect(&a.host).map_err(io)?;
    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT * 4));
    let _ = tcp.set_write_timeout(Some(IO_TIMEOUT));
    let conn = rustls::ClientConnection::new(config, server_name)?;
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
        .map_err(io)?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(RequestError::MalformedResponse)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(RequestError::MalformedStatus)?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adminauth::AdminUser;

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
