//! The checkpassword interface (as used by Dovecot's `checkpassword` passdb/userdb, and by
//! qmail-style auth chains): read `user\0password\0timestamp\0` from fd 3, answer by exit
//! code — 0 ok (and exec `argv[1..]` when given), 1 bad user or password, 2 misuse,
//! 111 temporary failure — and, when it execs, export `USER` and `HOME`.
//!
//! Dovecot's userdb lookups call the checker with `AUTHORIZED=1` in the environment: then the
//! password is not checked (the user was authenticated otherwise) and `AUTHORIZED=2` is
//! exported to the reply program, as Dovecot's documentation requires.
//!
//! With Dovecot (`passdb { driver = checkpassword, args = indimail --home H checkpassword }`,
//! `userdb { driver = prefetch }`), the program exec'd is Dovecot's `checkpassword-reply`,
//! which turns the environment into the login's fields: `USER` becomes the canonical user
//! name (`user@domain`), `HOME` the userdb home (`pw_dir`, so `mail_location =
//! maildir:~/Maildir` finds the user's Maildir), and the variables named in `EXTRA` are
//! passed on. The checker exports `userdb_uid` and `userdb_gid` there: the owner of `pw_dir`,
//! the account that delivers into it (Dovecot's recommended way rather than `setuid`). A
//! login name of the proxies' form `user@domain:clientip` (spec 6) is checked as
//! `user@domain`.

use std::io::Read;
use std::path::Path;

use crate::model::AuthResult;
use crate::{Directory, LookupError, RefreshMode};

/// Largest request read from fd 3 (qmail's checkpassword reads at most 512 bytes).
pub const MAX_REQUEST: usize = 512;

/// Exit: success.
pub const EXIT_OK: i32 = 0;
/// Exit: bad user or password.
pub const EXIT_FAIL: i32 = 1;
/// Exit: misuse (malformed request).
pub const EXIT_MISUSE: i32 = 2;
/// Exit: temporary failure.
pub const EXIT_TEMP: i32 = 111;

/// What the checker decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit with this code.
    Exit(i32),
    /// Authentication succeeded: exec `program` with these extra environment variables.
    Exec {
        /// argv of the program.
        program: Vec<String>,
        /// Variables to export.
        env: Vec<(String, String)>,
    },
}

