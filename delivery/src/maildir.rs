//! Maildir writes (qmail's `maildir_deliver`) and Maildir++ quota
//! (`maildirsize`, spec 4.7).
//!
//! A message is Delivered only after: the file in `tmp/` is written and
//! its data durable, it is renamed into `new/`, and the rename is durable
//! (on ext4 without a journal a rename survives a crash only once its
//! directory is flushed). [`SyncMode`] says how: per file (`O_DSYNC`, then
//! `new/` fsynced, that fsync shared by concurrent deliveries into one
//! `new/`, [`crate::dirflush::sync_dir`]) or per file system (one `syncfs`
//! shared by all the shard's deliveries there, [`crate::dirflush::sync_fs`]).
//! A crash in between leaves either nothing in `new/` (retry) or
//! a complete message (possibly delivered twice on retry: at-least-once).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a Maildir write failed. Every variant is a temporary failure: the
/// message stays queued and nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// `tmp/` or `new/` is missing or not a directory.
    #[error("maildir {0} is missing tmp/ or new/ (#4.2.1)")]
    NotAMaildir(PathBuf),
    /// A system call failed (full disk, permissions, ...).
    #[error("unable to {op} {path}: {source} (#4.3.0)")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A quota variable whose value cannot be used; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaSettingError {
    /// The value is not a number.
    #[error("{name}={value}: not a number")]
    NotANumber {
        /// The variable.
        name: String,
        /// Its value as found.
        value: String,
    },
    /// A `QUOTAWARN<n>` outside 1-100.
    #[error("{name}={value}: not a percentage (1-100)")]
    NotAPercentage {
        /// The variable.
        name: String,
        /// Its value.
        value: u64,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MaildirError + 'a {
    move |source| MaildirError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// This process's id, asked of the kernel once: every file name carries it,
/// and `getpid(2)` per delivery is a system call for a constant.
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The host part of Maildir names: `/` → `\057`, `:` → `\072` (spec 3.2).
pub fn safe_host(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// How a Maildir delivery is made durable (`MAILDIR_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `auto`, the default: [`SyncMode::FileSystem`] where `syncfs(2)` makes
    /// every file durable (local ext2/3/4, XFS, btrfs, F2FS, tmpfs) and other
    /// deliveries to that file system are under way on the shard, else
    /// [`SyncMode::File`]'s flushes (alone; NFS, FUSE, anything else).
    #[default]
    Auto,
    /// `file`: each message is written `O_DSYNC` (its own device flush) and
    /// each `new/` fsynced after the rename, that flush shared by the
    /// deliveries into the same directory ([`crate::dirflush::sync_dir`]).
    File,
    /// `filesystem`: no flush of its own per message: one `syncfs` makes the
    /// data of every message written on the file system durable before their
    /// renames, another the renames, each shared by all the deliveries of
    /// the shard to that file system, whatever their Maildir
    /// ([`crate::dirflush::sync_fs`]).
    FileSystem,
}

/// `MAILDIR_SYNC` with a value that is not one of the modes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MAILDIR_SYNC={0}: not auto, file or filesystem")]
pub struct SyncSettingError(pub String);

impl SyncMode {
    /// Reads `MAILDIR_SYNC` (`auto` when unset or empty).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<SyncMode, SyncSettingError> {
        match env("MAILDIR_SYNC").as_deref().map(str::trim) {
            None | Some("") | Some("auto") => Ok(SyncMode::Auto),
            Some("file") => Ok(SyncMode::File),
            Some("filesystem") => Ok(SyncMode::FileSystem),
            Some(v) => Err(SyncSettingError(v.to_string())),
        }
    }
}

/// The parts of a Maildir file's name known before it is written.
struct Name<'a> {
    sec: u64,
    usec: u32,
    pid: u32,
    host: &'a str,
}

impl Name<'_> {
    /// Its name in `new/`: the inode and device make it unique.
    fn in_new(&self, ino: u64, dev: u64, size: usize) -> String {
        let Name {
            sec,
            usec,
            pid,
            host,
        } = self;
        format!("{sec}.I{ino:x}V{dev:x}M{usec}P{pid}.{host},S={size}")
    }
}

