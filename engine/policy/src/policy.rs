//! The [`Policy`] snapshot: loading every control file, and the HELO / connect / MAIL / RCPT
//! checks in the order qmail-smtpd applies them (spec 2.2, 2.4, 2.5).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::accesslist::AccessList;
use crate::addrlist::{AddrRule, ListFile, PatFile};
use crate::bodycheck::{BodyRules, BodyScanner};
use crate::control::{first_int, resolve, scan_int, Reader, SqlFetch};
use crate::envrules::{EnvAssign, EnvRules};
use crate::error::PolicyError;
use crate::hostaccess::HostAccess;
use crate::recipients::Recipients;
use crate::{Conn, MailVerdict, Verdict};

/// Which list a file-name variable selects. `(variable, default file, role)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    List,
    Patterns,
    HostAccess,
    AccessList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    BadMailFrom,
    BlackholedSender,
    BlackholedRcpt,
    BadRcptTo,
    GoodRcptTo,
    Host,
    Acl,
}

/// Variables that name a control file and may be switched per sender by `from.envrules`.
const FILE_VARS: &[(&str, &str, Role, Slot)] = &[
    ("BADMAILFROM", "badmailfrom", Role::List, Slot::BadMailFrom),
    (
        "BADMAILPATTERNS",
        "badmailpatterns",
        Role::Patterns,
        Slot::BadMailFrom,
    ),
    (
        "BLACKHOLEDSENDER",
        "blackholedsender",
        Role::List,
        Slot::BlackholedSender,
    ),
    (
        "BLACKHOLEDPATTERNS",
        "blackholedpatterns",
        Role::Patterns,
        Slot::BlackholedSender,
    ),
    (
        "BLACKHOLEDRCPT",
        "blackholedrcpt",
        Role::List,
        Slot::BlackholedRcpt,
    ),
    (
        "BLACKHOLEDRCPTPATTERNS",
        "blackholedrcptpatterns",
        Role::Patterns,
        Slot::BlackholedRcpt,
    ),
    ("BADRCPTTO", "badrcptto", Role::List, Slot::BadRcptTo),
    (
        "BADRCPTPATTERNS",
        "badrcptpatterns",
        Role::Patterns,
        Slot::BadRcptTo,
    ),
    ("GOODRCPTTO", "goodrcptto", Role::List, Slot::GoodRcptTo),
    (
        "GOODRCPTPATTERNS",
        "goodrcptpatterns",
        Role::Patterns,
        Slot::GoodRcptTo,
    ),
    ("HOSTACCESS", "hostaccess", Role::HostAccess, Slot::Host),
    ("ACCESSLIST", "accesslist", Role::AccessList, Slot::Acl),
];

/// Flag variables `from.envrules` may set or unset per sender with an effect on these checks.
const FLAG_VARS: &[&str] = &["PARANOID", "DOMAIN_MASQUERADE", "BOUNCEMAIL"];

#[derive(Debug, Clone)]
enum Loaded {
    List(Option<Arc<ListFile>>),
    Patterns(Option<Arc<PatFile>>),
    Host(Arc<HostAccess>),
    Acl(Arc<AccessList>),
}

/// An immutable snapshot of every SMTP access control IndiMail reads from its control
/// directory. Cheap to share (`Send + Sync`); reload by building a new one and swapping it in.
#[derive(Debug)]
pub struct Policy {
    sources: Vec<(PathBuf, Option<SystemTime>)>,
    /// Some list has a `.sql` variant: its rows change without a file changing.
    uses_sql: bool,
    qregex: bool,
    enforce_fqdn_helo: bool,
    badhelo: Option<AddrRule>,
    badip: Option<AddrRule>,
    badhost: Option<AddrRule>,
    bmf: AddrRule,
    bhs: AddrRule,
    bhr: AddrRule,
    brt: AddrRule,
    grt: AddrRule,
    rmf: AddrRule,
    chkrcpt: AddrRule,
    recipients: Recipients,
    host: Arc<HostAccess>,
    acl: Arc<AccessList>,
    paranoid: bool,
    masquerade: bool,
    bouncemail: Option<String>,
    from_rules: EnvRules,
    auth_rules: EnvRules,
    domainqueue: EnvRules,
    /// Files `from.envrules` may switch to, by (role, name as written).
    pool: HashMap<(Role, String), Loaded>,
    /// True when some `from.envrules` line changes a file or flag RCPT checks use, so
    /// `check_rcpt` must re-evaluate the rules for the sender.
    rules_touch_rcpt: bool,
    rules_touch_mail: bool,
    body: Option<Arc<BodyRules>>,
}

