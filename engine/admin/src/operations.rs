//! What an administrator may ask for, by either door: the commands the HTTP/JSON endpoint
//! runs (`<group>.<verb>`), IndiMail's indisrvr whitelist of programs and the operations
//! each performs, and which names a line of `control/adminusers` may grant.
//!
//! Plain tables and checks, below both servers and the users file, so that a permission
//! means the same thing on both doors.

/// Commands the endpoint runs: group and the verbs allowed (`None`: every verb).
const WHITELIST: &[(&str, Option<&[&str]>)] = &[
    (
        "domain",
        Some(&[
            "add",
            "del",
            "list",
            "info",
            "add-alias",
            "limits",
            "rename",
            "mod",
        ]),
    ),
    (
        "user",
        Some(&[
            "add", "del", "passwd", "mod", "info", "list", "quota", "rename", "expire",
        ]),
    ),
    ("alias", Some(&["add", "del", "list"])),
    ("relay", Some(&["clear"])),
    ("hostcntrl", None),
    ("cluster", None),
    ("atrn", None),
    ("queue", Some(&["stat", "list"])),
];

/// `<group>.*` or a whitelisted `<group>.<verb>` (a permission of `control/adminusers`).
pub fn known_operation(o: &str) -> bool {
    o.split_once('.').is_some_and(|(g, v)| {
        WHITELIST
            .iter()
            .any(|(wg, verbs)| *wg == g && (v == "*" || verbs.is_none_or(|vs| vs.contains(&v))))
    })
}

/// Why a command line is not run by the HTTP endpoint (answered `400` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperationError {
    /// No words at all.
    #[error("empty command")]
    Empty,
    /// A group without its verb (`user`).
    #[error("missing subcommand")]
    MissingSubcommand,
    /// `--home`: a remote command runs on the server's home only.
    #[error("--home is not accepted")]
    Home,
    /// Outside the whitelist.
    #[error("{group} {verb} is not available remotely")]
    NotAvailable {
        /// The command group (`queue`).
        group: String,
        /// Its verb (`delete`).
        verb: String,
    },
}

/// The operation (`group.verb`) of a command line, if whitelisted.
pub fn operation(args: &[String]) -> Result<String, OperationError> {
    let group = args.first().ok_or(OperationError::Empty)?;
    let verb = args.get(1).ok_or(OperationError::MissingSubcommand)?;
    if args
        .iter()
        .any(|a| a == "--home" || a.starts_with("--home="))
    {
        return Err(OperationError::Home);
    }
    let allowed = WHITELIST
        .iter()
        .find(|(g, _)| g == group)
        .is_some_and(|(_, verbs)| verbs.is_none_or(|vs| vs.contains(&verb.as_str())));
    if !allowed {
        return Err(OperationError::NotAvailable {
            group: group.clone(),
            verb: verb.clone(),
        });
    }
    Ok(format!("{group}.{verb}"))
}

/// IndiMail's hard-coded whitelist, in its order: a command line's index points into it.
pub const PROGRAMS: [&str; 44] = [
    "vadduser",
    "vpasswd",
    "vdeluser",
    "vsetuserquota",
    "vbulletin",
    "vmoduser",
    "valias",
    "vuserinfo",
    "vipmap",
    "vacation",
    "vmoveuserdir",
    "vrenameuser",
    "crc",
    "vcfilter",
    "vsmtp",
    "dbinfo",
    "vhostid",
    "printdir",
    "svstat",
    "vaddaliasdomain",
    "vadddomain",
    "vcalias",
    "vcaliasrev",
    "vdeldomain",
    "vrenamedomain",
    "vdominfo",
    "vgroup",
    "vatrn",
    "vpriv",
    "vlimit",
    "hostcntrl",
    "resetquota",
    "vreorg",
    "vdeloldusers",
    "ipchange",
    "svctool",
    "clearopensmtp",
    "hostsync",
    "inquerytest",
    "vmoddomain",
    "vserverinfo",
    "mgmtpass",
    "vfstab",
    "updatefile",
];

/// The operations of `control/adminusers` (the `<group>.<verb>` names above) a whitelisted program
/// can perform; `None` for the entries this project does not implement. A program with
/// several (by its options) needs all of them, unless the user's line names the program.
pub fn operations(program: &str) -> Option<&'static [&'static str]> {
    Some(match program {
        "vadduser" => &["user.add"],
        "vpasswd" => &["user.passwd"],
        "vdeluser" => &["user.del"],
        "vsetuserquota" => &["user.quota"],
        "vmoduser" => &["user.mod"],
        "valias" => &["alias.add", "alias.del", "alias.list"],
        "vuserinfo" => &["user.info"],
        "vrenameuser" => &["user.rename"],
        "vsmtp" | "vhostid" => &["hostcntrl.*", "cluster.hosts"],
        "vaddaliasdomain" => &["domain.add-alias"],
        "vadddomain" => &["domain.add"],
        "vdeldomain" => &["domain.del"],
        "vrenamedomain" => &["domain.rename"],
        "vdominfo" => &["domain.info", "domain.list"],
        "vatrn" => &["atrn.*"],
        "vlimit" => &["domain.limits"],
        "hostcntrl" => &["hostcntrl.*"],
        "vdeloldusers" => &["user.expire"],
        "clearopensmtp" => &["relay.clear"],
        "vmoddomain" => &["domain.mod"],
        _ => return None,
    })
}

/// A whitelisted program this server runs (a permission `control/adminusers` may name).
pub fn implemented(program: &str) -> bool {
    operations(program).is_some()
}

/// `*`, `<group>.*`, a whitelisted `<group>.<verb>` of the HTTP endpoint, or an IndiMail
/// program name the line protocol runs (`vadduser`: vpriv's per-program permission).
pub fn known_permission(o: &str) -> bool {
    o == "*" || known_operation(o) || implemented(o)
}
