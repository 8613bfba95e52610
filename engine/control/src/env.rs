//! IndiMail's environment variables: numbers, switches, and a setting that
//! may come from a variable or a control file, the variable winning.

use std::path::PathBuf;

use crate::{ControlDir, ControlError};

fn env_error(name: &str, problem: &str) -> ControlError {
    ControlError {
        path: PathBuf::from(format!("${name}")),
        line: None,
        problem: problem.to_string(),
    }
}

/// `QMAIL_EXT` (spec 4.6): extension addresses of virtual users are resolved,
/// `user-ext@domain` being `user`'s (the user before the first `-`), at RCPT
/// and at delivery alike. Off unless set (and not `0`), as in IndiMail.
pub fn qmail_ext() -> bool {
    std::env::var("QMAIL_EXT").is_ok_and(|v| v.trim() != "0")
}

/// A number from the environment, or `default` when unset.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ControlError> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| env_error(name, &format!("`{v}` is not a valid number"))),
    }
}

/// A setting that may come from a variable or a control file, the variable
/// winning (qmail-smtpd's order for `DATABYTES`, `MAXRECIPIENTS`...).
pub fn var_or_control<T: std::str::FromStr + Copy>(
    control: &ControlDir,
    var: &str,
    file: &str,
    default: T,
) -> Result<T, ControlError> {
    match std::env::var(var) {
        Ok(_) => env_number(var, default),
        Err(_) => control.number(file, default),
    }
}

/// The system's host name (`me` when the control file is missing).
pub fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates
    // within it on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    if ok && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_string()
    }
}
