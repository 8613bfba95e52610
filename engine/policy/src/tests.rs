//! Policy tests over real control files written to a temporary control directory.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use crate::{Conn, Policy, PolicyErrorKind, Verdict};

struct Dir {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
            env: HashMap::new(),
        }
    }
    fn file(&mut self, name: &str, text: &str) -> &mut Dir {
        fs::write(self.dir.path().join(name), text).unwrap();
        self
    }
    fn env(&mut self, k: &str, v: &str) -> &mut Dir {
        self.env.insert(k.into(), v.into());
        self
    }
    fn load(&self) -> Policy {
        let env = |k: &str| self.env.get(k).cloned();
        match Policy::load(self.dir.path(), &env) {
            Ok(p) => p,
            Err(e) => panic!("load failed: {e:?}"),
        }
    }
    fn errors(&self) -> Vec<crate::PolicyError> {
        let env = |k: &str| self.env.get(k).cloned();
        Policy::load(self.dir.path(), &env).expect_err("load should fail")
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn conn(ip: &str) -> Conn<'static> {
    Conn {
        ip: ip.parse::<IpAddr>().unwrap(),
        relay_client: false,
        authenticated: None,
        helo: "client.example",
    }
}

fn code(v: &Verdict) -> Option<u16> {
    match v {
        Verdict::Reject { code, .. } => Some(*code),
        _ => None,
    }
}

fn rule(v: &Verdict) -> &str {
    match v {
        Verdict::Reject { rule, .. } | Verdict::Blackhole { rule } => rule,
        Verdict::Accept => "",
    }
}

const C: &str = "192.0.2.10";

#[test]
fn empty_directory_accepts_everything() {
    let d = Dir::new();
    let p = d.load();
    assert!(p.check_helo("x").is_accept());
    assert!(p.check_connect(C.parse().unwrap()).is_accept());
    let m = p.check_mail(&conn(C), "a@b.c");
    assert!(m.verdict.is_accept() && m.env.is_empty() && !m.relay);
    assert!(p.check_rcpt(&conn(C), "a@b.c", "d@e.f").is_accept());
    assert!(p.body_scanner().is_none());
    assert!(p.chkrcpt_applies("x@y"));
    // Every candidate file is a source (so creating one triggers a reload).
    assert!(p
        .sources()
        .iter()
        .any(|(f, t)| f.ends_with("badmailfrom") && t.is_none()));
    assert!(!p.is_stale());
    fs::write(d.path().join("badmailfrom"), "x@y\n").unwrap();
    assert!(p.is_stale());
}

#[test]
fn badmailfrom_exact_domain_and_wildcards() {
    let mut d = Dir::new();
    d.file(
        "badmailfrom",
        "# spammers\nspam@example.com\n@Bad.Example\n*@*.spamhaus.test\n",
    );
    let p = d.load();
    let c = conn(C);
    let v = p.check_mail(&c, "Spam@Example.COM").verdict;
    assert_eq!(
        v.to_string(),
        "553 5.7.1 sorry, your envelope sender has been denied"
    );
    assert_eq!(rule(&v), "badmailfrom:2");
    assert_eq!(
        rule(&p.check_mail(&c, "anyone@bad.example").verdict),
        "badmailfrom:3"
    );
    assert_eq!(
        rule(&p.check_mail(&c, "x@mx.spamhaus.test").verdict),
        "badmailfrom:4"
    );
    assert!(p.check_mail(&c, "good@example.com").verdict.is_accept());
    assert!(p.check_mail(&c, "x@sub.bad.example").verdict.is_accept());
    assert!(p.check_mail(&c, "").verdict.is_accept());
}

#[test]
fn badmailpatterns_with_negation_last_match_wins() {
    let mut d = Dir::new();
    d.file("badmailfrom", "exact@example.com\n");
    d.file("badmailpatterns", "*@example.org\n!boss@example.org\n");
    let p = d.load();
    let c = conn(C);
    assert_eq!(
        rule(&p.check_mail(&c, "joe@example.org").verdict),
        "badmailpatterns:1"
    );
    assert!(p.check_mail(&c, "boss@example.org").verdict.is_accept());
    assert_eq!(
        rule(&p.check_mail(&c, "exact@example.com").verdict),
        "badmailfrom:1"
    );
    assert!(p.check_mail(&c, "other@example.com").verdict.is_accept());
}

