//! `domainqueue` (`DOMAINQUEUE` names another file): a recipient domain's
//! mail goes into the queue its line names (spec 2.5 step 16, 1.5).
//!
//! Lines are `domain:VAR=val,...` (parsed by the `policy` crate). At RCPT the
//! assignments of each accepted recipient's line are merged, the last one
//! winning for the message, as the environment does in IndiMail; at DATA
//! they choose the message's queue: `QUEUEDIR` verbatim, else a random queue
//! `<QUEUE_BASE>/queue<N>` with N in `QUEUE_START ..< QUEUE_START +
//! QUEUE_COUNT` (the server's own values for the ones the line leaves out).
//!
//! A queue of the accepting shard is written as any message (no cost added).
//! A queue of another shard gets the message as a routed drop file (see
//! [`crate::inject`]): held in memory as it streams (queue rules applied
//! once, as always), written and fsynced off the event loop at the end of
//! DATA, before the 250; the owning shard, woken at once, imports it without
//! applying the rules again. A queue the server does not serve is refused when the
//! configuration is loaded (file and line named), so no mail is stranded.

use std::path::{Path, PathBuf};

use policy::EnvAssign;
use queue_store::{Envelope, MessageId, MessageWriter, QueueError};

use crate::queues::ShardQueues;
use control::ControlError;
use queue_layout::QueueSpec;

/// The variables that choose a queue (spec 1.5).
const QUEUE_VARS: [&str; 4] = ["QUEUEDIR", "QUEUE_BASE", "QUEUE_START", "QUEUE_COUNT"];

/// Why a `domainqueue` line (or a mix of them) names no queue this server can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainQueueError {
    /// `QUEUE_START` or `QUEUE_COUNT` is not a number.
    #[error("{name}={value} is not a number")]
    NotANumber {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// `QUEUE_COUNT` is 0 or more than the queues served.
    #[error("QUEUE_COUNT={count}: this server serves {served} queue(s)")]
    CountOutOfRange {
        /// The count asked for.
        count: u32,
        /// How many queues the server serves.
        served: usize,
    },
    /// `QUEUE_START + QUEUE_COUNT` does not fit a queue number.
    #[error("QUEUE_START={start} + QUEUE_COUNT={count} overflows")]
    Overflow {
        /// The first queue.
        start: u32,
        /// The count.
        count: u32,
    },
    /// A directory that is not one of the served queues.
    #[error("{} is not a queue this server serves (it serves {served})", dir.display())]
    NotServed {
        /// The directory named.
        dir: PathBuf,
        /// The served queues' directories, comma-separated.
        served: String,
    },
}

/// The queues `domainqueue` may name, and the server's defaults for the
/// variables a line leaves out.
#[derive(Debug, Clone, Default)]
pub struct DomainQueues {
    /// `domainqueue` has lines.
    on: bool,
    /// Every queue the server serves.
    served: Vec<QueueSpec>,
    base: PathBuf,
    start: u32,
    count: u32,
}

impl DomainQueues {
    /// Checks every `domainqueue` line against the queues of `layout`: a
    /// line naming a queue that is not served is an error naming the file
    /// and line. `None` layout (it has errors of its own, reported apart):
    /// nothing is checked, nothing is routed.
    pub fn load(
        policy: &policy::Policy,
        layout: Option<&queue_layout::Layout>,
    ) -> Result<DomainQueues, Vec<ControlError>> {
        if !policy.has_domain_queue() {
            return Ok(DomainQueues::default());
        }
        let Some(layout) = layout else {
            return Ok(DomainQueues::default());
        };
        let dq = DomainQueues {
            on: true,
            served: layout.specs(),
            base: layout.base.clone(),
            start: layout.start,
            count: layout.count,
        };
        let (file, lines) = policy.domain_queue_lines();
        let mut errors = Vec::new();
        for (line, env) in lines {
            let problem = match dq.candidates(env) {
                Ok(dirs) => dirs
                    .iter()
                    .find(|d| dq.served(d).is_none())
                    .map(|d| dq.not_served(d)),
                Err(e) => Some(e),
            };
            if let Some(problem) = problem {
                errors.push(ControlError {
                    path: file.to_path_buf(),
                    line: Some(line),
                    problem: problem.to_string(),
                });
            }
        }
        if errors.is_empty() {
            Ok(dq)
        } else {
            Err(errors)
        }
    }

