//! Local delivery: what qmail-local and vdelivermail do for one recipient.
//!
//! The caller (the engine, after asking the user directory) hands over a
//! [`LocalTarget`]: the user's home, Maildir, quota and delivery
//! instructions (dot-qmail or valias lines). This module writes Maildirs
//! and mboxes, runs `|program` lines, checks loops and quota, and returns
//! forwards for the engine to re-inject. It does not look users up, does
//! not switch uid (the engine runs as the mail owner, as IndiMail's virtual
//! domains do), and does not inject mail itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dotqmail::{self, Instruction};
use crate::maildir::{self, Quota, QuotaCheck, QuotaPolicy};
use crate::program::{self, ProgramSpec};
use crate::Outcome;

/// Settings of local delivery, from control files and environment.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Host name used in Maildir file names (control `me`).
    pub hostname: String,
    /// Quota policy (overquota grace, `holdoverquota`, maildirsize recalculation).
    pub quota: QuotaPolicy,
    /// `maxdeliveredto`: a message already carrying our `Delivered-To` line
    /// more than this many times is a loop. Default 0; negative disables.
    pub maxdeliveredto: i32,
    /// `QMAILLOCAL`: run this program instead of delivering here.
    pub qmaillocal: Option<PathBuf>,
    /// Control `defaultdelivery`, passed to `QMAILLOCAL` (default `./Maildir/`).
    pub defaultdelivery: String,
    /// `MAILDIR_SYNC`: how a Maildir write is made durable.
    pub maildir_sync: maildir::SyncMode,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            hostname: "localhost".into(),
            quota: QuotaPolicy::default(),
            maxdeliveredto: 0,
            qmaillocal: None,
            defaultdelivery: "./Maildir/".into(),
            maildir_sync: maildir::SyncMode::Auto,
        }
    }
}

/// Where and how one recipient's mail is delivered, as resolved by the
/// user directory (`users/assign` or the virtual user table).
#[derive(Debug, Clone, Default)]
pub struct LocalTarget {
    /// `USER`: the user (for virtual users, `user@domain` or the domain).
    pub user: String,
    /// `HOME`: pw_dir; `./` paths and programs are relative to it.
    pub home: PathBuf,
    /// The user's Maildir (usually `home/Maildir`); used when there are no
    /// instructions, and the one the quota applies to.
    pub maildir: PathBuf,
    /// Quota of `maildir`; `None` = NOQUOTA.
    pub quota: Option<Quota>,
    /// Dot-qmail / valias lines. Empty = deliver to `maildir`.
    pub instructions: Vec<String>,
    /// The assign `dash` field (`-` or empty).
    pub dash: String,
    /// `EXT`: the address extension.
    pub ext: String,
    /// Where `instructions` come from (a file's path, `valias`), for the
    /// report when a line is bad.
    pub source: String,
}

/// Addresses to forward to after a successful local delivery. The engine
/// injects a new message with the original envelope sender, to these
/// recipients, with `dtline` prepended (so the next hop sees the loop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Recipients (`&addr` and bare address lines).
    pub recipients: Vec<String>,
    /// `Delivered-To: <recipient>\n`.
    pub dtline: String,
}

impl Forward {
    /// The message to inject: `dtline` + the original.
    pub fn message(&self, original: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.dtline.len() + original.len());
        m.extend_from_slice(self.dtline.as_bytes());
        m.extend_from_slice(original);
        m
    }
}

/// Result of one local delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReport {
    /// The recipient's outcome.
    pub outcome: Outcome,
    /// Forwards to inject; only present when `outcome` is Delivered.
    pub forward: Option<Forward>,
    /// The mailbox was over quota (the outcome says bounce or hold): the
    /// caller sets the user's BOUNCE_MAIL flag (spec 4.7).
    pub over_quota: bool,
}

impl LocalReport {
    fn fail(outcome: Outcome) -> LocalReport {
        LocalReport {
            over_quota: false,
            outcome,
            forward: None,
        }
    }
}

