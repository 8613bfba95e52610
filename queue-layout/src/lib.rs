//! One job: turn the home directory, IndiMail's queue variables and the shard
//! CPU list into the list of queues and the shard that owns each.
//!
//! Every program that touches a queue (`serve`, `qmail-queue`, `sendmail`, the
//! queue tools, `config show`, `indimail-tuning`) resolves the layout here, so
//! they cannot disagree about which `queueN` directories exist or who reads
//! them. Inputs, in order of precedence:
//!
//! | what | from |
//! |---|---|
//! | home | `--home`, `INDIMAIL_HOME`, `/var/indimail` (root) or `$HOME/.indimail` |
//! | control directory | `CONTROLDIR` (absolute, or relative to home), `<home>/control` |
//! | one queue, verbatim | `QUEUEDIR` (spec 1.5: everything else ignored) |
//! | queue base | `QUEUE_BASE`, `control/queue_base`, `<home>/queue` |
//! | first queue | `QUEUE_START`, 1 |
//! | shards | `INDIMAIL_SHARDS=N` (test mode: N unpinned shards), `--cpus`, `control/cpus`, one per online CPU |
//! | number of queues | `QUEUE_COUNT`, the number of shards |
//!
//! Queue `QUEUE_START + k` belongs to shard `k % shards`; with fewer queues
//! than shards, only as many shards run as there are queues (every shard
//! must own a queue to commit what it accepts on its own thread). Queue
//! directories found under the base outside that range (an older layout)
//! can be adopted: queue `N` then belongs to shard `N % shards`.
//!
//! [`Paths`] carries the home and the control directory to every program.
//!
//! Nothing here starts threads or does I/O beyond reading two control files
//! (through `control`'s reader) and listing the queue base; of the project it
//! uses only `control` and the runtime's CPU list.

#![warn(missing_docs, unreachable_pub)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use control::ControlDir;

/// Highest CPU number accepted plus one (4 × the kernel's `CPU_SETSIZE`: large
/// hosts pass, typos such as `0-4294967295` do not allocate gigabytes).
pub const MAX_CPUS: usize = 4096;
/// Most shards `INDIMAIL_SHARDS` may ask for.
pub const MAX_SHARDS: usize = MAX_CPUS;
/// Most queues `QUEUE_COUNT` may ask for (each is a directory and a log).
pub const MAX_QUEUES: u32 = 65_536;

/// What is wrong with a CPU list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// `0,,1`.
    #[error("empty element")]
    EmptyElement,
    /// `a`, `+1`, `1 2`.
    #[error("`{0}` is not a CPU number or range")]
    NotANumber(String),
    /// `3-1`.
    #[error("range `{0}` runs backwards")]
    Backwards(String),
    /// Beyond [`MAX_CPUS`].
    #[error("CPU {0} is beyond {max}", max = MAX_CPUS - 1)]
    TooHigh(usize),
    /// A CPU listed twice would start two shards on one core.
    #[error("CPU {0} listed twice")]
    Duplicate(usize),
    /// No CPU at all where shards need one.
    #[error("no CPU listed")]
    Empty,
}

/// Parses a Linux CPU list such as `0-3,6,8-9`, keeping the order written
/// (shard `k` runs on the `k`-th CPU). An empty text is an empty set (sysfs
/// writes that); callers that need a CPU check for it.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, CpuListError> {
    let text = text.trim();
    let mut out: Vec<usize> = Vec::new();
    if text.is_empty() {
        return Ok(out);
    }
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(CpuListError::EmptyElement);
        }
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (cpu_number(a.trim()), cpu_number(b.trim())),
            None => (cpu_number(part), cpu_number(part)),
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Err(CpuListError::NotANumber(part.to_string()));
        };
        if first > last {
            return Err(CpuListError::Backwards(part.to_string()));
        }
        if last >= MAX_CPUS {
            return Err(CpuListError::TooHigh(last));
        }
        for cpu in first..=last {
            if out.contains(&cpu) {
                return Err(CpuListError::Duplicate(cpu));
            }
            out.push(cpu);
        }
    }
    Ok(out)
}

