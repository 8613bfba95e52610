//! lookup: a cache hit (the sans-I/O policy alone, and a whole `Directory::user_status`
//! answered from the cache over the embedded store), and password verification per scheme.

use std::rc::Rc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use lookup::password::{hash, verify, HashMethod};
use lookup::{
    Cache, CachePolicy, Clock, Directory, DirectoryConfig, Lookup, ManualClock, RefreshMode,
};

fn cache_policy_hit(c: &mut Criterion) {
    let mut cache: Cache<String, u64> = Cache::new(CachePolicy::default());
    let key = "manny@example.com".to_string();
    if let Lookup::Fetch(t, _) = cache.lookup(&key, 0) {
        cache.complete(key.clone(), t, 1, false, 0);
    }
    c.bench_function("lookup/cache_policy_hit", |b| {
        b.iter(|| black_box(cache.lookup(black_box(&key), 1)))
    });
}

fn directory_hit(c: &mut Criterion) {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
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
    c.bench_function("lookup/directory_user_status_hit", |b| {
        b.iter(|| rt.block_on(dir.user_status(black_box("manny@example.com"))))
    });
}

fn password_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup/password_verify");
    g.sample_size(10);
    for m in [
        HashMethod::Des,
        HashMethod::Md5,
        HashMethod::Sha256,
        HashMethod::Sha512,
        HashMethod::Yescrypt,
    ] {
        let stored = hash(m, "s3cret", None).expect("hash");
        g.bench_function(m.to_string(), |b| {
            b.iter(|| assert!(verify(black_box(&stored), black_box("s3cret"))))
        });
    }
    g.finish();
}

criterion_group!(benches, cache_policy_hit, directory_hit, password_verify);
criterion_main!(benches);
