//! Devices and their leases: the marketplace's memory, and optionally its state file.
//!
//! Every change goes through [`Store::mutate`], which applies it under a lock and, with a state file,
//! writes the new state before answering, so what a client was told is what survives a restart.

use std::collections::{BTreeMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::Options;
use crate::error::DevServerError;
use crate::id::DeviceId;
use crate::persist::Persister;
use crate::time;

/// How many ports above the first one can be handed out (6000–6200 on the public server).
const PORT_SPAN: u16 = 200;

/// Length of the generated username and password, as on the public server.
const CREDENTIAL_LEN: usize = 10;

/// Version of the state file's layout, so a future layout can tell an old file apart.
const STATE_VERSION: u32 = 1;

/// The hardware description a device sends when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Specs {
    /// Memory, free text (the original client sends e.g. "1 GB").
    pub memory: String,
    /// Disk space, free text.
    pub disk_space: String,
    /// Processor, free text.
    pub processor: String,
    /// Internet speed, free text.
    pub internet_speed: String,
}

/// A rental handed out by a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The renter's login in the container; 10 random alphanumerics.
    pub username: String,
    /// The renter's password; 10 random alphanumerics. Known here so tests can log in; never logged.
    pub password: String,
    /// The tunnel port on the server.
    pub port: u16,
    /// When the registration happened (`rentStartDate` on the wire).
    #[serde(with = "time::iso")]
    pub start: DateTime<Utc>,
    /// When the rental ends; in the past means the device must end it now.
    #[serde(with = "time::iso")]
    pub expiration: DateTime<Utc>,
}

/// One device as the marketplace knows it. This is both the state file's record and the
/// `GET /admin/devices` element.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    /// The device id (24 lowercase hex digits).
    pub id: DeviceId,
    /// How many times the device registered, so tests can see re-registrations.
    pub registrations: u64,
    /// How many check-ins the device made, so tests can see heartbeats.
    pub checkins: u64,
    /// The last check-in (`GET /api/client/checkin`), `null` before the first.
    #[serde(with = "time::iso_opt")]
    pub last_checkin: Option<DateTime<Utc>>,
    /// The specs sent with the last registration, `null` before the first.
    pub specs: Option<Specs>,
    /// The current (or last, once expired) lease, `null` before the first registration.
    pub lease: Option<Lease>,
}

impl DeviceRecord {
    fn new(id: DeviceId) -> Self {
        Self {
            id,
            registrations: 0,
            checkins: 0,
            last_checkin: None,
            specs: None,
            lease: None,
        }
    }
}

/// The state file's document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    /// Layout version ([`STATE_VERSION`]).
    version: u32,
    /// Where the port search starts next time, so ports rotate across restarts too.
    next_port: u16,
    /// Every device, sorted by id.
    devices: Vec<DeviceRecord>,
}

/// Why a client or admin request could not be served by the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No device with that id.
    #[error("unknown device")]
    UnknownDevice,
    /// The device never registered, so it has no expiration.
    #[error("device has no rental")]
    NoRental,
    /// Every port of the range is held by another live lease or was this device's last one.
    #[error("no free tunnel port")]
    NoFreePort,
    /// The change was made in memory but could not be saved.
    #[error(transparent)]
    Persist(#[from] DevServerError),
}

/// The mutable part, under one lock.
#[derive(Debug)]
struct State {
    /// Every device, by id.
    devices: BTreeMap<DeviceId, DeviceRecord>,
    /// Where the next port search starts.
    next_port: u16,
}

/// Devices, leases, and their persistence.
#[derive(Debug)]
pub struct Store {
    /// The devices and the port cursor. A plain mutex: it is never held across an await.
    state: Mutex<State>,
    /// The state file, if `--state` was given.
    persist: Option<Persister>,
    /// How long a registration's lease lasts.
    lease: TimeDelta,
    /// The tunnel ports handed out.
    ports: RangeInclusive<u16>,
}

