//! POP3: the proxy against a real Dovecot, and the Maildir server (raw sessions and
//! Python's poplib), on both drivers.

mod support;

use std::process::Command;

use support::dovecot::Dovecot;
use support::{
    config, dead_port, deliver, self_signed, Client, Home, Kind, Sentinel, Server, DRIVERS,
};

const MSG1: &str =
    "From: a@example.org\nSubject: one\n\nfirst body\n.starts with dot\n..two dots\nlast line\n";
const MSG2: &str = "From: b@example.org\nSubject: two\n\nl1\nl2\nl3\n";

#[test]
fn proxy_through_dovecot() {
    let dc = Dovecot::start();
    dc.deliver("amy", "1700000000.M1P1.test", MSG1);
    let home = Home::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_pop3_backend = Some(dc.pop3);
        let srv = Server::start(Kind::Pop3Proxy, d, &home, cfg);
        let mut c = Client::connect(srv.addr);
        assert!(c.line().starts_with("+OK"));
        assert!(c.pop("CAPA").starts_with("+OK"));
        let capa = c.multiline();
        assert!(capa.contains("SASL PLAIN"), "{capa}");
        assert_eq!(c.pop("USER amy@example.com"), "+OK Password required.\r\n");
        // STAT pipelined after PASS goes to Dovecot.
        c.send("PASS secret\r\nSTAT\r\n");
        assert_eq!(c.line(), "+OK Logged in.\r\n");
        let stat = c.line();
        assert!(stat.starts_with("+OK 1 "), "{d:?}: {stat}");
        assert!(c.pop("RETR 1").starts_with("+OK"));
        let body = c.multiline();
        assert!(body.contains("Subject: one\r\n"), "{body}");
        assert!(body.contains("\r\n..starts with dot\r\n"), "{body}");
        assert!(c.pop("QUIT").starts_with("+OK"));
        assert!(c.closed());

        // AUTH PLAIN with a continuation.
        let mut c = Client::connect(srv.addr);
        c.line();
        assert_eq!(c.pop("AUTH PLAIN"), "+ \r\n");
        assert_eq!(
            c.pop("AGFteUBleGFtcGxlLmNvbQBzZWNyZXQ="),
            "+OK Logged in.\r\n"
        );
        assert!(c.pop("UIDL").starts_with("+OK"));
        assert_eq!(c.multiline().lines().count(), 1);
        assert!(c.pop("QUIT").starts_with("+OK"));
    }
    assert!(
        dc.log().contains("amy@example.com:127.0.0.1"),
        "{}",
        dc.log()
    );
    assert!(home.relay_allowed());
    let rows = home.lastauth("amy@example.com", "pop3");
    assert!(
        rows.contains(&("pop3".into(), "127.0.0.1".into())),
        "lastauth row of the POP3 login: {rows:?}"
    );
}

/// Before login: a silent client is dropped after the command timeout and an endless line
/// is cut off. After login: a session idle for DATA_TIMEOUT is closed.
#[test]
fn proxy_timeouts_and_long_lines() {
    use std::io::Write;
    let dc = Dovecot::start();
    let home = Home::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_pop3_backend = Some(dc.pop3);
        cfg.command_timeout = std::time::Duration::from_secs(1);
        cfg.idle_timeout = std::time::Duration::from_secs(1);
        let srv = Server::start(Kind::Pop3Proxy, d, &home, cfg);
        let mut c = Client::connect(srv.addr);
        c.line();
        let t = std::time::Instant::now();
        assert!(c.closed(), "silent client kept");
        assert!(t.elapsed() < std::time::Duration::from_secs(15));

        let mut c = Client::connect(srv.addr);
        login(&mut c);
        let t = std::time::Instant::now();
        assert_eq!(c.rest(), "", "{d:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(15));

        // 10 MB without a line end.
        let s = std::net::TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..10 {
                w.write_all(&chunk)?;
            }
            Ok::<(), std::io::Error>(())
        });
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &s, &mut all);
        let all = String::from_utf8_lossy(&all);
        assert!(all.starts_with("+OK"), "{all}");
        assert!(
            all.ends_with("-ERR Line too long.\r\n") || all.lines().count() == 1,
            "{d:?}: {all}"
        );
        assert!(writer.join().unwrap().is_err(), "{d:?}: 10 MB line read");
    }
}