    /// Whether RCPT has anything to ask (no file: no work per RCPT).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The queue a message's merged assignments choose; `Ok(None)` when
    /// they name none. `Err` only for a mix of lines no single line makes
    /// (each line was checked at load).
    pub fn resolve(&self, env: &[EnvAssign]) -> Result<Option<QueueSpec>, DomainQueueError> {
        let dirs = self.candidates(env)?;
        // Every queue of the range must be served, as the load check
        // demands of each line: the outcome does not depend on the draw.
        let served = dirs
            .iter()
            .map(|d| self.served(d).ok_or_else(|| self.not_served(d)))
            .collect::<Result<Vec<_>, _>>()?;
        if served.is_empty() {
            return Ok(None);
        }
        Ok(Some(served[random() % served.len()].clone()))
    }

    /// [`DomainQueues::resolve`] at DATA: `None` (this shard's next queue)
    /// when nothing is named, or when a mix of lines names a queue not
    /// served (logged; the message is kept here, never refused for it).
    pub fn target(&self, env: &[EnvAssign], shard: usize) -> Option<QueueSpec> {
        if env.is_empty() {
            return None;
        }
        self.resolve(env).unwrap_or_else(|why| {
            control::log!("shard{shard} domainqueue: {why}; the message stays on this shard");
            None
        })
    }

    /// The queue directories the assignments may choose among (none when
    /// they set no queue variable).
    fn candidates(&self, env: &[EnvAssign]) -> Result<Vec<PathBuf>, DomainQueueError> {
        let var = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref())
        };
        if let Some(dir) = var("QUEUEDIR") {
            return Ok(vec![PathBuf::from(dir)]);
        }
        if !QUEUE_VARS.iter().any(|v| var(v).is_some()) {
            return Ok(Vec::new());
        }
        let number = |name: &'static str, default: u32| match var(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| DomainQueueError::NotANumber {
                    name,
                    value: v.to_string(),
                }),
        };
        let start = number("QUEUE_START", self.start)?;
        let count = number("QUEUE_COUNT", self.count)?;
        if count == 0 || count as usize > self.served.len() {
            return Err(DomainQueueError::CountOutOfRange {
                count,
                served: self.served.len(),
            });
        }
        let base = var("QUEUE_BASE").map_or_else(|| self.base.clone(), PathBuf::from);
        (0..count)
            .map(|k| {
                start
                    .checked_add(k)
                    .map(|n| queue_layout::queue_path(&base, n))
                    .ok_or(DomainQueueError::Overflow { start, count })
            })
            .collect()
    }

    fn served(&self, dir: &Path) -> Option<&QueueSpec> {
        self.served.iter().find(|q| same_dir(&q.dir, dir))
    }

    fn not_served(&self, dir: &Path) -> DomainQueueError {
        let served: Vec<String> = self
            .served
            .iter()
            .map(|q| q.dir.display().to_string())
            .collect();
        DomainQueueError::NotServed {
            dir: dir.to_path_buf(),
            served: served.join(", "),
        }
    }
}

/// Same directory: equal paths (`Path` equality ignores a trailing `/`), or
/// the same inode (a symlink, `..`).
fn same_dir(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    a == b
        || matches!(
            (std::fs::metadata(a), std::fs::metadata(b)),
            (Ok(x), Ok(y)) if x.dev() == y.dev() && x.ino() == y.ino()
        )
}

fn random() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    nanos
        ^ SEQ
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9)
}

