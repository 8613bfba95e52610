//! Hostile SMTP clients (issue 20), end to end over real loopback sockets against
//! `indimail serve` on two shards: SMTP smuggling through BDAT, slow clients, postmaster,
//! NO_SMTP users, relay loops, TLS close_notify.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// A raw SMTP sink: a next hop that records every byte of every DATA body exactly as it
/// arrived on the wire (up to and including the `CRLF . CRLF` that ended it), so a test can
/// count what an outbound path really emitted. No extension is offered: no PIPELINING, no
/// STARTTLS, no CHUNKING.
struct RawSink {
    port: u16,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawSink {
    fn start() -> RawSink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let b = b.clone();
                std::thread::spawn(move || RawSink::session(s, b));
            }
        });
        RawSink { port, bodies }
    }

    fn session(s: TcpStream, bodies: Arc<Mutex<Vec<Vec<u8>>>>) {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"220 sink.test ESMTP\r\n");
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
            if cmd.starts_with("DATA") {
                let _ = w.write_all(b"354 go\r\n");
                let mut body = Vec::new();
                let mut byte = [0u8; 1];
                while !body.ends_with(b"\r\n.\r\n") && body != b".\r\n" {
                    if r.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    body.push(byte[0]);
                }
                bodies.lock().unwrap().push(body);
                let _ = w.write_all(b"250 2.0.0 sunk\r\n");
            } else if cmd.starts_with("QUIT") {
                let _ = w.write_all(b"221 bye\r\n");
                return;
            } else {
                let _ = w.write_all(b"250 ok\r\n");
            }
        }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Bare CRs (not followed by LF) and bare LFs (not preceded by CR) in `b`.
fn bare_cr_lf(b: &[u8]) -> usize {
    let mut n = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\r' && b.get(i + 1) != Some(&b'\n') {
            n += 1;
        }
        if c == b'\n' && (i == 0 || b[i - 1] != b'\r') {
            n += 1;
        }
    }
    n
}

fn routed_home(port: u16) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    route_domain(h.path(), "remote.test", port);
    h
}

/// One BDAT transaction over a raw socket; returns the final reply.
fn bdat(c: &mut Client, rcpt: &str, chunks: &[&[u8]]) -> (u16, String) {
    assert_eq!(c.cmd("MAIL FROM:<smuggler@example.org>").0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).0, 250);
    let mut last = (0, String::new());
    for (i, ch) in chunks.iter().enumerate() {
        let tail = if i + 1 == chunks.len() { " LAST" } else { "" };
        c.send(format!("BDAT {}{tail}\r\n", ch.len()).as_bytes());
        c.send(ch);
        last = c.reply();
        if last.0 != 250 {
            break;
        }
    }
    last
}

fn inject(home: &Path, message: &[u8], envelope: &[u8]) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(envelope).unwrap();
    drop(writer);
    let mut child = Command::new(bin())
        .args(["queue", "inject", "--home"])
        .arg(home)
        .env_remove("QUEUEDIR")
        .stdin(Stdio::piped())
        .stdout(reader)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 1: SMTP smuggling through BDAT. A client's BDAT chunks carrying `\r.\r`, `\n.\n` or
