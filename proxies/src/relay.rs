//! Relaying a logged-in session both ways until either side closes or the session idles.
//!
//! Two pumps run concurrently on the same task, each with its own owned buffer, because a
//! mailstore may speak at any time (IMAP IDLE, EXISTS updates) while the client is silent.
//! Neither pump's read is ever cancelled while the other works (on io_uring a cancelled
//! read can lose the bytes it received); only the end of the whole relay drops them.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use shard::io::TcpStream;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::conn::{write, ClientConn, Inbuf};
use crate::{log_line, logged_in, ProxyContext, Service};

/// Bytes read per socket read while relaying, at first and again after a quiet spell: most
/// of a session's life is idle (IMAP IDLE, a client between commands) with a read pending,
/// and on io_uring that read owns its buffer, so thousands of idle sessions must hold small
/// ones.
const RELAY_BUF: usize = 16 * 1024;
/// Largest read buffer, reached by doubling while reads fill the buffer (a large FETCH or
/// RETR streaming): fewer, larger reads and writes.
const RELAY_BUF_MAX: usize = 256 * 1024;
/// A read shorter than this lets a grown buffer shrink back to [`RELAY_BUF`].
const RELAY_QUIET: usize = 4 * 1024;

/// After the mailstore accepted the login: sends the client our OK `reply` followed by
/// whatever the mailstore already sent after its own login reply, passes on the commands the
/// client pipelined after its login (they belong to the mailstore), logs the login, relays
/// until either side closes or the session idles (sending `idle_bye` to the client then),
/// and logs the logout (`store`: the mailstore's address).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn hand_over(
    ctx: &ProxyContext,
    mut client: ClientConn,
    mut inb: Inbuf,
    mut backend: Backend,
    mut reply: Vec<u8>,
    user: &lookup::User,
    peer: SocketAddr,
    store: SocketAddr,
    service: Service,
    idle_bye: &[u8],
) {
    reply.extend_from_slice(&backend.leftover);
    if write(&mut client, reply).await.is_err() {
        return;
    }
    if write(&mut backend.stream, inb.take()).await.is_err() {
        return;
    }
    logged_in(ctx, user, peer, service, &store.to_string()).await;
    let end = relay(
        Rc::new(client),
        Rc::new(backend.stream),
        ctx.config.idle_timeout,
        idle_bye,
    )
    .await;
    log_line(
        ctx,
        format_args!(
            "{}: INFO: LOGOUT user={}, ip=[{}], mailstore=[{store}]{}",
            service.name(),
            user.email(),
            peer.ip(),
            if end == RelayEnd::Idle { " (idle)" } else { "" }
        ),
    );
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// One side closed and the other finished.
    Closed,
    /// No traffic for the idle timeout.
    Idle,
}

/// One side of a relay, usable from both pumps at once through `&self`.
trait Side {
    async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>);
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>);
    async fn shutdown_write(&self);
}

impl Side for TcpStream {
    async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        TcpStream::read(self, buf).await
    }
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        TcpStream::write_all(self, buf).await
    }
    async fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Side for ClientConn {
    async fn read(&self, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
        self.read_shared(buf).await
    }
    async fn write_all(&self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        self.write_shared(buf).await
    }
    async fn shutdown_write(&self) {
        ClientConn::shutdown_write(self).await
    }
}

/// Copy `from` → `to` until end of file or an error; then end the write side of `to`, so
/// the peer sees the close. Every successful read marks activity. The buffer grows while
/// reads fill it and shrinks after a short read (see [`RELAY_BUF`]).
async fn pump(from: &impl Side, to: &impl Side, active: &Cell<Instant>) {
    let mut buf = Vec::with_capacity(RELAY_BUF);
    loop {
        buf.clear();
        let cap = buf.capacity();
        let (r, b) = from.read(buf).await;
        buf = b;
        let n = match r {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        active.set(Instant::now());
        let (r, b) = to.write_all(buf).await;
        buf = b;
        if r.is_err() {
            break;
        }
        active.set(Instant::now());
        if n >= cap && cap < RELAY_BUF_MAX {
            buf = Vec::with_capacity((cap * 2).min(RELAY_BUF_MAX));
        } else if n < RELAY_QUIET && buf.capacity() > RELAY_BUF {
            buf = Vec::with_capacity(RELAY_BUF);
        }
    }
    to.shutdown_write().await;
}

/// Relay between `client` and `backend`. `bye` is written to the client when the session
/// ends for inactivity.
pub(crate) async fn relay(
    client: Rc<ClientConn>,
    backend: Rc<TcpStream>,
    idle: Duration,
    bye: &[u8],
) -> RelayEnd {
    let active = Cell::new(Instant::now());
    let both = async {
        tokio::join!(
            pump(&*client, &*backend, &active),
            pump(&*backend, &*client, &active)
        )
    };
    let watch = async {
        loop {
            let deadline = active.get() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let end = tokio::select! {
        _ = both => RelayEnd::Closed,
        _ = watch => RelayEnd::Idle,
    };
    if end == RelayEnd::Idle && !bye.is_empty() {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), client.write_shared(bye.to_vec())).await;
    }
    let _ = client.tcp().shutdown(std::net::Shutdown::Both);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    end
}
