//! `storageDevice: "none"`: each rental's volume is a fixed-size ext4 file, its blocks reserved up
//! front, loop-mounted (root and loop devices: this host has both). Filling it stops at its size,
//! and the host's filesystem keeps its free space.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use p2pvps_governor::storage::{DirStorage, Storage};

/// Free bytes of the filesystem holding `path` (as `df` sees it).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
}

/// A filesystem of the test's own (tmpfs: other work on this host does not move its free space),
/// unmounted when dropped.
struct Host(tempfile::TempDir);

impl Host {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=96m", "p2pvps-test-host"])
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs");
        Self(tmp)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_volume_stops_the_renter_not_the_host() {
    const MB: u64 = 1 << 20;
    let tmp = Host::new();
    let root = tmp.path().join("storage");
    let s = DirStorage::new(&root).sized(32 * MB);
    let free_before = free_bytes(tmp.path());
    let path = s.prepare("v1").await.unwrap();
    assert!(
        mounted(&path),
        "the volume is mounted at {}",
        path.display()
    );
    let reserved = free_before.saturating_sub(free_bytes(tmp.path()));
    // Reserved up front (fallocate), not as the renter writes.
    assert!(reserved >= 30 * MB, "only {reserved} bytes reserved");
    let free_after_prepare = free_bytes(tmp.path());

    let mut f = std::fs::File::create(path.join("fill")).unwrap();
    let chunk = vec![0x5a_u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => written += MB,
            Err(e) => break e,
        }
        assert!(written < 64 * MB, "wrote past the volume's size");
    };
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC, got {err}");
    assert!(written >= 24 * MB, "only {written} bytes fit");
    drop(f);
    let lost = free_after_prepare.saturating_sub(free_bytes(tmp.path()));
    assert!(
        lost < 2 * MB,
        "the host lost {lost} bytes to the renter's writes"
    );

    // A reboot unmounts it; opening mounts it again with the files.
    Command::new("umount").arg(&path).status().unwrap();
    assert!(!mounted(&path));
    assert_eq!(s.open("v1").await.unwrap(), path);
    assert!(mounted(&path) && path.join("fill").exists());

    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
    assert!(!mounted(&path));
    assert!(
        free_bytes(tmp.path()) + MB >= free_before,
        "the wipe gave the space back"
    );

    // A size the filesystem cannot hold is refused with what to do, and leaves nothing behind.
    let huge = DirStorage::new(&root).sized(free_before * 2);
    let e = huge.prepare("v2").await.unwrap_err().to_string();
    assert!(e.contains("storageSizeMb"), "{e}");
    huge.verify_wiped("v2").await.unwrap();
}
