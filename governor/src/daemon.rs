//! `p2pvps-governor run`: wires the real implementations together and runs the lifecycle.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::clock::{Clock as _, SyncedClock, SystemClock, TimeSource};
use crate::config::{ConfigError, DeviceConfig, Led, StorageDevice};
use crate::led::{self, Indication, LedHandle, LedOptions};
use crate::lifecycle::{Lifecycle, LifecycleError, Settings};
use crate::marketplace::{Marketplace, MarketplaceError, Specs};
use crate::notify::Notifier;
use crate::page;
use crate::runtime::{DockerRuntime, Limits};
use crate::sandbox::{NftFirewall, tunnel};
use crate::socket::{self, Hub, SocketError, TunnelEndpoint};
use crate::state::Phase;
use crate::state::StateStore;
use crate::storage::discover::{self, DiscoverError, HostPaths};
use crate::storage::luks::PassphraseKdf;
use crate::storage::{DirStorage, Storage, UsbStorage};
use crate::update::{self, Boot, Running, Updater};
use p2pvps_common::Backoff;

/// How often a missing storage drive is looked for again.
const STORAGE_POLL: Duration = Duration::from_secs(2);
/// How often a missing config file is looked for again.
const CONFIG_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Name of the renter container (one governor per host normally; tests run several).
    pub container_name: String,
    /// Docker network of the renter container (tests use networks of their own).
    pub network: String,
    /// The kernel LED class directory (`/sys/class/leds`).
    pub led_root: PathBuf,
    /// When to tell the renter that the rental ends (before the expiration).
    pub notices: Vec<Duration>,
    /// The connector binary, run on the host as the tunnel keeper (`sandbox/tunnel.rs`).
    pub connector: PathBuf,
    /// The owner's page's port when the config sets none (0: off).
    pub status_port: u16,
    /// Name the host `p2pvps-<6 hex>` for mDNS (the image; never an owner's own machine).
    pub set_hostname: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Marketplace(#[from] MarketplaceError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Storage(#[from] DiscoverError),
}

/// Run the governor until `shutdown` completes. The status LED shows what it does; it goes dark
/// when the governor stops.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let notifier = Arc::new(Notifier::from_env().unwrap_or_else(|e| {
        warn!(error = %e, "systemd notifications off");
        Notifier::default()
    }));
    let _keepalive = notifier.spawn_keepalive().map(crate::AbortOnDrop);
    notifier.ready();
    let slots = spawn_settle_slots(&opts.state_dir);
    // Until the config says otherwise, the board's own LED (every Pi has one; elsewhere none).
    let mut led = led::spawn(led::open(&Led::Act, &opts.led_root));
    let result = run_with_led(&opts, shutdown, &mut led, &notifier, slots).await;
    notifier.stopping();
    led.shutdown().await;
    if matches!(result, Err(DaemonError::Config(_))) && led::hand_over_config_error(&opts.led_root)
    {
        info!("the board LED flashes briefly every 2 s: device-config.json is invalid");
    }
    result
}

/// The root slots at start (`update::settle`): a slot that came up as far as the governor is marked
/// good (it keeps its boot tries), unless it is a new version on trial, which must register first;
/// a fall back from a failed update is recorded. Off the main path: RAUC's service starts on demand.
/// None where the system has no slots or they cannot be read (the log says why).
fn spawn_settle_slots(state_dir: &Path) -> tokio::task::JoinHandle<Option<(Running, Boot)>> {
    let state_dir = state_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let running = match Running::detect() {
            Ok(r) => r?,
            Err(e) => {
                warn!(error = %e, "no system updates");
                return None;
            }
        };
        match update::settle(&state_dir, &running) {
            Ok(boot) => {
                info!(version = %running.version, slot = %running.slot, "system");
                Some((running, boot))
            }
            Err(e) => {
                warn!(error = %e, "could not settle the root slots; no system updates this run");
                None
            }
        }
    })
}

/// The updater, once the slots are settled and the config names the manifest (or not).
async fn updates(
    opts: &RunOptions,
    config: &DeviceConfig,
    slots: tokio::task::JoinHandle<Option<(Running, Boot)>>,
) -> Option<Updates> {
    let (running, boot) = slots.await.ok().flatten()?;
    if config.update_url.is_none() {
        info!("no updateUrl in device-config.json: system updates are off");
    }
    Some(Updates {
        updater: Arc::new(Updater::new(
            &opts.state_dir,
            running,
            config.update_url.clone(),
        )),
        trial: matches!(boot, Boot::Trial { .. }),
        state_dir: opts.state_dir.clone(),
    })
}

