//! IndiMail's `adminclient`: runs one whitelisted program on a remote `indisrvr` (the line
//! protocol of [`crate::indisrvr`], this project's or IndiMail's own) and exits with its
//! status.
//!
//! `adminclient -h host -p port -u user -P pass [-C cafile] [-n cert] [-r crl] [-m] [-v]
//! -c "command args"` (`indimail adminclient ...`, or the binary under the name
//! `adminclient`). Missing `-h`, `-p`, `-u`, `-P` are taken from `ADMIN_HOST`, `ADMIN_PORT`,
//! `ADMIN_USER`, `ADMIN_PASS`, as IndiMail's client does. The index sent is the position
//! of the command's basename in IndiMail's whitelist.
//!
//! Always TLS (this project's indisrvr speaks nothing else): the server's certificate must
//! chain to `-C cafile` (else to the public roots) and name the host of `-h`, so `-m` (match
//! the name) is always on. `-n` (client certificate) and `-r` (revocation list) are
//! accepted and not used; `-i` (forward standard input) is refused.
//!
//! Timeouts: `ADMIN_TIMEOUT` seconds (default 120) for connecting and each read of the
//! login, `TIMEOUTDATA` (default 120) for each read of the command's output.
//!
//! Exit status: the command's (`RETURNSTATUS`; a negative one as 255), 1 when the login is
//! refused (the server's line on standard error), 100 for a usage error or a command
//! outside the whitelist, 111 when the exchange failed (connection, TLS, timeout, a server
//! that closed without a status).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tls::rustls;

use crate::operations::PROGRAMS;

const USAGE: &str =
    "usage: adminclient -h host -p port -u user -P password [-C cafile] -c \"command args\"";
/// Bytes of login dialogue read before giving up on a prompt.
const MAX_PROMPT: usize = 4096;

/// The client's settings.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    host: String,
    port: u16,
    user: String,
    password: String,
    cafile: Option<PathBuf>,
    command: String,
}

/// A failure, with the exit status it maps to.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("invalid or unauthorized command {0}")]
    NotWhitelisted(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Exchange(String),
}

impl ClientError {
    fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) | ClientError::NotWhitelisted(_) => 100,
            ClientError::Refused(_) => 1,
            ClientError::Exchange(_) => 111,
        }
    }
}

/// `adminclient ARGS` (without argv0): the remote command's exit status.
pub fn main(argv: &[String]) -> i32 {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let result = parse_args(argv, &env).and_then(|a| {
        let index = whitelist_index(&a.command)?;
        exchange(&a, index)
    });
    match result {
        Ok(status) => status,
        Err(e) => {
            eprintln!("adminclient: {e}");
            e.exit_code()
        }
    }
}

fn parse_args(argv: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Args, ClientError> {
    let usage = |m: String| ClientError::Usage(m);
    let (mut host, mut port, mut user, mut password) = (None, None, None, None);
    let (mut cafile, mut command) = (None, None);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let flag = a.as_str();
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match flag {
            "-h" => host = Some(value()?),
            "-p" => port = Some(value()?),
            "-u" => user = Some(value()?),
            "-P" => password = Some(value()?),
            "-c" => command = Some(value()?),
            "-C" => cafile = Some(PathBuf::from(value()?)),
            // Client certificate and revocation list: this server authenticates by password.
            "-n" | "-r" => drop(value()?),
            // The certificate's name is always checked.
            "-m" | "-v" => {}
            "-i" => {
                return Err(usage(
                    "-i (standard input to the command) is not supported".into(),
                ))
            }
            other => return Err(usage(format!("unknown option {other}"))),
        }
    }
    let need = |v: Option<String>, flag: &str, var: &str| {
        v.or_else(|| env(var))
            .ok_or_else(|| usage(format!("missing {flag} (or {var})")))
    };
    let host = need(host, "-h host", "ADMIN_HOST")?;
    let port = need(port, "-p port", "ADMIN_PORT")?;
    let port = port
        .parse()
        .map_err(|_| usage(format!("-p {port}: not a port")))?;
    let user = need(user, "-u user", "ADMIN_USER")?;
    let password = need(password, "-P password", "ADMIN_PASS")?;
    let command = command.ok_or_else(|| usage("missing -c \"command args\"".into()))?;
    Ok(Args {
        host,
        port,
        user,
        password,
        cafile,
        command,
    })
}

/// The whitelist index of the command's program (its first word's basename).
fn whitelist_index(command: &str) -> Result<usize, ClientError> {
    let first = command.split_whitespace().next().unwrap_or("");
    let base = Path::new(first)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    PROGRAMS
        .iter()
        .position(|p| *p == base)
        .ok_or_else(|| ClientError::NotWhitelisted(command.to_string()))
}

fn secs_from_env(var: &str) -> Duration {
    Duration::from_secs(crate::adminauth::env_num(var, 120).max(1))
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn exchange(a: &Args, index: usize) -> Result<i32, ClientError> {
    let mut tls = connect(a)?;
    let io = |e: std::io::Error| ClientError::Exchange(format!("{}:{}: {e}", a.host, a.port));
    let mut got = String::new();
    read_until(&mut tls, &mut got, "Login: ").map_err(io)?;
    send(&mut tls, &format!("{}\n", a.user)).map_err(io)?;
    read_until(&mut tls, &mut got, "Password: ").map_err(io)?;
    send(&mut tls, &format!("{}\n", a.password)).map_err(io)?;
    read_until(&mut tls, &mut got, "\n").map_err(io)?;
    if got.trim_end() != "OK" {
        return Err(ClientError::Refused(got.trim_end().to_string()));
    }
    // The command line, then the empty line the server waits for once it has run.
    send(&mut tls, &format!("{index} {}\n\n", a.command)).map_err(io)?;
    let _ = tls
        .sock
        .set_read_timeout(Some(secs_from_env("TIMEOUTDATA")));
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // A peer that closes without close_notify after its last line.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => {
            let _ = std::io::stdout().write_all(&out);
            return Err(io(e));
        }
    }
    let (text, status) = split_status(&out);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text);
    let _ = stdout.flush();
    match status {
        Some(s) if (0..=255).contains(&s) => Ok(s),
        Some(_) => Ok(255),
        None => Err(ClientError::Exchange(
            "the server closed without RETURNSTATUS".into(),
        )),
    }
}