impl Store {
    /// Loads the state file (if any), adds the devices of `options`, and saves the result.
    pub async fn open(options: &Options) -> Result<Self, DevServerError> {
        let ids = options
            .devices
            .iter()
            .map(|id| id.parse::<DeviceId>())
            .collect::<Result<Vec<_>, _>>()?;
        let lease =
            TimeDelta::from_std(options.lease).map_err(|_| DevServerError::LeaseTooLong {
                seconds: options.lease.as_secs(),
            })?;
        if options.first_port == 0 {
            return Err(DevServerError::InvalidFirstPort);
        }
        let ports = options.first_port..=options.first_port.saturating_add(PORT_SPAN);

        let persist = options.state_file.clone().map(Persister::new);
        let mut state = State {
            devices: BTreeMap::new(),
            next_port: *ports.start(),
        };
        if let Some(persist) = &persist
            && let Some(bytes) = persist.load().await?
        {
            let file: StateFile =
                serde_json::from_slice(&bytes).map_err(|source| DevServerError::ParseState {
                    path: persist.path().to_path_buf(),
                    source,
                })?;
            state.next_port = file.next_port;
            state.devices = file
                .devices
                .into_iter()
                .map(|d| (d.id.clone(), d))
                .collect();
        }
        for id in ids {
            state
                .devices
                .entry(id.clone())
                .or_insert_with(|| DeviceRecord::new(id));
        }

        let store = Self {
            state: Mutex::new(state),
            persist,
            lease,
            ports,
        };
        store.mutate(|_| Ok(())).await.map_err(|e| match e {
            StoreError::Persist(e) => e,
            other => unreachable!("a no-op change failed: {other}"),
        })?;
        Ok(store)
    }

    /// Every device, sorted by id.
    pub fn list(&self) -> Vec<DeviceRecord> {
        self.lock().devices.values().cloned().collect()
    }

    /// Registers a device: a new lease from now, fresh credentials, a port other than its last one.
    pub async fn register(&self, id: &DeviceId, specs: Specs) -> Result<DeviceRecord, StoreError> {
        let lease_len = self.lease;
        let ports = self.ports.clone();
        self.mutate(|state| {
            if !state.devices.contains_key(id) {
                return Err(StoreError::UnknownDevice);
            }
            let now = time::now();
            let previous = state.devices[id].lease.as_ref().map(|l| l.port);
            let busy: HashSet<u16> = state
                .devices
                .values()
                .filter(|d| &d.id != id)
                .filter_map(|d| d.lease.as_ref())
                .filter(|l| l.expiration > now)
                .map(|l| l.port)
                .collect();
            let port = allocate_port(&ports, &mut state.next_port, previous, &busy)?;
            let mut rng = rand::rng();
            let lease = Lease {
                username: Alphanumeric.sample_string(&mut rng, CREDENTIAL_LEN),
                password: Alphanumeric.sample_string(&mut rng, CREDENTIAL_LEN),
                port,
                start: now,
                expiration: now + lease_len,
            };
            let device = state.devices.get_mut(id).ok_or(StoreError::UnknownDevice)?;
            device.lease = Some(lease);
            device.specs = Some(specs);
            device.registrations += 1;
            Ok(device.clone())
        })
        .await
    }

    /// Records a check-in.
    pub async fn checkin(&self, id: &DeviceId) -> Result<DeviceRecord, StoreError> {
        self.mutate(|state| {
            let device = state.devices.get_mut(id).ok_or(StoreError::UnknownDevice)?;
            device.checkins += 1;
            device.last_checkin = Some(time::now());
            Ok(device.clone())
        })
        .await
    }

    /// The current lease's expiration.
    pub fn expiration(&self, id: &DeviceId) -> Result<DateTime<Utc>, StoreError> {
        let state = self.lock();
        let device = state.devices.get(id).ok_or(StoreError::UnknownDevice)?;
        device
            .lease
            .as_ref()
            .map(|l| l.expiration)
            .ok_or(StoreError::NoRental)
    }

