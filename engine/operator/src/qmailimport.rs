//! `indimail import-qmail-queue DIR`: moves the messages of an existing
//! qmail / IndiMail queue (spec 1.2-1.3, 1.12-1.13) into our queues, so an
//! operator can switch over with mail still queued.
//!
//! **What is read.** `DIR` is one queue (it has `mess/`) or a queue base
//! whose subdirectories are queues (`queue1`, `queue2`, `slowq`, ...). Per
//! message `mess/S/id` (the split S and the flat or split `todo/`/`intd/`
//! are both handled):
//! * committed but not yet preprocessed (`todo/id`, state S4): the envelope
//!   `u…\0p…\0F<sender>\0T<rcpt>\0…[e…\0][h…\0]` of `todo`; every recipient
//!   is pending;
//! * preprocessed (`info/S/id`, state S5): the sender and `e`/`h` records of
//!   `info`, the `T` records of `local/S/id` and `remote/S/id` (a `D`
//!   record is finished and not imported), and `bounce/id` if present:
//!   its reports (`<rcpt>:\n<text>\n\n`) become a bounce to the sender,
//!   built and queued the way our own bounces are (a double bounce follows
//!   `doublebounceto`);
//! * anything else (`mess` alone or with `intd`, states S2-S3) was never
//!   committed: left where it is and counted (qmail deletes such files
//!   after 36 hours).
//!
//! The arrival time is the mtime of `info` (qmail's `birth`) or `todo`, so
//! `queuelifetime` counts from the original arrival. An `e` record (extra
//! header text qmail's delivery agents prepend) is prepended to the
//! message; `h` records (envheaders) travel with the envelope as ours do.
//! Local recipients were rewritten by qmail for `virtualdomains`
//! (`<prepend>-<user>@<domain>`); the prefix is removed again, using the
//! `virtualdomains` of `--control DIR` (the old control directory) when
//! given, else IndiMail's `vadddomain` convention (prepend = domain).
//!
//! **No loss, no duplicate.** Our server must be stopped: the tool takes
//! the lock of every queue of the home (the one a running server holds).
//! It first writes `import.pending` (with the source path) into each of our
//! queue directories and syncs it; while that file exists neither `serve`
//! nor the queue tools open the queue, so nothing can deliver or delete an
//! imported message before the run has finished. Each message is then
//! committed into one of our queues (round robin) with its source key
//! (queue path, id, mtime and size of `mess`) in the envelope, and only
//! after that commit is durable are the original files removed (`bounce`,
//! `local`, `remote`, `info`, `todo`, `intd`, then `mess`). A re-run after
//! a crash first collects the keys already in our queues and, for those,
//! only removes the originals. When every message is done the source
//! directories are synced and `import.pending` removed.
//!
//! qmail must not be running on `DIR` meanwhile (it would be delivering
//! the same messages); the tool cannot check that, the operator stops it.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use delivery::bounce::{self, FailedRecipient, Original};
use queue_store::{Envelope, Queue, QueueConfig};

use crate::progress::Progress;
use queue_layout::Paths;
use queue_layout::QueueSpec;
use scheduler::queues::{lock_queue, IMPORT_MARKER};

/// The envelope key recording where an imported message came from.
pub const IMPORT_KEY: &str = "qmail-import";

/// Why the import stopped (a message that cannot be read is counted bad instead).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file or directory could not be read, written or removed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A directory could not be synced after the files in it changed.
    #[error("{}: fsync: {source}", path.display())]
    Sync {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// One of this home's queues cannot be opened.
    #[error("{}: {source}", path.display())]
    Open {
        /// The queue directory.
        path: PathBuf,
        /// The queue's error.
        source: queue_store::QueueError,
    },
    /// DIR has no `mess/`, nor any subdirectory with one.
    #[error("{}: not a qmail queue (no mess/ in it or in its subdirectories)", .0.display())]
    NotAQueue(PathBuf),
    /// A message's `info` or `todo` file has no sender (`F`) record.
    #[error("{}: no F record", .0.display())]
    NoSender(PathBuf),
    /// This home's queue layout is wrong.
    #[error("{0}")]
    Layout(String),
    /// A queue of this home is held by a running server.
    #[error("{0}; stop the server before importing")]
    Locked(scheduler::queues::OpenError),
    /// The bounce settings cannot be read.
    #[error("{0}")]
    Settings(scheduler::deliver::SettingsError),
    /// The queue refused a message.
    #[error("cannot queue: {0}")]
    Queue(String),
}

