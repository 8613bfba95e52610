//! `/proc/self/mountinfo`: which filesystem holds a path, and with which
//! options (see proc(5), "/proc/pid/mountinfo").

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{lossy, TuningError};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Unique id of the mount.
    pub id: u32,
    /// Id of the parent mount.
    pub parent: u32,
    /// `st_dev` of files on this filesystem, as `(major, minor)`.
    pub dev: (u32, u32),
    /// The directory of the filesystem that forms this mount's root.
    #[serde(serialize_with = "lossy")]
    pub root: PathBuf,
    /// Where it is mounted.
    #[serde(serialize_with = "lossy")]
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
    /// Filesystem type (`ext4`, `nfs4`).
    pub fstype: String,
    /// The mounted source (`/dev/vda1`, `server:/export`).
    #[serde(serialize_with = "lossy")]
    pub source: PathBuf,
    /// Per-superblock options (`rw,data=ordered`).
    pub super_options: String,
}

impl Mount {
    /// Whether `name` (or `name=...`) is among the per-mount or
    /// per-superblock options; returns its value (`""` for a flag).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .split(',')
            .chain(self.super_options.split(','))
            .find_map(|o| match o.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                None if o == name => Some(""),
                _ => None,
            })
    }

    /// True for kernel-internal filesystems (proc, sysfs, cgroup…) that never
    /// hold a queue and only clutter a listing.
    pub fn is_pseudo(&self) -> bool {
        PSEUDO_FS.contains(&self.fstype.as_str())
    }
}

const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "sysfs",
    "tracefs",
];

/// Parses the whole of a mountinfo file; a bad line is an error naming it
/// (the kernel never writes one, so it means we misread the format).
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, TuningError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|problem| TuningError::BadMountInfo {
                line: i + 1,
                problem,
            })
        })
        .collect()
}

/// Parses one mountinfo line:
/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
pub fn parse_line(line: &str) -> Result<Mount, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    // The optional fields end at a lone "-"; fields 0..=5 come before it.
    let sep = fields
        .iter()
        .position(|f| *f == "-")
        .ok_or_else(|| "no ` - ` separator".to_string())?;
    if sep < 6 || fields.len() < sep + 3 {
        return Err(format!("too few fields ({})", fields.len()));
    }
    let num = |s: &str, what: &str| -> Result<u32, String> {
        s.parse()
            .map_err(|_| format!("{what} `{s}` is not a number"))
    };
    let (major, minor) = fields[2]
        .split_once(':')
        .ok_or_else(|| format!("device `{}` is not MAJOR:MINOR", fields[2]))?;
    Ok(Mount {
        id: num(fields[0], "mount id")?,
        parent: num(fields[1], "parent id")?,
        dev: (num(major, "major")?, num(minor, "minor")?),
        root: unescape_path(fields[3]),
        mount_point: unescape_path(fields[4]),
        options: fields[5].to_string(),
        fstype: fields[sep + 1].to_string(),
        source: unescape_path(fields[sep + 2]),
        super_options: fields.get(sep + 3).copied().unwrap_or("").to_string(),
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash). Paths are bytes, so the result is too; a
/// backslash not followed by three octal digits is kept as written.
pub fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && is_octal3(&b[i + 1..i + 4]) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn is_octal3(b: &[u8]) -> bool {
    // `\400` and above do not fit a byte; the kernel only escapes bytes.
    b.len() == 3
        && (b'0'..=b'3').contains(&b[0])
        && b[1..].iter().all(|c| (b'0'..=b'7').contains(c))
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

/// The mount holding `path`: the last-mounted entry whose mount point is the
/// longest prefix of it. `path` should be canonical (symlinks resolved),
/// since mount points are.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    // Later lines are mounted later and hide earlier ones at the same point,
    // hence max_by_key keeping the last of equal lengths.
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict
36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue
40 27 8:17 / /var/spool/my\\040queue rw,noatime - xfs /dev/sdb1 rw,attr2,inode64,nobarrier
41 27 0:45 / /srv/nfs rw,relatime - nfs4 server:/export\\040x rw,vers=4.2,hard,async
42 27 8:33 / /data rw - ext4 /dev/sdc1 rw,data=writeback
";

    #[test]
    fn parses_fields() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[1].dev, (254, 0));
        assert_eq!(m[1].mount_point, Path::new("/"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, Path::new("/dev/vda"));
        assert_eq!(m[2].root, Path::new("/mnt1"));
        assert_eq!(m[2].options, "rw,noatime");
        assert_eq!(m[2].fstype, "ext3");
        assert_eq!(m[2].super_options, "rw,errors=continue");
        assert!(m[0].is_pseudo());
        assert!(!m[1].is_pseudo());
    }

    #[test]
    fn unescapes_octal() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(m[3].mount_point, Path::new("/var/spool/my queue"));
        assert_eq!(m[4].source, Path::new("server:/export x"));
        assert_eq!(unescape(r"a\011b\012c\134d"), b"a\tb\nc\\d");
        // Not an escape: kept verbatim.
        assert_eq!(unescape(r"a\9b\04"), br"a\9b\04");
        assert_eq!(unescape(r"\777"), br"\777");
        // Non-UTF-8 bytes survive.
        let p = unescape_path(r"/x\377y");
        assert_eq!(p.as_os_str().as_bytes(), b"/x\xffy");
    }

    #[test]
    fn options_lookup() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(m[3].option("nobarrier"), Some(""));
        assert_eq!(m[5].option("data"), Some("writeback"));
        assert_eq!(m[4].option("async"), Some(""));
        assert_eq!(m[4].option("vers"), Some("4.2"));
        assert_eq!(m[1].option("nobarrier"), None);
        assert_eq!(m[1].option("noatim"), None);
    }

    #[test]
    fn finds_longest_prefix() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        let at = |p: &str| mount_of(&m, Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(
            at("/var/spool/my queue/queue1"),
            Path::new("/var/spool/my queue")
        );
        assert_eq!(at("/var/spool/myqueue"), Path::new("/"));
        assert_eq!(at("/data"), Path::new("/data"));
        assert_eq!(at("/database"), Path::new("/"));
    }

    #[test]
    fn later_mount_hides_earlier() {
        let text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / /q rw - ext4 /dev/sda2 rw\n3 1 8:3 / /q rw - xfs /dev/sda3 rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(mount_of(&m, Path::new("/q/queue1")).unwrap().id, 3);
    }

    #[test]
    fn bad_lines_are_errors() {
        for bad in [
            "garbage",
            "1 2 3:4 / / rw shared:1 ext4 /dev/x rw",
            "1 2 34 / / rw - ext4 /dev/x rw",
            "x 2 3:4 / / rw - ext4 /dev/x rw",
            "1 2 3:4 / / - ext4",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} accepted");
        }
        let err = parse_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\nbad\n").unwrap_err();
        assert!(matches!(err, TuningError::BadMountInfo { line: 2, .. }));
    }
}