/// Finds the dot-qmail file for extension `ext` in `home` (see
/// [`dotqmail::file_names`]: `.qmail` for none, else `.qmail-ext`, then the
/// `-default` fallbacks) and returns its path and lines, or `None` when no
/// such file exists. A file that exists but cannot be read (permissions, not
/// UTF-8, a directory) is an error naming it: the delivery is deferred, not
/// sent elsewhere.
pub fn read_instructions(
    home: &Path,
    ext: &str,
) -> Result<Option<(PathBuf, Vec<String>)>, LocalError> {
    for name in dotqmail::file_names(ext) {
        let path = home.join(&name);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok(Some((path, text.lines().map(str::to_string).collect()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LocalError::Instructions { path, source }),
        }
    }
    Ok(None)
}

/// Why a local delivery step could not go ahead; each is temporary (the message stays queued).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A dot-qmail file exists but cannot be read.
    #[error("cannot read {}: {source} (#4.3.0)", path.display())]
    Instructions {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An mbox could not be opened, locked, measured or written.
    #[error("unable to {op} {}: {source}", path.display())]
    Mbox {
        /// What was being done.
        op: &'static str,
        /// The mbox.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Envelope of one local delivery.
#[derive(Debug, Clone, Copy)]
pub struct LocalEnvelope<'a> {
    /// Envelope sender (empty for bounces).
    pub sender: &'a str,
    /// The recipient (`local@domain`) as written in `Delivered-To`.
    pub recipient: &'a str,
    /// Variables exported to delivery programs besides qmail-local's own
    /// (the message's `envheaders` values, `NAME`, `value`).
    pub vars: &'a [(String, String)],
}

/// Counts `Delivered-To:` header lines equal to `recipient` (case-insensitive),
/// looking only at the header block.
pub fn delivered_to_count(message: &[u8], recipient: &str) -> usize {
    let mut n = 0;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.len() > 13 && line[..13].eq_ignore_ascii_case(b"delivered-to:") {
            let v = String::from_utf8_lossy(&line[13..]);
            if v.trim().eq_ignore_ascii_case(recipient.trim()) {
                n += 1;
            }
        }
    }
    n
}

fn clean(s: &str) -> String {
    // A newline in an envelope address would forge header lines.
    s.replace(['\n', '\r'], "_")
}

/// `Return-Path: <sender>\n`.
pub fn rpline(sender: &str) -> String {
    format!("Return-Path: <{}>\n", clean(sender))
}

/// `Delivered-To: recipient\n`.
pub fn dtline(recipient: &str) -> String {
    format!("Delivered-To: {}\n", clean(recipient))
}

/// mbox `From ` line: `From sender date\n` (`MAILER-DAEMON` for the null sender).
pub fn ufline(sender: &str) -> String {
    let s = if sender.is_empty() {
        "MAILER-DAEMON".to_string()
    } else {
        clean(sender).replace(' ', "-")
    };
    format!("From {} {}\n", s, ctime_now())
}

fn ctime_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::bounce::ctime_utc(t)
}

