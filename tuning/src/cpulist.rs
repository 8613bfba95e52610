//! Linux CPU lists (`0-3,6`), as in sysfs and in the engine's `control/cpus`.

use crate::TuningError;

/// Parses a CPU list such as `0-3,6,8-9` into CPU numbers, in the order
/// written (the engine starts shard `k` on the `k`-th listed CPU, so order
/// matters and is kept). Duplicates are rejected: a CPU listed twice would
/// give the engine two shards fighting over one core.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, TuningError> {
    let bad = |why: &str| TuningError::BadCpuList {
        list: text.trim().to_string(),
        problem: why.to_string(),
    };
    let mut out: Vec<usize> = Vec::new();
    for part in text.trim().split(',').map(str::trim) {
        if part.is_empty() {
            // sysfs writes an empty line for an empty set; `0,,1` is a typo.
            if text.trim().is_empty() {
                break;
            }
            return Err(bad("empty element"));
        }
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a.trim()), number(b.trim())),
            None => (number(part), number(part)),
        };
        let (first, last) = match (first, last) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(bad(&format!("`{part}` is not a CPU number or range"))),
        };
        if first > last {
            return Err(bad(&format!("range `{part}` runs backwards")));
        }
        // CPU_SETSIZE is 1024 on Linux; anything far beyond is a typo, and
        // refusing it keeps `0-4294967295` from allocating gigabytes.
        if last >= MAX_CPUS {
            return Err(bad(&format!("CPU {last} is beyond {}", MAX_CPUS - 1)));
        }
        for cpu in first..=last {
            if out.contains(&cpu) {
                return Err(bad(&format!("CPU {cpu} listed twice")));
            }
            out.push(cpu);
        }
    }
    Ok(out)
}

/// Highest CPU number accepted plus one (the kernel's `CPU_SETSIZE` ×4, so
/// large hosts pass while typos do not).
pub const MAX_CPUS: usize = 4096;

fn number(s: &str) -> Option<usize> {
    // `str::parse` accepts a leading `+`; CPU lists never have one.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Formats CPUs as a compact list, keeping their order: each ascending run
/// of two or more becomes a range (`0-3`, `0-1`), as the kernel writes them.
/// Order is kept because it is the engine's shard order.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_singles() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("0-3,6\n").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list(" 1 ").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list("8-9,0-1").unwrap(), vec![8, 9, 0, 1]);
        assert_eq!(parse_cpu_list("5-5").unwrap(), vec![5]);
    }

    #[test]
    fn empty_sysfs_line_is_an_empty_set() {
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            "a", "3-1", "0,,1", "1-", "-1", "+1", "0-5000", "1,1", "0-2,2", "1 2",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_compactly_and_keeps_order() {
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(format_cpu_list(&[0, 1]), "0-1");
        assert_eq!(format_cpu_list(&[4, 0, 2]), "4,0,2");
        assert_eq!(format_cpu_list(&[8, 9, 10, 0, 1]), "8-10,0-1");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn round_trips() {
        for list in ["0-3,6", "1,3,5", "12-15,0-3", "7"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(list).unwrap()), list);
        }
    }
}
