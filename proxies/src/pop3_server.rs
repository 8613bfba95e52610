//! The POP3 server on Maildir (RFC 1939 TRANSACTION and UPDATE states, RFC 2449 CAPA and
//! response codes, RFC 3206 `SYS/TEMP`), after [`Pop3Login`] authenticated the user.
//!
//! The drop is listed once at login (new mail moved to `cur/`); messages other sessions
//! add meanwhile appear at the next login, as RFC 1939 §8 requires of a stable listing.
//! DELE only marks: files are unlinked in the UPDATE state after a clean `QUIT`, then
//! `cur/` is fsynced so the deletion is durable before `+OK`.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use shard::io::{TcpListener, TcpStream};
use tls::MaybeTls;

use crate::conn::{greeted, write, Inbuf, IntoTls, Io};
use crate::login_driver::{refuse, until_login};
use crate::maildir::{scan, MailboxLock, Message, TopCut};
use crate::pop3_login::{Pop3Event, Pop3Login, GREETING};
use crate::{accept_loop, authorize, log_line, logged_in, ProxyContext, Refusal, Service};

/// Longest command line in the TRANSACTION state (RFC 2449 §4: 255 octets with CRLF).
const MAX_LINE: usize = 512;

/// File bytes read per read when sending a message.
const CHUNK: usize = 64 * 1024;

/// Serve POP3 from the users' Maildirs on `listener` until `stop` resolves (then stop
/// accepting; sessions in progress continue). `STLS` is offered when [`ProxyContext::tls`]
/// is set.
pub async fn serve_pop3(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "pop3d", false, session).await
}

/// [`serve_pop3`] with implicit TLS (port 995, RFC 8314): the handshake comes first.
/// Without [`ProxyContext::tls`] every connection is closed at once (and logged).
pub async fn serve_pop3s(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "pop3d", true, session).await
}

async fn session(s: TcpStream, peer: SocketAddr, ctx: Rc<ProxyContext>, implicit_tls: bool) {
    if implicit_tls && ctx.tls.is_none() {
        log_line(
            &ctx,
            format_args!("pop3d: WARN: implicit TLS without a certificate"),
        );
        return;
    }
    let Some(conn) = greeted(MaybeTls::Plain(s), &ctx, implicit_tls, GREETING).await else {
        return;
    };
    let mut cfg = ctx.config.pop3_login(peer.ip());
    cfg.stls = ctx.tls.is_some();
    let mut core = Pop3Login::new(cfg, implicit_tls);
    authorization(&ctx, conn, Inbuf::new(), &mut core, peer).await
}

/// The server side of a TLS handshake within `limit`; `None` (socket shut down) when it
/// failed or timed out.
async fn start_tls(
    conn: MaybeTls,
    store: &tls::CertStore,
    limit: std::time::Duration,
) -> Option<MaybeTls> {
    let MaybeTls::Plain(tcp) = conn else {
        return None;
    };
    let _ = store.reload_if_changed();
    let mut t = match tls::TlsStream::server(tcp, store.config()) {
        Ok(t) => t,
        Err(_) => return None,
    };
    match tokio::time::timeout(limit, t.handshake()).await {
        Ok(Ok(())) => Some(MaybeTls::Tls(Box::new(t))),
        _ => {
            // See `Io::abort`: a cancelled read must not keep the socket open.
            let _ = t.get_ref().shutdown(std::net::Shutdown::Both);
            None
        }
    }
}

/// The AUTHORIZATION state of the Maildir server (also after a refused local login).
async fn authorization<S: Io + IntoTls>(
    ctx: &ProxyContext,
    mut s: S,
    mut inb: Inbuf,
    core: &mut Pop3Login,
    peer: SocketAddr,
) {
    loop {
        let Some((conn, rest, c)) = until_login(ctx, s, inb, core, b"").await else {
            return;
        };
        (s, inb) = (conn, rest);
        match authorize(ctx, &c.user, &c.password, Service::Pop3).await {
            Ok(u) => return Box::pin(local_session(ctx, s, inb, core, &u, peer)).await,
            Err(why) => {
                if !refuse(&mut s, core, why).await {
                    return;
                }
            }
        }
    }
}

