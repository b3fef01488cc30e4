//! Guest side of the storage VM tests: the governor's USB storage on a real kernel with dm-crypt
//! and usb-storage (QEMU's qemu-xhci + usb-storage disk). Each scenario is one boot; the state dir
//! is the virtio state disk at /state, so a later boot (a reboot) sees what an earlier one left.
//! Prints `ok: …` lines for the host test to check, and exits non-zero (with the reason) on any
//! failed expectation.
//!
//! Scenarios (argv[1]): `provision`, `locked-then-unlock`, `crash-mid-wipe`, `resume-wipe`,
//! `hotplug`, `pulled-drive`, `bench-wipe`; and `governor-rent`, `governor-reboot`: the governor's own lifecycle
//! (against the marketplace devserver on the host, `P2PVPS_MARKET` and `P2PVPS_DEVICE`) on this
//! storage, with the renter's key requests going through its real socket, as `p2pvps-storage`
//! sends them. Only the container runtime is the in-memory one: no Docker engine in this VM.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::sync::Arc;

use p2pvps_governor::clock::SystemClock;
use p2pvps_governor::lifecycle::{Lifecycle, Settings};
use p2pvps_governor::marketplace::{Marketplace, Specs};
use p2pvps_governor::runtime::Limits;
use p2pvps_governor::runtime::fake::FakeRuntime;
use p2pvps_governor::socket::{self, Hub};
use p2pvps_governor::state::{Phase, State, StateStore};
use p2pvps_governor::storage::discover::{self, HostPaths};
use p2pvps_governor::storage::luks::{self, Luks, PassphraseKdf};
use p2pvps_governor::storage::{KeyHolder, Storage, UsbStorage, VolumeKeys};
use p2pvps_governor::types::DeviceId;
use p2pvps_governor::types::Secret;
use serde_json::json;

const STATE: &str = "/state";
/// The volume id all boots of one test share (the state a real governor keeps in state.json).
const VOLUME: &str = "vmtestvolume0001";
const PASSPHRASE: &str = "correct horse battery";
const CANARY_FILE: &str = "/state/canary";

type Result<T> = std::result::Result<T, String>;

