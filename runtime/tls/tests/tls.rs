//! TLS over real loopback sockets, on both shard drivers: handshakes, echo, large transfers,
//! forced versions, certificate reload, garbage and truncated handshakes, STARTTLS upgrade.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shard::io::{bind_reuseport, Driver, TcpListener, TcpStream};
use tls::{
    create_self_signed, CertPaths, CertStore, ClientTlsConfig, ClientVerify, MaybeTls,
    ServerOptions, TlsError, TlsStream, TlsVersions,
};

const LIMIT: Duration = Duration::from_secs(20);

fn on_both<F, Fut>(f: F)
where
    F: Fn(Driver) -> Fut,
    Fut: Future<Output = ()>,
{
    for d in [Driver::Uring, Driver::Epoll] {
        shard::io::run(d, async {
            tokio::time::timeout(Duration::from_secs(120), f(d))
                .await
                .unwrap_or_else(|_| panic!("test timed out on {}", d.name()))
        });
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str, d: Driver) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "tls-test-{}-{name}-{}",
            std::process::id(),
            d.name()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    /// A directory holding a fresh self-signed certificate for `host`.
    fn with_cert(name: &str, d: Driver, host: &str) -> Dir {
        let dir = Dir::new(name, d);
        create_self_signed(&dir.0, host).unwrap();
        dir
    }

    fn cert(&self) -> PathBuf {
        self.0.join("servercert.pem")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn store(dir: &Path, versions: TlsVersions) -> CertStore {
    let opts = ServerOptions {
        versions,
        check_interval: Duration::ZERO,
        ..ServerOptions::default()
    };
    CertStore::load(CertPaths::in_dir(dir), opts).unwrap()
}

fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l =
        TcpListener::from_std(bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap()).unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn pinned(cert: &Path, versions: TlsVersions) -> Arc<rustls::ClientConfig> {
    let mut c = ClientTlsConfig::new(ClientVerify::CaFile(cert.to_path_buf()));
    c.versions = versions;
    c.build().unwrap()
}

/// Reads until `buf` ends with `\n` or the peer closes.
async fn read_line(s: &mut TlsStream) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let (r, b) = s.read(buf).await;
        buf = b;
        if r.unwrap() == 0 || buf.ends_with(b"\n") {
            return buf;
        }
        if buf.capacity() == buf.len() {
            buf.reserve(256);
        }
    }
}

fn first_cert(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    let c = rustls_pemfile_certs(&pem);
    c.into_iter().next().unwrap()
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    // Minimal PEM reader for the test (base64 between the CERTIFICATE markers), independent of
    // the code under test.
    let text = std::str::from_utf8(pem).unwrap();
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find("-----BEGIN CERTIFICATE-----") {
        let after = &rest[b + 27..];
        let e = after.find("-----END CERTIFICATE-----").unwrap();
        let b64: String = after[..e].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(decode_b64(&b64));
        rest = &after[e..];
    }
    out
}

fn decode_b64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

