//! Which queue directories the engine will use, resolved the way it does
//! (spec 1.1: `QUEUEDIR`; else `QUEUE_BASE`, `control/queue_base` or
//! `<home>/queue`; `QUEUE_START` default 1; `QUEUE_COUNT` default one per
//! shard, i.e. per CPU of `control/cpus`, else per CPU this process may
//! run on).
//!
//! Variables are read through a lookup function rather than the process
//! environment so that callers (and tests) can say exactly what the engine
//! would see.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cpulist::parse_cpu_list;
use crate::{lossy, lossy_opt, TuningError};

/// The home directory when neither `--home` nor `INDIMAIL_HOME` is given:
/// the engine's own default (`/var/indimail` for root, else
/// `$HOME/.indimail`).
pub fn default_home() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/indimail")
    } else {
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".indimail"))
            .unwrap_or_else(|| PathBuf::from(".indimail"))
    }
}

/// The control directory: `CONTROLDIR` (absolute, or relative to home),
/// else `<home>/control`.
pub fn control_dir(home: &Path, var: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    match var("CONTROLDIR") {
        Some(c) if Path::new(&c).is_absolute() => PathBuf::from(c),
        Some(c) => home.join(c),
        None => home.join("control"),
    }
}

/// First meaningful line of a control file (trimmed, skipping blanks and
/// `#` comments, as the engine reads them); `None` when the file is absent.
pub fn control_line(control: &Path, name: &str) -> Result<Option<String>, TuningError> {
    let path = control.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TuningError::io(&path, e)),
    }
}

/// Where a setting came from, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An environment variable.
    Environment,
    /// A control file.
    Control,
    /// The engine's default.
    Default,
}

/// The engine's queues on this host.
#[derive(Debug, Clone, Serialize)]
pub struct QueueLayout {
    /// `QUEUEDIR`, which makes the engine use that one directory only.
    #[serde(serialize_with = "lossy_opt")]
    pub queuedir: Option<PathBuf>,
    /// The queue base.
    #[serde(serialize_with = "lossy")]
    pub base: PathBuf,
    /// Where `base` came from.
    pub base_from: Source,
    /// First queue number.
    pub start: u32,
    /// Number of queues.
    pub count: u32,
    /// Where `count` came from (`control` = one per CPU of `control/cpus`).
    pub count_from: Source,
}

impl QueueLayout {
    /// Resolves the layout for `home`. `cpus_allowed` is the number of
    /// CPUs the engine would run on without `control/cpus`.
    pub fn resolve(
        home: &Path,
        var: &dyn Fn(&str) -> Option<OsString>,
        cpus_allowed: usize,
    ) -> Result<QueueLayout, TuningError> {
        let control = control_dir(home, var);
        let queuedir = var("QUEUEDIR").map(PathBuf::from);
        let (base, base_from) = match var("QUEUE_BASE") {
            Some(b) => (PathBuf::from(b), Source::Environment),
            None => match control_line(&control, "queue_base")? {
                Some(b) => (PathBuf::from(b), Source::Control),
                None => (home.join("queue"), Source::Default),
            },
        };
        let start = number_var(var, "QUEUE_START")?.unwrap_or(1);
        let (count, count_from) = match number_var(var, "QUEUE_COUNT")? {
            Some(0) => {
                return Err(TuningError::BadVariable {
                    name: "QUEUE_COUNT".into(),
                    problem: "must be at least 1".into(),
                })
            }
            Some(n) => (n, Source::Environment),
            // The engine falls back to one queue when control/cpus is bad;
            // its own `config check` reports the file, so we just agree.
            None => match control_line(&control, "cpus")? {
                Some(list) => (
                    parse_cpu_list(&list).map_or(1, |v| v.len().max(1) as u32),
                    Source::Control,
                ),
                None => (cpus_allowed.max(1) as u32, Source::Default),
            },
        };
        if start.checked_add(count).is_none() {
            return Err(TuningError::BadVariable {
                name: "QUEUE_START".into(),
                problem: format!("{start} + {count} queues overflows"),
            });
        }
        Ok(QueueLayout {
            queuedir,
            base,
            base_from,
            start,
            count,
            count_from,
        })
    }