#[test]
fn env_names_other_files() {
    let mut d = Dir::new();
    d.file("bmf.alt", "@alt.example\n")
        .env("BADMAILFROM", "bmf.alt");
    d.file("badmailfrom", "@std.example\n");
    let p = d.load();
    assert_eq!(
        code(&p.check_mail(&conn(C), "a@alt.example").verdict),
        Some(553)
    );
    assert!(p.check_mail(&conn(C), "a@std.example").verdict.is_accept());
}

#[test]
fn qregex_mode_uses_regexes_and_ignores_patterns_file() {
    let mut d = Dir::new();
    d.file("badmailfrom", "^spam[0-9]+@\n@regex\\.example$\n!@\n");
    d.file("badmailpatterns", "*@never.example\n");
    d.env("QREGEX", "1");
    let p = d.load();
    assert!(p.qregex());
    let c = conn(C);
    assert_eq!(
        rule(&p.check_mail(&c, "SPAM42@x.y").verdict),
        "badmailfrom:1"
    );
    assert_eq!(
        rule(&p.check_mail(&c, "who@regex.example").verdict),
        "badmailfrom:2"
    );
    assert!(p.check_mail(&c, "spam@x.y").verdict.is_accept());
    assert!(p.check_mail(&c, "a@never.example").verdict.is_accept());
    // `!@`: a sender without any @ "matches" by not matching.
    assert_eq!(
        rule(&p.check_mail(&c, "localonly").verdict),
        "badmailfrom:3"
    );

    // control/qregex turns it on as well; QREGEX=0 in the environment wins over the file.
    let mut d = Dir::new();
    d.file("qregex", "1\n").file("badmailfrom", "^x.*@y$\n");
    assert!(d.load().qregex());
    d.env("QREGEX", "0");
    assert!(!d.load().qregex());
}

#[test]
fn errors_name_file_and_line_and_all_are_reported() {
    let mut d = Dir::new();
    d.env("QREGEX", "1").env("BODYCHECK", "");
    d.file("badmailfrom", "ok@x\n\n(unclosed\n");
    d.file("badrcptto", "[z-a]\n");
    d.file(
        "hostaccess",
        "example.com:1.2.3.4\nnocolon\nexample.org:1.2.x.4\n",
    );
    d.file("accesslist", "from:a@b:c@d\nbogus:a:b\nrcpt:onlyone\n");
    d.file("from.envrules", ".*:DATABYTES=1\nno-colon-here\nx:JUNK\n");
    d.file("bodycheck", "fine:ok\n(bad:comment\n");
    let errs = d.errors();
    let at = |f: &str, l: usize| {
        errs.iter()
            .any(|e| e.file.ends_with(f) && e.line == Some(l))
    };
    assert!(at("badmailfrom", 3), "{errs:?}");
    assert!(at("badrcptto", 1));
    assert!(at("hostaccess", 2) && at("hostaccess", 3));
    assert!(at("accesslist", 2) && at("accesslist", 3));
    assert!(at("from.envrules", 2) && at("from.envrules", 3));
    assert!(at("bodycheck", 2));
    assert_eq!(errs.len(), 9, "{errs:#?}");
    let shown = errs
        .iter()
        .find(|e| e.file.ends_with("badmailfrom"))
        .unwrap()
        .to_string();
    assert!(
        shown.contains("badmailfrom:3: bad regular expression \"(unclosed\""),
        "{shown}"
    );
    assert!(matches!(
        errs[0].kind,
        PolicyErrorKind::Regex { .. } | PolicyErrorKind::Syntax { .. }
    ));
}

#[test]
fn unreadable_file_is_an_error() {
    let mut d = Dir::new();
    fs::create_dir(d.path().join("badmailfrom")).unwrap();
    d.env("X", "y");
    let errs = d.errors();
    assert!(matches!(errs[0].kind, PolicyErrorKind::Io(_)) && errs[0].line.is_none());
}