#[test]
fn handshake_echo_and_session_details() {
    on_both(|d| async move {
        let dir = Dir::with_cert("echo", d, "mx.example");
        let st = store(&dir.0, TlsVersions::Both);
        let (l, addr) = listener();
        let config = st.config();
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = TlsStream::accept(tcp, config).await.unwrap();
            assert!(s.is_server());
            assert_eq!(s.sni(), Some("mx.example"));
            assert!(s.peer_certificates().is_none());
            let line = read_line(&mut s).await;
            let mut reply = b"echo: ".to_vec();
            reply.extend_from_slice(&line);
            let (r, _) = s.write_all(reply).await;
            r.unwrap();
            // The client's close_notify ends the stream cleanly.
            let (r, _) = s.read(Vec::with_capacity(16)).await;
            assert_eq!(r.unwrap(), 0);
            s.shutdown().await.unwrap();
            (
                s.channel_binding().unwrap(),
                s.protocol_name(),
                s.cipher_name(),
            )
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = TlsStream::connect(tcp, pinned(&dir.cert(), TlsVersions::Both), "mx.example")
            .await
            .unwrap();
        assert_eq!(c.protocol_name(), Some("TLSv1.3"));
        assert!(c.cipher_name().unwrap().starts_with("TLS13_"));
        let peer = c.peer_certificates().unwrap();
        assert_eq!(peer[0].as_ref(), first_cert(&dir.cert()).as_slice());
        let (r, _) = c.write_all(b"hello over tls\n".to_vec()).await;
        r.unwrap();
        // Spare-capacity semantics: what is in the buffer stays, the read lands after it.
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b">>");
        let mut got = 0;
        while !buf.ends_with(b"\n") {
            let (r, b) = c.read(buf).await;
            buf = b;
            got += r.unwrap();
        }
        assert_eq!(buf, b">>echo: hello over tls\n");
        assert_eq!(got, buf.len() - 2);
        c.shutdown().await.unwrap();
        let (r, _) = c.read(Vec::with_capacity(16)).await;
        assert_eq!(r.unwrap(), 0);
        let (server_cb, version, cipher) = server.await.unwrap();
        // Both ends derive the same tls-exporter channel binding.
        assert_eq!(Some(server_cb), c.channel_binding());
        assert_eq!(version, c.protocol_name());
        assert_eq!(cipher, c.cipher_name());
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        c.export_keying_material(&mut a, b"EXPORTER-test", Some(b"ctx"))
            .unwrap();
        c.export_keying_material(&mut b, b"EXPORTER-test", None)
            .unwrap();
        assert_ne!(a, b);
    });
}

#[test]
fn verification_policies() {
    on_both(|d| async move {
        let dir = Dir::with_cert("verify", d, "mx.example");
        let st = std::rc::Rc::new(store(&dir.0, TlsVersions::Both));
        let (l, addr) = listener();
        let st2 = std::rc::Rc::clone(&st);
        let server = tokio::task::spawn_local(async move {
            let mut results = Vec::new();
            for _ in 0..3 {
                let (tcp, _) = l.accept().await.unwrap();
                results.push(TlsStream::accept(tcp, st2.config()).await.is_ok());
            }
            results
        });
        // Wrong name against the pinned CA: refused by the client.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = TlsStream::connect(tcp, pinned(&dir.cert(), TlsVersions::Both), "other.example")
            .await
            .unwrap_err();
        assert!(matches!(e, TlsError::Tls(_)), "{e}");
        // Mozilla roots do not know a self-signed certificate.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let roots = ClientTlsConfig::new(ClientVerify::WebPkiRoots)
            .build()
            .unwrap();
        assert!(TlsStream::connect(tcp, roots, "mx.example").await.is_err());
        // Opportunistic: anything goes.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let any = ClientTlsConfig::new(ClientVerify::AcceptAny)
            .build()
            .unwrap();
        let c = TlsStream::connect(tcp, any, "127.0.0.1").await.unwrap();
        assert!(c.peer_certificates().is_some());
        assert_eq!(server.await.unwrap(), vec![false, false, true]);
    });
}