/// The system update's part in the daemon: the updater, whether this boot is a trial.
struct Updates {
    updater: Arc<Updater>,
    trial: bool,
    state_dir: PathBuf,
}

async fn run_with_led(
    opts: &RunOptions,
    shutdown: impl Future<Output = ()>,
    led: &mut LedHandle,
    notifier: &Notifier,
    slots: tokio::task::JoinHandle<Option<(Running, Boot)>>,
) -> Result<(), DaemonError> {
    tokio::pin!(shutdown);
    notifier.status("waiting for a valid device-config.json");
    let config = tokio::select! {
        () = &mut shutdown => return Ok(()),
        c = wait_for_config(&opts.config, led) => c?,
    };
    info!(device = %config.device_id, server = %config.server_url, "config loaded");
    if config.led != Led::Act || config.active_low {
        let options = LedOptions {
            active_low: config.active_low,
            ..LedOptions::new(&opts.led_root)
        };
        let old = std::mem::replace(led, led::spawn(led::open_with(&config.led, &options)));
        old.shutdown().await;
    }
    let storage_root = opts.state_dir.join("storage");
    // The engine first: under userns-remap the socket belongs to the container's remapped root,
    // and the renter container's layer may still be bound from the volume below its data root.
    let runtime = tokio::select! {
        () = &mut shutdown => return Ok(()),
        r = connect_docker() => r,
    };
    let drive = match &config.storage_device {
        StorageDevice::None => None,
        device => {
            led.show(Indication::WaitingForStorage);
            let mut paths = HostPaths::default();
            paths.own_mounts.push(runtime.root_dir().to_owned());
            let disk = tokio::select! {
                () = &mut shutdown => return Ok(()),
                d = discover::wait_for(&paths, &opts.state_dir, device, STORAGE_POLL) => d?,
            };
            disk
        }
    };
    std::fs::create_dir_all(&storage_root).ok();
    let (mut specs, limits) = crate::host::specs(&storage_root);
    if let Some(disk) = &drive {
        info!(disk = %disk.path.display(), reason = %disk.reason, "storage drive");
        specs.disk_space = format!("{} GB", disk.size_bytes / 1_000_000_000);
    }
    let encrypt = drive.is_some() && config.encrypt_storage && dm_crypt_available();
    info!(?specs, "measured this device");
    let mut settings = settings(opts, &config, specs, limits);
    let socket_dir = socket::host_dir(&opts.state_dir);
    settings.socket_dir = Some(socket_dir.clone());
    let usb = drive.map(|disk| Arc::new(usb_storage(disk.path, opts, &config, encrypt)));
    let mut hub = Hub::new(&opts.state_dir);
    if let Some(usb) = &usb {
        hub = hub.with_keys(usb.clone()).with_layer_on_volume();
    }
    let _socket = socket::serve(&socket_dir, runtime.remapped_root(), hub.clone())?;
    let _tunnel = crate::AbortOnDrop(tokio::spawn(tunnel::keep(
        opts.connector.clone(),
        hub.clone(),
    )));
    // Nothing ends by a clock that cannot be believed: a Pi has no real-time clock.
    let time = TimeSource::systemd(Path::new("/run"));
    let clock = SyncedClock::new(SystemClock, time.clone());
    let _page = owners_page(opts, &config, &storage_root, &hub, clock.clone()).await;
    let market =
        Marketplace::new(&config.server_url, config.device_id.clone())?.with_time_source(time);
    let store = StateStore::new(&opts.state_dir);
    let updates = updates(opts, &config, slots).await;
    let _checks = updates.as_ref().map(|u| {
        let scheduled = u.updater.clone();
        crate::AbortOnDrop(tokio::spawn(async move {
            scheduled.check_on_schedule().await;
        }))
    });
    let between = updates
        .as_ref()
        .map(|u| u.updater.clone() as Arc<dyn crate::lifecycle::BetweenRentals>);
    // One lifecycle type per storage backend.
    if let Some(storage) = usb {
        let lifecycle = Lifecycle::new(market, runtime, storage, clock, store, settings)
            .with_firewall(Arc::new(NftFirewall))
            .with_between_rentals(between);
        drive_lifecycle(
            &lifecycle.with_hub(hub),
            shutdown,
            led,
            notifier,
            updates.as_ref(),
        )
        .await
    } else {
        let storage = DirStorage::new(&storage_root).sized(config.storage_size_mb << 20);
        let lifecycle = Lifecycle::new(market, runtime, storage, clock, store, settings)
            .with_firewall(Arc::new(NftFirewall))
            .with_between_rentals(between);
        drive_lifecycle(
            &lifecycle.with_hub(hub),
            shutdown,
            led,
            notifier,
            updates.as_ref(),
        )
        .await
    }
}

