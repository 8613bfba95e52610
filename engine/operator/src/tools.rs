//! The command-line side of the queue tools (`indimail queue show | delete
//! | bounce | hold | release | flush | shape`), the qmail names
//! (`qmail-qread`, `qmail-qstat`, `qmail-rm`) and `install-links`.
//!
//! The work is done by [`crate::queuectl`] (on the running server through
//! its control socket, or on the queue files of a stopped one); this module
//! parses arguments, asks for confirmation and prints.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use queue_store::{BadMessageId, MessageId, RecipientState};

use crate::queuectl::{self, Op, Selection};
use queue_layout::Paths;

/// Which messages: envelope ids and/or patterns, and text in the messages.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SelectArgs {
    #[command(flatten)]
    pub envelope: ListArgs,
    /// Text in the envelope or the message (headers and body).
    #[arg(long)]
    pub grep: Option<String>,
    /// --grep ignores case.
    #[arg(long, short = 'i')]
    pub ignore_case: bool,
    /// Every message (required when no id or pattern narrows the choice).
    #[arg(long)]
    pub all: bool,
}

impl SelectArgs {
    fn selection(&self) -> Result<Selection, BadMessageId> {
        Ok(Selection {
            grep: self.grep.clone(),
            icase: self.ignore_case,
            ..self.envelope.selection()?
        })
    }
}

/// Which messages `queue list` shows: ids and/or envelope patterns, all of
/// which must match (the selection of the other queue commands without
/// `--grep`, which needs the messages themselves).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ListArgs {
    /// Message ids, as `queue list` prints them (e.g. 1-1-32).
    pub ids: Vec<String>,
    /// Envelope sender: an address, `@domain`, or `<>` for bounces.
    #[arg(long)]
    pub sender: Option<String>,
    /// A recipient: an address or `@domain`.
    #[arg(long)]
    pub rcpt: Option<String>,
    /// A recipient domain.
    #[arg(long)]
    pub domain: Option<String>,
}

impl ListArgs {
    /// The selection these arguments make.
    pub fn selection(&self) -> Result<Selection, BadMessageId> {
        let mut ids = Vec::new();
        for i in &self.ids {
            ids.push(i.parse::<MessageId>()?);
        }
        Ok(Selection {
            ids,
            sender: self.sender.clone(),
            rcpt: self.rcpt.clone(),
            domain: self.domain.clone(),
            grep: None,
            icase: false,
        })
    }
}

/// A command that changes the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Remove without a bounce.
    Delete,
    /// Bounce to the sender.
    Bounce,
    /// Operator hold.
    Hold,
    /// Off hold.
    Release,
    /// Retry now.
    Flush,
}

impl Change {
    fn op(self, s: Selection) -> Op {
        match self {
            Change::Delete => Op::Delete(s),
            Change::Bounce => Op::Bounce(s),
            Change::Hold => Op::Hold(s),
            Change::Release => Op::Release(s),
            Change::Flush => Op::Flush(s),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Change::Delete => "delete",
            Change::Bounce => "bounce",
            Change::Hold => "hold",
            Change::Release => "release",
            Change::Flush => "flush",
        }
    }
}

fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty(3) on a descriptor number; no memory involved.
    unsafe { libc::isatty(fd) == 1 }
}

/// `indimail queue delete|bounce|hold|release|flush`. Delete and bounce
/// ask for confirmation on a terminal and need `--yes` otherwise.
pub fn change(paths: &Paths, what: Change, args: &SelectArgs, yes: bool) -> i32 {
    let name = what.name();
    let sel = match args.selection() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("indimail queue {name}: {e}");
            return 100;
        }
    };
    if sel.is_everything() && !args.all && what != Change::Flush {
        eprintln!(
            "indimail queue {name}: give message ids or a pattern (--sender, --rcpt, --domain, --grep), or --all"
        );
        return 100;
    }
    if !yes {
        if !(is_terminal(0) && is_terminal(2)) {
            eprintln!("indimail queue {name}: not on a terminal: confirm with --yes");
            return 100;
        }
        let preview = match queuectl::execute(paths, &Op::Select(sel.clone())) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("indimail queue {name}: {e}");
                return 111;
            }
        };
        let _ = std::io::stdout().write_all(&preview.text);
        if preview.messages == 0 {
            return 0;
        }
        eprint!(
            "{name} the selected recipients of these {} messages? [y/N] ",
            preview.messages
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
            eprintln!("nothing done");
            return 1;
        }
    }
    run(paths, &what.op(sel), name)
}