/// Writes `data` into the Maildir `dir` and returns the path in `new/`;
/// `sync` says how it is made durable ([`SyncMode`]).
///
/// The file is created in `tmp/` (a direct create in the small `tmp/`),
/// written, made durable, and moved to `new/` by `rename(2)` (Dovecot's
/// way; the new name holds the file's inode and device, so it cannot
/// collide), which io_uring offers where it has no `link(2)`; then the
/// rename is made durable. The rename and the flushes run on io_uring or
/// the blocking pool, so the shard keeps serving other work while a big
/// Maildir's `new/` is locked or the disk is slow.
pub async fn write(
    dir: &Path,
    host: &str,
    data: Vec<u8>,
    sync: SyncMode,
) -> Result<PathBuf, MaildirError> {
    let tmp_dir = dir.join("tmp");
    let new_dir = dir.join("new");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host = safe_host(host);
    let name = Name {
        sec: now.as_secs(),
        usec: now.subsec_micros(),
        pid: process_id(),
        host: &host,
    };
    // Q<counter> keeps names unique across concurrent deliveries of one
    // process within the same microsecond (qmail had one delivery per process).
    let q = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_path = tmp_dir.join(format!(
        "{}.M{}P{}Q{q}.{host}",
        name.sec, name.usec, name.pid
    ));
    let real_files = matches!(
        shard::io::current_driver(),
        shard::io::Driver::Uring | shard::io::Driver::Epoll
    );
    let new_path = if sync == SyncMode::File || !real_files {
        write_file_synced(dir, &tmp_path, &new_dir, &name, data).await?
    } else {
        write_shared_sync(dir, &tmp_path, &new_dir, &name, data, sync).await?
    };
    clean_tmp_now_and_then(dir, name.sec);
    Ok(new_path)
}

fn not_a_maildir(dir: &Path, op: &'static str, path: &Path, e: std::io::Error) -> MaildirError {
    if e.kind() == std::io::ErrorKind::NotFound {
        MaildirError::NotAMaildir(dir.to_path_buf())
    } else {
        io_err(op, path)(e)
    }
}

/// [`SyncMode::File`]: an `O_DSYNC` write, the rename, `new/`'s fsync.
async fn write_file_synced(
    dir: &Path,
    tmp_path: &Path,
    new_dir: &Path,
    name: &Name<'_>,
    data: Vec<u8>,
) -> Result<PathBuf, MaildirError> {
    let size = data.len();
    let file = match shard::io::File::create_durable(tmp_path, data).await {
        Ok(f) => f,
        Err(("create", e)) => return Err(not_a_maildir(dir, "create", tmp_path, e)),
        Err((op, e)) => {
            let _ = shard::io::remove_file(tmp_path).await;
            return Err(io_err(op, tmp_path)(e));
        }
    };
    let result = file.inode().await.map_err(io_err("stat", tmp_path));
    let close = file.close().await;
    let (ino, dev) = match result.and_then(|v| close.map(|_| v).map_err(io_err("close", tmp_path)))
    {
        Ok(v) => v,
        Err(e) => {
            let _ = shard::io::remove_file(tmp_path).await;
            return Err(e);
        }
    };
    let new_path = new_dir.join(name.in_new(ino, dev, size));
    if let Err(e) = shard::io::rename(tmp_path, &new_path).await {
        let _ = shard::io::remove_file(tmp_path).await;
        return Err(not_a_maildir(dir, "move into", &new_path, e));
    }
    // Shared with the other deliveries into this `new/` on this shard.
    crate::dirflush::sync_dir(new_dir)
        .await
        .map_err(io_err("sync", new_dir))?;
    Ok(new_path)
}

thread_local! {
    /// Per device: whether `syncfs` there covers a file ([`shard::io::sync_fs_covers`]).
    static SYNCFS_COVERS: std::cell::RefCell<std::collections::HashMap<u64, bool>> =
        Default::default();
    /// Per device: this shard's Maildir deliveries between their write and
    /// their end.
    static ACTIVE: std::cell::RefCell<std::collections::HashMap<u64, usize>> =
        Default::default();
}

/// One delivery counted in [`ACTIVE`] while it lives.
struct Active(u64);

impl Active {
    fn enter(dev: u64) -> Active {
        ACTIVE.with(|m| *m.borrow_mut().entry(dev).or_default() += 1);
        Active(dev)
    }

    /// Whether other deliveries to `dev` are under way on this shard.
    fn crowd(dev: u64) -> bool {
        ACTIVE.with(|m| m.borrow().get(&dev).is_some_and(|&n| n > 1))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let _ = ACTIVE.try_with(|m| {
            let mut m = m.borrow_mut();
            if let Some(n) = m.get_mut(&self.0) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.0);
                }
            }
        });
    }
}