impl IntoTls for MaybeTls {
    async fn into_tls(self, store: &tls::CertStore, limit: std::time::Duration) -> Option<Self> {
        start_tls(self, store, limit).await
    }
}

/// Serve an authenticated user from `pw_dir/Maildir`: lock, list, answer `+OK Logged in.`,
/// then the TRANSACTION state. A lock held elsewhere or an unreadable Maildir is a refusal
/// through `core` (and the connection continues in AUTHORIZATION, as RFC 1939 allows).
pub(crate) async fn local_session<S: Io + IntoTls>(
    ctx: &ProxyContext,
    mut s: S,
    mut inb: Inbuf,
    core: &mut Pop3Login,
    user: &lookup::User,
    peer: SocketAddr,
) {
    let maildir = user.maildir();
    let refuse = |core: &mut Pop3Login, why| match core.refused(why) {
        Pop3Event::Reply(r) => (r, false),
        Pop3Event::Close(r) => (r, true),
        _ => (Vec::new(), true),
    };
    let (out, close) = match MailboxLock::try_lock(&maildir) {
        None => refuse(core, Refusal::InUse),
        Some(lock) => match scan(&maildir) {
            Ok((msgs, moved)) => {
                if moved {
                    // Renames into cur/ must not come undone after the client saw the list.
                    let _ = shard::io::sync_dir(maildir.join("new")).await;
                    let _ = shard::io::sync_dir(maildir.join("cur")).await;
                }
                if write(&mut s, core.accepted()).await.is_err() {
                    return;
                }
                logged_in(ctx, user, peer, Service::Pop3, "local").await;
                let mut t = Transaction {
                    s: &mut s,
                    msgs,
                    maildir: &maildir,
                };
                let quit = t.run(ctx, &mut inb).await;
                drop(lock);
                log_line(
                    ctx,
                    format_args!(
                        "pop3d: INFO: LOGOUT user={}, ip=[{}]{}",
                        user.email(),
                        peer.ip(),
                        if quit {
                            ""
                        } else {
                            " (no QUIT: nothing deleted)"
                        }
                    ),
                );
                return;
            }
            Err(e) => {
                log_line(
                    ctx,
                    format_args!("pop3d: WARN: cannot list {}: {e}", maildir.display()),
                );
                (
                    b"-ERR [SYS/TEMP] Unable to open the mailbox.\r\n".to_vec(),
                    false,
                )
            }
        },
    };
    if write(&mut s, out).await.is_err() || close {
        return;
    }
    // Back to AUTHORIZATION on the same connection.
    Box::pin(authorization(ctx, s, inb, core, peer)).await
}

/// A TRANSACTION-state command (RFC 1939 §5, RFC 2449 CAPA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Stat,
    List(Option<usize>),
    Uidl(Option<usize>),
    Retr(usize),
    Top(usize, u64),
    Dele(usize),
    Noop,
    Rset,
    Quit,
    Capa,
}

