//! Local injection: `indimail queue inject` (also run as `qmail-queue`) and
//! the `sendmail` entry.
//!
//! A queue is written by the one shard that owns it, so an injecting
//! process never appends to a queue itself. It writes the message into the
//! queue's *drop directory* (`<queue>/inject/`) as one self-checking file,
//! makes it durable (file fsync, rename, directory fsync) and only then
//! exits 0 — exactly qmail-queue's promise. The owning shard imports drop
//! files into its queue (group-committed) and removes them; a server that is
//! not running imports them when it starts. A crash between import and
//! removal can import a file twice (at-least-once, as qmail documents for
//! delivery), never zero times.
//!
//! Drop file layout (all integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `IMINJ01\n` |
//! | 4 | envelope length E |
//! | E | envelope in qmail-queue form: `F<sender>\0T<rcpt>\0...\0` |
//! | 8 | body length B |
//! | B | message |
//! | 4 | CRC32C of everything before it |
//!
//! A message an SMTP shard routes into another shard's queue (`domainqueue`,
//! see `domainqueue`) is a drop file too, magic `IMINJ02\n`: after
//! the envelope, 4 bytes of length and that many bytes of *route record*
//! (pairs of 4-byte-length-prefixed key and value: `ip`, `helo`, `auth`,
//! `x.<name>` for envelope extras such as envheaders, `log` per logged
//! header), then the body as above. Its queue rules were applied once, as it
//! streamed in, so the importer queues it as it is.
//!
//! Files being written are named `tmp.*` and ignored by the importer.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use queue_layout::Paths;
use queue_layout::QueueSpec;

const MAGIC: &[u8; 8] = b"IMINJ01\n";
/// A message routed by SMTP, queue rules already applied (see the module docs).
const MAGIC_ROUTED: &[u8; 8] = b"IMINJ02\n";
/// qmail's ADDR limit: an envelope address longer than this is refused.
pub const MAX_ADDR: usize = 1003;

/// qmail-queue exit codes used here (spec 1.10).
pub mod exit {
    /// Queued.
    pub const OK: i32 = 0;
    /// Envelope address too long.
    pub const ADDR_TOO_LONG: i32 = 11;
    /// Write error or disk full.
    pub const WRITE: i32 = 53;
    /// Read error on the message or envelope (also: envelope ended early).
    pub const READ: i32 = 54;
    /// Unable to read configuration.
    pub const CONFIG: i32 = 55;
    /// Could not reach the queue directory.
    pub const CHDIR: i32 = 61;
    /// fsync failed.
    pub const FSYNC: i32 = 64;
    /// Envelope format error.
    pub const ENVELOPE: i32 = 79;
    /// Custom error: text on the error fd, `D` permanent / `Z` temporary.
    pub const CUSTOM: i32 = 88;
}

/// An envelope: sender (empty for bounces) and recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope sender.
    pub sender: String,
    /// Recipients, in order.
    pub recipients: Vec<String>,
}

/// Why an injection failed, with its qmail-queue exit code.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct InjectError {
    /// Exit code (spec 1.10).
    pub code: i32,
    /// What went wrong.
    pub text: String,
    /// For custom errors (88): whether the failure is permanent.
    pub permanent: bool,
}

impl InjectError {
    fn new(code: i32, text: impl Into<String>) -> InjectError {
        InjectError {
            code,
            text: text.into(),
            permanent: false,
        }
    }

    /// A custom (exit 88) permanent error.
    fn custom_permanent(text: impl Into<String>) -> InjectError {
        InjectError {
            code: exit::CUSTOM,
            text: text.into(),
            permanent: true,
        }
    }

    /// Whether the sender should retry (qmail: 11-40 and 115 are
    /// permanent; a custom error says so itself).
    pub fn is_temporary(&self) -> bool {
        if self.code == exit::CUSTOM {
            return !self.permanent;
        }
        !(11..=40).contains(&self.code) && self.code != 115
    }
}

