//! The USB storage backend on real loop devices (sparse files, `losetup --partscan`): GPT, mkfs,
//! mount, wipe, verify, resume after a crash mid-wipe; discovery on the real sysfs.
//!
//! Needs root and loop devices (as CI has). Without them the tests fail with a message; they do not
//! skip.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p2pvps_governor::config::StorageDevice;
use p2pvps_governor::storage::discover::{self, DiscoverError, HostPaths};
use p2pvps_governor::storage::usb::{FS_LABEL, PARTITION_NAME};
use p2pvps_governor::storage::{Storage, StorageError, UsbStorage};

use p2pvps_testkit::{Loop, MIB, grep};
const MIB_BYTES: usize = 1 << 20;

/// A loop disk, a state dir, and the storage on them. Fields drop in order: the loop first.
struct Rig {
    disk: Loop,
    storage: UsbStorage,
    state: tempfile::TempDir,
    _images: tempfile::TempDir,
}

impl Rig {
    fn new(mib: u64) -> Self {
        let images = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let disk = Loop::new(&images.path().join("usb.img"), mib);
        let storage = UsbStorage::new(&disk.dev, state.path());
        Self {
            disk,
            storage,
            state,
            _images: images,
        }
    }
}

/// Drop the device's page cache so reads come from the device.
fn flush(dev: &Path) {
    let st = Command::new("blockdev")
        .arg("--flushbufs")
        .arg(dev)
        .status()
        .unwrap();
    assert!(st.success());
}

fn canary() -> String {
    format!("P2PVPS-CANARY-{:016x}", rand::random::<u64>())
}

fn write_synced(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn mount_source(mount_point: &Path) -> Option<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount_point = std::fs::canonicalize(mount_point).ok()?;
    mounts.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if Path::new(left.split(' ').nth(4)?) != mount_point {
            return None;
        }
        let mut r = right.split(' ');
        Some((r.next()?.to_owned(), r.next()?.to_owned()))
    })
}

fn blkid(dev: &Path, tag: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag])
        .arg(dev)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn prepare_write_wipe_verify_and_the_canary_is_gone() {
    let rig = Rig::new(128);
    let s = &rig.storage;

    let t = Instant::now();
    let path = s.prepare("v1").await.unwrap();
    let prepare_took = t.elapsed();
    assert_eq!(path, rig.state.path().join("mnt/v1"));
    let (fstype, source) = mount_source(&path).expect("mounted");
    assert_eq!(fstype, "ext4");
    assert_eq!(Path::new(&source), rig.disk.partition(1));
    assert_eq!(
        rig.disk.kernel_partitions(),
        vec![format!("{}p1", rig.disk.name())]
    );

    // The layout: protective MBR, GPT with one 1 MiB-aligned partition marked as volume v1, ext4.
    let raw = std::fs::read(&rig.disk.dev).unwrap();
    assert_eq!(raw[450], 0xEE, "protective MBR partition type");
    assert_eq!(&raw[510..512], &[0x55, 0xAA]);
    assert_eq!(&raw[512..520], b"EFI PART");
    drop(raw);
    let gpt = gpt::GptConfig::new().open(&rig.disk.dev).unwrap();
    let parts = gpt.partitions();
    assert_eq!(parts.len(), 1);
    let p = &parts[&1];
    assert_eq!(p.name, PARTITION_NAME);
    assert_eq!(p.part_guid, UsbStorage::volume_guid("v1"));
    assert_eq!(p.first_lba, 2048);
    assert_eq!(p.last_lba, gpt.header().last_usable);
    assert_eq!(p.part_type_guid, gpt::partition_types::LINUX_FS);
    assert_eq!(blkid(&rig.disk.partition(1), "LABEL"), FS_LABEL);
    assert_eq!(blkid(&rig.disk.partition(1), "TYPE"), "ext4");

    // The renter sees only `renter/`; their container's layer is beside it on the same
    // filesystem, reached only through the container.
    let layer = s.layer_root("v1").expect("a layer directory while mounted");
    assert_eq!(layer, s.volume_point("v1").join("layer"));
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    assert_eq!(dev(&layer), dev(&path), "the layer is on the volume");
    let seen: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(seen.is_empty(), "the renter's view starts empty: {seen:?}");

    // The renter writes; open (a resumed rental) gives the same, already mounted, volume.
    let secret = canary();
    write_synced(&path.join("notes.txt"), secret.repeat(100).as_bytes());
    assert_eq!(s.open("v1").await.unwrap(), path);
    assert!(
        s.open("v2")
            .await
            .unwrap_err()
            .to_string()
            .contains("holds another volume")
    );
    flush(&rig.disk.dev);
    assert!(
        grep(&rig.disk.dev, &secret),
        "the canary is on the raw device before the wipe"
    );
    assert!(grep(&rig.disk.image, &secret));

    // Not wiped while mounted.
    let e = s.verify_wiped("v1").await.unwrap_err();
    assert!(matches!(e, StorageError::Residue { .. }), "{e}");
    assert!(e.to_string().contains("still mounted at"), "{e}");

    let t = Instant::now();
    s.wipe("v1").await.unwrap();
    let wipe_took = t.elapsed();
    let t = Instant::now();
    s.verify_wiped("v1").await.unwrap();
    let verify_took = t.elapsed();
    assert!(mount_source(&path).is_none());
    assert!(mount_source(&s.volume_point("v1")).is_none());
    assert!(s.layer_root("v1").is_none());
    assert!(!path.exists(), "the mount point is removed");
    assert!(
        rig.disk.kernel_partitions().is_empty(),
        "the kernel forgot the partition"
    );
    flush(&rig.disk.dev);
    assert!(
        !grep(&rig.disk.dev, &secret),
        "the canary survived the wipe on the device"
    );
    assert!(
        !grep(&rig.disk.image, &secret),
        "the canary survived the wipe in the image"
    );
    let e = s.open("v1").await.unwrap_err().to_string();
    assert!(e.contains("no volume here"), "{e}");

    // Again: idempotent.
    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
    eprintln!(
        "128 MiB loop: prepare {prepare_took:?}, wipe (discard + zero) {wipe_took:?}, verify {verify_took:?}"
    );
}