fn run(paths: &Paths, op: &Op, name: &str) -> i32 {
    match queuectl::execute(paths, op) {
        Ok(a) => {
            let _ = std::io::stdout().write_all(&a.text);
            if a.ok {
                0
            } else {
                111
            }
        }
        Err(e) => {
            eprintln!("indimail queue {name}: {e}");
            111
        }
    }
}

/// `indimail queue show ID [--body]`.
pub fn show(paths: &Paths, id: &str, body: bool) -> i32 {
    let id = match id.parse::<MessageId>() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("indimail queue show: {e}");
            return 100;
        }
    };
    match queuectl::execute(paths, &Op::Show { id, body }) {
        Ok(a) => {
            let _ = std::io::stdout().write_all(&a.text);
            if a.ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("indimail queue show: {e}");
            111
        }
    }
}

/// Why the queues cannot be scanned.
#[derive(Debug, thiserror::Error)]
enum ScanError {
    /// The queue layout (control files, variables) is wrong.
    #[error("{0}")]
    Layout(#[from] queue_layout::LayoutErrors),
    /// A queue's log cannot be read.
    #[error("{0}")]
    Queue(#[from] queue_store::QueueError),
}

/// Every live message of every queue (read-only scan, running server or
/// not), with its queue number.
fn scan_all(paths: &Paths) -> Result<Vec<(u32, queue_store::QueuedMessage)>, ScanError> {
    let queues = paths.layout_with_existing()?.specs();
    let mut out = Vec::new();
    for q in queues {
        if !q.dir.join("seg").is_dir() {
            continue;
        }
        for m in queue_store::scan(&q.dir)? {
            out.push((q.number, m));
        }
    }
    Ok(out)
}

/// qshape's age buckets, in minutes: a recipient of age `a` minutes is
/// counted in the first bucket whose bound is at least `a`.
const SHAPE_BUCKETS: [u64; 10] = [5, 10, 20, 40, 80, 160, 320, 640, 1280, u64::MAX];

/// `indimail queue shape`: pending recipients by destination (or sender)
/// domain and age, like Postfix's qshape.
pub fn shape(paths: &Paths, by_sender: bool, top: usize) -> i32 {
    let msgs = match scan_all(paths) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("indimail queue shape: {e}");
            return 111;
        }
    };
    let now = queue_store::Envelope::now();
    let mut rows: BTreeMap<String, [u64; 11]> = BTreeMap::new();
    let mut total = [0u64; 11];
    for (_, m) in &msgs {
        let age_min = now.saturating_sub(m.envelope.arrival) / 60;
        let b = SHAPE_BUCKETS
            .iter()
            .position(|&limit| age_min <= limit)
            .unwrap_or(SHAPE_BUCKETS.len() - 1);
        for (addr, st) in m.envelope.recipients.iter().zip(&m.recipients) {
            if st.state != RecipientState::Pending {
                continue;
            }
            let of = if by_sender { &m.envelope.sender } else { addr };
            let domain = of
                .rsplit_once('@')
                .map_or(if of.is_empty() { "<>" } else { of.as_str() }, |(_, d)| d)
                .to_ascii_lowercase();
            let row = rows.entry(domain).or_default();
            for r in [row, &mut total] {
                r[0] += 1;
                r[b + 1] += 1;
            }
        }
    }
    let mut sorted: Vec<(String, [u64; 11])> = rows.into_iter().collect();
    sorted.sort_by(|a, b| b.1[0].cmp(&a.1[0]).then(a.0.cmp(&b.0)));
    if top > 0 {
        sorted.truncate(top);
    }
    let heads = [
        "T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+",
    ];
    let width = sorted
        .iter()
        .map(|(d, _)| d.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = String::new();
    out.push_str(&format!("{:>width$}", ""));
    for h in heads {
        out.push_str(&format!(" {h:>5}"));
    }
    out.push('\n');
    for (name, row) in std::iter::once(("TOTAL".to_string(), total)).chain(sorted) {
        out.push_str(&format!("{name:>width$}"));
        for v in row {
            out.push_str(&format!(" {v:>5}"));
        }
        out.push('\n');
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    0
}

/// The domains delivered here according to `locals` / `virtualdomains`
/// (directory domains are not asked: a listing must not need the database).
fn local_domains(paths: &Paths) -> control::DomainList {
    let mut v = paths.control.list("locals").unwrap_or_default();
    if v.is_empty() {
        if let Ok(Some(me)) = paths.control.string("me") {
            v.push(me);
        }
        v.push("localhost".into());
    }
    v.extend(
        paths
            .control
            .list("virtualdomains")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|l| l.split_once(':').map(|(d, _)| d.to_string())),
    );
    control::DomainList::new(v)
}

/// `qmail-qread`: qmail's listing format (arrival date, `#id`, size,
/// `<sender>`, then one `\tlocal|remote\taddress` line per recipient,
/// `done` for finished ones).
pub fn qmail_qread(paths: &Paths) -> i32 {
    let msgs = match scan_all(paths) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("qmail-qread: {e}");
            return 111;
        }
    };
    let locals = local_domains(paths);
    let mut out = String::new();
    for (_, m) in &msgs {
        // "Tue, 24 Nov 2026 02:18:09 +0000" -> "24 Nov 2026 02:18:09 GMT"
        let date = delivery::bounce::rfc5322_date(m.envelope.arrival);
        let date = date.split_once(", ").map_or(date.as_str(), |(_, d)| d);
        let date = date.trim_end_matches(" +0000");
        out.push_str(&format!(
            "{date} GMT  #{}  {}  <{}>{}\n",
            m.id,
            m.size,
            m.envelope.sender,
            if m.held { " held" } else { "" }
        ));
        for (addr, st) in m.envelope.recipients.iter().zip(&m.recipients) {
            let channel = if locals.contains(addr.rsplit_once('@').map_or("", |(_, d)| d)) {
                "local"
            } else {
                "remote"
            };
            let done = match st.state {
                RecipientState::Pending => "",
                RecipientState::Done => "done",
                RecipientState::Failed => "failed",
            };
            out.push_str(&format!("\t{done}\t{channel}\t{addr}\n"));
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    0
}

/// `qmail-qstat`: qmail's two lines, summed over every queue ("not yet
/// preprocessed" = drop files not imported yet).
pub fn qmail_qstat(paths: &Paths) -> i32 {
    let msgs = match scan_all(paths) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("qmail-qstat: {e}");
            return 111;
        }
    };
    let mut drops = 0;
    if let Ok(queues) = paths.layout_with_existing().map(|l| l.specs()) {
        for q in queues {
            if let Ok(rd) = std::fs::read_dir(scheduler::inject::drop_dir(&q.dir)) {
                drops += rd
                    .flatten()
                    .filter(|e| {
                        !e.file_name().to_string_lossy().starts_with("tmp.") && e.path().is_file()
                    })
                    .count();
            }
        }
    }
    println!("messages in queue: {}", msgs.len() + drops);
    println!("messages in queue but not yet preprocessed: {drops}");
    0
}