/// Parses a qmail-queue envelope: `F<sender>\0T<rcpt>\0...\0`.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope, InjectError> {
    let bad = |t: &str| InjectError::new(exit::ENVELOPE, format!("envelope format error: {t}"));
    let mut fields = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(InjectError::new(
                exit::READ,
                "envelope ended before its terminating NUL",
            ));
        };
        let field = &rest[..nul];
        rest = &rest[nul + 1..];
        if field.is_empty() {
            break; // the extra NUL ends the list
        }
        fields.push(field);
    }
    let mut it = fields.into_iter();
    let first = it.next().ok_or_else(|| bad("no sender"))?;
    if first[0] != b'F' {
        return Err(bad("first field is not F<sender>"));
    }
    let sender = addr(&first[1..])?;
    let mut recipients = Vec::new();
    for f in it {
        match f[0] {
            b'T' => recipients.push(addr(&f[1..])?),
            // QHPSI legacy: a Q ends the recipient list.
            b'Q' => break,
            _ => return Err(bad("recipient field is not T<address>")),
        }
    }
    if recipients.is_empty() {
        return Err(bad("no recipients"));
    }
    Ok(Envelope { sender, recipients })
}

fn addr(b: &[u8]) -> Result<String, InjectError> {
    if b.len() > MAX_ADDR {
        return Err(InjectError::new(
            exit::ADDR_TOO_LONG,
            "envelope address too long",
        ));
    }
    String::from_utf8(b.to_vec())
        .map_err(|_| InjectError::new(exit::ENVELOPE, "envelope address is not UTF-8"))
}

/// Serializes an envelope in qmail-queue form.
pub fn envelope_bytes(e: &Envelope) -> Vec<u8> {
    let mut v = Vec::new();
    v.push(b'F');
    v.extend_from_slice(e.sender.as_bytes());
    v.push(0);
    for r in &e.recipients {
        v.push(b'T');
        v.extend_from_slice(r.as_bytes());
        v.push(0);
    }
    v.push(0);
    v
}

/// The queue an injection goes to (spec 1.5): `QUEUEDIR` verbatim; else a
/// random queue among those a running server imports from (its
/// [`serving_path`] file: the server may run with `--cpus` or
/// `INDIMAIL_SHARDS`, which this process cannot see); else among the
/// layout's queues. A server adopts every `queueN` it finds at start, so
/// even a stale choice is delivered, never stranded.
pub fn choose_queue(paths: &Paths) -> Result<QueueSpec, InjectError> {
    if let Some(dir) = std::env::var_os("QUEUEDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let number = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(queue_layout::queue_number)
            .unwrap_or(1);
        return Ok(QueueSpec { number, dir });
    }
    let queues = match read_serving(&paths.home) {
        Some(q) => q,
        None => paths
            .layout(None)
            .map_err(|e| InjectError::new(exit::CONFIG, e.to_string()))?
            .configured(),
    };
    let pick = (std::process::id() as usize ^ now_nanos() as usize) % queues.len().max(1);
    queues
        .get(pick)
        .cloned()
        .ok_or_else(|| InjectError::new(exit::CONFIG, "no queue configured"))
}

/// `<home>/run/queues`: written by a running `serve`, the queues it imports
/// drop files from (first line `pid N`, then `NUMBER DIR` per queue).
pub fn serving_path(home: &Path) -> PathBuf {
    home.join("run").join("queues")
}

/// Records the queues this server imports from (see [`choose_queue`]).
pub fn write_serving(home: &Path, queues: &[QueueSpec]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = serving_path(home);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = format!("pid {}\n", std::process::id()).into_bytes();
    for q in queues {
        text.extend_from_slice(format!("{} ", q.number).as_bytes());
        text.extend_from_slice(q.dir.as_os_str().as_bytes());
        text.push(b'\n');
    }
    // Renamed into place: an injector never reads half a list.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &path)
}

/// Removes the file written by [`write_serving`], if it is this process's.
pub fn remove_serving(home: &Path) {
    let path = serving_path(home);
    if serving_pid(&std::fs::read(&path).unwrap_or_default()) == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}

