//! `indimail service install DIR`: service files for `indimail serve` (the
//! role of IndiMail's `svctool --smtp/--queueParam ...`).
//!
//! One process serves every listener of `control/listeners` (SMTP,
//! submission, SMTPS, ODMR, POP3, the proxies) and delivers every queue, so
//! one unit is written: `DIR/indimail.service` (systemd), and with
//! `--daemontools` a supervise directory `DIR/indimail/` with `run` and
//! `log/run` (multilog into `/var/log/svc/indimail`, spec 8.1). The CPU
//! placement is the one of `control/cpus` (written by `indimail tuning`):
//! the unit's `CPUAffinity=` keeps the process on those CPUs and the server
//! pins one shard per CPU inside it; the queue layout comes from the same
//! control files and variables the server reads, which are passed through
//! (`QUEUE_BASE`, `QUEUE_COUNT`, `QUEUE_START`, `CONTROLDIR`).
//!
//! The manual pages (`indimail man`) go to `--man-dir DIR` (`DIR/man8`,
//! `DIR/man5`), else to `<prefix>/share/man` when the binary is
//! `<prefix>/bin/indimail` and that directory exists (a failure there is only
//! a warning: the unit is what was asked for). Nothing else is written outside
//! DIR; existing files are replaced (they are generated: regenerate rather
//! than edit).

use std::path::{Path, PathBuf};

use queue_layout::Paths;