/// The assignments of a line the transaction applies besides the queue
/// (through the envrules path): all but `RELAYCLIENT`, which a recipient's
/// domain must not turn on for the recipients after it.
pub fn txn_vars(env: &[EnvAssign]) -> Vec<EnvAssign> {
    env.iter()
        .filter(|(k, _)| k != "RELAYCLIENT" && !QUEUE_VARS.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// Where a message being received goes.
pub enum Spool {
    /// One of the accepting shard's queues.
    Local(MessageWriter),
    /// Another shard's queue: the message as it will be queued, held until
    /// the end of DATA.
    Routed {
        /// The queue.
        queue: QueueSpec,
        /// The message so far.
        message: Vec<u8>,
    },
}

/// A message stored: its queue id, or the routed drop file's name.
pub enum Stored {
    /// Queued by this shard.
    Queued(MessageId),
    /// Routed (durable in `queue`'s drop directory).
    Routed {
        /// Queue number.
        queue: u32,
        /// Drop file name.
        name: String,
    },
}

impl Spool {
    /// The spool for a message routed to `target` (`None`: this shard's
    /// next queue in turn).
    pub fn begin(queues: &ShardQueues, target: Option<QueueSpec>) -> Spool {
        let Some(target) = target else {
            return Spool::Local(queues.begin());
        };
        match queues
            .all()
            .iter()
            .find(|q| q.config().queue_no == target.number)
        {
            Some(q) => Spool::Local(q.begin()),
            None => Spool::Routed {
                queue: target,
                message: Vec::new(),
            },
        }
    }

    /// Appends a piece of the message (queue form).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), QueueError> {
        match self {
            Spool::Local(w) => w.write(chunk).await,
            Spool::Routed { message, .. } => {
                message.extend_from_slice(chunk);
                Ok(())
            }
        }
    }

    /// Drops the message; nothing is left behind.
    pub async fn abort(self) {
        if let Spool::Local(w) = self {
            w.abort().await;
        }
    }

    /// Stores the message durably (`logged`: its logheaders lines, logged
    /// by whoever queues it).
    pub async fn commit(self, envelope: Envelope, logged: &[String]) -> Result<Stored, QueueError> {
        let (queue, message) = match self {
            Spool::Local(w) => return w.commit(envelope).await.map(Stored::Queued),
            Spool::Routed { queue, message } => (queue, message),
        };
        if envelope.recipients.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        let env = crate::inject::Envelope {
            sender: envelope.sender,
            recipients: envelope.recipients,
        };
        let routed = crate::inject::Routed {
            client_ip: envelope.client_ip,
            helo: envelope.helo,
            auth_user: envelope.auth_user,
            extra: envelope.extra,
            logged: logged.to_vec(),
        };
        let dir = queue.dir.clone();
        // Plain file writes and fsyncs: off the shard's event loop.
        let job = move || crate::inject::write_routed(&dir, &env, &routed, &message);
        let written = tokio::task::spawn_blocking(job)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let path = crate::inject::drop_dir(&queue.dir);
        match written {
            Ok(name) => Ok(Stored::Routed {
                queue: queue.number,
                name,
            }),
            Err(source) if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                Err(QueueError::NoSpace {
                    op: "route",
                    path,
                    source,
                })
            }
            Err(source) => Err(QueueError::Io {
                op: "route",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dq(base: &Path, numbers: &[u32]) -> DomainQueues {
        DomainQueues {
            on: true,
            served: numbers
                .iter()
                .map(|n| QueueSpec {
                    number: *n,
                    dir: queue_layout::queue_path(base, *n),
                })
                .collect(),
            base: base.to_path_buf(),
            start: 1,
            count: numbers.len() as u32,
        }
    }

    fn set(pairs: &[(&str, &str)]) -> Vec<EnvAssign> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (!v.is_empty()).then(|| v.to_string())))
            .collect()
    }

    #[test]
    fn queuedir_verbatim_else_start_and_count() {
        let d = dq(Path::new("/q"), &[1, 2]);
        let q = |env: &[(&str, &str)]| d.resolve(&set(env)).map(|q| q.map(|q| q.number));
        assert_eq!(q(&[("QUEUEDIR", "/q/queue2/")]), Ok(Some(2)));
        assert_eq!(
            q(&[("QUEUE_START", "1"), ("QUEUEDIR", "/q/queue2")]),
            Ok(Some(2)),
            "QUEUEDIR wins over the others"
        );
        assert_eq!(
            q(&[("QUEUE_START", "2"), ("QUEUE_COUNT", "1")]),
            Ok(Some(2))
        );
        assert_eq!(q(&[("DATABYTES", "10")]), Ok(None));
        assert_eq!(q(&[("QUEUEDIR", "")]), Ok(None), "QUEUEDIR= unsets");
        for _ in 0..20 {
            let n = q(&[("QUEUE_COUNT", "2")]).unwrap().unwrap();
            assert!(n == 1 || n == 2);
        }
        assert!(q(&[("QUEUEDIR", "/elsewhere/queue9")])
            .unwrap_err()
            .to_string()
            .contains("not a queue this server serves"));
        assert!(q(&[("QUEUE_START", "2")]).is_err(), "queue2..queue3");
        assert!(q(&[("QUEUE_COUNT", "x")])
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!(q(&[("QUEUE_BASE", "/other"), ("QUEUE_COUNT", "1")]).is_err());
    }

    #[test]
    fn later_recipients_win_and_txn_vars() {
        let mut env = set(&[("QUEUEDIR", "/q/queue1"), ("DATABYTES", "5")]);
        policy::merge_env(
            &mut env,
            &set(&[("QUEUEDIR", "/q/queue2"), ("RELAYCLIENT", "1")]),
        );
        assert_eq!(
            env,
            set(&[
                ("QUEUEDIR", "/q/queue2"),
                ("DATABYTES", "5"),
                ("RELAYCLIENT", "1")
            ])
        );
        assert_eq!(txn_vars(&env), set(&[("DATABYTES", "5")]));
    }
}