impl ImportError {
    fn io(path: &Path, source: std::io::Error) -> ImportError {
        ImportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One message file of the source queue.
#[derive(Debug, Clone)]
struct Source {
    root: PathBuf,
    split: String,
    id: String,
    mess: PathBuf,
}

impl Source {
    fn at(&self, dir: &str) -> PathBuf {
        self.root.join(dir).join(&self.split).join(&self.id)
    }

    /// `todo/id` or `todo/S/id` (BIGTODO), whichever exists.
    fn flat_or_split(&self, dir: &str) -> Option<PathBuf> {
        [self.root.join(dir).join(&self.id), self.at(dir)]
            .into_iter()
            .find(|p| p.exists())
    }

    /// Every file of the message, in removal order (`mess` last).
    fn files(&self) -> Vec<PathBuf> {
        let mut v = vec![
            self.root.join("bounce").join(&self.id),
            self.at("local"),
            self.at("remote"),
            self.at("info"),
        ];
        for d in ["todo", "intd"] {
            v.push(self.root.join(d).join(&self.id));
            v.push(self.at(d));
        }
        v.push(self.mess.clone());
        v
    }

    fn key(&self) -> Result<String, ImportError> {
        let m = std::fs::metadata(&self.mess).map_err(|e| ImportError::io(&self.mess, e))?;
        Ok(format!(
            "{}:{}:{}.{}:{}",
            self.root.display(),
            self.id,
            m.mtime(),
            m.mtime_nsec(),
            m.size()
        ))
    }
}

/// What a source message holds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    sender: String,
    /// Pending recipients.
    recipients: Vec<String>,
    arrival: u64,
    /// `e` record text, prepended to the message.
    extra_headers: String,
    /// `h` records as our envheaders (`NAME=value`).
    env: Vec<String>,
    /// Permanent failures from `bounce/id` not yet reported to the sender.
    bounced: Vec<(String, String)>,
}

#[derive(Debug)]
enum State {
    Queued(Parsed),
    /// Never committed (S2/S3): left alone.
    Uncommitted,
}

fn records(bytes: &[u8]) -> impl Iterator<Item = (u8, String)> + '_ {
    bytes
        .split(|&b| b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| (r[0], String::from_utf8_lossy(&r[1..]).into_owned()))
}

fn mtime(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.mtime().max(0) as u64)
}

fn read(p: &Path) -> Result<Option<Vec<u8>>, ImportError> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImportError::io(p, e)),
    }
}

/// An `h` record's header lines as envheaders values.
fn env_values(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push(format!(
                "{}={}",
                msgproc::headers::env_var_name(name.trim()),
                value.trim()
            ));
        }
    }
    out
}

/// Parses the reports of a `bounce/id` file: `<rcpt>:\n<text>\n\n`.
fn bounce_reports(text: &str) -> Vec<(String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let block = block.trim_matches('\n');
            let (first, rest) = block.split_once('\n').unwrap_or((block, ""));
            let rcpt = first.strip_suffix(':')?.trim();
            let rcpt = rcpt.trim_start_matches('<').trim_end_matches('>');
            if rcpt.is_empty() {
                return None;
            }
            Some((rcpt.to_string(), rest.replace('\n', " ").trim().to_string()))
        })
        .collect()
}

/// Undoes qmail's `virtualdomains` rewriting of a local recipient
/// (`<prepend>-<user>@<domain>`).
fn original_address(addr: &str, vdoms: &[(String, String)]) -> String {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return addr.to_string();
    };
    let dl = domain.to_ascii_lowercase();
    let strip = |prepend: &str| -> Option<String> {
        let rest = local.strip_prefix(prepend)?.strip_prefix('-')?;
        (!rest.is_empty()).then(|| format!("{rest}@{domain}"))
    };
    for (key, prepend) in vdoms {
        if prepend.is_empty() {
            continue;
        }
        let k = key.to_ascii_lowercase();
        let applies = if let Some((_, kd)) = k.split_once('@') {
            kd == dl
        } else if k.is_empty() {
            true
        } else if k.starts_with('.') {
            dl.ends_with(&k)
        } else {
            k == dl
        };
        if applies {
            if let Some(a) = strip(prepend) {
                return a;
            }
        }
    }
    strip(domain).unwrap_or_else(|| addr.to_string())
}