/// Parse a command line; `Err` carries the `-ERR` text.
pub(crate) fn parse_command(line: &[u8]) -> Result<Command, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "Invalid command.")?;
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let cmd = words.next().ok_or("Empty command.")?.to_ascii_uppercase();
    let args: Vec<&str> = words.collect();
    let num = |s: &str| -> Result<usize, &'static str> {
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("Invalid message number."),
        }
    };
    let c = match (cmd.as_str(), args.as_slice()) {
        ("STAT", []) => Command::Stat,
        ("LIST", []) => Command::List(None),
        ("LIST", [n]) => Command::List(Some(num(n)?)),
        ("UIDL", []) => Command::Uidl(None),
        ("UIDL", [n]) => Command::Uidl(Some(num(n)?)),
        ("RETR", [n]) => Command::Retr(num(n)?),
        ("TOP", [n, l]) => Command::Top(num(n)?, l.parse().map_err(|_| "Invalid line count.")?),
        ("DELE", [n]) => Command::Dele(num(n)?),
        ("NOOP", []) => Command::Noop,
        ("RSET", []) => Command::Rset,
        ("QUIT", []) => Command::Quit,
        ("CAPA", []) => Command::Capa,
        (
            "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "NOOP" | "RSET" | "QUIT" | "CAPA",
            _,
        ) => return Err("Invalid arguments."),
        ("USER" | "PASS" | "AUTH" | "STLS" | "APOP", _) => return Err("Already logged in."),
        _ => return Err("Unknown command."),
    };
    Ok(c)
}

struct Transaction<'a, S> {
    s: &'a mut S,
    msgs: Vec<Message>,
    maildir: &'a std::path::Path,
}

