//! The workspace's dependency edges point one way (README "Layout"): the runtime at the
//! bottom, sans-I/O cores and the directory beside it, storage, delivery and proxies above,
//! the `indimail` binary on top, and nothing back up. Read from `cargo metadata`, so a new
//! edge must be added here on purpose.

use std::collections::{BTreeMap, BTreeSet};

/// Every project crate and the project crates it may use (normal and build dependencies;
/// dev-dependencies of tests and benches are free).
const ALLOWED: &[(&str, &[&str])] = &[
    ("shard", &[]),
    ("tls", &["shard"]),
    ("control", &[]),
    ("smtp-proto", &[]),
    ("policy", &["control"]),
    ("msgproc", &["control"]),
    ("lookup", &["control"]),
    ("queue-layout", &["control", "shard"]),
    ("admin-api", &["control", "lookup", "queue-layout", "tls"]),
    (
        "operator-tools",
        &[
            "control",
            "delivery",
            "lookup",
            "msgproc",
            "queue-layout",
            "queue-store",
            "scheduler",
            "shard",
        ],
    ),
    ("queue-store", &["shard"]),
    ("delivery", &["control", "shard", "smtp-proto", "tls"]),
    (
        "proxies",
        &["control", "lookup", "shard", "smtp-proto", "tls"],
    ),
    (
        "smtp-server",
        &[
            "control",
            "delivery",
            "lookup",
            "msgproc",
            "policy",
            "queue-layout",
            "queue-store",
            "scheduler",
            "shard",
            "smtp-proto",
            "tls",
        ],
    ),
    (
        "scheduler",
        &[
            "control",
            "delivery",
            "lookup",
            "msgproc",
            "policy",
            "proxies",
            "queue-layout",
            "queue-store",
            "shard",
            "smtp-proto",
            "tls",
        ],
    ),
    ("indimail-tuning", &["queue-layout"]),
    (
        "indimail",
        &[
            "admin-api",
            "control",
            "delivery",
            "lookup",
            "msgproc",
            "operator-tools",
            "policy",
            "proxies",
            "queue-layout",
            "scheduler",
            "shard",
            "smtp-server",
            "tls",
        ],
    ),
    ("indimail-loadtest", &["smtp-proto", "tls"]),
    ("indimail-benches", &["lookup", "queue-store", "shard"]),
];

#[test]
fn dependencies_point_one_way() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let packages = meta["packages"].as_array().expect("packages");
    let ours: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(c, deps)| (*c, deps.iter().copied().collect()))
        .collect();
    let mut wrong = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default();
        let Some(may) = allowed.get(name) else {
            wrong.push(format!(
                "{name}: a crate this test does not know (add it to ALLOWED)"
            ));
            continue;
        };
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            let dev = d["kind"].as_str() == Some("dev");
            if ours.contains(dep) && !dev && !may.contains(dep) {
                wrong.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependency edges against the layering (README \"Layout\"):\n{}",
        wrong.join("\n")
    );
}