fn parse(src: &Source, vdoms: &[(String, String)]) -> Result<State, ImportError> {
    let mut p = Parsed::default();
    let header = |p: &mut Parsed, kind: u8, v: String| match kind {
        b'F' => p.sender = v,
        b'e' => p.extra_headers.push_str(&v),
        b'h' => p.env.extend(env_values(&v)),
        _ => {}
    };
    if let Some(todo) = src.flat_or_split("todo") {
        let Some(bytes) = read(&todo)? else {
            return Ok(State::Uncommitted);
        };
        let mut seen_f = false;
        for (kind, v) in records(&bytes) {
            match kind {
                b'T' => p.recipients.push(v),
                b'F' => {
                    seen_f = true;
                    header(&mut p, kind, v)
                }
                _ => header(&mut p, kind, v),
            }
        }
        if !seen_f {
            return Err(ImportError::NoSender(todo.clone()));
        }
        p.arrival = mtime(&todo);
        return Ok(State::Queued(p));
    }
    let info = src.at("info");
    let Some(bytes) = read(&info)? else {
        return Ok(State::Uncommitted);
    };
    let mut seen_f = false;
    for (kind, v) in records(&bytes) {
        seen_f |= kind == b'F';
        header(&mut p, kind, v);
    }
    if !seen_f {
        return Err(ImportError::NoSender(info.clone()));
    }
    p.arrival = mtime(&info);
    for (chan, local) in [("local", true), ("remote", false)] {
        if let Some(bytes) = read(&src.at(chan))? {
            for (kind, v) in records(&bytes) {
                if kind == b'T' {
                    p.recipients.push(if local {
                        original_address(&v, vdoms)
                    } else {
                        v
                    });
                }
            }
        }
    }
    if let Some(bytes) = read(&src.root.join("bounce").join(&src.id))? {
        p.bounced = bounce_reports(&String::from_utf8_lossy(&bytes))
            .into_iter()
            .map(|(r, why)| (original_address(&r, vdoms), why))
            .collect();
    }
    Ok(State::Queued(p))
}

/// The queues under `dir`: `dir` itself when it has `mess/`, else its
/// subdirectories that have one.
fn source_queues(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    if dir.join("mess").is_dir() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| ImportError::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("mess").is_dir())
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(ImportError::NotAQueue(dir.to_path_buf()));
    }
    Ok(v)
}

fn messages(root: &Path) -> Result<Vec<Source>, ImportError> {
    let mess = root.join("mess");
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&mess).map_err(|e| ImportError::io(&mess, e))?;
    for split in rd.flatten() {
        if !split.path().is_dir() {
            continue;
        }
        let s = split.file_name().to_string_lossy().into_owned();
        let files =
            std::fs::read_dir(split.path()).map_err(|e| ImportError::io(&split.path(), e))?;
        for f in files.flatten() {
            let id = f.file_name().to_string_lossy().into_owned();
            if id.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty() {
                out.push(Source {
                    root: root.to_path_buf(),
                    split: s.clone(),
                    id,
                    mess: f.path(),
                });
            }
        }
    }
    out.sort_by_key(|s| s.id.parse::<u64>().unwrap_or(0));
    Ok(out)
}

fn read_virtualdomains(control: Option<&Path>) -> Result<Vec<(String, String)>, ImportError> {
    let Some(dir) = control else {
        return Ok(Vec::new());
    };
    let path = dir.join("virtualdomains");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImportError::io(&path, e)),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(':'))
        .map(|(k, p)| (k.trim().to_string(), p.trim().to_string()))
        .collect())
}

/// Counts of one run.
#[derive(Debug, Default)]
struct Summary {
    imported: usize,
    recipients: usize,
    bounces: usize,
    finished: usize,
    resumed: usize,
    uncommitted: usize,
    bad: Vec<String>,
}

/// Writes `import.pending` into our queue directory, durably.
fn write_marker(spec: &QueueSpec, source: &Path) -> Result<(), ImportError> {
    let path = spec.dir.join(IMPORT_MARKER);
    let mut f = std::fs::File::create(&path).map_err(|e| ImportError::io(&path, e))?;
    writeln!(f, "{}", source.display())
        .and_then(|()| f.sync_all())
        .map_err(|e| ImportError::io(&path, e))?;
    sync_dir(&spec.dir)
}

fn sync_dir(dir: &Path) -> Result<(), ImportError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| ImportError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}

