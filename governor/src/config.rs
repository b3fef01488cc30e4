//! `device-config.json`: what the owner drops on the boot partition (DESIGN.md §3).
//!
//! The file is read key by key rather than through `#[derive(Deserialize)]` so that every error names
//! the key and says what to write instead, which is all an owner without a shell can act on.

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde_json::{Map, Value};

use crate::sandbox::{Net, Policy};
use crate::types::{DeviceId, Port, Secret, shorten};
use crate::wifi::Wifi;

/// Where the image looks for the config (the FAT boot partition).
pub const DEFAULT_PATH: &str = "/boot/firmware/device-config.json";
/// The public server's tunnel endpoint port.
pub const DEFAULT_SSH_PORT: u16 = 6100;
pub const DEFAULT_SSH_USER: &str = "sshuser";
pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 600;
pub const DEFAULT_RENTER_IMAGE: &str = "p2pvps/renter:latest";
/// Where the OS image keeps the renter image's tarball: `renterImageTar` defaults to it when it
/// exists there.
pub const DEFAULT_RENTER_IMAGE_TAR: &str = "/usr/share/p2pvps/renter-image.tar";

/// Every key the file may hold; anything else is an error (a typo must not pass silently).
const KEYS: &[&str] = &[
    "deviceId",
    "serverUrl",
    "serverIp",
    "serverPort",
    "sshServer",
    "sshServerPort",
    "sshUser",
    "sshPassword",
    "sshHostKey",
    "heartbeatSeconds",
    "storageDevice",
    "encryptStorage",
    "led",
    "activeLow",
    "renterImage",
    "renterImageTar",
    "lanAllow",
    "allowSmtp",
    "storageSizeMb",
    "sshKey",
    "wifiSsid",
    "wifiPassphrase",
    "wifiCountry",
    "statusPort",
    "updateUrl",
];

/// The renter's volume with `storageDevice: "none"`, in MiB: room for a renter, without taking a
/// small host's disk.
pub const DEFAULT_STORAGE_SIZE_MB: u64 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the file is empty; write at least {{\"deviceId\": \"<24 hex digits>\", \"serverUrl\": \"http://host:port\"}}"
    )]
    Empty { path: PathBuf },
    #[error("{path}: not valid JSON ({detail}); check quotes, commas and braces")]
    NotJson { path: PathBuf, detail: String },
    #[error("{path}: the file must hold one JSON object {{…}}, not {found}")]
    NotObject { path: PathBuf, found: &'static str },
    #[error("{path}: unknown key {key:?}{hint}; remove it or fix its spelling")]
    UnknownKey {
        path: PathBuf,
        key: String,
        hint: String,
    },
    #[error("{path}: missing key {key:?}: {what}")]
    Missing {
        path: PathBuf,
        key: &'static str,
        what: &'static str,
    },
    #[error("{path}: key {key:?}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// Which block device holds the renter's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageDevice {
    /// Find the USB drive by itself.
    Auto,
    /// The owner named the device.
    Path(PathBuf),
    /// No drive: a directory on the state partition (demos, tests, the .deb without a spare drive).
    None,
}

/// Where the device's tunnel key comes from (`sshKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshKey {
    /// Made by the device on its first start, kept in the state dir (`"generate"`).
    Generate,
    /// An OpenSSH private key file the owner provides (an absolute path).
    File(PathBuf),
}

/// The status LED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Led {
    /// An external LED on this BCM GPIO.
    Gpio(u8),
    /// The board's own activity LED (`/sys/class/leds/ACT`).
    Act,
    None,
}