/// `\r.\r\n` are refused (550 5.6.11) like the same bytes after DATA, and nothing of them
/// leaves; a clean BDAT message and a locally injected message with bare CRs are relayed to a
/// raw capture next hop, and the bytes that leave the server hold no bare CR or LF at all.
#[test]
fn bdat_smuggling_never_reaches_the_next_hop() {
    let sink = RawSink::start();
    let h = routed_home(sink.port);
    let s = Server::start_delivering(h.path(), "uring");
    let mut c = Client::connect(s.smtp);
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.cmd("EHLO smuggler.example");
    assert_eq!(code, 250);
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    for body in [
        &b"Subject: a\r\n\r\nhi\r.\rMAIL FROM:<x@y>\r\n"[..],
        b"Subject: b\r\n\r\nhi\n.\nRCPT TO:<x@y>\r\n",
        b"Subject: c\r\n\r\nhi\r.\r\nDATA\r\n",
    ] {
        let (code, text) = bdat(&mut c, "victim@remote.test", &[body]);
        assert_eq!(code, 550, "{body:?}: {text}");
        assert!(text.contains("5.6.11"), "{text}");
    }
    // The same split across chunks: a CR ending one chunk and a dot starting the next.
    let (code, text) = bdat(
        &mut c,
        "victim@remote.test",
        &[b"Subject: d\r\n\r\nhi\r", b".\r", b"\nend\r\n"],
    );
    assert_eq!(code, 550, "{text}");
    // A clean message by BDAT, with a CR completed by the next chunk's LF.
    let (code, text) = bdat(
        &mut c,
        "ok@remote.test",
        &[b"Subject: clean\r\n\r\n.leading dot\r", b"\nend\r\n"],
    );
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    // A local sender's message with bare CRs around a dot (the queue keeps it as given).
    inject(
        h.path(),
        b"Subject: local\n\nhi\r.\r\nafter\r.\rend\n",
        b"Flocal@example.org\0Tlocal@remote.test\0\0",
    );
    wait_until(60, "two messages at the sink", || sink.bodies().len() == 2);
    let bodies = sink.bodies();
    for b in &bodies {
        assert_eq!(bare_cr_lf(b), 0, "{:?}", String::from_utf8_lossy(b));
        // Exactly one end of data, at the very end.
        assert_eq!(
            b.windows(5).filter(|w| w == b"\r\n.\r\n").count(),
            1,
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    let all: Vec<String> = bodies
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        all.iter()
            .any(|b| b.contains("\r\n..leading dot\r\nend\r\n")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|b| b.contains("hi\r\n..\r\nafter\r\n..\r\nend\r\n")),
        "{all:?}"
    );
    assert!(
        !all.iter()
            .any(|b| b.contains("x@y") || b.contains("victim")),
        "{all:?}"
    );
}

/// A home whose control files are `files` (name, content).
fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    let control = h.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    for (name, content) in files {
        std::fs::write(control.join(name), content).unwrap();
    }
    h
}

/// Item 2: slowloris at 500 connections from 25 addresses, each sending one byte of a never
/// finished command line per second. The server (2 shards, maxdaemons 150 for the whole server) refuses
/// what is over its limit at once, shrinks its timeout under stress (`timeoutstress` 2 s)
/// and cuts every trickling connection, though each keeps reading well within
/// `timeoutsmtpd`; a legitimate client then gets its message in.
#[test]
fn slowloris_at_500_connections_is_cut_and_leaves_room() {
    let h = home_with(&[("maxdaemons", "150\n"), ("timeoutstress", "2\n")]);
    let s = Server::start(h.path(), "uring");
    let script = format!(
        r#"
import socket, smtplib, time, sys
port = {port}
socks = []
for i in range(500):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (2 + i % 25), 0))
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    socks.append(s)
start = time.time()
alive = set(range(500))
got = {{i: b"" for i in range(500)}}
legit = None
while time.time() - start < 120:
    for i in list(alive):
        try:
            d = socks[i].recv(4096)
            if d == b"":
                alive.discard(i)
                continue
            got[i] += d
        except BlockingIOError:
            pass
        except OSError:
            alive.discard(i)
            continue
        try:
            socks[i].send(b"E" if len(got[i]) > 0 else b"")
        except OSError:
            alive.discard(i)
    if legit is None and time.time() - start > 3:
        try:
            c = smtplib.SMTP("127.0.0.1", port, timeout=30)
            c.sendmail("legit@example.org", ["someone@remote.test"], "Subject: hi\r\n\r\nlegit\r\n")
            c.quit()
            legit = time.time() - start
        except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected, OSError) as e:
            print("legit attempt: %r" % (e,))
    if not alive and legit is not None:
        break
    time.sleep(1)
