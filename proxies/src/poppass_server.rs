//! The poppassd driver (`qmail-poppass.106`, spec 8.2): [`Poppass`] over a socket, the old
//! password checked like a POP3 login ([`authorize`]: same directory check, same
//! `BADLOGINS` limit), the new one stored with [`lookup::Directory::set_password`].

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use shard::io::{TcpListener, TcpStream};

use crate::conn::{greeted, write, ClientConn, Inbuf};
use crate::poppass::{Poppass, PoppassConfig, PoppassEvent, PoppassRefusal};
use crate::{accept_loop, authorize, log_line, ProxyContext, Refusal, Service};

/// Serve poppassd connections from `listener` until `stop` resolves (then stop accepting;
/// sessions in progress continue).
pub async fn serve_poppass(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "poppassd", false, session).await
}

/// [`serve_poppass`] with implicit TLS. Needs [`ProxyContext::tls`]; without it connections
/// are closed at once.
pub async fn serve_poppasss(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "poppassd", true, session).await
}

async fn session(s: TcpStream, peer: SocketAddr, ctx: Rc<ProxyContext>, implicit_tls: bool) {
    let greeting = Poppass::greeting(&ctx.config.hostname);
    let Some(mut s) = greeted(ClientConn::Plain(s), &ctx, implicit_tls, &greeting).await else {
        return;
    };
    let cfg = PoppassConfig {
        max_bad_logins: ctx.config.max_bad_logins,
        command_timeout: ctx.config.command_timeout,
        plaintext_without_tls: ctx.config.plaintext_allowed(peer.ip()),
        ..PoppassConfig::default()
    };
    let mut core = Poppass::new(cfg, implicit_tls);
    let mut inb = Inbuf::new();
    // The account whose old password was verified (NEWPASS changes this one).
    let mut verified: Option<Rc<lookup::User>> = None;
    loop {
        let (n, ev) = core.feed(inb.pending());
        inb.consume(n);
        let ev = match ev {
            PoppassEvent::NeedMore => {
                match inb.fill_within(&mut s, core.config().command_timeout).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            PoppassEvent::Verify { user, password } => {
                let r = verify(&ctx, &user, &password, peer).await;
                verified = r.as_ref().ok().cloned();
                core.verified(r.map(|_| ()))
            }
            PoppassEvent::Change { new_password, .. } => {
                let r = match verified.as_deref() {
                    Some(u) => change(&ctx, u, &new_password, peer).await,
                    None => Err(PoppassRefusal::BadPassword),
                };
                if !matches!(r, Err(PoppassRefusal::BadNewPassword(_))) {
                    verified = None;
                }
                core.changed(r)
            }
            ev => ev,
        };
        match ev {
            PoppassEvent::Reply(r) => {
                if write(&mut s, r).await.is_err() {
                    return;
                }
            }
            PoppassEvent::Close(r) => {
                let _ = write(&mut s, r).await;
                return;
            }
            _ => return,
        }
    }
}

/// The old password, checked as a POP3 login is; the account must be allowed to change it.
async fn verify(
    ctx: &ProxyContext,
    user: &str,
    password: &str,
    peer: SocketAddr,
) -> Result<Rc<lookup::User>, PoppassRefusal> {
    let r = authorize(ctx, user, password, Service::Poppass).await;
    let refusal = match r {
        Ok(u) => return Ok(u),
        Err(Refusal::AuthFailed) => PoppassRefusal::BadPassword,
        Err(Refusal::Disabled) => PoppassRefusal::NotAllowed,
        Err(_) => PoppassRefusal::TempFail,
    };
    log_refusal(ctx, user, peer, &refusal);
    Err(refusal)
}

async fn change(
    ctx: &ProxyContext,
    user: &lookup::User,
    new_password: &str,
    peer: SocketAddr,
) -> Result<(), PoppassRefusal> {
    let email = user.email();
    let dir = match ctx.directory.directory().await {
        Ok(d) => d,
        Err(e) => {
            log_line(
                ctx,
                format_args!("poppassd: WARN: directory unavailable: {e}"),
            );
            return Err(PoppassRefusal::TempFail);
        }
    };
    let r = match dir.set_password(&email, new_password).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(PoppassRefusal::BadPassword),
        Err(
            e @ (lookup::LookupError::InvalidPassword(_)
            | lookup::LookupError::PasswordTooLong { .. }),
        ) => Err(PoppassRefusal::BadNewPassword(format!(
            "New password refused: {e}."
        ))),
        Err(e) => {
            log_line(
                ctx,
                format_args!("poppassd: WARN: password not stored: {e}"),
            );
            Err(PoppassRefusal::TempFail)
        }
    };
    match &r {
        Ok(()) => {
            log_line(
                ctx,
                format_args!(
                    "poppassd: INFO: password changed user={email}, ip=[{}]",
                    peer.ip()
                ),
            );
            // The `pass` row `user passwd` writes too.
            if let Err(e) = dir.record_lastauth(user, "pass", peer.ip()).await {
                log_line(
                    ctx,
                    format_args!("poppassd: WARN: lastauth row not recorded: {e}"),
                );
            }
        }
        Err(why) => log_refusal(ctx, &email, peer, why),
    }
    r
}

fn log_refusal(ctx: &ProxyContext, user: &str, peer: SocketAddr, why: &PoppassRefusal) {
    let reason = match why {
        PoppassRefusal::BadPassword => "bad old password",
        PoppassRefusal::NotAllowed => "password change not allowed",
        PoppassRefusal::TempFail => "temporary failure",
        PoppassRefusal::BadNewPassword(_) => "new password not acceptable",
    };
    // The name as the client gave it, printable only (it goes into a log line).
    let user: String = user
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    log_line(
        ctx,
        format_args!(
            "poppassd: WARN: password change refused user={user}, ip=[{}], reason={reason}",
            peer.ip()
        ),
    );
}