/// Delivers `message` (qmail queue form, LF line ends) to one local recipient.
pub async fn deliver(
    cfg: &LocalConfig,
    target: &LocalTarget,
    env: LocalEnvelope<'_>,
    message: &[u8],
) -> LocalReport {
    if cfg.maxdeliveredto >= 0
        && delivered_to_count(message, env.recipient) > cfg.maxdeliveredto as usize
    {
        return LocalReport::fail(Outcome::Permanent(
            "This message is looping: it already has my Delivered-To line. (#5.4.6)".into(),
        ));
    }
    if let Some(prog) = &cfg.qmaillocal {
        return LocalReport::fail(run_qmaillocal(cfg, prog, target, env, message).await);
    }
    let instructions: Vec<Instruction> = if target.instructions.is_empty() {
        vec![Instruction::Maildir(target.maildir.clone())]
    } else {
        match dotqmail::parse(&target.instructions, &target.home) {
            Ok(v) => v,
            Err(e) => {
                let source = if target.source.is_empty() {
                    "the delivery instructions"
                } else {
                    &target.source
                };
                return LocalReport::fail(Outcome::Temporary(format!(
                    "bad delivery instruction in {source}, {e} (#4.3.0)"
                )));
            }
        }
    };
    if instructions.is_empty() {
        // qmail-local: a .qmail with only comments delivers nowhere, which
        // is almost always a mistake; treat it as the default delivery.
        return Box::pin(deliver(
            cfg,
            &LocalTarget {
                instructions: Vec::new(),
                ..target.clone()
            },
            env,
            message,
        ))
        .await;
    }
    let rp = rpline(env.sender);
    let dt = dtline(env.recipient);
    // A copy for programs' stdin, made only when a line runs one.
    let mut shared: Option<Arc<Vec<u8>>> = None;
    let mut forwards = Vec::new();
    let mut done = Vec::new();
    for ins in instructions {
        let r = match ins {
            // A user's own address in its instructions means its mailbox
            // (vdelivermail skips such a line as a loop; forwarding it would
            // come back as one).
            Instruction::Forward(a) if a.eq_ignore_ascii_case(env.recipient) => {
                let quota = target.quota;
                deliver_maildir(
                    cfg,
                    &target.maildir,
                    quota,
                    env.recipient,
                    &rp,
                    &dt,
                    message,
                )
                .await
            }
            Instruction::Forward(a) => {
                forwards.push(a);
                continue;
            }
            Instruction::Maildir(dir) => {
                let quota = if dir == target.maildir {
                    target.quota
                } else {
                    None
                };
                deliver_maildir(cfg, &dir, quota, env.recipient, &rp, &dt, message).await
            }
            Instruction::Mbox(path) => deliver_mbox(&path, env.sender, &rp, &dt, message).await,
            Instruction::Program(cmd) => {
                let input = shared.get_or_insert_with(|| Arc::new(message.to_vec()));
                match run_line_program(&cmd, target, env, &rp, &dt, Arc::clone(input)).await {
                    Step::Stop(text) => {
                        done.push(text);
                        break;
                    }
                    other => other,
                }
            }
        };
        match r {
            Step::Ok(text) => done.push(text),
            Step::Stop(_) => unreachable!("handled above"),
            Step::Fail(o) => return LocalReport::fail(o),
            Step::OverQuota(o) => {
                return LocalReport {
                    over_quota: true,
                    ..LocalReport::fail(o)
                }
            }
        }
    }
    let forward = (!forwards.is_empty()).then(|| {
        done.push(format!("forwarded to {}", forwards.join(", ")));
        Forward {
            recipients: forwards,
            dtline: dt.clone(),
        }
    });
    LocalReport {
        outcome: Outcome::Delivered(done.join("; ")),
        forward,
        over_quota: false,
    }
}

enum Step {
    Ok(String),
    Stop(String),
    Fail(Outcome),
    /// A failure because the mailbox is over quota.
    OverQuota(Outcome),
}

/// `OVERQUOTA_CMD maildir size cur_usage cur_count quota`, IndiMail's
/// `overquota.sh` hook: told, never asked (its exit does not change the
/// delivery's outcome; it has 30 seconds).
async fn run_overquota_cmd(
    policy: &maildir::QuotaPolicy,
    dir: &Path,
    size: u64,
    usage: maildir::Usage,
    quota: Quota,
) {
    let Some(cmd) = &policy.overquota_cmd else {
        return;
    };
    let spec = crate::program::ProgramSpec {
        program: cmd.clone(),
        args: vec![
            dir.display().to_string(),
            size.to_string(),
            usage.bytes.to_string(),
            usage.count.to_string(),
            quota.to_maildirsize(),
        ],
        cwd: None,
        env: Vec::new(),
    };
    let run = crate::program::run(spec, std::sync::Arc::new(Vec::new()));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), run).await;
}

