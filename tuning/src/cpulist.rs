//! Linux CPU lists (`0-3,6`), as in sysfs and in the engine's `control/cpus`.

use crate::TuningError;

/// Parses a CPU list such as `0-3,6,8-9` into CPU numbers, in the order
/// written (the engine starts shard `k` on the `k`-th listed CPU). The
/// parser is the engine's own (`queue-layout`), so both read a list alike.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, TuningError> {
    queue_layout::parse_cpu_list(text).map_err(|e| TuningError::BadCpuList {
        list: text.trim().to_string(),
        problem: e.to_string(),
    })
}

/// Highest CPU number accepted plus one.
pub const MAX_CPUS: usize = queue_layout::MAX_CPUS;

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