fn serving_pid(bytes: &[u8]) -> Option<i32> {
    let first = bytes.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(first.strip_prefix(b"pid ")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The queues of a running server; `None` when there is no file, it is
/// malformed, or its server is gone (a crash leaves the file behind).
fn read_serving(home: &Path) -> Option<Vec<QueueSpec>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = std::fs::read(serving_path(home)).ok()?;
    let pid = serving_pid(&bytes).filter(|p| *p > 0)?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        return None;
    }
    let mut out = Vec::new();
    for line in bytes.split(|&b| b == b'\n').skip(1) {
        if line.is_empty() {
            continue;
        }
        let sp = line.iter().position(|&b| b == b' ')?;
        let number = std::str::from_utf8(&line[..sp]).ok()?.parse().ok()?;
        let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&line[sp + 1..]));
        out.push(QueueSpec { number, dir });
    }
    (!out.is_empty()).then_some(out)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The drop directory of a queue.
pub fn drop_dir(queue: &Path) -> PathBuf {
    queue.join("inject")
}

/// Writes one message durably into the queue's drop directory. Returns the
/// drop file's name.
pub fn write_drop(queue: &Path, env: &Envelope, body: &[u8]) -> Result<String, InjectError> {
    let data = drop_bytes(MAGIC, &envelope_bytes(env), None, body);
    write_durable(queue, &data).map_err(|(stage, e)| match stage {
        Stage::Dir => InjectError::new(
            exit::CHDIR,
            format!("cannot create {}: {e}", drop_dir(queue).display()),
        ),
        Stage::Write => InjectError::new(exit::WRITE, format!("write error: {e}")),
        Stage::Sync => InjectError::new(exit::FSYNC, format!("fsync error: {e}")),
    })
}

/// The queue-side details of a message routed by SMTP (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// SMTP client address.
    pub client_ip: Option<std::net::IpAddr>,
    /// HELO/EHLO argument.
    pub helo: String,
    /// Authenticated user.
    pub auth_user: Option<String>,
    /// Envelope extras (envheaders...), as the queue stores them.
    pub extra: Vec<(String, String)>,
    /// The `logheaders` lines the importer logs with the queued id.
    pub logged: Vec<String>,
}

/// Writes a message routed by SMTP durably into `queue`'s drop directory
/// (file and directory fsynced before `Ok`); nothing is left behind on
/// `Err`. Returns the drop file's name.
pub fn write_routed(
    queue: &Path,
    env: &Envelope,
    routed: &Routed,
    body: &[u8],
) -> std::io::Result<String> {
    let mut rec = Vec::new();
    let mut pair = |k: &str, v: &str| {
        for part in [k, v] {
            rec.extend_from_slice(&(part.len() as u32).to_be_bytes());
            rec.extend_from_slice(part.as_bytes());
        }
    };
    if let Some(ip) = routed.client_ip {
        pair("ip", &ip.to_string());
    }
    pair("helo", &routed.helo);
    if let Some(a) = &routed.auth_user {
        pair("auth", a);
    }
    for (k, v) in &routed.extra {
        pair(&format!("x.{k}"), v);
    }
    for l in &routed.logged {
        pair("log", l);
    }
    let data = drop_bytes(MAGIC_ROUTED, &envelope_bytes(env), Some(&rec), body);
    write_durable(queue, &data).map_err(|(_, e)| e)
}

fn drop_bytes(magic: &[u8; 8], envb: &[u8], record: Option<&[u8]>, body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(body.len() + envb.len() + 64);
    data.extend_from_slice(magic);
    data.extend_from_slice(&(envb.len() as u32).to_be_bytes());
    data.extend_from_slice(envb);
    if let Some(rec) = record {
        data.extend_from_slice(&(rec.len() as u32).to_be_bytes());
        data.extend_from_slice(rec);
    }
    data.extend_from_slice(&(body.len() as u64).to_be_bytes());
    data.extend_from_slice(body);
    let crc = crc32c::crc32c(&data);
    data.extend_from_slice(&crc.to_be_bytes());
    data
}

/// Where a durable write failed.
enum Stage {
    Dir,
    Write,
    Sync,
}