#[test]
fn forced_versions() {
    on_both(|d| async move {
        let dir = Dir::with_cert("versions", d, "mx.example");
        for (server_v, client_v, expect) in [
            (TlsVersions::Tls12Only, TlsVersions::Both, Some("TLSv1.2")),
            (TlsVersions::Both, TlsVersions::Tls12Only, Some("TLSv1.2")),
            (TlsVersions::Tls13Only, TlsVersions::Both, Some("TLSv1.3")),
            (TlsVersions::Both, TlsVersions::Both, Some("TLSv1.3")),
            (TlsVersions::Tls13Only, TlsVersions::Tls12Only, None),
        ] {
            let st = store(&dir.0, server_v);
            let (l, addr) = listener();
            let config = st.config();
            let server = tokio::task::spawn_local(async move {
                let (tcp, _) = l.accept().await.unwrap();
                match TlsStream::accept(tcp, config).await {
                    Ok(mut s) => {
                        let line = read_line(&mut s).await;
                        let (r, _) = s.write_all(line).await;
                        r.unwrap();
                        (s.protocol_name(), s.channel_binding())
                    }
                    Err(_) => (None, None),
                }
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let r = TlsStream::connect(tcp, pinned(&dir.cert(), client_v), "mx.example").await;
            match expect {
                Some(v) => {
                    let mut c = r.unwrap();
                    assert_eq!(c.protocol_name(), Some(v));
                    let (r, _) = c.write_all(b"ping\n".to_vec()).await;
                    r.unwrap();
                    assert_eq!(read_line(&mut c).await, b"ping\n");
                    let (sv, scb) = server.await.unwrap();
                    assert_eq!(sv, Some(v));
                    // rustls negotiates the extended master secret, so TLS 1.2 has a binding.
                    assert_eq!(scb, c.channel_binding());
                    assert!(scb.is_some());
                }
                None => {
                    assert!(r.is_err());
                    assert_eq!(server.await.unwrap(), (None, None));
                }
            }
        }
    });
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

#[test]
fn ten_megabytes_each_way() {
    const SIZE: usize = 10 * 1024 * 1024;
    on_both(|d| async move {
        let dir = Dir::with_cert("large", d, "mx.example");
        let st = store(&dir.0, TlsVersions::Both);
        let (l, addr) = listener();
        let config = st.config();
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = TlsStream::accept(tcp, config).await.unwrap();
            let mut got = Vec::with_capacity(SIZE);
            while got.len() < SIZE {
                if got.capacity() == got.len() {
                    got.reserve(64 * 1024);
                }
                let (r, g) = s.read(got).await;
                got = g;
                assert!(r.unwrap() > 0, "early end at {}", got.len());
            }
            assert!(got == pattern(SIZE, 1), "client to server data differs");
            // Odd-sized writes: records do not line up with them.
            let data = pattern(SIZE, 2);
            for part in data.chunks(1_000_003) {
                let (r, _) = s.write_all(part.to_vec()).await;
                r.unwrap();
            }
            s.shutdown().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = TlsStream::connect(tcp, pinned(&dir.cert(), TlsVersions::Both), "mx.example")
            .await
            .unwrap();
        let (r, _) = c.write_all(pattern(SIZE, 1)).await;
        r.unwrap();
        let mut got: Vec<u8> = Vec::with_capacity(SIZE);
        // Small reads too: a 5000-byte buffer is refilled many times per record.
        let mut small = Vec::with_capacity(5000);
        loop {
            small.clear();
            let (r, s) = c.read(small).await;
            small = s;
            if r.unwrap() == 0 {
                break;
            }
            got.extend_from_slice(&small);
        }
        assert_eq!(got.len(), SIZE);
        assert!(got == pattern(SIZE, 2), "server to client data differs");
        server.await.unwrap();
    });
}

#[test]
fn reload_after_certificate_change() {
    on_both(|d| async move {
        let dir = Dir::with_cert("reload", d, "mx.example");
        let st = std::rc::Rc::new(store(&dir.0, TlsVersions::Both));
        let (l, addr) = listener();
        let st2 = std::rc::Rc::clone(&st);
        let server = tokio::task::spawn_local(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let Ok(mut s) = TlsStream::accept(tcp, st2.config()).await else {
                    continue;
                };
                let line = read_line(&mut s).await;
                let (r, _) = s.write_all(line.clone()).await;
                r.unwrap();
                if line == b"stop\n" {
                    break;
                }
            }
        });
        let any = ClientTlsConfig::new(ClientVerify::AcceptAny)
            .build()
            .unwrap();
        let seen = |msg: &'static [u8]| {
            let any = Arc::clone(&any);
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut c = TlsStream::connect(tcp, any, "mx.example").await.unwrap();
                let cert = c.peer_certificates().unwrap()[0].as_ref().to_vec();
                let (r, _) = c.write_all(msg.to_vec()).await;
                r.unwrap();
                assert_eq!(read_line(&mut c).await, msg);
                cert
            }
        };
        let old = first_cert(&dir.cert());
        assert_eq!(seen(b"one\n").await, old);
        // Replace the certificate: made elsewhere, renamed into place (as an admin would).
        let other = Dir::with_cert("reload-new", d, "mx.example");
        std::fs::rename(other.cert(), dir.cert()).unwrap();
        let new = first_cert(&dir.cert());
        assert_ne!(old, new);
        assert_eq!(seen(b"two\n").await, new);
        assert_eq!(st.generation(), 1);
        // A broken file keeps the previous certificate and reports the error once.
        std::fs::write(dir.cert(), "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        assert_eq!(seen(b"three\n").await, new);
        assert!(st.take_reload_error().is_some());
        assert!(st.take_reload_error().is_none());
        assert_eq!(seen(b"stop\n").await, new);
        server.await.unwrap();
    });
}