#[test]
fn proxy_refusals_and_mailstore_down() {
    let home = Home::new();
    let sentinel = Sentinel::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_pop3_backend = Some(sentinel.addr());
        let srv = Server::start(Kind::Pop3Proxy, d, &home, cfg.clone());
        let mut c = Client::connect(srv.addr);
        c.line();
        c.pop("USER amy@example.com");
        assert_eq!(c.pop("PASS nope"), "-ERR [AUTH] Authentication failed.\r\n");
        c.pop("USER ghost@example.com");
        assert_eq!(
            c.pop("PASS secret"),
            "-ERR [AUTH] Authentication failed.\r\n"
        );
        c.pop("USER bob@example.com");
        assert!(c
            .pop("PASS secret")
            .starts_with("-ERR [AUTH] POP3 access is disabled"));
        assert_eq!(
            c.pop("STAT"),
            "-ERR Unknown command or not allowed before login.\r\n"
        );
        assert_eq!(c.pop("QUIT"), "+OK Phir Khab Miloge.\r\n");
        drop(srv);

        cfg.default_pop3_backend = Some(dead_port());
        let srv = Server::start(Kind::Pop3Proxy, d, &home, cfg);
        let mut c = Client::connect(srv.addr);
        c.line();
        c.pop("USER amy@example.com");
        assert_eq!(
            c.pop("PASS secret"),
            "-ERR [SYS/TEMP] Backend unavailable\r\n"
        );
    }
    assert!(!sentinel.touched(), "the mailstore was contacted");
}

fn login(c: &mut Client) {
    assert!(c.line().starts_with("+OK"));
    assert_eq!(c.pop("USER amy@example.com"), "+OK Password required.\r\n");
    assert_eq!(c.pop("PASS secret"), "+OK Logged in.\r\n");
}

#[test]
fn maildir_server_full_session() {
    for d in DRIVERS {
        let home = Home::new();
        let md = home.maildir("amy@example.com");
        deliver(&md, "1700000001.M1P1.test", MSG1);
        deliver(&md, "1700000002.M1P1.test", MSG2);
        let srv = Server::start(Kind::Pop3, d, &home, config());

        let mut c = Client::connect(srv.addr);
        login(&mut c);
        // New mail moved to cur/ on login.
        assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(md.join("cur")).unwrap().count(), 2);
        let total = MSG1.len() + MSG2.len();
        assert_eq!(c.pop("STAT"), format!("+OK 2 {total}\r\n"));
        assert_eq!(c.pop("LIST"), "+OK\r\n");
        assert_eq!(
            c.multiline(),
            format!("1 {}\r\n2 {}\r\n", MSG1.len(), MSG2.len())
        );
        assert_eq!(c.pop("LIST 2"), format!("+OK 2 {}\r\n", MSG2.len()));
        assert_eq!(c.pop("LIST 3"), "-ERR No such message.\r\n");
        assert_eq!(c.pop("UIDL"), "+OK\r\n");
        assert_eq!(
            c.multiline(),
            "1 1700000001.M1P1.test,S=73\r\n2 1700000002.M1P1.test,S=44\r\n"
                .replace("S=73", &format!("S={}", MSG1.len()))
                .replace("S=44", &format!("S={}", MSG2.len()))
        );
        assert_eq!(c.pop("TOP 2 1"), "+OK\r\n");
        assert_eq!(
            c.multiline(),
            "From: b@example.org\r\nSubject: two\r\n\r\nl1\r\n"
        );
        assert_eq!(c.pop("RETR 1"), format!("+OK {} octets\r\n", MSG1.len()));
        assert_eq!(
            c.multiline(),
            "From: a@example.org\r\nSubject: one\r\n\r\nfirst body\r\n..starts with dot\r\n\
             ...two dots\r\nlast line\r\n"
        );
        assert_eq!(c.pop("DELE 1"), "+OK Message 1 deleted.\r\n");
        assert_eq!(c.pop("RETR 1"), "-ERR Message already deleted.\r\n");
        assert_eq!(c.pop("STAT"), format!("+OK 1 {}\r\n", MSG2.len()));

        // A second session while this one holds the mailbox.
        let mut other = Client::connect(srv.addr);
        other.line();
        other.pop("USER amy@example.com");
        assert_eq!(
            other.pop("PASS secret"),
            "-ERR [IN-USE] Mailbox is locked by another session.\r\n"
        );

        // Disconnect without QUIT: nothing is deleted.
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut c = Client::connect(srv.addr);
        login(&mut c);
        assert_eq!(c.pop("STAT"), format!("+OK 2 {total}\r\n"));
        assert_eq!(c.pop("DELE 1"), "+OK Message 1 deleted.\r\n");
        assert_eq!(c.pop("RSET"), "+OK Maildrop has 2 messages.\r\n");
        assert_eq!(c.pop("DELE 2"), "+OK Message 2 deleted.\r\n");
        assert_eq!(c.pop("NOOP"), "+OK\r\n");
        assert_eq!(c.pop("QUIT"), "+OK Bye.\r\n");
        assert!(c.closed());
        let left: Vec<_> = std::fs::read_dir(md.join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with("1700000001."), "{left:?}");
        // The lock was released.
        let mut c = Client::connect(srv.addr);
        login(&mut c);
        assert_eq!(c.pop("STAT"), format!("+OK 1 {}\r\n", MSG1.len()));
    }
}

