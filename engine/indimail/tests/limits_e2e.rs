//! Connection and rate limits over real sockets: MAXPERIP, recipient and
//! message rates per client and per authenticated user, changed while the
//! server runs.

mod common;

use common::*;

fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::create_dir_all(h.path().join("tcp")).unwrap();
    std::fs::write(h.path().join("tcp/tcp.smtp"), ":allow\n").unwrap();
    std::fs::write(h.path().join("control/rcpthosts"), "example.com\n").unwrap();
    for (name, text) in files {
        std::fs::write(h.path().join("control").join(name), text).unwrap();
    }
    h
}

#[test]
fn thirty_connections_from_one_ip_with_maxperip_25() {
    let h = home_with(&[("maxperip", "25\n")]);
    let s = Server::start(h.path(), "uring");
    let mut clients: Vec<Client> = (0..30).map(|_| Client::connect(s.smtp)).collect();
    let codes: Vec<u16> = clients.iter_mut().map(|c| c.reply().0).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 220).count(), 25, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 421).count(), 5, "{codes:?}");
    // The refused ones are closed; the 25 still work.
    for (c, code) in clients.iter_mut().zip(&codes) {
        if *code == 421 {
            assert!(c.is_closed());
        } else {
            assert_eq!(c.cmd("NOOP").0, 250);
        }
    }
    assert!(s.log().contains("per-ip limit ip=127.0.0.1"), "{}", s.log());
    // Closing one frees a slot.
    let i = codes.iter().position(|&c| c == 220).unwrap();
    clients[i].cmd("QUIT");
    drop(clients.remove(i));
    wait_until(20, "a slot freed", || {
        Client::connect(s.smtp).reply().0 == 220
    });
}

#[test]
fn recipient_and_message_rates_per_client() {
    let h = home_with(&[("rcptrate", "3\n"), ("msgrate", "2\n")]);
    let s = Server::start(h.path(), "epoll");
    let mut c = Client::connect(s.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.example.org").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<u{i}@example.com>")).0, 250);
    }
    let (code, text) = c.cmd("RCPT TO:<u9@example.com>");
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("451 4.7.0 rate limit exceeded"), "{text}");
    assert_eq!(c.cmd("RSET").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RSET").0, 250);
    let (code, text) = c.cmd("MAIL FROM:<a@example.org>");
    assert_eq!((code, &text[..10]), (451, "451 4.7.0 "), "{text}");
    // The session is still usable.
    assert_eq!(c.cmd("NOOP").0, 250);
    assert!(s.log().contains("rate limited ip=127.0.0.1"), "{}", s.log());
}

#[test]
fn rate_limit_changed_while_running_keeps_sessions() {
    let h = home_with(&[]);
    let s = Server::start(h.path(), "uring");
    let mut held = Client::connect(s.smtp);
    assert_eq!(held.reply().0, 220);
    assert_eq!(held.cmd("EHLO client.example.org").0, 250);
    // Unlimited at first.
    assert_eq!(held.cmd("MAIL FROM:<a@example.org>").0, 250);
    for i in 0..10 {
        assert_eq!(held.cmd(&format!("RCPT TO:<u{i}@example.com>")).0, 250);
    }
    assert_eq!(held.cmd("RSET").0, 250);
    std::fs::write(h.path().join("control/msgrate"), "1\n").unwrap();
    wait_until(20, "new message rate applied", || {
        let mut c = Client::connect(s.smtp);
        c.reply();
        c.cmd("EHLO x.example.org");
        let a = c.cmd("MAIL FROM:<b@example.org>").0;
        c.cmd("RSET");
        let b = c.cmd("MAIL FROM:<b@example.org>").0;
        a == 451 || b == 451
    });
    // The session opened before the change was not dropped.
    assert_eq!(held.cmd("NOOP").0, 250);
}

/// greetdelay -2: a client that talks before the greeting gets 554 and is
/// closed; a patient one is greeted after the delay.
#[test]
fn greetdelay_drops_early_talkers() {
    let h = home_with(&[("greetdelay", "-2\n")]);
    let s = Server::start(h.path(), "uring");
    let mut eager = Client::connect(s.smtp);
    eager.send(b"EHLO spammer.example\r\n");
    let start = std::time::Instant::now();
    let mut patient = Client::connect(s.smtp);
    let (code, text) = eager.reply();
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("talked before the greeting"), "{text}");
    assert!(eager.is_closed());
    assert_eq!(patient.reply().0, 220);
    assert!(start.elapsed() >= std::time::Duration::from_millis(1500));
    assert_eq!(patient.cmd("EHLO client.example.org").0, 250);
    assert!(s.log().contains("rule=GREETDELAY"), "{}", s.log());
}

/// Tarpitting (TARPITCOUNT 2, TARPITDELAY 1, from tcp.smtp): the second and
/// later recipients are answered a second late; MAX_RCPT_ERRCOUNT 3: the
/// third refused recipient ends the connection with 421.
#[test]
fn tarpit_and_too_many_invalid_recipients() {
    let h = home_with(&[]);
    std::fs::write(
        h.path().join("tcp/tcp.smtp"),
        ":allow,TARPITCOUNT=\"2\",TARPITDELAY=\"1\",MAX_RCPT_ERRCOUNT=\"3\"\n",
    )
    .unwrap();
    let s = Server::start(h.path(), "epoll");
    let mut c = Client::connect(s.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.example.org").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    let start = std::time::Instant::now();
    assert_eq!(c.cmd("RCPT TO:<u1@example.com>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<u2@example.com>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<u3@example.com>").0, 250);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(1900),
        "two tarpitted recipients"
    );
    for i in 0..2 {
        let (code, text) = c.cmd(&format!("RCPT TO:<x{i}@elsewhere.example>"));
        assert_eq!(code, 553, "{text}");
    }
    let (code, _) = c.cmd("RCPT TO:<x2@elsewhere.example>");
    assert_eq!(code, 553);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("too many invalid addresses"), "{text}");
    assert!(c.is_closed());
}