#[tokio::test]
async fn a_wipe_cut_short_is_caught_and_resumed() {
    let rig = Rig::new(128);
    let s = &rig.storage;
    let path = s.prepare("v1").await.unwrap();
    let secret = canary();
    // Fill most of the drive, the canary at the end of it.
    let mut data = vec![0x5a_u8; 96 * MIB_BYTES];
    let tail = data.len() - secret.len();
    data[tail..].copy_from_slice(secret.as_bytes());
    write_synced(&path.join("big"), &data);
    drop(data);

    // Power cut after the first 4 MiB of the overwrite.
    s.overwrite("v1", Some(4 * MIB)).await.unwrap();
    flush(&rig.disk.dev);
    assert!(
        grep(&rig.disk.dev, &secret),
        "a cut-short wipe leaves the rest"
    );
    let e = s.verify_wiped("v1").await.unwrap_err();
    assert!(matches!(e, StorageError::Residue { .. }), "{e}");
    assert!(e.to_string().contains("backup GPT header"), "{e}");

    // The resumed wipe starts over and finishes.
    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
    flush(&rig.disk.dev);
    assert!(!grep(&rig.disk.dev, &secret));
    assert!(!grep(&rig.disk.image, &secret));
}

#[tokio::test]
async fn dropping_the_wipe_stops_it() {
    // 1 GiB, so that the overwrite (about 1 GiB/s here) is still running when it is dropped.
    let rig = Rig::new(1024);
    let s = &rig.storage;
    s.prepare("v1").await.unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(30), s.overwrite("v1", None)).await;
    assert!(
        dropped.is_err(),
        "the overwrite finished within 30 ms: make the disk larger"
    );
    // The blocking task stops at its next chunk and closes the disk (it holds it with O_EXCL).
    let t = Instant::now();
    while File::options()
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(&rig.disk.dev)
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the overwrite did not stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // It did not go on to the end: the backup GPT header (and maybe the primary) is still there.
    let e = s.verify_wiped("v1").await.unwrap_err().to_string();
    assert!(e.contains("GPT"), "{e}");
    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
}

