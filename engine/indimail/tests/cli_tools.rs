//! `indimail init`, `config check`, `config show`, `queue stat`.

mod common;

use common::*;

#[test]
fn init_is_idempotent_and_never_overwrites() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path().join("home");
    let (c, out, err) = indimail(&home, &["init"]);
    assert_eq!(c, 0, "{err}");
    for f in [
        "control/me",
        "control/rcpthosts",
        "control/listeners",
        "tcp/tcp.smtp",
        "control/servercert.pem",
    ] {
        assert!(home.join(f).exists(), "{f} missing; init said:\n{out}");
        assert!(out.contains(f.rsplit('/').next().unwrap()), "{out}");
    }
    std::fs::write(home.join("control/me"), "mine.example\n").unwrap();
    let (c, out, _) = indimail(&home, &["init"]);
    assert_eq!(c, 0);
    assert!(out.contains("nothing to create"), "{out}");
    assert_eq!(
        std::fs::read_to_string(home.join("control/me")).unwrap(),
        "mine.example\n"
    );
}

#[test]
fn config_check_reports_every_problem_with_file_and_line() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    assert_eq!(indimail(home, &["init"]).0, 0);
    let (c, out, err) = indimail(home, &["config", "check"]);
    assert_eq!(c, 0, "{out}{err}");
    let (_, out, _) = indimail(home, &["config", "show"]);
    assert!(out.contains("shardsched: batch"), "{out}");
    std::fs::write(home.join("control/databytes"), "# size\nlots\n").unwrap();
    std::fs::write(home.join("control/shardsched"), "fifo\n").unwrap();
    std::fs::write(home.join("tcp/tcp.smtp"), "127.:allow\nnot a rule\n").unwrap();
    std::fs::write(
        home.join("control/listeners"),
        "smtp 127.0.0.1:2525\nsmpt 127.0.0.1:2526\n",
    )
    .unwrap();
    let (c, _, err) = indimail(home, &["config", "check"]);
    assert_eq!(c, 1);
    assert!(
        err.contains("databytes:2: `lots` is not a valid number"),
        "{err}"
    );
    assert!(
        err.contains("shardsched:1: \"fifo\" is not batch or normal"),
        "{err}"
    );
    assert!(err.contains("tcp.smtp:2:"), "{err}");
    assert!(
        err.contains("listeners:2: `smpt`: unknown service"),
        "{err}"
    );
    let (_, out, _) = indimail(home, &["config", "show"]);
    assert!(out.contains("problem: "), "{out}");
    // Variables too: a MAX_AUTH_FAILURES that is no number is named, not taken as 3.
    let out = std::process::Command::new(bin())
        .args(["config", "check", "--home"])
        .arg(home)
        .env("MAX_AUTH_FAILURES", "three")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("$MAX_AUTH_FAILURES: `three` is not a valid number"),
        "{err}"
    );
}

/// The queue layout's problems are reported by name, and `config show`
/// prints the same queue-to-shard mapping as `serve`, strays included.
#[test]
fn config_reports_the_queue_layout() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    assert_eq!(indimail(home, &["init"]).0, 0);
    std::fs::write(home.join("control/cpus"), "0,0\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "check", "--home"])
        .arg(home)
        .env("QUEUE_COUNT", "0")
        .env_remove("QUEUEDIR")
        .env_remove("INDIMAIL_SHARDS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("control/cpus:1: bad CPU list `0,0`: CPU 0 listed twice"),
        "{err}"
    );
    assert!(err.contains("$QUEUE_COUNT: must be at least 1"), "{err}");

    std::fs::write(home.join("control/cpus"), "0\n").unwrap();
    std::fs::create_dir_all(home.join("queue/queue5")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "show", "--home"])
        .arg(home)
        .env("INDIMAIL_SHARDS", "2")
        .env_remove("QUEUEDIR")
        .env_remove("QUEUE_COUNT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shards: 2 (cpus any,any; from INDIMAIL_SHARDS)"),
        "{text}"
    );
    assert!(
        text.contains("queue2 ") && text.contains("-> shard 1\n"),
        "{text}"
    );
    assert!(text.contains("-> shard 1 (adopted"), "{text}");
}

#[test]
fn config_show_prints_the_effective_values() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    assert_eq!(indimail(home, &["init"]).0, 0);
    std::fs::write(home.join("control/databytes"), "5000\n").unwrap();
    let (c, out, _) = indimail(home, &["config", "show"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("databytes: 5000"), "{out}");
    assert!(out.contains("listener: smtp 127.0.0.1:2525"), "{out}");
    assert!(out.contains("directory: embedded SQLite"), "{out}");
}

#[test]
fn queue_stat_counts_queued_and_injected_mail() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let s = Server::start(home, "uring");
    assert_eq!(
        send_message(
            s.smtp,
            "a@example.org",
            &["x@localhost", "y@localhost"],
            b"Subject: s\r\n\r\nx\r\n.\r\n"
        )
        .0,
        250
    );
    drop(s);
    let (c, out, err) = indimail(home, &["queue", "stat"]);
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("total: messages 1 recipients pending 2"),
        "{out}"
    );
}