/// Why the service files were not all written.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The running binary's path is unknown (and `--binary` was not given).
    #[error("cannot find this binary: {0}")]
    Binary(std::io::Error),
    /// A directory or file could not be created.
    #[error("{}: {source}", path.display())]
    Write {
        /// The directory or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The manual pages asked for with `--man-dir` could not be written.
    #[error(transparent)]
    Pages(#[from] crate::manpages::ManError),
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// What to write.
pub struct Options {
    /// Output directory.
    pub dir: PathBuf,
    /// Also daemontools `run` scripts.
    pub daemontools: bool,
    /// User to run as.
    pub user: Option<String>,
    /// Binary (default: the running one).
    pub binary: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL.
    pub stop_timeout: u64,
    /// Where the manual pages go (`man8/`, `man5/` under it).
    pub man_dir: Option<PathBuf>,
    /// The binary's command line, whose pages are written.
    pub commands: clap::Command,
}

/// The variables passed through from the environment of the install.
const PASSED: [&str; 5] = [
    "QUEUE_BASE",
    "QUEUE_COUNT",
    "QUEUE_START",
    "CONTROLDIR",
    "INDIMAIL_DRIVER",
];

/// The unit text.
pub fn systemd_unit(paths: &Paths, o: &Options, exe: &Path) -> String {
    let home = paths.home.display();
    let mut env = vec![format!("INDIMAIL_HOME={home}")];
    for v in PASSED {
        if let Ok(val) = std::env::var(v) {
            if !val.is_empty() {
                env.push(format!("{v}={val}"));
            }
        }
    }
    let listeners: Vec<String> = paths
        .control
        .lines("listeners")
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let cpus = paths.control.string("cpus").ok().flatten();
    let mut u = String::new();
    u.push_str("# Written by `indimail service install`; regenerate rather than edit.\n");
    if listeners.is_empty() {
        u.push_str("# Listeners: the default (smtp 127.0.0.1:2525); see control/listeners.\n");
    } else {
        u.push_str(&format!(
            "# Listeners (control/listeners): {}\n",
            listeners.join("; ")
        ));
    }
    u.push_str("[Unit]\n");
    u.push_str(&format!("Description=IndiMail mail server (home {home})\n"));
    u.push_str("After=network-online.target\nWants=network-online.target\n\n");
    u.push_str("[Service]\nType=simple\n");
    u.push_str(&format!(
        "ExecStart={} serve --home {home}\n",
        exe.display()
    ));
    u.push_str("ExecReload=/bin/kill -HUP $MAINPID\n");
    u.push_str("KillSignal=SIGTERM\nKillMode=mixed\n");
    u.push_str(&format!("TimeoutStopSec={}\n", o.stop_timeout));
    u.push_str("Restart=on-failure\nRestartSec=2\nLimitNOFILE=65536\n");
    for e in &env {
        u.push_str(&format!("Environment=\"{e}\"\n"));
    }
    if let Some(c) = &cpus {
        // control/cpus uses the same list syntax as CPUAffinity (0-3,6).
        u.push_str(&format!("CPUAffinity={}\n", c.replace(',', " ")));
    }
    if let Some(user) = &o.user {
        u.push_str(&format!("User={user}\n"));
        // Privileged ports (25, 465, 587) without running as root.
        u.push_str("AmbientCapabilities=CAP_NET_BIND_SERVICE\n");
    }
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    u
}

/// The daemontools `run` script.
pub fn run_script(paths: &Paths, o: &Options, exe: &Path) -> String {
    let home = paths.home.display();
    let mut s = String::from("#!/bin/sh\n# Written by `indimail service install`.\nexec 2>&1\n");
    let mut env = vec![format!("INDIMAIL_HOME={home}")];
    for v in PASSED {
        if let Ok(val) = std::env::var(v) {
            if !val.is_empty() {
                env.push(format!("{v}={val}"));
            }
        }
    }
    let mut cmd = format!("exec env {} ", env.join(" "));
    if let Some(c) = paths.control.string("cpus").ok().flatten() {
        cmd.push_str(&format!("taskset -c {c} "));
    }
    if let Some(user) = &o.user {
        cmd.push_str(&format!("setuidgid {user} "));
    }
    cmd.push_str(&format!("{} serve --home {home}\n", exe.display()));
    s.push_str(&cmd);
    s
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(write_error(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(write_error(path))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn install_inner(paths: &Paths, o: &Options) -> Result<(), ServiceError> {
    let exe = match &o.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(ServiceError::Binary)?,
    };
    std::fs::create_dir_all(&o.dir).map_err(write_error(&o.dir))?;
    write(
        &o.dir.join("indimail.service"),
        &systemd_unit(paths, o, &exe),
        0o644,
    )?;
    if o.daemontools {
        let svc = o.dir.join("indimail");
        let log = svc.join("log");
        std::fs::create_dir_all(&log).map_err(write_error(&log))?;
        write(&svc.join("run"), &run_script(paths, o, &exe), 0o755)?;
        write(
            &log.join("run"),
            "#!/bin/sh\nexec multilog t /var/log/svc/indimail\n",
            0o755,
        )?;
    }
    let (man, required) = match &o.man_dir {
        Some(d) => (Some(d.clone()), true),
        None => (prefix_man_dir(&exe), false),
    };
    if let Some(man) = man {
        match crate::manpages::write_pages(&o.commands, &man.join("man8"), &man.join("man5")) {
            Ok(pages) => println!("wrote {} manual pages under {}", pages.len(), man.display()),
            Err(e) if required => return Err(e.into()),
            Err(e) => eprintln!("indimail service install: manual pages not written: {e}"),
        }
    }
    Ok(())
}

/// `<prefix>/share/man` of a binary installed as `<prefix>/bin/NAME`, if it exists.
fn prefix_man_dir(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    Some(bin.parent()?.join("share/man")).filter(|d| d.is_dir())
}

/// `indimail service install`.
pub fn install(paths: &Paths, o: &Options) -> i32 {
    match install_inner(paths, o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("indimail service install: {e}");
            111
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_dir_beside_the_prefix_bin() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("bin/indimail");
        assert_eq!(prefix_man_dir(&exe), None, "no share/man yet");
        std::fs::create_dir_all(t.path().join("share/man")).unwrap();
        assert_eq!(prefix_man_dir(&exe), Some(t.path().join("share/man")));
        assert_eq!(prefix_man_dir(&t.path().join("debug/indimail")), None);
    }
}
