//! The login phase over a socket, shared by the IMAP proxy, the POP3 proxy and the POP3
//! server: feed the core, read within the command timeout, switch to TLS on request, until
//! the client asks to log in; then the front end verifies and answers.

use std::io;

use crate::conn::{switch_to_tls, write, Inbuf, IntoTls, Io};
use crate::login::{LoginCore, LoginEvent};
use crate::{ProxyContext, Refusal};

/// Runs `core` on `s` until the client asks to log in: returns the connection, its unread
/// input and the credentials. `None`: the connection is over (closed by either side, a
/// failed write or TLS handshake, or a timeout). `idle_bye` is said before closing a
/// connection that sent nothing within the command timeout (empty: nothing).
pub(crate) async fn until_login<S: Io + IntoTls, L: LoginCore>(
    ctx: &ProxyContext,
    mut s: S,
    mut inb: Inbuf,
    core: &mut L,
    idle_bye: &[u8],
) -> Option<(S, Inbuf, L::Credentials)> {
    loop {
        let (n, ev) = core.feed(inb.pending());
        inb.consume(n);
        let out = match ev {
            LoginEvent::NeedMore => match inb.fill_within(&mut s, core.command_timeout()).await {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let _ = write(&mut s, idle_bye.to_vec()).await;
                    return None;
                }
                Err(_) => return None,
            },
            LoginEvent::Reply(r) => r,
            LoginEvent::Close(r) => {
                let _ = write(&mut s, r).await;
                return None;
            }
            LoginEvent::StartTls(r) => {
                let limit = core.command_timeout();
                s = switch_to_tls(s, r, &mut inb, ctx.tls.as_deref(), limit).await?;
                core.tls_started();
                continue;
            }
            LoginEvent::Login(c) => return Some((s, inb, c)),
        };
        write(&mut s, out).await.ok()?;
    }
}

/// Tells the client its login was refused (`why`). False when the connection is over: the
/// core closes it (too many failures) or the reply could not be sent.
pub(crate) async fn refuse<S: Io, L: LoginCore>(s: &mut S, core: &mut L, why: Refusal) -> bool {
    match core.refused(why) {
        LoginEvent::Reply(r) => write(s, r).await.is_ok(),
        LoginEvent::Close(r) => {
            let _ = write(s, r).await;
            false
        }
        _ => false,
    }
}