#[test]
fn pop3_proxy_serves_locally_without_a_mailstore() {
    let home = Home::new();
    let md = home.maildir("amy@example.com");
    deliver(&md, "1700000003.M1P1.test", MSG2);
    for d in DRIVERS {
        let srv = Server::start(Kind::Pop3Proxy, d, &home, config());
        let mut c = Client::connect(srv.addr);
        login(&mut c);
        assert_eq!(c.pop("STAT"), format!("+OK 1 {}\r\n", MSG2.len()));
        assert_eq!(c.pop("QUIT"), "+OK Bye.\r\n");
    }
}

const POPLIB: &str = r#"
import poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=20)
p.user("amy@example.com")
p.pass_("secret")
n, size = p.stat()
assert n == 2, (n, size)
resp, lines, octets = p.retr(1)
assert resp.startswith(b"+OK"), resp
assert b".starts with dot" in lines, lines
assert b"..two dots" in lines, lines
resp, lines, octets = p.top(2, 1)
assert lines[-1] == b"l1", lines
uids = p.uidl()[1]
assert len(uids) == 2, uids
p.dele(2)
p.quit()
print("ok")
"#;

#[test]
fn python_poplib_against_maildir_server() {
    assert!(
        std::path::Path::new("/usr/bin/python3").exists(),
        "/usr/bin/python3 is missing (Debian package python3)"
    );
    for d in DRIVERS {
        let home = Home::new();
        let md = home.maildir("amy@example.com");
        deliver(&md, "1700000001.M1P1.test", MSG1);
        deliver(&md, "1700000002.M1P1.test", MSG2);
        let srv = Server::start(Kind::Pop3, d, &home, config());
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(POPLIB)
            .arg(srv.addr.ip().to_string())
            .arg(srv.addr.port().to_string())
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{d:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_dir(md.join("cur")).unwrap().count(), 1);
    }
}

const POPLIB_TLS: &str = r#"
import poplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "implicit":
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=20)
else:
    p = poplib.POP3(host, port, timeout=20)
    assert "STLS" in p.capa(), p.capa()
    p.stls(context=ctx)
    assert "STLS" not in p.capa(), p.capa()
p.user("amy@example.com")
p.pass_("secret")
n, size = p.stat()
assert n == 1, (n, size)
resp, lines, octets = p.retr(1)
assert b"l3" in lines, lines
p.quit()
print("ok")
"#;

#[test]
fn maildir_server_stls_and_implicit_tls() {
    let certs = self_signed();
    for d in DRIVERS {
        let home = Home::new();
        let md = home.maildir("amy@example.com");
        deliver(&md, "1700000001.M1P1.test", MSG2);
        for (kind, mode) in [(Kind::Pop3, "stls"), (Kind::Pop3s, "implicit")] {
            let srv = Server::start_tls(kind, d, &home, config(), Some(certs.path().to_path_buf()));
            let out = Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(POPLIB_TLS)
                .arg(srv.addr.ip().to_string())
                .arg(srv.addr.port().to_string())
                .arg(mode)
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "{d:?} {mode}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Plaintext pipelined after STLS is dropped, never executed.
        let mut cfg = config();
        cfg.command_timeout = std::time::Duration::from_secs(2);
        let srv = Server::start_tls(Kind::Pop3, d, &home, cfg, Some(certs.path().to_path_buf()));
        let mut c = Client::connect(srv.addr);
        c.line();
        c.send("STLS\r\nUSER amy@example.com\r\n");
        assert_eq!(c.line(), "+OK Begin TLS negotiation now.\r\n");
        // The pipelined USER line was not answered: the server took it for the start of the
        // handshake, which then timed out and the connection was closed.
        let rest = c.rest();
        assert!(!rest.contains("+OK"), "{rest}");
    }
}

#[test]
fn proxy_stls_and_implicit_tls_through_dovecot() {
    let dc = Dovecot::start();
    dc.deliver("amy", "1700000000.M1P1.test", MSG2);
    let home = Home::new();
    let certs = self_signed();
    for d in DRIVERS {
        for (kind, mode) in [(Kind::Pop3Proxy, "stls"), (Kind::Pop3sProxy, "implicit")] {
            let mut cfg = config();
            cfg.default_pop3_backend = Some(dc.pop3);
            let srv = Server::start_tls(kind, d, &home, cfg, Some(certs.path().to_path_buf()));
            let out = Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(POPLIB_TLS)
                .arg(srv.addr.ip().to_string())
                .arg(srv.addr.port().to_string())
                .arg(mode)
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "{d:?} {mode}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