/// The per-transaction view after `from.envrules` switched files or flags.
struct Effective<'a> {
    bmf: Cow<'a, AddrRule>,
    bhs: Cow<'a, AddrRule>,
    bhr: Cow<'a, AddrRule>,
    brt: Cow<'a, AddrRule>,
    grt: Cow<'a, AddrRule>,
    host: &'a HostAccess,
    acl: &'a AccessList,
    paranoid: bool,
    masquerade: bool,
    bouncemail: Option<Cow<'a, str>>,
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// The client address as tcpserver prints it (`TCPREMOTEIP`): IPv4-mapped IPv6 as dotted quad.
fn ip_text(ip: IpAddr) -> String {
    crate::canonical_ip(ip).to_string()
}

/// `key` in an enabled connect-time list (`badip`, `badhost`): refused with `code`.
fn listed(
    rule: Option<&AddrRule>,
    key: &str,
    code: u16,
    enhanced: (u8, u16, u16),
    text: impl FnOnce() -> String,
) -> Verdict {
    match rule.and_then(|r| r.matches(key)) {
        Some(hit) => reject(code, enhanced, text(), hit),
        None => Verdict::Accept,
    }
}

fn reject(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>, rule: String) -> Verdict {
    Verdict::Reject {
        code,
        enhanced,
        text: text.into(),
        rule,
    }
}

/// The state of one [`Policy`] load: what has been read, the problems found so far, and the
/// files `from.envrules` may switch to.
struct Loader<'a, 'r> {
    control_dir: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// QREGEX mode: list lines are regular expressions, patterns files are not read.
    qregex: bool,
    rd: Reader<'r>,
    errors: Vec<PolicyError>,
    pool: HashMap<(Role, String), Loaded>,
}

impl Loader<'_, '_> {
    fn file(&self, name: &str) -> PathBuf {
        resolve(self.control_dir, name)
    }

    /// QREGEX: the environment wins; else control/qregex. Non-zero = regex mode.
    fn qregex_mode(&mut self) -> bool {
        match (self.env)("QREGEX") {
            Some(v) => scan_int(&v).unwrap_or(0) != 0,
            None => {
                let f = self.rd.read(self.file("qregex"));
                match first_int(&f) {
                    Ok(v) => v.unwrap_or(0) != 0,
                    Err(e) => {
                        self.errors.push(e);
                        false
                    }
                }
            }
        }
    }

    /// The rules file `var` names, else `default`.
    fn env_rules(&mut self, var: &str, default: &str, qregex: bool) -> EnvRules {
        let name = nonempty((self.env)(var)).unwrap_or_else(|| default.into());
        let f = self.rd.read(self.file(&name));
        EnvRules::load(&f, qregex, &mut self.errors)
    }

    /// Loads `name` in `role` into the pool, once.
    fn load_into_pool(&mut self, role: Role, name: &str) {
        if self.pool.contains_key(&(role, name.to_string())) {
            return;
        }
        let path = self.file(name);
        let f = if role == Role::List {
            self.rd.read_list(path)
        } else {
            self.rd.read(path)
        };
        let (qregex, errors) = (self.qregex, &mut self.errors);
        let loaded = match role {
            Role::List => Loaded::List(ListFile::load(&f, qregex, errors)),
            // Patterns files are not consulted in QREGEX mode.
            Role::Patterns => Loaded::Patterns(if qregex { None } else { PatFile::load(&f) }),
            Role::HostAccess => Loaded::Host(Arc::new(HostAccess::load(&f, errors))),
            Role::AccessList => Loaded::Acl(Arc::new(AccessList::load(&f, qregex, errors))),
        };
        self.pool.insert((role, name.to_string()), loaded);
    }