fn cpu_number(s: &str) -> Option<usize> {
    // `str::parse` accepts a leading `+`; CPU lists never have one.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One problem with the layout, naming the variable or file it comes from
/// (`$QUEUE_COUNT`, `--cpus`, `/etc/indimail/control/cpus:2`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not a number.
    #[error("{name}: `{value}` is not a valid number")]
    BadNumber {
        /// Where the value comes from.
        name: String,
        /// The value as written.
        value: String,
    },
    /// Zero where at least one is needed.
    #[error("{name}: must be at least 1")]
    Zero {
        /// Where the value comes from.
        name: String,
    },
    /// Above the limit.
    #[error("{name}: {value} is more than {max}")]
    TooLarge {
        /// Where the value comes from.
        name: String,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// `QUEUE_START + QUEUE_COUNT` does not fit queue numbers (u32).
    #[error("$QUEUE_START={start} + QUEUE_COUNT={count}: queue numbers overflow")]
    Overflow {
        /// `QUEUE_START`.
        start: u32,
        /// `QUEUE_COUNT`.
        count: u32,
    },
    /// A malformed CPU list.
    #[error("{name}: bad CPU list `{list}`: {problem}")]
    CpuList {
        /// Where the list comes from.
        name: String,
        /// The list as written.
        list: String,
        /// What is wrong.
        problem: CpuListError,
    },
    /// A control file exists but cannot be read.
    #[error("{path}: cannot read: {problem}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error, as text.
        problem: String,
    },
}

/// Every problem found, in the order checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct LayoutErrors(pub Vec<LayoutError>);

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The command line (`--cpus`).
    Argument,
    /// An environment variable.
    Environment,
    /// A control file.
    Control,
    /// The built-in default.
    Default,
}

/// One queue: its number and directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// N in `queueN`.
    pub number: u32,
    /// Its directory (may be a symlink to another disk).
    pub dir: PathBuf,
}

/// A queue and the shard that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedQueue {
    /// The queue.
    pub spec: QueueSpec,
    /// Index of the owning shard.
    pub shard: usize,
    /// Found under the base outside the configured range (see
    /// [`Layout::adopt_existing`]).
    pub adopted: bool,
}

/// What the layout is resolved from. Variables are read through `var` so
/// callers (and tests) say exactly what the engine would see.
pub struct Inputs<'a> {
    /// The home directory (see [`resolve_home`]).
    pub home: &'a Path,
    /// The environment.
    pub var: &'a dyn Fn(&str) -> Option<OsString>,
    /// `--cpus`, when given.
    pub cpus_arg: Option<&'a str>,
    /// CPUs this process may run on (one shard each by default).
    pub online: &'a [usize],
}

/// The resolved queues and shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The control directory.
    pub control: PathBuf,
    /// `QUEUEDIR`, when set: the one queue.
    pub queuedir: Option<PathBuf>,
    /// The queue base.
    pub base: PathBuf,
    /// Where `base` came from.
    pub base_from: Source,
    /// `QUEUE_START`.
    pub start: u32,
    /// `QUEUE_COUNT` (configured queues).
    pub count: u32,
    /// Where `count` came from (`Default` = one per shard).
    pub count_from: Source,
    /// CPU of each shard, in shard order; `None` = unpinned.
    pub shard_cpus: Vec<Option<usize>>,
    /// Where the shards came from.
    pub shards_from: Source,
    /// Shards asked for, when fewer queues cut them down.
    pub shards_asked: Option<usize>,
    /// Queues in number order: the configured range, then adopted ones.
    pub queues: Vec<OwnedQueue>,
}

/// The home: `arg`, else `INDIMAIL_HOME`, else `/var/indimail` for root and
/// `$HOME/.indimail` for anyone else.
pub fn resolve_home(arg: Option<&Path>, var: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(h) = arg {
        return h.to_path_buf();
    }
    if let Some(h) = var("INDIMAIL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/indimail")
    } else {
        var("HOME")
            .map(|h| PathBuf::from(h).join(".indimail"))
            .unwrap_or_else(|| PathBuf::from(".indimail"))
    }
}