/// `indimail import-qmail-queue DIR [--control DIR] [--dry-run]`; exit
/// code.
pub fn main(paths: &Paths, dir: &Path, control: Option<&Path>, dry_run: bool) -> i32 {
    let result = if dry_run {
        survey(dir, control)
    } else {
        run(paths, dir, control)
    };
    match result {
        Ok(s) => {
            println!(
                "{} {} messages ({} recipients), {} bounces {}; {} already finished, {} completed from an interrupted run",
                if dry_run { "would import" } else { "imported" },
                s.imported,
                s.recipients,
                s.bounces,
                if dry_run { "to queue" } else { "queued" },
                s.finished,
                s.resumed
            );
            if s.uncommitted > 0 {
                println!(
                    "left {} uncommitted messages (mess without todo/info: qmail-queue never finished them)",
                    s.uncommitted
                );
            }
            for b in &s.bad {
                println!("left {b}");
            }
            if s.bad.is_empty() {
                0
            } else {
                111
            }
        }
        Err(e) => {
            eprintln!("import-qmail-queue: {e}");
            111
        }
    }
}

/// `--dry-run`: reads the qmail queue and counts what a run would import;
/// takes no lock and changes nothing.
fn survey(dir: &Path, control: Option<&Path>) -> Result<Summary, ImportError> {
    let roots = source_queues(dir)?;
    let vdoms = read_virtualdomains(control)?;
    let mut s = Summary::default();
    for r in &roots {
        for src in messages(r)? {
            match parse(&src, &vdoms) {
                Ok(State::Queued(p)) => {
                    if !p.recipients.is_empty() {
                        s.imported += 1;
                        s.recipients += p.recipients.len();
                    }
                    if !p.bounced.is_empty() {
                        s.bounces += 1;
                    }
                    if p.recipients.is_empty() && p.bounced.is_empty() {
                        s.finished += 1;
                    }
                }
                Ok(State::Uncommitted) => s.uncommitted += 1,
                Err(e) => s.bad.push(format!("{}: {e}", src.mess.display())),
            }
        }
    }
    Ok(s)
}

fn run(paths: &Paths, dir: &Path, control: Option<&Path>) -> Result<Summary, ImportError> {
    let dir = dir.canonicalize().map_err(|e| ImportError::io(dir, e))?;
    let roots = source_queues(&dir)?;
    let vdoms = read_virtualdomains(control)?;
    let mut sources = Vec::new();
    for r in &roots {
        sources.extend(messages(r)?);
    }
    let specs = paths
        .layout(None)
        .map_err(|e| ImportError::Layout(e.to_string()))?
        .configured();
    let locks = lock_and_mark(&specs, &dir)?;
    let me = paths
        .control
        .string("me")
        .ok()
        .flatten()
        .unwrap_or_else(control::env::system_hostname);
    let bounce_cfg = scheduler::deliver::DeliverySettings::load(&paths.control, &me, &specs)
        .map_err(ImportError::Settings)?
        .bounce;

    let summary = shard::io::run(shard::io::Driver::Epoll, async {
        let mut importer = Importer::open(&specs, &bounce_cfg).await?;
        let mut s = Summary::default();
        let mut progress = Progress::new("import-qmail-queue", sources.len() as u64);
        let mut touched: HashSet<PathBuf> = HashSet::new();
        for src in &sources {
            progress.inc(1);
            importer.import(src, &vdoms, &mut s, &mut touched).await?;
        }
        progress.finish();
        for d in &touched {
            sync_dir(d)?;
        }
        Ok::<Summary, ImportError>(s)
    })?;
    for spec in &specs {
        let path = spec.dir.join(IMPORT_MARKER);
        std::fs::remove_file(&path).map_err(|e| ImportError::io(&path, e))?;
        sync_dir(&spec.dir)?;
    }
    drop(locks);
    Ok(summary)
}

/// Locks every queue of the home (the server must be stopped) and marks it as importing
/// from `source`; the locks, held until the import ends.
fn lock_and_mark(specs: &[QueueSpec], source: &Path) -> Result<Vec<std::fs::File>, ImportError> {
    let mut locks = Vec::new();
    for spec in specs {
        std::fs::create_dir_all(&spec.dir).map_err(|e| ImportError::io(&spec.dir, e))?;
        locks.push(lock_queue(&spec.dir).map_err(ImportError::Locked)?);
    }
    for spec in specs {
        write_marker(spec, source)?;
    }
    Ok(locks)
}

