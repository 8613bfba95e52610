//! Dates on the command line and in output: Unix seconds to and from UTC calendar dates.

use super::CliError;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// An expiry: `-1`/`never`, Unix seconds, or `YYYY-MM-DD[ HH:MM[:SS]]` (UTC).
pub(super) fn parse_expiry(what: &str, v: &str) -> Result<i64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "{what}: expected -1, Unix seconds or YYYY-MM-DD[ HH:MM[:SS]], got {v:?}"
        ))
    };
    let v = v.trim();
    if v == "-1" || v.eq_ignore_ascii_case("never") {
        return Ok(-1);
    }
    if let Ok(n) = v.parse::<i64>() {
        return if n >= 0 { Ok(n) } else { Err(bad()) };
    }
    let (date, time) = v.split_once([' ', 'T']).unwrap_or((v, "00:00:00"));
    let num = |s: &str, lo: i64, hi: i64| -> Result<i64, CliError> {
        s.parse::<i64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(bad)
    };
    let dp: Vec<&str> = date.split('-').collect();
    let tp: Vec<&str> = time.split(':').collect();
    if dp.len() != 3 || !(2..=3).contains(&tp.len()) {
        return Err(bad());
    }
    let (y, m, d) = (
        num(dp[0], 1970, 9999)?,
        num(dp[1], 1, 12)?,
        num(dp[2], 1, 31)?,
    );
    let secs = num(tp[0], 0, 23)? * 3600
        + num(tp[1], 0, 59)? * 60
        + tp.get(2).map(|s| num(s, 0, 60)).transpose()?.unwrap_or(0);
    Ok(days_from_civil(y, m, d) * 86_400 + secs)
}