/// `tmp.<name>` written and fsynced, renamed to `<name>`, directory fsynced:
/// the importer sees the whole file or nothing.
fn write_durable(queue: &Path, data: &[u8]) -> Result<String, (Stage, std::io::Error)> {
    let dir = drop_dir(queue);
    std::fs::create_dir_all(&dir).map_err(|e| (Stage::Dir, e))?;
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{}.{}.{}",
        now_nanos(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join(format!("tmp.{name}"));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| (Stage::Write, e))?;
        f.write_all(data).map_err(|e| (Stage::Write, e))?;
        f.sync_data().map_err(|e| (Stage::Sync, e))?;
        std::fs::rename(&tmp, dir.join(&name)).map_err(|e| (Stage::Write, e))?;
        // The rename is durable only once the directory is (ext4, no journal).
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| (Stage::Sync, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        // A rename that happened before the directory sync failed: the file
        // may be there; the sender is told "not queued", so it must not be.
        let _ = std::fs::remove_file(dir.join(&name));
    }
    result.map(|()| name)
}

/// What is wrong with a drop file (it is set aside, never deleted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DropError {
    /// Shorter than the smallest drop file.
    #[error("not a drop file (too short)")]
    TooShort,
    /// Neither drop-file magic.
    #[error("not a drop file (bad magic)")]
    BadMagic,
    /// The trailing CRC does not match.
    #[error("checksum mismatch (torn or corrupt)")]
    Checksum,
    /// The envelope field does not parse.
    #[error("{0}")]
    Envelope(#[from] InjectError),
    /// Bytes left after the body.
    #[error("body length mismatch")]
    BodyLength,
    /// A length prefix cut short.
    #[error("truncated length field")]
    TruncatedLength,
    /// A length beyond the bytes left.
    #[error("field length out of range")]
    FieldLength,
    /// A route record key or value that is not UTF-8.
    #[error("route record is not UTF-8")]
    RouteNotUtf8,
    /// The route record's `ip` does not parse.
    #[error("bad ip in route record")]
    RouteIp,
    /// A route record key this version does not know.
    #[error("unknown key `{0}` in route record")]
    RouteKey(String),
}

/// A drop file read back.
#[derive(Debug)]
pub struct DropFile {
    /// Its envelope.
    pub envelope: Envelope,
    /// The message.
    pub body: Vec<u8>,
    /// Set for a message routed by SMTP: queue rules already applied.
    pub routed: Option<Routed>,
}

/// Reads and checks a drop file; `Err` names what is wrong.
pub fn read_drop(bytes: &[u8]) -> Result<DropFile, DropError> {
    if bytes.len() < MAGIC.len() + 4 + 8 + 4 {
        return Err(DropError::TooShort);
    }
    let routed = match &bytes[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_ROUTED => true,
        _ => return Err(DropError::BadMagic),
    };
    let (payload, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(payload) != crc {
        return Err(DropError::Checksum);
    }
    let mut p = &payload[8..];
    let envb = take_field(&mut p, 4)?;
    let envelope = parse_envelope(envb)?;
    let routed = if routed {
        Some(parse_routed(take_field(&mut p, 4)?)?)
    } else {
        None
    };
    let body = take_field(&mut p, 8)?;
    if !p.is_empty() {
        return Err(DropError::BodyLength);
    }
    Ok(DropFile {
        envelope,
        body: body.to_vec(),
        routed,
    })
}

/// A field prefixed by its big-endian length (`width` bytes: 4 or 8).
fn take_field<'a>(p: &mut &'a [u8], width: usize) -> Result<&'a [u8], DropError> {
    if p.len() < width {
        return Err(DropError::TruncatedLength);
    }
    let len = p[..width]
        .iter()
        .fold(0u64, |n, b| (n << 8) | u64::from(*b));
    let rest = &p[width..];
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= rest.len())
        .ok_or(DropError::FieldLength)?;
    *p = &rest[len..];
    Ok(&rest[..len])
}