    /// Loads the file each of [`FILE_VARS`] names, and its standard one; returns the name in
    /// force for each variable.
    fn file_vars(&mut self) -> HashMap<&'static str, String> {
        let mut defaults = HashMap::new();
        for (var, default, role, _) in FILE_VARS {
            let name = nonempty((self.env)(var)).unwrap_or_else(|| default.to_string());
            self.load_into_pool(*role, &name);
            // `VAR=` in a rule reverts to the file's standard name.
            self.load_into_pool(*role, default);
            defaults.insert(*var, name);
        }
        defaults
    }

    /// Loads every file `from_rules` may switch to; returns whether the rules touch the RCPT
    /// checks and the MAIL checks.
    fn switchable_files(&mut self, from_rules: &EnvRules) -> (bool, bool) {
        let (mut rules_touch_rcpt, mut rules_touch_mail) = (false, false);
        let rule_names: Vec<(String, Option<String>)> = from_rules
            .all_assignments()
            .map(|(_, a)| a.clone())
            .collect();
        for (k, v) in &rule_names {
            if let Some((_, _, role, slot)) = FILE_VARS.iter().find(|(var, ..)| var == k) {
                if let Some(name) = v {
                    self.load_into_pool(*role, name);
                }
                match slot {
                    Slot::BadMailFrom | Slot::BlackholedSender | Slot::Host => {
                        rules_touch_mail = true
                    }
                    _ => rules_touch_rcpt = true,
                }
            }
            if FLAG_VARS.contains(&k.as_str()) {
                rules_touch_mail = true;
            }
        }
        (rules_touch_rcpt, rules_touch_mail)
    }

    /// The list and patterns in force for `slot`.
    fn rule(&self, defaults: &HashMap<&str, String>, slot: Slot) -> AddrRule {
        let mut rule = AddrRule::default();
        for (var, _, role, s) in FILE_VARS {
            if *s != slot {
                continue;
            }
            match self.pool.get(&(*role, defaults[var].clone())) {
                Some(Loaded::List(l)) => rule.list = l.clone(),
                Some(Loaded::Patterns(p)) => rule.pats = p.clone(),
                _ => {}
            }
        }
        rule
    }

    /// A list no rule switches and no patterns file accompanies.
    fn plain_list(&mut self, name: &str) -> AddrRule {
        let f = self.rd.read_list(self.file(name));
        AddrRule {
            list: ListFile::load(&f, self.qregex, &mut self.errors),
            pats: None,
        }
    }

    /// A list consulted only when enabled, by `check_var` or by `name_var` (which also names
    /// the file, else `default`).
    fn enabled_list(&mut self, check_var: &str, name_var: &str, default: &str) -> Option<AddrRule> {
        let env = self.env;
        (env(check_var).is_some() || env(name_var).is_some()).then(|| {
            let name = nonempty(env(name_var)).unwrap_or_else(|| default.into());
            self.plain_list(&name)
        })
    }

    /// BODYCHECK enables content rules. Its value names the rules file when such a file
    /// exists; otherwise (BODYCHECK=1, BODYCHECK=) the standard `bodycheck` is used, which is
    /// what qmail-smtpd ends up reading in those cases.
    fn body_rules(&mut self) -> Option<Arc<BodyRules>> {
        let v = (self.env)("BODYCHECK")?;
        let name = if !v.is_empty() && self.file(&v).is_file() {
            v
        } else {
            "bodycheck".into()
        };
        let f = self.rd.read(self.file(&name));
        BodyRules::load(&f, &mut self.errors)
    }
}