/// A validated device-config.json.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The marketplace's id for this device.
    pub device_id: DeviceId,
    /// Base URL of the marketplace REST API, without a trailing slash.
    pub server_url: Url,
    /// Host of the tunnel endpoint (defaults to the marketplace's host).
    pub ssh_server: String,
    pub ssh_server_port: Port,
    /// The tunnel-only account on the endpoint.
    pub ssh_user: String,
    pub ssh_password: Option<Secret>,
    /// `SHA256:…` fingerprint the endpoint's host key must match, when pinned.
    pub ssh_host_key: Option<String>,
    /// The device's own key for the tunnel endpoint, used before the shared password.
    pub ssh_key: Option<SshKey>,
    /// Seconds between check-ins (the server answers with the expiration).
    pub heartbeat_seconds: u64,
    pub storage_device: StorageDevice,
    pub encrypt_storage: bool,
    pub led: Led,
    /// The external LED lights when its GPIO is driven low.
    pub active_low: bool,
    /// Docker image the renter's container is made from.
    pub renter_image: String,
    /// Tarball (a rootfs, as for `docker import`) to import when the image is absent.
    pub renter_image_tar: Option<PathBuf>,
    /// What the renter may reach besides the internet: LAN addresses the owner allows, and SMTP.
    pub sandbox: Policy,
    /// With `storageDevice: "none"`: the size of each rental's volume, in MiB.
    pub storage_size_mb: u64,
    /// The owner's Wi-Fi network, for a device without a cable (`wifiSsid`, …).
    pub wifi: Option<Wifi>,
    /// The owner's page's port (`statusPort`; 0 turns it off); None: the governor's default.
    pub status_port: Option<u16>,
    /// The update manifest (`updateUrl`): system updates are off without it (`update/`).
    pub update_url: Option<Url>,
}

impl DeviceConfig {
    /// Read and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validate `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        // Windows editors may add a byte-order mark; it is not an owner's mistake.
        let text = text.trim_start_matches('\u{feff}');
        if text.trim().is_empty() {
            return Err(ConfigError::Empty {
                path: path.to_owned(),
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::NotJson {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotObject {
                path: path.to_owned(),
                found: json_kind(&value),
            });
        };
        Reader { path, map: &map }.config()
    }

    /// A normalised, secret-free summary, one `key: value` per line (for `check-config`).
    pub fn summary(&self) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        let mut line = |k: &str, v: &dyn fmt::Display| {
            let _ = writeln!(out, "{k:<16} {v}");
        };
        line("deviceId", &self.device_id);
        line("serverUrl", &self.server_url.as_str().trim_end_matches('/'));
        line(
            "sshServer",
            &format!("{}:{}", self.ssh_server, self.ssh_server_port),
        );
        line("sshUser", &self.ssh_user);
        line(
            "sshPassword",
            &if self.ssh_password.is_some() {
                "(set)"
            } else {
                "(none)"
            },
        );
        line(
            "sshHostKey",
            &self.ssh_host_key.as_deref().unwrap_or("(not pinned)"),
        );
        let key = match &self.ssh_key {
            None => "(none: the password)".to_owned(),
            Some(SshKey::Generate) => "generate (made in the state dir)".to_owned(),
            Some(SshKey::File(p)) => p.display().to_string(),
        };
        line("sshKey", &key);
        line("heartbeat", &format!("{} s", self.heartbeat_seconds));
        let storage = match &self.storage_device {
            StorageDevice::Auto => "auto (the largest USB drive)".to_owned(),
            StorageDevice::Path(p) => p.display().to_string(),
            StorageDevice::None => "none (a fixed-size volume on the state partition)".to_owned(),
        };
        line("storageDevice", &storage);
        line("encryptStorage", &self.encrypt_storage);
        if self.storage_device == StorageDevice::None {
            line("storageSizeMb", &self.storage_size_mb);
        }
        let led = match self.led {
            Led::Gpio(n) => format!("GPIO {n}"),
            Led::Act => "ACT (on-board)".to_owned(),
            Led::None => "none".to_owned(),
        };
        line("led", &led);
        if self.active_low {
            line("activeLow", &true);
        }
        let allowed = self.sandbox.allow.iter().map(ToString::to_string);
        let allowed = allowed.collect::<Vec<_>>().join(", ");
        line(
            "lanAllow",
            &if allowed.is_empty() {
                "(none)"
            } else {
                &allowed
            },
        );
        line("allowSmtp", &self.sandbox.smtp);
        line(
            "wifi",
            &self
                .wifi
                .as_ref()
                .map_or_else(|| "(none: wired)".to_owned(), Wifi::summary),
        );
        line(
            "statusPort",
            &match self.status_port {
                None => "default (80 on the image, off on the .deb)".to_owned(),
                Some(0) => "0 (the owner's page is off)".to_owned(),
                Some(p) => p.to_string(),
            },
        );
        line(
            "updateUrl",
            &self
                .update_url
                .as_ref()
                .map_or_else(|| "(none: no system updates)".to_owned(), Url::to_string),
        );
        line("renterImage", &self.renter_image);
        if let Some(tar) = &self.renter_image_tar {
            line("renterImageTar", &tar.display());
        }
        out
    }
}