#[tokio::test]
async fn verify_finds_data_left_in_the_middle() {
    let rig = Rig::new(64);
    let s = &rig.storage;
    let path = s.prepare("v1").await.unwrap();
    write_synced(&path.join("big"), &vec![0xa5_u8; 40 * MIB_BYTES]);
    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
    // Something writes into the middle after the wipe: the sampled read-back sees it.
    let f = File::options().write(true).open(&rig.disk.image).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![1u8; 2 * MIB_BYTES], 31 * MIB).unwrap();
    f.sync_all().unwrap();
    flush(&rig.disk.dev);
    let e = s.verify_wiped("v1").await.unwrap_err().to_string();
    assert!(e.contains("not wiped: non-zero data at byte"), "{e}");
}

#[tokio::test]
async fn prepare_replaces_an_old_partition_table() {
    let rig = Rig::new(64);
    // Someone's old drive: three partitions the kernel knows about.
    {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&rig.disk.dev)
            .unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .create_from_device(file, None)
            .unwrap();
        for name in ["boot", "root", "home"] {
            disk.add_partition(name, 8 * MIB, gpt::partition_types::LINUX_FS, 0, Some(2048))
                .unwrap();
        }
        let mut file = disk.write().unwrap();
        gpt::mbr::ProtectiveMBR::with_lb_size(64 * 2048 - 1)
            .overwrite_lba0(&mut file)
            .unwrap();
    }
    // `partx -u`, not `blockdev --rereadpt`: the test machines' kernel cannot parse GPT itself.
    let st = Command::new("partx")
        .arg("-u")
        .arg(&rig.disk.dev)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(rig.disk.kernel_partitions().len(), 3);

    let s = &rig.storage;
    s.prepare("v1").await.unwrap();
    assert_eq!(
        rig.disk.kernel_partitions(),
        vec![format!("{}p1", rig.disk.name())]
    );
    let gpt = gpt::GptConfig::new().open(&rig.disk.dev).unwrap();
    assert_eq!(gpt.partitions().len(), 1);
    assert_eq!(gpt.partitions()[&1].name, PARTITION_NAME);

    // A second prepare (next rental, or a retry) takes the drive over from the older volume.
    let old = rig.storage.mount_point("v1");
    let path = s.prepare("v2").await.unwrap();
    assert!(
        mount_source(&old).is_none(),
        "the older volume was unmounted"
    );
    assert!(mount_source(&path).is_some());
    assert!(
        s.open("v1")
            .await
            .unwrap_err()
            .to_string()
            .contains("holds another volume")
    );
    // And a retry of the same prepare starts over.
    std::fs::write(path.join("half-made"), "x").unwrap();
    let path = s.prepare("v2").await.unwrap();
    assert!(!path.join("half-made").exists());
    s.wipe("v2").await.unwrap();
    s.verify_wiped("v2").await.unwrap();
}

#[tokio::test]
async fn a_live_volume_survives_a_replug() {
    let images = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let disk = Loop::new(&images.path().join("usb.img"), 64);
    let s = UsbStorage::new(&disk.dev, state.path());
    let path = s.prepare("v1").await.unwrap();
    let secret = canary();
    write_synced(&path.join("notes.txt"), secret.as_bytes());
    // Power cut: the mount and the loop device go away (Loop's drop unmounts, then detaches).
    let image = disk.detach();
    assert!(mount_source(&path).is_none());

    let disk = Loop::attach(&image);
    let s = UsbStorage::new(&disk.dev, state.path());
    assert_eq!(s.open("v1").await.unwrap(), path);
    assert_eq!(
        std::fs::read_to_string(path.join("notes.txt")).unwrap(),
        secret
    );
    // Open again: already mounted, same answer.
    assert_eq!(s.open("v1").await.unwrap(), path);
    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
    drop(disk);
}

#[tokio::test]
async fn a_drive_mounted_by_someone_else_is_left_alone() {
    let rig = Rig::new(64);
    let s = &rig.storage;
    let path = s.prepare("v1").await.unwrap();
    write_synced(&path.join("f"), b"renter");
    let elsewhere = rig.state.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let st = Command::new("mount")
        .arg(rig.disk.partition(1))
        .arg(&elsewhere)
        .status()
        .unwrap();
    assert!(st.success());
    for e in [
        s.wipe("v1").await.unwrap_err(),
        s.prepare("v2").await.unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(e.contains("in use: mounted at"), "{e}");
        assert!(e.contains("elsewhere"), "{e}");
    }
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("renter/f")).unwrap(),
        "renter"
    );
    let st = Command::new("umount").arg(&elsewhere).status().unwrap();
    assert!(st.success());
    s.wipe("v1").await.unwrap();
    s.verify_wiped("v1").await.unwrap();
}

