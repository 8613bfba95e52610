//! The queues one shard owns, and how queues are mapped to shards.
//!
//! Which shard owns which queue is decided by the `queue-layout` crate
//! (queue `QUEUE_START + k` to shard `k % shards`, an adopted `queueN` to
//! shard `N % shards`). A message accepted by a shard goes to one of that
//! shard's own queues (round-robin when it owns several), so the commit path
//! never crosses threads; only mail `domainqueue` sends to another shard's
//! queue goes there as a drop file (see `domainqueue`).

use std::cell::Cell;
use std::rc::Rc;

use queue_store::{MessageWriter, Queue, QueueConfig, RecoveryReport};

use queue_layout::QueueSpec;

/// The open queues of one shard.
pub struct ShardQueues {
    queues: Vec<Rc<Queue>>,
    next: Cell<usize>,
    /// `<queue>/lock`, held (flock) while the queues are open.
    _locks: Vec<std::fs::File>,
    /// The queue's line processing for injected mail (set by `serve`, on
    /// reload too): the same rules SMTP applies, see
    /// [`msgproc::QueueRules::apply`].
    rules: std::cell::RefCell<Option<std::sync::Arc<msgproc::QueueRules>>>,
    /// The import wake-up of the shard owning each queue (by number, set by
    /// `serve`): mail routed into another shard's queue (see
    /// `domainqueue`) is imported at once, not at the next poll.
    wakers: std::cell::RefCell<Vec<(u32, std::sync::Arc<tokio::sync::Notify>)>>,
}

/// Present in a queue directory while `indimail import-qmail-queue` has not
/// finished: the queue is not opened until a
/// re-run completes the import, so nothing imported is delivered or deleted
/// while its original may still exist.
pub const IMPORT_MARKER: &str = "import.pending";

/// Why a shard's queue could not be opened (each names the file or directory).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `<queue>/lock` cannot be opened.
    #[error("{}: {source}", path.display())]
    LockFile {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// flock(2) failed for another reason than the lock being held.
    #[error("{}: lock: {source}", path.display())]
    Flock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the queue.
    #[error("{} is in use by another process (a running server?)", dir.display())]
    InUse {
        /// The queue directory.
        dir: std::path::PathBuf,
    },
    /// The queue directory cannot be made.
    #[error("{}: cannot create queue directory: {source}", dir.display())]
    CreateDir {
        /// The queue directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An import from a qmail queue did not finish (see [`IMPORT_MARKER`]).
    #[error(
        "{}: an `indimail import-qmail-queue` run was interrupted; run it again to \
         finish the import (or remove this file if its source queue is gone)",
        marker.display()
    )]
    ImportPending {
        /// The marker file.
        marker: std::path::PathBuf,
    },
    /// The queue itself failed to open or recover.
    #[error("{}: {source}", dir.display())]
    Queue {
        /// The queue directory.
        dir: std::path::PathBuf,
        /// Why.
        source: queue_store::QueueError,
    },
}

/// Takes the exclusive lock of a queue directory (`<queue>/lock`, flock):
/// one process at a time owns a queue (the server, or a queue tool working
/// on a stopped server). Released when the file is closed, also when the
/// process dies. `Err` names the queue when another process holds it.
pub fn lock_queue(dir: &std::path::Path) -> Result<std::fs::File, OpenError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::LockFile {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock(2) on a descriptor this function owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            OpenError::InUse {
                dir: dir.to_path_buf(),
            }
        } else {
            OpenError::Flock { path, source: e }
        });
    }
    Ok(f)
}

