//! Reading mail end to end (issue 6): `indimail serve` with SMTP, the IMAP and POP3 proxies
//! and the built-in POP3 server; a domain and users made with the `indimail` CLI; a message
//! sent over SMTP and delivered into the user's Maildir, then read with Python's `imaplib`
//! and `poplib` through the proxies — with a real Dovecot behind them that checks every
//! password through `indimail checkpassword` — and through the built-in POP3 server.
//! A user whose `hostcntrl` entry puts them on "host B" (a second Dovecot on 127.0.0.2) is
//! routed there. The proxies also start while the directory is down and answer logins
//! with temporary failures until it is back.

mod common;
#[path = "../../../proxies/tests/support/dovecot.rs"]
mod dovecot;
#[path = "../../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use std::collections::HashMap;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dovecot::{Auth, Dovecot, Options};

/// `indimail serve` with the given listeners (`--smtp`, `--imap-proxy`, ... on ephemeral
/// loopback ports) and environment; returns the server and each service's address.
fn serve(
    home: &Path,
    driver: &str,
    services: &[&str],
    env: &[(&str, String)],
) -> (Server, HashMap<String, SocketAddr>) {
    let listeners: Vec<(&str, SocketAddr)> = services
        .iter()
        .map(|s| (*s, SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Clear-text logins from loopback without TLS (the proxies' default needs TLS first).
    env.push(("PLAINTEXT_AUTH_NETS", "127.0.0.0/8"));
    Server::start_services(home, driver, &listeners, &env)
}

fn admin(home: &Path, args: &[&str]) -> String {
    let (c, out, err) = indimail(home, args);
    assert_eq!(c, 0, "indimail {args:?}: {out}{err}");
    out
}

/// The user's home (`dir:` of `user info`).
fn pw_dir(home: &Path, email: &str) -> PathBuf {
    let out = admin(home, &["user", "info", email]);
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("dir: "))
        .expect("dir line");
    PathBuf::from(dir.trim())
}

/// Dovecot's mail processes run unprivileged: let them traverse from `/` to `dir`.
fn traversable(dir: &Path) {
    for a in dir.ancestors() {
        if let Ok(m) = std::fs::metadata(a) {
            let mode = m.permissions().mode();
            if mode & 0o011 != 0o011 {
                let _ = std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode | 0o011));
            }
        }
    }
}

fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python failed:\n{text}");
    text
}

/// Everything a reader does, as one Python script: argv = imap-proxy port, pop3-proxy port,
/// pop3 port, Dovecot A's IMAP port.
const READER: &str = r#"
import imaplib, poplib, sys
imap_proxy, pop3_proxy, pop3, dovecot_a = (int(a) for a in sys.argv[1:5])
H = "127.0.0.1"

def imap_read(port, user, pw, want):
    m = imaplib.IMAP4(H, port, timeout=20)
    typ, _ = m.login(user, pw)
    assert typ == "OK", typ
    typ, data = m.select("INBOX")
    assert typ == "OK" and data[0] == b"1", (typ, data)
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK", typ
    body = data[0][1]
    for w in want:
        assert w in body, (w, body)
    m.logout()

def imap_refused(port, user, pw):
    m = imaplib.IMAP4(H, port, timeout=20)
    try:
        m.login(user, pw)
    except imaplib.IMAP4.error as e:
        assert "AUTHENTICATIONFAILED" in str(e), e
        return
    raise SystemExit("login of %s with a bad password accepted on %d" % (user, port))

def pop_read(port, user, pw, want):
    p = poplib.POP3(H, port, timeout=20)
    p.user(user); p.pass_(pw)
    n, size = p.stat()
    assert n == 1, (n, size)
    resp, lines, octets = p.retr(1)
    text = b"\n".join(lines)
    for w in want:
        assert w in text, (w, text)
    assert len(p.uidl()[1]) == 1
    p.quit()

def pop_refused(port, user, pw):
    p = poplib.POP3(H, port, timeout=20)
    p.user(user)
    try:
        p.pass_(pw)
    except poplib.error_proto as e:
        assert b"[AUTH]" in e.args[0], e
        return
    raise SystemExit("POP3 login with a bad password accepted on %d" % port)