/// Commits imported messages into the home's queues, in turn, skipping what an earlier,
/// interrupted run committed.
struct Importer<'a> {
    queues: Vec<Rc<Queue>>,
    /// The queue the next message goes to (modulo their number).
    next: usize,
    /// Keys committed by an earlier, interrupted run.
    done: HashSet<String>,
    bounce_cfg: &'a bounce::BounceConfig,
}

impl<'a> Importer<'a> {
    async fn open(
        specs: &[QueueSpec],
        bounce_cfg: &'a bounce::BounceConfig,
    ) -> Result<Importer<'a>, ImportError> {
        let mut queues: Vec<Rc<Queue>> = Vec::new();
        for spec in specs {
            let (q, _) = Queue::open(QueueConfig::new(spec.dir.clone(), spec.number))
                .await
                .map_err(|source| ImportError::Open {
                    path: spec.dir.clone(),
                    source,
                })?;
            queues.push(Rc::new(q));
        }
        let mut done: HashSet<String> = HashSet::new();
        for q in &queues {
            for id in q.message_ids() {
                if let Some(env) = q.envelope(&id) {
                    done.extend(
                        env.extra
                            .iter()
                            .filter(|(k, _)| k == IMPORT_KEY)
                            .map(|(_, v)| v.clone()),
                    );
                }
            }
        }
        Ok(Importer {
            queues,
            next: 0,
            done,
            bounce_cfg,
        })
    }

    /// The queue for the next message.
    fn next_queue(&mut self) -> Rc<Queue> {
        let q = Rc::clone(&self.queues[self.next % self.queues.len()]);
        self.next += 1;
        q
    }

    /// Imports one source message (its pending recipients, and a bounce for the failed
    /// ones), then removes the originals; a message that cannot be read is counted bad.
    async fn import(
        &mut self,
        src: &Source,
        vdoms: &[(String, String)],
        s: &mut Summary,
        touched: &mut HashSet<PathBuf>,
    ) -> Result<(), ImportError> {
        let key = match src.key() {
            Ok(k) => k,
            Err(_) => return Ok(()), // vanished meanwhile
        };
        let parsed = match parse(src, vdoms) {
            Ok(State::Queued(p)) => p,
            Ok(State::Uncommitted)
                if self.done.contains(&key) || self.done.contains(&format!("{key}#bounce")) =>
            {
                // An interrupted run committed it and removed all but
                // `mess` (removed last): finish the removal.
                remove_originals(src, touched)?;
                s.resumed += 1;
                return Ok(());
            }
            Ok(State::Uncommitted) => {
                s.uncommitted += 1;
                return Ok(());
            }
            Err(e) => {
                s.bad.push(format!("{}: {e}", src.mess.display()));
                return Ok(());
            }
        };
        let bounce_key = format!("{key}#bounce");
        // What an interrupted run already committed is not committed again.
        let copy_due = !parsed.recipients.is_empty() && !self.done.contains(&key);
        let bounce_due = !parsed.bounced.is_empty() && !self.done.contains(&bounce_key);
        let resumed = (!parsed.recipients.is_empty() && !copy_due)
            || (!parsed.bounced.is_empty() && !bounce_due);
        if copy_due || bounce_due {
            let body = match message_of(src, &parsed) {
                Ok(b) => b,
                Err(e) => {
                    s.bad.push(e.to_string());
                    return Ok(());
                }
            };
            if copy_due {
                self.commit_copy(src, &parsed, &body, key).await?;
                s.imported += 1;
                s.recipients += parsed.recipients.len();
            }
            if bounce_due && self.commit_bounce(src, &parsed, &body, bounce_key).await? {
                s.bounces += 1;
            }
        }
        if parsed.recipients.is_empty() && parsed.bounced.is_empty() {
            s.finished += 1;
        }
        if resumed {
            s.resumed += 1;
        }
        // Committed (durably): now the originals go, mess last.
        remove_originals(src, touched)
    }

    /// Queues the message for its pending recipients, under `key`.
    async fn commit_copy(
        &mut self,
        src: &Source,
        parsed: &Parsed,
        body: &[u8],
        key: String,
    ) -> Result<(), ImportError> {
        let q = self.next_queue();
        let mut env = Envelope::new(parsed.sender.clone(), parsed.recipients.clone());
        env.arrival = parsed.arrival;
        env.extra.extend(
            parsed
                .env
                .iter()
                .map(|v| (msgproc::headers::ENVELOPE_KEY.to_string(), v.clone())),
        );
        env.extra.push((IMPORT_KEY.to_string(), key));
        let id = commit(&q, body, env).await?;
        control::log!(
            "tool new msg {id} bytes={} from=<{}> rcpts={} imported={}",
            body.len(),
            parsed.sender,
            parsed.recipients.len(),
            src.mess.display()
        );
        Ok(())
    }

    /// Queues the bounce for the recipients qmail had failed, under `key`; false when the
    /// sender gets none (a bounce of a bounce, ...).
    async fn commit_bounce(
        &mut self,
        src: &Source,
        parsed: &Parsed,
        body: &[u8],
        key: String,
    ) -> Result<bool, ImportError> {
        let failed: Vec<FailedRecipient> = parsed
            .bounced
            .iter()
            .map(|(r, why)| FailedRecipient {
                recipient: r.clone(),
                reason: why.clone(),
                remote_mta: None,
            })
            .collect();
        let decision = bounce::decide(self.bounce_cfg, &parsed.sender);
        let original = Original {
            sender: &parsed.sender,
            arrival: parsed.arrival,
            id: &src.id,
            message: body,
        };
        let Some(b) = bounce::build(
            self.bounce_cfg,
            &decision,
            original,
            &failed,
            Envelope::now(),
        ) else {
            return Ok(false);
        };
        let q = self.next_queue();
        let mut env = Envelope::new(b.sender.clone(), b.recipients.clone());
        env.extra.push((IMPORT_KEY.to_string(), key));
        let id = commit(&q, &b.message, env).await?;
        control::log!(
            "tool new msg {id} bytes={} from=<{}> rcpts={} bounce-of={}",
            b.message.len(),
            b.sender,
            b.recipients.len(),
            src.mess.display()
        );
        Ok(true)
    }
}

