//! `indimail domain limits` and vlimit: a domain's limits (the vlimits row).

use std::io::Write;

use clap::Args;

use super::dates::{format_time, parse_expiry};
use super::getopt::{getopt, operand, opt_value, unknown_program};
use super::{CliError, DirectoryCommand, DomainCommand};
use crate::{Admin, Limits, Quota};

/// `indimail domain limits` (vlimit): every value is kept as given and checked in one place
/// for both command lines.
#[derive(Debug, Clone, Args, Default)]
pub struct LimitsArgs {
    /// Domain name.
    pub domain: String,
    /// Show the limits (the default when nothing is set) (-s).
    #[arg(long)]
    pub show: bool,
    /// Delete the domain's limits: the defaults apply again (-d / -D).
    #[arg(long, conflicts_with = "show")]
    pub delete: bool,
    /// Domain expiry: -1 (never), Unix seconds or YYYY-MM-DD[ HH:MM[:SS]] UTC (-e).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub domain_expiry: Option<String>,
    /// Password expiry, as --domain-expiry (-t).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub passwd_expiry: Option<String>,
    /// Domain disk quota: bytes[K|M|G], 0 or NOQUOTA for none (-Q).
    #[arg(long, value_name = "QUOTA")]
    pub disk_quota: Option<String>,
    /// Domain message count quota, 0 for none (-M).
    #[arg(long, value_name = "N")]
    pub max_msgcount: Option<String>,
    /// Default quota of new users: bytes[K|M|G], 0 for the hard quota (-q).
    #[arg(long, value_name = "QUOTA")]
    pub default_quota: Option<String>,
    /// Default message count quota of new users (-m).
    #[arg(long, value_name = "N")]
    pub default_maxmsgcount: Option<String>,
    /// Maximum mailboxes, -1 unlimited (-P).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_pop_accounts: Option<String>,
    /// Maximum aliases, -1 unlimited (-A).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_aliases: Option<String>,
    /// Maximum forwards, -1 unlimited (-F).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_forwards: Option<String>,
    /// Maximum autoresponders, -1 unlimited (-R).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_autoresponders: Option<String>,
    /// Maximum mailing lists, -1 unlimited (-L).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_mailinglists: Option<String>,
    /// Services denied to the whole domain, replacing the current set (-g): letters
    /// u dialup, d password changing, p POP, w webmail, i IMAP, r relay, s SMTP; x none.
    #[arg(long, value_name = "LETTERS")]
    pub flags: Option<String>,
    /// What non-postmaster admins may not do to accounts (-p): letters c create,
    /// m modify, d delete, a all; x none.
    #[arg(long, value_name = "LETTERS")]
    pub perm_account: Option<String>,
    /// ... to aliases (-a).
    #[arg(long, value_name = "LETTERS")]
    pub perm_alias: Option<String>,
    /// ... to forwards (-f).
    #[arg(long, value_name = "LETTERS")]
    pub perm_forward: Option<String>,
    /// ... to autoresponders (-r).
    #[arg(long, value_name = "LETTERS")]
    pub perm_autoresponder: Option<String>,
    /// ... to mailing lists (-l).
    #[arg(long, value_name = "LETTERS")]
    pub perm_maillist: Option<String>,
    /// ... to quotas (-x).
    #[arg(long, value_name = "LETTERS")]
    pub perm_quota: Option<String>,
    /// ... to the default quota (-z).
    #[arg(long, value_name = "LETTERS")]
    pub perm_defaultquota: Option<String>,
}

/// A count: `-1`/`unlimited` or a non-negative number.
pub(super) fn parse_count(what: &str, v: &str) -> Result<i64, CliError> {
    if v == "-1" || v.eq_ignore_ascii_case("unlimited") {
        return Ok(-1);
    }
    v.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| CliError::Usage(format!("{what}: expected -1 or a count, got {v:?}")))
}

/// A size in bytes: `bytes[K|M|G]`, `0` or `NOQUOTA` (none).
pub(super) fn parse_size(what: &str, v: &str) -> Result<i64, CliError> {
    if v == "0" {
        return Ok(0);
    }
    match Quota::parse(v) {
        Ok(Quota::Unlimited) => Ok(0),
        Ok(Quota::Limit { bytes, .. }) => {
            i64::try_from(bytes).map_err(|_| CliError::Usage(format!("{what}: {v} is too large")))
        }
        Err(_) => Err(CliError::Usage(format!(
            "{what}: expected bytes[K|M|G] or NOQUOTA, got {v:?}"
        ))),
    }
}

/// vlimit -g letters and the columns they set.
pub(super) const LIMIT_FLAGS: [(char, &str); 7] = [
    ('u', "no-dialup"),
    ('d', "no-passwd-change"),
    ('p', "no-pop"),
    ('w', "no-webmail"),
    ('i', "no-imap"),
    ('r', "no-relay"),
    ('s', "no-smtp"),
];