/// The owner's page on `statusPort` (or the default), unless it is 0. A port that cannot be had
/// leaves the device without its page, not without its rentals: the log says why.
async fn owners_page(
    opts: &RunOptions,
    config: &DeviceConfig,
    storage_root: &Path,
    hub: &Hub,
    clock: SyncedClock<SystemClock>,
) -> Option<PageTask> {
    let name = page::local_name(config.device_id.as_str());
    if opts.set_hostname {
        match crate::host::set_hostname(Path::new("/proc/sys/kernel/hostname"), &name) {
            Ok(true) => info!(%name, "hostname set: the device answers as {name}.local"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, %name, "cannot set the hostname; the .local name is not answered");
            }
        }
    }
    let port = config.status_port.unwrap_or(opts.status_port);
    let url_file = opts.state_dir.join(page::URL_FILE);
    if port == 0 {
        let _ = std::fs::remove_file(&url_file);
        return None;
    }
    let listener = match page::bind(port).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "no owner's page");
            return None;
        }
    };
    // For `status` and the console: where the owner finds the page.
    let url = match port {
        80 => format!("http://{name}.local/"),
        p => format!("http://{name}.local:{p}/"),
    };
    if let Err(e) = std::fs::write(&url_file, format!("{url}\n")) {
        warn!(error = %e, path = %url_file.display(), "cannot note the page's address for status");
    }
    let source = page::PageSource::new(
        opts.state_dir.clone(),
        storage_root.to_owned(),
        opts.config.clone(),
        hub.clone(),
        name,
        // The time that decides the rental's end (the marketplace's until the clock is synchronised).
        Box::new(move || clock.decision_time().unwrap_or_else(|| clock.now())),
    );
    Some(PageTask {
        _serving: crate::AbortOnDrop(tokio::spawn(page::serve(listener, Arc::new(source)))),
        url_file,
    })
}

/// The page while it is served; when the governor stops, `status` no longer names its address.
struct PageTask {
    _serving: crate::AbortOnDrop,
    url_file: PathBuf,
}

impl Drop for PageTask {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.url_file);
    }
}

/// The device's key for the tunnel endpoint (`sshKey`), made on the first start when asked. A key
/// that cannot be had leaves the password: the log says why.
fn tunnel_key(config: &DeviceConfig, state_dir: &Path) -> Option<tunnel::PrivateKey> {
    let key = config.ssh_key.as_ref()?;
    match tunnel::device_key(state_dir, key, config.device_id.as_str()) {
        Ok((private, public)) => {
            info!(public = %public, "tunnel key");
            Some(private)
        }
        Err(e) => {
            warn!(error = %e, "no tunnel key; the tunnel logs in with sshPassword, if set");
            None
        }
    }
}

/// The storage on the USB drive `disk`, as the config asks.
fn usb_storage(
    disk: PathBuf,
    opts: &RunOptions,
    config: &DeviceConfig,
    encrypt: bool,
) -> UsbStorage {
    let mut storage = UsbStorage::new(disk, &opts.state_dir);
    if config.storage_device == StorageDevice::Auto {
        storage = storage.rediscovering();
    }
    if encrypt {
        storage = storage.encrypted(PassphraseKdf::default());
    }
    storage
}