    /// Adds a device; returns it and whether it is new. Adding a known device changes nothing.
    pub async fn add_device(&self, id: &DeviceId) -> Result<(DeviceRecord, bool), StoreError> {
        self.mutate(|state| {
            let created = !state.devices.contains_key(id);
            let device = state
                .devices
                .entry(id.clone())
                .or_insert_with(|| DeviceRecord::new(id.clone()));
            Ok((device.clone(), created))
        })
        .await
    }

    /// Sets the current lease's expiration (to now, to end it; or to any instant).
    pub async fn set_expiration(
        &self,
        id: &DeviceId,
        expiration: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        self.mutate(|state| {
            let device = state.devices.get_mut(id).ok_or(StoreError::UnknownDevice)?;
            let lease = device.lease.as_mut().ok_or(StoreError::NoRental)?;
            lease.expiration = expiration;
            Ok(expiration)
        })
        .await
    }

    /// Applies `change` to the state and, with a state file, saves the result before returning.
    /// A failed change is not saved (changes only fail before touching the state).
    async fn mutate<R>(
        &self,
        change: impl FnOnce(&mut State) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Some(persist) = &self.persist else {
            return change(&mut self.lock());
        };
        let _order = persist.lock().await;
        let (result, bytes) = {
            let mut state = self.lock();
            let result = change(&mut state)?;
            let file = StateFile {
                version: STATE_VERSION,
                next_port: state.next_port,
                devices: state.devices.values().cloned().collect(),
            };
            let mut bytes = serde_json::to_vec_pretty(&file).expect("state serialises to JSON");
            bytes.push(b'\n');
            (result, bytes)
        };
        persist.write(&bytes).await?;
        Ok(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (changes are single assignments).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Picks the next port of `ports` from `cursor` on (wrapping), skipping the device's `previous`
/// port and the `busy` ones, and moves the cursor past it.
fn allocate_port(
    ports: &RangeInclusive<u16>,
    cursor: &mut u16,
    previous: Option<u16>,
    busy: &HashSet<u16>,
) -> Result<u16, StoreError> {
    let (first, last) = (u32::from(*ports.start()), u32::from(*ports.end()));
    let span = last - first + 1;
    let start = if ports.contains(cursor) {
        u32::from(*cursor) - first
    } else {
        0
    };
    for step in 0..span {
        let port = u16::try_from(first + (start + step) % span).expect("port within u16 range");
        if Some(port) != previous && !busy.contains(&port) {
            *cursor = if port == *ports.end() {
                *ports.start()
            } else {
                port + 1
            };
            return Ok(port);
        }
    }
    Err(StoreError::NoFreePort)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{StoreError, allocate_port};

    #[test]
    fn ports_rotate_and_wrap() {
        let ports = 6000..=6002;
        let mut cursor = 6000;
        let none = HashSet::new();
        assert_eq!(
            allocate_port(&ports, &mut cursor, None, &none).unwrap(),
            6000
        );
        assert_eq!(
            allocate_port(&ports, &mut cursor, None, &none).unwrap(),
            6001
        );
        assert_eq!(
            allocate_port(&ports, &mut cursor, None, &none).unwrap(),
            6002
        );
        assert_eq!(
            allocate_port(&ports, &mut cursor, None, &none).unwrap(),
            6000
        );
    }

    #[test]
    fn ports_skip_previous_and_busy() {
        let ports = 6000..=6002;
        let mut cursor = 6000;
        let busy: HashSet<u16> = [6001].into();
        assert_eq!(
            allocate_port(&ports, &mut cursor, Some(6000), &busy).unwrap(),
            6002
        );
        assert_eq!(cursor, 6000);
        let all: HashSet<u16> = [6000, 6002].into();
        assert!(matches!(
            allocate_port(&ports, &mut cursor, Some(6001), &all),
            Err(StoreError::NoFreePort)
        ));
    }

    #[test]
    fn cursor_outside_range_restarts_at_first() {
        let ports = 7000..=7200;
        let mut cursor = 6100;
        let port = allocate_port(&ports, &mut cursor, None, &HashSet::new()).unwrap();
        assert_eq!(port, 7000);
        assert_eq!(cursor, 7001);
    }
}