impl Policy {
    /// Reads every control file that exists in `control_dir`, honouring the environment
    /// overrides the spec names (looked up through `env`, normally `|k| std::env::var(k).ok()`
    /// or the tcprules environment of the listener). Missing files are empty lists, as in
    /// qmail-smtpd. Every problem found (unreadable file, bad regex, malformed line) is
    /// reported with its file and line; the policy is only built when there are none.
    ///
    /// A list's `<name>.sql` variant is a load error here; [`Policy::load_with_sql`] reads them.
    pub fn load(
        control_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Policy, Vec<PolicyError>> {
        Self::load_from(control_dir, env, Reader::default())
    }

    /// [`Policy::load`], reading the `.sql` variants of list files (`badmailfrom.sql`, ...)
    /// through `sql`, which returns the rows of the table the file names.
    pub fn load_with_sql(
        control_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        sql: &SqlFetch,
    ) -> Result<Policy, Vec<PolicyError>> {
        let rd = Reader {
            sql: Some(sql),
            ..Reader::default()
        };
        Self::load_from(control_dir, env, rd)
    }

    fn load_from(
        control_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        rd: Reader<'_>,
    ) -> Result<Policy, Vec<PolicyError>> {
        let mut ld = Loader {
            control_dir,
            env,
            qregex: false,
            rd,
            errors: Vec::new(),
            pool: HashMap::new(),
        };
        ld.qregex = ld.qregex_mode();
        // The per-sender rules come first: the files they may switch to are loaded with the rest.
        let from_rules = ld.env_rules("FROMRULES", "from.envrules", ld.qregex);
        let auth_rules = ld.env_rules("AUTHRULES", "auth.envrules", ld.qregex);
        let domainqueue = ld.env_rules("DOMAINQUEUE", "domainqueue", false);
        let defaults = ld.file_vars();
        let (rules_touch_rcpt, rules_touch_mail) = ld.switchable_files(&from_rules);

        let bmf = ld.rule(&defaults, Slot::BadMailFrom);
        let bhs = ld.rule(&defaults, Slot::BlackholedSender);
        let bhr = ld.rule(&defaults, Slot::BlackholedRcpt);
        let brt = ld.rule(&defaults, Slot::BadRcptTo);
        let grt = ld.rule(&defaults, Slot::GoodRcptTo);
        let host = match ld
            .pool
            .get(&(Role::HostAccess, defaults["HOSTACCESS"].clone()))
        {
            Some(Loaded::Host(h)) => h.clone(),
            _ => Arc::new(HostAccess::default()),
        };
        let acl = match ld
            .pool
            .get(&(Role::AccessList, defaults["ACCESSLIST"].clone()))
        {
            Some(Loaded::Acl(a)) => a.clone(),
            _ => Arc::new(AccessList::default()),
        };

        let rmf = ld.plain_list("relaymailfrom");
        let chkrcpt = ld.plain_list("chkrcptdomains");
        let recipients = {
            let f = ld.rd.read(ld.file("recipients"));
            let home = control_dir.parent().unwrap_or(control_dir);
            Recipients::load(&f, home, &mut ld.rd)
        };
        // badhelo / badip are only consulted when enabled: BADHELOCHECK or BADHELO (file name).
        let badhelo = ld.enabled_list("BADHELOCHECK", "BADHELO", "badhelo");
        let badip = ld.enabled_list("BADIPCHECK", "BADIP", "badip");
        // badhost (client host names from PTR) when BADHOSTCHECK or BADHOST (file name).
        let badhost = ld.enabled_list("BADHOSTCHECK", "BADHOST", "badhost");
        let body = ld.body_rules();

        let Loader {
            qregex,
            mut rd,
            mut errors,
            pool,
            ..
        } = ld;
        errors.append(&mut rd.errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            uses_sql: rd.used_sql,
            sources: rd.sources,
            qregex,
            enforce_fqdn_helo: env("ENFORCE_FQDN_HELO").is_some(),
            badhelo,
            badip,
            badhost,
            bmf,
            bhs,
            bhr,
            brt,
            grt,
            rmf,
            chkrcpt,
            recipients,
            host,
            acl,
            paranoid: env("PARANOID").is_some(),
            masquerade: env("DOMAIN_MASQUERADE").is_some(),
            bouncemail: env("BOUNCEMAIL"),
            from_rules,
            auth_rules,
            domainqueue,
            pool,
            rules_touch_rcpt,
            rules_touch_mail,
            body,
        })
    }