/// Run the lifecycle until `shutdown`, showing its phases (and an update under way) on the LED. A
/// new version on trial is confirmed once the device has registered.
async fn drive_lifecycle<S: Storage>(
    lifecycle: &Lifecycle<Marketplace, DockerRuntime, S, SyncedClock<SystemClock>>,
    shutdown: impl Future<Output = ()>,
    led: &LedHandle,
    notifier: &Notifier,
    updates: Option<&Updates>,
) -> Result<(), DaemonError> {
    let mut phases = lifecycle.subscribe();
    let mut sessions = lifecycle.hub().sessions();
    let mut updating = updates.map_or_else(
        || tokio::sync::watch::Sender::new(false).subscribe(),
        |u| u.updater.updating(),
    );
    let mut trial = updates.filter(|u| u.trial);
    let run = lifecycle.run(shutdown);
    let show = async {
        loop {
            let phase = *phases.borrow_and_update();
            let open = *sessions.borrow_and_update();
            if *updating.borrow_and_update() {
                led.show(Indication::Updating);
                notifier.status("updating the system");
            } else {
                led.show(indication(phase, open));
                notifier.status(&format!("{} ({open} renter sessions)", phase.as_str()));
            }
            if phase.rented()
                && let Some(u) = trial.take()
            {
                confirm_trial(u);
            }
            tokio::select! {
                r = phases.changed() => if r.is_err() { return },
                r = sessions.changed() => if r.is_err() { return },
                r = updating.changed() => if r.is_err() { return },
            }
        }
    };
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r?,
        () = show => run.await?,
    }
    Ok(())
}

/// The new version got the device registered: its slot is marked good.
fn confirm_trial(u: &Updates) {
    let state_dir = u.state_dir.clone();
    let running = u.updater.running().clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = update::confirm_trial(&state_dir, &running) {
            warn!(error = %e, "could not mark the updated slot good; it is tried again at the next start");
        }
    });
}

/// What the LED shows in each phase of the lifecycle, with `sessions` renter SSH sessions open.
fn indication(phase: Phase, sessions: u32) -> Indication {
    match phase {
        // Instant with a directory; with a USB drive, this is where a missing drive is waited for.
        Phase::PreparingStorage => Indication::WaitingForStorage,
        Phase::Registering | Phase::Provisioning => Indication::Registering,
        Phase::Serving if sessions > 0 => Indication::RenterConnected,
        Phase::Serving => Indication::Ready,
        Phase::Expired | Phase::Wiping => Indication::Wiping,
    }
}

/// The config, once the file exists. A missing file is the normal state of a fresh device (the owner
/// has not copied it yet); a present but invalid one is an error for the owner to fix.
async fn wait_for_config(path: &Path, led: &LedHandle) -> Result<DeviceConfig, ConfigError> {
    let mut warned = false;
    loop {
        match DeviceConfig::load(path) {
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                led.show(Indication::NoConfig);
                if !warned {
                    warn!(path = %path.display(), "no device-config.json yet; waiting for it");
                    warned = true;
                }
                SystemClock.sleep(CONFIG_POLL).await;
            }
            other => return other,
        }
    }
}

/// The lifecycle's settings from the config and the options.
fn settings(opts: &RunOptions, config: &DeviceConfig, specs: Specs, limits: Limits) -> Settings {
    let mut settings = Settings::new(config.device_id.clone(), specs, limits);
    settings.heartbeat = Duration::from_secs(config.heartbeat_seconds);
    settings.image.clone_from(&config.renter_image);
    settings.image_tar.clone_from(&config.renter_image_tar);
    settings.container_name.clone_from(&opts.container_name);
    settings.network.clone_from(&opts.network);
    settings.sandbox.clone_from(&config.sandbox);
    settings.notices.clone_from(&opts.notices);
    settings.tunnel = Some(TunnelEndpoint {
        server: config.ssh_server.clone(),
        server_port: config.ssh_server_port.get(),
        user: config.ssh_user.clone(),
        password: config.ssh_password.clone(),
        private_key: tunnel_key(config, &opts.state_dir),
        host_key: config.ssh_host_key.clone(),
    });
    settings
}