/// `man -l PAGE` as a pipe (plain text, wide enough that names are not hyphenated).
fn man(page: &std::path::Path) -> (bool, String) {
    let o = std::process::Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "250")
        .env("MANPAGER", "cat")
        .output()
        .expect("man installed");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn man_pages_render_for_every_command() {
    let h = tempfile::tempdir().unwrap();
    let out = h.path().join("man");
    let (c, stdout, err) = indimail(h.path(), &["man", "--out", out.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    assert!(stdout.starts_with("wrote "), "{stdout}");
    let mut pages: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    for name in [
        "indimail.8",
        "indimail-serve.8",
        "indimail-user.8",
        "indimail-user-rename.8",
        "indimail-domain-limits.8",
        "indimail-relay-clear.8",
        "indimail-man.8",
        "indimail-control.5",
    ] {
        assert!(out.join(name).is_file(), "{name} missing: {pages:?}");
    }
    assert!(!out.join("indimail-help.8").exists());
    for page in &pages {
        let (ok, text) = man(page);
        assert!(ok, "man -l {}: {text}", page.display());
        let file = page.file_name().unwrap().to_str().unwrap();
        let (stem, _) = file.rsplit_once('.').unwrap();
        assert!(text.contains(stem), "{file} does not name {stem}:\n{text}");
    }
    let (_, control) = man(&out.join("indimail-control.5"));
    for needle in ["rcpthosts", "databytes", "RELAYCLIENT", "badmailfrom"] {
        assert!(control.contains(needle), "{needle} not in:\n{control}");
    }
    assert!(!control.contains("\\fB"), "{control}");
    let (_, limits) = man(&out.join("indimail-domain-limits.8"));
    // man justifies lines: compare with single spaces.
    let words = limits.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("SYNOPSIS indimail domain limits"),
        "{limits}"
    );
    assert!(
        words.contains("--max-pop-accounts <N> Maximum mailboxes"),
        "{limits}"
    );

    // service install --man-dir puts them in man8/ and man5/.
    let home = h.path().join("home");
    assert_eq!(indimail(&home, &["init"]).0, 0);
    let svc = h.path().join("svc");
    let mandir = h.path().join("share/man");
    let (c, stdout, err) = indimail(
        &home,
        &[
            "service",
            "install",
            svc.to_str().unwrap(),
            "--man-dir",
            mandir.to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{err}");
    assert!(stdout.contains("manual pages"), "{stdout}");
    assert!(mandir.join("man8/indimail-serve.8").is_file());
    assert!(mandir.join("man5/indimail-control.5").is_file());
    assert!(svc.join("indimail.service").is_file());
}

/// The new directory tools answer to their IndiMail names through a link, and as
/// `indimail` subcommands.
#[test]
fn directory_tools_by_link_name() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path().join("home");
    assert_eq!(indimail(&home, &["init"]).0, 0);
    let links = h.path().join("bin");
    let (c, _, err) = indimail(&home, &["install-links", links.to_str().unwrap()]);
    assert_eq!(c, 0, "{err}");
    let run = |name: &str, args: &[&str]| {
        let o = std::process::Command::new(links.join(name))
            .args(args)
            .env("INDIMAIL_HOME", &home)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(run("vadddomain", &["example.com", "pm"]).0, 0);
    let (c, out, err) = run("vlimit", &["-P", "3", "example.com"]);
    assert_eq!(
        (c, out.as_str()),
        (0, "limits of example.com set\n"),
        "{err}"
    );
    let (_, out, _) = indimail(&home, &["domain", "limits", "example.com"]);
    assert!(out.contains("max pop accounts: 3"), "{out}");
    assert_eq!(run("vadduser", &["ann@example.com", "pw"]).0, 0);
    let (c, out, err) = run("vrenameuser", &["ann@example.com", "bea@example.com"]);
    assert_eq!(c, 0, "{out}{err}");
    assert_eq!(run("vuserinfo", &["bea@example.com"]).0, 0);
    let (c, _, err) = run("vrenameuser", &["ann@example.com", "cy@example.com"]);
    assert_eq!(c, 1);
    assert!(
        err.starts_with("vrenameuser: user not found: ann@example.com"),
        "{err}"
    );
    assert_eq!(run("vmoddomain", &["-h", "delete", "example.com"]).0, 0);
    assert_eq!(run("vrenamedomain", &["example.com", "example.org"]).0, 0);
    let (c, out, _) = run("vdeloldusers", &["-d", "example.org"]);
    assert_eq!((c, out.as_str()), (0, ""), "nobody is 60 days old");
    let (c, out, _) = run("clearopensmtp", &[]);
    assert_eq!(c, 0);
    assert!(out.starts_with("cleared 0 relay entries"), "{out}");
    let (c, _, err) = run("vlimit", &["-Z", "example.org"]);
    assert_eq!(c, 2);
    assert!(err.contains("unknown option -Z"), "{err}");
}