/// `qmail-rm` (subset): `-p PATTERN` selects messages whose envelope or
/// text contains PATTERN (`-i` ignores case); without `-r`/`-X` the matches
/// are listed; `-r` removes them, `-X` expires them (bounce to the sender).
/// Removing or expiring asks on a terminal, or needs `-y`.
pub fn qmail_rm(paths: &Paths, args: &[String]) -> i32 {
    let usage = "usage: qmail-rm [-i] [-r | -X] [-y] -p pattern";
    let (mut pattern, mut icase, mut remove, mut expire, mut yes) =
        (None, false, false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" => pattern = it.next().cloned(),
            "-i" => icase = true,
            "-r" => remove = true,
            "-X" => expire = true,
            "-y" => yes = true,
            "-v" => {}
            "-h" | "-?" => {
                println!("{usage}");
                return 0;
            }
            s if s.starts_with("-p") && s.len() > 2 => pattern = Some(s[2..].to_string()),
            other => {
                eprintln!("qmail-rm: unknown option {other}\n{usage}");
                return 100;
            }
        }
    }
    let Some(pattern) = pattern.filter(|p| !p.is_empty()) else {
        eprintln!("qmail-rm: no pattern\n{usage}");
        return 100;
    };
    if remove && expire {
        eprintln!("qmail-rm: -r and -X exclude each other");
        return 100;
    }
    let sel = SelectArgs {
        grep: Some(pattern),
        ignore_case: icase,
        ..SelectArgs::default()
    };
    if remove {
        change(paths, Change::Delete, &sel, yes)
    } else if expire {
        change(paths, Change::Bounce, &sel, yes)
    } else {
        match sel.selection() {
            Ok(s) => run(paths, &Op::Select(s), "qmail-rm"),
            Err(e) => {
                eprintln!("qmail-rm: {e}");
                100
            }
        }
    }
}