async fn deliver_maildir(
    cfg: &LocalConfig,
    dir: &Path,
    quota: Option<Quota>,
    rcpt: &str,
    rp: &str,
    dt: &str,
    message: &[u8],
) -> Step {
    let mut data = Vec::with_capacity(rp.len() + dt.len() + message.len());
    data.extend_from_slice(rp.as_bytes());
    data.extend_from_slice(dt.as_bytes());
    data.extend_from_slice(message);
    let size = data.len() as u64;
    let mut before = None;
    if let Some(q) = quota {
        let over = match maildir::check(dir, q, size, &cfg.quota).await {
            Ok((QuotaCheck::Ok, usage)) => {
                before = Some((q, usage));
                None
            }
            Ok((QuotaCheck::OverBounce(why), u)) => Some((Outcome::Permanent(why), u)),
            Ok((QuotaCheck::OverHold(why), u)) => Some((Outcome::Temporary(why), u)),
            Err(e) => {
                return Step::Fail(Outcome::Temporary(format!(
                    "unable to read quota of {}: {e} (#4.3.0)",
                    dir.display()
                )))
            }
        };
        if let Some((outcome, usage)) = over {
            run_overquota_cmd(&cfg.quota, dir, size, usage, q).await;
            return Step::OverQuota(outcome);
        }
    }
    match maildir::write(dir, &cfg.hostname, data, cfg.maildir_sync).await {
        Ok(path) => {
            if let Some((q, usage)) = before {
                // The message is safely delivered, so a failed size update is
                // not an error: `maildirsize` undercounts it until the file is
                // next recalculated (once it outgrows MAILDIRSIZE_MAX_SIZE or
                // MAILDIRSIZE_MAX_AGE, or is unreadable).
                let _ = maildir::append_async(dir, size as i64, 1).await;
                let crossed = maildir::warning_crossed(&cfg.quota.warn_at, q, usage, size);
                if let Some(percent) = crossed {
                    // Best effort, like the size update: the delivery itself is done.
                    let now = std::time::SystemTime::now();
                    let warning = maildir::warning_message(&cfg.hostname, rcpt, percent, q, now);
                    let _ = maildir::write(dir, &cfg.hostname, warning, cfg.maildir_sync).await;
                }
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Step::Ok(format!("delivered to {}/new/{name}", dir.display()))
        }
        Err(e) => Step::Fail(Outcome::Temporary(e.to_string())),
    }
}

async fn deliver_mbox(path: &Path, sender: &str, rp: &str, dt: &str, message: &[u8]) -> Step {
    let mut data = Vec::with_capacity(message.len() + 256);
    data.extend_from_slice(ufline(sender).as_bytes());
    data.extend_from_slice(rp.as_bytes());
    data.extend_from_slice(dt.as_bytes());
    // mboxrd quoting: any line matching ^>*From gets one more '>'.
    for line in message.split_inclusive(|&b| b == b'\n') {
        let stripped = line.iter().position(|&b| b != b'>').map(|i| &line[i..]);
        if stripped.is_some_and(|s| s.starts_with(b"From ")) {
            data.push(b'>');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    data.push(b'\n');
    let path = path.to_path_buf();
    let r = tokio::task::spawn_blocking(move || mbox_append(&path, &data)).await;
    match r {
        Ok(Ok(p)) => Step::Ok(format!("delivered to mbox {p}")),
        Ok(Err(e)) => Step::Fail(Outcome::Temporary(format!("{e} (#4.2.1)"))),
        Err(e) => Step::Fail(Outcome::Temporary(format!("mbox writer failed: {e}"))),
    }
}

fn mbox_append(path: &Path, data: &[u8]) -> Result<String, LocalError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(mbox_err("open", path))?;
    maildir::lock_write(&f).map_err(mbox_err("lock", path))?;
    let end = f.metadata().map_err(mbox_err("stat", path))?.len();
    let r = f.write_all_at(data, end).and_then(|_| f.sync_data());
    if let Err(e) = r {
        // Leave the mbox as it was: a half message would corrupt the next one.
        let _ = f.set_len(end);
        return Err(mbox_err("write", path)(e));
    }
    Ok(path.display().to_string())
}

fn mbox_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LocalError + 'a {
    move |source| LocalError::Mbox {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn split_addr(addr: &str) -> (&str, &str) {
    match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    }
}

/// qmail-local's environment for programs.
fn program_env(
    target: &LocalTarget,
    env: LocalEnvelope<'_>,
    rp: &str,
    dt: &str,
) -> Vec<(String, String)> {
    let (local, host) = split_addr(env.recipient);
    let mut v = vec![
        ("SENDER".into(), env.sender.to_string()),
        ("RECIPIENT".into(), env.recipient.to_string()),
        ("LOCAL".into(), local.to_string()),
        ("HOST".into(), host.to_string()),
        ("EXT".into(), target.ext.clone()),
        ("DTLINE".into(), dt.to_string()),
        ("RPLINE".into(), rp.to_string()),
        ("UFLINE".into(), ufline(env.sender)),
        ("USER".into(), target.user.clone()),
        ("HOME".into(), target.home.display().to_string()),
    ];
    // EXT2..EXT4 drop the first 1..3 dash-separated parts; HOST2..HOST4 drop
    // the last 1..3 dot-separated parts (qmail-command(8)).
    let mut ext = target.ext.as_str();
    for i in 2..=4 {
        ext = ext.split_once('-').map(|(_, r)| r).unwrap_or("");
        v.push((format!("EXT{i}"), ext.to_string()));
    }
    let mut h = host;
    for i in 2..=4 {
        h = h.rsplit_once('.').map(|(l, _)| l).unwrap_or("");
        v.push((format!("HOST{i}"), h.to_string()));
    }
    v.extend(env.vars.iter().cloned());
    v
}

async fn run_line_program(
    cmd: &str,
    target: &LocalTarget,
    env: LocalEnvelope<'_>,
    rp: &str,
    dt: &str,
    message: Arc<Vec<u8>>,
) -> Step {
    let spec = ProgramSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), cmd.to_string()],
        cwd: Some(target.home.clone()),
        env: program_env(target, env, rp, dt),
    };
    let exit = match program::run(spec, message).await {
        Ok(x) => x,
        Err(e) => {
            return Step::Fail(Outcome::Temporary(format!(
                "Unable to run program: {e} (#4.3.0)"
            )))
        }
    };
    let text = program::output_text(&exit.output);
    match exit.code {
        Some(0) => Step::Ok(text),
        Some(99) => Step::Stop(text),
        // qmail-local treats sysexits' "bad data/config" codes as permanent.
        Some(64 | 65 | 70 | 76 | 77 | 78 | 100 | 112) => {
            Step::Fail(Outcome::Permanent(if text.is_empty() {
                format!("program exited {}", exit.code.unwrap_or(100))
            } else {
                text
            }))
        }
        Some(c) => Step::Fail(Outcome::Temporary(if text.is_empty() {
            format!("program exited {c}")
        } else {
            text
        })),
        None => Step::Fail(Outcome::Temporary(format!(
            "Program crashed (signal {}). (#4.3.0)",
            exit.signal.unwrap_or(0)
        ))),
    }
}