/// Split `user\0password\0timestamp\0` (the timestamp and trailing fields are optional, as
/// qmail's checkpassword accepts). `None` when malformed.
pub fn parse_request(buf: &[u8]) -> Option<(String, String)> {
    let mut parts = buf.split(|&b| b == 0);
    let user = parts.next()?;
    let pass = parts.next()?;
    if user.is_empty() || buf.iter().filter(|&&b| b == 0).count() < 2 {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

/// Decide for one request. `authorized` is the `AUTHORIZED` environment value, and
/// `default_domain` `DEFAULT_DOMAIN` (appended to a user without `@`).
pub async fn decide(
    dir: &Directory,
    request: &[u8],
    program: &[String],
    authorized: Option<&str>,
    default_domain: Option<&str>,
) -> Outcome {
    let Some((mut user, pass)) = parse_request(request) else {
        return Outcome::Exit(EXIT_MISUSE);
    };
    strip_client_ip(&mut user);
    if !user.contains('@') {
        match default_domain {
            Some(d) if !d.is_empty() => user = format!("{user}@{d}"),
            _ => return Outcome::Exit(EXIT_FAIL),
        }
    }
    let userdb_only = authorized == Some("1");
    let result = if userdb_only {
        match dir.user(&user).await {
            Ok(Some(u)) if u.active => Ok(AuthResult::Ok(u)),
            Ok(Some(u)) => Ok(AuthResult::Inactive(u)),
            Ok(None) => Ok(AuthResult::NoSuchUser),
            Err(e) => Err(e),
        }
    } else {
        dir.check_password(&user, &pass).await
    };
    match result {
        Ok(AuthResult::Ok(u)) => {
            if program.is_empty() {
                return Outcome::Exit(AuthResult::Ok(u).exit_code());
            }
            let mut env = vec![
                ("USER".to_string(), u.email()),
                ("HOME".to_string(), u.dir.to_string_lossy().into_owned()),
            ];
            if let Some((uid, gid)) = owner(&u.dir) {
                env.push(("userdb_uid".to_string(), uid.to_string()));
                env.push(("userdb_gid".to_string(), gid.to_string()));
                env.push(("EXTRA".to_string(), "userdb_uid userdb_gid".to_string()));
            }
            if userdb_only {
                env.push(("AUTHORIZED".to_string(), "2".to_string()));
            }
            Outcome::Exec {
                program: program.to_vec(),
                env,
            }
        }
        Ok(_) => Outcome::Exit(EXIT_FAIL),
        Err(LookupError::InvalidAddress(_) | LookupError::InvalidDomain(_)) => {
            Outcome::Exit(EXIT_FAIL)
        }
        Err(_) => Outcome::Exit(EXIT_TEMP),
    }
}

/// `user@domain:clientip` → `user@domain`: the login name the proxies use towards a
/// mailstore (spec 6). IndiMail's own auth modules strip the suffix the same way. The part
/// after the first `:` of the domain is dropped (a domain never holds `:`, an IPv6 address
/// does).
pub fn strip_client_ip(user: &mut String) {
    if let Some(at) = user.rfind('@') {
        if let Some(colon) = user[at..].find(':') {
            user.truncate(at + colon);
        }
    }
}

/// uid and gid owning `dir`, when it exists.
fn owner(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).ok()?;
    Some((m.uid(), m.gid()))
}

/// The whole program: read fd 3, decide, exec or return the exit code.
pub fn run(home: &Path, program: &[String]) -> i32 {
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    // /dev/fd/3 rather than from_raw_fd: no unsafe, same descriptor.
    match std::fs::File::open("/dev/fd/3") {
        Ok(f) => {
            if f.take(MAX_REQUEST as u64 + 1)
                .read_to_end(&mut buf)
                .is_err()
            {
                return EXIT_MISUSE;
            }
        }
        Err(_) => return EXIT_MISUSE,
    }
    if buf.len() > MAX_REQUEST {
        return EXIT_MISUSE;
    }
    let authorized = std::env::var("AUTHORIZED").ok();
    let default_domain = std::env::var("DEFAULT_DOMAIN").ok();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return EXIT_TEMP,
    };
    let outcome = rt.block_on(async {
        let cfg = match crate::DirectoryConfig::from_home(home) {
            Ok(c) => c,
            Err(_) => return Outcome::Exit(EXIT_TEMP),
        };
        let dir = match Directory::open_with(
            cfg,
            std::rc::Rc::new(crate::SystemClock::default()),
            RefreshMode::Inline,
        )
        .await
        {
            Ok(d) => d,
            Err(_) => return Outcome::Exit(EXIT_TEMP),
        };
        let o = decide(
            &dir,
            &buf,
            program,
            authorized.as_deref(),
            default_domain.as_deref(),
        )
        .await;
        dir.close().await;
        o
    });
    drop(rt);
    match outcome {
        Outcome::Exit(c) => c,
        Outcome::Exec { program, env } => {
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&program[0])
                .args(&program[1..])
                .envs(env)
                .exec();
            eprintln!("checkpassword: cannot exec {}: {err}", program[0]);
            EXIT_TEMP
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parsing() {
        assert_eq!(
            parse_request(b"a@b\0pw\x00123\0"),
            Some(("a@b".into(), "pw".into()))
        );
        assert_eq!(
            parse_request(b"a@b\0pw\0"),
            Some(("a@b".into(), "pw".into()))
        );
        assert_eq!(parse_request(b"a@b"), None);
        assert_eq!(parse_request(b"\0pw\0"), None);
        assert_eq!(parse_request(b"a@b\0\xff\0"), None);
    }

    #[test]
    fn client_ip_suffix() {
        for (given, want) in [
            ("a@b.c:127.0.0.1", "a@b.c"),
            ("a@b.c:::1", "a@b.c"),
            ("a@b.c", "a@b.c"),
            ("a:x@b.c", "a:x@b.c"),
            ("nodomain", "nodomain"),
        ] {
            let mut u = given.to_string();
            strip_client_ip(&mut u);
            assert_eq!(u, want, "{given}");
        }
    }
}