/// [`SyncMode::FileSystem`], or [`SyncMode::Auto`] deciding by the file
/// system and the crowd: the file is written with no flush of its own; a
/// `syncfs` shared with the shard's other deliveries to that file system
/// makes it durable before the rename (the file's own write-back error is
/// checked too: `syncfs` reports errors file-system-wide, once), another
/// the rename. Where `syncfs` does not cover files (auto on NFS, FUSE), or
/// (auto) no other delivery to that file system is under way on the shard,
/// the file and then `new/` are flushed on their own, as in [`SyncMode::File`].
async fn write_shared_sync(
    dir: &Path,
    tmp_path: &Path,
    new_dir: &Path,
    name: &Name<'_>,
    data: Vec<u8>,
    sync: SyncMode,
) -> Result<PathBuf, MaildirError> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let size = data.len();
    // A buffered write into the page cache: short, so it is made here rather
    // than handed to a worker thread (a context switch each way).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp_path)
        .map_err(|e| not_a_maildir(dir, "create", tmp_path, e))?;
    let written = f
        .write_all(&data)
        .map_err(io_err("write", tmp_path))
        .and_then(|()| f.metadata().map_err(io_err("stat", tmp_path)));
    let meta = match written {
        Ok(m) => m,
        Err(e) => {
            drop(f);
            let _ = shard::io::remove_file(tmp_path).await;
            return Err(e);
        }
    };
    let (ino, dev) = (meta.ino(), meta.dev());
    let covers = sync == SyncMode::FileSystem
        || SYNCFS_COVERS.with(|m| {
            *m.borrow_mut()
                .entry(dev)
                .or_insert_with(|| shard::io::sync_fs_covers(&f).unwrap_or(false))
        });
    let _active = Active::enter(dev);
    // `auto`: a delivery with nobody to share a `syncfs` with flushes its own
    // file and `new/` (one device flush each, where two `syncfs` would cost
    // more: RESULTS.md); `filesystem` always shares.
    let share = || covers && (sync == SyncMode::FileSystem || Active::crowd(dev));
    let synced = if share() {
        let r = crate::dirflush::sync_fs(dev, new_dir)
            .await
            .and_then(|()| shard::io::check_written_back(&f));
        drop(f);
        r
    } else {
        let f = shard::io::File::from_std(f);
        let r = f.sync_data().await;
        r.and(f.close().await)
    };
    if let Err(e) = synced {
        let _ = shard::io::remove_file(tmp_path).await;
        return Err(io_err("sync", tmp_path)(e));
    }
    let new_path = new_dir.join(name.in_new(ino, dev, size));
    if let Err(e) = shard::io::rename(tmp_path, &new_path).await {
        let _ = shard::io::remove_file(tmp_path).await;
        return Err(not_a_maildir(dir, "move into", &new_path, e));
    }
    let moved = if share() {
        crate::dirflush::sync_fs(dev, new_dir).await
    } else {
        crate::dirflush::sync_dir(new_dir).await
    };
    moved.map_err(io_err("sync", new_dir))?;
    Ok(new_path)
}

/// Age (seconds) after which a file in a Maildir's `tmp/` is an orphan of a
/// crashed delivery and is removed (qmail's 36 hours: no delivery takes
/// that long).
pub const TMP_ORPHAN_AGE: u64 = 36 * 3600;
/// How often (seconds) one shard looks at the `tmp/` of one Maildir.
const TMP_CLEAN_EVERY: u64 = 3600;

thread_local! {
    /// When this thread (one shard) last cleaned each Maildir's `tmp/`.
    static TMP_CLEANED: std::cell::RefCell<std::collections::HashMap<PathBuf, u64>> =
        Default::default();
}

/// Cleans `dir/tmp` after a delivery, at most once an hour per Maildir and
/// shard, so orphans left by crashes do not pile up and the hot path pays
/// one map lookup.
fn clean_tmp_now_and_then(dir: &Path, now: u64) {
    let due = TMP_CLEANED.with(|m| {
        let mut m = m.borrow_mut();
        if m.get(dir).is_some_and(|&t| now < t + TMP_CLEAN_EVERY) {
            return false;
        }
        if m.len() >= 65_536 {
            m.clear();
        }
        m.insert(dir.to_path_buf(), now);
        true
    });
    if due {
        let _ = clean_tmp(dir, now);
    }
}

/// Removes the files of `dir/tmp` last modified more than
/// [`TMP_ORPHAN_AGE`] before `now` (unix seconds); returns how many.
pub fn clean_tmp(dir: &Path, now: u64) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir.join("tmp"))? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now, |d| d.as_secs());
        if meta.is_file()
            && now.saturating_sub(modified) > TMP_ORPHAN_AGE
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// A Maildir++ quota; 0 in a field means no limit on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Bytes allowed.
    pub bytes: u64,
    /// Messages allowed.
    pub count: u64,
}