fn parse_routed(mut rec: &[u8]) -> Result<Routed, DropError> {
    let mut r = Routed::default();
    while !rec.is_empty() {
        let k = take_field(&mut rec, 4)?;
        let v = take_field(&mut rec, 4)?;
        let (k, v) = match (std::str::from_utf8(k), std::str::from_utf8(v)) {
            (Ok(k), Ok(v)) => (k, v.to_string()),
            _ => return Err(DropError::RouteNotUtf8),
        };
        match k {
            "ip" => r.client_ip = Some(v.parse().map_err(|_| DropError::RouteIp)?),
            "helo" => r.helo = v,
            "auth" => r.auth_user = Some(v),
            "log" => r.logged.push(v),
            _ => match k.strip_prefix("x.") {
                Some(name) => r.extra.push((name.to_string(), v)),
                None => return Err(DropError::RouteKey(k.to_string())),
            },
        }
    }
    Ok(r)
}

/// `indimail queue inject` / `qmail-queue`: message on fd 0, envelope on
/// fd 1. Returns the exit code.
pub fn qmail_queue_main(paths: &Paths) -> i32 {
    let error_fd: i32 = std::env::var("ERROR_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    match qmail_queue(paths) {
        Ok(_) => exit::OK,
        Err(e) => {
            // Custom errors carry their text on the error fd (spec 1.10);
            // for the others the text is a courtesy to a human reader.
            let text = if e.code == exit::CUSTOM {
                format!("{}{}", if e.is_temporary() { 'Z' } else { 'D' }, e.text)
            } else {
                format!("qmail-queue: {} (exit {})\n", e.text, e.code)
            };
            // SAFETY: the fd is only borrowed for one write; ManuallyDrop
            // keeps it open.
            let mut f =
                std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(error_fd) });
            let _ = f.write_all(text.as_bytes());
            e.code
        }
    }
}

fn qmail_queue(paths: &Paths) -> Result<String, InjectError> {
    let (body, envelope) = read_queue_input()?;
    check_size(paths, body.len())?;
    let queue = choose_queue(paths)?;
    let body = with_received(body, None);
    write_drop(&queue.dir, &envelope, &body)
}

/// `qmail-nullqueue`: speaks the qmail-queue protocol and discards the
/// message (IndiMail's blackhole `QMAILQUEUE`); a bad envelope is still an
/// error, as it would be for qmail-queue.
pub fn qmail_nullqueue_main() -> i32 {
    match read_queue_input() {
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("qmail-nullqueue: {} (exit {})", e.text, e.code);
            e.code
        }
    }
}

/// The message (fd 0) and the envelope (fd 1) of the qmail-queue protocol.
fn read_queue_input() -> Result<(Vec<u8>, Envelope), InjectError> {
    // Message first: the caller writes it before the envelope (qmail_open).
    let mut body = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut body)
        .map_err(|e| InjectError::new(exit::READ, format!("read error on message: {e}")))?;
    let mut env = Vec::new();
    // SAFETY: fd 1 is the envelope pipe in the qmail-queue protocol; it is
    // owned here for the rest of the process.
    let mut fd1 = unsafe { std::fs::File::from_raw_fd(1) };
    fd1.read_to_end(&mut env)
        .map_err(|e| InjectError::new(exit::READ, format!("read error on envelope: {e}")))?;
    std::mem::forget(fd1);
    Ok((body, parse_envelope(&env)?))
}

fn check_size(paths: &Paths, len: usize) -> Result<(), InjectError> {
    let limit = control::env::env_number("DATABYTES", 0u64)
        .and_then(|v| {
            if std::env::var_os("DATABYTES").is_some() {
                Ok(v)
            } else {
                paths.control.number("databytes", 0u64)
            }
        })
        .map_err(|e| InjectError::new(exit::CONFIG, e.to_string()))?;
    if limit > 0 && len as u64 > limit {
        return Err(InjectError::custom_permanent(
            "message too large for this server (#5.3.4)",
        ));
    }
    Ok(())
}