#[test]
fn blackholedsender_blackholes_but_badmailfrom_still_rejects() {
    let mut d = Dir::new();
    d.file("blackholedsender", "@hole.example\n")
        .file("blackholedpatterns", "*@pit.*\n!keep@pit.example\n");
    d.file("badmailfrom", "bad@hole.example\n");
    let p = d.load();
    let c = conn(C);
    let m = p.check_mail(&c, "x@hole.example");
    assert_eq!(
        m.verdict,
        Verdict::Blackhole {
            rule: "blackholedsender:1".into()
        }
    );
    assert!(m.env.contains(&("NULLQUEUE".into(), Some("1".into()))));
    assert_eq!(
        rule(&p.check_mail(&c, "y@pit.example").verdict),
        "blackholedpatterns:1"
    );
    assert!(p.check_mail(&c, "keep@pit.example").verdict.is_accept());
    assert_eq!(
        code(&p.check_mail(&c, "bad@hole.example").verdict),
        Some(553)
    );
    assert!(p.check_mail(&c, "x@elsewhere").verdict.is_accept());
}

#[test]
fn relaymailfrom_sets_relay_only_for_non_relay_clients() {
    let mut d = Dir::new();
    d.file("relaymailfrom", "@trusted.example\nboss@corp.example\n");
    let p = d.load();
    assert!(p.check_mail(&conn(C), "a@trusted.example").relay);
    assert!(p.check_mail(&conn(C), "boss@corp.example").relay);
    assert!(!p.check_mail(&conn(C), "other@corp.example").relay);
    let mut c = conn(C);
    c.relay_client = true;
    assert!(!p.check_mail(&c, "a@trusted.example").relay);
}

#[test]
fn envrules_override_databytes_for_one_sender_only() {
    let mut d = Dir::new();
    d.file(
        "from.envrules",
        "*@big.example:DATABYTES=50000000,NODNSCHECK=1\nvip@big.example:DATABYTES=,SPAMFILTER=\n:NULLQUEUE=1\n",
    );
    let p = d.load();
    let c = conn(C);
    let m = p.check_mail(&c, "someone@big.example");
    assert_eq!(
        m.env,
        vec![
            ("DATABYTES".into(), Some("50000000".into())),
            ("NODNSCHECK".into(), Some("1".into()))
        ]
    );
    // Later lines win: vip's DATABYTES is unset again.
    let m = p.check_mail(&c, "VIP@big.example");
    assert_eq!(m.env[0], ("DATABYTES".into(), None));
    assert_eq!(m.env[2], ("SPAMFILTER".into(), None));
    assert!(p.check_mail(&c, "other@small.example").env.is_empty());
    // Empty pattern: null sender only.
    assert_eq!(
        p.check_mail(&c, "").env,
        vec![("NULLQUEUE".into(), Some("1".into()))]
    );
}

#[test]
fn envrules_switch_list_files_and_flags_per_sender() {
    let mut d = Dir::new();
    d.file("from.envrules", "*@strict.example:BADRCPTTO=badrcptto.strict,BOUNCEMAIL=go away\n*@odd.example:BADMAILFROM=bmf.odd\n");
    d.file("badrcptto.strict", "@secret.example\n")
        .file("bmf.odd", "*@odd.example\n");
    let p = d.load();
    let c = conn(C);
    assert_eq!(
        rule(&p.check_rcpt(&c, "a@strict.example", "x@secret.example")),
        "badrcptto.strict:1"
    );
    assert!(p
        .check_rcpt(&c, "a@other.example", "x@secret.example")
        .is_accept());
    let v = p.check_mail(&c, "a@strict.example").verdict;
    assert_eq!(v.to_string(), "553 5.7.1 go away");
    assert_eq!(
        rule(&p.check_mail(&c, "z@odd.example").verdict),
        "bmf.odd:1"
    );
}