impl Quota {
    /// Parses `pw_shell` forms: `NOQUOTA` (None), `<bytes>[K|M|G]`,
    /// `<bytes>,<count>`, and Maildir++ `<S>S,<C>C`.
    pub fn parse(s: &str) -> Option<Quota> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("NOQUOTA") || s.is_empty() {
            return None;
        }
        let mut q = Quota::default();
        for (i, part) in s.split(',').enumerate() {
            let part = part.trim();
            if let Some(n) = part.strip_suffix('S') {
                q.bytes = n.parse().ok()?;
            } else if let Some(n) = part.strip_suffix('C') {
                q.count = n.parse().ok()?;
            } else if i == 0 {
                let (num, mul) = match part.chars().last()? {
                    'K' | 'k' => (&part[..part.len() - 1], 1024),
                    'M' | 'm' => (&part[..part.len() - 1], 1024 * 1024),
                    'G' | 'g' => (&part[..part.len() - 1], 1024 * 1024 * 1024),
                    _ => (part, 1),
                };
                q.bytes = num.parse::<u64>().ok()?.checked_mul(mul)?;
            } else {
                q.count = part.parse().ok()?;
            }
        }
        Some(q)
    }

    /// The `maildirsize` first line: `<bytes>S,<count>C` (count omitted when 0).
    pub fn to_maildirsize(self) -> String {
        if self.count == 0 {
            format!("{}S", self.bytes)
        } else {
            format!("{}S,{}C", self.bytes, self.count)
        }
    }
}

/// Knobs of the Maildir++ quota check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaPolicy {
    /// Recalculate when `maildirsize` is at least this big (`MAILDIRSIZE_MAX_SIZE`, 8192).
    pub max_size: u64,
    /// Recalculate when `maildirsize` is older than this (`MAILDIRSIZE_MAX_AGE`, 43200 s).
    pub max_age: u64,
    /// Deliver anyway when over quota if the message is smaller (`OVERQUOTA_MAILSIZE`, 1000).
    pub overquota_mailsize: u64,
    /// Defer instead of bounce when over quota (`HOLDOVERQUOTA` / control `holdoverquota`).
    pub hold: bool,
    /// Run when a message does not fit (`OVERQUOTA_CMD`), as
    /// `cmd maildir size cur_usage cur_count quota`.
    pub overquota_cmd: Option<std::path::PathBuf>,
    /// Usage percentages whose crossing puts a warning in the mailbox (`QUOTAWARN1..10`).
    pub warn_at: Vec<u8>,
}

impl Default for QuotaPolicy {
    fn default() -> Self {
        QuotaPolicy {
            max_size: 8192,
            max_age: 43_200,
            overquota_mailsize: 1000,
            hold: false,
            overquota_cmd: None,
            warn_at: Vec::new(),
        }
    }
}

impl QuotaPolicy {
    /// IndiMail's variables (`env` looks one up): `HOLDOVERQUOTA` (or `hold_file`, control
    /// `holdoverquota` existing), `OVERQUOTA_MAILSIZE`, `MAILDIRSIZE_MAX_SIZE`,
    /// `MAILDIRSIZE_MAX_AGE`, `OVERQUOTA_CMD`, `QUOTAWARN1` .. `QUOTAWARN10` (percentages).
    /// A value that is not a number is an error naming the variable.
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        hold_file: bool,
    ) -> Result<QuotaPolicy, QuotaSettingError> {
        let num = |name: &str, default: u64| -> Result<u64, QuotaSettingError> {
            match env(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| QuotaSettingError::NotANumber {
                    name: name.to_string(),
                    value: v,
                }),
            }
        };
        let d = QuotaPolicy::default();
        let mut warn_at = Vec::new();
        for i in 1..=10 {
            let name = format!("QUOTAWARN{i}");
            if env(&name).is_some() {
                match num(&name, 0)? {
                    p @ 1..=100 => warn_at.push(p as u8),
                    p => return Err(QuotaSettingError::NotAPercentage { name, value: p }),
                }
            }
        }
        Ok(QuotaPolicy {
            max_size: num("MAILDIRSIZE_MAX_SIZE", d.max_size)?,
            max_age: num("MAILDIRSIZE_MAX_AGE", d.max_age)?,
            overquota_mailsize: num("OVERQUOTA_MAILSIZE", d.overquota_mailsize)?,
            hold: hold_file || env("HOLDOVERQUOTA").is_some(),
            overquota_cmd: env("OVERQUOTA_CMD")
                .filter(|c| !c.trim().is_empty())
                .map(Into::into),
            warn_at,
        })
    }
}

/// Current usage of a Maildir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes used.
    pub bytes: i64,
    /// Messages stored.
    pub count: i64,
}

/// Result of the quota check before a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaCheck {
    /// Room enough (or the over-quota grace for small messages applies).
    Ok,
    /// Over quota: bounce.
    OverBounce(String),
    /// Over quota, held: defer.
    OverHold(String),
}

/// Reads (recalculating when stale) the usage of `maildir` and decides
/// whether a message of `size` bytes fits in `quota`; the usage it read
/// comes back with the answer.
pub async fn check(
    maildir: &Path,
    quota: Quota,
    size: u64,
    policy: &QuotaPolicy,
) -> std::io::Result<(QuotaCheck, Usage)> {
    let usage = match cached_usage(maildir, quota, policy)? {
        Some(u) => u,
        None => recalculated_once(maildir, quota).await?,
    };
    Ok((judge(usage, quota, size, policy), usage))
}