carol = [b"Subject: read me", b"Delivered-To: carol@example.com", b"\n.dotted line"]
dan = [b"Subject: host b", b"only on host B"]
# Through the proxies to Dovecot A (default backend) ...
imap_read(imap_proxy, "carol@example.com", "Carol-Pw-1", carol)
pop_read(pop3_proxy, "carol@example.com", "Carol-Pw-1", carol)
# ... and to host B (hostcntrl -> host_table 127.0.0.2).
imap_read(imap_proxy, "dan@example.com", "Dan-Pw-1", dan)
pop_read(pop3_proxy, "dan@example.com", "Dan-Pw-1", dan)
# Refusals by the proxies.
imap_refused(imap_proxy, "carol@example.com", "wrong")
imap_refused(imap_proxy, "nobody@example.com", "Carol-Pw-1")
pop_refused(pop3_proxy, "carol@example.com", "wrong")
# Dovecot itself checks passwords through indimail checkpassword.
imap_read(dovecot_a, "carol@example.com", "Carol-Pw-1", carol)
imap_refused(dovecot_a, "carol@example.com", "wrong")
# The built-in POP3 server, no Dovecot involved.
pop_read(pop3, "carol@example.com", "Carol-Pw-1", carol)
print("ok")
"#;

fn sqlite_rows(home: &Path, sql: &str) -> String {
    python(
        "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]): print(*r)",
        &[
            home.join("db/indimail.sqlite").display().to_string(),
            sql.to_string(),
        ],
    )
}

#[test]
fn read_through_proxies_dovecot_checkpassword_and_builtin_pop3() {
    let a: IpAddr = [127, 0, 0, 1].into();
    let b: IpAddr = [127, 0, 0, 2].into();
    for d in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        admin(&home, &["domain", "add", "example.com"]);
        admin(
            &home,
            &[
                "user",
                "add",
                "carol@example.com",
                "--password",
                "Carol-Pw-1",
            ],
        );
        admin(
            &home,
            &["user", "add", "dan@example.com", "--password", "Dan-Pw-1"],
        );
        admin(&home, &["hostcntrl", "add", "dan@example.com", "storeb"]);
        admin(&home, &["hostcntrl", "set-host", "storeb", "127.0.0.2"]);

        // Two mailstores on one IMAP and one POP3 port (DESTPORT), on two addresses; both
        // authenticate through `indimail checkpassword` on this home.
        let checkpassword = Auth::Checkpassword(vec![
            bin().to_string(),
            "--home".into(),
            home.display().to_string(),
            "checkpassword".into(),
        ]);
        let (imap_port, pop3_port) = (dovecot::free_port_on(a, b), dovecot::free_port_on(a, b));
        let store_a = Dovecot::with(Options {
            auth: checkpassword.clone(),
            address: a,
            imap_port: Some(imap_port),
            pop3_port: Some(pop3_port),
            mail_root: None,
        });
        let b_root = tempfile::tempdir().unwrap();
        let store_b = Dovecot::with(Options {
            auth: checkpassword,
            address: b,
            imap_port: Some(imap_port),
            pop3_port: Some(pop3_port),
            mail_root: Some(b_root.path().to_path_buf()),
        });

        let (mut server, ports) = serve(
            &home,
            d,
            &["smtp", "imap-proxy", "pop3-proxy", "pop3"],
            &[
                ("IMAP_BACKEND", store_a.imap.to_string()),
                ("POP3_BACKEND", store_a.pop3.to_string()),
                ("DESTPORT", format!("imap:{imap_port},pop3:{pop3_port}")),
            ],
        );
        let (code, text) = send_message(
            server.smtp,
            "eve@example.org",
            &["carol@example.com"],
            b"Subject: read me\r\n\r\nfirst line\r\n..dotted line\r\n.\r\n",
        );
        assert_eq!(code, 250, "{text}");
        wait_until(20, "queue drained", || queue_list(&home).is_empty());

        // The mail account owns the Maildirs (the server runs as root in CI); Dovecot
        // takes uid and gid from the owner of pw_dir through checkpassword.
        for u in ["carol@example.com", "dan@example.com"] {
            let dir = pw_dir(&home, u);
            dovecot::chown_to_mail_uid(&dir);
            traversable(&dir);
        }
        // dan's message exists only on host B.
        traversable(b_root.path());
        dovecot::deliver_into(
            &b_root.path().join("example.com/dan/Maildir"),
            "1700000000.M1P1.hostb",
            "From: x@example.org\nSubject: host b\n\nonly on host B\n",
        );
        dovecot::chown_to_mail_uid(b_root.path());

        let out = python(
            READER,
            &[
                ports["imap-proxy"].port().to_string(),
                ports["pop3-proxy"].port().to_string(),
                ports["pop3"].port().to_string(),
                imap_port.to_string(),
            ],
        );
        assert!(out.contains("ok"), "{out}");

        let (log_a, log_b) = (store_a.log(), store_b.log());
        // The proxy logged in as `carol@example.com:127.0.0.1`; checkpassword answered with
        // the canonical name (USER), which is what Dovecot logs.
        assert!(
            log_a.contains("Login: user=<carol@example.com>"),
            "A: {log_a}"
        );
        assert!(!log_a.contains("dan@example.com"), "dan on A: {log_a}");
        assert!(log_b.contains("user=<dan@example.com>"), "B: {log_b}");
        assert!(!log_b.contains("carol@example.com"), "carol on B: {log_b}");

        // Logins were recorded: lastauth per service and the POP/IMAP-before-SMTP row.
        wait_until(10, "lastauth rows", || {
            let rows = sqlite_rows(
                &home,
                "SELECT user, service, remote_ip FROM lastauth ORDER BY user, service",
            );
            [
                "carol imap 127.0.0.1",
                "carol pop3 127.0.0.1",
                "dan imap",
                "dan pop3",
            ]
            .iter()
            .all(|r| rows.contains(r))
        });
        let relay = sqlite_rows(&home, "SELECT email, ipaddr FROM relay");
        assert!(relay.contains("carol@example.com 127.0.0.1"), "{relay}");
        let log = server.log();
        assert!(
            log.contains("proxyimap: INFO: LOGIN user=dan@example.com")
                && log.contains(&format!("mailstore=[127.0.0.2:{imap_port}]")),
            "{log}"
        );
        assert_eq!(server.stop(), Some(0), "{}", server.log());
    }
}