#[test]
fn garbage_instead_of_client_hello_is_an_error() {
    on_both(|d| async move {
        let dir = Dir::with_cert("garbage", d, "mx.example");
        let st = store(&dir.0, TlsVersions::Both);
        let (l, addr) = listener();
        let config = st.config();
        let server = tokio::task::spawn_local(async move {
            let mut errors = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = l.accept().await.unwrap();
                let r = tokio::time::timeout(LIMIT, TlsStream::accept(tcp, config.clone()))
                    .await
                    .expect("server hung on garbage");
                errors.push(r.unwrap_err());
            }
            errors
        });
        // A plaintext SMTP command where a ClientHello belongs.
        let c = TcpStream::connect(addr).await.unwrap();
        let (r, _) = c.write_all(b"EHLO garbage.example\r\n".to_vec()).await;
        r.unwrap();
        // The server answers with an alert and gives up; we see it close.
        let mut buf = Vec::with_capacity(1024);
        loop {
            let (r, b) = tokio::time::timeout(LIMIT, c.read(buf)).await.unwrap();
            buf = b;
            if r.map(|n| n == 0).unwrap_or(true) {
                break;
            }
        }
        drop(c);
        // A handshake record header announcing a huge length.
        let c = TcpStream::connect(addr).await.unwrap();
        let (r, _) = c
            .write_all(vec![0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
            .await;
        r.unwrap();
        let errors = server.await.unwrap();
        for e in errors {
            assert!(matches!(e, TlsError::Tls(_)), "{e}");
        }
        drop(c);
    });
}

#[test]
fn peer_closing_mid_handshake() {
    on_both(|d| async move {
        let dir = Dir::with_cert("midclose", d, "mx.example");
        let st = store(&dir.0, TlsVersions::Both);
        let (l, addr) = listener();
        let config = st.config();
        // Server side: the client sends half a ClientHello and closes.
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::time::timeout(LIMIT, TlsStream::accept(tcp, config))
                .await
                .expect("server hung")
                .unwrap_err()
        });
        let mut hello = Vec::new();
        let mut cc = rustls::ClientConnection::new(
            pinned(&dir.cert(), TlsVersions::Both),
            "mx.example".try_into().unwrap(),
        )
        .unwrap();
        cc.write_tls(&mut hello).unwrap();
        assert!(hello.len() > 20);
        let c = TcpStream::connect(addr).await.unwrap();
        let (r, _) = c.write_all(hello[..hello.len() / 2].to_vec()).await;
        r.unwrap();
        drop(c);
        let e = server.await.unwrap();
        assert!(matches!(e, TlsError::ClosedDuringHandshake), "{e}");

        // Client side: the server reads the ClientHello and closes without answering.
        let (l, addr) = listener();
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let (r, _) = tcp.read(Vec::with_capacity(4096)).await;
            assert!(r.unwrap() > 0);
            drop(tcp);
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let r = tokio::time::timeout(
            LIMIT,
            TlsStream::connect(tcp, pinned(&dir.cert(), TlsVersions::Both), "mx.example"),
        )
        .await
        .expect("client hung");
        let e = r.unwrap_err();
        assert!(
            matches!(e, TlsError::ClosedDuringHandshake | TlsError::Io(_)),
            "{e}"
        );
        server.await.unwrap();
    });
}