fn judge(usage: Usage, quota: Quota, size: u64, policy: &QuotaPolicy) -> QuotaCheck {
    let over_bytes = quota.bytes > 0 && usage.bytes.max(0) as u64 + size > quota.bytes;
    let over_count = quota.count > 0 && usage.count.max(0) as u64 + 1 > quota.count;
    if !(over_bytes || over_count) || size < policy.overquota_mailsize {
        return QuotaCheck::Ok;
    }
    let why = format!(
        "The user's mailbox is over quota: {}/{} bytes, {}/{} messages; message is {} bytes (#{}.2.2)",
        usage.bytes,
        quota.bytes,
        usage.count,
        quota.count,
        size,
        if policy.hold { 4 } else { 5 }
    );
    if policy.hold {
        QuotaCheck::OverHold(why)
    } else {
        QuotaCheck::OverBounce(why)
    }
}

/// The highest of `warn_at` (percent of the byte quota) that a delivery of
/// `size` bytes crosses, from `before` usage; `None` when it crosses none.
pub fn warning_crossed(warn_at: &[u8], quota: Quota, before: Usage, size: u64) -> Option<u8> {
    if quota.bytes == 0 {
        return None;
    }
    let pct = |bytes: i64| (bytes.max(0) as u128 * 100 / quota.bytes as u128) as u64;
    let (from, to) = (pct(before.bytes), pct(before.bytes + size as i64));
    warn_at
        .iter()
        .copied()
        .filter(|&w| from < u64::from(w) && u64::from(w) <= to)
        .max()
}

/// The warning put in a mailbox that crossed `percent` of its quota
/// (queue form, LF line ends), from the mailer daemon of `host`.
pub fn warning_message(
    host: &str,
    rcpt: &str,
    percent: u8,
    quota: Quota,
    now: SystemTime,
) -> Vec<u8> {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\n\
         To: <{rcpt}>\n\
         Subject: Warning: your mailbox is {percent}% full\n\
         Message-ID: <quotawarn.{secs}.{percent}@{host}>\n\
         Auto-Submitted: auto-generated\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\
         \n\
         Your mailbox {rcpt} has reached {percent}% of its quota of {} bytes.\n\
         When it is full, new mail will be returned to its senders.\n\
         Please delete or move old messages.\n",
        quota.bytes
    )
    .into_bytes()
}

/// Usage from `maildirsize`, recalculated (and the file rewritten) when it
/// is missing, unparsable, bigger than `max_size`, older than `max_age`, or
/// carries a different quota line.
pub fn usage(maildir: &Path, quota: Quota, policy: &QuotaPolicy) -> std::io::Result<Usage> {
    match cached_usage(maildir, quota, policy)? {
        Some(u) => Ok(u),
        None => store_recalculated(maildir, quota),
    }
}