/// Whether another process holds the lock of the queue in `dir` (another
/// server sharing the queue base). The lock is released at once.
pub fn queue_in_use(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock(2) on a descriptor this function owns.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

impl ShardQueues {
    /// Opens (and recovers) each queue; returns the reports for logging.
    pub async fn open(
        specs: &[QueueSpec],
    ) -> Result<(ShardQueues, Vec<(QueueSpec, RecoveryReport)>), OpenError> {
        let mut queues = Vec::new();
        let mut reports = Vec::new();
        let mut locks = Vec::new();
        for spec in specs {
            std::fs::create_dir_all(&spec.dir).map_err(|source| OpenError::CreateDir {
                dir: spec.dir.clone(),
                source,
            })?;
            locks.push(lock_queue(&spec.dir)?);
            let marker = spec.dir.join(IMPORT_MARKER);
            if marker.exists() {
                return Err(OpenError::ImportPending { marker });
            }
            let config = QueueConfig::new(spec.dir.clone(), spec.number);
            let (q, report) = Queue::open(config)
                .await
                .map_err(|source| OpenError::Queue {
                    dir: spec.dir.clone(),
                    source,
                })?;
            queues.push(Rc::new(q));
            reports.push((spec.clone(), report));
        }
        Ok((
            ShardQueues {
                queues,
                next: Cell::new(0),
                _locks: locks,
                rules: Default::default(),
                wakers: Default::default(),
            },
            reports,
        ))
    }

    /// Sets the line processing applied to injected mail.
    pub fn set_rules(&self, rules: std::sync::Arc<msgproc::QueueRules>) {
        *self.rules.borrow_mut() = Some(rules);
    }

    /// Sets the import wake-ups of every queue's owner.
    pub fn set_wakers(&self, wakers: Vec<(u32, std::sync::Arc<tokio::sync::Notify>)>) {
        *self.wakers.borrow_mut() = wakers;
    }

    /// Wakes the importer of queue `number` (a drop file is waiting there).
    pub fn wake_owner(&self, number: u32) {
        if let Some((_, w)) = self.wakers.borrow().iter().find(|(n, _)| *n == number) {
            w.notify_one();
        }
    }

    /// Starts a message on the next queue in turn.
    pub fn begin(&self) -> MessageWriter {
        let i = self.next.get();
        self.next.set((i + 1) % self.queues.len());
        self.queues[i].begin()
    }

    /// The queues.
    pub fn all(&self) -> &[Rc<Queue>] {
        &self.queues
    }
}

/// Drop files older than this that are still `tmp.*` belong to an injector
/// that died; qmail's OSSIFIED (36 hours).
const OSSIFIED: std::time::Duration = std::time::Duration::from_secs(129_600);

impl ShardQueues {
    /// Imports the drop files of every queue this shard owns (see
    /// [`crate::inject`]): each is committed into its queue, then removed.
    /// Returns how many messages were imported.
    pub async fn import_drops(&self, specs: &[QueueSpec], shard: usize) -> usize {
        let mut imported = 0;
        for (i, spec) in specs.iter().enumerate().take(self.queues.len()) {
            let dir = crate::inject::drop_dir(&spec.dir);
            imported += self.import_dir(i, &dir, spec.number, shard).await;
        }
        imported
    }

    /// Imports the drop files of `dir` (the drop directory of queue
    /// `number`, this shard's or a stray one) into this shard's queue
    /// `index`. Returns how many messages were imported.
    pub async fn import_dir(
        &self,
        index: usize,
        dir: &std::path::Path,
        number: u32,
        shard: usize,
    ) -> usize {
        let Some(q) = self.queues.get(index) else {
            return 0;
        };
        let mut imported = 0;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        let mut removed = false;
        for e in names {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp.") {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > OSSIFIED);
                if old {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let drop = match crate::inject::read_drop(&bytes) {
                Ok(d) => d,
                Err(why) => {
                    // Never delete what might be mail: set it aside.
                    let bad = dir.join("bad");
                    let _ = std::fs::create_dir_all(&bad);
                    let _ = std::fs::rename(&path, bad.join(&name));
                    control::log!(
                        "shard{shard} queue{} drop file {name} set aside: {why}",
                        number
                    );
                    continue;
                }
            };
            let Some((message, env, logged)) = self.prepare(drop) else {
                // NULLQUEUE: the injector was told "queued"; nothing is kept.
                control::log!("shard{shard} blackholed injected={name} (NULLQUEUE)");
                let _ = std::fs::remove_file(&path);
                removed = true;
                continue;
            };
            let (sender, rcpts) = (env.sender.clone(), env.recipients.len());
            let mut w = q.begin();
            let committed = match w.write(&message).await {
                Ok(()) => w.commit(env).await,
                Err(e) => {
                    w.abort().await;
                    Err(e)
                }
            };
            match committed {
                Ok(id) => {
                    control::log!(
                        "shard{shard} new msg {id} bytes={} from=<{sender}> rcpts={rcpts} injected={name}",
                        message.len(),
                    );
                    if !logged.is_empty() {
                        control::log!(
                            "shard{shard} headers msg {id} {}",
                            logged.join(" | ").replace(['\n', '\r'], " ")
                        );
                    }
                    let _ = std::fs::remove_file(&path);
                    removed = true;
                    imported += 1;
                }
                Err(e) => {
                    // Leave the file: it is retried on the next pass.
                    control::log!("shard{shard} queue{} import of {name} failed: {e}", number);
                    break;
                }
            }
        }
        if removed {
            let _ = shard::io::sync_dir(dir).await;
        }
        imported
    }
}

impl ShardQueues {
    /// What a drop file is queued as: the message, its envelope and the
    /// `logheaders` lines to log; `None` for NULLQUEUE. A message routed by
    /// SMTP (`domainqueue`) went through the queue rules as it streamed in,
    /// so they are applied here only to injected mail: once either way.
    fn prepare(
        &self,
        drop: crate::inject::DropFile,
    ) -> Option<(Vec<u8>, queue_store::Envelope, Vec<String>)> {
        let sender = drop.envelope.sender;
        if let Some(r) = drop.routed {
            let mut env = queue_store::Envelope::new(sender, drop.envelope.recipients);
            env.client_ip = r.client_ip;
            env.helo = r.helo;
            env.auth_user = r.auth_user;
            env.extra = r.extra;
            return Some((drop.body, env, r.logged));
        }
        let rules = self.rules.borrow().clone();
        let processed = match &rules {
            Some(r) => r.apply(drop.envelope.recipients, &drop.body)?,
            None => msgproc::Processed {
                recipients: drop.envelope.recipients,
                message: drop.body,
                found: Default::default(),
            },
        };
        let mut env = queue_store::Envelope::new(sender, processed.recipients);
        // envheaders travel with the envelope, as from SMTP.
        env.extra.extend(processed.found.env.iter().map(|(k, v)| {
            (
                msgproc::headers::ENVELOPE_KEY.to_string(),
                format!("{k}={v}"),
            )
        }));
        Some((processed.message, env, processed.found.logged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_only_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!queue_in_use(dir.path()), "no lock file");
        let held = lock_queue(dir.path()).unwrap();
        assert!(queue_in_use(dir.path()));
        drop(held);
        assert!(!queue_in_use(dir.path()));
    }
}
