//! lookup against a private MariaDB (started by the bench itself): `Directory::user_status`
//! on a cache MISS (the cache is cleared before each call, so the domain and the user are
//! both fetched from MySQL over TCP) beside a cache HIT on the same directory.

#[path = "../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use std::rc::Rc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lookup::{Clock, Directory, DirectoryConfig, ManualClock, RefreshMode};

fn mariadb_miss_and_hit(c: &mut Criterion) {
    let db = mariadb::MariaDb::start();
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    std::fs::create_dir_all(h.join("control")).expect("control");
    std::fs::write(h.join("control/host.mysql"), db.host_mysql()).expect("host.mysql");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = DirectoryConfig::with_paths(h, h.join("control"), h.join("mail")).expect("config");
    let dir = rt.block_on(async {
        indimail_benches::add_domain_and_user(&cfg, "manny@example.com").await;
        let mut cfg = cfg;
        cfg.change_poll = Duration::from_secs(1_000_000);
        let clock: Rc<dyn Clock> = Rc::new(ManualClock::new(0));
        let dir = Directory::open_with(cfg, clock, RefreshMode::Inline)
            .await
            .expect("directory");
        dir.user_status("manny@example.com").await.expect("warm");
        dir
    });
    let mut g = c.benchmark_group("lookup/mariadb_user_status");
    g.bench_function("miss", |b| {
        b.iter(|| {
            dir.clear_cache();
            rt.block_on(dir.user_status(black_box("manny@example.com")))
                .expect("lookup")
        })
    });
    g.bench_function("miss_no_such_user", |b| {
        b.iter(|| {
            dir.clear_cache();
            rt.block_on(dir.user_status(black_box("nobody@example.com")))
                .expect("lookup")
        })
    });
    g.bench_function("hit", |b| {
        b.iter(|| {
            rt.block_on(dir.user_status(black_box("manny@example.com")))
                .expect("lookup")
        })
    });
    g.finish();
    let stats = dir.cache_stats();
    eprintln!("cache stats after the bench: {stats:?}");
    drop(dir);
    drop(db);
}

criterion_group!(benches, mariadb_miss_and_hit);
criterion_main!(benches);
