//! Which block device holds the renter's storage (`storageDevice` in device-config.json).
//!
//! `auto` takes whole disks on the USB bus or flagged removable, never a system disk (the one holding
//! `/`, `/boot/firmware` or the state dir), never one mounted by someone else, never a virtual or
//! on-board device (loop, zram, ram, mmcblk, nbd, dm, md, optical, floppy); of several it takes the
//! largest (ties: the first name). USB is recognised by the sysfs device path (`…/usb2/2-1/…`), not by
//! `removable`: QEMU's and many real USB disks say 0 there (DESIGN.md §7). A named device skips the
//! USB and virtual-device rules, not the system-disk and in-use ones.
//!
//! Everything is read from a sysfs root and a mountinfo file given as parameters, so tests can build
//! a fake tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use super::mountinfo::{self, Mount};
use crate::config::StorageDevice;

/// Where discovery reads the system's view of block devices and mounts.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// The sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// The mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// The governor's own mount points outside the state dir: the container engine's data root,
    /// where the renter container's layer is bound from the volume (`runtime/layer.rs`). A drive
    /// mounted there is not someone else's.
    pub own_mounts: Vec<PathBuf>,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            own_mounts: Vec::new(),
        }
    }
}

/// The disk chosen for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The device node to open: `/dev/<name>` for `auto`, the configured path as given otherwise.
    pub path: PathBuf,
    /// The kernel's name (`sda`).
    pub name: String,
    pub size_bytes: u64,
    /// Why this disk, and why not the others: for the log.
    pub reason: String,
}

/// A disk `auto` passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub name: String,
    pub why: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.why)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "no USB drive found: plug one in, or set \"storageDevice\" to a device path or \"none\"{}",
        skipped_text(.skipped)
    )]
    NoUsbDrive { skipped: Vec<Skipped> },
    #[error("{path}: not a block device")]
    NotBlockDevice { path: PathBuf },
    #[error("{path}: block device {dev} is unknown to sysfs")]
    NotInSysfs { path: PathBuf, dev: String },
    #[error("{path}: is partition {partition} of {disk}; name the whole disk (/dev/{disk})")]
    Partition {
        path: PathBuf,
        partition: String,
        disk: String,
    },
    #[error("{path}: a system disk (it holds {holds}); the governor never formats it")]
    SystemDisk { path: PathBuf, holds: String },
    #[error("{path}: in use, mounted at {mounts}; unmount it first")]
    InUse { path: PathBuf, mounts: String },
    #[error("{path}: no medium (size 0)")]
    NoMedium { path: PathBuf },
    #[error("{path}: read-only")]
    ReadOnly { path: PathBuf },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

