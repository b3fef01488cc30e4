//! `/proc/self/mountinfo`: which filesystem is mounted where, and from which device number.

use std::path::{Component, Path, PathBuf};

/// One line of mountinfo (the fields this crate needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the filesystem's device (`0:N` for virtual filesystems, btrfs, overlay).
    pub dev: (u32, u32),
    /// Where it is mounted (findmnt's TARGET).
    pub target: PathBuf,
    pub fstype: String,
    /// The mount source (`/dev/sda1`, `overlay`, `tmpfs`…).
    pub source: String,
    /// Per-superblock options (`lowerdir=…` for overlay).
    pub super_options: String,
    /// In a shared peer group (`shared:N`): mounts made below it propagate to its peers.
    pub shared: bool,
}

/// Read and parse a mountinfo file.
pub fn read(path: &Path) -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // 36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let dev = left.nth(2)?;
    let mount_point = left.nth(1)?;
    // After the mount options come the optional fields (`shared:N`, `master:N`…).
    let shared = left.skip(1).any(|f| f.starts_with("shared:"));
    let (major, minor) = dev.split_once(':')?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let source = right.next().unwrap_or_default();
    let super_options = right.next().unwrap_or_default();
    Some(Mount {
        dev: (major.parse().ok()?, minor.parse().ok()?),
        target: PathBuf::from(unescape(mount_point)),
        fstype: unescape(fstype),
        source: unescape(source),
        super_options: unescape(super_options),
        shared,
    })
}

/// The kernel writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.len() >= i + 4
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path`: the last-mounted of those with the longest mount point that is an
/// ancestor of `path` (compared by components, so `/boot` does not hold `/bootx`).
pub fn containing<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if is_within(path, &m.target) && best.is_none_or(|b| depth(&m.target) >= depth(&b.target)) {
            best = Some(m);
        }
    }
    best
}

/// Whether `path` is `dir` or below it, by components.
pub fn is_within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,mode=755
90 27 179:1 / /boot/firmware rw,relatime - vfat /dev/mmcblk0p1 rw
91 27 8:17 / /var/lib/p2p\\040vps/mnt/v1 rw,noatime - ext4 /dev/sdb1 rw
92 27 0:40 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a:/b,upperdir=/c,workdir=/d
garbage line
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].dev, (254, 0));
        assert_eq!(m[0].target, Path::new("/"));
        assert_eq!(m[0].source, "/dev/vda");
        assert_eq!(m[3].target, Path::new("/var/lib/p2p vps/mnt/v1"));
        assert_eq!(m[3].fstype, "ext4");
        assert!(m[4].super_options.contains("lowerdir=/a:/b"));
    }

    #[test]
    fn containing_prefers_the_deepest_and_the_latest() {
        let mut m = parse(SAMPLE);
        let find = |m: &[Mount], p: &str| containing(m, Path::new(p)).unwrap().dev;
        assert_eq!(find(&m, "/boot/firmware/config.txt"), (179, 1));
        assert_eq!(find(&m, "/boot/firmwarex"), (254, 0));
        assert_eq!(find(&m, "/var/lib/p2p vps/mnt/v1/docker"), (8, 17));
        assert_eq!(find(&m, "/etc"), (254, 0));
        // Mounted over: the later line wins.
        m.push(parse("99 27 8:33 / /boot/firmware rw - ext4 /dev/sdc1 rw")[0].clone());
        assert_eq!(find(&m, "/boot/firmware"), (8, 33));
    }
}
