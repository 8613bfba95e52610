//! smtp-proto throughput: command parsing through the server session, and DATA scanning
//! (end-of-data search plus dot-unstuffing) on a 1 MiB message of 80-character lines.
//!
//! Baselines beside them: a plain copy of the same bytes (what any receive path costs at least)
//! and a naive `windows(5)` search for CRLF.CRLF (a scanner that does no unstuffing and no
//! bare-CR/LF checks).

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use smtp_proto::{Decision, Event, Session, SessionConfig};

fn config() -> Rc<SessionConfig> {
    Rc::new(SessionConfig::new("mx.example"))
}

/// A pipelined envelope batch, repeated: MAIL, five RCPTs, RSET.
fn command_batch(rounds: usize) -> Vec<u8> {
    let mut v = b"EHLO client.example.org\r\n".to_vec();
    for i in 0..rounds {
        v.extend_from_slice(
            format!("MAIL FROM:<sender{i}@example.org> SIZE=12345 BODY=8BITMIME\r\n").as_bytes(),
        );
        for r in 0..5 {
            v.extend_from_slice(format!("RCPT TO:<user{r}.{i}@example.net>\r\n").as_bytes());
        }
        v.extend_from_slice(b"RSET\r\n");
    }
    v
}

/// Feeds everything, accepting every MAIL/RCPT; returns the reply bytes produced.
fn run_commands(input: &[u8]) -> usize {
    let mut s = Session::new(config());
    let mut pos = 0;
    let mut out = 0;
    loop {
        let (n, ev) = s.feed(&input[pos..]);
        pos += n;
        match ev {
            Event::Mail { .. } | Event::Rcpt { .. } => s.decide(Decision::Accept),
            _ => break,
        }
        out += s.output().len();
        s.consume_output(usize::MAX);
    }
    out + s.output().len()
}

/// 1 MiB of 78 printable characters + CRLF per line, some lines starting with a dot.
fn message() -> Vec<u8> {
    let mut m = Vec::with_capacity(1 << 20);
    let mut i = 0u32;
    while m.len() < (1 << 20) - 82 {
        if i.is_multiple_of(50) {
            m.push(b'.');
        }
        for k in 0..78u32 {
            m.push(b' ' + ((i + k) % 94) as u8);
        }
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// A session that has just accepted DATA.
fn session_in_data() -> Session {
    let mut s = Session::new(config());
    let input = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";
    let mut pos = 0;
    loop {
        let (n, ev) = s.feed(&input[pos..]);
        pos += n;
        match ev {
            Event::Mail { .. } | Event::Rcpt { .. } => s.decide(Decision::Accept),
            Event::DataStart => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    s
}

fn scan_message(mut s: Session, msg: &[u8], read_size: usize) -> usize {
    let mut stored = 0;
    for chunk in msg.chunks(read_size) {
        let mut pos = 0;
        loop {
            let (n, ev) = s.feed(&chunk[pos..]);
            pos += n;
            match ev {
                Event::Data(d) => stored += black_box(d).len(),
                Event::NeedMore => break,
                Event::MessageEnd => return stored,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    stored
}

fn commands(c: &mut Criterion) {
    let input = command_batch(200);
    let mut g = c.benchmark_group("smtp_commands");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("session_mail_rcpt_rset_pipelined", |b| {
        b.iter(|| run_commands(black_box(&input)))
    });
    g.bench_function("baseline_split_lines", |b| {
        b.iter(|| black_box(&input).split(|&c| c == b'\n').count())
    });
    g.finish();
}

fn data(c: &mut Criterion) {
    let msg = message();
    let mut g = c.benchmark_group("smtp_data_1MiB");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    for read_size in [16 * 1024, 256 * 1024] {
        g.bench_function(
            format!("session_scan_reads_of_{}k", read_size / 1024),
            |b| {
                b.iter_batched(
                    session_in_data,
                    |s| scan_message(s, black_box(&msg), read_size),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.bench_function("baseline_copy", |b| {
        b.iter(|| black_box(black_box(&msg).to_vec()))
    });
    g.bench_function("baseline_naive_end_search", |b| {
        b.iter(|| black_box(&msg).windows(5).position(|w| w == b"\r\n.\r\n"))
    });
    g.finish();
}

criterion_group!(benches, commands, data);
criterion_main!(benches);
