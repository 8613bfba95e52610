//! Reading mail from the default installation: SMTP in, local delivery,
//! then the POP3 server of `indimail serve`, driven by Python's poplib.

mod common;

use common::*;
use std::io::BufRead;
use std::process::{Command, Stdio};

#[test]
fn smtp_in_pop3_out() {
    for d in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        assert_eq!(indimail(home, &["domain", "add", "example.com"]).0, 0);
        assert_eq!(
            indimail(
                home,
                &[
                    "user",
                    "add",
                    "carol@example.com",
                    "--password",
                    "Pop-Pass-1"
                ]
            )
            .0,
            0
        );
        let log = std::fs::File::create(home.join("serve.log")).unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--home"])
            .arg(home)
            .env("INDIMAIL_ALLOW_ROOT", "1")
            .args(["--smtp", "127.0.0.1:0", "--pop3", "127.0.0.1:0"])
            .env("INDIMAIL_DRIVER", d)
            .env("PLAINTEXT_AUTH_NETS", "127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut ports = std::collections::HashMap::new();
        for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some((svc, addr)) = line.split_once(" listening on ") {
                ports.insert(
                    svc.to_string(),
                    addr.parse::<std::net::SocketAddr>().unwrap(),
                );
            }
            if ports.len() == 2 {
                break;
            }
        }
        let mut server = Server {
            child: Some(child),
            home: home.to_path_buf(),
            smtp: ports["smtp"],
            driver: d.into(),
        };
        let (code, text) = send_message(
            server.smtp,
            "dave@example.org",
            &["carol@example.com"],
            b"Subject: pop me\r\n\r\nfirst line\r\n..dotted\r\n.\r\n",
        );
        assert_eq!(code, 250, "{text}");
        wait_until(20, "queue drained", || queue_list(home).is_empty());
        let script = format!(
            r#"
import poplib
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
p.user("carol@example.com"); p.pass_("Pop-Pass-1")
count, size = p.stat()
assert count == 1, (count, size)
resp, lines, octets = p.retr(1)
text = b"\n".join(lines)
assert b"Subject: pop me" in text, text
assert b"\n.dotted" in text, text
assert b"Delivered-To: carol@example.com" in text, text
p.dele(1)
p.quit()
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
try:
    p.user("carol@example.com"); p.pass_("wrong")
    raise SystemExit("bad password accepted")
except poplib.error_proto:
    pass
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
p.user("carol@example.com"); p.pass_("Pop-Pass-1")
assert p.stat()[0] == 0
p.quit()
print("ok")
"#,
            port = ports["pop3"].port()
        );
        run_python(&script, &format!("driver {d}\n{}", server.log()));
        server.stop();
    }
}

/// Without TLS a password is never taken in clear text (unless the client
/// is in PLAINTEXT_AUTH_NETS): CAPA offers STLS but not USER, USER is
/// answered `-ERR [AUTH]`; after STLS the same login works.
#[test]
fn clear_text_login_only_after_stls() {
    for d in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        assert_eq!(indimail(home, &["domain", "add", "example.com"]).0, 0);
        let add = [
            "user",
            "add",
            "erin@example.com",
            "--password",
            "Pop-Pass-2",
        ];
        assert_eq!(indimail(home, &add).0, 0);
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (mut server, ports) =
            Server::start_services(home, d, &[("smtp", any), ("pop3", any)], &[]);
        let script = format!(
            r#"
import poplib, ssl
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
capa = p.capa()
assert "STLS" in capa and "USER" not in capa and "SASL" not in capa, capa
try:
    p.user("erin@example.com")
    raise SystemExit("USER accepted before TLS")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p.stls(ctx)
assert "USER" in p.capa()
p.user("erin@example.com"); p.pass_("Pop-Pass-2")
assert p.stat()[0] == 0
p.quit()
print("ok")
"#,
            port = ports["pop3"].port()
        );
        run_python(&script, &format!("driver {d}\n{}", server.log()));
        server.stop();
    }
}