/// The message as it will be queued: qmail's extra headers, then the file.
fn message_of(src: &Source, parsed: &Parsed) -> Result<Vec<u8>, ImportError> {
    let mut m = parsed.extra_headers.clone().into_bytes();
    m.extend(std::fs::read(&src.mess).map_err(|e| ImportError::io(&src.mess, e))?);
    Ok(m)
}

/// Removes a committed source message's files (`mess` last, see
/// `Source::files`), noting the directories to fsync.
fn remove_originals(src: &Source, touched: &mut HashSet<PathBuf>) -> Result<(), ImportError> {
    for f in src.files() {
        match std::fs::remove_file(&f) {
            Ok(()) => {
                if let Some(p) = f.parent() {
                    touched.insert(p.to_path_buf());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImportError::io(&f, e)),
        }
    }
    Ok(())
}

async fn commit(
    q: &Queue,
    body: &[u8],
    env: Envelope,
) -> Result<queue_store::MessageId, ImportError> {
    let mut w = q.begin();
    if let Err(e) = w.write(body).await {
        w.abort().await;
        return Err(ImportError::Queue(e.to_string()));
    }
    w.commit(env)
        .await
        .map_err(|e| ImportError::Queue(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtualdomains_prefix_is_removed() {
        let v = vec![("example.com".to_string(), "example.com".to_string())];
        assert_eq!(
            original_address("example.com-alice@example.com", &v),
            "alice@example.com"
        );
        let v = vec![(".example.org".to_string(), "vp".to_string())];
        assert_eq!(
            original_address("vp-bob@mx.example.org", &v),
            "bob@mx.example.org"
        );
        // vadddomain convention without a control directory.
        assert_eq!(
            original_address("example.net-carol@example.net", &[]),
            "carol@example.net"
        );
        // A real user of `locals`: unchanged.
        assert_eq!(original_address("root@localhost", &[]), "root@localhost");
    }

    #[test]
    fn bounce_file_reports() {
        let r = bounce_reports("<a@x.example>:\n1.2.3.4 does not like recipient./Remote host said: 550 no\n\nb@y.example:\nSorry.\n\n");
        assert_eq!(
            r,
            vec![
                (
                    "a@x.example".to_string(),
                    "1.2.3.4 does not like recipient./Remote host said: 550 no".to_string()
                ),
                ("b@y.example".to_string(), "Sorry.".to_string())
            ]
        );
    }

    #[test]
    fn envheaders_from_h_record() {
        assert_eq!(
            env_values("X-Mailer: foo\n bar\nList-Id: l\n"),
            vec!["X_MAILER=foo bar".to_string(), "LIST_ID=l".to_string()]
        );
    }
}
