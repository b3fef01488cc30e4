//! A writer for the "newc" cpio format the kernel unpacks as an initramfs. Written here rather than
//! through the `cpio` tool so device nodes and root ownership need no root and no staging directory.

use std::io::{self, Write};

/// What one archive member is. Paths are relative (no leading `/`), as the kernel expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const TRAILER: &str = "TRAILER!!!";

/// Writes the members in the order given (parents must come before their children), then the trailer.
pub fn write_archive<'a, W: Write>(
    out: &mut W,
    entries: impl IntoIterator<Item = (&'a str, &'a Entry)>,
) -> io::Result<()> {
    for (ino, (path, entry)) in (1..).zip(entries) {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir => (S_IFDIR | 0o755, &[], (0, 0)),
            Entry::File { mode, data } => (S_IFREG | (mode & 0o7777), data, (0, 0)),
            Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
            Entry::CharDev { mode, major, minor } => {
                (S_IFCHR | (mode & 0o7777), &[], (*major, *minor))
            }
        };
        write_member(out, ino, path, mode, data, rdev)?;
    }
    write_member(out, 0, TRAILER, 0, &[], (0, 0))
}

fn write_member<W: Write>(
    out: &mut W,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> io::Result<()> {
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: too big for cpio"),
        )
    };
    let size = u32::try_from(data.len()).map_err(|_| too_big())?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad(out, data.len())
}

/// Header+name and data are each padded to a multiple of 4 bytes.
fn pad<W: Write>(out: &mut W, len: usize) -> io::Result<()> {
    let rem = len % 4;
    if rem != 0 {
        out.write_all(&[0; 3][..4 - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn header_layout_and_padding() {
        let file = Entry::File {
            mode: 0o644,
            data: b"hello".to_vec(),
        };
        let mut out = Vec::new();
        write_archive(&mut out, [("a", &file)]).unwrap();
        assert_eq!(&out[..6], b"070701");
        // 110-byte header + "a\0" = 112 (aligned), then 5 data bytes padded to 8.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..117], b"hello");
        assert_eq!(&out[117..120], &[0, 0, 0]);
        assert_eq!(out.len() % 4, 0);
        assert!(String::from_utf8_lossy(&out).contains(TRAILER));
    }

    /// The `cpio` tool (a host package these tests need anyway) must read what we write.
    #[test]
    fn cpio_tool_lists_the_members() {
        let entries = [
            ("bin".to_owned(), Entry::Dir),
            (
                "bin/sh".to_owned(),
                Entry::Symlink {
                    target: "busybox".into(),
                },
            ),
            (
                "bin/x".to_owned(),
                Entry::File {
                    mode: 0o755,
                    data: vec![1, 2, 3],
                },
            ),
            ("dev".to_owned(), Entry::Dir),
            (
                "dev/console".to_owned(),
                Entry::CharDev {
                    mode: 0o600,
                    major: 5,
                    minor: 1,
                },
            ),
        ];
        let mut out = Vec::new();
        write_archive(&mut out, entries.iter().map(|(p, e)| (p.as_str(), e))).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run cpio");
        child.stdin.take().unwrap().write_all(&out).unwrap();
        let listing = child.wait_with_output().unwrap();
        assert!(listing.status.success());
        let text = String::from_utf8_lossy(&listing.stdout);
        for needle in [
            "bin/sh -> busybox",
            "bin/x",
            "crw-------",
            "dev/console",
            "-rwxr-xr-x",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
