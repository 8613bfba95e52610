//! A private DNS server for tests: Debian's `dnsmasq` (package
//! dnsmasq-base) on an ephemeral loopback port, authoritative for `.test`
//! and for reverse names (anything not configured there is NXDOMAIN), with
//! the A (and their PTR) and TXT records a test gives. `indimail serve` is
//! pointed at it with `INDIMAIL_DNS`.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// `a`: (name, IPv4) pairs; `txt`: (name, text) pairs. Names under `.test`.
    pub fn start(a: &[(&str, &str)], txt: &[(&str, &str)]) -> Dnsmasq {
        for _ in 0..20 {
            // A free port: bind, note, release (retried if taken meanwhile).
            let port = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = Command::new("/usr/sbin/dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--user=root",
                "--local=/test/",
                // Reverse names too: a PTR the test did not give is NXDOMAIN.
                "--local=/in-addr.arpa/",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"));
            for (name, ip) in a {
                cmd.arg(format!("--host-record={name},{ip}"));
            }
            for (name, text) in txt {
                cmd.arg(format!("--txt-record={name},{text}"));
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start /usr/sbin/dnsmasq (Debian package dnsmasq-base)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if answers(addr) {
                    return Dnsmasq { child, addr };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start");
    }
}

/// Whether a DNS server answers a query (for `probe.test`, any answer).
fn answers(addr: SocketAddr) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Header: id 0x1234, RD, one question; QNAME probe.test, A, IN.
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv(&mut buf), Ok(n) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
