//! Greylisting (RFC 6647) settings of a shard: a qmail-greyd server or the built-in state.

use std::net::SocketAddr;
use std::time::SystemTime;

use control::log;
use control::ControlError;

/// Greylisting (RFC 6647) at RCPT for clients that are neither relay
/// clients nor authenticated: either IndiMail's `qmail-greyd` asked over
/// UDP (`GREYIP=ip[@port]`), or built in, with its state on the client's home shard in
/// `<home>/greylist/shard<N>.state` (saved every few minutes and at stop,
/// so a restart does not greylist everyone again). Built-in greylisting is
/// on when `control/greylist` exists (optional line: `min-resend window
/// timeout` in seconds; default IndiMail's installer values 120 86400
/// 2592000) or `GREYLIST=1`; `control/greylist.white` lists networks never
/// greylisted.
pub enum Greylisting {
    /// Ask a qmail-greyd server.
    Server(SocketAddr),
    /// The shard's own state.
    BuiltIn {
        /// Triplets and passed networks.
        state: policy::greylist::Greylist,
        /// Where it is saved.
        path: std::path::PathBuf,
    },
}

impl Greylisting {
    /// What the configuration asks for on shard `index`, loading saved state.
    pub fn from_config(
        control: &control::ControlDir,
        home: &std::path::Path,
        index: usize,
    ) -> Result<Option<Greylisting>, GreylistError> {
        if let Ok(v) = std::env::var("GREYIP") {
            return match policy::greylist::udp::parse_greyip(&v) {
                Ok(Some(addr)) => Ok(Some(Greylisting::Server(addr))),
                Ok(None) => Ok(None),
                Err(e) => Err(GreylistError::GreyIp(e.to_string())),
            };
        }
        let file = control.lines("greylist")?;
        let env_on = std::env::var("GREYLIST").is_ok_and(|v| !v.is_empty() && v != "0");
        if file.is_none() && !env_on {
            return Ok(None);
        }
        let mut config = policy::greylist::GreylistConfig::indimail_installer();
        if let Some((line, text)) = file.and_then(|v| v.into_iter().next()) {
            let nums: Vec<u64> = text
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            match nums.as_slice() {
                [m, w, t] => {
                    config.min_resend = std::time::Duration::from_secs(*m);
                    config.window = std::time::Duration::from_secs(*w);
                    config.timeout = std::time::Duration::from_secs(*t);
                }
                _ => {
                    return Err(GreylistError::Control(ControlError {
                        path: control.file("greylist"),
                        line: Some(line),
                        problem: "expected `min-resend window timeout` in seconds".into(),
                    }))
                }
            }
        }
        let white_path = control.file("greylist.white");
        let whitelist = if white_path.exists() {
            policy::greylist::Whitelist::load(&white_path).map_err(|errs| {
                GreylistError::Whitelist(
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?
        } else {
            policy::greylist::Whitelist::default()
        };
        let dir = home.join("greylist");
        std::fs::create_dir_all(&dir).map_err(|source| GreylistError::StateDir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("shard{index}.state"));
        let now = SystemTime::now();
        let mut state =
            match policy::greylist::Greylist::load(&path, config, whitelist.clone(), now) {
                Ok(g) => g,
                Err(e) => {
                    log!(
                        "shard{index} greylist state {} unreadable, starting empty: {e}",
                        path.display()
                    );
                    policy::greylist::Greylist::new(config, whitelist)
                }
            };
        // The other shards' files too: with another shard count than last
        // run, a client's home shard is not the one that saved its triplets.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let other = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if other != path && name.starts_with("shard") && name.ends_with(".state") {
                if let Err(e) = state.merge_file(&other, now) {
                    log!(
                        "shard{index} greylist state {} skipped: {e}",
                        other.display()
                    );
                }
            }
        }
        Ok(Some(Greylisting::BuiltIn { state, path }))
    }
}

/// Why greylisting could not be set up (the shard does not start).
#[derive(Debug, thiserror::Error)]
pub enum GreylistError {
    /// `GREYIP` is not `ip[@port]`.
    #[error("GREYIP: {0}")]
    GreyIp(String),
    /// `control/greylist` unreadable or malformed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// `control/greylist.white` has bad lines (each named).
    #[error("{0}")]
    Whitelist(String),
    /// `<home>/greylist` cannot be made.
    #[error("{}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
