//! Test peers: a scripted SMTP server (std threads, blocking sockets, with
//! STARTTLS through rustls) and a tiny DNS responder.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shard::io::Driver;

pub fn both<F, Fut>(f: F)
where
    F: Fn(Driver) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for d in [Driver::Uring, Driver::Epoll] {
        shard::io::run(d, f(d));
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Normal,
    Garbage,
    Hang,
    DropMidData,
    /// Greeting 421 on the first connection, normal afterwards.
    GreetTempOnce,
}

#[derive(Debug, Clone, Default)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
}

pub struct Server {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub commands: Arc<Mutex<Vec<String>>>,
}

pub struct Behaviour {
    pub mode: Mode,
    pub pipelining: bool,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Reply after the message (default 250).
    pub data_reply: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            mode: Mode::Normal,
            pipelining: true,
            tls: None,
            data_reply: "250 2.0.0 queued".into(),
        }
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn read_line(s: &mut dyn Stream) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    return Some(String::from_utf8_lossy(&line).trim_end().to_string());
                }
            }
        }
    }
}

pub fn start(b: Behaviour) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let commands = Arc::new(Mutex::new(Vec::new()));
    let (c2, r2, k2) = (connections.clone(), received.clone(), commands.clone());
    let b = Arc::new(b);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let n = c2.fetch_add(1, Ordering::SeqCst);
            let (r, k, b) = (r2.clone(), k2.clone(), b.clone());
            std::thread::spawn(move || serve(s, n, &b, &r, &k));
        }
    });
    Server {
        addr,
        connections,
        received,
        commands,
    }
}

fn serve(
    s: TcpStream,
    n: usize,
    b: &Behaviour,
    rec: &Mutex<Vec<Received>>,
    cmds: &Mutex<Vec<String>>,
) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut st: Box<dyn Stream> = Box::new(s.try_clone().unwrap());
    match b.mode {
        Mode::Hang => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        Mode::Garbage => {
            let _ = st.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        Mode::GreetTempOnce if n == 0 => {
            let _ = st.write_all(b"421 4.3.2 busy, try later\r\n");
            let _ = read_line(&mut *st);
            return;
        }
        _ => {}
    }
    let _ = st.write_all(b"220 test.example ESMTP\r\n");
    let mut tls = false;
    let mut cur = Received::default();
    while let Some(line) = read_line(&mut *st) {
        cmds.lock().unwrap().push(line.clone());
        let up = line.to_ascii_uppercase();
        let reply: String = if up.starts_with("EHLO") {
            let mut r = String::from("250-test.example\r\n");
            if b.pipelining {
                r.push_str("250-PIPELINING\r\n");
            }
            if b.tls.is_some() && !tls {
                r.push_str("250-STARTTLS\r\n");
            }
            r.push_str("250-8BITMIME\r\n250 SIZE 10000000\r\n");
            r
        } else if up.starts_with("HELO") {
            "250 test.example\r\n".into()
        } else if up.starts_with("STARTTLS") {
            let _ = st.write_all(b"220 2.0.0 go ahead\r\n");
            let conn = rustls::ServerConnection::new(b.tls.clone().unwrap()).unwrap();
            st = Box::new(rustls::StreamOwned::new(conn, s.try_clone().unwrap()));
            tls = true;
            continue;
        } else if up.starts_with("MAIL FROM:") {
            cur = Received {
                from: line[10..].to_string(),
                tls,
                ..Default::default()
            };
            "250 2.1.0 ok\r\n".into()
        } else if up.starts_with("RCPT TO:") {
            let a = line[8..].to_string();
            if a.contains("perm") {
                "550 5.1.1 no such user\r\n".into()
            } else if a.contains("temp") {
                "451 4.2.0 mailbox busy\r\n".into()
            } else {
                cur.rcpts.push(a);
                "250 2.1.5 ok\r\n".into()
            }
        } else if up == "DATA" {
            if cur.rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                let _ = st.write_all(b"354 go\r\n");
                if b.mode == Mode::DropMidData {
                    let mut buf = [0u8; 10];
                    let _ = st.read(&mut buf);
                    return;
                }
                let mut data = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    match st.read(&mut byte) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => data.push(byte[0]),
                    }
                    if data.ends_with(b"\r\n.\r\n") || data == b".\r\n" {
                        break;
                    }
                }
                cur.data = data;
                rec.lock().unwrap().push(std::mem::take(&mut cur));
                format!("{}\r\n", b.data_reply)
            }
        } else if up == "RSET" || up == "NOOP" {
            cur = Received::default();
            "250 2.0.0 ok\r\n".into()
        } else if up == "QUIT" {
            let _ = st.write_all(b"221 2.0.0 bye\r\n");
            let _ = st.flush();
            return;
        } else {
            "502 5.5.2 what\r\n".into()
        };
        if st.write_all(reply.as_bytes()).is_err() {
            return;
        }
        let _ = st.flush();
    }
}

pub fn tls_server_config() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    )
}

/// DNS stub: answers MX and A from a table, NXDOMAIN for unknown names.
pub struct Zone {
    pub mx: Vec<(&'static str, u16, &'static str)>,
    pub a: Vec<(&'static str, std::net::Ipv4Addr)>,
    /// Names that exist (NOERROR, no data) though absent from the tables.
    pub exists: Vec<&'static str>,
}

pub fn dns_stub(zone: Zone) -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::{A, MX};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::str::FromStr;

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(q.op_code())
                .set_recursion_desired(q.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true);
            let mut found_name = false;
            for query in q.queries() {
                resp.add_query(query.clone());
                let qname = query.name().to_utf8();
                let qname = qname.trim_end_matches('.').to_ascii_lowercase();
                for (d, pref, ex) in &zone.mx {
                    if *d == qname {
                        found_name = true;
                        if query.query_type() == RecordType::MX {
                            let exch = if *ex == "." {
                                Name::root()
                            } else {
                                Name::from_str(&format!("{ex}.")).unwrap()
                            };
                            resp.add_answer(Record::from_rdata(
                                query.name().clone(),
                                60,
                                RData::MX(MX::new(*pref, exch)),
                            ));
                        }
                    }
                }
                for (h, ip) in &zone.a {
                    if *h == qname {
                        found_name = true;
                        if query.query_type() == RecordType::A {
                            resp.add_answer(Record::from_rdata(
                                query.name().clone(),
                                60,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                }
                if zone.exists.contains(&qname.as_str()) {
                    found_name = true;
                }
            }
            if !found_name {
                resp.set_response_code(ResponseCode::NXDomain);
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer);
        }
    });
    addr
}
