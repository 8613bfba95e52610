//! `indimail queue list` and `indimail queue stat` (qmail-qread and qmail-qstat's roles): what
//! is queued, read from the queue logs, the drop directories and `quarantine/`, on a running
//! or stopped server.

use queue_layout::Paths;
use queue_layout::QueueSpec;

use crate::progress;

use scheduler::inject;

use crate::tools;

/// Why the queues could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The ids or patterns given do not parse.
    #[error("{0}")]
    Selection(#[from] queue_store::BadMessageId),
    /// The queue layout (control files, variables) is wrong.
    #[error("{0}")]
    Layout(#[from] queue_layout::LayoutErrors),
    /// A queue's log could not be read.
    #[error(transparent)]
    Queue(#[from] queue_store::QueueError),
    /// Writing the list failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub fn queue_list(paths: &Paths, args: &tools::ListArgs) -> Result<(), ListError> {
    let sel = args.selection()?;
    let queues = paths
        .layout_with_existing()
        .map_err(ListError::Layout)?
        .specs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut total = 0usize;
    // A large queue takes a while to read: a bar on a terminal, a line
    // every few seconds otherwise (stderr; the list is on stdout).
    let bytes: u64 = queues
        .iter()
        .map(|q| queue_store::segment_bytes(&q.dir))
        .sum();
    let mut progress = progress::Progress::new("queue list: scanning (bytes)", bytes);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write as _;
    for q in &queues {
        if !q.dir.exists() {
            continue;
        }
        // A queue that was never opened by a server has no log yet.
        let msgs = if q.dir.join("seg").is_dir() {
            queue_store::scan_with_progress(&q.dir, |n| progress.inc(n))?
        } else {
            Vec::new()
        };
        for m in msgs
            .iter()
            .filter(|m| sel.envelope_matches(m.id, &m.envelope))
        {
            writeln!(out, "{}", queue_store_line(q.number, m, now))?;
            total += 1;
        }
        if !sel.ids.is_empty() {
            // Drop files have no id yet.
            continue;
        }
        // Messages still in the drop directory are queued too: they are
        // durable and will be imported by the owning shard.
        let drops = inject::drop_dir(&q.dir);
        if let Ok(entries) = std::fs::read_dir(&drops) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("tmp.") || e.path().is_dir() {
                    continue;
                }
                if let Some(d) = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| inject::read_drop(&b).ok())
                {
                    let env = queue_store::Envelope::new(
                        d.envelope.sender.clone(),
                        d.envelope.recipients.clone(),
                    );
                    let any = queue_store::MessageId {
                        queue: q.number,
                        segment: 0,
                        offset: 0,
                    };
                    if !sel.envelope_matches(any, &env) {
                        continue;
                    }
                    writeln!(
                        out,
                        "queue{} inject/{name} size={} from=<{}> to={} state=awaiting-import",
                        q.number,
                        d.body.len(),
                        d.envelope.sender,
                        d.envelope
                            .recipients
                            .iter()
                            .map(|r| format!("<{r}>"))
                            .collect::<Vec<_>>()
                            .join(",")
                    )?;
                    total += 1;
                }
            }
        }
        total += list_quarantined(&mut out, q)?;
    }
    out.flush()?;
    drop(out);
    progress.finish();
    eprintln!("{total} messages");
    Ok(())
}

/// Lists the messages recovery moved to `quarantine/` (their body could not
/// be read whole): they are never delivered or retried, and stay listed
/// until the operator removes them.
fn list_quarantined(out: &mut impl std::io::Write, q: &QueueSpec) -> std::io::Result<usize> {
    let Ok(entries) = std::fs::read_dir(q.dir.join(queue_store::QUARANTINE_DIR)) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".env") else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or("")
                .to_string()
        };
        let to: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("recipient "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        writeln!(
            out,
            "queue{} quarantine/{id} from={} to={} state=quarantined reason={}",
            q.number,
            field("sender "),
            to.join(","),
            field("reason ")
        )?;
        n += 1;
    }
    Ok(n)
}

fn queue_store_line(queue: u32, m: &queue_store::QueuedMessage, now: u64) -> String {
    let rcpts: Vec<String> = m
        .envelope
        .recipients
        .iter()
        .zip(&m.recipients)
        .map(|(addr, st)| {
            let state = match st.state {
                queue_store::RecipientState::Pending => "pending",
                queue_store::RecipientState::Done => "done",
                queue_store::RecipientState::Failed => "failed",
            };
            format!("<{addr}>:{state}")
        })
        .collect();
    format!(
        "queue{queue} {} age={}s size={} from=<{}> to={}{}",
        m.id,
        now.saturating_sub(m.envelope.arrival),
        m.size,
        m.envelope.sender,
        rcpts.join(","),
        if m.held { " held" } else { "" }
    )
}

pub fn queue_stat(paths: &Paths) -> Result<(), ListError> {
    let queues = paths
        .layout_with_existing()
        .map_err(ListError::Layout)?
        .specs();
    let (mut tm, mut tp) = (0usize, 0usize);
    for q in &queues {
        let msgs = if q.dir.join("seg").is_dir() {
            queue_store::scan(&q.dir)?
        } else {
            Vec::new()
        };
        let (mut pending, mut done, mut failed, mut bytes) = (0, 0, 0, 0u64);
        let held = msgs.iter().filter(|m| m.held).count();
        for m in &msgs {
            bytes += m.size;
            for r in &m.recipients {
                match r.state {
                    queue_store::RecipientState::Pending => pending += 1,
                    queue_store::RecipientState::Done => done += 1,
                    queue_store::RecipientState::Failed => failed += 1,
                }
            }
        }
        let drops = std::fs::read_dir(inject::drop_dir(&q.dir))
            .map(|r| {
                r.flatten()
                    .filter(|e| {
                        !e.file_name().to_string_lossy().starts_with("tmp.") && e.path().is_file()
                    })
                    .count()
            })
            .unwrap_or(0);
        println!(
            "queue{}: messages {} recipients pending {pending} done {done} failed {failed} bytes {bytes} awaiting-import {drops} held {held}",
            q.number,
            msgs.len()
        );
        tm += msgs.len() + drops;
        tp += pending;
    }
    println!("total: messages {tm} recipients pending {tp}");
    Ok(())
}
