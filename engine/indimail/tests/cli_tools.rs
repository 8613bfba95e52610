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
    std::fs::write(home.join("control/databytes"), "# size\nlots\n").unwrap();
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
    assert!(err.contains("tcp.smtp:2:"), "{err}");
    assert!(
        err.contains("listeners:2: `smpt`: unknown service"),
        "{err}"
    );
    let (_, out, _) = indimail(home, &["config", "show"]);
    assert!(out.contains("problem: "), "{out}");
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
