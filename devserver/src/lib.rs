//! A local P2P VPS marketplace speaking the client API of p2pvps-server2, for trying a device at
//! home and for tests (in-process through [`spawn`], or as the `p2pvps-devserver` binary).
//!
//! # Client API (the contract, DESIGN.md section 2)
//!
//! Error bodies are plain text. Ids are checked first: anything but 24 hex digits is
//! 422 `Invalid GUID`; an id the server does not know is 404 `Could not find that device.`.
//!
//! | route | success (200) |
//! |---|---|
//! | `POST /api/client/register/{id}`, body `{"memory","diskSpace","processor","internetSpeed"}` (strings; otherwise 400 naming the problem) | `{"device": {"_id", "__v", "ownerUser", "renterUser", "deviceName", "deviceDesc", "rentHourlyRate", "rentStartDate", "expiration", "memory", "diskSpace", "processor", "internetSpeed", "checkinTimeStamp", "username", "password", "port"}}` |
//! | `GET /api/client/checkin/{id}` | `{"success": true}` |
//! | `GET /api/client/expiration/{id}` | `{"expiration": "2026-11-25T21:01:15.123Z"}`; 404 `Device has no rental.` before the first registration |
//!
//! Each registration starts a new lease of [`Options::lease`] from now with a fresh random
//! 10-character alphanumeric username and password and a tunnel port from
//! [`Options::first_port`] to `first_port + 200`, rotating, never the device's previous port nor a
//! port of another device's live lease.
//!
//! # Admin API (devserver only)
//!
//! | route | effect and answer |
//! |---|---|
//! | `GET /admin/devices` | JSON array, by id: `{"id", "registrations", "checkins", "lastCheckin", "specs", "lease"}`; `lease` is `{"username", "password", "port", "start", "expiration"}` or `null` |
//! | `POST /admin/devices/{id}` | adds a device: 201 with it, or 200 if it was known; 422 if not 24 hex digits |
//! | `POST /admin/expire/{id}` | the lease ends now: `{"expiration": ISO}`; 404 `Device has no rental.` without a lease |
//! | `PUT /admin/expiration/{id}`, body `{"expiration": ISO}` | sets the lease's expiration (past or future): `{"expiration": ISO}` |
//! | `GET /admin/fault` / `PUT /admin/fault`, body `{"mode": "none" \| "error" \| "hang"}` | fault injection on `/api/client/*`: `error` answers 500 `Internal server error (injected)`, `hang` never answers until the mode changes; `none` is normal. Answers `{"mode": …}` |
//!
//! # Files
//!
//! With [`Options::files`] (`--files DIR`), `GET /files/{path}` serves DIR's files, with byte
//! ranges (206): the update tests publish manifests and bundles there.
//!
//! # State
//!
//! With [`Options::state_file`] the devices and leases are saved as JSON after every change
//! (temp file, fsync, rename) and loaded at start; [`Options::devices`] are added to them.

mod admin;
mod api;
mod error;
mod fault;
mod files;
mod id;
mod persist;
mod store;
mod time;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::DevServerError;
pub use fault::FaultMode;
pub use id::{DeviceId, InvalidDeviceId};

/// How the devserver behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Device ids known from the start (24 hex digits each), added to those of the state file.
    pub devices: Vec<String>,
    /// How long a registration's rental lasts (one day on the public server).
    pub lease: Duration,
    /// The first tunnel port handed out; ports go up to `first_port + 200` and wrap.
    pub first_port: u16,
    /// Where devices and leases are saved; `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
    /// A directory served at `/files/…` (update manifests and bundles, with byte ranges).
    pub files: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            lease: Duration::from_hours(24),
            first_port: 6000,
            state_file: None,
            files: None,
        }
    }
}

/// A devserver serving in the background.
#[derive(Debug)]
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// Set to `true` to stop: ends the accept loop and releases hung requests.
    shutdown: watch::Sender<bool>,
    /// The serving task.
    task: JoinHandle<()>,
}

impl Running {
    /// The base URL of the server, `http://ADDR`, as a device's `serverUrl`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "devserver task failed");
        }
    }
}

/// Loads the state, binds `listen` and serves in a spawned task until [`Running::stop`].
pub async fn spawn(listen: SocketAddr, options: Options) -> Result<Running, DevServerError> {
    let store = store::Store::open(&options).await?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| DevServerError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DevServerError::LocalAddr {
            addr: listen,
            source,
        })?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (fault, _) = watch::channel(FaultMode::None);
    let state = Arc::new(api::Shared {
        store,
        fault,
        shutdown: shutdown_rx.clone(),
    });
    let mut app = api::router(state);
    if let Some(dir) = options.files.clone() {
        app = app.merge(files::router(dir));
    }
    let mut stop_rx = shutdown_rx;
    let task = tokio::spawn(async move {
        let stopped = async move {
            // An error means the sender is gone, which also means stop.
            let _ = stop_rx.wait_for(|stopping| *stopping).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(error = %e, "devserver stopped with an error");
        }
    });
    tracing::info!(%addr, devices = options.devices.len(), "devserver listening");
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}