/// The `disable_*` columns in [`LIMIT_FLAGS`] order.
pub(super) fn flag_slots(l: &mut Limits) -> [&mut bool; 7] {
    [
        &mut l.disable_dialup,
        &mut l.disable_passwordchanging,
        &mut l.disable_pop,
        &mut l.disable_webmail,
        &mut l.disable_imap,
        &mut l.disable_relay,
        &mut l.disable_smtp,
    ]
}

/// Permission letters: c create 1, m modify 2, d delete 4, a all 7; x none.
pub(super) fn parse_perm(what: &str, v: &str) -> Result<i64, CliError> {
    v.chars().try_fold(0i64, |acc, c| match c {
        'c' => Ok(acc | 1),
        'm' => Ok(acc | 2),
        'd' => Ok(acc | 4),
        'a' => Ok(acc | 7),
        'x' => Ok(acc),
        _ => Err(CliError::Usage(format!(
            "{what}: unknown permission letter {c:?} (c, m, d, a or x)"
        ))),
    })
}

pub(super) fn perm_names(p: i64) -> String {
    let n: Vec<&str> = [(1, "create"), (2, "modify"), (4, "delete")]
        .iter()
        .filter(|(b, _)| p & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if n.is_empty() {
        "none".into()
    } else {
        format!("deny {}", n.join(","))
    }
}

/// Apply the set options of `a` to `l`; whether any was given.
pub(super) fn apply_limits(a: &LimitsArgs, l: &mut Limits) -> Result<bool, CliError> {
    type Parse = fn(&str, &str) -> Result<i64, CliError>;
    let nonneg: Parse = |w, v| parse_count(w, v).map(|n| n.max(0));
    let fields: [(&Option<String>, &str, Parse, &mut i64); 18] = [
        (
            &a.domain_expiry,
            "domain expiry",
            parse_expiry,
            &mut l.domain_expiry,
        ),
        (
            &a.passwd_expiry,
            "password expiry",
            parse_expiry,
            &mut l.passwd_expiry,
        ),
        (&a.disk_quota, "disk quota", parse_size, &mut l.diskquota),
        (&a.max_msgcount, "max msgcount", nonneg, &mut l.maxmsgcount),
        (
            &a.default_quota,
            "default quota",
            parse_size,
            &mut l.defaultquota,
        ),
        (
            &a.default_maxmsgcount,
            "default maxmsgcount",
            nonneg,
            &mut l.defaultmaxmsgcount,
        ),
        (
            &a.max_pop_accounts,
            "max pop accounts",
            parse_count,
            &mut l.maxpopaccounts,
        ),
        (
            &a.max_aliases,
            "max aliases",
            parse_count,
            &mut l.maxaliases,
        ),
        (
            &a.max_forwards,
            "max forwards",
            parse_count,
            &mut l.maxforwards,
        ),
        (
            &a.max_autoresponders,
            "max autoresponders",
            parse_count,
            &mut l.maxautoresponders,
        ),
        (
            &a.max_mailinglists,
            "max mailing lists",
            parse_count,
            &mut l.maxmailinglists,
        ),
        (
            &a.perm_account,
            "account permissions",
            parse_perm,
            &mut l.perm_account,
        ),
        (
            &a.perm_alias,
            "alias permissions",
            parse_perm,
            &mut l.perm_alias,
        ),
        (
            &a.perm_forward,
            "forward permissions",
            parse_perm,
            &mut l.perm_forward,
        ),
        (
            &a.perm_autoresponder,
            "autoresponder permissions",
            parse_perm,
            &mut l.perm_autoresponder,
        ),
        (
            &a.perm_maillist,
            "mailing list permissions",
            parse_perm,
            &mut l.perm_maillist,
        ),
        (
            &a.perm_quota,
            "quota permissions",
            parse_perm,
            &mut l.perm_quota,
        ),
        (
            &a.perm_defaultquota,
            "default quota permissions",
            parse_perm,
            &mut l.perm_defaultquota,
        ),
    ];
    let mut any = false;
    for (v, what, parse, slot) in fields {
        if let Some(v) = v {
            *slot = parse(what, v)?;
            any = true;
        }
    }
    if let Some(v) = &a.flags {
        let mut on = [false; 7];
        for c in v.chars() {
            match LIMIT_FLAGS.iter().position(|(f, _)| *f == c) {
                Some(i) => on[i] = true,
                None if c == 'x' => on = [false; 7],
                None => {
                    return Err(CliError::Usage(format!(
                        "flags: unknown letter {c:?} (u d p w i r s, or x)"
                    )))
                }
            }
        }
        for (slot, v) in flag_slots(l).into_iter().zip(on) {
            *slot = v;
        }
        any = true;
    }
    Ok(any)
}

/// vlimit -s: one `key: value` line per limit.
pub(super) fn print_limits(out: &mut dyn Write, l: &Limits, stored: bool) -> std::io::Result<()> {
    let when = |t: i64| {
        if t < 0 {
            "never".to_string()
        } else {
            format!("{} ({t})", format_time(t))
        }
    };
    let count = |n: i64| {
        if n < 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    let size = |n: i64| {
        if n <= 0 {
            "none".to_string()
        } else {
            n.to_string()
        }
    };
    writeln!(out, "domain: {}", l.domain)?;
    writeln!(
        out,
        "source: {}",
        if stored { "vlimits" } else { "defaults" }
    )?;
    writeln!(out, "domain expiry: {}", when(l.domain_expiry))?;
    writeln!(out, "password expiry: {}", when(l.passwd_expiry))?;
    writeln!(out, "max pop accounts: {}", count(l.maxpopaccounts))?;
    writeln!(out, "max aliases: {}", count(l.maxaliases))?;
    writeln!(out, "max forwards: {}", count(l.maxforwards))?;
    writeln!(out, "max autoresponders: {}", count(l.maxautoresponders))?;
    writeln!(out, "max mailing lists: {}", count(l.maxmailinglists))?;
    writeln!(out, "disk quota: {}", size(l.diskquota))?;
    writeln!(out, "max msgcount: {}", size(l.maxmsgcount))?;
    writeln!(out, "default quota: {}", size(l.defaultquota))?;
    writeln!(out, "default maxmsgcount: {}", size(l.defaultmaxmsgcount))?;
    let values = [
        l.disable_dialup,
        l.disable_passwordchanging,
        l.disable_pop,
        l.disable_webmail,
        l.disable_imap,
        l.disable_relay,
        l.disable_smtp,
    ];
    let on: Vec<&str> = values
        .into_iter()
        .zip(LIMIT_FLAGS)
        .filter(|(v, _)| *v)
        .map(|(_, (_, n))| n)
        .collect();
    writeln!(
        out,
        "flags: {}",
        if on.is_empty() {
            "none".to_string()
        } else {
            on.join(",")
        }
    )?;
    for (what, p) in [
        ("account", l.perm_account),
        ("alias", l.perm_alias),
        ("forward", l.perm_forward),
        ("autoresponder", l.perm_autoresponder),
        ("maillist", l.perm_maillist),
        ("quota", l.perm_quota),
        ("defaultquota", l.perm_defaultquota),
    ] {
        writeln!(out, "perm {what}: {}", perm_names(p))?;
    }
    Ok(())
}

pub(super) async fn run_limits(
    admin: &Admin,
    a: LimitsArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if a.delete {
        admin.limits_del(&a.domain).await?;
        writeln!(out, "limits of {} deleted", a.domain.to_ascii_lowercase())?;
        return Ok(());
    }
    let stored = admin.limits_get(&a.domain).await?;
    let had = stored.is_some();
    let mut l = stored.unwrap_or_else(|| Limits::defaults(&a.domain.to_ascii_lowercase()));
    if apply_limits(&a, &mut l)? {
        admin.limits_set(&l).await?;
        writeln!(out, "limits of {} set", l.domain)?;
        if a.show {
            print_limits(out, &l, true)?;
        }
    } else {
        print_limits(out, &l, had)?;
    }
    Ok(())
}

/// vlimit as a command.
pub(super) fn limits_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "vlimit" => {
            let (o, r) = getopt(args, "vsdDe:t:Q:M:q:m:P:A:F:R:L:g:p:a:f:r:l:x:z:")?;
            let has = |l: char| o.iter().any(|(c, _)| *c == l);
            DirectoryCommand::Domain(DomainCommand::Limits(Box::new(LimitsArgs {
                domain: operand(&r, 0, "domain")?,
                show: has('s'),
                delete: has('d') || has('D'),
                domain_expiry: opt_value(&o, 'e'),
                passwd_expiry: opt_value(&o, 't'),
                disk_quota: opt_value(&o, 'Q'),
                max_msgcount: opt_value(&o, 'M'),
                default_quota: opt_value(&o, 'q'),
                default_maxmsgcount: opt_value(&o, 'm'),
                max_pop_accounts: opt_value(&o, 'P'),
                max_aliases: opt_value(&o, 'A'),
                max_forwards: opt_value(&o, 'F'),
                max_autoresponders: opt_value(&o, 'R'),
                max_mailinglists: opt_value(&o, 'L'),
                flags: opt_value(&o, 'g'),
                perm_account: opt_value(&o, 'p'),
                perm_alias: opt_value(&o, 'a'),
                perm_forward: opt_value(&o, 'f'),
                perm_autoresponder: opt_value(&o, 'r'),
                perm_maillist: opt_value(&o, 'l'),
                perm_quota: opt_value(&o, 'x'),
                perm_defaultquota: opt_value(&o, 'z'),
            })))
        }
        other => return Err(unknown_program(other)),
    })
}