/// The `Received:` line qmail-queue writes (spec 1.6), in our words.
fn with_received(body: Vec<u8>, from_ip: Option<&str>) -> Vec<u8> {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let by = match from_ip {
        Some(ip) => format!("from network {ip}, by uid {uid}"),
        None => format!("by uid {uid}"),
    };
    let host = if std::env::var_os("HIDE_HOST").is_some() {
        String::new()
    } else {
        format!(" by host {}", control::env::system_hostname())
    };
    let line = format!(
        "Received: (indimail-rs queue {}{host} invoked {by});\n\t{}\n",
        std::process::id(),
        delivery::bounce::rfc5322_date_of(std::time::SystemTime::now())
    );
    let mut out = Vec::with_capacity(line.len() + body.len());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_file_round_trip_and_stale() {
        let home = tempfile::tempdir().unwrap();
        assert!(read_serving(home.path()).is_none());
        let qs = vec![QueueSpec {
            number: 3,
            dir: home.path().join("q dir/queue3"),
        }];
        write_serving(home.path(), &qs).unwrap();
        assert_eq!(read_serving(home.path()), Some(qs));
        // A dead server's file is ignored.
        std::fs::write(serving_path(home.path()), "pid 2147483646\n1 /q/queue1\n").unwrap();
        assert!(read_serving(home.path()).is_none());
        remove_serving(home.path());
        assert!(serving_path(home.path()).exists(), "not ours: kept");
    }

    #[test]
    fn envelope_round_trip() {
        let e = Envelope {
            sender: "a@b".into(),
            recipients: vec!["c@d".into(), "e@f".into()],
        };
        assert_eq!(parse_envelope(&envelope_bytes(&e)).unwrap(), e);
        let null = parse_envelope(b"F\0Tx@y\0\0").unwrap();
        assert_eq!(null.sender, "");
    }

    #[test]
    fn envelope_errors_have_qmail_codes() {
        assert_eq!(
            parse_envelope(b"Xa\0Tb\0\0").unwrap_err().code,
            exit::ENVELOPE
        );
        assert_eq!(parse_envelope(b"Fa\0Tb\0").unwrap_err().code, exit::READ);
        assert_eq!(
            parse_envelope(b"Fa\0Zb\0\0").unwrap_err().code,
            exit::ENVELOPE
        );
        let long = format!("F{}\0Tb\0\0", "a".repeat(1004));
        assert_eq!(
            parse_envelope(long.as_bytes()).unwrap_err().code,
            exit::ADDR_TOO_LONG
        );
        assert_eq!(
            parse_envelope(b"Fa\0Tb\0Qc\0\0").unwrap().recipients,
            vec!["b"]
        );
    }

    #[test]
    fn drop_file_round_trip_and_torn() {
        let dir = tempfile::tempdir().unwrap();
        let e = Envelope {
            sender: "s@x".into(),
            recipients: vec!["r@y".into()],
        };
        let name = write_drop(dir.path(), &e, b"Subject: hi\n\nbody\n").unwrap();
        let bytes = std::fs::read(drop_dir(dir.path()).join(&name)).unwrap();
        let d = read_drop(&bytes).unwrap();
        assert_eq!(d.envelope, e);
        assert_eq!(d.body, b"Subject: hi\n\nbody\n");
        for cut in 0..bytes.len() {
            assert!(read_drop(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(read_drop(&flipped).is_err());
        assert!(
            d.routed.is_none(),
            "an injected message gets the queue rules"
        );
    }

    #[test]
    fn routed_drop_round_trip_and_torn() {
        let dir = tempfile::tempdir().unwrap();
        let e = Envelope {
            sender: "".into(),
            recipients: vec!["r@slow.example".into(), "archive@x".into()],
        };
        let routed = Routed {
            client_ip: Some("127.0.0.9".parse().unwrap()),
            helo: "client.test".into(),
            auth_user: Some("u@x".into()),
            extra: vec![("envheader".into(), "X_TICKET=T-1".into())],
            logged: vec!["Subject: hi".into()],
        };
        let name = write_routed(dir.path(), &e, &routed, b"Subject: hi\n\nbody\n").unwrap();
        let bytes = std::fs::read(drop_dir(dir.path()).join(&name)).unwrap();
        let d = read_drop(&bytes).unwrap();
        assert_eq!((d.envelope, d.routed), (e, Some(routed)));
        assert_eq!(d.body, b"Subject: hi\n\nbody\n");
        for cut in 0..bytes.len() {
            assert!(read_drop(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let names: Vec<_> = std::fs::read_dir(drop_dir(dir.path())).unwrap().collect();
        assert_eq!(names.len(), 1, "no tmp file left");
    }
}
