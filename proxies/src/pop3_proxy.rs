//! The POP3 proxy driver (`proxypop3`, spec 6): the AUTHORIZATION state answered locally
//! by [`Pop3Login`], then a relay to the user's mailstore, or the local Maildir server when
//! the user has no mailstore and no default backend is configured.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;

use shard::io::{TcpListener, TcpStream};

use crate::backend::{backend_user, pop3_login, Backend};
use crate::conn::{greeted, ClientConn, Inbuf};
use crate::login_driver::{refuse, until_login};
use crate::pop3_login::{Pop3Login, GREETING};
use crate::pop3_server::local_session;
use crate::relay::hand_over;
use crate::{accept_loop, authorize, log_line, mailstore, ProxyContext, Refusal, Service};

/// Serve POP3 proxy connections from `listener` until `stop` resolves (then stop
/// accepting; sessions in progress continue).
pub async fn serve_pop3_proxy(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "proxypop3", false, session).await
}

/// [`serve_pop3_proxy`] with implicit TLS (port 995, RFC 8314). Needs
/// [`ProxyContext::tls`]; without it connections are closed at once.
pub async fn serve_pop3s_proxy(
    listener: TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
) {
    accept_loop(listener, ctx, stop, "proxypop3", true, session).await
}

enum Target {
    Remote(Backend, SocketAddr),
    Local,
}

async fn session(s: TcpStream, peer: SocketAddr, ctx: Rc<ProxyContext>, implicit_tls: bool) {
    let Some(mut s) = greeted(ClientConn::Plain(s), &ctx, implicit_tls, GREETING).await else {
        return;
    };
    let mut cfg = ctx.config.pop3_login(peer.ip());
    cfg.stls = ctx.tls.is_some();
    let mut core = Pop3Login::new(cfg, implicit_tls);
    let mut inb = Inbuf::new();
    loop {
        let Some((conn, rest, c)) = until_login(&ctx, s, inb, &mut core, b"").await else {
            return;
        };
        (s, inb) = (conn, rest);
        match login(&ctx, &c.user, &c.password, peer).await {
            Ok((Target::Remote(b, store), u)) => {
                let reply = core.accepted();
                hand_over(&ctx, s, inb, b, reply, &u, peer, store, Service::Pop3, b"").await;
                return;
            }
            Ok((Target::Local, u)) => {
                local_session(&ctx, s, inb, &mut core, &u, peer).await;
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

async fn login(
    ctx: &ProxyContext,
    user: &str,
    password: &str,
    peer: SocketAddr,
) -> Result<(Target, Rc<lookup::User>), Refusal> {
    let u = authorize(ctx, user, password, Service::Pop3).await?;
    let Some(addr) = mailstore(ctx, &u, Service::Pop3).await? else {
        return Ok((Target::Local, u));
    };
    if password.contains(['\r', '\n', '\0']) {
        return Err(Refusal::AuthFailed);
    }
    let name = backend_user(ctx, &u, peer);
    let cfg = &ctx.config;
    match pop3_login(
        addr,
        &name,
        password,
        cfg.connect_timeout,
        cfg.command_timeout,
    )
    .await
    {
        Ok(b) => Ok((Target::Remote(b, addr), u)),
        Err(e) => {
            log_line(ctx, format_args!("proxypop3: WARN: {e}"));
            Err(e.refusal())
        }
    }
}