#[test]
fn hostaccess_pairs_ranges_paranoid_masquerade() {
    let mut d = Dir::new();
    d.file(
        "hostaccess",
        "yahoo.com:202.144.77.5\nabc.com:202.10-33.54.5\nindimail.org:*\n*:10.1.1.1\n",
    );
    let p = d.load();
    let ok = |p: &Policy, ip: &str, s: &str| p.check_mail(&conn(ip), s).verdict.is_accept();
    assert!(ok(&p, "202.144.77.5", "a@yahoo.com"));
    assert!(ok(&p, "202.20.54.5", "a@abc.com"));
    assert!(ok(&p, "202.33.54.5", "a@ABC.com"));
    assert!(ok(&p, "8.8.8.8", "a@indimail.org"));
    assert!(ok(&p, "10.1.1.1", "a@anything.example"));
    // The IP is reserved for yahoo.com: another domain from it is refused...
    let v = p
        .check_mail(&conn("202.144.77.5"), "a@other.example")
        .verdict;
    assert_eq!(v.to_string(), "553 5.7.1 sorry, your host has been denied");
    assert_eq!(rule(&v), "hostaccess:1");
    // ...unless DOMAIN_MASQUERADE relaxes it.
    d.env("DOMAIN_MASQUERADE", "1");
    assert!(ok(&d.load(), "202.144.77.5", "a@other.example"));
    // A listed domain from an unlisted IP passes, unless PARANOID.
    assert!(ok(&p, "198.51.100.1", "a@abc.com"));
    d.env("PARANOID", "1");
    assert!(!ok(&d.load(), "198.51.100.1", "a@abc.com"));
    assert!(!ok(&d.load(), "202.34.54.5", "a@abc.com"));
    // Unrelated domain and IP: allowed.
    assert!(ok(&p, "198.51.100.1", "a@unrelated.example"));
    // IPv4-mapped IPv6 is the IPv4 client.
    assert!(ok(&p, "::ffff:202.144.77.5", "a@yahoo.com"));
}

#[test]
fn hostaccess_null_sender_and_env_file() {
    let mut d = Dir::new();
    d.file("ha", "<>:192.0.2.1\n").env("HOSTACCESS", "ha");
    let p = d.load();
    assert!(p.check_mail(&conn("192.0.2.1"), "").verdict.is_accept());
    assert_eq!(
        code(&p.check_mail(&conn("192.0.2.1"), "x@y.example").verdict),
        Some(553)
    );
}

#[test]
fn badhelo_enabled_by_env_and_fqdn() {
    let mut d = Dir::new();
    d.file("badhelo", "localhost\n*.dynamic.example\n");
    assert!(
        d.load().check_helo("localhost").is_accept(),
        "needs BADHELOCHECK"
    );
    d.env("BADHELOCHECK", "");
    let p = d.load();
    let v = p.check_helo("LocalHost");
    assert_eq!(
        v.to_string(),
        "553 5.7.1 sorry, your HELO/EHLO greeting is in my badhelo list"
    );
    assert_eq!(rule(&p.check_helo("h1.dynamic.example")), "badhelo:2");
    assert!(p.check_helo("mx.example.com").is_accept());
    d.env("ENFORCE_FQDN_HELO", "1");
    let p = d.load();
    assert_eq!(
        p.check_helo("nodots").to_string(),
        "451 4.3.0 unable to accept non-FQDN HELO"
    );
    assert!(p.check_helo("mx.example.com").is_accept());
}

#[test]
fn badhost_gives_553() {
    let mut d = Dir::new();
    d.file("badhost", "dialup.example.net\n*.dyn.example.org\n");
    let p = d.load();
    assert!(!p.wants_client_name(), "needs BADHOSTCHECK");
    assert!(p.check_client_name("dialup.example.net").is_accept());
    d.env("BADHOSTCHECK", "");
    let p = d.load();
    assert!(p.wants_client_name());
    assert_eq!(
        p.check_client_name("Dialup.Example.NET.").to_string(),
        "553 5.7.1 sorry, your host (dialup.example.net) has been denied"
    );
    assert_eq!(code(&p.check_client_name("h1.dyn.example.org")), Some(553));
    assert!(p.check_client_name("mx.example.org").is_accept());
}

#[test]
fn badip_gives_421() {
    let mut d = Dir::new();
    d.file("badip", "192.0.2.66\n198.51.100.*\n2001:db8::bad\n");
    assert!(
        d.load()
            .check_connect("192.0.2.66".parse().unwrap())
            .is_accept(),
        "needs BADIPCHECK"
    );
    d.env("BADIPCHECK", "1");
    let p = d.load();
    let v = p.check_connect("192.0.2.66".parse().unwrap());
    assert_eq!(
        v.to_string(),
        "421 4.7.1 sorry, your IP (192.0.2.66) is temporarily denied"
    );
    assert_eq!(
        code(&p.check_connect("198.51.100.7".parse().unwrap())),
        Some(421)
    );
    assert_eq!(
        code(&p.check_connect("2001:db8::bad".parse().unwrap())),
        Some(421)
    );
    assert!(p.check_connect("192.0.2.67".parse().unwrap()).is_accept());
}

