//! Which queue directories the engine will use, resolved by the engine's
//! own `queue-layout` crate (spec 1.1: `QUEUEDIR`; else `QUEUE_BASE`,
//! `control/queue_base` or `<home>/queue`; `QUEUE_START` default 1;
//! `QUEUE_COUNT` default one per shard: `INDIMAIL_SHARDS`, the CPUs of
//! `control/cpus`, else the CPUs this process may run on).
//!
//! Variables are read through a lookup function rather than the process
//! environment so that callers (and tests) can say exactly what the engine
//! would see.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{lossy, lossy_opt, TuningError};

pub use queue_layout::{existing_queues, queue_path};

/// The home directory when neither `--home` nor `INDIMAIL_HOME` is given:
/// the engine's own default (`/var/indimail` for root, else
/// `$HOME/.indimail`).
pub fn default_home() -> PathBuf {
    queue_layout::resolve_home(None, &|k| {
        (k != "INDIMAIL_HOME")
            .then(|| std::env::var_os(k))
            .flatten()
    })
}

/// The control directory: `CONTROLDIR` (absolute, or relative to home),
/// else `<home>/control`.
pub fn control_dir(home: &Path, var: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    queue_layout::control_dir(home, var)
}

/// First meaningful line of a control file (trimmed, skipping blanks and
/// `#` comments, as the engine reads them); `None` when the file is absent.
pub fn control_line(control: &Path, name: &str) -> Result<Option<String>, TuningError> {
    match queue_layout::control_line(control, name) {
        Ok(l) => Ok(l.map(|(_, text)| text)),
        Err(e) => Err(TuningError::Layout(queue_layout::LayoutErrors(vec![e]))),
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
    /// Number of shards the engine runs.
    pub shards: usize,
    /// The configured queues.
    #[serde(skip)]
    dirs: Vec<(u32, PathBuf)>,
}

impl QueueLayout {
    /// Resolves the layout for `home`. `cpus_allowed` is the number of
    /// CPUs the engine would run on without `control/cpus`.
    pub fn resolve(
        home: &Path,
        var: &dyn Fn(&str) -> Option<OsString>,
        cpus_allowed: usize,
    ) -> Result<QueueLayout, TuningError> {
        let online: Vec<usize> = (0..cpus_allowed.max(1)).collect();
        let l = queue_layout::Layout::resolve(&queue_layout::Inputs {
            home,
            var,
            cpus_arg: None,
            online: &online,
        })?;
        let source = |s| match s {
            queue_layout::Source::Argument | queue_layout::Source::Environment => {
                Source::Environment
            }
            queue_layout::Source::Control => Source::Control,
            queue_layout::Source::Default => Source::Default,
        };
        // `Default` count = one per shard: say where the shards came from.
        let count_from = match l.count_from {
            queue_layout::Source::Default => source(l.shards_from),
            s => source(s),
        };
        Ok(QueueLayout {
            dirs: l.specs().into_iter().map(|q| (q.number, q.dir)).collect(),
            shards: l.shards(),
            queuedir: l.queuedir,
            base: l.base,
            base_from: source(l.base_from),
            start: l.start,
            count: l.count,
            count_from,
        })
    }

    /// `(N, directory)` of each queue the engine will open (strays it
    /// would adopt aside).
    pub fn dirs(&self) -> Vec<(u32, PathBuf)> {
        self.dirs.clone()
    }
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
