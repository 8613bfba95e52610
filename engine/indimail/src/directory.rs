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
                let d = Rc::new(d);
                *self.dir.borrow_mut() = Some(Rc::clone(&d));
                self.last_failure.set(None);
                Ok(d)
            }
            Err(e) => {
                let text = e.to_string();
                crate::log!("warning: user directory unavailable: {text}");
                self.last_failure.set(Some(Instant::now()));
                *self.last_error.borrow_mut() = text.clone();
                Err(text)
            }
        }
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
