//! TLS record throughput: rustls server and client connections (the
//! configurations `indimail serve` and remote delivery build, through the
//! `tls` crate: demo ECDSA certificate, TLS 1.3, default suite) exchanging
//! application data in memory, as the shard's I/O layer drives them
//! (`write_tls` / `read_tls` / `process_new_packets` over owned buffers),
//! so the figure is the record layer's cost without a socket.
//!
//! * `tls_records/client_to_server_64KiB`: 64 KiB of plaintext written by
//!   the client, encrypted, handed over, decrypted and read by the server.
//! * `tls_records/baseline_copy_64KiB`: the same bytes copied twice.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::{ClientConnection, Connection, ServerConnection};

const SIZE: usize = 64 * 1024;

/// Moves everything `from` has to send into `to`.
fn pump(from: &mut Connection, to: &mut Connection) {
    let mut wire = Vec::with_capacity(SIZE + 4096);
    while from.wants_write() {
        from.write_tls(&mut wire).expect("write_tls");
    }
    let mut r = &wire[..];
    while !r.is_empty() {
        to.read_tls(&mut r).expect("read_tls");
        to.process_new_packets().expect("process_new_packets");
    }
}

/// Sends `data` from `client` to `server` in records, reading the plaintext
/// out as it arrives (rustls holds at most 16 KiB of it), as the shard's
/// read loop does.
fn transfer(client: &mut Connection, server: &mut Connection, data: &[u8], out: &mut [u8]) {
    client.writer().write_all(data).expect("write");
    let mut wire = Vec::with_capacity(20 * 1024);
    let mut got = 0;
    while client.wants_write() {
        wire.clear();
        client.write_tls(&mut wire).expect("write_tls");
        let mut r = &wire[..];
        while !r.is_empty() {
            server.read_tls(&mut r).expect("read_tls");
            server.process_new_packets().expect("process_new_packets");
            loop {
                match server.reader().read(&mut out[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    }
    assert_eq!(got, data.len());
}

fn connected_pair(dir: &std::path::Path) -> (Connection, Connection) {
    tls::create_self_signed(dir, "bench.example").expect("certificate");
    let store = tls::CertStore::load(tls::CertPaths::in_dir(dir), tls::ServerOptions::default())
        .expect("load certificate");
    let client_cfg: Arc<rustls::ClientConfig> =
        tls::ClientTlsConfig::new(tls::ClientVerify::AcceptAny)
            .build()
            .expect("client config");
    let name = rustls::pki_types::ServerName::try_from("bench.example").expect("name");
    let mut client = Connection::Client(ClientConnection::new(client_cfg, name).expect("client"));
    let mut server = Connection::Server(ServerConnection::new(store.config()).expect("server"));
    while client.is_handshaking() || server.is_handshaking() {
        pump(&mut client, &mut server);
        pump(&mut server, &mut client);
    }
    (client, server)
}

fn bench_records(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut client, mut server) = connected_pair(dir.path());
    eprintln!(
        "tls_records: {:?} {:?}",
        server.protocol_version(),
        server.negotiated_cipher_suite().map(|s| s.suite())
    );
    let data = vec![b'x'; SIZE];
    let mut out = vec![0u8; SIZE];
    let mut g = c.benchmark_group("tls_records");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("client_to_server_64KiB", |b| {
        b.iter(|| transfer(&mut client, &mut server, &data, &mut out))
    });
    g.bench_function("baseline_copy_64KiB", |b| {
        let mut mid = vec![0u8; SIZE];
        b.iter(|| {
            mid.copy_from_slice(std::hint::black_box(&data));
            out.copy_from_slice(std::hint::black_box(&mid));
        })
    });
    g.finish();
}

criterion_group!(benches, bench_records);
criterion_main!(benches);