/// The output before the last `RETURNSTATUS<n>`, and `n`.
fn split_status(out: &[u8]) -> (&[u8], Option<i32>) {
    const TAG: &[u8] = b"RETURNSTATUS";
    let Some(at) = out.windows(TAG.len()).rposition(|w| w == TAG) else {
        return (out, None);
    };
    let rest = String::from_utf8_lossy(&out[at + TAG.len()..]);
    let status = rest.trim().parse().ok();
    (&out[..at], status)
}

fn connect(a: &Args) -> Result<Tls, ClientError> {
    let timeout = secs_from_env("ADMIN_TIMEOUT");
    let fail = |e: String| ClientError::Exchange(format!("{}:{}: {e}", a.host, a.port));
    let addrs = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?;
    let mut last = "no address".to_string();
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let tcp = tcp.ok_or_else(|| fail(last))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let verify = match &a.cafile {
        Some(p) => tls::ClientVerify::CaFile(p.clone()),
        None => tls::ClientVerify::WebPkiRoots,
    };
    let config = tls::ClientTlsConfig::new(verify)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let name = a.host.trim_start_matches('[').trim_end_matches(']');
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|_| fail(format!("bad server name {name}")))?;
    let conn =
        rustls::ClientConnection::new(config, server_name).map_err(|e| fail(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| fail(format!("TLS: {e}")))?;
    }
    Ok(tls)
}

fn send(tls: &mut Tls, text: &str) -> std::io::Result<()> {
    tls.write_all(text.as_bytes())?;
    tls.flush()
}

/// Reads until what arrived since the last call ends with `end` (a prompt or a line end);
/// `got` holds it.
fn read_until(tls: &mut Tls, got: &mut String, end: &str) -> std::io::Result<()> {
    got.clear();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the prompt may be swallowed (it is not the server's turn).
    while !raw.ends_with(end.as_bytes()) {
        if raw.len() > MAX_PROMPT {
            return Err(std::io::Error::other(format!("no {end:?} from the server")));
        }
        match tls.read(&mut byte)? {
            0 => {
                *got = String::from_utf8_lossy(&raw).into_owned();
                // A refusal is a line and a close: say what the server said.
                return if got.is_empty() || end != "\n" {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("closed by the server: {}", got.trim_end()),
                    ))
                } else {
                    Ok(())
                };
            }
            _ => raw.push(byte[0]),
        }
    }
    *got = String::from_utf8_lossy(&raw).into_owned();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments_and_environment() {
        let no_env = |_: &str| None;
        let a = parse_args(
            &s(&[
                "-h",
                "mx1",
                "-p",
                "4000",
                "-u",
                "admin",
                "-P",
                "pw",
                "-n",
                "c.pem",
                "-m",
                "-C",
                "ca.pem",
                "-c",
                "vadduser a@b pw",
            ]),
            &no_env,
        )
        .unwrap();
        assert_eq!(
            a,
            Args {
                host: "mx1".into(),
                port: 4000,
                user: "admin".into(),
                password: "pw".into(),
                cafile: Some("ca.pem".into()),
                command: "vadduser a@b pw".into(),
            }
        );
        let env = |k: &str| match k {
            "ADMIN_HOST" => Some("h".to_string()),
            "ADMIN_PORT" => Some("1".to_string()),
            "ADMIN_USER" => Some("u".to_string()),
            "ADMIN_PASS" => Some("p".to_string()),
            _ => None,
        };
        assert_eq!(
            parse_args(&s(&["-c", "vuserinfo a@b"]), &env).unwrap().host,
            "h"
        );
        for (bad, why) in [
            (&["-c", "x"][..], "missing -h host (or ADMIN_HOST)"),
            (&["-h", "h", "-p", "x", "-c", "x"], "-p x: not a port"),
            (&["-h"], "-h needs a value"),
            (&["-z"], "unknown option -z"),
            (&["-i"], "-i (standard input"),
        ] {
            let e = parse_args(&s(bad), &no_env).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
            assert_eq!(e.exit_code(), 100);
        }
    }

    #[test]
    fn index_from_the_basename() {
        assert_eq!(whitelist_index("vadduser a@b pw").unwrap(), 0);
        assert_eq!(whitelist_index(" /usr/sbin/vuserinfo a@b").unwrap(), 7);
        assert_eq!(whitelist_index("updatefile x").unwrap(), 43);
        assert_eq!(whitelist_index("rm -rf /").unwrap_err().exit_code(), 100);
        assert!(whitelist_index("").is_err());
    }

    #[test]
    fn status_at_the_end() {
        assert_eq!(
            split_status(b"name: a@b\nRETURNSTATUS0\n"),
            (&b"name: a@b\n"[..], Some(0))
        );
        assert_eq!(split_status(b"RETURNSTATUS-1"), (&b""[..], Some(-1)));
        assert_eq!(split_status(b"oops\n"), (&b"oops\n"[..], None));
        // The last one counts: a command may print the word itself.
        assert_eq!(
            split_status(b"RETURNSTATUS9\nRETURNSTATUS2\n"),
            (&b"RETURNSTATUS9\n"[..], Some(2))
        );
    }
}
