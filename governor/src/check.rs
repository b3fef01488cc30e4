//! `p2pvps-governor check`: tells an owner what is wrong, one line per thing the device needs, each
//! OK or FAIL with the fix. Nothing is changed: no registration is made (the server is asked with a
//! check-in), no image is imported, no drive is touched.

use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::{DeviceConfig, StorageDevice};
use crate::marketplace::{Marketplace, MarketplaceApi as _};
use crate::runtime::{ContainerRuntime as _, DockerRuntime};
use crate::sandbox::NftFirewall;
use crate::state::StateStore;
use crate::storage::discover::{self, HostPaths};

/// Where the checks look; tests point these at temp dirs.
#[derive(Debug, Clone)]
pub struct CheckEnv {
    /// `/run`: systemd's and timesyncd's markers.
    pub run_dir: PathBuf,
    /// `/sys`: loaded kernel modules.
    pub sys_dir: PathBuf,
    /// Where disks are found (sysfs and the mount table).
    pub host: HostPaths,
    /// The governor's state dir (its disk is never the storage drive).
    pub state_dir: PathBuf,
}

impl Default for CheckEnv {
    fn default() -> Self {
        Self {
            run_dir: "/run".into(),
            sys_dir: "/sys".into(),
            host: HostPaths::default(),
            state_dir: crate::DEFAULT_STATE_DIR.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub verdict: Verdict,
    pub item: &'static str,
    pub detail: String,
    /// What to do about a FAIL.
    pub fix: Option<String>,
}

impl Line {
    fn ok(item: &'static str, detail: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Ok,
            item,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(item: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            item,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Ok => "OK  ",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{verdict}  {:<9} {}", self.item, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// Run every check. With an unusable config only that line can be given.
pub async fn run(config_path: &Path, env: &CheckEnv) -> Vec<Line> {
    let config = match DeviceConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            return vec![Line::fail(
                "config",
                e.to_string(),
                "correct device-config.json on the boot partition; `p2pvps-governor check-config` shows the settings",
            )];
        }
    };
    let mut lines = vec![Line::ok(
        "config",
        format!("{} (device {})", config_path.display(), config.device_id),
    )];
    lines.push(clock(env));
    lines.extend(wifi(&config, env));
    let (docker_lines, engine_root) = docker(&config).await;
    lines.extend(docker_lines);
    lines.push(sandbox(env));
    lines.push(storage(&config, env, engine_root));
    lines.push(dm_crypt(&config, env));
    lines.push(server(&config).await);
    lines.push(tunnel(&config).await);
    lines.extend(tunnel_key(&config, env));
    lines.extend(updates(&config, env).await);
    lines
}

/// On the image: the running version and slot, the last update, and what the manifest offers.
async fn updates(config: &DeviceConfig, env: &CheckEnv) -> Option<Line> {
    use crate::update::{RecordStore, Running, Updater};
    let running = match Running::detect() {
        Ok(r) => r?,
        Err(e) => {
            return Some(Line::fail(
                "updates",
                e.to_string(),
                "the image is damaged: write it to the card again (the state partition can stay)",
            ));
        }
    };
    let mut detail = format!("{} on slot {}", running.version, running.slot);
    if let Some(last) = RecordStore::new(&env.state_dir).load().last {
        let _ = write!(
            detail,
            "; last update {} {}",
            last.version,
            last.result.as_str()
        );
    }
    let Some(url) = config.update_url.clone() else {
        return Some(Line::ok(
            "updates",
            format!("{detail}; off (no updateUrl in device-config.json)"),
        ));
    };
    let updater = Updater::new(&env.state_dir, running, Some(url.clone()));
    Some(match updater.check().await {
        Ok(Some(offer)) => Line::ok(
            "updates",
            format!(
                "{detail}; {} offered by {url}, installed after the current rental",
                offer.version
            ),
        ),
        Ok(None) => Line::ok("updates", format!("{detail}; up to date ({url})")),
        Err(e) => Line::fail(
            "updates",
            format!("{detail}; {e}"),
            "check updateUrl in device-config.json and that the address serves the manifest",
        ),
    })
}

/// With `sshKey`: the key's public half, for the marketplace's operator (or that it will be made).
fn tunnel_key(config: &DeviceConfig, env: &CheckEnv) -> Option<Line> {
    use crate::sandbox::tunnel;
    let key = config.ssh_key.as_ref()?;
    let path = tunnel::key_path(&env.state_dir, key);
    if *key == crate::config::SshKey::Generate && !path.exists() {
        return Some(Line::ok(
            "tunnel key",
            "made at the governor's first start; `p2pvps-governor status` then shows its public half",
        ));
    }
    Some(match tunnel::public_key(&path) {
        Ok(public) => Line::ok(
            "tunnel key",
            format!("{public} (the marketplace's operator authorizes this line)"),
        ),
        Err(e) => Line::fail(
            "tunnel key",
            e.to_string(),
            "sshKey must name an unencrypted OpenSSH private key file, or say \"generate\"",
        ),
    })
}

/// Expirations are wall-clock times: under systemd, timesyncd must have synchronised the clock
/// (the Pi has no real-time clock). Without systemd the clock is trusted, as the governor does
/// (`clock.rs`, `TimeSource`).
fn clock(env: &CheckEnv) -> Line {
    let source = crate::clock::TimeSource::systemd(&env.run_dir);
    if source.trusted_as_is() {
        return Line::ok("clock", "not under systemd: the system clock is trusted");
    }
    if source.synchronized() {
        Line::ok("clock", "synchronised (systemd-timesyncd)")
    } else {
        Line::fail(
            "clock",
            "not synchronised yet: a rental ends by the marketplace's time until it is, and nothing time-bound happens before the marketplace has answered",
            "check the network; `timedatectl timesync-status` shows what systemd-timesyncd is doing",
        )
    }
}

/// The engine's lines, and its data root when it answers.
async fn docker(config: &DeviceConfig) -> (Vec<Line>, Option<PathBuf>) {
    let connect = tokio::time::timeout(Duration::from_secs(10), DockerRuntime::connect()).await;
    let rt = match connect {
        Ok(Ok(rt)) => rt,
        Ok(Err(e)) => {
            let fail = Line::fail(
                "docker",
                e.to_string(),
                "start the engine: `systemctl start docker`",
            );
            return (vec![fail], None);
        }
        Err(_) => {
            let fail = Line::fail(
                "docker",
                "no answer within 10 s",
                "restart the engine: `systemctl restart docker`",
            );
            return (vec![fail], None);
        }
    };
    let engine = Line::ok("docker", "engine reachable");
    let userns = match rt.remapped_root() {
        Some((uid, _)) => Line::ok(
            "userns",
            format!("on: the renter's root is uid {uid} of this host, unprivileged"),
        ),
        None => Line::ok(
            "userns",
            "off: the renter's root is this host's root, behind dropped capabilities and the network rules (Docker's userns-remap would map it to an unprivileged user)",
        ),
    };
    // ensure_image without a tarball imports nothing: it only says whether the image is there.
    let image = match rt.ensure_image(&config.renter_image, None).await {
        Ok(()) => Line::ok("image", format!("{} present", config.renter_image)),
        Err(_) => match &config.renter_image_tar {
            Some(tar) if tar.is_file() => Line::ok(
                "image",
                format!(
                    "{} absent; it will be imported from {}",
                    config.renter_image,
                    tar.display()
                ),
            ),
            Some(tar) => Line::fail(
                "image",
                format!(
                    "{} absent and {} does not exist",
                    config.renter_image,
                    tar.display()
                ),
                "fix renterImageTar, or build the image: image/renter/build --connector …",
            ),
            None => Line::fail(
                "image",
                format!("{} is not in the engine", config.renter_image),
                "build it (image/renter/build --connector …) or set renterImageTar",
            ),
        },
    };
    (vec![engine, userns, image], Some(rt.root_dir().to_owned()))
}

/// With `wifiSsid` in the config: is there a radio, and is it connected (the passphrase is not shown).
fn wifi(config: &DeviceConfig, env: &CheckEnv) -> Option<Line> {
    let wifi = config.wifi.as_ref()?;
    let net = env.sys_dir.join("class/net");
    let mut radios: Vec<String> = std::fs::read_dir(&net)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("wireless").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    radios.sort();
    let Some(radio) = radios.first() else {
        return Some(Line::fail(
            "wifi",
            format!("{}: this device has no Wi-Fi radio", wifi.summary()),
            "use a network cable, or remove the wifi… keys from device-config.json (every Pi since the 3 B and the Zero 2 W has a radio; other boards need a USB adapter that Debian's kernel drives)",
        ));
    };
    let state = std::fs::read_to_string(net.join(radio).join("operstate")).unwrap_or_default();
    Some(if state.trim() == "up" {
        Line::ok("wifi", format!("{radio} connected to {}", wifi.summary()))
    } else {
        Line::fail(
            "wifi",
            format!("{radio} is not connected to {}", wifi.summary()),
            format!(
                "check the network's name, passphrase and country in device-config.json and that the router is in reach; `journalctl -u p2pvps-wifi@{radio}` tells why"
            ),
        )
    })
}

/// The renter's network rules: in the kernel for the bridge the governor last used, or (before the
/// first rental) nftables at least answers.
fn sandbox(env: &CheckEnv) -> Line {
    let fix = "the governor puts them in place before the renter's container starts: see its log (`journalctl -u p2pvps-governor`); `nft` must be installed and the kernel have nf_tables";
    let bridge = StateStore::new(&env.state_dir)
        .load()
        .ok()
        .flatten()
        .and_then(|s| s.network_rules);
    match bridge {
        Some(bridge) => match NftFirewall::verify(&bridge) {
            Ok(()) => Line::ok(
                "sandbox",
                format!("network rules in place for the renter's bridge {bridge}"),
            ),
            Err(e) => Line::fail("sandbox", e.to_string(), fix),
        },
        None => match crate::command::run("nft", ["list", "tables"]) {
            Ok(_) => Line::ok(
                "sandbox",
                "nftables answers; the rules are made before the first renter's container starts",
            ),
            Err(e) => Line::fail("sandbox", e.to_string(), fix),
        },
    }
}

/// The drive the governor would take; a drive it already uses for the rental counts as found (the
/// renter container's layer is mounted from it below the engine's data root, `engine_root`).
fn storage(config: &DeviceConfig, env: &CheckEnv, engine_root: Option<PathBuf>) -> Line {
    let mut host = env.host.clone();
    host.own_mounts.extend(engine_root);
    match discover::find(&host, &env.state_dir, &config.storage_device) {
        Ok(None) => Line::ok(
            "storage",
            "a directory on the state partition (storageDevice: none)",
        ),
        Ok(Some(disk)) => Line::ok("storage", disk.reason),
        Err(e) if e.is_absent() => Line::fail(
            "storage",
            e.to_string(),
            "plug in a USB drive (64 GB is the usual size)",
        ),
        Err(e) => Line::fail(
            "storage",
            e.to_string(),
            "fix storageDevice, or unplug what holds the drive",
        ),
    }
}

/// dm-crypt is loaded (`/sys/module/dm_crypt`) or loadable (`modprobe --dry-run`).
fn dm_crypt(config: &DeviceConfig, env: &CheckEnv) -> Line {
    if !config.encrypt_storage || config.storage_device == StorageDevice::None {
        return Line::ok(
            "dm-crypt",
            "not needed (no encrypted USB storage configured)",
        );
    }
    if env.sys_dir.join("module/dm_crypt").exists() {
        return Line::ok("dm-crypt", "loaded");
    }
    let loadable = Command::new("modprobe")
        .args(["--dry-run", "--quiet", "dm_crypt"])
        .status()
        .is_ok_and(|s| s.success());
    if loadable {
        Line::ok("dm-crypt", "available as a module")
    } else {
        Line::fail(
            "dm-crypt",
            "this kernel has no dm-crypt: storage cannot be encrypted",
            "use a kernel with dm-crypt, or set \"encryptStorage\": false (the drive is then zeroed at each wipe)",
        )
    }
}

/// A check-in: it says whether the server answers and knows the device, and registers nothing.
async fn server(config: &DeviceConfig) -> Line {
    let market = match Marketplace::with_timeout(
        &config.server_url,
        config.device_id.clone(),
        Duration::from_secs(10),
    ) {
        Ok(m) => m,
        Err(e) => return Line::fail("server", e.to_string(), "report this as a bug"),
    };
    match market.check_in().await {
        Ok(()) => Line::ok(
            "server",
            format!("{} knows device {}", config.server_url, config.device_id),
        ),
        Err(e) if e.is_unknown_device() => Line::fail(
            "server",
            format!(
                "{} does not know device {}",
                config.server_url, config.device_id
            ),
            "copy the device id from the marketplace into deviceId",
        ),
        Err(e) => Line::fail("server", e.to_string(), "check serverUrl and the network"),
    }
}

/// The endpoint answers with an SSH banner; with `sshHostKey`, its key matches (ssh-keyscan).
async fn tunnel(config: &DeviceConfig) -> Line {
    let target = format!("{}:{}", config.ssh_server, config.ssh_server_port);
    let banner = async {
        use tokio::io::AsyncBufReadExt as _;
        let stream = tokio::net::TcpStream::connect((
            config.ssh_server.as_str(),
            config.ssh_server_port.get(),
        ))
        .await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    let banner = match tokio::time::timeout(Duration::from_secs(10), banner).await {
        Ok(Ok(b)) if b.starts_with("SSH-") => b.trim().to_owned(),
        Ok(Ok(b)) => {
            return Line::fail(
                "tunnel",
                format!(
                    "{target} is not an SSH server (said {:?})",
                    crate::types::shorten(b.trim())
                ),
                "check sshServer and sshServerPort",
            );
        }
        Ok(Err(e)) => {
            return Line::fail(
                "tunnel",
                format!("{target}: {e}"),
                "check sshServer, sshServerPort and the network",
            );
        }
        Err(_) => {
            return Line::fail(
                "tunnel",
                format!("{target}: no answer within 10 s"),
                "check sshServer, sshServerPort and the network",
            );
        }
    };
    let Some(pin) = &config.ssh_host_key else {
        return Line::ok(
            "tunnel",
            format!("{target} answers ({banner}); host key not pinned"),
        );
    };
    match host_key_fingerprints(&config.ssh_server, config.ssh_server_port.get()) {
        Ok(seen) if seen.iter().any(|f| f == pin) => Line::ok(
            "tunnel",
            format!("{target} answers with the pinned host key"),
        ),
        Ok(seen) => Line::fail(
            "tunnel",
            format!(
                "{target} offers {} but sshHostKey is {pin}",
                seen.join(", ")
            ),
            "ask the marketplace for its endpoint's fingerprint; never just copy what the server offers",
        ),
        Err(e) => Line::fail(
            "tunnel",
            format!("{target} answers, but its host key cannot be read: {e}"),
            "install openssh-client (ssh-keyscan)",
        ),
    }
}

/// The SHA256 fingerprints of the keys an SSH server offers, through ssh-keyscan and ssh-keygen.
fn host_key_fingerprints(host: &str, port: u16) -> Result<Vec<String>, String> {
    let scan = Command::new("ssh-keyscan")
        .args(["-T", "10", "-p", &port.to_string(), "--", host])
        .output()
        .map_err(|e| format!("ssh-keyscan: {e}"))?;
    let dir = tempfile_dir()?;
    let keys = dir.join("keys");
    std::fs::write(&keys, &scan.stdout).map_err(|e| e.to_string())?;
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(&keys)
        .output()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(format!(
            "ssh-keyscan found no key ({})",
            String::from_utf8_lossy(&scan.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect())
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "p2pvps-check-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> (tempfile::TempDir, CheckEnv) {
        let tmp = tempfile::tempdir().unwrap();
        let env = CheckEnv {
            run_dir: tmp.path().join("run"),
            sys_dir: tmp.path().join("sys"),
            host: HostPaths::default(),
            state_dir: tmp.path().join("state"),
        };
        (tmp, env)
    }

    #[test]
    fn clock_needs_timesyncd_under_systemd() {
        let (_t, env) = env();
        assert_eq!(clock(&env).verdict, Verdict::Ok, "no systemd: trusted");
        std::fs::create_dir_all(env.run_dir.join("systemd/system")).unwrap();
        let l = clock(&env);
        assert_eq!(l.verdict, Verdict::Fail);
        assert!(l.to_string().contains("fix: check the network"), "{l}");
        std::fs::create_dir_all(env.run_dir.join("systemd/timesync")).unwrap();
        std::fs::write(env.run_dir.join("systemd/timesync/synchronized"), "").unwrap();
        assert_eq!(clock(&env).verdict, Verdict::Ok);
    }

    #[test]
    fn wifi_needs_a_radio_that_is_up() {
        let (_t, env) = env();
        let text = r#"{"deviceId": "5a2608cfd7df9800266a339d", "serverUrl": "http://h:1",
            "wifiSsid": "Home", "wifiPassphrase": "correct horse", "wifiCountry": "GB"}"#;
        let config = DeviceConfig::parse(Path::new("c.json"), text).unwrap();
        let wired = DeviceConfig::parse(
            Path::new("c.json"),
            r#"{"deviceId": "5a2608cfd7df9800266a339d", "serverUrl": "http://h:1"}"#,
        )
        .unwrap();
        assert!(wifi(&wired, &env).is_none(), "no line without wifi");
        let l = wifi(&config, &env).unwrap();
        assert!(l.to_string().contains("no Wi-Fi radio"), "{l}");
        let wlan = env.sys_dir.join("class/net/wlan0");
        std::fs::create_dir_all(wlan.join("wireless")).unwrap();
        std::fs::write(wlan.join("operstate"), "dormant\n").unwrap();
        let l = wifi(&config, &env).unwrap();
        assert_eq!(l.verdict, Verdict::Fail);
        assert!(
            l.to_string().contains("wlan0 is not connected to \"Home\""),
            "{l}"
        );
        std::fs::write(wlan.join("operstate"), "up\n").unwrap();
        let l = wifi(&config, &env).unwrap();
        assert_eq!(l.verdict, Verdict::Ok, "{l}");
        assert!(!l.to_string().contains("horse"), "{l}");
    }

    #[test]
    fn lines_read_well() {
        let l = Line::fail("docker", "engine unreachable", "start it");
        assert_eq!(
            l.to_string(),
            "FAIL  docker    engine unreachable\n      fix: start it"
        );
        assert_eq!(
            Line::ok("clock", "fine").to_string(),
            "OK    clock     fine"
        );
    }
}