/// The control directory: `CONTROLDIR` (absolute, or relative to home),
/// else `<home>/control`.
pub fn control_dir(home: &Path, var: &dyn Fn(&str) -> Option<OsString>) -> PathBuf {
    match var("CONTROLDIR").filter(|c| !c.is_empty()) {
        Some(c) if Path::new(&c).is_absolute() => PathBuf::from(c),
        Some(c) => home.join(c),
        None => home.join("control"),
    }
}

/// First meaningful line of a control file (trimmed; blank lines and `#`
/// comments skipped) and its 1-based number; `None` when the file is absent
/// or has no such line.
pub fn control_line(control: &Path, name: &str) -> Result<Option<(usize, String)>, LayoutError> {
    let path = control.join(name);
    match control::read_lines(&path) {
        Ok(lines) => Ok(lines.into_iter().flatten().find_map(|(i, l)| {
            let l = l.trim();
            (!l.is_empty() && !l.starts_with('#')).then(|| (i, l.to_string()))
        })),
        Err(e) => Err(LayoutError::Unreadable {
            path,
            problem: e.to_string(),
        }),
    }
}

/// Locations derived from the home directory and IndiMail's variables.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The home directory.
    pub home: PathBuf,
    /// The control directory.
    pub control: ControlDir,
}

impl Paths {
    /// Resolves the home (`--home`, `INDIMAIL_HOME`, default) and the
    /// control directory (`CONTROLDIR`), as `queue-layout` does.
    pub fn resolve(home_arg: Option<&Path>) -> Paths {
        let var = |k: &str| std::env::var_os(k);
        let home = resolve_home(home_arg, &var);
        let control = control_dir(&home, &var);
        Paths {
            home,
            control: ControlDir::new(control),
        }
    }

    /// The access rules file.
    pub fn tcp_rules(&self) -> PathBuf {
        self.home.join("tcp").join("tcp.smtp")
    }

    /// The queues and the shard owning each (see the `queue-layout`
    /// crate); `cpus_arg` is `serve --cpus`.
    pub fn layout(&self, cpus_arg: Option<&str>) -> Result<Layout, LayoutErrors> {
        Layout::from_env(&self.home, cpus_arg, &shard::online_cpus())
    }

    /// The layout plus every `queueN` directory found outside it: what the
    /// queue tools look at (mail there is queued too).
    pub fn layout_with_existing(&self) -> Result<Layout, LayoutErrors> {
        let mut l = self.layout(None)?;
        l.adopt_existing();
        Ok(l)
    }
}

/// `<base>/queue<N>`.
pub fn queue_path(base: &Path, n: u32) -> PathBuf {
    base.join(format!("queue{n}"))
}

/// The number of a directory named `queue<N>` (digits only).
pub fn queue_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("queue")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Numbers of the `queue<N>` directories under `base`, ascending.
pub fn existing_queues(base: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| queue_number(e.file_name().to_str()?))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, LayoutError> {
    text.trim().parse().map_err(|_| LayoutError::BadNumber {
        name: name.to_string(),
        value: text.to_string(),
    })
}

fn cpu_list(name: String, text: &str) -> Result<Vec<usize>, LayoutError> {
    let bad = |problem| LayoutError::CpuList {
        name: name.clone(),
        list: text.trim().to_string(),
        problem,
    };
    match parse_cpu_list(text) {
        Ok(v) if v.is_empty() => Err(bad(CpuListError::Empty)),
        Ok(v) => Ok(v),
        Err(e) => Err(bad(e)),
    }
}

/// The queue base and where it came from: `QUEUE_BASE`, `control/queue_base`,
/// then `<home>/queue`.
fn queue_base(
    inp: &Inputs<'_>,
    control: &Path,
    errors: &mut Vec<LayoutError>,
) -> (PathBuf, Source) {
    match (inp.var)("QUEUE_BASE").filter(|b| !b.is_empty()) {
        Some(b) => (PathBuf::from(b), Source::Environment),
        None => match control_line(control, "queue_base") {
            Ok(Some((_, b))) => (PathBuf::from(b), Source::Control),
            Ok(None) => (inp.home.join("queue"), Source::Default),
            Err(e) => {
                errors.push(e);
                (inp.home.join("queue"), Source::Default)
            }
        },
    }
}

