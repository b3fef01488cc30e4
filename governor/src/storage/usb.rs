//! `storageDevice: "auto"` or a path: the renter's volume on a whole USB drive.
//!
//! Layout: a fresh GPT (its protective MBR written explicitly: the gpt crate does not, DESIGN.md §8)
//! with one partition spanning the disk, aligned to 1 MiB (2048 LBAs of 512 bytes), named
//! `p2pvps-storage`. The partition's unique GUID is derived from the volume id (UUID v5): that is how
//! `open` tells that the drive holds *this* rental's volume and not an older one. ext4 on the partition
//! (e2fsprogs' mkfs.ext4, label `p2pvps`), mounted at `<state_dir>/vol/<id>`. It holds `renter/`,
//! bind-mounted at `<state_dir>/mnt/<id>` (the container's `/media/storage`), and `layer/`, the
//! renter container's writable layer (`runtime/layer.rs`): what the renter writes anywhere in the
//! container lands there, and both go with the wipe.
//!
//! Encrypted mode (the default where the kernel has dm-crypt): LUKS2 on the partition (`luks.rs`),
//! a random device key in `<state_dir>/keys` (`keys.rs`), ext4 on `/dev/mapper/p2pvps-<id>`. The
//! renter may take the key over ([`VolumeKeys`]): after a reboot the volume then stays locked, with
//! a read-only empty tmpfs at its mount point (so nothing the renter writes meanwhile lands on the
//! state partition), until the renter unlocks it; the ext4 is then mounted over the placeholder, and
//! reaches the running container through mount propagation (`<state_dir>/mnt` is made a shared
//! mount, the container's bind a slave). The wipe is a crypto-erase: close, destroy the keyslots,
//! overwrite the header area (and the partition tables), discard where supported, delete the device
//! key; the check reads that area back and finds no LUKS header.
//!
//! Plain mode (`encryptStorage: false`, or a kernel without dm-crypt): ext4 on the partition. The
//! wipe is a discard where the device supports it, then a full overwrite with zeros (4 MiB direct
//! writes, progress in the log), and the check reads the drive back (first and last MiB and sampled
//! blocks) without the page cache.
//!
//! The kernel is told to re-read the partition table with util-linux's `blockdev --rereadpt` (the
//! BLKRRPART ioctl; the workspace forbids unsafe code, so no ioctl of our own), retried while udev may
//! still hold a partition open; if the kernel still lacks the partition (a kernel without GPT support,
//! as on the build machines, or BLKRRPART refused), `partx -u` reads the table in user space and adds
//! it through BLKPG. Loop devices must be attached with partition scanning (`losetup --partscan`).
//!
//! Every step can be repeated: `prepare` starts over whatever it finds, `wipe` overwrites the whole
//! disk again (a crash mid-wipe resumes by wiping again), `open` mounts only if not mounted. Helper
//! programs get argument lists, never a shell, and their failures keep the command and its stderr.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{
    FileExt as _, FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gpt::GptConfig;
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::partition_types;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::discover::{self, BlockGraph, HostPaths, human_size, read_trimmed};
use super::keys::KeyDir;
use super::luks::{self, Luks, PassphraseKdf};
use super::mountinfo::{self, Mount};
use super::{KeyHolder, KeyStatus, Storage, StorageError, VolumeKeys, io};
use crate::command::run;
use crate::types::Secret;

/// The GPT partition name of a p2pvps volume.
pub const PARTITION_NAME: &str = "p2pvps-storage";
/// The ext4 label.
pub const FS_LABEL: &str = "p2pvps";

/// Namespace of the partition GUIDs derived from volume ids.
const NAMESPACE: Uuid = Uuid::from_bytes(*b"p2pvps-storage\0\0");
const MIB: u64 = 1 << 20;
/// Writes of the overwrite.
const CHUNK: usize = 4 << 20;
/// Buffer alignment for O_DIRECT (a multiple of any logical block size).
const ALIGN: usize = 4096;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Size of each block read back by `verify_wiped`.
const SAMPLE: u64 = 64 << 10;
/// Blocks read back at even spacing, and as many again at random offsets.
const SAMPLES: u64 = 128;
/// How long the kernel may take to show a new partition.
const KERNEL_WAIT: Duration = Duration::from_secs(10);
/// How often, and how long apart, an exclusive open or an unmount is tried again on EBUSY.
const BUSY_TRIES: u32 = 20;
const BUSY_PAUSE: Duration = Duration::from_millis(100);
/// Smaller than this is not a storage drive.
const MIN_SIZE: u64 = 16 * MIB;
/// What the crypto-erase overwrites from the start of the disk, at least: the partition table and a
/// LUKS2 header of the default size (16 MiB) at the 1 MiB partition start, with room to spare.
const ERASE_SPAN: u64 = 32 * MIB;
/// Mount source (a tmpfs) of the placeholder mounted while a volume is locked.
const LOCKED_SOURCE: &str = "p2pvps-locked";
/// The magic of a LUKS primary header, and of a LUKS2 secondary header.
const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";
const LUKS_MAGIC2: &[u8] = b"SKUL\xba\xbe";
/// The volume's directories: what the container sees at `/media/storage`, and its writable layer.
const RENTER_DIR: &str = "renter";
const LAYER_DIR: &str = "layer";

/// The renter's storage on a whole disk (chosen by [`discover`]).
#[derive(Debug, Clone)]
pub struct UsbStorage {
    /// The whole-disk device node (as of this copy; see `current`).
    disk: PathBuf,
    /// With [`UsbStorage::rediscovering`]: where the drive is now, shared by every copy. A drive
    /// pulled and plugged back in (while the old device is still held open) comes back under
    /// another name.
    current: Option<Arc<std::sync::Mutex<PathBuf>>>,
    /// Volumes are mounted under `<state_dir>/mnt`; mounts elsewhere are someone else's.
    state_dir: PathBuf,
    /// Where sysfs and the mount table are (the real ones; a parameter for symmetry with discovery).
    host: HostPaths,
    /// LUKS2 (with the device key in `keys`), or plain ext4.
    encrypt: bool,
    keys: KeyDir,
    kdf: PassphraseKdf,
    luks: Luks,
}

