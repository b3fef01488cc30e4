//! The governor's persisted state: one JSON file in the state dir, replaced atomically (temp file,
//! fsync, rename, fsync of the dir) before each step acts, so a power cut resumes the right step.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::types::{DeviceId, PasswordHash, Port, Username};

pub const FILE_NAME: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{path}: corrupt state ({detail}); move it aside to start afresh (the next rental will wipe the storage)"
    )]
    Corrupt { path: PathBuf, detail: String },
}

/// Where the lifecycle is. Each phase's step is idempotent, so resuming a phase redoes it safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Making everything the next renter needs before the device is offered: a fresh storage
    /// volume and their container, running with its layer on that volume, waiting for a login.
    PreparingStorage,
    /// Offering the device to the marketplace.
    Registering,
    /// Giving the renter their login (and a container, if the one made before is gone).
    Provisioning,
    /// A renter's container is running until the expiration.
    Serving,
    /// The rental is over: stopping and removing the container.
    Expired,
    /// Destroying the renter's storage; must finish before any new registration.
    Wiping,
}

impl Phase {
    /// Every phase, in the lifecycle's order.
    pub const ALL: [Phase; 6] = [
        Phase::PreparingStorage,
        Phase::Registering,
        Phase::Provisioning,
        Phase::Serving,
        Phase::Expired,
        Phase::Wiping,
    ];

    /// Whether a rental is in force (its login being made, or served).
    pub fn rented(self) -> bool {
        matches!(self, Phase::Provisioning | Phase::Serving)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PreparingStorage => "preparing-storage",
            Phase::Registering => "registering",
            Phase::Provisioning => "provisioning",
            Phase::Serving => "serving",
            Phase::Expired => "expired",
            Phase::Wiping => "wiping",
        }
    }
}

/// The rental in force. The password is kept only as a SHA-512-crypt hash, which is all that is
/// needed to recreate the login if the container is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub username: Username,
    pub password_hash: PasswordHash,
    pub port: Port,
    pub expiration: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
}

/// The outcome of the last heartbeat, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub at: DateTime<Utc>,
    /// None on success; the error otherwise.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The device this state belongs to; a config naming another device ends the rental.
    pub device_id: DeviceId,
    pub phase: Phase,
    /// The storage volume of the current (or next) rental.
    pub volume: String,
    pub lease: Option<LeaseRecord>,
    /// The renter container's id, once created.
    pub container: Option<String>,
    /// Rentals served to the end, for status.
    pub rentals_completed: u64,
    pub last_heartbeat: Option<Heartbeat>,
    /// The bridge of the renter's network whose rules the governor put in place last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_rules: Option<String>,
    /// Since when everything the next renter needs is in place (the device is on the market).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<DateTime<Utc>>,
}

impl State {
    pub fn new(device_id: DeviceId) -> Self {
        Self {
            device_id,
            phase: Phase::PreparingStorage,
            volume: new_volume_id(),
            lease: None,
            container: None,
            rentals_completed: 0,
            last_heartbeat: None,
            network_rules: None,
            ready_since: None,
        }
    }
}

/// A fresh random name for a rental's storage volume.
pub fn new_volume_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The state file in a state dir.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The saved state, or None on a device that never ran.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path,
                    action: "read",
                    source,
                });
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                detail: e.to_string(),
            })
    }

    /// Replace the state atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        write_atomic(&self.path(), &json)
    }
}

/// Replace the file at `path` (mode 0600, its directory made if missing) with `bytes`, atomically
/// and durably: a power cut leaves the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| StateError::Io {
            path: p,
            action,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::create_dir_all(dir).map_err(io("create the state dir", dir))?;
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the state dir", dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::types::Secret;

    fn sample() -> State {
        let mut s = State::new(DeviceId::parse("5a2608cfd7df9800266a339d").unwrap());
        s.phase = Phase::Serving;
        s.lease = Some(LeaseRecord {
            username: Username::parse("aB3xY9zQ1k").unwrap(),
            password_hash: PasswordHash::of(&Secret::password("Xy7pQ2mN0a").unwrap()),
            port: Port::new(6001).unwrap(),
            expiration: Utc::now(),
            registered_at: Utc::now(),
        });
        s.container = Some("abc".into());
        s
    }

    #[test]
    fn round_trip_without_plain_password() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        assert_eq!(store.load().unwrap(), None);
        let s = sample();
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s));
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains("Xy7pQ2mN0a"));
        assert!(text.contains("\"phase\": \"serving\""));
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!store.dir().join(".state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), "{\"phase\": ").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("corrupt state") && e.contains("state.json"),
            "{e}"
        );
    }

    #[test]
    fn volume_ids_are_fresh() {
        assert_ne!(new_volume_id(), new_volume_id());
        assert_eq!(new_volume_id().len(), 16);
    }
}