/// One entry a shard (its CPU, `None` when unpinned) and where the list came
/// from: test mode, then `--cpus`, then `control/cpus`, then every CPU.
fn shard_cpus(
    inp: &Inputs<'_>,
    control: &Path,
    errors: &mut Vec<LayoutError>,
) -> (Vec<Option<usize>>, Source) {
    if let Some(v) = (inp.var)("INDIMAIL_SHARDS") {
        let v = v.to_string_lossy();
        let n = bounded_count("$INDIMAIL_SHARDS", &v, MAX_SHARDS, errors).unwrap_or(1);
        return (vec![None; n], Source::Environment);
    }
    let listed = match inp.cpus_arg {
        Some(a) => Some((cpu_list("--cpus".into(), a), Source::Argument)),
        None => match control_line(control, "cpus") {
            Ok(Some((line, l))) => Some((
                cpu_list(format!("{}:{line}", control.join("cpus").display()), &l),
                Source::Control,
            )),
            Ok(None) => None,
            Err(e) => Some((Err(e), Source::Control)),
        },
    };
    match listed {
        Some((Ok(v), from)) => (v.into_iter().map(Some).collect(), from),
        Some((Err(e), from)) => {
            errors.push(e);
            (vec![None], from)
        }
        None if inp.online.is_empty() => (vec![None], Source::Default),
        None => (
            inp.online.iter().copied().map(Some).collect(),
            Source::Default,
        ),
    }
}

/// The number of queues and where it came from: `QUEUE_COUNT`, else one a
/// shard.
fn queue_count(
    text: Option<String>,
    shards: usize,
    errors: &mut Vec<LayoutError>,
) -> (u32, Source) {
    match text {
        None => (shards as u32, Source::Default),
        Some(v) => {
            let n = bounded_count("$QUEUE_COUNT", &v, MAX_QUEUES, errors).unwrap_or(1);
            (n, Source::Environment)
        }
    }
}

