//! policy: one RCPT (and one MAIL) check against a large IndiMail control directory — 10k
//! `badmailfrom` and 10k `badrcptto` exact lines, 200 `badmailpatterns` wildcards and 1k
//! `accesslist` rules — with an empty control directory as the baseline beside it; plus the
//! bodycheck scanner over a 64 KiB message and a greylist check.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use policy::greylist::{Greylist, GreylistConfig, Whitelist};
use policy::{Conn, Policy};

fn big_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut bmf = String::new();
    let mut brt = String::new();
    for i in 0..10_000 {
        bmf.push_str(&format!("sender{i}@spam{}.example\n", i % 101));
        brt.push_str(&format!("gone{i}@corp{}.example\n", i % 37));
    }
    let mut pats = String::new();
    for i in 0..200 {
        pats.push_str(&format!("*@*.spamfarm{i}.test\n"));
    }
    let mut acl = String::new();
    for i in 0..1_000 {
        if i % 2 == 0 {
            acl.push_str(&format!(
                "rcpt:*@dept{i}.corp.example:list{i}@corp.example\n"
            ));
        } else {
            acl.push_str(&format!("from:vendor{i}@*:sales{i}@corp.example\n"));
        }
    }
    std::fs::write(d.join("badmailfrom"), bmf).unwrap();
    std::fs::write(d.join("badrcptto"), brt).unwrap();
    std::fs::write(d.join("badmailpatterns"), pats).unwrap();
    std::fs::write(d.join("accesslist"), acl).unwrap();
    dir
}

fn checks(c: &mut Criterion) {
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let empty = Policy::load(empty_dir.path(), &|_| None).expect("empty policy");
    let big_dir = big_dir();
    let big = Policy::load(big_dir.path(), &|_| None).expect("big policy");
    let conn = Conn {
        ip: "198.51.100.7".parse().unwrap(),
        relay_client: false,
        authenticated: None,
        helo: "mx.example",
    };

    let mut g = c.benchmark_group("policy/check_rcpt");
    for (name, p) in [("empty", &empty), ("10k_lists_1k_acl", &big)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(p.check_rcpt(
                    &conn,
                    black_box("someone@example.org"),
                    black_box("user@corp.example"),
                ))
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("policy/check_mail");
    for (name, p) in [("empty", &empty), ("10k_lists_1k_acl", &big)] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(p.check_mail(&conn, black_box("someone@example.org"))))
        });
    }
    g.finish();
}

fn bodycheck(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rules = String::new();
    for i in 0..50 {
        rules.push_str(&format!("phrase number {i} of spam:rule {i}\n"));
    }
    std::fs::write(dir.path().join("bodycheck"), rules).unwrap();
    let p = Policy::load(dir.path(), &|k| (k == "BODYCHECK").then(String::new)).expect("policy");
    let mut msg = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hello\r\n\r\n".to_vec();
    while msg.len() < 64 * 1024 {
        msg.extend_from_slice(b"The quick brown fox jumps over the lazy dog, line after line.\r\n");
    }
    let mut g = c.benchmark_group("policy/bodycheck");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("64KiB_50_rules", |b| {
        b.iter(|| {
            let mut s = p.body_scanner().expect("scanner");
            for chunk in msg.chunks(4096) {
                s.feed(chunk);
            }
            black_box(s.finish())
        })
    });
    g.finish();
}

fn greylist(c: &mut Criterion) {
    let mut gl = Greylist::new(GreylistConfig::default(), Whitelist::default());
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for i in 0..50_000u32 {
        let ip = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        gl.check(ip, &format!("s{i}@x.example"), &["r@y.example"], t0);
    }
    let ip: IpAddr = "10.0.1.1".parse().unwrap();
    let now: SystemTime = t0 + Duration::from_secs(60);
    c.bench_function("policy/greylist_check_50k_entries", |b| {
        b.iter(|| black_box(gl.check(ip, "s257@x.example", &["r@y.example"], now)))
    });
}

criterion_group!(benches, checks, bodycheck, greylist);
criterion_main!(benches);