impl DiscoverError {
    /// Whether plugging a drive in (or a medium into a reader) may cure this: worth waiting for.
    pub fn is_absent(&self) -> bool {
        match self {
            Self::NoUsbDrive { .. } | Self::NoMedium { .. } => true,
            Self::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

fn skipped_text(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        format!(" (passed over: {})", list.join(", "))
    }
}

/// Apply `storageDevice`: `Ok(None)` for `none` (no drive wanted).
pub fn find(
    paths: &HostPaths,
    state_dir: &Path,
    device: &StorageDevice,
) -> Result<Option<Disk>, DiscoverError> {
    match device {
        StorageDevice::None => Ok(None),
        StorageDevice::Auto => find_usb(paths, state_dir).map(Some),
        StorageDevice::Path(path) => check_named(paths, state_dir, path).map(Some),
    }
}

/// Like [`find`], but while no drive is there (see [`DiscoverError::is_absent`]) poll every
/// `interval` until one is plugged in. Logs the wait once.
pub async fn wait_for(
    paths: &HostPaths,
    state_dir: &Path,
    device: &StorageDevice,
    interval: Duration,
) -> Result<Option<Disk>, DiscoverError> {
    let mut logged = false;
    loop {
        match find(paths, state_dir, device) {
            Err(e) if e.is_absent() => {
                if !logged {
                    info!(error = %e, "waiting for storage");
                    logged = true;
                }
                tokio::time::sleep(interval).await;
            }
            other => return other,
        }
    }
}

/// `storageDevice: "auto"`: the largest eligible USB or removable disk.
pub fn find_usb(paths: &HostPaths, state_dir: &Path) -> Result<Disk, DiscoverError> {
    let scan = Scan::new(paths, state_dir)?;
    let block = paths.sysfs.join("block");
    let mut names: Vec<String> = std::fs::read_dir(&block)
        .map_err(io(&block, "list"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();

    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for name in names {
        let Ok(dir) = std::fs::canonicalize(block.join(&name)) else {
            continue;
        };
        if dir.join("partition").exists() {
            continue;
        }
        let mut skip = |why: String| {
            skipped.push(Skipped {
                name: name.clone(),
                why,
            });
        };
        if let Some(kind) = virtual_kind(&name) {
            skip(format!("{kind}: used only when named in storageDevice"));
            continue;
        }
        if let Some(holds) = scan.system.get(&name) {
            skip(format!("holds {}", join(holds)));
            continue;
        }
        let usb = scan.is_usb(&dir);
        let removable = read_trimmed(&dir.join("removable")).as_deref() == Some("1");
        if !usb && !removable {
            skip("not on USB, not removable".to_owned());
            continue;
        }
        let size = size_bytes(&dir);
        if size == 0 {
            skip("no medium".to_owned());
            continue;
        }
        if read_trimmed(&dir.join("ro")).as_deref() == Some("1") {
            skip("read-only".to_owned());
            continue;
        }
        if let Some(mounts) = scan.foreign.get(&name) {
            skip(format!("mounted at {}", join(mounts)));
            continue;
        }
        candidates.push(Candidate {
            name: name.clone(),
            size,
            bus: if usb { "USB" } else { "removable" },
        });
    }

    candidates.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
    let Some(chosen) = candidates.first() else {
        return Err(DiscoverError::NoUsbDrive { skipped });
    };
    let mut reason = format!(
        "{} ({} disk, {}): ",
        chosen.name,
        chosen.bus,
        human_size(chosen.size)
    );
    if candidates.len() == 1 {
        reason.push_str("the only candidate");
    } else {
        let all: Vec<String> = candidates
            .iter()
            .map(|c| format!("{} {}", c.name, human_size(c.size)))
            .collect();
        let _ = write!(
            reason,
            "the largest of {} candidates ({})",
            candidates.len(),
            all.join(", ")
        );
    }
    if !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        let _ = write!(reason, "; passed over: {}", list.join(", "));
    }
    Ok(Disk {
        path: Path::new("/dev").join(&chosen.name),
        name: chosen.name.clone(),
        size_bytes: chosen.size,
        reason,
    })
}

/// A disk `auto` may take.
struct Candidate {
    name: String,
    size: u64,
    /// "USB" or "removable": why it qualified.
    bus: &'static str,
}

/// `storageDevice: "/dev/…"`: the named whole disk, if it is not a system disk and nobody else has
/// it mounted. Loop and other virtual devices are allowed here (tests, owners who know).
pub fn check_named(
    paths: &HostPaths,
    state_dir: &Path,
    path: &Path,
) -> Result<Disk, DiscoverError> {
    let meta = std::fs::metadata(path).map_err(io(path, "stat"))?;
    if !meta.file_type().is_block_device() {
        return Err(DiscoverError::NotBlockDevice {
            path: path.to_owned(),
        });
    }
    let scan = Scan::new(paths, state_dir)?;
    let dev = split_dev(meta.rdev());
    let dir = scan
        .graph
        .dev_dir(dev)
        .ok_or_else(|| DiscoverError::NotInSysfs {
            path: path.to_owned(),
            dev: format!("{}:{}", dev.0, dev.1),
        })?;
    let name = file_name(&dir);
    if dir.join("partition").exists() {
        return Err(DiscoverError::Partition {
            path: path.to_owned(),
            partition: name,
            disk: dir.parent().map(file_name).unwrap_or_default(),
        });
    }
    if let Some(holds) = scan.system.get(&name) {
        return Err(DiscoverError::SystemDisk {
            path: path.to_owned(),
            holds: join(holds),
        });
    }
    let size = size_bytes(&dir);
    if size == 0 {
        return Err(DiscoverError::NoMedium {
            path: path.to_owned(),
        });
    }
    if read_trimmed(&dir.join("ro")).as_deref() == Some("1") {
        return Err(DiscoverError::ReadOnly {
            path: path.to_owned(),
        });
    }
    if let Some(mounts) = scan.foreign.get(&name) {
        return Err(DiscoverError::InUse {
            path: path.to_owned(),
            mounts: join(mounts),
        });
    }
    Ok(Disk {
        path: path.to_owned(),
        reason: format!(
            "{name} ({}): named in storageDevice as {}",
            human_size(size),
            path.display()
        ),
        name,
        size_bytes: size,
    })
}

/// Names that are never picked by `auto`, and what they are.
fn virtual_kind(name: &str) -> Option<&'static str> {
    const KINDS: &[(&str, &str)] = &[
        ("loop", "loop device"),
        ("zram", "compressed RAM disk"),
        ("ram", "RAM disk"),
        ("mmcblk", "SD card or eMMC on the board"),
        ("nbd", "network block device"),
        ("dm-", "device-mapper device"),
        ("md", "software RAID"),
        ("sr", "optical drive"),
        ("fd", "floppy"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, kind)| *kind)
}

/// What discovery knows about the system: its disks and who has mounted what.
struct Scan {
    graph: BlockGraph,
    /// Disk name -> the system paths it holds (`/`, `/boot/firmware`, the state dir).
    system: BTreeMap<String, BTreeSet<String>>,
    /// Disk name -> mount points of it that are not the governor's (outside its state dir and
    /// `own_mounts`).
    foreign: BTreeMap<String, BTreeSet<String>>,
}

impl Scan {
    fn new(paths: &HostPaths, state_dir: &Path) -> Result<Self, DiscoverError> {
        let mounts = mountinfo::read(&paths.mountinfo).map_err(io(&paths.mountinfo, "read"))?;
        let graph = BlockGraph::new(&paths.sysfs, mounts);
        let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
        let mut system: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for held in [Path::new("/"), Path::new("/boot/firmware"), &state_dir] {
            if let Some(m) = mountinfo::containing(&graph.mounts, held) {
                for disk in graph.mount_disks(m) {
                    system
                        .entry(disk)
                        .or_default()
                        .insert(held.display().to_string());
                }
            }
        }
        // The governor's own mounts: anything under its state dir (the volumes and the renter's
        // views, usb.rs; on the image also the engine's data, bound to /var/lib/docker, where the
        // renter container's layer mounts show up again by propagation), and the engine's data root.
        let mut ours = vec![state_dir.clone()];
        ours.extend(paths.own_mounts.iter().cloned());
        let mut foreign: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in &graph.mounts {
            if ours
                .iter()
                .any(|root| mountinfo::is_within(&m.target, root))
            {
                continue;
            }
            for disk in graph.mount_disks(m) {
                foreign
                    .entry(disk)
                    .or_default()
                    .insert(m.target.display().to_string());
            }
        }
        Ok(Self {
            graph,
            system,
            foreign,
        })
    }

    fn is_usb(&self, dir: &Path) -> bool {
        let rel = dir.strip_prefix(&self.graph.sysfs).unwrap_or(dir);
        format!("/{}", rel.display()).contains("/usb")
    }
}

/// Block devices in sysfs and the mounts on them: which whole disks hold a mount, through
/// partitions, device-mapper/md slaves, loop backing files and overlay layers.
pub(crate) struct BlockGraph {
    /// The canonical sysfs root.
    sysfs: PathBuf,
    pub(crate) mounts: Vec<Mount>,
}

/// Deep enough for partition -> dm -> md -> loop -> overlay chains; stops cycles.
const MAX_DEPTH: u8 = 8;

impl BlockGraph {
    pub(crate) fn new(sysfs: &Path, mounts: Vec<Mount>) -> Self {
        Self {
            sysfs: std::fs::canonicalize(sysfs).unwrap_or_else(|_| sysfs.to_owned()),
            mounts,
        }
    }

    /// The sysfs directory of device `major:minor`.
    pub(crate) fn dev_dir(&self, (major, minor): (u32, u32)) -> Option<PathBuf> {
        std::fs::canonicalize(self.sysfs.join(format!("dev/block/{major}:{minor}"))).ok()
    }

    /// The names of the whole disks under mount `m` (empty for virtual filesystems).
    pub(crate) fn mount_disks(&self, m: &Mount) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.mount_disks_into(m, 0, &mut out);
        out
    }

    fn mount_disks_into(&self, m: &Mount, depth: u8, out: &mut BTreeSet<String>) {
        if depth > MAX_DEPTH {
            return;
        }
        if m.dev.0 != 0 {
            if let Some(dir) = self.dev_dir(m.dev) {
                self.dir_disks(&dir, depth + 1, out);
            }
            return;
        }
        // Anonymous device numbers: btrfs names its device as the source, overlay its layers.
        if m.source.starts_with("/dev/") {
            let source = Path::new(&m.source);
            let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_owned());
            let dir = self.sysfs.join("class/block").join(file_name(&real));
            if let Ok(dir) = std::fs::canonicalize(dir) {
                self.dir_disks(&dir, depth + 1, out);
            }
        }
        if m.fstype == "overlay" {
            for opt in m.super_options.split(',') {
                let Some((key, value)) = opt.split_once('=') else {
                    continue;
                };
                if !matches!(key, "lowerdir" | "upperdir") {
                    continue;
                }
                for layer in value.split(':').filter(|l| !l.is_empty()) {
                    if let Some(inner) = mountinfo::containing(&self.mounts, Path::new(layer))
                        && inner != m
                    {
                        self.mount_disks_into(inner, depth + 1, out);
                    }
                }
            }
        }
    }