/// The directory (MariaDB) is down when `indimail serve` starts: the IMAP/POP3 listeners
/// start anyway, logins get temporary failures, and once the database is back they work.
#[test]
fn proxies_start_while_the_directory_is_down() {
    let mut db = mariadb::MariaDb::start();
    let dc = Dovecot::start();
    let d = "uring";
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/host.mysql"), db.host_mysql()).unwrap();
    admin(home, &["domain", "add", "example.com"]);
    admin(
        home,
        &["user", "add", "amy@example.com", "--password", "Amy-Pw-1"],
    );
    dc.deliver("amy", "1700000000.M1P1.test", "Subject: hi\n\nbody\n");
    db.stop();

    let (mut server, ports) = serve(
        home,
        d,
        &["smtp", "imap-proxy", "pop3-proxy", "pop3"],
        &[("IMAP_BACKEND", dc.imap.to_string())],
    );
    // One line-oriented exchange: the greeting, then each command's first reply line.
    let talk = |addr: SocketAddr, cmds: &[String]| -> String {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("* OK") || line.starts_with("+OK"),
            "{line}"
        );
        for c in cmds {
            std::io::Write::write_all(&mut w, format!("{c}\r\n").as_bytes()).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        line
    };
    let imap = |tag: &str| {
        talk(
            ports["imap-proxy"],
            &[format!("{tag} LOGIN amy@example.com Amy-Pw-1")],
        )
    };
    let pop = |svc: &str| {
        talk(
            ports[svc],
            &["USER amy@example.com".into(), "PASS Amy-Pw-1".into()],
        )
    };
    assert_eq!(
        imap("a"),
        "a NO [UNAVAILABLE] Temporary authentication failure.\r\n"
    );
    for svc in ["pop3-proxy", "pop3"] {
        assert_eq!(
            pop(svc),
            "-ERR [SYS/TEMP] Temporary authentication failure.\r\n",
            "{svc}"
        );
    }

    db.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = imap("b");
        if r.starts_with("b OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the directory came back: {r}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for svc in ["pop3-proxy", "pop3"] {
        assert_eq!(pop(svc), "+OK Logged in.\r\n", "{svc}");
    }
    assert_eq!(server.stop(), Some(0), "{}", server.log());
}
