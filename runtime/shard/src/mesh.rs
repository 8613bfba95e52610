//! Bounded shard-to-shard channels (a full mesh), built once at start-up.
//!
//! Each shard gets one receiver and a sender to every shard (itself
//! included). Channels are bounded so a slow shard pushes back on its
//! senders instead of growing memory; a failed send hands the message back
//! (`SendError`), so nothing is dropped silently.

use tokio::sync::mpsc;

/// A message could not be delivered; the message is handed back.
#[derive(Debug, thiserror::Error)]
pub enum SendError<T> {
    /// The target's channel is full right now (only from `try_send`).
    #[error("shard channel full")]
    Full(T),
    /// The target shard has stopped.
    #[error("shard stopped")]
    Closed(T),
}

impl<T> SendError<T> {
    /// The undelivered message.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Full(t) | SendError::Closed(t) => t,
        }
    }
}

/// Sends to one shard.
pub struct MeshSender<T> {
    tx: mpsc::Sender<T>,
}

impl<T> Clone for MeshSender<T> {
    fn clone(&self) -> Self {
        MeshSender {
            tx: self.tx.clone(),
        }
    }
}

impl<T> MeshSender<T> {
    /// Sends, waiting for room.
    pub async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.send(msg).await.map_err(|e| SendError::Closed(e.0))
    }

    /// Sends if there is room now.
    pub fn try_send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(t) => SendError::Full(t),
            mpsc::error::TrySendError::Closed(t) => SendError::Closed(t),
        })
    }
}

/// A shard's inbox.
pub struct MeshReceiver<T> {
    rx: mpsc::Receiver<T>,
}

impl<T> MeshReceiver<T> {
    /// The next message; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await
    }
}

/// The full mesh for `n` shards: `senders[i]` reaches shard `i`.
pub struct Mesh<T> {
    /// One sender per shard, by shard index. Clone it into every shard.
    pub senders: Vec<MeshSender<T>>,
    /// One receiver per shard, by shard index. Move each into its shard.
    pub receivers: Vec<MeshReceiver<T>>,
}

impl<T> Mesh<T> {
    /// Builds the channels, each holding at most `capacity` messages.
    pub fn new(n: usize, capacity: usize) -> Mesh<T> {
        let (senders, receivers) = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel(capacity.max(1));
                (MeshSender { tx }, MeshReceiver { rx })
            })
            .unzip();
        Mesh { senders, receivers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_hands_message_back() {
        let mesh: Mesh<u32> = Mesh::new(2, 1);
        mesh.senders[1].try_send(1).unwrap();
        match mesh.senders[1].try_send(2) {
            Err(SendError::Full(2)) => {}
            other => panic!("{other:?}"),
        }
        let Mesh { senders, receivers } = mesh;
        drop(receivers);
        assert_eq!(senders[0].try_send(3).unwrap_err().into_inner(), 3);
    }
}
