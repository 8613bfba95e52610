//! Where an installation's state lives: the home directory and the control
//! directory, as IndiMail's variables and `queue-layout` resolve them.

use std::path::{Path, PathBuf};

use queue_layout::LayoutErrors;

use crate::ControlDir;

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
        let home = queue_layout::resolve_home(home_arg, &var);
        let control = queue_layout::control_dir(&home, &var);
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
    pub fn layout(&self, cpus_arg: Option<&str>) -> Result<queue_layout::Layout, LayoutErrors> {
        queue_layout::Layout::from_env(&self.home, cpus_arg, &shard::online_cpus())
    }

    /// The layout plus every `queueN` directory found outside it: what the
    /// queue tools look at (mail there is queued too).
    pub fn layout_with_existing(&self) -> Result<queue_layout::Layout, LayoutErrors> {
        let mut l = self.layout(None)?;
        l.adopt_existing();
        Ok(l)
    }
}
