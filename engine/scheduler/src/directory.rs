//! The user directory as one shard sees it: opened lazily and reopened
//! after a failure, so a database that is down when the server starts (or
//! later) turns into temporary failures (451 / deferrals, `NO [UNAVAILABLE]`
//! / `-ERR [SYS/TEMP]` at IMAP/POP3 logins) until it is back, never into
//! permanent answers.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long after a failed open the next attempt may be made.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A per-shard, lazily (re)opened [`lookup::Directory`].
pub struct DirectoryHandle {
    home: PathBuf,
    /// Routes user lookups to their home shards (several shards).
    user_home: RefCell<Option<Rc<dyn lookup::UserHome>>>,
    dir: RefCell<Option<Rc<lookup::Directory>>>,
    last_failure: Cell<Option<Instant>>,
    last_error: RefCell<String>,
    opening: tokio::sync::Mutex<()>,
}

impl DirectoryHandle {
    /// A handle for the directory of `home`; nothing is opened yet.
    pub fn new(home: PathBuf) -> DirectoryHandle {
        DirectoryHandle {
            home,
            user_home: RefCell::new(None),
            dir: RefCell::new(None),
            last_failure: Cell::new(None),
            last_error: RefCell::new(String::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// The open directory, opening it if needed; `Err` (always temporary)
    /// names why it is unavailable.
    pub async fn get(&self) -> Result<Rc<lookup::Directory>, String> {
        if let Some(d) = self.dir.borrow().as_ref() {
            return Ok(Rc::clone(d));
        }
        // One opener at a time; the others wait for its result.
        let _guard = self.opening.lock().await;
        if let Some(d) = self.dir.borrow().as_ref() {
            return Ok(Rc::clone(d));
        }
        if let Some(t) = self.last_failure.get() {
            if t.elapsed() < RETRY_AFTER {
                return Err(self.last_error.borrow().clone());
            }
        }
        match lookup::Directory::open_home(&self.home).await {
            Ok(d) => {
                if let Some(h) = self.user_home.borrow().as_ref() {
                    d.set_user_home(Rc::clone(h));
                }
                let d = Rc::new(d);
                *self.dir.borrow_mut() = Some(Rc::clone(&d));
                self.last_failure.set(None);
                Ok(d)
            }
            Err(e) => {
                let text = e.to_string();
                control::log!("warning: user directory unavailable: {text}");
                self.last_failure.set(Some(Instant::now()));
                *self.last_error.borrow_mut() = text.clone();
                Err(text)
            }
        }
    }
}

impl DirectoryHandle {
    /// Routes user lookups to their home shards (before the first `get`).
    pub fn set_user_home(&self, home: Rc<dyn lookup::UserHome>) {
        *self.user_home.borrow_mut() = Some(home);
    }

    /// The directory if it is open now (for gauges; never opens it).
    pub fn current(&self) -> Option<Rc<lookup::Directory>> {
        self.dir.borrow().clone()
    }
}

/// A question to a user's home shard, over the mesh.
pub struct UserQuestion {
    user: String,
    domain: String,
    reply: tokio::sync::oneshot::Sender<Result<lookup::SharedUser, lookup::LookupError>>,
}

/// Every user has a home shard ([`shard::home::home_shard_of_name`]) whose
/// directory cache alone holds the user's entry; the other shards ask it
/// over the mesh, so the database is asked once per user and TTL however
/// many shards there are (IndiMail's inlookup keeps one cache per host for
/// the same reason). A home that cannot be reached (stopping) is not
/// waited for: the asking shard looks the user up itself.
pub struct MeshUserHome {
    index: usize,
    senders: Vec<shard::MeshSender<UserQuestion>>,
    metrics: std::sync::Arc<crate::metrics::ShardMetrics>,
}

impl MeshUserHome {
    /// Shard `index`'s router; `senders[i]` reaches shard `i`.
    pub fn new(
        index: usize,
        senders: Vec<shard::MeshSender<UserQuestion>>,
        metrics: std::sync::Arc<crate::metrics::ShardMetrics>,
    ) -> MeshUserHome {
        MeshUserHome {
            index,
            senders,
            metrics,
        }
    }
}

impl lookup::UserHome for MeshUserHome {
    fn ask(&self, user: &str, domain: &str) -> Option<lookup::HomeAnswer> {
        let home = shard::home::home_shard_of_name(&format!("{user}@{domain}"), self.senders.len());
        if home == self.index {
            return None;
        }
        self.metrics.inc(crate::metrics::Counter::HomeQuestions);
        let tx = self.senders[home].clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let question = UserQuestion {
            user: user.to_string(),
            domain: domain.to_string(),
            reply,
        };
        Some(Box::pin(async move {
            tx.send(question).await.ok()?;
            answer.await.ok()
        }))
    }
}

/// Answers the other shards' questions about the users this shard is home
/// to, each in a task of its own (a slow database answer holds up no other).
pub async fn answer_user_questions(
    handle: Rc<DirectoryHandle>,
    mut questions: shard::MeshReceiver<UserQuestion>,
) {
    while let Some(q) = questions.recv().await {
        let handle = Rc::clone(&handle);
        tokio::task::spawn_local(async move {
            let answer = match handle.get().await {
                Ok(d) => d.shared_user(&q.user, &q.domain).await,
                Err(e) => Err(lookup::LookupError::Unavailable(e)),
            };
            let _ = q.reply.send(answer);
        });
    }
}

/// The IMAP/POP3 proxies and the POP3 server take their directory from the same lazy
/// handle: they start while the database is down and answer logins `NO [UNAVAILABLE]` /
/// `-ERR [SYS/TEMP]` until it is back.
impl proxies::DirectorySource for DirectoryHandle {
    fn directory(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Rc<lookup::Directory>, String>> + '_>,
    > {
        Box::pin(self.get())
    }
}