busy = sum(1 for i in range(500) if b"too many connections" in got[i])
timeouts = sum(1 for i in range(500) if b"4.4.2" in got[i])
print("open=%d busy=%d timeouts=%d legit=%s after %.1fs" % (len(alive), busy, timeouts, legit, time.time() - start))
assert not alive, "trickling connections still open: %d" % len(alive)
assert legit is not None, "the legitimate client never got its message in"
assert busy > 0 and timeouts > 0, (busy, timeouts)
assert busy + timeouts == 500, (busy, timeouts)
"#,
        port = s.smtp.port()
    );
    run_python(&script, &s.log());
    assert!(s.log().contains("smtp drop"), "{}", s.log());
}

/// Item 2 without stress: the deadline is per command line and per message transfer
/// (`mindatarate`), not per read: a command line or a DATA trickled a byte every half second
/// is cut after `timeoutsmtpd` (3 s here) with 421 4.4.2, while a client pausing a second
/// between whole commands is served; under TLS the server ends with close_notify (item 8),
/// after QUIT and after a timeout alike.
#[test]
fn deadlines_per_command_and_data_with_close_notify() {
    let h = home_with(&[("timeoutsmtpd", "3\n"), ("mindatarate", "500\n")]);
    let s = Server::start(h.path(), "uring");
    let script = format!(
        r#"
import socket, ssl, smtplib, time
port = {port}
def trickle(prefix):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    for line in prefix:
        s.sendall(line)
        while True:
            r = f.readline()
            if r[3:4] == b" ":
                break
    start = time.time()
    s.setblocking(False)
    out = b""
    while time.time() - start < 30:
        try:
            d = s.recv(4096)
            if d == b"":
                return out, time.time() - start
            out += d
        except BlockingIOError:
            pass
        try:
            s.send(b"x")
        except OSError:
            return out, time.time() - start
        time.sleep(0.5)
    raise SystemExit("still open after 30 s: %r" % out)
out, t = trickle([b"EHLO a\r\n"])
assert b"421 4.4.2" in out and 2 <= t < 15, (out, t)
out, t = trickle([b"EHLO a\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@remote.test>\r\n", b"DATA\r\n"])
assert b"421 4.4.2" in out and 2 <= t < 15, (out, t)
c = smtplib.SMTP("127.0.0.1", port, timeout=30)
for cmd in ["EHLO a", "NOOP", "NOOP", "NOOP", "NOOP"]:
    time.sleep(1)
    r = c.docmd(cmd)
    assert r[0] == 250, (cmd, r)
c.sendmail("a@example.org", ["b@remote.test"], "Subject: slow\r\n\r\nok\r\n")
c.quit()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def tls_session(quit):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO a\r\n")
    while f.readline()[3:4] != b" ":
        pass
    s.sendall(b"STARTTLS\r\n")
    assert f.readline().startswith(b"220")
    t = ctx.wrap_socket(s, suppress_ragged_eofs=False)
    if quit:
        t.sendall(b"QUIT\r\n")
    out = b""
    while True:
        d = t.recv(4096)   # SSLEOFError unless the server sent close_notify
        if d == b"":
            return out
        out += d
assert b"221" in tls_session(True)
assert b"421 4.4.2" in tls_session(False)
print("ok")
"#,
        port = s.smtp.port()
    );
    run_python(&script, &s.log());
}