/// The usage `maildirsize` gives when it is fresh (small and recent enough)
/// and for `quota`; `None` when it must be recalculated.
fn cached_usage(
    maildir: &Path,
    quota: Quota,
    policy: &QuotaPolicy,
) -> std::io::Result<Option<Usage>> {
    use std::os::unix::fs::MetadataExt;
    let path = maildir.join("maildirsize");
    let fresh = match std::fs::metadata(&path) {
        Ok(md) => {
            let age = SystemTime::now()
                .duration_since(md.modified().unwrap_or(UNIX_EPOCH))
                .map(|d| d.as_secs())
                .unwrap_or(0);
            (md.len() < policy.max_size && age <= policy.max_age).then_some(md)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let Some(md) = fresh else { return Ok(None) };
    if let Some(u) = size_cache::usage(&path, md.ino(), md.len(), quota) {
        return Ok(Some(u));
    }
    let text = std::fs::read_to_string(&path)?;
    let Some(u) = parse_maildirsize(&text, quota) else {
        return Ok(None);
    };
    // What was read, up to its last whole line (an append may be under way).
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    if whole == text.len() {
        size_cache::remember(&path, md.ino(), whole as u64, quota, u);
    }
    Ok(Some(u))
}

thread_local! {
    /// Maildirs whose usage this shard is recalculating, with who waits for it.
    static RECALCULATING: std::cell::RefCell<std::collections::HashMap<PathBuf, Vec<UsageReply>>> =
        Default::default();
}

thread_local! {
    static RECALCULATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many Maildir usage recalculations this thread (shard) has started.
pub fn recalculations() -> u64 {
    RECALCULATIONS.with(std::cell::Cell::get)
}

type UsageReply = tokio::sync::oneshot::Sender<Result<Usage, (std::io::ErrorKind, String)>>;

/// [`store_recalculated`] for a delivery on a shard: on the blocking pool
/// (it lists and may stat every message of the Maildir, so a big mailbox
/// never stalls the shard), and once per Maildir at a time: the deliveries
/// that find `maildirsize` stale while a recalculation runs wait for its
/// result instead of each listing the Maildir again. The recalculation is
/// its own task, so a waiter that goes away strands nobody.
async fn recalculated_once(maildir: &Path, quota: Quota) -> std::io::Result<Usage> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let first = RECALCULATING.with(|m| {
        let mut m = m.borrow_mut();
        match m.get_mut(maildir) {
            Some(waiting) => {
                waiting.push(tx);
                false
            }
            None => {
                m.insert(maildir.to_path_buf(), vec![tx]);
                true
            }
        }
    });
    if first {
        RECALCULATIONS.with(|n| n.set(n.get() + 1));
        let maildir = maildir.to_path_buf();
        tokio::task::spawn_local(async move {
            let dir = maildir.clone();
            let r = tokio::task::spawn_blocking(move || store_recalculated(&dir, quota))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| (e.kind(), e.to_string()));
            let waiting = RECALCULATING.with(|m| m.borrow_mut().remove(&maildir));
            for w in waiting.unwrap_or_default() {
                let _ = w.send(r.clone());
            }
        });
    }
    match rx.await {
        Ok(r) => r.map_err(|(kind, text)| std::io::Error::new(kind, text)),
        Err(_) => Err(std::io::Error::other("quota recalculation abandoned")),
    }
}

/// Recalculates the usage of `maildir` and rewrites its `maildirsize`.
fn store_recalculated(maildir: &Path, quota: Quota) -> std::io::Result<Usage> {
    let u = recalculate(maildir)?;
    // Unique per call: deliveries to one Maildir run concurrently, and a
    // shared temporary name would be renamed away under another's feet.
    let tmp = maildir.join(format!(
        "tmp/maildirsize.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(
        &tmp,
        format!("{}\n{} {}\n", quota.to_maildirsize(), u.bytes, u.count),
    )?;
    std::fs::rename(&tmp, maildir.join("maildirsize"))?;
    Ok(u)
}

/// Sums a `maildirsize` text; `None` when its quota line is not `quota` or
/// a line is malformed (then the caller recalculates).
pub fn parse_maildirsize(text: &str, quota: Quota) -> Option<Usage> {
    let mut lines = text.lines();
    let first = Quota::parse(lines.next()?)?;
    if first != quota {
        return None;
    }
    sum_lines(lines)
}

/// Sums `<bytes> <count>` lines; `None` when one is malformed.
fn sum_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Option<Usage> {
    let mut u = Usage::default();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        u.bytes += f.next()?.parse::<i64>().ok()?;
        u.count += f.next()?.parse::<i64>().ok()?;
    }
    Some(u)
}

/// What this shard last read of each Maildir's `maildirsize`, so that a
/// delivery reads only the lines appended since instead of the whole file
/// (it grows by a line per delivery up to `MAILDIRSIZE_MAX_SIZE`: parsing it
/// whole was a third of a Maildir delivery's instructions, RESULTS.md).
/// Maildir++ writers append, or replace the file by a rename (a new inode);
/// anything else (another inode, a shorter file, another quota line, a bad
/// line) falls back to reading it whole.
mod size_cache {
    use super::{sum_lines, Quota, Usage};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::{Path, PathBuf};

    struct Seen {
        ino: u64,
        len: u64,
        quota: Quota,
        usage: Usage,
    }

    thread_local! {
        static SEEN: RefCell<HashMap<PathBuf, Seen>> = RefCell::new(HashMap::new());
    }

    /// The usage of `path` (inode `ino`, `len` bytes now) from what was seen
    /// before plus the lines appended since; `None` when it must be read whole.
    pub(super) fn usage(path: &Path, ino: u64, len: u64, quota: Quota) -> Option<Usage> {
        let (seen_len, mut usage) = SEEN.with(|m| {
            let m = m.borrow();
            let s = m.get(path)?;
            (s.ino == ino && s.quota == quota && s.len <= len).then_some((s.len, s.usage))
        })?;
        if seen_len < len {
            let mut f = std::fs::File::open(path).ok()?;
            f.seek(SeekFrom::Start(seen_len)).ok()?;
            let mut tail = String::new();
            f.take(len - seen_len).read_to_string(&mut tail).ok()?;
            // Up to the last whole line: the rest may be an append under way.
            let whole = tail.rfind('\n').map_or(0, |i| i + 1);
            let more = sum_lines(tail[..whole].lines())?;
            usage.bytes += more.bytes;
            usage.count += more.count;
            remember(path, ino, seen_len + whole as u64, quota, usage);
        }
        Some(usage)
    }

    /// Records that `path` (inode `ino`) sums to `usage` over its first `len` bytes.
    pub(super) fn remember(path: &Path, ino: u64, len: u64, quota: Quota, usage: Usage) {
        SEEN.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= 65_536 && !m.contains_key(path) {
                m.clear();
            }
            let seen = Seen {
                ino,
                len,
                quota,
                usage,
            };
            m.insert(path.to_path_buf(), seen);
        });
    }
}