/// Every name the binary answers to when invoked through a link.
pub fn program_names() -> Vec<&'static str> {
    let mut v = vec![
        "qmail-queue",
        "qmail-nullqueue",
        "sendmail",
        "qmail-qread",
        "qmail-qstat",
        "qmail-rm",
        "recipient-cdb",
        "indisrvr",
        "adminclient",
    ];
    v.extend(lookup::cli::PROGRAMS);
    v
}

/// `indimail install-links DIR`: DIR/<name> -> this binary for every
/// program name; an existing file of that name is kept unless `force`
/// (a link to this binary already is fine).
pub fn install_links(dir: &Path, force: bool) -> i32 {
    let exe = match std::env::current_exe().and_then(|p| p.canonicalize()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("indimail install-links: cannot find this binary: {e}");
            return 111;
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("indimail install-links: {}: {e}", dir.display());
        return 111;
    }
    let mut problems = 0;
    for name in program_names() {
        let link = dir.join(name);
        if let Ok(meta) = std::fs::symlink_metadata(&link) {
            let ours =
                meta.file_type().is_symlink() && std::fs::read_link(&link).is_ok_and(|t| t == exe);
            if ours {
                println!("{}: already linked", link.display());
                continue;
            }
            if !force {
                eprintln!(
                    "{}: exists and is not a link to {}: kept (--force replaces it)",
                    link.display(),
                    exe.display()
                );
                problems += 1;
                continue;
            }
            if let Err(e) = std::fs::remove_file(&link) {
                eprintln!("{}: {e}", link.display());
                problems += 1;
                continue;
            }
        }
        match std::os::unix::fs::symlink(&exe, &link) {
            Ok(()) => println!("{} -> {}", link.display(), exe.display()),
            Err(e) => {
                eprintln!("{}: {e}", link.display());
                problems += 1;
            }
        }
    }
    i32::from(problems > 0)
}

/// `recipient-cdb` (IndiMail's `qmail-recipients`): compiles `<home>/users/recipients`, one
/// address a line (`#` comments), into `users/recipients.cdb` with the keys `:address` in
/// lower case that the RECIPIENTS extension looks up (`control/recipients`, CHECKRECIPIENT=2|3).
/// Written to a temporary file, synced and renamed into place, so a running server never maps a
/// half-written cdb; the server reloads its policy when the file changes.
pub fn recipient_cdb(paths: &Paths) -> i32 {
    let dir = paths.home.join("users");
    let src = dir.join("recipients");
    let text = match std::fs::read_to_string(&src) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "recipient-cdb: fatal: unable to read {}: {e}",
                src.display()
            );
            return 111;
        }
    };
    let tmp = dir.join("recipients.tmp");
    let out = dir.join("recipients.cdb");
    let write = || -> std::io::Result<usize> {
        let mut w = cdb::CDBWriter::create(tmp.display().to_string())?;
        let mut n = 0;
        for line in text.lines() {
            let a = line.trim_end();
            if a.is_empty() || a.starts_with('#') {
                continue;
            }
            w.add(format!(":{}", a.to_ascii_lowercase()).as_bytes(), b"")?;
            n += 1;
        }
        w.finish()?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &out)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(n)
    };
    match write() {
        Ok(n) => {
            println!("recipient-cdb: {n} addresses in {}", out.display());
            0
        }
        Err(e) => {
            eprintln!(
                "recipient-cdb: fatal: unable to write {}: {e}",
                out.display()
            );
            let _ = std::fs::remove_file(&tmp);
            111
        }
    }
}
