//! The accept loop of one listener: each connection is admitted, then served by a session.

use std::net::SocketAddr;
use std::rc::Rc;
use tracing::Instrument;

use shard::io::{TcpListener, TcpStream};

use crate::server::SmtpShard;
use crate::service::Service;
use control::log;

/// Accepts in flight at once on one listener of one shard. With one, a
/// shard takes at most one connection per turn of its event loop (the next
/// accept is submitted when the last one's completion has been handled), so
/// while deliveries lengthen the turns, clients that connect for every
/// message wait in the backlog for their greeting; with several, one turn
/// takes as many connections as have arrived, up to this. More is not
/// better: 32 raised the 250's p99 under smtp-source's bursts at one offered
/// load from 8-12 ms to 26-28 (loadtest/RESULTS.md).
const ACCEPTS_IN_FLIGHT: usize = 8;

/// Accepts connections until `stop` resolves.
pub async fn accept_loop(
    shard: Rc<SmtpShard>,
    listener: TcpListener,
    service: Service,
    stop: impl std::future::Future<Output = ()>,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let local = listener.local_addr().ok();
    tokio::pin!(stop);
    let mut accepts: FuturesUnordered<_> =
        (0..ACCEPTS_IN_FLIGHT).map(|_| listener.accept()).collect();
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            Some(a) = accepts.next() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::info_span!(
                    "smtp_session",
                    shard = shard.index,
                    service = service.name(),
                    ip = %peer.ip()
                );
                let shard = Rc::clone(&shard);
                tokio::task::spawn_local(
                    async move {
                        connection(shard, stream, peer, local, service).await;
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                log!("shard{} smtp accept error: {e}", shard.index);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        // The accept that ended is replaced only now: after an error, once
        // the back-off is over.
        accepts.push(listener.accept());
    }
}

/// One client, from accept to close.
async fn connection(
    shard: Rc<SmtpShard>,
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    service: Service,
) {
    // TCP_NODELAY comes from the listening socket (shard::io::bind_reuseport).
    let Some(admitted) = crate::admission::admit(&shard, &stream, peer.ip()).await else {
        return;
    };
    shard.metrics.inc(scheduler::metrics::Counter::Connections);
    crate::session::serve(shard, stream, (peer, local), service, admitted).await;
}
