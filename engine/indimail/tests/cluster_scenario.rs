//! The issue-11 cluster on one machine: one private MariaDB holding the shared directory,
//! three `indimail serve` on 127.0.0.2 (relay, with the IMAP proxy), 127.0.0.3 (store1) and
//! 127.0.0.4 (store2), each with its own home, a Dovecot per mailstore authenticating every
//! login through `indimail checkpassword`, and a "legacy" server (the aiosmtpd capture
//! server on 127.0.0.5) for a user not yet migrated.
//!
//! Mail for every user goes through the relay, which routes each recipient by the directory
//! (hostcntrl → host_table → smtp_port), one transaction per mailstore; it is read back
//! through the relay's IMAP proxy (Python's imaplib), which routes each login to the user's
//! mailstore. A mailstore is stopped: its mail waits on the relay (deferred, never bounced,
//! never delivered elsewhere), others are not affected, and it is delivered once the store
//! is back. A user is moved between stores with `indimail cluster move`, without a restart:
//! new mail and new logins go to the new store once every host has seen the change (the
//! directory's change poll, one second, plus one query). At the end every message is counted
//! in every Maildir and at the legacy server: nothing lost, nothing duplicated.
//!
//! The three homes share one disk here, so a user's `pw_dir` (one path in the shared
//! directory) is the same Maildir whichever store delivers; which store delivered and which
//! Dovecot served a login is read from their logs.
//!
//! By hand: `scripts/cluster-demo.sh` (runs this test with its output shown).

mod common;
#[path = "../../../proxies/tests/support/dovecot.rs"]
mod dovecot;
#[path = "../../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dovecot::{Auth, Dovecot, Options};

const RELAY: [u8; 4] = [127, 0, 0, 2];
const STORE1: [u8; 4] = [127, 0, 0, 3];
const STORE2: [u8; 4] = [127, 0, 0, 4];
const LEGACY: [u8; 4] = [127, 0, 0, 5];

/// A host's home: the shared directory in `host.mysql`, its id in `hostid`.
fn host_home(root: &Path, name: &str, db: &mariadb::MariaDb) -> PathBuf {
    let home = root.join(name);
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/host.mysql"), db.host_mysql()).unwrap();
    std::fs::write(home.join("control/hostid"), format!("{name}\n")).unwrap();
    home
}

/// `indimail serve` on `ip` with the given services (`smtp`, `imap-proxy`, ...), each on
/// the port given (0: ephemeral); returns the server and each service's address.
fn serve(
    home: &Path,
    ip: [u8; 4],
    services: &[(&str, u16)],
    env: &[(&str, String)],
) -> (Server, HashMap<String, SocketAddr>) {
    let listeners: Vec<(&str, SocketAddr)> = services
        .iter()
        .map(|(s, port)| (*s, SocketAddr::from((ip, *port))))
        .collect();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Clear-text logins from loopback without TLS (the proxies' default needs TLS first).
    env.push(("PLAINTEXT_AUTH_NETS", "127.0.0.0/8"));
    Server::start_services(home, "uring", &listeners, &env)
}

/// The capture server standing in for the old mail server.
struct Legacy {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Legacy {
    fn start() -> Legacy {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/capture_smtpd.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(dir.path())
            .arg("ok")
            .env("HOST", IpAddr::from(LEGACY).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (Debian python3-aiosmtpd)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("capture server: {line:?}"));
        Legacy { child, dir, addr }
    }

    /// (recipients, message) of every captured message.
    fn captured(&self) -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.dir.path().join(format!("{n}.eml"));
            if !eml.exists() {
                break;
            }
            let env = std::fs::read_to_string(self.dir.path().join(format!("{n}.env")))
                .unwrap_or_default();
            let rcpts = env.lines().skip(1).map(str::to_string).collect();
            out.push((rcpts, std::fs::read_to_string(eml).unwrap()));
        }
        out
    }
}

impl Drop for Legacy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin(home: &Path, args: &[&str]) -> String {
    let (c, out, err) = indimail(home, args);
    assert_eq!(c, 0, "indimail {args:?}: {out}{err}");
    out
}