impl<S: Io> Transaction<'_, S> {
    /// Returns true after a clean QUIT.
    async fn run(&mut self, ctx: &ProxyContext, inb: &mut Inbuf) -> bool {
        loop {
            let line = match inb.line(self.s, MAX_LINE, ctx.config.idle_timeout).await {
                Ok(l) => l,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        let _ = write(self.s, b"-ERR Line too long.\r\n".to_vec()).await;
                    }
                    return false;
                }
            };
            let cmd = match parse_command(&line) {
                Ok(c) => c,
                Err(why) => {
                    if write(self.s, format!("-ERR {why}\r\n").into_bytes())
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    continue;
                }
            };
            let ok = match cmd {
                Command::Quit => {
                    let r = self.update().await;
                    let _ = write(self.s, r).await;
                    self.s.close().await;
                    return true;
                }
                Command::Retr(n) => self.send_message(n, None).await,
                Command::Top(n, l) => self.send_message(n, Some(l)).await,
                other => {
                    let r = self.answer(other);
                    write(self.s, r).await.is_ok()
                }
            };
            if !ok {
                return false;
            }
        }
    }

    fn get(&self, n: usize) -> Result<&Message, Vec<u8>> {
        match self.msgs.get(n.wrapping_sub(1)) {
            None => Err(b"-ERR No such message.\r\n".to_vec()),
            Some(m) if m.deleted => Err(b"-ERR Message already deleted.\r\n".to_vec()),
            Some(m) => Ok(m),
        }
    }

    fn answer(&mut self, cmd: Command) -> Vec<u8> {
        let live = || self.msgs.iter().enumerate().filter(|(_, m)| !m.deleted);
        match cmd {
            Command::Stat => {
                let (n, size) = live().fold((0u64, 0u64), |(n, s), (_, m)| (n + 1, s + m.size));
                format!("+OK {n} {size}\r\n").into_bytes()
            }
            Command::List(None) | Command::Uidl(None) => {
                let mut out = b"+OK\r\n".to_vec();
                for (i, m) in live() {
                    let v = match cmd {
                        Command::List(_) => m.size.to_string(),
                        _ => m.uid.clone(),
                    };
                    out.extend_from_slice(format!("{} {v}\r\n", i + 1).as_bytes());
                }
                out.extend_from_slice(b".\r\n");
                out
            }
            Command::List(Some(n)) => match self.get(n) {
                Ok(m) => format!("+OK {n} {}\r\n", m.size).into_bytes(),
                Err(e) => e,
            },
            Command::Uidl(Some(n)) => match self.get(n) {
                Ok(m) => format!("+OK {n} {}\r\n", m.uid).into_bytes(),
                Err(e) => e,
            },
            Command::Dele(n) => match self.get(n) {
                Ok(_) => {
                    self.msgs[n - 1].deleted = true;
                    format!("+OK Message {n} deleted.\r\n").into_bytes()
                }
                Err(e) => e,
            },
            Command::Rset => {
                for m in &mut self.msgs {
                    m.deleted = false;
                }
                let n = self.msgs.len();
                format!("+OK Maildrop has {n} messages.\r\n").into_bytes()
            }
            Command::Noop => b"+OK\r\n".to_vec(),
            Command::Capa => b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n\
                PIPELINING\r\nIMPLEMENTATION indimail-rs\r\n.\r\n"
                .to_vec(),
            Command::Quit | Command::Retr(_) | Command::Top(..) => {
                b"-ERR Internal error.\r\n".to_vec()
            }
        }
    }

    /// RETR / TOP: the file streamed through [`TopCut`] and the dot-stuffer. Returns false when the
    /// connection is gone (or broken mid-message, which can only end the session).
    async fn send_message(&mut self, n: usize, top: Option<u64>) -> bool {
        let m = match self.get(n) {
            Ok(m) => m.clone(),
            Err(e) => return write(self.s, e).await.is_ok(),
        };
        let mut opts = shard::io::OpenOptions::new();
        opts.read(true);
        let f = match shard::io::File::open(&m.path, &opts).await {
            Ok(f) => f,
            Err(_) => {
                return write(
                    self.s,
                    b"-ERR [SYS/TEMP] Message is no longer available.\r\n".to_vec(),
                )
                .await
                .is_ok()
            }
        };
        let mut out = match top {
            None => format!("+OK {} octets\r\n", m.size).into_bytes(),
            Some(_) => b"+OK\r\n".to_vec(),
        };
        let mut cut = TopCut::new(top);
        let mut stuffer = smtp_proto::DotStuffer::new();
        let mut pos = 0u64;
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            buf.clear();
            let (r, b) = f.read_at(buf, pos).await;
            buf = b;
            let got = match r {
                Ok(0) => break,
                Ok(k) => k,
                // A read error after +OK cannot be reported in-band: end the session.
                Err(_) => return false,
            };
            pos += got as u64;
            stuffer.push(cut.cut(&buf), &mut out);
            if cut.is_done() {
                break;
            }
            if out.len() >= CHUNK {
                let (r, o) = self.s.write_all(out).await;
                if r.is_err() {
                    return false;
                }
                out = o;
                out.clear();
            }
        }
        let _ = f.close().await;
        stuffer.finish(&mut out);
        write(self.s, out).await.is_ok()
    }

    /// The UPDATE state (RFC 1939 §6): unlink what was marked, fsync `cur/`.
    async fn update(&mut self) -> Vec<u8> {
        let mut failed = 0;
        let mut removed = 0;
        for m in self.msgs.iter().filter(|m| m.deleted) {
            match std::fs::remove_file(&m.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => failed += 1,
            }
        }
        if removed > 0 && shard::io::sync_dir(self.maildir.join("cur")).await.is_err() {
            failed += 1;
        }
        if failed > 0 {
            b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n".to_vec()
        } else {
            b"+OK Bye.\r\n".to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command(b"stat"), Ok(Command::Stat));
        assert_eq!(parse_command(b"LIST 2"), Ok(Command::List(Some(2))));
        assert_eq!(parse_command(b"UIDL"), Ok(Command::Uidl(None)));
        assert_eq!(parse_command(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse_command(b"RETR 0"), Err("Invalid message number."));
        assert_eq!(parse_command(b"RETR x"), Err("Invalid message number."));
        assert_eq!(parse_command(b"TOP 1"), Err("Invalid arguments."));
        assert_eq!(parse_command(b"PASS x"), Err("Already logged in."));
        assert_eq!(parse_command(b"XYZZY"), Err("Unknown command."));
        assert_eq!(parse_command(b""), Err("Empty command."));
        assert_eq!(parse_command(b"\xff"), Err("Invalid command."));
    }
}