    /// Every file consulted (existing or not) with its modification time at load. A reloader
    /// compares these against the file system and builds a new `Policy` when one differs.
    pub fn sources(&self) -> &[(PathBuf, Option<SystemTime>)] {
        &self.sources
    }

    /// True when some list is read from a MySQL table (a `.sql` variant): the table can
    /// change without any file changing, so a reloader refreshes such a policy now and then.
    pub fn uses_sql(&self) -> bool {
        self.uses_sql
    }

    /// True when any source file changed, appeared or disappeared since this snapshot was read.
    pub fn is_stale(&self) -> bool {
        self.sources
            .iter()
            .any(|(p, t)| std::fs::metadata(p).and_then(|m| m.modified()).ok() != *t)
    }

    /// True when list files are regexes (QREGEX / `control/qregex` non-zero).
    pub fn qregex(&self) -> bool {
        self.qregex
    }

    /// HELO/EHLO argument checks (spec 2.2/2.3). `ENFORCE_FQDN_HELO`: the name must contain a
    /// dot (`451 4.3.0`; qmail-smtpd applies it to non-relay clients only, so a driver skips the
    /// call for those). `badhelo` (when `BADHELOCHECK`/`BADHELO` enable it): `553 5.7.1`.
    pub fn check_helo(&self, helo: &str) -> Verdict {
        if self.enforce_fqdn_helo && !helo.contains('.') {
            return reject(
                451,
                (4, 3, 0),
                "unable to accept non-FQDN HELO",
                "ENFORCE_FQDN_HELO".into(),
            );
        }
        if let Some(rule) = &self.badhelo {
            if let Some(hit) = rule.matches(&helo.to_ascii_lowercase()) {
                return reject(
                    553,
                    (5, 7, 1),
                    "sorry, your HELO/EHLO greeting is in my badhelo list",
                    hit,
                );
            }
        }
        Verdict::Accept
    }

    /// Connection check before the greeting (spec 2.2 step 3): `badip`, when `BADIPCHECK` or
    /// `BADIP` enables it, gives `421 4.7.1` (the driver sends it and closes).
    pub fn check_connect(&self, ip: IpAddr) -> Verdict {
        let text = ip_text(ip);
        listed(self.badip.as_ref(), &text, 421, (4, 7, 1), || {
            format!("sorry, your IP ({text}) is temporarily denied")
        })
    }

    /// Whether the client's host name (its PTR) is needed: `badhost` is enabled.
    pub fn wants_client_name(&self) -> bool {
        self.badhost.is_some()
    }

    /// Connection check before the greeting (spec 2.2 step 4): the client's host name
    /// (`TCPREMOTEHOST`, from its PTR) in `badhost`, when `BADHOSTCHECK` or `BADHOST` enables
    /// it, gives `553 5.7.1`. A client without a name is not matched.
    pub fn check_client_name(&self, name: &str) -> Verdict {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        listed(self.badhost.as_ref(), &lower, 553, (5, 7, 1), || {
            format!("sorry, your host ({lower}) has been denied")
        })
    }