fn check(cond: bool, what: impl std::fmt::Display) -> Result<()> {
    if cond {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("FAILED: {what}"))
    }
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The USB disk the governor's discovery picks (`storageDevice: auto`), waiting up to `wait`.
async fn usb_disk(wait: Duration) -> Result<PathBuf> {
    let host = HostPaths::default();
    let state = Path::new(STATE);
    let deadline = Instant::now() + wait;
    loop {
        match discover::find_usb(&host, state) {
            Ok(disk) => {
                println!(
                    "ok: discovery picked {} ({})",
                    disk.path.display(),
                    disk.reason
                );
                return Ok(disk.path);
            }
            Err(e) if Instant::now() < deadline => {
                println!("waiting for storage: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(format!("no USB disk: {e}")),
        }
    }
}

fn storage(disk: PathBuf) -> UsbStorage {
    UsbStorage::new(disk, STATE).encrypted(PassphraseKdf::Fast)
}

/// A random marker, written into the volume and remembered on the state disk.
fn new_canary() -> String {
    format!("P2PVPS-CANARY-{:016x}", rand::random::<u64>())
}

/// What a volume holds besides mkfs's lost+found.
fn renter_files(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)
        .map_err(s)?
        .filter_map(std::result::Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect())
}

/// Flush every filesystem to its device (busybox `sync`) before the VM powers off.
/// Wipe and verify the volume, printing how long it took as `measure: WHAT N ms`.
async fn wipe_and_verify(usb: &UsbStorage, what: &str) -> Result<()> {
    let started = Instant::now();
    usb.wipe(VOLUME).await.map_err(s)?;
    usb.verify_wiped(VOLUME).await.map_err(s)?;
    println!("measure: {what} {} ms", started.elapsed().as_millis());
    Ok(())
}

fn sync_all() {
    let _ = std::process::Command::new("sync").status();
}

/// Boot 1: discovery, a fresh encrypted volume, a canary in it (printed: the host checks that the
/// drive holds only its ciphertext), the device key on the state disk (0600); then the renter takes
/// the key over.
async fn provision() -> Result<()> {
    let disk = usb_disk(Duration::from_secs(30)).await?;
    let usb = storage(disk.clone());
    let started = Instant::now();
    let mount_point = usb.prepare(VOLUME).await.map_err(s)?;
    println!(
        "measure: prepare (GPT, LUKS2, mkfs, mount) {} ms",
        started.elapsed().as_millis()
    );
    check(
        luks::is_active(&UsbStorage::mapper_name(VOLUME)),
        "the volume is open through dm-crypt",
    )?;
    let key = usb.key_path(VOLUME);
    let mode = std::fs::metadata(&key).map_err(s)?.permissions().mode() & 0o777;
    check(
        mode == 0o600,
        format!("device key {} is 0600 ({mode:o})", key.display()),
    )?;

    // The host looks for it in the drive's image file once the VM is off.
    let canary = new_canary();
    std::fs::write(mount_point.join("canary"), &canary).map_err(s)?;
    std::fs::write(CANARY_FILE, &canary).map_err(s)?;
    println!("canary: {canary}");
    sync_all();

    let status = usb.key_status(VOLUME).map_err(s)?;
    check(
        status.holder == KeyHolder::Device,
        "the device holds the key",
    )?;
    let pass = Secret::passphrase(PASSPHRASE).map_err(s)?;
    usb.set_passphrase(VOLUME, &pass, None).map_err(s)?;
    check(
        !key.exists(),
        "the device key is deleted once the renter holds the key",
    )?;
    let status = usb.key_status(VOLUME).map_err(s)?;
    check(
        status.holder == KeyHolder::Renter && !status.locked,
        "the renter holds the key; the volume stays open",
    )?;
    let wrong = Secret::passphrase("not the passphrase").map_err(s)?;
    check(
        usb.set_passphrase(VOLUME, &wrong, Some(&wrong)).is_err(),
        "a change with a wrong current passphrase is refused",
    )?;
    sync_all();
    Ok(())
}

/// Boot 2: after the reboot the volume is locked (a read-only placeholder, nothing written lands on
/// the state disk); a wrong passphrase is refused; the right one brings the canary back.
async fn locked_then_unlock() -> Result<()> {
    let disk = usb_disk(Duration::from_secs(30)).await?;
    let usb = storage(disk);
    let mount_point = usb.open(VOLUME).await.map_err(s)?;
    let status = usb.key_status(VOLUME).map_err(s)?;
    check(
        status.locked && status.holder == KeyHolder::Renter,
        "locked after the reboot",
    )?;
    check(
        std::fs::write(mount_point.join("leak"), "x").is_err(),
        "the locked mount point takes no writes",
    )?;
    check(
        usb.mounts_propagate(),
        "the mounts root is shared (an unlock reaches the running container)",
    )?;
    let wrong = Secret::passphrase("not the passphrase").map_err(s)?;
    let e = usb.unlock(VOLUME, &wrong).map_err(s);
    check(
        e.as_ref().is_err_and(|e| e.contains("wrong passphrase")),
        format!("a wrong passphrase is refused ({e:?})"),
    )?;
    let pass = Secret::passphrase(PASSPHRASE).map_err(s)?;
    let started = Instant::now();
    usb.unlock(VOLUME, &pass).map_err(s)?;
    println!("measure: unlock {} ms", started.elapsed().as_millis());
    let want = std::fs::read_to_string(CANARY_FILE).map_err(s)?;
    let got = std::fs::read_to_string(mount_point.join("canary")).map_err(s)?;
    check(got == want, "the canary is back after the unlock")?;
    check(
        !usb.key_status(VOLUME).map_err(s)?.locked,
        "unlocked after the unlock",
    )?;
    Ok(())
}

/// Boot 3: a wipe cut short after the keyslots are destroyed (a power cut mid-wipe).
async fn crash_mid_wipe() -> Result<()> {
    let disk = usb_disk(Duration::from_secs(30)).await?;
    let usb = storage(disk.clone());
    // The governor's open after the reboot; then the wipe's first steps by hand.
    usb.open(VOLUME).await.map_err(s)?;
    let part = PathBuf::from(format!("{}1", disk.display()));
    let mount_point = usb.mount_point(VOLUME);
    while std::process::Command::new("umount")
        .arg(&mount_point)
        .status()
        .is_ok_and(|s| s.success())
    {}
    let luks = Luks::installed();
    luks.deactivate(&UsbStorage::mapper_name(VOLUME))
        .map_err(s)?;
    luks.erase(&part).map_err(s)?;
    check(
        luks.active_slots(&part).map_err(s)?.is_empty(),
        "keyslots destroyed before the cut",
    )?;
    println!("simulating a power cut mid-wipe");
    Ok(())
}

/// Boot 4: the wipe resumes and completes; nothing of the renter is left.
async fn resume_wipe() -> Result<()> {
    let disk = usb_disk(Duration::from_secs(30)).await?;
    let usb = storage(disk.clone());
    wipe_and_verify(&usb, "resumed wipe + verify").await?;
    check(
        !Luks::installed().has_header(&disk).map_err(s)?,
        "no LUKS header on the drive",
    )?;
    let part = PathBuf::from(format!("{}1", disk.display()));
    check(!part.exists(), "the partition is gone")?;
    // The next renter's volume on the same drive.
    let next = "vmtestvolume0002";
    let mp = usb.prepare(next).await.map_err(s)?;
    let entries = renter_files(&mp)?;
    check(
        entries.is_empty(),
        format!("the next volume is empty ({entries:?})"),
    )?;
    usb.wipe(next).await.map_err(s)?;
    usb.verify_wiped(next).await.map_err(s)?;
    Ok(())
}

/// No drive at boot: discovery waits; the host plugs one in through the QEMU monitor.
async fn hotplug() -> Result<()> {
    let disk = usb_disk(Duration::from_mins(3)).await?;
    let usb = storage(disk);
    let mp = usb.prepare(VOLUME).await.map_err(s)?;
    check(mp.exists(), "the hot-plugged drive is provisioned")?;
    wipe_and_verify(&usb, "wipe of the hot-plugged drive").await?;
    println!("ok: the hot-plugged drive is wiped");
    Ok(())
}

/// The drive is pulled out mid-rental (with the volume open and mounted) and plugged back in, where
/// the kernel names it anew: the wipe at the end finds it again and erases it.
async fn pulled_drive() -> Result<()> {
    let disk = usb_disk(Duration::from_secs(30)).await?;
    let usb = storage(disk.clone()).rediscovering();
    let mp = usb.prepare(VOLUME).await.map_err(s)?;
    let canary = new_canary();
    std::fs::write(mp.join("canary"), &canary).map_err(s)?;
    println!("canary: {canary}");
    sync_all();
    println!("pull the drive");
    let deadline = Instant::now() + Duration::from_mins(2);
    while disk.exists() {
        if Instant::now() >= deadline {
            return Err(format!("{} never went away", disk.display()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("ok: {} is gone", disk.display());
    let back = usb_disk(Duration::from_mins(2)).await?;
    check(
        back != disk,
        format!("the drive is back as {}", back.display()),
    )?;
    wipe_and_verify(&usb, "wipe after the replug").await?;
    check(
        !Luks::installed().has_header(&back).map_err(s)?,
        "no LUKS header on the returned drive",
    )?;
    check(!usb.key_path(VOLUME).exists(), "the device key is deleted")?;
    sync_all();
    Ok(())
}

/// Crypto-erase against a full zero overwrite of the same drive (the plain mode's wipe), and the
/// time from expiry to storage ready for the next renter. The overwrite is timed over its first
/// `P2PVPS_BENCH_OVERWRITE_MIB` (default 1024) and extrapolated to the drive's size.
#[allow(clippy::cast_precision_loss)] // sizes in MiB and seconds, printed to one decimal
async fn bench_wipe() -> Result<()> {
    let disk = usb_disk(Duration::from_secs(30)).await?;
    let size = std::fs::read_to_string(format!(
        "/sys/block/{}/size",
        disk.file_name().unwrap().to_string_lossy()
    ))
    .map_err(s)?
    .trim()
    .parse::<u64>()
    .map_err(s)?
        * 512;
    let sample_mib: u64 = std::env::var("P2PVPS_BENCH_OVERWRITE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let usb = storage(disk.clone());
    usb.prepare("bench1").await.map_err(s)?;
    let t = Instant::now();
    usb.wipe("bench1").await.map_err(s)?;
    let wipe = t.elapsed();
    usb.verify_wiped("bench1").await.map_err(s)?;
    let wipe_verify = t.elapsed();
    usb.prepare("bench2").await.map_err(s)?;
    let ready = t.elapsed();
    usb.wipe("bench2").await.map_err(s)?;

    let plain = UsbStorage::new(disk, STATE);
    plain.prepare("bench3").await.map_err(s)?;
    let t = Instant::now();
    plain
        .overwrite("bench3", Some(sample_mib << 20))
        .await
        .map_err(s)?;
    let sample = t.elapsed();
    let per_byte = sample.as_secs_f64() / (sample_mib << 20) as f64;
    let overwrite_s = per_byte * size as f64;
    println!("bench: drive {} GiB", size >> 30);
    println!("bench: crypto-erase {:.2} s", wipe.as_secs_f64());
    println!(
        "bench: crypto-erase + verify {:.2} s",
        wipe_verify.as_secs_f64()
    );
    println!(
        "bench: expiry -> storage ready for the next renter (wipe, verify, prepare) {:.2} s",
        ready.as_secs_f64()
    );
    println!(
        "bench: zero overwrite {sample_mib} MiB in {:.2} s ({:.1} MiB/s), whole drive extrapolated {:.0} s",
        sample.as_secs_f64(),
        sample_mib as f64 / sample.as_secs_f64(),
        overwrite_s
    );
    println!(
        "bench: ratio overwrite / crypto-erase {:.0}x",
        overwrite_s / wipe.as_secs_f64()
    );
    Ok(())
}

/// The governor as `run` assembles it, with the in-memory container runtime.
struct Governor {
    runtime: Arc<FakeRuntime>,
    store: StateStore,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Governor {
    async fn start() -> Result<Self> {
        let disk = usb_disk(Duration::from_secs(30)).await?;
        let market_url = std::env::var("P2PVPS_MARKET").map_err(|_| "P2PVPS_MARKET unset")?;
        let device =
            DeviceId::parse(&std::env::var("P2PVPS_DEVICE").map_err(|_| "P2PVPS_DEVICE unset")?)
                .map_err(s)?;
        let state = Path::new(STATE);
        let storage = Arc::new(storage(disk));
        let hub = Hub::new(state).with_keys(storage.clone());
        let run_dir = socket::host_dir(state);
        socket::serve(&run_dir, None, hub.clone()).map_err(s)?;
        let url = reqwest::Url::parse(&market_url).map_err(s)?;
        let market = Marketplace::new(&url, device.clone()).map_err(s)?;
        let runtime = Arc::new(FakeRuntime::with_images(&["p2pvps/renter:latest"]));
        let specs = Specs {
            memory: "1 GB".into(),
            disk_space: "0 GB".into(),
            processor: "QEMU".into(),
            internet_speed: "unmeasured".into(),
        };
        let mut settings = Settings::new(device, specs, Limits::for_host(1 << 30, 1));
        settings.heartbeat = Duration::from_secs(2);
        settings.retry_base = Duration::from_millis(500);
        let lifecycle = Lifecycle::new(
            market,
            runtime.clone(),
            storage,
            SystemClock,
            StateStore::new(state),
            settings,
        )
        .with_hub(hub);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = lifecycle
                .run(async {
                    stopped.await.ok();
                })
                .await
            {
                println!("lifecycle failed: {e}");
            }
        });
        Ok(Self {
            runtime,
            store: StateStore::new(state),
            socket: run_dir.join(socket::SOCKET_NAME),
            stop: Some(stop),
            task,
        })
    }

    fn state(&self) -> Option<State> {
        self.store.load().ok().flatten()
    }

    /// Wait (up to 2 min) until the saved state satisfies `f`.
    async fn until(&self, what: &str, f: impl Fn(&State) -> bool) -> Result<State> {
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            if let Some(state) = self.state().filter(|st| f(st)) {
                println!("ok: {what}");
                return Ok(state);
            }
            if Instant::now() >= deadline {
                return Err(format!("FAILED: {what} (state: {:?})", self.state()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The running fake container's storage path: what Docker would bind at /media/storage.
    fn container_storage(&self) -> Option<PathBuf> {
        self.runtime
            .containers()
            .into_values()
            .find(|c| c.running)
            .map(|c| c.storage)
    }

    /// A request on the governor's socket, as the renter's `p2pvps-storage` sends it.
    async fn ask(
        &self,
        request: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, String> {
        p2pvps_connector::governor::ask(&self.socket, &request)
            .await
            .map_err(s)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
        sync_all();
    }
}

/// Boot 1 of the governor test: register, provision encrypted storage, serve; the renter writes a
/// canary and takes the key over through the socket. Then the power goes.
async fn governor_rent() -> Result<()> {
    let gov = Governor::start().await?;
    gov.until("registered and serving", |st| st.phase == Phase::Serving)
        .await?;
    let storage = gov
        .container_storage()
        .ok_or("no running container after provisioning")?;
    let canary = new_canary();
    std::fs::write(storage.join("canary"), &canary).map_err(s)?;
    std::fs::write(CANARY_FILE, &canary).map_err(s)?;
    println!("canary: {canary}");
    let status = gov.ask(json!({"op": "storage-status"})).await?;
    check(
        status["storage"]["holder"] == "device",
        format!("the device holds the key at first ({status})"),
    )?;
    gov.ask(json!({"op": "storage-set-passphrase", "passphrase": PASSPHRASE}))
        .await?;
    let status = gov.ask(json!({"op": "storage-status"})).await?;
    check(
        status["storage"]["holder"] == "renter" && status["storage"]["locked"] == false,
        format!("the renter holds the key, still open ({status})"),
    )?;
    check(
        std::fs::read_dir(Path::new(STATE).join("keys"))
            .map_err(s)?
            .next()
            .is_none(),
        "no key file is left on the state disk",
    )?;
    gov.stop().await;
    Ok(())
}

/// Boot 2: the governor resumes the rental with the volume locked; the renter unlocks it through
/// the socket and finds the canary; the host ends the lease; the governor crypto-erases the drive,
/// verifies, and registers again with a fresh volume.
async fn governor_reboot() -> Result<()> {
    let gov = Governor::start().await?;
    // The in-memory runtime lost the container with the reboot (as a real engine may): the governor
    // makes a new one for the same lease.
    let runtime = gov.runtime.clone();
    let state = gov
        .until("resumed the rental, serving again", |st| {
            st.phase == Phase::Serving
                && st.lease.is_some()
                && runtime.containers().values().any(|c| c.running)
        })
        .await?;
    let old_volume = state.volume.clone();
    let status = gov.ask(json!({"op": "storage-status"})).await?;
    check(
        status["storage"]["locked"] == true,
        format!("locked after the reboot ({status})"),
    )?;
    let storage = gov
        .container_storage()
        .ok_or("no running container after the reboot")?;
    check(
        std::fs::write(storage.join("leak"), "x").is_err(),
        "the container's storage takes no writes while locked",
    )?;
    let wrong = gov
        .ask(json!({"op": "storage-unlock", "passphrase": "not the passphrase"}))
        .await;
    check(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("wrong passphrase")),
        format!("a wrong passphrase is refused ({wrong:?})"),
    )?;
    // The governor makes the next attempt wait after a wrong one (1 s after the first).
    let early = gov
        .ask(json!({"op": "storage-unlock", "passphrase": PASSPHRASE}))
        .await;
    check(
        early.as_ref().is_err_and(|e| e.contains("try again in")),
        format!("an attempt right after a wrong one waits ({early:?})"),
    )?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gov.ask(json!({"op": "storage-unlock", "passphrase": PASSPHRASE}))
        .await?;
    let want = std::fs::read_to_string(CANARY_FILE).map_err(s)?;
    let got = std::fs::read_to_string(storage.join("canary")).map_err(s)?;
    check(got == want, "the canary is back in the container's storage")?;

    println!("expire me");
    gov.until("wiped and serving the next rental", |st| {
        st.rentals_completed == 1
            && st.phase == Phase::Serving
            && runtime.containers().values().any(|c| c.running)
    })
    .await?;
    let state = gov.state().ok_or("no state")?;
    check(
        state.volume != old_volume,
        "a fresh volume for the next renter",
    )?;
    check(
        !luks::is_active(&UsbStorage::mapper_name(&old_volume)),
        "the old volume is closed",
    )?;
    let storage = gov.container_storage().ok_or("no container")?;
    let names = renter_files(&storage)?;
    check(
        names.is_empty(),
        format!("the next renter's storage is empty ({names:?})"),
    )?;
    gov.stop().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let result = match scenario.as_str() {
        "provision" => provision().await,
        "locked-then-unlock" => locked_then_unlock().await,
        "crash-mid-wipe" => crash_mid_wipe().await,
        "resume-wipe" => resume_wipe().await,
        "hotplug" => hotplug().await,
        "pulled-drive" => pulled_drive().await,
        "bench-wipe" => bench_wipe().await,
        "governor-rent" => governor_rent().await,
        "governor-reboot" => governor_reboot().await,
        other => Err(format!("unknown scenario {other:?}")),
    };
    match result {
        Ok(()) => {
            println!("vm-storage {scenario}: passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("vm-storage {scenario}: {e}");
            ExitCode::FAILURE
        }
    }
}