#[test]
fn rcpt_relay_probes() {
    let p = Dir::new().load();
    let c = conn(C);
    for bad in ["a%b@example.com", "a!b@example.com", "a@b@example.com"] {
        assert_eq!(
            p.check_rcpt(&c, "s@x", bad).to_string(),
            "550 5.7.1 we don't relay",
            "{bad}"
        );
    }
    assert!(p.check_rcpt(&c, "s@x", "plain@example.com").is_accept());
}

#[test]
fn badrcptto_goodrcptto_and_patterns() {
    let mut d = Dir::new();
    d.file("badrcptto", "@closed.example\nold@example.com\n");
    d.file(
        "badrcptpatterns",
        "*-bounces@*\n!list-bounces@example.com\n",
    );
    d.file("goodrcptto", "postmaster@closed.example\n");
    d.file("goodrcptpatterns", "abuse@*\n");
    let p = d.load();
    let c = conn(C);
    let v = p.check_rcpt(&c, "s@x", "anyone@closed.example");
    assert_eq!(
        v.to_string(),
        "553 5.7.1 sorry, your envelope recipient has been denied"
    );
    assert_eq!(rule(&v), "badrcptto:1");
    assert_eq!(
        rule(&p.check_rcpt(&c, "s@x", "Old@Example.com")),
        "badrcptto:2"
    );
    assert_eq!(
        rule(&p.check_rcpt(&c, "s@x", "x-bounces@example.net")),
        "badrcptpatterns:1"
    );
    assert!(p
        .check_rcpt(&c, "s@x", "list-bounces@example.com")
        .is_accept());
    // goodrcptto / goodrcptpatterns bypass the bad lists.
    assert!(p
        .check_rcpt(&c, "s@x", "postmaster@closed.example")
        .is_accept());
    assert!(p.check_rcpt(&c, "s@x", "abuse@closed.example").is_accept());
}

#[test]
fn blackholedrcpt_unless_good() {
    let mut d = Dir::new();
    d.file("blackholedrcpt", "@trap.example\n")
        .file("blackholedrcptpatterns", "honey*@*\n");
    d.file("goodrcptto", "real@trap.example\n");
    let p = d.load();
    let c = conn(C);
    assert_eq!(
        p.check_rcpt(&c, "s@x", "a@trap.example"),
        Verdict::Blackhole {
            rule: "blackholedrcpt:1".into()
        }
    );
    assert_eq!(
        rule(&p.check_rcpt(&c, "s@x", "honeypot@x.example")),
        "blackholedrcptpatterns:1"
    );
    assert!(p.check_rcpt(&c, "s@x", "real@trap.example").is_accept());
    assert!(p.check_rcpt(&c, "s@x", "a@x.example").is_accept());
}

#[test]
fn accesslist_both_directions() {
    let mut d = Dir::new();
    d.file(
        "accesslist",
        "rcpt:ceo@corp.example:all@corp.example\nrcpt:md@corp.example:all@corp.example\nfrom:recruiter@jobs.example:hr@corp.example\nfrom:*@partner.example:*@corp.example\n",
    );
    let p = d.load();
    let c = conn(C);
    let deny = "553 5.7.1 sorry, sites access list denies transaction";
    // rcpt: only the CEO and MD may write to all@.
    assert!(p
        .check_rcpt(&c, "ceo@corp.example", "all@corp.example")
        .is_accept());
    assert!(p
        .check_rcpt(&c, "MD@corp.example", "all@corp.example")
        .is_accept());
    let v = p.check_rcpt(&c, "intern@corp.example", "all@corp.example");
    assert_eq!(v.to_string(), deny);
    assert_eq!(rule(&v), "accesslist:1");
    // from: the recruiter may write only to hr@.
    assert!(p
        .check_rcpt(&c, "recruiter@jobs.example", "hr@corp.example")
        .is_accept());
    assert_eq!(
        rule(&p.check_rcpt(&c, "recruiter@jobs.example", "ceo@corp.example")),
        "accesslist:3"
    );
    // Patterns on both sides.
    assert!(p
        .check_rcpt(&c, "a@partner.example", "x@corp.example")
        .is_accept());
    assert_eq!(
        p.check_rcpt(&c, "a@partner.example", "x@elsewhere.example")
            .to_string(),
        deny
    );
    // Unrelated pairs are untouched; bounces, postmaster and abuse are never refused.
    assert!(p
        .check_rcpt(&c, "someone@else.example", "hr@corp.example")
        .is_accept());
    assert!(p.check_rcpt(&c, "", "all@corp.example").is_accept());
    assert!(p
        .check_rcpt(&c, "recruiter@jobs.example", "postmaster@corp.example")
        .is_accept());
    assert!(p
        .check_rcpt(&c, "recruiter@jobs.example", "abuse")
        .is_accept());
}