/// Walks `new/`, `cur/` and every `.Folder/{new,cur}`; sizes come from the
/// `,S=` part of a name when present, else from `stat`. Trash is counted,
/// like Maildir++ says.
pub fn recalculate(maildir: &Path) -> std::io::Result<Usage> {
    let mut u = Usage::default();
    let mut dirs = vec![maildir.join("new"), maildir.join("cur")];
    if let Ok(rd) = std::fs::read_dir(maildir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name != "." && name != ".." && e.path().is_dir() {
                dirs.push(e.path().join("new"));
                dirs.push(e.path().join("cur"));
            }
        }
    }
    for d in dirs {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let size = size_from_name(&name).or_else(|| e.metadata().ok().map(|m| m.len()));
            if let Some(s) = size {
                u.bytes += s as i64;
                u.count += 1;
            }
        }
    }
    Ok(u)
}

fn size_from_name(name: &str) -> Option<u64> {
    let i = name.find(",S=")?;
    let rest = &name[i + 3..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Appends `<bytes> <count>` to `maildirsize` under an fcntl write lock, as
/// every Maildir++ writer does so concurrent appends never interleave;
/// waits for the lock on the calling thread (a shard uses [`append_async`]).
pub fn append(maildir: &Path, bytes: i64, count: i64) -> std::io::Result<()> {
    use std::io::Write;
    let path = maildir.join("maildirsize");
    let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
    lock_write(&f)?;
    f.write_all(format!("{bytes} {count}\n").as_bytes())?;
    // The lock goes with the descriptor when `f` is dropped.
    Ok(())
}

/// [`append`] from a shard: the lock is only tried there; when another
/// process holds it (a POP3/IMAP server updating the file), waiting for it
/// and the write move to the blocking pool, so the shard never stalls on
/// another process's lock.
pub async fn append_async(maildir: &Path, bytes: i64, count: i64) -> std::io::Result<()> {
    use std::io::Write;
    let path = maildir.join("maildirsize");
    let f = std::fs::OpenOptions::new().append(true).open(&path)?;
    let line = format!("{bytes} {count}\n");
    if try_lock_write(&f)? {
        return (&f).write_all(line.as_bytes());
    }
    tokio::task::spawn_blocking(move || {
        lock_write(&f)?;
        (&f).write_all(line.as_bytes())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Tries a whole-file fcntl write lock without waiting: `false` when
/// another process holds a conflicting lock.
fn try_lock_write(f: &std::fs::File) -> std::io::Result<bool> {
    fcntl_write_lock(f, false)
}

/// Takes a blocking whole-file fcntl write lock.
pub(crate) fn lock_write(f: &std::fs::File) -> std::io::Result<()> {
    fcntl_write_lock(f, true).map(|_| ())
}

/// A whole-file fcntl write lock, waited for (`F_SETLKW`) or only tried
/// (`F_SETLK`: `false` when another process holds a conflicting lock).
fn fcntl_write_lock(f: &std::fs::File, wait: bool) -> std::io::Result<bool> {
    // SAFETY: flock is plain data; zeroed is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    loop {
        // SAFETY: valid descriptor and a valid flock struct.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildir_sync_modes_parse_and_a_bad_one_is_named() {
        let env = |v: &'static str| move |n: &str| (n == "MAILDIR_SYNC").then(|| v.to_string());
        assert_eq!(SyncMode::from_env(&|_| None), Ok(SyncMode::Auto));
        assert_eq!(SyncMode::from_env(&env("auto")), Ok(SyncMode::Auto));
        assert_eq!(SyncMode::from_env(&env("file")), Ok(SyncMode::File));
        assert_eq!(
            SyncMode::from_env(&env(" filesystem\n")),
            Ok(SyncMode::FileSystem)
        );
        let e = SyncMode::from_env(&env("fsync")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MAILDIR_SYNC=fsync: not auto, file or filesystem"
        );
    }

    #[test]
    fn quota_policy_from_variables() {
        let vars = [
            ("QUOTAWARN1", "90"),
            ("QUOTAWARN2", "75"),
            ("OVERQUOTA_MAILSIZE", "0"),
            ("OVERQUOTA_CMD", "/usr/libexec/indimail/overquota.sh"),
        ];
        let env = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let p = QuotaPolicy::from_env(&env, true).unwrap();
        assert_eq!(p.warn_at, vec![90, 75]);
        assert_eq!(p.overquota_mailsize, 0);
        assert!(p.hold);
        assert!(p.overquota_cmd.is_some());
        let bad = |n: &str| (n == "QUOTAWARN3").then(|| "150".to_string());
        assert!(QuotaPolicy::from_env(&bad, false)
            .unwrap_err()
            .to_string()
            .contains("QUOTAWARN3"));
        let nan = |n: &str| (n == "MAILDIRSIZE_MAX_AGE").then(|| "soon".to_string());
        assert!(QuotaPolicy::from_env(&nan, false).is_err());
    }

    #[test]
    fn warnings_fire_once_when_crossed() {
        let q = Quota {
            bytes: 1000,
            count: 0,
        };
        let u = |bytes| Usage { bytes, count: 0 };
        assert_eq!(warning_crossed(&[50, 90], q, u(400), 50), None);
        assert_eq!(warning_crossed(&[50, 90], q, u(400), 100), Some(50));
        assert_eq!(warning_crossed(&[50, 90], q, u(400), 600), Some(90));
        assert_eq!(warning_crossed(&[50, 90], q, u(500), 10), None);
        assert_eq!(
            warning_crossed(&[50], Quota { bytes: 0, count: 5 }, u(0), 10),
            None
        );
    }

    #[test]
    fn quota_forms() {
        assert_eq!(Quota::parse("NOQUOTA"), None);
        assert_eq!(
            Quota::parse("5M"),
            Some(Quota {
                bytes: 5 << 20,
                count: 0
            })
        );
        assert_eq!(
            Quota::parse("40000,2000"),
            Some(Quota {
                bytes: 40000,
                count: 2000
            })
        );
        assert_eq!(
            Quota::parse("100S,5C"),
            Some(Quota {
                bytes: 100,
                count: 5
            })
        );
        assert_eq!(
            Quota::parse("100S"),
            Some(Quota {
                bytes: 100,
                count: 0
            })
        );
        assert_eq!(Quota::parse("x"), None);
        assert_eq!(
            Quota {
                bytes: 100,
                count: 5
            }
            .to_maildirsize(),
            "100S,5C"
        );
    }

    #[test]
    fn maildirsize_sum() {
        let q = Quota {
            bytes: 1000,
            count: 10,
        };
        assert_eq!(
            parse_maildirsize("1000S,10C\n100 1\n  \n-50 -1\n300 2\n", q),
            Some(Usage {
                bytes: 350,
                count: 2
            })
        );
        assert_eq!(parse_maildirsize("999S,10C\n100 1\n", q), None);
        assert_eq!(parse_maildirsize("1000S,10C\nbad\n", q), None);
    }

    #[test]
    fn usage_reads_appends_and_rewrites_of_maildirsize() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path();
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        let q = Quota {
            bytes: 100_000,
            count: 0,
        };
        let p = QuotaPolicy::default();
        // No file: recalculated (empty Maildir) and written.
        assert_eq!(usage(md, q, &p).unwrap(), Usage::default());
        append(md, 100, 1).unwrap();
        append(md, 50, 1).unwrap();
        let u = |bytes, count| Usage { bytes, count };
        assert_eq!(usage(md, q, &p).unwrap(), u(150, 2));
        // Another writer appends (a shorter read than the file: only the new lines count).
        append(md, -30, -1).unwrap();
        assert_eq!(usage(md, q, &p).unwrap(), u(120, 1));
        assert_eq!(usage(md, q, &p).unwrap(), u(120, 1));
        // A half-written line is left for later.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(md.join("maildirsize"))
                .unwrap();
            f.write_all(b"7").unwrap();
            assert_eq!(usage(md, q, &p).unwrap(), u(120, 1));
            f.write_all(b"0 1\n").unwrap();
        }
        assert_eq!(usage(md, q, &p).unwrap(), u(190, 2));
        // Replaced by a rename (a new inode): read whole.
        let tmp = md.join("tmp/ms");
        std::fs::write(&tmp, "100000S\n5 1\n").unwrap();
        std::fs::rename(&tmp, md.join("maildirsize")).unwrap();
        assert_eq!(usage(md, q, &p).unwrap(), u(5, 1));
        // Another quota: recalculated from the (empty) Maildir.
        let q2 = Quota { bytes: 5, count: 0 };
        assert_eq!(usage(md, q2, &p).unwrap(), u(0, 0));
    }

    #[test]
    fn names() {
        assert_eq!(safe_host("a/b:c"), "a\\057b\\072c");
        assert_eq!(size_from_name("1.I1V2M3P4.h,S=1234:2,S"), Some(1234));
        assert_eq!(size_from_name("1.I1V2M3P4.h"), None);
    }
}