/// A count from a variable that must be 1 to `max`; `None` (the problem
/// pushed onto `errors`) when it is not.
fn bounded_count<T>(name: &str, text: &str, max: T, errors: &mut Vec<LayoutError>) -> Option<T>
where
    T: std::str::FromStr + Copy + Default + PartialOrd + TryInto<u64>,
{
    let wide = |n: T| n.try_into().unwrap_or(u64::MAX);
    match number::<T>(name, text) {
        Ok(n) if n == T::default() => {
            errors.push(LayoutError::Zero { name: name.into() });
            None
        }
        Ok(n) if n > max => {
            errors.push(LayoutError::TooLarge {
                name: name.into(),
                value: wide(n),
                max: wide(max),
            });
            None
        }
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

impl Layout {
    /// Resolves the layout, reporting every problem at once.
    pub fn resolve(inp: &Inputs<'_>) -> Result<Layout, LayoutErrors> {
        let var = inp.var;
        let text = |name: &str| var(name).map(|v| v.to_string_lossy().into_owned());
        let mut errors = Vec::new();
        let control = control_dir(inp.home, var);
        let queuedir = var("QUEUEDIR").filter(|d| !d.is_empty()).map(PathBuf::from);

        let (base, base_from) = queue_base(inp, &control, &mut errors);
        let start = match text("QUEUE_START") {
            None => 1,
            Some(v) => number::<u32>("$QUEUE_START", &v).unwrap_or_else(|e| {
                errors.push(e);
                1
            }),
        };
        let (shard_cpus, shards_from) = shard_cpus(inp, &control, &mut errors);
        let (count, count_from) = queue_count(text("QUEUE_COUNT"), shard_cpus.len(), &mut errors);
        if queuedir.is_none() && start.checked_add(count).is_none() {
            errors.push(LayoutError::Overflow { start, count });
        }
        if !errors.is_empty() {
            return Err(LayoutErrors(errors));
        }

        let specs: Vec<QueueSpec> = match &queuedir {
            Some(dir) => vec![QueueSpec {
                number: dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(queue_number)
                    .unwrap_or(1),
                dir: dir.clone(),
            }],
            None => (start..start + count)
                .map(|n| QueueSpec {
                    number: n,
                    dir: queue_path(&base, n),
                })
                .collect(),
        };
        let mut shard_cpus = shard_cpus;
        let mut shards_asked = None;
        if specs.len() < shard_cpus.len() {
            shards_asked = Some(shard_cpus.len());
            shard_cpus.truncate(specs.len());
        }
        let shards = shard_cpus.len();
        let queues = specs
            .into_iter()
            .enumerate()
            .map(|(k, spec)| OwnedQueue {
                spec,
                shard: k % shards,
                adopted: false,
            })
            .collect();
        Ok(Layout {
            control,
            queuedir,
            base,
            base_from,
            start,
            count,
            count_from,
            shard_cpus,
            shards_from,
            shards_asked,
            queues,
        })
    }

    /// Resolves with the process environment.
    pub fn from_env(
        home: &Path,
        cpus_arg: Option<&str>,
        online: &[usize],
    ) -> Result<Layout, LayoutErrors> {
        Layout::resolve(&Inputs {
            home,
            var: &|k| std::env::var_os(k),
            cpus_arg,
            online,
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shard_cpus.len()
    }

    /// Adds every `queue<N>` directory under the base that is outside the
    /// configured range (left by an older layout, or by an injector that
    /// saw another one): queue N goes to shard `N % shards`. Mail in them
    /// is never stranded. Returns the numbers adopted. Nothing is adopted
    /// with `QUEUEDIR` (one queue, verbatim).
    pub fn adopt_existing(&mut self) -> Vec<u32> {
        if self.queuedir.is_some() {
            return Vec::new();
        }
        let shards = self.shards().max(1);
        let mut adopted = Vec::new();
        for n in existing_queues(&self.base) {
            if self.queues.iter().any(|q| q.spec.number == n) {
                continue;
            }
            self.queues.push(OwnedQueue {
                spec: QueueSpec {
                    number: n,
                    dir: queue_path(&self.base, n),
                },
                shard: n as usize % shards,
                adopted: true,
            });
            adopted.push(n);
        }
        adopted
    }

    /// Every queue, in order.
    pub fn specs(&self) -> Vec<QueueSpec> {
        self.queues.iter().map(|q| q.spec.clone()).collect()
    }

    /// The configured queues only (not adopted ones): where new mail goes.
    pub fn configured(&self) -> Vec<QueueSpec> {
        self.queues
            .iter()
            .filter(|q| !q.adopted)
            .map(|q| q.spec.clone())
            .collect()
    }

    /// `result[shard]` lists the queues that shard owns.
    pub fn assignment(&self) -> Vec<Vec<QueueSpec>> {
        let mut out = vec![Vec::new(); self.shards()];
        for q in &self.queues {
            if let Some(v) = out.get_mut(q.shard) {
                v.push(q.spec.clone());
            }
        }
        out
    }

    /// The shard that owns queue `number`, if it is in the layout.
    pub fn shard_of(&self, number: u32) -> Option<usize> {
        self.queues
            .iter()
            .find(|q| q.spec.number == number)
            .map(|q| q.shard)
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

    fn resolve(
        home: &Path,
        pairs: &[(&str, &str)],
        cpus: Option<&str>,
        online: &[usize],
    ) -> Result<Layout, LayoutErrors> {
        let var = env(pairs);
        Layout::resolve(&Inputs {
            home,
            var: &var,
            cpus_arg: cpus,
            online,
        })
    }

    fn numbers(l: &Layout) -> Vec<(u32, usize)> {
        l.queues.iter().map(|q| (q.spec.number, q.shard)).collect()
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list(" 1 \n").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("8-9,0-1").unwrap(), vec![8, 9, 0, 1]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("0,,1"), Err(CpuListError::EmptyElement));
        assert_eq!(
            parse_cpu_list("3-1"),
            Err(CpuListError::Backwards("3-1".into()))
        );
        assert_eq!(parse_cpu_list("0-2,1"), Err(CpuListError::Duplicate(1)));
        assert_eq!(parse_cpu_list("0-5000"), Err(CpuListError::TooHigh(5000)));
        for bad in ["a", "+1", "1 2", "-1", "1-"] {
            assert!(
                matches!(parse_cpu_list(bad), Err(CpuListError::NotANumber(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_one_queue_per_online_cpu() {
        let home = tempfile::tempdir().unwrap();
        let l = resolve(home.path(), &[], None, &[0, 1]).unwrap();
        assert_eq!(l.base, home.path().join("queue"));
        assert_eq!(l.shard_cpus, vec![Some(0), Some(1)]);
        assert_eq!(numbers(&l), vec![(1, 0), (2, 1)]);
        assert_eq!(
            (l.count_from, l.shards_from),
            (Source::Default, Source::Default)
        );
    }

    #[test]
    fn cpus_argument_beats_control_file() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("control")).unwrap();
        std::fs::write(home.path().join("control/cpus"), "# shards\n0-1\n").unwrap();
        let l = resolve(home.path(), &[], None, &[0, 1, 2]).unwrap();
        assert_eq!(numbers(&l), vec![(1, 0), (2, 1)]);
        assert_eq!(l.shards_from, Source::Control);
        let l = resolve(home.path(), &[], Some("0"), &[0, 1]).unwrap();
        assert_eq!(numbers(&l), vec![(1, 0)]);
        assert_eq!(l.shards_from, Source::Argument);
    }

    #[test]
    fn test_mode_shards_and_more_queues_than_shards() {
        let home = tempfile::tempdir().unwrap();
        let l = resolve(home.path(), &[("INDIMAIL_SHARDS", "8")], Some("0"), &[0]).unwrap();
        assert_eq!(l.shard_cpus, vec![None; 8]);
        assert_eq!(l.queues.len(), 8);
        let l = resolve(
            home.path(),
            &[("QUEUE_COUNT", "5"), ("QUEUE_START", "3")],
            None,
            &[0, 1],
        )
        .unwrap();
        assert_eq!(numbers(&l), vec![(3, 0), (4, 1), (5, 0), (6, 1), (7, 0)]);
    }

    #[test]
    fn fewer_queues_than_cpus_means_fewer_shards() {
        let home = tempfile::tempdir().unwrap();
        let l = resolve(home.path(), &[("QUEUE_COUNT", "1")], None, &[0, 1, 2]).unwrap();
        assert_eq!(l.shard_cpus, vec![Some(0)]);
        assert_eq!(l.shards_asked, Some(3));
        let l = resolve(home.path(), &[("QUEUEDIR", "/q/queue9")], None, &[0, 1]).unwrap();
        assert_eq!(
            l.specs(),
            vec![QueueSpec {
                number: 9,
                dir: "/q/queue9".into()
            }]
        );
        assert_eq!(l.shards(), 1);
    }

    #[test]
    fn base_from_control_then_environment() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("etc")).unwrap();
        std::fs::write(home.path().join("etc/queue_base"), "/srv/q\n").unwrap();
        let l = resolve(home.path(), &[("CONTROLDIR", "etc")], None, &[0]).unwrap();
        assert_eq!(
            (l.base.as_path(), l.base_from),
            (Path::new("/srv/q"), Source::Control)
        );
        let l = resolve(
            home.path(),
            &[("CONTROLDIR", "etc"), ("QUEUE_BASE", "/x")],
            None,
            &[0],
        )
        .unwrap();
        assert_eq!(l.specs()[0].dir, PathBuf::from("/x/queue1"));
    }

    #[test]
    fn adopts_queues_outside_the_range() {
        let home = tempfile::tempdir().unwrap();
        for n in ["queue1", "queue5", "queue6", "queuex", "queue07x"] {
            std::fs::create_dir_all(home.path().join("queue").join(n)).unwrap();
        }
        let mut l = resolve(home.path(), &[], Some("0-1"), &[0, 1]).unwrap();
        assert_eq!(l.adopt_existing(), vec![5, 6]);
        assert_eq!(numbers(&l), vec![(1, 0), (2, 1), (5, 1), (6, 0)]);
        assert_eq!(l.configured().len(), 2);
        assert_eq!(l.assignment()[1].len(), 2);
        assert_eq!(l.shard_of(5), Some(1));
    }

    fn errors(pairs: &[(&str, &str)], cpus: Option<&str>) -> Vec<LayoutError> {
        let home = tempfile::tempdir().unwrap();
        resolve(home.path(), pairs, cpus, &[0, 1]).unwrap_err().0
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        let e = errors(&[("QUEUE_START", "-1")], None);
        assert_eq!(
            e,
            vec![LayoutError::BadNumber {
                name: "$QUEUE_START".into(),
                value: "-1".into()
            }]
        );
        let e = errors(&[("QUEUE_COUNT", "many")], None);
        assert!(
            e[0].to_string().starts_with("$QUEUE_COUNT: `many`"),
            "{e:?}"
        );
        let e = errors(&[("INDIMAIL_SHARDS", "x")], None);
        assert!(e[0].to_string().starts_with("$INDIMAIL_SHARDS"), "{e:?}");
    }

    #[test]
    fn zero_and_too_large() {
        assert_eq!(
            errors(&[("QUEUE_COUNT", "0")], None),
            vec![LayoutError::Zero {
                name: "$QUEUE_COUNT".into()
            }]
        );
        assert_eq!(
            errors(&[("INDIMAIL_SHARDS", "0")], None),
            vec![LayoutError::Zero {
                name: "$INDIMAIL_SHARDS".into()
            }]
        );
        assert!(matches!(
            errors(&[("QUEUE_COUNT", "4000000000")], None)[0],
            LayoutError::TooLarge { .. }
        ));
        assert!(matches!(
            errors(&[("INDIMAIL_SHARDS", "100000")], None)[0],
            LayoutError::TooLarge { .. }
        ));
    }

    #[test]
    fn overflow_of_start_plus_count() {
        assert_eq!(
            errors(&[("QUEUE_START", "4294967295"), ("QUEUE_COUNT", "2")], None),
            vec![LayoutError::Overflow {
                start: u32::MAX,
                count: 2
            }]
        );
    }

    #[test]
    fn cpu_list_errors_name_argument_or_file() {
        let e = errors(&[], Some("0,0"));
        assert_eq!(
            e,
            vec![LayoutError::CpuList {
                name: "--cpus".into(),
                list: "0,0".into(),
                problem: CpuListError::Duplicate(0)
            }]
        );
        let e = errors(&[], Some(" "));
        assert!(matches!(
            &e[0],
            LayoutError::CpuList {
                problem: CpuListError::Empty,
                ..
            }
        ));
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("control")).unwrap();
        std::fs::write(home.path().join("control/cpus"), "\n0-x\n").unwrap();
        let e = resolve(home.path(), &[], None, &[0]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("control/cpus:2: bad CPU list `0-x`"),
            "{text}"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let e = errors(&[("QUEUE_START", "x"), ("QUEUE_COUNT", "0")], Some("1-0"));
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn unreadable_control_file() {
        let home = tempfile::tempdir().unwrap();
        // A directory where a file is expected cannot be read.
        std::fs::create_dir_all(home.path().join("control/queue_base")).unwrap();
        let e = resolve(home.path(), &[], None, &[0]).unwrap_err().0;
        assert!(
            matches!(&e[0], LayoutError::Unreadable { path, .. } if path.ends_with("queue_base"))
        );
    }

    #[test]
    fn home_and_control_dir() {
        let var = env(&[("INDIMAIL_HOME", "/h"), ("CONTROLDIR", "/etc/c")]);
        assert_eq!(resolve_home(None, &var), PathBuf::from("/h"));
        assert_eq!(
            resolve_home(Some(Path::new("/a")), &var),
            PathBuf::from("/a")
        );
        assert_eq!(control_dir(Path::new("/h"), &var), PathBuf::from("/etc/c"));
        let var = env(&[("CONTROLDIR", "ctl")]);
        assert_eq!(control_dir(Path::new("/h"), &var), PathBuf::from("/h/ctl"));
    }
}