#[test]
fn accesslist_regex_mode_and_env_file() {
    let mut d = Dir::new();
    d.file("acl2", "from:^spammy:@corp\\.example$\n")
        .env("ACCESSLIST", "acl2")
        .env("QREGEX", "1");
    let p = d.load();
    let c = conn(C);
    assert!(p
        .check_rcpt(&c, "spammy.bob@x", "a@corp.example")
        .is_accept());
    assert_eq!(
        code(&p.check_rcpt(&c, "spammy.bob@x", "a@other.example")),
        Some(553)
    );
    assert!(p.check_rcpt(&c, "nice@x", "a@other.example").is_accept());
}

#[test]
fn chkrcptdomains() {
    let mut d = Dir::new();
    d.file("chkrcptdomains", "@checked.example\nsingle@other.example\n");
    let p = d.load();
    assert!(p.chkrcpt_applies("a@checked.example"));
    assert!(p.chkrcpt_applies("checked.example"));
    assert!(p.chkrcpt_applies("single@other.example"));
    assert!(!p.chkrcpt_applies("a@other.example"));
    assert!(!p.chkrcpt_applies("unlisted.example"));
}

#[test]
fn auth_envrules_and_domainqueue() {
    let mut d = Dir::new();
    d.file(
        "auth.envrules",
        ":SPAMFILTER=,DKIMSIGN=/etc/key\n*@x:IGNORED=1\n",
    );
    d.file(
        "domainqueue",
        "big.example:QUEUEDIR=/var/indimail/queue/big\n*.example:QUEUE_COUNT=2\n",
    );
    let p = d.load();
    assert_eq!(
        p.auth_env(),
        vec![
            ("SPAMFILTER".into(), None),
            ("DKIMSIGN".into(), Some("/etc/key".into()))
        ]
    );
    assert_eq!(
        p.domain_queue_env("u@BIG.example"),
        vec![
            ("QUEUEDIR".into(), Some("/var/indimail/queue/big".into())),
            ("QUEUE_COUNT".into(), Some("2".into()))
        ]
    );
    assert!(p.domain_queue_env("u@other.net").is_empty());
}

fn scan(p: &Policy, msg: &[u8], step: usize) -> Verdict {
    let mut s = p.body_scanner().expect("bodycheck enabled");
    for chunk in msg.chunks(step) {
        s.feed(chunk);
    }
    s.finish()
}