#[tokio::test]
async fn loop_without_partition_scanning_is_explained() {
    let images = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let image = images.path().join("usb.img");
    File::create(&image).unwrap().set_len(64 * MIB).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup (needs root and loop devices): {out:?}"
    );
    let disk = Loop {
        dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        image,
    };
    let e = UsbStorage::new(&disk.dev, state.path())
        .prepare("v1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("losetup --partscan"), "{e}");
}

#[tokio::test]
async fn overwrite_rate_on_a_loop_device() {
    let rig = Rig::new(256);
    let s = &rig.storage;
    s.prepare("v1").await.unwrap();
    let t = Instant::now();
    s.overwrite("v1", None).await.unwrap();
    let zero = t.elapsed();
    s.verify_wiped("v1").await.unwrap();
    s.prepare("v1").await.unwrap();
    let t = Instant::now();
    s.wipe("v1").await.unwrap();
    let wipe = t.elapsed();
    s.verify_wiped("v1").await.unwrap();
    #[allow(clippy::cast_precision_loss)]
    let rate = |d: std::time::Duration| 256.0 / d.as_secs_f64();
    eprintln!(
        "256 MiB loop: zero overwrite {zero:?} ({:.0} MiB/s); discard + zero {wipe:?} ({:.0} MiB/s)",
        rate(zero),
        rate(wipe)
    );
}

#[tokio::test]
async fn discovery_on_this_machine() {
    let images = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let disk = Loop::new(&images.path().join("usb.img"), 64);
    let host = HostPaths::default();

    // Named: a loop device is used as is.
    let named = StorageDevice::Path(disk.dev.clone());
    let d = discover::find(&host, state.path(), &named)
        .unwrap()
        .unwrap();
    assert_eq!(d.path, disk.dev);
    assert_eq!(d.name, disk.name());
    assert_eq!(d.size_bytes, 64 * MIB);

    // Auto never takes it.
    match discover::find_usb(&host, state.path()) {
        Ok(d) => assert!(!d.name.starts_with("loop"), "{d:?}"),
        Err(DiscoverError::NoUsbDrive { skipped }) => {
            assert!(
                skipped
                    .iter()
                    .any(|s| s.name == disk.name() && s.why.starts_with("loop device")),
                "{skipped:?}"
            );
        }
        Err(e) => panic!("{e}"),
    }

    // Its partition is refused, with the disk named; so is the disk holding the state dir.
    let s = UsbStorage::new(&disk.dev, state.path());
    s.prepare("v1").await.unwrap();
    let e = discover::check_named(&host, state.path(), &disk.partition(1)).unwrap_err();
    assert!(matches!(e, DiscoverError::Partition { .. }), "{e}");
    // While the governor's own volume is mounted, the drive is still eligible…
    discover::check_named(&host, state.path(), &disk.dev).unwrap();
    // …but not while someone else's state dir lives on it.
    let e = discover::check_named(&host, &s.mount_point("v1"), &disk.dev).unwrap_err();
    assert!(matches!(e, DiscoverError::SystemDisk { .. }), "{e}");
    s.wipe("v1").await.unwrap();

    // The root filesystem's disk, named, is refused.
    let root_dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata("/").unwrap());
    let (major, minor) = (libc_major(root_dev), libc_minor(root_dev));
    if major == 0 {
        eprintln!(
            "root is on a virtual filesystem here ({major}:{minor}); skipping the root-disk check"
        );
        return;
    }
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    let sys = if sys.join("partition").exists() {
        sys.parent().unwrap().to_owned()
    } else {
        sys
    };
    let dev = std::fs::read_to_string(sys.join("dev")).unwrap();
    let (maj, min) = dev.trim().split_once(':').unwrap();
    let node = state.path().join("rootdisk");
    let st = Command::new("mknod")
        .arg(&node)
        .args(["b", maj, min])
        .status()
        .unwrap();
    assert!(st.success());
    let e = discover::check_named(&host, state.path(), &node).unwrap_err();
    assert!(matches!(e, DiscoverError::SystemDisk { .. }), "{e}");
    assert!(e.to_string().contains("it holds /"), "{e}");
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}