async fn run_qmaillocal(
    cfg: &LocalConfig,
    prog: &Path,
    target: &LocalTarget,
    env: LocalEnvelope<'_>,
    message: &[u8],
) -> Outcome {
    let (local, domain) = split_addr(env.recipient);
    let spec = ProgramSpec {
        program: prog.to_path_buf(),
        args: vec![
            "--".into(),
            target.user.clone(),
            target.home.display().to_string(),
            local.to_string(),
            target.dash.clone(),
            target.ext.clone(),
            domain.to_string(),
            env.sender.to_string(),
            cfg.defaultdelivery.clone(),
            String::new(),
        ],
        cwd: Some(target.home.clone()),
        env: env.vars.to_vec(),
    };
    match program::run(spec, Arc::new(message.to_vec())).await {
        Err(e) => Outcome::Temporary(format!("Unable to run {}: {e} (#4.3.0)", prog.display())),
        Ok(x) => {
            let text = program::output_text(&x.output);
            match x.code {
                Some(0) => Outcome::Delivered(text),
                Some(111) => Outcome::Temporary(text),
                None => Outcome::Temporary(format!(
                    "{} crashed (signal {}). (#4.3.0)",
                    prog.display(),
                    x.signal.unwrap_or(0)
                )),
                Some(_) => Outcome::Permanent(text),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_count_header_only() {
        let m = b"Delivered-To: a@b\nDelivered-To: A@B \nX: y\n\nDelivered-To: a@b\n";
        assert_eq!(delivered_to_count(m, "a@b"), 2);
        assert_eq!(delivered_to_count(m, "c@b"), 0);
    }

    #[test]
    fn env_extensions() {
        let t = LocalTarget {
            ext: "a-b-c".into(),
            ..Default::default()
        };
        let e = program_env(
            &t,
            LocalEnvelope {
                sender: "s@x",
                recipient: "u-a-b-c@mail.example.com",
                vars: &[],
            },
            "rp",
            "dt",
        );
        let get = |k: &str| {
            e.iter()
                .find(|(a, _)| a == k)
                .map(|(_, b)| b.clone())
                .unwrap()
        };
        assert_eq!(get("EXT2"), "b-c");
        assert_eq!(get("EXT4"), "");
        assert_eq!(get("HOST2"), "mail.example");
        assert_eq!(get("HOST3"), "mail");
        assert_eq!(get("LOCAL"), "u-a-b-c");
    }
}