struct Reader<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Reader<'_> {
    #[allow(clippy::too_many_lines)] // one key after another, in the file's order, reads best whole
    fn config(&self) -> Result<DeviceConfig, ConfigError> {
        for key in self.map.keys() {
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey {
                    path: self.path.to_owned(),
                    key: shorten(key),
                    hint: closest_key(key)
                        .map_or_else(String::new, |k| format!(" (did you mean {k:?}?)")),
                });
            }
        }
        let device_id = match self.string("deviceId")? {
            Some(s) => DeviceId::parse(&s).map_err(|e| self.invalid("deviceId", e.0))?,
            None => {
                return Err(self.missing(
                    "deviceId",
                    "add the id the marketplace shows for this device (24 hex digits)",
                ));
            }
        };
        let server_url = self.server_url()?;
        let ssh_server = match self.string("sshServer")? {
            Some(host) => {
                check_host(&host).map_err(|reason| self.invalid("sshServer", reason))?;
                host
            }
            None => server_url
                .host_str()
                .expect("server URL was checked to have a host")
                .to_owned(),
        };
        let ssh_server_port = self
            .port("sshServerPort")?
            .unwrap_or(Port::new(DEFAULT_SSH_PORT.into()).expect("default port is valid"));
        let ssh_user = match self.string("sshUser")? {
            Some(u) if is_login_name(&u) => u,
            Some(u) => {
                return Err(self.invalid(
                    "sshUser",
                    format!("{:?} is not a valid login name", shorten(&u)),
                ));
            }
            None => DEFAULT_SSH_USER.to_owned(),
        };
        let ssh_password = self
            .string("sshPassword")?
            .map(|p| Secret::password(&p).map_err(|e| self.invalid("sshPassword", e.0)))
            .transpose()?;
        let ssh_host_key = self
            .string("sshHostKey")?
            .map(|k| {
                check_fingerprint(&k)
                    .map(|()| k)
                    .map_err(|r| self.invalid("sshHostKey", r))
            })
            .transpose()?;
        let ssh_key = match self.string("sshKey")?.as_deref() {
            None => None,
            Some("generate") => Some(SshKey::Generate),
            Some(p) if p.starts_with('/') && !p.contains("..") => Some(SshKey::File(p.into())),
            Some(other) => {
                return Err(self.invalid(
                    "sshKey",
                    format!(
                        "must be \"generate\" or the absolute path of a private key file, got {:?}",
                        shorten(other)
                    ),
                ));
            }
        };
        let heartbeat_seconds = match self.map.get("heartbeatSeconds") {
            None => DEFAULT_HEARTBEAT_SECONDS,
            Some(v) => match number(v) {
                Some(n @ 1..=86_400) => n.unsigned_abs(),
                _ => {
                    return Err(self.invalid(
                        "heartbeatSeconds",
                        format!("must be a whole number of seconds from 1 to 86400, got {v}"),
                    ));
                }
            },
        };
        let storage_device = match self.string("storageDevice")?.as_deref() {
            None | Some("auto") => StorageDevice::Auto,
            Some("none") => StorageDevice::None,
            Some(p) if p.starts_with("/dev/") && !p.contains("..") => {
                StorageDevice::Path(PathBuf::from(p))
            }
            Some(other) => {
                return Err(self.invalid(
                    "storageDevice",
                    format!(
                        "must be \"auto\", \"none\" or a device path such as \"/dev/sda\", got {:?}",
                        shorten(other)
                    ),
                ));
            }
        };
        let encrypt_storage = self.flag("encryptStorage", true)?;
        let led = self.led()?;
        let active_low = self.flag("activeLow", false)?;
        let renter_image = match self.string("renterImage")? {
            Some(i) if is_image_ref(&i) => i,
            Some(i) => {
                return Err(self.invalid(
                    "renterImage",
                    format!(
                        "{:?} is not a Docker image reference such as \"p2pvps/renter:latest\"",
                        shorten(&i)
                    ),
                ));
            }
            None => DEFAULT_RENTER_IMAGE.to_owned(),
        };
        let renter_image_tar = self
            .string("renterImageTar")?
            .map(|p| {
                if p.starts_with('/') {
                    Ok(PathBuf::from(p))
                } else {
                    Err(self.invalid("renterImageTar", "must be an absolute path".into()))
                }
            })
            .transpose()?
            .or_else(|| {
                let default = Path::new(DEFAULT_RENTER_IMAGE_TAR);
                default.is_file().then(|| default.to_owned())
            });
        let storage_size_mb = match self.map.get("storageSizeMb") {
            None => DEFAULT_STORAGE_SIZE_MB,
            Some(v) => match number(v) {
                Some(n @ 16..=16_777_216) => n.unsigned_abs(),
                _ => {
                    return Err(self.invalid(
                        "storageSizeMb",
                        format!("must be a whole number of MB from 16 to 16777216, got {v}"),
                    ));
                }
            },
        };
        let sandbox = Policy {
            allow: self.lan_allow()?,
            smtp: self.flag("allowSmtp", false)?,
        };
        let wifi =
            Wifi::from_config(self.map).map_err(|(key, reason)| self.invalid(key, reason))?;
        let status_port = match self.map.get("statusPort") {
            None => None,
            Some(v) => match number(v).and_then(|n| u16::try_from(n).ok()) {
                Some(p) => Some(p),
                None => {
                    return Err(self.invalid(
                        "statusPort",
                        format!("must be a port number from 1 to 65535, or 0 to turn the owner's page off, got {v}"),
                    ));
                }
            },
        };
        let update_url = self
            .string("updateUrl")?
            .map(|u| match Url::parse(&u) {
                Ok(url) if matches!(url.scheme(), "https" | "http") && url.host().is_some() => {
                    Ok(url)
                }
                _ => Err(self.invalid(
                    "updateUrl",
                    format!(
                        "must be the https:// address of an update manifest, got {:?}",
                        shorten(&u)
                    ),
                )),
            })
            .transpose()?;
        Ok(DeviceConfig {
            device_id,
            server_url,
            ssh_server,
            ssh_server_port,
            ssh_user,
            ssh_password,
            ssh_host_key,
            ssh_key,
            heartbeat_seconds,
            storage_device,
            encrypt_storage,
            led,
            active_low,
            renter_image,
            renter_image_tar,
            sandbox,
            storage_size_mb,
            wifi,
            status_port,
            update_url,
        })
    }

    fn server_url(&self) -> Result<Url, ConfigError> {
        let url = self.string("serverUrl")?;
        let ip = self.string("serverIp")?;
        let port = self.port("serverPort")?;
        let text = match (url, ip, port) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(self.invalid(
                    "serverUrl",
                    "give either serverUrl or the legacy serverIp and serverPort, not both".into(),
                ));
            }
            (Some(url), None, None) => url,
            (None, Some(ip), Some(port)) => {
                check_host(&ip).map_err(|r| self.invalid("serverIp", r))?;
                format!("http://{ip}:{port}")
            }
            (None, Some(_), None) => {
                return Err(self.missing("serverPort", "serverIp needs serverPort (e.g. 3001)"));
            }
            (None, None, Some(_)) => {
                return Err(self.missing("serverIp", "serverPort needs serverIp"));
            }
            (None, None, None) => {
                return Err(self.missing(
                    "serverUrl",
                    "add the marketplace address, e.g. \"serverUrl\": \"http://p2pvps.net:5000\"",
                ));
            }
        };
        let url = Url::parse(&text).map_err(|e| {
            self.invalid(
                "serverUrl",
                format!(
                    "{:?} is not a URL ({e}); write it like \"http://p2pvps.net:5000\"",
                    shorten(&text)
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.invalid(
                "serverUrl",
                format!(
                    "{:?} must be an http:// or https:// address with a host",
                    shorten(&text)
                ),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(self.invalid(
                "serverUrl",
                "must not carry a query, fragment or user name".into(),
            ));
        }
        Ok(url)
    }

    fn led(&self) -> Result<Led, ConfigError> {
        let bad = |v: &Value| {
            self.invalid(
                "led",
                format!("must be a BCM GPIO number 0-27, \"ACT\" or \"none\", got {v}"),
            )
        };
        match self.map.get("led") {
            None => Ok(Led::Act),
            Some(v @ Value::String(s)) => match s.as_str() {
                "ACT" | "act" => Ok(Led::Act),
                "none" => Ok(Led::None),
                _ => Err(bad(v)),
            },
            Some(v) => match number(v) {
                Some(n @ 0..=27) => Ok(Led::Gpio(u8::try_from(n).expect("0-27 fits"))),
                _ => Err(bad(v)),
            },
        }
    }

    /// `lanAllow`: addresses or networks of the owner's LAN that the renter may reach after all.
    fn lan_allow(&self) -> Result<Vec<Net>, ConfigError> {
        let bad = |detail: String| self.invalid("lanAllow", detail);
        match self.map.get("lanAllow") {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Net::parse(s.trim()).map_err(bad),
                    other => Err(bad(format!(
                        "must list addresses as strings, got {}",
                        json_kind(other)
                    ))),
                })
                .collect(),
            Some(v) => Err(bad(format!(
                "must be a list such as [\"192.168.1.20\"], got {}",
                json_kind(v)
            ))),
        }
    }

    /// A true/false value, or `default` when the key is absent.
    fn flag(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => {
                Err(self.invalid(key, format!("must be true or false, got {}", json_kind(v))))
            }
        }
    }

    /// A string value, or None when the key is absent.
    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(self.invalid(key, "is empty; give a value or remove the key".into()))
            }
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(v) => Err(self.invalid(
                key,
                format!("must be a string in quotes, got {}", json_kind(v)),
            )),
        }
    }

    /// A port given as a number or a numeric string (the original client's files used both).
    fn port(&self, key: &'static str) -> Result<Option<Port>, ConfigError> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let n = number(v)
            .ok_or_else(|| self.invalid(key, format!("must be a port number 1-65535, got {v}")))?;
        Port::new(n).map(Some).map_err(|e| self.invalid(key, e.0))
    }

    fn invalid(&self, key: &'static str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key,
            reason,
        }
    }

    fn missing(&self, key: &'static str, what: &'static str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_owned(),
            key,
            what,
        }
    }
}

/// A whole number given as a JSON number or a numeric string.
fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let ok = host.len() <= 253
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a host name or IP address",
            shorten(host)
        ))
    }
}

fn check_fingerprint(k: &str) -> Result<(), String> {
    // `ssh-keygen -l -E sha256` prints SHA256: and 43 characters of unpadded base64.
    let body = k.strip_prefix("SHA256:").unwrap_or("");
    if body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        Ok(())
    } else {
        Err(format!(
            "must be a fingerprint as `ssh-keygen -l -E sha256 -f KEY` prints it (SHA256: and 43 characters), got {:?}",
            shorten(k)
        ))
    }
}

fn is_login_name(s: &str) -> bool {
    s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn is_image_ref(s: &str) -> bool {
    s.len() <= 255
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'-' | b'_' | b'/' | b':' | b'@')
        })
}

/// The known key nearest to a misspelt one (case or up to two edits), for the error's hint.
fn closest_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