    fn effective<'a>(&'a self, env: &[EnvAssign]) -> Effective<'a> {
        let mut eff = Effective {
            bmf: Cow::Borrowed(&self.bmf),
            bhs: Cow::Borrowed(&self.bhs),
            bhr: Cow::Borrowed(&self.bhr),
            brt: Cow::Borrowed(&self.brt),
            grt: Cow::Borrowed(&self.grt),
            host: &self.host,
            acl: &self.acl,
            paranoid: self.paranoid,
            masquerade: self.masquerade,
            bouncemail: self.bouncemail.as_deref().map(Cow::Borrowed),
        };
        for (k, v) in env {
            match k.as_str() {
                "PARANOID" => eff.paranoid = v.is_some(),
                "DOMAIN_MASQUERADE" => eff.masquerade = v.is_some(),
                "BOUNCEMAIL" => eff.bouncemail = v.as_deref().map(|s| Cow::Owned(s.to_string())),
                _ => {}
            }
            let Some((_, default, role, slot)) = FILE_VARS.iter().find(|(var, ..)| var == k) else {
                continue;
            };
            let name = v.as_deref().unwrap_or(default);
            let Some(loaded) = self.pool.get(&(*role, name.to_string())) else {
                continue;
            };
            let target = match slot {
                Slot::BadMailFrom => &mut eff.bmf,
                Slot::BlackholedSender => &mut eff.bhs,
                Slot::BlackholedRcpt => &mut eff.bhr,
                Slot::BadRcptTo => &mut eff.brt,
                Slot::GoodRcptTo => &mut eff.grt,
                Slot::Host => {
                    if let Loaded::Host(h) = loaded {
                        eff.host = h;
                    }
                    continue;
                }
                Slot::Acl => {
                    if let Loaded::Acl(a) = loaded {
                        eff.acl = a;
                    }
                    continue;
                }
            };
            match loaded {
                Loaded::List(l) => target.to_mut().list = l.clone(),
                Loaded::Patterns(p) => target.to_mut().pats = p.clone(),
                _ => {}
            }
        }
        eff
    }

    /// MAIL FROM checks in spec 2.4 order: `from.envrules` (its assignments are returned in
    /// [`MailVerdict::env`] for this transaction; file and flag variables among them also
    /// switch the files used below), `hostaccess` (553 5.7.1), `blackholedsender`
    /// (+patterns: the message will be discarded, `NULLQUEUE=1` is added to `env`),
    /// `badmailfrom` (+`badmailpatterns`: 553 5.7.1), `BOUNCEMAIL` (553 with its text) and
    /// `relaymailfrom` (sets [`MailVerdict::relay`] for a client not already relaying).
    /// `sender` is the reverse path without brackets, empty for `<>`.
    pub fn check_mail(&self, c: &Conn<'_>, sender: &str) -> MailVerdict {
        let lower = sender.to_ascii_lowercase();
        let (mut env, _hits) = if self.from_rules.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            self.from_rules.apply(&lower)
        };
        let eff = if self.rules_touch_mail || self.rules_touch_rcpt {
            self.effective(&env)
        } else {
            self.effective(&[])
        };
        let done = |verdict, env| MailVerdict {
            verdict,
            env,
            relay: false,
        };

        if !eff.host.is_empty() {
            let domain = lower.rfind('@').map(|i| &lower[i + 1..]).unwrap_or("");
            if let Some(rule) = eff
                .host
                .check(&ip_text(c.ip), domain, eff.paranoid, eff.masquerade)
            {
                return done(
                    reject(553, (5, 7, 1), "sorry, your host has been denied", rule),
                    env,
                );
            }
        }
        let blackholed = if eff.bhs.is_empty() {
            None
        } else {
            eff.bhs.matches(&lower)
        };
        if let Some(rule) = eff.bmf.matches(&lower) {
            return done(
                reject(
                    553,
                    (5, 7, 1),
                    "sorry, your envelope sender has been denied",
                    rule,
                ),
                env,
            );
        }
        if let Some(text) = &eff.bouncemail {
            return done(
                reject(553, (5, 7, 1), text.to_string(), "BOUNCEMAIL".into()),
                env,
            );
        }
        let relay = !c.relay_client && self.rmf.matches(&lower).is_some();
        let verdict = match blackholed {
            Some(rule) => {
                crate::envrules::merge(&mut env, &[("NULLQUEUE".into(), Some("1".into()))]);
                Verdict::Blackhole { rule }
            }
            None => Verdict::Accept,
        };
        MailVerdict {
            verdict,
            env,
            relay,
        }
    }

    /// RCPT TO checks in spec 2.5 order: relay probes (`%`, `!` or a second `@` in the local
    /// part: `550 5.7.1 we don't relay`, as qmail-smtpd answers), `goodrcptto` /
    /// `goodrcptpatterns` (a match skips the bad and blackhole lists), `badrcptto` /
    /// `badrcptpatterns` (553 5.7.1), `accesslist` (553 5.7.1), `blackholedrcpt` (+patterns:
    /// `Blackhole`). Relaying (`rcpthosts`), CHECKRECIPIENT, limits and tarpitting stay with
    /// the driver; [`Policy::chkrcpt_applies`] answers the `chkrcptdomains` question.
    pub fn check_rcpt(&self, c: &Conn<'_>, sender: &str, rcpt: &str) -> Verdict {
        let _ = c;
        let lower = rcpt.to_ascii_lowercase();
        let local = lower.rfind('@').map(|i| &lower[..i]).unwrap_or(&lower);
        if local.bytes().any(|b| matches!(b, b'@' | b'%' | b'!')) {
            return reject(550, (5, 7, 1), "we don't relay", "relay-probe".into());
        }
        let lsender = sender.to_ascii_lowercase();
        let env = if self.rules_touch_rcpt {
            self.from_rules.apply(&lsender).0
        } else {
            Vec::new()
        };
        let eff = self.effective(&env);
        let good = !eff.grt.is_empty() && eff.grt.matches(&lower).is_some();
        if !good {
            if let Some(rule) = eff.brt.matches(&lower) {
                return reject(
                    553,
                    (5, 7, 1),
                    "sorry, your envelope recipient has been denied",
                    rule,
                );
            }
        }
        if let Some(rule) = eff.acl.check(&lsender, &lower) {
            return reject(
                553,
                (5, 7, 1),
                "sorry, sites access list denies transaction",
                rule,
            );
        }
        if !good {
            if let Some(rule) = eff.bhr.matches(&lower) {
                return Verdict::Blackhole { rule };
            }
        }
        Verdict::Accept
    }

    /// `chkrcptdomains`: whether CHECKRECIPIENT applies to this recipient (an address, or a
    /// bare domain). With no such file it applies to every rcpthosts domain.
    pub fn chkrcpt_applies(&self, rcpt_or_domain: &str) -> bool {
        if self.chkrcpt.is_empty() {
            return true;
        }
        let lower = rcpt_or_domain.to_ascii_lowercase();
        if lower.contains('@') {
            self.chkrcpt.matches(&lower).is_some()
        } else {
            self.chkrcpt.matches(&format!("@{lower}")).is_some()
        }
    }

    /// The RECIPIENTS extension (`recipients`), which CHECKRECIPIENT=2|3 consults.
    pub fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    /// `auth.envrules` (AUTHRULES), applied at DATA for relay or authenticated clients:
    /// the assignments of its null-pattern lines (the original matches them against "").
    pub fn auth_env(&self) -> Vec<EnvAssign> {
        self.auth_rules.apply("").0
    }

    /// `domainqueue` (DOMAINQUEUE) `domain:VAR=val,...` for one recipient: wildmat on its
    /// domain, later lines winning. Typically sets QUEUEDIR for the recipient's domain.
    pub fn domain_queue_env(&self, rcpt: &str) -> Vec<EnvAssign> {
        match rcpt.rfind('@') {
            Some(i) if i + 1 < rcpt.len() => {
                self.domainqueue
                    .apply(&rcpt[i + 1..].to_ascii_lowercase())
                    .0
            }
            _ => Vec::new(),
        }
    }

    /// Whether `domainqueue` has any line (so RCPT need not ask [`Policy::domain_queue_env`]).
    pub fn has_domain_queue(&self) -> bool {
        !self.domainqueue.is_empty()
    }

    /// The `domainqueue` file and each of its lines' number and assignments, in file order,
    /// for the engine to check the queues they name against the ones it serves.
    pub fn domain_queue_lines(&self) -> (&Path, Vec<(usize, &[EnvAssign])>) {
        (self.domainqueue.path(), self.domainqueue.lines().collect())
    }

    /// A fresh content scanner for one message, when BODYCHECK enabled rules that exist.
    pub fn body_scanner(&self) -> Option<BodyScanner> {
        self.body.as_ref().map(|r| BodyScanner::new(r.clone()))
    }
}
