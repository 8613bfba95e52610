//! The delivery scheduler of a shard (qmail-send's role, one per shard): it
//! opens the shard's queues and imports the drop files injected into them,
//! hands due recipients to local or remote delivery and records each outcome,
//! bounces permanent failures, and holds the mail of ETRN/ATRN domains until a
//! client turns it. Beside it live what the scheduler and the SMTP server share:
//! the per-shard handle to the user directory, the shard's metrics, and the
//! `domainqueue` routing of a message into another shard's queue.
//!
//! It never listens on a socket for clients: the binary wires it to the
//! listeners and the mesh.

pub mod deliver;
pub mod directory;
pub mod domainqueue;
pub mod inject;
pub mod metrics;
pub mod queues;
pub mod turn;