#[test]
fn bodycheck_header_body_scopes_and_chunk_splits() {
    let mut d = Dir::new();
    d.env("BODYCHECK", "1");
    d.file(
        "bodycheck",
        "^Subject:.*cheap pills:pharma spam:-header\nwire the money:advance fee fraud:-body\nx-mailer: spamcannon:bulk tool\n^X-Trap: yes:trap:-headerblackhole\n",
    );
    let p = d.load();
    let clean = b"From: a@b\r\nSubject: hello\r\n\r\nnothing to see\r\n";
    let header_hit = b"From: a@b\r\nSubject: buy\r\n CHEAP pills now\r\n\r\nbody\r\n";
    let body_hit = b"From: a@b\r\nSubject: hi\r\n\r\nplease wire the money today\r\n";
    let scope_miss = b"From: a@b\r\nSubject: wire the money\r\n\r\ncheap pills in the body\r\n";
    let blackhole = b"X-Trap: yes\n\nbody\n";
    for step in [1, 2, 3, 7, 4096] {
        assert!(scan(&p, clean, step).is_accept(), "step {step}");
        let v = scan(&p, header_hit, step);
        assert_eq!(
            v.to_string(),
            "554 5.7.1 message content rejected: pharma spam",
            "step {step}"
        );
        assert_eq!(rule(&v), "bodycheck:1");
        assert_eq!(
            rule(&scan(&p, body_hit, step)),
            "bodycheck:2",
            "step {step}"
        );
        assert!(scan(&p, scope_miss, step).is_accept(), "step {step}");
        assert_eq!(
            scan(&p, blackhole, step),
            Verdict::Blackhole {
                rule: "bodycheck:4".into()
            }
        );
    }
    // Both scopes, an unterminated last line, case-insensitive.
    assert_eq!(
        rule(&scan(&p, b"Subject: x\n\nX-Mailer: SpamCannon", 1)),
        "bodycheck:3"
    );
}

#[test]
fn bodycheck_needs_env_and_caps_lines() {
    let mut d = Dir::new();
    d.file("bodycheck", "needle:found\n");
    assert!(d.load().body_scanner().is_none());
    d.env("BODYCHECK", "");
    let p = d.load();
    // A needle past MAX_LINE on one line is not seen; on its own line it is.
    let mut long = b"H: x\n\n".to_vec();
    long.extend(std::iter::repeat_n(b'a', crate::MAX_LINE + 10));
    long.extend_from_slice(b"needle\n");
    assert!(scan(&p, &long, 100).is_accept());
    long.extend_from_slice(b"needle\n");
    assert!(!scan(&p, &long, 100).is_accept());
    // BODYCHECK may name another file.
    let mut d = Dir::new();
    d.file("rules.alt", "other:alt rule\n")
        .env("BODYCHECK", "rules.alt");
    assert_eq!(rule(&scan(&d.load(), b"\nother\n", 1)), "rules.alt:1");
}

#[test]
fn large_lists_load() {
    let mut d = Dir::new();
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!("user{i}@spam{}.example\n", i % 97));
    }
    d.file("badmailfrom", &text);
    let p = d.load();
    assert_eq!(
        rule(&p.check_mail(&conn(C), "user9999@spam8.example").verdict),
        "badmailfrom:10000"
    );
    assert!(p
        .check_mail(&conn(C), "user9999@spam9.example")
        .verdict
        .is_accept());
}

#[test]
fn policy_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Policy>();
    shareable::<crate::BodyScanner>();
}

#[test]
fn compiled_cdb_lists_are_read_when_the_text_file_is_missing() {
    let mut d = Dir::new();
    for (name, keys) in [
        (
            "badmailfrom.cdb",
            &["spammer@bad.example", "@worse.example"][..],
        ),
        ("badrcptto.cdb", &["noone@example.com"][..]),
    ] {
        let mut w = cdb::CDBWriter::create(d.dir.path().join(name).display().to_string()).unwrap();
        for k in keys {
            w.add(k.as_bytes(), b"").unwrap();
        }
        w.finish().unwrap();
    }
    let p = d.load();
    let c = Conn {
        ip: "192.0.2.1".parse().unwrap(),
        relay_client: false,
        authenticated: None,
        helo: "h.example",
    };
    let v = p.check_mail(&c, "spammer@bad.example").verdict;
    match &v {
        Verdict::Reject { code, rule, .. } => {
            assert_eq!(*code, 553);
            assert!(rule.starts_with("badmailfrom.cdb:"), "{rule}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!p.check_mail(&c, "x@worse.example").verdict.is_accept());
    assert!(p.check_mail(&c, "ok@good.example").verdict.is_accept());
    assert!(!p
        .check_rcpt(&c, "a@b.example", "noone@example.com")
        .is_accept());
    // The text file, when present, wins.
    d.file("badmailfrom", "other@bad.example\n");
    let p = d.load();
    assert!(p.check_mail(&c, "spammer@bad.example").verdict.is_accept());
    assert!(!p.check_mail(&c, "other@bad.example").verdict.is_accept());
}