/// The user's Maildir (`dir:` of `user info`, then `Maildir`).
fn maildir(home: &Path, email: &str) -> PathBuf {
    let out = admin(home, &["user", "info", email]);
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("dir: "))
        .expect("dir line");
    PathBuf::from(dir.trim()).join("Maildir")
}

/// Probe tokens (`X-Probe: <token>`) of the messages in a Maildir (new and cur), with how
/// often each occurs.
fn tokens(md: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(md.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(t) = l.strip_prefix("X-Probe: ") {
                    *out.entry(t.trim().to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

fn message(token: &str) -> Vec<u8> {
    format!("X-Probe: {token}\r\nSubject: cluster {token}\r\n\r\nbody of {token}\r\n.\r\n")
        .into_bytes()
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

/// Logs in through the IMAP proxy as each `user:password:token,token...` and checks that
/// INBOX holds exactly those tokens, each once. Prints `ok`.
const READER: &str = r#"
import imaplib, sys
port = int(sys.argv[1])
for spec in sys.argv[2:]:
    user, pw, want = spec.split(":")
    want = sorted(w for w in want.split(",") if w)
    m = imaplib.IMAP4("127.0.0.2", port, timeout=20)
    typ, _ = m.login(user, pw)
    assert typ == "OK", typ
    typ, data = m.select("INBOX", readonly=True)
    assert typ == "OK", (typ, data)
    got = []
    if int(data[0]) > 0:
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (X-PROBE)])")
        for part in data:
            if isinstance(part, tuple):
                for l in part[1].decode().splitlines():
                    if l.startswith("X-Probe: "):
                        got.append(l[9:].strip())
    m.logout()
    assert sorted(got) == want, (user, got, want)
print("ok")
"#;

/// One login through the proxy (the routing probe after a move).
const LOGIN: &str = r#"
import imaplib, sys
m = imaplib.IMAP4("127.0.0.2", int(sys.argv[1]), timeout=20)
typ, _ = m.login(sys.argv[2], sys.argv[3])
assert typ == "OK", typ
m.logout()
print("ok")
"#;

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

/// `to local <rcpt>` delivery lines in a store's log.
fn local_deliveries(s: &Server, rcpt: &str) -> usize {
    s.log().matches(&format!("to local {rcpt}")).count()
}

#[test]
fn one_domain_across_relay_two_mailstores_and_a_legacy_server() {
    let started = Instant::now();
    let db = mariadb::MariaDb::start();
    let root = tempfile::tempdir().unwrap();
    let relay = host_home(root.path(), "relay", &db);
    let store1 = host_home(root.path(), "store1", &db);
    let store2 = host_home(root.path(), "store2", &db);
    let legacy = Legacy::start();

    // The shared directory: one domain, users on store1, store2 and the legacy server.
    const PW: &str = "Pw-123456";
    admin(&relay, &["domain", "add", "example.com"]);
    let users = [
        ("ann", "store1"),
        ("dan", "store1"),
        ("bob", "store2"),
        ("cat", "store2"),
        ("old", "legacy"),
    ];
    for (u, _) in users {
        admin(
            &relay,
            &["user", "add", &format!("{u}@example.com"), "--password", PW],
        );
    }
    let (s1, s2) = (
        serve(&store1, STORE1, &[("smtp", 0)], &[]),
        serve(&store2, STORE2, &[("smtp", 0)], &[]),
    );
    let (mut s1, mut s2) = ((s1.0), (s2.0));
    let store2_smtp = s2.smtp;
    for (host, ip, port) in [
        ("store1", STORE1, s1.smtp.port()),
        ("store2", STORE2, s2.smtp.port()),
        ("legacy", LEGACY, legacy.addr.port()),
    ] {
        admin(
            &relay,
            &[
                "cluster",
                "add-host",
                host,
                &IpAddr::from(ip).to_string(),
                "--domain",
                "example.com",
                "--smtp-port",
                &port.to_string(),
            ],
        );
    }
    for (u, host) in users {
        admin(
            &relay,
            &["cluster", "move", &format!("{u}@example.com"), host],
        );
    }

    // A Dovecot per mailstore on one IMAP port (DESTPORT), checking passwords through
    // `indimail checkpassword` on its own host's home.
    let dovecot_for = |home: &Path, ip: [u8; 4], port: u16| {
        Dovecot::with(Options {
            auth: Auth::Checkpassword(vec![
                bin().to_string(),
                "--home".into(),
                home.display().to_string(),
                "checkpassword".into(),
            ]),
            address: ip.into(),
            imap_port: Some(port),
            pop3_port: None,
            mail_root: None,
        })
    };
    let imap_port = dovecot::free_port_on(STORE1.into(), STORE2.into());
    let d1 = dovecot_for(&store1, STORE1, imap_port);
    let d2 = dovecot_for(&store2, STORE2, imap_port);
    let (mut r, ports) = serve(
        &relay,
        RELAY,
        &[("smtp", 0), ("imap-proxy", 0)],
        &[("DESTPORT", format!("imap:{imap_port}"))],
    );
    let proxy = ports["imap-proxy"].port().to_string();

    // 1. One message to everybody: one transaction per mailstore, and the legacy server.
    let everybody: Vec<String> = users
        .iter()
        .map(|(u, _)| format!("{u}@example.com"))
        .collect();
    let rcpts: Vec<&str> = everybody.iter().map(String::as_str).collect();
    let (code, text) = send_message(r.smtp, "sender@example.org", &rcpts, &message("m1"));
    assert_eq!(code, 250, "{text}");
    // What each user's Maildir (or the legacy server) must end up with.
    let mut expect: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (u, _) in users {
        expect.entry(u).or_default().push("m1".into());
    }
    let md: HashMap<&str, PathBuf> = users
        .iter()
        .map(|(u, _)| (*u, maildir(&relay, &format!("{u}@example.com"))))
        .collect();
    wait_until(30, "m1 delivered everywhere", || {
        ["ann", "dan", "bob", "cat"]
            .iter()
            .all(|u| tokens(&md[u]).contains_key("m1"))
            && !legacy.captured().is_empty()
    });
    wait_until(20, "relay queue drained", || queue_list(&relay).is_empty());
    for u in ["ann", "dan"] {
        assert_eq!(local_deliveries(&s1, &format!("{u}@example.com")), 1);
        assert_eq!(local_deliveries(&s2, &format!("{u}@example.com")), 0);
    }
    for u in ["bob", "cat"] {
        assert_eq!(local_deliveries(&s2, &format!("{u}@example.com")), 1);
        assert_eq!(local_deliveries(&s1, &format!("{u}@example.com")), 0);
    }
    for s in [&s1, &s2] {
        assert!(
            s.log().contains("rcpts=2"),
            "one transaction per store: {}",
            s.log()
        );
    }
    let captured = legacy.captured();
    assert_eq!(captured.len(), 1, "{captured:?}");
    assert_eq!(captured[0].0, vec!["old@example.com".to_string()]);
    assert!(captured[0].1.contains("X-Probe: m1"));

    // 2. Read through the relay's IMAP proxy: each login reaches its own store's Dovecot.
    let read_all = |expect: &BTreeMap<&str, Vec<String>>| {
        for u in ["ann", "dan", "bob", "cat"] {
            dovecot::chown_to_mail_uid(md[u].parent().unwrap());
            traversable(&md[u]);
        }
        let args: Vec<String> = std::iter::once(proxy.clone())
            .chain(
                ["ann", "dan", "bob", "cat"]
                    .iter()
                    .map(|u| format!("{u}@example.com:{PW}:{}", expect[u].join(","))),
            )
            .collect();
        let out = python(READER, &args);
        assert!(out.contains("ok"), "{out}");
    };
    read_all(&expect);
    let (l1, l2) = (d1.log(), d2.log());
    for u in ["ann", "dan"] {
        assert!(l1.contains(&format!("user=<{u}@example.com>")), "d1: {l1}");
        assert!(!l2.contains(&format!("{u}@example.com")), "d2: {l2}");
    }
    for u in ["bob", "cat"] {
        assert!(l2.contains(&format!("user=<{u}@example.com>")), "d2: {l2}");
        assert!(!l1.contains(&format!("{u}@example.com")), "d1: {l1}");
    }

    // 3. store2 goes down: bob's copy waits on the relay, ann's is delivered.
    s2.stop();
    let (code, _) = send_message(
        r.smtp,
        "sender@example.org",
        &["ann@example.com", "bob@example.com"],
        &message("m2"),
    );
    assert_eq!(code, 250);
    expect.get_mut("ann").unwrap().push("m2".into());
    expect.get_mut("bob").unwrap().push("m2".into());
    wait_until(30, "m2 for ann on store1", || {
        tokens(&md["ann"]).contains_key("m2")
    });
    wait_until(30, "deferral on the relay", || r.log().contains("deferral"));
    let list = queue_list(&relay);
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].contains("<bob@example.com>:pending"), "{}", list[0]);
    assert!(!r.log().contains("bounce msg"), "{}", r.log());
    assert!(!tokens(&md["bob"]).contains_key("m2"));
    assert_eq!(
        local_deliveries(&s1, "bob@example.com"),
        0,
        "never elsewhere"
    );

    // store2 is back on the same address; the relay retries now (queue flush).
    let (back, _) = serve(&store2, STORE2, &[("smtp", store2_smtp.port())], &[]);
    s2 = back;
    let out = admin(&relay, &["queue", "flush"]);
    assert!(out.contains("flush"), "{out}");
    wait_until(30, "m2 for bob after store2 returned", || {
        tokens(&md["bob"]).contains_key("m2")
    });
    wait_until(20, "relay queue drained", || queue_list(&relay).is_empty());

    // 4. Move cat from store2 to store1 (no restart anywhere).
    let moved_at = Instant::now();
    admin(&relay, &["cluster", "move", "cat@example.com", "store1"]);
    // New logins: probe through the proxy until the relay routes cat to store1.
    let store1_imap = format!("mailstore=[{}]", SocketAddr::from((STORE1, imap_port)));
    let mut logins = 0;
    wait_until(30, "cat's logins routed to store1", || {
        logins += 1;
        python(LOGIN, &[proxy.clone(), "cat@example.com".into(), PW.into()]);
        r.log()
            .lines()
            .rfind(|l| l.contains("LOGIN user=cat@example.com"))
            .is_some_and(|l| l.contains(&store1_imap))
    });
    let login_lag = moved_at.elapsed();
    assert!(
        d1.log().contains("user=<cat@example.com>"),
        "d1: {}",
        d1.log()
    );
    // New mail: probes until one is delivered by store1 (a stale route on the relay would
    // reach store2, which forwards to store1 once it has seen the change; either way the
    // copy lands once).
    let before = local_deliveries(&s1, "cat@example.com");
    let mut n = 0;
    wait_until(30, "cat's mail delivered by store1", || {
        n += 1;
        let t = format!("move{n}");
        let (code, text) = send_message(
            r.smtp,
            "sender@example.org",
            &["cat@example.com"],
            &message(&t),
        );
        assert_eq!(code, 250, "{text}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !tokens(&md["cat"]).contains_key(&t) {
            assert!(Instant::now() < deadline, "{t} not delivered");
            std::thread::sleep(Duration::from_millis(50));
        }
        local_deliveries(&s1, "cat@example.com") > before
    });
    let mail_lag = moved_at.elapsed();
    expect
        .get_mut("cat")
        .unwrap()
        .extend((1..=n).map(|i| format!("move{i}")));
    wait_until(20, "relay queue drained", || queue_list(&relay).is_empty());
    read_all(&expect);

    // 5. Nothing lost, nothing duplicated.
    for u in ["ann", "dan", "bob", "cat"] {
        let got = tokens(&md[u]);
        let want: BTreeMap<String, usize> = expect[u].iter().map(|t| (t.clone(), 1)).collect();
        assert_eq!(got, want, "{u}");
    }
    assert_eq!(legacy.captured().len(), 1, "legacy got old's mail once");
    assert!(!r.log().contains("bounce msg"), "{}", r.log());
    eprintln!(
        "cluster: move seen by logins after {login_lag:?} ({logins} probes), by mail after \
         {mail_lag:?} ({n} probes); whole scenario {:?}",
        started.elapsed()
    );
    for s in [&mut r, &mut s1, &mut s2] {
        assert_eq!(s.stop(), Some(0), "{}", s.log());
    }
}