/// Item 3: postmaster. A bare `RCPT TO:<postmaster>` is the host's postmaster
/// (`postmaster@me`), delivered here (to `alias/Maildir`), never queued as a remote
/// address or bounced; `domain add` creates postmaster@domain as vadddomain does, and
/// `postmaster@<virtual domain>` is accepted and delivered, to the host postmaster when that
/// mailbox was deleted, while other unknown users still get 550.
#[test]
fn postmaster_is_qualified_accepted_and_delivered() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let (c, out, e) = indimail(home, &["domain", "add", "example.com"]);
    assert_eq!(c, 0, "{e}");
    assert!(out.contains("postmaster@example.com password: "), "{out}");
    // A domain whose postmaster mailbox was deleted.
    assert_eq!(indimail(home, &["domain", "add", "example.net"]).0, 0);
    let (c, _, e) = indimail(home, &["user", "del", "postmaster@example.net"]);
    assert_eq!(c, 0, "{e}");
    std::fs::create_dir_all(home.join("tcp")).unwrap();
    std::fs::write(home.join("tcp/tcp.smtp"), ":allow\n").unwrap();
    let s = Server::start_delivering(home, "uring");
    let swaks = |to: &str| {
        Command::new("/usr/bin/swaks")
            .args([
                "--server",
                &s.smtp.to_string(),
                "--from",
                "someone@forged.test",
            ])
            .args(["--to", to, "--header", &format!("Subject: for {to}")])
            .output()
            .unwrap()
    };
    for to in ["postmaster", "PostMaster@example.com"] {
        let out = swaks(to);
        assert!(
            out.status.success(),
            "{to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = swaks("nobody@example.com");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("<** 550"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let pm = maildir_of(home, "postmaster@example.com");
    let host_pm = home.join("alias/Maildir");
    wait_until(30, "postmaster@example.com delivered", || {
        maildir_files(&pm).len() == 1
    });
    wait_until(30, "host postmaster delivered", || {
        maildir_files(&host_pm).len() == 1
    });
    let out = swaks("postmaster@example.net");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until(30, "host postmaster has both", || {
        maildir_files(&host_pm).len() == 2
    });
    let log = s.log();
    assert!(!log.contains("to remote postmaster"), "{log}");
    assert!(!log.contains("bounce"), "{log}");
    let first = std::fs::read_to_string(&maildir_files(&host_pm)[0]).unwrap();
    assert!(first.contains("Delivered-To: postmaster@"), "{first}");
}

/// Item 4: user flags at AUTH. A NO_SMTP user with the right password gets 535 and cannot
/// relay; an ordinary user of the same domain authenticates (over STARTTLS, swaks).
#[test]
fn no_smtp_user_cannot_authenticate_or_relay() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    setup_users(home, &["ok", "blocked"]);
    let (c, _, e) = indimail(
        home,
        &["user", "mod", "blocked@example.com", "--set", "no-smtp"],
    );
    assert_eq!(c, 0, "{e}");
    std::fs::create_dir_all(home.join("tcp")).unwrap();
    std::fs::write(home.join("tcp/tcp.smtp"), ":allow\n").unwrap();
    let s = Server::start(home, "uring");
    let swaks = |user: &str| {
        Command::new("/usr/bin/swaks")
            .args(["--server", &s.smtp.to_string(), "-tls"])
            .args(["--from", user, "--to", "far@remote.test"])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                user,
                "--auth-password",
                "pw12345",
            ])
            .output()
            .unwrap()
    };
    let out = swaks("ok@example.com");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("<~  235"), "{text}");
    let out = swaks("blocked@example.com");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("<~* 535"), "{text}");
    assert!(s.log().contains("reason=no-smtp"), "{}", s.log());
}

/// Item 8: hop count. A message already carrying 101 `Received:`/`Delivered-To:` fields is
/// refused at the end of DATA with 554 5.4.6 (qmail-smtpd's MAXHOPS 100) and nothing is
/// queued; one with 100 is accepted.
#[test]
fn relay_loop_is_stopped_by_hop_count() {
    let h = tempfile::tempdir().unwrap();
    let s = Server::start(h.path(), "uring");
    let message = |hops: usize| {
        let mut m = String::new();
        for i in 0..hops {
            if i % 2 == 0 {
                m.push_str(&format!("Received: from hop{i} by relay{i}\r\n"));
            } else {
                m.push_str("Delivered-To: loop@remote.test\r\n");
            }
        }
        m.push_str("Subject: loop\r\n\r\nround and round\r\n.\r\n");
        m
    };
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &["loop@remote.test"],
        message(101).as_bytes(),
    );
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.4.6"), "{text}");
    assert!(queue_list(h.path()).is_empty());
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &["loop@remote.test"],
        message(100).as_bytes(),
    );
    assert_eq!(code, 250, "{text}");
    assert!(s.log().contains("refused looping msg"), "{}", s.log());
}