#[test]
fn unclean_close_is_unexpected_eof() {
    on_both(|d| async move {
        let dir = Dir::with_cert("unclean", d, "mx.example");
        let st = store(&dir.0, TlsVersions::Both);
        let (l, addr) = listener();
        let config = st.config();
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = TlsStream::accept(tcp, config).await.unwrap();
            let (r, _) = s.write_all(b"partial".to_vec()).await;
            r.unwrap();
            // Dropped without close_notify.
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = TlsStream::connect(tcp, pinned(&dir.cert(), TlsVersions::Both), "mx.example")
            .await
            .unwrap();
        server.await.unwrap();
        let mut buf = Vec::with_capacity(64);
        let err = loop {
            let (r, b) = c.read(buf).await;
            buf = b;
            match r {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(buf, b"partial");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    });
}

#[test]
fn starttls_upgrade_with_maybe_tls() {
    on_both(|d| async move {
        let dir = Dir::with_cert("starttls", d, "mx.example");
        let st = store(&dir.0, TlsVersions::Both);
        let (l, addr) = listener();
        let config = st.config();
        let server = tokio::task::spawn_local(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = MaybeTls::Plain(tcp);
            let (r, _) = s.write_all(b"220 ready\r\n".to_vec()).await;
            r.unwrap();
            let mut buf = Vec::with_capacity(256);
            while !buf.ends_with(b"\n") {
                let (r, b) = s.read(buf).await;
                buf = b;
                assert!(r.unwrap() > 0);
            }
            // The client pipelined plaintext after STARTTLS: it is dropped, never processed.
            assert!(buf.starts_with(b"STARTTLS\r\n"));
            drop(buf);
            let (r, _) = s
                .write_all(b"220 2.0.0 Ready to start TLS\r\n".to_vec())
                .await;
            r.unwrap();
            let mut s = s.start_tls_server(config).await.unwrap();
            assert!(s.is_tls());
            assert!(s.tls().unwrap().channel_binding().is_some());
            let mut buf = Vec::with_capacity(256);
            while !buf.ends_with(b"\n") {
                let (r, b) = s.read(buf).await;
                buf = b;
                assert!(r.unwrap() > 0);
            }
            assert_eq!(buf, b"EHLO c\r\n");
            let (r, _) = s.write_all(b"250 mx.example\r\n".to_vec()).await;
            r.unwrap();
            assert!(s.clone_check_upgrade_refused().await);
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = MaybeTls::Plain(tcp);
        let (r, greeting) = c.read(Vec::with_capacity(64)).await;
        r.unwrap();
        assert_eq!(greeting, b"220 ready\r\n");
        let (r, _) = c.write_all(b"STARTTLS\r\n".to_vec()).await;
        r.unwrap();
        let mut buf = Vec::with_capacity(64);
        while !buf.ends_with(b"\n") {
            let (r, b) = c.read(buf).await;
            buf = b;
            assert!(r.unwrap() > 0);
        }
        assert_eq!(buf, b"220 2.0.0 Ready to start TLS\r\n");
        let mut c = c
            .start_tls_client(pinned(&dir.cert(), TlsVersions::Both), "mx.example")
            .await
            .unwrap();
        let (r, _) = c.write_all(b"EHLO c\r\n".to_vec()).await;
        r.unwrap();
        let (r, buf) = c.read(Vec::with_capacity(64)).await;
        r.unwrap();
        assert_eq!(buf, b"250 mx.example\r\n");
        assert!(c.tcp().peer_addr().is_ok());
        server.await.unwrap();
    });
}

trait UpgradeCheck {
    async fn clone_check_upgrade_refused(self) -> bool;
}

impl UpgradeCheck for MaybeTls {
    /// A second upgrade of a TLS connection is refused.
    async fn clone_check_upgrade_refused(self) -> bool {
        let dummy = ClientTlsConfig::new(ClientVerify::AcceptAny)
            .build()
            .unwrap();
        self.start_tls_client(dummy, "x.example").await.is_err()
    }
}

#[test]
fn randomness_differs() {
    let a = tls::random_u64().unwrap();
    let b = tls::random_u64().unwrap();
    assert_ne!(a, b);
}

#[test]
fn session_randomness_differs_per_call_and_per_thread() {
    let here: Vec<u64> = (0..1000).map(|_| tls::session_random_u64()).collect();
    let mut seen: std::collections::HashSet<u64> = here.iter().copied().collect();
    assert_eq!(seen.len(), here.len(), "a value repeated within one thread");
    let there: Vec<u64> =
        std::thread::spawn(|| (0..1000).map(|_| tls::session_random_u64()).collect())
            .join()
            .unwrap();
    seen.extend(there);
    assert_eq!(
        seen.len(),
        2000,
        "another thread's key gave the same values"
    );
}
