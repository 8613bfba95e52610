//! Every admin command, in-process through `cli::run` (clap) and `cli::run_as_program`
//! (IndiMail names), with its errors, on both backends.

mod support;

use std::path::Path;

use clap::Parser;
use lookup::cli::{self, CliError, DirectoryCli};
use lookup::LookupError;
use support::{program, Kind, TestEnv};

fn indimail(home: &Path, args: &[&str]) -> Result<String, CliError> {
    let mut argv = vec!["indimail"];
    argv.extend_from_slice(args);
    let cmd = DirectoryCli::try_parse_from(argv)
        .map_err(|e| CliError::Usage(e.to_string()))?
        .command;
    let mut out = Vec::new();
    cli::run(cmd, home, &mut out)?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

fn ok(home: &Path, args: &[&str]) -> String {
    indimail(home, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(home: &Path, args: &[&str]) -> CliError {
    match indimail(home, args) {
        Ok(out) => panic!("{args:?} succeeded: {out}"),
        Err(e) => e,
    }
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key}: line in {out}"))
}

fn subcommands(kind: Kind) {
    let env = TestEnv::new(kind);
    let h = env.path();

    // domain
    assert!(ok(h, &["domain", "add", "example.com"]).contains("added domain example.com"));
    let e = err(h, &["domain", "add", "example.com"]);
    assert_eq!(e.to_string(), "domain already exists: example.com");
    assert_eq!(e.exit_code(), 1);
    ok(
        h,
        &[
            "domain",
            "add",
            "second.org",
            "--users-per-level",
            "5",
            "--postmaster-password",
            "pm",
        ],
    );
    assert_eq!(ok(h, &["domain", "list"]), "example.com\nsecond.org\n");
    let info = ok(h, &["domain", "info", "second.org"]);
    assert_eq!(line(&info, "users"), "1", "postmaster created");
    assert_eq!(line(&info, "users per level"), "5");
    ok(h, &["domain", "add-alias", "example.net", "example.com"]);
    assert_eq!(
        line(&ok(h, &["domain", "info", "example.com"]), "aliases"),
        "example.net"
    );
    assert!(matches!(
        err(h, &["domain", "info", "nowhere.org"]),
        CliError::Lookup(LookupError::DomainNotFound(_))
    ));
    assert_eq!(
        err(h, &["domain", "del", "nowhere.org"]).to_string(),
        "domain not found: nowhere.org"
    );

    // user
    let out = ok(h, &["user", "add", "manny@example.com", "--password", "pw"]);
    let dir = line(&out, "dir").to_string();
    assert_eq!(Path::new(&dir), h.join("mail/L2P/example.com/manny"));
    assert!(Path::new(&dir).join("Maildir/new").is_dir());
    let info = ok(h, &["user", "info", "manny@example.com"]);
    assert_eq!(line(&info, "dir"), dir);
    assert_eq!(line(&info, "active"), "yes");
    assert_eq!(
        err(h, &["user", "add", "manny@example.com", "--password", "pw"]).to_string(),
        "user already exists: manny@example.com"
    );
    assert_eq!(
        err(h, &["user", "add", "x@nowhere.org", "--password", "pw"]).to_string(),
        "domain not found: nowhere.org"
    );
    let long = "p".repeat(200);
    assert!(
        err(h, &["user", "add", "y@example.com", "--password", &long])
            .to_string()
            .starts_with("password too long")
    );
    assert!(matches!(
        err(
            h,
            &[
                "user",
                "add",
                "z@example.com",
                "--password",
                "pw",
                "--hash",
                "rot13"
            ]
        ),
        CliError::Lookup(LookupError::UnknownHash(_))
    ));
    assert!(matches!(
        err(
            h,
            &[
                "user",
                "add",
                "z@example.com",
                "--password",
                "pw",
                "--quota",
                "lots"
            ]
        ),
        CliError::Lookup(LookupError::InvalidQuota(_))
    ));
    assert_eq!(
        err(h, &["user", "add", "z@example.com"]).exit_code(),
        2,
        "missing --password"
    );

    ok(
        h,
        &[
            "user",
            "passwd",
            "manny@example.com",
            "--password",
            "new",
            "--hash",
            "SHA-512",
        ],
    );
    assert!(line(&ok(h, &["user", "info", "manny@example.com"]), "passwd").starts_with("$6$"));
    ok(
        h,
        &[
            "user",
            "passwd",
            "manny@example.com",
            "--password",
            "new",
            "--cram",
            "--hash",
            "MD5",
        ],
    );
    assert!(
        line(&ok(h, &["user", "info", "manny@example.com"]), "passwd").starts_with("{CRAM}new,$1$")
    );
    assert!(matches!(
        err(
            h,
            &["user", "passwd", "ghost@example.com", "--password", "x"]
        ),
        CliError::Lookup(LookupError::UserNotFound(_))
    ));

    let m = ok(
        h,
        &[
            "user",
            "mod",
            "manny@example.com",
            "--gecos",
            "Manny",
            "--quota",
            "5M",
            "--set",
            "no-pop",
            "--set",
            "no-imap",
            "--toggle-active",
        ],
    );
    assert_eq!(line(&m, "gecos"), "Manny");
    assert_eq!(line(&m, "flags"), "no-pop,no-imap");
    assert_eq!(line(&m, "quota"), "5242880S");
    assert_eq!(line(&m, "active"), "no");
    let m = ok(
        h,
        &[
            "user",
            "mod",
            "manny@example.com",
            "--clear",
            "no-pop",
            "--toggle-active",
        ],
    );
    assert_eq!(line(&m, "flags"), "no-imap");
    assert_eq!(line(&m, "active"), "yes");
    assert!(matches!(
        err(h, &["user", "mod", "manny@example.com", "--set", "wings"]),
        CliError::Usage(_)
    ));
    ok(h, &["user", "quota", "manny@example.com", "NOQUOTA"]);
    assert_eq!(
        line(&ok(h, &["user", "info", "manny@example.com"]), "quota"),
        "NOQUOTA"
    );

    ok(
        h,
        &[
            "user",
            "add",
            "anna@example.com",
            "--password",
            "pw",
            "--inactive",
        ],
    );
    let list = ok(h, &["user", "list", "example.com"]);
    let lines: Vec<&str> = list.lines().collect();
    // domain add made postmaster@example.com (as vadddomain does).
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("anna@example.com ") && lines[0].ends_with(" inactive"));
    assert!(lines[1].starts_with("manny@example.com "));
    assert!(lines[2].starts_with("postmaster@example.com "));
    assert_eq!(ok(h, &["user", "list"]).lines().count(), 4);

    // alias
    ok(
        h,
        &["alias", "add", "sales@example.com", "manny@example.com"],
    );
    ok(
        h,
        &["alias", "add", "sales@example.com", "anna@example.com"],
    );
    assert_eq!(
        ok(h, &["alias", "list", "sales@example.com"]),
        "sales@example.com -> anna@example.com\nsales@example.com -> manny@example.com\n"
    );
    assert!(matches!(
        err(
            h,
            &["alias", "add", "sales@example.com", "anna@example.com"]
        ),
        CliError::Lookup(LookupError::AliasExists(_))
    ));
    ok(
        h,
        &["alias", "del", "sales@example.com", "anna@example.com"],
    );
    ok(h, &["alias", "del", "sales@example.com"]);
    assert_eq!(ok(h, &["alias", "list", "example.com"]), "");
    assert!(matches!(
        err(h, &["alias", "del", "sales@example.com"]),
        CliError::Lookup(LookupError::AliasNotFound(_))
    ));

    // hostcntrl
    ok(h, &["hostcntrl", "set-host", "store1", "10.1.1.1"]);
    ok(h, &["hostcntrl", "add", "manny@example.com", "store1"]);
    ok(h, &["hostcntrl", "add", "*@example.com", "store1"]);
    ok(
        h,
        &["hostcntrl", "set-port", "example.com", "store1", "2525"],
    );
    assert!(matches!(
        err(h, &["hostcntrl", "add", "manny@example.com", "store2"]),
        CliError::Lookup(LookupError::HostExists(_))
    ));
    ok(h, &["hostcntrl", "mod", "manny@example.com", "store2"]);
    assert_eq!(
        ok(h, &["hostcntrl", "list", "example.com"]),
        "*@example.com store1\nmanny@example.com store2\n"
    );
    ok(h, &["hostcntrl", "del", "manny@example.com"]);
    assert!(matches!(
        err(h, &["hostcntrl", "del", "manny@example.com"]),
        CliError::Lookup(LookupError::HostNotFound(_))
    ));
    ok(h, &["hostcntrl", "del-host", "store1"]);
    assert!(matches!(
        err(h, &["hostcntrl", "del-host", "store1"]),
        CliError::Lookup(LookupError::HostNotFound(_))
    ));

    // deletes
    ok(h, &["user", "del", "manny@example.com"]);
    assert!(!Path::new(&dir).exists());
    assert!(matches!(
        err(h, &["user", "info", "manny@example.com"]),
        CliError::Lookup(LookupError::UserNotFound(_))
    ));
    ok(h, &["domain", "del", "example.com"]);
    assert_eq!(ok(h, &["domain", "list"]), "second.org\n");
    let rcpt = std::fs::read_to_string(h.join("control/rcpthosts")).unwrap();
    assert_eq!(rcpt, "second.org\n");
}

fn indimail_program_names(kind: Kind) {
    let env = TestEnv::new(kind);
    let h = env.path();
    assert_eq!(
        program(h, "vadddomain", &["-l", "10", "example.com", "pmpass"]).0,
        0
    );
    assert_eq!(program(h, "vadddomain", &["example.com"]).0, 1, "exists");
    assert_eq!(program(h, "vadddomain", &[]).0, 2, "usage");
    assert_eq!(
        program(
            h,
            "vadduser",
            &["-q", "1M", "-c", "Bob B", "bob@example.com", "pw"]
        )
        .0,
        0
    );
    assert_eq!(
        program(h, "vadduser", &["bob@example.com", "pw"]).0,
        1,
        "exists"
    );
    assert_eq!(
        program(h, "vadduser", &["-Z", "x@example.com", "pw"]).0,
        2,
        "bad option"
    );
    let (code, out) = program(h, "vuserinfo", &["bob@example.com"]);
    assert_eq!(code, 0);
    assert_eq!(line(&out, "gecos"), "Bob B");
    assert_eq!(line(&out, "quota"), "1048576S");
    assert_eq!(
        program(h, "vpasswd", &["-h", "SHA-512", "bob@example.com", "new"]).0,
        0
    );
    assert!(line(&program(h, "vuserinfo", &["bob@example.com"]).1, "passwd").starts_with("$6$"));
    assert_eq!(
        program(h, "vmoduser", &["-r", "-p", "bob@example.com"]).0,
        0
    );
    assert_eq!(
        line(&program(h, "vuserinfo", &["bob@example.com"]).1, "flags"),
        "no-pop,no-relay"
    );
    // -l FILE installs the vacation reply in the home, -l - removes it.
    let msg = h.join("away.txt");
    std::fs::write(&msg, "Subject: away\nBack on Monday.\n").unwrap();
    let (code, out) = program(
        h,
        "vmoduser",
        &["-l", msg.to_str().unwrap(), "bob@example.com"],
    );
    assert_eq!(code, 0, "{out}");
    let home = std::path::PathBuf::from(line(
        &program(h, "vuserinfo", &["bob@example.com"]).1,
        "dir",
    ));
    let installed = std::fs::read_to_string(home.join(".vacation.msg")).unwrap();
    assert_eq!(installed, "Subject: away\nBack on Monday.\n");
    assert_eq!(program(h, "vmoduser", &["-l", "-", "bob@example.com"]).0, 0);
    assert!(!home.join(".vacation.msg").exists());
    assert_eq!(
        program(h, "vmoduser", &["-x", "-n", "bob@example.com"]).0,
        0
    );
    let out = program(h, "vuserinfo", &["bob@example.com"]).1;
    assert_eq!((line(&out, "flags"), line(&out, "active")), ("none", "no"));
    assert_eq!(program(h, "vsetuserquota", &["bob@example.com", "2M"]).0, 0);
    assert_eq!(
        line(&program(h, "vuserinfo", &["bob@example.com"]).1, "quota"),
        "2097152S"
    );
    assert_eq!(
        program(h, "vsetuserquota", &["bob@example.com", "much"]).0,
        1
    );
    assert_eq!(
        program(h, "valias", &["-i", "bob@example.com", "info@example.com"]).0,
        0
    );
    let (code, out) = program(h, "valias", &["-s", "info@example.com"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "info@example.com -> bob@example.com\n")
    );
    assert_eq!(
        program(h, "valias", &["-d", "bob@example.com", "info@example.com"]).0,
        0
    );
    assert_eq!(
        program(h, "valias", &["-d", "bob@example.com", "info@example.com"]).0,
        1
    );
    assert_eq!(
        program(h, "hostcntrl", &["-i", "store9", "bob@example.com"]).0,
        0
    );
    assert_eq!(
        program(h, "hostcntrl", &["-m", "store8", "bob@example.com"]).0,
        0
    );
    let (code, out) = program(h, "hostcntrl", &["-l", "example.com"]);
    assert_eq!((code, out.as_str()), (0, "bob@example.com store8\n"));
    assert_eq!(program(h, "hostcntrl", &["-d", "bob@example.com"]).0, 0);
    assert_eq!(program(h, "hostcntrl", &["bob@example.com"]).0, 2);
    let (code, out) = program(h, "vdominfo", &["example.com"]);
    assert_eq!(code, 0);
    assert_eq!(line(&out, "users"), "2");
    assert_eq!(program(h, "vdominfo", &[]).1, "example.com\n");
    assert_eq!(
        program(h, "vaddaliasdomain", &["example.org", "example.com"]).0,
        0
    );
    assert_eq!(program(h, "vdeluser", &["bob@example.com"]).0, 0);
    assert_eq!(program(h, "vdeluser", &["bob@example.com"]).0, 1);
    assert_eq!(program(h, "vdeldomain", &["example.com"]).0, 0);
    assert_eq!(program(h, "vdeldomain", &["example.com"]).0, 1);
    let mut out = Vec::new();
    assert_eq!(cli::run_as_program("qmail-smtpd", &[], h, &mut out), None);
}

/// `indimail cluster ...` and vhostid/vsmtp: hosts registered with their ports, users
/// placed and moved, removal refused while users remain.
fn cluster_commands(kind: Kind) {
    let env = TestEnv::new(kind);
    let h = env.path();
    ok(h, &["domain", "add", "example.com"]);
    ok(
        h,
        &[
            "cluster",
            "add-host",
            "store1",
            "10.0.0.1",
            "--domain",
            "example.com",
            "--smtp-port",
            "2525",
        ],
    );
    ok(h, &["cluster", "add-host", "store2", "10.0.0.2"]);
    // A host must be registered before users go to it.
    assert!(matches!(
        err(h, &["cluster", "move", "ann@example.com", "store9"]),
        CliError::Lookup(LookupError::HostNotFound(_))
    ));
    assert_eq!(
        ok(h, &["cluster", "move", "ann@example.com", "store1"]),
        "placed ann@example.com on store1\n"
    );
    assert_eq!(
        ok(h, &["cluster", "where", "ann@example.com"]),
        "example.com:10.0.0.1:2525 store1\n"
    );
    assert_eq!(
        ok(h, &["cluster", "move", "ann@example.com", "store2"]),
        "moved ann@example.com from store1 to store2\n"
    );
    assert_eq!(
        ok(h, &["cluster", "move", "ann@example.com", "store2"]),
        "ann@example.com is on store2 already\n"
    );
    // No smtp_port row for store2: port 25.
    assert_eq!(
        ok(h, &["cluster", "where", "ann@example.com"]),
        "example.com:10.0.0.2:25 store2\n"
    );
    assert!(ok(h, &["cluster", "where", "bob@example.com"]).contains("not placed"));
    assert_eq!(
        ok(h, &["cluster", "hosts"]),
        "store1 10.0.0.1 users=0 smtp=example.com:*:2525\nstore2 10.0.0.2 users=1 smtp=-\n"
    );
    let e = err(h, &["cluster", "del-host", "store2"]);
    assert!(
        matches!(e, CliError::Lookup(LookupError::HostInUse(_, 1))),
        "{e}"
    );
    ok(h, &["cluster", "move", "ann@example.com", "store1"]);
    ok(h, &["cluster", "del-host", "store2"]);
    assert!(matches!(
        err(h, &["cluster", "del-host", "store2"]),
        CliError::Lookup(LookupError::HostNotFound(_))
    ));
    ok(h, &["cluster", "del-host", "store1", "--force"]);
    assert_eq!(
        ok(h, &["cluster", "hosts"]),
        "store1 - users=1 smtp=-\n",
        "still named by hostcntrl"
    );

    // The IndiMail names: vhostid (host_table) and vsmtp (smtp_port).
    assert_eq!(program(h, "vhostid", &["-i", "10.0.0.7", "store7"]).0, 0);
    assert_eq!(program(h, "vhostid", &["-i", "nonsense", "store7"]).0, 2);
    assert_eq!(
        program(h, "vsmtp", &["-i", "587", "-m", "*", "store7@example.com"]).0,
        0
    );
    let (code, out) = program(h, "vhostid", &["-s"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("store7 10.0.0.7 users=0 smtp=example.com:*:587"),
        "{out}"
    );
    assert_eq!(
        program(h, "vsmtp", &["-d", "-m", "*", "store7@example.com"]).0,
        0
    );
    assert_eq!(
        program(h, "vsmtp", &["-d", "-m", "*", "store7@example.com"]).0,
        1
    );
    assert_eq!(program(h, "vsmtp", &["store7"]).0, 2);
    assert_eq!(program(h, "vhostid", &["-d", "store7"]).0, 0);
    assert_eq!(program(h, "vhostid", &["-d", "store7"]).0, 1);
}

/// Backdate `email`'s every `lastauth` row and add a relay row, as logins `days` ago would
/// have left them (through the directory, with a manual clock).
fn age_user(env: &TestEnv, email: &str, days: i64) {
    let now = lookup::unix_now();
    let clock = std::rc::Rc::new(lookup::ManualClock::new(now - days * 86_400));
    support::run(async {
        let dir = env.directory(clock, env.config()).await;
        let u = dir.user(email).await.unwrap().expect("user exists");
        let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
        for service in ["add", "pop3"] {
            dir.record_lastauth(&u, service, ip).await.unwrap();
        }
        dir.record_relay(email, ip).await.unwrap();
        dir.close().await;
    });
}

/// vlimit, vrenameuser, vrenamedomain, vmoddomain, vdeloldusers and clearopensmtp, by both
/// names, against the store.
fn domain_tools(kind: Kind) {
    let env = TestEnv::new(kind);
    let h = env.path();
    ok(
        h,
        &[
            "domain",
            "add",
            "example.com",
            "--postmaster-password",
            "pm",
        ],
    );

    // vlimit: defaults until set, then the stored row; -d goes back to the defaults.
    let (code, out) = program(h, "vlimit", &["-s", "example.com"]);
    assert_eq!(code, 0);
    assert_eq!(line(&out, "source"), "defaults");
    assert_eq!(line(&out, "max pop accounts"), "unlimited");
    assert_eq!(line(&out, "domain expiry"), "never");
    let (code, out) = program(
        h,
        "vlimit",
        &[
            "-e",
            "2030-01-02",
            "-P",
            "5",
            "-A",
            "-1",
            "-q",
            "10M",
            "-m",
            "100",
            "-g",
            "ps",
            "-p",
            "cd",
            "example.com",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "limits of example.com set\n"));
    let out = ok(h, &["domain", "limits", "example.com"]);
    assert_eq!(line(&out, "source"), "vlimits");
    assert_eq!(
        line(&out, "domain expiry"),
        "2030-01-02 00:00:00 (1893542400)"
    );
    assert_eq!(line(&out, "max pop accounts"), "5");
    assert_eq!(line(&out, "max aliases"), "unlimited");
    assert_eq!(line(&out, "default quota"), "10485760");
    assert_eq!(line(&out, "default maxmsgcount"), "100");
    assert_eq!(line(&out, "flags"), "no-pop,no-smtp");
    assert_eq!(line(&out, "perm account"), "deny create,delete");
    // As in IndiMail, a row acts only once the domain's limits are switched on
    // (`.domain_limits`, vmoddomain -l 1, or DOMAIN_LIMITS).
    let server_limits = || {
        support::run(async {
            let clock = std::rc::Rc::new(lookup::ManualClock::new(lookup::unix_now()));
            let dir = env.directory(clock, env.config()).await;
            let l = dir.limits("example.com").await.unwrap();
            let l = l.map(|l| (*l).clone());
            dir.close().await;
            l
        })
    };
    assert!(server_limits().is_none());
    assert_eq!(program(h, "vmoddomain", &["-l", "1", "example.com"]).0, 0);
    // The server side sees the row, and new users get the default quota from it.
    let dl = server_limits().expect("limits in force");
    assert!(dl.disable_pop && dl.disable_smtp && !dl.disable_imap);
    assert_eq!(dl.maxpopaccounts, 5);
    ok(h, &["user", "add", "ann@example.com", "--password", "pw"]);
    assert_eq!(
        line(&ok(h, &["user", "info", "ann@example.com"]), "quota"),
        "10485760S,100C"
    );
    // vlimit -P / -A: the domain holds postmaster and ann; a third mailbox fits, a fourth not.
    assert_eq!(
        program(h, "vlimit", &["-P", "3", "-A", "1", "example.com"]).0,
        0
    );
    ok(h, &["user", "add", "lim1@example.com", "--password", "pw"]);
    let e = err(h, &["user", "add", "lim2@example.com", "--password", "pw"]).to_string();
    assert!(e.contains("limit of 3 mailboxes (vlimit -P)"), "{e}");
    ok(
        h,
        &["alias", "add", "lim-info@example.com", "&ann@example.com"],
    );
    ok(
        h,
        &["alias", "add", "lim-info@example.com", "&lim1@example.com"],
    );
    let e = err(
        h,
        &["alias", "add", "lim-sales@example.com", "&ann@example.com"],
    )
    .to_string();
    assert!(e.contains("limit of 1 aliases (vlimit -A)"), "{e}");
    assert_eq!(
        program(h, "vlimit", &["-P", "5", "-A", "-1", "example.com"]).0,
        0
    );
    assert_eq!(program(h, "vmoddomain", &["-l", "0", "example.com"]).0, 0);
    ok(h, &["alias", "del", "lim-info@example.com"]);
    ok(h, &["user", "del", "lim1@example.com"]);
    // Changing one value keeps the others; -g x clears the flags.
    ok(
        h,
        &[
            "domain",
            "limits",
            "example.com",
            "--max-forwards",
            "3",
            "--flags",
            "x",
            "--passwd-expiry",
            "-1",
            "--max-aliases",
            "-1",
        ],
    );
    let out = program(h, "vlimit", &["-s", "example.com"]).1;
    assert_eq!(line(&out, "max forwards"), "3");
    assert_eq!(line(&out, "password expiry"), "never");
    assert_eq!(
        line(&out, "domain expiry"),
        "2030-01-02 00:00:00 (1893542400)"
    );
    assert_eq!(line(&out, "max pop accounts"), "5");
    assert_eq!(line(&out, "flags"), "none");
    assert_eq!(program(h, "vlimit", &["-P", "many", "example.com"]).0, 2);
    assert_eq!(program(h, "vlimit", &["-g", "q", "example.com"]).0, 2);
    assert_eq!(
        program(h, "vlimit", &["-e", "2030-13-01", "example.com"]).0,
        2
    );
    assert_eq!(program(h, "vlimit", &["-s", "nowhere.org"]).0, 1);
    assert_eq!(program(h, "vlimit", &[]).0, 2);
    assert_eq!(program(h, "vlimit", &["-d", "example.com"]).0, 0);
    assert_eq!(
        line(&program(h, "vlimit", &["-s", "example.com"]).1, "source"),
        "defaults"
    );
    assert!(matches!(
        err(h, &["domain", "limits", "example.com", "--delete"]),
        CliError::Lookup(LookupError::LimitsNotFound(_))
    ));

    // vrenameuser: mail, password and flags move with the name.
    let old_dir = line(&ok(h, &["user", "info", "ann@example.com"]), "dir").to_string();
    std::fs::write(Path::new(&old_dir).join("Maildir/new/1.msg"), "hi\n").unwrap();
    ok(h, &["user", "mod", "ann@example.com", "--set", "no-imap"]);
    ok(h, &["alias", "add", "ann@example.com", "ann@elsewhere.org"]);
    let passwd = line(&ok(h, &["user", "info", "ann@example.com"]), "passwd").to_string();
    let (code, out) = program(h, "vrenameuser", &["ann@example.com", "zoe@example.com"]);
    assert_eq!(code, 0, "{out}");
    let info = ok(h, &["user", "info", "zoe@example.com"]);
    assert_eq!(line(&info, "passwd"), passwd);
    assert_eq!(line(&info, "flags"), "no-imap");
    let new_dir = line(&info, "dir").to_string();
    assert_eq!(Path::new(&new_dir), h.join("mail/T2Zsym/example.com/zoe"));
    assert!(Path::new(&new_dir).join("Maildir/new/1.msg").is_file());
    assert!(!Path::new(&old_dir).exists());
    assert_eq!(
        ok(h, &["alias", "list", "zoe@example.com"]),
        "zoe@example.com -> ann@elsewhere.org\n"
    );
    assert!(matches!(
        err(h, &["user", "info", "ann@example.com"]),
        CliError::Lookup(LookupError::UserNotFound(_))
    ));
    assert!(matches!(
        err(
            h,
            &[
                "user",
                "rename",
                "zoe@example.com",
                "postmaster@example.com"
            ]
        ),
        CliError::Lookup(LookupError::UserExists(_))
    ));
    // A new name in an alias domain lands in the real domain.
    ok(h, &["domain", "add-alias", "alias.example", "example.com"]);
    ok(h, &["user", "add", "tmp@example.com", "--password", "pw"]);
    assert!(ok(
        h,
        &["user", "rename", "tmp@example.com", "tim@alias.example"]
    )
    .starts_with("renamed user tmp@example.com to tim@example.com\n"));
    ok(h, &["user", "del", "tim@example.com"]);
    ok(h, &["domain", "del", "alias.example"]);
    assert_eq!(
        program(h, "vrenameuser", &["nobody@example.com", "x@example.com"]).0,
        1
    );
    assert_eq!(program(h, "vrenameuser", &["zoe@example.com"]).0, 2);

    // vmoddomain: show, then the unknown-user handler and the limits switch.
    let out = program(h, "vmoddomain", &["example.com"]).1;
    assert_eq!(
        (line(&out, "limits"), line(&out, "handler")),
        ("off", "bounce-no-mailbox")
    );
    let (code, out) = program(h, "vmoddomain", &["-l", "1", "-h", "delete", "example.com"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (line(&out, "limits"), line(&out, "handler")),
        ("on", "delete")
    );
    assert_eq!(
        std::fs::read_to_string(h.join("domains/example.com/.qmail-default")).unwrap(),
        "| /usr/sbin/vdelivermail '' delete\n"
    );
    assert!(h.join("domains/example.com/.domain_limits").exists());
    assert!(err(
        h,
        &["domain", "mod", "example.com", "--handler", "rm -rf /"]
    )
    .to_string()
    .contains("bad handler"));
    assert_eq!(program(h, "vmoddomain", &["-l", "2", "example.com"]).0, 2);

    // vrenamedomain: users, homes, config dir and control files follow.
    ok(h, &["domain", "add-alias", "example.net", "example.com"]);
    let (code, out) = program(h, "vrenamedomain", &["example.com", "example.org"]);
    assert_eq!(code, 0, "{out}");
    let info = ok(h, &["user", "info", "zoe@example.org"]);
    let dir = line(&info, "dir").to_string();
    assert_eq!(Path::new(&dir), h.join("mail/T2Zsym/example.org/zoe"));
    assert!(Path::new(&dir).join("Maildir/new/1.msg").is_file());
    assert_eq!(line(&info, "passwd"), passwd);
    assert!(h.join("domains/example.org/.qmail-default").is_file());
    assert!(!h.join("domains/example.com").exists());
    assert_eq!(ok(h, &["domain", "list"]), "example.org\n");
    let rcpt = std::fs::read_to_string(h.join("control/rcpthosts")).unwrap();
    assert!(
        rcpt.contains("example.org") && !rcpt.contains("example.com\n"),
        "{rcpt}"
    );
    let vd = std::fs::read_to_string(h.join("control/virtualdomains")).unwrap();
    assert!(
        vd.contains("example.net:example.org") && vd.contains("example.org:example.org"),
        "{vd}"
    );
    assert_eq!(
        line(&ok(h, &["domain", "info", "example.org"]), "aliases"),
        "example.net"
    );
    assert!(matches!(
        err(h, &["domain", "rename", "example.org", "example.net"]),
        CliError::Lookup(LookupError::AliasDomainExists(_))
    ));
    assert_eq!(program(h, "vrenamedomain", &["nowhere.org", "x.org"]).0, 1);

    // vdeloldusers: lists without -y, deletes with it; recent users and postmaster stay.
    ok(h, &["user", "add", "bob@example.org", "--password", "pw"]);
    age_user(&env, "zoe@example.org", 90);
    age_user(&env, "postmaster@example.org", 90);
    let (code, out) = program(h, "vdeloldusers", &["-d", "example.org"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("would delete zoe@example.org (last login "),
        "{out}"
    );
    assert!(out.contains("1 users not deleted"), "{out}");
    ok(h, &["user", "info", "zoe@example.org"]);
    assert_eq!(ok(h, &["user", "expire", "--days", "100", "--yes"]), "");
    let (code, out) = program(h, "vdeloldusers", &["-a", "30", "--yes"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("deleted zoe@example.org"), "{out}");
    assert!(!Path::new(&dir).exists());
    ok(h, &["user", "info", "bob@example.org"]);
    ok(h, &["user", "info", "postmaster@example.org"]);
    assert_eq!(program(h, "vdeloldusers", &["-a", "soon"]).0, 2);
    assert_eq!(program(h, "vdeloldusers", &["-d", "nowhere.org"]).0, 1);

    // clearopensmtp: the two 90-day-old relay rows go, a fresh one stays.
    age_user(&env, "bob@example.org", 0);
    assert_eq!(
        program(h, "clearopensmtp", &[]),
        (
            0,
            "cleared 2 relay entries older than 60 minutes\n".to_string()
        )
    );
    assert_eq!(
        ok(h, &["relay", "clear", "--minutes", "1"]),
        "cleared 0 relay entries older than 1 minutes\n",
        "a row from this second is not a minute old (0 minutes raced the second boundary)"
    );
    assert_eq!(program(h, "clearopensmtp", &["x"]).0, 2);
}

/// A temporary failure (the database is gone) exits 111.
#[test]
fn unreachable_database_exits_111() {
    let mut env = TestEnv::new(Kind::Mariadb);
    let h = env.path().to_path_buf();
    ok(&h, &["domain", "add", "example.com"]);
    env.db.as_mut().unwrap().stop();
    let e = err(&h, &["domain", "list"]);
    assert_eq!(e.exit_code(), 111, "{e}");
    assert_eq!(program(&h, "vdominfo", &[]).0, 111);
}

#[test]
fn bad_host_mysql_names_file_and_line() {
    let env = TestEnv::new(Kind::Sqlite);
    std::fs::write(env.path().join("control/host.mysql"), "h:u:p:notaport\n").unwrap();
    let e = err(env.path(), &["domain", "list"]);
    assert!(
        e.to_string().contains("host.mysql:1: bad port or socket"),
        "{e}"
    );
}

both_backends!(
    subcommands,
    indimail_program_names,
    cluster_commands,
    domain_tools
);