    fn dir_disks(&self, dir: &Path, depth: u8, out: &mut BTreeSet<String>) {
        if depth > MAX_DEPTH {
            return;
        }
        if dir.join("partition").exists() {
            if let Some(disk) = dir.parent() {
                self.dir_disks(disk, depth + 1, out);
            }
            return;
        }
        out.insert(file_name(dir));
        if let Ok(slaves) = std::fs::read_dir(dir.join("slaves")) {
            for slave in slaves.flatten() {
                if let Ok(slave) = std::fs::canonicalize(slave.path()) {
                    self.dir_disks(&slave, depth + 1, out);
                }
            }
        }
        if let Some(backing) = read_trimmed(&dir.join("loop/backing_file")) {
            let backing = backing.trim_end_matches(" (deleted)");
            if let Some(m) = mountinfo::containing(&self.mounts, Path::new(backing)) {
                self.mount_disks_into(m, depth + 1, out);
            }
        }
    }
}

/// Split a Linux `dev_t` into major and minor (glibc's encoding).
pub(crate) fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

/// A sysfs block device's size in bytes (`size` counts 512-byte sectors whatever the device's own).
pub(crate) fn size_bytes(dir: &Path) -> u64 {
    read_trimmed(&dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        .saturating_mul(512)
}

pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// `59.6 GiB`, `256 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB {
        format!("{}.{} GiB", bytes / GIB, bytes % GIB * 10 / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> DiscoverError {
    let path = path.to_owned();
    move |source| DiscoverError::Io {
        path,
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const SECTORS_PER_GIB: u64 = 1 << 21;

    /// A fake sysfs tree and mountinfo in a temp dir.
    struct FakeHost {
        tmp: tempfile::TempDir,
        mountinfo: String,
    }

    impl FakeHost {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            for d in ["sys/block", "sys/dev/block", "sys/class/block"] {
                std::fs::create_dir_all(tmp.path().join(d)).unwrap();
            }
            Self {
                tmp,
                mountinfo: String::new(),
            }
        }

        fn sys(&self) -> PathBuf {
            self.tmp.path().join("sys")
        }

        fn paths(&self) -> HostPaths {
            let mountinfo = self.tmp.path().join("mountinfo");
            std::fs::write(&mountinfo, &self.mountinfo).unwrap();
            HostPaths {
                sysfs: self.sys(),
                mountinfo,
                own_mounts: Vec::new(),
            }
        }

        /// A device directory `sys/<parent>/<name>` with its attribute files and index links.
        fn device(&self, parent: &str, name: &str, dev: (u32, u32), attrs: &[(&str, &str)]) {
            let dir = self.sys().join(parent).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("dev"), format!("{}:{}\n", dev.0, dev.1)).unwrap();
            for (k, v) in attrs {
                if let Some(parent) = Path::new(k).parent() {
                    std::fs::create_dir_all(dir.join(parent)).unwrap();
                }
                std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
            }
            symlink(
                &dir,
                self.sys().join(format!("dev/block/{}:{}", dev.0, dev.1)),
            )
            .unwrap();
            symlink(&dir, self.sys().join("class/block").join(name)).unwrap();
        }

        /// A whole disk under `devpath` (a path below sys/devices, ending in `block`).
        fn disk(&self, devpath: &str, name: &str, dev: (u32, u32), gib: u64, removable: bool) {
            let parent = format!("devices/{devpath}");
            let size = (gib * SECTORS_PER_GIB).to_string();
            let removable = if removable { "1" } else { "0" };
            self.device(
                &parent,
                name,
                dev,
                &[("size", &size), ("removable", removable), ("ro", "0")],
            );
            symlink(
                self.sys().join(&parent).join(name),
                self.sys().join("block").join(name),
            )
            .unwrap();
        }

        fn usb_disk(&self, name: &str, dev: (u32, u32), gib: u64) {
            self.disk(&usb(dev.1), name, dev, gib, false);
        }

        fn partition(&self, disk_devpath: &str, disk: &str, n: u32, dev: (u32, u32)) {
            let name = if disk.ends_with(|c: char| c.is_ascii_digit()) {
                format!("{disk}p{n}")
            } else {
                format!("{disk}{n}")
            };
            self.device(
                &format!("devices/{disk_devpath}/{disk}"),
                &name,
                dev,
                &[("partition", &n.to_string()), ("size", "2048")],
            );
        }

        fn mount(&mut self, dev: (u32, u32), at: &str, fstype: &str, source: &str) {
            let n = self.mountinfo.lines().count() + 20;
            let _ = writeln!(
                self.mountinfo,
                "{n} 1 {}:{} / {at} rw,relatime - {fstype} {source} rw",
                dev.0, dev.1
            );
        }

        /// A Raspberry Pi: the SD card holds the root, /boot/firmware and the state dir.
        fn pi() -> Self {
            let mut h = Self::new();
            let sd = "platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block";
            h.disk(sd, "mmcblk0", (179, 0), 32, false);
            h.partition(sd, "mmcblk0", 1, (179, 1));
            h.partition(sd, "mmcblk0", 2, (179, 2));
            h.partition(sd, "mmcblk0", 3, (179, 3));
            h.mount((179, 2), "/", "ext4", "/dev/mmcblk0p2");
            h.mount((179, 1), "/boot/firmware", "vfat", "/dev/mmcblk0p1");
            h.mount((179, 3), "/var/lib/p2pvps", "ext4", "/dev/mmcblk0p3");
            h.mount((0, 22), "/proc", "proc", "proc");
            h.disk("virtual/block", "loop0", (7, 0), 1, false);
            h.disk("virtual/block", "zram0", (254, 0), 1, false);
            h
        }
    }

    const STATE: &str = "/var/lib/p2pvps";

    /// The sysfs device path of a USB disk (as QEMU's xhci + usb-storage shows it), unique per minor.
    fn usb(minor: u32) -> String {
        format!(
            "pci0000:00/0000:00:14.0/usb2/2-{minor}/2-1:1.0/host{minor}/target0:0:0/0:0:0:0/block"
        )
    }

    fn auto(h: &FakeHost) -> Result<Disk, DiscoverError> {
        find_usb(&h.paths(), Path::new(STATE))
    }

    #[test]
    fn usb_disk_found_by_path_though_not_removable() {
        let h = FakeHost::pi();
        h.usb_disk("sda", (8, 0), 58);
        let d = auto(&h).unwrap();
        assert_eq!(d.name, "sda");
        assert_eq!(d.path, Path::new("/dev/sda"));
        assert_eq!(d.size_bytes, 58 << 30);
        assert!(
            d.reason
                .contains("sda (USB disk, 58.0 GiB): the only candidate"),
            "{}",
            d.reason
        );
        assert!(d.reason.contains("loop0 (loop device"), "{}", d.reason);
        assert!(d.reason.contains("mmcblk0 ("), "{}", d.reason);
    }

    #[test]
    fn removable_sd_reader_counts() {
        let h = FakeHost::pi();
        // A card reader on an internal bus that is not USB: only `removable` says it is fair game.
        h.disk("platform/sdhci/host1/block", "sdb", (8, 16), 16, true);
        let d = auto(&h).unwrap();
        assert_eq!(d.name, "sdb");
        assert!(d.reason.contains("removable disk"), "{}", d.reason);
    }

    #[test]
    fn internal_fixed_disks_are_not_candidates() {
        let h = FakeHost::pi();
        h.disk(
            "pci0000:00/0000:00:1f.2/ata1/host0/block",
            "sda",
            (8, 0),
            500,
            false,
        );
        let e = auto(&h).unwrap_err();
        assert!(matches!(e, DiscoverError::NoUsbDrive { .. }));
        let msg = e.to_string();
        assert!(msg.starts_with("no USB drive found"), "{msg}");
        assert!(msg.contains("sda (not on USB, not removable)"), "{msg}");
        assert!(e.is_absent());
    }

    #[test]
    fn the_root_disk_is_excluded_even_on_usb() {
        // A Pi booting from a USB SSD, with a USB stick beside it.
        let mut h = FakeHost::new();
        h.usb_disk("sda", (8, 0), 240);
        let devpath = &usb(0);
        h.partition(devpath, "sda", 1, (8, 1));
        h.partition(devpath, "sda", 2, (8, 2));
        h.mount((8, 2), "/", "ext4", "/dev/sda2");
        h.mount((8, 1), "/boot/firmware", "vfat", "/dev/sda1");
        h.usb_disk("sdb", (8, 16), 58);
        let d = auto(&h).unwrap();
        assert_eq!(d.name, "sdb");
        assert!(
            d.reason.contains("sda (holds /, /boot/firmware"),
            "{}",
            d.reason
        );
        // Named explicitly, it is refused all the same.
        let e = check(&h, "sda", (8, 0)).unwrap_err();
        assert!(matches!(e, DiscoverError::SystemDisk { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("holds /, /boot/firmware, /var/lib/p2pvps"),
            "{e}"
        );
    }

    #[test]
    fn the_state_dir_disk_is_excluded() {
        let mut h = FakeHost::pi();
        h.usb_disk("sda", (8, 0), 58);
        let devpath = &usb(0);
        h.partition(devpath, "sda", 1, (8, 1));
        h.mount((8, 1), "/var/lib/p2pvps", "ext4", "/dev/sda1");
        let e = auto(&h).unwrap_err();
        assert!(e.to_string().contains("sda (holds /var/lib/p2pvps)"), "{e}");
    }

    #[test]
    fn system_disk_behind_device_mapper_is_excluded() {
        // Root on dm-0 whose slave is sda2: sda holds /.
        let mut h = FakeHost::new();
        h.usb_disk("sda", (8, 0), 240);
        let devpath = &usb(0);
        h.partition(devpath, "sda", 2, (8, 2));
        h.disk("virtual/block", "dm-0", (253, 0), 200, false);
        let slaves = h.sys().join("devices/virtual/block/dm-0/slaves");
        std::fs::create_dir_all(&slaves).unwrap();
        symlink(
            h.sys().join(format!("devices/{devpath}/sda/sda2")),
            slaves.join("sda2"),
        )
        .unwrap();
        h.mount((253, 0), "/", "ext4", "/dev/mapper/root");
        let e = auto(&h).unwrap_err();
        assert!(e.to_string().contains("sda (holds /"), "{e}");
    }

    #[test]
    fn btrfs_root_is_found_through_its_source() {
        let mut h = FakeHost::new();
        h.usb_disk("sda", (8, 0), 240);
        let devpath = &usb(0);
        h.partition(devpath, "sda", 1, (8, 1));
        h.mount((0, 31), "/", "btrfs", "/dev/sda1");
        assert!(auto(&h).unwrap_err().to_string().contains("sda (holds /"));
    }

    #[test]
    fn overlay_root_is_followed_to_its_layers() {
        let mut h = FakeHost::new();
        h.usb_disk("sda", (8, 0), 240);
        let devpath = &usb(0);
        h.partition(devpath, "sda", 1, (8, 1));
        h.mount((8, 1), "/media/ro", "squashfs", "/dev/sda1");
        h.mountinfo
            .push_str("40 1 0:40 / / rw - overlay overlay rw,lowerdir=/media/ro,upperdir=/run/up,workdir=/run/w\n");
        assert!(auto(&h).unwrap_err().to_string().contains("sda (holds /"));
    }

    #[test]
    fn several_candidates_the_largest_wins_ties_by_name() {
        let h = FakeHost::pi();
        h.usb_disk("sdc", (8, 32), 58);
        h.usb_disk("sda", (8, 0), 29);
        h.usb_disk("sdb", (8, 16), 58);
        let d = auto(&h).unwrap();
        assert_eq!(d.name, "sdb");
        assert!(
            d.reason
                .contains("the largest of 3 candidates (sdb 58.0 GiB, sdc 58.0 GiB, sda 29.0 GiB)"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn empty_readers_read_only_and_mounted_disks_are_passed_over() {
        let mut h = FakeHost::pi();
        h.usb_disk("sda", (8, 0), 0);
        h.usb_disk("sdb", (8, 16), 58);
        std::fs::write(h.sys().join("block/sdb/ro"), "1\n").unwrap();
        h.usb_disk("sdc", (8, 32), 58);
        let devpath = &usb(32);
        h.partition(devpath, "sdc", 1, (8, 33));
        h.mount((8, 33), "/media/owner/BACKUP", "ext4", "/dev/sdc1");
        h.usb_disk("sdd", (8, 48), 8);
        let devpath_d = &usb(48);
        h.partition(devpath_d, "sdd", 1, (8, 49));
        // The governor's own mount of a drive does not make it foreign.
        h.mount((8, 49), "/var/lib/p2pvps/mnt/v1", "ext4", "/dev/sdd1");
        let d = auto(&h).unwrap();
        assert_eq!(d.name, "sdd");
        for want in [
            "sda (no medium)",
            "sdb (read-only)",
            "sdc (mounted at /media/owner/BACKUP)",
        ] {
            assert!(d.reason.contains(want), "{want}: {}", d.reason);
        }
    }

    #[test]
    fn the_renter_layer_bound_from_the_volume_is_the_governors_own() {
        let mut h = FakeHost::pi();
        h.usb_disk("sda", (8, 0), 58);
        h.partition(&usb(0), "sda", 1, (253, 0));
        h.mount(
            (253, 0),
            "/var/lib/p2pvps/vol/v1",
            "ext4",
            "/dev/mapper/p2pvps-v1",
        );
        let upper = "/var/lib/docker/100000.100000/overlay2/0f3a/diff";
        h.mount((253, 0), upper, "ext4", "/dev/mapper/p2pvps-v1");
        let e = auto(&h).unwrap_err().to_string();
        assert!(e.contains(&format!("mounted at {upper}")), "{e}");
        // On the image the engine's data lies in the state dir, bound to /var/lib/docker: the
        // layer's mounts appear under both paths.
        let merged = "/overlay2/0f3a/merged";
        h.mount(
            (253, 0),
            &format!("/var/lib/docker/100000.100000{merged}"),
            "overlay",
            "overlay",
        );
        h.mount(
            (253, 0),
            &format!("{STATE}/docker/100000.100000{merged}"),
            "overlay",
            "overlay",
        );
        let mut paths = h.paths();
        paths.own_mounts.push("/var/lib/docker".into());
        assert_eq!(find_usb(&paths, Path::new(STATE)).unwrap().name, "sda");
    }

    #[test]
    fn no_candidates_at_all() {
        let h = FakeHost::pi();
        let e = auto(&h).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("no USB drive found: plug one in"), "{msg}");
        assert!(
            msg.contains("loop0 (loop device: used only when named in storageDevice)"),
            "{msg}"
        );
        assert!(msg.contains("zram0 (compressed RAM disk"), "{msg}");
    }

    #[test]
    fn find_applies_the_config() {
        let h = FakeHost::pi();
        h.usb_disk("sda", (8, 0), 58);
        let p = h.paths();
        assert_eq!(
            find(&p, Path::new(STATE), &StorageDevice::None).unwrap(),
            None
        );
        let d = find(&p, Path::new(STATE), &StorageDevice::Auto)
            .unwrap()
            .unwrap();
        assert_eq!(d.name, "sda");
    }

    /// A block device node for `dev` in the temp dir (needs root, like all storage tests).
    fn node(h: &FakeHost, name: &str, dev: (u32, u32)) -> PathBuf {
        let path = h.tmp.path().join("dev").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let out = std::process::Command::new("mknod")
            .arg(&path)
            .args(["b", &dev.0.to_string(), &dev.1.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "mknod (tests need root): {out:?}");
        path
    }

    fn check(h: &FakeHost, name: &str, dev: (u32, u32)) -> Result<Disk, DiscoverError> {
        let node = node(h, name, dev);
        check_named(&h.paths(), Path::new(STATE), &node)
    }

    #[test]
    fn named_loop_device_is_used_as_is() {
        let h = FakeHost::pi();
        let node = node(&h, "loop0", (7, 0));
        let device = StorageDevice::Path(node.clone());
        let d = find(&h.paths(), Path::new(STATE), &device)
            .unwrap()
            .unwrap();
        assert_eq!(d.path, node);
        assert_eq!(d.name, "loop0");
        assert!(d.reason.contains("named in storageDevice"), "{}", d.reason);
    }

    #[test]
    fn named_errors_are_clear() {
        let mut h = FakeHost::pi();
        // The Pi's own SD card.
        let e = check(&h, "mmcblk0", (179, 0)).unwrap_err();
        assert!(matches!(e, DiscoverError::SystemDisk { .. }), "{e}");
        // A partition rather than the disk.
        h.usb_disk("sda", (8, 0), 58);
        let devpath = &usb(0);
        h.partition(devpath, "sda", 1, (8, 1));
        let e = check(&h, "sda1", (8, 1)).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is partition sda1 of sda; name the whole disk (/dev/sda)"),
            "{e}"
        );
        // Mounted by someone else.
        h.mount((8, 1), "/mnt/x", "ext4", "/dev/sda1");
        let e = check(&h, "sda", (8, 0)).unwrap_err();
        assert!(e.to_string().contains("in use, mounted at /mnt/x"), "{e}");
        // Unknown to sysfs, not a block device, absent.
        let e = check(&h, "sdz", (8, 240)).unwrap_err();
        assert!(matches!(e, DiscoverError::NotInSysfs { .. }), "{e}");
        let file = h.tmp.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let e = check_named(&h.paths(), Path::new(STATE), &file).unwrap_err();
        assert!(e.to_string().ends_with("plain: not a block device"), "{e}");
        let e =
            check_named(&h.paths(), Path::new(STATE), Path::new("/dev/nonexistent")).unwrap_err();
        assert!(e.to_string().starts_with("/dev/nonexistent: stat:"), "{e}");
        assert!(e.is_absent());
    }

    #[tokio::test]
    async fn waits_for_a_drive_to_be_plugged_in() {
        let h = FakeHost::pi();
        let paths = h.paths();
        let wait = wait_for(
            &paths,
            Path::new(STATE),
            &StorageDevice::Auto,
            Duration::from_millis(20),
        );
        let plug = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            h.usb_disk("sda", (8, 0), 58);
        };
        let (found, ()) = tokio::join!(wait, plug);
        assert_eq!(found.unwrap().unwrap().name, "sda");
    }

    #[test]
    fn dev_numbers_split_like_glibc() {
        assert_eq!(split_dev(0x0801), (8, 1));
        assert_eq!(split_dev(0xb302), (179, 2));
        // major 259 (blkext), minor 1_000_000
        let minor: u64 = 0xf_4240; // 1_000_000
        let dev = (259u64 << 8) | (minor & 0xff) | ((minor & !0xff) << 12);
        assert_eq!(split_dev(dev), (259, 1_000_000));
    }

    #[test]
    fn sizes_read_for_humans() {
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(human_size(62_008_590_336), "57.7 GiB");
    }
}
