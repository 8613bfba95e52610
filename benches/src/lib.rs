//! Criterion micro-benchmarks live in `benches/`; see BENCHMARKING.md. This library holds
//! what several of them set up the same way.

/// Adds the domain of `email` and the user `email` (password `pw`) to the directory of
/// `cfg` (embedded store or MySQL, as `cfg` says).
pub async fn add_domain_and_user(cfg: &lookup::DirectoryConfig, email: &str) {
    let domain = email.rsplit_once('@').map_or(email, |(_, d)| d);
    let admin = lookup::Admin::open(cfg.clone()).await.expect("admin");
    admin
        .domain_add(domain, &lookup::DomainOptions::default())
        .await
        .expect("domain");
    admin
        .user_add(email, "pw", &lookup::UserOptions::default())
        .await
        .expect("user");
}
