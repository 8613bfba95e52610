//! Hostile clients on the reading side (issue 20): clear-text passwords only after TLS
//! unless the client's network is in `PLAINTEXT_AUTH_NETS`, and an RFC 2971 `ID` of 30 KB
//! before login. Real `indimail serve` with two shards, driven by Python's imaplib and
//! poplib (STARTTLS / STLS with the server's demo certificate).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;

fn serve(home: &Path, driver: &str, env: &[(&str, &str)]) -> (Server, HashMap<String, SocketAddr>) {
    // Two shards: connections are spread over both by the kernel.
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/cpus"), "0-1\n").unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let listeners = [
        ("smtp", any),
        ("pop3", any),
        ("pop3-proxy", any),
        ("imap-proxy", any),
    ];
    Server::start_services(home, driver, &listeners, env)
}

fn python(script: &str, ports: &HashMap<String, SocketAddr>, server: &Server, what: &str) {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(ports["pop3"].port().to_string())
        .arg(ports["pop3-proxy"].port().to_string())
        .arg(ports["imap-proxy"].port().to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{what}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

const TLS_FIRST: &str = r#"
import imaplib, poplib, ssl, sys
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
pop3, pop3_proxy, imap = (int(a) for a in sys.argv[1:4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
USER, PW = "carol@example.com", "Read-Pass-1"

for port, local in ((pop3, True), (pop3_proxy, True)):
    # Several connections, so both shards answer.
    for _ in range(4):
        p = poplib.POP3("127.0.0.1", port, timeout=20)
        caps = p.capa()
        assert "USER" not in caps and "SASL" not in caps and "STLS" in caps, caps
        try:
            p.user(USER)
            raise SystemExit("USER accepted before STLS")
        except poplib.error_proto as e:
            assert str(e).startswith("b'-ERR [AUTH] Plaintext authentication disallowed"), e
        try:
            p._shortcmd("AUTH PLAIN AGNhcm9sQGV4YW1wbGUuY29tAFJlYWQtUGFzcy0x")
            raise SystemExit("AUTH PLAIN accepted before STLS")
        except poplib.error_proto as e:
            assert "[AUTH]" in str(e), e
        p.stls(ctx)
        caps = p.capa()
        assert "USER" in caps and "SASL" in caps and "STLS" not in caps, caps
        try:
            p.user(USER); p.pass_("wrong")
            raise SystemExit("bad password accepted")
        except poplib.error_proto as e:
            assert "[AUTH] Authentication failed" in str(e), e
        p.user(USER); p.pass_(PW)
        assert p.stat()[0] == 0
        p.quit()

for _ in range(4):
    m = imaplib.IMAP4("127.0.0.1", imap, timeout=20)
    caps = m.capabilities
    assert "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps and "STARTTLS" in caps, caps
    try:
        m.login(USER, PW)
        raise SystemExit("LOGIN accepted before STARTTLS")
    except imaplib.IMAP4.error as e:
        assert "[PRIVACYREQUIRED]" in str(e), e
    typ, dat = m._simple_command("AUTHENTICATE", "PLAIN", "AGNhcm9sQGV4YW1wbGUuY29tAFJlYWQtUGFzcy0x")
    assert typ == "NO" and b"[PRIVACYREQUIRED]" in dat[0], (typ, dat)
    m.starttls(ctx)
    caps = m.capabilities
    assert "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps, caps
    try:
        m.login(USER, "wrong")
        raise SystemExit("bad password accepted")
    except imaplib.IMAP4.error as e:
        assert "[AUTHENTICATIONFAILED]" in str(e), e
    # The right password passes the proxy's check; there is no mailstore behind it.
    try:
        m.login(USER, PW)
        raise SystemExit("login without a mailstore succeeded")
    except imaplib.IMAP4.error as e:
        assert "[UNAVAILABLE]" in str(e), e
    m.logout()

# An RFC 2971 ID of 30 fields of 1000 octets (about 30 KB; imaptest's id test).
m = imaplib.IMAP4("127.0.0.1", imap, timeout=20)
fields = " ".join('"field%d" "%s"' % (i, "v" * 1000) for i in range(30))
typ, dat = m._simple_command("ID", "(%s)" % fields)
assert typ == "OK", (typ, dat)
assert m.untagged_responses.get("ID") == [b"NIL"], m.untagged_responses
typ, dat = m.noop()
assert typ == "OK"
m.logout()
print("ok")
"#;

const TRUSTED: &str = r#"
import imaplib, poplib, sys
pop3, pop3_proxy, imap = (int(a) for a in sys.argv[1:4])
for port in (pop3, pop3_proxy):
    p = poplib.POP3("127.0.0.1", port, timeout=20)
    caps = p.capa()
    assert "USER" in caps and "SASL" in caps, caps
    p.user("carol@example.com"); p.pass_("Read-Pass-1")
    p.quit()
m = imaplib.IMAP4("127.0.0.1", imap, timeout=20)
assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
try:
    m.login("carol@example.com", "Read-Pass-1")
except imaplib.IMAP4.error as e:
    assert "[UNAVAILABLE]" in str(e), e
print("ok")
"#;

/// Without `PLAINTEXT_AUTH_NETS`, a loopback client must start TLS before any password;
/// a 30 KB `ID` is answered.
#[test]
fn clear_text_logins_need_tls_and_long_id_is_answered() {
    for d in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        assert_eq!(indimail(home, &["domain", "add", "example.com"]).0, 0);
        let (c, _, e) = indimail(
            home,
            &[
                "user",
                "add",
                "carol@example.com",
                "--password",
                "Read-Pass-1",
            ],
        );
        assert_eq!(c, 0, "{e}");
        let (mut server, ports) = serve(home, d, &[]);
        python(TLS_FIRST, &ports, &server, d);
        server.stop();

        // Another network is trusted: loopback still needs TLS.
        let (mut server, ports) = serve(home, d, &[("PLAINTEXT_AUTH_NETS", "10.0.0.0/8")]);
        python(
            &TLS_FIRST.replace("for _ in range(4)", "for _ in range(1)"),
            &ports,
            &server,
            d,
        );
        server.stop();

        // Loopback is trusted: clear-text logins work without TLS.
        let (mut server, ports) = serve(home, d, &[("PLAINTEXT_AUTH_NETS", "127.0.0.1,::1")]);
        python(TRUSTED, &ports, &server, d);
        server.stop();
    }
}