    /// `(N, directory)` of each queue the engine will open.
    pub fn dirs(&self) -> Vec<(u32, PathBuf)> {
        if let Some(dir) = &self.queuedir {
            let n = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("queue"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            return vec![(n, dir.clone())];
        }
        (self.start..self.start + self.count)
            .map(|n| (n, queue_path(&self.base, n)))
            .collect()
    }
}

/// `<base>/queue<N>`.
pub fn queue_path(base: &Path, n: u32) -> PathBuf {
    base.join(format!("queue{n}"))
}

fn number_var(
    var: &dyn Fn(&str) -> Option<OsString>,
    name: &str,
) -> Result<Option<u32>, TuningError> {
    match var(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| TuningError::BadVariable {
                name: name.to_string(),
                problem: format!("`{}` is not a number", v.to_string_lossy()),
            }),
    }
}

/// Queue directories under `base` named `queue<N>`, with their numbers,
/// ascending: what is already there, planned or not.
pub fn existing_queues(base: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("queue")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults() {
        let home = tempfile::tempdir().unwrap();
        let l = QueueLayout::resolve(home.path(), &env(&[]), 3).unwrap();
        assert_eq!(l.base, home.path().join("queue"));
        assert_eq!((l.start, l.count), (1, 3));
        assert_eq!(l.count_from, Source::Default);
        assert_eq!(
            l.dirs(),
            vec![
                (1, home.path().join("queue/queue1")),
                (2, home.path().join("queue/queue2")),
                (3, home.path().join("queue/queue3")),
            ]
        );
    }

    #[test]
    fn control_files_then_environment() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("control")).unwrap();
        std::fs::write(home.path().join("control/cpus"), "# shards\n0-3,6\n").unwrap();
        std::fs::write(home.path().join("control/queue_base"), "/srv/q\n").unwrap();
        let l = QueueLayout::resolve(home.path(), &env(&[]), 1).unwrap();
        assert_eq!(l.base, Path::new("/srv/q"));
        assert_eq!(l.base_from, Source::Control);
        assert_eq!((l.count, l.count_from), (5, Source::Control));

        let l = QueueLayout::resolve(
            home.path(),
            &env(&[
                ("QUEUE_BASE", "/x"),
                ("QUEUE_START", "7"),
                ("QUEUE_COUNT", "2"),
            ]),
            1,
        )
        .unwrap();
        assert_eq!(
            l.dirs(),
            vec![(7, "/x/queue7".into()), (8, "/x/queue8".into())]
        );

        // CONTROLDIR relative to home.
        std::fs::create_dir(home.path().join("etc")).unwrap();
        std::fs::write(home.path().join("etc/cpus"), "0\n").unwrap();
        let l = QueueLayout::resolve(home.path(), &env(&[("CONTROLDIR", "etc")]), 4).unwrap();
        assert_eq!(l.count, 1);
        assert_eq!(l.base, home.path().join("queue"));
    }

    #[test]
    fn queuedir_wins() {
        let home = tempfile::tempdir().unwrap();
        let l = QueueLayout::resolve(home.path(), &env(&[("QUEUEDIR", "/q/queue9")]), 4).unwrap();
        assert_eq!(l.dirs(), vec![(9, PathBuf::from("/q/queue9"))]);
    }

    #[test]
    fn bad_variables() {
        let home = tempfile::tempdir().unwrap();
        for (k, v) in [
            ("QUEUE_COUNT", "0"),
            ("QUEUE_COUNT", "many"),
            ("QUEUE_START", "-1"),
            ("QUEUE_START", "4294967295"),
        ] {
            assert!(
                QueueLayout::resolve(home.path(), &env(&[(k, v)]), 2).is_err(),
                "{k}={v} accepted"
            );
        }
    }

    #[test]
    fn lists_existing_queues() {
        let base = tempfile::tempdir().unwrap();
        for n in ["queue3", "queue1", "queuex", "other"] {
            std::fs::create_dir(base.path().join(n)).unwrap();
        }
        assert_eq!(existing_queues(base.path()), vec![1, 3]);
        assert!(existing_queues(&base.path().join("missing")).is_empty());
    }
}
