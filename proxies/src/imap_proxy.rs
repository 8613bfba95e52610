//! The IMAP proxy driver (`proxyimap`, spec 6): the not-authenticated state answered
//! locally by [`ImapLogin`], then a relay to the user's mailstore.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use shard::io::{TcpListener, TcpStream};

use crate::backend::{backend_user, imap_login};
use crate::conn::{greeted, ClientConn, Inbuf};
use crate::imap_login::{ImapLogin, GREETING};
use crate::login_driver::{refuse, until_login};
use crate::relay::hand_over;
use crate::{accept_loop, authorize, log_line, mailstore, ProxyContext, Refusal, Service};

/// Said before closing a connection that sent nothing for the command timeout, or a
/// logged-in session idle for `DATA_TIMEOUT` (spec 6).
const IDLE_BYE: &[u8] = b"* BYE Disconnected for inactivity.\r\n";

/// Serve IMAP proxy connections from `listener` until `stop` resolves (then stop
/// accepting; sessions in progress continue). Runs on a shard (inside `shard::io::run`).
pub async fn serve_imap_proxy(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "proxyimap", false, session).await
}

/// [`serve_imap_proxy`] with implicit TLS (port 993, RFC 8314). Needs
/// [`ProxyContext::tls`]; without it connections are closed at once.
pub async fn serve_imaps_proxy(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "proxyimap", true, session).await
}

async fn session(s: TcpStream, peer: SocketAddr, ctx: Rc<ProxyContext>, implicit_tls: bool) {
    let Some(mut s) = greeted(ClientConn::Plain(s), &ctx, implicit_tls, GREETING).await else {
        return;
    };
    let mut cfg = ctx.config.imap_login(peer.ip());
    cfg.starttls = ctx.tls.is_some();
    let mut core = ImapLogin::new(cfg, implicit_tls);
    let mut inb = Inbuf::new();
    loop {
        let Some((conn, rest, c)) = until_login(&ctx, s, inb, &mut core, IDLE_BYE).await else {
            return;
        };
        (s, inb) = (conn, rest);
        match login(&ctx, &c.user, &c.password, peer).await {
            Ok((backend, user, store)) => {
                let reply = core.accepted(backend.capability.as_deref());
                hand_over(
                    &ctx,
                    s,
                    inb,
                    backend,
                    reply,
                    &user,
                    peer,
                    store,
                    Service::Imap,
                    IDLE_BYE,
                )
                .await;
                return;
            }
            Err(why) => {
                if !refuse(&mut s, &mut core, why).await {
                    return;
                }
            }
        }
    }
}

/// Verify, find the mailstore and log in there.
async fn login(
    ctx: &ProxyContext,
    user: &str,
    password: &str,
    peer: SocketAddr,
) -> Result<(crate::backend::Backend, Rc<lookup::User>, SocketAddr), Refusal> {
    let u = authorize(ctx, user, password, Service::Imap).await?;
    let Some(addr) = mailstore(ctx, &u, Service::Imap).await? else {
        log_line(
            ctx,
            format_args!(
                "proxyimap: WARN: no mailstore for {} and no IMAP_BACKEND",
                u.email()
            ),
        );
        return Err(Refusal::Unavailable);
    };
    let login_name = backend_user(ctx, &u, peer);
    let cfg = &ctx.config;
    match imap_login(
        addr,
        &login_name,
        password,
        cfg.connect_timeout,
        cfg.command_timeout,
    )
    .await
    {
        Ok(b) => Ok((b, u, addr)),
        Err(e) => {
            log_line(ctx, format_args!("proxyimap: WARN: {e}"));
            Err(e.refusal())
        }
    }
}