impl UsbStorage {
    /// Storage on the whole disk `disk` (a device node such as `/dev/sda`), mounted under
    /// `<state_dir>/mnt`.
    pub fn new(disk: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            disk: disk.into(),
            current: None,
            keys: KeyDir::new(&state_dir),
            state_dir,
            host: HostPaths::default(),
            encrypt: false,
            kdf: PassphraseKdf::default(),
            luks: Luks::installed(),
        }
    }

    /// Encrypt volumes with LUKS2 (needs dm-crypt); renters' passphrases stretched with `kdf`.
    #[must_use]
    pub fn encrypted(mut self, kdf: PassphraseKdf) -> Self {
        self.encrypt = true;
        self.kdf = kdf;
        self
    }

    /// The LUKS2 helper to use (default: [`Luks::installed`]).
    #[must_use]
    pub fn with_luks(mut self, luks: Luks) -> Self {
        self.luks = luks;
        self
    }

    /// Find the drive again (`storageDevice: "auto"`) when its device node is gone.
    #[must_use]
    pub fn rediscovering(mut self) -> Self {
        self.current = Some(Arc::new(std::sync::Mutex::new(self.disk.clone())));
        self
    }

    /// This storage on the drive as it is now: the same node, or, when rediscovering and the node
    /// is gone, the USB drive discovery finds (the old one back under a new name, typically).
    fn resolved(&self) -> Self {
        let Some(current) = &self.current else {
            return self.clone();
        };
        let mut disk = current.lock().unwrap();
        if !disk.exists()
            && let Ok(found) = discover::find_usb(&self.host, &self.state_dir)
        {
            warn!(
                old = %disk.display(),
                new = %found.path.display(),
                "the storage drive went away and is back under another name"
            );
            disk.clone_from(&found.path);
        }
        Self {
            disk: disk.clone(),
            ..self.clone()
        }
    }

    /// The device-mapper name of volume `id`'s opened LUKS2 device.
    pub fn mapper_name(id: &str) -> String {
        format!("p2pvps-{id}")
    }

    /// Where the device key of volume `id` is kept while the device holds it.
    pub fn key_path(&self, id: &str) -> PathBuf {
        self.keys.path(id)
    }

    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// Where volume `id`'s `renter/` is mounted: the host path of the container's `/media/storage`.
    pub fn mount_point(&self, id: &str) -> PathBuf {
        self.state_dir.join("mnt").join(id)
    }

    /// Where volume `id`'s filesystem is mounted (out of the container's reach).
    pub fn volume_point(&self, id: &str) -> PathBuf {
        self.state_dir.join("vol").join(id)
    }

    /// Both places volume `id` is mounted: the renter's view first (it is mounted last).
    fn mount_points(&self, id: &str) -> [PathBuf; 2] {
        [self.mount_point(id), self.volume_point(id)]
    }

    /// The GPT partition GUID that marks volume `id`.
    pub fn volume_guid(id: &str) -> Uuid {
        Uuid::new_v5(&NAMESPACE, id.as_bytes())
    }

    /// The wipe without its discard: unmount and overwrite with zeros. With `stop_after`, stop once
    /// that many bytes are written, as a power cut would (the rest of the old data stays): for crash
    /// tests, and to measure the overwrite alone.
    pub async fn overwrite(&self, id: &str, stop_after: Option<u64>) -> Result<(), StorageError> {
        let id = id.to_owned();
        self.blocking(move |s, cancel| s.wipe_blocking(&id, cancel, false, stop_after))
            .await
    }

    /// Run `f` on the blocking pool. Dropping the returned future (shutdown) asks `f` to stop at its
    /// next chunk rather than overwrite a whole drive with nobody waiting.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Self, &AtomicBool) -> Result<T, StorageError> + Send + 'static,
    {
        let this = self.resolved();
        let cancel = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop(Arc::clone(&cancel));
        let result = tokio::task::spawn_blocking(move || f(&this, &cancel)).await;
        drop(guard);
        match result {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(self.device_err("interrupted: shutting down")),
        }
    }

    fn device_err(&self, detail: impl Into<String>) -> StorageError {
        StorageError::Device {
            path: self.disk.clone(),
            detail: detail.into(),
        }
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> StorageError + use<> {
        io(&self.disk, action)
    }

    // --- The steps, on the blocking pool ---

    fn prepare_blocking(&self, id: &str, cancel: &AtomicBool) -> Result<PathBuf, StorageError> {
        check_id(id)?;
        let info = self.disk_info()?;
        self.unmount_volume(&info, id)?;
        if self.encrypt {
            // A half-made volume of this id from an interrupted prepare.
            self.close(id)?;
        } else {
            warn!(
            disk = %self.disk.display(),
            "storage is NOT encrypted: the renter's files lie in plain ext4 on the drive, readable by \
             anyone who unplugs it during the rental; the renter cannot hold their own key; and the \
             wipe at the end is a full overwrite of {} (about {} min at 20 MiB/s) instead of a \
             crypto-erase in seconds",
            human_size(info.size),
            info.size / (20 * MIB) / 60 + 1
            );
        }
        // Old partition tables (primary at the start, backup at the end) and the old filesystem or
        // LUKS header where the new partition starts: gone first, so that nothing finds them later.
        self.zero_ends(&info, ERASE_SPAN, cancel)?;
        let (first, last) = self.write_gpt(&info, id)?;
        let want = geometry(&info, first, last);
        self.sync_partitions(&info, Some(want))?;
        let part = self.wait_partition(&info, want)?;
        let fs_dev = if self.encrypt {
            let key = self.keys.create(id)?;
            self.luks.format(&part.node, &key)?;
            self.luks
                .activate(&part.node, &Self::mapper_name(id), &key)?;
            self.wait_mapper(id)?
        } else {
            part.node.clone()
        };
        run(
            "mkfs.ext4",
            [
                OsStr::new("-F"),
                OsStr::new("-q"),
                OsStr::new("-m"),
                OsStr::new("0"),
                OsStr::new("-L"),
                OsStr::new(FS_LABEL),
                OsStr::new("-E"),
                OsStr::new("lazy_itable_init=1,nodiscard"),
                fs_dev.as_os_str(),
            ],
        )?;
        let mount_point = self.mount(&fs_dev, id)?;
        info!(
            disk = %self.disk.display(),
            partition = %part.node.display(),
            mount_point = %mount_point.display(),
            "storage prepared: GPT, {}ext4 over {}",
            if self.encrypt { "LUKS2, " } else { "" },
            human_size(info.size)
        );
        Ok(mount_point)
    }

    fn open_blocking(&self, id: &str) -> Result<PathBuf, StorageError> {
        check_id(id)?;
        let info = self.disk_info()?;
        let part = self.our_partition(&info, id)?;
        let mount_point = self.mount_point(id);
        let fs_dev = if self.encrypt {
            if !luks::is_active(&Self::mapper_name(id)) {
                let Some(key) = self.keys.load(id)? else {
                    if !self.luks.has_header(&part.node)? {
                        return Err(self.device_err(format!(
                            "{} holds no LUKS2 header: not this rental's encrypted volume",
                            part.node.display()
                        )));
                    }
                    self.mount_locked(&mount_point)?;
                    return Ok(mount_point);
                };
                self.luks
                    .activate(&part.node, &Self::mapper_name(id), &key)?;
            }
            self.wait_mapper(id)?
        } else {
            part.node.clone()
        };
        let dev = device_number(&fs_dev)?;
        if let Some(m) = self.mounted_at(&mount_point)? {
            if m.dev == dev {
                return Ok(mount_point);
            }
            if m.source != LOCKED_SOURCE {
                return Err(self.device_err(format!(
                    "{} is mounted from another device ({}:{}), not {}",
                    mount_point.display(),
                    m.dev.0,
                    m.dev.1,
                    fs_dev.display()
                )));
            }
        }
        self.mount(&fs_dev, id)?;
        info!(mount_point = %mount_point.display(), "storage opened");
        Ok(mount_point)
    }

    /// Partition 1 of the disk when the GPT says it is volume `id`'s, as the kernel shows it (told
    /// again after a reboot on a kernel that cannot parse GPT, or a replug).
    fn our_partition(&self, info: &DiskInfo, id: &str) -> Result<Part, StorageError> {
        let (first, last) = self.read_ours(info, id)?;
        let want = geometry(info, first, last);
        if let Some(p) = partition(info).filter(|p| (p.start, p.sectors) == want) {
            return Ok(p);
        }
        self.sync_partitions(info, Some(want))?;
        self.wait_partition(info, want)
    }

    /// The opened LUKS2 device of volume `id`, once its node exists.
    fn wait_mapper(&self, id: &str) -> Result<PathBuf, StorageError> {
        let node = Path::new("/dev/mapper").join(Self::mapper_name(id));
        let deadline = Instant::now() + KERNEL_WAIT;
        while !std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_block_device()) {
            if Instant::now() >= deadline {
                return Err(self.device_err(format!(
                    "{} did not appear within {} s of unlocking",
                    node.display(),
                    KERNEL_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    /// Close volume `id`'s LUKS2 device, retrying while a process that just let go still holds it.
    fn close(&self, id: &str) -> Result<(), StorageError> {
        let name = Self::mapper_name(id);
        let mut tries = 0;
        loop {
            match self.luks.deactivate(&name) {
                Err(e) if e.errno() == Some(libc::EBUSY) && tries < BUSY_TRIES => {
                    tries += 1;
                    std::thread::sleep(BUSY_PAUSE);
                }
                other => return other.map_err(StorageError::from),
            }
        }
    }

    /// While the renter holds the key and has not unlocked: an empty read-only tmpfs at the mount
    /// point, so the container's `/media/storage` takes no writes (which would land unencrypted on
    /// the state partition), and `<state_dir>/mnt` made shared so the unlocked volume mounted later
    /// reaches the running container.
    fn mount_locked(&self, mount_point: &Path) -> Result<(), StorageError> {
        ensure_mount_point(mount_point)?;
        self.share_mounts_root()?;
        if self.mounted_at(mount_point)?.is_none() {
            run(
                "mount",
                [
                    OsStr::new("-t"),
                    OsStr::new("tmpfs"),
                    OsStr::new("-o"),
                    OsStr::new("ro,size=4k,mode=0555"),
                    OsStr::new(LOCKED_SOURCE),
                    mount_point.as_os_str(),
                ],
            )?;
        }
        info!(
            mount_point = %mount_point.display(),
            "storage locked: the renter holds its key; waiting for `p2pvps-storage unlock`"
        );
        Ok(())
    }

    /// Make `<state_dir>/mnt` a mount of its own in a shared peer group (a bind mount of itself).
    fn share_mounts_root(&self) -> Result<(), StorageError> {
        let root = self.mounts_root();
        match self.mounted_at(&root)? {
            // Every mount and unlock passes here: nothing to run once it is shared.
            Some(m) if m.shared => return Ok(()),
            Some(_) => {}
            None => {
                run(
                    "mount",
                    [OsStr::new("--bind"), root.as_os_str(), root.as_os_str()],
                )?;
            }
        }
        run("mount", [OsStr::new("--make-shared"), root.as_os_str()])?;
        Ok(())
    }

    /// Whether mounts under `<state_dir>/mnt` propagate to the container's bind mounts.
    pub fn mounts_propagate(&self) -> bool {
        let root = self.mounts_root();
        self.mounted_at(&root)
            .ok()
            .flatten()
            .is_some_and(|m| m.shared)
    }

    /// Unmount whatever is stacked at volume `id`'s mount point (the placeholder included) and the
    /// governor's mounts of this disk.
    fn unmount_volume(&self, info: &DiskInfo, id: &str) -> Result<(), StorageError> {
        self.unmount_ours(info)?;
        for path in self.mount_points(id) {
            while self.mounted_at(&path)?.is_some() {
                umount(&path)?;
            }
        }
        Ok(())
    }

    fn wipe_blocking(
        &self,
        id: &str,
        cancel: &AtomicBool,
        discard: bool,
        stop_after: Option<u64>,
    ) -> Result<(), StorageError> {
        check_id(id)?;
        let info = self.disk_info()?;
        self.unmount_volume(&info, id)?;
        for path in self.mount_points(id) {
            match std::fs::remove_dir(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    warn!(path = %path.display(), error = %e, "could not remove the mount point");
                }
                _ => {}
            }
        }
        if self.encrypt && stop_after.is_none() {
            return self.crypto_erase(&info, id, cancel);
        }
        info!(
            disk = %self.disk.display(),
            "wiping: {}overwriting all {} with zeros",
            if discard { "discard, then " } else { "" },
            human_size(info.size)
        );
        let started = Instant::now();
        if discard {
            self.discard(&info);
        }
        let file = open_direct(&self.disk, true).map_err(self.io("open for writing"))?;
        let mut progress = Progress::new(&self.disk, info.size);
        let done = zero_range(
            &file,
            &self.disk,
            0,
            info.size,
            cancel,
            Some(&mut progress),
            stop_after,
        )?;
        file.sync_data().map_err(self.io("sync"))?;
        drop(file);
        if done < info.size {
            warn!(disk = %self.disk.display(), written = done, "overwrite stopped early, as asked");
            return Ok(());
        }
        // The kernel still lists the old partition: forget it (the disk no longer has one).
        if let Err(e) = self.sync_partitions(&info, None) {
            warn!(error = %e, "the kernel still lists the old partition; it is gone from the disk");
        }
        let took = started.elapsed();
        info!(
            disk = %self.disk.display(),
            seconds = took.as_secs(),
            "storage wiped: {} overwritten with zeros at {:.1} MiB/s",
            human_size(info.size),
            mib_per_s(info.size, took)
        );
        Ok(())
    }

    /// The encrypted volume's wipe. Each step can be repeated after a crash: the header goes first
    /// (after which the data is noise), the device key last.
    fn crypto_erase(
        &self,
        info: &DiskInfo,
        id: &str,
        cancel: &AtomicBool,
    ) -> Result<(), StorageError> {
        let started = Instant::now();
        info!(disk = %self.disk.display(), "wiping: crypto-erase (close, destroy the LUKS2 keyslots and header)");
        self.close(id)?;
        let mut span = ERASE_SPAN;
        if let Some(part) = partition(info)
            && let Some(header) = self.luks.erase(&part.node)?
        {
            span = span.max(part.start * 512 + header);
        }
        let span = self.zero_ends(info, span, cancel)?;
        // Nothing is lost if the drive cannot discard: what is left is ciphertext without a key.
        self.discard(info);
        if let Err(e) = self.sync_partitions(info, None) {
            warn!(error = %e, "the kernel still lists the old partition; it is gone from the disk");
        }
        self.keys.delete(id)?;
        info!(
            disk = %self.disk.display(),
            millis = started.elapsed().as_millis(),
            "storage wiped: LUKS2 header and keyslots destroyed ({} overwritten), device key deleted",
            human_size(span)
        );
        Ok(())
    }

    fn verify_blocking(&self, id: &str) -> Result<(), StorageError> {
        for path in self.mount_points(id) {
            if self.mounted_at(&path)?.is_some() {
                return Err(StorageError::Residue {
                    path: self.disk.clone(),
                    detail: format!("still mounted at {}", path.display()),
                });
            }
        }
        let info = self.disk_info()?;
        let file = open_direct(&self.disk, false).map_err(self.io("open for reading"))?;
        let mut buf = Aligned::zeroed(usize::try_from(MIB).expect("1 MiB fits"));
        if self.encrypt {
            return self.verify_erased(&file, &info, &mut buf, id);
        }
        self.check_zero(&file, &info, &mut buf, 0, MIB)?;
        self.check_zero(&file, &info, &mut buf, info.size - MIB, MIB)?;
        let blocks = info.size / SAMPLE;
        for i in 0..SAMPLES {
            let even = blocks * i / SAMPLES;
            let random = rand::random::<u64>() % blocks;
            for block in [even, random] {
                let offset = block * SAMPLE;
                self.check_zero(
                    &file,
                    &info,
                    &mut buf,
                    offset,
                    SAMPLE.min(info.size - offset),
                )?;
            }
        }
        debug!(
            disk = %self.disk.display(),
            "wipe verified: first and last MiB and {} sampled blocks are zero",
            2 * SAMPLES
        );
        Ok(())
    }

    /// The crypto-erase's check: the volume is closed, its key deleted, and the first
    /// [`ERASE_SPAN`] (partition table, LUKS2 header and keyslots) and the last MiB read back as
    /// zeros from the device itself.
    fn verify_erased(
        &self,
        file: &File,
        info: &DiskInfo,
        buf: &mut Aligned,
        id: &str,
    ) -> Result<(), StorageError> {
        let residue = |detail: String| StorageError::Residue {
            path: self.disk.clone(),
            detail,
        };
        if luks::is_active(&Self::mapper_name(id)) {
            return Err(residue(format!(
                "/dev/mapper/{} is still open",
                Self::mapper_name(id)
            )));
        }
        if self.keys.load(id)?.is_some() {
            return Err(residue(format!(
                "the device key {} still exists",
                self.keys.path(id).display()
            )));
        }
        let span = ERASE_SPAN.min(info.size - MIB);
        let mut offset = 0;
        while offset < span {
            let len = MIB.min(span - offset);
            self.check_zero(file, info, buf, offset, len)
                .map_err(|e| match e {
                    StorageError::Residue { path, detail } if has_luks_magic(buf.as_slice()) => {
                        StorageError::Residue {
                            path,
                            detail: format!("a LUKS header survived ({detail})"),
                        }
                    }
                    other => other,
                })?;
            offset += len;
        }
        self.check_zero(file, info, buf, info.size - MIB, MIB)?;
        debug!(disk = %self.disk.display(), "crypto-erase verified: header area and last MiB are zero, key gone");
        Ok(())
    }

    // --- Helpers ---

    /// Zero the first `head` bytes of the disk (at most all but its last MiB) and its last MiB,
    /// durably; returns how much of the head was zeroed.
    fn zero_ends(
        &self,
        info: &DiskInfo,
        head: u64,
        cancel: &AtomicBool,
    ) -> Result<u64, StorageError> {
        let head = head.min(info.size - MIB);
        let file = open_direct(&self.disk, true).map_err(self.io("open for writing"))?;
        zero_range(&file, &self.disk, 0, head, cancel, None, None)?;
        zero_range(
            &file,
            &self.disk,
            info.size - MIB,
            info.size,
            cancel,
            None,
            None,
        )?;
        file.sync_data().map_err(self.io("sync"))?;
        Ok(head)
    }

    fn disk_info(&self) -> Result<DiskInfo, StorageError> {
        let meta = std::fs::metadata(&self.disk).map_err(self.io("stat"))?;
        if !meta.file_type().is_block_device() {
            return Err(self.device_err("not a block device"));
        }
        let dev = discover::split_dev(meta.rdev());
        let sys = BlockGraph::new(&self.host.sysfs, Vec::new())
            .dev_dir(dev)
            .ok_or_else(|| {
                self.device_err(format!(
                    "block device {}:{} is unknown to sysfs",
                    dev.0, dev.1
                ))
            })?;
        if sys.join("partition").exists() {
            return Err(self.device_err("a partition, not a whole disk"));
        }
        let lbs = read_trimmed(&sys.join("queue/logical_block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(512);
        let size = discover::size_bytes(&sys);
        if size < MIN_SIZE {
            return Err(self.device_err(format!(
                "too small for storage ({}, no medium?)",
                human_size(size)
            )));
        }
        let name = sys
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(DiskInfo {
            sys,
            name,
            size,
            lbs,
        })
    }

    fn read_mounts(&self) -> Result<Vec<Mount>, StorageError> {
        mountinfo::read(&self.host.mountinfo).map_err(io(&self.host.mountinfo, "read"))
    }

    /// `<state_dir>/mnt` as the mount table spells it.
    fn mounts_root(&self) -> PathBuf {
        self.canonical_state_dir().join("mnt")
    }

    /// `<state_dir>/vol` as the mount table spells it.
    fn volumes_root(&self) -> PathBuf {
        self.canonical_state_dir().join("vol")
    }

    fn canonical_state_dir(&self) -> PathBuf {
        std::fs::canonicalize(&self.state_dir).unwrap_or_else(|_| self.state_dir.clone())
    }

    /// What is mounted at `path`, if anything.
    fn mounted_at(&self, path: &Path) -> Result<Option<Mount>, StorageError> {
        let Ok(path) = std::fs::canonicalize(path) else {
            return Ok(None);
        };
        Ok(self.read_mounts()?.into_iter().rfind(|m| m.target == path))
    }

    /// Unmount the governor's mounts of this disk (under `<state_dir>/mnt` and `<state_dir>/vol`),
    /// last-mounted first; refuse if anyone else has it mounted (the renter container's layer, while
    /// data root is still on the volume, among them).
    fn unmount_ours(&self, info: &DiskInfo) -> Result<(), StorageError> {
        let graph = BlockGraph::new(&self.host.sysfs, self.read_mounts()?);
        let roots = [self.mounts_root(), self.volumes_root()];
        let mut ours = Vec::new();
        for m in &graph.mounts {
            if !graph.mount_disks(m).contains(&info.name) {
                continue;
            }
            if !roots
                .iter()
                .any(|root| mountinfo::is_within(&m.target, root))
            {
                return Err(self.device_err(format!(
                    "in use: mounted at {} (not by the governor); unmount it first",
                    m.target.display()
                )));
            }
            ours.push(m.target.clone());
        }
        for mount_point in ours.iter().rev() {
            umount(mount_point)?;
        }
        Ok(())
    }

    /// Mount volume `id`'s filesystem (on `node`) at its volume point unless it is there, and bind
    /// its `renter/` at the mount point (over the placeholder of a locked volume). Returns the
    /// mount point.
    fn mount(&self, node: &Path, id: &str) -> Result<PathBuf, StorageError> {
        let volume_point = self.volume_point(id);
        let dev = device_number(node)?;
        match self.mounted_at(&volume_point)? {
            Some(m) if m.dev == dev => {}
            Some(m) => {
                return Err(self.device_err(format!(
                    "{} is mounted from another device ({}:{}), not {}",
                    volume_point.display(),
                    m.dev.0,
                    m.dev.1,
                    node.display()
                )));
            }
            None => {
                ensure_mount_point(&volume_point)?;
                run(
                    "mount",
                    [
                        OsStr::new("-t"),
                        OsStr::new("ext4"),
                        OsStr::new("-o"),
                        OsStr::new("noatime"),
                        node.as_os_str(),
                        volume_point.as_os_str(),
                    ],
                )?;
            }
        }
        let renter = volume_point.join(RENTER_DIR);
        ensure_dir(&renter, 0o755)?;
        // Only root on the host goes in: the renter reaches the layer only through the container.
        ensure_dir(&volume_point.join(LAYER_DIR), 0o710)?;
        let mount_point = self.mount_point(id);
        ensure_mount_point(&mount_point)?;
        if self.encrypt {
            // From the start: the container is bound as a propagation slave only if the root is
            // shared when it is created, and a renter who takes the key will need that after a
            // reboot.
            self.share_mounts_root()?;
        }
        run(
            "mount",
            [
                OsStr::new("--bind"),
                renter.as_os_str(),
                mount_point.as_os_str(),
            ],
        )?;
        Ok(mount_point)
    }

    /// The renter container's layer on volume `id`, while its filesystem is mounted (not while
    /// locked).
    pub fn layer_root(&self, id: &str) -> Option<PathBuf> {
        let volume_point = self.volume_point(id);
        let layer = volume_point.join(LAYER_DIR);
        (self.mounted_at(&volume_point).ok()?.is_some() && layer.is_dir()).then_some(layer)
    }

    /// A GPT with one partition over the whole disk, marked as volume `id`, and its protective MBR.
    /// Returns the partition's first and last LBA.
    fn write_gpt(&self, info: &DiskInfo, id: &str) -> Result<(u64, u64), StorageError> {
        let gpt_err = |e: gpt::GptError| self.device_err(format!("writing the GPT: {e}"));
        let lbs = LogicalBlockSize::try_from(info.lbs)
            .map_err(|e| self.device_err(format!("logical block size {}: {e}", info.lbs)))?;
        let file = open_exclusive(
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_EXCL),
            &self.disk,
        )
        .map_err(self.io("open for writing"))?;
        let mut disk = GptConfig::new()
            .writable(true)
            .logical_block_size(lbs)
            .create_from_device(file, None)
            .map_err(gpt_err)?;
        // 1 MiB: 2048 LBAs of 512 bytes, 256 of 4096.
        let align = MIB / info.lbs;
        let first = disk.header().first_usable.div_ceil(align) * align;
        let last = disk.header().last_usable;
        if last < first + align {
            return Err(self.device_err("too small for a partition"));
        }
        let part = Partition {
            part_type_guid: partition_types::LINUX_FS,
            part_guid: Self::volume_guid(id),
            first_lba: first,
            last_lba: last,
            flags: 0,
            name: PARTITION_NAME.to_owned(),
        };
        disk.update_partitions(BTreeMap::from([(1, part)]))
            .map_err(gpt_err)?;
        let mut file = disk.write().map_err(gpt_err)?;
        let disk_lbas = info.size / info.lbs;
        ProtectiveMBR::with_lb_size(u32::try_from(disk_lbas - 1).unwrap_or(u32::MAX))
            .overwrite_lba0(&mut file)
            .map_err(|e| self.device_err(format!("writing the protective MBR: {e}")))?;
        file.sync_all().map_err(self.io("sync"))?;
        Ok((first, last))
    }

    /// The first and last LBA of volume `id`'s partition, if the disk's GPT says it is there.
    fn read_ours(&self, info: &DiskInfo, id: &str) -> Result<(u64, u64), StorageError> {
        let lbs = LogicalBlockSize::try_from(info.lbs)
            .map_err(|e| self.device_err(format!("logical block size {}: {e}", info.lbs)))?;
        let file = File::open(&self.disk).map_err(self.io("open"))?;
        let disk = GptConfig::new()
            .writable(false)
            .logical_block_size(lbs)
            .open_from_device(file)
            .map_err(|e| self.device_err(format!("no volume here: no readable GPT ({e})")))?;
        match disk.partitions().get(&1) {
            Some(p) if p.name == PARTITION_NAME && p.part_guid == Self::volume_guid(id) => {
                Ok((p.first_lba, p.last_lba))
            }
            Some(p) if p.name == PARTITION_NAME => Err(self.device_err(format!(
                "holds another volume (partition GUID {}), not {id}",
                p.part_guid
            ))),
            _ => Err(self.device_err(format!(
                "not a p2pvps volume (no partition named {PARTITION_NAME})"
            ))),
        }
    }

    /// Bring the kernel's view of the disk's partitions in line with its table: partition 1 at
    /// `want` (start and length in 512-byte sectors), or none at all after a wipe.
    ///
    /// BLKRRPART (`blockdev --rereadpt`) first, retried while udev may still hold a partition open.
    /// When the kernel then still lacks the partition (it cannot parse GPT itself: a kernel without
    /// CONFIG_EFI_PARTITION, like this project's test VMs; or BLKRRPART was refused), `partx`
    /// reads the table in user space and adds, updates or deletes partitions through BLKPG.
    fn sync_partitions(
        &self,
        info: &DiskInfo,
        want: Option<(u64, u64)>,
    ) -> Result<(), StorageError> {
        if read_trimmed(&info.sys.join("partscan")).as_deref() == Some("0") {
            let hint = if info.name.starts_with("loop") {
                ": attach it with `losetup --partscan`"
            } else {
                ""
            };
            return Err(self.device_err(format!(
                "the kernel does not scan partitions on this device{hint}"
            )));
        }
        let mut reread = Err(None);
        for attempt in 1..=5 {
            match run(
                "blockdev",
                [OsStr::new("--rereadpt"), self.disk.as_os_str()],
            ) {
                Ok(_) => {
                    reread = Ok(());
                    break;
                }
                Err(e) => {
                    debug!(error = %e, attempt, "re-reading the partition table");
                    reread = Err(Some(e));
                    std::thread::sleep(Duration::from_millis(200) * attempt);
                }
            }
        }
        let done = match want {
            Some(g) => partition(info).is_some_and(|p| (p.start, p.sectors) == g),
            None => reread.is_ok(),
        };
        if done {
            return Ok(());
        }
        let action = if want.is_some() { "-u" } else { "-d" };
        debug!(
            disk = %self.disk.display(),
            "the kernel did not take the partition table; telling it with partx {action}"
        );
        run("partx", [OsStr::new(action), self.disk.as_os_str()]).map_err(|e| {
            let before = match reread {
                Err(Some(r)) => format!("{r}; then "),
                _ => String::new(),
            };
            StorageError::Command {
                command: format!(
                    "blockdev --rereadpt {0}, then partx {action} {0}",
                    self.disk.display()
                ),
                detail: format!("{before}{e}"),
            }
        })?;
        Ok(())
    }

    /// Wait until the kernel shows partition 1 at `(start, sectors)` (512-byte units) with its node.
    fn wait_partition(&self, info: &DiskInfo, want: (u64, u64)) -> Result<Part, StorageError> {
        let deadline = Instant::now() + KERNEL_WAIT;
        loop {
            let part = partition(info);
            if let Some(p) = part.as_ref().filter(|p| (p.start, p.sectors) == want) {
                let node_ok = std::fs::metadata(&p.node).is_ok_and(|m| {
                    m.file_type().is_block_device() && discover::split_dev(m.rdev()) == p.dev
                });
                if node_ok {
                    return Ok(p.clone());
                }
            }
            if Instant::now() >= deadline {
                let seen = part.map_or_else(
                    || "no partition 1".to_owned(),
                    |p| {
                        format!(
                            "{} at {} for {} sectors",
                            p.node.display(),
                            p.start,
                            p.sectors
                        )
                    },
                );
                return Err(self.device_err(format!(
                    "the kernel did not show partition 1 at sector {} for {} sectors within {} s \
                     (it shows {seen})",
                    want.0,
                    want.1,
                    KERNEL_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn discard(&self, info: &DiskInfo) {
        let max = read_trimmed(&info.sys.join("queue/discard_max_bytes"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        if max == 0 {
            debug!(disk = %self.disk.display(), "no discard support");
            return;
        }
        let started = Instant::now();
        match run("blkdiscard", [self.disk.as_os_str()]) {
            Ok(_) => info!(
                disk = %self.disk.display(),
                millis = started.elapsed().as_millis(),
                "storage discarded; now overwriting"
            ),
            Err(e) => warn!(error = %e, "discard failed; overwriting anyway"),
        }
    }

    /// Read `[offset, offset + len)` without the page cache and fail on any non-zero byte.
    fn check_zero(
        &self,
        file: &File,
        info: &DiskInfo,
        buf: &mut Aligned,
        offset: u64,
        len: u64,
    ) -> Result<(), StorageError> {
        let len = usize::try_from(len).expect("at most 1 MiB");
        let bytes = &mut buf.as_mut()[..len];
        file.read_exact_at(bytes, offset)
            .map_err(self.io("read back"))?;
        let Some(i) = bytes.iter().position(|&b| b != 0) else {
            return Ok(());
        };
        let lbs = usize::try_from(info.lbs).expect("small");
        let gpt_at = |at: usize| bytes.get(at..at + 8) == Some(b"EFI PART".as_slice());
        let detail = if offset == 0 && gpt_at(lbs) {
            "a GPT partition table (header at LBA 1)".to_owned()
        } else if offset + len as u64 == info.size && gpt_at(len - lbs) {
            "a backup GPT header at the last LBA".to_owned()
        } else {
            format!("non-zero data at byte {}", offset + i as u64)
        };
        Err(StorageError::Residue {
            path: self.disk.clone(),
            detail,
        })
    }
}

impl Storage for UsbStorage {
    async fn prepare(&self, id: &str) -> Result<PathBuf, StorageError> {
        let id = id.to_owned();
        self.blocking(move |s, cancel| s.prepare_blocking(&id, cancel))
            .await
    }

    async fn open(&self, id: &str) -> Result<PathBuf, StorageError> {
        let id = id.to_owned();
        self.blocking(move |s, _| s.open_blocking(&id)).await
    }

    async fn wipe(&self, id: &str) -> Result<(), StorageError> {
        let id = id.to_owned();
        self.blocking(move |s, cancel| s.wipe_blocking(&id, cancel, true, None))
            .await
    }

    async fn verify_wiped(&self, id: &str) -> Result<(), StorageError> {
        let id = id.to_owned();
        self.blocking(move |s, _| s.verify_blocking(&id)).await
    }

    fn describe(&self) -> String {
        if self.encrypt {
            format!("USB drive {} (LUKS2, ext4)", self.disk.display())
        } else {
            format!(
                "USB drive {} (plain ext4, not encrypted)",
                self.disk.display()
            )
        }
    }

    fn mounts_propagate(&self) -> bool {
        UsbStorage::mounts_propagate(self)
    }

    fn keeps_layers(&self) -> bool {
        true
    }

    fn layer_root(&self, id: &str) -> Option<PathBuf> {
        UsbStorage::layer_root(self, id)
    }
}

impl VolumeKeys for UsbStorage {
    fn key_status(&self, id: &str) -> Result<KeyStatus, StorageError> {
        self.resolved().key_status_now(id)
    }

    fn set_passphrase(
        &self,
        id: &str,
        passphrase: &Secret,
        old: Option<&Secret>,
    ) -> Result<(), StorageError> {
        self.resolved().set_passphrase_now(id, passphrase, old)
    }

    fn unlock(&self, id: &str, passphrase: &Secret) -> Result<PathBuf, StorageError> {
        self.resolved().unlock_now(id, passphrase)
    }
}

/// The renter's key requests, on the drive as [`UsbStorage::resolved`] finds it.
impl UsbStorage {
    fn key_status_now(&self, id: &str) -> Result<KeyStatus, StorageError> {
        if !self.encrypt {
            return Ok(KeyStatus {
                encrypted: false,
                holder: KeyHolder::None,
                locked: false,
            });
        }
        check_id(id)?;
        let holder = if self.keys.load(id)?.is_some() {
            KeyHolder::Device
        } else {
            KeyHolder::Renter
        };
        Ok(KeyStatus {
            encrypted: true,
            holder,
            locked: !luks::is_active(&Self::mapper_name(id)),
        })
    }

    fn set_passphrase_now(
        &self,
        id: &str,
        passphrase: &Secret,
        old: Option<&Secret>,
    ) -> Result<(), StorageError> {
        if !self.encrypt {
            return Err(StorageError::Refused(
                "this device's storage is not encrypted (encryptStorage is false, or its kernel \
                 has no dm-crypt): there is no key to hold"
                    .into(),
            ));
        }
        check_id(id)?;
        let info = self.disk_info()?;
        let part = self.our_partition(&info, id)?;
        let device_key = self.keys.load(id)?;
        let existing: &[u8] = match (old, &device_key) {
            (Some(old), _) => old.expose().as_bytes(),
            (None, Some(key)) => key,
            (None, None) => {
                return Err(StorageError::Refused(
                    "a passphrase is already set: give the current one to change it".into(),
                ));
            }
        };
        self.luks
            .set_renter_passphrase(
                &part.node,
                existing,
                passphrase.expose().as_bytes(),
                self.kdf,
            )
            .map_err(|e| {
                if e.is_wrong_key() {
                    StorageError::Refused("the current passphrase is wrong".into())
                } else {
                    e.into()
                }
            })?;
        // Only once the new passphrase is proven to open the volume does the device let go.
        let slot = self
            .luks
            .check_key(&part.node, passphrase.expose().as_bytes())?;
        if slot != luks::RENTER_SLOT {
            return Err(self.device_err(format!(
                "the new passphrase opened keyslot {slot}, not {}",
                luks::RENTER_SLOT
            )));
        }
        self.luks.destroy_slot(&part.node, luks::DEVICE_SLOT)?;
        self.keys.delete(id)?;
        info!(
            volume = id,
            "the renter now holds the storage key; the device key is destroyed"
        );
        Ok(())
    }

    fn unlock_now(&self, id: &str, passphrase: &Secret) -> Result<PathBuf, StorageError> {
        if !self.encrypt {
            return Err(StorageError::Refused(
                "this device's storage is not encrypted: nothing to unlock".into(),
            ));
        }
        check_id(id)?;
        if luks::is_active(&Self::mapper_name(id)) {
            return Err(StorageError::Refused(
                "the storage is already unlocked".into(),
            ));
        }
        let info = self.disk_info()?;
        let part = self.our_partition(&info, id)?;
        self.luks
            .activate(
                &part.node,
                &Self::mapper_name(id),
                passphrase.expose().as_bytes(),
            )
            .map_err(|e| {
                if e.is_wrong_key() {
                    StorageError::Refused("wrong passphrase".into())
                } else {
                    e.into()
                }
            })?;
        let node = self.wait_mapper(id)?;
        let mount_point = self.mount(&node, id)?;
        info!(mount_point = %mount_point.display(), "storage unlocked by the renter");
        Ok(mount_point)
    }
}

/// The disk as sysfs shows it.
struct DiskInfo {
    /// Its sysfs directory.
    sys: PathBuf,
    name: String,
    size: u64,
    /// Logical block size in bytes.
    lbs: u64,
}

/// Partition 1 as the kernel shows it.
#[derive(Debug, Clone)]
struct Part {
    node: PathBuf,
    dev: (u32, u32),
    /// Start and length in 512-byte sectors (sysfs units).
    start: u64,
    sectors: u64,
}

/// Partition 1 of the disk in sysfs.
fn partition(info: &DiskInfo) -> Option<Part> {
    let entries = std::fs::read_dir(&info.sys).ok()?;
    for entry in entries.flatten() {
        let dir = entry.path();
        if read_trimmed(&dir.join("partition")).as_deref() != Some("1") {
            continue;
        }
        let number = |f: &str| read_trimmed(&dir.join(f)).and_then(|s| s.parse::<u64>().ok());
        let dev = read_trimmed(&dir.join("dev"))?;
        let (major, minor) = dev.split_once(':')?;
        return Some(Part {
            node: Path::new("/dev").join(entry.file_name()),
            dev: (major.parse().ok()?, minor.parse().ok()?),
            start: number("start")?,
            sectors: number("size")?,
        });
    }
    None
}

/// A partition's LBAs as sysfs's 512-byte start and length.
fn geometry(info: &DiskInfo, first: u64, last: u64) -> (u64, u64) {
    let per = info.lbs / 512;
    (first * per, (last - first + 1) * per)
}

fn open_direct(path: &Path, write: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    if write {
        // O_EXCL on a block device: fails while it is mounted or otherwise claimed.
        options
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_EXCL);
        open_exclusive(&options, path)
    } else {
        options.read(true).custom_flags(libc::O_DIRECT);
        options.open(path)
    }
}

/// Open with O_EXCL, trying again for a moment on EBUSY. A child process forked by any thread holds
/// a copy of every open descriptor until it execs, so an exclusive descriptor just closed (ours, or
/// a helper program's) can keep its claim for that moment; a real holder (a mount) outlasts this.
fn open_exclusive(options: &OpenOptions, path: &Path) -> std::io::Result<File> {
    let mut tries = 0;
    loop {
        match options.open(path) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < BUSY_TRIES => {
                tries += 1;
                std::thread::sleep(BUSY_PAUSE);
            }
            other => return other,
        }
    }
}

/// Write zeros over `[start, end)` with direct 4 MiB writes; returns the bytes written. Stops early
/// after `stop_after` bytes, and with an error when `cancel` is set.
fn zero_range(
    file: &File,
    path: &Path,
    start: u64,
    end: u64,
    cancel: &AtomicBool,
    mut progress: Option<&mut Progress>,
    stop_after: Option<u64>,
) -> Result<u64, StorageError> {
    let zeros = Aligned::zeroed(CHUNK);
    let mut offset = start;
    while offset < end {
        if cancel.load(Ordering::Relaxed) {
            return Err(StorageError::Device {
                path: path.to_owned(),
                detail: format!("overwrite interrupted at byte {offset}"),
            });
        }
        let len = usize::try_from((end - offset).min(CHUNK as u64)).expect("at most a chunk");
        file.write_all_at(&zeros.as_slice()[..len], offset)
            .map_err(io(path, "write zeros"))?;
        offset += len as u64;
        if let Some(p) = progress.as_deref_mut() {
            p.tick(offset - start);
        }
        if stop_after.is_some_and(|s| offset - start >= s) {
            break;
        }
    }
    Ok(offset - start)
}

/// The overwrite's progress, logged every few seconds.
struct Progress {
    disk: String,
    total: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(disk: &Path, total: u64) -> Self {
        let now = Instant::now();
        Self {
            disk: disk.display().to_string(),
            total,
            started: now,
            last: now,
        }
    }

    fn tick(&mut self, done: u64) {
        if self.last.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last = Instant::now();
        let elapsed = self.started.elapsed();
        let rate = mib_per_s(done, elapsed);
        let left_s = if rate > 0.0 {
            format!("{:.0}", mib_f64(self.total.saturating_sub(done)) / rate)
        } else {
            "?".to_owned()
        };
        info!(
            disk = %self.disk,
            "wiping: {} of {} MiB ({:.1}%), {rate:.1} MiB/s, about {left_s} s left",
            done / MIB,
            self.total / MIB,
            mib_f64(done) * 100.0 / mib_f64(self.total).max(1.0),
        );
    }
}

#[allow(clippy::cast_precision_loss)] // MiB figures for a log line
fn mib_f64(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    mib_f64(bytes) / took.as_secs_f64().max(1e-6)
}

/// A zeroed buffer whose start is aligned for O_DIRECT.
struct Aligned {
    buf: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN];
        let offset = buf.as_ptr().align_offset(ALIGN);
        assert!(offset < ALIGN, "a byte buffer can always be aligned");
        Self { buf, offset, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len]
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.offset..self.offset + self.len]
    }
}

/// Sets the flag when dropped: the caller stopped waiting.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether `bytes` hold a LUKS header's magic (primary or LUKS2 secondary).
fn has_luks_magic(bytes: &[u8]) -> bool {
    bytes
        .windows(LUKS_MAGIC.len())
        .any(|w| w == LUKS_MAGIC || w == LUKS_MAGIC2)
}

/// Unmount `mount_point`. "target is busy" lasts a moment when another thread's child has just
/// inherited a descriptor of a file on it (see `open_exclusive`); a real user outlasts the retries.
pub(crate) fn umount(mount_point: &Path) -> Result<(), StorageError> {
    let mut tries = 0;
    while let Err(e) = run("umount", [mount_point.as_os_str()]) {
        // Gone already: a mount under a shared mount is listed once per peer, and unmounting one
        // copy unmounts the others by propagation.
        if e.to_string().contains("not mounted") {
            debug!(mount_point = %mount_point.display(), "already unmounted");
            return Ok(());
        }
        if tries >= BUSY_TRIES || !e.to_string().contains("busy") {
            return Err(e.into());
        }
        tries += 1;
        std::thread::sleep(BUSY_PAUSE);
    }
    info!(mount_point = %mount_point.display(), "storage unmounted");
    Ok(())
}

/// Create a mount point, its parent closed to other users.
fn ensure_mount_point(mount_point: &Path) -> Result<(), StorageError> {
    let root = mount_point.parent().unwrap_or(mount_point);
    std::fs::create_dir_all(root).map_err(io(root, "create"))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(io(root, "chmod"))?;
    ensure_dir(mount_point, 0o755)
}

/// Create directory `path` with `mode` if it is missing.
fn ensure_dir(path: &Path, mode: u32) -> Result<(), StorageError> {
    match std::fs::create_dir(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io(path, "chmod")),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path, "create")(e)),
    }
}

/// The `major:minor` of a block device node.
fn device_number(node: &Path) -> Result<(u32, u32), StorageError> {
    let meta = std::fs::metadata(node).map_err(io(node, "stat"))?;
    Ok(discover::split_dev(meta.rdev()))
}

/// Volume ids become file and device-mapper names: letters, digits, `-` and `_` only.
fn check_id(id: &str) -> Result<(), StorageError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(StorageError::Device {
            path: PathBuf::from(id),
            detail: "not a valid volume id".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmounting_what_is_not_mounted_is_done_already() {
        let dir = tempfile::tempdir().unwrap();
        umount(dir.path()).unwrap();
        let e = umount(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("umount"), "{e}");
    }

    #[test]
    fn luks_magics_are_recognised() {
        let mut block = vec![0u8; 4096];
        assert!(!has_luks_magic(&block));
        block[16384 % 4096..][..6].copy_from_slice(LUKS_MAGIC2);
        assert!(has_luks_magic(&block));
    }

    #[test]
    fn volume_guids_are_stable_and_distinct() {
        assert_eq!(UsbStorage::volume_guid("a1"), UsbStorage::volume_guid("a1"));
        assert_ne!(UsbStorage::volume_guid("a1"), UsbStorage::volume_guid("a2"));
        assert_eq!(UsbStorage::volume_guid("a1").get_version_num(), 5);
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [512, CHUNK] {
            let b = Aligned::zeroed(len);
            assert_eq!(b.as_slice().as_ptr().align_offset(ALIGN), 0);
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn failed_commands_keep_command_and_stderr() {
        let e = run("ls", ["/nonexistent-p2pvps"]).unwrap_err().to_string();
        assert!(
            e.starts_with("`ls /nonexistent-p2pvps` failed: exit status: 2: "),
            "{e}"
        );
        assert!(e.contains("No such file or directory"), "{e}");
        let e = run("p2pvps-no-such-program", ["x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not start it"), "{e}");
    }

    #[test]
    fn geometry_in_sysfs_sectors() {
        let info = DiskInfo {
            sys: PathBuf::new(),
            name: "sda".into(),
            size: 64 << 30,
            lbs: 4096,
        };
        assert_eq!(geometry(&info, 256, 511), (2048, 2048));
    }
}