async fn connect_docker() -> DockerRuntime {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match DockerRuntime::connect().await {
            Ok(rt) => {
                if let Some((uid, gid)) = rt.remapped_root() {
                    info!(
                        "connected to the Docker engine: the renter's root is uid {uid} (gid {gid}) of this host"
                    );
                } else {
                    info!("connected to the Docker engine: no user namespace");
                }
                return rt;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "Docker engine not reachable");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Whether the kernel can map encrypted volumes: dm-crypt loaded, or loaded now. Without it the
/// drive is used unencrypted, with a warning that says what that costs.
fn dm_crypt_available() -> bool {
    let loaded = || Path::new("/sys/module/dm_crypt").exists();
    if !loaded() {
        match std::process::Command::new("modprobe")
            .args(["--quiet", "dm_crypt"])
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => warn!(status = %s, "modprobe dm_crypt failed"),
            Err(e) => warn!(error = %e, "cannot run modprobe"),
        }
    }
    if loaded() {
        info!("storage encryption: LUKS2 (dm-crypt)");
        true
    } else {
        warn!(
            "encryptStorage is on, but this kernel has no dm-crypt: the drive is plain ext4, \
             readable by whoever unplugs it during a rental; renters cannot hold their own key; \
             and each wipe is a full overwrite instead of a crypto-erase"
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_has_its_own_busy_or_ready_pattern() {
        let cases = [
            (Phase::PreparingStorage, 0, Indication::WaitingForStorage),
            (Phase::Registering, 0, Indication::Registering),
            (Phase::Provisioning, 0, Indication::Registering),
            (Phase::Serving, 0, Indication::Ready),
            (Phase::Serving, 2, Indication::RenterConnected),
            (Phase::Expired, 1, Indication::Wiping),
            (Phase::Wiping, 0, Indication::Wiping),
        ];
        for (phase, sessions, want) in cases {
            assert_eq!(
                indication(phase, sessions),
                want,
                "{phase:?} with {sessions} sessions"
            );
        }
    }

    /// Options for a governor in `tmp` whose board LED is `tmp/leds/ACT`, made with `triggers`;
    /// returns that LED's directory too.
    fn board_led_opts(tmp: &Path, triggers: &str) -> (RunOptions, PathBuf) {
        let act = tmp.join("leds/ACT");
        std::fs::create_dir_all(&act).unwrap();
        std::fs::write(act.join("trigger"), triggers).unwrap();
        std::fs::write(act.join("brightness"), "0").unwrap();
        std::fs::write(act.join("max_brightness"), "1").unwrap();
        let opts = RunOptions {
            config: tmp.join("device-config.json"),
            state_dir: tmp.join("state"),
            container_name: "unused".into(),
            network: "none".into(),
            led_root: tmp.join("leds"),
            notices: Vec::new(),
            connector: "/nonexistent/p2pvps-connector".into(),
            status_port: 0,
            set_hostname: false,
        };
        (opts, act)
    }

    /// The governor exits on a bad config; the board LED keeps saying so, driven by the kernel.
    #[tokio::test]
    async fn an_invalid_config_leaves_the_kernel_blinking_the_board_led() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, act) = board_led_opts(tmp.path(), "none [mmc0] timer heartbeat");
        std::fs::write(&opts.config, r#"{"deviceId": "not hex"}"#).unwrap();
        let e = run(opts, std::future::pending()).await.unwrap_err();
        assert!(matches!(e, DaemonError::Config(_)), "{e}");
        let read = |f: &str| std::fs::read_to_string(act.join(f)).unwrap();
        assert_eq!(read("trigger"), "timer");
        assert_eq!(read("delay_on"), "100");
        assert_eq!(read("delay_off"), "1900");
    }

    #[tokio::test]
    async fn a_missing_config_blinks_no_config_on_the_board_led_until_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, act) = board_led_opts(tmp.path(), "none [mmc0] heartbeat");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = async {
            // NoConfig: two 300 ms blinks then a pause; sample both states within 3 s.
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen.insert(std::fs::read_to_string(act.join("brightness")).unwrap());
            }
            stop.send(()).unwrap();
            seen
        };
        let (result, seen) = tokio::join!(run(opts, async { stopped.await.unwrap() }), watch);
        result.unwrap();
        assert_eq!(
            std::fs::read_to_string(act.join("trigger")).unwrap().trim(),
            "none"
        );
        assert!(
            seen.contains("1") && seen.contains("0"),
            "no blinking: {seen:?}"
        );
        assert_eq!(
            std::fs::read_to_string(act.join("brightness")).unwrap(),
            "0",
            "left on after stop"
        );
    }
}
