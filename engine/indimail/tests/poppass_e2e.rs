//! Users changing their own password over poppassd (`--poppass`, `--poppasss`; IndiMail's
//! `qmail-poppass.106`, issue 21), end to end: a Python client speaks the protocol to the
//! real listeners, then proves the change with real POP3 logins (poplib, over STLS unless
//! the client's network may send passwords in the clear).

mod common;

use common::*;

/// Python helpers of the scripts: a poppassd session, reply checks, POP3 logins.
const PRELUDE: &str = r#"
import poplib, socket, ssl, time
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE

def session(port, tls):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    if tls:
        s = ctx.wrap_socket(s)
    f = s.makefile("rb")
    def line():
        return f.readline().decode().rstrip("\r\n")
    def cmd(c):
        s.sendall((c + "\r\n").encode())
        return line()
    return line(), cmd

def expect(got, want):
    assert got.startswith(want), (got, want)

def pop_login(port, user, pw, tls=True):
    p = poplib.POP3("127.0.0.1", port, timeout=20)
    if tls:
        p.stls(ctx)
    try:
        p.user(user); p.pass_(pw)
    except poplib.error_proto:
        return False
    p.quit()
    return True

def smtp_login(port, user, pw):
    import smtplib
    c = smtplib.SMTP("127.0.0.1", port, timeout=20)
    c.starttls(context=ctx)
    try:
        c.login(user, pw)
        ok = True
    except smtplib.SMTPAuthenticationError:
        ok = False
    c.quit()
    return ok

# Every shard sees a change within the directory's change poll (1 s).
def wait_login(port, user, pw, tls=True):
    deadline = time.time() + 15
    while not pop_login(port, user, pw, tls):
        assert time.time() < deadline, "new password never worked"
        time.sleep(0.3)
"#;

/// Runs `PRELUDE` + `body` against `s`, then checks the log has each of `lines`.
fn run_script(s: &Server, body: &str, lines: &[&str]) {
    run_python(&format!("{PRELUDE}{body}"), &s.log());
    let log = s.log();
    for l in lines {
        assert!(log.contains(l), "{l}\n{log}");
    }
}

#[test]
fn users_change_their_password_over_poppassd() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    setup_users(home, &["ann", "nochg"]);
    let (c, _, e) = indimail(
        home,
        &[
            "user",
            "mod",
            "nochg@example.com",
            "--set",
            "no-passwd-change",
        ],
    );
    assert_eq!(c, 0, "{e}");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (s, ports) = Server::start_services(
        home,
        "uring",
        &[
            ("poppass", any),
            ("poppasss", any),
            ("pop3", any),
            ("smtp", any),
        ],
        &[],
    );
    let body = format!(
        r#"
# Plain port, client not in PLAINTEXT_AUTH_NETS: no password in the clear.
hello, cmd = session({plain}, False)
assert hello.startswith("200 ") and hello.endswith("poppassd hello, who are you?"), hello
expect(cmd("USER ann@example.com"), "500 password changes need TLS (use the poppasss port)")
expect(cmd("PASS pw12345"), "500 password changes need TLS")
expect(cmd("QUIT"), "200 Bye.")

# Wrong old password.
hello, cmd = session({tls}, True)
expect(hello, "200 ")
expect(cmd("NEWPASS x"), "500 ")
expect(cmd("USER ann@example.com"), "200 your password please.")
expect(cmd("PASS wrong one"), "500 Old password is incorrect.")
# Unknown user: the same answer.
expect(cmd("USER ghost@example.com"), "200 your password please.")
expect(cmd("PASS pw12345"), "500 Old password is incorrect.")
expect(cmd("QUIT"), "200 Bye.")

# NO_PASSWD_CHNG.
hello, cmd = session({tls}, True)
expect(cmd("USER nochg@example.com"), "200 your password please.")
expect(cmd("PASS pw12345"), "500 ")
expect(cmd("QUIT"), "200 Bye.")

# The change.
hello, cmd = session({tls}, True)
expect(cmd("USER ann@example.com"), "200 your password please.")
expect(cmd("PASS pw12345"), "200 your new password please.")
expect(cmd("NEWPASS"), "500 ")
expect(cmd("NEWPASS New Pass-7"), "200 Password changed, thank-you.")
expect(cmd("QUIT"), "200 Bye.")

wait_login({pop3}, "ann@example.com", "New Pass-7")
time.sleep(2.5)
for _ in range(4):
    assert pop_login({pop3}, "ann@example.com", "New Pass-7")
    assert not pop_login({pop3}, "ann@example.com", "pw12345"), "old password still works"
    # SMTP AUTH answers from the same directory, on every shard.
    assert smtp_login({smtp}, "ann@example.com", "New Pass-7"), "new password refused by SMTP AUTH"
    assert not smtp_login({smtp}, "ann@example.com", "pw12345"), "old password still works for SMTP"
assert pop_login({pop3}, "nochg@example.com", "pw12345")
"#,
        plain = ports["poppass"].port(),
        tls = ports["poppasss"].port(),
        pop3 = ports["pop3"].port(),
        smtp = ports["smtp"].port(),
    );
    run_script(
        &s,
        &body,
        &[
            "poppassd: INFO: password changed user=ann@example.com, ip=[127.0.0.1]",
            "user=nochg@example.com, ip=[127.0.0.1], reason=password change not allowed",
            "reason=bad old password",
        ],
    );
    let log = s.log();
    assert!(
        !log.contains("New Pass-7") && !log.contains("pw12345"),
        "{log}"
    );
    let (_, out, _) = indimail(home, &["user", "info", "ann@example.com"]);
    assert!(out.contains("passwd: $"), "{out}");
}

/// On the plain port a client in `PLAINTEXT_AUTH_NETS` may change its password; an inactive
/// account may not (its old password does not log in either).
#[test]
fn plaintext_from_trusted_networks_and_inactive_accounts() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    setup_users(home, &["bea", "idle"]);
    let (c, _, e) = indimail(
        home,
        &["user", "mod", "idle@example.com", "--toggle-active"],
    );
    assert_eq!(c, 0, "{e}");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (s, ports) = Server::start_services(
        home,
        "epoll",
        &[("poppass", any), ("pop3", any)],
        &[("PLAINTEXT_AUTH_NETS", "127.0.0.0/8")],
    );
    let body = format!(
        r#"
hello, cmd = session({plain}, False)
expect(cmd("USER idle@example.com"), "200 your password please.")
expect(cmd("PASS pw12345"), "500 ")
expect(cmd("USER bea@example.com"), "200 your password please.")
expect(cmd("PASS pw12345"), "200 your new password please.")
expect(cmd("NEWPASS bea-2"), "200 Password changed, thank-you.")
expect(cmd("QUIT"), "200 Bye.")
wait_login({pop3}, "bea@example.com", "bea-2", tls=False)
"#,
        plain = ports["poppass"].port(),
        pop3 = ports["pop3"].port(),
    );
    run_script(
        &s,
        &body,
        &[
            "poppassd: INFO: password changed user=bea@example.com",
            "user=idle@example.com, ip=[127.0.0.1], reason=bad old password",
        ],
    );
}
